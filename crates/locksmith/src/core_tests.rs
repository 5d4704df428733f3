//! Tests of the core's seam behaviour (issue 7) on the memory store, with a small fault
//! wrapper: calls that fail before applying, apply and then fail, hang, or answer late.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::store::memory::{MemoryStore, set_offline};
use crate::store::{BoxFuture, Call, Capabilities, Layer, Layered, Store};
use crate::{Error, Locksmith, LossReason, Namespace, Renew, Result, Token, Wait};

#[derive(Clone, Copy, Debug)]
enum Fault {
    /// Fail without touching the store.
    FailBefore,
    /// Let the store apply the call, then report a retryable error.
    ApplyThenFail,
    /// Let the store apply the call, then never answer.
    ApplyThenHang,
    /// Never answer, never apply.
    Hang,
    /// Let the store apply the call, then answer after this long.
    Late(Duration),
}

/// The fault layer: which [`Call::method`]s fail how, and what the wrapper reports.
#[derive(Debug)]
struct Faulty {
    faults: Mutex<HashMap<&'static str, Fault>>,
    caps: Option<Capabilities>,
}

impl Faulty {
    fn with_caps(inner: Arc<dyn Store>, caps: Option<Capabilities>) -> Arc<Layered<Faulty>> {
        Layered::new(
            inner,
            Faulty {
                faults: Mutex::default(),
                caps,
            },
        )
    }

    fn set(&self, op: &'static str, fault: Option<Fault>) {
        let mut f = self.faults.lock().unwrap();
        match fault {
            Some(fault) => f.insert(op, fault),
            None => f.remove(op),
        };
    }
}

impl Layer for Faulty {
    fn around<'a, T: Send + 'a>(
        &'a self,
        call: Call<'a>,
        answer: BoxFuture<'a, Result<T>>,
    ) -> BoxFuture<'a, Result<T>> {
        // try_acquire_all shares try_acquire's switch.
        let op = match call {
            Call::TryAcquireAll { .. } => "try_acquire",
            other => other.method(),
        };
        let fault = self.faults.lock().unwrap().get(op).copied();
        let failed = move || {
            Err(Error::store(
                "faulty",
                true,
                format!("injected {op} failure"),
            ))
        };
        Box::pin(async move {
            match fault {
                None => answer.await,
                Some(Fault::FailBefore) => failed(),
                Some(Fault::ApplyThenFail) => {
                    let _ = answer.await;
                    failed()
                }
                Some(Fault::ApplyThenHang) => {
                    let _ = answer.await;
                    std::future::pending().await
                }
                Some(Fault::Hang) => std::future::pending().await,
                Some(Fault::Late(d)) => {
                    let answer = answer.await;
                    tokio::time::sleep(d).await;
                    answer
                }
            }
        })
    }

    fn capabilities(&self, inner: Capabilities) -> Capabilities {
        self.caps.unwrap_or(inner)
    }

    fn identity(&self, inner: String) -> String {
        format!("faulty:{inner}")
    }
}

/// A plain handle on `inner` and a faulty one on top of it, with a short call timeout.
fn pair(caps: Option<Capabilities>) -> (Locksmith, Locksmith, Arc<Layered<Faulty>>) {
    let inner: Arc<dyn Store> = MemoryStore::new();
    let plain = Locksmith::with_store(inner.clone(), Namespace::default(), "memory://");
    let faulty = Faulty::with_caps(inner, caps);
    let lm = Locksmith::with_store(faulty.clone(), Namespace::default(), "faulty://")
        .with_timeout(Duration::from_millis(300))
        .unwrap();
    (plain, lm, faulty)
}

