//! The directory: representatives and their external ids, looked up both ways.

use std::collections::{BTreeMap, HashMap};

use futures::TryStreamExt;
use sqlx::Row;

use super::{from_json, parse_availability, Result, Store, StoreError};
use crate::model::{
    Availability, ExternalId, Millis, ObservedState, RepId, Representative, SystemId, WrittenState,
};

impl Store {
    /// Insert or replace a representative and its external ids. An external id that already
    /// belongs to another representative is an error, and nothing is changed.
    pub async fn upsert_representative(&self, rep: &Representative, now: Millis) -> Result<()> {
        self.upsert_representatives(std::slice::from_ref(rep), now)
            .await
    }

    /// [`Store::upsert_representative`] for many, in one transaction: all or nothing. Importing
    /// a large directory this way is one commit rather than one per representative.
    pub async fn upsert_representatives(&self, reps: &[Representative], now: Millis) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        for rep in reps {
            upsert_in(&mut tx, rep, now).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Remove a representative and everything presync keeps about them but history.
    pub async fn delete_representative(&self, id: &RepId) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        for table in [
            "outbox",
            "system_state",
            "expectations",
            "canonical",
            "external_ids",
        ] {
            sqlx::query(&format!("DELETE FROM {table} WHERE rep_id = $1"))
                .bind(id.as_str())
                .execute(&mut *tx)
                .await?;
        }
        let n = sqlx::query("DELETE FROM representatives WHERE id = $1")
            .bind(id.as_str())
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(n == 1)
    }

    /// The representative owning `external_id` in `system`.
    pub async fn rep_for(
        &self,
        system: &SystemId,
        external_id: &ExternalId,
    ) -> Result<Option<RepId>> {
        let id: Option<String> = sqlx::query_scalar(
            "SELECT rep_id FROM external_ids WHERE system = $1 AND external_id = $2",
        )
        .bind(system.as_str())
        .bind(external_id.as_str())
        .fetch_optional(&self.pool)
        .await?;
        Ok(id.map(RepId))
    }

    /// One representative with its external ids.
    pub async fn representative(&self, id: &RepId) -> Result<Option<Representative>> {
        let name: Option<String> =
            sqlx::query_scalar("SELECT display_name FROM representatives WHERE id = $1")
                .bind(id.as_str())
                .fetch_optional(&self.pool)
                .await?;
        let Some(display_name) = name else {
            return Ok(None);
        };
        let rows = sqlx::query("SELECT system, external_id FROM external_ids WHERE rep_id = $1")
            .bind(id.as_str())
            .fetch_all(&self.pool)
            .await?;
        let mut external_ids = BTreeMap::new();
        for row in rows {
            external_ids.insert(
                SystemId(row.try_get("system")?),
                ExternalId(row.try_get("external_id")?),
            );
        }
        Ok(Some(Representative {
            id: id.clone(),
            display_name,
            external_ids,
        }))
    }

    /// Every representative, ordered by id.
    pub async fn representatives(&self) -> Result<Vec<Representative>> {
        let reps = sqlx::query("SELECT id, display_name FROM representatives ORDER BY id")
            .fetch_all(&self.pool)
            .await?;
        let ids = sqlx::query("SELECT rep_id, system, external_id FROM external_ids")
            .fetch_all(&self.pool)
            .await?;
        let mut by_rep: BTreeMap<String, BTreeMap<SystemId, ExternalId>> = BTreeMap::new();
        for row in ids {
            by_rep.entry(row.try_get("rep_id")?).or_default().insert(
                SystemId(row.try_get("system")?),
                ExternalId(row.try_get("external_id")?),
            );
        }
        reps.into_iter()
            .map(|row| {
                let id: String = row.try_get("id")?;
                Ok(Representative {
                    external_ids: by_rep.remove(&id).unwrap_or_default(),
                    id: RepId(id),
                    display_name: row.try_get("display_name")?,
                })
            })
            .collect()
    }

    /// Every (representative, external id) pair of one system.
    pub async fn external_ids(&self, system: &SystemId) -> Result<Vec<(RepId, ExternalId)>> {
        let rows = sqlx::query(
            "SELECT rep_id, external_id FROM external_ids WHERE system = $1 ORDER BY external_id",
        )
        .bind(system.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|r| {
                Ok((
                    RepId(r.try_get("rep_id")?),
                    ExternalId(r.try_get("external_id")?),
                ))
            })
            .collect()
    }
}

