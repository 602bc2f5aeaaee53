//! Microsoft Graph change notifications for presence: the validation handshake, parsing a delivered
//! `changeNotificationCollection`, and the per-item `clientState` check (graph.md §6.2 to §6.7).
//!
//! Start with [`parse`]: it turns the raw body of a delivery into a [`Batch`] of
//! [`Notification`]s, either a [`ChangeItem`] (a presence changed; basic or rich) or a
//! [`LifecycleItem`] (`reauthorizationRequired` and friends). Unknown fields are tolerated; known
//! fields with the wrong type are refused with their JSON path. Rich items keep their
//! [`EncryptedContent`] for [`crate::crypto::DecryptionKeys`]; feed the decrypted resource back
//! with [`ChangeItem::apply_resource_data`].
//!
//! Before doing anything expensive with an item (decrypting it, enqueueing it), check its
//! `clientState` with [`client_state_matches`]: a batch can mix subscriptions, so the check is per
//! item. `clientState` and `validationTokens` are secrets: `Debug` never prints them.

use std::fmt;

use serde_json::{Map, Value};
use subtle::ConstantTimeEq;

use crate::crypto::CryptoError;

/// What went wrong while reading a notification body, and where.
///
/// `Display` is one line: what is wrong and where (serde's line and column for malformed JSON, a
/// JSON path such as `$.value[1].subscriptionId` for a wrong shape). It never contains a
/// `clientState`, a token or key material.
#[derive(Debug, thiserror::Error)]
pub enum NotificationError {
    /// The body is not JSON (truncated, bad syntax, invalid UTF-8).
    #[error("notification body is not valid JSON at line {line} column {column}: {reason}")]
    Syntax {
        /// 1-based line of the first error.
        line: usize,
        /// 1-based column of the first error.
        column: usize,
        /// serde's description of the error, without the position.
        reason: String,
    },
    /// The body is JSON but not a `changeNotificationCollection`.
    #[error("notification body at {path}: {problem}")]
    Shape {
        /// JSON path of the offending value, e.g. `$.value[0].clientState`.
        path: String,
        /// What is wrong with it.
        problem: String,
    },
    /// A rich notification could not be decrypted (only from [`crate::inspect::inspect`]).
    #[error("notification body at {path}: cannot decrypt: {error}")]
    Decrypt {
        /// JSON path of the `encryptedContent`.
        path: String,
        /// Why decryption failed; its own `Display` is self-contained.
        error: CryptoError,
    },
}

impl NotificationError {
    /// The JSON path of the problem, when it is a shape or decryption problem.
    pub fn path(&self) -> Option<&str> {
        match self {
            Self::Syntax { .. } => None,
            Self::Shape { path, .. } | Self::Decrypt { path, .. } => Some(path),
        }
    }

    fn shape(path: &str, problem: impl Into<String>) -> Self {
        Self::Shape {
            path: path.to_owned(),
            problem: problem.into(),
        }
    }

    fn syntax(error: &serde_json::Error) -> Self {
        let text = error.to_string();
        let reason = match text.rsplit_once(" at line ") {
            Some((reason, _)) => reason.to_owned(),
            None => text,
        };
        Self::Syntax {
            line: error.line(),
            column: error.column(),
            reason,
        }
    }
}

/// Result type of this module.
pub type Result<T, E = NotificationError> = std::result::Result<T, E>;

/// One delivered `changeNotificationCollection`.
#[derive(Clone, PartialEq, Eq)]
pub struct Batch {
    /// The notifications, in delivery order.
    pub items: Vec<Notification>,
    /// The top-level `validationTokens` (rich notifications only; empty when absent or null).
    /// Secret-ish: `Debug` prints only how many there are.
    pub validation_tokens: Vec<String>,
}

impl fmt::Debug for Batch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Batch")
            .field("items", &self.items)
            .field(
                "validation_tokens",
                &format_args!("[{} redacted]", self.validation_tokens.len()),
            )
            .finish()
    }
}

/// One item of a delivery.
// Items live for one request and are matched on constantly; boxing the change would only add noise.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notification {
    /// A resource changed (basic or rich notification).
    Change(ChangeItem),
    /// A subscription life-cycle event (the item has a `lifecycleEvent`).
    Lifecycle(LifecycleItem),
}

impl Notification {
    /// The subscription the item belongs to.
    pub fn subscription_id(&self) -> &str {
        match self {
            Self::Change(item) => &item.subscription_id,
            Self::Lifecycle(item) => &item.subscription_id,
        }
    }

    /// The `clientState` the item presented, if any.
    pub fn client_state(&self) -> Option<&str> {
        match self {
            Self::Change(item) => item.client_state.as_deref(),
            Self::Lifecycle(item) => item.client_state.as_deref(),
        }
    }
}

