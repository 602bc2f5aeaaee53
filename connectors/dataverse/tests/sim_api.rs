//! The simulator's Web API on a loopback port: tokens, CCaaS_ModifyAgentPresence with its
//! role, impersonation and agent rules, and CCaaS_GetPresence in both URL forms.
#![allow(clippy::unwrap_used)]

mod sim_support;

use presync_dataverse::context::{agent_status, parse, Derived};
use presync_dataverse::mapping::{builtin, BaseStatus, PresenceEntry};
use presync_dataverse::sim::Fault;
use serde_json::json;
use sim_support::*;

#[tokio::test]
async fn every_api_call_needs_a_bearer_token_from_the_simulated_entra() {
    let env = start(|_| {}).await;
    let url = env.url("msdyn_presences");
    let r = env.http.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers().get("www-authenticate").is_some());
    let (_, body) = reply(r).await;
    assert!(
        body["error"]["code"].as_str().unwrap().starts_with("0x"),
        "{body}"
    );
    assert!(body["error"]["message"].is_string());

    let (status, _) = env.get("not-a-token-we-issued", &url, None, None).await;
    assert_eq!(status, 401);

    let token = env.token().await;
    let (status, _) = env.get(&token, &url, None, None).await;
    assert_eq!(status, 200);
    assert!(env.sim.requests().iter().all(|r| r.caller.is_none()));
    let recorded = format!("{:?}", env.sim.requests());
    assert!(
        !recorded.contains(&token),
        "the bearer token is never recorded"
    );
}

#[tokio::test]
async fn revoked_tokens_are_refused_until_a_new_one_is_fetched() {
    let env = start(|_| {}).await;
    let url = env.url("msdyn_presences");
    let old = env.token().await;
    env.sim.inject(Fault::RevokeTokens);
    assert_eq!(env.get(&old, &url, None, None).await.0, 401);
    assert_eq!(env.get(&old, &url, None, None).await.0, 401);
    let new = env.token().await;
    assert_eq!(env.get(&new, &url, None, None).await.0, 200);
}

