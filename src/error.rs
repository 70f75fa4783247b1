//! The error model (CONTRACT §7): one code enum, one exhaustive code → status match, and one
//! JSON shape `{"error","code","requestId",…}` for every HTTP error and tool refusal.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
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

    /// A bug or a dependency failure: details go to the log, never to the caller.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
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

    #[test]
    fn the_body_carries_code_request_id_and_extras() {
        let e = ApiError::new(ErrorCode::RateLimited, "Too many requests").with("limitType", "per-minute");
        let body = e.body(Some("req-1"));
        assert_eq!(body["code"], "rate_limited");
        assert_eq!(body["requestId"], "req-1");
        assert_eq!(body["limitType"], "per-minute");
    }
}
