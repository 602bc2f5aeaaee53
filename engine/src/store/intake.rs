//! The intake: on SQLite, where an ingested observation is made durable before its webhook is
//! acknowledged, in a database file of its own beside the store's.
//!
//! SQLite has one writer per file. With the inbox in the store's file, a webhook's commit
//! queued behind the resolver's and the dispatcher's transactions, which hold that writer for
//! milliseconds each (BENCHMARKS.md, "The misses at 800e4de"). The intake file has its own
//! connection and its own writer, so acknowledging a webhook waits only for other webhooks.
//!
//! Each commit is one row: a batch, the JSON array of the observations one group commit made
//! durable. A row per observation, with a unique index on its delivery key, made every commit
//! write a page of that index per webhook (the keys are random) and every delete write them
//! again; a batch is one row appended at the end of the table (BENCHMARKS.md has the figures).
//! Which delivery keys the intake holds is kept in memory instead ([`Held`]), read back from the
//! file when it is opened, and changed only by the intake's one writer after each commit.
//!
//! The pipeline moves batches into the inbox at the start of each claim, in the claim's own
//! transaction (the store's connection attaches the intake file as `intake` and reads each
//! batch's observations with `json_each`), and deletes them from the intake only after that
//! transaction has committed: an observation is always in one file or the other, or, after a
//! crash between the two steps, in both, and then moving it again is a no-op because the inbox
//! refuses a delivery key it holds. The intake's connection attaches the store's file as
//! `store` to check that refusal before it acknowledges: a delivery is a duplicate if the
//! intake or the inbox holds its key. Both connections only read the other's file, so neither
//! ever waits for the other's writer.
//!
//! Batches carry increasing ids, and one writer commits them in id order: the batches a reader
//! sees are a prefix of the ids, with any later ones beyond it. That is what lets the pipeline
//! remember what it moved as one id. A batch's id is one above the largest in the file and the
//! last one committed (the largest in the file when it was opened, before the first), and so
//! above every id the pipeline can have moved: once it has moved past an id and every batch is
//! deleted, the file holds none, and an id counted from the file alone would come again and
//! never be moved (the soak lost acknowledged webhooks so after restarts). `AUTOINCREMENT` kept ids rising by
//! updating `sqlite_sequence`, a page more in every commit: 2.3 pages of log per commit
//! instead of 1.3. After a restart the pipeline starts from no batch moved, so ids may start
//! again where the file ended when it was opened.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::pool::PoolConnection;
use sqlx::{Any, AnyConnection, AnyPool, Row};

use super::{to_json, Enqueued, Result};
use crate::model::{Millis, Observation};

/// Batches moved per claim, at most: a claim's transaction stays short under a backlog (a
/// group commit holds up to a few dozen observations; a reconcile's, up to 500).
pub(super) const MOVE_BATCHES: i64 = 16;

/// Moved batches are deleted from the intake once this many are waiting, or [`DELETE_EVERY`]
/// after the last delete: each delete is a commit on the intake's connection, between
/// webhooks'.
const DELETE_BATCHES: i64 = 64;
const DELETE_EVERY: Duration = Duration::from_secs(1);

/// Delivery keys per statement when the inbox is asked which keys it holds.
const KEYS_PER_LOOKUP: usize = 1_000;

/// A lookup of up to this many keys keeps its statement prepared between calls (a webhook-sized
/// batch's); a larger one (a reconcile's) would keep a large compiled statement in the
/// connection's cache for each size met.
const KEEP_PREPARED_KEYS: usize = 64;

/// The intake's file name: the store's with `-intake` appended, beside SQLite's own `-wal` and
/// `-shm` files. `None` where the store has no file (an in-memory database): then the inbox
/// takes ingested observations directly.
pub fn intake_path(url: &str) -> Option<String> {
    store_path(url).map(|path| format!("{path}-intake"))
}

/// The file of a SQLite store URL; `None` for an in-memory database or another backend.
pub(super) fn store_path(url: &str) -> Option<&str> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    if path.is_empty() || path == ":memory:" || query.contains("mode=memory") {
        return None;
    }
    Some(path)
}

