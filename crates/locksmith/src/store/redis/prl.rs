//! The python-redis-lock layout (`?layout=python-redis-lock`): the very keys, values,
//! scripts and units of python-redis-lock 4.x, so Rust services and shell scripts share
//! locks with Python services on one Redis.
//!
//! ```text
//! lock:<name>          STRING: the holder's id (this store's token, ASCII); TTL in whole seconds
//! lock-signal:<name>   LIST: one "1" pushed on every release, clear and reset (PEXPIRE in ms)
//! ```
//!
//! - Acquire: `SET lock:<name> <token> NX [EX <seconds>]`. The store declares a TTL
//!   granularity of one second, so the core rounds every lease *up* to whole seconds and a
//!   lease never ends in Redis before the guard's local deadline.
//! - Release: python-redis-lock's UNLOCK script (GET must equal the token; DEL signal,
//!   LPUSH signal 1, PEXPIRE signal `signal_expire` ms, DEL lock).
//! - Extend: its EXTEND script (GET must equal the token; TTL < 0 → not expirable; EXPIRE in
//!   whole seconds), with `add` / `at least` computed inside the same script.
//! - Clear: its RESET script (no owner check). Reset all: `SCAN lock:*` (never `KEYS`), then
//!   per key the RESET steps with `EXPIRE signal 1` (a fixed second, as Python does).
//! - Waiting: Python never publishes, so waiters here `BLPOP lock-signal:<name>` on a
//!   connection of their own — one per waiting *name* in this process, however many waiters
//!   queue behind it (the core's in-process FIFO) — with a one-second timeout, so a Python
//!   holder's key that expires without a signal is noticed at the next poll. Guards watch
//!   their name the same way (a `clear` pushes a signal too). A signal is one waiter's turn:
//!   the task keeps it only when an acquire of this process waits for the name, and hands
//!   it back otherwise (only guards watching, among them the one whose release pushed it),
//!   so a Python waiter blocked on it is not left waiting.
//!
//! What the layout cannot do: fencing tokens, holder metadata, namespaces, `min_hold`
//! (python-redis-lock waiters may block in `BLPOP … 0` and would never learn that a kept
//! lock ended), expired rows. Everything else works as on the native layout.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use redis::Script;
use tokio::sync::{mpsc, oneshot};

use crate::error::{Error, Result};
use crate::info::LockInfo;
use crate::lease::Token;
use crate::name::{LockName, Namespace};
use crate::options::{Expired, ListQuery, Page, SetAction, SetOutcome, SetPolicy, SetStatus};
use crate::store::{
    Capabilities, Claim, ExtendMode, Extended, Grant, GrantAll, Released, Store, WakeHub, Wakeups,
};

use super::keys::glob_escape;
use super::{Conn, bad_reply, store_error};

const KIND: &str = "redis";

/// The value of `?layout=` that selects this layout.
pub const LAYOUT: &str = "python-redis-lock";

/// python-redis-lock's default `signal_expire`, in milliseconds.
pub const DEFAULT_SIGNAL_EXPIRE_MS: u64 = 1000;

/// How long one `BLPOP` of a waiting name blocks, in whole seconds: the longest a Python
/// holder's silent expiry goes unnoticed by the wake-up task (the core re-polls at the
/// expiry it saw, too).
const BLPOP_SECONDS: u64 = 1;

/// Keys per `SCAN` step.
const SCAN_COUNT: usize = 500;

/// `SET NX [EX]`; on failure says whether the token already holds the lock and the PTTL.
static ACQUIRE: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| {
    Script::new(
        r#"
local ok
if ARGV[2] == '' then
  ok = redis.call('SET', KEYS[1], ARGV[1], 'NX')
else
  ok = redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2])
end
if ok then return {'ok'} end
if redis.call('TYPE', KEYS[1]).ok ~= 'string' then return {'alien'} end
if redis.call('GET', KEYS[1]) == ARGV[1] then return {'mine'} end
return {'held', tostring(redis.call('PTTL', KEYS[1]))}
"#,
    )
});

