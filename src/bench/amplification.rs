//! Figure 6, write amplification: a mixed run where half the representatives change in Dynamics
//! 365 and the other half in Teams, each change a genuine one (the availability flips) and spaced
//! far enough apart to be seen on its own. Every write each target received is attributed to a
//! representative: a write into the system the representative changes in is an echo written
//! back; the others, divided by the genuine changes in the other system, are the amplification.

use std::time::{Duration, Instant};

use presync_dataverse::mapping::builtin;

use super::{set_presence, Figure, Outcome, Row, Scale};
use crate::harness::{Harness, Ingress, Options, SimRep};

/// Seconds between two changes of one representative (Teams is polled every second).
const PERIOD: Duration = Duration::from_secs(5);

/// The longest keep-alive interval presync accepts (below the 300 s fade).
const KEEP_ALIVE_SECS: u64 = 299;

fn options(reps: usize) -> Options {
    let mut o = Options::new(reps);
    // Passes only when a figure asks for one.
    o.reconcile_on_start = false;
    o.ingress = Ingress::Polling { secs: 1 };
    // Keep-alive re-posts are not writes of a change: at the longest allowed interval none is
    // due during a run this short (every session presync writes is younger than that).
    o.teams_graph_toml = format!("keep_alive_after_secs = {KEEP_ALIVE_SECS}");
    o.log_level = "error".into();
    o
}

/// Representatives with an even index change in D365, the others in Teams.
fn in_d365(i: usize) -> bool {
    i % 2 == 0
}

/// Make round `round`'s change of representative `i`.
fn change(h: &Harness, i: usize, rep: &SimRep, round: usize) {
    let busy = round % 2 == 0;
    if in_d365(i) {
        let presence = if busy {
            builtin::BUSY
        } else {
            builtin::AVAILABLE
        };
        h.dv.system_sets(&rep.agent, presence);
    } else {
        let a = if busy { "Busy" } else { "Available" };
        h.graph.person_sets_preferred(&rep.aad, a, a);
    }
}

/// Writes received by each target since the given counts: (justified, echoes, not 2xx).
#[derive(Debug, Default, Clone, Copy)]
struct Writes {
    justified: usize,
    echoes: usize,
    refused: usize,
}

fn teams_writes(h: &Harness, from: usize) -> Writes {
    let mut w = Writes::default();
    for r in set_presence(&h.graph).iter().skip(from) {
        if !(200..300).contains(&r.status) {
            w.refused += 1;
            continue;
        }
        match h.reps.iter().position(|rep| r.path.contains(&rep.aad)) {
            Some(i) if in_d365(i) => w.justified += 1,
            _ => w.echoes += 1,
        }
    }
    w
}

fn dataverse_writes(h: &Harness, from: usize) -> Writes {
    let mut w = Writes::default();
    let writes =
        h.dv.requests()
            .into_iter()
            .skip(from)
            .filter(|r| r.path.ends_with("CCaaS_ModifyAgentPresence"));
    for r in writes {
        if !(200..300).contains(&r.status) {
            w.refused += 1;
            continue;
        }
        let text = format!("{:?} {:?}", r.body, r.caller);
        match h.reps.iter().position(|rep| text.contains(&rep.agent)) {
            Some(i) if !in_d365(i) => w.justified += 1,
            _ => w.echoes += 1,
        }
    }
    w
}

fn dv_write_count(h: &Harness) -> usize {
    h.dv.requests()
        .iter()
        .filter(|r| r.path.ends_with("CCaaS_ModifyAgentPresence"))
        .count()
}

/// Wait until no write has arrived for 3 s (at most 60 s).
async fn settle(h: &Harness) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = (0, 0);
    let mut quiet_since = Instant::now();
    while Instant::now() < deadline {
        let now = (set_presence(&h.graph).len(), dv_write_count(h));
        if now != last {
            last = now;
            quiet_since = Instant::now();
        } else if quiet_since.elapsed() > Duration::from_secs(3) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn row(target: &str, w: Writes, changes: usize, from: &str) -> Row {
    let ratio = w.justified as f64 / changes.max(1) as f64;
    Row {
        name: format!("Writes to {target} per genuine {from} change"),
        measured: format!("{} writes, {} echoes", w.justified, w.echoes),
        reference: format!("{changes} changes"),
        ratio: format!("{ratio:.3}"),
        goal: "1.0, no echo".into(),
        met: Some(w.justified == changes && w.echoes == 0),
    }
}

pub async fn run(scale: Scale) -> anyhow::Result<Outcome> {
    let reps = scale.pick(100, 40);
    let rounds = scale.pick(6, 2);
    let h = Harness::start(&options(reps), 1).await?;
    let instance = super::serve(&h).await?;
    // Establish the canonical state from both systems before counting.
    super::scale::reconcile(&h, &instance.url).await?;
    settle(&h).await;
    let (teams_from, dv_from) = (set_presence(&h.graph).len(), h.dv.requests().len());
    let gap = PERIOD / u32::try_from(reps).unwrap_or(u32::MAX).max(1);
    for round in 0..rounds {
        for (i, rep) in h.reps.iter().enumerate() {
            change(&h, i, rep, round);
            tokio::time::sleep(gap).await;
        }
    }
    settle(&h).await;
    instance.kill();
    let d365_changes = (0..reps).filter(|i| in_d365(*i)).count() * rounds;
    let teams_changes = reps * rounds - d365_changes;
    let teams = teams_writes(&h, teams_from);
    let dv = dataverse_writes(&h, dv_from);
    let details = format!(
        "{reps} representatives on a spawned `presync run` (SQLite, Teams polled every second, \
         Graph's and Dataverse's real limits), after one reconcile pass to establish the \
         canonical state. {rounds} rounds, one change per representative per round, evenly \
         spread over {} s: even-numbered representatives change in D365 (Busy/Available by \
         `SYSTEM`), odd-numbered ones in Teams (the person's preferred presence Busy/Available), \
         so every change flips the availability ({d365_changes} D365 and {teams_changes} Teams \
         changes). Writes are the 2xx `setPresence` and `CCaaS_ModifyAgentPresence` requests \
         the simulators received, attributed by user; an echo is a write to the system the \
         representative changed in. Keep-alive is set to its longest interval \
         ({KEEP_ALIVE_SECS} s), longer than the run, so no `setPresence` is a keep-alive \
         re-post. Not 2xx: Teams {}, Dataverse {}.",
        PERIOD.as_secs(),
        teams.refused,
        dv.refused
    );
    Ok(Outcome {
        figure: Figure::Amplification,
        rows: vec![
            row("Teams", teams, d365_changes, "D365"),
            row("Dataverse", dv, teams_changes, "Teams"),
        ],
        details,
    })
}
