//! The embedded store: one SQLite file shared by every process on a machine
//! (`sqlite://`, the default file; `sqlite:///abs/path.db`; `sqlite://relative.db`).
//!
//! # How it works
//!
//! - One dedicated worker thread per file per process owns the connection (rusqlite, SQLite
//!   built in); async callers hand it jobs and await the answer. Every `connect` to the same
//!   file in one process shares that worker, its wake-ups and its waiter queue.
//! - WAL journal; every write is one `BEGIN IMMEDIATE` transaction (a deferred transaction
//!   that upgrades to a write can fail with `SQLITE_BUSY_SNAPSHOT` in WAL). `busy_timeout` is
//!   50 ms; a busy file is retried from the async side with jittered backoff (capped at
//!   25 ms), so one busy file never stalls every watchdog of the process for long.
//! - Expiry uses this machine's wall clock (microseconds since the Unix epoch), shared by
//!   every process using the file. A clock step on this machine moves every lease; fences
//!   protect against that as against a paused holder.
//! - Fences come from one counter row in the file, bumped in the grant's transaction, so
//!   they keep increasing across restarts of every process — and, with `synchronous = FULL`,
//!   across a power cut or OS crash, which could otherwise roll back a handed-out fence.
//! - Waiters in this process are woken by the worker at once; waiters in other processes
//!   poll with jittered backoff capped at 25 ms and re-poll at the holder's expiry. A poller
//!   reads first and writes only when the lock looks free.
//! - Opening first checks, without changing anything, that the file is SQLite, writable,
//!   and either empty or a locksmith lock file (`application_id` "LKSM") of a schema this
//!   build knows (`user_version`). Then it sets WAL and creates or upgrades the schema in
//!   one `BEGIN IMMEDIATE` transaction that checks `user_version` again (WAL cannot be
//!   switched on inside a transaction, so that pragma comes first; both are retried when
//!   busy). A file from a newer locksmith, another program's database, a file that is not
//!   SQLite, an unwritable file or a missing directory is a clear error naming the path —
//!   never a silent reset.
//! - Dropping the last handle to a file lets its worker finish the queued jobs (detached
//!   releases included) and waits up to a second for that, so locks dropped just before a
//!   program ends are released rather than left to expire.
//!
//! # The default file
//!
//! `sqlite://` is `$XDG_STATE_HOME/locksmith/locks.db`, else
//! `$HOME/.local/state/locksmith/locks.db` (the directory is created). It is per user: root's
//! cron jobs and a user's shell do not share it. To share locks between users, point every
//! one of them at one file in a directory they can all write (SQLite needs to create the
//! `-wal` and `-shm` files beside it), e.g. `LOCKSMITH_URL=sqlite:///var/lib/locksmith/locks.db`
//! with the directory group-writable by a shared group.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension, TransactionBehavior, params};
use tokio::sync::oneshot;

use super::rows::{self, Row, Table, micros};
use super::{
    Capabilities, Claim, ExtendMode, Extended, Grant, GrantAll, Released, Store, WakeHub, Wakeups,
};
use crate::error::{Error, Result};
use crate::info::LockInfo;
use crate::lease::Token;
use crate::name::{LockName, Namespace};
use crate::options::{Cursor, Expired, ListQuery, Page, SetOutcome, SetPolicy};

/// The schema version this build writes (`PRAGMA user_version`).
pub const SCHEMA_VERSION: i64 = 1;

/// `PRAGMA application_id` of locksmith lock files ("LKSM"): a database without it is another
/// program's, and is never changed.
pub const APPLICATION_ID: i64 = 0x4C4B_534D;

const BUSY_TIMEOUT: Duration = Duration::from_millis(50);
/// How long a call keeps retrying a busy file before giving up with a retryable error.
const BUSY_LIMIT: Duration = Duration::from_secs(10);
/// The backoff cap of busy retries and of other processes' pollers.
const POLL_CAP: Duration = Duration::from_millis(25);

const SCHEMA: &str = "
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

