//! [`LockGuard`]: a held lock, its lease, and how it ends.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::held::{Held, Status, margin};
use crate::info::LossReason;
use crate::lease::{Lease, Token};
use crate::options::check_duration;
use crate::store::{ExtendMode, Extended, Released};

/// A held lock. Dropping it releases the lock (best effort, without blocking).
///
/// The guard knows when its lease ends: [`lost`](LockGuard::lost) resolves and
/// [`is_held`](LockGuard::is_held) turns false when the store answers that the token no
/// longer holds the lock, when renewals cannot reach the store before the lease could have
/// expired (the last confirmed send time plus the TTL, minus a safety margin of a tenth of the
/// TTL, at most 1 s), or at `max_hold`. A clean release never counts as lost.
///
/// Each guard has a small background task: it renews the lease (renewal is on by default
/// for locks that expire) and, renewing or not, asks the store whether the guard still holds
/// the lock whenever the lock's name is woken — so an operator's `clear` or `reset_all`
/// makes [`lost`](LockGuard::lost) resolve at once on a store that notifies. The task ends
/// with the guard.
///
/// # Drop behaviour
///
/// `Drop` never blocks and needs no runtime: it hands the release to the store
/// (`Store::release_detached`), honouring `min_hold`. Use [`release`](LockGuard::release)
/// to see errors. A lock still held when the process exits (or aborts) stays until its lease
/// expires; a lock made with `.no_expiry()` stays until someone clears it.
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> locksmith::Result<()> {
/// use std::time::Duration;
/// use locksmith::Locksmith;
///
/// let lm = Locksmith::connect("memory://").await?;
/// let guard = lm.lock("report").ttl(Duration::from_secs(30)).acquire().await?;
/// assert!(guard.is_held());
/// guard.extend(Duration::from_secs(60)).await?;
/// guard.release().await?;
/// # Ok(()) }
/// ```
#[must_use = "if unused the lock is released immediately"]
#[clippy::has_significant_drop]
pub struct LockGuard {
    held: Arc<Held>,
}

impl fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockGuard")
            .field("name", &self.held.name)
            .field("fence", &self.held.fence)
            .field("held", &self.is_held())
            .finish_non_exhaustive()
    }
}

impl LockGuard {
    pub(crate) fn new(held: Arc<Held>, renew: bool, granted_at: Instant) -> LockGuard {
        held.calls.starter.enqueue(&held, granted_at, renew);
        LockGuard { held }
    }

    /// The lock's name.
    pub fn name(&self) -> &str {
        self.held.name.as_str()
    }

    /// The fencing token of this grant.
    pub fn fence(&self) -> u64 {
        self.held.fence
    }

    /// The secret token that holds the lock (see [`Token`]).
    pub fn token(&self) -> &Token {
        &self.held.token
    }

    /// The name and fence, for the work done under the lock.
    pub fn lease(&self) -> Lease {
        Lease {
            name: self.held.name.clone(),
            fence: self.held.fence,
        }
    }

    /// Time left on the lease as this process can vouch for it (a lower bound). `None` for a
    /// lock that never expires; zero once lost.
    pub fn expires_in(&self) -> Option<Duration> {
        let now = Instant::now();
        let status = *self.held.status.borrow();
        if self.held.loss_at(status, now).is_some() {
            return Some(Duration::ZERO);
        }
        match status {
            Status::Held { expires_at, .. } => expires_at.map(|e| e.saturating_duration_since(now)),
            _ => Some(Duration::ZERO),
        }
    }

    /// Whether the lease is still held as far as this process knows: not lost, not past its
    /// local deadline.
    pub fn is_held(&self) -> bool {
        let status = *self.held.status.borrow();
        matches!(status, Status::Held { .. }) && self.held.loss_at(status, Instant::now()).is_none()
    }

