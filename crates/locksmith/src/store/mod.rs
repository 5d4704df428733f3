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
//! [`MAX_DURATION`](crate::MAX_DURATION) and rounded up to the store's
//! [`ttl_granularity`](Capabilities::ttl_granularity).
//!
//! # The extension point
//!
//! [`Store`] is how a new backend joins locksmith: implement it, wrap it with
//! [`Locksmith::with_store`](crate::Locksmith::with_store), and run the conformance suite of
//! `locksmith-testkit` against it with the [`Capabilities`] it declares. The contract is on
//! the trait. **It may still change before 1.0** (new required methods, new fields in the
//! `#[non_exhaustive]` types); stores living in this repository are updated with it.
//!
//! What the core does for every store, so a store need not:
//! - *unknown outcomes*: every call runs under the URL's `?timeout=` (default 5 s); a try
//!   that failed or was abandoned is followed by a detached release of its claims' tokens,
//!   and a failed `release` is retried in the background — so `release` and
//!   `release_detached` must be idempotent (releasing a token that holds nothing is
//!   `Released::NotHeld`, never an error);
//! - *waiting*: FIFO among this process's waiters, re-polls at the holder's expiry and at
//!   least every second, polling when `subscribe` fails;
//! - *options*: validation, TTL rounding to [`Capabilities::ttl_granularity`], refusing calls
//!   a store declares it cannot serve (`never_expire`, `min_hold`, `max_name_len`).

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;

use crate::error::Result;
use crate::info::LockInfo;
use crate::lease::Token;
use crate::name::{LockName, Namespace};
use crate::options::{ListQuery, Page, SetOutcome, SetPolicy};

mod layer;
#[cfg(any(feature = "sqlite", feature = "mysql", feature = "postgres"))]
#[allow(dead_code)] // until each store's layout uses it
mod lockmgr;
#[cfg(feature = "memory")]
pub mod memory;
#[cfg(feature = "mysql")]
pub mod mysql;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(any(
    feature = "memory",
    feature = "sqlite",
    feature = "mysql",
    feature = "postgres"
))]
#[cfg_attr(not(any(feature = "memory", feature = "sqlite")), allow(dead_code))]
mod rows;
#[cfg(feature = "sqlite")]
pub mod sqlite;

pub use layer::{BoxFuture, Call, Layer, Layered};

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
    /// The `min_hold` the lock is acquired with, for stores that record it
    /// ([`LockInfo::min_hold`]); the release itself says what to keep.
    pub min_hold: Option<Duration>,
    /// How long the claimant has already waited for this lock (zero on the first try). A
    /// store whose waiters in other processes poll may use it to reserve the lock for a
    /// waiter that has waited long, so notified waiters cannot starve it.
    pub waited: Duration,
    /// The claimant waits for this lock and takes a grant pushed to it. A store with
    /// [`Capabilities::pushed_grants`] queues such a claim when the lock is held, and a
    /// release hands the lock to the head of the queue, announcing it through
    /// [`WakeHub::grant`]. `false` for a try that will not wait, which must never be queued:
    /// nobody would take its grant.
    pub queue: bool,
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
            min_hold: None,
            waited: Duration::ZERO,
            queue: false,
        }
    }

    /// The public id of the claim's token, which a store may publish with a pushed grant
    /// (see [`Token::grant_id`]).
    pub fn grant_id(&self) -> String {
        self.token.grant_id()
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

/// What became of the claim [`Store::release_to`] offered the lock to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Successor {
    /// The claim holds the lock now, granted in the release's atomic step with this fence;
    /// its lease started after the release was sent.
    Granted {
        /// The fence minted for the claim.
        fence: u64,
    },
    /// A waiter queued in the store came first and holds the lock now, with this fence; the
    /// claim is queued behind it, as by a try at the release's time that found it held.
    Queued {
        /// The new holder's fence.
        holder_fence: u64,
    },
    /// Nothing was done for the claim (the token did not hold the lock, `min_hold` keeps
    /// it, or the store hands nothing over): it must try for itself.
    NotTaken,
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
    /// Expired locks stay visible (`inspect`, `list` with [`Expired`](crate::Expired)) until
    /// taken over, purged or removed by retention; stores that drop keys at expiry (Redis)
    /// do not.
    pub expired_visible: bool,
    /// Owner, host, pid and grant time are recorded and shown in [`LockInfo`].
    pub holder_metadata: bool,
    /// `?namespace=` isolates lock spaces on this store.
    pub namespaces: bool,
    /// A release before `min_hold` keeps the lock until `acquired_at + min_hold`.
    pub min_hold: bool,
    /// `list` returns names in byte order and pages by name.
    pub ordered_list: bool,
    /// The longest name this store (layout) accepts, in bytes (at most
    /// [`MAX_NAME_LEN`](crate::MAX_NAME_LEN)).
    pub max_name_len: usize,
    /// The finest TTL the store keeps; the core rounds every TTL up to a multiple of it, so a
    /// lease never ends in the store before the guard's local deadline.
    pub ttl_granularity: Duration,
    /// A release hands the lock to the waiter that queued first (see [`Claim::queue`]) in
    /// the same atomic step, and the waiter learns of its grant from the store's
    /// notification, with no try of its own: a handoff costs the release and one message.
    pub pushed_grants: bool,
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
        expired_visible: false,
        holder_metadata: false,
        namespaces: false,
        min_hold: false,
        ordered_list: false,
        max_name_len: crate::name::MAX_NAME_LEN,
        ttl_granularity: Duration::from_micros(1),
        pushed_grants: false,
    };
}

