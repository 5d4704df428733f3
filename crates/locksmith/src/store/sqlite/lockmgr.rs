//! The django-lockmgr layout on SQLite (`sqlite:///path/to/django/db.sqlite3?layout=django-lockmgr`):
//! locks kept in the `lockmgr_lock` table of a Django project's SQLite database, so that
//! locksmith and the project's Python code (django-lockmgr) exclude each other on the same
//! names. The layout's rules — which rows are whose, what locksmith writes, what it lacks —
//! are the same on every SQL store (see the shared spec in `store/lockmgr.rs`); this module
//! says how SQLite does them.
//!
//! # The file is Django's
//!
//! The database belongs to the Django project, so locksmith changes nothing about the file
//! itself: it does **not** switch the journal mode (no WAL — Django's default is the rollback
//! journal, and the layout works in whatever mode the file is in), sets no pragma that
//! persists in the file (no `application_id`, no `user_version` schema version). Its own
//! connection keeps SQLite's default `synchronous = FULL` in the rollback journal and uses
//! `NORMAL` when the file is in WAL (as the native store does; in WAL that can lose the
//! last commits on a power cut but never corrupts the file). It never creates the file: a
//! missing path is an error naming the fix, not a new empty database. It never creates,
//! alters or indexes Django's `lockmgr_lock` (missing: an error naming
//! `python manage.py migrate lockmgr`). It adds two tables of its own, created when missing
//! (`CREATE TABLE IF NOT EXISTS`), which Django ignores (it has no model for them):
//!
//! - `locksmith_lockmgr_owner`: one row per name locksmith granted — the copies of the
//!   `created_at`, `locked_by` and `lock_process` it wrote into Django's row (with Django's
//!   column types, `datetime`, `varchar(100)`, `integer`), the owner token (NULL once the
//!   lock was released under `min_hold`), the holder's host name and the `min_hold` in µs;
//! - `locksmith_lockmgr_reservation`: the cross-process fairness reservations of the native
//!   store (a waiter in another locksmith process that has waited 200 ms reserves the next
//!   grant for 100 ms), so a polling locksmith waiter is not starved by notified ones.
//!   Python peers know nothing of it and take a free lock whenever they look.
//!
//! # Transactions and the worker
//!
//! The layout shares the native store's machinery: one dedicated worker thread per file and
//! layout in a process, owning the connection; every write is one `BEGIN IMMEDIATE`
//! transaction (the grant, its garbage sweep, the side rows — all or nothing, and atomic
//! against every other process, Python's included, since SQLite has one writer at a time);
//! `busy_timeout` is 50 ms and a busy file is retried from the async side with jittered
//! backoff. In rollback-journal mode a commit also waits for readers, so Django's readers
//! and locksmith's retry each other briefly; nothing blocks for long. Reads (`inspect`,
//! `list`, a waiter's poll) are single statements outside a transaction. Django's own
//! writes run in deferred transactions by default, which SQLite may fail at once with
//! "database is locked" when another connection writes at the same moment — between two
//! Django processes as between Django and locksmith; Django 5.1's
//! `OPTIONS = {"transaction_mode": "IMMEDIATE"}` makes them wait instead.
//!
//! What that costs: in the rollback journal every commit syncs the journal, the database
//! and the directory (SQLite's default `synchronous = FULL`, kept because a lower setting
//! would risk the project's whole database on a power cut, not just its locks). On this
//! project's test machine a write took about 2 ms when the disk was quiet and 15 ms
//! (median; up to 150 ms) while other builds kept it busy, against well under 1 ms for the
//! native store's WAL file. Give leases seconds rather than milliseconds (the watchdog
//! renews every third of the TTL, and must get through before the lease ends); a project
//! that switches its own database to WAL (Django: `init_command` `PRAGMA
//! journal_mode=WAL`, once) makes every write several times cheaper, for Django too, and
//! locksmith's commits then skip the sync (`synchronous = NORMAL`).
//!
//! Which row is whose: a Django row is locksmith's when the side row of its name has the
//! same `created_at` (or the same without a trailing `.000000`: Django writes a datetime
//! back without its fraction when it is zero, e.g. when a Python peer renews locksmith's
//! lock with `renew_lock`, which saves every column), the same `locked_by` and the same
//! `lock_process` (NULL-safe, SQLite's `IS`). A Python peer that deletes an expired row and
//! inserts its own writes a new `created_at`, so the stale side row no longer matches.
//!
//! # Time
//!
//! Times are naive UTC text, as Django writes them into SQLite with `USE_TZ = True`:
//! `YYYY-MM-DD HH:MM:SS.ffffff`. Expiry is decided by this machine's wall clock, read by the
//! worker once the write lock is held. Every process that shares a SQLite file runs on this
//! machine (SQLite must not be shared over a network file system), so Python peers use the
//! same clock as locksmith: django-lockmgr's rule (each process's own `timezone.now()`) and
//! locksmith's rule (the store's clock) are one clock here, and clock skew between peers
//! cannot arise. A clock step on this machine moves every lease, for Python and locksmith
//! alike; the layout has no fences to protect against that.
//!
//! Rows written by hand are read leniently, never with a panic:
//!
//! - `locked_until` NULL: never expires, as in Django. Text that cannot be read as a time (or
//!   a number, or a blob): held and never expiring — shown so, and never taken over, swept
//!   or purged; only `clear`/`reset_all` remove it, and `set_locks` renewing it writes NULL
//!   (never expires, which is how it was read). A time far in the past is expired (years
//!   before 1970 included); one far in the future is held until then.
//! - `created_at` unreadable: the lock reads as granted at the Unix epoch (`acquired_at`
//!   1970-01-01, `held_for` decades), which marks it as unknown rather than inventing a
//!   recent time. Such a row is never locksmith's (its side row holds a readable time).
//! - `locked_by` NULL or empty: no owner; `lock_process` NULL, 0, negative, too large or not
//!   a number: no pid.
//!
//! Locksmith writes only times between 1970 and 9999 (what Python's `datetime` reads back);
//! a lease that would end later is refused.
//!
//! # Garbage
//!
//! Every eighth grant also removes, in its transaction, up to 64 Django rows whose
//! `locked_until` passed more than `?retain=` ago (default 1 h; Python peers remove every
//! expired row at each of their calls anyway), up to 64 side rows whose Django row is gone or
//! no longer matches, and up to 64 lapsed reservations. Django's table has no index on
//! `locked_until` (locksmith adds none to Django's tables), so that sweep reads the table,
//! which django-lockmgr keeps small.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};

