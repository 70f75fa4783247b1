#!/usr/bin/env python3
"""Where the server's CPU goes, by component, from a `perf record` of `scripts/bench.sh send`.

    scripts/lib/perf_components.py <dir>/perf-<phase>-send.data [server CPU ms per send]

The data is what `BENCH_PERF=<dir>` records during the concurrent phase; record it with
`BENCH_PERF_CALLGRAPH="--call-graph dwarf,16384"` (the release build keeps no frame pointers,
so `-g` stacks stop at the first frame). Each sample of the server's threads goes to the
innermost component of COMPONENTS that its stack passes through, so the shares add up to 100 %;
with the phase's server CPU per send (the bench prints it), each share is also given in µs per
send. "in the kernel": the samples of that component taken in the kernel (system calls,
context switches). docs/performance.md, "Where a send's CPU goes (17th session)", is a run.
"""

import collections
import subprocess
import sys

# (name, a substring of a frame's symbol). Innermost first where they nest: a sample under the
# committer's statement inside the recorder is the committer's.
COMPONENTS = [
    ("committer: statement (sqlx, encode)", "store::committer::"),
    ("sealing: AES-GCM, HKDF", "crypto::envelope::seal"),
    ("sealing: fields", "store::sealing::"),
    ("chain hash (JCS, SHA-256)", "store::chain::"),
    ("recording: metadata, payload", "store::repository::"),
    ("recording: recorder", "store::recorder::"),
    ("send reads (agent, org, contact)", "ledger::reads::"),
    ("reserver", "ledger::reservations"),
    ("projection runners", "store::runner::"),
    ("send pipeline (checks, sanitizer, content)", "outbound::"),
    ("JSON-RPC", "mcp::protocol"),
    ("MCP transport", "mcp::"),
    ("authentication", "auth::"),
    ("hardening layers", "http::"),
    ("hyper", "hyper::"),
    ("tokio: scheduler and I/O driver", "tokio::runtime"),
]


def stacks(data):
    """Each sample of the server's threads: its frames, innermost first, as (ip, symbol)."""
    out = subprocess.run(
        ["perf", "script", "-i", data, "--comm", "tokio-rt-worker", "-F", "ip,sym"],
        capture_output=True, text=True, check=True,
    ).stdout
    stack = []
    for line in out.splitlines():
        if not line.strip():
            if stack:
                yield stack
            stack = []
            continue
        ip, _, symbol = line.strip().partition(" ")
        stack.append((ip, symbol))
    if stack:
        yield stack


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    per_send = float(sys.argv[2]) if len(sys.argv) > 2 else None
    counts, kernel, total = collections.Counter(), collections.Counter(), 0
    for stack in stacks(sys.argv[1]):
        total += 1
        component = next(
            (name for _, symbol in stack for name, pattern in COMPONENTS if pattern in symbol), "other"
        )
        counts[component] += 1
        if stack[0][0].startswith("ffffffff"):
            kernel[component] += 1
    if not total:
        sys.exit("no samples of the server's threads (tokio-rt-worker) in " + sys.argv[1])
    print(f"{total} samples of the server; in the kernel {100 * sum(kernel.values()) / total:.1f} %")
    for component, n in counts.most_common():
        us = f"  {1000 * per_send * n / total:6.1f} µs/send" if per_send else ""
        print(f"{100 * n / total:5.1f} %{us}  (in the kernel {100 * kernel[component] / n:3.0f} %)  {component}")


if __name__ == "__main__":
    main()
