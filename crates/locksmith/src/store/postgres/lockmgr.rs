//! The django-lockmgr layout of the PostgreSQL store (`postgres://…?layout=django-lockmgr`):
//! locks kept in the `lockmgr_lock` table of a Django project's database, shared with its
//! Python code (django-lockmgr 2.0.0). The layout's rules are in
//! [`store::lockmgr`](super::super::lockmgr); this module says how PostgreSQL keeps them.
//!
//! # Types
//!
//! Django's columns are `timestamp with time zone`. locksmith computes in microseconds since
//! the Unix epoch (as the native store does) and converts at the edge:
//! `'epoch'::timestamptz + µs * interval '1 microsecond'` when writing (exact: the column
//! holds microseconds), `extract(epoch …) * 1000000` when reading, clamped to ±9·10¹⁸ so a
//! hand-written `'infinity'` or year-200000 row reads as "held for ages" (and `'-infinity'`
//! as long expired) instead of failing. `locked_by` holds the owner label cut to 100
//! characters ([`locked_by`](super::super::lockmgr::locked_by)), `lock_process` the pid
//! (`integer`); an empty owner or pid 0 is written as NULL.
//!
//! # Clock
//!
//! The store's clock is the server's `clock_timestamp()` (never `now()`, which is frozen
//! for the whole transaction), read once per transaction and used for every decision and
//! every time written in it — so a grant writes `created_at = updated_at` and
//! `locked_until = created_at + ttl` exactly. The test hook [`step_clock`](super::step_clock)
//! works here as on the native layout.
//!
//! # Transaction shape
//!
//! Every write is one `READ COMMITTED` transaction on a pooled connection of its own, in
//! plain SQL (no functions are created in the Django database):
//!
//! 1. grants (`try_acquire`, `acquire_all`, `set_locks`) first insert a placeholder row for
//!    each name that has none (`INSERT … ON CONFLICT DO NOTHING RETURNING name`). The
//!    placeholder is never committed — it is overwritten by the grant or deleted before the
//!    commit — but it holds the name: a Python peer's `INSERT` of the same name waits for
//!    the commit;
//! 2. `SELECT name … WHERE name = ANY($1) ORDER BY name COLLATE "C" FOR UPDATE` locks the
//!    rows in byte order (a name whose row a Python peer deleted meanwhile goes back to 1);
//! 3. a fresh statement reads the locked rows, their side rows and the clock;
//! 4. the shared row logic ([`rows`](super::super::rows)) decides; its writes become
//!    `UPDATE`s of Django's row (only `locked_until` and `updated_at` when renewing a Python
//!    peer's lock, as django-lockmgr's own `renew_lock` does), upserts of the side row, and
//!    `DELETE`s; unused placeholders are deleted; `COMMIT`.
//!
//! Reads (`inspect`, `held_by`, `list`) are single statements. `reset_all` and
//! `purge_expired` are single statements too. Deadlocks and serialization failures are
//! retried; other errors are mapped as on the native layout (I/O and a server going away
//! are retryable, with the outcome unknown — the core compensates).
//!
//! # The side table
//!
//! [`SIDE_TABLE`] (created when missing, under a transaction-scoped advisory lock) holds per
//! name: the copies of `created_at`, `locked_by`, `lock_process` that identify the lock row
//! locksmith wrote, the token (NULL once released under `min_hold`), the host, the
//! `min_hold` (µs), and — beyond the spec's columns — a *reservation* (`reserved_token`,
//! `reserved_until`, µs of the store clock): waiters in other processes poll, so a waiter
//! that has waited long reserves the next grant as on SQLite (see
//! [`rows`](super::super::rows)), which keeps a polling waiter from starving while other
//! processes churn the lock. A reservation lasts two of the reserver's polls
//! (`POLL_INTERVAL`, 25 ms) longer than on SQLite (150 ms after the reserver's last try),
//! since a transaction here takes longer: a reserver that went away holds a free lock back
//! for at most that long. A side row with only a reservation has `created_at` NULL and
//! never matches a lock row; a release that meets a reservation keeps the side row as
//! such (deleting it would hand the next grant to whichever process tries first, the
//! starvation the reservation exists to prevent). Django ignores the table.
//!
//! # Waiting and garbage
//!
//! Python releases notify nobody, so waiters in other processes poll
//! ([`POLL_INTERVAL`](super::super::lockmgr::POLL_INTERVAL)); waiters in this process are
//! woken through one [`WakeHub`] shared by every store of the process on the same
//! database when a write of this process frees a lock. locksmith sends no `NOTIFY` here:
//! a waiter in another locksmith process polls as it would for a Python release. Every 64th
//! grant sweeps, in the background and in a `REPEATABLE READ` transaction (a row changed
//! meanwhile fails the sweep instead of being removed), up to 64 lock rows that expired more
//! than `?retain=` ago (default 1 h; Python peers remove expired rows on every call anyway)
//! and up to 64 side rows that match no lock row and hold no live reservation.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::atomic::{AtomicI64, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, UNIX_EPOCH};

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::IsolationLevel;
use tokio_postgres::Row as PgRow;
use tokio_postgres::types::Type;

use super::super::lockmgr::{
    self as spec, LAYOUT, MAX_NAME_CHARS, SIDE_TABLE, TABLE, check_namespace, url_refuses,
};
use super::super::rows::{self, Reservation, Row, Table, micros};
use super::super::{
    Capabilities, Claim, ExtendMode, Extended, Grant, GrantAll, Released, Store, WakeHub, Wakeups,
};
use super::{
    BACKOFF_MIN, CONFLICT_RETRIES, Conns, KIND, SWEEP_EVERY, Settings, clock_offset, is_conflict,
    jitter, make_pool, pg_error,
};
use crate::error::{Error, Result};
use crate::info::LockInfo;
use crate::lease::Token;
use crate::name::{LockName, Namespace};
use crate::options::{Cursor, Expired, ListQuery, Page, SetOutcome, SetPolicy};
use crate::url::StoreUrl;

