//! The error model (CONTRACT §7): one code enum, one exhaustive code → status match, and one
//! JSON shape `{"error","code","requestId",…}` for every HTTP error and tool refusal.
//!
//! Failures that end a request go through `ApiError::internal`, which classifies them
//! (`Failure`): the database not answering is `unavailable` (503, "dependency down"), anything
//! else `internal` (500). `is_outage` is the one classifier of database errors.

use std::error::Error as StdError;
use std::fmt;

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use cqrs_es::persist::PersistenceError;
use cqrs_es::AggregateError;
use serde_json::{Map, Value};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    Unauthorized,
    Forbidden,
    InvalidInput,
    NotFound,
    Conflict,
    QuotaExceeded,
    RateLimited,
    LockedOut,
    ComplianceBlocked,
    ProviderError,
    Unavailable,
    PayloadTooLarge,
    UnsupportedMediaType,
    MethodNotAllowed,
    Internal,
}

impl ErrorCode {
    pub fn status(self) -> StatusCode {
        match self {
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Forbidden | Self::ComplianceBlocked => StatusCode::FORBIDDEN,
            Self::InvalidInput => StatusCode::BAD_REQUEST,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::Conflict | Self::QuotaExceeded => StatusCode::CONFLICT,
            Self::RateLimited | Self::LockedOut => StatusCode::TOO_MANY_REQUESTS,
            Self::ProviderError => StatusCode::BAD_GATEWAY,
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::InvalidInput => "invalid_input",
            Self::NotFound => "not_found",
            Self::Conflict => "conflict",
            Self::QuotaExceeded => "quota_exceeded",
            Self::RateLimited => "rate_limited",
            Self::LockedOut => "locked_out",
            Self::ComplianceBlocked => "compliance_blocked",
            Self::ProviderError => "provider_error",
            Self::Unavailable => "unavailable",
            Self::PayloadTooLarge => "payload_too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::Internal => "internal",
        }
    }
}

/// An error answered to the caller. The request id is added by the request-id layer, so every
/// body and its `X-Request-Id` header agree.
#[derive(Clone, Debug)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    pub extra: Map<String, Value>,
    /// Extra response headers (`Retry-After`, `Allow`, `WWW-Authenticate`).
    pub headers: Vec<(&'static str, String)>,
    /// A status other than the code's, where the contract fixes one (`/messages` answers an
    /// unknown session with 400 and code `not_found`).
    pub status: Option<StatusCode>,
    /// The refusal is already an event (`MessageBlocked`, …): callers must not record it again.
    pub recorded: bool,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), extra: Map::new(), headers: Vec::new(), status: None, recorded: false }
    }

    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.extra.insert(key.into(), value.into());
        self
    }

    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = Some(status);
        self
    }

    /// A failure that ends the request: `unavailable` when the database did not answer (logged
    /// through the outage log, `outage::DATABASE`, not once per request), else `internal` — a
    /// bug, logged. Details go to the log, never to the caller.
    pub fn internal(detail: impl Failure) -> Self {
        if detail.database_down() {
            crate::outage::DATABASE.failed("request", &detail);
            return Self::unavailable();
        }
        tracing::error!(error = %detail, "internal error");
        Self::new(ErrorCode::Internal, "Internal server error")
    }

    /// A refusal whose decision could not be recorded (CONTRACT P2): the caller is told, and
    /// nothing was done.
    pub fn unrecorded() -> Self {
        let mut e = Self::new(
            ErrorCode::Unavailable,
            "The decision could not be recorded (database unavailable); nothing was done",
        );
        e.recorded = true;
        e
    }

    /// A dependency is down (CONTRACT §7 `unavailable`).
    pub fn unavailable() -> Self {
        Self::new(ErrorCode::Unavailable, "Service unavailable")
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }

    /// The JSON body, with `requestId` when known.
    pub fn body(&self, request_id: Option<&str>) -> Value {
        let mut body = Map::new();
        body.insert("error".into(), Value::String(self.message.clone()));
        body.insert("code".into(), Value::String(self.code.as_str().into()));
        if let Some(id) = request_id {
            body.insert("requestId".into(), Value::String(id.into()));
        }
        for (k, v) in &self.extra {
            body.insert(k.clone(), v.clone());
        }
        Value::Object(body)
    }
}

