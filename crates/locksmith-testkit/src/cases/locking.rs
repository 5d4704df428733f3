//! Acquiring, contention, ownership and leases.

use std::sync::Arc;
use std::time::{Duration, Instant};

use locksmith::{Error, LockName, Renew, Token, Wait};

use super::{SOON, assert_err, assert_invalid_option, eventually, lease_left, ms};
use crate::{Cap, Ctx};

/// Acquire, look, release.
pub async fn acquire_and_release(ctx: Ctx) {
    let lm = &ctx.lm;
    let g = lm.lock("a").owner("worker-1").acquire().await.unwrap();
    assert_eq!(g.name(), "a");
    assert!(g.is_held());
    if ctx.caps().fencing {
        assert!(g.fence() > 0);
    }
    let left = g.expires_in().expect("default TTL expires");
    assert!(
        left <= Duration::from_secs(60) && left > Duration::from_secs(55),
        "{left:?}"
    );
    let info = lm.inspect("a").await.unwrap().expect("row");
    assert_eq!(info.name, "a");
    if ctx.caps().holder_metadata {
        assert_eq!(info.owner.as_deref(), Some("worker-1"));
        assert_eq!(info.pid, Some(std::process::id()));
        assert!(!info.host.unwrap_or_default().is_empty());
    }
    if ctx.caps().fencing {
        assert_eq!(info.fence, Some(g.fence()));
    }
    assert!(!info.expired && !info.released);
    g.release().await.unwrap();
    assert!(lm.inspect("a").await.unwrap().is_none());
}

/// `try_acquire` on a held lock is `Ok(None)`, from any client.
pub async fn try_on_held_lock(ctx: Ctx) {
    let other = ctx.client().await;
    let g = ctx.lm.lock("t").acquire().await.unwrap();
    assert!(other.lock("t").try_acquire().await.unwrap().is_none());
    assert!(ctx.lm.lock("t").try_acquire().await.unwrap().is_none());
    g.release().await.unwrap();
    let g2 = other
        .lock("t")
        .try_acquire()
        .await
        .unwrap()
        .expect("free now");
    g2.release().await.unwrap();
}

/// A waiter gets the lock when the holder releases, not before — woken by the release,
/// well before its 1 s re-poll.
pub async fn wait_until_release(ctx: Ctx) {
    let other = ctx.client().await;
    let g = ctx.lm.lock("w").acquire().await.unwrap();
    let waiter = tokio::spawn(async move {
        let g = other.lock("w").acquire().await;
        (Instant::now(), g)
    });
    tokio::time::sleep(ms(200)).await;
    assert!(!waiter.is_finished(), "waiter got a held lock");
    let fence = g.fence();
    let released = Instant::now();
    g.release().await.unwrap();
    let (woke_at, g2) = tokio::time::timeout(SOON, waiter)
        .await
        .expect("waiter woken")
        .unwrap();
    let g2 = g2.unwrap();
    let after = woke_at.duration_since(released);
    assert!(
        after < ms(500),
        "waiter got the lock {after:?} after the release: not woken by it"
    );
    if ctx.caps().fencing {
        assert!(g2.fence() > fence);
    }
}

/// `Wait::No` fails with `Locked` carrying the holder's info.
pub async fn wait_no_reports_holder(ctx: Ctx) {
    let other = ctx.client().await;
    let g = ctx
        .lm
        .lock("n")
        .owner("holder-label")
        .acquire()
        .await
        .unwrap();
    let err = other.lock("n").wait(Wait::No).acquire().await.unwrap_err();
    let Error::Locked { name, holder } = &err else {
        panic!("expected Locked, got {err:?}");
    };
    assert_eq!(name, "n");
    if ctx.caps().holder_metadata {
        assert_eq!(holder.owner.as_deref(), Some("holder-label"));
        assert_eq!(holder.pid, Some(std::process::id()));
    }
    if ctx.caps().fencing {
        assert_eq!(holder.fence, Some(g.fence()));
    }
    assert!(!holder.expired);
    assert!(
        holder
            .expires_in
            .is_some_and(|d| d <= Duration::from_secs(60))
    );
    assert!(err.is_locked() && err.is_contention() && !err.is_retryable());
    let msg = err.to_string();
    assert!(msg.contains("\"n\""), "{msg}");
    if ctx.caps().holder_metadata {
        assert!(msg.contains("holder-label"), "{msg}");
    }
    assert!(!msg.contains(g.token().expose()), "token leaked: {msg}");
}

/// `Wait::For(d)` gives up after `d`, not before, reporting how long it waited.
pub async fn wait_for_deadline_honoured(ctx: Ctx) {
    let other = ctx.client().await;
    let _g = ctx.lm.lock("d").acquire().await.unwrap();
    let start = Instant::now();
    let err = other
        .lock("d")
        .wait(Wait::For(ms(300)))
        .acquire()
        .await
        .unwrap_err();
    let elapsed = start.elapsed();
    let Error::Timeout { name, waited } = &err else {
        panic!("expected Timeout, got {err:?}");
    };
    assert_eq!(name, "d");
    assert!(*waited >= ms(300), "waited {waited:?}");
    assert!(
        elapsed >= ms(300) && elapsed < ms(300) + SOON,
        "{elapsed:?}"
    );
    assert!(err.is_timeout());
}

