//! Statements sent to the database together.
//!
//! On SQLite every statement sqlx runs is a round trip to the connection's own thread: a
//! message there and a wake-up back, which under load cost far more than SQLite's own work
//! (BENCHMARKS.md, "The misses at c8aa060, measured"). sqlx runs a query text that holds
//! several statements in one such round trip, statement after statement, each anonymous `?`
//! taking the next argument. A [`Script`] joins statements that way on SQLite, each `$n` made a
//! `?` and its argument put in its place; on PostgreSQL, whose extended protocol takes one
//! statement per query, it runs them one by one. Either way they run in order, in the caller's
//! transaction, and the rows any of them return come back in that order.
//!
//! Why `?` and not `$n` on SQLite: sqlx asks SQLite the name of every parameter it binds, and
//! SQLite finds a name by walking the statement's list of names, so binding a statement of n
//! named parameters costs n² steps: 5% of the service's CPU under the ingest benchmark, in the
//! resolver's batch statements (BENCHMARKS.md). An anonymous `?` has no name to look up.

use std::borrow::Cow;

use sqlx::any::{Any, AnyRow};
use sqlx::Transaction;

use super::{Dialect, Result};

/// A bound parameter of a [`Statement`]; text is borrowed where the caller has it, as sqlx's
/// own `bind` does, not copied.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Param<'q> {
    Int(Option<i64>),
    Text(Option<Cow<'q, str>>),
}

impl From<i64> for Param<'_> {
    fn from(v: i64) -> Self {
        Param::Int(Some(v))
    }
}

impl From<Option<i64>> for Param<'_> {
    fn from(v: Option<i64>) -> Self {
        Param::Int(v)
    }
}

impl<'q> From<&'q str> for Param<'q> {
    fn from(v: &'q str) -> Self {
        Param::Text(Some(Cow::Borrowed(v)))
    }
}

impl From<String> for Param<'_> {
    fn from(v: String) -> Self {
        Param::Text(Some(Cow::Owned(v)))
    }
}

impl<'q> From<Option<&'q str>> for Param<'q> {
    fn from(v: Option<&'q str>) -> Self {
        Param::Text(v.map(Cow::Borrowed))
    }
}

/// One statement with its parameters: `$1` is the first bound, `$2` the second, and so on.
#[derive(Debug)]
pub(super) struct Statement<'q> {
    sql: String,
    params: Vec<Param<'q>>,
}

impl<'q> Statement<'q> {
    pub(super) fn new(sql: impl Into<String>) -> Self {
        Statement {
            sql: sql.into(),
            params: Vec::new(),
        }
    }

    /// Bind the next parameter.
    pub(super) fn bind(mut self, param: impl Into<Param<'q>>) -> Self {
        self.params.push(param.into());
        self
    }

    /// Run it alone in `tx`. Returns the rows it returned.
    pub(super) async fn run(self, tx: &mut Transaction<'_, Any>) -> Result<Vec<AnyRow>> {
        run_one(tx, &self.sql, self.params).await
    }
}

async fn run_one(
    tx: &mut Transaction<'_, Any>,
    sql: &str,
    params: Vec<Param<'_>>,
) -> Result<Vec<AnyRow>> {
    let mut q = sqlx::query(sql);
    for p in params {
        q = match p {
            Param::Int(v) => q.bind(v),
            Param::Text(None) => q.bind(None::<&str>),
            Param::Text(Some(Cow::Borrowed(v))) => q.bind(v),
            Param::Text(Some(Cow::Owned(v))) => q.bind(v),
        };
    }
    Ok(q.fetch_all(&mut **tx).await?)
}

/// Most arguments one SQLite round trip carries, so that a large batch is sent as a few
/// messages rather than one huge one. (SQLite's own limit on parameters applies to each
/// statement, which is prepared on its own.)
const PARAMS_PER_ROUND_TRIP: usize = 30_000;

/// Statements run in order, together where the backend allows (see the module's doc).
#[derive(Debug)]
pub(super) struct Script<'q> {
    dialect: Dialect,
    statements: Vec<Statement<'q>>,
}

