//! The embedded store: one SQLite file shared by every process on a machine
//! (`sqlite://`, the default file; `sqlite:///abs/path.db`; `sqlite://relative.db`).
//!
//! # How it works
//!
//! - One connection per file per process (rusqlite, SQLite built in), with a dedicated
//!   worker thread. Every `connect` to the same file in one process shares them, the
//!   wake-ups and the waiter queue. A call runs on its caller's thread when that needs no
//!   waiting: nothing is queued for the worker, the connection is free, and no other
//!   connection is writing the file (SQLite's busy handler is off for such a call; a busy
//!   file sends it to the worker). Everything else — a busy file's retries, detached
//!   releases from `Drop`, `list` pages, `purge_expired`, `reset_all`, WAL checkpoints —
//!   runs on the worker, and async callers await its answer. Running the short calls in
//!   place saves the two thread wake-ups of a hand-off per call, which on a 2-core VM cost
//!   more than the statements themselves (BENCHMARKS.md). The connection's automatic WAL
//!   checkpoints are off; the worker checkpoints (`PASSIVE`) every 1,000 WAL pages on a second
//!   connection of its own, so no call on a caller's thread ever syncs the file, and calls
//!   go on while a checkpoint does.
//! - WAL journal; every write is one `BEGIN IMMEDIATE` transaction (a deferred transaction
//!   that upgrades to a write can fail with `SQLITE_BUSY_SNAPSHOT` in WAL). `busy_timeout` is
//!   50 ms; a busy file is retried from the async side with jittered backoff (capped at
//!   25 ms), so one busy file never stalls every watchdog of the process for long.
//! - Expiry uses this machine's wall clock (microseconds since the Unix epoch), shared by
//!   every process using the file. A clock step on this machine moves every lease; fences
//!   protect against that as against a paused holder.
//! - Fences are [`hybrid_fence`](super::hybrid_fence)s, minted in the grant's transaction:
//!   `max(counter + 1, clock)` where the counter is one row in the file and the clock is
//!   this machine's wall clock in microseconds since the Unix epoch (about 1.7 × 10^15
//!   today, below 2^53 until the year 2255). The counter keeps fences increasing when the
//!   clock steps back; the clock keeps them increasing when the counter is lost.
//! - The file runs `synchronous = NORMAL` in WAL: a commit is durable across a crash of any
//!   process, but a power cut or OS crash may roll back the last transactions — grants whose
//!   fences were already handed out, and the counter with them. Fences survive that: a fence
//!   is the clock of its grant (or, when grants come faster than one per microsecond or the
//!   clock stepped back, the counter just above it), so the lost fences lie before the power
//!   cut, and the first grant after the reboot takes the clock, which has moved past them —
//!   unless the machine's clock stepped back across the reboot by more than the reboot
//!   took. `FULL` would fsync on every grant, for about a tenth of the throughput.
//! - Waiters in this process are woken by the worker at once; waiters in other processes
//!   poll with jittered backoff capped at 25 ms and re-poll at the holder's expiry. A poller
//!   reads first and writes only when the lock looks free (or to reserve it, below).
//! - Cross-process fairness: a process whose waiters are notified at once could win every
//!   race against a poller in another process. So a claim that has waited 200 ms
//!   (the larger of [`Claim::waited`](super::Claim::waited), filled in by the core, and how
//!   long this process has been trying with the claim's token) and finds the lock held
//!   writes a *reservation* of the next grant, valid for 100 ms after its latest try
//!   (it refreshes it while it keeps polling; releasing its token removes it). The
//!   reserver polls every 1 ms while it waits (`LockInfo::retry_in`), so a reserved
//!   handoff takes about that long after the release, not a whole poll interval. While another
//!   token's reservation is live, the free lock is granted to nobody else: they see it held,
//!   with holder fields `None`, `released = true` and `expires_in` the reservation's time
//!   left. A grant removes the name's reservation, and a live reservation is never taken
//!   over, so waiters that have waited long are served in turn. Bound: once a poller has
//!   waited 200 ms, its next try while the lock is held reserves it (unless an earlier long
//!   waiter's reservation is live: that one is served first), and the next release goes to
//!   it at its next poll, at most 25 ms later. Against two processes alternating on a lock
//!   (20 ms holds, a notified waiter in each), a polling third process got it within 300 ms
//!   every time (`store_fairness.rs` asserts 1 s). A reserver that went away holds a free
//!   lock back for at most 100 ms.
//! - Garbage: every grant's transaction (the only writes that create rows) also removes up
//!   to 64 rows (of any namespace) that expired more than `?retain=` ago (humantime, default
//!   `1h`; `0s` removes expired rows at the next grant), through an index on `expires_at`,
//!   and lapsed reservations. So a write's extra work is bounded, and per-period names (`report-2026-12-02`) do not grow the file
//!   without bound. Within retention an expired row stays visible (`inspect`, `list` with
//!   [`Expired::Include`]). Retention is per file and process: a later `connect` giving
//!   `?retain=` changes it for every handle of this process, and where processes give
//!   different values, the shortest one in use decides in effect.
//! - The schema is versioned (`user_version`); version 2 added `min_hold`, the
//!   reservations table and the expiry index, and a version-1 file is upgraded in place when
//!   opened (version-1 builds then refuse the file as newer).
//! - Opening first checks, without changing anything, that the file is SQLite, writable,
//!   and either empty or a locksmith lock file (`application_id` "LKSM") of a schema this
//!   build knows (`user_version`). Then it sets WAL and creates or upgrades the schema in
//!   one `BEGIN IMMEDIATE` transaction that checks `user_version` again (WAL cannot be
//!   switched on inside a transaction, so that pragma comes first; both are retried when
//!   busy). A file from a newer locksmith, another program's database, a file that is not
//!   SQLite, an unwritable file or a missing directory is a clear error naming the path —
//!   never a silent reset.
//! - Dropping the last handle to a file never blocks: its worker finishes the queued jobs
//!   (detached releases included) on its own and then ends. Inside a tokio runtime a
//!   blocking task waits for that (up to a second), so the runtime's orderly shutdown at the
//!   end of `#[tokio::main]` lets the worker finish; and when the process exits (however:
//!   `main` returning, `std::process::exit`), a handler registered with `atexit(3)` waits up
//!   to a second for every job still queued, so a guard dropped right before the end is
//!   released. [`Locksmith::close`](crate::Locksmith::close) (which calls [`Store::close`])
//!   waits up to 5 s, for programs that want to know. Only a process killed outright
//!   (SIGKILL, abort) leaves its locks to expire.
//!
//! # The django-lockmgr layout
//!
//! `sqlite:///path/to/django/db.sqlite3?layout=django-lockmgr` opens a Django project's
//! database instead of a lock file, and keeps locks in django-lockmgr's `lockmgr_lock` table,
//! shared with the project's Python code. It runs on the same kind of worker thread (its
//! own, per file) with the same transactions and retries, but leaves the file as Django
//! keeps it: no WAL, no schema version. See [`lockmgr`].
//!
//! # Test hooks
//!
//! [`step_clock`] steps this process's clock for one file (expiry and fences), to test
//! clock steps on a store host.
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
use std::sync::atomic::{AtomicI32, AtomicI64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, LazyLock, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub mod lockmgr;

use async_trait::async_trait;
use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension, TransactionBehavior, params};
use tokio::sync::oneshot;