/// Wake-ups (here: the holder shortening its lease again and again) do not restart the
/// waiter's deadline.
pub async fn wait_for_not_restarted_by_wakeups(ctx: Ctx) {
    let other = ctx.client().await;
    let g = ctx
        .lm
        .lock("wk")
        .ttl(Duration::from_secs(30))
        .renew(Renew::Off)
        .acquire()
        .await
        .unwrap();
    let start = Instant::now();
    let waiter = tokio::spawn(async move {
        other
            .lock("wk")
            .wait(Wait::For(ms(400)))
            .acquire()
            .await
            .map(|_| ())
    });
    let mut ttl = Duration::from_secs(29);
    while !waiter.is_finished() && start.elapsed() < SOON {
        g.extend(ttl).await.unwrap();
        ttl -= ms(10);
        tokio::time::sleep(ms(40)).await;
    }
    let result = waiter.await.unwrap();
    let elapsed = start.elapsed();
    assert_err(result, "waiter", Error::is_timeout);
    assert!(
        elapsed >= ms(400) && elapsed < ms(400) + SOON / 2,
        "deadline restarted? {elapsed:?}"
    );
}

/// `inspect` and `list` show the holder but never its token.
pub async fn inspect_shows_holder_without_token(ctx: Ctx) {
    let g = ctx.lm.lock("i").owner("inspector").acquire().await.unwrap();
    let secret = g.token().expose().to_string();
    let info = ctx.lm.inspect("i").await.unwrap().unwrap();
    if ctx.caps().holder_metadata {
        assert_eq!(info.owner.as_deref(), Some("inspector"));
        assert!(info.held_for.unwrap() < SOON);
    }
    for shown in [
        format!("{info:?}"),
        info.to_string(),
        format!("{g:?}"),
        format!("{:?}", g.token()),
    ] {
        assert!(!shown.contains(&secret), "token shown in {shown}");
    }
    let page = ctx.lm.list(locksmith::ListQuery::all()).await.unwrap();
    assert_eq!(page.items.len(), 1);
    assert!(!format!("{page:?}").contains(&secret));
    assert!(ctx.lm.inspect("nothing").await.unwrap().is_none());
}

/// Releasing twice through two guards of one token: the second is `NotHeld`.
pub async fn double_release_not_held(ctx: Ctx) {
    let g = ctx.lm.lock("dr").acquire().await.unwrap();
    let again = ctx.lm.resume("dr", g.token().clone()).await.unwrap();
    g.release().await.unwrap();
    assert_err(again.release().await, "second release", Error::is_not_held);
    assert!(ctx.lm.inspect("dr").await.unwrap().is_none());
}

/// A token that does not hold the lock can neither resume, release nor take it.
pub async fn foreign_token_not_held(ctx: Ctx) {
    let g = ctx.lm.lock("f").acquire().await.unwrap();
    assert_err(
        ctx.lm.resume("f", Token::new()).await,
        "resume with a foreign token",
        Error::is_not_held,
    );
    assert_err(
        ctx.lm.resume("free", Token::new()).await,
        "resume of a free lock",
        Error::is_not_held,
    );
    let foreign = ctx.lm.lock("f").token(Token::new()).try_acquire().await;
    assert!(foreign.unwrap().is_none());
    let info = ctx.lm.inspect("f").await.unwrap().unwrap();
    if ctx.caps().fencing {
        assert_eq!(info.fence, Some(g.fence()));
    }
    assert!(g.is_held());
    g.release().await.unwrap();
}

/// Acquiring with the token that already holds the lock is `AlreadyHeld`, at once.
pub async fn already_held_via_token(ctx: Ctx) {
    let t = Token::new();
    let g = ctx.lm.lock("ah").token(t.clone()).acquire().await.unwrap();
    let start = Instant::now();
    assert_err(
        ctx.lm.lock("ah").token(t.clone()).acquire().await,
        "acquire again",
        Error::is_already_held,
    );
    assert!(start.elapsed() < SOON, "AlreadyHeld must not wait");
    assert_err(
        ctx.lm.lock("ah").token(t.clone()).try_acquire().await,
        "try again",
        Error::is_already_held,
    );
    assert!(g.is_held());
    assert_eq!(g.token(), &t);
    g.release().await.unwrap();
}

/// `resume` re-attaches to a leaked lock without changing its lease.
pub async fn resume_reattaches(ctx: Ctx) {
    let other = ctx.client().await;
    let g = ctx
        .lm
        .lock("r")
        .ttl(Duration::from_secs(10))
        .acquire()
        .await
        .unwrap();
    let fence = g.fence();
    let token = g.leak();
    assert!(ctx.lm.inspect("r").await.unwrap().is_some());
    let r = other.resume("r", token).await.unwrap();
    assert_eq!(r.fence(), fence);
    assert!(r.is_held());
    let left = r.expires_in().unwrap();
    assert!(
        left <= Duration::from_secs(10) && left > Duration::from_secs(7),
        "{left:?}"
    );
    r.extend(Duration::from_secs(20)).await.unwrap();
    r.release().await.unwrap();
    assert!(ctx.lm.inspect("r").await.unwrap().is_none());
}

