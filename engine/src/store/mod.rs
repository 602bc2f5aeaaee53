//! The durable store: SQLite (embedded default, a file in WAL mode) or PostgreSQL (several
//! instances sharing the work), chosen by the URL scheme.
//!
//! One [`Store`] type serves both through sqlx's `Any` driver. The SQL is written once with `$n`
//! placeholders, which both backends accept; the few dialect differences (row locks,
//! `SKIP LOCKED`) are in [`Dialect`]. Each backend owns its migrations, in `schema/sqlite` and
//! `schema/postgres`, embedded in the binary. The statements of a transaction that do not
//! depend on each other's results are sent together (module `script`): on SQLite in one round
//! trip to the connection's thread, on PostgreSQL one by one.
//!
//! Concurrency: on PostgreSQL, inbox and outbox rows are claimed with `FOR UPDATE SKIP LOCKED`
//! and a lease, so each row is processed by one instance at a time and a stopped instance's
//! claims pass to another when the lease runs out; the resolver locks the representative's
//! `canonical` row, so one representative is resolved by one instance at a time. On SQLite
//! there is one connection to the store's file, and one writer; ingested observations are made
//! durable in a second file, the intake, with a connection and a writer of its own (module
//! `intake`), and the pipeline moves them into the inbox.

mod checkpoint;
mod directory;
mod inbox;
mod intake;
mod outbox;
mod script;

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::Arc;

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};

pub use directory::Known;
pub use inbox::{ClaimedWrites, Enqueued, InboxRow, Resolved, UnreadableRow, WriteClaims};
pub use intake::intake_path;
pub use outbox::{FinishedWrite, OutboxRow, WriteResult};

use crate::model::{Availability, Millis, RepId};
use checkpoint::Checkpointer;
use intake::Intake;
use script::{Script, Statement};

/// Store errors.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("unsupported store URL scheme in {0:?}: expected sqlite: or postgres://")]
    UnsupportedUrl(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored data is corrupt ({what})")]
    Corrupt {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("representative {0} is not in the directory")]
    UnknownRepresentative(RepId),
    #[error("no database at {0}: `presync run` or `presync reps import` creates it")]
    Missing(String),
    #[error("cannot create the database file {path}")]
    Create {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("external id {external_id} of {system} already belongs to representative {owner}")]
    ExternalIdTaken {
        system: String,
        external_id: String,
        owner: RepId,
    },
}

/// `Result` with [`StoreError`].
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Which database a store talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    /// The backend a URL names.
    pub fn of_url(url: &str) -> Result<Dialect> {
        if url.starts_with("sqlite:") {
            Ok(Dialect::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Dialect::Postgres)
        } else {
            Err(StoreError::UnsupportedUrl(redact_url(url)))
        }
    }

    /// `FOR UPDATE` where the backend has row locks.
    fn lock_row(self) -> &'static str {
        match self {
            Dialect::Sqlite => "",
            Dialect::Postgres => " FOR UPDATE",
        }
    }

    /// The collation that orders text by bytes, as Rust does (PostgreSQL's default follows
    /// the locale). Rows locked in this order are locked in one global order.
    fn bytewise(self) -> &'static str {
        match self {
            Dialect::Sqlite => "",
            Dialect::Postgres => " COLLATE \"C\"",
        }
    }

    /// `FOR UPDATE SKIP LOCKED` where the backend has it.
    fn skip_locked(self) -> &'static str {
        match self {
            Dialect::Sqlite => "",
            Dialect::Postgres => " FOR UPDATE SKIP LOCKED",
        }
    }
}

