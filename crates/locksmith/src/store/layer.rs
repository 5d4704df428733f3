//! Wrapping a store: a [`Layer`] sees every call of the store it wraps and may delay, count,
//! fail or hold back its answer, without repeating the [`Store`] trait's delegation.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> locksmith::Result<()> {
//! use std::sync::atomic::{AtomicU64, Ordering};
//! use locksmith::store::{BoxFuture, Call, Layer, Layered};
//! use locksmith::{Locksmith, Namespace};
//!
//! /// Counts the calls that reach the store.
//! #[derive(Debug, Default)]
//! struct Count(AtomicU64);
//!
//! impl Layer for Count {
//!     fn around<'a, T: Send + 'a>(
//!         &'a self,
//!         _call: Call<'a>,
//!         answer: BoxFuture<'a, locksmith::Result<T>>,
//!     ) -> BoxFuture<'a, locksmith::Result<T>> {
//!         self.0.fetch_add(1, Ordering::Relaxed);
//!         answer
//!     }
//! }
//!
//! let plain = Locksmith::connect("memory://").await?;
//! let counted = Layered::new(plain.store(), Count::default());
//! let lm = Locksmith::with_store(counted.clone(), Namespace::default(), "memory://");
//! lm.lock("x").acquire().await?.release().await?;
//! assert_eq!(counted.layer().0.load(Ordering::Relaxed), 2);
//! # Ok(()) }
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::{
    Capabilities, Claim, ExtendMode, Extended, Grant, GrantAll, Released, Store, Successor, Wakeups,
};
use crate::error::Result;
use crate::info::LockInfo;
use crate::lease::Token;
use crate::name::{LockName, Namespace};
use crate::options::{ListQuery, Page, SetOutcome, SetPolicy};

/// A boxed, sendable future, as [`Layer::around`] takes and returns.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One call of a wrapped store, with its arguments, as a [`Layer`] sees it.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub enum Call<'a> {
    /// [`Store::try_acquire`].
    TryAcquire {
        /// The namespace.
        ns: &'a Namespace,
        /// The claim.
        claim: &'a Claim,
    },
    /// [`Store::try_acquire_all`].
    TryAcquireAll {
        /// The namespace.
        ns: &'a Namespace,
        /// The claims.
        claims: &'a [Claim],
    },
    /// [`Store::release`] (and, in [`Layer::release_detached`], [`Store::release_detached`]).
    Release {
        /// The namespace.
        ns: &'a Namespace,
        /// The lock.
        name: &'a LockName,
        /// The holder's token.
        token: &'a Token,
        /// How long after its grant the lock is kept at least.
        min_hold: Option<Duration>,
    },
    /// [`Store::extend`].
    Extend {
        /// The namespace.
        ns: &'a Namespace,
        /// The lock.
        name: &'a LockName,
        /// The holder's token.
        token: &'a Token,
        /// How the expiry moves.
        mode: ExtendMode,
    },
    /// [`Store::held_by`].
    HeldBy {
        /// The namespace.
        ns: &'a Namespace,
        /// The lock.
        name: &'a LockName,
    },
    /// [`Store::inspect`].
    Inspect {
        /// The namespace.
        ns: &'a Namespace,
        /// The lock.
        name: &'a LockName,
    },
    /// [`Store::list`].
    List {
        /// The namespace.
        ns: &'a Namespace,
        /// The page asked for.
        query: &'a ListQuery,
    },
    /// [`Store::force_release`].
    ForceRelease {
        /// The namespace.
        ns: &'a Namespace,
        /// The locks.
        names: &'a [LockName],
    },
    /// [`Store::reset_all`].
    ResetAll {
        /// The namespace.
        ns: &'a Namespace,
    },
    /// [`Store::purge_expired`].
    PurgeExpired {
        /// The namespace.
        ns: &'a Namespace,
    },
    /// [`Store::set_locks`].
    SetLocks {
        /// The namespace.
        ns: &'a Namespace,
        /// The claims.
        claims: &'a [Claim],
    },
    /// [`Store::subscribe`].
    Subscribe {
        /// The namespace.
        ns: &'a Namespace,
        /// The lock.
        name: &'a LockName,
    },
    /// [`Store::close`].
    Close,
}

