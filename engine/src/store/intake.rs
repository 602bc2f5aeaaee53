//! The intake: on SQLite, where an ingested observation is made durable before its webhook is
//! acknowledged, in a database file of its own beside the store's.
//!
//! SQLite has one writer per file. With the inbox in the store's file, a webhook's commit
//! queued behind the resolver's and the dispatcher's transactions, which hold that writer for
//! milliseconds each (BENCHMARKS.md, "The misses at 800e4de"). The intake file has its own
//! connection and its own writer, so acknowledging a webhook waits only for other webhooks.
//!
//! The pipeline moves intake rows into the inbox at the start of each claim, in the claim's own
//! transaction (the store's connection attaches the intake file as `intake`), and deletes them
//! from the intake only after that transaction has committed: a row is always in one file or
//! the other, or, after a crash between the two steps, in both, and then moving it again is a
//! no-op because the inbox refuses a delivery key it holds. The intake's connection attaches
//! the store's file as `store` to check that refusal before it acknowledges: a delivery is a
//! duplicate if the intake or the inbox holds its key. Both connections only read the other's
//! file, so neither ever waits for the other's writer.
//!
//! The intake's rows carry increasing ids (`AUTOINCREMENT`: never reused, even after a
//! delete), and one writer commits them in id order: the rows a reader sees are a prefix of the
//! ids, with any later ones beyond it. That is what lets the pipeline remember what it moved as
//! one id.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sqlx::AnyPool;

use super::Result;

/// Intake rows moved per claim, at most: a claim's transaction stays short under a backlog.
pub(super) const MOVE_ROWS: i64 = 4_096;

/// Moved rows are deleted from the intake once this many are waiting, or [`DELETE_EVERY`] after
/// the last delete: each delete is a commit on the intake's connection, between webhooks'.
const DELETE_ROWS: i64 = 1_024;
const DELETE_EVERY: Duration = Duration::from_secs(1);

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
pub(super) const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS intake (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    delivery_key  TEXT NOT NULL UNIQUE,
    system        TEXT NOT NULL,
    external_id   TEXT NOT NULL,
    observation   TEXT NOT NULL,
    received_at   BIGINT NOT NULL
)";

/// The intake of a SQLite store.
#[derive(Debug)]
pub(super) struct Intake {
    /// One connection to the intake file, with the store's file attached as `store`.
    pub(super) pool: AnyPool,
    /// Rows up to this id are in the inbox, committed there: they are not moved again.
    moved: AtomicI64,
    /// Rows up to this id have been deleted from the intake.
    deleted: AtomicI64,
    last_delete: Mutex<Instant>,
}

impl Intake {
    pub(super) fn new(pool: AnyPool) -> Intake {
        Intake {
            pool,
            moved: AtomicI64::new(0),
            deleted: AtomicI64::new(0),
            last_delete: Mutex::new(Instant::now()),
        }
    }

    /// Rows with ids above this are still to be moved.
    pub(super) fn moved(&self) -> i64 {
        self.moved.load(Ordering::Acquire)
    }

    /// Rows up to `last` are committed in the inbox. Deletes them from the intake when enough
    /// are waiting or enough time has passed; a failed delete is tried again next time (the
    /// rows are not moved again meanwhile, and after a restart moving them again is a no-op).
    pub(super) async fn moved_through(&self, last: i64) -> Result<()> {
        let moved = self.moved.fetch_max(last, Ordering::AcqRel).max(last);
        let waiting = moved - self.deleted.load(Ordering::Acquire);
        if waiting >= DELETE_ROWS || (waiting > 0 && self.last_delete().elapsed() >= DELETE_EVERY) {
            self.delete_moved().await?;
        }
        Ok(())
    }

    /// Delete every moved row now. Their moves have all committed: `moved` is raised only
    /// after a move's commit returns.
    pub(super) async fn delete_moved(&self) -> Result<()> {
        let moved = self.moved();
        if moved <= self.deleted.load(Ordering::Acquire) {
            return Ok(());
        }
        sqlx::query("DELETE FROM intake WHERE id <= $1")
            .bind(moved)
            .execute(&self.pool)
            .await?;
        self.deleted.fetch_max(moved, Ordering::AcqRel);
        *self.last_delete() = Instant::now();
        Ok(())
    }

    fn last_delete(&self) -> std::sync::MutexGuard<'_, Instant> {
        self.last_delete
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
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
