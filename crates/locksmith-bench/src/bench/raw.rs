//! Raw baselines: the same work with the same driver and no locksmith.
//!
//! - memory: a `HashMap` behind a `std::sync::Mutex` (name → token and fence);
//! - SQLite: rusqlite on a file of its own with locksmith's schema, WAL and
//!   `synchronous = NORMAL`, and the statements a grant and a release cannot do without
//!   (store/sqlite.rs): a grant is `BEGIN IMMEDIATE`, the row's `SELECT`, the fence
//!   counter's `INSERT … ON CONFLICT … RETURNING`, the row's `INSERT OR REPLACE`, `COMMIT`;
//!   a release is `BEGIN IMMEDIATE`, `SELECT`, `DELETE`, `COMMIT`. Run directly on the
//!   caller's thread — as locksmith runs an uncontended call, so that is the comparison —
//!   and, shown beside it, on a dedicated thread answering through a oneshot channel (what
//!   an async caller of a blocking driver usually does, and locksmith did until session 9);
//! - Redis: redis-rs's `ConnectionManager` (the store's driver and connection), a grant is
//!   `SET key token NX PX 60000`, a release the usual compare-and-delete script by
//!   `EVALSHA` — one round trip each, no fence, no holder metadata, no wake-ups.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use tokio::sync::oneshot;

/// locksmith's SQLite schema (version 2), so the statements touch the same tables and
/// indexes.
const SCHEMA: &str = "
PRAGMA journal_mode = WAL;
CREATE TABLE IF NOT EXISTS locksmith_locks (
    namespace TEXT NOT NULL, name TEXT NOT NULL, token TEXT, owner TEXT NOT NULL,
    host TEXT NOT NULL, pid INTEGER NOT NULL, fence INTEGER NOT NULL,
    acquired_at INTEGER NOT NULL, expires_at INTEGER, min_hold INTEGER,
    PRIMARY KEY (namespace, name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS locksmith_fence (id INTEGER PRIMARY KEY CHECK (id = 0), value INTEGER NOT NULL);
INSERT OR IGNORE INTO locksmith_fence (id, value) VALUES (0, 0);
CREATE INDEX IF NOT EXISTS locksmith_locks_expires_at ON locksmith_locks (expires_at)
    WHERE expires_at IS NOT NULL;
PRAGMA synchronous = NORMAL;
";

fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// The memory baseline.
#[derive(Debug, Default)]
pub(crate) struct RawMemory {
    map: Mutex<HashMap<String, (u128, u64)>>,
    fence: Mutex<u64>,
}

impl RawMemory {
    pub(crate) fn acquire(&self, name: &str, token: u128) -> bool {
        let mut map = self.map.lock().expect("raw map");
        if map.contains_key(name) {
            return false;
        }
        let fence = {
            let mut f = self.fence.lock().expect("raw fence");
            *f += 1;
            *f
        };
        map.insert(name.to_string(), (token, fence));
        true
    }

    pub(crate) fn release(&self, name: &str, token: u128) -> bool {
        let mut map = self.map.lock().expect("raw map");
        match map.get(name) {
            Some((t, _)) if *t == token => {
                map.remove(name);
                true
            }
            _ => false,
        }
    }
}

/// The SQLite baseline's connection.
pub(crate) struct RawSqlite {
    conn: Connection,
}

impl RawSqlite {
    pub(crate) fn open(path: &Path) -> rusqlite::Result<RawSqlite> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(Duration::from_secs(10))?;
        conn.execute_batch(SCHEMA)?;
        Ok(RawSqlite { conn })
    }

    pub(crate) fn acquire(&mut self, name: &str, token: u128) -> rusqlite::Result<bool> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let now = now_micros();
        let row: Option<Option<i64>> = tx
            .prepare_cached(
                "SELECT expires_at FROM locksmith_locks WHERE namespace = ?1 AND name = ?2",
            )?
            .query_row(params!["", name], |r| r.get(0))
            .optional()?;
        if row.is_some_and(|e| e.is_none_or(|e| e > now)) {
            return Ok(false);
        }
        let fence: i64 = tx
            .prepare_cached(
                "INSERT INTO locksmith_fence (id, value) VALUES (0, max(?1, 1))
                 ON CONFLICT (id) DO UPDATE SET value = max(value + 1, excluded.value)
                 RETURNING value",
            )?
            .query_row([now], |r| r.get(0))?;
        tx.prepare_cached(
            "INSERT OR REPLACE INTO locksmith_locks
             (namespace, name, token, owner, host, pid, fence, acquired_at, expires_at, min_hold)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )?
        .execute(params![
            "",
            name,
            format!("{token:032x}"),
            "bench",
            "host",
            1,
            fence,
            now,
            now + 60_000_000,
            None::<i64>
        ])?;
        tx.commit()?;
        Ok(true)
    }

    pub(crate) fn release(&mut self, name: &str, token: u128) -> rusqlite::Result<bool> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let held: Option<Option<String>> = tx
            .prepare_cached("SELECT token FROM locksmith_locks WHERE namespace = ?1 AND name = ?2")?
            .query_row(params!["", name], |r| r.get(0))
            .optional()?;
        let mine = held.flatten() == Some(format!("{token:032x}"));
        if mine {
            tx.prepare_cached("DELETE FROM locksmith_locks WHERE namespace = ?1 AND name = ?2")?
                .execute(params!["", name])?;
        }
        tx.commit()?;
        Ok(mine)
    }
}

