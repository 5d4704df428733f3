//! The conformance cases. Each is `pub async fn case(ctx: Ctx)` and panics on failure.
//!
//! Timing: leases in cases are a few hundred milliseconds; "must not happen before" checks
//! are exact, "must happen by" checks allow generous slack ([`SOON`]) for slow machines.

use std::future::Future;
use std::time::{Duration, Instant};

use locksmith::{Error, Locksmith};

pub use crate::targets::SOON;

mod admin;
mod locking;
mod loss;

pub use admin::*;
pub use locking::*;
pub use loss::*;

/// Milliseconds.
pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
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
