//! Deriving an agent-status change: column fallback, read-back, ignored events, delivery keys.

#![allow(clippy::unwrap_used)]

use presync_dataverse::context::{agent_status, parse, AgentStatusChange, Derived};
use serde_json::{json, Value as Json};

const UPDATE: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../fixtures/dataverse/ms-docs-agentstatus-update-modify-presence.json"
));

const AGENT_STATUS_ID: &str = "00aa00aa-bb11-cc22-dd33-44ee44ee44ee";

fn update_sample() -> Json {
    serde_json::from_str(UPDATE).unwrap()
}

fn target_attributes(body: &mut Json) -> &mut Vec<Json> {
    body["InputParameters"][0]["value"]["Attributes"]
        .as_array_mut()
        .unwrap()
}

fn remove_from_target(body: &mut Json, key: &str) {
    target_attributes(body).retain(|a| a["key"] != key);
}

fn post_image_attributes(body: &mut Json) -> &mut Vec<Json> {
    body["PostEntityImages"][0]["value"]["Attributes"]
        .as_array_mut()
        .unwrap()
}

fn derive(body: &Json, size_exceeded: bool) -> Derived {
    agent_status(&parse(body.to_string().as_bytes()).unwrap(), size_exceeded)
}

fn change(body: &Json) -> AgentStatusChange {
    match derive(body, false) {
        Derived::Change(change) => change,
        other => panic!("expected a change, got {other:?}"),
    }
}

fn presence(id: &str) -> Json {
    json!({
        "__type": "EntityReference:http://schemas.microsoft.com/xrm/2011/Contracts",
        "Id": id, "KeyAttributes": [], "LogicalName": "msdyn_presence", "Name": null, "RowVersion": null
    })
}

#[test]
fn column_missing_from_the_target_is_read_from_the_post_image() {
    let mut body = update_sample();
    remove_from_target(&mut body, "msdyn_currentpresenceid");
    remove_from_target(&mut body, "msdyn_presencemodifiedby");
    let attributes = post_image_attributes(&mut body);
    attributes.push(json!({"key": "msdyn_currentpresenceid", "value": presence("image-presence")}));
    attributes.push(json!({"key": "msdyn_presencemodifiedby", "value": "SYSTEM"}));
    let change = change(&body);
    assert_eq!(change.presence_id.as_deref(), Some("image-presence"));
    assert_eq!(change.modified_by.as_deref(), Some("SYSTEM"));
    assert_eq!(
        change.agent_id, "97c90b02-4e38-ef11-a315-000d3a5a54dc",
        "still from the Target"
    );
}

#[test]
fn target_column_wins_over_the_post_image() {
    let mut body = update_sample();
    let attributes = post_image_attributes(&mut body);
    attributes.push(json!({"key": "msdyn_currentpresenceid", "value": presence("image-presence")}));
    assert_eq!(
        change(&body).presence_id.as_deref(),
        Some("efdeb843-c07a-e811-8162-000d3aa11f50")
    );
}

#[test]
fn target_column_set_to_null_clears_the_presence_without_falling_back() {
    let mut body = update_sample();
    remove_from_target(&mut body, "msdyn_currentpresenceid");
    target_attributes(&mut body).push(json!({"key": "msdyn_currentpresenceid", "value": null}));
    post_image_attributes(&mut body)
        .push(json!({"key": "msdyn_currentpresenceid", "value": presence("image-presence")}));
    assert_eq!(change(&body).presence_id, None);
}

#[test]
fn pre_images_are_never_used() {
    let mut body = update_sample();
    remove_from_target(&mut body, "msdyn_currentpresenceid");
    body["PreEntityImages"] = json!([{"key": "pre", "value": {
        "LogicalName": "msdyn_agentstatus",
        "Attributes": [{"key": "msdyn_currentpresenceid", "value": presence("old-presence")}]
    }}]);
    assert_eq!(change(&body).presence_id, None);
}

#[test]
fn agent_id_from_the_post_image_when_the_target_lacks_it() {
    let mut body = update_sample();
    remove_from_target(&mut body, "msdyn_agentid");
    post_image_attributes(&mut body).push(json!({"key": "msdyn_agentid", "value": {
        "__type": "EntityReference:http://schemas.microsoft.com/xrm/2011/Contracts",
        "Id": "image-agent", "LogicalName": "systemuser"
    }}));
    assert_eq!(change(&body).agent_id, "image-agent");
}

