//! The short form of every torture scenario: worker processes, injected faults, and the
//! checker, which must find no violation. (`locksmith-bench torture --long` is the long form.)

use std::process::Command;

fn scenario(name: &str) {
    scenarios(&[name], None);
}

/// Runs `names` in one harness run, on `store` (`None`: a SQLite file per scenario; `mysql`
/// or `postgres`: a server the harness starts itself), and checks each scenario's line.
fn scenarios(names: &[&str], store: Option<&str>) {
    // A freeze lasts 2 × TTL + 0.5 s and must end 2 × TTL before the run does, so sigstop
    // needs more time than the others to find a holder on a loaded machine; the server
    // faults of `--store mysql` come every 3 s and need 3 × TTL left after one.
    let duration = if names.contains(&"sigstop") || store.is_some() {
        "10s"
    } else {
        "6s"
    };
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_locksmith-bench"));
    cmd.arg("torture");
    for name in names {
        cmd.args(["--scenario", name]);
    }
    if let Some(store) = store {
        cmd.args(["--store", store]);
    }
    let out = cmd
        .args(["--duration", duration, "--workers", "3"])
        .arg("--dir")
        .arg(dir.path())
        .output()
        .expect("the harness runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if let Some(store) = store
        && out.status.code() == Some(2)
        && stderr.contains("cannot start a server")
    {
        locksmith_testkit::skip_store(store, &stderr);
        return;
    }
    assert!(
        out.status.success(),
        "torture {names:?} failed:\n{stdout}\n{stderr}"
    );
    assert!(!stdout.contains("VIOLATION"), "{stdout}");
    for name in names {
        // The scenario ran (or said loudly why not) and produced holds.
        let line = stdout
            .lines()
            .find(|l| l.starts_with(&format!("{name}:")))
            .unwrap_or_else(|| panic!("no result line for {name}:\n{stdout}"));
        if line.contains("SKIPPED") {
            // A scenario that needs a server is skipped only where servers may be missing.
            if name.contains("redis") || name.starts_with("pg-") || store.is_some() {
                locksmith_testkit::skip_store(name, line);
            }
            continue;
        }
        let holds: usize = line
            .split_whitespace()
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        assert!(holds > 0, "{line}");
        if *name != "baseline" {
            assert!(!line.contains(" 0 faults"), "no fault was injected: {line}");
        }
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

#[test]
fn torture_postgres_restart_kill_freeze() {
    scenarios(
        &["pg-restart", "pg-kill-connections", "pg-freeze"],
        Some("postgres"),
    );
}

#[test]
fn torture_mysql_restart_kill_freeze() {
    scenarios(
        &["server-restart", "conn-kill", "server-freeze"],
        Some("mysql"),
    );
}

#[test]
fn torture_rejects_a_bad_store_url_before_starting_workers() {
    let out = Command::new(env!("CARGO_BIN_EXE_locksmith-bench"))
        .args(["torture", "--scenario", "baseline", "--store", "nosuch://x"])
        .output()
        .expect("the harness runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--store nosuch://x") && stderr.contains("redis://"),
        "the error names the flag and the schemes that work: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}
