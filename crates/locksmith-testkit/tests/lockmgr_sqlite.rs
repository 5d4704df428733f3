//! The django-lockmgr layout of the SQLite store (`?layout=django-lockmgr`), row by row:
//! rows written by hand the way Django writes them (a Python-held lock), hostile rows,
//! what locksmith's own rows look like to Django, `min_hold`, side rows of locks a Python
//! peer took over, garbage, bad URLs, and the Django file left as Django keeps it. The
//! real-Python interop tests live elsewhere.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use locksmith::{Error, Expired, ListQuery, Locksmith, Renew, SetAction, SetPolicy, Token, Wait};
use rusqlite::Connection;
use rusqlite::types::Value;

/// A Django project's database holding `lockmgr_lock` as its migration makes it.
struct Db {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
}

impl Db {
    fn new() -> Db {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite3");
        let conn = Connection::open(&path).unwrap();
        // Another table of the project, as a real Django database has.
        conn.execute_batch(
            r#"CREATE TABLE "django_migrations" ("id" integer NOT NULL PRIMARY KEY AUTOINCREMENT, "app" varchar(255) NOT NULL, "name" varchar(255) NOT NULL, "applied" datetime NOT NULL)"#,
        )
        .unwrap();
        for ddl in locksmith_testkit::lockmgr::SQLITE {
            conn.execute_batch(ddl).unwrap();
        }
        Db { _dir: dir, path }
    }

    fn url(&self) -> String {
        format!("sqlite://{}?layout=django-lockmgr", self.path.display())
    }

    async fn lm(&self) -> Locksmith {
        Locksmith::connect(&self.url()).await.unwrap()
    }

    fn conn(&self) -> Connection {
        let conn = Connection::open(&self.path).unwrap();
        conn.busy_timeout(Duration::from_secs(5)).unwrap();
        conn
    }

    /// Writes a row as django-lockmgr's `get_lock` does (`created_at = updated_at`).
    fn python_lock(
        &self,
        name: &str,
        locked_by: Value,
        lock_process: Value,
        created_at: Value,
        locked_until: Value,
    ) {
        self.conn()
            .execute(
                "INSERT INTO lockmgr_lock (name, locked_by, lock_process, created_at, updated_at, locked_until)
                 VALUES (?1, ?2, ?3, ?4, ?4, ?5)",
                rusqlite::params![name, locked_by, lock_process, created_at, locked_until],
            )
            .unwrap();
    }

    /// Django's row of `name`, column by column.
    fn row(&self, name: &str) -> Option<DjangoRow> {
        use rusqlite::OptionalExtension;
        self.conn()
            .query_row(
                "SELECT locked_by, lock_process, created_at, updated_at, locked_until
                 FROM lockmgr_lock WHERE name = ?1",
                [name],
                |r| {
                    Ok(DjangoRow {
                        locked_by: r.get(0)?,
                        lock_process: r.get(1)?,
                        created_at: r.get(2)?,
                        updated_at: r.get(3)?,
                        locked_until: r.get(4)?,
                    })
                },
            )
            .optional()
            .unwrap()
    }

    fn count(&self, sql: &str) -> i64 {
        self.conn().query_row(sql, [], |r| r.get(0)).unwrap()
    }
}

#[derive(Debug, Clone, PartialEq)]
struct DjangoRow {
    locked_by: Value,
    lock_process: Value,
    created_at: Value,
    updated_at: Value,
    locked_until: Value,
}

fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
}

/// `us` as Django's `str(datetime)` writes it into SQLite (naive UTC, six digits).
fn django_text(us: i64) -> String {
    let conn = Connection::open_in_memory().unwrap();
    let secs: String = conn
        .query_row(
            "SELECT strftime('%Y-%m-%d %H:%M:%S', ?1, 'unixepoch')",
            [us.div_euclid(1_000_000)],
            |r| r.get(0),
        )
        .unwrap();
    format!("{secs}.{:06}", us.rem_euclid(1_000_000))
}

