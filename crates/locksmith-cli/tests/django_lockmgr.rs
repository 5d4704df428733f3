//! Interop with the real django-lockmgr (2.0.0 on Django 5.2, in a venv the test kit makes
//! from PyPI under `CARGO_TARGET_TMPDIR`) through `?layout=django-lockmgr`, on SQLite,
//! PostgreSQL and MariaDB: Django's own migration makes the table, then Python peers
//! (`servers/django_peer.py`) and locksmith (library and CLI) contend for, inspect, renew
//! and clear the same rows. Every scenario runs on every database.
//!
//! No python3/venv/pip, no PyPI or no server binaries → SKIPPED (a failure with
//! LOCKSMITH_TEST_REQUIRE_SERVERS=1).

use std::any::Any;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use locksmith::{Locksmith, Renew, Wait};
use locksmith_testkit::servers::python::{DJANGO_PEER, PyProcess, django_lockmgr};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_locksmith");

/// A database with Django's `lockmgr_lock` table, made by `migrate lockmgr`.
struct Db {
    rt: tokio::runtime::Runtime,
    /// What a Django peer connects to.
    peer_url: String,
    /// What locksmith connects to (`?layout=django-lockmgr`).
    url: String,
    python: PathBuf,
    dir: tempfile::TempDir,
    _server: Box<dyn Any>,
}

/// A django-lockmgr peer process.
struct Peer(PyProcess);

impl Peer {
    fn call(&mut self, cmd: Value) -> Value {
        self.0.send(&cmd.to_string());
        let (_, line) = self.0.line(Duration::from_secs(120));
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("peer said {line:?}: {e}"))
    }

    /// `call` that must not answer an error.
    fn ok(&mut self, cmd: Value) -> Value {
        let answer = self.call(cmd.clone());
        assert!(answer.get("error").is_none(), "{cmd} → {answer}");
        answer
    }
}

impl Db {
    fn new(server: Box<dyn Any>, rt: tokio::runtime::Runtime, peer_url: String) -> Option<Db> {
        let python = django_lockmgr(Path::new(env!("CARGO_TARGET_TMPDIR")))?;
        let db = Db {
            rt,
            url: format!("{peer_url}?layout=django-lockmgr"),
            peer_url,
            python,
            dir: tempfile::tempdir().unwrap(),
            _server: server,
        };
        let mut p = db.peer();
        p.ok(json!(["migrate"]));
        drop(p);
        Some(db)
    }

