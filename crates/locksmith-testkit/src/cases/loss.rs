//! Renewal and loss, `run` and `once`, concurrency and cancellation.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use locksmith::{Error, LossReason, Renew, Wait};

use super::{NoExpiryOrTtl, SOON, assert_err, eventually, eventually_free, lease_left, ms};
use crate::{Cap, Ctx};

/// With `Renew::Auto` the lock is held long past its TTL.
pub async fn auto_renew_holds_past_ttl(ctx: Ctx) {
    // Short leases, scaled for stores that keep whole seconds.
    let ms = super::scaled(&ctx);
    let other = ctx.client().await;
    let g = ctx
        .lm
        .lock("ar")
        .ttl(ms(300))
        .renew(Renew::Auto)
        .acquire()
        .await
        .unwrap();
    tokio::time::sleep(ms(1000)).await;
    assert!(g.is_held());
    assert!(other.lock("ar").try_acquire().await.unwrap().is_none());
    let left = lease_left(&ctx.lm, "ar").await;
    assert!(left <= ms(300), "{left:?}");
    g.release().await.unwrap();
    assert!(other.lock("ar").try_acquire().await.unwrap().is_some());
}

/// A lock cleared under a renewing holder is reported lost at the next renewal.
pub async fn lost_when_cleared(ctx: Ctx) {
    let other = ctx.client().await;
    let g = ctx
        .lm
        .lock("lc")
        .ttl(ms(600))
        .renew(Renew::Auto)
        .acquire()
        .await
        .unwrap();
    let lost = g.lost();
    let start = Instant::now();
    assert_eq!(
        other.clear(["lc"]).await.unwrap(),
        vec![("lc".to_string(), true)]
    );
    let reason = tokio::time::timeout(ms(600) + SOON, lost)
        .await
        .expect("lost fires");
    assert_eq!(reason, LossReason::Revoked);
    assert!(start.elapsed() < ms(600) + SOON, "{:?}", start.elapsed());
    assert!(!g.is_held());
    assert_eq!(g.expires_in(), Some(Duration::ZERO));
    assert_err(g.release().await, "release after loss", Error::is_not_held);
}

/// Without renewal the guard is lost at its local deadline, before the lease ends.
pub async fn lost_at_deadline_without_renewal(ctx: Ctx) {
    let before = Instant::now();
    let g = ctx
        .lm
        .lock("ld")
        .ttl(ms(400))
        .renew(Renew::Off)
        .acquire()
        .await
        .unwrap();
    let reason = g.lost().await;
    let at = before.elapsed();
    assert_eq!(reason, LossReason::Expired);
    assert!(at >= ms(300) && at < ms(400) + SOON, "{at:?}");
    assert!(!g.is_held());
    assert_err(
        g.release().await,
        "release after deadline",
        Error::is_not_held,
    );
}

/// When renewals cannot reach the store the guard is lost at the local deadline (the last
/// confirmed lease minus the margin), never after the lease could have ended, and the
/// reason says renewal failed (not that the lease simply ran out).
pub async fn lost_when_store_unreachable(ctx: Ctx) {
    // Short leases, scaled for stores that keep whole seconds.
    let ms = super::scaled(&ctx);
    let ttl = ms(1200);
    let before = Instant::now();
    let g = ctx
        .lm
        .lock("lu")
        .ttl(ttl)
        .renew(Renew::Auto)
        .acquire()
        .await
        .unwrap();
    let granted_within = before.elapsed();
    tokio::time::sleep(ms(100)).await;
    if !ctx.needs(ctx.set_offline(true), "fault injection (test kit)") {
        return;
    }
    let reason = g.lost().await;
    let at = before.elapsed();
    ctx.set_offline(false);
    assert_eq!(reason, LossReason::RenewalFailed);
    // deadline = send time + ttl - ttl/10: not before, and before the lease's end
    assert!(at >= ms(1080), "lost too early: {at:?}");
    assert!(
        at < ttl + granted_within + ms(50),
        "lost after the lease could have ended: {at:?}"
    );
    assert!(!g.is_held());
    assert_err(g.release().await, "release after loss", Error::is_not_held);
}