use super::super::lockmgr as spec;
use super::super::rows::{self, Reservation, Row, SWEEP_LIMIT, Table, micros};
use super::super::{
    Capabilities, Claim, ExtendMode, Extended, Grant, GrantAll, Released, Store, WakeHub, Wakeups,
};
use super::{
    BUSY_LIMIT, BUSY_TIMEOUT, Clock, Layout, POLL_CAP, SWEEP_EVERY, SqlError, SqliteStore,
    StoreOptions, Worker, jitter, resolve,
};
use crate::error::{Error, Result};
use crate::info::LockInfo;
use crate::lease::Token;
use crate::name::{LockName, Namespace};
use crate::options::{Cursor, Expired, ListQuery, Page, SetOutcome, SetPolicy};
use crate::url::StoreUrl;

/// locksmith's reservations of the next grant (cross-process fairness).
const RESERVATION_TABLE: &str = "locksmith_lockmgr_reservation";

/// locksmith's tables in the Django database; Django's own are never created here.
const SIDE_SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS "locksmith_lockmgr_owner" (
    "name" varchar(100) NOT NULL PRIMARY KEY,
    "created_at" datetime NOT NULL,
    "locked_by" varchar(100) NULL,
    "lock_process" integer NULL,
    "token" varchar(128) NULL,
    "host" text NOT NULL,
    "min_hold" bigint NULL
);
CREATE TABLE IF NOT EXISTS "locksmith_lockmgr_reservation" (
    "name" varchar(100) NOT NULL PRIMARY KEY,
    "token" varchar(128) NOT NULL,
    "reserved_until" bigint NOT NULL
);
"#;

/// Django's columns, which must all be there.
const COLUMNS: [&str; 6] = [
    "name",
    "locked_by",
    "lock_process",
    "locked_until",
    "created_at",
    "updated_at",
];

/// Whether the side row `s` belongs to the Django row `l` (see the module docs).
const MATCHES: &str = "(s.created_at = l.created_at OR s.created_at = l.created_at || '.000000')
     AND s.locked_by IS l.locked_by AND s.lock_process IS l.lock_process";

/// A Django row with its side row, if any: name, then the columns [`stored_row`] reads.
fn select_rows() -> String {
    format!(
        "SELECT l.name, l.locked_by, l.lock_process, l.created_at, l.locked_until,
                coalesce(s.name IS NOT NULL AND {MATCHES}, 0), s.token, s.host, s.min_hold
         FROM lockmgr_lock l LEFT JOIN locksmith_lockmgr_owner s ON s.name = l.name"
    )
}

/// Microseconds since the epoch of 10000-01-01: locksmith writes times before it only.
const END_OF_9999: i64 = 253_402_300_800 * 1_000_000;

/// Microseconds in 400 Gregorian years (146 097 days), the calendar's cycle.
const CYCLE_400Y: i64 = 146_097 * 86_400 * 1_000_000;

/// `us` (µs since the Unix epoch) as Django writes a datetime into SQLite.
fn text(us: i64) -> Result<String, Error> {
    if !(0..END_OF_9999).contains(&us) {
        return Err(Error::invalid_option(
            "ttl",
            "the lease would end after the year 9999, which Django's datetime cannot hold — give a shorter TTL",
        ));
    }
    let at = UNIX_EPOCH + Duration::from_micros(u64::try_from(us).unwrap_or(0));
    Ok(spec::sqlite_text(at))
}