/// The schema of the intake file; applied at every open (it only creates what is missing).
pub(super) const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS intake_batches (
    id            INTEGER PRIMARY KEY,
    received_at   BIGINT NOT NULL,
    observations  TEXT NOT NULL
)";

/// The intake of a SQLite store.
#[derive(Debug)]
pub(super) struct Intake {
    /// One connection to the intake file, with the store's file attached as `store`.
    pub(super) pool: AnyPool,
    /// Batches up to this id are in the inbox, committed there: they are not moved again.
    moved: AtomicI64,
    /// Batches up to this id have been deleted from the intake.
    deleted: AtomicI64,
    last_delete: Mutex<Instant>,
    /// The delivery keys of the batches in the file.
    held: Mutex<Held>,
    /// The one writer of the file and of `held`: a key is in `held` if and only if a batch
    /// that holds it is committed in the file, between two writes. It keeps the pool's
    /// connection between writes: returning it to the pool costs a task and a round trip to
    /// the connection's thread (sqlx pings a connection as it is returned), at every commit.
    writer: tokio::sync::Mutex<Writer>,
}

/// What the intake's one writer holds between writes.
#[derive(Debug)]
struct Writer {
    conn: Option<PoolConnection<Any>>,
    /// The id of the last batch committed: at open, the largest in the file.
    last_id: i64,
}

/// The delivery keys of the batches in the intake file, by batch. Each key is allocated once
/// and shared by the two (a reconcile of 100,000 representatives puts as many keys here).
#[derive(Debug, Default)]
struct Held {
    keys: HashSet<Arc<str>>,
    batches: BTreeMap<i64, Vec<Arc<str>>>,
}

impl Held {
    fn add(&mut self, batch: i64, keys: Vec<Arc<str>>) {
        self.keys.extend(keys.iter().cloned());
        self.batches.insert(batch, keys);
    }

    /// Forget the batches up to `last`, deleted from the file.
    fn drop_through(&mut self, last: i64) {
        let kept = self.batches.split_off(&(last + 1));
        for key in std::mem::replace(&mut self.batches, kept)
            .into_values()
            .flatten()
        {
            self.keys.remove(&key);
        }
    }
}

/// The delivery keys of a batch's observations, all that is read of them when the file is
/// opened. A batch that cannot be read holds no key here; the pipeline sets it aside.
fn delivery_keys(batch: &str) -> Vec<Arc<str>> {
    let Ok(items) = serde_json::from_str::<Vec<serde_json::Value>>(batch) else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|o| o.get("delivery_key")?.as_str().map(Arc::from))
        .collect()
}

impl Intake {
    /// The intake on `pool`: its schema made, batches of an older version's file converted,
    /// and the keys of the batches the file holds read back.
    pub(super) async fn open(pool: AnyPool) -> Result<Intake> {
        sqlx::query(SCHEMA).execute(&pool).await?;
        upgrade(&pool).await?;
        let mut held = Held::default();
        let rows = sqlx::query("SELECT id, observations FROM intake_batches ORDER BY id")
            .fetch_all(&pool)
            .await?;
        let mut last_id = 0;
        for row in rows {
            let text: String = row.try_get("observations")?;
            let id: i64 = row.try_get("id")?;
            last_id = last_id.max(id);
            held.add(id, delivery_keys(&text));
        }
        Ok(Intake {
            pool,
            moved: AtomicI64::new(0),
            deleted: AtomicI64::new(0),
            last_delete: Mutex::new(Instant::now()),
            held: Mutex::new(held),
            writer: tokio::sync::Mutex::new(Writer {
                conn: None,
                last_id,
            }),
        })
    }

