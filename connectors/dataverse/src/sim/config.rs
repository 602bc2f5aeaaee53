//! How a simulated org is set up: the application's credential, the webhook registration, and
//! the switches for the behaviour the reference leaves open (each marked UNCONFIRMED where
//! dataverse.md is).

use std::time::Duration;

use presync_engine::Availability;

use super::state::BY_AGENT;
use super::webhooks;
use crate::config::WebhookAuth;

/// How the simulated application proves itself to the token endpoint.
#[derive(Clone)]
pub enum SimCredential {
    /// A client secret.
    ClientSecret(String),
    /// The PEM certificate whose key signs the client assertion.
    CertificatePem(String),
}

impl std::fmt::Debug for SimCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SimCredential::ClientSecret(_) => f.write_str("ClientSecret(***)"),
            SimCredential::CertificatePem(_) => f.write_str("CertificatePem(..)"),
        }
    }
}

/// The webhook registration: a `serviceendpoint` (contract 8) with steps on `msdyn_agentstatus`.
#[derive(Debug, Clone)]
pub struct WebhookTarget {
    /// The endpoint URL.
    pub url: String,
    /// How Dataverse authenticates to it (dataverse.md §4.2).
    pub auth: WebhookAuth,
    /// Whether a Create step is registered too (the "new agent" sample); default true. The
    /// Update step (filtered on `msdyn_currentpresenceid`) is always registered.
    pub emit_create: bool,
    /// How long Dataverse waits for an answer; 60 s.
    pub timeout: Duration,
    /// The pause before the single retry after 502/503/504 (the real delay is undocumented);
    /// default 1 s.
    pub retry_delay: Duration,
}

impl WebhookTarget {
    /// A target with the defaults.
    pub fn new(url: impl Into<String>, auth: WebhookAuth) -> Self {
        WebhookTarget {
            url: url.into(),
            auth,
            emit_create: true,
            timeout: webhooks::DEFAULT_TIMEOUT,
            retry_delay: Duration::from_secs(1),
        }
    }
}

/// The simulated environment.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// The Entra tenant of the token endpoint.
    pub tenant_id: String,
    /// The application (client) id, which is also the application user.
    pub client_id: String,
    /// The application's credential.
    pub credential: SimCredential,
    /// The environment's host, sent as `x-ms-dynamics-organization` (e.g. `contoso.crm.dynamics.com`).
    pub org_host: String,
    /// The webhook registration; `None` sends no webhooks.
    pub webhook: Option<WebhookTarget>,
    /// Systemuserids holding Omnichannel Supervisor: the callers `CCaaS_ModifyAgentPresence`
    /// accepts (since 2026-05-07, dataverse.md §5.2).
    pub supervisors: Vec<String>,
    /// Whether the application user itself holds Supervisor, so a call with no impersonation
    /// header is accepted. Default true.
    pub app_user_is_supervisor: bool,
    /// Requests per caller per sliding window: 6,000 per 300 s by default.
    pub rate_limit: (u32, Duration),
    /// `msdyn_presencemodifiedby` written by `CCaaS_ModifyAgentPresence`: default `"AGENT"`.
    /// UNCONFIRMED (dataverse.md §4.10): change it to test the other case.
    pub modified_by_for_api: String,
    /// `CCaaS_ModifyAgentPresence` answers 404 for a signed-out (or disconnected) agent (a
    /// practitioner report, UNCONFIRMED, dataverse.md §5.2). Default true.
    pub require_signed_in: bool,
    /// The status `CCaaS_ModifyAgentPresence` answers when the caller lacks Omnichannel
    /// Supervisor. Default 403 with the PrivilegeDenied code (`0x80040220`), as a practitioner
    /// reports; 405 is the documented "API not allowed" alternative (dataverse.md §5.2). Which
    /// one the real service sends is UNCONFIRMED (dataverse.md §12 q3, q4). Either way the
    /// message names the missing role; a value that is not a 4xx status is answered as 403.
    pub role_missing_status: u16,
    /// Capacity units one conversation takes from the agent's 100. Default 50, so two
    /// conversations use an agent's capacity fully.
    pub conversation_units: u32,
    /// Whether a presence written through `CCaaS_ModifyAgentPresence` counts as the agent's own
    /// choice for D365's recalculation (dataverse.md §2.4). When true (the default, matching
    /// [`SimConfig::modified_by_for_api`] = `AGENT`), an Away, Busy - DND or Offline set through
    /// the API lasts until sign-out or the next manual change, like a hand choice; when false,
    /// every API-set presence is replaced at the next conversation accept or close. UNCONFIRMED
    /// (dataverse.md §4.10, §12 q5).
    pub api_presence_is_manual: bool,
    /// How long after a disconnect a reconnecting agent gets their previous presence back;
    /// later, the presence is recalculated from capacity. Default 150 s ("2.5 min",
    /// dataverse.md §2.4).
    pub restore_window: Duration,
    /// The base statuses the simulated workstream offers work to ("Allowed presences" offers
    /// base statuses only, dataverse.md §2.3). Default Available and Busy.
    pub routable: Vec<Availability>,
}

impl SimConfig {
    /// A configuration with every default and no webhook.
    pub fn new(
        tenant_id: impl Into<String>,
        client_id: impl Into<String>,
        credential: SimCredential,
        org_host: impl Into<String>,
    ) -> Self {
        SimConfig {
            tenant_id: tenant_id.into(),
            client_id: client_id.into(),
            credential,
            org_host: org_host.into(),
            webhook: None,
            supervisors: Vec::new(),
            app_user_is_supervisor: true,
            rate_limit: (6_000, Duration::from_secs(300)),
            modified_by_for_api: BY_AGENT.to_owned(),
            require_signed_in: true,
            role_missing_status: 403,
            conversation_units: 50,
            api_presence_is_manual: true,
            restore_window: Duration::from_secs(150),
            routable: vec![Availability::Available, Availability::Busy],
        }
    }
}
