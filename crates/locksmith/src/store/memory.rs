//! The in-process store: `memory://` (private to one [`Locksmith`](crate::Locksmith) and its
//! clones) and `memory://NAME` (shared by every `connect` with that name in this process).
//!
//! Expiry uses [`Instant`], fences come from one store-wide counter, and waiters are woken by
//! notifications (no polling). Nothing survives the process. A named store lives as long as
//! the process; a private one as long as a [`Locksmith`](crate::Locksmith) or a guard uses it.
//!
//! For testing how your code handles an unreachable store, [`set_offline`] makes a named
//! store fail every call with a retryable [`Error::Store`] until it is turned back on.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;

use super::{
    Capabilities, Claim, ExtendMode, Extended, Grant, GrantAll, Released, Store, WakeHub, Wakeups,
};
use crate::error::{Error, Result};
use crate::lease::{LockInfo, Token};
use crate::name::{LockName, Namespace};
use crate::options::{Expired, ListQuery, Page, SetAction, SetOutcome, SetPolicy, SetStatus};

/// The in-process store. Build one with `Locksmith::connect("memory://")`.
pub struct MemoryStore {
    label: String,
    state: Mutex<State>,
    hub: WakeHub,
    offline: AtomicBool,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("label", &self.label)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct State {
    fence: u64,
    spaces: HashMap<Namespace, BTreeMap<String, Row>>,
}

struct Row {
    /// `None` once released under `min_hold`: the row blocks others but nobody holds it.
    token: Option<Token>,
    owner: Arc<str>,
    host: Arc<str>,
    pid: u32,
    fence: u64,
    acquired_at: Instant,
    acquired_wall: SystemTime,
    expires_at: Option<Instant>,
}

impl Row {
    fn live(&self, now: Instant) -> bool {
        self.expires_at.is_none_or(|e| e > now)
    }

    fn held_by(&self, token: &Token, now: Instant) -> bool {
        self.live(now) && self.token.as_ref() == Some(token)
    }

    fn info(&self, name: &str, now: Instant) -> LockInfo {
        let expires_in = self.expires_at.map(|e| e.saturating_duration_since(now));
        let wall_now = SystemTime::now();
        LockInfo {
            name: name.to_string(),
            owner: self.owner.to_string(),
            host: self.host.to_string(),
            pid: self.pid,
            fence: self.fence,
            held_for: now.saturating_duration_since(self.acquired_at),
            expires_in,
            expired: !self.live(now),
            released: self.token.is_none(),
            acquired_at: self.acquired_wall,
            expires_at: expires_in.map(|d| wall_now + d),
        }
    }
}

/// Named stores live as long as the process, so their locks (leaked ones included) and
/// fences survive every handle being dropped and reconnected.
fn named() -> &'static Mutex<HashMap<String, Arc<MemoryStore>>> {
    static NAMED: OnceLock<Mutex<HashMap<String, Arc<MemoryStore>>>> = OnceLock::new();
    NAMED.get_or_init(Default::default)
}

/// Makes the named store `memory://NAME` unreachable (`true`) or reachable again (`false`),
/// to test how code behaves when its store fails: every call returns a retryable
/// [`Error::Store`] and detached releases are dropped, while the locks themselves stay (and
/// expire) as on a real store behind a broken network. Returns `false` if no store of that
/// name exists.
pub fn set_offline(name: &str, offline: bool) -> bool {
    let store = named()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(name)
        .cloned();
    match store {
        Some(store) => {
            store.offline.store(offline, Ordering::SeqCst);
            true
        }
        None => false,
    }
}

impl MemoryStore {
    /// A new private store.
    pub fn new() -> Arc<MemoryStore> {
        Arc::new(MemoryStore::with_label("memory://".to_string()))
    }

    /// The process-wide store called `name`, created on first use.
    pub fn named(name: &str) -> Arc<MemoryStore> {
        let mut map = named().lock().unwrap_or_else(|e| e.into_inner());
        map.entry(name.to_string())
            .or_insert_with(|| Arc::new(MemoryStore::with_label(format!("memory://{name}"))))
            .clone()
    }