/// `n` placeholders numbered from `first`: `$2, $3, $4`.
fn placeholders(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A URL with any password replaced, safe for logs and errors.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.find(':') {
                Some(c) => format!("{}{}:***{}", &url[..s + 3], &creds[..c], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// How a SQLite store makes a commit durable (`PRAGMA synchronous`, in WAL mode).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SqliteSynchronous {
    /// Every commit, of the store and of the intake, waits for the disk (an fsync of the
    /// file's write-ahead log): a commit, and so every acknowledged webhook, survives a crash
    /// of the process, of the operating system and a power loss. The default.
    #[default]
    Full,
    /// Commits do not wait for the disk; the log is synced at checkpoints. A commit survives a
    /// crash of the process (SIGKILL included: the soak kills presync this way), but the last
    /// commits before an operating-system crash or a power loss may be lost, webhooks that were
    /// acknowledged among them. Faster: see BENCHMARKS.md. Choose it only where that loss is
    /// acceptable (a reconcile repairs presence that the lost events carried, but not their
    /// history).
    Normal,
}

impl SqliteSynchronous {
    fn pragma(self) -> &'static str {
        match self {
            SqliteSynchronous::Full => "PRAGMA synchronous = FULL",
            SqliteSynchronous::Normal => "PRAGMA synchronous = NORMAL",
        }
    }
}

/// Options of [`Store::open_with`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreOptions {
    /// SQLite only: how commits are made durable.
    pub sqlite_synchronous: SqliteSynchronous,
    /// SQLite only: how often, in milliseconds, a connection of its own checkpoints each file's
    /// write-ahead log (module `checkpoint`); 0 leaves checkpoints to the commits, as SQLite
    /// does by default.
    pub sqlite_checkpoint_every_ms: u64,
}

/// The default of [`StoreOptions::sqlite_checkpoint_every_ms`].
pub const DEFAULT_CHECKPOINT_EVERY_MS: u64 = 100;

impl Default for StoreOptions {
    fn default() -> StoreOptions {
        StoreOptions {
            sqlite_synchronous: SqliteSynchronous::default(),
            sqlite_checkpoint_every_ms: DEFAULT_CHECKPOINT_EVERY_MS,
        }
    }
}

/// The durable store. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    dialect: Dialect,
    /// On SQLite, the pipeline's turn at the one connection (see [`Store::pipeline_turn`]).
    pipeline: Arc<tokio::sync::Mutex<()>>,
    /// On SQLite with a database file, where ingested observations land (module `intake`).
    intake: Option<Arc<Intake>>,
    /// On SQLite with a database file, unless turned off: the task that checkpoints its files.
    checkpointer: Option<Arc<Checkpointer>>,
    /// On SQLite, the database file: [`Store::probe_write`] writes beside it.
    file: Option<std::path::PathBuf>,
}

/// What [`Store::probe_write`] writes: a checkpoint's worth of SQLite log pages.
const PROBE_BYTES: usize = 256 * 1024;

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../schema/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../schema/postgres");

impl Store {
    /// Connect to `url` (`sqlite:PATH` or `postgres://...`) and apply pending migrations.
    pub async fn open(url: &str) -> Result<Store> {
        Store::open_with(url, &StoreOptions::default()).await
    }

    /// [`Store::open`] with `options`.
    pub async fn open_with(url: &str, options: &StoreOptions) -> Result<Store> {
        let store = Store::connect_with(url, options).await?;
        store.migrate().await?;
        Ok(store)
    }

    /// [`Store::open`] a database that must exist already (for the commands that only read):
    /// a SQLite file that is not there is refused, not created empty.
    pub async fn open_existing(url: &str) -> Result<Store> {
        if let Some(path) = intake::store_path(url) {
            if !std::path::Path::new(path).exists() {
                return Err(StoreError::Missing(path.to_owned()));
            }
        }
        Store::open(url).await
    }

    /// Connect without migrating.
    pub async fn connect(url: &str) -> Result<Store> {
        Store::connect_with(url, &StoreOptions::default()).await
    }

