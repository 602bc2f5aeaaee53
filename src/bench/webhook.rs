//! Real Dataverse webhook bodies, as many distinct ones as the load needs.
//!
//! One event is captured from the Dataverse simulator (its exact `RemoteExecutionContext` text,
//! with the headers it was sent with); every later body is that text with the agent, the
//! presence, the row version, the presence timestamps and the operation id replaced, so each is a
//! distinct genuine change that presync neither dedupes nor drops as stale.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use anyhow::Context;
use presync_dataverse::mapping::builtin;

use super::load::{BodyFn, Target};
use crate::harness::{Harness, Options};

/// One agent as its webhook names it.
#[derive(Debug, Clone)]
pub struct Agent {
    /// `systemuserid` (the directory's Dataverse id).
    pub agent_id: String,
    /// `msdyn_agentstatusid` (the webhook's primary entity).
    pub status_id: String,
    /// The Entra object id (the directory's Teams id), to find the write it causes.
    pub aad: String,
}

/// A captured webhook and the values in it that vary by event.
#[derive(Debug)]
pub struct Template {
    text: String,
    /// The headers it was delivered with (secret, organization, content type).
    pub headers: Vec<(String, String)>,
    agent: Agent,
    presence_id: String,
    modified_ms: i64,
    row_version: i64,
    operation_id: String,
    /// `text` cut where the values that vary by event sit, so that a body is built in one pass.
    pieces: Vec<Piece>,
    /// The last presence timestamp handed out: every body is strictly newer than the one before.
    last_ms: AtomicI64,
}

/// A value of the captured webhook that differs from event to event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    RowVersion,
    /// `Date(ms)` of the presence change, in milliseconds.
    ModifiedMs,
    /// `Date(ms)` of the presence change, rounded down to the second.
    ModifiedSecs,
    StatusId,
    AgentId,
    PresenceId,
    OperationId,
}

/// A piece of the captured text: kept as it is, or a [`Slot`].
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(std::ops::Range<usize>),
    Slot(Slot),
}

/// `text` cut at every occurrence of the needles, each needle's occurrences found left to
/// right without overlap as `str::replace` finds them; where two needles match at one place,
/// the one listed first wins, and a match inside an earlier one is not a match.
fn cut(text: &str, needles: &[(String, Slot)]) -> Vec<Piece> {
    let mut found: Vec<(usize, usize, usize)> = Vec::new();
    for (rank, (needle, _)) in needles.iter().enumerate() {
        found.extend(
            text.match_indices(needle.as_str())
                .map(|(at, m)| (at, rank, at + m.len())),
        );
    }
    found.sort_unstable();
    let mut pieces = Vec::new();
    let mut done = 0;
    for (at, rank, end) in found {
        if at < done {
            continue;
        }
        if at > done {
            pieces.push(Piece::Text(done..at));
        }
        pieces.push(Piece::Slot(needles[rank].1));
        done = end;
    }
    if done < text.len() {
        pieces.push(Piece::Text(done..text.len()));
    }
    pieces
}

impl Template {
    /// Capture one event of the first representative. Call before any instance is started: the
    /// load balancer then answers 502 and the simulator keeps the delivery for us.
    pub async fn capture(h: &Harness) -> anyhow::Result<Template> {
        let rep = h.reps.first().context("no representatives")?;
        h.dv.system_sets(&rep.agent, builtin::BUSY)
            .context("the simulator lost the first agent")?;
        h.dv.wait_deliveries_idle().await;
        let delivery =
            h.dv.deliveries()
                .pop()
                .context("the Dataverse simulator sent no webhook")?;
        let row = h.dv.row(&rep.agent).context("no agent status row")?;
        // Put the agent back, so the simulator agrees with what presync will be told.
        h.dv.system_sets(&rep.agent, builtin::AVAILABLE);
        h.dv.wait_deliveries_idle().await;
        let operation_id = delivery.json()["OperationId"]
            .as_str()
            .context("no OperationId in the webhook")?
            .to_owned();
        let headers = delivery
            .headers
            .iter()
            .filter(|(k, _)| k != "host" && k != "content-length")
            .cloned()
            .collect();
        let template = Template {
            text: delivery.body,
            headers,
            agent: Agent {
                agent_id: row.agent_id,
                status_id: row.agent_status_id,
                aad: rep.aad.clone(),
            },
            presence_id: row.presence_id,
            modified_ms: row.modified_on_ms,
            row_version: row.row_version,
            operation_id,
            pieces: Vec::new(),
            last_ms: AtomicI64::new(0),
        };
        let template = Template {
            pieces: cut(&template.text, &template.needles()),
            ..template
        };
        anyhow::ensure!(
            template
                .text
                .contains(&template.row_version_field(template.row_version)),
            "the captured webhook has no RowVersion {}",
            template.row_version
        );
        Ok(template)
    }