    fn with_label(label: String) -> MemoryStore {
        MemoryStore {
            label,
            state: Mutex::new(State::default()),
            hub: WakeHub::default(),
            offline: AtomicBool::new(false),
        }
    }

    /// Locks the state, failing when the store is offline.
    fn state(&self) -> Result<MutexGuard<'_, State>> {
        if self.offline.load(Ordering::SeqCst) {
            return Err(Error::store(
                "memory",
                true,
                format!(
                    "{} is offline (simulated outage, see locksmith::store::memory::set_offline)",
                    self.label
                ),
            ));
        }
        // A panic while holding this mutex cannot leave a row half-written (each operation
        // writes whole rows), so a poisoned lock is safe to keep using.
        Ok(self.state.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn deadline(now: Instant, ttl: Option<Duration>) -> Result<Option<Instant>> {
        ttl.map(|ttl| {
            now.checked_add(ttl).ok_or_else(|| {
                Error::invalid_option("ttl", "the lease would overflow this machine's clock")
            })
        })
        .transpose()
    }

    fn grant(state: &mut State, ns: &Namespace, claim: &Claim, now: Instant) -> Result<u64> {
        let expires_at = Self::deadline(now, claim.ttl)?;
        state.fence += 1;
        let fence = state.fence;
        state.spaces.entry(ns.clone()).or_default().insert(
            claim.name.as_str().to_string(),
            Row {
                token: Some(claim.token.clone()),
                owner: claim.owner.clone(),
                host: claim.host.clone(),
                pid: claim.pid,
                fence,
                acquired_at: now,
                acquired_wall: SystemTime::now(),
                expires_at,
            },
        );
        Ok(fence)
    }

    fn row<'s>(state: &'s State, ns: &Namespace, name: &LockName) -> Option<&'s Row> {
        state.spaces.get(ns).and_then(|m| m.get(name.as_str()))
    }

    fn row_mut<'s>(state: &'s mut State, ns: &Namespace, name: &LockName) -> Option<&'s mut Row> {
        state
            .spaces
            .get_mut(ns)
            .and_then(|m| m.get_mut(name.as_str()))
    }

    fn remove(state: &mut State, ns: &Namespace, name: &str) -> Option<Row> {
        let space = state.spaces.get_mut(ns)?;
        let row = space.remove(name);
        if space.is_empty() {
            state.spaces.remove(ns);
        }
        row
    }

    fn release_now(
        &self,
        ns: &Namespace,
        name: &LockName,
        token: &Token,
        min_hold: Option<Duration>,
    ) -> Result<Released> {
        let now = Instant::now();
        let outcome = {
            let mut state = self.state()?;
            match Self::row_mut(&mut state, ns, name) {
                Some(row) if row.held_by(token, now) => {
                    let keep_until = min_hold.and_then(|m| row.acquired_at.checked_add(m));
                    match keep_until {
                        Some(until) if until > now => {
                            row.token = None;
                            row.expires_at = Some(until);
                            Released::Kept
                        }
                        _ => {
                            Self::remove(&mut state, ns, name.as_str());
                            Released::Released
                        }
                    }
                }
                _ => Released::NotHeld,
            }
        };
        if outcome != Released::NotHeld {
            self.hub.notify(ns, name);
        }
        Ok(outcome)
    }
}