    /// [`Store::connect`] with `options`.
    pub async fn connect_with(url: &str, options: &StoreOptions) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let dialect = Dialect::of_url(url)?;
        let (pool, intake, checkpointer) = match dialect {
            Dialect::Sqlite => {
                let synchronous = options.sqlite_synchronous.pragma();
                let checkpoint_every = options.sqlite_checkpoint_every_ms;
                // With a checkpointer, a commit checkpoints only past the backstop.
                let autocheckpoint = if checkpoint_every > 0 {
                    checkpoint::BACKSTOP_PAGES
                } else {
                    checkpoint::INLINE_PAGES
                };
                let autocheckpoint = format!("PRAGMA wal_autocheckpoint = {autocheckpoint}");
                let url = if url.contains("mode=") {
                    url.to_owned()
                } else if url.contains('?') {
                    format!("{url}&mode=rwc")
                } else {
                    format!("{url}?mode=rwc")
                };
                let intake_file = intake_path(&url);
                let intake_url = intake_file.as_ref().map(|f| format!("sqlite:{f}?mode=rwc"));
                let store_file = intake::store_path(&url);
                // Readable by the service's own user only (SQLite gives its WAL and shared
                // memory files the mode of the database file).
                for file in store_file.iter().copied().chain(intake_file.as_deref()) {
                    create_private(file)?;
                }
                // The store's connection attaches the intake file (creating it if need be) to
                // move its rows into the inbox.
                let attach = intake_file.clone().map(|f| (f, "intake", INTAKE_CACHE_KIB));
                let pragmas = vec![
                    "PRAGMA foreign_keys = ON".to_owned(),
                    autocheckpoint.clone(),
                ];
                let pool = sqlite_pool(&url, synchronous, attach, pragmas).await?;
                let intake = match (&intake_url, store_file) {
                    (Some(intake_url), Some(store_file)) => {
                        let attach =
                            Some((store_file.to_owned(), "store", STORE_IN_INTAKE_CACHE_KIB));
                        let pragmas = vec![
                            format!("PRAGMA cache_size = -{INTAKE_CACHE_KIB}"),
                            autocheckpoint,
                        ];
                        let intake_pool =
                            sqlite_pool(intake_url, synchronous, attach, pragmas).await?;
                        Some(Arc::new(Intake::open(intake_pool).await?))
                    }
                    _ => None,
                };
                // Files of their own to checkpoint: not an in-memory database.
                let checkpointer = match (&intake, intake_url) {
                    (Some(_), Some(intake_url)) if checkpoint_every > 0 => {
                        let every = std::time::Duration::from_millis(checkpoint_every);
                        let urls = [url, intake_url];
                        Some(Arc::new(
                            Checkpointer::start(&urls, synchronous, every).await?,
                        ))
                    }
                    _ => None,
                };
                (pool, intake, checkpointer)
            }
            Dialect::Postgres => {
                let pool = AnyPoolOptions::new()
                    .max_connections(8)
                    .connect(url)
                    .await?;
                (pool, None, None)
            }
        };
        Ok(Store {
            pool,
            dialect,
            pipeline: Arc::default(),
            intake,
            checkpointer,
            file: intake::store_path(url).map(std::path::PathBuf::from),
        })
    }

    /// Apply pending migrations of this backend.
    pub async fn migrate(&self) -> Result<()> {
        match self.dialect {
            Dialect::Sqlite => SQLITE_MIGRATIONS.run(&self.pool).await?,
            Dialect::Postgres => POSTGRES_MIGRATIONS.run(&self.pool).await?,
        }
        Ok(())
    }

    /// Wait for the pipeline's turn at the database, and hold it for as long as the guard
    /// lives. On SQLite the resolver's and the dispatcher's transactions take turns here before
    /// they queue for the one connection, so that at most one of them is ahead of a webhook's
    /// inbox commit, which does not take a turn: a webhook waits for one pipeline transaction
    /// at most, not for each stage's in turn. The pipeline still gets every other transaction
    /// at least (the connection's queue is first come, first served), so it is never starved.
    /// PostgreSQL has a connection each and needs no turns: `None`.
    async fn pipeline_turn(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        match self.dialect {
            Dialect::Sqlite => Some(self.pipeline.lock().await),
            Dialect::Postgres => None,
        }
    }

    /// The backend.
    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Whether the store can write again after a write failed. On SQLite, a file of a WAL
    /// segment's size is written and synced beside the database (SQLite reuses its log's space,
    /// so a small write can succeed on a full disk, and fail on the next that needs a page
    /// more); on PostgreSQL, which reports its own failures on the next write, the server must
    /// answer.
    pub async fn probe_write(&self) -> Result<()> {
        let Some(file) = self.file.clone() else {
            return self.ping().await;
        };
        let probe = {
            let mut name = file.into_os_string();
            name.push("-probe");
            std::path::PathBuf::from(name)
        };
        let written = tokio::task::spawn_blocking(move || {
            use std::io::Write;
            let result = (|| {
                let mut f = std::fs::File::create(&probe)?;
                f.write_all(&[0u8; PROBE_BYTES])?;
                f.sync_all()
            })();
            let _ = std::fs::remove_file(&probe);
            result
        })
        .await
        .map_err(std::io::Error::other)
        .and_then(|r| r);
        written.map_err(|e| StoreError::Database(sqlx::Error::Io(e)))
    }

    /// Close the pools, waiting for connections to be returned. Moved intake rows are deleted
    /// first, where they can be.
    pub async fn close(&self) {
        if let Some(checkpointer) = &self.checkpointer {
            checkpointer.stop().await;
        }
        if let Some(intake) = &self.intake {
            let _ = intake.delete_moved().await;
            intake.release().await;
            intake.pool.close().await;
        }
        self.pool.close().await;
    }

    /// Rows waiting in the inbox (the intake's included) and the outbox.
    pub async fn queue_depths(&self) -> Result<QueueDepths> {
        let (landed, moved) = match &self.intake {
            Some(intake) => (
                " + (SELECT COALESCE(SUM(json_array_length(observations)), 0)
                     FROM intake.intake_batches WHERE id > $1)",
                intake.moved(),
            ),
            None => ("", 0),
        };
        let sql = format!(
            "SELECT (SELECT COUNT(*) FROM inbox WHERE done_at IS NULL){landed} AS inbox,
                    (SELECT COUNT(*) FROM outbox) AS outbox"
        );
        let mut q = sqlx::query(&sql);
        if self.intake.is_some() {
            q = q.bind(moved);
        }
        let row = q.fetch_one(&self.pool).await?;
        Ok(QueueDepths {
            inbox: row.try_get("inbox")?,
            outbox: row.try_get("outbox")?,
        })
    }

    /// Drop processed inbox rows older than `dedup_before`, history older than
    /// `history_before` and expired expectations. Returns the number of rows removed. An inbox
    /// row whose key the intake still holds (a crash came between its move and the intake's
    /// delete) stays, so that moving it again remains a no-op however long presync was down.
    pub async fn purge(
        &self,
        now: Millis,
        dedup_before: Millis,
        history_before: Millis,
    ) -> Result<u64> {
        let mut n = 0;
        let in_intake = if self.intake.is_some() {
            " AND delivery_key NOT IN (SELECT o.value ->> '$.delivery_key'
                                       FROM intake.intake_batches AS b, json_each(b.observations) AS o)"
        } else {
            ""
        };
        n += sqlx::query(&format!(
            "DELETE FROM inbox WHERE done_at IS NOT NULL AND done_at < $1{in_intake}"
        ))
        .bind(dedup_before)
        .execute(&self.pool)
        .await?
        .rows_affected();
        n += sqlx::query("DELETE FROM history WHERE at < $1")
            .bind(history_before)
            .execute(&self.pool)
            .await?
            .rows_affected();
        n += sqlx::query("DELETE FROM expectations WHERE expires_at <= $1")
            .bind(now)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(n)
    }

    /// Release every claim on inbox and outbox rows. Only for a store that no other instance
    /// uses (SQLite at start-up): a crashed predecessor's claims need not wait for their lease.
    pub async fn release_all_claims(&self) -> Result<()> {
        sqlx::query(
            "UPDATE inbox SET claimed_by = NULL, claim_until = NULL WHERE claimed_by IS NOT NULL",
        )
        .execute(&self.pool)
        .await?;
        sqlx::query(
            "UPDATE outbox SET claimed_by = NULL, claim_until = NULL WHERE claimed_by IS NOT NULL",
        )
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Take or renew the named lease for `holder` until `until`. True when `holder` holds it.
    pub async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        now: Millis,
        until: Millis,
    ) -> Result<bool> {
        let done = sqlx::query(
            "INSERT INTO leases (name, holder, until) VALUES ($1, $2, $3)
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, until = excluded.until
             WHERE leases.holder = excluded.holder OR leases.until < $4",
        )
        .bind(name)
        .bind(holder)
        .bind(until)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }
}

