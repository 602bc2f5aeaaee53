//! The simulated org's data: system users, `msdyn_presence` rows and one `msdyn_agentstatus` row
//! per agent, with the clock and row-version counter that stamp every change, plus what D365
//! keeps beside the row (each agent's [`Session`], the record of presence changes, the offers).
//!
//! Every mutation returns a [`RowChange`], the after-image the webhook is built from; nothing in
//! here does I/O. The rules that decide *which* writes happen (recalculation, sign-in and -out,
//! disconnects) are in `session.rs`; the router is in `routing.rs`.

use std::collections::{BTreeMap, HashMap};
use std::time::{SystemTime, UNIX_EPOCH};

use presync_engine::Availability;

use super::record::{ConversationChange, SimChange};
use super::routing::Offer;
use super::session::Session;
use crate::mapping::{Catalog, PresenceEntry};

/// `msdyn_presencemodifiedby` when the agent picks a presence.
pub(crate) const BY_AGENT: &str = "AGENT";
/// `msdyn_presencemodifiedby` when D365 itself changes it (capacity, sign-in, sign-out).
pub(crate) const BY_SYSTEM: &str = "SYSTEM";
/// `msdyn_availableunitscapacity` of a fresh agent, as in both Microsoft samples: every agent's
/// whole capacity.
pub(crate) const DEFAULT_CAPACITY: i64 = 100;
/// First `versionnumber` handed out; the update sample's `RowVersion` is of this magnitude.
const FIRST_VERSION: i64 = 5_948_000;

/// A `systemuser` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct User {
    pub id: String,
    pub aad_object_id: String,
    pub name: String,
}

/// An `msdyn_agentstatus` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AgentRow {
    pub status_id: String,
    pub agent_id: String,
    pub presence_id: String,
    pub logged_in: bool,
    /// Milliseconds since the epoch (the `...withmilliseconds` column; the plain column is this
    /// truncated to whole seconds).
    pub modified_on_ms: i64,
    pub modified_by: String,
    /// `versionnumber`, also the webhook Target's `RowVersion`.
    pub row_version: i64,
    /// `msdyn_availableunitscapacity`.
    pub capacity: i64,
    /// `msdyn_assignedconversationcount`: the open conversations.
    pub assigned_conversations: i64,
    pub capacity_modified_on_ms: i64,
    pub created_on_ms: i64,
    /// When the current session started (`CCaaS_GetPresence`'s `Timestamp`).
    pub signed_in_at_ms: Option<i64>,
}

/// Create or Update: the message a webhook step is registered on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Message {
    Create,
    Update,
}

impl Message {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Message::Create => "Create",
            Message::Update => "Update",
        }
    }
}

/// One change to an agent-status row, with the row as it is afterwards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RowChange {
    pub message: Message,
    pub row: AgentRow,
    /// When the operation ran (ms); equals `row.modified_on_ms` for presence changes.
    pub at_ms: i64,
    /// Whether `msdyn_currentpresenceid` was written. The Update step is filtered on that
    /// column, so an Update that only changes capacity sends no webhook.
    pub presence_written: bool,
}

/// The columns one Update writes; `None` leaves a column alone.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RowWrite<'a> {
    /// `msdyn_currentpresenceid` and `msdyn_presencemodifiedby`.
    pub presence: Option<(&'a str, &'a str)>,
    /// `msdyn_isagentloggedin`.
    pub logged_in: Option<bool>,
    /// `msdyn_assignedconversationcount` and `msdyn_availableunitscapacity`.
    pub conversations: Option<(i64, i64)>,
}

/// Why a presence could not be set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SetError {
    UnknownAgent,
    UnknownPresence,
}

