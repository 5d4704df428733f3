//! The Redis store: `redis://`, `rediss://` (with the `redis-tls` feature), `redis+unix://`
//! and Redis Cluster (`redis+cluster://host:port,host:port`, `rediss+cluster://…`).
//!
//! # URLs
//!
//! | URL | what |
//! |---|---|
//! | `redis://[user:password@]host[:port][/db]` | one server (ACL users work) |
//! | `rediss://…` | the same over TLS (`redis-tls` feature); `?tls_ca=/path/ca.pem` trusts a private CA |
//! | `redis+unix:///path/redis.sock[?db=N]` | one server on a Unix socket |
//! | `redis+cluster://[user:password@]host:port,host:port,…` | Redis Cluster (seed nodes) |
//!
//! Every URL takes `?namespace=`, `?timeout=` (the response and connect timeout of every
//! command, default 5 s — redis-rs's own default of 500 ms is never used) and
//! `?prefix=` (default `locksmith:`; no `{` or `}`), which every key of this store starts
//! with.
//!
//! `?layout=python-redis-lock` switches to python-redis-lock's own keys and scripts, to share
//! locks with Python services (see [`prl`]); it takes `?signal_expire=` (ms, default 1000).
//!
//! # Layout
//!
//! One lock is one hash, `<prefix>{<ns>:<name>}` (see `keys` for the escaping), whose TTL is
//! the lease: Redis's clock decides expiry and Redis deletes the key when the lease ends, so
//! expired locks are never visible (`expired_visible = false`) and need no purging. Every
//! key of one lock shares its hash tag, so each operation is one Lua script on one slot,
//! sent by `EVALSHA` (loaded again on `NOSCRIPT`): one round trip each.
//!
//! # Fences
//!
//! Minted in the acquire script as `max(last + 1, TIME in µs)`. The last fence of a name
//! lives in its fence key for [`FENCE_KEY_TTL`] after each grant, so fences keep increasing
//! when the server's clock steps back by less than that; the clock keeps them increasing
//! when the counter is lost (a restart without persistence, a failover to a replica that
//! had not seen the last grant, the key's expiry). No counter has to live forever.
//!
//! # What persistence buys
//!
//! Without persistence (or with `appendfsync everysec`, or RDB snapshots only) a restarted
//! server has forgotten some or all locks: their holders are told at their next renewal
//! (`lost()` fires) and others may take them at once — fences stay safe, mutual exclusion
//! across the restart does not. With `appendonly yes` and `appendfsync always` every grant
//! is on disk before it is answered, and locks survive a restart; the store reports
//! `persistent = true` only when the server says so (`CONFIG GET`) at connect time. A
//! cluster always reports `persistent = false`: replication is asynchronous, so a failover
//! can lose a grant even when every master fsyncs.
//!
//! # Waiting: pushed grants
//!
//! A waiter that finds the lock held joins the name's queue (in the same script as its
//! try), and a release hands the lock to the first waiter of the queue in the same script:
//! the lock is never free in between, waiters are served in the order they first tried,
//! and the new holder learns of its grant from a message (its fence, and how long after its
//! last try the lease started), with no try of its own — a handoff costs the release's
//! round trip and one message, and wakes only the new holder's process (a new holder in the
//! releasing process takes the grant from the release's answer: nothing is published).
//! Every process has
//! its own inbox channel per name, and a release skips a waiter whose process no longer
//! listens (it died, or its last waiter of the name left) or that has not tried for
//! 5 s (it hangs, or its host is gone); a waiter that leaves (a timeout, a
//! dropped future) takes itself off the queue, and hands on a grant that reached it too
//! late. A release that hands the lock to nobody publishes a plain wake-up, but only if a
//! try found the lock held since it was granted (the try marks the lock's hash, field `w`),
//! so a lock nobody waited for costs no publish; every waiter also re-polls at the holder's
//! expiry and at least once a second. One subscription connection per store multiplexes
//! every waiter of this process (see `subs`).
//!
//! # Cluster failover
//!
//! List every node, replicas too, in a `redis+cluster://` URL: any of them can tell the
//! topology. While a master fails over, calls on its slots fail with retryable errors (or
//! wait within the call timeout for the promotion); `list` and `reset_all` fail retryably
//! while a failed master still serves slots rather than leave its locks out. Afterwards the
//! same store carries on: redis-rs follows a master that died, and a master that stops
//! answering without closing its connections (frozen, cut off) makes calls stall, which
//! connects the cluster afresh (see `cluster`). The subscription connection is built anew
//! then too, or when any of its nodes drops, so waiters subscribe on the new masters and
//! re-poll at once. Locks whose grants had not reached the replica are gone on the new
//! master: their holders are told at their next renewal (`lost()`), and fences stay
//! increasing (they are hybrid, see above).
//!
//! # Multi-key operations
//!
//! `acquire_all`, `set_locks` and `clear` of many names are one script on a single node
//! (atomic), and name-by-name with rollback on a cluster, where the names live on different
//! slots (`atomic_multi = false` there).

mod cluster;
mod keys;
pub mod prl;
mod scripts;
mod subs;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, RedisError, Script};
use tokio::sync::{mpsc, oneshot};

use crate::error::{Error, Result};
use crate::info::LockInfo;
use crate::lease::Token;
use crate::name::{LockName, Namespace};
use crate::options::{
    Cursor, Expired, ListQuery, Page, SetAction, SetOutcome, SetPolicy, SetStatus,
};
use crate::store::{
    Capabilities, Claim, ExtendMode, Extended, Grant, GrantAll, Released, Store, Successor,
    Wakeups, handed,
};
use crate::url::{StoreUrl, redact_url};

use keys::Keys;
use scripts::{
    ACQUIRE_SCRIPT, CLEAR_SCRIPT, EXTEND_SCRIPT, INFO_SCRIPT, RELEASE_SCRIPT, SET_LOCKS_SCRIPT,
};

/// The default key prefix (`?prefix=`).
pub const DEFAULT_PREFIX: &str = "locksmith:";

/// How long a name's last fence is kept after each grant (see the module docs).
pub const FENCE_KEY_TTL: Duration = Duration::from_secs(3600);

/// How long after its last try a queued waiter may still be handed the lock (see the
/// module docs); waiters try again at least once a second, so an older entry is a waiter
/// that went away without leaving the queue (its process died).
const QUEUE_STALE: Duration = Duration::from_secs(5);

/// How long a name's queue keys live after the last waiter joined.
const QUEUE_LIFE: Duration = Duration::from_secs(10);

/// Keys per `SCAN` step and per `CLEAR` script when resetting.
const BATCH: usize = 500;

const KIND: &str = "redis";

/// A connection to a single node or a cluster; both multiplex every command of the store.
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(Arc<cluster::ClusterConn>),
}

