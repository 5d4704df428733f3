//! The django-lockmgr layout of the MySQL/MariaDB store (`mysql://…?layout=django-lockmgr`):
//! locks kept in the `lockmgr_lock` table of a Django project, shared with its Python code.
//! The spec is [`crate::store::lockmgr`]; this module is how MySQL speaks it.
//!
//! # Types
//!
//! Django's table is read and written by column name. Its `datetime(6)` columns hold naive
//! UTC (Django with `USE_TZ = True`); locksmith never lets the driver convert them: it reads
//! `TIMESTAMPDIFF(MICROSECOND, '1970-01-01 00:00:00', col)` and writes
//! `TIMESTAMPADD(MICROSECOND, µs, '1970-01-01 00:00:00')`, so neither the session time
//! zone nor the client's clock is involved. Times past `9999-12-31` (the column's end) are
//! refused with a clear error before anything is written. A datetime the server cannot
//! turn into a number (a zero date written by hand) reads as "never expires": an unreadable
//! row is never taken over. `lock_process` is a signed 32-bit `integer`; a pid that does not
//! fit is written as NULL.
//!
//! The side table [`SIDE_TABLE`](crate::store::lockmgr::SIDE_TABLE) is created when missing
//! (`CREATE TABLE IF NOT EXISTS`): `name VARBINARY(100)` primary key, the owner `token`
//! (NULL once released under `min_hold`), `host`, `min_hold` (µs), and the copies of
//! `created_at` (`datetime(6)`, like Django's), `locked_by` and `lock_process` that identify
//! the lock row it belongs to. One more table of locksmith's own,
//! `locksmith_lockmgr_reservations` (`name VARBINARY(100)` primary key, `token`, `until`
//! µs), keeps cross-process fairness as the native store's `<table>_reservations` does: a
//! waiter that has waited 200 ms reserves the next grant of the name for 100 ms after its
//! latest try, so a process that releases and re-takes a lock at once cannot starve pollers
//! in other processes (Python peers do not honour reservations: they never see them).
//! Nothing else is created: no procedures, no triggers, nothing in Django's table.
//!
//! # Clock
//!
//! The server's clock decides: every decision reads `UTC_TIMESTAMP(6)` (as microseconds,
//! plus the test hook's offset, see [`step_clock`](super::step_clock)) in a statement that
//! runs after the rows it decides on are locked. Locksmith writes `created_at` =
//! `updated_at` = that time and `locked_until` = that time + TTL, exactly.
//!
//! # Transaction shape
//!
//! Every operation that changes a lock is one transaction (InnoDB, the session's isolation
//! level), retried as a whole on deadlocks and lock-wait timeouts:
//!
//! 1. per name, in byte order: `INSERT … ON DUPLICATE KEY UPDATE name = name` of a
//!    placeholder row (NULL holder, every time `1000-01-01`). If a row exists this writes
//!    nothing but locks it; if none does, the placeholder holds the key, so a concurrent
//!    INSERT (locksmith's or Django's) waits for this transaction instead of racing it. The
//!    placeholder is never committed: it is overwritten by a grant or deleted before COMMIT,
//!    so no reader ever sees it;
//! 2. per name `SELECT … WHERE name = ? FOR UPDATE` (the row, now locked);
//! 3. plain reads of the side rows and reservations of those names (their lock rows are
//!    locked, and only a holder of a lock row writes them, so the reads are current);
//! 4. `SELECT UTC_TIMESTAMP(6)`;
//! 5. the shared row state machine ([`rows`](crate::store::rows)) decides in memory; the
//!    changed rows are written back (a grant: an upsert of the lock row and its side row;
//!    an extension or renewal: `locked_until` and `updated_at` only, so a Python holder's
//!    row keeps everything else; a release: DELETE, or `locked_until = created_at +
//!    min_hold` and the side row's token NULL), and COMMIT.
//!
//! Reads (`inspect`, `held_by`, `list`) are single `SELECT`s joining the side table.
//!
//! # Names and collation
//!
//! Django creates `name` with the database's default collation, on MySQL and MariaDB
//! usually a case-insensitive, PAD SPACE one (`utf8mb4_general_ci`, `utf8mb4_0900_ai_ci`,
//! …): for Django, `Lock`, `lock` and `lock ` are one primary key. This layout keeps
//! locksmith's rule that names are compared byte for byte, within what the table allows:
//!
//! - `inspect`, `held_by`, `list`, `clear` and the side table compare names exactly
//!   (`CAST(name AS BINARY)`; the side table's key is `VARBINARY`); `list` is in byte order
//!   of name;
//! - a lock row whose name differs from the one asked for only as the collation ignores is
//!   the holder that blocks a grant (the INSERT would collide with it): `acquire("lock")`
//!   while `Lock` is held answers Held (the info names `Lock`); once that row has expired, a
//!   grant replaces it (the row is renamed); `set_locks` renews it (as Django's own
//!   `set_lock` would). Such a row is never held by the claim's token, so `release` and
//!   `extend` never touch it;
//! - one call naming two names the table cannot tell apart (`acquire_all(["a", "A"])`) is
//!   refused with an error naming both.
//!
//! # Garbage
//!
//! A grant starts a background sweep (at most once a second per store, again at once after
//! a full batch): up to 64 lock rows that expired more than `?retain=` ago (default 1 h)
//! up to 64 orphaned side rows and up to 64 lapsed reservations, found with plain reads and removed one by one by
//! primary key after checking again under the row's lock. Every write also removes the
//! orphaned side rows it meets.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions, MySqlRow};
use sqlx::{AssertSqlSafe, Row as _};
use tokio::sync::{mpsc, oneshot};

use super::{KIND, clock_offset, db_number, is_conflict, jitter, map_err, retrying, scrub};
use crate::error::{Error, Result};
use crate::info::LockInfo;
use crate::lease::Token;
use crate::name::{LockName, Namespace};
use crate::options::{Cursor, Expired, ListQuery, Page, SetOutcome, SetPolicy};
use crate::store::lockmgr::{
    self as spec, MAX_NAME_CHARS, SIDE_TABLE as SIDE, TABLE, check_namespace, table_missing,
};
use crate::store::rows::{self, Reservation, Row, Table, micros};
use crate::store::{
    Capabilities, Claim, ExtendMode, Extended, Grant, GrantAll, Released, Store, WakeHub, Wakeups,
};

/// locksmith's reservations table (cross-process fairness, as in the native store): the
/// next grant of a name reserved for a waiter that has waited long. `until` is
/// microseconds on the store clock.
const RES: &str = "locksmith_lockmgr_reservations";

/// The Unix epoch as a DATETIME literal: every time is microseconds from it.
const EPOCH: &str = "TIMESTAMP'1970-01-01 00:00:00'";

/// The placeholder's times (see the module docs): `1000-01-01 00:00:00`, the column's start.
const PLACEHOLDER_US: i64 = -30_610_224_000_000_000;

