//! Hybrid fences on the memory and SQLite stores: `fence = max(last + 1, clock µs)`.
//!
//! The clocks are stepped with the stores' test hooks (`step_clock`), so "the clock stepped
//! back an hour" is exact, not simulated by sleeping.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use locksmith::store::{Claim, Grant, Store, memory, sqlite};
use locksmith::{LockName, Namespace, Token};

const HOUR_US: i64 = 3_600_000_000;

fn wall_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_micros() as u64
}

fn claim(name: &str, ttl: Duration) -> Claim {
    Claim::new(
        LockName::new(name).expect("name"),
        Token::new(),
        "fences",
        "host",
        std::process::id(),
        Some(ttl),
    )
}

/// Takes `name` (it must be free) and returns the fence, releasing it again.
async fn fence_of(store: &dyn Store, name: &str) -> u64 {
    let ns = Namespace::default();
    let c = claim(name, Duration::from_secs(60));
    let fence = match store.try_acquire(&ns, &c).await.expect("try_acquire") {
        Grant::Acquired { fence } => fence,
        other => panic!("{name} should be free, got {other:?}"),
    };
    store
        .release(&ns, &c.name, &c.token, None)
        .await
        .expect("release");
    fence
}

/// Takes `name` with a 1 ms lease and leaves it to expire.
async fn leave_expiring(store: &dyn Store, name: &str) -> u64 {
    let c = claim(name, Duration::from_millis(1));
    match store
        .try_acquire(&Namespace::default(), &c)
        .await
        .expect("try_acquire")
    {
        Grant::Acquired { fence } => fence,
        other => panic!("{name} should be free, got {other:?}"),
    }
}

fn assert_clock_like(fence: u64, before: u64) {
    // The fence is the store clock in µs (or just above it), below 2^53.
    assert!(fence >= before, "fence {fence} below the clock {before}");
    assert!(
        fence < before + 60_000_000,
        "fence {fence} far above the clock {before}"
    );
    assert!(fence < 1 << 53, "fence {fence} is not exact in JSON");
}

#[tokio::test]
async fn memory_fences_follow_the_clock_and_survive_steps_back() {
    let name = format!("fences-{}", uuid::Uuid::new_v4());
    let store = memory::MemoryStore::named(&name);
    let before = wall_micros();
    let f1 = fence_of(&*store, "a").await;
    assert_clock_like(f1, before);

    assert!(memory::step_clock(&name, -HOUR_US));
    let f2 = fence_of(&*store, "a").await;
    assert!(
        f2 > f1,
        "after the clock stepped back an hour: {f2} !> {f1}"
    );
    // Another name shares the store-wide counter.
    let f3 = fence_of(&*store, "b").await;
    assert!(f3 > f2);

    // Across expiry + purge and reset_all, still with the clock an hour (then two) back.
    let f4 = leave_expiring(&*store, "a").await;
    assert!(f4 > f3);
    assert!(memory::step_clock(&name, 10_000)); // the 1 ms lease is over
    assert_eq!(store.purge_expired(&Namespace::default()).await.unwrap(), 1);
    let f5 = leave_expiring(&*store, "a").await;
    assert!(f5 > f4, "after purge: {f5} !> {f4}");
    assert!(store.reset_all(&Namespace::default()).await.unwrap() >= 1);
    assert!(memory::step_clock(&name, -HOUR_US));
    let f6 = fence_of(&*store, "a").await;
    assert!(
        f6 > f5,
        "after reset_all and another step back: {f6} !> {f5}"
    );

    // Back to real time: the clock takes over again.
    assert!(memory::step_clock(&name, 2 * HOUR_US - 10_000));
    let before = wall_micros();
    let f7 = fence_of(&*store, "a").await;
    assert!(f7 > f6);
    assert_clock_like(f7, before);
    assert!(!memory::step_clock("no-such-store-for-fences", 1));
}