impl Call<'_> {
    /// The [`Store`] method's name, e.g. `"try_acquire"`.
    pub fn method(&self) -> &'static str {
        match self {
            Call::TryAcquire { .. } => "try_acquire",
            Call::TryAcquireAll { .. } => "try_acquire_all",
            Call::Release { .. } => "release",
            Call::Extend { .. } => "extend",
            Call::HeldBy { .. } => "held_by",
            Call::Inspect { .. } => "inspect",
            Call::List { .. } => "list",
            Call::ForceRelease { .. } => "force_release",
            Call::ResetAll { .. } => "reset_all",
            Call::PurgeExpired { .. } => "purge_expired",
            Call::SetLocks { .. } => "set_locks",
            Call::Subscribe { .. } => "subscribe",
            Call::Close => "close",
        }
    }
}

/// What a [`Layered`] store does around the calls of the store it wraps. Every method has
/// a default that passes the call through, so a layer writes only what it changes.
pub trait Layer: fmt::Debug + Send + Sync + 'static {
    /// Runs one call: `answer` is the wrapped store's answer to `call`, not yet awaited
    /// (nothing reaches the store until it is polled). Return it as is, or a future that
    /// delays it, drops it (fails before applying), or awaits it and then fails (an
    /// unknown outcome).
    fn around<'a, T: Send + 'a>(
        &'a self,
        call: Call<'a>,
        answer: BoxFuture<'a, Result<T>>,
    ) -> BoxFuture<'a, Result<T>> {
        let _ = call;
        answer
    }

    /// A detached release (`call` is [`Call::Release`]); never blocks and needs no
    /// runtime, as [`Store::release_detached`]. The default passes it to `inner`.
    fn release_detached(&self, inner: &Arc<dyn Store>, call: Call<'_>) {
        if let Call::Release {
            ns,
            name,
            token,
            min_hold,
        } = call
        {
            inner.release_detached(ns, name, token, min_hold);
        }
    }

    /// The capabilities to report, given the wrapped store's.
    fn capabilities(&self, inner: Capabilities) -> Capabilities {
        inner
    }

    /// The identity to report, given the wrapped store's: keep it to share this process's
    /// waiting queues with plain handles of the same store.
    fn identity(&self, inner: String) -> String {
        inner
    }
}

/// A store that runs every call of `inner` through a [`Layer`]. It reports the wrapped
/// store's kind, and its capabilities and identity as the layer says.
#[derive(Debug)]
pub struct Layered<L> {
    inner: Arc<dyn Store>,
    layer: L,
}

impl<L: Layer> Layered<L> {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Store>, layer: L) -> Arc<Layered<L>> {
        Arc::new(Layered { inner, layer })
    }

    /// The layer.
    pub fn layer(&self) -> &L {
        &self.layer
    }

    /// The wrapped store.
    pub fn inner(&self) -> &Arc<dyn Store> {
        &self.inner
    }
}

#[async_trait]
impl<L: Layer> Store for Layered<L> {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    fn capabilities(&self) -> Capabilities {
        self.layer.capabilities(self.inner.capabilities())
    }

    fn identity(&self) -> String {
        self.layer.identity(self.inner.identity())
    }

    async fn try_acquire(&self, ns: &Namespace, claim: &Claim) -> Result<Grant> {
        let answer = self.inner.try_acquire(ns, claim);
        (self.layer)
            .around(Call::TryAcquire { ns, claim }, answer)
            .await
    }

