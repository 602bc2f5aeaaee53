//! Agents who change presence on their own, as D365 and its agents do all day
//! (dataverse.md §2.4): the capacity engine flips Available / Busy / Busy - DND (`SYSTEM`,
//! written directly and recorded as [`super::SystemReason::Other`], not through the
//! conversation model), agents pick Away, DND or Available themselves (`AGENT`), and agents
//! sign out (Offline, conversations closed) and back in. Driven by a seeded generator, so a run
//! is reproducible for a given seed and order of agents; each change emits its webhook like any
//! other.

use std::sync::Weak;
use std::time::Duration;

use super::state::{BY_AGENT, BY_SYSTEM};
use super::{lock, Shared};
use crate::mapping::builtin;

/// What [`super::DataverseSim::start_activity`] does.
#[derive(Debug, Clone, PartialEq)]
pub struct Activity {
    /// Seed of the generator.
    pub seed: u64,
    /// Mean pause between two changes (each pause is uniform in 0.5x..1.5x of it).
    pub mean_interval: Duration,
    /// The agents (systemuserids) who take part; empty means every agent at each step.
    pub agents: Vec<String>,
    /// Chance that a signed-in agent signs out at their turn.
    pub sign_out_chance: f64,
    /// Chance that a signed-out agent signs back in (Available) at their turn.
    pub sign_in_chance: f64,
    /// Chance that a signed-in agent picks a presence themselves rather than the capacity
    /// engine changing it.
    pub agent_choice_chance: f64,
    /// Stop after this many changes.
    pub max_changes: Option<u64>,
}

impl Activity {
    /// Every agent, with 5% sign-outs, 50% sign-ins, 20% manual choices, forever.
    pub fn new(seed: u64, mean_interval: Duration) -> Self {
        Activity {
            seed,
            mean_interval,
            agents: Vec::new(),
            sign_out_chance: 0.05,
            sign_in_chance: 0.5,
            agent_choice_chance: 0.2,
            max_changes: None,
        }
    }
}

/// SplitMix64: small, seedable, good enough for a simulation.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub(crate) fn unit(&mut self) -> f64 {
        // 53 random bits, exactly representable.
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub(crate) fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        usize::try_from(self.next_u64() % n as u64).unwrap_or(0)
    }
}

/// One step's decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    SignOut,
    SignIn,
    Set {
        presence: &'static str,
        by: &'static str,
    },
}

fn decide(rng: &mut Rng, a: &Activity, logged_in: bool, current: &str) -> Option<Step> {
    if !logged_in {
        return (rng.unit() < a.sign_in_chance).then_some(Step::SignIn);
    }
    if rng.unit() < a.sign_out_chance {
        return Some(Step::SignOut);
    }
    let (choices, by): (&[&'static str], _) = if rng.unit() < a.agent_choice_chance {
        (
            &[builtin::AVAILABLE, builtin::AWAY, builtin::BUSY_DND],
            BY_AGENT,
        )
    } else {
        // Capacity free, partly used, fully used.
        (
            &[builtin::AVAILABLE, builtin::BUSY, builtin::BUSY_DND],
            BY_SYSTEM,
        )
    };
    let others: Vec<&'static str> = choices.iter().copied().filter(|p| *p != current).collect();
    let presence = others.get(rng.below(others.len())).copied()?;
    Some(Step::Set { presence, by })
}

pub(crate) async fn run(shared: Weak<Shared>, a: Activity) {
    let mut rng = Rng::new(a.seed);
    let mut changes = 0u64;
    let mean = a.mean_interval.as_secs_f64().max(0.0);
    loop {
        if a.max_changes.is_some_and(|m| changes >= m) {
            return;
        }
        let pause = mean * (0.5 + rng.unit());
        tokio::time::sleep(Duration::from_secs_f64(pause)).await;
        let Some(s) = shared.upgrade() else {
            return;
        };
        let agents = if a.agents.is_empty() {
            lock(&s.state).agent_ids()
        } else {
            a.agents.clone()
        };
        if agents.is_empty() {
            continue;
        }
        let agent = &agents[rng.below(agents.len())];
        let Some((logged_in, current)) = lock(&s.state)
            .agent(agent)
            .map(|r| (r.logged_in, r.presence_id.clone()))
        else {
            continue;
        };
        let done = match decide(&mut rng, &a, logged_in, &current) {
            Some(Step::SignOut) => s.apply(|st, _| st.sign_out(agent).map(|c| vec![c])),
            Some(Step::SignIn) => {
                s.apply(|st, _| st.sign_in(agent, builtin::AVAILABLE).map(|c| vec![c]))
            }
            Some(Step::Set { presence, by }) if by == BY_AGENT => {
                s.apply(|st, _| st.set_by_agent(agent, presence).map(|c| vec![c]))
            }
            Some(Step::Set { presence, .. }) => {
                s.apply(|st, _| st.set_by_system(agent, presence).map(|c| vec![c]))
            }
            None => Ok(None),
        }
        .is_ok_and(|v| v.is_some());
        if done {
            changes += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generator_is_reproducible_and_in_range() {
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        for _ in 0..100 {
            let x = a.unit();
            assert_eq!(x, b.unit());
            assert!((0.0..1.0).contains(&x));
            assert!(a.below(3) < 3);
            b.below(3);
        }
    }

    #[test]
    fn a_change_is_always_to_a_different_presence_and_signed_out_agents_only_sign_in() {
        let act = Activity::new(1, Duration::from_secs(1));
        let mut rng = Rng::new(42);
        for _ in 0..500 {
            match decide(&mut rng, &act, true, builtin::BUSY) {
                Some(Step::Set { presence, .. }) => assert_ne!(presence, builtin::BUSY),
                Some(Step::SignOut) | None => {}
                Some(Step::SignIn) => panic!("a signed-in agent does not sign in"),
            }
            assert!(matches!(
                decide(&mut rng, &act, false, builtin::OFFLINE),
                Some(Step::SignIn) | None
            ));
        }
    }
}