    /// The agents of every representative, in the harness's order.
    pub fn agents(h: &Harness) -> anyhow::Result<Vec<Agent>> {
        h.reps
            .iter()
            .map(|r| {
                let row = h.dv.row(&r.agent).context("an agent has no status row")?;
                Ok(Agent {
                    agent_id: row.agent_id,
                    status_id: row.agent_status_id,
                    aad: r.aad.clone(),
                })
            })
            .collect()
    }

    fn row_version_field(&self, v: i64) -> String {
        format!("\"RowVersion\":\"{v}\"")
    }

    /// The captured values that vary by event, in the order they are replaced.
    fn needles(&self) -> [(String, Slot); 7] {
        [
            (self.row_version_field(self.row_version), Slot::RowVersion),
            (format!("Date({})", self.modified_ms), Slot::ModifiedMs),
            (
                format!("Date({})", self.modified_ms / 1000 * 1000),
                Slot::ModifiedSecs,
            ),
            (self.agent.status_id.clone(), Slot::StatusId),
            (self.agent.agent_id.clone(), Slot::AgentId),
            (self.presence_id.clone(), Slot::PresenceId),
            (self.operation_id.clone(), Slot::OperationId),
        ]
    }

    /// A body: `agent` changed to `presence_id` now, as row version `version` (which must grow
    /// per agent; a global event counter does).
    pub fn body(&self, agent: &Agent, presence_id: &str, version: i64) -> String {
        let now = presync_engine::clock::Clock::now(&presync_engine::clock::SystemClock);
        let operation = uuid::Uuid::new_v4();
        self.fill(agent, presence_id, version, self.next_ms(now), &operation)
    }

    /// The body of [`Template::body`] with its time and operation id given, built in one pass
    /// over the pieces: the load generator shares the machine with the service it measures.
    fn fill(
        &self,
        agent: &Agent,
        presence_id: &str,
        version: i64,
        ms: i64,
        operation: &uuid::Uuid,
    ) -> String {
        use std::fmt::Write;
        let mut out = String::with_capacity(self.text.len() + 64);
        for piece in &self.pieces {
            // Writing to a String cannot fail.
            let _ = match piece {
                Piece::Text(range) => {
                    out.push_str(&self.text[range.clone()]);
                    Ok(())
                }
                Piece::Slot(Slot::RowVersion) => write!(out, "\"RowVersion\":\"{version}\""),
                Piece::Slot(Slot::ModifiedMs) => write!(out, "Date({ms})"),
                Piece::Slot(Slot::ModifiedSecs) => write!(out, "Date({})", ms / 1000 * 1000),
                Piece::Slot(Slot::StatusId) => write!(out, "{}", agent.status_id),
                Piece::Slot(Slot::AgentId) => write!(out, "{}", agent.agent_id),
                Piece::Slot(Slot::PresenceId) => write!(out, "{presence_id}"),
                Piece::Slot(Slot::OperationId) => write!(out, "{}", operation.hyphenated()),
            };
        }
        out
    }

    /// `now`, or one millisecond after the last timestamp handed out if that is not older.
    fn next_ms(&self, now: i64) -> i64 {
        let mut last = self.last_ms.load(Ordering::Relaxed);
        loop {
            let next = now.max(last + 1);
            match self
                .last_ms
                .compare_exchange(last, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return next,
                Err(seen) => last = seen,
            }
        }
    }
}

/// The presence of event `seq` over `reps` agents: each pass over the agents flips them all
/// between Busy and Available, so every event is a genuine change.
pub fn flip(seq: u64, reps: usize) -> &'static str {
    if (seq / reps.max(1) as u64) % 2 == 0 {
        builtin::BUSY
    } else {
        builtin::AVAILABLE
    }
}

/// A harness, its captured webhook and its agents: what a figure needs to send webhooks.
pub struct Source {
    pub harness: Harness,
    pub template: Arc<Template>,
    pub agents: Arc<Vec<Agent>>,
}

impl Source {
    /// Start a harness with `opts` (no instance yet) and capture its webhook.
    pub async fn prepare(opts: &Options) -> anyhow::Result<Source> {
        let harness = Harness::start(opts, 1).await?;
        let template = Arc::new(Template::capture(&harness).await?);
        let agents = Arc::new(Template::agents(&harness)?);
        Ok(Source {
            harness,
            template,
            agents,
        })
    }

    /// Webhooks to the instance at `base`, with the headers the simulator sends.
    pub fn target(&self, base: &str) -> Target {
        Target {
            url: format!("{base}/webhooks/dataverse"),
            headers: self.template.headers.clone(),
        }
    }

