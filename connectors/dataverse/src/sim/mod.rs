//! A faithful simulator of the parts of Dataverse / Dynamics 365 Contact Center that presync
//! uses, served on loopback for tests and demos (DESIGN.md, "Simulators").
//!
//! [`DataverseSim::router`] serves:
//! - the Entra token endpoint `POST /{tenant}/oauth2/v2.0/token` (from `presync_entra::sim`);
//!   every `/api/data/v9.2/...` request needs a bearer token it issued, else 401;
//! - `POST CCaaS_ModifyAgentPresence` with the Supervisor-only rule (403, or 405 by
//!   [`SimConfig::role_missing_status`]), impersonation through `MSCRMCallerID` or
//!   `CallerObjectId`, and the 400/404 answers (dataverse.md §5.2, §5.3);
//! - `GET CCaaS_GetPresence(ApiVersion=@p1)?@p1='1.0'` and the bare `GET CCaaS_GetPresence`
//!   (which form the real service wants is UNCONFIRMED, so both work), for the impersonated agent;
//! - OData reads of `msdyn_agentstatuses`, `msdyn_presences` and `systemusers` with `$select`,
//!   `$expand`, simple `$filter` and server-driven paging;
//! - the service-protection limit per caller: 429 with `Retry-After` (dataverse.md §8).
//!
//! D365's own automation (dataverse.md §2.4) runs inside: conversations take capacity
//! ([`DataverseSim::accept`], [`DataverseSim::close`]) and the presence is recalculated from
//! capacity at each one unless the agent chose Away, Busy - DND or Offline by hand; sign-out
//! closes every conversation; a disconnect is Offline at once and a reconnect restores or
//! recalculates ([`DataverseSim::disconnect`], [`DataverseSim::reconnect`]). A router
//! ([`DataverseSim::route_next`]) offers work by base status. [`DataverseSim::changes`] records
//! every presence write with its cause, the genuine ones (people, D365) apart from presync's.
//!
//! Each presence write (API write, [`DataverseSim::agent_sets`], [`DataverseSim::system_sets`],
//! sign-in and -out, recalculation, disconnect and reconnect, [`DataverseSim::start_activity`])
//! is POSTed to the configured webhook in the exact `RemoteExecutionContext` shape of
//! Microsoft's samples, in order, from a background task. Faults ([`Fault`]) make requests or
//! deliveries fail the way the real ones do.
//!
//! Start with [`SimConfig::new`] and [`DataverseSim::new`], add agents with
//! [`DataverseSim::add_agent`], then [`DataverseSim::spawn`] (or [`DataverseSim::serve`]) and
//! point the client at `http://{addr}`, with `http://{addr}` as its Entra authority.
//!
//! Files, by concept: `config.rs` (the set-up and its switches), `state.rs` (the tables, clock
//! and row versions), `session.rs` (capacity, recalculation, sign-in and -out, disconnects),
//! `routing.rs` (the router and its offers), `record.rs` (the record of changes and the
//! refusals), `api.rs` (auth, impersonation, limits, the CCaaS APIs), `odata.rs` and `query.rs`
//! (the OData reads), `webhook_body.rs` and `webhook_create.rs` (the Update and Create bodies),
//! `webhooks.rs` (the delivery queue and task), `faults.rs`, `activity.rs`, and the small
//! `json.rs`, `dates.rs`, `errors.rs`.
//!
//! Deliberate choices where the real service is unknown or differs from intuition:
//! - `versionnumber`/`RowVersion` is one counter for the whole org, like SQL Server
//!   `rowversion`: a row's version grows by exactly one only if nothing else changed meanwhile.
//! - Writing the same presence again still stamps, versions and emits (Dataverse does not
//!   compare values on Update, and the step filter fires on the column being present). A
//!   recalculation, by contrast, writes the presence only when it differs.
//! - An accept or close is two Updates: the capacity (which versions the row but sends no
//!   webhook, the step being filtered on `msdyn_currentpresenceid`), then the recalculated
//!   presence if it changed.
//! - Whether an API-set presence counts as a hand choice is a switch
//!   ([`SimConfig::api_presence_is_manual`], UNCONFIRMED), as are the status for a missing
//!   role ([`SimConfig::role_missing_status`]) and the 404 for a signed-out agent.
//! - Bodies and `msdyn_presencemodifiedon` use whole seconds; `...withmilliseconds` carries ms.
//!   The clock is made strictly increasing so two changes never share a millisecond.

