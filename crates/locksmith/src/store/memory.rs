//! The in-process store: `memory://` (private to one [`Locksmith`](crate::Locksmith) and its
//! clones) and `memory://NAME` (shared by every `connect` with that name in this process).
//!
//! Expiry uses [`Instant`]; fences are [`hybrid_fence`](super::hybrid_fence)s of one
//! store-wide counter and the wall clock (microseconds since the Unix epoch), so they look
//! like the fences of every other store and keep increasing if the wall clock steps back.
//! Waiters are woken by notifications (no polling). Nothing survives the process. A named
//! store lives as long as the process; a private one as long as a
//! [`Locksmith`](crate::Locksmith) or a guard uses it.
//!
//! # Garbage
//!
//! Rows that expired more than `?retain=` ago (humantime, default `1h`; `0s` removes expired
//! rows at the next sweep) are removed by an amortised sweep: once the store has served as
//! many calls since the last sweep as it had rows after it (at least 64), the next call scans
//! every row. Within retention, an expired row stays visible (`inspect`, `list` with
//! [`Expired::Include`]). The first `connect` to a named store sets its retention; a later
//! `connect` giving `?retain=` changes it for every handle.
//!
//! # Test hooks
//!
//! For testing how your code handles an unreachable store, [`set_offline`] makes a named
//! store fail every call with a retryable [`Error::Store`] until it is turned back on.
//! [`step_clock`] steps a named store's clock (expiry and fences) forwards or backwards.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;

pub(crate) use super::rows::StoreOptions;
use super::rows::{self, DEFAULT_RETAIN, Row, Table, micros};
use super::{
    BoxFuture, Call, Capabilities, Claim, ExtendMode, Extended, Grant, GrantAll, Layer, Layered,
    Released, Store, WakeHub, Wakeups,
};
use crate::error::{Error, Result};
use crate::info::LockInfo;
use crate::lease::Token;
use crate::name::{LockName, Namespace};
use crate::options::{Cursor, Expired, ListQuery, Page, SetOutcome, SetPolicy};

/// The in-process store. Build one with `Locksmith::connect("memory://")`.
pub struct MemoryStore {
    label: String,
    origin: Instant,
    /// The wall time of `origin`, for display.
    epoch: SystemTime,
    state: Mutex<State>,
    hub: WakeHub,
    offline: AtomicBool,
    /// Test hook: microseconds added to both clocks ([`step_clock`]).
    offset: AtomicI64,
    /// `?retain=`, in microseconds.
    retain: AtomicU64,
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
    /// Calls since the last garbage sweep.
    calls: usize,
    /// Rows left by the last sweep: the next one runs after as many calls (at least
    /// [`MIN_SWEEP_EVERY`]), so sweeping costs O(1) per call, amortised.
    rows_after_sweep: usize,
}

const MIN_SWEEP_EVERY: usize = 64;

/// One namespace of the in-process store, under the store's mutex.
struct MemTable<'a> {
    rows: &'a mut BTreeMap<String, Row>,
    fence: &'a mut u64,
    now: i64,
    /// The fence clock: wall-clock microseconds since the Unix epoch.
    wall: i64,
    epoch: SystemTime,
}

impl Table for MemTable<'_> {
    type Error = Error;

    fn now(&self) -> i64 {
        self.now
    }

    fn epoch(&self) -> SystemTime {
        self.epoch
    }

    fn get(&mut self, name: &str) -> Result<Option<Row>> {
        Ok(self.rows.get(name).cloned())
    }

    fn put(&mut self, name: &str, row: &Row) -> Result<()> {
        self.rows.insert(name.to_string(), row.clone());
        Ok(())
    }

    fn delete(&mut self, name: &str) -> Result<bool> {
        Ok(self.rows.remove(name).is_some())
    }

    fn next_fence(&mut self) -> Result<u64> {
        *self.fence = super::hybrid_fence(*self.fence, u64::try_from(self.wall).unwrap_or(0));
        Ok(*self.fence)
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
    with_named(name, |store| store.offline.store(offline, Ordering::SeqCst))
}

/// Runs `f` on the named store `name`; `false` if there is none.
fn with_named(name: &str, f: impl FnOnce(&MemoryStore)) -> bool {
    let store = named()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(name)
        .cloned();
    store.map(|s| f(&s)).is_some()
}

