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
//! Each try runs as its own task and reports through a channel. If the caller goes away
//! while a try is in flight, whoever sees the grant last — the task or the dropped receiver
//! — releases it, so a cancelled `acquire` never leaves a lock held.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use tokio::sync::oneshot;
use tokio::time::sleep_until;

use crate::error::{Error, Result};
use crate::guard::LockGuard;
use crate::held::{Held, Terms};
use crate::info::{LockInfo, LossReason};
use crate::lease::{Lease, Token};
use crate::name::LockName;
use crate::options::{Options, Plan, Renew, Wait};
use crate::registry::Ticket;
use crate::store::{Claim, Grant, GrantAll};
use crate::{Inner, Locksmith};

/// Waiters re-poll at least this often, so a lost notification costs latency, never a hang.
const REPOLL: Duration = Duration::from_secs(1);

/// Builds one lock acquisition: `lm.lock(name)`, options, then
/// [`acquire`](LockBuilder::acquire), [`try_acquire`](LockBuilder::try_acquire),
/// [`run`](LockBuilder::run) or [`once`](LockBuilder::once).
///
/// Options are checked when the lock is acquired; a bad one is [`Error::InvalidOption`].
/// The rules: the TTL is positive (default 60 s); `.ttl(…)` and `.no_expiry()` exclude each
/// other, and so do `Renew::Auto` and `.no_expiry()`; `min_hold` may exceed the TTL only with
/// `Renew::Auto`; `max_hold` needs `Renew::Auto` and is at least the TTL; no duration exceeds
/// [`MAX_DURATION`](crate::MAX_DURATION).
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
        /// [`Renew::Off`].
        pub fn renew(mut self, renew: Renew) -> Self {
            self.opts.renew = renew;
            self
        }

        /// Keep the lock until at least `acquired_at + min_hold`, even if released sooner:
        /// "run at most once per period".
        pub fn min_hold(mut self, min_hold: Duration) -> Self {
            self.opts.min_hold = Some(min_hold);
            self
        }

        /// Stop renewing after this long: the lease ends and the guard is lost at
        /// `acquired_at + max_hold`. Needs `Renew::Auto`.
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
        let name = LockName::new(&self.name)?;
        acquire_one(&self.lm.inner, name, plan).await
    }

    /// Tries once: `Ok(None)` when the lock is held by someone else. Ignores `.wait(…)`.
    ///
    /// # Errors
    ///
    /// As [`acquire`](LockBuilder::acquire), except that contention is `Ok(None)`.
    ///
    /// # Cancel safety
    ///
    /// As [`acquire`](LockBuilder::acquire).
    pub async fn try_acquire(self) -> Result<Option<LockGuard>> {
        let mut plan = self.opts.validate(Wait::No)?;
        plan.wait = Wait::No;
        let name = LockName::new(&self.name)?;
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
    ///     .renew(Renew::Auto)
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
        let name = LockName::new(&self.name)?;
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
/// queueing applies to single locks only.
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
        let names = validate_names(&self.names)?;
        acquire_many(&self.lm.inner, names, plan).await
    }
}

/// Validates a list of names for a multi-lock call: non-empty, each valid, no repeats.
pub(crate) fn validate_names(names: &[String]) -> Result<Vec<LockName>> {
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
            let name = LockName::new(n)?;
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
        }
    }

    pub(crate) fn guard(&self, claim: Claim, fence: u64, sent: Instant, plan: &Plan) -> LockGuard {
        let terms = Terms {
            ttl: claim.ttl,
            min_hold: plan.min_hold,
            max_hold: plan.max_hold,
        };
        let held = Held::new(
            self.store.clone(),
            self.ns.clone(),
            claim.name,
            claim.token,
            fence,
            sent,
            terms,
        );
        LockGuard::new(Arc::new(held), plan.renew == Renew::Auto, sent)
    }
}

/// A store request running as its own task. If this handle is dropped before the answer is
/// taken, `orphan` receives the answer (from the task, or from this handle's drop —
/// whichever comes last), so a grant nobody will use is released.
struct InFlight<T: Send + 'static> {
    rx: Option<oneshot::Receiver<T>>,
    orphan: Arc<dyn Fn(T) + Send + Sync>,
}