/// Reads `?layout=`: `true` for this layout, after refusing the native layout's options it
/// has no use for. Unknown layouts are refused, naming the valid ones.
pub(super) fn check_url(url: &mut StoreUrl) -> Result<bool> {
    let shown = url.redacted().to_string();
    match url.take("layout").as_deref() {
        None | Some("native") => Ok(false),
        Some(LAYOUT) => {
            for key in ["table", "schema"] {
                if url.take(key).is_some() {
                    return Err(url_refuses(
                        &shown,
                        &format!(
                            "keeps its locks in Django's own table {TABLE} and takes no ?{key}= — drop it, and point the URL at the Django project's database (the table is found on its search_path)"
                        ),
                    ));
                }
            }
            if !url.namespace.as_str().is_empty() {
                return Err(url_refuses(
                    &shown,
                    "has no namespaces (django-lockmgr keeps one table) — drop ?namespace=, or give each group of services its own database",
                ));
            }
            Ok(true)
        }
        Some(other) => Err(Error::config(format!(
            "store URL {shown:?}: unknown layout={other:?} — write layout={LAYOUT} to share locks with django-lockmgr, or leave it out (the native layout)"
        ))),
    }
}

/// A timestamptz expression for a parameter or expression holding µs since the epoch.
fn ts(us: &str) -> String {
    format!("(timestamptz 'epoch' + ({us})::int8 * interval '1 microsecond')")
}

/// µs since the epoch of a timestamptz column, NULL kept, clamped so infinities read.
fn us(col: &str) -> String {
    format!(
        "CASE WHEN {col} IS NULL THEN NULL ELSE floor(LEAST(GREATEST(extract(epoch FROM {col}) * 1000000, -9000000000000000000), 9000000000000000000))::int8 END"
    )
}

/// Whether the side row `s` names the lock row `l` (NULL-safe), as a non-NULL boolean.
const OURS: &str = "COALESCE(s.created_at = l.created_at
    AND s.locked_by IS NOT DISTINCT FROM l.locked_by
    AND s.lock_process IS NOT DISTINCT FROM l.lock_process, false)";

/// The statements of the layout.
struct Sql {
    placeholders: String,
    lock: String,
    load: String,
    read: String,
    list: String,
    write_ours: String,
    write_side: String,
    write_renew: String,
    delete: String,
    delete_placeholders: String,
    reserve: String,
    unreserve: String,
    reset_all: String,
    purge_expired: String,
    sweep: String,
}

/// The columns of one row, then the clock: name, locked_by, lock_process, locked_until µs,
/// created_at µs, ours, token, host, min_hold.
fn row_columns() -> String {
    format!(
        "l.name::text, l.locked_by::text, l.lock_process, {until}, {created}, {OURS}, s.token, s.host, s.min_hold",
        until = us("l.locked_until"),
        created = us("l.created_at"),
    )
}

