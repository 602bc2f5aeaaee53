//! The connector contract: what a plug-in for one remote system implements.
//!
//! A connector is pure mapping plus two remote operations:
//!
//! - [`Connector::to_canonical`] / [`Connector::to_native`]: pure, total mapping between the
//!   system's native states and [`Availability`]. An unknown native state must map to a
//!   not-routable availability, never to `Available`.
//! - [`Connector::write`]: make the remote show a desired state. Idempotent: writing the same
//!   desired state twice leaves the remote as one write would.
//! - [`Connector::read_all`]: a bulk read for the reconciler.
//!
//! Push ingress (webhooks, change notifications) is not a trait method: the connector's HTTP
//! handler builds [`Observation`](crate::Observation)s and hands them to
//! [`Engine::ingest`](crate::Engine::ingest), which stores them durably before the handler
//! answers. The capability flag says the connector does it, so the topology can check it.
//!
//! Errors are classified where they happen, in [`ConnectorError`]; the dispatcher decides retries
//! from [`ConnectorError::retry_after`] and [`ConnectorError::is_transient`], never from text.

use std::time::Duration;

use async_trait::async_trait;

use crate::model::{Availability, Desired, ExternalId, Millis, NativeState, Origin};

/// What a connector can do. The topology checks edges against it before start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// The system pushes changes to presync (webhook, change notification, or polling that
    /// produces observations only for changes).
    pub push_ingress: bool,
    /// [`Connector::read_all`] works.
    pub bulk_read: bool,
    /// [`Connector::write`] works.
    pub write: bool,
    /// What a write means at the remote.
    pub write_semantics: WriteSemantics,
    /// The system's observations carry a trustworthy source timestamp. When false, the source
    /// time is the time presync observed the state, and the reconciler treats a bulk-read
    /// difference from the last observation as a missed change only when it differs from what
    /// was last observed there.
    pub source_timestamps: bool,
}

/// What a write does at the remote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteSemantics {
    /// The write sets the system's state (Dataverse `CCaaS_ModifyAgentPresence`).
    Overwrite,
    /// The write sets presync's own contribution to an aggregate that the person's own sources
    /// also feed (a Teams presence session). When the system itself reports a change that
    /// becomes canonical, presync withdraws its contribution so that a stale contribution never
    /// holds the aggregate (the sticky-echo case).
    Contribution,
    /// The write overrides what the person's own sources show while it is set, and a withdrawal
    /// (or `Offline`) removes it, so that the system shows the person's own state again (a
    /// Teams preferred presence). A person's own override replaces presync's. presync does not
    /// withdraw when the system itself reports a change: that change may be the person's own
    /// override, in the same slot.
    Override,
}

impl WriteSemantics {
    /// Whether the person's own state lies beneath presync's write, to show again when presync
    /// lowers or withdraws it.
    pub fn layers_over_the_person(self) -> bool {
        matches!(
            self,
            WriteSemantics::Contribution | WriteSemantics::Override
        )
    }
}

/// The result of mapping a native state to canonical.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapped {
    pub availability: Availability,
    /// Whether the mapping knew the native state. An unknown state maps to a not-routable
    /// availability and is logged once by the engine.
    pub known: bool,
}

/// One user's state as a bulk read returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteState {
    pub external_id: ExternalId,
    pub native: NativeState,
    /// The system's timestamp for the state, when it has one.
    pub source_time: Option<Millis>,
    pub sequence: Option<i64>,
    pub origin: Origin,
    /// What the system's own automation would show the user now, when it says (see
    /// [`Observation::automatic`](crate::Observation::automatic)).
    pub automatic: Option<Availability>,
}

