//! Dropping the last handle of a SQLite store never blocks the dropping thread, and
//! `Store::close` waits for the queued jobs without blocking the runtime.
//!
//! The worker is kept busy by another connection holding the file's write lock: a detached
//! release queued meanwhile retries (for up to a second) until the file is free.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use locksmith::store::{Claim, Grant, Store, sqlite};
use locksmith::{LockName, Namespace, Token};

/// How long the other connection keeps the file busy: the old drop waited this long.
const BUSY_FOR: Duration = Duration::from_millis(400);

/// A generous bound for "it happened by then" on a loaded machine.
const SLACK: Duration = Duration::from_secs(3);

fn row_exists(path: &Path, name: &str) -> bool {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    conn.query_row(
        "SELECT count(*) FROM locksmith_locks WHERE name = ?1",
        [name],
        |r| r.get::<_, i64>(0),
    )
    .unwrap()
        > 0
}

/// Opens a store on a fresh file, takes `x`, then makes another connection hold the file's
/// write lock (released after [`BUSY_FOR`] by a thread) and queues a detached release of `x`.
async fn busy_with_a_queued_release(
    path: &Path,
) -> (Arc<sqlite::SqliteStore>, std::thread::JoinHandle<()>) {
    let store = sqlite::SqliteStore::open(path.to_path_buf()).await.unwrap();
    let ns = Namespace::default();
    let claim = Claim::new(
        LockName::new("x").unwrap(),
        Token::new(),
        "drop",
        "host",
        std::process::id(),
        Some(Duration::from_secs(600)),
    );
    assert!(matches!(
        store.try_acquire(&ns, &claim).await.unwrap(),
        Grant::Acquired { .. }
    ));
    let (locked_tx, locked_rx) = std::sync::mpsc::channel();
    let blocker_path = path.to_path_buf();
    let blocker = std::thread::spawn(move || {
        let conn = rusqlite::Connection::open(blocker_path).unwrap();
        conn.execute_batch("BEGIN IMMEDIATE").unwrap();
        locked_tx.send(()).unwrap();
        std::thread::sleep(BUSY_FOR);
        conn.execute_batch("COMMIT").unwrap();
    });
    locked_rx.recv().unwrap();
    store.release_detached(&ns, &claim.name, &claim.token, None);
    (store, blocker)
}

#[tokio::test] // current_thread runtime: a blocking drop would stall it
async fn dropping_the_last_handle_does_not_wait_for_the_worker() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("locks.db");
    let (store, blocker) = busy_with_a_queued_release(&path).await;
    // Let the worker start on the release (it is now retrying the busy file).
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = Instant::now();
    drop(store);
    let took = started.elapsed();
    assert!(
        took < BUSY_FOR / 2,
        "dropping the last handle took {took:?}, while the file was busy for {BUSY_FOR:?}"
    );
    // The queued release still happens once the file is free.
    blocker.join().unwrap();
    let deadline = Instant::now() + SLACK;
    while row_exists(&path, "x") {
        assert!(
            Instant::now() < deadline,
            "the queued detached release never ran"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test] // current_thread: close must not block the runtime's only thread
async fn close_waits_for_queued_releases_without_blocking_the_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("locks.db");
    let (store, blocker) = busy_with_a_queued_release(&path).await;
    let ticks = Arc::new(AtomicUsize::new(0));
    let ticker = tokio::spawn({
        let ticks = ticks.clone();
        async move {
            loop {
                tokio::time::sleep(Duration::from_millis(10)).await;
                ticks.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    let started = Instant::now();
    store.close().await.expect("close");
    let took = started.elapsed();
    assert!(
        !row_exists(&path, "x"),
        "close returned before the queued release ran"
    );
    assert!(
        took >= BUSY_FOR / 2,
        "close returned after {took:?}, before the file was free"
    );
    let ticked = ticks.load(Ordering::SeqCst);
    assert!(
        ticked >= 5,
        "the runtime ran {ticked} ticks of 10 ms during {took:?} of close"
    );
    ticker.abort();
    blocker.join().unwrap();
    // The store stays usable after close (other handles may share it).
    assert!(
        store
            .inspect(&Namespace::default(), &LockName::new("x").unwrap())
            .await
            .unwrap()
            .is_none()
    );
}
