//! D365's own presence automation in the simulator (dataverse.md §2.4): capacity taken by
//! conversations, the recalculation at each accept and close, how long a hand choice lasts,
//! sign-out, disconnect and reconnect, and the columns that show it.
#![allow(clippy::unwrap_used)]

mod sim_support;

use std::time::Duration;

use presync_dataverse::mapping::builtin;
use presync_dataverse::sim::{ChangeCause, SimRefusal, SystemReason};
use serde_json::json;
use sim_support::*;

/// The presence of Ann, the signed-in agent.
fn ann(env: &Env) -> String {
    env.sim.presence(ANN).unwrap()
}

#[tokio::test]
async fn a_manual_available_is_replaced_by_busy_at_accept_and_available_at_close() {
    let env = start(|_| {}).await;
    env.sim.agent_sets(ANN, builtin::AVAILABLE).unwrap();

    env.sim.accept(ANN).unwrap();
    assert_eq!(ann(&env), builtin::BUSY);
    assert_eq!(env.sim.row(ANN).unwrap().modified_by, "SYSTEM");
    assert_eq!(env.sim.capacity(ANN), Some((50, 1)));

    env.sim.close(ANN).unwrap();
    assert_eq!(ann(&env), builtin::AVAILABLE);
    assert_eq!(env.sim.capacity(ANN), Some((100, 0)));
}

#[tokio::test]
async fn a_manual_busy_is_recalculated_at_the_next_close() {
    let env = start(|_| {}).await;
    env.sim.accept(ANN).unwrap();
    env.sim.agent_sets(ANN, builtin::BUSY).unwrap();
    env.sim.close(ANN).unwrap();
    assert_eq!(ann(&env), builtin::AVAILABLE);
}

#[tokio::test]
async fn a_manual_away_dnd_or_offline_lasts_through_accept_and_close() {
    let env = start(|_| {}).await;
    for chosen in [builtin::AWAY, builtin::BUSY_DND, builtin::OFFLINE] {
        env.sim.agent_sets(ANN, chosen).unwrap();
        env.sim.accept(ANN).unwrap();
        assert_eq!(ann(&env), chosen, "after accept");
        env.sim.accept(ANN).unwrap();
        assert_eq!(ann(&env), chosen, "capacity fully used");
        env.sim.close(ANN).unwrap();
        env.sim.close(ANN).unwrap();
        assert_eq!(ann(&env), chosen, "after close");
        assert_eq!(env.sim.row(ANN).unwrap().modified_by, "AGENT");
        assert_eq!(env.sim.capacity(ANN), Some((100, 0)));
    }
    // The next manual change ends it.
    env.sim.agent_sets(ANN, builtin::AVAILABLE).unwrap();
    env.sim.accept(ANN).unwrap();
    assert_eq!(ann(&env), builtin::BUSY);
}

#[tokio::test]
async fn capacity_fully_used_gives_busy_dnd_and_no_further_conversation() {
    let env = start(|_| {}).await;
    env.sim.accept(ANN).unwrap();
    env.sim.accept(ANN).unwrap();
    assert_eq!(ann(&env), builtin::BUSY_DND);
    assert_eq!(env.sim.capacity(ANN), Some((0, 2)));
    assert_eq!(env.sim.accept(ANN), Err(SimRefusal::NoCapacity));

    env.sim.close(ANN).unwrap();
    assert_eq!(ann(&env), builtin::BUSY);
    env.sim.close(ANN).unwrap();
    assert_eq!(ann(&env), builtin::AVAILABLE);
    assert_eq!(env.sim.close(ANN), Err(SimRefusal::NoConversation));
    assert_eq!(env.sim.accept(BOB), Err(SimRefusal::NotSignedIn));
    assert_eq!(
        env.sim.accept("deadbeef-0000-4000-8000-000000000000"),
        Err(SimRefusal::UnknownAgent)
    );
}

#[tokio::test]
async fn conversation_units_are_configurable() {
    let env = start(|c| c.conversation_units = 25).await;
    for _ in 0..3 {
        env.sim.accept(ANN).unwrap();
    }
    assert_eq!(env.sim.capacity(ANN), Some((25, 3)));
    assert_eq!(ann(&env), builtin::BUSY);
    env.sim.accept(ANN).unwrap();
    assert_eq!(ann(&env), builtin::BUSY_DND);
}

