//! The PostgreSQL store (`postgres://user:password@host:port/db`, also `postgresql://`).
//!
//! # How it works
//!
//! - **Layout.** One table, `locksmith_locks` (`?table=`, `?schema=`, both validated
//!   identifiers of lowercase ASCII letters, digits and `_`), keyed by `(namespace, name)` in
//!   `COLLATE "C"`: names compare byte by byte (`A`/`a`, `a`/`a ` are different locks) and
//!   `list` returns them in byte order. Beside it: `<table>_meta` (schema version, fence
//!   floor), `<table>_queue` (waiters queued for pushed grants) and three PL/pgSQL
//!   functions, `<table>_acquire`, `<table>_release` and
//!   `<table>_extend`, so a grant, a release and an extend are each **one statement, one
//!   round trip**. Times are `int8` microseconds since the Unix epoch.
//! - **Migration.** On open, the store reads the schema version; when the table is missing
//!   or older, it migrates inside one transaction holding `pg_advisory_xact_lock` (a
//!   transaction-scoped lock, so no session state is left behind), which makes many
//!   processes starting at once safe. A table from a newer locksmith is refused.
//! - **Clock.** Expiry uses the server's `clock_timestamp()` (not `now()`, the
//!   transaction's start), never a client's clock.
//! - **Fences.** [`hybrid_fence`](super::hybrid_fence)s, minted inside `<table>_acquire`
//!   *after* the row is locked (`SELECT … FOR UPDATE`, creating a free placeholder row first
//!   when the name has none): `max(row fence + 1, clock, floor + 1)`. A release keeps the
//!   row (marked `freed`, invisible to reads) so its fence survives; rows deleted by `clear`,
//!   `reset_all`, `purge_expired` or the garbage sweep raise the table's fence floor in the
//!   same statement. So fences increase per name even when the server's clock steps back.
//! - **Connections.** tokio-postgres over a small deadpool pool. Single statements go to a
//!   few pooled clients *shared* by every task (tokio-postgres pipelines concurrent queries
//!   on one connection); transactions (`acquire_all`, `set_locks`, migration) take a client
//!   of their own. Statements are unnamed (`query_typed`): no prepared statements, advisory
//!   locks or temp tables on the pooled connections, so nothing depends on their session
//!   state and a transaction-mode pooler in between does no harm (only the listener's own
//!   connection, which `LISTEN` needs anyway, holds a session lock: see below). A closed connection is replaced on the next call;
//!   connecting again backs off (10 ms doubling to 1 s) while the server is unreachable.
//!   Deadlocks (`40P01`) and serialization failures (`40001`) are retried; I/O errors,
//!   closed connections, a server shutting down or not accepting connections are retryable
//!   [`Error::Store`]s.
//! - **Waiting: pushed grants.** Each store keeps one dedicated listener connection
//!   outside the pool, opened on the first `subscribe` (a waiter's, or a guard's: every
//!   guard watches its name for a `clear`), that serves every waiter of the store through a
//!   [`WakeHub`]. It disconnects once nothing has subscribed for 5 s, and the next
//!   `subscribe` connects again: every listening backend is woken by each notification in
//!   the database, so a process that stopped waiting and holding stops listening. It `LISTEN`s on the table's channel (`locksmith_<hash>`,
//!   under the 63-byte limit; the payload names the namespace and the lock) and on its own
//!   inbox, `<channel>_<pid>`, where `pid` is the listener's backend pid. A waiter whose
//!   try finds the lock held joins the name's queue (`<table>_queue`, in the same
//!   statement as the try, with its last try's time and its inbox), and a release hands the
//!   lock to the first waiter queued in the same statement: the lock is never free in
//!   between, waiters are served in the order they first tried, and the new holder learns
//!   of its grant from a notification to its inbox (`id fence µs-since-its-last-try`),
//!   delivered at the release's commit, with no try of its own. When the new holder waits
//!   in the releasing process (tasks taking turns), nothing is notified: the release names
//!   its own inbox and answers with the grant, which the waiter takes at once. A release skips a waiter
//!   that has not tried for 5 s (waiters re-poll at least once a second) or whose
//!   listener no longer holds its advisory lock (a session lock on `(hash of the channel,
//!   pid)`, taken when it starts listening: its process died). A waiter that
//!   leaves takes itself off the queue by releasing its token, which also hands on a grant
//!   that reached it too late. A release with nobody queued notifies the table's channel,
//!   in the same transaction, only if the row is marked `watched`: a waiting try that found
//!   it held marks it (an `acquire_all`, or a waiter whose listener is not listening yet,
//!   is not queued and waits for that wake-up), and the release that frees the row clears
//!   the mark. PostgreSQL up to version 18 signals every listening backend of the database
//!   at each commit that notifies, one per process with a store that waited, so an
//!   uncontended release notifies nobody. After the listener reconnects (a new inbox), every waiter
//!   re-polls and queues again (notifications sent while it was away are lost). Waiters in
//!   every process are notified, so `poll_interval` is `None`.
//! - **Garbage.** Every 64th grant of a store sweeps, in the background, up to 64 rows (of
//!   any namespace) that expired or were released more than `?retain=` ago (default 1 h),
//!   found through the index on `expires_at` in expiry order, so a sweep costs a few index
//!   pages however many retained rows the table holds.
//! - **Behind a pooler.** A transaction-mode pooler (PgBouncer's `pool_mode = transaction`)
//!   hands each transaction to any server connection, so `LISTEN` and the listener's
//!   session lock cannot go through it. Point the listener at the server itself with
//!   `?listen=host:port` (or an absolute Unix socket directory; port 5432 unless given,
//!   and the URL's user, password, database and TLS settings), or switch it off with
//!   `?listen=off`: waiters then poll (25 ms backoff cap) and nothing is pushed. Every
//!   other statement goes through the pooler unchanged; the test kit runs the whole
//!   conformance suite through a real PgBouncer in transaction mode.
//! - **Credentials.** The URL's password never appears in errors, `Debug` or logs.
//! - **Layouts.** `?layout=django-lockmgr` keeps the locks in a Django project's
//!   `lockmgr_lock` table instead, shared with django-lockmgr's Python code (module
//!   `lockmgr` of this store: plain SQL transactions, no functions, a side table of its own).

mod lockmgr;
mod sql;

/// The pool crate [`PostgresStore::from_pool`] takes (re-exported, so versions match).
pub use deadpool_postgres;
/// The driver (re-exported, for [`PoolOptions::listen`]'s `Config`).
pub use tokio_postgres;

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicI32, AtomicI64, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, UNIX_EPOCH};

use async_trait::async_trait;
use deadpool_postgres::{
    Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod, Runtime,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{AsyncMessage, Config, Row as PgRow};

use super::rows::{self, DEFAULT_RETAIN, Row, Table, micros};
use super::{
    Capabilities, Claim, ExtendMode, Extended, Grant, GrantAll, PushedGrant, Released, Store,
    Successor, WakeHub, Wakeups, handed,
};
use crate::error::{Error, Result};
use crate::info::LockInfo;
use crate::lease::Token;
use crate::name::{LockName, Namespace};
use crate::options::{Cursor, Expired, ListQuery, Page, SetOutcome, SetPolicy};
use crate::url::StoreUrl;
use sql::Statements;

const KIND: &str = "postgres";

/// The table used when the URL gives no `?table=`.
pub const DEFAULT_TABLE: &str = "locksmith_locks";
/// The schema used when the URL gives no `?schema=`.
pub const DEFAULT_SCHEMA: &str = "public";

/// The longest `?table=` accepted: room for the `_meta`, `_acquire`… suffixes within
/// PostgreSQL's 63-byte identifiers.
const MAX_TABLE_LEN: usize = 48;

/// Pipelined clients shared by single-statement calls.
const SHARED_CLIENTS: usize = 2;
/// The pool's size: the shared clients, clients still draining after being replaced, and
/// room for a few transactions at once.
const POOL_SIZE: usize = 8;

/// Every this many grants, one background garbage sweep.
const SWEEP_EVERY: u32 = 64;

/// Retries of a statement that hit a deadlock or a serialization failure.
const CONFLICT_RETRIES: u32 = 8;

/// How long `subscribe` waits for the listener to be listening before it fails (the
/// waiter then polls).
const LISTEN_WAIT: Duration = Duration::from_secs(2);

/// How long the listener stays connected once nothing of its store waits for or holds a
/// lock: PostgreSQL up to 18 wakes every listening backend of the database at each
/// notifying commit, so a process that stopped waiting should stop listening. The next wait
/// or grant connects again.
const LISTEN_LINGER: Duration = Duration::from_secs(5);

/// The reconnect backoff's first and longest pause.
const BACKOFF_MIN: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Test clock offsets per store identity (microseconds), see [`step_clock`].
fn clock_offsets() -> &'static Mutex<HashMap<String, Arc<AtomicI64>>> {
    static OFFSETS: OnceLock<Mutex<HashMap<String, Arc<AtomicI64>>>> = OnceLock::new();
    OFFSETS.get_or_init(Mutex::default)
}