/// What presync knows of one directory user of one system, for the reconciler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Known {
    pub rep: RepId,
    /// The availability last observed at the system.
    pub observed: Option<Availability>,
    /// The source time and sequence of what was last observed there.
    pub observed_time: Option<Millis>,
    pub observed_sequence: Option<i64>,
    /// The representative's canonical availability.
    pub canonical: Option<Availability>,
}

impl Store {
    /// Every directory user of `system` with what presync last observed there and the canonical
    /// availability, in one query.
    pub async fn reconcile_snapshot(
        &self,
        system: &SystemId,
    ) -> Result<HashMap<ExternalId, Known>> {
        let mut rows = sqlx::query(
            "SELECT e.external_id, e.rep_id, c.availability AS canonical, s.observed
             FROM external_ids e
             LEFT JOIN canonical c ON c.rep_id = e.rep_id
             LEFT JOIN system_state s ON s.rep_id = e.rep_id AND s.system = e.system
             WHERE e.system = $1",
        )
        .bind(system.as_str())
        // Row by row: every row at once is several times the map built from them.
        .fetch(&self.pool);
        let mut out = HashMap::new();
        while let Some(r) = rows.try_next().await? {
            let observed: Option<String> = r.try_get("observed")?;
            let observed = observed
                .map(|o| from_json::<ObservedState>(&o, "system_state.observed"))
                .transpose()?;
            out.insert(
                ExternalId(r.try_get("external_id")?),
                Known {
                    rep: RepId(r.try_get("rep_id")?),
                    observed_time: observed.as_ref().map(|o| o.source_time),
                    observed_sequence: observed.as_ref().and_then(|o| o.sequence),
                    observed: observed.map(|o| o.availability),
                    canonical: parse_availability(
                        r.try_get("canonical")?,
                        "canonical.availability",
                    )?,
                },
            );
        }
        Ok(out)
    }

    /// Every directory user of `system` with the last state presync wrote there.
    pub async fn written_states(
        &self,
        system: &SystemId,
    ) -> Result<Vec<(ExternalId, WrittenState)>> {
        let rows = sqlx::query(
            "SELECT e.external_id, s.written
             FROM external_ids e
             JOIN system_state s ON s.rep_id = e.rep_id AND s.system = e.system
             WHERE e.system = $1 AND s.written IS NOT NULL",
        )
        .bind(system.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let w: String = r.try_get("written")?;
                Ok((
                    ExternalId(r.try_get("external_id")?),
                    from_json::<WrittenState>(&w, "system_state.written")?,
                ))
            })
            .collect()
    }
}

/// One representative's upsert inside `tx`.
async fn upsert_in(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    rep: &Representative,
    now: Millis,
) -> Result<()> {
    for (system, ext) in &rep.external_ids {
        let owner: Option<String> = sqlx::query_scalar(
            "SELECT rep_id FROM external_ids WHERE system = $1 AND external_id = $2",
        )
        .bind(system.as_str())
        .bind(ext.as_str())
        .fetch_optional(&mut **tx)
        .await?;
        if let Some(owner) = owner.filter(|o| o != rep.id.as_str()) {
            return Err(StoreError::ExternalIdTaken {
                system: system.to_string(),
                external_id: ext.to_string(),
                owner: RepId(owner),
            });
        }
    }
    sqlx::query(
        "INSERT INTO representatives (id, display_name, created_at, updated_at)
         VALUES ($1, $2, $3, $3)
         ON CONFLICT (id) DO UPDATE SET display_name = excluded.display_name,
                                        updated_at = excluded.updated_at",
    )
    .bind(rep.id.as_str())
    .bind(rep.display_name.as_str())
    .bind(now)
    .execute(&mut **tx)
    .await?;
    sqlx::query(
        "INSERT INTO canonical (rep_id, version) VALUES ($1, 0) ON CONFLICT (rep_id) DO NOTHING",
    )
    .bind(rep.id.as_str())
    .execute(&mut **tx)
    .await?;
    sqlx::query("DELETE FROM external_ids WHERE rep_id = $1")
        .bind(rep.id.as_str())
        .execute(&mut **tx)
        .await?;
    for (system, ext) in &rep.external_ids {
        sqlx::query("INSERT INTO external_ids (system, external_id, rep_id) VALUES ($1, $2, $3)")
            .bind(system.as_str())
            .bind(ext.as_str())
            .bind(rep.id.as_str())
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}
