//! The one seam between locksmith's core and its stores.
//!
//! A [`Store`] holds only atomic primitives: grant, release, extend, look up, list, force
//! release, and a wake-up subscription. Everything else — the wait loop and its FIFO among
//! in-process waiters, the watchdog, guards and drop handling, cancel safety, option
//! validation, metrics and tracing — lives once in the core, so every store behaves the same
//! way and the conformance suite (`locksmith-testkit`) checks them all against one contract.
//!
//! The trait is object safe (`Arc<dyn Store>`), written with `async-trait`. Names and
//! namespaces reach a store already validated; durations are already checked to fit
//! [`MAX_DURATION`](crate::MAX_DURATION).

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;

use crate::error::Result;
use crate::lease::{LockInfo, Token};
use crate::name::{LockName, Namespace};
use crate::options::{ListQuery, Page, SetOutcome, SetPolicy};

#[cfg(feature = "memory")]
pub mod memory;
#[cfg(any(feature = "memory", feature = "sqlite"))]
mod rows;
#[cfg(feature = "sqlite")]
pub mod sqlite;

/// A request for one lock, as the core hands it to a store.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Claim {
    /// The lock's name.
    pub name: LockName,
    /// The secret the new holder will prove ownership with.
    pub token: Token,
    /// The holder's label.
    pub owner: std::sync::Arc<str>,
    /// The holder's host name.
    pub host: std::sync::Arc<str>,
    /// The holder's process id.
    pub pid: u32,
    /// The lease: `Some(ttl)` expires at `store_now + ttl`; `None` never expires.
    pub ttl: Option<Duration>,
}

impl Claim {
    /// A claim for `name` with `token`, holder metadata and lease (`None`: never expires).
    pub fn new(
        name: LockName,
        token: Token,
        owner: &str,
        host: &str,
        pid: u32,
        ttl: Option<Duration>,
    ) -> Claim {
        Claim {
            name,
            token,
            owner: owner.into(),
            host: host.into(),
            pid,
            ttl,
        }
    }
}

/// The answer to [`Store::try_acquire`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Grant {
    /// The lock was free (or its lease had expired) and is now held by the claim's token.
    Acquired {
        /// The fence minted in the same atomic step.
        fence: u64,
    },
    /// Someone else holds the lock.
    Held(LockInfo),
    /// The claim's own token already holds the lock.
    AlreadyHeld,
}

/// The answer to [`Store::try_acquire_all`]: all or nothing.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum GrantAll {
    /// Every lock was granted; one fence per claim, in the claims' order.
    Acquired(Vec<u64>),
    /// Nothing was granted because this lock is held by someone else.
    Held(LockInfo),
    /// Nothing was granted because this lock is already held by the claim's own token.
    AlreadyHeld(LockName),
}

/// The answer to [`Store::release`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Released {
    /// The lock is free.
    Released,
    /// `min_hold` had not passed: the lock stays until `acquired_at + min_hold` and the
    /// token no longer holds it.
    Kept,
    /// The token did not hold the lock.
    NotHeld,
}

/// How [`Store::extend`] changes the lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExtendMode {
    /// `expires_at = store_now + d` (may shorten).
    Set(Duration),
    /// `expires_at = max(expires_at, store_now) + d` (never shortens).
    Add(Duration),
    /// `expires_at = max(expires_at, store_now + d)` (never shortens): what renewals use.
    AtLeast(Duration),
}

/// The answer to [`Store::extend`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Extended {
    /// The lease was changed; it now expires after this long (store clock).
    Extended {
        /// Time left on the new lease.
        expires_in: Duration,
    },
    /// The token did not hold the lock.
    NotHeld,
    /// The lock never expires, so it cannot be extended.
    NotExpirable,
}

