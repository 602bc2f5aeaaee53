//! Change and lifecycle notifications (graph.md §6.3, §6.4): sent only when the aggregate
//! changes, in the basic shape without availability, rich and encrypted when asked for; retries,
//! dropped and duplicated deliveries.
#![allow(clippy::unwrap_used)]

mod sim_support;

use base64::Engine as _;
use presync_teams::crypto::DecryptionKeys;
use presync_teams::notifications::EncryptedContent;
use presync_teams::sim::{Fault, NotificationKind};
use serde_json::{json, Value};
use sim_support::*;

const CERT_PEM: &str = include_str!("../../../fixtures/entra/test-only-cert.pem");
const KEY_PEM: &str = include_str!("../../../fixtures/entra/test-only-key.pem");

fn keys(value: &Value) -> Vec<String> {
    let mut k: Vec<String> = value.as_object().unwrap().keys().cloned().collect();
    k.sort();
    k
}

#[tokio::test]
async fn a_change_of_the_aggregate_sends_a_basic_notification_without_availability() {
    let env = start(|_| {}).await;
    let rx = Receiver::start(Validation::Echo).await;
    let id = subscribe(&env, &rx, &[ANN]).await;
    env.sim.person_signs_in(ANN);
    env.sim.person_signs_in(BOB); // not subscribed
    env.sim.wait_notifications_idle().await;

    let got = rx.got();
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].header("content-type"),
        Some("application/json; charset=utf-8")
    );
    let body = got[0].json();
    assert_eq!(
        keys(&body),
        ["value"],
        "no validationTokens in a basic notification"
    );
    let item = &body["value"][0];
    assert_eq!(
        keys(item),
        [
            "changeType",
            "clientState",
            "organizationId",
            "resource",
            "resourceData",
            "subscriptionExpirationDateTime",
            "subscriptionId",
            "tenantId"
        ]
    );
    assert_eq!(item["subscriptionId"], id.as_str());
    assert_eq!(item["clientState"], "presync-client-state-0123456789");
    assert_eq!(item["changeType"], "updated");
    assert_eq!(item["tenantId"], TENANT);
    assert_eq!(item["organizationId"], TENANT);
    assert_eq!(item["resource"], format!("communications/presences/{ANN}"));
    assert_eq!(
        item["subscriptionExpirationDateTime"],
        "2024-08-02T07:55:00.0000000Z"
    );
    assert_eq!(
        item["resourceData"],
        json!({"@odata.id": format!("users/{ANN}/presence"), "@odata.type": "#microsoft.graph.presence", "id": ANN})
    );

    let sent = env.sim.notifications();
    let change = sent
        .iter()
        .find(|s| s.kind == NotificationKind::Change)
        .unwrap();
    assert_eq!((change.seq, change.attempt, change.accepted), (1, 1, true));
    assert_eq!(change.user_id.as_deref(), Some(ANN));
    assert_eq!(change.json(), body);
}

#[tokio::test]
async fn nothing_is_sent_when_the_aggregate_does_not_change() {
    let env = start(|_| {}).await;
    let rx = Receiver::start(Validation::Echo).await;
    subscribe(&env, &rx, &[ANN]).await;
    let token = env.app_token().await;
    env.sim.person_signs_in(ANN);
    env.sim
        .person_sets_preferred(ANN, "DoNotDisturb", "DoNotDisturb");
    env.sim.wait_notifications_idle().await;
    assert_eq!(rx.notifications().len(), 2);

    // presync's session changes, but the person's DND still shows.
    env.set_presence(&token, ANN, "Available", "Available", Some("PT1H"))
        .await;
    env.set_presence(&token, ANN, "Busy", "InACall", Some("PT1H"))
        .await;
    env.sim.person_joins_meeting(ANN);
    env.advance(MINUTE);
    env.sim.wait_notifications_idle().await;
    assert_eq!(rx.notifications().len(), 2);

    env.sim.person_clears_preferred(ANN);
    env.sim.wait_notifications_idle().await;
    assert_eq!(rx.notifications().len(), 3, "DND -> Busy is a change");
}

