//! Redis-specific behaviour on real `redis-server`s started by the test kit: key layout,
//! listing names with glob characters, one subscription connection for many waiters,
//! dropped connections, restarts, credentials.

#![cfg(feature = "redis")]

use std::time::{Duration, Instant};

use locksmith::{ListQuery, Locksmith, Wait};
use locksmith_testkit::cases::{eventually, stale_grant_is_not_taken};
use locksmith_testkit::servers::redis::{RedisConfig, RedisServer, Reply};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

async fn server(config: RedisConfig) -> Option<RedisServer> {
    RedisServer::start(config).await
}

/// Every key the server holds, by SCAN.
async fn all_keys(server: &RedisServer) -> Vec<String> {
    let mut keys = Vec::new();
    let mut cursor = "0".to_string();
    loop {
        let Reply::Array(parts) = server.command(&["SCAN", &cursor, "COUNT", "1000"]).await else {
            panic!("SCAN answered oddly");
        };
        cursor = parts[0].text();
        if let Reply::Array(found) = &parts[1] {
            keys.extend(found.iter().map(Reply::text));
        }
        if cursor == "0" {
            return keys;
        }
    }
}

/// The `sub=` counts of every pub/sub connection in `CLIENT LIST`.
async fn subscription_connections(server: &RedisServer) -> Vec<u64> {
    let list = server.command(&["CLIENT", "LIST"]).await.text();
    list.lines()
        .filter(|l| {
            l.contains("cmd=subscribe")
                || l.contains("cmd=unsubscribe")
                || l.contains(" sub=") && !l.contains(" sub=0 ")
        })
        .filter_map(|l| {
            l.split_whitespace()
                .find_map(|f| f.strip_prefix("sub="))
                .and_then(|n| n.parse().ok())
        })
        .collect()
}

