//! The contract a networked store must keep where the in-process queue cannot hide a
//! mistake: atomic grants under spinning clients, racing takeovers, wake-ups and re-polls,
//! exact names and prefixes, namespace boundaries, TTL rounding, drop without a runtime.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use locksmith::{ListQuery, Locksmith, Renew, Wait};

use super::{SOON, eventually, eventually_free, ms};
use crate::{Cap, Ctx};

/// Spins on `try_acquire` until it gets `name` (10 s lease, no renewal).
async fn spin(lm: &Locksmith, name: &str) -> locksmith::LockGuard {
    loop {
        let tried = lm
            .lock(name)
            .ttl(Duration::from_secs(10))
            .renew(Renew::Off)
            .try_acquire()
            .await
            .expect("try_acquire");
        match tried {
            Some(g) => return g,
            None => tokio::time::sleep(Duration::from_micros(500)).await,
        }
    }
}

/// Asserts `fences` strictly increase, in the order they were recorded.
#[track_caller]
fn assert_increasing(fences: &[u64], what: &str) {
    for (i, w) in fences.windows(2).enumerate() {
        assert!(
            w[1] > w[0],
            "{what}: fence #{} ({}) not above #{i} ({}) in critical-section order",
            i + 1,
            w[1],
            w[0]
        );
    }
}

/// Eight clients (separate connections, no waiting queue to help) spin on `try_acquire`
/// and do a non-atomic read / sleep / write of a counter under the lock: no update is lost,
/// and fences increase in the order of the critical sections.
pub async fn spin_try_acquire_no_lost_updates(ctx: Ctx) {
    const TASKS: u64 = 8;
    const M: u64 = 15;
    // Not atomic on purpose: a read and a later write with a sleep between.
    let counter = Arc::new(Mutex::new(0_u64));
    let fences = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let lm = ctx.client().await;
        let (counter, fences) = (counter.clone(), fences.clone());
        tasks.push(tokio::spawn(async move {
            let mut taken_away = 0;
            for _ in 0..M {
                let g = spin(&lm, "spin").await;
                fences.lock().unwrap().push(g.fence());
                let seen = *counter.lock().unwrap();
                tokio::time::sleep(ms(1)).await;
                *counter.lock().unwrap() = seen + 1;
                match g.release().await {
                    Ok(()) => {}
                    Err(e) if e.is_not_held() => taken_away += 1,
                    Err(e) => panic!("release: {e}"),
                }
            }
            taken_away
        }));
    }
    let mut taken_away = 0;
    for t in tasks {
        taken_away += t.await.unwrap();
    }
    let total = *counter.lock().unwrap();
    assert_eq!(
        total,
        TASKS * M,
        "{} updates lost: two clients held the lock at once",
        TASKS * M - total
    );
    assert_eq!(
        taken_away, 0,
        "{taken_away} locks were taken away from a live holder"
    );
    if ctx.caps().fencing {
        assert_increasing(&fences.lock().unwrap(), "spinning clients");
    }
}

/// Eight clients race to take over one expired lock, five times: exactly one wins each
/// time, with a fence above the expired holder's.
pub async fn expired_takeover_race_one_winner(ctx: Ctx) {
    // Short leases, scaled for stores that keep whole seconds.
    let ms = super::scaled(&ctx);
    const CLIENTS: usize = 8;
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        clients.push(ctx.client().await);
    }
    for round in 0..5 {
        let old = ctx
            .lm
            .lock("race")
            .ttl(ms(60))
            .renew(Renew::Off)
            .acquire()
            .await
            .unwrap();
        let old_fence = old.fence();
        let _ = old.leak();
        tokio::time::sleep(ms(100)).await;
        let start = Arc::new(tokio::sync::Barrier::new(CLIENTS));
        let racers: Vec<_> = clients
            .iter()
            .cloned()
            .map(|lm| {
                let start = start.clone();
                tokio::spawn(async move {
                    start.wait().await;
                    lm.lock("race")
                        .ttl(Duration::from_secs(10))
                        .renew(Renew::Off)
                        .try_acquire()
                        .await
                        .expect("try_acquire")
                })
            })
            .collect();
        let mut winners = Vec::new();
        for r in racers {
            if let Some(g) = r.await.unwrap() {
                winners.push(g);
            }
        }
        assert_eq!(
            winners.len(),
            1,
            "round {round}: {} clients took over the same expired lock",
            winners.len()
        );
        let winner = winners.pop().unwrap();
        if ctx.caps().fencing {
            assert!(winner.fence() > old_fence, "round {round}: fence went back");
            let info = ctx.lm.inspect("race").await.unwrap().unwrap();
            assert_eq!(info.fence, Some(winner.fence()));
        }
        winner.release().await.unwrap();
    }
}

