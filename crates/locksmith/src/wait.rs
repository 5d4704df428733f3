//! Acquisition: the builders, the one wait loop every store shares, and cancel safety.
//!
//! The loop, for a caller willing to wait:
//! 1. take a ticket in this process's queue for the name and wait to be its head
//!    (first come, first served among in-process waiters);
//! 2. subscribe to the name's wake-ups — before trying, so a release between the try and the
//!    wait is never missed;
//! 3. try; if held, sleep until a wake-up, the holder's expiry, one second, the poll backoff
//!    of stores that cannot notify every waiter, or the caller's deadline — whichever is
//!    first — and try again.
//!
//! On a store with pushed grants, a head whose lock is held by a guard of the same handle
//! offers its claim to that guard instead of trying (see [`registry`]): the guard's release
//! hands the lock over in the same store call ([`Store::release_to`]), so tasks taking turns
//! on a lock pay one round trip per turn. The offer is taken back at a wake-up, after a
//! second, at the holder's lease end or at the deadline, and the head tries as above.
//!
//! [`Store::release_to`]: crate::store::Store::release_to
//!
//! Each try runs under the call timeout (`?timeout=`), polled by the caller itself (no
//! thread hop). If the caller goes away while a try is in flight, the rest of the try is
//! handed to a task, which releases a grant (or the claim of a failed try), so a cancelled
//! `acquire` never leaves a lock held. A try that fails (an error, a timeout)
//! may have been applied by the store all the same: its claim is released (detached,
//! idempotent) and the next try uses a fresh token, so an unknown outcome never leaks a
//! lock. A failed `subscribe` makes the waiter poll; a wait ends only at its deadline, on
//! cancel, or on an error that retrying cannot fix.

use std::future::{Future, IntoFuture};
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use tokio::sync::oneshot;
use tokio::time::sleep_until;

use crate::calls::Calls;
use crate::error::{Error, Result};
use crate::guard::LockGuard;
use crate::held::{Held, Terms, round_up};
use crate::info::{LockInfo, LossReason};
use crate::lease::{Lease, Token};
use crate::name::{LockName, Namespace};
use crate::options::{Options, Plan, Renew, Wait};
use crate::registry::{self, Handover, Ticket};
use crate::store::{Claim, Grant, GrantAll, Wakeups};
use crate::{Inner, Locksmith};

/// Waiters re-poll at least this often, so a lost notification costs latency, never a hang.
const REPOLL: Duration = Duration::from_secs(1);

/// Builds one lock acquisition: `lm.lock(name)`, options, then
/// [`acquire`](LockBuilder::acquire), [`try_acquire`](LockBuilder::try_acquire),
/// [`run`](LockBuilder::run) or [`once`](LockBuilder::once).
///
/// Options are checked when the lock is acquired; a bad one is [`Error::InvalidOption`].
/// The rules: the TTL is at least [`MIN_TTL`](crate::MIN_TTL) (default 60 s); `.ttl(…)` and `.no_expiry()` exclude each
/// other, and so do `Renew::Auto` and `.no_expiry()`; `min_hold` may exceed the TTL only with
/// renewal on (the default); `max_hold` needs renewal and is at least the TTL; no duration
/// exceeds [`MAX_DURATION`](crate::MAX_DURATION). A store that cannot keep a lock forever
/// or honour `min_hold` refuses those with [`Error::Unsupported`]; TTLs are rounded up to
/// the store's [`ttl_granularity`](crate::Capabilities::ttl_granularity).
///
/// Awaiting the builder itself acquires the lock: `lm.lock("x").await` is
/// `lm.lock("x").acquire().await`.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> locksmith::Result<()> {
/// let lm = locksmith::Locksmith::connect("memory://").await?;
/// let guard = lm.lock("x").await?;
/// assert!(guard.is_held());
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
#[must_use = "a LockBuilder does nothing until you call acquire, try_acquire, run or once"]
pub struct LockBuilder {
    lm: Locksmith,
    name: String,
    opts: Options,
}

macro_rules! option_setters {
    () => {
        /// The lease: the lock expires this long after the grant (or the last renewal)
        /// unless renewed. Default 60 s.
        pub fn ttl(mut self, ttl: Duration) -> Self {
            self.opts.ttl = Some(ttl);
            self
        }

        /// The lock never expires: it is held until released or cleared. A holder that
        /// dies leaves it behind, so use this only where an operator will notice.
        pub fn no_expiry(mut self) -> Self {
            self.opts.no_expiry = true;
            self
        }

        /// How long to wait for a held lock. Default: [`Wait::Forever`] for `acquire`,
        /// [`Wait::No`] for `once`.
        pub fn wait(mut self, wait: Wait) -> Self {
            self.opts.wait = Some(wait);
            self
        }

        /// Whether a watchdog renews the lease while the guard lives. Default
        /// [`Renew::Auto`] for locks that expire (`.no_expiry()` locks have nothing to
        /// renew); `.renew(Renew::Off)` asks for a bare lease that ends at its TTL.
        pub fn renew(mut self, renew: Renew) -> Self {
            self.opts.renew = Some(renew);
            self
        }

        /// Keep the lock until at least `acquired_at + min_hold`, even if released sooner:
        /// "run at most once per period".
        pub fn min_hold(mut self, min_hold: Duration) -> Self {
            self.opts.min_hold = Some(min_hold);
            self
        }

        /// Stop renewing after this long: the lease ends and the guard is lost at
        /// `acquired_at + max_hold`. Needs renewal (the default for locks that expire).
        pub fn max_hold(mut self, max_hold: Duration) -> Self {
            self.opts.max_hold = Some(max_hold);
            self
        }

        /// A label for the holder, shown by `inspect`, `list` and `Locked` errors. Default:
        /// the [`Locksmith`]'s owner (the program's name unless set).
        pub fn owner(mut self, owner: impl Into<String>) -> Self {
            self.opts.owner = Some(owner.into());
            self
        }
    };
}

