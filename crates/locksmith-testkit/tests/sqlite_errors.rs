//! The SQLite store's error cases: files it must refuse (and leave alone), paths it cannot
//! use, the default file's location, and a grant whose requester went away.
//!
//! Tests that depend on the environment of the process (`XDG_STATE_HOME`, `HOME`) run the
//! `locksmith-test-helper` binary in a child process, since the environment is
//! process-wide.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::Command;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use locksmith::store::sqlite::SqliteStore;
use locksmith::store::{Claim, Grant, Store};
use locksmith::{Error, LockName, Locksmith, Namespace, Token};

const HELPER: &str = env!("CARGO_BIN_EXE_locksmith-test-helper");

fn url_of(path: &Path) -> String {
    assert!(path.is_absolute());
    format!("sqlite://{}", path.display())
}

/// A fresh temp dir, canonicalized (the store names files by their canonical directory).
fn temp_dir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let canonical = dir.path().canonicalize().expect("canonicalize");
    (dir, canonical)
}

/// Connects and expects a configuration error; returns its message (and checks that
/// `Display` carries it).
async fn config_error(url: &str) -> String {
    match Locksmith::connect(url).await {
        Ok(lm) => panic!("connecting to {url} succeeded: {lm:?}"),
        Err(e @ Error::Config { .. }) => {
            let shown = e.to_string();
            let Error::Config { message, .. } = e else {
                unreachable!()
            };
            assert!(shown.contains(&message), "{shown:?} vs {message:?}");
            message
        }
        Err(e) => panic!("connecting to {url}: expected a configuration error, got {e:?} ({e})"),
    }
}

/// Expects a configuration error when connecting or, at the latest, at the first write (a
/// lock file that is already up to date opens fine read-only: SQLite falls back to
/// read-only when the file is write protected); returns its message.
async fn write_error(url: &str) -> String {
    let lm = match Locksmith::connect(url).await {
        Err(Error::Config { message, .. }) => return message,
        Err(e) => panic!("connecting to {url}: expected a configuration error, got {e:?} ({e})"),
        Ok(lm) => lm,
    };
    eprintln!("note: {url} opened although it is not writable; expecting the first write to fail");
    match lm.lock("x").try_acquire().await {
        Err(Error::Config { message, .. }) => message,
        Err(e) => panic!("acquiring on {url}: expected a configuration error, got {e:?} ({e})"),
        Ok(guard) => panic!("acquired {guard:?} on an unwritable lock file {url}"),
    }
}

fn assert_mentions(message: &str, needles: &[&str]) {
    for needle in needles {
        assert!(
            message.contains(needle),
            "error message should mention {needle:?}: {message}"
        );
    }
}

/// Whether this process ignores file permissions (root, CAP_DAC_OVERRIDE): it can create a
/// file in a directory with mode 0500.
fn permissions_ignored(dir: &Path) -> bool {
    let probe = dir.join("probe");
    match std::fs::write(&probe, b"x") {
        Ok(()) => {
            let _ = std::fs::remove_file(&probe);
            true
        }
        Err(_) => false,
    }
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {mode:o} {}: {e}", path.display()));
}

