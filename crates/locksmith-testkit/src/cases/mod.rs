//! The conformance cases. Each is `pub async fn case(ctx: Ctx)` and panics on failure.
//!
//! Timing: leases in cases are a few hundred milliseconds; "must not happen before" checks
//! are exact, "must happen by" checks allow generous slack ([`SOON`]) for slow machines.

use std::future::Future;
use std::time::{Duration, Instant};

use locksmith::{Error, Locksmith};

use crate::Ctx;

pub use crate::targets::SOON;

mod admin;
mod api;
mod contract;
mod faults;
mod locking;
mod loss;
mod processes;

pub use admin::*;
pub use api::*;
pub use contract::*;
pub use faults::*;
pub use locking::*;
pub use loss::*;
pub use processes::*;

/// `.no_expiry()` where the store supports it, else a 10-minute lease: for cases where a
/// lock left behind must stay visible.
pub trait NoExpiryOrTtl {
    /// See the trait.
    fn no_expiry_or_ttl(self, ctx: &Ctx) -> Self;
}

impl NoExpiryOrTtl for locksmith::LockBuilder {
    fn no_expiry_or_ttl(self, ctx: &Ctx) -> Self {
        if ctx.caps().never_expire {
            self.no_expiry()
        } else {
            self.ttl(Duration::from_secs(600))
        }
    }
}

/// Milliseconds.
pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// [`ms`] scaled by [`Ctx::ms`] for this case's store: shadow `ms` with it in cases whose
/// timing rests on short leases.
pub fn scaled(ctx: &Ctx) -> impl Fn(u64) -> Duration + Copy + use<> {
    let unit = ctx.ms(1);
    move |n| unit * u32::try_from(n).unwrap_or(u32::MAX)
}

/// Polls `check` every 10 ms until it returns true; panics with `what` after [`SOON`].
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if check().await {
            return;
        }
        assert!(start.elapsed() < SOON, "{what}: not within {SOON:?}");
        tokio::time::sleep(ms(10)).await;
    }
}

/// The end of a stale-grant case (the stores' `a_stale_pushed_grant_is_not_taken`), once
/// the held-up grant has been let through: `waiter` (a spawned acquire returning its fence
/// and leaked token) must keep waiting while `taker` holds the lock, then get it with a
/// higher fence once `taker` releases.
pub async fn stale_grant_is_not_taken(
    waiter: tokio::task::JoinHandle<(u64, locksmith::Token)>,
    taker: locksmith::LockGuard,
) {
    tokio::time::sleep(ms(700)).await;
    assert!(
        !waiter.is_finished(),
        "the waiter took a stale grant while another claim held the lock"
    );
    let taker_fence = taker.fence();
    taker.release().await.unwrap();
    let (fence, _token) = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("the waiter got the lock after the new holder released")
        .unwrap();
    assert!(fence > taker_fence, "{fence} after {taker_fence}");
}

/// Waits until nobody holds `name` (the row is gone or expired).
pub async fn eventually_free(lm: &Locksmith, name: &str) {
    eventually(&format!("lock {name:?} becomes free"), || async {
        match lm.inspect(name).await.expect("inspect") {
            None => true,
            Some(info) => info.expired,
        }
    })
    .await;
}

/// The time left on `name`'s lease as the store reports it (the lock must exist and expire).
pub async fn lease_left(lm: &Locksmith, name: &str) -> Duration {
    lm.inspect(name)
        .await
        .expect("inspect")
        .unwrap_or_else(|| panic!("lock {name:?} has no row"))
        .expires_in
        .unwrap_or_else(|| panic!("lock {name:?} never expires"))
}

/// Asserts `result` is the error `pred` describes, showing it otherwise.
#[track_caller]
pub fn assert_err<T: std::fmt::Debug>(
    result: Result<T, Error>,
    what: &str,
    pred: impl FnOnce(&Error) -> bool,
) {
    match result {
        Err(e) if pred(&e) => {
            let msg = e.to_string();
            assert!(!msg.is_empty(), "{what}: empty message");
        }
        other => panic!("{what}: unexpected {other:?}"),
    }
}

/// Asserts the option error names `option`.
#[track_caller]
pub fn assert_invalid_option<T: std::fmt::Debug>(result: Result<T, Error>, option: &str) {
    match result {
        Err(Error::InvalidOption { option: o, message }) => {
            assert_eq!(o, option, "wrong option blamed: {message}");
            assert!(message.len() > 10, "message too thin: {message}");
        }
        other => panic!("expected InvalidOption({option}), got {other:?}"),
    }
}
