//! The record of what happened to each user's presence: every change of the aggregate, in
//! order, with its cause and its `sequenceNumber` (graph.md, "Corrections of 2026-12-07";
//! §3.1), and what the person's own sources alone would show.
//!
//! Sequence stamps are per tenant: a counter that every change of any user's aggregate
//! advances (adding a user takes one too, the version of its first, signed-out presence),
//! written as 16 upper-case hexadecimal digits (`000000000000002A`), so that the stamps of
//! one user sort lexicographically in the order of its changes (and so do those of the whole
//! tenant). Whether real payloads carry `sequenceNumber`, and what it looks like, is
//! UNCONFIRMED (graph.md §3.1); [`super::GraphSimConfig::emit_sequence_number`] leaves it out.
//!
//! A change is a change of the aggregate the simulator holds (a legacy pair, see `schema.rs`).
//! In the 2025 values two held pairs can read the same (the fade to
//! `Available/AvailableInactive` reads `Available/Available`): such a change still gets a new
//! stamp, a record and a notification (whether Graph notifies then is UNCONFIRMED). Changing a
//! user's value schema is not a change.

use presync_engine::Millis;

use super::presence::Pair;
use super::schema::ValueSchema;
use super::state::State;
use super::{lock, GraphSim};

/// Why a user's aggregate changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeCause {
    /// A person's own action in Teams: signing in or out, a meeting, a call, presenting,
    /// focusing, or setting or clearing their preferred presence themselves. These are the
    /// genuine changes a sync is measured against.
    Person,
    /// A presence write through the API (`setPresence`, `clearPresence`,
    /// `setUserPreferredPresence`, `clearUserPreferredPresence`) by this application (client
    /// id), app-only or delegated: presync's own writes when `app_id` is presync's.
    App {
        /// The calling application's client id.
        app_id: String,
    },
    /// Time: a session faded or expired, or a preferred presence expired.
    Timer,
}

/// One change of a user's aggregate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceChange {
    /// The user id, as added.
    pub user: String,
    /// When it happened (ms since the epoch, simulator clock).
    pub at: Millis,
    /// The new (availability, activity) as the user's value schema answers it.
    pub shown: (String, String),
    /// The new (availability, activity) as the simulator holds it: the legacy pair (Focusing is
    /// held as `DoNotDisturb/Focusing`, see `schema.rs`).
    pub internal: (String, String),
    /// The user's value schema at the time ([`ValueSchema::V2025`] or [`ValueSchema::Legacy`]).
    pub schema: ValueSchema,
    /// The new `sequenceNumber` (see the module documentation for its form).
    pub sequence_number: String,
    /// Why it changed.
    pub cause: ChangeCause,
    /// What the person's own sources alone showed then, as held (see
    /// [`GraphSim::own_presence`]): whether the aggregate showed the person or an
    /// application's session over them.
    pub own: (String, String),
    /// Whether `own` is the person's chosen status (their preferred presence), which shows over
    /// every session, rather than their client.
    pub own_preferred: bool,
    /// Each application's session then (application id, the pair it shows, in the user's value
    /// schema): whether what Teams shows of the person could be told from an application's.
    pub apps: Vec<(String, (String, String))>,
}

/// The tenant's sequence counter and its change log.
#[derive(Debug, Default)]
pub(crate) struct ChangeLog {
    last: u64,
    entries: Vec<PresenceChange>,
    /// Every edit of a user's sources, changing the aggregate or not.
    edits: Vec<PresenceChange>,
}

impl ChangeLog {
    /// A new stamp, above every stamp given before.
    pub(crate) fn next_stamp(&mut self) -> u64 {
        self.last += 1;
        self.last
    }
}

/// A stamp as `sequenceNumber`: 16 zero-padded upper-case hexadecimal digits.
pub(crate) fn stamp(n: u64) -> String {
    format!("{n:016X}")
}