/// The fence rule every store follows (DESIGN §1): the next fence is the larger of the last
/// fence plus one and the store's clock in microseconds since the Unix epoch. The counter
/// keeps fences increasing when the clock steps back; the clock keeps them increasing when
/// the counter is lost (a restart without persistence, a failover, a purged row).
///
/// ```
/// use locksmith::store::hybrid_fence;
///
/// assert_eq!(hybrid_fence(0, 1_700_000_000_000_000), 1_700_000_000_000_000);
/// assert_eq!(hybrid_fence(1_700_000_000_000_005, 1_700_000_000_000_000), 1_700_000_000_000_006);
/// ```
pub fn hybrid_fence(last: u64, clock_micros: u64) -> u64 {
    last.saturating_add(1).max(clock_micros)
}

/// The seam every store implements. See the [module docs](self): this is locksmith's
/// extension point, and it may still change before 1.0.
///
/// # Contract
///
/// - Every method is atomic with respect to every other on the same store, across every
///   process and client that shares it: two `try_acquire`s racing for a free (or expired)
///   lock grant it to exactly one claim.
/// - A lease whose `expires_at` has passed (store clock) is free: `try_acquire` takes it over
///   and mints a fence greater than every fence granted before for that name —
///   [`hybrid_fence`] of the last fence and the store clock, minted in the grant's atomic
///   step (on SQL, after the row is locked).
/// - `release`, `extend` and `held_by` succeed only for the live holder's token. `release`
///   and `release_detached` are idempotent: the core may repeat them after a failure whose
///   outcome it could not see.
/// - Every change that frees a lock or moves its expiry earlier (release, a release kept by
///   `min_hold`, an extend that shortens, force release, reset) wakes that name's
///   subscribers. Waiters re-poll at the expiry they last saw, so later expiries need no
///   wake-up.
/// - `release_detached` never blocks, needs no runtime, and is idempotent.
/// - A store that cannot do an operation returns [`Error::Unsupported`](crate::Error::Unsupported)
///   (the default of the methods below that have one) and says so in its [`Capabilities`].
/// - Errors: [`Error::Store`](crate::Error::Store) with `retryable = true` only for
///   transient failures (I/O, timeouts, dropped connections, a busy file). Messages never
///   contain credentials or tokens.
#[async_trait]
pub trait Store: Send + Sync + fmt::Debug + 'static {
    /// The store's kind for messages and metrics, e.g. `"memory"`.
    fn kind(&self) -> &'static str;

    /// What this store can do.
    fn capabilities(&self) -> Capabilities;

    /// Which lock space this is: handles that share locks (two `connect`s to one named
    /// memory store, one SQLite file, one server) return the same identity, so this
    /// process's waiters on one name share one first-come first-served queue. Never contains
    /// a secret (no password, no token).
    fn identity(&self) -> String;

    /// Grants the lock to `claim` if it is free or expired.
    async fn try_acquire(&self, ns: &Namespace, claim: &Claim) -> Result<Grant>;

    /// Grants every lock or none. The default takes them one by one in the order given and
    /// releases what it took when one is held — all or nothing, but not atomic (say
    /// `atomic_multi = false`); stores that can do it in one step override it.
    async fn try_acquire_all(&self, ns: &Namespace, claims: &[Claim]) -> Result<GrantAll> {
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
            // Roll back what this call took (and, after an error of unknown outcome, the
            // claim that failed too: releasing a token that holds nothing is harmless).
            let taken = if blocked.is_err() { i + 1 } else { i };
            for c in &claims[..taken] {
                self.release_detached(ns, &c.name, &c.token, None);
            }
            return blocked;
        }
        Ok(GrantAll::Acquired(fences))
    }

    /// Releases the lock held by `token`, or keeps it until `acquired_at + min_hold`.
    async fn release(
        &self,
        ns: &Namespace,
        name: &LockName,
        token: &Token,
        min_hold: Option<Duration>,
    ) -> Result<Released>;

    /// Releases the lock held by `token` and, in the same atomic step, hands it to `next`:
    /// a queued claim ([`Claim::queue`]) of this process that waits for the lock, offered
    /// by the core when the holder and the waiter share this store, so a handoff between
    /// tasks costs the release alone. Waiters queued in the store come first (the first of
    /// them gets the lock as by [`release`](Store::release), and `next` is queued behind
    /// it); a release that does not free the lock takes nothing for `next`. The default
    /// releases and answers [`Successor::NotTaken`]: the waiter then tries for itself.
    async fn release_to(
        &self,
        ns: &Namespace,
        name: &LockName,
        token: &Token,
        min_hold: Option<Duration>,
        next: &Claim,
    ) -> Result<(Released, Successor)> {
        let _ = next;
        let released = self.release(ns, name, token, min_hold).await?;
        Ok((released, Successor::NotTaken))
    }

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

    /// The lock's info; expired rows included (`expired = true`) where the store keeps them
    /// (`expired_visible`).
    async fn inspect(&self, ns: &Namespace, name: &LockName) -> Result<Option<LockInfo>>;

    /// One page of locks in `ns`: in byte order of name where `ordered_list`, else in the
    /// store's order. [`Page::next`] is the store's own cursor.
    async fn list(&self, ns: &Namespace, query: &ListQuery) -> Result<Page> {
        let _ = (ns, query);
        Err(self.unsupported("list"))
    }

    /// Removes the named locks whoever holds them; per name, whether a live lock was removed.
    async fn force_release(&self, ns: &Namespace, names: &[LockName]) -> Result<Vec<bool>>;

    /// Removes every lock in `ns`; returns how many rows were removed.
    async fn reset_all(&self, ns: &Namespace) -> Result<u64> {
        let _ = ns;
        Err(self.unsupported("reset_all"))
    }

    /// Removes the expired rows in `ns`; returns how many. Stores that drop locks at expiry
    /// return 0.
    async fn purge_expired(&self, ns: &Namespace) -> Result<u64> {
        let _ = ns;
        Err(self.unsupported("purge_expired"))
    }

    /// django-lockmgr's multi-name set/renew in one atomic step. The claims carry fresh tokens
    /// for the locks it may create and the TTL to set (`None`: never expire).
    async fn set_locks(
        &self,
        ns: &Namespace,
        claims: &[Claim],
        policy: &SetPolicy,
    ) -> Result<SetOutcome> {
        let _ = (ns, claims, policy);
        Err(self.unsupported("set_locks"))
    }

    /// Subscribes to wake-ups for one name. Returns only once the store has confirmed the
    /// subscription, so a change after this returns is never missed. The default never
    /// fires: waiters poll (say `notify = false` and set `poll_interval`). Dropping the last
    /// [`Wakeups`] of a name tells a store that built it with [`WakeHub::on_idle`] that
    /// nobody in this process waits for it any more.
    async fn subscribe(&self, ns: &Namespace, name: &LockName) -> Result<Wakeups> {
        let _ = (ns, name);
        Ok(Wakeups::never())
    }

    /// Whether [`subscribe`](Store::subscribe) for this name would answer at once, with no
    /// round trip (the store's wake-up connection already listens for it). A store with
    /// [`Capabilities::pushed_grants`] that says so is subscribed *before* a waiting
    /// claim's first try: the try queues the claim with the subscription already in place,
    /// so no second try has to follow the subscription (the try that catches a release
    /// between the first try and the subscription). The default: `false`.
    fn subscribes_at_once(&self, ns: &Namespace, name: &LockName) -> bool {
        let _ = (ns, name);
        false
    }

    /// Finishes queued detached releases and stops the store's background work, for
    /// [`Locksmith::close`](crate::Locksmith::close). Calls after it may fail. The default
    /// does nothing.
    async fn close(&self) -> Result<()> {
        Ok(())
    }

    /// The error for an operation this store cannot do.
    fn unsupported(&self, operation: &'static str) -> crate::Error {
        crate::Error::Unsupported {
            store: self.kind(),
            operation,
        }
    }
}

