//! The `locksmith` binary end to end, on SQLite files in temporary directories: `run` (mutual
//! exclusion, `--wait`, exit codes, signal forwarding, a lock cleared under it, `--min-hold`),
//! the scripting primitives, the operator commands, JSON output against the README's schema,
//! and how bad input is reported.
//!
//! Every test has its own directory and store. Time bounds are generous ("within 10 s"); the
//! "not before" checks are exact.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command as StdCommand, ExitStatus, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use assert_cmd::Command;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use predicates::prelude::*;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_locksmith");

/// The bound on anything that should finish promptly.
const LIMIT: Duration = Duration::from_secs(20);

/// Variables of the test's own environment that would change what `locksmith` does.
const FOREIGN_ENV: [&str; 4] = ["LOCKSMITH_URL", "LOCKSMITH_TOKEN", "RUST_LOG", "NO_COLOR"];

/// A store of its own: `<tmpdir>/locks.db`.
struct Store {
    dir: tempfile::TempDir,
    url: String,
}

/// A finished invocation.
#[derive(Debug)]
struct Done {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Done {
    fn lines(&self) -> Vec<&str> {
        self.stdout.lines().collect()
    }

    /// Every stdout line as a JSON object with a string `type`.
    fn json(&self) -> Vec<Value> {
        self.stdout.lines().map(parse_object).collect()
    }
}

fn parse_object(line: &str) -> Value {
    let v: Value = serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("not one JSON object per line: {line:?}: {e}"));
    assert!(v.is_object(), "not an object: {line}");
    assert!(v["type"].is_string(), "no \"type\": {line}");
    v
}

impl Store {
    fn new() -> Store {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("locks.db").display());
        assert!(url.starts_with("sqlite:///"), "{url}");
        Store { dir, url }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `locksmith --url <this store> ARGS…`, bounded by [`LIMIT`].
    fn cmd(&self, args: &[&str]) -> Command {
        let mut all = vec!["--url", &self.url];
        all.extend_from_slice(args);
        bare(&all)
    }

    fn run(&self, args: &[&str]) -> Done {
        to_done(self.cmd(args).output().expect("run locksmith"))
    }

    /// Runs and expects exit 0 and every stdout line to be a JSON object.
    fn json(&self, args: &[&str]) -> Vec<Value> {
        let mut all = vec!["--format", "json"];
        all.extend_from_slice(args);
        let done = self.run(&all);
        assert_eq!(done.code, Some(0), "{args:?}: {done:?}");
        done.json()
    }

    /// `locksmith --url <this store> ARGS…` in the background, stdout and stderr piped.
    fn spawn(&self, args: &[&str]) -> Background {
        let mut cmd = StdCommand::new(BIN);
        cmd.args(["--url", &self.url]).args(args);
        for var in FOREIGN_ENV {
            cmd.env_remove(var);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn locksmith");
        Background(Some(child))
    }

    /// Exit code of `status NAME` (0 held, 1 free).
    fn status(&self, name: &str) -> i32 {
        self.run(&["-q", "status", name])
            .code
            .expect("status exited by a signal")
    }

    /// The `lock` lines of `list --expired`, by name.
    fn list(&self) -> Vec<Value> {
        self.json(&["list", "--expired"])
    }

    /// Acquires NAME, returning (token, fence).
    fn acquire(&self, name: &str, ttl: &str) -> (String, u64) {
        let done = self.run(&["acquire", name, "--ttl", ttl]);
        assert_eq!(done.code, Some(0), "{done:?}");
        let lines = done.lines();
        assert_eq!(lines.len(), 2, "acquire prints token= and fence=: {done:?}");
        let token = lines[0]
            .strip_prefix("token=")
            .expect("token=…")
            .to_string();
        let fence = lines[1]
            .strip_prefix("fence=")
            .expect("fence=…")
            .parse()
            .expect("fence is a number");
        assert!(!token.is_empty());
        (token, fence)
    }
}

/// `locksmith ARGS…` without a store, bounded by [`LIMIT`].
fn bare(args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    for var in FOREIGN_ENV {
        cmd.env_remove(var);
    }
    cmd.args(args).timeout(LIMIT);
    cmd
}

fn to_done(output: std::process::Output) -> Done {
    Done {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// A `locksmith` in the background, killed if the test ends (fails) before it exits.
struct Background(Option<Child>);

impl Background {
    fn pid(&self) -> Pid {
        let id = self.0.as_ref().expect("running").id();
        Pid::from_raw(i32::try_from(id).expect("pid"))
    }

    fn has_exited(&mut self) -> bool {
        let child = self.0.as_mut().expect("running");
        child.try_wait().expect("try_wait").is_some()
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Waits for a background `locksmith` to exit; kills it and fails after `limit`.
fn finish(mut background: Background, limit: Duration) -> (Done, Duration) {
    let mut child = background.0.take().expect("running");
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            let elapsed = start.elapsed();
            return (collect(child, status), elapsed);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let output = child.wait_with_output().expect("output");
            panic!(
                "locksmith still running after {limit:?}; stderr: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        sleep(Duration::from_millis(10));
    }
}

fn collect(child: Child, status: ExitStatus) -> Done {
    let output = child.wait_with_output().expect("output");
    Done {
        code: status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Polls `cond` every 20 ms; fails after `limit`.
fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "timed out after {limit:?}: {what}");
        sleep(Duration::from_millis(20));
    }
}

fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 temp path")
}

/// Asserts stderr is exactly one non-empty line, and returns it.
fn one_line(done: &Done) -> &str {
    let lines: Vec<&str> = done.stderr.trim_end().lines().collect();
    assert_eq!(lines.len(), 1, "not one line on stderr: {done:?}");
    assert!(!lines[0].trim().is_empty(), "{done:?}");
    lines[0]
}

fn names(lines: &[Value]) -> BTreeSet<String> {
    lines
        .iter()
        .map(|v| v["name"].as_str().expect("name").to_string())
        .collect()
}

fn find<'a>(lines: &'a [Value], name: &str) -> &'a Value {
    lines
        .iter()
        .find(|v| v["name"] == name)
        .unwrap_or_else(|| panic!("no {name:?} in {lines:?}"))
}

/// Checks a `lock` (or held `status`) object against the README's schema.
fn check_lock_fields(v: &Value) {
    for key in ["name", "owner", "host"] {
        assert!(v[key].is_string(), "{key} is not a string: {v}");
    }
    for key in ["pid", "fence", "held_for_ms", "acquired_at_ms"] {
        assert!(v[key].is_u64(), "{key} is not a number: {v}");
    }
    for key in ["expires_in_ms", "expires_at_ms"] {
        assert!(
            v[key].is_u64() || v[key].is_null(),
            "{key} is not a number or null: {v}"
        );
    }
    assert_eq!(
        v["expires_in_ms"].is_null(),
        v["expires_at_ms"].is_null(),
        "{v}"
    );
    for key in ["expired", "released"] {
        assert!(v[key].is_boolean(), "{key} is not a boolean: {v}");
    }
    assert!(v.get("token").is_none(), "a lock line shows a token: {v}");
}

// ---------------------------------------------------------------------------------------------
// run: one at a time

/// The script of a `run` that records it ran (`ran-ID`) and holds until `go` exists (or 30 s
/// pass, should the test fail before making it): `sh -c SCRIPT sh DIR ID`.
const HOLD_UNTIL_GO: &str = r#"touch "$1/ran-$2"; i=0
while [ ! -e "$1/go" ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i + 1)); done
echo "done $2""#;

#[test]
fn two_concurrent_runs_one_runs_the_other_exits_75() {
    let store = Store::new();
    let dir = s(store.dir.path()).to_string();
    let hold = |id| {
        store.spawn(&[
            "run",
            "job",
            "--",
            "sh",
            "-c",
            HOLD_UNTIL_GO,
            "sh",
            &dir,
            id,
        ])
    };
    let mut runs = vec![(hold("a"), "a"), (hold("b"), "b")];

    // Whichever loses exits at once with 75; the winner holds until `go`.
    let start = Instant::now();
    let loser = loop {
        if let Some(i) = runs.iter_mut().position(|(run, _)| run.has_exited()) {
            break i;
        }
        assert!(start.elapsed() < LIMIT, "neither run exited");
        sleep(Duration::from_millis(10));
    };
    let (loser, loser_id) = runs.remove(loser);
    let (winner, winner_id) = runs.remove(0);
    let (lost, _) = finish(loser, LIMIT);
    assert_eq!(lost.code, Some(75), "the second run: {lost:?}");
    assert!(lost.stderr.contains("held by"), "{lost:?}");
    assert!(!lost.stdout.contains("done"), "{lost:?}");

    wait_until("the winner's command starts", LIMIT, || {
        store.path(&format!("ran-{winner_id}")).exists()
    });
    std::fs::write(store.path("go"), "").unwrap();
    let (won, _) = finish(winner, LIMIT);
    assert_eq!(won.code, Some(0), "{won:?}");
    assert_eq!(won.stdout.trim(), format!("done {winner_id}"));
    assert!(
        !store.path(&format!("ran-{loser_id}")).exists(),
        "both commands ran"
    );
    assert_eq!(store.status("job"), 1, "the lock is released after run");
}