/// A waiter is woken when the holder shortens its lease, and gets the lock soon after the
/// new (short) lease ends — never before it, and not at the old one.
pub async fn waiter_woken_when_lease_shortened(ctx: Ctx) {
    // Short leases, scaled for stores that keep whole seconds.
    let ms = super::scaled(&ctx);
    let other = ctx.client().await;
    let g = ctx
        .lm
        .lock("short")
        .ttl(Duration::from_secs(30))
        .renew(Renew::Off)
        .acquire()
        .await
        .unwrap();
    let waiter = tokio::spawn(async move {
        let g = other
            .lock("short")
            .wait(Wait::For(SOON * 2 + ms(1000)))
            .acquire()
            .await;
        (Instant::now(), g.map(|g| g.leak()))
    });
    tokio::time::sleep(ms(300)).await;
    assert!(!waiter.is_finished());
    let shortened = Instant::now();
    g.extend(ms(300)).await.unwrap();
    let (got_at, got) = tokio::time::timeout(SOON * 2 + ms(1000), waiter)
        .await
        .expect("waiter done")
        .unwrap();
    got.expect("waiter got the lock");
    let after = got_at.duration_since(shortened);
    assert!(after >= ms(300), "granted {after:?} into a 300 ms lease");
    assert!(
        after < ms(300) + ms(700),
        "granted {after:?} after shortening to 300 ms: the waiter was not woken"
    );
}

/// A waiter on a lock whose holder went away gets it at the holder's expiry: never before,
/// and within a bounded re-poll after it.
pub async fn repoll_at_holder_expiry_bounded(ctx: Ctx) {
    let other = ctx.client().await;
    let asked = Instant::now();
    let _ = ctx
        .lm
        .lock("exp")
        .ttl(ms(700))
        .renew(Renew::Off)
        .acquire()
        .await
        .unwrap()
        .leak();
    let got = other
        .lock("exp")
        .wait(Wait::For(SOON))
        .acquire()
        .await
        .expect("acquired after the expiry");
    let at = asked.elapsed();
    assert!(at >= ms(700), "granted at {at:?}, inside the 700 ms lease");
    assert!(
        at < ms(700) + ms(500),
        "granted at {at:?}: the re-poll at the holder's expiry came late"
    );
    got.release().await.unwrap();
}

/// `held_for` follows real time: between what elapsed since the grant returned and since
/// it was asked for.
pub async fn held_for_tracks_real_time(ctx: Ctx) {
    if !ctx.requires(&[Cap::HolderMetadata]) {
        return;
    }
    let asked = Instant::now();
    let g = ctx.lm.lock("hf").acquire().await.unwrap();
    let granted = Instant::now();
    tokio::time::sleep(ms(400)).await;
    let inspect_start = Instant::now();
    let info = ctx.lm.inspect("hf").await.unwrap().unwrap();
    let inspect_end = Instant::now();
    let held = info.held_for.expect("held_for recorded");
    let low = inspect_start.duration_since(granted);
    let high = inspect_end.duration_since(asked);
    // one millisecond of slack for stores that keep times to the millisecond
    assert!(
        held + ms(1) >= low && held <= high + ms(1),
        "held_for {held:?} outside [{low:?}, {high:?}]"
    );
    g.release().await.unwrap();
}

