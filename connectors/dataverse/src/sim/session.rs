//! D365's own presence automation (dataverse.md §2.4): conversations taking capacity, the
//! recalculation of presence from capacity at each accept and close, how long a choice made by
//! hand lasts, sign-in and sign-out, and the disconnect with its restore window.
//!
//! The rules, as the reference states them:
//! - capacity fully used -> Busy - DND, partly used -> Busy, free -> Available; 10 open sessions
//!   -> Busy - DND too. The result is written by `SYSTEM`.
//! - A presence whose base status is Away, Busy - DND or Offline chosen by hand is *sticky*: it
//!   lasts until sign-out or the next manual change. Everything else (a manual Available or
//!   Busy, anything written by `SYSTEM`) is replaced at the next accept or close. An API write
//!   counts as manual per [`Rules::api_presence_is_manual`] (UNCONFIRMED).
//! - A recalculation whose result is the current presence writes no presence (so no webhook),
//!   but its capacity write still versions the row.
//! - A disconnect sets Offline at once and keeps the conversations; a reconnect within the
//!   window restores the previous presence and its stickiness, a later one recalculates.
//!
//! Deliberate choices where the reference is silent: creating a row is not a presence change
//! (it is not in the record); a conversation closed while the agent is disconnected frees its
//! capacity but leaves the presence to the reconnect; other writes while disconnected change the
//! row but not what a reconnect restores.

use presync_engine::Availability;

use super::record::{ChangeCause, SimChange, SimRefusal, SystemReason};
use super::state::{
    key, RowChange, RowWrite, SetError, State, BY_AGENT, BY_SYSTEM, DEFAULT_CAPACITY,
};
use crate::mapping::builtin;

/// Open sessions at which D365 sets Busy - DND whatever the capacity (dataverse.md §2.4).
const MAX_SESSIONS: i64 = 10;

/// What D365 remembers about an agent beside the row.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Session {
    /// The current presence lasts until sign-out or the next manual change.
    pub sticky: bool,
    /// Set while the agent is disconnected.
    pub parked: Option<Parked>,
}

/// The presence a disconnect replaced, for the reconnect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Parked {
    pub presence_id: String,
    pub sticky: bool,
    /// When the disconnect was written (ms).
    pub at_ms: i64,
}

/// The configured parts of the automation (from [`super::SimConfig`]).
#[derive(Debug, Clone)]
pub(crate) struct Rules {
    /// Capacity units one conversation takes.
    pub conversation_units: i64,
    /// Whether an API-set Away, Busy - DND or Offline is sticky like a hand choice.
    pub api_presence_is_manual: bool,
    /// How long after a disconnect a reconnect restores the previous presence (ms).
    pub restore_window_ms: i64,
    /// The base statuses the router offers work to.
    pub routable: Vec<Availability>,
}

/// The presence D365 computes from capacity.
pub(crate) fn from_capacity(available: i64, open: i64) -> &'static str {
    if available <= 0 || open >= MAX_SESSIONS {
        builtin::BUSY_DND
    } else if available < DEFAULT_CAPACITY {
        builtin::BUSY
    } else {
        builtin::AVAILABLE
    }
}

/// Whether a hand-chosen presence with this base status lasts until sign-out.
fn sticky_base(base: Option<Availability>) -> bool {
    matches!(
        base,
        Some(Availability::Away | Availability::DoNotDisturb | Availability::Offline)
    )
}

impl From<SetError> for SimRefusal {
    fn from(_: SetError) -> Self {
        // Every caller has checked the presence; only the agent can be missing.
        SimRefusal::UnknownAgent
    }
}

/// One presence write with its cause.
struct Put<'a> {
    presence: &'a str,
    by: &'a str,
    logged_in: Option<bool>,
    conversations: Option<(i64, i64)>,
    cause: ChangeCause,
    sticky: bool,
}

impl Put<'_> {
    fn system(presence: &str, reason: SystemReason) -> Put<'_> {
        Put {
            presence,
            by: BY_SYSTEM,
            logged_in: None,
            conversations: None,
            cause: ChangeCause::System(reason),
            sticky: false,
        }
    }
}

impl State {
    fn session_mut(&mut self, agent: &str) -> &mut Session {
        self.sessions.entry(key(agent)).or_default()
    }

    /// Write a presence, set its stickiness and record it.
    fn put(&mut self, agent: &str, p: Put<'_>) -> Result<RowChange, SetError> {
        let change = self.write(
            agent,
            RowWrite {
                presence: Some((p.presence, p.by)),
                logged_in: p.logged_in,
                conversations: p.conversations,
            },
        )?;
        let row = &change.row;
        let record = SimChange {
            agent_id: row.agent_id.clone(),
            at_ms: row.modified_on_ms,
            presence_id: row.presence_id.clone(),
            base: self
                .base_of(&row.presence_id)
                .unwrap_or(Availability::Offline),
            cause: p.cause,
        };
        self.journal.push(record);
        self.session_mut(agent).sticky = p.sticky;
        Ok(change)
    }