/// A file a SQLite connection attaches: its path, the schema name it is attached as, and the
/// page cache the connection keeps for it, in KiB.
type Attach = (String, &'static str, u32);

/// Page cache, in KiB, of the intake file in either connection: its rows are deleted as soon
/// as they are moved, so it stays small. SQLite's default is 2,000 KiB per file per connection.
const INTAKE_CACHE_KIB: u32 = 512;
/// Page cache, in KiB, of the store file in the intake's connection, which only looks delivery
/// keys up in the inbox.
const STORE_IN_INTAKE_CACHE_KIB: u32 = 1_024;

/// Whether a connection coming back to the pool may be used again. A COMMIT that fails with
/// SQLITE_FULL (or an I/O error) has SQLite roll the transaction back by itself; sqlx's
/// ROLLBACK then fails ("no transaction is active") and sqlx goes on counting a transaction
/// open. Its next transaction is then a savepoint, whose rollback leaves a real transaction open
/// that nothing ever commits: the pipeline saw neither new webhooks nor its own writes after a
/// disk had been full and freed, until a restart. Such a connection is closed, and the pool
/// opens a new one.
async fn consistent(conn: &mut sqlx::AnyConnection) -> bool {
    use sqlx::Connection;
    if !conn.is_in_transaction() {
        return true;
    }
    // A rollback queued by a transaction dropped unfinished runs first.
    if conn.ping().await.is_err() {
        return false;
    }
    let consistent = !conn.is_in_transaction();
    if !consistent {
        tracing::debug!("A database connection lost track of its transaction (after a failed commit); replacing it");
    }
    consistent
}

/// A pool of one connection to a SQLite file, in WAL mode with `synchronous` and `pragmas`,
/// that attaches `attach`'s file (each time it connects).
async fn sqlite_pool(
    url: &str,
    synchronous: &'static str,
    attach: Option<Attach>,
    pragmas: Vec<String>,
) -> Result<AnyPool> {
    let pool = AnyPoolOptions::new()
        // One connection, one writer: SQLite serialises writers anyway, and a single
        // connection never meets SQLITE_BUSY from itself.
        .max_connections(1)
        // No ping before each use: it is a round trip to the connection's thread, and a
        // connection to a local file has no peer that can hang up. (sqlx still pings on each
        // release, which also finishes a rollback left by a cancelled transaction.)
        .test_before_acquire(false)
        .after_release(|conn, _meta| Box::pin(async move { Ok(consistent(conn).await) }))
        .after_connect(move |conn, _meta| {
            let attach = attach.clone();
            let pragmas = pragmas.clone();
            Box::pin(async move {
                // FULL (the default): durable on power loss, not only on process crash. See
                // `SqliteSynchronous`.
                for pragma in ["PRAGMA journal_mode = WAL", synchronous]
                    .into_iter()
                    .chain(pragmas.iter().map(String::as_str))
                    .chain(["PRAGMA busy_timeout = 10000"])
                {
                    sqlx::query(pragma).execute(&mut *conn).await?;
                }
                if let Some((file, name, cache_kib)) = attach {
                    sqlx::query(&format!("ATTACH DATABASE $1 AS {name}"))
                        .bind(file)
                        .execute(&mut *conn)
                        .await?;
                    sqlx::query(&format!("PRAGMA {name}.cache_size = -{cache_kib}"))
                        .execute(&mut *conn)
                        .await?;
                }
                Ok(())
            })
        })
        .connect(url)
        .await?;
    Ok(pool)
}

/// How much work is waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueDepths {
    pub inbox: i64,
    pub outbox: i64,
}

