"""Compares what the callers were told (driver.json) with the store: every acknowledged send must
be recorded exactly once; every `unconfirmed` one recorded; limit counters equal recorded actions."""
import json, subprocess, sys

driver, psql, url = sys.argv[1:4]
told = json.load(open(driver))
agent = told["agentId"]


def query(sql):
    out = subprocess.run([psql, "-qAt", url, "-c", sql], check=True, capture_output=True, text=True).stdout
    return [line.split("|") for line in out.splitlines() if line]


rows = query(f"SELECT payload::jsonb->>'messageId', COALESCE(payload::jsonb->>'status', '') FROM events "
             f"WHERE aggregate_id = '{agent}' AND event_type = 'MessageSent'")
recorded = {}
for message_id, status in rows:
    recorded.setdefault(message_id, []).append(status)
acked = told["acked"]
missing = [m for m in acked if m not in recorded]
duplicated = [m for m, s in recorded.items() if len(s) > 1]
unconfirmed_recorded = sum(1 for m in told["unconfirmed"] if m in recorded)
reconciled = sum(1 for s in recorded.values() if "unconfirmed" in s)
counters = int(query(f"SELECT COALESCE(SUM(actions), 0) FROM usage_counters WHERE scope = 'agent' AND key = '{agent}' AND period = 'day'")[0][0])
failed = int(query(f"SELECT COUNT(*) FROM events WHERE aggregate_id = '{agent}' AND event_type = 'MessageFailed'")[0][0])
intents = int(query("SELECT COUNT(*) FROM outbound_intents")[0][0])
leaked = counters - len(rows)
print(f"acknowledged {len(acked)}  found {len(acked) - len(missing)}  missing {len(missing)}  duplicated {len(duplicated)}")
print(f"answered unconfirmed {len(told['unconfirmed'])} (recorded {unconfirmed_recorded})  "
      f"recorded as sent-unconfirmed by reconciliation {reconciled}  failed {failed}")
print(f"limit counters {counters}  recorded sends {len(rows)}  leaked reservations {leaked}  open intents {intents}")
print(f"other answers: {told['errors']}")
print(f"longest answered send request: {told.get('longestAnsweredSeconds', 0):.3f} s")
sys.exit(0 if not missing and not duplicated and leaked == 0 and intents == 0 else 1)