/// Reads Django's text back to µs, exactly.
fn micros_of(text: &Value) -> i64 {
    let Value::Text(t) = text else {
        panic!("not text: {text:?}")
    };
    assert_eq!(
        t.len(),
        26,
        "Django's format YYYY-MM-DD HH:MM:SS.ffffff: {t}"
    );
    let b = t.as_bytes();
    for (i, c) in b.iter().enumerate() {
        let want_digit = !matches!(i, 4 | 7 | 10 | 13 | 16 | 19);
        assert_eq!(c.is_ascii_digit(), want_digit, "{t}");
    }
    assert_eq!(
        (b[4], b[7], b[10], b[13], b[16], b[19]),
        (b'-', b'-', b' ', b':', b':', b'.')
    );
    let conn = Connection::open_in_memory().unwrap();
    let secs: i64 = conn
        .query_row("SELECT unixepoch(?1)", [&t[..19]], |r| r.get(0))
        .unwrap();
    secs * 1_000_000 + t[20..].parse::<i64>().unwrap()
}

fn text(s: &str) -> Value {
    Value::Text(s.to_string())
}

fn in_secs(s: i64) -> Value {
    text(&django_text(now_micros() + s * 1_000_000))
}

#[tokio::test]
async fn a_python_held_lock_is_held_renewed_never_shortened_and_cleared() {
    let db = Db::new();
    db.python_lock(
        "report",
        text("web-1"),
        Value::Integer(4242),
        in_secs(-5),
        in_secs(600),
    );
    let before = db.row("report").unwrap();
    let lm = db.lm().await;
    assert!(lm.lock("report").try_acquire().await.unwrap().is_none());
    let info = lm.inspect("report").await.unwrap().unwrap();
    assert_eq!(info.owner.as_deref(), Some("web-1"));
    assert_eq!(info.pid, Some(4242));
    assert_eq!((info.host, info.fence), (None, None));
    assert!(!info.expired && !info.released);
    let left = info.expires_in.unwrap();
    assert!(
        left > Duration::from_secs(590) && left <= Duration::from_secs(600),
        "{left:?}"
    );
    let held = info.held_for.unwrap();
    assert!(
        held >= Duration::from_secs(5) && held < Duration::from_secs(60),
        "{held:?}"
    );
    match lm.lock("report").wait(Wait::No).acquire().await {
        Err(Error::Locked { holder, .. }) => assert_eq!(holder.owner.as_deref(), Some("web-1")),
        other => panic!("expected Locked: {other:?}"),
    }
    // No locksmith token holds it: resuming, releasing or extending it with one fails.
    let err = lm.resume("report", Token::new()).await.unwrap_err();
    assert!(err.is_not_held(), "{err:?}");
    assert_eq!(db.row("report").as_ref(), Some(&before), "untouched");
    // set_locks renews it whoever holds it, and never shortens it (like django-lockmgr).
    let out = lm
        .set_locks(
            ["report"],
            SetPolicy::default().ttl(Duration::from_secs(60)),
        )
        .await
        .unwrap();
    assert_eq!(out.statuses[0].action, SetAction::Renewed);
    assert!(out.created_tokens.is_empty());
    assert_eq!(db.row("report").unwrap().locked_until, before.locked_until);
    let out = lm
        .set_locks(
            ["report"],
            SetPolicy::default().ttl(Duration::from_secs(3600)),
        )
        .await
        .unwrap();
    assert_eq!(out.statuses[0].action, SetAction::Renewed);
    let after = db.row("report").unwrap();
    let (until, updated) = (micros_of(&after.locked_until), micros_of(&after.updated_at));
    assert_eq!(
        until - updated,
        3_600_000_000,
        "renewed to the store's now + ttl"
    );
    assert!(until > micros_of(&before.locked_until));
    assert_eq!(
        (&after.locked_by, &after.lock_process, &after.created_at),
        (&before.locked_by, &before.lock_process, &before.created_at),
        "a renewal changes only locked_until and updated_at"
    );
    assert_eq!(db.count("SELECT count(*) FROM locksmith_lockmgr_owner"), 0);
    // clear removes it, as django-lockmgr's clear_lock does.
    assert_eq!(
        lm.clear(["report"]).await.unwrap(),
        [("report".to_string(), true)]
    );
    assert!(db.row("report").is_none());
    assert!(lm.lock("report").try_acquire().await.unwrap().is_some());
}

