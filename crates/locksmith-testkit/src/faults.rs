//! Fault injection for the conformance suite: [`Faulty`] wraps any store and makes chosen
//! operations fail before applying, apply and then fail (the caller sees an error although
//! the store changed state — the *unknown outcome* of a networked store), hang, or answer
//! late.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use locksmith::{Locksmith, Namespace};
//! use locksmith_testkit::{FaultMode, Faulty, Op};
//!
//! let plain = Locksmith::connect("memory://").await.unwrap();
//! let (store, faults) = Faulty::wrap(plain.store());
//! let lm = Locksmith::with_store(store, Namespace::default(), "memory://");
//! faults.set(&[Op::TryAcquire], FaultMode::ApplyThenFail);
//! assert!(lm.lock("x").try_acquire().await.is_err());
//! faults.clear();
//! # }
//! ```

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use locksmith::store::{
    Capabilities, Claim, ExtendMode, Extended, Grant, GrantAll, Released, Store, Wakeups,
};
use locksmith::{Error, ListQuery, LockInfo, LockName, Namespace, Page, Result, SetOutcome};
use locksmith::{SetPolicy, Token};

/// A group of store operations a fault applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// `try_acquire` and `try_acquire_all`.
    TryAcquire,
    /// `release` and `release_detached`.
    Release,
    /// `extend`.
    Extend,
    /// `held_by`.
    HeldBy,
    /// `inspect` and `list`.
    Inspect,
    /// `force_release`, `reset_all`, `purge_expired`, `set_locks`.
    Admin,
    /// `subscribe`.
    Subscribe,
}

impl Op {
    /// Every operation group.
    pub const ALL: [Op; 7] = [
        Op::TryAcquire,
        Op::Release,
        Op::Extend,
        Op::HeldBy,
        Op::Inspect,
        Op::Admin,
        Op::Subscribe,
    ];
}

/// What a faulty operation does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FaultMode {
    /// Passes the call through.
    #[default]
    Pass,
    /// Fails with a retryable store error without touching the store.
    FailBefore,
    /// Lets the store apply the call, then fails with a retryable store error (the answer
    /// was lost on the way back). A detached release is applied.
    ApplyThenFail,
    /// Never answers within this long: sleeps for it, then fails without applying. A
    /// detached release is dropped.
    Hang(Duration),
    /// Sleeps this long, then passes the call through (a slow request).
    Delay(Duration),
    /// Passes the call through at once, then holds its answer back this long (a slow
    /// answer: the store changed state long before the caller hears of it).
    ApplyThenDelay(Duration),
}

#[derive(Default)]
struct State {
    modes: HashMap<Op, FaultMode>,
    calls: HashMap<Op, u64>,
    declared: Option<Capabilities>,
    ttls: Vec<Option<Duration>>,
}

/// The switchboard of one [`Faulty`] store: which operations fail how, and how often each
/// was called. Clones share the switchboard.
#[derive(Clone, Default)]
pub struct Faults(Arc<Mutex<State>>);

impl fmt::Debug for Faults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.0.lock().unwrap_or_else(|e| e.into_inner());
        f.debug_struct("Faults")
            .field("modes", &state.modes)
            .field("calls", &state.calls)
            .finish()
    }
}

impl Faults {
    /// Makes `ops` behave as `mode` from now on.
    pub fn set(&self, ops: &[Op], mode: FaultMode) {
        let mut state = self.0.lock().unwrap_or_else(|e| e.into_inner());
        for op in ops {
            state.modes.insert(*op, mode);
        }
    }

    /// Makes every operation behave as `mode`.
    pub fn set_all(&self, mode: FaultMode) {
        self.set(&Op::ALL, mode);
    }

    /// Passes every operation through again.
    pub fn clear(&self) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .modes
            .clear();
    }

    /// Makes the wrapper report `caps` instead of the wrapped store's capabilities (to
    /// check that the core honours what a store declares it cannot do).
    pub fn declare(&self, caps: Capabilities) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).declared = Some(caps);
    }

    /// The TTL of every claim `try_acquire` / `try_acquire_all` received so far, in order.
    pub fn ttls_seen(&self) -> Vec<Option<Duration>> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .ttls
            .clone()
    }

    fn saw(&self, claims: &[Claim]) {
        let mut state = self.0.lock().unwrap_or_else(|e| e.into_inner());
        state.ttls.extend(claims.iter().map(|c| c.ttl));
    }

    /// How many times operations of `op` were called (whatever their fate).
    pub fn calls(&self, op: Op) -> u64 {
        let state = self.0.lock().unwrap_or_else(|e| e.into_inner());
        state.calls.get(&op).copied().unwrap_or(0)
    }

    fn enter(&self, op: Op) -> FaultMode {
        let mut state = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *state.calls.entry(op).or_default() += 1;
        state.modes.get(&op).copied().unwrap_or_default()
    }
}

/// A store wrapper that injects the faults its [`Faults`] switchboard says. It reports the
/// wrapped store's kind, capabilities and identity, so its clients share this process's
/// waiting queue with plain clients of the same store.
pub struct Faulty {
    inner: Arc<dyn Store>,
    faults: Faults,
    /// Delayed detached releases still under way, finished by `close`.
    detached: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl fmt::Debug for Faulty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Faulty")
            .field("inner", &self.inner)
            .field("faults", &self.faults)
            .finish()
    }
}