/// A change notification for one presence.
#[derive(Clone, PartialEq, Eq)]
pub struct ChangeItem {
    /// `subscriptionId`.
    pub subscription_id: String,
    /// `clientState` as presented (secret: redacted in `Debug`).
    pub client_state: Option<String>,
    /// `changeType` (`updated` for presence).
    pub change_type: Option<String>,
    /// `resource`, e.g. `communications/presences/{id}`.
    pub resource: Option<String>,
    /// The user's object id, lowercase: from `resource` or else `resourceData.id`.
    pub user_id: Option<String>,
    /// `tenantId`.
    pub tenant_id: Option<String>,
    /// `resourceData` (an object), or the decrypted resource after
    /// [`ChangeItem::apply_resource_data`].
    pub resource_data: Option<Value>,
    /// `encryptedContent` of a rich notification.
    pub encrypted: Option<EncryptedContent>,
    /// `resourceData.sequenceNumber`, if present.
    pub sequence_number: Option<String>,
    /// `resourceData.availability`: only old-style basic or decrypted rich notifications carry it.
    pub availability: Option<String>,
    /// `resourceData.activity`: only old-style basic or decrypted rich notifications carry it.
    pub activity: Option<String>,
}

impl ChangeItem {
    /// Takes the decrypted resource of a rich notification (or the body of a follow-up GET) as
    /// this item's resource data, and fills `availability`, `activity`, `sequence_number` and a
    /// missing `user_id` from it.
    pub fn apply_resource_data(&mut self, data: Value) {
        if let Some(object) = data.as_object() {
            self.availability = string_member(object, "availability");
            self.activity = string_member(object, "activity");
            self.sequence_number = string_member(object, "sequenceNumber");
            if self.user_id.is_none() {
                self.user_id = string_member(object, "id").and_then(|id| normalise_user_id(&id));
            }
        }
        self.resource_data = Some(data);
    }
}

impl fmt::Debug for ChangeItem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChangeItem")
            .field("subscription_id", &self.subscription_id)
            .field("client_state", &redacted(self.client_state.as_deref()))
            .field("change_type", &self.change_type)
            .field("resource", &self.resource)
            .field("user_id", &self.user_id)
            .field("tenant_id", &self.tenant_id)
            .field("resource_data", &self.resource_data)
            .field("encrypted", &self.encrypted)
            .field("sequence_number", &self.sequence_number)
            .field("availability", &self.availability)
            .field("activity", &self.activity)
            .finish()
    }
}

/// A lifecycle notification (graph.md §6.7).
#[derive(Clone, PartialEq, Eq)]
pub struct LifecycleItem {
    /// `subscriptionId`.
    pub subscription_id: String,
    /// `clientState` as presented (secret: redacted in `Debug`).
    pub client_state: Option<String>,
    /// `lifecycleEvent` as sent: `reauthorizationRequired`, `subscriptionRemoved`, `missed`, or
    /// anything newer.
    pub lifecycle_event: String,
    /// `subscriptionExpirationDateTime`, unparsed.
    pub subscription_expiration: Option<String>,
    /// `tenantId`.
    pub tenant_id: Option<String>,
}

impl fmt::Debug for LifecycleItem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LifecycleItem")
            .field("subscription_id", &self.subscription_id)
            .field("client_state", &redacted(self.client_state.as_deref()))
            .field("lifecycle_event", &self.lifecycle_event)
            .field("subscription_expiration", &self.subscription_expiration)
            .field("tenant_id", &self.tenant_id)
            .finish()
    }
}

/// `encryptedContent` of a rich notification (graph.md §6.5); all fields are base64 or ids as sent.
#[derive(Clone, PartialEq, Eq)]
pub struct EncryptedContent {
    /// `data`: base64 of the AES-256-CBC ciphertext.
    pub data: String,
    /// `dataKey`: base64 of the RSA-OAEP-wrapped symmetric key.
    pub data_key: String,
    /// `dataSignature`: base64 of HMAC-SHA256 over the decoded `data`.
    pub data_signature: String,
    /// `encryptionCertificateId`: selects the private key.
    pub encryption_certificate_id: String,
    /// `encryptionCertificateThumbprint`.
    pub encryption_certificate_thumbprint: String,
}

impl fmt::Debug for EncryptedContent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EncryptedContent")
            .field("data", &format_args!("<{} base64 chars>", self.data.len()))
            .field(
                "data_key",
                &format_args!("<{} base64 chars>", self.data_key.len()),
            )
            .field(
                "data_signature",
                &format_args!("<{} base64 chars>", self.data_signature.len()),
            )
            .field("encryption_certificate_id", &self.encryption_certificate_id)
            .field(
                "encryption_certificate_thumbprint",
                &self.encryption_certificate_thumbprint,
            )
            .finish()
    }
}