impl Sql {
    fn new() -> Sql {
        let cols = row_columns();
        let now3 = super::sql::now_expr("$3");
        let now1 = super::sql::now_expr("$1");
        Sql {
            placeholders: format!(
                "INSERT INTO {TABLE} (name, locked_by, lock_process, locked_until, created_at, updated_at)
                 SELECT n, NULL, NULL, clock_timestamp(), clock_timestamp(), clock_timestamp()
                 FROM unnest($1::text[]) n ON CONFLICT DO NOTHING RETURNING name::text"
            ),
            lock: format!(
                "SELECT name::text FROM {TABLE} WHERE name = ANY($1::text[])
                 ORDER BY name COLLATE \"C\" FOR UPDATE"
            ),
            // Every requested name (the lock row only where locked), its side row, the clock.
            load: format!(
                "SELECT n.n, l.name IS NOT NULL, {cols}, s.reserved_token, s.reserved_until, c.now
                 FROM unnest($1::text[]) n(n)
                 CROSS JOIN (SELECT {now3} AS now) c
                 LEFT JOIN {TABLE} l ON l.name = n.n AND l.name = ANY($2::text[])
                 LEFT JOIN {SIDE_TABLE} s ON s.name = n.n"
            ),
            read: format!(
                "SELECT {cols}, c.now
                 FROM {TABLE} l CROSS JOIN (SELECT {now} AS now) c
                 LEFT JOIN {SIDE_TABLE} s ON s.name = l.name
                 WHERE l.name = $1",
                now = super::sql::now_expr("$2")
            ),
            list: format!(
                "SELECT {cols}, c.now
                 FROM {TABLE} l CROSS JOIN (SELECT {now} AS now) c
                 LEFT JOIN {SIDE_TABLE} s ON s.name = l.name
                 WHERE l.name COLLATE \"C\" >= $1 AND starts_with(l.name, $1)
                   AND ($2::text IS NULL OR l.name COLLATE \"C\" > $2)
                   AND CASE $3::int4
                         WHEN 0 THEN l.locked_until IS NULL OR l.locked_until > {cnow}
                         WHEN 1 THEN true
                         ELSE l.locked_until IS NOT NULL AND l.locked_until <= {cnow}
                       END
                 ORDER BY l.name COLLATE \"C\" LIMIT $4",
                now = super::sql::now_expr("$5"),
                cnow = ts("c.now"),
            ),
            write_ours: format!(
                "UPDATE {TABLE} SET locked_by = $2, lock_process = $3, locked_until = {until},
                    created_at = {created}, updated_at = {updated}
                 WHERE name = $1",
                until = ts("$4"),
                created = ts("$5"),
                updated = ts("$6"),
            ),
            write_side: format!(
                "INSERT INTO {SIDE_TABLE} AS s (name, created_at, locked_by, lock_process, token, host, min_hold)
                 VALUES ($1, {created}, $2, $3, $4, $5, $6)
                 ON CONFLICT (name) DO UPDATE SET created_at = EXCLUDED.created_at,
                    locked_by = EXCLUDED.locked_by, lock_process = EXCLUDED.lock_process,
                    token = EXCLUDED.token, host = EXCLUDED.host, min_hold = EXCLUDED.min_hold",
                created = ts("$7"),
            ),
            write_renew: format!(
                "UPDATE {TABLE} SET locked_until = {until}, updated_at = {updated} WHERE name = $1",
                until = ts("$2"),
                updated = ts("$3"),
            ),
            // A release keeps a waiter's reservation: the side row loses only what named
            // the holder (deleting it would hand the next grant to whoever tries first).
            delete: format!(
                "WITH k AS (UPDATE {SIDE_TABLE} SET created_at = NULL, locked_by = NULL,
                              lock_process = NULL, token = NULL, host = '', min_hold = NULL
                            WHERE name = $1 AND reserved_token IS NOT NULL),
                      d AS (DELETE FROM {SIDE_TABLE} WHERE name = $1 AND reserved_token IS NULL)
                 DELETE FROM {TABLE} WHERE name = $1"
            ),
            delete_placeholders: format!("DELETE FROM {TABLE} WHERE name = ANY($1::text[])"),
            reserve: format!(
                "INSERT INTO {SIDE_TABLE} AS s (name, reserved_token, reserved_until) VALUES ($1, $2, $3)
                 ON CONFLICT (name) DO UPDATE SET reserved_token = EXCLUDED.reserved_token,
                    reserved_until = EXCLUDED.reserved_until"
            ),
            unreserve: format!(
                "UPDATE {SIDE_TABLE} SET reserved_token = NULL, reserved_until = NULL
                 WHERE name = $1 AND reserved_token IS NOT NULL"
            ),
            reset_all: format!(
                "WITH d AS (DELETE FROM {TABLE} RETURNING 1),
                      s AS (DELETE FROM {SIDE_TABLE} WHERE created_at IS NOT NULL)
                 SELECT count(*) FROM d"
            ),
            purge_expired: format!(
                "WITH c AS (SELECT {now1} AS now),
                      d AS (DELETE FROM {TABLE} l USING c
                            WHERE l.locked_until IS NOT NULL AND l.locked_until <= {cnow}
                            RETURNING l.name),
                      s AS (DELETE FROM {SIDE_TABLE} o WHERE o.name IN (SELECT name FROM d))
                 SELECT count(*) FROM d",
                cnow = ts("c.now"),
            ),
            sweep: format!(
                "WITH c AS (SELECT {now1} AS now),
                      g AS (DELETE FROM {TABLE} l WHERE l.ctid = ANY(ARRAY(
                              SELECT x.ctid FROM {TABLE} x, c
                              WHERE x.locked_until IS NOT NULL AND x.locked_until < {old}
                              LIMIT 64 FOR UPDATE OF x SKIP LOCKED))
                            RETURNING l.name),
                      o AS (SELECT s.ctid FROM {SIDE_TABLE} s, c
                            WHERE (s.reserved_until IS NULL OR s.reserved_until <= c.now)
                              AND NOT EXISTS (SELECT 1 FROM {TABLE} l WHERE l.name = s.name AND {OURS})
                            LIMIT 64 FOR UPDATE OF s SKIP LOCKED)
                 DELETE FROM {SIDE_TABLE} s
                 WHERE s.ctid IN (SELECT ctid FROM o) OR s.name IN (SELECT name FROM g)",
                old = ts("c.now - $2"),
            ),
        }
    }
}

/// The side table, created when missing.
fn side_ddl() -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {SIDE_TABLE} (
            name varchar(100) NOT NULL PRIMARY KEY,
            created_at timestamp with time zone NULL,
            locked_by varchar(100) NULL,
            lock_process integer NULL,
            token text NULL,
            host text NOT NULL DEFAULT '',
            min_hold int8 NULL,
            reserved_token text NULL,
            reserved_until int8 NULL);
         COMMENT ON TABLE {SIDE_TABLE} IS 'locksmith: which {TABLE} rows locksmith granted (created_at, locked_by, lock_process copied from the row), their owner tokens, hosts and min_hold (µs), and reservations of waiters (µs since the epoch on the server clock); Django ignores this table'"
    )
}

/// The error for a name Django's `varchar(100)` cannot hold.
fn check_name(name: &str) -> Result<()> {
    if name.len() > MAX_NAME_CHARS {
        return Err(Error::InvalidName {
            name: name.chars().take(64).collect::<String>() + "…",
            reason: format!(
                "it is {} bytes, but django-lockmgr's lockmgr_lock.name is varchar(100) and layout=django-lockmgr takes names of at most {MAX_NAME_CHARS} bytes — use a shorter name (e.g. a hash of the long one)",
                name.len()
            ),
        });
    }
    Ok(())
}

