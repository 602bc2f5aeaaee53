//! The outbox: latest desired state per (representative, target), claimed by dispatchers.
//!
//! A write goes through three steps:
//! 1. [`Store::claim_outbox`] leases due rows of one target to one instance;
//! 2. [`Store::begin_write`] re-reads the row (a newer desired state may have replaced it) and
//!    records the echo expectation, durably, before anything goes on the wire;
//! 3. [`Store::finish_write`] records the outcome: the written state, the expectation's
//!    completion, and removes the row unless a newer desired state replaced it meanwhile.
//!
//! The dispatcher does steps 1 and 2 for a whole batch in one transaction
//! ([`Store::claim_writes`]) and step 3 for whatever writes have ended in one transaction
//! ([`Store::finish_writes`]): on SQLite every commit is an fsync, and one per write was the
//! pipeline's limit. The running service's resolver does steps 1 and 2 in the transaction
//! that decided the writes ([`Store::claim_resolve_and_begin_writes`]), so that a decision's
//! first write needs no commit of its own before it goes out.
//!
//! A crash between 2 and 3 leaves the row claimed; when the lease runs out it is written again.
//! That is the only way a target receives the same write twice, and only when the first write's
//! outcome was unknown.

use sqlx::any::{Any, AnyRow};
use sqlx::{Row, Transaction};

use std::collections::HashMap;

use super::{
    from_json, insert_history, to_json, tuples, Dialect, HistoryRow, Result, Script, Statement,
    Store,
};
use crate::model::{Availability, Desired, ExternalId, Millis, RepId, SystemId, WrittenState};

/// A claimed outbox row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRow {
    pub rep_id: RepId,
    pub target: SystemId,
    pub external_id: ExternalId,
    pub desired: Desired,
    /// The canonical version it carries (0 for a withdrawal).
    pub version: i64,
    /// Grows with every replacement of the row's desired state.
    pub seq: i64,
    pub attempts: i64,
    pub reason: String,
    /// When the observation that caused it was received: the start of end-to-end lag.
    pub origin_observed_at: Millis,
}

impl OutboxRow {
    fn from_row(r: &AnyRow) -> Result<OutboxRow> {
        Ok(OutboxRow {
            rep_id: RepId(r.try_get("rep_id")?),
            target: SystemId(r.try_get("target")?),
            external_id: ExternalId(r.try_get("external_id")?),
            desired: from_json(&r.try_get::<String, _>("desired")?, "outbox.desired")?,
            version: r.try_get("version")?,
            seq: r.try_get("seq")?,
            attempts: r.try_get("attempts")?,
            reason: r.try_get("reason")?,
            origin_observed_at: r.try_get("origin_observed_at")?,
        })
    }
}

const OUTBOX_COLUMNS: &str =
    "rep_id, target, external_id, desired, version, seq, attempts, reason, origin_observed_at";

/// How a write ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteResult {
    /// The target confirmed it.
    Done,
    /// It failed. `permanent`: drop the row. Otherwise retry at `retry_at`.
    Failed {
        permanent: bool,
        outcome_unknown: bool,
        retry_at: Millis,
        class: String,
        message: String,
    },
}

impl Store {
    /// Claim up to `limit` due rows of `target` for `instance` until `claim_until`.
    pub async fn claim_outbox(
        &self,
        target: &SystemId,
        instance: &str,
        now: Millis,
        claim_until: Millis,
        limit: i64,
    ) -> Result<Vec<OutboxRow>> {
        let mut conn = self.pool.acquire().await?;
        self.claim_in(&mut conn, target, instance, now, claim_until, limit)
            .await
    }