fn clock_offset(identity: &str) -> Arc<AtomicI64> {
    clock_offsets()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(identity.to_string())
        .or_default()
        .clone()
}

/// Test hook: steps the store clock of every store of this process whose
/// [`identity`](Store::identity) is `identity` by `micros` (negative: back), for expiry and
/// fences — as a clock step on the database host would. Other processes are not affected.
pub fn step_clock(identity: &str, micros: i64) {
    clock_offset(identity).fetch_add(micros, Ordering::SeqCst);
}

/// The [`identity`](Store::identity) a `postgres://` URL's store will have, without
/// connecting (for [`step_clock`]).
///
/// # Errors
///
/// [`Error::Config`] as [`Locksmith::connect`](crate::Locksmith::connect) would give.
pub fn identity_of(url: &str) -> Result<String> {
    let mut parsed = StoreUrl::parse(url)?;
    Ok(Settings::parse(&mut parsed)?.identity)
}

/// TLS as the URL's `?sslmode=` asks.
#[derive(Clone)]
enum Tls {
    Plain,
    #[cfg(feature = "postgres-tls")]
    Rustls(tokio_postgres_rustls::MakeRustlsConnect),
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Tls::Plain => f.write_str("Plain"),
            #[cfg(feature = "postgres-tls")]
            Tls::Rustls(_) => f.write_str("Rustls"),
        }
    }
}

/// What the URL says, parsed and validated.
struct Settings {
    config: Config,
    tls: Tls,
    schema: String,
    table: String,
    retain: Duration,
    identity: String,
    redacted: String,
    timeout: Duration,
    /// `?layout=django-lockmgr`: Django's `lockmgr_lock` table (see [`lockmgr`]).
    lockmgr: bool,
    /// Where the listener connects (`?listen=`).
    listen: Listen,
}

/// Where the store's listener connection goes (`?listen=`).
#[derive(Clone, Debug, PartialEq)]
enum Listen {
    /// The URL's own host and port.
    Same,
    /// No listener: waiters poll.
    Off,
    /// Another host (a name, an address, or a Unix socket directory) and port: the server
    /// itself, when the URL names a transaction-mode pooler, which cannot carry `LISTEN`.
    At { host: String, port: u16 },
}

impl Listen {
    /// Parses `?listen=`: `off`, `host`, `host:port`, `[v6-address]:port` or an absolute
    /// Unix socket directory (port 5432 unless given).
    fn parse(url: &StoreUrl, value: Option<String>) -> Result<Listen> {
        let Some(value) = value else {
            return Ok(Listen::Same);
        };
        let bad = |why: &str| {
            Error::config(format!(
                "store URL {:?}: listen={value:?} {why} — write listen=host:port (the server itself, bypassing a pooler), listen=/unix/socket/dir, or listen=off (waiters poll)",
                url.redacted()
            ))
        };
        if value == "off" {
            return Ok(Listen::Off);
        }
        if value.starts_with('/') {
            return Ok(Listen::At {
                host: value.clone(),
                port: 5432,
            });
        }
        let (host, port) = if let Some(rest) = value.strip_prefix('[') {
            let (host, after) = rest
                .split_once(']')
                .ok_or_else(|| bad("has no closing ']'"))?;
            match after {
                "" => (host, None),
                _ => (
                    host,
                    Some(
                        after
                            .strip_prefix(':')
                            .ok_or_else(|| bad("has text after ']' that is not ':port'"))?,
                    ),
                ),
            }
        } else {
            match value.split_once(':') {
                Some((_, p)) if p.contains(':') => {
                    return Err(bad("looks like an IPv6 address without brackets"));
                }
                Some((h, p)) => (h, Some(p)),
                None => (value.as_str(), None),
            }
        };
        if host.is_empty() {
            return Err(bad("names no host"));
        }
        let port = match port {
            None => 5432,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| bad("has a port that is not a number from 1 to 65535"))?,
        };
        Ok(Listen::At {
            host: host.to_string(),
            port,
        })
    }

    /// The listener's connection settings: `base`'s (user, password, database, TLS…) with
    /// this host and port; `None` when off.
    fn config(&self, base: &Config, tls: &Tls) -> Option<(Config, Tls)> {
        match self {
            Listen::Off => None,
            Listen::Same => Some((base.clone(), tls.clone())),
            Listen::At { host, port } => {
                let mut c = Config::new();
                c.host(host).port(*port).ssl_mode(base.get_ssl_mode());
                if let Some(user) = base.get_user() {
                    c.user(user);
                }
                if let Some(password) = base.get_password() {
                    c.password(password);
                }
                if let Some(db) = base.get_dbname() {
                    c.dbname(db);
                }
                if let Some(name) = base.get_application_name() {
                    c.application_name(name);
                }
                if let Some(timeout) = base.get_connect_timeout() {
                    c.connect_timeout(*timeout);
                }
                Some((c, tls.clone()))
            }
        }
    }
}

fn check_identifier(url: &StoreUrl, key: &str, value: &str, max: usize) -> Result<()> {
    let ok = !value.is_empty()
        && value.len() <= max
        && value
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(Error::config(format!(
            "store URL {:?}: {key}={value:?} is not a plain identifier — use 1 to {max} lowercase ASCII letters, digits and '_', not starting with a digit (e.g. {key}=locksmith_locks)",
            url.redacted()
        )))
    }
}

impl Settings {
    fn parse(url: &mut StoreUrl) -> Result<Settings> {
        let lockmgr = lockmgr::check_url(url)?;
        let table = url
            .take("table")
            .unwrap_or_else(|| DEFAULT_TABLE.to_string());
        check_identifier(url, "table", &table, MAX_TABLE_LEN)?;
        let schema = url
            .take("schema")
            .unwrap_or_else(|| DEFAULT_SCHEMA.to_string());
        check_identifier(url, "schema", &schema, 63)?;
        let retain = url.take_duration("retain")?.unwrap_or(DEFAULT_RETAIN);
        let sslmode = url.take("sslmode");
        let sslrootcert = url.take("sslrootcert");
        let application_name = url.take("application_name");
        let listen = url.take("listen");
        if lockmgr && listen.is_some() {
            return Err(Error::config(format!(
                "store URL {:?}: the django-lockmgr layout has no listener (its waiters poll) and takes no ?listen= — drop it",
                url.redacted()
            )));
        }
        let listen = Listen::parse(url, listen)?;
        url.finish(
            ", ?layout=django-lockmgr, ?table=, ?schema=, ?retain=, ?sslmode=disable|prefer|require|verify-full, ?sslrootcert=PATH, ?application_name= and ?listen=host:port|off",
        )?;
        let mut config = Config::from_str(&format!("postgresql://{}", url.body)).map_err(|e| {
            Error::config(format!(
                "store URL {:?} is not a PostgreSQL URL ({e}) — write postgres://user:password@host:port/database",
                url.redacted()
            ))
        })?;
        if config.get_hosts().is_empty() {
            return Err(Error::config(format!(
                "store URL {:?} names no host — write postgres://user:password@host:port/database",
                url.redacted()
            )));
        }
        if config.get_user().is_none() {
            let user = std::env::var("USER").unwrap_or_else(|_| "postgres".to_string());
            config.user(user);
        }
        config.connect_timeout(url.timeout);
        config.application_name(application_name.as_deref().unwrap_or("locksmith"));
        let tls = tls_for(url, &mut config, sslmode.as_deref(), sslrootcert.as_deref())?;
        let host = match &config.get_hosts()[0] {
            tokio_postgres::config::Host::Tcp(h) => h.clone(),
            tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
        };
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let db = config
            .get_dbname()
            .or(config.get_user())
            .unwrap_or_default()
            .to_string();
        let identity = if lockmgr {
            format!(
                "postgres://{host}:{port}/{db}?layout={}",
                super::lockmgr::LAYOUT
            )
        } else {
            format!("postgres://{host}:{port}/{db}?table={schema}.{table}")
        };
        Ok(Settings {
            config,
            tls,
            schema,
            table,
            retain,
            identity,
            redacted: url.redacted().to_string(),
            timeout: url.timeout,
            lockmgr,
            listen,
        })
    }
}

#[cfg(not(feature = "postgres-tls"))]
fn tls_for(
    url: &StoreUrl,
    config: &mut Config,
    sslmode: Option<&str>,
    sslrootcert: Option<&str>,
) -> Result<Tls> {
    config.ssl_mode(tokio_postgres::config::SslMode::Disable);
    match (sslmode, sslrootcert) {
        (None | Some("disable" | "prefer" | "allow"), None) => Ok(Tls::Plain),
        (Some(mode @ ("require" | "verify-ca" | "verify-full")), _) | (Some(mode), Some(_)) => {
            Err(Error::config(format!(
                "store URL {:?} asks for sslmode={mode}, but TLS for PostgreSQL is not built in — enable locksmith's `postgres-tls` cargo feature",
                url.redacted()
            )))
        }
        (None, Some(_)) => Err(Error::config(format!(
            "store URL {:?} gives sslrootcert= without TLS — enable locksmith's `postgres-tls` cargo feature and add sslmode=verify-full",
            url.redacted()
        ))),
        (Some(other), None) => Err(bad_sslmode(url, other)),
    }
}

