//! Named, leased, fenced locks on the store you already run.
//!
//! A lock is a name in a store — an embedded SQLite file (the default) or in-process memory
//! today; PostgreSQL, MySQL/MariaDB and Redis as they land — held by a secret [`Token`] under a
//! lease that expires unless renewed. Every grant carries a fencing token ([`Lease::fence`])
//! that is strictly greater than every fence granted before for that name, so the resource
//! you protect can reject writes from a holder whose lease ended without it knowing.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> locksmith::Result<()> {
//! use std::time::Duration;
//! use locksmith::{Locksmith, Wait};
//!
//! let lm = Locksmith::connect("memory://").await?;
//!
//! // Hold a lock while work runs; the watchdog renews it (on by default); a lost lease
//! // stops the work.
//! let rows = lm
//!     .lock("billing/invoice-42")
//!     .ttl(Duration::from_secs(30))
//!     .wait(Wait::For(Duration::from_secs(5)))
//!     .run(|lease| async move {
//!         // UPDATE invoices SET … WHERE id = 42 AND last_fence <= lease.fence()
//!         1
//!     })
//!     .await?;
//! assert_eq!(rows, 1);
//!
//! // Or keep the guard yourself; dropping it releases the lock.
//! let guard = lm.lock("reports").try_acquire().await?.expect("free");
//! println!("holding {} with fence {}", guard.name(), guard.fence());
//! guard.release().await?;
//!
//! // Awaiting the builder acquires (waiting like a mutex).
//! let guard = lm.lock("reports").await?;
//! drop(guard);
//!
//! // Before exit: finish releases still being retried, close the store.
//! lm.close().await?;
//! # Ok(()) }
//! ```
//!
//! # Semantics, on every store
//!
//! - **Lease.** A lock expires `ttl` (default 60 s) after its grant or last renewal;
//!   `.no_expiry()` asks for one that never does. An expired lock is free: the next
//!   acquirer takes it over atomically, with a higher fence. The store's clock decides
//!   expiry; clients measure their own deadlines on a monotonic clock.
//! - **Contention.** [`try_acquire`](LockBuilder::try_acquire) returns `Ok(None)` when the
//!   lock is held. [`acquire`](LockBuilder::acquire) waits like a mutex by default;
//!   [`Wait::No`] fails at once with [`Error::Locked`] and the holder's info, and
//!   [`Wait::For`] / [`Wait::Until`] with [`Error::Timeout`] after a real deadline. Waiters
//!   are woken by the store, served first-come first-served within a process, and re-poll
//!   at least every second and at the holder's expiry, so a lost notification costs
//!   latency, never a hang; waiters the store cannot subscribe poll instead.
//! - **Fences.** `fence = max(last fence + 1, store clock in µs since the Unix epoch)`:
//!   strictly increasing per name across expiry, takeover, clear, reset, purge and store
//!   restarts, even when the clock steps back or the counter is lost.
//! - **Renewal and loss.** Renewal ([`Renew::Auto`]) is on by default for every lock that
//!   expires: a watchdog extends the lease every `ttl / 3`, so the TTL only bounds how long a
//!   crashed holder blocks others; `.renew(Renew::Off)` asks for a bare lease. A guard is
//!   *lost* — [`LockGuard::lost`] resolves, [`LockGuard::is_held`] turns false — when the
//!   store says its token no longer holds the lock ([`LossReason::Revoked`]; a held guard
//!   re-checks when its name is woken, so a `clear` stops an in-process holder at once),
//!   when renewals cannot reach the store before the lease could have expired
//!   ([`LossReason::RenewalFailed`], or [`LossReason::Expired`] with renewal off), or at
//!   `max_hold`. A clean release never is, and a late answer never revives a lost guard.
//! - **Store calls.** Every store call runs under the URL's `?timeout=` (default 5 s); a
//!   call that does not answer is a retryable [`Error::Store`]. `Wait::For(d)` returns within
//!   `d` plus one call timeout. A try that failed or was abandoned releases its claim, since
//!   the store may have applied it; a failed [`release`](LockGuard::release) is retried in
//!   the background until it gets through, the lease ends, or [`Locksmith::close`].
//! - **Keep after completion.** `min_hold` keeps a released lock until
//!   `acquired_at + min_hold`: "run at most once per period".
//! - **Admin.** [`Locksmith::inspect`], [`list`](Locksmith::list) (paged, by prefix),
//!   [`clear`](Locksmith::clear), [`reset_all`](Locksmith::reset_all),
//!   [`purge_expired`](Locksmith::purge_expired) and [`set_locks`](Locksmith::set_locks)
//!   (django-lockmgr's multi-lock set/renew) never show tokens and never leave their
//!   namespace.
//!
//! # Stores
//!
//! | URL | store | wake-ups |
//! |---|---|---|
//! | `sqlite://` (default) | the per-user file, shared by every process of the user | in-process notification; other processes poll (≤ 25 ms) |
//! | `sqlite:///abs/path.db` | that file | as above |
//! | `memory://` | private to this [`Locksmith`] and its clones | in-process notification |
//! | `memory://NAME` | shared by everything in this process that connects to `NAME` | in-process notification |
//!
//! Every URL takes `?namespace=NAME` to isolate tenants or test runs on a shared store, and
//! `?timeout=DURATION` (default 5 s) to bound each store call; `?retain=DURATION` (default
//! 1 h) says how long expired rows stay visible before the store removes them.
//! [`Locksmith::from_env`] reads `LOCKSMITH_URL` and falls back to the SQLite default; see
//! [`store::sqlite`] for where that file lives and how to share one between users.
//! Synchronous code uses [`blocking`], the same surface without `async`.
//!
//! # Task locks, named stores, cache stampedes
//!
//! `#[locked]` (the `macros` feature, on by default) runs a function under a lock named from
//! its module path and arguments, or from a template such as `"tenant:{self.id}:sync"`, so
//! duplicate runs across processes are skipped, waited for or refused; see `locked`'s
//! options. It finds its store in [`stores`], a registry of handles under aliases whose
//! `default` comes from `LOCKSMITH_URL`. [`Locksmith::get_or_compute`] guards your own cache
//! against stampedes: on a miss, one caller computes while the others wait and then read.
//!
//! # Drop, exit and crashes
//!
//! Dropping a [`LockGuard`] releases the lock without blocking. A process that exits or
//! aborts with locks held leaves them to expire with their lease (or, for `.no_expiry()`
//! locks, until an operator clears them). [`Locksmith::close`] before exit finishes queued
//! and retried releases. Store URLs are shown with their password masked
//! ([`redact_url`]) everywhere: errors, `Debug`, logs. A paused holder (GC, swap, SIGSTOP) may outlive
//! its lease without noticing until it runs again: that is what fences are for.