#[test]
fn missing_agent_id_is_ignored_or_read_back_when_the_size_was_exceeded() {
    let mut body = update_sample();
    remove_from_target(&mut body, "msdyn_agentid");
    let Derived::Ignored { reason, entity } = derive(&body, false) else {
        panic!("no agent, no change");
    };
    assert!(reason.contains("msdyn_agentid"), "{reason}");
    assert_eq!(entity, "msdyn_agentstatus");
    assert!(matches!(derive(&body, true), Derived::ReadBack { .. }));
}

#[test]
fn milliseconds_column_is_preferred_for_the_source_time() {
    let mut body = update_sample();
    target_attributes(&mut body).push(
        json!({"key": "msdyn_presencemodifiedonwithmilliseconds", "value": "/Date(1722582038123)/"}),
    );
    assert_eq!(change(&body).source_modified_at, Some(1_722_582_038_123));
}

#[test]
fn size_exceeded_body_stripped_of_target_and_images_is_read_back() {
    let mut body = update_sample();
    let object = body.as_object_mut().unwrap();
    for stripped in [
        "ParentContext",
        "InputParameters",
        "PreEntityImages",
        "PostEntityImages",
    ] {
        object.remove(stripped);
    }
    let expected = Derived::ReadBack {
        entity: "msdyn_agentstatus".into(),
        id: AGENT_STATUS_ID.into(),
        event: "Update".into(),
        delivery_key: format!("dataverse:1a14c3ec-9c50-ef11-bfe3-00224802dbb1:{AGENT_STATUS_ID}:-"),
    };
    assert_eq!(derive(&body, true), expected);
    let Derived::Ignored { reason, .. } = derive(&body, false) else {
        panic!("without the header a stripped body is not read back");
    };
    assert_eq!(reason, "no Target in the body");
}

#[test]
fn other_messages_and_entities_are_ignored_with_a_reason() {
    let mut body = update_sample();
    body["MessageName"] = json!("Delete");
    let Derived::Ignored { reason, entity } = derive(&body, false) else {
        panic!("Delete is not a presence change");
    };
    assert!(reason.contains("Delete"), "{reason}");
    assert_eq!(entity, "msdyn_agentstatus");

    let mut body = update_sample();
    body["PrimaryEntityName"] = json!("msdyn_agentstatushistory");
    let Derived::Ignored { entity, .. } = derive(&body, true) else {
        panic!("only msdyn_agentstatus carries presence");
    };
    assert_eq!(entity, "msdyn_agentstatushistory");

    let Derived::Ignored { entity, .. } = derive(&json!({}), true) else {
        panic!("an empty context is ignored");
    };
    assert_eq!(entity, "");
}

#[test]
fn redelivery_of_the_same_event_has_the_same_delivery_key() {
    let first = change(&update_sample());
    // A redelivery is byte-for-byte the same event, possibly re-serialized in another order.
    let mut again = update_sample();
    again.as_object_mut().unwrap().remove("ParentContext");
    assert_eq!(change(&again).delivery_key, first.delivery_key);
}

#[test]
fn different_row_version_gives_a_different_delivery_key() {
    let first = change(&update_sample());
    let mut next = update_sample();
    next["InputParameters"][0]["value"]["RowVersion"] = json!("5948261");
    let second = change(&next);
    assert_ne!(second.delivery_key, first.delivery_key);
    assert!(
        second.delivery_key.ends_with(":5948261"),
        "{}",
        second.delivery_key
    );
}

#[test]
fn different_operation_gives_a_different_delivery_key() {
    let first = change(&update_sample());
    let mut next = update_sample();
    next["OperationId"] = json!("2b25d4fd-0000-0000-0000-000000000000");
    assert_ne!(change(&next).delivery_key, first.delivery_key);
}

#[test]
fn delivery_key_falls_back_to_request_then_correlation_id() {
    let mut body = update_sample();
    body.as_object_mut().unwrap().remove("OperationId");
    let key = change(&body).delivery_key;
    assert_eq!(
        key,
        format!("dataverse:84d03007-6a8f-41da-aeae-7b6460bb7a04:{AGENT_STATUS_ID}:5948260")
    );
    body["RequestId"] = Json::Null;
    let key = change(&body).delivery_key;
    assert_eq!(
        key,
        format!("dataverse:dddd3333-ee44-5555-66ff-777777aaaaaa:{AGENT_STATUS_ID}:5948260")
    );
}

#[test]
fn row_version_falls_back_to_a_post_image() {
    let mut body = update_sample();
    body["InputParameters"][0]["value"]["RowVersion"] = Json::Null;
    body["PostEntityImages"][0]["value"]["RowVersion"] = json!("777");
    assert_eq!(change(&body).row_version.as_deref(), Some("777"));
}