pub(crate) use super::rows::StoreOptions;
use super::rows::{self, DEFAULT_RETAIN, Reservation, Row, SWEEP_LIMIT, Table, micros};
use super::{
    Capabilities, Claim, ExtendMode, Extended, Grant, GrantAll, Released, Store, WakeHub, Wakeups,
};
use crate::error::{Error, Result};
use crate::info::LockInfo;
use crate::lease::Token;
use crate::name::{LockName, Namespace};
use crate::options::{Cursor, Expired, ListQuery, Page, SetOutcome, SetPolicy};
use crate::url::StoreUrl;

/// The name of every worker thread.
const WORKER_THREAD: &str = "locksmith-sqlite";

/// The schema version this build writes (`PRAGMA user_version`).
pub const SCHEMA_VERSION: i64 = 2;

/// `PRAGMA application_id` of locksmith lock files ("LKSM"): a database without it is another
/// program's, and is never changed.
pub const APPLICATION_ID: i64 = 0x4C4B_534D;

const BUSY_TIMEOUT: Duration = Duration::from_millis(50);

/// How soon the claim holding a name's reservation polls again while the lock is held
/// ([`LockInfo::retry_in`](crate::LockInfo::retry_in)); other pollers back off up to
/// [`POLL_CAP`].
const RESERVER_POLL: Duration = Duration::from_millis(1);
/// How long a call keeps retrying a busy file before giving up with a retryable error.
const BUSY_LIMIT: Duration = Duration::from_secs(10);
/// The backoff cap of busy retries and of other processes' pollers.
const POLL_CAP: Duration = Duration::from_millis(25);

/// How long [`Store::close`] waits for the worker to finish the jobs queued before it.
const CLOSE_LIMIT: Duration = Duration::from_secs(5);

/// A new file's schema (version 2).
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
    min_hold    INTEGER,
    PRIMARY KEY (namespace, name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS locksmith_fence (
    id    INTEGER PRIMARY KEY CHECK (id = 0),
    value INTEGER NOT NULL
);
INSERT OR IGNORE INTO locksmith_fence (id, value) VALUES (0, 0);
";

/// What version 2 added, on top of either schema: the reservations of cross-process
/// fairness and the expiry index garbage collection walks.
const SCHEMA_V2: &str = "
CREATE TABLE IF NOT EXISTS locksmith_reservations (
    namespace TEXT NOT NULL,
    name      TEXT NOT NULL,
    token     TEXT NOT NULL,
    until     INTEGER NOT NULL,
    PRIMARY KEY (namespace, name)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS locksmith_reservations_until ON locksmith_reservations (until);
CREATE INDEX IF NOT EXISTS locksmith_locks_expires_at ON locksmith_locks (expires_at)
    WHERE expires_at IS NOT NULL;
";

/// A grant's garbage sweep: the keys of rows expired before `?1`, at most [`SWEEP_LIMIT`] of
/// them, each then deleted by key.
///
/// The limit is spliced into the text, never bound: SQLite re-prepares a statement on every
/// bind of a `LIMIT` parameter (the limit may change the plan), which costs more than the
/// rest of the grant (BENCHMARKS.md, "What the profile taught"). And the rows are found by
/// one statement and deleted by another: a single `DELETE … WHERE (namespace, name) IN
/// (SELECT … LIMIT …)` builds an ephemeral table for the `IN` list on every run, even an
/// empty one, whose page cache was allocated and freed each time (malloc then trimmed and
/// regrew the heap: a fifth of a grant's time, session 9).
static SWEEP_LOCKS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT namespace, name FROM locksmith_locks
         WHERE expires_at IS NOT NULL AND expires_at <= ?1 LIMIT {SWEEP_LIMIT}"
    )
});
/// A grant's sweep of lapsed reservations (before `?1`), at most [`SWEEP_LIMIT`], found and
/// deleted like [`SWEEP_LOCKS`]'s.
static SWEEP_RESERVATIONS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT namespace, name FROM locksmith_reservations WHERE until <= ?1
         LIMIT {SWEEP_LIMIT}"
    )
});