/// Polls `inspect(name)` until the lock is free (no live row), for at most `within`.
async fn free_within(lm: &Locksmith, name: &str, within: Duration) -> bool {
    let end = Instant::now() + within;
    loop {
        let info = lm.inspect(name).await.unwrap();
        if info.as_ref().is_none_or(|i| i.expired) {
            return true;
        }
        if Instant::now() > end {
            eprintln!("{name} still held: {info:?}");
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

const SOON: Duration = Duration::from_secs(3);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[tokio::test]
async fn wait_no_apply_then_fail_leaves_no_lock() {
    let (plain, lm, faulty) = pair(None);
    faulty
        .layer()
        .set("try_acquire", Some(Fault::ApplyThenFail));
    let err = lm
        .lock("a")
        .no_expiry()
        .wait(Wait::No)
        .acquire()
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert!(free_within(&plain, "a", SOON).await);
    // try_acquire, and a caller's own token, too
    let err = lm.lock("b").no_expiry().try_acquire().await.unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert!(free_within(&plain, "b", SOON).await);
    let err = lm
        .lock("c")
        .token(Token::new())
        .wait(Wait::No)
        .acquire()
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert!(free_within(&plain, "c", SOON).await);
    // acquire_all
    let err = lm
        .acquire_all(["d1", "d2"])
        .no_expiry()
        .wait(Wait::No)
        .acquire()
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert!(free_within(&plain, "d1", SOON).await);
    assert!(free_within(&plain, "d2", SOON).await);
}

#[tokio::test]
async fn retries_after_apply_then_fail_leave_only_the_winner() {
    let (plain, lm, faulty) = pair(None);
    faulty
        .layer()
        .set("try_acquire", Some(Fault::ApplyThenFail));
    let waiter = tokio::spawn({
        let lm = lm.clone();
        async move { lm.lock("r").no_expiry().acquire().await }
    });
    tokio::time::sleep(ms(100)).await;
    faulty.layer().set("try_acquire", None);
    let guard = tokio::time::timeout(SOON, waiter)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let info = plain.inspect("r").await.unwrap().unwrap();
    assert_eq!(
        info.fence,
        Some(guard.fence()),
        "the winner's grant, no other"
    );
    guard.release().await.unwrap();
    assert!(free_within(&plain, "r", SOON).await);
}

#[tokio::test]
async fn wait_for_gives_up_on_a_hung_store_within_deadline_plus_timeout() {
    let (plain, lm, faulty) = pair(None);
    faulty
        .layer()
        .set("try_acquire", Some(Fault::ApplyThenHang));
    let started = Instant::now();
    let err = lm
        .lock("h")
        .no_expiry()
        .wait(Wait::For(ms(200)))
        .acquire()
        .await
        .unwrap_err();
    let took = started.elapsed();
    eprintln!("Wait::For(200ms) on a hung store returned after {took:?}: {err}");
    assert!(err.is_retryable() || err.is_timeout(), "{err}");
    assert!(err.to_string().contains("?timeout="), "{err}");
    // d + one call timeout (300 ms), with slack for a slow machine
    assert!(took < ms(200 + 300) + SOON, "{took:?}");
    assert!(free_within(&plain, "h", SOON).await);

    // Wait::No and try_acquire return within about one call timeout too
    faulty.layer().set("try_acquire", Some(Fault::Hang));
    let started = Instant::now();
    assert!(lm.lock("h").try_acquire().await.unwrap_err().is_retryable());
    assert!(started.elapsed() >= ms(300));
    assert!(started.elapsed() < ms(300) + SOON);
}

#[tokio::test]
async fn wait_for_longer_than_the_call_timeout_on_a_hung_store() {
    let (plain, lm, faulty) = pair(None);
    faulty
        .layer()
        .set("try_acquire", Some(Fault::ApplyThenHang));
    let started = Instant::now();
    let err = lm
        .lock("hl")
        .wait(Wait::For(ms(700)))
        .acquire()
        .await
        .unwrap_err();
    let took = started.elapsed();
    eprintln!("Wait::For(700ms), 300ms call timeout, hung store: {took:?}: {err}");
    assert!(err.is_retryable(), "{err}");
    assert!(took >= ms(700), "kept trying until the deadline: {took:?}");
    assert!(took < ms(700 + 300) + SOON, "{took:?}");
    // every hung try was applied, and every one was released
    assert!(free_within(&plain, "hl", SOON).await);
}

#[tokio::test]
async fn wait_for_against_a_holder_and_failing_store_ends_at_the_deadline() {
    let (plain, lm, faulty) = pair(None);
    faulty.layer().set("try_acquire", Some(Fault::FailBefore));
    let started = Instant::now();
    let err = lm
        .lock("f")
        .wait(Wait::For(ms(250)))
        .acquire()
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert!(err.is_retryable(), "{err}");
    assert!(
        took >= ms(250),
        "retried until the deadline, not before: {took:?}"
    );
    assert!(took < ms(250) + SOON, "{took:?}");
    assert!(free_within(&plain, "f", SOON).await);
}

#[tokio::test]
async fn cancel_during_error_backoff_releases() {
    let (plain, lm, faulty) = pair(None);
    faulty
        .layer()
        .set("try_acquire", Some(Fault::ApplyThenFail));
    // a caller's token: the claim stays unsettled across tries and is released on cancel
    let token = Token::new();
    let acquiring = lm.lock("cb").token(token.clone()).no_expiry().acquire();
    assert!(tokio::time::timeout(ms(150), acquiring).await.is_err());
    assert!(free_within(&plain, "cb", SOON).await);
    // a generated token
    let acquiring = lm.lock("cg").no_expiry().acquire();
    assert!(tokio::time::timeout(ms(150), acquiring).await.is_err());
    assert!(free_within(&plain, "cg", SOON).await);
}

#[tokio::test]
async fn cancel_mid_flight_releases_a_late_grant() {
    let (plain, lm, faulty) = pair(None);
    faulty
        .layer()
        .set("try_acquire", Some(Fault::Late(ms(200))));
    let acquiring = lm.lock("mf").no_expiry().acquire();
    assert!(tokio::time::timeout(ms(50), acquiring).await.is_err());
    // applied at once, answered after 200 ms to nobody: released then
    assert!(free_within(&plain, "mf", SOON).await);
}

#[tokio::test]
async fn caller_token_adopts_its_own_grant_after_an_unknown_outcome() {
    let (plain, lm, faulty) = pair(None);
    faulty
        .layer()
        .set("try_acquire", Some(Fault::ApplyThenFail));
    let token = Token::new();
    let waiter = tokio::spawn({
        let (lm, token) = (lm.clone(), token.clone());
        async move { lm.lock("ad").token(token).acquire().await }
    });
    tokio::time::sleep(ms(60)).await;
    faulty.layer().set("try_acquire", None);
    let guard = tokio::time::timeout(SOON, waiter)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(guard.token(), &token);
    assert!(guard.is_held());
    let info = plain.inspect("ad").await.unwrap().unwrap();
    assert_eq!(info.fence, Some(guard.fence()));
}

#[tokio::test]
async fn failed_release_is_retried_in_the_background() {
    let name = format!("core-bg-{}", fastrand::u64(..));
    let lm = Locksmith::connect(&format!("memory://{name}?timeout=300ms"))
        .await
        .unwrap();
    let guard = lm
        .lock("bg")
        .ttl(Duration::from_secs(30))
        .acquire()
        .await
        .unwrap();
    assert!(set_offline(&name, true));
    let err = guard.release().await.unwrap_err();
    assert!(err.is_retryable(), "{err}");
    tokio::time::sleep(ms(200)).await;
    assert!(set_offline(&name, false));
    assert!(free_within(&lm, "bg", SOON).await);

    // close() finishes a pending retry before it returns
    let guard = lm.lock("bg2").no_expiry().acquire().await.unwrap();
    set_offline(&name, true);
    assert!(guard.release().await.is_err());
    set_offline(&name, false);
    lm.close().await.unwrap();
    assert!(lm.inspect("bg2").await.unwrap().is_none());
    assert_eq!(lm.inner.calls.pending(), 0);
}

#[tokio::test]
async fn a_late_extend_answer_never_revives_a_guard() {
    let (_plain, lm, faulty) = pair(None);
    let lm = lm.with_timeout(Duration::from_secs(5)).unwrap();
    let guard = lm
        .lock("le")
        .ttl(ms(300))
        .renew(Renew::Off)
        .acquire()
        .await
        .unwrap();
    faulty.layer().set("extend", Some(Fault::Late(ms(500))));
    let err = guard.extend(Duration::from_secs(10)).await.unwrap_err();
    assert!(err.is_not_held(), "{err}");
    assert!(!guard.is_held());
    assert_eq!(guard.expires_in(), Some(Duration::ZERO));
    assert_eq!(
        tokio::time::timeout(SOON, guard.lost()).await.unwrap(),
        LossReason::Expired
    );
}

#[tokio::test]
async fn a_failed_subscribe_makes_the_waiter_poll() {
    let (plain, lm, faulty) = pair(None);
    faulty.layer().set("subscribe", Some(Fault::FailBefore));
    let held = plain.lock("s").acquire().await.unwrap();
    let waiter = tokio::spawn({
        let lm = lm.clone();
        async move { lm.lock("s").acquire().await }
    });
    tokio::time::sleep(ms(100)).await;
    assert!(!waiter.is_finished(), "still waiting, not failed");
    let released = Instant::now();
    held.release().await.unwrap();
    let guard = tokio::time::timeout(SOON, waiter)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    eprintln!(
        "polling waiter got the lock {:?} after release",
        released.elapsed()
    );
    assert!(guard.is_held());
}

#[tokio::test]
async fn clear_makes_lost_fire_at_once() {
    let lm = Locksmith::connect("memory://").await.unwrap();
    for renew in [Renew::Auto, Renew::Off] {
        let guard = lm.lock("cl").renew(renew).acquire().await.unwrap();
        // let the guard's task subscribe
        tokio::time::sleep(ms(50)).await;
        let lost = guard.lost();
        let cleared = Instant::now();
        lm.clear(["cl"]).await.unwrap();
        let reason = tokio::time::timeout(SOON, lost).await.unwrap();
        let took = cleared.elapsed();
        eprintln!("{renew:?}: lost() {took:?} after clear");
        assert_eq!(reason, LossReason::Revoked);
        assert!(!guard.is_held());
        assert!(took < Duration::from_secs(1), "{took:?}");
        assert!(guard.release().await.unwrap_err().is_not_held());
    }
    // reset_all too
    let guard = lm.lock("rs").no_expiry().acquire().await.unwrap();
    tokio::time::sleep(ms(50)).await;
    lm.reset_all().await.unwrap();
    let reason = tokio::time::timeout(SOON, guard.lost()).await.unwrap();
    assert_eq!(reason, LossReason::Revoked);
}

#[tokio::test]
async fn renewal_is_on_by_default() {
    let lm = Locksmith::connect("memory://").await.unwrap();
    let guard = lm.lock("auto").ttl(ms(300)).acquire().await.unwrap();
    tokio::time::sleep(ms(900)).await;
    assert!(guard.is_held());
    let info = lm.inspect("auto").await.unwrap().unwrap();
    assert!(!info.expired);
    // min_hold above the TTL is fine by default (renewal keeps it)
    let g = lm
        .lock("mh")
        .ttl(ms(200))
        .min_hold(ms(400))
        .acquire()
        .await
        .unwrap();
    g.release().await.unwrap();
    // renewal off: the lease runs out, reason Expired
    let off = lm
        .lock("off")
        .ttl(ms(200))
        .renew(Renew::Off)
        .acquire()
        .await
        .unwrap();
    assert_eq!(
        tokio::time::timeout(SOON, off.lost()).await.unwrap(),
        LossReason::Expired
    );
}

#[tokio::test]
async fn renewal_that_cannot_reach_the_store_is_renewal_failed() {
    let name = format!("core-rf-{}", fastrand::u64(..));
    let lm = Locksmith::connect(&format!("memory://{name}?timeout=100ms"))
        .await
        .unwrap();
    let guard = lm.lock("rf").ttl(ms(300)).acquire().await.unwrap();
    set_offline(&name, true);
    let reason = tokio::time::timeout(SOON, guard.lost()).await.unwrap();
    set_offline(&name, false);
    assert_eq!(reason, LossReason::RenewalFailed);
}

#[tokio::test]
async fn builders_are_futures_and_wait_until_is_a_deadline() {
    let lm = Locksmith::connect("memory://").await.unwrap();
    let guard = lm.lock("f").await.unwrap();
    let started = Instant::now();
    let err = lm
        .lock("f")
        .wait(Wait::Until(started + ms(150)))
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err}");
    assert!(started.elapsed() >= ms(150));
    assert!(started.elapsed() < SOON);
    drop(guard);
    // an instant already past still tries once
    let g = lm
        .lock("f")
        .wait(Wait::Until(Instant::now() - ms(10)))
        .await
        .unwrap();
    let guards = lm.acquire_all(["g1", "g2"]).await.unwrap();
    assert_eq!(guards.len(), 2);
    crate::release_all(guards).await.unwrap();
    assert!(lm.inspect("g1").await.unwrap().is_none());
    assert!(lm.inspect("g2").await.unwrap().is_none());
    drop(g);
}

#[tokio::test]
async fn try_acquire_refuses_a_wait() {
    let lm = Locksmith::connect("memory://").await.unwrap();
    let err = lm
        .lock("t")
        .wait(Wait::For(ms(10)))
        .try_acquire()
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::InvalidOption { option: "wait", message } if message.contains("once()")),
        "{err}"
    );
}

