//! The django-lockmgr layout of the PostgreSQL store (`?layout=django-lockmgr`) against rows
//! written by hand the way Django writes them (a lock a Python process holds), hostile rows,
//! and what locksmith's own rows look like to Django. Each test has a server of its own,
//! with Django's table made from the test kit's copy of django-lockmgr's migrations.

#![cfg(feature = "postgres")]

use std::time::Duration;

use locksmith::store::{ExtendMode, Extended, Released};
use locksmith::{Error, LockName, Locksmith, Namespace, Renew, SetPolicy, Token};
use locksmith_testkit::servers::postgres::{PostgresServer, create_lockmgr_table};
use locksmith_testkit::skip_store;

struct Db {
    server: PostgresServer,
    sql: tokio_postgres::Client,
}

impl Db {
    /// A server with Django's table in database `postgres`.
    async fn start() -> Option<Db> {
        let server = match PostgresServer::start().await {
            Ok(s) => s,
            Err(why) => {
                skip_store("postgres", &why);
                return None;
            }
        };
        create_lockmgr_table(&server, "postgres")
            .await
            .expect("create lockmgr_lock");
        let (sql, conn) = tokio_postgres::connect(&server.url("postgres"), tokio_postgres::NoTls)
            .await
            .expect("raw connect");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Some(Db { server, sql })
    }

    fn url(&self) -> String {
        format!("{}?layout=django-lockmgr", self.server.url("postgres"))
    }

    async fn lm(&self) -> Locksmith {
        Locksmith::connect(&self.url()).await.expect("connect")
    }

    /// Inserts a row as django-lockmgr's `get_lock` does: `locked_until` is an SQL
    /// expression (`NULL` for a lock that never expires).
    async fn python_lock(&self, name: &str, by: Option<&str>, pid: Option<i32>, until: &str) {
        self.sql
            .execute(
                &format!(
                    "INSERT INTO lockmgr_lock (name, locked_by, lock_process, locked_until, created_at, updated_at)
                     VALUES ($1, $2, $3, {until}, now(), now())"
                ),
                &[&name, &by, &pid],
            )
            .await
            .expect("insert a Python row");
    }

    /// `locked_until` of `name` as text (UTC), or `None` when there is no row.
    async fn until_text(&self, name: &str) -> Option<Option<String>> {
        self.sql
            .query_opt(
                "SELECT to_char(locked_until AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') FROM lockmgr_lock WHERE name = $1",
                &[&name],
            )
            .await
            .unwrap()
            .map(|r| r.get(0))
    }

    async fn rows(&self, table: &str) -> i64 {
        self.sql
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await
            .unwrap()
            .get(0)
    }
}

fn ns() -> Namespace {
    Namespace::default()
}

fn name(n: &str) -> LockName {
    LockName::new(n).unwrap()
}

/// A lock a Python process holds: locksmith sees it held, with its owner and pid, and no
/// token releases or extends it; the row is untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_lock_is_held_and_never_released_with_a_token() {
    let Some(db) = Db::start().await else { return };
    db.python_lock(
        "report",
        Some("web-1"),
        Some(4242),
        "now() + interval '10 minutes'",
    )
    .await;
    let before = db.until_text("report").await;
    let lm = db.lm().await;
    assert!(lm.lock("report").try_acquire().await.unwrap().is_none());
    let info = lm.inspect("report").await.unwrap().expect("a row");
    assert_eq!(info.owner.as_deref(), Some("web-1"));
    assert_eq!(info.pid, Some(4242));
    assert_eq!(info.host, None);
    assert_eq!(info.fence, None);
    assert!(!info.expired && !info.released);
    let left = info.expires_in.expect("expires");
    assert!(
        left > Duration::from_secs(590) && left <= Duration::from_secs(600),
        "{left:?}"
    );
    let store = lm.store();
    let anyone = Token::new();
    let released = store
        .release(&ns(), &name("report"), &anyone, None)
        .await
        .unwrap();
    assert_eq!(released, Released::NotHeld);
    let extended = store
        .extend(
            &ns(),
            &name("report"),
            &anyone,
            ExtendMode::Set(Duration::from_secs(5)),
        )
        .await
        .unwrap();
    assert_eq!(extended, Extended::NotHeld);
    assert!(
        store
            .held_by(&ns(), &name("report"), &anyone)
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(db.until_text("report").await, before, "the row changed");
    assert_eq!(db.rows("locksmith_lockmgr_owner").await, 0);
    // A waiter with a deadline times out: the lock stays the Python process's.
    let err = lm
        .lock("report")
        .wait(locksmith::Wait::For(Duration::from_millis(300)))
        .acquire()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    // `clear` removes it, as django-lockmgr's clear_lock does.
    let cleared = lm.clear(["report"]).await.unwrap();
    assert_eq!(cleared, vec![("report".to_string(), true)]);
    assert_eq!(db.until_text("report").await, None);
    let g = lm.lock("report").acquire().await.unwrap();
    g.release().await.unwrap();
}

