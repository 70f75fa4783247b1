//! Bearer tokens: 32 CSPRNG bytes as 64 lowercase hex, stored only as SHA-256, compared in
//! constant time (docs/security.md, principle 6).

use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

pub fn sha256_hex(value: &str) -> String {
    hex::encode(Sha256::digest(value.as_bytes()))
}

/// First 8 hex of SHA-256: identifies a presented value in logs and events without revealing it.
pub fn fingerprint(value: &str) -> String {
    sha256_hex(value)[..8].to_string()
}

pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

/// Compares digests, so neither the length nor a prefix of the master token leaks through timing.
pub fn verify_master(presented: &str, expected: &str) -> bool {
    constant_time_eq(&Sha256::digest(presented.as_bytes()), &Sha256::digest(expected.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_64_lowercase_hex_and_distinct() {
        let (a, b) = (random_token(), random_token());
        assert_eq!(a.len(), 64);
        assert!(a.chars().all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)));
        assert_ne!(a, b);
    }

    #[test]
    fn master_comparison_and_fingerprints() {
        assert!(verify_master("secret-token", "secret-token"));
        assert!(!verify_master("secret-token", "secret-tokem"));
        assert!(!verify_master("", "x"));
        assert_eq!(fingerprint("abc"), "ba7816bf");
    }
}
