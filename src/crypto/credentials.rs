//! Provider credentials at rest (docs/privacy.md#provider-credentials): AES-256-GCM with a fresh 12-byte IV per write,
//! bound by AAD to scope, organization, provider, credential name and key version.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use rand::RngCore;
use sha2::{Digest, Sha256};

use super::{CryptoError, Key};

/// First 8 hex of SHA-256 over the raw key: picks the key on read, after rotation.
pub fn key_version(key: &Key) -> String {
    hex::encode(&Sha256::digest(key)[..4])
}

pub struct CredentialAad<'a> {
    pub scope: &'a str,
    pub org_id: &'a str,
    pub provider: &'a str,
    pub credential_key: &'a str,
    pub key_version: &'a str,
}

impl CredentialAad<'_> {
    fn text(&self) -> String {
        format!("{}|{}|{}|{}|{}", self.scope, self.org_id, self.provider, self.credential_key, self.key_version)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncryptedCredential {
    pub iv: String,
    pub auth_tag: String,
    pub ciphertext: String,
}

pub fn encrypt(key: &Key, aad: &CredentialAad<'_>, plaintext: &str) -> EncryptedCredential {
    let mut iv = [0u8; 12];
    rand::rngs::OsRng.fill_bytes(&mut iv);
    let sealed = Aes256Gcm::new(key.into())
        .encrypt(Nonce::from_slice(&iv), Payload { msg: plaintext.as_bytes(), aad: aad.text().as_bytes() })
        .expect("AES-GCM encryption cannot fail");
    let (ciphertext, tag) = sealed.split_at(sealed.len() - 16);
    EncryptedCredential { iv: hex::encode(iv), auth_tag: hex::encode(tag), ciphertext: hex::encode(ciphertext) }
}

pub fn decrypt(key: &Key, aad: &CredentialAad<'_>, stored: &EncryptedCredential) -> Result<String, CryptoError> {
    let iv = hex::decode(&stored.iv).map_err(|_| CryptoError::Decrypt)?;
    let mut sealed = hex::decode(&stored.ciphertext).map_err(|_| CryptoError::Decrypt)?;
    sealed.extend(hex::decode(&stored.auth_tag).map_err(|_| CryptoError::Decrypt)?);
    if iv.len() != 12 {
        return Err(CryptoError::Decrypt);
    }
    let plain = Aes256Gcm::new(key.into())
        .decrypt(Nonce::from_slice(&iv), Payload { msg: &sealed, aad: aad.text().as_bytes() })
        .map_err(|_| CryptoError::Decrypt)?;
    String::from_utf8(plain).map_err(|_| CryptoError::Decrypt)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_round_trip_only_with_their_aad() {
        let key = [7u8; 32];
        let version = key_version(&key);
        assert_eq!(version.len(), 8);
        let aad = CredentialAad {
            scope: "org",
            org_id: "acme",
            provider: "twilio",
            credential_key: "authToken",
            key_version: &version,
        };
        let stored = encrypt(&key, &aad, "s3cr3t");
        assert_eq!((stored.iv.len(), stored.auth_tag.len()), (24, 32));
        assert_eq!(decrypt(&key, &aad, &stored).unwrap(), "s3cr3t");
        let other = CredentialAad { credential_key: "accountSid", ..aad };
        assert!(decrypt(&key, &other, &stored).is_err());
    }
}
