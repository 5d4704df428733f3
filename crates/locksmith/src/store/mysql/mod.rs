//! The MySQL/MariaDB store (`mysql://`, `mariadb://`): locks are rows of an InnoDB table on a
//! server the team already runs, reached with sqlx (its `mysql` driver only).
//!
//! ```text
//! mysql://user:password@db.internal:3306/app?table=locksmith_locks&namespace=billing
//! mariadb://user:password@localhost/app?socket=/run/mysqld/mysqld.sock
//! mysql://user:password@db.example.com/app?ssl-mode=verify-identity&ssl-ca=/etc/ca.pem
//! ```
//!
//! `?layout=django-lockmgr` keeps the locks in a Django project's `lockmgr_lock` table
//! instead, shared with its Python code (django-lockmgr 2.x); see the `lockmgr` submodule.
//!
//! # How it works
//!
//! - **Layout.** Table `locksmith_locks` (`?table=NAME`: ASCII letters, digits and `_`, at
//!   most 48 bytes) with `<table>_fence` (the store-wide fence counter, one row),
//!   `<table>_reservations` (cross-process fairness, below), `<table>_meta` (the schema
//!   version) and three stored procedures `<table>_acquire`, `<table>_release` and
//!   `<table>_extend`. Names and namespaces are `VARBINARY`: compared byte by byte, with no
//!   collation and no PAD SPACE, so `A`/`a` and `a`/`a ` are different locks and `list` is
//!   in byte order. `list` prefixes are `LIKE` patterns with `!`, `%` and `_` escaped.
//! - **Migration.** Opening reads the schema version; if the tables are missing or older,
//!   it takes `GET_LOCK('locksmith:<db>.<table>')` on one connection (only for the
//!   migration: no lock is ever held per waiter), checks the version again, creates what is
//!   missing (idempotent DDL), (re)creates the procedures and writes the version. Many
//!   processes starting at once migrate once. A newer schema is refused with a clear error.
//!   The user needs `CREATE`, `CREATE ROUTINE`, `ALTER ROUTINE` and `EXECUTE` on the
//!   database for the first start (or run the first start as a user that has them).
//! - **The server's clock** decides expiry: `UTC_TIMESTAMP(6)` in microseconds since the Unix
//!   epoch, never a client timestamp and independent of the session time zone.
//! - **Fences** are [`hybrid_fence`](super::hybrid_fence)s: `max(counter + 1, clock)`,
//!   minted inside the grant's transaction after the lock's row is locked, from the counter
//!   row, which stays locked until the grant commits — so fences are handed out in commit
//!   order, and a later grant of a name always gets a larger fence.
//! - **Round trips.** An acquire is one `CALL <table>_acquire(…)` (a placeholder row is
//!   upserted to lock the name, then the procedure decides and writes in one transaction); a
//!   release is one `CALL <table>_release(…)`; a renewal one `CALL <table>_extend(…)`. A
//!   waiter whose previous try found the lock held first reads the row (one `SELECT`, no
//!   locks), and only calls the procedure when the lock looks free or the waiter should
//!   reserve it. `acquire_all` and
//!   `set_locks` run one transaction of a few statements (all or nothing).
//! - **Retries.** Deadlocks (1213) and lock-wait timeouts (1205) roll the transaction back
//!   and are retried here with jittered backoff, never surfaced. Lost connections, a server
//!   restarting or unreachable, and a full connection table are retryable
//!   [`Error::Store`]s; the pool reconnects on the next call.
//! - **Waiting.** The server cannot notify, so waiters in other processes poll with
//!   jittered backoff capped at 25 ms ([`Capabilities::poll_interval`]) and re-poll at the
//!   holder's expiry; waiters in this process are woken at once by this process's releases
//!   (every `connect` to one table in one runtime shares one store). A waiter that has
//!   waited 200 ms reserves the next grant for 100 ms after its latest try (as on SQLite),
//!   so pollers are not starved by processes that re-take the lock at once.
//! - **No session state** is needed for correctness: every operation is one statement or
//!   one transaction, so a transaction-mode pooler in front of the server does not break
//!   it, and a connection killed mid-call loses nothing but that call (the server rolls its
//!   transaction back; the core treats the call's outcome as unknown and releases the
//!   claim's token).
//! - **Garbage.** A grant starts a background sweep (at most once a second per store, or
//!   again at once when the last sweep found a full batch) that removes up to 64 rows (of any namespace) that expired more than `?retain=` ago (default `1h`), and
//!   lapsed reservations: found with a plain read, deleted by primary key, so the sweep
//!   takes no range locks that would hold up grants. Retention is per store and process, as
//!   on SQLite: a later `connect` to the same table giving `?retain=` changes it for every
//!   handle of this process.
//! - **Credentials** never appear in errors, logs or `Debug` (URLs are shown redacted).
//! - **TLS** (`?ssl-mode=disabled|preferred|required|verify-ca|verify-identity`,
//!   `?ssl-ca=`, `?ssl-cert=`, `?ssl-key=`) needs the `mysql-tls` cargo feature.
//! - A service that already has a sqlx `MySqlPool` hands it over with
//!   [`MySqlStore::from_pool`] and [`Locksmith::with_store`](crate::Locksmith::with_store).

mod lockmgr;
mod sql;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, UNIX_EPOCH};

use async_trait::async_trait;
use sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions, MySqlRow};
use sqlx::{AssertSqlSafe, Row as _};
use tokio::sync::{mpsc, oneshot};

use super::rows::{self, DEFAULT_RETAIN, Reservation, Row, Table, micros};
use super::{
    Capabilities, Claim, ExtendMode, Extended, Grant, GrantAll, Released, Store, WakeHub, Wakeups,
};
use crate::error::{Error, Result};
use crate::info::LockInfo;
use crate::lease::Token;
use crate::name::{LockName, Namespace};
use crate::options::{Cursor, Expired, ListQuery, Page, SetOutcome, SetPolicy};
use crate::url::StoreUrl;
/// The schema version this build writes (the `version` row of `<table>_meta`).
pub const SCHEMA_VERSION: i64 = sql::SCHEMA_VERSION;
use sql::Sql;

const KIND: &str = "mysql";

/// The backoff cap of pollers and of deadlock retries.
const POLL_CAP: Duration = Duration::from_millis(25);

/// The default table.
pub const DEFAULT_TABLE: &str = "locksmith_locks";