impl LockBuilder {
    pub(crate) fn new(lm: Locksmith, name: String) -> LockBuilder {
        LockBuilder {
            lm,
            name,
            opts: Options::default(),
        }
    }

    option_setters!();

    /// Acquire with this token instead of a fresh one, e.g. one a job queue handed over.
    /// If the token already holds the lock, acquiring is [`Error::AlreadyHeld`].
    pub fn token(mut self, token: Token) -> Self {
        self.opts.token = Some(token);
        self
    }

    /// Acquires the lock, waiting as `.wait(…)` says (default: forever).
    ///
    /// # Errors
    ///
    /// [`Error::Locked`] (with the holder) under `Wait::No`; [`Error::Timeout`] when
    /// `Wait::For` runs out; [`Error::AlreadyHeld`] if `.token(t)` already holds it;
    /// [`Error::InvalidName`] / [`Error::InvalidOption`] for bad input; [`Error::Store`] if
    /// the store fails.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future at any point — queued, waiting, or with a request in
    /// flight — leaves no waiter behind and no lock held (a grant that arrives after the
    /// caller left is released at once). The caller loses its place in the queue.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> locksmith::Result<()> {
    /// use std::time::Duration;
    /// use locksmith::{Locksmith, Wait};
    ///
    /// let lm = Locksmith::connect("memory://").await?;
    /// let held = lm.lock("nightly").acquire().await?;
    /// let err = lm.lock("nightly").wait(Wait::For(Duration::from_millis(20))).acquire().await.unwrap_err();
    /// assert!(err.is_timeout());
    /// drop(held);
    /// # Ok(()) }
    /// ```
    pub async fn acquire(self) -> Result<LockGuard> {
        let plan = self.opts.validate(Wait::Forever)?;
        let name = self.lm.inner.lock_name(&self.name)?;
        acquire_one(&self.lm.inner, name, plan).await
    }