fn bad_sslmode(url: &StoreUrl, mode: &str) -> Error {
    Error::config(format!(
        "store URL {:?}: sslmode={mode:?} is not one of disable, prefer, require, verify-full",
        url.redacted()
    ))
}

#[cfg(feature = "postgres-tls")]
fn tls_for(
    url: &StoreUrl,
    config: &mut Config,
    sslmode: Option<&str>,
    sslrootcert: Option<&str>,
) -> Result<Tls> {
    use tokio_postgres::config::SslMode;
    let verify = match sslmode.unwrap_or("disable") {
        "disable" | "allow" | "prefer" if sslrootcert.is_none() => {
            config.ssl_mode(SslMode::Disable);
            return Ok(Tls::Plain);
        }
        "require" => false,
        "verify-ca" | "verify-full" => true,
        other => return Err(bad_sslmode(url, other)),
    };
    config.ssl_mode(SslMode::Require);
    let roots = match sslrootcert {
        Some(path) => {
            let pem = std::fs::read(path).map_err(|e| {
                Error::config(format!(
                    "store URL {:?}: cannot read sslrootcert={path:?} ({e}) — give the path of the server's CA certificate (PEM)",
                    url.redacted()
                ))
            })?;
            let mut store = rustls::RootCertStore::empty();
            for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                let cert = cert.map_err(|e| {
                    Error::config(format!(
                        "store URL {:?}: sslrootcert={path:?} is not PEM ({e})",
                        url.redacted()
                    ))
                })?;
                store.add(cert).map_err(|e| {
                    Error::config(format!(
                        "store URL {:?}: sslrootcert={path:?} holds a bad certificate ({e})",
                        url.redacted()
                    ))
                })?;
            }
            store
        }
        None => rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        },
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::config(format!("TLS setup failed: {e}")))?;
    let client = if verify {
        builder.with_root_certificates(roots).with_no_client_auth()
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(tls::NoVerify::new()))
            .with_no_client_auth()
    };
    Ok(Tls::Rustls(tokio_postgres_rustls::MakeRustlsConnect::new(
        client,
    )))
}

#[cfg(feature = "postgres-tls")]
mod tls {
    //! `sslmode=require`: encrypt, but do not verify the server's certificate (as libpq).
    use rustls::DigitallySignedStruct;
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

    #[derive(Debug)]
    pub(super) struct NoVerify(rustls::crypto::WebPkiSupportedAlgorithms);

    impl NoVerify {
        pub(super) fn new() -> NoVerify {
            NoVerify(rustls::crypto::ring::default_provider().signature_verification_algorithms)
        }
    }

    impl ServerCertVerifier for NoVerify {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
        }

        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.0.supported_schemes()
        }
    }
}

/// The `LISTEN`/`NOTIFY` channel of a lock table: `locksmith_` and 16 hex digits of an
/// FNV-1a hash of `schema.table` (the same in every process and build), well under
/// PostgreSQL's 63-byte limit. Its wake-ups (the release that frees a watched lock, a
/// shortened lease, `clear`, `reset_all`) carry the namespace and the name; another program
/// can `LISTEN` on it too.
pub fn channel_name(schema: &str, table: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in format!("{schema}.{table}").bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("locksmith_{h:016x}")
}

/// Whether a driver error is transient: I/O, a closed connection, a server shutting down,
/// out of connections or resources, a deadlock or serialization failure, a lock timeout.
fn retryable(e: &tokio_postgres::Error) -> bool {
    match e.code() {
        None => true,
        Some(code) => {
            let c = code.code();
            c.starts_with("08")
                || c.starts_with("53")
                || c.starts_with("57P")
                || c.starts_with("58")
                || c == "40001"
                || c == "40P01"
                || c == "55P03"
                || c == "57014"
        }
    }
}

fn is_conflict(e: &tokio_postgres::Error) -> bool {
    matches!(e.code().map(|c| c.code()), Some("40001" | "40P01"))
}

/// A locksmith error for a driver error while doing `what`.
fn pg_error(what: &str, e: &tokio_postgres::Error) -> Error {
    let text = match e.as_db_error() {
        Some(db) => format!("{what}: {} (SQLSTATE {})", db.message(), db.code().code()),
        None => {
            let mut text = format!("{what}: {e}");
            let mut source = std::error::Error::source(e);
            while let Some(s) = source {
                text.push_str(&format!(": {s}"));
                source = s.source();
            }
            text
        }
    };
    Error::store(KIND, retryable(e), text)
}

/// The connections of one store: a deadpool pool, and a few of its clients shared by
/// every single-statement call.
struct Conns {
    pool: Pool,
    shared: Vec<Mutex<Option<Arc<Object>>>>,
    next: AtomicUsize,
    backoff: Mutex<Backoff>,
    redacted: String,
}

#[derive(Default)]
struct Backoff {
    /// Connecting is not tried again before this.
    not_before: Option<Instant>,
    delay: Duration,
}

impl Conns {
    fn new(pool: Pool, redacted: String) -> Conns {
        Conns {
            pool,
            shared: (0..SHARED_CLIENTS).map(|_| Mutex::new(None)).collect(),
            next: AtomicUsize::new(0),
            backoff: Mutex::default(),
            redacted,
        }
    }

    /// A pooled client, waiting out the reconnect backoff first.
    async fn get(&self) -> Result<Object> {
        let wait = {
            let b = self.backoff.lock().unwrap_or_else(|e| e.into_inner());
            b.not_before
                .map(|t| t.saturating_duration_since(Instant::now()))
        };
        if let Some(wait) = wait.filter(|w| !w.is_zero()) {
            tokio::time::sleep(wait).await;
        }
        match self.pool.get().await {
            Ok(obj) => {
                let mut b = self.backoff.lock().unwrap_or_else(|e| e.into_inner());
                b.not_before = None;
                b.delay = Duration::ZERO;
                Ok(obj)
            }
            Err(e) => {
                let mut b = self.backoff.lock().unwrap_or_else(|e| e.into_inner());
                b.delay = (b.delay * 2).clamp(BACKOFF_MIN, BACKOFF_MAX);
                b.not_before = Some(Instant::now() + b.delay);
                Err(self.pool_error(e))
            }
        }
    }

    fn pool_error(&self, e: PoolError) -> Error {
        let url = &self.redacted;
        match e {
            PoolError::Backend(e) => pg_error(&format!("cannot connect to {url}"), &e),
            PoolError::Timeout(_) => Error::store(
                KIND,
                true,
                format!("cannot connect to {url}: timed out — is the server up and reachable?"),
            ),
            PoolError::Closed => Error::store(
                KIND,
                false,
                "the PostgreSQL store was closed — connect again",
            ),
            other => Error::store(KIND, true, format!("cannot connect to {url}: {other}")),
        }
    }

    /// A shared, pipelined client: the next open one in turn. When none is open, one is
    /// connected here (dead slots are refilled in the background, see `refill_shared`), so
    /// one dead connection costs no call a reconnect while another is open.
    async fn shared(&self) -> Result<Arc<Object>> {
        // The open client with the fewest calls in flight (each call holds an `Arc`), the
        // first one on a tie: one caller at a time keeps to one connection (and one server
        // backend, which is faster than alternating), concurrent callers spread out.
        let mut best: Option<(usize, Arc<Object>)> = None;
        for slot in &self.shared {
            if let Some(c) = slot.lock().unwrap_or_else(|e| e.into_inner()).as_ref()
                && !c.is_closed()
            {
                let load = Arc::strong_count(c);
                if best.as_ref().is_none_or(|(b, _)| load < *b) {
                    best = Some((load, c.clone()));
                }
            }
        }
        if let Some((_, c)) = best {
            return Ok(c);
        }
        let at = self.next.fetch_add(1, Ordering::Relaxed) % self.shared.len();
        self.connect_slot(at).await
    }

    /// Connects every empty or closed slot (at open, so the first calls pay no connect).
    async fn fill(&self) -> Result<()> {
        let fills = (0..self.shared.len()).map(|i| self.connect_slot(i));
        for r in futures_util::future::join_all(fills).await {
            r?;
        }
        Ok(())
    }

    async fn connect_slot(&self, at: usize) -> Result<Arc<Object>> {
        let slot = &self.shared[at];
        let fresh = Arc::new(self.get().await?);
        let mut slot = slot.lock().unwrap_or_else(|e| e.into_inner());
        match slot.as_ref() {
            // Another task replaced it meanwhile: use theirs, return ours to the pool.
            Some(c) if !c.is_closed() => Ok(c.clone()),
            _ => {
                *slot = Some(fresh.clone());
                Ok(fresh)
            }
        }
    }
}

/// A job of the detached-release worker.
enum Job {
    Release {
        ns: Namespace,
        name: LockName,
        token: Token,
        min_hold: Option<Duration>,
    },
    Flush(oneshot::Sender<()>),
}

