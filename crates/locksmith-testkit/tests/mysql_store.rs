//! MySQL/MariaDB store tests beyond the conformance suite, against test-kit servers: fence
//! order under interleaved transactions, byte-exact names, credentials never shown, killed
//! connections, a restarted server, concurrent migrations, URL errors.
#![cfg(feature = "mysql")]

use std::sync::Arc;
use std::time::{Duration, Instant};

use locksmith::{Locksmith, Renew, Wait};
use locksmith_testkit::servers::mariadb::{self, MariaDb, PASSWORD};
use sqlx::Connection as _;

async fn server() -> Option<Arc<MariaDb>> {
    match tokio::task::spawn_blocking(MariaDb::start).await.unwrap() {
        Ok(s) => Some(Arc::new(s)),
        Err(why) => {
            locksmith_testkit::skip_store("mysql", &why);
            None
        }
    }
}

async fn raw(server: &MariaDb) -> sqlx::MySqlConnection {
    sqlx::MySqlConnection::connect(&server.url()).await.unwrap()
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A grant that had to wait for the row lock mints its fence after it got the lock: a grant
/// of another name that committed meanwhile has the smaller fence. (A fence computed before
/// the row lock — `INSERT … VALUES (next fence) ON DUPLICATE KEY UPDATE` — would be smaller.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fence_minted_after_the_row_lock() {
    let Some(s) = server().await else { return };
    let lm = Locksmith::connect(&s.url()).await.unwrap();
    // create the row of "x" and free it again (an expired row stays)
    let g = lm
        .lock("x")
        .ttl(ms(50))
        .renew(Renew::Off)
        .acquire()
        .await
        .unwrap();
    let first = g.fence();
    let _ = g.leak();
    tokio::time::sleep(ms(100)).await;

    // transaction 1 (raw) locks the row of "x"
    let mut t1 = raw(&s).await;
    sqlx::query("START TRANSACTION")
        .execute(&mut t1)
        .await
        .unwrap();
    sqlx::query("SELECT fence FROM locksmith_locks WHERE namespace = '' AND name = 'x' FOR UPDATE")
        .fetch_all(&mut t1)
        .await
        .unwrap();
    // transaction 2: the store's grant of "x" starts and waits for that lock
    let lm2 = lm.clone();
    let waiting = tokio::spawn(async move {
        let g = lm2
            .lock("x")
            .try_acquire()
            .await
            .unwrap()
            .expect("x is free");
        (g.fence(), Instant::now())
    });
    tokio::time::sleep(ms(300)).await;
    assert!(
        !waiting.is_finished(),
        "the grant did not wait for the row lock"
    );
    // meanwhile another name is granted and committed
    let y = lm
        .lock("y")
        .try_acquire()
        .await
        .unwrap()
        .expect("y is free");
    let released_at = Instant::now();
    sqlx::query("COMMIT").execute(&mut t1).await.unwrap();
    let (x_fence, granted_at) = waiting.await.unwrap();
    assert!(granted_at >= released_at);
    assert!(
        x_fence > y.fence(),
        "fence of x ({x_fence}) minted before its row lock: not above y's ({})",
        y.fence()
    );
    assert!(x_fence > first);
}

/// Two grants of one expired lock race while a third transaction holds its row: exactly one
/// wins, with a fence above every fence before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_takeovers_behind_a_row_lock() {
    let Some(s) = server().await else { return };
    let lm = Locksmith::connect(&s.url()).await.unwrap();
    let g = lm
        .lock("r")
        .ttl(ms(50))
        .renew(Renew::Off)
        .acquire()
        .await
        .unwrap();
    let before = g.fence();
    let _ = g.leak();
    tokio::time::sleep(ms(100)).await;
    let mut t1 = raw(&s).await;
    sqlx::query("START TRANSACTION")
        .execute(&mut t1)
        .await
        .unwrap();
    sqlx::query("SELECT fence FROM locksmith_locks WHERE name = 'r' FOR UPDATE")
        .fetch_all(&mut t1)
        .await
        .unwrap();
    let mut racers = Vec::new();
    for _ in 0..2 {
        let other = Locksmith::connect(&s.url()).await.unwrap();
        racers.push(tokio::spawn(async move {
            other
                .lock("r")
                .try_acquire()
                .await
                .unwrap()
                .map(|g| g.fence())
        }));
    }
    tokio::time::sleep(ms(200)).await;
    sqlx::query("COMMIT").execute(&mut t1).await.unwrap();
    let mut won = Vec::new();
    for r in racers {
        if let Some(f) = r.await.unwrap() {
            won.push(f);
        }
    }
    assert_eq!(won.len(), 1, "{won:?}");
    assert!(won[0] > before);
}