    /// Resolves when the lease is lost, with the reason; never resolves for a guard that is
    /// released, dropped or leaked first. The future owns what it needs, so it can be
    /// awaited beside work that uses the guard, or after the guard is gone.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe; call it again for a new future.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> locksmith::Result<()> {
    /// use std::time::Duration;
    /// use locksmith::{Locksmith, LossReason, Renew};
    ///
    /// let lm = Locksmith::connect("memory://").await?;
    /// let guard = lm.lock("job").ttl(Duration::from_millis(50)).renew(Renew::Off).acquire().await?;
    /// // No renewal: the lease runs out, minus a safety margin.
    /// assert_eq!(guard.lost().await, LossReason::Expired);
    /// assert!(!guard.is_held());
    /// # Ok(()) }
    /// ```
    pub fn lost(&self) -> impl Future<Output = LossReason> + Send + 'static {
        let held = self.held.clone();
        let mut rx = held.status.subscribe();
        async move {
            loop {
                let status = *rx.borrow_and_update();
                if let Some(reason) = held.loss_at(status, Instant::now()) {
                    held.mark_lost(reason);
                    return reason;
                }
                let deadline = match status {
                    Status::Held { deadline, .. } => deadline,
                    _ => None,
                };
                let changed = async {
                    if rx.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                };
                match deadline {
                    Some(d) => {
                        tokio::select! {
                            _ = changed => {}
                            _ = tokio::time::sleep_until(d.into()) => {}
                        }
                    }
                    None => changed.await,
                }
            }
        }
    }

    fn check_held(&self) -> Result<()> {
        if self.is_held() {
            Ok(())
        } else {
            Err(Error::NotHeld {
                name: self.held.name.to_string(),
            })
        }
    }

    /// Sets the lease to end `ttl` from now (store clock), shortening it if `ttl` is less than
    /// what is left. With `Renew::Auto`, later renewals use this TTL too. Never moves the lease
    /// past `max_hold`.
    ///
    /// # Errors
    ///
    /// [`Error::NotHeld`] if the lease was lost (the guard then reports lost) — also when the
    /// store's answer arrives after the guard's local deadline passed: a late answer never
    /// revives a guard; [`Error::InvalidOption`] for a zero or oversized TTL or a lock that
    /// never expires; [`Error::Store`] if the store failed or did not answer within the call
    /// timeout (the lease is unchanged as far as this process can vouch).
    ///
    /// # Cancel safety
    ///
    /// If cancelled, the lease may or may not have been extended; the guard keeps its
    /// previous, conservative view of it. Lease changes of one guard (the watchdog's
    /// included) are applied one at a time, in order.
    pub async fn extend(&self, ttl: Duration) -> Result<()> {
        if ttl.is_zero() {
            return Err(Error::invalid_option(
                "ttl",
                "extend(0) would end the lease now — call release() instead",
            ));
        }
        check_duration("ttl", ttl)?;
        self.check_never_expiring("extend")?;
        self.check_held()?;
        let ttl = self.held.capped_ttl(ttl, Instant::now());
        if ttl.is_zero() {
            self.held.mark_lost(LossReason::MaxHold);
            return self.check_held();
        }
        let answer = self.held.change_lease(ExtendMode::Set(ttl)).await?;
        self.check_extended(answer)
    }

    /// Adds `d` to the lease: it ends at the later of its current end and now, plus `d`
    /// (store clock). Never shortens it; never moves it past `max_hold`. Renewals by the
    /// watchdog never undo it.
    ///
    /// # Errors
    ///
    /// As for [`extend`](LockGuard::extend).
    pub async fn renew_by(&self, d: Duration) -> Result<()> {
        check_duration("renew_by", d)?;
        self.check_never_expiring("renew_by")?;
        self.check_held()?;
        let mode = match (self.held.max_hold_at, self.held.ttl()) {
            (Some(max_at), Some(ttl)) => {
                // Cap the new end at max_hold (plus the margin the watchdog also allows).
                let now = Instant::now();
                let end = match *self.held.status.borrow() {
                    Status::Held {
                        expires_at: Some(e),
                        ..
                    } => e.max(now),
                    _ => now,
                };
                let cap = max_at + margin(ttl);
                let wanted = end.checked_add(d).unwrap_or(cap).min(cap);
                ExtendMode::AtLeast(wanted.saturating_duration_since(now))
            }
            _ => ExtendMode::Add(d),
        };
        let answer = self.held.change_lease(mode).await?;
        self.check_extended(answer)
    }

    fn check_never_expiring(&self, what: &'static str) -> Result<()> {
        if self.held.ttl().is_none() {
            return Err(Error::invalid_option(
                "ttl",
                format!(
                    "{what}: lock {:?} never expires, so its lease cannot change — release it instead",
                    self.held.name.as_str()
                ),
            ));
        }
        Ok(())
    }

    fn check_extended(&self, answer: Extended) -> Result<()> {
        match answer {
            // A late answer does not revive a guard that meanwhile passed its deadline.
            Extended::Extended { .. } | Extended::NotHeld => self.check_held(),
            Extended::NotExpirable => Err(Error::invalid_option(
                "ttl",
                format!(
                    "lock {:?} was made never-expiring in the store (by set_locks?), so its lease cannot change",
                    self.held.name.as_str()
                ),
            )),
        }
    }

    /// Why the guard is lost, if it is.
    pub(crate) fn loss(&self) -> Option<LossReason> {
        self.held
            .loss_at(*self.held.status.borrow(), Instant::now())
    }

    /// Releases the lock and reports the outcome. With `min_hold`, a lock held for less than
    /// that stays until `acquired_at + min_hold` (this token can no longer use it) and this
    /// returns `Ok`.
    ///
    /// # Errors
    ///
    /// [`Error::NotHeld`] if the lease was lost before the release (the store row is still
    /// removed if this token holds it); [`Error::Store`] if the store failed or did not
    /// answer within the call timeout (the URL's `?timeout=`, default 5 s). A failed release
    /// is also retried in the background, with backoff, until the store answers, the lease
    /// ends, or [`Locksmith::close`](crate::Locksmith::close) is called — the error tells you
    /// the lock may still be held for now, not that it stays held.
    ///
    /// # Cancel safety
    ///
    /// If cancelled, the guard is dropped, which releases the lock again without waiting.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> locksmith::Result<()> {
    /// use locksmith::Locksmith;
    ///
    /// let lm = Locksmith::connect("memory://").await?;
    /// let guard = lm.lock("export").await?;
    /// guard.release().await?;
    /// assert!(lm.inspect("export").await?.is_none());
    /// # Ok(()) }
    /// ```
    pub async fn release(self) -> Result<()> {
        let min_hold = self.held.min_hold;
        self.release_with(min_hold).await
    }

    /// Releases the lock at once, ignoring `min_hold`: for work that did not happen (a job
    /// that failed to start should not block the next attempt for the rest of the period).
    ///
    /// # Errors
    ///
    /// As [`release`](LockGuard::release).
    ///
    /// # Cancel safety
    ///
    /// As [`release`](LockGuard::release).
    pub async fn release_now(self) -> Result<()> {
        self.release_with(None).await
    }

    async fn release_with(mut self, min_hold: Option<Duration>) -> Result<()> {
        self.stop_watchdog();
        let held = self.held.clone();
        let status = held.set_status(Status::Releasing);
        let now = Instant::now();
        let lost = held.loss_at(status, now).is_some();
        // A waiter of this process offered its claim: the release hands the lock to it.
        let offer = held.unhold();
        let answer = match offer {
            Some(offer) => {
                held.calls
                    .release_to(&held.ns, &held.name, &held.token, min_hold, offer)
                    .await
            }
            None => {
                held.calls
                    .release(&held.ns, &held.name, &held.token, min_hold)
                    .await
            }
        };
        // Only now: a release cancelled above is retried by Drop.
        held.finish();
        tracing::debug!(lock = %held.name, fence = held.fence, ?answer, "released");
        if let Err(err) = &answer
            && err.is_retryable()
        {
            // The lease can last until the end this process vouches for, plus what the
            // grant or extend took to reach the store (at most one call timeout).
            let until = match status {
                Status::Held { expires_at, .. } => expires_at,
                _ => held.ttl().and_then(|t| now.checked_add(t)),
            }
            .and_then(|e| e.checked_add(held.calls.timeout));
            tracing::warn!(lock = %held.name, %err, "release failed; retrying in the background");
            held.calls
                .retry_release(&held.ns, &held.name, &held.token, min_hold, until);
        }
        match answer {
            _ if lost => Err(Error::NotHeld {
                name: held.name.to_string(),
            }),
            Ok(Released::Released | Released::Kept) => Ok(()),
            Ok(Released::NotHeld) => Err(Error::NotHeld {
                name: held.name.to_string(),
            }),
            Err(e) => Err(e),
        }
    }

    /// Keeps the lock held until its lease expires (or forever, for `.no_expiry()`), stops
    /// any renewal, and returns the token so another process can
    /// [`resume`](crate::Locksmith::resume) it or release it later.
    pub fn leak(mut self) -> Token {
        self.stop_watchdog();
        // A waiter that offered its claim to this guard tries for itself.
        drop(self.held.unhold());
        self.held.finish();
        self.held.token.clone()
    }

    fn stop_watchdog(&mut self) {
        self.held.stop_task();
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        self.stop_watchdog();
        drop(self.held.unhold());
        if self.held.finish() != Status::Done {
            let h = &self.held;
            h.calls
                .store
                .release_detached(&h.ns, &h.name, &h.token, h.min_hold);
        }
    }
}

