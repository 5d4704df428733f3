//! `#[locked]` on the networked stores (PostgreSQL, MariaDB, Redis single node and Cluster),
//! each on a server the test kit starts: a busy call errs or takes `on_locked`, a waiting call
//! runs once the holder lets go, a `?` error and a panic release the lock, `min_hold` keeps
//! it and skips a second run inside the period, and the blocking facade's plain `fn` works.
//! The naming rules do not depend on the store; `crates/locksmith/tests/locked.rs` covers
//! them on memory and SQLite.

#![cfg(all(
    feature = "macros",
    feature = "postgres",
    feature = "mysql",
    feature = "redis"
))]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use locksmith::{Error, Locksmith, locked, stores};

/// The installed `default` store is process-wide: the tests take turns.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

static RUNS: AtomicUsize = AtomicUsize::new(0);

#[locked(name = "nb:busy")]
async fn busy() -> Result<&'static str, Error> {
    RUNS.fetch_add(1, Ordering::SeqCst);
    Ok("ran")
}

#[locked(name = "nb:busy", on_locked = Ok("skipped"))]
async fn busy_or_skip() -> Result<&'static str, Error> {
    RUNS.fetch_add(1, Ordering::SeqCst);
    Ok("ran")
}

#[locked(name = "nb:busy", wait = "30s")]
async fn busy_waiting() -> Result<&'static str, Error> {
    RUNS.fetch_add(1, Ordering::SeqCst);
    Ok("ran")
}

#[locked(name = "nb:busy", wait = "30s")]
fn busy_blocking() -> Result<&'static str, Error> {
    RUNS.fetch_add(1, Ordering::SeqCst);
    Ok("ran")
}

#[derive(Debug)]
enum JobError {
    Lock(Error),
    Boom,
}

impl From<Error> for JobError {
    fn from(e: Error) -> Self {
        JobError::Lock(e)
    }
}

#[locked(name = "nb:fails-{n}")]
async fn fails(n: u8) -> Result<(), JobError> {
    let _ = n;
    Err(JobError::Boom)
}

#[locked(name = "nb:panics")]
async fn panics() -> Result<(), Error> {
    panic!("the body panicked");
}

#[locked(name = "nb:period", min_hold = "1h", on_locked = false)]
async fn once_an_hour() -> bool {
    true
}

async fn battery(store: &str, lm: Locksmith) {
    let _turn = SERIAL.lock().await;
    stores::install("default", lm.clone());
    RUNS.store(0, Ordering::SeqCst);

    // Busy: an error, or on_locked; the body never runs.
    let holder = lm.lock("nb:busy").acquire().await.unwrap();
    let err = busy().await.unwrap_err();
    assert!(err.is_locked(), "{store}: {err}");
    assert_eq!(busy_or_skip().await.unwrap(), "skipped", "{store}");
    assert_eq!(
        RUNS.load(Ordering::SeqCst),
        0,
        "{store}: a body ran while busy"
    );

    // A waiting call runs once the holder lets go, async and blocking.
    let release = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        holder.release().await.unwrap();
    });
    assert_eq!(busy_waiting().await.unwrap(), "ran", "{store}");
    release.await.unwrap();
    let holder = lm.lock("nb:busy").acquire().await.unwrap();
    let release = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        holder.release().await.unwrap();
    });
    assert_eq!(
        tokio::task::block_in_place(busy_blocking).unwrap(),
        "ran",
        "{store}"
    );
    release.await.unwrap();
    assert_eq!(RUNS.load(Ordering::SeqCst), 2, "{store}");

    // A `?` error and a panic release the lock.
    match fails(1).await {
        Err(JobError::Boom) => {}
        Err(JobError::Lock(e)) => panic!("{store}: the lock failed: {e}"),
        Ok(()) => panic!("{store}: the body's error was lost"),
    }
    assert!(
        lm.inspect("nb:fails-1")
            .await
            .unwrap()
            .is_none_or(|i| i.expired || i.released)
    );
    let panicked = tokio::spawn(panics()).await;
    assert!(panicked.is_err(), "{store}: the panic went through");
    let again = lm
        .lock("nb:panics")
        .wait(locksmith::Wait::For(Duration::from_secs(10)))
        .acquire()
        .await
        .unwrap_or_else(|e| panic!("{store}: the panicked holder's lock stayed: {e}"));
    again.release().await.unwrap();

    // min_hold: the first run keeps the lock for an hour; a second run inside it skips.
    if lm.capabilities().min_hold {
        assert!(once_an_hour().await, "{store}: first run");
        assert!(!once_an_hour().await, "{store}: skipped inside the period");
        let info = lm.inspect("nb:period").await.unwrap().expect("kept");
        assert!(
            info.expires_in.unwrap() > Duration::from_secs(3500),
            "{store}: kept until acquired_at + 1h, {info:?}"
        );
    }
    lm.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres() {
    use locksmith_testkit::servers::postgres::PostgresServer;
    let server = match PostgresServer::start().await {
        Ok(s) => s,
        Err(why) => return locksmith_testkit::skip_store("postgres", &why),
    };
    let lm = Locksmith::connect(&server.url("postgres")).await.unwrap();
    battery("postgres", lm).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_mysql() {
    use locksmith_testkit::servers::mariadb::MariaDb;
    let server = match tokio::task::block_in_place(MariaDb::start) {
        Ok(s) => s,
        Err(why) => return locksmith_testkit::skip_store("mysql", &why),
    };
    let lm = Locksmith::connect(&server.url()).await.unwrap();
    battery("mysql", lm).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_redis() {
    use locksmith_testkit::servers::redis::{RedisConfig, RedisServer};
    let Some(server) = RedisServer::start(RedisConfig::default()).await else {
        return;
    };
    let lm = Locksmith::connect(&server.url()).await.unwrap();
    battery("redis", lm).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_redis_cluster() {
    use locksmith_testkit::servers::redis::RedisCluster;
    let Some(cluster) = RedisCluster::start().await else {
        return;
    };
    let lm = Locksmith::connect(&cluster.url()).await.unwrap();
    battery("redis cluster", lm).await;
}
