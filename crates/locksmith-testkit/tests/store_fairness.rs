//! Cross-process fairness on SQLite: a claim that has waited long reserves the next grant,
//! so a waiter that polls from another process is not starved by a process whose waiters
//! are notified at once.
//!
//! The store-level tests set `Claim::waited` by hand. The end-to-end test runs three
//! processes (this test binary re-executed as a child with `LOCKSMITH_FAIRNESS_ROLE` set):
//! two alternate on one lock with two tasks each (hold 20 ms, release, re-acquire at once;
//! the other task of the process is notified of every release), a third waits, polling, five
//! times in a row. Bound: the third gets the lock within 1 s of starting to wait, every time
//! (by design about 200 ms to qualify + one poll to reserve + one hold + one poll to take it
//! ≈ 270 ms; measured 67–277 ms). Without reservations it took up to 2.4 s.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use locksmith::store::{Claim, Grant, GrantAll, Store, memory, sqlite};
use locksmith::{LockName, Locksmith, Namespace, Token, Wait};

fn claim(name: &str, waited: Duration) -> Claim {
    let mut c = Claim::new(
        LockName::new(name).expect("name"),
        Token::new(),
        "fairness",
        "host",
        std::process::id(),
        Some(Duration::from_secs(60)),
    );
    c.waited = waited;
    c
}

const LONG: Duration = Duration::from_millis(300);

async fn acquired(store: &dyn Store, c: &Claim) -> bool {
    match store.try_acquire(&Namespace::default(), c).await.unwrap() {
        Grant::Acquired { .. } => true,
        Grant::Held(_) => false,
        Grant::AlreadyHeld => panic!("{:?} already held", c.name),
        other => panic!("{other:?}"),
    }
}

async fn release(store: &dyn Store, c: &Claim) {
    store
        .release(&Namespace::default(), &c.name, &c.token, None)
        .await
        .unwrap();
}

fn reservations(path: &Path) -> i64 {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    conn.query_row("SELECT count(*) FROM locksmith_reservations", [], |r| {
        r.get(0)
    })
    .unwrap()
}

struct File {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
}

async fn open() -> (File, Arc<sqlite::SqliteStore>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("locks.db");
    let store = sqlite::SqliteStore::open(path.clone()).await.unwrap();
    (File { _dir: dir, path }, store)
}

#[tokio::test]
async fn a_long_waiter_reserves_the_next_grant() {
    let (f, store) = open().await;
    let holder = claim("hot", Duration::ZERO);
    assert!(acquired(&*store, &holder).await);
    let long = claim("hot", LONG);
    assert!(
        !acquired(&*store, &long).await,
        "held: the long waiter reserves"
    );
    assert_eq!(reservations(&f.path), 1);
    release(&*store, &holder).await;

    // A newcomer finds the free lock reserved.
    let newcomer = claim("hot", Duration::ZERO);
    match store
        .try_acquire(&Namespace::default(), &newcomer)
        .await
        .unwrap()
    {
        Grant::Held(info) => {
            assert!(info.released, "{info:?}");
            assert_eq!(info.owner, None);
            assert_eq!(info.fence, None);
            let left = info.expires_in.expect("the reservation's time left");
            assert!(left <= Duration::from_millis(100), "{left:?}");
        }
        other => panic!("expected Held, got {other:?}"),
    }
    // So does the old holder coming straight back.
    assert!(!acquired(&*store, &claim("hot", Duration::ZERO)).await);
    // The reserver takes it; the reservation is gone.
    assert!(acquired(&*store, &long).await);
    assert_eq!(reservations(&f.path), 0);
    release(&*store, &long).await;
    assert!(acquired(&*store, &newcomer).await);
}

#[tokio::test]
async fn the_store_measures_the_wait_of_a_token_that_keeps_trying() {
    // `waited` left at zero: the store counts from the token's first try in this process.
    let (f, store) = open().await;
    let holder = claim("hot", Duration::ZERO);
    assert!(acquired(&*store, &holder).await);
    let waiter = claim("hot", Duration::ZERO);
    assert!(!acquired(&*store, &waiter).await);
    assert_eq!(reservations(&f.path), 0, "a first try reserves nothing");
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert!(!acquired(&*store, &waiter).await);
    assert_eq!(
        reservations(&f.path),
        1,
        "250 ms later the same token reserves"
    );
    release(&*store, &holder).await;
    assert!(!acquired(&*store, &claim("hot", Duration::ZERO)).await);
    assert!(acquired(&*store, &waiter).await);
}

#[tokio::test]
async fn a_short_wait_reserves_nothing() {
    let (f, store) = open().await;
    let holder = claim("hot", Duration::ZERO);
    assert!(acquired(&*store, &holder).await);
    assert!(!acquired(&*store, &claim("hot", Duration::from_millis(100))).await);
    assert_eq!(reservations(&f.path), 0);
    release(&*store, &holder).await;
    assert!(acquired(&*store, &claim("hot", Duration::ZERO)).await);
}