impl<T: Send + 'static> InFlight<T> {
    fn spawn<F>(request: F, orphan: Arc<dyn Fn(T) + Send + Sync>) -> InFlight<T>
    where
        F: Future<Output = T> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let task_orphan = orphan.clone();
        tokio::spawn(async move {
            if let Err(unclaimed) = tx.send(request.await) {
                task_orphan(unclaimed);
            }
        });
        InFlight {
            rx: Some(rx),
            orphan,
        }
    }

    async fn answer(mut self, store: &'static str) -> Result<T> {
        let rx = self.rx.as_mut().expect("answer is taken once");
        let answer = rx.await;
        self.rx = None;
        answer.map_err(|_| {
            Error::store(
                store,
                true,
                "the store request task ended without an answer (runtime shutting down?)",
            )
        })
    }
}

impl<T: Send + 'static> Drop for InFlight<T> {
    fn drop(&mut self) {
        if let Some(mut rx) = self.rx.take() {
            // After close() the task's send fails (and the task hands the answer to
            // `orphan`); an answer sent before close() is still here to take.
            rx.close();
            if let Ok(answer) = rx.try_recv() {
                (self.orphan)(answer);
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

/// Tries to grant every claim (one store call), as its own task: see [`InFlight`].
fn try_claims(inner: &Inner, claims: &Arc<[Claim]>) -> InFlight<Result<Attempt>> {
    let store = inner.store.clone();
    let ns = inner.ns.clone();
    let request = {
        let (store, ns, claims) = (store.clone(), ns.clone(), claims.clone());
        async move {
            Ok(if let [claim] = &claims[..] {
                match store.try_acquire(&ns, claim).await? {
                    Grant::Acquired { fence } => Attempt::Acquired(vec![fence]),
                    Grant::Held(info) => Attempt::Held(info),
                    Grant::AlreadyHeld => Attempt::AlreadyHeld(claim.name.clone()),
                }
            } else {
                match store.try_acquire_all(&ns, &claims).await? {
                    GrantAll::Acquired(fences) => Attempt::Acquired(fences),
                    GrantAll::Held(info) => Attempt::Held(info),
                    GrantAll::AlreadyHeld(name) => Attempt::AlreadyHeld(name),
                }
            })
        }
    };
    let claims = claims.clone();
    let orphan = Arc::new(move |answer: Result<Attempt>| {
        if let Ok(Attempt::Acquired(_)) = answer {
            for c in claims.iter() {
                tracing::debug!(lock = %c.name, "releasing a grant whose requester went away");
                store.release_detached(&ns, &c.name, &c.token, None);
            }
        }
    });
    InFlight::spawn(request, orphan)
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

/// A try in flight when the caller's deadline passes may still finish within this, so a
/// slow store can grant a free lock to a short `Wait::For`.
const TRY_GRACE: Duration = Duration::from_secs(5);

/// The one wait loop: grants every claim (one lock, or several atomically) or fails as
/// `plan.wait` says. Returns the fences and the send time of the try that won.
async fn wait_loop(
    inner: &Inner,
    claims: &Arc<[Claim]>,
    plan: &Plan,
) -> Result<(Vec<u64>, Instant)> {
    let started = Instant::now();
    let kind = inner.store.kind();
    let first = claims[0].name.clone();
    let deadline = match plan.wait {
        Wait::For(d) => Some(started + d),
        _ => None,
    };
    // Single-lock waiters queue first, so a newcomer never overtakes a waiter of this
    // process; only the head talks to the store.
    let _ticket = match plan.wait {
        Wait::No => None,
        _ if claims.len() > 1 => None,
        _ => {
            let ticket = Ticket::join(&inner.store, &inner.ns, &first);
            if until(deadline, ticket.turn()).await.is_none() {
                return Err(timeout(first.as_str(), started));
            }
            Some(ticket)
        }
    };
    // Subscribed to whichever name blocked the last try.
    let mut wakeups: Option<(String, crate::store::Wakeups)> = None;
    let mut poll = inner.store.capabilities().poll_interval.map(Backoff::new);
    let mut on_error = Backoff::starting(Duration::from_millis(10), Duration::from_secs(1));
    let mut contended = false;
    loop {
        if let Some((_, w)) = wakeups.as_mut() {
            w.mark_seen();
        }
        let sent = Instant::now();
        let try_deadline = deadline.map(|d| d.max(sent) + TRY_GRACE);
        let answer = match until(try_deadline, try_claims(inner, claims).answer(kind)).await {
            Some(answer) => answer?,
            None => return Err(timeout(first.as_str(), started)),
        };
        let attempt = match answer {
            Ok(attempt) => attempt,
            Err(err) if err.is_retryable() && plan.wait != Wait::No => {
                let now = Instant::now();
                if deadline.is_some_and(|d| d <= now) {
                    return Err(err);
                }
                let pause = on_error.next();
                tracing::warn!(lock = %first, %err, retry_in = ?pause, "store error while waiting; retrying");
                let at = now + pause;
                sleep_until(deadline.map_or(at, |d| d.min(at)).into()).await;
                continue;
            }
            Err(err) => return Err(err),
        };
        match attempt {
            Attempt::Acquired(fences) => {
                metrics::counter!("locksmith_acquired_total", "store" => kind)
                    .increment(claims.len() as u64);
                if contended {
                    metrics::histogram!("locksmith_wait_seconds", "store" => kind)
                        .record(started.elapsed().as_secs_f64());
                }
                tracing::debug!(lock = %first, ?fences, waited = ?started.elapsed(), "acquired");
                return Ok((fences, sent));
            }
            Attempt::AlreadyHeld(name) => {
                // A token this loop generated can only hold the lock already if an earlier
                // try was applied but its answer lost to an error: adopt that grant.
                if plan.token.is_none()
                    && let Some(adopted) = adopt(inner, claims).await?
                {
                    return Ok(adopted);
                }
                return Err(Error::AlreadyHeld {
                    name: name.to_string(),
                });
            }
            Attempt::Held(holder) => {
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
                    let sub =
                        match until(deadline, inner.store.subscribe(&inner.ns, &blocked)).await {
                            Some(sub) => sub?,
                            None => return Err(timeout(&holder.name, started)),
                        };
                    wakeups = Some((holder.name, sub));
                    continue;
                }
                let at = next_try(&holder, now, deadline, &mut poll);
                tracing::trace!(lock = %holder.name, holder = %holder, "waiting");
                let (_, w) = wakeups.as_mut().expect("subscribed above");
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
    let mut fences = Vec::with_capacity(claims.len());
    let mut end = None::<Instant>;
    for c in claims {
        let Some(info) = inner.store.held_by(&inner.ns, &c.name, &c.token).await? else {
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
    let claim = inner.claim(name, &plan, plan.token.clone());
    let claims: Arc<[Claim]> = Arc::from(vec![claim]);
    let (fences, sent) = wait_loop(inner, &claims, &plan).await?;
    Ok(inner.guard(claims[0].clone(), fences[0], sent, &plan))
}

async fn acquire_many(inner: &Inner, names: Vec<LockName>, plan: Plan) -> Result<Vec<LockGuard>> {
    let claims: Arc<[Claim]> = names
        .into_iter()
        .map(|n| inner.claim(n, &plan, None))
        .collect();
    let (fences, sent) = wait_loop(inner, &claims, &plan).await?;
    Ok(claims
        .iter()
        .zip(fences)
        .map(|(claim, fence)| inner.guard(claim.clone(), fence, sent, &plan))
        .collect())
}

/// Re-attaches to a lock held by `token` (see [`Locksmith::resume`]).
pub(crate) async fn resume(inner: &Inner, name: LockName, token: Token) -> Result<LockGuard> {
    let sent = Instant::now();
    let Some(info) = inner.store.held_by(&inner.ns, &name, &token).await? else {
        return Err(Error::NotHeld {
            name: name.to_string(),
        });
    };
    // The remaining lease, measured by the store, is what this guard can vouch for; the
    // original TTL is unknown, so later extends set it anew.
    let terms = Terms {
        ttl: info.expires_in,
        ..Terms::default()
    };
    let held = Held::new(
        inner.store.clone(),
        inner.ns.clone(),
        name,
        token,
        info.fence.unwrap_or(0),
        sent,
        terms,
    );
    Ok(LockGuard::new(Arc::new(held), false, sent))
}
