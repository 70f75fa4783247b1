//! The field envelope of docs/privacy.md#keys-and-crypto-shredding: AES-256-GCM under a field key derived from every key
//! the field is sealed with, bound to its event and path. Destroying any one of those keys makes
//! the field unreadable for good.

use aes_gcm::aead::{Aead, AeadInPlace, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use commguard_domain::pii::SealedField;
use hkdf::Hkdf;
use rand::RngCore;
use sha2::Sha256;
use uuid::Uuid;

use super::Key;

const FIELD_KEY_INFO: &[u8] = b"commguard/pii/v1";

/// Why a field could not be opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opened {
    /// One of its keys is destroyed (erasure or retention).
    Erased,
    /// Authentication failed: the stored field was altered or moved.
    Corrupt,
}

pub fn seal(keys: &[(Uuid, Key)], event_id: Uuid, path: &str, plaintext: &str) -> SealedField {
    let cipher = field_cipher(keys.iter().map(|(_, k)| k));
    let mut nonce = [0u8; 12];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let aad = aad(event_id, path);
    let ciphertext = cipher
        .encrypt(Nonce::from_slice(&nonce), Payload { msg: plaintext.as_bytes(), aad: aad.as_bytes() })
        .expect("AES-GCM encryption of a field cannot fail");
    SealedField {
        marker: 1,
        k: keys.iter().map(|(id, _)| *id).collect(),
        n: STANDARD.encode(nonce),
        c: STANDARD.encode(ciphertext),
    }
}

pub fn open(
    field: &SealedField,
    event_id: Uuid,
    path: &str,
    lookup: impl Fn(Uuid) -> Option<Key>,
) -> Result<String, Opened> {
    let keys: Vec<Key> = field.k.iter().map(|id| lookup(*id)).collect::<Option<_>>().ok_or(Opened::Erased)?;
    open_with(field, &field_key(keys.iter()), event_id, path)
}

/// The field key of a field sealed under `keys`, in the order of its `k`: HKDF-SHA256 of their
/// concatenated bytes. A function of the keys alone, so a reader may keep it while they live.
pub fn field_key<'a>(keys: impl Iterator<Item = &'a Key>) -> Key {
    let ikm: Vec<u8> = keys.flat_map(|k| k.iter().copied()).collect();
    let mut field_key = [0u8; 32];
    Hkdf::<Sha256>::new(None, &ikm).expand(FIELD_KEY_INFO, &mut field_key).expect("32 bytes is a valid HKDF output");
    field_key
}

/// Opens `field` with its field key (`field_key` of its keys).
pub fn open_with(field: &SealedField, field_key: &Key, event_id: Uuid, path: &str) -> Result<String, Opened> {
    let mut nonce = [0u8; 12];
    match STANDARD.decode_slice(&field.n, &mut nonce) {
        Ok(12) => {}
        _ => return Err(Opened::Corrupt),
    }
    let mut text = STANDARD.decode(&field.c).map_err(|_| Opened::Corrupt)?;
    let aad = aad(event_id, path);
    Aes256Gcm::new(field_key.into())
        .decrypt_in_place(Nonce::from_slice(&nonce), aad.as_bytes(), &mut text)
        .map_err(|_| Opened::Corrupt)?;
    String::from_utf8(text).map_err(|_| Opened::Corrupt)
}

fn field_cipher<'a>(keys: impl Iterator<Item = &'a Key>) -> Aes256Gcm {
    Aes256Gcm::new((&field_key(keys)).into())
}

fn aad(event_id: Uuid, path: &str) -> String {
    format!("{event_id}|{path}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Vec<(Uuid, Key)> {
        vec![(Uuid::new_v4(), [1; 32]), (Uuid::new_v4(), [2; 32])]
    }

    #[test]
    fn a_sealed_field_opens_with_all_its_keys_and_only_where_it_was_sealed() {
        let keys = keys();
        let event = Uuid::new_v4();
        let sealed = seal(&keys, event, "to", "+15551234567");
        let lookup = |id: Uuid| keys.iter().find(|(k, _)| *k == id).map(|(_, key)| *key);
        assert_eq!(open(&sealed, event, "to", lookup).unwrap(), "+15551234567");
        assert_eq!(open(&sealed, event, "from", lookup), Err(Opened::Corrupt), "bound to its path");
        assert_eq!(open(&sealed, Uuid::new_v4(), "to", lookup), Err(Opened::Corrupt), "bound to its event");
        let json = serde_json::to_string(&sealed).unwrap();
        assert!(!json.contains("5551234567"));
    }

    #[test]
    fn destroying_any_one_key_erases_the_field() {
        let keys = keys();
        let event = Uuid::new_v4();
        let sealed = seal(&keys, event, "body", "hello");
        let without_second = |id: Uuid| (id == keys[0].0).then_some(keys[0].1);
        assert_eq!(open(&sealed, event, "body", without_second), Err(Opened::Erased));
    }

    #[test]
    fn an_altered_ciphertext_is_detected() {
        let keys = keys();
        let event = Uuid::new_v4();
        let mut sealed = seal(&keys, event, "body", "hello");
        let mut bytes = STANDARD.decode(&sealed.c).unwrap();
        bytes[0] ^= 1;
        sealed.c = STANDARD.encode(bytes);
        let lookup = |id: Uuid| keys.iter().find(|(k, _)| *k == id).map(|(_, key)| *key);
        assert_eq!(open(&sealed, event, "body", lookup), Err(Opened::Corrupt));
    }
}
