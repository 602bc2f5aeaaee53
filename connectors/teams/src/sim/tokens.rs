//! The Entra token endpoint in front of the simulated Graph, with the three grants presync uses:
//!
//! - `client_credentials` with the application's secret (form field or HTTP Basic) and one
//!   `…/.default` scope: an **app-only** token (graph.md §9.1);
//! - `refresh_token` with `client_id`, `refresh_token` and `scope`: a **delegated** token for the
//!   service account ([`super::GraphSimConfig::delegated_account`]), and, when `scope` includes
//!   `offline_access`, a new refresh token. A `client_secret` may be sent (a confidential client
//!   must; a public client must not); when sent it must be right.
//! - `urn:ietf:params:oauth:grant-type:device_code` (RFC 8628, `presync teams login`), after
//!   `POST /{tenant}/oauth2/v2.0/devicecode` with `client_id` and `scope`: `authorization_pending`
//!   until a test calls [`super::GraphSim::approve_device_code`], then a delegated token for the
//!   service account and, when the scope included `offline_access`, a new current refresh token
//!   (the one it replaces gets the rotation grace). `slow_down` when polled sooner than the
//!   interval after the previous poll (on the simulator's clock; the interval then grows by 5 s,
//!   RFC 8628 §3.5), `authorization_declined` after [`super::GraphSim::decline_device_code`],
//!   `expired_token` once [`super::GraphSimConfig::device_code_lifetime`] has passed, and
//!   `bad_verification_code` for an unknown or already redeemed device code. The `AADSTS` numbers
//!   of `slow_down`, `authorization_declined` and `bad_verification_code` are UNCONFIRMED.
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
    /// Device codes handed out by the devicecode endpoint and not yet redeemed.
    device_codes: HashMap<String, DeviceLogin>,
}

/// A device-code sign-in in progress.
#[derive(Debug)]
struct DeviceLogin {
    user_code: String,
    scope: String,
    expires_at: Millis,
    /// Minimum time between polls; grows by 5 s with each `slow_down`.
    interval: Millis,
    last_poll: Option<Millis>,
    approval: Approval,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Approval {
    Pending,
    Approved,
    Declined,
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

    /// The user approves (or declines) the sign-in shown with `user_code`. False when no pending
    /// sign-in has that code.
    pub(crate) fn decide_device_code(&mut self, user_code: &str, approve: bool) -> bool {
        let wanted = user_code.trim().replace('-', "").to_ascii_uppercase();
        match self
            .device_codes
            .values_mut()
            .find(|d| d.user_code == wanted && d.approval == Approval::Pending)
        {
            Some(d) => {
                d.approval = if approve {
                    Approval::Approved
                } else {
                    Approval::Declined
                };
                true
            }
            None => false,
        }
    }

    /// Make a new refresh token the current one; the one it replaces gets the grace period.
    fn rotate_refresh(&mut self, now: Millis) -> String {
        let rotated = format!("sim.rt.{}", uuid::Uuid::new_v4().simple());
        if let Some(old) = self.current_refresh.replace(rotated.clone()) {
            self.replaced.insert(old, now);
        }
        rotated
    }

    /// Issue an access token for `caller` and answer like the token endpoint: a delegated caller
    /// asking for `offline_access` also gets a rotated refresh token; an app caller gets no
    /// `scope` back.
    fn grant(
        &mut self,
        cfg: &super::GraphSimConfig,
        caller: Caller,
        scope: &str,
        now: Millis,
    ) -> serde_json::Value {
        let lifetime = Millis::try_from(cfg.token_lifetime.as_millis()).unwrap_or(Millis::MAX);
        let expires_in = (lifetime / 1000).max(1);
        let delegated = caller.kind == TokenKind::Delegated;
        let mut body = json!({
            "token_type": "Bearer",
            "expires_in": expires_in,
            "ext_expires_in": expires_in,
            "access_token": self.issue(caller, now, lifetime),
        });
        if delegated {
            body["scope"] = json!(scope);
            if scope.split_whitespace().any(|s| s == "offline_access") {
                body["refresh_token"] = json!(self.rotate_refresh(now));
            }
        }
        body
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
    check_tenant(cfg, tenant)?;
    let field = |name: &'static str| {
        form.get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| Refusal::missing(name))
    };
    let grant_type = field("grant_type")?;
    if !matches!(
        grant_type,
        "client_credentials" | "refresh_token" | DEVICE_CODE_GRANT
    ) {
        return Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            70003,
            format!("The app requested an unsupported grant type '{grant_type}'."),
        ));
    }
    let client_id = field("client_id")?;
    check_client(cfg, tenant, client_id)?;
    if grant_type == DEVICE_CODE_GRANT {
        let device_code = field("device_code")?;
        if secret.is_some_and(|s| !bool::from(s.as_bytes().ct_eq(cfg.app_secret.as_bytes()))) {
            return Err(bad_secret(client_id));
        }
        return redeem_device_code(shared, device_code, now);
    }
    let scope = field("scope")?;
    let secret_ok =
        |presented: &str| bool::from(presented.as_bytes().ct_eq(cfg.app_secret.as_bytes()));
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
            Some(s) if !secret_ok(s) => return Err(bad_secret(client_id)),
            Some(_) => {}
        }
        let caller = Caller {
            kind: TokenKind::App,
            app_id: cfg.app_client_id.clone(),
            user: None,
        };
        return Ok(tokens.grant(cfg, caller, scope, now));
    }

    // grant_type=refresh_token
    let presented = field("refresh_token")?;
    if secret.is_some_and(|s| !secret_ok(s)) {
        return Err(bad_secret(client_id));
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
    Ok(tokens.grant(cfg, caller, scope, now))
}

