//! The MySQL/MariaDB store's django-lockmgr layout (`?layout=django-lockmgr`) against rows
//! written the way Django writes them (a Python peer's locks), hostile rows, the usual
//! case-insensitive collation, and what a locksmith row looks like to Django. Each test
//! starts a fresh MariaDB server with Django's table (`utf8mb4_general_ci`, MariaDB's default
//! for `utf8mb4`, unless it says otherwise).
#![cfg(feature = "mysql")]

use std::sync::Arc;
use std::time::Duration;

use locksmith::store::{Claim, ExtendMode, Extended, Grant, Released};
use locksmith::{LockName, Locksmith, Namespace, Renew, SetAction, SetPolicy, Token};
use locksmith_testkit::servers::mariadb::{
    self, COLLATION_BIN, COLLATION_CI, LOCKMGR_DATABASE, MariaDb,
};

struct Db {
    server: Arc<MariaDb>,
    url: String,
}

impl Db {
    /// SQL as root in Django's database; the client's tab-separated output.
    fn sql(&self, sql: &str) -> String {
        self.server
            .sql(&format!("USE {LOCKMGR_DATABASE}; {sql}"))
            .unwrap()
            .trim_end()
            .to_string()
    }

    /// Django's row of `name` (exact), as `locked_by|lock_process|locked_until|created_at|updated_at`.
    fn row(&self, name: &str) -> Option<String> {
        let out = self.sql(&format!(
            "SELECT CONCAT_WS('|', IFNULL(locked_by, 'NULL'), IFNULL(lock_process, 'NULL'), IFNULL(locked_until, 'NULL'), created_at, updated_at) FROM lockmgr_lock WHERE CAST(name AS BINARY) = CAST('{name}' AS BINARY)"
        ));
        (!out.is_empty()).then_some(out)
    }

    fn count(&self, sql: &str) -> i64 {
        self.sql(sql).parse().unwrap()
    }

    fn identity(&self) -> String {
        format!(
            "mysql://127.0.0.1:{}/{LOCKMGR_DATABASE}?layout=django-lockmgr",
            self.server.port()
        )
    }
}

async fn db(collation: &'static str) -> Option<Db> {
    let server = match tokio::task::spawn_blocking(MariaDb::start).await.unwrap() {
        Ok(s) => Arc::new(s),
        Err(why) => {
            locksmith_testkit::skip_store("mysql", &why);
            return None;
        }
    };
    let url = mariadb::lockmgr_database(&server, collation).unwrap();
    Some(Db { server, url })
}

/// A lock as django-lockmgr 2.0's `get_lock` writes it (`Lock.objects.create`), with the
/// database's clock standing in for Python's `timezone.now()`.
fn python_lock(d: &Db, name: &str, secs: i64) {
    d.sql(&format!(
        "INSERT INTO lockmgr_lock (name, locked_by, lock_process, locked_until, created_at, updated_at)
         VALUES ('{name}', 'web-1.example', 4242, UTC_TIMESTAMP(6) + INTERVAL {secs} SECOND, UTC_TIMESTAMP(6), UTC_TIMESTAMP(6))"
    ));
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn ns() -> Namespace {
    Namespace::default()
}

fn name(n: &str) -> LockName {
    LockName::new(n).unwrap()
}

fn claim(n: &str, ttl: Option<Duration>) -> Claim {
    Claim::new(name(n), Token::new(), "rust", "host-a", 7, ttl)
}

/// A Python peer's lock: Held with its owner and pid, never released, extended or held by
/// any locksmith token, but `clear` removes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_lock_is_held_and_never_ours() {
    let Some(d) = db(COLLATION_CI).await else {
        return;
    };
    python_lock(&d, "job", 600);
    let before = d.row("job").unwrap();
    let lm = Locksmith::connect(&d.url).await.unwrap();
    let info = lm.inspect("job").await.unwrap().expect("the row");
    assert_eq!(info.owner.as_deref(), Some("web-1.example"));
    assert_eq!(info.pid, Some(4242));
    assert_eq!((info.host, info.fence), (None, None));
    assert!(!info.expired && !info.released);
    let left = info.expires_in.unwrap();
    assert!(
        left > Duration::from_secs(590) && left <= Duration::from_secs(600),
        "{left:?}"
    );
    assert!(lm.lock("job").try_acquire().await.unwrap().is_none());

    let store = lm.store();
    let token = Token::new();
    assert_eq!(
        store
            .release(&ns(), &name("job"), &token, None)
            .await
            .unwrap(),
        Released::NotHeld
    );
    assert_eq!(
        store
            .extend(&ns(), &name("job"), &token, ExtendMode::Set(ms(1)))
            .await
            .unwrap(),
        Extended::NotHeld
    );
    assert!(
        store
            .held_by(&ns(), &name("job"), &token)
            .await
            .unwrap()
            .is_none()
    );
    match store
        .try_acquire(&ns(), &claim("job", Some(ms(5000))))
        .await
        .unwrap()
    {
        Grant::Held(info) => assert_eq!(info.owner.as_deref(), Some("web-1.example")),
        other => panic!("{other:?}"),
    }
    assert_eq!(d.row("job").unwrap(), before, "the Python row was changed");

    let cleared = lm.clear(["job"]).await.unwrap();
    assert_eq!(cleared, vec![("job".to_string(), true)]);
    assert_eq!(d.row("job"), None);
    assert!(lm.lock("job").try_acquire().await.unwrap().is_some());
}

