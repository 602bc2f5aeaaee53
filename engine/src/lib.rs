//! # presync-engine
//!
//! The core of presync: one canonical presence per contact-center representative, kept
//! consistent across systems (Dynamics 365 Contact Center, Microsoft Teams, and whatever a
//! connector plug-in speaks to). This crate knows no concrete system and no concrete database
//! URL; connector crates depend on it, and the `presync` binary wires them together.
//!
//! Start reading at [`engine::Engine`], then [`rules`] (the conflict rules) and [`store`].
//!
//! ## The flow
//!
//! ```text
//!  push (webhook, notification) ─┐                                       ┌─> system A
//!  reconciler bulk read ─────────┴─> inbox ─> resolver ─> outbox ─> dispatcher ─> system B
//!                                   (durable,  (rules, one    (latest desired  (rate limit,
//!                                    deduped)   transaction)   per target)      retries, echo
//!                                                                               expectations)
//! ```
//!
//! 1. A connector's ingress turns a push into an [`Observation`] and calls
//!    [`Engine::ingest`](engine::Engine::ingest). When that returns, the observation is durable
//!    in the inbox (deduplicated by its delivery key) and the push may be acknowledged. (On
//!    SQLite it is durable in the intake, a file of its own, from where the resolver moves it
//!    into the inbox: see [`store`].)
//! 2. The resolver maps the observation to canonical ([`Connector::to_canonical`]) and applies
//!    the conflict rules ([`rules::decide`]) in one transaction: canonical state, per-system
//!    state, echo expectations, outbox rows and a history row with the reason.
//! 3. The outbox keeps the latest desired state per (representative, target), so a burst
//!    becomes one write. The dispatcher writes it through [`Connector::write`] within the
//!    target's limits, records the echo it expects back before writing, and honours
//!    `Retry-After`. In the running service ([`Engine::run`](engine::Engine::run)) the
//!    resolver's transaction claims a decision's writes and records their echo expectations
//!    itself, and starts them when it commits, within the same limits; the dispatcher makes
//!    what those leave, and the retries.
//! 4. [`Engine::reconcile`](engine::Engine::reconcile) reads every system in bulk and feeds what
//!    differs back in, as a missed change or as drift to repair.
//!
//! ## Writing a connector
//!
//! A connector is a crate that depends on this one and implements [`Connector`]:
//!
//! ```
//! use async_trait::async_trait;
//! use presync_engine::{
//!     Availability, Capabilities, Connector, ConnectorError, Desired, ExternalId, Mapped,
//!     NativeState, RemoteState, WriteSemantics,
//! };
//!
//! /// A system whose states are "on" and "off".
//! #[derive(Debug)]
//! struct Lamp;
//!
//! #[async_trait]
//! impl Connector for Lamp {
//!     fn kind(&self) -> &'static str {
//!         "lamp"
//!     }
//!
//!     fn capabilities(&self) -> Capabilities {
//!         Capabilities {
//!             push_ingress: false,
//!             bulk_read: true,
//!             write: true,
//!             write_semantics: WriteSemantics::Overwrite,
//!             source_timestamps: false,
//!         }
//!     }
//!
//!     // Pure and total. An unknown state is never Available.
//!     fn to_canonical(&self, native: &NativeState) -> Mapped {
//!         match native.code.as_str() {
//!             "on" => Mapped { availability: Availability::Available, known: true },
//!             "off" => Mapped { availability: Availability::Offline, known: true },
//!             _ => Mapped { availability: Availability::Offline, known: false },
//!         }
//!     }
//!
//!     fn to_native(&self, a: Availability) -> Option<NativeState> {
//!         Some(NativeState::new(if a.is_routable() { "on" } else { "off" }))
//!     }
//!
//!     // Idempotent. Classify failures where they happen: RateLimited (with Retry-After),
//!     // Transient (5xx, timeouts; say whether the request may have taken effect),
//!     // Unauthorized, Rejected.
//!     async fn write(&self, user: &ExternalId, desired: &Desired) -> Result<(), ConnectorError> {
//!         let _native = match desired {
//!             Desired::Set(p) => self.to_native(p.availability),
//!             Desired::Withdraw => return Err(ConnectorError::Unsupported("withdraw")),
//!         };
//!         let _ = user; // send it to the remote here
//!         Ok(())
//!     }
//!
//!     async fn read_all(&self, users: &[ExternalId]) -> Result<Vec<RemoteState>, ConnectorError> {
//!         Ok(Vec::new()) // read the remote in bulk here, paging as it requires
//!     }
//! }
//! ```
//!
//! Then:
//!
//! - **Push ingress.** The connector's HTTP handler authenticates the raw body, parses it into
//!   [`Observation`]s (with the system's own timestamp in `source_time`, a per-row version in
//!   `sequence` when there is one, and a `delivery_key` that a redelivery repeats), calls
//!   [`Engine::ingest`](engine::Engine::ingest), and only then answers 2xx. If `ingest` fails,
//!   it answers 503 so the sender retries. It never changes state itself.
//! - **Capabilities** tell the topology what the connector can do, and the rules how to treat
//!   it: `source_timestamps` says whether `source_time` comes from the system (echoes of
//!   presync's writes are then recognised by time as well as by state), and
//!   [`WriteSemantics::Contribution`] says a write is presync's share of an aggregate (a Teams
//!   presence session) that presync must withdraw when the system itself reports a change.
//! - **Conformance.** Run the kit in [`conformance`] against the connector, usually against its
//!   own simulator on a loopback port: implement [`conformance::Harness`] in a test and call
//!   `presync_engine::conformance::run(&harness).await.assert_passed()`. It checks the mapping,
//!   writes and bulk reads, idempotence, and that 429, 5xx, 401 and refusals are classified.
//! - **Registration.** Add one line for the connector's kind to the `presync` binary's registry.
//!
//! [`memory`] is a complete in-memory connector, used by this crate's own tests; read it as an
//! example.
//!
//! ## Guarantees
//!
//! - Nothing acknowledged is lost: [`Engine::ingest`](engine::Engine::ingest) returns after the
//!   inbox row (on SQLite, the intake row) is committed (SQLite runs with `synchronous = FULL`).
//! - Each inbox and outbox row is processed by one instance at a time (claims with a lease; on
//!   PostgreSQL `FOR UPDATE SKIP LOCKED`), and a stopped instance's claims pass to another when
//!   the lease ends.
//! - A target receives a write twice only when the first write's outcome was unknown (the
//!   process died, or the request timed out, between sending it and recording the result).
//! - An echo of presync's own write is never propagated. Within the clock-skew bound of one of
//!   presync's writes, a person setting the very state written is taken for its echo; it then
//!   changes nothing, since presync had just set that state.

pub mod clock;
pub mod config;
pub mod conformance;
pub mod connector;
mod dispatch;
pub mod engine;
pub mod memory;
pub mod model;
mod reads;
pub mod remote;
pub mod rules;
pub mod store;
pub mod time;
pub mod topology;

pub use connector::{Capabilities, Connector, ConnectorError, Mapped, RemoteState, WriteSemantics};
pub use engine::{Engine, EngineError, ReconcileReport};
pub use model::*;
