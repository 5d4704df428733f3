//! Deliberately broken stores that prove the suite's teeth: each must FAIL the cases that
//! hold a store to the contract it breaks (`tests/teeth.rs` asserts that they do). They are
//! test-only targets, never conformance targets.
//!
//! - [`NonAtomic`]: a grant done as *look, then write* (GET, a round trip, SET) on a shared
//!   in-process memory store, as a careless networked store would: two clients that look at
//!   the same moment both see the lock free and both "win".
//! - [`IgnoresMinHold`]: forgets `min_hold` on release, freeing the lock at once.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use locksmith::store::{
    Capabilities, Claim, ExtendMode, Extended, Grant, Released, Store, Wakeups,
};
use locksmith::{ListQuery, LockInfo, LockName, Locksmith, Namespace, Page, Result, SetOutcome};
use locksmith::{SetPolicy, Token};

use crate::{BoxFuture, Target};

/// The delegation every broken store shares, so each overrides only what it breaks.
macro_rules! broken_store {
    ($ty:ty, { $($own:tt)* }) => {
    #[async_trait]
    impl Store for $ty {
        $($own)*

        fn kind(&self) -> &'static str {
            self.inner.kind()
        }

        fn capabilities(&self) -> Capabilities {
            self.inner.capabilities()
        }

        fn identity(&self) -> String {
            format!("{}+{}", std::any::type_name::<Self>(), self.inner.identity())
        }

        async fn extend(
            &self,
            ns: &Namespace,
            name: &LockName,
            token: &Token,
            mode: ExtendMode,
        ) -> Result<Extended> {
            self.inner.extend(ns, name, token, mode).await
        }

        async fn held_by(
            &self,
            ns: &Namespace,
            name: &LockName,
            token: &Token,
        ) -> Result<Option<LockInfo>> {
            self.inner.held_by(ns, name, token).await
        }

        async fn inspect(&self, ns: &Namespace, name: &LockName) -> Result<Option<LockInfo>> {
            self.inner.inspect(ns, name).await
        }

        async fn list(&self, ns: &Namespace, query: &ListQuery) -> Result<Page> {
            self.inner.list(ns, query).await
        }

        async fn force_release(&self, ns: &Namespace, names: &[LockName]) -> Result<Vec<bool>> {
            self.inner.force_release(ns, names).await
        }

        async fn reset_all(&self, ns: &Namespace) -> Result<u64> {
            self.inner.reset_all(ns).await
        }

        async fn purge_expired(&self, ns: &Namespace) -> Result<u64> {
            self.inner.purge_expired(ns).await
        }

        async fn set_locks(
            &self,
            ns: &Namespace,
            claims: &[Claim],
            policy: &SetPolicy,
        ) -> Result<SetOutcome> {
            self.inner.set_locks(ns, claims, policy).await
        }

        async fn subscribe(&self, ns: &Namespace, name: &LockName) -> Result<Wakeups> {
            self.inner.subscribe(ns, name).await
        }
    }
    };
}

/// A store whose grant is *look, then write*: it inspects the lock, waits one simulated
/// round trip, then overwrites whatever is there. Not atomic — the suite must catch it.
pub struct NonAtomic {
    inner: Arc<dyn Store>,
}

impl fmt::Debug for NonAtomic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NonAtomic").finish_non_exhaustive()
    }
}

broken_store!(NonAtomic, {
    async fn try_acquire(&self, ns: &Namespace, claim: &Claim) -> Result<Grant> {
        // GET
        if let Some(info) = self.inner.inspect(ns, &claim.name).await?
            && !info.expired
        {
            if self
                .inner
                .held_by(ns, &claim.name, &claim.token)
                .await?
                .is_some()
            {
                return Ok(Grant::AlreadyHeld);
            }
            return Ok(Grant::Held(info));
        }
        // … the round trip in which another client may look too …
        tokio::time::sleep(Duration::from_millis(1)).await;
        // SET: overwrite whatever is there now
        self.inner
            .force_release(ns, std::slice::from_ref(&claim.name))
            .await?;
        self.inner.try_acquire(ns, claim).await
    }

    async fn release(
        &self,
        ns: &Namespace,
        name: &LockName,
        token: &Token,
        min_hold: Option<Duration>,
    ) -> Result<Released> {
        self.inner.release(ns, name, token, min_hold).await
    }

    fn release_detached(
        &self,
        ns: &Namespace,
        name: &LockName,
        token: &Token,
        min_hold: Option<Duration>,
    ) {
        self.inner.release_detached(ns, name, token, min_hold)
    }
});

/// A store that drops `min_hold` on release: the lock is freed at once. The suite must
/// catch it.
pub struct IgnoresMinHold {
    inner: Arc<dyn Store>,
}

impl fmt::Debug for IgnoresMinHold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IgnoresMinHold").finish_non_exhaustive()
    }
}

broken_store!(IgnoresMinHold, {
    async fn try_acquire(&self, ns: &Namespace, claim: &Claim) -> Result<Grant> {
        self.inner.try_acquire(ns, claim).await
    }

    async fn release(
        &self,
        ns: &Namespace,
        name: &LockName,
        token: &Token,
        _min_hold: Option<Duration>,
    ) -> Result<Released> {
        self.inner.release(ns, name, token, None).await
    }

    fn release_detached(
        &self,
        ns: &Namespace,
        name: &LockName,
        token: &Token,
        _min_hold: Option<Duration>,
    ) {
        self.inner.release_detached(ns, name, token, None)
    }
});

/// A target whose clients reach a fresh named memory store through `wrap`.
fn wrapped(store: &'static str, wrap: fn(Arc<dyn Store>) -> Arc<dyn Store>) -> Option<Target> {
    let name = format!("teeth-{}", uuid::Uuid::new_v4().simple());
    let base_url = format!("memory://{name}");
    let mut target = Target::new(
        store,
        base_url.clone(),
        crate::targets::memory_capabilities(),
    );
    target.connector = Some(Arc::new(move |ns: String| -> BoxFuture<Locksmith> {
        let url = format!("{base_url}?namespace={ns}");
        Box::pin(async move {
            let plain = Locksmith::connect(&url)
                .await
                .unwrap_or_else(|e| panic!("connect {url}: {e}"));
            let ns = Namespace::new(&ns).expect("namespace");
            Locksmith::with_store(wrap(plain.store()), ns, &url)
        })
    }));
    Some(target)
}

/// The [`NonAtomic`] store as a test-only target.
pub async fn non_atomic() -> Option<Target> {
    wrapped("non_atomic", |inner| Arc::new(NonAtomic { inner }))
}

/// The [`IgnoresMinHold`] store as a test-only target.
pub async fn ignores_min_hold() -> Option<Target> {
    wrapped("ignores_min_hold", |inner| {
        Arc::new(IgnoresMinHold { inner })
    })
}