/// `set_locks` renews a Python peer's lock as django-lockmgr's `set_lock` does: only
/// `locked_until` (never earlier) and `updated_at` change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_locks_renews_python_locks_never_shortening() {
    let Some(d) = db(COLLATION_CI).await else {
        return;
    };
    python_lock(&d, "long", 3600);
    python_lock(&d, "short", 10);
    let long_before = d.row("long").unwrap();
    let short_before = d.row("short").unwrap();
    let lm = Locksmith::connect(&d.url).await.unwrap();
    let out = lm
        .set_locks(
            ["long", "short"],
            SetPolicy::default().ttl(Duration::from_secs(600)),
        )
        .await
        .unwrap();
    let actions: Vec<SetAction> = out.statuses.iter().map(|s| s.action).collect();
    assert_eq!(actions, [SetAction::Renewed, SetAction::Renewed]);
    let field = |row: &str, i: usize| row.split('|').nth(i).unwrap().to_string();
    let long_after = d.row("long").unwrap();
    // never shortened: 1 h left stays 1 h (updated_at may move)
    assert_eq!(field(&long_after, 2), field(&long_before, 2));
    let short_after = d.row("short").unwrap();
    assert!(
        field(&short_after, 2) > field(&short_before, 2),
        "{short_after}"
    );
    for i in [0, 1, 3] {
        assert_eq!(
            field(&short_after, i),
            field(&short_before, i),
            "column {i} changed"
        );
    }
    let left = d.count(
        "SELECT TIMESTAMPDIFF(SECOND, UTC_TIMESTAMP(6), locked_until) FROM lockmgr_lock WHERE name = 'short'",
    );
    assert!((590..=600).contains(&left), "{left}");
    // still the Python peer's lock, not ours
    let info = lm.inspect("short").await.unwrap().unwrap();
    assert_eq!(info.owner.as_deref(), Some("web-1.example"));
    assert!(out.created_tokens.is_empty());
}

