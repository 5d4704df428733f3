//! A master of a replicated Redis Cluster dies (SIGKILL) while this process holds locks on
//! every master and waits for some of them; its replica takes over. Calls during the
//! failover fail with retryable errors or succeed (never hang, never a non-retryable
//! error); afterwards the same `Locksmith`s acquire, release, extend and list on every slot,
//! waiters are woken through sharded pub/sub on the new master, surviving locks stay held, a
//! lock deleted on the new master is reported lost, and fences keep increasing. A second
//! test freezes (SIGSTOP) a master instead: its connections stay open, so the store must
//! notice the stalled calls to find the new master, and the waiters must follow while the
//! old master is still frozen.
//!
//! Survival is made deterministic: after acquiring, `WAIT 1` on the dying master makes sure
//! every grant reached its replica (replication is asynchronous; without it some grants
//! could be lost, and which is up to timing). Loss is made deterministic by deleting one
//! lock's key by hand on the new master.

#![cfg(feature = "redis")]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use locksmith::{ListQuery, LockGuard, Locksmith, Wait};
use locksmith_testkit::servers::redis::{RedisCluster, Reply, command};

/// Every store call's timeout (`?timeout=`).
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// The holders' TTL: renewed every 10 s, so a failover of a few seconds (renewals failing)
/// does not end a lease locally, even on a loaded machine.
const TTL: Duration = Duration::from_secs(30);
/// How long a call may take before it counts as hung: the call timeout plus slack for a
/// loaded machine.
const HUNG: Duration = Duration::from_secs(8);

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// The native layout's lock key of `name` (default prefix, empty namespace).
fn key(name: &str) -> String {
    format!("locksmith:{{:{name}}}")
}

/// Its wake-up channel.
fn channel(name: &str) -> String {
    format!("{}w", key(name))
}

/// How many clients subscribe `channel` by sharded pub/sub on the node at `port`.
async fn shard_subscribers(port: u16, channel: &str) -> i64 {
    match command(port, None, &["PUBSUB", "SHARDNUMSUB", channel]).await {
        Ok(Reply::Array(v)) if v.len() == 2 => match v[1] {
            Reply::Int(n) => n,
            _ => 0,
        },
        _ => 0,
    }
}