#[test]
fn a_busy_run_exits_75_or_waits_with_wait() {
    let store = Store::new();
    let dir = s(store.dir.path()).to_string();
    let holder = store.spawn(&[
        "run",
        "job",
        "--",
        "sh",
        "-c",
        HOLD_UNTIL_GO,
        "sh",
        &dir,
        "a",
    ]);
    wait_until("the holder's command starts", LIMIT, || {
        store.path("ran-a").exists()
    });

    let touch = |id: &str| format!("touch {}", s(&store.path(&format!("ran-{id}"))));
    let busy = store.run(&["run", "job", "--", "sh", "-c", &touch("b")]);
    assert_eq!(busy.code, Some(75), "{busy:?}");
    assert!(one_line(&busy).contains("held by"), "{busy:?}");
    assert!(!store.path("ran-b").exists(), "ran while the lock was held");

    let busy = store.run(&["run", "job", "--busy-exit-code", "9", "--", "true"]);
    assert_eq!(busy.code, Some(9), "--busy-exit-code: {busy:?}");

    let timeout = store.run(&[
        "run",
        "job",
        "--wait",
        "200ms",
        "--",
        "sh",
        "-c",
        &touch("t"),
    ]);
    assert_eq!(timeout.code, Some(4), "--wait ran out: {timeout:?}");
    assert!(!store.path("ran-t").exists());

    let mut waiter = store.spawn(&["run", "job", "--wait", "30s", "--", "sh", "-c", &touch("w")]);
    sleep(Duration::from_millis(300));
    assert!(!waiter.has_exited(), "the waiter gave up");
    assert!(!store.path("ran-w").exists(), "the waiter ran while held");

    std::fs::write(store.path("go"), "").unwrap();
    let (held, _) = finish(holder, LIMIT);
    assert_eq!(held.code, Some(0), "{held:?}");
    let (waited, _) = finish(waiter, LIMIT);
    assert_eq!(waited.code, Some(0), "{waited:?}");
    assert!(store.path("ran-w").exists(), "the waiter did not run");
    assert_eq!(store.status("job"), 1);
}

// ---------------------------------------------------------------------------------------------
// run: the command's exit, environment and signals

#[test]
fn run_exits_with_the_commands_code() {
    let store = Store::new();
    let cases: [(&[&str], i32); 5] = [
        (&["true"], 0),
        (&["sh", "-c", "exit 7"], 7),
        (&["sh", "-c", "kill -KILL $$"], 128 + 9),
        (&["sh", "-c", "kill -TERM $$"], 128 + 15),
        (&["/nonexistent/command"], 127),
    ];
    for (command, code) in cases {
        let mut args = vec!["run", "job", "--"];
        args.extend_from_slice(command);
        let done = store.run(&args);
        assert_eq!(done.code, Some(code), "{command:?}: {done:?}");
        assert_eq!(store.status("job"), 1, "{command:?} left the lock held");
    }

    // the result goes to stderr: stdout is the command's alone
    let done = store.run(&[
        "--format",
        "json",
        "run",
        "job",
        "--",
        "echo",
        "from the command",
    ]);
    assert_eq!(done.code, Some(0), "{done:?}");
    assert_eq!(done.stdout, "from the command\n", "{done:?}");
    let result = parse_object(one_line(&done));
    assert_eq!(result["type"], "run");
    assert_eq!(result["name"], "job");
    assert!(result["fence"].is_u64());
    assert_eq!(result["exit_code"], 0);
}

#[test]
fn the_command_sees_its_lock_in_the_environment() {
    let store = Store::new();
    // prints the variables, then what `status` says about the lock while the command runs
    let script = r#"echo "$LOCKSMITH_NAME|$LOCKSMITH_FENCE|$LOCKSMITH_OWNER"; "$1" --url "$2" --format json status "$LOCKSMITH_NAME""#;
    let mut fences = vec![];
    for owner in [None, Some("nightly")] {
        let mut args = vec!["run", "env/job"];
        if let Some(owner) = owner {
            args.extend(["--owner", owner]);
        }
        args.extend(["--", "sh", "-c", script, "sh", BIN, &store.url]);
        let done = store.run(&args);
        assert_eq!(done.code, Some(0), "{done:?}");
        let lines = done.lines();
        assert_eq!(lines.len(), 2, "{done:?}");
        let vars: Vec<&str> = lines[0].split('|').collect();
        assert_eq!(vars[0], "env/job");
        let fence: u64 = vars[1]
            .parse()
            .unwrap_or_else(|_| panic!("LOCKSMITH_FENCE is not a number: {vars:?}"));
        assert!(!vars[2].is_empty(), "LOCKSMITH_OWNER is empty");
        if let Some(owner) = owner {
            assert_eq!(vars[2], owner);
        }
        let status = parse_object(lines[1]);
        assert_eq!(status["held"], true, "{status}");
        assert_eq!(
            status["fence"], fence,
            "LOCKSMITH_FENCE is not the lock's fence"
        );
        assert_eq!(
            status["owner"], vars[2],
            "LOCKSMITH_OWNER is not the lock's owner"
        );
        fences.push(fence);
    }
    assert!(fences[1] > fences[0], "fences do not grow: {fences:?}");
}

/// `sh -c SCRIPT sh READY CODE SIG`: exits CODE on SIG; creates READY once the trap is set.
const TRAP: &str = r#"trap 'kill $! 2>/dev/null; exit $2' "$3"; sleep 10 & touch "$1"; wait"#;

#[test]
fn signals_are_forwarded_to_the_command() {
    let store = Store::new();
    for (signal, code) in [
        (Signal::SIGTERM, 42),
        (Signal::SIGHUP, 43),
        (Signal::SIGINT, 44),
    ] {
        let name = signal.as_str().trim_start_matches("SIG");
        let ready = store.path(&format!("ready-{name}"));
        let code_arg = code.to_string();
        let child = store.spawn(&[
            "run",
            "job",
            "--",
            "sh",
            "-c",
            TRAP,
            "sh",
            s(&ready),
            &code_arg,
            name,
        ]);
        wait_until("the command sets its trap", LIMIT, || ready.exists());
        kill(child.pid(), signal).expect("signal locksmith");
        let (done, _) = finish(child, LIMIT);
        assert_eq!(done.code, Some(code), "{signal}: {done:?}");
        assert_eq!(store.status("job"), 1, "{signal}: the lock is still held");
    }
}

#[test]
fn a_signal_while_waiting_gives_up_and_holds_nothing() {
    let store = Store::new();
    let (token, _) = store.acquire("busy", "60s");
    let ran = store.path("ran");
    let waiter = store.spawn(&["run", "busy", "--wait", "forever", "--", "touch", s(&ran)]);
    std::thread::sleep(Duration::from_millis(300));
    kill(waiter.pid(), Signal::SIGTERM).expect("signal locksmith");
    let (done, took) = finish(waiter, LIMIT);
    assert_eq!(done.code, Some(128 + 15), "{done:?}");
    assert!(took < LIMIT);
    assert!(one_line(&done).contains("interrupted"), "{done:?}");
    assert!(
        !ran.exists(),
        "the command ran although the wait was interrupted"
    );
    // the holder is untouched, and nothing else holds or waits
    let released = store.run(&["release", "busy", "--token", &token]);
    assert_eq!(released.code, Some(0), "{released:?}");
    assert_eq!(store.status("busy"), 1);
}

// ---------------------------------------------------------------------------------------------
// run: the lock lost while the command runs

#[test]
fn a_lock_cleared_under_run_stops_the_command_and_exits_76() {
    let store = Store::new();
    let pid_file = store.path("pid");
    // ignores SIGTERM, and is the process locksmith started (exec), so SIGKILL reaches it
    let script = r#"trap "" TERM; echo $$ > "$1.tmp"; mv "$1.tmp" "$1"; exec sleep 30"#;
    let child = store.spawn(&[
        "run",
        "job",
        "--ttl",
        "1s",
        "--kill-grace",
        "500ms",
        "--",
        "sh",
        "-c",
        script,
        "sh",
        s(&pid_file),
    ]);
    wait_until("the command starts", LIMIT, || pid_file.exists());
    let command_pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();

    let cleared_at = Instant::now();
    let clear = store.run(&["clear", "job"]);
    assert_eq!(clear.code, Some(0), "{clear:?}");
    assert_eq!(clear.stdout.trim(), "cleared job");

    // renewals every ttl/3 notice the loss; then SIGTERM (ignored), 500 ms, SIGKILL
    let (done, _) = finish(child, Duration::from_secs(10));
    let took = cleared_at.elapsed();
    assert_eq!(done.code, Some(76), "{done:?}");
    assert!(
        took >= Duration::from_millis(500),
        "exited {took:?} after the clear: before --kill-grace ran out"
    );
    let message = one_line(&done);
    assert!(
        message.contains("\"job\"") && message.contains("lost") && message.contains("SIGKILL"),
        "the message does not say why: {message}"
    );
    assert_eq!(
        kill(Pid::from_raw(command_pid), None),
        Err(nix::errno::Errno::ESRCH),
        "the command is still running"
    );
    assert_eq!(store.status("job"), 1);
}