/// A lock file created by this build and closed again: every handle dropped, so the
/// worker closed the file and SQLite removed its `-wal` and `-shm` files.
async fn make_lock_file(path: &Path) {
    let lm = Locksmith::connect(&url_of(path)).await.expect("create");
    lm.lock("x")
        .acquire()
        .await
        .unwrap()
        .release()
        .await
        .unwrap();
    drop(lm);
    let wal = PathBuf::from(format!("{}-wal", path.display()));
    let deadline = Instant::now() + Duration::from_secs(5);
    while wal.exists() {
        assert!(
            Instant::now() < deadline,
            "{} stayed after close",
            wal.display()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn newer_schema_is_refused_naming_the_path() {
    let (_dir, dir) = temp_dir();
    let path = dir.join("locks.db");
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(&format!(
            "CREATE TABLE future_locks (id INTEGER PRIMARY KEY);
             INSERT INTO future_locks VALUES (7);
             PRAGMA application_id = {};
             PRAGMA user_version = 99;",
            locksmith::store::sqlite::APPLICATION_ID
        ))
        .unwrap();
    }
    let message = config_error(&url_of(&path)).await;
    assert_mentions(&message, &[&path.display().to_string(), "newer", "99"]);

    // Nothing of the newer schema was touched.
    let conn = rusqlite::Connection::open(&path).unwrap();
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, 99);
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    assert_eq!(
        tables,
        ["future_locks"],
        "locksmith added tables to a newer file"
    );
}

/// Refusing a file must not change it: not even its journal mode. Here another program's
/// database, which `LOCKSMITH_URL` points at by mistake, with and without a `user_version`.
#[tokio::test]
async fn foreign_database_is_refused_and_left_byte_for_byte_unchanged() {
    for version in [0, 1, 99] {
        let (_dir, dir) = temp_dir();
        let path = dir.join("locks.db");
        {
            let conn = rusqlite::Connection::open(&path).unwrap();
            conn.execute_batch(&format!(
                "CREATE TABLE t (id INTEGER); PRAGMA user_version = {version};"
            ))
            .unwrap();
        }
        let before = std::fs::read(&path).unwrap();
        let message = config_error(&url_of(&path)).await;
        assert_mentions(&message, &[&path.display().to_string(), "another program"]);
        assert!(
            std::fs::read(&path).unwrap() == before,
            "the refused file was modified (user_version {version})"
        );
    }
}

/// A newer locksmith's file is refused before anything in it changes.
#[tokio::test]
async fn newer_schema_file_is_left_byte_for_byte_unchanged() {
    let (_dir, dir) = temp_dir();
    let path = dir.join("locks.db");
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(&format!(
            "CREATE TABLE t (id INTEGER); PRAGMA application_id = {}; PRAGMA user_version = 99;",
            locksmith::store::sqlite::APPLICATION_ID
        ))
        .unwrap();
    }
    let before = std::fs::read(&path).unwrap();
    config_error(&url_of(&path)).await;
    assert!(
        std::fs::read(&path).unwrap() == before,
        "the refused file was modified"
    );
}

/// Connects to a lock file holding `bytes` and expects a refusal naming the path that
/// leaves the file as it was, with nothing beside it.
async fn assert_foreign_file_refused(what: &str, bytes: &[u8]) {
    let (_dir, dir) = temp_dir();
    let path = dir.join("locks.db");
    std::fs::write(&path, bytes).unwrap();
    let message = match Locksmith::connect(&url_of(&path)).await {
        Ok(_) => panic!("{what}: a file that is not SQLite was accepted (and overwritten)"),
        Err(Error::Config { message, .. }) => message,
        Err(e) => panic!("{what}: expected a configuration error, got {e:?} ({e})"),
    };
    assert_mentions(
        &message,
        &[&path.display().to_string(), "not a SQLite database"],
    );
    assert_eq!(
        std::fs::read(&path).unwrap(),
        bytes,
        "{what}: the refused file was modified"
    );
    let mut left: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(
        left,
        ["locks.db"],
        "{what}: files left beside the refused one"
    );
}

#[tokio::test]
async fn garbage_file_is_refused_and_left_unchanged() {
    let mut binary = Vec::with_capacity(8192);
    let mut x: u32 = 0x1234_5678;
    for _ in 0..8192 {
        // xorshift: bytes that are certainly not a SQLite header.
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        binary.push(x.to_le_bytes()[0]);
    }
    assert_foreign_file_refused("8 KiB of binary", &binary).await;
    assert_foreign_file_refused("a CSV file", b"name,holder\ninvoices,alice\n").await;
    assert_foreign_file_refused("two bytes", b"x\n").await;
}