    /// The agent picks a presence by hand.
    pub(crate) fn set_by_agent(
        &mut self,
        agent: &str,
        presence: &str,
    ) -> Result<RowChange, SetError> {
        let sticky = sticky_base(self.base_of(presence));
        self.put(
            agent,
            Put {
                by: BY_AGENT,
                cause: ChangeCause::Agent,
                sticky,
                ..Put::system(presence, SystemReason::Other)
            },
        )
    }

    /// D365 sets a presence for a reason the simulator does not model.
    pub(crate) fn set_by_system(
        &mut self,
        agent: &str,
        presence: &str,
    ) -> Result<RowChange, SetError> {
        self.put(agent, Put::system(presence, SystemReason::Other))
    }

    /// `CCaaS_ModifyAgentPresence` writes a presence, `modified_by` as configured.
    pub(crate) fn set_by_api(
        &mut self,
        agent: &str,
        presence: &str,
        modified_by: &str,
        caller: String,
        rules: &Rules,
    ) -> Result<RowChange, SetError> {
        let sticky = rules.api_presence_is_manual && sticky_base(self.base_of(presence));
        self.put(
            agent,
            Put {
                by: modified_by,
                cause: ChangeCause::Api { caller },
                sticky,
                ..Put::system(presence, SystemReason::Other)
            },
        )
    }

    /// Sign in with `presence`, no conversations, nothing sticky.
    pub(crate) fn sign_in(&mut self, agent: &str, presence: &str) -> Result<RowChange, SetError> {
        let change = self.put(
            agent,
            Put {
                logged_in: Some(true),
                conversations: Some((0, DEFAULT_CAPACITY)),
                ..Put::system(presence, SystemReason::SignedIn)
            },
        )?;
        self.session_mut(agent).parked = None;
        Ok(change)
    }

    /// Sign out: Offline, every conversation closed, nothing sticky.
    pub(crate) fn sign_out(&mut self, agent: &str) -> Result<RowChange, SetError> {
        let change = self.put(
            agent,
            Put {
                logged_in: Some(false),
                conversations: Some((0, DEFAULT_CAPACITY)),
                ..Put::system(builtin::OFFLINE, SystemReason::SignedOut)
            },
        )?;
        self.session_mut(agent).parked = None;
        Ok(change)
    }

    /// The open conversations and the free capacity, checked against the agent.
    fn load(&self, agent: &str) -> Result<(bool, i64, i64), SimRefusal> {
        let row = self.agent(agent).ok_or(SimRefusal::UnknownAgent)?;
        Ok((row.logged_in, row.assigned_conversations, row.capacity))
    }

    /// The agent accepts a conversation: capacity is taken, then presence recalculated.
    pub(crate) fn accept(
        &mut self,
        agent: &str,
        rules: &Rules,
    ) -> Result<Vec<RowChange>, SimRefusal> {
        let (logged_in, open, available) = self.load(agent)?;
        if !logged_in {
            return Err(SimRefusal::NotSignedIn);
        }
        if available < rules.conversation_units {
            return Err(SimRefusal::NoCapacity);
        }
        self.conversations(agent, open + 1, rules)
    }

    /// A conversation ends: capacity is freed, then presence recalculated (unless the agent is
    /// disconnected; the reconnect decides then).
    pub(crate) fn close(
        &mut self,
        agent: &str,
        rules: &Rules,
    ) -> Result<Vec<RowChange>, SimRefusal> {
        let (_, open, _) = self.load(agent)?;
        if open <= 0 {
            return Err(SimRefusal::NoConversation);
        }
        self.conversations(agent, open - 1, rules)
    }

    fn conversations(
        &mut self,
        agent: &str,
        open: i64,
        rules: &Rules,
    ) -> Result<Vec<RowChange>, SimRefusal> {
        let available = DEFAULT_CAPACITY - rules.conversation_units * open;
        let capacity = self.write(
            agent,
            RowWrite {
                conversations: Some((open, available)),
                ..RowWrite::default()
            },
        )?;
        let mut changes = vec![capacity];
        let logged_in = changes.first().is_some_and(|c| c.row.logged_in);
        let sticky = self.session_mut(agent).sticky;
        if logged_in && !sticky {
            changes.extend(self.recalculate(agent, None)?);
        }
        Ok(changes)
    }