/// A subscription to one name's wake-ups: a generation counter, so no wake-up is lost
/// between two waits, however many happened. It may carry a guard that tells the store when
/// it is dropped (see [`WakeHub::on_idle`]).
pub struct Wakeups {
    rx: watch::Receiver<u64>,
    _interest: Option<Box<dyn Send + Sync>>,
    /// Grants pushed to waiters of this name in this process, by grant id (see
    /// [`WakeHub::grant`]); `None` for a subscription built without a hub.
    grants: Option<Arc<Mutex<Grants>>>,
    /// The ids this subscriber expects grants for, forgotten when it is dropped.
    expecting: Vec<String>,
}

impl Drop for Wakeups {
    fn drop(&mut self) {
        if let Some(grants) = &self.grants
            && !self.expecting.is_empty()
        {
            let mut grants = lock(grants);
            for id in &self.expecting {
                grants.expected.remove(id);
            }
        }
    }
}

/// A grant a release pushed to a queued waiter (see [`Capabilities::pushed_grants`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PushedGrant {
    /// The fence minted for the waiter.
    pub fence: u64,
    /// How long after the waiter's last try that found the lock held (by the store's
    /// clock: from the try's write of the queue entry to the grant) the lease started. The
    /// waiter's local lease starts at that try's send time plus this, which is never later
    /// than the store's start.
    pub after_last_try: Duration,
}

