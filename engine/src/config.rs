//! Engine configuration: the conflict rules, the pipeline's timings and the dispatcher's limits.
//!
//! Every struct deserializes with `deny_unknown_fields` and has defaults, so a config file names
//! only what it changes. Durations are milliseconds (`*_ms`) to keep the engine free of a
//! duration-parsing dependency; the `presync` binary's config layer may accept other forms.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::{Availability, SystemId};

/// Everything the engine needs besides its store, connectors and topology.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    pub rules: RulesConfig,
    pub pipeline: PipelineConfig,
    /// Per-target dispatch limits, keyed by system name. Systems not listed use `dispatch_default`.
    pub dispatch: BTreeMap<SystemId, DispatchConfig>,
    pub dispatch_default: DispatchConfig,
}

impl EngineConfig {
    /// The dispatch limits for one target.
    pub fn dispatch_for(&self, target: &SystemId) -> &DispatchConfig {
        self.dispatch.get(target).unwrap_or(&self.dispatch_default)
    }
}

/// The conflict rules of DESIGN.md, in the order they run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RulesConfig {
    /// How long a write's echo expectation stays open. Dataverse async steps can take minutes.
    pub echo_ttl_ms: i64,
    /// Last-writer-wins tie-break: on equal source timestamps, the system listed first wins.
    /// Systems not listed rank after every listed one, by name.
    pub system_priority: Vec<SystemId>,
    /// A source timestamp more than this far ahead of presync's clock is clamped to presync's
    /// clock plus this bound, so a system with a fast clock cannot win every future conflict.
    pub max_clock_skew_ms: i64,
    /// How a change that a reconcile pass finds in a system without timestamps of its own
    /// (Teams) is ordered against a dated change made since presync last saw that system.
    pub undated_changes: UndatedChanges,
    /// The availabilities a contact center may route work to. A hold puts back a held system
    /// that shows one of these; every other state (a break, a sign-out) is the person's and is
    /// respected. Dynamics 365 routes by base status, and a workstream's allowed presences
    /// usually include Busy: `["Available", "Busy"]` by default.
    pub routable: Vec<Availability>,
    pub policies: Policies,
}

/// See [`RulesConfig::undated_changes`]. Teams gives no time for a presence change; a missed
/// change that a reconcile read finds happened at some time after presync's last sight of the
/// representative there, and the read's time is only an upper bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UndatedChanges {
    /// When the canonical state comes from a dated change (Dataverse's
    /// `msdyn_presencemodifiedon`) made after that last sight, the dated change holds and the
    /// undated system is repaired to it: a person's recorded choice is never overwritten by a
    /// state whose time is unknown.
    #[default]
    DatedWins,
    /// The read's time decides: the missed change wins over every change made since that sight.
    ReadTime,
}

impl Default for RulesConfig {
    fn default() -> Self {
        Self {
            echo_ttl_ms: 10 * 60 * 1000,
            system_priority: Vec::new(),
            max_clock_skew_ms: 5_000,
            undated_changes: UndatedChanges::default(),
            routable: vec![Availability::Available, Availability::Busy],
            policies: Policies::default(),
        }
    }
}

impl RulesConfig {
    /// Whether work may be routed to someone in state `a` (see [`RulesConfig::routable`]).
    pub fn is_routable(&self, a: Availability) -> bool {
        self.routable.contains(&a)
    }
}

/// Configurable policy rules (rule 3). All are off unless configured, except the default hold
/// (see [`Policies::hold`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Policies {
    /// A state the person set by hand holds against automatic changes from other systems.
    pub manual_wins: Option<ManualWins>,
    /// Offline reported automatically by these systems is held for a grace window and dropped
    /// when the system reports something else within it (D365 restores presence after a
    /// reconnect within 2.5 minutes).
    pub debounce_offline: Vec<DebounceOffline>,
    /// Native states forced to a canonical availability, e.g. Teams `InAMeeting` to Busy. Applied
    /// when mapping, before every other rule.
    pub remap: Vec<Remap>,
    /// Conditions that hold another system at a presence that is not routable: while a
    /// representative's Teams state is a meeting, a call or a presentation, Dynamics 365 is
    /// held at Busy - DND however often it recalculates. By default, the one hold
    /// [`Hold::teams_meetings`]; an empty list turns holds off.
    pub hold: Vec<Hold>,
}

impl Default for Policies {
    fn default() -> Self {
        Policies {
            manual_wins: None,
            debounce_offline: Vec::new(),
            remap: Vec::new(),
            hold: vec![Hold::teams_meetings()],
        }
    }
}

