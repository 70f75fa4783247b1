#!/usr/bin/env bash
# Coverage-guided fuzzing of the parsers (issue 20) with cargo-fuzz (libFuzzer, nightly):
#   scripts/fuzz.sh [SECONDS] [TARGET...]   every target (or those named) for SECONDS each (default 30)
# The fuzz/ crate is its own workspace with its own target dir (fuzz/target). Seeds are read from
# fuzz/corpus/<target>/ (committed, small); what a run discovers goes to a throwaway directory. A
# crash stops with its input in fuzz/artifacts/<target>/: fix it, and keep the input as a test.
# Prints the executions per target.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-30}; shift || true
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(jsonrpc sanitize twilio svix envelope config)
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked >&2
cd fuzz
cargo +nightly fuzz build >&2
work=$(mktemp -d /tmp/commguard-fuzz-XXXXXX)
trap 'rm -rf "$work"' EXIT
status=0
for t in "${targets[@]}"; do
  mkdir -p "$work/$t"
  log="$work/$t.log"
  if cargo +nightly fuzz run "$t" "$work/$t" "corpus/$t" -- -max_total_time="$seconds" -max_len=4096 \
       -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then result=ok; else result=CRASH; status=1; fi
  execs=$(grep -m1 'stat::number_of_executed_units' "$log" | awk '{print $2}')
  printf '%-10s %-6s %12s executions in %ss\n' "$t" "$result" "${execs:-?}" "$seconds"
  if [ "$result" = CRASH ]; then grep -m3 -E 'panicked|ERROR|Test unit written' "$log" | sed 's/^/    /'; fi
done
exit $status