#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

use std::fmt;
use std::sync::Arc;

pub mod blocking;
mod calls;
#[cfg(all(test, feature = "memory"))]
mod core_tests;
mod error;
mod guard;
mod held;
mod info;
mod lease;
mod name;
mod options;
mod registry;
mod stampede;
pub mod store;
pub mod stores;
mod url;
mod wait;
mod watchdog;

/// What the code generated by `#[locked]` calls; not a public API.
#[doc(hidden)]
#[path = "task.rs"]
pub mod __private;

pub use error::{BoxError, Error, Result};
pub use guard::{LockGuard, release_all};
pub use info::{LockInfo, LossReason};
pub use lease::{Lease, MAX_TOKEN_LEN, Token};
pub use name::{LockName, MAX_NAME_LEN, MAX_NAMESPACE_LEN, Namespace};
pub use options::{
    Cursor, DEFAULT_PAGE, DEFAULT_TTL, Expired, ListQuery, MAX_DURATION, MAX_PAGE, MIN_TTL, Page,
    Renew, SetAction, SetCounts, SetOutcome, SetPolicy, SetStatus, Wait,
};
pub use store::Capabilities;
pub use url::{DEFAULT_TIMEOUT, redact_url};
pub use wait::{AcquireAllBuilder, LockBuilder};