/// One history row: a decision or a write outcome.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HistoryEntry {
    pub id: i64,
    pub rep_id: Option<RepId>,
    pub system: String,
    pub external_id: Option<String>,
    pub delivery_key: Option<String>,
    pub at: Millis,
    pub rule: String,
    pub outcome: String,
    pub availability: Option<Availability>,
    pub canonical_version: Option<i64>,
    /// Targets a decision queued writes for.
    pub writes: Vec<String>,
    pub detail: String,
}

impl HistoryEntry {
    fn from_row(row: &AnyRow) -> Result<HistoryEntry> {
        let writes: Option<String> = row.try_get("writes")?;
        let availability: Option<String> = row.try_get("availability")?;
        Ok(HistoryEntry {
            id: row.try_get("id")?,
            rep_id: row.try_get::<Option<String>, _>("rep_id")?.map(RepId),
            system: row.try_get("system")?,
            external_id: row.try_get("external_id")?,
            delivery_key: row.try_get("delivery_key")?,
            at: row.try_get("at")?,
            rule: row.try_get("rule")?,
            outcome: row.try_get("outcome")?,
            availability: availability
                .map(|a| Availability::from_str(&a).map_err(|e| corrupt("history.availability", e)))
                .transpose()?,
            canonical_version: row.try_get("canonical_version")?,
            writes: writes
                .map(|w| from_json(&w, "history.writes"))
                .transpose()?
                .unwrap_or_default(),
            detail: row.try_get("detail")?,
        })
    }
}

