//! The simulator's configuration: the simulated tenant and application, and the knobs tests
//! turn. Every field has a default in [`GraphSimConfig::new`].

use std::time::Duration;

use super::presence::EqualRank;
use super::schema::ValueSchema;

/// The simulated tenant and application, and the knobs tests turn.
#[derive(Clone)]
pub struct GraphSimConfig {
    /// The Entra tenant (directory) id; also `tenantId` and `organizationId` in notifications.
    pub tenant_id: String,
    /// The application (client) id. Also the only `sessionId` setPresence and clearPresence
    /// accept (graph.md §2.2), and `applicationId` of subscriptions.
    pub app_client_id: String,
    /// The application's client secret, for client credentials.
    pub app_secret: String,
    /// The service account's user (object) id: the signed-in user of delegated tokens and
    /// `creatorId` of subscriptions.
    pub delegated_account: String,
    /// The refresh token `presync teams login` would have stored; the simulator accepts it for
    /// `grant_type=refresh_token` and rotates it (see `tokens.rs` for the grace period).
    pub refresh_token: String,
    /// Requests per application per tenant per sliding window: 10,000 per 30 s, the presence
    /// limit since September 2025 (graph.md, "Corrections of 2026-12-07"). Set
    /// `(1_500, Duration::from_secs(30))` for the limit the per-API pages still print.
    pub rate_limit: (u32, Duration),
    /// How long the simulator waits for a validation reply and for each notification delivery
    /// attempt: 10 s.
    pub notification_timeout: Duration,
    /// A delivery answered with 2xx later than this counts as failed and is retried: 3 s
    /// (graph.md §6.3).
    pub ack_deadline: Duration,
    /// Retries after a failed delivery (non-2xx, no answer, late): 3. Graph retries for up to
    /// 4 hours; tests want fewer.
    pub delivery_retries: u32,
    /// Pause before the first retry, doubled for each further one: 1 s.
    pub delivery_backoff: Duration,
    /// Lifetime of access tokens on the simulator's clock: 3,599 s (graph.md §9.3).
    pub token_lifetime: Duration,
    /// How long a refresh token stays valid after it was rotated: 5 minutes.
    pub refresh_token_grace: Duration,
    /// The polling `interval` the devicecode endpoint answers, in seconds: 5 (Entra's). Polls
    /// sooner than this after the previous one get `slow_down`.
    pub device_code_interval_secs: u64,
    /// How long a device code stays valid (`expires_in`): 15 minutes (Entra's).
    pub device_code_lifetime: Duration,
    /// Status of a successful presence write: 200 (documented); set 204 (OpenAPI) to check a
    /// client accepts both.
    pub action_status: u16,
    /// One presence subscription per application per delegated user (graph.md §1.3): true.
    pub one_subscription_per_user: bool,
    /// Refuse `http` notification URLs, as Graph does: false, so loopback receivers work.
    pub require_https: bool,
    /// Refuse app-only setUserPreferredPresence and clearUserPreferredPresence with 403, as
    /// graph.md §2.4 suspects (UNCONFIRMED): false, as documented.
    pub preferred_requires_delegated: bool,
    /// Call [`GraphSim::tick`](super::GraphSim::tick) every second of real time from a
    /// background task: true.
    pub auto_tick: bool,
    /// The value set presence is answered in (`schema.rs`): [`ValueSchema::V2025`], the
    /// values since September 2025 (graph.md, "Corrections of 2026-12-07"). Tenants roll out
    /// gradually: [`ValueSchema::Mixed`] answers every second user added in the legacy values,
    /// and [`GraphSim::set_user_schema`](super::GraphSim::set_user_schema) sets one user's.
    pub schema: ValueSchema,
    /// Put `sequenceNumber` in every presence resource answered and in rich notifications'
    /// resource data: true. Whether Graph's payloads carry it is UNCONFIRMED (graph.md §3.1);
    /// false checks a client copes without it.
    pub emit_sequence_number: bool,
    /// Which source shows when the person's own client and an application's session have the
    /// same rank: [`EqualRank::PersonFirst`] (UNCONFIRMED, see [`EqualRank`]).
    pub equal_rank: EqualRank,
}

impl GraphSimConfig {
    /// A configuration with every default.
    pub fn new(
        tenant_id: impl Into<String>,
        app_client_id: impl Into<String>,
        app_secret: impl Into<String>,
        delegated_account: impl Into<String>,
        refresh_token: impl Into<String>,
    ) -> Self {
        GraphSimConfig {
            tenant_id: tenant_id.into(),
            app_client_id: app_client_id.into(),
            app_secret: app_secret.into(),
            delegated_account: delegated_account.into(),
            refresh_token: refresh_token.into(),
            rate_limit: (10_000, Duration::from_secs(30)),
            notification_timeout: Duration::from_secs(10),
            ack_deadline: Duration::from_secs(3),
            delivery_retries: 3,
            delivery_backoff: Duration::from_secs(1),
            token_lifetime: Duration::from_secs(3_599),
            refresh_token_grace: Duration::from_secs(300),
            device_code_interval_secs: 5,
            device_code_lifetime: Duration::from_secs(900),
            action_status: 200,
            one_subscription_per_user: true,
            require_https: false,
            preferred_requires_delegated: false,
            auto_tick: true,
            schema: ValueSchema::V2025,
            emit_sequence_number: true,
            equal_rank: EqualRank::PersonFirst,
        }
    }
}

impl std::fmt::Debug for GraphSimConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GraphSimConfig")
            .field("tenant_id", &self.tenant_id)
            .field("app_client_id", &self.app_client_id)
            .field("app_secret", &"***")
            .field("delegated_account", &self.delegated_account)
            .field("refresh_token", &"***")
            .field("rate_limit", &self.rate_limit)
            .field("notification_timeout", &self.notification_timeout)
            .field("schema", &self.schema)
            .field("emit_sequence_number", &self.emit_sequence_number)
            .finish_non_exhaustive()
    }
}