/// A waiter in this process gets a Python lock soon after the Python process deletes its
/// row (polling, since Python sends no notification).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiter_takes_the_lock_a_python_process_releases() {
    let Some(db) = Db::start().await else { return };
    db.python_lock("job", Some("py"), Some(7), "now() + interval '1 hour'")
        .await;
    let lm = db.lm().await;
    let waiter = tokio::spawn(async move {
        lm.lock("job")
            .wait(locksmith::Wait::For(Duration::from_secs(10)))
            .acquire()
            .await
            .map(|g| g.leak())
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(!waiter.is_finished());
    db.sql
        .execute("DELETE FROM lockmgr_lock WHERE name = 'job'", &[])
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("the waiter noticed the release")
        .unwrap();
    assert!(got.is_ok(), "{got:?}");
    let by: Option<String> = db
        .sql
        .query_one("SELECT locked_by FROM lockmgr_lock WHERE name = 'job'", &[])
        .await
        .unwrap()
        .get(0);
    assert_ne!(by.as_deref(), Some("py"));
}

/// `set_locks` renews a Python process's lock as django-lockmgr's `set_lock` does: never
/// shortening it, touching only `locked_until` and `updated_at`, and leaving it Python's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_locks_renews_a_python_lock_without_shortening_it() {
    let Some(db) = Db::start().await else { return };
    db.python_lock(
        "nightly",
        Some("cron-host"),
        Some(99),
        "now() + interval '1 hour'",
    )
    .await;
    let before = db.until_text("nightly").await;
    let lm = db.lm().await;
    let shorter = SetPolicy::default().ttl(Duration::from_secs(60));
    let out = lm.set_locks(["nightly"], shorter).await.unwrap();
    assert_eq!(out.counts.renewed, 1, "{out:?}");
    assert_eq!(db.until_text("nightly").await, before, "shortened");
    let longer = SetPolicy::default().ttl(Duration::from_secs(3 * 3600));
    lm.set_locks(["nightly"], longer).await.unwrap();
    let row = db
        .sql
        .query_one(
            "SELECT locked_by, lock_process,
                    locked_until - clock_timestamp() > interval '2 hours 59 minutes',
                    updated_at > created_at
             FROM lockmgr_lock WHERE name = 'nightly'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        row.get::<_, Option<String>>(0).as_deref(),
        Some("cron-host")
    );
    assert_eq!(row.get::<_, Option<i32>>(1), Some(99));
    assert!(row.get::<_, bool>(2), "not renewed to 3 h");
    assert!(row.get::<_, bool>(3), "updated_at not moved");
    assert_eq!(db.rows("locksmith_lockmgr_owner").await, 0, "made it ours");
    let info = lm.inspect("nightly").await.unwrap().unwrap();
    assert_eq!(info.owner.as_deref(), Some("cron-host"));
    assert!(lm.lock("nightly").try_acquire().await.unwrap().is_none());
    // The renewed lock is still nobody's token: a release with any token does nothing.
    let released = lm
        .store()
        .release(&ns(), &name("nightly"), &Token::new(), None)
        .await
        .unwrap();
    assert_eq!(released, Released::NotHeld);
}