    fn sqlite() -> Option<Db> {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("db.sqlite3").display());
        Db::new(Box::new(dir), rt, url)
    }

    fn postgres() -> Option<Db> {
        use locksmith_testkit::servers::postgres::PostgresServer;
        let rt = tokio::runtime::Runtime::new().unwrap();
        let server = match rt.block_on(PostgresServer::start()) {
            Ok(s) => s,
            Err(why) => {
                locksmith_testkit::skip_store("postgres (django-lockmgr interop)", &why);
                return None;
            }
        };
        let url = server.url("postgres");
        Db::new(Box::new(server), rt, url)
    }

    fn mysql() -> Option<Db> {
        use locksmith_testkit::servers::mariadb::MariaDb;
        let rt = tokio::runtime::Runtime::new().unwrap();
        let server = match MariaDb::start() {
            Ok(s) => s,
            Err(why) => {
                locksmith_testkit::skip_store("mysql (django-lockmgr interop)", &why);
                return None;
            }
        };
        let url = server.url();
        Db::new(Box::new(server), rt, url)
    }

    fn peer(&self) -> Peer {
        let mut p = PyProcess::start(&self.python, DJANGO_PEER, &[&self.peer_url]);
        let (_, line) = p.line(Duration::from_secs(60));
        assert!(line.contains("\"ready\""), "peer said {line:?}");
        Peer(p)
    }

    fn lm(&self) -> Locksmith {
        self.rt.block_on(Locksmith::connect(&self.url)).unwrap()
    }

    fn cli(&self, args: &[&str]) -> (Option<i32>, String, String) {
        let out = Command::new(BIN)
            .env_remove("LOCKSMITH_URL")
            .env_remove("LOCKSMITH_TOKEN")
            .arg("--url")
            .arg(&self.url)
            .args(args)
            .output()
            .expect("run locksmith");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

/// Seconds between two ISO times Python printed.
fn seconds_between(from: &Value, to: &Value) -> f64 {
    let t = |v: &Value| {
        let s = v.as_str().expect("a time");
        // Python's isoformat: 2026-12-02T10:00:00.123456+00:00
        let s = s.strip_suffix("+00:00").unwrap_or(s);
        humantime::parse_rfc3339_weak(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    };
    match t(to).duration_since(t(from)) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

fn find<'a>(list: &'a Value, name: &str) -> Option<&'a Value> {
    list["locks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == name)
}

/// Two Python peers and two locksmith clients take one name in turns; inside, each does a
/// read-modify-write of a counter file that is not atomic on its own, and an O_EXCL marker
/// catches any overlap. No overlap and no lost update, across the two libraries.
fn python_and_rust_share_a_counter(db: Db) {
    const EACH: usize = 15;
    let counter = db.dir.path().join("counter");
    let inside = db.dir.path().join("inside");
    std::fs::write(&counter, "0").unwrap();
    let mut peers: Vec<Peer> = (0..2).map(|_| db.peer()).collect();
    let cmd = json!([
        "count",
        "ctr",
        EACH,
        30,
        counter.to_str().unwrap(),
        inside.to_str().unwrap()
    ])
    .to_string();
    for p in &mut peers {
        p.0.send(&cmd);
    }
    let rust: Vec<_> = (0..2)
        .map(|_| {
            let lm = db.lm();
            let (counter, inside) = (counter.clone(), inside.clone());
            db.rt.spawn(async move {
                let mut overlaps = 0;
                for _ in 0..EACH {
                    let g = lm
                        .lock("ctr")
                        .ttl(Duration::from_secs(30))
                        .wait(Wait::For(Duration::from_secs(90)))
                        .acquire()
                        .await
                        .unwrap();
                    let mine = std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .open(&inside)
                        .is_ok();
                    if !mine {
                        overlaps += 1;
                    }
                    let v: u64 = std::fs::read_to_string(&counter).unwrap().parse().unwrap();
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    std::fs::write(&counter, (v + 1).to_string()).unwrap();
                    if mine {
                        std::fs::remove_file(&inside).unwrap();
                    }
                    g.release().await.unwrap();
                }
                overlaps
            })
        })
        .collect();
    for t in rust {
        assert_eq!(db.rt.block_on(t).unwrap(), 0, "a Rust holder overlapped");
    }
    for p in &mut peers {
        let (_, line) = p.0.line(Duration::from_secs(180));
        let answer: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(
            answer["overlaps"], 0,
            "a Python holder overlapped: {answer}"
        );
    }
    let total: usize = std::fs::read_to_string(&counter).unwrap().parse().unwrap();
    assert_eq!(total, 4 * EACH, "lost updates");
}

/// A lock taken on either side holds for the other, reads back with its holder's fields, and
/// is free for the other once released.
fn each_side_holds_for_the_other(db: Db) {
    let lm = db.lm();
    let mut py = db.peer();
    // locksmith holds: Python sees a held lock written as Django writes it.
    let g = db
        .rt
        .block_on(
            lm.lock("a")
                .ttl(Duration::from_secs(60))
                .owner("rust-svc")
                .acquire(),
        )
        .unwrap();
    assert_eq!(py.ok(json!(["is_locked", "a"]))["locked"], true);
    assert_eq!(py.call(json!(["get", "a", 60]))["error"], "Locked");
    let list = py.ok(json!(["list"]));
    let row = find(&list, "a").expect("locksmith's row");
    assert_eq!(row["locked_by"], "rust-svc");
    assert_eq!(row["lock_process"], std::process::id());
    assert_eq!(row["created_at"], row["updated_at"]);
    let lease = seconds_between(&row["created_at"], &row["locked_until"]);
    assert!(
        (lease - 60.0).abs() < 1e-6,
        "locked_until - created_at = {lease}"
    );
    // A Python renewal leaves the lock locksmith's: it still extends and releases it.
    py.ok(json!(["renew", "a", 120]));
    db.rt.block_on(g.extend(Duration::from_secs(30))).unwrap();
    db.rt.block_on(g.release()).unwrap();
    assert_eq!(py.ok(json!(["is_locked", "a"]))["locked"], false);

    // Python holds: locksmith sees its holder and cannot take or release it.
    py.ok(json!(["get", "b", 60, "django-worker", 4242]));
    let busy = db
        .rt
        .block_on(lm.lock("b").ttl(Duration::from_secs(5)).try_acquire())
        .unwrap();
    assert!(busy.is_none(), "Python's lock was granted to locksmith");
    let info = db
        .rt
        .block_on(lm.inspect("b"))
        .unwrap()
        .expect("Python's row");
    assert_eq!(info.owner.as_deref(), Some("django-worker"));
    assert_eq!(info.pid, Some(4242));
    let left = info.expires_in.expect("a lease");
    assert!(
        left > Duration::from_secs(55) && left <= Duration::from_secs(60),
        "{left:?}"
    );
    py.ok(json!(["unlock", "b"]));
    let g = db
        .rt
        .block_on(lm.lock("b").ttl(Duration::from_secs(5)).try_acquire())
        .unwrap()
        .expect("free once Python unlocked it");
    db.rt.block_on(g.release()).unwrap();
}

/// The CLI lists a Python-held lock with its holder, finds `run` busy on it, and clears it;
/// Python then sees it free. A lock the CLI holds is Locked for Python; `set` renews
/// Python's lock and creates a new one; `reset` empties the table.
fn cli_lists_and_clears_a_python_lock(db: Db) {
    let mut py = db.peer();
    py.ok(json!(["get", "nightly-report", 600, "celery@web1", 4242]));
    let (code, out, err) = db.cli(&["--format", "json", "list"]);
    assert_eq!(code, Some(0), "{out}{err}");
    let row: Value = out
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|v| v["name"] == "nightly-report")
        .unwrap_or_else(|| panic!("not listed: {out}"));
    assert_eq!(row["owner"], "celery@web1", "{row}");
    assert_eq!(row["pid"], 4242, "{row}");
    assert_eq!(db.cli(&["-q", "status", "nightly-report"]).0, Some(0));
    let (code, out, err) = db.cli(&["run", "nightly-report", "--", "echo", "ran"]);
    assert_eq!(code, Some(75), "busy: {out}{err}");
    assert!(!out.contains("ran"));
    let (code, out, err) = db.cli(&["clear", "nightly-report"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(
        py.ok(json!(["is_locked", "nightly-report"]))["locked"],
        false
    );
    // and the other way: a lock the CLI holds is Locked for Python until released
    let (code, out, err) = db.cli(&["acquire", "deploy", "--ttl", "60s"]);
    assert_eq!(code, Some(0), "{out}{err}");
    let token = out
        .lines()
        .find_map(|l| l.strip_prefix("token="))
        .expect("token=");
    assert_eq!(py.call(json!(["get", "deploy", 60]))["error"], "Locked");
    let (code, out, err) = db.cli(&["release", "deploy", "--token", token]);
    assert_eq!(code, Some(0), "{out}{err}");
    py.ok(json!(["get", "deploy", 60]));

    // `set` renews Python's lock as django-lockmgr's set_lock does (the row stays
    // Python's), and creates a missing one that Python then sees held.
    let (code, out, err) = db.cli(&["set", "deploy", "backfill", "--ttl", "10m"]);
    assert_eq!(code, Some(0), "{out}{err}");
    let list = py.ok(json!(["list"]));
    let deploy = find(&list, "deploy").expect("Python's row");
    let left = deploy["expires_seconds"].as_f64().unwrap();
    assert!(left > 500.0, "renewed to 10 minutes: {deploy}");
    assert_ne!(deploy["locked_by"], Value::Null, "still Python's: {deploy}");
    assert_eq!(py.ok(json!(["is_locked", "backfill"]))["locked"], true);
    // `reset` removes every row, Python's and locksmith's.
    let (code, out, err) = db.cli(&["reset", "--force"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(py.ok(json!(["list"]))["locks"], json!([]));
}

/// Python decides expiry with its own clock. A peer whose clock runs an hour ahead deletes
/// locksmith's live lease (the hazard the README warns of, and locksmith's guard notices);
/// a peer on the same wrong clock whose `timezone.now()` reads the database agrees with
/// locksmith exactly: held while the store says so, free once it expired.
fn python_on_the_database_clock_agrees(db: Db) {
    let lm = db.lm();
    let mut skewed = db.peer();
    skewed.ok(json!(["clock", "offset", 3600]));
    let g = db
        .rt
        .block_on(lm.lock("u").ttl(Duration::from_secs(60)).acquire())
        .unwrap();
    assert_eq!(
        skewed.ok(json!(["is_locked", "u"]))["locked"],
        false,
        "an hour ahead, the 60 s lease looks expired (and Python deletes it)"
    );
    let err = db
        .rt
        .block_on(g.extend(Duration::from_secs(60)))
        .unwrap_err();
    assert!(
        matches!(
            err,
            locksmith::Error::Lost { .. } | locksmith::Error::NotHeld { .. }
        ),
        "{err}"
    );

    let mut on_db = db.peer();
    on_db.ok(json!(["clock", "offset", 3600]));
    on_db.ok(json!(["clock", "db"]));
    let g = db
        .rt
        .block_on(
            lm.lock("t")
                .ttl(Duration::from_secs(3))
                .renew(Renew::Off)
                .acquire(),
        )
        .unwrap();
    assert_eq!(on_db.ok(json!(["is_locked", "t"]))["locked"], true);
    assert_eq!(on_db.call(json!(["get", "t", 30]))["error"], "Locked");
    std::thread::sleep(Duration::from_millis(3500));
    let row = on_db.ok(json!(["get", "t", 30]));
    assert_eq!(row["name"], "t");
    drop(g);
    let info = db
        .rt
        .block_on(lm.inspect("t"))
        .unwrap()
        .expect("Python's row");
    let left = info.expires_in.expect("a lease");
    assert!(
        left > Duration::from_secs(25) && left <= Duration::from_secs(30),
        "the store reads Python's lease on its own clock: {left:?}"
    );
}

macro_rules! on_every_database {
    ($($scenario:ident),* $(,)?) => {
        mod sqlite {
            $(#[test] fn $scenario() { if let Some(db) = super::Db::sqlite() { super::$scenario(db) } })*
        }
        mod postgres {
            $(#[test] fn $scenario() { if let Some(db) = super::Db::postgres() { super::$scenario(db) } })*
        }
        mod mysql {
            $(#[test] fn $scenario() { if let Some(db) = super::Db::mysql() { super::$scenario(db) } })*
        }
    };
}

on_every_database!(
    python_and_rust_share_a_counter,
    each_side_holds_for_the_other,
    cli_lists_and_clears_a_python_lock,
    python_on_the_database_clock_agrees,
);