    /// Tries once: `Ok(None)` when the lock is held by someone else.
    ///
    /// It never waits, so a `.wait(…)` on the builder is a mistake: use
    /// [`acquire`](LockBuilder::acquire) to wait for the lock, or
    /// [`once`](LockBuilder::once) to wait and skip the work when the wait runs out.
    ///
    /// # Errors
    ///
    /// As [`acquire`](LockBuilder::acquire), except that contention is `Ok(None)`;
    /// [`Error::InvalidOption`] (`wait`) if `.wait(…)` was set. A store that does not answer
    /// within the call timeout is [`Error::Store`] (and the claim is released, in case the
    /// store applied it).
    ///
    /// # Cancel safety
    ///
    /// As [`acquire`](LockBuilder::acquire).
    pub async fn try_acquire(self) -> Result<Option<LockGuard>> {
        if self.opts.wait.is_some() {
            return Err(Error::invalid_option(
                "wait",
                "try_acquire() tries once and never waits — use acquire() to wait for the lock, or once() to wait and skip when the wait runs out",
            ));
        }
        let plan = self.opts.validate(Wait::No)?;
        let name = self.lm.inner.lock_name(&self.name)?;
        match acquire_one(&self.lm.inner, name, plan).await {
            Ok(guard) => Ok(Some(guard)),
            Err(Error::Locked { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Acquires the lock, runs `body` under it, and releases it.
    ///
    /// If the lease is lost while `body` runs (see [`LockGuard::lost`]), `body` is dropped
    /// at its next await point and this returns [`Error::Lost`]; a release that finds the
    /// lock no longer held is `Lost` too. If `body` panics, the lock is released and the
    /// panic resumes. A release that fails on a store error after `body` finished under a
    /// valid lease is logged and the value returned (the lease expires on its own).
    ///
    /// # Errors
    ///
    /// Those of [`acquire`](LockBuilder::acquire), and [`Error::Lost`].
    ///
    /// # Cancel safety
    ///
    /// Dropping the future drops `body` and releases the lock (best effort, as on drop).
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> locksmith::Result<()> {
    /// use locksmith::{Locksmith, Renew};
    ///
    /// let lm = Locksmith::connect("memory://").await?;
    /// let total = lm
    ///     .lock("ledger")
    ///     .renew(Renew::Auto) // the default; shown for clarity
    ///     .run(|lease| async move {
    ///         // fence every write with lease.fence()
    ///         lease.fence() * 0 + 42
    ///     })
    ///     .await?;
    /// assert_eq!(total, 42);
    /// # Ok(()) }
    /// ```
    pub async fn run<F, Fut, T>(self, body: F) -> Result<T>
    where
        F: FnOnce(Lease) -> Fut,
        Fut: Future<Output = T>,
    {
        let guard = self.acquire().await?;
        run_under(guard, body).await
    }

    /// Like [`run`](LockBuilder::run), but does not wait unless `.wait(…)` was given:
    /// `Ok(None)` when the lock is held (or the wait ran out) — "skip if already running".
    ///
    /// # Errors
    ///
    /// As [`run`](LockBuilder::run), except that contention is `Ok(None)`.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> locksmith::Result<()> {
    /// use locksmith::Locksmith;
    ///
    /// let lm = Locksmith::connect("memory://").await?;
    /// let _busy = lm.lock("sync").acquire().await?;
    /// let ran = lm.lock("sync").once(|_| async { "synced" }).await?;
    /// assert_eq!(ran, None);
    /// # Ok(()) }
    /// ```
    pub async fn once<F, Fut, T>(self, body: F) -> Result<Option<T>>
    where
        F: FnOnce(Lease) -> Fut,
        Fut: Future<Output = T>,
    {
        match self.acquire_or_skip().await? {
            Some(guard) => run_under(guard, body).await.map(Some),
            None => Ok(None),
        }
    }

    /// `once`'s acquisition: no wait unless `.wait(…)` was given; contention is `None`.
    pub(crate) async fn acquire_or_skip(self) -> Result<Option<LockGuard>> {
        let plan = self.opts.validate(Wait::No)?;
        let name = self.lm.inner.lock_name(&self.name)?;
        match acquire_one(&self.lm.inner, name, plan).await {
            Ok(guard) => Ok(Some(guard)),
            Err(Error::Locked { .. } | Error::Timeout { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

async fn run_under<F, Fut, T>(guard: LockGuard, body: F) -> Result<T>
where
    F: FnOnce(Lease) -> Fut,
    Fut: Future<Output = T>,
{
    let lost = guard.lost();
    let lease = guard.lease();
    let body = async move { body(lease).await };
    // Boxed so it can be dropped before the guard when the lease is lost.
    let mut body = Box::pin(AssertUnwindSafe(body).catch_unwind());
    let name = guard.name().to_string();
    tokio::select! {
        biased;
        out = &mut body => match out {
            Ok(value) => {
                let lost = guard.loss();
                match guard.release().await {
                Ok(()) => Ok(value),
                Err(Error::NotHeld { .. }) => Err(Error::Lost { name, reason: lost.unwrap_or(LossReason::Revoked) }),
                Err(err) => {
                    tracing::warn!(lock = %name, %err, "release after run failed; the lease will expire");
                    Ok(value)
                }
            }},
            Err(panic) => {
                let _ = guard.release().await;
                std::panic::resume_unwind(panic)
            }
        },
        reason = lost => {
            drop(body);
            drop(guard);
            Err(Error::Lost { name, reason })
        }
    }
}

/// Builds an all-or-nothing acquisition of several locks: `lm.acquire_all(names)`.
///
/// Takes the same options as [`LockBuilder`] except `.token(…)` (each lock gets its own
/// token). Waiting re-tries the whole set when the lock that blocked it changes; FIFO
/// queueing applies to single locks only. Awaiting the builder is
/// [`acquire`](AcquireAllBuilder::acquire); [`release_all`](crate::release_all) releases the
/// guards together.
#[derive(Debug, Clone)]
#[must_use = "an AcquireAllBuilder does nothing until you call acquire"]
pub struct AcquireAllBuilder {
    lm: Locksmith,
    names: Vec<String>,
    opts: Options,
}

impl AcquireAllBuilder {
    pub(crate) fn new(lm: Locksmith, names: Vec<String>) -> AcquireAllBuilder {
        AcquireAllBuilder {
            lm,
            names,
            opts: Options::default(),
        }
    }

    option_setters!();

    /// Acquires every lock or none, waiting as `.wait(…)` says (default: forever). Returns
    /// one guard per name, in the order given.
    ///
    /// # Errors
    ///
    /// As [`LockBuilder::acquire`]; [`Error::InvalidName`] also for an empty list or a name
    /// given twice. On any error nothing is held.
    ///
    /// # Cancel safety
    ///
    /// As [`LockBuilder::acquire`].
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> locksmith::Result<()> {
    /// use locksmith::Locksmith;
    ///
    /// let lm = Locksmith::connect("memory://").await?;
    /// let guards = lm.acquire_all(["from-account", "to-account"]).acquire().await?;
    /// assert_eq!(guards.len(), 2);
    /// # Ok(()) }
    /// ```
    pub async fn acquire(self) -> Result<Vec<LockGuard>> {
        let plan = self.opts.validate(Wait::Forever)?;
        if plan.token.is_some() {
            unreachable!("AcquireAllBuilder has no token setter");
        }
        let names = validate_names(&self.lm.inner, &self.names)?;
        acquire_many(&self.lm.inner, names, plan).await
    }
}

impl IntoFuture for LockBuilder {
    type Output = Result<LockGuard>;
    type IntoFuture = Pin<Box<dyn Future<Output = Result<LockGuard>> + Send>>;

    /// [`acquire`](LockBuilder::acquire).
    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.acquire())
    }
}

impl IntoFuture for AcquireAllBuilder {
    type Output = Result<Vec<LockGuard>>;
    type IntoFuture = Pin<Box<dyn Future<Output = Result<Vec<LockGuard>>> + Send>>;

    /// [`acquire`](AcquireAllBuilder::acquire).
    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.acquire())
    }
}

/// Validates a list of names for a multi-lock call: non-empty, each valid, no repeats.
pub(crate) fn validate_names(inner: &Inner, names: &[String]) -> Result<Vec<LockName>> {
    if names.is_empty() {
        return Err(Error::InvalidName {
            name: String::new(),
            reason: "the list of names is empty — pass at least one name".into(),
        });
    }
    let mut seen = std::collections::HashSet::new();
    names
        .iter()
        .map(|n| {
            let name = inner.lock_name(n)?;
            if !seen.insert(name.clone()) {
                return Err(Error::InvalidName {
                    name: n.clone(),
                    reason: "the name is listed twice — list each lock once".into(),
                });
            }
            Ok(name)
        })
        .collect()
}

impl Inner {
    /// Validates `name` and checks it against the store's longest name.
    pub(crate) fn lock_name(&self, name: &str) -> Result<LockName> {
        let name = LockName::new(name)?;
        let max = self.calls.store.capabilities().max_name_len;
        if name.as_str().len() > max {
            return Err(Error::InvalidName {
                name: name.as_str().chars().take(64).collect::<String>() + "…",
                reason: format!(
                    "it is {} bytes, but the {} store takes names of at most {max} bytes — use a shorter name (e.g. a hash of the long one)",
                    name.as_str().len(),
                    self.calls.store.kind()
                ),
            });
        }
        Ok(name)
    }

    /// Checks a plan against what the store can do, and rounds its TTL up to the store's
    /// granularity (so the store never ends a lease before the guard's local deadline).
    pub(crate) fn fit(&self, mut plan: Plan) -> Result<Plan> {
        let caps = self.calls.store.capabilities();
        let kind = self.calls.store.kind();
        if plan.ttl.is_none() && !caps.never_expire {
            return Err(Error::Unsupported {
                store: kind,
                operation: "no_expiry",
            });
        }
        if plan.min_hold.is_some() && !caps.min_hold {
            return Err(Error::Unsupported {
                store: kind,
                operation: "min_hold",
            });
        }
        plan.ttl = plan.ttl.map(|t| round_up(t, caps.ttl_granularity));
        Ok(plan)
    }

    pub(crate) fn claim(&self, name: LockName, plan: &Plan, token: Option<Token>) -> Claim {
        Claim {
            name,
            token: token.unwrap_or_default(),
            owner: plan.owner.clone().unwrap_or_else(|| self.owner.clone()),
            host: self.host.clone(),
            pid: self.pid,
            ttl: plan.ttl,
            min_hold: plan.min_hold,
            waited: Duration::ZERO,
            queue: false,
        }
    }

    pub(crate) fn guard(&self, claim: Claim, fence: u64, sent: Instant, plan: &Plan) -> LockGuard {
        let renew = plan.renew == Renew::Auto;
        let terms = Terms {
            ttl: claim.ttl,
            min_hold: plan.min_hold,
            max_hold: plan.max_hold,
            renew,
        };
        let held = Held::new(
            self.calls.clone(),
            self.ns.clone(),
            claim.name,
            claim.token,
            fence,
            sent,
            terms,
        );
        LockGuard::new(Arc::new(held), renew, sent)
    }
}

/// A store request polled inline by its caller. If this handle is dropped before the
/// request answered (the caller went away mid-flight), the rest of the request is handed to
/// a task and its answer to `orphan`, so a grant nobody will use is released. Polling inline
/// keeps a caller on the runtime's main thread (`#[tokio::main]`) from hopping to a worker
/// thread and back on every try.
struct InFlight<T: Send + 'static> {
    request: Option<Pin<Box<dyn Future<Output = T> + Send>>>,
    orphan: Arc<dyn Fn(T) + Send + Sync>,
    /// What to hand `orphan` when the rest of the request cannot run (no runtime left):
    /// an answer of unknown outcome.
    unknown: fn() -> T,
}

impl<T: Send + 'static> InFlight<T> {
    fn start<F>(request: F, orphan: Arc<dyn Fn(T) + Send + Sync>, unknown: fn() -> T) -> InFlight<T>
    where
        F: Future<Output = T> + Send + 'static,
    {
        InFlight {
            request: Some(Box::pin(request)),
            orphan,
            unknown,
        }
    }

    async fn answer(mut self) -> T {
        let request = self.request.as_mut().expect("answer is taken once");
        let answer = request.await;
        self.request = None;
        answer
    }
}

impl<T: Send + 'static> Drop for InFlight<T> {
    fn drop(&mut self) {
        let Some(request) = self.request.take() else {
            return;
        };
        let orphan = self.orphan.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move { orphan(request.await) });
            }
            // No runtime to finish the request on: treat it as failed (its claims are
            // released, detached, which needs no runtime).
            Err(_) => {
                drop(request);
                orphan((self.unknown)());
            }
        }
    }
}

/// One try's outcome, for one lock or several.
enum Attempt {
    Acquired(Vec<u64>),
    Held(LockInfo),
    AlreadyHeld(LockName),
}

/// Releases the claims' tokens without waiting: after a try whose outcome is unknown (an
/// error, a timeout) or that nobody will use. Idempotent in every store.
fn release_claims(calls: &Calls, ns: &Namespace, claims: &[Claim], why: &str) {
    for c in claims {
        tracing::debug!(lock = %c.name, why, "releasing the claim of a try that failed or was abandoned");
        calls.store.release_detached(ns, &c.name, &c.token, None);
    }
}

/// Tries to grant every claim (one store call, under the call timeout), polled by the
/// caller: see [`InFlight`]. If the requester went away, a grant is released, and so is the claim of a
/// try that failed (the store may have applied it) or that a store with pushed grants queued.
fn try_claims(inner: &Inner, claims: &Arc<[Claim]>) -> InFlight<Result<Attempt>> {
    let calls = inner.calls.clone();
    let ns = inner.ns.clone();
    let request = {
        let (calls, ns, claims) = (calls.clone(), ns.clone(), claims.clone());
        async move {
            let store = &calls.store;
            Ok(if let [claim] = &claims[..] {
                match calls
                    .run("try_acquire", store.try_acquire(&ns, claim))
                    .await?
                {
                    Grant::Acquired { fence } => Attempt::Acquired(vec![fence]),
                    Grant::Held(info) => Attempt::Held(info),
                    Grant::AlreadyHeld => Attempt::AlreadyHeld(claim.name.clone()),
                }
            } else {
                match calls
                    .run("try_acquire_all", store.try_acquire_all(&ns, &claims))
                    .await?
                {
                    GrantAll::Acquired(fences) => Attempt::Acquired(fences),
                    GrantAll::Held(info) => Attempt::Held(info),
                    GrantAll::AlreadyHeld(name) => Attempt::AlreadyHeld(name),
                }
            })
        }
    };
    let claims = claims.clone();
    let orphan = Arc::new(move |answer: Result<Attempt>| match answer {
        Ok(Attempt::Acquired(_)) => release_claims(
            &calls,
            &ns,
            &claims,
            "granted after the requester went away",
        ),
        Err(_) => release_claims(&calls, &ns, &claims, "failed after the requester went away"),
        // A store that pushes grants queued the claim: take it off the queue.
        Ok(Attempt::Held(_)) if claims.iter().any(|c| c.queue) => {
            release_claims(&calls, &ns, &claims, "queued after the requester went away")
        }
        Ok(_) => {}
    });
    InFlight::start(request, orphan, || {
        Err(Error::store(
            "core",
            true,
            "the try was abandoned with no runtime left to finish it",
        ))
    })
}

/// Claims the store may still hold for this wait: released (detached) if the wait ends
/// without settling them — on an error, at the deadline, or when the caller goes away.
/// One for claims whose last try had an unknown outcome, one for a claim a store with
/// pushed grants has queued (the release takes it off the queue and hands on a grant that
/// reached it too late).
struct Leftover<'a> {
    calls: &'a Calls,
    ns: &'a Namespace,
    claims: Option<Arc<[Claim]>>,
    why: &'static str,
}