/// Parses the raw body of a notification delivery (`{"value":[...], "validationTokens":[...]}`).
///
/// An item with a `lifecycleEvent` is a [`Notification::Lifecycle`], any other a
/// [`Notification::Change`]. `subscriptionId` is required; `changeType`, `resource` and the rest
/// are optional. Nothing is verified here: check [`client_state_matches`] per item.
pub fn parse(body: &[u8]) -> Result<Batch> {
    let root: Value = serde_json::from_slice(body).map_err(|e| NotificationError::syntax(&e))?;
    let root = as_object(&root, "$")?;
    let items = match root.get("value") {
        Some(Value::Array(items)) => items,
        Some(other) => return Err(wrong_type("$.value", "an array", other)),
        None => return Err(NotificationError::shape("$.value", "missing (required)")),
    };
    let items = items
        .iter()
        .enumerate()
        .map(|(index, item)| parse_item(item, &format!("$.value[{index}]")))
        .collect::<Result<Vec<_>>>()?;
    let validation_tokens = match root.get("validationTokens") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(tokens)) => tokens
            .iter()
            .enumerate()
            .map(|(index, token)| match token {
                Value::String(token) => Ok(token.clone()),
                other => Err(wrong_type(
                    &format!("$.validationTokens[{index}]"),
                    "a string",
                    other,
                )),
            })
            .collect::<Result<Vec<_>>>()?,
        Some(other) => return Err(wrong_type("$.validationTokens", "an array or null", other)),
    };
    Ok(Batch {
        items,
        validation_tokens,
    })
}

/// Whether the `clientState` an item presented is the one we gave its subscription.
///
/// Constant time in the content (the lengths are not hidden). A missing `clientState`, and an
/// empty `expected` (no secret configured), never match.
pub fn client_state_matches(presented: Option<&str>, expected: &str) -> bool {
    match presented {
        Some(presented) if !expected.is_empty() => {
            presented.as_bytes().ct_eq(expected.as_bytes()).into()
        }
        _ => false,
    }
}

/// The body of the validation-handshake reply (graph.md §6.2): the URL-decoded `validationToken`
/// query parameter, if the request carries one.
///
/// `query` is the request's query string, with or without its leading `?`. The HTTP handler
/// answers `200 OK`, `Content-Type: text/plain`, with exactly this text, and nothing else.
pub fn validation_response(query: Option<&str>) -> Option<String> {
    let query = query?;
    let query = query.strip_prefix('?').unwrap_or(query);
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(name, _)| name == "validationToken")
        .map(|(_, token)| token.into_owned())
}

fn parse_item(item: &Value, path: &str) -> Result<Notification> {
    let object = as_object(item, path)?;
    let subscription_id = optional_string(object, "subscriptionId", path)?.ok_or_else(|| {
        NotificationError::shape(&format!("{path}.subscriptionId"), "missing (required)")
    })?;
    let client_state = optional_string(object, "clientState", path)?;
    let tenant_id = optional_string(object, "tenantId", path)?;
    let subscription_expiration = optional_string(object, "subscriptionExpirationDateTime", path)?;

    if let Some(lifecycle_event) = optional_string(object, "lifecycleEvent", path)? {
        return Ok(Notification::Lifecycle(LifecycleItem {
            subscription_id,
            client_state,
            lifecycle_event,
            subscription_expiration,
            tenant_id,
        }));
    }

    let resource = optional_string(object, "resource", path)?;
    let resource_data = match object.get("resourceData") {
        None | Some(Value::Null) => None,
        Some(data @ Value::Object(_)) => Some(data.clone()),
        Some(other) => {
            return Err(wrong_type(
                &format!("{path}.resourceData"),
                "an object or null",
                other,
            ))
        }
    };
    let encrypted = match object.get("encryptedContent") {
        None | Some(Value::Null) => None,
        Some(content) => Some(parse_encrypted(
            content,
            &format!("{path}.encryptedContent"),
        )?),
    };

    let data = resource_data.as_ref().and_then(Value::as_object);
    let data_string = |name: &str| -> Result<Option<String>> {
        match data {
            Some(data) => optional_string(data, name, &format!("{path}.resourceData")),
            None => Ok(None),
        }
    };
    let user_id = resource
        .as_deref()
        .and_then(user_id_from_resource)
        .or(data_string("id")?.and_then(|id| normalise_user_id(&id)));

    Ok(Notification::Change(ChangeItem {
        subscription_id,
        client_state,
        change_type: optional_string(object, "changeType", path)?,
        resource,
        user_id,
        tenant_id,
        sequence_number: data_string("sequenceNumber")?,
        availability: data_string("availability")?,
        activity: data_string("activity")?,
        resource_data,
        encrypted,
    }))
}

