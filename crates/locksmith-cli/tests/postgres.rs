//! The `locksmith` binary against a PostgreSQL server started by the test kit: acquire,
//! status, a busy `run`, release and list, and a wrong password kept out of the output.

use std::process::Command;

use locksmith_testkit::servers::postgres::{PASSWORD, PostgresServer};

const BIN: &str = env!("CARGO_BIN_EXE_locksmith");

fn locksmith(url: &str, args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(BIN)
        .env_remove("LOCKSMITH_URL")
        .env_remove("LOCKSMITH_TOKEN")
        .arg("--url")
        .arg(url)
        .args(args)
        .output()
        .expect("run locksmith");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_on_postgres() {
    let server = match PostgresServer::start().await {
        Ok(s) => s,
        Err(why) => {
            locksmith_testkit::skip_store("postgres", &why);
            return;
        }
    };
    let url = format!("{}?namespace=cli", server.url("postgres"));
    let (code, out, err) = locksmith(&url, &["acquire", "job", "--ttl", "60s"]);
    assert_eq!(code, Some(0), "{out}{err}");
    let token = out
        .lines()
        .find_map(|l| l.strip_prefix("token="))
        .expect("token=")
        .to_string();
    let fence: u64 = out
        .lines()
        .find_map(|l| l.strip_prefix("fence="))
        .expect("fence=")
        .parse()
        .unwrap();
    assert!(fence > 1_600_000_000_000_000, "a hybrid fence: {fence}");
    assert_eq!(locksmith(&url, &["-q", "status", "job"]).0, Some(0));
    // A second holder is busy (75) and its command does not run.
    let (code, out, err) = locksmith(&url, &["run", "job", "--wait", "0s", "--", "echo", "ran"]);
    assert_eq!(code, Some(75), "{out}{err}");
    assert!(!out.contains("ran"));
    let (code, out, _) = locksmith(&url, &["--format", "json", "list"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("\"job\""), "{out}");
    let (code, out, err) = locksmith(&url, &["release", "job", "--token", &token]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(locksmith(&url, &["-q", "status", "job"]).0, Some(1));
    // Now `run` gets it, with a larger fence in its environment.
    let (code, out, err) = locksmith(
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
    assert_eq!(code, Some(0), "{out}{err}");
    let run_fence: u64 = out
        .lines()
        .find_map(|l| l.strip_prefix("fence="))
        .expect("the command's output")
        .parse()
        .unwrap();
    assert!(run_fence > fence);
    // The URL's password is never shown, not even when the server cannot be reached.
    let bad = url.replace(
        &format!("127.0.0.1:{}", server.port()),
        &format!("127.0.0.1:{}", locksmith_testkit::servers::free_port()),
    );
    let (code, out, err) = locksmith(&format!("{bad}&timeout=2s"), &["status", "job"]);
    assert_ne!(code, Some(0));
    assert!(
        !out.contains(PASSWORD) && !err.contains(PASSWORD),
        "{out}{err}"
    );
    assert!(
        err.contains("***"),
        "the error names the redacted URL: {err}"
    );
}