impl Faulty {
    /// Wraps `inner`; every operation passes through until the returned switchboard says
    /// otherwise.
    pub fn wrap(inner: Arc<dyn Store>) -> (Arc<dyn Store>, Faults) {
        let faults = Faults::default();
        let store = Faulty {
            inner,
            faults: faults.clone(),
            detached: Mutex::default(),
        };
        (Arc::new(store), faults)
    }

    fn injected(&self, op: Op, what: &str) -> Error {
        Error::store(
            self.inner.kind(),
            true,
            format!("injected fault: {op:?} {what}"),
        )
    }

    async fn call<T, F>(&self, op: Op, f: F) -> Result<T>
    where
        F: Future<Output = Result<T>> + Send,
    {
        match self.faults.enter(op) {
            FaultMode::Pass => f.await,
            FaultMode::FailBefore => Err(self.injected(op, "failed before applying")),
            FaultMode::ApplyThenFail => {
                let _applied = f.await;
                Err(self.injected(op, "applied, then the answer was lost"))
            }
            FaultMode::Hang(d) => {
                tokio::time::sleep(d).await;
                Err(self.injected(op, "hung"))
            }
            FaultMode::Delay(d) => {
                tokio::time::sleep(d).await;
                f.await
            }
            FaultMode::ApplyThenDelay(d) => {
                let answer = f.await;
                tokio::time::sleep(d).await;
                answer
            }
        }
    }
}

#[async_trait]
impl Store for Faulty {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    fn capabilities(&self) -> Capabilities {
        let declared = self
            .faults
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .declared;
        declared.unwrap_or_else(|| self.inner.capabilities())
    }

    fn identity(&self) -> String {
        self.inner.identity()
    }

    async fn try_acquire(&self, ns: &Namespace, claim: &Claim) -> Result<Grant> {
        self.faults.saw(std::slice::from_ref(claim));
        self.call(Op::TryAcquire, self.inner.try_acquire(ns, claim))
            .await
    }

    async fn try_acquire_all(&self, ns: &Namespace, claims: &[Claim]) -> Result<GrantAll> {
        self.faults.saw(claims);
        self.call(Op::TryAcquire, self.inner.try_acquire_all(ns, claims))
            .await
    }

    async fn release(
        &self,
        ns: &Namespace,
        name: &LockName,
        token: &Token,
        min_hold: Option<Duration>,
    ) -> Result<Released> {
        self.call(Op::Release, self.inner.release(ns, name, token, min_hold))
            .await
    }

    fn release_detached(
        &self,
        ns: &Namespace,
        name: &LockName,
        token: &Token,
        min_hold: Option<Duration>,
    ) {
        match self.faults.enter(Op::Release) {
            FaultMode::Pass | FaultMode::ApplyThenFail | FaultMode::ApplyThenDelay(_) => {
                self.inner.release_detached(ns, name, token, min_hold)
            }
            FaultMode::FailBefore | FaultMode::Hang(_) => {}
            FaultMode::Delay(d) => match tokio::runtime::Handle::try_current() {
                Ok(rt) => {
                    let (inner, ns, name, token) =
                        (self.inner.clone(), ns.clone(), name.clone(), token.clone());
                    let task = rt.spawn(async move {
                        tokio::time::sleep(d).await;
                        inner.release_detached(&ns, &name, &token, min_hold);
                    });
                    let mut detached = self.detached.lock().unwrap_or_else(|e| e.into_inner());
                    detached.retain(|t| !t.is_finished());
                    detached.push(task);
                }
                Err(_) => self.inner.release_detached(ns, name, token, min_hold),
            },
        }
    }

    async fn extend(
        &self,
        ns: &Namespace,
        name: &LockName,
        token: &Token,
        mode: ExtendMode,
    ) -> Result<Extended> {
        self.call(Op::Extend, self.inner.extend(ns, name, token, mode))
            .await
    }

    async fn held_by(
        &self,
        ns: &Namespace,
        name: &LockName,
        token: &Token,
    ) -> Result<Option<LockInfo>> {
        self.call(Op::HeldBy, self.inner.held_by(ns, name, token))
            .await
    }

    async fn inspect(&self, ns: &Namespace, name: &LockName) -> Result<Option<LockInfo>> {
        self.call(Op::Inspect, self.inner.inspect(ns, name)).await
    }

    async fn list(&self, ns: &Namespace, query: &ListQuery) -> Result<Page> {
        self.call(Op::Inspect, self.inner.list(ns, query)).await
    }

    async fn force_release(&self, ns: &Namespace, names: &[LockName]) -> Result<Vec<bool>> {
        self.call(Op::Admin, self.inner.force_release(ns, names))
            .await
    }

    async fn reset_all(&self, ns: &Namespace) -> Result<u64> {
        self.call(Op::Admin, self.inner.reset_all(ns)).await
    }

    async fn purge_expired(&self, ns: &Namespace) -> Result<u64> {
        self.call(Op::Admin, self.inner.purge_expired(ns)).await
    }

    async fn set_locks(
        &self,
        ns: &Namespace,
        claims: &[Claim],
        policy: &SetPolicy,
    ) -> Result<SetOutcome> {
        self.call(Op::Admin, self.inner.set_locks(ns, claims, policy))
            .await
    }

    async fn subscribe(&self, ns: &Namespace, name: &LockName) -> Result<Wakeups> {
        self.call(Op::Subscribe, self.inner.subscribe(ns, name))
            .await
    }

    async fn close(&self) -> Result<()> {
        let tasks = std::mem::take(&mut *self.detached.lock().unwrap_or_else(|e| e.into_inner()));
        for task in tasks {
            let _ = task.await;
        }
        self.inner.close().await
    }
}