#[test]
fn a_lost_lock_in_json_mode_is_a_json_error_line() {
    let store = Store::new();
    let ready = store.path("ready");
    let child = store.spawn(&[
        "--format",
        "json",
        "run",
        "job",
        "--ttl",
        "1s",
        "--",
        "sh",
        "-c",
        r#"touch "$1"; exec sleep 30"#,
        "sh",
        s(&ready),
    ]);
    wait_until("the command starts", LIMIT, || ready.exists());
    let clear = store.json(&["clear", "job"]);
    assert_eq!(clear.len(), 1);
    assert_eq!(clear[0]["existed"], true);
    // the command dies of SIGTERM: no need to wait for the default 10 s grace
    let (done, took) = finish(child, Duration::from_secs(9));
    assert_eq!(done.code, Some(76), "{done:?}");
    assert!(took < Duration::from_secs(9));
    let error = parse_object(one_line(&done));
    assert_eq!(error["type"], "error");
    assert_eq!(error["code"], 76);
    assert!(
        error["message"].as_str().unwrap().contains("lost"),
        "{error}"
    );
}

#[test]
fn a_lock_cleared_by_the_command_itself_is_reported_as_lost() {
    let store = Store::new();
    // a long TTL: the watchdog does not renew before the command ends; release finds it gone
    let script = r#""$1" --url "$2" clear job >/dev/null 2>&1; exit 5"#;
    let done = store.run(&[
        "run", "job", "--ttl", "60s", "--", "sh", "-c", script, "sh", BIN, &store.url,
    ]);
    assert_eq!(done.code, Some(76), "{done:?}");
    assert!(one_line(&done).contains("lost"), "{done:?}");
}

// ---------------------------------------------------------------------------------------------
// run --min-hold

#[test]
fn min_hold_keeps_the_lock_after_the_command_ends() {
    let store = Store::new();
    let min_hold = Duration::from_secs(3);
    let start = Instant::now();
    let first = store.run(&["run", "hourly", "--min-hold", "3s", "--", "true"]);
    assert_eq!(first.code, Some(0), "{first:?}");

    let list = store.json(&["list"]);
    let lock = find(&list, "hourly");
    check_lock_fields(lock);
    assert_eq!(lock["released"], true, "{lock}");
    assert_eq!(lock["expired"], false, "{lock}");

    let ran = store.path("ran");
    let touch = format!("touch {}", s(&ran));
    let second = store.run(&["run", "hourly", "--", "sh", "-c", &touch]);
    if start.elapsed() < min_hold {
        assert_eq!(second.code, Some(75), "a run inside --min-hold: {second:?}");
        assert!(second.stderr.contains("held by"), "{second:?}");
        assert!(!ran.exists());
    } else {
        eprintln!("note: too slow to check a run inside the --min-hold period");
    }

    wait_until("the --min-hold period ends", LIMIT, || {
        store.status("hourly") == 1
    });
    assert!(
        start.elapsed() >= min_hold,
        "free {:?} after the first run started, before --min-hold 3s",
        start.elapsed()
    );
    let third = store.run(&["run", "hourly", "--", "sh", "-c", &touch]);
    assert_eq!(third.code, Some(0), "a run after --min-hold: {third:?}");
    assert!(ran.exists());
}

// ---------------------------------------------------------------------------------------------
// acquire, extend, release, status

#[test]
fn acquire_extend_release_with_a_token() {
    let store = Store::new();
    let (token, fence) = store.acquire("migration", "5s");
    assert!(fence >= 1);
    assert_eq!(
        store.status("migration"),
        0,
        "the lock does not outlive acquire"
    );
    let busy = store.run(&["acquire", "migration"]);
    assert_eq!(busy.code, Some(75), "{busy:?}");
    // for `eval "$(locksmith acquire …)"`: fails with the same code
    assert_eq!(busy.stdout, "(exit 75)\n", "{busy:?}");

    let expires_in = || {
        let status = store.json(&["status", "migration"]);
        status[0]["expires_in_ms"].as_u64().expect("expires_in_ms")
    };
    assert!(expires_in() <= 5_000);
    let extend = store.run(&["extend", "migration", "--token", &token, "--ttl", "60s"]);
    assert_eq!(extend.code, Some(0), "{extend:?}");
    assert!(expires_in() > 30_000, "extend did not move the expiry");

    let wrong = "00000000-0000-4000-8000-000000000000";
    for cmd in [
        vec!["extend", "migration", "--token", wrong, "--ttl", "1s"],
        vec!["release", "migration", "--token", wrong],
        vec!["release", "migration", "--token", "not-a-token"],
    ] {
        let done = store.run(&cmd);
        assert_eq!(done.code, Some(1), "{cmd:?}: {done:?}");
        assert!(
            one_line(&done).contains("not held by this token"),
            "{done:?}"
        );
        assert_eq!(store.status("migration"), 0, "{cmd:?} released the lock");
    }

    // the token from the environment, as `eval "$(locksmith acquire …)"` scripts do
    let release = store
        .cmd(&["release", "migration"])
        .env("LOCKSMITH_TOKEN", &token)
        .output()
        .unwrap();
    assert_eq!(release.status.code(), Some(0), "{release:?}");
    assert_eq!(store.status("migration"), 1);

    for cmd in [
        vec!["release", "migration", "--token", &token],
        vec!["extend", "migration", "--token", &token, "--ttl", "1s"],
    ] {
        let done = store.run(&cmd);
        assert_eq!(done.code, Some(1), "{cmd:?} after release: {done:?}");
    }

    let (_, next) = store.acquire("migration", "5s");
    assert!(next > fence, "the fence did not grow: {fence} then {next}");
}

#[test]
fn status_exits_0_when_held_and_1_when_free() {
    let store = Store::new();
    let free = store.run(&["status", "backup"]);
    assert_eq!(free.code, Some(1), "{free:?}");
    assert_eq!(free.stdout.trim(), "backup is free");

    store.acquire("backup", "30s");
    let held = store.run(&["status", "backup"]);
    assert_eq!(held.code, Some(0), "{held:?}");
    assert!(held.stdout.starts_with("backup is held by "), "{held:?}");
    assert!(held.stdout.contains("fence"), "{held:?}");

    store
        .cmd(&["-q", "status", "backup"])
        .assert()
        .code(0)
        .stdout("");
    store
        .cmd(&["-q", "status", "other"])
        .assert()
        .code(1)
        .stdout("");
}

