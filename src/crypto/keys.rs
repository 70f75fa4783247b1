//! The data key: the KEK that wraps every subject, retention and consent key, and the root of the
//! blind index. In development it is generated once into the data directory (mode 0600).

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use uuid::Uuid;

use super::CryptoError;

pub type Key = [u8; 32];

const BLIND_INDEX_INFO: &[u8] = b"commguard/blind-index/v1";

/// The configured key, else (development only) the one kept in `<data_dir>/keys/<var>.hex`,
/// generated on first use.
pub fn load_or_generate(
    var: &str,
    configured: Option<Key>,
    data_dir: &Path,
    production: bool,
) -> Result<Key, CryptoError> {
    if let Some(key) = configured {
        return Ok(key);
    }
    if production {
        return Err(CryptoError::KeyRequired(var.into()));
    }
    let dir = data_dir.join("keys");
    let path = dir.join(format!("{}.hex", var.to_ascii_lowercase()));
    let file_error = |source| CryptoError::KeyFile { path: path.display().to_string(), source };
    if path.exists() {
        // Tighten permissions a copy or an editor may have widened.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(file_error)?;
        let text = std::fs::read_to_string(&path).map_err(file_error)?;
        return parse_hex_key(text.trim()).ok_or_else(|| CryptoError::BadKey(path.display().to_string()));
    }
    std::fs::create_dir_all(&dir).map_err(file_error)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).map_err(file_error)?;
    let key = DataKeys::new_key();
    // Write to a private temporary file, then rename: a crash never leaves half a key.
    let tmp = dir.join(format!(".{}.{}", var.to_ascii_lowercase(), Uuid::new_v4().simple()));
    let mut file =
        std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp).map_err(file_error)?;
    file.write_all(hex::encode(key).as_bytes()).and_then(|_| file.sync_all()).map_err(file_error)?;
    std::fs::rename(&tmp, &path).map_err(file_error)?;
    tracing::warn!(
        variable = var,
        "generated a development key in the data directory; set it explicitly in production"
    );
    Ok(key)
}

/// 64 hex characters → 32 bytes.
pub fn parse_hex_key(text: &str) -> Option<Key> {
    let bytes = hex::decode(text).ok()?;
    bytes.try_into().ok()
}

/// The KEK and the blind-index root derived from `DATA_ENCRYPTION_KEY`.
pub struct DataKeys {
    kek: Aes256Gcm,
    blind_root: Key,
}

impl std::fmt::Debug for DataKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKeys([redacted])")
    }
}

impl DataKeys {
    pub fn new(data_key: &Key) -> Self {
        let mut blind_root = [0u8; 32];
        Hkdf::<Sha256>::new(None, data_key)
            .expand(BLIND_INDEX_INFO, &mut blind_root)
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        Self { kek: Aes256Gcm::new(data_key.into()), blind_root }
    }

    /// 32 CSPRNG bytes.
    pub fn new_key() -> Key {
        let mut key = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut key);
        key
    }

    /// The subject reference of a normalised identifier: first 32 hex of HMAC-SHA256(K_idx, id).
    pub fn blind_index(&self, normalised: &str) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.blind_root).expect("HMAC takes any key length");
        mac.update(normalised.as_bytes());
        hex::encode(&mac.finalize().into_bytes()[..16])
    }

    /// nonce ‖ AES-256-GCM(KEK, key), bound to the key's id.
    pub fn wrap(&self, key: &Key, key_id: Uuid) -> Vec<u8> {
        let mut nonce = [0u8; 12];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let aad = key_id.to_string();
        let sealed = self
            .kek
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: key, aad: aad.as_bytes() })
            .expect("AES-GCM encryption of 32 bytes cannot fail");
        [nonce.as_slice(), &sealed].concat()
    }

    pub fn unwrap(&self, wrapped: &[u8], key_id: Uuid) -> Result<Key, CryptoError> {
        if wrapped.len() < 12 {
            return Err(CryptoError::Decrypt);
        }
        let (nonce, sealed) = wrapped.split_at(12);
        let aad = key_id.to_string();
        let key = self
            .kek
            .decrypt(Nonce::from_slice(nonce), Payload { msg: sealed, aad: aad.as_bytes() })
            .map_err(|_| CryptoError::Decrypt)?;
        key.try_into().map_err(|_| CryptoError::Decrypt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrapped_keys_unwrap_only_under_their_id_and_kek() {
        let keys = DataKeys::new(&[1; 32]);
        let key = DataKeys::new_key();
        let id = Uuid::new_v4();
        let wrapped = keys.wrap(&key, id);
        assert_eq!(keys.unwrap(&wrapped, id).unwrap(), key);
        assert!(keys.unwrap(&wrapped, Uuid::new_v4()).is_err(), "bound to its id");
        assert!(DataKeys::new(&[2; 32]).unwrap(&wrapped, id).is_err(), "bound to the KEK");
        assert!(!wrapped.windows(32).any(|w| w == key), "never stored in the clear");
    }

    #[test]
    fn the_blind_index_is_stable_keyed_and_32_hex() {
        let a = DataKeys::new(&[1; 32]);
        let r = a.blind_index("+15551234567");
        assert_eq!(r.len(), 32);
        assert!(r.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(r, a.blind_index("+15551234567"));
        assert_ne!(r, a.blind_index("+15551234568"));
        assert_ne!(r, DataKeys::new(&[2; 32]).blind_index("+15551234567"));
    }

    #[test]
    fn development_keys_are_generated_once_with_private_permissions() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_generate("DATA_ENCRYPTION_KEY", None, dir.path(), false).unwrap();
        let path = dir.path().join("keys/data_encryption_key.hex");
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(load_or_generate("DATA_ENCRYPTION_KEY", None, dir.path(), false).unwrap(), first);
        assert!(matches!(
            load_or_generate("DATA_ENCRYPTION_KEY", None, dir.path(), true),
            Err(CryptoError::KeyRequired(_))
        ));
        assert_eq!(load_or_generate("X", Some([4; 32]), dir.path(), true).unwrap(), [4; 32]);
    }
}
