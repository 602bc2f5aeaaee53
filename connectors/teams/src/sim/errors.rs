//! Graph's error envelope (graph.md §7.2):
//! `{"error":{"code","message","innerError":{"date","request-id","client-request-id"}}}`, and
//! the 429 variant of §7.1 whose `innerError` also carries `code` and `status`.
//!
//! Clients must branch on the status and `code`, never on `message`; the messages here are
//! Graph's where they are known and plain descriptions otherwise.

use axum::http::header::{HeaderValue, RETRY_AFTER, WWW_AUTHENTICATE};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// One error answer, rendered with the request's ids and the simulator's clock.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct GraphError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// `Retry-After` in decimal seconds (429, and 503 when set).
    pub retry_after: Option<f64>,
    /// Add a `WWW-Authenticate: Bearer` challenge (401).
    pub challenge: bool,
}

impl GraphError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        GraphError {
            status,
            code,
            message: message.into(),
            retry_after: None,
            challenge: false,
        }
    }

    /// 400 `BadRequest`: a malformed or refused request.
    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        GraphError::new(StatusCode::BAD_REQUEST, "BadRequest", message)
    }

    /// 400 `InvalidRequest`: what the subscription service answers for a refused body.
    pub(crate) fn invalid_request(message: impl Into<String>) -> Self {
        GraphError::new(StatusCode::BAD_REQUEST, "InvalidRequest", message)
    }

    /// 401 `InvalidAuthenticationToken`.
    pub(crate) fn unauthenticated(message: impl Into<String>) -> Self {
        GraphError {
            challenge: true,
            ..GraphError::new(
                StatusCode::UNAUTHORIZED,
                "InvalidAuthenticationToken",
                message,
            )
        }
    }

    /// 403 `Forbidden`.
    pub(crate) fn forbidden(message: impl Into<String>) -> Self {
        GraphError::new(StatusCode::FORBIDDEN, "Forbidden", message)
    }

    /// 404 with `code`.
    pub(crate) fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        GraphError::new(StatusCode::NOT_FOUND, code, message)
    }

    /// 429 `TooManyRequests` with `Retry-After` in decimal seconds.
    pub(crate) fn throttled(retry_after: f64) -> Self {
        GraphError {
            retry_after: Some(retry_after),
            ..GraphError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "TooManyRequests",
                "Please retry again later.",
            )
        }
    }

    /// An injected 5xx (or any other status) with Graph's generic body.
    pub(crate) fn server(status: u16) -> Self {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let (code, message) = match status.as_u16() {
            503 => (
                "serviceNotAvailable",
                "The service is temporarily unavailable.",
            ),
            504 => ("UnknownError", "The gateway timed out."),
            _ => ("generalException", "General Exception while processing"),
        };
        GraphError::new(status, code, message)
    }

    /// The response, with `request-id` and `client-request-id` headers and body fields, and
    /// `date` from `date` (`innerError.date`, no offset, as Graph writes it).
    pub(crate) fn render(self, date: &str, client_request_id: Option<&str>) -> Response {
        let request_id = uuid::Uuid::new_v4().to_string();
        let client_request_id = client_request_id
            .map(str::to_owned)
            .unwrap_or_else(|| request_id.clone());
        let inner = if self.status == StatusCode::TOO_MANY_REQUESTS {
            json!({
                "code": "429",
                "date": date,
                "message": "Please retry after",
                "request-id": request_id,
                "status": "429",
            })
        } else {
            json!({
                "date": date,
                "request-id": request_id,
                "client-request-id": client_request_id,
            })
        };
        let body =
            json!({"error": {"code": self.code, "message": self.message, "innerError": inner}});
        let mut response = (self.status, Json(body)).into_response();
        let headers = response.headers_mut();
        if let Ok(v) = HeaderValue::from_str(&request_id) {
            headers.insert("request-id", v);
        }
        if let Ok(v) = HeaderValue::from_str(&client_request_id) {
            headers.insert("client-request-id", v);
        }
        if let Some(secs) = self.retry_after {
            if let Ok(v) = HeaderValue::from_str(&decimal_seconds(secs)) {
                headers.insert(RETRY_AFTER, v);
            }
        }
        if self.challenge {
            headers.insert(
                WWW_AUTHENTICATE,
                HeaderValue::from_static(
                    "Bearer realm=\"\", authorization_uri=\"https://login.microsoftonline.com/common/oauth2/authorize\", client_id=\"00000003-0000-0000-c000-000000000000\"",
                ),
            );
        }
        response
    }
}

/// Seconds as Graph writes `Retry-After`: decimal, at most three fraction digits, no trailing
/// zeros (`2.5`, `2.128`, `10`).
pub(crate) fn decimal_seconds(secs: f64) -> String {
    let s = format!("{:.3}", secs.max(0.0));
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s.is_empty() {
        "0".to_owned()
    } else {
        s.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_decimal_seconds() {
        assert_eq!(decimal_seconds(2.5), "2.5");
        assert_eq!(decimal_seconds(2.128), "2.128");
        assert_eq!(decimal_seconds(10.0), "10");
        assert_eq!(decimal_seconds(0.0004), "0");
        assert_eq!(decimal_seconds(25.5), "25.5");
    }
}
