//! Multi-lock and admin calls: `acquire_all`, `set_locks`, `list`, `clear`, `reset_all`,
//! `purge_expired`, namespaces.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use locksmith::{Error, Expired, ListQuery, Renew, SetAction, SetPolicy, Wait};

use super::{SOON, assert_err, lease_left, ms};
use crate::{Cap, Ctx};

fn is_invalid_name(e: &Error) -> bool {
    matches!(e, Error::InvalidName { .. })
}

/// `acquire_all` takes every lock or none.
pub async fn acquire_all_all_or_nothing(ctx: Ctx) {
    let other = ctx.client().await;
    let held = other.lock("b").acquire().await.unwrap();
    let err = ctx
        .lm
        .acquire_all(["a", "b", "c"])
        .wait(Wait::No)
        .acquire()
        .await
        .unwrap_err();
    match &err {
        Error::Locked { name, holder } => {
            assert_eq!(name, "b");
            if ctx.caps().fencing {
                assert_eq!(holder.fence, Some(held.fence()));
            }
        }
        other => panic!("expected Locked, got {other:?}"),
    }
    let timed = ctx
        .lm
        .acquire_all(["a", "b", "c"])
        .wait(Wait::For(ms(200)))
        .acquire()
        .await;
    assert_err(timed, "acquire_all with a deadline", Error::is_timeout);
    for name in ["a", "c"] {
        assert!(
            ctx.lm.inspect(name).await.unwrap().is_none(),
            "{name} left held"
        );
    }
    assert_err(
        ctx.lm.acquire_all(["a", "a"]).acquire().await,
        "repeated name",
        is_invalid_name,
    );
    assert_err(
        ctx.lm.acquire_all(Vec::<String>::new()).acquire().await,
        "no names",
        is_invalid_name,
    );
    assert!(ctx.lm.inspect("a").await.unwrap().is_none());
}

/// A waiting `acquire_all` gets every lock once the last one frees, and holds none before.
pub async fn acquire_all_waits_for_all(ctx: Ctx) {
    let other = ctx.client().await;
    let held = other.lock("b").acquire().await.unwrap();
    let lm = ctx.lm.clone();
    let all = tokio::spawn(async move { lm.acquire_all(["a", "b", "c"]).acquire().await });
    tokio::time::sleep(ms(150)).await;
    assert!(!all.is_finished());
    // nothing is held while it waits
    let a = other
        .lock("a")
        .try_acquire()
        .await
        .unwrap()
        .expect("a free");
    a.release().await.unwrap();
    held.release().await.unwrap();
    let guards = tokio::time::timeout(SOON, all)
        .await
        .expect("woken")
        .unwrap()
        .unwrap();
    let names: Vec<_> = guards.iter().map(|g| g.name().to_string()).collect();
    assert_eq!(names, ["a", "b", "c"]);
    let fences: HashSet<_> = guards.iter().map(|g| g.fence()).collect();
    if ctx.caps().fencing {
        assert_eq!(fences.len(), 3);
    }
    for g in guards {
        assert!(g.is_held());
        g.release().await.unwrap();
    }
}

