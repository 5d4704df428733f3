//! The process-wide registry of waiters: one first-come first-served queue per
//! `(store, namespace, name)`.
//!
//! Only the head of a queue talks to the store; the others wait for their turn. A ticket
//! leaves its queue when dropped — after a grant, an error or a cancellation — and if it was
//! the head, the next ticket becomes head and is woken, so a cancelled waiter passes its
//! wake-up on instead of swallowing it.
//!
//! Beside the queues, the locks this process's guards hold on stores with pushed grants
//! ([`hold`]): a head waiting for one of them offers its claim to the guard ([`offer`]),
//! whose release hands the lock over in the same store call ([`Store::release_to`]), so
//! tasks taking turns on a lock pay one round trip per turn instead of a try and a release.
//!
//! [`Store::release_to`]: crate::store::Store::release_to

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use tokio::sync::{Notify, oneshot};

use crate::lease::Token;
use crate::name::{LockName, Namespace};
use crate::store::{Claim, Store};

/// A queue's key: the store's identity (computed once per connection, see
/// [`Calls::identity`](crate::calls::Calls::identity)), the namespace and the name.
type Key = (Arc<str>, Namespace, LockName);

#[derive(Default)]
struct Slot {
    turn: Notify,
}

fn queues() -> &'static Mutex<HashMap<Key, VecDeque<Arc<Slot>>>> {
    static QUEUES: OnceLock<Mutex<HashMap<Key, VecDeque<Arc<Slot>>>>> = OnceLock::new();
    QUEUES.get_or_init(Default::default)
}

fn lock_queues() -> std::sync::MutexGuard<'static, HashMap<Key, VecDeque<Arc<Slot>>>> {
    // Queue operations never panic halfway, so a poisoned mutex still holds a valid map.
    queues().lock().unwrap_or_else(|e| e.into_inner())
}

/// A place in one name's queue.
pub(crate) struct Ticket {
    key: Key,
    slot: Arc<Slot>,
    /// Joined an empty queue: head from the start, until dropped (so `turn` need not look).
    first: bool,
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ticket").field("name", &self.key.2).finish()
    }
}

impl Ticket {
    /// Joins the end of the queue for `name` on the store whose identity is `store`.
    pub(crate) fn join(store: &Arc<str>, ns: &Namespace, name: &LockName) -> Ticket {
        let key = (store.clone(), ns.clone(), name.clone());
        let slot = Arc::new(Slot::default());
        let mut queues = lock_queues();
        let queue = queues.entry(key.clone()).or_default();
        let first = queue.is_empty();
        queue.push_back(slot.clone());
        drop(queues);
        Ticket { key, slot, first }
    }

    fn is_head(&self) -> bool {
        lock_queues()
            .get(&self.key)
            .and_then(|q| q.front())
            .is_some_and(|head| Arc::ptr_eq(head, &self.slot))
    }

    /// Resolves once this ticket is at the head of its queue.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: the ticket keeps its place until dropped.
    pub(crate) async fn turn(&self) {
        if self.first {
            return;
        }
        loop {
            let notified = self.slot.turn.notified();
            if self.is_head() {
                return;
            }
            notified.await;
        }
    }

    /// How many tickets are queued for this name (this one included).
    #[cfg(test)]
    fn queued(&self) -> usize {
        lock_queues().get(&self.key).map_or(0, VecDeque::len)
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut queues = lock_queues();
        let Some(queue) = queues.get_mut(&self.key) else {
            return;
        };
        let was_head = queue
            .front()
            .is_some_and(|head| Arc::ptr_eq(head, &self.slot));
        queue.retain(|s| !Arc::ptr_eq(s, &self.slot));
        match queue.front() {
            None => {
                queues.remove(&self.key);
            }
            Some(next) if was_head => next.turn.notify_one(),
            Some(_) => {}
        }
    }
}

/// How many acquirers in this process are queued for `name` on `store`.
pub(crate) fn queued(store: &Arc<str>, ns: &Namespace, name: &LockName) -> usize {
    let key = (store.clone(), ns.clone(), name.clone());
    lock_queues().get(&key).map_or(0, VecDeque::len)
}

/// What a releasing guard tells the claim it offered the lock to (see [`offer`]).
#[derive(Debug)]
pub(crate) enum Handover {
    /// The claim holds the lock: its lease started no earlier than `sent`, when the release
    /// that granted it was sent.
    Granted { fence: u64, sent: Instant },
    /// A waiter queued in the store holds the lock (with `holder_fence`), and the claim is
    /// queued behind it as by a try sent at `sent`.
    Queued { holder_fence: u64, sent: Instant },
    /// Nothing was done for the claim: it tries for itself.
    Retry,
}

/// A claim offered to a guard of this process, and where its answer goes. Dropping it
/// unanswered (a release that failed or was cancelled) tells the waiter the outcome is
/// unknown.
pub(crate) struct Offer {
    pub(crate) claim: Claim,
    pub(crate) answer: oneshot::Sender<Handover>,
}

