//! Cryptography: key wrapping and the blind index (`keys`), sealed personal-data fields
//! (`envelope`), token generation and constant-time comparison (`tokens`), and provider
//! credential encryption (`credentials`). Pure functions; the key store in Postgres is in `store`.

pub mod credentials;
pub mod envelope;
pub mod keys;
pub mod tokens;

pub use keys::{DataKeys, Key};

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// Production requires the key in the environment; development generates one.
    #[error("{0} must be set in production (64 hex characters)")]
    KeyRequired(String),
    #[error("{0}: Encryption key must be 32 bytes (64 hex characters)")]
    BadKey(String),
    #[error("key file {path}: {source}")]
    KeyFile { path: String, source: std::io::Error },
    #[error("decryption failed: wrong key, wrong associated data, or tampered ciphertext")]
    Decrypt,
}

impl crate::error::Failure for CryptoError {}
