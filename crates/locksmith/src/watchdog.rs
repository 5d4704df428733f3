//! The watchdog of `Renew::Auto`: one task per guard that extends the lease every `ttl / 3`
//! and decides when the guard is lost.
//!
//! - A renewal answered `NotHeld` loses the guard at once
//!   ([`LossReason::Revoked`](crate::LossReason::Revoked)).
//! - A renewal that fails (store unreachable) is retried every tenth of the TTL (10 ms to
//!   1 s); if none succeeds before the local deadline — the send time of the last confirmed
//!   grant or extend, plus the TTL, minus the safety margin — the guard is lost
//!   ([`LossReason::Expired`](crate::LossReason::Expired)). The deadline is measured on this machine's monotonic clock
//!   from the moment the request was sent, so it is never later than the store's expiry.
//! - Renewals never extend far past `max_hold`: the last one is shortened so the lease ends
//!   one safety margin after it, and the guard is lost at `max_hold`
//!   ([`LossReason::MaxHold`](crate::LossReason::MaxHold)).
//!
//! The task stops when the guard is released, dropped or leaked (its status leaves `Held`),
//! and is aborted by the guard as well.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::time::sleep_until;

use crate::held::{Held, Status};
use crate::store::{ExtendMode, Extended};

fn retry_interval(ttl: Duration) -> Duration {
    (ttl / 10).clamp(Duration::from_millis(10), Duration::from_secs(1))
}

pub(crate) async fn run(held: Arc<Held>, granted_at: Instant) {
    let mut rx = held.status.subscribe();
    let mut last_sent = granted_at;
    let mut retry_at: Option<Instant> = None;
    loop {
        let status = *rx.borrow_and_update();
        let now = Instant::now();
        if let Some(reason) = held.loss_at(status, now) {
            held.mark_lost(reason);
            return;
        }
        let (
            Status::Held {
                deadline: Some(deadline),
                ..
            },
            Some(ttl),
        ) = (status, held.ttl())
        else {
            // Lost, finished, or a lease that never expires: nothing to renew.
            return;
        };
        let next = retry_at.unwrap_or(last_sent + ttl / 3);
        tokio::select! {
            changed = rx.changed() => {
                if changed.is_err() {
                    return;
                }
                continue;
            }
            _ = sleep_until(deadline.into()) => continue,
            _ = sleep_until(next.into()) => {}
        }

        let sent = Instant::now();
        let renew_ttl = held.capped_ttl(ttl, sent);
        if renew_ttl.is_zero() {
            continue; // the deadline is max_hold: the loop top reports it
        }
        // A renewal never shortens the lease (a `renew_by` may have moved it further).
        let call = held.change_lease(ExtendMode::AtLeast(renew_ttl));
        let answer = tokio::select! {
            answer = call => answer,
            _ = sleep_until(deadline.into()) => continue,
        };
        match answer {
            Ok(Extended::Extended { .. }) => {
                last_sent = sent;
                retry_at = None;
                tracing::trace!(lock = %held.name, ttl = ?renew_ttl, "renewed");
            }
            // The guard is lost, or became never-expiring: nothing more to renew.
            Ok(_) => return,
            Err(err) => {
                let wait = retry_interval(ttl);
                tracing::warn!(lock = %held.name, %err, retry_in = ?wait, "renewal failed");
                metrics::counter!("locksmith_renew_errors_total", "store" => held.store.kind())
                    .increment(1);
                retry_at = Some(Instant::now() + wait);
            }
        }
    }
}