    /// Write the presence capacity gives, by `SYSTEM`, not sticky; nothing when it is the
    /// current presence and `logged_in` changes nothing either.
    fn recalculate(
        &mut self,
        agent: &str,
        logged_in: Option<bool>,
    ) -> Result<Option<RowChange>, SetError> {
        let row = self.agent(agent).ok_or(SetError::UnknownAgent)?;
        let target = from_capacity(row.capacity, row.assigned_conversations);
        if target == row.presence_id && logged_in.is_none_or(|l| l == row.logged_in) {
            self.session_mut(agent).sticky = false;
            return Ok(None);
        }
        self.put(
            agent,
            Put {
                logged_in,
                ..Put::system(target, SystemReason::Recalculated)
            },
        )
        .map(Some)
    }

    /// The agent's client goes away: Offline at once, not logged in, conversations kept.
    pub(crate) fn disconnect(&mut self, agent: &str) -> Result<RowChange, SimRefusal> {
        let (logged_in, _, _) = self.load(agent)?;
        if !logged_in {
            return Err(SimRefusal::NotSignedIn);
        }
        let previous = self.agent(agent).map(|r| r.presence_id.clone());
        let sticky = self.session_mut(agent).sticky;
        let change = self.put(
            agent,
            Put {
                logged_in: Some(false),
                ..Put::system(builtin::OFFLINE, SystemReason::Disconnected)
            },
        )?;
        self.session_mut(agent).parked = previous.map(|presence_id| Parked {
            presence_id,
            sticky,
            at_ms: change.at_ms,
        });
        Ok(change)
    }

    /// The agent is back: within the window the previous presence is restored with its
    /// stickiness, after it the presence is recalculated from capacity.
    pub(crate) fn reconnect(
        &mut self,
        agent: &str,
        rules: &Rules,
    ) -> Result<RowChange, SimRefusal> {
        self.load(agent)?;
        let parked = self
            .session_mut(agent)
            .parked
            .take()
            .ok_or(SimRefusal::NotDisconnected)?;
        let now = self.now_ms(&key(agent));
        if now - parked.at_ms <= rules.restore_window_ms {
            return Ok(self.put(
                agent,
                Put {
                    logged_in: Some(true),
                    sticky: parked.sticky,
                    ..Put::system(&parked.presence_id, SystemReason::Restored)
                },
            )?);
        }
        self.recalculate(agent, Some(true))?
            .ok_or(SimRefusal::NotDisconnected)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ANN: &str = "97c90b02-4e38-ef11-a315-000d3a5a54dc";

    fn rules() -> Rules {
        Rules {
            conversation_units: 50,
            api_presence_is_manual: true,
            restore_window_ms: 150_000,
            routable: vec![Availability::Available, Availability::Busy],
        }
    }

    fn signed_in(presence: &str) -> State {
        let mut s = State::new();
        s.add_agent(ANN, "aad", "Ann", presence, true).unwrap();
        s
    }

    #[test]
    fn presence_follows_capacity_and_ten_sessions_are_dnd() {
        assert_eq!(from_capacity(100, 0), builtin::AVAILABLE);
        assert_eq!(from_capacity(50, 1), builtin::BUSY);
        assert_eq!(from_capacity(0, 2), builtin::BUSY_DND);
        assert_eq!(from_capacity(100, 10), builtin::BUSY_DND);
    }

    #[test]
    fn a_recalculation_to_the_current_presence_writes_capacity_only() {
        let mut s = signed_in(builtin::AVAILABLE);
        s.set_by_system(ANN, builtin::BUSY).unwrap();
        let changes = s.accept(ANN, &rules()).unwrap();
        assert_eq!(changes.len(), 1, "Busy already: no presence write");
        assert!(!changes[0].presence_written);
        assert_eq!(s.journal.len(), 1);
    }

    #[test]
    fn a_disconnect_keeps_the_conversations_and_a_late_close_leaves_presence_alone() {
        let mut s = signed_in(builtin::AVAILABLE);
        s.accept(ANN, &rules()).unwrap();
        s.disconnect(ANN).unwrap();
        assert_eq!(s.agent(ANN).unwrap().assigned_conversations, 1);
        let changes = s.close(ANN, &rules()).unwrap();
        assert_eq!(changes.len(), 1);
        assert_eq!(s.agent(ANN).unwrap().presence_id, builtin::OFFLINE);
        assert_eq!(s.accept(ANN, &rules()), Err(SimRefusal::NotSignedIn));
        assert_eq!(s.disconnect(ANN), Err(SimRefusal::NotSignedIn));
    }

    #[test]
    fn a_reconnect_needs_a_disconnect() {
        let mut s = signed_in(builtin::AVAILABLE);
        assert_eq!(s.reconnect(ANN, &rules()), Err(SimRefusal::NotDisconnected));
        s.disconnect(ANN).unwrap();
        s.sign_out(ANN).unwrap();
        assert_eq!(
            s.reconnect(ANN, &rules()),
            Err(SimRefusal::NotDisconnected),
            "a sign-out ends the session"
        );
    }
}
