//! The python-redis-lock layout (`?layout=python-redis-lock`) on test-kit Redis servers,
//! checked key by key: the exact keys and units of python-redis-lock (whole seconds, rounded
//! up), the signal on every release, administration that touches `lock:*` keys only, the
//! cluster's hash-tag rule, and bad URLs.

#![cfg(feature = "redis")]

use std::time::Duration;

use locksmith::{Error, Locksmith, Renew, Token};
use locksmith_testkit::servers::redis::{RedisCluster, RedisConfig, RedisServer, Reply};

async fn node() -> Option<(RedisServer, Locksmith)> {
    let server = RedisServer::start(RedisConfig::default()).await?;
    let lm = Locksmith::connect(&format!("{}?layout=python-redis-lock", server.url()))
        .await
        .unwrap();
    Some((server, lm))
}

fn int(r: Reply) -> i64 {
    match r {
        Reply::Int(i) => i,
        other => panic!("not an integer: {other:?}"),
    }
}

#[tokio::test]
async fn python_keys_units_and_signals() {
    let Some((server, lm)) = node().await else {
        return;
    };
    // A 1.5 s lease is stored as EX 2: never shorter than the guard's deadline.
    let token: Token = "P4qyOxpMBDH5f9Uh6iAkbm2a".parse().unwrap();
    let g = lm
        .lock("job")
        .ttl(Duration::from_millis(1500))
        .renew(Renew::Off)
        .token(token.clone())
        .acquire()
        .await
        .unwrap();
    assert_eq!(
        server.command(&["GET", "lock:job"]).await,
        Reply::Bulk(Some("P4qyOxpMBDH5f9Uh6iAkbm2a".into()))
    );
    assert_eq!(int(server.command(&["TTL", "lock:job"]).await), 2);
    let pttl = int(server.command(&["PTTL", "lock:job"]).await);
    let guard_left = g.expires_in().unwrap();
    assert!(
        Duration::from_millis(pttl as u64 + 1) >= guard_left,
        "store {pttl} ms < guard {guard_left:?}"
    );
    // extend speaks whole seconds too
    g.extend(Duration::from_millis(2200)).await.unwrap();
    assert_eq!(int(server.command(&["TTL", "lock:job"]).await), 3);
    // a release pushes one signal that lives signal_expire (1000 ms)
    let released = std::time::Instant::now();
    g.release().await.unwrap();
    assert_eq!(int(server.command(&["EXISTS", "lock:job"]).await), 0);
    let signal_ttl = int(server.command(&["PTTL", "lock-signal:job"]).await);
    let busy = released.elapsed() >= Duration::from_millis(900);
    assert!(
        (1..=1000).contains(&signal_ttl) || busy,
        "signal PTTL {signal_ttl}"
    );
    // ?signal_expire= sets the signal's life in ms; repeated releases never pile signals up
    let slow = Locksmith::connect(&format!(
        "{}?layout=python-redis-lock&signal_expire=60000",
        server.url()
    ))
    .await
    .unwrap();
    for _ in 0..3 {
        slow.lock("s")
            .acquire()
            .await
            .unwrap()
            .release()
            .await
            .unwrap();
    }
    assert_eq!(int(server.command(&["LLEN", "lock-signal:s"]).await), 1);
    let signal_ttl = int(server.command(&["PTTL", "lock-signal:s"]).await);
    assert!((1001..=60000).contains(&signal_ttl), "{signal_ttl}");
    // a lock without expiry has no TTL, and extend says it cannot expire
    let forever = lm.lock("f").no_expiry().acquire().await.unwrap();
    assert_eq!(int(server.command(&["TTL", "lock:f"]).await), -1);
    assert!(forever.extend(Duration::from_secs(5)).await.is_err());
    forever.release().await.unwrap();
    // min_hold is refused: python-redis-lock waiters would not learn when a kept lock ends
    assert!(matches!(
        lm.lock("m")
            .min_hold(Duration::from_secs(1))
            .acquire()
            .await,
        Err(Error::Unsupported { .. })
    ));
    assert_eq!(int(server.command(&["EXISTS", "lock:m"]).await), 0);
}

