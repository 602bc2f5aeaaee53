//! An in-memory connector: a simulated remote system that lives in the test process.
//!
//! [`MemorySystem`] plays the remote (a Dataverse-like system that a write overwrites, or a
//! Teams-like aggregate that a write only contributes to); [`MemoryConnector`] is the
//! [`Connector`] presync uses to talk to it. The engine's own tests use the pair to drive the
//! pipeline without HTTP, the proptest model test relies on it being deterministic (time comes
//! from the injected [`Clock`], nothing is random), and connector authors can read it as the
//! smallest complete plug-in.
//!
//! What it simulates:
//!
//! - **Overwrite** ([`WriteSemantics::Overwrite`], the default): the user's state is whatever
//!   was set last, by the person ([`MemorySystem::person_sets`]) or by a write.
//! - **Contribution** ([`MemorySystem::with_semantics`]): the effective state is the person's
//!   preferred presence if set, else the strongest session by `DoNotDisturb > Busy > Available >
//!   Away` among the person's own session and presync's session, else `Offline`. A write sets
//!   presync's session; `Set(Offline)` and `Withdraw` clear it.
//! - **Override** ([`WriteSemantics::Override`]): presync's write is shown over the person's
//!   own state while set (a Teams preferred presence); `Set(Offline)` and `Withdraw` clear it,
//!   and the person picking a status replaces it.
//! - Every change of a user's effective state bumps its sequence, records the clock time and,
//!   while push is on, queues a push delivery ([`MemorySystem::take_deliveries`]) shaped like the
//!   [`Observation`] a real webhook handler would build.
//! - Faults ([`MemoryFault`]) are queued and consumed one per `write` or `read_all` call.
//!
//! ```
//! use std::sync::Arc;
//! use presync_engine::clock::ManualClock;
//! use presync_engine::memory::MemorySystem;
//! use presync_engine::{Availability, Connector, Desired, ExternalId, WriteSemantics};
//!
//! let teams = MemorySystem::new("teams", Arc::new(ManualClock::new(1_000)))
//!     .with_semantics(WriteSemantics::Contribution);
//! let alice = ExternalId::from("alice");
//! teams.add_user(alice.clone(), Availability::Available);
//!
//! // The person goes DoNotDisturb in the client: a push delivery is produced.
//! let pushed = teams.person_sets(&alice, Availability::DoNotDisturb);
//! assert!(pushed.is_some());
//!
//! // presync withdraws its (absent) contribution: the aggregate stays with the person.
//! futures::executor::block_on(teams.connector().write(&alice, &Desired::Withdraw)).unwrap();
//! assert_eq!(teams.state(&alice), Some(Availability::DoNotDisturb));
//! assert_eq!(teams.take_deliveries().len(), 1);
//! ```
//!
//! The tests below run the [conformance kit](crate::conformance) against both modes; their
//! `Harness` implementation is the example to follow for a connector's simulator.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;

use crate::clock::Clock;
use crate::connector::{
    Capabilities, Connector, ConnectorError, Mapped, RemoteState, WriteSemantics,
};
use crate::model::{
    Availability, Desired, ExternalId, Millis, NativeState, Observation, ObservationKind, Origin,
    SystemId,
};

/// A simulated remote system. Cheap to clone: clones share the same state.
#[derive(Debug, Clone)]
pub struct MemorySystem {
    inner: Arc<Mutex<Inner>>,
}

/// The [`Connector`] for a [`MemorySystem`]; its kind is `memory`.
#[derive(Debug)]
pub struct MemoryConnector {
    inner: Arc<Mutex<Inner>>,
}

/// A write the remote accepted, in the order it was accepted.
///
/// A repeated write that changed nothing is still recorded; a write refused by a fault is not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteRecord {
    pub user: ExternalId,
    pub desired: Desired,
    /// The clock time of the write.
    pub at: Millis,
}

/// A fault the next `write` or `read_all` call meets. See [`MemorySystem::inject`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemoryFault {
    /// Throttled with this `Retry-After`; nothing is applied.
    RateLimited(Duration),
    /// A 5xx; nothing is applied.
    ServerError,
    /// Times out after the write took effect (outcome unknown). On a read, a plain transient
    /// error.
    TimeoutAfterApply,
    /// Credentials refused; nothing is applied.
    Unauthorized,
    /// The request is refused for good; nothing is applied.
    Reject,
    /// The call takes this long (real time), then goes through.
    Slow(Duration),
}