#[tokio::test]
async fn an_api_set_dnd_lasts_when_api_writes_count_as_manual() {
    let env = start(|_| {}).await;
    let token = env.token().await;
    let (status, _) = env
        .modify(
            &token,
            Some(("MSCRMCallerID", SUE)),
            modify_body(ANN, builtin::BUSY_DND),
        )
        .await;
    assert_eq!(status, 200);
    env.sim.accept(ANN).unwrap();
    env.sim.close(ANN).unwrap();
    assert_eq!(ann(&env), builtin::BUSY_DND);
}

#[tokio::test]
async fn an_api_set_dnd_is_recalculated_when_api_writes_do_not_count_as_manual() {
    let env = start(|c| c.api_presence_is_manual = false).await;
    let token = env.token().await;
    let (status, _) = env
        .modify(&token, None, modify_body(ANN, builtin::BUSY_DND))
        .await;
    assert_eq!(status, 200);
    env.sim.accept(ANN).unwrap();
    assert_eq!(ann(&env), builtin::BUSY);
    assert_eq!(env.sim.row(ANN).unwrap().modified_by, "SYSTEM");
}

#[tokio::test]
async fn sign_out_closes_every_conversation_and_ends_a_sticky_presence() {
    let env = start(|_| {}).await;
    env.sim.agent_sets(ANN, builtin::AWAY).unwrap();
    env.sim.accept(ANN).unwrap();
    env.sim.accept(ANN).unwrap();
    env.sim.sign_out(ANN).unwrap();
    let row = env.sim.row(ANN).unwrap();
    assert_eq!(
        (row.presence_id.as_str(), row.logged_in),
        (builtin::OFFLINE, false)
    );
    assert_eq!(env.sim.capacity(ANN), Some((100, 0)));
    assert_eq!(env.sim.accept(ANN), Err(SimRefusal::NotSignedIn));

    // Signed back in with Away as the default: set by SYSTEM, so not sticky.
    env.sim.sign_in(ANN, builtin::AWAY).unwrap();
    assert_eq!(env.sim.capacity(ANN), Some((100, 0)));
    env.sim.accept(ANN).unwrap();
    assert_eq!(ann(&env), builtin::BUSY);
}

#[tokio::test]
async fn a_reconnect_within_the_window_restores_the_previous_presence_and_its_stickiness() {
    let env = start(|_| {}).await;
    let token = env.token().await;
    env.sim.agent_sets(ANN, builtin::AWAY).unwrap();
    env.sim.accept(ANN).unwrap();

    env.sim.disconnect(ANN).unwrap();
    let row = env.sim.row(ANN).unwrap();
    assert_eq!(
        (
            row.presence_id.as_str(),
            row.modified_by.as_str(),
            row.logged_in
        ),
        (builtin::OFFLINE, "SYSTEM", false)
    );
    assert_eq!(env.sim.capacity(ANN), Some((50, 1)), "conversations kept");
    assert_eq!(env.sim.accept(ANN), Err(SimRefusal::NotSignedIn));
    let (status, _) = env
        .modify(&token, None, modify_body(ANN, builtin::AVAILABLE))
        .await;
    assert_eq!(status, 404, "a disconnected agent is not signed in");

    env.sim.reconnect(ANN).unwrap();
    let row = env.sim.row(ANN).unwrap();
    assert_eq!(
        (
            row.presence_id.as_str(),
            row.modified_by.as_str(),
            row.logged_in
        ),
        (builtin::AWAY, "SYSTEM", true)
    );
    env.sim.accept(ANN).unwrap();
    assert_eq!(ann(&env), builtin::AWAY, "still sticky");
    let causes: Vec<_> = env.sim.changes().into_iter().map(|c| c.cause).collect();
    assert_eq!(
        causes[causes.len() - 2..],
        [
            ChangeCause::System(SystemReason::Disconnected),
            ChangeCause::System(SystemReason::Restored)
        ]
    );
    assert_eq!(env.sim.reconnect(ANN), Err(SimRefusal::NotDisconnected));
}

#[tokio::test]
async fn a_reconnect_after_the_window_recalculates_from_capacity() {
    let env = start(|c| c.restore_window = Duration::ZERO).await;
    env.sim.agent_sets(ANN, builtin::AWAY).unwrap();
    env.sim.accept(ANN).unwrap();
    env.sim.disconnect(ANN).unwrap();
    env.sim.reconnect(ANN).unwrap();
    let row = env.sim.row(ANN).unwrap();
    assert_eq!(
        (
            row.presence_id.as_str(),
            row.modified_by.as_str(),
            row.logged_in
        ),
        (builtin::BUSY, "SYSTEM", true)
    );
    assert_eq!(
        env.sim.changes().last().unwrap().cause,
        ChangeCause::System(SystemReason::Recalculated)
    );
    env.sim.close(ANN).unwrap();
    assert_eq!(ann(&env), builtin::AVAILABLE, "no longer sticky");
}