/// `leak` keeps the lock past the guard until the lease expires.
pub async fn leak_keeps_lock_past_drop(ctx: Ctx) {
    // Short leases, scaled for stores that keep whole seconds.
    let ms = super::scaled(&ctx);
    let other = ctx.client().await;
    let g = ctx
        .lm
        .lock("lk")
        .ttl(ms(400))
        .renew(Renew::Off)
        .acquire()
        .await
        .unwrap();
    let fence = g.fence();
    let _token = g.leak();
    assert!(other.lock("lk").try_acquire().await.unwrap().is_none());
    tokio::time::sleep(ms(500)).await;
    let g2 = other
        .lock("lk")
        .try_acquire()
        .await
        .unwrap()
        .expect("expired");
    if ctx.caps().fencing {
        assert!(g2.fence() > fence);
    }
}

/// Dropping a guard releases the lock.
pub async fn drop_releases(ctx: Ctx) {
    let other = ctx.client().await;
    let g = ctx.lm.lock("dp").acquire().await.unwrap();
    drop(g);
    eventually("dropped lock is free", || async {
        other.lock("dp").try_acquire().await.unwrap().is_some()
    })
    .await;
}

/// After expiry another client takes over with a higher fence; the old guard is lost and
/// its release is `NotHeld`, leaving the new holder alone.
pub async fn takeover_after_expiry(ctx: Ctx) {
    // Short leases, scaled for stores that keep whole seconds.
    let ms = super::scaled(&ctx);
    let other = ctx.client().await;
    let g = ctx
        .lm
        .lock("to")
        .ttl(ms(200))
        .renew(Renew::Off)
        .acquire()
        .await
        .unwrap();
    tokio::time::sleep(ms(300)).await;
    assert!(!g.is_held());
    let g2 = other.lock("to").wait(Wait::No).acquire().await.unwrap();
    if ctx.caps().fencing {
        assert!(g2.fence() > g.fence(), "{} !> {}", g2.fence(), g.fence());
    }
    assert_err(g.release().await, "stale release", Error::is_not_held);
    let info = ctx.lm.inspect("to").await.unwrap().unwrap();
    if ctx.caps().fencing {
        assert_eq!(info.fence, Some(g2.fence()));
    }
    assert!(g2.is_held());
    g2.release().await.unwrap();
}

/// An expired row is still visible to `inspect`, marked expired.
pub async fn expired_row_inspect(ctx: Ctx) {
    if !ctx.requires(&[Cap::ExpiredVisible]) {
        return;
    }
    let g = ctx
        .lm
        .lock("ex")
        .ttl(ms(150))
        .renew(Renew::Off)
        .acquire()
        .await
        .unwrap();
    let _ = g.leak();
    tokio::time::sleep(ms(250)).await;
    let info = ctx
        .lm
        .inspect("ex")
        .await
        .unwrap()
        .expect("expired row stays");
    assert!(info.expired);
    assert_eq!(info.expires_in, Some(Duration::ZERO));
}

/// `extend` keeps the lock past its first lease.
pub async fn extend_prevents_expiry(ctx: Ctx) {
    let other = ctx.client().await;
    let g = ctx
        .lm
        .lock("e")
        .ttl(ms(300))
        .renew(Renew::Off)
        .acquire()
        .await
        .unwrap();
    tokio::time::sleep(ms(150)).await;
    g.extend(Duration::from_secs(2)).await.unwrap();
    tokio::time::sleep(ms(300)).await;
    assert!(other.lock("e").try_acquire().await.unwrap().is_none());
    assert!(g.is_held());
    assert!(g.expires_in().unwrap() > Duration::from_secs(1));
    g.release().await.unwrap();
}

/// `extend` replaces the lease and may shorten it.
pub async fn extend_may_shorten(ctx: Ctx) {
    // Short leases, scaled for stores that keep whole seconds.
    let ms = super::scaled(&ctx);
    let other = ctx.client().await;
    let g = ctx
        .lm
        .lock("es")
        .ttl(Duration::from_secs(30))
        .renew(Renew::Off)
        .acquire()
        .await
        .unwrap();
    g.extend(ms(200)).await.unwrap();
    let left = lease_left(&ctx.lm, "es").await;
    assert!(left <= ms(200), "{left:?}");
    tokio::time::sleep(ms(300)).await;
    assert!(other.lock("es").try_acquire().await.unwrap().is_some());
    assert!(!g.is_held());
}

/// `renew_by` adds to what is left.
pub async fn renew_by_adds(ctx: Ctx) {
    // Short leases, scaled for stores that keep whole seconds.
    let ms = super::scaled(&ctx);
    let other = ctx.client().await;
    let g = ctx
        .lm
        .lock("ra")
        .ttl(ms(300))
        .renew(Renew::Off)
        .acquire()
        .await
        .unwrap();
    g.renew_by(ms(1000)).await.unwrap();
    let left = lease_left(&ctx.lm, "ra").await;
    assert!(left > ms(1000) && left <= ms(1300), "{left:?}");
    tokio::time::sleep(ms(500)).await;
    assert!(other.lock("ra").try_acquire().await.unwrap().is_none());
    assert!(g.is_held());
    g.release().await.unwrap();
}