#[tokio::test]
async fn a_locksmith_row_looks_like_djangos() {
    let db = Db::new();
    let lm = db.lm().await;
    let g = lm
        .lock("billing")
        .owner("billing-worker")
        .ttl(Duration::from_secs(90))
        .renew(Renew::Off)
        .acquire()
        .await
        .unwrap();
    assert_eq!(g.fence(), 0, "the layout mints no fences");
    let row = db.row("billing").unwrap();
    assert_eq!(row.locked_by, text("billing-worker"));
    assert_eq!(
        row.lock_process,
        Value::Integer(i64::from(std::process::id()))
    );
    assert_eq!(row.created_at, row.updated_at);
    let created = micros_of(&row.created_at);
    assert_eq!(
        micros_of(&row.locked_until) - created,
        90_000_000,
        "exactly the TTL"
    );
    assert!(
        (created - now_micros()).abs() < 60_000_000,
        "UTC, this machine's clock"
    );
    assert_eq!(
        db.count("SELECT count(*) FROM lockmgr_lock WHERE typeof(created_at) = 'text' AND typeof(updated_at) = 'text' AND typeof(locked_until) = 'text'"),
        1
    );
    // The holder's view: owner, pid and host; a Python peer sees an ordinary row.
    let info = lm.inspect("billing").await.unwrap().unwrap();
    assert_eq!(info.owner.as_deref(), Some("billing-worker"));
    assert_eq!(info.pid, Some(std::process::id()));
    assert!(info.host.is_some());
    // extend moves locked_until and updated_at only.
    tokio::time::sleep(Duration::from_millis(5)).await;
    g.extend(Duration::from_secs(120)).await.unwrap();
    let ext = db.row("billing").unwrap();
    assert_eq!(ext.created_at, row.created_at);
    assert_eq!(
        micros_of(&ext.locked_until) - micros_of(&ext.updated_at),
        120_000_000
    );
    assert!(micros_of(&ext.updated_at) > created);
    // A never-expiring lock is a NULL locked_until, as Django's get_lock(expires=0).
    let forever = lm.lock("forever").no_expiry().acquire().await.unwrap();
    assert_eq!(db.row("forever").unwrap().locked_until, Value::Null);
    forever.release().await.unwrap();
    g.release().await.unwrap();
    assert!(db.row("billing").is_none());
    assert_eq!(db.count("SELECT count(*) FROM locksmith_lockmgr_owner"), 0);
    // Created by set_locks: the same shape.
    let out = lm
        .set_locks(["made"], SetPolicy::default().ttl(Duration::from_secs(30)))
        .await
        .unwrap();
    assert_eq!(out.statuses[0].action, SetAction::Created);
    let made = db.row("made").unwrap();
    assert_eq!(made.created_at, made.updated_at);
    assert_eq!(
        micros_of(&made.locked_until) - micros_of(&made.created_at),
        30_000_000
    );
}

#[tokio::test]
async fn min_hold_keeps_the_row_until_created_at_plus_min_hold() {
    let db = Db::new();
    let lm = db.lm().await;
    let other = db.lm().await.with_owner("other").unwrap();
    let g = lm
        .lock("nightly")
        .ttl(Duration::from_secs(10))
        .min_hold(Duration::from_millis(800))
        .renew(Renew::Off)
        .acquire()
        .await
        .unwrap();
    g.release().await.unwrap();
    let row = db.row("nightly").expect("kept by min_hold");
    assert_eq!(
        micros_of(&row.locked_until) - micros_of(&row.created_at),
        800_000
    );
    assert_eq!(
        db.count(
            "SELECT count(*) FROM locksmith_lockmgr_owner WHERE name = 'nightly' AND token IS NULL"
        ),
        1,
        "the token no longer holds it"
    );
    let info = lm.inspect("nightly").await.unwrap().unwrap();
    assert!(info.released && !info.expired);
    assert_eq!(info.min_hold, Some(Duration::from_millis(800)));
    assert!(other.lock("nightly").try_acquire().await.unwrap().is_none());
    let got = other
        .lock("nightly")
        .wait(Wait::For(Duration::from_secs(5)))
        .acquire()
        .await
        .unwrap();
    assert!(
        now_micros() >= micros_of(&row.locked_until),
        "granted before created_at + min_hold"
    );
    got.release().await.unwrap();
}