/// Rows written by hand: NULL holder fields, a NULL (never expiring) or unreadable
/// (zero-date) `locked_until` are held; far past is expired and taken over; far future is
/// held; nothing panics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_rows() {
    let Some(d) = db(COLLATION_CI).await else {
        return;
    };
    d.sql(
        "SET SESSION sql_mode = '';
         INSERT INTO lockmgr_lock (name, locked_by, lock_process, locked_until, created_at, updated_at) VALUES
          ('nulls', NULL, NULL, NULL, UTC_TIMESTAMP(6), UTC_TIMESTAMP(6)),
          ('negative', 'x', -5, UTC_TIMESTAMP(6) + INTERVAL 1 HOUR, UTC_TIMESTAMP(6), UTC_TIMESTAMP(6)),
          ('past', 'old', 1, '1000-01-01 00:00:00', '1000-01-01 00:00:00', '1000-01-01 00:00:00'),
          ('future', 'late', 2, '9999-12-31 23:59:59.999999', UTC_TIMESTAMP(6), UTC_TIMESTAMP(6)),
          ('zero', 'z', 3, '0000-00-00 00:00:00', '0000-00-00 00:00:00', '0000-00-00 00:00:00')",
    );
    let lm = Locksmith::connect(&d.url).await.unwrap();
    let nulls = lm.inspect("nulls").await.unwrap().unwrap();
    assert_eq!(
        (nulls.owner, nulls.pid, nulls.expires_in),
        (None, None, None)
    );
    assert!(!nulls.expired);
    let negative = lm.inspect("negative").await.unwrap().unwrap();
    assert_eq!(negative.pid, None);
    let zero = lm.inspect("zero").await.unwrap().unwrap();
    assert_eq!(
        zero.expires_in, None,
        "an unreadable expiry reads as never expiring"
    );
    assert!(!zero.expired);
    let future = lm.inspect("future").await.unwrap().unwrap();
    assert!(future.expires_in.unwrap() > Duration::from_secs(86400 * 365 * 7000));
    let past = lm.inspect("past").await.unwrap().unwrap();
    assert!(past.expired);
    for held in ["nulls", "negative", "zero", "future"] {
        assert!(
            lm.lock(held).try_acquire().await.unwrap().is_none(),
            "{held} was taken over"
        );
    }
    let g = lm
        .lock("past")
        .owner("taker")
        .try_acquire()
        .await
        .unwrap()
        .expect("a row expired in year 1000 is free");
    assert!(d.row("past").unwrap().starts_with("taker|"));
    g.release().await.unwrap();
    assert_eq!(d.row("past"), None);
    // the expired ones are listed as such, the rest as held
    let all = lm
        .list(locksmith::ListQuery::all().expired(locksmith::Expired::Include))
        .await
        .unwrap();
    let names: Vec<&str> = all.items.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["future", "negative", "nulls", "zero"]);
    // a lease past year 9999 (the client caps TTLs at 100 years; the store checks anyway)
    // is refused clearly, and writes nothing
    let far = claim("far", Some(Duration::from_secs(9000 * 365 * 86400)));
    let err = lm.store().try_acquire(&ns(), &far).await.unwrap_err();
    assert!(err.to_string().contains("9999"), "{err}");
    assert_eq!(d.row("far"), None);
}

/// Names of 100 bytes fit Django's `varchar(100)`; 101 are refused with an error that says
/// so, through the client and through the store directly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_of_100_bytes() {
    let Some(d) = db(COLLATION_CI).await else {
        return;
    };
    let lm = Locksmith::connect(&d.url).await.unwrap();
    let hundred = "\u{e9}".repeat(50); // 100 bytes, 50 characters
    let g = lm.lock(&hundred).try_acquire().await.unwrap().unwrap();
    assert!(d.row(&hundred).is_some());
    g.release().await.unwrap();
    let ascii = "a".repeat(100);
    let _held = lm.lock(&ascii).try_acquire().await.unwrap().unwrap();
    let long = format!("{}x", "a".repeat(100));
    let err = lm.lock(&long).try_acquire().await.unwrap_err();
    assert!(err.to_string().contains("at most 100 bytes"), "{err}");
    let err = lm
        .store()
        .try_acquire(&ns(), &claim(&long, Some(ms(1000))))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("varchar(100)"), "{err}");
    assert_eq!(d.count("SELECT COUNT(*) FROM lockmgr_lock"), 1);
}

/// Without Django's table the layout refuses to open, naming the migration; a table dropped
/// later gives the same hint; locksmith never creates it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_table_names_the_migration() {
    let Some(d) = db(COLLATION_CI).await else {
        return;
    };
    d.sql("DROP TABLE lockmgr_lock");
    let err = Locksmith::connect(&d.url).await.unwrap_err().to_string();
    assert!(err.contains("migrate lockmgr"), "{err}");
    assert!(!err.contains(mariadb::PASSWORD), "{err}");
    assert_eq!(
        d.count("SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'lockmgr_lock'"),
        0
    );
    d.sql(locksmith_testkit::lockmgr::MYSQL[0]);
    let lm = Locksmith::connect(&d.url).await.unwrap();
    d.sql("DROP TABLE lockmgr_lock");
    let err = lm.lock("x").try_acquire().await.unwrap_err().to_string();
    assert!(err.contains("migrate lockmgr"), "{err}");
}

