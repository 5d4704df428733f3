//! Hostile command-line input, as property tests: lock names with SQL/Redis metacharacters,
//! control characters, 10 KB names and invalid UTF-8, and garbage durations. Each gets a
//! clear error (exit 2, one line on stderr, no panic) or is stored verbatim; the store's
//! other locks are untouched; tokens never appear in `list` or `status`.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::process::{Command, Output};

use proptest::prelude::*;

const BIN: &str = env!("CARGO_BIN_EXE_locksmith");

fn locksmith(url: &str, args: &[OsString]) -> Output {
    Command::new(BIN)
        .env_remove("LOCKSMITH_URL")
        .env_remove("LOCKSMITH_TOKEN")
        .env_remove("RUST_LOG")
        .arg("--url")
        .arg(url)
        .arg("--color=never")
        .args(args)
        .output()
        .expect("locksmith runs")
}

fn os(s: &str) -> OsString {
    OsString::from(s)
}

fn hostile_name() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::sample::select(vec![
            "'; DROP TABLE locksmith_locks; --",
            "*",
            "?",
            "[a-z]",
            "{slot}",
            "\x01\x1b[2J",
            "a\nb",
            "-rf",
            "--url=memory://",
            " ",
        ])
        .prop_map(|s| s.as_bytes().to_vec()),
        Just(vec![b'n'; 10 * 1024]),
        Just(vec![0xff, 0xfe, b'x']),
        prop::collection::vec(1u8..=255, 1..40),
    ]
}

/// The token `acquire --format json` printed.
fn token(out: &Output) -> String {
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("acquire --format json prints JSON");
    v["token"].as_str().expect("a token").to_string()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn hostile_names_through_the_cli(name in hostile_name()) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("locks.db").display());
        let sentinel = locksmith(&url, &[os("--format"), os("json"), os("acquire"), os("sentinel"), os("--ttl"), os("10m")]);
        prop_assert!(sentinel.status.success(), "{sentinel:?}");
        let secret = token(&sentinel);

        let arg = OsString::from_vec(name.clone());
        let out = locksmith(&url, &[os("--format"), os("json"), os("acquire"), arg.clone(), os("--ttl"), os("1m")]);
        let code = out.status.code();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        prop_assert!(code != Some(101), "panicked: {stderr}");
        let valid = std::str::from_utf8(&name).ok().filter(|s| !s.is_empty() && s.len() <= 255 && !s.starts_with('-'));
        match code {
            Some(0) => {
                let s = valid.expect("only a valid name is accepted");
                // Stored verbatim.
                let st = locksmith(&url, &[os("--format"), os("json"), os("status"), arg.clone()]);
                prop_assert_eq!(st.status.code(), Some(0), "{:?}", st);
                let v: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
                prop_assert_eq!(v["name"].as_str(), Some(s));
            }
            Some(2) => {
                prop_assert!(!stderr.trim().is_empty(), "no message");
                prop_assert!(stderr.len() < 4096, "a huge message: {} bytes", stderr.len());
            }
            other => prop_assert!(false, "exit {other:?}: {stderr}"),
        }
        // The sentinel is untouched, and no listing shows a token.
        let st = locksmith(&url, &[os("status"), os("sentinel")]);
        prop_assert_eq!(st.status.code(), Some(0));
        for args in [vec![os("list")], vec![os("--format"), os("json"), os("list")], vec![os("status"), os("sentinel")], vec![os("--format"), os("json"), os("status"), os("sentinel")]] {
            let o = locksmith(&url, &args);
            let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
            prop_assert!(!text.contains(&secret), "a token in {args:?}: {text}");
        }
        prop_assert!(!stderr.contains(&secret));
    }

    #[test]
    fn hostile_durations_through_the_cli(ttl in prop_oneof![
        Just("0s".to_string()), Just("-5s".to_string()), Just("1ns".to_string()),
        Just("999999999999y".to_string()), Just("'; DROP".to_string()), "\\PC{0,12}",
    ]) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("locks.db").display());
        let out = locksmith(&url, &[os("acquire"), os("job"), os("--ttl"), OsString::from(&ttl)]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        prop_assert!(matches!(out.status.code(), Some(0) | Some(2)), "{ttl:?}: {out:?}");
        if out.status.code() == Some(2) {
            prop_assert!(!stderr.trim().is_empty());
        }
    }
}
