//! The load generator and the ingest baseline.
//!
//! The generator is closed-loop for throughput (a fixed number of requests in flight on
//! keep-alive connections for a fixed time, counting 2xx answers) and open-loop for latency
//! (one request started every `1/rate` seconds, whatever the answers). The baseline is the same
//! HTTP stack as presync (axum, hyper, tokio) whose handler only reads and parses the body and
//! answers 202; `presync bench --baseline-listen ADDR` runs it as its own process, so it sits
//! where a `presync run` would.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::body::Bytes;
use axum::http::StatusCode;

/// Where to POST and with which headers.
#[derive(Debug, Clone)]
pub struct Target {
    pub url: String,
    pub headers: Vec<(String, String)>,
}

/// Builds the body of event `seq`.
pub type BodyFn = Arc<dyn Fn(u64) -> String + Send + Sync>;

/// What a throughput run counted.
#[derive(Debug, Clone, Copy)]
pub struct Throughput {
    pub ok: u64,
    pub failed: u64,
    pub secs: f64,
}

impl Throughput {
    pub fn per_sec(&self) -> f64 {
        self.ok as f64 / self.secs
    }
}

fn client(conns: usize) -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .pool_max_idle_per_host(conns)
        .timeout(Duration::from_secs(30))
        .build()
        .context("building the load generator's HTTP client")
}

/// A [`Target`] parsed once: the generator shares the machine with what it measures, so it
/// does not parse the same URL and headers again for every request.
#[derive(Debug, Clone)]
struct Prepared {
    url: reqwest::Url,
    headers: reqwest::header::HeaderMap,
}

impl Prepared {
    fn new(target: &Target) -> anyhow::Result<Prepared> {
        let url = reqwest::Url::parse(&target.url).context("the target's URL")?;
        let mut headers = reqwest::header::HeaderMap::new();
        for (k, v) in &target.headers {
            headers.append(
                reqwest::header::HeaderName::from_bytes(k.as_bytes())?,
                reqwest::header::HeaderValue::from_str(v)?,
            );
        }
        Ok(Prepared { url, headers })
    }
}

async fn post(http: &reqwest::Client, target: &Prepared, body: String) -> bool {
    let req = http
        .request(reqwest::Method::POST, target.url.clone())
        .headers(target.headers.clone())
        .body(body);
    match req.send().await {
        Ok(r) => r.status().is_success(),
        Err(_) => false,
    }
}

/// `in_flight` requests at a time for `warmup` (not counted) then `secs`; 2xx answers count.
/// `first_seq` numbers the bodies, so runs against one service never repeat an event.
pub async fn throughput(
    target: &Target,
    body: BodyFn,
    in_flight: usize,
    warmup: Duration,
    measure: Duration,
    first_seq: u64,
) -> anyhow::Result<(Throughput, u64)> {
    let http = client(in_flight)?;
    let target = Prepared::new(target)?;
    let seq = Arc::new(AtomicU64::new(first_seq));
    let counting = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::with_capacity(in_flight);
    for _ in 0..in_flight {
        let (http, target, body) = (http.clone(), target.clone(), body.clone());
        let (seq, counting, stop) = (seq.clone(), counting.clone(), stop.clone());
        let (ok, failed) = (ok.clone(), failed.clone());
        workers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let n = seq.fetch_add(1, Ordering::Relaxed);
                let good = post(&http, &target, body(n)).await;
                if counting.load(Ordering::Relaxed) {
                    let counter = if good { &ok } else { &failed };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    tokio::time::sleep(warmup).await;
    counting.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(measure).await;
    counting.store(false, Ordering::Relaxed);
    let secs = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.await;
    }
    let result = Throughput {
        ok: ok.load(Ordering::Relaxed),
        failed: failed.load(Ordering::Relaxed),
        secs,
    };
    Ok((result, seq.load(Ordering::Relaxed)))
}

/// One request sent by [`paced`]: its event number, when it was started, and whether it was
/// answered 2xx.
#[derive(Debug, Clone, Copy)]
pub struct Sent {
    pub seq: u64,
    pub at: Instant,
    pub ok: bool,
}

/// Events `0..count` at `rate` per second, each started on schedule (open loop).
pub async fn paced(
    target: &Target,
    body: BodyFn,
    rate: u32,
    count: u64,
) -> anyhow::Result<Vec<Sent>> {
    let http = client(64)?;
    let target = Prepared::new(target)?;
    let period = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = Vec::new();
    for seq in 0..count {
        ticker.tick().await;
        let (http, target, text) = (http.clone(), target.clone(), body(seq));
        tasks.push(tokio::spawn(async move {
            let at = Instant::now();
            let ok = post(&http, &target, text).await;
            Sent { seq, at, ok }
        }));
    }
    let mut sent = Vec::with_capacity(tasks.len());
    for t in tasks {
        sent.push(t.await.context("a sender task failed")?);
    }
    Ok(sent)
}

/// The baseline's only handler: read the body, parse it as JSON, answer 202.
async fn parse_and_accept(body: Bytes) -> StatusCode {
    match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(_) => StatusCode::ACCEPTED,
        Err(_) => StatusCode::BAD_REQUEST,
    }
}

/// Serve the baseline on `listen` until the process is killed.
pub async fn serve_baseline(listen: &str) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let app =
        axum::Router::new().route("/webhooks/dataverse", axum::routing::post(parse_and_accept));
    axum::serve(listener, app).await?;
    Ok(())
}

/// The baseline as a child process (this binary), killed when dropped.
#[derive(Debug)]
pub struct Baseline {
    child: std::process::Child,
    pub url: String,
}

impl Baseline {
    pub async fn spawn() -> anyhow::Result<Baseline> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let listen = format!("127.0.0.1:{port}");
        let child = std::process::Command::new(std::env::current_exe()?)
            .args(["bench", "--baseline-listen", &listen])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .spawn()
            .context("starting the baseline")?;
        let baseline = Baseline {
            child,
            url: format!("http://{listen}/webhooks/dataverse"),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(&listen).await.is_err() {
            anyhow::ensure!(Instant::now() < deadline, "the baseline did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(baseline)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Baseline {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_baseline_accepts_json_and_refuses_the_rest() {
        assert_eq!(
            parse_and_accept(Bytes::from_static(b"{\"a\":1}")).await,
            StatusCode::ACCEPTED
        );
        assert_eq!(
            parse_and_accept(Bytes::from_static(b"{")).await,
            StatusCode::BAD_REQUEST
        );
    }
}
