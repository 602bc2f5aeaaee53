//! Graph `/v1.0`: authentication, throttling, injected faults and request recording, then the
//! routing to presence reads and writes (`actions.rs`) and subscriptions (`subscriptions.rs`).
//!
//! Order of checks for every request: bearer token (401), the per-application limit (429), the
//! next injected API fault, then the operation itself. A `Slow` fault delays the answer after
//! the operation ran, so a client that times out on a write does not know whether it happened,
//! as with the real service.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::{Json, Router};
use serde_json::{Map, Value};

use super::actions;
use super::dates::now_plain;
use super::errors::GraphError;
use super::faults::ApiFault;
use super::subscriptions;
use super::tokens::{Caller, TokenKind};
use super::{lock, GraphSim, RecordedRequest, Shared};

/// The Graph version prefix served.
pub(crate) const PREFIX: &str = "/v1.0";

pub(crate) fn router(sim: GraphSim) -> Router {
    Router::new()
        .route("/v1.0/{*rest}", any(handle))
        .with_state(sim)
}

/// What the handlers need from a request.
#[derive(Debug)]
pub(crate) struct Req<'a> {
    pub method: &'a Method,
    pub headers: &'a HeaderMap,
    pub body: &'a Bytes,
}

async fn handle(
    State(sim): State<GraphSim>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let received = std::time::Instant::now();
    let shared = &*sim.shared;
    let path = decode(uri.path());
    let query = decode(uri.query().unwrap_or(""));
    let segments: Vec<String> = path
        .strip_prefix(PREFIX)
        .unwrap_or(&path)
        .split('/')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    let req = Req {
        method: &method,
        headers: &headers,
        body: &body,
    };
    let mut delay = None;
    let mut token = None;
    let response = match process(shared, &req, &segments, &mut token, &mut delay).await {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(status = %e.status, code = e.code, message = %e.message, "Simulated Graph refused a request");
            let client_request_id = headers
                .get("client-request-id")
                .and_then(|v| v.to_str().ok());
            e.render(&now_plain(&*shared.clock), client_request_id)
        }
    };
    let recorded_body = (!body.is_empty()).then(|| {
        serde_json::from_slice(&body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()))
    });
    lock(&shared.requests).push(RecordedRequest {
        method: method.to_string(),
        path,
        query,
        body: recorded_body,
        status: response.status().as_u16(),
        retry_after_ms: retry_after_ms(response.headers()),
        delayed_ms: delay.map(|d| d.as_millis() as i64),
        token,
        received,
        at_ms: shared.clock.now(),
    });
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    response
}

/// The `Retry-After` a response carries, in ms (decimal seconds, or whole seconds).
fn retry_after_ms(headers: &axum::http::HeaderMap) -> Option<i64> {
    let secs: f64 = headers
        .get(axum::http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some((secs * 1000.0).round() as i64)
}

async fn process(
    shared: &Shared,
    req: &Req<'_>,
    segments: &[String],
    token: &mut Option<TokenKind>,
    delay: &mut Option<std::time::Duration>,
) -> Result<Response, GraphError> {
    let now = shared.clock.now();
    let header = req.headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok());
    let caller = lock(&shared.tokens)
        .validate(header, now)
        .map_err(GraphError::unauthenticated)?;
    *token = Some(caller.kind);
    let limit_key = format!("{}:{}", shared.cfg.tenant_id, caller.app_id);
    lock(&shared.limiter)
        .check(&limit_key, now)
        .map_err(GraphError::throttled)?;
    let fault = lock(&shared.faults).take();
    match fault {
        Some(ApiFault::RateLimited { retry_after }) => {
            return Err(GraphError::throttled(retry_after))
        }
        Some(ApiFault::ServerError(status)) => return Err(GraphError::server(status)),
        Some(ApiFault::Slow(d)) => *delay = Some(d),
        None => {}
    }
    route(shared, &caller, req, segments).await
}

async fn route(
    shared: &Shared,
    caller: &Caller,
    req: &Req<'_>,
    segments: &[String],
) -> Result<Response, GraphError> {
    let seg: Vec<&str> = segments.iter().map(String::as_str).collect();
    match seg.as_slice() {
        ["subscriptions", ..] => subscriptions::route(shared, caller, req, &segments[1..]).await,
        ["communications", action] if unqualified(action) == "getPresencesByUserId" => {
            only(req, Method::POST)?;
            actions::get_presences_by_user_id(shared, req)
        }
        ["users", id, "presence", rest @ ..] => actions::presence(shared, caller, req, id, rest),
        ["communications", "presences", id, rest @ ..] => {
            actions::presence(shared, caller, req, id, rest)
        }
        ["me", "presence", rest @ ..] => {
            let Some(me) = caller.user.clone() else {
                return Err(GraphError::bad_request(
                    "/me request is only valid with delegated authentication flow.",
                ));
            };
            actions::presence(shared, caller, req, &me, rest)
        }
        _ => Err(GraphError::bad_request(format!(
            "Resource not found for the segment '{}'.",
            segments.first().map_or("", String::as_str)
        ))),
    }
}

/// An action segment without the `microsoft.graph.` namespace (Graph accepts both forms).
pub(crate) fn unqualified(segment: &str) -> &str {
    segment.strip_prefix("microsoft.graph.").unwrap_or(segment)
}

/// 405 unless the request uses `method`.
pub(crate) fn only(req: &Req<'_>, method: Method) -> Result<(), GraphError> {
    if *req.method == method {
        Ok(())
    } else {
        Err(GraphError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "BadRequest",
            format!(
                "The HTTP method '{}' is not allowed on this resource; use {method}.",
                req.method
            ),
        ))
    }
}

/// The request body as a JSON object. It must be sent as `application/json`; an empty body is
/// refused ("Empty Payload").
pub(crate) fn json_body(req: &Req<'_>) -> Result<Map<String, Value>, GraphError> {
    if req.body.is_empty() {
        return Err(GraphError::bad_request(
            "Empty Payload. JSON content expected.",
        ));
    }
    let content_type = req
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    if !content_type.starts_with("application/json") {
        return Err(GraphError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            format!("Content-Type '{content_type}' is not supported; send application/json."),
        ));
    }
    match serde_json::from_slice(req.body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(GraphError::bad_request(
            "The request body must be a JSON object.",
        )),
        Err(e) => Err(GraphError::bad_request(format!(
            "Invalid JSON in the request body: {e}"
        ))),
    }
}

/// A JSON answer with Graph's headers.
pub(crate) fn json_response(status: StatusCode, body: Value) -> Response {
    let mut r = (status, Json(body)).into_response();
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static(
            "application/json;odata.metadata=minimal;odata.streaming=true;IEEE754Compatible=false;charset=utf-8",
        ),
    );
    if let Ok(v) = HeaderValue::from_str(&uuid::Uuid::new_v4().to_string()) {
        r.headers_mut().insert("request-id", v);
    }
    r
}

/// Percent-decode a path or query (`+` stays as is).
pub(crate) fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push(u8::try_from(h * 16 + l).unwrap_or(b'?'));
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
