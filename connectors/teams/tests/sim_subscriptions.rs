//! Presence subscriptions (graph.md §6.1, §6.2): delegated only, the validation handshake, the
//! 650-user and 60-minute caps, conflicts, renewal, expiry and deletion.
#![allow(clippy::unwrap_used)]

mod sim_support;

use std::time::Duration;

use presync_teams::sim::{Fault, NotificationKind};
use serde_json::json;
use sim_support::*;

#[tokio::test]
async fn app_only_tokens_cannot_subscribe_to_presence() {
    let env = start(|_| {}).await;
    let rx = Receiver::start(Validation::Echo).await;
    let app = env.app_token().await;
    let r = env
        .post(&app, "subscriptions", subscription_body(&env, &rx, &[ANN]))
        .await;
    assert_eq!(r.status, 403);
    assert!(
        r.message()
            .contains("Application permissions are not supported"),
        "{}",
        r.message()
    );
    assert!(rx.got().is_empty(), "refused before any handshake");
    assert!(env.sim.subscriptions().is_empty());
}

#[tokio::test]
async fn the_handshake_passes_with_a_receiver_that_echoes_the_decoded_token() {
    let env = start(|_| {}).await;
    let rx = Receiver::start(Validation::Echo).await;
    let token = env.delegated_token().await;
    let mut body = subscription_body(&env, &rx, &[ANN, BOB]);
    body["lifecycleNotificationUrl"] = json!(rx.lifecycle());
    let r = env.post(&token, "subscriptions", body).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!(r.body["changeType"], "updated");
    assert_eq!(r.body["applicationId"], APP);
    assert_eq!(r.body["creatorId"], SERVICE);
    assert_eq!(r.body["clientState"], "presync-client-state-0123456789");
    assert_eq!(r.body["latestSupportedTlsVersion"], "v1_2");
    assert!(r.body["expirationDateTime"]
        .as_str()
        .unwrap()
        .ends_with("0000Z"));

    let got = rx.got();
    assert_eq!(
        got.len(),
        2,
        "notification and lifecycle URLs are both validated"
    );
    assert_eq!(
        (got[0].path.as_str(), got[1].path.as_str()),
        ("/hook", "/lifecycle")
    );
    for g in &got {
        assert_eq!(g.header("content-type"), Some("text/plain; charset=utf-8"));
        let decoded = g.validation_token().unwrap();
        let raw = g.query.clone().unwrap();
        assert!(decoded.contains(' ') && decoded.contains(':'), "{decoded}");
        assert!(
            !raw.contains(' ') && !raw.contains(':'),
            "sent URL-encoded: {raw}"
        );
    }
    let sent = env.sim.notifications();
    assert!(sent
        .iter()
        .all(|s| s.kind == NotificationKind::Validation && s.accepted));

    let subs = env.sim.subscriptions();
    assert_eq!(subs.len(), 1);
    assert_eq!(subs[0].id, r.body["id"].as_str().unwrap());
    assert_eq!(subs[0].user_ids.len(), 2);
    assert_eq!(
        subs[0].lifecycle_notification_url.as_deref(),
        Some(rx.lifecycle().as_str())
    );
}

#[tokio::test]
async fn the_handshake_fails_with_a_receiver_that_does_not_echo_the_decoded_token() {
    let env = start(|_| {}).await;
    let rx = Receiver::start(Validation::EchoRaw).await;
    let token = env.delegated_token().await;
    for mode in [
        Validation::EchoRaw,
        Validation::EchoJson,
        Validation::Status(202),
        Validation::Status(500),
    ] {
        rx.set_validation(mode);
        let r = env
            .post(
                &token,
                "subscriptions",
                subscription_body(&env, &rx, &[ANN]),
            )
            .await;
        assert_eq!(r.status, 400, "{mode:?}");
        assert!(
            r.message()
                .starts_with("Subscription validation request failed"),
            "{}",
            r.message()
        );
    }
    assert!(env.sim.subscriptions().is_empty());
    assert!(env
        .sim
        .notifications()
        .iter()
        .all(|n| !n.accepted && n.error.is_some()));

    // A lifecycle URL that fails also fails the creation.
    rx.set_validation(Validation::Echo);
    let mut body = subscription_body(&env, &rx, &[ANN]);
    body["lifecycleNotificationUrl"] = json!(format!("http://{}/nowhere", rx.addr));
    assert_eq!(env.post(&token, "subscriptions", body).await.status, 400);
}