/// How many connections a store's pool opens at most (`?pool=` changes it).
const DEFAULT_POOL: u32 = 10;

/// The least time between two background garbage sweeps of one store (unless the last
/// sweep found a full batch: then the next grant sweeps again).
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// How often a transaction that hit a deadlock or lock-wait timeout is tried again before
/// the error is given up on (as retryable).
const CONFLICT_RETRIES: u32 = 64;

/// Options of a MySQL store beyond the connection.
#[derive(Clone, Debug)]
pub struct MySqlOptions {
    /// The lock table (default [`DEFAULT_TABLE`]); validated as an identifier.
    pub table: String,
    /// How long expired rows stay visible before the sweep removes them (default 1 h).
    pub retain: Duration,
}

impl Default for MySqlOptions {
    fn default() -> Self {
        MySqlOptions {
            table: DEFAULT_TABLE.to_string(),
            retain: DEFAULT_RETAIN,
        }
    }
}

/// The MySQL/MariaDB store. Build one with `Locksmith::connect("mysql://…")`, or hand over
/// an existing pool with [`MySqlStore::from_pool`].
pub struct MySqlStore {
    shared: Arc<Shared>,
    /// The background task's queue of detached releases and sweeps; closing it ends the
    /// task once it has run what is queued.
    jobs: mpsc::UnboundedSender<Job>,
}

struct Shared {
    pool: MySqlPool,
    sql: Sql,
    hub: WakeHub,
    identity: String,
    retain_us: AtomicI64,
    /// The test hook's clock offset (microseconds), shared by every store of this identity
    /// in this process.
    offset: Arc<AtomicI64>,
    /// When the last sweep was started; `None` before the first, or when the last one found
    /// a full batch (more garbage may be waiting).
    last_sweep: Mutex<Option<std::time::Instant>>,
    /// Tokens whose latest try was answered `Held`: their next try reads first.
    waiting: Mutex<std::collections::HashSet<Token>>,
}

enum Job {
    Release(Namespace, LockName, Token, Option<Duration>),
    Sweep,
    Flush(oneshot::Sender<()>),
}

impl std::fmt::Debug for MySqlStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MySqlStore")
            .field("identity", &self.shared.identity)
            .finish_non_exhaustive()
    }
}

/// Stores open in this process, by connection key and runtime: every `connect` to one table
/// from one runtime shares a pool, its wake-ups and its waiter queue. (A pool's connections
/// belong to the runtime that opened them, so runtimes do not share.)
type OpenKey = (String, tokio::runtime::Id);
fn open_stores() -> &'static tokio::sync::Mutex<HashMap<OpenKey, Weak<MySqlStore>>> {
    static OPEN: OnceLock<tokio::sync::Mutex<HashMap<OpenKey, Weak<MySqlStore>>>> = OnceLock::new();
    OPEN.get_or_init(Default::default)
}

/// Test-hook clock offsets by identity.
fn clock_offset(identity: &str) -> Arc<AtomicI64> {
    static OFFSETS: OnceLock<Mutex<HashMap<String, Arc<AtomicI64>>>> = OnceLock::new();
    OFFSETS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(identity.to_string())
        .or_default()
        .clone()
}

/// Test hook: steps this process's view of the server clock for the store `identity` (see
/// [`Store::identity`]) by `micros` microseconds (negative: backwards), for expiry and
/// fences alike, as a clock step on the server would — for this process only. Steps add up.
pub fn step_clock(identity: &str, micros: i64) {
    clock_offset(identity).fetch_add(micros, Ordering::SeqCst);
}

/// Opens the store a `mysql://` or `mariadb://` URL names.
pub(crate) async fn open(url: &mut StoreUrl) -> Result<Arc<dyn Store>> {
    let redacted = url.redacted().to_string();
    let layout = match url.take("layout") {
        None => false,
        Some(l) if l == crate::store::lockmgr::LAYOUT => true,
        Some(other) => {
            return Err(Error::config(format!(
                "store URL {redacted:?}: layout={other:?} is not a layout the MySQL store knows — use layout={} (a Django project's lockmgr_lock table), or leave it out for locksmith's own tables",
                crate::store::lockmgr::LAYOUT
            )));
        }
    };
    if layout {
        if url.take("table").is_some() {
            return Err(crate::store::lockmgr::url_refuses(
                &redacted,
                "keeps its locks in Django's table lockmgr_lock — drop ?table= (point the URL at the Django project's database instead)",
            ));
        }
        if !url.namespace.as_str().is_empty() {
            return Err(crate::store::lockmgr::url_refuses(
                &redacted,
                "has no namespaces (django-lockmgr keeps one table) — drop ?namespace=, or give each group of services its own database",
            ));
        }
    }
    let table = url
        .take("table")
        .unwrap_or_else(|| DEFAULT_TABLE.to_string());
    if !sql::valid_table(&table) {
        return Err(Error::config(format!(
            "store URL {redacted:?}: table={table:?} is not a table name locksmith accepts — use ASCII letters, digits and _ (not starting with a digit, at most 48 bytes), e.g. table=locksmith_locks"
        )));
    }
    let retain = url.take_duration("retain")?;
    let pool_size = match url.take("pool") {
        None => DEFAULT_POOL,
        Some(v) => v.parse::<u32>().ok().filter(|n| (1..=1000).contains(n)).ok_or_else(|| {
            Error::config(format!(
                "store URL {redacted:?}: pool={v:?} is not a connection count — give 1 to 1000, e.g. pool=10"
            ))
        })?,
    };
    let mut tls: Vec<(&str, String)> = Vec::new();
    for key in ["ssl-mode", "ssl-ca", "ssl-cert", "ssl-key"] {
        if let Some(v) = url.take(key) {
            tls.push((key, v));
        }
    }
    let socket = url.take("socket");
    if layout {
        url.finish(
            ", ?layout=django-lockmgr, ?retain=, ?pool=, ?socket=, ?ssl-mode=, ?ssl-ca=, ?ssl-cert= and ?ssl-key=",
        )?;
    } else {
        url.finish(
            ", ?layout=, ?table=, ?retain=, ?pool=, ?socket=, ?ssl-mode=, ?ssl-ca=, ?ssl-cert= and ?ssl-key=",
        )?;
    }

    let raw = format!("mysql://{}", url.body);
    let mut options: MySqlConnectOptions = raw.parse().map_err(|e: sqlx::Error| {
        Error::config(format!(
            "store URL {redacted:?} is not a MySQL URL ({}) — write mysql://USER:PASSWORD@HOST:PORT/DATABASE",
            scrub(&e.to_string())
        ))
    })?;
    let Some(db) = options.get_database().map(str::to_string) else {
        return Err(Error::config(format!(
            "store URL {redacted:?} names no database — add it as the path, e.g. mysql://user:pass@host:3306/app"
        )));
    };
    if let Some(socket) = &socket {
        options = options.socket(socket);
    }
    options = apply_tls(options, &tls, &redacted)?;
    let place = match &socket {
        Some(s) => format!("unix:{s}"),
        None => format!("{}:{}", options.get_host(), options.get_port()),
    };
    if layout {
        let identity = format!(
            "mysql://{place}/{db}?layout={}",
            crate::store::lockmgr::LAYOUT
        );
        let key = format!("{raw}|{socket:?}|{tls:?}|layout|{pool_size}");
        return lockmgr::open(lockmgr::Opening {
            options,
            pool_size,
            timeout: url.timeout,
            identity,
            key,
            retain,
            redacted,
        })
        .await;
    }
    let identity = format!("mysql://{place}/{db}?table={table}");
    // Everything that picks the connection, secrets included; kept in memory only.
    let key = format!("{raw}|{socket:?}|{tls:?}|{table}|{pool_size}");
    let rt = tokio::runtime::Handle::try_current()
        .map_err(|_| Error::config("the MySQL store needs a tokio runtime"))?
        .id();
    let mut open = open_stores().lock().await;
    open.retain(|_, w| w.strong_count() > 0);
    if let Some(store) = open.get(&(key.clone(), rt)).and_then(Weak::upgrade) {
        if let Some(r) = retain {
            store.shared.retain_us.store(micros(r), Ordering::SeqCst);
        }
        return Ok(store);
    }
    let pool = MySqlPoolOptions::new()
        .max_connections(pool_size)
        .min_connections(0)
        .test_before_acquire(false)
        .acquire_timeout(url.timeout)
        .idle_timeout(Some(Duration::from_secs(60)))
        .connect_lazy_with(options);
    let store = MySqlStore::build(
        pool,
        &MySqlOptions {
            table,
            retain: retain.unwrap_or(DEFAULT_RETAIN),
        },
        identity,
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
            format!("cannot open the MySQL store {redacted:?}: {source}"),
        ),
        other => other,
    })?;
    open.insert((key, rt), Arc::downgrade(&store));
    Ok(store)
}