/// The org's tables.
#[derive(Debug)]
pub(crate) struct State {
    users: HashMap<String, User>,
    /// systemuserid -> row.
    agents: HashMap<String, AgentRow>,
    /// msdyn_presenceid -> row.
    presences: BTreeMap<String, PresenceEntry>,
    /// The org-wide row-version counter: like SQL Server `rowversion`, one sequence for the whole
    /// database, so a row's version grows by one per change only when nothing else changed.
    version: i64,
    /// systemuserid -> the time of the agent's last change (see [`State::now_ms`]).
    last_ms: HashMap<String, i64>,
    /// The time of the router's last offer (see [`State::offer_ms`]).
    last_offer_ms: i64,
    /// systemuserid -> what D365 remembers beside the row (stickiness, a disconnect).
    pub(crate) sessions: HashMap<String, Session>,
    /// Every presence write, in order (see `session.rs`).
    pub(crate) journal: Vec<SimChange>,
    /// Every conversation the router offered, in order.
    pub(crate) offers: Vec<Offer>,
    /// Every change of an agent's open conversations, in order.
    pub(crate) conversation_log: Vec<ConversationChange>,
}

/// Milliseconds since the epoch, from the wall clock.
pub(crate) fn wall_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A GUID in the lower-case hyphenated form Dataverse writes, or `None` when it is not one.
pub(crate) fn norm_guid(s: &str) -> Option<String> {
    uuid::Uuid::parse_str(s.trim())
        .ok()
        .map(|u| u.hyphenated().to_string())
}

/// A new random GUID.
pub(crate) fn new_guid() -> String {
    uuid::Uuid::new_v4().hyphenated().to_string()
}

impl State {
    pub(crate) fn new() -> State {
        let presences = Catalog::builtin()
            .entries()
            .into_iter()
            .map(|e| (e.id.clone(), e.clone()))
            .collect();
        State {
            users: HashMap::new(),
            agents: HashMap::new(),
            presences,
            version: FIRST_VERSION,
            last_ms: HashMap::new(),
            last_offer_ms: 0,
            sessions: HashMap::new(),
            journal: Vec::new(),
            offers: Vec::new(),
            conversation_log: Vec::new(),
        }
    }

    /// The wall clock, made strictly increasing per agent so two changes of one agent's row
    /// never share a millisecond. (Per agent, not for the whole org: under a burst of changes
    /// to many agents an org-wide sequence would run ahead of the wall clock, and a stamp
    /// would tell an observer a change came later than it did.)
    pub(crate) fn now_ms(&mut self, agent: &str) -> i64 {
        let last = self.last_ms.entry(agent.to_owned()).or_insert(0);
        *last = wall_ms().max(*last + 1);
        *last
    }

    /// The wall clock for the router's offers, strictly increasing across the org: the router
    /// offers to the agent offered least recently, and two offers must not tie.
    ///
    /// An offer to `agent` is also no earlier than the agent's last change: the router saw
    /// that change, whose stamp [`State::now_ms`] may have put a millisecond or two past the
    /// wall clock.
    pub(crate) fn offer_ms(&mut self, agent: &str) -> i64 {
        let seen = self.last_ms.get(agent).copied().unwrap_or(0);
        self.last_offer_ms = wall_ms().max(self.last_offer_ms + 1).max(seen);
        self.last_offer_ms
    }

    fn next_version(&mut self) -> i64 {
        self.version += 1;
        self.version
    }

    /// Insert or replace a system user. Ids are normalised; a non-GUID id is kept lower-cased.
    pub(crate) fn add_user(&mut self, id: &str, aad_object_id: &str, name: &str) -> String {
        let id = key(id);
        self.users.insert(
            id.clone(),
            User {
                id: id.clone(),
                aad_object_id: key(aad_object_id),
                name: name.to_owned(),
            },
        );
        id
    }

    pub(crate) fn user(&self, id: &str) -> Option<&User> {
        self.users.get(&key(id))
    }

    pub(crate) fn user_by_aad(&self, aad_object_id: &str) -> Option<&User> {
        let aad = key(aad_object_id);
        self.users.values().find(|u| u.aad_object_id == aad)
    }

    pub(crate) fn users(&self) -> impl Iterator<Item = &User> {
        self.users.values()
    }

    pub(crate) fn add_presence(&mut self, mut entry: PresenceEntry) {
        entry.id = key(&entry.id);
        self.presences.insert(entry.id.clone(), entry);
    }