impl PushedGrant {
    /// Reads the message a release sends with a pushed grant, `id fence µs-since-last-try`
    /// (the stores' common form): the grant id and the grant. `None` for anything else, such
    /// as a plain wake-up.
    #[cfg(any(feature = "redis", feature = "postgres"))]
    pub(crate) fn parse(message: &str) -> Option<(&str, PushedGrant)> {
        let mut parts = message.split(' ');
        let (id, fence, after) = (parts.next()?, parts.next()?, parts.next()?);
        if id.is_empty() || parts.next().is_some() {
            return None;
        }
        let grant = PushedGrant {
            fence: fence.parse().ok()?,
            after_last_try: Duration::from_micros(after.parse().ok()?),
        };
        Some((id, grant))
    }
}

/// What a release that handed the lock to a queued waiter means for the claim it was
/// offered (`next_id`, the grant id of [`Store::release_to`]'s `next`), from the grant the
/// release answers with (`id fence µs`). A grant to another waiter goes to `local` (it may
/// be one of this store's waiters). `None` when the grant cannot be read.
#[cfg(any(feature = "redis", feature = "postgres"))]
pub(crate) fn handed(
    grant: &str,
    next_id: Option<&str>,
    local: impl FnOnce(&str, PushedGrant),
) -> Option<Successor> {
    let (id, grant) = PushedGrant::parse(grant)?;
    if next_id == Some(id) {
        return Some(Successor::Granted { fence: grant.fence });
    }
    local(id, grant);
    Some(match next_id {
        Some(_) => Successor::Queued {
            holder_fence: grant.fence,
        },
        None => Successor::NotTaken,
    })
}

