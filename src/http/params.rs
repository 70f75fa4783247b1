//! Query parameters of the admin API's reads, taken as text and checked here, so a malformed one
//! is answered like any other bad input — JSON `invalid_input` naming the parameter — where
//! axum's `Query` would answer plain text. A repeated parameter keeps its last value; an empty one
//! counts as absent.

use std::collections::HashMap;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::ApiError;
use crate::paging::Page;
use crate::validate::{self, invalid};

pub struct Params {
    values: HashMap<String, String>,
    /// The route's path: the list a `cursor` belongs to.
    path: String,
}

impl<S: Send + Sync> FromRequestParts<S> for Params {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let query = parts.uri.query().unwrap_or_default();
        let pairs: HashMap<String, String> =
            form_urlencoded::parse(query.as_bytes()).into_owned().filter(|(_, v)| !v.is_empty()).collect();
        // Nothing holding U+0000 goes further: Postgres cannot store it (see `validate::storable`).
        for (name, value) in &pairs {
            validate::storable(name, name)?;
            validate::storable(name, value)?;
        }
        Ok(Self { values: pairs, path: parts.uri.path().to_string() })
    }
}

impl Params {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    /// An identifier (`agentId`, `orgId`): the contract's id format.
    pub fn id(&self, name: &str) -> Result<Option<String>, ApiError> {
        self.get(name).map(|v| validate::id(name, v)).transpose()
    }

    /// An integer within `range`, `default` when absent.
    pub fn integer(&self, name: &str, default: i64, range: (i64, i64)) -> Result<i64, ApiError> {
        match self.get(name) {
            None => Ok(default),
            Some(v) => v.trim().parse::<i64>().ok().filter(|n| (range.0..=range.1).contains(n)).ok_or_else(|| {
                if range.1 == i64::MAX {
                    invalid(name, format!("must be an integer ≥ {}", range.0))
                } else {
                    invalid(name, format!("must be an integer between {} and {}", range.0, range.1))
                }
            }),
        }
    }

    /// One of `allowed`.
    pub fn choice(&self, name: &str, allowed: &[&str]) -> Result<Option<String>, ApiError> {
        match self.get(name) {
            Some(v) if !allowed.contains(&v) => Err(invalid(name, format!("must be one of {}", allowed.join(", ")))),
            other => Ok(other.map(str::to_string)),
        }
    }

    /// An RFC 3339 instant (`as_of`, `from`, `to`). A `+` offset sent unencoded arrives as a
    /// space (form encoding), and is read as the `+` it was.
    pub fn time(&self, name: &str) -> Result<Option<DateTime<Utc>>, ApiError> {
        self.get(name)
            .map(|v| {
                DateTime::parse_from_rfc3339(&v.replace(' ', "+"))
                    .map(|t| t.with_timezone(&Utc))
                    .map_err(|_| invalid(name, "must be an RFC 3339 time, e.g. 2026-12-01T16:00:00Z"))
            })
            .transpose()
    }

    /// `cursor` and `limit` of a list: the route's own (a cursor of another route is refused).
    pub fn page<K: Serialize + DeserializeOwned>(&self) -> Result<Page<K>, ApiError> {
        Page::from_query(&self.path, self.get("cursor"), self.get("limit"))
    }
}
