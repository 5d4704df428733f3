//! The blocking facade: the same locks for synchronous code, no async runtime needed.
//!
//! Every call runs on a tokio runtime owned by a background thread (shared by the whole
//! process, started on first use) and waits for the answer on a channel — so it works from
//! plain threads, from inside `tokio::task::spawn_blocking`, and from programs that have no
//! runtime at all. Watchdogs (`Renew::Auto`), `lost()` detection and drop-releases keep
//! running on that thread while your code is busy.
//!
//! Do not call it from async code: it blocks the calling thread. Use the async API there.
//!
//! A synchronous program has no runtime whose shutdown could wait for releases still queued
//! when it returns from `main`, so dropping the last handle to a store (no clone, guard or
//! other handle left) closes it like [`Locksmith::close`] — waiting briefly for them.
//!
//! ```
//! use std::time::Duration;
//! use locksmith::blocking::Locksmith;
//!
//! let lm = Locksmith::connect("memory://")?;
//! // Renewal is on by default: the lease is renewed in the background while you work.
//! let guard = lm.lock("invoices").ttl(Duration::from_secs(30)).acquire()?;
//! // … long synchronous work …
//! assert!(guard.is_held());
//! guard.release()?;
//!
//! let out = lm.lock("report").run(|lease| format!("fence {}", lease.fence()))?;
//! assert!(out.starts_with("fence"));
//! # Ok::<(), locksmith::Error>(())
//! ```

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_util::FutureExt;

use crate::{
    Capabilities, Error, Lease, ListQuery, LockInfo, LossReason, Page, Renew, Result, SetOutcome,
    SetPolicy, Token, Wait,
};

const RUNTIME_THREAD: &str = "locksmith-blocking";

/// The background runtime every blocking call runs on.
pub(crate) fn runtime() -> &'static tokio::runtime::Handle {
    static RUNTIME: OnceLock<tokio::runtime::Handle> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name(RUNTIME_THREAD.into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("building the locksmith blocking runtime");
                tx.send(rt.handle().clone()).expect("runtime handle sent");
                // Runs spawned work (calls, watchdogs) for the life of the process.
                rt.block_on(std::future::pending::<()>());
            })
            .expect("spawning the locksmith blocking runtime thread");
        rx.recv().expect("the locksmith blocking runtime started")
    })
}

/// Runs `fut` on the background runtime and waits for it; a panic inside resumes here.
pub(crate) fn block<F>(fut: F) -> F::Output
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    assert!(
        std::thread::current().name() != Some(RUNTIME_THREAD),
        "locksmith::blocking was called from its own runtime thread, which would deadlock; \
         use the async API there"
    );
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    runtime().spawn(async move {
        let _ = tx.send(AssertUnwindSafe(fut).catch_unwind().await);
    });
    match rx
        .recv()
        .expect("the locksmith blocking runtime thread stopped")
    {
        Ok(value) => value,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// A blocking handle to a lock store; see [`crate::Locksmith`] for the semantics of every
/// method. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Locksmith {
    inner: crate::Locksmith,
}

/// The blocking handle over an async one: same store, namespace and owner (e.g. one taken
/// from [`stores`](crate::stores) for synchronous code).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> locksmith::Result<()> {
/// let lm = locksmith::Locksmith::connect("memory://").await?;
/// let sync = locksmith::blocking::Locksmith::from(lm.clone());
/// assert_eq!(sync.store_kind(), "memory");
/// # Ok(()) }
/// ```
impl From<crate::Locksmith> for Locksmith {
    fn from(inner: crate::Locksmith) -> Locksmith {
        Locksmith { inner }
    }
}

impl Locksmith {
    /// Connects to the store at `url` (see [`crate::Locksmith::connect`]).
    ///
    /// # Errors
    ///
    /// As [`crate::Locksmith::connect`].
    pub fn connect(url: &str) -> Result<Locksmith> {
        let url = url.to_string();
        let inner = block(async move { crate::Locksmith::connect(&url).await })?;
        Ok(Locksmith { inner })
    }

