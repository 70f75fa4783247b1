//! Placeholder, filled by the HTTP hardening work.
