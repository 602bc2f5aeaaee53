//! The admin API under `/admin`, behind a bearer token (`http.admin_token`):
//!
//! | method and path          | what                                                            |
//! |--------------------------|-----------------------------------------------------------------|
//! | `GET /admin/reps`        | the directory                                                   |
//! | `POST /admin/reps`       | import a JSON array or a CSV file (the formats of `reps import`) |
//! | `GET /admin/reps/{id}`   | canonical state, each system's observed and written state, and the recent decisions |
//! | `PUT /admin/reps/{id}`   | add or replace one representative: `{display_name, external_ids}` |
//! | `DELETE /admin/reps/{id}`| remove one representative from the directory                     |
//! | `POST /admin/reconcile`  | run one reconcile pass now; its report                          |
//!
//! Errors are JSON `{"error": "..."}` with the status that says what is wrong. Without a
//! configured token every route answers 403: the API is off.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use presync_engine::engine::Engine;
use presync_engine::store::StoreError;
use presync_engine::{ExternalId, RepId, Representative, SystemId};
use presync_entra::Secret;
use serde::Deserialize;
use serde_json::json;

/// The largest import body the API reads.
const MAX_IMPORT_BYTES: usize = 16 * 1024 * 1024;

#[derive(Clone)]
struct Admin {
    engine: Engine,
    token: Option<Arc<Secret>>,
}

/// The admin routes. `token` is the resolved `http.admin_token`; `None` turns the API off.
pub fn router(engine: Engine, token: Option<Secret>) -> Router {
    let admin = Admin {
        engine,
        token: token.map(Arc::new),
    };
    Router::new()
        .route("/admin/reps", get(list).post(import))
        .route("/admin/reps/{id}", get(show).put(update).delete(remove))
        .route("/admin/reconcile", post(reconcile))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_IMPORT_BYTES))
        .route_layer(middleware::from_fn_with_state(admin.clone(), authorize))
        .with_state(admin)
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

async fn authorize(State(admin): State<Admin>, request: Request, next: Next) -> Response {
    let Some(token) = &admin.token else {
        return error(
            StatusCode::FORBIDDEN,
            "the admin API is off: set http.admin_token to turn it on",
        );
    };
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match presented {
        Some(p) if token.ct_eq(p.trim().as_bytes()) => next.run(request).await,
        Some(_) => unauthorized("the bearer token is not the admin token"),
        None => unauthorized("send Authorization: Bearer <http.admin_token>"),
    }
}

fn unauthorized(message: &str) -> Response {
    let mut r = error(StatusCode::UNAUTHORIZED, message);
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer realm=\"presync admin\""),
    );
    r
}

fn internal(e: impl std::fmt::Display) -> Response {
    error(StatusCode::SERVICE_UNAVAILABLE, format!("store: {e}"))
}

async fn list(State(admin): State<Admin>) -> Response {
    match admin.engine.store().representatives().await {
        Ok(reps) => Json(reps).into_response(),
        Err(e) => internal(e),
    }
}

async fn import(State(admin): State<Admin>, headers: HeaderMap, body: Bytes) -> Response {
    let Ok(text) = std::str::from_utf8(&body) else {
        return error(StatusCode::BAD_REQUEST, "the body is not UTF-8");
    };
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let name = if json { "body.json" } else { "body.csv" };
    let entries = match crate::reps::parse(Path::new(name), text) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("{e:#}")),
    };
    let now = admin.engine.now();
    match crate::reps::import_entries(admin.engine.store(), &entries, now).await {
        Ok(()) => Json(json!({ "imported": entries.len() })).into_response(),
        Err(e @ crate::reps::ImportError::Clash(_)) => error(StatusCode::CONFLICT, e.to_string()),
        Err(crate::reps::ImportError::Store(e)) => internal(e),
    }
}

#[derive(Debug, Deserialize)]
struct HistoryQuery {
    #[serde(default = "default_last")]
    last: i64,
}

fn default_last() -> i64 {
    20
}

async fn show(
    State(admin): State<Admin>,
    UrlPath(id): UrlPath<String>,
    Query(q): Query<HistoryQuery>,
) -> Response {
    let store = admin.engine.store();
    let rep = RepId(crate::reps::normalise_id(&id));
    let r = match store.representative(&rep).await {
        Ok(Some(r)) => r,
        Ok(None) => {
            return error(
                StatusCode::NOT_FOUND,
                format!("no representative {rep} in the directory"),
            )
        }
        Err(e) => return internal(e),
    };
    let view = match store.rep_view(&rep).await {
        Ok(v) => v,
        Err(e) => return internal(e),
    };
    let history = match store.history(&rep, q.last.clamp(1, 1000)).await {
        Ok(h) => h,
        Err(e) => return internal(e),
    };
    Json(json!({
        "representative": r,
        "canonical": view.canonical,
        "systems": view.systems,
        "history": history,
    }))
    .into_response()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RepBody {
    display_name: String,
    #[serde(default)]
    external_ids: BTreeMap<String, String>,
}

async fn update(State(admin): State<Admin>, UrlPath(id): UrlPath<String>, body: Bytes) -> Response {
    let parsed: RepBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "expected {{\"display_name\": ..., \"external_ids\": {{system: id}}}}: {e}"
                ),
            )
        }
    };
    let id = crate::reps::normalise_id(&id);
    if id.is_empty() {
        return error(StatusCode::BAD_REQUEST, "the id is empty");
    }
    let unknown: Vec<String> = parsed
        .external_ids
        .keys()
        .filter_map(|s| crate::reps::unknown_system(s))
        .collect();
    if !unknown.is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            format!("external_ids: {}", unknown.join("; ")),
        );
    }
    let rep = Representative {
        id: RepId(id),
        display_name: parsed.display_name,
        external_ids: parsed
            .external_ids
            .into_iter()
            .map(|(s, e)| (SystemId(s), ExternalId(e.to_ascii_lowercase())))
            .collect(),
    };
    match admin
        .engine
        .store()
        .upsert_representative(&rep, admin.engine.now())
        .await
    {
        Ok(()) => Json(rep).into_response(),
        Err(e @ StoreError::ExternalIdTaken { .. }) => error(StatusCode::CONFLICT, e.to_string()),
        Err(e) => internal(e),
    }
}

async fn remove(State(admin): State<Admin>, UrlPath(id): UrlPath<String>) -> Response {
    let rep = RepId(crate::reps::normalise_id(&id));
    match admin.engine.store().delete_representative(&rep).await {
        Ok(true) => StatusCode::NO_CONTENT.into_response(),
        Ok(false) => error(
            StatusCode::NOT_FOUND,
            format!("no representative {rep} in the directory"),
        ),
        Err(e) => internal(e),
    }
}

async fn reconcile(State(admin): State<Admin>) -> Response {
    match crate::service::exclusive(&admin.engine, "reconcile", admin.engine.reconcile()).await {
        Some(Ok(report)) => Json(report).into_response(),
        Some(Err(e)) => internal(e),
        None => error(
            StatusCode::CONFLICT,
            "a reconcile pass is running or ran within the last minute on another instance",
        ),
    }
}
