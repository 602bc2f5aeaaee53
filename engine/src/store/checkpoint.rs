//! The checkpointer: on SQLite, copies each file's write-ahead log back into the database on a
//! connection of its own, so that commits do not.
//!
//! In WAL mode a commit appends pages to the log, and SQLite's default is that the commit
//! which takes the log past 1,000 pages also checkpoints it: writes those pages into the
//! database file and syncs it, before that commit returns. Under a steady load that is one
//! commit in every few dozen, and it takes many times as long as the others: on a slow disk it
//! set the tail of the end-to-end latency (BENCHMARKS.md, "Checkpoints off the commit path").
//!
//! Here the store's and the intake's connections checkpoint only when the log has grown far
//! past what the checkpointer keeps it to ([`BACKSTOP_PAGES`]: if it falls behind, the log
//! still has a bound), and a task checkpoints each file every interval on a connection of its
//! own, in SQLite's `PASSIVE` mode: it copies what no reader still needs, without waiting for
//! or blocking the writer or the readers. Once the whole log is copied, the next commit starts
//! the log again from its beginning, as it would after an inline checkpoint.
//!
//! A checkpoint writes to the database file only pages that are already durable in the log,
//! so it changes nothing about what survives a crash: with `synchronous = FULL` it syncs the
//! log before and the database after, as an inline checkpoint does.

use std::time::Duration;

use sqlx::AnyPool;
use tracing::{debug, info, warn};

use super::Result;

/// Log pages at which a connection that writes checkpoints inline after all: the bound on the
/// log when the checkpointer falls behind (40 MiB with 4 KiB pages).
pub(super) const BACKSTOP_PAGES: u32 = 10_000;

/// SQLite's own default for the same, kept when there is no checkpointer.
pub(super) const INLINE_PAGES: u32 = 1_000;

/// The task that checkpoints a store's files; stops when dropped.
#[derive(Debug)]
pub(super) struct Checkpointer {
    task: tokio::task::JoinHandle<()>,
    pools: Vec<AnyPool>,
}

impl Checkpointer {
    /// Checkpoint the files at `urls` every `every`, each on a connection of its own that
    /// syncs as `synchronous` says (the store's setting: a checkpoint syncs as its connection
    /// does). The connection never writes a row, so it never waits for the writer.
    pub(super) async fn start(
        urls: &[String],
        synchronous: &'static str,
        every: Duration,
    ) -> Result<Checkpointer> {
        let mut pools = Vec::with_capacity(urls.len());
        for url in urls {
            pools.push(super::sqlite_pool(url, synchronous, None, Vec::new()).await?);
        }
        let task = tokio::spawn(run(pools.clone(), every));
        Ok(Checkpointer { task, pools })
    }

    /// Stop the task and close its connections (before the store's files are closed).
    pub(super) async fn stop(&self) {
        self.task.abort();
        for pool in &self.pools {
            pool.close().await;
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Every `every`, one `PASSIVE` checkpoint of each file.
async fn run(pools: Vec<AnyPool>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // A failure is logged once until a checkpoint succeeds again (a full disk fails every
    // one, ten times a second).
    let mut failing = vec![false; pools.len()];
    loop {
        tick.tick().await;
        for (pool, failing) in pools.iter().zip(failing.iter_mut()) {
            let checkpoint = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)").execute(pool);
            match checkpoint.await {
                Err(e) if !*failing => {
                    *failing = true;
                    warn!(error = %e, "A checkpoint failed; trying again until one succeeds");
                }
                Err(e) => debug!(error = %e, "A checkpoint failed again"),
                Ok(_) if *failing => {
                    *failing = false;
                    info!("Checkpoints succeed again");
                }
                Ok(_) => {}
            }
        }
    }
}
