//! Service protection and injected API faults on a loopback port: the per-caller request
//! limit (429 + Retry-After), injected 429/5xx, slow answers.
#![allow(clippy::unwrap_used)]

mod sim_support;

use std::time::{Duration, Instant};

use presync_dataverse::mapping::builtin;
use presync_dataverse::sim::Fault;
use sim_support::*;

#[tokio::test]
async fn over_the_limit_a_caller_gets_429_with_retry_after_and_others_do_not() {
    let env = start(|c| c.rate_limit = (3, Duration::from_secs(300))).await;
    let token = env.token().await;
    let url = env.url("msdyn_presences");
    for _ in 0..3 {
        assert_eq!(env.get(&token, &url, None, None).await.0, 200);
    }
    let r = env.http.get(&url).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status(), 429);
    let retry_after: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((299..=300).contains(&retry_after), "{retry_after}");
    let (_, body) = reply(r).await;
    assert_eq!(body["error"]["code"], "0x80072322");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("limit of 3"));

    // Impersonated calls count against the impersonated user, not the application user.
    let get_presence = env.url("CCaaS_GetPresence(ApiVersion=@p1)?@p1='1.0'");
    assert_eq!(
        env.get(&token, &get_presence, Some(("MSCRMCallerID", ANN)), None)
            .await
            .0,
        200
    );
    assert_eq!(
        env.get(&token, &get_presence, Some(("MSCRMCallerID", BOB)), None)
            .await
            .0,
        200
    );
}

#[tokio::test]
async fn injected_faults_hit_the_next_request_once() {
    let env = start(|_| {}).await;
    let token = env.token().await;
    let url = env.url("msdyn_presences");

    env.sim.inject(Fault::RateLimited {
        retry_after_secs: 7,
    });
    let r = env.http.get(&url).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "7");

    for code in [500, 502, 503, 504] {
        env.sim.inject(Fault::ServerError(code));
        let (status, body) = env.get(&token, &url, None, None).await;
        assert_eq!(status, code);
        assert!(
            body["error"]["code"].as_str().unwrap().starts_with("0x"),
            "{body}"
        );
    }
    assert_eq!(
        env.get(&token, &url, None, None).await.0,
        200,
        "each fault is used once"
    );
}

#[tokio::test]
async fn a_failed_write_changes_nothing_but_a_slow_one_does() {
    let env = start(|_| {}).await;
    let token = env.token().await;
    env.sim.inject(Fault::ServerError(503));
    assert_eq!(
        env.modify(&token, None, modify_body(ANN, builtin::BUSY))
            .await
            .0,
        503
    );
    assert_eq!(env.sim.presence(ANN).as_deref(), Some(builtin::AVAILABLE));

    env.sim.inject(Fault::Slow(Duration::from_millis(300)));
    let started = Instant::now();
    let r = env
        .http
        .post(env.url("CCaaS_ModifyAgentPresence"))
        .bearer_auth(&token)
        .json(&modify_body(ANN, builtin::BUSY))
        .timeout(Duration::from_millis(100))
        .send()
        .await;
    assert!(r.unwrap_err().is_timeout());
    eventually("the slow write to land", || {
        env.sim.presence(ANN).as_deref() == Some(builtin::BUSY)
    })
    .await;
    assert!(started.elapsed() < Duration::from_secs(5));
}