/// At `max_hold` the watchdog stops, the guard is lost, and the lease ends.
pub async fn lost_at_max_hold(ctx: Ctx) {
    let other = ctx.client().await;
    let before = Instant::now();
    let g = ctx
        .lm
        .lock("mx")
        .ttl(ms(300))
        .renew(Renew::Auto)
        .max_hold(ms(900))
        .acquire()
        .await
        .unwrap();
    let lost = g.lost();
    tokio::time::sleep(ms(650)).await;
    assert!(g.is_held(), "renewals should hold it past 2 x TTL");
    let reason = lost.await;
    let at = before.elapsed();
    assert_eq!(reason, LossReason::MaxHold);
    assert!(at >= ms(900) && at < ms(900) + SOON, "{at:?}");
    assert!(!g.is_held());
    // the last renewal was cut to end at max_hold: another client gets in soon after
    let g2 = other
        .lock("mx")
        .wait(Wait::For(SOON))
        .acquire()
        .await
        .unwrap();
    if ctx.caps().fencing {
        assert!(g2.fence() > g.fence());
    }
}

/// A clean release (or drop) never fires `lost()`, even after the lease would have ended.
pub async fn lost_never_after_clean_release(ctx: Ctx) {
    let g = ctx
        .lm
        .lock("lr")
        .ttl(ms(200))
        .renew(Renew::Auto)
        .acquire()
        .await
        .unwrap();
    let lost = g.lost();
    g.release().await.unwrap();
    let g2 = ctx.lm.lock("lr2").ttl(ms(200)).acquire().await.unwrap();
    let lost2 = g2.lost();
    drop(g2);
    let both = async { tokio::join!(lost, lost2) };
    assert!(
        tokio::time::timeout(ms(600), both).await.is_err(),
        "lost() fired after a clean release"
    );
}

/// `run` returns the body's value and releases.
pub async fn run_returns_value_and_releases(ctx: Ctx) {
    let out = ctx
        .lm
        .lock("run")
        .run(|lease| async move {
            assert_eq!(lease.name(), "run");
            lease.fence()
        })
        .await
        .unwrap();
    if ctx.caps().fencing {
        assert!(out > 0);
    }
    assert!(ctx.lm.inspect("run").await.unwrap().is_none());
}

