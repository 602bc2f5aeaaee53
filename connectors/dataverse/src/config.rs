//! Configuration of the Dataverse connector. Every field has a doc comment; unknown keys are
//! errors. Secrets (the webhook secret) are plain values here: the `presync` binary resolves
//! references to environment variables or files before building this.

use std::collections::BTreeMap;

use presync_engine::Availability;
use serde::{Deserialize, Serialize};

/// The Dataverse connector.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataverseConfig {
    /// The environment URL, e.g. `https://contoso.crm.dynamics.com`.
    pub org_url: String,
    /// The Web API path under the environment URL.
    #[serde(default = "default_api_path")]
    pub api_path: String,
    /// How CCaaS calls impersonate a user.
    #[serde(default)]
    pub impersonation: Impersonation,
    /// How `CCaaS_GetPresence` is called. The documented bare URL may need the `ApiVersion`
    /// parameter of the OData function form (UNCONFIRMED, dataverse.md §5.1), hence the choice.
    #[serde(default)]
    pub get_presence_form: GetPresenceForm,
    /// What the reconciler reads: the `msdyn_agentstatuses` table (one paged query) or
    /// `CCaaS_GetPresence` per agent.
    #[serde(default)]
    pub reconcile_source: ReconcileSource,
    /// Canonical availability -> the presence id presync writes. Defaults to the built-ins; a
    /// custom presence id must exist in the catalog.
    #[serde(default)]
    pub presence_map: BTreeMap<Availability, String>,
    /// What an unknown presence id maps to. Never Available: a routable value is refused.
    #[serde(default = "default_unknown")]
    pub unknown_presence: Availability,
    /// Rows per page of OData reads (`Prefer: odata.maxpagesize`).
    #[serde(default = "default_page_size")]
    pub page_size: u32,
    /// The client-side request limit per impersonated user, kept under Dataverse's 6,000
    /// requests per 300 s per user and web server.
    #[serde(default = "default_rate_limit")]
    pub rate_limit: u32,
    /// The window of `rate_limit`, in seconds.
    #[serde(default = "default_rate_window")]
    pub rate_window_secs: u64,
    /// Per-request timeout in milliseconds.
    #[serde(default = "default_timeout")]
    pub request_timeout_ms: u64,
    /// The capacity units a representative has when free (their capacity profile's total;
    /// 100 in Microsoft's samples). With `msdyn_availableunitscapacity` it tells what D365's own
    /// automation gives a representative (free: Available, partly used: Busy, fully used:
    /// Busy - DND, dataverse.md §2.4), which a hold that ends goes back to. Used only where
    /// the event does not carry `msdyn_assignedconversationcount`. UNCONFIRMED for profiles
    /// of another size: set it to theirs.
    #[serde(default = "default_full_capacity")]
    pub full_capacity: i64,
    /// Add a representative to the directory when a Create event shows a new agent.
    #[serde(default)]
    pub discovery: Option<Discovery>,
    /// The webhook endpoint Dataverse calls.
    pub webhook: WebhookConfig,
}

/// Directory discovery from Create events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Discovery {
    /// The topology name of the system whose user id is the Entra object id (the Teams
    /// connector), filled from `systemuser.azureactivedirectoryobjectid`.
    pub entra_system: String,
}

/// The webhook endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// How Dataverse authenticates, as registered on the service endpoint.
    pub auth: WebhookAuth,
    /// When set, `x-ms-dynamics-organization` must equal it (e.g. `contoso.crm.dynamics.com`).
    #[serde(default)]
    pub organization: Option<String>,
    /// Bodies larger than this are refused with 413. Dataverse strips bodies over 256 KB.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
}

fn default_max_body() -> usize {
    512 * 1024
}

/// The three ways Dataverse authenticates a webhook (dataverse.md §4.2). Values are secrets:
/// `Debug` never shows them.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum WebhookAuth {
    /// A request header `name: value` (recommended).
    HttpHeader { name: String, value: String },
    /// The query parameter `?code=value` (designed for Azure Functions).
    WebhookKey { value: String },
    /// A query parameter `?name=value`.
    HttpQueryString { name: String, value: String },
}

