//! The suite's teeth: test-only broken stores (see `locksmith_testkit::teeth`) must FAIL the
//! cases that hold a store to the rule they break — and pass a case that does not touch it,
//! so the failure is the rule's, not the wrapper's.

use std::future::Future;

use locksmith_testkit::{CaseFuture, Ctx, Target, cases, run_case, teeth};

/// Runs `case` against `target` in its own task; `true` if it passed, `false` if it
/// panicked (failed).
async fn passes<T>(name: &'static str, target: T, case: fn(Ctx) -> CaseFuture) -> bool
where
    T: Future<Output = Option<Target>> + Send + 'static,
{
    match tokio::spawn(run_case(name, target, None, case)).await {
        Ok(()) => true,
        Err(e) if e.is_panic() => false,
        Err(e) => panic!("{name}: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_atomic_store_loses_updates_under_spinning_clients() {
    let passed = passes(
        "spin_try_acquire_no_lost_updates",
        teeth::non_atomic(),
        |c| Box::pin(cases::spin_try_acquire_no_lost_updates(c)),
    )
    .await;
    assert!(
        !passed,
        "a GET-then-SET store passed the spinning-clients case"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_atomic_store_lets_several_clients_take_over_one_expired_lock() {
    let passed = passes(
        "expired_takeover_race_one_winner",
        teeth::non_atomic(),
        |c| Box::pin(cases::expired_takeover_race_one_winner(c)),
    )
    .await;
    assert!(!passed, "a GET-then-SET store passed the takeover race");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_atomic_store_still_does_plain_locking() {
    let passed = passes("acquire_and_release", teeth::non_atomic(), |c| {
        Box::pin(cases::acquire_and_release(c))
    })
    .await;
    assert!(passed, "the non-atomic wrapper is broken beyond atomicity");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_ignoring_min_hold_fails_min_hold_case() {
    let passed = passes("min_hold_keeps_lock", teeth::ignores_min_hold(), |c| {
        Box::pin(cases::min_hold_keeps_lock(c))
    })
    .await;
    assert!(
        !passed,
        "a store that ignores min_hold passed min_hold_keeps_lock"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_ignoring_min_hold_is_atomic() {
    let passed = passes(
        "spin_try_acquire_no_lost_updates",
        teeth::ignores_min_hold(),
        |c| Box::pin(cases::spin_try_acquire_no_lost_updates(c)),
    )
    .await;
    assert!(passed, "the min_hold wrapper is broken beyond min_hold");
}