struct SetOnDrop(Arc<AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// When the lock is lost mid-run, `run` drops the body and returns `Lost`.
pub async fn run_lost_drops_body(ctx: Ctx) {
    let other = ctx.client().await;
    let dropped = Arc::new(AtomicBool::new(false));
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let lm = ctx.lm.clone();
    let flag = dropped.clone();
    let run = tokio::spawn(async move {
        lm.lock("rl")
            .ttl(ms(600))
            .renew(Renew::Auto)
            .run(|_| async move {
                let _guard = SetOnDrop(flag);
                let _ = started_tx.send(());
                std::future::pending::<()>().await;
            })
            .await
    });
    started_rx.await.unwrap();
    other.clear(["rl"]).await.unwrap();
    let result = tokio::time::timeout(ms(600) + SOON, run)
        .await
        .expect("run returns after the loss")
        .unwrap();
    match result {
        Err(Error::Lost { name, reason }) => {
            assert_eq!(name, "rl");
            assert_eq!(reason, LossReason::Revoked);
        }
        other => panic!("expected Lost, got {other:?}"),
    }
    assert!(dropped.load(Ordering::SeqCst), "body was not dropped");
}

/// A panicking body releases the lock, then the panic goes on.
pub async fn run_releases_on_panic(ctx: Ctx) {
    let lm = ctx.lm.clone();
    let task = tokio::spawn(async move {
        lm.lock("rp")
            .run(|_| async {
                panic!("conformance: intended panic in run body");
            })
            .await
    });
    let err = task.await.unwrap_err();
    assert!(err.is_panic());
    assert!(
        ctx.lm.inspect("rp").await.unwrap().is_none(),
        "not released"
    );
}

/// `once` skips when held and runs when free.
pub async fn once_none_when_held(ctx: Ctx) {
    let other = ctx.client().await;
    let g = ctx.lm.lock("on").acquire().await.unwrap();
    let ran = Arc::new(AtomicBool::new(false));
    let flag = ran.clone();
    let out = other
        .lock("on")
        .once(|_| async move { flag.store(true, Ordering::SeqCst) })
        .await
        .unwrap();
    assert_eq!(out, None);
    assert!(!ran.load(Ordering::SeqCst));
    g.release().await.unwrap();
    assert_eq!(
        other.lock("on").once(|_| async { 7 }).await.unwrap(),
        Some(7)
    );
    assert!(ctx.lm.inspect("on").await.unwrap().is_none());
}

/// `once` waits when told to: it runs if the lock frees in time, else skips.
pub async fn once_honours_explicit_wait(ctx: Ctx) {
    let other = ctx.client().await;
    let g = ctx.lm.lock("ow").acquire().await.unwrap();
    let skipped = other
        .lock("ow")
        .wait(Wait::For(ms(100)))
        .once(|_| async { 1 })
        .await
        .unwrap();
    assert_eq!(skipped, None);
    let release = tokio::spawn(async move {
        tokio::time::sleep(ms(150)).await;
        g.release().await.unwrap();
    });
    let ran = other
        .lock("ow")
        .wait(Wait::For(SOON))
        .once(|_| async { 2 })
        .await
        .unwrap();
    assert_eq!(ran, Some(2));
    release.await.unwrap();
}

/// N clients × M iterations of read-yield-write under the lock: no overlap, no lost update.
pub async fn counter_no_lost_updates(ctx: Ctx) {
    const N: usize = 6;
    const M: u64 = 40;
    let counter = Arc::new(AtomicU64::new(0));
    let inside = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..N {
        let lm = ctx.client().await;
        let (counter, inside) = (counter.clone(), inside.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..M {
                let g = lm.lock("counter").acquire().await.unwrap();
                assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0, "overlap");
                let v = counter.load(Ordering::SeqCst);
                tokio::task::yield_now().await;
                counter.store(v + 1, Ordering::SeqCst);
                inside.fetch_sub(1, Ordering::SeqCst);
                g.release().await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(counter.load(Ordering::SeqCst), N as u64 * M);
}

/// Fences strictly increase in grant order, across release, expiry, clear, reset, purge,
/// `set_locks` and `acquire_all`.
pub async fn fences_strictly_increase(ctx: Ctx) {
    if !ctx.requires(&[Cap::Fencing]) {
        return;
    }
    let lm = &ctx.lm;
    let mut fences = Vec::new();
    for round in 0..3 {
        let g = lm.lock("f").acquire().await.unwrap();
        fences.push(g.fence());
        g.release().await.unwrap();

        let g = lm
            .lock("f")
            .ttl(ms(50))
            .renew(Renew::Off)
            .acquire()
            .await
            .unwrap();
        fences.push(g.fence());
        let _ = g.leak();
        tokio::time::sleep(ms(80)).await;
        let g = lm.lock("f").acquire().await.unwrap(); // takeover
        fences.push(g.fence());
        let _ = g.leak();
        lm.clear(["f"]).await.unwrap();

        let out = lm.set_locks(["f"], Default::default()).await.unwrap();
        fences.push(out.locks[0].fence.unwrap());
        match round {
            0 => {
                lm.reset_all().await.unwrap();
            }
            _ => {
                lm.clear(["f"]).await.unwrap();
                lm.purge_expired().await.unwrap();
            }
        }
        let gs = lm.acquire_all(["e", "f"]).acquire().await.unwrap();
        fences.push(gs[1].fence());
        drop(gs);
        eventually_free(lm, "f").await;
    }
    for w in fences.windows(2) {
        assert!(w[1] > w[0], "fences not increasing: {fences:?}");
    }
}

/// Waiters of one process are served in arrival order.
pub async fn fifo_order_of_waiters(ctx: Ctx) {
    let lm = &ctx.lm;
    let g = lm.lock("fifo").acquire().await.unwrap();
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for i in 0..5 {
        let (lm2, order) = (lm.clone(), order.clone());
        tasks.push(tokio::spawn(async move {
            let g = lm2.lock("fifo").acquire().await.unwrap();
            order.lock().unwrap().push(i);
            tokio::time::sleep(ms(5)).await;
            g.release().await.unwrap();
        }));
        eventually("waiter queued", || async {
            lm.local_waiters("fifo").unwrap() == i + 1
        })
        .await;
    }
    g.release().await.unwrap();
    for t in tasks {
        tokio::time::timeout(SOON, t).await.unwrap().unwrap();
    }
    assert_eq!(*order.lock().unwrap(), vec![0, 1, 2, 3, 4]);
    assert_eq!(lm.local_waiters("fifo").unwrap(), 0);
}

/// An `acquire` dropped while waiting leaves no waiter and never takes the lock.
pub async fn cancel_while_waiting(ctx: Ctx) {
    let lm = &ctx.lm;
    let g = lm.lock("cw").acquire().await.unwrap();
    let cancelled = tokio::time::timeout(ms(150), lm.lock("cw").acquire()).await;
    assert!(cancelled.is_err());
    let in_select = tokio::select! {
        r = lm.lock("cw").wait(Wait::For(SOON)).acquire() => Some(r),
        _ = tokio::time::sleep(ms(100)) => None,
    };
    assert!(in_select.is_none());
    assert_eq!(
        lm.local_waiters("cw").unwrap(),
        0,
        "a cancelled waiter stayed queued"
    );
    g.release().await.unwrap();
    tokio::time::sleep(ms(200)).await;
    assert!(
        lm.inspect("cw").await.unwrap().is_none(),
        "a cancelled waiter took the lock"
    );
    // and the queue still works
    let g = lm.lock("cw").wait(Wait::No).acquire().await.unwrap();
    g.release().await.unwrap();
}

/// An `acquire` dropped at every stage — queued, subscribing, with its request in flight —
/// leaves no waiter and no lock held.
pub async fn cancel_with_request_in_flight(ctx: Ctx) {
    let lm = &ctx.lm;
    let mut cancelled = 0;
    // A grant that lands after the cancellation is released as soon as its answer comes
    // back, so the lock must be free again well before its 30 s lease could end.
    let check = || async {
        assert_eq!(
            lm.local_waiters("cf").unwrap(),
            0,
            "a cancelled acquire stayed queued"
        );
        let g = lm.lock("cf").wait(Wait::For(SOON)).acquire().await;
        g.expect("a cancelled acquire left the lock held")
            .release()
            .await
            .unwrap();
    };
    // Poll the future a few times by hand, then drop it: after one poll the grant request
    // has just been sent and its answer cannot have been read yet.
    for polls in [1usize, 1, 1, 1, 1, 2, 2, 3, 4, 6, 8] {
        let done = {
            let mut fut = std::pin::pin!(lm.lock("cf").ttl(Duration::from_secs(30)).acquire());
            let mut done = None;
            for _ in 0..polls {
                let poll = std::future::poll_fn(|cx| std::task::Poll::Ready(fut.as_mut().poll(cx)));
                if let std::task::Poll::Ready(r) = poll.await {
                    done = Some(r);
                    break;
                }
                tokio::task::yield_now().await;
            }
            done
        }; // the future is dropped here
        match done {
            Some(guard) => guard.unwrap().release().await.unwrap(),
            None => cancelled += 1,
        }
        check().await;
    }
    // And cancelled by timeouts of growing length.
    for us in [0u64, 20, 50, 100, 200, 500, 1000, 2000] {
        let attempt = tokio::time::timeout(
            Duration::from_micros(us),
            lm.lock("cf").ttl(Duration::from_secs(30)).acquire(),
        )
        .await;
        match attempt {
            Ok(guard) => guard.unwrap().release().await.unwrap(),
            Err(_) => cancelled += 1,
        }
        check().await;
    }
    // And cancelled while waiting for a holder (a store that answers at once — memory —
    // has no moment with a request in flight, so only these are cancelled there).
    for polls in [1usize, 2, 3, 5, 8] {
        let holder = lm.lock("cf").acquire().await.unwrap();
        {
            let mut fut = std::pin::pin!(lm.lock("cf").ttl(Duration::from_secs(30)).acquire());
            for _ in 0..polls {
                let poll = std::future::poll_fn(|cx| std::task::Poll::Ready(fut.as_mut().poll(cx)));
                assert!(poll.await.is_pending(), "acquired a held lock");
                tokio::task::yield_now().await;
            }
        } // the waiting future is dropped here
        cancelled += 1;
        holder.release().await.unwrap();
        check().await;
    }
    assert!(cancelled > 0, "no attempt was cancelled");
    let g = lm.lock("cf").wait(Wait::No).acquire().await.unwrap();
    g.release().await.unwrap();
}

/// A `renew_by` on an auto-renewed guard is not undone by the next renewal.
pub async fn renew_by_survives_auto_renew(ctx: Ctx) {
    let g = ctx
        .lm
        .lock("rbs")
        .ttl(ms(300))
        .renew(Renew::Auto)
        .acquire()
        .await
        .unwrap();
    g.renew_by(Duration::from_secs(5)).await.unwrap();
    tokio::time::sleep(ms(400)).await; // past at least one renewal
    let left = lease_left(&ctx.lm, "rbs").await;
    assert!(
        left > Duration::from_secs(4),
        "renewal shortened renew_by: {left:?}"
    );
    g.release().await.unwrap();
}

/// `renew_by` never moves the lease past `max_hold` (plus the safety margin).
pub async fn renew_by_capped_at_max_hold(ctx: Ctx) {
    // Short leases, scaled for stores that keep whole seconds.
    let ms = super::scaled(&ctx);
    let g = ctx
        .lm
        .lock("rbc")
        .ttl(ms(300))
        .renew(Renew::Auto)
        .max_hold(ms(1000))
        .acquire()
        .await
        .unwrap();
    g.renew_by(Duration::from_secs(3600)).await.unwrap();
    let left = lease_left(&ctx.lm, "rbc").await;
    // A store that keeps coarse TTLs rounds the added time up, and then the new lease: at
    // most two granules past max_hold.
    let slack = ms(30).max(ctx.caps().ttl_granularity * 2);
    assert!(
        left <= ms(1000) + slack,
        "lease moved past max_hold: {left:?}"
    );
    assert_eq!(g.lost().await, LossReason::MaxHold);
}

/// What the guard believes is left, then what the store says, and how long the store took
/// to answer. The guard's deadline only moves later while nobody shortens the lease, so a
/// correct guard believes at most `store + round_trip` (a renewal landing between the two
/// reads cannot make this fail, as reading the store first and the guard second would).
async fn guard_and_store(g: &locksmith::LockGuard, ctx: &Ctx) -> (Duration, Duration, Duration) {
    let asked = Instant::now();
    let local = g.expires_in().unwrap();
    let store = lease_left(&ctx.lm, "ser").await;
    (local, store, asked.elapsed())
}

/// Concurrent lease changes (the watchdog and many `extend`s) never leave the guard
/// believing in a longer lease than the store has.
pub async fn lease_changes_serialised(ctx: Ctx) {
    let g = Arc::new(
        ctx.lm
            .lock("ser")
            .ttl(ms(300))
            .renew(Renew::Auto)
            .acquire()
            .await
            .unwrap(),
    );
    for wave in 0..4u64 {
        // a wave of concurrent extends, shortest last in spawn order
        let tasks: Vec<_> = (0..8u64)
            .map(|i| {
                let g = g.clone();
                let ttl = ms(300 + ((i + wave) % 4) * 900);
                tokio::spawn(async move { g.extend(ttl).await.unwrap() })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let (local, store, round_trip) = guard_and_store(&g, &ctx).await;
        assert!(
            local <= store + round_trip + ms(1),
            "wave {wave}: guard believes {local:?} but the store has {store:?} \
             (read {round_trip:?} later)"
        );
    }
    tokio::time::sleep(ms(150)).await;
    for _ in 0..5 {
        let (local, store, round_trip) = guard_and_store(&g, &ctx).await;
        assert!(
            local <= store + round_trip + ms(1),
            "guard believes {local:?} but the store has {store:?} (read {round_trip:?} later)"
        );
        tokio::time::sleep(ms(60)).await;
    }
    assert!(g.is_held());
}

/// An operator making a renewed lock permanent (`set_locks` with no expiry) turns the guard
/// into a never-expiring one instead of losing it.
pub async fn made_permanent_while_renewing(ctx: Ctx) {
    if !ctx.requires(&[Cap::NeverExpire]) {
        return;
    }
    let g = ctx
        .lm
        .lock("perm")
        .ttl(ms(300))
        .renew(Renew::Auto)
        .acquire()
        .await
        .unwrap();
    let out = ctx
        .lm
        .set_locks(["perm"], locksmith::SetPolicy::default().no_expiry())
        .await
        .unwrap();
    assert_eq!(out.counts.renewed, 1);
    tokio::time::sleep(ms(700)).await;
    assert!(g.is_held(), "guard lost a lock the store holds forever");
    assert_eq!(g.expires_in(), None);
    g.release().await.unwrap();
    assert!(ctx.lm.inspect("perm").await.unwrap().is_none());
}

/// A `release()` cancelled half-way still releases the lock (the guard's drop takes over).
/// The store's answer is slowed down, so the release really is pending when it is dropped,
/// on every store.
pub async fn cancelled_release_still_releases(ctx: Ctx) {
    let (lm, faults) = ctx.faulty_client().await;
    for (name, polls) in [("cr1", 1usize), ("cr2", 3)] {
        let g = lm
            .lock(name)
            .no_expiry_or_ttl(&ctx)
            .acquire()
            .await
            .unwrap();
        faults.set(&[crate::Op::Release], crate::FaultMode::Delay(ms(150)));
        {
            let mut release = std::pin::pin!(g.release());
            for _ in 0..polls {
                let poll = std::future::poll_fn(|cx| {
                    std::task::Poll::Ready(release.as_mut().poll(cx).is_pending())
                });
                assert!(poll.await, "release finished before it could be cancelled");
                tokio::task::yield_now().await;
            }
        } // dropped while pending
        eventually_free(&ctx.lm, name).await;
        faults.clear();
    }
}

/// `run` reports why the lease was lost: here the local deadline without renewal.
pub async fn run_lost_at_deadline_reports_expired(ctx: Ctx) {
    let out = ctx
        .lm
        .lock("rd")
        .ttl(ms(200))
        .renew(Renew::Off)
        .run(|_| tokio::time::sleep(Duration::from_secs(2)))
        .await;
    match out {
        Err(Error::Lost { reason, .. }) => assert_eq!(reason, LossReason::Expired),
        other => panic!("expected Lost(Expired), got {other:?}"),
    }
}