/// Deletes with `delete`, inside `tx`, the rows whose keys `find` (one of the sweeps)
/// returns for `before`.
fn sweep_garbage(tx: &Connection, find: &str, before: i64, delete: &str) -> Result<(), SqlError> {
    let keys = tx
        .prepare_cached(find)?
        .query_map([before], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    if !keys.is_empty() {
        let mut delete = tx.prepare_cached(delete)?;
        for (ns, name) in keys {
            delete.execute(params![ns, name])?;
        }
    }
    Ok(())
}

/// Upgrades a version-1 file (before `min_hold` was recorded).
const MIGRATE_V1: &str = "ALTER TABLE locksmith_locks ADD COLUMN min_hold INTEGER;";

/// Opens the store a `sqlite://` URL names: a locksmith lock file, or with
/// `?layout=django-lockmgr` the lock table of a Django project's database (see [`lockmgr`]).
pub(crate) async fn open(url: &mut StoreUrl) -> Result<Arc<dyn Store>> {
    let shown = url.redacted().to_string();
    let layout = url.take("layout");
    let options = StoreOptions::new(url.take_duration("retain")?);
    match layout.as_deref() {
        None | Some("native") => {
            url.finish(", ?retain= and ?layout=")?;
            let path = resolve(&url.body)?;
            Ok(SqliteStore::open_with(path, &options).await?)
        }
        Some(super::lockmgr::LAYOUT) => lockmgr::open(url, &shown, &options).await,
        Some(other) => Err(Error::config(format!(
            "store URL {shown:?}: unknown layout={other:?} — write layout=django-lockmgr to share the lock table of a Django project that uses django-lockmgr, or leave it out for locksmith's own lock file"
        ))),
    }
}

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
///
/// Dropping the last handle of a file never blocks: the worker thread runs the jobs still
/// queued (detached releases) on its own and then ends (see the [module docs](self)).
/// [`Store::close`] waits for them.
pub struct SqliteStore {
    path: PathBuf,
    /// Dropped with the store, which ends the worker once it has run every queued job.
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    /// The connection, shared with the worker thread: a call runs on the caller's thread
    /// when nothing is queued and the worker is idle (see [`SqliteStore::inline`]).
    worker: Arc<Mutex<Worker>>,
    /// Jobs sent to the worker thread and not yet run.
    queued: Arc<AtomicUsize>,
    /// Whether calls may run on the caller's thread (the native layout: WAL with
    /// `synchronous = NORMAL`, where a commit never waits for the disk).
    inline: bool,
    hub: Arc<WakeHub>,
    /// `?retain=` in microseconds, shared with the worker.
    retain: Arc<AtomicI64>,
    /// When this process first tried each waiting token: see [`Tries`].
    tries: Mutex<Tries>,
    /// Closed by the worker thread when it ends.
    finished: Mutex<Option<mpsc::Receiver<()>>>,
}

/// How long the runtime's shutdown waits for the worker of a dropped store.
const DRAIN_LIMIT: Duration = Duration::from_secs(1);

/// Releases queued just before the process exits are not lost: every job sent to a worker is
/// counted until it has run, and a handler registered with `atexit(3)` waits (up to
/// [`EXIT_DRAIN`](exit_drain::EXIT_DRAIN)) for the count to reach zero when the process
/// exits — after `main` returns or on `std::process::exit` — while the worker threads still
/// run. So a guard dropped (or a handle closed) right before exit is released, whichever
/// thread dropped the last handle and whether or not a runtime was still running.
mod exit_drain {
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    use std::sync::{Condvar, Mutex, Once};
    use std::time::Duration;

    /// The longest the exit handler waits for queued jobs.
    pub(super) const EXIT_DRAIN: Duration = Duration::from_secs(1);

    /// Jobs sent and not yet run. Counted without a lock: every store call passes here twice,
    /// and a mutex and condvar on that path cost the worker two or three futex calls per job
    /// (a contended lock with the caller queuing its next job, and a wake-up nobody waited
    /// for).
    static QUEUED: AtomicUsize = AtomicUsize::new(0);
    /// Threads in [`wait`]: only with one of them does the count reaching zero take the lock.
    static WAITING: AtomicUsize = AtomicUsize::new(0);
    static LOCK: Mutex<()> = Mutex::new(());
    static DRAINED: Condvar = Condvar::new();

    /// A job is about to be sent to a worker.
    pub(super) fn queued() {
        QUEUED.fetch_add(1, SeqCst);
    }

    /// A job has run (or was never sent).
    pub(super) fn ran() {
        let before = QUEUED
            .fetch_update(SeqCst, SeqCst, |n| Some(n.saturating_sub(1)))
            .unwrap_or(0);
        // Sequentially consistent on both sides: either this load sees the waiter, or the
        // waiter's check (after it counted itself) sees the count at zero.
        if before <= 1 && WAITING.load(SeqCst) > 0 {
            let _held = LOCK.lock().unwrap_or_else(|e| e.into_inner());
            DRAINED.notify_all();
        }
    }

    /// Waits until no job is queued, at most `EXIT_DRAIN`. A worker that exits the process
    /// itself does not wait for its own queue.
    fn wait() {
        if std::thread::current().name() == Some(super::WORKER_THREAD) {
            return;
        }
        WAITING.fetch_add(1, SeqCst);
        let held = LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let _ = DRAINED.wait_timeout_while(held, EXIT_DRAIN, |_| QUEUED.load(SeqCst) > 0);
        WAITING.fetch_sub(1, SeqCst);
    }

    extern "C" fn at_exit() {
        // Unwinding out of an `extern "C"` function aborts; `wait` does not panic (poisoned
        // locks are taken as they are), and this keeps it that way.
        let _ = std::panic::catch_unwind(wait);
    }

    /// Registers the exit handler once per process.
    #[allow(unsafe_code)]
    pub(super) fn register() {
        static ONCE: Once = Once::new();
        ONCE.call_once(|| {
            // SAFETY: `atexit` stores a plain function pointer that stays valid for the
            // program's life; the handler touches only statics (a mutex and a condvar) that
            // are never destroyed, and waits with a timeout.
            if unsafe { libc::atexit(at_exit) } != 0 {
                tracing::debug!("could not register the SQLite exit drain; releases queued at exit may be lost to the lease");
            }
        });
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        // Closing the queue (dropping `jobs` after this) ends the worker once it has run every
        // queued job. Nothing waits for that here. Inside a tokio runtime, a blocking task
        // waits (up to a second) instead: a runtime's orderly shutdown — the end of
        // `#[tokio::main]` — waits for blocking tasks. Whatever is still queued when the
        // process exits is waited for by the exit drain (see `exit_drain`).
        let finished = self
            .finished
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let (Some(finished), Ok(rt)) = (finished, tokio::runtime::Handle::try_current()) {
            let path = self.path.clone();
            rt.spawn_blocking(move || {
                if let Err(mpsc::RecvTimeoutError::Timeout) = finished.recv_timeout(DRAIN_LIMIT) {
                    tracing::warn!(path = %path.display(), "the SQLite worker did not finish its queued jobs in time");
                }
            });
        }
    }
}

/// How long this process's waiting claims have been trying, by token, so fairness works even
/// for a caller that does not fill in [`Claim::waited`]: the store uses the larger of the
/// two. A token's entry goes when its try is answered with anything but `Held`; entries of
/// tokens that stopped trying (a wait that timed out or was cancelled) are pruned once
/// they have not tried for [`TRY_FORGET`] (every waiter re-tries at least once a second).
#[derive(Default)]
struct Tries {
    /// Token → (first try, latest try).
    by_token: HashMap<Token, (Instant, Instant)>,
    /// Pruning runs once the map has doubled since the last prune (at least 64 entries), so
    /// it costs O(1) per try, amortised.
    prune_at: usize,
}

/// How long after its latest try a token's entry in [`Tries`] may be forgotten.
const TRY_FORGET: Duration = Duration::from_secs(5);

impl Tries {
    /// Records a try of `token` now; returns how long it has been trying.
    fn start(&mut self, token: &Token) -> Duration {
        let now = Instant::now();
        if self.by_token.len() >= self.prune_at.max(64) {
            self.by_token
                .retain(|_, (_, latest)| now.duration_since(*latest) < TRY_FORGET);
            self.prune_at = 2 * self.by_token.len();
        }
        let entry = self.by_token.entry(token.clone()).or_insert((now, now));
        entry.1 = now;
        now.duration_since(entry.0)
    }

    /// The try of `token` was answered: `held` keeps it waiting.
    fn answered(&mut self, token: &Token, held: bool) {
        if !held {
            self.by_token.remove(token);
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

/// Which tables a worker serves: locksmith's own file, or a Django project's database
/// (`?layout=django-lockmgr`, see [`lockmgr`]). One worker per file and layout per process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Layout {
    Native,
    Lockmgr,
}

type OpenFiles = HashMap<(PathBuf, Layout), Weak<SqliteStore>>;

fn open_files() -> &'static tokio::sync::Mutex<OpenFiles> {
    static OPEN: OnceLock<tokio::sync::Mutex<OpenFiles>> = OnceLock::new();
    OPEN.get_or_init(Default::default)
}

/// Test-hook clock offsets (microseconds) per file, for this process.
fn clock_offsets() -> &'static Mutex<HashMap<PathBuf, Arc<AtomicI64>>> {
    static OFFSETS: OnceLock<Mutex<HashMap<PathBuf, Arc<AtomicI64>>>> = OnceLock::new();
    OFFSETS.get_or_init(Default::default)
}

fn clock_offset(path: &Path) -> Arc<AtomicI64> {
    clock_offsets()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(normalise(path))
        .or_default()
        .clone()
}

/// Test hook: steps this process's clock for the lock file at `path` by `micros`
/// microseconds (negative: backwards), as a clock step on this machine would — for this
/// process only, and for every handle of it on that file, open now or later. Both the expiry
/// clock ("now" for leases) and the fence clock move. Steps add up. Other processes using
/// the file keep the real clock.
///
/// Fences keep increasing however far the clock steps back: the counter in the file
/// carries them.
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> locksmith::Result<()> {
/// # let dir = std::env::temp_dir().join(format!("locksmith-doc-{}", std::process::id()));
/// # std::fs::create_dir_all(&dir).unwrap();
/// use locksmith::Locksmith;
/// use locksmith::store::sqlite::step_clock;
///
/// let path = dir.join("step.db");
/// let lm = Locksmith::connect(&format!("sqlite://{}", path.display())).await?;
/// let first = lm.lock("job").try_acquire().await?.expect("free");
/// let fence = first.fence();
/// first.release().await?;
/// step_clock(&path, -3_600_000_000); // one hour back
/// let second = lm.lock("job").try_acquire().await?.expect("free");
/// assert!(second.fence() > fence);
/// # drop((second, lm));
/// # std::fs::remove_dir_all(&dir).ok();
/// # Ok(())
/// # }
/// ```
pub fn step_clock(path: &Path, micros: i64) {
    clock_offset(path).fetch_add(micros, Ordering::SeqCst);
}

/// The path every spelling of one file maps to: absolute, with the directory's symlinks
/// resolved.
fn normalise(path: &Path) -> PathBuf {
    let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    match (path.parent(), path.file_name()) {
        (Some(dir), Some(file)) => dir
            .canonicalize()
            .unwrap_or_else(|_| dir.to_path_buf())
            .join(file),
        _ => path,
    }
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
    Ok(normalise(&path))
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
        SqliteStore::open_with(path, &StoreOptions::default()).await
    }

    /// [`open`](SqliteStore::open) with the URL's options (`?retain=`).
    pub(crate) async fn open_with(
        path: PathBuf,
        options: &StoreOptions,
    ) -> Result<Arc<SqliteStore>> {
        SqliteStore::open_layout(path, options, Layout::Native).await
    }

    /// Opens the worker of `path` for `layout`, sharing the one this process already has.
    async fn open_layout(
        path: PathBuf,
        options: &StoreOptions,
        layout: Layout,
    ) -> Result<Arc<SqliteStore>> {
        let retain_us = options.retain.map(micros);
        exit_drain::register();
        let mut open = open_files().lock().await;
        let key = (path.clone(), layout);
        if let Some(store) = open.get(&key).and_then(Weak::upgrade) {
            if let Some(us) = retain_us {
                store.retain.store(us, Ordering::SeqCst);
            }
            return Ok(store);
        }
        open.retain(|_, w| w.strong_count() > 0);
        let hub = Arc::new(WakeHub::default());
        let retain = Arc::new(AtomicI64::new(retain_us.unwrap_or(micros(DEFAULT_RETAIN))));
        let (jobs, rx) = mpsc::channel::<Job>();
        let queued = Arc::new(AtomicUsize::new(0));
        let thread_queued = queued.clone();
        let (ready_tx, ready_rx) = oneshot::channel();
        let clock = Clock {
            offset: clock_offset(&path),
            retain: retain.clone(),
        };
        let (thread_path, thread_hub) = (path.clone(), hub.clone());
        let (finished_tx, finished) = mpsc::channel::<()>();
        std::thread::Builder::new()
            .name(WORKER_THREAD.into())
            .spawn(move || {
                let mut checkpointer = Checkpointer::default();
                let _finished = finished_tx; // dropped when the thread ends
                match Worker::open(thread_path.clone(), thread_hub, clock, layout) {
                    Ok(worker) => {
                        let worker = Arc::new(Mutex::new(worker));
                        let _ = ready_tx.send(Ok(worker.clone()));
                        while let Ok(job) = rx.recv() {
                            let mut w = worker.lock().unwrap_or_else(|e| e.into_inner());
                            // Taken off the queue: with the connection held here, a call
                            // can no longer run on its caller's thread ahead of this job.
                            let _ = thread_queued.fetch_update(
                                Ordering::SeqCst,
                                Ordering::SeqCst,
                                |n| Some(n.saturating_sub(1)),
                            );
                            // A panicking job must not take every other caller's worker down.
                            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                                job(&mut w)
                            }));
                            let checkpoint =
                                w.take_checkpoint() | std::mem::take(&mut w.checkpoint_asked);
                            drop(w);
                            if checkpoint {
                                checkpointer.run(&thread_path, &worker);
                            }
                            exit_drain::ran();
                        }
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            })
            .map_err(|e| Error::store("sqlite", false, e))?;
        let worker = ready_rx.await.map_err(|_| {
            Error::store(
                "sqlite",
                false,
                "the SQLite worker thread died while opening",
            )
        })??;
        let store = Arc::new(SqliteStore {
            path: path.clone(),
            jobs: Mutex::new(Some(jobs)),
            worker,
            queued,
            inline: layout == Layout::Native,
            hub,
            retain,
            tries: Mutex::default(),
            finished: Mutex::new(Some(finished)),
        });
        open.insert(key, Arc::downgrade(&store));
        Ok(store)
    }

    fn tries(&self) -> std::sync::MutexGuard<'_, Tries> {
        self.tries.lock().unwrap_or_else(|e| e.into_inner())
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
            .filter(|jobs| enqueue(jobs, &self.queued, job))
            .map(|_| ())
            .ok_or_else(|| {
                Error::store(
                    "sqlite",
                    false,
                    format!("the SQLite worker for {} has stopped", self.path.display()),
                )
            })
    }

    /// Runs `op` on the caller's thread if that can be done without waiting: the native
    /// layout only, nothing queued for the worker (so calls still run in the order they were
    /// made), the connection free, and the file not being written by another connection
    /// (SQLite's busy handler is off for the call). `None`: send it to the worker.
    ///
    /// A call here costs its statements and nothing else; through the worker it also costs
    /// two thread wake-ups (the worker's, and the caller's when the answer comes back), which
    /// on a 2-core VM are most of an uncontended cycle (BENCHMARKS.md). It cannot be
    /// cancelled half-way, so no answer is ever orphaned. What it may not do is wait: a busy
    /// file goes to the worker, whose busy handler sleeps, and so do WAL checkpoints, which
    /// sync the file (the connection's automatic checkpoints are off, see
    /// [`Checkpointer`]).
    fn inline<T>(
        &self,
        op: &(dyn Fn(&mut Worker) -> Result<T, SqlError> + Send + Sync),
    ) -> Option<Result<T, SqlError>> {
        if !self.inline || self.queued.load(Ordering::SeqCst) != 0 {
            return None;
        }
        let mut w = match self.worker.try_lock() {
            Ok(w) => w,
            Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return None,
        };
        let answer = w.without_waiting(op);
        if w.take_checkpoint() {
            w.checkpoint_asked = true;
            drop(w);
            // The worker checkpoints after the job that finds it asked for.
            let _ = self.send(Box::new(|_| {}));
        }
        answer
    }

    /// Runs `op` (on the caller's thread where [`inline`](SqliteStore::inline) can, else on
    /// the worker), retrying while the file is busy. If the caller goes away after `op`
    /// succeeded on the worker — before the worker answered, or with the answer not yet
    /// taken — the answer goes to `orphan` on the worker (a grant nobody will use is
    /// released).
    async fn call<T, F, O>(&self, op: F, orphan: O) -> Result<T>
    where
        T: Send + 'static,
        F: Fn(&mut Worker) -> Result<T, SqlError> + Send + Sync + 'static,
        O: Fn(&mut Worker, T) + Send + Sync + 'static,
    {
        if let Some(answer) = self.inline(&op) {
            return answer.map_err(|e| e.into_error(&self.path));
        }
        self.queue(op, orphan).await
    }

    /// [`call`](SqliteStore::call) on the worker only: for calls whose work is not bounded
    /// (`list` pages, `purge_expired`, `reset_all`), which must not hold a runtime thread.
    async fn queue<T, F, O>(&self, op: F, orphan: O) -> Result<T>
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
                jobs: self.sender().map(|tx| (tx, self.queued.clone())),
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

    /// [`run`](SqliteStore::run) on the worker only (see [`queue`](SqliteStore::queue)).
    async fn run_queued<T, F>(&self, op: F) -> Result<T>
    where
        T: Send + 'static,
        F: Fn(&mut Worker) -> Result<T, SqlError> + Send + Sync + 'static,
    {
        self.queue(op, |_, _| {}).await
    }
}