#[cfg_attr(not(feature = "mysql-tls"), allow(unused_mut))]
fn apply_tls(
    mut options: MySqlConnectOptions,
    tls: &[(&str, String)],
    redacted: &str,
) -> Result<MySqlConnectOptions> {
    #[cfg(not(feature = "mysql-tls"))]
    if let Some((key, _)) = tls.first() {
        return Err(Error::config(format!(
            "store URL {redacted:?} asks for TLS ({key}=) but this build has no TLS for MySQL — enable locksmith's `mysql-tls` cargo feature"
        )));
    }
    #[cfg(feature = "mysql-tls")]
    for (key, value) in tls {
        {
            options = match *key {
                "ssl-mode" => {
                    let mode = value.replace('-', "_").parse::<sqlx::mysql::MySqlSslMode>().map_err(|_| {
                        Error::config(format!(
                            "store URL {redacted:?}: ssl-mode={value:?} is not a TLS mode — use disabled, preferred, required, verify-ca or verify-identity (MySQL's VERIFY_CA spelling works too)"
                        ))
                    })?;
                    options.ssl_mode(mode)
                }
                "ssl-ca" => options.ssl_ca(value),
                "ssl-cert" => options.ssl_client_cert(value),
                _ => options.ssl_client_key(value),
            };
        }
    }
    let _ = redacted;
    Ok(options)
}

/// Removes anything that looks like a URL's userinfo from a driver message.
fn scrub(message: &str) -> String {
    crate::url::redact_url(message)
}

impl MySqlStore {
    /// A store over a pool the caller already has (its connect options, TLS and size are the
    /// caller's). Runs the migration if needed. Wrap it with
    /// [`Locksmith::with_store`](crate::Locksmith::with_store). The pool should not test
    /// connections before handing them out (`test_before_acquire(false)`) for speed.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for a bad table name, a schema from a newer locksmith or missing
    /// privileges; [`Error::Store`] (retryable) when the server cannot be reached.
    pub async fn from_pool(pool: MySqlPool, options: MySqlOptions) -> Result<Arc<MySqlStore>> {
        if !sql::valid_table(&options.table) {
            return Err(Error::config(format!(
                "table {:?} is not a table name locksmith accepts — use ASCII letters, digits and _ (not starting with a digit, at most 48 bytes)",
                options.table
            )));
        }
        let opts = pool.connect_options();
        let place = match opts.get_socket() {
            Some(s) => format!("unix:{}", s.display()),
            None => format!("{}:{}", opts.get_host(), opts.get_port()),
        };
        let identity = format!(
            "mysql://{place}/{}?table={}",
            opts.get_database().unwrap_or(""),
            options.table
        );
        MySqlStore::build(pool, &options, identity).await
    }

    async fn build(
        pool: MySqlPool,
        options: &MySqlOptions,
        identity: String,
    ) -> Result<Arc<MySqlStore>> {
        let sql = Sql::new(&options.table);
        migrate(&pool, &sql).await?;
        let shared = Arc::new(Shared {
            pool,
            sql,
            hub: WakeHub::default(),
            offset: clock_offset(&identity),
            identity,
            retain_us: AtomicI64::new(micros(options.retain)),
            last_sweep: Mutex::new(None),
            waiting: Mutex::default(),
        });
        let (jobs, rx) = mpsc::unbounded_channel();
        tokio::spawn(background(shared.clone(), rx));
        Ok(Arc::new(MySqlStore { shared, jobs }))
    }

    /// The pool this store uses.
    pub fn pool(&self) -> &MySqlPool {
        &self.shared.pool
    }

    fn off(&self) -> i64 {
        self.shared.offset.load(Ordering::SeqCst)
    }