impl Conn {
    async fn invoke<T: redis::FromRedisValue>(
        &self,
        script: &Script,
        keys: &[String],
        args: &[String],
    ) -> redis::RedisResult<T> {
        let mut call = script.prepare_invoke();
        for k in keys {
            call.key(k);
        }
        for a in args {
            call.arg(a);
        }
        match self {
            Conn::Single(c) => call.invoke_async(&mut c.clone()).await,
            Conn::Cluster(c) => {
                c.run(|mut c| async move { call.invoke_async(&mut c).await })
                    .await
            }
        }
    }

    async fn query<T: redis::FromRedisValue>(&self, cmd: &Cmd) -> redis::RedisResult<T> {
        match self {
            Conn::Single(c) => cmd.query_async(&mut c.clone()).await,
            Conn::Cluster(c) => {
                c.run(|mut c| async move { cmd.query_async(&mut c).await })
                    .await
            }
        }
    }
}

/// Maps a driver error: retryable for transient failures (I/O, timeouts, dropped
/// connections, a server loading its data, cluster redirections), never for a wrong
/// password or missing permission.
pub(super) fn store_error(err: RedisError) -> Error {
    use redis::{ErrorKind, RetryMethod, ServerErrorKind};
    let retryable = match err.kind() {
        ErrorKind::AuthenticationFailed | ErrorKind::Server(ServerErrorKind::NoPerm) => false,
        _ if is_auth_error(&err) => false,
        _ => err.is_timeout() || !matches!(err.retry_method(), RetryMethod::NoRetry),
    };
    Error::store(KIND, retryable, err)
}

/// The Redis store. See the [module docs](self).
pub struct RedisStore {
    conn: Conn,
    cluster: bool,
    prefix: String,
    identity: String,
    caps: Capabilities,
    subs: subs::Subscriptions,
    detached: mpsc::UnboundedSender<Detached>,
    timeout: Duration,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("identity", &self.identity)
            .field("cluster", &self.cluster)
            .finish_non_exhaustive()
    }
}

enum Detached {
    Release {
        ns: Namespace,
        name: LockName,
        token: Token,
        min_hold: Option<Duration>,
    },
    Flush(oneshot::Sender<()>),
}

/// Options of a store built from a connection a service already has
/// ([`RedisStore::from_connection_manager`]).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct RedisOptions {
    /// Every key starts with this ([`DEFAULT_PREFIX`]); no `{` or `}`.
    pub prefix: String,
    /// How long the subscription connection may take to connect or answer.
    pub timeout: Duration,
}

impl Default for RedisOptions {
    fn default() -> Self {
        RedisOptions {
            prefix: DEFAULT_PREFIX.to_string(),
            timeout: crate::DEFAULT_TIMEOUT,
        }
    }
}

fn check_prefix(prefix: &str, shown: &str) -> Result<()> {
    if prefix.contains(['{', '}']) {
        return Err(Error::config(format!(
            "store URL {shown:?}: prefix={prefix:?} contains '{{' or '}}', which would move the keys' hash tag — choose a prefix without braces, e.g. prefix=locksmith:"
        )));
    }
    Ok(())
}

