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

    pub(crate) fn user_mut(&mut self, id: &str) -> Option<&mut UserPresence> {
        self.users.get_mut(&user_key(id))
    }

    /// Apply time up to `now`: drop expired subscriptions, sessions and preferred presences,
    /// fade sessions, and return the users whose aggregate changed, with the new aggregate.
    pub(crate) fn settle(&mut self, now: Millis) -> Vec<(String, Pair)> {
        self.subs.retain(|s| now < s.expires_at);
        self.users
            .iter_mut()
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
}