#[async_trait]
impl Store for MemoryStore {
    fn kind(&self) -> &'static str {
        "memory"
    }

    fn identity(&self) -> String {
        if self.label == "memory://" {
            format!("memory@{:p}", self)
        } else {
            self.label.clone()
        }
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            fencing: true,
            persistent: false,
            cross_process: false,
            notify: true,
            poll_interval: None,
            atomic_multi: true,
            never_expire: true,
        }
    }

    async fn try_acquire(&self, ns: &Namespace, claim: &Claim) -> Result<Grant> {
        let now = Instant::now();
        let mut state = self.state()?;
        if let Some(row) = Self::row(&state, ns, &claim.name)
            && row.live(now)
        {
            return Ok(if row.token.as_ref() == Some(&claim.token) {
                Grant::AlreadyHeld
            } else {
                Grant::Held(row.info(claim.name.as_str(), now))
            });
        }
        let fence = Self::grant(&mut state, ns, claim, now)?;
        Ok(Grant::Acquired { fence })
    }

    async fn try_acquire_all(&self, ns: &Namespace, claims: &[Claim]) -> Result<GrantAll> {
        let now = Instant::now();
        let mut state = self.state()?;
        for claim in claims {
            if let Some(row) = Self::row(&state, ns, &claim.name)
                && row.live(now)
            {
                return Ok(if row.token.as_ref() == Some(&claim.token) {
                    GrantAll::AlreadyHeld(claim.name.clone())
                } else {
                    GrantAll::Held(row.info(claim.name.as_str(), now))
                });
            }
        }
        // Check every deadline before writing anything, so an error leaves nothing behind.
        for claim in claims {
            Self::deadline(now, claim.ttl)?;
        }
        let fences = claims
            .iter()
            .map(|claim| Self::grant(&mut state, ns, claim, now))
            .collect::<Result<Vec<u64>>>()?;
        Ok(GrantAll::Acquired(fences))
    }

    async fn release(
        &self,
        ns: &Namespace,
        name: &LockName,
        token: &Token,
        min_hold: Option<Duration>,
    ) -> Result<Released> {
        self.release_now(ns, name, token, min_hold)
    }

    fn release_detached(
        &self,
        ns: &Namespace,
        name: &LockName,
        token: &Token,
        min_hold: Option<Duration>,
    ) {
        if let Err(err) = self.release_now(ns, name, token, min_hold) {
            tracing::debug!(lock = %name, %err, "detached release failed; the lease will expire");
        }
    }

    async fn extend(
        &self,
        ns: &Namespace,
        name: &LockName,
        token: &Token,
        mode: ExtendMode,
    ) -> Result<Extended> {
        let now = Instant::now();
        let mut shortened = false;
        let outcome = {
            let mut state = self.state()?;
            match Self::row_mut(&mut state, ns, name) {
                Some(row) if row.held_by(token, now) => match row.expires_at {
                    None => Extended::NotExpirable,
                    Some(current) => {
                        let new = match mode {
                            ExtendMode::Set(d) => now.checked_add(d),
                            ExtendMode::Add(d) => current.max(now).checked_add(d),
                            ExtendMode::AtLeast(d) => now.checked_add(d).map(|e| e.max(current)),
                        }
                        .ok_or_else(|| {
                            Error::invalid_option(
                                "ttl",
                                "the lease would overflow this machine's clock",
                            )
                        })?;
                        row.expires_at = Some(new);
                        shortened = new < current;
                        Extended::Extended {
                            expires_in: new - now,
                        }
                    }
                },
                _ => Extended::NotHeld,
            }
        };
        // Waiters re-poll at the holder's expiry; tell them when it moved earlier.
        if shortened {
            self.hub.notify(ns, name);
        }
        Ok(outcome)
    }

    async fn held_by(
        &self,
        ns: &Namespace,
        name: &LockName,
        token: &Token,
    ) -> Result<Option<LockInfo>> {
        let now = Instant::now();
        let state = self.state()?;
        Ok(Self::row(&state, ns, name)
            .filter(|row| row.held_by(token, now))
            .map(|row| row.info(name.as_str(), now)))
    }

    async fn inspect(&self, ns: &Namespace, name: &LockName) -> Result<Option<LockInfo>> {
        let now = Instant::now();
        let state = self.state()?;
        Ok(Self::row(&state, ns, name).map(|row| row.info(name.as_str(), now)))
    }

    async fn list(&self, ns: &Namespace, query: &ListQuery) -> Result<Page> {
        let now = Instant::now();
        let state = self.state()?;
        let Some(space) = state.spaces.get(ns) else {
            return Ok(Page::default());
        };
        let start = match &query.after {
            Some(after) if after.as_str() >= query.prefix.as_str() => {
                Bound::Excluded(after.clone())
            }
            _ => Bound::Included(query.prefix.clone()),
        };
        let mut items = Vec::new();
        let mut next = None;
        for (name, row) in space.range::<String, _>((start, Bound::Unbounded)) {
            if !name.starts_with(&query.prefix) {
                break;
            }
            let keep = match query.expired {
                Expired::Exclude => row.live(now),
                Expired::Include => true,
                Expired::Only => !row.live(now),
            };
            if !keep {
                continue;
            }
            if items.len() == query.limit {
                next = items.last().map(|i: &LockInfo| i.name.clone());
                break;
            }
            items.push(row.info(name, now));
        }
        Ok(Page::new(items, next))
    }

    async fn force_release(&self, ns: &Namespace, names: &[LockName]) -> Result<Vec<bool>> {
        let now = Instant::now();
        let existed = {
            let mut state = self.state()?;
            names
                .iter()
                .map(|name| {
                    Self::remove(&mut state, ns, name.as_str()).is_some_and(|row| row.live(now))
                })
                .collect()
        };
        for name in names {
            self.hub.notify(ns, name);
        }
        Ok(existed)
    }

    async fn reset_all(&self, ns: &Namespace) -> Result<u64> {
        let removed = {
            let mut state = self.state()?;
            state.spaces.remove(ns).map_or(0, |m| m.len() as u64)
        };
        self.hub.notify_namespace(ns);
        Ok(removed)
    }

    async fn purge_expired(&self, ns: &Namespace) -> Result<u64> {
        let now = Instant::now();
        let mut state = self.state()?;
        let Some(space) = state.spaces.get_mut(ns) else {
            return Ok(0);
        };
        let before = space.len();
        space.retain(|_, row| row.live(now));
        let purged = (before - space.len()) as u64;
        if space.is_empty() {
            state.spaces.remove(ns);
        }
        Ok(purged)
    }

    async fn set_locks(
        &self,
        ns: &Namespace,
        claims: &[Claim],
        policy: &SetPolicy,
    ) -> Result<SetOutcome> {
        let now = Instant::now();
        let mut state = self.state()?;
        // First decide every name, then write: `fail` must leave nothing changed.
        let mut plan = Vec::with_capacity(claims.len());
        for claim in claims {
            let held = Self::row(&state, ns, &claim.name).filter(|r| r.live(now));
            let action = match (held, policy.create, policy.renew) {
                (Some(row), ..) if policy.fail => {
                    return Err(Error::Locked {
                        name: claim.name.to_string(),
                        holder: Box::new(row.info(claim.name.as_str(), now)),
                    });
                }
                (Some(_), _, true) => SetAction::Renewed,
                (Some(_), _, false) => SetAction::SkippedRenew,
                (None, true, _) => SetAction::Created,
                (None, false, _) => SetAction::SkippedCreate,
            };
            plan.push(action);
        }
        let renew_to = Self::deadline(now, policy.ttl)?;
        let mut statuses = Vec::with_capacity(claims.len());
        let mut locks = Vec::new();
        let mut created = Vec::new();
        for (claim, action) in claims.iter().zip(plan) {
            let name = claim.name.as_str();
            match action {
                SetAction::Created => {
                    Self::grant(&mut state, ns, claim, now)?;
                    created.push((name.to_string(), claim.token.clone()));
                }
                SetAction::Renewed => {
                    if let Some(row) = Self::row_mut(&mut state, ns, &claim.name) {
                        row.expires_at = match (row.expires_at, renew_to) {
                            (Some(current), Some(new)) => Some(current.max(new)),
                            _ => None,
                        };
                    }
                    self.hub.notify(ns, &claim.name);
                }
                SetAction::SkippedCreate | SetAction::SkippedRenew => {}
            }
            let was_locked = matches!(action, SetAction::Renewed | SetAction::SkippedRenew);
            let locked = action != SetAction::SkippedCreate;
            if locked && let Some(row) = Self::row(&state, ns, &claim.name) {
                locks.push(row.info(name, now));
            }
            statuses.push(SetStatus::new(name, was_locked, locked, action));
        }
        Ok(SetOutcome::new(statuses, locks, created))
    }

    async fn subscribe(&self, ns: &Namespace, name: &LockName) -> Result<Wakeups> {
        drop(self.state()?);
        Ok(self.hub.subscribe(ns, name))
    }
}

