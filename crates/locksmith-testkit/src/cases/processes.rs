//! Cross-process cases: the store shared by client processes (the `locksmith-test-helper`
//! binary, spawned by [`Ctx::spawn_helper`]). Gated on `cross_process` (and `persistent` for
//! a restart).

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use locksmith::{Locksmith, Renew, Wait};

use super::{SOON, eventually, ms};
use crate::{Cap, Ctx, Helper};

/// How long a helper process may take to start and connect on a slow machine.
const START: Duration = Duration::from_secs(10);

/// Microseconds since the Unix epoch (the helpers print the same clock).
fn unix_micros() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_micros()
}

fn parse<T: std::str::FromStr>(words: &[String], i: usize, what: &str) -> T {
    words
        .get(i)
        .and_then(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("{what}: unexpected helper output {words:?}"))
}

/// The helper's critical section, done in this process: read, sleep, write the counter
/// file, append the fence.
async fn file_critical_section(counter: &Path, fences: &Path, fence: u64) {
    let text = std::fs::read_to_string(counter).expect("read counter");
    let value: u64 = text.trim().parse().unwrap_or(0);
    tokio::time::sleep(ms(1)).await;
    std::fs::write(counter, format!("{}\n", value + 1)).expect("write counter");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(fences)
        .expect("open fences");
    writeln!(file, "{fence}").expect("append fence");
}

/// Three client processes and two in-process clients spin on `try_acquire` and increment a
/// counter file without atomicity under the lock: no update is lost, and the fences written
/// inside the critical sections strictly increase.
pub async fn spin_try_acquire_across_processes(ctx: Ctx) {
    if !ctx.requires(&[Cap::CrossProcess]) {
        return;
    }
    const PROCS: usize = 3;
    const LOCAL: usize = 2;
    const M: u64 = 12;
    let dir = tempfile::tempdir().expect("temp dir");
    let counter = dir.path().join("counter");
    let fences = dir.path().join("fences");
    std::fs::write(&counter, "0\n").unwrap();
    let url = ctx.url();
    let (c, f) = (counter.to_str().unwrap(), fences.to_str().unwrap());
    let m = M.to_string();
    let mut helpers: Vec<Helper> = (0..PROCS)
        .map(|_| ctx.spawn_helper(&["spin", &url, "xspin", c, f, &m]))
        .collect();
    let mut locals = Vec::new();
    for _ in 0..LOCAL {
        let lm = ctx.client().await;
        let (counter, fences) = (counter.clone(), fences.clone());
        locals.push(tokio::spawn(async move {
            let mut done = 0;
            while done < M {
                let tried = lm
                    .lock("xspin")
                    .ttl(Duration::from_secs(10))
                    .renew(Renew::Off)
                    .try_acquire()
                    .await
                    .expect("try_acquire");
                let Some(g) = tried else {
                    tokio::time::sleep(Duration::from_micros(500)).await;
                    continue;
                };
                file_critical_section(&counter, &fences, g.fence()).await;
                g.release().await.expect("release");
                done += 1;
            }
        }));
    }
    for h in &mut helpers {
        h.expect("done", Duration::from_secs(40)).await;
    }
    for t in locals {
        t.await.unwrap();
    }
    let total: u64 = std::fs::read_to_string(&counter)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let expected = (PROCS + LOCAL) as u64 * M;
    assert_eq!(
        total,
        expected,
        "{} updates lost across processes",
        expected - total
    );
    let written: Vec<u64> = std::fs::read_to_string(&fences)
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert_eq!(written.len() as u64, expected);
    if ctx.caps().fencing {
        for w in written.windows(2) {
            assert!(
                w[1] > w[0],
                "fences out of critical-section order: {written:?}"
            );
        }
    }
}

/// A waiter in another process acquires soon after a release here (never before it), and
/// a waiter here acquires soon after a release in another process.
pub async fn wake_across_processes(ctx: Ctx) {
    if !ctx.requires(&[Cap::CrossProcess]) {
        return;
    }
    let url = ctx.url();
    // there: waits; here: releases
    let g = ctx
        .lm
        .lock("xw")
        .ttl(Duration::from_secs(30))
        .renew(Renew::Off)
        .acquire()
        .await
        .unwrap();
    let mut waiter = ctx.spawn_helper(&["wait", &url, "xw", "20000"]);
    waiter.expect("waiting", START).await;
    tokio::time::sleep(ms(400)).await;
    let first_fence = g.fence();
    let released = unix_micros();
    g.release().await.unwrap();
    let words = waiter.expect("acquired", SOON).await;
    let fence: u64 = parse(&words, 0, "fence");
    let at: u128 = parse(&words, 1, "time");
    assert!(
        at >= released,
        "the other process acquired before the release"
    );
    let after = Duration::from_micros((at - released) as u64);
    assert!(
        after < ms(700),
        "the other process acquired {after:?} after the release"
    );
    if ctx.caps().fencing {
        assert!(fence > first_fence);
    }
    waiter.finish(SOON).await;

    // there: holds 500 ms, then releases; here: waits
    let mut holder = ctx.spawn_helper(&["hold-for", &url, "xw", "500"]);
    holder.expect("acquired", START).await;
    let got = ctx
        .lm
        .lock("xw")
        .wait(Wait::For(SOON * 2))
        .acquire()
        .await
        .expect("acquired after the other process released");
    let got_at = unix_micros();
    let words = holder.expect("released", SOON).await;
    let released: u128 = parse(&words, 0, "time");
    let after = Duration::from_micros(got_at.saturating_sub(released) as u64);
    assert!(
        after < ms(700),
        "acquired {after:?} after the other process released"
    );
    got.release().await.unwrap();
    holder.finish(SOON).await;
}