/// Test hook: steps the clock of the named store `memory://NAME` by `micros` microseconds
/// (negative: backwards), for this process, as a clock step on a store host would. Both
/// the expiry clock and the fence clock move: leases end earlier (or later), and fences
/// keep increasing however far the clock goes back (the store-wide counter carries them).
/// Steps add up. Returns `false` if no store of that name exists.
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> locksmith::Result<()> {
/// use locksmith::Locksmith;
/// use locksmith::store::memory::step_clock;
///
/// let lm = Locksmith::connect("memory://step-clock-doc").await?;
/// let first = lm.lock("job").try_acquire().await?.expect("free");
/// let fence = first.fence();
/// first.release().await?;
/// assert!(step_clock("step-clock-doc", -3_600_000_000)); // one hour back
/// let second = lm.lock("job").try_acquire().await?.expect("free");
/// assert!(second.fence() > fence);
/// # Ok(())
/// # }
/// ```
pub fn step_clock(name: &str, micros: i64) -> bool {
    with_named(name, |store| {
        store.offset.fetch_add(micros, Ordering::SeqCst);
    })
}

impl MemoryStore {
    /// A new private store.
    pub fn new() -> Arc<MemoryStore> {
        MemoryStore::open(None, &StoreOptions::default())
    }

    /// The process-wide store called `name`, created on first use.
    pub fn named(name: &str) -> Arc<MemoryStore> {
        MemoryStore::open(Some(name), &StoreOptions::default())
    }

    /// A private store (`name = None`) or the named one, with the URL's options.
    pub(crate) fn open(name: Option<&str>, options: &StoreOptions) -> Arc<MemoryStore> {
        let store = match name {
            None => Arc::new(MemoryStore::with_label("memory://".to_string())),
            Some(name) => named()
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(name.to_string())
                .or_insert_with(|| Arc::new(MemoryStore::with_label(format!("memory://{name}"))))
                .clone(),
        };
        if let Some(retain) = options.retain {
            let us = u64::try_from(retain.as_micros()).unwrap_or(u64::MAX);
            store.retain.store(us, Ordering::SeqCst);
        }
        store
    }

    fn with_label(label: String) -> MemoryStore {
        MemoryStore {
            label,
            origin: Instant::now(),
            epoch: SystemTime::now(),
            state: Mutex::new(State::default()),
            hub: WakeHub::default(),
            offline: AtomicBool::new(false),
            offset: AtomicI64::new(0),
            retain: AtomicU64::new(DEFAULT_RETAIN.as_micros() as u64),
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

    /// The expiry clock: microseconds since the store was created (monotonic), stepped by
    /// [`step_clock`].
    fn now(&self) -> i64 {
        micros(self.origin.elapsed()).saturating_add(self.offset.load(Ordering::SeqCst))
    }

    /// The fence clock: wall-clock microseconds since the Unix epoch, stepped by
    /// [`step_clock`].
    fn wall(&self) -> i64 {
        let since = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        micros(since).saturating_add(self.offset.load(Ordering::SeqCst))
    }

    /// Runs `op` on one namespace's rows as one atomic step, then sweeps garbage when due.
    fn with_table<T>(
        &self,
        ns: &Namespace,
        op: impl FnOnce(&mut MemTable<'_>) -> Result<T>,
    ) -> Result<T> {
        let (now, wall) = (self.now(), self.wall());
        let mut guard = self.state()?;
        let state = &mut *guard;
        let rows = state.spaces.entry(ns.clone()).or_default();
        let answer = op(&mut MemTable {
            rows,
            fence: &mut state.fence,
            now,
            wall,
            epoch: self.epoch,
        });
        if state.spaces.get(ns).is_some_and(BTreeMap::is_empty) {
            state.spaces.remove(ns);
        }
        state.calls += 1;
        if state.calls >= state.rows_after_sweep.max(MIN_SWEEP_EVERY) {
            let retain = i64::try_from(self.retain.load(Ordering::SeqCst)).unwrap_or(i64::MAX);
            sweep(state, now.saturating_sub(retain));
        }
        answer
    }

    fn release_now(
        &self,
        ns: &Namespace,
        name: &LockName,
        token: &Token,
        min_hold: Option<Duration>,
    ) -> Result<Released> {
        let outcome = self.with_table(ns, |t| rows::release(t, name, token, min_hold))?;
        if outcome != Released::NotHeld {
            self.hub.notify(ns, name);
        }
        Ok(outcome)
    }
}

/// Removes every row that expired at or before `cutoff`, in every namespace.
fn sweep(state: &mut State, cutoff: i64) {
    let mut left = 0;
    state.spaces.retain(|_, rows| {
        rows.retain(|_, row| row.expires_at.is_none_or(|e| e > cutoff));
        left += rows.len();
        !rows.is_empty()
    });
    state.calls = 0;
    state.rows_after_sweep = left;
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
            expired_visible: true,
            holder_metadata: true,
            namespaces: true,
            min_hold: true,
            ordered_list: true,
            ..Capabilities::NONE
        }
    }

    async fn try_acquire(&self, ns: &Namespace, claim: &Claim) -> Result<Grant> {
        self.with_table(ns, |t| rows::try_acquire(t, claim))
    }

    async fn try_acquire_all(&self, ns: &Namespace, claims: &[Claim]) -> Result<GrantAll> {
        self.with_table(ns, |t| rows::try_acquire_all(t, claims))
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
        let (answer, shortened) = self.with_table(ns, |t| rows::extend(t, name, token, mode))?;
        // Waiters re-poll at the holder's expiry; tell them when it moved earlier.
        if shortened {
            self.hub.notify(ns, name);
        }
        Ok(answer)
    }

    async fn held_by(
        &self,
        ns: &Namespace,
        name: &LockName,
        token: &Token,
    ) -> Result<Option<LockInfo>> {
        self.with_table(ns, |t| rows::held_by(t, name, token))
    }

    async fn inspect(&self, ns: &Namespace, name: &LockName) -> Result<Option<LockInfo>> {
        self.with_table(ns, |t| rows::inspect(t, name))
    }

    async fn list(&self, ns: &Namespace, query: &ListQuery) -> Result<Page> {
        let now = self.now();
        let state = self.state()?;
        let Some(space) = state.spaces.get(ns) else {
            return Ok(Page::default());
        };
        let start = match &query.after {
            Some(after) if after.as_str() >= query.prefix.as_str() => {
                Bound::Excluded(after.as_str().to_string())
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
                next = items.last().map(|i: &LockInfo| Cursor::new(i.name.clone()));
                break;
            }
            items.push(row.info(name, now, self.epoch));
        }
        Ok(Page::new(items, next))
    }

    async fn force_release(&self, ns: &Namespace, names: &[LockName]) -> Result<Vec<bool>> {
        let existed = self.with_table(ns, |t| rows::force_release(t, names))?;
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
        let now = self.now();
        self.with_table(ns, |t| {
            let before = t.rows.len();
            t.rows.retain(|_, row| row.live(now));
            Ok((before - t.rows.len()) as u64)
        })
    }

    async fn set_locks(
        &self,
        ns: &Namespace,
        claims: &[Claim],
        policy: &SetPolicy,
    ) -> Result<SetOutcome> {
        self.with_table(ns, |t| rows::set_locks(t, claims, policy))
    }

    async fn subscribe(&self, ns: &Namespace, name: &LockName) -> Result<Wakeups> {
        drop(self.state()?);
        Ok(self.hub.subscribe(ns, name))
    }
}

/// A [`Layer`] that makes every call take `latency` longer on average — a random delay of
/// up to `latency` before the store acts and another after — like a store across a
/// network, where answers may overtake each other. `memory://NAME?latency=5ms` wraps the
/// store in one (as [`Layered<Delayed>`]), to test how code behaves against a slow store.
/// Detached releases are delayed too when a tokio runtime is at hand; `close` waits for
/// them.
#[derive(Debug)]
pub struct Delayed {
    latency: Duration,
    /// Detached releases still on their way, so `close` can wait for them.
    in_flight: Arc<InFlight>,
}

#[derive(Debug, Default)]
struct InFlight {
    count: AtomicUsize,
    done: tokio::sync::Notify,
}

impl Delayed {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Store>, latency: Duration) -> Arc<Layered<Delayed>> {
        Layered::new(
            inner,
            Delayed {
                latency,
                in_flight: Arc::default(),
            },
        )
    }

    /// One leg of the round trip: uniformly random up to `latency`, so answers can overtake
    /// each other as on a real network.
    async fn half(&self) {
        tokio::time::sleep(self.latency.mul_f64(fastrand::f64())).await;
    }
}

impl Layer for Delayed {
    fn around<'a, T: Send + 'a>(
        &'a self,
        call: Call<'a>,
        answer: BoxFuture<'a, Result<T>>,
    ) -> BoxFuture<'a, Result<T>> {
        Box::pin(async move {
            if let Call::Close = call {
                // Wait for the detached releases still on their way, then close.
                loop {
                    let done = self.in_flight.done.notified();
                    if self.in_flight.count.load(Ordering::SeqCst) == 0 {
                        break;
                    }
                    done.await;
                }
                return answer.await;
            }
            self.half().await;
            let answer = answer.await;
            self.half().await;
            answer
        })
    }

    fn release_detached(&self, inner: &Arc<dyn Store>, call: Call<'_>) {
        let Call::Release {
            ns,
            name,
            token,
            min_hold,
        } = call
        else {
            return;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                let (inner, delay) = (inner.clone(), self.latency / 2);
                let (ns, name, token) = (ns.clone(), name.clone(), token.clone());
                let in_flight = self.in_flight.clone();
                in_flight.count.fetch_add(1, Ordering::SeqCst);
                rt.spawn(async move {
                    tokio::time::sleep(delay).await;
                    inner.release_detached(&ns, &name, &token, min_hold);
                    if in_flight.count.fetch_sub(1, Ordering::SeqCst) == 1 {
                        in_flight.done.notify_waiters();
                    }
                });
            }
            Err(_) => inner.release_detached(ns, name, token, min_hold),
        }
    }
}