/// What a store can do. Each store's conformance tests assert the declared set, so a case is
/// never skipped by accident.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capabilities {
    /// Grants carry fencing tokens.
    pub fencing: bool,
    /// Locks and fences survive a restart of the store (and of every client).
    pub persistent: bool,
    /// Locks are shared between processes.
    pub cross_process: bool,
    /// Waiters are woken by notifications from the store (at least within this process).
    pub notify: bool,
    /// Waiters in other processes must poll; the cap of their backoff. `None` when every
    /// waiter is notified.
    pub poll_interval: Option<Duration>,
    /// `try_acquire_all` is one atomic step.
    pub atomic_multi: bool,
    /// Locks may be created that never expire.
    pub never_expire: bool,
}

impl Capabilities {
    /// Capabilities of a store with no features; start from this and set what you have.
    pub const NONE: Capabilities = Capabilities {
        fencing: false,
        persistent: false,
        cross_process: false,
        notify: false,
        poll_interval: None,
        atomic_multi: false,
        never_expire: false,
    };
}

/// The seam every store implements. See the [module docs](self).
///
/// # Contract
///
/// - Every method is atomic with respect to every other on the same store.
/// - A lease whose `expires_at` has passed (store clock) is free: `try_acquire` takes it over
///   and mints a fence greater than every fence granted before for that name.
/// - `release`, `extend` and `held_by` succeed only for the live holder's token.
/// - Every change that frees a lock or moves its expiry earlier (release, a release kept by
///   `min_hold`, an extend that shortens, force release, reset) wakes that name's
///   subscribers. Waiters re-poll at the expiry they last saw, so later expiries need no
///   wake-up.
/// - `release_detached` never blocks and needs no runtime.
#[async_trait]
pub trait Store: Send + Sync + fmt::Debug + 'static {
    /// The store's kind for messages and metrics, e.g. `"memory"`.
    fn kind(&self) -> &'static str;

    /// What this store can do.
    fn capabilities(&self) -> Capabilities;

    /// Which lock space this is: handles that share locks (two `connect`s to one named
    /// memory store, one SQLite file, one server) return the same identity, so this
    /// process's waiters on one name share one first-come first-served queue. Never contains
    /// a secret.
    fn identity(&self) -> String;

    /// Grants the lock to `claim` if it is free or expired.
    async fn try_acquire(&self, ns: &Namespace, claim: &Claim) -> Result<Grant>;

    /// Grants every lock or none.
    async fn try_acquire_all(&self, ns: &Namespace, claims: &[Claim]) -> Result<GrantAll>;

    /// Releases the lock held by `token`, or keeps it until `acquired_at + min_hold`.
    async fn release(
        &self,
        ns: &Namespace,
        name: &LockName,
        token: &Token,
        min_hold: Option<Duration>,
    ) -> Result<Released>;

    /// Starts a release without waiting for it, for `Drop`: never blocks, needs no runtime,
    /// reports nothing.
    fn release_detached(
        &self,
        ns: &Namespace,
        name: &LockName,
        token: &Token,
        min_hold: Option<Duration>,
    );

    /// Moves the expiry of the lease held by `token`.
    async fn extend(
        &self,
        ns: &Namespace,
        name: &LockName,
        token: &Token,
        mode: ExtendMode,
    ) -> Result<Extended>;

    /// The lock's info if `token` holds it now (live and not released).
    async fn held_by(
        &self,
        ns: &Namespace,
        name: &LockName,
        token: &Token,
    ) -> Result<Option<LockInfo>>;

    /// The lock's info, expired rows included (`expired = true`).
    async fn inspect(&self, ns: &Namespace, name: &LockName) -> Result<Option<LockInfo>>;

    /// One page of locks in `ns`, ordered by name (byte order).
    async fn list(&self, ns: &Namespace, query: &ListQuery) -> Result<Page>;

    /// Removes the named locks whoever holds them; per name, whether a live lock was removed.
    async fn force_release(&self, ns: &Namespace, names: &[LockName]) -> Result<Vec<bool>>;

    /// Removes every lock in `ns`; returns how many rows were removed.
    async fn reset_all(&self, ns: &Namespace) -> Result<u64>;

    /// Removes the expired rows in `ns`; returns how many.
    async fn purge_expired(&self, ns: &Namespace) -> Result<u64>;

    /// django-lockmgr's multi-name set/renew in one atomic step. The claims carry fresh tokens
    /// for the locks it may create and the TTL to set (`None`: never expire).
    async fn set_locks(
        &self,
        ns: &Namespace,
        claims: &[Claim],
        policy: &SetPolicy,
    ) -> Result<SetOutcome>;

    /// Subscribes to wake-ups for one name. Returns only once the store has confirmed the
    /// subscription, so a change after this returns is never missed.
    async fn subscribe(&self, ns: &Namespace, name: &LockName) -> Result<Wakeups>;
}