/// See [`Policies::hold`]: while `when.system` shows one of `when.states`, `hold.system` is held
/// at `hold.presence`.
///
/// While held, a change of the held system to a routable state (its own recalculation, an
/// assignment, an API) is put back at once; a state that is not routable (a break, a sign-out)
/// is the person's and is respected. When the condition ends, the held system shows what it
/// would without the hold: the person's own choice that is not routable if they made one,
/// else what its automation gives them ([`Observation::automatic`](crate::Observation)). A
/// hold is never written to any other system.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hold {
    pub when: HoldWhen,
    pub hold: HoldAt,
}

/// The condition of a [`Hold`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HoldWhen {
    /// The system whose state is the condition.
    pub system: SystemId,
    /// Native states of that system, matched as [`Remap::native`] is, case-insensitively: the
    /// whole code, or the activity of a Teams pair (`InAMeeting` matches `Busy/InAMeeting`).
    pub states: Vec<String>,
}

/// What a [`Hold`] holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HoldAt {
    /// The system held.
    pub system: SystemId,
    /// A canonical availability (`DoNotDisturb`), or a native state of the held system whose
    /// availability is not routable (a Dynamics 365 presence id, such as a custom "In a Teams
    /// meeting" presence based on Busy - DND).
    pub presence: String,
}

impl Hold {
    /// The default hold: Teams `InAMeeting`, `InACall` or `Presenting` (in both of Graph's value
    /// sets) holds Dynamics 365 at the built-in Busy - DND.
    pub fn teams_meetings() -> Hold {
        Hold {
            when: HoldWhen {
                system: "teams".into(),
                states: ["InAMeeting", "InACall", "Presenting"]
                    .map(str::to_owned)
                    .to_vec(),
            },
            hold: HoldAt {
                system: "dataverse".into(),
                presence: Availability::DoNotDisturb.as_str().to_owned(),
            },
        }
    }

    /// Whether `code`, a native state of [`HoldWhen::system`], is one of the holding states.
    pub fn holds_on(&self, code: &str) -> bool {
        self.when.states.iter().any(|s| state_matches(s, code))
    }

    /// The rule as people read it: `teams InAMeeting|InACall|Presenting holds dataverse at
    /// DoNotDisturb`.
    pub fn describe(&self) -> String {
        format!(
            "{} {} holds {} at {}",
            self.when.system,
            self.when.states.join("|"),
            self.hold.system,
            self.hold.presence
        )
    }
}

/// Whether a configured native state matches a native code: the whole code, or the part after
/// the last `/` (the activity of a Teams pair), case-insensitively.
pub fn state_matches(state: &str, code: &str) -> bool {
    code.eq_ignore_ascii_case(state)
        || code
            .rsplit_once('/')
            .is_some_and(|(_, activity)| activity.eq_ignore_ascii_case(state))
}

/// See [`Policies::manual_wins`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManualWins {
    /// How long a manual state holds against automatic changes, from its source time. Offline is
    /// never held back: signing out always takes effect.
    pub hold_ms: i64,
}

/// See [`Policies::debounce_offline`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DebounceOffline {
    pub system: SystemId,
    pub grace_ms: i64,
}

/// See [`Policies::remap`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Remap {
    pub system: SystemId,
    /// Matches a native code that equals it, or that ends with `/` followed by it (so `InAMeeting`
    /// matches the Teams pair `Busy/InAMeeting`), case-insensitively.
    pub native: String,
    pub to: Availability,
}

impl Remap {
    /// Whether this rule matches a native code of its system (see [`state_matches`]).
    pub fn matches(&self, code: &str) -> bool {
        state_matches(&self.native, code)
    }
}