#[tokio::test]
async fn an_unreachable_endpoint_or_a_validation_fault_fails_the_handshake() {
    let env = start(|c| c.notification_timeout = Duration::from_millis(200)).await;
    let token = env.delegated_token().await;
    // Nothing listens here.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://{}/hook", listener.local_addr().unwrap());
    drop(listener);
    let mut body = json!({
        "changeType": "updated",
        "notificationUrl": dead,
        "resource": format!("communications/presences/{ANN}"),
        "expirationDateTime": in_minutes(&env, 30),
    });
    assert_eq!(
        env.post(&token, "subscriptions", body.clone()).await.status,
        400
    );

    let rx = Receiver::start(Validation::Echo).await;
    body["notificationUrl"] = json!(rx.hook());
    env.sim.inject(Fault::FailValidation);
    assert_eq!(
        env.post(&token, "subscriptions", body.clone()).await.status,
        400
    );
    assert_eq!(
        env.post(&token, "subscriptions", body).await.status,
        201,
        "the fault was used up"
    );
}

#[tokio::test]
async fn expiration_is_capped_at_sixty_minutes() {
    let env = start(|_| {}).await;
    let rx = Receiver::start(Validation::Echo).await;
    let token = env.delegated_token().await;
    for (minutes, status) in [(61, 400), (0, 400), (-5, 400), (60, 201)] {
        let mut body = subscription_body(&env, &rx, &[ANN]);
        body["expirationDateTime"] = json!(in_minutes(&env, minutes));
        let r = env.post(&token, "subscriptions", body).await;
        assert_eq!(r.status, status, "{minutes} min: {:?}", r.body);
    }
    let mut body = subscription_body(&env, &rx, &[BOB]);
    body["expirationDateTime"] = json!("2024-08-02T07:30:00");
    let delete_first = env.sim.subscriptions()[0].id.clone();
    env.call(
        "DELETE",
        &token,
        &format!("subscriptions/{delete_first}"),
        None,
    )
    .await;
    assert_eq!(
        env.post(&token, "subscriptions", body).await.status,
        400,
        "an offset is required"
    );
}

#[tokio::test]
async fn a_subscription_covers_at_most_650_users() {
    let env = start(|_| {}).await;
    let rx = Receiver::start(Validation::Echo).await;
    let token = env.delegated_token().await;
    let ids: Vec<String> = (0..651)
        .map(|i| format!("cccccccc-0000-4000-8000-{i:012x}"))
        .collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let r = env
        .post(&token, "subscriptions", subscription_body(&env, &rx, &refs))
        .await;
    assert_eq!(r.status, 400);
    assert!(rx.got().is_empty());
    let r = env
        .post(
            &token,
            "subscriptions",
            subscription_body(&env, &rx, &refs[..650]),
        )
        .await;
    assert_eq!(r.status, 201);
    assert_eq!(env.sim.subscriptions()[0].user_ids.len(), 650);
}

#[tokio::test]
async fn malformed_bodies_are_refused() {
    let env = start(|_| {}).await;
    let rx = Receiver::start(Validation::Echo).await;
    let token = env.delegated_token().await;
    let cases = [
        ("changeType", json!("created")),
        ("clientState", json!("x".repeat(129))),
        ("resource", json!("/users/abc/presence")),
        (
            "resource",
            json!(format!("/communications/presences?$filter=id in ({ANN})")),
        ),
        ("notificationUrl", json!("not a url")),
        ("includeResourceData", json!(true)),
        ("unknownProperty", json!(1)),
    ];
    for (field, value) in cases {
        let mut body = subscription_body(&env, &rx, &[ANN]);
        body[field] = value;
        let r = env.post(&token, "subscriptions", body).await;
        assert_eq!(r.status, 400, "{field}");
    }
    let mut body = subscription_body(&env, &rx, &[ANN]);
    body["clientState"] = json!("x".repeat(128));
    assert_eq!(env.post(&token, "subscriptions", body).await.status, 201);
}

#[tokio::test]
async fn a_second_subscription_conflicts() {
    let env = start(|_| {}).await;
    let rx = Receiver::start(Validation::Echo).await;
    let first = subscribe(&env, &rx, &[ANN, BOB]).await;
    let token = env.delegated_token().await;
    let same = env
        .post(
            &token,
            "subscriptions",
            subscription_body(&env, &rx, &[BOB, ANN]),
        )
        .await;
    assert_eq!(same.status, 409);
    assert!(same.message().contains(&first));
    let other = env
        .post(
            &token,
            "subscriptions",
            subscription_body(&env, &rx, &[SERVICE]),
        )
        .await;
    assert_eq!(
        other.status, 409,
        "one presence subscription per delegated user"
    );
}

