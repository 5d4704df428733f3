//! What a guard, its watchdog and its `lost()` futures share: the grant's state as this
//! process knows it, the local deadline, and the one place lease changes go through.
//!
//! Layering: this sits above the stores and below [`guard`](crate::guard) and
//! [`watchdog`](crate::watchdog), which both build on it without knowing each other's
//! internals.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::calls::Calls;
use crate::error::Result;
use crate::info::LossReason;
use crate::lease::Token;
use crate::name::{LockName, Namespace};
use crate::registry::{self, Offer};
use crate::store::{ExtendMode, Extended};

/// The state of a grant as this process knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Status {
    Held {
        /// The lease's end as this process can vouch for it: the send time of the last
        /// confirmed grant/extend plus its TTL. `None`: never expires.
        expires_at: Option<Instant>,
        /// When the guard counts as lost unless renewed: `expires_at` minus the safety
        /// margin, capped at `max_hold`.
        deadline: Option<Instant>,
    },
    Lost(LossReason),
    /// `release()` is talking to the store; if it is cancelled, `Drop` releases again.
    Releasing,
    /// Released, dropped or leaked: no longer tracked, never reported lost.
    Done,
}

/// The safety margin kept between the local deadline and the lease's end: a tenth of the
/// TTL, at most one second.
pub(crate) fn margin(ttl: Duration) -> Duration {
    (ttl / 10).min(Duration::from_secs(1))
}

/// The lease terms a guard starts with.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Terms {
    /// `None`: never expires.
    pub(crate) ttl: Option<Duration>,
    pub(crate) min_hold: Option<Duration>,
    pub(crate) max_hold: Option<Duration>,
    /// Whether a watchdog renews the lease (decides the reason of a loss at the deadline).
    pub(crate) renew: bool,
}

/// Rounds `d` up to a whole multiple of `granularity`, so a store that keeps coarser TTLs
/// never ends a lease before the local deadline computed from `d`.
pub(crate) fn round_up(d: Duration, granularity: Duration) -> Duration {
    let g = granularity.as_nanos();
    if g <= 1 {
        return d;
    }
    let n = d.as_nanos().div_ceil(g) * g;
    u64::try_from(n).map_or(d, Duration::from_nanos)
}

/// What the guard, its watchdog and its `lost()` futures share.
pub(crate) struct Held {
    pub(crate) calls: Calls,
    pub(crate) ns: Namespace,
    pub(crate) name: LockName,
    pub(crate) token: Token,
    pub(crate) fence: u64,
    pub(crate) min_hold: Option<Duration>,
    pub(crate) max_hold_at: Option<Instant>,
    pub(crate) renew: bool,
    /// The TTL renewals use; `extend` replaces it. `None`: never expires.
    pub(crate) ttl: Mutex<Option<Duration>>,
    pub(crate) status: watch::Sender<Status>,
    /// Serialises lease changes (watchdog, `extend`, `renew_by`), so they reach the store and
    /// the local status in the same order.
    lease_lock: tokio::sync::Mutex<()>,
    /// The guard's task once started (see [`Starter`](crate::watchdog::Starter)), so the
    /// guard can stop it.
    pub(crate) task: Mutex<Option<tokio::task::AbortHandle>>,
}

impl Held {
    pub(crate) fn new(
        calls: Calls,
        ns: Namespace,
        name: LockName,
        token: Token,
        fence: u64,
        sent: Instant,
        terms: Terms,
    ) -> Held {
        let max_hold_at = terms.max_hold.and_then(|m| sent.checked_add(m));
        let held = Held {
            calls,
            ns,
            name,
            token,
            fence,
            min_hold: terms.min_hold,
            max_hold_at,
            renew: terms.renew,
            ttl: Mutex::new(terms.ttl),
            status: watch::channel(Status::Done).0,
            lease_lock: tokio::sync::Mutex::new(()),
            task: Mutex::new(None),
        };
        // Nobody can be subscribed yet, so this wakes no one.
        held.set_status(held.held_status(sent, terms.ttl));
        held
    }

    /// Stops the guard's task, if it started.
    pub(crate) fn stop_task(&self) {
        if let Some(task) = self.task.lock().unwrap_or_else(|e| e.into_inner()).take() {
            task.abort();
        }
    }