    /// Event `seq` is agent `seq` (round the population) flipping between Busy and Available,
    /// as row version `version_base + seq`.
    pub fn flipping(&self, version_base: i64) -> BodyFn {
        let (template, agents) = (self.template.clone(), self.agents.clone());
        let n = agents.len();
        Arc::new(move |seq| {
            let agent = &agents[(seq % n as u64) as usize];
            template.body(agent, flip(seq, n), 1_000_000 + version_base + seq as i64)
        })
    }

    /// Event `seq` is agent `first + seq` going Busy (each agent once).
    pub fn busy_from(&self, first: usize) -> BodyFn {
        let (template, agents) = (self.template.clone(), self.agents.clone());
        Arc::new(move |seq| {
            let i = (first + seq as usize) % agents.len();
            template.body(&agents[i], builtin::BUSY, 2_000_000 + seq as i64)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(n: u8) -> Agent {
        Agent {
            agent_id: format!("5e000000-0000-4000-8000-0000000000{n:02x}"),
            status_id: format!("cd6a61ee-b40e-4831-b2b7-d5a3c00cfe{n:02x}"),
            aad: String::new(),
        }
    }

    /// A template over `text` captured for agent 1, presence `p-old`, at `modified_ms`.
    fn template(text: &str, modified_ms: i64) -> Template {
        let t = Template {
            text: text.to_owned(),
            headers: Vec::new(),
            agent: agent(1),
            presence_id: "p-old".into(),
            modified_ms,
            row_version: 1004427,
            operation_id: "277568de-8501-4855-a07e-5c607fa6d70d".into(),
            pieces: Vec::new(),
            last_ms: AtomicI64::new(0),
        };
        Template {
            pieces: cut(&t.text, &t.needles()),
            ..t
        }
    }

    /// What the body was before it was cut into pieces: each value replaced in turn.
    fn by_replacing(
        t: &Template,
        agent: &Agent,
        presence: &str,
        version: i64,
        ms: i64,
        op: &str,
    ) -> String {
        let mut text = t.text.clone();
        for (needle, slot) in t.needles() {
            let value = match slot {
                Slot::RowVersion => t.row_version_field(version),
                Slot::ModifiedMs => format!("Date({ms})"),
                Slot::ModifiedSecs => format!("Date({})", ms / 1000 * 1000),
                Slot::StatusId => agent.status_id.clone(),
                Slot::AgentId => agent.agent_id.clone(),
                Slot::PresenceId => presence.to_owned(),
                Slot::OperationId => op.to_owned(),
            };
            text = text.replace(&needle, &value);
        }
        text
    }

    #[test]
    fn a_body_is_the_capture_with_every_varying_value_replaced() {
        let text = r#"{"OperationId":"277568de-8501-4855-a07e-5c607fa6d70d","PrimaryEntityId":"cd6a61ee-b40e-4831-b2b7-d5a3c00cfe01","Target":{"msdyn_agentid":"5e000000-0000-4000-8000-000000000001","presence":"p-old","on":"/Date(1796283765628)/","secs":"/Date(1796283765000)/","again":"/Date(1796283765628)/","RowVersion":"1004427"},"Parent":{"Id":"cd6a61ee-b40e-4831-b2b7-d5a3c00cfe01","RowVersion":"1004427","presence":"p-old"}}"#;
        // One capture whose time is not on a second and one whose time is: then the two date
        // needles are the same text, and the first listed wins, as it did when replacing.
        for modified in [1796283765628, 1796283765000] {
            let t = template(
                &text.replace("1796283765628", &modified.to_string()),
                modified,
            );
            let op = uuid::Uuid::new_v4();
            let want = by_replacing(
                &t,
                &agent(7),
                "p-new",
                2_000_001,
                1796283799123,
                &op.hyphenated().to_string(),
            );
            assert_eq!(
                t.fill(&agent(7), "p-new", 2_000_001, 1796283799123, &op),
                want
            );
            assert!(want.contains("5e000000-0000-4000-8000-000000000007"));
            assert!(!want.contains("p-old") && !want.contains("1004427"));
        }
    }

    #[test]
    fn matches_inside_an_earlier_match_and_text_around_them_are_kept() {
        let needles = [
            ("abcd".to_owned(), Slot::AgentId),
            ("bc".to_owned(), Slot::PresenceId),
        ];
        assert_eq!(
            cut("xabcdybcz", &needles),
            vec![
                Piece::Text(0..1),
                Piece::Slot(Slot::AgentId),
                Piece::Text(5..6),
                Piece::Slot(Slot::PresenceId),
                Piece::Text(8..9),
            ]
        );
        assert_eq!(cut("", &needles), vec![]);
    }
}