#[tokio::test]
async fn a_lapsed_reservation_frees_the_lock() {
    let (f, store) = open().await;
    let holder = claim("hot", Duration::ZERO);
    assert!(acquired(&*store, &holder).await);
    assert!(!acquired(&*store, &claim("hot", LONG)).await);
    release(&*store, &holder).await;
    let newcomer = claim("hot", Duration::ZERO);
    assert!(!acquired(&*store, &newcomer).await);
    // The reserver went away: 100 ms later (stepped clock) the lock is free for anyone.
    sqlite::step_clock(&f.path, 110_000);
    assert!(acquired(&*store, &newcomer).await);
    assert_eq!(
        reservations(&f.path),
        0,
        "the grant removed the lapsed reservation"
    );
}

#[tokio::test]
async fn releasing_the_reservers_token_drops_its_reservation() {
    // The core releases the token of a try it abandoned: a reserver that gave up must not
    // hold the free lock back.
    let (f, store) = open().await;
    let holder = claim("hot", Duration::ZERO);
    assert!(acquired(&*store, &holder).await);
    let long = claim("hot", LONG);
    assert!(!acquired(&*store, &long).await);
    assert_eq!(reservations(&f.path), 1);
    store.release_detached(&Namespace::default(), &long.name, &long.token, None);
    release(&*store, &holder).await; // after the detached release on the one worker
    assert_eq!(reservations(&f.path), 0);
    assert!(acquired(&*store, &claim("hot", Duration::ZERO)).await);
}

#[tokio::test]
async fn a_live_reservation_is_not_taken_over_and_long_waiters_take_turns() {
    let (_f, store) = open().await;
    let holder = claim("hot", Duration::ZERO);
    assert!(acquired(&*store, &holder).await);
    let first = claim("hot", LONG);
    let second = claim("hot", 3 * LONG); // waited even longer, but reserved later
    assert!(!acquired(&*store, &first).await);
    assert!(!acquired(&*store, &second).await);
    release(&*store, &holder).await;
    assert!(!acquired(&*store, &second).await, "reserved for the first");
    assert!(acquired(&*store, &first).await);
    // While the first holds it, the second reserves; then it is next.
    assert!(!acquired(&*store, &second).await);
    release(&*store, &first).await;
    assert!(!acquired(&*store, &claim("hot", Duration::ZERO)).await);
    assert!(acquired(&*store, &second).await);
}

#[tokio::test]
async fn acquire_all_respects_reservations() {
    let (_f, store) = open().await;
    let ns = Namespace::default();
    let holder = claim("b", Duration::ZERO);
    assert!(acquired(&*store, &holder).await);
    assert!(!acquired(&*store, &claim("b", LONG)).await);
    release(&*store, &holder).await;
    let both = [claim("a", Duration::ZERO), claim("b", Duration::ZERO)];
    match store.try_acquire_all(&ns, &both).await.unwrap() {
        GrantAll::Held(info) => {
            assert_eq!(info.name, "b");
            assert!(info.released);
        }
        other => panic!("expected Held, got {other:?}"),
    }
    assert!(
        store
            .inspect(&ns, &LockName::new("a").unwrap())
            .await
            .unwrap()
            .is_none(),
        "all or nothing"
    );
}

#[tokio::test]
async fn memory_has_no_reservations() {
    // In one process the FIFO already orders waiters: no reservation, no held-back lock.
    let store = memory::MemoryStore::new();
    let holder = claim("hot", Duration::ZERO);
    assert!(acquired(&*store, &holder).await);
    assert!(!acquired(&*store, &claim("hot", LONG)).await);
    release(&*store, &holder).await;
    assert!(acquired(&*store, &claim("hot", Duration::ZERO)).await);
}

// ---- end to end, across processes -------------------------------------------------------

const ROLE: &str = "LOCKSMITH_FAIRNESS_ROLE";
const URL: &str = "LOCKSMITH_FAIRNESS_URL";
const STOP: &str = "LOCKSMITH_FAIRNESS_STOP";
/// How long an alternator holds the lock each time.
const HOLD: Duration = Duration::from_millis(20);
/// How many times the polling waiter waits for the lock.
const ROUNDS: usize = 5;
/// The bound this test holds the store to, for every round.
const BOUND: Duration = Duration::from_secs(1);