/// The layout's URL options: `?namespace=` and `?table=` refused with what to do instead,
/// an unknown layout listing the valid one, a password never shown.
#[tokio::test]
async fn url_options() {
    let base = "mysql://u:Secret-pw@127.0.0.1:1/django?layout=django-lockmgr";
    for (extra, says) in [
        ("&namespace=billing", "namespaces"),
        ("&table=locks", "?table="),
        ("&prefix=x", "unknown parameter"),
    ] {
        let err = Locksmith::connect(&format!("{base}{extra}"))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains(says), "{extra}: {err}");
        assert!(!err.contains("Secret-pw"), "{err}");
    }
    let err = Locksmith::connect("mysql://u:Secret-pw@127.0.0.1:1/django?layout=django")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("layout=django-lockmgr"), "{err}");
    assert!(!err.contains("Secret-pw"), "{err}");
    let lm = Locksmith::connect("memory://").await.unwrap();
    assert!(lm.with_namespace("x").is_ok()); // the memory store has namespaces; ours not:
    assert!(!locksmith_testkit::lockmgr::capabilities().namespaces);
}

/// A locksmith lock looks like Django's: `locked_by` the owner, `lock_process` the pid,
/// `created_at = updated_at`, `locked_until = created_at + ttl` exactly; an extension moves
/// `locked_until` and `updated_at` only; a lock that never expires has NULL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locksmith_rows_look_like_djangos() {
    let Some(d) = db(COLLATION_CI).await else {
        return;
    };
    let lm = Locksmith::connect(&d.url).await.unwrap();
    let g = lm
        .lock("job")
        .owner("worker-7")
        .ttl(Duration::from_millis(30_250))
        .renew(Renew::Off)
        .try_acquire()
        .await
        .unwrap()
        .unwrap();
    let row = d.row("job").unwrap();
    let f: Vec<&str> = row.split('|').collect();
    assert_eq!(f[0], "worker-7");
    assert_eq!(f[1], std::process::id().to_string());
    assert_eq!(f[3], f[4], "created_at = updated_at");
    assert_eq!(f[3].len(), "2026-12-02 09:00:00.123456".len(), "{row}");
    assert_eq!(
        d.count("SELECT TIMESTAMPDIFF(MICROSECOND, created_at, locked_until) FROM lockmgr_lock WHERE name = 'job'"),
        30_250_000
    );
    let skew = d.count(
        "SELECT ABS(TIMESTAMPDIFF(SECOND, created_at, UTC_TIMESTAMP(6))) FROM lockmgr_lock WHERE name = 'job'",
    );
    assert!(
        skew <= 5,
        "created_at is {skew} s from the server's UTC clock"
    );
    let info = lm.inspect("job").await.unwrap().unwrap();
    assert!(info.host.is_some(), "the side row keeps the host");
    assert_eq!(info.owner.as_deref(), Some("worker-7"));
    tokio::time::sleep(ms(20)).await;
    g.extend(Duration::from_secs(100)).await.unwrap();
    let after = d.row("job").unwrap();
    let a: Vec<&str> = after.split('|').collect();
    assert_eq!((a[0], a[1], a[3]), (f[0], f[1], f[3]));
    assert!(a[4] > f[4], "updated_at did not move: {after}");
    assert!(a[2] > f[2]);
    assert!(g.is_held());
    g.release().await.unwrap();
    assert_eq!(d.row("job"), None);
    assert_eq!(d.count("SELECT COUNT(*) FROM locksmith_lockmgr_owner"), 0);

    let g = lm
        .lock("forever")
        .no_expiry()
        .try_acquire()
        .await
        .unwrap()
        .unwrap();
    assert!(d.row("forever").unwrap().contains("|NULL|"));
    g.release().await.unwrap();
}