impl Drop for Leftover<'_> {
    fn drop(&mut self) {
        if let Some(claims) = self.claims.take() {
            release_claims(self.calls, self.ns, &claims, self.why);
        }
    }
}

fn acquired_metrics(kind: &'static str, locks: usize, contended: bool, started: Instant) {
    metrics::counter!("locksmith_acquired_total", "store" => kind).increment(locks as u64);
    if contended {
        metrics::histogram!("locksmith_wait_seconds", "store" => kind)
            .record(started.elapsed().as_secs_f64());
    }
}

/// When to try again after finding the lock held by `holder`.
fn next_try(
    holder: &LockInfo,
    now: Instant,
    deadline: Option<Instant>,
    poll: &mut Option<Backoff>,
) -> Instant {
    let mut at = now
        + holder
            .expires_in
            .unwrap_or(REPOLL)
            .clamp(Duration::from_millis(1), REPOLL);
    if let Some(hint) = holder.retry_in {
        at = at.min(now + hint.max(Duration::from_millis(1)));
    }
    if let Some(backoff) = poll {
        at = at.min(now + backoff.next());
    }
    match deadline {
        Some(d) => at.min(d),
        None => at,
    }
}

/// Bounded exponential backoff for stores whose waiters in other processes must poll.
#[derive(Debug)]
struct Backoff {
    current: Duration,
    cap: Duration,
}

