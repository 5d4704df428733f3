//! The blocking facade on the memory and SQLite stores: plain threads, `spawn_blocking`,
//! and background renewal, loss detection and drop-release while the caller is busy.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use locksmith::blocking::Locksmith;
use locksmith::{Error, ListQuery, LossReason, Renew, SetPolicy, Wait};
use locksmith_testkit::Target;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A target and a blocking client in a fresh namespace on it.
fn setup(target: impl std::future::Future<Output = Option<Target>>) -> (Target, Locksmith) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let target = rt.block_on(target).expect("target");
    let ns = format!("b-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let lm = Locksmith::connect(&format!("{}?namespace={ns}", target.base_url)).unwrap();
    (target, lm)
}

fn plain_threads_counter(lm: Locksmith) {
    let counter = Arc::new(AtomicU64::new(0));
    let inside = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (lm, counter, inside) = (lm.clone(), counter.clone(), inside.clone());
            std::thread::spawn(move || {
                for _ in 0..25 {
                    let g = lm.lock("counter").acquire().unwrap();
                    assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0, "overlap");
                    let v = counter.load(Ordering::SeqCst);
                    std::thread::yield_now();
                    counter.store(v + 1, Ordering::SeqCst);
                    inside.fetch_sub(1, Ordering::SeqCst);
                    g.release().unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(counter.load(Ordering::SeqCst), 100);
}

fn inside_spawn_blocking(lm: Locksmith) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let tasks: Vec<_> = (0..4)
            .map(|i| {
                let lm = lm.clone();
                tokio::task::spawn_blocking(move || {
                    let g = lm.lock("sb").acquire().unwrap();
                    std::thread::sleep(ms(10));
                    g.release().unwrap();
                    lm.lock(format!("sb-{i}"))
                        .run(|lease| lease.fence())
                        .unwrap()
                })
            })
            .collect();
        for t in tasks {
            assert!(t.await.unwrap() > 0);
        }
    });
}

fn watchdog_renews_while_busy(lm: Locksmith) {
    let g = lm
        .lock("wd")
        .ttl(ms(300))
        .renew(Renew::Auto)
        .acquire()
        .unwrap();
    std::thread::sleep(ms(1000)); // busy, synchronous work
    assert!(g.is_held());
    let other = lm.clone();
    let stolen = std::thread::spawn(move || other.lock("wd").try_acquire().unwrap().is_some());
    assert!(
        !stolen.join().unwrap(),
        "lock taken while its holder was busy"
    );
    g.release().unwrap();
    assert!(lm.lock("wd").try_acquire().unwrap().is_some());
}

fn drop_releases_from_a_thread(lm: Locksmith) {
    let g = lm.lock("dr").acquire().unwrap();
    std::thread::spawn(move || drop(g)).join().unwrap();
    let g2 = lm.lock("dr").wait(Wait::For(ms(3000))).acquire().unwrap();
    g2.release().unwrap();
}

fn loss_detected_while_busy(lm: Locksmith) {
    let g = lm
        .lock("ls")
        .ttl(ms(600))
        .renew(Renew::Auto)
        .acquire()
        .unwrap();
    assert_eq!(lm.clear(["ls"]).unwrap(), [("ls".to_string(), true)]);
    std::thread::sleep(ms(900)); // the watchdog's next renewal finds it gone
    assert!(!g.is_held());
    assert_eq!(g.wait_lost(ms(0)), Some(LossReason::Revoked));
    assert!(matches!(g.release(), Err(Error::NotHeld { .. })));
}

fn run_once_and_admin(lm: Locksmith) {
    assert_eq!(lm.lock("r").run(|l| l.name().to_string()).unwrap(), "r");
    let held = lm.lock("o").owner("busy").acquire().unwrap();
    assert_eq!(lm.lock("o").once(|_| 1).unwrap(), None);
    let info = lm.inspect("o").unwrap().unwrap();
    assert_eq!(
        (info.owner.as_deref(), info.fence),
        (Some("busy"), Some(held.fence()))
    );
    let token = held.leak();
    let resumed = lm.resume("o", token).unwrap();
    resumed.extend(ms(5000)).unwrap();
    resumed.renew_by(ms(1000)).unwrap();
    resumed.release().unwrap();
    assert_eq!(lm.lock("o").once(|_| 2).unwrap(), Some(2));

    let out = lm.set_locks(["a", "b"], SetPolicy::default()).unwrap();
    assert_eq!(out.counts.created, 2);
    let guards = lm.acquire_all(["c", "d"]).acquire().unwrap();
    assert_eq!(guards.len(), 2);
    let page = lm.list(ListQuery::all()).unwrap();
    let names: Vec<_> = page.items.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["a", "b", "c", "d"]);
    assert!(lm.clear(["a"]).unwrap()[0].1);
    drop(guards);
    let _ = lm.lock("e").ttl(ms(50)).acquire().unwrap().leak();
    std::thread::sleep(ms(100));
    assert_eq!(lm.purge_expired().unwrap(), 1);
    assert_eq!(lm.reset_all().unwrap(), 1); // "b"
}

fn run_reports_loss_and_panics_release(lm: Locksmith) {
    let out = lm
        .lock("rl")
        .ttl(ms(200))
        .renew(Renew::Off)
        .run(|_| std::thread::sleep(ms(400)));
    assert!(
        matches!(
            out,
            Err(Error::Lost {
                reason: LossReason::Expired,
                ..
            })
        ),
        "{out:?}"
    );
    let lm2 = lm.clone();
    let panicked = std::thread::spawn(move || {
        lm2.lock("rp")
            .run(|_| panic!("intended panic in a blocking run body"))
    })
    .join();
    assert!(panicked.is_err());
    assert!(
        lm.inspect("rp").unwrap().is_none(),
        "not released after a panic"
    );
}

fn waits_and_times_out(lm: Locksmith) {
    let g = lm.lock("w").acquire().unwrap();
    let start = Instant::now();
    let err = lm.lock("w").wait(Wait::For(ms(200))).acquire().unwrap_err();
    assert!(err.is_timeout() && start.elapsed() >= ms(200));
    let lm2 = lm.clone();
    let waiter = std::thread::spawn(move || lm2.lock("w").acquire().map(|g| g.fence()));
    std::thread::sleep(ms(100));
    let fence = g.fence();
    g.release().unwrap();
    assert!(waiter.join().unwrap().unwrap() > fence);
}

macro_rules! blocking_tests {
    ($store:ident, $target:expr; $($case:ident),* $(,)?) => {
        mod $store {
            use super::*;
            $(
                #[test]
                fn $case() {
                    let (_target, lm) = setup($target);
                    super::$case(lm);
                }
            )*
        }
    };
}

macro_rules! for_stores {
    ($($case:ident),* $(,)?) => {
        blocking_tests!(memory, locksmith_testkit::targets::memory(); $($case),*);
        blocking_tests!(sqlite, locksmith_testkit::targets::sqlite(); $($case),*);
    };
}

for_stores!(
    plain_threads_counter,
    inside_spawn_blocking,
    watchdog_renews_while_busy,
    drop_releases_from_a_thread,
    loss_detected_while_busy,
    run_once_and_admin,
    run_reports_loss_and_panics_release,
    waits_and_times_out,
);

#[test]
fn bad_url_is_a_config_error() {
    let err = Locksmith::connect("nope://x").unwrap_err();
    assert!(matches!(err, Error::Config { .. }), "{err}");
}