/// A subscription to one name's wake-ups: a generation counter, so no wake-up is lost
/// between two waits, however many happened.
#[derive(Debug)]
pub struct Wakeups {
    rx: watch::Receiver<u64>,
}

impl Wakeups {
    /// Wraps a generation receiver.
    pub fn from_receiver(rx: watch::Receiver<u64>) -> Wakeups {
        Wakeups { rx }
    }

    /// A subscription that never fires, for stores that can only be polled.
    pub fn never() -> Wakeups {
        let (_tx, rx) = watch::channel(0);
        Wakeups { rx }
    }

    /// Marks every wake-up so far as seen.
    pub fn mark_seen(&mut self) {
        self.rx.borrow_and_update();
    }

    /// Resolves at the next wake-up not yet seen (at once if one happened since the last
    /// [`mark_seen`](Wakeups::mark_seen)). Never resolves once the store has gone away.
    pub async fn changed(&mut self) {
        if self.rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// In-process wake-up fan-out for store implementations: one generation counter per
/// `(namespace, name)` with subscribers, dropped when nobody listens.
#[derive(Default)]
pub struct WakeHub {
    senders: Mutex<HubMap>,
}

#[derive(Default)]
struct HubMap {
    map: HashMap<(Namespace, LockName), watch::Sender<u64>>,
    swept_at: usize,
}

impl fmt::Debug for WakeHub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.senders.lock().map(|m| m.map.len()).unwrap_or(0);
        f.debug_struct("WakeHub").field("names", &n).finish()
    }
}

impl WakeHub {
    /// Subscribes to `name`'s wake-ups.
    pub fn subscribe(&self, ns: &Namespace, name: &LockName) -> Wakeups {
        let mut hub = self.senders.lock().unwrap_or_else(|e| e.into_inner());
        if hub.map.len() > 64 && hub.map.len() > 2 * hub.swept_at {
            hub.map.retain(|_, tx| tx.receiver_count() > 0);
            hub.swept_at = hub.map.len();
        }
        let tx = hub
            .map
            .entry((ns.clone(), name.clone()))
            .or_insert_with(|| watch::channel(0).0);
        Wakeups::from_receiver(tx.subscribe())
    }

    /// Wakes `name`'s subscribers.
    pub fn notify(&self, ns: &Namespace, name: &LockName) {
        let mut hub = self.senders.lock().unwrap_or_else(|e| e.into_inner());
        let key = (ns.clone(), name.clone());
        if let Some(tx) = hub.map.get(&key) {
            if tx.receiver_count() == 0 {
                hub.map.remove(&key);
            } else {
                tx.send_modify(|g| *g = g.wrapping_add(1));
            }
        }
    }

    /// Wakes every subscriber in `ns`.
    pub fn notify_namespace(&self, ns: &Namespace) {
        let hub = self.senders.lock().unwrap_or_else(|e| e.into_inner());
        for ((n, _), tx) in hub.map.iter() {
            if n == ns {
                tx.send_modify(|g| *g = g.wrapping_add(1));
            }
        }
    }
}