/// The default lock file: `$XDG_STATE_HOME/locksmith/locks.db`, else
/// `$HOME/.local/state/locksmith/locks.db`.
///
/// # Errors
///
/// [`Error::Config`] when neither variable is set (cron, systemd units), asking for
/// `LOCKSMITH_URL`.
pub fn default_path() -> Result<PathBuf> {
    let non_empty = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    // The XDG spec: a relative path in $XDG_STATE_HOME is invalid and is ignored.
    if let Some(state) = non_empty("XDG_STATE_HOME").filter(|v| Path::new(v).is_absolute()) {
        return Ok(PathBuf::from(state).join("locksmith").join("locks.db"));
    }
    if let Some(home) = non_empty("HOME") {
        return Ok(PathBuf::from(home).join(".local/state/locksmith/locks.db"));
    }
    Err(Error::config(
        "the default SQLite file lives under $XDG_STATE_HOME or $HOME, and neither is set \
         (cron? systemd?) — set LOCKSMITH_URL, e.g. LOCKSMITH_URL=sqlite:///var/lib/locksmith/locks.db",
    ))
}

/// The embedded SQLite store. Build one with `Locksmith::connect("sqlite://…")`.
pub struct SqliteStore {
    path: PathBuf,
    /// `None` once dropping.
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    /// Closed by the worker thread when it ends.
    finished: Mutex<mpsc::Receiver<()>>,
    hub: Arc<WakeHub>,
}

/// How long dropping the last handle waits for the worker to finish queued jobs.
const DRAIN_LIMIT: Duration = Duration::from_secs(1);

impl Drop for SqliteStore {
    fn drop(&mut self) {
        // Closing the queue ends the worker once it has run every queued job.
        drop(
            self.jobs
                .get_mut()
                .unwrap_or_else(|e| e.into_inner())
                .take(),
        );
        let finished = self.finished.get_mut().unwrap_or_else(|e| e.into_inner());
        if let Err(mpsc::RecvTimeoutError::Timeout) = finished.recv_timeout(DRAIN_LIMIT) {
            tracing::warn!(path = %self.path.display(), "the SQLite worker did not finish its queued jobs in time");
        }
    }
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

type Job = Box<dyn FnOnce(&mut Worker) + Send>;

/// What to do on the worker with an answer whose requester went away.
type Orphan<T> = Arc<dyn Fn(&mut Worker, T) + Send + Sync>;

fn open_files() -> &'static tokio::sync::Mutex<HashMap<PathBuf, Weak<SqliteStore>>> {
    static OPEN: OnceLock<tokio::sync::Mutex<HashMap<PathBuf, Weak<SqliteStore>>>> =
        OnceLock::new();
    OPEN.get_or_init(Default::default)
}

/// Resolves a URL body (`""`, `/abs/path.db`, `relative.db`) to an absolute path; creates
/// the default file's directory.
pub(crate) fn resolve(body: &str) -> Result<PathBuf> {
    // The body is percent-decoded (`my%20locks.db`); anything but a regular file or a new
    // file in an existing directory is refused before SQLite touches it.
    if body.is_empty() {
        let path = default_path()?;
        let dir = path.parent().expect("the default path has a directory");
        std::fs::create_dir_all(dir).map_err(|e| {
            Error::config(format!(
                "cannot create the directory {} for the default lock file: {e} — create it, or set LOCKSMITH_URL to a writable path",
                dir.display()
            ))
        })?;
        check_regular(&path)?;
        return Ok(path);
    }
    let decoded = percent_decode(body)?;
    let path = std::path::absolute(&decoded)
        .map_err(|e| Error::config(format!("cannot resolve the SQLite path {body:?}: {e}")))?;
    check_regular(&path)?;
    let dir = path.parent().unwrap_or(Path::new("/"));
    if dir.exists() && !dir.is_dir() {
        return Err(Error::config(format!(
            "{} is a file, not a directory — choose a lock file path inside a directory",
            dir.display()
        )));
    }
    if !dir.is_dir() {
        return Err(Error::config(format!(
            "the directory {} of the lock file does not exist — create it (mkdir -p {}) or choose another path",
            dir.display(),
            shell_quoted(dir)
        )));
    }
    // One worker per file, whatever path spelled it: resolve symlinks in the directory.
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    Ok(match path.file_name() {
        Some(file) => dir.join(file),
        None => path,
    })
}