/// Reads a time as Django (or a hand) wrote it, in µs since the Unix epoch; years before
/// 1970 too (far in the past is expired, never unreadable). `None`: unreadable.
fn parse_text(text: &str) -> Option<i64> {
    let since = |t: SystemTime| t.duration_since(UNIX_EPOCH).ok().map(micros);
    if let Some(at) = spec::parse_sqlite_text(text) {
        return since(at);
    }
    // The shared parser takes years from 1970 on; move an earlier one forward by whole
    // 400-year cycles (the calendar repeats exactly) and back again.
    let t = text.trim();
    let year = t
        .get(..4)
        .filter(|y| y.bytes().all(|b| b.is_ascii_digit()))?;
    let year: i64 = year.parse().ok()?;
    if year >= 1970 {
        return None;
    }
    let cycles = (1970 - year + 399) / 400;
    let shifted = format!("{:04}{}", year + 400 * cycles, t.get(4..)?);
    let at = since(spec::parse_sqlite_text(&shifted)?)?;
    Some(at - cycles * CYCLE_400Y)
}

/// A datetime column's value: `Ok(None)` NULL, `Ok(Some(us))` a time, `Err(())` unreadable.
fn read_time(v: ValueRef<'_>) -> Result<Option<i64>, ()> {
    match v {
        ValueRef::Null => Ok(None),
        ValueRef::Text(t) => std::str::from_utf8(t)
            .ok()
            .and_then(parse_text)
            .map(Some)
            .ok_or(()),
        _ => Err(()),
    }
}

/// Text as it is shown; non-text values as SQLite would print them.
fn read_text(v: ValueRef<'_>) -> String {
    match v {
        ValueRef::Text(t) | ValueRef::Blob(t) => String::from_utf8_lossy(t).into_owned(),
        ValueRef::Integer(i) => i.to_string(),
        ValueRef::Real(f) => f.to_string(),
        ValueRef::Null => String::new(),
    }
}

