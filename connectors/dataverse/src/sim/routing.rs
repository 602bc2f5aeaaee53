//! The router: which agents a workstream offers work to, and a least-recently-offered choice
//! among them. Routing looks only at the presence's base status (dataverse.md §2.3), so an
//! agent is routable when signed in (not disconnected), with capacity for one more
//! conversation, and with a base status in [`super::SimConfig::routable`].
//!
//! An offer is only recorded: it neither takes capacity nor changes presence. A test that wants
//! the conversation taken calls [`DataverseSim::accept`] after it.

use presync_engine::Availability;

use super::session::Rules;
use super::state::{key, State};
use super::{lock, DataverseSim};

/// One conversation offered to an agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    /// The agent's systemuserid.
    pub agent_id: String,
    /// When it was offered, ms since the epoch (the simulator's clock).
    pub at_ms: i64,
    /// The agent's presence at the time.
    pub presence_id: String,
    /// The canonical availability of that presence's base status.
    pub base: Availability,
}

impl State {
    /// The base status of the agent's presence, when the agent is routable.
    fn routable_base(&self, agent: &str, rules: &Rules) -> Option<Availability> {
        let row = self.agent(agent)?;
        let base = self.base_of(&row.presence_id)?;
        let eligible = row.logged_in
            && row.capacity >= rules.conversation_units
            && rules.routable.contains(&base);
        eligible.then_some(base)
    }

    pub(crate) fn is_routable(&self, agent: &str, rules: &Rules) -> bool {
        self.routable_base(agent, rules).is_some()
    }

    /// Record an offer to the agent if routable.
    pub(crate) fn offer(&mut self, agent: &str, rules: &Rules) -> bool {
        let Some(base) = self.routable_base(agent, rules) else {
            return false;
        };
        let Some(row) = self.agent(agent) else {
            return false;
        };
        let (agent_id, presence_id) = (row.agent_id.clone(), row.presence_id.clone());
        let at_ms = self.offer_ms(&key(agent));
        self.offers.push(Offer {
            agent_id,
            at_ms,
            presence_id,
            base,
        });
        true
    }

    /// When the agent was last offered a conversation.
    fn last_offer(&self, agent_id: &str) -> Option<i64> {
        self.offers
            .iter()
            .rev()
            .find(|o| o.agent_id == agent_id)
            .map(|o| o.at_ms)
    }

    /// Offer one conversation to the routable agent offered least recently (never offered
    /// first), ties by agent id.
    pub(crate) fn route_next(&mut self, rules: &Rules) -> Option<String> {
        let next = self
            .agent_ids()
            .into_iter()
            .filter(|id| self.is_routable(id, rules))
            .min_by_key(|id| (self.last_offer(id), id.clone()))?;
        self.offer(&next, rules).then_some(next)
    }
}

impl DataverseSim {
    /// Whether a workstream would offer the agent work now: signed in and not disconnected, at
    /// least [`super::SimConfig::conversation_units`] free, and the base status of the current
    /// presence in [`super::SimConfig::routable`].
    pub fn routable(&self, systemuser_id: &str) -> bool {
        lock(&self.shared.state).is_routable(systemuser_id, &self.shared.rules)
    }

    /// Offer the agent a conversation if [`Self::routable`]; records the offer and returns
    /// whether it was made.
    pub fn offer(&self, systemuser_id: &str) -> bool {
        lock(&self.shared.state).offer(systemuser_id, &self.shared.rules)
    }

    /// Offer one conversation to the routable agent offered least recently (ties by agent id),
    /// record it and return the agent's systemuserid; `None` when nobody is routable.
    pub fn route_next(&self) -> Option<String> {
        lock(&self.shared.state).route_next(&self.shared.rules)
    }

    /// Every offer so far, in order.
    pub fn offers(&self) -> Vec<Offer> {
        lock(&self.shared.state).offers.clone()
    }

    /// The offers made to one agent.
    pub fn offers_to(&self, systemuser_id: &str) -> Vec<Offer> {
        let id = key(systemuser_id);
        lock(&self.shared.state)
            .offers
            .iter()
            .filter(|o| o.agent_id == id)
            .cloned()
            .collect()
    }
}
