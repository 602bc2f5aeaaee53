//! Presence change subscriptions (graph.md §6.1, §6.2): create with the validation handshake,
//! list, get, renew (PATCH), reauthorize and delete.
//!
//! Rules enforced, in order, on `POST /subscriptions`: a delegated token (app-only gets 403:
//! presence does not support application permissions); a body with only subscription properties;
//! `changeType` `updated`; an `http(s)` `notificationUrl`; a resource of the form
//! `communications/presences/{id}` or `/communications/presences?$filter=id in ('a','b',…)` with
//! 1 to 650 distinct GUIDs; an `expirationDateTime` with an offset, in the future and at most
//! 60 minutes ahead; `clientState` of at most 128 characters; for `includeResourceData`, an
//! X.509 `encryptionCertificate` with an RSA key and an `encryptionCertificateId` of at most 128
//! characters; no conflicting subscription (409); then the handshake on `notificationUrl` and on
//! `lifecycleNotificationUrl` when given (two requests even when they are the same URL), each
//! needing, within [`super::GraphSimConfig::notification_timeout`], a `200` with a `text/plain`
//! body equal to the decoded token. Only then 201.
//!
//! Expired subscriptions disappear (at the next tick or request): PATCH, DELETE and GET on them
//! answer 404. `lifecycleNotificationUrl` cannot be set or changed with PATCH.

use std::collections::BTreeSet;

use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use presync_engine::Millis;
use serde_json::{json, Map, Value};

use super::api::{json_body, json_response, Req};
use super::cert::{self, EncryptionCert};
use super::dates::{iso_graph, parse_date_time, MINUTE};
use super::errors::GraphError;
use super::handshake::handshake;
use super::resource::parse_resource;
use super::tokens::{Caller, TokenKind};
use super::{lock, Shared};

/// Longest lifetime of a presence subscription.
pub(crate) const MAX_LIFETIME: Millis = 60 * MINUTE;
/// Longest `clientState` and `encryptionCertificateId`.
const MAX_CLIENT_STATE: usize = 128;

/// A subscription as the simulator holds it (read-only snapshot: [`SimSubscription`]).
#[derive(Debug, Clone)]
pub(crate) struct Subscription {
    pub id: String,
    pub resource: String,
    /// User keys covered.
    pub users: BTreeSet<String>,
    pub notification_url: String,
    pub lifecycle_url: Option<String>,
    pub client_state: Option<String>,
    pub expires_at: Millis,
    pub include_resource_data: bool,
    pub encryption_certificate: Option<String>,
    pub encryption_certificate_id: Option<String>,
    pub cert: Option<EncryptionCert>,
    pub creator_id: String,
    pub application_id: String,
    pub tls_version: String,
    pub notification_url_app_id: Option<String>,
}

/// A live subscription, for tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimSubscription {
    pub id: String,
    /// The resource as given.
    pub resource: String,
    /// The user ids covered (lower-case GUIDs).
    pub user_ids: Vec<String>,
    pub notification_url: String,
    pub lifecycle_notification_url: Option<String>,
    pub client_state: Option<String>,
    /// `expirationDateTime`, ms since the epoch.
    pub expires_at: Millis,
    /// Rich notifications (resource data, encrypted).
    pub include_resource_data: bool,
    pub encryption_certificate_id: Option<String>,
    /// The delegated user who created it.
    pub creator_id: String,
}

impl Subscription {
    pub(crate) fn covers(&self, user_key: &str) -> bool {
        self.users.contains(user_key)
    }

    pub(crate) fn public(&self) -> SimSubscription {
        SimSubscription {
            id: self.id.clone(),
            resource: self.resource.clone(),
            user_ids: self.users.iter().cloned().collect(),
            notification_url: self.notification_url.clone(),
            lifecycle_notification_url: self.lifecycle_url.clone(),
            client_state: self.client_state.clone(),
            expires_at: self.expires_at,
            include_resource_data: self.include_resource_data,
            encryption_certificate_id: self.encryption_certificate_id.clone(),
            creator_id: self.creator_id.clone(),
        }
    }