/// Pushed grants waiting to be taken, by grant id. Only ids a local waiter expects are kept.
#[derive(Default)]
struct Grants {
    expected: HashMap<String, Option<PushedGrant>>,
}

impl fmt::Debug for Wakeups {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Wakeups")
            .field("generation", &*self.rx.borrow())
            .finish_non_exhaustive()
    }
}

impl Wakeups {
    /// Wraps a generation receiver.
    pub fn from_receiver(rx: watch::Receiver<u64>) -> Wakeups {
        Wakeups {
            rx,
            _interest: None,
            grants: None,
            expecting: Vec::new(),
        }
    }

    /// Wraps a generation receiver with a guard dropped together with the subscription
    /// (e.g. one that unsubscribes from the server when the last waiter leaves).
    pub fn with_guard(rx: watch::Receiver<u64>, guard: impl Send + Sync + 'static) -> Wakeups {
        Wakeups {
            rx,
            _interest: Some(Box::new(guard)),
            grants: None,
            expecting: Vec::new(),
        }
    }

    /// A subscription that never fires, for stores that can only be polled.
    pub fn never() -> Wakeups {
        let (_tx, rx) = watch::channel(0);
        Wakeups::from_receiver(rx)
    }

    /// Marks every wake-up so far as seen.
    pub fn mark_seen(&mut self) {
        self.rx.borrow_and_update();
    }

    /// Says that this subscriber's claim with grant id `id` is queued, so a grant pushed to
    /// it is kept for [`take_grant`](Wakeups::take_grant) (and wakes the subscribers).
    /// Grants to ids nobody expects are dropped without waking anyone.
    pub fn expect_grant(&mut self, id: &str) {
        if let Some(grants) = &self.grants {
            lock(grants).expected.entry(id.to_string()).or_default();
            if !self.expecting.iter().any(|e| e == id) {
                self.expecting.push(id.to_string());
            }
        }
    }

    /// Takes the grant pushed to `id`, if one came; the id stays expected.
    pub fn take_grant(&mut self, id: &str) -> Option<PushedGrant> {
        let grants = self.grants.as_ref()?;
        lock(grants).expected.get_mut(id).and_then(Option::take)
    }

    /// Stops expecting grants for `id`.
    pub fn forget_grant(&mut self, id: &str) {
        if let Some(grants) = &self.grants {
            lock(grants).expected.remove(id);
            self.expecting.retain(|e| e != id);
        }
    }

