//! Playing a scenario: the simulators and one `presync run`, the steps at their times, and
//! every representative an expectation names sampled as the day goes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use presync_dataverse::mapping::{BaseStatus, Catalog, PresenceEntry};
use presync_engine::store::Store;
use presync_engine::{Availability, NativeState, RepId};
use presync_teams::mapping::{Mapping, Pair};
use presync_teams::sim::ValueSchema;
use tokio::time::Instant;

use super::format::{d365_presence, teams_status, Action, Scenario, Schema, Step, TeamsIngress};
use crate::harness::{self, Harness, Ingress, Options};

/// How often the representatives are sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(50);
/// How long the representatives may take to settle before time 0.
const SETTLE: Duration = Duration::from_secs(60);

/// What one representative showed at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Seconds after time 0.
    pub t: f64,
    pub d365: Availability,
    /// D365's presence as the agent sees it (its name).
    pub d365_name: String,
    pub teams: Availability,
    /// The Teams pair as Graph answered it.
    pub teams_pair: String,
    pub routable: bool,
    pub presync: Option<Availability>,
}

/// A scenario as it was played: the samples of each representative an expectation names, by
/// index, and the steps a simulator refused.
#[derive(Debug, Clone)]
pub struct Played {
    pub samples: BTreeMap<usize, Vec<Sample>>,
    /// Steps a simulator refused, with why.
    pub refused: Vec<String>,
}

/// The D365 presence catalog of the scenario's org: the built-in presences and its own.
fn catalog(s: &Scenario) -> Catalog {
    Catalog::builtin().with_entries(s.d365.presences.iter().map(|p| PresenceEntry {
        id: p.id.trim().to_ascii_lowercase(),
        name: p.name.clone(),
        text: p.name.clone(),
        base: base_status(p.base),
    }))
}

fn base_status(a: Availability) -> BaseStatus {
    match a {
        Availability::Available => BaseStatus::Available,
        Availability::Busy => BaseStatus::Busy,
        Availability::DoNotDisturb => BaseStatus::BusyDnd,
        Availability::Away => BaseStatus::Away,
        Availability::Offline => BaseStatus::Offline,
    }
}

fn options(s: &Scenario) -> anyhow::Result<Options> {
    let mut o = Options::new(s.reps);
    o.ingress = match s.teams.ingress {
        TeamsIngress::Polling => Ingress::Polling { secs: 1 },
        TeamsIngress::Subscriptions => Ingress::Subscriptions,
    };
    o.d365_routable = Some(s.d365.routable.clone());
    o.d365_api_presence_is_manual = Some(s.d365.api_presence_is_manual);
    o.d365_supervisor = s.d365.supervisor;
    o.teams_schema = Some(match s.teams.schema {
        Schema::V2025 => ValueSchema::V2025,
        Schema::Legacy => ValueSchema::Legacy,
        Schema::Mixed => ValueSchema::Mixed,
    });
    o.extra_toml = toml::to_string(&s.presync).context("the scenario's [presync] table")?;
    o.log_level = std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".to_owned());
    Ok(o)
}

