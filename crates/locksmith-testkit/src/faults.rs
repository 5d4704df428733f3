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
use std::sync::{Arc, Mutex};
use std::time::Duration;

use locksmith::store::{BoxFuture, Call, Capabilities, Claim, Layer, Layered, Store};
use locksmith::{Error, Result};

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
    in_flight: HashMap<Op, u64>,
    declared: Option<Capabilities>,
    ttls: Vec<Option<Duration>>,
    waits: Vec<Duration>,
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

    /// How long each claim `try_acquire` / `try_acquire_all` received had already waited
    /// ([`Claim::waited`]), in order.
    pub fn waits_seen(&self) -> Vec<Duration> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .waits
            .clone()
    }

    fn saw(&self, claims: &[Claim]) {
        let mut state = self.0.lock().unwrap_or_else(|e| e.into_inner());
        state.ttls.extend(claims.iter().map(|c| c.ttl));
        state.waits.extend(claims.iter().map(|c| c.waited));
    }

    /// How many times operations of `op` were called (whatever their fate).
    pub fn calls(&self, op: Op) -> u64 {
        let state = self.0.lock().unwrap_or_else(|e| e.into_inner());
        state.calls.get(&op).copied().unwrap_or(0)
    }

    /// How many calls of `op` have started and not yet answered (nor been dropped). A
    /// cancelled caller's call finishes in the background, so a test waits for this to be 0
    /// before it judges what the call left in the store.
    pub fn in_flight(&self, op: Op) -> u64 {
        let state = self.0.lock().unwrap_or_else(|e| e.into_inner());
        state.in_flight.get(&op).copied().unwrap_or(0)
    }

    fn enter(&self, op: Op) -> FaultMode {
        let mut state = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *state.calls.entry(op).or_default() += 1;
        state.modes.get(&op).copied().unwrap_or_default()
    }

    /// Counts a call of `op` in flight until the returned guard drops.
    fn flying(&self, op: Op) -> Flying {
        let mut state = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *state.in_flight.entry(op).or_default() += 1;
        Flying {
            faults: self.clone(),
            op,
        }
    }
}

/// One call in flight, counted in [`Faults::in_flight`] until dropped.
struct Flying {
    faults: Faults,
    op: Op,
}

impl Drop for Flying {
    fn drop(&mut self) {
        let mut state = self.faults.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = state.in_flight.get_mut(&self.op) {
            *n = n.saturating_sub(1);
        }
    }
}

/// A store [`Layer`] that injects the faults its [`Faults`] switchboard says. The wrapped
/// store keeps its kind and identity, so its clients share this process's waiting queue
/// with plain clients of the same store.
pub struct Faulty {
    kind: &'static str,
    faults: Faults,
    /// Delayed detached releases still under way, finished by `close`.
    detached: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl fmt::Debug for Faulty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Faulty")
            .field("kind", &self.kind)
            .field("faults", &self.faults)
            .finish()
    }
}

impl Faulty {
    /// Wraps `inner`; every operation passes through until the returned switchboard says
    /// otherwise.
    pub fn wrap(inner: Arc<dyn Store>) -> (Arc<dyn Store>, Faults) {
        let faults = Faults::default();
        let layer = Faulty {
            kind: inner.kind(),
            faults: faults.clone(),
            detached: Mutex::default(),
        };
        (Layered::new(inner, layer), faults)
    }

    fn injected(&self, op: Op, what: &str) -> Error {
        Error::store(self.kind, true, format!("injected fault: {op:?} {what}"))
    }
}

/// The operation group of a call.
fn op_of(call: &Call<'_>) -> Option<Op> {
    Some(match call {
        Call::TryAcquire { .. } | Call::TryAcquireAll { .. } => Op::TryAcquire,
        Call::Release { .. } => Op::Release,
        Call::Extend { .. } => Op::Extend,
        Call::HeldBy { .. } => Op::HeldBy,
        Call::Inspect { .. } | Call::List { .. } => Op::Inspect,
        Call::ForceRelease { .. }
        | Call::ResetAll { .. }
        | Call::PurgeExpired { .. }
        | Call::SetLocks { .. } => Op::Admin,
        Call::Subscribe { .. } => Op::Subscribe,
        _ => return None,
    })
}

impl Layer for Faulty {
    fn around<'a, T: Send + 'a>(
        &'a self,
        call: Call<'a>,
        answer: BoxFuture<'a, Result<T>>,
    ) -> BoxFuture<'a, Result<T>> {
        match call {
            Call::TryAcquire { claim, .. } => self.faults.saw(std::slice::from_ref(claim)),
            Call::TryAcquireAll { claims, .. } => self.faults.saw(claims),
            Call::Close => {
                return Box::pin(async move {
                    let tasks = std::mem::take(
                        &mut *self.detached.lock().unwrap_or_else(|e| e.into_inner()),
                    );
                    for task in tasks {
                        let _ = task.await;
                    }
                    answer.await
                });
            }
            _ => {}
        }
        let Some(op) = op_of(&call) else {
            return answer;
        };
        let mode = self.faults.enter(op);
        let flying = self.faults.flying(op);
        Box::pin(async move {
            let _flying = flying;
            match mode {
                FaultMode::Pass => answer.await,
                FaultMode::FailBefore => Err(self.injected(op, "failed before applying")),
                FaultMode::ApplyThenFail => {
                    let _applied = answer.await;
                    Err(self.injected(op, "applied, then the answer was lost"))
                }
                FaultMode::Hang(d) => {
                    tokio::time::sleep(d).await;
                    Err(self.injected(op, "hung"))
                }
                FaultMode::Delay(d) => {
                    tokio::time::sleep(d).await;
                    answer.await
                }
                FaultMode::ApplyThenDelay(d) => {
                    let answer = answer.await;
                    tokio::time::sleep(d).await;
                    answer
                }
            }
        })
    }

    fn release_detached(&self, inner: &Arc<dyn Store>, call: Call<'_>) {
        let Call::Release {
            ns,
            name,
            token,
            min_hold,
        } = call
        else {
            return;
        };
        match self.faults.enter(Op::Release) {
            FaultMode::Pass | FaultMode::ApplyThenFail | FaultMode::ApplyThenDelay(_) => {
                inner.release_detached(ns, name, token, min_hold)
            }
            FaultMode::FailBefore | FaultMode::Hang(_) => {}
            FaultMode::Delay(d) => match tokio::runtime::Handle::try_current() {
                Ok(rt) => {
                    let (inner, ns, name, token) =
                        (inner.clone(), ns.clone(), name.clone(), token.clone());
                    let task = rt.spawn(async move {
                        tokio::time::sleep(d).await;
                        inner.release_detached(&ns, &name, &token, min_hold);
                    });
                    let mut detached = self.detached.lock().unwrap_or_else(|e| e.into_inner());
                    detached.retain(|t| !t.is_finished());
                    detached.push(task);
                }
                Err(_) => inner.release_detached(ns, name, token, min_hold),
            },
        }
    }

    fn capabilities(&self, inner: Capabilities) -> Capabilities {
        let declared = self
            .faults
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .declared;
        declared.unwrap_or(inner)
    }
}
