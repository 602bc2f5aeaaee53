//! Shared set-up for the Graph simulator tests: a simulator on a loopback port with a manual
//! clock, tokens from its own token endpoint, and a notification receiver that answers the
//! validation handshake the way it is told to and records everything else.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use presync_engine::clock::ManualClock;
use presync_teams::sim::{GraphSim, GraphSimConfig};
use serde_json::{json, Value};

pub const TENANT: &str = "5f1c2d3e-4b5a-4c6d-8e7f-90a1b2c3d4e5";
pub const APP: &str = "11111111-2222-3333-4444-555555555555";
pub const SECRET: &str = "graph-sim-secret-0123456789";
/// The service account behind delegated tokens.
pub const SERVICE: &str = "99999999-0000-4000-8000-000000000001";
pub const REFRESH: &str = "initial-refresh-token";
pub const ANN: &str = "aaaaaaaa-0000-4000-8000-000000000001";
pub const BOB: &str = "aaaaaaaa-0000-4000-8000-000000000002";
/// 2024-08-02T07:00:00Z.
pub const T0: i64 = 1_722_582_000_000;
pub const MINUTE: i64 = 60_000;

/// A simulator with Ann, Bob and the service account, on a manual clock at [`T0`], listening on
/// loopback; `tweak` adjusts the config first (no background ticking, fast retries).
pub async fn start(tweak: impl FnOnce(&mut GraphSimConfig)) -> Env {
    let clock = Arc::new(ManualClock::new(T0));
    let mut cfg = GraphSimConfig::new(TENANT, APP, SECRET, SERVICE, REFRESH);
    cfg.auto_tick = false;
    cfg.delivery_backoff = Duration::from_millis(10);
    cfg.delivery_retries = 2;
    tweak(&mut cfg);
    let sim = GraphSim::new(cfg, clock.clone());
    for u in [ANN, BOB, SERVICE] {
        sim.add_user(u);
    }
    let addr = sim.spawn().await.unwrap();
    Env {
        sim,
        clock,
        base: format!("http://{addr}"),
        http: reqwest::Client::new(),
    }
}

pub struct Env {
    pub sim: GraphSim,
    pub clock: Arc<ManualClock>,
    /// `http://127.0.0.1:PORT`: the Graph host and the Entra authority.
    pub base: String,
    pub http: reqwest::Client,
}

/// An answer: status, JSON body (a string when it is not JSON, `Null` when empty), headers.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
    pub headers: reqwest::header::HeaderMap,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// `error.code` of Graph's envelope.
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }

    pub fn message(&self) -> &str {
        self.body["error"]["message"].as_str().unwrap_or("")
    }
}

pub async fn answer(r: reqwest::Response) -> Answer {
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let text = r.text().await.unwrap();
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    Answer {
        status,
        body,
        headers,
    }
}

impl Env {
    /// `http://127.0.0.1:PORT/v1.0/{rest}`.
    pub fn url(&self, rest: &str) -> String {
        format!("{}/v1.0/{rest}", self.base)
    }

    pub fn token_url(&self) -> String {
        self.sim.token_url(&self.base)
    }

    /// POST the token endpoint with a form.
    pub async fn token_request(&self, form: &[(&str, &str)]) -> Answer {
        answer(
            self.http
                .post(self.token_url())
                .form(form)
                .send()
                .await
                .unwrap(),
        )
        .await
    }

    /// An app-only token (client credentials).
    pub async fn app_token(&self) -> String {
        let a = self
            .token_request(&[
                ("grant_type", "client_credentials"),
                ("client_id", APP),
                ("client_secret", SECRET),
                ("scope", "https://graph.microsoft.com/.default"),
            ])
            .await;
        assert_eq!(a.status, 200, "{:?}", a.body);
        a.body["access_token"].as_str().unwrap().to_owned()
    }