#[tokio::test]
async fn side_rows_of_locks_a_python_peer_took_over_are_not_ours() {
    let db = Db::new();
    let lm = db.lm().await;
    let token = lm
        .lock("job")
        .ttl(Duration::from_millis(200))
        .renew(Renew::Off)
        .acquire()
        .await
        .unwrap()
        .leak();
    let ours = db.row("job").unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A Python peer: clean_locks, then its own row — with the very same locked_by and
    // lock_process (a peer told to use them), only created_at differs.
    {
        let conn = db.conn();
        conn.execute(
            "DELETE FROM lockmgr_lock WHERE locked_until < ?1",
            [django_text(now_micros())],
        )
        .unwrap();
    }
    db.python_lock(
        "job",
        ours.locked_by.clone(),
        ours.lock_process.clone(),
        in_secs(0),
        in_secs(600),
    );
    assert_eq!(
        db.count("SELECT count(*) FROM locksmith_lockmgr_owner WHERE name = 'job'"),
        1,
        "the stale side row is still there"
    );
    let err = lm.resume("job", token.clone()).await.unwrap_err();
    assert!(err.is_not_held(), "{err:?}");
    let info = lm.inspect("job").await.unwrap().unwrap();
    assert!(!info.released && !info.expired);
    assert_eq!(info.host, None, "a Python row: no host");
    assert!(lm.lock("job").try_acquire().await.unwrap().is_none());
    // Garbage: the next sweeps (every 8th grant) remove the stale side row, never the lock.
    for i in 0..9 {
        lm.lock(format!("other-{i}"))
            .acquire()
            .await
            .unwrap()
            .release()
            .await
            .unwrap();
    }
    assert_eq!(
        db.count("SELECT count(*) FROM locksmith_lockmgr_owner WHERE name = 'job'"),
        0
    );
    assert!(db.row("job").is_some());
    assert!(lm.lock("job").try_acquire().await.unwrap().is_none());
}

#[tokio::test]
async fn a_python_renewal_that_drops_a_zero_fraction_keeps_the_lock_ours() {
    let db = Db::new();
    let lm = db.lm().await;
    let g = lm
        .lock("r")
        .ttl(Duration::from_secs(60))
        .renew(Renew::Off)
        .acquire()
        .await
        .unwrap();
    // Make created_at a whole second (as 1 in 10^6 grants are), then let "Django" save the
    // row back: str(datetime) drops the zero fraction, and renew_lock moves locked_until.
    let conn = db.conn();
    conn.execute_batch(
        "UPDATE locksmith_lockmgr_owner SET created_at = '2026-12-02 10:00:00.000000' WHERE name = 'r';
         UPDATE lockmgr_lock SET created_at = '2026-12-02 10:00:00' WHERE name = 'r';",
    )
    .unwrap();
    conn.execute(
        "UPDATE lockmgr_lock SET locked_until = ?1, updated_at = ?2 WHERE name = 'r'",
        [
            django_text(now_micros() + 600_000_000),
            django_text(now_micros()),
        ],
    )
    .unwrap();
    g.extend(Duration::from_secs(30)).await.expect("still ours");
    g.release().await.unwrap();
    assert!(db.row("r").is_none());
}