type Job = Box<dyn FnOnce(&mut RawSqlite) + Send>;

/// The SQLite baseline on a dedicated thread, answering through oneshot channels.
#[derive(Clone)]
pub(crate) struct RawSqliteThread {
    jobs: mpsc::Sender<Job>,
}

impl RawSqliteThread {
    pub(crate) fn start(path: &Path) -> rusqlite::Result<RawSqliteThread> {
        let mut raw = RawSqlite::open(path)?;
        let (jobs, rx) = mpsc::channel::<Job>();
        std::thread::spawn(move || {
            for job in rx {
                job(&mut raw);
            }
        });
        Ok(RawSqliteThread { jobs })
    }

    async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut RawSqlite) -> T + Send + 'static,
    ) -> T {
        let (tx, rx) = oneshot::channel();
        self.jobs
            .send(Box::new(move |raw| {
                let _ = tx.send(f(raw));
            }))
            .expect("raw SQLite thread");
        rx.await.expect("raw SQLite thread answers")
    }
}

/// A raw baseline as an async caller sees it.
#[derive(Clone)]
pub(crate) enum Raw {
    Memory(Arc<RawMemory>),
    /// On the caller's thread.
    SqliteDirect(Arc<Mutex<RawSqlite>>),
    /// On a dedicated thread.
    SqliteThread(RawSqliteThread),
    /// Redis, same driver as the store.
    Redis(RawRedis),
    /// sqlx on a MySQL/MariaDB server.
    MySql(super::raw_mysql::RawMySql),
    /// PostgreSQL: the store's own statements, sent directly.
    Postgres(Arc<RawPostgres>),
}

impl Raw {
    pub(crate) async fn acquire(&self, name: &str, token: u128) -> bool {
        match self {
            Raw::Memory(m) => m.acquire(name, token),
            Raw::SqliteDirect(s) => s
                .lock()
                .expect("raw sqlite")
                .acquire(name, token)
                .expect("raw acquire"),
            Raw::SqliteThread(t) => {
                let name = name.to_string();
                t.call(move |s| s.acquire(&name, token).expect("raw acquire"))
                    .await
            }
            Raw::Redis(r) => r.acquire(name, token).await,
            Raw::MySql(m) => m.acquire(name, token).await,
            Raw::Postgres(p) => p.acquire(name, token).await,
        }
    }

