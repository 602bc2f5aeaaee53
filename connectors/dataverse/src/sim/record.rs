//! The simulator's record of what happened to each agent's presence, and why: the truth a test
//! compares presync's view with. `Agent` and `System` changes are the genuine ones (what people
//! and D365's own automation did); `Api` changes are presync's own writes.

use presync_engine::Availability;

/// One write of an agent's `msdyn_currentpresenceid`, as [`super::DataverseSim::changes`]
/// lists them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimChange {
    /// The agent's systemuserid.
    pub agent_id: String,
    /// `msdyn_presencemodifiedonwithmilliseconds` of the write, ms since the epoch.
    pub at_ms: i64,
    /// The presence written (`msdyn_presenceid`).
    pub presence_id: String,
    /// The canonical availability of the presence's base status.
    pub base: Availability,
    /// Who or what made the change.
    pub cause: ChangeCause,
}

/// A change of an agent's open conversations (`msdyn_assignedconversationcount`), as
/// [`super::DataverseSim::conversation_changes`] lists them: an accept, a close, or a sign-out
/// closing every one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationChange {
    /// The agent's systemuserid.
    pub agent_id: String,
    /// `msdyn_capacitymodifiedon` of the change, ms since the epoch.
    pub at_ms: i64,
    /// The conversations open after it.
    pub open: i64,
}

/// Who or what changed a presence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeCause {
    /// The agent chose it by hand ([`super::DataverseSim::agent_sets`]).
    Agent,
    /// D365 changed it itself.
    System(SystemReason),
    /// `CCaaS_ModifyAgentPresence`, i.e. presync.
    Api {
        /// The impersonated caller's systemuserid, or `"app"` for the application user.
        caller: String,
    },
}

impl ChangeCause {
    /// Whether people or D365 made the change, rather than a call through the API.
    pub fn is_genuine(&self) -> bool {
        !matches!(self, ChangeCause::Api { .. })
    }
}

/// Why D365 changed a presence on its own (dataverse.md §2.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SystemReason {
    /// Recalculated from capacity after a conversation was accepted or closed, or on a
    /// reconnect after the restore window.
    Recalculated,
    /// The agent signed in ([`super::DataverseSim::sign_in`]).
    SignedIn,
    /// The agent signed out ([`super::DataverseSim::sign_out`]).
    SignedOut,
    /// The agent's client went away ([`super::DataverseSim::disconnect`]).
    Disconnected,
    /// The agent came back within the restore window and got the previous presence back.
    Restored,
    /// Anything else ([`super::DataverseSim::system_sets`], the capacity flips of an
    /// [`super::Activity`]).
    Other,
}

/// Why the simulator refused a conversation or connection event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SimRefusal {
    /// No agent-status row for this systemuserid.
    #[error("no such agent")]
    UnknownAgent,
    /// The agent is signed out or disconnected.
    #[error("the agent is not signed in")]
    NotSignedIn,
    /// Fewer capacity units are free than a conversation takes.
    #[error("the agent has no capacity for another conversation")]
    NoCapacity,
    /// The agent has no open conversation to close.
    #[error("the agent has no open conversation")]
    NoConversation,
    /// A reconnect for an agent who is not disconnected.
    #[error("the agent is not disconnected")]
    NotDisconnected,
}