/// A request sent to the worker. Dropped before its answer is taken, it hands an answer that
/// arrived meanwhile to the orphan handler, on the worker.
struct Pending<T: Send + 'static> {
    rx: Option<oneshot::Receiver<Result<T, SqlError>>>,
    orphan: Orphan<T>,
    /// The worker's queue and its count of queued jobs.
    jobs: Option<(mpsc::Sender<Job>, Arc<AtomicUsize>)>,
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
        if let (Ok(Ok(v)), Some((jobs, queued))) = (rx.try_recv(), &self.jobs) {
            let orphan = self.orphan.clone();
            enqueue(jobs, queued, Box::new(move |w| orphan(w, v)));
        }
    }
}

/// Sends `job` to the worker, counted in `queued` (this store's) and by the exit drain until
/// it has run; `false` if the worker has stopped (nothing stays counted then).
fn enqueue(jobs: &mpsc::Sender<Job>, queued: &AtomicUsize, job: Job) -> bool {
    exit_drain::queued();
    queued.fetch_add(1, Ordering::SeqCst);
    let sent = jobs.send(job).is_ok();
    if !sent {
        queued.fetch_sub(1, Ordering::SeqCst);
        exit_drain::ran();
    }
    sent
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
            // A full disk is a transient store failure, not a configuration error: the call
            // can succeed once space returns (found by the torture harness's disk-full
            // scenario; it used to be `Config`, exit 2 in the CLI, and ended waits at once).
            Some(ErrorCode::DiskFull) => {
                return Error::store(
                    "sqlite",
                    true,
                    format!("the disk holding {path} is full ({e}) — free some space"),
                );
            }
            _ => return Error::store("sqlite", false, format!("{path}: {e}")),
        };
        Error::Config {
            message: fix,
            source: Some(Box::new(e)),
        }
    }
}

