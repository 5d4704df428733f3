//! The cache-stampede guard: [`Locksmith::get_or_compute`] and its builder and blocking
//! forms.

use std::future::Future;

use crate::{Error, LockBuilder, Locksmith};

impl Locksmith {
    /// A double-checked cache-stampede guard over your own cache: `get` the value; on a miss
    /// take the lock `key`, `get` again (another caller may have filled the cache while this
    /// one waited), and only if it still misses, `compute` it. When many callers miss the
    /// same cold key at once, `compute` runs once and the others find its value.
    ///
    /// `compute` must **store** the value where `get` finds it before returning — the
    /// callers that waited read it through `get`. The lock is the one named `key` in this
    /// namespace, taken with the defaults (wait forever, 60 s TTL renewed while `compute`
    /// runs); use [`LockBuilder::get_or_compute`] to change them, e.g.
    /// `lm.lock(key).wait(Wait::For(d)).get_or_compute(get, compute)`.
    ///
    /// If `compute` fails, the lock is released and its error returned to that caller only;
    /// the next waiter misses again and computes itself. If it panics, the lock is released
    /// and the panic resumes. `E` is your error type; locksmith's errors (a store failure, a
    /// wait that runs out, a lease lost during `compute`) reach you through
    /// `E: From<locksmith::Error>`.
    ///
    /// # Errors
    ///
    /// `get`'s and `compute`'s errors, and locksmith's as `E`.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> locksmith::Result<()> {
    /// use std::collections::HashMap;
    /// use std::sync::{Arc, Mutex};
    /// use locksmith::Locksmith;
    ///
    /// let lm = Locksmith::connect("memory://").await?;
    /// let cache: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
    /// let report = lm
    ///     .get_or_compute(
    ///         "report:2026-12",
    ///         || async { Ok(cache.lock().unwrap().get("report:2026-12").copied()) },
    ///         || async {
    ///             let total = 42; // the expensive part
    ///             cache.lock().unwrap().insert("report:2026-12".into(), total);
    ///             Ok::<_, locksmith::Error>(total)
    ///         },
    ///     )
    ///     .await?;
    /// assert_eq!(report, 42);
    /// # Ok(()) }
    /// ```
    pub async fn get_or_compute<T, E, G, GFut, C, CFut>(
        &self,
        key: &str,
        get: G,
        compute: C,
    ) -> Result<T, E>
    where
        G: FnMut() -> GFut,
        GFut: Future<Output = Result<Option<T>, E>>,
        C: FnOnce() -> CFut,
        CFut: Future<Output = Result<T, E>>,
        E: From<Error>,
    {
        self.lock(key).get_or_compute(get, compute).await
    }
}

impl LockBuilder {
    /// [`Locksmith::get_or_compute`] with this builder's lock options; the lock's name is
    /// the cache key. Waits as `.wait(…)` says (default: forever); a wait that runs out is
    /// `Err(E::from(Error::Timeout))`.
    ///
    /// # Errors
    ///
    /// As [`Locksmith::get_or_compute`].
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> locksmith::Result<()> {
    /// use std::time::Duration;
    /// use locksmith::{Locksmith, Wait};
    ///
    /// let lm = Locksmith::connect("memory://").await?;
    /// let v = lm
    ///     .lock("user:7")
    ///     .ttl(Duration::from_secs(10))
    ///     .wait(Wait::For(Duration::from_secs(2)))
    ///     .get_or_compute(|| async { Ok(None) }, || async { Ok::<_, locksmith::Error>("fresh") })
    ///     .await?;
    /// assert_eq!(v, "fresh");
    /// # Ok(()) }
    /// ```
    pub async fn get_or_compute<T, E, G, GFut, C, CFut>(
        self,
        mut get: G,
        compute: C,
    ) -> Result<T, E>
    where
        G: FnMut() -> GFut,
        GFut: Future<Output = Result<Option<T>, E>>,
        C: FnOnce() -> CFut,
        CFut: Future<Output = Result<T, E>>,
        E: From<Error>,
    {
        if let Some(v) = get().await? {
            return Ok(v);
        }
        let out = self
            .run(|_lease| async move {
                match get().await? {
                    Some(v) => Ok(v),
                    None => compute().await,
                }
            })
            .await;
        out?
    }
}

impl crate::blocking::Locksmith {
    /// [`crate::Locksmith::get_or_compute`] for synchronous code: `get` and `compute` run
    /// on the calling thread; only the lock goes through the blocking facade.
    ///
    /// # Errors
    ///
    /// As [`crate::Locksmith::get_or_compute`].
    ///
    /// # Examples
    ///
    /// ```
    /// use std::cell::RefCell;
    /// use locksmith::blocking::Locksmith;
    ///
    /// let lm = Locksmith::connect("memory://")?;
    /// let cache = RefCell::new(None::<String>);
    /// let page = lm.get_or_compute(
    ///     "page:/",
    ///     || Ok(cache.borrow().clone()),
    ///     || {
    ///         let html = "<h1>hi</h1>".to_string();
    ///         *cache.borrow_mut() = Some(html.clone());
    ///         Ok::<_, locksmith::Error>(html)
    ///     },
    /// )?;
    /// assert_eq!(page, "<h1>hi</h1>");
    /// # Ok::<(), locksmith::Error>(())
    /// ```
    pub fn get_or_compute<T, E, G, C>(&self, key: &str, get: G, compute: C) -> Result<T, E>
    where
        G: FnMut() -> Result<Option<T>, E>,
        C: FnOnce() -> Result<T, E>,
        E: From<Error>,
    {
        self.lock(key).get_or_compute(get, compute)
    }
}

impl crate::blocking::LockBuilder {
    /// [`crate::LockBuilder::get_or_compute`] for synchronous code.
    ///
    /// # Errors
    ///
    /// As [`crate::Locksmith::get_or_compute`].
    pub fn get_or_compute<T, E, G, C>(self, mut get: G, compute: C) -> Result<T, E>
    where
        G: FnMut() -> Result<Option<T>, E>,
        C: FnOnce() -> Result<T, E>,
        E: From<Error>,
    {
        if let Some(v) = get()? {
            return Ok(v);
        }
        self.run(|_lease| match get()? {
            Some(v) => Ok(v),
            None => compute(),
        })?
    }
}

#[cfg(all(test, feature = "memory"))]
mod tests {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use crate::{Error, Locksmith};