/// Rows written by hand with NULLs and far times: nothing panics, NULL holder fields read
/// as unknown, far past is expired and taken over, far future and NULL are held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_rows_read_and_far_past_rows_are_taken_over() {
    let Some(db) = Db::start().await else { return };
    db.python_lock("nulls", None, None, "now() + interval '1 hour'")
        .await;
    db.python_lock("forever", None, None, "NULL").await;
    db.python_lock("infinite", Some("x"), Some(-5), "'infinity'")
        .await;
    db.python_lock(
        "far-future",
        Some("x"),
        Some(1),
        "'200000-01-01 00:00:00+00'",
    )
    .await;
    db.python_lock("far-past", Some("old"), Some(1), "'1900-01-01 00:00:00+00'")
        .await;
    db.python_lock("minus-infinity", Some("old"), Some(1), "'-infinity'")
        .await;
    let lm = db.lm().await;
    let nulls = lm.inspect("nulls").await.unwrap().unwrap();
    assert_eq!((nulls.owner, nulls.pid, nulls.host), (None, None, None));
    assert!(!nulls.expired);
    let forever = lm.inspect("forever").await.unwrap().unwrap();
    assert_eq!(forever.expires_in, None);
    assert!(!forever.expired);
    let infinite = lm.inspect("infinite").await.unwrap().unwrap();
    assert!(!infinite.expired);
    assert_eq!(infinite.pid, None, "a negative pid is not a pid");
    for held in ["nulls", "forever", "infinite", "far-future"] {
        assert!(
            lm.lock(held).try_acquire().await.unwrap().is_none(),
            "{held} was taken"
        );
    }
    // Both expired long ago (the first grant's garbage sweep would remove such rows, so
    // both are taken over by one grant).
    for gone in ["far-past", "minus-infinity"] {
        let info = lm.inspect(gone).await.unwrap().unwrap();
        assert!(info.expired, "{gone}: {info:?}");
    }
    let guards = lm
        .acquire_all(["far-past", "minus-infinity"])
        .wait(locksmith::Wait::No)
        .acquire()
        .await
        .expect("expired rows taken over");
    for gone in ["far-past", "minus-infinity"] {
        let now_ours = lm.inspect(gone).await.unwrap().unwrap();
        assert!(now_ours.host.is_some() && !now_ours.expired, "{now_ours:?}");
    }
    locksmith::release_all(guards).await.unwrap();
    for gone in ["far-past", "minus-infinity"] {
        assert_eq!(db.until_text(gone).await, None);
    }
    let mut query = locksmith::ListQuery::default();
    query.expired = locksmith::Expired::Include;
    let page = lm.list(query).await.unwrap();
    let names: Vec<&str> = page.items.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["far-future", "forever", "infinite", "nulls"]);
}

/// Names of 100 bytes fit Django's varchar(100); 101 bytes are refused before anything
/// reaches the database, with a message naming the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_up_to_100_bytes() {
    let Some(db) = Db::start().await else { return };
    let lm = db.lm().await;
    for ok in ["a".repeat(100), "é".repeat(50)] {
        let g = lm.lock(ok.as_str()).acquire().await.unwrap();
        assert!(db.until_text(&ok).await.is_some());
        g.release().await.unwrap();
    }
    for long in ["a".repeat(101), "é".repeat(51)] {
        let err = lm.lock(long.as_str()).acquire().await.unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, Error::InvalidName { .. }), "{text}");
        assert!(
            text.contains("at most 100 bytes") && text.contains("shorter name"),
            "{text}"
        );
        let err = lm.set_locks([long.as_str()], SetPolicy::default()).await;
        assert!(matches!(err, Err(Error::InvalidName { .. })), "{err:?}");
        // The store refuses too, for callers that reach it directly.
        let err = lm
            .store()
            .inspect(&ns(), &name(&long))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("varchar(100)"), "{err}");
    }
    assert_eq!(db.rows("lockmgr_lock").await, 0);
}