    async fn try_acquire_inner(&self, ns: &Namespace, claim: &Claim) -> Result<Grant> {
        let sh = &self.shared;
        let off = self.off();
        let name = claim.name.as_str();
        // A later try (this token was answered `Held` before) reads first: a poller that
        // finds the lock held (and need not reserve it) writes nothing.
        let polled = sh
            .waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&claim.token);
        if polled {
            let r = sqlx::query(AssertSqlSafe(sh.sql.peek.clone()))
                .bind(off)
                .bind(ns.as_str().as_bytes())
                .bind(name.as_bytes())
                .bind(ns.as_str().as_bytes())
                .bind(name.as_bytes())
                .fetch_one(&sh.pool)
                .await
                .map_err(|e| map_err(e, "acquire"))?;
            let now = int(&r, 0).map_err(decode)?.unwrap_or(0);
            let row = row_at(&r, 1).map_err(decode)?.filter(|row| row.live(now));
            let reserved = match (text(&r, 9).map_err(decode)?, int(&r, 10).map_err(decode)?) {
                (Some(t), Some(until)) if until > now => {
                    t.parse().ok().map(|token| Reservation { token, until })
                }
                _ => None,
            };
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
        }
        let rows = retrying(|| {
            sqlx::query(AssertSqlSafe(sh.sql.call_acquire.clone()))
                .bind(ns.as_str().as_bytes())
                .bind(name.as_bytes())
                .bind(claim.token.expose().as_bytes())
                .bind(claim.owner.as_bytes())
                .bind(claim.host.as_bytes())
                .bind(i64::from(claim.pid))
                .bind(claim.ttl.map(dur_us))
                .bind(claim.min_hold.map(dur_us))
                .bind(dur_us(claim.waited))
                .bind(off)
                .fetch_all(&sh.pool)
        })
        .await
        .map_err(|e| map_err(e, "acquire"))?;
        let r = rows
            .first()
            .ok_or_else(|| Error::store(KIND, true, "MySQL acquire returned no result"))?;
        let status = int(r, 0).map_err(decode)?.unwrap_or(-1);
        let now = int(r, 2).map_err(decode)?.unwrap_or(0);
        match status {
            0 => {
                let fence = u64::try_from(int(r, 1).map_err(decode)?.unwrap_or(0)).unwrap_or(0);
                if sh.sweep_due() {
                    let _ = self.jobs.send(Job::Sweep);
                }
                Ok(Grant::Acquired { fence })
            }
            2 => Ok(Grant::AlreadyHeld),
            3 => {
                let until = int(r, 10).map_err(decode)?.unwrap_or(now);
                let mut info = LockInfo::new(
                    name,
                    Some(Duration::from_micros(
                        u64::try_from(until - now).unwrap_or(0),
                    )),
                );
                info.released = true;
                Ok(Grant::Held(info))
            }
            1 => {
                let row = Row {
                    token: None,
                    owner: text(r, 3).map_err(decode)?.unwrap_or_default(),
                    host: text(r, 4).map_err(decode)?.unwrap_or_default(),
                    pid: u32::try_from(int(r, 5).map_err(decode)?.unwrap_or(0)).unwrap_or(0),
                    fence: u64::try_from(int(r, 1).map_err(decode)?.unwrap_or(0)).unwrap_or(0),
                    acquired_at: int(r, 6).map_err(decode)?.unwrap_or(0),
                    expires_at: int(r, 7).map_err(decode)?,
                    min_hold: int(r, 8).map_err(decode)?,
                };
                let mut info = row.info(name, now, UNIX_EPOCH);
                info.released = int(r, 9).map_err(decode)? == Some(1);
                Ok(Grant::Held(info))
            }
            other => Err(Error::store(
                KIND,
                false,
                format!("MySQL acquire answered status {other}"),
            )),
        }
    }
}

/// Creates or upgrades the schema once, under a named server lock held by one connection
/// for the migration only.
async fn migrate(pool: &MySqlPool, sql: &Sql) -> Result<()> {
    if let Some(v) = schema_version(pool, sql).await? {
        if v == sql::SCHEMA_VERSION {
            return Ok(());
        }
        if v > sql::SCHEMA_VERSION {
            return Err(newer(sql, v));
        }
    }
    let mut conn = pool.acquire().await.map_err(|e| map_err(e, "connect"))?;
    let db: Option<String> = sqlx::query_scalar("SELECT DATABASE()")
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| map_err(e, "migrate"))?;
    let lock_name = format!("locksmith:{}.{}", db.unwrap_or_default(), sql.table);
    let got: Option<i64> = sqlx::query_scalar("SELECT GET_LOCK(?, 60)")
        .bind(&lock_name)
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| map_err(e, "migrate"))?;
    if got != Some(1) {
        return Err(Error::store(
            KIND,
            true,
            format!(
                "another process has been migrating the lock table {} for a minute — try again, or check for a stuck client",
                sql.table
            ),
        ));
    }
    let result = async {
        let version = match sqlx::query_scalar::<_, i32>(AssertSqlSafe(sql.version.clone()))
            .fetch_optional(&mut *conn)
            .await
        {
            Ok(v) => v.map(i64::from),
            Err(e) if db_number(&e) == Some(1146) => None,
            Err(e) => return Err(map_err(e, "migrate")),
        };
        match version {
            Some(v) if v == sql::SCHEMA_VERSION => return Ok(()),
            Some(v) if v > sql::SCHEMA_VERSION => return Err(newer(sql, v)),
            _ => {}
        }
        for statement in sql.schema() {
            sqlx::raw_sql(AssertSqlSafe(statement))
                .execute(&mut *conn)
                .await
                .map_err(|e| migrate_err(e, sql))?;
        }
        Ok(())
    }
    .await;
    let _ = sqlx::query("SELECT RELEASE_LOCK(?)")
        .bind(&lock_name)
        .execute(&mut *conn)
        .await;
    result
}

async fn schema_version(pool: &MySqlPool, sql: &Sql) -> Result<Option<i64>> {
    match sqlx::query_scalar::<_, i32>(AssertSqlSafe(sql.version.clone()))
        .fetch_optional(pool)
        .await
    {
        Ok(v) => Ok(v.map(i64::from)),
        Err(e) if db_number(&e) == Some(1146) => Ok(None),
        Err(e) => Err(map_err(e, "open")),
    }
}

fn newer(sql: &Sql, v: i64) -> Error {
    Error::config(format!(
        "the lock table {} was set up by a newer locksmith (schema {v}; this one knows up to {}) — upgrade locksmith, or use another ?table=",
        sql.table,
        sql::SCHEMA_VERSION
    ))
}

