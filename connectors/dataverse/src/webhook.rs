//! Webhook ingress: Dataverse POSTs a `RemoteExecutionContext` for each `msdyn_agentstatus`
//! Create or Update. The request is authenticated on its headers and query before the body is
//! read, parsed, turned into an observation and stored in the engine's inbox; only then is it
//! acknowledged.
//!
//! What Dataverse is told (it reads only the status, and retries once, only after 502/503/504):
//! - 2xx: stored, or deliberately ignored (another entity or message: a non-2xx on a synchronous
//!   step would roll back the customer's transaction);
//! - 401: the secret (or the organization) is wrong or missing; nothing is stored;
//! - 400: the body cannot be read; the message says what and where;
//! - 413: the body is over the configured limit;
//! - 503: presync could not store it (or could not read a stripped row back): retry.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::body::{to_bytes, Body};
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use presync_engine::engine::Engine;
use presync_engine::store::Enqueued;
use presync_engine::{
    ExternalId, NativeState, Observation, ObservationKind, Origin, RepId, Representative, SystemId,
};
use serde_json::json;
use subtle::ConstantTimeEq;
use tracing::{debug, error, info, warn};

use crate::config::{Discovery, WebhookAuth, WebhookConfig};
use crate::connector::DataverseConnector;
use crate::context::{self, AgentStatusChange, Derived};

/// The path the service mounts the ingress at.
pub const PATH: &str = "/webhooks/dataverse";

/// Counters of what the ingress did, by outcome. The service exports them as metrics.
#[derive(Debug, Default)]
pub struct IngressStats {
    pub accepted: AtomicU64,
    pub duplicates: AtomicU64,
    pub ignored: AtomicU64,
    pub unauthorized: AtomicU64,
    pub malformed: AtomicU64,
    pub too_large: AtomicU64,
    pub read_backs: AtomicU64,
    pub discovered: AtomicU64,
    pub unavailable: AtomicU64,
}

/// Everything the ingress needs.
#[derive(Debug)]
pub struct Ingress {
    pub engine: Engine,
    /// This connector instance's name in the topology.
    pub system: SystemId,
    pub connector: Arc<DataverseConnector>,
    pub config: WebhookConfig,
    pub discovery: Option<Discovery>,
    pub stats: IngressStats,
}

/// The router serving [`PATH`].
pub fn router(ingress: Arc<Ingress>) -> Router {
    Router::new().route(PATH, post(receive)).with_state(ingress)
}

/// A refusal, with a message that is safe to show the caller.
#[derive(Debug)]
struct Refusal(StatusCode, String);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

async fn receive(
    State(ingress): State<Arc<Ingress>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match handle(&ingress, query.as_deref(), &headers, body).await {
        Ok(r) => r,
        Err(refusal) => refusal.into_response(),
    }
}

