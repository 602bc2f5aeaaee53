//! The Entra token endpoint in front of the simulated Graph, with the two grants presync uses:
//!
//! - `client_credentials` with the application's secret (form field or HTTP Basic) and one
//!   `…/.default` scope: an **app-only** token (graph.md §9.1);
//! - `refresh_token` with `client_id`, `refresh_token` and `scope`: a **delegated** token for the
//!   service account ([`super::GraphSimConfig::delegated_account`]), and, when `scope` includes
//!   `offline_access`, a new refresh token. A `client_secret` may be sent (a confidential client
//!   must; a public client must not); when sent it must be right.
//!
//! Refresh-token rotation: each redemption that returns a new refresh token makes it the
//! current one; the token it replaced stays valid for [`super::GraphSimConfig::refresh_token_grace`]
//! (so a client whose answer was lost can retry) and is refused afterwards with `invalid_grant`.
//! Entra itself is more lenient (an old refresh token lives until its own expiry); the simulator
//! is stricter on purpose, so that a client which forgets to store the rotated token fails in
//! tests instead of weeks later.
//!
//! Access tokens are opaque strings that expire on the simulator's clock after
//! [`super::GraphSimConfig::token_lifetime`]. Error bodies are Entra's
//! (`error`, `error_description` with `AADSTS…`, `error_codes`, `timestamp`, `trace_id`,
//! `correlation_id`).

use std::collections::HashMap;

use axum::extract::rejection::FormRejection;
use axum::extract::{Path, State};
use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Form, Json};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use presync_engine::Millis;
use serde_json::json;
use subtle::ConstantTimeEq;

use super::dates::iso_plain;
use super::{lock, GraphSim, Shared};

/// Which flow a token came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenKind {
    /// Client credentials: the application itself (`roles`).
    App,
    /// Refresh token: the application acting for the service account (`scp`).
    Delegated,
}

/// One request to the token endpoint. Secrets and tokens are never kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRequest {
    /// `grant_type` as sent (empty when missing).
    pub grant_type: String,
    /// `client_id` as sent (from the form or HTTP Basic).
    pub client_id: String,
    /// `scope` as sent.
    pub scope: String,
    /// The status answered.
    pub status: u16,
}

/// Who a valid bearer token speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Caller {
    pub kind: TokenKind,
    pub app_id: String,
    /// The signed-in user of a delegated token.
    pub user: Option<String>,
}

#[derive(Debug, Clone)]
struct Issued {
    caller: Caller,
    expires_at: Millis,
}

/// Access and refresh tokens issued so far.
#[derive(Debug, Default)]
pub(crate) struct TokenStore {
    access: HashMap<String, Issued>,
    /// The refresh token a redemption would rotate; `None` after a revocation.
    current_refresh: Option<String>,
    /// Replaced refresh tokens -> when they were replaced.
    replaced: HashMap<String, Millis>,
}

impl TokenStore {
    pub(crate) fn new(refresh_token: &str) -> TokenStore {
        TokenStore {
            current_refresh: Some(refresh_token.to_owned()),
            ..TokenStore::default()
        }
    }

    /// Forget every access token (refresh tokens stay).
    pub(crate) fn revoke_access(&mut self) {
        self.access.clear();
    }

    /// Refuse every refresh token, as after a password reset or a revoked session.
    pub(crate) fn revoke_refresh(&mut self) {
        self.current_refresh = None;
        self.replaced.clear();
    }

    pub(crate) fn current_refresh(&self) -> Option<String> {
        self.current_refresh.clone()
    }