    /// Connects to `LOCKSMITH_URL`, else the default SQLite file (see
    /// [`crate::Locksmith::from_env`]).
    ///
    /// # Errors
    ///
    /// As [`crate::Locksmith::from_env`].
    pub fn from_env() -> Result<Locksmith> {
        let inner = block(crate::Locksmith::from_env())?;
        Ok(Locksmith { inner })
    }

    /// The async handle behind this one (same store, namespace and owner).
    pub fn as_async(&self) -> &crate::Locksmith {
        &self.inner
    }

    /// The same store in another namespace.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for a bad namespace.
    pub fn with_namespace(&self, namespace: &str) -> Result<Locksmith> {
        Ok(Locksmith {
            inner: self.inner.with_namespace(namespace)?,
        })
    }

    /// The same store with another default owner label.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidOption`] for a bad label.
    pub fn with_owner(&self, owner: &str) -> Result<Locksmith> {
        Ok(Locksmith {
            inner: self.inner.with_owner(owner)?,
        })
    }

    /// The namespace this handle works in.
    pub fn namespace(&self) -> &str {
        self.inner.namespace()
    }

    /// The store's kind, e.g. `"sqlite"`.
    pub fn store_kind(&self) -> &'static str {
        self.inner.store_kind()
    }

    /// What the store can do.
    pub fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    /// Starts building an acquisition of the lock `name`.
    pub fn lock(&self, name: impl Into<String>) -> LockBuilder {
        LockBuilder {
            inner: self.inner.lock(name),
        }
    }

    /// Starts building an all-or-nothing acquisition of several locks.
    pub fn acquire_all<I, S>(&self, names: I) -> AcquireAllBuilder
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        AcquireAllBuilder {
            inner: self.inner.acquire_all(names),
        }
    }

    /// Re-attaches to a lock held by `token` (see [`crate::Locksmith::resume`]).
    ///
    /// # Errors
    ///
    /// [`Error::NotHeld`] if the token does not hold the lock.
    pub fn resume(&self, name: &str, token: Token) -> Result<LockGuard> {
        let (lm, name) = (self.inner.clone(), name.to_string());
        block(async move { lm.resume(&name, token).await }).map(LockGuard::new)
    }

    /// See [`crate::Locksmith::inspect`].
    ///
    /// # Errors
    ///
    /// [`Error::InvalidName`], [`Error::Store`].
    pub fn inspect(&self, name: &str) -> Result<Option<LockInfo>> {
        let (lm, name) = (self.inner.clone(), name.to_string());
        block(async move { lm.inspect(&name).await })
    }

    /// See [`crate::Locksmith::list`].
    ///
    /// # Errors
    ///
    /// [`Error::InvalidOption`], [`Error::Store`].
    pub fn list(&self, query: ListQuery) -> Result<Page> {
        let lm = self.inner.clone();
        block(async move { lm.list(query).await })
    }

    /// See [`crate::Locksmith::clear`].
    ///
    /// # Errors
    ///
    /// [`Error::InvalidName`], [`Error::Store`].
    pub fn clear<I, S>(&self, names: I) -> Result<Vec<(String, bool)>>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let (lm, names) = (self.inner.clone(), collect(names));
        block(async move { lm.clear(names).await })
    }

    /// See [`crate::Locksmith::reset_all`].
    ///
    /// # Errors
    ///
    /// [`Error::Store`].
    pub fn reset_all(&self) -> Result<u64> {
        let lm = self.inner.clone();
        block(async move { lm.reset_all().await })
    }

    /// See [`crate::Locksmith::purge_expired`].
    ///
    /// # Errors
    ///
    /// [`Error::Store`].
    pub fn purge_expired(&self) -> Result<u64> {
        let lm = self.inner.clone();
        block(async move { lm.purge_expired().await })
    }

    /// See [`crate::Locksmith::set_locks`].
    ///
    /// # Errors
    ///
    /// As [`crate::Locksmith::set_locks`].
    pub fn set_locks<I, S>(&self, names: I, policy: SetPolicy) -> Result<SetOutcome>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let (lm, names) = (self.inner.clone(), collect(names));
        block(async move { lm.set_locks(names, policy).await })
    }

    /// The same store with another call timeout (see [`crate::Locksmith::with_timeout`]).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidOption`] for a zero or oversized timeout.
    pub fn with_timeout(&self, timeout: Duration) -> Result<Locksmith> {
        Ok(Locksmith {
            inner: self.inner.with_timeout(timeout)?,
        })
    }

    /// How long one store call may take (the URL's `?timeout=`, default 5 s).
    pub fn timeout(&self) -> Duration {
        self.inner.timeout()
    }

    /// Finishes background releases and closes the store (see
    /// [`crate::Locksmith::close`]); blocks for at most about two call timeouts.
    ///
    /// # Errors
    ///
    /// As [`crate::Locksmith::close`].
    pub fn close(&self) -> Result<()> {
        let lm = self.inner.clone();
        block(async move { lm.close().await })
    }

    /// See [`crate::Locksmith::local_waiters`].
    ///
    /// # Errors
    ///
    /// [`Error::InvalidName`].
    pub fn local_waiters(&self, name: &str) -> Result<usize> {
        self.inner.local_waiters(name)
    }
}