/// `9999-12-31 23:59:59.999999`, the last time a `datetime(6)` holds.
const MAX_US: i64 = 253_402_300_799_999_999;

/// How many garbage rows one sweep removes at most.
const SWEEP_BATCH: usize = 64;

/// The least time between two background sweeps of one store.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// How often a whole transaction is tried again after a deadlock or lock-wait timeout.
const CONFLICT_RETRIES: u32 = 64;

/// The store clock, microseconds since the epoch on the server's UTC clock, plus the
/// offset (a bound parameter).
fn now_sql() -> String {
    format!("(TIMESTAMPDIFF(MICROSECOND, {EPOCH}, UTC_TIMESTAMP(6)) + ?)")
}

/// A datetime column as microseconds since the epoch (NULL when NULL or unreadable).
fn us(col: &str) -> String {
    format!("TIMESTAMPDIFF(MICROSECOND, {EPOCH}, {col})")
}

/// A bound microsecond count as a datetime.
fn dt() -> String {
    format!("TIMESTAMPADD(MICROSECOND, ?, {EPOCH})")
}

/// The lock-row columns every read selects, in [`LockCols`] order (table alias `l`).
fn lock_cols() -> String {
    format!(
        "l.name, l.locked_by, l.lock_process, {}, {}",
        us("l.locked_until"),
        us("l.created_at")
    )
}

/// The side-row columns every read selects, in [`SideCols`] order (table alias `s`).
fn side_cols() -> String {
    format!(
        "s.name, s.token, s.host, s.min_hold, {}, s.locked_by, s.lock_process",
        us("s.created_at")
    )
}

/// Stores of this layout open in this process, by connection key and runtime (as the
/// native store's registry: one pool, one wake-up hub per database and runtime).
type OpenKey = (String, tokio::runtime::Id);
fn open_stores() -> &'static tokio::sync::Mutex<HashMap<OpenKey, Weak<LockmgrStore>>> {
    static OPEN: OnceLock<tokio::sync::Mutex<HashMap<OpenKey, Weak<LockmgrStore>>>> =
        OnceLock::new();
    OPEN.get_or_init(Default::default)
}

/// What `open` parsed from the URL for this layout.
pub(super) struct Opening {
    pub(super) options: MySqlConnectOptions,
    pub(super) pool_size: u32,
    pub(super) timeout: Duration,
    pub(super) identity: String,
    pub(super) key: String,
    pub(super) retain: Option<Duration>,
    pub(super) redacted: String,
}

/// Opens (or shares) the layout's store for a parsed URL.
pub(super) async fn open(o: Opening) -> Result<Arc<dyn Store>> {
    let rt = tokio::runtime::Handle::try_current()
        .map_err(|_| Error::config("the MySQL store needs a tokio runtime"))?
        .id();
    let mut open = open_stores().lock().await;
    open.retain(|_, w| w.strong_count() > 0);
    if let Some(store) = open.get(&(o.key.clone(), rt)).and_then(Weak::upgrade) {
        if let Some(r) = o.retain {
            store.shared.retain_us.store(micros(r), Ordering::SeqCst);
        }
        return Ok(store);
    }
    let pool = MySqlPoolOptions::new()
        .max_connections(o.pool_size)
        .min_connections(0)
        .test_before_acquire(false)
        .acquire_timeout(o.timeout)
        .idle_timeout(Some(Duration::from_secs(60)))
        .connect_lazy_with(o.options);
    let shown = o.redacted.clone();
    let store = LockmgrStore::build(
        pool,
        o.identity,
        o.retain.unwrap_or(rows::DEFAULT_RETAIN),
        &shown,
    )
    .await
    .map_err(|e| match e {
        Error::Store {
            store,
            retryable,
            source,
        } => Error::store(
            store,
            retryable,
            format!("cannot open the MySQL store {shown:?}: {source}"),
        ),
        other => other,
    })?;
    open.insert((o.key, rt), Arc::downgrade(&store));
    Ok(store)
}

/// The layout's store: Django's `lockmgr_lock` plus locksmith's side table.
pub(crate) struct LockmgrStore {
    shared: Arc<Shared>,
    jobs: mpsc::UnboundedSender<Job>,
    /// Tokens whose latest try was answered `Held`: their next try reads first (no row
    /// locks), and only runs the transaction when the lock looks free.
    waiting: Mutex<HashSet<Token>>,
}

struct Shared {
    pool: MySqlPool,
    hub: WakeHub,
    identity: String,
    retain_us: AtomicI64,
    offset: Arc<AtomicI64>,
    last_sweep: Mutex<Option<std::time::Instant>>,
    /// `CONVERT(… USING cs) COLLATE coll` for Django's `name` column, so a side-table name
    /// can be looked up in Django's index.
    as_name: String,
}

enum Job {
    Release(Namespace, LockName, Token, Option<Duration>),
    Sweep,
    Flush(oneshot::Sender<()>),
}

impl std::fmt::Debug for LockmgrStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockmgrStore")
            .field("identity", &self.shared.identity)
            .finish_non_exhaustive()
    }
}