/// Timings of the durable pipeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// How long a claim on an inbox or outbox row lasts. A crashed instance's claims are taken
    /// over after this.
    pub lease_ms: i64,
    /// How many rows one claim takes.
    pub batch: i64,
    /// How often idle loops look for work that another instance or a timer made due.
    pub poll_interval_ms: u64,
    /// How long processed inbox rows are kept for deduplication. Graph retries for 4 hours.
    pub dedup_retention_ms: i64,
    /// How long history rows are kept.
    pub history_retention_ms: i64,
    /// How long shutdown waits for in-flight writes.
    pub drain_deadline_ms: u64,
    /// How often an observation may fail to resolve before it is given up as a dead letter.
    pub max_attempts: i64,
    /// Reads of one system a reconcile pass makes, after throttled or transient failures,
    /// before it gives that system up until the next pass.
    pub reconcile_read_attempts: u32,
    /// Acknowledging webhooks comes first: while they queue for the disk (a commit of ingested
    /// observations ends with the next ones already waiting, so they arrive faster than they
    /// can be committed one commit at a time), the resolver waits before its next batch until
    /// they stop queueing, but never longer than this. An unacknowledged webhook can be lost
    /// (Dataverse retries once, and only after 502, 503 or 504); a decision made later is only
    /// late. 0: the resolver never waits.
    pub yield_to_ingest_ms: u64,
    /// Under overload, acknowledging webhooks comes first for at most this long: when webhooks
    /// queue for the disk and at least `defer_backlog` acknowledged events wait to be resolved,
    /// the resolver defers, resolving one batch every `defer_pause_ms`, until the webhooks stop
    /// (no commit during a pause) or this time has passed; then it resolves at full speed until
    /// it has caught up, and only then may it defer again. This bounds how late overload makes
    /// a decision. 0: the resolver never defers.
    pub defer_for_ms: u64,
    /// Acknowledged events waiting to be resolved (since the resolver last found the inbox
    /// empty) before the resolver may defer: below it, a queue of webhooks is a moment's, and
    /// deferring would only make decisions late.
    pub defer_backlog: u64,
    /// While the resolver defers, its pause before each batch.
    pub defer_pause_ms: u64,
    /// The running service's resolver claims the writes a batch decides, with their echo
    /// expectations, in the batch's own transaction, and starts them as soon as it commits,
    /// within each target's rate limit and `max_in_flight`. What the limits leave, the
    /// dispatcher claims. Off: every write waits for the dispatcher's claim, a commit of its
    /// own, after the resolve's.
    pub write_on_resolve: bool,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            lease_ms: 30_000,
            batch: 64,
            poll_interval_ms: 500,
            dedup_retention_ms: 24 * 60 * 60 * 1000,
            history_retention_ms: 30 * 24 * 60 * 60 * 1000,
            drain_deadline_ms: 10_000,
            max_attempts: 10,
            reconcile_read_attempts: 4,
            yield_to_ingest_ms: 50,
            defer_for_ms: 10_000,
            defer_backlog: 1_000,
            defer_pause_ms: 250,
            write_on_resolve: true,
        }
    }
}

/// Limits for writes to one target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DispatchConfig {
    /// Writes in flight at once.
    pub max_in_flight: usize,
    /// Requests allowed per `rate_window_ms` (a token bucket refilled continuously).
    pub rate_limit: u32,
    pub rate_window_ms: u64,
    /// Exponential backoff: first delay, cap. Full jitter in [delay/2, delay].
    pub backoff_base_ms: u64,
    pub backoff_max_ms: u64,
}

impl Default for DispatchConfig {
    fn default() -> Self {
        Self {
            max_in_flight: 8,
            rate_limit: 1_000,
            rate_window_ms: 30_000,
            backoff_base_ms: 500,
            backoff_max_ms: 5 * 60 * 1000,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remap_matches_the_activity_of_a_pair_or_the_whole_code() {
        let r = Remap {
            system: "teams".into(),
            native: "InAMeeting".into(),
            to: Availability::Busy,
        };
        assert!(r.matches("InAMeeting"));
        assert!(r.matches("Busy/InAMeeting"));
        assert!(!r.matches("Busy/NotInAMeeting"));
        assert!(!r.matches("XInAMeeting"));
        assert!(r.matches("busy/inameeting"), "case-insensitive");
    }

    #[test]
    fn the_default_hold_keeps_dataverse_unroutable_through_teams_meetings_calls_and_presenting() {
        let policies = Policies::default();
        assert_eq!(policies.hold, vec![Hold::teams_meetings()]);
        let h = &policies.hold[0];
        for code in [
            "Busy/InAMeeting",
            "Busy/InACall",
            "DoNotDisturb/Presenting",
            "InAMeeting",
        ] {
            assert!(h.holds_on(code), "{code}");
        }
        assert!(!h.holds_on("Busy/Busy") && !h.holds_on("DoNotDisturb/DoNotDisturb"));
        assert_eq!(
            h.describe(),
            "teams InAMeeting|InACall|Presenting holds dataverse at DoNotDisturb"
        );
        let off: Policies = serde_json::from_str(r#"{"hold":[]}"#).unwrap();
        assert!(off.hold.is_empty(), "an empty list turns holds off");
    }

    #[test]
    fn busy_is_routable_by_default() {
        let c = RulesConfig::default();
        assert!(c.is_routable(Availability::Available) && c.is_routable(Availability::Busy));
        assert!(!c.is_routable(Availability::DoNotDisturb) && !c.is_routable(Availability::Away));
    }

    #[test]
    fn unknown_config_keys_are_rejected() {
        let err = serde_json::from_str::<RulesConfig>(r#"{"echo_ttl":5}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field"));
    }

    #[test]
    fn undated_changes_is_named_in_snake_case_and_defaults_to_dated_wins() {
        let c: RulesConfig = serde_json::from_str(r#"{"undated_changes":"read_time"}"#).unwrap();
        assert_eq!(c.undated_changes, UndatedChanges::ReadTime);
        assert_eq!(
            RulesConfig::default().undated_changes,
            UndatedChanges::DatedWins
        );
        assert!(serde_json::from_str::<RulesConfig>(r#"{"undated_changes":"newest"}"#).is_err());
    }

    #[test]
    fn empty_config_takes_every_default() {
        let c: EngineConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(c, EngineConfig::default());
    }
}