impl MemoryFault {
    /// The error a call meeting this fault returns (for `TimeoutAfterApply`, once applied).
    fn error(&self) -> ConnectorError {
        match self {
            MemoryFault::RateLimited(d) => ConnectorError::RateLimited {
                retry_after: Some(*d),
                message: "memory: injected rate limit".to_owned(),
            },
            MemoryFault::ServerError => transient("memory: injected server error", false),
            MemoryFault::TimeoutAfterApply => transient(
                "memory: injected timeout after the request was applied",
                true,
            ),
            MemoryFault::Unauthorized => ConnectorError::Unauthorized {
                message: "memory: injected unauthorized".to_owned(),
            },
            MemoryFault::Reject => rejected("memory: injected rejection"),
            MemoryFault::Slow(_) => transient("memory: injected slow call", false),
        }
    }
}

fn transient(message: &str, outcome_unknown: bool) -> ConnectorError {
    ConnectorError::Transient {
        message: message.to_owned(),
        outcome_unknown,
        source: None,
    }
}

fn rejected(message: impl Into<String>) -> ConnectorError {
    ConnectorError::Rejected {
        message: message.into(),
    }
}

#[derive(Debug)]
struct Inner {
    name: SystemId,
    clock: Arc<dyn Clock>,
    semantics: WriteSemantics,
    timestamps: bool,
    push: bool,
    users: BTreeMap<ExternalId, UserState>,
    deliveries: Vec<Observation>,
    writes: Vec<WriteRecord>,
    faults: VecDeque<MemoryFault>,
    /// Bulk reads asked of it, failed ones included.
    reads: usize,
}

#[derive(Debug, Clone)]
struct UserState {
    /// Overwrite mode: the state itself.
    state: Availability,
    /// Contribution mode: the person's own session.
    own_session: Option<Availability>,
    /// Contribution mode: presync's session.
    presync_session: Option<Availability>,
    /// Contribution mode: the person's preferred presence, which beats every session.
    preferred: Option<Availability>,
    sequence: i64,
    changed_at: Millis,
}

/// Sessions by rising precedence in an aggregate: `DoNotDisturb > Busy > Available > Away`.
const SESSION_PRECEDENCE: [Availability; 4] = [
    Availability::Away,
    Availability::Available,
    Availability::Busy,
    Availability::DoNotDisturb,
];

/// A session showing `a`; `Offline` means no session.
fn session(a: Availability) -> Option<Availability> {
    (a != Availability::Offline).then_some(a)
}

impl UserState {
    fn effective(&self, semantics: WriteSemantics) -> Availability {
        match semantics {
            WriteSemantics::Overwrite => self.state,
            WriteSemantics::Contribution => self.preferred.unwrap_or_else(|| {
                [self.own_session, self.presync_session]
                    .into_iter()
                    .flatten()
                    .max_by_key(|a| SESSION_PRECEDENCE.iter().position(|s| s == a))
                    .unwrap_or(Availability::Offline)
            }),
            // presync's override is the preferred slot: it shows over the person's sessions.
            WriteSemantics::Override => self
                .presync_session
                .or(self.preferred)
                .or(self.own_session)
                .unwrap_or(Availability::Offline),
        }
    }
}

/// The native state of `a`: its canonical name as the code, a label for people.
fn native(a: Availability) -> NativeState {
    let label = match a {
        Availability::DoNotDisturb => "Do not disturb",
        other => other.as_str(),
    };
    NativeState::new(a.as_str()).with_label(label)
}

