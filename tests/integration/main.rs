//! The one integration-test binary: boots real servers on 127.0.0.1 port 0 against real
//! PostgreSQL databases (one fresh database per test, in the cluster `scripts/test.sh` starts).

mod support;

mod alerts;
mod anomaly;
mod audit_feed;
mod cli;
mod cli_admin;
mod compliance;
mod console;
mod crypto_shredding;
mod docs;
mod domain_store;
mod durability;
mod erasure;
mod error_texts;
mod event_store;
mod faults;
mod hardening;
mod hostile;
mod identity;
mod kept_connections;
mod mcp_e2e;
mod metrics;
mod negative;
mod openapi;
mod outage;
mod outbound;
mod providers;
mod read_models;
mod reservations;
mod retention;
mod server;
mod views;