#[cfg(feature = "macros")]
#[cfg_attr(docsrs, doc(cfg(feature = "macros")))]
pub use locksmith_macros::locked;

use calls::Calls;
use store::Store;
use url::{SCHEMES, StoreUrl};

/// The environment variable [`Locksmith::from_env`] reads.
pub const URL_ENV: &str = "LOCKSMITH_URL";

/// The store [`Locksmith::from_env`] uses when `LOCKSMITH_URL` is unset: the per-user SQLite
/// file (see [`store::sqlite::default_path`]).
pub const DEFAULT_URL: &str = "sqlite://";

/// A handle to a lock store: cheap to clone, shared by every lock it hands out.
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> locksmith::Result<()> {
/// use locksmith::Locksmith;
///
/// let lm = Locksmith::connect("memory://shared?namespace=tests").await?;
/// assert_eq!(lm.namespace(), "tests");
/// assert_eq!(lm.store_kind(), "memory");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Locksmith {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    /// The store, under the call timeout, with the background releases of this store.
    pub(crate) calls: Calls,
    pub(crate) ns: Namespace,
    pub(crate) owner: Arc<str>,
    pub(crate) host: Arc<str>,
    pub(crate) pid: u32,
    /// The URL with its password masked: the raw one is never kept.
    url: String,
}

impl fmt::Debug for Locksmith {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Locksmith")
            .field("url", &self.inner.url)
            .field("namespace", &self.inner.ns)
            .field("timeout", &self.inner.calls.timeout)
            .finish_non_exhaustive()
    }
}

fn default_owner() -> Arc<str> {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .filter(|s| options::check_owner(s).is_ok())
        .unwrap_or_else(|| "locksmith".to_string())
        .into()
}

fn host_name() -> Arc<str> {
    gethostname::gethostname().to_string_lossy().into()
}

async fn open_store(url: &mut StoreUrl) -> Result<Arc<dyn Store>> {
    match url.scheme.as_str() {
        #[cfg(feature = "sqlite")]
        "sqlite" => store::sqlite::open(url).await,
        #[cfg(not(feature = "sqlite"))]
        "sqlite" => Err(Error::config(
            "the sqlite store is not built in — enable locksmith's `sqlite` cargo feature",
        )),
        #[cfg(feature = "memory")]
        "memory" => {
            let latency = url.take_duration("latency")?;
            let options = store::memory::StoreOptions::new(url.take_duration("retain")?);
            url.finish(", ?latency= and ?retain=")?;
            let name = Some(url.body.as_str()).filter(|b| !b.is_empty());
            let store: Arc<dyn Store> = store::memory::MemoryStore::open(name, &options);
            Ok(match latency {
                Some(latency) if !latency.is_zero() => store::memory::Delayed::new(store, latency),
                _ => store,
            })
        }
        #[cfg(not(feature = "memory"))]
        "memory" => Err(Error::config(
            "the memory store is not built in — enable locksmith's `memory` cargo feature",
        )),
        #[cfg(feature = "postgres")]
        "postgres" | "postgresql" => store::postgres::open(url).await,
        #[cfg(feature = "mysql")]
        "mysql" | "mariadb" => store::mysql::open(url).await,
        #[cfg(feature = "redis")]
        "redis" | "rediss" | "redis+unix" | "redis+cluster" | "rediss+cluster" => {
            store::redis::open(url).await
        }
        #[cfg(not(feature = "postgres"))]
        "postgres" | "postgresql" => Err(not_built_in(url, "postgres")),
        #[cfg(not(feature = "mysql"))]
        "mysql" | "mariadb" => Err(not_built_in(url, "mysql")),
        #[cfg(not(feature = "redis"))]
        "redis" | "rediss" | "redis+unix" | "redis+cluster" | "rediss+cluster" => {
            Err(not_built_in(url, "redis"))
        }
        other => Err(Error::config(format!(
            "unknown store scheme {other:?} in {:?} — use one of {SCHEMES}",
            url.redacted()
        ))),
    }
}

