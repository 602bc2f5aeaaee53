//! The Dataverse Web API error body, `{"error":{"code":"0x8004....","message":"..."}}`
//! (dataverse.md §8), and the codes the simulator answers with.

use axum::http::header::{HeaderValue, RETRY_AFTER, WWW_AUTHENTICATE};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

/// Hex codes from Microsoft's "Web service error codes" list.
pub(crate) mod code {
    /// AccessTokenExpired: "The requested resource requires authentication."
    pub const ACCESS_TOKEN_EXPIRED: &str = "0x8005F101";
    /// PrivilegeDenied (-2147220960).
    pub const PRIVILEGE_DENIED: &str = "0x80040220";
    /// ObjectDoesNotExist (-2147220969): "<entity> With Id = <id> Does Not Exist".
    pub const OBJECT_DOES_NOT_EXIST: &str = "0x80040217";
    /// InvalidArgument.
    pub const INVALID_ARGUMENT: &str = "0x80040203";
    /// UnExpected: "An unexpected error occurred."
    pub const UNEXPECTED: &str = "0x80040216";
    /// Number of requests exceeded the limit (service protection).
    pub const REQUEST_LIMIT: &str = "0x80072322";
    /// The OData layer: resource not found for the segment, unknown property, bad query.
    pub const ODATA: &str = "0x80060888";
    /// The impersonated user is not a user of the organization (UNCONFIRMED code).
    pub const USER_NOT_IN_ORG: &str = "0x80072560";
}

/// One error answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub retry_after_secs: Option<u64>,
    /// Add `WWW-Authenticate: Bearer ...` (401s).
    pub challenge: Option<String>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after_secs: None,
            challenge: None,
        }
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, code::INVALID_ARGUMENT, message)
    }

    pub(crate) fn odata(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError::new(status, code::ODATA, message)
    }

    pub(crate) fn not_found(entity: &str, id: &str) -> Self {
        ApiError::new(
            StatusCode::NOT_FOUND,
            code::OBJECT_DOES_NOT_EXIST,
            format!("{entity} With Id = {id} Does Not Exist"),
        )
    }

    pub(crate) fn unauthorized(authority_hint: String) -> Self {
        ApiError {
            challenge: Some(authority_hint),
            ..ApiError::new(
                StatusCode::UNAUTHORIZED,
                code::ACCESS_TOKEN_EXPIRED,
                "The requested resource requires authentication.",
            )
        }
    }

    pub(crate) fn rate_limited(limit: u32, window_secs: u64, retry_after_secs: u64) -> Self {
        ApiError {
            retry_after_secs: Some(retry_after_secs),
            ..ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                code::REQUEST_LIMIT,
                format!(
                    "Number of requests exceeded the limit of {limit} over time window of {window_secs} seconds."
                ),
            )
        }
    }

    pub(crate) fn server(status: u16) -> Self {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        ApiError::new(status, code::UNEXPECTED, "An unexpected error occurred.")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": {"code": self.code, "message": self.message}});
        let mut response = (self.status, Json(body)).into_response();
        let headers = response.headers_mut();
        headers.insert("OData-Version", HeaderValue::from_static("4.0"));
        if let Some(secs) = self.retry_after_secs {
            headers.insert(RETRY_AFTER, HeaderValue::from(secs));
        }
        if let Some(c) = self.challenge.and_then(|c| HeaderValue::from_str(&c).ok()) {
            headers.insert(WWW_AUTHENTICATE, c);
        }
        response
    }
}
