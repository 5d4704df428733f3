//! A store [`Layer`] that counts the calls reaching the store it wraps: store commands per
//! handoff.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use locksmith::Result;
use locksmith::store::{BoxFuture, Call, Layer, Layered, Store};

/// Counts the calls made to the wrapped store, detached releases included (`close` is not
/// a command).
#[derive(Debug)]
pub(crate) struct Counting {
    calls: Arc<AtomicU64>,
}

impl Counting {
    pub(crate) fn new(inner: Arc<dyn Store>) -> (Arc<Layered<Counting>>, Arc<AtomicU64>) {
        let calls = Arc::new(AtomicU64::new(0));
        let layer = Counting {
            calls: calls.clone(),
        };
        (Layered::new(inner, layer), calls)
    }

    fn count(&self) {
        self.calls.fetch_add(1, Ordering::Relaxed);
    }
}

impl Layer for Counting {
    fn around<'a, T: Send + 'a>(
        &'a self,
        call: Call<'a>,
        answer: BoxFuture<'a, Result<T>>,
    ) -> BoxFuture<'a, Result<T>> {
        if !matches!(call, Call::Close) {
            self.count();
        }
        answer
    }

    fn release_detached(&self, inner: &Arc<dyn Store>, call: Call<'_>) {
        self.count();
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
}