/// Whether a database error means the database did not answer — it is down, restarting,
/// unreachable, or cut the connection — rather than that the statement was wrong: IO and TLS
/// failures, pool timeouts (no connection could be had) and a closed pool, a lost connection
/// (protocol errors, a crashed worker), SQLSTATE class 08 (connection exception), 57P01–57P03
/// (admin/crash shutdown, cannot connect now) and 53300 (too many connections).
pub fn is_outage(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| outage_sqlstate(&code)),
        _ => false,
    }
}

fn outage_sqlstate(code: &str) -> bool {
    code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03" | "53300")
}

/// A failure already classified as the database not answering, kept where an error has to be
/// passed on as text (the group committer answers every append of a failed batch).
#[derive(Clone, Debug)]
pub struct DatabaseDown(pub String);

impl fmt::Display for DatabaseDown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl StdError for DatabaseDown {}

/// Whether any error in `e`'s chain is the database not answering: an `sqlx::Error` the
/// classifier calls an outage, a `DatabaseDown`, or a cqrs-es `PersistenceError` wrapping one.
pub fn outage_in(e: &(dyn StdError + 'static)) -> bool {
    let mut link = Some(e);
    while let Some(e) = link {
        if let Some(sqlx) = e.downcast_ref::<sqlx::Error>() {
            if is_outage(sqlx) {
                return true;
            }
        } else if e.is::<DatabaseDown>() {
            return true;
        } else if let Some(persistence) = e.downcast_ref::<PersistenceError>() {
            if persistence.database_down() {
                return true;
            }
        }
        link = e.source();
    }
    false
}

/// Logs a failure that does not end the request by itself (a lookup that makes the caller
/// answer `unavailable`, an event not recorded): through the outage log when the database is
/// down, so an outage is not one line per request; otherwise at error level.
pub fn log_failure(what: &'static str, e: &dyn Failure) {
    if e.database_down() {
        crate::outage::DATABASE.failed(what, &e);
    } else {
        tracing::error!(error = %e, "{what}");
    }
}

/// A failure that ends a request (`ApiError::internal`): printable for the log, and classified.
pub trait Failure: fmt::Display {
    /// The database did not answer: the caller gets `unavailable`, not `internal`.
    fn database_down(&self) -> bool {
        false
    }
}

impl<T: Failure + ?Sized> Failure for &T {
    fn database_down(&self) -> bool {
        (**self).database_down()
    }
}

impl Failure for str {}
impl Failure for String {}
impl Failure for serde_json::Error {}

impl Failure for sqlx::Error {
    fn database_down(&self) -> bool {
        is_outage(self)
    }
}

impl Failure for DatabaseDown {
    fn database_down(&self) -> bool {
        true
    }
}

/// Our repository answers every database error but a unique violation as `ConnectionError`, so
/// the variant alone proves nothing: what it wraps decides.
impl Failure for PersistenceError {
    fn database_down(&self) -> bool {
        match self {
            PersistenceError::ConnectionError(e) | PersistenceError::UnknownError(e) => outage_in(e.as_ref()),
            PersistenceError::OptimisticLockError | PersistenceError::DeserializationError(_) => false,
        }
    }
}

impl<T: StdError> Failure for AggregateError<T> {
    fn database_down(&self) -> bool {
        match self {
            AggregateError::DatabaseConnectionError(e) | AggregateError::UnexpectedError(e) => outage_in(e.as_ref()),
            AggregateError::UserError(_)
            | AggregateError::AggregateConflict
            | AggregateError::DeserializationError(_) => false,
        }
    }
}

/// Marks a response as an `ApiError`, so the request-id layer can stamp the body.
#[derive(Clone)]
pub struct ErrorBody(pub ApiError);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status.unwrap_or(self.code.status()), axum::Json(self.body(None))).into_response();
        for (name, value) in &self.headers {
            if let Ok(v) = HeaderValue::from_str(value) {
                response.headers_mut().insert(*name, v);
            }
        }
        response.extensions_mut().insert(ErrorBody(self));
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_map_to_the_contract_statuses() {
        let table = [
            (ErrorCode::Unauthorized, 401, "unauthorized"),
            (ErrorCode::ComplianceBlocked, 403, "compliance_blocked"),
            (ErrorCode::QuotaExceeded, 409, "quota_exceeded"),
            (ErrorCode::LockedOut, 429, "locked_out"),
            (ErrorCode::ProviderError, 502, "provider_error"),
            (ErrorCode::PayloadTooLarge, 413, "payload_too_large"),
            (ErrorCode::UnsupportedMediaType, 415, "unsupported_media_type"),
        ];
        for (code, status, name) in table {
            assert_eq!((code.status().as_u16(), code.as_str()), (status, name));
        }
    }

    fn io(kind: std::io::ErrorKind) -> sqlx::Error {
        sqlx::Error::Io(std::io::Error::from(kind))
    }

    #[test]
    fn connection_failures_are_outages_and_statement_errors_are_not() {
        assert!(is_outage(&io(std::io::ErrorKind::ConnectionRefused)));
        assert!(is_outage(&io(std::io::ErrorKind::UnexpectedEof)));
        assert!(is_outage(&sqlx::Error::PoolTimedOut));
        assert!(is_outage(&sqlx::Error::PoolClosed));
        assert!(is_outage(&sqlx::Error::Protocol("unexpected message".into())));
        assert!(is_outage(&sqlx::Error::Tls("handshake".into())));
        assert!(is_outage(&sqlx::Error::WorkerCrashed));
        assert!(!is_outage(&sqlx::Error::RowNotFound));
        assert!(!is_outage(&sqlx::Error::ColumnNotFound("x".into())));
        assert!(!is_outage(&sqlx::Error::Configuration("bad url".into())));
        for code in ["08000", "08003", "08006", "08001", "08P01", "57P01", "57P02", "57P03", "53300"] {
            assert!(outage_sqlstate(code), "{code}");
        }
        for code in ["23505", "40001", "40P01", "42P01", "57014", "22P02", "3D000"] {
            assert!(!outage_sqlstate(code), "{code}");
        }
    }

    #[test]
    fn failures_that_wrap_an_outage_answer_unavailable_and_others_internal() {
        let down = ApiError::internal(io(std::io::ErrorKind::ConnectionReset));
        assert_eq!((down.code, down.code.status().as_u16()), (ErrorCode::Unavailable, 503));
        assert_eq!(down.message, "Service unavailable");
        assert_eq!(ApiError::internal(sqlx::Error::RowNotFound).code, ErrorCode::Internal);
        assert_eq!(ApiError::internal("no handler").code, ErrorCode::Internal);
        assert_eq!(ApiError::internal(format!("tool {} has no handler", "x")).code, ErrorCode::Internal);

        // cqrs-es paths: the repository's ConnectionError, and what the framework makes of it.
        let persistence = PersistenceError::ConnectionError(Box::new(sqlx::Error::PoolTimedOut));
        assert!(persistence.database_down());
        let aggregate: AggregateError<std::io::Error> = persistence.into();
        assert_eq!(ApiError::internal(&aggregate).code, ErrorCode::Unavailable);
        // The repository also wraps statement errors in ConnectionError: those stay internal.
        let bug = PersistenceError::ConnectionError(Box::new(sqlx::Error::RowNotFound));
        assert!(!bug.database_down());
        let aggregate: AggregateError<std::io::Error> = bug.into();
        assert_eq!(ApiError::internal(aggregate).code, ErrorCode::Internal);
        // A group commit's failure passed on as text keeps its classification.
        let committed = PersistenceError::ConnectionError(Box::new(DatabaseDown("connection reset".into())));
        assert!(committed.database_down());
        let unexpected = PersistenceError::UnknownError("the recorder stopped".into());
        assert!(!unexpected.database_down());
        let conflict: AggregateError<std::io::Error> = PersistenceError::OptimisticLockError.into();
        assert!(!conflict.database_down());
    }

    #[test]
    fn the_body_carries_code_request_id_and_extras() {
        let e = ApiError::new(ErrorCode::RateLimited, "Too many requests").with("limitType", "per-minute");
        let body = e.body(Some("req-1"));
        assert_eq!(body["code"], "rate_limited");
        assert_eq!(body["requestId"], "req-1");
        assert_eq!(body["limitType"], "per-minute");
    }
}