/// Waits (at most `limit`) until `channel` has a sharded subscriber on the node at `port`.
async fn wait_subscribed(port: u16, channel: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    while shard_subscribers(port, channel).await < 1 {
        assert!(
            Instant::now() < deadline,
            "nobody subscribes {channel} on port {port} after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What one call did while the cluster failed over.
#[derive(Debug)]
enum Outcome {
    Ok,
    Retryable,
    Fatal(String),
    Hung,
}

/// Runs one call, classifying its outcome.
async fn probe<T>(
    what: &str,
    log: &mut Vec<(String, Outcome, Duration)>,
    call: impl Future<Output = locksmith::Result<T>>,
) -> Option<T> {
    let at = Instant::now();
    let (outcome, value) = match tokio::time::timeout(HUNG, call).await {
        Ok(Ok(v)) => (Outcome::Ok, Some(v)),
        Ok(Err(e)) if e.is_retryable() => (Outcome::Retryable, None),
        Ok(Err(e)) => (Outcome::Fatal(e.to_string()), None),
        Err(_) => (Outcome::Hung, None),
    };
    log.push((what.to_string(), outcome, at.elapsed()));
    value
}

/// A master is killed (SIGKILL) with locks held on every master and waiters blocked on
/// its names; its replica takes over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_fails_over_and_everything_carries_on() {
    let started = Instant::now();
    let Some(mut cluster) = RedisCluster::start_with_replicas(1).await else {
        return;
    };
    eprintln!("cluster of 6 ready after {:?}", started.elapsed());
    // Every node is a seed, the one that will die too.
    let url = format!("{}?timeout=2s", cluster.url());
    let a = Locksmith::connect(&url).await.unwrap();
    let b = Locksmith::connect(&url).await.unwrap();
    assert_eq!(a.timeout(), CALL_TIMEOUT);
    let masters = cluster.masters().await;
    assert_eq!(masters.len(), 3, "three masters: {masters:?}");

    // Names on every master.
    let names: Vec<String> = (0..30).map(|i| format!("f{i:02}")).collect();
    let probes: Vec<String> = (0..30).map(|i| format!("p{i:02}")).collect();
    let mut owner = BTreeMap::new();
    for n in names.iter().chain(&probes) {
        owner.insert(n.clone(), cluster.master_of(&key(n)).await);
    }
    for m in &masters {
        let on = names.iter().filter(|n| owner[*n] == *m).count();
        assert!(on >= 4, "master {m} serves only {on} of the names");
    }
    let victim = owner[&names[0]];
    let victim_slots = cluster.slots_of(victim).await;
    let on_victim: Vec<String> = names
        .iter()
        .filter(|n| owner[*n] == victim)
        .cloned()
        .collect();
    let elsewhere: Vec<String> = names
        .iter()
        .filter(|n| owner[*n] != victim)
        .cloned()
        .collect();

    // Hold every name.
    let mut guards: BTreeMap<String, LockGuard> = BTreeMap::new();
    for n in &names {
        let g = a.lock(n.as_str()).ttl(TTL).acquire().await.unwrap();
        guards.insert(n.clone(), g);
    }
    let fences_before: BTreeMap<String, u64> =
        guards.iter().map(|(n, g)| (n.clone(), g.fence())).collect();
    let max_before = *fences_before.values().max().unwrap();
    // Every grant on the dying master reaches its replica before it dies.
    let acked = cluster.sync_replicas(victim, secs(10)).await;
    assert!(acked >= 1, "WAIT 1: {acked} replicas acknowledged");

    // Waiters in another Locksmith: two on the dying master's names, one elsewhere.
    let waited = vec![
        on_victim[0].clone(),
        on_victim[1].clone(),
        elsewhere[0].clone(),
    ];
    let mut waiters = Vec::new();
    for n in &waited {
        let (b, n) = (b.clone(), n.clone());
        waiters.push(tokio::spawn(async move {
            b.lock(n).wait(Wait::For(secs(120))).acquire().await
        }));
    }
    for n in &waited {
        wait_subscribed(cluster.nodes()[owner[n]].port(), &channel(n), secs(30)).await;
    }

    // A prober keeps calling on every master while the master dies and is replaced.
    let stop = Arc::new(AtomicBool::new(false));
    let prober = {
        let (a, stop, names, probes) = (a.clone(), stop.clone(), names.clone(), probes.clone());
        tokio::spawn(async move {
            let mut log = Vec::new();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let p = &probes[i % probes.len()];
                let got = probe(
                    &format!("try_acquire {p}"),
                    &mut log,
                    a.lock(p.as_str()).ttl(secs(30)).try_acquire(),
                )
                .await;
                if let Some(Some(g)) = got {
                    probe(&format!("release {p}"), &mut log, g.release()).await;
                }
                let n = &names[i % names.len()];
                if let Some(info) = probe(&format!("inspect {n}"), &mut log, a.inspect(n)).await {
                    assert!(info.is_some(), "inspect {n}: a held lock shown free");
                }
                if i % 5 == 0
                    && let Some(page) = probe("list", &mut log, a.list(ListQuery::all())).await
                {
                    let listed: BTreeSet<String> =
                        page.items.into_iter().map(|item| item.name).collect();
                    let missing: Vec<&String> =
                        names.iter().filter(|n| !listed.contains(*n)).collect();
                    assert!(
                        missing.is_empty(),
                        "a listing during the failover left out held names {missing:?}"
                    );
                }
                i += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            log
        })
    };
    tokio::time::sleep(secs(1)).await;

    let killed_at = Instant::now();
    cluster.kill_node(victim);
    let new_master = cluster.wait_failover(victim, &victim_slots, secs(90)).await;
    let failover = killed_at.elapsed();
    eprintln!("node {victim} killed; node {new_master} took over after {failover:?}");
    assert_ne!(new_master, victim);
    // Let the prober see the cluster after the promotion as well.
    tokio::time::sleep(secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let log = prober.await.unwrap();
    let count = |f: fn(&Outcome) -> bool| log.iter().filter(|(_, o, _)| f(o)).count();
    let (ok, retryable) = (
        count(|o| matches!(o, Outcome::Ok)),
        count(|o| matches!(o, Outcome::Retryable)),
    );
    eprintln!(
        "prober: {} calls, {ok} ok, {retryable} retryable errors, slowest {:?}",
        log.len(),
        log.iter().map(|(_, _, d)| *d).max().unwrap_or_default()
    );
    for op in ["try_acquire", "release", "inspect", "list"] {
        let of_op = |f: fn(&Outcome) -> bool| {
            log.iter()
                .filter(|(w, o, _)| w.starts_with(op) && f(o))
                .count()
        };
        eprintln!(
            "  {op}: {} ok, {} retryable",
            of_op(|o| matches!(o, Outcome::Ok)),
            of_op(|o| matches!(o, Outcome::Retryable))
        );
    }
    let bad: Vec<String> = log
        .iter()
        .filter_map(|(what, o, took)| match o {
            Outcome::Fatal(e) => Some(format!("{what}: {e} (after {took:?})")),
            Outcome::Hung => Some(format!("{what}: no answer in {HUNG:?}")),
            _ => None,
        })
        .collect();
    assert!(
        bad.is_empty(),
        "calls during the failover hung or failed for good: {bad:?}"
    );
    assert!(ok > 0, "no call succeeded around the failover: {log:?}");

    // Nobody gave up waiting, and every holder still holds (renewals failed retryably
    // meanwhile; the TTL is longer than the failover).
    for (n, w) in waited.iter().zip(&waiters) {
        assert!(
            !w.is_finished(),
            "the waiter on {n} ended during the failover"
        );
    }
    for (n, g) in &guards {
        assert!(
            g.is_held(),
            "{n} was lost in the failover although replicated"
        );
    }

    // Every call works again on every slot, with the same Locksmith (allowing the client a
    // little while to learn the new topology).
    let deadline = Instant::now() + secs(30);
    for n in &names {
        loop {
            match a.inspect(n).await {
                Ok(info) => {
                    assert!(info.is_some(), "{n} is held");
                    break;
                }
                Err(e) if e.is_retryable() && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("inspect {n} after the failover: {e}"),
            }
        }
    }
    let listed: Vec<String> = a
        .list(ListQuery::all())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|i| i.name)
        .collect();
    assert_eq!(listed, names, "every held name listed after the failover");
    for g in guards.values() {
        g.extend(TTL).await.unwrap();
    }
    for p in &probes {
        // Waits: a probe whose release failed during the failover is still being released
        // in the background.
        let g = a
            .lock(p.as_str())
            .ttl(secs(30))
            .wait(Wait::For(secs(60)))
            .acquire()
            .await
            .unwrap();
        assert!(
            g.fence() > max_before,
            "{p}: fence {} after the failover, {max_before} before",
            g.fence()
        );
        g.release().await.unwrap();
    }

    // The waiters resubscribed (on the new master for the dying master's names) and a
    // release wakes them.
    let port_of = |n: &String| {
        if owner[n] == victim {
            cluster.nodes()[new_master].port()
        } else {
            cluster.nodes()[owner[n]].port()
        }
    };
    for n in &waited {
        wait_subscribed(port_of(n), &channel(n), secs(30)).await;
    }
    for (n, w) in waited.iter().zip(waiters) {
        let released = Instant::now();
        guards.remove(n).unwrap().release().await.unwrap();
        let g = tokio::time::timeout(secs(20), w)
            .await
            .unwrap_or_else(|_| panic!("the waiter on {n} was not woken"))
            .unwrap()
            .unwrap();
        eprintln!(
            "waiter on {n} got the lock {:?} after the release",
            released.elapsed()
        );
        assert!(g.fence() > max_before, "{n}: fence {}", g.fence());
        g.release().await.unwrap();
    }

    // A lock whose key is gone on the new master: its watchdog reports it lost.
    let doomed = on_victim[2].clone();
    let g = guards.remove(&doomed).unwrap();
    let lost = g.lost();
    let del = command(port_of(&doomed), None, &["DEL", &key(&doomed)])
        .await
        .unwrap();
    assert_eq!(del, Reply::Int(1), "DEL {doomed} on the new master");
    let reason = tokio::time::timeout(secs(60), lost)
        .await
        .expect("the watchdog reports the guard lost when its key is gone");
    assert!(!g.is_held(), "lost ({reason:?}) but still held");
    assert!(g.release().await.is_err(), "releasing a lost guard");
    let again = a.lock(doomed.as_str()).acquire().await.unwrap();
    assert!(again.fence() > fences_before[&doomed]);
    assert!(again.fence() > max_before);
    again.release().await.unwrap();

    // The survivors on every master still hold, and release cleanly.
    assert!(guards.keys().any(|n| owner[n] == victim));
    for (n, g) in guards {
        assert!(g.is_held(), "{n}");
        g.release().await.unwrap();
    }
    assert!(a.list(ListQuery::all()).await.unwrap().items.is_empty());
    eprintln!("whole test: {:?}", started.elapsed());
}

/// A master frozen (SIGSTOP) for longer than `cluster-node-timeout` is replaced by its
/// replica; the store finds the new master although no connection dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_master_is_replaced_and_waiters_follow() {
    let started = Instant::now();
    let Some(cluster) = RedisCluster::start_with_replicas(1).await else {
        return;
    };
    let url = format!("{}?timeout=2s", cluster.url());
    let a = Locksmith::connect(&url).await.unwrap();
    let b = Locksmith::connect(&url).await.unwrap();
    let names: Vec<String> = (0..30).map(|i| format!("z{i:02}")).collect();
    let mut owner = BTreeMap::new();
    for n in &names {
        owner.insert(n.clone(), cluster.master_of(&key(n)).await);
    }
    let victim = owner[&names[0]];
    let victim_slots = cluster.slots_of(victim).await;
    let on_victim: Vec<String> = names
        .iter()
        .filter(|n| owner[*n] == victim)
        .cloned()
        .collect();
    let mut guards = BTreeMap::new();
    for n in &names {
        guards.insert(
            n.clone(),
            a.lock(n.as_str()).ttl(TTL).acquire().await.unwrap(),
        );
    }
    let max_before = guards.values().map(LockGuard::fence).max().unwrap();
    assert!(cluster.sync_replicas(victim, secs(10)).await >= 1);
    let waited = on_victim[0].clone();
    let waiter = {
        let (b, n) = (b.clone(), waited.clone());
        tokio::spawn(async move { b.lock(n).wait(Wait::For(secs(120))).acquire().await })
    };
    wait_subscribed(cluster.nodes()[victim].port(), &channel(&waited), secs(30)).await;

    let frozen_at = Instant::now();
    cluster.set_node_frozen(victim, true);
    let new_master = cluster.wait_failover(victim, &victim_slots, secs(90)).await;
    eprintln!(
        "node {victim} frozen; node {new_master} took over after {:?}",
        frozen_at.elapsed()
    );
    // While the old master is still frozen, every slot works again.
    let deadline = Instant::now() + secs(30);
    for n in &on_victim {
        loop {
            match a.inspect(n).await {
                Ok(info) => {
                    assert!(info.is_some(), "{n} is held");
                    break;
                }
                Err(e) if e.is_retryable() && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("inspect {n} with the old master frozen: {e}"),
            }
        }
    }
    eprintln!(
        "calls work again {:?} after the freeze",
        frozen_at.elapsed()
    );
    let g = a.lock("zz-new").acquire().await.unwrap();
    assert!(g.fence() > max_before);
    g.release().await.unwrap();
    // The waiter's subscription moved to the new master (the old one is still frozen), and
    // a release there wakes it.
    wait_subscribed(
        cluster.nodes()[new_master].port(),
        &channel(&waited),
        secs(30),
    )
    .await;
    assert!(!waiter.is_finished());
    for (n, g) in &guards {
        assert!(g.is_held(), "{n} lost although replicated");
    }
    guards.remove(&waited).unwrap().release().await.unwrap();
    let got = tokio::time::timeout(secs(20), waiter)
        .await
        .expect("the waiter is woken")
        .unwrap()
        .unwrap();
    assert!(got.fence() > max_before);
    got.release().await.unwrap();
    // Thawed, the old master learns it was replaced and becomes a replica; everything
    // carries on.
    cluster.set_node_frozen(victim, false);
    let deadline = Instant::now() + secs(60);
    loop {
        let info = cluster.nodes()[victim]
            .command(&["INFO", "replication"])
            .await
            .text();
        if info.contains("role:slave") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the old master did not step down"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (n, g) in guards {
        g.extend(TTL).await.unwrap();
        assert!(g.is_held(), "{n}");
        g.release().await.unwrap();
    }
    assert!(a.list(ListQuery::all()).await.unwrap().items.is_empty());
    eprintln!("whole test: {:?}", started.elapsed());
}