/// Whether `s` is a plain identifier (charset and collation names from the server).
fn plain(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

impl LockmgrStore {
    async fn build(
        pool: MySqlPool,
        identity: String,
        retain: Duration,
        shown: &str,
    ) -> Result<Arc<LockmgrStore>> {
        let cols = sqlx::query(
            "SELECT COLUMN_NAME, CHARACTER_SET_NAME, COLLATION_NAME FROM information_schema.COLUMNS
             WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ?",
        )
        .bind(TABLE)
        .fetch_all(&pool)
        .await
        .map_err(|e| map_err(e, "open"))?;
        if cols.is_empty() {
            return Err(table_missing(shown));
        }
        let mut names = HashMap::new();
        for r in &cols {
            let col = text(r, 0).map_err(decode)?.unwrap_or_default();
            let cs = text(r, 1).map_err(decode)?;
            let coll = text(r, 2).map_err(decode)?;
            names.insert(col.to_ascii_lowercase(), (cs, coll));
        }
        let wanted = [
            "name",
            "locked_by",
            "lock_process",
            "locked_until",
            "created_at",
            "updated_at",
        ];
        let missing: Vec<&str> = wanted
            .iter()
            .copied()
            .filter(|c| !names.contains_key(*c))
            .collect();
        if !missing.is_empty() {
            return Err(Error::config(format!(
                "store URL {shown:?}: Django's table {TABLE} lacks the column(s) {} — it is not django-lockmgr 2.x's table; run `python manage.py migrate lockmgr` in the Django project",
                missing.join(", ")
            )));
        }
        let as_name = match names.get("name") {
            Some((Some(cs), Some(coll))) if plain(cs) && plain(coll) => {
                format!("CONVERT(? USING {cs}) COLLATE {coll}")
            }
            _ => "?".to_string(),
        };
        sqlx::raw_sql(AssertSqlSafe(format!(
            "CREATE TABLE IF NOT EXISTS {SIDE} (
                name         VARBINARY({MAX_NAME_CHARS}) NOT NULL PRIMARY KEY,
                token        VARBINARY(128) NULL,
                host         VARBINARY(1024) NOT NULL,
                min_hold     BIGINT NULL,
                created_at   datetime(6) NULL,
                locked_by    VARBINARY(400) NULL,
                lock_process BIGINT NULL
            ) ENGINE = InnoDB"
        )))
        .execute(&pool)
        .await
        .map_err(|e| match db_number(&e) {
            Some(1044 | 1142) => Error::config(format!(
                "store URL {shown:?}: cannot create locksmith's side table {SIDE} ({}) — grant the user CREATE on the Django database for the first start",
                scrub(&e.to_string())
            )),
            _ => map_err(e, "open"),
        })?;
        sqlx::raw_sql(AssertSqlSafe(format!(
            "CREATE TABLE IF NOT EXISTS {RES} (
                name  VARBINARY({MAX_NAME_CHARS}) NOT NULL PRIMARY KEY,
                token VARBINARY(128) NOT NULL,
                until BIGINT NOT NULL
            ) ENGINE = InnoDB"
        )))
        .execute(&pool)
        .await
        .map_err(|e| map_err(e, "open"))?;
        let shared = Arc::new(Shared {
            pool,
            hub: WakeHub::default(),
            offset: clock_offset(&identity),
            identity,
            retain_us: AtomicI64::new(micros(retain)),
            last_sweep: Mutex::new(None),
            as_name,
        });
        let (jobs, rx) = mpsc::unbounded_channel();
        tokio::spawn(background(shared.clone(), rx));
        Ok(Arc::new(LockmgrStore {
            shared,
            jobs,
            waiting: Mutex::default(),
        }))
    }

    async fn try_acquire_inner(&self, ns: &Namespace, claim: &Claim) -> Result<Grant> {
        let polled = self
            .waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&claim.token);
        // (a waiter that has waited long goes on to the transaction, which reserves the
        // next grant for it)
        if polled
            && claim.waited < rows::RESERVE_AFTER
            && let Some((row, now)) = self.shared.read_one(ns, &claim.name).await?
        {
            // still held by someone else (a plain read: committed rows only)
            if row.live(now) && row.token.as_ref() != Some(&claim.token) {
                return Ok(Grant::Held(row.info(claim.name.as_str(), now, UNIX_EPOCH)));
            }
        }
        let c = claim.clone();
        let answer = self
            .shared
            .transact(ns, &[claim.name.as_str()], move |t| {
                let out = rows::try_acquire(t, &c)?;
                Ok(twin_info(t, c.name.as_str(), out))
            })
            .await?;
        if matches!(answer, Grant::Acquired { .. }) {
            self.after_grant();
        }
        Ok(answer)
    }

    fn after_grant(&self) {
        if self.shared.sweep_due() {
            let _ = self.jobs.send(Job::Sweep);
        }
    }
}

/// A driver error of this layout: Django's table gone is a configuration error naming the
/// migration; everything else as the native store maps it.
fn lm_err(e: sqlx::Error, op: &str) -> Error {
    let text = scrub(&e.to_string());
    if db_number(&e) == Some(1146) && text.contains(SIDE) {
        return Error::store(
            KIND,
            false,
            format!(
                "MySQL {op} failed: {text} — locksmith's side table {SIDE} was dropped; connect again to create it"
            ),
        );
    }
    if db_number(&e) == Some(1366) {
        return Error::store(
            KIND,
            false,
            format!(
                "MySQL {op} failed: {text} — Django's table {TABLE} cannot store this name or owner in its character set; give the Django database utf8mb4 (Django's recommendation), or use names it can hold"
            ),
        );
    }
    if db_number(&e) == Some(1146) {
        return Error::config(format!(
            "MySQL {op} failed: {text} — layout=django-lockmgr needs Django's table {TABLE}: run `python manage.py migrate lockmgr` in the Django project (locksmith creates its side table {SIDE} itself on connect)"
        ));
    }
    map_err(e, op)
}

fn decode(e: sqlx::Error) -> Error {
    map_err(e, "decode")
}

fn int(row: &MySqlRow, i: usize) -> std::result::Result<Option<i64>, sqlx::Error> {
    super::int(row, i)
}

/// Any text column (VARCHAR or VARBINARY) as a string.
fn text(row: &MySqlRow, i: usize) -> std::result::Result<Option<String>, sqlx::Error> {
    match row.try_get::<Option<String>, _>(i) {
        Ok(v) => Ok(v),
        Err(_) => super::text(row, i),
    }
}

/// A lock row's columns.
#[derive(Clone, Debug)]
struct LockCols {
    name: String,
    locked_by: Option<String>,
    lock_process: Option<i64>,
    until: Option<i64>,
    created: Option<i64>,
}

impl LockCols {
    fn read(r: &MySqlRow, at: usize) -> std::result::Result<Option<LockCols>, sqlx::Error> {
        let Some(name) = text(r, at)? else {
            return Ok(None);
        };
        Ok(Some(LockCols {
            name,
            locked_by: text(r, at + 1)?,
            lock_process: int(r, at + 2)?,
            until: int(r, at + 3)?,
            created: int(r, at + 4)?,
        }))
    }

    /// locksmith's uncommitted placeholder (see the module docs).
    fn placeholder(&self) -> bool {
        self.locked_by.is_none()
            && self.lock_process.is_none()
            && self.created == Some(PLACEHOLDER_US)
            && self.until == Some(PLACEHOLDER_US)
    }
}

/// A side row's columns.
#[derive(Clone, Debug)]
struct SideCols {
    name: String,
    token: Option<String>,
    host: String,
    min_hold: Option<i64>,
    created: Option<i64>,
    locked_by: Option<String>,
    lock_process: Option<i64>,
}

impl SideCols {
    fn read(r: &MySqlRow, at: usize) -> std::result::Result<Option<SideCols>, sqlx::Error> {
        let Some(name) = text(r, at)? else {
            return Ok(None);
        };
        Ok(Some(SideCols {
            name,
            token: text(r, at + 1)?,
            host: text(r, at + 2)?.unwrap_or_default(),
            min_hold: int(r, at + 3)?,
            created: int(r, at + 4)?,
            locked_by: text(r, at + 5)?,
            lock_process: int(r, at + 6)?,
        }))
    }

    /// Whether this side row belongs to `lock` (same exact name and the same copies).
    fn matches(&self, lock: &LockCols) -> bool {
        self.name == lock.name
            && self.created == lock.created
            && self.locked_by == lock.locked_by
            && self.lock_process == lock.lock_process
    }
}

