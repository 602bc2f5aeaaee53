//! `presync teams login` (the device-code flow) against the Graph simulator's Entra endpoints on
//! loopback. Tokio time is paused and the simulator's clock follows it, so polling every 5 s and
//! codes that expire after minutes take no real time.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use presync_engine::clock::{Clock, ManualClock};
use presync_engine::Millis;
use presync_teams::auth::DelegatedCredentials;
use presync_teams::client::Credentials;
use presync_teams::login::{DeviceLogin, LoginError, DEFAULT_SCOPE};
use presync_teams::sim::{GraphSim, GraphSimConfig, TokenKind};
use serde_json::Value;

const TENANT: &str = "5f1c2d3e-4b5a-4c6d-8e7f-90a1b2c3d4e5";
const APP: &str = "11111111-2222-3333-4444-555555555555";
const SECRET: &str = "graph-sim-secret-0123456789";
const SERVICE: &str = "99999999-0000-4000-8000-000000000001";
const REFRESH: &str = "initial-refresh-token";
const DEVICE_CODE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";
/// 2024-08-02T07:00:00Z.
const T0: Millis = 1_722_582_000_000;

/// The simulator's clock, following Tokio's (paused) clock.
#[derive(Debug)]
struct TokioClock(tokio::time::Instant);

impl Clock for TokioClock {
    fn now(&self) -> Millis {
        T0 + Millis::try_from(self.0.elapsed().as_millis()).unwrap()
    }
}

struct Env {
    sim: GraphSim,
    base: String,
    login: DeviceLogin,
    dir: tempfile::TempDir,
}

impl Env {
    fn store(&self) -> std::path::PathBuf {
        self.dir.path().join("secrets").join("teams-refresh-token")
    }
}

async fn env_on(clock: Arc<dyn Clock>, tweak: impl FnOnce(&mut GraphSimConfig)) -> Env {
    let mut cfg = GraphSimConfig::new(TENANT, APP, SECRET, SERVICE, REFRESH);
    cfg.auto_tick = false;
    tweak(&mut cfg);
    let sim = GraphSim::new(cfg, clock);
    sim.add_user(SERVICE);
    let base = format!("http://{}", sim.spawn().await.unwrap());
    let login = DeviceLogin::new(base.clone(), TENANT, APP).unwrap();
    Env {
        sim,
        base,
        login,
        dir: tempfile::tempdir().unwrap(),
    }
}

async fn env(tweak: impl FnOnce(&mut GraphSimConfig)) -> Env {
    env_on(Arc::new(TokioClock(tokio::time::Instant::now())), tweak).await
}

/// Device-code polls the simulator answered so far, by status.
fn polls(sim: &GraphSim) -> Vec<u16> {
    sim.token_requests()
        .into_iter()
        .filter(|r| r.grant_type == DEVICE_CODE_GRANT)
        .map(|r| r.status)
        .collect()
}

fn assert_no_secrets(shown: &str) {
    for secret in ["sim.dc.", "sim.rt.", "sim.graph.", REFRESH, SECRET] {
        assert!(!shown.contains(secret), "{secret} shown in: {shown}");
    }
}

#[tokio::test(start_paused = true)]
async fn approved_login_stores_a_refresh_token_that_delegated_credentials_redeem() {
    let env = env(|_| {}).await;
    let code = env.login.start().await.unwrap();
    assert!(!code.user_code.is_empty() && code.user_code.len() <= 12);
    assert_eq!(code.verification_uri, "https://microsoft.com/devicelogin");
    assert_eq!(code.interval, 5);
    assert_eq!(code.expires_in, 900);
    assert!(code.message.contains(&code.user_code), "{}", code.message);
    assert_no_secrets(&format!("{code:?}"));

    let store = env.store();
    let waiting = tokio::spawn({
        let (login, code, store) = (env.login.clone(), code.clone(), store.clone());
        async move { login.wait(&code, &store).await }
    });
    tokio::time::sleep(Duration::from_secs(16)).await;
    assert!(!waiting.is_finished(), "still waiting while pending");
    assert_eq!(polls(&env.sim), [400, 400, 400], "pending, every 5 s");
    assert!(!store.exists());

    assert!(env.sim.approve_device_code(&code.user_code));
    waiting.await.unwrap().unwrap();
    assert_eq!(polls(&env.sim), [400, 400, 400, 200]);

    let stored = std::fs::read_to_string(&store).unwrap();
    assert_eq!(Some(stored), env.sim.current_refresh_token());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&store).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let leftovers: Vec<_> = std::fs::read_dir(store.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "no temporary file left: {leftovers:?}");

    // The running connector redeems it for a delegated token.
    let delegated = DelegatedCredentials::new(
        env.sim.token_url(&env.base),
        APP,
        DEFAULT_SCOPE,
        store.clone(),
    );
    let token = delegated.bearer().await.unwrap();
    let last = env.sim.token_requests().pop().unwrap();
    assert_eq!(
        (last.grant_type.as_str(), last.status),
        ("refresh_token", 200)
    );
    let me = reqwest::Client::new()
        .get(format!("{}/v1.0/me/presence", env.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), 200);
    assert_eq!(
        env.sim.requests().last().unwrap().token,
        Some(TokenKind::Delegated)
    );
}