/// What the store's tasks share.
struct Inner {
    conns: Conns,
    sql: Statements,
    hub: Arc<WakeHub>,
    /// The listener's inbox (see [`Listener::inbox`]), which a release names so that a
    /// grant to a waiter of this store comes back in its answer instead of a notification.
    inbox: Arc<AtomicI32>,
    clock: Arc<AtomicI64>,
    retain_us: i64,
    grants: AtomicU32,
}

/// The PostgreSQL store. Open it with [`Locksmith::connect`](crate::Locksmith::connect)
/// and a `postgres://` URL, or hand over a pool with [`PostgresStore::from_pool`].
pub struct PostgresStore {
    inner: Arc<Inner>,
    identity: String,
    redacted: String,
    jobs: mpsc::UnboundedSender<Job>,
    listener: Listener,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("url", &self.redacted)
            .field("table", &self.inner.sql.table)
            .finish_non_exhaustive()
    }
}

/// Opens the store a `postgres://` URL names.
pub(crate) async fn open(url: &mut StoreUrl) -> Result<Arc<dyn Store>> {
    let settings = Settings::parse(url)?;
    if settings.lockmgr {
        return Ok(lockmgr::LockmgrStore::open(settings).await?);
    }
    Ok(PostgresStore::open(settings).await?)
}

fn make_pool(settings: &Settings) -> Result<Pool> {
    let config = ManagerConfig {
        recycling_method: RecyclingMethod::Fast,
    };
    let manager = match &settings.tls {
        Tls::Plain => Manager::from_config(settings.config.clone(), tokio_postgres::NoTls, config),
        #[cfg(feature = "postgres-tls")]
        Tls::Rustls(tls) => Manager::from_config(settings.config.clone(), tls.clone(), config),
    };
    Pool::builder(manager)
        .max_size(POOL_SIZE)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(settings.timeout))
        .create_timeout(Some(settings.timeout))
        .recycle_timeout(Some(settings.timeout))
        .build()
        .map_err(|e| Error::config(format!("cannot build the connection pool: {e}")))
}

/// Options of a store built from a pool you already have ([`PostgresStore::from_pool`]).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct PoolOptions {
    /// The lock table (default [`DEFAULT_TABLE`]).
    pub table: String,
    /// Its schema (default [`DEFAULT_SCHEMA`]).
    pub schema: String,
    /// How long expired rows stay visible before a sweep removes them (default 1 h).
    pub retain: Duration,
    /// The configuration of the store's own listener connection (`LISTEN`), outside the
    /// pool. `None`: waiters poll (the store then declares `notify = false`).
    pub listen: Option<Config>,
}

impl Default for PoolOptions {
    fn default() -> Self {
        PoolOptions {
            table: DEFAULT_TABLE.to_string(),
            schema: DEFAULT_SCHEMA.to_string(),
            retain: DEFAULT_RETAIN,
            listen: None,
        }
    }
}

impl PostgresStore {
    async fn open(settings: Settings) -> Result<Arc<PostgresStore>> {
        let pool = make_pool(&settings)?;
        let listen = settings.listen.config(&settings.config, &settings.tls);
        PostgresStore::build(pool, &settings, listen).await
    }

    /// A store over a [`deadpool_postgres::Pool`] your service already has (plain
    /// connections; the pool's own TLS setup is used). The store keeps two of the pool's
    /// clients for its single statements, pipelined, and borrows others for
    /// transactions. Wrap it with [`Locksmith::with_store`](crate::Locksmith::with_store).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for a bad table or schema name or a table from a newer locksmith;
    /// [`Error::Store`] when the migration cannot run.
    pub async fn from_pool(pool: Pool, options: PoolOptions) -> Result<Arc<PostgresStore>> {
        let mut url = StoreUrl::parse("postgres://pool")?;
        check_identifier(&url, "table", &options.table, MAX_TABLE_LEN)?;
        check_identifier(&url, "schema", &options.schema, 63)?;
        let mut config = options.listen.clone().unwrap_or_default();
        if config.get_hosts().is_empty() {
            config.host("pool");
        }
        url.body = String::new();
        let db = config.get_dbname().unwrap_or_default().to_string();
        let host = match &config.get_hosts()[0] {
            tokio_postgres::config::Host::Tcp(h) => h.clone(),
            tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
        };
        let settings = Settings {
            identity: format!(
                "postgres://{host}:{}/{db}?table={}.{}",
                config.get_ports().first().copied().unwrap_or(5432),
                options.schema,
                options.table
            ),
            config,
            tls: Tls::Plain,
            schema: options.schema,
            table: options.table,
            retain: options.retain,
            redacted: "postgres://(a pool handed over)".to_string(),
            timeout: crate::url::DEFAULT_TIMEOUT,
            lockmgr: false,
            listen: Listen::Same,
        };
        let listen = options.listen.map(|c| (c, Tls::Plain));
        PostgresStore::build(pool, &settings, listen).await
    }

    async fn build(
        pool: Pool,
        settings: &Settings,
        listen: Option<(Config, Tls)>,
    ) -> Result<Arc<PostgresStore>> {
        let channel = channel_name(&settings.schema, &settings.table);
        let sql = Statements::new(&settings.schema, &settings.table, &channel);
        let conns = Conns::new(pool, settings.redacted.clone());
        conns.fill().await?;
        migrate(&conns, &sql, &settings.schema, &settings.table).await?;
        let hub = Arc::new(WakeHub::default());
        let inbox = Arc::new(AtomicI32::new(0));
        let inner = Arc::new(Inner {
            conns,
            sql,
            hub: hub.clone(),
            inbox: inbox.clone(),
            clock: clock_offset(&settings.identity),
            retain_us: micros(settings.retain),
            grants: AtomicU32::new(0),
        });
        let (jobs, rx) = mpsc::unbounded_channel();
        tokio::spawn(detached_worker(inner.clone(), rx));
        tokio::spawn(refill_shared(Arc::downgrade(&inner)));
        Ok(Arc::new(PostgresStore {
            listener: Listener::new(listen, channel, hub, inbox),
            inner,
            identity: settings.identity.clone(),
            redacted: settings.redacted.clone(),
            jobs,
        }))
    }
}

/// Creates or upgrades the schema: a fast read when it is current; otherwise one
/// transaction holding a transaction-scoped advisory lock, so concurrent starts are safe.
async fn migrate(conns: &Conns, sql: &Statements, schema: &str, table: &str) -> Result<()> {
    let current = read_version(conns, sql).await?;
    if current == Some(sql::SCHEMA_VERSION) {
        return Ok(());
    }
    check_version(current, sql)?;
    let mut obj = conns.get().await?;
    let what = format!(
        "migrating {} to schema version {}",
        sql.table,
        sql::SCHEMA_VERSION
    );
    let err = |e: tokio_postgres::Error| pg_error(&what, &e);
    let tx = obj.transaction().await.map_err(err)?;
    let key = format!("locksmith:{schema}.{table}");
    tx.query_typed(
        "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
        &[(&key, Type::TEXT)],
    )
    .await
    .map_err(err)?;
    let encoding: String = tx
        .query_typed_one("SELECT current_setting('server_encoding')", &[])
        .await
        .map_err(err)?
        .get(0);
    if encoding != "UTF8" {
        return Err(Error::config(format!(
            "the database's encoding is {encoding}, but lock names are UTF-8 — use a database created with ENCODING 'UTF8'"
        )));
    }
    let has_schema: bool = tx
        .query_typed_one(
            "SELECT to_regnamespace($1) IS NOT NULL",
            &[(&format!("\"{schema}\""), Type::TEXT)],
        )
        .await
        .map_err(err)?
        .get(0);
    if !has_schema {
        tx.batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\""))
            .await
            .map_err(err)?;
    }
    tx.batch_execute(&format!(
        "CREATE TABLE IF NOT EXISTS {meta} (
             id int4 PRIMARY KEY CHECK (id = 0),
             version int4 NOT NULL,
             fence_floor int8 NOT NULL);
         INSERT INTO {meta} (id, version, fence_floor) VALUES (0, 0, 0) ON CONFLICT DO NOTHING;",
        meta = sql.meta
    ))
    .await
    .map_err(err)?;
    let version: i32 = tx
        .query_typed_one(
            &format!("SELECT version FROM {} WHERE id = 0", sql.meta),
            &[],
        )
        .await
        .map_err(err)?
        .get(0);
    check_version(Some(version), sql)?;
    if version < 1 {
        tx.batch_execute(&sql.schema_v1(schema, table))
            .await
            .map_err(err)?;
    }
    if version < 2 {
        tx.batch_execute(&sql.schema_v2()).await.map_err(err)?;
    }
    if version < 3 {
        tx.batch_execute(&sql.schema_v3(schema, table))
            .await
            .map_err(err)?;
    }
    if version < 4 {
        tx.batch_execute(&sql.schema_v4(schema, table))
            .await
            .map_err(err)?;
    }
    tx.commit().await.map_err(err)?;
    Ok(())
}