/// The state machine's view of a lock row and its side row; whether the side row is ours.
fn to_row(lock: &LockCols, side: Option<&SideCols>, now: i64) -> (Row, bool) {
    let ours = side.filter(|s| s.matches(lock));
    let token = match ours {
        // released under min_hold: nobody holds it
        Some(s) => s
            .token
            .as_ref()
            .map(|t| t.parse().unwrap_or_else(|_| Token::new())),
        // a Python peer's (or a hand-written) row: a random token nobody holds
        None => Some(Token::new()),
    };
    let row = Row {
        token,
        owner: lock.locked_by.clone().unwrap_or_default(),
        host: ours.map(|s| s.host.clone()).unwrap_or_default(),
        pid: lock
            .lock_process
            .and_then(|p| u32::try_from(p).ok())
            .unwrap_or(0),
        fence: 0,
        acquired_at: lock.created.unwrap_or(now),
        expires_at: lock.until,
        min_hold: ours.and_then(|s| s.min_hold),
    };
    (row, ours.is_some())
}

/// Checks a name for the table: at most 100 bytes.
fn check_name(name: &str) -> Result<()> {
    if name.len() > MAX_NAME_CHARS {
        return Err(Error::InvalidName {
            name: name.chars().take(64).collect::<String>() + "…",
            reason: format!(
                "it is {} bytes, but layout=django-lockmgr keeps names in Django's varchar({MAX_NAME_CHARS}) column, so names of at most {MAX_NAME_CHARS} bytes — use a shorter name (e.g. a hash of the long one)",
                name.len()
            ),
        });
    }
    Ok(())
}

fn time_range(what: &str, t: i64) -> Result<()> {
    if (PLACEHOLDER_US..=MAX_US).contains(&t) {
        Ok(())
    } else {
        Err(Error::invalid_option(
            "ttl",
            format!(
                "the {what} would fall outside Django's datetime column (years 1000 to 9999) — use a shorter TTL, or a lock that never expires"
            ),
        ))
    }
}

/// One lock loaded by a transaction.
#[derive(Clone, Debug)]
struct Loaded {
    /// The row's name as stored (may differ from the one asked for only as the collation
    /// ignores).
    exact: String,
    row: Row,
    ours: bool,
}

/// One transaction's view of some names (see the module docs' transaction shape).
struct Snap {
    now: i64,
    loaded: HashMap<String, Option<Loaded>>,
    current: HashMap<String, Option<Row>>,
    dirty: BTreeSet<String>,
    res: HashMap<String, Option<Reservation>>,
    dirty_res: BTreeSet<String>,
}

impl Table for Snap {
    type Error = Error;

    fn now(&self) -> i64 {
        self.now
    }

    fn epoch(&self) -> SystemTime {
        UNIX_EPOCH
    }

    fn get(&mut self, name: &str) -> Result<Option<Row>> {
        self.current
            .get(name)
            .cloned()
            .ok_or_else(|| Error::store(KIND, false, format!("internal: {name:?} not loaded")))
    }

    fn put(&mut self, name: &str, row: &Row) -> Result<()> {
        self.get(name)?;
        self.current.insert(name.to_string(), Some(row.clone()));
        self.dirty.insert(name.to_string());
        Ok(())
    }

    fn delete(&mut self, name: &str) -> Result<bool> {
        let was = self.get(name)?.is_some();
        self.current.insert(name.to_string(), None);
        self.dirty.insert(name.to_string());
        Ok(was)
    }

    fn next_fence(&mut self) -> Result<u64> {
        Ok(0) // no fencing in this layout
    }

    fn reservation(&mut self, name: &str) -> Result<Option<Reservation>> {
        Ok(self
            .res
            .get(name)
            .cloned()
            .flatten()
            .filter(|r| r.until > self.now))
    }

    fn reserve(&mut self, name: &str, reservation: &Reservation) -> Result<()> {
        self.res.insert(name.to_string(), Some(reservation.clone()));
        self.dirty_res.insert(name.to_string());
        Ok(())
    }

    fn unreserve(&mut self, name: &str) -> Result<()> {
        if self.res.get(name).is_some_and(Option::is_some) {
            self.res.insert(name.to_string(), None);
            self.dirty_res.insert(name.to_string());
        }
        Ok(())
    }
}

impl Snap {
    /// The row's name as stored, where it differs from `name` (a collation twin).
    fn twin(&self, name: &str) -> Option<&str> {
        match self.loaded.get(name) {
            Some(Some(l)) if l.exact != name => Some(&l.exact),
            _ => None,
        }
    }
}

impl Shared {
    fn off(&self) -> i64 {
        self.offset.load(Ordering::SeqCst)
    }

