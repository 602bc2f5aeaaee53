//! A faithful simulator of the parts of Microsoft Graph that presync uses for Teams presence,
//! served on loopback for tests and demos (DESIGN.md, "Simulators"). A client bug must fail
//! against it the way it would fail against Microsoft; graph.md is the authority for its rules.
//!
//! [`GraphSim::router`] serves:
//! - the Entra token endpoint `POST /{tenant}/oauth2/v2.0/token`: client credentials with the
//!   application secret give **app-only** tokens; `grant_type=refresh_token` gives **delegated**
//!   tokens for the service account and rotates the refresh token; the device-code grant after
//!   `POST /{tenant}/oauth2/v2.0/devicecode` signs the service account in once a test calls
//!   [`GraphSim::approve_device_code`] (`tokens.rs`);
//! - presence reads under `/v1.0`: `GET users/{id}/presence`, `GET communications/presences/{id}`,
//!   `GET me/presence` (delegated only), `POST communications/getPresencesByUserId` (at most 650
//!   ids) (`actions.rs`);
//! - presence writes: `setPresence`, `clearPresence`, `setUserPreferredPresence`,
//!   `clearUserPreferredPresence` under `users/{id}/presence/`, `communications/presences/{id}/`
//!   and `me/presence/`, also namespace-qualified (`microsoft.graph.setPresence`), with the pair,
//!   session-id and duration rules of graph.md §2.2 and §2.3 (`actions.rs`);
//! - change subscriptions (`POST`, `GET`, `PATCH`, `DELETE /v1.0/subscriptions[/{id}]`), delegated
//!   only, with the validation handshake, the 650-user and 60-minute caps and conflicts
//!   (`subscriptions.rs`, `resource.rs`, `handshake.rs`);
//! - Graph's throttling (10,000 requests per 30 s per application per tenant by default, the
//!   presence limit since September 2025; [`GraphSimConfig::rate_limit`] selects 1,500, the
//!   per-API pages' figure): 429 with a decimal `Retry-After` (`faults.rs`).
//!
//! Presence is an aggregate (`presence.rs`, graph.md §4): the person's own Teams client (a base
//! state plus a meeting, a call, presenting and focusing under way, `person.rs`), one session
//! per application, and the preferred presence. It is held in the legacy values
//! (`Busy/InAMeeting`) and answered in each user's [`ValueSchema`] (`schema.rs`): by default the
//! values of September 2025 (`InAMeeting/Busy`), or the legacy ones, per tenant
//! ([`GraphSimConfig::schema`]) or per user ([`GraphSim::set_user_schema`]); reads, rich
//! notifications and [`GraphSim::presence`] translate, [`GraphSim::presence_internal`] does not.
//! Every change of a user's aggregate gets a new `sequenceNumber` and is recorded with its
//! cause, the person, an application or time ([`GraphSim::changes`], `record.rs`);
//! [`GraphSim::own_presence`] is what the person's own sources alone show.
//!
//! Time is the injected [`Clock`]: every request and every method applies fade and expiry at
//! the clock's now, and [`GraphSim::tick`] does it with nothing else happening (a background
//! task calls it every second of real time; tests with a
//! [`presync_engine::clock::ManualClock`] advance the clock and call it). When the
//! aggregate of a subscribed user changes, a change notification is queued and POSTed, in order,
//! by a background task (`notify.rs`); basic notifications carry no availability (graph.md §1.5),
//! rich ones carry it encrypted with the subscription's certificate (`cert.rs`,
//! [`crate::crypto::encrypt_for_subscription`]).
//!
//! Start with [`GraphSimConfig::new`] and [`GraphSim::new`], add users with
//! [`GraphSim::add_user`], then [`GraphSim::spawn`] and point the client at `http://{addr}` both
//! as the Graph base (`http://{addr}/v1.0`) and as the Entra authority.
//!
//! Deliberate choices where graph.md is silent or the real service is unknown (UNCONFIRMED):
//! - User ids in URLs and bodies must be GUIDs (`8-4-4-4-12`, any case): other ids get 400, as
//!   graph.md §2.1 says `{id}` must be the object id. Add users with GUID ids.
//! - Availability and activity values must be spelled exactly as documented (PascalCase).
//! - A delegated token may write only the signed-in user's own presence (`Presence.ReadWrite`);
//!   another user gets 403 `Forbidden` with an empty message (graph.md §2.4). App-only tokens may
//!   write anyone's. Both may read anyone's.
//! - getPresencesByUserId answers `PresenceUnknown/PresenceUnknown` for a GUID it does not know.
//! - Write actions answer 200 with an empty body, as documented; the OpenAPI description says
//!   204, so clients must accept both. [`GraphSimConfig::action_status`] switches to 204.
//! - Each application may hold one presence subscription per delegated user (graph.md §1.3):
//!   a second one answers 409, as does the same resource twice
//!   ([`GraphSimConfig::one_subscription_per_user`] relaxes the former).
//! - Notification URLs may be `http` (loopback receivers have no certificate);
//!   [`GraphSimConfig::require_https`] enforces Graph's HTTPS rule.
//! - One notification per POST (Graph may batch several; clients must handle both).
//! - The activity that accompanies each 2025 availability is UNCONFIRMED (graph.md): `Busy` with
//!   `InAMeeting` and `InACall`, `DoNotDisturb` with `Presenting` and `Focusing`. Legacy users
//!   see focusing as `DoNotDisturb/DoNotDisturb` (the legacy set has no Focusing). Choose the
//!   value set with [`GraphSimConfig::schema`].
//! - `sequenceNumber` is a per-tenant counter written as 20 zero-padded decimal digits, in
//!   every presence read and in rich notifications' resource data; whether Graph's payloads
//!   carry it is UNCONFIRMED ([`GraphSimConfig::emit_sequence_number`] leaves it out). A change
//!   that reads the same in the user's schema (the fade to `AvailableInactive` in 2025 values)
//!   still counts as a change: new stamp, record and notification.
//! - The person's client shows presenting over a call over a meeting over focusing over its
//!   base state (`person.rs`).

