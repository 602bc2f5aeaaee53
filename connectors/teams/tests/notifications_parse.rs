//! `notifications::parse` on the recorded shapes in `fixtures/teams/`, the per-item
//! `clientState` check, and the validation-handshake reply.

use std::path::PathBuf;

use presync_teams::notifications::{
    client_state_matches, parse, validation_response, Batch, ChangeItem, LifecycleItem,
    Notification, NotificationError,
};

const USER_A: &str = "0b6f1e2d-7c3a-4f5e-8d9c-2a1b3c4d5e60";
const USER_B: &str = "c3d4e5f6-a7b8-49c0-8d1e-2f3a4b5c6d7e";
const SUB_ONE: &str = "7e1d2c3b-4a59-4687-9a1b-0c2d3e4f5a6b";
const SUB_TWO: &str = "1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d";
const TENANT: &str = "5f2c7d1e-3a4b-4c8d-9e0f-1a2b3c4d5e6f";

fn fixture(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/teams")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn parse_fixture(name: &str) -> Batch {
    parse(&fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn change(notification: &Notification) -> &ChangeItem {
    match notification {
        Notification::Change(item) => item,
        other => panic!("expected a change item, got {other:?}"),
    }
}

fn lifecycle(notification: &Notification) -> &LifecycleItem {
    match notification {
        Notification::Lifecycle(item) => item,
        other => panic!("expected a lifecycle item, got {other:?}"),
    }
}

#[test]
fn basic_presence_fixture_is_one_change_without_availability() {
    let batch = parse_fixture("basic-presence.json");
    assert!(batch.validation_tokens.is_empty());
    let [item] = batch.items.as_slice() else {
        panic!("expected one item, got {:?}", batch.items);
    };
    let item = change(item);
    assert_eq!(item.subscription_id, SUB_ONE);
    assert_eq!(item.client_state.as_deref(), Some("presync-test-state-one"));
    assert_eq!(item.change_type.as_deref(), Some("updated"));
    assert_eq!(
        item.resource.as_deref(),
        Some(format!("communications/presences/{USER_A}").as_str())
    );
    assert_eq!(item.user_id.as_deref(), Some(USER_A));
    assert_eq!(item.tenant_id.as_deref(), Some(TENANT));
    assert_eq!(
        item.resource_data.as_ref().map(|d| &d["id"]),
        Some(&USER_A.into())
    );
    assert_eq!(item.encrypted, None);
    assert_eq!(item.sequence_number, None);
    assert_eq!(item.availability, None);
    assert_eq!(item.activity, None);
}

#[test]
fn batch_fixture_is_two_changes_for_two_subscriptions_with_lowercase_user_ids() {
    let batch = parse_fixture("batch-two-subscriptions.json");
    let items: Vec<&ChangeItem> = batch.items.iter().map(change).collect();
    assert_eq!(
        items
            .iter()
            .map(|i| i.subscription_id.as_str())
            .collect::<Vec<_>>(),
        [SUB_ONE, SUB_TWO]
    );
    // The first item names its user in upper case; ids are compared lowercase.
    assert_eq!(
        items
            .iter()
            .map(|i| i.user_id.as_deref())
            .collect::<Vec<_>>(),
        [Some(USER_A), Some(USER_B)]
    );
    assert_ne!(items[0].tenant_id, items[1].tenant_id);
}

#[test]
fn lifecycle_fixture_is_a_reauthorization_required_item() {
    let batch = parse_fixture("lifecycle-reauthorization-required.json");
    let [item] = batch.items.as_slice() else {
        panic!("expected one item, got {:?}", batch.items);
    };
    assert_eq!(item.subscription_id(), SUB_ONE);
    let item = lifecycle(item);
    assert_eq!(item.lifecycle_event, "reauthorizationRequired");
    assert_eq!(item.client_state.as_deref(), Some("presync-test-state-one"));
    assert_eq!(
        item.subscription_expiration.as_deref(),
        Some("2031-03-14T10:00:00.0000000Z")
    );
    assert_eq!(item.tenant_id.as_deref(), Some(TENANT));
}

#[test]
fn legacy_basic_fixture_still_yields_availability_and_activity() {
    let batch = parse_fixture("legacy-basic-with-availability.json");
    let item = change(&batch.items[0]);
    assert_eq!(item.availability.as_deref(), Some("Busy"));
    assert_eq!(item.activity.as_deref(), Some("InACall"));
}

#[test]
fn rich_fixture_keeps_encrypted_content_and_validation_tokens() {
    let batch = parse_fixture("rich-presence.json");
    assert_eq!(batch.validation_tokens.len(), 1);
    let item = change(&batch.items[0]);
    assert_eq!(item.user_id.as_deref(), Some(USER_B));
    let content = item.encrypted.as_ref().expect("rich item");
    assert_eq!(content.encryption_certificate_id, "presync-test-only-cert");
    assert!(!content.data.is_empty() && !content.data_key.is_empty());
    // Availability is only inside the ciphertext.
    assert_eq!(item.availability, None);
}

#[test]
fn truncated_fixture_is_refused_with_line_and_column() {
    let error = parse(&fixture("malformed-truncated.json")).expect_err("refused");
    assert!(
        matches!(error, NotificationError::Syntax { line: 1, column, .. } if column > 200),
        "{error:?}"
    );
    let text = error.to_string();
    assert!(
        text.starts_with("notification body is not valid JSON at line 1 column "),
        "{text}"
    );
    assert!(!text.contains('\n'), "{text}");
}

#[test]
fn malformed_shape_fixture_is_refused_with_the_json_path() {
    let error = parse(&fixture("malformed-shape.json")).expect_err("refused");
    assert_eq!(
        error.to_string(),
        "notification body at $.value[1].subscriptionId: expected a string or null, found a number"
    );
}

#[test]
fn missing_value_and_non_object_items_are_refused_with_their_path() {
    let cases: [(&[u8], &str); 5] = [
        (br#"{}"#, "notification body at $.value: missing (required)"),
        (
            br#"[]"#,
            "notification body at $: expected an object, found an array",
        ),
        (
            br#"{"value":[1]}"#,
            "notification body at $.value[0]: expected an object, found a number",
        ),
        (
            br#"{"value":[{}]}"#,
            "notification body at $.value[0].subscriptionId: missing (required)",
        ),
        (
            br#"{"value":[{"subscriptionId":"s","encryptedContent":{"data":"x"}}]}"#,
            "notification body at $.value[0].encryptedContent.dataKey: missing (required)",
        ),
    ];
    for (body, want) in cases {
        let error = parse(body).expect_err("refused");
        assert_eq!(error.to_string(), want);
    }
}

#[test]
fn unknown_fields_and_null_validation_tokens_are_tolerated() {
    let body = br#"{"value":[{"subscriptionId":"s","futureField":{"x":[1,2]},"resourceData":null,
        "encryptedContent":null,"lifecycleEvent":null}],"validationTokens":null,"@odata.context":"x"}"#;
    let batch = parse(body).expect("parses");
    let item = change(&batch.items[0]);
    assert_eq!(item.subscription_id, "s");
    assert_eq!(item.user_id, None);
    assert!(batch.validation_tokens.is_empty());
}

