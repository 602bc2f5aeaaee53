//! The scenario file: a day of a few representatives, written in TOML, with what each system
//! must show. The format is a contract: files written to it keep working.
//!
//! ```toml
//! name = "A break taken in D365 stays a break"
//! reps = 2                      # rep-1 .. rep-2
//! [d365]
//! routable = ["Available", "Busy"]   # base statuses the simulated router offers work to
//! [teams]
//! schema = "2025"               # Graph presence values: "2025", "legacy" or "mixed"
//! ingress = "polling"           # or "subscriptions"
//! [presync]                     # merged into the generated presync.toml
//! [[step]]
//! at = 4.0                      # seconds after the start
//! rep = "rep-1"
//! do = "d365.set"
//! to = "Away"
//! [[expect]]
//! at = 7.0
//! until = 13.0                  # optional: at every sample from `at` to `until`
//! rep = "rep-1"
//! d365 = "Away"                 # base status of D365's presence
//! teams = "Available"           # the Teams aggregate, read through presync's mapping
//! routable = false              # whether the simulated router would offer work
//! ```

use std::path::Path;

use presync_dataverse::mapping::builtin;
use presync_engine::Availability;
use serde::Deserialize;

/// A scenario file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// What the scenario shows, in a sentence.
    pub name: String,
    /// How many representatives: `rep-1` to `rep-N`.
    pub reps: usize,
    #[serde(default)]
    pub d365: D365,
    #[serde(default)]
    pub teams: Teams,
    /// Merged into the generated `presync.toml` (policies, `[[sync]]`, write mode...).
    #[serde(default)]
    pub presync: toml::Table,
    #[serde(default, rename = "step")]
    pub steps: Vec<Step>,
    #[serde(default, rename = "expect")]
    pub expectations: Vec<Expect>,
}

/// The simulated Dynamics 365.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct D365 {
    /// The base statuses the simulated router offers conversations to.
    #[serde(default = "default_routable")]
    pub routable: Vec<Availability>,
    /// Whether D365 keeps a presence set through `CCaaS_ModifyAgentPresence` like one the
    /// agent picked (a manual Away, DND or Offline lasts through accepts and closes), or
    /// replaces it at the next accept or close. UNCONFIRMED: true by default.
    #[serde(default = "yes")]
    pub api_presence_is_manual: bool,
    /// Whether presync's application user holds Omnichannel Supervisor, which
    /// `CCaaS_ModifyAgentPresence` requires.
    #[serde(default = "yes")]
    pub supervisor: bool,
    /// Custom presences of the org, besides the built-in ones (a hold's "In a Teams meeting").
    #[serde(default)]
    pub presences: Vec<CustomPresence>,
}

/// A custom presence (dataverse.md §2.3).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomPresence {
    /// `msdyn_presenceid`.
    pub id: String,
    /// What the agent sees.
    pub name: String,
    /// The base status routing looks at.
    pub base: Availability,
}

impl Default for D365 {
    fn default() -> Self {
        D365 {
            routable: default_routable(),
            api_presence_is_manual: true,
            supervisor: true,
            presences: Vec::new(),
        }
    }
}

fn default_routable() -> Vec<Availability> {
    vec![Availability::Available, Availability::Busy]
}

fn yes() -> bool {
    true
}

/// The simulated Microsoft Teams (Graph).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Teams {
    /// The presence values Graph answers with: `2025` (default), `legacy`, or `mixed` (every
    /// second representative legacy).
    #[serde(default)]
    pub schema: Schema,
    /// How presync learns of Teams changes: `polling` every second (default) or
    /// `subscriptions` (change notifications).
    #[serde(default)]
    pub ingress: TeamsIngress,
    /// Delegated subscription accounts, with `ingress = "subscriptions"`.
    #[serde(default)]
    pub accounts: Option<usize>,
}

