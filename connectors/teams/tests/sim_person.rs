//! The person's own client (a base state plus a meeting, a call, presenting and focusing), how it
//! ranks against application sessions, the record of changes with their causes, and what the
//! person's own sources alone show.
#![allow(clippy::unwrap_used)]

mod sim_support;

use presync_teams::sim::{ChangeCause, PresenceChange, ValueSchema};
use serde_json::json;
use sim_support::*;

/// The causes of `user`'s changes among `changes`.
fn causes(changes: &[PresenceChange], user: &str) -> Vec<ChangeCause> {
    changes
        .iter()
        .filter(|c| c.user == user)
        .map(|c| c.cause.clone())
        .collect()
}

fn app() -> ChangeCause {
    ChangeCause::App {
        app_id: APP.to_owned(),
    }
}

#[tokio::test]
async fn presenting_during_a_meeting_shows_presenting_and_stopping_shows_the_meeting_again() {
    let env = start(|_| {}).await;
    let token = env.app_token().await;
    env.sim.person_joins_meeting(ANN);
    assert_eq!(
        pair_of(&env.read(&token, ANN).await),
        pair("InAMeeting", "Busy")
    );
    env.sim.person_starts_presenting(ANN);
    assert_eq!(
        pair_of(&env.read(&token, ANN).await),
        pair("Presenting", "DoNotDisturb")
    );
    env.sim.person_stops_presenting(ANN);
    assert_eq!(
        pair_of(&env.read(&token, ANN).await),
        pair("InAMeeting", "Busy")
    );
    env.sim.person_leaves_meeting(ANN);
    assert_eq!(
        pair_of(&env.read(&token, ANN).await),
        pair("Available", "Available")
    );
}

#[tokio::test]
async fn a_call_shows_over_a_meeting_and_each_activity_ends_on_its_own() {
    let env = start(|_| {}).await;
    env.sim.person_joins_meeting(ANN);
    env.sim.person_joins_call(ANN);
    assert_eq!(env.presence(ANN), pair("InACall", "Busy"));
    env.sim.person_leaves_meeting(ANN);
    assert_eq!(
        env.presence(ANN),
        pair("InACall", "Busy"),
        "still in the call"
    );
    env.sim.person_leaves_call(ANN);
    assert_eq!(env.presence(ANN), pair("Available", "Available"));
}

#[tokio::test]
async fn ending_an_activity_that_is_not_under_way_changes_nothing() {
    let env = start(|_| {}).await;
    let before = env.sim.change_count();
    for end in [
        Ending::Meeting,
        Ending::Call,
        Ending::Presenting,
        Ending::Focusing,
    ] {
        assert!(end.run(&env, ANN));
    }
    assert_eq!(
        env.presence(ANN),
        pair("Offline", "Offline"),
        "not signed in"
    );
    assert_eq!(env.sim.change_count(), before);
    env.sim.person_joins_meeting(ANN);
    let stamp = env.sim.sequence_number(ANN);
    env.sim.person_leaves_call(ANN);
    env.sim.person_stops_presenting(ANN);
    assert_eq!(env.sim.sequence_number(ANN), stamp);
    assert_eq!(env.presence(ANN), pair("InAMeeting", "Busy"));
}

/// The ways an activity ends.
#[derive(Debug, Clone, Copy)]
enum Ending {
    Meeting,
    Call,
    Presenting,
    Focusing,
}

impl Ending {
    fn run(self, env: &Env, user: &str) -> bool {
        match self {
            Ending::Meeting => env.sim.person_leaves_meeting(user),
            Ending::Call => env.sim.person_leaves_call(user),
            Ending::Presenting => env.sim.person_stops_presenting(user),
            Ending::Focusing => env.sim.person_stops_focusing(user),
        }
    }
}

#[tokio::test]
async fn starting_an_activity_signs_in_and_signing_out_ends_every_activity() {
    let env = start(|_| {}).await;
    env.sim.person_joins_call(ANN);
    assert_eq!(env.presence(ANN), pair("InACall", "Busy"));
    env.sim.person_joins_meeting(ANN);
    env.sim.person_starts_presenting(ANN);
    env.sim.person_starts_focusing(ANN);
    assert_eq!(env.presence(ANN), pair("Presenting", "DoNotDisturb"));
    env.sim.person_signs_out(ANN);
    assert_eq!(env.presence(ANN), pair("Offline", "Offline"));
    env.sim.person_signs_in(ANN);
    assert_eq!(
        env.presence(ANN),
        pair("Available", "Available"),
        "nothing carried over"
    );
    assert!(!env
        .sim
        .person_joins_meeting("bbbbbbbb-0000-4000-8000-000000000000"));
}

#[tokio::test]
async fn focusing_reads_focusing_in_2025_values_and_do_not_disturb_in_legacy_ones() {
    let env = start(|_| {}).await;
    env.sim.set_user_schema(BOB, ValueSchema::Legacy);
    for u in [ANN, BOB] {
        env.sim.person_starts_focusing(u);
    }
    assert_eq!(env.presence(ANN), pair("Focusing", "DoNotDisturb"));
    assert_eq!(env.presence(BOB), pair("DoNotDisturb", "DoNotDisturb"));
    // A meeting shows over focus time; focus shows again after it.
    env.sim.person_joins_meeting(ANN);
    assert_eq!(env.presence(ANN), pair("InAMeeting", "Busy"));
    env.sim.person_leaves_meeting(ANN);
    assert_eq!(env.presence(ANN), pair("Focusing", "DoNotDisturb"));
    env.sim.person_stops_focusing(ANN);
    assert_eq!(env.presence(ANN), pair("Available", "Available"));
}