/// URLs: a database without Django's table, options of the native layout, unknown layouts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn urls_and_a_missing_table_are_refused_clearly() {
    let Some(db) = Db::start().await else { return };
    db.sql
        .batch_execute("CREATE DATABASE nodjango")
        .await
        .unwrap();
    let url = format!("{}?layout=django-lockmgr", db.server.url("nodjango"));
    let err = Locksmith::connect(&url).await.unwrap_err().to_string();
    assert!(
        err.contains("python manage.py migrate lockmgr") && err.contains("lockmgr_lock"),
        "{err}"
    );
    assert!(
        !err.contains(locksmith_testkit::servers::postgres::PASSWORD),
        "{err}"
    );
    for (extra, hint) in [
        ("&namespace=a", "namespace"),
        ("&table=t", "?table="),
        ("&schema=s", "?schema="),
    ] {
        let err = Locksmith::connect(&format!("{}{extra}", db.url()))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(hint) && err.contains("django-lockmgr"),
            "{extra}: {err}"
        );
    }
    // Only migration 0001 applied: locked_until NOT NULL.
    db.sql
        .batch_execute(r#"ALTER TABLE "lockmgr_lock" ALTER COLUMN "locked_until" SET NOT NULL"#)
        .await
        .unwrap();
    let err = Locksmith::connect(&db.url()).await.unwrap_err().to_string();
    assert!(
        err.contains("0002") && err.contains("python manage.py migrate lockmgr"),
        "{err}"
    );
    let bad = format!("{}?layout=lockmgr", db.server.url("postgres"));
    let err = Locksmith::connect(&bad).await.unwrap_err().to_string();
    assert!(err.contains("layout=django-lockmgr"), "{err}");
    // Nothing was created in the database without Django's table.
    let (other, conn) = tokio_postgres::connect(&db.server.url("nodjango"), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let tables: i64 = other
        .query_one(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(tables, 0);
}

/// A lock locksmith holds looks like one django-lockmgr wrote: `locked_by` the owner,
/// `lock_process` the pid, `created_at = updated_at`, `locked_until = created_at + ttl`
/// exactly, all `timestamp with time zone`; an extension moves `locked_until` and
/// `updated_at`, never `created_at`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locksmith_row_looks_like_djangos() {
    let Some(db) = Db::start().await else { return };
    let lm = db.lm().await;
    let g = lm
        .lock("deploy")
        .owner("deployer@ci")
        .ttl(Duration::from_millis(30_250))
        .renew(Renew::Off)
        .acquire()
        .await
        .unwrap();
    let row = db
        .sql
        .query_one(
            "SELECT locked_by, lock_process, created_at = updated_at,
                    locked_until - created_at,
                    pg_typeof(created_at)::text, pg_typeof(locked_until)::text,
                    abs(extract(epoch FROM clock_timestamp() - created_at)) < 60
             FROM lockmgr_lock WHERE name = 'deploy'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        row.get::<_, Option<String>>(0).as_deref(),
        Some("deployer@ci")
    );
    assert_eq!(
        row.get::<_, Option<i32>>(1),
        Some(i32::try_from(std::process::id()).unwrap())
    );
    assert!(row.get::<_, bool>(2), "created_at != updated_at");
    let exact: bool = db
        .sql
        .query_one(
            "SELECT locked_until - created_at = interval '30.25 seconds' FROM lockmgr_lock WHERE name = 'deploy'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(exact, "locked_until is not created_at + ttl");
    assert_eq!(row.get::<_, String>(4), "timestamp with time zone");
    assert_eq!(row.get::<_, String>(5), "timestamp with time zone");
    assert!(row.get::<_, bool>(6), "created_at is not the server's time");
    g.extend(Duration::from_secs(90)).await.unwrap();
    let moved = db
        .sql
        .query_one(
            "SELECT locked_until - updated_at = interval '90 seconds', updated_at > created_at
             FROM lockmgr_lock WHERE name = 'deploy'",
            &[],
        )
        .await
        .unwrap();
    assert!(moved.get::<_, bool>(0) && moved.get::<_, bool>(1));
    let info = lm.inspect("deploy").await.unwrap().unwrap();
    assert_eq!(info.owner.as_deref(), Some("deployer@ci"));
    assert!(info.host.is_some() && info.pid.is_some());
    assert_eq!(info.fence, None);
    assert_eq!(g.fence(), 0);
    // A lock that never expires is NULL, as django-lockmgr writes it.
    let forever = lm.lock("forever").no_expiry().acquire().await.unwrap();
    assert_eq!(db.until_text("forever").await, Some(None));
    forever.release().await.unwrap();
    g.release().await.unwrap();
    assert_eq!(db.until_text("deploy").await, None);
    assert_eq!(db.rows("locksmith_lockmgr_owner").await, 0);
}

/// Released before `min_hold` passed, the row stays until `created_at + min_hold`
/// exactly, blocking everyone (Python peers see an ordinary lock), and nobody holds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_hold_keeps_the_row_until_created_at_plus_min_hold() {
    let Some(db) = Db::start().await else { return };
    let lm = db.lm().await;
    let g = lm
        .lock("once")
        .ttl(Duration::from_secs(60))
        .min_hold(Duration::from_secs(4))
        .acquire()
        .await
        .unwrap();
    let token = g.token().clone();
    g.release().await.unwrap();
    let exact: bool = db
        .sql
        .query_one(
            "SELECT locked_until - created_at = interval '4 seconds' FROM lockmgr_lock WHERE name = 'once'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(exact, "kept row does not end at created_at + min_hold");
    let info = lm.inspect("once").await.unwrap().unwrap();
    assert!(info.released && !info.expired, "{info:?}");
    assert!(lm.lock("once").try_acquire().await.unwrap().is_none());
    let again = lm
        .store()
        .release(&ns(), &name("once"), &token, None)
        .await
        .unwrap();
    assert_eq!(again, Released::NotHeld);
    let g = lm
        .lock("once")
        .wait(locksmith::Wait::For(Duration::from_secs(10)))
        .acquire()
        .await
        .expect("free after min_hold");
    g.release().await.unwrap();
}

/// A Python process that deletes locksmith's expired row and inserts its own (same host
/// name and pid even) owns the new row: the stale side row does not make it locksmith's,
/// and the old guard can neither release nor extend it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_takeover_after_expiry_is_not_mistaken_for_ours() {
    let Some(db) = Db::start().await else { return };
    let lm = db.lm().await;
    let g = lm
        .lock("batch")
        .owner("same-host")
        .ttl(Duration::from_millis(300))
        .renew(Renew::Off)
        .acquire()
        .await
        .unwrap();
    let token = g.token().clone();
    tokio::time::sleep(Duration::from_millis(400)).await;
    // What django-lockmgr's clean_locks + get_lock do, with the very same locked_by/pid.
    db.sql
        .execute(
            "DELETE FROM lockmgr_lock WHERE locked_until < clock_timestamp()",
            &[],
        )
        .await
        .unwrap();
    let pid = i32::try_from(std::process::id()).unwrap();
    db.python_lock(
        "batch",
        Some("same-host"),
        Some(pid),
        "now() + interval '10 minutes'",
    )
    .await;
    assert_eq!(
        db.rows("locksmith_lockmgr_owner").await,
        1,
        "the stale side row"
    );
    let store = lm.store();
    assert!(
        store
            .held_by(&ns(), &name("batch"), &token)
            .await
            .unwrap()
            .is_none()
    );
    let extended = store
        .extend(
            &ns(),
            &name("batch"),
            &token,
            ExtendMode::Set(Duration::from_secs(5)),
        )
        .await
        .unwrap();
    assert_eq!(extended, Extended::NotHeld);
    let err = g.release().await.unwrap_err();
    assert!(
        matches!(err, Error::NotHeld { .. } | Error::Lost { .. }),
        "{err}"
    );
    let info = lm.inspect("batch").await.unwrap().unwrap();
    assert_eq!(info.host, None, "read as locksmith's: {info:?}");
    assert!(!info.expired && !info.released);
    assert!(
        db.until_text("batch").await.is_some(),
        "the Python row was removed"
    );
    assert!(lm.lock("batch").try_acquire().await.unwrap().is_none());
}

/// With `?retain=0s`, a grant sweeps expired rows (Python's too) and side rows that match
/// no lock row, in the background.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_is_swept_on_write() {
    let Some(db) = Db::start().await else { return };
    let lm = db.lm().await;
    // A side row left behind by a lock a Python process replaced.
    let g = lm
        .lock("replaced")
        .ttl(Duration::from_millis(200))
        .renew(Renew::Off)
        .acquire()
        .await
        .unwrap();
    let _ = g.leak();
    tokio::time::sleep(Duration::from_millis(300)).await;
    db.sql
        .execute("DELETE FROM lockmgr_lock WHERE name = 'replaced'", &[])
        .await
        .unwrap();
    db.python_lock("replaced", Some("py"), Some(1), "now() + interval '1 hour'")
        .await;
    db.python_lock("stale", Some("py"), Some(1), "now() - interval '1 minute'")
        .await;
    drop(lm);
    let lm = Locksmith::connect(&format!("{}&retain=0s", db.url()))
        .await
        .unwrap();
    let g = lm.lock("fresh").acquire().await.unwrap();
    let mut swept = false;
    for _ in 0..100 {
        let stale = db.until_text("stale").await.is_some();
        let side: i64 = db
            .sql
            .query_one(
                "SELECT count(*) FROM locksmith_lockmgr_owner WHERE name = 'replaced'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if !stale && side == 0 {
            swept = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(swept, "garbage not swept");
    assert!(
        db.until_text("replaced").await.is_some(),
        "a live Python lock was swept"
    );
    assert!(lm.inspect("fresh").await.unwrap().is_some());
    g.release().await.unwrap();
}

/// A "Python peer" inserting a row (as django-lockmgr's `get_lock` does, relying on the
/// primary key) races locksmith's grant of the same fresh name, and the takeover of the
/// same expired row: exactly one of them gets each lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_and_locksmith_racing_for_one_name_one_wins() {
    let Some(db) = Db::start().await else { return };
    let lm = db.lm().await;
    let (python, conn) = tokio_postgres::connect(&db.server.url("postgres"), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let insert = "INSERT INTO lockmgr_lock (name, locked_by, lock_process, locked_until, created_at, updated_at)
                  VALUES ($1, 'py', 1, now() + interval '1 hour', now(), now())";
    let (mut python_won, mut locksmith_won) = (0, 0);
    for round in 0..40 {
        let name = format!("race-{round}");
        if round % 2 == 1 {
            // An expired row both may take over: Python deletes it first (clean_locks).
            db.python_lock(&name, Some("old"), Some(1), "now() - interval '1 second'")
                .await;
        }
        let py = async {
            if round % 2 == 1 {
                python
                    .execute(
                        "DELETE FROM lockmgr_lock WHERE name = $1 AND locked_until < now()",
                        &[&name],
                    )
                    .await
                    .unwrap();
            }
            python.execute(insert, &[&name]).await.is_ok()
        };
        let ours = async { lm.lock(name.as_str()).try_acquire().await.unwrap() };
        let (py, ours) = tokio::join!(py, ours);
        assert!(
            py != ours.is_some(),
            "round {round}: python {py}, locksmith {}",
            ours.is_some()
        );
        let by: Option<String> = db
            .sql
            .query_one(
                "SELECT locked_by FROM lockmgr_lock WHERE name = $1",
                &[&name],
            )
            .await
            .unwrap()
            .get(0);
        if py {
            python_won += 1;
            assert_eq!(by.as_deref(), Some("py"));
        } else {
            locksmith_won += 1;
            assert_ne!(by.as_deref(), Some("py"));
            let _ = ours.map(|g| g.leak());
        }
    }
    eprintln!("python won {python_won}, locksmith won {locksmith_won}");
}
