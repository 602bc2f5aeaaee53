//! Shared set-up for the simulator tests: a simulator on a loopback port, tokens from its own
//! token endpoint, and a small webhook receiver that records what arrives.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::routing::post;
use axum::Router;
use presync_dataverse::config::WebhookAuth;
use presync_dataverse::mapping::builtin;
use presync_dataverse::sim::{DataverseSim, SimConfig, SimCredential, WebhookTarget};
use presync_entra::{Credential, EntraConfig, TokenClient};
use serde_json::Value;

pub const TENANT: &str = "11111111-2222-3333-4444-555555555555";
pub const CLIENT: &str = "66666666-7777-8888-9999-000000000000";
pub const SECRET: &str = "sim-client-secret-0123456789";
pub const ORG_HOST: &str = "contoso.crm.dynamics.com";
pub const API: &str = "/api/data/v9.2";

/// Agents: systemuserid and Entra object id.
pub const ANN: &str = "97c90b02-4e38-ef11-a315-000d3a5a54dc";
pub const ANN_AAD: &str = "0a0a0a0a-0000-4000-8000-000000000001";
pub const BOB: &str = "a7f9a9ed-b311-ef11-9f89-000d3a544b4c";
pub const BOB_AAD: &str = "0a0a0a0a-0000-4000-8000-000000000002";
/// A supervisor who is not an agent.
pub const SUE: &str = "cc05cf62-6242-ee11-be6e-6045bdd7ac2c";
pub const SUE_AAD: &str = "0a0a0a0a-0000-4000-8000-000000000003";

/// A simulator with the three users above (Ann signed in Available, Bob signed out), Sue as
/// supervisor, listening on loopback; `tweak` adjusts the config first.
pub async fn start(tweak: impl FnOnce(&mut SimConfig)) -> Env {
    let mut cfg = SimConfig::new(
        TENANT,
        CLIENT,
        SimCredential::ClientSecret(SECRET.into()),
        ORG_HOST,
    );
    cfg.supervisors = vec![SUE.to_owned()];
    tweak(&mut cfg);
    let sim = DataverseSim::new(cfg);
    sim.add_user(SUE, SUE_AAD, "Sue Supervisor");
    sim.add_agent(ANN, ANN_AAD, "Ann Agent", builtin::AVAILABLE, true);
    sim.add_agent(BOB, BOB_AAD, "Bob Agent", builtin::OFFLINE, false);
    let addr = sim.spawn().await.unwrap();
    Env {
        sim,
        base: format!("http://{addr}"),
        http: reqwest::Client::new(),
    }
}

pub struct Env {
    pub sim: DataverseSim,
    /// `http://127.0.0.1:PORT`: the org URL and the Entra authority.
    pub base: String,
    pub http: reqwest::Client,
}

impl Env {
    /// `http://127.0.0.1:PORT/api/data/v9.2/{rest}`.
    pub fn url(&self, rest: &str) -> String {
        format!("{}{API}/{rest}", self.base)
    }

    /// A fresh token from the simulator's token endpoint, through the real Entra client.
    pub async fn token(&self) -> String {
        let entra = EntraConfig::new(
            TENANT,
            CLIENT,
            format!("{}/.default", self.base),
            Credential::client_secret(SECRET.to_owned()),
        )
        .with_authority(self.base.clone());
        TokenClient::new(&entra)
            .unwrap()
            .token()
            .await
            .unwrap()
            .secret()
            .to_owned()
    }

    /// POST `CCaaS_ModifyAgentPresence` with `body`, impersonating `caller` (header, value).
    pub async fn modify(
        &self,
        token: &str,
        caller: Option<(&str, &str)>,
        body: Value,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .post(self.url("CCaaS_ModifyAgentPresence"))
            .bearer_auth(token)
            .json(&body);
        if let Some((h, v)) = caller {
            req = req.header(h, v);
        }
        reply(req.send().await.unwrap()).await
    }

    /// GET with the token, an optional caller header and `Prefer`.
    pub async fn get(
        &self,
        token: &str,
        url: &str,
        caller: Option<(&str, &str)>,
        prefer: Option<&str>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .get(url)
            .bearer_auth(token)
            .header("Accept", "application/json");
        if let Some((h, v)) = caller {
            req = req.header(h, v);
        }
        if let Some(p) = prefer {
            req = req.header("Prefer", p);
        }
        reply(req.send().await.unwrap()).await
    }
}

pub fn modify_body(agent: &str, presence: &str) -> Value {
    serde_json::json!({"ApiVersion": "1.0", "AgentId": agent, "PresenceId": presence})
}

pub async fn reply(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// What one POST to the receiver carried.
#[derive(Debug, Clone)]
pub struct Captured {
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
}

/// A webhook receiver on loopback: records every POST and answers the queued statuses (200
/// once the queue is empty).
#[derive(Clone, Default)]
pub struct Receiver {
    pub got: Arc<Mutex<Vec<Captured>>>,
    pub answers: Arc<Mutex<VecDeque<u16>>>,
}

impl Receiver {
    pub async fn start() -> (Receiver, SocketAddr) {
        let rx = Receiver::default();
        let app = Router::new()
            .route("/hook", post(receive))
            .with_state(rx.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (rx, addr)
    }

    pub fn answer_next(&self, statuses: &[u16]) {
        self.answers.lock().unwrap().extend(statuses);
    }

    pub fn got(&self) -> Vec<Captured> {
        self.got.lock().unwrap().clone()
    }
}

async fn receive(
    State(rx): State<Receiver>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    rx.got.lock().unwrap().push(Captured {
        headers,
        query: uri.query().map(str::to_owned),
        body,
    });
    let status = rx.answers.lock().unwrap().pop_front().unwrap_or(200);
    StatusCode::from_u16(status).unwrap()
}

/// A webhook target at the receiver with a header secret and no retry pause.
pub fn target(addr: SocketAddr, auth: WebhookAuth) -> WebhookTarget {
    let mut t = WebhookTarget::new(format!("http://{addr}/hook"), auth);
    t.retry_delay = Duration::ZERO;
    t.timeout = Duration::from_secs(5);
    t
}

pub fn header_auth() -> WebhookAuth {
    WebhookAuth::HttpHeader {
        name: "x-presync-secret".into(),
        value: "0123456789abcdef0123".into(),
    }
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

/// A simulator whose webhook goes to a fresh receiver, with the start-up Create events already
/// delivered and forgotten; `tweak` adjusts the config first.
pub async fn start_with_webhook(tweak: impl FnOnce(&mut SimConfig)) -> (Env, Receiver) {
    let (rx, addr) = Receiver::start().await;
    let env = start(|c| {
        c.webhook = Some(target(addr, header_auth()));
        tweak(c);
    })
    .await;
    env.sim.wait_deliveries_idle().await;
    rx.got.lock().unwrap().clear();
    (env, rx)
}

/// An attribute of a webhook body's Target, by key (`Null` when it is absent).
pub fn target_attribute(body: &Value, key: &str) -> Value {
    body["InputParameters"][0]["value"]["Attributes"]
        .as_array()
        .and_then(|a| a.iter().find(|kv| kv["key"] == key))
        .map_or(Value::Null, |kv| kv["value"].clone())
}
