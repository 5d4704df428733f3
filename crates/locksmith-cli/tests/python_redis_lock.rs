//! Interop with the real python-redis-lock (PyPI, in a venv the test kit makes under
//! `CARGO_TARGET_TMPDIR`) on one test-kit `redis-server`: Python processes and locksmith
//! (library and CLI, `?layout=python-redis-lock`) contend for, wait for, hand over and
//! administer the same locks.
//!
//! No python3/venv/pip or no PyPI → SKIPPED (a failure with LOCKSMITH_TEST_REQUIRE_SERVERS=1).

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use locksmith::{Locksmith, Wait};
use locksmith_testkit::servers::python::{PyProcess, python_redis_lock};
use locksmith_testkit::servers::redis::{RedisConfig, RedisServer, Reply};

const BIN: &str = env!("CARGO_BIN_EXE_locksmith");

/// Python's side of every test: one script, a command per test.
const SCRIPT: &str = r#"
import sys, time, redis, redis_lock
port, cmd, name = int(sys.argv[1]), sys.argv[2], sys.argv[3]
# redis-py 8 reads with a 5 s socket timeout by default, shorter than the BLPOP a waiting
# python-redis-lock blocks in (up to `expire` seconds): without this a long wait dies with
# TimeoutError instead of waiting.
r = redis.Redis(port=port, socket_timeout=None)
def say(*words):
    print(*words, flush=True)
if cmd == "count":
    for _ in range(int(sys.argv[4])):
        with redis_lock.Lock(r, name, expire=30):
            if r.incr("inside") != 1:
                r.incr("overlaps")
            v = int(r.get("counter") or 0)
            time.sleep(0.002)
            r.set("counter", v + 1)
            r.decr("inside")
    say("done")
elif cmd == "wait":
    # expire=60 and no timeout: BLPOP waits 60 s unless a release signals
    lock = redis_lock.Lock(r, name, expire=60)
    say("waiting")
    lock.acquire()
    say("acquired")
    lock.release()
elif cmd == "hold":
    lock = redis_lock.Lock(r, name, expire=60)
    assert lock.acquire(blocking=False)
    say("held")
    for line in sys.stdin:
        if line.strip() == "release":
            try:
                lock.release()
                say("released")
            except redis_lock.NotAcquired:
                say("NotAcquired")
        else:
            break
elif cmd == "handover":
    lock = redis_lock.Lock(r, name, id=sys.argv[4])
    say("owner", lock.get_owner_id())
    lock.extend(100)
    say("ttl", r.ttl("lock:" + name))
    lock.release()
    say("exists", r.exists("lock:" + name))
"#;

type Py = PyProcess;

struct Setup {
    rt: tokio::runtime::Runtime,
    server: RedisServer,
    python: PathBuf,
}

impl Setup {
    fn new() -> Option<Setup> {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let server = rt.block_on(RedisServer::start(RedisConfig::default()))?;
        let python = python_redis_lock(std::path::Path::new(env!("CARGO_TARGET_TMPDIR")))?;
        Some(Setup { rt, server, python })
    }

    fn url(&self) -> String {
        format!("{}?layout=python-redis-lock", self.server.url())
    }

    fn lm(&self) -> Locksmith {
        self.rt.block_on(Locksmith::connect(&self.url())).unwrap()
    }

    fn redis(&self, args: &[&str]) -> Reply {
        self.rt.block_on(self.server.command(args))
    }

    fn py(&self, args: &[&str]) -> Py {
        let port = self.server.port().to_string();
        let args: Vec<&str> = std::iter::once(port.as_str())
            .chain(args.iter().copied())
            .collect();
        Py::start(&self.python, SCRIPT, &args)
    }