/// Names are compared byte by byte: case, trailing spaces and Unicode normalisation make
/// different locks; the columns are binary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_are_byte_exact() {
    let Some(s) = server().await else { return };
    let lm = Locksmith::connect(&s.url()).await.unwrap();
    let names = ["A", "a", "a ", "é", "e\u{301}", "ß", "ss"];
    let mut guards = Vec::new();
    for n in names {
        guards.push(
            lm.lock(n)
                .try_acquire()
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("{n:?} collided with another name")),
        );
    }
    let listed: Vec<String> = lm
        .list(locksmith::ListQuery::all())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|i| i.name)
        .collect();
    let mut sorted: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    sorted.sort(); // byte order
    assert_eq!(listed, sorted);
    let types = s
        .sql("SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = 'locksmith' AND table_name = 'locksmith_locks' AND column_name IN ('namespace', 'name') ORDER BY column_name")
        .unwrap();
    assert_eq!(types, "name\tvarbinary\nnamespace\tvarbinary\n");
}

/// The password of the URL never shows in errors or `Debug`, for a wrong password, an
/// unreachable server, a bad parameter and a working connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_never_shown() {
    let Some(s) = server().await else { return };
    let lm = Locksmith::connect(&s.url()).await.unwrap();
    let shown = format!("{lm:?} {:?} {}", lm.store(), lm.store().identity());
    assert!(!shown.contains(PASSWORD), "{shown}");
    assert!(shown.contains("***"), "{shown}");
    let wrong = s.url().replace(PASSWORD, "Wrong-secret-123");
    let down = format!(
        "mysql://locksmith:{PASSWORD}@127.0.0.1:{}/locksmith?timeout=1s",
        locksmith_testkit::servers::free_port()
    );
    let bad_param = format!("{}?tabel=x", s.url());
    let bad_table = format!("{}?table=drop;table", s.url());
    for (url, secret) in [
        (wrong.as_str(), "Wrong-secret-123"),
        (down.as_str(), PASSWORD),
        (bad_param.as_str(), PASSWORD),
        (bad_table.as_str(), PASSWORD),
    ] {
        let err = Locksmith::connect(url).await.unwrap_err();
        let text = format!("{err} {err:?}");
        assert!(!text.contains(secret), "{text}");
        assert!(text.contains("***") || !text.contains("mysql://"), "{text}");
    }
    let err = Locksmith::connect(&wrong).await.unwrap_err();
    assert!(err.to_string().contains("password"), "{err}");
    let err = Locksmith::connect(&down).await.unwrap_err();
    assert!(
        err.is_retryable(),
        "an unreachable server is retryable: {err}"
    );
    let err = Locksmith::connect(&bad_table).await.unwrap_err();
    assert!(err.to_string().contains("table="), "{err}");
}

/// Killing every connection of the client (`KILL CONNECTION`) mid-run leaves nothing stuck:
/// workers see retryable errors at most, keep going, and every lock ends free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_connections_leave_nothing_stuck() {
    let Some(s) = server().await else { return };
    let url = format!("{}?timeout=2s", s.url());
    let lm = Locksmith::connect(&url).await.unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..4 {
        let (lm, stop) = (lm.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let mut grants = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let name = format!("k{}", w % 2);
                match lm
                    .lock(name)
                    .ttl(Duration::from_secs(3))
                    .wait(Wait::For(Duration::from_secs(5)))
                    .acquire()
                    .await
                {
                    Ok(g) => {
                        grants += 1;
                        tokio::time::sleep(ms(2)).await;
                        let _ = g.release().await;
                    }
                    Err(e) => assert!(e.is_retryable(), "not retryable: {e}"),
                }
            }
            grants
        }));
    }
    let s2 = s.clone();
    let mut killed = 0;
    for _ in 0..5 {
        tokio::time::sleep(ms(300)).await;
        let s3 = s2.clone();
        killed += tokio::task::spawn_blocking(move || s3.kill_connections_of("locksmith"))
            .await
            .unwrap();
    }
    assert!(killed > 0, "no connection was killed");
    tokio::time::sleep(ms(300)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut total = 0;
    for w in workers {
        total += tokio::time::timeout(Duration::from_secs(20), w)
            .await
            .expect("a worker is stuck")
            .unwrap();
    }
    assert!(total > 10, "only {total} grants");
    for name in ["k0", "k1"] {
        let start = Instant::now();
        loop {
            let free = lm.inspect(name).await.unwrap().is_none_or(|i| i.expired);
            if free {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(5), "{name} stuck");
            tokio::time::sleep(ms(50)).await;
        }
        let g = lm.lock(name).try_acquire().await.unwrap();
        assert!(g.is_some(), "{name} could not be taken after the kills");
    }
}

