//! Step 1: the request id. A client's `X-Request-Id` of `[A-Za-z0-9-]{1,64}` is kept, anything
//! else is replaced by a new UUID; it is echoed on the response and written into error bodies.

use axum::extract::Request;
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};

use crate::error::ErrorBody;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestId(pub String);

fn valid(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

pub async fn layer(mut request: Request, next: impl AsyncFnOnce(Request) -> Response) -> Response {
    let id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| valid(v))
        .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned);
    request.extensions_mut().insert(RequestId(id.clone()));
    let mut response = next(request).await;
    // Errors are built without knowing the request: stamp the id into their body here.
    if let Some(ErrorBody(error)) = response.extensions_mut().remove::<ErrorBody>() {
        let (status, headers) = (response.status(), response.headers().clone());
        response = (status, axum::Json(error.body(Some(&id)))).into_response();
        for (name, value) in headers.iter() {
            if name != axum::http::header::CONTENT_LENGTH && name != axum::http::header::CONTENT_TYPE {
                response.headers_mut().insert(name.clone(), value.clone());
            }
        }
    }
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

#[cfg(test)]
mod tests {
    #[test]
    fn request_ids_are_short_and_plain() {
        assert!(super::valid("abc-123"));
        assert!(!super::valid(""));
        assert!(!super::valid("a b"));
        assert!(!super::valid(&"a".repeat(65)));
    }
}