/// See [`Teams::schema`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum Schema {
    #[default]
    #[serde(rename = "2025")]
    V2025,
    #[serde(rename = "legacy")]
    Legacy,
    #[serde(rename = "mixed")]
    Mixed,
}

/// See [`Teams::ingress`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TeamsIngress {
    #[default]
    Polling,
    Subscriptions,
}

/// Something a person (or D365 itself) does.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// Seconds after the start.
    pub at: f64,
    pub rep: String,
    #[serde(rename = "do")]
    pub action: Action,
    /// For `d365.set` (a presence name or id), `d365.sign_in` (the presence signed in with,
    /// Available by default) and `teams.set` (the status picked).
    #[serde(default)]
    pub to: Option<String>,
}

/// The actions of a [`Step`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Action {
    /// The agent picks a presence in D365.
    #[serde(rename = "d365.set")]
    D365Set,
    #[serde(rename = "d365.sign_in")]
    D365SignIn,
    #[serde(rename = "d365.sign_out")]
    D365SignOut,
    /// The agent accepts a conversation (D365 recalculates).
    #[serde(rename = "d365.accept")]
    D365Accept,
    /// The agent closes a conversation (D365 recalculates).
    #[serde(rename = "d365.close")]
    D365Close,
    /// The agent's browser loses D365 (Offline at once).
    #[serde(rename = "d365.disconnect")]
    D365Disconnect,
    /// And comes back (within 2.5 minutes the previous presence is restored).
    #[serde(rename = "d365.reconnect")]
    D365Reconnect,
    /// The person picks a status in Teams (their preferred presence).
    #[serde(rename = "teams.set")]
    TeamsSet,
    /// The person resets their status in Teams.
    #[serde(rename = "teams.reset")]
    TeamsReset,
    #[serde(rename = "teams.meeting_start")]
    TeamsMeetingStart,
    #[serde(rename = "teams.meeting_end")]
    TeamsMeetingEnd,
    #[serde(rename = "teams.call_start")]
    TeamsCallStart,
    #[serde(rename = "teams.call_end")]
    TeamsCallEnd,
    #[serde(rename = "teams.presenting_start")]
    TeamsPresentingStart,
    #[serde(rename = "teams.presenting_end")]
    TeamsPresentingEnd,
    #[serde(rename = "teams.sign_in")]
    TeamsSignIn,
    #[serde(rename = "teams.sign_out")]
    TeamsSignOut,
}

impl Action {
    /// The name a file writes.
    pub fn name(self) -> &'static str {
        match self {
            Action::D365Set => "d365.set",
            Action::D365SignIn => "d365.sign_in",
            Action::D365SignOut => "d365.sign_out",
            Action::D365Accept => "d365.accept",
            Action::D365Close => "d365.close",
            Action::D365Disconnect => "d365.disconnect",
            Action::D365Reconnect => "d365.reconnect",
            Action::TeamsSet => "teams.set",
            Action::TeamsReset => "teams.reset",
            Action::TeamsMeetingStart => "teams.meeting_start",
            Action::TeamsMeetingEnd => "teams.meeting_end",
            Action::TeamsCallStart => "teams.call_start",
            Action::TeamsCallEnd => "teams.call_end",
            Action::TeamsPresentingStart => "teams.presenting_start",
            Action::TeamsPresentingEnd => "teams.presenting_end",
            Action::TeamsSignIn => "teams.sign_in",
            Action::TeamsSignOut => "teams.sign_out",
        }
    }

    /// Whether the action takes `to`: required (`Some(true)`), optional, or not at all.
    fn takes_to(self) -> Option<bool> {
        match self {
            Action::D365Set | Action::TeamsSet => Some(true),
            Action::D365SignIn => Some(false),
            _ => None,
        }
    }
}