    fn issue(&mut self, caller: Caller, now: Millis, lifetime: Millis) -> String {
        let token = format!(
            "sim.graph.{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        self.access.retain(|_, i| i.expires_at > now - lifetime);
        self.access.insert(
            token.clone(),
            Issued {
                caller,
                expires_at: now + lifetime,
            },
        );
        token
    }

    /// The caller of an `Authorization` header value, or Graph's 401 message.
    pub(crate) fn validate(&self, header: Option<&str>, now: Millis) -> Result<Caller, String> {
        let Some(value) = header.map(str::trim).filter(|v| !v.is_empty()) else {
            return Err("Access token is empty.".to_owned());
        };
        let token = match value.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
            _ => return Err("Access token validation failure. Invalid scheme.".to_owned()),
        };
        match self.access.get(token) {
            Some(i) if now < i.expires_at => Ok(i.caller.clone()),
            Some(_) => Err("Lifetime validation failed, the token is expired.".to_owned()),
            None => Err("Access token validation failure. Invalid audience.".to_owned()),
        }
    }
}

/// An Entra refusal: status, OAuth `error`, `AADSTS` number and message.
#[derive(Debug)]
struct Refusal {
    status: StatusCode,
    error: &'static str,
    code: u32,
    message: String,
}

impl Refusal {
    fn new(status: StatusCode, error: &'static str, code: u32, message: impl Into<String>) -> Self {
        Refusal {
            status,
            error,
            code,
            message: message.into(),
        }
    }

    fn missing(name: &str) -> Self {
        Refusal::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            900144,
            format!("The request body must contain the following parameter: '{name}'."),
        )
    }

    fn invalid_grant(code: u32, message: impl Into<String>) -> Self {
        Refusal::new(StatusCode::BAD_REQUEST, "invalid_grant", code, message)
    }

    fn render(self, now: Millis) -> Response {
        let trace_id = uuid::Uuid::new_v4();
        let correlation_id = uuid::Uuid::new_v4();
        let timestamp = format!("{}Z", iso_plain(now).replace('T', " "));
        let body = json!({
            "error": self.error,
            "error_description": format!(
                "AADSTS{}: {} Trace ID: {trace_id} Correlation ID: {correlation_id} Timestamp: {timestamp}",
                self.code, self.message
            ),
            "error_codes": [self.code],
            "timestamp": timestamp,
            "trace_id": trace_id,
            "correlation_id": correlation_id,
            "error_uri": format!("https://login.microsoftonline.com/error?code={}", self.code),
        });
        (self.status, Json(body)).into_response()
    }
}

/// `POST /{tenant}/oauth2/v2.0/token`.
pub(crate) async fn token_endpoint(
    State(sim): State<GraphSim>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    form: Result<Form<HashMap<String, String>>, FormRejection>,
) -> Response {
    let shared = &sim.shared;
    let now = shared.clock.now();
    let mut form = form.map(|Form(f)| f).unwrap_or_default();
    let basic = basic_credentials(&headers);
    if let Some((id, _)) = &basic {
        form.entry("client_id".to_owned()).or_insert(id.clone());
    }
    let get = |k: &str| form.get(k).cloned().unwrap_or_default();
    let mut record = TokenRequest {
        grant_type: get("grant_type"),
        client_id: get("client_id"),
        scope: get("scope"),
        status: 200,
    };
    let secret = form
        .get("client_secret")
        .cloned()
        .or_else(|| basic.map(|(_, s)| s))
        .filter(|s| !s.is_empty());
    let response = match grant(shared, &tenant, &form, secret.as_deref(), now) {
        Ok(body) => Json(body).into_response(),
        Err(refusal) => refusal.render(now),
    };
    record.status = response.status().as_u16();
    lock(&shared.token_requests).push(record);
    response
}

