//! The input sanitiser and the phone / email / id normalisers on arbitrary text; the nested
//! NUL check on arbitrary JSON. A normalised value must normalise to itself, and the sanitizer's
//! rule set must name what its rules one by one name.
#![no_main]
use commguard::validate;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    // The rule set names what the rules one by one, in order, name.
    for field in ["body", "subject"] {
        let label = validate::sanitizer_label(field, &text);
        assert_eq!(label, validate::sanitizer_label_rule_by_rule(field, &text), "{field}");
    }
    let _ = validate::sanitize("body", &text);
    let _ = validate::storable("body", &text);
    let _ = validate::id("agentId", &text);
    if let Ok(phone) = validate::phone("to", &text) {
        assert_eq!(validate::phone("to", &phone).ok().as_deref(), Some(phone.as_str()), "phone not idempotent");
    }
    if let Ok(email) = validate::email("to", &text) {
        assert_eq!(validate::email("to", &email).ok().as_deref(), Some(email.as_str()), "email not idempotent");
    }
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) {
        let _ = validate::nul_path(&value);
        let _ = validate::money("amount", &value);
        let _ = validate::decimal("ratio", &value, 0.0, 1.0);
    }
});