#[test]
fn only_acquire_prints_the_token() {
    let store = Store::new();
    let (token, _) = store.acquire("secret", "30s");
    let json = store.json(&["acquire", "secret2", "--ttl", "30s"]);
    let token2 = json[0]["token"].as_str().expect("token").to_string();

    let commands: Vec<Vec<&str>> = vec![
        vec!["list"],
        vec!["list", "--expired"],
        vec!["list", "sec"],
        vec!["status", "secret"],
        vec!["status", "secret2"],
        vec!["set", "secret", "secret2", "other", "--ttl", "30s"],
        vec!["set", "secret", "--fail"],
        vec!["set", "secret", "--only-renew"],
        vec!["extend", "secret", "--token", &token, "--ttl", "30s"],
        vec!["extend", "secret2", "--token", &token, "--ttl", "30s"],
        vec!["release", "secret2", "--token", &token],
        vec!["run", "secret", "--", "true"],
        vec!["acquire", "secret"],
        vec!["clear", "secret", "nothing"],
        vec!["release", "secret", "--token", &token],
        vec!["release", "secret2", "--token", &token2],
        vec!["purge"],
    ];
    for cmd in &commands {
        for format in ["human", "json"] {
            let mut args = vec!["-vvv", "--format", format];
            args.extend_from_slice(cmd);
            let done = store.run(&args);
            for t in [&token, &token2] {
                assert!(
                    !done.stdout.contains(t.as_str()) && !done.stderr.contains(t.as_str()),
                    "{args:?} printed a token: {done:?}"
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// set, clear, purge, list, reset

#[test]
fn set_fail_with_one_name_held_exits_75_and_changes_nothing() {
    let store = Store::new();
    store.acquire("held", "30s");
    let before = store.list();
    assert_eq!(names(&before), BTreeSet::from(["held".to_string()]));

    let done = store.run(&["set", "free1", "held", "free2", "--fail", "--ttl", "1h"]);
    assert_eq!(done.code, Some(75), "{done:?}");
    let message = one_line(&done);
    assert!(
        message.contains("\"held\"") && message.contains("held by"),
        "{message}"
    );
    assert!(message.contains("nothing was changed"), "{message}");
    let after = store.list();
    assert_eq!(names(&after), names(&before), "set --fail created locks");
    let (b, a) = (find(&before, "held"), find(&after, "held"));
    for key in ["owner", "fence", "released"] {
        assert_eq!(a[key], b[key], "set --fail changed {key}");
    }
    // the times are the store's, mapped onto this machine's clock at each read: they may move
    // by a few milliseconds, not by the hour a renewal would add
    for key in ["expires_at_ms", "acquired_at_ms"] {
        let (x, y) = (a[key].as_u64().unwrap(), b[key].as_u64().unwrap());
        assert!(
            x.abs_diff(y) < 1_000,
            "set --fail changed {key}: {b} then {a}"
        );
    }

    let json = store.run(&["--format", "json", "set", "free1", "held", "--fail"]);
    assert_eq!(json.code, Some(75), "{json:?}");
    assert!(json.stdout.is_empty());
    let error = parse_object(one_line(&json));
    assert_eq!(error["type"], "error");
    assert_eq!(error["code"], 75);

    // without --fail: created and renewed, in a table with counts
    let ok = store.run(&["set", "free1", "held", "--ttl", "1h", "--owner", "ops"]);
    assert_eq!(ok.code, Some(0), "{ok:?}");
    assert!(ok.stdout.contains("created 1, renewed 1"), "{ok:?}");
    let held = find(&store.list(), "held").clone();
    assert!(
        held["expires_in_ms"].as_u64().unwrap() > 3_000_000,
        "not renewed: {held}"
    );
    assert_eq!(find(&store.list(), "free1")["owner"], "ops");
}

#[test]
fn clear_says_which_existed() {
    let store = Store::new();
    store.acquire("a", "30s");
    let done = store.run(&["clear", "a", "b"]);
    assert_eq!(done.code, Some(0), "{done:?}");
    assert_eq!(done.lines(), ["cleared a", "b was not held"]);
    assert_eq!(store.status("a"), 1);

    store.acquire("a", "30s");
    let json = store.json(&["clear", "b", "a"]);
    assert_eq!(json.len(), 2, "{json:?}");
    for v in &json {
        assert_eq!(v["type"], "cleared");
        assert!(v["existed"].is_boolean());
    }
    assert_eq!(find(&json, "a")["existed"], true);
    assert_eq!(find(&json, "b")["existed"], false);
}

#[test]
fn purge_counts_expired_rows() {
    let store = Store::new();
    store.acquire("short1", "300ms");
    store.acquire("short2", "300ms");
    store.acquire("long", "60s");
    wait_until("the short locks expire", LIMIT, || {
        store.list().iter().filter(|v| v["expired"] == true).count() == 2
    });
    // expired rows are not listed without --expired
    assert_eq!(
        names(&store.json(&["list"])),
        BTreeSet::from(["long".to_string()])
    );
    for v in store.list() {
        check_lock_fields(&v);
        if v["name"] != "long" {
            assert_eq!(v["expired"], true, "{v}");
        }
    }

    let purge = store.run(&["purge"]);
    assert_eq!(purge.code, Some(0), "{purge:?}");
    assert_eq!(purge.stdout.trim(), "purged 2 expired locks");
    assert_eq!(names(&store.list()), BTreeSet::from(["long".to_string()]));
    let json = store.json(&["purge"]);
    assert_eq!(json.len(), 1);
    assert_eq!(json[0]["type"], "purged");
    assert_eq!(json[0]["removed"], 0);
}

#[test]
fn list_filters_by_prefix() {
    let store = Store::new();
    let all = [
        "jobs/a", "jobs/b", "jobsx", "other", "a_1", "ab1", "a%", "a%b",
    ];
    let mut args = vec!["set", "--ttl", "1h"];
    args.extend(all);
    store.cmd(&args).assert().code(0);

    let listed = |prefix: &str| names(&store.json(&["list", prefix]));
    let set = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<BTreeSet<_>>();
    assert_eq!(listed("jobs/"), set(&["jobs/a", "jobs/b"]));
    assert_eq!(listed("jobs"), set(&["jobs/a", "jobs/b", "jobsx"]));
    // LIKE wildcards in a prefix are plain characters
    assert_eq!(listed("a_"), set(&["a_1"]));
    assert_eq!(listed("a%"), set(&["a%", "a%b"]));
    assert_eq!(listed("nothing"), set(&[]));
    assert_eq!(names(&store.json(&["list"])), set(&all));

    let human = store.run(&["list", "jobs/"]);
    assert_eq!(human.code, Some(0));
    let rows = human.lines();
    assert!(
        rows[0].contains("NAME") && rows[0].contains("EXPIRES IN"),
        "{human:?}"
    );
    assert_eq!(rows.len(), 3, "{human:?}");
    assert!(human.stdout.contains("jobs/a") && human.stdout.contains("jobs/b"));
    assert!(!human.stdout.contains("jobsx") && !human.stdout.contains("other"));

    let none = store.run(&["list", "nothing"]);
    assert_eq!(none.code, Some(0));
    assert!(none.stdout.is_empty(), "{none:?}");
    assert!(none.stderr.contains("no locks"), "{none:?}");
}

#[test]
fn reset_refuses_without_a_terminal_and_works_with_force() {
    let store = Store::new();
    store.cmd(&["set", "a", "b"]).assert().code(0);

    let refused = store.run(&["reset"]);
    assert_eq!(refused.code, Some(2), "{refused:?}");
    assert!(one_line(&refused).contains("--force"), "{refused:?}");
    assert_eq!(store.list().len(), 2, "reset without --force removed locks");

    let json = store.run(&["--format", "json", "reset"]);
    assert_eq!(json.code, Some(2), "{json:?}");
    let error = parse_object(one_line(&json));
    assert_eq!(error["code"], 2);
    assert!(error["message"].as_str().unwrap().contains("--force"));

    let forced = store.run(&["reset", "--force"]);
    assert_eq!(forced.code, Some(0), "{forced:?}");
    assert_eq!(forced.stdout.trim(), "removed 2 locks");
    assert!(store.list().is_empty());

    let json = store.json(&["reset", "--force"]);
    assert_eq!(json.len(), 1);
    assert_eq!(json[0]["type"], "reset");
    assert_eq!(json[0]["removed"], 0);
}

// ---------------------------------------------------------------------------------------------
// JSON output

#[test]
fn json_output_matches_the_documented_schema() {
    let store = Store::new();

    let acquired = store.json(&["acquire", "db", "--ttl", "30s", "--owner", "me"]);
    assert_eq!(acquired.len(), 1, "{acquired:?}");
    let a = &acquired[0];
    assert_eq!(a["type"], "acquired");
    assert_eq!(a["name"], "db");
    assert!(a["token"].as_str().is_some_and(|t| !t.is_empty()), "{a}");
    assert!(a["fence"].is_u64(), "{a}");
    let expires_in = a["expires_in_ms"].as_u64().expect("expires_in_ms");
    assert!(expires_in <= 30_000 && expires_in > 20_000, "{a}");

    // db is renewed, fresh is created
    let set = store.json(&["set", "db", "fresh", "--ttl", "30s"]);
    assert_eq!(set.len(), 3, "{set:?}");
    for v in &set[..2] {
        assert_eq!(v["type"], "set", "{v}");
        assert!(v["name"].is_string() && v["was_locked"].is_boolean() && v["locked"].is_boolean());
    }
    assert_eq!(find(&set, "db")["action"], "renewed");
    assert_eq!(find(&set, "db")["was_locked"], true);
    assert_eq!(find(&set, "db")["locked"], true);
    assert_eq!(find(&set, "fresh")["action"], "created");
    assert_eq!(find(&set, "fresh")["was_locked"], false);
    assert_eq!(find(&set, "fresh")["locked"], true);
    let summary = &set[2];
    assert_eq!(summary["type"], "set_summary");
    for (key, n) in [
        ("created", 1),
        ("renewed", 1),
        ("skipped_create", 0),
        ("skipped_renew", 0),
    ] {
        assert_eq!(summary[key], n, "{summary}");
    }
    // forever never expires
    let set = store.json(&["set", "forever", "--no-expiry"]);
    assert_eq!(find(&set, "forever")["action"], "created");

    // the skipped actions
    let set = store.json(&["set", "db", "--no-renew", "--ttl", "30s"]);
    assert_eq!(find(&set, "db")["action"], "skipped_renew");
    assert_eq!(set[1]["skipped_renew"], 1);
    let set = store.json(&["set", "new", "--only-renew"]);
    assert_eq!(find(&set, "new")["action"], "skipped_create");
    assert_eq!(find(&set, "new")["locked"], false);
    assert_eq!(set[1]["skipped_create"], 1);

    let list = store.json(&["list"]);
    assert_eq!(
        names(&list),
        BTreeSet::from(["db".into(), "fresh".into(), "forever".into()])
    );
    for v in &list {
        assert_eq!(v["type"], "lock");
        check_lock_fields(v);
        assert_eq!(v["expired"], false);
        assert_eq!(v["released"], false);
    }
    let db = find(&list, "db");
    assert_eq!(db["owner"], "me");
    assert_eq!(db["fence"], a["fence"]);
    let (acquired_at, expires_at) = (
        db["acquired_at_ms"].as_u64().unwrap(),
        db["expires_at_ms"].as_u64().unwrap(),
    );
    assert!(expires_at > acquired_at, "{db}");
    let forever = find(&list, "forever");
    assert!(
        forever["expires_in_ms"].is_null(),
        "never expires is null: {forever}"
    );
    assert!(forever["expires_at_ms"].is_null(), "{forever}");

    let status = store.json(&["status", "db"]);
    assert_eq!(status.len(), 1);
    assert_eq!(status[0]["type"], "status");
    assert_eq!(status[0]["held"], true);
    check_lock_fields(&status[0]);
    assert_eq!(status[0]["fence"], db["fence"]);
    let free = store.run(&["--format", "json", "status", "free"]);
    assert_eq!(free.code, Some(1));
    let free = free.json();
    assert_eq!(free.len(), 1);
    assert_eq!(free[0]["type"], "status");
    assert_eq!(free[0]["name"], "free");
    assert_eq!(free[0]["held"], false);

    let token = a["token"].as_str().unwrap();
    let extended = store.json(&["extend", "db", "--token", token, "--ttl", "40s"]);
    assert_eq!(extended[0]["type"], "extended");
    assert_eq!(extended[0]["name"], "db");
    assert_eq!(extended[0]["expires_in_ms"], 40_000);
    let released = store.json(&["release", "db", "--token", token]);
    assert_eq!(released.len(), 1);
    assert_eq!(released[0]["type"], "released");
    assert_eq!(released[0]["name"], "db");

    let cleared = store.json(&["clear", "forever", "fresh"]);
    assert_eq!(cleared.len(), 2);
    for v in &cleared {
        assert_eq!(v["type"], "cleared");
        assert_eq!(v["existed"], true);
    }
    assert!(store.json(&["list"]).is_empty());

    // errors: one JSON line on stderr, nothing on stdout
    let busy_holder = store.json(&["acquire", "busy"]);
    assert_eq!(busy_holder.len(), 1);
    let long_name = "n".repeat(256);
    for (args, code) in [
        (vec!["run", "busy", "--", "true"], 75),
        (vec!["status", ""], 2),
        (vec!["acquire", long_name.as_str()], 2),
        (vec!["release", "busy", "--token", "x"], 1),
    ] {
        let mut all = vec!["--format", "json"];
        all.extend_from_slice(&args);
        let done = store.run(&all);
        assert_eq!(done.code, Some(code), "{args:?}: {done:?}");
        assert!(done.stdout.is_empty(), "{args:?}: {done:?}");
        let error = parse_object(one_line(&done));
        assert_eq!(error["type"], "error", "{error}");
        assert_eq!(error["code"], code, "{error}");
        assert!(
            error["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{error}"
        );
    }
    let bad_url = bare(&["--format", "json", "--url", "nope://x", "list"])
        .output()
        .unwrap();
    let bad_url = to_done(bad_url);
    assert_eq!(bad_url.code, Some(2), "{bad_url:?}");
    assert_eq!(parse_object(one_line(&bad_url))["code"], 2);
}

// ---------------------------------------------------------------------------------------------
// bad input, help, completions, the store URL

#[test]
fn bad_input_is_one_clear_line_and_exit_2() {
    let store = Store::new();
    let name_256 = "x".repeat(256);
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--url", "redis2://host", "status", "a"], "redis2"),
        (vec!["--url", &store.url, "status", ""], "empty"),
        (vec!["--url", &store.url, "acquire", ""], "empty"),
        (vec!["--url", &store.url, "status", &name_256], "256 bytes"),
        (
            vec!["--url", &store.url, "set", "ok", &name_256],
            "256 bytes",
        ),
        (vec!["--url", &store.url, "clear", &name_256], "256 bytes"),
        (
            vec!["--url", &store.url, "acquire", "a", "--ttl", "0s"],
            "zero",
        ),
    ];
    for (args, says) in cases {
        let done = to_done(bare(&args).output().unwrap());
        assert_eq!(done.code, Some(2), "{args:?}: {done:?}");
        assert!(
            done.stdout.is_empty() || (args.contains(&"acquire") && done.stdout == "(exit 2)\n"),
            "{args:?}: {done:?}"
        );
        let line = one_line(&done);
        assert!(line.starts_with("locksmith: error: "), "{line}");
        assert!(
            line.contains(says),
            "{args:?}: {line:?} does not mention {says:?}"
        );
    }
    // nothing was created by the rejected commands
    assert!(store.list().is_empty());

    // a bad name never runs the command
    let ran = store.path("ran");
    let touch = format!("touch {}", s(&ran));
    let done = store.run(&["run", "", "--", "sh", "-c", &touch]);
    assert_eq!(done.code, Some(2), "{done:?}");
    one_line(&done);
    assert!(!ran.exists(), "ran the command under an invalid name");

    // the longest name is fine
    let name_255 = "x".repeat(255);
    store.cmd(&["status", &name_255]).assert().code(1);

    // the URL from the environment
    let env = bare(&["status", "a"])
        .env("LOCKSMITH_URL", "redis2://host")
        .output()
        .unwrap();
    let env = to_done(env);
    assert_eq!(env.code, Some(2), "{env:?}");
    assert!(one_line(&env).contains("redis2"), "{env:?}");
}

#[test]
fn a_missing_directory_is_named() {
    for (url, dir) in [
        ("sqlite:///nonexistent-dir/x.db", "/nonexistent-dir"),
        (
            "sqlite:///nonexistent-dir/deeper/x.db",
            "/nonexistent-dir/deeper",
        ),
    ] {
        let done = to_done(bare(&["--url", url, "status", "a"]).output().unwrap());
        assert!(matches!(done.code, Some(2 | 3)), "{url}: {done:?}");
        let line = one_line(&done);
        assert!(
            line.contains(dir),
            "{url}: the message does not name {dir}: {line}"
        );
        assert!(
            !Path::new("/nonexistent-dir").exists(),
            "the directory was created"
        );
    }
    let store = Store::new();
    let url = format!("sqlite://{}/missing/x.db", s(store.dir.path()));
    let done = to_done(bare(&["--url", &url, "list"]).output().unwrap());
    assert!(matches!(done.code, Some(2 | 3)), "{done:?}");
    assert!(one_line(&done).contains(&format!("{}/missing", s(store.dir.path()))));
}

#[test]
fn a_malformed_duration_exits_2_naming_it() {
    let store = Store::new();
    for (args, bad) in [
        (vec!["acquire", "a", "--ttl", "5parsecs"], "5parsecs"),
        (
            vec!["run", "a", "--ttl", "5parsecs", "--", "true"],
            "5parsecs",
        ),
        (
            vec!["run", "a", "--kill-grace", "soon", "--", "true"],
            "soon",
        ),
        (
            vec!["run", "a", "--wait", "5parsecs", "--", "true"],
            "5parsecs",
        ),
        (
            vec!["run", "a", "--min-hold", "1hr30", "--", "true"],
            "1hr30",
        ),
        (
            vec!["extend", "a", "--token", "t", "--ttl", "5parsecs"],
            "5parsecs",
        ),
    ] {
        let done = store.run(&args);
        assert_eq!(done.code, Some(2), "{args:?}: {done:?}");
        assert!(
            done.stdout.is_empty() || (args[0] == "acquire" && done.stdout == "(exit 2)\n"),
            "{done:?}"
        );
        let first = done.stderr.lines().next().unwrap_or_default();
        assert!(first.contains(bad), "{args:?}: {first}");
        assert!(first.contains("30s"), "no example of a duration: {first}");
    }
    assert!(store.list().is_empty());
}

#[test]
fn a_malformed_duration_is_one_line() {
    let store = Store::new();
    let done = store.run(&["acquire", "a", "--ttl", "5parsecs"]);
    assert_eq!(done.code, Some(2), "{done:?}");
    one_line(&done);
}

#[test]
fn usage_errors_in_json_mode_are_a_json_line() {
    let store = Store::new();
    for args in [
        vec!["--format", "json", "acquire", "a", "--ttl", "5parsecs"],
        vec!["--format", "json", "run", "a", "--ttl", "1x", "--", "true"],
        vec!["--format", "json", "list", "--no-such-flag"],
    ] {
        let done = store.run(&args);
        assert_eq!(done.code, Some(2), "{args:?}: {done:?}");
        let first = done.stderr.lines().next().unwrap_or_default();
        let error = parse_object(first);
        assert_eq!(error["type"], "error");
        assert_eq!(error["code"], 2);
        assert!(error["message"].is_string());
    }
}

#[test]
fn completions_bash_prints_a_script() {
    let done = to_done(bare(&["completions", "bash"]).output().unwrap());
    assert_eq!(done.code, Some(0), "{done:?}");
    assert!(done.stdout.contains("_locksmith()"), "not a bash script");
    assert!(done.stdout.contains("complete -F _locksmith"));
    for sub in ["run", "acquire", "release", "purge", "--min-hold"] {
        assert!(done.stdout.contains(sub), "no {sub} in the completions");
    }
    // and bash can parse it, when there is a bash
    if let Ok(mut bash) = StdCommand::new("bash")
        .arg("-n")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
    {
        use std::io::Write;
        bash.stdin
            .take()
            .unwrap()
            .write_all(done.stdout.as_bytes())
            .unwrap();
        let checked = bash.wait_with_output().unwrap();
        assert!(
            checked.status.success(),
            "bash -n: {}",
            String::from_utf8_lossy(&checked.stderr)
        );
    }
}

#[test]
fn help_shows_examples_and_exit_codes() {
    bare(&["run", "--help"])
        .assert()
        .success()
        .stdout(predicate::str::contains("Examples:"))
        .stdout(predicate::str::contains("locksmith run nightly-backup -- "))
        .stdout(predicate::str::contains("--min-hold"))
        .stdout(predicate::str::contains("LOCKSMITH_FENCE"));
    bare(&["--help"])
        .assert()
        .success()
        .stdout(predicate::str::contains("Exit codes:"))
        .stdout(predicate::str::contains("75"))
        .stdout(predicate::str::contains("76"));
    for sub in ["acquire", "set", "reset", "status"] {
        bare(&[sub, "--help"])
            .assert()
            .success()
            .stdout(predicate::str::is_match("Examples?:").unwrap());
    }
}

#[test]
fn the_store_url_can_come_from_the_environment() {
    let store = Store::new();
    store.acquire("shared", "30s");
    bare(&["-q", "status", "shared"])
        .env("LOCKSMITH_URL", &store.url)
        .assert()
        .code(0);
    // --url wins over the environment
    bare(&["-q", "status", "shared", "--url", &store.url])
        .env("LOCKSMITH_URL", "redis2://host")
        .assert()
        .code(0);
}

// ---------------------------------------------------------------------------------------------
// run: stopping the command and everything it started

/// Whether a process with this pid still exists (and is not a zombie of ours).
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| !stat.contains(") Z "))
}

fn read_pid(path: &Path) -> i32 {
    wait_until("the command writes its pid", LIMIT, || path.exists());
    std::fs::read_to_string(path)
        .unwrap()
        .trim()
        .parse()
        .expect("a pid")
}

#[test]
fn max_hold_stops_the_command_and_its_children() {
    let store = Store::new();
    let pid_file = store.path("grandchild");
    // a grandchild that ignores nothing: it must be stopped with its parent
    let script = r#"sleep 30 & echo $! > "$1.tmp"; mv "$1.tmp" "$1"; wait"#;
    let started = Instant::now();
    let child = store.spawn(&[
        "run",
        "mh",
        "--ttl",
        "1s",
        "--max-hold",
        "1s",
        "--kill-grace",
        "500ms",
        "--",
        "sh",
        "-c",
        script,
        "sh",
        s(&pid_file),
    ]);
    let grandchild = read_pid(&pid_file);
    let (done, _) = finish(child, LIMIT);
    assert_eq!(done.code, Some(76), "{done:?}");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "stopped before --max-hold"
    );
    assert!(one_line(&done).contains("max-hold"), "{done:?}");
    wait_until("the grandchild is gone", LIMIT, || !alive(grandchild));
    assert_eq!(store.status("mh"), 1, "the lock outlived the command");
}

#[test]
fn the_command_dies_with_a_killed_locksmith() {
    let store = Store::new();
    let pid_file = store.path("pid");
    let script = r#"echo $$ > "$1.tmp"; mv "$1.tmp" "$1"; exec sleep 30"#;
    let mut child = store.spawn(&["run", "pk", "--", "sh", "-c", script, "sh", s(&pid_file)]);
    let command = read_pid(&pid_file);
    kill(child.pid(), Signal::SIGKILL).expect("SIGKILL locksmith");
    let _ = child.has_exited();
    wait_until("the command is gone", LIMIT, || !alive(command));
}

#[test]
fn a_command_that_cannot_start_frees_the_lock_despite_min_hold() {
    let store = Store::new();
    let done = store.run(&[
        "run",
        "nf",
        "--min-hold",
        "1h",
        "--",
        "/nonexistent/command",
    ]);
    assert_eq!(done.code, Some(127), "{done:?}");
    assert!(one_line(&done).contains("cannot run"), "{done:?}");
    assert_eq!(
        store.status("nf"),
        1,
        "a command that never ran kept the lock"
    );
}

#[test]
fn wait_zero_is_busy_not_timeout() {
    let store = Store::new();
    let (token, _) = store.acquire("w0", "60s");
    let done = store.run(&["run", "w0", "--wait", "0s", "--", "true"]);
    assert_eq!(done.code, Some(75), "{done:?}");
    let released = store.run(&["release", "w0", "--token", &token]);
    assert_eq!(released.code, Some(0));
}

#[test]
fn a_signal_the_caller_ignores_stays_ignored() {
    let store = Store::new();
    let mask_file = store.path("mask");
    // like `nohup`: SIGHUP ignored before locksmith starts
    let script = format!(
        r#"trap "" HUP; exec {BIN} --url "$1" run nh -- sh -c 'grep SigIgn /proc/self/status > "$0.tmp"; mv "$0.tmp" "$0"; sleep 1' "$2""#
    );
    let mut child = StdCommand::new("sh")
        .args(["-c", &script, "sh", &store.url, s(&mask_file)])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("the command reports its signal mask", LIMIT, || {
        mask_file.exists()
    });
    let pid = Pid::from_raw(i32::try_from(child.id()).unwrap());
    kill(pid, Signal::SIGHUP).expect("SIGHUP locksmith");
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "SIGHUP was not ignored: {status:?}");
    let mask = std::fs::read_to_string(&mask_file).unwrap();
    let bits = u64::from_str_radix(mask.trim().trim_start_matches("SigIgn:").trim(), 16).unwrap();
    assert_eq!(bits & 1, 1, "the command does not ignore SIGHUP: {mask}");
}

// ---------------------------------------------------------------------------------------------
// issue 8: fail closed, print safely, speak the user's words

/// The repository's README.
fn readme() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md");
    std::fs::read_to_string(&path).expect("README.md")
}

