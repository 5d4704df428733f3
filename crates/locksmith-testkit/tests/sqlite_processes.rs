//! The SQLite store across processes: each test uses a fresh lock file and re-executes the
//! `locksmith-test-helper` binary as the other processes.
//!
//! Timing checks are written for a loaded machine: a "not before" check compares against
//! a bound that is exact (the store's clock is this machine's wall clock, so a lower bound
//! of a lease's expiry taken from `inspect` is exact), and "by" checks allow seconds.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant, SystemTime};

use locksmith::{LockInfo, Locksmith, Wait};

const HELPER: &str = env!("CARGO_BIN_EXE_locksmith-test-helper");

/// How long a helper may take to say what it is expected to say.
const PATIENCE: Duration = Duration::from_secs(20);

/// A generous bound for "it happened by then" on a loaded machine.
const SLACK: Duration = Duration::from_secs(3);

/// A fresh lock file in its own temp dir.
struct LockFile {
    dir: tempfile::TempDir,
    url: String,
}

impl LockFile {
    fn new() -> LockFile {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("locks.db");
        assert!(path.is_absolute());
        LockFile {
            url: format!("sqlite://{}", path.display()),
            dir,
        }
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    async fn connect(&self) -> Locksmith {
        Locksmith::connect(&self.url).await.expect("connect")
    }
}

/// A running helper process: its stdout lines arrive on a channel; killed (SIGKILL) and
/// reaped on drop.
struct Helper {
    what: String,
    child: Child,
    /// Held open so the helper's stdin-EOF watchdog keeps it alive while we live.
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    stderr: Arc<Mutex<String>>,
}

impl Helper {
    fn spawn(args: &[&str]) -> Helper {
        let mut child = Command::new(HELPER)
            .args(args)
            .env_remove("LOCKSMITH_URL")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {HELPER} {args:?}: {e}"));
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let (mut pipe, sink) = (child.stderr.take().expect("stderr"), stderr.clone());
        std::thread::spawn(move || {
            let mut buf = [0_u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Helper {
            what: args.join(" "),
            stdin: child.stdin.take(),
            child,
            lines,
            stderr,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits for the next line, which must start with `word`; returns the rest of it.
    fn expect(&self, word: &str) -> String {
        match self.lines.recv_timeout(PATIENCE) {
            Ok(line) => match line.strip_prefix(word) {
                Some(rest) => rest.trim().to_string(),
                None => panic!(
                    "helper `{}` said {line:?}, expected {word:?}; stderr: {}",
                    self.what,
                    self.stderr()
                ),
            },
            Err(e) => panic!(
                "helper `{}` did not say {word:?} within {PATIENCE:?} ({e}); stderr: {}",
                self.what,
                self.stderr()
            ),
        }
    }

    /// Waits for the next line `<word> <number>`; returns the number.
    fn expect_number(&self, word: &str) -> u64 {
        let rest = self.expect(word);
        rest.parse()
            .unwrap_or_else(|e| panic!("helper `{}` said {word} {rest:?}: {e}", self.what))
    }

    /// Anything the helper said that was not read yet.
    fn unread(&self) -> Vec<String> {
        self.lines.try_iter().collect()
    }

    /// Waits for the helper to exit successfully (bounded).
    fn finish(&mut self) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            match self.child.try_wait().expect("try_wait") {
                Some(status) => {
                    assert!(
                        status.success(),
                        "helper `{}` exited with {status}; stderr: {}",
                        self.what,
                        self.stderr()
                    );
                    return;
                }
                None if Instant::now() > deadline => panic!(
                    "helper `{}` still running after {PATIENCE:?}; stderr: {}",
                    self.what,
                    self.stderr()
                ),
                None => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }

    /// SIGKILLs the helper and reaps it: it runs no destructor and releases nothing.
    fn kill(&mut self) {
        self.child.kill().expect("SIGKILL the helper");
        let status = self.child.wait().expect("reap the helper");
        assert!(!status.success(), "a SIGKILLed helper exited with {status}");
        self.stdin.take();
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The lock's row as seen from this process, with an exact lower bound of its expiry on the
/// wall clock (the SQLite store's clock): taken just before the store read its clock.
async fn inspect_held(lm: &Locksmith, name: &str) -> (LockInfo, SystemTime) {
    let before = SystemTime::now();
    let info = lm
        .inspect(name)
        .await
        .expect("inspect")
        .unwrap_or_else(|| panic!("lock {name:?} has no row"));
    let expiry_not_before = before + info.expires_in.expect("the lease expires");
    (info, expiry_not_before)
}

fn read_fences(path: &Path) -> Vec<u64> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
        .lines()
        .map(|l| l.trim().parse().expect("a fence per line"))
        .collect()
}

fn assert_strictly_increasing(fences: &[u64], what: &str) {
    for pair in fences.windows(2) {
        assert!(
            pair[0] < pair[1],
            "{what}: fence {} then {} — fences must strictly increase: {fences:?}",
            pair[0],
            pair[1]
        );
    }
}

/// K processes × M increments of a file under one lock: no increment is lost, and the
/// fences of all processes together are distinct and each process's increase.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counter_across_processes_loses_no_increment() {
    const K: usize = 4;
    const M: usize = 25;
    let lf = LockFile::new();
    let counter = lf.file("counter");
    std::fs::write(&counter, "0\n").unwrap();
    let started = Instant::now();
    // No process opened the file yet: they race to create it and its schema, too.
    let mut helpers: Vec<(Helper, PathBuf)> = (0..K)
        .map(|i| {
            let fences = lf.file(&format!("fences-{i}"));
            let helper = Helper::spawn(&[
                "counter",
                &lf.url,
                "counter",
                counter.to_str().unwrap(),
                fences.to_str().unwrap(),
                &M.to_string(),
            ]);
            (helper, fences)
        })
        .collect();
    let mut all = Vec::new();
    for (helper, fences) in &mut helpers {
        helper.expect("done");
        helper.finish();
        let mine = read_fences(fences);
        assert_eq!(mine.len(), M, "fences of `{}`", helper.what);
        assert_strictly_increasing(&mine, &helper.what);
        all.extend(mine);
    }
    eprintln!("{K}×{M} increments in {:?}", started.elapsed());
    let count: usize = std::fs::read_to_string(&counter)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(
        count,
        K * M,
        "increments were lost: two processes held the lock at once"
    );
    all.sort_unstable();
    assert_eq!(all.len(), K * M);
    assert_strictly_increasing(&all, "all processes' fences, sorted");
    assert!(all[0] >= 1, "fences start above zero: {all:?}");
    // And a fresh client of the file sees it free, with a higher fence still.
    let lm = lf.connect().await;
    let guard = lm
        .lock("counter")
        .try_acquire()
        .await
        .unwrap()
        .expect("free");
    assert!(guard.fence() > *all.last().unwrap());
    guard.release().await.unwrap();
}

/// A holder killed with SIGKILL keeps the lock until its TTL ends, not a moment less; then
/// a waiter takes it over promptly, with a higher fence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_holder_keeps_the_lock_until_its_ttl_ends() {
    const TTL: Duration = Duration::from_millis(1500);
    let lf = LockFile::new();
    let lm = lf.connect().await;
    let spawned = Instant::now();
    let mut holder = Helper::spawn(&["hold", &lf.url, "job", &TTL.as_millis().to_string()]);
    let fence = holder.expect_number("acquired");
    let acquired = Instant::now();
    let pid = holder.pid();
    holder.kill();
    let killed = Instant::now();

    let (info, expiry_not_before) = inspect_held(&lm, "job").await;
    assert_eq!(info.fence, Some(fence));
    assert_eq!(info.pid, Some(pid), "the row names the killed process");
    assert!(!info.released);
    if !info.expired {
        assert_eq!(
            info.held_for.unwrap() + info.expires_in.unwrap(),
            TTL,
            "the lease is the TTL from the grant: {info:?}"
        );
    }

    // Shortly after the kill the lock is still held.
    let tried = lm.lock("job").try_acquire().await.expect("try_acquire");
    let tried_at = SystemTime::now();
    if tried_at < expiry_not_before {
        assert!(
            tried.is_none(),
            "took over the lock of a killed holder before its TTL ended"
        );
    } else {
        eprintln!("machine too slow: the TTL ended before try_acquire returned; not checked");
    }
    drop(tried);

    // A waiter takes it over once the TTL has passed, not before, and promptly.
    let guard = lm
        .lock("job")
        .wait(Wait::For(TTL + Duration::from_secs(5)))
        .acquire()
        .await
        .expect("take over after the TTL");
    let (took_wall, took) = (SystemTime::now(), Instant::now());
    assert!(
        took_wall >= expiry_not_before,
        "took over {:?} before the lease ended",
        expiry_not_before
            .duration_since(took_wall)
            .unwrap_or_default()
    );
    assert!(
        took >= spawned + TTL,
        "took over {:?} after spawning the holder, under its TTL of {TTL:?}",
        took - spawned
    );
    assert!(
        took <= acquired + TTL + SLACK,
        "took over {:?} after the holder acquired (TTL {TTL:?}): too slow",
        took - acquired
    );
    assert!(guard.fence() > fence, "a takeover gets a higher fence");
    eprintln!(
        "kill → takeover {:?}; acquired → takeover {:?} (TTL {TTL:?})",
        took - killed,
        took - acquired
    );
    guard.release().await.unwrap();
}

/// A holder whose watchdog renews a 600 ms lease keeps the lock for seconds; once killed,
/// its last lease runs out and the lock is free again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewing_holder_keeps_the_lock_past_its_ttl() {
    const TTL: Duration = Duration::from_millis(600);
    const WAIT: Duration = Duration::from_millis(1500);
    let lf = LockFile::new();
    let lm = lf.connect().await;
    let mut holder = Helper::spawn(&[
        "hold",
        &lf.url,
        "job",
        &TTL.as_millis().to_string(),
        "--renew",
    ]);
    let fence = holder.expect_number("acquired");
    let acquired = Instant::now();

    let err = lm
        .lock("job")
        .wait(Wait::For(WAIT))
        .acquire()
        .await
        .expect_err("the renewing holder keeps the lock");
    assert!(err.is_timeout(), "{err}");
    let waited = acquired.elapsed();
    assert!(waited >= WAIT, "gave up after {waited:?}");

    let (info, _) = inspect_held(&lm, "job").await;
    assert_eq!(info.fence, Some(fence), "still the first grant: {info:?}");
    assert_eq!(info.pid, Some(holder.pid()));
    assert!(!info.expired && !info.released, "{info:?}");
    assert!(
        info.held_for.unwrap() >= 2 * TTL,
        "held for {:?}, expected well past the TTL",
        info.held_for
    );
    assert!(
        info.expires_in.unwrap() <= TTL,
        "a renewal never sets more than the TTL: {info:?}"
    );
    assert_eq!(
        holder.unread(),
        Vec::<String>::new(),
        "the holder reported a loss"
    );

    holder.kill();
    let killed = Instant::now();
    let (info, expiry_not_before) = inspect_held(&lm, "job").await;
    assert_eq!(info.fence, Some(fence));
    assert!(info.expires_in.unwrap() <= TTL, "{info:?}");
    let guard = lm
        .lock("job")
        .wait(Wait::For(TTL + Duration::from_secs(5)))
        .acquire()
        .await
        .expect("free after the last lease ran out");
    let (took_wall, took) = (SystemTime::now(), Instant::now());
    assert!(
        took_wall >= expiry_not_before,
        "took over {:?} before the last renewed lease ended",
        expiry_not_before
            .duration_since(took_wall)
            .unwrap_or_default()
    );
    assert!(
        took <= killed + TTL + SLACK,
        "free {:?} after the kill (TTL {TTL:?}): too slow",
        took - killed
    );
    assert!(guard.fence() > fence);
    eprintln!("kill → free {:?} (TTL {TTL:?})", took - killed);
    guard.release().await.unwrap();
}

/// `min_hold` set by one process keeps the lock from every other process until
/// `acquired_at + min_hold`, though its holder released it at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_hold_keeps_a_released_lock_from_other_processes() {
    const MIN_HOLD: Duration = Duration::from_millis(800);
    let lf = LockFile::new();
    let lm = lf.connect().await;
    let spawned = Instant::now();
    let mut helper = Helper::spawn(&[
        "min-hold",
        &lf.url,
        "nightly",
        &MIN_HOLD.as_millis().to_string(),
    ]);
    let fence = helper.expect_number("released");
    let released = Instant::now();
    helper.finish();

    let (info, expiry_not_before) = inspect_held(&lm, "nightly").await;
    assert_eq!(info.fence, Some(fence));
    if !info.expired {
        assert!(info.released, "released but kept: {info:?}");
        assert_eq!(
            info.held_for.unwrap() + info.expires_in.unwrap(),
            MIN_HOLD,
            "kept exactly until acquired_at + min_hold: {info:?}"
        );
    }

    let tried = lm.lock("nightly").try_acquire().await.expect("try_acquire");
    if SystemTime::now() < expiry_not_before {
        assert!(tried.is_none(), "acquired a lock kept by min_hold");
    } else {
        eprintln!("machine too slow: min_hold ended before try_acquire returned; not checked");
    }
    drop(tried);

    let guard = lm
        .lock("nightly")
        .wait(Wait::For(MIN_HOLD + Duration::from_secs(5)))
        .acquire()
        .await
        .expect("free after min_hold");
    let (took_wall, took) = (SystemTime::now(), Instant::now());
    assert!(
        took_wall >= expiry_not_before,
        "acquired {:?} before min_hold ended",
        expiry_not_before
            .duration_since(took_wall)
            .unwrap_or_default()
    );
    assert!(
        took >= spawned + MIN_HOLD,
        "acquired before min_hold could end"
    );
    assert!(
        took <= released + MIN_HOLD + SLACK,
        "free {:?} after the release (min_hold {MIN_HOLD:?}): too slow",
        took - released
    );
    assert!(guard.fence() > fence);
    guard.release().await.unwrap();
}

/// Fences come from a counter in the file: a new process, and a fresh connection after
/// every handle was dropped, get strictly higher fences than anything granted before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fences_keep_increasing_across_processes_and_reopens() {
    let lf = LockFile::new();
    let cycle = |n: usize| -> Vec<u64> {
        let mut helper = Helper::spawn(&["cycle", &lf.url, "deploy", &n.to_string()]);
        let fences: Vec<u64> = (0..n).map(|_| helper.expect_number("fence")).collect();
        helper.expect("done");
        helper.finish();
        assert_strictly_increasing(&fences, &helper.what);
        fences
    };

    let first = cycle(3);
    let second = cycle(3);
    assert!(
        second[0] > first[2],
        "a new process got fence {} after {} in an earlier one",
        second[0],
        first[2]
    );

    // This process: open, acquire, drop every handle (the worker closes the file), reopen.
    let mut last = second[2];
    for round in 0..2 {
        let lm = lf.connect().await;
        let guard = lm.lock("deploy").acquire().await.expect("acquire");
        assert!(
            guard.fence() > last,
            "round {round}: fence {} after {last}",
            guard.fence()
        );
        last = guard.fence();
        guard.release().await.unwrap();
        drop(lm);
        // Let the worker thread see its channel close and drop the connection.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let third = cycle(2);
    assert!(third[0] > last, "fence {} after {last}", third[0]);
}

/// A guard dropped just before its process ends is still released: the store's exit drain
/// waits for the worker's queue. Async (with the runtime's shutdown, and with
/// `process::exit` from inside the runtime) and blocking, each several times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guard_dropped_right_before_exit_is_released() {
    let file = LockFile::new();
    let lm = file.connect().await;
    for round in 0..9 {
        let cmd = ["drop-exit", "blocking-drop-exit", "exit-now"][round % 3];
        let mut helper = Helper::spawn(&[cmd, &file.url, "de"]);
        helper.expect("acquired");
        helper.finish();
        let info = lm.inspect("de").await.unwrap();
        assert!(
            info.is_none(),
            "{cmd}: the lock was left held after the process ended: {info:?}"
        );
    }
}

/// A waiter in another process polls (jittered backoff capped at 25 ms) rather than waiting
/// for its once-a-second re-poll or the holder's 60 s expiry: it gets the lock soon after
/// the release. The bound is loose on purpose; latency numbers belong in benchmarks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiter_in_another_process_gets_the_lock_soon_after_release() {
    let file = LockFile::new();
    let lm = file.connect().await;
    for _ in 0..3 {
        let helper = Helper::spawn(&["hold-for", &file.url, "hf", "300"]);
        helper.expect("acquired");
        let guard = lm
            .lock("hf")
            .wait(Wait::For(Duration::from_secs(10)))
            .acquire()
            .await
            .expect("acquired after the other process released");
        let got = SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_micros();
        let released: u128 = helper
            .expect("released")
            .trim()
            .parse()
            .expect("a timestamp");
        assert!(got >= released, "acquired before the release?");
        let lag = Duration::from_micros(u64::try_from(got - released).unwrap());
        assert!(
            lag < Duration::from_millis(500),
            "cross-process hand-off took {lag:?}: waiters are not polling"
        );
        guard.release().await.unwrap();
    }
}
