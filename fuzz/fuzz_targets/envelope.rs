//! The PII envelope decoder: any JSON payload is opened with a fixed live key (and one known
//! destroyed key); sealed fields read their text, "[erased]" or a redaction, never a panic.
#![no_main]
use std::collections::HashMap;

use commguard::store::sealing::OpeningKeys;
use libfuzzer_sys::fuzz_target;
use uuid::Uuid;

fuzz_target!(|data: &[u8]| {
    let Ok(mut payload) = serde_json::from_slice::<serde_json::Value>(data) else { return };
    let live = Uuid::from_u128(1);
    let gone = Uuid::from_u128(2);
    let keys =
        OpeningKeys::from_keys(HashMap::from([(live, [7u8; 32])]), HashMap::from([(gone, "retention".to_string())]));
    let _ = keys.open(&mut payload, Uuid::from_u128(3));
    if let Ok(field) = serde_json::from_slice::<commguard_domain::pii::SealedField>(data) {
        let _ = commguard::crypto::envelope::open(&field, Uuid::nil(), "body", |id| (id == live).then_some([7u8; 32]));
    }
    let _ = serde_json::from_slice::<commguard_domain::pii::Pii>(data);
});
