//! The `commguard` binary: a thin shim over the library's command line.

/// mimalloc instead of glibc's malloc: the request path allocates many small, short-lived
/// buffers (JSON, SQL rows, envelopes); glibc's allocator took ~17% of server CPU under the send
/// benchmark (`scripts/bench.sh send`). Built without transparent huge pages (`no_thp`):
/// mimalloc 3 otherwise madvises its arenas MADV_HUGEPAGE, and the kernel backs them in 2 MiB
/// pages — 28 MB idle RSS instead of 19, and 21 KB per idle SSE session instead of 15
/// (`scripts/bench.sh mcp --seconds 3`, MIMALLOC_ALLOW_THP=0 against the default, same binary).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    commguard::cli::main()
}