    async fn try_acquire_all(&self, ns: &Namespace, claims: &[Claim]) -> Result<GrantAll> {
        let answer = self.inner.try_acquire_all(ns, claims);
        (self.layer)
            .around(Call::TryAcquireAll { ns, claims }, answer)
            .await
    }

    async fn release(
        &self,
        ns: &Namespace,
        name: &LockName,
        token: &Token,
        min_hold: Option<Duration>,
    ) -> Result<Released> {
        let answer = self.inner.release(ns, name, token, min_hold);
        let call = Call::Release {
            ns,
            name,
            token,
            min_hold,
        };
        self.layer.around(call, answer).await
    }

    /// Seen by the layer as the [`Call::Release`] it is.
    async fn release_to(
        &self,
        ns: &Namespace,
        name: &LockName,
        token: &Token,
        min_hold: Option<Duration>,
        next: &Claim,
    ) -> Result<(Released, Successor)> {
        let answer = self.inner.release_to(ns, name, token, min_hold, next);
        let call = Call::Release {
            ns,
            name,
            token,
            min_hold,
        };
        self.layer.around(call, answer).await
    }

    fn release_detached(
        &self,
        ns: &Namespace,
        name: &LockName,
        token: &Token,
        min_hold: Option<Duration>,
    ) {
        let call = Call::Release {
            ns,
            name,
            token,
            min_hold,
        };
        self.layer.release_detached(&self.inner, call);
    }

    async fn extend(
        &self,
        ns: &Namespace,
        name: &LockName,
        token: &Token,
        mode: ExtendMode,
    ) -> Result<Extended> {
        let answer = self.inner.extend(ns, name, token, mode);
        let call = Call::Extend {
            ns,
            name,
            token,
            mode,
        };
        self.layer.around(call, answer).await
    }

    async fn held_by(
        &self,
        ns: &Namespace,
        name: &LockName,
        token: &Token,
    ) -> Result<Option<LockInfo>> {
        let answer = self.inner.held_by(ns, name, token);
        self.layer.around(Call::HeldBy { ns, name }, answer).await
    }

    async fn inspect(&self, ns: &Namespace, name: &LockName) -> Result<Option<LockInfo>> {
        let answer = self.inner.inspect(ns, name);
        self.layer.around(Call::Inspect { ns, name }, answer).await
    }

    async fn list(&self, ns: &Namespace, query: &ListQuery) -> Result<Page> {
        let answer = self.inner.list(ns, query);
        self.layer.around(Call::List { ns, query }, answer).await
    }

    async fn force_release(&self, ns: &Namespace, names: &[LockName]) -> Result<Vec<bool>> {
        let answer = self.inner.force_release(ns, names);
        (self.layer)
            .around(Call::ForceRelease { ns, names }, answer)
            .await
    }

    async fn reset_all(&self, ns: &Namespace) -> Result<u64> {
        let answer = self.inner.reset_all(ns);
        self.layer.around(Call::ResetAll { ns }, answer).await
    }

    async fn purge_expired(&self, ns: &Namespace) -> Result<u64> {
        let answer = self.inner.purge_expired(ns);
        self.layer.around(Call::PurgeExpired { ns }, answer).await
    }

    async fn set_locks(
        &self,
        ns: &Namespace,
        claims: &[Claim],
        policy: &SetPolicy,
    ) -> Result<SetOutcome> {
        let answer = self.inner.set_locks(ns, claims, policy);
        self.layer
            .around(Call::SetLocks { ns, claims }, answer)
            .await
    }

    async fn subscribe(&self, ns: &Namespace, name: &LockName) -> Result<Wakeups> {
        let answer = self.inner.subscribe(ns, name);
        self.layer
            .around(Call::Subscribe { ns, name }, answer)
            .await
    }

    fn subscribes_at_once(&self, ns: &Namespace, name: &LockName) -> bool {
        self.inner.subscribes_at_once(ns, name)
    }

    async fn close(&self) -> Result<()> {
        self.layer.around(Call::Close, self.inner.close()).await
    }
}
