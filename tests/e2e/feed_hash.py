"""Recompute every event hash of the auditor feed from the documentation alone (docs/events.md#envelope, docs/events.md#hash-chain).

Reads GET /admin/api/events?raw=true (master token) page by page, and for each envelope computes

    hash = hex(SHA-256(prevHash "\\n" aggregateType "\\n" aggregateId "\\n" sequence "\\n" eventType
                       "\\n" eventVersion "\\n" JCS(stored payload) "\\n" JCS(metadata minus hash)))

with a JSON Canonicalization Scheme (RFC 8785) written here, then checks each aggregate's chain:
sequences from 1 without gaps, prevHash of sequence 1 = 64 zeros, every prevHash = the previous
hash. Nothing of commguard's code is used; only the standard library.

Environment: COMMGUARD_URL, COMMGUARD_MASTER_TOKEN. Optional argument: the minimum number of
events the feed must hold. Prints PASS lines; exits non-zero on the first mismatch.
"""

from __future__ import annotations

import decimal
import hashlib
import json
import math
import os
import sys
import urllib.request

GENESIS = "0" * 64
# The members of the stored metadata besides `hash` (docs/events.md#envelope envelope fields that come from it).
METADATA_FIELDS = ("eventId", "occurredAt", "orgId", "actor", "requestId", "transport", "provenance", "prevHash")


# ---------------------------------------------------------------- RFC 8785 (JCS)

def jcs_number(value: float | int) -> str:
    """ECMAScript Number.prototype.toString of the IEEE 754 double `value` (RFC 8785 §3.2.2.3)."""
    if isinstance(value, int):
        value = float(value)  # JSON numbers are doubles; exact for |n| <= 2**53
    if math.isnan(value) or math.isinf(value):
        raise ValueError("NaN and Infinity are not JSON")
    if value == 0:
        return "0"  # also -0
    sign = "-" if value < 0 else ""
    # repr gives the shortest digit string that round-trips, as ECMAScript requires.
    digits_tuple = decimal.Decimal(repr(abs(value))).normalize().as_tuple()
    digits = "".join(str(d) for d in digits_tuple.digits)
    k = len(digits)
    n = digits_tuple.exponent + k  # value = 0.digits × 10^n
    if k <= n <= 21:
        text = digits + "0" * (n - k)
    elif 0 < n <= 21:
        text = digits[:n] + "." + digits[n:]
    elif -6 < n <= 0:
        text = "0." + "0" * (-n) + digits
    else:
        e = n - 1
        exponent = ("+" if e >= 0 else "-") + str(abs(e))
        text = (digits if k == 1 else digits[0] + "." + digits[1:]) + "e" + exponent
    return sign + text


def jcs_string(value: str) -> str:
    """A JSON string as ECMAScript's JSON.stringify writes it (RFC 8785 §3.2.2.2)."""
    out = ['"']
    short = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
    for ch in value:
        if ch in short:
            out.append(short[ch])
        elif ord(ch) < 0x20:
            out.append("\\u%04x" % ord(ch))
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def utf16_key(key: str) -> bytes:
    """Object members are sorted by the UTF-16 code units of their names (RFC 8785 §3.2.3)."""
    return key.encode("utf-16-be")


def jcs(value) -> str:
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, (int, float)):
        return jcs_number(value)
    if isinstance(value, str):
        return jcs_string(value)
    if isinstance(value, list):
        return "[" + ",".join(jcs(v) for v in value) + "]"
    if isinstance(value, dict):
        members = sorted(value.items(), key=lambda kv: utf16_key(kv[0]))
        return "{" + ",".join(jcs_string(k) + ":" + jcs(v) for k, v in members) + "}"
    raise TypeError(f"not JSON: {value!r}")


