//! Rows record `min_hold` (memory and SQLite), and a SQLite file of schema version 1 (written
//! by locksmith before `min_hold` was recorded) opens and is upgraded in place.

use std::sync::Arc;
use std::time::Duration;

use locksmith::store::{Claim, Grant, Released, Store, memory, sqlite};
use locksmith::{Expired, ListQuery, LockName, Namespace, Token};

fn claim(name: &str, ttl: Duration, min_hold: Option<Duration>) -> Claim {
    let mut c = Claim::new(
        LockName::new(name).expect("name"),
        Token::new(),
        "schema",
        "host",
        std::process::id(),
        Some(ttl),
    );
    c.min_hold = min_hold;
    c
}

async fn assert_min_hold_recorded(store: &dyn Store) {
    let ns = Namespace::new("min-hold").unwrap();
    let hold = Duration::from_secs(30);
    let with = claim("with", Duration::from_secs(60), Some(hold));
    let without = claim("without", Duration::from_secs(60), None);
    for c in [&with, &without] {
        assert!(matches!(
            store.try_acquire(&ns, c).await.unwrap(),
            Grant::Acquired { .. }
        ));
    }
    let info = store.inspect(&ns, &with.name).await.unwrap().unwrap();
    assert_eq!(info.min_hold, Some(hold));
    let info = store
        .held_by(&ns, &with.name, &with.token)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(info.min_hold, Some(hold));
    let info = store.inspect(&ns, &without.name).await.unwrap().unwrap();
    assert_eq!(info.min_hold, None);
    let page = store.list(&ns, &ListQuery::all()).await.unwrap();
    let mins: Vec<_> = page.items.iter().map(|i| i.min_hold).collect();
    assert_eq!(mins, [Some(hold), None]);

    // Someone else trying sees it in the holder's info.
    let other = claim("with", Duration::from_secs(60), None);
    match store.try_acquire(&ns, &other).await.unwrap() {
        Grant::Held(info) => assert_eq!(info.min_hold, Some(hold)),
        other => panic!("expected Held, got {other:?}"),
    }

    // Kept by min_hold: the row still says so.
    assert_eq!(
        store
            .release(&ns, &with.name, &with.token, Some(hold))
            .await
            .unwrap(),
        Released::Kept
    );
    let info = store.inspect(&ns, &with.name).await.unwrap().unwrap();
    assert!(info.released);
    assert_eq!(info.min_hold, Some(hold));
    let page = store
        .list(&ns, &ListQuery::all().expired(Expired::Include))
        .await
        .unwrap();
    assert_eq!(page.items[0].min_hold, Some(hold));
}

#[tokio::test]
async fn memory_records_min_hold() {
    assert_min_hold_recorded(&*memory::MemoryStore::new()).await;
}

#[tokio::test]
async fn sqlite_records_min_hold() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite::SqliteStore::open(dir.path().join("locks.db"))
        .await
        .unwrap();
    assert_min_hold_recorded(&*store).await;
}

/// The schema of locksmith's first SQLite files (version 1), as that release wrote it.
const SCHEMA_V1: &str = "
CREATE TABLE IF NOT EXISTS locksmith_locks (
    namespace   TEXT NOT NULL,
    name        TEXT NOT NULL,
    token       TEXT,
    owner       TEXT NOT NULL,
    host        TEXT NOT NULL,
    pid         INTEGER NOT NULL,
    fence       INTEGER NOT NULL,
    acquired_at INTEGER NOT NULL,
    expires_at  INTEGER,
    PRIMARY KEY (namespace, name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS locksmith_fence (
    id    INTEGER PRIMARY KEY CHECK (id = 0),
    value INTEGER NOT NULL
);
INSERT OR IGNORE INTO locksmith_fence (id, value) VALUES (0, 0);
";

#[tokio::test]
async fn a_version_1_file_opens_and_is_upgraded() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    let token = Token::new();
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))
            .unwrap();
        conn.execute_batch(SCHEMA_V1).unwrap();
        conn.execute_batch(&format!(
            "PRAGMA application_id = {}; PRAGMA user_version = 1;",
            sqlite::APPLICATION_ID
        ))
        .unwrap();
        // An old lock, live for an hour, and the old counter.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_micros() as i64;
        conn.execute(
            "INSERT INTO locksmith_locks
             (namespace, name, token, owner, host, pid, fence, acquired_at, expires_at)
             VALUES ('', 'old', ?1, 'v1', 'host', 1, 7, ?2, ?3)",
            rusqlite::params![token.expose(), now, now + 3_600_000_000],
        )
        .unwrap();
        conn.execute("UPDATE locksmith_fence SET value = 7", [])
            .unwrap();
    }

    let store: Arc<sqlite::SqliteStore> = sqlite::SqliteStore::open(path.clone())
        .await
        .expect("a version-1 file opens");
    let ns = Namespace::default();
    let old = LockName::new("old").unwrap();
    let info = store
        .inspect(&ns, &old)
        .await
        .unwrap()
        .expect("the old lock");
    assert_eq!(info.fence, Some(7));
    assert_eq!(info.owner.as_deref(), Some("v1"));
    assert_eq!(info.min_hold, None);
    assert!(!info.expired);
    // Its holder still holds it.
    assert!(store.held_by(&ns, &old, &token).await.unwrap().is_some());
    let taker = claim("old", Duration::from_secs(60), None);
    assert!(matches!(
        store.try_acquire(&ns, &taker).await.unwrap(),
        Grant::Held(_)
    ));

    // New locks record min_hold and take clock fences above the old counter.
    let new = claim("new", Duration::from_secs(60), Some(Duration::from_secs(5)));
    let fence = match store.try_acquire(&ns, &new).await.unwrap() {
        Grant::Acquired { fence } => fence,
        other => panic!("{other:?}"),
    };
    assert!(fence > 1_000_000_000_000_000, "a clock fence: {fence}");
    let info = store.inspect(&ns, &new.name).await.unwrap().unwrap();
    assert_eq!(info.min_hold, Some(Duration::from_secs(5)));

    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, sqlite::SCHEMA_VERSION);
    assert_eq!(version, 2);
    let objects: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE name LIKE 'locksmith_%' ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    for wanted in [
        "locksmith_fence",
        "locksmith_locks",
        "locksmith_locks_expires_at",
        "locksmith_reservations",
        "locksmith_reservations_until",
    ] {
        assert!(
            objects.iter().any(|o| o == wanted),
            "{wanted} in {objects:?}"
        );
    }

    // Reopening an upgraded file changes nothing.
    drop(store);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let store = sqlite::SqliteStore::open(path).await.expect("reopen");
    let info = store.inspect(&ns, &new.name).await.unwrap().unwrap();
    assert_eq!(info.min_hold, Some(Duration::from_secs(5)));
}

#[tokio::test]
async fn a_file_from_a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("newer.db");
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(SCHEMA_V1).unwrap();
        conn.execute_batch(&format!(
            "PRAGMA application_id = {}; PRAGMA user_version = 3;",
            sqlite::APPLICATION_ID
        ))
        .unwrap();
    }
    let err = sqlite::SqliteStore::open(path)
        .await
        .expect_err("schema 3 is newer");
    assert!(err.to_string().contains("newer"), "{err}");
}
