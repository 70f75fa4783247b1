"""Schemathesis hooks for `scripts/chaos.sh api` (loaded through SCHEMATHESIS_HOOKS).

`no_state_change_on_4xx`: a request answered 4xx changes nothing. The store records refusals
(invariant: every action allowed or refused is recorded), so the only events a 4xx may append are
the refusal records; any other event type appended while answering it fails the check. Cases run
one at a time (one worker), so the events appended since the previous response belong to this one.
"""
import os, subprocess

import schemathesis

PSQL, DB = os.environ["CHAOS_PSQL"], os.environ["CHAOS_DB"]
# What a refused request may record: the refusal itself; for a bad credential the failed attempt
# and the lockout it may trigger; an alert those records raise (alerts watch refusals); and the
# sessions an earlier, successful revocation closes (asynchronously, so they may land while a
# later case is answered).
REFUSAL_EVENTS = set(os.environ.get("CHAOS_REFUSAL_EVENTS", "ActionRefused,AuthFailed,IpLockedOut,AlertRaised,SessionClosed").split(","))
_last = {"position": None}


def _query(sql):
    out = subprocess.run([PSQL, "-qAt", DB, "-c", sql], check=True, capture_output=True, text=True).stdout
    return [line.split("|") for line in out.splitlines() if line]


def _head():
    return int(_query("SELECT COALESCE(MAX(position), 0) FROM events")[0][0])


@schemathesis.check
def no_server_error(ctx, response, case):
    """No 5xx, except the one the contract documents for a provider that cannot be reached:
    502 `provider_error` when registering credentials with verification (the run has no network
    to Twilio or Resend, so that answer is the right one)."""
    if response.status_code < 500:
        return None
    code = None
    try:
        code = response.json().get("code")
    except Exception:
        pass
    if response.status_code == 502 and code == "provider_error" and case.path == "/admin/api/providers":
        return None
    raise AssertionError(f"{case.method} {case.path} answered {response.status_code} ({code})")


@schemathesis.check
def no_state_change_on_4xx(ctx, response, case):
    if _last["position"] is None:
        _last["position"] = int(os.environ.get("CHAOS_START_POSITION", "0"))
    since = _last["position"]
    rows = _query(f"SELECT position, event_type FROM events WHERE position > {since} ORDER BY position")
    if rows:
        _last["position"] = int(rows[-1][0])
    if 400 <= response.status_code < 500:
        changed = sorted({t for _, t in rows if t not in REFUSAL_EVENTS})
        if changed:
            raise AssertionError(
                f"{case.method} {case.path} answered {response.status_code} but appended {', '.join(changed)}"
            )
    return None