/// A holder process killed with SIGKILL (no release runs) keeps its lock until its lease
/// ends — never taken over before — and it is taken over soon after.
pub async fn sigkilled_holder_taken_over_after_ttl(ctx: Ctx) {
    if !ctx.requires(&[Cap::CrossProcess]) {
        return;
    }
    let ttl = ms(2500);
    let url = ctx.url();
    let spawned = Instant::now();
    let mut holder = ctx.spawn_helper(&["hold", &url, "xk", "2500"]);
    let words = holder.expect("acquired", START).await;
    let fence: u64 = parse(&words, 0, "fence");
    let pid = holder.pid();
    holder.kill().await;
    let killed = spawned.elapsed();
    if killed >= ttl {
        eprintln!("SKIPPED: the helper took {killed:?} to start, longer than its lease");
        return;
    }
    let info = ctx
        .lm
        .inspect("xk")
        .await
        .unwrap()
        .expect("the dead holder's row");
    assert!(!info.expired, "the lease ended at the kill");
    if ctx.caps().holder_metadata {
        assert_eq!(info.pid, Some(pid));
    }
    if ctx.caps().fencing {
        assert_eq!(info.fence, Some(fence));
    }
    let got = loop {
        let tried = ctx
            .lm
            .lock("xk")
            .ttl(Duration::from_secs(30))
            .renew(Renew::Off)
            .try_acquire()
            .await
            .unwrap();
        if let Some(g) = tried {
            break g;
        }
        assert!(
            spawned.elapsed() < ttl + SOON,
            "the dead holder's lock was never taken over"
        );
        tokio::time::sleep(ms(20)).await;
    };
    let at = spawned.elapsed();
    assert!(
        at >= ttl,
        "taken over {at:?} after the holder started, inside its {ttl:?} lease"
    );
    if ctx.caps().fencing {
        assert!(got.fence() > fence);
    }
    got.release().await.unwrap();
}

async fn fences_of(mut helper: Helper) -> Vec<u64> {
    let mut fences = Vec::new();
    loop {
        let line = helper.line(Duration::from_secs(30)).await;
        match line.split_once(' ') {
            Some(("fence", f)) => fences.push(f.parse().expect("fence")),
            _ if line == "done" => break,
            _ => panic!("unexpected helper output {line:?}"),
        }
    }
    helper.finish(SOON).await;
    fences
}

/// Fences strictly increase per process and across processes, across `reset_all` and a
/// restart of the store (every client gone, new ones connecting).
pub async fn fences_across_processes_and_restart(ctx: Ctx) {
    if !ctx.requires(&[Cap::CrossProcess, Cap::Persistent, Cap::Fencing]) {
        return;
    }
    let url = ctx.url();
    let a = ctx.spawn_helper(&["cycle", &url, "xf", "15"]);
    let b = ctx.spawn_helper(&["cycle", &url, "xf", "15"]);
    let (fa, fb) = tokio::join!(fences_of(a), fences_of(b));
    for fences in [&fa, &fb] {
        assert_eq!(fences.len(), 15);
        for w in fences.windows(2) {
            assert!(
                w[1] > w[0],
                "fences of one process not increasing: {fences:?}"
            );
        }
    }
    let mut all: Vec<u64> = fa.iter().chain(&fb).copied().collect();
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), 30, "two processes got the same fence");
    let mut last = *all.last().unwrap();
    let here = ctx.lm.lock("xf").acquire().await.unwrap();
    assert!(here.fence() > last);
    last = here.fence();
    here.release().await.unwrap();
    ctx.lm.reset_all().await.unwrap();
    if !ctx.restart().await {
        eprintln!("SKIPPED: conformance::{}: no restart hook", ctx.store());
        return;
    }
    let c = ctx.spawn_helper(&["cycle", &url, "xf", "5"]);
    let fc = fences_of(c).await;
    assert!(
        fc[0] > last,
        "fence {} after reset and restart is not above {last}",
        fc[0]
    );
    let fresh = Locksmith::connect(&url).await.unwrap();
    let g = fresh.lock("xf").acquire().await.unwrap();
    assert!(g.fence() > *fc.last().unwrap());
    g.release().await.unwrap();
}