/// Releases several guards together — the guards of one
/// [`acquire_all`](crate::Locksmith::acquire_all), say — with their releases in flight at the
/// same time, and reports the first error after every release has finished (each failed one
/// is retried in the background, as with [`LockGuard::release`]).
///
/// # Errors
///
/// The first error of [`LockGuard::release`] among the guards, in their order.
///
/// # Cancel safety
///
/// If cancelled, the guards not yet released are dropped, which releases them without
/// waiting.
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> locksmith::Result<()> {
/// use locksmith::Locksmith;
///
/// let lm = Locksmith::connect("memory://").await?;
/// let guards = lm.acquire_all(["from", "to"]).await?;
/// // … move the money …
/// locksmith::release_all(guards).await?;
/// assert!(lm.inspect("from").await?.is_none());
/// # Ok(()) }
/// ```
pub async fn release_all(guards: impl IntoIterator<Item = LockGuard>) -> Result<()> {
    let outcomes = futures_util::future::join_all(guards.into_iter().map(LockGuard::release)).await;
    outcomes.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn bounds() {
        assert_send_sync::<LockGuard>();
        assert_send_sync::<crate::Locksmith>();
    }

    #[test]
    fn margins() {
        assert_eq!(margin(Duration::from_secs(60)), Duration::from_secs(1));
        assert_eq!(
            margin(Duration::from_millis(300)),
            Duration::from_millis(30)
        );
    }
}