/// `set_locks` creates free names, renews held ones whoever holds them, and reports it all.
pub async fn set_locks_statuses_and_counts(ctx: Ctx) {
    let other = ctx.client().await;
    let held = other
        .lock("b")
        .ttl(Duration::from_secs(5))
        .acquire()
        .await
        .unwrap();
    let out = ctx
        .lm
        .set_locks(
            ["a", "b", "c"],
            SetPolicy::default()
                .ttl(Duration::from_secs(30))
                .owner("operator"),
        )
        .await
        .unwrap();
    let actions: Vec<_> = out.statuses.iter().map(|s| s.action).collect();
    assert_eq!(
        actions,
        [SetAction::Created, SetAction::Renewed, SetAction::Created]
    );
    let was: Vec<_> = out.statuses.iter().map(|s| s.was_locked).collect();
    assert_eq!(was, [false, true, false]);
    assert!(out.statuses.iter().all(|s| s.locked));
    assert_eq!((out.counts.created, out.counts.renewed), (2, 1));
    assert_eq!(
        (out.counts.skipped_create, out.counts.skipped_renew),
        (0, 0)
    );
    let created: Vec<_> = out.created_tokens.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(created, ["a", "c"]);
    assert_eq!(out.locks.len(), 3);
    let a = out.locks.iter().find(|l| l.name == "a").unwrap();
    if ctx.caps().holder_metadata {
        assert_eq!(a.owner.as_deref(), Some("operator"));
    }
    // the renewed lock keeps its holder, who can still use it
    let b = ctx.lm.inspect("b").await.unwrap().unwrap();
    if ctx.caps().fencing {
        assert_eq!(b.fence, Some(held.fence()));
    }
    assert!(b.expires_in.unwrap() > Duration::from_secs(25));
    held.release().await.unwrap();
    // a created lock can be resumed with its token
    let (_, token) = out.created_tokens.into_iter().next().unwrap();
    ctx.lm
        .resume("a", token)
        .await
        .unwrap()
        .release()
        .await
        .unwrap();
    assert!(ctx.lm.inspect("a").await.unwrap().is_none());
    assert!(ctx.lm.inspect("c").await.unwrap().is_some());
}

/// `create(false)` and `renew(false)` skip, and a renewal never shortens a lease.
pub async fn set_locks_skip_flags(ctx: Ctx) {
    let held = ctx
        .lm
        .lock("b")
        .ttl(Duration::from_secs(5))
        .acquire()
        .await
        .unwrap();
    let out = ctx
        .lm
        .set_locks(["a", "b"], SetPolicy::default().create(false).renew(false))
        .await
        .unwrap();
    let actions: Vec<_> = out.statuses.iter().map(|s| s.action).collect();
    assert_eq!(actions, [SetAction::SkippedCreate, SetAction::SkippedRenew]);
    assert_eq!(
        (out.counts.skipped_create, out.counts.skipped_renew),
        (1, 1)
    );
    assert!(!out.statuses[0].locked && out.statuses[1].locked);
    assert_eq!(out.locks.len(), 1);
    assert!(out.created_tokens.is_empty());
    assert!(ctx.lm.inspect("a").await.unwrap().is_none());
    let left = lease_left(&ctx.lm, "b").await;
    assert!(left <= Duration::from_secs(5));
    // only renew, with a shorter TTL: never shortens
    let out = ctx
        .lm
        .set_locks(["b"], SetPolicy::default().create(false).ttl(ms(100)))
        .await
        .unwrap();
    assert_eq!(out.statuses[0].action, SetAction::Renewed);
    let left2 = lease_left(&ctx.lm, "b").await;
    assert!(left2 > Duration::from_secs(4), "{left2:?}");
    if ctx.caps().never_expire {
        let out = ctx
            .lm
            .set_locks(["b", "p"], SetPolicy::default().no_expiry())
            .await
            .unwrap();
        assert_eq!(out.counts.created, 1);
        for name in ["b", "p"] {
            let info = ctx.lm.inspect(name).await.unwrap().unwrap();
            assert_eq!(info.expires_in, None, "{name} should never expire");
        }
    }
    held.release().await.unwrap();
}

/// With `fail`, one held name rolls everything back and reports the holder.
pub async fn set_locks_fail_rolls_back(ctx: Ctx) {
    let other = ctx.client().await;
    let held = other.lock("b").owner("busy").acquire().await.unwrap();
    let before = ctx.lm.inspect("b").await.unwrap().unwrap();
    let err = ctx
        .lm
        .set_locks(["a", "b", "c"], SetPolicy::default().fail(true))
        .await
        .unwrap_err();
    match &err {
        Error::Locked { name, holder } => {
            assert_eq!(name, "b");
            if ctx.caps().holder_metadata {
                assert_eq!(holder.owner.as_deref(), Some("busy"));
            }
        }
        other => panic!("expected Locked, got {other:?}"),
    }
    for name in ["a", "c"] {
        assert!(
            ctx.lm.inspect(name).await.unwrap().is_none(),
            "{name} created"
        );
    }
    let after = ctx.lm.inspect("b").await.unwrap().unwrap();
    assert_eq!(after.fence, before.fence);
    assert!(after.expires_in <= before.expires_in, "b was renewed");
    held.release().await.unwrap();
    let ok = ctx
        .lm
        .set_locks(["a", "b"], SetPolicy::default().fail(true))
        .await
        .unwrap();
    assert_eq!(ok.counts.created, 2);
}

