//! The connector conformance kit: the behaviour every [`Connector`] must show, as one suite.
//!
//! A connector crate runs it in its own tests against its simulator. Implement [`Harness`] for
//! a small type that owns the simulator and the connector under test, then:
//!
//! ```ignore
//! #[tokio::test]
//! async fn connector_conforms() {
//!     let harness = MyHarness::start().await; // simulator on a loopback port + connector
//!     presync_engine::conformance::run(&harness).await.assert_passed();
//! }
//! ```
//!
//! What the kit checks: the mapping round-trips and never routes an unknown native state; a
//! write takes effect (per the simulator's truth and the connector's own bulk read) and is
//! idempotent; a bulk read returns each user once; rate limits, server errors, refused
//! credentials and rejected writes are classified so that the dispatcher's retry decisions
//! ([`ConnectorError::retry_after`], [`ConnectorError::is_transient`]) are right; the connector
//! works again after faults; a contribution connector accepts `Withdraw`.
//!
//! Each check is independent and recorded in the [`Report`] as passed, skipped (the connector
//! lacks the capability, or the harness cannot inject the fault) or failed with the reason. The
//! kit never panics itself; a panic inside the connector is recorded as a failure.
//!
//! For a [`WriteSemantics::Contribution`] connector, the harness's users must have no other
//! contribution at the remote (no own session, no preferred presence), so that the aggregate
//! shows exactly what presync contributes. The tests of [`crate::memory`] implement `Harness`
//! for the in-memory connector: a short example to copy.

use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::FutureExt;

use crate::clock::{Clock, SystemClock};
use crate::connector::{Capabilities, Connector, ConnectorError, WriteSemantics};
use crate::model::{Availability, Desired, ExternalId, NativeState, Origin, Presence, SystemId};

/// What a connector crate provides to run the kit against its implementation.
#[async_trait]
pub trait Harness: Send + Sync {
    /// The connector under test.
    fn connector(&self) -> Arc<dyn Connector>;
    /// At least two users that exist at the remote and may be written.
    fn users(&self) -> Vec<ExternalId>;
    /// The remote's own record of the user's state at the canonical level (simulator truth), if
    /// the harness can tell.
    async fn remote_state(&self, user: &ExternalId) -> Option<Availability>;
    /// Make the NEXT remote call fail this way. Return false when the harness cannot (the check
    /// is then reported as skipped).
    async fn inject(&self, fault: Fault) -> bool;
}

/// A fault the harness makes the remote produce on its next call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// HTTP 429 (or the system's equivalent) with this `Retry-After`.
    RateLimited { retry_after: Duration },
    /// A 5xx.
    ServerError,
    /// Credentials refused, also after the connector's own token refresh.
    Unauthorized,
    /// The remote refuses the write for good (400/403/404).
    RejectWrite,
}

/// The result of one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Passed,
    /// Not applicable to this connector or harness, with the reason.
    Skipped(String),
    /// With what went wrong.
    Failed(String),
}

/// One named check and its outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub name: &'static str,
    pub outcome: Outcome,
}

/// Every check the kit ran, in order.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub checks: Vec<Check>,
}

impl Report {
    /// The checks that failed.
    pub fn failures(&self) -> Vec<&Check> {
        self.checks
            .iter()
            .filter(|c| matches!(c.outcome, Outcome::Failed(_)))
            .collect()
    }

    /// Panic, listing every failed check, unless none failed. For use in tests.
    pub fn assert_passed(&self) {
        let failures = self.failures();
        if failures.is_empty() {
            return;
        }
        let list: Vec<String> = failures.iter().map(|c| format!("  {}", line(c))).collect();
        panic!(
            "{} connector conformance check(s) failed:\n{}\nfull report:\n{self}",
            failures.len(),
            list.join("\n")
        );
    }
}