fn migrate_err(e: sqlx::Error, sql: &Sql) -> Error {
    match db_number(&e) {
        // access denied to create tables or routines
        Some(1044 | 1142 | 1227 | 1370 | 1404) => Error::Config {
            message: format!(
                "cannot create the lock table {} and its procedures ({}) — grant the user CREATE, CREATE ROUTINE, ALTER ROUTINE and EXECUTE on the database for the first start",
                sql.table,
                scrub(&e.to_string())
            ),
            source: None,
        },
        _ => map_err(e, "migrate"),
    }
}

/// The server's error number, for database errors.
fn db_number(e: &sqlx::Error) -> Option<u16> {
    match e {
        sqlx::Error::Database(db) => db
            .try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
            .map(|m| m.number()),
        _ => None,
    }
}

/// Deadlock or lock-wait timeout: the transaction was rolled back; try it again.
fn is_conflict(e: &sqlx::Error) -> bool {
    matches!(db_number(e), Some(1213 | 1205))
}

/// A driver error as a locksmith error: retryable for transient failures. The message never
/// contains credentials (sqlx does not quote URLs; the text is scrubbed anyway).
fn map_err(e: sqlx::Error, op: &str) -> Error {
    let text = scrub(&e.to_string());
    let retryable = match &e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::Protocol(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::BeginFailed => true,
        sqlx::Error::Database(_) => matches!(
            db_number(&e),
            // deadlock, lock wait, too many connections, shutdown, interrupted, killed,
            // gone away, lost, read-only (failover), disconnected for inactivity
            Some(
                1213 | 1205
                    | 1040
                    | 1053
                    | 1317
                    | 1927
                    | 2006
                    | 2013
                    | 1290
                    | 1836
                    | 4031
                    | 1152
                    | 1158
                    | 1159
                    | 1160
                    | 1161
            )
        ),
        _ => false,
    };
    let hint = match db_number(&e) {
        Some(1146) => " — the lock table is missing (dropped?); connect again to create it",
        Some(1045) => " — check the user and password in the URL",
        Some(1049) => " — the database in the URL does not exist; create it first",
        Some(1305) => " — the lock procedures are missing; connect again to create them",
        _ if retryable => " (transient; retried)",
        _ => "",
    };
    Error::store(KIND, retryable, format!("MySQL {op} failed: {text}{hint}"))
}

/// A uniformly random pause in `[d/2, d]`.
fn jitter(d: Duration) -> Duration {
    d.mul_f64(0.5 + fastrand::f64() / 2.0)
}

/// Runs `op` again while it fails with a deadlock or lock-wait timeout (the server rolled
/// its transaction back, so nothing was applied), with jittered backoff.
async fn retrying<T, F, Fut>(mut op: F) -> std::result::Result<T, sqlx::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::result::Result<T, sqlx::Error>>,
{
    let mut pause = Duration::from_millis(1);
    let mut tries = 0;
    loop {
        match op().await {
            Err(e) if is_conflict(&e) && tries < CONFLICT_RETRIES => {
                tries += 1;
                tokio::time::sleep(jitter(pause)).await;
                pause = (pause * 2).min(POLL_CAP);
            }
            other => return other,
        }
    }
}

/// Reads an integer column whatever its SQL integer type (signed or unsigned).
fn int(row: &MySqlRow, i: usize) -> std::result::Result<Option<i64>, sqlx::Error> {
    match row.try_get::<Option<i64>, _>(i) {
        Ok(v) => Ok(v),
        Err(_) => Ok(row
            .try_get::<Option<u64>, _>(i)?
            .map(|v| i64::try_from(v).unwrap_or(i64::MAX))),
    }
}

fn text(row: &MySqlRow, i: usize) -> std::result::Result<Option<String>, sqlx::Error> {
    Ok(row
        .try_get::<Option<Vec<u8>>, _>(i)?
        .map(|b| String::from_utf8_lossy(&b).into_owned()))
}

/// A lock row from the columns starting at `at` (token … min_hold); `None` when the row is
/// missing (all NULL) or a placeholder.
fn row_at(r: &MySqlRow, at: usize) -> std::result::Result<Option<Row>, sqlx::Error> {
    let Some(fence) = int(r, at + 4)? else {
        return Ok(None);
    };
    if fence == 0 {
        return Ok(None);
    }
    Ok(Some(Row {
        token: text(r, at)?.and_then(|t| t.parse().ok()),
        owner: text(r, at + 1)?.unwrap_or_default(),
        host: text(r, at + 2)?.unwrap_or_default(),
        pid: u32::try_from(int(r, at + 3)?.unwrap_or(0)).unwrap_or(0),
        fence: u64::try_from(fence).unwrap_or(0),
        acquired_at: int(r, at + 5)?.unwrap_or(0),
        expires_at: int(r, at + 6)?,
        min_hold: int(r, at + 7)?,
    }))
}

fn dur_us(d: Duration) -> i64 {
    micros(d)
}

/// One transaction's view of some names: their rows and reservations, locked, read into
/// memory, changed by the shared row state machine ([`rows`]) and written back at the end.
struct Snapshot {
    now: i64,
    rows: HashMap<String, Option<Row>>,
    res: HashMap<String, Option<Reservation>>,
    counter: Option<u64>,
    dirty_rows: BTreeSet<String>,
    dirty_res: BTreeSet<String>,
    counter_dirty: bool,
}

impl Table for Snapshot {
    type Error = Error;

    fn now(&self) -> i64 {
        self.now
    }

    fn epoch(&self) -> std::time::SystemTime {
        UNIX_EPOCH
    }

    fn get(&mut self, name: &str) -> Result<Option<Row>> {
        self.rows
            .get(name)
            .cloned()
            .ok_or_else(|| Error::store(KIND, false, format!("internal: {name:?} not loaded")))
    }

    fn put(&mut self, name: &str, row: &Row) -> Result<()> {
        self.rows.insert(name.to_string(), Some(row.clone()));
        self.dirty_rows.insert(name.to_string());
        Ok(())
    }

    fn delete(&mut self, name: &str) -> Result<bool> {
        let was = self.get(name)?.is_some();
        self.rows.insert(name.to_string(), None);
        self.dirty_rows.insert(name.to_string());
        Ok(was)
    }

