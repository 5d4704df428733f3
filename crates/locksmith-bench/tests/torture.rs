//! The short form of every torture scenario: worker processes, injected faults, and the
//! checker, which must find no violation. (`locksmith-bench torture --long` is the long form.)

use std::process::Command;

fn scenario(name: &str) {
    // A freeze lasts 2 × TTL + 0.5 s and must end 2 × TTL before the run does, so sigstop
    // needs more time than the others to find a holder on a loaded machine.
    let duration = if name == "sigstop" { "10s" } else { "6s" };
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_locksmith-bench"))
        .args([
            "torture",
            "--scenario",
            name,
            "--duration",
            duration,
            "--workers",
            "3",
        ])
        .arg("--dir")
        .arg(dir.path())
        .output()
        .expect("the harness runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "torture {name} failed:\n{stdout}\n{stderr}"
    );
    assert!(!stdout.contains("VIOLATION"), "{stdout}");
    // The scenario ran (or said loudly why not) and produced holds.
    let line = stdout
        .lines()
        .find(|l| l.starts_with(&format!("{name}:")))
        .unwrap_or_else(|| panic!("no result line for {name}:\n{stdout}"));
    if !line.contains("SKIPPED") {
        let holds: usize = line
            .split_whitespace()
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        assert!(holds > 0, "{line}");
    }
    if name != "baseline" && !line.contains("SKIPPED") {
        assert!(!line.contains(" 0 faults"), "no fault was injected: {line}");
    }
}

#[test]
fn torture_baseline() {
    scenario("baseline");
}

#[test]
fn torture_sigkill() {
    scenario("sigkill");
}

#[test]
fn torture_sigstop() {
    scenario("sigstop");
}

#[test]
fn torture_sqlite_tx_kill() {
    scenario("sqlite-tx-kill");
}

#[test]
fn torture_sqlite_busy() {
    scenario("sqlite-busy");
}

#[test]
fn torture_disk_full() {
    scenario("disk-full");
}

#[test]
fn torture_clock_step() {
    scenario("clock-step");
}

#[test]
fn torture_redis_restart() {
    scenario("redis-restart");
}

#[test]
fn torture_redis_client_kill() {
    scenario("redis-client-kill");
}

#[test]
fn torture_redis_freeze() {
    scenario("redis-freeze");
}
