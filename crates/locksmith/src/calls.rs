//! Every store call the core makes goes through [`Calls`]: it runs the call under the URL's
//! `?timeout=` (a call that does not answer in time is a retryable [`Error::Store`]), and it
//! owns the background work a [`Locksmith`](crate::Locksmith) keeps going — releases that
//! failed and are retried until they succeed, the lease ends, or
//! [`close`](crate::Locksmith::close) is called.
//!
//! Layering: above the stores, below [`held`](crate::held) and everything that holds locks.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::error::{Error, Result};
use crate::lease::Token;
use crate::name::{LockName, Namespace};
use crate::registry::{Handover, Offer};
use crate::store::{Released, Store, Successor};

/// The store, the call timeout, and the background work shared by every handle derived from
/// one `connect`.
#[derive(Clone, Debug)]
pub(crate) struct Calls {
    pub(crate) store: Arc<dyn Store>,
    /// The store's [`identity`](Store::identity), computed once: it keys this process's
    /// waiting queues, which every `acquire` joins.
    pub(crate) identity: Arc<str>,
    /// The store's [`Capabilities::pushed_grants`](crate::store::Capabilities), read once:
    /// its guards offer the lock to this process's next waiter when they release it (see
    /// [`registry`](crate::registry)).
    pub(crate) pushed_grants: bool,
    pub(crate) timeout: Duration,
    background: Arc<Background>,
    /// Starts the tasks of guards that live long enough to need one.
    pub(crate) starter: Arc<crate::watchdog::Starter>,
}

/// Background release retries: how many run, and whether `close` asked them to finish.
#[derive(Debug, Default)]
struct Background {
    running: AtomicUsize,
    /// Signalled when `running` drops to zero.
    idle: Notify,
    closing: AtomicBool,
    /// Signalled when `close` starts, to cut retry pauses short.
    close: Notify,
}

/// Counts one background task while it lives.
struct Running(Arc<Background>);

