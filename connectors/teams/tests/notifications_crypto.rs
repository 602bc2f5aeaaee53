//! Rich notifications: `encrypt_for_subscription` and `DecryptionKeys::decrypt` are inverses,
//! tampering and unknown certificates are refused, rotation works, and the committed
//! `fixtures/teams/rich-presence.json` opens with the test key.

use std::path::PathBuf;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use presync_teams::crypto::{encrypt_for_subscription, CryptoError, DecryptionKeys};
use presync_teams::notifications::{parse, EncryptedContent, Notification};
use rsa::pkcs8::{DecodePrivateKey, EncodePublicKey, LineEnding};
use rsa::RsaPrivateKey;
use serde_json::{json, Value};

const CERT_ID: &str = "presync-test-only-cert";
const ROTATED_CERT_ID: &str = "presync-test-only-cert-rotated";
/// SHA-1 thumbprint of fixtures/entra/test-only-cert.pem.
const THUMBPRINT: &str = "C04C0960093B4EAB548C72462794249D9659836C";

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

fn read(path: &str) -> String {
    let path = fixtures().join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn private_pem() -> String {
    read("entra/test-only-key.pem")
}

fn rotated_private_pem() -> String {
    read("teams/test-only-rotation-key.pem")
}

fn public_pem(private_pem: &str) -> String {
    RsaPrivateKey::from_pkcs8_pem(private_pem)
        .expect("test key parses")
        .to_public_key()
        .to_public_key_pem(LineEnding::LF)
        .expect("public key encodes")
}

fn presence(id: &str) -> Value {
    json!({
        "@odata.id": format!("users/{id}/presence"),
        "@odata.type": "#microsoft.graph.presence",
        "id": id,
        "availability": "Busy",
        "activity": "InACall",
    })
}

fn sealed(payload: &Value) -> EncryptedContent {
    encrypt_for_subscription(CERT_ID, &public_pem(&private_pem()), THUMBPRINT, payload)
        .expect("encrypts")
}

fn keys() -> DecryptionKeys {
    DecryptionKeys::from_pem(CERT_ID, &private_pem()).expect("test key parses")
}

/// Flips one bit in the middle of a base64 field's decoded bytes.
fn flip_bit(field: &str) -> String {
    let mut bytes = BASE64.decode(field).expect("base64");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    BASE64.encode(bytes)
}

#[test]
fn encrypted_payload_decrypts_to_the_same_json() {
    let payload = presence("0b6f1e2d-7c3a-4f5e-8d9c-2a1b3c4d5e60");
    let content = sealed(&payload);
    assert_eq!(content.encryption_certificate_id, CERT_ID);
    assert_eq!(content.encryption_certificate_thumbprint, THUMBPRINT);
    assert_eq!(keys().decrypt(&content).expect("decrypts"), payload);
}

#[test]
fn each_encryption_uses_a_fresh_symmetric_key() {
    let payload = presence("0b6f1e2d-7c3a-4f5e-8d9c-2a1b3c4d5e60");
    let (first, second) = (sealed(&payload), sealed(&payload));
    assert_ne!(first.data_key, second.data_key);
    assert_ne!(first.data, second.data);
}

#[test]
fn tampered_data_is_refused_before_decryption() {
    let mut content = sealed(&presence("u1"));
    content.data = flip_bit(&content.data);
    let error = keys().decrypt(&content).expect_err("tampering detected");
    assert!(matches!(error, CryptoError::SignatureMismatch), "{error}");
}

#[test]
fn tampered_data_signature_is_refused() {
    let mut content = sealed(&presence("u1"));
    content.data_signature = flip_bit(&content.data_signature);
    let error = keys().decrypt(&content).expect_err("tampering detected");
    assert!(matches!(error, CryptoError::SignatureMismatch), "{error}");
}

#[test]
fn tampered_data_key_is_refused() {
    let mut content = sealed(&presence("u1"));
    content.data_key = flip_bit(&content.data_key);
    let error = keys().decrypt(&content).expect_err("tampering detected");
    assert!(matches!(error, CryptoError::KeyUnwrap), "{error}");
}

#[test]
fn non_base64_fields_are_refused_by_name() {
    let mut content = sealed(&presence("u1"));
    content.data_signature = "not base64!".to_owned();
    let error = keys().decrypt(&content).expect_err("refused");
    assert!(
        matches!(
            error,
            CryptoError::Base64 {
                field: "dataSignature",
                ..
            }
        ),
        "{error}"
    );
}

#[test]
fn unknown_certificate_id_is_refused() {
    let mut content = sealed(&presence("u1"));
    content.encryption_certificate_id = "somebody-elses-cert".to_owned();
    let error = keys().decrypt(&content).expect_err("refused");
    assert!(
        matches!(error, CryptoError::UnknownCertificate { .. }),
        "{error}"
    );
    assert_eq!(
        error.to_string(),
        "no decryption key for encryptionCertificateId \"somebody-elses-cert\""
    );
}

#[test]
fn content_sealed_for_another_key_under_our_certificate_id_is_refused() {
    let content = encrypt_for_subscription(
        CERT_ID,
        &public_pem(&rotated_private_pem()),
        THUMBPRINT,
        &presence("u1"),
    )
    .expect("encrypts");
    let error = keys().decrypt(&content).expect_err("refused");
    assert!(matches!(error, CryptoError::KeyUnwrap), "{error}");
}

#[test]
fn old_and_new_certificates_both_decrypt_during_rotation() {
    let mut keys = keys();
    keys.add_pem(ROTATED_CERT_ID, &rotated_private_pem())
        .expect("second key parses");
    assert_eq!(
        keys.certificate_ids().collect::<Vec<_>>(),
        [CERT_ID, ROTATED_CERT_ID]
    );

    let old = presence("0b6f1e2d-7c3a-4f5e-8d9c-2a1b3c4d5e60");
    let new = presence("c3d4e5f6-a7b8-49c0-8d1e-2f3a4b5c6d7e");
    let sealed_old = sealed(&old);
    let sealed_new = encrypt_for_subscription(
        ROTATED_CERT_ID,
        &public_pem(&rotated_private_pem()),
        "ROTATED-THUMBPRINT",
        &new,
    )
    .expect("encrypts");
    assert_eq!(keys.decrypt(&sealed_old).expect("old key still works"), old);
    assert_eq!(keys.decrypt(&sealed_new).expect("new key works"), new);
}

#[test]
fn public_key_that_is_not_pem_is_refused() {
    let error = encrypt_for_subscription(CERT_ID, "garbage", THUMBPRINT, &presence("u1"))
        .expect_err("refused");
    assert!(
        matches!(error, CryptoError::InvalidPublicKey { .. }),
        "{error}"
    );
}

fn rich_fixture_content() -> EncryptedContent {
    let batch = parse(read("teams/rich-presence.json").as_bytes()).expect("fixture parses");
    match batch.items.as_slice() {
        [Notification::Change(item)] => item.encrypted.clone().expect("fixture is rich"),
        other => panic!("expected one change item, got {other:?}"),
    }
}

#[test]
fn committed_rich_fixture_decrypts_to_its_plain_resource_with_the_test_key() {
    let want: Value =
        serde_json::from_str(&read("teams/rich-presence-resource.json")).expect("plain resource");
    assert_eq!(
        keys().decrypt(&rich_fixture_content()).expect("decrypts"),
        want
    );
}

/// Rewrites `fixtures/teams/rich-presence.json` from `rich-presence-resource.json` with a fresh
/// symmetric key. Run by hand after changing the plain resource:
/// `cargo test -p presync-teams --test notifications_crypto -- --ignored`.
#[test]
#[ignore = "writes a fixture; run by hand"]
fn regenerate_rich_presence_fixture() {
    let resource: Value =
        serde_json::from_str(&read("teams/rich-presence-resource.json")).expect("plain resource");
    let user_id = resource["id"]
        .as_str()
        .expect("resource has an id")
        .to_owned();
    let content = sealed(&resource);
    let body = json!({
        "value": [{
            "subscriptionId": "1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d",
            "clientState": "presync-test-state-two",
            "changeType": "updated",
            "tenantId": "9d8c7b6a-5f4e-4d3c-8b2a-1f0e9d8c7b6a",
            "resource": format!("communications/presences/{user_id}"),
            "subscriptionExpirationDateTime": "2031-03-14T10:05:00.0000000Z",
            "resourceData": {
                "@odata.id": format!("users/{user_id}/presence"),
                "@odata.type": "#microsoft.graph.presence",
                "id": user_id,
            },
            "encryptedContent": {
                "data": content.data,
                "dataSignature": content.data_signature,
                "dataKey": content.data_key,
                "encryptionCertificateId": content.encryption_certificate_id,
                "encryptionCertificateThumbprint": content.encryption_certificate_thumbprint,
            },
            "organizationId": "9d8c7b6a-5f4e-4d3c-8b2a-1f0e9d8c7b6a",
        }],
        // A made-up, unsigned JWT: {"alg":"none"} . {"aud":"presync-test-only"} . "test-only".
        "validationTokens": ["eyJhbGciOiJub25lIn0.eyJhdWQiOiJwcmVzeW5jLXRlc3Qtb25seSJ9.dGVzdC1vbmx5"],
    });
    let text = serde_json::to_string_pretty(&body).expect("serialises") + "\n";
    std::fs::write(fixtures().join("teams/rich-presence.json"), text).expect("fixture written");
}