/// The README's ```sh block that contains `needle`.
fn readme_block(needle: &str) -> String {
    let readme = readme();
    let mut blocks = readme.split("```").skip(1).step_by(2);
    let block = blocks
        .find(|b| b.contains(needle))
        .unwrap_or_else(|| panic!("no README block with {needle:?}"));
    block
        .strip_prefix("sh\n")
        .unwrap_or_else(|| panic!("not a ```sh block: {block}"))
        .to_string()
}

/// Runs `script` with `shell -e -c`, `locksmith` on the PATH and the store in LOCKSMITH_URL.
fn shell_e(shell: &str, script: &str, store: &Store) -> Done {
    let dir = Path::new(BIN).parent().expect("bin dir");
    let path = format!(
        "{}:{}",
        dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut cmd = StdCommand::new(shell);
    for var in FOREIGN_ENV {
        cmd.env_remove(var);
    }
    let output = cmd
        .args(["-e", "-c", script])
        .env("PATH", path)
        .env("LOCKSMITH_URL", &store.url)
        .current_dir(store.dir.path())
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{shell}: {e}"));
    to_done(output)
}

/// The shells to try the README's idiom in: bash (required) and dash (when installed).
fn posix_shells() -> Vec<&'static str> {
    let mut shells = vec!["bash"];
    let dash = StdCommand::new("dash")
        .args(["-c", "true"])
        .status()
        .is_ok_and(|s| s.success());
    if dash {
        shells.push("dash");
    } else {
        eprintln!("SKIPPED (dash part): dash is not installed; only bash was tried");
    }
    shells
}

