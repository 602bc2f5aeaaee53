//! Presence writes and the aggregate (graph.md §2.2, §2.3, §4): the allowed pairs, the session
//! id rule, durations, clearPresence, preferred presence, precedence, fade and expiry.
#![allow(clippy::unwrap_used)]

mod sim_support;

use presync_teams::sim::ValueSchema;
use serde_json::json;
use sim_support::*;

#[tokio::test]
async fn set_presence_accepts_exactly_the_documented_pairs() {
    // The legacy values read back as posted; sim_values.rs covers the 2025 ones.
    let env = start(|c| c.schema = ValueSchema::Legacy).await;
    let token = env.app_token().await;
    for (a, b) in [
        ("Available", "Available"),
        ("Busy", "InACall"),
        ("Busy", "InAConferenceCall"),
        ("Away", "Away"),
        ("DoNotDisturb", "Presenting"),
    ] {
        let r = env.set_presence(&token, ANN, a, b, None).await;
        assert_eq!(r.status, 200, "{a}/{b}: {:?}", r.body);
        assert_eq!(r.body, serde_json::Value::Null, "no body");
        assert_eq!(env.presence(ANN), pair(a, b));
    }
    for (a, b) in [
        ("Busy", "Busy"),
        ("DoNotDisturb", "DoNotDisturb"),
        ("Busy", "InAMeeting"),
        ("BeRightBack", "BeRightBack"),
        ("Offline", "OffWork"),
        ("available", "available"),
    ] {
        let r = env.set_presence(&token, ANN, a, b, None).await;
        assert_eq!(r.status, 400, "{a}/{b}");
        assert_eq!(r.code(), "BadRequest");
        assert!(r.body["error"]["innerError"]["date"].is_string());
    }
    assert_eq!(env.presence(ANN), pair("DoNotDisturb", "Presenting"));
}

#[tokio::test]
async fn the_session_id_must_be_the_calling_application() {
    let env = start(|_| {}).await;
    let token = env.app_token().await;
    let path = format!("users/{ANN}/presence/setPresence");
    let other = json!({"sessionId": "22222222-2222-3333-4444-555555555555", "availability": "Available", "activity": "Available"});
    assert_eq!(env.post(&token, &path, other).await.status, 400);
    let missing = json!({"availability": "Available", "activity": "Available"});
    assert_eq!(env.post(&token, &path, missing).await.status, 400);
    let upper = json!({"sessionId": APP.to_uppercase(), "availability": "Available", "activity": "Available"});
    assert_eq!(
        env.post(&token, &path, upper).await.status,
        200,
        "GUIDs compare case-insensitively"
    );
    assert!(env.sim.session(ANN, APP).is_some());
}

#[tokio::test]
async fn expiration_duration_must_be_between_five_minutes_and_four_hours() {
    let env = start(|_| {}).await;
    let token = env.app_token().await;
    for ok in ["PT5M", "PT1H", "PT4H", "PT240M"] {
        assert_eq!(
            env.set_presence(&token, ANN, "Available", "Available", Some(ok))
                .await
                .status,
            200,
            "{ok}"
        );
    }
    for bad in ["PT4M", "PT4H1M", "P1D", "-PT10M", "5 minutes", "PT"] {
        assert_eq!(
            env.set_presence(&token, ANN, "Available", "Available", Some(bad))
                .await
                .status,
            400,
            "{bad}"
        );
    }
    env.set_presence(&token, ANN, "Busy", "InACall", None).await;
    let s = env.sim.session(ANN, APP).unwrap();
    assert_eq!(s.expires_at - s.last_posted, 5 * MINUTE, "default PT5M");
}

