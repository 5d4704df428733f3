//! Unknown outcomes and failing stores (issue 7 items 1–3, 7): every case talks to the
//! store through a [`Faulty`](crate::Faulty) wrapper and checks with a plain client.

use std::time::{Duration, Instant};

use locksmith::{Error, LossReason, Renew, Wait};

use super::{NoExpiryOrTtl, SOON, assert_err, eventually, eventually_free, ms};
use crate::{Cap, Ctx, FaultMode, Op};

/// Longer than any call timeout a case sets, shorter than the case's own limit.
pub(crate) const HANG: Duration = Duration::from_secs(10);

/// Tries the store applied but answered with an error (`Wait::No`, `try_acquire`, a
/// `Wait::For` that gives up at its deadline) leave no lock held — not even one that never
/// expires.
pub async fn apply_then_fail_leaves_no_lock(ctx: Ctx) {
    let (lm, faults) = ctx.faulty_client().await;
    faults.set(&[Op::TryAcquire], FaultMode::ApplyThenFail);
    let err = lm
        .lock("u-no")
        .no_expiry_or_ttl(&ctx)
        .wait(Wait::No)
        .acquire()
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
    let err = lm
        .lock("u-try")
        .no_expiry_or_ttl(&ctx)
        .try_acquire()
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
    let start = Instant::now();
    let err = lm
        .lock("u-for")
        .no_expiry_or_ttl(&ctx)
        .wait(Wait::For(ms(300)))
        .acquire()
        .await
        .unwrap_err();
    assert!(err.is_retryable() || err.is_timeout(), "{err:?}");
    assert!(start.elapsed() >= ms(300), "gave up before its deadline");
    faults.clear();
    for name in ["u-no", "u-try", "u-for"] {
        eventually_free(&ctx.lm, name).await;
        assert!(
            ctx.lm.inspect(name).await.unwrap().is_none(),
            "{name}: a lock nobody holds a token for was left behind"
        );
    }
}

/// A try that failed before reaching the store is a retryable error and changes nothing;
/// a waiter retries it until its deadline.
pub async fn fail_before_applying_is_retryable(ctx: Ctx) {
    let (lm, faults) = ctx.faulty_client().await;
    faults.set(&[Op::TryAcquire], FaultMode::FailBefore);
    let err = lm.lock("fb").wait(Wait::No).acquire().await.unwrap_err();
    assert!(err.is_retryable() && err.is_store(), "{err:?}");
    assert!(!err.is_contention());
    assert!(ctx.lm.inspect("fb").await.unwrap().is_none());
    let before = faults.calls(Op::TryAcquire);
    let err = lm
        .lock("fb")
        .wait(Wait::For(ms(300)))
        .acquire()
        .await
        .unwrap_err();
    assert!(err.is_retryable() || err.is_timeout(), "{err:?}");
    assert!(
        faults.calls(Op::TryAcquire) >= before + 2,
        "a waiter did not retry a failed try"
    );
    faults.clear();
    let g = lm.lock("fb").wait(Wait::No).acquire().await.unwrap();
    g.release().await.unwrap();
}

/// An `acquire` cancelled while it backs off after a failed try (whose outcome it could not
/// know) leaves nothing held and nothing queued.
pub async fn cancel_during_backoff_leaves_nothing(ctx: Ctx) {
    let (lm, faults) = ctx.faulty_client().await;
    faults.set(&[Op::TryAcquire], FaultMode::ApplyThenFail);
    let r = tokio::time::timeout(ms(400), lm.lock("cb").no_expiry_or_ttl(&ctx).acquire()).await;
    assert!(r.is_err(), "the acquire should still be retrying: {r:?}");
    assert!(faults.calls(Op::TryAcquire) >= 2, "no retry happened");
    faults.clear();
    assert_eq!(lm.local_waiters("cb").unwrap(), 0);
    // The try in flight at the cancel finishes in the background and may apply after this
    // point; only once it has answered can the lock's absence be judged.
    eventually("the cancelled acquire's last try answers", || async {
        faults.in_flight(Op::TryAcquire) == 0
    })
    .await;
    eventually("the cancelled acquire's claims are released", || async {
        ctx.lm.inspect("cb").await.unwrap().is_none()
    })
    .await;
}

