//! The inbox (durable, deduplicated by delivery key) and the resolve transaction.

use std::collections::BTreeMap;
use std::str::FromStr;

use sqlx::any::Any;
use sqlx::{Row, Transaction};

use super::{
    from_json, insert_history, parse_availability, shaped_tuples, to_json, tuples, Dialect,
    HistoryRow, Result, Script, Statement, Store, StoreError, ROWS_PER_STATEMENT,
};
use crate::model::{
    Availability, Desired, Expectation, ExternalId, Millis, Observation, RepId, SystemId,
    SystemState,
};
use crate::rules::{Decision, OutboxOp, Outcome, PendingWrite, RepView, Rule};

/// Observations per `INSERT` of [`Store::enqueue`] (4 bound parameters each, and one shared).
const ENQUEUE_ROWS_PER_STATEMENT: usize = 1_000;

/// [`Store::enqueue`]'s statements for up to this many rows stay prepared between calls.
const KEEP_PREPARED_ROWS: usize = 64;

/// Whether an observation was new to the inbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    /// Stored; it will be resolved.
    Accepted,
    /// A delivery with the same key was stored before; nothing was added.
    Duplicate,
}

/// A claimed inbox row.
#[derive(Debug, Clone)]
pub struct InboxRow {
    pub id: i64,
    pub observation: Observation,
    /// How many times it has been claimed, this claim included.
    pub attempts: i64,
}

/// A claimed inbox row whose stored observation could not be read.
#[derive(Debug)]
pub struct UnreadableRow {
    pub id: i64,
    pub attempts: i64,
    pub error: StoreError,
}

/// Writes a resolve claims in its own transaction
/// ([`Store::claim_resolve_and_begin_writes`]).
pub struct WriteClaims<'a> {
    /// How many writes to a target may be claimed now. Asked once for each target the batch
    /// queued writes for.
    pub allow: &'a mut (dyn FnMut(&SystemId) -> i64 + Send),
    /// How long each write's echo expectation lasts.
    pub echo_ttl: i64,
}

impl std::fmt::Debug for WriteClaims<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteClaims")
            .field("echo_ttl", &self.echo_ttl)
            .finish_non_exhaustive()
    }
}

/// Writes claimed by a resolve, by target, each with its echo expectation's id (`None` for a
/// withdrawal).
pub type ClaimedWrites = Vec<(SystemId, Vec<(super::OutboxRow, Option<i64>)>)>;

/// What the resolve transaction did.
#[derive(Debug, Clone)]
pub enum Resolved {
    /// The row's claim had passed to another instance; nothing was done.
    LostClaim,
    /// The representative is not in the directory; recorded and dropped.
    UnknownRepresentative,
    /// The rules decided.
    Decided { rep: RepId, decision: Box<Decision> },
}

impl Store {
    /// Store observations in the inbox (on SQLite, in the intake, from where the pipeline moves
    /// them into the inbox), in one transaction. Returns, per observation, whether it was new:
    /// a delivery whose key the inbox or the intake holds is a duplicate. When this returns
    /// `Ok`, every accepted observation is durable.
    pub async fn enqueue(
        &self,
        observations: &[Observation],
        now: Millis,
    ) -> Result<Vec<Enqueued>> {
        if let Some(intake) = &self.intake {
            return intake.enqueue(observations, now).await;
        }
        // One statement per chunk. The keys it returns are the rows it stored; a key twice in
        // one batch is stored once, for its first delivery. One statement is a transaction of
        // its own: only several need a BEGIN and a COMMIT, two more round trips.
        let mut tx = if observations.len() > ENQUEUE_ROWS_PER_STATEMENT {
            Some(self.pool.begin().await?)
        } else {
            None
        };
        let mut stored = std::collections::HashSet::new();
        for chunk in observations.chunks(ENQUEUE_ROWS_PER_STATEMENT) {
            let sql = format!(
                "INSERT INTO inbox (delivery_key, system, external_id, observation, received_at, not_before)
                 VALUES {}
                 ON CONFLICT (delivery_key) DO NOTHING
                 RETURNING delivery_key",
                shaped_tuples(2, chunk.len(), 4, |p| format!(
                    "({}, {}, {}, {}, $1, $1)",
                    p[0], p[1], p[2], p[3]
                ))
            );
            // A statement's text depends on how many rows it stores. Those of webhook-sized
            // batches are kept prepared; a large batch's (a reconcile's) would keep a large
            // compiled statement in the connection's cache for each size met.
            let mut q = sqlx::query_scalar::<_, String>(&sql)
                .persistent(chunk.len() <= KEEP_PREPARED_ROWS)
                .bind(now);
            for obs in chunk {
                q = q
                    .bind(obs.delivery_key.as_str())
                    .bind(obs.system.as_str())
                    .bind(obs.external_id.as_str())
                    .bind(to_json(obs));
            }
            stored.extend(match &mut tx {
                Some(tx) => q.fetch_all(&mut **tx).await?,
                None => q.fetch_all(&self.pool).await?,
            });
        }
        if let Some(tx) = tx {
            tx.commit().await?;
        }
        let out = observations
            .iter()
            .map(|obs| {
                if stored.remove(&obs.delivery_key) {
                    Enqueued::Accepted
                } else {
                    Enqueued::Duplicate
                }
            })
            .collect();
        Ok(out)
    }