#[tokio::test]
async fn unknown_parameters_and_non_json_bodies_are_refused() {
    let env = start(|_| {}).await;
    let token = env.app_token().await;
    let path = format!("users/{ANN}/presence/setPresence");
    let extra = json!({"sessionId": APP, "availability": "Available", "activity": "Available", "note": "x"});
    assert_eq!(env.post(&token, &path, extra).await.status, 400);
    let text = env
        .http
        .post(env.url(&path))
        .bearer_auth(&token)
        .body("sessionId=x")
        .send()
        .await
        .unwrap();
    assert_eq!(answer(text).await.status, 415);
    let non_guid = env
        .set_presence(&token, "ann@contoso.com", "Available", "Available", None)
        .await;
    assert_eq!(non_guid.status, 400);
    let unknown = env
        .set_presence(
            &token,
            "aaaaaaaa-0000-4000-8000-0000000000ff",
            "Available",
            "Available",
            None,
        )
        .await;
    assert_eq!(unknown.status, 404);
}

#[tokio::test]
async fn namespace_qualified_actions_and_the_communications_path_work_too() {
    let env = start(|_| {}).await;
    let token = env.app_token().await;
    let body = json!({"sessionId": APP, "availability": "Busy", "activity": "InACall"});
    let r = env
        .post(
            &token,
            &format!("communications/presences/{ANN}/microsoft.graph.setPresence"),
            body,
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(env.presence(ANN), pair("InACall", "Busy"));
}

#[tokio::test]
async fn clear_presence_answers_404_when_there_is_no_session() {
    let env = start(|_| {}).await;
    let token = env.app_token().await;
    let path = format!("users/{ANN}/presence/clearPresence");
    let absent = env.post(&token, &path, json!({"sessionId": APP})).await;
    assert_eq!(absent.status, 404);
    assert_eq!(absent.code(), "NotFound");
    env.set_presence(&token, ANN, "Busy", "InACall", None).await;
    assert_eq!(
        env.post(&token, &path, json!({"sessionId": APP}))
            .await
            .status,
        200
    );
    assert_eq!(
        env.presence(ANN),
        pair("Offline", "Offline"),
        "it was the only session"
    );
    assert_eq!(
        env.post(&token, &path, json!({"sessionId": "someone-else"}))
            .await
            .status,
        400
    );
}

#[tokio::test]
async fn preferred_presence_uses_its_own_pairs_and_clearing_always_succeeds() {
    let env = start(|_| {}).await;
    let token = env.app_token().await;
    let set = format!("users/{ANN}/presence/setUserPreferredPresence");
    let clear = format!("users/{ANN}/presence/clearUserPreferredPresence");
    assert_eq!(
        env.post(&token, &clear, json!({})).await.status,
        200,
        "nothing set"
    );
    for (a, b) in [
        ("Busy", "InACall"),
        ("DoNotDisturb", "Presenting"),
        ("Offline", "Offline"),
    ] {
        let r = env
            .post(&token, &set, json!({"availability": a, "activity": b}))
            .await;
        assert_eq!(r.status, 400, "{a}/{b}");
    }
    let r = env
        .post(&token, &set, json!({"availability": "DoNotDisturb", "activity": "DoNotDisturb", "expirationDuration": "PT8H"}))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        env.sim.preferred(ANN),
        Some(pair("DoNotDisturb", "DoNotDisturb"))
    );
    assert_eq!(
        env.presence(ANN),
        pair("Offline", "Offline"),
        "no session: Offline"
    );
    env.sim.person_signs_in(ANN);
    assert_eq!(env.presence(ANN), pair("DoNotDisturb", "DoNotDisturb"));
    env.advance(8 * 60 * MINUTE);
    assert_eq!(
        env.presence(ANN),
        pair("Available", "Available"),
        "preferred expired"
    );

    // Default expiry: 1 day for Busy, 7 days for Away.
    let token = env.app_token().await; // the first one expired meanwhile
    let busy = env
        .post(
            &token,
            &set,
            json!({"availability": "Busy", "activity": "Busy"}),
        )
        .await;
    assert_eq!(busy.status, 200);
    env.advance(24 * 60 * MINUTE - 1);
    assert_eq!(env.presence(ANN), pair("Busy", "Busy"));
    env.advance(1);
    assert_eq!(env.presence(ANN), pair("Available", "Available"));
    let token = env.app_token().await;
    let away = env
        .post(
            &token,
            &set,
            json!({"availability": "Away", "activity": "Away"}),
        )
        .await;
    assert_eq!(away.status, 200);
    env.advance(6 * 24 * 60 * MINUTE);
    assert_eq!(env.presence(ANN), pair("Away", "Away"));
    let token = env.app_token().await;
    assert_eq!(env.post(&token, &clear, json!({})).await.status, 200);
    assert_eq!(env.presence(ANN), pair("Available", "Available"));
}

