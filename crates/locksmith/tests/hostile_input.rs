//! Hostile input, as property tests: lock names, namespaces, durations and URLs full of SQL
//! and Redis metacharacters (`'; DROP TABLE`, `*`, `?`, `[`, `{`), NUL and control
//! characters, and oversized values. Each gets a clear error or is stored verbatim, the
//! store's other locks are untouched, tokens never show in listings or errors, and
//! credentials are masked in errors and `Debug`.
//!
//! Case counts are bounded (CI has 2 cores).

#![cfg(all(feature = "memory", feature = "sqlite"))]

use std::time::Duration;

use locksmith::blocking::Locksmith;
use locksmith::{Error, ListQuery, MAX_NAME_LEN, MAX_NAMESPACE_LEN};
use proptest::prelude::*;

/// Strings a hostile caller would try.
fn hostile() -> impl Strategy<Value = String> {
    let specials = prop::sample::select(vec![
        "'; DROP TABLE locksmith_locks; --",
        "\"; DELETE FROM locksmith_fence; --",
        "*",
        "?",
        "[a-z]",
        "{slot}",
        "job*",
        "%",
        "_",
        "\\",
        "a\0b",
        "\0",
        "\x01\x02\x1b[31m\x7f",
        "line\nbreak\r\t",
        "KEYS *",
        "__keyspace@0__:*",
        "\u{202e}reversed",
        "💥",
        "",
        " ",
    ]);
    prop_oneof![
        specials.prop_map(String::from),
        "[\\x00-\\x7f]{1,40}",
        "\\PC{1,80}",
        (1usize..4).prop_map(|n| "x".repeat(MAX_NAME_LEN - 2 + n)),
        Just("n".repeat(10 * 1024)),
        (any::<Vec<u8>>()).prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
    ]
}

fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_NAME_LEN && !s.contains('\0')
}

/// A store with a sentinel lock, whose fence and token we know.
struct Fixture {
    _dir: tempfile::TempDir,
    lm: Locksmith,
    sentinel: locksmith::blocking::LockGuard,
    fence: u64,
    token: String,
}

fn fixture(kind: &str) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let url = match kind {
        "sqlite" => format!("sqlite://{}", dir.path().join("locks.db").display()),
        _ => "memory://".to_string(),
    };
    let lm = Locksmith::connect(&url).unwrap();
    let sentinel = lm
        .lock("sentinel")
        .ttl(Duration::from_secs(600))
        .acquire()
        .unwrap();
    let fence = sentinel.fence();
    let token = sentinel.token().expose().to_string();
    Fixture {
        _dir: dir,
        lm,
        sentinel,
        fence,
        token,
    }
}

fn untouched(f: &Fixture) {
    assert!(f.sentinel.is_held());
    let info =
        f.lm.inspect("sentinel")
            .unwrap()
            .expect("the sentinel is still there");
    assert_eq!(info.fence, Some(f.fence));
    assert!(!info.expired);
}

fn no_token(f: &Fixture, text: &str) {
    assert!(!text.contains(&f.token), "a token leaked: {text}");
}

