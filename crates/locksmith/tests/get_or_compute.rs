//! The cache-stampede guard on the memory and SQLite stores: 50 concurrent callers on a cold
//! key run `compute` once and all receive its value, async (tasks) and sync (threads); with
//! SQLite, also callers in separate handles of one file, as separate processes would be.

#![cfg(all(feature = "memory", feature = "sqlite"))]

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use locksmith::{Error, Locksmith};

type Cache = Arc<Mutex<HashMap<String, String>>>;

/// One handle per caller group: `memory://NAME` is shared by name; each SQLite handle opens
/// the file on its own, like another process would.
fn urls(kind: &str, dir: &tempfile::TempDir) -> Vec<String> {
    match kind {
        "memory" => vec![format!("memory://stampede-{}", std::process::id()); 5],
        "sqlite" => vec![format!("sqlite://{}", dir.path().join("s.db").display()); 5],
        other => unreachable!("{other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_tasks_on_a_cold_key_compute_once() {
    for kind in ["memory", "sqlite"] {
        let dir = tempfile::tempdir().unwrap();
        let mut handles = vec![];
        for url in urls(kind, &dir) {
            handles.push(Locksmith::connect(&url).await.unwrap());
        }
        let cache: Cache = Arc::default();
        let computed = Arc::new(AtomicUsize::new(0));
        let missed_first = Arc::new(AtomicUsize::new(0));
        let barrier = Arc::new(tokio::sync::Barrier::new(50));
        let key = format!("report:{kind}");
        let mut tasks = vec![];
        for i in 0..50 {
            let lm = handles[i % handles.len()].clone();
            let (cache, computed, missed_first, barrier, key) = (
                cache.clone(),
                computed.clone(),
                missed_first.clone(),
                barrier.clone(),
                key.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let mut first = true;
                lm.get_or_compute(
                    &key,
                    || {
                        let v = cache.lock().unwrap().get(&key).cloned();
                        let was_first = std::mem::take(&mut first);
                        let barrier = barrier.clone();
                        let missed_first = missed_first.clone();
                        async move {
                            if was_first {
                                if v.is_none() {
                                    missed_first.fetch_add(1, Ordering::SeqCst);
                                }
                                // Everyone has missed before anyone computes.
                                barrier.wait().await;
                            }
                            Ok(v)
                        }
                    },
                    || async {
                        computed.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        let v = format!("value of {key}");
                        cache.lock().unwrap().insert(key.clone(), v.clone());
                        Ok::<_, Error>(v)
                    },
                )
                .await
            }));
        }
        for t in tasks {
            assert_eq!(
                t.await.unwrap().unwrap(),
                format!("value of {key}"),
                "{kind}"
            );
        }
        assert_eq!(
            missed_first.load(Ordering::SeqCst),
            50,
            "{kind}: a cold start"
        );
        assert_eq!(computed.load(Ordering::SeqCst), 1, "{kind}: one compute");
        assert!(
            handles[0]
                .inspect(&key)
                .await
                .unwrap()
                .is_none_or(|i| i.expired)
        );
    }
}

#[test]
fn fifty_threads_on_a_cold_key_compute_once() {
    for kind in ["memory", "sqlite"] {
        let dir = tempfile::tempdir().unwrap();
        let handles: Vec<_> = urls(kind, &dir)
            .iter()
            .map(|u| locksmith::blocking::Locksmith::connect(u).unwrap())
            .collect();
        let cache: Cache = Arc::default();
        let computed = Arc::new(AtomicUsize::new(0));
        let barrier = Arc::new(std::sync::Barrier::new(50));
        let threads: Vec<_> = (0..50)
            .map(|i| {
                let lm = handles[i % handles.len()].clone();
                let (cache, computed, barrier) = (cache.clone(), computed.clone(), barrier.clone());
                std::thread::spawn(move || {
                    let mut first = true;
                    lm.get_or_compute(
                        "page",
                        || {
                            let v = cache.lock().unwrap().get("page").cloned();
                            if std::mem::take(&mut first) {
                                assert!(v.is_none());
                                barrier.wait();
                            }
                            Ok(v)
                        },
                        || {
                            computed.fetch_add(1, Ordering::SeqCst);
                            std::thread::sleep(Duration::from_millis(50));
                            cache.lock().unwrap().insert("page".into(), "html".into());
                            Ok::<_, Error>("html".to_string())
                        },
                    )
                })
            })
            .collect();
        for t in threads {
            assert_eq!(t.join().unwrap().unwrap(), "html", "{kind}");
        }
        assert_eq!(computed.load(Ordering::SeqCst), 1, "{kind}");
    }
}

#[tokio::test]
async fn a_wait_that_runs_out_is_an_error_and_computes_nothing() {
    let lm = Locksmith::connect("memory://").await.unwrap();
    let _busy = lm.lock("slow").acquire().await.unwrap();
    let err = lm
        .lock("slow")
        .wait(locksmith::Wait::For(Duration::from_millis(50)))
        .get_or_compute(
            || async { Ok::<_, Error>(None::<u8>) },
            || async { panic!("must not compute without the lock") },
        )
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err}");
}

#[tokio::test]
async fn a_hit_takes_no_lock() {
    let lm = Locksmith::connect("memory://").await.unwrap();
    let _busy = lm.lock("warm").acquire().await.unwrap();
    // Held by someone else, but the first `get` hits: no wait, no compute.
    let v = lm
        .get_or_compute(
            "warm",
            || async { Ok(Some(3)) },
            || async { Err::<u8, Error>(Error::store("test", false, "must not compute")) },
        )
        .await
        .unwrap();
    assert_eq!(v, 3);
}