/// Refuses an existing, non-empty file that does not start with SQLite's header (SQLite
/// itself would treat a 1-byte file as empty and overwrite it).
fn check_header(path: &Path) -> Result<()> {
    use std::io::Read;
    let Ok(mut file) = std::fs::File::open(path) else {
        return Ok(()); // missing (created by SQLite) or unreadable (reported by SQLite)
    };
    let mut header = Vec::with_capacity(16);
    if let Err(e) = file.by_ref().take(16).read_to_end(&mut header) {
        return Err(Error::config(format!(
            "cannot read {}: {e}",
            path.display()
        )));
    }
    if header.is_empty() || header == b"SQLite format 3\0" {
        return Ok(());
    }
    Err(Error::config(format!(
        "{} is not a SQLite database — move it aside and let locksmith create a new one, or choose another path; locksmith never overwrites a file",
        path.display()
    )))
}

/// Decodes `%XX` escapes in a URL's path (`sqlite:///srv/my%20locks/x.db`).
fn percent_decode(body: &str) -> Result<PathBuf> {
    use std::os::unix::ffi::OsStringExt;
    let bytes = body.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            let Some(byte) = hex else {
                return Err(Error::config(format!(
                    "the SQLite path {body:?} has a % that is not followed by two hex digits — write %25 for a literal %"
                )));
            };
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    if out.contains(&0) {
        return Err(Error::config(format!(
            "the SQLite path {body:?} decodes to a NUL byte — remove the %00"
        )));
    }
    Ok(PathBuf::from(std::ffi::OsString::from_vec(out)))
}

