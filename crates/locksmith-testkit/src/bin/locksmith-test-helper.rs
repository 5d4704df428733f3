//! A helper process the SQLite cross-process tests re-execute
//! (`env!("CARGO_BIN_EXE_locksmith-test-helper")`).
//!
//! Subcommands, each over a store URL:
//!
//! - `counter URL NAME COUNTER_FILE FENCE_FILE M` — M times: acquire `NAME` (waiting
//!   forever), read an integer from `COUNTER_FILE`, sleep ~1 ms, write it back plus one,
//!   append the guard's fence to `FENCE_FILE` as a line, release. Prints `done`.
//! - `cycle URL NAME N` — N times: acquire `NAME`, print `fence <F>`, release. Prints `done`.
//! - `hold URL NAME TTL_MS [--renew]` — acquire with that TTL (renewed with `--renew`),
//!   print `acquired <F>`, then sleep forever. Prints `lost <reason>` if the lease is lost.
//! - `min-hold URL NAME MIN_HOLD_MS` — acquire with a 10 s TTL and that `min_hold`, release
//!   at once, print `released <F>` and exit.
//! - `hold-for URL NAME HOLD_MS` — acquire with a 60 s TTL, print `acquired <F>`, release
//!   after HOLD_MS and print `released <unix µs>`, the time read just before the release.
//! - `drop-exit URL NAME` — acquire with a 60 s TTL, print `acquired <F>`, drop the guard
//!   and exit at once (the release must not be lost to the exit).
//! - `blocking-drop-exit URL NAME` — the same through `locksmith::blocking`, from `main`.
//! - `exit-now URL NAME` — like `drop-exit`, but ends with `std::process::exit(0)` from
//!   inside the runtime: no runtime shutdown, no destructors.
//! - `spin URL NAME COUNTER_FILE FENCE_FILE M` — like `counter`, but never waits in the
//!   library: it spins on `try_acquire` (10 s lease, no renewal), so nothing but the
//!   store's atomic grant keeps two holders apart. Prints `done`.
//! - `wait URL NAME WAIT_MS` — print `waiting`, acquire `NAME` waiting at most WAIT_MS,
//!   print `acquired <F> <unix µs>` (or `timeout`), release, print `done`.
//! - `churn URL NAME HOLD_MS RUN_MS` — for RUN_MS: acquire (waiting forever), hold HOLD_MS,
//!   release, and at once again; prints `started` after the first grant and `done <N>`.
//! - `connect URL` — connect, print `ok` and exit 0, or print `error <kind>: <message>` and
//!   exit 1.
//!
//! `hold` exits (status 3, releasing nothing) when its stdin reaches end-of-file, so a test
//! that dies never leaves a holder behind: give it a pipe as stdin. Bad usage exits with
//! status 2.

use std::io::{Read, Write};
use std::process::ExitCode;
use std::time::Duration;

use locksmith::{Error, Locksmith, Renew, Wait};

const USAGE: &str = "usage: locksmith-test-helper \
    counter URL NAME COUNTER_FILE FENCE_FILE M | cycle URL NAME N | \
    hold URL NAME TTL_MS [--renew] | min-hold URL NAME MIN_HOLD_MS | \
    hold-for URL NAME HOLD_MS | drop-exit URL NAME | blocking-drop-exit URL NAME | \
    exit-now URL NAME | \
    spin URL NAME COUNTER_FILE FENCE_FILE M | wait URL NAME WAIT_MS | \
    churn URL NAME HOLD_MS RUN_MS | connect URL";

/// Microseconds since the Unix epoch, on this machine's clock.
fn unix_micros() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_micros()
}

/// One non-atomic increment of the integer in `counter_file` (read, sleep, write), then the
/// fence appended to `fence_file`: a second holder inside this window loses an update.
async fn critical_section(counter_file: &str, fence_file: &str, fence: u64) -> Result<(), String> {
    let text =
        std::fs::read_to_string(counter_file).map_err(|e| format!("read {counter_file}: {e}"))?;
    let value = match text.trim() {
        "" => 0,
        t => number("counter", t)?,
    };
    tokio::time::sleep(Duration::from_millis(1)).await;
    std::fs::write(counter_file, format!("{}\n", value + 1))
        .map_err(|e| format!("write {counter_file}: {e}"))?;
    let mut fences = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(fence_file)
        .map_err(|e| format!("open {fence_file}: {e}"))?;
    writeln!(fences, "{fence}").map_err(|e| format!("append to {fence_file}: {e}"))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [cmd, url, name] = &args[..]
        && cmd == "blocking-drop-exit"
    {
        return blocking_drop_exit(url, name);
    }
    tokio::runtime::Runtime::new()
        .expect("runtime")
        .block_on(async_main(args))
}