fn line(c: &Check) -> String {
    match &c.outcome {
        Outcome::Passed => format!("passed  {}", c.name),
        Outcome::Skipped(why) => format!("skipped {}: {why}", c.name),
        Outcome::Failed(why) => format!("FAILED  {}: {why}", c.name),
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in &self.checks {
            writeln!(f, "{}", line(c))?;
        }
        Ok(())
    }
}

/// Why a check stopped before passing.
enum Stop {
    Skip(String),
    Fail(String),
}

impl From<ConnectorError> for Stop {
    fn from(e: ConnectorError) -> Self {
        Stop::Fail(format!("unexpected {} error: {e}", e.class()))
    }
}

type CheckResult = Result<(), Stop>;

macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return fail(format!($($msg)+));
        }
    };
}

fn fail<T>(message: impl Into<String>) -> Result<T, Stop> {
    Err(Stop::Fail(message.into()))
}

fn skip<T>(reason: &str) -> Result<T, Stop> {
    Err(Stop::Skip(reason.to_owned()))
}

/// Passes when `e` is of the class (see [`ConnectorError::class`]) the fault calls for.
fn classified(e: &ConnectorError, want: &str) -> CheckResult {
    ensure!(
        e.class() == want,
        "classified as {} instead of {want}: {e}",
        e.class()
    );
    Ok(())
}

/// What every check reads.
struct Ctx<'a> {
    harness: &'a dyn Harness,
    connector: Arc<dyn Connector>,
    caps: Capabilities,
    users: Vec<ExternalId>,
    version: AtomicI64,
}

impl Ctx<'_> {
    fn user(&self, i: usize) -> Result<ExternalId, Stop> {
        match self.users.get(i) {
            Some(u) => Ok(u.clone()),
            None => fail(format!(
                "the harness offers {} user(s); the kit needs at least two",
                self.users.len()
            )),
        }
    }

    fn require_write(&self) -> CheckResult {
        if self.caps.write {
            return Ok(());
        }
        skip("the connector does not write")
    }

    /// The availabilities the connector can write.
    fn expressible(&self) -> Result<Vec<Availability>, Stop> {
        let all: Vec<_> = Availability::ALL
            .into_iter()
            .filter(|a| self.connector.to_native(*a).is_some())
            .collect();
        if all.is_empty() {
            return fail("to_native expresses no availability at all");
        }
        Ok(all)
    }

    /// A presence to write, with a fresh version.
    fn set(&self, availability: Availability) -> Desired {
        let now = SystemClock.now();
        Desired::Set(Presence {
            availability,
            native: self
                .connector
                .to_native(availability)
                .unwrap_or_else(|| NativeState::new(availability.as_str())),
            source: SystemId::from("conformance"),
            source_time: now,
            origin: Origin::Unknown,
            observed_at: now,
            version: self.version.fetch_add(1, Ordering::Relaxed),
        })
    }

    /// Write `a` to `user`, then check the simulator's truth and the connector's bulk read.
    async fn write_and_verify(&self, user: &ExternalId, a: Availability) -> CheckResult {
        if let Err(e) = self.connector.write(user, &self.set(a)).await {
            return fail(format!("writing {a} to {user} failed: {e}"));
        }
        if let Some(remote) = self.harness.remote_state(user).await {
            ensure!(
                remote == a,
                "after writing {a} to {user} the remote holds {remote}"
            );
        }
        if self.caps.bulk_read {
            let states = self.connector.read_all(std::slice::from_ref(user)).await?;
            let mine: Vec<_> = states.iter().filter(|s| &s.external_id == user).collect();
            let [state] = mine.as_slice() else {
                return fail(format!(
                    "after writing {a}, read_all returned {user} {} times",
                    mine.len()
                ));
            };
            let mapped = self.connector.to_canonical(&state.native);
            ensure!(
                mapped.availability == a && mapped.known,
                "after writing {a}, read_all shows {user} as {:?} which maps to {mapped:?}",
                state.native
            );
        }
        Ok(())
    }

    /// Inject `fault`, make one remote call (a write when the connector writes, else a bulk read)
    /// and return its error.
    async fn provoke(&self, fault: Fault) -> Result<ConnectorError, Stop> {
        let write = self.caps.write;
        if !write && (fault == Fault::RejectWrite || !self.caps.bulk_read) {
            return skip("the connector makes no call that can meet this fault");
        }
        let user = self.user(0)?;
        let desired = self.set(self.expressible()?[0]);
        if !self.harness.inject(fault.clone()).await {
            return Err(Stop::Skip(format!("the harness cannot inject {fault:?}")));
        }
        let result = if write {
            self.connector.write(&user, &desired).await
        } else {
            self.connector
                .read_all(std::slice::from_ref(&user))
                .await
                .map(drop)
        };
        match result {
            Ok(()) => fail(format!(
                "the call succeeded although {fault:?} was injected"
            )),
            Err(e) => Ok(e),
        }
    }
}

