# Shared by scripts/test.sh and scripts/bench.sh: find or install PostgreSQL, and run a private
# throwaway cluster on a Unix socket. initdb refuses root, so as root the cluster runs as `postgres`.

ensure_pg_bin() {
  local dir
  for dir in "${PG_BIN_DIR:-}" "$(dirname "$(readlink -f "$(command -v initdb 2>/dev/null || echo /nonexistent)")")" \
             $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    if [ -n "$dir" ] && [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ]; then echo "$dir"; return; fi
  done
  echo "PostgreSQL server programs not found: installing Debian's postgresql package" >&2
  local sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq postgresql >&2
  ls -d /usr/lib/postgresql/*/bin | sort -V -r | head -n 1
}

# ensure_python3: Debian's python3, installed when missing (the cycle check and the venv need it).
ensure_python3() {
  command -v python3 >/dev/null && return
  echo "python3 not found: installing Debian's python3 package" >&2
  local sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3 >&2
}

# ensure_venv REQUIREMENTS DIR: a Python venv with the end-to-end clients. Debian's python3 comes
# without venv/pip (package python3-venv); it is installed when missing.
ensure_venv() {
  local requirements=$1 venv=$2
  if [ ! -x "$venv/bin/python" ]; then
    if ! command -v python3 >/dev/null || ! python3 -m venv "$venv" >&2; then
      echo "python3 venv support not found: installing Debian's python3-venv package" >&2
      rm -rf "$venv"
      local sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
      $sudo apt-get update -qq >&2
      DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3 python3-venv >&2
      python3 -m venv "$venv" >&2
    fi
  fi
  if ! cmp -s "$requirements" "$venv/.installed" 2>/dev/null; then
    "$venv/bin/pip" install -q -r "$requirements" >&2
    cp "$requirements" "$venv/.installed"
  fi
}

# run_pg CMD ARGS...: runs a PostgreSQL program, as `postgres` when we are root.
run_pg() {
  if [ "$(id -u)" -eq 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

# start_cluster DIR PROFILE: PROFILE `test` trades durability for speed (the data is thrown away);
# `bench` keeps durable commits, so figures mean what they say.
start_cluster() {
  local dir=$1 profile=$2
  [ "$(id -u)" -eq 0 ] && chown postgres: "$dir"
  run_pg "$PG_BIN_DIR/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --no-locale --no-instructions >/dev/null
  {
    echo "listen_addresses = ''"
    echo "unix_socket_directories = '$dir'"
    echo "max_connections = 400"
    echo "shared_buffers = 256MB"
    if [ "$profile" = test ]; then
      echo "fsync = off"; echo "synchronous_commit = off"; echo "full_page_writes = off"
    fi
  } >> "$dir/data/postgresql.conf"
  run_pg "$PG_BIN_DIR/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -t 60 start >/dev/null
}

cluster_url() {
  echo "postgres://postgres@localhost/postgres?host=$1"
}

stop_cluster() {
  local dir=$1
  run_pg "$PG_BIN_DIR/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 || true
  rm -rf "$dir"
}
