//! The Svix header and body parsing: headers and body from the input, verified with a fixed
//! secret and clock; the body parsed for its addresses as the email webhook does.
#![no_main]
use commguard::webhooks::signature::{svix_verify, SvixHeaders};
use libfuzzer_sys::fuzz_target;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const NOW: i64 = 1_700_000_000;

fuzz_target!(|data: &[u8]| {
    // Lines: svix-id, svix-timestamp, svix-signature, then the body; a missing line is a
    // missing header.
    let mut parts = data.splitn(4, |b| *b == b'\n');
    let id = parts.next().and_then(|p| std::str::from_utf8(p).ok());
    let timestamp = parts.next().and_then(|p| std::str::from_utf8(p).ok());
    let signature = parts.next().and_then(|p| std::str::from_utf8(p).ok());
    let body = parts.next().unwrap_or_default();
    let headers = SvixHeaders { id, timestamp, signature };
    let _ = svix_verify(SECRET, &headers, body, NOW, 300);
    let _ = svix_verify(std::str::from_utf8(data).unwrap_or("x"), &headers, body, NOW, i64::MAX);
    if let Ok(payload) = serde_json::from_slice::<serde_json::Value>(body) {
        let data = &payload["data"];
        for field in ["from", "to"] {
            for address in data.get(field).map(commguard::webhooks::addresses).unwrap_or_default() {
                assert!(commguard::validate::email("to", &address).is_ok());
            }
        }
    }
});