    /// A delegated token from the simulator's current refresh token (rotating it).
    pub async fn delegated_token(&self) -> String {
        let refresh = self.sim.current_refresh_token().unwrap();
        let a = self
            .token_request(&[
                ("grant_type", "refresh_token"),
                ("client_id", APP),
                ("refresh_token", &refresh),
                (
                    "scope",
                    "https://graph.microsoft.com/Presence.Read.All https://graph.microsoft.com/Presence.ReadWrite offline_access",
                ),
            ])
            .await;
        assert_eq!(a.status, 200, "{:?}", a.body);
        a.body["access_token"].as_str().unwrap().to_owned()
    }

    /// A Graph request with an optional JSON body.
    pub async fn call(&self, method: &str, token: &str, rest: &str, body: Option<Value>) -> Answer {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self.http.request(method, self.url(rest)).bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        answer(req.send().await.unwrap()).await
    }

    pub async fn get(&self, token: &str, rest: &str) -> Answer {
        self.call("GET", token, rest, None).await
    }

    pub async fn post(&self, token: &str, rest: &str, body: Value) -> Answer {
        self.call("POST", token, rest, Some(body)).await
    }

    /// `setPresence` for `user` with presync's session id.
    pub async fn set_presence(
        &self,
        token: &str,
        user: &str,
        availability: &str,
        activity: &str,
        duration: Option<&str>,
    ) -> Answer {
        let mut body =
            json!({"sessionId": APP, "availability": availability, "activity": activity});
        if let Some(d) = duration {
            body["expirationDuration"] = json!(d);
        }
        self.post(token, &format!("users/{user}/presence/setPresence"), body)
            .await
    }

    /// `GET users/{user}/presence`, expecting 200: the presence resource.
    pub async fn read(&self, token: &str, user: &str) -> Value {
        let a = self.get(token, &format!("users/{user}/presence")).await;
        assert_eq!(a.status, 200, "{:?}", a.body);
        a.body
    }

    /// `POST communications/getPresencesByUserId` for `users`, expecting 200: the resources, in
    /// the order answered.
    pub async fn read_many(&self, token: &str, users: &[&str]) -> Vec<Value> {
        let a = self
            .post(
                token,
                "communications/getPresencesByUserId",
                json!({ "ids": users }),
            )
            .await;
        assert_eq!(a.status, 200, "{:?}", a.body);
        a.body["value"].as_array().unwrap().clone()
    }

    /// Move the clock by `ms` and tick.
    pub fn advance(&self, ms: i64) {
        self.clock.advance(ms);
        self.sim.tick();
    }

    pub fn presence(&self, user: &str) -> (String, String) {
        self.sim.presence(user)
    }
}

pub fn pair(a: &str, b: &str) -> (String, String) {
    (a.to_owned(), b.to_owned())
}

/// `(availability, activity)` of a presence resource.
pub fn pair_of(resource: &Value) -> (String, String) {
    (
        resource["availability"].as_str().unwrap().to_owned(),
        resource["activity"].as_str().unwrap().to_owned(),
    )
}

/// `expirationDateTime` `minutes` after the simulator's clock, in Graph's form.
pub fn in_minutes(env: &Env, minutes: i64) -> String {
    use presync_engine::clock::Clock;
    iso(env.clock.now() + minutes * MINUTE)
}

/// `2024-08-02T07:00:00.000Z`.
pub fn iso(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, sod) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        sod / 3600,
        sod / 60 % 60,
        sod % 60,
        ms.rem_euclid(1000)
    )
}

/// How the receiver answers a validation request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validation {
    /// 200, text/plain, the decoded token: correct.
    Echo,
    /// 200, text/plain, the token exactly as it appeared in the query (still encoded).
    EchoRaw,
    /// 200 with a JSON body holding the token.
    EchoJson,
    /// This status, empty body.
    Status(u16),
}

/// What one POST to the receiver carried.
#[derive(Debug, Clone)]
pub struct Captured {
    pub path: String,
    pub headers: HeaderMap,
    pub query: Option<String>,
    pub body: Bytes,
}

impl Captured {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The decoded `validationToken`, if this was a validation request.
    pub fn validation_token(&self) -> Option<String> {
        let q = self.query.as_deref()?;
        url::form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "validationToken")
            .map(|(_, v)| v.into_owned())
    }
}