async fn read_version(conns: &Conns, sql: &Statements) -> Result<Option<i32>> {
    let client = conns.shared().await?;
    let meta = sql.meta.clone();
    let rows = client
        .query_typed("SELECT to_regclass($1) IS NOT NULL", &[(&meta, Type::TEXT)])
        .await
        .map_err(|e| pg_error("reading the schema version", &e))?;
    if !rows.first().is_some_and(|r| r.get::<_, bool>(0)) {
        return Ok(None);
    }
    let row = client
        .query_typed_opt(&format!("SELECT version FROM {meta} WHERE id = 0"), &[])
        .await
        .map_err(|e| pg_error("reading the schema version", &e))?;
    Ok(row.map(|r| r.get(0)))
}

fn check_version(version: Option<i32>, sql: &Statements) -> Result<()> {
    match version {
        Some(v) if v > sql::SCHEMA_VERSION => Err(Error::config(format!(
            "the lock table {} has schema version {v}, written by a newer locksmith (this one knows version {}) — upgrade locksmith, or use another ?table=",
            sql.table,
            sql::SCHEMA_VERSION
        ))),
        _ => Ok(()),
    }
}

/// What owns a store's [`Conns`] (the native layout's and the django-lockmgr layout's
/// store state), for the background work both layouts share.
trait OwnsConns: Send + Sync + 'static {
    fn conns(&self) -> &Conns;
}

impl OwnsConns for Inner {
    fn conns(&self) -> &Conns {
        &self.conns
    }
}

/// Reconnects shared clients that died (a terminated backend, a restarted server) in the
/// background, twice a second, so calls are spread over every shared client again; ends
/// when the store is dropped.
async fn refill_shared<I: OwnsConns>(inner: std::sync::Weak<I>) {
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let conns = inner.conns();
        for (i, slot) in conns.shared.iter().enumerate() {
            let dead = slot
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
                .is_none_or(|c| c.is_closed());
            if dead {
                let _ = conns.connect_slot(i).await;
            }
        }
    }
}

