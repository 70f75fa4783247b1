// `sqlx::migrate!` embeds the migrations directory, which cargo does not watch by itself: without
// this, a new migration file is missing from the binary until some source file changes.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