/// Start everything, wait for time 0, play the steps and sample until the last expectation.
pub async fn play(s: &Scenario, evidence: Option<&std::path::Path>) -> anyhow::Result<Played> {
    let h = Arc::new(Harness::start(&options(s)?, 1).await?);
    let catalog = catalog(s);
    for p in &s.d365.presences {
        h.dv.add_custom_presence(PresenceEntry {
            id: p.id.trim().to_ascii_lowercase(),
            name: p.name.clone(),
            text: p.name.clone(),
            base: base_status(p.base),
        });
    }
    let instance = h.spawn(0)?;
    harness::ready(&instance.url, Duration::from_secs(60)).await?;
    let store = Store::connect(&h.database).await?;
    let watched: BTreeSet<usize> = s
        .expectations
        .iter()
        .filter_map(|e| s.rep_index(&e.rep))
        .collect();
    let all: Vec<usize> = (0..s.reps).collect();
    settle(&h, &store, &catalog, &instance.url, &all).await?;

    let t0 = Instant::now();
    let driver = {
        let (h, steps) = (h.clone(), s.steps.clone());
        let indices: Vec<usize> = steps
            .iter()
            .map(|st| s.rep_index(&st.rep).unwrap_or(0))
            .collect();
        tokio::spawn(async move {
            let mut refused = Vec::new();
            let mut order: Vec<(usize, &Step)> = indices.into_iter().zip(steps.iter()).collect();
            order.sort_by(|a, b| a.1.at.total_cmp(&b.1.at));
            for (i, (rep, step)) in order.into_iter().enumerate() {
                tokio::time::sleep_until(t0 + Duration::from_secs_f64(step.at)).await;
                if let Err(why) = act(&h, rep, step) {
                    refused.push(format!(
                        "step {} ({} {} at {} s): {why}",
                        i + 1,
                        step.action.name(),
                        step.rep,
                        step.at
                    ));
                }
            }
            refused
        })
    };
    let end = t0 + Duration::from_secs_f64(s.length()) + SAMPLE_EVERY * 2;
    let mut samples: BTreeMap<usize, Vec<Sample>> = BTreeMap::new();
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    while Instant::now() < end {
        tick.tick().await;
        let t = t0.elapsed().as_secs_f64();
        for &rep in &watched {
            let sample = sample(&h, &store, &catalog, rep, t).await?;
            samples.entry(rep).or_default().push(sample);
        }
    }
    let refused = driver.await.context("the steps' task")?;
    let played = Played { samples, refused };
    instance.kill();
    if let Some(dir) = evidence.filter(|_| !super::check::check(s, &played).passed()) {
        keep_evidence(&h, &store, s, &played, dir)
            .await
            .with_context(|| format!("keeping the evidence in {}", dir.display()))?;
    }
    store.close().await;
    Ok(played)
}

/// The service's log, its database, and for each representative with a failed expectation
/// what `presync explain` says.
async fn keep_evidence(
    h: &Harness,
    store: &Store,
    s: &Scenario,
    played: &Played,
    dir: &std::path::Path,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::copy(h.log_path(0), dir.join("presync.log"))?;
    for entry in std::fs::read_dir(h.dir.path())?.flatten() {
        let name = entry.file_name();
        if name.to_string_lossy().starts_with("presync.db") {
            std::fs::copy(entry.path(), dir.join(&name))?;
        }
    }
    let outcome = super::check::check(s, played);
    let failed: BTreeSet<&str> = outcome
        .checked
        .iter()
        .filter(|c| !c.passed)
        .map(|c| c.expect.rep.as_str())
        .collect();
    for rep in failed {
        let Some(i) = s.rep_index(rep) else { continue };
        let text = crate::reps::explain(store, &RepId(h.reps[i].id.clone()), 200).await?;
        std::fs::write(dir.join(format!("explain-{rep}.txt")), text)?;
    }
    eprintln!("presync scenario: evidence kept in {}", dir.display());
    Ok(())
}