/// `list` filters by prefix and pages in name order without gaps or repeats.
pub async fn list_prefix_and_paging(ctx: Ctx) {
    if !ctx.requires(&[Cap::OrderedList]) {
        return;
    }
    let mut names: Vec<String> = (0..25).map(|i| format!("job/{i:03}")).collect();
    names.push("other/x".into());
    names.push("job".into()); // shorter than the prefix
    ctx.lm
        .set_locks(names.clone(), SetPolicy::default())
        .await
        .unwrap();
    let mut seen = Vec::new();
    let mut query = ListQuery::prefix("job/").limit(10);
    let mut pages = Vec::new();
    loop {
        let page = ctx.lm.list(query.clone()).await.unwrap();
        pages.push(page.items.len());
        seen.extend(page.items.iter().map(|i| i.name.clone()));
        match page.next {
            Some(after) => query = query.after(after),
            None => break,
        }
    }
    let expected: Vec<String> = (0..25).map(|i| format!("job/{i:03}")).collect();
    assert_eq!(seen, expected);
    assert!(
        pages.iter().all(|n| *n <= 10) && pages.len() >= 3,
        "{pages:?}"
    );
    let all = ctx.lm.list(ListQuery::all().limit(1000)).await.unwrap();
    assert_eq!(all.items.len(), 27);
    assert!(all.next.is_none());
    let sorted = all.items.windows(2).all(|w| w[0].name < w[1].name);
    assert!(sorted, "not in name order");
    let none = ctx.lm.list(ListQuery::prefix("nothing/")).await.unwrap();
    assert!(none.items.is_empty() && none.next.is_none());
}

/// `list` hides expired rows by default and can show them, or only them.
pub async fn list_expired_filter(ctx: Ctx) {
    if !ctx.requires(&[Cap::ExpiredVisible, Cap::OrderedList]) {
        return;
    }
    let live = ctx.lm.lock("live").acquire().await.unwrap();
    let _ = ctx
        .lm
        .lock("gone")
        .ttl(ms(100))
        .renew(Renew::Off)
        .acquire()
        .await
        .unwrap()
        .leak();
    tokio::time::sleep(ms(200)).await;
    let names = |page: locksmith::Page| -> Vec<(String, bool)> {
        page.items
            .into_iter()
            .map(|i| (i.name, i.expired))
            .collect()
    };
    let q = ListQuery::all();
    assert_eq!(
        names(ctx.lm.list(q.clone()).await.unwrap()),
        [("live".to_string(), false)]
    );
    assert_eq!(
        names(
            ctx.lm
                .list(q.clone().expired(Expired::Include))
                .await
                .unwrap()
        ),
        [("gone".to_string(), true), ("live".to_string(), false)]
    );
    assert_eq!(
        names(ctx.lm.list(q.expired(Expired::Only)).await.unwrap()),
        [("gone".to_string(), true)]
    );
    live.release().await.unwrap();
}

/// `clear` force-releases, says which locks existed, and wakes waiters at once.
pub async fn clear_reports_and_wakes(ctx: Ctx) {
    let other = ctx.client().await;
    let g = ctx.lm.lock("c").acquire().await.unwrap();
    let waiter = tokio::spawn(async move {
        let g = other.lock("c").wait(Wait::For(SOON)).acquire().await;
        (Instant::now(), g)
    });
    tokio::time::sleep(ms(100)).await;
    let cleared_at = Instant::now();
    let out = ctx.lm.clear(["c", "nope"]).await.unwrap();
    assert_eq!(out, [("c".to_string(), true), ("nope".to_string(), false)]);
    let (woke_at, got) = waiter.await.unwrap();
    let g2 = got.unwrap();
    // without a wake-up the waiter would re-poll only after 1 s
    assert!(
        woke_at.duration_since(cleared_at) < ms(800),
        "waiter not woken by clear"
    );
    if ctx.caps().fencing {
        assert!(g2.fence() > g.fence());
    }
    assert_err(g.release().await, "release after clear", Error::is_not_held);
    assert!(g2.is_held());
}