impl Backoff {
    fn new(cap: Duration) -> Backoff {
        Backoff::starting(Duration::from_millis(1), cap)
    }

    fn starting(first: Duration, cap: Duration) -> Backoff {
        Backoff {
            current: first.min(cap),
            cap,
        }
    }

    /// The next pause: uniformly random in `[d/2, d]` for a `d` that doubles up to the cap,
    /// so pollers in different processes do not fall into step.
    fn next(&mut self) -> Duration {
        let d = self.current;
        self.current = (self.current * 2).min(self.cap);
        d.mul_f64(0.5 + fastrand::f64() / 2.0)
    }
}

/// What became of a claim offered to this process's holder of the lock (see
/// [`registry::offer`]).
enum Offered {
    /// The holder's release handed the lock to the claim; its lease started after `sent`.
    Granted { fence: u64, sent: Instant },
    /// The claim is queued in the store behind the new holder, as by a try sent at `sent`.
    Queued { holder_fence: u64, sent: Instant },
    /// Nothing was done for the claim: it tries.
    Retry,
    /// The release failed or was abandoned: the claim may hold the lock.
    Unknown,
    /// No answer in time; the claim was taken back unused.
    TimedOut,
}

/// Takes back an offered claim if its waiter goes away before an answer.
struct Offering<'a> {
    calls: &'a Calls,
    ns: &'a Namespace,
    claim: &'a Claim,
    open: bool,
}

impl Drop for Offering<'_> {
    fn drop(&mut self) {
        if self.open {
            let c = self.claim;
            registry::withdraw(&self.calls.store, self.ns, &c.name, &c.token);
        }
    }
}

/// Waits for the answer to a claim offered to this process's holder: the holder's release,
/// or, after [`REPOLL`], at `give_up` (the caller's deadline, or the holder's lease end:
/// a holder whose lease ran out may never release) or at a wake-up of the name (a `clear`,
/// say, frees the lock without the holder), the offer taken back. An offer a release has
/// taken already is waited for: its answer comes within the call timeout.
async fn offered(
    calls: &Calls,
    ns: &Namespace,
    claim: &Claim,
    wakeups: &mut Wakeups,
    mut answer: oneshot::Receiver<Handover>,
    give_up: Option<Instant>,
) -> Offered {
    let mut offering = Offering {
        calls,
        ns,
        claim,
        open: true,
    };
    let at = Instant::now() + REPOLL;
    let at = give_up.map_or(at, |d| d.min(at));
    let word = tokio::select! {
        word = &mut answer => word,
        woken = async {
            tokio::select! {
                _ = wakeups.changed() => true,
                _ = sleep_until(at.into()) => false,
            }
        } => {
            if registry::withdraw(&calls.store, ns, &claim.name, &claim.token) {
                offering.open = false;
                return if woken { Offered::Retry } else { Offered::TimedOut };
            }
            answer.await
        }
    };
    offering.open = false;
    match word {
        Ok(Handover::Granted { fence, sent }) => Offered::Granted { fence, sent },
        Ok(Handover::Queued { holder_fence, sent }) => Offered::Queued { holder_fence, sent },
        Ok(Handover::Retry) => Offered::Retry,
        Err(_) => Offered::Unknown,
    }
}

/// The poll backoff cap of a waiter whose subscription failed, on a store that gives none.
const POLL_CAP: Duration = Duration::from_millis(25);

fn timeout(name: &str, started: Instant) -> Error {
    Error::Timeout {
        name: name.to_string(),
        waited: started.elapsed(),
    }
}