    fn next_fence(&mut self) -> Result<u64> {
        let counter = self
            .counter
            .ok_or_else(|| Error::store(KIND, false, "internal: fence counter not locked"))?;
        let fence = super::hybrid_fence(counter, u64::try_from(self.now).unwrap_or(0));
        self.counter = Some(fence);
        self.counter_dirty = true;
        Ok(fence)
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
        self.res.insert(name.to_string(), None);
        self.dirty_res.insert(name.to_string());
        Ok(())
    }
}

fn placeholders(n: usize) -> String {
    let mut s = String::from("(");
    for i in 0..n {
        if i > 0 {
            s.push_str(", ");
        }
        s.push('?');
    }
    s.push(')');
    s
}

impl Shared {
    /// Whether a grant should start a garbage sweep now.
    fn sweep_due(&self) -> bool {
        let mut last = self.last_sweep.lock().unwrap_or_else(|e| e.into_inner());
        let now = std::time::Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < SWEEP_EVERY) {
            return false;
        }
        *last = Some(now);
        true
    }

    /// Runs `op` over the locked rows of `names` in one transaction (retried on deadlocks).
    async fn snapshot<T: Send>(
        &self,
        ns: &Namespace,
        names: &[&str],
        op: impl Fn(&mut Snapshot) -> Result<T> + Send + Sync,
    ) -> Result<T> {
        let mut sorted: Vec<&str> = names.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        let off = self.offset.load(Ordering::SeqCst);
        let sql = &self.sql;
        let lock_sql = format!(
            "{}{} ON DUPLICATE KEY UPDATE fence = fence",
            sql.lock_rows_head,
            vec!["(?, ?, NULL, '', '', 0, 0, 0, NULL, NULL)"; sorted.len()].join(", ")
        );
        let rows_sql = format!(
            "{}{} FOR UPDATE",
            sql.select_rows_head,
            placeholders(sorted.len())
        );
        let res_sql = format!("{}{}", sql.select_res_head, placeholders(sorted.len()));
        let mut tries = 0;
        let mut pause = Duration::from_millis(1);
        loop {
            let attempt: std::result::Result<Result<T>, sqlx::Error> = async {
                let mut tx = self.pool.begin().await?;
                if !sorted.is_empty() {
                    let mut q = sqlx::query(AssertSqlSafe(lock_sql.as_str()));
                    for n in &sorted {
                        q = q.bind(ns.as_str().as_bytes()).bind(n.as_bytes());
                    }
                    q.execute(&mut *tx).await?;
                }
                let mut snap = Snapshot {
                    now: 0,
                    rows: HashMap::new(),
                    res: HashMap::new(),
                    counter: None,
                    dirty_rows: BTreeSet::new(),
                    dirty_res: BTreeSet::new(),
                    counter_dirty: false,
                };
                if !sorted.is_empty() {
                    let mut q =
                        sqlx::query(AssertSqlSafe(rows_sql.as_str())).bind(ns.as_str().as_bytes());
                    for n in &sorted {
                        q = q.bind(n.as_bytes());
                    }
                    for r in q.fetch_all(&mut *tx).await? {
                        let name = text(&r, 0)?.unwrap_or_default();
                        snap.rows.insert(name, row_at(&r, 1)?);
                    }
                    let mut q =
                        sqlx::query(AssertSqlSafe(res_sql.as_str())).bind(ns.as_str().as_bytes());
                    for n in &sorted {
                        q = q.bind(n.as_bytes());
                    }
                    for r in q.fetch_all(&mut *tx).await? {
                        let name = text(&r, 0)?.unwrap_or_default();
                        let token = text(&r, 1)?.and_then(|t| t.parse().ok());
                        let until = int(&r, 2)?.unwrap_or(0);
                        snap.res
                            .insert(name, token.map(|token| Reservation { token, until }));
                    }
                }
                for n in &sorted {
                    snap.rows.entry(n.to_string()).or_insert(None);
                    snap.res.entry(n.to_string()).or_insert(None);
                }
                let r = sqlx::query(AssertSqlSafe(sql.now_and_counter.clone()))
                    .bind(off)
                    .fetch_optional(&mut *tx)
                    .await?;
                match r {
                    Some(r) => {
                        snap.counter = Some(u64::try_from(int(&r, 0)?.unwrap_or(0)).unwrap_or(0));
                        snap.now = int(&r, 1)?.unwrap_or(0);
                    }
                    None => {
                        // the counter row is gone: the clock carries the fences
                        let r = sqlx::query(AssertSqlSafe(sql.now_only.clone()))
                            .bind(off)
                            .fetch_one(&mut *tx)
                            .await?;
                        snap.counter = Some(0);
                        snap.now = int(&r, 0)?.unwrap_or(0);
                    }
                }
                let out = match op(&mut snap) {
                    Ok(out) => out,
                    Err(e) => {
                        tx.rollback().await?;
                        return Ok(Err(e));
                    }
                };
                for name in &sorted {
                    let row = snap.rows.get(*name).cloned().flatten();
                    match (&row, snap.dirty_rows.contains(*name)) {
                        (Some(row), true) => {
                            sqlx::query(AssertSqlSafe(sql.upsert_row.clone()))
                                .bind(ns.as_str().as_bytes())
                                .bind(name.as_bytes())
                                .bind(row.token.as_ref().map(|t| t.expose().as_bytes().to_vec()))
                                .bind(row.owner.as_bytes())
                                .bind(row.host.as_bytes())
                                .bind(i64::from(row.pid))
                                .bind(row.fence)
                                .bind(row.acquired_at)
                                .bind(row.expires_at)
                                .bind(row.min_hold)
                                .execute(&mut *tx)
                                .await?;
                        }
                        (None, true) => {
                            sqlx::query(AssertSqlSafe(sql.delete_row.clone()))
                                .bind(ns.as_str().as_bytes())
                                .bind(name.as_bytes())
                                .execute(&mut *tx)
                                .await?;
                        }
                        (_, false) => {
                            sqlx::query(AssertSqlSafe(sql.delete_placeholder.clone()))
                                .bind(ns.as_str().as_bytes())
                                .bind(name.as_bytes())
                                .execute(&mut *tx)
                                .await?;
                        }
                    }
                }
                for name in &snap.dirty_res {
                    match snap.res.get(name).cloned().flatten() {
                        Some(r) => {
                            sqlx::query(AssertSqlSafe(sql.upsert_res.clone()))
                                .bind(ns.as_str().as_bytes())
                                .bind(name.as_bytes())
                                .bind(r.token.expose().as_bytes())
                                .bind(r.until)
                                .execute(&mut *tx)
                                .await?;
                        }
                        None => {
                            sqlx::query(AssertSqlSafe(sql.delete_res.clone()))
                                .bind(ns.as_str().as_bytes())
                                .bind(name.as_bytes())
                                .execute(&mut *tx)
                                .await?;
                        }
                    }
                }
                if snap.counter_dirty {
                    sqlx::query(AssertSqlSafe(sql.set_counter.clone()))
                        .bind(snap.counter.unwrap_or(0))
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                Ok(Ok(out))
            }
            .await;
            match attempt {
                Ok(out) => return out,
                Err(e) if is_conflict(&e) && tries < CONFLICT_RETRIES => {
                    tries += 1;
                    tokio::time::sleep(jitter(pause)).await;
                    pause = (pause * 2).min(POLL_CAP);
                }
                Err(e) => return Err(map_err(e, "transaction")),
            }
        }
    }

    async fn release(
        &self,
        ns: &Namespace,
        name: &LockName,
        token: &Token,
        min_hold: Option<Duration>,
    ) -> Result<Released> {
        let off = self.offset.load(Ordering::SeqCst);
        let row = retrying(|| {
            sqlx::query(AssertSqlSafe(self.sql.call_release.clone()))
                .bind(ns.as_str().as_bytes())
                .bind(name.as_str().as_bytes())
                .bind(token.expose().as_bytes())
                .bind(min_hold.map(dur_us))
                .bind(off)
                .fetch_all(&self.pool)
        })
        .await
        .map_err(|e| map_err(e, "release"))?;
        let status = first_int(&row, 0)?;
        let out = match status {
            0 => Released::Released,
            1 => Released::Kept,
            _ => Released::NotHeld,
        };
        if out != Released::NotHeld {
            self.hub.notify(ns, name);
        }
        Ok(out)
    }
}

