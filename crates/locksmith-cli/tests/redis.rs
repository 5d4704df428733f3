//! The `locksmith` binary on a Redis store: a `redis-server` started by the test kit.

use std::process::{Command, Output};

use locksmith_testkit::servers::redis::{RedisConfig, RedisServer};

const BIN: &str = env!("CARGO_BIN_EXE_locksmith");

fn locksmith(url: &str, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("--url")
        .arg(url)
        .args(args)
        .env_remove("LOCKSMITH_URL")
        .env_remove("LOCKSMITH_TOKEN")
        .output()
        .expect("run locksmith")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn run_status_list_and_clear_on_redis() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let Some(server) = rt.block_on(RedisServer::start(RedisConfig {
        password: Some("cli-Secret-9".into()),
        ..RedisConfig::default()
    })) else {
        return;
    };
    let url = format!("{}?namespace=cli", server.url());

    // `run` holds the lock while the command runs and hands it its fence.
    let out = locksmith(
        &url,
        &[
            "run",
            "job",
            "--",
            "sh",
            "-c",
            "echo fence=$LOCKSMITH_FENCE",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let fence: u64 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .strip_prefix("fence=")
        .and_then(|f| f.parse().ok())
        .unwrap_or_else(|| panic!("no fence: {}", text(&out)));
    assert!(fence > 0);

    // `acquire` keeps it after exiting; `status` and `list` see it, without the password.
    let out = locksmith(&url, &["acquire", "held", "--ttl", "60s"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = locksmith(&url, &["status", "held"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = locksmith(&url, &["--format", "json", "list"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("\"held\""), "{}", text(&out));
    // A busy run exits 75.
    let out = locksmith(&url, &["run", "held", "--", "true"]);
    assert_eq!(out.status.code(), Some(75), "{}", text(&out));
    assert!(!text(&out).contains("cli-Secret-9"), "{}", text(&out));
    // `clear` frees it.
    let out = locksmith(&url, &["clear", "held"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = locksmith(&url, &["status", "held"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));

    // A wrong password: a clear error that does not show it.
    let port = server.port();
    let bad = format!("redis://:wrong-Secret-3@127.0.0.1:{port}");
    let out = locksmith(&bad, &["status", "x"]);
    assert!(!out.status.success());
    assert!(!text(&out).contains("wrong-Secret-3"), "{}", text(&out));
    assert!(text(&out).contains(":***@"), "{}", text(&out));
}

/// `run` of a short command costs the store its grant and its release, and no ownership
/// check (the first comes 500 ms after the grant).
#[test]
fn run_of_a_short_command_makes_two_store_calls() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let Some(server) = rt.block_on(RedisServer::start(RedisConfig::default())) else {
        locksmith_testkit::skip_store("redis", "redis-server is not installed");
        return;
    };
    let url = format!("{}?namespace=calls", server.url());
    // Once to load the scripts, then counted.
    assert!(
        locksmith(&url, &["run", "quick", "--", "true"])
            .status
            .success()
    );
    rt.block_on(server.command(&["CONFIG", "RESETSTAT"]));
    let out = locksmith(&url, &["run", "quick", "--", "sleep", "0.1"]);
    assert!(out.status.success(), "{}", text(&out));
    let stats = rt
        .block_on(server.command(&["INFO", "commandstats"]))
        .text();
    let calls = |cmd: &str| -> u64 {
        stats
            .lines()
            .find_map(|l| l.strip_prefix(&format!("cmdstat_{cmd}:calls=")))
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    assert_eq!(
        calls("evalsha") + calls("eval"),
        2,
        "one acquire and one release script: {stats}"
    );
}