/// A Django row and its side row as a [`Row`]; `at` is the column of `locked_by`.
fn stored_row(r: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<Row> {
    let owner = read_text(r.get_ref(at)?);
    let pid = match r.get_ref(at + 1)? {
        ValueRef::Integer(p) => u32::try_from(p).unwrap_or(0),
        _ => 0,
    };
    let acquired_at = read_time(r.get_ref(at + 2)?).ok().flatten().unwrap_or(0);
    // Unreadable: held, never expiring.
    let expires_at = read_time(r.get_ref(at + 3)?).unwrap_or(None);
    let ours: bool = r.get::<_, i64>(at + 4)? != 0;
    let (token, host, min_hold) = if ours {
        let token: Option<String> = r.get(at + 5)?;
        // A side token that does not parse (written by hand) is held by nobody.
        let token = token.map(|t| t.parse().unwrap_or_default());
        let host = read_text(r.get_ref(at + 6)?);
        let min_hold = match r.get_ref(at + 7)? {
            ValueRef::Integer(m) if m > 0 => Some(m),
            _ => None,
        };
        (token, host, min_hold)
    } else {
        (Some(Token::new()), String::new(), None)
    };
    Ok(Row {
        token,
        owner,
        host,
        pid,
        fence: 0,
        acquired_at,
        expires_at,
        min_hold,
    })
}

/// Opens the layout for a `sqlite://…?layout=django-lockmgr` URL (`?layout=` already taken).
pub(super) async fn open(
    url: &mut StoreUrl,
    shown: &str,
    options: &StoreOptions,
) -> Result<Arc<dyn Store>> {
    if !url.namespace.as_str().is_empty() {
        return Err(spec::url_refuses(
            shown,
            "has no namespaces (django-lockmgr keeps one table) — drop ?namespace=, or give each group of services its own database",
        ));
    }
    for (key, instead) in [
        (
            "table",
            "always uses Django's table lockmgr_lock and takes no ?table= — drop it",
        ),
        (
            "prefix",
            "stores names as they are (Django's primary key) and takes no ?prefix= — drop it",
        ),
    ] {
        if url.take(key).is_some() {
            return Err(spec::url_refuses(shown, instead));
        }
    }
    url.finish(", ?retain= and ?layout=")?;
    if url.body.is_empty() {
        return Err(spec::url_refuses(
            shown,
            "needs the path of the Django project's SQLite database — write e.g. sqlite:///srv/app/db.sqlite3?layout=django-lockmgr",
        ));
    }
    let path = resolve(&url.body)?;
    let engine = SqliteStore::open_layout(path, options, Layout::Lockmgr).await?;
    Ok(Arc::new(LockmgrStore { engine }))
}

/// Opens the worker's connection on a Django database: nothing in the file changes but
/// locksmith's own tables, created when missing.
pub(super) fn open_worker(
    path: std::path::PathBuf,
    hub: Arc<WakeHub>,
    clock: Clock,
) -> Result<Worker> {
    let shown = format!("sqlite://{}?layout={}", path.display(), spec::LAYOUT);
    let fail = |e: rusqlite::Error| SqlError::Sql(e).into_error(&path);
    if !path.is_file() {
        return Err(Error::config(format!(
            "store URL {shown:?}: the Django database {} does not exist — give the path of the project's SQLite database (settings.DATABASES[\"default\"][\"NAME\"]); locksmith never creates it",
            path.display()
        )));
    }
    check_header(&path, &shown)?;
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(&path, flags).map_err(fail)?;
    if conn.is_readonly(rusqlite::MAIN_DB).unwrap_or(false) {
        return Err(Error::config(format!(
            "store URL {shown:?}: cannot write the Django database {} (it opened read-only) — locksmith needs write access to it and to its directory, as Django does",
            path.display()
        )));
    }
    conn.busy_timeout(BUSY_TIMEOUT).map_err(fail)?;
    // In WAL, `synchronous = NORMAL` (this connection only; it is not kept in the file)
    // cannot corrupt the database on a power cut, it may only lose the last commits, and
    // it spares every commit its sync: the native store's setting. In the rollback journal
    // it could corrupt the project's database, so FULL stays.
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .map_err(fail)?;
    if mode.eq_ignore_ascii_case("wal") {
        conn.execute_batch("PRAGMA synchronous = NORMAL")
            .map_err(fail)?;
    }
    let mut worker = Worker::new(conn, hub, clock);
    let started = Instant::now();
    let mut pause = Duration::from_millis(1);
    loop {
        match init(&mut worker.conn, &shown) {
            Ok(()) => return Ok(worker),
            Err(e) if e.is_busy() && started.elapsed() < BUSY_LIMIT => {
                std::thread::sleep(jitter(pause));
                pause = (pause * 2).min(POLL_CAP);
            }
            Err(e) => return Err(e.into_error(&path)),
        }
    }
}

/// Refuses a file that is not SQLite, with words for a Django database.
fn check_header(path: &std::path::Path, shown: &str) -> Result<()> {
    use std::io::Read;
    let mut header = Vec::with_capacity(16);
    let read = std::fs::File::open(path).and_then(|f| f.take(16).read_to_end(&mut header));
    if let Err(e) = read {
        return Err(Error::config(format!(
            "store URL {shown:?}: cannot read the Django database {}: {e}",
            path.display()
        )));
    }
    if header.is_empty() || header == b"SQLite format 3\0" {
        return Ok(());
    }
    Err(Error::config(format!(
        "store URL {shown:?}: {} is not a SQLite database — give the path of the Django project's SQLite database",
        path.display()
    )))
}

/// Checks Django's table and creates locksmith's, in one IMMEDIATE transaction.
fn init(conn: &mut Connection, shown: &str) -> Result<(), SqlError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut have: Vec<String> = Vec::new();
    let mut until_required = false;
    {
        let mut stmt = tx.prepare("SELECT name, \"notnull\" FROM pragma_table_info(?1)")?;
        let columns = stmt.query_map([spec::TABLE], |r| {
            Ok((r.get::<_, String>(0)?.to_lowercase(), r.get::<_, i64>(1)?))
        })?;
        for column in columns {
            let (name, not_null) = column?;
            until_required |= name == "locked_until" && not_null != 0;
            have.push(name);
        }
    }
    if have.is_empty() {
        return Err(spec::table_missing(shown).into());
    }
    let missing: Vec<&str> = COLUMNS
        .iter()
        .copied()
        .filter(|c| !have.iter().any(|h| h == c))
        .collect();
    if !missing.is_empty() {
        return Err(Error::config(format!(
            "store URL {shown:?}: Django's table {} lacks the column(s) {} — run `python manage.py migrate lockmgr` in the Django project (django-lockmgr 1.x/2.x)",
            spec::TABLE,
            missing.join(", ")
        ))
        .into());
    }
    if until_required {
        return Err(Error::config(format!(
            "store URL {shown:?}: Django's table {} has a NOT NULL locked_until, as django-lockmgr's first migration made it — run `python manage.py migrate lockmgr` to apply 0002 (locks that never expire need it)",
            spec::TABLE
        ))
        .into());
    }
    tx.execute_batch(SIDE_SCHEMA)?;
    tx.commit()?;
    Ok(())
}

/// Refuses a namespace: the layout has one table.
fn check_ns(ns: &Namespace) -> Result<()> {
    spec::check_namespace(ns)
}

/// Django's rows (and locksmith's side rows) inside one atomic step.
struct DjangoTable<'c> {
    conn: &'c Connection,
    now: i64,
    /// Set by [`Table::next_fence`], which `rows` calls right before the `put` of a grant:
    /// that `put` writes a new Django row, every other one updates the row it read.
    granting: bool,
}

