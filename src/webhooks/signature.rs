//! Webhook signatures: Twilio's HMAC-SHA1 over the public URL and the sorted form parameters
//! (docs/webhooks.md#twilio-routes), and Svix / Standard Webhooks' HMAC-SHA256 over the raw body (docs/webhooks.md#email).
//! Pure functions: the handlers supply secrets, the clock and the window.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// base64(HMAC-SHA1(auth token, URL + key + value for every parameter, sorted by key in byte
/// order, repeated keys by value)).
pub fn twilio_expected(auth_token: &str, url: &str, params: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    sorted.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()).then_with(|| a.1.as_bytes().cmp(b.1.as_bytes())));
    let mut mac = Hmac::<Sha1>::new_from_slice(auth_token.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(url.as_bytes());
    for (key, value) in sorted {
        mac.update(key.as_bytes());
        mac.update(value.as_bytes());
    }
    STANDARD.encode(mac.finalize().into_bytes())
}

/// Whether `given` (the `X-Twilio-Signature` header) is the expected signature, in constant time.
pub fn twilio_valid(auth_token: &str, url: &str, params: &[(String, String)], given: &str) -> bool {
    let expected = twilio_expected(auth_token, url, params);
    expected.as_bytes().ct_eq(given.trim().as_bytes()).into()
}

/// Why a Svix request was refused, with the contract's text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SvixRefusal {
    MissingHeaders,
    BadTimestamp,
    Expired,
    BadSignature,
}

impl SvixRefusal {
    pub fn message(self) -> &'static str {
        match self {
            Self::MissingHeaders => "Missing Svix signature headers",
            Self::BadTimestamp => "Invalid webhook timestamp",
            Self::Expired => "Webhook timestamp expired",
            Self::BadSignature => "Invalid webhook signature",
        }
    }
}

pub struct SvixHeaders<'a> {
    pub id: Option<&'a str>,
    pub timestamp: Option<&'a str>,
    pub signature: Option<&'a str>,
}

/// Verifies a Svix delivery: headers present, timestamp within `tolerance` seconds of `now`,
/// and one `v1,<b64>` entry equal (constant time) to base64(HMAC-SHA256(key, id.ts.body)), the
/// key being the base64 decoding of the secret without its `whsec_` prefix. Returns the id.
pub fn svix_verify<'a>(
    secret: &str,
    headers: &SvixHeaders<'a>,
    body: &[u8],
    now_unix: i64,
    tolerance: i64,
) -> Result<&'a str, SvixRefusal> {
    let (Some(id), Some(timestamp), Some(signatures)) = (headers.id, headers.timestamp, headers.signature) else {
        return Err(SvixRefusal::MissingHeaders);
    };
    let ts: i64 = timestamp.trim().parse().map_err(|_| SvixRefusal::BadTimestamp)?;
    // In u64: `(now - ts).abs()` overflowed for a timestamp near i64::MIN and passed the check.
    if now_unix.abs_diff(ts) > tolerance.unsigned_abs() {
        return Err(SvixRefusal::Expired);
    }
    let key =
        STANDARD.decode(secret.strip_prefix("whsec_").unwrap_or(secret)).map_err(|_| SvixRefusal::BadSignature)?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("HMAC takes keys of any length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    let expected = STANDARD.encode(mac.finalize().into_bytes());
    let matches = signatures
        .split(' ')
        .filter_map(|entry| entry.split_once(','))
        .filter(|(version, _)| *version == "v1")
        .any(|(_, sig)| bool::from(expected.as_bytes().ct_eq(sig.as_bytes())));
    if matches {
        Ok(id)
    } else {
        Err(SvixRefusal::BadSignature)
    }
}

/// `X-Commguard-Signature` of a forwarded message: `v1=<hex HMAC-SHA256(secret, "<ts>.<body>")>`.
pub fn callback_signature(secret: &str, timestamp: i64, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(format!("{timestamp}.{body}").as_bytes());
    format!("v1={}", hex::encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn twilio_matches_the_documented_example() {
        // Twilio's published example (auth token 12345, these parameters and URL).
        let url = "https://mycompany.com/myapp.php?foo=1&bar=2";
        let p = params(&[
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+12349013030"),
            ("Digits", "1234"),
            ("From", "+12349013030"),
            ("To", "+18005551212"),
        ]);
        assert_eq!(twilio_expected("12345", url, &p), "0/KCTR6DLpKmkAf8muzZqo1nDgQ=");
        assert!(twilio_valid("12345", url, &p, "0/KCTR6DLpKmkAf8muzZqo1nDgQ="));
        assert!(!twilio_valid("12345", url, &p, "0/KCTR6DLpKmkAf8muzZqo1nDgQx"));
        assert!(!twilio_valid("54321", url, &p, "0/KCTR6DLpKmkAf8muzZqo1nDgQ="));
    }

    #[test]
    fn twilio_sorts_by_byte_order_and_repeated_keys_by_value() {
        let a = params(&[("b", "2"), ("a", "1"), ("B", "0"), ("a", "0")]);
        let b = params(&[("a", "0"), ("B", "0"), ("a", "1"), ("b", "2")]);
        assert_eq!(twilio_expected("t", "u", &a), twilio_expected("t", "u", &b));
    }

    #[test]
    fn svix_checks_headers_time_and_signature() {
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let body = br#"{"type":"email.received"}"#;
        let sign = |id: &str, ts: &str| {
            let key = STANDARD.decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
            let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
            mac.update(format!("{id}.{ts}.").as_bytes());
            mac.update(body);
            format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
        };
        let good = format!("v0,abc {}", sign("msg_1", "1000"));
        let h = |id, ts, sig| SvixHeaders { id, timestamp: ts, signature: sig };
        assert_eq!(svix_verify(secret, &h(Some("msg_1"), Some("1000"), Some(&good)), body, 1100, 300), Ok("msg_1"));
        assert_eq!(
            svix_verify(secret, &h(Some("msg_1"), None, Some(&good)), body, 1100, 300),
            Err(SvixRefusal::MissingHeaders)
        );
        assert_eq!(
            svix_verify(secret, &h(Some("msg_1"), Some("10x"), Some(&good)), body, 1100, 300),
            Err(SvixRefusal::BadTimestamp)
        );
        assert_eq!(
            svix_verify(secret, &h(Some("msg_1"), Some("1000"), Some(&good)), body, 1301, 300),
            Err(SvixRefusal::Expired)
        );
        // A timestamp whose distance from now does not fit in an i64 is expired too, signed or not.
        let far = (1000 - (1i128 << 63)).to_string();
        let far_signed = sign("msg_1", &far);
        assert_eq!(
            svix_verify(secret, &h(Some("msg_1"), Some(&far), Some(&far_signed)), body, 1000, 300),
            Err(SvixRefusal::Expired)
        );
        assert_eq!(
            svix_verify(secret, &h(Some("msg_2"), Some("1000"), Some(&good)), body, 1000, 300),
            Err(SvixRefusal::BadSignature)
        );
        assert_eq!(
            svix_verify(secret, &h(Some("msg_1"), Some("1000"), Some(&good)), b"{}", 1000, 300),
            Err(SvixRefusal::BadSignature)
        );
    }
}
