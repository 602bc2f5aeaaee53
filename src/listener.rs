//! The HTTP listener: presync's router served on a TCP listener, with bounds on what one client
//! may hold (issue #24: idle and slow connections were never closed, and a process out of file
//! descriptors stopped accepting webhooks).
//!
//! - A connection must send a request's headers within `http.header_timeout_secs` of opening,
//!   or of its previous answer (hyper's header read timeout, which also runs while a kept-alive
//!   connection is idle): idle, slowloris and half-opened connections are closed.
//! - At most `http.max_connections` are open at once; more are accepted and closed at once, so
//!   `accept` keeps working and the file descriptors stay available. The cap is also kept below
//!   the process's open-file limit, which the service raises to its hard limit at start.
//! - Bodies are bounded by [`crate::webhook_bodies`] on the webhook routes.
//! - At shutdown the listener stops accepting, idle connections are closed, requests in flight
//!   get `http.shutdown_deadline_secs` to finish, and what is left is then closed.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::{debug, warn};

/// File descriptors kept free of connections: the store's files, the outgoing HTTP clients'
/// connections, logs.
const RESERVED_FDS: u64 = 256;

/// The most a connection's read buffer may grow to (hyper's default is about 400 KiB): a
/// request's headers must fit in it, and bodies pass through it in pieces of at most this.
const READ_BUFFER: usize = 16 * 1024;

/// What one connection may hold, and how long shutdown waits.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub header_timeout: Duration,
    pub max_connections: usize,
    pub shutdown_deadline: Duration,
}

/// Counters of the listener; the service exports them as metrics.
#[derive(Debug, Default)]
pub struct ListenerStats {
    pub accepted: AtomicU64,
    /// Connections closed at once because `max_connections` were open.
    pub refused: AtomicU64,
    /// Connections closed when the shutdown deadline passed.
    pub cut_at_shutdown: AtomicU64,
}

/// Raise the open-file limit to its hard limit and return the number of connections that fit
/// under it with [`RESERVED_FDS`] to spare, at most `wanted`.
pub fn connections_that_fit(wanted: usize) -> usize {
    let limit = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => n,
        Err(e) => {
            warn!(error = %e, "Could not read or raise the open-file limit");
            return wanted;
        }
    };
    let fit = usize::try_from(limit.saturating_sub(RESERVED_FDS).max(16)).unwrap_or(usize::MAX);
    if fit < wanted {
        warn!(
            open_file_limit = limit,
            max_connections = fit,
            "http.max_connections lowered to fit the open-file limit"
        );
    }
    wanted.min(fit)
}

/// Serve `router` on `listener` until `shutdown` completes, then drain as described above.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    stats: Arc<ListenerStats>,
    shutdown: impl Future<Output = ()>,
) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(READ_BUFFER)
        .keep_alive(true);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        while connections.try_join_next().is_some() {}
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, or a connection reset before it was accepted:
                    // wait a little rather than spin.
                    warn!(error = %e, "Could not accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            stats.refused.fetch_add(1, Ordering::Relaxed);
            debug!(%peer, "Connection closed at once: http.max_connections are open");
            drop(tcp);
            continue;
        };
        stats.accepted.fetch_add(1, Ordering::Relaxed);
        let _ = tcp.set_nodelay(true);
        let conn =
            http.serve_connection(TokioIo::new(tcp), TowerToHyperService::new(router.clone()));
        let conn = graceful.watch(conn);
        connections.spawn(async move {
            if let Err(e) = conn.await {
                debug!(%peer, error = %e, "Connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    let open = connections.len();
    if tokio::time::timeout(limits.shutdown_deadline, graceful.shutdown())
        .await
        .is_err()
    {
        let left = connections.len();
        stats
            .cut_at_shutdown
            .fetch_add(left as u64, Ordering::Relaxed);
        warn!(
            connections = left,
            "Shutdown deadline passed: closing the connections still open"
        );
        connections.abort_all();
    } else {
        debug!(connections = open, "Every connection finished");
    }
    while connections.join_next().await.is_some() {}
}