fn first_int(rows: &[MySqlRow], i: usize) -> Result<i64> {
    let r = rows
        .first()
        .ok_or_else(|| Error::store(KIND, true, "MySQL procedure returned no result"))?;
    int(r, i)
        .map_err(|e| map_err(e, "decode"))?
        .ok_or_else(|| Error::store(KIND, false, "MySQL procedure returned NULL"))
}

/// The background task of a store: detached releases (retried for a while), garbage
/// sweeps, and `close`'s flush.
async fn background(shared: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<Job>) {
    while let Some(job) = rx.recv().await {
        match job {
            Job::Release(ns, name, token, min_hold) => {
                let mut pause = Duration::from_millis(10);
                for _ in 0..8 {
                    match shared.release(&ns, &name, &token, min_hold).await {
                        Err(e) if e.is_retryable() => {
                            tokio::time::sleep(jitter(pause)).await;
                            pause = (pause * 2).min(Duration::from_secs(1));
                        }
                        Err(e) => {
                            tracing::warn!(lock = %name, error = %e, "MySQL release failed; the lease will expire");
                            break;
                        }
                        Ok(_) => break,
                    }
                }
            }
            Job::Sweep => match sweep(&shared).await {
                // a full batch: more garbage may be waiting; the next grant sweeps again
                Ok(64..) => *shared.last_sweep.lock().unwrap_or_else(|e| e.into_inner()) = None,
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(error = %scrub(&e.to_string()), "MySQL garbage sweep failed");
                }
            },
            Job::Flush(done) => {
                let _ = done.send(());
            }
        }
    }
}

/// Removes up to 64 rows that expired more than `retain` ago, and lapsed reservations.
async fn sweep(shared: &Shared) -> std::result::Result<usize, sqlx::Error> {
    let off = shared.offset.load(Ordering::SeqCst);
    let retain = shared.retain_us.load(Ordering::SeqCst);
    let sql = &shared.sql;
    let rows = sqlx::query(AssertSqlSafe(sql.sweep_rows.clone()))
        .bind(off)
        .bind(retain)
        .fetch_all(&shared.pool)
        .await?;
    let found = rows.len();
    for r in rows {
        let (ns, name): (Vec<u8>, Vec<u8>) = (r.try_get(0)?, r.try_get(1)?);
        sqlx::query(AssertSqlSafe(sql.sweep_row.clone()))
            .bind(ns)
            .bind(name)
            .bind(off)
            .bind(retain)
            .execute(&shared.pool)
            .await?;
    }
    let rows = sqlx::query(AssertSqlSafe(sql.sweep_res.clone()))
        .bind(off)
        .fetch_all(&shared.pool)
        .await?;
    for r in rows {
        let (ns, name): (Vec<u8>, Vec<u8>) = (r.try_get(0)?, r.try_get(1)?);
        sqlx::query(AssertSqlSafe(sql.sweep_one_res.clone()))
            .bind(ns)
            .bind(name)
            .bind(off)
            .execute(&shared.pool)
            .await?;
    }
    Ok(found)
}

fn decode(e: sqlx::Error) -> Error {
    map_err(e, "decode")
}

#[async_trait]
impl Store for MySqlStore {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn identity(&self) -> String {
        self.shared.identity.clone()
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
        let sh = &self.shared;
        let answer = self.try_acquire_inner(ns, claim).await;
        let mut waiting = sh.waiting.lock().unwrap_or_else(|e| e.into_inner());
        if matches!(answer, Ok(Grant::Held(_))) {
            if waiting.len() >= 4096 {
                waiting.clear(); // tokens that stopped trying; forgetting costs one write
            }
            waiting.insert(claim.token.clone());
        } else {
            waiting.remove(&claim.token);
        }
        answer
    }

    async fn try_acquire_all(&self, ns: &Namespace, claims: &[Claim]) -> Result<GrantAll> {
        let names: Vec<&str> = claims.iter().map(|c| c.name.as_str()).collect();
        let claims = claims.to_vec();
        let answer = self
            .shared
            .snapshot(ns, &names, move |t| rows::try_acquire_all(t, &claims))
            .await?;
        Ok(answer)
    }