    type Cache = Arc<Mutex<HashMap<String, u64>>>;

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn fifty_callers_compute_once() {
        let lm = Locksmith::connect("memory://").await.unwrap();
        let cache: Cache = Arc::default();
        let computed = Arc::new(AtomicUsize::new(0));
        let gets = Arc::new(AtomicUsize::new(0));
        // Every caller is past its first (missing) `get` before any compute can finish.
        let barrier = Arc::new(tokio::sync::Barrier::new(50));
        let mut tasks = vec![];
        for _ in 0..50 {
            let (lm, cache, computed, gets, barrier) = (
                lm.clone(),
                cache.clone(),
                computed.clone(),
                gets.clone(),
                barrier.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let first = Arc::new(AtomicUsize::new(0));
                lm.get_or_compute(
                    "cold",
                    || {
                        let (cache, gets, first, barrier) =
                            (cache.clone(), gets.clone(), first.clone(), barrier.clone());
                        async move {
                            gets.fetch_add(1, Ordering::SeqCst);
                            let v = cache.lock().unwrap().get("cold").copied();
                            if first.fetch_add(1, Ordering::SeqCst) == 0 {
                                assert_eq!(v, None, "the cache starts cold");
                                barrier.wait().await;
                            }
                            Ok(v)
                        }
                    },
                    || async {
                        computed.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        cache.lock().unwrap().insert("cold".into(), 99);
                        Ok::<_, Error>(99)
                    },
                )
                .await
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap(), 99);
        }
        assert_eq!(computed.load(Ordering::SeqCst), 1);
        // 50 first gets, 50 second gets under the lock.
        assert_eq!(gets.load(Ordering::SeqCst), 100);
        assert!(lm.inspect("cold").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_failed_compute_lets_the_next_caller_compute() {
        let lm = Locksmith::connect("memory://").await.unwrap();
        let err = lm
            .get_or_compute(
                "k",
                || async { Ok(None::<u8>) },
                || async { Err(Error::config("boom")) },
            )
            .await
            .unwrap_err();
        assert!(err.to_string().contains("boom"));
        assert!(lm.inspect("k").await.unwrap().is_none(), "released");
        let v = lm
            .get_or_compute("k", || async { Ok(None) }, || async { Ok::<_, Error>(5u8) })
            .await
            .unwrap();
        assert_eq!(v, 5);
    }

    #[test]
    fn blocking_fifty_threads_compute_once() {
        let lm = crate::blocking::Locksmith::connect("memory://").unwrap();
        let cache: Cache = Arc::default();
        let computed = Arc::new(AtomicUsize::new(0));
        let barrier = Arc::new(std::sync::Barrier::new(50));
        let threads: Vec<_> = (0..50)
            .map(|_| {
                let (lm, cache, computed, barrier) =
                    (lm.clone(), cache.clone(), computed.clone(), barrier.clone());
                std::thread::spawn(move || {
                    let mut first = true;
                    lm.get_or_compute(
                        "cold",
                        || {
                            let v = cache.lock().unwrap().get("cold").copied();
                            if std::mem::take(&mut first) {
                                assert_eq!(v, None);
                                barrier.wait();
                            }
                            Ok(v)
                        },
                        || {
                            computed.fetch_add(1, Ordering::SeqCst);
                            std::thread::sleep(Duration::from_millis(20));
                            cache.lock().unwrap().insert("cold".into(), 7);
                            Ok::<_, Error>(7)
                        },
                    )
                })
            })
            .collect();
        for t in threads {
            assert_eq!(t.join().unwrap().unwrap(), 7);
        }
        assert_eq!(computed.load(Ordering::SeqCst), 1);
    }
}
