//! `presync inspect teams FILE`: a one-glance summary of what Graph sent or answered.
//!
//! [`inspect`] reads three kinds of body:
//!
//! - a notification delivery, parsed with [`crate::notifications::parse`]; with keys, rich
//!   items are decrypted with [`crate::crypto::DecryptionKeys`];
//! - a presence resource (the answer of `GET /users/{id}/presence`);
//! - a presence collection (the answer of `POST /communications/getPresencesByUserId`).
//!
//! Every presence shows its `user_id`, `availability`, `activity`, `sequence_number` and the
//! `canonical` availability presync maps it to (`null` when presync does not know the value).
//! The summary never includes a `clientState`, a validation token or ciphertext.

use presync_engine::NativeState;
use serde_json::{json, Map, Value};

use crate::crypto::DecryptionKeys;
use crate::mapping::Mapping;
use crate::notifications::{parse, Notification, NotificationError};

/// The keys of every notification entry of [`inspect`]'s output, in order; a change item adds
/// [`PRESENCE_KEYS`]' `sequence_number` and `canonical`.
pub const ENTRY_KEYS: [&str; 6] = [
    "kind",
    "subscription_id",
    "user_id",
    "availability",
    "activity",
    "lifecycle_event",
];

/// The keys of every presence [`inspect`] shows, in order.
pub const PRESENCE_KEYS: [&str; 5] = [
    "user_id",
    "availability",
    "activity",
    "sequence_number",
    "canonical",
];

/// The canonical availability presync maps a pair to, `null` when either part is missing or
/// presync does not know the value.
fn canonical(availability: Option<&str>, activity: Option<&str>) -> Value {
    let (Some(availability), Some(activity)) = (availability, activity) else {
        return Value::Null;
    };
    let mapped = Mapping::to_canonical(&NativeState::new(format!("{availability}/{activity}")));
    match mapped.known {
        true => json!(mapped.availability.as_str()),
        false => Value::Null,
    }
}

fn text<'a>(object: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    object.get(key).and_then(Value::as_str)
}

/// One presence resource as an entry.
fn presence(object: &Map<String, Value>) -> Value {
    let (availability, activity) = (text(object, "availability"), text(object, "activity"));
    json!({
        "user_id": text(object, "id"),
        "availability": availability,
        "activity": activity,
        "sequence_number": text(object, "sequenceNumber"),
        "canonical": canonical(availability, activity),
    })
}

/// Whether `v` is a presence resource rather than a notification item.
fn is_presence(v: &Value) -> bool {
    v.as_object().is_some_and(|o| {
        o.contains_key("availability")
            && !["subscriptionId", "changeType", "lifecycleEvent", "resource"]
                .iter()
                .any(|k| o.contains_key(*k))
    })
}

/// Summarises a body as a JSON array, one entry per notification item or presence.
///
/// A notification item: `{"kind": "change"|"lifecycle", "subscription_id", "user_id",
/// "availability", "activity", "lifecycle_event"}`, and for a change `sequence_number` and
/// `canonical`, each `null` when the item does not carry it. With `keys`, rich items are
/// decrypted and their values shown; a rich item that cannot be decrypted is an error naming its
/// path. Without keys, rich items show `null` values (basic notifications never carry them
/// since 2024).
///
/// A presence resource, or each presence of a collection: the [`PRESENCE_KEYS`].
pub fn inspect(body: &[u8], keys: Option<&DecryptionKeys>) -> Result<Value, NotificationError> {
    if let Ok(value) = serde_json::from_slice::<Value>(body) {
        if is_presence(&value) {
            return Ok(json!([presence(value.as_object().unwrap_or(&Map::new()))]));
        }
        if let Some(items) = value
            .get("value")
            .and_then(Value::as_array)
            .filter(|items| !items.is_empty() && items.iter().all(is_presence))
        {
            let entries = items
                .iter()
                .filter_map(Value::as_object)
                .map(presence)
                .collect();
            return Ok(Value::Array(entries));
        }
    }
    notifications(body, keys)
}

fn notifications(body: &[u8], keys: Option<&DecryptionKeys>) -> Result<Value, NotificationError> {
    let batch = parse(body)?;
    let mut entries = Vec::with_capacity(batch.items.len());
    for (index, item) in batch.items.into_iter().enumerate() {
        let entry = match item {
            Notification::Change(mut change) => {
                if let (Some(keys), Some(content)) = (keys, change.encrypted.as_ref()) {
                    let data =
                        keys.decrypt(content)
                            .map_err(|error| NotificationError::Decrypt {
                                path: format!("$.value[{index}].encryptedContent"),
                                error,
                            })?;
                    change.apply_resource_data(data);
                }
                let canonical =
                    canonical(change.availability.as_deref(), change.activity.as_deref());
                json!({
                    "kind": "change",
                    "subscription_id": change.subscription_id,
                    "user_id": change.user_id,
                    "availability": change.availability,
                    "activity": change.activity,
                    "lifecycle_event": null,
                    "sequence_number": change.sequence_number,
                    "canonical": canonical,
                })
            }
            Notification::Lifecycle(lifecycle) => json!({
                "kind": "lifecycle",
                "subscription_id": lifecycle.subscription_id,
                "user_id": null,
                "availability": null,
                "activity": null,
                "lifecycle_event": lifecycle.lifecycle_event,
            }),
        };
        entries.push(entry);
    }
    Ok(Value::Array(entries))
}