/// Names are bytes: case, a trailing space and Unicode normalisation (é as U+00E9 vs
/// e + U+0301) make different locks.
pub async fn names_differ_by_case_space_and_normalisation(ctx: Ctx) {
    let groups: [&[&str]; 3] = [
        &["Lock", "lock", "LOCK"],
        &["job", "job ", " job"],
        &["caf\u{e9}", "cafe\u{301}"],
    ];
    for group in groups {
        let mut guards = Vec::new();
        for name in group {
            let g = ctx
                .lm
                .lock(*name)
                .try_acquire()
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("{name:?} was taken by a lock of another name"));
            guards.push(g);
        }
        for (name, g) in group.iter().zip(&guards) {
            let info = ctx.lm.inspect(name).await.unwrap().expect("row");
            assert_eq!(info.name, *name, "inspect({name:?}) shows another lock");
            if ctx.caps().fencing {
                assert_eq!(info.fence, Some(g.fence()), "{name:?}");
            }
        }
        // releasing one leaves the others held
        let mut guards = guards.into_iter();
        guards.next().unwrap().release().await.unwrap();
        for name in &group[1..] {
            assert!(ctx.lm.inspect(name).await.unwrap().is_some(), "{name:?}");
        }
        for g in guards {
            g.release().await.unwrap();
        }
    }
}

/// `list` prefixes are literal (`%`, `_`, `*`, `[` are no wildcards) and names come in
/// byte order, non-ASCII included, across pages.
pub async fn list_prefix_special_characters(ctx: Ctx) {
    if !ctx.requires(&[Cap::OrderedList]) {
        return;
    }
    let names = [
        "100%",
        "100%a",
        "1000",
        "a_b",
        "axb",
        "a*",
        "a*b",
        "ab",
        "[",
        "[x]",
        "x",
        "e1",
        "\u{e9}1",
        "\u{e9}2",
        "\u{e8}",
        "z",
        "~",
        "\u{1f512}",
    ];
    ctx.lm
        .set_locks(names, locksmith::SetPolicy::default())
        .await
        .unwrap();
    let listed = |prefix: &'static str| {
        let lm = ctx.lm.clone();
        async move {
            let page = lm.list(ListQuery::prefix(prefix).limit(100)).await.unwrap();
            page.items.into_iter().map(|i| i.name).collect::<Vec<_>>()
        }
    };
    assert_eq!(listed("100%").await, ["100%", "100%a"]);
    assert_eq!(listed("a_").await, ["a_b"]);
    assert_eq!(listed("a*").await, ["a*", "a*b"]);
    assert_eq!(listed("[").await, ["[", "[x]"]);
    assert_eq!(listed("\u{e9}").await, ["\u{e9}1", "\u{e9}2"]);
    assert!(listed("%").await.is_empty());
    assert!(listed("_").await.is_empty());
    // all of it, two at a time, in byte order
    let mut expected: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    expected.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    let mut seen = Vec::new();
    let mut query = ListQuery::all().limit(2);
    loop {
        let page = ctx.lm.list(query.clone()).await.unwrap();
        seen.extend(page.items.into_iter().map(|i| i.name));
        match page.next {
            Some(next) => query = query.after(next),
            None => break,
        }
    }
    assert_eq!(seen, expected, "not in byte order");
}

/// `reset_all` on a namespace leaves a namespace it is a prefix of alone (`ns` vs `nsb`).
pub async fn reset_all_prefix_namespace_isolated(ctx: Ctx) {
    if !ctx.requires(&[Cap::Namespaces]) {
        return;
    }
    let longer = ctx.client_in(&format!("{}b", ctx.namespace())).await;
    let _short = ctx.lm.lock("x").acquire().await.unwrap();
    let long = longer.lock("x").acquire().await.unwrap();
    let _also = longer.lock("y").acquire().await.unwrap();
    assert_eq!(ctx.lm.reset_all().await.unwrap(), 1);
    assert!(long.is_held());
    let info = longer.inspect("x").await.unwrap().expect("kept");
    if ctx.caps().fencing {
        assert_eq!(info.fence, Some(long.fence()));
    }
    assert_eq!(longer.list(ListQuery::all()).await.unwrap().items.len(), 2);
    assert_eq!(longer.reset_all().await.unwrap(), 2);
    assert!(ctx.lm.inspect("x").await.unwrap().is_none());
}