/// python-redis-lock's UNLOCK script, step for step.
static UNLOCK: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| {
    Script::new(
        r#"
if redis.call("get", KEYS[1]) ~= ARGV[1] then
    return 1
else
    redis.call("del", KEYS[2])
    redis.call("lpush", KEYS[2], 1)
    redis.call("pexpire", KEYS[2], ARGV[2])
    redis.call("del", KEYS[1])
    return 0
end
"#,
    )
});

/// python-redis-lock's EXTEND script (ARGV[2] = whole seconds), plus `add` / `atleast`
/// (ARGV[3]) computed from the PTTL (ARGV[4] = ms) and rounded up to whole seconds. Returns
/// `{0, pttl}`, `{1}` (not the holder) or `{2}` (no expiry).
static EXTEND: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| {
    Script::new(
        r#"
if redis.call("get", KEYS[1]) ~= ARGV[1] then
    return {1}
elseif redis.call("ttl", KEYS[1]) < 0 then
    return {2}
else
    local secs = tonumber(ARGV[2])
    if ARGV[3] ~= 'set' then
        local left = math.max(redis.call("pttl", KEYS[1]), 0)
        local ms
        if ARGV[3] == 'add' then ms = left + tonumber(ARGV[4]) else ms = math.max(left, tonumber(ARGV[4])) end
        secs = math.ceil(ms / 1000)
    end
    redis.call("expire", KEYS[1], secs)
    return {0, redis.call("pttl", KEYS[1])}
end
"#,
    )
});

/// python-redis-lock's RESET script (no owner check); ARGV[1] is the signal expiry in ms,
/// or `reset_all` for its fixed `EXPIRE signal 1`.
static RESET: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| {
    Script::new(
        r#"
redis.call("del", KEYS[2])
redis.call("lpush", KEYS[2], 1)
if ARGV[1] == 'reset_all' then
    redis.call("expire", KEYS[2], 1)
else
    redis.call("pexpire", KEYS[2], ARGV[1])
end
return redis.call("del", KEYS[1])
"#,
    )
});

