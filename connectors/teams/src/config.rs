//! Configuration of the Teams connector. Every field has a doc comment; unknown keys are errors.

use std::collections::BTreeMap;

use presync_engine::Availability;
use serde::{Deserialize, Serialize};

use crate::mapping::{Mapping, MappingError, Pair, WriteMode};

/// The Teams connector.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeamsConfig {
    /// The Graph endpoint, including the version (sovereign clouds have their own).
    #[serde(default = "default_graph")]
    pub graph_url: String,
    /// presync's application (client) id: the `sessionId` of its presence session.
    pub app_id: String,
    /// How presync writes: its own `session` (default) or the `preferred` presence.
    #[serde(default)]
    pub mode: WriteMode,
    /// Canonical availability -> the pair presync writes, overriding the mode's defaults. Only
    /// pairs the mode accepts; Offline is never a pair (presync clears its state instead).
    #[serde(default)]
    pub presence_map: BTreeMap<Availability, Pair>,
    /// `expirationDuration` of presync's session, in seconds (300 to 14,400).
    #[serde(default = "default_session_expiration")]
    pub session_expiration_secs: u64,
    /// Re-post presync's sessions older than this, in seconds: below 300, so an Available
    /// session never fades to AvailableInactive, and below the expiration.
    #[serde(default = "default_keep_alive")]
    pub keep_alive_after_secs: u64,
    /// `expirationDuration` of a preferred presence presync sets, in seconds.
    #[serde(default = "default_preferred_expiration")]
    pub preferred_expiration_secs: u64,
    /// The app's request limit in the tenant: 10,000 per 30 s, what Graph documents for presence
    /// since September 2025 (the per-API pages still print the older 1,500, which a cautious
    /// tenant can set here).
    #[serde(default = "default_rate_limit")]
    pub rate_limit: u32,
    /// The window of `rate_limit`, in seconds.
    #[serde(default = "default_rate_window")]
    pub rate_window_secs: u64,
    /// Per-request timeout in milliseconds.
    #[serde(default = "default_timeout")]
    pub request_timeout_ms: u64,
}

fn default_graph() -> String {
    "https://graph.microsoft.com/v1.0".to_owned()
}
fn default_session_expiration() -> u64 {
    3_600
}
fn default_keep_alive() -> u64 {
    240
}
fn default_preferred_expiration() -> u64 {
    8 * 3_600
}
fn default_rate_limit() -> u32 {
    10_000
}
fn default_rate_window() -> u64 {
    30
}
fn default_timeout() -> u64 {
    30_000
}

impl TeamsConfig {
    /// Every default, for presync's application id.
    pub fn new(app_id: impl Into<String>) -> Self {
        TeamsConfig {
            graph_url: default_graph(),
            app_id: app_id.into(),
            mode: WriteMode::default(),
            presence_map: BTreeMap::new(),
            session_expiration_secs: default_session_expiration(),
            keep_alive_after_secs: default_keep_alive(),
            preferred_expiration_secs: default_preferred_expiration(),
            rate_limit: default_rate_limit(),
            rate_window_secs: default_rate_window(),
            request_timeout_ms: default_timeout(),
        }
    }

    /// The mapping, or every problem with its key path.
    pub fn mapping(&self) -> Result<Mapping, Vec<MappingError>> {
        Mapping::new(self.mode, &self.presence_map)
    }

    /// Every problem, with its key path.
    pub fn validate(&self) -> Vec<String> {
        let mut p = Vec::new();
        if let Err(errors) = self.mapping() {
            p.extend(errors.iter().map(ToString::to_string));
        }
        if !(300..=14_400).contains(&self.session_expiration_secs) {
            p.push(format!(
                "session_expiration_secs: {} must be 300..=14400 (Graph accepts PT5M to PT4H)",
                self.session_expiration_secs
            ));
        }
        if self.keep_alive_after_secs == 0
            || self.keep_alive_after_secs >= 300
            || self.keep_alive_after_secs >= self.session_expiration_secs
        {
            p.push(format!(
                "keep_alive_after_secs: {} must be positive and below 300 (the fade of an Available session) and the session expiration",
                self.keep_alive_after_secs
            ));
        }
        if self.app_id.trim().is_empty() {
            p.push("app_id: must not be empty".to_owned());
        }
        if self.rate_limit == 0 || self.rate_window_secs == 0 {
            p.push("rate_limit, rate_window_secs: must be positive".to_owned());
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert!(TeamsConfig::new("app").validate().is_empty());
    }

    #[test]
    fn every_problem_is_reported_with_its_key() {
        let mut c = TeamsConfig::new("");
        c.session_expiration_secs = 60;
        c.keep_alive_after_secs = 400;
        c.presence_map
            .insert(Availability::Busy, Pair::new("Busy", "InAMeeting"));
        let p = c.validate();
        assert_eq!(p.len(), 4, "{p:?}");
        assert!(p.iter().any(|m| m.starts_with("presence_map.")));
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let e =
            serde_json::from_str::<TeamsConfig>(r#"{"app_id":"a","modes":"session"}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field"));
    }
}