    /// The claim of [`Store::claim_outbox`], on `conn` (a transaction's, or the pool's).
    async fn claim_in(
        &self,
        conn: &mut sqlx::AnyConnection,
        target: &SystemId,
        instance: &str,
        now: Millis,
        claim_until: Millis,
        limit: i64,
    ) -> Result<Vec<OutboxRow>> {
        let sql = format!(
            "UPDATE outbox SET claimed_by = $1, claim_until = $2
             WHERE (rep_id, target) IN (
                 SELECT rep_id, target FROM outbox
                 WHERE target = $3 AND not_before <= $4 AND (claim_until IS NULL OR claim_until < $4)
                 ORDER BY not_before LIMIT $5{})
             RETURNING {OUTBOX_COLUMNS}",
            self.dialect.skip_locked()
        );
        let rows = sqlx::query(&sql)
            .bind(instance)
            .bind(claim_until)
            .bind(target.as_str())
            .bind(now)
            .bind(limit)
            .fetch_all(&mut *conn)
            .await?;
        rows.iter().map(OutboxRow::from_row).collect()
    }

    /// Claim up to `limit` due rows of `target` and record the echo expectation of each write
    /// about to be made, in one transaction: [`Store::claim_outbox`] and [`Store::begin_write`]
    /// for a whole batch with one commit. Returns each row with its expectation's id (`None`
    /// for a withdrawal).
    pub async fn claim_writes(
        &self,
        target: &SystemId,
        instance: &str,
        now: Millis,
        claim_until: Millis,
        limit: i64,
        echo_ttl: i64,
    ) -> Result<Vec<(OutboxRow, Option<i64>)>> {
        self.claim_writes_within(target, instance, now, claim_until, || limit, echo_ttl)
            .await
    }

    /// [`Store::claim_writes`] of as many rows as `limit` allows, asked once the claim has
    /// its turn at the database: on SQLite a resolve that claims writes
    /// ([`Store::claim_resolve_and_begin_writes`]) may have gone first, and what `limit` hands
    /// out (write slots, say) is not held while waiting for it. Nothing is claimed when it
    /// allows none.
    pub async fn claim_writes_within(
        &self,
        target: &SystemId,
        instance: &str,
        now: Millis,
        claim_until: Millis,
        limit: impl FnOnce() -> i64 + Send,
        echo_ttl: i64,
    ) -> Result<Vec<(OutboxRow, Option<i64>)>> {
        let _turn = self.pipeline_turn().await;
        let limit = limit();
        if limit <= 0 {
            return Ok(Vec::new());
        }
        let mut tx = self.pool.begin().await?;
        let begun = self
            .claim_writes_in(&mut tx, target, instance, now, claim_until, limit, echo_ttl)
            .await?;
        tx.commit().await?;
        Ok(begun)
    }