/// A namespace and a name never run together: `ns:a:b` + `c` and `ns:a` + `b:c` are
/// different locks, as are `ns:a/b` + `c` and `ns:a` + `b/c`.
pub async fn namespace_name_split_isolated(ctx: Ctx) {
    if !ctx.requires(&[Cap::Namespaces]) {
        return;
    }
    let ns = ctx.namespace();
    for sep in [":", "/"] {
        let one = ctx.client_in(&format!("{ns}{sep}a{sep}b")).await;
        let two = ctx.client_in(&format!("{ns}{sep}a")).await;
        let name_two = format!("b{sep}c");
        let g1 = one.lock("c").try_acquire().await.unwrap().expect("free");
        let g2 = two
            .lock(name_two.as_str())
            .try_acquire()
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{ns}{sep}a + b{sep}c collides with {ns}{sep}a{sep}b + c"));
        assert!(two.inspect("c").await.unwrap().is_none());
        assert!(one.inspect(&name_two).await.unwrap().is_none());
        let listed = two.list(ListQuery::all()).await.unwrap();
        let names: Vec<_> = listed.items.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, [name_two.as_str()]);
        assert_eq!(two.reset_all().await.unwrap(), 1);
        assert!(g1.is_held());
        assert!(one.inspect("c").await.unwrap().is_some());
        assert!(g2.release().await.unwrap_err().is_not_held());
        g1.release().await.unwrap();
    }
}

/// Fractional TTLs (1.5 s, 50.5 ms, 2.0005 s): the store's lease never ends before the
/// guard's local deadline, so the store's remaining lease is never shorter than the
/// guard's `expires_in` read after it. A TTL under `MIN_TTL` (1.5 ms) is refused.
pub async fn fractional_ttls_never_shorter_in_store(ctx: Ctx) {
    super::assert_invalid_option(
        ctx.lm
            .lock("frac")
            .ttl(Duration::from_micros(1_500))
            .acquire()
            .await,
        "ttl",
    );
    for (i, ttl) in [
        Duration::from_micros(1_500_000),
        Duration::from_micros(50_500),
        Duration::from_micros(2_000_500),
    ]
    .into_iter()
    .enumerate()
    {
        let name = format!("frac{i}");
        let g = ctx
            .lm
            .lock(name.as_str())
            .ttl(ttl)
            .renew(Renew::Off)
            .acquire()
            .await
            .unwrap();
        for _ in 0..3 {
            let info = ctx.lm.inspect(&name).await.unwrap();
            let inspected = Instant::now();
            let held = g.is_held();
            let guard_left = g.expires_in().unwrap_or(Duration::ZERO);
            let since = inspected.elapsed();
            if held {
                let info = info.expect("the guard holds a lock the store does not have");
                assert!(
                    !info.expired,
                    "{ttl:?}: expired in the store, held by the guard"
                );
                let store_left = info.expires_in.expect("expires");
                // PTTL is whole milliseconds, rounded down: allow that one millisecond.
                assert!(
                    guard_left + since <= store_left + Duration::from_millis(1),
                    "{ttl:?}: guard believes {guard_left:?} (+{since:?}) but the store has {store_left:?}"
                );
            }
            tokio::time::sleep(ttl / 4).await;
        }
        drop(g);
        eventually_free(&ctx.lm, &name).await;
    }
}