const HISTORY_COLUMNS: &str = "id, rep_id, system, external_id, delivery_key, at, rule, outcome, \
                               availability, canonical_version, writes, detail";

impl Store {
    /// The newest `limit` history rows of a representative, newest first.
    pub async fn history(&self, rep: &RepId, limit: i64) -> Result<Vec<HistoryEntry>> {
        let rows = sqlx::query(&format!(
            "SELECT {HISTORY_COLUMNS} FROM history WHERE rep_id = $1 ORDER BY id DESC LIMIT $2"
        ))
        .bind(rep.as_str())
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(HistoryEntry::from_row).collect()
    }

    /// Every history row of one delivery.
    pub async fn history_for_delivery(&self, key: &str) -> Result<Vec<HistoryEntry>> {
        let rows = sqlx::query(&format!(
            "SELECT {HISTORY_COLUMNS} FROM history WHERE delivery_key = $1 ORDER BY id"
        ))
        .bind(key)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(HistoryEntry::from_row).collect()
    }

    /// History rows whose delivery key starts with `prefix` (a reconcile run's observations).
    pub async fn history_with_key_prefix(&self, prefix: &str) -> Result<Vec<HistoryEntry>> {
        let (filter, binds) = self.key_prefix_filter(prefix);
        let sql = format!("SELECT {HISTORY_COLUMNS} FROM history WHERE {filter} ORDER BY id");
        let mut q = sqlx::query(&sql);
        for b in &binds {
            q = q.bind(b.as_str());
        }
        let rows = q.fetch_all(&self.pool).await?;
        rows.iter().map(HistoryEntry::from_row).collect()
    }

    /// How many history rows of deliveries whose key starts with `prefix` each rule decided
    /// (a reconcile pass's decisions: counted in the database, not loaded).
    pub async fn rules_with_key_prefix(&self, prefix: &str) -> Result<BTreeMap<String, u64>> {
        let (filter, binds) = self.key_prefix_filter(prefix);
        let sql = format!("SELECT rule, COUNT(*) AS n FROM history WHERE {filter} GROUP BY rule");
        let mut q = sqlx::query(&sql);
        for b in &binds {
            q = q.bind(b.as_str());
        }
        let mut out = BTreeMap::new();
        for r in q.fetch_all(&self.pool).await? {
            let n: i64 = r.try_get("n")?;
            out.insert(r.try_get("rule")?, u64::try_from(n).unwrap_or(0));
        }
        Ok(out)
    }

    /// The condition (and its values) that selects history rows by delivery key prefix through
    /// the index. SQLite compares text bytewise, so a range does; on PostgreSQL a range depends
    /// on the collation, and LIKE on the `text_pattern_ops` index does not.
    fn key_prefix_filter(&self, prefix: &str) -> (&'static str, Vec<String>) {
        match self.dialect {
            Dialect::Sqlite => (
                "delivery_key >= $1 AND delivery_key < $2",
                vec![prefix.to_owned(), format!("{prefix}\u{10FFFF}")],
            ),
            Dialect::Postgres => {
                let escaped = prefix
                    .replace('\\', "\\\\")
                    .replace('%', "\\%")
                    .replace('_', "\\_");
                ("delivery_key LIKE $1", vec![format!("{escaped}%")])
            }
        }
    }
}

pub(crate) fn corrupt(what: &str, e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::Corrupt {
        what: what.to_owned(),
        source: Box::new(e),
    }
}

pub(crate) fn to_json<T: serde::Serialize>(value: &T) -> String {
    // Serialising the engine's own plain data types cannot fail.
    serde_json::to_string(value).unwrap_or_else(|_| "null".to_owned())
}

pub(crate) fn from_json<T: serde::de::DeserializeOwned>(text: &str, what: &str) -> Result<T> {
    serde_json::from_str(text).map_err(|e| corrupt(what, e))
}