#[tokio::test]
async fn an_app_dnd_beats_a_meeting_and_a_meeting_beats_an_app_available() {
    let env = start(|_| {}).await;
    let token = env.app_token().await;
    env.sim.person_joins_meeting(ANN);
    env.set_presence(&token, ANN, "Available", "Available", Some("PT1H"))
        .await;
    assert_eq!(
        pair_of(&env.read(&token, ANN).await),
        pair("InAMeeting", "Busy")
    );
    env.set_presence(&token, ANN, "DoNotDisturb", "Presenting", Some("PT1H"))
        .await;
    assert_eq!(
        pair_of(&env.read(&token, ANN).await),
        pair("Presenting", "DoNotDisturb")
    );
    // The person's presenting and focusing rank as DoNotDisturb, above an app's call.
    env.set_presence(&token, BOB, "Busy", "InACall", Some("PT1H"))
        .await;
    env.sim.person_starts_focusing(BOB);
    assert_eq!(env.presence(BOB), pair("Focusing", "DoNotDisturb"));
    env.sim.person_stops_focusing(BOB);
    env.sim.person_starts_presenting(BOB);
    assert_eq!(env.presence(BOB), pair("Presenting", "DoNotDisturb"));
    env.sim.person_stops_presenting(BOB);
    assert_eq!(env.presence(BOB), pair("InACall", "Busy"), "the app's call");
}

#[tokio::test]
async fn changes_attribute_person_actions_to_the_person_and_writes_to_the_app() {
    let env = start(|_| {}).await;
    let token = env.app_token().await;
    let from = env.sim.change_count();
    env.sim.person_signs_in(ANN);
    env.set_presence(&token, ANN, "DoNotDisturb", "Presenting", None)
        .await;
    env.advance(5 * MINUTE); // the session expires
    env.sim.person_joins_meeting(ANN);
    let token = env.app_token().await;
    let preferred = format!("users/{ANN}/presence/setUserPreferredPresence");
    let r = env
        .post(
            &token,
            &preferred,
            json!({"availability": "BeRightBack", "activity": "BeRightBack"}),
        )
        .await;
    assert_eq!(r.status, 200);
    env.sim.person_clears_preferred(ANN);

    let changes = env.sim.changes_since(from);
    assert_eq!(
        causes(&changes, ANN),
        [
            ChangeCause::Person,
            app(),
            ChangeCause::Timer,
            ChangeCause::Person,
            app(),
            ChangeCause::Person
        ]
    );
    let shown: Vec<_> = changes.iter().map(|c| c.shown.clone()).collect();
    assert_eq!(
        shown,
        [
            pair("Available", "Available"),
            pair("Presenting", "DoNotDisturb"),
            pair("Available", "Available"),
            pair("InAMeeting", "Busy"),
            pair("BeRightBack", "BeRightBack"),
            pair("InAMeeting", "Busy"),
        ]
    );
    assert_eq!(changes[1].internal, pair("DoNotDisturb", "Presenting"));
    assert_eq!(changes[1].schema, ValueSchema::V2025);
    assert_eq!(changes[0].at, T0);
    assert_eq!(changes[2].at, T0 + 5 * MINUTE);
    assert!(changes
        .windows(2)
        .all(|w| w[0].sequence_number < w[1].sequence_number));
    assert_eq!(env.sim.changes().len(), from + changes.len());
}

#[tokio::test]
async fn a_delegated_write_is_the_applications_and_a_no_op_write_is_no_change() {
    let env = start(|_| {}).await;
    let token = env.delegated_token().await;
    let from = env.sim.change_count();
    for _ in 0..2 {
        env.set_presence(&token, SERVICE, "Busy", "InACall", None)
            .await;
    }
    assert_eq!(causes(&env.sim.changes_since(from), SERVICE), [app()]);
}

#[tokio::test]
async fn own_presence_ignores_app_sessions() {
    let env = start(|_| {}).await;
    let token = env.app_token().await;
    env.sim.person_signs_in(ANN);
    env.set_presence(&token, ANN, "DoNotDisturb", "Presenting", Some("PT1H"))
        .await;
    assert_eq!(env.presence(ANN), pair("Presenting", "DoNotDisturb"));
    assert_eq!(env.sim.own_presence(ANN), pair("Available", "Available"));
    env.sim.person_joins_meeting(ANN);
    assert_eq!(env.sim.own_presence(ANN), pair("InAMeeting", "Busy"));
    env.sim
        .person_sets_preferred(ANN, "BeRightBack", "BeRightBack");
    assert_eq!(
        env.sim.own_presence(ANN),
        pair("BeRightBack", "BeRightBack")
    );
    env.sim.person_signs_out(ANN);
    assert_eq!(env.sim.own_presence(ANN), pair("Offline", "Offline"));
    assert_eq!(
        env.presence(ANN),
        pair("BeRightBack", "BeRightBack"),
        "the app's session keeps the preferred presence showing"
    );
    env.sim.set_user_schema(ANN, ValueSchema::Legacy);
    env.sim.person_joins_meeting(ANN);
    env.sim.person_clears_preferred(ANN);
    assert_eq!(env.sim.own_presence(ANN), pair("Busy", "InAMeeting"));
}