    /// Make `observations` durable in one batch; [`super::Store::enqueue`] on SQLite. A
    /// delivery whose key the intake or the inbox holds, or that an earlier observation of the
    /// same call carries, is a duplicate and is not stored.
    pub(super) async fn enqueue(
        &self,
        observations: &[Observation],
        now: Millis,
    ) -> Result<Vec<Enqueued>> {
        let mut writer = self.writer.lock().await;
        let mut out = vec![Enqueued::Duplicate; observations.len()];
        let mut fresh: Vec<usize> = Vec::with_capacity(observations.len());
        {
            let held = self.held();
            let mut seen = HashSet::with_capacity(observations.len());
            for (i, obs) in observations.iter().enumerate() {
                let key = obs.delivery_key.as_str();
                if !held.keys.contains(key) && seen.insert(key) {
                    fresh.push(i);
                }
            }
        }
        if fresh.is_empty() {
            return Ok(out);
        }
        // One round trip, with SQLite's anonymous `?` (module `script` says why): the keys the inbox holds already (the store's file is read, not
        // written: this never waits for the pipeline), then the batch. The batch keeps those
        // too, harmlessly: moving them is a no-op, and they are answered as duplicates.
        let mut sql = String::new();
        for chunk in fresh.chunks(KEYS_PER_LOOKUP) {
            sql.push_str(&format!(
                "SELECT 'held' AS part, delivery_key AS value FROM store.inbox
                 WHERE delivery_key IN ({});\n",
                vec!["?"; chunk.len()].join(", ")
            ));
        }
        sql.push_str(
            "INSERT INTO intake_batches (id, received_at, observations)
             VALUES (MAX(?, (SELECT COALESCE(MAX(id), 0) FROM intake_batches)) + 1, ?, ?)
             RETURNING 'batch' AS part, CAST(id AS TEXT) AS value",
        );
        let mut text = String::with_capacity(fresh.len() * 512);
        text.push('[');
        for (n, &i) in fresh.iter().enumerate() {
            if n > 0 {
                text.push(',');
            }
            text.push_str(&to_json(&observations[i]));
        }
        text.push(']');
        let mut q = sqlx::query(&sql).persistent(fresh.len() <= KEEP_PREPARED_KEYS);
        for &i in &fresh {
            q = q.bind(observations[i].delivery_key.as_str());
        }
        // Above the last id committed, which the pipeline may have moved past and deleted
        // (at open, the largest in the file: the batches found then may all be moved and
        // deleted before the first new one), and above any batch in the file.
        // One statement writes: it is a transaction of its own, durable when it returns.
        let q = q.bind(writer.last_id).bind(now).bind(text);
        let rows = written(&mut writer, &self.pool, async |conn| {
            q.fetch_all(conn).await
        })
        .await?;
        let mut in_inbox = HashSet::new();
        let mut batch = None;
        for row in rows {
            let part: String = row.try_get("part")?;
            let value: String = row.try_get("value")?;
            if part == "batch" {
                batch = value.parse::<i64>().ok();
            } else {
                in_inbox.insert(value);
            }
        }
        let batch = batch.ok_or_else(|| {
            let e = std::io::Error::other("the insert returned no id");
            super::corrupt("intake_batches.id", e)
        })?;
        writer.last_id = batch;
        let keys = fresh
            .iter()
            .map(|&i| Arc::from(observations[i].delivery_key.as_str()))
            .collect();
        self.held().add(batch, keys);
        for i in fresh {
            if !in_inbox.contains(&observations[i].delivery_key) {
                out[i] = Enqueued::Accepted;
            }
        }
        Ok(out)
    }

    /// Batches with ids above this are still to be moved.
    pub(super) fn moved(&self) -> i64 {
        self.moved.load(Ordering::Acquire)
    }

    /// Batches up to `last` are committed in the inbox. Deletes them from the intake when
    /// enough are waiting or enough time has passed; a failed delete is tried again next time
    /// (the batches are not moved again meanwhile, and after a restart moving them again is a
    /// no-op).
    pub(super) async fn moved_through(&self, last: i64) -> Result<()> {
        let moved = self.moved.fetch_max(last, Ordering::AcqRel).max(last);
        let waiting = moved - self.deleted.load(Ordering::Acquire);
        if waiting >= DELETE_BATCHES
            || (waiting > 0 && self.last_delete().elapsed() >= DELETE_EVERY)
        {
            self.delete_moved().await?;
        }
        Ok(())
    }