#[tokio::test]
async fn store_limits_are_enforced_by_the_core() {
    let caps = Capabilities {
        never_expire: false,
        min_hold: false,
        max_name_len: 10,
        ttl_granularity: Duration::from_secs(1),
        ..MemoryStore::new().capabilities()
    };
    let (plain, lm, _faulty) = pair(Some(caps));
    let err = lm.lock("n").no_expiry().acquire().await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Unsupported {
                store: "memory",
                operation: "no_expiry"
            }
        ),
        "{err}"
    );
    let err = lm.lock("n").min_hold(ms(10)).acquire().await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Unsupported {
                operation: "min_hold",
                ..
            }
        ),
        "{err}"
    );
    let err = lm.lock("a-very-long-name").acquire().await.unwrap_err();
    assert!(
        matches!(&err, Error::InvalidName { reason, .. } if reason.contains("at most 10 bytes")),
        "{err}"
    );
    assert!(lm.inspect("a-very-long-name").await.is_err());
    // 1.5 s is rounded up to the store's granularity: 2 s
    let g = lm
        .lock("r")
        .ttl(ms(1500))
        .renew(Renew::Off)
        .acquire()
        .await
        .unwrap();
    let left = plain
        .inspect("r")
        .await
        .unwrap()
        .unwrap()
        .expires_in
        .unwrap();
    assert!(left > ms(1600), "{left:?}");
    assert!(g.expires_in().unwrap() > ms(1600));
}