/// `renew_by` never shortens.
pub async fn renew_by_never_shortens(ctx: Ctx) {
    let g = ctx
        .lm
        .lock("rs")
        .ttl(Duration::from_secs(10))
        .acquire()
        .await
        .unwrap();
    g.renew_by(ms(100)).await.unwrap();
    let left = lease_left(&ctx.lm, "rs").await;
    assert!(left > Duration::from_secs(9), "{left:?}");
    g.release().await.unwrap();
}

/// A lock asked never to expire does not, and cannot be extended.
pub async fn never_expiring_lock(ctx: Ctx) {
    if !ctx.requires(&[Cap::NeverExpire]) {
        return;
    }
    let other = ctx.client().await;
    let g = ctx.lm.lock("ne").no_expiry().acquire().await.unwrap();
    assert_eq!(g.expires_in(), None);
    let info = ctx.lm.inspect("ne").await.unwrap().unwrap();
    assert_eq!(info.expires_in, None);
    assert!(!info.expired);
    assert_invalid_option(g.extend(Duration::from_secs(1)).await, "ttl");
    assert_invalid_option(g.renew_by(Duration::from_secs(1)).await, "ttl");
    tokio::time::sleep(ms(200)).await;
    assert!(other.lock("ne").try_acquire().await.unwrap().is_none());
    assert!(g.is_held());
    g.release().await.unwrap();
    assert!(other.lock("ne").try_acquire().await.unwrap().is_some());
}

/// `min_hold` keeps a released lock until `acquired_at + min_hold`; the old token is dead.
pub async fn min_hold_keeps_lock(ctx: Ctx) {
    if !ctx.requires(&[Cap::MinHold]) {
        return;
    }
    let other = ctx.client().await;
    let start = Instant::now();
    let g = ctx
        .lm
        .lock("mh")
        .ttl(Duration::from_secs(10))
        .min_hold(ms(600))
        .acquire()
        .await
        .unwrap();
    let token = g.token().clone();
    g.release().await.unwrap();
    let info = ctx
        .lm
        .inspect("mh")
        .await
        .unwrap()
        .expect("released lock gone before min_hold: it must be kept");
    assert!(info.released && !info.expired);
    assert!(info.expires_in.unwrap() <= ms(600));
    assert!(other.lock("mh").try_acquire().await.unwrap().is_none());
    assert_err(
        ctx.lm.resume("mh", token).await,
        "old token after a kept release",
        Error::is_not_held,
    );
    tokio::time::sleep(ms(300).saturating_sub(start.elapsed())).await;
    assert!(other.lock("mh").try_acquire().await.unwrap().is_none());
    let g2 = other
        .lock("mh")
        .wait(Wait::For(SOON))
        .acquire()
        .await
        .unwrap();
    assert!(start.elapsed() >= ms(600), "min_hold cut short");
    g2.release().await.unwrap();
}

/// Held longer than `min_hold`, a release frees the lock at once.
pub async fn min_hold_passed_releases(ctx: Ctx) {
    if !ctx.requires(&[Cap::MinHold]) {
        return;
    }
    let other = ctx.client().await;
    let g = ctx.lm.lock("mp").min_hold(ms(100)).acquire().await.unwrap();
    tokio::time::sleep(ms(200)).await;
    g.release().await.unwrap();
    assert!(ctx.lm.inspect("mp").await.unwrap().is_none());
    assert!(other.lock("mp").try_acquire().await.unwrap().is_some());
}

/// `release_now` frees the lock at once despite `min_hold` (work that did not happen).
pub async fn release_now_ignores_min_hold(ctx: Ctx) {
    if !ctx.requires(&[Cap::MinHold]) {
        return;
    }
    let other = ctx.client().await;
    let g = ctx
        .lm
        .lock("rn")
        .ttl(Duration::from_secs(30))
        .min_hold(Duration::from_secs(20))
        .acquire()
        .await
        .unwrap();
    g.release_now().await.unwrap();
    assert!(ctx.lm.inspect("rn").await.unwrap().is_none());
    assert!(other.lock("rn").try_acquire().await.unwrap().is_some());
}