/// `blocking-drop-exit`: no runtime of our own, just the blocking facade.
fn blocking_drop_exit(url: &str, name: &str) -> ExitCode {
    let lm = match locksmith::blocking::Locksmith::connect(url) {
        Ok(lm) => lm,
        Err(e) => {
            eprintln!("locksmith-test-helper: connect {url}: {e}");
            return ExitCode::from(2);
        }
    };
    match lm.lock(name).ttl(Duration::from_secs(60)).acquire() {
        Ok(guard) => {
            say(&format!("acquired {}", guard.fence()));
            drop(guard);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("locksmith-test-helper: acquire: {e}");
            ExitCode::from(2)
        }
    }
}

async fn async_main(args: Vec<String>) -> ExitCode {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match run(&args).await {
        Ok(code) => code,
        Err(message) => {
            eprintln!("locksmith-test-helper: {message}");
            ExitCode::from(2)
        }
    }
}

/// Prints one line on stdout and flushes it, so the test sees it at once.
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    // A test that stopped reading is gone; nothing to report to.
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn number(what: &str, text: &str) -> Result<u64, String> {
    text.parse()
        .map_err(|e| format!("{what} {text:?} is not a number ({e})\n{USAGE}"))
}

fn failed(what: &str, e: &Error) -> String {
    format!("{what} failed: {e}")
}

/// Exits the process, without running destructors, once stdin reaches end-of-file (the
/// test that spawned this helper went away).
fn exit_on_stdin_eof() {
    std::thread::spawn(|| {
        let mut sink = [0_u8; 64];
        let mut stdin = std::io::stdin();
        while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
        std::process::exit(3);
    });
}

async fn connect(url: &str) -> Result<Locksmith, String> {
    Locksmith::connect(url)
        .await
        .map_err(|e| failed(&format!("connect {url}"), &e))
}

