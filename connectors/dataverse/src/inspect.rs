//! What `presync inspect dataverse FILE` prints: one JSON object that says what presync would
//! make of a recorded webhook body, without a database or a network.
//!
//! [`inspect`] parses the body with [`crate::context::parse`], derives the presence change with
//! [`crate::context::agent_status`] and maps the presence id through the caller's catalogue. The
//! binary reads the file, prints the object, and on a [`ParseError`] prints its one-line
//! `Display` and exits with status 2.

use presync_engine::Availability;
use serde_json::{json, Value as Json};

use crate::context::{agent_status, parse, to_rfc3339_millis, Derived, ParseError};

/// Describes a webhook body as one JSON object.
///
/// - a change: exactly `system`, `event`, `entity`, `agent_id`, `presence_id`, `canonical` (the
///   availability's name, or null when the presence is absent or `canonical` does not know it),
///   `source_modified_at` (RFC 3339 UTC with milliseconds, or null), `modified_by`,
///   `row_version` and `delivery_key`;
/// - an ignored event: `{"ignored": REASON, "entity": NAME}`;
/// - a body stripped by the size limit: `{"read_back": true, "entity", "agent_status_id",
///   "event", "delivery_key"}`.
///
/// `size_exceeded` is whether the delivery carried `x-ms-dynamics-msg-size-exceeded`.
pub fn inspect(
    body: &[u8],
    size_exceeded: bool,
    canonical: &dyn Fn(&str) -> Option<Availability>,
) -> Result<Json, ParseError> {
    let ctx = parse(body)?;
    Ok(match agent_status(&ctx, size_exceeded) {
        Derived::Change(change) => {
            let availability = change.presence_id.as_deref().and_then(canonical);
            json!({
                "system": "dataverse",
                "event": change.event,
                "entity": crate::context::AGENT_STATUS_ENTITY,
                "agent_id": change.agent_id,
                "presence_id": change.presence_id,
                "canonical": availability.map(Availability::as_str),
                "source_modified_at": change.source_modified_at.map(to_rfc3339_millis),
                "modified_by": change.modified_by,
                "row_version": change.row_version,
                "delivery_key": change.delivery_key,
            })
        }
        Derived::ReadBack {
            entity,
            id,
            event,
            delivery_key,
        } => json!({
            "read_back": true,
            "entity": entity,
            "agent_status_id": id,
            "event": event,
            "delivery_key": delivery_key,
        }),
        Derived::Ignored { reason, entity } => json!({ "ignored": reason, "entity": entity }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const UPDATE: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../fixtures/dataverse/ms-docs-agentstatus-update-modify-presence.json"
    ));
    const CREATE: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../fixtures/dataverse/ms-docs-agentstatus-create-new-agent.json"
    ));
    const ACCOUNT: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../fixtures/dataverse/albanian-xrm-DeserializationFromTextSamplesTests-0.json"
    ));

    /// The five built-in presence ids (reference §2.1) that the fixtures use.
    fn builtin(id: &str) -> Option<Availability> {
        match id {
            "efdeb843-c07a-e811-8162-000d3aa11f50" => Some(Availability::Busy),
            "70139190-c07a-e811-8162-000d3aa11f50" => Some(Availability::Offline),
            _ => None,
        }
    }

    fn keys(v: &Json) -> Vec<&str> {
        let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        keys
    }

    #[test]
    fn update_sample_prints_exactly_the_documented_keys_and_values() {
        let out = inspect(UPDATE.as_bytes(), false, &builtin).unwrap();
        let expected = json!({
            "system": "dataverse",
            "event": "Update",
            "entity": "msdyn_agentstatus",
            "agent_id": "97c90b02-4e38-ef11-a315-000d3a5a54dc",
            "presence_id": "efdeb843-c07a-e811-8162-000d3aa11f50",
            "canonical": "Busy",
            "source_modified_at": "2024-08-02T07:00:38.000Z",
            "modified_by": "AGENT",
            "row_version": "5948260",
            "delivery_key": "dataverse:1a14c3ec-9c50-ef11-bfe3-00224802dbb1:00aa00aa-bb11-cc22-dd33-44ee44ee44ee:5948260",
        });
        assert_eq!(out, expected);
        assert_eq!(keys(&out), keys(&expected));
    }

    #[test]
    fn create_sample_maps_the_new_agent_to_offline() {
        let out = inspect(CREATE.as_bytes(), false, &builtin).unwrap();
        assert_eq!(out["event"], "Create");
        assert_eq!(out["canonical"], "Offline");
        assert_eq!(out["modified_by"], "SYSTEM");
        assert_eq!(out["source_modified_at"], "2024-07-24T10:28:24.000Z");
        assert_eq!(out["row_version"], Json::Null);
    }

    #[test]
    fn unknown_presence_id_prints_null_canonical() {
        let out = inspect(UPDATE.as_bytes(), false, &|_| None).unwrap();
        assert_eq!(out["canonical"], Json::Null);
        assert_eq!(out["presence_id"], "efdeb843-c07a-e811-8162-000d3aa11f50");
    }

    #[test]
    fn other_entity_prints_ignored_with_its_name() {
        let out = inspect(ACCOUNT.as_bytes(), false, &builtin).unwrap();
        assert_eq!(keys(&out), ["entity", "ignored"]);
        assert_eq!(out["entity"], "account");
        assert!(out["ignored"].as_str().unwrap().contains("account"));
    }

    #[test]
    fn stripped_body_with_size_exceeded_prints_read_back() {
        let body = r#"{"MessageName":"Update","PrimaryEntityName":"msdyn_agentstatus",
            "PrimaryEntityId":"00aa00aa-bb11-cc22-dd33-44ee44ee44ee","OperationId":"op-1"}"#;
        let out = inspect(body.as_bytes(), true, &builtin).unwrap();
        let expected = json!({
            "read_back": true,
            "entity": "msdyn_agentstatus",
            "agent_status_id": "00aa00aa-bb11-cc22-dd33-44ee44ee44ee",
            "event": "Update",
            "delivery_key": "dataverse:op-1:00aa00aa-bb11-cc22-dd33-44ee44ee44ee:-",
        });
        assert_eq!(out, expected);
    }

    #[test]
    fn malformed_body_is_an_error_with_a_one_line_message() {
        let err = inspect(b"{\"InputParameters\": {}}", false, &builtin).unwrap_err();
        let message = err.to_string();
        assert!(!message.contains('\n'), "{message}");
        assert!(
            message.starts_with("InputParameters: expected an array"),
            "{message}"
        );
    }
}