#[tokio::test]
async fn the_persons_dnd_beats_presyncs_available_session() {
    let env = start(|_| {}).await;
    let token = env.app_token().await;
    env.sim.person_signs_in(ANN);
    env.sim
        .person_sets_preferred(ANN, "DoNotDisturb", "DoNotDisturb");
    env.set_presence(&token, ANN, "Available", "Available", Some("PT1H"))
        .await;
    assert_eq!(env.presence(ANN), pair("DoNotDisturb", "DoNotDisturb"));
    // presync's session is there, just outranked.
    assert_eq!(env.sim.session(ANN, APP).unwrap().availability, "Available");
}

#[tokio::test]
async fn preferred_beats_every_session_but_needs_one() {
    let env = start(|_| {}).await;
    let token = env.app_token().await;
    env.sim
        .person_sets_preferred(ANN, "BeRightBack", "BeRightBack");
    assert_eq!(env.presence(ANN), pair("Offline", "Offline"));
    env.set_presence(&token, ANN, "DoNotDisturb", "Presenting", Some("PT1H"))
        .await;
    assert_eq!(env.presence(ANN), pair("BeRightBack", "BeRightBack"));
    let clear = format!("users/{ANN}/presence/clearPresence");
    env.post(&token, &clear, json!({"sessionId": APP})).await;
    assert_eq!(
        env.presence(ANN),
        pair("Offline", "Offline"),
        "no session left"
    );
}

#[tokio::test]
async fn sticky_echo_presyncs_dnd_session_outlives_the_persons_dnd() {
    let env = start(|_| {}).await;
    let token = env.app_token().await;
    env.sim.person_signs_in(ANN);
    env.sim
        .person_sets_preferred(ANN, "DoNotDisturb", "DoNotDisturb");
    // presync mirrors the DND it saw into its own session...
    env.set_presence(&token, ANN, "DoNotDisturb", "Presenting", Some("PT1H"))
        .await;
    // ...the person clears DND in Teams, and the aggregate is still DND.
    env.sim.person_clears_preferred(ANN);
    assert_eq!(env.presence(ANN), pair("Presenting", "DoNotDisturb"));
    let clear = format!("users/{ANN}/presence/clearPresence");
    env.post(&token, &clear, json!({"sessionId": APP})).await;
    assert_eq!(env.presence(ANN), pair("Available", "Available"));
}

#[tokio::test]
async fn among_sessions_dnd_beats_busy_beats_available_beats_away() {
    let env = start(|_| {}).await;
    let token = env.app_token().await;
    env.sim.person_joins_meeting(ANN);
    env.set_presence(&token, ANN, "Available", "Available", Some("PT1H"))
        .await;
    assert_eq!(
        env.presence(ANN),
        pair("InAMeeting", "Busy"),
        "Busy beats Available"
    );
    env.set_presence(&token, ANN, "DoNotDisturb", "Presenting", Some("PT1H"))
        .await;
    assert_eq!(
        env.presence(ANN),
        pair("Presenting", "DoNotDisturb"),
        "DND beats Busy"
    );
    env.sim.person_leaves_meeting(ANN);
    env.set_presence(&token, ANN, "Away", "Away", Some("PT1H"))
        .await;
    assert_eq!(
        env.presence(ANN),
        pair("Available", "Available"),
        "Available beats Away"
    );
    env.sim.person_signs_out(ANN);
    assert_eq!(env.presence(ANN), pair("Away", "Away"));
}

