//! `presync inspect teams FILE`: a one-glance summary of a recorded notification delivery.
//!
//! [`inspect`] parses the body with [`crate::notifications::parse`] and, when keys are given,
//! decrypts rich items with [`crate::crypto::DecryptionKeys`]. The summary never includes a
//! `clientState`, a validation token or ciphertext.

use serde_json::{json, Value};

use crate::crypto::DecryptionKeys;
use crate::notifications::{parse, Notification, NotificationError};

/// The keys of every entry of [`inspect`]'s output, in order.
pub const ENTRY_KEYS: [&str; 6] = [
    "kind",
    "subscription_id",
    "user_id",
    "availability",
    "activity",
    "lifecycle_event",
];

/// Summarises a notification body as a JSON array, one entry per item:
/// `{"kind": "change"|"lifecycle", "subscription_id", "user_id", "availability", "activity",
/// "lifecycle_event"}`, each `null` when the item does not carry it.
///
/// With `keys`, rich items are decrypted and their availability and activity shown; a rich item
/// that cannot be decrypted is an error naming its path. Without keys, rich items show `null`
/// availability and activity (basic notifications never carry them since 2024).
pub fn inspect(body: &[u8], keys: Option<&DecryptionKeys>) -> Result<Value, NotificationError> {
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
                json!({
                    "kind": "change",
                    "subscription_id": change.subscription_id,
                    "user_id": change.user_id,
                    "availability": change.availability,
                    "activity": change.activity,
                    "lifecycle_event": null,
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