/// SQLite's Unix VFS takes a 1-byte file for an empty one (a workaround for an old macOS
/// file system), so opening it would silently turn someone's file into a lock file.
#[tokio::test]
async fn one_byte_file_is_refused_and_left_unchanged() {
    assert_foreign_file_refused("one byte", b"x").await;
}

#[tokio::test]
async fn missing_directory_is_named() {
    let (_dir, dir) = temp_dir();
    let missing = dir.join("no-such-dir").join("deeper");
    let message = config_error(&url_of(&missing.join("locks.db"))).await;
    assert_mentions(
        &message,
        &[&missing.display().to_string(), "does not exist"],
    );
    assert!(!missing.exists(), "the missing directory was created");
}

#[tokio::test]
async fn unwritable_directory_is_named() {
    let (_dir, dir) = temp_dir();
    let locked = dir.join("read-only");
    std::fs::create_dir(&locked).unwrap();
    set_mode(&locked, 0o500);
    if permissions_ignored(&locked) {
        eprintln!(
            "SKIPPED unwritable_directory_is_named: this process ignores permissions (root?)"
        );
        set_mode(&locked, 0o700);
        return;
    }
    let path = locked.join("locks.db");
    let message = config_error(&url_of(&path)).await;
    set_mode(&locked, 0o700);
    assert_mentions(&message, &[&path.display().to_string(), "cannot write"]);
    assert!(!path.exists());
}

#[tokio::test]
async fn read_only_lock_file_is_named() {
    let (_dir, dir) = temp_dir();
    let path = dir.join("locks.db");
    make_lock_file(&path).await;
    let before = std::fs::read(&path).unwrap();
    set_mode(&path, 0o400);
    if std::fs::OpenOptions::new().write(true).open(&path).is_ok() {
        eprintln!("SKIPPED read_only_lock_file_is_named: this process ignores permissions (root?)");
        return;
    }
    let message = write_error(&url_of(&path)).await;
    assert_mentions(&message, &[&path.display().to_string(), "cannot write"]);
    assert_eq!(std::fs::read(&path).unwrap(), before);
}

/// A writable lock file in a directory where SQLite cannot create its `-wal` and `-shm`
/// files.
#[tokio::test]
async fn lock_file_in_unwritable_directory_is_named() {
    let (_dir, dir) = temp_dir();
    let path = dir.join("locks.db");
    make_lock_file(&path).await;
    set_mode(&dir, 0o500);
    if permissions_ignored(&dir) {
        eprintln!(
            "SKIPPED lock_file_in_unwritable_directory_is_named: this process ignores permissions (root?)"
        );
        set_mode(&dir, 0o700);
        return;
    }
    let message = config_error(&url_of(&path)).await;
    set_mode(&dir, 0o700);
    assert_mentions(&message, &[&path.display().to_string(), "cannot write"]);
}