/// Runs `fut` until `deadline` (if any); `None` when the deadline came first.
async fn until<T>(deadline: Option<Instant>, fut: impl Future<Output = T>) -> Option<T> {
    match deadline {
        Some(d) => tokio::time::timeout_at(d.into(), fut).await.ok(),
        None => Some(fut.await),
    }
}

/// The claims with `waited` set, for the next try.
fn stamped(claims: &[Claim], waited: Duration) -> Arc<[Claim]> {
    claims
        .iter()
        .map(|c| Claim {
            waited,
            ..c.clone()
        })
        .collect()
}

/// The claims with fresh tokens: after a try of unknown outcome whose tokens were released,
/// so a late release of the old tokens can never free a later grant.
fn refreshed(claims: &[Claim]) -> Arc<[Claim]> {
    claims
        .iter()
        .map(|c| Claim {
            token: Token::new(),
            ..c.clone()
        })
        .collect()
}

/// The one wait loop: grants every claim (one lock, or several atomically) or fails as
/// `plan.wait` says. Returns the claims that won (their tokens may have been renewed after
/// a failed try), the fences, and the send time of the winning try.
///
/// Every store call runs under the call timeout, and a try in flight is always awaited, so
/// the loop ends within the deadline plus one call timeout. A try that fails leaves no lock
/// behind: its tokens are released (detached) and the next try uses fresh ones — or, for a
/// caller's own token, it is released if the wait ends before a later try settles it.
async fn wait_loop(
    inner: &Inner,
    claims: Arc<[Claim]>,
    plan: &Plan,
) -> Result<(Arc<[Claim]>, Vec<u64>, Instant)> {
    let started = Instant::now();
    let calls = &inner.calls;
    let first = claims[0].name.clone();
    let deadline = plan.wait.deadline(started);
    // Single-lock waiters queue first, so a newcomer never overtakes a waiter of this
    // process; only the head talks to the store.
    let _ticket = match plan.wait {
        Wait::No => None,
        _ if claims.len() > 1 => None,
        _ => {
            let ticket = Ticket::join(&calls.identity, &inner.ns, &first);
            // A timer only for waits with a deadline (boxed, so queued waiters without one
            // do not carry its space).
            let turned = match deadline {
                None => {
                    ticket.turn().await;
                    true
                }
                Some(_) => Box::pin(until(deadline, ticket.turn())).await.is_some(),
            };
            if !turned {
                return Err(timeout(first.as_str(), started));
            }
            Some(ticket)
        }
    };
    // Only the head of the queue gets here. The state of trying and waiting on the store
    // lives on the heap, so each queued waiter costs only its ticket and this frame.
    let won = Box::pin(try_loop(inner, claims, plan, started, deadline, first)).await;
    // Recorded before the ticket goes, so the next head finds the lock held here and offers
    // its claim to this holder instead of trying.
    if let Ok((claims, _, sent)) = &won
        && let [claim] = &claims[..]
        && calls.pushed_grants
    {
        let lease_end = claim.ttl.and_then(|t| sent.checked_add(t));
        registry::hold(
            &calls.store,
            &inner.ns,
            &claim.name,
            &claim.token,
            lease_end,
        );
    }
    won
}