#[test]
fn the_readme_eval_idiom_fails_closed_under_set_e() {
    let block = readme_block(r#"eval "$(locksmith acquire"#);
    let after = "\necho RAN-PAST-THE-LOCK\n";
    for shell in posix_shells() {
        // the lock is busy: the script stops at the eval with acquire's code
        let store = Store::new();
        let (token, _) = store.acquire("migration", "30s");
        let done = shell_e(shell, &format!("{block}{after}"), &store);
        assert_eq!(done.code, Some(75), "{shell}: {done:?}");
        assert!(!done.stdout.contains("RAN-PAST"), "{shell}: {done:?}");
        let done = shell_e(
            shell,
            &format!("eval \"$(locksmith -q acquire migration)\"{after}"),
            &store,
        );
        assert_eq!(done.code, Some(75), "{shell} -q: {done:?}");
        assert!(!done.stdout.contains("RAN-PAST"), "{shell}: {done:?}");

        // bad usage fails closed too
        let bad = block.replace("--ttl 10m)", "--ttl 10parsecs)");
        assert_ne!(bad, block, "the README's acquire line changed");
        store
            .cmd(&["release", "migration", "--token", &token])
            .assert()
            .code(0);
        let done = shell_e(shell, &format!("{bad}{after}"), &store);
        assert_eq!(done.code, Some(2), "{shell}: {done:?}");
        assert!(!done.stdout.contains("RAN-PAST"), "{shell}: {done:?}");
        assert_eq!(store.status("migration"), 1);

        // the lock is free: the whole snippet runs, with $token set
        let done = shell_e(
            shell,
            &format!("{block}\ntest -n \"$token\" && test -n \"$fence\"{after}"),
            &store,
        );
        assert_eq!(done.code, Some(0), "{shell}: {done:?}");
        assert!(done.stdout.contains("RAN-PAST"), "{shell}: {done:?}");
        assert_eq!(
            store.status("migration"),
            1,
            "the snippet releases the lock"
        );
    }
}

#[test]
fn lock_files_that_are_not_regular_files_are_refused_and_nothing_is_created() {
    let store = Store::new();
    let fifo = store.path("fifo");
    let made = StdCommand::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo");
    assert!(made.success());
    let journal_existed = Path::new("/dev/null-journal").exists();
    let entries = |dir: &Path| -> BTreeSet<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    };
    let before = entries(store.dir.path());
    for path in ["/dev/null", s(&fifo), s(store.dir.path())] {
        for cmd in [vec!["list"], vec!["acquire", "a"], vec!["status", "a"]] {
            let url = format!("sqlite://{path}");
            let mut args = vec!["--url", url.as_str()];
            args.extend_from_slice(&cmd);
            let done = to_done(bare(&args).output().unwrap());
            assert_eq!(done.code, Some(2), "{args:?}: {done:?}");
            let line = one_line(&done);
            assert!(
                line.contains("not a regular file") && line.contains(path),
                "{args:?}: {line}"
            );
        }
    }
    assert_eq!(entries(store.dir.path()), before, "files were created");
    if !journal_existed {
        assert!(
            !Path::new("/dev/null-journal").exists(),
            "/dev/null-journal was created"
        );
    }
}