    /// Waits until `n` clients of the server block in BLPOP.
    fn blpops(&self, n: usize) {
        let start = Instant::now();
        loop {
            let list = self.redis(&["CLIENT", "LIST"]).text();
            if list.matches("cmd=blpop").count() >= n {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "no BLPOP: {list}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn int(r: Reply) -> i64 {
    match r {
        Reply::Int(i) => i,
        Reply::Bulk(Some(s)) => s.parse().unwrap(),
        Reply::Bulk(None) => 0,
        other => panic!("not an integer: {other:?}"),
    }
}

#[test]
fn python_and_rust_share_a_counter_without_overlap() {
    let Some(s) = Setup::new() else {
        return;
    };
    const EACH: usize = 25;
    let pys: Vec<Py> = (0..2)
        .map(|_| s.py(&["count", "ctr", &EACH.to_string()]))
        .collect();
    let port = s.server.port();
    let rust: Vec<_> = (0..2)
        .map(|_| {
            let lm = s.lm();
            s.rt.spawn(async move {
                let cmd = |args: &'static [&'static str]| {
                    locksmith_testkit::servers::redis::command(port, None, args)
                };
                for _ in 0..EACH {
                    let g = lm
                        .lock("ctr")
                        .ttl(Duration::from_secs(30))
                        .wait(Wait::For(Duration::from_secs(60)))
                        .acquire()
                        .await
                        .unwrap();
                    if int(cmd(&["INCR", "inside"]).await.unwrap()) != 1 {
                        cmd(&["INCR", "overlaps"]).await.unwrap();
                    }
                    let v = int(cmd(&["GET", "counter"]).await.unwrap());
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    let next = (v + 1).to_string();
                    locksmith_testkit::servers::redis::command(
                        port,
                        None,
                        &["SET", "counter", &next],
                    )
                    .await
                    .unwrap();
                    cmd(&["DECR", "inside"]).await.unwrap();
                    g.release().await.unwrap();
                }
            })
        })
        .collect();
    for t in rust {
        s.rt.block_on(t).unwrap();
    }
    for mut p in pys {
        assert_eq!(p.line(Duration::from_secs(120)).1, "done");
        p.finish();
    }
    assert_eq!(int(s.redis(&["GET", "overlaps"])), 0, "overlapping holds");
    assert_eq!(
        int(s.redis(&["GET", "counter"])),
        4 * EACH as i64,
        "lost updates"
    );
}

#[test]
fn a_rust_release_wakes_a_python_waiter() {
    let Some(s) = Setup::new() else {
        return;
    };
    let lm = s.lm();
    let g =
        s.rt.block_on(lm.lock("w").ttl(Duration::from_secs(60)).acquire())
            .unwrap();
    let mut py = s.py(&["wait", "w"]);
    assert_eq!(py.line(Duration::from_secs(30)).1, "waiting");
    s.blpops(1);
    let released = Instant::now();
    s.rt.block_on(g.release()).unwrap();
    let (at, line) = py.line(Duration::from_secs(30));
    assert_eq!(line, "acquired");
    // Python's own re-try would come after 60 s: only the signal explains this.
    let took = at.duration_since(released);
    assert!(took < Duration::from_secs(5), "woken after {took:?}");
    py.finish();
}

#[test]
fn a_python_release_wakes_a_rust_waiter() {
    let Some(s) = Setup::new() else {
        return;
    };
    let lm = s.lm();
    for round in 0..3 {
        let mut py = s.py(&["hold", "h"]);
        assert_eq!(py.line(Duration::from_secs(30)).1, "held");
        let waiter = {
            let lm = lm.clone();
            s.rt.spawn(async move {
                let g = lm
                    .lock("h")
                    .wait(Wait::For(Duration::from_secs(30)))
                    .acquire()
                    .await;
                let at = Instant::now();
                g.unwrap().release().await.unwrap();
                at
            })
        };
        // one BLPOP for this process's waiters of "h"; let the core's backoff reach its cap
        s.blpops(1);
        std::thread::sleep(Duration::from_millis(1500));
        py.send("release");
        let (released, line) = py.line(Duration::from_secs(30));
        assert_eq!(line, "released");
        let got = s.rt.block_on(waiter).unwrap();
        let took = got.saturating_duration_since(released);
        assert!(
            took < Duration::from_millis(400),
            "round {round}: Rust waiter got the lock {took:?} after Python's release"
        );
        py.finish();
    }
}

#[test]
fn python_extends_and_releases_a_lock_the_cli_acquired() {
    let Some(s) = Setup::new() else {
        return;
    };
    let token = "handover-4Kx9+/Zq=";
    let out = Command::new(BIN)
        .args([
            "--url",
            &s.url(),
            "acquire",
            "ho",
            "--ttl",
            "30s",
            "--token",
            token,
        ])
        .env_remove("LOCKSMITH_URL")
        .env_remove("LOCKSMITH_TOKEN")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        s.redis(&["GET", "lock:ho"]),
        Reply::Bulk(Some(token.into()))
    );
    assert_eq!(int(s.redis(&["TTL", "lock:ho"])), 30);
    let mut py = s.py(&["handover", "ho", token]);
    assert_eq!(py.line(Duration::from_secs(30)).1, format!("owner {token}"));
    let ttl: i64 = py.line(Duration::from_secs(30)).1[4..].parse().unwrap();
    assert!((99..=100).contains(&ttl), "{ttl}");
    assert_eq!(py.line(Duration::from_secs(30)).1, "exists 0");
    py.finish();
    // the CLI's token no longer holds it
    let out = Command::new(BIN)
        .args(["--url", &s.url(), "release", "ho", "--token", token])
        .env_remove("LOCKSMITH_URL")
        .env_remove("LOCKSMITH_TOKEN")
        .output()
        .unwrap();
    assert!(!out.status.success(), "{out:?}");
}

#[test]
fn list_inspect_clear_and_reset_all_administer_python_locks_only() {
    let Some(s) = Setup::new() else {
        return;
    };
    for (k, v) in [("unrelated", "1"), ("lockx", "2"), ("locksmith:{:a}", "3")] {
        s.redis(&["SET", k, v]);
    }
    let mut a = s.py(&["hold", "a"]);
    assert_eq!(a.line(Duration::from_secs(30)).1, "held");
    let mut b = s.py(&["hold", "b"]);
    assert_eq!(b.line(Duration::from_secs(30)).1, "held");
    let lm = s.lm();
    let names: Vec<String> =
        s.rt.block_on(lm.list(locksmith::ListQuery::all()))
            .unwrap()
            .items
            .into_iter()
            .map(|i| i.name)
            .collect();
    assert_eq!(names, ["a", "b"]);
    let info = s.rt.block_on(lm.inspect("a")).unwrap().unwrap();
    assert!(info.expires_in.unwrap() > Duration::from_secs(50));
    // the CLI sees them too
    let out = Command::new(BIN)
        .args(["--url", &s.url(), "list"])
        .env_remove("LOCKSMITH_URL")
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(listed.contains('a') && listed.contains('b'), "{listed}");
    assert_eq!(
        s.rt.block_on(lm.clear(["a"])).unwrap(),
        [("a".to_string(), true)]
    );
    a.send("release");
    assert_eq!(a.line(Duration::from_secs(30)).1, "NotAcquired");
    assert_eq!(s.rt.block_on(lm.reset_all()).unwrap(), 1);
    b.send("release");
    assert_eq!(b.line(Duration::from_secs(30)).1, "NotAcquired");
    a.finish();
    b.finish();
    for k in ["unrelated", "lockx", "locksmith:{:a}"] {
        assert_eq!(int(s.redis(&["EXISTS", k])), 1, "{k} was touched");
    }
}