impl<'c> DjangoTable<'c> {
    fn new(conn: &'c Connection, now: i64) -> DjangoTable<'c> {
        DjangoTable {
            conn,
            now,
            granting: false,
        }
    }

    /// Deletes Django's row of `name` and its side row; whether Django's was there.
    fn remove(&self, name: &str) -> Result<bool, SqlError> {
        let n = self
            .conn
            .prepare_cached("DELETE FROM lockmgr_lock WHERE name = ?1")?
            .execute([name])?;
        self.conn
            .prepare_cached("DELETE FROM locksmith_lockmgr_owner WHERE name = ?1")?
            .execute([name])?;
        Ok(n > 0)
    }

    /// A grant: Django's row as Django writes it, and the side row that makes it ours.
    fn insert(&self, name: &str, row: &Row) -> Result<(), SqlError> {
        if name.len() > spec::MAX_NAME_CHARS {
            return Err(Error::InvalidName {
                name: name.chars().take(64).collect::<String>() + "…",
                reason: format!(
                    "it is {} bytes, but django-lockmgr's name column is varchar({}) — use a shorter name",
                    name.len(),
                    spec::MAX_NAME_CHARS
                ),
            }
            .into());
        }
        let created = text(row.acquired_at)?;
        let until = row.expires_at.map(text).transpose()?;
        let locked_by = Some(spec::locked_by(&row.owner)).filter(|o| !o.is_empty());
        let pid = Some(i64::from(row.pid)).filter(|p| *p != 0);
        self.conn
            .prepare_cached(
                "INSERT OR REPLACE INTO lockmgr_lock
                 (name, locked_by, lock_process, locked_until, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
            )?
            .execute(params![name, locked_by, pid, until, created])?;
        self.conn
            .prepare_cached(
                "INSERT OR REPLACE INTO locksmith_lockmgr_owner
                 (name, created_at, locked_by, lock_process, token, host, min_hold)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![
                name,
                created,
                locked_by,
                pid,
                row.token.as_ref().map(Token::expose),
                row.host,
                row.min_hold
            ])?;
        Ok(())
    }

    /// A lease change of the row read before (extend, release under `min_hold`, renewal by
    /// `set_locks`): `locked_until` and `updated_at` in Django's row, the token in the side
    /// row if the row is ours.
    fn update(&self, name: &str, row: &Row) -> Result<(), SqlError> {
        let until = row.expires_at.map(text).transpose()?;
        self.conn
            .prepare_cached(
                "UPDATE lockmgr_lock SET locked_until = ?2, updated_at = ?3 WHERE name = ?1",
            )?
            .execute(params![name, until, text(self.now)?])?;
        let sql = format!(
            "UPDATE locksmith_lockmgr_owner AS s SET token = ?2 WHERE s.name = ?1
             AND EXISTS (SELECT 1 FROM lockmgr_lock l WHERE l.name = s.name AND {MATCHES})"
        );
        self.conn
            .prepare_cached(&sql)?
            .execute(params![name, row.token.as_ref().map(Token::expose)])?;
        Ok(())
    }

    /// The names of the rows whose readable `locked_until` is at or before `cutoff`, at
    /// most `limit` of them (`None`: all).
    fn ended_before(&self, cutoff: i64, limit: Option<i64>) -> Result<Vec<String>, SqlError> {
        // Text order is time order for Django's format; the text filter only narrows the
        // scan (unreadable and odd spellings are decided by the parser).
        let mut stmt = self.conn.prepare_cached(
            "SELECT name, locked_until FROM lockmgr_lock
             WHERE typeof(locked_until) = 'text'
               AND locked_until < ?1
               AND locked_until GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]*'",
        )?;
        // The cutoff's text, one second on, so rows spelled differently at the boundary are
        // still candidates.
        let bound = text(cutoff.saturating_add(1_000_000).clamp(0, END_OF_9999 - 1))?;
        let mut rows = stmt.query([bound])?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            if limit.is_some_and(|l| out.len() as i64 >= l) {
                break;
            }
            let name = read_text(r.get_ref(0)?);
            if let Ok(Some(until)) = read_time(r.get_ref(1)?)
                && until <= cutoff
            {
                out.push(name);
            }
        }
        Ok(out)
    }

    /// The bounded garbage sweep of a grant (see the module docs).
    fn sweep(&self, retain: i64) -> Result<(), SqlError> {
        let cutoff = self.now.saturating_sub(retain);
        for name in self.ended_before(cutoff, Some(SWEEP_LIMIT))? {
            self.remove(&name)?;
        }
        let sql = format!(
            "DELETE FROM locksmith_lockmgr_owner WHERE name IN (
               SELECT s.name FROM locksmith_lockmgr_owner s
               LEFT JOIN lockmgr_lock l ON l.name = s.name
               WHERE NOT coalesce(l.name IS NOT NULL AND {MATCHES}, 0) LIMIT {SWEEP_LIMIT})"
        );
        self.conn.prepare_cached(&sql)?.execute([])?;
        self.conn
            .prepare_cached(&format!(
                "DELETE FROM {RESERVATION_TABLE} WHERE name IN (
                   SELECT name FROM {RESERVATION_TABLE} WHERE reserved_until <= ?1
                   LIMIT {SWEEP_LIMIT})"
            ))?
            .execute([self.now])?;
        Ok(())
    }
}