async fn run(args: &[&str]) -> Result<ExitCode, String> {
    match args {
        ["counter", url, name, counter_file, fence_file, m] => {
            let m = number("M", m)?;
            let lm = connect(url).await?;
            for _ in 0..m {
                let guard = lm
                    .lock(*name)
                    .wait(Wait::Forever)
                    .acquire()
                    .await
                    .map_err(|e| failed("acquire", &e))?;
                critical_section(counter_file, fence_file, guard.fence()).await?;
                guard.release().await.map_err(|e| failed("release", &e))?;
            }
            say("done");
            Ok(ExitCode::SUCCESS)
        }
        ["cycle", url, name, n] => {
            let n = number("N", n)?;
            let lm = connect(url).await?;
            for _ in 0..n {
                let guard = lm
                    .lock(*name)
                    .acquire()
                    .await
                    .map_err(|e| failed("acquire", &e))?;
                say(&format!("fence {}", guard.fence()));
                guard.release().await.map_err(|e| failed("release", &e))?;
            }
            say("done");
            Ok(ExitCode::SUCCESS)
        }
        ["hold", url, name, ttl_ms, rest @ ..] => {
            let ttl = Duration::from_millis(number("TTL_MS", ttl_ms)?);
            let renew = match rest {
                [] => Renew::Off,
                ["--renew"] => Renew::Auto,
                _ => return Err(format!("unexpected arguments {rest:?}\n{USAGE}")),
            };
            exit_on_stdin_eof();
            let lm = connect(url).await?;
            let guard = lm
                .lock(*name)
                .ttl(ttl)
                .renew(renew)
                .wait(Wait::Forever)
                .acquire()
                .await
                .map_err(|e| failed("acquire", &e))?;
            say(&format!("acquired {}", guard.fence()));
            let reason = guard.lost().await;
            say(&format!("lost {reason}"));
            // Keep holding (what is left of) the guard until killed.
            std::future::pending::<()>().await;
            drop(guard);
            Ok(ExitCode::SUCCESS)
        }
        ["min-hold", url, name, min_hold_ms] => {
            let min_hold = Duration::from_millis(number("MIN_HOLD_MS", min_hold_ms)?);
            let lm = connect(url).await?;
            let guard = lm
                .lock(*name)
                .ttl(Duration::from_secs(10))
                .min_hold(min_hold)
                .wait(Wait::Forever)
                .acquire()
                .await
                .map_err(|e| failed("acquire", &e))?;
            let fence = guard.fence();
            guard.release().await.map_err(|e| failed("release", &e))?;
            say(&format!("released {fence}"));
            Ok(ExitCode::SUCCESS)
        }
        ["hold-for", url, name, hold_ms] => {
            // Hold with a long lease, release after HOLD_MS, and say when (wall clock, µs).
            let hold = Duration::from_millis(number("HOLD_MS", hold_ms)?);
            let lm = connect(url).await?;
            let guard = lm
                .lock(*name)
                .ttl(Duration::from_secs(60))
                .acquire()
                .await
                .map_err(|e| failed("acquire", &e))?;
            say(&format!("acquired {}", guard.fence()));
            tokio::time::sleep(hold).await;
            // The time is read before the release starts: a waiter may get the lock (and
            // read its own clock) before this process sees `release` return.
            let releasing = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock after 1970");
            guard.release().await.map_err(|e| failed("release", &e))?;
            say(&format!("released {}", releasing.as_micros()));
            Ok(ExitCode::SUCCESS)
        }
        ["drop-exit", url, name] => {
            // Acquire, drop the guard and end at once: the release must still happen.
            let lm = connect(url).await?;
            let guard = lm
                .lock(*name)
                .ttl(Duration::from_secs(60))
                .acquire()
                .await
                .map_err(|e| failed("acquire", &e))?;
            say(&format!("acquired {}", guard.fence()));
            drop(guard);
            Ok(ExitCode::SUCCESS)
        }
        ["exit-now", url, name] => {
            // Acquire, drop the guard and exit the process from inside the runtime.
            let lm = connect(url).await?;
            let guard = lm
                .lock(*name)
                .ttl(Duration::from_secs(60))
                .acquire()
                .await
                .map_err(|e| failed("acquire", &e))?;
            say(&format!("acquired {}", guard.fence()));
            drop(guard);
            std::process::exit(0)
        }
        ["spin", url, name, counter_file, fence_file, m] => {
            let m = number("M", m)?;
            let lm = connect(url).await?;
            let mut done = 0;
            while done < m {
                let tried = lm
                    .lock(*name)
                    .ttl(Duration::from_secs(10))
                    .renew(Renew::Off)
                    .try_acquire()
                    .await
                    .map_err(|e| failed("try_acquire", &e))?;
                let Some(guard) = tried else {
                    tokio::time::sleep(Duration::from_micros(500)).await;
                    continue;
                };
                critical_section(counter_file, fence_file, guard.fence()).await?;
                guard.release().await.map_err(|e| failed("release", &e))?;
                done += 1;
            }
            say("done");
            Ok(ExitCode::SUCCESS)
        }
        ["wait", url, name, wait_ms] => {
            let wait = Duration::from_millis(number("WAIT_MS", wait_ms)?);
            let lm = connect(url).await?;
            say("waiting");
            match lm
                .lock(*name)
                .ttl(Duration::from_secs(60))
                .renew(Renew::Off)
                .wait(Wait::For(wait))
                .acquire()
                .await
            {
                Ok(guard) => {
                    say(&format!("acquired {} {}", guard.fence(), unix_micros()));
                    guard.release().await.map_err(|e| failed("release", &e))?;
                }
                Err(e) if e.is_timeout() => say("timeout"),
                Err(e) => return Err(failed("acquire", &e)),
            }
            say("done");
            Ok(ExitCode::SUCCESS)
        }
        ["churn", url, name, hold_ms, run_ms] => {
            let hold = Duration::from_millis(number("HOLD_MS", hold_ms)?);
            let run = Duration::from_millis(number("RUN_MS", run_ms)?);
            exit_on_stdin_eof();
            let lm = connect(url).await?;
            let start = std::time::Instant::now();
            let mut grants = 0_u64;
            while start.elapsed() < run {
                let guard = lm
                    .lock(*name)
                    .ttl(Duration::from_secs(10))
                    .renew(Renew::Off)
                    .wait(Wait::Forever)
                    .acquire()
                    .await
                    .map_err(|e| failed("acquire", &e))?;
                grants += 1;
                if grants == 1 {
                    say("started");
                }
                tokio::time::sleep(hold).await;
                guard.release().await.map_err(|e| failed("release", &e))?;
            }
            say(&format!("done {grants}"));
            Ok(ExitCode::SUCCESS)
        }
        ["connect", url] => match Locksmith::connect(url).await {
            Ok(_) => {
                say("ok");
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                let kind = match &e {
                    Error::Config { .. } => "config",
                    Error::Store { .. } => "store",
                    _ => "other",
                };
                say(&format!("error {kind}: {e}"));
                Ok(ExitCode::from(1))
            }
        },
        _ => Err(format!("bad arguments {args:?}\n{USAGE}")),
    }
}