/// Quotes a path for a shell command shown in a hint: `'/srv/my locks'`.
fn shell_quoted(path: &Path) -> String {
    let s = path.to_string_lossy();
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+,:@%".contains(c))
    {
        return s.into_owned();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Refuses a lock file path that exists and is not a regular file (a device such as
/// `/dev/null`, a FIFO, a directory) before SQLite opens it — SQLite would write its
/// journal beside it.
fn check_regular(path: &Path) -> Result<()> {
    match std::fs::metadata(path) {
        Ok(meta) if !meta.is_file() => {
            let (kind, example) = if meta.is_dir() {
                ("a directory", path.join("locks.db"))
            } else {
                (
                    "a device, FIFO or socket",
                    PathBuf::from("/var/lib/locksmith/locks.db"),
                )
            };
            Err(Error::config(format!(
                "{} is not a regular file ({kind}) — give the path of a lock file, e.g. sqlite://{}",
                path.display(),
                example.display()
            )))
        }
        _ => Ok(()), // a regular file, or missing (created in its existing directory)
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the lock file at `path`, sharing the worker of any handle
    /// of this process already open on it.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the path and the fix for a newer schema, an unwritable or
    /// corrupt file, or a file that is not SQLite; [`Error::Store`] for other I/O failures.
    pub async fn open(path: PathBuf) -> Result<Arc<SqliteStore>> {
        let mut open = open_files().lock().await;
        if let Some(store) = open.get(&path).and_then(Weak::upgrade) {
            return Ok(store);
        }
        open.retain(|_, w| w.strong_count() > 0);
        let hub = Arc::new(WakeHub::default());
        let (jobs, rx) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = oneshot::channel();
        let (thread_path, thread_hub) = (path.clone(), hub.clone());
        let (finished_tx, finished) = mpsc::channel::<()>();
        std::thread::Builder::new()
            .name("locksmith-sqlite".into())
            .spawn(move || {
                let _finished = finished_tx; // dropped when the thread ends
                match Worker::open(thread_path, thread_hub) {
                    Ok(mut worker) => {
                        let _ = ready_tx.send(Ok(()));
                        while let Ok(job) = rx.recv() {
                            // A panicking job must not take every other caller's worker down.
                            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                                job(&mut worker)
                            }));
                        }
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            })
            .map_err(|e| Error::store("sqlite", false, e))?;
        ready_rx.await.map_err(|_| {
            Error::store(
                "sqlite",
                false,
                "the SQLite worker thread died while opening",
            )
        })??;
        let store = Arc::new(SqliteStore {
            path: path.clone(),
            jobs: Mutex::new(Some(jobs)),
            finished: Mutex::new(finished),
            hub,
        });
        open.insert(path, Arc::downgrade(&store));
        Ok(store)
    }

    /// The file this store uses.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn sender(&self) -> Option<mpsc::Sender<Job>> {
        self.jobs.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn send(&self, job: Job) -> Result<()> {
        self.sender()
            .ok_or(())
            .and_then(|jobs| jobs.send(job).map_err(|_| ()))
            .map_err(|_| {
                Error::store(
                    "sqlite",
                    false,
                    format!("the SQLite worker for {} has stopped", self.path.display()),
                )
            })
    }

    /// Runs `op` on the worker, retrying while the file is busy. If the caller goes away
    /// after `op` succeeded — before the worker answered, or with the answer not yet taken —
    /// the answer goes to `orphan` on the worker (a grant nobody will use is released).
    async fn call<T, F, O>(&self, op: F, orphan: O) -> Result<T>
    where
        T: Send + 'static,
        F: Fn(&mut Worker) -> Result<T, SqlError> + Send + Sync + 'static,
        O: Fn(&mut Worker, T) + Send + Sync + 'static,
    {
        let op = Arc::new(op);
        let orphan: Orphan<T> = Arc::new(orphan);
        let started = Instant::now();
        let mut pause = Duration::from_millis(1);
        loop {
            let (tx, rx) = oneshot::channel();
            let (job_op, job_orphan) = (op.clone(), orphan.clone());
            self.send(Box::new(move |w| {
                if tx.is_closed() {
                    return; // the requester went away before its turn
                }
                match job_op(w) {
                    Ok(v) => {
                        if let Err(Ok(v)) = tx.send(Ok(v)) {
                            job_orphan(w, v);
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                    }
                }
            }))?;
            let mut pending = Pending {
                rx: Some(rx),
                orphan: orphan.clone(),
                jobs: self.sender(),
            };
            let answer = pending.answer().await?;
            match answer {
                Ok(v) => return Ok(v),
                Err(e) if e.is_busy() && started.elapsed() < BUSY_LIMIT => {
                    tokio::time::sleep(jitter(pause)).await;
                    pause = (pause * 2).min(POLL_CAP);
                }
                Err(e) => return Err(e.into_error(&self.path)),
            }
        }
    }

    async fn run<T, F>(&self, op: F) -> Result<T>
    where
        T: Send + 'static,
        F: Fn(&mut Worker) -> Result<T, SqlError> + Send + Sync + 'static,
    {
        self.call(op, |_, _| {}).await
    }
}

/// A request sent to the worker. Dropped before its answer is taken, it hands an answer that
/// arrived meanwhile to the orphan handler, on the worker.
struct Pending<T: Send + 'static> {
    rx: Option<oneshot::Receiver<Result<T, SqlError>>>,
    orphan: Orphan<T>,
    jobs: Option<mpsc::Sender<Job>>,
}

impl<T: Send + 'static> Pending<T> {
    async fn answer(&mut self) -> Result<Result<T, SqlError>> {
        let rx = self.rx.as_mut().expect("answer is taken once");
        let answer = rx.await;
        self.rx = None;
        answer.map_err(|_| Error::store("sqlite", true, "the SQLite worker dropped a request"))
    }
}

impl<T: Send + 'static> Drop for Pending<T> {
    fn drop(&mut self) {
        let Some(mut rx) = self.rx.take() else {
            return;
        };
        // After close() the worker's send fails and it calls `orphan` itself; an answer sent
        // before is still here to take.
        rx.close();
        if let (Ok(Ok(v)), Some(jobs)) = (rx.try_recv(), &self.jobs) {
            let orphan = self.orphan.clone();
            let _ = jobs.send(Box::new(move |w| orphan(w, v)));
        }
    }
}

/// A uniformly random pause in `[d/2, d]`.
fn jitter(d: Duration) -> Duration {
    d.mul_f64(0.5 + fastrand::f64() / 2.0)
}

/// What the worker's operations fail with.
#[derive(Debug)]
pub(crate) enum SqlError {
    Sql(rusqlite::Error),
    Lock(Error),
}

impl From<rusqlite::Error> for SqlError {
    fn from(e: rusqlite::Error) -> Self {
        SqlError::Sql(e)
    }
}

impl From<Error> for SqlError {
    fn from(e: Error) -> Self {
        SqlError::Lock(e)
    }
}

impl SqlError {
    fn code(&self) -> Option<ErrorCode> {
        match self {
            SqlError::Sql(e) => e.sqlite_error_code(),
            SqlError::Lock(_) => None,
        }
    }

    fn is_busy(&self) -> bool {
        matches!(
            self.code(),
            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
        )
    }

    fn into_error(self, path: &Path) -> Error {
        let path = path.display();
        let e = match self {
            SqlError::Lock(e) => return e,
            SqlError::Sql(e) => e,
        };
        let fix = match e.sqlite_error_code() {
            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
                return Error::store(
                    "sqlite",
                    true,
                    format!(
                        "{path} stayed busy for {BUSY_LIMIT:?} ({e}) — another process holds a long write transaction on it"
                    ),
                );
            }
            Some(ErrorCode::ReadOnly | ErrorCode::PermissionDenied | ErrorCode::CannotOpen) => {
                format!(
                    "cannot write the lock file {path} ({e}) — every user of a lock file needs write access to it and to its directory (SQLite creates -wal and -shm files there); fix the permissions or choose another path"
                )
            }
            Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => format!(
                "{path} is not a SQLite database or is corrupt ({e}) — move it aside and let locksmith create a new one; locksmith never resets a file silently"
            ),
            Some(ErrorCode::DiskFull) => {
                format!("the disk holding {path} is full ({e}) — free some space")
            }
            _ => return Error::store("sqlite", false, format!("{path}: {e}")),
        };
        Error::Config {
            message: fix,
            source: Some(Box::new(e)),
        }
    }
}