/// Releases several guards together (see [`crate::release_all`]).
///
/// # Errors
///
/// The first error among the releases.
///
/// # Examples
///
/// ```
/// let lm = locksmith::blocking::Locksmith::connect("memory://")?;
/// let guards = lm.acquire_all(["a", "b"]).acquire()?;
/// locksmith::blocking::release_all(guards)?;
/// assert!(lm.inspect("a")?.is_none());
/// # Ok::<(), locksmith::Error>(())
/// ```
pub fn release_all(guards: impl IntoIterator<Item = LockGuard>) -> Result<()> {
    let guards: Vec<crate::LockGuard> = guards.into_iter().map(LockGuard::take).collect();
    block(crate::release_all(guards))
}

/// Dropping the last handle to a store (no other handle, guard or clone uses it) closes it
/// as [`close`](Locksmith::close) does, blocking for at most about two call timeouts: a
/// synchronous program that drops its guards and returns from `main` has no runtime whose
/// shutdown would wait for queued releases, so this waits for them instead.
impl Drop for Locksmith {
    fn drop(&mut self) {
        let last = Arc::strong_count(&self.inner.inner) == 1
            && Arc::strong_count(&self.inner.inner.calls.store) == 1;
        if !last || std::thread::current().name() == Some(RUNTIME_THREAD) {
            return;
        }
        let lm = self.inner.clone();
        if let Err(err) = block(async move { lm.close().await }) {
            tracing::debug!(%err, "closing the store on the last drop failed");
        }
    }
}

fn collect<I, S>(names: I) -> Vec<String>
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    names.into_iter().map(Into::into).collect()
}

macro_rules! delegate_setters {
    () => {
        /// See [`crate::LockBuilder::ttl`].
        pub fn ttl(self, ttl: Duration) -> Self {
            Self {
                inner: self.inner.ttl(ttl),
            }
        }

        /// See [`crate::LockBuilder::no_expiry`].
        pub fn no_expiry(self) -> Self {
            Self {
                inner: self.inner.no_expiry(),
            }
        }

        /// See [`crate::LockBuilder::wait`].
        pub fn wait(self, wait: Wait) -> Self {
            Self {
                inner: self.inner.wait(wait),
            }
        }

        /// See [`crate::LockBuilder::renew`].
        pub fn renew(self, renew: Renew) -> Self {
            Self {
                inner: self.inner.renew(renew),
            }
        }

        /// See [`crate::LockBuilder::min_hold`].
        pub fn min_hold(self, min_hold: Duration) -> Self {
            Self {
                inner: self.inner.min_hold(min_hold),
            }
        }

        /// See [`crate::LockBuilder::max_hold`].
        pub fn max_hold(self, max_hold: Duration) -> Self {
            Self {
                inner: self.inner.max_hold(max_hold),
            }
        }

        /// See [`crate::LockBuilder::owner`].
        pub fn owner(self, owner: impl Into<String>) -> Self {
            Self {
                inner: self.inner.owner(owner),
            }
        }
    };
}