/// `reset_all` removes every row of the namespace, counts them, and wakes waiters.
pub async fn reset_all_counts_and_wakes(ctx: Ctx) {
    // Short leases, scaled for stores that keep whole seconds.
    let ms = super::scaled(&ctx);
    let other = ctx.client().await;
    let _a = ctx.lm.lock("a").acquire().await.unwrap();
    let _b = ctx.lm.lock("b").acquire().await.unwrap();
    let _ = ctx
        .lm
        .lock("x")
        .ttl(ms(50))
        .renew(Renew::Off)
        .acquire()
        .await
        .unwrap()
        .leak();
    tokio::time::sleep(ms(100)).await;
    let waiter = tokio::spawn(async move {
        let g = other.lock("a").wait(Wait::For(SOON)).acquire().await;
        (Instant::now(), g.map(|g| g.leak()))
    });
    tokio::time::sleep(ms(100)).await;
    let reset_at = Instant::now();
    // The expired lock "x" is a row still to remove only where expired rows stay
    // (`expired_visible`); Redis dropped it at expiry.
    let rows = if ctx.caps().expired_visible { 3 } else { 2 };
    assert_eq!(ctx.lm.reset_all().await.unwrap(), rows);
    let (woke_at, got) = waiter.await.unwrap();
    got.unwrap();
    assert!(
        woke_at.duration_since(reset_at) < ms(800),
        "waiter not woken"
    );
    let left = ctx
        .lm
        .list(ListQuery::all().expired(Expired::Include))
        .await;
    let left: Vec<_> = left.unwrap().items.into_iter().map(|i| i.name).collect();
    assert_eq!(left, ["a"]);
    assert_eq!(ctx.lm.reset_all().await.unwrap(), 1);
}

/// `purge_expired` deletes expired rows only.
pub async fn purge_expired_removes_only_expired(ctx: Ctx) {
    if !ctx.requires(&[Cap::ExpiredVisible]) {
        return;
    }
    let live = ctx.lm.lock("live").acquire().await.unwrap();
    for name in ["old1", "old2"] {
        let _ = ctx
            .lm
            .lock(name)
            .ttl(ms(80))
            .renew(Renew::Off)
            .acquire()
            .await
            .unwrap()
            .leak();
    }
    tokio::time::sleep(ms(200)).await;
    assert_eq!(ctx.lm.purge_expired().await.unwrap(), 2);
    assert!(ctx.lm.inspect("old1").await.unwrap().is_none());
    assert!(ctx.lm.inspect("live").await.unwrap().is_some());
    assert_eq!(ctx.lm.purge_expired().await.unwrap(), 0);
    live.release().await.unwrap();
}

/// Namespaces never see each other's locks.
pub async fn namespaces_isolated(ctx: Ctx) {
    if !ctx.requires(&[Cap::Namespaces]) {
        return;
    }
    let ns2 = format!("{}-2", ctx.namespace());
    let lm2 = ctx.client_in(&ns2).await;
    assert_eq!(lm2.namespace(), ns2);
    let g1 = ctx.lm.lock("same").acquire().await.unwrap();
    let g2 = lm2.lock("same").wait(Wait::No).acquire().await.unwrap();
    let _extra = lm2.lock("only-2").acquire().await.unwrap();
    let page = ctx.lm.list(ListQuery::all()).await.unwrap();
    assert_eq!(page.items.len(), 1);
    assert!(ctx.lm.inspect("only-2").await.unwrap().is_none());
    assert!(!ctx.lm.clear(["only-2"]).await.unwrap()[0].1);
    assert_eq!(lm2.reset_all().await.unwrap(), 2);
    assert_eq!(ctx.lm.purge_expired().await.unwrap(), 0);
    assert!(g1.is_held());
    assert_eq!(
        ctx.lm.inspect("same").await.unwrap().unwrap().fence,
        Some(g1.fence())
    );
    assert_err(g2.release().await, "released by reset", Error::is_not_held);
    g1.release().await.unwrap();
}