    /// Claim up to `limit` due inbox rows for `instance` until `claim_until`. A row whose
    /// observation cannot be read comes back as `Err` on its own, so that one bad row never
    /// holds up the others.
    pub async fn claim_inbox(
        &self,
        instance: &str,
        now: Millis,
        claim_until: Millis,
        limit: i64,
    ) -> Result<Vec<std::result::Result<InboxRow, UnreadableRow>>> {
        loop {
            let turn = self.pipeline_turn().await;
            let mut conn = self.pool.acquire().await?;
            let (claimed, moved) = self
                .claim_inbox_in(&mut conn, instance, now, claim_until, limit)
                .await?;
            drop((conn, turn));
            // Each statement committed on its own.
            self.moved_through(moved).await;
            // Nothing due among what was moved (all of it in the inbox already, after a crash
            // between a move and the intake's delete): move on to the batches after it.
            if !claimed.is_empty() || moved.is_none() {
                return Ok(claimed);
            }
        }
    }

    /// After the transaction that moved intake rows up to `moved` has committed. A failure to
    /// delete moved rows from the intake is logged, not returned: the transaction did commit,
    /// and the delete is tried again later.
    async fn moved_through(&self, moved: Option<i64>) {
        if let (Some(intake), Some(last)) = (&self.intake, moved) {
            if let Err(e) = intake.moved_through(last).await {
                tracing::warn!(error = %e, "Could not delete moved rows from the intake; will retry");
            }
        }
    }