fn parse_encrypted(content: &Value, path: &str) -> Result<EncryptedContent> {
    let object = as_object(content, path)?;
    let required = |name: &str| -> Result<String> {
        optional_string(object, name, path)?.ok_or_else(|| {
            NotificationError::shape(&format!("{path}.{name}"), "missing (required)")
        })
    };
    Ok(EncryptedContent {
        data: required("data")?,
        data_key: required("dataKey")?,
        data_signature: required("dataSignature")?,
        encryption_certificate_id: required("encryptionCertificateId")?,
        encryption_certificate_thumbprint: required("encryptionCertificateThumbprint")?,
    })
}

/// The user id of a presence resource: `communications/presences/{id}`, `/communications/...`,
/// `communications/presences('{id}')` or `users/{id}/presence`.
fn user_id_from_resource(resource: &str) -> Option<String> {
    let resource = resource.trim_start_matches('/');
    let lower = resource.to_ascii_lowercase();
    let rest = if let Some(rest) = lower.strip_prefix("communications/presences") {
        rest.strip_prefix('/').or_else(|| {
            rest.strip_prefix("('")
                .and_then(|r| r.split_once("')").map(|(id, _)| id))
        })?
    } else {
        lower
            .strip_prefix("users/")
            .and_then(|rest| rest.strip_suffix("/presence"))?
    };
    let id = rest.split(['/', '?']).next().unwrap_or_default();
    normalise_user_id(id)
}

fn normalise_user_id(id: &str) -> Option<String> {
    let id = id.trim();
    (!id.is_empty()).then(|| id.to_ascii_lowercase())
}

fn as_object<'a>(value: &'a Value, path: &str) -> Result<&'a Map<String, Value>> {
    value
        .as_object()
        .ok_or_else(|| wrong_type(path, "an object", value))
}

/// A string member; absent or `null` is `None`, any other type an error.
fn optional_string(object: &Map<String, Value>, name: &str, path: &str) -> Result<Option<String>> {
    match object.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(value)) => Ok(Some(value.clone())),
        Some(other) => Err(wrong_type(
            &format!("{path}.{name}"),
            "a string or null",
            other,
        )),
    }
}

/// A string member for the lenient paths that cannot fail (decrypted data).
fn string_member(object: &Map<String, Value>, name: &str) -> Option<String> {
    object.get(name).and_then(Value::as_str).map(str::to_owned)
}

/// A type error that names the types only, never the value (it may be a secret).
fn wrong_type(path: &str, expected: &str, found: &Value) -> NotificationError {
    let found = match found {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    };
    NotificationError::shape(path, format!("expected {expected}, found {found}"))
}

fn redacted(value: Option<&str>) -> Option<&'static str> {
    value.map(|_| "***")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_id_comes_from_every_presence_resource_form_in_lowercase() {
        let id = "8B081EF6-4792-4DEF-B2C9-C363A1BF41D5";
        let want = Some(id.to_ascii_lowercase());
        for resource in [
            format!("communications/presences/{id}"),
            format!("/communications/presences/{id}"),
            format!("communications/presences('{id}')"),
            format!("users/{id}/presence"),
            format!("Communications/Presences/{id}?x=1"),
        ] {
            assert_eq!(user_id_from_resource(&resource), want, "{resource}");
        }
        assert_eq!(user_id_from_resource("communications/presences/"), None);
        assert_eq!(user_id_from_resource("communications/presences"), None);
        assert_eq!(user_id_from_resource("me/presence"), None);
    }

    #[test]
    fn debug_output_hides_client_state_and_validation_tokens() {
        let body = br#"{"value":[
            {"subscriptionId":"s1","clientState":"hunter2-secret","resource":"communications/presences/u1"},
            {"subscriptionId":"s2","clientState":"hunter2-secret","lifecycleEvent":"missed"}],
            "validationTokens":["eyJ.secret-token.sig"]}"#;
        let batch = parse(body).expect("parses");
        let debug = format!("{batch:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(!debug.contains("secret-token"), "{debug}");
        assert!(debug.contains("u1"), "{debug}");
    }

    #[test]
    fn wrong_type_error_names_the_path_but_not_the_value() {
        let body = br#"{"value":[{"subscriptionId":"s1","clientState":["hunter2"]}]}"#;
        let error = parse(body).expect_err("refused");
        let text = error.to_string();
        assert_eq!(
            text,
            "notification body at $.value[0].clientState: expected a string or null, found an array"
        );
        assert_eq!(error.path(), Some("$.value[0].clientState"));
    }

    #[test]
    fn empty_expected_client_state_never_matches() {
        assert!(!client_state_matches(Some(""), ""));
        assert!(!client_state_matches(None, "x"));
        assert!(client_state_matches(Some("x"), "x"));
    }
}