    fn sweep_due(&self) -> bool {
        let mut last = self.last_sweep.lock().unwrap_or_else(|e| e.into_inner());
        let now = std::time::Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < SWEEP_EVERY) {
            return false;
        }
        *last = Some(now);
        true
    }

    /// Runs `op` over the locked rows of `names` in one transaction (see the module docs),
    /// retried as a whole on deadlocks.
    async fn transact<T: Send>(
        &self,
        ns: &Namespace,
        names: &[&str],
        op: impl Fn(&mut Snap) -> Result<T> + Send + Sync,
    ) -> Result<T> {
        check_namespace(ns)?;
        for n in names {
            check_name(n)?;
        }
        let mut sorted: Vec<&str> = names.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        let mut tries = 0;
        let mut pause = Duration::from_millis(1);
        loop {
            match self.attempt(&sorted, &op).await {
                Ok(out) => return out,
                Err(e) if is_conflict(&e) && tries < CONFLICT_RETRIES => {
                    tries += 1;
                    tokio::time::sleep(jitter(pause)).await;
                    pause = (pause * 2).min(Duration::from_millis(25));
                }
                Err(e) => return Err(lm_err(e, "transaction")),
            }
        }
    }

    async fn attempt<T>(
        &self,
        sorted: &[&str],
        op: &(impl Fn(&mut Snap) -> Result<T> + Send + Sync),
    ) -> std::result::Result<Result<T>, sqlx::Error> {
        let off = self.off();
        let mut tx = self.pool.begin().await?;
        let placeholder = format!(
            "INSERT INTO {TABLE} (name, locked_by, lock_process, locked_until, created_at, updated_at)
             VALUES (?, NULL, NULL, {d}, {d}, {d}) ON DUPLICATE KEY UPDATE name = name",
            d = dt()
        );
        for n in sorted {
            sqlx::query(AssertSqlSafe(placeholder.as_str()))
                .bind(*n)
                .bind(PLACEHOLDER_US)
                .bind(PLACEHOLDER_US)
                .bind(PLACEHOLDER_US)
                .execute(&mut *tx)
                .await?;
        }
        let select = format!(
            "SELECT {} FROM {TABLE} AS l WHERE l.name = ? FOR UPDATE",
            lock_cols()
        );
        let mut locks: HashMap<String, LockCols> = HashMap::new();
        let mut placeholders: HashSet<String> = HashSet::new();
        for n in sorted {
            let r = sqlx::query(AssertSqlSafe(select.as_str()))
                .bind(*n)
                .fetch_optional(&mut *tx)
                .await?;
            if let Some(lock) = r
                .as_ref()
                .map(|r| LockCols::read(r, 0))
                .transpose()?
                .flatten()
            {
                if lock.placeholder() {
                    placeholders.insert(n.to_string());
                } else {
                    locks.insert(n.to_string(), lock);
                }
            }
        }
        // Two names of this call that are one key for Django's table: refuse.
        let mut by_key: HashMap<&str, &str> = HashMap::new();
        for (n, lock) in &locks {
            if let Some(other) = by_key.insert(lock.name.as_str(), n.as_str()) {
                tx.rollback().await?;
                return Ok(Err(collide(other, n)));
            }
        }
        // Names of this call that share a placeholder (neither row existed): only one of
        // them got the placeholder with its exact spelling; the lookups of the others found
        // it too, under another name.
        if placeholders.len() > 1 {
            let q = format!("SELECT name FROM {TABLE} WHERE name = ? FOR UPDATE");
            let mut seen: HashMap<String, String> = HashMap::new();
            for n in &placeholders {
                let exact: Option<String> = sqlx::query_scalar(AssertSqlSafe(q.as_str()))
                    .bind(n.as_str())
                    .fetch_optional(&mut *tx)
                    .await?;
                if let Some(e) = exact
                    && let Some(other) = seen.insert(e, n.clone())
                {
                    tx.rollback().await?;
                    return Ok(Err(collide(&other, n)));
                }
            }
        }
        let mut side_names: BTreeSet<String> = sorted.iter().map(|s| s.to_string()).collect();
        side_names.extend(locks.values().map(|l| l.name.clone()));
        let mut sides: HashMap<String, SideCols> = HashMap::new();
        if !side_names.is_empty() {
            let q = format!(
                "SELECT {} FROM {SIDE} AS s WHERE s.name IN {}",
                side_cols(),
                placeholders_sql(side_names.len())
            );
            let mut query = sqlx::query(AssertSqlSafe(q.as_str()));
            for n in &side_names {
                query = query.bind(n.as_bytes());
            }
            for r in query.fetch_all(&mut *tx).await? {
                if let Some(s) = SideCols::read(&r, 0)? {
                    sides.insert(s.name.clone(), s);
                }
            }
        }
        let mut res: HashMap<String, Option<Reservation>> = HashMap::new();
        if !sorted.is_empty() {
            let q = format!(
                "SELECT name, token, until FROM {RES} WHERE name IN {}",
                placeholders_sql(sorted.len())
            );
            let mut query = sqlx::query(AssertSqlSafe(q.as_str()));
            for n in sorted {
                query = query.bind(n.as_bytes());
            }
            for r in query.fetch_all(&mut *tx).await? {
                let name = text(&r, 0)?.unwrap_or_default();
                let token = text(&r, 1)?.and_then(|t| t.parse().ok());
                let until = int(&r, 2)?.unwrap_or(0);
                res.insert(name, token.map(|token| Reservation { token, until }));
            }
        }
        let now: i64 = {
            let r = sqlx::query(AssertSqlSafe(format!("SELECT {}", now_sql())))
                .bind(off)
                .fetch_one(&mut *tx)
                .await?;
            int(&r, 0)?.unwrap_or(0)
        };
        let mut snap = Snap {
            now,
            loaded: HashMap::new(),
            current: HashMap::new(),
            dirty: BTreeSet::new(),
            res,
            dirty_res: BTreeSet::new(),
        };
        for n in sorted {
            let loaded = locks.get(*n).map(|lock| {
                let (row, ours) = to_row(lock, sides.get(&lock.name), now);
                Loaded {
                    exact: lock.name.clone(),
                    row,
                    ours,
                }
            });
            snap.current
                .insert(n.to_string(), loaded.as_ref().map(|l| l.row.clone()));
            snap.loaded.insert(n.to_string(), loaded);
        }
        let out = match op(&mut snap) {
            Ok(out) => out,
            Err(e) => {
                tx.rollback().await?;
                return Ok(Err(e));
            }
        };
        // Side rows that are valid after this transaction (written, or kept matching).
        let mut valid: HashSet<String> = HashSet::new();
        for n in sorted {
            let name = n.to_string();
            let loaded = snap.loaded.get(&name).cloned().flatten();
            let current = snap.current.get(&name).cloned().flatten();
            if !snap.dirty.contains(&name) {
                if let Some(l) = &loaded
                    && l.ours
                {
                    valid.insert(l.exact.clone());
                }
                if placeholders.contains(&name) {
                    sqlx::query(AssertSqlSafe(format!(
                        "DELETE FROM {TABLE} WHERE name = ? AND created_at = {}",
                        dt()
                    )))
                    .bind(*n)
                    .bind(PLACEHOLDER_US)
                    .execute(&mut *tx)
                    .await?;
                }
                continue;
            }
            match current {
                Some(row) => {
                    let update = loaded.as_ref().is_some_and(|l| {
                        row.acquired_at == l.row.acquired_at
                            && (row.token.is_none() || row.token == l.row.token)
                    });
                    if let Some(until) = row.expires_at
                        && let Err(e) = time_range("lease", until)
                    {
                        tx.rollback().await?;
                        return Ok(Err(e));
                    }
                    if update {
                        let l = loaded.as_ref().expect("checked");
                        sqlx::query(AssertSqlSafe(format!(
                            "UPDATE {TABLE} SET locked_until = {d}, updated_at = {d} WHERE name = ?",
                            d = dt()
                        )))
                        .bind(row.expires_at)
                        .bind(now)
                        .bind(*n)
                        .execute(&mut *tx)
                        .await?;
                        if l.ours {
                            valid.insert(l.exact.clone());
                            if row.token.is_none() && l.row.token.is_some() {
                                sqlx::query(AssertSqlSafe(format!(
                                    "UPDATE {SIDE} SET token = NULL WHERE name = ?"
                                )))
                                .bind(l.exact.as_bytes())
                                .execute(&mut *tx)
                                .await?;
                            }
                        }
                    } else {
                        if let Err(e) = time_range("grant time", row.acquired_at) {
                            tx.rollback().await?;
                            return Ok(Err(e));
                        }
                        let by = spec::locked_by(&row.owner).to_string();
                        let pid = i32::try_from(row.pid).ok().map(i64::from);
                        sqlx::query(AssertSqlSafe(format!(
                            "INSERT INTO {TABLE} (name, locked_by, lock_process, locked_until, created_at, updated_at)
                             VALUES (?, ?, ?, {d}, {d}, {d})
                             ON DUPLICATE KEY UPDATE name = VALUES(name), locked_by = VALUES(locked_by),
                               lock_process = VALUES(lock_process), locked_until = VALUES(locked_until),
                               created_at = VALUES(created_at), updated_at = VALUES(updated_at)",
                            d = dt()
                        )))
                        .bind(*n)
                        .bind(&by)
                        .bind(pid)
                        .bind(row.expires_at)
                        .bind(row.acquired_at)
                        .bind(row.acquired_at)
                        .execute(&mut *tx)
                        .await?;
                        sqlx::query(AssertSqlSafe(format!(
                            "INSERT INTO {SIDE} (name, token, host, min_hold, created_at, locked_by, lock_process)
                             VALUES (?, ?, ?, ?, {d}, ?, ?)
                             ON DUPLICATE KEY UPDATE token = VALUES(token), host = VALUES(host),
                               min_hold = VALUES(min_hold), created_at = VALUES(created_at),
                               locked_by = VALUES(locked_by), lock_process = VALUES(lock_process)",
                            d = dt()
                        )))
                        .bind(n.as_bytes())
                        .bind(row.token.as_ref().map(|t| t.expose().as_bytes().to_vec()))
                        .bind(row.host.as_bytes())
                        .bind(row.min_hold)
                        .bind(row.acquired_at)
                        .bind(by.as_bytes())
                        .bind(pid)
                        .execute(&mut *tx)
                        .await?;
                        valid.insert(name.clone());
                    }
                }
                None => {
                    sqlx::query(AssertSqlSafe(format!("DELETE FROM {TABLE} WHERE name = ?")))
                        .bind(*n)
                        .execute(&mut *tx)
                        .await?;
                }
            }
        }
        // Side rows met here that belong to no lock row any more: garbage.
        for name in sides.keys().filter(|s| !valid.contains(*s)) {
            sqlx::query(AssertSqlSafe(format!("DELETE FROM {SIDE} WHERE name = ?")))
                .bind(name.as_bytes())
                .execute(&mut *tx)
                .await?;
        }
        for name in &snap.dirty_res {
            match snap.res.get(name).cloned().flatten() {
                Some(r) => {
                    sqlx::query(AssertSqlSafe(format!(
                        "INSERT INTO {RES} (name, token, until) VALUES (?, ?, ?)
                         ON DUPLICATE KEY UPDATE token = VALUES(token), until = VALUES(until)"
                    )))
                    .bind(name.as_bytes())
                    .bind(r.token.expose().as_bytes())
                    .bind(r.until)
                    .execute(&mut *tx)
                    .await?;
                }
                None => {
                    sqlx::query(AssertSqlSafe(format!("DELETE FROM {RES} WHERE name = ?")))
                        .bind(name.as_bytes())
                        .execute(&mut *tx)
                        .await?;
                }
            }
        }
        tx.commit().await?;
        Ok(Ok(out))
    }

    /// Reads one lock (exact name) and the clock, without locking.
    async fn read_one(&self, ns: &Namespace, name: &LockName) -> Result<Option<(Row, i64)>> {
        check_namespace(ns)?;
        let q = format!(
            "SELECT {now}, {l}, {s} FROM (SELECT 1) AS one
             LEFT JOIN {TABLE} AS l ON l.name = ? AND CAST(l.name AS BINARY) = CAST(? AS BINARY)
             LEFT JOIN {SIDE} AS s ON s.name = ?",
            now = now_sql(),
            l = lock_cols(),
            s = side_cols(),
        );
        let r = sqlx::query(AssertSqlSafe(q))
            .bind(self.off())
            .bind(name.as_str())
            .bind(name.as_str())
            .bind(name.as_str().as_bytes())
            .fetch_one(&self.pool)
            .await
            .map_err(|e| lm_err(e, "read"))?;
        let now = int(&r, 0).map_err(decode)?.unwrap_or(0);
        let Some(lock) = LockCols::read(&r, 1).map_err(decode)? else {
            return Ok(None);
        };
        let side = SideCols::read(&r, 6).map_err(decode)?;
        Ok(Some((to_row(&lock, side.as_ref(), now).0, now)))
    }
}