/// Opens the store a `redis://` (or `rediss://`, `redis+unix://`, `redis+cluster://`,
/// `rediss+cluster://`) URL names.
pub(crate) async fn open(url: &mut StoreUrl) -> Result<Arc<dyn Store>> {
    let shown = url.redacted().to_string();
    let layout = url.take("layout");
    let prl = match layout.as_deref() {
        None | Some("native") => false,
        Some(prl::LAYOUT) => true,
        Some(other) => {
            return Err(Error::config(format!(
                "store URL {shown:?}: unknown layout={other:?} — write layout=python-redis-lock to share locks with python-redis-lock, or leave it out"
            )));
        }
    };
    let signal_expire = url.take("signal_expire");
    let given_prefix = url.take("prefix");
    let prl_opts = if prl {
        prl_options(url, &shown, given_prefix.is_some(), signal_expire)?
    } else if signal_expire.is_some() {
        return Err(Error::config(format!(
            "store URL {shown:?}: ?signal_expire= only applies with layout=python-redis-lock"
        )));
    } else {
        0
    };
    let prefix = given_prefix.unwrap_or_else(|| DEFAULT_PREFIX.to_string());
    check_prefix(&prefix, &shown)?;
    let db = url.take("db");
    let tls_ca = url.take("tls_ca");
    url.finish(", ?prefix=, ?layout=, ?signal_expire=, ?db= (redis+unix) and ?tls_ca= (rediss)")?;
    let timeout = url.timeout;
    let bad = |what: &str| {
        Error::config(format!(
            "store URL {shown:?}: {what} — write e.g. redis://host:6379/0, redis+unix:///run/redis.sock or redis+cluster://h1:7000,h2:7001"
        ))
    };
    let scheme = url.scheme.as_str();
    let tls = scheme.starts_with("rediss");
    if tls && !cfg!(feature = "redis-tls") {
        return Err(Error::config(format!(
            "store URL {shown:?} asks for TLS, which this build lacks — enable locksmith's `redis-tls` cargo feature"
        )));
    }
    if tls_ca.is_some() && !tls {
        return Err(bad("?tls_ca= only applies to rediss:// URLs"));
    }
    let ca = match &tls_ca {
        Some(path) => Some(std::fs::read(path).map_err(|e| {
            Error::config(format!(
                "store URL {shown:?}: cannot read the CA certificate tls_ca={path:?} ({e}) — give the path of a PEM file"
            ))
        })?),
        None => None,
    };
    if url.body.is_empty() {
        return Err(bad("no host given"));
    }
    let identity = if prl {
        format!(
            "redis:{}|{}",
            redact_url(&format!("{scheme}://{}", url.body)),
            prl::LAYOUT
        )
    } else {
        format!(
            "redis:{}|{prefix}",
            redact_url(&format!("{scheme}://{}", url.body))
        )
    };
    match scheme {
        "redis+cluster" | "rediss+cluster" => {
            if db.is_some() {
                return Err(bad("a cluster has only database 0; drop ?db="));
            }
            let node_scheme = if tls { "rediss" } else { "redis" };
            let (userinfo, hosts) = match url.body.rsplit_once('@') {
                Some((u, h)) => (format!("{u}@"), h),
                None => (String::new(), url.body.as_str()),
            };
            let hosts = hosts.trim_end_matches('/');
            let nodes: Vec<String> = hosts
                .split(',')
                .filter(|h| !h.is_empty())
                .map(|h| format!("{node_scheme}://{userinfo}{h}"))
                .collect();
            if nodes.is_empty() {
                return Err(bad("no cluster node given"));
            }
            let infos = nodes
                .iter()
                .map(|n| redis::IntoConnectionInfo::into_connection_info(n.as_str()))
                .collect::<redis::RedisResult<Vec<_>>>()
                .map_err(|e| bad(&format!("the node list does not parse ({:?})", e.kind())))?;
            let infos_prl = infos.clone();
            let ca_prl = ca.clone();
            let builder = move |push: Option<subs::PushSink>| {
                let mut b = redis::cluster::ClusterClientBuilder::new(infos.clone())
                    .connection_timeout(timeout)
                    .response_timeout(timeout)
                    .retries(2);
                if let Some(ca) = &ca {
                    b = with_cluster_ca(b, ca)?;
                }
                if let Some(push) = push {
                    b = b
                        .use_protocol(redis::ProtocolVersion::RESP3)
                        .push_sender(move |p| push(p));
                }
                b.build()
            };
            let builder = Arc::new(builder);
            let client = builder(None).map_err(|e| bad(&format!("{:?}", e.kind())))?;
            let conn = client
                .get_async_connection()
                .await
                .map_err(|e| unreachable(&shown, e))?;
            if prl {
                let mut b = redis::cluster::ClusterClientBuilder::new(infos_prl)
                    .connection_timeout(timeout)
                    .response_timeout(prl::blpop_response_timeout(timeout))
                    .retries(1);
                if let Some(ca) = &ca_prl {
                    b = with_cluster_ca(b, ca).map_err(|e| bad(&format!("{:?}", e.kind())))?;
                }
                let blockers = b.build().map_err(|e| bad(&format!("{:?}", e.kind())))?;
                return Ok(prl::PrlStore::build(
                    Conn::Cluster(cluster::ClusterConn::fixed(conn)),
                    true,
                    identity,
                    prl_opts,
                    prl::Blockers::Cluster(Box::new(blockers)),
                    timeout,
                ));
            }
            let mut caps = capabilities(false);
            caps.atomic_multi = false;
            let rebuild: cluster::Build = {
                let builder = builder.clone();
                Arc::new(move || builder(None))
            };
            let conn = Conn::Cluster(cluster::ClusterConn::new(conn, rebuild, timeout));
            let source = subs::Source::Cluster(Arc::new(move |push| builder(Some(push))));
            Ok(RedisStore::build(
                conn, true, prefix, identity, caps, source, timeout,
            ))
        }
        "redis" | "rediss" | "redis+unix" => {
            let mut target = format!("{scheme}://{}", url.body);
            if let Some(db) = &db {
                if scheme != "redis+unix" {
                    return Err(bad(
                        "?db= is for redis+unix URLs; write the database as the path, e.g. redis://host/2",
                    ));
                }
                target.push_str(&format!("?db={db}"));
            }
            let client = client_for(&target, ca.as_deref())
                .map_err(|e| bad(&format!("the URL does not parse ({:?})", e.kind())))?;
            if prl {
                let config = ConnectionManagerConfig::new()
                    .set_response_timeout(Some(timeout))
                    .set_connection_timeout(Some(timeout))
                    .set_number_of_retries(2)
                    .set_max_delay(Duration::from_millis(500));
                let manager = ConnectionManager::new_with_config(client.clone(), config)
                    .await
                    .map_err(|e| unreachable(&shown, e))?;
                let conn = Conn::Single(manager);
                conn.query::<String>(&redis::cmd("PING"))
                    .await
                    .map_err(|e| unreachable(&shown, e))?;
                return Ok(prl::PrlStore::build(
                    conn,
                    false,
                    identity,
                    prl_opts,
                    prl::Blockers::Single(Box::new(client)),
                    timeout,
                ));
            }
            RedisStore::open_client(client, prefix, identity, timeout, &shown).await
        }
        other => Err(bad(&format!("unknown scheme {other:?}"))),
    }
}

/// Checks the URL for the python-redis-lock layout; returns its `signal_expire` in ms.
fn prl_options(
    url: &StoreUrl,
    shown: &str,
    prefix_given: bool,
    signal_expire: Option<String>,
) -> Result<u64> {
    if prefix_given {
        return Err(Error::config(format!(
            "store URL {shown:?}: layout=python-redis-lock uses python-redis-lock's own keys (lock:<name>, lock-signal:<name>) and takes no ?prefix= — drop it"
        )));
    }
    if !url.namespace.as_str().is_empty() {
        return Err(Error::config(format!(
            "store URL {shown:?}: layout=python-redis-lock has no namespaces (python-redis-lock has none) — drop ?namespace=, or use a separate Redis database (redis://host/2)"
        )));
    }
    match signal_expire {
        None => Ok(prl::DEFAULT_SIGNAL_EXPIRE_MS),
        Some(ms) => ms.parse::<u64>().ok().filter(|ms| *ms > 0).ok_or_else(|| {
            Error::config(format!(
                "store URL {shown:?}: signal_expire={ms:?} is not a positive whole number of milliseconds — write e.g. signal_expire=1000 (python-redis-lock's default)"
            ))
        }),
    }
}

#[cfg(feature = "redis-tls")]
fn client_for(target: &str, ca: Option<&[u8]>) -> redis::RedisResult<redis::Client> {
    match ca {
        Some(ca) => redis::Client::build_with_tls(
            target,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(ca.to_vec()),
            },
        ),
        None => redis::Client::open(target),
    }
}

#[cfg(not(feature = "redis-tls"))]
fn client_for(target: &str, _ca: Option<&[u8]>) -> redis::RedisResult<redis::Client> {
    redis::Client::open(target)
}

#[cfg(feature = "redis-tls")]
fn with_cluster_ca(
    b: redis::cluster::ClusterClientBuilder,
    ca: &[u8],
) -> redis::RedisResult<redis::cluster::ClusterClientBuilder> {
    Ok(b.certs(redis::TlsCertificates {
        client_tls: None,
        root_cert: Some(ca.to_vec()),
    }))
}

#[cfg(not(feature = "redis-tls"))]
fn with_cluster_ca(
    b: redis::cluster::ClusterClientBuilder,
    _ca: &[u8],
) -> redis::RedisResult<redis::cluster::ClusterClientBuilder> {
    Ok(b)
}

/// A refused login or a missing permission: retrying cannot help.
fn is_auth_error(err: &RedisError) -> bool {
    matches!(err.kind(), redis::ErrorKind::AuthenticationFailed)
        || matches!(err.code(), Some("NOAUTH" | "WRONGPASS" | "NOPERM"))
}

fn unreachable(shown: &str, err: RedisError) -> Error {
    let retryable = !is_auth_error(&err);
    let hint = if retryable {
        "check that the server runs and that the URL's host and port are right"
    } else {
        "check the user name and password in the URL"
    };
    Error::store(
        KIND,
        retryable,
        format!("cannot open the Redis store at {shown:?}: {err} — {hint}"),
    )
}

