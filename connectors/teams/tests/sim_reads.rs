//! Presence reads (graph.md §2.1), the 650-id limit, throttling with a decimal `Retry-After`
//! (§7.1) and injected API faults.
#![allow(clippy::unwrap_used)]

mod sim_support;

use std::time::{Duration, Instant};

use presync_teams::sim::Fault;
use serde_json::json;
use sim_support::*;

fn ids(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("bbbbbbbb-0000-4000-8000-{i:012x}"))
        .collect()
}

#[tokio::test]
async fn a_presence_read_has_the_documented_shape() {
    let env = start(|_| {}).await;
    let token = env.app_token().await;
    env.sim.person_joins_meeting(ANN);
    for path in [
        format!("users/{ANN}/presence"),
        format!("communications/presences/{}", ANN.to_uppercase()),
    ] {
        let r = env.get(&token, &path).await;
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.body["id"], ANN);
        assert_eq!(r.body["availability"], "InAMeeting");
        assert_eq!(r.body["activity"], "Busy");
        assert!(r.body["sequenceNumber"].is_string());
        assert_eq!(
            r.body["outOfOfficeSettings"],
            json!({"message": null, "isOutOfOffice": false})
        );
        assert!(r
            .header("content-type")
            .unwrap()
            .starts_with("application/json"));
    }
    assert_eq!(
        env.get(&token, "users/not-a-guid/presence").await.status,
        400
    );
    assert_eq!(
        env.get(
            &token,
            "users/bbbbbbbb-0000-4000-8000-000000000000/presence"
        )
        .await
        .status,
        404
    );
}

#[tokio::test]
async fn me_is_only_valid_with_a_delegated_token() {
    let env = start(|_| {}).await;
    let app = env.app_token().await;
    let r = env.get(&app, "me/presence").await;
    assert_eq!(r.status, 400);
    assert!(r.message().contains("delegated"));
}

#[tokio::test]
async fn get_presences_by_user_id_takes_650_ids_and_refuses_651() {
    let env = start(|_| {}).await;
    let token = env.app_token().await;
    env.sim.person_signs_in(ANN);
    let mut many = ids(649);
    many.push(ANN.to_owned());
    let r = env
        .post(
            &token,
            "communications/getPresencesByUserId",
            json!({ "ids": many }),
        )
        .await;
    assert_eq!(r.status, 200);
    let value = r.body["value"].as_array().unwrap();
    assert_eq!(value.len(), 650);
    let ann = value.iter().find(|p| p["id"] == ANN).unwrap();
    assert_eq!(
        (ann["availability"].as_str(), ann["activity"].as_str()),
        (Some("Available"), Some("Available"))
    );
    assert_eq!(value[0]["availability"], "PresenceUnknown", "unknown users");

    let too_many = env
        .post(
            &token,
            "communications/getPresencesByUserId",
            json!({ "ids": ids(651) }),
        )
        .await;
    assert_eq!(too_many.status, 400);
    assert_eq!(too_many.code(), "BadRequest");
    for bad in [
        json!({}),
        json!({"ids": []}),
        json!({"ids": ["ann@contoso.com"]}),
        json!({"ids": [ANN], "extra": 1}),
    ] {
        let r = env
            .post(&token, "communications/getPresencesByUserId", bad.clone())
            .await;
        assert_eq!(r.status, 400, "{bad}");
    }
    let delegated = env.delegated_token().await;
    let r = env
        .post(
            &delegated,
            "communications/microsoft.graph.getPresencesByUserId",
            json!({"ids": [BOB]}),
        )
        .await;
    assert_eq!(r.status, 200, "delegated Presence.Read.All reads too");
    assert_eq!(r.body["value"][0]["availability"], "Offline");
}

#[tokio::test]
async fn the_limit_answers_429_with_a_decimal_retry_after() {
    let env = start(|c| c.rate_limit = (3, Duration::from_secs(30))).await;
    let token = env.app_token().await;
    let path = format!("users/{ANN}/presence");
    for _ in 0..3 {
        assert_eq!(env.get(&token, &path).await.status, 200);
        env.clock.advance(1_500);
    }
    let r = env.get(&token, &path).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after"), Some("25.5"));
    assert_eq!(r.code(), "TooManyRequests");
    assert_eq!(r.message(), "Please retry again later.");
    let inner = &r.body["error"]["innerError"];
    assert_eq!(
        (inner["code"].as_str(), inner["status"].as_str()),
        (Some("429"), Some("429"))
    );
    assert!(inner["date"].is_string() && inner["request-id"].is_string());

    // Requests made while throttled count: retrying early keeps the client throttled.
    env.clock.advance(25_500);
    assert_eq!(env.get(&token, &path).await.status, 429);
    env.clock.advance(30_000);
    assert_eq!(env.get(&token, &path).await.status, 200);
    // Delegated tokens are the same application: same window.
    let delegated = env.delegated_token().await;
    for _ in 0..2 {
        env.get(&delegated, &path).await;
    }
    assert_eq!(env.get(&delegated, &path).await.status, 429);
}

#[tokio::test]
async fn injected_faults_hit_the_next_request() {
    let env = start(|_| {}).await;
    let token = env.app_token().await;
    let path = format!("users/{ANN}/presence");
    env.sim.inject(Fault::RateLimited { retry_after: 2.5 });
    let r = env.get(&token, &path).await;
    assert_eq!((r.status, r.header("retry-after")), (429, Some("2.5")));
    env.sim.inject(Fault::ServerError(503));
    let r = env.get(&token, &path).await;
    assert_eq!((r.status, r.code()), (503, "serviceNotAvailable"));
    assert_eq!(env.get(&token, &path).await.status, 200);

    env.sim.inject(Fault::Slow(Duration::from_millis(300)));
    let started = Instant::now();
    let slow = env.set_presence(&token, ANN, "Busy", "InACall", None).await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(slow.status, 200);
    assert_eq!(
        env.presence(ANN),
        pair("InACall", "Busy"),
        "the write happened"
    );

    let recorded = env.sim.requests();
    let last = recorded.last().unwrap();
    assert_eq!(last.path, format!("/v1.0/users/{ANN}/presence/setPresence"));
    assert_eq!(last.body.as_ref().unwrap()["activity"], "InACall");
    assert_eq!(last.status, 200);
}