async fn connections(server: &RedisServer) -> usize {
    server
        .command(&["CLIENT", "LIST"])
        .await
        .text()
        .lines()
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_share_an_escaped_hash_tag_and_stay_under_the_prefix() {
    let Some(server) = server(RedisConfig::default()).await else {
        return;
    };
    let lm = Locksmith::connect(&format!("{}?prefix=app:&namespace=ns", server.url()))
        .await
        .unwrap();
    let g = lm.lock("x}y{z:w").acquire().await.unwrap();
    let mut keys = all_keys(&server).await;
    keys.sort();
    assert_eq!(keys, ["app:{ns:x%7Dy%7Bz%3Aw}", "app:{ns:x%7Dy%7Bz%3Aw}f"]);
    // Both keys hash to the slot of the escaped tag alone.
    let slot = |k: &str| {
        let k = k.to_string();
        let s = &server;
        async move { s.command(&["CLUSTER", "KEYSLOT", &k]).await }
    };
    let tag = slot("ns:x%7Dy%7Bz%3Aw").await;
    if !matches!(tag, Reply::Error(_)) {
        assert_eq!(slot(&keys[0]).await, tag);
        assert_eq!(slot(&keys[1]).await, tag);
    }
    let fields = server.command(&["HGETALL", &keys[0]]).await;
    let Reply::Array(fields) = fields else {
        panic!("{fields:?}")
    };
    let names: Vec<String> = fields.iter().step_by(2).map(Reply::text).collect();
    for f in ["tok", "owner", "host", "pid", "fence", "at", "mh"] {
        assert!(names.contains(&f.to_string()), "{f} missing from {names:?}");
    }
    // The lease is the key's TTL on the server's clock (one millisecond more than asked:
    // `PEXPIRE` counts from the script's start truncated to the millisecond).
    let pttl = server.command(&["PTTL", &keys[0]]).await;
    assert!(
        matches!(pttl, Reply::Int(t) if t > 0 && t <= 60_001),
        "{pttl:?}"
    );
    g.release().await.unwrap();
    assert_eq!(all_keys(&server).await, ["app:{ns:x%7Dy%7Bz%3Aw}f"]);
    let bad = Locksmith::connect(&format!("{}?prefix=a{{b}}", server.url())).await;
    let err = bad.unwrap_err();
    assert!(err.to_string().contains("prefix"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_names_with_glob_characters() {
    let Some(server) = server(RedisConfig::default()).await else {
        return;
    };
    let lm = Locksmith::connect(&format!("{}?namespace=n1", server.url()))
        .await
        .unwrap();
    let other = Locksmith::connect(&format!("{}?namespace=n1:x", server.url()))
        .await
        .unwrap();
    // Keys outside the prefix, looking like ours, must never be listed or reset.
    server.command(&["SET", "other:{n1:a*b}", "x"]).await;
    server.command(&["SET", "locksmithX{n1:a*b}", "x"]).await;
    let names = [
        "a*b", "a?c", "a[1]", "a\\d", "x{y}z", "p:q", "a", "a*", "b%7D",
    ];
    let mut guards = Vec::new();
    for n in names {
        guards.push(lm.lock(n).acquire().await.unwrap().leak());
    }
    let _o = other.lock("a*b").acquire().await.unwrap();
    let list = |prefix: &'static str| {
        let lm = lm.clone();
        async move {
            lm.list(ListQuery::prefix(prefix))
                .await
                .unwrap()
                .items
                .into_iter()
                .map(|i| i.name)
                .collect::<Vec<_>>()
        }
    };
    let mut sorted: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    sorted.sort();
    assert_eq!(list("").await, sorted);
    assert_eq!(list("a*").await, ["a*", "a*b"]);
    assert_eq!(list("a?").await, ["a?c"]);
    assert_eq!(list("a[").await, ["a[1]"]);
    assert_eq!(list("a\\").await, ["a\\d"]);
    assert_eq!(list("x{").await, ["x{y}z"]);
    assert_eq!(list("p:").await, ["p:q"]);
    assert_eq!(list("b%").await, ["b%7D"]);
    // Paging follows byte order.
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let mut q = ListQuery::all().limit(2);
        q.after = after;
        let page = lm.list(q).await.unwrap();
        seen.extend(page.items.into_iter().map(|i| i.name));
        match page.next {
            Some(c) => after = Some(c),
            None => break,
        }
    }
    assert_eq!(seen, sorted);
    assert_eq!(lm.reset_all().await.unwrap(), names.len() as u64);
    assert_eq!(
        server.command(&["EXISTS", "other:{n1:a*b}"]).await,
        Reply::Int(1)
    );
    assert_eq!(
        server.command(&["EXISTS", "locksmithX{n1:a*b}"]).await,
        Reply::Int(1)
    );
    assert!(other.inspect("a*b").await.unwrap().is_some());
    drop(guards);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_subscription_connection_for_many_waiters() {
    let Some(server) = server(RedisConfig::default()).await else {
        return;
    };
    const N: usize = 1200;
    let holder = Locksmith::connect(&server.url()).await.unwrap();
    let lm = Locksmith::connect(&server.url()).await.unwrap();
    let mut held = Vec::new();
    for i in 0..N {
        held.push(holder.lock(format!("w{i}")).acquire().await.unwrap());
    }
    // One more name with many waiters of its own.
    let hot = holder.lock("hot").acquire().await.unwrap();
    let before = connections(&server).await;
    let mut waiters = Vec::new();
    for i in 0..N {
        let lm = lm.clone();
        waiters.push(tokio::spawn(async move {
            lm.lock(format!("w{i}"))
                .wait(Wait::For(Duration::from_secs(30)))
                .acquire()
                .await
        }));
    }
    let mut hot_waiters = Vec::new();
    for _ in 0..50 {
        let lm = lm.clone();
        hot_waiters.push(tokio::spawn(async move {
            let g = lm
                .lock("hot")
                .wait(Wait::For(Duration::from_secs(30)))
                .acquire()
                .await?;
            g.release().await
        }));
    }
    // Wait until every name is subscribed. The holder's guards listen for clears of
    // their names on its one pub/sub connection; the waiters add exactly one more: two
    // connections, each multiplexing two channels for each of the N + 1 names (the name's
    // wake-ups, and the grants pushed to this store's waiters of it).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let subs = subscription_connections(&server).await;
        let channels = 2 * (N as u64 + 1);
        if subs == [channels, channels] {
            break;
        }
        assert!(Instant::now() < deadline, "subscriptions: {subs:?}");
        tokio::time::sleep(ms(100)).await;
    }
    // The waiters opened no connection beyond the store's subscription connection.
    assert!(connections(&server).await <= before + 1, "connections grew");
    // A release wakes that name's waiters only: the others keep waiting.
    let first = held.remove(0);
    first.release().await.unwrap();
    let w0 = waiters.remove(0);
    let g0 = tokio::time::timeout(Duration::from_secs(5), w0)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(waiters.iter().take(N - 1).all(|w| !w.is_finished()));
    drop(g0);
    hot.release().await.unwrap();
    for g in held {
        g.release().await.unwrap();
    }
    for w in waiters {
        let g = tokio::time::timeout(Duration::from_secs(30), w)
            .await
            .unwrap()
            .unwrap();
        g.unwrap().release().await.unwrap();
    }
    for w in hot_waiters {
        tokio::time::timeout(Duration::from_secs(30), w)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
    // The last waiter leaving a name unsubscribed it.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let subs = subscription_connections(&server).await;
        if subs.iter().all(|s| *s == 0) {
            break;
        }
        assert!(Instant::now() < deadline, "still subscribed: {subs:?}");
        tokio::time::sleep(ms(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_kill_mid_run_carries_on() {
    let Some(server) = server(RedisConfig::default()).await else {
        return;
    };
    let lm = Locksmith::connect(&format!("{}?timeout=1s", server.url()))
        .await
        .unwrap();
    let other = Locksmith::connect(&format!("{}?timeout=1s", server.url()))
        .await
        .unwrap();
    let held = lm.lock("k").ttl(ms(900)).acquire().await.unwrap();
    let waiter = {
        let other = other.clone();
        tokio::spawn(async move {
            other
                .lock("k")
                .wait(Wait::For(Duration::from_secs(20)))
                .acquire()
                .await
        })
    };
    tokio::time::sleep(ms(300)).await;
    // Drop every connection of both stores: commands and subscriptions.
    for kind in ["normal", "pubsub"] {
        let r = server.command(&["CLIENT", "KILL", "TYPE", kind]).await;
        assert!(matches!(r, Reply::Int(_)), "{r:?}");
    }
    // The holder's watchdog renews through the reconnect (ttl 900 ms, renewals every 300 ms).
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(held.is_held(), "the holder lost its lock after CLIENT KILL");
    assert!(!waiter.is_finished());
    // The waiter resubscribed: a release wakes it.
    let released_at = Instant::now();
    held.release().await.unwrap();
    let g = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        released_at.elapsed() < Duration::from_secs(2),
        "woken late: {:?}",
        released_at.elapsed()
    );
    g.release().await.unwrap();
    // And new calls work on both.
    lm.lock("k2")
        .acquire()
        .await
        .unwrap()
        .release()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_without_persistence_loses_the_guard() {
    let Some(mut server) = server(RedisConfig::default()).await else {
        return;
    };
    let lm = Locksmith::connect(&format!("{}?timeout=1s", server.url()))
        .await
        .unwrap();
    assert!(!lm.capabilities().persistent, "no AOF: not persistent");
    let g = lm
        .lock("r")
        .ttl(Duration::from_secs(3))
        .acquire()
        .await
        .unwrap();
    let fence = g.fence();
    let lost = g.lost();
    server.restart().await;
    let reason = tokio::time::timeout(Duration::from_secs(10), lost)
        .await
        .expect("the watchdog reports the guard lost when its key is gone");
    assert!(!g.is_held(), "lost: {reason:?}");
    // Fences keep increasing although the server forgot the counter.
    let g2 = lm.lock("r").acquire().await.unwrap();
    assert!(g2.fence() > fence);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_with_appendfsync_always_keeps_locks() {
    let Some(mut server) = server(RedisConfig {
        persistent: true,
        ..RedisConfig::default()
    })
    .await
    else {
        return;
    };
    let lm = Locksmith::connect(&format!("{}?timeout=1s", server.url()))
        .await
        .unwrap();
    assert!(lm.capabilities().persistent);
    let g = lm
        .lock("p")
        .ttl(Duration::from_secs(3))
        .acquire()
        .await
        .unwrap();
    server.restart().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        g.is_held(),
        "the lock survived the restart and kept being renewed"
    );
    let other = Locksmith::connect(&server.url()).await.unwrap();
    assert!(other.lock("p").try_acquire().await.unwrap().is_none());
    g.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_never_shown_and_acl_users_work() {
    let secret = "pw-Secret-4242";
    let Some(server) = server(RedisConfig {
        password: Some(secret.into()),
        acl_user: Some(("app".into(), "app-Secret-77".into())),
        ..RedisConfig::default()
    })
    .await
    else {
        return;
    };
    let port = server.port();
    // Wrong password: a clear, non-retryable error without the password.
    let err = Locksmith::connect(&format!("redis://:wrong-Secret-1@127.0.0.1:{port}"))
        .await
        .unwrap_err();
    let text = format!("{err} {err:?}");
    assert!(!text.contains("wrong-Secret-1"), "{text}");
    assert!(!err.is_retryable(), "{text}");
    assert!(text.contains(":***@"), "{text}");
    // No password: refused as well.
    assert!(
        Locksmith::connect(&format!("redis://127.0.0.1:{port}"))
            .await
            .is_err()
    );
    // Right password: Debug, identity and errors do not show it.
    let lm = Locksmith::connect(&format!("{}?timeout=300ms", server.url()))
        .await
        .unwrap();
    let g = lm.lock("a").acquire().await.unwrap();
    let mut text = format!("{lm:?} {} {:?}", lm.store().identity(), lm.store());
    server.set_frozen(true);
    let err = lm.inspect("a").await.unwrap_err();
    server.set_frozen(false);
    assert!(err.is_retryable(), "{err}");
    text.push_str(&format!("{err} {err:?}"));
    assert!(!text.contains(secret), "{text}");
    g.release().await.unwrap();
    // An ACL user.
    let acl = Locksmith::connect(&format!("redis://app:app-Secret-77@127.0.0.1:{port}"))
        .await
        .unwrap();
    let g = acl.lock("b").acquire().await.unwrap();
    assert!(!format!("{acl:?}").contains("app-Secret-77"));
    g.release().await.unwrap();
    let err = Locksmith::connect(&format!("redis://app:nope-Secret@127.0.0.1:{port}"))
        .await
        .unwrap_err();
    assert!(!format!("{err} {err:?}").contains("nope-Secret"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_urls_name_the_fix() {
    for (url, says) in [
        ("redis://127.0.0.1:1?prefix=a{b", "prefix"),
        ("redis://127.0.0.1:1?bogus=1", "bogus"),
        ("redis://127.0.0.1:1?db=2", "db"),
        ("redis+cluster://", "host"),
    ] {
        let err = Locksmith::connect(url).await.unwrap_err();
        assert!(err.to_string().contains(says), "{url}: {err}");
    }
    // Nothing listens on port 1: retryable, naming the URL.
    let err = Locksmith::connect("redis://:pw-Hidden@127.0.0.1:1?timeout=500ms")
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert!(!err.to_string().contains("pw-Hidden"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hand_over_an_existing_client() {
    let Some(server) = server(RedisConfig::default()).await else {
        return;
    };
    let client = redis::Client::open(server.url()).unwrap();
    let store = locksmith::store::redis::RedisStore::from_client(
        client,
        locksmith::store::redis::RedisOptions::default(),
    )
    .await
    .unwrap();
    let lm = Locksmith::with_store(store, locksmith::Namespace::default(), &server.url());
    let g = lm.lock("h").acquire().await.unwrap();
    let other = Locksmith::connect(&server.url()).await.unwrap();
    assert!(
        other.lock("h").try_acquire().await.unwrap().is_none(),
        "same layout, same lock"
    );
    g.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_wakes_by_sharded_pubsub_and_lists_every_master() {
    use locksmith_testkit::servers::redis::RedisCluster;
    let Some(cluster) = RedisCluster::start().await else {
        return;
    };
    let url = cluster.url();
    let a = Locksmith::connect(&url).await.unwrap();
    let b = Locksmith::connect(&url).await.unwrap();
    assert!(!a.capabilities().atomic_multi);
    // Names spread over every master.
    let names: Vec<String> = (0..60).map(|i| format!("n{i:02}")).collect();
    let mut guards = Vec::new();
    for n in &names {
        guards.push(a.lock(n.as_str()).acquire().await.unwrap());
    }
    let mut per_master = Vec::new();
    for node in cluster.nodes() {
        per_master.push(node.command(&["DBSIZE"]).await);
    }
    assert!(
        per_master
            .iter()
            .all(|r| matches!(r, Reply::Int(n) if *n > 0)),
        "{per_master:?}"
    );
    let listed: Vec<String> = b
        .list(ListQuery::all())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|i| i.name)
        .collect();
    assert_eq!(listed, names);
    // A release in one store wakes a waiter of another at once (not at its 1 s re-poll).
    for round in 0..5 {
        let name = names[round * 7].clone();
        let g = guards.remove(round * 7 - round);
        let b2 = b.clone();
        let waiter = tokio::spawn(async move {
            let g = b2
                .lock(name)
                .wait(Wait::For(Duration::from_secs(10)))
                .acquire()
                .await;
            (Instant::now(), g)
        });
        tokio::time::sleep(ms(300)).await;
        let at = Instant::now();
        g.release().await.unwrap();
        let (woke, got) = waiter.await.unwrap();
        got.unwrap().release().await.unwrap();
        assert!(
            woke - at < ms(500),
            "round {round}: woken after {:?}",
            woke - at
        );
    }
    // Sharded channels are used (SSUBSCRIBE shows up as `ssub=` on the nodes).
    let mut sharded = 0;
    for node in cluster.nodes() {
        let list = node.command(&["CLIENT", "LIST"]).await.text();
        sharded += list
            .split_whitespace()
            .filter_map(|f| f.strip_prefix("ssub="))
            .filter_map(|n| n.parse::<u64>().ok())
            .sum::<u64>();
    }
    assert!(sharded > 0, "no sharded subscriptions");
    assert_eq!(a.reset_all().await.unwrap(), 55);
    for g in guards {
        assert!(g.release().await.is_err());
    }
}

#[cfg(feature = "redis-tls")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_private_test_ca() {
    let Some(server) = server(RedisConfig {
        tls: true,
        password: Some("tls-Secret-5".into()),
        ..RedisConfig::default()
    })
    .await
    else {
        return;
    };
    let ca = server.ca_file();
    let url = format!("{}?tls_ca={}", server.url(), ca.display());
    assert!(url.starts_with("rediss://"), "{url}");
    let lm = Locksmith::connect(&url).await.unwrap();
    let other = Locksmith::connect(&url).await.unwrap();
    let g = lm.lock("t").acquire().await.unwrap();
    // Wake-ups travel over TLS too.
    let waiter = tokio::spawn(async move {
        let g = other
            .lock("t")
            .wait(Wait::For(Duration::from_secs(10)))
            .acquire()
            .await;
        (Instant::now(), g)
    });
    tokio::time::sleep(ms(300)).await;
    let at = Instant::now();
    g.release().await.unwrap();
    let (woke, got) = waiter.await.unwrap();
    got.unwrap().release().await.unwrap();
    assert!(woke - at < ms(800), "woken after {:?}", woke - at);
    assert!(!format!("{lm:?}").contains("tls-Secret-5"));
    // Without the CA the certificate is refused (nothing on this machine trusts it).
    let plain = server.url();
    let err = Locksmith::connect(&format!("{plain}?timeout=2s"))
        .await
        .unwrap_err();
    assert!(!err.to_string().contains("tls-Secret-5"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_socket_and_database_number() {
    let sock_dir = tempfile::tempdir().unwrap();
    let sock = sock_dir.path().join("redis.sock");
    let Some(server) = server(RedisConfig {
        extra: vec!["--unixsocket".into(), sock.display().to_string()],
        ..RedisConfig::default()
    })
    .await
    else {
        return;
    };
    let url = format!("redis+unix://{}?db=3&namespace=u", sock.display());
    let lm = Locksmith::connect(&url).await.unwrap();
    let g = lm.lock("s").acquire().await.unwrap();
    // The lock is in database 3, seen over TCP too.
    let tcp = Locksmith::connect(&format!("{}/3?namespace=u", server.url()))
        .await
        .unwrap();
    assert!(tcp.lock("s").try_acquire().await.unwrap().is_none());
    let db0 = Locksmith::connect(&format!("{}?namespace=u", server.url()))
        .await
        .unwrap();
    assert!(db0.inspect("s").await.unwrap().is_none());
    g.release().await.unwrap();
}

/// A TCP proxy in front of a Redis node that can hold back what the server sends on
/// subscription connections (those whose client sent a `SUBSCRIBE`), as a slow path to one
/// process's subscriber would; command connections pass at once either way.
struct SubscriberDelay {
    port: u16,
    hold: std::sync::Arc<tokio::sync::watch::Sender<bool>>,
    task: tokio::task::JoinHandle<()>,
}

impl SubscriberDelay {
    async fn start(target: u16) -> SubscriberDelay {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let hold = Arc::new(tokio::sync::watch::channel(false).0);
        let switch = hold.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await else {
                    continue;
                };
                let subscriber = Arc::new(AtomicBool::new(false));
                let ((mut client_in, mut client_out), (mut server_in, mut server_out)) =
                    (client.into_split(), server.into_split());
                let marks = subscriber.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    while let Ok(n @ 1..) = client_in.read(&mut buf).await {
                        if buf[..n]
                            .windows(9)
                            .any(|w| w.eq_ignore_ascii_case(b"SUBSCRIBE"))
                        {
                            marks.store(true, Ordering::SeqCst);
                        }
                        if server_out.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    let _ = server_out.shutdown().await;
                });
                let mut held = switch.subscribe();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    while let Ok(n @ 1..) = server_in.read(&mut buf).await {
                        if subscriber.load(Ordering::SeqCst) {
                            let _ = held.wait_for(|h| !*h).await;
                        }
                        if client_out.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    let _ = client_out.shutdown().await;
                });
            }
        });
        SubscriberDelay { port, hold, task }
    }

    fn hold(&self, on: bool) {
        self.hold.send_replace(on);
    }
}

impl Drop for SubscriberDelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A pushed grant whose message is held up until its lease has run out, another claim has
/// taken the lock, and the waiter has tried again is not taken: the waiter's later try saw
/// a holder with a higher fence, so the grant is stale. (PostgreSQL's form of this test
/// stops the listener's backend; here a proxy holds back what the server sends on the
/// waiter's subscription connection.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_pushed_grant_is_not_taken() {
    use locksmith::Renew;
    let Some(server) = server(RedisConfig::default()).await else {
        return;
    };
    let delay = SubscriberDelay::start(server.port()).await;
    let (holder, waiter, taker) = (
        Locksmith::connect(&server.url()).await.unwrap(),
        Locksmith::connect(&format!("redis://127.0.0.1:{}", delay.port))
            .await
            .unwrap(),
        Locksmith::connect(&server.url()).await.unwrap(),
    );
    // The server's time of the waiter's last try, from its queue entry (`stamp …`).
    let last_try = || {
        let server = &server;
        async move {
            match server.command(&["HVALS", "locksmith:{:s}e"]).await {
                Reply::Array(v) if !v.is_empty() => {
                    v[0].text().split(' ').next().map(str::to_string)
                }
                _ => None,
            }
        }
    };
    let h = holder
        .lock("s")
        .ttl(Duration::from_secs(60))
        .renew(Renew::Off)
        .acquire()
        .await
        .unwrap();
    let w = tokio::spawn(async move {
        let g = waiter
            .lock("s")
            .ttl(ms(300))
            .renew(Renew::Off)
            .wait(Wait::For(Duration::from_secs(30)))
            .acquire()
            .await
            .unwrap();
        (g.fence(), g.leak())
    });
    eventually("the waiter queued", || async { last_try().await.is_some() }).await;
    let tried = last_try().await;
    // Right after one of the waiter's tries (it tries again a second later), hold back its
    // subscription: the grant's message waits in the proxy.
    while last_try().await == tried {
        tokio::time::sleep(ms(2)).await;
    }
    delay.hold(true);
    h.release().await.unwrap();
    assert_eq!(
        server
            .command(&["HGET", "locksmith:{:s}", "pg"])
            .await
            .text(),
        "1",
        "the release handed the lock to the queued waiter"
    );
    let pushed_fence: u64 = server
        .command(&["HGET", "locksmith:{:s}", "fence"])
        .await
        .text()
        .parse()
        .unwrap();
    // The 300 ms lease runs out; another claim takes the lock.
    tokio::time::sleep(ms(450)).await;
    let x = taker
        .lock("s")
        .ttl(Duration::from_secs(60))
        .renew(Renew::Off)
        .try_acquire()
        .await
        .unwrap()
        .expect("the handed-over lease ran out");
    assert!(x.fence() > pushed_fence);
    // The waiter's next try finds the new holder and queues again.
    eventually("the waiter tried again", || async {
        last_try().await.is_some()
    })
    .await;
    delay.hold(false);
    stale_grant_is_not_taken(w, x).await;
}

/// How many `PUBLISH` commands the server ran since the last `CONFIG RESETSTAT` (scripts'
/// calls included).
async fn publishes(server: &RedisServer) -> u64 {
    let stats = server.command(&["INFO", "commandstats"]).await.text();
    stats
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_publish:calls="))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_publishes_a_wake_up_only_when_a_try_found_the_lock_held() {
    let Some(server) = server(RedisConfig::default()).await else {
        return;
    };
    let lm = Locksmith::connect(&server.url()).await.unwrap();
    let other = Locksmith::connect(&server.url()).await.unwrap();
    server.command(&["CONFIG", "RESETSTAT"]).await;
    // Nobody tried these locks while they were held: no wake-up is published.
    for _ in 0..5 {
        lm.lock("quiet")
            .acquire()
            .await
            .unwrap()
            .release()
            .await
            .unwrap();
    }
    let g = lm.lock("kept").min_hold(ms(200)).acquire().await.unwrap();
    g.release().await.unwrap();
    assert_eq!(
        publishes(&server).await,
        0,
        "a release nobody waited for published"
    );
    // A try from another process that found the lock held: its release wakes the name.
    let g = lm.lock("busy").acquire().await.unwrap();
    let tried = other.lock("busy").wait(Wait::No).acquire().await;
    assert!(tried.is_err(), "the lock was free: {tried:?}");
    g.release().await.unwrap();
    assert_eq!(publishes(&server).await, 1);
    // So does a release after a hand-over: a waiter of several locks (never queued) found
    // one held before another waiter was handed it, and is woken when that one releases.
    let g = lm.lock("a").acquire().await.unwrap();
    let queued = {
        let other = other.clone();
        tokio::spawn(async move {
            let g = other
                .lock("a")
                .wait(Wait::For(Duration::from_secs(20)))
                .acquire()
                .await
                .unwrap();
            tokio::time::sleep(ms(300)).await;
            g.release().await.unwrap();
        })
    };
    tokio::time::sleep(ms(200)).await;
    let third = Locksmith::connect(&server.url()).await.unwrap();
    let both = tokio::spawn(async move {
        third
            .acquire_all(["a", "b"])
            .wait(Wait::For(Duration::from_secs(20)))
            .acquire()
            .await
            .unwrap()
    });
    tokio::time::sleep(ms(100)).await;
    server.command(&["CONFIG", "RESETSTAT"]).await;
    g.release().await.unwrap();
    queued.await.unwrap();
    let g = both.await.unwrap();
    // The grant to the queued waiter, then the wake-up of its release: the hand-over kept
    // the mark of the try that found the lock held.
    assert_eq!(publishes(&server).await, 2, "the grant and the wake-up");
    drop(g);
}