/// The masters to walk for `list`/`reset_all`, from a `CLUSTER NODES` reply: every healthy
/// master's address. A failed master that still serves slots holds locks no other node can
/// list until its replica takes over, so skipping it would return a page that silently
/// leaves them out: that is a retryable error. A failed master without slots (replaced)
/// holds nothing and is skipped, as are replicas.
pub(super) fn cluster_masters(nodes: &str) -> Result<Vec<(String, u16)>> {
    let mut out = Vec::new();
    for line in nodes.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 3 || !fields[2].split(',').any(|f| f == "master") {
            continue;
        }
        let addr = fields[1].split('@').next().unwrap_or_default();
        if fields[2].contains("fail") {
            if fields.len() > 8 {
                return Err(Error::store(
                    KIND,
                    true,
                    format!(
                        "cannot list: the cluster master {addr} is failing and its slots have no successor yet — retry once the failover is done"
                    ),
                ));
            }
            continue;
        }
        if let Some((host, port)) = addr.rsplit_once(':')
            && let Ok(port) = port.parse()
        {
            out.push((host.to_string(), port));
        }
    }
    if out.is_empty() {
        return Err(bad_reply("cluster nodes"));
    }
    Ok(out)
}

/// Capabilities of the native layout; `persistent` as the server is configured.
fn capabilities(persistent: bool) -> Capabilities {
    let mut caps = Capabilities::NONE;
    caps.fencing = true;
    caps.persistent = persistent;
    caps.cross_process = true;
    caps.notify = true;
    caps.poll_interval = None;
    caps.atomic_multi = true;
    caps.never_expire = true;
    caps.expired_visible = false;
    caps.holder_metadata = true;
    caps.namespaces = true;
    caps.min_hold = true;
    caps.ordered_list = true;
    caps.max_name_len = crate::name::MAX_NAME_LEN;
    caps.ttl_granularity = Duration::from_millis(1);
    caps.pushed_grants = true;
    caps
}

/// Whether the server fsyncs every write before answering (`appendonly yes` with
/// `appendfsync always`); `false` when it cannot be asked (`CONFIG` disabled).
async fn fsyncs_every_write(conn: &Conn) -> bool {
    let mut cmd = redis::cmd("CONFIG");
    cmd.arg("GET").arg("append*");
    let Ok(pairs) = conn.query::<HashMap<String, String>>(&cmd).await else {
        return false;
    };
    pairs.get("appendonly").is_some_and(|v| v == "yes")
        && pairs.get("appendfsync").is_some_and(|v| v == "always")
}

