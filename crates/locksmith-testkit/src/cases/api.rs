//! Cases for the API of seam v2: `Wait::Until`, `IntoFuture` for the builders,
//! `Locksmith::close`, and call timeouts (`Locksmith::with_timeout`).

use std::time::{Duration, Instant};

use locksmith::{Renew, Wait};

use super::faults::HANG;
use super::{SOON, eventually_free, ms};
use crate::{Ctx, FaultMode, Op};

/// `Wait::Until(t)` gives up at `t`, not before; a deadline already past still takes a free
/// lock.
pub async fn wait_until_deadline_honoured(ctx: Ctx) {
    let other = ctx.client().await;
    let _held = other.lock("wu").acquire().await.unwrap();
    let deadline = Instant::now() + ms(300);
    let err = ctx
        .lm
        .lock("wu")
        .wait(Wait::Until(deadline))
        .acquire()
        .await
        .unwrap_err();
    let now = Instant::now();
    assert!(err.is_timeout(), "{err:?}");
    assert!(now >= deadline, "gave up {:?} early", deadline - now);
    assert!(now < deadline + SOON, "gave up {:?} late", now - deadline);
    let past = Instant::now()
        .checked_sub(ms(10))
        .unwrap_or_else(Instant::now);
    let g = ctx
        .lm
        .lock("wu-free")
        .wait(Wait::Until(past))
        .acquire()
        .await
        .expect("a free lock with a past deadline");
    g.release().await.unwrap();
}

/// `lm.lock(name).await` acquires like `.acquire()`, and so does `acquire_all(…).await`.
pub async fn into_future_acquires(ctx: Ctx) {
    let g = ctx.lm.lock("if").await.unwrap();
    assert!(g.is_held());
    assert!(ctx.lm.lock("if").try_acquire().await.unwrap().is_none());
    g.release().await.unwrap();
    let gs = ctx.lm.acquire_all(["if-a", "if-b"]).await.unwrap();
    assert_eq!(gs.len(), 2);
    drop(gs);
    eventually_free(&ctx.lm, "if-a").await;
    eventually_free(&ctx.lm, "if-b").await;
}

/// `close()` finishes the releases of dropped guards before it returns.
pub async fn close_finishes_detached_releases(ctx: Ctx) {
    let (lm, faults) = ctx.faulty_client().await;
    let g = lm
        .lock("cl")
        .ttl(Duration::from_secs(60))
        .renew(Renew::Off)
        .acquire()
        .await
        .unwrap();
    faults.set(&[Op::Release], FaultMode::Delay(ms(300)));
    drop(g);
    tokio::time::timeout(SOON * 2, lm.close())
        .await
        .expect("close finished")
        .expect("close succeeded");
    assert!(
        ctx.lm.inspect("cl").await.unwrap().is_none(),
        "close returned before the dropped guard's release"
    );
}

/// Against a hung store (call timeout 200 ms), `Wait::For(d)` returns within `d` + one call
/// timeout, and `Wait::No`, `try_acquire` and `release()` within about one call timeout; the
/// failed release is retried once the store answers again.
pub async fn hung_store_calls_bounded(ctx: Ctx) {
    let timeout = ms(200);
    let slack = Duration::from_secs(1);
    let (lm, faults) = ctx.faulty_client().await;
    let lm = lm.with_timeout(timeout).expect("timeout");
    let mine = lm
        .lock("h-mine")
        .ttl(Duration::from_secs(30))
        .renew(Renew::Off)
        .acquire()
        .await
        .unwrap();
    let _theirs = ctx.lm.lock("h-held").acquire().await.unwrap();
    faults.set_all(FaultMode::Hang(HANG));

    let d = ms(300);
    let start = Instant::now();
    let r = lm.lock("h-held").wait(Wait::For(d)).acquire().await;
    let took = start.elapsed();
    assert!(r.is_err(), "acquired a held lock from a hung store");
    assert!(took < d + timeout + slack, "Wait::For({d:?}) took {took:?}");

    let start = Instant::now();
    let r = lm.lock("h-free").wait(Wait::No).acquire().await;
    assert!(r.unwrap_err().is_retryable());
    assert!(start.elapsed() < timeout + slack, "{:?}", start.elapsed());

    let start = Instant::now();
    assert!(lm.lock("h-free").try_acquire().await.is_err());
    assert!(start.elapsed() < timeout + slack, "{:?}", start.elapsed());

    let start = Instant::now();
    let r = mine.release().await;
    assert!(r.unwrap_err().is_retryable());
    assert!(start.elapsed() < timeout + slack, "{:?}", start.elapsed());

    faults.clear();
    eventually_free(&ctx.lm, "h-mine").await;
    for name in ["h-free"] {
        eventually_free(&ctx.lm, name).await;
    }
}