    fn to_json(&self) -> Value {
        json!({
            "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#subscriptions/$entity",
            "id": self.id,
            "resource": self.resource,
            "applicationId": self.application_id,
            "changeType": "updated",
            "clientState": self.client_state,
            "notificationUrl": self.notification_url,
            "notificationQueryOptions": null,
            "lifecycleNotificationUrl": self.lifecycle_url,
            "expirationDateTime": iso_graph(self.expires_at),
            "creatorId": self.creator_id,
            "includeResourceData": self.include_resource_data,
            "latestSupportedTlsVersion": self.tls_version,
            "encryptionCertificate": self.encryption_certificate,
            "encryptionCertificateId": self.encryption_certificate_id,
            "notificationUrlAppId": self.notification_url_app_id,
        })
    }
}

/// `…/subscriptions[/{id}[/reauthorize]]`.
pub(crate) async fn route(
    shared: &Shared,
    caller: &Caller,
    req: &Req<'_>,
    rest: &[String],
) -> Result<Response, GraphError> {
    let not_allowed = |m: &Method| {
        Err(GraphError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "BadRequest",
            format!("The HTTP method '{m}' is not allowed on this resource."),
        ))
    };
    match (rest, req.method.clone()) {
        ([], Method::GET) => Ok(list(shared)),
        ([], Method::POST) => create(shared, caller, req).await,
        ([id], Method::GET) => get(shared, id),
        ([id], Method::PATCH) => patch(shared, caller, req, id),
        ([id], Method::DELETE) => delete(shared, caller, id),
        ([] | [_], m) => not_allowed(&m),
        ([id, action], Method::POST)
            if action == "reauthorize" || action == "microsoft.graph.reauthorize" =>
        {
            reauthorize(shared, caller, id)
        }
        _ => Err(GraphError::bad_request(
            "Resource not found for the segment.",
        )),
    }
}

fn require_delegated(caller: &Caller, operation: &str) -> Result<(), GraphError> {
    if caller.kind == TokenKind::Delegated {
        return Ok(());
    }
    Err(GraphError::new(
        StatusCode::FORBIDDEN,
        "ExtensionError",
        format!("Operation: {operation}; Exception: [Status Code: Forbidden; Reason: Application permissions are not supported for presence subscriptions (communications/presences); use a delegated token with Presence.Read.All.]"),
    ))
}

fn not_found() -> GraphError {
    GraphError::not_found("ResourceNotFound", "The object was not found.")
}

fn list(shared: &Shared) -> Response {
    let mut st = lock(&shared.state);
    shared.settle(&mut st);
    let value: Vec<Value> = st.subs.iter().map(Subscription::to_json).collect();
    json_response(
        StatusCode::OK,
        json!({"@odata.context": "https://graph.microsoft.com/v1.0/$metadata#subscriptions", "value": value}),
    )
}

fn get(shared: &Shared, id: &str) -> Result<Response, GraphError> {
    let mut st = lock(&shared.state);
    shared.settle(&mut st);
    let sub = st.subs.iter().find(|s| s.id == id).ok_or_else(not_found)?;
    Ok(json_response(StatusCode::OK, sub.to_json()))
}

fn delete(shared: &Shared, caller: &Caller, id: &str) -> Result<Response, GraphError> {
    require_delegated(caller, "Delete")?;
    let mut st = lock(&shared.state);
    shared.settle(&mut st);
    let i = st
        .subs
        .iter()
        .position(|s| s.id == id)
        .ok_or_else(not_found)?;
    st.subs.remove(i);
    Ok(StatusCode::NO_CONTENT.into_response())
}

fn reauthorize(shared: &Shared, caller: &Caller, id: &str) -> Result<Response, GraphError> {
    require_delegated(caller, "Reauthorize")?;
    let mut st = lock(&shared.state);
    shared.settle(&mut st);
    if st.subs.iter().any(|s| s.id == id) {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(not_found())
    }
}

