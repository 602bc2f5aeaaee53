//! Bounds on webhook bodies, before a handler sees them (issue #24: 100 half-sent bodies to
//! `/webhooks/teams` took the process from 78 to 597 MiB, unauthenticated).
//!
//! A webhook's body is read here, before its handler checks who sent it, so what it may cost
//! is bounded here:
//!
//! - **Size**: a body declared larger than its route's limit goes to the handler unread (the
//!   handler refuses it with 413 and counts it); one sent without a length is read up to just
//!   past the limit, and the handler refuses that the same way.
//! - **Time**: the whole body must arrive within `http.body_timeout_secs` of its headers, or the
//!   request is answered 408 and the connection closed.
//! - **Memory**: all bodies being read at once for one route hold at most
//!   `http.body_memory_bytes`. A body that would take more is answered 503 with `Retry-After`
//!   (Graph and Dataverse both retry), so a flood of slow bodies cannot take the memory of the
//!   ones that follow; each route has its own budget, so a flood to one does not shed the
//!   other's deliveries.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::StreamExt;
use serde_json::json;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The memory budget is counted in units of this many bytes.
const UNIT: usize = 1024;

/// The budget shared by every webhook route, and what was refused.
#[derive(Debug)]
pub struct BodyBudget {
    memory: Arc<Semaphore>,
    timeout: Duration,
    pub stats: Arc<BodyStats>,
}

/// Counters; the service exports them as metrics.
#[derive(Debug, Default)]
pub struct BodyStats {
    /// Bodies that did not arrive within `http.body_timeout_secs`.
    pub timed_out: AtomicU64,
    /// Bodies refused because those being read held `http.body_memory_bytes`.
    pub shed: AtomicU64,
}

impl BodyBudget {
    /// A budget of `memory_bytes` for one webhook route, counting into `stats` (shared by the
    /// routes). Each route has its own: a flood of bodies to one (unauthenticated bodies are
    /// read before their handler can refuse them) does not shed the other's deliveries.
    pub fn new(memory_bytes: usize, timeout: Duration, stats: Arc<BodyStats>) -> Arc<BodyBudget> {
        Arc::new(BodyBudget {
            memory: Arc::new(Semaphore::new(memory_bytes.div_ceil(UNIT))),
            timeout,
            stats,
        })
    }
}

/// One route's limit, with the shared budget: the state of [`guard`].
#[derive(Debug, Clone)]
pub struct BodyLimit {
    pub max_bytes: usize,
    pub budget: Arc<BodyBudget>,
}

/// Why a body was not read.
enum Refusal {
    Shed,
    Broken(String),
}

/// Middleware (`axum::middleware::from_fn_with_state`) reading the request's body within
/// [`BodyLimit`] before the handler runs; the handler gets the bytes as its body.
pub async fn guard(State(limit): State<BodyLimit>, request: Request, next: Next) -> Response {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit.max_bytes) {
        // The handler refuses it on its declared length, without a byte read.
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    let budget = &limit.budget;
    let read = read_within(body, limit.max_bytes, &budget.memory);
    let (bytes, held) = match tokio::time::timeout(budget.timeout, read).await {
        Ok(Ok(read)) => read,
        Ok(Err(Refusal::Shed)) => {
            budget.stats.shed.fetch_add(1, Ordering::Relaxed);
            let mut r = refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many request bodies are being received at once; retry".into(),
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
            r.headers_mut().insert(
                header::CONNECTION,
                header::HeaderValue::from_static("close"),
            );
            return r;
        }
        Ok(Err(Refusal::Broken(e))) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                format!("the body could not be read: {e}"),
            )
        }
        Err(_) => {
            budget.stats.timed_out.fetch_add(1, Ordering::Relaxed);
            let mut r = refuse(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the body did not arrive within {} s of the request's headers",
                    budget.timeout.as_secs_f64()
                ),
            );
            r.headers_mut().insert(
                header::CONNECTION,
                header::HeaderValue::from_static("close"),
            );
            return r;
        }
    };
    let response = next
        .run(Request::from_parts(parts, Body::from(bytes)))
        .await;
    drop(held);
    response
}

/// Read `body` up to just past `max` bytes, taking budget for every chunk as it arrives. The
/// chunks are kept as they came (no buffer grows by copying, which would hold twice a body's
/// size while it does) and joined once the body is complete.
async fn read_within(
    body: Body,
    max: usize,
    memory: &Arc<Semaphore>,
) -> Result<(Bytes, Option<OwnedSemaphorePermit>), Refusal> {
    let mut stream = body.into_data_stream();
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut len = 0usize;
    let mut held: Option<OwnedSemaphorePermit> = None;
    let mut units = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| Refusal::Broken(e.to_string()))?;
        len += chunk.len();
        let want = len.div_ceil(UNIT);
        if want > units {
            let more = u32::try_from(want - units).map_err(|_| Refusal::Shed)?;
            let permit = memory
                .clone()
                .try_acquire_many_owned(more)
                .map_err(|_| Refusal::Shed)?;
            match &mut held {
                Some(h) => h.merge(permit),
                None => held = Some(permit),
            }
            units = want;
        }
        chunks.push(chunk);
        if len > max {
            // Enough to know it is too large: the handler says so.
            break;
        }
    }
    let bytes = match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.swap_remove(0),
        _ => {
            let mut joined = Vec::with_capacity(len);
            for c in chunks {
                joined.extend_from_slice(&c);
            }
            Bytes::from(joined)
        }
    };
    Ok((bytes, held))
}

fn refuse(status: StatusCode, message: String) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}