/// Runs the detached releases one after another until the store is dropped.
async fn detached_worker(inner: Arc<Inner>, mut rx: mpsc::UnboundedReceiver<Job>) {
    while let Some(job) = rx.recv().await {
        match job {
            Job::Release {
                ns,
                name,
                token,
                min_hold,
            } => {
                // A few tries, then the lease ends on its own.
                for attempt in 0..4u32 {
                    let call = inner.release(&ns, &name, &token, min_hold, None);
                    match tokio::time::timeout(Duration::from_secs(2), call).await {
                        Ok(Ok(_)) => break,
                        Ok(Err(e)) if !e.is_retryable() => {
                            tracing::warn!(lock = %name, error = %e, "PostgreSQL release failed; the lease will expire");
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

fn opt_micros(d: Option<Duration>) -> Option<i64> {
    d.map(micros)
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// A row's holder columns (see [`sql::COLUMNS`]) starting at `at`, then the token.
fn row_at(r: &PgRow, at: usize, token: Option<Token>) -> Row {
    let released: bool = r.get(at);
    Row {
        token: if released {
            None
        } else {
            token.or_else(|| Some(Token::new()))
        },
        owner: r.get(at + 1),
        host: r.get(at + 2),
        pid: u32::try_from(r.get::<_, i64>(at + 3)).unwrap_or(0),
        fence: to_u64(r.get(at + 4)),
        acquired_at: r.get(at + 5),
        expires_at: r.get(at + 6),
        min_hold: r.get(at + 7),
    }
}

fn parse_token(text: Option<String>) -> Option<Token> {
    text.map(|t| Token::from_str(&t).unwrap_or_default())
}

impl Inner {
    fn offset(&self) -> i64 {
        self.clock.load(Ordering::SeqCst)
    }

    /// One statement on a shared client; deadlocks and serialization failures are retried.
    async fn query(
        &self,
        what: &str,
        statement: &str,
        params: &[(&(dyn ToSql + Sync), Type)],
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

    /// Releases `token`'s lock and, when this store listens (a queued claim needs an
    /// inbox), hands it to `next` in the same statement (see [`Store::release_to`]).
    async fn release(
        &self,
        ns: &Namespace,
        name: &LockName,
        token: &Token,
        min_hold: Option<Duration>,
        next: Option<&Claim>,
    ) -> Result<(Released, Successor)> {
        let min_hold = opt_micros(min_hold);
        let offset = self.offset();
        let inbox = self.inbox.load(Ordering::SeqCst);
        let next = next.filter(|_| inbox != 0);
        let next_id = next.map(Claim::grant_id);
        let rows = self
            .query(
                "release",
                &self.sql.release,
                &[
                    (&ns.as_str(), Type::TEXT),
                    (&name.as_str(), Type::TEXT),
                    (&token.expose(), Type::TEXT),
                    (&min_hold, Type::INT8),
                    (&offset, Type::INT8),
                    (&inbox, Type::INT4),
                    (&next.map(|c| c.token.expose()), Type::TEXT),
                    (&next.map(|c| &*c.owner), Type::TEXT),
                    (&next.map(|c| &*c.host), Type::TEXT),
                    (&next.map(|c| i64::from(c.pid)), Type::INT8),
                    (&next.and_then(|c| opt_micros(c.ttl)), Type::INT8),
                    (&next.and_then(|c| opt_micros(c.min_hold)), Type::INT8),
                    (&next_id, Type::TEXT),
                ],
            )
            .await?;
        let answer: Option<String> = rows.first().and_then(|r| r.get(0));
        let answer = answer.unwrap_or_default();
        let (status, grant) = answer.split_once(' ').unwrap_or((&answer, ""));
        Ok(match status {
            "0" => (Released::Released, Successor::NotTaken),
            "1" => (Released::Kept, Successor::NotTaken),
            // Handed to the first live waiter queued: `next`, or a waiter that came before
            // it. A waiter of this store takes the grant from this answer (the release sent
            // no notification for it).
            "3" => {
                let next = handed(grant, next_id.as_deref(), |id, grant| {
                    self.hub.grant(ns, name, id, grant);
                });
                (Released::Released, next.unwrap_or(Successor::NotTaken))
            }
            _ => (Released::NotHeld, Successor::NotTaken),
        })
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
            let offset = inner.offset();
            let sweep = inner.sql.sweep.clone();
            let result = inner
                .query(
                    "garbage sweep",
                    &sweep,
                    &[(&offset, Type::INT8), (&inner.retain_us, Type::INT8)],
                )
                .await;
            if let Err(e) = result {
                tracing::debug!(error = %e, "PostgreSQL garbage sweep failed; the next one retries");
            }
        });
    }

    /// Runs `body` in a transaction on a client of its own over the claims' rows, locked
    /// (placeholders created first) in name order; deadlocks are retried.
    async fn transact<T: Send>(
        &self,
        what: &str,
        ns: &Namespace,
        names: &[String],
        body: impl Fn(&mut TxTable) -> Result<T> + Send + Sync,
    ) -> Result<T> {
        let mut sorted = names.to_vec();
        sorted.sort();
        sorted.dedup();
        let mut attempt = 0;
        loop {
            match self.transact_once(ns, &sorted, &body).await {
                Err(TxError::Pg(e)) if is_conflict(&e) && attempt < CONFLICT_RETRIES => {
                    attempt += 1;
                    tokio::time::sleep(jitter(BACKOFF_MIN)).await;
                }
                Err(TxError::Pg(e)) => return Err(pg_error(what, &e)),
                Err(TxError::Lm(e)) => return Err(e),
                Ok(v) => return Ok(v),
            }
        }
    }

    async fn transact_once<T: Send>(
        &self,
        ns: &Namespace,
        names: &[String],
        body: &(impl Fn(&mut TxTable) -> Result<T> + Send + Sync),
    ) -> std::result::Result<T, TxError> {
        let mut obj = self.conns.get().await?;
        let tx = obj.transaction().await?;
        let offset = self.offset();
        tx.query_typed(
            &self.sql.placeholders,
            &[(&ns.as_str(), Type::TEXT), (&names, Type::TEXT_ARRAY)],
        )
        .await?;
        let rows = tx
            .query_typed(
                &self.sql.lock_rows,
                &[
                    (&ns.as_str(), Type::TEXT),
                    (&offset, Type::INT8),
                    (&names, Type::TEXT_ARRAY),
                ],
            )
            .await?;
        let now = match rows.first() {
            Some(r) => r.get(11),
            None => tx
                .query_typed_one(
                    &format!("SELECT {}", sql::now_expr("$1")),
                    &[(&offset, Type::INT8)],
                )
                .await?
                .get(0),
        };
        let mut table = TxTable {
            now,
            ..TxTable::default()
        };
        for r in &rows {
            let name: String = r.get(0);
            let freed: bool = r.get(1);
            let fence: i64 = r.get(6);
            let floor: i64 = r.get(12);
            table.high = table.high.max(fence).max(floor);
            if !freed {
                let token = parse_token(r.get(10));
                table.rows.insert(name, row_at(r, 2, token));
            }
        }
        let out = body(&mut table)?;
        if !table.watch.is_empty() {
            tx.query_typed(
                &self.sql.watch,
                &[(&ns.as_str(), Type::TEXT), (&table.watch, Type::TEXT_ARRAY)],
            )
            .await?;
        }
        for (name, row) in &table.dirty {
            match row {
                Some(row) => {
                    let token = row.token.as_ref().map(|t| t.expose().to_string());
                    let pid = i64::from(row.pid);
                    let fence = i64::try_from(row.fence).unwrap_or(i64::MAX);
                    tx.query_typed(
                        &self.sql.write_row,
                        &[
                            (&ns.as_str(), Type::TEXT),
                            (name, Type::TEXT),
                            (&token, Type::TEXT),
                            (&row.owner, Type::TEXT),
                            (&row.host, Type::TEXT),
                            (&pid, Type::INT8),
                            (&fence, Type::INT8),
                            (&row.acquired_at, Type::INT8),
                            (&row.expires_at, Type::INT8),
                            (&row.min_hold, Type::INT8),
                        ],
                    )
                    .await?;
                }
                None => {
                    tx.query_typed(
                        &self.sql.free_row,
                        &[
                            (&ns.as_str(), Type::TEXT),
                            (name, Type::TEXT),
                            (&table.now, Type::INT8),
                        ],
                    )
                    .await?;
                    tx.query_typed(
                        &self.sql.notify,
                        &[(&ns.as_str(), Type::TEXT), (name, Type::TEXT)],
                    )
                    .await?;
                }
            }
        }
        tx.commit().await?;
        Ok(out)
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

/// The locked rows of one transaction, for the shared row logic ([`rows`]); writes are
/// collected and sent before the commit.
#[derive(Default)]
struct TxTable {
    now: i64,
    /// The visible rows (freed ones are absent: free).
    rows: HashMap<String, Row>,
    /// The largest fence of the locked rows and the table's floor: minted fences go above.
    high: i64,
    dirty: Vec<(String, Option<Row>)>,
    /// Names a failed try found held: marked watched before the commit, so the release that
    /// frees one notifies its waiters.
    watch: Vec<String>,
}

impl TxTable {
    fn mark(&mut self, name: &str, row: Option<Row>) {
        self.dirty.retain(|(n, _)| n != name);
        self.dirty.push((name.to_string(), row));
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
        self.rows.insert(name.to_string(), row.clone());
        self.mark(name, Some(row.clone()));
        Ok(())
    }

    fn delete(&mut self, name: &str) -> Result<bool> {
        let was = self.rows.remove(name).is_some();
        self.mark(name, None);
        Ok(was)
    }

    fn next_fence(&mut self) -> Result<u64> {
        let fence = super::hybrid_fence(to_u64(self.high), to_u64(self.now));
        self.high = i64::try_from(fence).unwrap_or(i64::MAX);
        Ok(fence)
    }
}

fn jitter(d: Duration) -> Duration {
    d + Duration::from_micros(fastrand::u64(0..=d.as_micros() as u64))
}

/// The store's listener: one connection outside the pool, opened on the first
/// `subscribe`, `LISTEN`ing on the table's channel (wake-ups) and on its own inbox channel
/// (grants pushed to this store's waiters), waking the hub.
struct Listener {
    config: Option<(Config, Tls)>,
    channel: String,
    hub: Arc<WakeHub>,
    listening: watch::Sender<bool>,
    /// The listener connection's backend pid while it listens (0 otherwise): the inbox a
    /// queued claim names, so a release notifies `<channel>_<inbox>` and can tell whether
    /// the waiter's process still listens.
    inbox: Arc<AtomicI32>,
    /// The listener task. It empties the slot itself when it stops for idleness, under the
    /// slot's lock, so a `subscribe` racing it either keeps it or starts the next one.
    task: Arc<Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

impl Listener {
    fn new(
        config: Option<(Config, Tls)>,
        channel: String,
        hub: Arc<WakeHub>,
        inbox: Arc<AtomicI32>,
    ) -> Listener {
        Listener {
            config,
            channel,
            hub,
            listening: watch::channel(false).0,
            inbox,
            task: Arc::default(),
        }
    }

    fn enabled(&self) -> bool {
        self.config.is_some()
    }

    /// Starts the listener task if it is not running.
    fn ensure_started(&self) {
        let Some((config, tls)) = self.config.clone() else {
            return;
        };
        let mut task = self.task.lock().unwrap_or_else(|e| e.into_inner());
        if task.as_ref().is_some_and(|t| !t.is_finished()) {
            return;
        }
        let (channel, hub, listening, inbox, slot) = (
            self.channel.clone(),
            self.hub.clone(),
            self.listening.clone(),
            self.inbox.clone(),
            self.task.clone(),
        );
        *task = Some(tokio::spawn(async move {
            let mut delay = BACKOFF_MIN;
            let ends = Ends {
                channel: &channel,
                hub: &hub,
                listening: &listening,
                inbox: &inbox,
                slot: &slot,
            };
            loop {
                let result = match &tls {
                    Tls::Plain => listen_once(&config, tokio_postgres::NoTls, &ends).await,
                    #[cfg(feature = "postgres-tls")]
                    Tls::Rustls(t) => listen_once(&config, t.clone(), &ends).await,
                };
                // Stopped for idleness: the state was cleared under the slot's lock, and a
                // task started since may already listen.
                if let Ok(Ended::Idle) = result {
                    return;
                }
                inbox.store(0, Ordering::SeqCst);
                listening.send_replace(false);
                match result {
                    // It was listening: reconnect at once.
                    Ok(_) => delay = BACKOFF_MIN,
                    Err(e) => {
                        tracing::debug!(error = %e, "PostgreSQL listener could not connect; retrying");
                        tokio::time::sleep(jitter(delay)).await;
                        delay = (delay * 2).min(BACKOFF_MAX);
                    }
                }
            }
        }));
    }

    fn stop(&self) {
        if let Some(task) = self.task.lock().unwrap_or_else(|e| e.into_inner()).take() {
            task.abort();
        }
        self.listening.send_replace(false);
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What a listener task reports to: the table's channel, the hub, the listening state and
/// inbox it keeps current, and the slot its handle is kept in.
struct Ends<'a> {
    channel: &'a str,
    hub: &'a WakeHub,
    listening: &'a watch::Sender<bool>,
    inbox: &'a AtomicI32,
    slot: &'a Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// Why a listener connection that got to listening ended.
enum Ended {
    /// The connection was lost: connect again.
    Lost,
    /// Nothing subscribed for [`LISTEN_LINGER`]: the task stops (and its state is cleared).
    Idle,
}

/// Connects, listens, and serves notifications until the connection ends or nothing has
/// subscribed for [`LISTEN_LINGER`]: `Ok` if it got to listening, else the error.
async fn listen_once<T>(
    config: &Config,
    tls: T,
    ends: &Ends<'_>,
) -> std::result::Result<Ended, String>
where
    T: tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket>,
{
    let Ends {
        channel,
        hub,
        listening,
        inbox,
        slot,
    } = *ends;
    let (client, mut conn) = config.connect(tls).await.map_err(|e| e.to_string())?;
    // The connection's backend pid names this store's inbox: `LISTEN` on the table's
    // channel and on `<channel>_<pid>`, and hold the advisory lock that tells releases this
    // inbox still listens, in one round trip.
    let key = sql::inbox_key(channel);
    let listen = async {
        let rows = client
            .simple_query(&format!(
                "SELECT pg_backend_pid(), pg_advisory_lock({key}, pg_backend_pid());
                 LISTEN \"{channel}\";
                 DO $$ BEGIN EXECUTE format('LISTEN %I', '{channel}_' || pg_backend_pid()); END $$"
            ))
            .await?;
        Ok::<_, tokio_postgres::Error>(rows)
    };
    tokio::pin!(listen);
    let mut listened = false;
    let mut grants = String::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut idle_since: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = tick.tick(), if listened => {
                if hub.names() > 0 {
                    idle_since = None;
                    continue;
                }
                if idle_since.get_or_insert_with(Instant::now).elapsed() < LISTEN_LINGER {
                    continue;
                }
                // Checked again under the slot's lock: a `subscribe` registers in the hub
                // before it looks at the slot, so it either is seen here or finds the slot
                // empty and starts the next listener.
                let mut slot = slot.lock().unwrap_or_else(|e| e.into_inner());
                if hub.names() > 0 {
                    idle_since = None;
                    continue;
                }
                inbox.store(0, Ordering::SeqCst);
                listening.send_replace(false);
                *slot = None;
                tracing::debug!("PostgreSQL listener idle for {LISTEN_LINGER:?}; disconnecting");
                return Ok(Ended::Idle);
            }
            done = &mut listen, if !listened => {
                let pid = done
                    .map_err(|e| e.to_string())?
                    .iter()
                    .find_map(|m| match m {
                        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0)?.parse::<i32>().ok(),
                        _ => None,
                    })
                    .ok_or("the listener's backend pid was not returned")?;
                grants = format!("{channel}_{pid}");
                listened = true;
                inbox.store(pid, Ordering::SeqCst);
                listening.send_replace(true);
                // Anything released while we were not listening was not heard: re-poll.
                hub.notify_all();
            }
            message = std::future::poll_fn(|cx| conn.poll_message(cx)) => match message {
                Some(Ok(AsyncMessage::Notification(n))) if n.channel() == grants => {
                    pushed_grant(hub, n.payload());
                }
                Some(Ok(AsyncMessage::Notification(n))) => wake(hub, n.payload()),
                Some(Ok(_)) => {}
                Some(Err(e)) if !listened => return Err(e.to_string()),
                Some(Err(_)) | None => {
                    hub.notify_all();
                    return if listened {
                        Ok(Ended::Lost)
                    } else {
                        Err("the connection closed before LISTEN".into())
                    };
                }
            },
        }
    }
}

/// Hands a grant pushed to this store's inbox to the waiter that expects it. The payload is
/// `id fence µs-since-last-try len:namespace` followed by the name. A grant nobody here
/// expects any more is left: its waiter left and releases the token, which hands the lock on.
fn pushed_grant(hub: &WakeHub, payload: &str) {
    let Some((at, _)) = payload.match_indices(' ').nth(2) else {
        return;
    };
    let (message, lock) = (&payload[..at], &payload[at + 1..]);
    let Some((id, grant)) = PushedGrant::parse(message) else {
        return;
    };
    let Some((ns, name)) = split_payload(lock) else {
        return;
    };
    let (Ok(ns), Ok(name)) = (Namespace::new(ns), LockName::new(name)) else {
        return;
    };
    if !hub.grant(&ns, &name, id, grant) {
        tracing::debug!(lock = %name, "a grant pushed to a waiter that left; its release hands it on");
    }
}

/// Splits a payload (`len:namespace` + name) into the namespace and the name.
fn split_payload(payload: &str) -> Option<(&str, &str)> {
    let (len, rest) = payload.split_once(':')?;
    let len = len.parse::<usize>().ok()?;
    if rest.len() < len || !rest.is_char_boundary(len) {
        return None;
    }
    Some(rest.split_at(len))
}

/// Wakes the waiters a payload (`len:namespace` + name) names.
fn wake(hub: &WakeHub, payload: &str) {
    let Some((ns, name)) = split_payload(payload) else {
        return;
    };
    let Ok(ns) = Namespace::new(ns) else {
        return;
    };
    if name.is_empty() {
        hub.notify_namespace(&ns);
    } else if let Ok(name) = LockName::new(name) {
        hub.notify(&ns, &name);
    }
}

fn mode_of(mode: ExtendMode) -> (i32, Duration) {
    match mode {
        ExtendMode::Set(d) => (0, d),
        ExtendMode::Add(d) => (1, d),
        ExtendMode::AtLeast(d) => (2, d),
    }
}

#[async_trait]
impl Store for PostgresStore {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn identity(&self) -> String {
        self.identity.clone()
    }

    fn capabilities(&self) -> Capabilities {
        let notify = self.listener.enabled();
        Capabilities {
            fencing: true,
            persistent: true,
            cross_process: true,
            notify,
            poll_interval: if notify {
                None
            } else {
                Some(Duration::from_millis(25))
            },
            atomic_multi: true,
            never_expire: true,
            expired_visible: true,
            holder_metadata: true,
            namespaces: true,
            min_hold: true,
            ordered_list: true,
            pushed_grants: notify,
            ..Capabilities::NONE
        }
    }

    async fn try_acquire(&self, ns: &Namespace, claim: &Claim) -> Result<Grant> {
        let inner = &self.inner;
        let ttl = opt_micros(claim.ttl);
        let min_hold = opt_micros(claim.min_hold);
        let pid = i64::from(claim.pid);
        let offset = inner.offset();
        let (owner, host) = (&*claim.owner, &*claim.host);
        // A waiting claim is queued when the lock is held (through this store's inbox, once
        // its listener listens); after its first try it may be queued already.
        let mode: i32 = match (
            claim.queue && self.listener.enabled(),
            claim.waited.is_zero(),
        ) {
            (false, _) => 0,
            (true, true) => 1,
            (true, false) => 2,
        };
        let grant_id = if mode > 0 {
            claim.grant_id()
        } else {
            String::new()
        };
        let inbox = self.listener.inbox.load(Ordering::SeqCst);
        let rows = inner
            .query(
                "acquire",
                &inner.sql.acquire,
                &[
                    (&ns.as_str(), Type::TEXT),
                    (&claim.name.as_str(), Type::TEXT),
                    (&claim.token.expose(), Type::TEXT),
                    (&owner, Type::TEXT),
                    (&host, Type::TEXT),
                    (&pid, Type::INT8),
                    (&ttl, Type::INT8),
                    (&min_hold, Type::INT8),
                    (&offset, Type::INT8),
                    (&mode, Type::INT4),
                    (&grant_id, Type::TEXT),
                    (&inbox, Type::INT4),
                ],
            )
            .await?;
        let r = rows
            .first()
            .ok_or_else(|| Error::store(KIND, true, "acquire returned no row"))?;
        let status: i32 = r.get(0);
        match status {
            0 => {
                inner.after_grant();
                Ok(Grant::Acquired {
                    fence: to_u64(r.get(1)),
                })
            }
            2 => Ok(Grant::AlreadyHeld),
            _ => {
                let now: i64 = r.get(2);
                let row = Row {
                    token: if r.get::<_, bool>(3) {
                        None
                    } else {
                        Some(Token::new())
                    },
                    owner: r.get(4),
                    host: r.get(5),
                    pid: u32::try_from(r.get::<_, i64>(6)).unwrap_or(0),
                    fence: to_u64(r.get(1)),
                    acquired_at: r.get(7),
                    expires_at: r.get(8),
                    min_hold: r.get(9),
                };
                Ok(Grant::Held(row.info(claim.name.as_str(), now, UNIX_EPOCH)))
            }
        }
    }

    async fn try_acquire_all(&self, ns: &Namespace, claims: &[Claim]) -> Result<GrantAll> {
        if claims.is_empty() {
            return Ok(GrantAll::Acquired(Vec::new()));
        }
        let names: Vec<String> = claims.iter().map(|c| c.name.to_string()).collect();
        let answer = self
            .inner
            .transact("acquire_all", ns, &names, |t| {
                let answer = rows::try_acquire_all(t, claims);
                if let Ok(GrantAll::Held(info)) = &answer {
                    t.watch.push(info.name.clone());
                }
                answer
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
        let (released, _) = self.inner.release(ns, name, token, min_hold, None).await?;
        Ok(released)
    }

    async fn release_to(
        &self,
        ns: &Namespace,
        name: &LockName,
        token: &Token,
        min_hold: Option<Duration>,
        next: &Claim,
    ) -> Result<(Released, Successor)> {
        self.inner
            .release(ns, name, token, min_hold, Some(next))
            .await
    }

    fn release_detached(
        &self,
        ns: &Namespace,
        name: &LockName,
        token: &Token,
        min_hold: Option<Duration>,
    ) {
        let sent = self.jobs.send(Job::Release {
            ns: ns.clone(),
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
        let inner = &self.inner;
        let (mode, by) = mode_of(mode);
        let by = micros(by);
        let offset = inner.offset();
        let rows = inner
            .query(
                "extend",
                &inner.sql.extend,
                &[
                    (&ns.as_str(), Type::TEXT),
                    (&name.as_str(), Type::TEXT),
                    (&token.expose(), Type::TEXT),
                    (&mode, Type::INT4),
                    (&by, Type::INT8),
                    (&offset, Type::INT8),
                ],
            )
            .await?;
        let r = rows
            .first()
            .ok_or_else(|| Error::store(KIND, true, "extend returned no row"))?;
        Ok(match r.get::<_, i32>(0) {
            0 => Extended::Extended {
                expires_in: Duration::from_micros(to_u64(r.get::<_, Option<i64>>(1).unwrap_or(0))),
            },
            2 => Extended::NotExpirable,
            _ => Extended::NotHeld,
        })
    }

    async fn held_by(
        &self,
        ns: &Namespace,
        name: &LockName,
        token: &Token,
    ) -> Result<Option<LockInfo>> {
        let got = self.read_one(ns, name).await?;
        Ok(got.and_then(|(row, now)| {
            row.held_by(token, now)
                .then(|| row.info(name.as_str(), now, UNIX_EPOCH))
        }))
    }

    async fn inspect(&self, ns: &Namespace, name: &LockName) -> Result<Option<LockInfo>> {
        let got = self.read_one(ns, name).await?;
        Ok(got.map(|(row, now)| row.info(name.as_str(), now, UNIX_EPOCH)))
    }

    async fn list(&self, ns: &Namespace, query: &ListQuery) -> Result<Page> {
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
                    (&ns.as_str(), Type::TEXT),
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
                row_at(r, 1, None).info(&name, now, UNIX_EPOCH)
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
        let inner = &self.inner;
        let list: Vec<&str> = names.iter().map(LockName::as_str).collect();
        let offset = inner.offset();
        let rows = inner
            .query(
                "clear",
                &inner.sql.force_release,
                &[
                    (&ns.as_str(), Type::TEXT),
                    (&list, Type::TEXT_ARRAY),
                    (&offset, Type::INT8),
                ],
            )
            .await?;
        let live: HashMap<String, bool> = rows
            .iter()
            .map(|r| (r.get::<_, String>(0), r.get::<_, bool>(1)))
            .collect();
        Ok(names
            .iter()
            .map(|n| live.get(n.as_str()).copied().unwrap_or(false))
            .collect())
    }

    async fn reset_all(&self, ns: &Namespace) -> Result<u64> {
        let inner = &self.inner;
        let rows = inner
            .query(
                "reset_all",
                &inner.sql.reset_all,
                &[(&ns.as_str(), Type::TEXT)],
            )
            .await?;
        Ok(rows.first().map(|r| to_u64(r.get(0))).unwrap_or(0))
    }

    async fn purge_expired(&self, ns: &Namespace) -> Result<u64> {
        let inner = &self.inner;
        let offset = inner.offset();
        let rows = inner
            .query(
                "purge_expired",
                &inner.sql.purge_expired,
                &[(&ns.as_str(), Type::TEXT), (&offset, Type::INT8)],
            )
            .await?;
        Ok(rows.first().map(|r| to_u64(r.get(0))).unwrap_or(0))
    }

    async fn set_locks(
        &self,
        ns: &Namespace,
        claims: &[Claim],
        policy: &SetPolicy,
    ) -> Result<SetOutcome> {
        let names: Vec<String> = claims.iter().map(|c| c.name.to_string()).collect();
        self.inner
            .transact("set_locks", ns, &names, |t| {
                rows::set_locks(t, claims, policy)
            })
            .await
    }

    async fn subscribe(&self, ns: &Namespace, name: &LockName) -> Result<Wakeups> {
        if !self.listener.enabled() {
            return Ok(Wakeups::never());
        }
        // Subscribe in the hub first, so a wake-up (or a reconnect's wake-all) after the
        // listener is confirmed is never missed.
        let wakeups = self.inner.hub.subscribe(ns, name);
        self.listener.ensure_started();
        let mut listening = self.listener.listening.subscribe();
        match tokio::time::timeout(LISTEN_WAIT, listening.wait_for(|l| *l)).await {
            Ok(Ok(_)) => Ok(wakeups),
            _ => Err(Error::store(
                KIND,
                true,
                format!(
                    "the PostgreSQL listener for {} is not connected (LISTEN); waiting by polling",
                    self.redacted
                ),
            )),
        }
    }

    fn subscribes_at_once(&self, _ns: &Namespace, _name: &LockName) -> bool {
        // One listener serves every name: once it listens, subscribing is local.
        self.listener.enabled() && self.listener.inbox.load(Ordering::SeqCst) != 0
    }

    async fn close(&self) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        if self.jobs.send(Job::Flush(tx)).is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(5), rx).await;
        }
        self.listener.stop();
        Ok(())
    }
}

impl PostgresStore {
    /// The visible row of `name` and the store clock, if there is a row.
    async fn read_one(&self, ns: &Namespace, name: &LockName) -> Result<Option<(Row, i64)>> {
        let inner = &self.inner;
        let offset = inner.offset();
        let rows = inner
            .query(
                "inspect",
                &inner.sql.inspect,
                &[
                    (&ns.as_str(), Type::TEXT),
                    (&name.as_str(), Type::TEXT),
                    (&offset, Type::INT8),
                ],
            )
            .await?;
        Ok(rows.first().map(|r| {
            let token = parse_token(r.get(8));
            (row_at(r, 0, token), r.get::<_, i64>(9))
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_fit_and_differ() {
        let a = channel_name("public", "locksmith_locks");
        let long = "x".repeat(MAX_TABLE_LEN);
        let b = channel_name(&"s".repeat(63), &long);
        assert!(a.len() <= 63 && b.len() <= 63, "{a} {b}");
        assert_ne!(a, channel_name("other", "locksmith_locks"));
        assert_eq!(a, channel_name("public", "locksmith_locks"));
    }

    #[test]
    fn payloads_name_namespace_and_lock() {
        let hub = WakeHub::default();
        let ns = Namespace::new("a:b").unwrap();
        let name = LockName::new("x:1 ü").unwrap();
        let mut one = hub.subscribe(&ns, &name);
        let other = LockName::new("y").unwrap();
        let mut two = hub.subscribe(&ns, &other);
        one.mark_seen();
        two.mark_seen();
        wake(&hub, "3:a:bx:1 ü");
        assert!(format!("{one:?}").contains("generation: 1"), "{one:?}");
        assert!(format!("{two:?}").contains("generation: 0"), "{two:?}");
        wake(&hub, "3:a:b");
        assert!(format!("{two:?}").contains("generation: 1"), "{two:?}");
        for junk in ["", "x", "9:a", "3:a:", "-1:ab"] {
            wake(&hub, junk);
        }
    }

    #[test]
    fn pushed_grants_reach_the_waiter_of_the_named_lock() {
        let hub = WakeHub::default();
        let ns = Namespace::new("a:b").unwrap();
        let name = LockName::new("x 1 ü").unwrap();
        let mut sub = hub.subscribe(&ns, &name);
        sub.expect_grant("00ff");
        for junk in ["00ff 7", "00ff 7 9", "00ff x 9 3:a:bx 1 ü", "00ff 7 9 9:a"] {
            pushed_grant(&hub, junk);
            assert!(sub.take_grant("00ff").is_none(), "{junk:?}");
        }
        pushed_grant(&hub, "00ff 7 9 3:a:bx 1 ü");
        let grant = sub.take_grant("00ff").expect("the grant");
        assert_eq!(grant.fence, 7);
        assert_eq!(grant.after_last_try, Duration::from_micros(9));
    }

    #[test]
    fn urls_are_checked_without_connecting() {
        for (url, hint) in [
            ("postgres://h/db?table=Bad", "table="),
            ("postgres://h/db?schema=", "schema="),
            ("postgres://h/db?sslmode=maybe", "sslmode"),
            ("postgres://h/db?nope=1", "unknown parameter"),
        ] {
            let err = identity_of(url).unwrap_err();
            assert!(err.to_string().contains(hint), "{url}: {err}");
        }
        let id = identity_of("postgres://u:secret@db.example:6543/locks?table=t1").unwrap();
        assert_eq!(id, "postgres://db.example:6543/locks?table=public.t1");
    }
}

#[cfg(test)]
mod listen_tests {
    use super::*;

    fn parse(url: &str) -> Result<Settings> {
        Settings::parse(&mut StoreUrl::parse(url).unwrap())
    }

    #[test]
    fn listen_parses_hosts_ports_sockets_and_off() {
        let base = "postgres://app:s3cret@pooler:6432/db";
        assert_eq!(parse(base).unwrap().listen, Listen::Same);
        assert_eq!(
            parse(&format!("{base}?listen=off")).unwrap().listen,
            Listen::Off
        );
        let at = |host: &str, port| Listen::At {
            host: host.to_string(),
            port,
        };
        for (value, want) in [
            ("db", at("db", 5432)),
            ("db:5433", at("db", 5433)),
            ("10.0.0.7:5433", at("10.0.0.7", 5433)),
            ("[::1]:5433", at("::1", 5433)),
            ("[::1]", at("::1", 5432)),
            ("/var/run/postgresql", at("/var/run/postgresql", 5432)),
        ] {
            let got = parse(&format!("{base}?listen={value}")).unwrap().listen;
            assert_eq!(got, want, "listen={value}");
        }
        // The listener keeps the URL's user, password, database and application name, and
        // connects to the host given.
        let s = parse(&format!("{base}?listen=db:5433")).unwrap();
        let (c, _) = s.listen.config(&s.config, &s.tls).unwrap();
        assert_eq!(c.get_user(), Some("app"));
        assert_eq!(c.get_password(), Some(&b"s3cret"[..]));
        assert_eq!(c.get_dbname(), Some("db"));
        assert_eq!(c.get_application_name(), Some("locksmith"));
        assert_eq!(
            c.get_hosts(),
            [tokio_postgres::config::Host::Tcp("db".into())]
        );
        assert_eq!(c.get_ports(), [5433]);
        assert!(s.listen.config(&s.config, &s.tls).is_some());
        assert!(Listen::Off.config(&s.config, &s.tls).is_none());
    }

    #[test]
    fn bad_listen_values_name_the_fix() {
        let base = "postgres://app:s3cret@pooler:6432/db";
        for value in [
            "", "db:", "db:0", "db:70000", "db:x", "::1:5432", "[::1", "[::1]x", ":5432",
        ] {
            let err = parse(&format!("{base}?listen={value}"))
                .err()
                .unwrap_or_else(|| panic!("listen={value:?} was accepted"))
                .to_string();
            assert!(err.contains("listen="), "{err}");
            assert!(err.contains("listen=off"), "{err}");
            assert!(!err.contains("s3cret"), "{err}");
        }
        let err = parse(&format!("{base}?layout=django-lockmgr&listen=db"))
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("django-lockmgr") && err.contains("listen"),
            "{err}"
        );
    }
}