/// The worker's clock (the test hook's offset on top of the wall clock) and retention.
struct Clock {
    offset: Arc<AtomicI64>,
    /// Microseconds.
    retain: Arc<AtomicI64>,
}

impl Clock {
    /// Wall-clock microseconds since the Unix epoch, plus the test hook's offset: the clock
    /// of expiry and of fences.
    fn now(&self) -> i64 {
        let since = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        micros(since).saturating_add(self.offset.load(Ordering::SeqCst))
    }
}

/// The worker thread's own connection for WAL checkpoints. A checkpoint syncs the file, which
/// takes milliseconds; on the store's connection it would hold that connection (and so send
/// every call made meanwhile to the worker). On a second connection, calls go on while it
/// runs: `PASSIVE` copies what no reader needs and never blocks readers or writers.
#[derive(Default)]
struct Checkpointer {
    conn: Option<Connection>,
}

impl Checkpointer {
    /// Checkpoints the WAL of `path` while calls go on. Frames committed meanwhile are left
    /// in the WAL, and SQLite starts the WAL from its beginning again only at a write that
    /// finds every frame checkpointed, which under steady writing never happens: so the
    /// frames left are checkpointed once more with `worker` (this process's connection)
    /// held, a short copy with no write of this process in between.
    fn run(&mut self, path: &Path, worker: &Mutex<Worker>) {
        if self.conn.is_none() {
            let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
            match Connection::open_with_flags(path, flags) {
                Ok(conn) => self.conn = Some(conn),
                Err(e) => {
                    tracing::debug!(error = %e, "could not open a connection for WAL checkpoints; the next one will try again");
                    return;
                }
            }
        }
        let Some(conn) = &self.conn else { return };
        // The pragma rather than `sqlite3_wal_checkpoint_v2`: on a connection that has not
        // read the file yet, the C call finds no WAL open and does nothing (-1, -1).
        let passive = || {
            conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
            })
        };
        let done = match passive() {
            Ok((frames, copied)) if copied < frames => {
                let _held = worker.lock().unwrap_or_else(|e| e.into_inner());
                passive()
            }
            done => done,
        };
        if let Err(e) = done {
            tracing::debug!(error = %e, "WAL checkpoint failed; the next one will try again");
        }
    }
}

/// The worker thread's side: the connection and the wake-ups it sends.
pub(crate) struct Worker {
    conn: Connection,
    hub: Arc<WakeHub>,
    clock: Clock,
    /// Grants since the last garbage sweep.
    since_sweep: u32,
    /// SQLite's busy handler is off (see [`Worker::without_waiting`]).
    impatient: bool,
    /// The WAL's size in frames after this connection's latest commit, and the size at the
    /// latest checkpoint asked for; `None` where SQLite checkpoints on its own (the
    /// django-lockmgr layout).
    wal: Option<(Arc<AtomicI32>, i32)>,
    /// A call on a caller's thread found a checkpoint due and asked the worker for it.
    checkpoint_asked: bool,
}

/// The worker checkpoints the WAL each time it has grown by this many frames (pages) since
/// the last checkpoint it asked for: SQLite's own automatic checkpoint interval, which is off
/// on the store's connection so that no call on a caller's thread ever syncs the file.
const CHECKPOINT_PAGES: i32 = 1000;

/// Grants sweep garbage every this many grants (at most [`SWEEP_LIMIT`] rows each time): far
/// more than the one row and one reservation a grant can leave behind, so the tables stay
/// bounded, at a fraction of the cost of sweeping on every grant.
const SWEEP_EVERY: u32 = 8;

/// One namespace's rows on a connection (inside a transaction for writes).
struct SqlTable<'c> {
    conn: &'c Connection,
    ns: &'c str,
    now: i64,
    /// Names this operation found without any reservation row and has not reserved since:
    /// a grant's `unreserve` of one of them has nothing to remove, so the statement is
    /// skipped.
    unreserved: Vec<String>,
}