#[tokio::test]
async fn hostile_rows_never_panic_and_read_sensibly() {
    let db = Db::new();
    // NULL locked_by and lock_process, far-future expiry: held, no owner or pid.
    db.python_lock(
        "nulls",
        Value::Null,
        Value::Null,
        in_secs(0),
        text("9999-12-31 23:59:59.999999"),
    );
    // NULL locked_until: never expires (Django's get_lock(expires=0)).
    db.python_lock(
        "forever",
        text("web"),
        Value::Integer(1),
        in_secs(0),
        Value::Null,
    );
    // Far past, and before 1970 (Python's datetime.min): expired, taken over.
    db.python_lock(
        "past",
        text("web"),
        Value::Integer(7),
        in_secs(-900),
        in_secs(-600),
    );
    db.python_lock(
        "y2k",
        text("web"),
        Value::Integer(7),
        in_secs(-60),
        text("2001-01-01 00:00:00"),
    );
    db.python_lock(
        "ancient",
        text("web"),
        Value::Integer(7),
        in_secs(-60),
        text("0001-01-01 00:00:00"),
    );
    // Unreadable locked_until: held, never expires, never taken over.
    db.python_lock(
        "soon",
        text("web"),
        Value::Integer(7),
        in_secs(0),
        text("soon"),
    );
    db.python_lock(
        "int",
        text("web"),
        Value::Integer(7),
        in_secs(0),
        Value::Integer(5),
    );
    db.python_lock(
        "empty",
        text("web"),
        Value::Integer(7),
        in_secs(0),
        text(""),
    );
    // Unreadable created_at: held until locked_until, granted "at the epoch".
    db.python_lock(
        "born",
        text("web"),
        text("abc"),
        text("yesterday"),
        in_secs(600),
    );
    db.python_lock(
        "neg",
        text("web"),
        Value::Integer(-1),
        in_secs(0),
        in_secs(600),
    );

    let lm = db.lm().await;
    // Before any write (the first one sweeps rows expired longer than retain = 1 h ago).
    for name in ["past", "y2k", "ancient"] {
        let info = lm.inspect(name).await.unwrap().unwrap();
        assert!(info.expired, "{name}: {info:?}");
    }
    for name in ["ancient", "past"] {
        let g = lm.lock(name).try_acquire().await.unwrap().expect(name);
        assert_eq!(
            db.row(name).unwrap().lock_process,
            Value::Integer(i64::from(std::process::id())),
            "{name} taken over"
        );
        g.release().await.unwrap();
        assert!(db.row(name).is_none());
        assert!(db.row("y2k").is_none(), "swept by the first grant");
    }

    let nulls = lm.inspect("nulls").await.unwrap().unwrap();
    assert_eq!((nulls.owner, nulls.pid), (None, None));
    assert!(nulls.expires_in.unwrap() > Duration::from_secs(365 * 24 * 3600 * 7000));
    assert!(lm.lock("nulls").try_acquire().await.unwrap().is_none());

    let forever = lm.inspect("forever").await.unwrap().unwrap();
    assert_eq!((forever.expires_in, forever.expires_at), (None, None));
    assert!(lm.lock("forever").try_acquire().await.unwrap().is_none());

    for name in ["soon", "int", "empty"] {
        let info = lm.inspect(name).await.unwrap().unwrap();
        assert!(!info.expired, "{name}: {info:?}");
        assert_eq!(
            info.expires_in, None,
            "{name}: unreadable reads as never expiring"
        );
        assert!(
            lm.lock(name).try_acquire().await.unwrap().is_none(),
            "{name}"
        );
    }

    let born = lm.inspect("born").await.unwrap().unwrap();
    assert_eq!(
        born.acquired_at,
        Some(UNIX_EPOCH),
        "unreadable created_at: the epoch"
    );
    assert_eq!(born.pid, None);
    assert!(!born.expired);
    assert!(lm.lock("born").try_acquire().await.unwrap().is_none());
    assert_eq!(lm.inspect("neg").await.unwrap().unwrap().pid, None);

    // Listing, purging and garbage collection (retain=0s, swept on the 1st, 9th… grant)
    // leave every unreadable row alone.
    let all = lm.list(ListQuery::all()).await.unwrap();
    let names: Vec<&str> = all.items.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(
        names,
        ["born", "empty", "forever", "int", "neg", "nulls", "soon"],
        "byte order, live only"
    );
    assert_eq!(lm.purge_expired().await.unwrap(), 0);
    // retain is per file and process: this handle's 0s applies to `lm` too.
    let _sweeping = Locksmith::connect(&format!("{}&retain=0s", db.url()))
        .await
        .unwrap();
    for i in 0..9 {
        lm.lock(format!("g{i}"))
            .acquire()
            .await
            .unwrap()
            .release()
            .await
            .unwrap();
    }
    for name in ["soon", "int", "empty", "born", "nulls", "forever"] {
        assert!(db.row(name).is_some(), "{name} removed");
    }
    // set_locks renews an unreadable expiry to NULL (never expires, as it was read).
    lm.set_locks(["soon"], SetPolicy::default()).await.unwrap();
    assert_eq!(db.row("soon").unwrap().locked_until, Value::Null);
    // clear and reset_all remove anything.
    assert_eq!(
        lm.clear(["int"]).await.unwrap(),
        [("int".to_string(), true)]
    );
    assert_eq!(lm.reset_all().await.unwrap(), 6);
    assert_eq!(db.count("SELECT count(*) FROM lockmgr_lock"), 0);
}