/// A restarted server: calls while it is down fail retryably (never a panic or a hang past
/// the call timeout), a lock held across the restart survives, its renewals resume, and new
/// grants carry on with larger fences.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_gives_retryable_errors_and_leases_survive() {
    let Some(s) = server().await else { return };
    let url = format!("{}?timeout=1s", s.url());
    let lm = Locksmith::connect(&url).await.unwrap();
    let held = lm
        .lock("held")
        .ttl(Duration::from_secs(30))
        .renew(Renew::Off)
        .acquire()
        .await
        .unwrap();
    let before = held.fence();
    let s2 = s.clone();
    tokio::task::spawn_blocking(move || s2.kill())
        .await
        .unwrap();
    let start = Instant::now();
    let err = lm.lock("other").try_acquire().await.unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert!(start.elapsed() < Duration::from_secs(3));
    let s2 = s.clone();
    tokio::task::spawn_blocking(move || s2.start_again())
        .await
        .unwrap();
    // the pool reconnects: the first call may still meet a dead connection
    let start = Instant::now();
    let info = loop {
        match lm.inspect("held").await {
            Ok(info) => break info,
            Err(e) => {
                assert!(e.is_retryable(), "{e}");
                assert!(
                    start.elapsed() < Duration::from_secs(10),
                    "no reconnect: {e}"
                );
                tokio::time::sleep(ms(100)).await;
            }
        }
    };
    let info = info.expect("the held lock survived the restart");
    assert_eq!(info.fence, Some(before));
    assert!(!info.expired);
    held.extend(Duration::from_secs(30)).await.unwrap();
    let g = lm.lock("other").acquire().await.unwrap();
    assert!(g.fence() > before);
    held.release().await.unwrap();
    assert!(lm.inspect("held").await.unwrap().is_none());
}

/// Many processes' worth of clients opening a fresh table at once migrate it once, and all
/// work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_starts_migrate_once() {
    let Some(s) = server().await else { return };
    let url = format!("{}?table=fresh_locks", s.url());
    let mut opens = Vec::new();
    for i in 0..8 {
        let url = format!("{url}&namespace=n{i}");
        // separate runtimes, so each has its own pool and migrates on its own
        opens.push(std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let lm = Locksmith::connect(&url).await.unwrap();
                lm.lock("m").try_acquire().await.unwrap().unwrap().fence()
            })
        }));
    }
    let fences: Vec<u64> = opens.into_iter().map(|t| t.join().unwrap()).collect();
    let mut unique = fences.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), 8, "{fences:?}");
    let tables = s
        .sql("SELECT table_name FROM information_schema.tables WHERE table_schema = 'locksmith' AND table_name LIKE 'fresh!_locks%' ESCAPE '!' ORDER BY table_name")
        .unwrap();
    assert_eq!(
        tables,
        "fresh_locks\nfresh_locks_fence\nfresh_locks_meta\nfresh_locks_reservations\n"
    );
    let version = s
        .sql("SELECT version FROM locksmith.fresh_locks_meta")
        .unwrap();
    assert_eq!(
        version.trim(),
        locksmith::store::mysql::SCHEMA_VERSION.to_string()
    );
}

/// A schema from a newer locksmith is refused with a clear error, and nothing is changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newer_schema_refused() {
    let Some(s) = server().await else { return };
    let url = format!("{}?table=newer_locks", s.url());
    drop(Locksmith::connect(&url).await.unwrap());
    s.sql("UPDATE locksmith.newer_locks_meta SET version = 99")
        .unwrap();
    let err = Locksmith::connect(&format!("{url}&namespace=again"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("newer locksmith"), "{err}");
}

/// A service hands over the sqlx pool it already has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_pool_is_handed_over() {
    let Some(s) = server().await else { return };
    let pool = sqlx::mysql::MySqlPoolOptions::new()
        .max_connections(4)
        .test_before_acquire(false)
        .connect(&s.url())
        .await
        .unwrap();
    let store = locksmith::store::mysql::MySqlStore::from_pool(
        pool.clone(),
        locksmith::store::mysql::MySqlOptions::default(),
    )
    .await
    .unwrap();
    let lm = Locksmith::with_store(store, locksmith::Namespace::default(), &s.url());
    assert!(!format!("{lm:?}").contains(PASSWORD));
    let g = lm.lock("pooled").acquire().await.unwrap();
    let by_url = Locksmith::connect(&s.url()).await.unwrap();
    assert!(by_url.lock("pooled").try_acquire().await.unwrap().is_none());
    g.release().await.unwrap();
    assert!(by_url.lock("pooled").try_acquire().await.unwrap().is_some());
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM locksmith_locks WHERE name = 'pooled'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(n, 1);
}