/// Run every check against the harness's connector.
pub async fn run(harness: &dyn Harness) -> Report {
    let connector = harness.connector();
    let ctx = Ctx {
        harness,
        caps: connector.capabilities(),
        connector,
        users: harness.users(),
        version: AtomicI64::new(1),
    };
    let mut report = Report::default();
    macro_rules! checks {
        ($($name:literal => $check:ident,)*) => {
            $(report.record($name, $check(&ctx)).await;)*
        };
    }
    checks! {
        "mapping_round_trips" => mapping_round_trips,
        "unknown_native_state_is_not_routable" => unknown_native,
        "write_takes_effect" => write_takes_effect,
        "write_is_idempotent" => write_is_idempotent,
        "bulk_read_returns_each_user_once" => bulk_read_each_once,
        "rate_limit_is_classified" => rate_limit,
        "server_error_is_transient" => server_error,
        "unauthorized_is_classified" => unauthorized,
        "rejected_write_is_permanent" => rejected,
        "recovers_after_faults" => recovers,
        "withdraw_is_accepted" => withdraw,
    }
    report
}

impl Report {
    async fn record(
        &mut self,
        name: &'static str,
        check: impl std::future::Future<Output = CheckResult>,
    ) {
        let outcome = match AssertUnwindSafe(check).catch_unwind().await {
            Ok(Ok(())) => Outcome::Passed,
            Ok(Err(Stop::Skip(why))) => Outcome::Skipped(why),
            Ok(Err(Stop::Fail(why))) => Outcome::Failed(why),
            Err(panic) => {
                let msg = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                Outcome::Failed(format!("panicked: {msg}"))
            }
        };
        self.checks.push(Check { name, outcome });
    }
}

async fn mapping_round_trips(ctx: &Ctx<'_>) -> CheckResult {
    let mut wrong = Vec::new();
    for a in ctx.expressible()? {
        let Some(n) = ctx.connector.to_native(a) else {
            continue;
        };
        let m = ctx.connector.to_canonical(&n);
        if m.availability != a || !m.known {
            wrong.push(format!("{a} -> {n:?} -> {m:?}"));
        }
    }
    ensure!(wrong.is_empty(), "{}", wrong.join("; "));
    Ok(())
}

async fn unknown_native(ctx: &Ctx<'_>) -> CheckResult {
    let n = NativeState::new("presync-conformance-unknown").with_label("made up by the kit");
    let m = ctx.connector.to_canonical(&n);
    ensure!(
        !m.availability.is_routable(),
        "an unknown native state maps to routable {m:?}"
    );
    ensure!(
        !m.known,
        "an unknown native state is reported as known: {m:?}"
    );
    Ok(())
}

async fn write_takes_effect(ctx: &Ctx<'_>) -> CheckResult {
    ctx.require_write()?;
    let user = ctx.user(0)?;
    for a in ctx.expressible()? {
        ctx.write_and_verify(&user, a).await?;
    }
    Ok(())
}