/// The grant type of the device authorization grant (RFC 8628 §3.4).
const DEVICE_CODE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

/// Where the user signs in; Entra's own.
const VERIFICATION_URI: &str = "https://microsoft.com/devicelogin";

fn check_tenant(cfg: &super::GraphSimConfig, tenant: &str) -> Result<(), Refusal> {
    if tenant == cfg.tenant_id {
        return Ok(());
    }
    Err(Refusal::new(
        StatusCode::BAD_REQUEST,
        "invalid_request",
        90002,
        format!("Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud."),
    ))
}

fn check_client(cfg: &super::GraphSimConfig, tenant: &str, client_id: &str) -> Result<(), Refusal> {
    if client_id == cfg.app_client_id {
        return Ok(());
    }
    Err(Refusal::new(
        StatusCode::BAD_REQUEST,
        "unauthorized_client",
        700016,
        format!(
            "Application with identifier '{client_id}' was not found in the directory '{tenant}'."
        ),
    ))
}

fn bad_secret(client_id: &str) -> Refusal {
    Refusal::new(
        StatusCode::UNAUTHORIZED,
        "invalid_client",
        7000215,
        format!("Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{client_id}'."),
    )
}

/// `POST /{tenant}/oauth2/v2.0/devicecode`: start a device-code sign-in.
pub(crate) async fn devicecode_endpoint(
    State(sim): State<GraphSim>,
    Path(tenant): Path<String>,
    form: Result<Form<HashMap<String, String>>, FormRejection>,
) -> Response {
    let shared = &sim.shared;
    let now = shared.clock.now();
    let form = form.map(|Form(f)| f).unwrap_or_default();
    match start_device_code(shared, &tenant, &form, now) {
        Ok(body) => Json(body).into_response(),
        Err(refusal) => refusal.render(now),
    }
}

fn start_device_code(
    shared: &Shared,
    tenant: &str,
    form: &HashMap<String, String>,
    now: Millis,
) -> Result<serde_json::Value, Refusal> {
    let cfg = &shared.cfg;
    check_tenant(cfg, tenant)?;
    let field = |name: &'static str| {
        form.get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| Refusal::missing(name))
    };
    let client_id = field("client_id")?;
    check_client(cfg, tenant, client_id)?;
    let scope = field("scope")?;
    let lifetime = Millis::try_from(cfg.device_code_lifetime.as_millis()).unwrap_or(Millis::MAX);
    let interval = cfg.device_code_interval_secs;
    let device_code = format!(
        "sim.dc.{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    // Entra's user codes are short, upper-case and typed by a person (e.g. `FG7R2K9LM`).
    let user_code = uuid::Uuid::new_v4().simple().to_string()[..9].to_ascii_uppercase();
    let mut tokens = lock(&shared.tokens);
    tokens.device_codes.retain(|_, d| d.expires_at > now);
    tokens.device_codes.insert(
        device_code.clone(),
        DeviceLogin {
            user_code: user_code.clone(),
            scope: scope.to_owned(),
            expires_at: now.saturating_add(lifetime),
            interval: Millis::try_from(interval.saturating_mul(1000)).unwrap_or(Millis::MAX),
            last_poll: None,
            approval: Approval::Pending,
        },
    );
    Ok(json!({
        "device_code": device_code,
        "user_code": user_code,
        "verification_uri": VERIFICATION_URI,
        "expires_in": (lifetime / 1000).max(1),
        "interval": interval,
        "message": format!("To sign in, use a web browser to open the page {VERIFICATION_URI} and enter the code {user_code} to authenticate."),
    }))
}

/// One poll of a device-code sign-in.
fn redeem_device_code(
    shared: &Shared,
    device_code: &str,
    now: Millis,
) -> Result<serde_json::Value, Refusal> {
    let cfg = &shared.cfg;
    let refuse = |error: &'static str, code: u32, message: &str| {
        Refusal::new(StatusCode::BAD_REQUEST, error, code, message)
    };
    let mut tokens = lock(&shared.tokens);
    let Some(login) = tokens.device_codes.get_mut(device_code) else {
        return Err(refuse(
            "bad_verification_code",
            70000,
            "The provided value for the input parameter 'device_code' is not valid.",
        ));
    };
    if now >= login.expires_at {
        tokens.device_codes.remove(device_code);
        return Err(refuse("expired_token", 70019, "Verification code expired."));
    }
    let too_soon = login
        .last_poll
        .is_some_and(|last| now < last.saturating_add(login.interval));
    login.last_poll = Some(now);
    if login.approval == Approval::Declined {
        tokens.device_codes.remove(device_code);
        return Err(refuse(
            "authorization_declined",
            70000,
            "The user declined the sign-in request.",
        ));
    }
    if too_soon {
        login.interval = login.interval.saturating_add(5_000);
        return Err(refuse(
            "slow_down",
            70016,
            "The client is polling too quickly. Wait for the interval before the next request.",
        ));
    }
    if login.approval == Approval::Pending {
        return Err(refuse(
            "authorization_pending",
            70016,
            "OAuth 2.0 device flow error. Authorization is pending. Continue polling.",
        ));
    }
    let scope = login.scope.clone();
    tokens.device_codes.remove(device_code);
    let caller = Caller {
        kind: TokenKind::Delegated,
        app_id: cfg.app_client_id.clone(),
        user: Some(cfg.delegated_account.clone()),
    };
    Ok(tokens.grant(cfg, caller, &scope, now))
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
