//! The error model (docs/errors.md): one code enum, one exhaustive code → status match, and one
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

pub use commguard_domain::refusal::ErrorCode;
use commguard_domain::refusal::{Check, DomainError, LimitType, Refusal, Rule};

/// The HTTP status of each docs/errors.md code.
pub fn status(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
        ErrorCode::Forbidden | ErrorCode::ComplianceBlocked => StatusCode::FORBIDDEN,
        ErrorCode::InvalidInput => StatusCode::BAD_REQUEST,
        ErrorCode::NotFound => StatusCode::NOT_FOUND,
        ErrorCode::Conflict | ErrorCode::QuotaExceeded => StatusCode::CONFLICT,
        ErrorCode::RateLimited | ErrorCode::LockedOut => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::ProviderError => StatusCode::BAD_GATEWAY,
        ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ErrorCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// An error answered to the caller. The request id is added by the request-id layer, so every
/// body and its `X-Request-Id` header agree.
#[derive(Clone, Debug)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    /// The check that refused, where its code does not say (`Check::of_code` otherwise).
    pub check: Option<Check>,
    /// The compliance rule (`rule` in the body) and the limit (`limitType`) the refusal names.
    pub rule: Option<Rule>,
    pub limit: Option<LimitType>,
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
        Self {
            code,
            message: message.into(),
            check: None,
            rule: None,
            limit: None,
            extra: Map::new(),
            headers: Vec::new(),
            status: None,
            recorded: false,
        }
    }

    /// Names the check that refused. A failure (an outage, a bug: `internal`) stays what it is,
    /// whichever step it came from: no check refused.
    pub fn at(mut self, check: Check) -> Self {
        if self.check() != Check::Internal {
            self.check = Some(check);
        }
        self
    }

    /// Names the compliance rule that refused.
    pub fn under(mut self, rule: Rule) -> Self {
        self.rule = Some(rule);
        self
    }

    /// The check that refused: the one named (`at`), else the one its code implies.
    pub fn check(&self) -> Check {
        self.check.unwrap_or(Check::of_code(self.code))
    }

    /// The typed refusal this error is: its check (named, or implied by its code), code, rule
    /// and limit — what `ActionRefused`, `MessageBlocked` and `CallBlocked` record.
    pub fn refusal(&self) -> Refusal {
        Refusal {
            check: self.check(),
            code: self.code,
            reason: self.message.clone(),
            rule: self.rule,
            limit: self.limit,
        }
    }

    /// An aggregate's answer: a domain refusal with its own code and text, anything else a
    /// failure (`internal`).
    pub fn aggregate<E: DomainError>(e: AggregateError<E>) -> Self {
        match e {
            AggregateError::UserError(refused) => Self::new(refused.code(), refused.to_string()),
            other => Self::internal(other),
        }
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
    /// bug, logged. Details go to the log, never to the caller. Either is recorded as the
    /// `internal` check, not as the check its code would suggest (an outage is not the provider).
    pub fn internal(detail: impl Failure) -> Self {
        if detail.database_down() {
            crate::outage::DATABASE.failed("request", &detail);
            return Self::unavailable().at(Check::Internal);
        }
        tracing::error!(error = %detail, "internal error");
        Self::new(ErrorCode::Internal, "Internal server error")
    }

    /// A refusal whose decision could not be recorded (principle 2, docs/security.md#principles): the caller is told, and
    /// nothing was done.
    pub fn unrecorded() -> Self {
        let mut e = Self::new(
            ErrorCode::Unavailable,
            "The decision could not be recorded (database unavailable); nothing was done",
        );
        e.recorded = true;
        e
    }

    /// A dependency is down (docs/errors.md `unavailable`).
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
        if let Some(rule) = self.rule {
            body.insert("rule".into(), Value::String(rule.as_str().into()));
        }
        if let Some(limit) = self.limit {
            body.insert("limitType".into(), Value::String(limit.as_str().into()));
        }
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

/// A refusal decided in the domain, answered as it was decided.
impl From<Refusal> for ApiError {
    fn from(refusal: Refusal) -> Self {
        let Refusal { check, code, reason, rule, limit } = refusal;
        Self { check: Some(check), rule, limit, ..Self::new(code, reason) }
    }
}

/// Marks a response as an `ApiError`, so the request-id layer can stamp the body.
#[derive(Clone)]
pub struct ErrorBody(pub ApiError);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status.unwrap_or(status(self.code)), axum::Json(self.body(None))).into_response();
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
        for (code, expected, name) in table {
            assert_eq!((status(code).as_u16(), code.as_str()), (expected, name));
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
        assert_eq!((down.code, status(down.code).as_u16()), (ErrorCode::Unavailable, 503));
        assert_eq!(down.message, "Service unavailable");
        // Recorded as what it is, not as the provider check `unavailable` stands for otherwise.
        assert_eq!(down.refusal().check, Check::Internal);
        assert_eq!(ApiError::unavailable().refusal().check, Check::Provider);
        assert_eq!(ApiError::internal(sqlx::Error::RowNotFound).code, ErrorCode::Internal);
        assert_eq!(ApiError::internal(sqlx::Error::RowNotFound).refusal().check, Check::Internal);
        // Whichever step it came from.
        assert_eq!(
            ApiError::internal(io(std::io::ErrorKind::ConnectionReset)).at(Check::OrgState).refusal().check,
            Check::Internal
        );
        assert_eq!(ApiError::unavailable().at(Check::OrgState).refusal().check, Check::OrgState);
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
        let mut e = ApiError::new(ErrorCode::RateLimited, "Too many requests").with("current", 3);
        e.limit = Some(LimitType::PerMinute);
        let body = e.body(Some("req-1"));
        assert_eq!(body["code"], "rate_limited");
        assert_eq!(body["requestId"], "req-1");
        assert_eq!(body["limitType"], "per-minute");
        assert_eq!(body["current"], 3);
        assert!(body.get("rule").is_none());
        assert_eq!(e.refusal().check, Check::Limits);
        let blocked = ApiError::new(ErrorCode::ComplianceBlocked, "Compliance: x").under(Rule::Dnc).at(Check::Dnc);
        assert_eq!(blocked.body(None)["rule"], "dnc");
        assert_eq!((blocked.refusal().check, blocked.refusal().rule), (Check::Dnc, Some(Rule::Dnc)));
    }

    #[test]
    fn a_domain_refusal_answers_the_body_it_always_had() {
        use commguard_domain::send::{decide, AgentState, OrgState, Send};
        use commguard_domain::values::{Channel, OrgMode};
        let send = Send {
            agent: AgentState {
                agent_id: "a1",
                status: commguard_domain::agent::AgentStatus::Active,
                phone: true,
                email: false,
                blocked_channels: &[],
            },
            org: OrgState { org_id: "o1", mode: OrgMode::Suspended },
            channel: Channel::Sms,
            demo_mode: false,
            real_provider: true,
        };
        let refusal = ApiError::from(decide(&send).unwrap_err());
        assert_eq!(
            refusal.body(Some("r")),
            serde_json::json!({"error": "Compliance: Organization \"o1\" is suspended", "code": "compliance_blocked",
                               "rule": "sandbox", "requestId": "r"})
        );
        assert_eq!((refusal.refusal().check, status(refusal.code).as_u16()), (Check::OrgState, 403));
    }

    #[test]
    fn a_refusal_without_a_named_check_stands_for_the_one_its_code_implies() {
        let by = |code| ApiError::new(code, "x").refusal().check.as_str();
        assert_eq!(by(ErrorCode::Forbidden), "role");
        assert_eq!(by(ErrorCode::NotFound), "agent_resolve");
        assert_eq!(by(ErrorCode::PayloadTooLarge), "input");
        assert_eq!(by(ErrorCode::ComplianceBlocked), "compliance");
        assert_eq!(by(ErrorCode::QuotaExceeded), "state");
        assert_eq!(by(ErrorCode::ProviderError), "provider");
        assert_eq!(by(ErrorCode::LockedOut), "internal");
        let boundary = ApiError::new(ErrorCode::Forbidden, "Agent \"a\" does not belong").at(Check::OrgBoundary);
        assert_eq!(boundary.refusal().check.as_str(), "org_boundary");
    }
}