#[tokio::test(start_paused = true)]
async fn a_declined_login_says_so_and_stores_nothing() {
    let env = env(|_| {}).await;
    let code = env.login.start().await.unwrap();
    let store = env.store();
    let waiting = tokio::spawn({
        let (login, code, store) = (env.login.clone(), code.clone(), store.clone());
        async move { login.wait(&code, &store).await }
    });
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(env.sim.decline_device_code(&code.user_code));
    let err = waiting.await.unwrap().unwrap_err();
    assert!(matches!(err, LoginError::Declined { .. }), "{err:?}");
    let shown = err.to_string();
    assert!(shown.contains("declined") && shown.contains(&code.user_code));
    assert!(shown.contains("presync teams login"), "{shown}");
    assert_no_secrets(&shown);
    assert_no_secrets(&format!("{err:?}"));
    assert!(!store.exists());
    assert!(
        !env.sim.approve_device_code(&code.user_code),
        "no longer pending"
    );
}

#[tokio::test(start_paused = true)]
async fn an_expired_code_says_so_and_stores_nothing() {
    let env = env(|c| c.device_code_lifetime = Duration::from_secs(60)).await;
    let code = env.login.start().await.unwrap();
    assert_eq!(code.expires_in, 60);
    let err = env.login.wait(&code, &env.store()).await.unwrap_err();
    assert!(matches!(err, LoginError::Expired { .. }), "{err:?}");
    let shown = err.to_string();
    assert!(shown.contains("expired") && shown.contains(&code.user_code));
    assert!(shown.contains("presync teams login"), "{shown}");
    assert_no_secrets(&shown);
    assert_no_secrets(&format!("{err:?}"));
    assert!(!env.store().exists());
    // The simulator said `expired_token` at the 60 s poll.
    assert_eq!(polls(&env.sim).len(), 12);
}

#[tokio::test(start_paused = true)]
async fn an_unknown_client_is_refused_with_advice() {
    let env = env(|_| {}).await;
    let other = DeviceLogin::new(
        env.base.clone(),
        TENANT,
        "00000000-0000-0000-0000-000000000000",
    )
    .unwrap();
    let err = other.start().await.unwrap_err();
    assert!(
        matches!(err, LoginError::Refused { status: 400, .. }),
        "{err:?}"
    );
    let shown = err.to_string();
    assert!(shown.contains("unauthorized_client"), "{shown}");
    assert!(shown.contains("AADSTS700016"), "{shown}");
    assert!(!shown.contains("Trace ID"), "{shown}");
}

// The simulator's endpoints, polled by hand on a manual clock.

async fn sim_poll(env: &Env, device_code: &str) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(env.sim.token_url(&env.base))
        .form(&[
            ("grant_type", DEVICE_CODE_GRANT),
            ("client_id", APP),
            ("device_code", device_code),
        ])
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

async fn sim_start(env: &Env) -> Value {
    let r = reqwest::Client::new()
        .post(format!("{}/{TENANT}/oauth2/v2.0/devicecode", env.base))
        .form(&[("client_id", APP), ("scope", DEFAULT_SCOPE)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

#[tokio::test]
async fn sim_answers_pending_then_slow_down_when_polled_faster_than_the_interval() {
    let clock = Arc::new(ManualClock::new(T0));
    let env = env_on(clock.clone(), |c| c.device_code_interval_secs = 2).await;
    let started = sim_start(&env).await;
    assert_eq!(started["interval"], 2);
    let device_code = started["device_code"].as_str().unwrap();

    let (status, body) = sim_poll(&env, device_code).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"], "authorization_pending");
    assert_eq!(body["error_codes"][0], 70016);
    assert!(body["error_description"]
        .as_str()
        .unwrap()
        .starts_with("AADSTS70016: "));

    clock.advance(1_000);
    assert_eq!(sim_poll(&env, device_code).await.1["error"], "slow_down");
    // The interval is now 7 s (RFC 8628 §3.5), counted from the last poll.
    clock.advance(6_000);
    assert_eq!(sim_poll(&env, device_code).await.1["error"], "slow_down");
    clock.advance(12_000);
    assert_eq!(
        sim_poll(&env, device_code).await.1["error"],
        "authorization_pending"
    );
}

#[tokio::test]
async fn sim_device_code_is_single_use_and_expires_on_its_clock() {
    let clock = Arc::new(ManualClock::new(T0));
    let env = env_on(clock.clone(), |_| {}).await;
    let first = sim_start(&env).await;
    let first_code = first["device_code"].as_str().unwrap();
    assert!(env
        .sim
        .approve_device_code(first["user_code"].as_str().unwrap()));
    let (status, body) = sim_poll(&env, first_code).await;
    assert_eq!(status, 200);
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["scope"], DEFAULT_SCOPE);
    assert_eq!(
        body["refresh_token"].as_str(),
        env.sim.current_refresh_token().as_deref()
    );
    clock.advance(5_000);
    let (status, body) = sim_poll(&env, first_code).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("bad_verification_code"))
    );

    let second = sim_start(&env).await;
    clock.advance(900_000);
    let (status, body) = sim_poll(&env, second["device_code"].as_str().unwrap()).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("expired_token"))
    );
    assert_eq!(body["error_codes"][0], 70019);
}