/// A read row: the [`Row`] and whether it is a Python peer's (no matching side row).
fn row_from(r: &PgRow, at: usize) -> (Row, bool) {
    let locked_by: Option<String> = r.get(at + 1);
    let lock_process: Option<i32> = r.get(at + 2);
    let until: Option<i64> = r.get(at + 3);
    let created: Option<i64> = r.get(at + 4);
    let ours: bool = r.get(at + 5);
    let pid = lock_process
        .and_then(|p| u32::try_from(p).ok())
        .unwrap_or(0);
    let owner = locked_by.unwrap_or_default();
    let acquired_at = created.unwrap_or(0);
    if ours {
        let token: Option<String> = r.get(at + 6);
        let host: Option<String> = r.get(at + 7);
        let row = Row {
            token: token.map(|t| Token::from_str(&t).unwrap_or_default()),
            owner,
            host: host.unwrap_or_default(),
            pid,
            fence: 0,
            acquired_at,
            expires_at: until,
            min_hold: r.get(at + 8),
        };
        (row, false)
    } else {
        let row = Row {
            token: Some(Token::new()),
            owner,
            host: String::new(),
            pid,
            fence: 0,
            acquired_at,
            expires_at: until,
            min_hold: None,
        };
        (row, true)
    }
}

/// A detached release.
enum Job {
    Release {
        name: LockName,
        token: Token,
        min_hold: Option<Duration>,
    },
    Flush(oneshot::Sender<()>),
}

/// What the store's tasks share.
struct Inner {
    conns: Conns,
    sql: Sql,
    hub: Arc<WakeHub>,
    clock: Arc<AtomicI64>,
    retain_us: i64,
    grants: AtomicU32,
}

/// The PostgreSQL store in the django-lockmgr layout. See the [module docs](self).
pub(crate) struct LockmgrStore {
    inner: Arc<Inner>,
    identity: String,
    redacted: String,
    jobs: mpsc::UnboundedSender<Job>,
}

impl std::fmt::Debug for LockmgrStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("url", &self.redacted)
            .field("layout", &LAYOUT)
            .finish_non_exhaustive()
    }
}

impl LockmgrStore {
    /// Connects, checks that Django's table is there, creates the side table if missing.
    pub(super) async fn open(settings: Settings) -> Result<Arc<LockmgrStore>> {
        let pool = make_pool(&settings)?;
        let conns = Conns::new(pool, settings.redacted.clone());
        conns.fill().await?;
        prepare(&conns, &settings.redacted).await?;
        let inner = Arc::new(Inner {
            conns,
            sql: Sql::new(),
            hub: shared_hub(&settings.identity),
            clock: clock_offset(&settings.identity),
            retain_us: micros(settings.retain),
            grants: AtomicU32::new(0),
        });
        let (jobs, rx) = mpsc::unbounded_channel();
        tokio::spawn(detached_worker(inner.clone(), rx));
        tokio::spawn(super::refill_shared(Arc::downgrade(&inner)));
        Ok(Arc::new(LockmgrStore {
            inner,
            identity: settings.identity.clone(),
            redacted: settings.redacted.clone(),
            jobs,
        }))
    }
}

/// The wake-up hub of every store of this process on one database: a release through
/// one `Locksmith` wakes the waiters (and the guards, after a `clear`) of every other
/// `Locksmith` of this process on the same database, as the native layout's `NOTIFY` does.
fn shared_hub(identity: &str) -> Arc<WakeHub> {
    static HUBS: OnceLock<Mutex<HashMap<String, Weak<WakeHub>>>> = OnceLock::new();
    let mut hubs = HUBS
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    hubs.retain(|_, hub| hub.strong_count() > 0);
    if let Some(hub) = hubs.get(identity).and_then(Weak::upgrade) {
        return hub;
    }
    let hub = Arc::new(WakeHub::default());
    hubs.insert(identity.to_string(), Arc::downgrade(&hub));
    hub
}

/// Refuses a database without Django's table (or with one missing a column), and creates
/// the side table when it is missing.
async fn prepare(conns: &Conns, shown: &str) -> Result<()> {
    let client = conns.shared().await?;
    let what = "opening layout=django-lockmgr";
    let found: bool = client
        .query_typed_one(
            "SELECT to_regclass($1) IS NOT NULL",
            &[(&TABLE, Type::TEXT)],
        )
        .await
        .map_err(|e| pg_error(what, &e))?
        .get(0);
    if !found {
        return Err(spec::table_missing(shown));
    }
    let probe = format!(
        "SELECT name, locked_by, lock_process, locked_until, created_at, updated_at FROM {TABLE} LIMIT 0"
    );
    if let Err(e) = client.query_typed(&probe, &[]).await {
        return Err(match e.as_db_error() {
            Some(db) => Error::config(format!(
                "store URL {shown:?}: Django's table {TABLE} is not django-lockmgr's ({}) — run `python manage.py migrate lockmgr` (django-lockmgr 2.0.0) in the Django project",
                db.message()
            )),
            None => pg_error(what, &e),
        });
    }
    // Migration 0002 made locked_until nullable (NULL: never expires); without it, a lock
    // that never expires cannot be written.
    let nullable: bool = client
        .query_typed_one(
            "SELECT COALESCE((SELECT NOT a.attnotnull FROM pg_attribute a
                WHERE a.attrelid = to_regclass($1) AND a.attname = 'locked_until'), true)",
            &[(&TABLE, Type::TEXT)],
        )
        .await
        .map_err(|e| pg_error(what, &e))?
        .get(0);
    if !nullable {
        return Err(Error::config(format!(
            "store URL {shown:?}: {TABLE}.locked_until is NOT NULL, so the Django project has django-lockmgr's migration 0001 but not 0002 — run `python manage.py migrate lockmgr`"
        )));
    }
    let side: bool = client
        .query_typed_one(
            "SELECT to_regclass($1) IS NOT NULL",
            &[(&SIDE_TABLE, Type::TEXT)],
        )
        .await
        .map_err(|e| pg_error(what, &e))?
        .get(0);
    if side {
        return Ok(());
    }
    drop(client);
    // Processes starting at once would race on CREATE TABLE IF NOT EXISTS (a unique
    // violation in the catalog): serialise them with a transaction-scoped advisory lock.
    let mut obj = conns.get().await?;
    let err = |e: tokio_postgres::Error| pg_error("creating the side table", &e);
    let tx = obj.transaction().await.map_err(err)?;
    tx.query_typed(
        "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
        &[(&format!("locksmith:{SIDE_TABLE}"), Type::TEXT)],
    )
    .await
    .map_err(err)?;
    tx.batch_execute(&side_ddl()).await.map_err(err)?;
    tx.commit().await.map_err(err)?;
    Ok(())
}