    pub(crate) fn ttl(&self) -> Option<Duration> {
        *self.ttl.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The status after a grant or extend sent at `sent` with lease `ttl`.
    pub(crate) fn held_status(&self, sent: Instant, ttl: Option<Duration>) -> Status {
        self.status_until(ttl.and_then(|t| sent.checked_add(t)), ttl)
    }

    /// The status of a lease known to last at least until `expires_at`.
    pub(crate) fn status_until(
        &self,
        expires_at: Option<Instant>,
        ttl: Option<Duration>,
    ) -> Status {
        let deadline = match (expires_at, ttl) {
            (Some(e), Some(t)) => Some(e.checked_sub(margin(t)).unwrap_or(e)),
            _ => None,
        };
        let deadline = match (deadline, self.max_hold_at) {
            (Some(d), Some(m)) => Some(d.min(m)),
            (d, m) => d.or(m),
        };
        Status::Held {
            expires_at,
            deadline,
        }
    }

    /// The TTL to ask for at `now` so the lease ends no later than one safety margin after
    /// `max_hold` (whose local deadline is then exactly `max_hold`). Zero once `max_hold`
    /// has passed.
    pub(crate) fn capped_ttl(&self, ttl: Duration, now: Instant) -> Duration {
        match self.max_hold_at {
            Some(m) if m <= now => Duration::ZERO,
            Some(m) => ttl.min(m - now + margin(ttl)),
            None => ttl,
        }
    }

    /// Records a confirmed lease, unless the guard has meanwhile been lost or finished, or
    /// its local deadline has passed: a late answer never revives a guard that already
    /// counts as lost (its lease may have ended and been taken over in between).
    pub(crate) fn confirm(&self, status: Status) {
        let now = Instant::now();
        self.status.send_if_modified(|s| match *s {
            Status::Held { deadline, .. } if deadline.is_none_or(|d| d > now) => {
                *s = status;
                true
            }
            _ => false,
        });
    }

    /// Marks the guard lost, unless it has already been lost or finished.
    pub(crate) fn mark_lost(&self, reason: LossReason) {
        let changed = self.status.send_if_modified(|s| {
            if matches!(s, Status::Held { .. }) {
                *s = Status::Lost(reason);
                true
            } else {
                false
            }
        });
        if changed {
            metrics::counter!("locksmith_lost_total", "store" => self.calls.store.kind())
                .increment(1);
            tracing::warn!(lock = %self.name, fence = self.fence, %reason, "lock lost");
        }
    }

    /// The reason the guard is lost at `now`, if it is.
    pub(crate) fn loss_at(&self, status: Status, now: Instant) -> Option<LossReason> {
        match status {
            Status::Lost(reason) => Some(reason),
            Status::Releasing | Status::Done => None,
            Status::Held { deadline, .. } => match deadline {
                Some(d) if d <= now => Some(self.reason_at_deadline(d)),
                _ => None,
            },
        }
    }

    pub(crate) fn reason_at_deadline(&self, deadline: Instant) -> LossReason {
        if self.max_hold_at.is_some_and(|m| m <= deadline) {
            LossReason::MaxHold
        } else if self.renew {
            LossReason::RenewalFailed
        } else {
            LossReason::Expired
        }
    }

    /// Forgets this grant in the registry of locks held in this process (see
    /// [`registry::hold`](crate::registry::hold)); returns the claim a waiter offered to it.
    pub(crate) fn unhold(&self) -> Option<Offer> {
        if !self.calls.pushed_grants {
            return None;
        }
        registry::unhold(&self.calls.store, &self.ns, &self.name, &self.token)
    }

    /// Records a confirmed new lease end in the registry of locks held in this process.
    fn rehold(&self, lease_end: Option<Instant>) {
        if self.calls.pushed_grants {
            registry::renewed(
                &self.calls.store,
                &self.ns,
                &self.name,
                &self.token,
                lease_end,
            );
        }
    }

    /// Ends tracking; returns the status it had.
    pub(crate) fn finish(&self) -> Status {
        self.set_status(Status::Done)
    }

    /// Sets the status and returns the old one, waking subscribers only if there are any: a
    /// watch channel's notification wakes eight internal lists even with no receiver, a
    /// cost every short hold paid twice on release. The count is read under the channel's
    /// write lock, so a subscriber that then reads the status sees the new one (the guard
    /// task's starter subscribes before it checks the status).
    pub(crate) fn set_status(&self, new: Status) -> Status {
        let mut old = new;
        self.status.send_if_modified(|s| {
            old = std::mem::replace(s, new);
            self.status.receiver_count() > 0
        });
        old
    }

    /// Changes the lease in the store and records what this process can vouch for, under
    /// the per-guard lease lock. `NotHeld` marks the guard lost; `NotExpirable` (an operator
    /// made the lock permanent) turns the guard into a never-expiring one.
    pub(crate) async fn change_lease(&self, mode: ExtendMode) -> Result<Extended> {
        let granularity = self.calls.store.capabilities().ttl_granularity;
        let mode = match mode {
            ExtendMode::Set(d) => ExtendMode::Set(round_up(d, granularity)),
            ExtendMode::Add(d) => ExtendMode::Add(round_up(d, granularity)),
            ExtendMode::AtLeast(d) => ExtendMode::AtLeast(round_up(d, granularity)),
        };
        let _serial = self.lease_lock.lock().await;
        let sent = Instant::now();
        let answer = self
            .calls
            .run(
                "extend",
                self.calls
                    .store
                    .extend(&self.ns, &self.name, &self.token, mode),
            )
            .await?;
        match answer {
            Extended::Extended { .. } => {
                let old = match *self.status.borrow() {
                    Status::Held { expires_at, .. } => expires_at,
                    _ => None,
                };
                let end = match mode {
                    ExtendMode::Set(d) => sent.checked_add(d),
                    ExtendMode::Add(d) => old.map_or(sent, |o| o.max(sent)).checked_add(d),
                    ExtendMode::AtLeast(d) => {
                        sent.checked_add(d).map(|e| old.map_or(e, |o| o.max(e)))
                    }
                };
                if let ExtendMode::Set(d) = mode {
                    *self.ttl.lock().unwrap_or_else(|e| e.into_inner()) = Some(d);
                }
                self.confirm(self.status_until(end, self.ttl()));
                self.rehold(end);
            }
            Extended::NotHeld => self.mark_lost(LossReason::Revoked),
            Extended::NotExpirable => {
                *self.ttl.lock().unwrap_or_else(|e| e.into_inner()) = None;
                self.confirm(self.status_until(None, None));
                self.rehold(None);
            }
        }
        Ok(answer)
    }
}