async fn write_is_idempotent(ctx: &Ctx<'_>) -> CheckResult {
    ctx.require_write()?;
    let user = ctx.user(1)?;
    let options = ctx.expressible()?;
    let a = options
        .iter()
        .copied()
        .find(|a| *a == Availability::Busy)
        .unwrap_or(options[0]);
    let desired = ctx.set(a);
    if let Err(e) = ctx.connector.write(&user, &desired).await {
        return fail(format!("first write of {a} failed: {e}"));
    }
    let after_first = ctx.harness.remote_state(&user).await;
    if let Err(e) = ctx.connector.write(&user, &desired).await {
        return fail(format!("repeating the write of {a} failed: {e}"));
    }
    let after_second = ctx.harness.remote_state(&user).await;
    ensure!(
        after_first == after_second,
        "repeating the write changed the remote from {after_first:?} to {after_second:?}"
    );
    if let Some(remote) = after_second {
        ensure!(
            remote == a,
            "after writing {a} twice the remote holds {remote}"
        );
    }
    Ok(())
}

async fn bulk_read_each_once(ctx: &Ctx<'_>) -> CheckResult {
    if !ctx.caps.bulk_read {
        return skip("the connector does not read in bulk");
    }
    ctx.user(1)?;
    let states = ctx.connector.read_all(&ctx.users).await?;
    let wrong: Vec<String> = ctx
        .users
        .iter()
        .filter_map(|u| {
            let n = states.iter().filter(|s| &s.external_id == u).count();
            (n != 1).then(|| format!("{u} returned {n} times"))
        })
        .collect();
    ensure!(wrong.is_empty(), "{}", wrong.join("; "));
    Ok(())
}

async fn rate_limit(ctx: &Ctx<'_>) -> CheckResult {
    let injected = Duration::from_secs(2);
    let e = ctx
        .provoke(Fault::RateLimited {
            retry_after: injected,
        })
        .await?;
    classified(&e, "rate_limited")?;
    ensure!(e.is_transient(), "a rate limit is not transient: {e}");
    match e.retry_after() {
        Some(d) if d.abs_diff(injected) <= Duration::from_secs(1) => Ok(()),
        other => fail(format!(
            "retry_after is {other:?}, the remote said {injected:?}"
        )),
    }
}

async fn server_error(ctx: &Ctx<'_>) -> CheckResult {
    let e = ctx.provoke(Fault::ServerError).await?;
    ensure!(e.is_transient(), "a server error is not transient: {e}");
    ensure!(
        e.class() != "rejected",
        "a server error is classified as rejected: {e}"
    );
    Ok(())
}

async fn unauthorized(ctx: &Ctx<'_>) -> CheckResult {
    let e = ctx.provoke(Fault::Unauthorized).await?;
    classified(&e, "unauthorized")
}

async fn rejected(ctx: &Ctx<'_>) -> CheckResult {
    ctx.require_write()?;
    let e = ctx.provoke(Fault::RejectWrite).await?;
    classified(&e, "rejected")?;
    ensure!(!e.is_transient(), "a rejected write is transient: {e}");
    Ok(())
}

async fn recovers(ctx: &Ctx<'_>) -> CheckResult {
    let user = ctx.user(0)?;
    if !ctx.caps.write {
        if !ctx.caps.bulk_read {
            return skip("the connector neither writes nor reads in bulk");
        }
        ctx.connector.read_all(std::slice::from_ref(&user)).await?;
        return Ok(());
    }
    let current = ctx.harness.remote_state(&user).await;
    let options = ctx.expressible()?;
    let a = options
        .iter()
        .copied()
        .find(|a| Some(*a) != current)
        .unwrap_or(options[0]);
    ctx.write_and_verify(&user, a).await
}

