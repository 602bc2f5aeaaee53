//! A stand-in for the Entra token endpoint, for the connectors' simulators and tests.
//!
//! [`SimAuthority`] knows one tenant, one application and its credential (a certificate or a
//! client secret). [`router`] serves `POST /{tenant}/oauth2/v2.0/token` with Entra's success and
//! error shapes; the simulator of a resource API (Dataverse, Graph) merges that router into its
//! own and checks `Authorization` headers with [`SimAuthority::validate_bearer`]. Tests force
//! failures with [`SimAuthority::fail_next`], expire tokens with [`SimAuthority::revoke_all`] or a
//! short [`SimAuthority::set_token_lifetime`], and count requests with
//! [`SimAuthority::token_requests`].

mod verify;

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::rejection::FormRejection;
use axum::extract::{Path, State};
use axum::http::header::{HOST, RETRY_AFTER};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Form, Json, Router};
use tokio::time::Instant;

use crate::assertion::{CertificateInfo, CredentialError};
use crate::client::CLIENT_ASSERTION_TYPE;
use crate::config::token_url;
use crate::secret::Secret;
use verify::{verify_assertion, Rejection};

/// Lifetime of issued tokens unless changed: Entra's usual `expires_in`.
pub const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(3599);

/// A failure the next token request(s) answer with, instead of being processed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SimFault {
    /// 500 `server_error` (AADSTS50000).
    ServerError,
    /// 429 `temporarily_unavailable` with a `Retry-After` header (whole seconds, rounded up).
    TooManyRequests {
        /// The `Retry-After` to send.
        retry_after: Duration,
    },
}

/// The simulated tenant, its one application, and the tokens it has issued. Cheap to clone;
/// clones share state.
#[derive(Clone)]
pub struct SimAuthority {
    inner: Arc<SimInner>,
}

struct SimInner {
    tenant_id: String,
    client_id: String,
    accepted: Accepted,
    state: Mutex<SimState>,
}

enum Accepted {
    Certificate(CertificateInfo),
    ClientSecret(Secret),
}

struct SimState {
    authority: Option<String>,
    scopes: Option<Vec<String>>,
    lifetime: Duration,
    /// Issued token -> expiry.
    tokens: HashMap<String, Instant>,
    /// Seen assertion `jti` -> its `exp` (Unix seconds), to refuse replays.
    seen_jti: HashMap<String, u64>,
    faults: VecDeque<SimFault>,
    token_requests: u64,
    tokens_issued: u64,
}

enum Answer {
    Token {
        access_token: String,
        expires_in: u64,
    },
    Refused(Rejection),
    Fault(SimFault),
}

impl SimAuthority {
    /// Accepts client assertions for `client_id` signed with the key of `certificate_pem`
    /// (PS256 with `x5t#S256`, or RS256 with `x5t`).
    pub fn with_certificate(
        tenant_id: impl Into<String>,
        client_id: impl Into<String>,
        certificate_pem: &str,
    ) -> Result<Self, CredentialError> {
        let certificate = CertificateInfo::from_pem(certificate_pem)?;
        Ok(Self::build(
            tenant_id.into(),
            client_id.into(),
            Accepted::Certificate(certificate),
        ))
    }

    /// Accepts `client_secret` for `client_id` (compared in constant time).
    pub fn with_client_secret(
        tenant_id: impl Into<String>,
        client_id: impl Into<String>,
        client_secret: impl Into<Secret>,
    ) -> Self {
        Self::build(
            tenant_id.into(),
            client_id.into(),
            Accepted::ClientSecret(client_secret.into()),
        )
    }

