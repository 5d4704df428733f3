//! The process-wide registry of waiters: one first-come first-served queue per
//! `(store, namespace, name)`.
//!
//! Only the head of a queue talks to the store; the others wait for their turn. A ticket
//! leaves its queue when dropped — after a grant, an error or a cancellation — and if it was
//! the head, the next ticket becomes head and is woken, so a cancelled waiter passes its
//! wake-up on instead of swallowing it.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};

use tokio::sync::Notify;

use crate::name::{LockName, Namespace};

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
