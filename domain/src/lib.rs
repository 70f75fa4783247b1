//! The commguard domain: aggregates, their commands and events, and the rules that decide them.
//!
//! No IO happens here (its Cargo.toml has no runtime, database or network crate): time,
//! identifiers and anything external reach an aggregate through its command or its services.

pub mod agent;
pub mod calling_hours;
pub mod contact;
pub mod content;
pub mod countries;
pub mod limits;
pub mod organization;
pub mod pii;
pub mod recording;
pub mod records;
pub mod refusal;
pub mod send;
pub mod time_zones;
pub mod values;
