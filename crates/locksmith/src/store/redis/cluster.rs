//! The cluster connection of a store, replaced by a fresh one when calls stall.
//!
//! redis-rs learns a cluster's new topology only from `MOVED` replies and lost
//! connections. A master that stops answering without closing its connections (frozen, or
//! cut off by the network) gives neither: after its replica took over, every call on its
//! slots would keep timing out until the old master came back. So a call that times out,
//! or is abandoned (the core's call timeout) after being in flight for a while, asks for a
//! new connection, which reads the topology afresh from the seed nodes; at most one is
//! built at a time and at most one per [`MIN_GAP`]. Calls already in flight finish on the
//! old connection.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use redis::RedisResult;
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;

/// Builds a client for a new connection.
pub(super) type Build = Arc<dyn Fn() -> RedisResult<ClusterClient> + Send + Sync>;

/// The shortest time between two rebuilds.
const MIN_GAP: Duration = Duration::from_secs(1);

/// A cluster connection that can be replaced (see the [module docs](self)).
pub(super) struct ClusterConn {
    current: RwLock<ClusterConnection>,
    /// `None`: never replaced (a connection made for one task).
    build: Option<Build>,
    timeout: Duration,
    rebuilding: AtomicBool,
    last: Mutex<Option<Instant>>,
    /// Counts the rebuilds, so the subscription connection can follow.
    renewed: tokio::sync::watch::Sender<u64>,
}

impl ClusterConn {
    /// A connection that `build` replaces when calls stall; `timeout` is the store's call
    /// timeout: four times it bounds a new connection's setup, half of it is how long a
    /// call may be in flight before its abandonment counts as a stall.
    pub(super) fn new(conn: ClusterConnection, build: Build, timeout: Duration) -> Arc<Self> {
        Arc::new(ClusterConn {
            current: RwLock::new(conn),
            build: Some(build),
            timeout,
            rebuilding: AtomicBool::new(false),
            last: Mutex::new(None),
            renewed: tokio::sync::watch::Sender::new(0),
        })
    }

    /// A connection that is never replaced.
    pub(super) fn fixed(conn: ClusterConnection) -> Arc<Self> {
        Arc::new(ClusterConn {
            current: RwLock::new(conn),
            build: None,
            timeout: Duration::ZERO,
            rebuilding: AtomicBool::new(false),
            last: Mutex::new(None),
            renewed: tokio::sync::watch::Sender::new(0),
        })
    }

    /// Changes each time the connection was replaced: the topology may have changed, and
    /// the subscription connection should be built anew too.
    pub(super) fn renewals(&self) -> tokio::sync::watch::Receiver<u64> {
        self.renewed.subscribe()
    }

    /// The current connection (a cheap handle).
    pub(super) fn get(&self) -> ClusterConnection {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Runs one call on the current connection, watching it for a stall.
    pub(super) async fn run<T, F, Fut>(self: &Arc<Self>, call: F) -> RedisResult<T>
    where
        F: FnOnce(ClusterConnection) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let mut watch = Watch {
            conn: self,
            started: Instant::now(),
            done: false,
            timed_out: false,
        };
        let answer = call(self.get()).await;
        // A timeout counts as a stall however soon it came; any other answer is fine.
        watch.timed_out = matches!(&answer, Err(e) if e.is_timeout());
        watch.done = !watch.timed_out;
        answer
    }

    /// Starts building a new connection, unless one is being built or was built lately.
    fn stalled(self: &Arc<Self>) {
        let Some(build) = self.build.clone() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.rebuilding.swap(true, Ordering::AcqRel) {
            return;
        }
        let recent = self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_some_and(|at| at.elapsed() < MIN_GAP);
        if recent {
            self.rebuilding.store(false, Ordering::Release);
            return;
        }
        let me = Arc::downgrade(self);
        // The seeds include the stalled node: connecting may wait out its connection and
        // response timeouts before another node answers.
        let timeout = self.timeout * 4;
        runtime.spawn(async move {
            let fresh = match build() {
                Ok(client) => tokio::time::timeout(timeout, client.get_async_connection())
                    .await
                    .ok()
                    .and_then(Result::ok),
                Err(_) => None,
            };
            let Some(me) = me.upgrade() else {
                return;
            };
            match fresh {
                Some(conn) => {
                    tracing::debug!("redis cluster calls stalled; connected afresh");
                    *me.current
                        .write()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = conn;
                    me.renewed.send_modify(|n| *n += 1);
                }
                None => tracing::debug!("redis cluster calls stalled; reconnecting failed"),
            }
            *me.last
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Instant::now());
            me.rebuilding.store(false, Ordering::Release);
        });
    }
}

/// Watches one call: dropped unfinished (or finished by a timeout) after being in flight
/// for half the timeout, it reports a stall.
struct Watch<'a> {
    conn: &'a Arc<ClusterConn>,
    started: Instant,
    done: bool,
    timed_out: bool,
}

impl Drop for Watch<'_> {
    fn drop(&mut self) {
        if self.timed_out || (!self.done && self.started.elapsed() >= self.conn.timeout / 2) {
            self.conn.stalled();
        }
    }
}