/// A name no terminal should see raw: ESC (colour), tab, newline (a new table row).
const EVIL: &str = "a\x1b[31mb\tc\nd";

fn assert_no_raw_controls(what: &str, text: &str) {
    assert!(
        !text.contains('\x1b') && !text.contains('\t'),
        "{what} printed control characters raw: {text:?}"
    );
}

#[test]
fn control_characters_in_names_are_escaped_for_people_and_exact_in_json() {
    let store = Store::new();
    let escaped = r"a\u{1b}[31mb\tc\nd";
    let acquired = store.run(&["acquire", EVIL, "--owner", "own\x1b[1mer"]);
    assert_eq!(acquired.code, Some(0), "{acquired:?}");
    assert_no_raw_controls("acquire", &acquired.stderr);
    assert!(acquired.stderr.contains(escaped), "{acquired:?}");
    // the hint is a command a shell can run: quoted
    assert!(
        acquired
            .stderr
            .contains(r"`locksmith release $'a\x1b[31mb\x09c\x0ad' --token …`"),
        "{acquired:?}"
    );

    for cmd in [
        vec!["list"],
        vec!["status", EVIL],
        vec!["run", EVIL, "--", "true"],
        vec!["acquire", EVIL],
        vec!["set", EVIL, "other", "--ttl", "30s"],
        vec!["clear", EVIL, "other"],
    ] {
        let done = store.run(&cmd);
        assert_no_raw_controls(&format!("{:?} (stdout)", cmd[0]), &done.stdout);
        assert_no_raw_controls(&format!("{:?} (stderr)", cmd[0]), &done.stderr);
        assert!(
            done.stdout.contains(escaped) || done.stderr.contains(escaped),
            "{cmd:?} does not show the name escaped: {done:?}"
        );
        if cmd[0] == "list" {
            assert!(done.stdout.contains(r"own\u{1b}[1mer"), "{done:?}");
            // one header and one row: the newline did not split the row
            assert_eq!(done.lines().len(), 2, "{done:?}");
        }
        if cmd[0] == "clear" {
            // cleared it: list the rest exactly in JSON below
            store.acquire(EVIL, "30s");
        }
    }
    // JSON stays exact
    let listed = store.json(&["list"]);
    assert_eq!(find(&listed, EVIL)["name"], EVIL);

    // hints are shell-quoted
    let done = store.run(&["acquire", "my lock"]);
    assert!(
        done.stderr
            .contains("`locksmith release 'my lock' --token …`"),
        "{done:?}"
    );
    let missing = store.path("my locks");
    let url = format!("sqlite://{}/x.db", s(&missing));
    let done = to_done(bare(&["--url", &url, "list"]).output().unwrap());
    assert_eq!(done.code, Some(2), "{done:?}");
    assert!(
        one_line(&done).contains(&format!("mkdir -p '{}'", s(&missing))),
        "{done:?}"
    );
}

/// A `run NAME` whose command says it started and then sleeps (exec: SIGTERM ends it).
fn running(store: &Store, name: &str) -> Background {
    let ready = store.path(&format!("ready-{name}"));
    let child = store.spawn(&[
        "run",
        name,
        "--",
        "sh",
        "-c",
        r#"touch "$1"; exec sleep 30"#,
        "sh",
        s(&ready),
    ]);
    wait_until("the command starts", LIMIT, || ready.exists());
    child
}

#[test]
fn clear_or_reset_stops_a_running_command_within_a_second() {
    for how in ["clear", "reset"] {
        let store = Store::new();
        // the default 60 s TTL: the next renewal would be 20 s away
        let child = running(&store, "v2");
        let at = Instant::now();
        let done = match how {
            "clear" => store.run(&["clear", "v2"]),
            _ => store.run(&["reset", "--force"]),
        };
        assert_eq!(done.code, Some(0), "{done:?}");
        assert!(
            done.stderr.contains("running holders are stopped"),
            "{how} does not say running holders stop: {done:?}"
        );
        let (run, _) = finish(child, LIMIT);
        let took = at.elapsed();
        assert_eq!(run.code, Some(76), "{run:?}");
        assert!(run.stderr.contains("lost"), "{run:?}");
        // "within 1 s", with slack for a loaded machine; before the fix this took ~20 s
        assert!(
            took < Duration::from_secs(3),
            "{how}: the command ran on for {took:?}"
        );
        // the lock is free for the next run
        store.cmd(&["run", "v2", "--", "true"]).assert().code(0);
    }
}

#[test]
fn ttls_below_the_minimum_are_refused() {
    let store = Store::new();
    let ran = store.path("ran");
    let touch = format!("touch {}", s(&ran));
    let (token, _) = store.acquire("held", "30s");
    for args in [
        vec!["run", "z", "--ttl", "1ms", "--", "sh", "-c", &touch],
        vec!["run", "z", "--ttl", "49ms", "--", "sh", "-c", &touch],
        vec!["acquire", "z", "--ttl", "1ms"],
        vec!["set", "z", "--ttl", "10ms"],
        vec!["extend", "held", "--token", &token, "--ttl", "1ms"],
    ] {
        let done = store.run(&args);
        assert_eq!(done.code, Some(2), "{args:?}: {done:?}");
        let line = done.stderr.lines().next().unwrap_or_default();
        assert!(
            line.contains("50ms"),
            "{args:?}: the minimum is not named: {line}"
        );
    }
    assert!(!ran.exists(), "the command ran");
    assert_eq!(store.status("z"), 1);
    // the minimum itself is fine
    store
        .cmd(&["run", "z", "--ttl", "50ms", "--", "true"])
        .assert()
        .code(0);
}

#[test]
fn quiet_means_nothing_on_stderr_for_a_busy_lock() {
    let store = Store::new();
    store.acquire("busy", "30s");
    for (args, code) in [
        (vec!["-q", "run", "busy", "--", "true"], 75),
        (
            vec!["-q", "run", "busy", "--busy-exit-code", "0", "--", "true"],
            0,
        ),
        (
            vec!["run", "-q", "busy", "--busy-exit-code", "9", "--", "true"],
            9,
        ),
        (vec!["-q", "acquire", "busy"], 75),
        (vec!["-q", "set", "busy", "--fail"], 75),
        (
            vec!["-q", "--format", "json", "run", "busy", "--", "true"],
            75,
        ),
    ] {
        let done = store.run(&args);
        assert_eq!(done.code, Some(code), "{args:?}: {done:?}");
        assert_eq!(done.stderr, "", "{args:?}: {done:?}");
    }
    // without -q, --busy-exit-code 0 is a skip, not an error
    let done = store.run(&["run", "busy", "--busy-exit-code", "0", "--", "true"]);
    assert_eq!(done.code, Some(0), "{done:?}");
    assert!(!done.stderr.contains("error"), "{done:?}");
    assert!(one_line(&done).contains("skipped"), "{done:?}");
    // other failures still speak with -q
    let done = store.run(&["-q", "run", "busy", "--wait", "100ms", "--", "true"]);
    assert_eq!(done.code, Some(4), "{done:?}");
    one_line(&done);
}