mod activity;
mod api;
mod config;
mod dates;
mod errors;
mod faults;
mod json;
mod odata;
mod query;
mod record;
mod routing;
mod session;
mod state;
mod webhook_body;
mod webhook_create;
mod webhooks;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use presync_entra::sim::SimAuthority;
use presync_entra::CredentialError;

use crate::mapping::{builtin, PresenceEntry};
use faults::{ApiFault, ApiFaults, RateLimiter};
use session::Rules;
use state::{RowChange, State};
use webhook_body::OrgIds;
use webhooks::Outbox;

pub use activity::Activity;
pub use config::{SimConfig, SimCredential, WebhookTarget};
pub use faults::Fault;
pub use record::{ChangeCause, ConversationChange, SimChange, SimRefusal, SystemReason};
pub use routing::Offer;
pub use webhooks::{Delivery, DroppedWebhook};

/// An agent's `msdyn_agentstatus` row, as the simulator holds it (the truth tests compare to).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimRow {
    pub agent_status_id: String,
    pub agent_id: String,
    pub presence_id: String,
    /// `msdyn_presencemodifiedonwithmilliseconds`, ms since the epoch.
    pub modified_on_ms: i64,
    /// `msdyn_presencemodifiedby`: `AGENT`, `SYSTEM`, or [`SimConfig::modified_by_for_api`].
    pub modified_by: String,
    /// `versionnumber` (the webhook's `RowVersion`).
    pub row_version: i64,
    pub logged_in: bool,
}

/// One Web API request as received. The bearer token is never kept.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedRequest {
    pub method: String,
    /// The decoded path, e.g. `/api/data/v9.2/CCaaS_GetPresence(ApiVersion=@p1)`.
    pub path: String,
    /// The decoded query string, e.g. `@p1='1.0'`; empty when there is none.
    pub query: String,
    /// The impersonation header sent: (`MSCRMCallerID` or `CallerObjectId`, value).
    pub caller: Option<(String, String)>,
    /// The `Prefer` header.
    pub prefer: Option<String>,
    /// The body as JSON; a body that is not JSON is kept as a JSON string; `None` when empty.
    pub body: Option<serde_json::Value>,
    /// The status answered.
    pub status: u16,
    /// The `Retry-After` answered (429), in ms.
    pub retry_after_ms: Option<i64>,
    /// How long an injected [`Fault::Slow`] held the answer back after the operation, in ms.
    pub delayed_ms: Option<i64>,
    /// When it was answered (ms since the epoch, the simulator's clock, as in
    /// [`DataverseSim::changes`]): a write that took effect had by then.
    pub at_ms: i64,
}

/// The simulator. Cheap to clone; clones share one org.
#[derive(Clone)]
pub struct DataverseSim {
    shared: Arc<Shared>,
}

pub(crate) struct Shared {
    tenant_id: String,
    client_id: String,
    org_host: String,
    supervisors: Vec<String>,
    app_user_is_supervisor: bool,
    rate_limit: (u32, Duration),
    modified_by_for_api: String,
    require_signed_in: bool,
    role_missing_status: u16,
    rules: Rules,
    authority: SimAuthority,
    ids: OrgIds,
    state: Mutex<State>,
    api_faults: Mutex<ApiFaults>,
    limiter: Mutex<RateLimiter>,
    requests: Mutex<Vec<RecordedRequest>>,
    outbox: Outbox,
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Let the delivery task see that the simulator is gone.
        self.outbox.wake.notify_one();
    }
}

impl std::fmt::Debug for DataverseSim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataverseSim")
            .field("org_host", &self.shared.org_host)
            .field("tenant_id", &self.shared.tenant_id)
            .finish_non_exhaustive()
    }
}