impl Running {
    fn start(bg: &Arc<Background>) -> Running {
        bg.running.fetch_add(1, Ordering::SeqCst);
        Running(bg.clone())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.0.running.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl Calls {
    pub(crate) fn new(store: Arc<dyn Store>, timeout: Duration) -> Calls {
        Calls {
            identity: store.identity().into(),
            pushed_grants: store.capabilities().pushed_grants,
            store,
            timeout,
            background: Arc::default(),
            starter: Arc::default(),
        }
    }

    /// The same store and background work with another call timeout.
    pub(crate) fn with_timeout(&self, timeout: Duration) -> Calls {
        Calls {
            timeout,
            ..self.clone()
        }
    }

    /// The error for a call that did not answer within the timeout.
    pub(crate) fn timed_out(&self, op: &str) -> Error {
        Error::store(
            self.store.kind(),
            true,
            format!(
                "{op} got no answer from the store within {:?} — check that the store is up, or raise the URL's ?timeout= (default 5s)",
                self.timeout
            ),
        )
    }

    /// Runs one store call under the timeout.
    pub(crate) async fn run<T>(
        &self,
        op: &'static str,
        call: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(answer) => answer,
            Err(_) => {
                metrics::counter!("locksmith_call_timeouts_total", "store" => self.store.kind(), "op" => op)
                    .increment(1);
                Err(self.timed_out(op))
            }
        }
    }

    /// Releases `token`'s hold on `name`, under the timeout.
    pub(crate) async fn release(
        &self,
        ns: &Namespace,
        name: &LockName,
        token: &Token,
        min_hold: Option<Duration>,
    ) -> Result<Released> {
        self.run("release", self.store.release(ns, name, token, min_hold))
            .await
    }

    /// Releases `token`'s hold on `name` and hands the lock to the claim `offer` holds, under
    /// the timeout, then tells the claim's waiter what became of it (a release that fails
    /// tells it nothing: it cannot know whether the claim holds the lock). A waiter that has
    /// gone away leaves its claim here, and its token is released at once.
    pub(crate) async fn release_to(
        &self,
        ns: &Namespace,
        name: &LockName,
        token: &Token,
        min_hold: Option<Duration>,
        offer: Offer,
    ) -> Result<Released> {
        let sent = Instant::now();
        // On an error the offer is dropped unanswered: the release may have handed the
        // lock over, and the waiter settles it.
        let (released, next) = self
            .run(
                "release",
                self.store
                    .release_to(ns, name, token, min_hold, &offer.claim),
            )
            .await?;
        let word = match next {
            Successor::Granted { fence } => Handover::Granted { fence, sent },
            Successor::Queued { holder_fence } => Handover::Queued { holder_fence, sent },
            _ => Handover::Retry,
        };
        let taken = !matches!(word, Handover::Retry);
        if offer.answer.send(word).is_err() && taken {
            let c = &offer.claim;
            tracing::debug!(lock = %name, "the waiter left while its lock was handed to it; releasing");
            self.store.release_detached(ns, &c.name, &c.token, None);
        }
        Ok(released)
    }

    /// Keeps retrying a release that failed, in the background, with backoff: until the store
    /// answers (released, kept, or not held), a non-retryable error, `until` (the end of the
    /// lease, after which the lock is free anyway), or [`close`](Calls::close) — which makes
    /// one last attempt. Needs a tokio runtime; without one the lock is left to its lease.
    pub(crate) fn retry_release(
        &self,
        ns: &Namespace,
        name: &LockName,
        token: &Token,
        min_hold: Option<Duration>,
        until: Option<Instant>,
    ) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(lock = %name, "release failed and no runtime is left to retry it; the lease will expire");
            return;
        };
        let running = Running::start(&self.background);
        let calls = self.clone();
        let (ns, name, token) = (ns.clone(), name.clone(), token.clone());
        rt.spawn(async move {
            let _running = running;
            let bg = calls.background.clone();
            let mut pause = Duration::from_millis(50);
            loop {
                // Created before the check: it sees a close that happens after it.
                let wake = bg.close.notified();
                let last = bg.closing.load(Ordering::SeqCst);
                if !last {
                    let sleep = tokio::time::sleep(pause);
                    tokio::select! {
                        _ = wake => {}
                        _ = sleep => {}
                    }
                }
                let last = last || bg.closing.load(Ordering::SeqCst);
                if until.is_some_and(|u| u <= Instant::now()) {
                    tracing::debug!(lock = %name, "lease ended before a release got through");
                    return;
                }
                match calls.release(&ns, &name, &token, min_hold).await {
                    Ok(outcome) => {
                        tracing::debug!(lock = %name, ?outcome, "background release done");
                        return;
                    }
                    Err(err) if err.is_retryable() && !last => {
                        tracing::debug!(lock = %name, %err, "background release failed; retrying");
                        pause = (pause * 2).min(Duration::from_secs(2));
                    }
                    Err(err) => {
                        tracing::warn!(lock = %name, %err, "background release gave up; the lease will expire");
                        return;
                    }
                }
            }
        });
    }

    /// How many background releases are still running.
    pub(crate) fn pending(&self) -> usize {
        self.background.running.load(Ordering::SeqCst)
    }

    /// Tells background releases to make their last attempt, waits for them (at most one call
    /// timeout plus a little), then closes the store under the timeout.
    pub(crate) async fn close(&self) -> Result<()> {
        let bg = &self.background;
        bg.closing.store(true, Ordering::SeqCst);
        bg.close.notify_waiters();
        let drained = async {
            loop {
                let idle = bg.idle.notified();
                if bg.running.load(Ordering::SeqCst) == 0 {
                    return;
                }
                idle.await;
            }
        };
        let grace = self.timeout + Duration::from_millis(100);
        if tokio::time::timeout(grace, drained).await.is_err() {
            tracing::warn!(
                pending = self.pending(),
                "close: background releases did not finish in time; their leases will expire"
            );
        }
        self.run("close", self.store.close()).await
    }
}
