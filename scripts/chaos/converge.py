"""After a chaos run, with the server stopped: every projection converges to a rebuild from zero,
and the hash chains verify. Snapshots a digest of every table, runs `commguard replay` (which
rebuilds each projection into shadow tables and swaps them in), and compares the rebuilt tables
(those whose relation was replaced) with their snapshot row for row; then `commguard audit verify`
must print OK. Usage: converge.py PSQL DATABASE_URL COMMGUARD (the server's environment set)."""
import subprocess, sys

psql, url, commguard = sys.argv[1:4]


def query(sql):
    out = subprocess.run([psql, "-qAt", url, "-c", sql], check=True, capture_output=True, text=True).stdout
    return [line.split("|") for line in out.splitlines() if line]


def tables():
    return {name: oid for name, oid in query(
        "SELECT c.relname, c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = 'public' AND c.relkind = 'r' AND c.relname NOT LIKE '%\\_\\_shadow%' ORDER BY 1")}


def rows(table):
    # Every row as text, sorted: the comparison does not depend on physical order.
    return [r[0] for r in query(f"SELECT t::text FROM {table} t ORDER BY 1")]


before = tables()
snapshot = {name: rows(name) for name in before}
replay = subprocess.run([commguard, "replay"], capture_output=True, text=True)
if replay.returncode != 0:
    print(f"replay failed ({replay.returncode}): {replay.stderr.strip()}")
    sys.exit(1)
after = tables()
rebuilt = sorted(name for name in after if name in before and after[name] != before[name])
differing = []
for name in rebuilt:
    now = rows(name)
    if now != snapshot[name]:
        extra, gone = set(now) - set(snapshot[name]), set(snapshot[name]) - set(now)
        differing.append(name)
        print(f"projection table {name}: {len(snapshot[name])} rows live, {len(now)} rebuilt; "
              f"{len(gone)} only live, {len(extra)} only rebuilt")
        for r in sorted(gone)[:3]:
            print(f"   live    {r[:300]}")
        for r in sorted(extra)[:3]:
            print(f"   rebuilt {r[:300]}")
print(f"projections rebuilt from zero: {len(rebuilt)} tables, {sum(len(snapshot[n]) for n in rebuilt)} rows, "
      f"differing {len(differing)}")
verify = subprocess.run([commguard, "audit", "verify"], capture_output=True, text=True)
print(f"audit verify: {verify.stdout.strip() or verify.stderr.strip()}")
ok = not differing and rebuilt and verify.returncode == 0 and verify.stdout.startswith("OK")
sys.exit(0 if ok else 1)