/// Builds one blocking acquisition; see [`crate::LockBuilder`].
#[derive(Clone, Debug)]
#[must_use = "a LockBuilder does nothing until you call acquire, try_acquire, run or once"]
pub struct LockBuilder {
    inner: crate::LockBuilder,
}

impl LockBuilder {
    delegate_setters!();

    /// See [`crate::LockBuilder::token`].
    pub fn token(self, token: Token) -> Self {
        Self {
            inner: self.inner.token(token),
        }
    }

    /// Acquires the lock, blocking as `.wait(…)` says (default: forever).
    ///
    /// # Errors
    ///
    /// As [`crate::LockBuilder::acquire`].
    pub fn acquire(self) -> Result<LockGuard> {
        let inner = self.inner;
        block(async move { inner.acquire().await }).map(LockGuard::new)
    }

    /// Tries once: `Ok(None)` when held.
    ///
    /// # Errors
    ///
    /// As [`crate::LockBuilder::try_acquire`].
    pub fn try_acquire(self) -> Result<Option<LockGuard>> {
        let inner = self.inner;
        Ok(block(async move { inner.try_acquire().await })?.map(LockGuard::new))
    }

    /// Acquires the lock, runs `body` on this thread, and releases the lock; a panic in
    /// `body` releases it and resumes.
    ///
    /// Synchronous code cannot be interrupted: if the lease is lost while `body` runs,
    /// `body` still runs to its end and this returns [`Error::Lost`] (its value is
    /// dropped). To stop early, use [`acquire`](LockBuilder::acquire) and check
    /// [`LockGuard::is_held`] between steps.
    ///
    /// # Errors
    ///
    /// Those of [`acquire`](LockBuilder::acquire), and [`Error::Lost`].
    pub fn run<T>(self, body: impl FnOnce(Lease) -> T) -> Result<T> {
        let guard = self.acquire()?;
        guard.run_body(body)
    }

    /// Like [`run`](LockBuilder::run), but does not wait unless `.wait(…)` was given:
    /// `Ok(None)` when the lock is held.
    ///
    /// # Errors
    ///
    /// As [`run`](LockBuilder::run), except that contention is `Ok(None)`.
    pub fn once<T>(self, body: impl FnOnce(Lease) -> T) -> Result<Option<T>> {
        let inner = self.inner;
        let acquired = block(async move { inner.acquire_or_skip().await })?;
        match acquired {
            Some(guard) => LockGuard::new(guard).run_body(body).map(Some),
            None => Ok(None),
        }
    }
}

/// Builds one blocking all-or-nothing acquisition; see [`crate::AcquireAllBuilder`].
#[derive(Clone, Debug)]
#[must_use = "an AcquireAllBuilder does nothing until you call acquire"]
pub struct AcquireAllBuilder {
    inner: crate::AcquireAllBuilder,
}

impl AcquireAllBuilder {
    delegate_setters!();

    /// Acquires every lock or none.
    ///
    /// # Errors
    ///
    /// As [`crate::AcquireAllBuilder::acquire`].
    pub fn acquire(self) -> Result<Vec<LockGuard>> {
        let inner = self.inner;
        let guards = block(async move { inner.acquire().await })?;
        Ok(guards.into_iter().map(LockGuard::new).collect())
    }
}

