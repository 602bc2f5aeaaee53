//! The two Graph value sets (graph.md, "Corrections of 2026-12-07"), per tenant and per user,
//! through reads; `sequenceNumber`; the default throttling limit.
#![allow(clippy::unwrap_used)]

mod sim_support;

use std::time::Duration;

use presync_teams::sim::{GraphSimConfig, ValueSchema};
use serde_json::json;
use sim_support::*;

#[tokio::test]
async fn a_meeting_reads_as_in_a_meeting_busy_in_2025_values_through_every_read() {
    let env = start(|_| {}).await;
    let token = env.app_token().await;
    env.sim.person_joins_meeting(ANN);
    let want = pair("InAMeeting", "Busy");
    assert_eq!(pair_of(&env.read(&token, ANN).await), want);
    let other_path = env
        .get(&token, &format!("communications/presences/{ANN}"))
        .await;
    assert_eq!(pair_of(&other_path.body), want);
    assert_eq!(pair_of(&env.read_many(&token, &[ANN]).await[0]), want);
    assert_eq!(env.presence(ANN), want);
    assert_eq!(env.sim.presence_internal(ANN), pair("Busy", "InAMeeting"));
}

#[tokio::test]
async fn a_meeting_reads_as_busy_in_a_meeting_in_legacy_values_through_every_read() {
    let env = start(|c| c.schema = ValueSchema::Legacy).await;
    let token = env.app_token().await;
    env.sim.person_joins_meeting(ANN);
    let want = pair("Busy", "InAMeeting");
    assert_eq!(pair_of(&env.read(&token, ANN).await), want);
    assert_eq!(pair_of(&env.read_many(&token, &[ANN]).await[0]), want);
    assert_eq!(env.presence(ANN), want);
}

#[tokio::test]
async fn a_per_user_schema_mix_answers_each_user_in_its_own_set() {
    let env = start(|_| {}).await;
    let token = env.app_token().await;
    assert!(env.sim.set_user_schema(BOB, ValueSchema::Legacy));
    assert!(!env
        .sim
        .set_user_schema("bbbbbbbb-0000-4000-8000-000000000000", ValueSchema::Legacy));
    for u in [ANN, BOB] {
        env.sim.person_joins_meeting(u);
        env.sim.person_starts_presenting(u);
    }
    let both = env.read_many(&token, &[ANN, BOB]).await;
    assert_eq!(pair_of(&both[0]), pair("Presenting", "DoNotDisturb"));
    assert_eq!(pair_of(&both[1]), pair("DoNotDisturb", "Presenting"));
    assert_eq!(env.sim.user_schema(ANN), Some(ValueSchema::V2025));
    assert_eq!(env.sim.user_schema(BOB), Some(ValueSchema::Legacy));
}

#[tokio::test]
async fn a_mixed_tenant_answers_every_second_user_added_in_legacy_values() {
    // start() adds Ann, Bob, then the service account.
    let env = start(|c| c.schema = ValueSchema::Mixed).await;
    assert_eq!(env.sim.user_schema(ANN), Some(ValueSchema::V2025));
    assert_eq!(env.sim.user_schema(BOB), Some(ValueSchema::Legacy));
    assert_eq!(env.sim.user_schema(SERVICE), Some(ValueSchema::V2025));
    for u in [ANN, BOB] {
        env.sim.person_joins_call(u);
    }
    assert_eq!(env.presence(ANN), pair("InACall", "Busy"));
    assert_eq!(env.presence(BOB), pair("Busy", "InACall"));
    // A user's own setting wins over the tenant's rule.
    env.sim.set_user_schema(BOB, ValueSchema::V2025);
    assert_eq!(env.presence(BOB), pair("InACall", "Busy"));
}

