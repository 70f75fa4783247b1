//! Extractors whose rejections are docs/errors.md JSON (`{"error","code","requestId"}`) instead of axum's
//! plain text, and which refuse text Postgres cannot store (U+0000) before a handler sees it.
//! Every admin route takes its path, query and body through these; the MCP routes take their
//! query through `PlainQuery` (their values are checked after authentication, so the refusal
//! can be recorded against the caller).

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, OptionalFromRequest, RawPathParams, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::{ApiError, ErrorCode};
use crate::validate::{self, invalid, CONTROL_CHARACTER};

/// Path parameters; a parameter holding U+0000 is refused naming it (`orgId`, `agentId`).
pub struct Path<T>(pub T);

impl<T, S> FromRequestParts<S> for Path<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let axum::extract::Path(value) =
            axum::extract::Path::<T>::from_request_parts(parts, state).await.map_err(path_rejection)?;
        // The parameters deserialized, so they are UTF-8; now their text.
        let raw =
            RawPathParams::from_request_parts(parts, state).await.map_err(|e| ApiError::internal(e.body_text()))?;
        for (name, text) in &raw {
            validate::storable(name, text)?;
        }
        Ok(Self(value))
    }
}

fn path_rejection(rejection: PathRejection) -> ApiError {
    if rejection.status().is_server_error() {
        return ApiError::internal(rejection.body_text());
    }
    ApiError::new(ErrorCode::InvalidInput, format!("Invalid path: {}", rejection.body_text()))
}

/// A query string; a key or value holding U+0000 is refused naming it.
pub struct Query<T>(pub T);

impl<T, S> FromRequestParts<S> for Query<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        if let Some(query) = parts.uri.query() {
            for (key, value) in form_urlencoded::parse(query.as_bytes()) {
                validate::storable(&key, &key)?;
                validate::storable(&key, &value)?;
            }
        }
        let PlainQuery(value) = PlainQuery::from_request_parts(parts, state).await?;
        Ok(Self(value))
    }
}

/// A query string, rejections as docs/errors.md JSON; its values are the handler's to check.
pub struct PlainQuery<T>(pub T);

impl<T, S> FromRequestParts<S> for PlainQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(Self(value)),
            Err(rejection) => Err(query_rejection(rejection)),
        }
    }
}

fn query_rejection(rejection: QueryRejection) -> ApiError {
    ApiError::new(ErrorCode::InvalidInput, rejection.body_text())
}

/// An optional JSON body: `Null` without a `Content-Type`, else it must be `application/json`
/// (415) and parse (400); a string or key holding U+0000 anywhere is refused naming its path.
pub struct JsonBody(pub Value);

impl<S> FromRequest<S> for JsonBody
where
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let body = <axum::Json<Value> as OptionalFromRequest<S>>::from_request(request, state)
            .await
            .map_err(json_rejection)?;
        let value = body.map_or(Value::Null, |axum::Json(value)| value);
        if let Some(field) = validate::nul_path(&value) {
            let field = if field.is_empty() { "body".to_string() } else { field };
            return Err(invalid(&field, CONTROL_CHARACTER));
        }
        Ok(Self(value))
    }
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    match rejection.status() {
        StatusCode::UNSUPPORTED_MEDIA_TYPE => {
            ApiError::new(ErrorCode::UnsupportedMediaType, "Content-Type must be application/json")
        }
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(ErrorCode::PayloadTooLarge, "Payload too large"),
        status if status.is_server_error() => ApiError::internal(rejection.body_text()),
        _ => ApiError::new(ErrorCode::InvalidInput, format!("Invalid JSON body: {}", rejection.body_text())),
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::header::CONTENT_TYPE;

    use super::*;

    async fn body(content_type: Option<&str>, text: &str) -> Result<Value, ApiError> {
        let mut request = Request::builder().method("POST").uri("/x");
        if let Some(ct) = content_type {
            request = request.header(CONTENT_TYPE, ct);
        }
        let request = request.body(Body::from(text.to_string())).unwrap();
        JsonBody::from_request(request, &()).await.map(|JsonBody(v)| v)
    }

    #[tokio::test]
    async fn json_bodies_are_refused_as_the_error_model_says() {
        assert_eq!(body(None, "").await.unwrap(), Value::Null);
        assert_eq!(body(Some("application/json"), r#"{"a":1}"#).await.unwrap()["a"], 1);
        assert_eq!(body(Some("text/plain"), "{}").await.unwrap_err().code, ErrorCode::UnsupportedMediaType);
        let bad = body(Some("application/json"), "{").await.unwrap_err();
        assert_eq!(bad.code, ErrorCode::InvalidInput);
        let nul = body(Some("application/json"), r#"{"settings":{"a":"x\u0000"}}"#).await.unwrap_err();
        assert_eq!((nul.code, nul.extra["field"].as_str()), (ErrorCode::InvalidInput, Some("settings.a")));
    }

    #[tokio::test]
    async fn queries_refuse_nul_and_bad_types_as_json_errors() {
        #[derive(serde::Deserialize)]
        struct Q {
            #[allow(dead_code)]
            limit: Option<i64>,
        }
        let parts = |uri: &str| Request::builder().uri(uri).body(()).unwrap().into_parts().0;
        let bad = Query::<Q>::from_request_parts(&mut parts("/x?limit=abc"), &()).await.err().unwrap();
        assert_eq!(bad.code, ErrorCode::InvalidInput);
        let nul = Query::<Q>::from_request_parts(&mut parts("/x?type=%00"), &()).await.err().unwrap();
        assert_eq!(nul.extra["field"], "type");
        assert!(PlainQuery::<Q>::from_request_parts(&mut parts("/x?type=%00"), &()).await.is_ok());
    }
}