impl RedisStore {
    async fn open_client(
        client: redis::Client,
        prefix: String,
        identity: String,
        timeout: Duration,
        shown: &str,
    ) -> Result<Arc<dyn Store>> {
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(timeout))
            .set_connection_timeout(Some(timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let manager = ConnectionManager::new_with_config(client.clone(), config)
            .await
            .map_err(|e| unreachable(shown, e))?;
        let conn = Conn::Single(manager);
        // Fail now, with a clear message, when the server refuses us (no or wrong password).
        conn.query::<String>(&redis::cmd("PING"))
            .await
            .map_err(|e| unreachable(shown, e))?;
        let caps = capabilities(fsyncs_every_write(&conn).await);
        Ok(RedisStore::build(
            conn,
            false,
            prefix,
            identity,
            caps,
            subs::Source::Single(Box::new(client)),
            timeout,
        ))
    }

    /// A store on a connection a service already has: `client` opens the subscription
    /// connection, `manager` carries every other command (give it an explicit response
    /// timeout: redis-rs defaults to 500 ms). Must be called within a tokio runtime.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for a prefix with `{` or `}`.
    pub async fn from_connection_manager(
        client: redis::Client,
        manager: ConnectionManager,
        options: RedisOptions,
    ) -> Result<Arc<dyn Store>> {
        let shown = redact_url(&client.get_connection_info().addr().to_string());
        check_prefix(&options.prefix, &shown)?;
        let identity = format!("redis:{shown}|{}", options.prefix);
        let conn = Conn::Single(manager);
        let caps = capabilities(fsyncs_every_write(&conn).await);
        Ok(RedisStore::build(
            conn,
            false,
            options.prefix,
            identity,
            caps,
            subs::Source::Single(Box::new(client)),
            options.timeout,
        ))
    }

    /// A store on a `redis::Client` a service already has: opens a `ConnectionManager`
    /// with `options.timeout` as its response timeout.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for a bad prefix; [`Error::Store`] when the server cannot be
    /// reached.
    pub async fn from_client(
        client: redis::Client,
        options: RedisOptions,
    ) -> Result<Arc<dyn Store>> {
        let shown = redact_url(&client.get_connection_info().addr().to_string());
        check_prefix(&options.prefix, &shown)?;
        let identity = format!("redis:{shown}|{}", options.prefix);
        RedisStore::open_client(client, options.prefix, identity, options.timeout, &shown).await
    }

    fn build(
        conn: Conn,
        cluster: bool,
        prefix: String,
        identity: String,
        caps: Capabilities,
        source: subs::Source,
        timeout: Duration,
    ) -> Arc<dyn Store> {
        let renewals = match &conn {
            Conn::Cluster(c) => Some(c.renewals()),
            Conn::Single(_) => None,
        };
        let subs = subs::Subscriptions::start(source, renewals, prefix.clone(), timeout);
        let (tx, rx) = mpsc::unbounded_channel();
        let store = Arc::new(RedisStore {
            conn,
            cluster,
            prefix,
            identity,
            caps,
            subs,
            detached: tx,
            timeout,
        });
        tokio::spawn(detached_worker(Arc::downgrade(&store), rx));
        store
    }

    /// How many subscription connections this store has opened so far (one, plus one per
    /// reconnect).
    pub fn subscription_connections(&self) -> u64 {
        self.subs
            .connections
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    fn keys(&self, ns: &Namespace) -> Keys {
        Keys::new(&self.prefix, ns.as_str())
    }

    fn sharded(&self) -> String {
        if self.cluster { "1" } else { "0" }.to_string()
    }

    async fn acquire_many(&self, ns: &Namespace, claims: &[Claim]) -> Result<GrantAll> {
        let keys = self.keys(ns);
        let mut k = Vec::with_capacity(claims.len() * 2 + 2);
        let mut a = Vec::with_capacity(5 + claims.len() * 6);
        a.push(FENCE_KEY_TTL.as_millis().to_string());
        // A claim that waits is queued when the lock is held (one claim at a time: the core
        // queues only single-lock waits); after its first try it may be queued already.
        let queued = match claims {
            [c] if c.queue && self.caps.pushed_grants => Some(c),
            _ => None,
        };
        match queued {
            Some(c) => {
                a.push(if c.waited.is_zero() { "1" } else { "2" }.to_string());
                a.push(c.grant_id());
                a.push(QUEUE_LIFE.as_millis().to_string());
                a.push(self.subs.inbox().to_string());
            }
            None => a.extend([String::new(), String::new(), String::new(), String::new()]),
        }
        for c in claims {
            k.push(keys.lock(c.name.as_str()));
            k.push(keys.fence(c.name.as_str()));
            a.push(c.token.expose().to_string());
            a.push(c.owner.to_string());
            a.push(c.host.to_string());
            a.push(c.pid.to_string());
            a.push(c.ttl.map(ttl_ms).unwrap_or_default());
            a.push(
                c.min_hold
                    .map(|m| m.as_micros().to_string())
                    .unwrap_or_default(),
            );
        }
        if let Some(c) = queued {
            k.push(keys.queue(c.name.as_str()));
            k.push(keys.entries(c.name.as_str()));
        }
        let out: Vec<String> = self
            .conn
            .invoke(&ACQUIRE_SCRIPT, &k, &a)
            .await
            .map_err(store_error)?;
        let index = |s: Option<&String>| -> Result<usize> {
            s.and_then(|s| s.parse::<usize>().ok())
                .filter(|i| (1..=claims.len()).contains(i))
                .map(|i| i - 1)
                .ok_or_else(|| bad_reply("acquire"))
        };
        match out.first().map(String::as_str) {
            Some("ok") => out[1..]
                .iter()
                .map(|f| f.parse::<u64>().map_err(|_| bad_reply("acquire")))
                .collect::<Result<Vec<u64>>>()
                .map(GrantAll::Acquired),
            Some("mine") => Ok(GrantAll::AlreadyHeld(
                claims[index(out.get(1))?].name.clone(),
            )),
            Some("held") => {
                let i = index(out.get(1))?;
                Ok(GrantAll::Held(parse_info(
                    claims[i].name.as_str(),
                    &out[2..],
                )?))
            }
            _ => Err(bad_reply("acquire")),
        }
    }

    /// Releases `token`'s lock and, with pushed grants, hands it to `next` in the same
    /// script (see [`Store::release_to`]).
    async fn release_now(
        &self,
        ns: &Namespace,
        name: &LockName,
        token: &Token,
        min_hold: Option<Duration>,
        next: Option<&Claim>,
    ) -> Result<(Released, Successor)> {
        let keys = self.keys(ns);
        let n = name.as_str();
        let next = next.filter(|_| self.caps.pushed_grants);
        let next_id = next.map(Claim::grant_id);
        let (next_token, next_entry) = match (next, &next_id) {
            (Some(c), Some(id)) => (
                c.token.expose().to_string(),
                format!(
                    "{} {} {} {id} {} {} {}{}",
                    c.ttl.map(ttl_ms).unwrap_or_default(),
                    c.min_hold
                        .map(|m| m.as_micros().to_string())
                        .unwrap_or_default(),
                    c.pid,
                    self.subs.inbox(),
                    c.owner.len(),
                    c.owner,
                    c.host
                ),
            ),
            _ => (String::new(), String::new()),
        };
        let out: String = self
            .conn
            .invoke(
                &RELEASE_SCRIPT,
                &[keys.lock(n), keys.fence(n), keys.queue(n), keys.entries(n)],
                &[
                    token.expose().to_string(),
                    min_hold
                        .map(|m| m.as_micros().to_string())
                        .unwrap_or_default(),
                    keys.channel(n),
                    self.sharded(),
                    FENCE_KEY_TTL.as_millis().to_string(),
                    QUEUE_STALE.as_micros().to_string(),
                    self.subs.inbox().to_string(),
                    next_token,
                    next_entry,
                    QUEUE_LIFE.as_millis().to_string(),
                ],
            )
            .await
            .map_err(store_error)?;
        let (status, grant) = out.split_once(' ').unwrap_or((&out, ""));
        let (answer, wake_here) = match status {
            "released" => ((Released::Released, Successor::NotTaken), true),
            // The new holder learns of it from its inbox's channel; nobody else here may
            // have it. A waiter of this process takes it from this answer (nothing was
            // published to it): `next`, or one that came before it.
            "handed" => {
                let next = handed(grant, next_id.as_deref(), |id, grant| {
                    self.subs.grant(ns, name, id, grant);
                })
                .ok_or_else(|| bad_reply("release"))?;
                ((Released::Released, next), false)
            }
            "kept" => ((Released::Kept, Successor::NotTaken), true),
            "nothere" => ((Released::NotHeld, Successor::NotTaken), false),
            _ => return Err(bad_reply("release")),
        };
        if wake_here {
            self.subs.notify(ns, name);
        }
        Ok(answer)
    }

    async fn infos(
        &self,
        ns: &Namespace,
        names: &[String],
        token: Option<&Token>,
    ) -> Result<Vec<Option<LockInfo>>> {
        let keys = self.keys(ns);
        let arg = [token.map(|t| t.expose().to_string()).unwrap_or_default()];
        let mut out = Vec::with_capacity(names.len());
        if self.cluster {
            for name in names {
                let v: Vec<Vec<String>> = self
                    .conn
                    .invoke(&INFO_SCRIPT, &[keys.lock(name)], &arg)
                    .await
                    .map_err(store_error)?;
                out.push(info_of(name, v.first())?);
            }
        } else {
            for chunk in names.chunks(BATCH) {
                let k: Vec<String> = chunk.iter().map(|n| keys.lock(n)).collect();
                let v: Vec<Vec<String>> = self
                    .conn
                    .invoke(&INFO_SCRIPT, &k, &arg)
                    .await
                    .map_err(store_error)?;
                for (i, name) in chunk.iter().enumerate() {
                    out.push(info_of(name, v.get(i))?);
                }
            }
        }
        Ok(out)
    }

    /// Every lock name in `ns` starting with `prefix`, by `SCAN` on every master with an
    /// escaped `MATCH` pattern, sorted by byte order.
    async fn scan_names(&self, ns: &Namespace, prefix: &str) -> Result<Vec<String>> {
        let keys = self.keys(ns);
        let pattern = keys.pattern(prefix);
        let mut names = Vec::new();
        let mut collect = |found: Vec<String>| {
            for key in found {
                if let Some(name) = keys.name_of(&key)
                    && name.starts_with(prefix)
                {
                    names.push(name);
                }
            }
        };
        match &self.conn {
            Conn::Single(_) => {
                let mut cursor = 0u64;
                loop {
                    let mut cmd = redis::cmd("SCAN");
                    cmd.arg(cursor)
                        .arg("MATCH")
                        .arg(&pattern)
                        .arg("COUNT")
                        .arg(BATCH);
                    let (next, found): (u64, Vec<String>) =
                        self.conn.query(&cmd).await.map_err(store_error)?;
                    collect(found);
                    if next == 0 {
                        break;
                    }
                    cursor = next;
                }
            }
            Conn::Cluster(conn) => {
                for (host, port) in self.masters(conn).await? {
                    let mut cursor = 0u64;
                    loop {
                        let mut cmd = redis::cmd("SCAN");
                        cmd.arg(cursor)
                            .arg("MATCH")
                            .arg(&pattern)
                            .arg("COUNT")
                            .arg(BATCH);
                        let routing = redis::cluster_routing::RoutingInfo::SingleNode(
                            redis::cluster_routing::SingleNodeRoutingInfo::ByAddress {
                                host: host.clone(),
                                port,
                            },
                        );
                        let value = conn
                            .run(|mut c| async move { c.route_command(cmd, routing).await })
                            .await
                            .map_err(store_error)?;
                        let (next, found): (u64, Vec<String>) =
                            redis::from_redis_value(value).map_err(|_| bad_reply("scan"))?;
                        collect(found);
                        if next == 0 {
                            break;
                        }
                        cursor = next;
                    }
                }
            }
        }
        names.sort_unstable();
        names.dedup();
        Ok(names)
    }

    /// The masters of the cluster, from `CLUSTER NODES`; a retryable error while a failed
    /// master still serves slots (a failover in progress).
    async fn masters(&self, conn: &Arc<cluster::ClusterConn>) -> Result<Vec<(String, u16)>> {
        let mut cmd = redis::cmd("CLUSTER");
        cmd.arg("NODES");
        let text: String = conn
            .run(|mut c| async move { cmd.query_async(&mut c).await })
            .await
            .map_err(store_error)?;
        cluster_masters(&text)
    }

    /// Removes the named locks (one script on a single node), waking their waiters.
    async fn clear(&self, ns: &Namespace, names: &[String]) -> Result<Vec<bool>> {
        let keys = self.keys(ns);
        let mut out = Vec::with_capacity(names.len());
        let chunk_len = if self.cluster { 1 } else { BATCH };
        for chunk in names.chunks(chunk_len) {
            let k: Vec<String> = chunk.iter().map(|n| keys.lock(n)).collect();
            let mut a = vec![self.sharded()];
            a.extend(chunk.iter().map(|n| keys.channel(n)));
            let gone: Vec<i64> = self
                .conn
                .invoke(&CLEAR_SCRIPT, &k, &a)
                .await
                .map_err(store_error)?;
            out.extend(gone.into_iter().map(|g| g == 1));
        }
        Ok(out)
    }

    async fn set_locks_script(
        &self,
        ns: &Namespace,
        claims: &[Claim],
        policy: &SetPolicy,
        fail: bool,
    ) -> Result<std::result::Result<Vec<(SetAction, Option<LockInfo>)>, Error>> {
        let keys = self.keys(ns);
        let flag = |b: bool| if b { "1" } else { "0" }.to_string();
        let mut k = Vec::with_capacity(claims.len() * 2);
        let mut a = vec![
            flag(policy.create),
            flag(policy.renew),
            flag(fail),
            policy.ttl.map(ttl_ms).unwrap_or_default(),
            FENCE_KEY_TTL.as_millis().to_string(),
        ];
        for c in claims {
            k.push(keys.lock(c.name.as_str()));
            k.push(keys.fence(c.name.as_str()));
            a.push(c.token.expose().to_string());
            a.push(c.owner.to_string());
            a.push(c.host.to_string());
            a.push(c.pid.to_string());
            a.push(
                c.min_hold
                    .map(|m| m.as_micros().to_string())
                    .unwrap_or_default(),
            );
        }
        let out: Vec<String> = self
            .conn
            .invoke(&SET_LOCKS_SCRIPT, &k, &a)
            .await
            .map_err(store_error)?;
        match out.first().map(String::as_str) {
            Some("locked") => {
                let i: usize = out
                    .get(1)
                    .and_then(|s| s.parse().ok())
                    .filter(|i| (1..=claims.len()).contains(i))
                    .ok_or_else(|| bad_reply("set_locks"))?;
                let name = claims[i - 1].name.as_str();
                Ok(Err(Error::Locked {
                    name: name.to_string(),
                    holder: Box::new(parse_info(name, &out[2..])?),
                }))
            }
            Some("done") if out.len() == 1 + claims.len() * 10 => {
                let mut rows = Vec::with_capacity(claims.len());
                for (c, row) in claims.iter().zip(out[1..].chunks(10)) {
                    let action = match row[0].as_str() {
                        "created" => SetAction::Created,
                        "renewed" => SetAction::Renewed,
                        "skip_renew" => SetAction::SkippedRenew,
                        "skip_create" => SetAction::SkippedCreate,
                        _ => return Err(bad_reply("set_locks")),
                    };
                    let info = if row[4].is_empty() {
                        None
                    } else {
                        Some(parse_info(c.name.as_str(), &row[1..])?)
                    };
                    rows.push((action, info));
                }
                Ok(Ok(rows))
            }
            _ => Err(bad_reply("set_locks")),
        }
    }
}

async fn detached_worker(
    store: std::sync::Weak<RedisStore>,
    mut rx: mpsc::UnboundedReceiver<Detached>,
) {
    while let Some(job) = rx.recv().await {
        match job {
            Detached::Release {
                ns,
                name,
                token,
                min_hold,
            } => {
                let Some(store) = store.upgrade() else {
                    return;
                };
                let release = store.release_now(&ns, &name, &token, min_hold, None);
                match tokio::time::timeout(store.timeout, release).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(err)) => {
                        tracing::debug!(%err, "detached release failed; the lease will expire")
                    }
                    Err(_) => tracing::debug!("detached release timed out; the lease will expire"),
                }
            }
            Detached::Flush(done) => {
                let _ = done.send(());
            }
        }
    }
}