    async fn release(
        &self,
        ns: &Namespace,
        name: &LockName,
        token: &Token,
        min_hold: Option<Duration>,
    ) -> Result<Released> {
        self.shared.release(ns, name, token, min_hold).await
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
        let sh = &self.shared;
        let (m, d) = match mode {
            ExtendMode::Set(d) => (0, d),
            ExtendMode::Add(d) => (1, d),
            ExtendMode::AtLeast(d) => (2, d),
        };
        let off = self.off();
        let rows = retrying(|| {
            sqlx::query(AssertSqlSafe(sh.sql.call_extend.clone()))
                .bind(ns.as_str().as_bytes())
                .bind(name.as_str().as_bytes())
                .bind(token.expose().as_bytes())
                .bind(m)
                .bind(dur_us(d))
                .bind(off)
                .fetch_all(&sh.pool)
        })
        .await
        .map_err(|e| map_err(e, "extend"))?;
        match first_int(&rows, 0)? {
            0 => {
                let left = int(&rows[0], 1).map_err(decode)?.unwrap_or(0);
                let shortened = int(&rows[0], 2).map_err(decode)? == Some(1);
                if shortened {
                    sh.hub.notify(ns, name);
                }
                Ok(Extended::Extended {
                    expires_in: Duration::from_micros(u64::try_from(left).unwrap_or(0)),
                })
            }
            2 => Ok(Extended::NotExpirable),
            _ => Ok(Extended::NotHeld),
        }
    }

    async fn held_by(
        &self,
        ns: &Namespace,
        name: &LockName,
        token: &Token,
    ) -> Result<Option<LockInfo>> {
        let r = sqlx::query(AssertSqlSafe(self.shared.sql.held_by.clone()))
            .bind(self.off())
            .bind(ns.as_str().as_bytes())
            .bind(name.as_str().as_bytes())
            .bind(token.expose().as_bytes())
            .fetch_one(&self.shared.pool)
            .await
            .map_err(|e| map_err(e, "held_by"))?;
        let now = int(&r, 0).map_err(decode)?.unwrap_or(0);
        Ok(row_at(&r, 1)
            .map_err(decode)?
            .filter(|row| row.held_by(token, now))
            .map(|row| row.info(name.as_str(), now, UNIX_EPOCH)))
    }

    async fn inspect(&self, ns: &Namespace, name: &LockName) -> Result<Option<LockInfo>> {
        let r = sqlx::query(AssertSqlSafe(self.shared.sql.inspect.clone()))
            .bind(self.off())
            .bind(ns.as_str().as_bytes())
            .bind(name.as_str().as_bytes())
            .fetch_one(&self.shared.pool)
            .await
            .map_err(|e| map_err(e, "inspect"))?;
        let now = int(&r, 0).map_err(decode)?.unwrap_or(0);
        Ok(row_at(&r, 1)
            .map_err(decode)?
            .map(|row| row.info(name.as_str(), now, UNIX_EPOCH)))
    }

    async fn list(&self, ns: &Namespace, query: &ListQuery) -> Result<Page> {
        let expired: i32 = match query.expired {
            Expired::Exclude => 0,
            Expired::Include => 1,
            _ => 2,
        };
        // Names sort after "" only if non-empty, and every name is.
        let after: Vec<u8> = query
            .after
            .as_ref()
            .map(|c| c.as_str().as_bytes().to_vec())
            .unwrap_or_default();
        let limit = i64::try_from(query.limit).unwrap_or(i64::MAX - 1) + 1;
        let rows = sqlx::query(AssertSqlSafe(self.shared.sql.list.clone()))
            .bind(self.off())
            .bind(ns.as_str().as_bytes())
            .bind(after)
            .bind(sql::like_prefix(&query.prefix))
            .bind(expired)
            .bind(limit)
            .fetch_all(&self.shared.pool)
            .await
            .map_err(|e| map_err(e, "list"))?;
        let mut items = Vec::with_capacity(rows.len());
        for r in &rows {
            let now = int(r, 0).map_err(decode)?.unwrap_or(0);
            let name = text(r, 1).map_err(decode)?.unwrap_or_default();
            if let Some(row) = row_at(r, 2).map_err(decode)? {
                items.push(row.info(&name, now, UNIX_EPOCH));
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

    async fn force_release(&self, ns: &Namespace, names: &[LockName]) -> Result<Vec<bool>> {
        let sh = &self.shared;
        let off = self.off();
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            let live = retrying(|| {
                sqlx::query(AssertSqlSafe(sh.sql.force_live.clone()))
                    .bind(ns.as_str().as_bytes())
                    .bind(name.as_str().as_bytes())
                    .bind(off)
                    .execute(&sh.pool)
            })
            .await
            .map_err(|e| map_err(e, "clear"))?
            .rows_affected()
                > 0;
            retrying(|| {
                sqlx::query(AssertSqlSafe(sh.sql.force_any.clone()))
                    .bind(ns.as_str().as_bytes())
                    .bind(name.as_str().as_bytes())
                    .execute(&sh.pool)
            })
            .await
            .map_err(|e| map_err(e, "clear"))?;
            sh.hub.notify(ns, name);
            out.push(live);
        }
        Ok(out)
    }

    async fn reset_all(&self, ns: &Namespace) -> Result<u64> {
        let sh = &self.shared;
        let n = retrying(|| {
            sqlx::query(AssertSqlSafe(sh.sql.reset_all.clone()))
                .bind(ns.as_str().as_bytes())
                .execute(&sh.pool)
        })
        .await
        .map_err(|e| map_err(e, "reset_all"))?
        .rows_affected();
        sh.hub.notify_namespace(ns);
        Ok(n)
    }

    async fn purge_expired(&self, ns: &Namespace) -> Result<u64> {
        let sh = &self.shared;
        let off = self.off();
        let n = retrying(|| {
            sqlx::query(AssertSqlSafe(sh.sql.purge.clone()))
                .bind(ns.as_str().as_bytes())
                .bind(off)
                .execute(&sh.pool)
        })
        .await
        .map_err(|e| map_err(e, "purge_expired"))?
        .rows_affected();
        Ok(n)
    }

    async fn set_locks(
        &self,
        ns: &Namespace,
        claims: &[Claim],
        policy: &SetPolicy,
    ) -> Result<SetOutcome> {
        let names: Vec<&str> = claims.iter().map(|c| c.name.as_str()).collect();
        let (claims, policy) = (claims.to_vec(), policy.clone());
        self.shared
            .snapshot(ns, &names, move |t| rows::set_locks(t, &claims, &policy))
            .await
    }

    async fn subscribe(&self, ns: &Namespace, name: &LockName) -> Result<Wakeups> {
        // This process's releases wake its waiters; other processes are polled.
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