/// Two `connect`s to one store share this process's waiting queue (same `identity()`):
/// waiters from both are served in arrival order.
pub async fn fifo_across_connects(ctx: Ctx) {
    let a = ctx.client().await;
    let b = ctx.client().await;
    assert_eq!(
        a.store().identity(),
        b.store().identity(),
        "two connects to one store report different identities"
    );
    let g = ctx.lm.lock("fifo2").acquire().await.unwrap();
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for i in 0..6 {
        let lm = if i % 2 == 0 { a.clone() } else { b.clone() };
        let order = order.clone();
        tasks.push(tokio::spawn(async move {
            let g = lm.lock("fifo2").acquire().await.unwrap();
            order.lock().unwrap().push(i);
            tokio::time::sleep(ms(5)).await;
            g.release().await.unwrap();
        }));
        let seen_by = ctx.lm.clone();
        eventually("waiter queued", || {
            let lm = seen_by.clone();
            async move { lm.local_waiters("fifo2").unwrap() == i + 1 }
        })
        .await;
    }
    g.release().await.unwrap();
    for t in tasks {
        tokio::time::timeout(SOON, t).await.unwrap().unwrap();
    }
    assert_eq!(*order.lock().unwrap(), [0, 1, 2, 3, 4, 5]);
}

/// A guard dropped after the runtime it was acquired on shut down does not panic, and the
/// lock is released (or its lease ends).
pub async fn drop_after_runtime_shutdown(ctx: Ctx) {
    let other_ctx = ctx.clone();
    let outcome = tokio::task::spawn_blocking(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let guard = rt.block_on(async {
            let lm = other_ctx.client().await;
            lm.lock("orphan")
                .ttl(ms(800))
                .renew(Renew::Off)
                .acquire()
                .await
                .expect("acquire")
        });
        drop(rt);
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(guard)))
    })
    .await
    .unwrap();
    assert!(outcome.is_ok(), "dropping the guard panicked");
    // released at once, or at the latest when its 800 ms lease ends
    let start = Instant::now();
    loop {
        let free = match ctx.lm.inspect("orphan").await.unwrap() {
            None => true,
            Some(info) => info.expired,
        };
        if free {
            break;
        }
        assert!(start.elapsed() < ms(800) + SOON, "lock never freed");
        tokio::time::sleep(ms(20)).await;
    }
}

/// Fences keep increasing when the store's clock steps back an hour — across release,
/// expiry, `purge_expired` and `reset_all` (which remove the row that knew the last fence)
/// — and when it steps forward again. Needs the target's clock hook.
pub async fn fences_increase_across_clock_steps(ctx: Ctx) {
    if !ctx.requires(&[Cap::Fencing]) {
        return;
    }
    const HOUR: i64 = 3_600_000_000;
    let lm = &ctx.lm;
    let mut fences = Vec::new();
    let g = lm.lock("clk").acquire().await.unwrap();
    fences.push(g.fence());
    g.release().await.unwrap();
    if !ctx.step_clock(-HOUR) {
        eprintln!(
            "SKIPPED: conformance::{}: no clock hook for this target",
            ctx.store()
        );
        return;
    }
    let g = lm.lock("clk").acquire().await.unwrap();
    fences.push(g.fence());
    g.release().await.unwrap();
    let g = lm
        .lock("clk")
        .ttl(ms(50))
        .renew(Renew::Off)
        .acquire()
        .await
        .unwrap();
    fences.push(g.fence());
    let _ = g.leak();
    tokio::time::sleep(ms(100)).await;
    assert_eq!(lm.purge_expired().await.unwrap(), 1);
    let g = lm.lock("clk").acquire().await.unwrap();
    fences.push(g.fence());
    let _ = g.leak();
    assert_eq!(lm.reset_all().await.unwrap(), 1);
    let g = lm.lock("clk").acquire().await.unwrap();
    fences.push(g.fence());
    g.release().await.unwrap();
    ctx.step_clock(2 * HOUR);
    let g = lm.lock("clk").acquire().await.unwrap();
    fences.push(g.fence());
    g.release().await.unwrap();
    ctx.step_clock(-HOUR);
    assert_increasing(&fences, "clock steps");
}
