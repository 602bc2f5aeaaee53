//! Checking a played scenario: each expectation against the samples of its time, and what
//! each system showed when one failed.

use presync_engine::Availability;
use serde_json::{json, Map, Value};

use super::format::{Expect, Scenario};
use super::play::{Played, Sample, SAMPLE_EVERY};

/// One expectation checked.
#[derive(Debug)]
pub struct Checked {
    pub expect: Expect,
    /// The sample that failed it, or the first of its time when it held; `None` when no sample
    /// was taken in its time.
    pub got: Option<Sample>,
    pub passed: bool,
}

/// A scenario's outcome.
#[derive(Debug)]
pub struct Outcome {
    pub name: String,
    pub checked: Vec<Checked>,
    /// Steps a simulator refused: the day did not go as written.
    pub refused: Vec<String>,
}

/// Whether `s` shows everything `e` wants.
fn holds(e: &Expect, s: &Sample) -> bool {
    e.d365.is_none_or(|a| a == s.d365)
        && e.teams.is_none_or(|a| a == s.teams)
        && e.routable.is_none_or(|r| r == s.routable)
        && e.presync.is_none_or(|a| Some(a) == s.presync)
}

/// Check every expectation against the samples: at `at` the first sample taken then or after
/// (within two sampling intervals); from `at` to `until`, every sample between.
pub fn check(s: &Scenario, played: &Played) -> Outcome {
    let slack = SAMPLE_EVERY.as_secs_f64() * 2.0;
    let checked = s
        .expectations
        .iter()
        .map(|e| {
            let samples = s
                .rep_index(&e.rep)
                .and_then(|r| played.samples.get(&r))
                .map_or(&[][..], Vec::as_slice);
            let window: Vec<&Sample> = match e.until {
                Some(until) => samples
                    .iter()
                    .filter(|x| x.t >= e.at && x.t <= until)
                    .collect(),
                None => samples
                    .iter()
                    .find(|x| x.t >= e.at && x.t <= e.at + slack)
                    .into_iter()
                    .collect(),
            };
            let failed = window.iter().find(|x| !holds(e, x));
            Checked {
                expect: e.clone(),
                got: failed.or(window.first()).map(|x| (*x).clone()),
                passed: !window.is_empty() && failed.is_none(),
            }
        })
        .collect();
    Outcome {
        name: s.name.clone(),
        checked,
        refused: played.refused.clone(),
    }
}

fn want(e: &Expect) -> Value {
    let mut m = Map::new();
    if let Some(a) = e.d365 {
        m.insert("d365".into(), a.as_str().into());
    }
    if let Some(a) = e.teams {
        m.insert("teams".into(), a.as_str().into());
    }
    if let Some(r) = e.routable {
        m.insert("routable".into(), r.into());
    }
    if let Some(a) = e.presync {
        m.insert("presync".into(), a.as_str().into());
    }
    Value::Object(m)
}

fn got(s: &Sample) -> Value {
    json!({
        "t": (s.t * 100.0).round() / 100.0,
        "d365": s.d365.as_str(),
        "d365_presence": s.d365_name,
        "teams": s.teams.as_str(),
        "teams_presence": s.teams_pair,
        "routable": s.routable,
        "presync": s.presync.map(Availability::as_str),
    })
}

impl Outcome {
    /// Every expectation held and every step was played.
    pub fn passed(&self) -> bool {
        self.refused.is_empty() && self.checked.iter().all(|c| c.passed)
    }

    /// One JSON object: `name`, `passed`, `expectations` (each with `at`, `until`, `rep`,
    /// `want`, `got`, `passed`), and `refused_steps`.
    pub fn json(&self) -> Value {
        let expectations: Vec<Value> = self
            .checked
            .iter()
            .map(|c| {
                json!({
                    "at": c.expect.at,
                    "until": c.expect.until,
                    "rep": c.expect.rep,
                    "want": want(&c.expect),
                    "got": c.got.as_ref().map(got),
                    "passed": c.passed,
                })
            })
            .collect();
        json!({
            "name": self.name,
            "passed": self.passed(),
            "expectations": expectations,
            "refused_steps": self.refused,
        })
    }

    /// For people: one line per expectation, and what each system showed for a failed one.
    pub fn text(&self) -> String {
        let mut out = format!(
            "scenario: {}\n{}\n",
            self.name,
            if self.passed() { "PASSED" } else { "FAILED" }
        );
        for c in &self.checked {
            let e = &c.expect;
            let when = match e.until {
                Some(u) => format!("{:>6.1}-{:<6.1}s", e.at, u),
                None => format!("{:>6.1} s      ", e.at),
            };
            out.push_str(&format!(
                "  {} {when} {}: {}\n",
                if c.passed { "ok  " } else { "FAIL" },
                e.rep,
                want(e)
            ));
            if !c.passed {
                let shown = match &c.got {
                    Some(s) => format!(
                        "at {:.2} s D365 {} ({}), Teams {} ({}), routable {}, presync {}",
                        s.t,
                        s.d365,
                        s.d365_name,
                        s.teams,
                        s.teams_pair,
                        s.routable,
                        s.presync.map_or("-".to_owned(), |a| a.to_string())
                    ),
                    None => "no sample was taken in that time".to_owned(),
                };
                out.push_str(&format!("         showed {shown}\n"));
            }
        }
        for r in &self.refused {
            out.push_str(&format!("  refused {r}\n"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn scenario() -> Scenario {
        toml::from_str(
            r#"
name = "t"
reps = 1
[[expect]]
at = 1.0
until = 2.0
rep = "rep-1"
d365 = "Away"
routable = false
[[expect]]
at = 3.0
rep = "rep-1"
teams = "Available"
"#,
        )
        .unwrap()
    }

    fn sample(t: f64, d365: Availability, routable: bool) -> Sample {
        Sample {
            t,
            d365,
            d365_name: d365.to_string(),
            teams: Availability::Available,
            teams_pair: "Available/Available".into(),
            routable,
            presync: None,
        }
    }

    fn played(samples: Vec<Sample>) -> Played {
        Played {
            samples: BTreeMap::from([(0, samples)]),
            refused: Vec::new(),
        }
    }

    #[test]
    fn an_expectation_over_a_time_fails_on_any_sample_that_breaks_it() {
        let s = scenario();
        let good = played(vec![
            sample(1.0, Availability::Away, false),
            sample(1.5, Availability::Away, false),
            sample(3.01, Availability::Away, false),
        ]);
        assert!(check(&s, &good).passed());
        let bad = played(vec![
            sample(1.0, Availability::Away, false),
            sample(1.5, Availability::Available, true),
            sample(3.01, Availability::Away, false),
        ]);
        let o = check(&s, &bad);
        assert!(!o.passed());
        assert_eq!(o.checked[0].got.as_ref().unwrap().t, 1.5);
        let text = o.text();
        assert!(
            text.contains("FAIL") && text.contains("D365 Available"),
            "{text}"
        );
        assert_eq!(o.json()["expectations"][0]["passed"], false);
    }

    #[test]
    fn an_expectation_with_no_sample_in_its_time_fails() {
        let o = check(
            &scenario(),
            &played(vec![sample(0.5, Availability::Away, false)]),
        );
        assert!(!o.passed());
        assert!(o.text().contains("no sample"));
    }
}