#[tokio::test]
async fn fade_and_expiry_are_notified_on_tick() {
    let env = start(|_| {}).await;
    let rx = Receiver::start(Validation::Echo).await;
    subscribe(&env, &rx, &[ANN]).await;
    let token = env.app_token().await;
    env.set_presence(&token, ANN, "Available", "Available", Some("PT15M"))
        .await;
    for _ in 0..3 {
        env.advance(5 * MINUTE);
    }
    env.sim.wait_notifications_idle().await;
    let sent: Vec<_> = env
        .sim
        .notifications()
        .into_iter()
        .filter(|n| n.kind == NotificationKind::Change)
        .collect();
    assert_eq!(sent.len(), 4, "Available, AvailableInactive, Away, Offline");
    assert_eq!(rx.notifications().len(), 4);
}

#[tokio::test]
async fn rich_notifications_carry_the_presence_encrypted_for_the_certificate() {
    let env = start(|_| {}).await;
    let rx = Receiver::start(Validation::Echo).await;
    let token = env.delegated_token().await;
    let der: String = CERT_PEM
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    let mut body = subscription_body(&env, &rx, &[ANN]);
    body["includeResourceData"] = json!(true);
    body["encryptionCertificate"] = json!(der);
    body["encryptionCertificateId"] = json!("presync-cert-1");
    let r = env.post(&token, "subscriptions", body).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    rx.clear();

    env.sim.person_joins_meeting(ANN);
    env.sim.wait_notifications_idle().await;
    let got = rx.notifications();
    assert_eq!(got.len(), 1);
    let tokens = got[0]["validationTokens"].as_array().unwrap();
    assert_eq!(tokens.len(), 1);
    let claims = tokens[0].as_str().unwrap().split('.').nth(1).unwrap();
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(claims)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(claims["aud"], APP);
    assert_eq!(claims["azp"], "0bf30f3b-4a52-48df-9a82-234910c4a086");

    let item = &got[0]["value"][0];
    assert!(item["resourceData"].get("availability").is_none());
    let enc = &item["encryptedContent"];
    let s = |k: &str| enc[k].as_str().unwrap().to_owned();
    assert_eq!(s("encryptionCertificateId"), "presync-cert-1");
    assert_eq!(s("encryptionCertificateThumbprint").len(), 40);
    let content = EncryptedContent {
        data: s("data"),
        data_key: s("dataKey"),
        data_signature: s("dataSignature"),
        encryption_certificate_id: s("encryptionCertificateId"),
        encryption_certificate_thumbprint: s("encryptionCertificateThumbprint"),
    };
    let plain = DecryptionKeys::from_pem("presync-cert-1", KEY_PEM)
        .unwrap()
        .decrypt(&content)
        .unwrap();
    assert_eq!(plain["id"], ANN);
    assert_eq!(plain["availability"], "InAMeeting");
    assert_eq!(plain["activity"], "Busy");
    assert_eq!(
        plain["sequenceNumber"].as_str(),
        env.sim.sequence_number(ANN).as_deref()
    );
    assert_eq!(plain["@odata.type"], "#microsoft.graph.presence");
}

#[tokio::test]
async fn a_failed_delivery_is_retried_and_every_attempt_recorded() {
    let env = start(|_| {}).await;
    let rx = Receiver::start(Validation::Echo).await;
    subscribe(&env, &rx, &[ANN]).await;
    rx.answer_next(&[500, 503]);
    env.sim.person_signs_in(ANN);
    env.sim.wait_notifications_idle().await;
    let attempts: Vec<_> = env
        .sim
        .notifications()
        .into_iter()
        .filter(|n| n.kind == NotificationKind::Change)
        .map(|n| (n.attempt, n.status, n.accepted))
        .collect();
    assert_eq!(
        attempts,
        [
            (1, Some(500), false),
            (2, Some(503), false),
            (3, Some(202), true)
        ]
    );
    assert_eq!(rx.notifications().len(), 3);

    // With retries used up, the notification is lost.
    rx.answer_next(&[500, 500, 500]);
    env.sim.person_signs_out(ANN);
    env.sim.wait_notifications_idle().await;
    let last = env.sim.notifications().pop().unwrap();
    assert_eq!((last.attempt, last.accepted), (3, false));
}