impl super::OwnsConns for Inner {
    fn conns(&self) -> &Conns {
        &self.conns
    }
}

/// Runs the detached releases one after another until the store is dropped.
async fn detached_worker(inner: Arc<Inner>, mut rx: mpsc::UnboundedReceiver<Job>) {
    while let Some(job) = rx.recv().await {
        match job {
            Job::Release {
                name,
                token,
                min_hold,
            } => {
                for attempt in 0..4u32 {
                    let call = inner.release(&name, &token, min_hold);
                    match tokio::time::timeout(Duration::from_secs(2), call).await {
                        Ok(Ok(_)) => break,
                        Ok(Err(e)) if !e.is_retryable() => {
                            tracing::warn!(lock = %name, error = %e, "PostgreSQL (django-lockmgr) release failed; the lease will expire");
                            break;
                        }
                        _ => tokio::time::sleep(BACKOFF_MIN * 5 * (attempt + 1)).await,
                    }
                }
            }
            Job::Flush(done) => {
                let _ = done.send(());
            }
        }
    }
}

/// One write of a transaction.
#[derive(Debug)]
enum Write {
    /// A row locksmith owns (granted, extended, kept under `min_hold`): the whole lock row
    /// and the side row.
    Ours(Row),
    /// A Python peer's row renewed by `set_locks`: `locked_until` and `updated_at` only.
    Renew(Option<i64>),
    Delete,
}

/// The locked rows of one transaction, for the shared row logic.
#[derive(Default)]
struct TxTable {
    now: i64,
    rows: HashMap<String, Row>,
    /// The token a Python peer's row was read with (a random one nobody holds).
    foreign: HashMap<String, Option<Token>>,
    reservations: HashMap<String, Reservation>,
    /// Names whose lock row this transaction holds locked (placeholders included).
    locked: HashSet<String>,
    dirty: Vec<(String, Write)>,
    reserve_dirty: Vec<(String, Option<Reservation>)>,
}

impl TxTable {
    fn mark(&mut self, name: &str, write: Write) {
        self.dirty.retain(|(n, _)| n != name);
        self.dirty.push((name.to_string(), write));
    }
}

impl Table for TxTable {
    type Error = Error;

    fn now(&self) -> i64 {
        self.now
    }

    fn epoch(&self) -> std::time::SystemTime {
        UNIX_EPOCH
    }

    fn get(&mut self, name: &str) -> Result<Option<Row>> {
        Ok(self.rows.get(name).cloned())
    }

    fn put(&mut self, name: &str, row: &Row) -> Result<()> {
        let renew = self
            .foreign
            .get(name)
            .is_some_and(|token| token.is_some() && *token == row.token);
        self.rows.insert(name.to_string(), row.clone());
        let write = if renew {
            Write::Renew(row.expires_at)
        } else {
            self.foreign.remove(name);
            Write::Ours(row.clone())
        };
        self.mark(name, write);
        Ok(())
    }

    fn delete(&mut self, name: &str) -> Result<bool> {
        let was = self.rows.remove(name).is_some();
        self.foreign.remove(name);
        self.mark(name, Write::Delete);
        Ok(was)
    }

    fn next_fence(&mut self) -> Result<u64> {
        Ok(0)
    }

    fn reservation(&mut self, name: &str) -> Result<Option<Reservation>> {
        let now = self.now;
        Ok(self
            .reservations
            .get(name)
            .filter(|r| r.until > now)
            .cloned())
    }

    fn reserve(&mut self, name: &str, reservation: &Reservation) -> Result<()> {
        // The reserver polls every POLL_INTERVAL at most, and a try here is a longer
        // transaction than on SQLite: its reservation must outlive the gap between two of
        // its tries.
        let reservation = Reservation {
            token: reservation.token.clone(),
            until: reservation.until.saturating_add(RESERVE_EXTRA),
        };
        self.reservations
            .insert(name.to_string(), reservation.clone());
        self.reserve_dirty
            .push((name.to_string(), Some(reservation)));
        Ok(())
    }

    fn unreserve(&mut self, name: &str) -> Result<()> {
        if self.reservations.remove(name).is_some() {
            self.reserve_dirty.push((name.to_string(), None));
        }
        Ok(())
    }
}

enum TxError {
    Pg(tokio_postgres::Error),
    Lm(Error),
}

impl From<tokio_postgres::Error> for TxError {
    fn from(e: tokio_postgres::Error) -> Self {
        TxError::Pg(e)
    }
}

impl From<Error> for TxError {
    fn from(e: Error) -> Self {
        TxError::Lm(e)
    }
}

/// How much longer than [`rows::RESERVE_FOR`] a reservation lasts here: two polls of the
/// reserver ([`POLL_INTERVAL`](super::super::lockmgr::POLL_INTERVAL) each).
const RESERVE_EXTRA: i64 = 2 * spec::POLL_INTERVAL.as_micros() as i64;