    /// Resolves at the next wake-up not yet seen (at once if one happened since the last
    /// [`mark_seen`](Wakeups::mark_seen)). Never resolves once the store has gone away.
    pub async fn changed(&mut self) {
        if self.rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Called with a name when its last subscriber in this process leaves.
pub type IdleHook = Arc<dyn Fn(&Namespace, &LockName) + Send + Sync>;

/// In-process wake-up fan-out for store implementations: one generation counter per
/// `(namespace, name)` with subscribers, dropped when nobody listens.
///
/// A networked store subscribes on the server when [`subscribe`](WakeHub::subscribe) reports
/// a name's first subscriber, unsubscribes in its [`on_idle`](WakeHub::on_idle) hook, and
/// calls [`notify_all`](WakeHub::notify_all) after a reconnect (wake-ups sent while it was
/// away are lost, so every waiter re-tries).
#[derive(Default)]
pub struct WakeHub {
    senders: Arc<Mutex<HubMap>>,
    idle: Option<IdleHook>,
}

#[derive(Default)]
struct HubMap {
    map: HashMap<(Namespace, LockName), Entry>,
}

struct Entry {
    tx: watch::Sender<u64>,
    /// Live [`Wakeups`] of this name.
    subscribers: usize,
    /// Grants pushed to this name's queued waiters.
    grants: Arc<Mutex<Grants>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl fmt::Debug for WakeHub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.senders.lock().map(|m| m.map.len()).unwrap_or(0);
        f.debug_struct("WakeHub").field("names", &n).finish()
    }
}

/// Counts one subscriber; when the last one of a name drops, the entry goes and the hub's
/// idle hook runs.
struct Interest {
    key: (Namespace, LockName),
    senders: Arc<Mutex<HubMap>>,
    idle: Option<IdleHook>,
}

impl Drop for Interest {
    fn drop(&mut self) {
        let last = {
            let mut hub = self.senders.lock().unwrap_or_else(|e| e.into_inner());
            match hub.map.get_mut(&self.key) {
                Some(entry) => {
                    entry.subscribers -= 1;
                    if entry.subscribers == 0 {
                        hub.map.remove(&self.key);
                        true
                    } else {
                        false
                    }
                }
                None => false,
            }
        };
        if last && let Some(hook) = &self.idle {
            hook(&self.key.0, &self.key.1);
        }
    }
}

impl WakeHub {
    /// A hub that calls `hook` when the last subscriber of a name leaves.
    pub fn on_idle(hook: IdleHook) -> WakeHub {
        WakeHub {
            senders: Arc::default(),
            idle: Some(hook),
        }
    }

    /// Subscribes to `name`'s wake-ups; the flag says whether this is the name's first
    /// subscriber in this hub (a networked store then subscribes on the server).
    pub fn subscribe_first(&self, ns: &Namespace, name: &LockName) -> (Wakeups, bool) {
        let key = (ns.clone(), name.clone());
        let mut hub = self.senders.lock().unwrap_or_else(|e| e.into_inner());
        let entry = hub.map.entry(key.clone()).or_insert_with(|| Entry {
            tx: watch::channel(0).0,
            subscribers: 0,
            grants: Arc::default(),
        });
        entry.subscribers += 1;
        let first = entry.subscribers == 1;
        let rx = entry.tx.subscribe();
        let grants = entry.grants.clone();
        drop(hub);
        let interest = Interest {
            key,
            senders: self.senders.clone(),
            idle: self.idle.clone(),
        };
        let mut wakeups = Wakeups::with_guard(rx, interest);
        wakeups.grants = Some(grants);
        (wakeups, first)
    }

    /// Subscribes to `name`'s wake-ups.
    pub fn subscribe(&self, ns: &Namespace, name: &LockName) -> Wakeups {
        self.subscribe_first(ns, name).0
    }

    /// Whether `name` has subscribers in this hub now (a networked store checks it before
    /// unsubscribing on the server, since a new waiter may have come after the idle hook ran).
    pub fn has_subscribers(&self, ns: &Namespace, name: &LockName) -> bool {
        self.senders
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .map
            .contains_key(&(ns.clone(), name.clone()))
    }

    /// How many names have subscribers.
    pub fn names(&self) -> usize {
        self.senders
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .map
            .len()
    }

    /// Wakes `name`'s subscribers.
    pub fn notify(&self, ns: &Namespace, name: &LockName) {
        let hub = self.senders.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = hub.map.get(&(ns.clone(), name.clone())) {
            entry.tx.send_modify(|g| *g = g.wrapping_add(1));
        }
    }