impl std::fmt::Debug for WebhookAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WebhookAuth::HttpHeader { name, .. } => {
                write!(f, "HttpHeader {{ name: {name:?}, value: *** }}")
            }
            WebhookAuth::WebhookKey { .. } => write!(f, "WebhookKey {{ value: *** }}"),
            WebhookAuth::HttpQueryString { name, .. } => {
                write!(f, "HttpQueryString {{ name: {name:?}, value: *** }}")
            }
        }
    }
}

impl WebhookConfig {
    /// A header secret and the default limits.
    pub fn header(name: impl Into<String>, value: impl Into<String>) -> Self {
        WebhookConfig {
            auth: WebhookAuth::HttpHeader {
                name: name.into(),
                value: value.into(),
            },
            organization: None,
            max_body_bytes: default_max_body(),
        }
    }
}

fn default_full_capacity() -> i64 {
    100
}
fn default_api_path() -> String {
    "/api/data/v9.2".to_owned()
}
fn default_unknown() -> Availability {
    Availability::Away
}
fn default_page_size() -> u32 {
    5_000
}
fn default_rate_limit() -> u32 {
    5_400
}
fn default_rate_window() -> u64 {
    300
}
fn default_timeout() -> u64 {
    30_000
}

/// Who the CCaaS calls act as, and through which header.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Impersonation {
    /// The header: `MSCRMCallerID` (a systemuserid; what the CCaaS pages show) or
    /// `CallerObjectId` (an Entra object id; Microsoft's preferred header).
    #[serde(default)]
    pub header: CallerHeader,
    /// The user impersonated for `CCaaS_ModifyAgentPresence`: a supervisor acting on every agent
    /// (required since May 2026, dataverse.md §5.2), or each agent themselves (UNCONFIRMED that
    /// this still works). For `CCaaS_GetPresence` the agent is always the caller.
    #[serde(default)]
    pub caller: Caller,
}

/// See [`Impersonation::header`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum CallerHeader {
    #[default]
    #[serde(rename = "MSCRMCallerID")]
    MscrmCallerId,
    #[serde(rename = "CallerObjectId")]
    CallerObjectId,
}

impl CallerHeader {
    /// The header name.
    pub fn name(self) -> &'static str {
        match self {
            CallerHeader::MscrmCallerId => "MSCRMCallerID",
            CallerHeader::CallerObjectId => "CallerObjectId",
        }
    }
}

/// See [`Impersonation::caller`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Caller {
    /// No impersonation header: the application user itself must hold Omnichannel Supervisor.
    #[default]
    Application,
    /// A supervisor: the systemuserid (for `MSCRMCallerID`) or Entra object id (for
    /// `CallerObjectId`), as the header needs.
    Supervisor { id: String },
    /// Each agent themselves.
    Agent,
}

/// See [`DataverseConfig::get_presence_form`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GetPresenceForm {
    /// `CCaaS_GetPresence(ApiVersion=@p1)?@p1='1.0'`, the OData function form (in case the
    /// documented URL needs `ApiVersion`).
    Function,
    /// `CCaaS_GetPresence` as the page documents it.
    #[default]
    Bare,
}

/// See [`DataverseConfig::reconcile_source`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReconcileSource {
    #[default]
    AgentStatusQuery,
    GetPresence,
}

impl DataverseConfig {
    /// A configuration with every default, for `org_url` and a webhook header secret.
    pub fn new(org_url: impl Into<String>, webhook: WebhookConfig) -> Self {
        DataverseConfig {
            org_url: org_url.into(),
            api_path: default_api_path(),
            impersonation: Impersonation::default(),
            get_presence_form: GetPresenceForm::default(),
            reconcile_source: ReconcileSource::default(),
            presence_map: BTreeMap::new(),
            unknown_presence: default_unknown(),
            page_size: default_page_size(),
            rate_limit: default_rate_limit(),
            rate_window_secs: default_rate_window(),
            request_timeout_ms: default_timeout(),
            full_capacity: default_full_capacity(),
            discovery: None,
            webhook,
        }
    }