/// A receiver on loopback at `/hook` and `/lifecycle`: answers validation requests per
/// [`Validation`], records every other POST and answers the queued statuses (202 once the queue
/// is empty).
#[derive(Clone)]
pub struct Receiver {
    pub addr: SocketAddr,
    got: Arc<Mutex<Vec<Captured>>>,
    answers: Arc<Mutex<VecDeque<u16>>>,
    validation: Arc<Mutex<Validation>>,
}

impl Receiver {
    pub async fn start(validation: Validation) -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let rx = Receiver {
            addr: listener.local_addr().unwrap(),
            got: Arc::default(),
            answers: Arc::default(),
            validation: Arc::new(Mutex::new(validation)),
        };
        let app = Router::new()
            .route("/hook", post(receive))
            .route("/lifecycle", post(receive))
            .with_state(rx.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        rx
    }

    pub fn hook(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    pub fn lifecycle(&self) -> String {
        format!("http://{}/lifecycle", self.addr)
    }

    pub fn answer_next(&self, statuses: &[u16]) {
        self.answers.lock().unwrap().extend(statuses);
    }

    pub fn set_validation(&self, v: Validation) {
        *self.validation.lock().unwrap() = v;
    }

    /// Everything received, validations included.
    pub fn got(&self) -> Vec<Captured> {
        self.got.lock().unwrap().clone()
    }

    /// The notifications received (validations left out), as JSON.
    pub fn notifications(&self) -> Vec<Value> {
        self.got()
            .iter()
            .filter(|c| c.validation_token().is_none())
            .map(Captured::json)
            .collect()
    }

    pub fn clear(&self) {
        self.got.lock().unwrap().clear();
    }
}

async fn receive(
    State(rx): State<Receiver>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let captured = Captured {
        path: uri.path().to_owned(),
        headers,
        query: uri.query().map(str::to_owned),
        body,
    };
    let token = captured.validation_token();
    let raw = captured.query.clone().unwrap_or_default();
    rx.got.lock().unwrap().push(captured);
    if let Some(token) = token {
        let mode = *rx.validation.lock().unwrap();
        return match mode {
            Validation::Echo => {
                (StatusCode::OK, [("content-type", "text/plain")], token).into_response()
            }
            Validation::EchoRaw => {
                let raw = raw
                    .split('&')
                    .find_map(|kv| kv.strip_prefix("validationToken="))
                    .unwrap_or_default()
                    .to_owned();
                (StatusCode::OK, [("content-type", "text/plain")], raw).into_response()
            }
            Validation::EchoJson => axum::Json(json!({ "validationToken": token })).into_response(),
            Validation::Status(s) => StatusCode::from_u16(s).unwrap().into_response(),
        };
    }
    let status = rx.answers.lock().unwrap().pop_front().unwrap_or(202);
    StatusCode::from_u16(status).unwrap().into_response()
}

/// A subscription body for `users` at the receiver, expiring in 55 minutes.
pub fn subscription_body(env: &Env, rx: &Receiver, users: &[&str]) -> Value {
    let list = users
        .iter()
        .map(|u| format!("'{u}'"))
        .collect::<Vec<_>>()
        .join(",");
    json!({
        "changeType": "updated",
        "notificationUrl": rx.hook(),
        "resource": format!("/communications/presences?$filter=id in ({list})"),
        "expirationDateTime": in_minutes(env, 55),
        "clientState": "presync-client-state-0123456789",
    })
}

/// Create a subscription (delegated) and return its id.
pub async fn subscribe(env: &Env, rx: &Receiver, users: &[&str]) -> String {
    let token = env.delegated_token().await;
    let a = env
        .post(&token, "subscriptions", subscription_body(env, rx, users))
        .await;
    assert_eq!(a.status, 201, "{:?}", a.body);
    rx.clear();
    a.body["id"].as_str().unwrap().to_owned()
}

/// Poll until `f` holds, for at most five seconds.
pub async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