#[tokio::test]
async fn memory_expiry_follows_the_stepped_clock() {
    let name = format!("fences-expiry-{}", uuid::Uuid::new_v4());
    let store = memory::MemoryStore::named(&name);
    let ns = Namespace::default();
    let holder = claim("x", Duration::from_secs(60));
    assert!(matches!(
        store.try_acquire(&ns, &holder).await.unwrap(),
        Grant::Acquired { .. }
    ));
    let other = claim("x", Duration::from_secs(60));
    assert!(matches!(
        store.try_acquire(&ns, &other).await.unwrap(),
        Grant::Held(_)
    ));
    assert!(memory::step_clock(&name, 61_000_000));
    assert!(
        matches!(
            store.try_acquire(&ns, &other).await.unwrap(),
            Grant::Acquired { .. }
        ),
        "a minute later (stepped) the lease is over"
    );
}

struct File {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

fn file() -> File {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("locks.db");
    File { _dir: dir, path }
}

async fn open(path: &std::path::Path) -> Arc<sqlite::SqliteStore> {
    sqlite::SqliteStore::open(path.to_path_buf())
        .await
        .expect("open")
}

#[tokio::test]
async fn sqlite_fences_survive_clock_steps_reopen_purge_reset_and_a_lost_counter() {
    let f = file();
    let store = open(&f.path).await;
    let before = wall_micros();
    let f1 = fence_of(&*store, "a").await;
    assert_clock_like(f1, before);

    sqlite::step_clock(&f.path, -HOUR_US);
    let f2 = fence_of(&*store, "a").await;
    assert!(
        f2 > f1,
        "after the clock stepped back an hour: {f2} !> {f2}"
    );

    // Reopen: every handle dropped; the worker is given time to end.
    drop(store);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let store = open(&f.path).await;
    let f3 = fence_of(&*store, "a").await;
    assert!(f3 > f2, "after reopening: {f3} !> {f2}");

    // Purge and reset.
    let f4 = leave_expiring(&*store, "a").await;
    assert!(f4 > f3);
    sqlite::step_clock(&f.path, 10_000);
    assert_eq!(store.purge_expired(&Namespace::default()).await.unwrap(), 1);
    let f5 = leave_expiring(&*store, "a").await;
    assert!(f5 > f4, "after purge: {f5} !> {f4}");
    assert!(store.reset_all(&Namespace::default()).await.unwrap() >= 1);
    sqlite::step_clock(&f.path, -HOUR_US);
    let f6 = fence_of(&*store, "a").await;
    assert!(
        f6 > f5,
        "after reset_all and another step back: {f6} !> {f5}"
    );

    // Back to the real clock, then lose the counter: the clock carries the fences.
    sqlite::step_clock(&f.path, 2 * HOUR_US - 10_000);
    let f7 = fence_of(&*store, "a").await;
    assert!(f7 > f6);
    let conn = rusqlite::Connection::open(&f.path).expect("rusqlite");
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    conn.execute("UPDATE locksmith_fence SET value = 0", [])
        .expect("zero the counter");
    let f8 = fence_of(&*store, "a").await;
    assert!(f8 > f7, "after the counter was zeroed: {f8} !> {f7}");
    conn.execute("DELETE FROM locksmith_fence", [])
        .expect("delete the counter");
    let before = wall_micros();
    let f9 = fence_of(&*store, "b").await;
    assert!(f9 > f8, "after the counter row was deleted: {f9} !> {f8}");
    assert_clock_like(f9, before);
    let counter: i64 = conn
        .query_row("SELECT value FROM locksmith_fence WHERE id = 0", [], |r| {
            r.get(0)
        })
        .expect("the counter row is back");
    assert_eq!(counter as u64, f9);
}

#[tokio::test]
async fn sqlite_step_clock_moves_expiry_and_is_per_file() {
    let (a, b) = (file(), file());
    let (sa, sb) = (open(&a.path).await, open(&b.path).await);
    let ns = Namespace::default();
    for store in [&sa, &sb] {
        let c = claim("x", Duration::from_secs(60));
        assert!(matches!(
            store.try_acquire(&ns, &c).await.unwrap(),
            Grant::Acquired { .. }
        ));
    }
    sqlite::step_clock(&a.path, 61_000_000);
    let late = claim("x", Duration::from_secs(60));
    assert!(
        matches!(
            sa.try_acquire(&ns, &late).await.unwrap(),
            Grant::Acquired { .. }
        ),
        "a's clock moved a minute on: its lease is over"
    );
    assert!(
        matches!(sb.try_acquire(&ns, &late).await.unwrap(), Grant::Held(_)),
        "b's clock did not move"
    );
}