/// Invalid names are refused by every call, with the reason; odd but valid names work.
pub async fn invalid_names(ctx: Ctx) {
    let lm = &ctx.lm;
    let max_len = ctx.caps().max_name_len;
    let long = "x".repeat(max_len + 1);
    for bad in ["", long.as_str(), "a\0b"] {
        let is_name = |e: &Error| matches!(e, Error::InvalidName { .. });
        assert_err(lm.lock(bad).acquire().await, "acquire", is_name);
        assert_err(lm.lock(bad).try_acquire().await, "try", is_name);
        assert_err(lm.lock(bad).once(|_| async {}).await, "once", is_name);
        assert_err(lm.inspect(bad).await, "inspect", is_name);
        assert_err(lm.clear([bad]).await, "clear", is_name);
        assert_err(lm.resume(bad, Token::new()).await, "resume", is_name);
        assert_err(
            lm.set_locks(["ok", bad], Default::default()).await,
            "set_locks",
            is_name,
        );
        assert_err(
            lm.acquire_all(["ok", bad]).acquire().await,
            "acquire_all",
            is_name,
        );
    }
    let msg = lm
        .lock(long.as_str())
        .acquire()
        .await
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains(&format!("{} bytes", max_len + 1)) && msg.contains(&max_len.to_string()),
        "{msg}"
    );
    // nothing was created by the refused calls
    assert!(lm.inspect("ok").await.unwrap().is_none());
    let max = "y".repeat(max_len);
    for good in [
        max.as_str(),
        "é🔒 unicode",
        "'; DROP TABLE locks; --",
        "lock:*",
        "100%_like",
        "{tag}",
        " ",
    ] {
        let g = lm.lock(good).acquire().await.unwrap();
        assert_eq!(lm.inspect(good).await.unwrap().unwrap().name, good);
        g.release().await.unwrap();
        assert!(lm.inspect(good).await.unwrap().is_none());
    }
    // '*' and '%' are not patterns
    let _star = lm.lock("p*").acquire().await.unwrap();
    assert!(lm.lock("px").try_acquire().await.unwrap().is_some());
}

/// Each rule of option validation, with the option it blames; nothing is acquired.
pub async fn invalid_options(ctx: Ctx) {
    let lm = &ctx.lm;
    let s = Duration::from_secs;
    assert_invalid_option(lm.lock("o").ttl(Duration::ZERO).acquire().await, "ttl");
    assert_invalid_option(lm.lock("o").ttl(s(1)).no_expiry().acquire().await, "ttl");
    assert_invalid_option(
        lm.lock("o").no_expiry().renew(Renew::Auto).acquire().await,
        "renew",
    );
    assert_invalid_option(
        lm.lock("o")
            .ttl(s(1))
            .renew(Renew::Off)
            .min_hold(s(2))
            .try_acquire()
            .await,
        "min_hold",
    );
    assert_invalid_option(
        lm.lock("o")
            .renew(Renew::Off)
            .max_hold(s(120))
            .acquire()
            .await,
        "max_hold",
    );
    assert_invalid_option(
        lm.lock("o")
            .ttl(s(60))
            .renew(Renew::Auto)
            .max_hold(s(30))
            .acquire()
            .await,
        "max_hold",
    );
    assert_invalid_option(lm.lock("o").ttl(Duration::MAX).acquire().await, "ttl");
    assert_invalid_option(
        lm.lock("o").wait(Wait::For(Duration::MAX)).acquire().await,
        "wait",
    );
    assert_invalid_option(
        lm.lock("o").min_hold(Duration::MAX).acquire().await,
        "min_hold",
    );
    assert_invalid_option(lm.lock("o").owner("").acquire().await, "owner");
    assert_invalid_option(
        lm.lock("o").ttl(Duration::ZERO).once(|_| async {}).await,
        "ttl",
    );
    assert_invalid_option(
        lm.acquire_all(["o", "p"])
            .ttl(Duration::ZERO)
            .acquire()
            .await,
        "ttl",
    );
    assert_invalid_option(
        lm.set_locks(["o"], locksmith::SetPolicy::default().ttl(Duration::ZERO))
            .await,
        "ttl",
    );
    assert_invalid_option(lm.list(locksmith::ListQuery::all().limit(0)).await, "limit");
    assert_invalid_option("has space".parse::<Token>(), "token");
    if !ctx.caps().min_hold {
        // the store refuses min_hold, clearly, and the refused acquire created nothing
        assert!(matches!(
            lm.lock("o").min_hold(s(2)).acquire().await,
            Err(Error::Unsupported { .. })
        ));
        assert!(lm.inspect("o").await.unwrap().is_none(), "o was created");
        assert!(lm.inspect("p").await.unwrap().is_none(), "p was created");
        return;
    }
    // allowed: min_hold beyond the TTL when renewing
    let g = lm
        .lock("o")
        .ttl(s(1))
        .min_hold(s(2))
        .renew(Renew::Auto)
        .acquire()
        .await
        .unwrap();
    assert_invalid_option(g.extend(Duration::ZERO).await, "ttl");
    assert_invalid_option(g.extend(Duration::MAX).await, "ttl");
    g.release().await.unwrap();
    // min_hold keeps "o" after the release; the refused acquire_all created nothing
    assert!(lm.inspect("o").await.unwrap().unwrap().released);
    assert!(lm.inspect("p").await.unwrap().is_none(), "p was created");
}

/// A free lock is granted to `Wait::For(d)` even when one round trip to the store takes
/// longer than `d`.
pub async fn wait_for_shorter_than_round_trip(ctx: Ctx) {
    let g = ctx
        .lm
        .lock("short")
        .wait(Wait::For(Duration::from_micros(100)))
        .acquire()
        .await
        .unwrap();
    g.release().await.unwrap();
}