/// A lock a guard of this process holds, and the claim offered to it, if any.
struct Hold {
    token: Token,
    /// When the lease ends unless renewed (`None`: never): the grant's, then each confirmed
    /// renewal's or extend's ([`renewed`]).
    lease_end: Option<Instant>,
    offer: Option<Offer>,
}

/// A hold's key: the store *handle* (its address: the hand-over goes through this handle's
/// wake-up connection, so two handles on one store do not share holds), the namespace and
/// the name.
type HoldKey = (usize, Namespace, LockName);

fn hold_key(store: &Arc<dyn Store>, ns: &Namespace, name: &LockName) -> HoldKey {
    (
        Arc::as_ptr(store).cast::<()>() as usize,
        ns.clone(),
        name.clone(),
    )
}

fn holds() -> std::sync::MutexGuard<'static, HashMap<HoldKey, Hold>> {
    static HOLDS: OnceLock<Mutex<HashMap<HoldKey, Hold>>> = OnceLock::new();
    HOLDS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

/// Records that `token` holds `name` through a guard of this process on the `store` handle, which will
/// hand the lock to a waiting claim of this process when it releases it. `lease_end`: when
/// the grant's lease ends unless renewed.
pub(crate) fn hold(
    store: &Arc<dyn Store>,
    ns: &Namespace,
    name: &LockName,
    token: &Token,
    lease_end: Option<Instant>,
) {
    let key = hold_key(store, ns, name);
    // A guard that still holds an older token of this name lost its lease; its waiter (if
    // any) learns that the outcome is unknown, and tries.
    holds().insert(
        key,
        Hold {
            token: token.clone(),
            lease_end,
            offer: None,
        },
    );
}

/// Forgets `token`'s hold on `name` (its guard releases it, or is dropped or leaked) and
/// returns the claim offered to it, if any.
pub(crate) fn unhold(
    store: &Arc<dyn Store>,
    ns: &Namespace,
    name: &LockName,
    token: &Token,
) -> Option<Offer> {
    let key = hold_key(store, ns, name);
    let mut holds = holds();
    if holds.get(&key).is_none_or(|h| h.token != *token) {
        return None;
    }
    holds.remove(&key).and_then(|h| h.offer)
}

/// Moves the lease end recorded for `token`'s hold on `name` (a renewal or an extend
/// confirmed a new one; `None`: never expires), so a waiter offering its claim later waits
/// for the release instead of giving up at the grant's first lease end.
pub(crate) fn renewed(
    store: &Arc<dyn Store>,
    ns: &Namespace,
    name: &LockName,
    token: &Token,
    lease_end: Option<Instant>,
) {
    let key = hold_key(store, ns, name);
    if let Some(hold) = holds().get_mut(&key)
        && hold.token == *token
    {
        hold.lease_end = lease_end;
    }
}

/// Offers `claim` to the guard of this process that holds `name` through `store` with another
/// token: its release hands the lock to the claim in the same step. Returns where the
/// answer comes and when the holder's lease ends unless renewed (`None`: never); `None`
/// when no guard here holds the lock, or another claim is offered already.
pub(crate) fn offer(
    store: &Arc<dyn Store>,
    ns: &Namespace,
    name: &LockName,
    claim: &Claim,
) -> Option<(oneshot::Receiver<Handover>, Option<Instant>)> {
    let key = hold_key(store, ns, name);
    let mut holds = holds();
    let hold = holds.get_mut(&key)?;
    if hold.token == claim.token || hold.offer.is_some() {
        return None;
    }
    let (answer, rx) = oneshot::channel();
    hold.offer = Some(Offer {
        claim: claim.clone(),
        answer,
    });
    Some((rx, hold.lease_end))
}

/// Takes back the offer of `token`'s claim on `name`. `false` when it was taken already: a
/// release is handing the lock over, and will answer.
pub(crate) fn withdraw(
    store: &Arc<dyn Store>,
    ns: &Namespace,
    name: &LockName,
    token: &Token,
) -> bool {
    let key = hold_key(store, ns, name);
    let mut holds = holds();
    match holds.get_mut(&key) {
        Some(hold) if hold.offer.as_ref().is_some_and(|o| o.claim.token == *token) => {
            hold.offer = None;
            true
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;
    use crate::store::memory::MemoryStore;
    use std::time::Duration;

    #[tokio::test]
    async fn fifo_and_hand_over() {
        let store: Arc<dyn Store> = MemoryStore::new();
        let store: Arc<str> = store.identity().into();
        let ns = Namespace::default();
        let name = LockName::new("q").unwrap();
        let a = Ticket::join(&store, &ns, &name);
        let b = Ticket::join(&store, &ns, &name);
        let c = Ticket::join(&store, &ns, &name);
        assert_eq!(a.queued(), 3);
        a.turn().await;
        assert!(
            tokio::time::timeout(Duration::from_millis(20), b.turn())
                .await
                .is_err()
        );
        // a cancelled middle ticket does not disturb the order
        drop(b);
        drop(a);
        tokio::time::timeout(Duration::from_secs(1), c.turn())
            .await
            .unwrap();
        drop(c);
        assert_eq!(lock_queues().keys().filter(|k| k.0 == store).count(), 0);
    }
}