#[tokio::test]
async fn expired_rows_stay_visible_until_retain_then_are_swept() {
    let db = Db::new();
    db.python_lock(
        "old",
        text("web"),
        Value::Integer(1),
        in_secs(-7300),
        in_secs(-7200),
    );
    db.python_lock(
        "recent",
        text("web"),
        Value::Integer(1),
        in_secs(-700),
        in_secs(-600),
    );
    let lm = db.lm().await; // retain = 1 h
    let expired = lm
        .list(ListQuery::all().expired(Expired::Only))
        .await
        .unwrap();
    let names: Vec<&str> = expired.items.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["old", "recent"]);
    assert!(lm.list(ListQuery::all()).await.unwrap().items.is_empty());
    // The first grant sweeps: "old" expired 2 h ago, "recent" 10 min ago.
    lm.lock("x")
        .acquire()
        .await
        .unwrap()
        .release()
        .await
        .unwrap();
    assert!(db.row("old").is_none());
    assert!(lm.inspect("recent").await.unwrap().unwrap().expired);
    assert_eq!(lm.purge_expired().await.unwrap(), 1);
    assert!(db.row("recent").is_none());
}

#[tokio::test]
async fn names_up_to_100_bytes_and_a_clear_error_beyond() {
    let db = Db::new();
    let lm = db.lm().await;
    let at_limit = "n".repeat(100);
    let g = lm.lock(at_limit.as_str()).acquire().await.unwrap();
    assert!(db.row(&at_limit).is_some());
    g.release().await.unwrap();
    let wide = "é".repeat(50); // 100 bytes, 50 characters
    lm.lock(wide.as_str())
        .acquire()
        .await
        .unwrap()
        .release()
        .await
        .unwrap();
    for long in ["n".repeat(101), format!("{wide}x")] {
        let err = lm.lock(long.as_str()).try_acquire().await.unwrap_err();
        assert!(matches!(err, Error::InvalidName { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.contains("101 bytes") && msg.contains("at most 100 bytes"),
            "{msg}"
        );
        let err = lm
            .set_locks([long.as_str()], SetPolicy::default())
            .await
            .unwrap_err();
        assert!(matches!(err, Error::InvalidName { .. }), "{err:?}");
    }
    assert_eq!(db.count("SELECT count(*) FROM lockmgr_lock"), 0);
}

#[tokio::test]
async fn a_waiter_polls_a_python_release() {
    let db = Db::new();
    db.python_lock(
        "deploy",
        text("web"),
        Value::Integer(1),
        in_secs(0),
        in_secs(600),
    );
    let lm = db.lm().await;
    let waiter = tokio::spawn(async move {
        lm.lock("deploy")
            .wait(Wait::For(Duration::from_secs(10)))
            .acquire()
            .await
            .map(|g| g.leak())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiter.is_finished());
    // django-lockmgr's unlock: a DELETE by name, which notifies nobody.
    db.conn()
        .execute("DELETE FROM lockmgr_lock WHERE name = 'deploy'", [])
        .unwrap();
    waiter.await.unwrap().expect("the waiter got the lock");
    assert_eq!(
        db.row("deploy").unwrap().lock_process,
        Value::Integer(i64::from(std::process::id()))
    );
}

#[tokio::test]
async fn python_expiry_on_the_same_clock_agrees() {
    // A Python peer's clean_locks compares locked_until with its own timezone.now(); on
    // the machine that holds the file that is locksmith's clock too.
    let db = Db::new();
    let lm = db.lm().await;
    let _g = lm
        .lock("shared")
        .ttl(Duration::from_millis(1500))
        .renew(Renew::Off)
        .acquire()
        .await
        .unwrap();
    let clean = |db: &Db| {
        db.conn()
            .execute(
                "DELETE FROM lockmgr_lock WHERE locked_until < ?1",
                [django_text(now_micros())],
            )
            .unwrap()
    };
    assert_eq!(clean(&db), 0, "live for Python too");
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert!(lm.inspect("shared").await.unwrap().unwrap().expired);
    assert_eq!(clean(&db), 1, "expired for Python too");
}

#[tokio::test]
async fn bad_urls_and_a_missing_table_are_clear_errors() {
    let db = Db::new();
    let dir = tempfile::tempdir().unwrap();
    // No lockmgr_lock: migrate first; locksmith creates none of Django's tables.
    let bare = dir.path().join("bare.sqlite3");
    Connection::open(&bare)
        .unwrap()
        .execute_batch("CREATE TABLE t (x)")
        .unwrap();
    let err = Locksmith::connect(&format!(
        "sqlite://{}?layout=django-lockmgr",
        bare.display()
    ))
    .await
    .unwrap_err();
    assert!(matches!(err, Error::Config { .. }), "{err:?}");
    assert!(err.to_string().contains("migrate lockmgr"), "{err}");
    let tables: i64 = Connection::open(&bare)
        .unwrap()
        .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
        .unwrap();
    assert_eq!(
        tables, 1,
        "nothing created in a database without Django's table"
    );
    // Only django-lockmgr's first migration (locked_until NOT NULL).
    let old = dir.path().join("old.sqlite3");
    Connection::open(&old)
        .unwrap()
        .execute_batch(
            r#"CREATE TABLE "lockmgr_lock" ("name" varchar(100) NOT NULL PRIMARY KEY, "locked_by" varchar(100) NULL, "lock_process" integer NULL, "locked_until" datetime NOT NULL, "created_at" datetime NOT NULL, "updated_at" datetime NOT NULL)"#,
        )
        .unwrap();
    let err = Locksmith::connect(&format!("sqlite://{}?layout=django-lockmgr", old.display()))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("migrate lockmgr"), "{err}");
    // A missing file is not created.
    let missing = dir.path().join("nope.sqlite3");
    let err = Locksmith::connect(&format!(
        "sqlite://{}?layout=django-lockmgr",
        missing.display()
    ))
    .await
    .unwrap_err();
    assert!(err.to_string().contains("does not exist"), "{err}");
    assert!(!missing.exists());
    // Not SQLite.
    let junk = dir.path().join("junk.sqlite3");
    std::fs::write(&junk, "not a database at all").unwrap();
    let err = Locksmith::connect(&format!(
        "sqlite://{}?layout=django-lockmgr",
        junk.display()
    ))
    .await
    .unwrap_err();
    assert!(err.to_string().contains("not a SQLite database"), "{err}");
    // Options of the native layout, and unknown layouts.
    for (query, says) in [
        ("namespace=a", "namespace"),
        ("table=locks", "lockmgr_lock"),
        ("prefix=x", "prefix"),
        ("bogus=1", "bogus"),
    ] {
        let err = Locksmith::connect(&format!("{}&{query}", db.url()))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Config { .. }), "{query}: {err:?}");
        assert!(err.to_string().contains(says), "{query}: {err}");
    }
    let err = Locksmith::connect(&format!("sqlite://{}?layout=django", db.path.display()))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("layout=django-lockmgr"), "{err}");
    let err = Locksmith::connect("sqlite://?layout=django-lockmgr")
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("path of the Django project"),
        "{err}"
    );
    // A namespace set later is refused per call.
    let lm = db.lm().await.with_namespace("tenant").unwrap();
    let err = lm.lock("x").try_acquire().await.unwrap_err();
    assert!(err.to_string().contains("no namespaces"), "{err}");
}

#[tokio::test]
async fn the_django_file_keeps_its_journal_mode_and_schema() {
    for wal in [false, true] {
        let db = Db::new();
        if wal {
            let mode: String = db
                .conn()
                .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
                .unwrap();
            assert_eq!(mode, "wal");
        }
        let lm = db.lm().await;
        let g = lm.lock("j").acquire().await.unwrap();
        lm.inspect("j").await.unwrap().unwrap();
        g.release().await.unwrap();
        lm.close().await.unwrap();
        let conn = db.conn();
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, if wal { "wal" } else { "delete" });
        let (user_version, app): (i64, i64) = conn
            .query_row(
                "SELECT (SELECT user_version FROM pragma_user_version), (SELECT application_id FROM pragma_application_id)",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!((user_version, app), (0, 0));
        let mut tables: Vec<String> = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        tables.sort();
        assert_eq!(
            tables,
            [
                "django_migrations",
                "lockmgr_lock",
                "locksmith_lockmgr_owner",
                "locksmith_lockmgr_reservation",
            ]
        );
        let indexes: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'index' AND tbl_name = 'lockmgr_lock' AND sql IS NOT NULL",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(indexes, 0, "no index added to Django's table");
    }
}