/// Not a test of its own: the body of a child process when `LOCKSMITH_FAIRNESS_ROLE` is set
/// (passes at once otherwise).
#[test]
fn fairness_child() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    let url = std::env::var(URL).expect("url");
    let stop = std::path::PathBuf::from(std::env::var(STOP).expect("stop file"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let lm = Locksmith::connect(&url).await.expect("connect");
        match role.as_str() {
            "alternate" => {
                let running = Arc::new(std::sync::Once::new());
                let tasks: Vec<_> = (0..2)
                    .map(|_| {
                        let (lm, stop, running) = (lm.clone(), stop.clone(), running.clone());
                        tokio::spawn(async move {
                            let mut n = 0u64;
                            let limit = Instant::now() + Duration::from_secs(20);
                            while !stop.exists() && Instant::now() < limit {
                                let g = lm
                                    .lock("hot")
                                    .ttl(Duration::from_secs(10))
                                    .wait(Wait::For(Duration::from_secs(1)))
                                    .acquire()
                                    .await;
                                let Ok(g) = g else { continue };
                                n += 1;
                                running.call_once(|| println!("FAIR RUNNING"));
                                tokio::time::sleep(HOLD).await;
                                g.release().await.expect("release");
                            }
                            n
                        })
                    })
                    .collect();
                let mut total = 0;
                for t in tasks {
                    total += t.await.unwrap();
                }
                println!("FAIR DONE {total}");
            }
            "wait" => {
                for _ in 0..ROUNDS {
                    let started = Instant::now();
                    let got = lm
                        .lock("hot")
                        .ttl(Duration::from_secs(10))
                        .wait(Wait::For(Duration::from_secs(10)))
                        .acquire()
                        .await;
                    match got {
                        Ok(g) => {
                            println!("FAIR GOT {}", started.elapsed().as_millis());
                            tokio::time::sleep(HOLD).await;
                            g.release().await.expect("release");
                        }
                        Err(e) => println!("FAIR FAILED {e}"),
                    }
                    // Let the alternators take over again.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            other => panic!("unknown role {other}"),
        }
    });
}

struct ChildProcess {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl ChildProcess {
    fn spawn(role: &str, url: &str, stop: &Path) -> ChildProcess {
        let mut child = Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "fairness_child",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(ROLE, role)
            .env(URL, url)
            .env(STOP, stop)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn the test binary");
        let (tx, lines) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                // The harness may print "test fairness_child ... " on the same line.
                if let Some(at) = line.find("FAIR ") {
                    let _ = tx.send(line[at + 5..].to_string());
                }
            }
        });
        ChildProcess { child, lines }
    }

    fn expect(&self, what: &str) -> String {
        let line = self
            .lines
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("no {what} line from the child"));
        assert!(line.starts_with(what), "expected {what}, got {line}");
        line
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_polling_waiter_in_another_process_is_not_starved() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("locks.db").display());
    let stop = dir.path().join("stop");
    let a = ChildProcess::spawn("alternate", &url, &stop);
    let b = ChildProcess::spawn("alternate", &url, &stop);
    a.expect("RUNNING");
    b.expect("RUNNING");
    std::thread::sleep(Duration::from_millis(300)); // both busy alternating
    let waiter = ChildProcess::spawn("wait", &url, &stop);
    let waits: Vec<Duration> = (0..ROUNDS)
        .map(|_| {
            let got = waiter.expect("GOT");
            Duration::from_millis(got[4..].trim().parse().expect("milliseconds"))
        })
        .collect();
    std::fs::write(&stop, b"").unwrap();
    let done_a = a.expect("DONE");
    let done_b = b.expect("DONE");
    eprintln!("the polling waiter got the lock after {waits:?} (alternators: {done_a}, {done_b})");
    let longest = waits.iter().max().unwrap();
    assert!(
        *longest <= BOUND,
        "the polling waiter waited {longest:?} (bound {BOUND:?}): {waits:?}"
    );
}

/// The claim holding the reservation is next in line: its `Held` answers ask it to poll
/// again within a few milliseconds (`LockInfo::retry_in`); nobody else's do.
#[tokio::test]
async fn the_reserver_is_asked_to_poll_soon() {
    let (_f, store) = open().await;
    let retry_in = |g: Grant| match g {
        Grant::Held(info) => info.retry_in,
        other => panic!("expected held, got {other:?}"),
    };
    let ns = Namespace::default();
    let holder = claim("hot", Duration::ZERO);
    assert!(acquired(&*store, &holder).await);
    let short = claim("hot", Duration::from_millis(100));
    assert_eq!(
        retry_in(store.try_acquire(&ns, &short).await.unwrap()),
        None
    );
    let reserver = claim("hot", LONG);
    let first = retry_in(store.try_acquire(&ns, &reserver).await.unwrap());
    assert!(
        first.is_some_and(|d| d <= Duration::from_millis(5)),
        "{first:?}"
    );
    let again = retry_in(store.try_acquire(&ns, &reserver).await.unwrap());
    assert!(
        again.is_some_and(|d| d <= Duration::from_millis(5)),
        "{again:?}"
    );
    let other = claim("hot", LONG);
    assert_eq!(
        retry_in(store.try_acquire(&ns, &other).await.unwrap()),
        None,
        "only the reserver polls fast"
    );
    release(&*store, &holder).await;
    assert!(acquired(&*store, &reserver).await);
}
