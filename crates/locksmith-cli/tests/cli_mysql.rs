//! The `locksmith` binary against a MariaDB server started by the test kit: `run` excludes a
//! second `run`, `acquire`/`status`/`release` work with a token, and the password of the URL
//! never appears in the output.

use std::process::Command;

use locksmith_testkit::servers::mariadb::{MariaDb, PASSWORD};

const BIN: &str = env!("CARGO_BIN_EXE_locksmith");

fn locksmith(url: &str, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .env_remove("LOCKSMITH_TOKEN")
        .env_remove("RUST_LOG")
        .env("LOCKSMITH_URL", url)
        .args(args)
        .output()
        .expect("run locksmith")
}

#[test]
fn the_cli_works_on_mysql() {
    let server = match MariaDb::start() {
        Ok(s) => s,
        Err(why) => {
            locksmith_testkit::skip_store("mysql (CLI)", &why);
            return;
        }
    };
    let url = format!("{}?namespace=cli", server.url());
    // a run holds the lock while a second run finds it busy (exit 75)
    let mut holder = Command::new(BIN)
        .env("LOCKSMITH_URL", &url)
        .args(["run", "job", "--", "sleep", "3"])
        .spawn()
        .expect("spawn run");
    let start = std::time::Instant::now();
    loop {
        let st = locksmith(&url, &["status", "job"]);
        if st.status.code() == Some(0) {
            break;
        }
        assert!(
            start.elapsed().as_secs() < 20,
            "the run never held the lock"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let busy = locksmith(&url, &["run", "job", "--", "true"]);
    assert_eq!(busy.status.code(), Some(75), "{busy:?}");
    assert!(holder.wait().unwrap().success());
    let ran = locksmith(
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
    assert!(ran.status.success(), "{ran:?}");
    assert!(String::from_utf8_lossy(&ran.stdout).starts_with("fence="));

    // acquire prints a token; release with it frees the lock
    let acq = locksmith(&url, &["acquire", "tok", "--ttl", "60s"]);
    assert!(acq.status.success(), "{acq:?}");
    let out = String::from_utf8_lossy(&acq.stdout).into_owned();
    let token = out
        .lines()
        .find_map(|l| l.strip_prefix("token="))
        .expect("acquire prints token=")
        .to_string();
    let fence: u64 = out
        .lines()
        .find_map(|l| l.strip_prefix("fence="))
        .expect("acquire prints fence=")
        .parse()
        .unwrap();
    assert!(fence > 1_600_000_000_000_000, "a hybrid fence: {fence}");
    assert_eq!(locksmith(&url, &["status", "tok"]).status.code(), Some(0));
    let list = locksmith(&url, &["list"]);
    assert!(String::from_utf8_lossy(&list.stdout).contains("tok"));
    let rel = locksmith(&url, &["release", "tok", "--token", &token]);
    assert!(rel.status.success(), "{rel:?}");
    assert_eq!(locksmith(&url, &["status", "tok"]).status.code(), Some(1));

    // a wrong password: a clear error without the secret
    let wrong = url.replace(PASSWORD, "Not-the-pw-42");
    let bad = locksmith(&wrong, &["status", "tok"]);
    assert!(!bad.status.success());
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&bad.stdout),
        String::from_utf8_lossy(&bad.stderr)
    );
    assert!(
        !all.contains("Not-the-pw-42") && !all.contains(PASSWORD),
        "{all}"
    );
    assert!(all.contains("***"), "{all}");
}