#[tokio::test]
async fn without_the_one_per_user_rule_only_the_same_resource_conflicts() {
    let env = start(|c| c.one_subscription_per_user = false).await;
    let rx = Receiver::start(Validation::Echo).await;
    subscribe(&env, &rx, &[ANN]).await;
    let token = env.delegated_token().await;
    let mut single = subscription_body(&env, &rx, &[]);
    single["resource"] = json!(format!("communications/presences/{ANN}"));
    assert_eq!(env.post(&token, "subscriptions", single).await.status, 409);
    assert_eq!(
        env.post(
            &token,
            "subscriptions",
            subscription_body(&env, &rx, &[BOB])
        )
        .await
        .status,
        201
    );
}

#[tokio::test]
async fn patch_renews_within_sixty_minutes() {
    let env = start(|_| {}).await;
    let rx = Receiver::start(Validation::Echo).await;
    let id = subscribe(&env, &rx, &[ANN]).await;
    let token = env.delegated_token().await;
    let path = format!("subscriptions/{id}");
    env.advance(30 * MINUTE);
    let r = env
        .call(
            "PATCH",
            &token,
            &path,
            Some(json!({"expirationDateTime": in_minutes(&env, 60)})),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["id"], id.as_str());
    assert_eq!(env.sim.subscriptions()[0].expires_at, T0 + 90 * MINUTE);
    let too_far = env
        .call(
            "PATCH",
            &token,
            &path,
            Some(json!({"expirationDateTime": in_minutes(&env, 61)})),
        )
        .await;
    assert_eq!(too_far.status, 400);
    let lifecycle = env
        .call(
            "PATCH",
            &token,
            &path,
            Some(json!({"lifecycleNotificationUrl": rx.lifecycle()})),
        )
        .await;
    assert_eq!(lifecycle.status, 400, "cannot be added later");
    let app = env.app_token().await;
    let by_app = env
        .call(
            "PATCH",
            &app,
            &path,
            Some(json!({"expirationDateTime": in_minutes(&env, 30)})),
        )
        .await;
    assert_eq!(by_app.status, 403);
    assert_eq!(env.get(&app, &path).await.status, 200);
}

#[tokio::test]
async fn an_expired_subscription_is_gone() {
    let env = start(|c| c.token_lifetime = Duration::from_secs(6 * 3600)).await;
    let rx = Receiver::start(Validation::Echo).await;
    let id = subscribe(&env, &rx, &[ANN]).await;
    let token = env.delegated_token().await;
    env.advance(55 * MINUTE);
    assert!(env.sim.subscriptions().is_empty());
    let path = format!("subscriptions/{id}");
    let patch = env
        .call(
            "PATCH",
            &token,
            &path,
            Some(json!({"expirationDateTime": in_minutes(&env, 30)})),
        )
        .await;
    assert_eq!(patch.status, 404);
    assert_eq!(patch.code(), "ResourceNotFound");
    assert_eq!(env.call("DELETE", &token, &path, None).await.status, 404);
    // Nothing is sent for a user whose subscription expired.
    env.sim.person_signs_in(ANN);
    env.sim.wait_notifications_idle().await;
    assert!(rx.got().is_empty());
    // And a new one may be created.
    assert_eq!(
        env.post(
            &token,
            "subscriptions",
            subscription_body(&env, &rx, &[ANN])
        )
        .await
        .status,
        201
    );
}

#[tokio::test]
async fn delete_answers_204_then_404() {
    let env = start(|_| {}).await;
    let rx = Receiver::start(Validation::Echo).await;
    let id = subscribe(&env, &rx, &[ANN]).await;
    let token = env.delegated_token().await;
    let path = format!("subscriptions/{id}");
    let r = env.call("DELETE", &token, &path, None).await;
    assert_eq!((r.status, &r.body), (204, &serde_json::Value::Null));
    assert_eq!(env.call("DELETE", &token, &path, None).await.status, 404);
    assert_eq!(
        env.get(&token, "subscriptions").await.body["value"],
        json!([])
    );
}