/// Lock a mutex, ignoring poisoning (a panicking test must not wedge the others).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl DataverseSim {
    /// A simulator for `cfg`.
    ///
    /// # Panics
    /// If [`SimCredential::CertificatePem`] is not a PEM certificate (a test set-up mistake); use
    /// [`DataverseSim::try_new`] to get the error instead.
    pub fn new(cfg: SimConfig) -> Self {
        match Self::try_new(cfg) {
            Ok(sim) => sim,
            Err(e) => panic!("Dataverse simulator credential: {e}"),
        }
    }

    /// A simulator for `cfg`, or why its certificate could not be read.
    pub fn try_new(cfg: SimConfig) -> Result<Self, CredentialError> {
        let authority = match &cfg.credential {
            SimCredential::ClientSecret(s) => SimAuthority::with_client_secret(
                cfg.tenant_id.clone(),
                cfg.client_id.clone(),
                s.clone(),
            ),
            SimCredential::CertificatePem(pem) => {
                SimAuthority::with_certificate(cfg.tenant_id.clone(), cfg.client_id.clone(), pem)?
            }
        };
        let sim = DataverseSim {
            shared: Arc::new(Shared {
                limiter: Mutex::new(RateLimiter::new(cfg.rate_limit.0, cfg.rate_limit.1)),
                tenant_id: cfg.tenant_id,
                client_id: cfg.client_id,
                org_host: cfg.org_host,
                supervisors: cfg.supervisors.iter().map(|s| state::key(s)).collect(),
                app_user_is_supervisor: cfg.app_user_is_supervisor,
                rate_limit: cfg.rate_limit,
                modified_by_for_api: cfg.modified_by_for_api,
                require_signed_in: cfg.require_signed_in,
                role_missing_status: cfg.role_missing_status,
                rules: Rules {
                    conversation_units: i64::from(cfg.conversation_units),
                    api_presence_is_manual: cfg.api_presence_is_manual,
                    restore_window_ms: i64::try_from(cfg.restore_window.as_millis())
                        .unwrap_or(i64::MAX),
                    routable: cfg.routable,
                },
                authority,
                ids: OrgIds::generate(),
                state: Mutex::new(State::new()),
                api_faults: Mutex::new(ApiFaults::default()),
                requests: Mutex::new(Vec::new()),
                outbox: Outbox::new(cfg.webhook),
            }),
        };
        sim.ensure_worker();
        Ok(sim)
    }

    /// Start the webhook delivery task, once, if a Tokio runtime is running.
    fn ensure_worker(&self) {
        if tokio::runtime::Handle::try_current().is_ok() && self.shared.outbox.claim_start() {
            tokio::spawn(webhooks::run(
                Arc::downgrade(&self.shared),
                self.shared.outbox.wake.clone(),
            ));
        }
    }

    /// The token endpoint's authority (to change token lifetimes, fail token requests, count them).
    pub fn authority(&self) -> &SimAuthority {
        &self.shared.authority
    }

    /// The token endpoint and the Web API.
    pub fn router(&self) -> axum::Router {
        self.ensure_worker();
        presync_entra::sim::router(self.shared.authority.clone()).merge(api::router(self.clone()))
    }

    /// Serve on `listener` until the task is dropped.
    pub async fn serve(self, listener: tokio::net::TcpListener) -> std::io::Result<()> {
        axum::serve(listener, self.router()).await
    }

    /// Serve on `listener` until `shutdown` completes.
    pub async fn serve_with_shutdown(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        axum::serve(listener, self.router())
            .with_graceful_shutdown(shutdown)
            .await
    }

    /// Bind `127.0.0.1:0`, serve in a background task, and return the address.
    pub async fn spawn(&self) -> std::io::Result<SocketAddr> {
        presync_entra::sim::spawn_router(self.router(), "Dataverse simulator").await
    }

    /// Add a system user who is not an agent (e.g. a supervisor to impersonate by Entra id).
    pub fn add_user(&self, systemuser_id: &str, aad_object_id: &str, name: &str) {
        lock(&self.shared.state).add_user(systemuser_id, aad_object_id, name);
    }

    /// Add an agent: the system user and its `msdyn_agentstatus` row (modified by `SYSTEM`), and
    /// the Create webhook when a Create step is registered. Returns the `msdyn_agentstatusid`;
    /// an agent that exists already keeps its row. An unknown `presence_id` falls back to
    /// Offline, the presence a new agent starts with in Microsoft's sample.
    pub fn add_agent(
        &self,
        systemuser_id: &str,
        aad_object_id: &str,
        name: &str,
        presence_id: &str,
        signed_in: bool,
    ) -> String {
        self.ensure_worker();
        let mut st = lock(&self.shared.state);
        let presence = if st.presence(presence_id).is_some() {
            presence_id
        } else {
            builtin::OFFLINE
        };
        match st.add_agent(systemuser_id, aad_object_id, name, presence, signed_in) {
            Ok((id, change)) => {
                if let Some(c) = change {
                    self.shared.outbox.push(c);
                }
                id
            }
            Err(_) => String::new(),
        }
    }

    /// Add a custom presence to `msdyn_presence`.
    pub fn add_custom_presence(&self, entry: PresenceEntry) {
        lock(&self.shared.state).add_presence(entry);
    }

    /// The agent picks a presence (`msdyn_presencemodifiedby` `AGENT`). An Away, Busy - DND or
    /// Offline chosen this way lasts until sign-out or the next manual change; an Available or
    /// Busy only until the next accept or close (dataverse.md §2.4). Returns the new row
    /// version, or `None` for an unknown agent or presence.
    pub fn agent_sets(&self, systemuser_id: &str, presence_id: &str) -> Option<i64> {
        self.apply(|st, _| st.set_by_agent(systemuser_id, presence_id).map(|c| vec![c]))
            .ok()
            .flatten()
    }

    /// D365 changes the presence itself for a reason the simulator does not model (`SYSTEM`,
    /// recorded as [`SystemReason::Other`]); replaced at the next accept or close.
    pub fn system_sets(&self, systemuser_id: &str, presence_id: &str) -> Option<i64> {
        self.apply(|st, _| {
            st.set_by_system(systemuser_id, presence_id)
                .map(|c| vec![c])
        })
        .ok()
        .flatten()
    }

    /// The agent signs out: Offline, not logged in, by `SYSTEM`; every conversation is closed
    /// (capacity back to full) and nothing is sticky any more.
    pub fn sign_out(&self, systemuser_id: &str) -> Option<i64> {
        self.apply(|st, _| st.sign_out(systemuser_id).map(|c| vec![c]))
            .ok()
            .flatten()
    }

    /// The agent signs in with `presence_id` (their default presence), by `SYSTEM`, with no
    /// conversations.
    pub fn sign_in(&self, systemuser_id: &str, presence_id: &str) -> Option<i64> {
        self.apply(|st, _| st.sign_in(systemuser_id, presence_id).map(|c| vec![c]))
            .ok()
            .flatten()
    }

    /// The agent accepts a conversation: it takes [`SimConfig::conversation_units`] of the
    /// capacity (an Update that sends no webhook, the step being filtered on the presence), then
    /// D365 recalculates the presence unless it is sticky (dataverse.md §2.4).
    pub fn accept(&self, systemuser_id: &str) -> Result<(), SimRefusal> {
        self.apply(|st, rules| st.accept(systemuser_id, rules))
            .map(drop)
    }

    /// A conversation of the agent's ends: its capacity is freed, then D365 recalculates the
    /// presence unless it is sticky or the agent is disconnected.
    pub fn close(&self, systemuser_id: &str) -> Result<(), SimRefusal> {
        self.apply(|st, rules| st.close(systemuser_id, rules))
            .map(drop)
    }

    /// The agent's client goes away (tab closed, asleep, network lost): Offline at once, by
    /// `SYSTEM`, not logged in, conversations kept. [`Self::reconnect`] brings the agent back.
    pub fn disconnect(&self, systemuser_id: &str) -> Result<(), SimRefusal> {
        self.apply(|st, _| st.disconnect(systemuser_id).map(|c| vec![c]))
            .map(drop)
    }

    /// The agent is back after [`Self::disconnect`]: within [`SimConfig::restore_window`] the
    /// previous presence is restored (by `SYSTEM`, as sticky as it was); later, the presence is
    /// recalculated from capacity. Logged in again either way.
    pub fn reconnect(&self, systemuser_id: &str) -> Result<(), SimRefusal> {
        self.apply(|st, rules| st.reconnect(systemuser_id, rules).map(|c| vec![c]))
            .map(drop)
    }

    /// Run one operation and queue the webhooks of the rows it changed; returns the last row
    /// version written.
    fn apply<E>(
        &self,
        op: impl FnOnce(&mut State, &Rules) -> Result<Vec<RowChange>, E>,
    ) -> Result<Option<i64>, E> {
        self.ensure_worker();
        self.shared.apply(op)
    }

    /// Every presence write so far, in order, with its cause: what people and D365 did
    /// ([`ChangeCause::Agent`], [`ChangeCause::System`]) and what came through the API
    /// ([`ChangeCause::Api`]). Creating a row is not in it; a recalculation that kept the
    /// presence is not in it either.
    pub fn changes(&self) -> Vec<SimChange> {
        lock(&self.shared.state).journal.clone()
    }

    /// Every change of an agent's open conversations so far, in order, timed like the
    /// presence changes D365 makes of them ([`Self::changes`]).
    pub fn conversation_changes(&self) -> Vec<ConversationChange> {
        lock(&self.shared.state).conversation_log.clone()
    }

    /// The agent's free capacity units (`msdyn_availableunitscapacity`) and open conversations
    /// (`msdyn_assignedconversationcount`).
    pub fn capacity(&self, systemuser_id: &str) -> Option<(i64, i64)> {
        lock(&self.shared.state)
            .agent(systemuser_id)
            .map(|a| (a.capacity, a.assigned_conversations))
    }

    /// The agent's current presence id.
    pub fn presence(&self, systemuser_id: &str) -> Option<String> {
        lock(&self.shared.state)
            .agent(systemuser_id)
            .map(|a| a.presence_id.clone())
    }

    /// The agent's row.
    pub fn row(&self, systemuser_id: &str) -> Option<SimRow> {
        lock(&self.shared.state)
            .agent(systemuser_id)
            .map(|a| SimRow {
                agent_status_id: a.status_id.clone(),
                agent_id: a.agent_id.clone(),
                presence_id: a.presence_id.clone(),
                modified_on_ms: a.modified_on_ms,
                modified_by: a.modified_by.clone(),
                row_version: a.row_version,
                logged_in: a.logged_in,
            })
    }

    /// Queue a fault (see [`Fault`] for what each one hits).
    pub fn inject(&self, fault: Fault) {
        match fault {
            Fault::RateLimited { retry_after_secs } => {
                lock(&self.shared.api_faults).push(ApiFault::RateLimited { retry_after_secs });
            }
            Fault::ServerError(code) => {
                lock(&self.shared.api_faults).push(ApiFault::ServerError(code))
            }
            Fault::Slow(d) => lock(&self.shared.api_faults).push(ApiFault::Slow(d)),
            Fault::RevokeTokens => self.shared.authority.revoke_all(),
            Fault::DropWebhooks(n) => self.shared.outbox.add_faults(|f| f.drop += n),
            Fault::DuplicateWebhooks(n) => self.shared.outbox.add_faults(|f| f.duplicate += n),
            Fault::ReorderWebhooks(n) => self.shared.outbox.add_faults(|f| f.reorder += n),
            Fault::SizeExceededWebhooks(n) => {
                self.shared.outbox.add_faults(|f| f.size_exceeded += n)
            }
        }
    }

    /// Every Web API request received so far (token requests are counted by [`Self::authority`]).
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.shared.requests).clone()
    }

    /// How many Web API requests so far: the index the next one will have in [`Self::requests`], so a
    /// harness can place its own actions in the order of the requests without copying them.
    pub fn request_count(&self) -> usize {
        lock(&self.shared.requests).len()
    }

    /// The requests from index `from` on (see [`Self::request_count`]).
    pub fn requests_since(&self, from: usize) -> Vec<RecordedRequest> {
        let all = lock(&self.shared.requests);
        all.get(from..).map(<[_]>::to_vec).unwrap_or_default()
    }

    /// Every webhook POST so far, retries and duplicates included.
    pub fn deliveries(&self) -> Vec<Delivery> {
        self.shared.outbox.deliveries()
    }

    /// The `seq` of every event a [`Fault::DropWebhooks`] swallowed.
    pub fn dropped_webhooks(&self) -> Vec<u64> {
        self.shared.outbox.dropped().iter().map(|d| d.seq).collect()
    }

    /// Every webhook a [`Fault::DropWebhooks`] swallowed, with the agent and the time of the
    /// change it was for.
    pub fn dropped_webhook_changes(&self) -> Vec<DroppedWebhook> {
        self.shared.outbox.dropped()
    }

    /// Wait until no webhook is queued or in flight. Events held back by
    /// [`Fault::ReorderWebhooks`] until enough have arrived do not count.
    pub async fn wait_deliveries_idle(&self) {
        self.ensure_worker();
        self.shared.outbox.idle().await;
    }

    /// Agents change presence on their own until the handle is aborted, the activity's
    /// `max_changes` is reached, or the simulator is dropped.
    pub fn start_activity(&self, activity: Activity) -> tokio::task::JoinHandle<()> {
        self.ensure_worker();
        tokio::spawn(activity::run(Arc::downgrade(&self.shared), activity))
    }
}

impl Shared {
    /// Run one operation on the tables and queue the webhooks of the rows it changed, under one
    /// lock so webhooks leave in row order. Returns the last row version written.
    pub(crate) fn apply<E>(
        &self,
        op: impl FnOnce(&mut State, &Rules) -> Result<Vec<RowChange>, E>,
    ) -> Result<Option<i64>, E> {
        let mut st = lock(&self.state);
        let changes = op(&mut st, &self.rules)?;
        let version = changes.last().map(|c| c.row.row_version);
        for change in changes {
            self.outbox.push(change);
        }
        Ok(version)
    }
}