fn lock(inner: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    // A panic while holding the lock cannot leave `Inner` half-updated in a way that matters
    // to a simulation, so a poisoned lock is used as is.
    inner.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Inner {
    /// Apply `f` to `user` and, when the effective state changed, bump the sequence and queue a
    /// delivery. Returns the delivery; `None` for an unknown user, no change or push off.
    fn change(
        &mut self,
        user: &ExternalId,
        origin: Origin,
        f: impl FnOnce(&mut UserState),
    ) -> Option<Observation> {
        let now = self.clock.now();
        let u = self.users.get_mut(user)?;
        let before = u.effective(self.semantics);
        f(u);
        let after = u.effective(self.semantics);
        if before == after {
            return None;
        }
        u.sequence += 1;
        u.changed_at = now;
        let sequence = u.sequence;
        if !self.push {
            return None;
        }
        let obs = Observation {
            system: self.name.clone(),
            external_id: user.clone(),
            native: native(after),
            source_time: now,
            sequence: Some(sequence),
            origin,
            kind: ObservationKind::Event,
            delivery_key: format!("{}:{}:{}", self.name, user, sequence),
            observed_at: now,
            changed_by: None,
            automatic: None,
        };
        self.deliveries.push(obs.clone());
        Some(obs)
    }

    fn apply_write(&mut self, user: &ExternalId, desired: &Desired) -> Result<(), ConnectorError> {
        if !self.users.contains_key(user) {
            return Err(rejected(format!(
                "memory: unknown user {user} at {}",
                self.name
            )));
        }
        match (self.semantics, desired) {
            (WriteSemantics::Overwrite, Desired::Withdraw) => {
                return Err(rejected("withdraw needs contribution semantics"));
            }
            (WriteSemantics::Overwrite, Desired::Set(p)) => {
                let a = p.availability;
                self.change(user, Origin::Unknown, |u| u.state = a);
            }
            (WriteSemantics::Contribution | WriteSemantics::Override, _) => {
                let s = desired.availability().and_then(session);
                self.change(user, Origin::Unknown, |u| u.presync_session = s);
            }
        }
        let at = self.clock.now();
        self.writes.push(WriteRecord {
            user: user.clone(),
            desired: desired.clone(),
            at,
        });
        Ok(())
    }
}

impl MemorySystem {
    /// An empty system named `name` with [`WriteSemantics::Overwrite`] and push on.
    pub fn new(name: impl Into<SystemId>, clock: Arc<dyn Clock>) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner {
                name: name.into(),
                clock,
                semantics: WriteSemantics::Overwrite,
                timestamps: true,
                push: true,
                users: BTreeMap::new(),
                deliveries: Vec::new(),
                writes: Vec::new(),
                faults: VecDeque::new(),
                reads: 0,
            })),
        }
    }

    /// The same system with other write semantics; `Contribution` models a Teams-like aggregate.
    pub fn with_semantics(self, semantics: WriteSemantics) -> Self {
        lock(&self.inner).semantics = semantics;
        self
    }

    /// The same system declaring that it does not date its states (like Teams): the engine then
    /// dates them by when it reads or receives them.
    pub fn without_timestamps(self) -> Self {
        lock(&self.inner).timestamps = false;
        self
    }

    /// The system's name, as the observations carry it.
    pub fn name(&self) -> SystemId {
        lock(&self.inner).name.clone()
    }

    /// A connector talking to this system.
    pub fn connector(&self) -> Arc<MemoryConnector> {
        Arc::new(MemoryConnector {
            inner: Arc::clone(&self.inner),
        })
    }

    /// Create `user` in state `initial` (in Contribution mode: as the person's own session, none
    /// for `Offline`). Produces no delivery. Re-adding a user resets its state and bumps its
    /// sequence, still without a delivery.
    pub fn add_user(&self, user: impl Into<ExternalId>, initial: Availability) {
        let mut inner = lock(&self.inner);
        let now = inner.clock.now();
        let user = user.into();
        let sequence = inner.users.get(&user).map_or(1, |u| u.sequence + 1);
        inner.users.insert(
            user,
            UserState {
                state: initial,
                own_session: session(initial),
                presync_session: None,
                preferred: None,
                sequence,
                changed_at: now,
            },
        );
    }

    /// The person (or the system on its own) changes the user's state. Overwrite: the state
    /// becomes `a`. Contribution: the person's own session becomes `a` (`Offline` ends it).
    ///
    /// Returns the push delivery if the effective state changed and push is on (it is also
    /// queued, see [`MemorySystem::take_deliveries`]); `None` for an unknown user.
    pub fn person_sets(&self, user: &ExternalId, a: Availability) -> Option<Observation> {
        let mut inner = lock(&self.inner);
        match inner.semantics {
            WriteSemantics::Overwrite => inner.change(user, Origin::Automatic, |u| u.state = a),
            WriteSemantics::Contribution | WriteSemantics::Override => {
                inner.change(user, Origin::Automatic, |u| u.own_session = session(a))
            }
        }
    }

    /// Contribution mode: the person's preferred presence, which beats every session; `None`
    /// clears it. Override mode: the same, and it replaces presync's override. In Overwrite mode `Some(a)` sets the state like [`MemorySystem::person_sets`]
    /// but as a manual change, and `None` does nothing. Deliveries carry [`Origin::Manual`].
    pub fn person_sets_preferred(
        &self,
        user: &ExternalId,
        a: Option<Availability>,
    ) -> Option<Observation> {
        let mut inner = lock(&self.inner);
        match (inner.semantics, a) {
            (WriteSemantics::Overwrite, Some(a)) => {
                inner.change(user, Origin::Manual, |u| u.state = a)
            }
            (WriteSemantics::Overwrite, None) => None,
            (WriteSemantics::Contribution, a) => {
                inner.change(user, Origin::Manual, |u| u.preferred = a)
            }
            // The person's status takes the slot presync's override was in.
            (WriteSemantics::Override, a) => inner.change(user, Origin::Manual, |u| {
                u.preferred = a;
                u.presync_session = None;
            }),
        }
    }

    /// The user's effective state, as the system shows it; `None` for an unknown user.
    pub fn state(&self, user: &ExternalId) -> Option<Availability> {
        let inner = lock(&self.inner);
        let semantics = inner.semantics;
        inner.users.get(user).map(|u| u.effective(semantics))
    }

    /// Contribution mode: presync's own session for the user, if it holds one.
    pub fn presync_session(&self, user: &ExternalId) -> Option<Availability> {
        let inner = lock(&self.inner);
        match inner.semantics {
            WriteSemantics::Overwrite => None,
            WriteSemantics::Contribution | WriteSemantics::Override => {
                inner.users.get(user).and_then(|u| u.presync_session)
            }
        }
    }

    /// Drain the queued push deliveries, in the order they were produced.
    pub fn take_deliveries(&self) -> Vec<Observation> {
        std::mem::take(&mut lock(&self.inner).deliveries)
    }

    /// Every write the system accepted so far, in order.
    pub fn writes(&self) -> Vec<WriteRecord> {
        lock(&self.inner).writes.clone()
    }

    /// Queue a fault. Faults are consumed in order, one by each `write` or `read_all` call.
    pub fn inject(&self, fault: MemoryFault) {
        lock(&self.inner).faults.push_back(fault);
    }

    /// How many bulk reads were asked of it, failed ones included.
    pub fn reads(&self) -> usize {
        lock(&self.inner).reads
    }

    /// Turn push deliveries on or off (on by default). While off, changes still happen and bump
    /// sequences, but produce no delivery: a lost webhook that only the reconciler can find.
    pub fn set_push(&self, on: bool) {
        lock(&self.inner).push = on;
    }
}

