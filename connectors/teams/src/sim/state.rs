//! The simulated tenant's presence data: users with their presence sources, the change
//! subscriptions, and the record of changes with its sequence counter (`record.rs`). One mutex
//! guards it, so a change, its record and the notifications it causes are queued in the order
//! they happened.

use std::collections::{BTreeMap, BTreeSet};

use presync_engine::Millis;

use super::presence::{Pair, UserPresence};
use super::record::ChangeLog;
use super::subscriptions::Subscription;

/// Users and subscriptions.
///
/// Settling looks only at the users that can have changed: those edited since the last settle
/// ([`State::user_mut`] and [`State::add_user`] note them), and, once the earliest fade or
/// expiry of the others is due, every user. Each request settles twice; visiting all 100,000
/// users each time (even to skip them) was most of the simulator's time under load, and it
/// ran on the cores of the service being measured.
#[derive(Debug)]
pub(crate) struct State {
    /// User key ([`user_key`]) -> presence.
    users: BTreeMap<String, UserPresence>,
    /// Live subscriptions, oldest first.
    pub subs: Vec<Subscription>,
    /// The sequence counter and every change so far.
    pub log: ChangeLog,
    /// Users edited or added since the last settle, by key.
    touched: BTreeSet<String>,
    /// No user outside `touched` can change before this: the least `quiet_until` of all users
    /// at the last full settle, lowered by each settle of a touched user since.
    quiet_until: Millis,
    /// Whether users added show their own client over an application's session of the same
    /// rank ([`super::presence::EqualRank`]).
    pub person_first: bool,
}

impl Default for State {
    fn default() -> State {
        State {
            users: BTreeMap::new(),
            subs: Vec::new(),
            log: ChangeLog::default(),
            touched: BTreeSet::new(),
            quiet_until: Millis::MIN,
            person_first: true,
        }
    }
}

impl State {
    /// Every user, by key.
    pub(crate) fn users(&self) -> &BTreeMap<String, UserPresence> {
        &self.users
    }

    pub(crate) fn user(&self, id: &str) -> Option<&UserPresence> {
        self.users.get(&user_key(id))
    }

    /// Add a user, signed out, with a first sequence stamp; adding a user twice keeps the
    /// first.
    pub(crate) fn add_user(&mut self, id: &str) {
        let key = user_key(id);
        if !self.users.contains_key(&key) {
            let ordinal = self.users.len();
            let stamp = self.log.next_stamp();
            let mut user = UserPresence::new(id, ordinal, stamp);
            user.person_first = self.person_first;
            self.users.insert(key.clone(), user);
            self.touched.insert(key);
        }
    }

    /// Give the user under `key` the sequence stamp `n` (its aggregate just changed), without
    /// marking it for the next settle.
    pub(crate) fn user_stamped(&mut self, key: &str, n: u64) -> Option<&UserPresence> {
        let u = self.users.get_mut(key)?;
        u.sequence = n;
        Some(u)
    }

    /// A user, to change what does not affect its aggregate (its value schema).
    pub(crate) fn user_quiet_mut(&mut self, id: &str) -> Option<&mut UserPresence> {
        self.users.get_mut(&user_key(id))
    }

    /// A user, to edit: it is settled again at the next settle.
    pub(crate) fn user_mut(&mut self, id: &str) -> Option<&mut UserPresence> {
        let key = user_key(id);
        let user = self.users.get_mut(&key)?;
        self.touched.insert(key);
        Some(user.touch())
    }

    /// Apply time up to `now`: drop expired subscriptions, sessions and preferred presences,
    /// fade sessions, and return the users whose aggregate changed, with the new aggregate, in
    /// key order.
    pub(crate) fn settle(&mut self, now: Millis) -> Vec<(String, Pair)> {
        self.subs.retain(|s| now < s.expires_at);
        let mut changes = Vec::new();
        if now >= self.quiet_until {
            // A fade or an expiry is due somewhere: every user, and the next such time.
            self.touched.clear();
            self.quiet_until = Millis::MAX;
            for (key, u) in &mut self.users {
                let next = settle_user(key, u, now, &mut changes);
                self.quiet_until = self.quiet_until.min(next);
            }
        } else {
            for key in std::mem::take(&mut self.touched) {
                if let Some(u) = self.users.get_mut(&key) {
                    let next = settle_user(&key, u, now, &mut changes);
                    self.quiet_until = self.quiet_until.min(next);
                }
            }
        }
        changes
    }
}

/// Settle `u` at `now` unless nobody edited its sources and its next fade or expiry is still
/// ahead (then it cannot have changed); note a change of its aggregate. Returns its
/// `quiet_until`.
fn settle_user(
    key: &str,
    u: &mut UserPresence,
    now: Millis,
    changes: &mut Vec<(String, Pair)>,
) -> Millis {
    if now >= u.quiet_until {
        if let Some(p) = u.settle(now) {
            changes.push((key.to_owned(), p));
        }
    }
    u.quiet_until
}