fn grant(
    shared: &Shared,
    tenant: &str,
    form: &HashMap<String, String>,
    secret: Option<&str>,
    now: Millis,
) -> Result<serde_json::Value, Refusal> {
    let cfg = &shared.cfg;
    if tenant != cfg.tenant_id {
        return Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            90002,
            format!("Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud."),
        ));
    }
    let field = |name: &'static str| {
        form.get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| Refusal::missing(name))
    };
    let grant_type = field("grant_type")?;
    if !matches!(grant_type, "client_credentials" | "refresh_token") {
        return Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            70003,
            format!("The app requested an unsupported grant type '{grant_type}'."),
        ));
    }
    let client_id = field("client_id")?;
    if client_id != cfg.app_client_id {
        return Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            700016,
            format!("Application with identifier '{client_id}' was not found in the directory '{tenant}'."),
        ));
    }
    let scope = field("scope")?;
    let secret_ok =
        |presented: &str| bool::from(presented.as_bytes().ct_eq(cfg.app_secret.as_bytes()));
    let bad_secret = || {
        Refusal::new(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            7000215,
            format!("Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{client_id}'."),
        )
    };
    let lifetime = Millis::try_from(cfg.token_lifetime.as_millis()).unwrap_or(Millis::MAX);
    let expires_in = (lifetime / 1000).max(1);
    let mut tokens = lock(&shared.tokens);
    if grant_type == "client_credentials" {
        if scope.split_whitespace().count() != 1 || !scope.ends_with("/.default") {
            return Err(Refusal::new(
                StatusCode::BAD_REQUEST,
                "invalid_scope",
                1002012,
                format!("The provided value for scope {scope} is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI)."),
            ));
        }
        match secret {
            None => {
                return Err(Refusal::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_client",
                    7000218,
                    "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
                ))
            }
            Some(s) if !secret_ok(s) => return Err(bad_secret()),
            Some(_) => {}
        }
        let caller = Caller {
            kind: TokenKind::App,
            app_id: cfg.app_client_id.clone(),
            user: None,
        };
        let access_token = tokens.issue(caller, now, lifetime);
        return Ok(json!({
            "token_type": "Bearer",
            "expires_in": expires_in,
            "ext_expires_in": expires_in,
            "access_token": access_token,
        }));
    }

    // grant_type=refresh_token
    let presented = field("refresh_token")?;
    if secret.is_some_and(|s| !secret_ok(s)) {
        return Err(bad_secret());
    }
    let grace = Millis::try_from(cfg.refresh_token_grace.as_millis()).unwrap_or(Millis::MAX);
    let is_current = tokens.current_refresh.as_deref() == Some(presented);
    if !is_current {
        match tokens.replaced.get(presented) {
            Some(at) if now < at.saturating_add(grace) => {}
            Some(_) => {
                return Err(Refusal::invalid_grant(
                    70008,
                    "The provided authorization code or refresh token has expired due to inactivity. (Simulator: it was replaced by a rotated refresh token and its grace period has ended.)",
                ))
            }
            None if tokens.current_refresh.is_none() => {
                return Err(Refusal::invalid_grant(
                    50173,
                    "The provided grant has expired due to it being revoked, a fresh auth token is needed. The user might have changed or reset their password.",
                ))
            }
            None => {
                return Err(Refusal::invalid_grant(
                    9002313,
                    "Invalid request. Request is malformed or invalid.",
                ))
            }
        }
    }
    let caller = Caller {
        kind: TokenKind::Delegated,
        app_id: cfg.app_client_id.clone(),
        user: Some(cfg.delegated_account.clone()),
    };
    let access_token = tokens.issue(caller, now, lifetime);
    let mut body = json!({
        "token_type": "Bearer",
        "scope": scope,
        "expires_in": expires_in,
        "ext_expires_in": expires_in,
        "access_token": access_token,
    });
    if scope.split_whitespace().any(|s| s == "offline_access") {
        let rotated = format!("sim.rt.{}", uuid::Uuid::new_v4().simple());
        if let Some(old) = tokens.current_refresh.replace(rotated.clone()) {
            tokens.replaced.insert(old, now);
        }
        body["refresh_token"] = json!(rotated);
    }
    Ok(body)
}

/// `Authorization: Basic base64(client_id:client_secret)`.
fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, b64) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = String::from_utf8(BASE64.decode(b64.trim()).ok()?).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    let unescape = |s: &str| {
        url::form_urlencoded::parse(format!("x={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    Some((unescape(id), unescape(secret)))
}