fn now_micros() -> i64 {
    micros(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO),
    )
}

/// The worker thread's side: the connection and the wake-ups it sends.
pub(crate) struct Worker {
    conn: Connection,
    hub: Arc<WakeHub>,
}

/// One namespace's rows on a connection (inside a transaction for writes).
struct SqlTable<'c> {
    conn: &'c Connection,
    ns: &'c str,
    now: i64,
}

const COLUMNS: &str = "token, owner, host, pid, fence, acquired_at, expires_at";

fn row_from(r: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<Row> {
    let token: Option<String> = r.get(at)?;
    Ok(Row {
        token: token.and_then(|t| t.parse().ok()),
        owner: r.get(at + 1)?,
        host: r.get(at + 2)?,
        // Lenient, so one odd row written by someone else cannot break list or clear.
        pid: u32::try_from(r.get::<_, i64>(at + 3).unwrap_or(0)).unwrap_or(0),
        fence: u64::try_from(r.get::<_, i64>(at + 4)?).unwrap_or(0),
        acquired_at: r.get(at + 5)?,
        expires_at: r.get(at + 6)?,
    })
}

impl Table for SqlTable<'_> {
    type Error = SqlError;

    fn now(&self) -> i64 {
        self.now
    }

    fn epoch(&self) -> SystemTime {
        UNIX_EPOCH
    }

    fn get(&mut self, name: &str) -> Result<Option<Row>, SqlError> {
        let sql =
            format!("SELECT {COLUMNS} FROM locksmith_locks WHERE namespace = ?1 AND name = ?2");
        Ok(self
            .conn
            .prepare_cached(&sql)?
            .query_row(params![self.ns, name], |r| row_from(r, 0))
            .optional()?)
    }

    fn put(&mut self, name: &str, row: &Row) -> Result<(), SqlError> {
        self.conn
            .prepare_cached(
                "INSERT OR REPLACE INTO locksmith_locks
                 (namespace, name, token, owner, host, pid, fence, acquired_at, expires_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?
            .execute(params![
                self.ns,
                name,
                row.token.as_ref().map(Token::expose),
                row.owner,
                row.host,
                row.pid,
                i64::try_from(row.fence).unwrap_or(i64::MAX),
                row.acquired_at,
                row.expires_at,
            ])?;
        Ok(())
    }

    fn delete(&mut self, name: &str) -> Result<bool, SqlError> {
        let n = self
            .conn
            .prepare_cached("DELETE FROM locksmith_locks WHERE namespace = ?1 AND name = ?2")?
            .execute(params![self.ns, name])?;
        Ok(n > 0)
    }

    fn next_fence(&mut self) -> Result<u64, SqlError> {
        let fence: i64 = self
            .conn
            .prepare_cached(
                "UPDATE locksmith_fence SET value = value + 1 WHERE id = 0 RETURNING value",
            )?
            .query_row([], |r| r.get(0))?;
        Ok(u64::try_from(fence).unwrap_or(0))
    }
}

impl Worker {
    fn open(path: PathBuf, hub: Arc<WakeHub>) -> Result<Worker> {
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let fail = |e: rusqlite::Error| SqlError::Sql(e).into_error(&path);
        check_header(&path)?;
        let conn = Connection::open_with_flags(&path, flags).map_err(fail)?;
        if conn.is_readonly(rusqlite::MAIN_DB).unwrap_or(false) {
            return Err(Error::config(format!(
                "cannot write the lock file {} (it opened read-only) — every user of a lock file needs write access to it and to its directory; fix the permissions or choose another path",
                path.display()
            )));
        }
        conn.busy_timeout(BUSY_TIMEOUT).map_err(fail)?;
        let mut worker = Worker { conn, hub };
        let started = Instant::now();
        let mut pause = Duration::from_millis(1);
        loop {
            match worker.init(&path) {
                Ok(()) => break,
                Err(e) if e.is_busy() && started.elapsed() < BUSY_LIMIT => {
                    std::thread::sleep(jitter(pause));
                    pause = (pause * 2).min(POLL_CAP);
                }
                Err(e) => return Err(e.into_error(&path)),
            }
        }
        worker
            .conn
            .execute_batch("PRAGMA synchronous = FULL;")
            .map_err(fail)?;
        Ok(worker)
    }

    /// WAL, then the schema in one IMMEDIATE transaction that checks `user_version`. A file
    /// from a newer locksmith is refused before anything in it changes.
    fn init(&mut self, path: &Path) -> Result<(), SqlError> {
        let newer = |version: i64| -> SqlError {
            Error::config(format!(
                "{} was written by a newer locksmith (schema {version}; this one knows up to {SCHEMA_VERSION}) — upgrade locksmith, or use another file",
                path.display()
            ))
            .into()
        };
        self.check_owner_file(path, &newer)?;
        let mode: String = self
            .conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(path = %path.display(), %mode, "SQLite refused WAL mode; writers will block readers");
        }
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        // Again under the write lock: another process may have created the file meanwhile.
        let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if version > SCHEMA_VERSION {
            return Err(newer(version));
        }
        if version < SCHEMA_VERSION {
            tx.execute_batch(SCHEMA)?;
            tx.execute_batch(&format!(
                "PRAGMA application_id = {APPLICATION_ID}; PRAGMA user_version = {SCHEMA_VERSION};"
            ))?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Refuses, before anything in the file changes, a database of another program (tables
    /// but not locksmith's application id) or of a newer locksmith.
    fn check_owner_file(
        &self,
        path: &Path,
        newer: &dyn Fn(i64) -> SqlError,
    ) -> Result<(), SqlError> {
        let (app, version, tables): (i64, i64, i64) = self.conn.query_row(
            "SELECT (SELECT application_id FROM pragma_application_id),
                    (SELECT user_version FROM pragma_user_version),
                    (SELECT count(*) FROM sqlite_master)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?;
        if tables > 0 && app != APPLICATION_ID {
            return Err(Error::config(format!(
                "{} is a SQLite database of another program (application_id {app}, {tables} schema objects) — locksmith will not change it; choose another path",
                path.display()
            ))
            .into());
        }
        if version > SCHEMA_VERSION {
            return Err(newer(version));
        }
        Ok(())
    }

    fn read<T>(
        &mut self,
        ns: &Namespace,
        op: impl FnOnce(&mut SqlTable<'_>) -> Result<T, SqlError>,
    ) -> Result<T, SqlError> {
        op(&mut SqlTable {
            conn: &self.conn,
            ns: ns.as_str(),
            now: now_micros(),
        })
    }

    fn write<T>(
        &mut self,
        ns: &Namespace,
        op: impl FnOnce(&mut SqlTable<'_>) -> Result<T, SqlError>,
    ) -> Result<T, SqlError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        // The clock is read once the write lock is held, so grants are ordered in time.
        let out = op(&mut SqlTable {
            conn: &tx,
            ns: ns.as_str(),
            now: now_micros(),
        })?;
        tx.commit()?;
        Ok(out)
    }

    fn try_acquire(&mut self, ns: &Namespace, claim: &Claim) -> Result<Grant, SqlError> {
        // Read first: a poller that finds the lock held writes nothing.
        let now = now_micros();
        let seen = self.read(ns, |t| t.get(claim.name.as_str()))?;
        if let Some(row) = seen.filter(|r| r.live(now)) {
            return Ok(if row.token.as_ref() == Some(&claim.token) {
                Grant::AlreadyHeld
            } else {
                Grant::Held(row.info(claim.name.as_str(), now, UNIX_EPOCH))
            });
        }
        self.write(ns, |t| rows::try_acquire(t, claim))
    }

    fn release(
        &mut self,
        ns: &Namespace,
        name: &LockName,
        token: &Token,
        min_hold: Option<Duration>,
    ) -> Result<Released, SqlError> {
        let outcome = self.write(ns, |t| rows::release(t, name, token, min_hold))?;
        if outcome != Released::NotHeld {
            self.hub.notify(ns, name);
        }
        Ok(outcome)
    }

    /// Releases from `Drop` or for a requester that went away. Nobody waits for the answer,
    /// so a busy file is retried here — a few times only, so the worker (and every caller
    /// queued behind it) is held up for at most a few hundred milliseconds; after that the
    /// lease expires on its own.
    fn release_unattended(
        &mut self,
        ns: &Namespace,
        name: &LockName,
        token: &Token,
        min_hold: Option<Duration>,
    ) {
        const ATTEMPTS: u32 = 4;
        let mut attempt = 1;
        loop {
            match self.release(ns, name, token, min_hold) {
                Err(e) if e.is_busy() && attempt < ATTEMPTS => {
                    attempt += 1;
                    std::thread::sleep(jitter(POLL_CAP));
                }
                Err(e) => {
                    tracing::warn!(lock = %name, error = ?e, "SQLite release failed; the lease will expire");
                    return;
                }
                Ok(_) => return,
            }
        }
    }
}

#[async_trait]
impl Store for SqliteStore {
    fn kind(&self) -> &'static str {
        "sqlite"
    }

    fn identity(&self) -> String {
        format!("sqlite://{}", self.path.display())
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            fencing: true,
            persistent: true,
            cross_process: true,
            notify: true,
            poll_interval: Some(POLL_CAP),
            atomic_multi: true,
            never_expire: true,
            expired_visible: true,
            holder_metadata: true,
            namespaces: true,
            min_hold: true,
            ordered_list: true,
            ..Capabilities::NONE
        }
    }

    async fn try_acquire(&self, ns: &Namespace, claim: &Claim) -> Result<Grant> {
        let (ns, claim) = (ns.clone(), claim.clone());
        let (ns2, name, token) = (ns.clone(), claim.name.clone(), claim.token.clone());
        self.call(
            move |w| w.try_acquire(&ns, &claim),
            move |w, grant| {
                if let Grant::Acquired { .. } = grant {
                    w.release_unattended(&ns2, &name, &token, None);
                }
            },
        )
        .await
    }

    async fn try_acquire_all(&self, ns: &Namespace, claims: &[Claim]) -> Result<GrantAll> {
        let (ns, claims) = (ns.clone(), Arc::<[Claim]>::from(claims));
        let (ns2, claims2) = (ns.clone(), claims.clone());
        self.call(
            move |w| w.write(&ns, |t| rows::try_acquire_all(t, &claims)),
            move |w, grant| {
                if let GrantAll::Acquired(_) = grant {
                    for c in claims2.iter() {
                        w.release_unattended(&ns2, &c.name, &c.token, None);
                    }
                }
            },
        )
        .await
    }

    async fn release(
        &self,
        ns: &Namespace,
        name: &LockName,
        token: &Token,
        min_hold: Option<Duration>,
    ) -> Result<Released> {
        let (ns, name, token) = (ns.clone(), name.clone(), token.clone());
        self.run(move |w| w.release(&ns, &name, &token, min_hold))
            .await
    }

    fn release_detached(
        &self,
        ns: &Namespace,
        name: &LockName,
        token: &Token,
        min_hold: Option<Duration>,
    ) {
        let (ns, name, token) = (ns.clone(), name.clone(), token.clone());
        let sent = self.send(Box::new(move |w| {
            w.release_unattended(&ns, &name, &token, min_hold)
        }));
        if let Err(err) = sent {
            tracing::debug!(%err, "detached release not sent; the lease will expire");
        }
    }

    async fn extend(
        &self,
        ns: &Namespace,
        name: &LockName,
        token: &Token,
        mode: ExtendMode,
    ) -> Result<Extended> {
        let (ns, name, token) = (ns.clone(), name.clone(), token.clone());
        self.run(move |w| {
            let (answer, shortened) = w.write(&ns, |t| rows::extend(t, &name, &token, mode))?;
            if shortened {
                w.hub.notify(&ns, &name);
            }
            Ok(answer)
        })
        .await
    }

    async fn held_by(
        &self,
        ns: &Namespace,
        name: &LockName,
        token: &Token,
    ) -> Result<Option<LockInfo>> {
        let (ns, name, token) = (ns.clone(), name.clone(), token.clone());
        self.run(move |w| w.read(&ns, |t| rows::held_by(t, &name, &token)))
            .await
    }

    async fn inspect(&self, ns: &Namespace, name: &LockName) -> Result<Option<LockInfo>> {
        let (ns, name) = (ns.clone(), name.clone());
        self.run(move |w| w.read(&ns, |t| rows::inspect(t, &name)))
            .await
    }

    async fn list(&self, ns: &Namespace, query: &ListQuery) -> Result<Page> {
        let (ns, query) = (ns.clone(), query.clone());
        self.run(move |w| {
            let now = now_micros();
            let expired = match query.expired {
                Expired::Exclude => 0,
                Expired::Include => 1,
                _ => 2,
            };
            let sql = format!(
                "SELECT name, {COLUMNS} FROM locksmith_locks
                 WHERE namespace = ?1 AND name >= ?2 AND substr(name, 1, length(?2)) = ?2
                   AND (?3 IS NULL OR name > ?3)
                   AND CASE ?4
                         WHEN 0 THEN expires_at IS NULL OR expires_at > ?5
                         WHEN 1 THEN 1
                         ELSE expires_at IS NOT NULL AND expires_at <= ?5
                       END
                 ORDER BY name LIMIT ?6"
            );
            let mut stmt = w.conn.prepare_cached(&sql)?;
            let limit = i64::try_from(query.limit).unwrap_or(i64::MAX - 1) + 1;
            let mut items = stmt
                .query_map(
                    params![
                        ns.as_str(),
                        query.prefix,
                        query.after.as_ref().map(Cursor::as_str),
                        expired,
                        now,
                        limit
                    ],
                    |r| {
                        let name: String = r.get(0)?;
                        Ok(row_from(r, 1)?.info(&name, now, UNIX_EPOCH))
                    },
                )?
                .collect::<rusqlite::Result<Vec<LockInfo>>>()?;
            let next = if items.len() > query.limit {
                items.truncate(query.limit);
                items.last().map(|i| Cursor::new(i.name.clone()))
            } else {
                None
            };
            Ok(Page::new(items, next))
        })
        .await
    }

    async fn force_release(&self, ns: &Namespace, names: &[LockName]) -> Result<Vec<bool>> {
        let (ns, names) = (ns.clone(), names.to_vec());
        self.run(move |w| {
            let existed = w.write(&ns, |t| rows::force_release(t, &names))?;
            for name in &names {
                w.hub.notify(&ns, name);
            }
            Ok(existed)
        })
        .await
    }

    async fn reset_all(&self, ns: &Namespace) -> Result<u64> {
        let ns = ns.clone();
        self.run(move |w| {
            let n = w.write(&ns, |t| {
                Ok(t.conn
                    .prepare_cached("DELETE FROM locksmith_locks WHERE namespace = ?1")?
                    .execute([t.ns])?)
            })?;
            w.hub.notify_namespace(&ns);
            Ok(n as u64)
        })
        .await
    }

    async fn purge_expired(&self, ns: &Namespace) -> Result<u64> {
        let ns = ns.clone();
        self.run(move |w| {
            let n = w.write(&ns, |t| {
                Ok(t.conn
                    .prepare_cached(
                        "DELETE FROM locksmith_locks
                         WHERE namespace = ?1 AND expires_at IS NOT NULL AND expires_at <= ?2",
                    )?
                    .execute(params![t.ns, t.now])?)
            })?;
            Ok(n as u64)
        })
        .await
    }

    async fn set_locks(
        &self,
        ns: &Namespace,
        claims: &[Claim],
        policy: &SetPolicy,
    ) -> Result<SetOutcome> {
        let (ns, claims, policy) = (ns.clone(), claims.to_vec(), policy.clone());
        self.run(move |w| w.write(&ns, |t| rows::set_locks(t, &claims, &policy)))
            .await
    }

    async fn subscribe(&self, ns: &Namespace, name: &LockName) -> Result<Wakeups> {
        // In-process wake-ups come from this process's worker; other processes are polled.
        Ok(self.hub.subscribe(ns, name))
    }
}