#[tokio::test]
async fn resume_keeps_min_hold() {
    let (plain, lm, _faulty) = pair(None);
    let token = lm
        .lock("mh")
        .min_hold(Duration::from_secs(30))
        .acquire()
        .await
        .unwrap()
        .leak();
    let guard = lm.resume("mh", token).await.unwrap();
    guard.release().await.unwrap();
    let info = plain.inspect("mh").await.unwrap().unwrap();
    assert!(info.released && !info.expired, "kept by min_hold: {info:?}");
}

#[tokio::test]
async fn passwords_never_show() {
    for url in [
        // (unknown parameters: a Config error before any connection is tried)
        "redis://:secret@h?bogus=1",
        "postgres://u:secret@h/db?bogus=1",
        "mysql://u:secret@h/db?x=1",
        "postgres://u:secret@h/db?timeout=0s",
        "nope://u:secret@h",
    ] {
        let err = Locksmith::connect(url).await.unwrap_err();
        let text = format!("{err} | {err:?}");
        assert!(matches!(err, Error::Config { .. }), "{url}: {text}");
        assert!(!text.contains("secret"), "{url}: {text}");
        assert!(text.contains("***"), "{url}: {text}");
    }
    let lm = Locksmith::with_store(
        MemoryStore::new(),
        Namespace::default(),
        "postgres://u:secret@h/db",
    );
    let shown = format!("{lm:?}");
    assert!(
        !shown.contains("secret") && shown.contains("u:***@h"),
        "{shown}"
    );
}