/// Wraps a store so every call takes `latency` longer on average — a random delay of up to
/// `latency` before the store acts and another after — like a store across a network, where
/// answers may overtake each other. `memory://NAME?latency=5ms` builds one, to test
/// how code behaves against a slow store. Detached releases are delayed too when a tokio
/// runtime is at hand.
#[derive(Debug)]
pub struct Delayed {
    inner: Arc<dyn Store>,
    latency: Duration,
}

impl Delayed {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Store>, latency: Duration) -> Arc<Delayed> {
        Arc::new(Delayed { inner, latency })
    }

    /// One leg of the round trip: uniformly random up to `latency`, so answers can overtake
    /// each other as on a real network.
    async fn half(&self) {
        tokio::time::sleep(self.latency.mul_f64(fastrand::f64())).await;
    }
}

macro_rules! delayed {
    ($self:ident . $call:ident ( $($arg:expr),* )) => {{
        $self.half().await;
        let answer = $self.inner.$call($($arg),*).await;
        $self.half().await;
        answer
    }};
}

#[async_trait]
impl Store for Delayed {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    fn identity(&self) -> String {
        self.inner.identity()
    }

    async fn try_acquire(&self, ns: &Namespace, claim: &Claim) -> Result<Grant> {
        delayed!(self.try_acquire(ns, claim))
    }