/// The error for a store whose cargo feature is off.
#[allow(dead_code)]
fn not_built_in(url: &StoreUrl, feature: &str) -> Error {
    Error::config(format!(
        "the {} store ({:?}) is not built in — enable locksmith's `{feature}` cargo feature, or use another store",
        url.scheme,
        url.redacted()
    ))
}

impl Locksmith {
    /// Connects to the store at `url`.
    ///
    /// | URL | store |
    /// |---|---|
    /// | `memory://` | a private in-process store, shared by this handle's clones |
    /// | `memory://NAME` | the process-wide in-process store `NAME` |
    /// | `memory://NAME?latency=5ms` | the same, reached as if across a network (for tests) |
    ///
    /// Every URL takes `?namespace=NAME` (ASCII letters, digits, `-_.:/`, at most 64 bytes)
    /// and `?timeout=DURATION` (humantime, e.g. `500ms`, `5s`; default
    /// [`DEFAULT_TIMEOUT`], 5 s): how long any one store call may take before it counts as
    /// failed ([`Error::Store`], retryable). Waits retry such failures until their deadline;
    /// `Wait::For(d)` returns within `d` plus one call timeout. `memory://` and `sqlite://`
    /// also take `?retain=DURATION` (default 1 h): rows that expired longer ago than that
    /// are removed as the store writes, so per-period names never grow the store without
    /// bound.
    ///
    /// A password in the URL never appears in errors, `Debug` or logs: they show the URL
    /// with it masked (`postgres://u:***@host/db`, see [`redact_url`]).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for a malformed URL, an unknown scheme or parameter, a store not
    /// built into this version, a bad namespace or timeout; [`Error::Store`] if the store
    /// cannot be reached.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> locksmith::Result<()> {
    /// use locksmith::Locksmith;
    ///
    /// let lm = Locksmith::connect("memory://?timeout=2s").await?;
    /// let err = Locksmith::connect("postgres://app:hunter2@db/locks").await.unwrap_err();
    /// assert!(!err.to_string().contains("hunter2"));
    /// # Ok(()) }
    /// ```
    pub async fn connect(url: &str) -> Result<Locksmith> {
        let mut parsed = StoreUrl::parse(url)?;
        let store = open_store(&mut parsed).await?;
        let url = parsed.redacted().to_string();
        Ok(Locksmith::build(
            Calls::new(store, parsed.timeout),
            parsed.namespace,
            url,
        ))
    }

    /// Connects to the store named by the `LOCKSMITH_URL` environment variable, or to
    /// [`DEFAULT_URL`] (the per-user SQLite file) when it is unset or empty.
    ///
    /// # Errors
    ///
    /// As [`connect`](Locksmith::connect); [`Error::Config`] when the variable is not UTF-8,
    /// or when the default file's location is unknown (neither `$XDG_STATE_HOME` nor
    /// `$HOME` set).
    pub async fn from_env() -> Result<Locksmith> {
        match std::env::var(URL_ENV) {
            Ok(url) if !url.is_empty() => Locksmith::connect(&url).await,
            Ok(_) | Err(std::env::VarError::NotPresent) => Locksmith::connect(DEFAULT_URL).await,
            Err(std::env::VarError::NotUnicode(_)) => Err(Error::config(format!(
                "{URL_ENV} is not valid UTF-8 — set it to a store URL such as sqlite:///path/locks.db"
            ))),
        }
    }

    /// Wraps a [`Store`] you built yourself; `url` is only shown (redacted) in `Debug`.
    /// Calls run under [`DEFAULT_TIMEOUT`]; see [`with_timeout`](Locksmith::with_timeout).
    pub fn with_store(store: Arc<dyn Store>, namespace: Namespace, url: &str) -> Locksmith {
        Locksmith::build(
            Calls::new(store, DEFAULT_TIMEOUT),
            namespace,
            redact_url(url),
        )
    }