#[test]
fn errors_speak_the_clis_words() {
    let store = Store::new();
    let done = store.run(&[
        "run",
        "x",
        "--ttl",
        "60s",
        "--max-hold",
        "30s",
        "--",
        "true",
    ]);
    assert_eq!(done.code, Some(2), "{done:?}");
    let line = one_line(&done);
    assert!(
        line.contains("--max-hold") && line.contains("30") && !line.contains("40"),
        "{line}"
    );
    for (args, bad) in [
        (vec!["acquire", "a", "--ttl", "1000y"], "1000y"),
        (vec!["run", "a", "--wait", "1000y", "--", "true"], "1000y"),
        (vec!["run", "a", "--min-hold", "200y", "--", "true"], "200y"),
    ] {
        let done = store.run(&args);
        assert_eq!(done.code, Some(2), "{args:?}: {done:?}");
        let line = one_line(&done);
        assert!(line.contains(bad) && line.contains("100-year"), "{line}");
        for library in [".no_expiry", "Wait::", "3155"] {
            assert!(!line.contains(library), "{args:?}: {line}");
        }
    }
    // 100 years is within the 100-year limit
    store.acquire("century", "100y");

    // --wait was passed: do not suggest passing it
    store.acquire("busy", "30s");
    let done = store.run(&["acquire", "busy", "--wait", "300ms"]);
    assert_eq!(done.code, Some(4), "{done:?}");
    let line = one_line(&done);
    assert!(!line.contains("pass --wait"), "{line}");
    assert!(line.contains("wait longer"), "{line}");
    let done = store.run(&["acquire", "busy"]);
    assert!(one_line(&done).contains("--wait"), "{done:?}");
}

#[test]
fn usage_errors_keep_clap_tips_and_point_at_the_commands_help() {
    let store = Store::new();
    for (args, says, help) in [
        (
            vec!["run", "x", "echo", "hi"],
            "-- <COMMAND>",
            "`locksmith run --help`",
        ),
        (vec!["lst"], "'list'", "`locksmith --help`"),
        (
            vec!["list", "--expird"],
            "--expired",
            "`locksmith list --help`",
        ),
        (
            vec!["acquire", "a", "--ttl", "soon"],
            "soon",
            "`locksmith acquire --help`",
        ),
    ] {
        let done = store.run(&args);
        assert_eq!(done.code, Some(2), "{args:?}: {done:?}");
        let line = one_line(&done);
        assert!(line.contains(says), "{args:?}: no {says:?} in {line}");
        assert!(line.contains(help), "{args:?}: no {help} in {line}");
        let mut json = vec!["--format", "json"];
        json.extend_from_slice(&args);
        let done = store.run(&json);
        let error = parse_object(one_line(&done));
        assert!(error["message"].as_str().unwrap().contains(says), "{error}");
    }
}

#[test]
fn the_default_file_follows_xdg_and_sqlite_paths_are_percent_decoded() {
    let dir = tempfile::tempdir().unwrap();
    let (home, cwd) = (dir.path().join("home"), dir.path().join("cwd"));
    std::fs::create_dir_all(&home).unwrap();
    std::fs::create_dir_all(&cwd).unwrap();
    let default = home.join(".local/state/locksmith/locks.db");
    let in_home = |args: &[&str]| {
        let mut cmd = bare(args);
        cmd.env("HOME", &home)
            .env("XDG_STATE_HOME", "state") // relative: the XDG spec says ignore it
            .current_dir(&cwd);
        cmd
    };
    in_home(&["acquire", "x"]).assert().code(0);
    assert!(default.exists(), "not in $HOME/.local/state");
    assert!(
        !cwd.join("state").exists(),
        "a relative XDG_STATE_HOME was used"
    );
    // LOCKSMITH_URL= (empty) is the default file
    in_home(&["-q", "status", "x"])
        .env("LOCKSMITH_URL", "")
        .assert()
        .code(0);

    // sqlite:// paths are percent-decoded, like ?namespace=
    let store = Store::new();
    let encoded = format!("sqlite://{}/my%20locks.db", s(store.dir.path()));
    bare(&["--url", &encoded, "acquire", "p"]).assert().code(0);
    assert!(
        store.path("my locks.db").exists(),
        "the path was not decoded"
    );
    let plain = format!("sqlite://{}/my locks.db", s(store.dir.path()));
    bare(&["--url", &plain, "-q", "status", "p"])
        .assert()
        .code(0);
}

#[test]
fn memory_store_is_refused_except_for_run() {
    for cmd in [
        vec!["acquire", "a"],
        vec!["status", "a"],
        vec!["list"],
        vec!["clear", "a"],
        vec!["set", "a"],
        vec!["purge"],
        vec!["reset", "--force"],
    ] {
        for url in ["memory://", "memory://named"] {
            let mut args = vec!["--url", url];
            args.extend_from_slice(&cmd);
            let done = to_done(bare(&args).output().unwrap());
            assert_eq!(done.code, Some(2), "{args:?}: {done:?}");
            let line = one_line(&done);
            assert!(line.contains("run") && line.contains("vanish"), "{line}");
            assert!(!done.stdout.contains("token="), "{done:?}");
        }
    }
    bare(&["--url", "memory://", "run", "a", "--", "true"])
        .assert()
        .code(0);
}

#[test]
fn small_things_counts_exit_codes_paths_and_help() {
    let store = Store::new();
    store.acquire("one", "30s");
    let done = store.run(&["reset", "--force"]);
    assert_eq!(done.stdout, "removed 1 lock\n", "{done:?}");
    store.acquire("gone", "50ms");
    sleep(Duration::from_millis(200));
    let done = store.run(&["purge"]);
    assert_eq!(done.stdout, "purged 1 expired lock\n", "{done:?}");

    // the path of a command that cannot start is named
    let done = store.run(&["run", "x", "--", "/no/such/cmd"]);
    assert_eq!(done.code, Some(127), "{done:?}");
    assert!(one_line(&done).contains("/no/such/cmd"), "{done:?}");

    // a cancelled reset's exit code is in the table
    bare(&["--help"])
        .assert()
        .success()
        .stdout(predicate::str::contains("reset: cancelled"));
    // acquire's example has no placeholder line
    let help = to_done(bare(&["acquire", "--help"]).output().unwrap());
    assert!(
        help.stdout.lines().all(|l| l.trim() != "..."),
        "{}",
        help.stdout
    );
    // a command's own options first, then the global ones under their own heading
    let help = to_done(bare(&["run", "--help"]).output().unwrap()).stdout;
    let at = |needle: &str| {
        help.find(needle)
            .unwrap_or_else(|| panic!("no {needle:?} in {help}"))
    };
    assert!(at("--kill-grace") < at("Global options:"), "{help}");
    assert!(at("Global options:") < at("--url"), "{help}");
    assert!(at("Global options:") < at("--format"), "{help}");
}

#[test]
fn the_readme_is_true_to_a_fresh_checkout() {
    let readme = readme();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    // the first command says the first build takes a while
    let first = readme_block("cargo run");
    assert!(
        first.contains("first build") || first.contains("Compiling"),
        "the first command looks hung on a cold build: {first}"
    );
    assert!(!first.contains("cargo run -q"), "{first}");
    // prerequisites: the workspace's rust-version, and a C compiler for SQLite
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    let version = manifest
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = "))
        .expect("rust-version")
        .trim_matches('"');
    let prerequisites = readme
        .lines()
        .find(|l| l.contains("Prerequisites"))
        .expect("a Prerequisites line");
    assert!(
        prerequisites.contains(&format!("Rust ≥ {version}"))
            && prerequisites.contains("C compiler"),
        "{prerequisites}"
    );
    // the quick start's dependency line points at the crate in a checkout
    let dependency = readme
        .lines()
        .find(|l| l.starts_with("locksmith = {"))
        .expect("a dependency line");
    assert!(
        dependency.contains("path = ") && dependency.contains("/crates/locksmith\""),
        "{dependency}"
    );
    assert!(root.join("crates/locksmith/Cargo.toml").exists());
    // the Tests section describes what is there: no test servers before the test kit has any
    let tests = readme
        .split("## Tests")
        .nth(1)
        .and_then(|t| t.split("\n## ").next())
        .expect("a Tests section");
    let kit = std::fs::read_dir(root.join("crates/locksmith-testkit/src"))
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.unwrap().path()).ok())
        .collect::<String>();
    let starts_servers = ["redis-server", "initdb", "mariadbd", "mysqld"]
        .iter()
        .any(|b| kit.contains(b));
    if !starts_servers {
        assert!(
            !tests.contains("ephemeral"),
            "the Tests section promises test servers the test kit does not start: {tests}"
        );
    }
}