/// A waiter rides out a store outage: retryable errors are retried until its deadline.
pub async fn wait_survives_store_errors(ctx: Ctx) {
    let other = ctx.client().await;
    let _ = ctx
        .lm
        .lock("out")
        .ttl(ms(300))
        .renew(Renew::Off)
        .acquire()
        .await
        .unwrap()
        .leak();
    let waiter = tokio::spawn(async move {
        other
            .lock("out")
            .wait(Wait::For(SOON))
            .acquire()
            .await
            .map(|g| g.leak())
    });
    tokio::time::sleep(ms(100)).await;
    if !ctx.needs(ctx.set_offline(true), "fault injection (test kit)") {
        return;
    }
    // the holder's lease ends at 300 ms, while the store is unreachable
    tokio::time::sleep(ms(500)).await;
    ctx.set_offline(false);
    let got = tokio::time::timeout(SOON, waiter)
        .await
        .expect("waiter done")
        .unwrap();
    assert!(got.is_ok(), "waiter gave up on a store outage: {got:?}");
}

/// A store that pushes grants hands a released lock to the waiter that queued first, in the
/// release itself: right after `release` returns the lock is that waiter's (it was never
/// free), its acquire returns with a higher fence, and its guard never believes in a longer
/// lease than the store keeps. The next release goes to the next waiter.
pub async fn pushed_grant_hands_over_in_order(ctx: Ctx) {
    if !ctx.requires(&[Cap::PushedGrants]) {
        return;
    }
    let ((b, tries_b), (c, tries_c)) = (ctx.faulty_client().await, ctx.faulty_client().await);
    let (store_b, store_c) = (b.store(), c.store());
    let ns = locksmith::Namespace::new(b.namespace()).unwrap();
    let name = LockName::new("pg").unwrap();
    // A waiter is queued, and subscribed, once it has tried since its subscription listens:
    // its first try found the lock held, and it tries again after subscribing. (On a busy
    // machine a listener may take longer to connect than a waiter waits for it; the
    // waiter's tries until then, made without an inbox, queue nothing.)
    let queued = |store: Arc<dyn locksmith::store::Store>, tries: crate::Faults| {
        let (ns, name) = (ns.clone(), name.clone());
        async move {
            eventually("the waiter tried twice", || {
                let n = tries.waits_seen().len();
                async move { n >= 2 }
            })
            .await;
            eventually("the waiter's subscription listens", || {
                let at_once = store.subscribes_at_once(&ns, &name);
                async move { at_once }
            })
            .await;
            // Its next try (at most a second away) is made with its inbox, and queues it.
            let n = tries.waits_seen().len();
            eventually("the waiter tried since it listens", || {
                let m = tries.waits_seen().len();
                async move { m > n }
            })
            .await;
        }
    };
    let g = ctx.lm.lock("pg").owner("a").acquire().await.unwrap();
    let waiter = |lm: locksmith::Locksmith, owner: &'static str, token: Token| {
        tokio::spawn(async move {
            let ttl = Duration::from_secs(30);
            let g = lm
                .lock("pg")
                .owner(owner)
                .token(token)
                .ttl(ttl)
                .acquire()
                .await;
            (g, lm)
        })
    };
    let wb = waiter(b, "b", Token::new());
    queued(store_b, tries_b).await;
    // In this process c waits behind b, and joins the store's queue when b has the lock.
    let token_c = Token::new();
    let wc = waiter(c, "c", token_c.clone());
    let fence = g.fence();
    g.release().await.unwrap();
    let info = ctx
        .lm
        .inspect("pg")
        .await
        .unwrap()
        .expect("handed over, never free");
    assert_eq!(
        info.owner.as_deref(),
        Some("b"),
        "not the first waiter: {info:?}"
    );
    let (gb, _b) = tokio::time::timeout(SOON, wb)
        .await
        .expect("b got it")
        .unwrap();
    let gb = gb.unwrap();
    assert_eq!(info.fence, Some(gb.fence()));
    assert!(gb.fence() > fence);

    let store_left = lease_left(&ctx.lm, "pg").await;
    let local_left = gb.expires_in().expect("a lease");
    // The store reports what is left in whole units of its granularity, rounded down.
    let slack = ctx.caps().ttl_granularity * 2;
    assert!(
        local_left <= store_left + slack && local_left > Duration::from_secs(25),
        "the guard believes {local_left:?} is left, the store keeps {store_left:?}"
    );
    queued(store_c, tries_c).await;
    assert!(!wc.is_finished(), "c got a lock b holds");
    gb.release().await.unwrap();
    let info = ctx.lm.inspect("pg").await.unwrap().expect("handed to c");
    assert_eq!(info.owner.as_deref(), Some("c"));
    let (gc, c) = tokio::time::timeout(SOON, wc)
        .await
        .expect("c got it")
        .unwrap();
    // The pushed grant is c's like any other: acquiring again with its token is
    // AlreadyHeld, never a second guard.
    assert_err(
        c.lock("pg").token(token_c).acquire().await,
        "acquire again with the granted token",
        Error::is_already_held,
    );
    gc.unwrap().release().await.unwrap();
    assert!(ctx.lm.inspect("pg").await.unwrap().is_none());
}

