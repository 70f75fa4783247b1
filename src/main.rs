//! The `commguard` binary: a thin shim over the library's command line.

fn main() -> std::process::ExitCode {
    commguard::cli::main()
}
