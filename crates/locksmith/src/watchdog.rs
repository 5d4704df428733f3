//! The per-guard task: renews the lease under `Renew::Auto`, re-checks ownership when the
//! lock's name is woken, and decides when the guard is lost.
//!
//! - A renewal answered `NotHeld` loses the guard at once
//!   ([`LossReason::Revoked`](crate::LossReason::Revoked)).
//! - A renewal that fails (store unreachable, or no answer within the call timeout) is
//!   retried every tenth of the TTL (10 ms to 1 s); if none succeeds before the local
//!   deadline — the send time of the last confirmed grant or extend, plus the TTL, minus the
//!   safety margin — the guard is lost
//!   ([`LossReason::RenewalFailed`](crate::LossReason::RenewalFailed); with renewal off the
//!   same deadline is [`LossReason::Expired`](crate::LossReason::Expired)). The deadline is
//!   measured on this machine's monotonic clock from the moment the request was sent, so it
//!   is never later than the store's expiry.
//! - Renewals never extend far past `max_hold`: the last one is shortened so the lease ends
//!   one safety margin after it, and the guard is lost at `max_hold`
//!   ([`LossReason::MaxHold`](crate::LossReason::MaxHold)).
//! - Every guard, renewing or not, subscribes to its name's wake-ups. A wake-up while held
//!   (an operator's `clear` or `reset_all`, or anything else that frees or shortens the
//!   lock) makes it ask the store whether its token still holds the lock; if not, the guard
//!   is lost at once ([`LossReason::Revoked`](crate::LossReason::Revoked)). The task
//!   subscribes a couple of milliseconds after the grant (a clear before that is noticed at
//!   the next renewal); if subscribing fails, the guard finds out at its next renewal or
//!   deadline instead.
//!
//! The task stops when the guard is released, dropped or leaked (its status leaves `Held`),
//! and is aborted by the guard as well; its subscription goes with it.
//!
//! A guard's task is not spawned with the guard: the guard joins its connection's
//! [`Starter`] queue, and one starter task spawns the tasks of the guards still held
//! [`SETTLE`] after their grant. A lock taken and released within that time (the common
//! short critical section) costs no task, no timer and no cross-thread wake-up of its own —
//! one starter wake-up serves every guard granted in the same couple of milliseconds.

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::time::sleep_until;

use crate::held::{Held, Status};
use crate::store::{ExtendMode, Extended, Wakeups};

/// How long after its grant a guard's task starts (see [`Starter`]).
const SETTLE: Duration = Duration::from_millis(2);

/// A guard waiting for its task.
struct Pending {
    held: Weak<Held>,
    granted_at: Instant,
    renew: bool,
    /// When its task is due.
    due: Instant,
}

#[derive(Default)]
struct Queue {
    pending: VecDeque<Pending>,
    /// Whether a starter task is running (it runs while the queue is not empty).
    running: bool,
}

/// Starts guards' tasks [`SETTLE`] after their grant, for the guards still held then. One
/// per connection (shared by its clones); its task runs only while guards are queued, so
/// it never outlives its runtime's work, and a runtime that shuts down with it running
/// lets the next guard start a new one.
#[derive(Default)]
pub(crate) struct Starter {
    queue: Mutex<Queue>,
}

impl fmt::Debug for Starter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Starter").finish_non_exhaustive()
    }
}

impl Starter {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        // Queue operations never panic halfway, so a poisoned mutex still holds a valid queue.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a new guard's task; spawns the starter task if none runs. Needs a tokio
    /// runtime, as spawning the guard's task did.
    pub(crate) fn enqueue(self: &Arc<Self>, held: &Arc<Held>, granted_at: Instant, renew: bool) {
        let mut queue = self.lock();
        queue.pending.push_back(Pending {
            held: Arc::downgrade(held),
            granted_at,
            renew,
            due: Instant::now() + SETTLE,
        });
        if queue.running {
            return;
        }
        queue.running = true;
        drop(queue);
        tokio::spawn(self.clone().drain());
    }

    /// The starter task: spawns the tasks that are due, until the queue is empty.
    async fn drain(self: Arc<Self>) {
        /// Marks the starter stopped if its task is dropped (its runtime shut down).
        struct Stopped<'a>(&'a Starter, bool);
        impl Drop for Stopped<'_> {
            fn drop(&mut self) {
                if !self.1 {
                    self.0.lock().running = false;
                }
            }
        }
        let mut stopped = Stopped(&self, false);
        // When the last batch was taken: the next is taken a `SETTLE` later at the
        // earliest, so guards granted one after another share a wake-up instead of each
        // waking the starter (and, from a `block_on` caller, a parked worker thread) a
        // `SETTLE` after its own grant.
        let mut last_batch: Option<Instant> = None;
        loop {
            let next = {
                let mut queue = self.lock();
                match queue.pending.front() {
                    Some(p) => p.due,
                    None => {
                        queue.running = false;
                        stopped.1 = true;
                        return;
                    }
                }
            };
            let next = last_batch.map_or(next, |last| next.max(last + SETTLE));
            sleep_until(next.into()).await;
            let due: Vec<Pending> = {
                let mut queue = self.lock();
                let now = Instant::now();
                last_batch = Some(now);
                let n = queue.pending.iter().take_while(|p| p.due <= now).count();
                queue.pending.drain(..n).collect()
            };
            for p in due {
                let Some(h) = p.held.upgrade() else { continue };
                if !matches!(*h.status.borrow(), Status::Held { .. }) {
                    continue;
                }
                let task = tokio::spawn(run(p.held, h.status.subscribe(), p.granted_at, p.renew));
                let mut slot = h.task.lock().unwrap_or_else(|e| e.into_inner());
                if matches!(*h.status.borrow(), Status::Held { .. }) {
                    *slot = Some(task.abort_handle());
                } else {
                    // Released meanwhile: the task sees that and ends; stop it anyway.
                    task.abort();
                }
            }
        }
    }
}

