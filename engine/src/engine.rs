//! The pipeline: ingest -> inbox -> resolver -> outbox -> dispatcher, and the reconciler.
//!
//! [`Engine`] is cheap to clone. A service calls [`Engine::run`] with its shutdown future; tests
//! and one-shot jobs drive the steps themselves ([`Engine::resolve_pending`],
//! [`Engine::dispatch_pending`], [`Engine::reconcile`]), which makes them deterministic.

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::stream::{self, StreamExt};
use tokio::sync::{watch, Notify};
use tracing::{debug, error, info, info_span, warn, Instrument};

use crate::clock::{Clock, SystemClock};
use crate::config::EngineConfig;
use crate::connector::{Connector, ConnectorError, WriteSemantics};
use crate::dispatch::{backoff, TargetGate};
use crate::model::{Availability, ExternalId, Observation, ObservationKind, SystemId};
use crate::rules::{self, Context, RepView, Rule};
use crate::store::{
    Dialect, Enqueued, FinishedWrite, InboxRow, OutboxRow, Resolved, Store, StoreError,
    WriteClaims, WriteResult,
};
use crate::topology::{Topology, TopologyConfig, TopologyErrors};

/// The longest a reconcile pass waits before reading a system again.
const MAX_RECONCILE_RETRY_WAIT: Duration = Duration::from_secs(60);

/// Engine errors.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("invalid topology:\n{0}")]
    Topology(#[from] TopologyErrors),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("observation from unknown system {0:?}")]
    UnknownSystem(SystemId),
    /// The commit that was to store an observation did not finish (it panicked, or the
    /// engine's runtime is shutting down).
    #[error("the observation could not be stored: its commit did not finish")]
    Stopped,
}

/// `Result` with [`EngineError`].
pub type Result<T, E = EngineError> = std::result::Result<T, E>;

/// Counters of what the engine did since it started. The service exports them as metrics.
#[derive(Debug, Default)]
pub struct Stats {
    pub accepted: AtomicU64,
    /// Inbox rows given up on after `max_attempts` failures (dead letters).
    pub dead_letters: AtomicU64,
    pub duplicates: AtomicU64,
    /// Transactions that stored ingested observations (group commit: one per batch).
    pub ingest_commits: AtomicU64,
    /// Batches of inbox rows the resolver claimed (rows resolved divided by this is the mean
    /// batch).
    pub resolve_batches: AtomicU64,
    /// Times the resolver waited before a batch because webhooks were queueing for the disk
    /// (`pipeline.yield_to_ingest_ms`).
    pub resolver_yields: AtomicU64,
    /// Times the resolver began to defer to acknowledgements under overload
    /// (`pipeline.defer_for_ms`).
    pub resolver_deferrals: AtomicU64,
    /// Pauses the resolver made while it deferred.
    pub resolver_pauses: AtomicU64,
    pub writes_ok: AtomicU64,
    pub writes_failed: AtomicU64,
    pub retries: AtomicU64,
    /// Targets the reconciler found out of sync (repair writes queued).
    pub drift_found: AtomicU64,
    /// Changes the events had missed that the reconciler found and applied.
    pub missed_found: AtomicU64,
    /// End-to-end lag of confirmed writes: from the causing observation's arrival to the target's
    /// confirmation.
    pub lag: LagHistogram,
    decisions: Mutex<BTreeMap<&'static str, u64>>,
    holds: Mutex<BTreeMap<&'static str, u64>>,
    writes: Mutex<BTreeMap<(SystemId, &'static str), u64>>,
    events: Mutex<BTreeMap<(SystemId, &'static str), u64>>,
}

/// A fixed-bucket histogram of milliseconds, in the shape Prometheus exports.
#[derive(Debug, Default)]
pub struct LagHistogram {
    buckets: [AtomicU64; LAG_BUCKETS_MS.len()],
    count: AtomicU64,
    sum_ms: AtomicU64,
}

/// The upper bounds of [`LagHistogram`]'s buckets, in milliseconds (`+Inf` is implied).
pub const LAG_BUCKETS_MS: [u64; 14] = [
    5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000, 60_000, 300_000,
];

impl LagHistogram {
    /// Record one value.
    pub fn observe(&self, ms: u64) {
        if let Some(i) = LAG_BUCKETS_MS.iter().position(|b| ms <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_ms.fetch_add(ms, Ordering::Relaxed);
    }

    /// Cumulative counts per bucket bound, then the total count and the sum.
    pub fn snapshot(&self) -> (Vec<(u64, u64)>, u64, u64) {
        let mut acc = 0;
        let cumulative = LAG_BUCKETS_MS
            .iter()
            .zip(&self.buckets)
            .map(|(b, n)| {
                acc += n.load(Ordering::Relaxed);
                (*b, acc)
            })
            .collect();
        (
            cumulative,
            self.count.load(Ordering::Relaxed),
            self.sum_ms.load(Ordering::Relaxed),
        )
    }
}

impl Stats {
    /// Decisions by rule name.
    pub fn decisions(&self) -> BTreeMap<&'static str, u64> {
        self.decisions.lock().map(|d| d.clone()).unwrap_or_default()
    }

    /// Hold events (`started`, `reasserted`, `held`, `released`) by kind.
    pub fn hold_events(&self) -> BTreeMap<&'static str, u64> {
        self.holds.lock().map(|d| d.clone()).unwrap_or_default()
    }

    /// Write attempts by target and outcome (`ok`, `retry`, and the class of a refusal:
    /// `rejected`, `forbidden`, `not_signed_in`).
    pub fn writes(&self) -> BTreeMap<(SystemId, &'static str), u64> {
        self.writes.lock().map(|d| d.clone()).unwrap_or_default()
    }

    /// Observations stored by system and outcome (`event`, `reconcile`, `duplicate`).
    pub fn events(&self) -> BTreeMap<(SystemId, &'static str), u64> {
        self.events.lock().map(|d| d.clone()).unwrap_or_default()
    }

    /// Count one stored batch, under one lock.
    fn ingested(&self, observations: &[Observation], outcomes: &[Enqueued]) {
        for e in outcomes {
            match e {
                Enqueued::Accepted => self.accepted.fetch_add(1, Ordering::Relaxed),
                Enqueued::Duplicate => self.duplicates.fetch_add(1, Ordering::Relaxed),
            };
        }
        let Ok(mut d) = self.events.lock() else {
            return;
        };
        for (o, e) in observations.iter().zip(outcomes) {
            let outcome = match (e, o.kind) {
                (Enqueued::Duplicate, _) => "duplicate",
                (Enqueued::Accepted, ObservationKind::Reconcile) => "reconcile",
                (Enqueued::Accepted, ObservationKind::Event) => "event",
            };
            *d.entry((o.system.clone(), outcome)).or_default() += 1;
        }
    }

    fn wrote(&self, target: &SystemId, outcome: &'static str) {
        if let Ok(mut d) = self.writes.lock() {
            *d.entry((target.clone(), outcome)).or_default() += 1;
        }
    }

    fn decided(&self, decision: &rules::Decision) {
        if let Ok(mut d) = self.decisions.lock() {
            *d.entry(decision.rule.as_str()).or_default() += 1;
        }
        if decision.notes.is_empty() {
            return;
        }
        if let Ok(mut h) = self.holds.lock() {
            for n in decision.notes.iter().filter(|n| n.rule == Rule::Hold) {
                *h.entry(n.event).or_default() += 1;
            }
        }
    }

    fn unknown_representative(&self) {
        if let Ok(mut d) = self.decisions.lock() {
            *d.entry(Rule::UnknownRepresentative.as_str()).or_default() += 1;
        }
    }
}

#[derive(Debug)]
pub(crate) struct Inner {
    store: Store,
    connectors: BTreeMap<SystemId, Arc<dyn Connector>>,
    topology: Topology,
    config: EngineConfig,
    clock: Arc<dyn Clock>,
    instance: String,
    inbox_ready: Notify,
    outbox_ready: Notify,
    gates: BTreeMap<SystemId, TargetGate>,
    /// What presync writes to each system where it only contributes, per availability.
    natives: rules::NativeTable,
    unmapped_logged: Mutex<HashSet<(SystemId, String)>>,
    /// Targets whose writes are refused for a missing permission, with the refusal.
    forbidden: Mutex<BTreeMap<SystemId, String>>,
    /// The store's last write failed, with why; cleared when a write succeeds.
    write_failure: Mutex<Option<String>>,
    stats: Stats,
    /// Set when shutdown starts: passes stop taking new work.
    stopping: AtomicBool,
    /// Group commit of ingested observations.
    ingest: GroupCommit,
    /// The reads decisions ask for, coalesced per system.
    reads: crate::reads::Reads,
    /// A permit per batch of writes whose outcomes are not recorded yet (their write slots
    /// go back as each answer comes in): the drain takes them all.
    recording: Arc<tokio::sync::Semaphore>,
}

/// Batches of writes recording their outcomes at once, at most (in practice a handful).
const RECORDING: u32 = 1 << 20;

/// Observations waiting to be made durable, with who waits for their outcome.
type Waiting = (
    Vec<Observation>,
    tokio::sync::oneshot::Sender<Result<Vec<Enqueued>>>,
);

/// Group commit: one task, the committer, makes ingested observations durable. While it
/// commits, the observations that arrive queue up, and its next commit takes them all in one
/// transaction. On SQLite every commit is an fsync and there is one writer, so one commit per
/// webhook caps ingest at the disk's commit rate; this way a burst costs a commit per batch.
///
/// The committer goes from one commit straight to the next, with no hand-over between tasks
/// (BENCHMARKS.md has what the hand-over cost). It starts with the first ingest, on that
/// runtime, and ends when the engine is dropped (it holds the engine only while it commits).
#[derive(Debug)]
struct GroupCommit {
    queue: tokio::sync::mpsc::UnboundedSender<Waiting>,
    /// The committer's end of `queue`, until it starts.
    waiting: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<Waiting>>>,
    started: std::sync::Once,
    /// The last commit ended with observations already waiting for the next: they arrive
    /// faster than they are committed. The resolver gives way while it is set.
    queued: AtomicBool,
    /// Told when a commit ends with nothing waiting.
    calm: Notify,
    /// `Stats::accepted` when the resolver last found the inbox empty: the backlog is what was
    /// accepted since ([`Engine::backlog`]).
    caught_up_at: AtomicU64,
    /// Whether the resolver defers to acknowledgements (`pipeline.defer_for_ms`).
    deferral: Mutex<Deferral>,
}

/// The resolver's deferral to acknowledgements under overload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Deferral {
    /// It resolves as work comes, giving way only for `yield_to_ingest_ms`.
    #[default]
    Off,
    /// Since this instant, it resolves one batch per `defer_pause_ms`.
    Since(tokio::time::Instant),
    /// It deferred for as long as it may, or the webhooks stopped: it resolves at full speed
    /// until it has caught up.
    CatchingUp,
}