    pub(crate) fn presence(&self, id: &str) -> Option<&PresenceEntry> {
        self.presences.get(&key(id))
    }

    pub(crate) fn presences(&self) -> impl Iterator<Item = &PresenceEntry> {
        self.presences.values()
    }

    /// The canonical availability of a presence's base status (`msdyn_basepresencestatus`).
    pub(crate) fn base_of(&self, presence_id: &str) -> Option<Availability> {
        self.presence(presence_id).map(|p| p.base.availability())
    }

    pub(crate) fn agent(&self, systemuser_id: &str) -> Option<&AgentRow> {
        self.agents.get(&key(systemuser_id))
    }

    pub(crate) fn agent_by_status_id(&self, status_id: &str) -> Option<&AgentRow> {
        let id = key(status_id);
        self.agents.values().find(|a| a.status_id == id)
    }

    pub(crate) fn agents(&self) -> impl Iterator<Item = &AgentRow> {
        self.agents.values()
    }

    pub(crate) fn agent_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.agents.keys().cloned().collect();
        ids.sort();
        ids
    }

    /// Create the agent's `msdyn_agentstatus` row (and its system user). An existing agent is
    /// left alone: its row id is returned and no change is reported.
    pub(crate) fn add_agent(
        &mut self,
        systemuser_id: &str,
        aad_object_id: &str,
        name: &str,
        presence_id: &str,
        signed_in: bool,
    ) -> Result<(String, Option<RowChange>), SetError> {
        let presence_id = self
            .presence(presence_id)
            .ok_or(SetError::UnknownPresence)?
            .id
            .clone();
        let id = self.add_user(systemuser_id, aad_object_id, name);
        if let Some(existing) = self.agents.get(&id) {
            return Ok((existing.status_id.clone(), None));
        }
        let now = self.now_ms(&id);
        let row = AgentRow {
            status_id: new_guid(),
            agent_id: id.clone(),
            presence_id,
            logged_in: signed_in,
            modified_on_ms: now,
            modified_by: BY_SYSTEM.to_owned(),
            row_version: self.next_version(),
            capacity: DEFAULT_CAPACITY,
            assigned_conversations: 0,
            capacity_modified_on_ms: now,
            created_on_ms: now,
            signed_in_at_ms: signed_in.then_some(now),
        };
        self.agents.insert(id, row.clone());
        let status_id = row.status_id.clone();
        Ok((
            status_id,
            Some(RowChange {
                message: Message::Create,
                row,
                at_ms: now,
                presence_written: true,
            }),
        ))
    }

    /// Write `msdyn_currentpresenceid` (and optionally `msdyn_isagentloggedin`). The row changes
    /// even when the presence is the same: Dataverse stamps and versions every Update it is
    /// given, and a step filtered on `msdyn_currentpresenceid` fires because the column was in
    /// the request, not because its value differs. (The simulator writes through
    /// `session.rs`, which also records the change; this is for the tests of the tables.)
    #[cfg(test)]
    pub(crate) fn set_presence(
        &mut self,
        systemuser_id: &str,
        presence_id: &str,
        modified_by: &str,
        logged_in: Option<bool>,
    ) -> Result<RowChange, SetError> {
        self.write(
            systemuser_id,
            RowWrite {
                presence: Some((presence_id, modified_by)),
                logged_in,
                conversations: None,
            },
        )
    }

    /// One Update of the agent's row: the columns in `w`, a new row version, and the time
    /// stamps of what was written (`msdyn_presencemodifiedon...` for the presence,
    /// `msdyn_capacitymodifiedon` for the conversations).
    pub(crate) fn write(
        &mut self,
        systemuser_id: &str,
        w: RowWrite<'_>,
    ) -> Result<RowChange, SetError> {
        let presence = match w.presence {
            Some((p, by)) => Some((
                self.presence(p)
                    .ok_or(SetError::UnknownPresence)?
                    .id
                    .clone(),
                by,
            )),
            None => None,
        };
        let id = key(systemuser_id);
        if !self.agents.contains_key(&id) {
            return Err(SetError::UnknownAgent);
        }
        let now = self.now_ms(&id);
        let version = self.next_version();
        let row = self.agents.get_mut(&id).ok_or(SetError::UnknownAgent)?;
        let presence_written = presence.is_some();
        if let Some((presence_id, by)) = presence {
            row.presence_id = presence_id;
            row.modified_on_ms = now;
            row.modified_by = by.to_owned();
        }
        if let Some((open, available)) = w.conversations {
            if open != row.assigned_conversations {
                self.conversation_log.push(ConversationChange {
                    agent_id: row.agent_id.clone(),
                    at_ms: now,
                    open,
                });
            }
            row.assigned_conversations = open;
            row.capacity = available;
            row.capacity_modified_on_ms = now;
        }
        row.row_version = version;
        if let Some(l) = w.logged_in {
            if l && !row.logged_in {
                row.signed_in_at_ms = Some(now);
            }
            if !l {
                row.signed_in_at_ms = None;
            }
            row.logged_in = l;
        }
        Ok(RowChange {
            message: Message::Update,
            row: row.clone(),
            at_ms: now,
            presence_written,
        })
    }
}