    async fn try_acquire_all(&self, ns: &Namespace, claims: &[Claim]) -> Result<GrantAll> {
        delayed!(self.try_acquire_all(ns, claims))
    }

    async fn release(
        &self,
        ns: &Namespace,
        name: &LockName,
        token: &Token,
        min_hold: Option<Duration>,
    ) -> Result<Released> {
        delayed!(self.release(ns, name, token, min_hold))
    }

    fn release_detached(
        &self,
        ns: &Namespace,
        name: &LockName,
        token: &Token,
        min_hold: Option<Duration>,
    ) {
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                let (inner, delay) = (self.inner.clone(), self.latency / 2);
                let (ns, name, token) = (ns.clone(), name.clone(), token.clone());
                rt.spawn(async move {
                    tokio::time::sleep(delay).await;
                    inner.release_detached(&ns, &name, &token, min_hold);
                });
            }
            Err(_) => self.inner.release_detached(ns, name, token, min_hold),
        }
    }

    async fn extend(
        &self,
        ns: &Namespace,
        name: &LockName,
        token: &Token,
        mode: ExtendMode,
    ) -> Result<Extended> {
        delayed!(self.extend(ns, name, token, mode))
    }

    async fn held_by(
        &self,
        ns: &Namespace,
        name: &LockName,
        token: &Token,
    ) -> Result<Option<LockInfo>> {
        delayed!(self.held_by(ns, name, token))
    }

    async fn inspect(&self, ns: &Namespace, name: &LockName) -> Result<Option<LockInfo>> {
        delayed!(self.inspect(ns, name))
    }

    async fn list(&self, ns: &Namespace, query: &ListQuery) -> Result<Page> {
        delayed!(self.list(ns, query))
    }

    async fn force_release(&self, ns: &Namespace, names: &[LockName]) -> Result<Vec<bool>> {
        delayed!(self.force_release(ns, names))
    }

    async fn reset_all(&self, ns: &Namespace) -> Result<u64> {
        delayed!(self.reset_all(ns))
    }

    async fn purge_expired(&self, ns: &Namespace) -> Result<u64> {
        delayed!(self.purge_expired(ns))
    }

    async fn set_locks(
        &self,
        ns: &Namespace,
        claims: &[Claim],
        policy: &SetPolicy,
    ) -> Result<SetOutcome> {
        delayed!(self.set_locks(ns, claims, policy))
    }

    async fn subscribe(&self, ns: &Namespace, name: &LockName) -> Result<Wakeups> {
        delayed!(self.subscribe(ns, name))
    }
}