/// A TTL in whole milliseconds, at least one (the core rounds TTLs up to the store's
/// 1 ms granularity, so nothing is lost).
fn ttl_ms(ttl: Duration) -> String {
    ttl.as_millis().max(1).to_string()
}

fn bad_reply(op: &str) -> Error {
    Error::store(
        KIND,
        false,
        format!(
            "the Redis server gave an unexpected answer to {op} — is another program writing keys under this store's prefix?"
        ),
    )
}

fn info_of(name: &str, fields: Option<&Vec<String>>) -> Result<Option<LockInfo>> {
    match fields {
        Some(f) if !f.is_empty() => parse_info(name, f).map(Some),
        _ => Ok(None),
    }
}

/// Builds a [`LockInfo`] from the scripts' nine info fields: owner, host, pid, fence,
/// acquired_at (µs), min_hold (µs or empty), released ('1'/'0'), PTTL (ms; -1: never
/// expires), now (µs).
fn parse_info(name: &str, f: &[String]) -> Result<LockInfo> {
    if f.len() < 9 {
        return Err(bad_reply("a lock's info"));
    }
    let int = |s: &str| s.parse::<i64>().map_err(|_| bad_reply("a lock's info"));
    let us = |v: i64| Duration::from_micros(u64::try_from(v).unwrap_or(0));
    let (at, pttl, now) = (int(&f[4])?, int(&f[7])?, int(&f[8])?);
    // Every lease is set 1 ms longer than asked (the scripts' `lease`, because `PEXPIRE`
    // counts from a time truncated to the millisecond), so what is surely left is one
    // millisecond less than `PTTL`: a lock just granted for 60 s reports at most 60 s.
    let expires_in =
        (pttl >= 0).then(|| Duration::from_millis(pttl.saturating_sub(1).max(0) as u64));
    let mut info = LockInfo::new(name, expires_in);
    info.owner = Some(f[0].clone());
    info.host = Some(f[1].clone());
    info.pid = f[2].parse().ok();
    info.fence = f[3].parse().ok();
    info.held_for = Some(us(now - at));
    info.released = f[6] == "1";
    info.min_hold = if f[5].is_empty() {
        None
    } else {
        Some(us(int(&f[5])?))
    };
    let wall = |t: i64| UNIX_EPOCH + us(t);
    info.acquired_at = Some(wall(at));
    info.expires_at = expires_in.map(|d| wall(now) + d);
    let _: Option<SystemTime> = info.expires_at;
    Ok(info)
}