fn collide(a: &str, b: &str) -> Error {
    Error::invalid_option(
        "names",
        format!(
            "{a:?} and {b:?} are one lock in Django's table {TABLE} (its collation ignores case and trailing spaces) — name them differently"
        ),
    )
}

fn placeholders_sql(n: usize) -> String {
    format!("({})", vec!["?"; n].join(", "))
}

/// The background task: detached releases (retried for a while), sweeps, `close`'s flush.
async fn background(shared: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<Job>) {
    while let Some(job) = rx.recv().await {
        match job {
            Job::Release(ns, name, token, min_hold) => {
                let mut pause = Duration::from_millis(10);
                for _ in 0..8 {
                    match release(&shared, &ns, &name, &token, min_hold).await {
                        Err(e) if e.is_retryable() => {
                            tokio::time::sleep(jitter(pause)).await;
                            pause = (pause * 2).min(Duration::from_secs(1));
                        }
                        Err(e) => {
                            tracing::warn!(lock = %name, error = %e, "MySQL (django-lockmgr) release failed; the lease will expire");
                            break;
                        }
                        Ok(_) => break,
                    }
                }
            }
            Job::Sweep => match sweep(&shared).await {
                Ok(n) if n >= SWEEP_BATCH => {
                    *shared.last_sweep.lock().unwrap_or_else(|e| e.into_inner()) = None;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(error = %scrub(&e.to_string()), "MySQL (django-lockmgr) garbage sweep failed");
                }
            },
            Job::Flush(done) => {
                let _ = done.send(());
            }
        }
    }
}

async fn release(
    shared: &Shared,
    ns: &Namespace,
    name: &LockName,
    token: &Token,
    min_hold: Option<Duration>,
) -> Result<Released> {
    let out = shared
        .transact(ns, &[name.as_str()], |t| {
            rows::release(t, name, token, min_hold)
        })
        .await?;
    if out != Released::NotHeld {
        shared.hub.notify(ns, name);
    }
    Ok(out)
}