#[tokio::test]
async fn an_available_session_fades_to_inactive_then_away_unless_reposted() {
    // AvailableInactive is a legacy value: the 2025 values read it as Available.
    let env = start(|c| c.schema = ValueSchema::Legacy).await;
    let token = env.app_token().await;
    env.set_presence(&token, ANN, "Available", "Available", Some("PT1H"))
        .await;
    env.advance(5 * MINUTE - 1);
    assert_eq!(env.presence(ANN), pair("Available", "Available"));
    env.advance(1);
    assert_eq!(env.presence(ANN), pair("Available", "AvailableInactive"));
    env.advance(5 * MINUTE);
    assert_eq!(env.presence(ANN), pair("Away", "Away"));
    let s = env.sim.session(ANN, APP).unwrap();
    assert_eq!(
        (s.availability.as_str(), s.posted_availability.as_str()),
        ("Away", "Available")
    );

    // Re-posting restarts the clock.
    env.set_presence(&token, ANN, "Available", "Available", Some("PT1H"))
        .await;
    env.advance(4 * MINUTE);
    env.set_presence(&token, ANN, "Available", "Available", Some("PT1H"))
        .await;
    env.advance(4 * MINUTE);
    assert_eq!(env.presence(ANN), pair("Available", "Available"));
}

#[tokio::test]
async fn a_busy_session_does_not_fade_but_expires_to_offline() {
    let env = start(|_| {}).await;
    let token = env.app_token().await;
    env.set_presence(&token, ANN, "Busy", "InACall", Some("PT30M"))
        .await;
    env.advance(30 * MINUTE - 1);
    assert_eq!(env.presence(ANN), pair("InACall", "Busy"));
    env.advance(1);
    assert_eq!(env.presence(ANN), pair("Offline", "Offline"));
    assert_eq!(env.sim.session(ANN, APP), None);
}

#[tokio::test]
async fn the_default_session_expires_after_five_minutes_and_reposting_extends_it() {
    let env = start(|_| {}).await;
    let token = env.app_token().await;
    env.set_presence(&token, ANN, "Available", "Available", None)
        .await;
    env.advance(4 * MINUTE);
    env.set_presence(&token, ANN, "Available", "Available", None)
        .await;
    env.advance(4 * MINUTE);
    assert_eq!(env.presence(ANN), pair("Available", "Available"));
    env.advance(MINUTE);
    assert_eq!(env.presence(ANN), pair("Offline", "Offline"));
}

#[tokio::test]
async fn a_delegated_token_writes_only_the_signed_in_users_presence() {
    let env = start(|_| {}).await;
    let token = env.delegated_token().await;
    let other = env
        .set_presence(&token, ANN, "Available", "Available", None)
        .await;
    assert_eq!(other.status, 403);
    assert_eq!(other.code(), "Forbidden");
    let own = env
        .set_presence(&token, SERVICE, "Available", "Available", None)
        .await;
    assert_eq!(own.status, 200);
    let me = env
        .post(
            &token,
            "me/presence/setPresence",
            json!({"sessionId": APP, "availability": "Busy", "activity": "InACall"}),
        )
        .await;
    assert_eq!(me.status, 200);
    assert_eq!(env.presence(SERVICE), pair("InACall", "Busy"));
}

#[tokio::test]
async fn action_status_can_be_204_to_check_clients_accept_both() {
    let env = start(|c| c.action_status = 204).await;
    let token = env.app_token().await;
    assert_eq!(
        env.set_presence(&token, ANN, "Available", "Available", None)
            .await
            .status,
        204
    );
}

#[tokio::test]
async fn app_only_preferred_writes_can_be_refused_when_configured() {
    let env = start(|c| c.preferred_requires_delegated = true).await;
    let token = env.app_token().await;
    let r = env
        .post(
            &token,
            &format!("users/{ANN}/presence/setUserPreferredPresence"),
            json!({"availability": "Away", "activity": "Away"}),
        )
        .await;
    assert_eq!(r.status, 403);
}