    fn build(tenant_id: String, client_id: String, accepted: Accepted) -> Self {
        Self {
            inner: Arc::new(SimInner {
                tenant_id,
                client_id,
                accepted,
                state: Mutex::new(SimState {
                    authority: None,
                    scopes: None,
                    lifetime: DEFAULT_TOKEN_LIFETIME,
                    tokens: HashMap::new(),
                    seen_jti: HashMap::new(),
                    faults: VecDeque::new(),
                    token_requests: 0,
                    tokens_issued: 0,
                }),
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, SimState> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Fixes the authority the assertion's `aud` must name (`{authority}/{tenant}/oauth2/v2.0/token`).
    /// Without it, `aud` must be `http(s)://{Host header}/{tenant}/oauth2/v2.0/token`.
    pub fn with_authority(self, authority: impl Into<String>) -> Self {
        self.state().authority = Some(authority.into());
        self
    }

    /// Only these scopes are known resources; by default any single `…/.default` scope is.
    pub fn with_scopes<I, S>(self, scopes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.state().scopes = Some(scopes.into_iter().map(Into::into).collect());
        self
    }

    /// Lifetime of tokens issued from now on (builder form of [`SimAuthority::set_token_lifetime`]).
    pub fn with_token_lifetime(self, lifetime: Duration) -> Self {
        self.set_token_lifetime(lifetime);
        self
    }

    /// Lifetime of tokens issued from now on; `expires_in` is its whole seconds (at least 1).
    pub fn set_token_lifetime(&self, lifetime: Duration) {
        self.state().lifetime = lifetime.max(Duration::from_secs(1));
    }

    /// The next `count` token requests answer with `fault` (after any faults already queued).
    pub fn fail_next(&self, count: usize, fault: SimFault) {
        self.state()
            .faults
            .extend(std::iter::repeat_n(fault, count));
    }

    /// Forgets every issued token: [`SimAuthority::validate_bearer`] refuses them all, as a
    /// resource does after a revocation or a key roll.
    pub fn revoke_all(&self) {
        self.state().tokens.clear();
    }

    /// Whether an `Authorization` header value is `Bearer <token>` with a token this authority
    /// issued and that has neither expired nor been revoked.
    pub fn validate_bearer(&self, header_value: &str) -> bool {
        let Some((scheme, token)) = header_value.trim().split_once(' ') else {
            return false;
        };
        if !scheme.eq_ignore_ascii_case("bearer") {
            return false;
        }
        let now = Instant::now();
        self.state()
            .tokens
            .get(token.trim())
            .is_some_and(|expires_at| now < *expires_at)
    }

    /// Token requests received, including refused and faulted ones.
    pub fn token_requests(&self) -> u64 {
        self.state().token_requests
    }

    /// Tokens issued.
    pub fn tokens_issued(&self) -> u64 {
        self.state().tokens_issued
    }

    /// The tenant this authority serves.
    pub fn tenant_id(&self) -> &str {
        &self.inner.tenant_id
    }

    /// The one application it knows.
    pub fn client_id(&self) -> &str {
        &self.inner.client_id
    }

    /// The token URL for a simulator listening at `authority` (e.g. `http://127.0.0.1:PORT`).
    pub fn token_url(&self, authority: &str) -> String {
        token_url(authority, &self.inner.tenant_id)
    }

    fn answer(
        &self,
        tenant: &str,
        host: Option<&str>,
        form: Option<&HashMap<String, String>>,
    ) -> Answer {
        let mut state = self.state();
        state.token_requests += 1;
        if let Some(fault) = state.faults.pop_front() {
            return Answer::Fault(fault);
        }
        match self.check(&mut state, tenant, host, form) {
            Ok(()) => {
                let access_token = format!(
                    "sim.{}{}",
                    uuid::Uuid::new_v4().simple(),
                    uuid::Uuid::new_v4().simple()
                );
                let now = Instant::now();
                let lifetime = state.lifetime;
                state.tokens.retain(|_, expires_at| now < *expires_at);
                state.tokens.insert(access_token.clone(), now + lifetime);
                state.tokens_issued += 1;
                Answer::Token {
                    access_token,
                    expires_in: lifetime.as_secs().max(1),
                }
            }
            Err(rejection) => Answer::Refused(rejection),
        }
    }

    fn check(
        &self,
        state: &mut SimState,
        tenant: &str,
        host: Option<&str>,
        form: Option<&HashMap<String, String>>,
    ) -> Result<(), Rejection> {
        let inner = &*self.inner;
        if tenant != inner.tenant_id {
            return Err(Rejection::new(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                90002,
                format!("Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud."),
            ));
        }
        let form = form.ok_or_else(|| Rejection::missing_parameter("grant_type"))?;
        let field = |name: &'static str| {
            form.get(name)
                .map(String::as_str)
                .filter(|v| !v.is_empty())
                .ok_or_else(|| Rejection::missing_parameter(name))
        };
        let grant_type = field("grant_type")?;
        if grant_type != "client_credentials" {
            return Err(Rejection::new(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                70003,
                format!("The app requested an unsupported grant type '{grant_type}'."),
            ));
        }
        let client_id = field("client_id")?;
        if client_id != inner.client_id {
            return Err(Rejection::new(
                StatusCode::BAD_REQUEST,
                "unauthorized_client",
                700016,
                format!("Application with identifier '{client_id}' was not found in the directory '{tenant}'."),
            ));
        }
        check_scope(field("scope")?, state.scopes.as_deref())?;

        let secret = form.get("client_secret").filter(|s| !s.is_empty());
        let assertion = form.get("client_assertion").filter(|s| !s.is_empty());
        match (&inner.accepted, secret, assertion) {
            (_, None, None) => Err(Rejection::new(
                StatusCode::BAD_REQUEST,
                "invalid_client",
                7000218,
                "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
            )),
            (Accepted::ClientSecret(expected), Some(presented), _) => {
                if expected.ct_eq(presented.as_bytes()) {
                    Ok(())
                } else {
                    Err(Rejection::invalid_client(
                        7000215,
                        format!("Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{client_id}'."),
                    ))
                }
            }
            (Accepted::ClientSecret(_), None, Some(_)) => Err(Rejection::invalid_client(
                700027,
                "The certificate with identifier used to sign the client assertion is not registered on application.",
            )),
            (Accepted::Certificate(_), _, None) => Err(Rejection::invalid_client(
                7000215,
                "Invalid client secret provided. This application accepts certificate credentials only.",
            )),
            (Accepted::Certificate(certificate), _, Some(assertion)) => {
                if form.get("client_assertion_type").map(String::as_str) != Some(CLIENT_ASSERTION_TYPE)
                {
                    return Err(Rejection::new(
                        StatusCode::BAD_REQUEST,
                        "invalid_request",
                        50027,
                        format!("client_assertion_type must be '{CLIENT_ASSERTION_TYPE}'."),
                    ));
                }
                let audiences = self.audiences(state, host);
                let claims = verify_assertion(certificate, assertion, client_id, &audiences)?;
                remember_jti(state, claims.jti.unwrap_or_default(), claims.exp)
            }
        }
    }

    fn audiences(&self, state: &SimState, host: Option<&str>) -> Vec<String> {
        let tenant = &self.inner.tenant_id;
        match (&state.authority, host) {
            (Some(authority), _) => vec![token_url(authority, tenant)],
            (None, Some(host)) => vec![
                token_url(&format!("http://{host}"), tenant),
                token_url(&format!("https://{host}"), tenant),
            ],
            (None, None) => Vec::new(),
        }
    }
}

fn check_scope(scope: &str, known: Option<&[String]>) -> Result<(), Rejection> {
    let invalid = |code, message: String| {
        Err(Rejection::new(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            code,
            message,
        ))
    };
    if scope.split_whitespace().count() != 1 || !scope.ends_with("/.default") {
        return invalid(
            1002012,
            format!("The provided value for scope {scope} is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI)."),
        );
    }
    if known.is_some_and(|known| !known.iter().any(|s| s == scope)) {
        return invalid(
            70011,
            format!("The provided request must include a 'scope' input parameter. The provided value for the input parameter 'scope' is not valid. The scope {scope} is not valid."),
        );
    }
    Ok(())
}

fn remember_jti(state: &mut SimState, jti: String, exp: u64) -> Result<(), Rejection> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    // Keep each jti until its assertion could no longer pass the exp check (60 s leeway).
    state.seen_jti.retain(|_, exp| *exp + 120 > now);
    if state.seen_jti.contains_key(&jti) {
        return Err(Rejection::invalid_client(
            700025,
            format!("Client assertion with jti '{jti}' has already been used."),
        ));
    }
    state.seen_jti.insert(jti, exp);
    Ok(())
}

impl fmt::Debug for SimAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let accepted = match &self.inner.accepted {
            Accepted::Certificate(certificate) => format!("{certificate:?}"),
            Accepted::ClientSecret(_) => "client secret (***)".to_owned(),
        };
        f.debug_struct("SimAuthority")
            .field("tenant_id", &self.inner.tenant_id)
            .field("client_id", &self.inner.client_id)
            .field("accepted", &accepted)
            .finish_non_exhaustive()
    }
}