/// Removes up to a batch of lock rows that expired more than `retain` ago and a batch of
/// orphaned side rows; returns the larger count found.
async fn sweep(shared: &Shared) -> std::result::Result<usize, sqlx::Error> {
    let off = shared.off();
    let retain = shared.retain_us.load(Ordering::SeqCst);
    // an unreadable `locked_until` (NULL here) never expires, so it is never garbage
    let old = format!("{} < {} - ?", us("locked_until"), now_sql());
    let names: Vec<String> = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT name FROM {TABLE} WHERE {old} LIMIT {SWEEP_BATCH}"
    )))
    .bind(off)
    .bind(retain)
    .fetch_all(&shared.pool)
    .await?;
    let expired = names.len();
    for n in names {
        retrying(|| {
            sqlx::query(AssertSqlSafe(format!(
                "DELETE FROM {TABLE} WHERE name = ? AND CAST(name AS BINARY) = CAST(? AS BINARY) AND {old}"
            )))
            .bind(n.as_str())
            .bind(n.as_str())
            .bind(off)
            .bind(retain)
            .execute(&shared.pool)
        })
        .await?;
    }
    let orphans: Vec<Vec<u8>> = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT s.name FROM {SIDE} AS s LEFT JOIN {TABLE} AS l
           ON l.name = {as_name} AND CAST(l.name AS BINARY) = s.name
           AND l.created_at <=> s.created_at AND CAST(l.locked_by AS BINARY) <=> s.locked_by
           AND l.lock_process <=> s.lock_process
         WHERE l.name IS NULL LIMIT {SWEEP_BATCH}",
        as_name = shared.as_name.replace('?', "s.name")
    )))
    .fetch_all(&shared.pool)
    .await?;
    let found = orphans.len();
    for name in orphans {
        // Each one checked again under the lock row's lock, in the order every write takes
        // its locks (lock row, then side row).
        let Ok(name) = String::from_utf8(name) else {
            continue;
        };
        let attempt = async {
            let mut tx = shared.pool.begin().await?;
            let lock = sqlx::query(AssertSqlSafe(format!(
                "SELECT {} FROM {TABLE} AS l WHERE l.name = ? FOR UPDATE",
                lock_cols()
            )))
            .bind(name.as_str())
            .fetch_optional(&mut *tx)
            .await?
            .map(|r| LockCols::read(&r, 0))
            .transpose()?
            .flatten();
            let side = sqlx::query(AssertSqlSafe(format!(
                "SELECT {} FROM {SIDE} AS s WHERE s.name = ? FOR UPDATE",
                side_cols()
            )))
            .bind(name.as_bytes())
            .fetch_optional(&mut *tx)
            .await?
            .map(|r| SideCols::read(&r, 0))
            .transpose()?
            .flatten();
            if let Some(side) = side
                && !lock.as_ref().is_some_and(|l| side.matches(l))
            {
                sqlx::query(AssertSqlSafe(format!("DELETE FROM {SIDE} WHERE name = ?")))
                    .bind(name.as_bytes())
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await
        };
        match attempt.await {
            Ok(()) => {}
            Err(e) if is_conflict(&e) => {}
            Err(e) => return Err(e),
        }
    }
    let lapsed: Vec<Vec<u8>> = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT name FROM {RES} WHERE until <= {} LIMIT {SWEEP_BATCH}",
        now_sql()
    )))
    .bind(off)
    .fetch_all(&shared.pool)
    .await?;
    for name in lapsed {
        retrying(|| {
            sqlx::query(AssertSqlSafe(format!(
                "DELETE FROM {RES} WHERE name = ? AND until <= {}",
                now_sql()
            )))
            .bind(name.as_slice())
            .bind(off)
            .execute(&shared.pool)
        })
        .await?;
    }
    Ok(expired.max(found))
}

#[async_trait]
impl Store for LockmgrStore {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn identity(&self) -> String {
        self.shared.identity.clone()
    }

    fn capabilities(&self) -> Capabilities {
        spec::capabilities()
    }

    async fn try_acquire(&self, ns: &Namespace, claim: &Claim) -> Result<Grant> {
        let answer = self.try_acquire_inner(ns, claim).await;
        let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        if matches!(answer, Ok(Grant::Held(_))) {
            if waiting.len() >= 4096 {
                waiting.clear(); // tokens that stopped trying; forgetting costs a transaction
            }
            waiting.insert(claim.token.clone());
        } else {
            waiting.remove(&claim.token);
        }
        answer
    }

    async fn try_acquire_all(&self, ns: &Namespace, claims: &[Claim]) -> Result<GrantAll> {
        let names: Vec<&str> = claims.iter().map(|c| c.name.as_str()).collect();
        let cl = claims.to_vec();
        let answer = self
            .shared
            .transact(ns, &names, move |t| {
                let out = rows::try_acquire_all(t, &cl)?;
                Ok(match out {
                    GrantAll::Held(mut info) => {
                        if let Some(exact) = t.twin(&info.name) {
                            info.name = exact.to_string();
                        }
                        GrantAll::Held(info)
                    }
                    other => other,
                })
            })
            .await?;
        if matches!(answer, GrantAll::Acquired(_)) {
            self.after_grant();
        }
        Ok(answer)
    }

    async fn release(
        &self,
        ns: &Namespace,
        name: &LockName,
        token: &Token,
        min_hold: Option<Duration>,
    ) -> Result<Released> {
        release(&self.shared, ns, name, token, min_hold).await
    }

    fn release_detached(
        &self,
        ns: &Namespace,
        name: &LockName,
        token: &Token,
        min_hold: Option<Duration>,
    ) {
        let job = Job::Release(ns.clone(), name.clone(), token.clone(), min_hold);
        if self.jobs.send(job).is_err() {
            tracing::debug!(lock = %name, "detached release not queued; the lease will expire");
        }
    }

    async fn extend(
        &self,
        ns: &Namespace,
        name: &LockName,
        token: &Token,
        mode: ExtendMode,
    ) -> Result<Extended> {
        let (answer, shortened) = self
            .shared
            .transact(ns, &[name.as_str()], move |t| {
                rows::extend(t, name, token, mode)
            })
            .await?;
        if shortened {
            self.shared.hub.notify(ns, name);
        }
        Ok(answer)
    }

    async fn held_by(
        &self,
        ns: &Namespace,
        name: &LockName,
        token: &Token,
    ) -> Result<Option<LockInfo>> {
        Ok(self
            .shared
            .read_one(ns, name)
            .await?
            .filter(|(row, now)| row.held_by(token, *now))
            .map(|(row, now)| row.info(name.as_str(), now, UNIX_EPOCH)))
    }

    async fn inspect(&self, ns: &Namespace, name: &LockName) -> Result<Option<LockInfo>> {
        Ok(self
            .shared
            .read_one(ns, name)
            .await?
            .map(|(row, now)| row.info(name.as_str(), now, UNIX_EPOCH)))
    }