/// The head's part of [`wait_loop`]: try, wait for a wake-up, try again.
async fn try_loop(
    inner: &Inner,
    claims: Arc<[Claim]>,
    plan: &Plan,
    started: Instant,
    deadline: Option<Instant>,
    first: LockName,
) -> Result<(Arc<[Claim]>, Vec<u64>, Instant)> {
    let calls = &inner.calls;
    let kind = calls.store.kind();
    let mut claims = claims;
    let mut unsettled = Leftover {
        calls,
        ns: &inner.ns,
        claims: None,
        why: "the wait ended after a failed try",
    };
    // Subscribed to whichever name blocked the last try.
    let mut wakeups: Option<(String, Wakeups)> = None;
    let caps = calls.store.capabilities();
    let mut poll = caps.poll_interval.map(Backoff::new);
    let mut on_error = Backoff::starting(Duration::from_millis(10), Duration::from_secs(1));
    let mut contended = false;
    // A store that pushes grants queues this claim when the lock is held; a release may
    // then hand it the lock, announced through the subscription.
    let pushed = caps.pushed_grants && claims.len() == 1 && plan.wait != Wait::No;
    if pushed {
        claims = claims
            .iter()
            .map(|c| Claim {
                queue: true,
                ..c.clone()
            })
            .collect();
    }
    let mut grant_id = pushed.then(|| claims[0].grant_id());
    // The send time of the last try that found the lock held (and so queued the claim), and
    // the holder's fence it saw.
    let mut queued_at: Option<(Instant, Option<u64>)> = None;
    // Leaves the store's queue if this loop ends without the lock.
    let mut queued = Leftover {
        calls,
        ns: &inner.ns,
        claims: None,
        why: "the wait ended while queued",
    };
    // The first try has not waited (the claims come with `waited` zero): a store may go
    // straight to its write path for it (SQLite skips the poller's read first).
    let mut first_try = true;
    // A store that pushes grants and can subscribe at once is subscribed before the first
    // try, so a try that queues the claim needs no second try after subscribing.
    if pushed
        && calls.store.subscribes_at_once(&inner.ns, &first)
        && let Some(Ok(mut sub)) = until(
            deadline,
            calls.run("subscribe", calls.store.subscribe(&inner.ns, &first)),
        )
        .await
    {
        if let Some(id) = grant_id.as_deref() {
            sub.expect_grant(id);
        }
        wakeups = Some((first.to_string(), sub));
    }
    loop {
        if let Some((_, w)) = wakeups.as_mut() {
            if let (Some(id), Some((at, seen))) = (grant_id.as_deref(), queued_at)
                && let Some(grant) = w.take_grant(id)
            {
                // A release handed the lock to this claim: its lease started no earlier
                // than the last try that queued it, plus what the store measured since.
                let sent = at + grant.after_last_try;
                // Unless that try came after the grant: it found another holder, whose fence
                // is above every earlier grant's, so this grant was already lost (its
                // message was held up, as by a frozen server, while the lease ran out and
                // another claim took the lock) and its delay counts from an earlier try.
                let stale = seen.is_none_or(|holder| grant.fence <= holder);
                let late = stale
                    || claims[0]
                        .ttl
                        .is_some_and(|ttl| Instant::now() >= sent + ttl / 2);
                if !late {
                    queued.claims = None;
                    tracing::debug!(lock = %first, fence = grant.fence, waited = ?started.elapsed(), "acquired (pushed grant)");
                    acquired_metrics(kind, claims.len(), contended, started);
                    return Ok((claims, vec![grant.fence], sent));
                }
                // Read so late that little of its lease is known to be left (this process
                // stalled), or stale: the try below takes the grant with a lease started
                // anew, or finds the lock held.
                tracing::debug!(lock = %first, stale, "a pushed grant was read late; confirming it with a try");
            }
            w.mark_seen();
        }
        // A guard of this process holds the lock: offer it this claim, and its release hands
        // the lock over in the same store call, with no try of this claim's own. (Subscribed
        // first: another process's waiter may come first, and the claim is queued behind it.)
        if pushed
            && wakeups.as_ref().is_some_and(|(n, _)| *n == first.as_str())
            && let Some((answer, lease_end)) =
                registry::offer(&calls.store, &inner.ns, &first, &claims[0])
        {
            // Released if the wait ends without the lock (the release may hand it over).
            queued.claims = Some(claims.clone());
            if !contended {
                contended = true;
                metrics::counter!("locksmith_contended_total", "store" => kind).increment(1);
            }
            // Taken back at the holder's lease end, when the lock may be free without a
            // release.
            let give_up = match (deadline, lease_end) {
                (Some(d), Some(e)) => Some(d.min(e)),
                (d, e) => d.or(e),
            };
            let (_, w) = wakeups.as_mut().expect("subscribed above");
            match offered(calls, &inner.ns, &claims[0], w, answer, give_up).await {
                Offered::Granted { fence, sent } => {
                    queued.claims = None;
                    unsettled.claims = None;
                    tracing::debug!(lock = %first, fence, waited = ?started.elapsed(), "acquired (handed over in this process)");
                    acquired_metrics(kind, 1, contended, started);
                    return Ok((claims, vec![fence], sent));
                }
                Offered::Queued { holder_fence, sent } => {
                    // As after a try that found the lock held: wait for the pushed grant.
                    queued_at = Some((sent, Some(holder_fence)));
                    // The claim is queued in the store although it never tried: its next
                    // try must be one that takes a grant pushed to it meanwhile (a first try
                    // would find its own token holding the lock, "already held").
                    first_try = false;
                    let at = deadline
                        .map_or(Instant::now() + REPOLL, |d| d.min(Instant::now() + REPOLL));
                    let (_, w) = wakeups.as_mut().expect("subscribed above");
                    tokio::select! {
                        _ = w.changed() => {}
                        _ = sleep_until(at.into()) => {}
                    }
                    continue;
                }
                Offered::Retry => {}
                // The release that was to hand the lock over failed: the claim may hold it,
                // or be queued. The try below tells (as for the caller's own token after a
                // failed try), as one that takes a grant pushed to the claim.
                Offered::Unknown => {
                    unsettled.claims = Some(claims.clone());
                    first_try = false;
                }
                Offered::TimedOut if deadline.is_some_and(|d| d <= Instant::now()) => {
                    return Err(timeout(first.as_str(), started));
                }
                Offered::TimedOut => {}
            }
        }
        let sent = Instant::now();
        if !std::mem::take(&mut first_try) {
            // Never zero: a store takes a zero as a first try, which cannot be queued yet.
            let waited = sent.saturating_duration_since(started);
            claims = stamped(&claims, waited.max(Duration::from_micros(1)));
        }
        let answer = try_claims(inner, &claims).answer().await;
        let attempt = match answer {
            Ok(attempt) => attempt,
            Err(err) => {
                // The store may have applied the try: never leave that grant behind.
                if plan.token.is_none() {
                    release_claims(calls, &inner.ns, &claims, "the try failed");
                    claims = refreshed(&claims);
                    // The release took the old token off the store's queue too.
                    queued.claims = None;
                    if pushed {
                        grant_id = Some(claims[0].grant_id());
                    }
                } else {
                    unsettled.claims = Some(claims.clone());
                }
                let now = Instant::now();
                if !err.is_retryable()
                    || plan.wait == Wait::No
                    || deadline.is_some_and(|d| d <= now)
                {
                    return Err(err);
                }
                let pause = on_error.next();
                tracing::warn!(lock = %first, %err, retry_in = ?pause, "store error while waiting; retrying");
                let at = now + pause;
                sleep_until(deadline.map_or(at, |d| d.min(at)).into()).await;
                continue;
            }
        };
        match attempt {
            Attempt::Acquired(fences) => {
                unsettled.claims = None;
                // The store takes a granted claim off its queue.
                queued.claims = None;
                acquired_metrics(kind, claims.len(), contended, started);
                tracing::debug!(lock = %first, ?fences, waited = ?started.elapsed(), "acquired");
                return Ok((claims, fences, sent));
            }
            Attempt::AlreadyHeld(name) => {
                // The token holds the lock by the caller's own doing: never release it.
                let was_queued = queued.claims.take().is_some();
                // The caller's token holds the lock: if an earlier try of this loop failed,
                // that try was applied after all, and if the claim is queued, a release
                // handed it the lock — adopt the grant.
                if (unsettled.claims.is_some() || was_queued)
                    && let Some((fences, sent)) = adopt(inner, &claims).await?
                {
                    unsettled.claims = None;
                    return Ok((claims, fences, sent));
                }
                unsettled.claims = None;
                return Err(Error::AlreadyHeld {
                    name: name.to_string(),
                });
            }
            Attempt::Held(holder) => {
                // Someone else holds it, so no earlier try of this token was applied.
                unsettled.claims = None;
                if pushed {
                    queued_at = Some((sent, holder.fence));
                    queued.claims = Some(claims.clone());
                }
                if !contended {
                    contended = true;
                    metrics::counter!("locksmith_contended_total", "store" => kind).increment(1);
                }
                if plan.wait == Wait::No {
                    return Err(Error::Locked {
                        name: holder.name.clone(),
                        holder: Box::new(holder),
                    });
                }
                let now = Instant::now();
                if deadline.is_some_and(|d| d <= now) {
                    return Err(timeout(&holder.name, started));
                }
                if wakeups.as_ref().is_none_or(|(n, _)| *n != holder.name) {
                    // Subscribe, then try again at once: the lock may have been released
                    // before the subscription existed.
                    let blocked = LockName::new(&holder.name)?;
                    let sub = calls.run("subscribe", calls.store.subscribe(&inner.ns, &blocked));
                    let sub = match until(deadline, sub).await {
                        Some(Ok(sub)) => sub,
                        Some(Err(err)) => {
                            // Wait by polling instead; the deadline stays.
                            tracing::warn!(lock = %holder.name, %err, "could not subscribe to wake-ups; polling instead");
                            let cap = caps.poll_interval.unwrap_or(POLL_CAP).min(POLL_CAP);
                            poll.get_or_insert_with(|| Backoff::new(cap));
                            Wakeups::never()
                        }
                        None => return Err(timeout(&holder.name, started)),
                    };
                    let mut sub = sub;
                    if let Some(id) = grant_id.as_deref() {
                        sub.expect_grant(id);
                    }
                    wakeups = Some((holder.name, sub));
                    continue;
                }
                let at = next_try(&holder, now, deadline, &mut poll);
                tracing::trace!(lock = %holder.name, holder = %holder, "waiting");
                let (_, w) = wakeups.as_mut().expect("subscribed above");
                if let Some(id) = grant_id.as_deref() {
                    // After a refreshed token, or a resubscription.
                    w.expect_grant(id);
                }
                tokio::select! {
                    _ = w.changed() => {}
                    _ = sleep_until(at.into()) => {}
                }
            }
        }
    }
}

