//! Keyset paging, shared by every list of the admin API and by `comms_dnc_list` (docs/admin-api.md:
//! `cursor` opaque, `limit` 50 by default and at most 500, `nextCursor` null at the end).
//!
//! A cursor is the sort key of the last item shown — base64url of its JSON — and the next page
//! starts strictly after it, so pages never repeat or skip an item however rows are added
//! meanwhile (no OFFSET: a row inserted before the cursor does not shift the pages after it).
//! A cursor only positions a read inside the caller's own scope; forging one shows nothing the
//! caller could not list anyway. It names its list (the route's path, or the tool), so a cursor of
//! another list — whose key may have the same shape — is refused like one that does not decode to
//! the list's key: `invalid_input`.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::error::ApiError;
use crate::validate::invalid;

pub const DEFAULT_LIMIT: i64 = 50;
pub const MAX_LIMIT: i64 = 500;

/// Where a page starts (after `after`, or at the beginning) and how many items it holds.
#[derive(Clone, Debug, PartialEq)]
pub struct Page<K> {
    pub after: Option<K>,
    pub limit: i64,
    /// The list the cursors are of.
    list: String,
}

impl<K: Serialize + DeserializeOwned> Page<K> {
    /// From a query string's `cursor` and `limit` (both text), for list `list`.
    pub fn from_query(list: &str, cursor: Option<&str>, limit: Option<&str>) -> Result<Self, ApiError> {
        let limit = match limit {
            None => None,
            Some(text) => Some(text.trim().parse::<i64>().map_err(|_| limit_error())?),
        };
        Self::new(list, cursor, limit.map(Value::from).as_ref())
    }

    /// From a tool's `cursor` and `limit` arguments, for list `list`.
    pub fn new(list: &str, cursor: Option<&str>, limit: Option<&Value>) -> Result<Self, ApiError> {
        let limit = match limit {
            None | Some(Value::Null) => DEFAULT_LIMIT,
            Some(v) => v.as_i64().filter(|n| (1..=MAX_LIMIT).contains(n)).ok_or_else(limit_error)?,
        };
        let after = match cursor.filter(|c| !c.is_empty()) {
            None => None,
            Some(c) => Some(decode(list, c).ok_or_else(|| invalid("cursor", "Invalid cursor"))?),
        };
        Ok(Self { after, limit, list: list.to_string() })
    }

    /// Rows to fetch: one more than the page, which tells whether another page follows.
    pub fn fetch(&self) -> i64 {
        self.limit + 1
    }

    /// Cuts `rows` (fetched in key order, at most `fetch()` of them) to the page and gives the
    /// cursor of the next page: the key of the page's last row, if any row follows it.
    pub fn finish<T>(&self, mut rows: Vec<T>, key: impl Fn(&T) -> K) -> (Vec<T>, Option<String>) {
        let more = rows.len() as i64 > self.limit;
        rows.truncate(self.limit as usize);
        let next = if more { rows.last().map(|row| encode(&self.list, &key(row))) } else { None };
        (rows, next)
    }
}

impl<K: Serialize + DeserializeOwned + Ord> Page<K> {
    /// A page of items already in memory: those after the cursor, in key order.
    pub fn of<T>(&self, mut items: Vec<T>, key: impl Fn(&T) -> K) -> (Vec<T>, Option<String>) {
        items.sort_by_key(|item| key(item));
        if let Some(after) = &self.after {
            items.retain(|item| key(item) > *after);
        }
        items.truncate(self.fetch() as usize);
        self.finish(items, key)
    }
}

fn limit_error() -> ApiError {
    invalid("limit", format!("must be an integer between 1 and {MAX_LIMIT}"))
}

/// `[list, key]` as JSON, base64url.
fn encode<K: Serialize>(list: &str, key: &K) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(&(list, key)).expect("a sort key serializes"))
}

fn decode<K: DeserializeOwned>(list: &str, cursor: &str) -> Option<K> {
    let (of, key): (String, K) = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(cursor).ok()?).ok()?;
    (of == list).then_some(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_follow_each_other_without_repeating_or_skipping() {
        let items: Vec<(String, i64)> = (0..7).map(|i| (format!("k{}", i % 3), i)).collect();
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let page: Page<(String, i64)> = Page::new("items", cursor.as_deref(), Some(&Value::from(3))).unwrap();
            let (rows, next) = page.of(items.clone(), |r| r.clone());
            assert!(rows.len() <= 3);
            seen.extend(rows);
            match next {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        let mut expected = items.clone();
        expected.sort();
        assert_eq!(seen, expected);
    }

    #[test]
    fn limits_and_cursors_are_checked() {
        assert_eq!(Page::<i64>::new("items", None, None).unwrap().limit, 50);
        assert_eq!(Page::<i64>::from_query("items", None, Some("500")).unwrap().limit, 500);
        for bad in ["0", "501", "x", "-1"] {
            assert_eq!(Page::<i64>::from_query("items", None, Some(bad)).unwrap_err().extra["field"], "limit");
        }
        let (_, next) = Page::<i64>::new("items", None, Some(&Value::from(1))).unwrap().finish(vec![4, 5], |n| *n);
        let after = Page::<i64>::from_query("items", next.as_deref(), None).unwrap().after;
        assert_eq!(after, Some(4));
        // Garbage, a key of another shape, and a well-formed cursor of another list.
        let bare_position = URL_SAFE_NO_PAD.encode(b"4");
        for bad in ["%%%", "bm90IGpzb24", "eyJhIjoxfQ", &bare_position] {
            let e = Page::<i64>::from_query("items", Some(bad), None).unwrap_err();
            assert_eq!((e.code.as_str(), e.extra["field"].as_str()), ("invalid_input", Some("cursor")));
        }
        let e = Page::<i64>::from_query("others", next.as_deref(), None).unwrap_err();
        assert_eq!(e.extra["field"], "cursor", "a cursor of another list");
    }
}