/// GUIDs normalised to lower-case hyphenated; anything else lower-cased and trimmed.
pub(crate) fn key(s: &str) -> String {
    norm_guid(s).unwrap_or_else(|| s.trim().to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::builtin;

    const AGENT: &str = "97c90b02-4e38-ef11-a315-000d3a5a54dc";

    #[test]
    fn every_change_gets_a_later_time_and_a_higher_version() {
        let mut s = State::new();
        let (id, created) = s
            .add_agent(AGENT, "aad", "Ann", builtin::OFFLINE, false)
            .unwrap();
        let created = created.unwrap();
        assert_eq!(created.message, Message::Create);
        assert_eq!(created.row.status_id, id);
        let a = s
            .set_presence(AGENT, builtin::BUSY, BY_AGENT, Some(true))
            .unwrap();
        let b = s
            .set_presence(&AGENT.to_ascii_uppercase(), builtin::BUSY, BY_AGENT, None)
            .unwrap();
        assert!(a.row.row_version > created.row.row_version);
        assert_eq!(
            b.row.row_version,
            a.row.row_version + 1,
            "same presence still versions the row"
        );
        assert!(b.row.modified_on_ms > a.row.modified_on_ms);
        assert!(b.row.logged_in && b.row.signed_in_at_ms.is_some());
    }

    #[test]
    fn a_capacity_only_write_versions_the_row_but_keeps_the_presence_stamp() {
        let mut s = State::new();
        let (_, created) = s
            .add_agent(AGENT, "aad", "Ann", builtin::AVAILABLE, true)
            .unwrap();
        let created = created.unwrap();
        let c = s
            .write(
                AGENT,
                RowWrite {
                    conversations: Some((1, 50)),
                    ..RowWrite::default()
                },
            )
            .unwrap();
        assert!(!c.presence_written);
        assert_eq!(c.row.row_version, created.row.row_version + 1);
        assert_eq!(c.row.modified_on_ms, created.row.modified_on_ms);
        assert!(c.row.capacity_modified_on_ms > created.row.capacity_modified_on_ms);
        assert_eq!((c.row.capacity, c.row.assigned_conversations), (50, 1));
    }

    #[test]
    fn unknown_agents_and_presences_are_refused() {
        let mut s = State::new();
        assert_eq!(
            s.set_presence(AGENT, builtin::BUSY, BY_AGENT, None),
            Err(SetError::UnknownAgent)
        );
        s.add_agent(AGENT, "aad", "Ann", builtin::OFFLINE, false)
            .unwrap();
        assert_eq!(
            s.set_presence(
                AGENT,
                "00000000-0000-0000-0000-000000000001",
                BY_AGENT,
                None
            ),
            Err(SetError::UnknownPresence)
        );
        let (_, again) = s
            .add_agent(AGENT, "aad", "Ann", builtin::OFFLINE, false)
            .unwrap();
        assert!(again.is_none(), "adding an existing agent changes nothing");
    }
}
