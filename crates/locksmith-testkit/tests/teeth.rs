//! The suite's teeth: test-only broken stores (see `locksmith_testkit::teeth`) must FAIL the
//! cases that hold a store to the rule they break — and pass a case that does not touch it,
//! so the failure is the rule's, not the wrapper's.

use std::future::Future;

use locksmith_testkit::{CaseFuture, Ctx, Target, cases, run_case, teeth};

/// Runs `case` against `target` in its own task: `Ok` if it passed, else its panic
/// message.
async fn outcome<T>(
    name: &'static str,
    target: T,
    case: fn(Ctx) -> CaseFuture,
) -> Result<(), String>
where
    T: Future<Output = Option<Target>> + Send + 'static,
{
    match tokio::spawn(run_case(name, target, None, case)).await {
        Ok(()) => Ok(()),
        Err(e) if e.is_panic() => {
            let payload = e.into_panic();
            Err(payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default())
        }
        Err(e) => panic!("{name}: {e}"),
    }
}

async fn passes<T>(name: &'static str, target: T, case: fn(Ctx) -> CaseFuture) -> bool
where
    T: Future<Output = Option<Target>> + Send + 'static,
{
    outcome(name, target, case).await.is_ok()
}

/// Asserts the case fails, for the reason `because` (a piece of its panic message).
async fn fails_because<T>(name: &'static str, target: T, case: fn(Ctx) -> CaseFuture, because: &str)
where
    T: Future<Output = Option<Target>> + Send + 'static,
{
    match outcome(name, target, case).await {
        Ok(()) => panic!("a broken store passed {name}: the suite has no teeth there"),
        Err(msg) => assert!(
            msg.contains(because),
            "{name} failed, but not because {because:?}: {msg}"
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_atomic_store_loses_updates_under_spinning_clients() {
    fails_because(
        "spin_try_acquire_no_lost_updates",
        teeth::non_atomic(),
        |c| Box::pin(cases::spin_try_acquire_no_lost_updates(c)),
        "updates lost",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_atomic_store_lets_several_clients_take_over_one_expired_lock() {
    fails_because(
        "expired_takeover_race_one_winner",
        teeth::non_atomic(),
        |c| Box::pin(cases::expired_takeover_race_one_winner(c)),
        "took over the same expired lock",
    )
    .await;
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
    fails_because(
        "min_hold_keeps_lock",
        teeth::ignores_min_hold(),
        |c| Box::pin(cases::min_hold_keeps_lock(c)),
        "released lock gone before min_hold",
    )
    .await;
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