/// Per key: `{type, pttl, mine}` where `mine` is 1 when ARGV[1] (a token, or empty) holds it.
static INFO: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| {
    Script::new(
        r#"
local out = {}
for _, k in ipairs(KEYS) do
    local t = redis.call('TYPE', k).ok
    if t == 'string' then
        local v = redis.call('GET', k)
        out[#out + 1] = 'string'
        out[#out + 1] = tostring(redis.call('PTTL', k))
        out[#out + 1] = (ARGV[1] ~= '' and v == ARGV[1]) and '1' or '0'
    else
        out[#out + 1] = t
        out[#out + 1] = '-2'
        out[#out + 1] = '0'
    end
end
return out
"#,
    )
});

/// django-lockmgr's set/renew over python-redis-lock keys. ARGV: create, renew, fail ('1' or
/// '0'), TTL in whole seconds ('' never expires), then one token per key. Returns
/// `{'locked', i, pttl}` (with `fail`, nothing changed) or `{'done', action, pttl, …}`.
static SET_LOCKS: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| {
    Script::new(
        r#"
local create, renew, fail, ttl = ARGV[1] == '1', ARGV[2] == '1', ARGV[3] == '1', ARGV[4]
if fail then
    for i, k in ipairs(KEYS) do
        if redis.call('EXISTS', k) == 1 then
            return {'locked', tostring(i), tostring(redis.call('PTTL', k))}
        end
    end
end
local out = {'done'}
for i, k in ipairs(KEYS) do
    local action
    if redis.call('EXISTS', k) == 1 then
        if renew then
            if ttl == '' then
                redis.call('PERSIST', k)
            else
                local left = redis.call('PTTL', k)
                if left >= 0 and left < tonumber(ttl) * 1000 then
                    redis.call('EXPIRE', k, ttl)
                end
            end
            action = 'renewed'
        else
            action = 'skip_renew'
        end
    elseif create then
        if ttl == '' then
            redis.call('SET', k, ARGV[4 + i])
        else
            redis.call('SET', k, ARGV[4 + i], 'EX', ttl)
        end
        action = 'created'
    else
        action = 'skip_create'
    end
    out[#out + 1] = action
    out[#out + 1] = tostring(redis.call('PTTL', k))
end
return out
"#,
    )
});

/// Puts a wake-up back that a wake-up task took when nobody here waited for it.
static GIVE_BACK: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| {
    Script::new(
        r#"
redis.call("lpush", KEYS[1], 1)
redis.call("pexpire", KEYS[1], ARGV[1])
return 0
"#,
    )
});

/// The lock key of `name`.
fn lock_key(name: &str) -> String {
    format!("lock:{name}")
}

/// The wake-up list of `name`.
fn signal_key(name: &str) -> String {
    format!("lock-signal:{name}")
}

/// Whether `name` holds a Redis hash tag (`{…}` with something inside), so `lock:<name>`
/// and `lock-signal:<name>` hash to the same slot.
pub(super) fn has_hash_tag(name: &str) -> bool {
    match name.find('{') {
        Some(open) => match name[open + 1..].find('}') {
            Some(len) => len > 0,
            None => false,
        },
        None => false,
    }
}

/// Opens dedicated connections for the wake-up tasks (response timeout longer than a
/// `BLPOP`).
#[derive(Clone)]
pub(super) enum Blockers {
    /// A single node.
    Single(Box<redis::Client>),
    /// A cluster.
    Cluster(Box<redis::cluster::ClusterClient>),
}

impl Blockers {
    async fn connect(&self, timeout: Duration) -> redis::RedisResult<Conn> {
        match self {
            Blockers::Single(client) => {
                // A connection of this task's own: its BLPOP holds up nobody else.
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(timeout))
                    .set_response_timeout(Some(blpop_response_timeout(timeout)))
                    .set_number_of_retries(1);
                let conn =
                    redis::aio::ConnectionManager::new_with_config((**client).clone(), config)
                        .await?;
                Ok(Conn::Single(conn))
            }
            Blockers::Cluster(client) => Ok(Conn::Cluster(super::cluster::ClusterConn::fixed(
                client.get_async_connection().await?,
            ))),
        }
    }
}

/// The response timeout of a wake-up connection: a `BLPOP` plus the store's timeout.
pub(super) fn blpop_response_timeout(timeout: Duration) -> Duration {
    Duration::from_secs(BLPOP_SECONDS) + timeout
}

/// The python-redis-lock layout on one node or a cluster. See the [module docs](self).
pub struct PrlStore {
    conn: Conn,
    cluster: bool,
    identity: String,
    caps: Capabilities,
    signal_expire_ms: u64,
    hub: Arc<WakeHub>,
    /// Names whose wake-up task runs.
    blocking: Arc<Mutex<HashSet<LockName>>>,
    blockers: Blockers,
    detached: mpsc::UnboundedSender<Detached>,
    timeout: Duration,
}

impl std::fmt::Debug for PrlStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrlStore")
            .field("identity", &self.identity)
            .field("cluster", &self.cluster)
            .finish_non_exhaustive()
    }
}

enum Detached {
    Release(LockName, Token),
    Flush(oneshot::Sender<()>),
}

/// The capabilities of the layout.
pub(super) fn capabilities() -> Capabilities {
    let mut caps = Capabilities::NONE;
    caps.fencing = false;
    caps.persistent = false;
    caps.cross_process = true;
    caps.notify = true;
    caps.poll_interval = Some(Duration::from_secs(BLPOP_SECONDS));
    caps.atomic_multi = false;
    caps.never_expire = true;
    caps.expired_visible = false;
    caps.holder_metadata = false;
    caps.namespaces = false;
    caps.min_hold = false;
    caps.ordered_list = true;
    caps.max_name_len = crate::name::MAX_NAME_LEN;
    caps.ttl_granularity = Duration::from_secs(1);
    caps
}

impl PrlStore {
    /// Builds the store; `conn` carries every command but the `BLPOP`s.
    pub(super) fn build(
        conn: Conn,
        cluster: bool,
        identity: String,
        signal_expire_ms: u64,
        blockers: Blockers,
        timeout: Duration,
    ) -> Arc<dyn Store> {
        let (tx, rx) = mpsc::unbounded_channel();
        let store = Arc::new(PrlStore {
            conn,
            cluster,
            identity,
            caps: capabilities(),
            signal_expire_ms,
            hub: Arc::new(WakeHub::default()),
            blocking: Arc::default(),
            blockers,
            detached: tx,
            timeout,
        });
        tokio::spawn(detached_worker(Arc::downgrade(&store), rx));
        store
    }

    fn check(&self, ns: &Namespace, name: &str) -> Result<()> {
        check_ns(ns)?;
        if self.cluster && !has_hash_tag(name) {
            return Err(Error::InvalidName {
                name: name.to_string(),
                reason: format!(
                    "on Redis Cluster, python-redis-lock's keys lock:<name> and lock-signal:<name> share a slot only when the name holds a hash tag — name the lock \"{{{name}}}\" (the same name in Python: Lock(conn, \"{{{name}}}\"))"
                ),
            });
        }
        Ok(())
    }
}

fn check_ns(ns: &Namespace) -> Result<()> {
    if !ns.as_str().is_empty() {
        return Err(Error::config(format!(
            "the python-redis-lock layout has no namespaces (namespace {:?} given) — drop ?namespace= from the URL",
            ns.as_str()
        )));
    }
    Ok(())
}

impl PrlStore {
    async fn release_now(&self, name: &LockName, token: &Token) -> Result<Released> {
        let n = name.as_str();
        let out: i64 = self
            .conn
            .invoke(
                &UNLOCK,
                &[lock_key(n), signal_key(n)],
                &[
                    token.expose().to_string(),
                    self.signal_expire_ms.to_string(),
                ],
            )
            .await
            .map_err(store_error)?;
        match out {
            0 => {
                self.hub.notify(&Namespace::default(), name);
                Ok(Released::Released)
            }
            1 => Ok(Released::NotHeld),
            _ => Err(bad_reply("release")),
        }
    }

    /// `(type, pttl, mine)` per name.
    async fn infos(&self, names: &[String], token: Option<&Token>) -> Result<Vec<Option<Info>>> {
        let arg = token.map(|t| t.expose().to_string()).unwrap_or_default();
        let mut out = Vec::with_capacity(names.len());
        let chunk_len = if self.cluster { 1 } else { SCAN_COUNT };
        for chunk in names.chunks(chunk_len) {
            let keys: Vec<String> = chunk.iter().map(|n| lock_key(n)).collect();
            let fields: Vec<String> = self
                .conn
                .invoke(&INFO, &keys, std::slice::from_ref(&arg))
                .await
                .map_err(store_error)?;
            if fields.len() != chunk.len() * 3 {
                return Err(bad_reply("inspect"));
            }
            for f in fields.chunks(3) {
                out.push(if f[0] == "string" {
                    let pttl: i64 = f[1].parse().map_err(|_| bad_reply("inspect"))?;
                    Some(Info {
                        pttl,
                        mine: f[2] == "1",
                    })
                } else {
                    None
                });
            }
        }
        Ok(out)
    }

    /// Every lock key's name (`SCAN MATCH lock:<prefix>*` on every master), sorted.
    async fn scan_names(&self, prefix: &str) -> Result<Vec<String>> {
        let pattern = format!("{}*", glob_escape(&lock_key(prefix)));
        let mut keys = Vec::new();
        match &self.conn {
            Conn::Cluster(conn) => {
                let conn = &conn.get();
                for (host, port) in masters(conn).await? {
                    let mut cursor = 0u64;
                    loop {
                        let routing = redis::cluster_routing::RoutingInfo::SingleNode(
                            redis::cluster_routing::SingleNodeRoutingInfo::ByAddress {
                                host: host.clone(),
                                port,
                            },
                        );
                        let value = conn
                            .clone()
                            .route_command(scan_cmd(cursor, &pattern), routing)
                            .await
                            .map_err(store_error)?;
                        let (next, found): (u64, Vec<String>) =
                            redis::from_redis_value(value).map_err(|_| bad_reply("scan"))?;
                        keys.extend(found);
                        if next == 0 {
                            break;
                        }
                        cursor = next;
                    }
                }
            }
            conn => {
                let mut cursor = 0u64;
                loop {
                    let (next, found): (u64, Vec<String>) = conn
                        .query(&scan_cmd(cursor, &pattern))
                        .await
                        .map_err(store_error)?;
                    keys.extend(found);
                    if next == 0 {
                        break;
                    }
                    cursor = next;
                }
            }
        }
        let mut names: Vec<String> = keys
            .into_iter()
            .filter_map(|k| k.strip_prefix("lock:").map(str::to_string))
            .filter(|n| n.starts_with(prefix))
            .collect();
        names.sort_unstable();
        names.dedup();
        Ok(names)
    }

    /// One `SET_LOCKS` script over `claims` (all on one slot).
    async fn set_locks_script(
        &self,
        claims: &[Claim],
        policy: &SetPolicy,
        fail: bool,
    ) -> Result<std::result::Result<Vec<(SetAction, i64)>, Error>> {
        let flag = |b: bool| if b { "1" } else { "0" }.to_string();
        let keys: Vec<String> = claims.iter().map(|c| lock_key(c.name.as_str())).collect();
        let mut args = vec![
            flag(policy.create),
            flag(policy.renew),
            flag(fail),
            policy
                .ttl
                .map(|t| whole_seconds(t).to_string())
                .unwrap_or_default(),
        ];
        args.extend(claims.iter().map(|c| c.token.expose().to_string()));
        let out: Vec<String> = self
            .conn
            .invoke(&SET_LOCKS, &keys, &args)
            .await
            .map_err(store_error)?;
        let int = |s: Option<&String>| -> Result<i64> {
            s.and_then(|s| s.parse().ok())
                .ok_or_else(|| bad_reply("set_locks"))
        };
        match out.first().map(String::as_str) {
            Some("locked") => {
                let i = int(out.get(1))?;
                let claim = usize::try_from(i - 1)
                    .ok()
                    .and_then(|i| claims.get(i))
                    .ok_or_else(|| bad_reply("set_locks"))?;
                let name = claim.name.as_str();
                let pttl = int(out.get(2))?;
                Ok(Err(Error::Locked {
                    name: name.to_string(),
                    holder: Box::new(info_of(name, &Info { pttl, mine: false })),
                }))
            }
            Some("done") if out.len() == 1 + claims.len() * 2 => {
                let mut rows = Vec::with_capacity(claims.len());
                for row in out[1..].chunks(2) {
                    let action = match row[0].as_str() {
                        "created" => SetAction::Created,
                        "renewed" => SetAction::Renewed,
                        "skip_renew" => SetAction::SkippedRenew,
                        "skip_create" => SetAction::SkippedCreate,
                        _ => return Err(bad_reply("set_locks")),
                    };
                    rows.push((action, int(row.get(1))?));
                }
                Ok(Ok(rows))
            }
            _ => Err(bad_reply("set_locks")),
        }
    }

    async fn reset(&self, name: &str, how: String) -> Result<bool> {
        let gone: i64 = self
            .conn
            .invoke(&RESET, &[lock_key(name), signal_key(name)], &[how])
            .await
            .map_err(store_error)?;
        Ok(gone > 0)
    }
}

struct Info {
    pttl: i64,
    mine: bool,
}

fn info_of(name: &str, info: &Info) -> LockInfo {
    let expires_in = (info.pttl >= 0).then(|| Duration::from_millis(info.pttl as u64));
    LockInfo::new(name, expires_in)
}

fn scan_cmd(cursor: u64, pattern: &str) -> redis::Cmd {
    let mut cmd = redis::cmd("SCAN");
    cmd.arg(cursor)
        .arg("MATCH")
        .arg(pattern)
        .arg("COUNT")
        .arg(SCAN_COUNT);
    cmd
}

/// The masters of the cluster, from `CLUSTER NODES`.
async fn masters(conn: &redis::cluster_async::ClusterConnection) -> Result<Vec<(String, u16)>> {
    let text: String = redis::cmd("CLUSTER")
        .arg("NODES")
        .query_async(&mut conn.clone())
        .await
        .map_err(store_error)?;
    super::cluster_masters(&text)
}

/// Whole seconds, rounded up (the core already rounds to the 1 s granularity), at least 1.
fn whole_seconds(d: Duration) -> u64 {
    let s = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    s.max(1)
}

async fn detached_worker(
    store: std::sync::Weak<PrlStore>,
    mut rx: mpsc::UnboundedReceiver<Detached>,
) {
    while let Some(job) = rx.recv().await {
        match job {
            Detached::Release(name, token) => {
                let Some(store) = store.upgrade() else {
                    return;
                };
                let release = store.release_now(&name, &token);
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

/// How long a wake-up task that handed a signal back waits before it blocks again: the
/// signal is still there for another process, and only guards of this process watch the
/// name (for a `clear`), so blocking at once would take it again and again.
const GIVE_BACK_PAUSE: Duration = Duration::from_millis(100);

/// One name's wake-up task: `BLPOP lock-signal:<name>` on a connection of its own while
/// this process has waiters for the name, or guards watching it; each signal (and each
/// timeout, and each reconnect) wakes them so they try again, or check that they still
/// hold the lock. A signal is a turn for one waiter (python-redis-lock's protocol): it is
/// kept only when an acquire of this process waits for the name (`identity`'s queue in the
/// registry); otherwise — nobody here, or only guards, among them the guard whose own
/// release pushed it — it is handed back for another process's waiter.
async fn wake_task(
    hub: std::sync::Weak<WakeHub>,
    blocking: Arc<Mutex<HashSet<LockName>>>,
    blockers: Blockers,
    name: LockName,
    timeout: Duration,
    signal_expire_ms: u64,
    identity: Arc<str>,
) {
    let ns = Namespace::default();
    let signal = signal_key(name.as_str());
    let mut conn: Option<Conn> = None;
    let mut backoff = Duration::from_millis(50);
    loop {
        let Some(h) = hub.upgrade() else {
            return;
        };
        {
            let mut running = blocking.lock().unwrap_or_else(|e| e.into_inner());
            if !h.has_subscribers(&ns, &name) {
                running.remove(&name);
                return;
            }
        }
        drop(h);
        let c = match &conn {
            Some(c) => c.clone(),
            None => match blockers.connect(timeout).await {
                Ok(c) => {
                    conn = Some(c.clone());
                    backoff = Duration::from_millis(50);
                    c
                }
                Err(err) => {
                    tracing::debug!(%err, lock = %name, "wake-up connection failed; waiters poll");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            },
        };
        let mut cmd = redis::cmd("BLPOP");
        cmd.arg(&signal).arg(BLPOP_SECONDS);
        let popped: redis::RedisResult<Option<(String, String)>> = c.query(&cmd).await;
        let Some(h) = hub.upgrade() else {
            return;
        };
        match popped {
            Ok(Some(_)) => {
                let watched = h.has_subscribers(&ns, &name);
                if watched {
                    h.notify(&ns, &name);
                }
                drop(h);
                if crate::registry::queued(&identity, &ns, &name) == 0 {
                    // Nobody here waits: leave the turn to another process's waiter.
                    let _ = c
                        .invoke::<i64>(
                            &GIVE_BACK,
                            std::slice::from_ref(&signal),
                            &[signal_expire_ms.to_string()],
                        )
                        .await;
                    if watched {
                        tokio::time::sleep(GIVE_BACK_PAUSE).await;
                    }
                }
            }
            Ok(None) => h.notify(&ns, &name),
            Err(err) => {
                tracing::debug!(%err, lock = %name, "wake-up connection lost; reconnecting");
                conn = None;
                h.notify(&ns, &name);
                tokio::time::sleep(backoff).await;
            }
        }
    }
}

#[async_trait]
impl Store for PrlStore {
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
        let n = claim.name.as_str();
        self.check(ns, n)?;
        let ttl = claim
            .ttl
            .map(|t| whole_seconds(t).to_string())
            .unwrap_or_default();
        let out: Vec<String> = self
            .conn
            .invoke(
                &ACQUIRE,
                &[lock_key(n)],
                &[claim.token.expose().to_string(), ttl],
            )
            .await
            .map_err(store_error)?;
        match out.first().map(String::as_str) {
            Some("ok") => Ok(Grant::Acquired { fence: 0 }),
            Some("mine") => Ok(Grant::AlreadyHeld),
            Some("held") => {
                let pttl: i64 = out
                    .get(1)
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| bad_reply("acquire"))?;
                Ok(Grant::Held(info_of(n, &Info { pttl, mine: false })))
            }
            Some("alien") => Err(Error::store(
                KIND,
                false,
                format!(
                    "the key lock:{n} exists but is not a string, so it is not a python-redis-lock lock — another program uses it; pick another lock name"
                ),
            )),
            _ => Err(bad_reply("acquire")),
        }
    }

    async fn try_acquire_all(&self, ns: &Namespace, claims: &[Claim]) -> Result<GrantAll> {
        // Name by name in the order given (python-redis-lock has no multi-lock), rolling
        // back what was taken before answering, so a retry finds nothing of its own.
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
                if self.release_now(&c.name, &c.token).await.is_err() {
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
        // The core refuses `min_hold` on this layout (`min_hold = false`) when locking, so
        // a release always frees the lock now.
        let _ = min_hold;
        self.check(ns, name.as_str())?;
        self.release_now(name, token).await
    }

    fn release_detached(
        &self,
        _ns: &Namespace,
        name: &LockName,
        token: &Token,
        _min_hold: Option<Duration>,
    ) {
        if self
            .detached
            .send(Detached::Release(name.clone(), token.clone()))
            .is_err()
        {
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
        let n = name.as_str();
        self.check(ns, n)?;
        let (how, d) = match mode {
            ExtendMode::Set(d) => ("set", d),
            ExtendMode::Add(d) => ("add", d),
            ExtendMode::AtLeast(d) => ("atleast", d),
            #[allow(unreachable_patterns)]
            _ => return Err(self.unsupported("extend mode")),
        };
        let out: Vec<i64> = self
            .conn
            .invoke(
                &EXTEND,
                &[lock_key(n), signal_key(n)],
                &[
                    token.expose().to_string(),
                    whole_seconds(d).to_string(),
                    how.to_string(),
                    (whole_seconds(d) * 1000).to_string(),
                ],
            )
            .await
            .map_err(store_error)?;
        match out.as_slice() {
            [0, pttl] => {
                if how == "set" {
                    self.hub.notify(ns, name);
                }
                Ok(Extended::Extended {
                    expires_in: Duration::from_millis((*pttl).max(0) as u64),
                })
            }
            [1] => Ok(Extended::NotHeld),
            [2] => Ok(Extended::NotExpirable),
            _ => Err(bad_reply("extend")),
        }
    }

    async fn held_by(
        &self,
        ns: &Namespace,
        name: &LockName,
        token: &Token,
    ) -> Result<Option<LockInfo>> {
        let n = name.as_str();
        self.check(ns, n)?;
        let infos = self.infos(&[n.to_string()], Some(token)).await?;
        Ok(infos
            .first()
            .and_then(|i| i.as_ref())
            .filter(|i| i.mine)
            .map(|i| info_of(n, i)))
    }

    async fn inspect(&self, ns: &Namespace, name: &LockName) -> Result<Option<LockInfo>> {
        let n = name.as_str();
        self.check(ns, n)?;
        let infos = self.infos(&[n.to_string()], None).await?;
        Ok(infos
            .first()
            .and_then(|i| i.as_ref())
            .map(|i| info_of(n, i)))
    }

    async fn list(&self, ns: &Namespace, query: &ListQuery) -> Result<Page> {
        check_ns(ns)?;
        if query.expired == Expired::Only {
            return Ok(Page::new(Vec::new(), None));
        }
        let mut names: Vec<String> = self
            .scan_names(&query.prefix)
            .await?
            .into_iter()
            .filter(|n| LockName::new(n).is_ok())
            .collect();
        if let Some(after) = &query.after {
            names.retain(|n| n.as_str() > after.as_str());
        }
        let mut items = Vec::new();
        let mut at = 0;
        while items.len() < query.limit && at < names.len() {
            let want = (query.limit - items.len()).min(names.len() - at);
            let chunk = &names[at..at + want];
            for (n, info) in chunk.iter().zip(self.infos(chunk, None).await?) {
                if let Some(info) = info {
                    items.push(info_of(n, &info));
                }
            }
            at += want;
        }
        let next = (at < names.len())
            .then(|| names.get(at.wrapping_sub(1)).cloned())
            .flatten()
            .map(crate::options::Cursor::new);
        Ok(Page::new(items, next))
    }

    async fn force_release(&self, ns: &Namespace, names: &[LockName]) -> Result<Vec<bool>> {
        for n in names {
            self.check(ns, n.as_str())?;
        }
        let mut out = Vec::with_capacity(names.len());
        for n in names {
            out.push(
                self.reset(n.as_str(), self.signal_expire_ms.to_string())
                    .await?,
            );
            self.hub.notify(ns, n);
        }
        Ok(out)
    }

    async fn reset_all(&self, ns: &Namespace) -> Result<u64> {
        check_ns(ns)?;
        let mut gone = 0;
        for name in self.scan_names("").await? {
            if self.cluster && !has_hash_tag(&name) {
                // Python's own reset_all cannot reach it either: its two keys live on two
                // slots. Resetting only the lock key would leave a waiter unsignalled.
                tracing::warn!(key = %lock_key(&name), "skipped: the name has no hash tag, so its keys are on different cluster slots");
                continue;
            }
            if self.reset(&name, "reset_all".to_string()).await? {
                gone += 1;
            }
        }
        self.hub.notify_namespace(ns);
        Ok(gone)
    }

    async fn set_locks(
        &self,
        ns: &Namespace,
        claims: &[Claim],
        policy: &SetPolicy,
    ) -> Result<SetOutcome> {
        for c in claims {
            self.check(ns, c.name.as_str())?;
        }
        let rows = if !self.cluster {
            self.set_locks_script(claims, policy, policy.fail).await??
        } else {
            // Cluster: the names live on different slots. With `fail`, check every name
            // first; then name by name, rolling back what was created if one was taken.
            if policy.fail {
                let names: Vec<String> =
                    claims.iter().map(|c| c.name.as_str().to_string()).collect();
                for (name, info) in names.iter().zip(self.infos(&names, None).await?) {
                    if let Some(info) = info {
                        return Err(Error::Locked {
                            name: name.clone(),
                            holder: Box::new(info_of(name, &info)),
                        });
                    }
                }
            }
            let mut rows = Vec::with_capacity(claims.len());
            for (i, claim) in claims.iter().enumerate() {
                let one = self
                    .set_locks_script(std::slice::from_ref(claim), policy, policy.fail)
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
        for (claim, (action, pttl)) in claims.iter().zip(rows) {
            let name = claim.name.as_str();
            if action == SetAction::Created {
                created.push((name.to_string(), claim.token.clone()));
            }
            let was_locked = matches!(action, SetAction::Renewed | SetAction::SkippedRenew);
            let locked = action != SetAction::SkippedCreate;
            if locked && pttl != -2 {
                locks.push(info_of(name, &Info { pttl, mine: false }));
            }
            statuses.push(SetStatus::new(name, was_locked, locked, action));
        }
        Ok(SetOutcome::new(statuses, locks, created))
    }

    async fn purge_expired(&self, _ns: &Namespace) -> Result<u64> {
        // Redis deletes a lock when its lease ends.
        Ok(0)
    }

    async fn subscribe(&self, ns: &Namespace, name: &LockName) -> Result<Wakeups> {
        self.check(ns, name.as_str())?;
        let wakeups = self.hub.subscribe(ns, name);
        let start = {
            let mut running = self.blocking.lock().unwrap_or_else(|e| e.into_inner());
            running.insert(name.clone())
        };
        if start {
            tokio::spawn(wake_task(
                Arc::downgrade(&self.hub),
                self.blocking.clone(),
                self.blockers.clone(),
                name.clone(),
                self.timeout,
                self.signal_expire_ms,
                self.identity.clone().into(),
            ));
        }
        Ok(wakeups)
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
    fn hash_tags() {
        assert!(has_hash_tag("{a}"));
        assert!(has_hash_tag("x{a}y"));
        assert!(!has_hash_tag("{}a"));
        assert!(!has_hash_tag("a"));
        assert!(!has_hash_tag("a{b"));
        assert!(!has_hash_tag("a}b{"));
    }

    #[test]
    fn seconds_round_up() {
        assert_eq!(whole_seconds(Duration::from_millis(1500)), 2);
        assert_eq!(whole_seconds(Duration::from_secs(2)), 2);
        assert_eq!(whole_seconds(Duration::from_millis(1)), 1);
    }
}