mod actions;
mod api;
mod cert;
mod config;
mod dates;
mod errors;
mod faults;
mod handshake;
mod notify;
mod person;
mod presence;
mod record;
mod resource;
mod schema;
mod state;
mod subscriptions;
mod tokens;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use axum::routing::post;
use presync_engine::clock::Clock;
use presync_engine::Millis;

use faults::{ApiFault, ApiFaults, RateLimiter};
use notify::Outbox;
use presence::{PREFERRED_LONG, PREFERRED_SHORT};
use state::State;
use tokens::TokenStore;

pub use config::GraphSimConfig;
pub use faults::Fault;
pub use notify::{DroppedNotification, NotificationKind, SentNotification};
pub use presence::EqualRank;
pub use record::{ChangeCause, PresenceChange};
pub use schema::ValueSchema;
pub use subscriptions::SimSubscription;
pub use tokens::{TokenKind, TokenRequest};

/// An application's presence session for a user, as the simulator holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimSession {
    /// The availability now, after fading.
    pub availability: String,
    /// The activity now, after fading.
    pub activity: String,
    /// The availability last posted.
    pub posted_availability: String,
    /// The activity last posted.
    pub posted_activity: String,
    /// When setPresence was last posted (ms since the epoch, simulator clock).
    pub last_posted: Millis,
    /// When the session ends unless posted again.
    pub expires_at: Millis,
}

/// One Graph request as received (token requests are in [`GraphSim::token_requests`]). The
/// bearer token is never kept.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedRequest {
    pub method: String,
    /// The decoded path, e.g. `/v1.0/users/{id}/presence/setPresence`.
    pub path: String,
    /// The decoded query string; empty when there is none.
    pub query: String,
    /// The body as JSON; a body that is not JSON is kept as a JSON string; `None` when empty.
    pub body: Option<serde_json::Value>,
    /// The status answered.
    pub status: u16,
    /// The `Retry-After` answered (429, and a 503 that sets one), in ms.
    pub retry_after_ms: Option<i64>,
    /// How long an injected [`Fault::Slow`] held the answer back after the operation, in ms.
    pub delayed_ms: Option<i64>,
    /// The kind of the valid bearer token presented; `None` when it was missing or refused.
    pub token: Option<TokenKind>,
    /// When the request arrived (the monotonic clock, before any processing), so a benchmark
    /// can time a change from its source to the simulator: `presync bench` compares it with
    /// the moment a Dataverse webhook was acknowledged.
    pub received: std::time::Instant,
    /// When it took effect (the simulator's clock, ms since the epoch): a write is done by then,
    /// in the same time as [`GraphSim::changes`].
    pub at_ms: Millis,
}

/// The simulator. Cheap to clone; clones share one tenant.
#[derive(Clone)]
pub struct GraphSim {
    shared: Arc<Shared>,
}

