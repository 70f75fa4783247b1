#!/usr/bin/env bash
# Runs the server on its embedded default (a private PostgreSQL cluster under ./var, started and
# stopped with the server) after installing Debian's PostgreSQL server programs if they are
# missing. With DATABASE_URL set, nothing is installed and that database is used. Arguments go to
# `commguard serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${DATABASE_URL:-}" ]; then
  source scripts/lib/pg.sh
  PG_BIN_DIR=$(ensure_pg_bin)
  export PG_BIN_DIR
fi
exec cargo run --release --locked -- serve "$@"