/// Waiters that leave — a wait that times out, a wait future that is dropped — leave the
/// store's queue: the holder's release goes to the waiter still waiting (in the same
/// process, so the process still listens for grants), not to one that left.
pub async fn abandoned_waiters_leave_the_queue(ctx: Ctx) {
    if !ctx.requires(&[Cap::PushedGrants]) {
        return;
    }
    let (b, tries) = ctx.faulty_client().await;
    let g = ctx.lm.lock("pq").owner("a").acquire().await.unwrap();
    let timed_out = b
        .lock("pq")
        .owner("gone")
        .wait(Wait::For(ms(300)))
        .acquire()
        .await;
    assert_err(timed_out, "a wait that timed out", |e| e.is_timeout());
    let dropped = tokio::time::timeout(ms(300), b.lock("pq").owner("gone").acquire()).await;
    assert!(dropped.is_err(), "got a held lock");
    let before = tries.waits_seen().len();
    let stays = tokio::spawn(async move { b.lock("pq").owner("stays").acquire().await });
    // Queued and subscribed once it tries a second time.
    eventually("the last waiter queued", || {
        let n = tries.waits_seen().len();
        async move { n >= before + 2 }
    })
    .await;
    g.release().await.unwrap();
    let info = ctx.lm.inspect("pq").await.unwrap();
    assert_eq!(
        info.and_then(|i| i.owner).as_deref(),
        Some("stays"),
        "the release did not go to the waiter still waiting"
    );
    let g = tokio::time::timeout(SOON, stays)
        .await
        .expect("granted")
        .unwrap();
    g.unwrap().release().await.unwrap();
}

/// A store that pushes grants and can subscribe at once (its wake-up connection already
/// listens for the name) subscribes a waiter before its first try: that try queues it, and
/// the release hands it the lock with no other try. Elsewhere the waiter tries again after
/// subscribing, and the grant still comes from the release.
pub async fn subscribed_waiter_granted_after_one_try(ctx: Ctx) {
    if !ctx.requires(&[Cap::PushedGrants]) {
        return;
    }
    let (b, tries) = ctx.faulty_client().await;
    // A first wait, so b listens for the name.
    let g = ctx.lm.lock("s1").acquire().await.unwrap();
    let first = {
        let b = b.clone();
        tokio::spawn(async move { b.lock("s1").acquire().await })
    };
    eventually("the first waiter subscribed and queued", || {
        let n = tries.waits_seen().len();
        async move { n >= 2 }
    })
    .await;
    g.release().await.unwrap();
    let granted = tokio::time::timeout(SOON, first)
        .await
        .expect("granted")
        .unwrap()
        .unwrap();
    // Another handle holds the lock (a waiter of the holder's own handle would be handed
    // it with no try at all: see `waiter_of_the_holders_handle_needs_no_try`).
    granted.release().await.unwrap();
    let held = ctx.lm.lock("s1").acquire().await.unwrap();
    // That release freed a lock a waiter had marked watched: its wake-up reaches b's
    // listener a little later, and must not count against the next waiter.
    tokio::time::sleep(ms(300)).await;
    // A second waiter of b, while ctx.lm holds the lock.
    let ns = locksmith::Namespace::new(b.namespace()).unwrap();
    let name = LockName::new("s1").unwrap();
    let at_once = b.store().subscribes_at_once(&ns, &name);
    let before = tries.waits_seen().len();
    let waiter = {
        let b = b.clone();
        tokio::spawn(async move { b.lock("s1").owner("second").acquire().await })
    };
    let wanted = if at_once { 1 } else { 2 };
    eventually("the second waiter queued", || {
        let n = tries.waits_seen().len();
        async move { n >= before + wanted }
    })
    .await;
    // Let the queuing try's answer come back.
    tokio::time::sleep(ms(100)).await;
    held.release().await.unwrap();
    let info = ctx.lm.inspect("s1").await.unwrap().expect("handed over");
    assert_eq!(info.owner.as_deref(), Some("second"), "{info:?}");
    let got = tokio::time::timeout(SOON, waiter)
        .await
        .expect("granted")
        .unwrap();
    got.unwrap().release().await.unwrap();
    let made = tries.waits_seen().len() - before;
    assert_eq!(
        made,
        wanted,
        "tries of a waiter that {} subscribe at once",
        if at_once { "can" } else { "cannot" }
    );
}

