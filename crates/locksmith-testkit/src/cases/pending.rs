//! Cases for library API that is not on `main` yet (`Wait::Until`, `IntoFuture` for the
//! builders, `Locksmith::close`), behind the testkit's `pending` feature so the suite builds
//! without them. The lead turns the feature on (or moves these into the main list) when the
//! API lands.

use std::time::{Duration, Instant};

use locksmith::{Renew, Wait};

use super::{SOON, ms};
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
    super::eventually_free(&ctx.lm, "if-a").await;
    super::eventually_free(&ctx.lm, "if-b").await;
}

/// `close()` finishes the releases of dropped guards before it returns.
pub async fn close_finishes_detached_releases(ctx: Ctx) {
    let (lm, faults) = ctx.faulty_client(None).await;
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