/// Two processes take turns on one lock as fast as they can; a waiter in a third process,
/// which can only poll, still gets the lock within 2 s (cross-process fairness).
pub async fn polling_waiter_not_starved(ctx: Ctx) {
    if !ctx.requires(&[Cap::CrossProcess, Cap::Polling]) {
        return;
    }
    let url = ctx.url();
    let mut a = ctx.spawn_helper(&["churn", &url, "xs", "30", "15000"]);
    let _b = ctx.spawn_helper(&["churn", &url, "xs", "30", "15000"]);
    a.expect("started", START).await;
    tokio::time::sleep(ms(300)).await;
    let start = Instant::now();
    let got = ctx
        .lm
        .lock("xs")
        .ttl(Duration::from_secs(10))
        .renew(Renew::Off)
        .wait(Wait::For(Duration::from_secs(6)))
        .acquire()
        .await;
    let waited = start.elapsed();
    eprintln!(
        "conformance::{}: the polling waiter waited {waited:?}",
        ctx.store()
    );
    let g = got.unwrap_or_else(|e| panic!("the polling waiter starved: {e}"));
    assert!(
        waited < Duration::from_secs(2),
        "the polling waiter waited {waited:?} (bound: 2 s)"
    );
    g.release().await.unwrap();
}

/// A waiter that has waited long keeps the next grant through the holder's release: a
/// process that starts trying as fast as it can just before the release still comes after
/// it. (A store that dropped the reservation with the released row would hand the lock to
/// whichever process tried first after the release; the fast one wins that race.)
///
/// Only where waiters in other processes find a release by polling at the design's cap
/// (≤ 25 ms), which is where the reservation is the fairness mechanism. A store that wakes
/// them through the store itself and re-polls only as a fallback (python-redis-lock's
/// signal list, re-polled every few seconds) wakes every waiter at once and promises no
/// order between them.
pub async fn long_waiter_keeps_its_turn_through_a_release(ctx: Ctx) {
    if !ctx.requires(&[Cap::CrossProcess, Cap::Polling]) {
        return;
    }
    if ctx.caps().poll_interval.is_some_and(|p| p > ms(25)) {
        eprintln!(
            "SKIPPED: conformance::{}: waiters in other processes are woken by the store (polling is a fallback), so no reservation orders them",
            ctx.store()
        );
        return;
    }
    let url = ctx.url();
    let mut holder = ctx.spawn_helper(&["hold-for", &url, "xr", "1200"]);
    holder.expect("acquired", START).await;
    let lm = ctx.client().await;
    let waiter = tokio::spawn(async move {
        lm.lock("xr")
            .ttl(Duration::from_secs(10))
            .renew(Renew::Off)
            .wait(Wait::For(Duration::from_secs(20)))
            .acquire()
            .await
    });
    // Well past the 200 ms after which a waiter reserves the next grant.
    tokio::time::sleep(ms(500)).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let counter = dir.path().join("counter");
    let fences = dir.path().join("fences");
    std::fs::write(&counter, "0\n").unwrap();
    let (c, f) = (counter.to_str().unwrap(), fences.to_str().unwrap());
    let mut spinner = ctx.spawn_helper(&["spin", &url, "xr", c, f, "1"]);
    let got = waiter
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("the long waiter did not get the lock: {e}"));
    let spun = std::fs::read_to_string(&counter).unwrap();
    assert_eq!(
        spun.trim(),
        "0",
        "a process that began trying after the long waiter had reserved the next grant got the lock first: the holder's release dropped the waiter's reservation"
    );
    got.release().await.unwrap();
    spinner.expect("done", Duration::from_secs(20)).await;
    holder.finish(SOON).await;
}

/// A store that pushes grants never hands a lock to a waiter whose process died while it
/// was queued: the release frees the lock (or hands it to a live waiter) instead of leaving
/// it to a dead holder for a whole lease.
pub async fn dead_waiter_process_never_granted(ctx: Ctx) {
    if !ctx.requires(&[Cap::PushedGrants, Cap::CrossProcess]) {
        return;
    }
    let url = ctx.url();
    let g = ctx.lm.lock("dw").acquire().await.unwrap();
    let mut waiter = ctx.spawn_helper(&["wait", &url, "dw", "30000"]);
    waiter.expect("waiting", START).await;
    // Let it try, queue and subscribe.
    tokio::time::sleep(ms(500)).await;
    waiter.kill().await;
    tokio::time::sleep(ms(100)).await;
    g.release().await.unwrap();
    eventually("the lock is free after its queued waiter died", || async {
        ctx.lm.inspect("dw").await.unwrap().is_none()
    })
    .await;
}