#[async_trait]
impl Store for RedisStore {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn capabilities(&self) -> Capabilities {
        self.caps
    }

    fn identity(&self) -> String {
        self.identity.clone()
    }

    async fn try_acquire(&self, ns: &Namespace, claim: &Claim) -> Result<Grant> {
        Ok(
            match self.acquire_many(ns, std::slice::from_ref(claim)).await? {
                GrantAll::Acquired(fences) => Grant::Acquired {
                    fence: fences
                        .first()
                        .copied()
                        .ok_or_else(|| bad_reply("acquire"))?,
                },
                GrantAll::Held(info) => Grant::Held(info),
                GrantAll::AlreadyHeld(_) => Grant::AlreadyHeld,
            },
        )
    }

    async fn try_acquire_all(&self, ns: &Namespace, claims: &[Claim]) -> Result<GrantAll> {
        if !self.cluster {
            return self.acquire_many(ns, claims).await;
        }
        // Cluster: name by name in the order given, rolling back what was taken.
        let mut fences = Vec::with_capacity(claims.len());
        for (i, claim) in claims.iter().enumerate() {
            let answer = self.try_acquire(ns, claim).await;
            let blocked = match answer {
                Ok(Grant::Acquired { fence }) => {
                    fences.push(fence);
                    continue;
                }
                Ok(Grant::Held(info)) => Ok(GrantAll::Held(info)),
                Ok(Grant::AlreadyHeld) => Ok(GrantAll::AlreadyHeld(claim.name.clone())),
                Err(e) => Err(e),
            };
            let taken = if blocked.is_err() { i + 1 } else { i };
            for c in &claims[..taken] {
                if self
                    .release_now(ns, &c.name, &c.token, None, None)
                    .await
                    .is_err()
                {
                    self.release_detached(ns, &c.name, &c.token, None);
                }
            }
            return blocked;
        }
        Ok(GrantAll::Acquired(fences))
    }

    async fn release(
        &self,
        ns: &Namespace,
        name: &LockName,
        token: &Token,
        min_hold: Option<Duration>,
    ) -> Result<Released> {
        let (released, _) = self.release_now(ns, name, token, min_hold, None).await?;
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
        self.release_now(ns, name, token, min_hold, Some(next))
            .await
    }

    fn release_detached(
        &self,
        ns: &Namespace,
        name: &LockName,
        token: &Token,
        min_hold: Option<Duration>,
    ) {
        let job = Detached::Release {
            ns: ns.clone(),
            name: name.clone(),
            token: token.clone(),
            min_hold,
        };
        if self.detached.send(job).is_err() {
            tracing::debug!("detached release not sent (store closed); the lease will expire");
        }
    }