fn retry_interval(ttl: Duration) -> Duration {
    (ttl / 10).clamp(Duration::from_millis(10), Duration::from_secs(1))
}

/// Sleeps until `at`, or forever for `None`.
async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Resolves at the next wake-up, or never without a subscription.
async fn woken(wakeups: &mut Option<Wakeups>) {
    match wakeups {
        Some(w) => w.changed().await,
        None => std::future::pending().await,
    }
}

/// The task of one guard, started [`SETTLE`] after the grant (by the [`Starter`]). It holds
/// the guard's state only weakly, and strongly only during a store call, so dropping the
/// guard frees the store handle at once (a store that drains its queue when its last handle
/// goes, as SQLite does, then does so before the process can exit). A guard dropped right
/// after its grant (a program that ends at once) goes without this task ever holding it:
/// the drop of the last store handle then happens in the caller's code, where the store can
/// still finish its queued releases.
async fn run(held: Weak<Held>, mut rx: watch::Receiver<Status>, granted_at: Instant, renew: bool) {
    if !matches!(*rx.borrow(), Status::Held { .. }) {
        return;
    }
    let mut wakeups = {
        let Some(h) = held.upgrade() else { return };
        let calls = &h.calls;
        match calls
            .run("subscribe", calls.store.subscribe(&h.ns, &h.name))
            .await
        {
            Ok(w) => Some(w),
            Err(err) => {
                tracing::debug!(lock = %h.name, %err, "guard could not subscribe to wake-ups; a clear is noticed at the next renewal");
                None
            }
        }
    };
    let mut last_sent = granted_at;
    let mut retry_at: Option<Instant> = None;
    loop {
        let (deadline, ttl) = {
            let Some(h) = held.upgrade() else { return };
            let status = *rx.borrow_and_update();
            if let Some(reason) = h.loss_at(status, Instant::now()) {
                h.mark_lost(reason);
                return;
            }
            let Status::Held { deadline, .. } = status else {
                // Lost, released, dropped or leaked: nothing left to watch.
                return;
            };
            (deadline, h.ttl())
        };
        let next = match (renew, ttl, deadline) {
            (true, Some(ttl), Some(_)) => Some(retry_at.unwrap_or(last_sent + ttl / 3)),
            _ => None,
        };
        tokio::select! {
            changed = rx.changed() => {
                if changed.is_err() {
                    return;
                }
                continue;
            }
            _ = sleep_until_opt(deadline) => continue,
            _ = woken(&mut wakeups) => {
                let Some(h) = held.upgrade() else { return };
                recheck(&h, deadline).await;
                continue;
            }
            _ = sleep_until_opt(next) => {}
        }
        let Some(ttl) = ttl else { continue };
        let Some(h) = held.upgrade() else { return };

        let sent = Instant::now();
        let renew_ttl = h.capped_ttl(ttl, sent);
        if renew_ttl.is_zero() {
            continue; // the deadline is max_hold: the loop top reports it
        }
        // A renewal never shortens the lease (a `renew_by` may have moved it further).
        let call = h.change_lease(ExtendMode::AtLeast(renew_ttl));
        let answer = tokio::select! {
            answer = call => answer,
            _ = sleep_until_opt(deadline) => continue,
        };
        match answer {
            Ok(Extended::Extended { .. }) => {
                last_sent = sent;
                retry_at = None;
                tracing::trace!(lock = %h.name, ttl = ?renew_ttl, "renewed");
            }
            // Lost (the loop top reports it) or made never-expiring (nothing to renew).
            Ok(_) => retry_at = None,
            Err(err) => {
                let wait = retry_interval(ttl);
                tracing::warn!(lock = %h.name, %err, retry_in = ?wait, "renewal failed");
                metrics::counter!("locksmith_renew_errors_total", "store" => h.calls.store.kind())
                    .increment(1);
                retry_at = Some(Instant::now() + wait);
            }
        }
    }
}

/// After a wake-up: asks the store whether this token still holds the lock, and marks the
/// guard lost (revoked) if it does not. A failed check changes nothing.
async fn recheck(held: &Held, deadline: Option<Instant>) {
    let calls = &held.calls;
    let check = calls.run(
        "held_by",
        calls.store.held_by(&held.ns, &held.name, &held.token),
    );
    let answer = tokio::select! {
        answer = check => answer,
        _ = sleep_until_opt(deadline) => return,
    };
    match answer {
        Ok(Some(_)) => {}
        // Only a guard still `Held` is marked; a release in progress also finds nothing.
        Ok(None) => held.mark_lost(crate::info::LossReason::Revoked),
        Err(err) => {
            tracing::debug!(lock = %held.name, %err, "ownership check after a wake-up failed")
        }
    }
}