    /// Every problem, with its key path.
    pub fn validate(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.full_capacity <= 0 {
            problems.push(format!(
                "full_capacity: {} must be positive (a representative's capacity units when free)",
                self.full_capacity
            ));
        }
        match url::Url::parse(&self.org_url) {
            Ok(u) if u.scheme() == "https" || u.host_str().is_some_and(is_loopback) => {}
            Ok(_) => problems.push(format!(
                "org_url: {:?} must be https (plain http only for a loopback simulator)",
                self.org_url
            )),
            Err(e) => problems.push(format!("org_url: {:?} is not a URL: {e}", self.org_url)),
        }
        if !self.api_path.starts_with('/') {
            problems.push(format!("api_path: {:?} must start with /", self.api_path));
        }
        if self.unknown_presence.is_routable() {
            problems.push("unknown_presence: must not be Available".to_owned());
        }
        if self.page_size == 0 || self.page_size > 5_000 {
            problems.push(format!("page_size: {} must be 1..=5000", self.page_size));
        }
        if self.rate_limit == 0 || self.rate_limit > 6_000 {
            problems.push(format!(
                "rate_limit: {} must be 1..=6000 (Dataverse allows 6,000 per 300 s per user)",
                self.rate_limit
            ));
        }
        if self.rate_window_secs == 0 {
            problems.push("rate_window_secs: must be positive".to_owned());
        }
        match &self.webhook.auth {
            WebhookAuth::HttpHeader { name, value }
            | WebhookAuth::HttpQueryString { name, value } => {
                if name.trim().is_empty() {
                    problems.push("webhook.auth.name: must not be empty".to_owned());
                }
                if value.len() < 16 {
                    problems.push(
                        "webhook.auth.value: use a random secret of at least 16 characters"
                            .to_owned(),
                    );
                }
            }
            WebhookAuth::WebhookKey { value } => {
                if value.len() < 16 {
                    problems.push(
                        "webhook.auth.value: use a random secret of at least 16 characters"
                            .to_owned(),
                    );
                }
            }
        }
        if let Caller::Supervisor { id } = &self.impersonation.caller {
            if id.trim().is_empty() {
                problems.push("impersonation.caller.supervisor.id: must not be empty".to_owned());
            }
        }
        problems
    }
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .trim_matches(|c| c == '[' || c == ']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook() -> WebhookConfig {
        WebhookConfig::header("x-presync-secret", "0123456789abcdef0123")
    }

    #[test]
    fn defaults_are_valid_for_an_https_org() {
        assert!(
            DataverseConfig::new("https://contoso.crm.dynamics.com", hook())
                .validate()
                .is_empty()
        );
        assert!(DataverseConfig::new("http://127.0.0.1:8080", hook())
            .validate()
            .is_empty());
    }

    #[test]
    fn webhook_secrets_never_show_in_debug() {
        let c = DataverseConfig::new("https://x.crm.dynamics.com", hook());
        let shown = format!("{c:?}");
        assert!(!shown.contains("0123456789abcdef0123"), "{shown}");
        assert!(shown.contains("x-presync-secret"));
    }

    #[test]
    fn every_problem_is_reported_with_its_key() {
        let mut c = DataverseConfig::new(
            "http://contoso.example",
            WebhookConfig::header("h", "short"),
        );
        c.unknown_presence = Availability::Available;
        c.page_size = 0;
        c.rate_limit = 10_000;
        let p = c.validate();
        assert_eq!(p.len(), 5, "{p:?}");
        assert!(p.iter().any(|m| m.starts_with("org_url:")));
        assert!(p.iter().any(|m| m.starts_with("unknown_presence:")));
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = serde_json::from_str::<DataverseConfig>(r#"{"org_url":"https://x","orgurl":"y","webhook":{"auth":{"webhook_key":{"value":"k"}}}}"#)
            .unwrap_err();
        assert!(err.to_string().contains("unknown field"));
    }

    #[test]
    fn impersonation_parses_each_form() {
        let c: Impersonation = serde_json::from_str(
            r#"{"header":"CallerObjectId","caller":{"supervisor":{"id":"abc"}}}"#,
        )
        .unwrap();
        assert_eq!(c.header.name(), "CallerObjectId");
        assert_eq!(c.caller, Caller::Supervisor { id: "abc".into() });
        let c: Impersonation = serde_json::from_str(r#"{"caller":"agent"}"#).unwrap();
        assert_eq!(c.caller, Caller::Agent);
    }
}