impl Table for DjangoTable<'_> {
    type Error = SqlError;

    fn now(&self) -> i64 {
        self.now
    }

    fn epoch(&self) -> SystemTime {
        UNIX_EPOCH
    }

    fn get(&mut self, name: &str) -> Result<Option<Row>, SqlError> {
        let sql = format!("{} WHERE l.name = ?1", select_rows());
        Ok(self
            .conn
            .prepare_cached(&sql)?
            .query_row([name], |r| stored_row(r, 1))
            .optional()?)
    }

    fn put(&mut self, name: &str, row: &Row) -> Result<(), SqlError> {
        if std::mem::take(&mut self.granting) {
            self.insert(name, row)
        } else {
            self.update(name, row)
        }
    }

    fn delete(&mut self, name: &str) -> Result<bool, SqlError> {
        self.remove(name)
    }

    /// The layout mints no fences (Python holders carry none): always 0.
    fn next_fence(&mut self) -> Result<u64, SqlError> {
        self.granting = true;
        Ok(0)
    }

    fn reservation(&mut self, name: &str) -> Result<Option<Reservation>, SqlError> {
        let found: Option<(String, i64)> = self
            .conn
            .prepare_cached(&format!(
                "SELECT token, reserved_until FROM {RESERVATION_TABLE}
                 WHERE name = ?1 AND reserved_until > ?2"
            ))?
            .query_row(params![name, self.now], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        Ok(found.and_then(|(token, until)| {
            Some(Reservation {
                token: token.parse().ok()?,
                until,
            })
        }))
    }

    fn reserve(&mut self, name: &str, reservation: &Reservation) -> Result<(), SqlError> {
        self.conn
            .prepare_cached(&format!(
                "INSERT OR REPLACE INTO {RESERVATION_TABLE} (name, token, reserved_until)
                 VALUES (?1, ?2, ?3)"
            ))?
            .execute(params![name, reservation.token.expose(), reservation.until])?;
        Ok(())
    }

    fn unreserve(&mut self, name: &str) -> Result<(), SqlError> {
        self.conn
            .prepare_cached(&format!("DELETE FROM {RESERVATION_TABLE} WHERE name = ?1"))?
            .execute([name])?;
        Ok(())
    }
}

/// The layout's operations on the worker thread.
impl Worker {
    fn lm_read<T>(
        &mut self,
        op: impl FnOnce(&mut DjangoTable<'_>) -> Result<T, SqlError>,
    ) -> Result<T, SqlError> {
        let now = self.clock.now();
        op(&mut DjangoTable::new(&self.conn, now))
    }

    /// One `BEGIN IMMEDIATE` transaction; `grant`: a write that may create rows, which also
    /// sweeps garbage now and then.
    fn lm_write<T>(
        &mut self,
        grant: bool,
        op: impl FnOnce(&mut DjangoTable<'_>) -> Result<T, SqlError>,
    ) -> Result<T, SqlError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        // The clock is read once the write lock is held, so grants are ordered in time.
        let now = self.clock.now();
        let mut table = DjangoTable::new(&tx, now);
        let out = op(&mut table)?;
        let sweep = grant && {
            self.since_sweep = (self.since_sweep + 1) % SWEEP_EVERY;
            self.since_sweep == 1
        };
        if sweep {
            table.sweep(self.clock.retain.load(std::sync::atomic::Ordering::SeqCst))?;
        }
        tx.commit()?;
        Ok(out)
    }

    fn lm_try_acquire(&mut self, claim: &Claim) -> Result<Grant, SqlError> {
        // As the native store: a first try writes at once unless another connection is
        // writing (then it reads first, as a poller); a poller reads first and writes only
        // when the lock looks free or it should reserve it.
        if claim.waited.is_zero()
            && let Some(answer) =
                self.without_waiting(|w| w.lm_write(true, |t| rows::try_acquire(t, claim)))
        {
            return answer;
        }
        let name = claim.name.as_str();
        let (row, reserved, now) = self.lm_read(|t| {
            let row = t.get(name)?.filter(|r| r.live(t.now));
            let reserved = t.reservation(name)?;
            Ok((row, reserved, t.now))
        })?;
        match (row, reserved) {
            (Some(row), reserved) => {
                if row.token.as_ref() == Some(&claim.token) {
                    return Ok(Grant::AlreadyHeld);
                }
                if !rows::wants_reservation(claim, reserved.as_ref(), now) {
                    return Ok(Grant::Held(row.info(name, now, UNIX_EPOCH)));
                }
            }
            (None, Some(r)) if r.token != claim.token => {
                return Ok(Grant::Held(rows::reserved_info(name, &r, now)));
            }
            _ => {}
        }
        self.lm_write(true, |t| rows::try_acquire(t, claim))
    }

    fn lm_release(
        &mut self,
        ns: &Namespace,
        name: &LockName,
        token: &Token,
        min_hold: Option<Duration>,
    ) -> Result<Released, SqlError> {
        let outcome = self.lm_write(false, |t| rows::release(t, name, token, min_hold))?;
        if outcome != Released::NotHeld {
            self.hub.notify(ns, name);
        }
        Ok(outcome)
    }

    /// A release nobody waits for (from `Drop`, or for a requester that went away): a busy
    /// file is retried here for a second at most, then the lease expires on its own.
    fn lm_release_unattended(
        &mut self,
        ns: &Namespace,
        name: &LockName,
        token: &Token,
        min_hold: Option<Duration>,
    ) {
        const PATIENCE: Duration = Duration::from_secs(1);
        let started = Instant::now();
        loop {
            match self.lm_release(ns, name, token, min_hold) {
                Err(e) if e.is_busy() && started.elapsed() < PATIENCE => {
                    std::thread::sleep(jitter(POLL_CAP));
                }
                Err(e) => {
                    tracing::warn!(lock = %name, error = ?e, "SQLite release (django-lockmgr layout) failed; the lease will expire");
                    return;
                }
                Ok(_) => return,
            }
        }
    }

    fn lm_list(&mut self, query: &ListQuery) -> Result<Page, SqlError> {
        let now = self.clock.now();
        let after_cursor = query
            .after
            .as_ref()
            .is_some_and(|c| c.as_str() >= query.prefix.as_str());
        let start = if after_cursor {
            "l.name > ?2"
        } else {
            "l.name >= ?1"
        };
        let sql = format!(
            "{} WHERE {start} AND substr(l.name, 1, length(?1)) = ?1
               AND (?2 IS NULL OR l.name > ?2) ORDER BY l.name",
            select_rows()
        );
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let mut found = stmt.query(params![
            query.prefix,
            query.after.as_ref().map(Cursor::as_str)
        ])?;
        let mut items = Vec::new();
        // Expiry is decided on the parsed times, so the filter runs here; Django's table is
        // small (django-lockmgr removes expired rows at every call).
        while let Some(r) = found.next()? {
            let row = stored_row(r, 1)?;
            let keep = match query.expired {
                Expired::Exclude => row.live(now),
                Expired::Include => true,
                _ => !row.live(now),
            };
            if keep {
                let name = read_text(r.get_ref(0)?);
                items.push(row.info(&name, now, UNIX_EPOCH));
                if items.len() > query.limit {
                    break;
                }
            }
        }
        let next = if items.len() > query.limit {
            items.truncate(query.limit);
            items.last().map(|i| Cursor::new(i.name.clone()))
        } else {
            None
        };
        Ok(Page::new(items, next))
    }
}

/// The django-lockmgr layout of the SQLite store: a Django project's `lockmgr_lock` table
/// (see the [module docs](self)). Built by `Locksmith::connect` from
/// `sqlite:///path/to/db.sqlite3?layout=django-lockmgr`.
pub struct LockmgrStore {
    engine: Arc<SqliteStore>,
}

impl std::fmt::Debug for LockmgrStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockmgrStore")
            .field("path", &self.engine.path)
            .finish_non_exhaustive()
    }
}