/// Runs `locksmith-test-helper connect URL` with the given environment changes; returns
/// whether it succeeded and what it printed.
fn helper_connect(url: &str, env: impl FnOnce(&mut Command) -> &mut Command) -> (bool, String) {
    let mut cmd = Command::new(HELPER);
    cmd.args(["connect", url]).env_remove("LOCKSMITH_URL");
    let out = env(&mut cmd)
        .output()
        .unwrap_or_else(|e| panic!("run {HELPER}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    match out.status.code() {
        Some(0) => (true, text),
        Some(1) => (false, text),
        _ => panic!("helper failed with {}: {text}", out.status),
    }
}

#[test]
fn default_file_honours_xdg_state_home() {
    let (_state, state) = temp_dir();
    let (_home, home) = temp_dir();
    let (ok, out) = helper_connect("sqlite://", |c| {
        c.env("XDG_STATE_HOME", &state).env("HOME", &home)
    });
    assert!(ok, "{out}");
    assert_eq!(out.trim(), "ok");
    let file = state.join("locksmith").join("locks.db");
    assert!(file.is_file(), "{} was not created", file.display());
    assert_eq!(
        std::fs::read_dir(&home).unwrap().count(),
        0,
        "$HOME was used although $XDG_STATE_HOME is set"
    );
}

#[test]
fn default_file_falls_back_to_home() {
    let (_home, home) = temp_dir();
    for xdg in [None, Some("")] {
        let (ok, out) = helper_connect("sqlite://", |c| {
            c.env("HOME", &home);
            match xdg {
                Some(v) => c.env("XDG_STATE_HOME", v),
                None => c.env_remove("XDG_STATE_HOME"),
            }
        });
        assert!(ok, "XDG_STATE_HOME={xdg:?}: {out}");
        let file = home.join(".local/state/locksmith/locks.db");
        assert!(file.is_file(), "{} was not created", file.display());
    }
}

#[test]
fn default_file_without_xdg_state_home_or_home_asks_for_locksmith_url() {
    let (_cwd, cwd) = temp_dir();
    let cases: [(&str, &[(&str, &str)]); 2] = [
        ("unset", &[]),
        ("empty", &[("XDG_STATE_HOME", ""), ("HOME", "")]),
    ];
    for (what, vars) in cases {
        let (ok, out) = helper_connect("sqlite://", |c| {
            c.env_clear().current_dir(&cwd).envs(vars.iter().copied())
        });
        assert!(!ok, "{what}: connected without a default location: {out}");
        assert!(
            out.starts_with("error config: "),
            "{what}: expected a configuration error: {out}"
        );
        assert_mentions(&out, &["LOCKSMITH_URL", "XDG_STATE_HOME", "HOME"]);
        assert_eq!(
            std::fs::read_dir(&cwd).unwrap().count(),
            0,
            "{what}: files were created in the working directory"
        );
    }
}

/// Whether the lock is free: no row, or an expired one.
async fn is_free(store: &SqliteStore, ns: &Namespace, name: &LockName) -> bool {
    store
        .inspect(ns, name)
        .await
        .expect("inspect")
        .is_none_or(|info| info.expired)
}

/// Waits (bounded) until the lock is free; panics naming the round and the row otherwise.
async fn assert_freed(store: &SqliteStore, ns: &Namespace, name: &LockName, round: u32) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !is_free(store, ns, name).await {
        if Instant::now() > deadline {
            panic!(
                "round {round}: a grant whose requester went away stayed held: {:?}",
                store.inspect(ns, name).await
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// How many fences the file has granted so far.
fn fence_counter(path: &Path) -> i64 {
    let conn =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("open read-only");
    conn.query_row("SELECT value FROM locksmith_fence WHERE id = 0", [], |r| {
        r.get(0)
    })
    .expect("read the fence counter")
}

/// A store on a fresh file, and a maker of claims on one lock with a lease long enough
/// that a leaked grant cannot pass for a released one.
async fn orphan_setup() -> (
    tempfile::TempDir,
    PathBuf,
    Arc<SqliteStore>,
    Namespace,
    LockName,
) {
    let (dir, canonical) = temp_dir();
    let path = canonical.join("locks.db");
    let store = SqliteStore::open(path.clone()).await.expect("open");
    let ns = Namespace::new("orphans").unwrap();
    let name = LockName::new("job").unwrap();
    (dir, path, store, ns, name)
}

fn claim(name: &LockName) -> Claim {
    Claim::new(
        name.clone(),
        Token::new(),
        "orphan-test",
        "localhost",
        std::process::id(),
        Some(Duration::from_secs(60)),
    )
}

/// Polls `try_acquire` once, so its request reaches the worker. `Some(grant)` if it was
/// answered at once (then the caller holds what it got).
async fn poll_once<'a>(
    store: &'a SqliteStore,
    ns: &'a Namespace,
    claim: &'a Claim,
) -> (
    Pin<Box<dyn Future<Output = locksmith::Result<Grant>> + Send + 'a>>,
    Option<Grant>,
) {
    let mut request = store.try_acquire(ns, claim);
    match std::future::poll_fn(|cx| Poll::Ready(request.as_mut().poll(cx))).await {
        Poll::Pending => (request, None),
        Poll::Ready(answer) => (request, Some(answer.expect("try_acquire"))),
    }
}

/// Releases a grant this test received itself (not an orphan).
async fn release_own(store: &SqliteStore, ns: &Namespace, claim: &Claim, grant: Grant) {
    if let Grant::Acquired { .. } = grant {
        store
            .release(ns, &claim.name, &claim.token, None)
            .await
            .expect("release");
    }
}

/// The SQLite worker grants a lock whose requester went away while the grant was being
/// made, and releases it at once: the lock never stays held.
///
/// To put the requester's departure inside the worker's operation, another connection
/// holds the file's write lock: the worker reads (free), then waits in `BEGIN IMMEDIATE`
/// (SQLite's 50 ms busy timeout) while the test drops the request and lets go of the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_releases_a_grant_whose_requester_went_away() {
    let (_dir, path, store, ns, name) = orphan_setup().await;
    let (mut orphaned, mut answered) = (0_u32, 0_u32);
    for round in 0..20 {
        let before = fence_counter(&path);
        let blocker = rusqlite::Connection::open(&path).expect("open a blocker");
        blocker
            .execute_batch("BEGIN IMMEDIATE")
            .expect("write lock");
        let mine = claim(&name);
        let (request, first) = poll_once(&store, &ns, &mine).await;
        // The worker now passes its "requester still there?" check and waits for the write
        // lock; then the requester goes away and the write lock comes free.
        std::thread::sleep(Duration::from_millis(10));
        drop(request);
        blocker.execute_batch("ROLLBACK").expect("let go");
        drop(blocker);
        if let Some(grant) = first {
            answered += 1;
            release_own(&store, &ns, &mine, grant).await;
        }
        assert_freed(&store, &ns, &name, round).await;
        if fence_counter(&path) > before {
            orphaned += 1;
        }
    }
    eprintln!(
        "20 rounds: {orphaned} granted after the requester left, {answered} answered at once"
    );
    assert!(
        orphaned > 0,
        "no round granted the lock after its requester left, so the worker's orphan release \
         was never exercised (did the busy timeout or the store's read-first change?)"
    );

    // A client of the same file sees the lock free.
    let lm = Locksmith::connect(&format!("{}?namespace=orphans", url_of(&path)))
        .await
        .expect("connect");
    assert!(lm.inspect("job").await.unwrap().is_none());
    let guard = lm.lock("job").try_acquire().await.unwrap().expect("free");
    guard.release().await.unwrap();
}

/// A `try_acquire` polled once and dropped after 0 to ~1 ms, 20 times: whether the worker
/// had not started, was running, or had already answered, the lock must not stay held.
///
/// Fails today when the answer was already sent: the reply channel then holds a grant
/// that nobody releases until its lease ends (`SqliteStore::call` hands a grant to
/// `orphan` only when `tx.send` fails). The core is not affected (each try runs as its own
/// task, `wait::InFlight`), but the public `Store` trait's future is not cancel safe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_try_acquire_never_leaves_the_lock_held() {
    let (_dir, path, store, ns, name) = orphan_setup().await;
    let (mut orphaned, mut answered) = (0_u32, 0_u32);
    for round in 0..20 {
        let before = fence_counter(&path);
        let mine = claim(&name);
        let (request, first) = poll_once(&store, &ns, &mine).await;
        std::thread::sleep(Duration::from_micros(u64::from(round * 53)));
        drop(request);
        match first {
            Some(grant) => {
                answered += 1;
                release_own(&store, &ns, &mine, grant).await;
            }
            None if fence_counter(&path) > before => orphaned += 1,
            None => {}
        }
        assert_freed(&store, &ns, &name, round).await;
    }
    eprintln!("20 rounds: {orphaned} granted after the first poll, {answered} answered at once");
}