/// A claim's first try reaches the store with `waited` zero — stores may take a faster path
/// for it (SQLite writes at once instead of reading first) — and a later try of the same
/// wait carries how long it has waited (on a store that pushes grants, the release hands
/// the lock over without a try after it).
pub async fn first_try_has_not_waited(ctx: Ctx) {
    let (lm, faults) = ctx.faulty_client().await;
    let g = lm.lock("fw").acquire().await.unwrap();
    assert_eq!(
        faults.waits_seen(),
        [Duration::ZERO],
        "an uncontended acquire"
    );
    let (lm2, faults2) = ctx.faulty_client().await;
    let waiter = tokio::spawn(async move {
        let g = lm2.lock("fw").wait(Wait::For(SOON)).acquire().await;
        g.unwrap().release().await.unwrap();
    });
    // Long enough for the waiter's first try to find the lock held.
    eventually("the waiter's first try", || async {
        !faults2.waits_seen().is_empty()
    })
    .await;
    tokio::time::sleep(ms(100)).await;
    g.release().await.unwrap();
    waiter.await.unwrap();
    let waits = faults2.waits_seen();
    assert_eq!(
        waits[0],
        Duration::ZERO,
        "the waiter's first try: {waits:?}"
    );
    if ctx.caps().pushed_grants {
        // The release handed the lock over: no try after it. The try after subscribing
        // has waited.
        assert!(
            waits.len() >= 2 && waits[1..].iter().all(|w| !w.is_zero()),
            "a later try did not carry the wait: {waits:?}"
        );
        return;
    }
    let last = *waits.last().unwrap();
    assert!(
        waits.len() >= 2 && last >= ms(100),
        "the try after the release did not carry the wait: {waits:?}"
    );
}

/// A `release()` that fails returns the error and is retried in the background: the lock
/// is free soon after the store answers again (long before its 60 s lease ends).
pub async fn failed_release_retried_in_background(ctx: Ctx) {
    let (lm, faults) = ctx.faulty_client().await;
    let g = lm
        .lock("fr")
        .ttl(Duration::from_secs(60))
        .renew(Renew::Off)
        .acquire()
        .await
        .unwrap();
    faults.set(&[Op::Release], FaultMode::FailBefore);
    let err = g.release().await.unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
    tokio::time::sleep(ms(200)).await;
    let info = ctx.lm.inspect("fr").await.unwrap().expect("still held");
    assert!(!info.expired);
    faults.clear();
    eventually_free(&ctx.lm, "fr").await;
    assert!(faults.calls(Op::Release) >= 2, "never retried");
}

/// Dropping a guard never blocks, even with the store hung (each drop returns in < 50 ms);
/// the locks are free once their leases end.
pub async fn drop_never_blocks_on_hung_store(ctx: Ctx) {
    let (lm, faults) = ctx.faulty_client().await;
    let mut guards = Vec::new();
    for i in 0..4 {
        guards.push(
            lm.lock(format!("dn{i}"))
                .ttl(ms(800))
                .acquire()
                .await
                .unwrap(),
        );
    }
    faults.set_all(FaultMode::Hang(HANG));
    for g in guards {
        let start = Instant::now();
        drop(g);
        let took = start.elapsed();
        assert!(took < ms(50), "dropping a guard blocked for {took:?}");
    }
    faults.clear();
    for i in 0..4 {
        eventually_free(&ctx.lm, &format!("dn{i}")).await;
    }
}

/// A failed `subscribe` does not end a `Wait::Forever` acquire: the waiter polls instead
/// and gets the lock once it is released.
pub async fn subscribe_failure_keeps_waiting(ctx: Ctx) {
    let (lm, faults) = ctx.faulty_client().await;
    faults.set(&[Op::Subscribe], FaultMode::FailBefore);
    let g = ctx.lm.lock("sf").acquire().await.unwrap();
    let waiter = tokio::spawn(async move { lm.lock("sf").wait(Wait::Forever).acquire().await });
    tokio::time::sleep(ms(400)).await;
    assert!(
        !waiter.is_finished(),
        "a failed subscribe ended a Wait::Forever acquire: {:?}",
        waiter.await
    );
    assert!(faults.calls(Op::Subscribe) >= 1, "never subscribed");
    g.release().await.unwrap();
    let got = tokio::time::timeout(SOON, waiter)
        .await
        .expect("the polling waiter got the lock")
        .unwrap();
    got.expect("acquired").release().await.unwrap();
}