/// Wait until every representative shows Available in D365, in Teams and in presync, and the
/// service has nothing left to do: time 0.
async fn settle(
    h: &Harness,
    store: &Store,
    catalog: &Catalog,
    url: &str,
    reps: &[usize],
) -> anyhow::Result<()> {
    let deadline = Instant::now() + SETTLE;
    loop {
        let mut waiting = None;
        for &rep in reps {
            let s = sample(h, store, catalog, rep, 0.0).await?;
            let ready = s.d365 == Availability::Available
                && s.teams == Availability::Available
                && s.presync == Some(Availability::Available);
            if !ready {
                waiting = Some((rep, s));
                break;
            }
        }
        let inbox = harness::metric_sum(url, "presync_queue_depth{queue=\"inbox\"}").await;
        let outbox = harness::metric_sum(url, "presync_queue_depth{queue=\"outbox\"}").await;
        let quiet = inbox == Some(0.0) && outbox == Some(0.0);
        match waiting {
            None if quiet => return Ok(()),
            _ if Instant::now() >= deadline => anyhow::bail!(
                "the representatives did not settle within {SETTLE:?}: {}",
                waiting.map_or("the service's queues are not empty".to_owned(), |(r, s)| {
                    format!(
                        "rep-{} shows D365 {}, Teams {}, presync {:?}",
                        r + 1,
                        s.d365,
                        s.teams,
                        s.presync
                    )
                })
            ),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// What representative `rep` shows now.
async fn sample(
    h: &Harness,
    store: &Store,
    catalog: &Catalog,
    rep: usize,
    t: f64,
) -> anyhow::Result<Sample> {
    let r = &h.reps[rep];
    let presence = h.dv.presence(&r.agent).unwrap_or_default();
    let entry = catalog.entry(&presence);
    let (a, act) = h.graph.presence(&r.aad);
    let pair = Pair::new(&a, &act).code();
    let presync = store
        .rep_view(&RepId(r.id.clone()))
        .await?
        .canonical
        .map(|p| p.availability);
    Ok(Sample {
        t,
        d365: entry.map_or(Availability::Offline, |e| e.base.availability()),
        d365_name: entry.map_or(presence.clone(), |e| e.name.clone()),
        teams: Mapping::to_canonical(&NativeState::new(pair.clone())).availability,
        teams_pair: pair,
        routable: h.dv.routable(&r.agent),
        presync,
    })
}

/// Play one step; why a simulator refused it.
fn act(h: &Harness, rep: usize, step: &Step) -> Result<(), String> {
    let r = &h.reps[rep];
    let (agent, aad) = (r.agent.as_str(), r.aad.as_str());
    let (dv, graph) = (&h.dv, &h.graph);
    let to = step.to.as_deref();
    let done = |ok: bool, why: &str| if ok { Ok(()) } else { Err(why.to_owned()) };
    match step.action {
        Action::D365Set => {
            let id = d365_presence(to.unwrap_or_default());
            done(dv.agent_sets(agent, &id).is_some(), "no such presence")
        }
        Action::D365SignIn => {
            let id = d365_presence(to.unwrap_or("Available"));
            done(dv.sign_in(agent, &id).is_some(), "no such presence")
        }
        Action::D365SignOut => done(dv.sign_out(agent).is_some(), "no such agent"),
        Action::D365Accept => dv.accept(agent).map_err(|e| e.to_string()),
        Action::D365Close => dv.close(agent).map_err(|e| e.to_string()),
        Action::D365Disconnect => dv.disconnect(agent).map_err(|e| e.to_string()),
        Action::D365Reconnect => dv.reconnect(agent).map_err(|e| e.to_string()),
        Action::TeamsSet => {
            let (a, b) = teams_status(to.unwrap_or_default()).ok_or("no such status")?;
            done(graph.person_sets_preferred(aad, a, b), "no such user")
        }
        Action::TeamsReset => done(graph.person_clears_preferred(aad), "no such user"),
        Action::TeamsMeetingStart => done(graph.person_joins_meeting(aad), "no such user"),
        Action::TeamsMeetingEnd => done(graph.person_leaves_meeting(aad), "no such user"),
        Action::TeamsCallStart => done(graph.person_joins_call(aad), "no such user"),
        Action::TeamsCallEnd => done(graph.person_leaves_call(aad), "no such user"),
        Action::TeamsPresentingStart => done(graph.person_starts_presenting(aad), "no such user"),
        Action::TeamsPresentingEnd => done(graph.person_stops_presenting(aad), "no such user"),
        Action::TeamsSignIn => done(graph.person_signs_in(aad), "no such user"),
        Action::TeamsSignOut => done(graph.person_signs_out(aad), "no such user"),
    }
}