/// A URL without a database, or with a parameter the store does not know, is a clear
/// configuration error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_errors_are_clear() {
    for (url, says) in [
        ("mysql://u:p@127.0.0.1:1", "names no database"),
        ("mysql://u:p@127.0.0.1:1/db?tabel=x", "unknown parameter"),
        ("mysql://u:p@127.0.0.1:1/db?table=1x", "table="),
        ("mysql://u:p@127.0.0.1:1/db?pool=0", "pool="),
    ] {
        let err = Locksmith::connect(url).await.unwrap_err();
        assert!(
            matches!(err, locksmith::Error::Config { .. }),
            "{url}: {err}"
        );
        assert!(err.to_string().contains(says), "{url}: {err}");
        assert!(!err.to_string().contains("u:p@"), "{err}");
    }
    let _ = mariadb::URL_ENV;
}

/// An uncontended acquire is one statement (one round trip) and a release is one: the
/// server's count of client statements grows by two per cycle (plus the background garbage
/// sweep's two reads, at most once a second).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_round_trip_per_acquire_and_release() {
    let Some(s) = server().await else { return };
    let lm = Locksmith::connect(&s.url()).await.unwrap();
    // warm up: connections opened, statements prepared
    for i in 0..20 {
        let g = lm
            .lock(format!("w{i}"))
            .try_acquire()
            .await
            .unwrap()
            .unwrap();
        g.release().await.unwrap();
    }
    tokio::time::sleep(ms(200)).await;
    let questions = || -> u64 {
        s.sql("SHOW GLOBAL STATUS LIKE 'Questions'")
            .unwrap()
            .split_whitespace()
            .nth(1)
            .unwrap()
            .parse()
            .unwrap()
    };
    let before = questions();
    const N: u64 = 200;
    for i in 0..N {
        let g = lm
            .lock(format!("rt{}", i % 7))
            .try_acquire()
            .await
            .unwrap()
            .unwrap();
        g.release().await.unwrap();
    }
    tokio::time::sleep(ms(200)).await;
    let used = questions() - before - 1;
    assert!(
        (2 * N..=2 * N + 10).contains(&used),
        "{used} statements for {N} acquire/release cycles"
    );
}

/// Garbage: with `?retain=0s`, rows that expired are removed by the background sweep that
/// grants start (at most once a second), in every namespace; with the default (1 h) they
/// stay visible.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_rows_are_swept_after_retain() {
    let Some(s) = server().await else { return };
    let keep = Locksmith::connect(&format!("{}?namespace=keep", s.url()))
        .await
        .unwrap();
    for i in 0..10 {
        let g = keep
            .lock(format!("old{i}"))
            .ttl(ms(50))
            .renew(Renew::Off)
            .acquire()
            .await
            .unwrap();
        let _ = g.leak();
    }
    tokio::time::sleep(ms(100)).await;
    let expired = |lm: Locksmith| async move {
        lm.list(locksmith::ListQuery::all().expired(locksmith::Expired::Only))
            .await
            .unwrap()
            .items
            .len()
    };
    for i in 0..16 {
        keep.lock(format!("n{i}"))
            .acquire()
            .await
            .unwrap()
            .release()
            .await
            .unwrap();
    }
    tokio::time::sleep(ms(300)).await;
    assert_eq!(expired(keep.clone()).await, 10, "swept within retention");
    let sweeper = Locksmith::connect(&format!("{}?namespace=other&retain=0s", s.url()))
        .await
        .unwrap();
    for i in 0..16 {
        sweeper
            .lock(format!("s{i}"))
            .acquire()
            .await
            .unwrap()
            .release()
            .await
            .unwrap();
    }
    // sweeps start at most once a second: keep granting
    let start = Instant::now();
    let mut i = 0;
    while expired(keep.clone()).await > 0 {
        assert!(
            start.elapsed() < Duration::from_secs(8),
            "expired rows never swept"
        );
        i += 1;
        sweeper
            .lock(format!("again{i}"))
            .acquire()
            .await
            .unwrap()
            .release()
            .await
            .unwrap();
        tokio::time::sleep(ms(100)).await;
    }
}