    pub(crate) async fn release(&self, name: &str, token: u128) -> bool {
        match self {
            Raw::Memory(m) => m.release(name, token),
            Raw::SqliteDirect(s) => s
                .lock()
                .expect("raw sqlite")
                .release(name, token)
                .expect("raw release"),
            Raw::SqliteThread(t) => {
                let name = name.to_string();
                t.call(move |s| s.release(&name, token).expect("raw release"))
                    .await
            }
            Raw::Redis(r) => r.release(name, token).await,
            Raw::MySql(m) => m.release(name, token).await,
            Raw::Postgres(p) => p.release(name, token).await,
        }
    }
}

/// The Redis baseline.
#[derive(Clone)]
pub(crate) struct RawRedis {
    conn: redis::aio::ConnectionManager,
    release: Arc<redis::Script>,
}

impl RawRedis {
    /// Connects to the server of a locksmith `redis://` URL (its query is locksmith's).
    pub(crate) async fn open(url: &str) -> redis::RedisResult<RawRedis> {
        let base = url.split_once('?').map_or(url, |(b, _)| b);
        let client = redis::Client::open(base)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_response_timeout(Some(Duration::from_secs(5)))
            .set_connection_timeout(Some(Duration::from_secs(5)));
        let conn = redis::aio::ConnectionManager::new_with_config(client, config).await?;
        let release = redis::Script::new(
            "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end",
        );
        Ok(RawRedis {
            conn,
            release: Arc::new(release),
        })
    }

    async fn acquire(&self, name: &str, token: u128) -> bool {
        let got: Option<String> = redis::cmd("SET")
            .arg(format!("rawbench:{name}"))
            .arg(format!("{token:032x}"))
            .arg("NX")
            .arg("PX")
            .arg(60_000)
            .query_async(&mut self.conn.clone())
            .await
            .expect("raw SET NX PX");
        got.is_some()
    }

    async fn release(&self, name: &str, token: u128) -> bool {
        let n: i64 = self
            .release
            .key(format!("rawbench:{name}"))
            .arg(format!("{token:032x}"))
            .invoke_async(&mut self.conn.clone())
            .await
            .expect("raw compare-and-delete");
        n == 1
    }

    /// `PUBLISH`es `payload` on `channel`; returns how many subscribers got it.
    pub(crate) async fn publish(&self, channel: &str, payload: &str) -> i64 {
        redis::cmd("PUBLISH")
            .arg(channel)
            .arg(payload)
            .query_async(&mut self.conn.clone())
            .await
            .expect("raw PUBLISH")
    }

    /// One `PING`: a bare round trip on the same connection.
    pub(crate) async fn ping(&self) {
        let _: String = redis::cmd("PING")
            .query_async(&mut self.conn.clone())
            .await
            .expect("raw PING");
    }

    /// Calls per command from `INFO commandstats`: `(requests, inside scripts)` — what
    /// clients sent (EVALSHA, SUBSCRIBE, INFO, …) and what the store's scripts ran
    /// (`redis.call`, which Redis counts as commands too).
    pub(crate) async fn command_calls(&self) -> (f64, f64) {
        const IN_SCRIPTS: &[&str] = &[
            "time", "exists", "hget", "hmget", "pttl", "get", "set", "hset", "pexpire", "del",
            "hdel", "publish", "spublish", "persist", "zadd", "zrange", "zrem",
        ];
        let text: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut self.conn.clone())
            .await
            .expect("raw INFO commandstats");
        let (mut outside, mut inside) = (0.0, 0.0);
        for line in text.lines() {
            let Some(rest) = line.strip_prefix("cmdstat_") else {
                continue;
            };
            let Some((name, stats)) = rest.split_once(':') else {
                continue;
            };
            let calls: f64 = stats
                .split(',')
                .find_map(|f| f.strip_prefix("calls="))
                .and_then(|c| c.parse().ok())
                .unwrap_or(0.0);
            if IN_SCRIPTS.contains(&name) {
                inside += calls;
            } else {
                outside += calls;
            }
        }
        (outside, inside)
    }

    /// The server's CPU time so far (user + system, every thread) from `INFO cpu`, in µs:
    /// what a cycle costs the server, compared between the baseline and locksmith.
    pub(crate) async fn server_cpu_us(&self) -> f64 {
        (self.info_field("used_cpu_user").await + self.info_field("used_cpu_sys").await) * 1e6
    }

    /// A server figure from `INFO` (e.g. `total_commands_processed`, `used_memory`).
    pub(crate) async fn info_field(&self, field: &str) -> f64 {
        let text: String = redis::cmd("INFO")
            .query_async(&mut self.conn.clone())
            .await
            .expect("raw INFO");
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{field}:")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    }
}