/// What the systems must show.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// Seconds after the start.
    pub at: f64,
    /// When given, the expectation must hold at every sample from `at` to `until`.
    #[serde(default)]
    pub until: Option<f64>,
    pub rep: String,
    /// The base status of D365's current presence.
    #[serde(default)]
    pub d365: Option<Availability>,
    /// The Teams aggregate, read through presync's mapping.
    #[serde(default)]
    pub teams: Option<Availability>,
    /// Whether the simulated router would offer the representative work.
    #[serde(default)]
    pub routable: Option<bool>,
    /// presync's canonical availability.
    #[serde(default)]
    pub presync: Option<Availability>,
}

/// A D365 presence a step names: a built-in by its canonical name, or a presence id.
pub fn d365_presence(to: &str) -> String {
    match to.parse::<Availability>() {
        Ok(Availability::Available) => builtin::AVAILABLE.to_owned(),
        Ok(Availability::Busy) => builtin::BUSY.to_owned(),
        Ok(Availability::DoNotDisturb) => builtin::BUSY_DND.to_owned(),
        Ok(Availability::Away) => builtin::AWAY.to_owned(),
        Ok(Availability::Offline) => builtin::OFFLINE.to_owned(),
        Err(_) => to.trim().to_ascii_lowercase(),
    }
}

/// The preferred presence a person picks in Teams for `to`: an availability name, or
/// `BeRightBack`; `Offline` is "appear offline".
pub fn teams_status(to: &str) -> Option<(&'static str, &'static str)> {
    if to.eq_ignore_ascii_case("BeRightBack") {
        return Some(("BeRightBack", "BeRightBack"));
    }
    Some(match to.parse::<Availability>().ok()? {
        Availability::Available => ("Available", "Available"),
        Availability::Busy => ("Busy", "Busy"),
        Availability::DoNotDisturb => ("DoNotDisturb", "DoNotDisturb"),
        Availability::Away => ("Away", "Away"),
        Availability::Offline => ("Offline", "OffWork"),
    })
}

