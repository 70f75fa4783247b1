// RFC 8785 JSON Canonicalization Scheme (JCS) and the docs/events.md#hash-chain event hash, for the
// console's Verify view. Written from the RFC: ECMAScript's own JSON.stringify is the RFC's
// serialization of numbers and strings; object members are sorted by UTF-16 code units, which
// is what Array.prototype.sort does with strings.
"use strict";
(function () {
  function jcs(value) {
    if (value === null) return "null";
    switch (typeof value) {
      case "boolean":
        return value ? "true" : "false";
      case "number":
        if (!Number.isFinite(value)) throw new Error("NaN and Infinity are not JSON");
        return JSON.stringify(value); // Number.prototype.toString; -0 gives "0"
      case "string":
        return JSON.stringify(value);
      case "object": {
        if (Array.isArray(value)) return "[" + value.map(jcs).join(",") + "]";
        const keys = Object.keys(value).sort();
        return "{" + keys.map((k) => JSON.stringify(k) + ":" + jcs(value[k])).join(",") + "}";
      }
      default:
        throw new Error("not JSON: " + typeof value);
    }
  }

  // The RFC's examples (§3.2.2.3 numbers, §3.2.3 member order) and a few edges.
  function selfTest() {
    const numbers = [
      [0, "0"], [-0, "0"], [1, "1"], [-1.5, "-1.5"], [0.0079, "0.0079"], [1e21, "1e+21"],
      [1e20, "100000000000000000000"], [1e-7, "1e-7"], [1e-6, "0.000001"], [333333333.3333333, "333333333.3333333"],
      [1.7976931348623157e308, "1.7976931348623157e+308"], [5e-324, "5e-324"], [9007199254740992, "9007199254740992"],
    ];
    for (const [n, text] of numbers) {
      if (jcs(n) !== text) throw new Error("JCS number " + n + " gave " + jcs(n));
    }
    const sample = { "\u20ac": 1, "\r": 2, "\ufb33": 3, "1": 4, "\ud83d\ude00": 5, "\u0080": 6, "\u00f6": 7 };
    const order = JSON.parse(jcs(sample));
    const expected = ["\r", "1", "\u0080", "\u00f6", "\u20ac", "\ud83d\ude00", "\ufb33"];
    // Object.keys puts integer-like keys first whatever the text says, so read the order from the text.
    const text = jcs(sample);
    let at = -1;
    for (const key of expected) {
      const i = text.indexOf(JSON.stringify(key) + ":");
      if (i <= at) throw new Error("JCS member order");
      at = i;
    }
    if (Object.keys(order).length !== 7) throw new Error("JCS members");
    if (jcs({ b: [1, "x\u0001\n"], a: null }) !== '{"a":null,"b":[1,"x\\u0001\\n"]}') throw new Error("JCS strings");
  }

  async function sha256Hex(text) {
    const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(text));
    return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
  }

  // docs/events.md#hash-chain: hex(SHA-256(prevHash \n aggregateType \n aggregateId \n sequence \n eventType \n
  // eventVersion \n JCS(stored payload) \n JCS(metadata minus hash))).
  function eventHash(envelope) {
    const metadata = Object.assign({}, envelope.metadata);
    delete metadata.hash;
    const parts = [
      envelope.prevHash, envelope.aggregateType, envelope.aggregateId, String(envelope.sequence),
      envelope.eventType, envelope.eventVersion, jcs(envelope.payload), jcs(metadata),
    ];
    return sha256Hex(parts.join("\n"));
  }

  window.CommguardJcs = { jcs, selfTest, sha256Hex, eventHash, GENESIS: "0".repeat(64) };
})();