    fn build(calls: Calls, ns: Namespace, url: String) -> Locksmith {
        Locksmith {
            inner: Arc::new(Inner {
                calls,
                ns,
                owner: default_owner(),
                host: host_name(),
                pid: std::process::id(),
                url,
            }),
        }
    }

    fn derive(&self, calls: Calls, ns: Namespace, owner: Arc<str>) -> Locksmith {
        Locksmith {
            inner: Arc::new(Inner {
                calls,
                ns,
                owner,
                host: self.inner.host.clone(),
                pid: self.inner.pid,
                url: self.inner.url.clone(),
            }),
        }
    }

    /// The same store with another call timeout (what the URL's `?timeout=` sets).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidOption`] for a zero timeout or one over [`MAX_DURATION`].
    pub fn with_timeout(&self, timeout: std::time::Duration) -> Result<Locksmith> {
        if timeout.is_zero() {
            return Err(Error::invalid_option(
                "timeout",
                "a zero call timeout would fail every store call — give the longest a call may take, e.g. 5s",
            ));
        }
        options::check_duration("timeout", timeout)?;
        Ok(self.derive(
            self.inner.calls.with_timeout(timeout),
            self.inner.ns.clone(),
            self.inner.owner.clone(),
        ))
    }

    /// How long one store call may take (the URL's `?timeout=`, default 5 s).
    pub fn timeout(&self) -> std::time::Duration {
        self.inner.calls.timeout
    }

    /// Finishes this store's background work, then closes the store: releases that failed
    /// and are being retried in the background get one last attempt (waited for at most one
    /// call timeout), and the store finishes its queued detached releases
    /// ([`Store::close`]). Call it before a program exits if it must not leave locks to
    /// expire by their lease. Every handle derived from the same `connect` shares this work;
    /// calls after `close` may fail.
    ///
    /// # Errors
    ///
    /// [`Error::Store`] if the store fails to close or does not answer within the call
    /// timeout.
    ///
    /// # Cancel safety
    ///
    /// Cancelling stops the waiting, not the background work.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> locksmith::Result<()> {
    /// use locksmith::Locksmith;
    ///
    /// let lm = Locksmith::connect("memory://").await?;
    /// drop(lm.lock("job").await?);
    /// lm.close().await?;
    /// # Ok(()) }
    /// ```
    pub async fn close(&self) -> Result<()> {
        self.inner.calls.close().await
    }

    /// The same store in another namespace.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for a bad namespace.
    pub fn with_namespace(&self, namespace: &str) -> Result<Locksmith> {
        Ok(self.derive(
            self.inner.calls.clone(),
            Namespace::new(namespace)?,
            self.inner.owner.clone(),
        ))
    }

    /// The same store with another default owner label (default: the program's name).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidOption`] for an empty label, one over 255 bytes, or one with NUL.
    pub fn with_owner(&self, owner: &str) -> Result<Locksmith> {
        options::check_owner(owner)?;
        Ok(self.derive(
            self.inner.calls.clone(),
            self.inner.ns.clone(),
            owner.into(),
        ))
    }

    /// The namespace this handle works in (empty by default).
    pub fn namespace(&self) -> &str {
        self.inner.ns.as_str()
    }

