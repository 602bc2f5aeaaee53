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
    /// The last presence timestamp handed out: every body is strictly newer than the one before.
    last_ms: AtomicI64,
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
            last_ms: AtomicI64::new(0),
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

    /// A body: `agent` changed to `presence_id` now, as row version `version` (which must grow
    /// per agent; a global event counter does).
    pub fn body(&self, agent: &Agent, presence_id: &str, version: i64) -> String {
        let now = presync_engine::clock::Clock::now(&presync_engine::clock::SystemClock);
        let ms = self.next_ms(now);
        let old_secs = self.modified_ms / 1000 * 1000;
        self.text
            .replace(
                &self.row_version_field(self.row_version),
                &self.row_version_field(version),
            )
            .replace(
                &format!("Date({})", self.modified_ms),
                &format!("Date({ms})"),
            )
            .replace(
                &format!("Date({old_secs})"),
                &format!("Date({})", ms / 1000 * 1000),
            )
            .replace(&self.agent.status_id, &agent.status_id)
            .replace(&self.agent.agent_id, &agent.agent_id)
            .replace(&self.presence_id, presence_id)
            .replace(
                &self.operation_id,
                &uuid::Uuid::new_v4().hyphenated().to_string(),
            )
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