/// A failed remote operation, classified where it failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    /// The remote throttled the call (HTTP 429, Dataverse service protection). Nothing happened.
    #[error("rate limited by the remote{}: {message}", .retry_after.map(|d| format!(" (retry after {d:?})")).unwrap_or_default())]
    RateLimited {
        retry_after: Option<Duration>,
        message: String,
    },
    /// A fault that may pass: 5xx, connection reset, timeout. `outcome_unknown` is true when the
    /// request may have reached the remote and taken effect (a timeout after sending).
    #[error("transient failure: {message}")]
    Transient {
        message: String,
        outcome_unknown: bool,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// Credentials were refused (after the connector's own single token refresh).
    #[error("unauthorized: {message}")]
    Unauthorized { message: String },
    /// The remote refused this request and will refuse it again (400, 403, 404, unmappable).
    #[error("rejected: {message}")]
    Rejected { message: String },
    /// presync's identity lacks a permission the remote requires (a role not granted): every
    /// such request fails until an administrator grants it. `remedy` says what to grant.
    #[error("forbidden: {message}; {remedy}")]
    Forbidden { message: String, remedy: String },
    /// The user is not signed in to the remote, which cannot take a presence for them now (a
    /// Dynamics 365 representative outside their shift). Normal, and not worth a retry: the
    /// next sign-in is a change of its own.
    #[error("not signed in: {message}")]
    NotSignedIn { message: String },
    /// The operation is not one this connector supports.
    #[error("not supported by this connector: {0}")]
    Unsupported(&'static str),
}

impl ConnectorError {
    /// A transient error whose request certainly did not take effect.
    pub fn transient(message: impl Into<String>) -> Self {
        ConnectorError::Transient {
            message: message.into(),
            outcome_unknown: false,
            source: None,
        }
    }

    /// A transient error whose request may have taken effect (e.g. a timeout after sending).
    pub fn unknown_outcome(message: impl Into<String>) -> Self {
        ConnectorError::Transient {
            message: message.into(),
            outcome_unknown: true,
            source: None,
        }
    }

    /// How long the remote asked us to wait, if it said.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ConnectorError::RateLimited { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// Whether retrying the same request later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            ConnectorError::RateLimited { .. }
                | ConnectorError::Transient { .. }
                | ConnectorError::Unauthorized { .. }
        )
    }

    /// Whether the failed request may nevertheless have changed the remote.
    pub fn outcome_unknown(&self) -> bool {
        matches!(
            self,
            ConnectorError::Transient {
                outcome_unknown: true,
                ..
            }
        )
    }

    /// A short, stable name for metrics and history.
    pub fn class(&self) -> &'static str {
        match self {
            ConnectorError::RateLimited { .. } => "rate_limited",
            ConnectorError::Transient { .. } => "transient",
            ConnectorError::Unauthorized { .. } => "unauthorized",
            ConnectorError::Rejected { .. } => "rejected",
            ConnectorError::Forbidden { .. } => "forbidden",
            ConnectorError::NotSignedIn { .. } => "not_signed_in",
            ConnectorError::Unsupported(_) => "unsupported",
        }
    }
}

/// The plug-in contract. See the crate documentation for a walk-through.
#[async_trait]
pub trait Connector: Send + Sync + std::fmt::Debug + 'static {
    /// The connector kind, as named in config (`dataverse`, `teams`, `memory`).
    fn kind(&self) -> &'static str;

    /// What this instance can do.
    fn capabilities(&self) -> Capabilities;

    /// Map a native state to canonical. Pure and total.
    fn to_canonical(&self, native: &NativeState) -> Mapped;

    /// The native state this connector writes for a canonical availability, or `None` when the
    /// system cannot express it. Pure.
    fn to_native(&self, availability: Availability) -> Option<NativeState>;

    /// Make the remote show `desired` for `user`. Idempotent.
    async fn write(&self, user: &ExternalId, desired: &Desired) -> Result<(), ConnectorError>;

    /// Read the current state of `users` (or of every user the system knows, when it reads
    /// whole tables) for the reconciler.
    async fn read_all(&self, users: &[ExternalId]) -> Result<Vec<RemoteState>, ConnectorError>;
}