/// Adopts a grant of this loop's own tokens that an earlier, failed try left behind: the
/// fences, and a send time that keeps the local deadline within what the store reports left.
async fn adopt(inner: &Inner, claims: &[Claim]) -> Result<Option<(Vec<u64>, Instant)>> {
    let asked = Instant::now();
    let calls = &inner.calls;
    let mut fences = Vec::with_capacity(claims.len());
    let mut end = None::<Instant>;
    for c in claims {
        let info = calls
            .run("held_by", calls.store.held_by(&inner.ns, &c.name, &c.token))
            .await?;
        let Some(info) = info else {
            return Ok(None);
        };
        fences.push(info.fence.unwrap_or(0));
        if let Some(left) = info.expires_in {
            let e = asked + left;
            end = Some(end.map_or(e, |x: Instant| x.min(e)));
        }
    }
    let ttl = claims[0].ttl;
    let sent = match (end, ttl) {
        (Some(end), Some(ttl)) => end.checked_sub(ttl).unwrap_or(asked),
        _ => asked,
    };
    Ok(Some((fences, sent)))
}

async fn acquire_one(inner: &Inner, name: LockName, plan: Plan) -> Result<LockGuard> {
    let plan = inner.fit(plan)?;
    let claim = inner.claim(name, &plan, plan.token.clone());
    let claims: Arc<[Claim]> = Arc::from(vec![claim]);
    let (claims, fences, sent) = wait_loop(inner, claims, &plan).await?;
    Ok(inner.guard(claims[0].clone(), fences[0], sent, &plan))
}

async fn acquire_many(inner: &Inner, names: Vec<LockName>, plan: Plan) -> Result<Vec<LockGuard>> {
    let plan = inner.fit(plan)?;
    let claims: Arc<[Claim]> = names
        .into_iter()
        .map(|n| inner.claim(n, &plan, None))
        .collect();
    let (claims, fences, sent) = wait_loop(inner, claims, &plan).await?;
    Ok(claims
        .iter()
        .zip(fences)
        .map(|(claim, fence)| inner.guard(claim.clone(), fence, sent, &plan))
        .collect())
}

/// Re-attaches to a lock held by `token` (see [`Locksmith::resume`]).
pub(crate) async fn resume(inner: &Inner, name: LockName, token: Token) -> Result<LockGuard> {
    let sent = Instant::now();
    let calls = &inner.calls;
    let info = calls
        .run("held_by", calls.store.held_by(&inner.ns, &name, &token))
        .await?;
    let Some(info) = info else {
        return Err(Error::NotHeld {
            name: name.to_string(),
        });
    };
    // The remaining lease, measured by the store, is what this guard can vouch for; the
    // original TTL is unknown, so later extends set it anew. The lock's min_hold stays.
    let terms = Terms {
        ttl: info.expires_in,
        min_hold: info.min_hold.filter(|d| !d.is_zero()),
        max_hold: None,
        renew: false,
    };
    let held = Held::new(
        calls.clone(),
        inner.ns.clone(),
        name,
        token,
        info.fence.unwrap_or(0),
        sent,
        terms,
    );
    Ok(LockGuard::new(Arc::new(held), false, sent))
}