#[tokio::test]
async fn app_written_states_read_as_their_2025_values_and_removed_values_never_appear() {
    let env = start(|_| {}).await;
    let token = env.app_token().await;
    for (posted, read) in [
        (
            ("DoNotDisturb", "Presenting"),
            ("Presenting", "DoNotDisturb"),
        ),
        (("Busy", "InACall"), ("InACall", "Busy")),
        (("Busy", "InAConferenceCall"), ("InACall", "Busy")),
        (("Available", "Available"), ("Available", "Available")),
        (("Away", "Away"), ("Away", "Away")),
    ] {
        let r = env
            .set_presence(&token, ANN, posted.0, posted.1, Some("PT1H"))
            .await;
        assert_eq!(r.status, 200);
        assert_eq!(pair_of(&env.read(&token, ANN).await), pair(read.0, read.1));
    }
    // The fade state is a legacy activity: Available/Available in 2025 values.
    env.set_presence(&token, ANN, "Available", "Available", Some("PT1H"))
        .await;
    env.advance(5 * MINUTE);
    assert_eq!(
        env.sim.presence_internal(ANN),
        pair("Available", "AvailableInactive")
    );
    let token = env.app_token().await;
    assert_eq!(
        pair_of(&env.read(&token, ANN).await),
        pair("Available", "Available")
    );
    // Appear offline: Offline/OffWork is Offline/Offline.
    let r = env
        .post(
            &token,
            &format!("users/{ANN}/presence/setUserPreferredPresence"),
            json!({"availability": "Offline", "activity": "OffWork"}),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(env.sim.presence_internal(ANN), pair("Offline", "OffWork"));
    assert_eq!(
        pair_of(&env.read(&token, ANN).await),
        pair("Offline", "Offline")
    );
}

#[tokio::test]
async fn writes_accept_the_documented_pairs_only_whatever_the_value_set() {
    let env = start(|_| {}).await;
    let token = env.app_token().await;
    for (a, b) in [("InACall", "Busy"), ("Presenting", "DoNotDisturb")] {
        let r = env.set_presence(&token, ANN, a, b, None).await;
        assert_eq!(r.status, 400, "{a}/{b}");
    }
    let r = env
        .post(
            &token,
            &format!("users/{ANN}/presence/setUserPreferredPresence"),
            json!({"availability": "InAMeeting", "activity": "Busy"}),
        )
        .await;
    assert_eq!(r.status, 400);
    let r = env.set_presence(&token, ANN, "Busy", "InACall", None).await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn a_preferred_pair_given_in_2025_values_is_held_as_its_legacy_pair() {
    let env = start(|_| {}).await;
    env.sim.person_signs_in(ANN);
    env.sim
        .person_sets_preferred(ANN, "Presenting", "DoNotDisturb");
    assert_eq!(
        env.sim.presence_internal(ANN),
        pair("DoNotDisturb", "Presenting")
    );
    assert_eq!(env.presence(ANN), pair("Presenting", "DoNotDisturb"));
}

#[tokio::test]
async fn sequence_number_grows_with_every_change_and_sorts_lexicographically() {
    let env = start(|_| {}).await;
    let token = env.app_token().await;
    let first = env.read(&token, ANN).await["sequenceNumber"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut seen = vec![first];
    // Enough changes (of Ann and, in between, of Bob) to carry the counter past a power of ten.
    for i in 0..12 {
        if i % 2 == 0 {
            env.sim.person_joins_meeting(ANN);
            env.sim.person_signs_in(BOB);
        } else {
            env.sim.person_leaves_meeting(ANN);
            env.sim.person_signs_out(BOB);
        }
        let now = env.read(&token, ANN).await["sequenceNumber"]
            .as_str()
            .unwrap()
            .to_owned();
        seen.push(now);
    }
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(seen, sorted, "strictly increasing as strings");
    // No change, no new stamp.
    let before = env.sim.sequence_number(ANN);
    env.sim.person_leaves_meeting(ANN);
    env.sim.person_signs_in(ANN);
    assert_eq!(env.sim.sequence_number(ANN), before);
    // The stamp read is the one the change record carries.
    let last = env.sim.changes().into_iter().rfind(|c| c.user == ANN);
    assert_eq!(last.map(|c| c.sequence_number), before);
    let many = env.read_many(&token, &[ANN]).await;
    assert_eq!(many[0]["sequenceNumber"].as_str(), before.as_deref());
}

#[tokio::test]
async fn sequence_number_is_left_out_when_configured() {
    let env = start(|c| c.emit_sequence_number = false).await;
    let token = env.app_token().await;
    env.sim.person_signs_in(ANN);
    assert!(env.read(&token, ANN).await.get("sequenceNumber").is_none());
    assert!(env.read_many(&token, &[ANN]).await[0]
        .get("sequenceNumber")
        .is_none());
    assert!(env.sim.sequence_number(ANN).is_some(), "still kept");
}

#[tokio::test]
async fn the_default_rate_limit_is_10000_requests_per_30_seconds() {
    let cfg = GraphSimConfig::new(TENANT, APP, SECRET, SERVICE, REFRESH);
    assert_eq!(cfg.rate_limit, (10_000, Duration::from_secs(30)));
    // More than the old 1,500 in one window pass.
    let env = start(|_| {}).await;
    let token = env.app_token().await;
    let path = format!("users/{ANN}/presence");
    for _ in 0..16 {
        let batch = (0..100).map(|_| env.get(&token, &path));
        let statuses: Vec<u16> = futures::future::join_all(batch)
            .await
            .into_iter()
            .map(|a| a.status)
            .collect();
        assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    }
}

#[tokio::test]
async fn the_conservative_limit_of_1500_stays_selectable() {
    let env = start(|c| c.rate_limit = (1_500, Duration::from_secs(30))).await;
    let token = env.app_token().await;
    let path = format!("users/{ANN}/presence");
    let mut statuses = Vec::new();
    for _ in 0..16 {
        let batch = (0..94).map(|_| env.get(&token, &path));
        statuses.extend(
            futures::future::join_all(batch)
                .await
                .into_iter()
                .map(|a| a.status),
        );
    }
    // 1,504 requests: the last 4 are throttled.
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 1_500);
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 4);
}