#[tokio::test]
async fn administration_touches_lock_keys_only() {
    let Some((server, _)) = node().await else {
        return;
    };
    // Signals that outlive a busy machine's pauses.
    let lm = Locksmith::connect(&format!(
        "{}?layout=python-redis-lock&signal_expire=60000",
        server.url()
    ))
    .await
    .unwrap();
    for (k, v) in [("unrelated", "1"), ("lockx", "2"), ("locksmith:{:a}", "3")] {
        server.command(&["SET", k, v]).await;
    }
    server
        .command(&["SET", "lock:a", "someone", "EX", "60"])
        .await;
    server.command(&["SET", "lock:b", "other"]).await;
    let names: Vec<String> = lm
        .list(locksmith::ListQuery::all())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|i| i.name)
        .collect();
    assert_eq!(names, ["a", "b"]);
    let a = lm.inspect("a").await.unwrap().unwrap();
    assert!(a.expires_in.unwrap() > Duration::from_secs(50));
    assert_eq!(a.owner, None, "no holder metadata in this layout");
    assert_eq!(lm.inspect("b").await.unwrap().unwrap().expires_in, None);
    assert_eq!(lm.clear(["a"]).await.unwrap(), [("a".to_string(), true)]);
    assert_eq!(int(server.command(&["EXISTS", "lock:a"]).await), 0);
    assert_eq!(int(server.command(&["LLEN", "lock-signal:a"]).await), 1);
    let reset = std::time::Instant::now();
    assert_eq!(lm.reset_all().await.unwrap(), 1);
    assert_eq!(int(server.command(&["EXISTS", "lock:b"]).await), 0);
    // reset_all's signal lives a fixed second, as in python-redis-lock
    let signal_ttl = int(server.command(&["PTTL", "lock-signal:b"]).await);
    let busy = reset.elapsed() >= Duration::from_millis(900);
    assert!((1..=1000).contains(&signal_ttl) || busy, "{signal_ttl}");
    for k in ["unrelated", "lockx", "locksmith:{:a}"] {
        assert_eq!(
            int(server.command(&["EXISTS", k]).await),
            1,
            "{k} was touched"
        );
    }
}

#[tokio::test]
async fn bad_urls_are_refused_clearly() {
    let Some(server) = RedisServer::start(RedisConfig::default()).await else {
        return;
    };
    for (params, needle) in [
        ("layout=python-redis-lock&namespace=a", "namespace"),
        ("layout=python-redis-lock&prefix=x:", "prefix"),
        ("layout=python-redis-lock&signal_expire=0", "signal_expire"),
        (
            "layout=python-redis-lock&signal_expire=soon",
            "signal_expire",
        ),
        ("signal_expire=100", "layout=python-redis-lock"),
        ("layout=pyhton", "layout=python-redis-lock"),
    ] {
        let url = format!("{}?{params}", server.url());
        let err = Locksmith::connect(&url).await.unwrap_err().to_string();
        assert!(err.contains(needle), "{params}: {err}");
    }
}

#[tokio::test]
async fn cluster_needs_hash_tags() {
    let Some(cluster) = RedisCluster::start().await else {
        return;
    };
    let lm = Locksmith::connect(&format!("{}?layout=python-redis-lock", cluster.url()))
        .await
        .unwrap();
    let err = lm.lock("plain").acquire().await.unwrap_err();
    assert!(err.is_invalid_input(), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("{plain}") && text.contains("hash tag"),
        "{text}"
    );
    // with a hash tag everything works, waiters included
    let g = lm.lock("{plain}").acquire().await.unwrap();
    let other = Locksmith::connect(&format!("{}?layout=python-redis-lock", cluster.url()))
        .await
        .unwrap();
    let waiter = tokio::spawn(async move {
        other
            .lock("{plain}")
            .wait(locksmith::Wait::For(Duration::from_secs(10)))
            .acquire()
            .await
            .map(|g| g.leak())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    g.release().await.unwrap();
    waiter.await.unwrap().unwrap();
    let names: Vec<String> = lm
        .list(locksmith::ListQuery::all())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|i| i.name)
        .collect();
    assert_eq!(names, ["{plain}"]);
    assert_eq!(lm.reset_all().await.unwrap(), 1);
}

/// A release's signal is a turn for one waiter. When no acquire of this process waits for
/// the name — only something watching it, like a guard watching for a `clear`, or the
/// releasing guard itself — the wake-up task that took the signal hands it back for another
/// process's waiter (a Python one may block on it). When an acquire here waits, that
/// waiter takes the turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signal_nobody_here_waits_for_is_handed_back() {
    use locksmith::{LockName, Namespace, Wait};
    let Some((server, lm)) = node().await else {
        return;
    };
    let g = lm.lock("sig").acquire().await.unwrap();
    // A watcher that is no waiter: the name's wake-up task blocks on the signal list.
    let _watch = lm
        .store()
        .subscribe(&Namespace::default(), &LockName::new("sig").unwrap())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    g.release().await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        int(server.command(&["LLEN", "lock-signal:sig"]).await),
        1,
        "the signal was taken by a process where nobody waits"
    );
    let pttl = int(server.command(&["PTTL", "lock-signal:sig"]).await);
    assert!((1..=1000).contains(&pttl), "signal PTTL {pttl}");

    // A waiter of this process takes its turn.
    let g = lm.lock("turn").acquire().await.unwrap();
    let w = {
        let lm = lm.clone();
        tokio::spawn(async move {
            lm.lock("turn")
                .wait(Wait::For(Duration::from_secs(10)))
                .acquire()
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    g.release().await.unwrap();
    let gw = tokio::time::timeout(Duration::from_secs(5), w)
        .await
        .expect("the waiter got its turn")
        .unwrap()
        .unwrap();
    assert_eq!(
        int(server.command(&["EXISTS", "lock-signal:turn"]).await),
        0,
        "the waiter here did not take the signal"
    );
    gw.release().await.unwrap();
}