pub(crate) struct Shared {
    cfg: GraphSimConfig,
    clock: Arc<dyn Clock>,
    tokens: Mutex<TokenStore>,
    token_requests: Mutex<Vec<TokenRequest>>,
    state: Mutex<State>,
    faults: Mutex<ApiFaults>,
    limiter: Mutex<RateLimiter>,
    requests: Mutex<Vec<RecordedRequest>>,
    outbox: Outbox,
    http: reqwest::Client,
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Let the delivery task see that the simulator is gone.
        self.outbox.wake.notify_one();
    }
}

impl std::fmt::Debug for GraphSim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GraphSim")
            .field("tenant_id", &self.shared.cfg.tenant_id)
            .field("app_client_id", &self.shared.cfg.app_client_id)
            .finish_non_exhaustive()
    }
}

/// Lock a mutex, ignoring poisoning (a panicking test must not wedge the others).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl GraphSim {
    /// A simulator for `cfg` on `clock`. Starts its background tasks when called inside a Tokio
    /// runtime (otherwise at [`GraphSim::router`] or [`GraphSim::spawn`]).
    pub fn new(cfg: GraphSimConfig, clock: Arc<dyn Clock>) -> Self {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        let sim = GraphSim {
            shared: Arc::new(Shared {
                tokens: Mutex::new(TokenStore::new(&cfg.refresh_token)),
                token_requests: Mutex::new(Vec::new()),
                state: Mutex::new({
                    let mut st = State::default();
                    st.person_first = cfg.equal_rank == EqualRank::PersonFirst;
                    st
                }),
                faults: Mutex::new(ApiFaults::default()),
                limiter: Mutex::new(RateLimiter::new(cfg.rate_limit.0, cfg.rate_limit.1)),
                requests: Mutex::new(Vec::new()),
                outbox: Outbox::new(),
                http,
                cfg,
                clock,
            }),
        };
        sim.ensure_workers();
        sim
    }

    /// Start the delivery task and the ticker, once, if a Tokio runtime is running.
    fn ensure_workers(&self) {
        if tokio::runtime::Handle::try_current().is_ok() && self.shared.outbox.claim_start() {
            tokio::spawn(notify::run(
                Arc::downgrade(&self.shared),
                self.shared.outbox.wake.clone(),
            ));
            if self.shared.cfg.auto_tick {
                tokio::spawn(notify::ticker(Arc::downgrade(&self.shared)));
            }
        }
    }

    /// The configuration.
    pub fn config(&self) -> &GraphSimConfig {
        &self.shared.cfg
    }

    /// The token endpoint and Graph `/v1.0`.
    pub fn router(&self) -> axum::Router {
        self.ensure_workers();
        axum::Router::new()
            .route("/{tenant}/oauth2/v2.0/token", post(tokens::token_endpoint))
            .route(
                "/{tenant}/oauth2/v2.0/devicecode",
                post(tokens::devicecode_endpoint),
            )
            .with_state(self.clone())
            .merge(api::router(self.clone()))
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
        presync_entra::sim::spawn_router(self.router(), "Graph simulator").await
    }

    /// The token URL for a simulator listening at `base` (e.g. `http://127.0.0.1:PORT`).
    pub fn token_url(&self, base: &str) -> String {
        format!(
            "{}/{}/oauth2/v2.0/token",
            base.trim_end_matches('/'),
            self.shared.cfg.tenant_id
        )
    }

    /// Add a user, signed out (`Offline/Offline`). Use the user's object id (a GUID): Graph takes
    /// no other id. Adding a user twice keeps the first.
    pub fn add_user(&self, user_id: &str) {
        lock(&self.shared.state).add_user(user_id);
    }

    /// Apply fade and expiry at the clock's now, drop expired subscriptions, and queue
    /// notifications for every aggregate that changed.
    pub fn tick(&self) {
        let mut st = lock(&self.shared.state);
        self.shared.settle(&mut st);
    }

    /// The user's aggregate (availability, activity) at the clock's now, in the user's value
    /// schema, as a read would answer it: the truth tests compare to.
    /// `PresenceUnknown/PresenceUnknown` for an unknown user.
    pub fn presence(&self, user: &str) -> (String, String) {
        let mut st = lock(&self.shared.state);
        self.shared.settle(&mut st);
        st.user(user)
            .map_or_else(unknown, |u| u.answered(self.shared.cfg.schema).tuple())
    }

    /// The user's aggregate at the clock's now as the simulator holds it, in the legacy values
    /// whatever the user's schema (`Busy/InAMeeting`, `Available/AvailableInactive`; focusing is
    /// `DoNotDisturb/Focusing`). `PresenceUnknown/PresenceUnknown` for an unknown user.
    pub fn presence_internal(&self, user: &str) -> (String, String) {
        let mut st = lock(&self.shared.state);
        self.shared.settle(&mut st);
        st.user(user).map_or_else(unknown, |u| u.held.tuple())
    }

    /// The user's current `sequenceNumber` (`record.rs`), whether or not
    /// [`GraphSimConfig::emit_sequence_number`] puts it in payloads; `None` for an unknown
    /// user.
    pub fn sequence_number(&self, user: &str) -> Option<String> {
        let mut st = lock(&self.shared.state);
        self.shared.settle(&mut st);
        st.user(user).map(|u| record::stamp(u.sequence))
    }

    /// Answer `user` in `schema` from now on, whatever [`GraphSimConfig::schema`] says
    /// ([`ValueSchema::Mixed`] picks by the user's position, as it does for the tenant). This
    /// is not a change of the user's presence: no new stamp, no notification. False for an
    /// unknown user.
    pub fn set_user_schema(&self, user: &str, schema: ValueSchema) -> bool {
        let mut st = lock(&self.shared.state);
        match st.user_quiet_mut(user) {
            Some(u) => {
                u.schema = Some(schema);
                true
            }
            None => false,
        }
    }

    /// The value schema `user` is answered in now ([`ValueSchema::V2025`] or
    /// [`ValueSchema::Legacy`]); `None` for an unknown user.
    pub fn user_schema(&self, user: &str) -> Option<ValueSchema> {
        let st = lock(&self.shared.state);
        st.user(user).map(|u| u.schema(self.shared.cfg.schema))
    }

    /// The preferred presence currently set for the user, if any (whether or not it shows), as
    /// held (legacy values).
    pub fn preferred(&self, user: &str) -> Option<(String, String)> {
        let mut st = lock(&self.shared.state);
        self.shared.settle(&mut st);
        st.user(user)?.preferred.as_ref().map(|p| p.state.tuple())
    }

    /// The session of application `app_id` for the user, at the clock's now, as held (legacy
    /// values: a faded session is `Available/AvailableInactive`).
    pub fn session(&self, user: &str, app_id: &str) -> Option<SimSession> {
        let now = self.shared.clock.now();
        let mut st = lock(&self.shared.state);
        self.shared.settle(&mut st);
        let s = st.user(user)?.apps.get(app_id)?;
        let effective = s.effective(now);
        Some(SimSession {
            availability: effective.availability,
            activity: effective.activity,
            posted_availability: s.posted.availability.clone(),
            posted_activity: s.posted.activity.clone(),
            last_posted: s.posted_at,
            expires_at: s.expires_at,
        })
    }

    /// Queue a fault (see [`Fault`] for what each one hits).
    pub fn inject(&self, fault: Fault) {
        match fault {
            Fault::RateLimited { retry_after } => {
                lock(&self.shared.faults).push(ApiFault::RateLimited { retry_after })
            }
            Fault::ServerError(status) => {
                lock(&self.shared.faults).push(ApiFault::ServerError(status))
            }
            Fault::Slow(d) => lock(&self.shared.faults).push(ApiFault::Slow(d)),
            Fault::RevokeTokens => lock(&self.shared.tokens).revoke_access(),
            Fault::DropNotifications(n) => self.shared.outbox.add_faults(|f| f.drop += n),
            Fault::DuplicateNotifications(n) => self.shared.outbox.add_faults(|f| f.duplicate += n),
            Fault::ReorderNotifications(n) => self.shared.outbox.add_faults(|f| f.reorder += n),
            Fault::FailValidation => lock(&self.shared.faults).fail_validation += 1,
        }
    }

    /// Refuse every refresh token from now on (a password reset or revoked sessions): the
    /// service account must sign in again.
    pub fn revoke_refresh_tokens(&self) {
        lock(&self.shared.tokens).revoke_refresh();
    }

    /// The service account approves the device-code sign-in showing `user_code` (as a person
    /// would at `https://microsoft.com/devicelogin`). False when no pending sign-in has that code.
    pub fn approve_device_code(&self, user_code: &str) -> bool {
        lock(&self.shared.tokens).decide_device_code(user_code, true)
    }

    /// The person declines the device-code sign-in showing `user_code`. False when no pending
    /// sign-in has that code.
    pub fn decline_device_code(&self, user_code: &str) -> bool {
        lock(&self.shared.tokens).decide_device_code(user_code, false)
    }

    /// The refresh token a client should hold now (the latest rotation), if not revoked.
    pub fn current_refresh_token(&self) -> Option<String> {
        lock(&self.shared.tokens).current_refresh()
    }

    /// Every Graph request received so far.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.shared.requests).clone()
    }

    /// How many Graph requests so far: the index the next one will have in [`Self::requests`], so a
    /// harness can place its own actions in the order of the requests without copying them.
    pub fn request_count(&self) -> usize {
        lock(&self.shared.requests).len()
    }

    /// The requests from index `from` on (see [`Self::request_count`]).
    pub fn requests_since(&self, from: usize) -> Vec<RecordedRequest> {
        let all = lock(&self.shared.requests);
        all.get(from..).map(<[_]>::to_vec).unwrap_or_default()
    }

    /// Every token request received so far.
    pub fn token_requests(&self) -> Vec<TokenRequest> {
        lock(&self.shared.token_requests).clone()
    }

    /// Every POST the simulator made so far: validation handshakes, change and lifecycle
    /// notifications, retries and duplicates included, in the order they were made.
    pub fn notifications(&self) -> Vec<SentNotification> {
        self.shared.outbox.sent()
    }

    /// The `seq` of every notification a [`Fault::DropNotifications`] swallowed.
    pub fn dropped_notifications(&self) -> Vec<u64> {
        self.shared.outbox.dropped().iter().map(|d| d.seq).collect()
    }

    /// Every notification a [`Fault::DropNotifications`] swallowed, with its user and when.
    pub fn dropped_notification_records(&self) -> Vec<DroppedNotification> {
        self.shared.outbox.dropped()
    }

    /// Wait until no notification is queued or being sent.
    pub async fn wait_notifications_idle(&self) {
        self.ensure_workers();
        self.shared.outbox.idle().await;
    }

    /// Live subscriptions at the clock's now, oldest first.
    pub fn subscriptions(&self) -> Vec<SimSubscription> {
        let mut st = lock(&self.shared.state);
        self.shared.settle(&mut st);
        st.subs.iter().map(|s| s.public()).collect()
    }

    /// Queue a lifecycle notification (`reauthorizationRequired`, `subscriptionRemoved` or
    /// `missed`) for a subscription, to its `lifecycleNotificationUrl` or else its
    /// `notificationUrl`. `subscriptionRemoved` also removes the subscription. False when the
    /// subscription does not exist.
    pub fn send_lifecycle(&self, subscription_id: &str, event: &str) -> bool {
        self.ensure_workers();
        let mut st = lock(&self.shared.state);
        self.shared.settle(&mut st);
        let Some(i) = st.subs.iter().position(|s| s.id == subscription_id) else {
            return false;
        };
        notify::queue_lifecycle(&self.shared, &st.subs[i], event);
        if event == "subscriptionRemoved" {
            st.subs.remove(i);
        }
        true
    }
}