    /// Delete every moved batch now. Their moves have all committed: `moved` is raised only
    /// after a move's commit returns.
    pub(super) async fn delete_moved(&self) -> Result<()> {
        let mut writer = self.writer.lock().await;
        let moved = self.moved();
        if moved <= self.deleted.load(Ordering::Acquire) {
            return Ok(());
        }
        let delete = sqlx::query("DELETE FROM intake_batches WHERE id <= $1").bind(moved);
        // The batch with the largest id may go: the writer remembers it.
        written(&mut writer, &self.pool, async |conn| {
            delete.execute(conn).await
        })
        .await?;
        self.held().drop_through(moved);
        self.deleted.fetch_max(moved, Ordering::AcqRel);
        *self.last_delete() = Instant::now();
        Ok(())
    }

    /// Give the writer's connection back to the pool (before the pool is closed).
    pub(super) async fn release(&self) {
        self.writer.lock().await.conn.take();
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn last_delete(&self) -> std::sync::MutexGuard<'_, Instant> {
        self.last_delete
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Run `write` on the writer's connection, taken from `pool` if the writer does not hold it.
/// After an error the connection goes back to the pool, which tests it and replaces it if it
/// is broken.
async fn written<T>(
    writer: &mut Writer,
    pool: &AnyPool,
    write: impl AsyncFnOnce(&mut AnyConnection) -> std::result::Result<T, sqlx::Error>,
) -> Result<T> {
    let mut conn = match writer.conn.take() {
        Some(conn) => conn,
        None => pool.acquire().await?,
    };
    let result = write(&mut conn).await;
    if result.is_ok() {
        writer.conn = Some(conn);
    }
    Ok(result?)
}

/// Files of older versions: a batch table numbered by `AUTOINCREMENT` is rebuilt without it
/// (keeping the ids), and a table with a row per observation (`intake`) becomes batches of
/// one, in their order. Each in one transaction.
async fn upgrade(pool: &AnyPool) -> Result<()> {
    let autoincrement: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM sqlite_master
         WHERE type = 'table' AND name = 'intake_batches' AND sql LIKE '%AUTOINCREMENT%'",
    )
    .fetch_one(pool)
    .await?;
    if autoincrement > 0 {
        let mut tx = pool.begin().await?;
        sqlx::query("ALTER TABLE intake_batches RENAME TO intake_batches_numbered")
            .execute(&mut *tx)
            .await?;
        sqlx::query(SCHEMA).execute(&mut *tx).await?;
        sqlx::query(
            "INSERT INTO intake_batches (id, received_at, observations)
             SELECT id, received_at, observations FROM intake_batches_numbered ORDER BY id",
        )
        .execute(&mut *tx)
        .await?;
        sqlx::query("DROP TABLE intake_batches_numbered")
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
    }
    let old: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'intake'",
    )
    .fetch_one(pool)
    .await?;
    if old == 0 {
        return Ok(());
    }
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO intake_batches (received_at, observations)
         SELECT received_at, '[' || observation || ']' FROM intake ORDER BY id",
    )
    .execute(&mut *tx)
    .await?;
    sqlx::query("DROP TABLE intake").execute(&mut *tx).await?;
    tx.commit().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_intake_file_sits_beside_the_store_file() {
        assert_eq!(
            intake_path("sqlite:presync.db").as_deref(),
            Some("presync.db-intake")
        );
        assert_eq!(
            intake_path("sqlite:///var/lib/presync/presync.db?mode=rwc").as_deref(),
            Some("/var/lib/presync/presync.db-intake")
        );
        assert_eq!(
            intake_path("sqlite:/tmp/x.db?mode=rwc").as_deref(),
            Some("/tmp/x.db-intake")
        );
        assert_eq!(intake_path("sqlite::memory:"), None);
        assert_eq!(intake_path("postgres://u@h/db"), None);
    }
}