/// An `extend` whose answer arrives after the guard's local deadline does not revive the
/// guard: it stays lost.
pub async fn late_extend_never_revives(ctx: Ctx) {
    let (lm, faults) = ctx.faulty_client().await;
    let g = lm
        .lock("le")
        .ttl(ms(400))
        .renew(Renew::Off)
        .acquire()
        .await
        .unwrap();
    let lost = g.lost();
    faults.set(&[Op::Extend], FaultMode::ApplyThenDelay(ms(800)));
    let (extended, reason) = tokio::join!(g.extend(Duration::from_secs(2)), lost);
    assert_eq!(reason, LossReason::Expired);
    assert!(
        !g.is_held(),
        "a late extend answer ({extended:?}) revived a guard past its deadline"
    );
    assert_eq!(g.expires_in(), Some(Duration::ZERO));
    tokio::time::sleep(ms(100)).await;
    assert!(!g.is_held());
}

/// A renewing holder whose lock is cleared learns it when its name is woken, not at its
/// next renewal: `lost()` is `Revoked` within ~100 ms (500 ms allowed for slow machines;
/// the next renewal is 3 s away).
pub async fn lost_soon_after_clear(ctx: Ctx) {
    if !ctx.requires(&[Cap::Notify]) {
        return;
    }
    let g = ctx
        .lm
        .lock("lsc")
        .ttl(Duration::from_secs(9))
        .renew(Renew::Auto)
        .acquire()
        .await
        .unwrap();
    let lost = g.lost();
    let other = ctx.client().await;
    tokio::time::sleep(ms(100)).await;
    let cleared = Instant::now();
    other.clear(["lsc"]).await.unwrap();
    let reason = tokio::time::timeout(SOON, lost)
        .await
        .expect("lost() fired");
    let after = cleared.elapsed();
    assert_eq!(reason, LossReason::Revoked);
    assert!(
        after < ms(100),
        "lost() fired {after:?} after the clear (promised: within 100 ms)"
    );
}

/// The core honours what a store declares it cannot do: `.no_expiry()` and `.min_hold()`
/// are `Unsupported` without `never_expire` / `min_hold`, names over `max_name_len` are
/// invalid, and TTLs reach the store rounded up to `ttl_granularity` — nothing reaches the
/// store for a refused call.
pub async fn declared_limits_honoured(ctx: Ctx) {
    let (lm, faults) = ctx.faulty_client().await;
    let mut caps = lm.capabilities();
    caps.never_expire = false;
    caps.min_hold = false;
    caps.max_name_len = 16;
    caps.ttl_granularity = Duration::from_secs(1);
    faults.declare(caps);
    let unsupported = |e: &Error| matches!(e, Error::Unsupported { .. });
    assert_err(
        lm.lock("ne").no_expiry().acquire().await,
        ".no_expiry() without never_expire",
        unsupported,
    );
    assert_err(
        lm.lock("mh").min_hold(ms(100)).acquire().await,
        ".min_hold() without min_hold",
        unsupported,
    );
    assert_err(
        lm.lock("n".repeat(17)).acquire().await,
        "a name over max_name_len",
        |e| matches!(e, Error::InvalidName { .. }),
    );
    assert!(
        faults.ttls_seen().is_empty(),
        "a refused call reached the store"
    );
    let g = lm.lock("n".repeat(16)).acquire().await.unwrap();
    g.release().await.unwrap();
    let g = lm
        .lock("gran")
        .ttl(ms(1_500))
        .renew(Renew::Off)
        .acquire()
        .await
        .unwrap();
    assert_eq!(
        faults.ttls_seen().last().copied().flatten(),
        Some(Duration::from_secs(2)),
        "a 1.5 s TTL was not rounded up to the store's 1 s granularity"
    );
    drop(g);
    for name in ["ne", "mh"] {
        assert!(
            ctx.lm.inspect(name).await.unwrap().is_none(),
            "{name} created"
        );
    }
}