#[async_trait]
impl Connector for MemoryConnector {
    fn kind(&self) -> &'static str {
        "memory"
    }

    fn capabilities(&self) -> Capabilities {
        let inner = lock(&self.inner);
        Capabilities {
            push_ingress: true,
            bulk_read: true,
            write: true,
            write_semantics: inner.semantics,
            source_timestamps: inner.timestamps,
        }
    }

    fn to_canonical(&self, native: &NativeState) -> Mapped {
        // An unknown code must never route: it maps to Offline.
        let parsed = Availability::from_str(&native.code).ok();
        Mapped {
            availability: parsed.unwrap_or(Availability::Offline),
            known: parsed.is_some(),
        }
    }

    fn to_native(&self, availability: Availability) -> Option<NativeState> {
        Some(native(availability))
    }

    async fn write(&self, user: &ExternalId, desired: &Desired) -> Result<(), ConnectorError> {
        let fault = lock(&self.inner).faults.pop_front();
        let timeout_after_apply = match fault {
            None => false,
            Some(MemoryFault::Slow(d)) => {
                tokio::time::sleep(d).await;
                false
            }
            Some(MemoryFault::TimeoutAfterApply) => true,
            Some(fault) => return Err(fault.error()),
        };
        let mut inner = lock(&self.inner);
        inner.apply_write(user, desired)?;
        if timeout_after_apply {
            return Err(MemoryFault::TimeoutAfterApply.error());
        }
        Ok(())
    }

    async fn read_all(&self, users: &[ExternalId]) -> Result<Vec<RemoteState>, ConnectorError> {
        let fault = {
            let mut inner = lock(&self.inner);
            inner.reads += 1;
            inner.faults.pop_front()
        };
        if let Some(MemoryFault::Slow(d)) = fault {
            tokio::time::sleep(d).await;
        }
        let inner = lock(&self.inner);
        match fault {
            None | Some(MemoryFault::Slow(_)) => {}
            Some(MemoryFault::TimeoutAfterApply) => {
                return Err(transient("memory: injected timeout", false))
            }
            Some(fault) => return Err(fault.error()),
        }
        let wanted: BTreeSet<&ExternalId> = users.iter().collect();
        let semantics = inner.semantics;
        Ok(inner
            .users
            .iter()
            .filter(|(id, _)| wanted.is_empty() || wanted.contains(id))
            .map(|(id, u)| RemoteState {
                external_id: id.clone(),
                native: native(u.effective(semantics)),
                source_time: Some(u.changed_at),
                sequence: Some(u.sequence),
                origin: Origin::Unknown,
                automatic: None,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::clock::ManualClock;
    use crate::conformance::{self, Fault, Harness, Outcome};
    use crate::model::Presence;
    use Availability::*;

    /// The conformance harness for the memory connector: every user of the system is offered
    /// to the kit. In Contribution mode, add the users as `Offline` so that no session of the
    /// person competes with presync's writes.
    #[async_trait]
    impl Harness for MemorySystem {
        fn connector(&self) -> Arc<dyn Connector> {
            MemorySystem::connector(self)
        }
        fn users(&self) -> Vec<ExternalId> {
            lock(&self.inner).users.keys().cloned().collect()
        }
        async fn remote_state(&self, user: &ExternalId) -> Option<Availability> {
            self.state(user)
        }
        async fn inject(&self, fault: Fault) -> bool {
            MemorySystem::inject(
                self,
                match fault {
                    Fault::RateLimited { retry_after } => MemoryFault::RateLimited(retry_after),
                    Fault::ServerError => MemoryFault::ServerError,
                    Fault::Unauthorized => MemoryFault::Unauthorized,
                    Fault::RejectWrite => MemoryFault::Reject,
                },
            );
            true
        }
    }

    fn system(semantics: WriteSemantics) -> (MemorySystem, Arc<ManualClock>, ExternalId) {
        let clock = Arc::new(ManualClock::new(1_000));
        let sys = MemorySystem::new("mem", clock.clone()).with_semantics(semantics);
        sys.add_user("u1", Offline);
        (sys, clock, "u1".into())
    }

    fn set(availability: Availability) -> Desired {
        let (source, native, origin) = ("test".into(), native(availability), Origin::Unknown);
        let (source_time, observed_at, version) = (0, 0, 1);
        #[rustfmt::skip]
        let p = Presence { availability, native, source, source_time, origin, observed_at, version };
        Desired::Set(p)
    }

    async fn write(sys: &MemorySystem, u: &ExternalId, d: Desired) -> Result<(), ConnectorError> {
        sys.connector().write(u, &d).await
    }

    /// The native codes of the queued deliveries, drained.
    fn delivered(sys: &MemorySystem) -> Vec<String> {
        let deliveries = sys.take_deliveries();
        deliveries.into_iter().map(|d| d.native.code).collect()
    }

    /// `Some(outcome_unknown)` for a transient error, `None` for any other.
    fn transient_flag(e: &ConnectorError) -> Option<bool> {
        match e {
            ConnectorError::Transient {
                outcome_unknown, ..
            } => Some(*outcome_unknown),
            _ => None,
        }
    }

    #[tokio::test]
    async fn conformance_kit_passes_in_both_modes() {
        use WriteSemantics::*;
        for (mode, skipped) in [
            (Overwrite, vec!["withdraw_is_accepted"]),
            (Contribution, vec![]),
        ] {
            let (sys, _, _) = system(mode);
            sys.add_user("u2", Offline);
            let report = conformance::run(&sys).await;
            report.assert_passed();
            let not_passed = report
                .checks
                .iter()
                .filter(|c| c.outcome != Outcome::Passed);
            assert_eq!(not_passed.map(|c| c.name).collect::<Vec<_>>(), skipped);
        }
    }

    /// One step of an aggregation scenario.
    enum Step {
        Person(Availability),
        Preferred(Option<Availability>),
        Write(Option<Availability>),
    }

    #[tokio::test]
    async fn contribution_aggregate_follows_teams_precedence() {
        use Step::*;
        // (scenario, steps, expected effective state, expected presync session)
        #[rustfmt::skip]
        let cases: [(&str, &[Step], Availability, Option<Availability>); 7] = [
            ("person's DND beats presync's Available session",
                &[Write(Some(Available)), Person(DoNotDisturb)], DoNotDisturb, Some(Available)),
            ("presync's Busy does not beat the person's DND",
                &[Person(DoNotDisturb), Write(Some(Busy))], DoNotDisturb, Some(Busy)),
            ("presync's Busy beats the person's Available",
                &[Person(Available), Write(Some(Busy))], Busy, Some(Busy)),
            ("preferred beats every session",
                &[Person(Busy), Write(Some(DoNotDisturb)), Preferred(Some(Away))], Away, Some(DoNotDisturb)),
            ("clearing preferred restores the sessions' aggregate",
                &[Write(Some(DoNotDisturb)), Preferred(Some(Away)), Preferred(None)], DoNotDisturb, Some(DoNotDisturb)),
            ("withdraw restores the person's own state",
                &[Person(Available), Write(Some(DoNotDisturb)), Write(None)], Available, None),
            ("Set(Offline) clears presync's session",
                &[Write(Some(Busy)), Write(Some(Offline))], Offline, None),
        ];
        for (name, steps, state, session) in cases {
            let (sys, _, u) = system(WriteSemantics::Contribution);
            for step in steps {
                match step {
                    Person(a) => drop(sys.person_sets(&u, *a)),
                    Preferred(a) => drop(sys.person_sets_preferred(&u, *a)),
                    Write(a) => write(&sys, &u, a.map_or(Desired::Withdraw, set))
                        .await
                        .unwrap(),
                }
            }
            assert_eq!(
                (sys.state(&u), sys.presync_session(&u)),
                (Some(state), session),
                "{name}"
            );
        }
    }

    #[tokio::test]
    async fn aggregate_changes_are_delivered_only_when_the_effective_state_changes() {
        let (sys, _, u) = system(WriteSemantics::Contribution);
        sys.person_sets(&u, DoNotDisturb).unwrap();
        write(&sys, &u, set(Busy)).await.unwrap();
        let manual = sys.person_sets_preferred(&u, Some(Away)).unwrap();
        assert_eq!(manual.origin, Origin::Manual);
        assert_eq!(delivered(&sys), ["DoNotDisturb", "Away"]);
    }

    #[tokio::test]
    async fn withdraw_and_unknown_users_are_rejected_in_overwrite_mode() {
        let (sys, _, u) = system(WriteSemantics::Overwrite);
        let err = write(&sys, &u, Desired::Withdraw).await.unwrap_err();
        assert!(matches!(err, ConnectorError::Rejected { .. }));
        let err = write(&sys, &"nobody".into(), set(Busy)).await.unwrap_err();
        assert!(matches!(err, ConnectorError::Rejected { .. }));
        assert!(sys.writes().is_empty());
    }

    #[tokio::test]
    async fn repeating_a_write_produces_no_second_delivery() {
        let (sys, clock, u) = system(WriteSemantics::Overwrite);
        clock.set(5_000);
        write(&sys, &u, set(Busy)).await.unwrap();
        write(&sys, &u, set(Busy)).await.unwrap();
        let deliveries = sys.take_deliveries();
        #[rustfmt::skip]
        let expected = [Observation {
            system: "mem".into(), external_id: u, native: NativeState::new("Busy").with_label("Busy"),
            source_time: 5_000, sequence: Some(2), origin: Origin::Unknown,
            kind: ObservationKind::Event, delivery_key: "mem:u1:2".into(), observed_at: 5_000,
            changed_by: None,
            automatic: None,
        }];
        assert_eq!(deliveries, expected);
        assert_eq!(sys.writes().len(), 2, "both writes were accepted");
    }

    #[tokio::test]
    async fn timeout_after_apply_applies_the_write_and_reports_outcome_unknown() {
        let (sys, _, u) = system(WriteSemantics::Overwrite);
        sys.inject(MemoryFault::TimeoutAfterApply);
        let err = write(&sys, &u, set(Away)).await.unwrap_err();
        assert_eq!(transient_flag(&err), Some(true));
        assert_eq!(sys.state(&u), Some(Away));
        assert_eq!((delivered(&sys).len(), sys.writes().len()), (1, 1));
    }

    #[tokio::test]
    async fn faults_apply_nothing_and_are_consumed_one_per_call() {
        let (sys, _, u) = system(WriteSemantics::Overwrite);
        let conn = sys.connector();
        sys.inject(MemoryFault::RateLimited(Duration::from_secs(3)));
        sys.inject(MemoryFault::TimeoutAfterApply);
        sys.inject(MemoryFault::Unauthorized);
        let err = write(&sys, &u, set(Busy)).await.unwrap_err();
        assert_eq!(err.retry_after(), Some(Duration::from_secs(3)));
        assert_eq!(sys.state(&u), Some(Offline));
        assert!(delivered(&sys).is_empty() && sys.writes().is_empty());
        let err = conn.read_all(&[]).await.unwrap_err();
        assert_eq!(transient_flag(&err), Some(false), "a read cannot apply");
        let err = conn.read_all(&[]).await.unwrap_err();
        assert!(matches!(err, ConnectorError::Unauthorized { .. }));
        write(&sys, &u, set(Busy)).await.unwrap();
        assert_eq!(sys.state(&u), Some(Busy));
    }

    #[tokio::test]
    async fn push_off_produces_no_deliveries_but_changes_still_happen() {
        let (sys, _, u) = system(WriteSemantics::Overwrite);
        sys.set_push(false);
        assert!(sys.person_sets(&u, Busy).is_none());
        write(&sys, &u, set(Available)).await.unwrap();
        assert!(delivered(&sys).is_empty());
        let states = sys.connector().read_all(&[]).await.unwrap();
        let s = &states[0];
        assert_eq!((s.native.code.as_str(), s.sequence), ("Available", Some(3)));
    }

    #[tokio::test]
    async fn bulk_read_returns_requested_users_sorted_or_everyone_when_none_named() {
        let (sys, clock, u1) = system(WriteSemantics::Overwrite);
        sys.add_user("u3", Busy);
        sys.add_user("u2", Away);
        clock.advance(10);
        sys.person_sets(&"u2".into(), Busy);
        let conn = sys.connector();
        let all = conn.read_all(&[]).await.unwrap();
        let ids: Vec<_> = all.iter().map(|s| s.external_id.as_str()).collect();
        assert_eq!(ids, ["u1", "u2", "u3"]);
        assert_eq!(all[1].source_time, Some(1_010));
        let asked = ["u3".into(), u1.clone(), "ghost".into(), u1];
        let some = conn.read_all(&asked).await.unwrap();
        let ids: Vec<_> = some.iter().map(|s| s.external_id.as_str()).collect();
        assert_eq!(ids, ["u1", "u3"]);
    }

    #[test]
    fn person_changes_produce_ordered_deliveries_with_automatic_origin() {
        let (sys, _, u) = system(WriteSemantics::Overwrite);
        assert!(sys.person_sets(&u, Offline).is_none(), "no change");
        sys.person_sets(&u, Busy);
        sys.person_sets(&u, Away);
        let d = sys.take_deliveries();
        let seqs: Vec<_> = d.iter().map(|o| (o.sequence, o.origin)).collect();
        let automatic = Origin::Automatic;
        assert_eq!(seqs, [(Some(2), automatic), (Some(3), automatic)]);
        assert!(sys.take_deliveries().is_empty(), "drained");
        assert!(sys.person_sets(&"ghost".into(), Busy).is_none());
    }

    #[test]
    fn unknown_native_code_maps_to_offline_and_not_known() {
        let (sys, _, _) = system(WriteSemantics::Overwrite);
        let m = sys.connector().to_canonical(&NativeState::new("Sleeping"));
        assert_eq!((m.availability, m.known), (Offline, false));
        assert!(!m.availability.is_routable());
    }
}