const COLUMNS: &str = "token, owner, host, pid, fence, acquired_at, expires_at, min_hold";

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
        min_hold: r.get(at + 7)?,
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
                 (namespace, name, token, owner, host, pid, fence, acquired_at, expires_at,
                  min_hold)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
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
                row.min_hold,
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
        // hybrid_fence in SQL: an UPDATE, then a read of the new value. Not an upsert with
        // RETURNING: SQLite buffers RETURNING rows in an ephemeral table (its own pager and
        // page cache, created and destroyed per statement) and journals the upsert's
        // statement, two allocations of 64–90 KiB per grant that the allocator hands back to
        // the kernel each time (madvise and page faults in the profile).
        let updated = self
            .conn
            .prepare_cached("UPDATE locksmith_fence SET value = max(value + 1, ?1) WHERE id = 0")?
            .execute([self.now])?;
        if updated == 0 {
            // The counter row was lost: recreated from the clock.
            self.conn
                .prepare_cached("INSERT INTO locksmith_fence (id, value) VALUES (0, max(?1, 1))")?
                .execute([self.now])?;
        }
        let fence: i64 = self
            .conn
            .prepare_cached("SELECT value FROM locksmith_fence WHERE id = 0")?
            .query_row([], |r| r.get(0))?;
        Ok(u64::try_from(fence).unwrap_or(0))
    }

    fn reservation(&mut self, name: &str) -> Result<Option<Reservation>, SqlError> {
        // Lapsed rows are read too (and ignored), so that only a name with no row at all is
        // remembered as having nothing for `unreserve` to remove.
        let found: Option<(String, i64)> = self
            .conn
            .prepare_cached(
                "SELECT token, until FROM locksmith_reservations
                 WHERE namespace = ?1 AND name = ?2",
            )?
            .query_row(params![self.ns, name], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        if found.is_none() && !self.unreserved.iter().any(|n| n == name) {
            self.unreserved.push(name.to_string());
        }
        Ok(found.and_then(|(token, until)| {
            (until > self.now).then_some(())?;
            Some(Reservation {
                token: token.parse().ok()?,
                until,
            })
        }))
    }

    fn reserve(&mut self, name: &str, reservation: &Reservation) -> Result<(), SqlError> {
        self.unreserved.retain(|n| n != name);
        self.conn
            .prepare_cached(
                "INSERT OR REPLACE INTO locksmith_reservations (namespace, name, token, until)
                 VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![
                self.ns,
                name,
                reservation.token.expose(),
                reservation.until
            ])?;
        Ok(())
    }

    fn unreserve(&mut self, name: &str) -> Result<(), SqlError> {
        if self.unreserved.iter().any(|n| n == name) {
            return Ok(());
        }
        self.conn
            .prepare_cached(
                "DELETE FROM locksmith_reservations WHERE namespace = ?1 AND name = ?2",
            )?
            .execute(params![self.ns, name])?;
        Ok(())
    }
}

impl Worker {
    fn open(path: PathBuf, hub: Arc<WakeHub>, clock: Clock, layout: Layout) -> Result<Worker> {
        if layout == Layout::Lockmgr {
            return lockmgr::open_worker(path, hub, clock);
        }
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
        let mut worker = Worker::new(conn, hub, clock);
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
        // Checkpoints run on the worker thread only (`Checkpointer`): a commit made on
        // a caller's thread must never be the one that syncs the file.
        worker
            .conn
            .execute_batch("PRAGMA synchronous = NORMAL; PRAGMA wal_autocheckpoint = 0;")
            .map_err(fail)?;
        let frames = Arc::new(AtomicI32::new(0));
        let seen = frames.clone();
        worker
            .conn
            .wal_hook(Some(move |_: &mut rusqlite::hooks::Wal, pages| {
                seen.store(pages, Ordering::Relaxed);
                Ok(())
            }))
            .map_err(fail)?;
        worker.wal = Some((frames, 0));
        Ok(worker)
    }

    /// A worker on `conn` that checkpoints as SQLite does by default.
    fn new(conn: Connection, hub: Arc<WakeHub>, clock: Clock) -> Worker {
        Worker {
            conn,
            hub,
            clock,
            since_sweep: 0,
            impatient: false,
            wal: None,
            checkpoint_asked: false,
        }
    }

    /// Whether the WAL grew enough since the last checkpoint that the worker should run one.
    fn checkpoint_wanted(&self) -> bool {
        self.wal.as_ref().is_some_and(|(frames, mark)| {
            let frames = frames.load(Ordering::Relaxed);
            // A WAL smaller than at the last checkpoint has been restarted from its start.
            frames >= if frames < *mark { 0 } else { *mark } + CHECKPOINT_PAGES
        })
    }