    async fn list(&self, ns: &Namespace, query: &ListQuery) -> Result<Page> {
        check_namespace(ns)?;
        let expired: i32 = match query.expired {
            Expired::Exclude => 0,
            Expired::Include => 1,
            _ => 2,
        };
        let after: Vec<u8> = query
            .after
            .as_ref()
            .map(|c| c.as_str().as_bytes().to_vec())
            .unwrap_or_default();
        let limit = i64::try_from(query.limit).unwrap_or(i64::MAX - 1) + 1;
        let until = us("l.locked_until");
        let q = format!(
            "SELECT n.now, {l}, {s} FROM (SELECT {now} AS now) AS n
             JOIN {TABLE} AS l ON CAST(l.name AS BINARY) > ?
               AND CAST(l.name AS BINARY) LIKE ? ESCAPE '!'
               AND CASE ? WHEN 0 THEN {until} IS NULL OR {until} > n.now
                          WHEN 1 THEN TRUE
                          ELSE {until} IS NOT NULL AND {until} <= n.now END
             LEFT JOIN {SIDE} AS s ON s.name = CAST(l.name AS BINARY)
             ORDER BY CAST(l.name AS BINARY) LIMIT ?",
            now = now_sql(),
            l = lock_cols(),
            s = side_cols(),
        );
        let rows = sqlx::query(AssertSqlSafe(q))
            .bind(self.shared.off())
            .bind(after)
            .bind(super::sql::like_prefix(&query.prefix))
            .bind(expired)
            .bind(limit)
            .fetch_all(&self.shared.pool)
            .await
            .map_err(|e| lm_err(e, "list"))?;
        let mut items = Vec::with_capacity(rows.len());
        for r in &rows {
            let now = int(r, 0).map_err(decode)?.unwrap_or(0);
            let Some(lock) = LockCols::read(r, 1).map_err(decode)? else {
                continue;
            };
            let side = SideCols::read(r, 6).map_err(decode)?;
            let (row, _) = to_row(&lock, side.as_ref(), now);
            items.push(row.info(&lock.name, now, UNIX_EPOCH));
        }
        let next = if items.len() > query.limit {
            items.truncate(query.limit);
            items.last().map(|i| Cursor::new(i.name.clone()))
        } else {
            None
        };
        Ok(Page::new(items, next))
    }

    async fn force_release(&self, ns: &Namespace, names: &[LockName]) -> Result<Vec<bool>> {
        let list: Vec<&str> = names.iter().map(LockName::as_str).collect();
        let out = self
            .shared
            .transact(ns, &list, |t| {
                let now = t.now;
                names
                    .iter()
                    .map(|name| {
                        let n = name.as_str();
                        // exact names only: a collation twin is another lock for locksmith
                        if t.twin(n).is_some() {
                            return Ok(false);
                        }
                        let live = t.get(n)?.is_some_and(|r| r.live(now));
                        if t.get(n)?.is_some() {
                            t.delete(n)?;
                        }
                        Ok(live)
                    })
                    .collect::<Result<Vec<bool>>>()
            })
            .await?;
        for name in names {
            self.shared.hub.notify(ns, name);
        }
        Ok(out)
    }

    async fn reset_all(&self, ns: &Namespace) -> Result<u64> {
        check_namespace(ns)?;
        let sh = &self.shared;
        let attempt = async {
            let mut tx = sh.pool.begin().await?;
            let n = sqlx::query(AssertSqlSafe(format!("DELETE FROM {TABLE}")))
                .execute(&mut *tx)
                .await?
                .rows_affected();
            sqlx::query(AssertSqlSafe(format!("DELETE FROM {SIDE}")))
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok::<u64, sqlx::Error>(n)
        };
        let n = attempt.await.map_err(|e| lm_err(e, "reset_all"))?;
        sh.hub.notify_namespace(ns);
        Ok(n)
    }

    async fn purge_expired(&self, ns: &Namespace) -> Result<u64> {
        check_namespace(ns)?;
        let sh = &self.shared;
        let off = sh.off();
        let n = retrying(|| {
            sqlx::query(AssertSqlSafe(format!(
                "DELETE FROM {TABLE} WHERE {} <= {}",
                us("locked_until"),
                now_sql()
            )))
            .bind(off)
            .execute(&sh.pool)
        })
        .await
        .map_err(|e| lm_err(e, "purge_expired"))?
        .rows_affected();
        let _ = self.jobs.send(Job::Sweep);
        Ok(n)
    }

    async fn set_locks(
        &self,
        ns: &Namespace,
        claims: &[Claim],
        policy: &SetPolicy,
    ) -> Result<SetOutcome> {
        let names: Vec<&str> = claims.iter().map(|c| c.name.as_str()).collect();
        let (cl, policy) = (claims.to_vec(), policy.clone());
        let out = self
            .shared
            .transact(ns, &names, move |t| rows::set_locks(t, &cl, &policy))
            .await?;
        self.after_grant();
        Ok(out)
    }

    async fn subscribe(&self, ns: &Namespace, name: &LockName) -> Result<Wakeups> {
        // This process's releases wake its waiters; Python peers and other processes are
        // polled (every `POLL_INTERVAL`, 25 ms, at most).
        Ok(self.shared.hub.subscribe(ns, name))
    }

    async fn close(&self) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        if self.jobs.send(Job::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
        Ok(())
    }
}

/// A Held answer about a collation twin names the row as stored.
fn twin_info(t: &Snap, name: &str, out: Grant) -> Grant {
    match (out, t.twin(name)) {
        (Grant::Held(mut info), Some(exact)) => {
            info.name = exact.to_string();
            Grant::Held(info)
        }
        (out, _) => out,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_names_are_refused_naming_the_column() {
        assert!(check_name(&"a".repeat(100)).is_ok());
        assert!(check_name(&"\u{e9}".repeat(50)).is_ok());
        let err = check_name(&"a".repeat(101)).unwrap_err().to_string();
        assert!(
            err.contains("varchar(100)") && err.contains("101 bytes"),
            "{err}"
        );
    }

    #[test]
    fn times_outside_the_datetime_column_are_refused() {
        assert!(time_range("lease", MAX_US).is_ok());
        assert!(time_range("lease", 0).is_ok());
        let err = time_range("lease", MAX_US + 1).unwrap_err().to_string();
        assert!(err.contains("9999"), "{err}");
        assert!(time_range("lease", PLACEHOLDER_US - 1).is_err());
    }

    #[test]
    fn side_rows_match_only_their_own_lock_row() {
        let lock = LockCols {
            name: "job".into(),
            locked_by: Some("w".into()),
            lock_process: Some(1),
            until: Some(10),
            created: Some(5),
        };
        let side = SideCols {
            name: "job".into(),
            token: Some(Token::new().expose().to_string()),
            host: "h".into(),
            min_hold: None,
            created: Some(5),
            locked_by: Some("w".into()),
            lock_process: Some(1),
        };
        assert!(side.matches(&lock));
        let (row, ours) = to_row(&lock, Some(&side), 7);
        assert!(ours && row.token.is_some() && row.host == "h");
        let retaken = LockCols {
            created: Some(6),
            ..lock.clone()
        };
        assert!(!side.matches(&retaken));
        let (row, ours) = to_row(&retaken, Some(&side), 7);
        assert!(!ours && row.host.is_empty());
        assert_ne!(
            row.token.as_ref().map(Token::expose),
            side.token.as_deref(),
            "a Python row's token is one nobody holds"
        );
        let twin = LockCols {
            name: "JOB".into(),
            ..lock.clone()
        };
        assert!(!side.matches(&twin));
        let placeholder = LockCols {
            name: "x".into(),
            locked_by: None,
            lock_process: None,
            until: Some(PLACEHOLDER_US),
            created: Some(PLACEHOLDER_US),
        };
        assert!(placeholder.placeholder() && !lock.placeholder());
    }
}