    /// The store's kind, e.g. `"memory"`.
    pub fn store_kind(&self) -> &'static str {
        self.inner.calls.store.kind()
    }

    /// What the store can do.
    pub fn capabilities(&self) -> Capabilities {
        self.inner.calls.store.capabilities()
    }

    /// The store behind this handle, e.g. to wrap it (tests that inject faults) and build
    /// another handle with [`with_store`](Locksmith::with_store).
    pub fn store(&self) -> Arc<dyn Store> {
        self.inner.calls.store.clone()
    }

    /// Starts building an acquisition of the lock `name` (validated when acquired).
    pub fn lock(&self, name: impl Into<String>) -> LockBuilder {
        LockBuilder::new(self.clone(), name.into())
    }

    /// Starts building an all-or-nothing acquisition of several locks.
    pub fn acquire_all<I, S>(&self, names: I) -> AcquireAllBuilder
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        AcquireAllBuilder::new(self.clone(), names.into_iter().map(Into::into).collect())
    }

    /// Re-attaches to a lock held by `token` — one handed over by another process or by
    /// [`LockGuard::leak`] — without changing its lease. The guard does not auto-renew; its
    /// lease is what the store reports as left; it keeps the lock's `min_hold` (where the
    /// store records it); dropping it releases the lock.
    ///
    /// # Errors
    ///
    /// [`Error::NotHeld`] if the token does not hold the lock (any more).
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> locksmith::Result<()> {
    /// use locksmith::Locksmith;
    ///
    /// let lm = Locksmith::connect("memory://").await?;
    /// let token = lm.lock("deploy").acquire().await?.leak();
    /// // … later, maybe in another process:
    /// let guard = lm.resume("deploy", token).await?;
    /// guard.release().await?;
    /// # Ok(()) }
    /// ```
    pub async fn resume(&self, name: &str, token: Token) -> Result<LockGuard> {
        wait::resume(&self.inner, self.inner.lock_name(name)?, token).await
    }

    /// What anyone may know about the lock `name`: `None` when there is no row; an expired
    /// row is `Some` with `expired = true`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidName`], [`Error::Store`].
    pub async fn inspect(&self, name: &str) -> Result<Option<LockInfo>> {
        let name = self.inner.lock_name(name)?;
        let calls = &self.inner.calls;
        calls
            .run("inspect", calls.store.inspect(&self.inner.ns, &name))
            .await
    }

    /// One page of locks in this namespace, by name.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidOption`] for a page size outside 1 to [`MAX_PAGE`]; [`Error::Store`].
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> locksmith::Result<()> {
    /// use locksmith::{ListQuery, Locksmith};
    ///
    /// let lm = Locksmith::connect("memory://").await?;
    /// let _a = lm.lock("jobs/a").acquire().await?;
    /// let _b = lm.lock("jobs/b").acquire().await?;
    /// let mut query = ListQuery::prefix("jobs/").limit(1);
    /// let mut names = vec![];
    /// loop {
    ///     let page = lm.list(query.clone()).await?;
    ///     names.extend(page.items.into_iter().map(|i| i.name));
    ///     match page.next {
    ///         Some(after) => query = query.after(after),
    ///         None => break,
    ///     }
    /// }
    /// assert_eq!(names, ["jobs/a", "jobs/b"]);
    /// # Ok(()) }
    /// ```
    pub async fn list(&self, query: ListQuery) -> Result<Page> {
        query.validate()?;
        let calls = &self.inner.calls;
        calls
            .run("list", calls.store.list(&self.inner.ns, &query))
            .await
    }

    /// Force-releases the named locks whoever holds them, waking their waiters. Returns, per
    /// name, whether a live lock was removed. Holders in this process (on a store that
    /// notifies) find out at once — their guards re-check ownership when woken and report
    /// [`LossReason::Revoked`]; others at their next renewal or local deadline.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidName`], [`Error::Store`].
    pub async fn clear<I, S>(&self, names: I) -> Result<Vec<(String, bool)>>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let names: Vec<String> = names.into_iter().map(Into::into).collect();
        let valid = names
            .iter()
            .map(|n| self.inner.lock_name(n))
            .collect::<Result<Vec<_>>>()?;
        let calls = &self.inner.calls;
        let existed = calls
            .run("clear", calls.store.force_release(&self.inner.ns, &valid))
            .await?;
        Ok(names.into_iter().zip(existed).collect())
    }

    /// Removes every lock in this namespace (and only this one), waking their waiters.
    /// Returns how many rows were removed, expired ones included.
    ///
    /// # Errors
    ///
    /// [`Error::Store`].
    pub async fn reset_all(&self) -> Result<u64> {
        let calls = &self.inner.calls;
        calls
            .run("reset_all", calls.store.reset_all(&self.inner.ns))
            .await
    }

    /// Removes the expired rows of this namespace; returns how many.
    ///
    /// # Errors
    ///
    /// [`Error::Store`].
    pub async fn purge_expired(&self) -> Result<u64> {
        let calls = &self.inner.calls;
        calls
            .run("purge_expired", calls.store.purge_expired(&self.inner.ns))
            .await
    }

    /// django-lockmgr's `set_lock`: creates free locks and renews held ones (whoever holds
    /// them) in one atomic step, as `policy` says. See [`SetPolicy`].
    ///
    /// # Errors
    ///
    /// [`Error::Locked`] when `policy.fail` is set and a name is held (nothing changed);
    /// [`Error::InvalidName`] for a bad, repeated or missing name; [`Error::InvalidOption`];
    /// [`Error::Store`].
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> locksmith::Result<()> {
    /// use locksmith::{Locksmith, SetAction, SetPolicy};
    ///
    /// let lm = Locksmith::connect("memory://").await?;
    /// let _held = lm.lock("b").acquire().await?;
    /// let out = lm.set_locks(["a", "b"], SetPolicy::default()).await?;
    /// assert_eq!(out.statuses[0].action, SetAction::Created);
    /// assert_eq!(out.statuses[1].action, SetAction::Renewed);
    /// assert_eq!(out.created_tokens.len(), 1);
    /// # Ok(()) }
    /// ```
    pub async fn set_locks<I, S>(&self, names: I, policy: SetPolicy) -> Result<SetOutcome>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        policy.validate()?;
        let caps = self.capabilities();
        if policy.ttl.is_none() && !caps.never_expire {
            return Err(Error::Unsupported {
                store: self.store_kind(),
                operation: "no_expiry",
            });
        }
        let ttl = policy.ttl.map(|t| held::round_up(t, caps.ttl_granularity));
        let names: Vec<String> = names.into_iter().map(Into::into).collect();
        let names = wait::validate_names(&self.inner, &names)?;
        let owner = policy.owner.as_deref().map(Arc::from);
        let claims: Vec<_> = names
            .into_iter()
            .map(|name| store::Claim {
                name,
                token: Token::new(),
                owner: owner.clone().unwrap_or_else(|| self.inner.owner.clone()),
                host: self.inner.host.clone(),
                pid: self.inner.pid,
                ttl,
                min_hold: None,
                waited: std::time::Duration::ZERO,
                queue: false,
            })
            .collect();
        let policy = SetPolicy { ttl, ..policy };
        let calls = &self.inner.calls;
        calls
            .run(
                "set_locks",
                calls.store.set_locks(&self.inner.ns, &claims, &policy),
            )
            .await
    }

    /// How many acquirers in this process are queued for `name` on this store and
    /// namespace (zero when nobody waits).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidName`].
    pub fn local_waiters(&self, name: &str) -> Result<usize> {
        Ok(registry::queued(
            &self.inner.calls.identity,
            &self.inner.ns,
            &LockName::new(name)?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn urls() {
        assert!(Locksmith::connect("memory://").await.is_ok());
        let lm = Locksmith::connect("memory://x?namespace=a-b")
            .await
            .unwrap();
        assert_eq!(lm.namespace(), "a-b");
        for bad in [
            "memory",
            "nope://x",
            "memory://?namespace=a&namespace=b",
            "memory://?ns=a",
            "memory://?namespace=a%20b",
            "memory://?latency=fast",
            "postgres://x?table=Bad-Name",
            "sqlite:///nonexistent-dir-for-locksmith/x.db",
        ] {
            let err = Locksmith::connect(bad).await.unwrap_err();
            assert!(matches!(err, Error::Config { .. }), "{bad}: {err}");
        }
    }
}