    /// Whether a checkpoint is due, counting afresh from now if it is. Asked by the worker
    /// thread after every job.
    fn take_checkpoint(&mut self) -> bool {
        let due = self.checkpoint_wanted();
        if due && let Some((frames, mark)) = &mut self.wal {
            *mark = frames.load(Ordering::Relaxed);
        }
        due
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
            if version == 1 {
                tx.execute_batch(MIGRATE_V1)?;
            } else {
                tx.execute_batch(SCHEMA)?;
            }
            tx.execute_batch(SCHEMA_V2)?;
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
            now: self.clock.now(),
            unreserved: Vec::new(),
        })
    }

    fn write<T>(
        &mut self,
        ns: &Namespace,
        op: impl FnOnce(&mut SqlTable<'_>) -> Result<T, SqlError>,
    ) -> Result<T, SqlError> {
        self.write_with(ns, false, op)
    }

    /// A write that may create rows (a grant), and so also removes garbage.
    fn grant<T>(
        &mut self,
        ns: &Namespace,
        op: impl FnOnce(&mut SqlTable<'_>) -> Result<T, SqlError>,
    ) -> Result<T, SqlError> {
        self.write_with(ns, true, op)
    }

    fn write_with<T>(
        &mut self,
        ns: &Namespace,
        sweep: bool,
        op: impl FnOnce(&mut SqlTable<'_>) -> Result<T, SqlError>,
    ) -> Result<T, SqlError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        // The clock is read once the write lock is held, so grants are ordered in time.
        let now = self.clock.now();
        let out = op(&mut SqlTable {
            conn: &tx,
            ns: ns.as_str(),
            now,
            unreserved: Vec::new(),
        })?;
        let sweep = sweep && {
            self.since_sweep = (self.since_sweep + 1) % SWEEP_EVERY;
            self.since_sweep == 1
        };
        if sweep {
            // Garbage, bounded per grant (only grants create rows and reservations): rows
            // expired more than `retain` ago, in any namespace (through the expiry index),
            // and lapsed reservations.
            let cutoff = now.saturating_sub(self.clock.retain.load(Ordering::SeqCst));
            sweep_garbage(
                &tx,
                &SWEEP_LOCKS,
                cutoff,
                "DELETE FROM locksmith_locks WHERE namespace = ?1 AND name = ?2",
            )?;
            sweep_garbage(
                &tx,
                &SWEEP_RESERVATIONS,
                now,
                "DELETE FROM locksmith_reservations WHERE namespace = ?1 AND name = ?2",
            )?;
        }
        tx.commit()?;
        Ok(out)
    }

    fn try_acquire(&mut self, ns: &Namespace, claim: &Claim) -> Result<Grant, SqlError> {
        // A first try goes straight to the write transaction (which decides everything
        // itself): most first tries find the lock free, and a read first would cost a second
        // transaction. Later tries read first: a poller that finds the lock held (and need
        // not reserve it) writes nothing.
        //
        // That first write does not wait for the file: if another connection is writing, it
        // fails at once and the try reads first like a poller. Waiting in SQLite's busy
        // handler (it sleeps 1, 2, 5, 10 ms…) for a write lock that another process holds
        // for its grant — where the answer is "held" — cost every cross-process handoff
        // milliseconds (BENCHMARKS.md).
        if claim.waited.is_zero()
            && let Some(answer) =
                self.without_waiting(|w| w.grant(ns, |t| rows::try_acquire(t, claim)))
        {
            return answer;
        }
        let name = claim.name.as_str();
        let seen = self.read(ns, |t| {
            let row = t.get(name)?.filter(|r| r.live(t.now));
            let reserved = t.reservation(name)?;
            Ok((row, reserved, t.now))
        })?;
        // The claim holding the name's reservation is next in line: it is asked to poll
        // again soon, so the lock reaches it shortly after the holder lets go rather than up
        // to a whole poll interval later. One claim per name at a time polls that fast.
        let next_in_line = |answer: Grant, reserver: bool| match answer {
            Grant::Held(mut info) if reserver => {
                info.retry_in = Some(RESERVER_POLL);
                Grant::Held(info)
            }
            other => other,
        };
        match seen {
            (Some(row), reserved, now) => {
                if row.token.as_ref() == Some(&claim.token) {
                    return Ok(Grant::AlreadyHeld);
                }
                let mine = reserved.as_ref().is_some_and(|r| r.token == claim.token);
                if !rows::wants_reservation(claim, reserved.as_ref(), now) {
                    let held = Grant::Held(row.info(name, now, UNIX_EPOCH));
                    return Ok(next_in_line(held, mine));
                }
                // It reserves (or refreshes its reservation) in the write below.
                let answer = self.grant(ns, |t| rows::try_acquire(t, claim))?;
                return Ok(next_in_line(answer, true));
            }
            (None, Some(r), now) if r.token != claim.token => {
                return Ok(Grant::Held(rows::reserved_info(name, &r, now)));
            }
            _ => {}
        }
        self.grant(ns, |t| rows::try_acquire(t, claim))
    }

    /// Runs `op` with SQLite's busy handler off; `None` if the file was busy (another
    /// connection writing), so the caller can take its path that does not write.
    fn without_waiting<T>(
        &mut self,
        op: impl FnOnce(&mut Worker) -> Result<T, SqlError>,
    ) -> Option<Result<T, SqlError>> {
        let answer = if self.impatient {
            op(self)
        } else {
            if let Err(e) = self.conn.busy_timeout(Duration::ZERO) {
                return Some(Err(e.into()));
            }
            self.impatient = true;
            let answer = op(self);
            self.impatient = false;
            if let Err(e) = self.conn.busy_timeout(BUSY_TIMEOUT) {
                // Never lose the answer: later calls that find the file busy are retried
                // from the async side.
                tracing::warn!(error = %e, "could not restore SQLite's busy timeout");
            }
            answer
        };
        match answer {
            Err(e) if e.is_busy() => None,
            answer => Some(answer),
        }
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
    /// so a busy file is retried here — for a second only, so the worker (and every
    /// caller queued behind it) is held up for at most that long; after that the lease
    /// expires on its own.
    fn release_unattended(
        &mut self,
        ns: &Namespace,
        name: &LockName,
        token: &Token,
        min_hold: Option<Duration>,
    ) {
        const PATIENCE: Duration = Duration::from_secs(1);
        let started = Instant::now();
        loop {
            match self.release(ns, name, token, min_hold) {
                Err(e) if e.is_busy() && started.elapsed() < PATIENCE => {
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
        let (ns, mut claim) = (ns.clone(), claim.clone());
        let trying = self.tries().start(&claim.token);
        claim.waited = claim.waited.max(trying);
        let (ns2, name, token) = (ns.clone(), claim.name.clone(), claim.token.clone());
        let mine = claim.token.clone();
        let answer = self
            .call(
                move |w| w.try_acquire(&ns, &claim),
                move |w, grant| {
                    if let Grant::Acquired { .. } = grant {
                        w.release_unattended(&ns2, &name, &token, None);
                    }
                },
            )
            .await;
        self.tries()
            .answered(&mine, matches!(answer, Ok(Grant::Held(_))));
        answer
    }

    async fn try_acquire_all(&self, ns: &Namespace, claims: &[Claim]) -> Result<GrantAll> {
        let Some(first) = claims.first() else {
            return Ok(GrantAll::Acquired(Vec::new()));
        };
        let first = first.token.clone();
        let trying = self.tries().start(&first);
        let claims: Arc<[Claim]> = claims
            .iter()
            .cloned()
            .map(|mut c| {
                c.waited = c.waited.max(trying);
                c
            })
            .collect();
        let ns = ns.clone();
        let (ns2, claims2) = (ns.clone(), claims.clone());
        let answer = self
            .call(
                move |w| w.grant(&ns, |t| rows::try_acquire_all(t, &claims)),
                move |w, grant| {
                    if let GrantAll::Acquired(_) = grant {
                        for c in claims2.iter() {
                            w.release_unattended(&ns2, &c.name, &c.token, None);
                        }
                    }
                },
            )
            .await;
        self.tries()
            .answered(&first, matches!(answer, Ok(GrantAll::Held(_))));
        answer
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
        self.run_queued(move |w| {
            let now = w.clock.now();
            let expired = match query.expired {
                Expired::Exclude => 0,
                Expired::Include => 1,
                _ => 2,
            };
            // The page starts after the cursor, or at the prefix: one range bound either
            // way, so each page is an index seek (an `OR` of the two made every page scan
            // the namespace from the prefix on, which made a full listing quadratic).
            let after_cursor = query
                .after
                .as_ref()
                .is_some_and(|c| c.as_str() >= query.prefix.as_str());
            let start = if after_cursor {
                "name > ?3"
            } else {
                "name >= ?2"
            };
            let sql = format!(
                "SELECT name, {COLUMNS} FROM locksmith_locks
                 WHERE namespace = ?1 AND {start} AND substr(name, 1, length(?2)) = ?2
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
        self.run_queued(move |w| {
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
        self.run_queued(move |w| {
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
        self.run(move |w| w.grant(&ns, |t| rows::set_locks(t, &claims, &policy)))
            .await
    }

    async fn subscribe(&self, ns: &Namespace, name: &LockName) -> Result<Wakeups> {
        // In-process wake-ups come from this process's worker; other processes are polled.
        Ok(self.hub.subscribe(ns, name))
    }

    /// Waits, up to 5 s and without blocking a thread, until the worker has run every job
    /// queued before this call (detached releases included). The store stays usable: other
    /// handles of this process may share it.
    async fn close(&self) -> Result<()> {
        let (tx, rx) = oneshot::channel::<()>();
        self.send(Box::new(move |_| {
            let _ = tx.send(());
        }))?;
        match tokio::time::timeout(CLOSE_LIMIT, rx).await {
            Ok(_) => Ok(()),
            Err(_) => Err(Error::store(
                "sqlite",
                true,
                format!(
                    "the SQLite worker for {} did not finish its queued jobs within {CLOSE_LIMIT:?} — another process may hold a long write transaction on the file",
                    self.path.display()
                ),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_is_a_retryable_store_error() {
        let full = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
            None,
        );
        let e = SqlError::Sql(full).into_error(Path::new("/x/locks.db"));
        assert!(matches!(e, Error::Store { .. }), "{e:?}");
        assert!(e.is_retryable());
        assert!(e.to_string().contains("/x/locks.db is full"), "{e}");
    }

    /// SQLite re-prepares a statement whose `LIMIT` is a bound parameter on every run, which
    /// cost more than the rest of a grant: the sweeps run many times, never re-prepared.
    #[tokio::test]
    async fn grant_sweeps_are_never_re_prepared() {
        let (dir, file) = temp_file("prep");
        let store = SqliteStore::open(file).await.unwrap();
        let ns = Namespace::default();
        for i in 0..(4 * SWEEP_EVERY) {
            let claim = Claim::new(
                LockName::new(format!("p{i}")).unwrap(),
                Token::new(),
                "o",
                "h",
                1,
                Some(Duration::from_secs(60)),
            );
            let grant = store.try_acquire(&ns, &claim).await.unwrap();
            assert!(matches!(grant, Grant::Acquired { .. }), "{grant:?}");
            store
                .release(&ns, &claim.name, &claim.token, None)
                .await
                .unwrap();
        }
        let counts = store
            .run(|w| {
                let mut counts = Vec::new();
                for sql in [&*SWEEP_LOCKS, &*SWEEP_RESERVATIONS] {
                    let stmt = w.conn.prepare_cached(sql)?;
                    counts.push((
                        stmt.get_status(rusqlite::StatementStatus::Run),
                        stmt.get_status(rusqlite::StatementStatus::RePrepare),
                    ));
                }
                Ok(counts)
            })
            .await
            .unwrap();
        for (runs, reprepared) in counts {
            assert!(
                runs >= 4,
                "the sweep ran {runs} times in {} grants",
                4 * SWEEP_EVERY
            );
            assert_eq!(
                reprepared, 0,
                "a sweep was re-prepared {reprepared} times in {runs} runs"
            );
        }
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn temp_file(what: &str) -> (PathBuf, PathBuf) {
        let dir = std::env::temp_dir().join(format!("locksmith-{what}-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("l.db");
        (dir, file)
    }

    fn claim(name: &str) -> Claim {
        Claim::new(
            LockName::new(name).unwrap(),
            Token::new(),
            "o",
            "h",
            1,
            Some(Duration::from_secs(60)),
        )
    }

    /// Which thread ran a call.
    async fn ran_on(store: &SqliteStore) -> Option<String> {
        store
            .run(|_| Ok(std::thread::current().name().map(str::to_string)))
            .await
            .unwrap()
    }

    /// With nothing queued, a call runs on the caller's thread; behind a queued job it goes
    /// to the worker, so calls still run in the order they were made.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn calls_run_on_the_caller_unless_the_worker_has_work() {
        let (dir, file) = temp_file("inline");
        let store = SqliteStore::open(file).await.unwrap();
        assert_ne!(ran_on(&store).await.as_deref(), Some(WORKER_THREAD));
        let (started_tx, started) = std::sync::mpsc::channel();
        store
            .send(Box::new(move |_| {
                started_tx.send(()).unwrap();
                std::thread::sleep(Duration::from_millis(300));
            }))
            .unwrap();
        started.recv().unwrap();
        // The worker is busy with a job: this call queues behind it.
        assert_eq!(ran_on(&store).await.as_deref(), Some(WORKER_THREAD));
        // A queued job (a detached release, say) keeps later calls behind it until it ran.
        let (go_tx, go) = std::sync::mpsc::channel::<()>();
        store
            .send(Box::new(move |_| {
                let _ = go.recv();
            }))
            .unwrap();
        let ns = Namespace::default();
        let c = claim("q");
        let order = Arc::new(Mutex::new(Vec::new()));
        let o = order.clone();
        store
            .send(Box::new(move |_| o.lock().unwrap().push("queued")))
            .unwrap();
        let pending = {
            let (store, ns, c, o) = (store.clone(), ns.clone(), c.clone(), order.clone());
            tokio::spawn(async move {
                store.try_acquire(&ns, &c).await.unwrap();
                o.lock().unwrap().push("later call");
            })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            order.lock().unwrap().is_empty(),
            "{:?}",
            order.lock().unwrap()
        );
        go_tx.send(()).unwrap();
        pending.await.unwrap();
        assert_eq!(*order.lock().unwrap(), ["queued", "later call"]);
        // Once the queue is empty, calls run on the caller again (the worker may still be
        // finishing the job that answered the call above for a moment).
        let mut runs = 0;
        while ran_on(&store).await.as_deref() == Some(WORKER_THREAD) {
            runs += 1;
            assert!(runs < 100, "calls stay on the worker with nothing queued");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A call that finds the file being written by another connection does not wait on the
    /// caller's thread: it goes to the worker, which waits for the file and then answers.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_busy_file_sends_the_call_to_the_worker() {
        let (dir, file) = temp_file("busy");
        let store = SqliteStore::open(file.clone()).await.unwrap();
        let other = Connection::open(&file).unwrap();
        other.execute_batch("BEGIN IMMEDIATE").unwrap();
        let ns = Namespace::default();
        let c = claim("b");
        let trying = {
            let (store, ns, c) = (store.clone(), ns.clone(), c.clone());
            tokio::spawn(async move { store.try_acquire(&ns, &c).await })
        };
        // A write of the store's own, to see where it runs.
        let writing = {
            let (store, ns) = (store.clone(), ns.clone());
            tokio::spawn(async move {
                store
                    .run(move |w| {
                        w.write(&ns, |_| Ok(()))?;
                        Ok(std::thread::current().name().map(str::to_string))
                    })
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(!trying.is_finished(), "the grant went through a write lock");
        other.execute_batch("COMMIT").unwrap();
        let grant = trying.await.unwrap().unwrap();
        assert!(matches!(grant, Grant::Acquired { .. }), "{grant:?}");
        let wrote_on = writing.await.unwrap().unwrap();
        assert_eq!(wrote_on.as_deref(), Some(WORKER_THREAD));
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Automatic checkpoints are off on the store's connection (they would sync the file on a
    /// caller's thread); the worker's own keep the WAL from growing without bound.
    #[tokio::test]
    async fn the_worker_keeps_the_wal_bounded() {
        let (dir, file) = temp_file("wal");
        let store = SqliteStore::open(file.clone()).await.unwrap();
        let auto: i64 = store
            .run(|w| {
                Ok(w.conn
                    .query_row("PRAGMA wal_autocheckpoint", [], |r| r.get(0))?)
            })
            .await
            .unwrap();
        assert_eq!(auto, 0);
        let ns = Namespace::default();
        const CYCLES: u32 = 4000;
        for i in 0..CYCLES {
            let c = claim(&format!("w{}", i % 16));
            store.try_acquire(&ns, &c).await.unwrap();
            store.release(&ns, &c.name, &c.token, None).await.unwrap();
        }
        store.close().await.unwrap();
        let wal = std::fs::metadata(dir.join("l.db-wal")).unwrap().len();
        // 2 × 4,000 commits of a few pages each make 80 MiB of WAL without checkpoints, or
        // with checkpoints that never catch up with the writes (the WAL never restarts). It
        // may grow past SQLite's 1,000 pages (4 MiB) by what is written while a checkpoint
        // runs on the worker.
        assert!(
            wal < 24 << 20,
            "the WAL grew to {wal} bytes over {CYCLES} cycles"
        );
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn the_worker_runs_wal_with_synchronous_normal() {
        let (dir, file) = temp_file("sync");
        let store = SqliteStore::open(file).await.unwrap();
        let (mode, sync): (String, i64) = store
            .run(|w| {
                let mode = w.conn.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
                let sync = w.conn.query_row("PRAGMA synchronous", [], |r| r.get(0))?;
                Ok((mode, sync))
            })
            .await
            .unwrap();
        assert_eq!(mode.to_lowercase(), "wal");
        assert_eq!(sync, 1, "synchronous = NORMAL");
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
