//! The simulated tenant's presence data: users with their presence sources, and the change
//! subscriptions. One mutex guards it, so a change and the notifications it causes are queued in
//! the order they happened.

use std::collections::BTreeMap;

use presync_engine::Millis;

use super::presence::{Pair, UserPresence};
use super::subscriptions::Subscription;

/// Users and subscriptions.
#[derive(Debug, Default)]
pub(crate) struct State {
    /// User key ([`user_key`]) -> presence.
    pub users: BTreeMap<String, UserPresence>,
    /// Live subscriptions, oldest first.
    pub subs: Vec<Subscription>,
}

impl State {
    pub(crate) fn user(&self, id: &str) -> Option<&UserPresence> {
        self.users.get(&user_key(id))
    }

    /// A user, to edit: it is settled again at the next settle.
    pub(crate) fn user_mut(&mut self, id: &str) -> Option<&mut UserPresence> {
        self.users.get_mut(&user_key(id)).map(UserPresence::touch)
    }

    /// Apply time up to `now`: drop expired subscriptions, sessions and preferred presences,
    /// fade sessions, and return the users whose aggregate changed, with the new aggregate.
    pub(crate) fn settle(&mut self, now: Millis) -> Vec<(String, Pair)> {
        self.subs.retain(|s| now < s.expires_at);
        self.users
            .iter_mut()
            // A user whose sources nobody edited and whose next fade or expiry is still ahead
            // cannot have changed: with 100,000 users, settling each on every request was most
            // of the simulator's time.
            .filter(|(_, u)| now >= u.quiet_until)
            .filter_map(|(key, u)| u.settle(now).map(|p| (key.clone(), p)))
            .collect()
    }
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

    /// `settle` skips a user until its next fade or expiry, but never misses one, nor an edit.
    #[test]
    fn settle_skips_a_quiet_user_but_not_its_fade_nor_an_edit() {
        use super::super::presence::{AppSession, FADE_INACTIVE, SESSION_MAX};
        let mut st = State::default();
        st.users.insert("u".into(), UserPresence::new("u"));
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