fn patch(
    shared: &Shared,
    caller: &Caller,
    req: &Req<'_>,
    id: &str,
) -> Result<Response, GraphError> {
    require_delegated(caller, "Update")?;
    let body = json_body(req)?;
    let now = shared.clock.now();
    let mut expires_at = None;
    let mut certificate = None;
    let mut certificate_id = None;
    for (k, v) in &body {
        match k.as_str() {
            "expirationDateTime" => expires_at = Some(expiration(v, now)?),
            "encryptionCertificate" => certificate = Some(string(v, k)?),
            "encryptionCertificateId" => certificate_id = Some(string(v, k)?),
            "@odata.type" => {}
            "lifecycleNotificationUrl" => {
                return Err(GraphError::invalid_request(
                    "lifecycleNotificationUrl cannot be added or changed after the subscription was created.",
                ))
            }
            other => {
                return Err(GraphError::invalid_request(format!(
                    "The property '{other}' cannot be updated; renew with expirationDateTime."
                )))
            }
        }
    }
    let cert = match &certificate {
        Some(c) => Some(cert::parse(c).ok_or_else(bad_certificate)?),
        None => None,
    };
    if let Some(id) = &certificate_id {
        check_length(id, "encryptionCertificateId")?;
    }
    let mut st = lock(&shared.state);
    shared.settle(&mut st);
    let sub = st
        .subs
        .iter_mut()
        .find(|s| s.id == id)
        .ok_or_else(not_found)?;
    if let Some(at) = expires_at {
        sub.expires_at = at;
    }
    if let Some(c) = cert {
        sub.cert = Some(c);
        sub.encryption_certificate = certificate;
    }
    if certificate_id.is_some() {
        sub.encryption_certificate_id = certificate_id;
    }
    Ok(json_response(StatusCode::OK, sub.to_json()))
}

async fn create(shared: &Shared, caller: &Caller, req: &Req<'_>) -> Result<Response, GraphError> {
    require_delegated(caller, "Create")?;
    let body = json_body(req)?;
    let now = shared.clock.now();
    let mut sub = parse_new(shared, caller, &body, now)?;
    {
        let mut st = lock(&shared.state);
        shared.settle(&mut st);
        check_conflict(shared, &st.subs, &sub)?;
    }
    let mut urls = vec![sub.notification_url.clone()];
    urls.extend(sub.lifecycle_url.clone());
    for url in &urls {
        if !handshake(shared, url).await {
            return Err(GraphError::invalid_request(
                "Subscription validation request failed. Notification endpoint must respond with 200 OK to validation request.",
            ));
        }
    }
    let mut st = lock(&shared.state);
    shared.settle(&mut st);
    check_conflict(shared, &st.subs, &sub)?;
    sub.id = uuid::Uuid::new_v4().to_string();
    let json = sub.to_json();
    st.subs.push(sub);
    Ok(json_response(StatusCode::CREATED, json))
}

fn parse_new(
    shared: &Shared,
    caller: &Caller,
    body: &Map<String, Value>,
    now: Millis,
) -> Result<Subscription, GraphError> {
    const KNOWN: [&str; 12] = [
        "changeType",
        "notificationUrl",
        "resource",
        "expirationDateTime",
        "clientState",
        "lifecycleNotificationUrl",
        "includeResourceData",
        "encryptionCertificate",
        "encryptionCertificateId",
        "latestSupportedTlsVersion",
        "notificationUrlAppId",
        "@odata.type",
    ];
    if let Some(k) = body.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(GraphError::bad_request(format!(
            "The property '{k}' does not exist on type 'microsoft.graph.subscription'. Make sure to only use property names that are defined by the type."
        )));
    }
    let required = |name: &str| -> Result<String, GraphError> {
        match body.get(name) {
            None | Some(Value::Null) => Err(GraphError::invalid_request(format!(
                "Required property '{name}' is missing."
            ))),
            Some(v) => string(v, name),
        }
    };
    let optional = |name: &str| -> Result<Option<String>, GraphError> {
        match body.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => string(v, name).map(Some),
        }
    };
    let change_type = required("changeType")?;
    if change_type != "updated" {
        return Err(GraphError::invalid_request(format!(
            "ChangeType '{change_type}' is not supported for presence; use 'updated'."
        )));
    }
    let notification_url = required("notificationUrl")?;
    check_url(shared, &notification_url, "notificationUrl")?;
    let lifecycle_url = optional("lifecycleNotificationUrl")?;
    if let Some(u) = &lifecycle_url {
        check_url(shared, u, "lifecycleNotificationUrl")?;
    }
    let resource = required("resource")?;
    let users = parse_resource(&resource)?;
    let expires_at = match body.get("expirationDateTime") {
        None | Some(Value::Null) => {
            return Err(GraphError::invalid_request(
                "Required property 'expirationDateTime' is missing.",
            ))
        }
        Some(v) => expiration(v, now)?,
    };
    let client_state = optional("clientState")?;
    if let Some(cs) = &client_state {
        check_length(cs, "clientState")?;
    }
    let include_resource_data = match body.get("includeResourceData") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(other) => {
            return Err(GraphError::bad_request(format!(
                "Cannot convert the literal '{other}' to the expected type 'Edm.Boolean'."
            )))
        }
    };
    let encryption_certificate = optional("encryptionCertificate")?;
    let encryption_certificate_id = optional("encryptionCertificateId")?;
    if let Some(id) = &encryption_certificate_id {
        check_length(id, "encryptionCertificateId")?;
    }
    let cert = match &encryption_certificate {
        Some(c) => Some(cert::parse(c).ok_or_else(bad_certificate)?),
        None => None,
    };
    if include_resource_data && (cert.is_none() || encryption_certificate_id.is_none()) {
        return Err(GraphError::invalid_request(
            "A valid encryptionCertificate and encryptionCertificateId are required when includeResourceData is true.",
        ));
    }
    let tls_version = optional("latestSupportedTlsVersion")?.unwrap_or_else(|| "v1_2".into());
    if !matches!(tls_version.as_str(), "v1_0" | "v1_1" | "v1_2" | "v1_3") {
        return Err(GraphError::invalid_request(format!(
            "latestSupportedTlsVersion '{tls_version}' is not valid; use v1_0, v1_1, v1_2 or v1_3."
        )));
    }
    Ok(Subscription {
        id: String::new(),
        resource,
        users,
        notification_url,
        lifecycle_url,
        client_state,
        expires_at,
        include_resource_data,
        encryption_certificate,
        encryption_certificate_id,
        cert,
        creator_id: caller.user.clone().unwrap_or_default(),
        application_id: caller.app_id.clone(),
        tls_version,
        notification_url_app_id: optional("notificationUrlAppId")?,
    })
}