/// A held lock, for synchronous code; see [`crate::LockGuard`]. Dropping it releases the
/// lock without blocking.
#[must_use = "if unused the lock is released immediately"]
#[clippy::has_significant_drop]
#[derive(Debug)]
pub struct LockGuard {
    inner: Option<Arc<crate::LockGuard>>,
}

impl LockGuard {
    fn new(guard: crate::LockGuard) -> LockGuard {
        LockGuard {
            inner: Some(Arc::new(guard)),
        }
    }

    fn guard(&self) -> &Arc<crate::LockGuard> {
        self.inner
            .as_ref()
            .expect("a guard is only emptied by consuming it")
    }

    /// Takes the async guard back out (nothing else holds it between calls).
    fn take(mut self) -> crate::LockGuard {
        let arc = self.inner.take().expect("taken once");
        Arc::into_inner(arc).expect("no call on this guard is still running")
    }

    /// The lock's name.
    pub fn name(&self) -> &str {
        self.guard().name()
    }

    /// The fencing token of this grant.
    pub fn fence(&self) -> u64 {
        self.guard().fence()
    }

    /// The secret token that holds the lock.
    pub fn token(&self) -> &Token {
        self.guard().token()
    }

    /// The name and fence, for the work done under the lock.
    pub fn lease(&self) -> Lease {
        self.guard().lease()
    }

    /// See [`crate::LockGuard::expires_in`].
    pub fn expires_in(&self) -> Option<Duration> {
        self.guard().expires_in()
    }

    /// See [`crate::LockGuard::is_held`].
    pub fn is_held(&self) -> bool {
        self.guard().is_held()
    }

    /// Blocks until the lease is lost, for at most `timeout`: `Some(reason)` if it was lost,
    /// `None` if it is still held when the time is up (or was released).
    pub fn wait_lost(&self, timeout: Duration) -> Option<LossReason> {
        let lost = self.guard().lost();
        block(async move { tokio::time::timeout(timeout, lost).await.ok() })
    }

    /// See [`crate::LockGuard::extend`].
    ///
    /// # Errors
    ///
    /// As [`crate::LockGuard::extend`].
    pub fn extend(&self, ttl: Duration) -> Result<()> {
        let guard = self.guard().clone();
        block(async move { guard.extend(ttl).await })
    }

    /// See [`crate::LockGuard::renew_by`].
    ///
    /// # Errors
    ///
    /// As [`crate::LockGuard::renew_by`].
    pub fn renew_by(&self, d: Duration) -> Result<()> {
        let guard = self.guard().clone();
        block(async move { guard.renew_by(d).await })
    }

    /// Releases the lock and reports the outcome (see [`crate::LockGuard::release`]).
    ///
    /// # Errors
    ///
    /// As [`crate::LockGuard::release`].
    pub fn release(self) -> Result<()> {
        let guard = self.take();
        block(async move { guard.release().await })
    }

    /// Keeps the lock until its lease expires and returns the token.
    pub fn leak(self) -> Token {
        self.take().leak()
    }

    fn run_body<T>(self, body: impl FnOnce(Lease) -> T) -> Result<T> {
        let name = self.name().to_string();
        let out = std::panic::catch_unwind(AssertUnwindSafe(|| body(self.lease())));
        let lost = self.guard().loss();
        let released = self.release();
        let value = match out {
            Ok(value) => value,
            Err(panic) => std::panic::resume_unwind(panic),
        };
        match (lost, released) {
            (Some(reason), _) => Err(Error::Lost { name, reason }),
            (None, Ok(())) => Ok(value),
            (None, Err(Error::NotHeld { .. })) => Err(Error::Lost {
                name,
                reason: LossReason::Revoked,
            }),
            (None, Err(err)) => {
                tracing::warn!(lock = %name, %err, "release after run failed; the lease will expire");
                Ok(value)
            }
        }
    }
}