#[test]
fn user_id_falls_back_to_resource_data_id_and_sequence_number_is_read() {
    let body = br#"{"value":[{"subscriptionId":"s","resourceData":{"id":"ABC-DEF","sequenceNumber":"0042"}}]}"#;
    let batch = parse(body).expect("parses");
    let item = change(&batch.items[0]);
    assert_eq!(item.user_id.as_deref(), Some("abc-def"));
    assert_eq!(item.sequence_number.as_deref(), Some("0042"));
}

#[test]
fn wrong_client_state_is_detected_per_item_in_a_batch() {
    let mut batch = parse_fixture("batch-two-subscriptions.json");
    let expected_for = |subscription: &str| match subscription {
        SUB_ONE => "presync-test-state-one",
        SUB_TWO => "presync-test-state-two",
        other => panic!("unknown subscription {other}"),
    };
    let verdicts = |batch: &Batch| -> Vec<bool> {
        batch
            .items
            .iter()
            .map(|n| client_state_matches(n.client_state(), expected_for(n.subscription_id())))
            .collect()
    };
    assert_eq!(verdicts(&batch), [true, true]);

    // A forged second item: the first still passes, the second does not.
    if let Notification::Change(item) = &mut batch.items[1] {
        item.client_state = Some("presync-test-state-one".to_owned());
    }
    assert_eq!(verdicts(&batch), [true, false]);

    // A missing clientState never matches.
    if let Notification::Change(item) = &mut batch.items[0] {
        item.client_state = None;
    }
    assert_eq!(verdicts(&batch), [false, false]);
}

#[test]
fn client_state_comparison_is_exact() {
    assert!(client_state_matches(Some("secret"), "secret"));
    assert!(!client_state_matches(Some("Secret"), "secret"));
    assert!(!client_state_matches(Some("secret "), "secret"));
    assert!(!client_state_matches(Some("secre"), "secret"));
    assert!(!client_state_matches(None, "secret"));
}

#[test]
fn validation_response_url_decodes_the_token() {
    let cases = [
        ("validationToken=abc", "abc"),
        ("?validationToken=abc", "abc"),
        ("validationToken=a%2Bb", "a+b"),
        ("validationToken=a+b", "a b"),
        ("validationToken=a%20b%3Ac%2Fd%3D%3D", "a b:c/d=="),
        (
            "validationToken=Validation%3A+Testing+client+application+reachability",
            "Validation: Testing client application reachability",
        ),
        ("validationToken=caf%C3%A9", "café"),
        ("tenant=x&validationToken=tok%26en&other=1", "tok&en"),
        ("validationToken=", ""),
    ];
    for (query, want) in cases {
        assert_eq!(
            validation_response(Some(query)).as_deref(),
            Some(want),
            "{query}"
        );
    }
}

#[test]
fn validation_response_is_none_without_a_token() {
    assert_eq!(validation_response(None), None);
    assert_eq!(validation_response(Some("")), None);
    assert_eq!(validation_response(Some("validationtoken=abc")), None);
    assert_eq!(validation_response(Some("tenant=x")), None);
}