#[tokio::test]
async fn a_recalculation_that_keeps_the_presence_sends_no_webhook_but_versions_the_row() {
    let (env, rx) = start_with_webhook(|_| {}).await;
    env.sim.system_sets(ANN, builtin::BUSY).unwrap();
    env.sim.wait_deliveries_idle().await;
    let before = env.sim.row(ANN).unwrap();
    let recorded = env.sim.changes().len();

    env.sim.accept(ANN).unwrap();
    env.sim.wait_deliveries_idle().await;
    let after = env.sim.row(ANN).unwrap();
    assert_eq!(after.presence_id, builtin::BUSY);
    assert_eq!(after.row_version, before.row_version + 1);
    assert_eq!(after.modified_on_ms, before.modified_on_ms);
    assert_eq!(rx.got().len(), 1, "only the system_sets webhook");
    assert_eq!(env.sim.changes().len(), recorded);
}

#[tokio::test]
async fn a_recalculated_presence_arrives_as_a_system_update_with_the_conversation_count() {
    let (env, rx) = start_with_webhook(|_| {}).await;
    env.sim.accept(ANN).unwrap();
    env.sim.wait_deliveries_idle().await;
    let got = rx.got();
    assert_eq!(got.len(), 1, "the capacity write alone sends nothing");
    let body = got[0].json();
    assert_eq!(
        target_attribute(&body, "msdyn_currentpresenceid")["Id"],
        builtin::BUSY
    );
    assert_eq!(
        target_attribute(&body, "msdyn_presencemodifiedby"),
        "SYSTEM"
    );
    assert_eq!(
        target_attribute(&body, "msdyn_assignedconversationcount"),
        1
    );
    assert_eq!(target_attribute(&body, "msdyn_availableunitscapacity"), 50);
    let row = env.sim.row(ANN).unwrap();
    assert_eq!(
        body["InputParameters"][0]["value"]["RowVersion"],
        row.row_version.to_string()
    );
}

#[tokio::test]
async fn a_new_agent_is_created_with_no_conversations_in_the_create_body() {
    let (rx, addr) = Receiver::start().await;
    let env = start(|c| c.webhook = Some(target(addr, header_auth()))).await;
    env.sim.wait_deliveries_idle().await;
    let created = rx.got().first().unwrap().json();
    assert_eq!(created["MessageName"], "Create");
    assert_eq!(
        target_attribute(&created, "msdyn_assignedconversationcount"),
        0
    );
}

#[tokio::test]
async fn odata_reads_carry_the_assigned_conversation_count() {
    let env = start(|_| {}).await;
    env.sim.accept(ANN).unwrap();
    let token = env.token().await;
    let url = env.url(&format!(
        "msdyn_agentstatuses?$select=msdyn_availableunitscapacity,msdyn_assignedconversationcount&$filter=_msdyn_agentid_value eq {ANN}"
    ));
    let (status, body) = env.get(&token, &url, None, None).await;
    assert_eq!(status, 200, "{body}");
    let row = &body["value"][0];
    assert_eq!(row["msdyn_assignedconversationcount"], 1);
    assert_eq!(row["msdyn_availableunitscapacity"], 50);
}

#[tokio::test]
async fn a_missing_supervisor_role_answers_403_by_default_and_405_when_configured() {
    for (configured, expected) in [(None, 403), (Some(405), 405)] {
        let env = start(|c| {
            c.app_user_is_supervisor = false;
            if let Some(s) = configured {
                c.role_missing_status = s;
            }
        })
        .await;
        let token = env.token().await;
        let (status, err) = env
            .modify(
                &token,
                Some(("MSCRMCallerID", ANN)),
                modify_body(ANN, builtin::BUSY),
            )
            .await;
        assert_eq!(status, expected);
        assert_eq!(err["error"]["code"], "0x80040220", "PrivilegeDenied");
        let message = err["error"]["message"].as_str().unwrap();
        assert!(message.contains("Omnichannel Supervisor"), "{message}");
        assert_eq!(ann(&env), builtin::AVAILABLE, "nothing changed");
        let (status, body) = env
            .modify(
                &token,
                Some(("MSCRMCallerID", SUE)),
                modify_body(ANN, builtin::BUSY),
            )
            .await;
        assert_eq!((status, body), (200, json!({})));
    }
}
