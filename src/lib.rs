//! commguard: the security and compliance core between AI agents and communication providers.
//!
//! The binary in `main.rs` is a thin shim over this library; `ARCHITECTURE.md` is the map.

pub mod alerts;
pub mod anomaly;
pub mod app;
pub mod auth;
pub mod cli;
pub mod clock;
pub mod config;
pub mod contacts;
pub mod crypto;
pub mod directory;
pub mod erasure;
pub mod error;
pub mod http;
pub mod identity_watch;
pub mod jobs;
pub mod ledger;
pub mod mcp;
pub mod metrics;
pub mod money;
pub mod outage;
pub mod outbound;
pub mod paging;
pub mod providers;
pub mod refusals;
pub mod retention;
pub mod sessions;
pub mod state;
pub mod store;
pub mod validate;
pub mod webhooks;