#[tokio::test]
async fn modify_presence_updates_the_row_and_emits_the_update_webhook() {
    let (rx, addr) = Receiver::start().await;
    let env = start(|c| c.webhook = Some(target(addr, header_auth()))).await;
    env.sim.wait_deliveries_idle().await;
    let before = env.sim.row(ANN).unwrap();
    let token = env.token().await;

    let (status, body) = env
        .modify(
            &token,
            Some(("MSCRMCallerID", SUE)),
            modify_body(ANN, builtin::BUSY),
        )
        .await;
    assert_eq!((status, body), (200, json!({})));
    let after = env.sim.row(ANN).unwrap();
    assert_eq!(after.presence_id, builtin::BUSY);
    assert_eq!(after.modified_by, "AGENT", "the UNCONFIRMED default");
    // versionnumber is one counter for the whole org (SQL rowversion), not per row.
    assert!(after.row_version > before.row_version);
    assert!(after.modified_on_ms > before.modified_on_ms);
    assert!(after.logged_in);

    env.sim.wait_deliveries_idle().await;
    let got = rx.got();
    let update = got.last().unwrap();
    assert_eq!(update.header("x-ms-dynamics-request-name"), Some("Update"));
    let ctx = parse(&update.body).unwrap();
    let Derived::Change(change) = agent_status(&ctx, false) else {
        panic!("not a change: {:?}", agent_status(&ctx, false));
    };
    assert_eq!(change.event, "Update");
    assert_eq!(change.agent_id, ANN);
    assert_eq!(change.agent_status_id, after.agent_status_id);
    assert_eq!(change.presence_id.as_deref(), Some(builtin::BUSY));
    assert_eq!(change.row_version, Some(after.row_version.to_string()));
    assert_eq!(change.modified_by.as_deref(), Some("AGENT"));
    assert_eq!(change.logged_in, Some(true));
    assert_eq!(change.source_modified_at, Some(after.modified_on_ms));

    let v = update.json();
    assert_eq!(v["Mode"], 1);
    assert_eq!(v["Stage"], 40);
    assert_eq!(v["ParentContext"]["Stage"], 30);
    assert_eq!(v["ParentContext"]["CorrelationId"], v["CorrelationId"]);
    assert_eq!(
        v["PostEntityImages"][0]["key"],
        "AsynchronousStepPrimaryName"
    );
    assert_eq!(
        ctx.primary_entity_id.as_deref(),
        Some(after.agent_status_id.as_str())
    );
    let presence_on = v["InputParameters"][0]["value"]["Attributes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["key"] == "msdyn_presencemodifiedon")
        .unwrap()["value"]
        .clone();
    assert_eq!(
        presence_on,
        format!("/Date({})/", after.modified_on_ms / 1000 * 1000),
        "whole seconds"
    );
}

#[tokio::test]
async fn setting_the_same_presence_again_still_versions_the_row_and_emits() {
    let (rx, addr) = Receiver::start().await;
    let env = start(|c| c.webhook = Some(target(addr, header_auth()))).await;
    let token = env.token().await;
    env.sim.wait_deliveries_idle().await;
    let sent = rx.got().len();
    let mut versions = vec![env.sim.row(ANN).unwrap().row_version];
    for _ in 0..2 {
        let (status, _) = env
            .modify(&token, None, modify_body(ANN, builtin::AVAILABLE))
            .await;
        assert_eq!(status, 200);
        versions.push(env.sim.row(ANN).unwrap().row_version);
    }
    assert!(versions[1] > versions[0]);
    assert_eq!(
        versions[2],
        versions[1] + 1,
        "nothing else changed in between"
    );
    env.sim.wait_deliveries_idle().await;
    assert_eq!(rx.got().len(), sent + 2);
}

#[tokio::test]
async fn only_supervisors_may_modify_presence() {
    let env = start(|c| c.app_user_is_supervisor = false).await;
    let token = env.token().await;
    let body = modify_body(ANN, builtin::BUSY);
    // The application user without the role, an agent impersonating themselves, and the
    // supervisor by either header.
    let (status, err) = env.modify(&token, None, body.clone()).await;
    assert_eq!(status, 403);
    assert_eq!(err["error"]["code"], "0x80040220", "PrivilegeDenied");
    assert_eq!(
        env.modify(&token, Some(("MSCRMCallerID", ANN)), body.clone())
            .await
            .0,
        403
    );
    assert_eq!(
        env.modify(&token, Some(("CallerObjectId", ANN_AAD)), body.clone())
            .await
            .0,
        403
    );
    assert_eq!(
        env.sim.presence(ANN).as_deref(),
        Some(builtin::AVAILABLE),
        "nothing changed"
    );
    assert_eq!(
        env.modify(&token, Some(("CallerObjectId", SUE_AAD)), body.clone())
            .await
            .0,
        200
    );
    assert_eq!(
        env.modify(&token, Some(("MSCRMCallerID", &SUE.to_uppercase())), body)
            .await
            .0,
        200
    );
    assert_eq!(env.sim.presence(ANN).as_deref(), Some(builtin::BUSY));
    let callers: Vec<_> = env
        .sim
        .requests()
        .into_iter()
        .filter_map(|r| r.caller)
        .collect();
    assert!(callers.contains(&("CallerObjectId".to_owned(), SUE_AAD.to_owned())));
}

#[tokio::test]
async fn impersonating_somebody_outside_the_org_is_refused() {
    let env = start(|_| {}).await;
    let token = env.token().await;
    let nobody = "deadbeef-0000-4000-8000-000000000000";
    let (status, _) = env
        .modify(
            &token,
            Some(("MSCRMCallerID", nobody)),
            modify_body(ANN, builtin::BUSY),
        )
        .await;
    assert_eq!(status, 403);
    let (status, _) = env
        .modify(
            &token,
            Some(("MSCRMCallerID", "not-a-guid")),
            modify_body(ANN, builtin::BUSY),
        )
        .await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn unknown_and_signed_out_agents_are_not_found() {
    let env = start(|_| {}).await;
    let token = env.token().await;
    let (status, err) = env
        .modify(
            &token,
            None,
            modify_body("deadbeef-0000-4000-8000-000000000000", builtin::BUSY),
        )
        .await;
    assert_eq!(status, 404);
    assert_eq!(err["error"]["code"], "0x80040217");
    let (status, err) = env
        .modify(&token, None, modify_body(BOB, builtin::AVAILABLE))
        .await;
    assert_eq!(status, 404, "Bob is signed out: {err}");
    assert_eq!(env.sim.presence(BOB).as_deref(), Some(builtin::OFFLINE));

    env.sim.sign_in(BOB, builtin::AWAY);
    assert_eq!(
        env.modify(&token, None, modify_body(BOB, builtin::AVAILABLE))
            .await
            .0,
        200
    );
}

#[tokio::test]
async fn signed_out_agents_can_be_set_when_the_rule_is_off() {
    let env = start(|c| c.require_signed_in = false).await;
    let token = env.token().await;
    assert_eq!(
        env.modify(&token, None, modify_body(BOB, builtin::AWAY))
            .await
            .0,
        200
    );
    let row = env.sim.row(BOB).unwrap();
    assert_eq!(row.presence_id, builtin::AWAY);
    assert!(!row.logged_in, "the API does not sign anybody in");
}

#[tokio::test]
async fn malformed_requests_are_bad_requests_and_change_nothing() {
    let env = start(|_| {}).await;
    let token = env.token().await;
    let bad = [
        json!({"ApiVersion": "1.0", "AgentId": ANN}),
        json!({"ApiVersion": 1.0, "AgentId": ANN, "PresenceId": builtin::BUSY}),
        json!({"ApiVersion": "1.0", "AgentId": ANN, "PresenceId": builtin::BUSY, "Tag": "x"}),
        json!({"ApiVersion": "1.0", "AgentId": "ann", "PresenceId": builtin::BUSY}),
        json!({"ApiVersion": "1.0", "AgentId": ANN, "PresenceId": "00000000-0000-0000-0000-000000000001"}),
        json!(["not", "an", "object"]),
    ];
    for body in bad {
        let (status, err) = env.modify(&token, None, body.clone()).await;
        assert_eq!(status, 400, "{body} -> {err}");
        assert!(err["error"]["message"].is_string());
    }
    let r = env
        .http
        .post(env.url("CCaaS_ModifyAgentPresence"))
        .bearer_auth(&token)
        .body(modify_body(ANN, builtin::BUSY).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        415,
        "a JSON body needs Content-Type: application/json"
    );
    assert_eq!(env.sim.presence(ANN).as_deref(), Some(builtin::AVAILABLE));
}

#[tokio::test]
async fn custom_presences_can_be_set() {
    let env = start(|_| {}).await;
    let focus = "aaaaaaaa-0000-4000-8000-000000000001";
    env.sim.add_custom_presence(PresenceEntry {
        id: focus.into(),
        name: "Focus".into(),
        text: "Focus time".into(),
        base: BaseStatus::BusyDnd,
    });
    let token = env.token().await;
    assert_eq!(
        env.modify(&token, None, modify_body(ANN, &focus.to_uppercase()))
            .await
            .0,
        200
    );
    assert_eq!(env.sim.presence(ANN).as_deref(), Some(focus));
}

#[tokio::test]
async fn get_presence_answers_for_the_impersonated_agent_in_both_url_forms() {
    let env = start(|_| {}).await;
    let token = env.token().await;
    env.sim.agent_sets(ANN, builtin::AWAY);
    let function = env.url("CCaaS_GetPresence(ApiVersion=@p1)?@p1='1.0'");
    for url in [function.clone(), env.url("CCaaS_GetPresence")] {
        let (status, body) = env
            .get(&token, &url, Some(("MSCRMCallerID", ANN)), None)
            .await;
        assert_eq!(status, 200, "{url}: {body}");
        assert_eq!(body["AgentId"], ANN);
        assert_eq!(body["AgentName"], "Ann Agent");
        assert_eq!(body["PresenceId"], builtin::AWAY);
        assert_eq!(body["CurrentPresenceStatusInfo"], "Away");
        assert_eq!(body["ActiveBrowserSessions"], 1);
        assert!(body["Timestamp"].as_i64().unwrap() > 1_700_000_000);
        assert!(body["AllowedChannels"].is_array() && body["DisabledChannels"].is_array());
        assert!(body["@odata.context"]
            .as_str()
            .unwrap()
            .contains("$metadata#"));
    }
    let (status, body) = env
        .get(&token, &function, Some(("CallerObjectId", BOB_AAD)), None)
        .await;
    assert_eq!(
        (status, &body["PresenceId"]),
        (200, &json!(builtin::OFFLINE))
    );
    assert_eq!(body["ActiveBrowserSessions"], 0);

    assert_eq!(
        env.get(&token, &function, None, None).await.0,
        400,
        "no caller, no agent"
    );
    assert_eq!(
        env.get(&token, &function, Some(("MSCRMCallerID", SUE)), None)
            .await
            .0,
        404,
        "not an agent"
    );
    let unquoted = env.url("CCaaS_GetPresence(ApiVersion=@p1)?@p1=1.0");
    assert_eq!(
        env.get(&token, &unquoted, Some(("MSCRMCallerID", ANN)), None)
            .await
            .0,
        400
    );
    let no_alias = env.url("CCaaS_GetPresence(ApiVersion=@p1)");
    assert_eq!(
        env.get(&token, &no_alias, Some(("MSCRMCallerID", ANN)), None)
            .await
            .0,
        400
    );
    let recorded = env.sim.requests();
    assert!(recorded
        .iter()
        .any(|r| r.path.ends_with("CCaaS_GetPresence(ApiVersion=@p1)") && r.query == "@p1='1.0'"));
}

#[tokio::test]
async fn requests_are_recorded_with_caller_and_body_but_never_the_token() {
    let env = start(|_| {}).await;
    let token = env.token().await;
    env.modify(
        &token,
        Some(("MSCRMCallerID", SUE)),
        modify_body(ANN, builtin::BUSY),
    )
    .await;
    let r = env.sim.requests().pop().unwrap();
    assert_eq!(r.method, "POST");
    assert_eq!(r.path, format!("{API}/CCaaS_ModifyAgentPresence"));
    assert_eq!(r.caller, Some(("MSCRMCallerID".to_owned(), SUE.to_owned())));
    assert_eq!(r.body, Some(modify_body(ANN, builtin::BUSY)));
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn a_certificate_credential_gets_tokens_through_a_signed_assertion() {
    let cert = include_str!("../../../fixtures/entra/test-only-cert.pem");
    let key = include_str!("../../../fixtures/entra/test-only-key.pem");
    let env = start(|c| {
        c.credential = presync_dataverse::sim::SimCredential::CertificatePem(cert.to_owned())
    })
    .await;
    let entra = presync_entra::EntraConfig::new(
        TENANT,
        CLIENT,
        format!("{}/.default", env.base),
        presync_entra::Credential::certificate(
            cert,
            key.to_owned(),
            presync_entra::AssertionMode::Ps256,
        ),
    )
    .with_authority(env.base.clone());
    let token = presync_entra::TokenClient::new(&entra)
        .unwrap()
        .token()
        .await
        .unwrap();
    let (status, _) = env
        .get(token.secret(), &env.url("msdyn_presences"), None, None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(env.sim.authority().tokens_issued(), 1);
}