/// A waiter of the same handle as the lock's holder offers its claim to the holder instead
/// of trying: the holder's release hands the lock over in the same store call, so the
/// waiter never tries. A waiter of another process that queued first still comes first:
/// the offered claim is queued behind it, and its release pushes the grant. A waiter that
/// times out or is dropped takes its offer back, so the release frees the lock.
pub async fn waiter_of_the_holders_handle_needs_no_try(ctx: Ctx) {
    if !ctx.requires(&[Cap::PushedGrants]) {
        return;
    }
    let (b, tries) = ctx.faulty_client().await;
    let ns = locksmith::Namespace::new(b.namespace()).unwrap();
    let name = LockName::new("hh").unwrap();
    let ttl = Duration::from_secs(30);
    let g = b.lock("hh").owner("a").ttl(ttl).acquire().await.unwrap();
    // The holder's guard subscribes to its name, so a waiter subscribes at once.
    eventually("the holder's handle listens for the name", || {
        let at_once = b.store().subscribes_at_once(&ns, &name);
        async move { at_once }
    })
    .await;
    let made = tries.waits_seen().len();
    let waiter = |owner: &'static str| {
        let b = b.clone();
        tokio::spawn(async move { b.lock("hh").owner(owner).ttl(ttl).acquire().await })
    };
    let w = waiter("w");
    tokio::time::sleep(ms(200)).await;
    assert!(!w.is_finished(), "the waiter got a held lock");
    let fence = g.fence();
    g.release().await.unwrap();
    let info = ctx.lm.inspect("hh").await.unwrap().expect("handed over");
    assert_eq!(info.owner.as_deref(), Some("w"), "{info:?}");
    let gw = tokio::time::timeout(SOON, w)
        .await
        .expect("granted")
        .unwrap()
        .unwrap();
    assert_eq!(info.fence, Some(gw.fence()));
    assert!(gw.fence() > fence);
    let store_left = lease_left(&ctx.lm, "hh").await;
    let local_left = gw.expires_in().expect("a lease");
    let slack = ctx.caps().ttl_granularity * 2;
    assert!(
        local_left <= store_left + slack && local_left > Duration::from_secs(25),
        "the guard believes {local_left:?} is left, the store keeps {store_left:?}"
    );
    assert_eq!(tries.waits_seen().len(), made, "the waiter tried");

    // Another process's waiter queued first: it comes first, and the offered claim is
    // queued behind it. (Within one process, waiters of one store take turns, so only
    // another process has a waiter in the store's queue beside this process's head.)
    let gw = if ctx.caps().cross_process {
        let url = ctx.url();
        let mut other = ctx.spawn_helper(&["wait", &url, "hh", "20000"]);
        other.expect("waiting", Duration::from_secs(10)).await;
        // Its first try finds the lock held and queues it.
        tokio::time::sleep(ms(500)).await;
        let w2 = waiter("w2");
        tokio::time::sleep(ms(200)).await;
        assert!(!w2.is_finished(), "w2 got a held lock");
        gw.release().await.unwrap();
        let words = other.expect("acquired", SOON).await;
        let other_fence: u64 = words
            .first()
            .and_then(|w| w.parse().ok())
            .unwrap_or_else(|| panic!("unexpected helper output {words:?}"));
        let g2 = tokio::time::timeout(SOON, w2)
            .await
            .expect("w2 granted after the other process")
            .unwrap()
            .unwrap();
        assert!(
            g2.fence() > other_fence,
            "w2 ({}) came before the process that queued first ({other_fence})",
            g2.fence()
        );
        other.finish(SOON).await;
        assert_eq!(tries.waits_seen().len(), made, "a waiter of b tried");
        g2
    } else {
        gw
    };

    // Waiters that leave take their offer back: the release frees the lock.
    let timed_out = b.lock("hh").wait(Wait::For(ms(300))).acquire().await;
    assert_err(timed_out, "a wait that timed out", |e| e.is_timeout());
    let dropped = tokio::time::timeout(ms(300), b.lock("hh").acquire()).await;
    assert!(dropped.is_err(), "got a held lock");
    gw.release().await.unwrap();
    assert!(
        ctx.lm.inspect("hh").await.unwrap().is_none(),
        "the release handed the lock to a waiter that left"
    );
}

/// A waiter of the holder's handle that comes after the holder's first lease would have
/// ended (its renewals kept it) still offers its claim and waits for the release: the
/// registry follows the holder's renewals, so the waiter makes no try.
pub async fn waiter_of_a_renewed_holder_needs_no_try(ctx: Ctx) {
    if !ctx.requires(&[Cap::PushedGrants]) {
        return;
    }
    let (b, tries) = ctx.faulty_client().await;
    let ns = locksmith::Namespace::new(b.namespace()).unwrap();
    let name = LockName::new("renewed").unwrap();
    // Renewed every 500 ms, so at least 1 s of lease is always known to be left.
    let g = b.lock("renewed").ttl(ms(1500)).acquire().await.unwrap();
    eventually("the holder's handle listens for the name", || {
        let at_once = b.store().subscribes_at_once(&ns, &name);
        async move { at_once }
    })
    .await;
    // Past the grant's own lease end.
    tokio::time::sleep(ms(2000)).await;
    assert!(g.is_held(), "the renewals did not keep the lock");
    let made = tries.waits_seen().len();
    let w = {
        let b = b.clone();
        tokio::spawn(async move {
            b.lock("renewed")
                .owner("w")
                .ttl(Duration::from_secs(30))
                .acquire()
                .await
        })
    };
    tokio::time::sleep(ms(300)).await;
    assert!(!w.is_finished(), "the waiter got a held lock");
    let fence = g.fence();
    g.release().await.unwrap();
    let gw = tokio::time::timeout(SOON, w)
        .await
        .expect("granted")
        .unwrap()
        .unwrap();
    assert!(gw.fence() > fence);
    assert_eq!(tries.waits_seen().len(), made, "the waiter tried");
    gw.release().await.unwrap();
}