    /// The claim of [`Store::claim_inbox`], on `conn` (a transaction's, or the pool's). With an
    /// intake, its rows are moved into the inbox first, in the same round trip; the second
    /// value is then the last intake id moved, once the caller has committed
    /// ([`Store::moved_through`]).
    async fn claim_inbox_in(
        &self,
        conn: &mut sqlx::AnyConnection,
        instance: &str,
        now: Millis,
        claim_until: Millis,
        limit: i64,
    ) -> Result<(
        Vec<std::result::Result<InboxRow, UnreadableRow>>,
        Option<i64>,
    )> {
        // The last id to move is read before the move, and the move reads a snapshot no older
        // (the same one, in a transaction): it moves every row up to that id, and maybe more,
        // never less. A key the inbox holds already (moved before a crash, which kept the
        // intake from deleting it) is skipped.
        // An observation that cannot be read (the file damaged behind presync's back) is moved
        // all the same, under a key of its place if it has none, and set aside when claimed; a
        // batch that is not a JSON array at all is moved as one such observation. Either way
        // the batches after it are not held up.
        let moving = if self.intake.is_some() {
            "SELECT MAX(id) AS moved_through
             FROM (SELECT id FROM intake.intake_batches WHERE id > $5 ORDER BY id LIMIT $6);
             INSERT INTO inbox (delivery_key, system, external_id, observation, received_at, not_before)
             SELECT COALESCE(CASE o.type WHEN 'object' THEN o.value ->> '$.delivery_key' END,
                             'intake:' || b.id || ':' || o.key),
                    COALESCE(CASE o.type WHEN 'object' THEN o.value ->> '$.system' END, ''),
                    COALESCE(CASE o.type WHEN 'object' THEN o.value ->> '$.external_id' END, ''),
                    COALESCE(o.value, 'null'), b.received_at, b.received_at
             FROM (SELECT id, received_at,
                          CASE WHEN NOT json_valid(observations) THEN json_array(observations)
                               WHEN json_type(observations) = 'array' THEN observations
                               ELSE json_array(observations) END AS observations
                   FROM intake.intake_batches WHERE id > $5 ORDER BY id LIMIT $6) AS b,
                  json_each(b.observations) AS o
             ORDER BY b.id, o.key
             ON CONFLICT (delivery_key) DO NOTHING;\n"
        } else {
            ""
        };
        let sql = format!(
            "{moving}UPDATE inbox SET claimed_by = $1, claim_until = $2, attempts = attempts + 1
             WHERE id IN (SELECT id FROM inbox
                          WHERE done_at IS NULL AND not_before <= $3
                            AND (claim_until IS NULL OR claim_until < $3)
                          ORDER BY not_before, id LIMIT $4{})
             RETURNING id, observation, attempts",
            self.dialect.skip_locked()
        );
        let mut q = sqlx::query(&sql)
            .bind(instance)
            .bind(claim_until)
            .bind(now)
            .bind(limit);
        if let Some(intake) = &self.intake {
            q = q.bind(intake.moved()).bind(super::intake::MOVE_BATCHES);
        }
        let mut rows = q.fetch_all(&mut *conn).await?;
        let moved = match self.intake {
            Some(_) if !rows.is_empty() => rows.remove(0).try_get("moved_through")?,
            _ => None,
        };
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let id: i64 = r.try_get("id")?;
            let attempts: i64 = r.try_get("attempts")?;
            let text: String = r.try_get("observation")?;
            out.push(match from_json(&text, "inbox.observation") {
                Ok(observation) => Ok(InboxRow {
                    id,
                    observation,
                    attempts,
                }),
                Err(error) => Err(UnreadableRow {
                    id,
                    attempts,
                    error,
                }),
            });
        }
        out.sort_by_key(|r| match r {
            Ok(row) => row.id,
            Err(bad) => bad.id,
        });
        Ok((out, moved))
    }

    /// Claim up to `limit` due inbox rows and resolve them, in one transaction: what
    /// [`Store::claim_inbox`] and then [`Store::resolve_batch`] do, with one commit instead of
    /// two. `Ok(None)`, with nothing claimed, when a claimed row cannot be read or the resolve
    /// fails: the caller then claims and resolves in two steps, where such a row is dealt with
    /// on its own (and its attempts are counted). An empty batch means nothing is due.
    pub async fn claim_and_resolve<F>(
        &self,
        instance: &str,
        now: Millis,
        claim_until: Millis,
        limit: i64,
        decide: F,
    ) -> Result<Option<Vec<(InboxRow, Resolved)>>>
    where
        F: FnMut(&InboxRow, &RepId, &RepView) -> Decision + Send,
    {
        let done = self
            .claim_resolve_and_begin_writes(instance, now, claim_until, limit, decide, None)
            .await?;
        Ok(done.map(|(resolved, _)| resolved))
    }

    /// [`Store::claim_and_resolve`], and in the same transaction, for each target the batch
    /// queued writes for, the claim of [`Store::claim_writes`]: up to `(writes.allow)(target)`
    /// due rows of that target, with the echo expectation of each write about to be made. The
    /// writes a batch decides can then go on the wire as soon as it commits, with no commit of
    /// their own before. `claim_until` is both claims' lease. When a write claim fails, the
    /// whole transaction is rolled back (`Ok(None)`, as when the resolve fails).
    pub async fn claim_resolve_and_begin_writes<F>(
        &self,
        instance: &str,
        now: Millis,
        claim_until: Millis,
        limit: i64,
        decide: F,
        writes: Option<WriteClaims<'_>>,
    ) -> Result<Option<(Vec<(InboxRow, Resolved)>, ClaimedWrites)>>
    where
        F: FnMut(&InboxRow, &RepId, &RepView) -> Decision + Send,
    {
        let (turn, mut tx, rows, moved) = loop {
            let turn = self.pipeline_turn().await;
            let mut tx = self.pool.begin().await?;
            let (claimed, moved) = self
                .claim_inbox_in(&mut tx, instance, now, claim_until, limit)
                .await?;
            // Rolled back explicitly, not on drop: on PostgreSQL a dropped transaction's locks
            // last until its connection is next used, and the two-step claim that follows
            // would skip the rows this one locked.
            let Ok(rows) = claimed
                .into_iter()
                .collect::<std::result::Result<Vec<_>, _>>()
            else {
                tx.rollback().await?;
                return Ok(None);
            };
            if !rows.is_empty() {
                break (turn, tx, rows, moved);
            }
            if moved.is_none() {
                tx.rollback().await?;
                return Ok(Some((Vec::new(), Vec::new())));
            }
            // Batches whose observations were all in the inbox already (a crash came between
            // a move and the intake's delete): committed, so that they are deleted from the
            // intake rather than moved again, and on to the batches after them.
            tx.commit().await?;
            drop(turn);
            self.moved_through(moved).await;
        };
        // Claimed in this transaction: no need to check that they are still held.
        let Ok(resolved) = self.resolve_in(&mut tx, &rows, None, now, decide).await else {
            tx.rollback().await?;
            return Ok(None);
        };
        let begun = match writes {
            Some(claims) => {
                let claimed = self
                    .claim_decided_writes(&mut tx, &resolved, claims, instance, now, claim_until)
                    .await;
                match claimed {
                    Ok(begun) => begun,
                    Err(_) => {
                        tx.rollback().await?;
                        return Ok(None);
                    }
                }
            }
            None => Vec::new(),
        };
        tx.commit().await?;
        drop(turn);
        self.moved_through(moved).await;
        Ok(Some((rows.into_iter().zip(resolved).collect(), begun)))
    }

    /// The write claims of [`Store::claim_resolve_and_begin_writes`], in `tx`: for each target
    /// `resolved` queued writes for, as many due rows as `claims.allow` lets.
    async fn claim_decided_writes(
        &self,
        tx: &mut Transaction<'_, Any>,
        resolved: &[Resolved],
        claims: WriteClaims<'_>,
        instance: &str,
        now: Millis,
        claim_until: Millis,
    ) -> Result<ClaimedWrites> {
        let targets: std::collections::BTreeSet<&SystemId> = resolved
            .iter()
            .filter_map(|r| match r {
                Resolved::Decided { decision, .. } => Some(decision.write_targets()),
                _ => None,
            })
            .flatten()
            .collect();
        let mut begun = Vec::new();
        for target in targets {
            let limit = (claims.allow)(target);
            if limit <= 0 {
                continue;
            }
            let rows = self
                .claim_writes_in(
                    tx,
                    target,
                    instance,
                    now,
                    claim_until,
                    limit,
                    claims.echo_ttl,
                )
                .await?;
            if !rows.is_empty() {
                begun.push((target.clone(), rows));
            }
        }
        Ok(begun)
    }

    /// Resolve one claimed inbox row in one transaction: look the representative up, lock it,
    /// load what the rules read, run `decide`, and persist the decision with its history row.
    /// [`Store::resolve_batch`] of one row.
    pub async fn resolve<F>(
        &self,
        row: &InboxRow,
        instance: &str,
        now: Millis,
        mut decide: F,
    ) -> Result<Resolved>
    where
        F: FnMut(&RepId, &RepView) -> Decision + Send,
    {
        let mut out = self
            .resolve_batch(std::slice::from_ref(row), instance, now, |_, rep, view| {
                decide(rep, view)
            })
            .await?;
        Ok(out.pop().unwrap_or(Resolved::LostClaim))
    }

    /// Resolve claimed inbox rows in one transaction: one commit, and so one fsync on SQLite,
    /// for the whole batch, and the reads the rules need made for the whole batch at once (a
    /// handful of queries instead of a handful per row). Results come back in `rows`' order.
    ///
    /// Rows are resolved grouped by representative, in the order given within each (the inbox
    /// order), and every representative of the batch is locked up front in one global order:
    /// on PostgreSQL two instances resolving batches at once never deadlock on each other.
    ///
    /// `Err` means nothing was committed; [`Store::resolve`] then resolves the rows one by one,
    /// so that one bad row is retried alone.
    pub async fn resolve_batch<F>(
        &self,
        rows: &[InboxRow],
        instance: &str,
        now: Millis,
        decide: F,
    ) -> Result<Vec<Resolved>>
    where
        F: FnMut(&InboxRow, &RepId, &RepView) -> Decision + Send,
    {
        let _turn = self.pipeline_turn().await;
        let mut tx = self.pool.begin().await?;
        let out = self
            .resolve_in(&mut tx, rows, Some(instance), now, decide)
            .await?;
        tx.commit().await?;
        Ok(out)
    }

    /// The resolve of [`Store::resolve_batch`], in `tx`, without committing. With
    /// `Some(instance)`, rows that instance no longer holds are left alone
    /// ([`Resolved::LostClaim`]); with `None` every row is resolved (claimed in `tx`).
    async fn resolve_in<F>(
        &self,
        tx: &mut Transaction<'_, Any>,
        rows: &[InboxRow],
        holder: Option<&str>,
        now: Millis,
        mut decide: F,
    ) -> Result<Vec<Resolved>>
    where
        F: FnMut(&InboxRow, &RepId, &RepView) -> Decision + Send,
    {
        let lock = self.dialect.lock_row();
        let held = match holder {
            Some(instance) => Some(self.still_held(tx, rows, instance).await?),
            None => None,
        };
        let reps = lookup_reps(tx, rows).await?;
        let mut order: Vec<(Option<&RepId>, usize)> = rows
            .iter()
            .enumerate()
            .filter(|(_, row)| held.as_ref().is_none_or(|h| h.contains(&row.id)))
            .map(|(i, row)| {
                (
                    reps.get(&(&row.observation.system, &row.observation.external_id)),
                    i,
                )
            })
            .collect();
        // Unknown users (None) first; then by representative, stable within one.
        order.sort();
        let mut distinct: Vec<RepId> = order.iter().filter_map(|(r, _)| r.cloned()).collect();
        distinct.dedup();
        let mut views =
            load_views(tx, self.dialect, lock, self.dialect.bytewise(), &distinct).await?;
        let mut out: Vec<Resolved> = rows.iter().map(|_| Resolved::LostClaim).collect();
        let mut done = Vec::with_capacity(rows.len());
        let mut writes = Writes::new(self.dialect);
        for (rep, i) in order {
            let row = &rows[i];
            let obs = &row.observation;
            let Some(rep) = rep else {
                writes.history.push(unknown_user(obs, now));
                done.push(row.id);
                out[i] = Resolved::UnknownRepresentative;
                continue;
            };
            // The first row of a representative reads the batch's view; a later one reads
            // what the earlier decisions left.
            let view = match views.remove(rep) {
                Some(view) => view,
                None => {
                    writes.flush(tx).await?;
                    load_view(tx, self.dialect, lock, rep).await?
                }
            };
            let decision = decide(row, rep, &view);
            persist(tx, lock, rep, obs, &view, &decision, now, &mut writes).await?;
            match decision.defer_until {
                Some(until) => defer(tx, row.id, until).await?,
                None => done.push(row.id),
            }
            out[i] = Resolved::Decided {
                rep: rep.clone(),
                decision: Box::new(decision),
            };
        }
        // The batch's last writes and its rows marked done, in one go.
        let mut last = writes.script();
        if !done.is_empty() {
            let sql = format!(
                "UPDATE inbox SET done_at = $1, claimed_by = NULL, claim_until = NULL WHERE id IN ({})",
                super::placeholders(2, done.len())
            );
            let mut q = Statement::new(sql).bind(now);
            for id in &done {
                q = q.bind(*id);
            }
            last.push(q);
        }
        last.run(tx).await?;
        Ok(out)
    }

    /// Which of `rows` `instance` still holds (locked, on PostgreSQL).
    async fn still_held(
        &self,
        tx: &mut Transaction<'_, Any>,
        rows: &[InboxRow],
        instance: &str,
    ) -> Result<std::collections::HashSet<i64>> {
        let sql = format!(
            "SELECT id FROM inbox WHERE claimed_by = $1 AND done_at IS NULL AND id IN ({}){}",
            super::placeholders(2, rows.len()),
            self.dialect.lock_row()
        );
        let mut q = sqlx::query_scalar::<_, i64>(&sql).bind(instance);
        for row in rows {
            q = q.bind(row.id);
        }
        Ok(q.fetch_all(&mut **tx).await?.into_iter().collect())
    }

    /// Give back a claimed row that failed, due again at `retry_at`; or, with `None`, give up
    /// on it: it is marked done and a `failed` history row says why (a dead letter).
    pub async fn fail_inbox(
        &self,
        id: i64,
        instance: &str,
        now: Millis,
        retry_at: Option<Millis>,
        reason: &str,
    ) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        match retry_at {
            Some(t) => {
                sqlx::query(
                    "UPDATE inbox SET claimed_by = NULL, claim_until = NULL, not_before = $3
                     WHERE id = $1 AND claimed_by = $2",
                )
                .bind(id)
                .bind(instance)
                .bind(t)
                .execute(&mut *tx)
                .await?;
            }
            None => {
                let row = sqlx::query(
                    "UPDATE inbox SET done_at = $3, claimed_by = NULL, claim_until = NULL
                     WHERE id = $1 AND claimed_by = $2 RETURNING system, external_id, delivery_key",
                )
                .bind(id)
                .bind(instance)
                .bind(now)
                .fetch_optional(&mut *tx)
                .await?;
                if let Some(r) = row {
                    sqlx::query(
                        "INSERT INTO history (rep_id, system, external_id, delivery_key, at, rule, outcome, detail)
                         VALUES (NULL, $1, $2, $3, $4, 'failed', 'dropped', $5)",
                    )
                    .bind(r.try_get::<String, _>("system")?)
                    .bind(r.try_get::<String, _>("external_id")?)
                    .bind(r.try_get::<String, _>("delivery_key")?)
                    .bind(now)
                    .bind(reason)
                    .execute(&mut *tx)
                    .await?;
                }
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// What the rules would read about a representative now (for people: admin API, explain).
    pub async fn rep_view(&self, rep: &RepId) -> Result<RepView> {
        let mut tx = self.pool.begin().await?;
        let view = load_view(&mut tx, self.dialect, "", rep).await?;
        tx.commit().await?;
        Ok(view)
    }
}

/// The representatives the users of `rows` belong to, by (system, user): one query per system.
async fn lookup_reps<'r>(
    tx: &mut Transaction<'_, Any>,
    rows: &'r [InboxRow],
) -> Result<BTreeMap<(&'r SystemId, &'r ExternalId), RepId>> {
    let mut by_system: BTreeMap<&SystemId, Vec<&ExternalId>> = BTreeMap::new();
    for row in rows {
        by_system
            .entry(&row.observation.system)
            .or_default()
            .push(&row.observation.external_id);
    }
    let mut out = BTreeMap::new();
    for (system, users) in by_system {
        let sql = format!(
            "SELECT external_id, rep_id FROM external_ids WHERE system = $1 AND external_id IN ({})",
            super::placeholders(2, users.len())
        );
        let mut q = sqlx::query(&sql).bind(system.as_str());
        for u in &users {
            q = q.bind(u.as_str());
        }
        for r in q.fetch_all(&mut **tx).await? {
            let user: String = r.try_get("external_id")?;
            if let Some(u) = users.iter().find(|u| u.as_str() == user) {
                out.insert((system, *u), RepId(r.try_get("rep_id")?));
            }
        }
    }
    Ok(out)
}