    /// The claim of [`Store::claim_writes`], in `tx`, without committing.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn claim_writes_in(
        &self,
        tx: &mut Transaction<'_, Any>,
        target: &SystemId,
        instance: &str,
        now: Millis,
        claim_until: Millis,
        limit: i64,
        echo_ttl: i64,
    ) -> Result<Vec<(OutboxRow, Option<i64>)>> {
        let rows = self
            .claim_in(tx, target, instance, now, claim_until, limit)
            .await?;
        let expectations = expect_all(tx, &rows, now, echo_ttl).await?;
        Ok(rows.into_iter().zip(expectations).collect())
    }

    /// The earliest time a row of `target` becomes due, if any row waits.
    pub async fn next_due(&self, target: &SystemId) -> Result<Option<Millis>> {
        let t: Option<i64> = sqlx::query_scalar(
            "SELECT MIN(CASE WHEN claim_until IS NOT NULL AND claim_until > not_before
                             THEN claim_until ELSE not_before END)
             FROM outbox WHERE target = $1",
        )
        .bind(target.as_str())
        .fetch_one(&self.pool)
        .await?;
        Ok(t)
    }

    /// Re-read a claimed row and record the echo expectation of the write about to be made.
    /// `None` when the row is gone or no longer held by `instance` (a newer decision cancelled
    /// it, or the lease passed): nothing should be written.
    pub async fn begin_write(
        &self,
        rep: &RepId,
        target: &SystemId,
        instance: &str,
        now: Millis,
        echo_ttl: i64,
    ) -> Result<Option<(OutboxRow, Option<i64>)>> {
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(&format!(
            "SELECT {OUTBOX_COLUMNS} FROM outbox
             WHERE rep_id = $1 AND target = $2 AND claimed_by = $3 AND claim_until >= $4{}",
            self.dialect.lock_row()
        ))
        .bind(rep.as_str())
        .bind(target.as_str())
        .bind(instance)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row.as_ref().map(OutboxRow::from_row).transpose()? else {
            return Ok(None);
        };
        let expectation = expect(&mut tx, &row, now, echo_ttl).await?;
        tx.commit().await?;
        Ok(Some((row, expectation)))
    }

    /// Record how a write begun with [`Store::begin_write`] ended: [`Store::finish_writes`] of
    /// one, for a target with source timestamps.
    pub async fn finish_write(
        &self,
        row: &OutboxRow,
        instance: &str,
        expectation: Option<i64>,
        now: Millis,
        result: &WriteResult,
    ) -> Result<()> {
        let write = FinishedWrite {
            row: row.clone(),
            expectation,
            at: now,
            result: result.clone(),
        };
        self.finish_writes(std::slice::from_ref(&write), instance, |_| false)
            .await
    }

    /// Record how several writes ended, in one transaction (one commit, one fsync on SQLite).
    /// `Err` means nothing was recorded; recording them one by one (a batch of one each) then
    /// isolates the one that fails, whose row stays claimed and is written again when the
    /// claim runs out.
    ///
    /// For a confirmed write to a system `untimed` says has no source timestamps, or of a
    /// withdrawal, the older expectations there are superseded in the same transaction: the
    /// system now shows the newer write, and without timestamps a later observation equal to
    /// an older write is the person's, not its echo.
    ///
    /// Representatives are locked first, in one global order (their ids' bytes), so that
    /// batches of two instances never deadlock on PostgreSQL.
    pub async fn finish_writes(
        &self,
        writes: &[FinishedWrite],
        instance: &str,
        untimed: impl Fn(&SystemId) -> bool,
    ) -> Result<()> {
        let _turn = self.pipeline_turn().await;
        let mut order: Vec<&FinishedWrite> = writes.iter().collect();
        order.sort_by(|a, b| a.row.rep_id.cmp(&b.row.rep_id));
        let mut tx = self.pool.begin().await?;
        if self.dialect == super::Dialect::Postgres && !order.is_empty() {
            let sql = format!(
                "SELECT rep_id FROM canonical WHERE rep_id IN ({}) ORDER BY rep_id{} FOR UPDATE",
                super::placeholders(1, order.len()),
                self.dialect.bytewise()
            );
            let mut q = sqlx::query(&sql);
            for w in &order {
                q = q.bind(w.row.rep_id.as_str());
            }
            q.execute(&mut *tx).await?;
        }
        // Confirmed writes are recorded a statement per table, in runs whose (rep, target)
        // pairs are distinct (a statement must not touch one row twice; a claim's writes always
        // are). Failed writes are recorded one by one.
        let (done, failed): (Vec<&FinishedWrite>, Vec<&FinishedWrite>) = order
            .into_iter()
            .partition(|w| w.result == WriteResult::Done);
        let mut run: Vec<&FinishedWrite> = Vec::new();
        let mut keys = std::collections::HashSet::new();
        for w in done {
            if run.len() == super::ROWS_PER_STATEMENT
                || !keys.insert((&w.row.rep_id, &w.row.target))
            {
                record_done(&mut tx, self.dialect, &run, instance, &untimed).await?;
                run.clear();
                keys.clear();
                keys.insert((&w.row.rep_id, &w.row.target));
            }
            run.push(w);
        }
        record_done(&mut tx, self.dialect, &run, instance, &untimed).await?;
        for w in failed {
            if let WriteResult::Failed {
                permanent,
                outcome_unknown,
                retry_at,
                class,
                message,
            } = &w.result
            {
                record_failed(
                    &mut tx,
                    w,
                    instance,
                    *permanent,
                    *outcome_unknown,
                    *retry_at,
                    class,
                    message,
                )
                .await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }
}

/// How one write ended, for [`Store::finish_writes`].
#[derive(Debug, Clone)]
pub struct FinishedWrite {
    pub row: OutboxRow,
    pub expectation: Option<i64>,
    /// When it ended.
    pub at: Millis,
    pub result: WriteResult,
}

/// Record the echo expectation of a write about to be made (none for a withdrawal).
async fn expect(
    tx: &mut Transaction<'_, Any>,
    row: &OutboxRow,
    now: Millis,
    echo_ttl: i64,
) -> Result<Option<i64>> {
    let ids = expect_all(tx, std::slice::from_ref(row), now, echo_ttl).await?;
    Ok(ids.into_iter().next().flatten())
}

/// [`expect`] for each of `rows`, whose (representative, target) pairs are distinct (a claim's
/// are: they are the outbox's key), one statement per [`super::ROWS_PER_STATEMENT`]. Returns
/// the expectations' ids in `rows`' order.
async fn expect_all(
    tx: &mut Transaction<'_, Any>,
    rows: &[OutboxRow],
    now: Millis,
    echo_ttl: i64,
) -> Result<Vec<Option<i64>>> {
    let sets: Vec<(&OutboxRow, &crate::model::Presence)> = rows
        .iter()
        .filter_map(|row| match &row.desired {
            Desired::Set(p) => Some((row, p)),
            Desired::Withdraw => None,
        })
        .collect();
    let mut ids: HashMap<(String, String), i64> = HashMap::with_capacity(sets.len());
    for chunk in sets.chunks(super::ROWS_PER_STATEMENT) {
        let sql = format!(
            "INSERT INTO expectations (rep_id, system, availability, version, opened_at, expires_at)
             VALUES {}
             RETURNING id, rep_id, system",
            super::shaped_tuples(3, chunk.len(), 4, |p| format!(
                "({}, {}, {}, {}, $1, $2)",
                p[0], p[1], p[2], p[3]
            ))
        );
        let mut q = sqlx::query(&sql)
            .bind(now)
            .bind(now.saturating_add(echo_ttl));
        for (row, p) in chunk {
            q = q
                .bind(row.rep_id.as_str())
                .bind(row.target.as_str())
                .bind(p.availability.as_str())
                .bind(p.version);
        }
        for r in q.fetch_all(&mut **tx).await? {
            ids.insert(
                (r.try_get("rep_id")?, r.try_get("system")?),
                r.try_get("id")?,
            );
        }
    }
    Ok(rows
        .iter()
        .map(|row| match row.desired {
            Desired::Set(_) => ids
                .get(&(row.rep_id.to_string(), row.target.to_string()))
                .copied(),
            Desired::Withdraw => None,
        })
        .collect())
}

/// The newest expectation of a confirmed write's target that older ones are superseded by, if
/// any: the write's own when the target has no source timestamps (`untimed`), all of them
/// after a withdrawal.
fn newest_expectation(w: &FinishedWrite, untimed: impl Fn(&SystemId) -> bool) -> Option<i64> {
    match (w.expectation, &w.row.desired) {
        // Once presync's contribution is withdrawn, what the system shows is not presync's: no
        // earlier write can echo any more.
        (_, Desired::Withdraw) => Some(i64::MAX),
        (Some(id), _) if untimed(&w.row.target) => Some(id),
        _ => None,
    }
}

fn wrote(row: &OutboxRow) -> String {
    format!("wrote {} to {}", describe(&row.desired), row.target)
}

/// Record confirmed writes, whose (representative, target) pairs are distinct, a statement per
/// table: what [`Store::finish_writes`] records for one confirmed write, for all of them. The
/// statements go in two [`Script`]s: the second's depend on what the first read.
async fn record_done(
    tx: &mut Transaction<'_, Any>,
    dialect: Dialect,
    done: &[&FinishedWrite],
    instance: &str,
    untimed: impl Fn(&SystemId) -> bool,
) -> Result<()> {
    if done.is_empty() {
        return Ok(());
    }
    let mut script = Script::new(dialect);
    // The expectations are complete: their echo carries a time before now.
    let completed: Vec<(i64, Millis)> = done
        .iter()
        .filter_map(|w| w.expectation.map(|id| (id, w.at)))
        .collect();
    if !completed.is_empty() {
        let sql = format!(
            "UPDATE expectations SET completed_at = v.column2
             FROM (VALUES {}) AS v WHERE expectations.id = v.column1",
            tuples(1, completed.len(), 2)
        );
        let mut q = Statement::new(sql);
        for (id, at) in &completed {
            q = q.bind(*id).bind(*at);
        }
        script.push(q);
    }
    // A write that outlived its lease may finish after a newer one: the record of what was
    // written never goes backwards.
    let sql = format!(
        "SELECT rep_id, system, written FROM system_state WHERE rep_id IN ({})",
        super::placeholders(1, done.len())
    );
    let mut q = Statement::new(sql);
    for w in done {
        q = q.bind(w.row.rep_id.as_str());
    }
    script.push(q);
    let mut recorded: HashMap<(String, String), WrittenState> = HashMap::new();
    for r in script.run(tx).await? {
        if let Some(w) = r.try_get::<Option<String>, _>("written")? {
            recorded.insert(
                (r.try_get("rep_id")?, r.try_get("system")?),
                from_json(&w, "system_state.written")?,
            );
        }
    }
    let mut script = Script::new(dialect);
    let forward: Vec<&&FinishedWrite> = done
        .iter()
        .filter(|w| {
            let key = (w.row.rep_id.to_string(), w.row.target.to_string());
            !recorded
                .get(&key)
                .is_some_and(|prev| prev.version > w.row.version && w.row.version > 0)
        })
        .collect();
    if !forward.is_empty() {
        let sql = format!(
            "INSERT INTO system_state (rep_id, system, written) VALUES {}
             ON CONFLICT (rep_id, system) DO UPDATE SET written = excluded.written",
            tuples(1, forward.len(), 3)
        );
        let mut q = Statement::new(sql);
        for w in &forward {
            let written = WrittenState {
                availability: w.row.desired.availability(),
                version: w.row.version,
                written_at: w.at,
            };
            q = q
                .bind(w.row.rep_id.as_str())
                .bind(w.row.target.as_str())
                .bind(to_json(&written));
        }
        script.push(q);
    }
    // The rows are done with; one whose desired state was replaced while its write was on the
    // wire is given back instead, to be written again (below: the only rows this script
    // returns are the ones it removed).
    let sql = format!(
        "DELETE FROM outbox WHERE claimed_by = $1 AND (rep_id, target, seq) IN (VALUES {})
         RETURNING rep_id, target",
        tuples(2, done.len(), 3)
    );
    let mut q = Statement::new(sql).bind(instance);
    for w in done {
        q = q
            .bind(w.row.rep_id.as_str())
            .bind(w.row.target.as_str())
            .bind(w.row.seq);
    }
    script.push(q);
    let rows: Vec<HistoryRow> = done
        .iter()
        .map(|w| history_row(&w.row, w.at, "ok", wrote(&w.row)))
        .collect();
    script.extend(insert_history(&rows));
    let newest: Vec<(&FinishedWrite, i64)> = done
        .iter()
        .filter_map(|w| newest_expectation(w, &untimed).map(|n| (*w, n)))
        .collect();
    if !newest.is_empty() {
        let sql = format!(
            "UPDATE expectations SET superseded = 1
             FROM (VALUES {}) AS v
             WHERE expectations.rep_id = v.column1 AND expectations.system = v.column2
               AND expectations.id < v.column3 AND expectations.superseded = 0",
            tuples(1, newest.len(), 3)
        );
        let mut q = Statement::new(sql);
        for (w, n) in &newest {
            q = q
                .bind(w.row.rep_id.as_str())
                .bind(w.row.target.as_str())
                .bind(*n);
        }
        script.push(q);
    }
    let mut removed = std::collections::HashSet::new();
    for r in script.run(tx).await? {
        removed.insert((
            r.try_get::<String, _>("rep_id")?,
            r.try_get::<String, _>("target")?,
        ));
    }
    for w in done {
        if !removed.contains(&(w.row.rep_id.to_string(), w.row.target.to_string())) {
            release(tx, &w.row, instance, None).await?;
        }
    }
    Ok(())
}

/// Record a failed write: its expectation is dropped (it never took effect) or completed (it
/// may have), and the row is given back to be retried, or, refused for good, removed with a
/// history row saying why.
#[allow(clippy::too_many_arguments)]
async fn record_failed(
    tx: &mut Transaction<'_, Any>,
    w: &FinishedWrite,
    instance: &str,
    permanent: bool,
    outcome_unknown: bool,
    retry_at: Millis,
    class: &str,
    message: &str,
) -> Result<()> {
    let row = &w.row;
    match (w.expectation, outcome_unknown) {
        // It never took effect: nothing to expect back.
        (Some(id), false) => {
            sqlx::query("DELETE FROM expectations WHERE id = $1")
                .bind(id)
                .execute(&mut **tx)
                .await?;
        }
        // It took effect, if at all, by now: its echo carries an earlier time.
        (Some(id), true) => {
            sqlx::query("UPDATE expectations SET completed_at = $2 WHERE id = $1")
                .bind(id)
                .bind(w.at)
                .execute(&mut **tx)
                .await?;
        }
        (None, _) => {}
    }
    if permanent {
        done_with(tx, row, instance).await?;
        let detail = format!(
            "{} refused {}: {message}",
            row.target,
            describe(&row.desired)
        );
        for q in insert_history(&[history_row(row, w.at, class, detail)]) {
            q.run(tx).await?;
        }
        Ok(())
    } else {
        release(tx, row, instance, Some(retry_at)).await
    }
}

/// The row's write is over: remove it, unless a newer desired state replaced it meanwhile, in
/// which case give it back to be written.
async fn done_with(tx: &mut Transaction<'_, Any>, row: &OutboxRow, instance: &str) -> Result<()> {
    let removed = sqlx::query(
        "DELETE FROM outbox WHERE rep_id = $1 AND target = $2 AND seq = $3 AND claimed_by = $4",
    )
    .bind(row.rep_id.as_str())
    .bind(row.target.as_str())
    .bind(row.seq)
    .bind(instance)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    if removed == 0 {
        release(tx, row, instance, None).await?;
    }
    Ok(())
}

/// Give a claimed row back, due at `retry_at` (or at once). A row whose desired state was
/// replaced while the write was on the wire is due at once: the backoff was the old state's.
async fn release(
    tx: &mut Transaction<'_, Any>,
    row: &OutboxRow,
    instance: &str,
    retry_at: Option<Millis>,
) -> Result<()> {
    sqlx::query(
        "UPDATE outbox SET claimed_by = NULL, claim_until = NULL,
             attempts = CASE WHEN seq = $4 AND $5 = 1 THEN attempts + 1 ELSE attempts END,
             not_before = CASE WHEN seq = $4 AND $5 = 1 THEN $6 ELSE not_before END
         WHERE rep_id = $1 AND target = $2 AND claimed_by = $3",
    )
    .bind(row.rep_id.as_str())
    .bind(row.target.as_str())
    .bind(instance)
    .bind(row.seq)
    .bind(i64::from(retry_at.is_some()))
    .bind(retry_at.unwrap_or(0))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

fn describe(d: &Desired) -> String {
    match d {
        Desired::Set(p) => format!("{} (version {})", p.availability, p.version),
        Desired::Withdraw => "withdrawal of presync's contribution".to_owned(),
    }
}

fn history_row(row: &OutboxRow, now: Millis, outcome: &str, detail: String) -> HistoryRow {
    HistoryRow {
        rep: Some(row.rep_id.to_string()),
        system: row.target.to_string(),
        external_id: row.external_id.to_string(),
        delivery_key: None,
        at: now,
        rule: "write".to_owned(),
        outcome: outcome.to_owned(),
        availability: row.desired.availability().map(Availability::as_str),
        version: Some(row.version),
        writes: None,
        detail,
    }
}