impl Default for GroupCommit {
    fn default() -> GroupCommit {
        let (queue, waiting) = tokio::sync::mpsc::unbounded_channel();
        GroupCommit {
            queue,
            waiting: Mutex::new(Some(waiting)),
            started: std::sync::Once::new(),
            queued: AtomicBool::new(false),
            calm: Notify::new(),
            caught_up_at: AtomicU64::new(0),
            deferral: Mutex::new(Deferral::Off),
        }
    }
}

/// The committer of [`GroupCommit`]: each commit takes everything waiting.
async fn commit_waiting(
    engine: std::sync::Weak<Inner>,
    mut waiting: tokio::sync::mpsc::UnboundedReceiver<Waiting>,
) {
    while commit_next(&engine, &mut waiting).await {}
}

/// One turn of the committer: wait for observations, commit everything waiting in one
/// transaction, and mark whether more were waiting when it ended. False once the queue or the
/// engine is gone.
async fn commit_next(
    engine: &std::sync::Weak<Inner>,
    waiting: &mut tokio::sync::mpsc::UnboundedReceiver<Waiting>,
) -> bool {
    let mut batch = Vec::new();
    if waiting.recv_many(&mut batch, usize::MAX).await == 0 {
        return false;
    }
    let Some(inner) = engine.upgrade() else {
        return false;
    };
    let engine = Engine { inner };
    // A panic fails this commit's webhooks (their senders are dropped: `Stopped`), not the
    // committer.
    let commit = std::panic::AssertUnwindSafe(engine.commit_ingest(batch));
    if futures::FutureExt::catch_unwind(commit).await.is_err() {
        error!("A commit of ingested observations panicked; its webhooks were refused");
    }
    let group = &engine.inner.ingest;
    let queued = !waiting.is_empty();
    group.queued.store(queued, Ordering::Relaxed);
    if !queued {
        group.calm.notify_waiters();
    }
    true
}