/// How often a transaction re-inserts placeholders for rows that vanished before it could
/// lock them (a Python peer deleting them between the two statements).
const PLACEHOLDER_ROUNDS: usize = 8;

impl Inner {
    fn offset(&self) -> i64 {
        self.clock.load(Ordering::SeqCst)
    }

    /// Runs `body` over the named rows in one transaction (see the module docs); `create`:
    /// names without a row get a placeholder, so a grant holds them locked too. Wakes this
    /// process's waiters of the names a write freed, after the commit.
    async fn transact<T: Send>(
        &self,
        what: &str,
        names: &[&str],
        create: bool,
        body: impl Fn(&mut TxTable) -> Result<T> + Send + Sync,
    ) -> Result<T> {
        for name in names {
            check_name(name)?;
        }
        let mut sorted: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        sorted.sort();
        sorted.dedup();
        let mut attempt = 0;
        loop {
            match self.transact_once(&sorted, create, &body).await {
                Err(TxError::Pg(e)) if is_conflict(&e) && attempt < CONFLICT_RETRIES => {
                    attempt += 1;
                    tokio::time::sleep(jitter(BACKOFF_MIN)).await;
                }
                Err(TxError::Pg(e)) => return Err(pg_error(what, &e)),
                Err(TxError::Lm(e)) => return Err(e),
                Ok((out, freed)) => {
                    let ns = Namespace::default();
                    for name in freed {
                        if let Ok(name) = LockName::new(name) {
                            self.hub.notify(&ns, &name);
                        }
                    }
                    return Ok(out);
                }
            }
        }
    }

    async fn transact_once<T: Send>(
        &self,
        names: &[String],
        create: bool,
        body: &(impl Fn(&mut TxTable) -> Result<T> + Send + Sync),
    ) -> std::result::Result<(T, Vec<String>), TxError> {
        let sql = &self.sql;
        let mut obj = self.conns.get().await?;
        let tx = obj.transaction().await?;
        let mut placeholders: HashSet<String> = HashSet::new();
        let mut locked: HashSet<String> = HashSet::new();
        for _ in 0..PLACEHOLDER_ROUNDS {
            if create {
                let missing: Vec<&String> = names.iter().filter(|n| !locked.contains(*n)).collect();
                let rows = tx
                    .query_typed(&sql.placeholders, &[(&missing, Type::TEXT_ARRAY)])
                    .await?;
                placeholders.extend(rows.iter().map(|r| r.get::<_, String>(0)));
            }
            let rows = tx
                .query_typed(&sql.lock, &[(&names, Type::TEXT_ARRAY)])
                .await?;
            locked = rows.iter().map(|r| r.get::<_, String>(0)).collect();
            if !create || locked.len() == names.len() {
                break;
            }
        }
        if create && locked.len() != names.len() {
            return Err(Error::store(
                KIND,
                true,
                "the lockmgr_lock rows kept vanishing before they could be locked (a peer deleting them); try again",
            )
            .into());
        }
        let offset = self.offset();
        let locked_list: Vec<&String> = locked.iter().collect();
        let rows = tx
            .query_typed(
                &sql.load,
                &[
                    (&names, Type::TEXT_ARRAY),
                    (&locked_list, Type::TEXT_ARRAY),
                    (&offset, Type::INT8),
                ],
            )
            .await?;
        let mut table = TxTable::default();
        for r in &rows {
            let name: String = r.get(0);
            let has_row: bool = r.get(1);
            table.now = r.get(13);
            if let (Some(token), Some(until)) =
                (r.get::<_, Option<String>>(11), r.get::<_, Option<i64>>(12))
            {
                table.reservations.insert(
                    name.clone(),
                    Reservation {
                        token: Token::from_str(&token).unwrap_or_default(),
                        until,
                    },
                );
            }
            if has_row && !placeholders.contains(&name) {
                let (row, foreign) = row_from(r, 2);
                if foreign {
                    table.foreign.insert(name.clone(), row.token.clone());
                }
                table.rows.insert(name.clone(), row);
            }
        }
        table.locked = locked;
        let out = body(&mut table)?;
        let now = table.now;
        let mut written: HashSet<&str> = HashSet::new();
        let mut freed = Vec::new();
        for (name, write) in &table.dirty {
            if !table.locked.contains(name) {
                // No row to change (and a side row of a name we do not hold locked is
                // left alone: a grant elsewhere may be writing it).
                continue;
            }
            written.insert(name);
            match write {
                Write::Ours(row) => {
                    let locked_by = Some(spec::locked_by(&row.owner)).filter(|o| !o.is_empty());
                    let pid = i32::try_from(row.pid).ok().filter(|p| *p != 0);
                    tx.query_typed(
                        &sql.write_ours,
                        &[
                            (name, Type::TEXT),
                            (&locked_by, Type::TEXT),
                            (&pid, Type::INT4),
                            (&row.expires_at, Type::INT8),
                            (&row.acquired_at, Type::INT8),
                            (&now, Type::INT8),
                        ],
                    )
                    .await?;
                    let token = row.token.as_ref().map(|t| t.expose().to_string());
                    tx.query_typed(
                        &sql.write_side,
                        &[
                            (name, Type::TEXT),
                            (&locked_by, Type::TEXT),
                            (&pid, Type::INT4),
                            (&token, Type::TEXT),
                            (&row.host, Type::TEXT),
                            (&row.min_hold, Type::INT8),
                            (&row.acquired_at, Type::INT8),
                        ],
                    )
                    .await?;
                    if row.token.is_none() {
                        freed.push(name.clone());
                    }
                }
                Write::Renew(until) => {
                    tx.query_typed(
                        &sql.write_renew,
                        &[(name, Type::TEXT), (until, Type::INT8), (&now, Type::INT8)],
                    )
                    .await?;
                }
                Write::Delete => {
                    tx.query_typed(&sql.delete, &[(name, Type::TEXT)]).await?;
                    freed.push(name.clone());
                }
            }
        }
        let unused: Vec<&String> = placeholders
            .iter()
            .filter(|n| !written.contains(n.as_str()))
            .collect();
        if !unused.is_empty() {
            tx.query_typed(&sql.delete_placeholders, &[(&unused, Type::TEXT_ARRAY)])
                .await?;
        }
        for (name, reservation) in &table.reserve_dirty {
            match reservation {
                Some(r) => {
                    tx.query_typed(
                        &sql.reserve,
                        &[
                            (name, Type::TEXT),
                            (&r.token.expose(), Type::TEXT),
                            (&r.until, Type::INT8),
                        ],
                    )
                    .await?;
                }
                None => {
                    tx.query_typed(&sql.unreserve, &[(name, Type::TEXT)])
                        .await?;
                }
            }
        }
        tx.commit().await?;
        Ok((out, freed))
    }