async fn handle(
    ingress: &Ingress,
    query: Option<&str>,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, Refusal> {
    let stats = &ingress.stats;
    if let Err(why) = authenticate(&ingress.config, query, headers) {
        stats.unauthorized.fetch_add(1, Ordering::Relaxed);
        warn!(reason = why, "Webhook refused");
        return Err(Refusal(StatusCode::UNAUTHORIZED, why.to_owned()));
    }
    let limit = ingress.config.max_body_bytes;
    // A declared length over the limit is refused before a byte of the body is read.
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let body = match declared {
        Some(n) if n > limit => None,
        _ => Some(body),
    };
    let read = match body {
        Some(body) => to_bytes(body, limit).await.ok(),
        None => None,
    };
    let Some(bytes) = read else {
        stats.too_large.fetch_add(1, Ordering::Relaxed);
        return Err(Refusal(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("body is larger than the configured limit of {limit} bytes"),
        ));
    };
    let size_exceeded = headers.contains_key("x-ms-dynamics-msg-size-exceeded");
    let ctx = context::parse(&bytes).map_err(|e| {
        stats.malformed.fetch_add(1, Ordering::Relaxed);
        Refusal(StatusCode::BAD_REQUEST, e.to_string())
    })?;
    let change = match context::agent_status(&ctx, size_exceeded) {
        Derived::Change(c) => c,
        Derived::Ignored { reason, entity } => {
            stats.ignored.fetch_add(1, Ordering::Relaxed);
            info!(entity = ?entity, reason = ?reason, "Webhook acknowledged and ignored");
            return Ok((
                StatusCode::OK,
                Json(json!({ "ignored": reason, "entity": entity })),
            )
                .into_response());
        }
        Derived::ReadBack {
            id,
            event,
            delivery_key,
            ..
        } => {
            stats.read_backs.fetch_add(1, Ordering::Relaxed);
            let row = ingress
                .connector
                .client()
                .agent_status(&id)
                .await
                .map_err(|e| {
                    warn!(error = %e, "Read-back of a size-exceeded delivery failed");
                    unavailable(stats, "could not read the row back; retry")
                })?;
            AgentStatusChange {
                event,
                agent_status_id: row.agent_status_id,
                agent_id: row.agent_id,
                presence_id: row.presence_id,
                source_modified_at: row.modified_on,
                modified_by: row.modified_by,
                logged_in: row.logged_in,
                row_version: row.row_version.map(|v| v.to_string()),
                capacity: row.capacity,
                conversations: None,
                delivery_key,
            }
        }
    };
    let Some(observation) = observation(ingress, &change) else {
        stats.ignored.fetch_add(1, Ordering::Relaxed);
        let reason = "the event carries no current presence";
        info!(agent = ?change.agent_id, reason, "Webhook acknowledged and ignored");
        return Ok((
            StatusCode::OK,
            Json(json!({ "ignored": reason, "entity": context::AGENT_STATUS_ENTITY })),
        )
            .into_response());
    };
    if change.event == "Create" {
        if let Some(d) = &ingress.discovery {
            discover(ingress, d, &change.agent_id).await?;
        }
    }
    match ingress.engine.ingest(observation).await {
        Ok(Enqueued::Accepted) => {
            stats.accepted.fetch_add(1, Ordering::Relaxed);
            debug!(key = ?change.delivery_key, "Webhook stored");
            Ok((
                StatusCode::ACCEPTED,
                Json(json!({ "accepted": change.delivery_key })),
            )
                .into_response())
        }
        Ok(Enqueued::Duplicate) => {
            stats.duplicates.fetch_add(1, Ordering::Relaxed);
            Ok((
                StatusCode::OK,
                Json(json!({ "duplicate": change.delivery_key })),
            )
                .into_response())
        }
        Err(e) => {
            error!(error = %e, "Could not store a webhook; answering 503 so Dataverse retries");
            Err(unavailable(stats, "could not store the event; retry"))
        }
    }
}

fn unavailable(stats: &IngressStats, message: &str) -> Refusal {
    stats.unavailable.fetch_add(1, Ordering::Relaxed);
    Refusal(StatusCode::SERVICE_UNAVAILABLE, message.to_owned())
}

/// Check the secret as Dataverse sends it, and the organization, in constant time.
fn authenticate(
    config: &WebhookConfig,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Result<(), &'static str> {
    let (presented, expected, missing) = match &config.auth {
        WebhookAuth::HttpHeader { name, value } => (
            headers
                .get(name.as_str())
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            value,
            "missing webhook secret header",
        ),
        WebhookAuth::WebhookKey { value } => (
            query_param(query, "code"),
            value,
            "missing webhook key (?code=)",
        ),
        WebhookAuth::HttpQueryString { name, value } => (
            query_param(query, name),
            value,
            "missing webhook secret query parameter",
        ),
    };
    let presented = presented.ok_or(missing)?;
    if !bool::from(presented.as_bytes().ct_eq(expected.as_bytes())) {
        return Err("wrong webhook secret");
    }
    if let Some(org) = &config.organization {
        let sent = headers
            .get("x-ms-dynamics-organization")
            .and_then(|v| v.to_str().ok());
        if !sent.is_some_and(|s| s.eq_ignore_ascii_case(org)) {
            return Err("x-ms-dynamics-organization is missing or not the configured organization");
        }
    }
    Ok(())
}

/// One query parameter, percent-decoded.
fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    url::form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// The observation a change yields, or `None` when it carries no presence.
fn observation(ingress: &Ingress, change: &AgentStatusChange) -> Option<Observation> {
    let presence = change.presence_id.as_ref()?.to_ascii_lowercase();
    let catalog = ingress.connector.catalog();
    let mut native = NativeState::new(presence.clone());
    native.label = catalog.entry(&presence).map(|e| e.text.clone());
    let now = ingress.engine.now();
    Some(Observation {
        system: ingress.system.clone(),
        external_id: ExternalId(change.agent_id.to_ascii_lowercase()),
        native,
        source_time: change.source_modified_at.unwrap_or(now),
        sequence: change.row_version.as_deref().and_then(|v| v.parse().ok()),
        // `msdyn_presencemodifiedby` is a hint, not proof (the CCaaS assignment engine writes
        // "AGENT" too), so it does not make a state manual.
        origin: Origin::Unknown,
        kind: ObservationKind::Event,
        delivery_key: change.delivery_key.clone(),
        observed_at: now,
        changed_by: None,
        automatic: crate::mapping::automatic(
            change.capacity,
            change.conversations,
            ingress.connector.client().config().full_capacity,
        ),
    })
}

/// Add a new agent to the directory, with their Entra object id for the Teams side.
async fn discover(ingress: &Ingress, discovery: &Discovery, agent_id: &str) -> Result<(), Refusal> {
    let store = ingress.engine.store();
    let agent = ExternalId(agent_id.to_ascii_lowercase());
    let known = store.rep_for(&ingress.system, &agent).await.map_err(|e| {
        error!(error = %e, "Directory lookup failed");
        unavailable(&ingress.stats, "could not read the directory; retry")
    })?;
    if known.is_some() {
        return Ok(());
    }
    let oid = ingress
        .connector
        .client()
        .aad_object_id(agent.as_str())
        .await
        .map_err(|e| {
            warn!(error = %e, agent = ?agent, "Could not read the new agent's Entra object id");
            unavailable(&ingress.stats, "could not read the new agent; retry")
        })?;
    let mut external_ids = std::collections::BTreeMap::new();
    external_ids.insert(ingress.system.clone(), agent.clone());
    if let Some(oid) = oid {
        external_ids.insert(
            SystemId(discovery.entra_system.clone()),
            ExternalId(oid.to_ascii_lowercase()),
        );
    }
    let rep = Representative {
        id: RepId(format!("{}-{}", ingress.system, agent)),
        display_name: agent.to_string(),
        external_ids,
    };
    match store
        .upsert_representative(&rep, ingress.engine.now())
        .await
    {
        Ok(()) => {
            ingress.stats.discovered.fetch_add(1, Ordering::Relaxed);
            info!(rep = %rep.id, "New agent added to the directory");
            Ok(())
        }
        // Someone else's id: keep the directory as it is and let the event be recorded.
        Err(presync_engine::store::StoreError::ExternalIdTaken { .. }) => {
            warn!(agent = ?agent, "Discovered agent's Entra id already belongs to another representative");
            Ok(())
        }
        Err(e) => {
            error!(error = %e, "Could not add a discovered agent");
            Err(unavailable(
                &ingress.stats,
                "could not update the directory; retry",
            ))
        }
    }
}