#[tokio::test]
async fn dropped_and_duplicated_notifications() {
    let env = start(|_| {}).await;
    let rx = Receiver::start(Validation::Echo).await;
    subscribe(&env, &rx, &[ANN]).await;
    env.sim.inject(Fault::DropNotifications(1));
    env.sim.inject(Fault::DuplicateNotifications(1));
    env.sim.person_signs_in(ANN); // dropped
    env.sim.person_joins_meeting(ANN); // sent twice
    env.sim.person_leaves_meeting(ANN); // sent once
    env.sim.wait_notifications_idle().await;
    assert_eq!(env.sim.dropped_notifications(), [1]);
    let got = rx.notifications();
    assert_eq!(got.len(), 3);
    assert_eq!(got[0], got[1], "the duplicate is identical");
    let changes: Vec<_> = env
        .sim
        .notifications()
        .into_iter()
        .filter(|n| n.kind == NotificationKind::Change)
        .map(|n| (n.seq, n.duplicate))
        .collect();
    assert_eq!(changes, [(2, false), (2, true), (3, false)]);
    assert_eq!(env.presence(ANN), pair("Available", "Available"));
}

#[tokio::test]
async fn reordered_notifications_leave_newest_first() {
    let env = start(|_| {}).await;
    let rx = Receiver::start(Validation::Echo).await;
    subscribe(&env, &rx, &[ANN]).await;
    env.sim.inject(Fault::ReorderNotifications(1));
    // Three changes queued together (the delivery task runs only when this test awaits).
    env.sim.person_signs_in(ANN);
    env.sim.person_joins_meeting(ANN);
    env.sim.person_leaves_meeting(ANN);
    env.sim.wait_notifications_idle().await;
    let order: Vec<u64> = env
        .sim
        .notifications()
        .into_iter()
        .filter(|n| n.kind == NotificationKind::Change)
        .map(|n| n.seq)
        .collect();
    let first = order[0];
    assert_eq!(order.len(), 3);
    assert!(order[1] < first && order[2] < first, "{order:?}");
    assert!(order[1] < order[2], "only one was reordered: {order:?}");
}

#[tokio::test]
async fn lifecycle_notifications_go_to_the_lifecycle_url() {
    let env = start(|_| {}).await;
    let rx = Receiver::start(Validation::Echo).await;
    let token = env.delegated_token().await;
    let mut body = subscription_body(&env, &rx, &[ANN]);
    body["lifecycleNotificationUrl"] = json!(rx.lifecycle());
    let r = env.post(&token, "subscriptions", body).await;
    let id = r.body["id"].as_str().unwrap().to_owned();
    rx.clear();

    assert!(env.sim.send_lifecycle(&id, "reauthorizationRequired"));
    assert!(!env
        .sim
        .send_lifecycle("no-such-subscription", "reauthorizationRequired"));
    env.sim.wait_notifications_idle().await;
    let got = rx.got();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].path, "/lifecycle");
    assert_eq!(
        got[0].json(),
        json!({"value": [{
            "subscriptionId": id,
            "subscriptionExpirationDateTime": "2024-08-02T07:55:00.0000000Z",
            "tenantId": TENANT,
            "clientState": "presync-client-state-0123456789",
            "lifecycleEvent": "reauthorizationRequired",
        }]})
    );

    assert!(env.sim.send_lifecycle(&id, "subscriptionRemoved"));
    assert!(env.sim.subscriptions().is_empty());
}

#[tokio::test]
async fn without_a_lifecycle_url_lifecycle_events_go_to_the_notification_url() {
    let env = start(|_| {}).await;
    let rx = Receiver::start(Validation::Echo).await;
    let id = subscribe(&env, &rx, &[ANN]).await;
    env.sim.send_lifecycle(&id, "reauthorizationRequired");
    env.sim.wait_notifications_idle().await;
    assert_eq!(rx.got()[0].path, "/hook");
}