    async fn release(
        &self,
        name: &LockName,
        token: &Token,
        min_hold: Option<Duration>,
    ) -> Result<Released> {
        self.transact("release", &[name.as_str()], false, |t| {
            rows::release(t, name, token, min_hold)
        })
        .await
    }

    /// One statement on a shared client; deadlocks and serialization failures are retried.
    async fn query(
        &self,
        what: &str,
        statement: &str,
        params: &[(&(dyn tokio_postgres::types::ToSql + Sync), Type)],
    ) -> Result<Vec<PgRow>> {
        let mut attempt = 0;
        loop {
            let client = self.conns.shared().await?;
            match client.query_typed(statement, params).await {
                Ok(rows) => return Ok(rows),
                Err(e) if is_conflict(&e) && attempt < CONFLICT_RETRIES => {
                    attempt += 1;
                    tokio::time::sleep(jitter(BACKOFF_MIN)).await;
                }
                Err(e) => return Err(pg_error(what, &e)),
            }
        }
    }

    /// The row of `name` and the store clock, if there is a row.
    async fn read_one(&self, name: &LockName) -> Result<Option<(Row, i64)>> {
        check_name(name.as_str())?;
        let offset = self.offset();
        let rows = self
            .query(
                "inspect",
                &self.sql.read,
                &[(&name.as_str(), Type::TEXT), (&offset, Type::INT8)],
            )
            .await?;
        Ok(rows.first().map(|r| (row_from(r, 0).0, r.get::<_, i64>(9))))
    }

    /// Sweeps garbage in the background, every [`SWEEP_EVERY`] grants.
    fn after_grant(self: &Arc<Self>) {
        if !self
            .grants
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(SWEEP_EVERY)
        {
            return;
        }
        let inner = self.clone();
        tokio::spawn(async move {
            if let Err(e) = inner.sweep().await {
                tracing::debug!(error = %e, "PostgreSQL (django-lockmgr) garbage sweep failed; the next one retries");
            }
        });
    }

    /// One bounded garbage sweep (see the module docs).
    async fn sweep(&self) -> Result<()> {
        let err = |e: tokio_postgres::Error| pg_error("garbage sweep", &e);
        let mut obj = self.conns.get().await?;
        let tx = obj
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .start()
            .await
            .map_err(err)?;
        let offset = self.offset();
        tx.query_typed(
            &self.sql.sweep,
            &[(&offset, Type::INT8), (&self.retain_us, Type::INT8)],
        )
        .await
        .map_err(err)?;
        tx.commit().await.map_err(err)
    }
}

#[async_trait]
impl Store for LockmgrStore {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn identity(&self) -> String {
        self.identity.clone()
    }

    fn capabilities(&self) -> Capabilities {
        spec::capabilities()
    }

    async fn try_acquire(&self, ns: &Namespace, claim: &Claim) -> Result<Grant> {
        check_namespace(ns)?;
        let answer = self
            .inner
            .transact("acquire", &[claim.name.as_str()], true, |t| {
                rows::try_acquire(t, claim)
            })
            .await?;
        if let Grant::Acquired { .. } = answer {
            self.inner.after_grant();
        }
        Ok(answer)
    }