fn name_case(f: &Fixture, name: &str) {
    match f.lm.lock(name).ttl(Duration::from_secs(30)).try_acquire() {
        Ok(Some(g)) => {
            assert!(valid_name(name), "an invalid name was accepted: {name:?}");
            no_token(f, &format!("{g:?}"));
            // Stored verbatim: inspect and list find exactly this name.
            let info = f.lm.inspect(name).unwrap().expect("the lock is there");
            assert_eq!(info.name, name);
            no_token(f, &format!("{info:?}"));
            let page = f.lm.list(ListQuery::prefix(name)).unwrap();
            assert!(
                page.items.iter().any(|i| i.name == name),
                "{name:?} not listed"
            );
            // A second try is refused by contention, naming the holder, never the token.
            let held =
                f.lm.lock(name)
                    .wait(locksmith::Wait::No)
                    .acquire()
                    .unwrap_err();
            assert!(held.is_contention(), "{held:?}");
            no_token(f, &held.to_string());
            assert!(!held.to_string().contains(g.token().expose()));
            assert!(!format!("{held:?}").contains(g.token().expose()));
            g.release().unwrap();
            assert!(
                f.lm.inspect(name)
                    .unwrap()
                    .is_none_or(|i| i.expired || i.released)
            );
        }
        Ok(None) => panic!("{name:?} was held by nobody yet reported busy"),
        Err(e) => {
            assert!(!valid_name(name), "a valid name was refused: {name:?}: {e}");
            assert!(matches!(e, Error::InvalidName { .. }), "{e:?}");
            let msg = e.to_string();
            assert!(msg.contains("name"), "unclear: {msg}");
            assert!(
                msg.len() < 1024,
                "the error repeats a huge name: {} bytes",
                msg.len()
            );
            no_token(f, &msg);
        }
    }
    untouched(f);
    // Listing everything shows no token.
    let all = f.lm.list(ListQuery::default()).unwrap();
    no_token(f, &format!("{all:?}"));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn hostile_names_on_sqlite(names in prop::collection::vec(hostile(), 1..4)) {
        let f = fixture("sqlite");
        for n in &names {
            name_case(&f, n);
        }
    }

    #[test]
    fn hostile_names_on_memory(names in prop::collection::vec(hostile(), 1..4)) {
        let f = fixture("memory");
        for n in &names {
            name_case(&f, n);
        }
    }

    #[test]
    fn hostile_namespaces(ns in hostile()) {
        let f = fixture("sqlite");
        let ok = ns.len() <= MAX_NAMESPACE_LEN
            && ns.chars().all(|c| c.is_ascii_alphanumeric() || "-_.:/".contains(c));
        match f.lm.with_namespace(&ns) {
            Ok(other) => {
                prop_assert!(ok, "accepted {ns:?}");
                let g = other.lock("sentinel").try_acquire().unwrap();
                if ns.is_empty() {
                    prop_assert!(g.is_none());
                } else {
                    // A namespace of its own: the sentinel there is free and separate.
                    let g = g.expect("free in another namespace");
                    prop_assert_eq!(other.list(ListQuery::default()).unwrap().items.len(), 1);
                    prop_assert_eq!(other.reset_all().unwrap(), 1);
                    drop(g);
                }
            }
            Err(e) => {
                prop_assert!(!ok, "refused {ns:?}: {e}");
                prop_assert!(e.is_invalid_input(), "{e:?}");
                prop_assert!(e.to_string().contains("namespace"));
            }
        }
        untouched(&f);
    }

    #[test]
    fn hostile_durations(
        ttl_ns in prop_oneof![0u64..100_000_000, any::<u64>()],
        secs in prop_oneof![Just(u64::MAX), any::<u64>(), 0u64..10],
    ) {
        let f = fixture("memory");
        for ttl in [Duration::from_nanos(ttl_ns), Duration::from_secs(secs)] {
            let got = f.lm.lock("d").ttl(ttl).try_acquire();
            let fine = ttl >= locksmith::MIN_TTL && ttl <= locksmith::MAX_DURATION;
            match got {
                Ok(Some(g)) => {
                    prop_assert!(fine, "accepted ttl {ttl:?}");
                    g.release().unwrap();
                }
                Ok(None) => prop_assert!(false, "free lock reported busy"),
                Err(e) => {
                    prop_assert!(!fine, "refused ttl {ttl:?}: {e}");
                    prop_assert!(matches!(e, Error::InvalidOption { .. }), "{e:?}");
                }
            }
        }
        untouched(&f);
    }

    #[test]
    fn hostile_urls_never_show_credentials(
        // Not `sqlite`: a SQLite URL has no credentials, its body is a file path, and errors
        // name the path (`sqlite://u:p@h/x` is the relative file `u:p@h/x`).
        scheme in prop::sample::select(vec!["postgres", "mysql", "redis", "memory", "bogus", "rediss"]),
        user in "[a-z]{0,8}",
        secret in "[A-Za-z0-9]{6,16}",
        rest in hostile(),
    ) {
        let secret = format!("Pw{secret}");
        let url = format!("{scheme}://{user}:{secret}@host:1/{}", rest.replace('\0', ""));
        let redacted = locksmith::redact_url(&url);
        prop_assert!(!redacted.contains(&secret), "{redacted}");
        let lm = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
            .block_on(async { locksmith::Locksmith::connect(&url).await });
        match lm {
            Ok(lm) => {
                let shown = format!("{lm:?}");
                prop_assert!(!shown.contains(&secret), "{}", shown);
            }
            Err(e) => {
                let shown = format!("{e} / {e:?}");
                prop_assert!(!shown.contains(&secret), "{}", shown);
            }
        }
    }
}
