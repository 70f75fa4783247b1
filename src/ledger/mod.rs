//! The ledger of outbound actions, below the shared state: what a send reads before it decides,
//! batched (`reads`), tool-limit reservations decided in Postgres (`reservations`,
//! docs/limits.md) and the intents recorded before every provider call (`intents`). It imports
//! nothing above `store`; what needs the directory (an agent's effective limits) stays in
//! `outbound`.

pub mod intents;
pub mod reads;
pub mod reservations;