def self_test() -> None:
    """The examples of RFC 8785 (§3.2.2.3 numbers, §3.2.3 sorting) and a few edge cases."""
    numbers = {
        0.0: "0", -0.0: "0", 1.0: "1", -1.5: "-1.5", 0.0079: "0.0079", 1e21: "1e+21", 1e20: "100000000000000000000",
        1e-7: "1e-7", 1e-6: "0.000001", 123456789012345680000.0: "123456789012345680000",
        4.50: "4.5", 2e-3: "0.002", 0.000001: "0.000001", 333333333.3333333: "333333333.3333333",
        1.7976931348623157e308: "1.7976931348623157e+308", 5e-324: "5e-324", 9007199254740992: "9007199254740992",
    }
    for value, expected in numbers.items():
        assert jcs_number(value) == expected, (value, jcs_number(value), expected)
    sample = {"\u20ac": "Euro Sign", "\r": "Carriage Return", "\ufb33": "Hebrew Letter Dalet With Dagesh",
              "1": "One", "\U0001f600": "Emoji: Grinning Face", "\u0080": "Control", "\u00f6": "Latin Small Letter O With Diaeresis"}
    order = [k for k, _ in sorted(sample.items(), key=lambda kv: utf16_key(kv[0]))]
    assert order == ["\r", "1", "\u0080", "\u00f6", "\u20ac", "\U0001f600", "\ufb33"], order
    assert jcs({"b": [1, "x\u0001\n"], "a": None}) == '{"a":null,"b":[1,"x\\u0001\\n"]}'
    print("PASS jcs matches the RFC 8785 examples")


# ---------------------------------------------------------------- the feed

def get(base: str, token: str, path: str) -> dict:
    request = urllib.request.Request(base + path, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200, response.status
        return json.loads(response.read().decode("utf-8"))


def event_hash(envelope: dict, metadata: dict) -> str:
    without_hash = {k: v for k, v in metadata.items() if k != "hash"}
    parts = [
        envelope["prevHash"], envelope["aggregateType"], envelope["aggregateId"], str(envelope["sequence"]),
        envelope["eventType"], envelope["eventVersion"], jcs(envelope["payload"]), jcs(without_hash),
    ]
    return hashlib.sha256("\n".join(parts).encode("utf-8")).hexdigest()


def main() -> int:
    base = os.environ["COMMGUARD_URL"].rstrip("/")
    token = os.environ["COMMGUARD_MASTER_TOKEN"]
    minimum = int(sys.argv[1]) if len(sys.argv) > 1 else 1
    self_test()

    events, after = [], 0
    while True:
        page = get(base, token, f"/admin/api/events?raw=true&limit=50&after={after}")
        if not page["events"]:
            break
        events.extend(page["events"])
        after = page["nextAfter"]
    assert len(events) >= minimum, f"only {len(events)} events in the feed"
    positions = [e["position"] for e in events]
    assert positions == sorted(set(positions)), "positions rise strictly"

    sealed = 0
    for envelope in events:
        metadata = envelope["metadata"]
        # The envelope's context fields are the stored metadata's (docs/events.md#envelope), so either source works.
        rebuilt = {name: envelope[name] for name in METADATA_FIELDS}
        assert {k: v for k, v in metadata.items() if k != "hash"} == rebuilt, (metadata, rebuilt)
        assert metadata["hash"] == envelope["hash"]
        computed = event_hash(envelope, metadata)
        assert computed == envelope["hash"], (envelope["aggregateType"], envelope["aggregateId"], envelope["sequence"])
        sealed += '"$pii"' in json.dumps(envelope["payload"])
    print(f"PASS {len(events)} hashes recomputed ({sealed} events with sealed personal fields)")

    chains: dict[tuple[str, str], list[dict]] = {}
    for envelope in events:
        chains.setdefault((envelope["aggregateType"], envelope["aggregateId"]), []).append(envelope)
    for (kind, ident), chain in chains.items():
        chain.sort(key=lambda e: e["sequence"])
        previous = GENESIS
        for expected, envelope in enumerate(chain, start=1):
            assert envelope["sequence"] == expected, f"{kind}/{ident}: sequence {envelope['sequence']} != {expected}"
            assert envelope["prevHash"] == previous, f"{kind}/{ident} {expected}: prevHash does not link"
            previous = envelope["hash"]
    print(f"PASS {len(chains)} chains link from sequence 1")
    assert sealed > 0, "the feed had no sealed field to hash"
    return 0


if __name__ == "__main__":
    sys.exit(main())