#[tokio::test]
async fn call_timeout_applies_to_admin_calls() {
    let (plain, lm, faulty) = pair(None);
    faulty.layer().set("inspect", Some(Fault::Hang));
    faulty.layer().set("force_release", Some(Fault::Hang));
    let started = Instant::now();
    let err = lm.inspect("x").await.unwrap_err();
    assert!(
        err.is_retryable() && err.to_string().contains("?timeout="),
        "{err}"
    );
    assert!(lm.clear(["x"]).await.unwrap_err().is_retryable());
    assert!(started.elapsed() < SOON);
    // a hung release returns within the timeout and is retried in the background
    faulty.layer().set("release", Some(Fault::Hang));
    let g = lm.lock("y").no_expiry().acquire().await.unwrap();
    let started = Instant::now();
    assert!(g.release().await.unwrap_err().is_retryable());
    assert!(started.elapsed() < SOON);
    assert_eq!(lm.inner.calls.pending(), 1);
    faulty.layer().set("release", None);
    let end = Instant::now() + SOON;
    while lm.inner.calls.pending() > 0 && Instant::now() < end {
        tokio::time::sleep(ms(20)).await;
    }
    assert_eq!(lm.inner.calls.pending(), 0);
    assert!(plain.inspect("y").await.unwrap().is_none());
}