/// The user `u` as it is at `now`, showing `held`, after `cause`.
fn snapshot(
    u: &super::presence::UserPresence,
    held: &Pair,
    now: Millis,
    default_schema: ValueSchema,
    cause: ChangeCause,
) -> PresenceChange {
    let schema = u.schema(default_schema);
    PresenceChange {
        user: u.id.clone(),
        at: now,
        shown: super::schema::show(held, schema).tuple(),
        internal: held.tuple(),
        schema,
        sequence_number: stamp(u.sequence),
        cause,
        own: u.own().tuple(),
        own_preferred: u.client.is_some() && u.preferred.is_some(),
        apps: u
            .apps
            .iter()
            .map(|(id, s)| {
                let shown = super::schema::show(&s.effective(now), schema).tuple();
                (id.clone(), shown)
            })
            .collect(),
    }
}

/// Note an edit of `key`'s sources by `cause` (a person's action, an application's write),
/// whether or not it changed what Teams shows, with the user as it is after it.
pub(crate) fn note_edit(
    st: &mut State,
    key: &str,
    now: Millis,
    default_schema: ValueSchema,
    cause: ChangeCause,
) {
    let Some(u) = st.user(key) else { return };
    let edit = snapshot(u, &u.held, now, default_schema, cause);
    st.log.edits.push(edit);
}

/// Stamp and record the `changes` [`State::settle`] returned (user key, new held aggregate),
/// each with the cause `cause_of(key)`, and return the records in order.
pub(crate) fn record(
    st: &mut State,
    changes: Vec<(String, Pair)>,
    now: Millis,
    default_schema: ValueSchema,
    cause_of: impl Fn(&str) -> ChangeCause,
) -> Vec<PresenceChange> {
    let mut out = Vec::with_capacity(changes.len());
    for (key, held) in changes {
        let n = st.log.next_stamp();
        let Some(u) = st.user_stamped(&key, n) else {
            continue;
        };
        out.push(snapshot(u, &held, now, default_schema, cause_of(&key)));
    }
    st.log.entries.extend(out.iter().cloned());
    out
}

impl GraphSim {
    /// Every change of a user's aggregate so far, oldest first, with its cause: a person's
    /// action ([`ChangeCause::Person`]), an application's write ([`ChangeCause::App`]) or time
    /// ([`ChangeCause::Timer`]).
    pub fn changes(&self) -> Vec<PresenceChange> {
        let mut st = lock(&self.shared.state);
        self.shared.settle(&mut st);
        st.log.entries.clone()
    }

    /// Every edit of a user's sources so far, oldest first, whether or not it changed what
    /// Teams shows, each with the user as it was after it: a person's action
    /// ([`ChangeCause::Person`]) or an application's write ([`ChangeCause::App`]). A change
    /// beneath an application's session shows here and not in [`Self::changes`]; so does an
    /// application's write that leaves the aggregate as it was.
    pub fn edits(&self) -> Vec<PresenceChange> {
        let mut st = lock(&self.shared.state);
        self.shared.settle(&mut st);
        st.log.edits.clone()
    }

    /// How many changes so far: the index the next one will have in [`Self::changes`].
    pub fn change_count(&self) -> usize {
        let mut st = lock(&self.shared.state);
        self.shared.settle(&mut st);
        st.log.entries.len()
    }

    /// The changes from index `from` on (see [`Self::change_count`]).
    pub fn changes_since(&self, from: usize) -> Vec<PresenceChange> {
        let mut st = lock(&self.shared.state);
        self.shared.settle(&mut st);
        st.log
            .entries
            .get(from..)
            .map(<[_]>::to_vec)
            .unwrap_or_default()
    }

    /// What the person's own sources alone would show now, in the user's value schema: their
    /// client with its activities, and their preferred presence (which needs the client);
    /// application sessions are left out. `Offline/Offline` when signed out;
    /// `PresenceUnknown/PresenceUnknown` for an unknown user.
    pub fn own_presence(&self, user: &str) -> (String, String) {
        let mut st = lock(&self.shared.state);
        self.shared.settle(&mut st);
        st.user(user).map_or_else(
            || ("PresenceUnknown".to_owned(), "PresenceUnknown".to_owned()),
            |u| {
                let schema = u.schema(self.shared.cfg.schema);
                super::schema::show(&u.own(), schema).tuple()
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_sort_lexicographically_in_counter_order() {
        let stamps: Vec<String> = [1, 9, 10, 15, 16, 99, 100, u64::MAX].map(stamp).into();
        let mut sorted = stamps.clone();
        sorted.sort();
        assert_eq!(stamps, sorted);
        assert_eq!(stamp(42), "000000000000002A");
    }
}