/// The PostgreSQL baseline: one tokio-postgres connection (pipelined, shared by every task)
/// sending exactly the statements locksmith's store sends for a grant and a release — a
/// call of the table's `_acquire` and `_release` functions (one round trip each, unnamed
/// statements through `query_typed`) — in a namespace of its own, with no pool, timeout,
/// retry, waiter queue or guard.
pub(crate) struct RawPostgres {
    client: tokio_postgres::Client,
    ns: String,
}

impl RawPostgres {
    /// Connects to `url` (a plain PostgreSQL URL: no locksmith parameters); the table must
    /// exist (locksmith's store has created it).
    pub(crate) async fn connect(url: &str) -> Result<RawPostgres, tokio_postgres::Error> {
        let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(RawPostgres {
            client,
            ns: format!("bench-raw-{}", uuid::Uuid::new_v4().simple()),
        })
    }

    /// One `SELECT 1`: a bare round trip on the same connection.
    pub(crate) async fn ping(&self) {
        self.client
            .query_typed("SELECT 1", &[])
            .await
            .expect("raw SELECT 1");
    }

    /// `pg_notify(channel, payload)` in its own transaction (sent at its commit).
    pub(crate) async fn notify(&self, channel: &str, payload: &str) {
        use tokio_postgres::types::Type;
        self.client
            .query_typed(
                "SELECT pg_notify($1, $2)::text",
                &[(&channel, Type::TEXT), (&payload, Type::TEXT)],
            )
            .await
            .expect("raw NOTIFY");
    }

    pub(crate) async fn acquire(&self, name: &str, token: u128) -> bool {
        use tokio_postgres::types::Type;
        let token = uuid::Uuid::from_u128(token).to_string();
        let ttl: i64 = 60_000_000;
        let (pid, offset, min_hold) = (1i64, 0i64, None::<i64>);
        // The statement locksmith sends: the current acquire function. locksmith's waiting
        // acquire passes mode 1 with its grant id and inbox, which only matter when the
        // lock is held (the waiter is queued); on a free lock the function does the same
        // work with mode 0. Version 1's nine-parameter form is a wrapper around it and would
        // cost the baseline a function call more.
        let (mode, grant_id, inbox) = (0i32, "", 0i32);
        let rows = self
            .client
            .query_typed(
                "SELECT * FROM \"public\".\"locksmith_locks_acquire\"($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
                &[
                    (&self.ns, Type::TEXT),
                    (&name, Type::TEXT),
                    (&token, Type::TEXT),
                    (&"raw", Type::TEXT),
                    (&"host", Type::TEXT),
                    (&pid, Type::INT8),
                    (&ttl, Type::INT8),
                    (&min_hold, Type::INT8),
                    (&offset, Type::INT8),
                    (&mode, Type::INT4),
                    (&grant_id, Type::TEXT),
                    (&inbox, Type::INT4),
                ],
            )
            .await
            .expect("raw acquire");
        rows[0].get::<_, i32>(0) == 0
    }

    pub(crate) async fn release(&self, name: &str, token: u128) -> bool {
        use tokio_postgres::types::Type;
        let token = uuid::Uuid::from_u128(token).to_string();
        let (offset, min_hold) = (0i64, None::<i64>);
        let rows = self
            .client
            .query_typed(
                "SELECT \"public\".\"locksmith_locks_release\"($1, $2, $3, $4, $5)",
                &[
                    (&self.ns, Type::TEXT),
                    (&name, Type::TEXT),
                    (&token, Type::TEXT),
                    (&min_hold, Type::INT8),
                    (&offset, Type::INT8),
                ],
            )
            .await
            .expect("raw release");
        rows[0].get::<_, i32>(0) == 0
    }
}
