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