impl Shared {
    /// Apply time at the clock's now, record what changed as [`ChangeCause::Timer`] and queue
    /// the notifications it causes (under the caller's state lock, so records and
    /// notifications are in the order of the changes).
    pub(crate) fn settle(&self, st: &mut State) {
        self.settle_as(st, |_| ChangeCause::Timer);
    }

    /// [`Shared::settle`] right after `user`'s sources were edited by `cause`: the changes of
    /// `user` are recorded with `cause`, any other user's as [`ChangeCause::Timer`].
    pub(crate) fn settle_by(&self, st: &mut State, user: &str, cause: ChangeCause) {
        let key = state::user_key(user);
        self.settle_as(st, |k| {
            if k == key {
                cause.clone()
            } else {
                ChangeCause::Timer
            }
        });
        record::note_edit(st, &key, self.clock.now(), self.cfg.schema, cause);
    }

    fn settle_as(&self, st: &mut State, cause_of: impl Fn(&str) -> ChangeCause) {
        let now = self.clock.now();
        let changes = st.settle(now);
        if !changes.is_empty() {
            let records = record::record(st, changes, now, self.cfg.schema, cause_of);
            notify::queue_changes(self, st, &records);
        }
    }
}

/// The pair answered for an unknown user.
fn unknown() -> (String, String) {
    ("PresenceUnknown".to_owned(), "PresenceUnknown".to_owned())
}

/// Default expiry of a preferred presence (graph.md §2.2).
pub(crate) fn preferred_default(availability: &str) -> Millis {
    if matches!(availability, "DoNotDisturb" | "Busy") {
        PREFERRED_SHORT
    } else {
        PREFERRED_LONG
    }
}