    async fn extend(
        &self,
        ns: &Namespace,
        name: &LockName,
        token: &Token,
        mode: ExtendMode,
    ) -> Result<Extended> {
        let keys = self.keys(ns);
        let (how, d) = match mode {
            ExtendMode::Set(d) => ("set", d),
            ExtendMode::Add(d) => ("add", d),
            ExtendMode::AtLeast(d) => ("atleast", d),
            #[allow(unreachable_patterns)]
            _ => return Err(self.unsupported("extend mode")),
        };
        let out: Vec<String> = self
            .conn
            .invoke(
                &EXTEND_SCRIPT,
                &[keys.lock(name.as_str())],
                &[
                    token.expose().to_string(),
                    how.to_string(),
                    ttl_ms(d),
                    keys.channel(name.as_str()),
                    self.sharded(),
                ],
            )
            .await
            .map_err(store_error)?;
        match out.first().map(String::as_str) {
            Some("ok") => {
                let ms: u64 = out
                    .get(1)
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| bad_reply("extend"))?;
                if matches!(mode, ExtendMode::Set(_)) {
                    self.subs.notify(ns, name);
                }
                Ok(Extended::Extended {
                    expires_in: Duration::from_millis(ms),
                })
            }
            Some("nothere") => Ok(Extended::NotHeld),
            Some("forever") => Ok(Extended::NotExpirable),
            _ => Err(bad_reply("extend")),
        }
    }

    async fn held_by(
        &self,
        ns: &Namespace,
        name: &LockName,
        token: &Token,
    ) -> Result<Option<LockInfo>> {
        let mut v = self
            .infos(ns, &[name.as_str().to_string()], Some(token))
            .await?;
        Ok(v.pop().flatten())
    }

    async fn inspect(&self, ns: &Namespace, name: &LockName) -> Result<Option<LockInfo>> {
        let mut v = self.infos(ns, &[name.as_str().to_string()], None).await?;
        Ok(v.pop().flatten())
    }

    async fn list(&self, ns: &Namespace, query: &ListQuery) -> Result<Page> {
        // Redis drops expired locks: there is nothing expired to show.
        if query.expired == Expired::Only {
            return Ok(Page::new(Vec::new(), None));
        }
        let mut names = self.scan_names(ns, &query.prefix).await?;
        if let Some(after) = &query.after {
            names.retain(|n| n.as_str() > after.as_str());
        }
        let mut items = Vec::with_capacity(query.limit.min(names.len()));
        let mut next = None;
        let mut at = 0;
        while items.len() < query.limit && at < names.len() {
            let want = (query.limit - items.len()).min(names.len() - at);
            let chunk = &names[at..at + want];
            for info in self.infos(ns, chunk, None).await?.into_iter().flatten() {
                items.push(info);
            }
            at += want;
        }
        if at < names.len()
            && let Some(last) = names.get(at - 1)
        {
            next = Some(Cursor::new(last.clone()));
        }
        Ok(Page::new(items, next))
    }

    async fn force_release(&self, ns: &Namespace, names: &[LockName]) -> Result<Vec<bool>> {
        let list: Vec<String> = names.iter().map(|n| n.as_str().to_string()).collect();
        let out = self.clear(ns, &list).await?;
        for name in names {
            self.subs.notify(ns, name);
        }
        Ok(out)
    }

    async fn reset_all(&self, ns: &Namespace) -> Result<u64> {
        let names = self.scan_names(ns, "").await?;
        let gone = self.clear(ns, &names).await?;
        self.subs.notify_namespace(ns);
        Ok(gone.into_iter().filter(|g| *g).count() as u64)
    }

    async fn purge_expired(&self, _ns: &Namespace) -> Result<u64> {
        // Redis deletes a lock when its lease ends.
        Ok(0)
    }

    async fn set_locks(
        &self,
        ns: &Namespace,
        claims: &[Claim],
        policy: &SetPolicy,
    ) -> Result<SetOutcome> {
        let rows = if !self.cluster {
            self.set_locks_script(ns, claims, policy, policy.fail)
                .await??
        } else {
            // Cluster: with `fail`, check every name first; then name by name, rolling
            // back what was created if a name was taken meanwhile.
            if policy.fail {
                let names: Vec<String> =
                    claims.iter().map(|c| c.name.as_str().to_string()).collect();
                for (name, info) in names.iter().zip(self.infos(ns, &names, None).await?) {
                    if let Some(info) = info {
                        return Err(Error::Locked {
                            name: name.clone(),
                            holder: Box::new(info),
                        });
                    }
                }
            }
            let mut rows = Vec::with_capacity(claims.len());
            for (i, claim) in claims.iter().enumerate() {
                let one = self
                    .set_locks_script(ns, std::slice::from_ref(claim), policy, policy.fail)
                    .await;
                match one {
                    Ok(Ok(mut r)) => rows.append(&mut r),
                    Ok(Err(e)) | Err(e) => {
                        for (c, (action, _)) in claims[..i].iter().zip(&rows) {
                            if *action == SetAction::Created {
                                self.release_detached(ns, &c.name, &c.token, None);
                            }
                        }
                        return Err(e);
                    }
                }
            }
            rows
        };
        let mut statuses = Vec::with_capacity(claims.len());
        let mut locks = Vec::new();
        let mut created = Vec::new();
        for (claim, (action, info)) in claims.iter().zip(rows) {
            let name = claim.name.as_str();
            if action == SetAction::Created {
                created.push((name.to_string(), claim.token.clone()));
            }
            let was_locked = matches!(action, SetAction::Renewed | SetAction::SkippedRenew);
            let locked = action != SetAction::SkippedCreate;
            if locked && let Some(info) = info {
                locks.push(info);
            }
            statuses.push(SetStatus::new(name, was_locked, locked, action));
        }
        Ok(SetOutcome::new(statuses, locks, created))
    }

    async fn subscribe(&self, ns: &Namespace, name: &LockName) -> Result<Wakeups> {
        self.subs.subscribe(ns, name).await
    }

    fn subscribes_at_once(&self, ns: &Namespace, name: &LockName) -> bool {
        self.subs.subscribed(ns, name)
    }

    async fn close(&self) -> Result<()> {
        let (done, flushed) = oneshot::channel();
        if self.detached.send(Detached::Flush(done)).is_ok() {
            let _ = flushed.await;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lease_margin_is_not_reported_as_time_left() {
        let fields = |pttl: &str| -> Vec<String> {
            [
                "owner", "host", "7", "42", "1000000", "", "0", pttl, "2000000",
            ]
            .map(String::from)
            .to_vec()
        };
        // Granted for 60 s just now: PTTL is 60,001 ms (the 1 ms margin of `lease`).
        let info = parse_info("n", &fields("60001")).unwrap();
        assert_eq!(info.expires_in, Some(Duration::from_secs(60)));
        assert_eq!(
            parse_info("n", &fields("0")).unwrap().expires_in,
            Some(Duration::ZERO)
        );
        assert_eq!(parse_info("n", &fields("-1")).unwrap().expires_in, None);
    }

    #[test]
    fn cluster_masters_never_skip_a_failing_master_with_slots() {
        let healthy = "\
a1 127.0.0.1:7001@17001 myself,master - 0 0 1 connected 0-5460
b1 127.0.0.1:7002@17002 master - 0 0 2 connected 5461-10922
c1 127.0.0.1:7003@17003 master - 0 0 3 connected 10923-16383
r1 127.0.0.1:7004@17004 slave a1 0 0 1 connected
";
        assert_eq!(
            cluster_masters(healthy).unwrap(),
            [7001, 7002, 7003].map(|p| ("127.0.0.1".to_string(), p))
        );
        // The master failed and its replica has not taken its slots yet: retry later.
        let failing = healthy.replace(
            "b1 127.0.0.1:7002@17002 master",
            "b1 127.0.0.1:7002@17002 master,fail",
        );
        let err = cluster_masters(&failing).unwrap_err();
        assert!(
            err.is_retryable() && err.to_string().contains("7002"),
            "{err}"
        );
        // Replaced: the failed node has no slots left, its successor lists them.
        let replaced = "\
a1 127.0.0.1:7001@17001 myself,master - 0 0 1 connected 0-5460
b1 127.0.0.1:7002@17002 master,fail - 0 0 2 disconnected
r2 127.0.0.1:7005@17005 master - 0 0 4 connected 5461-10922
c1 127.0.0.1:7003@17003 master - 0 0 3 connected 10923-16383
";
        assert_eq!(
            cluster_masters(replaced).unwrap(),
            [7001, 7005, 7003].map(|p| ("127.0.0.1".to_string(), p))
        );
        assert!(cluster_masters("").is_err());
    }

    #[test]
    fn info_fields_parse() {
        let f: Vec<String> = [
            "me",
            "h",
            "42",
            "1700000000000123",
            "1700000000000000",
            "",
            "0",
            "1500",
            "1700000000100000",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let info = parse_info("n", &f).unwrap();
        assert_eq!(info.fence, Some(1_700_000_000_000_123));
        assert_eq!(info.held_for, Some(Duration::from_millis(100)));
        // PTTL less the 1 ms margin every lease carries.
        assert_eq!(info.expires_in, Some(Duration::from_millis(1499)));
        assert!(!info.released);
    }
}