/// `min_hold`: a release before `created_at + min_hold` keeps the row until exactly then,
/// held by nobody; it blocks everyone (Python peers see an ordinary lock) until it passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_hold_keeps_the_row() {
    let Some(d) = db(COLLATION_CI).await else {
        return;
    };
    let lm = Locksmith::connect(&d.url).await.unwrap();
    let g = lm
        .lock("daily")
        .ttl(Duration::from_secs(30))
        .min_hold(Duration::from_secs(5))
        .renew(Renew::Off)
        .try_acquire()
        .await
        .unwrap()
        .unwrap();
    g.release().await.unwrap();
    assert_eq!(
        d.count("SELECT TIMESTAMPDIFF(MICROSECOND, created_at, locked_until) FROM lockmgr_lock WHERE name = 'daily'"),
        5_000_000
    );
    assert_eq!(
        d.count(
            "SELECT COUNT(*) FROM locksmith_lockmgr_owner WHERE name = 'daily' AND token IS NULL"
        ),
        1
    );
    let info = lm.inspect("daily").await.unwrap().unwrap();
    assert!(info.released && !info.expired);
    assert_eq!(info.min_hold, Some(Duration::from_secs(5)));
    assert!(lm.lock("daily").try_acquire().await.unwrap().is_none());
    locksmith::store::mysql::step_clock(&d.identity(), 6_000_000);
    assert!(lm.lock("daily").try_acquire().await.unwrap().is_some());
    locksmith::store::mysql::step_clock(&d.identity(), -6_000_000);
}

/// A Python peer that deletes locksmith's expired row and writes its own — even with the
/// same `locked_by` and `lock_process` — owns the lock: the old side row is not mistaken for
/// ours (the old token neither releases nor extends it) and is removed by the next write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_takeover_is_not_mistaken_for_ours() {
    let Some(d) = db(COLLATION_CI).await else {
        return;
    };
    let lm = Locksmith::connect(&d.url).await.unwrap();
    let g = lm
        .lock("job")
        .owner("web-1.example")
        .ttl(ms(200))
        .renew(Renew::Off)
        .try_acquire()
        .await
        .unwrap()
        .unwrap();
    let token = g.leak();
    tokio::time::sleep(ms(400)).await;
    let pid = std::process::id();
    // django-lockmgr: clean_locks() deletes the expired row, then get_lock creates its own
    d.sql(&format!(
        "DELETE FROM lockmgr_lock WHERE locked_until < UTC_TIMESTAMP(6);
         INSERT INTO lockmgr_lock (name, locked_by, lock_process, locked_until, created_at, updated_at)
         VALUES ('job', 'web-1.example', {pid}, UTC_TIMESTAMP(6) + INTERVAL 600 SECOND, UTC_TIMESTAMP(6) + INTERVAL 1 SECOND, UTC_TIMESTAMP(6))"
    ));
    let before = d.row("job").unwrap();
    let store = lm.store();
    assert!(
        store
            .held_by(&ns(), &name("job"), &token)
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        store
            .extend(&ns(), &name("job"), &token, ExtendMode::Set(ms(1)))
            .await
            .unwrap(),
        Extended::NotHeld
    );
    assert_eq!(
        store
            .release(&ns(), &name("job"), &token, None)
            .await
            .unwrap(),
        Released::NotHeld
    );
    assert_eq!(d.row("job").unwrap(), before);
    assert!(lm.inspect("job").await.unwrap().unwrap().host.is_none());
    assert_eq!(d.count("SELECT COUNT(*) FROM locksmith_lockmgr_owner"), 0);
}

/// On a case-insensitive database (Django's usual), names the collation cannot tell apart
/// are one row: the twin blocks a grant (and is named in the answer), reads compare exactly,
/// `list` is in byte order, one call naming two twins is refused; an expired twin is taken
/// over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case_insensitive_collation() {
    let Some(d) = db(COLLATION_CI).await else {
        return;
    };
    let lm = Locksmith::connect(&d.url).await.unwrap();
    let g = lm
        .lock("Lock")
        .ttl(ms(300))
        .renew(Renew::Off)
        .try_acquire()
        .await
        .unwrap()
        .unwrap();
    for twin in ["lock", "LOCK", "Lock ", "l\u{f6}ck"] {
        match lm
            .store()
            .try_acquire(&ns(), &claim(twin, Some(ms(1000))))
            .await
            .unwrap()
        {
            Grant::Held(info) => assert_eq!(info.name, "Lock", "{twin:?}"),
            other => panic!("{twin:?}: {other:?}"),
        }
        assert!(lm.inspect(twin).await.unwrap().is_none(), "{twin:?}");
        assert_eq!(
            lm.clear([twin]).await.unwrap(),
            vec![(twin.to_string(), false)]
        );
    }
    assert!(d.row("Lock").is_some());
    let err = lm.acquire_all(["a", "A"]).acquire().await.unwrap_err();
    assert!(err.to_string().contains("one lock"), "{err}");
    assert_eq!(d.count("SELECT COUNT(*) FROM lockmgr_lock"), 1);

    // after the twin expires, a grant takes the row over under its own spelling
    let _ = g.leak();
    tokio::time::sleep(ms(500)).await;
    let g2 = lm
        .lock("lock")
        .try_acquire()
        .await
        .unwrap()
        .expect("expired twin");
    assert!(d.row("lock").is_some());
    assert_eq!(d.row("Lock"), None);
    g2.release().await.unwrap();

    for n in ["b", "C", "a", "\u{e9}", "Z"] {
        lm.lock(n)
            .no_expiry()
            .try_acquire()
            .await
            .unwrap()
            .unwrap()
            .leak();
    }
    let page = lm.list(locksmith::ListQuery::all()).await.unwrap();
    let names: Vec<&str> = page.items.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["C", "Z", "a", "b", "\u{e9}"]);
}