impl Scenario {
    /// Read and check a scenario file: every problem at once, each with where it is.
    pub fn load(path: &Path) -> anyhow::Result<Scenario> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let scenario: Scenario =
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let problems = scenario.problems();
        anyhow::ensure!(
            problems.is_empty(),
            "{}:\n  {}",
            path.display(),
            problems.join("\n  ")
        );
        Ok(scenario)
    }

    /// Every problem of the file, with the step or expectation it is in.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if !(1..=1_000).contains(&self.reps) {
            p.push(format!("reps: {} must be 1 to 1000", self.reps));
        }
        let rep = |r: &str, at: &str, p: &mut Vec<String>| {
            if self.rep_index(r).is_none() {
                p.push(format!(
                    "{at}.rep: {r:?} is not one of rep-1 .. rep-{}",
                    self.reps
                ));
            }
        };
        for (i, s) in self.steps.iter().enumerate() {
            let at = format!("step[{i}]");
            rep(&s.rep, &at, &mut p);
            if !s.at.is_finite() || s.at < 0.0 {
                p.push(format!("{at}.at: {} must be 0 or more seconds", s.at));
            }
            match (s.action.takes_to(), &s.to) {
                (Some(true), None) => p.push(format!("{at}: {} needs `to`", s.action.name())),
                (None, Some(_)) => p.push(format!("{at}.to: {} takes no `to`", s.action.name())),
                _ => {}
            }
            if let (Action::TeamsSet, Some(to)) = (s.action, &s.to) {
                if teams_status(to).is_none() {
                    p.push(format!(
                        "{at}.to: {to:?} is not a status a person picks in Teams (Available, \
                         Busy, DoNotDisturb, BeRightBack, Away, Offline)"
                    ));
                }
            }
        }
        for (i, e) in self.expectations.iter().enumerate() {
            let at = format!("expect[{i}]");
            rep(&e.rep, &at, &mut p);
            if !e.at.is_finite() || e.at < 0.0 {
                p.push(format!("{at}.at: {} must be 0 or more seconds", e.at));
            }
            if let Some(u) = e.until {
                if !u.is_finite() || u < e.at {
                    p.push(format!("{at}.until: {u} is before at {}", e.at));
                }
            }
            if e.d365.is_none() && e.teams.is_none() && e.routable.is_none() && e.presync.is_none()
            {
                p.push(format!(
                    "{at}: expects nothing (give d365, teams, routable or presync)"
                ));
            }
        }
        if self.teams.accounts.is_some() && self.teams.ingress != TeamsIngress::Subscriptions {
            p.push("teams.accounts: only with ingress = \"subscriptions\"".to_owned());
        }
        p
    }

    /// `rep-N` (1-based) as an index.
    pub fn rep_index(&self, rep: &str) -> Option<usize> {
        let n: usize = rep.strip_prefix("rep-")?.parse().ok()?;
        (1..=self.reps).contains(&n).then(|| n - 1)
    }

    /// When the last step or expectation is due, in seconds.
    pub fn length(&self) -> f64 {
        let steps = self.steps.iter().map(|s| s.at);
        let expects = self.expectations.iter().map(|e| e.until.unwrap_or(e.at));
        steps.chain(expects).fold(0.0, f64::max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
name = "A break taken in D365 stays a break"
reps = 2
[d365]
routable = ["Available", "Busy"]
[teams]
schema = "2025"
ingress = "polling"
[presync]
[[step]]
at = 4.0
rep = "rep-1"
do = "d365.set"
to = "Away"
[[expect]]
at = 7.0
until = 13.0
rep = "rep-1"
d365 = "Away"
teams = "Available"
routable = false
"#;

    #[test]
    fn the_format_of_the_issue_reads_as_written() {
        let s: Scenario = toml::from_str(EXAMPLE).unwrap();
        assert!(s.problems().is_empty(), "{:?}", s.problems());
        assert_eq!(s.steps[0].action, Action::D365Set);
        assert_eq!(s.expectations[0].d365, Some(Availability::Away));
        assert_eq!(s.expectations[0].routable, Some(false));
        assert_eq!(s.rep_index("rep-2"), Some(1));
        assert_eq!(s.length(), 13.0);
    }

    #[test]
    fn every_problem_is_reported_with_where_it_is() {
        let text = EXAMPLE.replace("rep = \"rep-1\"\ndo", "rep = \"rep-9\"\ndo")
            + "[[step]]\nat = 1.0\nrep = \"rep-1\"\ndo = \"teams.set\"\n[[expect]]\nat = 3.0\nuntil = 2.0\nrep = \"rep-2\"\n";
        let s: Scenario = toml::from_str(&text).unwrap();
        let p = s.problems();
        assert!(p.iter().any(|m| m.starts_with("step[0].rep")), "{p:?}");
        assert!(
            p.iter()
                .any(|m| m.contains("step[1]: teams.set needs `to`")),
            "{p:?}"
        );
        assert!(p.iter().any(|m| m.starts_with("expect[1].until")), "{p:?}");
        assert!(p.iter().any(|m| m.contains("expects nothing")), "{p:?}");
    }

    #[test]
    fn an_unknown_action_or_key_is_refused() {
        let bad = EXAMPLE.replace("d365.set", "d365.nap");
        assert!(toml::from_str::<Scenario>(&bad).is_err());
        let bad = EXAMPLE.replace("reps = 2", "reps = 2\nspeed = 3");
        assert!(toml::from_str::<Scenario>(&bad).is_err());
    }

    #[test]
    fn presences_and_statuses_are_named_as_people_say_them() {
        assert_eq!(d365_presence("DoNotDisturb"), builtin::BUSY_DND);
        assert_eq!(d365_presence("away"), builtin::AWAY);
        assert_eq!(teams_status("Offline"), Some(("Offline", "OffWork")));
        assert_eq!(
            teams_status("BeRightBack"),
            Some(("BeRightBack", "BeRightBack"))
        );
        assert_eq!(teams_status("Sleeping"), None);
    }
}