/// `POST /{tenant}/oauth2/v2.0/token`, answering like Entra. Merge it into a simulator's router.
pub fn router(authority: SimAuthority) -> Router {
    Router::new()
        .route("/{tenant}/oauth2/v2.0/token", post(token_endpoint))
        .with_state(authority)
}

/// Bind `127.0.0.1:0`, serve `router` in a background task, and return the address; `name`
/// labels the error logged if serving stops. The simulators' `spawn` methods all use this.
pub async fn spawn_router(router: Router, name: &'static str) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::error!(error = %e, "{name} stopped");
        }
    });
    Ok(addr)
}

async fn token_endpoint(
    State(authority): State<SimAuthority>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    form: Result<Form<HashMap<String, String>>, FormRejection>,
) -> Response {
    let host = headers.get(HOST).and_then(|v| v.to_str().ok());
    let form = form.ok().map(|Form(form)| form);
    match authority.answer(&tenant, host, form.as_ref()) {
        Answer::Token {
            access_token,
            expires_in,
        } => Json(serde_json::json!({
            "token_type": "Bearer",
            "expires_in": expires_in,
            "ext_expires_in": expires_in,
            "access_token": access_token,
        }))
        .into_response(),
        Answer::Refused(rejection) => rejection.into_response(),
        Answer::Fault(SimFault::ServerError) => Rejection::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            50000,
            "There was an error issuing a token or an issue with our sign-in service.",
        )
        .into_response(),
        Answer::Fault(SimFault::TooManyRequests { retry_after }) => {
            let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
            let mut response = Rejection::new(
                StatusCode::TOO_MANY_REQUESTS,
                "temporarily_unavailable",
                90055,
                "There are too many incoming requests. Retry after the interval in the Retry-After header.",
            )
            .into_response();
            response
                .headers_mut()
                .insert(RETRY_AFTER, axum::http::HeaderValue::from(secs));
            response
        }
    }
}

#[cfg(test)]
mod tests;