pub(crate) fn parse_availability(text: Option<String>, what: &str) -> Result<Option<Availability>> {
    text.map(|a| Availability::from_str(&a).map_err(|e| corrupt(what, e)))
        .transpose()
}

/// Rows per multi-row statement: well under both backends' limits on bound parameters
/// (32,766 on SQLite, 65,535 on PostgreSQL) at 11 columns.
const ROWS_PER_STATEMENT: usize = 256;

/// `rows` tuples of `cols` placeholders numbered from `first`: `($2, $3), ($4, $5)`.
fn tuples(first: usize, rows: usize, cols: usize) -> String {
    shaped_tuples(first, rows, cols, |p| format!("({})", p.join(", ")))
}

/// `rows` tuples for a multi-row `VALUES`, each written by `shape` from its row's `cols`
/// placeholders (numbered from `first`), for tuples that also hold shared parameters or
/// constants: `shaped_tuples(2, 2, 1, |p| format!("({}, $1)", p[0]))` is `($2, $1), ($3, $1)`.
fn shaped_tuples(
    first: usize,
    rows: usize,
    cols: usize,
    mut shape: impl FnMut(&[String]) -> String,
) -> String {
    (0..rows)
        .map(|r| {
            let own: Vec<String> = (0..cols)
                .map(|c| format!("${}", first + r * cols + c))
                .collect();
            shape(&own)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// One history row, for [`insert_history`].
#[derive(Debug)]
struct HistoryRow {
    rep: Option<String>,
    system: String,
    external_id: String,
    delivery_key: Option<String>,
    at: Millis,
    rule: String,
    outcome: String,
    availability: Option<&'static str>,
    version: Option<i64>,
    /// The targets written, as JSON.
    writes: Option<String>,
    detail: String,
}

/// The statements inserting `rows` into the history, one per [`ROWS_PER_STATEMENT`].
fn insert_history(rows: &[HistoryRow]) -> Vec<Statement<'_>> {
    rows.chunks(ROWS_PER_STATEMENT)
        .map(|chunk| {
            let sql = format!(
                "INSERT INTO history (rep_id, system, external_id, delivery_key, at, rule, outcome,
                                      availability, canonical_version, writes, detail)
                 VALUES {}",
                tuples(1, chunk.len(), 11)
            );
            let mut q = Statement::new(sql);
            for h in chunk {
                q = q
                    .bind(h.rep.as_deref())
                    .bind(h.system.as_str())
                    .bind(h.external_id.as_str())
                    .bind(h.delivery_key.as_deref())
                    .bind(h.at)
                    .bind(h.rule.as_str())
                    .bind(h.outcome.as_str())
                    .bind(h.availability)
                    .bind(h.version)
                    .bind(h.writes.as_deref())
                    .bind(h.detail.as_str());
            }
            q
        })
        .collect()
}

/// Create `path` empty (an empty file is an empty SQLite database), readable and writable by
/// its owner only, unless it exists already (its mode is then left as the operator set it).
fn create_private(path: &str) -> Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(source) => Err(StoreError::Create {
            path: path.to_owned(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dialect_is_chosen_by_url_scheme() {
        assert_eq!(
            Dialect::of_url("sqlite:presync.db").ok(),
            Some(Dialect::Sqlite)
        );
        assert_eq!(
            Dialect::of_url("postgres://u@h/db").ok(),
            Some(Dialect::Postgres)
        );
        assert_eq!(
            Dialect::of_url("postgresql://u@h/db").ok(),
            Some(Dialect::Postgres)
        );
        let err = Dialect::of_url("mysql://root:hunter2@h/db").unwrap_err();
        assert!(err.to_string().contains("expected sqlite: or postgres://"));
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn redacted_url_hides_the_password_only() {
        assert_eq!(
            redact_url("postgres://app:s3cret@db:5432/presync"),
            "postgres://app:***@db:5432/presync"
        );
        assert_eq!(
            redact_url("postgres://app@db/presync"),
            "postgres://app@db/presync"
        );
        assert_eq!(redact_url("sqlite:presync.db"), "sqlite:presync.db");
    }

    async fn pragma(pool: &AnyPool, name: &str) -> i64 {
        sqlx::query_scalar(&format!("PRAGMA {name}"))
            .fetch_one(pool)
            .await
            .unwrap()
    }

    /// Both files wait for the disk at every commit unless `normal` is asked for (FULL = 2,
    /// NORMAL = 1), and the intake's files keep small page caches in either connection.
    #[tokio::test]
    async fn on_sqlite_both_files_commit_as_configured_with_small_intake_caches() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite:{}", dir.path().join("p.db").display());
        let store = Store::open(&url).await.unwrap();
        let intake = &store.intake.as_ref().unwrap().pool;
        assert_eq!(pragma(intake, "synchronous").await, 2);
        assert_eq!(pragma(&store.pool, "synchronous").await, 2);
        let kib = -i64::from(INTAKE_CACHE_KIB);
        assert_eq!(pragma(intake, "cache_size").await, kib);
        assert_eq!(pragma(&store.pool, "intake.cache_size").await, kib);
        assert_eq!(
            pragma(intake, "store.cache_size").await,
            -i64::from(STORE_IN_INTAKE_CACHE_KIB)
        );
        store.close().await;

        let normal = StoreOptions {
            sqlite_synchronous: SqliteSynchronous::Normal,
            ..StoreOptions::default()
        };
        let store = Store::open_with(&url, &normal).await.unwrap();
        assert_eq!(
            pragma(&store.intake.as_ref().unwrap().pool, "synchronous").await,
            1
        );
        assert_eq!(pragma(&store.pool, "synchronous").await, 1);
        store.close().await;
    }

    /// The pages of the write-ahead logs reach the database files with no commit checkpointing
    /// (the store's and the intake's connections would only past the backstop): the
    /// checkpointer copies them. Without it, nothing would grow the files here: migrations and
    /// one batch are far below the backstop.
    #[tokio::test]
    async fn the_checkpointer_copies_the_logs_that_commits_leave_alone() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("p.db");
        let url = format!("sqlite:{}", file.display());
        let options = StoreOptions {
            sqlite_checkpoint_every_ms: 20,
            ..StoreOptions::default()
        };
        let store = Store::open_with(&url, &options).await.unwrap();
        let intake = &store.intake.as_ref().unwrap().pool;
        let backstop = i64::from(checkpoint::BACKSTOP_PAGES);
        assert_eq!(pragma(&store.pool, "wal_autocheckpoint").await, backstop);
        assert_eq!(pragma(intake, "wal_autocheckpoint").await, backstop);
        let obs = crate::rules::tests::obs("d365", Availability::Busy, 1);
        store.enqueue(&[obs], 1).await.unwrap();
        let intake_file = dir.path().join("p.db-intake");
        let size = |f: &std::path::Path| std::fs::metadata(f).map_or(0, |m| m.len());
        let page = 4_096;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while size(&file) <= page || size(&intake_file) <= page {
            assert!(
                std::time::Instant::now() < deadline,
                "the logs were not copied: store {} bytes, intake {} bytes",
                size(&file),
                size(&intake_file)
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        store.close().await;
    }

    /// `sqlite_checkpoint_every_ms = 0` leaves checkpoints to the commits, at SQLite's default.
    #[tokio::test]
    async fn without_a_checkpointer_commits_checkpoint_as_sqlite_does() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite:{}", dir.path().join("p.db").display());
        let options = StoreOptions {
            sqlite_checkpoint_every_ms: 0,
            ..StoreOptions::default()
        };
        let store = Store::open_with(&url, &options).await.unwrap();
        assert!(store.checkpointer.is_none());
        let inline = i64::from(checkpoint::INLINE_PAGES);
        assert_eq!(inline, 1_000, "SQLite's default");
        assert_eq!(pragma(&store.pool, "wal_autocheckpoint").await, inline);
        let intake = &store.intake.as_ref().unwrap().pool;
        assert_eq!(pragma(intake, "wal_autocheckpoint").await, inline);
        store.close().await;
    }

    #[test]
    fn tuples_number_each_rows_placeholders_in_turn() {
        assert_eq!(tuples(1, 2, 2), "($1, $2), ($3, $4)");
        assert_eq!(tuples(3, 1, 3), "($3, $4, $5)");
        assert_eq!(
            shaped_tuples(2, 2, 2, |p| format!("({}, $1, {}, 0)", p[0], p[1])),
            "($2, $1, $3, 0), ($4, $1, $5, 0)"
        );
    }
}