    async fn try_acquire_all(&self, ns: &Namespace, claims: &[Claim]) -> Result<GrantAll> {
        check_namespace(ns)?;
        if claims.is_empty() {
            return Ok(GrantAll::Acquired(Vec::new()));
        }
        let names: Vec<&str> = claims.iter().map(|c| c.name.as_str()).collect();
        let answer = self
            .inner
            .transact("acquire_all", &names, true, |t| {
                rows::try_acquire_all(t, claims)
            })
            .await?;
        if let GrantAll::Acquired(_) = answer {
            self.inner.after_grant();
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
        check_namespace(ns)?;
        self.inner.release(name, token, min_hold).await
    }

    fn release_detached(
        &self,
        ns: &Namespace,
        name: &LockName,
        token: &Token,
        min_hold: Option<Duration>,
    ) {
        if check_namespace(ns).is_err() {
            return;
        }
        let sent = self.jobs.send(Job::Release {
            name: name.clone(),
            token: token.clone(),
            min_hold,
        });
        if sent.is_err() {
            tracing::debug!("detached release not sent; the lease will expire");
        }
    }

    async fn extend(
        &self,
        ns: &Namespace,
        name: &LockName,
        token: &Token,
        mode: ExtendMode,
    ) -> Result<Extended> {
        check_namespace(ns)?;
        let (answer, shortened) = self
            .inner
            .transact("extend", &[name.as_str()], false, |t| {
                rows::extend(t, name, token, mode)
            })
            .await?;
        if shortened {
            self.inner.hub.notify(ns, name);
        }
        Ok(answer)
    }

    async fn held_by(
        &self,
        ns: &Namespace,
        name: &LockName,
        token: &Token,
    ) -> Result<Option<LockInfo>> {
        check_namespace(ns)?;
        let got = self.inner.read_one(name).await?;
        Ok(got.and_then(|(row, now)| {
            row.held_by(token, now)
                .then(|| row.info(name.as_str(), now, UNIX_EPOCH))
        }))
    }

    async fn inspect(&self, ns: &Namespace, name: &LockName) -> Result<Option<LockInfo>> {
        check_namespace(ns)?;
        let got = self.inner.read_one(name).await?;
        Ok(got.map(|(row, now)| row.info(name.as_str(), now, UNIX_EPOCH)))
    }

    async fn list(&self, ns: &Namespace, query: &ListQuery) -> Result<Page> {
        check_namespace(ns)?;
        let inner = &self.inner;
        let expired: i32 = match query.expired {
            Expired::Exclude => 0,
            Expired::Include => 1,
            _ => 2,
        };
        let limit = i64::try_from(query.limit).unwrap_or(i64::MAX - 1) + 1;
        let after = query.after.as_ref().map(|c| c.as_str().to_string());
        let offset = inner.offset();
        let rows = inner
            .query(
                "list",
                &inner.sql.list,
                &[
                    (&query.prefix, Type::TEXT),
                    (&after, Type::TEXT),
                    (&expired, Type::INT4),
                    (&limit, Type::INT8),
                    (&offset, Type::INT8),
                ],
            )
            .await?;
        let mut items: Vec<LockInfo> = rows
            .iter()
            .map(|r| {
                let name: String = r.get(0);
                let now: i64 = r.get(9);
                row_from(r, 0).0.info(&name, now, UNIX_EPOCH)
            })
            .collect();
        let next = if items.len() > query.limit {
            items.truncate(query.limit);
            items.last().map(|i| Cursor::new(i.name.clone()))
        } else {
            None
        };
        Ok(Page::new(items, next))
    }

    async fn force_release(&self, ns: &Namespace, names: &[LockName]) -> Result<Vec<bool>> {
        check_namespace(ns)?;
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let list: Vec<&str> = names.iter().map(LockName::as_str).collect();
        self.inner
            .transact("clear", &list, false, |t| rows::force_release(t, names))
            .await
    }

    async fn reset_all(&self, ns: &Namespace) -> Result<u64> {
        check_namespace(ns)?;
        let inner = &self.inner;
        let rows = inner.query("reset_all", &inner.sql.reset_all, &[]).await?;
        inner.hub.notify_namespace(ns);
        Ok(rows
            .first()
            .map(|r| u64::try_from(r.get::<_, i64>(0)).unwrap_or(0))
            .unwrap_or(0))
    }

    async fn purge_expired(&self, ns: &Namespace) -> Result<u64> {
        check_namespace(ns)?;
        let inner = &self.inner;
        let offset = inner.offset();
        let rows = inner
            .query(
                "purge_expired",
                &inner.sql.purge_expired,
                &[(&offset, Type::INT8)],
            )
            .await?;
        Ok(rows
            .first()
            .map(|r| u64::try_from(r.get::<_, i64>(0)).unwrap_or(0))
            .unwrap_or(0))
    }

    async fn set_locks(
        &self,
        ns: &Namespace,
        claims: &[Claim],
        policy: &SetPolicy,
    ) -> Result<SetOutcome> {
        check_namespace(ns)?;
        if claims.is_empty() {
            return self
                .inner
                .transact("set_locks", &[], false, |t| {
                    rows::set_locks(t, claims, policy)
                })
                .await;
        }
        let names: Vec<&str> = claims.iter().map(|c| c.name.as_str()).collect();
        self.inner
            .transact("set_locks", &names, policy.create, |t| {
                rows::set_locks(t, claims, policy)
            })
            .await
    }

    async fn subscribe(&self, ns: &Namespace, name: &LockName) -> Result<Wakeups> {
        check_namespace(ns)?;
        Ok(self.inner.hub.subscribe(ns, name))
    }

    async fn close(&self) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        if self.jobs.send(Job::Flush(tx)).is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(5), rx).await;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_choose_and_check_the_layout() {
        let id =
            super::super::identity_of("postgres://u:pw@h:5433/app?layout=django-lockmgr").unwrap();
        assert_eq!(id, "postgres://h:5433/app?layout=django-lockmgr");
        for (url, hint) in [
            ("postgres://h/db?layout=django", "unknown layout=\"django\""),
            ("postgres://h/db?layout=django-lockmgr&table=t", "?table="),
            ("postgres://h/db?layout=django-lockmgr&schema=s", "?schema="),
            (
                "postgres://h/db?layout=django-lockmgr&namespace=a",
                "namespace",
            ),
        ] {
            let err = super::super::identity_of(url).unwrap_err().to_string();
            assert!(err.contains(hint), "{url}: {err}");
            assert!(err.contains("django-lockmgr"), "{url}: {err}");
        }
    }

    #[test]
    fn long_names_are_refused_clearly() {
        assert!(check_name(&"a".repeat(100)).is_ok());
        let err = check_name(&"a".repeat(101)).unwrap_err().to_string();
        assert!(
            err.contains("101 bytes") && err.contains("varchar(100)"),
            "{err}"
        );
    }
}