fn string(v: &Value, name: &str) -> Result<String, GraphError> {
    v.as_str().map(str::to_owned).ok_or_else(|| {
        GraphError::bad_request(format!(
            "Cannot convert the literal '{v}' to the expected type 'Edm.String' for '{name}'."
        ))
    })
}

fn check_length(value: &str, name: &str) -> Result<(), GraphError> {
    if value.chars().count() > MAX_CLIENT_STATE {
        return Err(GraphError::invalid_request(format!(
            "{name} must be at most {MAX_CLIENT_STATE} characters long."
        )));
    }
    Ok(())
}

fn bad_certificate() -> GraphError {
    GraphError::invalid_request(
        "encryptionCertificate must be a base64-encoded X.509 certificate with an RSA public key.",
    )
}

fn check_url(shared: &Shared, value: &str, name: &str) -> Result<(), GraphError> {
    let scheme_ok = |s: &str| s == "https" || (s == "http" && !shared.cfg.require_https);
    match url::Url::parse(value) {
        Ok(u) if scheme_ok(u.scheme()) && u.host().is_some() => Ok(()),
        Ok(u) if u.scheme() == "http" => Err(GraphError::invalid_request(format!(
            "Subscription validation request failed. {name} must use the HTTPS protocol."
        ))),
        _ => Err(GraphError::invalid_request(format!(
            "{name} '{value}' is not a valid absolute URL."
        ))),
    }
}

/// `expirationDateTime`: an offset date-time in the future, at most 60 minutes ahead.
fn expiration(v: &Value, now: Millis) -> Result<Millis, GraphError> {
    let s = v.as_str().unwrap_or_default();
    let at = parse_date_time(s).ok_or_else(|| {
        GraphError::bad_request(format!(
            "Cannot convert the literal '{v}' to the expected type 'Edm.DateTimeOffset'."
        ))
    })?;
    if at <= now {
        return Err(GraphError::invalid_request(
            "Subscription expiration must be in the future.",
        ));
    }
    if at > now + MAX_LIFETIME {
        return Err(GraphError::invalid_request(
            "Subscription expiration can only be 60 minutes in the future.",
        ));
    }
    Ok(at)
}

/// 409 when the application already holds a presence subscription for this delegated user
/// (or, with the one-per-user rule relaxed, for the same set of users).
fn check_conflict(
    shared: &Shared,
    subs: &[Subscription],
    new: &Subscription,
) -> Result<(), GraphError> {
    let clash = subs.iter().find(|s| {
        s.application_id == new.application_id
            && s.creator_id == new.creator_id
            && (shared.cfg.one_subscription_per_user || s.users == new.users)
    });
    match clash {
        Some(s) => Err(GraphError::new(
            StatusCode::CONFLICT,
            "ExtensionError",
            format!(
                "Subscription Id {} already exists for the requested combination",
                s.id
            ),
        )),
        None => Ok(()),
    }
}
