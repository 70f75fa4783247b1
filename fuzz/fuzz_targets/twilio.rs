//! The Twilio form and signature path: the body is parsed as the handler does, signed with a
//! fixed token and checked; a signature over the same form must verify and a mutated one not.
#![no_main]
use commguard::webhooks::signature::{twilio_expected, twilio_valid};
use libfuzzer_sys::fuzz_target;

const TOKEN: &str = "fuzz-auth-token";
const URL: &str = "https://example.com/webhooks/a1/sms";

fuzz_target!(|data: &[u8]| {
    // First line: the X-Twilio-Signature header; the rest: the form body.
    let (given, body) = match data.iter().position(|b| *b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&b""[..], data),
    };
    let params: Vec<(String, String)> = form_urlencoded::parse(body).into_owned().collect();
    let given = String::from_utf8_lossy(given);
    let _ = twilio_valid(TOKEN, URL, &params, &given);
    let expected = twilio_expected(TOKEN, URL, &params);
    assert!(twilio_valid(TOKEN, URL, &params, &expected));
    assert!(!twilio_valid("another-token", URL, &params, &expected));
});
