//! What `locksmith` does on a terminal: the spinner naming the holder while `run` waits, and
//! `reset`'s YES prompt. A pseudo-terminal comes from util-linux's `script`; without it these
//! tests say SKIPPED.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_locksmith");

fn script_available() -> bool {
    let ok = Command::new("script")
        .args(["-qec", "true", "/dev/null"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("SKIPPED: `script` (util-linux) is not available to make a terminal");
    }
    ok
}

fn url(dir: &tempfile::TempDir) -> String {
    format!("sqlite://{}", dir.path().join("locks.db").display())
}

/// Runs `cmd` (a shell command line) on a pseudo-terminal, feeding `input`; returns what the
/// terminal showed.
fn on_terminal(cmd: &str, input: &str) -> String {
    let mut child = Command::new("script")
        .args(["-qec", cmd, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn script");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input.as_bytes()).unwrap();
    // keep stdin open until the command is done, so `script` does not end early
    let out = std::thread::spawn(move || child.wait_with_output().expect("script output"));
    std::thread::sleep(Duration::from_millis(50));
    let output = out.join().unwrap();
    drop(stdin);
    String::from_utf8_lossy(&output.stdout).replace('\r', "")
}

#[test]
fn run_shows_the_holder_while_waiting_on_a_terminal() {
    if !script_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let url = url(&dir);
    let mut holder = Command::new(BIN)
        .args([
            "--url",
            &url,
            "run",
            "busy",
            "--owner",
            "night-job",
            "--",
            "sleep",
            "1.5",
        ])
        .spawn()
        .unwrap();
    // wait until it holds the lock
    for _ in 0..100 {
        let held = Command::new(BIN)
            .args(["--url", &url, "-q", "status", "busy"])
            .status()
            .unwrap();
        if held.success() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let shown = on_terminal(
        &format!("{BIN} --url {url} run busy --wait 10s -- echo ran-after-wait"),
        "",
    );
    holder.wait().unwrap();
    assert!(
        shown.contains("held by night-job on")
            && shown.contains("pid")
            && shown.contains("expires in"),
        "no spinner naming the holder: {shown:?}"
    );
    assert!(shown.contains("ran-after-wait"), "{shown:?}");

    // and nothing of that when stderr is not a terminal
    let mut holder = Command::new(BIN)
        .args(["--url", &url, "run", "busy", "--", "sleep", "0.5"])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(150));
    let piped = Command::new(BIN)
        .args(["--url", &url, "run", "busy", "--wait", "10s", "--", "true"])
        .output()
        .unwrap();
    holder.wait().unwrap();
    assert!(piped.status.success());
    assert!(
        piped.stderr.is_empty(),
        "{:?}",
        String::from_utf8_lossy(&piped.stderr)
    );
}

#[test]
fn reset_asks_for_yes_on_a_terminal() {
    if !script_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let url = url(&dir);
    let set = Command::new(BIN)
        .args(["--url", &url, "set", "a", "b"])
        .output()
        .unwrap();
    assert!(set.status.success());

    let shown = on_terminal(&format!("{BIN} --url {url} reset"), "no\n");
    assert!(shown.contains("Type YES"), "{shown:?}");
    assert!(shown.contains("cancelled"), "{shown:?}");
    let list = Command::new(BIN)
        .args(["--url", &url, "--format", "json", "list"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&list.stdout).lines().count(),
        2,
        "reset without YES removed locks"
    );

    let shown = on_terminal(&format!("{BIN} --url {url} reset"), "YES\n");
    assert!(shown.contains("removed 2 locks"), "{shown:?}");
}

#[test]
fn names_with_control_characters_are_escaped_on_a_terminal() {
    if !script_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let url = url(&dir);
    let evil = "a\x1b[31mb";
    let set = Command::new(BIN)
        .args(["--url", &url, "set", evil])
        .output()
        .unwrap();
    assert!(set.status.success());
    // the reset prompt's table, and the status line
    let cmd =
        format!("{BIN} --url {url} reset; {BIN} --url {url} status \"$(printf 'a\\033[31mb')\"");
    let shown = on_terminal(&cmd, "no\n");
    assert!(shown.contains("Type YES"), "{shown:?}");
    assert!(
        !shown.contains(evil),
        "a raw escape reached the terminal: {shown:?}"
    );
    assert!(shown.contains(r"a\u{1b}[31mb"), "{shown:?}");
}
