//! A [`Store`] that forwards every call to another and counts them: store commands per
//! handoff.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use locksmith::store::{
    Capabilities, Claim, ExtendMode, Extended, Grant, GrantAll, Released, Store, Wakeups,
};
use locksmith::{
    ListQuery, LockInfo, LockName, Namespace, Page, Result, SetOutcome, SetPolicy, Token,
};

/// Counts the calls made to `inner`.
#[derive(Debug)]
pub(crate) struct Counting {
    inner: Arc<dyn Store>,
    calls: Arc<AtomicU64>,
}

impl Counting {
    pub(crate) fn new(inner: Arc<dyn Store>) -> (Counting, Arc<AtomicU64>) {
        let calls = Arc::new(AtomicU64::new(0));
        (
            Counting {
                inner,
                calls: calls.clone(),
            },
            calls,
        )
    }

    fn count(&self) {
        self.calls.fetch_add(1, Ordering::Relaxed);
    }
}

#[async_trait]
impl Store for Counting {
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
        self.count();
        self.inner.try_acquire(ns, claim).await
    }

    async fn try_acquire_all(&self, ns: &Namespace, claims: &[Claim]) -> Result<GrantAll> {
        self.count();
        self.inner.try_acquire_all(ns, claims).await
    }

    async fn release(
        &self,
        ns: &Namespace,
        name: &LockName,
        token: &Token,
        min_hold: Option<Duration>,
    ) -> Result<Released> {
        self.count();
        self.inner.release(ns, name, token, min_hold).await
    }

    fn release_detached(
        &self,
        ns: &Namespace,
        name: &LockName,
        token: &Token,
        min_hold: Option<Duration>,
    ) {
        self.count();
        self.inner.release_detached(ns, name, token, min_hold);
    }

    async fn extend(
        &self,
        ns: &Namespace,
        name: &LockName,
        token: &Token,
        mode: ExtendMode,
    ) -> Result<Extended> {
        self.count();
        self.inner.extend(ns, name, token, mode).await
    }

    async fn held_by(
        &self,
        ns: &Namespace,
        name: &LockName,
        token: &Token,
    ) -> Result<Option<LockInfo>> {
        self.count();
        self.inner.held_by(ns, name, token).await
    }

    async fn inspect(&self, ns: &Namespace, name: &LockName) -> Result<Option<LockInfo>> {
        self.count();
        self.inner.inspect(ns, name).await
    }

    async fn list(&self, ns: &Namespace, query: &ListQuery) -> Result<Page> {
        self.count();
        self.inner.list(ns, query).await
    }

    async fn force_release(&self, ns: &Namespace, names: &[LockName]) -> Result<Vec<bool>> {
        self.count();
        self.inner.force_release(ns, names).await
    }

    async fn reset_all(&self, ns: &Namespace) -> Result<u64> {
        self.count();
        self.inner.reset_all(ns).await
    }

    async fn purge_expired(&self, ns: &Namespace) -> Result<u64> {
        self.count();
        self.inner.purge_expired(ns).await
    }

    async fn set_locks(
        &self,
        ns: &Namespace,
        claims: &[Claim],
        policy: &SetPolicy,
    ) -> Result<SetOutcome> {
        self.count();
        self.inner.set_locks(ns, claims, policy).await
    }

    async fn subscribe(&self, ns: &Namespace, name: &LockName) -> Result<Wakeups> {
        self.count();
        self.inner.subscribe(ns, name).await
    }

    async fn close(&self) -> Result<()> {
        self.inner.close().await
    }
}