/// The history row of an observation of a user not in the directory.
fn unknown_user(obs: &Observation, now: Millis) -> HistoryRow {
    HistoryRow::decided(
        None,
        obs,
        now,
        Rule::UnknownRepresentative,
        Outcome::Dropped,
        None,
        None,
        &[],
        format!(
            "{} user {} is not in the directory",
            obs.system, obs.external_id
        ),
    )
}

/// Give a row back to be resolved again at `until`.
async fn defer(tx: &mut Transaction<'_, Any>, id: i64, until: Millis) -> Result<()> {
    sqlx::query(
        "UPDATE inbox SET not_before = $2, claimed_by = NULL, claim_until = NULL WHERE id = $1",
    )
    .bind(id)
    .bind(until)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Load a representative's state, locking its canonical row with `lock` (`FOR UPDATE` or "").
pub(super) async fn load_view(
    tx: &mut Transaction<'_, Any>,
    dialect: Dialect,
    lock: &str,
    rep: &RepId,
) -> Result<RepView> {
    let mut views = load_views(tx, dialect, lock, "", std::slice::from_ref(rep)).await?;
    Ok(views.remove(rep).unwrap_or_default())
}

/// Load the states of `reps`, locking their canonical rows with `lock` (`FOR UPDATE` or "")
/// in their byte order (`bytewise` is the dialect's collation for it): five queries, however
/// many representatives, sent together (a [`Script`]). Each query's rows carry its name in
/// their first column, `part`.
pub(super) async fn load_views(
    tx: &mut Transaction<'_, Any>,
    dialect: Dialect,
    lock: &str,
    bytewise: &str,
    reps: &[RepId],
) -> Result<BTreeMap<RepId, RepView>> {
    let mut views: BTreeMap<RepId, RepView> = reps
        .iter()
        .map(|r| (r.clone(), RepView::default()))
        .collect();
    if reps.is_empty() {
        return Ok(views);
    }
    let list = super::placeholders(1, reps.len());
    let mut script = Script::new(dialect);
    for sql in [
        format!(
            "SELECT 'canonical' AS part, rep_id, presence FROM canonical
             WHERE rep_id IN ({list}) ORDER BY rep_id{bytewise}{lock}"
        ),
        format!(
            "SELECT 'system_state' AS part, rep_id, system, observed, written FROM system_state
             WHERE rep_id IN ({list})"
        ),
        format!(
            "SELECT 'expectations' AS part, rep_id, id, system, availability, version, opened_at,
                    completed_at, expires_at, superseded
             FROM expectations WHERE rep_id IN ({list}) ORDER BY id"
        ),
        format!(
            "SELECT 'outbox' AS part, rep_id, target, availability, claimed_by FROM outbox
             WHERE rep_id IN ({list})"
        ),
        format!(
            "SELECT 'external_ids' AS part, rep_id, system, external_id FROM external_ids
             WHERE rep_id IN ({list})"
        ),
    ] {
        let mut q = Statement::new(sql);
        for r in reps {
            q = q.bind(r.as_str());
        }
        script.push(q);
    }
    for r in script.run(tx).await? {
        let part: String = r.try_get("part")?;
        let view = views.entry(RepId(r.try_get("rep_id")?)).or_default();
        match part.as_str() {
            "canonical" => {
                let presence: Option<String> = r.try_get("presence")?;
                view.canonical = presence
                    .map(|p| from_json(&p, "canonical.presence"))
                    .transpose()?;
            }
            "system_state" => {
                let observed: Option<String> = r.try_get("observed")?;
                let written: Option<String> = r.try_get("written")?;
                view.systems.insert(
                    SystemId(r.try_get("system")?),
                    SystemState {
                        observed: observed
                            .map(|o| from_json(&o, "system_state.observed"))
                            .transpose()?,
                        written: written
                            .map(|w| from_json(&w, "system_state.written"))
                            .transpose()?,
                    },
                );
            }
            "expectations" => {
                let availability: String = r.try_get("availability")?;
                view.expectations.push(Expectation {
                    id: r.try_get("id")?,
                    system: SystemId(r.try_get("system")?),
                    availability: Availability::from_str(&availability)
                        .map_err(|e| super::corrupt("expectations.availability", e))?,
                    version: r.try_get("version")?,
                    opened_at: r.try_get("opened_at")?,
                    completed_at: r.try_get("completed_at")?,
                    expires_at: r.try_get("expires_at")?,
                    superseded: r.try_get::<i64, _>("superseded")? != 0,
                });
            }
            "outbox" => {
                let claimed: Option<String> = r.try_get("claimed_by")?;
                view.outbox.insert(
                    SystemId(r.try_get("target")?),
                    PendingWrite {
                        availability: parse_availability(
                            r.try_get("availability")?,
                            "outbox.availability",
                        )?,
                        in_flight: claimed.is_some(),
                    },
                );
            }
            // The last query's, external_ids.
            _ => {
                view.external_ids.insert(
                    SystemId(r.try_get("system")?),
                    ExternalId(r.try_get("external_id")?),
                );
            }
        }
    }
    Ok(views)
}

/// Persist a decision: observed state, canonical state, expectations, outbox, history. The
/// writes go into `writes`, made for the whole batch by [`Writes::flush`]; only a cancel, which
/// must read the outbox as the batch left it, flushes first and writes at once.
#[allow(clippy::too_many_arguments)]
async fn persist(
    tx: &mut Transaction<'_, Any>,
    lock: &str,
    rep: &RepId,
    obs: &Observation,
    view: &RepView,
    d: &Decision,
    now: Millis,
    writes: &mut Writes,
) -> Result<()> {
    if let Some(observed) = &d.observed {
        writes
            .observed
            .push((rep.clone(), obs.system.clone(), to_json(observed)));
    }
    if let Some(p) = &d.canonical {
        writes
            .canonical
            .push((rep.clone(), p.availability.as_str(), p.version, to_json(p)));
    }
    writes.supersede.extend(&d.supersede_expectations);
    writes.close.extend(&d.close_expectations);
    let version = d
        .canonical
        .as_ref()
        .or(view.canonical.as_ref())
        .map(|p| p.version);
    for op in &d.outbox {
        match op {
            OutboxOp::Upsert { target, desired } => {
                let Some(ext) = view.external_ids.get(target) else {
                    continue;
                };
                let upsert =
                    OutboxUpsert::new(rep, target, ext, desired, d.rule.as_str(), obs, now);
                writes.upsert_outbox(tx, upsert).await?;
            }
            OutboxOp::Cancel {
                target,
                if_in_flight,
            } => {
                writes.flush(tx).await?;
                // Locked, so that no dispatcher claims it between this read and the delete.
                let row: Option<Option<String>> = sqlx::query_scalar(&format!(
                    "SELECT claimed_by FROM outbox WHERE rep_id = $1 AND target = $2{lock}"
                ))
                .bind(rep.as_str())
                .bind(target.as_str())
                .fetch_optional(&mut **tx)
                .await?;
                match row {
                    Some(Some(_)) => {
                        if let Some(ext) = view.external_ids.get(target) {
                            let upsert = OutboxUpsert::new(
                                rep,
                                target,
                                ext,
                                if_in_flight,
                                "repair_after_race",
                                obs,
                                now,
                            );
                            writes.upsert_outbox(tx, upsert).await?;
                        }
                    }
                    Some(None) => {
                        sqlx::query("DELETE FROM outbox WHERE rep_id = $1 AND target = $2")
                            .bind(rep.as_str())
                            .bind(target.as_str())
                            .execute(&mut **tx)
                            .await?;
                    }
                    None => {}
                }
            }
        }
    }
    let targets: Vec<String> = d.write_targets().iter().map(|t| t.to_string()).collect();
    writes.history.push(HistoryRow::decided(
        Some(rep),
        obs,
        now,
        d.rule,
        d.outcome,
        Some(d.availability),
        version,
        &targets,
        d.detail.clone(),
    ));
    for note in &d.notes {
        let wrote: Vec<String> = note.wrote.iter().map(ToString::to_string).collect();
        let mut row = HistoryRow::decided(
            Some(rep),
            obs,
            now,
            note.rule,
            d.outcome,
            None,
            version,
            &wrote,
            note.detail.clone(),
        );
        row.outcome = note.event.to_owned();
        writes.history.push(row);
    }
    Ok(())
}

/// The writes of a resolved batch, held back and made with one statement per table for the
/// whole batch instead of a few per row, and those statements sent together (a [`Script`]): on
/// SQLite every round trip to the connection's thread counts, and they were most of a resolve.
///
/// Within one flush a representative appears once (the resolver flushes before it reads a
/// representative a second time), so no statement touches a row twice.
#[derive(Debug)]
struct Writes {
    dialect: Dialect,
    /// `system_state.observed` by (representative, system).
    observed: Vec<(RepId, SystemId, String)>,
    /// `canonical` (availability, version, presence) by representative.
    canonical: Vec<(RepId, &'static str, i64, String)>,
    /// Expectations to mark superseded.
    supersede: Vec<i64>,
    /// Expectations to delete.
    close: Vec<i64>,
    outbox: Vec<OutboxUpsert>,
    history: Vec<HistoryRow>,
}

impl Writes {
    fn new(dialect: Dialect) -> Writes {
        Writes {
            dialect,
            observed: Vec::new(),
            canonical: Vec::new(),
            supersede: Vec::new(),
            close: Vec::new(),
            outbox: Vec::new(),
            history: Vec::new(),
        }
    }

    /// Queue an outbox upsert; one already queued for the same (representative, target) is
    /// made first, so that each statement touches a row once.
    async fn upsert_outbox(
        &mut self,
        tx: &mut Transaction<'_, Any>,
        upsert: OutboxUpsert,
    ) -> Result<()> {
        if self
            .outbox
            .iter()
            .any(|u| u.rep == upsert.rep && u.target == upsert.target)
        {
            self.flush(tx).await?;
        }
        self.outbox.push(upsert);
        Ok(())
    }

    /// Make every queued write, in the order one decision's writes are made.
    async fn flush(&mut self, tx: &mut Transaction<'_, Any>) -> Result<()> {
        self.script().run(tx).await?;
        // Every queue, named: a new one would not compile until it is cleared here too.
        let Writes {
            dialect: _,
            observed,
            canonical,
            supersede,
            close,
            outbox,
            history,
        } = self;
        observed.clear();
        canonical.clear();
        supersede.clear();
        close.clear();
        outbox.clear();
        history.clear();
        Ok(())
    }

    /// The queued writes as statements, in the order one decision's writes are made.
    fn script(&self) -> Script<'_> {
        let mut script = Script::new(self.dialect);
        for chunk in self.observed.chunks(ROWS_PER_STATEMENT) {
            let sql = format!(
                "INSERT INTO system_state (rep_id, system, observed) VALUES {}
                 ON CONFLICT (rep_id, system) DO UPDATE SET observed = excluded.observed",
                tuples(1, chunk.len(), 3)
            );
            let mut q = Statement::new(sql);
            for (rep, system, observed) in chunk {
                q = q
                    .bind(rep.as_str())
                    .bind(system.as_str())
                    .bind(observed.as_str());
            }
            script.push(q);
        }
        for chunk in self.canonical.chunks(ROWS_PER_STATEMENT) {
            let sql = format!(
                "UPDATE canonical SET availability = v.column2, version = v.column3,
                                      presence = v.column4
                 FROM (VALUES {}) AS v WHERE canonical.rep_id = v.column1",
                tuples(1, chunk.len(), 4)
            );
            let mut q = Statement::new(sql);
            for (rep, availability, version, presence) in chunk {
                q = q
                    .bind(rep.as_str())
                    .bind(*availability)
                    .bind(*version)
                    .bind(presence.as_str());
            }
            script.push(q);
        }
        for (ids, sql) in [
            (
                &self.supersede,
                "UPDATE expectations SET superseded = 1 WHERE id IN",
            ),
            (&self.close, "DELETE FROM expectations WHERE id IN"),
        ] {
            for chunk in ids.chunks(ROWS_PER_STATEMENT) {
                let sql = format!("{sql} ({})", super::placeholders(1, chunk.len()));
                let mut q = Statement::new(sql);
                for id in chunk {
                    q = q.bind(*id);
                }
                script.push(q);
            }
        }
        script.extend(self.outbox.chunks(ROWS_PER_STATEMENT).map(upsert_outbox));
        script.extend(insert_history(&self.history));
        script
    }
}

/// One outbox upsert: `desired` becomes the latest desired state of (rep, target).
#[derive(Debug)]
struct OutboxUpsert {
    rep: RepId,
    target: SystemId,
    external_id: ExternalId,
    desired: String,
    availability: Option<&'static str>,
    version: i64,
    reason: String,
    origin_observed_at: Millis,
    now: Millis,
}

impl OutboxUpsert {
    fn new(
        rep: &RepId,
        target: &SystemId,
        external_id: &ExternalId,
        desired: &Desired,
        reason: &str,
        cause: &Observation,
        now: Millis,
    ) -> OutboxUpsert {
        OutboxUpsert {
            rep: rep.clone(),
            target: target.clone(),
            external_id: external_id.clone(),
            desired: to_json(desired),
            availability: desired.availability().map(Availability::as_str),
            version: match desired {
                Desired::Set(p) => p.version,
                Desired::Withdraw => 0,
            },
            reason: reason.to_owned(),
            origin_observed_at: cause.observed_at,
            now,
        }
    }
}

/// The statement making each upsert's desired state the latest of its (rep, target), replacing
/// any pending one. No two upserts may share a (rep, target); there is at least one.
fn upsert_outbox(upserts: &[OutboxUpsert]) -> Statement<'_> {
    let sql = format!(
        "INSERT INTO outbox (rep_id, target, external_id, desired, availability, version, seq, reason,
                             origin_observed_at, enqueued_at, not_before, attempts)
         VALUES {}
         ON CONFLICT (rep_id, target) DO UPDATE SET
             external_id = excluded.external_id, desired = excluded.desired,
             availability = excluded.availability, version = excluded.version,
             seq = outbox.seq + 1, reason = excluded.reason,
             origin_observed_at = excluded.origin_observed_at, enqueued_at = excluded.enqueued_at,
             not_before = excluded.not_before, attempts = 0",
        shaped_tuples(1, upserts.len(), 9, |p| format!(
            "({}, {}, {}, {}, {}, {}, 1, {}, {}, {}, {}, 0)",
            p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7], p[8], p[8]
        ))
    );
    let mut q = Statement::new(sql);
    for u in upserts {
        q = q
            .bind(u.rep.as_str())
            .bind(u.target.as_str())
            .bind(u.external_id.as_str())
            .bind(u.desired.as_str())
            .bind(u.availability)
            .bind(u.version)
            .bind(u.reason.as_str())
            .bind(u.origin_observed_at)
            .bind(u.now);
    }
    q
}

impl HistoryRow {
    /// The history row of a decision on `obs`.
    #[allow(clippy::too_many_arguments)]
    fn decided(
        rep: Option<&RepId>,
        obs: &Observation,
        now: Millis,
        rule: Rule,
        outcome: Outcome,
        availability: Option<Availability>,
        version: Option<i64>,
        writes: &[String],
        detail: String,
    ) -> HistoryRow {
        HistoryRow {
            rep: rep.map(|r| r.to_string()),
            system: obs.system.to_string(),
            external_id: obs.external_id.to_string(),
            delivery_key: Some(obs.delivery_key.clone()),
            at: now,
            rule: rule.as_str().to_owned(),
            outcome: outcome.as_str().to_owned(),
            availability: availability.map(Availability::as_str),
            version,
            writes: Some(to_json(&writes)),
            detail,
        }
    }
}