impl<'q> Extend<Statement<'q>> for Script<'q> {
    fn extend<I: IntoIterator<Item = Statement<'q>>>(&mut self, statements: I) {
        self.statements.extend(statements);
    }
}

impl<'q> Script<'q> {
    pub(super) fn new(dialect: Dialect) -> Self {
        Script {
            dialect,
            statements: Vec::new(),
        }
    }

    pub(super) fn push(&mut self, statement: Statement<'q>) {
        self.statements.push(statement);
    }

    /// Run the statements in `tx`, in order. Returns the rows they returned, in order.
    pub(super) async fn run(self, tx: &mut Transaction<'_, Any>) -> Result<Vec<AnyRow>> {
        let mut rows = Vec::new();
        for (sql, params) in self.round_trips() {
            rows.extend(run_one(tx, &sql, params).await?);
        }
        Ok(rows)
    }

    /// The query texts to send, each with its arguments.
    fn round_trips(self) -> Vec<(String, Vec<Param<'q>>)> {
        match self.dialect {
            Dialect::Postgres => self
                .statements
                .into_iter()
                .map(|s| (s.sql, s.params))
                .collect(),
            Dialect::Sqlite => {
                let mut out: Vec<(String, Vec<Param<'q>>)> = Vec::new();
                for s in self.statements {
                    match out.last_mut() {
                        Some((joined, args))
                            if args.len() + s.params.len() <= PARAMS_PER_ROUND_TRIP =>
                        {
                            joined.push_str(";\n");
                            args.extend(positional(&s.sql, s.params, joined));
                        }
                        _ => {
                            let mut sql = String::with_capacity(s.sql.len());
                            let args = positional(&s.sql, s.params, &mut sql);
                            out.push((sql, args));
                        }
                    }
                }
                out
            }
        }
    }
}

/// Append `sql` to `out` with every `$n` made an anonymous `?`; returns the arguments in the
/// order of the `?`s: `params[n - 1]` for each `$n`, repeated where `$n` is, and NULL where
/// there is no n-th argument (what SQLite binds to a parameter left unbound).
fn positional<'q>(sql: &str, params: Vec<Param<'q>>, out: &mut String) -> Vec<Param<'q>> {
    // Each argument is moved to its first `?` and copied only for a repeat.
    let mut params: Vec<Option<Param<'q>>> = params.into_iter().map(Some).collect();
    let mut first_at = vec![usize::MAX; params.len()];
    let mut ordered: Vec<Param<'q>> = Vec::with_capacity(params.len());
    let mut pieces = sql.split('$');
    out.push_str(pieces.next().unwrap_or_default());
    for piece in pieces {
        let digits = piece.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            out.push('$');
            out.push_str(piece);
            continue;
        }
        let i = piece[..digits]
            .parse::<usize>()
            .ok()
            .and_then(|n| n.checked_sub(1))
            .filter(|&i| i < params.len());
        let arg = match i {
            Some(i) => match params[i].take() {
                Some(arg) => {
                    first_at[i] = ordered.len();
                    arg
                }
                None => ordered[first_at[i]].clone(),
            },
            None => Param::Int(None),
        };
        ordered.push(arg);
        out.push('?');
        out.push_str(&piece[digits..]);
    }
    ordered
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_become_positional_with_their_arguments_in_their_order() {
        let mut out = String::new();
        let args = positional(
            "UPDATE t SET a = $2 WHERE b IN ($1, $10) AND c = '$x' AND d = $1 AND e = $3",
            vec![
                Param::from(1),
                Param::from("two"),
                Param::from(None::<&str>),
            ],
            &mut out,
        );
        assert_eq!(
            out,
            "UPDATE t SET a = ? WHERE b IN (?, ?) AND c = '$x' AND d = ? AND e = ?"
        );
        // $10 has no argument: NULL, as SQLite binds an unbound parameter.
        assert_eq!(
            args,
            vec![
                Param::from("two"),
                Param::from(1),
                Param::Int(None),
                Param::from(1),
                Param::from(None::<&str>),
            ]
        );
    }

    #[test]
    fn sqlite_joins_statements_and_their_arguments_postgres_keeps_them_apart() {
        let script = |dialect| {
            let mut s = Script::new(dialect);
            s.push(Statement::new("DELETE FROM a WHERE id = $1").bind(1));
            s.push(
                Statement::new("UPDATE b SET x = $2 WHERE id = $1")
                    .bind(2)
                    .bind("two"),
            );
            s
        };
        let sqlite = script(Dialect::Sqlite).round_trips();
        assert_eq!(sqlite.len(), 1);
        assert_eq!(
            sqlite[0].0,
            "DELETE FROM a WHERE id = ?;\nUPDATE b SET x = ? WHERE id = ?"
        );
        assert_eq!(
            sqlite[0].1,
            vec![Param::from(1), Param::from("two"), Param::from(2)]
        );
        let postgres = script(Dialect::Postgres).round_trips();
        assert_eq!(postgres.len(), 2);
        assert_eq!(postgres[1].0, "UPDATE b SET x = $2 WHERE id = $1");
    }

    /// A script of a write, a read of what it wrote, a write whose placeholders come after the
    /// first's, and a read of both, on a real database.
    async fn statements_run_in_order_with_their_own_arguments(url: &str) {
        let store = super::super::Store::open(url).await.unwrap();
        let mut tx = store.pool.begin().await.unwrap();
        let mut s = Script::new(store.dialect());
        s.push(
            Statement::new("INSERT INTO leases (name, holder, until) VALUES ($1, $2, $3)")
                .bind("script-a")
                .bind("one")
                .bind(7),
        );
        s.push(Statement::new("SELECT holder FROM leases WHERE name = $1").bind("script-a"));
        s.push(
            Statement::new("UPDATE leases SET holder = $1, until = $2 WHERE name = $3")
                .bind("two")
                .bind(9)
                .bind("script-a"),
        );
        s.push(
            Statement::new("SELECT holder, until FROM leases WHERE name = $1 OR name = $2")
                .bind("script-a")
                .bind(None::<&str>),
        );
        let rows = s.run(&mut tx).await.unwrap();
        let holders: Vec<String> = rows
            .iter()
            .map(|r| sqlx::Row::try_get(r, "holder").unwrap())
            .collect();
        assert_eq!(holders, ["one", "two"]);
        assert_eq!(sqlx::Row::try_get::<i64, _>(&rows[1], "until").unwrap(), 9);
        tx.rollback().await.unwrap();
        store.close().await;
    }

    #[tokio::test]
    async fn a_script_runs_in_order_on_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite:{}", dir.path().join("script.db").display());
        statements_run_in_order_with_their_own_arguments(&url).await;
    }

    /// On a fresh database of the server of `PRESYNC_TEST_POSTGRES_URL` (as the integration
    /// suites do); nothing to do when it is not set.
    #[tokio::test]
    async fn a_script_runs_in_order_on_postgres() {
        use sqlx::Connection as _;
        let Some(admin) = std::env::var("PRESYNC_TEST_POSTGRES_URL")
            .ok()
            .filter(|u| !u.is_empty())
        else {
            return;
        };
        let name = format!("presync_t_{}", uuid::Uuid::new_v4().simple());
        let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap();
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .unwrap();
        let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
        statements_run_in_order_with_their_own_arguments(&format!("{base}/{name}")).await;
        sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .execute(&mut conn)
            .await
            .unwrap();
    }

    #[test]
    fn a_round_trip_carries_at_most_its_share_of_parameters() {
        let mut s = Script::new(Dialect::Sqlite);
        let n = PARAMS_PER_ROUND_TRIP / 2;
        let values: Vec<String> = (1..=n).map(|i| format!("(${i})")).collect();
        for _ in 0..3 {
            let mut st = Statement::new(format!("INSERT INTO t VALUES {}", values.join(",")));
            for i in 0..n {
                st = st.bind(i as i64);
            }
            s.push(st);
        }
        let trips = s.round_trips();
        assert_eq!(
            trips.iter().map(|t| t.1.len()).collect::<Vec<_>>(),
            vec![PARAMS_PER_ROUND_TRIP, PARAMS_PER_ROUND_TRIP / 2]
        );
    }
}
