//! Placeholder, filled by the error work.