impl LockmgrStore {
    /// The Django database this store uses.
    pub fn path(&self) -> &std::path::Path {
        self.engine.path()
    }
}

#[async_trait]
impl Store for LockmgrStore {
    fn kind(&self) -> &'static str {
        "sqlite"
    }

    fn identity(&self) -> String {
        format!(
            "sqlite://{}?layout={}",
            self.engine.path.display(),
            spec::LAYOUT
        )
    }

    fn capabilities(&self) -> Capabilities {
        spec::capabilities()
    }

    async fn try_acquire(&self, ns: &Namespace, claim: &Claim) -> Result<Grant> {
        check_ns(ns)?;
        let mut claim = claim.clone();
        let trying = self.engine.tries().start(&claim.token);
        claim.waited = claim.waited.max(trying);
        let (ns2, name, token) = (ns.clone(), claim.name.clone(), claim.token.clone());
        let mine = claim.token.clone();
        let answer = self
            .engine
            .call(
                move |w| w.lm_try_acquire(&claim),
                move |w, grant| {
                    if let Grant::Acquired { .. } = grant {
                        w.lm_release_unattended(&ns2, &name, &token, None);
                    }
                },
            )
            .await;
        self.engine
            .tries()
            .answered(&mine, matches!(answer, Ok(Grant::Held(_))));
        answer
    }

    async fn try_acquire_all(&self, ns: &Namespace, claims: &[Claim]) -> Result<GrantAll> {
        check_ns(ns)?;
        let Some(first) = claims.first() else {
            return Ok(GrantAll::Acquired(Vec::new()));
        };
        let first = first.token.clone();
        let trying = self.engine.tries().start(&first);
        let claims: Arc<[Claim]> = claims
            .iter()
            .cloned()
            .map(|mut c| {
                c.waited = c.waited.max(trying);
                c
            })
            .collect();
        let (ns2, claims2) = (ns.clone(), claims.clone());
        let answer = self
            .engine
            .call(
                move |w| w.lm_write(true, |t| rows::try_acquire_all(t, &claims)),
                move |w, grant| {
                    if let GrantAll::Acquired(_) = grant {
                        for c in claims2.iter() {
                            w.lm_release_unattended(&ns2, &c.name, &c.token, None);
                        }
                    }
                },
            )
            .await;
        self.engine
            .tries()
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
        check_ns(ns)?;
        let (ns, name, token) = (ns.clone(), name.clone(), token.clone());
        self.engine
            .run(move |w| w.lm_release(&ns, &name, &token, min_hold))
            .await
    }

    fn release_detached(
        &self,
        ns: &Namespace,
        name: &LockName,
        token: &Token,
        min_hold: Option<Duration>,
    ) {
        if check_ns(ns).is_err() {
            return; // nothing in another namespace was ever granted here
        }
        let (ns, name, token) = (ns.clone(), name.clone(), token.clone());
        let sent = self.engine.send(Box::new(move |w| {
            w.lm_release_unattended(&ns, &name, &token, min_hold)
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
        check_ns(ns)?;
        let (ns, name, token) = (ns.clone(), name.clone(), token.clone());
        self.engine
            .run(move |w| {
                let (answer, shortened) =
                    w.lm_write(false, |t| rows::extend(t, &name, &token, mode))?;
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
        check_ns(ns)?;
        let (name, token) = (name.clone(), token.clone());
        self.engine
            .run(move |w| w.lm_read(|t| rows::held_by(t, &name, &token)))
            .await
    }

    async fn inspect(&self, ns: &Namespace, name: &LockName) -> Result<Option<LockInfo>> {
        check_ns(ns)?;
        let name = name.clone();
        self.engine
            .run(move |w| w.lm_read(|t| rows::inspect(t, &name)))
            .await
    }

    async fn list(&self, ns: &Namespace, query: &ListQuery) -> Result<Page> {
        check_ns(ns)?;
        let query = query.clone();
        self.engine.run(move |w| w.lm_list(&query)).await
    }

    async fn force_release(&self, ns: &Namespace, names: &[LockName]) -> Result<Vec<bool>> {
        check_ns(ns)?;
        let (ns, names) = (ns.clone(), names.to_vec());
        self.engine
            .run(move |w| {
                let existed = w.lm_write(false, |t| rows::force_release(t, &names))?;
                for name in &names {
                    w.hub.notify(&ns, name);
                }
                Ok(existed)
            })
            .await
    }

    async fn reset_all(&self, ns: &Namespace) -> Result<u64> {
        check_ns(ns)?;
        let ns = ns.clone();
        self.engine
            .run(move |w| {
                let n = w.lm_write(false, |t| {
                    let n = t
                        .conn
                        .prepare_cached("DELETE FROM lockmgr_lock")?
                        .execute([])?;
                    t.conn
                        .prepare_cached("DELETE FROM locksmith_lockmgr_owner")?
                        .execute([])?;
                    Ok(n)
                })?;
                w.hub.notify_namespace(&ns);
                Ok(n as u64)
            })
            .await
    }

    async fn purge_expired(&self, ns: &Namespace) -> Result<u64> {
        check_ns(ns)?;
        self.engine
            .run(move |w| {
                w.lm_write(false, |t| {
                    let names = t.ended_before(t.now, None)?;
                    for name in &names {
                        t.remove(name)?;
                    }
                    Ok(names.len() as u64)
                })
            })
            .await
    }

    async fn set_locks(
        &self,
        ns: &Namespace,
        claims: &[Claim],
        policy: &SetPolicy,
    ) -> Result<SetOutcome> {
        check_ns(ns)?;
        let (claims, policy) = (claims.to_vec(), policy.clone());
        self.engine
            .run(move |w| w.lm_write(true, |t| rows::set_locks(t, &claims, &policy)))
            .await
    }

    async fn subscribe(&self, ns: &Namespace, name: &LockName) -> Result<Wakeups> {
        check_ns(ns)?;
        // In-process wake-ups come from the worker; other processes (Python's included)
        // are polled every `POLL_INTERVAL`.
        Ok(self.engine.hub.subscribe(ns, name))
    }

    /// Waits, up to 5 s, until the worker has run every job queued before this call.
    async fn close(&self) -> Result<()> {
        Store::close(&*self.engine).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_before_1970_are_far_past_not_unreadable() {
        assert_eq!(parse_text("1970-01-01 00:00:00"), Some(0));
        assert_eq!(parse_text("1969-12-31 23:59:59"), Some(-1_000_000));
        let min = parse_text("0001-01-01 00:00:00").expect("datetime.min");
        // 1969 years of 365.2425 days, to the day.
        assert_eq!(min, -62_135_596_800 * 1_000_000);
        assert_eq!(
            parse_text("1900-02-29 00:00:00"),
            None,
            "1900 is no leap year"
        );
        assert_eq!(parse_text("soon"), None);
        assert_eq!(parse_text("19x9-01-01 00:00:00"), None);
    }

    #[test]
    fn writes_only_what_python_reads_back() {
        assert_eq!(text(0).unwrap(), "1970-01-01 00:00:00.000000");
        assert_eq!(text(END_OF_9999 - 1).unwrap(), "9999-12-31 23:59:59.999999");
        assert!(text(END_OF_9999).is_err());
        assert!(text(-1).is_err());
        let now = micros(SystemTime::now().duration_since(UNIX_EPOCH).unwrap());
        assert_eq!(parse_text(&text(now).unwrap()), Some(now));
    }
}