/// The key a user is stored under: the lower-case hyphenated GUID when the id is a GUID (Graph
/// compares object ids case-insensitively), otherwise the id in lower case.
pub(crate) fn user_key(id: &str) -> String {
    match parse_guid(id) {
        Some(g) => g,
        None => id.to_ascii_lowercase(),
    }
}

/// The lower-case hyphenated form of a GUID written as `8-4-4-4-12` hex digits (the only form
/// Graph takes for an object id); `None` for anything else.
pub(crate) fn parse_guid(id: &str) -> Option<String> {
    if id.len() != 36 {
        return None;
    }
    uuid::Uuid::try_parse(id)
        .ok()
        .map(|u| u.hyphenated().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guids_are_compared_case_insensitively_and_only_in_hyphenated_form() {
        let upper = "6E7B768E-07E2-4810-8459-485F84F8F204";
        assert_eq!(user_key(upper), upper.to_ascii_lowercase());
        assert_eq!(parse_guid("6e7b768e07e248108459485f84f8f204"), None);
        assert_eq!(parse_guid("ann@contoso.com"), None);
        assert_eq!(user_key("Ann@Contoso.com"), "ann@contoso.com");
    }

    /// Settling only the edited users never misses another user's fade when it is due, nor
    /// reports it early, however often others are edited in between.
    #[test]
    fn a_quiet_users_fade_is_seen_while_others_are_edited() {
        use super::super::presence::{AppSession, FADE_INACTIVE, SESSION_MAX};
        let mut st = State::default();
        st.add_user("quiet");
        st.add_user("busy");
        let post = |st: &mut State, user: &str, availability: &str, at: Millis| {
            st.user_mut(user).unwrap().apps.insert(
                "app".into(),
                AppSession {
                    posted: Pair::new(availability, availability),
                    posted_at: at,
                    expires_at: at + SESSION_MAX,
                },
            );
        };
        // Both users start Offline: adding them changes nothing.
        assert_eq!(st.settle(0), vec![]);
        post(&mut st, "quiet", "Available", 0);
        assert_eq!(
            st.settle(0),
            vec![("quiet".into(), Pair::new("Available", "Available"))]
        );
        for at in (1..FADE_INACTIVE).step_by(10_000) {
            let availability = if at % 20_000 == 1 { "Busy" } else { "Away" };
            post(&mut st, "busy", availability, at);
            let changes = st.settle(at);
            assert!(
                changes.iter().all(|(user, _)| user == "busy"),
                "{changes:?}"
            );
        }
        assert_eq!(
            st.settle(FADE_INACTIVE),
            vec![("quiet".into(), Pair::new("Available", "AvailableInactive"))]
        );
        // A user added later is settled at the next settle, like an edited one.
        st.add_user("new");
        post(&mut st, "new", "Busy", FADE_INACTIVE + 1);
        assert_eq!(
            st.settle(FADE_INACTIVE + 1),
            vec![("new".into(), Pair::new("Busy", "Busy"))]
        );
    }

    /// `settle` skips a user until its next fade or expiry, but never misses one, nor an edit.
    #[test]
    fn settle_skips_a_quiet_user_but_not_its_fade_nor_an_edit() {
        use super::super::presence::{AppSession, FADE_INACTIVE, SESSION_MAX};
        let mut st = State::default();
        st.add_user("u");
        let post = |st: &mut State, availability: &str, activity: &str, at: Millis| {
            st.user_mut("u").unwrap().apps.insert(
                "app".into(),
                AppSession {
                    posted: Pair::new(availability, activity),
                    posted_at: at,
                    expires_at: at + SESSION_MAX,
                },
            );
        };
        post(&mut st, "Available", "Available", 0);
        assert_eq!(
            st.settle(0),
            vec![("u".into(), Pair::new("Available", "Available"))]
        );
        assert_eq!(st.users["u"].quiet_until, FADE_INACTIVE);
        assert_eq!(st.settle(FADE_INACTIVE - 1), vec![]);
        assert_eq!(
            st.settle(FADE_INACTIVE),
            vec![("u".into(), Pair::new("Available", "AvailableInactive"))]
        );
        // An edit before the next fade is seen at the next settle.
        post(&mut st, "Busy", "InACall", FADE_INACTIVE + 1);
        assert_eq!(
            st.settle(FADE_INACTIVE + 1),
            vec![("u".into(), Pair::new("Busy", "InACall"))]
        );
        assert_eq!(st.users["u"].quiet_until, FADE_INACTIVE + 1 + SESSION_MAX);
    }
}
