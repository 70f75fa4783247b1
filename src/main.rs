//! The `commguard` binary: a thin shim over the library's command line.

/// mimalloc instead of glibc's malloc: the request path allocates many small, short-lived
/// buffers (JSON, SQL rows, envelopes); glibc's allocator took ~17% of server CPU under the send
/// benchmark (`scripts/bench.sh send`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    commguard::cli::main()
}
