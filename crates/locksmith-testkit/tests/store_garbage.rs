//! Garbage: rows that expired more than `?retain=` ago are removed as the store writes, so
//! per-period names never grow a store without bound.
//!
//! Each test takes 10,000 per-period names (`report-<i>`, 1 ms leases) while stepping the
//! store's clock 1 ms per name (the `step_clock` test hooks), with `?retain=1s`: about the
//! last 1,000 names are within retention, everything older is garbage.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use locksmith::store::{Claim, Grant, Store, memory, sqlite};
use locksmith::{Expired, ListQuery, LockName, Locksmith, Namespace, Token};

const NAMES: usize = 10_000;
/// Names within retention at the end: `retain` / the clock step per name.
const WITHIN: usize = 1_000;

fn claim(name: &str, ttl: Duration) -> Claim {
    Claim::new(
        LockName::new(name).expect("name"),
        Token::new(),
        "garbage",
        "host",
        std::process::id(),
        Some(ttl),
    )
}

/// Takes `report-0` … `report-9999` (1 ms leases, left to expire), stepping the clock 1 ms
/// after each; `rows` counts the store's rows, sampled every 500 names; returns the largest.
async fn per_period_names(
    store: &dyn Store,
    ns: &Namespace,
    step: impl Fn(i64),
    rows: impl AsyncFn() -> usize,
) -> usize {
    let mut most = 0;
    for i in 0..NAMES {
        let c = claim(&format!("report-{i}"), Duration::from_millis(1));
        assert!(
            matches!(
                store.try_acquire(ns, &c).await.expect("try_acquire"),
                Grant::Acquired { .. }
            ),
            "report-{i} is a new name"
        );
        step(1_000);
        if i % 500 == 499 {
            most = most.max(rows().await);
        }
    }
    most
}

/// Every row of `ns`, expired ones included, through `list`.
async fn count_listed(store: &dyn Store, ns: &Namespace) -> usize {
    let mut n = 0;
    let mut query = ListQuery::all().expired(Expired::Include).limit(1000);
    loop {
        let page = store.list(ns, &query).await.expect("list");
        n += page.items.len();
        match page.next {
            Some(cursor) => query = query.after(cursor),
            None => return n,
        }
    }
}

async fn assert_retention(store: &dyn Store, ns: &Namespace) {
    let name = |i: usize| LockName::new(format!("report-{i}")).unwrap();
    let last = store
        .inspect(ns, &name(NAMES - 1))
        .await
        .unwrap()
        .expect("a row expired within retention is still visible");
    assert!(last.expired, "{last:?}");
    assert!(
        store.inspect(ns, &name(0)).await.unwrap().is_none(),
        "the oldest row is long past retention"
    );
}

#[tokio::test]
async fn memory_table_stays_bounded_with_per_period_names() {
    let name = format!("garbage-{}", uuid::Uuid::new_v4());
    let lm = Locksmith::connect(&format!("memory://{name}?retain=1s"))
        .await
        .expect("connect");
    let store = lm.store();
    let ns = Namespace::default();
    let most = per_period_names(
        &*store,
        &ns,
        |us| assert!(memory::step_clock(&name, us)),
        async || count_listed(&*store, &ns).await,
    )
    .await;
    eprintln!("memory: at most {most} rows while taking {NAMES} names");
    // The amortised sweep runs after as many calls as it left rows: at most about twice
    // the rows within retention.
    assert!(
        most <= 2 * WITHIN + 100,
        "{most} rows for {WITHIN} within retention"
    );
    let now = count_listed(&*store, &ns).await;
    assert!(
        (WITHIN / 5..=2 * WITHIN + 100).contains(&now),
        "{now} rows left"
    );
    assert_retention(&*store, &ns).await;
}

#[tokio::test]
async fn memory_retain_zero_removes_expired_rows_at_the_next_sweep() {
    let name = format!("garbage-zero-{}", uuid::Uuid::new_v4());
    let lm = Locksmith::connect(&format!("memory://{name}?retain=0s"))
        .await
        .unwrap();
    let store = lm.store();
    let ns = Namespace::default();
    for i in 0..200 {
        let c = claim(&format!("r-{i}"), Duration::from_millis(1));
        store.try_acquire(&ns, &c).await.unwrap();
        assert!(memory::step_clock(&name, 2_000));
    }
    // A sweep runs at least every 64 calls and leaves no expired row.
    assert!(count_listed(&*store, &ns).await <= 64);
}

#[tokio::test]
async fn default_retention_is_an_hour() {
    let name = format!("garbage-default-{}", uuid::Uuid::new_v4());
    let lm = Locksmith::connect(&format!("memory://{name}"))
        .await
        .unwrap();
    let store = lm.store();
    let ns = Namespace::default();
    let old = claim("old", Duration::from_millis(1));
    store.try_acquire(&ns, &old).await.unwrap();
    assert!(memory::step_clock(&name, 59 * 60 * 1_000_000));
    for i in 0..200 {
        store
            .try_acquire(&ns, &claim(&format!("n-{i}"), Duration::from_secs(60)))
            .await
            .unwrap();
    }
    let info = store.inspect(&ns, &old.name).await.unwrap();
    assert!(
        info.is_some_and(|i| i.expired),
        "59 minutes after expiry the row is kept"
    );
    assert!(memory::step_clock(&name, 2 * 60 * 1_000_000));
    for i in 0..200 {
        store
            .inspect(&ns, &LockName::new(format!("n-{i}")).unwrap())
            .await
            .unwrap();
    }
    assert!(
        store.inspect(&ns, &old.name).await.unwrap().is_none(),
        "61 minutes after expiry the row is gone"
    );
}

#[tokio::test]
async fn bad_retain_is_a_config_error_naming_it() {
    for url in ["memory://?retain=soon", "sqlite:///tmp/x.db?retain=-1s"] {
        let err = Locksmith::connect(url).await.expect_err(url);
        assert!(err.to_string().contains("retain"), "{url}: {err}");
    }
}

fn count_rows(path: &Path) -> usize {
    let conn = rusqlite::Connection::open(path).expect("rusqlite");
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    conn.query_row("SELECT count(*) FROM locksmith_locks", [], |r| {
        r.get::<_, i64>(0)
    })
    .expect("count") as usize
}

#[tokio::test]
async fn sqlite_table_stays_bounded_with_per_period_names() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("locks.db");
    let lm = Locksmith::connect(&format!("sqlite://{}?retain=1s", path.display()))
        .await
        .expect("connect");
    let store: Arc<dyn Store> = lm.store();
    let ns = Namespace::default();
    let most = per_period_names(
        &*store,
        &ns,
        |us| sqlite::step_clock(&path, us),
        async || count_rows(&path),
    )
    .await;
    eprintln!("sqlite: at most {most} rows while taking {NAMES} names");
    // Each write removes up to 64 garbage rows, more than it creates: the table holds the
    // rows within retention and little else.
    assert!(
        most <= WITHIN + 100,
        "{most} rows for {WITHIN} within retention"
    );
    // Real time passes too (each name takes a little), so fewer than 1,000 names are
    // within retention at the end; a good part of them must still be there.
    let left = count_rows(&path);
    assert!(left >= WITHIN / 5, "{left} rows left");
    assert_eq!(count_listed(&*store, &ns).await, count_rows(&path));
    assert_retention(&*store, &ns).await;
}
