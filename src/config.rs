//! One validated configuration, read once from the environment (CONTRACT §2).
//! STUB: the config work replaces this file with the full §2 reader; these names are relied on.

use std::path::PathBuf;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Environment {
    Development,
    Production,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub env: Environment,
    pub host: String,
    pub port: u16,
    pub database_url: Option<String>,
    pub data_dir: PathBuf,
    pub pg_bin_dir: Option<PathBuf>,
    pub database_max_connections: u32,
    /// `DATA_ENCRYPTION_KEY`; `None` in development means "generate into the data dir".
    pub data_encryption_key: Option<[u8; 32]>,
    pub credentials_encryption_key: Option<[u8; 32]>,
    pub demo_mode: bool,
    pub test_clock: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let key = |name: &str| -> Result<Option<[u8; 32]>, ConfigError> {
            get(name).map(|v| crate::crypto::keys::parse_hex_key(&v).ok_or_else(|| ConfigError(format!("{name}: Encryption key must be 32 bytes (64 hex characters)")))).transpose()
        };
        Ok(Self {
            env: if get("COMMGUARD_ENV").as_deref() == Some("production") { Environment::Production } else { Environment::Development },
            host: get("HOST").unwrap_or_else(|| "0.0.0.0".into()),
            port: get("PORT").map(|p| p.parse().map_err(|_| ConfigError("PORT".into()))).transpose()?.unwrap_or(3100),
            database_url: get("DATABASE_URL"),
            data_dir: get("COMMGUARD_DATA_DIR").unwrap_or_else(|| "./var".into()).into(),
            pg_bin_dir: get("PG_BIN_DIR").map(Into::into),
            database_max_connections: 10,
            data_encryption_key: key("DATA_ENCRYPTION_KEY")?,
            credentials_encryption_key: key("CREDENTIALS_ENCRYPTION_KEY")?,
            demo_mode: false,
            test_clock: false,
        })
    }
}