    /// Hands a grant pushed by a release to the local waiter that expects `id` (see
    /// [`Wakeups::expect_grant`]) and wakes `name`'s subscribers. Returns whether a local
    /// waiter expected it; a grant to another process's waiter changes nothing here (its
    /// lock is held, so waking this process's waiters would only cost them a try).
    pub fn grant(&self, ns: &Namespace, name: &LockName, id: &str, grant: PushedGrant) -> bool {
        let hub = self.senders.lock().unwrap_or_else(|e| e.into_inner());
        let Some(entry) = hub.map.get(&(ns.clone(), name.clone())) else {
            return false;
        };
        let expected = match lock(&entry.grants).expected.get_mut(id) {
            Some(slot) => {
                *slot = Some(grant);
                true
            }
            None => false,
        };
        if expected {
            entry.tx.send_modify(|g| *g = g.wrapping_add(1));
        }
        expected
    }

    /// Wakes every subscriber in `ns`.
    pub fn notify_namespace(&self, ns: &Namespace) {
        let hub = self.senders.lock().unwrap_or_else(|e| e.into_inner());
        for ((n, _), entry) in hub.map.iter() {
            if n == ns {
                entry.tx.send_modify(|g| *g = g.wrapping_add(1));
            }
        }
    }

    /// Wakes every subscriber of every name: after a reconnect, when wake-ups may have been
    /// lost.
    pub fn notify_all(&self) {
        let hub = self.senders.lock().unwrap_or_else(|e| e.into_inner());
        for entry in hub.map.values() {
            entry.tx.send_modify(|g| *g = g.wrapping_add(1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_counts_subscribers_and_calls_the_idle_hook() {
        let idle = Arc::new(Mutex::new(Vec::<String>::new()));
        let seen = idle.clone();
        let hub = WakeHub::on_idle(Arc::new(move |_, name| {
            seen.lock().unwrap().push(name.to_string())
        }));
        let ns = Namespace::default();
        let a = LockName::new("a").unwrap();
        let (mut w1, first) = hub.subscribe_first(&ns, &a);
        assert!(first);
        let (w2, first) = hub.subscribe_first(&ns, &a);
        assert!(!first);
        hub.notify(&ns, &a);
        assert!(w1.rx.has_changed().unwrap());
        w1.mark_seen();
        hub.notify_all();
        assert!(w1.rx.has_changed().unwrap());
        drop(w1);
        assert!(idle.lock().unwrap().is_empty());
        drop(w2);
        assert_eq!(*idle.lock().unwrap(), ["a"]);
        assert_eq!(hub.names(), 0);
    }

    #[test]
    fn pushed_grants_reach_only_the_waiter_that_expects_them() {
        let hub = WakeHub::default();
        let ns = Namespace::default();
        let a = LockName::new("a").unwrap();
        let grant = PushedGrant {
            fence: 7,
            after_last_try: Duration::from_micros(30),
        };
        let mut w = hub.subscribe(&ns, &a);
        // Another process's waiter: nobody here is woken.
        assert!(!hub.grant(&ns, &a, "other", grant));
        assert!(!w.rx.has_changed().unwrap());
        w.expect_grant("mine");
        assert!(w.take_grant("mine").is_none(), "nothing pushed yet");
        assert!(hub.grant(&ns, &a, "mine", grant));
        assert!(w.rx.has_changed().unwrap(), "the waiter is woken");
        assert_eq!(w.take_grant("mine"), Some(grant));
        assert_eq!(w.take_grant("mine"), None, "taken once");
        // Another name, or a forgotten id, gets nothing.
        assert!(!hub.grant(&ns, &LockName::new("b").unwrap(), "mine", grant));
        w.forget_grant("mine");
        assert!(!hub.grant(&ns, &a, "mine", grant));
        // A dropped subscriber's ids are forgotten with it.
        let mut w2 = hub.subscribe(&ns, &a);
        w2.expect_grant("gone");
        drop(w2);
        assert!(!hub.grant(&ns, &a, "gone", grant));
        drop(w);
        assert_eq!(hub.names(), 0);
    }
}
