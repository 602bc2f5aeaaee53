//! `inspect::inspect`, the engine of `presync inspect teams FILE`: one entry per notification item
//! or presence with exactly the documented keys, rich items decrypted when keys are given.

use std::path::PathBuf;

use presync_teams::crypto::DecryptionKeys;
use presync_teams::inspect::{inspect, ENTRY_KEYS, PRESENCE_KEYS};
use serde_json::{json, Value};

const FIXTURES: [&str; 5] = [
    "basic-presence.json",
    "batch-two-subscriptions.json",
    "lifecycle-reauthorization-required.json",
    "legacy-basic-with-availability.json",
    "rich-presence.json",
];

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

fn fixture(name: &str) -> Vec<u8> {
    let path = fixtures().join("teams").join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn test_keys() -> DecryptionKeys {
    let pem = std::fs::read_to_string(fixtures().join("entra/test-only-key.pem")).expect("key");
    DecryptionKeys::from_pem("presync-test-only-cert", &pem).expect("key parses")
}

fn entries(output: &Value) -> &Vec<Value> {
    output.as_array().expect("inspect returns an array")
}

#[test]
fn every_entry_has_exactly_the_documented_keys() {
    let keys = test_keys();
    for name in FIXTURES {
        for with_keys in [None, Some(&keys)] {
            let output =
                inspect(&fixture(name), with_keys).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(!entries(&output).is_empty(), "{name}");
            for entry in entries(&output) {
                let mut found: Vec<&str> = entry
                    .as_object()
                    .expect("object")
                    .keys()
                    .map(String::as_str)
                    .collect();
                found.sort_unstable();
                let mut want = ENTRY_KEYS.to_vec();
                if entry["kind"] == "change" {
                    want.extend(["sequence_number", "canonical"]);
                }
                want.sort_unstable();
                assert_eq!(found, want, "{name}");
            }
        }
    }
}

#[test]
fn basic_and_batch_fixtures_show_users_without_availability() {
    let output = inspect(&fixture("batch-two-subscriptions.json"), None).expect("inspects");
    assert_eq!(
        output,
        json!([
            {"kind": "change", "subscription_id": "7e1d2c3b-4a59-4687-9a1b-0c2d3e4f5a6b",
             "user_id": "0b6f1e2d-7c3a-4f5e-8d9c-2a1b3c4d5e60", "availability": null,
             "activity": null, "lifecycle_event": null, "sequence_number": null,
             "canonical": null},
            {"kind": "change", "subscription_id": "1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d",
             "user_id": "c3d4e5f6-a7b8-49c0-8d1e-2f3a4b5c6d7e", "availability": null,
             "activity": null, "lifecycle_event": null, "sequence_number": null,
             "canonical": null},
        ])
    );
}

#[test]
fn lifecycle_fixture_shows_its_event() {
    let output =
        inspect(&fixture("lifecycle-reauthorization-required.json"), None).expect("inspects");
    assert_eq!(
        output,
        json!([{"kind": "lifecycle", "subscription_id": "7e1d2c3b-4a59-4687-9a1b-0c2d3e4f5a6b",
                "user_id": null, "availability": null, "activity": null,
                "lifecycle_event": "reauthorizationRequired"}])
    );
}

#[test]
fn rich_fixture_shows_availability_only_when_keys_are_given() {
    let body = fixture("rich-presence.json");
    let without = inspect(&body, None).expect("inspects");
    assert_eq!(entries(&without)[0]["availability"], Value::Null);
    assert_eq!(entries(&without)[0]["activity"], Value::Null);

    let with = inspect(&body, Some(&test_keys())).expect("inspects");
    assert_eq!(
        with,
        json!([{"kind": "change", "subscription_id": "1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d",
                "user_id": "c3d4e5f6-a7b8-49c0-8d1e-2f3a4b5c6d7e", "availability": "DoNotDisturb",
                "activity": "Presenting", "lifecycle_event": null,
                "sequence_number": "C1A2B3D4E5F60708", "canonical": "DoNotDisturb"}])
    );
}

#[test]
fn rich_item_for_an_unknown_certificate_is_an_error_naming_its_path() {
    let pem =
        std::fs::read_to_string(fixtures().join("teams/test-only-rotation-key.pem")).expect("key");
    let other_keys = DecryptionKeys::from_pem("some-other-cert", &pem).expect("key parses");
    let error = inspect(&fixture("rich-presence.json"), Some(&other_keys)).expect_err("refused");
    assert_eq!(
        error.to_string(),
        "notification body at $.value[0].encryptedContent: cannot decrypt: \
         no decryption key for encryptionCertificateId \"presync-test-only-cert\""
    );
}

#[test]
fn malformed_fixtures_give_a_one_line_error_with_a_location() {
    for (name, location) in [
        ("malformed-truncated.json", "at line 1 column"),
        ("malformed-shape.json", "at $.value[1].subscriptionId"),
    ] {
        let text = inspect(&fixture(name), None)
            .expect_err("refused")
            .to_string();
        assert!(text.contains(location), "{name}: {text}");
        assert!(!text.contains('\n'), "{name}: {text}");
        assert!(!text.contains("presync-test-state"), "{name}: {text}");
    }
}

#[test]
fn a_presence_resource_and_a_collection_show_each_presence_and_its_canonical_state() {
    let resource = inspect(&fixture("rich-presence-resource.json"), None).expect("inspects");
    assert_eq!(
        resource,
        json!([{"user_id": "c3d4e5f6-a7b8-49c0-8d1e-2f3a4b5c6d7e", "availability": "DoNotDisturb",
                "activity": "Presenting", "sequence_number": "C1A2B3D4E5F60708",
                "canonical": "DoNotDisturb"}])
    );
    // Both value sets, with and without `sequenceNumber`; a value presync does not know
    // maps to nothing.
    let collection = inspect(&fixture("presences-by-user-id.json"), None).expect("inspects");
    assert_eq!(
        collection,
        json!([
            {"user_id": "0b6f1e2d-7c3a-4f5e-8d9c-2a1b3c4d5e60", "availability": "InAMeeting",
             "activity": "Busy", "sequence_number": "C1A2B3D4E5F60709", "canonical": "Busy"},
            {"user_id": "c3d4e5f6-a7b8-49c0-8d1e-2f3a4b5c6d7e", "availability": "Busy",
             "activity": "InAMeeting", "sequence_number": null, "canonical": "Busy"},
            {"user_id": "5a6b7c8d-9e0f-4a1b-8c2d-3e4f5a6b7c8d",
             "availability": "PresenceUnknown", "activity": "PresenceUnknown",
             "sequence_number": "C1A2B3D4E5F6070A", "canonical": null},
        ])
    );
    for entry in entries(&collection) {
        let found: Vec<&str> = entry
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let mut want = PRESENCE_KEYS.to_vec();
        want.sort_unstable();
        let mut found = found;
        found.sort_unstable();
        assert_eq!(found, want);
    }
}
