#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run calls exactly this):
#   1. installs what is missing: PostgreSQL server programs (Debian's `postgresql`), Chromium and
#      its driver for the console's browser tests (Debian's `chromium`, `chromium-driver`),
#      cargo-nextest if absent (falls back to `cargo test`), the Python venv for end-to-end clients;
#   2. starts a throwaway PostgreSQL cluster (unless DATABASE_URL is set) and stops it on exit;
#   3. checks that no module of src/ imports one that imports it back (scripts/check-cycles.py),
#      that the code is formatted, that clippy has nothing to say, and that the server's own build
#      has serde_json's float_roundtrip;
#   4. runs every test of the workspace against it.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/pg.sh
source scripts/lib/browser.sh

# Structure and habits first, for the whole suite (a filtered run skips them): they fail in
# seconds, the suite in minutes.
if [ $# -eq 0 ]; then
  ensure_python3
  if command -v rustup >/dev/null; then rustup component add rustfmt clippy >&2; fi
  python3 scripts/check-cycles.py
  cargo fmt --all -- --check
  cargo clippy --workspace --all-targets --locked -- -D warnings
  # The server reads numbers back exactly as it wrote them only with serde_json's float_roundtrip
  # (a 309-digit jsonb number failed without it). Test builds get the feature from dev-dependencies
  # as well, so no test can see it missing from the server's own build: its dependency tree can.
  features=$(cargo tree -p commguard -e normal,features -i serde_json --locked)
  if ! grep -q 'serde_json feature "float_roundtrip"' <<<"$features"; then
    echo "the server's build lacks serde_json's float_roundtrip feature" >&2
    exit 1
  fi
fi

pg_bin=$(ensure_pg_bin)
ensure_chromium
export PG_BIN_DIR="$pg_bin"

if [ -f scripts/e2e-requirements.txt ]; then
  ensure_venv scripts/e2e-requirements.txt .venv
  export COMMGUARD_TEST_PYTHON="$PWD/.venv/bin/python"
fi

if [ -z "${DATABASE_URL:-}" ]; then
  cluster=$(mktemp -d /tmp/commguard-test-XXXXXX)
  trap 'stop_cluster "$cluster"' EXIT
  start_cluster "$cluster" test
  export DATABASE_URL
  DATABASE_URL=$(cluster_url "$cluster")
fi
echo "test database: $DATABASE_URL" >&2

if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast "$@"
else
  cargo test --workspace --no-fail-fast "$@"
fi