/// The presync engine. See the crate documentation.
#[derive(Debug, Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl Engine {
    pub(crate) fn from_inner(inner: Arc<Inner>) -> Engine {
        Engine { inner }
    }

    /// Read `users` of `system` soon, coalesced with the other reads asked of it
    /// ([`crate::reads`]).
    pub(crate) fn ask_read(&self, system: &SystemId, users: Vec<ExternalId>) {
        self.inner.reads.ask(&self.inner, system, users);
    }

    /// Validate the topology against the connectors and build an engine on `store`.
    pub fn new(
        store: Store,
        connectors: BTreeMap<SystemId, Arc<dyn Connector>>,
        topology: &TopologyConfig,
        config: EngineConfig,
    ) -> Result<Engine> {
        Engine::with_clock(store, connectors, topology, config, Arc::new(SystemClock))
    }

    /// [`Engine::new`] with an injected clock.
    pub fn with_clock(
        store: Store,
        connectors: BTreeMap<SystemId, Arc<dyn Connector>>,
        topology: &TopologyConfig,
        config: EngineConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Engine> {
        let topology = Topology::build(topology, &connectors)?;
        let gates = topology
            .systems()
            .map(|s| (s.clone(), TargetGate::new(config.dispatch_for(s))))
            .collect();
        let natives = connectors
            .iter()
            .filter(|(_, c)| c.capabilities().write_semantics == WriteSemantics::Contribution)
            .map(|(sys, c)| {
                let table = Availability::ALL
                    .into_iter()
                    .filter_map(|a| Some((a, c.to_native(a)?.code)))
                    .collect();
                (sys.clone(), table)
            })
            .collect();
        Ok(Engine {
            inner: Arc::new(Inner {
                store,
                connectors,
                topology,
                config,
                clock,
                instance: format!("presync-{}", uuid::Uuid::new_v4().simple()),
                inbox_ready: Notify::new(),
                outbox_ready: Notify::new(),
                gates,
                natives,
                unmapped_logged: Mutex::new(HashSet::new()),
                forbidden: Mutex::new(BTreeMap::new()),
                write_failure: Mutex::new(None),
                stats: Stats::default(),
                stopping: AtomicBool::new(false),
                ingest: GroupCommit::default(),
                reads: crate::reads::Reads::default(),
                recording: Arc::new(tokio::sync::Semaphore::new(RECORDING as usize)),
            }),
        })
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The validated topology.
    pub fn topology(&self) -> &Topology {
        &self.inner.topology
    }

    /// The configuration.
    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    /// The connector of one system.
    pub fn connector(&self, system: &SystemId) -> Option<&Arc<dyn Connector>> {
        self.inner.connectors.get(system)
    }

    /// This instance's id, as recorded in claims.
    pub fn instance_id(&self) -> &str {
        &self.inner.instance
    }

    /// What the engine did since it started.
    pub fn stats(&self) -> &Stats {
        &self.inner.stats
    }

    /// The engine's clock: ingress stamps observations with it.
    pub fn now(&self) -> i64 {
        self.inner.clock.now()
    }

    /// Store an observation durably. When this returns `Ok`, the observation will be resolved
    /// even if the process dies now: only then may a webhook be acknowledged.
    pub async fn ingest(&self, obs: Observation) -> Result<Enqueued> {
        Ok(self.ingest_batch(vec![obs]).await?.remove(0))
    }

    /// [`Engine::ingest`] for several observations in one transaction.
    pub async fn ingest_batch(&self, observations: Vec<Observation>) -> Result<Vec<Enqueued>> {
        for o in &observations {
            if self.inner.topology.capabilities(&o.system).is_none() {
                return Err(EngineError::UnknownSystem(o.system.clone()));
            }
        }
        if observations.is_empty() {
            return Ok(Vec::new());
        }
        let group = &self.inner.ingest;
        group.started.call_once(|| {
            let waiting = group
                .waiting
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take();
            if let Some(waiting) = waiting {
                tokio::spawn(commit_waiting(Arc::downgrade(&self.inner), waiting));
            }
        });
        let (done, outcome) = tokio::sync::oneshot::channel();
        // A webhook whose client hangs up drops only its wait: the commit goes on in the
        // committer, for the other webhooks in it.
        group
            .queue
            .send((observations, done))
            .map_err(|_| EngineError::Stopped)?;
        outcome.await.map_err(|_| EngineError::Stopped)?
    }

    /// Make `batch` durable in one transaction and tell each waiter its outcome. If the
    /// transaction fails, each waiter's observations are tried on their own, so that one bad
    /// request does not fail the others.
    async fn commit_ingest(&self, batch: Vec<Waiting>) {
        // The observations move into one batch; each waiter keeps its count.
        let mut all = Vec::new();
        let mut waiters = Vec::with_capacity(batch.len());
        for (obs, done) in batch {
            waiters.push((obs.len(), done));
            all.extend(obs);
        }
        let now = self.now();
        let stored = |obs: &[Observation], out: &[Enqueued]| {
            self.inner
                .stats
                .ingest_commits
                .fetch_add(1, Ordering::Relaxed);
            self.inner.stats.ingested(obs, out);
        };
        match self.inner.store.enqueue(&all, now).await {
            Ok(out) => {
                self.store_wrote();
                stored(&all, &out);
                let mut rest = out.into_iter();
                for (n, done) in waiters {
                    let _ = done.send(Ok(rest.by_ref().take(n).collect()));
                }
            }
            Err(e) if waiters.len() == 1 => {
                self.store_failed(&e);
                if let Some((_, done)) = waiters.pop() {
                    let _ = done.send(Err(e.into()));
                }
            }
            Err(_) => {
                let mut from = 0;
                for (n, done) in waiters {
                    let obs = &all[from..from + n];
                    from += n;
                    let one = self.inner.store.enqueue(obs, now).await;
                    match &one {
                        Ok(out) => {
                            self.store_wrote();
                            stored(obs, out);
                        }
                        Err(e) => self.store_failed(e),
                    }
                    let _ = done.send(one.map_err(EngineError::from));
                }
            }
        }
        self.inner.inbox_ready.notify_one();
    }

    /// Under overload, pause before the next batch (`pipeline.defer_for_ms`, see there). True
    /// when it paused.
    async fn defer_to_ingest(&self) -> bool {
        let cfg = &self.inner.config.pipeline;
        if cfg.defer_for_ms == 0 {
            return false;
        }
        let group = &self.inner.ingest;
        let stats = &self.inner.stats;
        let budget = Duration::from_millis(cfg.defer_for_ms);
        let deferral = || {
            group
                .deferral
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        };
        let since = {
            let mut deferral = deferral();
            match *deferral {
                Deferral::Off
                    if group.queued.load(Ordering::Relaxed)
                        && self.backlog() >= cfg.defer_backlog =>
                {
                    let now = tokio::time::Instant::now();
                    *deferral = Deferral::Since(now);
                    stats.resolver_deferrals.fetch_add(1, Ordering::Relaxed);
                    debug!("Webhooks queue with a backlog: the resolver defers to them");
                    now
                }
                Deferral::Since(since) if since.elapsed() < budget => since,
                Deferral::Since(_) => {
                    *deferral = Deferral::CatchingUp;
                    return false;
                }
                Deferral::Off | Deferral::CatchingUp => return false,
            }
        };
        let commits = stats.ingest_commits.load(Ordering::Relaxed);
        let pause =
            Duration::from_millis(cfg.defer_pause_ms).min(budget.saturating_sub(since.elapsed()));
        tokio::time::sleep(pause).await;
        stats.resolver_pauses.fetch_add(1, Ordering::Relaxed);
        if stats.ingest_commits.load(Ordering::Relaxed) == commits {
            // The webhooks stopped: catch up now.
            let mut deferral = deferral();
            if *deferral == Deferral::Since(since) {
                *deferral = Deferral::CatchingUp;
            }
        }
        true
    }

    /// Observations accepted since the resolver last found the inbox empty.
    fn backlog(&self) -> u64 {
        let accepted = self.inner.stats.accepted.load(Ordering::Relaxed);
        accepted.saturating_sub(self.inner.ingest.caught_up_at.load(Ordering::Relaxed))
    }

    /// The resolver found less than a batch waiting: the backlog is resolved, and the
    /// resolver may defer again.
    fn caught_up(&self) {
        let group = &self.inner.ingest;
        let accepted = self.inner.stats.accepted.load(Ordering::Relaxed);
        group.caught_up_at.store(accepted, Ordering::Relaxed);
        *group
            .deferral
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Deferral::Off;
    }

    /// While webhooks queue for the disk, wait until they stop queueing, at most
    /// `pipeline.yield_to_ingest_ms` (see there why).
    async fn yield_to_ingest(&self) {
        let max = self.inner.config.pipeline.yield_to_ingest_ms;
        let group = &self.inner.ingest;
        if max == 0 || !group.queued.load(Ordering::Relaxed) {
            return;
        }
        let calm = group.calm.notified();
        tokio::pin!(calm);
        // Registered before the second look: a commit that ends between the two wakes it.
        calm.as_mut().enable();
        if !group.queued.load(Ordering::Relaxed) {
            return;
        }
        self.inner
            .stats
            .resolver_yields
            .fetch_add(1, Ordering::Relaxed);
        let _ = tokio::time::timeout(Duration::from_millis(max), calm).await;
    }

    /// Take over claims left by a crashed predecessor. Only on SQLite, whose store one instance
    /// owns; on PostgreSQL claims pass to other instances when their lease runs out.
    pub async fn recover(&self) -> Result<()> {
        if self.inner.store.dialect() == Dialect::Sqlite {
            self.inner.store.release_all_claims().await?;
        }
        Ok(())
    }

    fn stopping(&self) -> bool {
        self.inner.stopping.load(Ordering::Relaxed)
    }

    /// Resolve every inbox row due now. Returns how many were processed. A row that fails is
    /// given back with backoff, and after `max_attempts` failures recorded as a dead letter; it
    /// never holds up the others.
    ///
    /// Each batch is claimed and resolved in one transaction ([`Store::claim_and_resolve`]): on
    /// SQLite one commit, and so one fsync, per batch instead of one per row, and none for the
    /// claim alone. When that fails, the batch is claimed on its own and resolved in one
    /// transaction ([`Store::resolve_batch`]), and when that fails too, its rows one by one, each
    /// in its own.
    pub async fn resolve_pending(&self) -> Result<usize> {
        self.resolve_batches(false).await
    }

    /// [`Engine::resolve_pending`], and each batch's transaction also claims the writes it
    /// decided, within each target's limits, and starts them as soon as it commits, with no
    /// claim of the dispatcher's, and its commit, before they go on the wire
    /// (`pipeline.write_on_resolve`). The writes run in tasks of their own; what the limits
    /// leave, the dispatcher claims. The running service's resolver.
    pub async fn resolve_and_write(&self) -> Result<usize> {
        self.resolve_batches(true).await
    }

    async fn resolve_batches(&self, write: bool) -> Result<usize> {
        let cfg = &self.inner.config.pipeline;
        let mut total = 0;
        while !self.stopping() {
            if !self.defer_to_ingest().await {
                self.yield_to_ingest().await;
            }
            let now = self.now();
            // The writes' slots and tokens, taken as the transaction asks for each target.
            let mut reserved: BTreeMap<SystemId, crate::dispatch::Reserved> = BTreeMap::new();
            // A target's writes were left to the dispatcher: no slot or token was free.
            let mut left = false;
            let mut allow = |target: &SystemId| -> i64 {
                let Some(r) = self.inner.gates.get(target).and_then(|g| g.reserve(now)) else {
                    left = true;
                    return 0;
                };
                let n = r.len() as i64;
                reserved.insert(target.clone(), r);
                n
            };
            let claims = write.then(|| WriteClaims {
                allow: &mut allow,
                echo_ttl: self.inner.config.rules.echo_ttl_ms,
            });
            // Claim and resolve in one transaction (one commit); when that cannot be done (a
            // row cannot be read, or the batch's resolve fails), in two steps, where each bad
            // row is dealt with alone.
            let together = self
                .inner
                .store
                .claim_resolve_and_begin_writes(
                    &self.inner.instance,
                    now,
                    now + cfg.lease_ms,
                    cfg.batch,
                    |row, _, view| self.decide(&row.observation, view, now),
                    claims,
                )
                .await;
            let (n, queued) = match together {
                Ok(Some((resolved, begun))) => {
                    let n = resolved.len();
                    let queued = self.report(resolved);
                    let all = self.start_writes(begun, &mut reserved);
                    (n, queued && (left || !all || !write))
                }
                failed => {
                    if let Err(e) = failed {
                        warn!(error = %e, "Claim-and-resolve failed; claiming and resolving in two steps");
                    }
                    self.resolve_in_two_steps(now).await?.unwrap_or((0, false))
                }
            };
            // Slots and tokens of targets where nothing was claimed go back.
            for (target, mut r) in std::mem::take(&mut reserved) {
                if let Some(gate) = self.inner.gates.get(&target) {
                    r.keep(gate, 0);
                }
            }
            // Less than a batch was waiting: the resolver has caught up.
            if (n as i64) < cfg.batch {
                self.caught_up();
            }
            if n == 0 {
                break;
            }
            total += n;
            self.inner
                .stats
                .resolve_batches
                .fetch_add(1, Ordering::Relaxed);
            // Wake the dispatcher per batch: under steady load the inbox is never empty, and
            // writes decided now must not wait for it to be.
            if queued {
                self.inner.outbox_ready.notify_one();
            }
        }
        Ok(total)
    }

    /// Start the writes a resolve claimed, each target's in a task of its own holding its
    /// slots; the slots and tokens left over go back. True when every claim took all the
    /// writes it was allowed to and fewer than that were due: nothing is left for the
    /// dispatcher, which is then not woken.
    fn start_writes(
        &self,
        begun: crate::store::ClaimedWrites,
        reserved: &mut BTreeMap<SystemId, crate::dispatch::Reserved>,
    ) -> bool {
        let mut all = true;
        for (target, rows) in begun {
            let (Some(mut r), Some(gate)) =
                (reserved.remove(&target), self.inner.gates.get(&target))
            else {
                continue;
            };
            // A claim that took every write it was allowed may have left more behind.
            all &= rows.len() < r.len();
            r.keep(gate, rows.len());
            tokio::spawn(self.clone().write_claimed(target, rows, r));
        }
        all
    }

    /// Claim a batch, then resolve it ([`Engine::resolve_rows`]); a row that cannot be read is
    /// given back. `None` when nothing is due; else how many rows were claimed and whether
    /// writes were queued.
    async fn resolve_in_two_steps(&self, now: i64) -> Result<Option<(usize, bool)>> {
        let cfg = &self.inner.config.pipeline;
        let claimed = self
            .inner
            .store
            .claim_inbox(&self.inner.instance, now, now + cfg.lease_ms, cfg.batch)
            .await?;
        if claimed.is_empty() {
            return Ok(None);
        }
        let n = claimed.len();
        let mut rows = Vec::with_capacity(n);
        for row in claimed {
            match row {
                Ok(row) => rows.push(row),
                Err(bad) => {
                    self.give_back(bad.id, bad.attempts, &bad.error.to_string())
                        .await?
                }
            }
        }
        Ok(Some((n, self.resolve_rows(&rows).await?)))
    }

    /// Log and count what was resolved, and start the reads the decisions asked for. True when
    /// writes were queued.
    fn report<R: std::borrow::Borrow<InboxRow>>(
        &self,
        resolved: impl IntoIterator<Item = (R, Resolved)>,
    ) -> bool {
        let mut queued = false;
        let mut reads: BTreeMap<SystemId, Vec<ExternalId>> = BTreeMap::new();
        for (row, r) in resolved {
            if let Resolved::Decided { decision, .. } = &r {
                for (system, user) in &decision.refresh {
                    reads.entry(system.clone()).or_default().push(user.clone());
                }
            }
            queued |= self.resolved(&row.borrow().observation, r);
        }
        for (system, users) in reads {
            self.ask_read(&system, users);
        }
        queued
    }

    /// Read `users` of `system` now and feed what they show into the inbox: a read the rules
    /// asked for (what a held system's automation gives after a hold), or the confirmation of
    /// what a system shows once presync lowered or withdrew its contribution there. A failed
    /// read is logged; the reconciler reads everyone at its next pass.
    pub(crate) async fn read_back(&self, system: &SystemId, users: Vec<ExternalId>, why: &str) {
        let n = users.len();
        if let Err(e) = self.try_read_back(system, users, why).await {
            warn!(system = %system, users = n, error = %e, why, "Read-back failed; the next reconcile pass reads them");
        }
    }

    /// [`Engine::read_back`], with the read's failure returned (the reads decisions ask for
    /// are tried again: [`crate::reads`]).
    pub(crate) async fn try_read_back(
        &self,
        system: &SystemId,
        users: Vec<ExternalId>,
        why: &str,
    ) -> std::result::Result<(), ConnectorError> {
        let caps = self.inner.topology.capabilities(system);
        let Some(connector) = self
            .inner
            .connectors
            .get(system)
            .filter(|_| caps.is_some_and(|c| c.bulk_read))
        else {
            return Ok(());
        };
        let read_at = self.now();
        let states = connector.read_all(&users).await?;
        let wanted: HashSet<String> = users
            .iter()
            .map(|u| u.as_str().to_ascii_lowercase())
            .collect();
        let now = self.now();
        let observations: Vec<Observation> = states
            .into_iter()
            .filter(|s| wanted.contains(&s.external_id.as_str().to_ascii_lowercase()))
            .map(|s| Observation {
                system: system.clone(),
                delivery_key: format!(
                    "{why}:{system}:{}:{}",
                    s.external_id,
                    uuid::Uuid::new_v4().simple()
                ),
                external_id: s.external_id,
                native: s.native,
                // A snapshot, as a reconcile's read: an undated state holds from the read's
                // start (a write that landed later is newer), and a change it shows happened at
                // some moment since presync last saw the system, which a dated change made
                // since is not beaten by (`engine.rules.undated_changes`).
                kind: ObservationKind::Reconcile,
                source_time: s.source_time.unwrap_or(read_at),
                sequence: s.sequence,
                origin: s.origin,
                observed_at: now,
                changed_by: None,
                automatic: s.automatic,
            })
            .collect();
        if observations.is_empty() {
            return Ok(());
        }
        match self.ingest_batch(observations).await {
            Ok(_) => self.inner.inbox_ready.notify_one(),
            Err(e) => {
                warn!(system = %system, error = %e, why, "Storing a read-back failed; the next reconcile pass reads them")
            }
        }
        Ok(())
    }

    /// Resolve claimed rows, as one batch when possible. True when writes were queued.
    async fn resolve_rows(&self, rows: &[InboxRow]) -> Result<bool> {
        if rows.is_empty() {
            return Ok(false);
        }
        let now = self.now();
        let batch = self
            .inner
            .store
            .resolve_batch(rows, &self.inner.instance, now, |row, _, view| {
                self.decide(&row.observation, view, now)
            })
            .await;
        let results = match batch {
            Ok(results) => results,
            Err(e) => {
                warn!(rows = rows.len(), error = %e, "Batch resolve failed; resolving its rows one by one");
                let mut queued = false;
                for row in rows {
                    match self.resolve_row(row).await {
                        Ok(q) => queued |= q,
                        Err(e) => self.give_back(row.id, row.attempts, &e.to_string()).await?,
                    }
                }
                return Ok(queued);
            }
        };
        Ok(self.report(rows.iter().zip(results)))
    }

    async fn give_back(&self, id: i64, attempts: i64, failure: &str) -> Result<()> {
        let cfg = &self.inner.config;
        let now = self.now();
        if attempts >= cfg.pipeline.max_attempts {
            self.inner
                .stats
                .dead_letters
                .fetch_add(1, Ordering::Relaxed);
            error!(inbox_id = id, attempts, error = %failure, "Observation given up after repeated failures");
            self.inner
                .store
                .fail_inbox(id, &self.inner.instance, now, None, failure)
                .await?;
        } else {
            let wait = backoff(&cfg.dispatch_default, attempts);
            warn!(inbox_id = id, attempts, error = %failure, retry_in_ms = wait.as_millis() as u64, "Observation failed, will retry");
            let at = now.saturating_add(i64::try_from(wait.as_millis()).unwrap_or(i64::MAX));
            self.inner
                .store
                .fail_inbox(id, &self.inner.instance, now, Some(at), failure)
                .await?;
        }
        Ok(())
    }

    /// Resolve one claimed row in its own transaction. True when writes were queued.
    async fn resolve_row(&self, row: &InboxRow) -> Result<bool> {
        let obs = &row.observation;
        let now = self.now();
        let resolved = self
            .inner
            .store
            .resolve(row, &self.inner.instance, now, |_, view| {
                self.decide(obs, view, now)
            })
            .await?;
        Ok(self.resolved(obs, resolved))
    }

    /// The rules' decision on `obs` for a representative in the state `view`.
    fn decide(&self, obs: &Observation, view: &RepView, now: i64) -> rules::Decision {
        // Resolved each time: a hold's presence may be a custom one that the connector's
        // catalog learns after start. (A map lookup per hold.)
        let (holds, _) = self.holds();
        let context = Context {
            holds: &holds,
            natives: &self.inner.natives,
            ..Context::new(&self.inner.topology, &self.inner.config.rules, now)
        };
        rules::decide(obs, self.map(obs), view, context)
    }

    /// The configured holds resolved against the connectors, and every problem with them (see
    /// [`rules::holds::resolve`]). A service checks the problems before it starts.
    pub fn holds(&self) -> (Vec<rules::ResolvedHold>, Vec<String>) {
        let rules = &self.inner.config.rules;
        rules::holds::resolve(&rules.policies.hold, &self.inner.connectors, rules)
    }

    /// Count and log what resolving `obs` did. True when writes were queued.
    fn resolved(&self, obs: &Observation, resolved: Resolved) -> bool {
        // Events, not a span: a span per row would cost on the resolver's path even when
        // nothing is logged at debug.
        let (system, user, key) = (&obs.system, &obs.external_id, &obs.delivery_key);
        match resolved {
            Resolved::LostClaim => {
                debug!(%system, %user, %key, "Claim passed to another instance");
                false
            }
            Resolved::UnknownRepresentative => {
                self.inner.stats.unknown_representative();
                debug!(%system, %user, %key, "Observation for a user not in the directory");
                false
            }
            Resolved::Decided { rep, decision } => {
                self.inner.stats.decided(&decision);
                debug!(%system, %user, %key, rep = %rep, rule = decision.rule.as_str(),
                    outcome = decision.outcome.as_str(), detail = %decision.detail, "Resolved");
                !decision.write_targets().is_empty()
            }
        }
    }

    /// The observation's canonical availability: the connector's mapping, then `remap`.
    fn map(&self, obs: &Observation) -> Availability {
        let mapped = match self.inner.connectors.get(&obs.system) {
            Some(c) => c.to_canonical(&obs.native),
            None => crate::connector::Mapped {
                availability: Availability::Offline,
                known: false,
            },
        };
        if !mapped.known {
            let key = (obs.system.clone(), obs.native.code.clone());
            let first = self
                .inner
                .unmapped_logged
                .lock()
                .map(|mut s| s.insert(key))
                .unwrap_or(false);
            if first {
                warn!(system = %obs.system, native = %obs.native.code, mapped = %mapped.availability,
                    "Unmapped native state, treated as not available");
            }
        }
        rules::remap(&self.inner.config.rules, obs, mapped.availability)
    }

    /// Make every outbox write due now, within each target's limits. Returns how many writes
    /// were attempted. Stops early for a target that is throttled or out of tokens.
    pub async fn dispatch_pending(&self) -> Result<usize> {
        let mut total = 0;
        let targets: Vec<SystemId> = self
            .inner
            .topology
            .systems()
            .filter(|s| self.inner.topology.capabilities(s).is_some_and(|c| c.write))
            .cloned()
            .collect();
        // Targets are independent: a slow one must not hold up the others.
        let passes =
            futures::future::join_all(targets.iter().map(|t| self.dispatch_target(t))).await;
        for n in passes {
            total += n?;
        }
        Ok(total)
    }

    async fn dispatch_target(&self, target: &SystemId) -> Result<usize> {
        let Some(gate) = self.inner.gates.get(target) else {
            return Ok(0);
        };
        let lease = self.inner.config.pipeline.lease_ms;
        let mut total = 0;
        while !self.stopping() {
            let now = self.now();
            // Write slots and tokens, taken once the claim has its turn: not held while the
            // resolver's transaction, which may claim writes itself, goes first.
            let mut reservation = None;
            let claimed = self
                .inner
                .store
                .claim_writes_within(
                    target,
                    &self.inner.instance,
                    now,
                    now + lease,
                    || {
                        reservation = gate.reserve(now);
                        reservation.as_ref().map_or(0, |r| r.len() as i64)
                    },
                    self.inner.config.rules.echo_ttl_ms,
                )
                .await;
            // Out of tokens, or every write slot taken (by the resolver's writes too: they
            // wake this loop when they end).
            let Some(mut reserved) = reservation else {
                claimed?;
                break;
            };
            let begun = match claimed {
                Ok(begun) => begun,
                Err(e) => {
                    reserved.keep(gate, 0);
                    return Err(e.into());
                }
            };
            reserved.keep(gate, begun.len());
            if begun.is_empty() {
                break;
            }
            total += begun.len();
            let confirm = self.write_and_record(target, begun, &mut reserved).await;
            drop(reserved);
            confirm.read(self).await;
        }
        Ok(total)
    }

    /// Make claimed writes, all at once (their claim took a write slot each), and record how
    /// they ended. The outcomes are recorded together once the writes have ended (each is
    /// bounded by the write timeout), in one commit: the next claim waits for them anyway, and
    /// a commit per few outcomes took the connection from the claims and commits on the way
    /// of the next changes (p99 at 1,000 events/s 38 -> 22-26 ms).
    ///
    /// Each write's slot goes back as soon as its answer is in: a slow answer must not hold the
    /// slots of the writes begun with it (in the soak, one two-second answer kept every write
    /// to D365 waiting, a representative's break among them, while the router offered work).
    /// The drain waits for the records through [`Inner::recording`].
    async fn write_and_record(
        &self,
        target: &SystemId,
        begun: Vec<(OutboxRow, Option<i64>)>,
        reserved: &mut crate::dispatch::Reserved,
    ) -> Confirm {
        let n = begun.len().max(1);
        let recording = self.inner.recording.clone().acquire_owned().await;
        let slots: Vec<Option<tokio::sync::OwnedSemaphorePermit>> =
            begun.iter().map(|_| reserved.permit.split(1)).collect();
        let gate = self.inner.gates.get(target);
        let finished: Vec<FinishedWrite> = stream::iter(begun.into_iter().zip(slots))
            .map(|((row, expectation), slot)| async move {
                let done = self.write_one(row, expectation).await;
                if slot.is_some() {
                    drop(slot);
                    // A write left for want of a slot can go now.
                    if gate.is_some_and(TargetGate::take_refused) {
                        self.inner.outbox_ready.notify_one();
                    }
                }
                done
            })
            .buffer_unordered(n)
            .collect()
            .await;
        self.record_writes(&finished).await;
        drop(recording);
        self.to_confirm(&finished)
    }

    /// The users of a system where presync's write layers over the person's own state whose
    /// write may have lowered or withdrawn presync's part: what the system shows may be the
    /// person's own state now, and presync reads it at once ([`Confirm::read`]), so that a
    /// change of theirs a moment later is told from the effect of presync's write.
    fn to_confirm(&self, finished: &[FinishedWrite]) -> Confirm {
        let mut confirm = Confirm::default();
        for w in finished {
            let layered = self
                .inner
                .topology
                .capabilities(&w.row.target)
                .is_some_and(|c| c.write_semantics.layers_over_the_person() && c.bulk_read);
            // Nothing ranks above Do not disturb: writing it lowers nothing.
            let may_lower = w.row.desired.availability() != Some(Availability::DoNotDisturb);
            if layered && may_lower && matches!(w.result, WriteResult::Done) {
                confirm.target = Some(w.row.target.clone());
                confirm.users.push(w.row.external_id.clone());
            }
        }
        confirm
    }

    /// Make writes to `target` the resolver claimed ([`Engine::resolve_and_write`]) and record
    /// how they ended; then give their write slots back, and wake the dispatcher if a claim
    /// found every slot of the target taken meanwhile (the dispatcher's, when the resolver
    /// left it writes: it woke it then).
    async fn write_claimed(
        self,
        target: SystemId,
        begun: Vec<(OutboxRow, Option<i64>)>,
        reserved: crate::dispatch::Reserved,
    ) {
        let mut reserved = reserved;
        let confirm = self.write_and_record(&target, begun, &mut reserved).await;
        drop(reserved);
        confirm.read(&self).await;
        if self
            .inner
            .gates
            .get(&target)
            .is_some_and(TargetGate::take_refused)
        {
            self.inner.outbox_ready.notify_one();
        }
    }

    /// Make one claimed write, its echo expectation already recorded.
    async fn write_one(&self, row: OutboxRow, expectation: Option<i64>) -> FinishedWrite {
        let span =
            info_span!("dispatch", rep = %row.rep_id, target = %row.target, version = row.version);
        async {
            let outcome = match self.inner.connectors.get(&row.target) {
                // A bounded write: one that outlived its claim could land after a newer one.
                Some(connector) => match tokio::time::timeout(
                    self.write_timeout(),
                    connector.write(&row.external_id, &row.desired),
                )
                .await
                {
                    Ok(outcome) => outcome,
                    Err(_) => Err(ConnectorError::unknown_outcome("write timed out")),
                },
                None => Err(ConnectorError::Rejected {
                    message: format!("no connector for {}", row.target),
                }),
            };
            let now = self.now();
            let result = match outcome {
                Ok(()) => {
                    let stats = &self.inner.stats;
                    stats.writes_ok.fetch_add(1, Ordering::Relaxed);
                    stats.wrote(&row.target, "ok");
                    self.writable(&row.target);
                    let lag = now.saturating_sub(row.origin_observed_at);
                    stats.lag.observe(u64::try_from(lag).unwrap_or(0));
                    debug!(lag_ms = lag, "Written");
                    WriteResult::Done
                }
                Err(e) => self.failed(&row, &e, now),
            };
            FinishedWrite {
                row,
                expectation,
                at: now,
                result,
            }
        }
        .instrument(span)
        .await
    }

    /// Record how writes ended, in one transaction; when that fails, one by one, so that only
    /// the write whose record fails stays claimed, to be made again when its claim runs out
    /// (the same as a crash mid-write).
    async fn record_writes(&self, writes: &[FinishedWrite]) {
        let topology = &self.inner.topology;
        let untimed = |t: &SystemId| {
            topology
                .capabilities(t)
                .is_some_and(|c| !c.source_timestamps)
        };
        let store = &self.inner.store;
        let instance = &self.inner.instance;
        let failed: Vec<(&FinishedWrite, StoreError)> = match store
            .finish_writes(writes, instance, untimed)
            .await
        {
            Ok(()) => return,
            Err(e) if writes.len() == 1 => vec![(&writes[0], e)],
            Err(e) => {
                warn!(writes = writes.len(), error = %e, "Recording a batch of write outcomes failed; recording them one by one");
                let mut failed = Vec::new();
                for w in writes {
                    let one = std::slice::from_ref(w);
                    if let Err(e) = store.finish_writes(one, instance, untimed).await {
                        failed.push((w, e));
                    }
                }
                failed
            }
        };
        for (w, e) in failed {
            error!(rep = %w.row.rep_id, target = %w.row.target, error = %e,
                "Recording a write's outcome failed; it is made again when its claim runs out");
        }
    }

    /// Half the claim lease: a write never outlives its claim.
    fn write_timeout(&self) -> Duration {
        Duration::from_millis(
            u64::try_from(self.inner.config.pipeline.lease_ms / 2)
                .unwrap_or(1)
                .max(1),
        )
    }

    fn failed(&self, row: &OutboxRow, e: &ConnectorError, now: i64) -> WriteResult {
        let cfg = self.inner.config.dispatch_for(&row.target);
        let wait = match e.retry_after() {
            Some(d) => {
                if let Some(gate) = self.inner.gates.get(&row.target) {
                    gate.pause(d, now);
                }
                d
            }
            None => backoff(cfg, row.attempts),
        };
        let permanent = !e.is_transient();
        if permanent {
            self.inner
                .stats
                .writes_failed
                .fetch_add(1, Ordering::Relaxed);
            self.inner.stats.wrote(&row.target, e.class());
            match e {
                ConnectorError::NotSignedIn { .. } => {
                    debug!(error = %e, "Not written: the user is not signed in there")
                }
                ConnectorError::Forbidden { remedy, .. } => self.forbidden(&row.target, e, remedy),
                _ => {
                    error!(error = %e, "Write rejected; the target stays out of sync until the next change or reconcile")
                }
            }
        } else {
            self.inner.stats.retries.fetch_add(1, Ordering::Relaxed);
            self.inner.stats.wrote(&row.target, "retry");
            warn!(error = %e, class = e.class(), retry_in_ms = wait.as_millis() as u64, "Write failed, will retry");
        }
        WriteResult::Failed {
            permanent,
            outcome_unknown: e.outcome_unknown(),
            retry_at: now.saturating_add(i64::try_from(wait.as_millis()).unwrap_or(i64::MAX)),
            class: e.class().to_owned(),
            message: e.to_string(),
        }
    }

    /// A write to `target` was refused for a permission presync lacks: a configuration problem
    /// no retry mends. One ERROR per target says what to grant; [`Engine::degraded`] reports it
    /// until a write there succeeds.
    fn forbidden(&self, target: &SystemId, e: &ConnectorError, remedy: &str) {
        let first = self
            .inner
            .forbidden
            .lock()
            .map(|mut f| f.insert(target.clone(), e.to_string()).is_none())
            .unwrap_or(false);
        if first {
            error!(target = %target, error = %e, remedy, "Writes are refused for a permission presync lacks: none will land until it is granted");
        } else {
            debug!(target = %target, error = %e, "Write refused for a permission presync lacks");
        }
    }

    /// A write to `target` succeeded: it is not refused for a missing permission (any more).
    fn writable(&self, target: &SystemId) {
        let was = self
            .inner
            .forbidden
            .lock()
            .map(|mut f| f.remove(target))
            .unwrap_or(None);
        if was.is_some() {
            info!(target = %target, "Writes land again: the missing permission was granted");
        }
    }

    /// Targets whose writes are refused for a permission presync lacks, with the last refusal:
    /// what `/readyz` reports as degraded.
    /// Whether the store can write: `Err` with why while its writes fail. After a failure the
    /// store is probed ([`Store::probe_write`]) each time this is asked, so that an instance
    /// nobody sends work to (a load balancer took it out) is seen to recover.
    pub async fn store_can_write(&self) -> std::result::Result<(), String> {
        if self.write_failure().is_none() {
            return Ok(());
        }
        match self.inner.store.probe_write().await {
            Ok(()) => {
                self.store_wrote();
                Ok(())
            }
            Err(e) => {
                let why = with_causes(&e);
                self.store_failed(&e);
                Err(why)
            }
        }
    }

    fn write_failure(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.inner
            .write_failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn store_failed(&self, e: &dyn std::error::Error) {
        *self.write_failure() = Some(with_causes(e));
    }

    fn store_wrote(&self) {
        let mut failure = self.write_failure();
        if failure.take().is_some() {
            info!("The store writes again");
        }
    }

    pub fn degraded(&self) -> BTreeMap<SystemId, String> {
        self.inner
            .forbidden
            .lock()
            .map(|f| f.clone())
            .unwrap_or_default()
    }

    /// Read every user of `system` for a reconcile pass, with the read's start (the date a
    /// read holds from: a system without timestamps gets it, never a later one that could beat
    /// a write of presync's which landed while the read was on the wire).
    ///
    /// A throttled or transient failure is retried after the `Retry-After` the remote asked
    /// for, or after the target's backoff, up to `pipeline.reconcile_read_attempts` reads in all: one
    /// 429 or 502 must not cost a whole pass, and the drift it would have repaired a whole
    /// schedule interval.
    async fn read_for_reconcile(
        &self,
        system: &SystemId,
        connector: &Arc<dyn Connector>,
        users: &[ExternalId],
    ) -> std::result::Result<(crate::Millis, Vec<crate::connector::RemoteState>), ConnectorError>
    {
        let mut attempt: u32 = 1;
        loop {
            let read_at = self.now();
            match connector.read_all(users).await {
                Ok(states) => return Ok((read_at, states)),
                Err(e)
                    if e.is_transient()
                        && attempt < self.inner.config.pipeline.reconcile_read_attempts
                        && !self.inner.stopping.load(Ordering::Relaxed) =>
                {
                    let wait = e
                        .retry_after()
                        .unwrap_or_else(|| {
                            backoff(self.inner.config.dispatch_for(system), i64::from(attempt))
                        })
                        .min(MAX_RECONCILE_RETRY_WAIT);
                    warn!(system = %system, error = %e, attempt, retry_in_ms = wait.as_millis() as u64, "Reconcile read failed; retrying");
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Read every system that can be read in bulk, feed what differs from presync's records into
    /// the inbox as reconcile observations, and resolve them. Repair writes are queued in the
    /// outbox; [`Engine::dispatch_pending`] (or the running service) sends them.
    pub async fn reconcile(&self) -> Result<ReconcileReport> {
        let run = uuid::Uuid::new_v4().simple().to_string();
        let prefix = format!("reconcile:{run}:");
        let mut report = ReconcileReport {
            run_id: run.clone(),
            ..ReconcileReport::default()
        };
        let systems: Vec<SystemId> = self.inner.topology.systems().cloned().collect();
        for system in systems {
            let caps = self.inner.topology.capabilities(&system);
            let Some(connector) = self
                .inner
                .connectors
                .get(&system)
                .filter(|_| caps.is_some_and(|c| c.bulk_read))
            else {
                continue;
            };
            let mut sr = SystemReconcile {
                system: system.clone(),
                ..SystemReconcile::default()
            };
            let directory = self.inner.store.reconcile_snapshot(&system).await?;
            let users: Vec<ExternalId> = directory.keys().cloned().collect();
            let (read_at, states) = match self.read_for_reconcile(&system, connector, &users).await
            {
                Ok(read) => read,
                Err(e) => {
                    warn!(system = %system, error = %e, "Reconcile read failed");
                    sr.error = Some(e.to_string());
                    report.systems.push(sr);
                    continue;
                }
            };
            drop(users);
            let now = self.now();
            // Fed in chunks as the read is walked, so that a pass over a large directory never
            // holds every observation at once.
            let mut feed = Vec::with_capacity(RECONCILE_FEED_CHUNK);
            let mut seen = HashSet::new();
            for s in states {
                let Some(known) = directory.get(&s.external_id) else {
                    sr.unknown += 1;
                    continue;
                };
                if !seen.insert(s.external_id.clone()) {
                    continue;
                }
                sr.read += 1;
                let obs = Observation {
                    system: system.clone(),
                    external_id: s.external_id.clone(),
                    native: s.native,
                    // A system without timestamps does not say when a state was set. For a
                    // user presync has never observed there, the date is unknown: it must not
                    // claim "now" and beat every dated state, so it dates from the epoch.
                    // After that, a difference is a change since the last observation: now.
                    source_time: s.source_time.unwrap_or(if known.observed.is_none() {
                        0
                    } else {
                        read_at
                    }),
                    sequence: s.sequence,
                    origin: s.origin,
                    kind: ObservationKind::Reconcile,
                    delivery_key: format!("{prefix}{system}:{}", s.external_id),
                    observed_at: now,
                    changed_by: None,
                    automatic: s.automatic,
                };
                let a = self.map(&obs);
                // Unchanged since last observed: the same state, and where the system dates its
                // states, the same date (the same state set again after a lost delivery is news).
                // The state's own date where the system gives one (a row's version also moves
                // for changes that are not the state's), else its version.
                let same_date = match (s.source_time, s.sequence, known.observed_sequence) {
                    (Some(t), _, _) => known.observed_time == Some(t),
                    (None, Some(seq), Some(seen)) => seq == seen,
                    (None, _, _) => true,
                };
                if known.observed == Some(a) && known.canonical == Some(a) && same_date {
                    sr.in_sync += 1;
                } else {
                    feed.push(obs);
                    sr.fed += 1;
                    if feed.len() == RECONCILE_FEED_CHUNK {
                        let chunk =
                            std::mem::replace(&mut feed, Vec::with_capacity(RECONCILE_FEED_CHUNK));
                        self.ingest_batch(chunk).await?;
                    }
                }
            }
            if !feed.is_empty() {
                self.ingest_batch(feed).await?;
            }
            sr.missing = directory.len().saturating_sub(seen.len());
            report.systems.push(sr);
        }
        self.resolve_pending().await?;
        report.decisions = self.inner.store.rules_with_key_prefix(&prefix).await?;
        let stats = &self.inner.stats;
        stats
            .drift_found
            .fetch_add(report.drift(), Ordering::Relaxed);
        stats
            .missed_found
            .fetch_add(report.missed_changes(), Ordering::Relaxed);
        info!(run = %report.run_id, fed = report.systems.iter().map(|s| s.fed).sum::<usize>(),
            drift = report.drift(), missed = report.missed_changes(), "Reconcile pass done");
        Ok(report)
    }

    /// Run the resolver and dispatcher until `shutdown` completes, then drain in-flight work
    /// within the configured deadline.
    pub async fn run(&self, shutdown: impl Future<Output = ()>) -> Result<()> {
        self.recover().await?;
        let (stop_tx, stop_rx) = watch::channel(false);
        let resolver = tokio::spawn(self.clone().loop_resolver(stop_rx.clone()));
        let dispatcher = tokio::spawn(self.clone().loop_dispatcher(stop_rx.clone()));
        let janitor = tokio::spawn(self.clone().loop_janitor(stop_rx));
        info!(instance = %self.inner.instance, "Engine running");
        shutdown.await;
        info!("Engine stopping");
        self.inner.stopping.store(true, Ordering::Relaxed);
        let _ = stop_tx.send(true);
        let deadline = Duration::from_millis(self.inner.config.pipeline.drain_deadline_ms);
        let (r, d, j) = (
            resolver.abort_handle(),
            dispatcher.abort_handle(),
            janitor.abort_handle(),
        );
        let drained = tokio::time::timeout(deadline, async {
            let _ = resolver.await;
            let _ = dispatcher.await;
            let _ = janitor.await;
            // The writes the resolver started end when every in-flight permit is back, and
            // their outcomes are recorded when every recording permit is.
            for gate in self.inner.gates.values() {
                let all = u32::try_from(gate.max_in_flight).unwrap_or(u32::MAX);
                let _ = gate.in_flight.acquire_many(all).await;
            }
            let _ = self.inner.recording.acquire_many(RECORDING).await;
        })
        .await;
        if drained.is_err() {
            r.abort();
            d.abort();
            j.abort();
            warn!("Drain deadline passed; unfinished work stays claimed and is retried after its lease");
        }
        Ok(())
    }

    async fn loop_resolver(self, mut stop: watch::Receiver<bool>) {
        let poll = Duration::from_millis(self.inner.config.pipeline.poll_interval_ms);
        let write = self.inner.config.pipeline.write_on_resolve;
        while !*stop.borrow() {
            if let Err(e) = self.resolve_batches(write).await {
                error!(error = %e, "Resolver pass failed");
            }
            tokio::select! {
                _ = self.inner.inbox_ready.notified() => {}
                _ = tokio::time::sleep(poll) => {}
                _ = stop.changed() => {}
            }
        }
    }

    async fn loop_dispatcher(self, mut stop: watch::Receiver<bool>) {
        let poll = Duration::from_millis(self.inner.config.pipeline.poll_interval_ms);
        while !*stop.borrow() {
            if let Err(e) = self.dispatch_pending().await {
                error!(error = %e, "Dispatcher pass failed");
            }
            tokio::select! {
                _ = self.inner.outbox_ready.notified() => {}
                _ = tokio::time::sleep(poll) => {}
                _ = stop.changed() => {}
            }
        }
    }

    async fn loop_janitor(self, mut stop: watch::Receiver<bool>) {
        let cfg = &self.inner.config.pipeline;
        while !*stop.borrow() {
            let now = self.now();
            match self
                .inner
                .store
                .purge(
                    now,
                    now - cfg.dedup_retention_ms,
                    now - cfg.history_retention_ms,
                )
                .await
            {
                Ok(n) if n > 0 => debug!(rows = n, "Purged old rows"),
                Ok(_) => {}
                Err(e) => warn!(error = %e, "Purge failed"),
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(60)) => {}
                _ = stop.changed() => {}
            }
        }
    }
}

/// How many reconcile observations go to the inbox in one transaction.
const RECONCILE_FEED_CHUNK: usize = 500;

/// Users of one target to read once their writes are recorded ([`Engine::to_confirm`]).
#[derive(Debug, Default)]
struct Confirm {
    target: Option<SystemId>,
    users: Vec<ExternalId>,
}

impl Confirm {
    async fn read(self, engine: &Engine) {
        if let Some(target) = self.target {
            engine.read_back(&target, self.users, "confirm").await;
        }
    }
}

/// What one reconcile pass found.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ReconcileReport {
    pub run_id: String,
    pub systems: Vec<SystemReconcile>,
    /// Decisions on the fed observations, by rule name.
    pub decisions: BTreeMap<String, u64>,
}

impl ReconcileReport {
    /// Targets found out of sync and queued for repair.
    pub fn drift(&self) -> u64 {
        self.decisions
            .get(Rule::Drift.as_str())
            .copied()
            .unwrap_or(0)
    }

    /// Changes the events had missed, now applied.
    pub fn missed_changes(&self) -> u64 {
        self.decisions
            .get(Rule::LastWriterWins.as_str())
            .copied()
            .unwrap_or(0)
    }

    /// Whether every system was read.
    pub fn complete(&self) -> bool {
        self.systems.iter().all(|s| s.error.is_none())
    }
}

/// One system's part of a reconcile pass.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SystemReconcile {
    pub system: SystemId,
    /// Users read that are in the directory.
    pub read: usize,
    /// Of those, already equal to what presync observed and to the canonical state.
    pub in_sync: usize,
    /// Fed to the resolver.
    pub fed: usize,
    /// Users the read returned that are not in the directory.
    pub unknown: usize,
    /// Directory users the read did not return.
    pub missing: usize,
    pub error: Option<String>,
}

/// An error with its causes, `: `-separated (the store's errors say "database error" and keep
/// what the database said in their source).
pub fn with_causes(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::clock::ManualClock;
    use crate::memory::MemorySystem;

    /// Every webhook waiting when the committer starts a commit is in that commit. (Found by
    /// the ingest benchmark: when the webhooks took turns at committing, a waiter whose
    /// observation an earlier turn had made durable still queued for its own turn, each commit
    /// then held only what arrived during the one before, a webhook or two, and SQLite ingest
    /// ran at a few hundred a second.)
    #[tokio::test]
    async fn one_commit_takes_every_webhook_waiting() {
        let (_dir, engine, obs) = engine_with(EngineConfig::default()).await;
        let mut answers = Vec::new();
        for n in 0..20 {
            let mut one = obs.clone();
            one.delivery_key.push_str(&format!("-{n}"));
            let (done, answer) = tokio::sync::oneshot::channel();
            engine.inner.ingest.queue.send((vec![one], done)).unwrap();
            answers.push(answer);
        }
        // The first ingest starts the committer (this runtime has one thread: only when this
        // task waits), which finds all 21 waiting.
        assert_eq!(engine.ingest(obs).await.unwrap(), Enqueued::Accepted);
        for answer in answers {
            assert_eq!(answer.await.unwrap().unwrap(), vec![Enqueued::Accepted]);
        }
        assert_eq!(engine.stats().ingest_commits.load(Ordering::Relaxed), 1);
        assert_eq!(engine.store().queue_depths().await.unwrap().inbox, 21);
    }

    /// An engine on a fresh SQLite file with one system of one user, and that user's change.
    async fn engine_with(config: EngineConfig) -> (tempfile::TempDir, Engine, Observation) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite:{}", dir.path().join("presync.db").display());
        let clock = Arc::new(ManualClock::new(1_700_000_000_000));
        let system = MemorySystem::new("a", clock.clone());
        system.add_user("u1", Availability::Offline);
        let connectors: BTreeMap<SystemId, Arc<dyn Connector>> =
            [(system.name(), system.connector() as Arc<dyn Connector>)].into();
        let topology = TopologyConfig::full_mesh(&connectors);
        let store = Store::open(&url).await.unwrap();
        let engine = Engine::with_clock(store, connectors, &topology, config, clock).unwrap();
        let obs = system
            .person_sets(&ExternalId("u1".into()), Availability::Busy)
            .unwrap();
        (dir, engine, obs)
    }

    /// A commit that ends with webhooks already waiting marks the ingress as queueing; one
    /// that ends with none waiting clears it.
    #[tokio::test]
    async fn a_commit_tells_whether_webhooks_queue_behind_it() {
        use sqlx::Connection;
        let (dir, engine, obs) = engine_with(EngineConfig::default()).await;
        let group = &engine.inner.ingest;
        let mut second = obs.clone();
        second.delivery_key.push_str("-second");
        // The committer, started here on its own receiver; ingest will not start another.
        group.started.call_once(|| ());
        let waiting = group.waiting.lock().unwrap().take().unwrap();
        // Another connection holds the intake file's writer: the first commit waits for it.
        let intake = format!("sqlite:{}-intake", dir.path().join("presync.db").display());
        let mut other = sqlx::AnyConnection::connect(&intake).await.unwrap();
        sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut other)
            .await
            .unwrap();

        let (done, first) = tokio::sync::oneshot::channel();
        group.queue.send((vec![obs], done)).unwrap();
        // The committer's turns, one by one. The first takes the first webhook and waits for
        // the file, and only then does the second arrive. (A committer spawned to run its
        // turns on its own sometimes finished the second turn before this test looked at the
        // flag the first one left, under load.)
        let mut waiting = waiting;
        let weak = Arc::downgrade(&engine.inner);
        let mut turn = Box::pin(commit_next(&weak, &mut waiting));
        assert!(futures::poll!(&mut turn).is_pending());
        let (done, then) = tokio::sync::oneshot::channel();
        group.queue.send((vec![second], done)).unwrap();
        assert!(!group.queued.load(Ordering::Relaxed));
        sqlx::query("COMMIT").execute(&mut other).await.unwrap();

        // The first turn ends with the second webhook waiting.
        assert!(turn.await);
        assert_eq!(first.await.unwrap().unwrap(), vec![Enqueued::Accepted]);
        assert!(group.queued.load(Ordering::Relaxed));
        // The second ends with none.
        assert!(commit_next(&weak, &mut waiting).await);
        assert_eq!(then.await.unwrap().unwrap(), vec![Enqueued::Accepted]);
        assert!(!group.queued.load(Ordering::Relaxed));
        assert_eq!(engine.stats().ingest_commits.load(Ordering::Relaxed), 2);
    }

    /// Under overload (webhooks queue and a backlog waits) the resolver pauses before each
    /// batch, for `defer_for_ms` at most; it stops deferring when a pause passes without a
    /// commit, and defers again only once it has caught up. (Time is paused: exact waits.)
    #[tokio::test]
    async fn the_resolver_defers_to_acknowledgements_for_a_bounded_time() {
        let mut config = EngineConfig::default();
        config.pipeline.defer_for_ms = 1_000;
        config.pipeline.defer_pause_ms = 300;
        config.pipeline.defer_backlog = 100;
        let (_dir, engine, _) = engine_with(config).await;
        let mut config = EngineConfig::default();
        config.pipeline.defer_for_ms = 0;
        config.pipeline.defer_backlog = 0;
        let (_dir, never, _) = engine_with(config).await;
        // After the stores are open: sqlx's own timeouts would fire at once in paused time.
        tokio::time::pause();
        let group = &engine.inner.ingest;
        let stats = &engine.inner.stats;
        let state = || *group.deferral.lock().unwrap();
        let pause = Duration::from_millis(300);
        // Webhooks keep committing, one commit every 10 ms.
        let committing = tokio::spawn({
            let engine = engine.clone();
            async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    let stats = &engine.inner.stats;
                    stats.ingest_commits.fetch_add(1, Ordering::Relaxed);
                }
            }
        });

        // Queueing without a backlog, or a backlog without queueing: no deferral.
        group.queued.store(true, Ordering::Relaxed);
        stats.accepted.store(99, Ordering::Relaxed);
        assert!(!engine.defer_to_ingest().await);
        group.queued.store(false, Ordering::Relaxed);
        stats.accepted.store(100, Ordering::Relaxed);
        assert!(!engine.defer_to_ingest().await);
        assert_eq!(state(), Deferral::Off);

        // Both: it pauses before each batch, until its budget is spent.
        group.queued.store(true, Ordering::Relaxed);
        let started = tokio::time::Instant::now();
        let mut pauses = 0;
        while engine.defer_to_ingest().await {
            pauses += 1;
        }
        // 300 + 300 + 300 + the 100 left of the budget.
        assert_eq!(pauses, 4);
        assert!(started.elapsed() >= Duration::from_millis(1_000));
        assert!(started.elapsed() <= Duration::from_millis(1_010));
        assert_eq!(state(), Deferral::CatchingUp);
        assert_eq!(stats.resolver_deferrals.load(Ordering::Relaxed), 1);
        assert_eq!(stats.resolver_pauses.load(Ordering::Relaxed), 4);
        // It does not defer again before it has caught up.
        assert!(!engine.defer_to_ingest().await);
        engine.caught_up();
        assert_eq!((state(), engine.backlog()), (Deferral::Off, 0));

        // When a pause passes without a commit, the webhooks have stopped: it catches up.
        // (A backlog of 100 again: 100 more accepted since it caught up.)
        stats.accepted.store(200, Ordering::Relaxed);
        assert!(engine.defer_to_ingest().await);
        committing.abort();
        let started = tokio::time::Instant::now();
        assert!(engine.defer_to_ingest().await);
        // Tokio's timers round a deadline up to the next whole millisecond.
        let waited = started.elapsed();
        assert!(waited >= pause && waited <= pause + Duration::from_millis(2));
        assert_eq!(state(), Deferral::CatchingUp);
        assert!(!engine.defer_to_ingest().await);
        assert_eq!(stats.resolver_deferrals.load(Ordering::Relaxed), 2);

        // 0 turns it off.
        never.inner.ingest.queued.store(true, Ordering::Relaxed);
        assert!(!never.defer_to_ingest().await);
    }

    /// The resolver has caught up when it finds less than a batch waiting: the backlog is
    /// cleared and it may defer again.
    #[tokio::test]
    async fn resolving_what_waits_clears_the_backlog_and_the_deferral() {
        let (_dir, engine, obs) = engine_with(EngineConfig::default()).await;
        let group = &engine.inner.ingest;
        assert_eq!(engine.ingest(obs).await.unwrap(), Enqueued::Accepted);
        assert_eq!(engine.backlog(), 1);
        *group.deferral.lock().unwrap() = Deferral::CatchingUp;
        assert_eq!(engine.resolve_pending().await.unwrap(), 1);
        assert_eq!(engine.backlog(), 0);
        assert_eq!(*group.deferral.lock().unwrap(), Deferral::Off);
    }

    /// While webhooks queue, the resolver waits before a batch until they stop queueing, and
    /// never longer than `yield_to_ingest_ms`; it does not wait when they do not queue, or when
    /// the setting is 0. (Time is paused: the waits are exact.)
    #[tokio::test]
    async fn the_resolver_gives_way_to_queueing_webhooks_for_a_bounded_time() {
        let (_dir, engine, _) = engine_with(EngineConfig::default()).await;
        let mut config = EngineConfig::default();
        config.pipeline.yield_to_ingest_ms = 0;
        let (_dir, never, _) = engine_with(config).await;
        // After the stores are open: sqlx's own timeouts would fire at once in paused time.
        tokio::time::pause();
        let group = &engine.inner.ingest;
        let waits = |e: &Engine| e.inner.stats.resolver_yields.load(Ordering::Relaxed);
        let max = Duration::from_millis(engine.inner.config.pipeline.yield_to_ingest_ms);
        assert!(max > Duration::ZERO);

        let started = tokio::time::Instant::now();
        engine.yield_to_ingest().await;
        assert_eq!((started.elapsed(), waits(&engine)), (Duration::ZERO, 0));

        // Tokio's timers tick in whole milliseconds from the runtime's start, and a deadline
        // is rounded up to the next tick: a wait can run up to 2 ms past what was asked.
        let about = |d: Duration, want: Duration| d >= want && d <= want + Duration::from_millis(2);
        group.queued.store(true, Ordering::Relaxed);
        let started = tokio::time::Instant::now();
        engine.yield_to_ingest().await;
        assert!(about(started.elapsed(), max), "{:?}", started.elapsed());
        assert_eq!(waits(&engine), 1);

        // The queue clears a third of the way in: the resolver goes on then.
        let resolver = tokio::spawn({
            let engine = engine.clone();
            async move {
                let started = tokio::time::Instant::now();
                engine.yield_to_ingest().await;
                started.elapsed()
            }
        });
        tokio::time::sleep(max / 3).await;
        group.queued.store(false, Ordering::Relaxed);
        group.calm.notify_waiters();
        let waited = resolver.await.unwrap();
        assert!(about(waited, max / 3), "{waited:?}");

        never.inner.ingest.queued.store(true, Ordering::Relaxed);
        let started = tokio::time::Instant::now();
        never.yield_to_ingest().await;
        assert_eq!((started.elapsed(), waits(&never)), (Duration::ZERO, 0));
    }
}