async fn withdraw(ctx: &Ctx<'_>) -> CheckResult {
    if ctx.caps.write_semantics != WriteSemantics::Contribution {
        return skip("only for contribution semantics");
    }
    ctx.require_write()?;
    let user = ctx.user(0)?;
    for attempt in ["first", "repeated"] {
        if let Err(e) = ctx.connector.write(&user, &Desired::Withdraw).await {
            return fail(format!("the {attempt} withdraw failed: {e}"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::clock::ManualClock;
    use crate::connector::{Mapped, RemoteState};
    use crate::memory::MemorySystem;

    /// A connector that maps everything to Available and calls a rate limit a rejection.
    #[derive(Debug)]
    struct Broken(Arc<dyn Connector>);

    #[async_trait]
    impl Connector for Broken {
        fn kind(&self) -> &'static str {
            "broken"
        }
        fn capabilities(&self) -> Capabilities {
            self.0.capabilities()
        }
        fn to_canonical(&self, _: &NativeState) -> Mapped {
            Mapped {
                availability: Availability::Available,
                known: true,
            }
        }
        fn to_native(&self, a: Availability) -> Option<NativeState> {
            self.0.to_native(a)
        }
        async fn write(&self, user: &ExternalId, d: &Desired) -> Result<(), ConnectorError> {
            self.0.write(user, d).await.map_err(|e| match e {
                ConnectorError::RateLimited { message, .. } => ConnectorError::Rejected { message },
                other => other,
            })
        }
        async fn read_all(&self, users: &[ExternalId]) -> Result<Vec<RemoteState>, ConnectorError> {
            self.0.read_all(users).await
        }
    }

    struct BrokenHarness(MemorySystem);

    #[async_trait]
    impl Harness for BrokenHarness {
        fn connector(&self) -> Arc<dyn Connector> {
            Arc::new(Broken(self.0.connector()))
        }
        fn users(&self) -> Vec<ExternalId> {
            Harness::users(&self.0)
        }
        async fn remote_state(&self, user: &ExternalId) -> Option<Availability> {
            self.0.state(user)
        }
        async fn inject(&self, fault: Fault) -> bool {
            Harness::inject(&self.0, fault).await
        }
    }

    fn memory() -> MemorySystem {
        let sys = MemorySystem::new("mem", Arc::new(ManualClock::new(0)));
        sys.add_user("a", Availability::Offline);
        sys.add_user("b", Availability::Offline);
        sys
    }

    fn outcome<'r>(report: &'r Report, name: &str) -> &'r Outcome {
        &report
            .checks
            .iter()
            .find(|c| c.name == name)
            .unwrap()
            .outcome
    }

    #[tokio::test]
    async fn broken_connector_is_reported_with_each_failing_check() {
        let report = run(&BrokenHarness(memory())).await;
        let failed: Vec<_> = report.failures().iter().map(|c| c.name).collect();
        for name in [
            "mapping_round_trips",
            "unknown_native_state_is_not_routable",
            "write_takes_effect",
            "rate_limit_is_classified",
        ] {
            assert!(failed.contains(&name), "{name} should fail:\n{report}");
        }
        assert_eq!(
            outcome(&report, "unauthorized_is_classified"),
            &Outcome::Passed
        );
        assert!(report
            .to_string()
            .lines()
            .any(|l| l.starts_with("FAILED  rate_limit_is_classified")));
    }

    #[tokio::test]
    #[should_panic(expected = "connector conformance check(s) failed")]
    async fn assert_passed_panics_when_a_check_failed() {
        run(&BrokenHarness(memory())).await.assert_passed();
    }

    #[tokio::test]
    async fn too_few_users_fail_instead_of_panicking() {
        let sys = MemorySystem::new("mem", Arc::new(ManualClock::new(0)));
        sys.add_user("only", Availability::Offline);
        let report = run(&sys).await;
        assert!(
            matches!(outcome(&report, "write_is_idempotent"), Outcome::Failed(m) if m.contains("at least two"))
        );
        assert_eq!(outcome(&report, "write_takes_effect"), &Outcome::Passed);
    }

    #[test]
    fn run_is_send_so_it_can_be_spawned() {
        fn assert_send<T: Send>(_: &T) {}
        let sys = memory();
        assert_send(&run(&sys));
    }

    #[tokio::test]
    async fn report_has_one_line_per_check() {
        let report = run(&memory()).await;
        assert_eq!(report.to_string().lines().count(), report.checks.len());
        assert!(report.failures().is_empty(), "{report}");
    }
}