/// On a byte-exact database every name is its own row, as in locksmith's own tables.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_collation_keeps_names_apart() {
    let Some(d) = db(COLLATION_BIN).await else {
        return;
    };
    let lm = Locksmith::connect(&d.url).await.unwrap();
    let guards = lm.acquire_all(["a", "A", "a "]).acquire().await.unwrap();
    assert_eq!(d.count("SELECT COUNT(*) FROM lockmgr_lock"), 3);
    for g in guards {
        g.release().await.unwrap();
    }
}

/// Garbage: rows expired longer than `?retain=` and side rows whose lock row is gone are
/// swept by a later write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_is_swept() {
    let Some(d) = db(COLLATION_CI).await else {
        return;
    };
    d.sql(
        "INSERT INTO lockmgr_lock (name, locked_by, lock_process, locked_until, created_at, updated_at)
         VALUES ('stale', 'x', 1, UTC_TIMESTAMP(6) - INTERVAL 2 HOUR, UTC_TIMESTAMP(6) - INTERVAL 3 HOUR, UTC_TIMESTAMP(6) - INTERVAL 3 HOUR),
                ('recent', 'x', 1, UTC_TIMESTAMP(6) - INTERVAL 1 MINUTE, UTC_TIMESTAMP(6) - INTERVAL 2 MINUTE, UTC_TIMESTAMP(6) - INTERVAL 2 MINUTE)",
    );
    let lm = Locksmith::connect(&d.url).await.unwrap();
    d.sql(
        "INSERT INTO locksmith_lockmgr_owner (name, token, host, min_hold, created_at, locked_by, lock_process)
         VALUES ('ghost', 'tok', 'h', NULL, UTC_TIMESTAMP(6), 'x', 1)",
    );
    let g = lm.lock("trigger").try_acquire().await.unwrap().unwrap();
    let mut swept = false;
    for _ in 0..50 {
        tokio::time::sleep(ms(100)).await;
        if d.row("stale").is_none()
            && d.count("SELECT COUNT(*) FROM locksmith_lockmgr_owner WHERE name = 'ghost'") == 0
        {
            swept = true;
            break;
        }
    }
    assert!(
        swept,
        "the stale row or the orphaned side row was not swept"
    );
    assert!(
        d.row("recent").is_some(),
        "a row expired less than retain ago was swept"
    );
    g.release().await.unwrap();
}

/// A Django database in a character set that cannot hold a name (latin1 and an emoji): a
/// clear error that names the fix, nothing written, and other names still work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_the_table_cannot_store() {
    let Some(d) = db(COLLATION_CI).await else {
        return;
    };
    d.sql(&format!(
        "DROP TABLE lockmgr_lock; {} DEFAULT CHARSET = latin1",
        locksmith_testkit::lockmgr::MYSQL[0]
    ));
    let lm = Locksmith::connect(&d.url).await.unwrap();
    let err = lm.lock("\u{1f512}").try_acquire().await.unwrap_err();
    assert!(err.to_string().contains("utf8mb4"), "{err}");
    assert!(!err.is_retryable());
    assert_eq!(d.count("SELECT COUNT(*) FROM lockmgr_lock"), 0);
    let g = lm.lock("plain").try_acquire().await.unwrap().unwrap();
    g.release().await.unwrap();
}
