//! PostgreSQL-specific tests against servers started by the test kit: the order of fences
//! when two transactions interleave, credentials kept out of messages, terminated
//! connections, a server restart, concurrent migrations, an upgrade from schema version 1
//! and a newer schema.

#![cfg(feature = "postgres")]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use locksmith::{Locksmith, Renew, Wait};
use locksmith_testkit::cases::{eventually, stale_grant_is_not_taken};
use locksmith_testkit::servers::pgbouncer::PgBouncer;
use locksmith_testkit::servers::postgres::{PASSWORD, PostgresServer};
use locksmith_testkit::skip_store;

async fn server() -> Option<PostgresServer> {
    match PostgresServer::start().await {
        Ok(s) => Some(s),
        Err(why) => {
            skip_store("postgres", &why);
            None
        }
    }
}

/// A plain tokio-postgres client (its connection driven on a task).
async fn raw(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("raw connect");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// The queue entry of the waiter of `name` in `locks.<table>`: its inbox and last try.
async fn queue_entry(
    admin: &tokio_postgres::Client,
    table: &str,
    name: &str,
) -> Option<(i32, i64)> {
    admin
        .query_opt(
            &format!("SELECT inbox, last_try FROM locks.{table}_queue WHERE name = $1"),
            &[&name],
        )
        .await
        .unwrap()
        .map(|r| (r.get::<_, i32>(0), r.get::<_, i64>(1)))
}

/// Waits until the queued waiter of `name` tries again (it then waits a second before its
/// next try) and returns its inbox, the pid of its listener backend.
async fn right_after_a_try(admin: &tokio_postgres::Client, table: &str, name: &str) -> i32 {
    let (inbox, tried) = queue_entry(admin, table, name).await.expect("queued");
    while queue_entry(admin, table, name)
        .await
        .is_some_and(|(_, t)| t == tried)
    {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    inbox
}

/// Stops the backend `pid` (SIGSTOP), so what the server sends it waits; `false` (after
/// saying why) when this process may not signal it, and the test should end.
fn stop_backend(pid: i32) -> bool {
    use nix::sys::signal::{Signal, kill};
    match kill(nix::unistd::Pid::from_raw(pid), Signal::SIGSTOP) {
        Ok(()) => true,
        Err(e) => {
            eprintln!("skipping: cannot stop the listener backend ({e})");
            false
        }
    }
}

/// Lets a backend stopped by [`stop_backend`] go on (SIGCONT).
fn resume_backend(pid: i32) {
    use nix::sys::signal::{Signal, kill};
    kill(nix::unistd::Pid::from_raw(pid), Signal::SIGCONT).unwrap();
}

const TOKEN_A: &str = "11111111-2222-4333-8444-555555555555";

/// A grant that waited for another transaction's row lock gets a fence above every fence
/// that transaction minted: the fence is minted after the row is locked, not when the
/// statement starts. Shown for an existing (freed) row and for a name without a row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fence_is_minted_after_the_row_lock() {
    let Some(server) = server().await else { return };
    let url = format!("{}?namespace=fi", server.url("postgres"));
    let lm = Locksmith::connect(&url).await.unwrap();
    // "old" has a freed row; "new" has none.
    lm.lock("old")
        .acquire()
        .await
        .unwrap()
        .release()
        .await
        .unwrap();
    let mut raw = raw(&server.url("postgres")).await;
    for name in ["old", "new"] {
        let tx = raw.transaction().await.unwrap();
        // The other transaction takes the row (creating it for "new") and mints a fence…
        let row = tx
            .query_one(
                "SELECT o_status, o_fence FROM locksmith_locks_acquire('fi', $1, $2, 'other', 'h', 1, 60000000, NULL, 0)",
                &[&name, &TOKEN_A],
            )
            .await
            .unwrap();
        assert_eq!(
            row.get::<_, i32>(0),
            0,
            "{name}: the other transaction's grant"
        );
        let first: i64 = row.get(1);
        // …while the store's grant starts and has to wait for the row.
        let lm2 = lm.clone();
        let started = Instant::now();
        let grant = tokio::spawn(async move {
            lm2.lock(name)
                .wait(Wait::For(Duration::from_secs(20)))
                .acquire()
                .await
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            !grant.is_finished(),
            "{name}: the grant did not wait for the row lock"
        );
        // Later, the other transaction mints a second fence and frees the lock.
        tx.query_one(
            "SELECT locksmith_locks_release('fi', $1, $2, NULL, 0)",
            &[&name, &TOKEN_A],
        )
        .await
        .unwrap();
        let row = tx
            .query_one(
                "SELECT o_status, o_fence FROM locksmith_locks_acquire('fi', $1, $2, 'other', 'h', 1, 60000000, NULL, 0)",
                &[&name, &TOKEN_A],
            )
            .await
            .unwrap();
        let second: i64 = row.get(1);
        assert!(second > first);
        tx.query_one(
            "SELECT locksmith_locks_release('fi', $1, $2, NULL, 0)",
            &[&name, &TOKEN_A],
        )
        .await
        .unwrap();
        tx.commit().await.unwrap();
        let g = grant.await.unwrap().unwrap();
        assert!(
            g.fence() > second as u64,
            "{name}: the waiting grant got fence {} below the other transaction's {second} (it started {:?} earlier)",
            g.fence(),
            started.elapsed()
        );
        g.release().await.unwrap();
    }
}

/// The password never appears in errors or `Debug`, whether the login works or fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_are_redacted() {
    let Some(server) = server().await else { return };
    raw(&server.url("postgres"))
        .await
        .batch_execute(&PostgresServer::password_role_sql())
        .await
        .unwrap();
    let good = server.password_url("postgres", PASSWORD);
    let lm = Locksmith::connect(&good).await.unwrap();
    let g = lm.lock("pw").acquire().await.unwrap();
    let shown = format!("{lm:?} {:?} {:?} {}", lm.store(), g, lm.store().identity());
    assert!(!shown.contains(PASSWORD), "{shown}");
    g.release().await.unwrap();

    let wrong = "Wr0ng-pass-Zq9";
    let err = Locksmith::connect(&server.password_url("postgres", wrong))
        .await
        .unwrap_err();
    let text = format!("{err} {err:?}");
    assert!(!text.contains(wrong), "{text}");
    assert!(
        text.contains("***"),
        "the error should name the (redacted) URL: {text}"
    );
    assert!(
        text.contains("password"),
        "the error should say what failed: {text}"
    );

    // An unreachable server: a retryable error, redacted too.
    let port = locksmith_testkit::servers::free_port();
    let err = Locksmith::connect(&format!(
        "postgres://u:{wrong}@127.0.0.1:{port}/db?timeout=2s"
    ))
    .await
    .unwrap_err();
    let text = format!("{err} {err:?}");
    assert!(err.is_retryable(), "{text}");
    assert!(!text.contains(wrong), "{text}");
}

/// Bad parameters are configuration errors that say what to write.
#[tokio::test]
async fn bad_parameters_are_config_errors() {
    for (url, hint) in [
        ("postgres://h/db?table=Locks", "table="),
        ("postgres://h/db?table=a;drop", "table="),
        ("postgres://h/db?schema=1x", "schema="),
        ("postgres://h/db?sslmode=sometimes", "sslmode"),
        ("postgres://h/db?pool=3", "unknown parameter"),
    ] {
        let err = Locksmith::connect(url).await.unwrap_err();
        assert!(
            err.is_invalid_input() || matches!(err, locksmith::Error::Config { .. }),
            "{url}: {err}"
        );
        assert!(err.to_string().contains(hint), "{url}: {err}");
    }
}

/// Many processes' worth of clients starting at once on a fresh table all migrate it
/// safely; a table from a newer locksmith is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_migration_and_newer_schema() {
    let Some(server) = server().await else { return };
    let url = format!("{}?table=mig&schema=locks", server.url("postgres"));
    let starts = (0..8).map(|_| Locksmith::connect(&url));
    for lm in futures_util::future::join_all(starts).await {
        let lm = lm.unwrap();
        lm.lock("m")
            .acquire()
            .await
            .unwrap()
            .release()
            .await
            .unwrap();
    }
    raw(&server.url("postgres"))
        .await
        .batch_execute("UPDATE locks.mig_meta SET version = 99")
        .await
        .unwrap();
    let err = Locksmith::connect(&url).await.unwrap_err();
    assert!(err.to_string().contains("newer locksmith"), "{err}");
}

/// A table of schema version 1 (no queue table, no `pushed` column, the 9-parameter
/// acquire and 5-parameter release only) is upgraded in place by the next store that opens
/// it: a lock held across the upgrade stays held, its release hands it to a queued waiter,
/// and version 1's acquire and version 3's release keep working for clients that have not
/// been upgraded yet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_1_table_is_upgraded_in_place() {
    let Some(server) = server().await else { return };
    let url = format!("{}?table=up&schema=locks", server.url("postgres"));
    let old = Locksmith::connect(&url).await.unwrap();
    let held = old.lock("kept").owner("old").acquire().await.unwrap();
    let admin = raw(&server.url("postgres")).await;
    // Back to what version 1 wrote.
    admin
        .batch_execute(
            "DROP TABLE locks.up_queue;
             DROP FUNCTION locks.up_acquire(text, text, text, text, text, int8, int8, int8,
                                            int8, int4, text, int4);
             DROP FUNCTION locks.up_release(text, text, text, int8, int8, int4, text, text,
                                            text, int8, int8, int8, text);
             ALTER TABLE locks.up DROP COLUMN pushed;
             ALTER TABLE locks.up DROP COLUMN watched;
             UPDATE locks.up_meta SET version = 1;",
        )
        .await
        .unwrap();
    let new = Locksmith::connect(&url).await.unwrap();
    let version: i32 = admin
        .query_one("SELECT version FROM locks.up_meta", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(version, 4);
    let info = new
        .inspect("kept")
        .await
        .unwrap()
        .expect("held across the upgrade");
    assert_eq!(info.owner.as_deref(), Some("old"));
    let waiter = {
        let new = new.clone();
        tokio::spawn(async move { new.lock("kept").owner("new").acquire().await })
    };
    eventually("the waiter queued", || async {
        let queued: i64 = admin
            .query_one("SELECT count(*) FROM locks.up_queue", &[])
            .await
            .unwrap()
            .get(0);
        queued == 1
    })
    .await;
    held.release().await.unwrap();
    let info = new.inspect("kept").await.unwrap().expect("handed over");
    assert_eq!(info.owner.as_deref(), Some("new"));
    let got = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("the waiter got its grant")
        .unwrap()
        .unwrap();
    got.release().await.unwrap();
    // Version 1's acquire, as a client not yet upgraded calls it.
    let status: i32 = admin
        .query_one(
            "SELECT o_status FROM locks.up_acquire('', 'v1', $1, 'v1', 'h', 1, 1000000, NULL, 0)",
            &[&TOKEN_A],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(status, 0, "version 1's acquire granted a free lock");
    // A client of version 1 may wait for the lock it finds held: its try marks the row, so
    // the release that frees it notifies.
    let status: i32 = admin
        .query_one(
            "SELECT o_status FROM locks.up_acquire('', 'v1', 'another', 'v1', 'h', 1, 1000000, NULL, 0)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(status, 1, "version 1's acquire found the lock held");
    let watched: bool = admin
        .query_one("SELECT watched FROM locks.up WHERE name = 'v1'", &[])
        .await
        .unwrap()
        .get(0);
    assert!(watched, "version 1's failed try marked the row watched");
    assert_eq!(
        new.inspect("v1")
            .await
            .unwrap()
            .and_then(|i| i.owner)
            .as_deref(),
        Some("v1")
    );
    // Version 3's release, as a client not yet upgraded calls it.
    let g = new.lock("v3").acquire().await.unwrap();
    let status: i32 = admin
        .query_one(
            "SELECT locks.up_release('', 'v3', $1, NULL, 0)",
            &[&g.token().expose()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(status, 0, "version 3's release freed the lock");
    assert!(new.inspect("v3").await.unwrap().is_none());
    drop(g.leak());
}

/// A release notifies the table's channel only when a waiter watches the lock: PostgreSQL
/// up to version 18 wakes every listening backend of the database at each notifying commit,
/// so uncontended releases, and plain tries that find a lock held, send nothing. A waiting
/// `acquire_all` (never queued for a pushed grant) marks the lock it finds held, and the
/// release that frees it wakes it and clears the mark.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn releases_notify_only_watched_locks() {
    use tokio_postgres::AsyncMessage;
    let Some(server) = server().await else { return };
    let url = format!("{}?table=wn&schema=locks", server.url("postgres"));
    let lm = Locksmith::connect(&url).await.unwrap();
    let other = Locksmith::connect(&url).await.unwrap();
    let (listener, mut conn) =
        tokio_postgres::connect(&server.url("postgres"), tokio_postgres::NoTls)
            .await
            .unwrap();
    let (tx, mut heard) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(Ok(m)) = std::future::poll_fn(|cx| conn.poll_message(cx)).await {
            if let AsyncMessage::Notification(n) = m {
                let _ = tx.send(n.payload().to_string());
            }
        }
    });
    listener
        .batch_execute(&format!(
            "LISTEN \"{}\"",
            locksmith::store::postgres::channel_name("locks", "wn")
        ))
        .await
        .unwrap();
    let admin = raw(&server.url("postgres")).await;
    let watched = |name: &'static str| {
        let admin = &admin;
        async move {
            admin
                .query_one("SELECT watched FROM locks.wn WHERE name = $1", &[&name])
                .await
                .unwrap()
                .get::<_, bool>(0)
        }
    };

    for _ in 0..5 {
        lm.lock("quiet")
            .acquire()
            .await
            .unwrap()
            .release()
            .await
            .unwrap();
    }
    let g = lm.lock("quiet").acquire().await.unwrap();
    assert!(other.lock("quiet").try_acquire().await.unwrap().is_none());
    assert!(!watched("quiet").await, "a plain try marked the lock");
    g.release().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(heard.try_recv().ok(), None, "an unwatched release notified");

    let g = lm
        .lock("w")
        .ttl(Duration::from_secs(60))
        .acquire()
        .await
        .unwrap();
    let waiter = tokio::spawn(async move {
        other
            .acquire_all(["v", "w"])
            .wait(Wait::For(Duration::from_secs(30)))
            .acquire()
            .await
    });
    eventually("the waiting acquire_all marked the lock", || watched("w")).await;
    g.release().await.unwrap();
    let guards = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("the release woke the acquire_all (its lease had 60 s left)")
        .unwrap()
        .unwrap();
    let payload = tokio::time::timeout(Duration::from_secs(5), heard.recv())
        .await
        .expect("a notification")
        .unwrap();
    assert!(payload.ends_with('w'), "{payload}");
    assert!(!watched("w").await, "the freeing release cleared the mark");
    for g in guards {
        g.release().await.unwrap();
    }
}

/// The store's listener leaves the database once nothing of its store has waited for or held
/// a lock for a few seconds (every listening backend is woken by each notification in the
/// database), stays while a waiter waits longer than that, and comes back for the next wait
/// or grant: the waiter is still woken by the release, not by its lease running out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_leaves_when_idle_and_comes_back() {
    let Some(server) = server().await else { return };
    let url = format!("{}?table=li&schema=locks", server.url("postgres"));
    let lm = Locksmith::connect(&url).await.unwrap();
    let other = Locksmith::connect(&url).await.unwrap();
    let admin = raw(&server.url("postgres")).await;
    let channel = locksmith::store::postgres::channel_name("locks", "li");
    // The listeners of this table: sessions whose last statement was the listener's LISTEN.
    let listeners = || {
        let (admin, pattern) = (&admin, format!("%LISTEN \"{channel}\"%"));
        async move {
            admin
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity
                     WHERE pid <> pg_backend_pid() AND query LIKE $1",
                    &[&pattern],
                )
                .await
                .unwrap()
                .get::<_, i64>(0)
        }
    };
    // A guard subscribes to its name, which starts the listener.
    let g = lm.lock("a").acquire().await.unwrap();
    eventually("the holder's store listens", || async {
        listeners().await == 1
    })
    .await;
    g.release().await.unwrap();
    let start = Instant::now();
    while listeners().await > 0 {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "the idle listener stayed connected"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A wait longer than the linger: both stores listen throughout, and the release wakes
    // the waiter (the lease had 60 s left).
    let g = other
        .lock("b")
        .ttl(Duration::from_secs(60))
        .acquire()
        .await
        .unwrap();
    let waiter = tokio::spawn(async move {
        lm.lock("b")
            .wait(Wait::For(Duration::from_secs(30)))
            .acquire()
            .await
    });
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert_eq!(
        listeners().await,
        2,
        "a listener left while its store waited or held"
    );
    let released = Instant::now();
    g.release().await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("the waiter was woken")
        .unwrap()
        .unwrap();
    assert!(
        released.elapsed() < Duration::from_secs(2),
        "the waiter was not woken by the release ({:?})",
        released.elapsed()
    );
    got.release().await.unwrap();
}

/// A pushed grant whose message is held up until its lease has run out, another claim has
/// taken the lock, and the waiter has tried again (as when the server is frozen) is not
/// taken: the waiter's later try saw a holder with a higher fence, so the grant is stale.
/// The message is held up by stopping the waiter's listener backend (SIGSTOP) around the
/// release that hands the lock over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_pushed_grant_is_not_taken() {
    let Some(server) = server().await else { return };
    let url = format!("{}?table=st&schema=locks", server.url("postgres"));
    let (holder, waiter, taker) = (
        Locksmith::connect(&url).await.unwrap(),
        Locksmith::connect(&url).await.unwrap(),
        Locksmith::connect(&url).await.unwrap(),
    );
    let admin = raw(&server.url("postgres")).await;
    let entry = || queue_entry(&admin, "st", "s");
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
            .ttl(Duration::from_millis(300))
            .renew(Renew::Off)
            .wait(Wait::For(Duration::from_secs(30)))
            .acquire()
            .await
            .unwrap();
        (g.fence(), g.leak())
    });
    eventually("the waiter queued", || async { entry().await.is_some() }).await;
    // Right after one of the waiter's tries, with its listener stopped: the grant's
    // notification waits in the server.
    let inbox = right_after_a_try(&admin, "st", "s").await;
    if !stop_backend(inbox) {
        return;
    }
    h.release().await.unwrap();
    let pushed_fence: i64 = admin
        .query_one(
            "SELECT fence FROM locks.st WHERE name = 's' AND pushed",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    // The 300 ms lease runs out; another claim takes the lock.
    tokio::time::sleep(Duration::from_millis(450)).await;
    let x = taker
        .lock("s")
        .ttl(Duration::from_secs(60))
        .renew(Renew::Off)
        .try_acquire()
        .await
        .unwrap()
        .expect("the handed-over lease ran out");
    assert!(x.fence() > u64::try_from(pushed_fence).unwrap());
    // The waiter's next try finds the new holder and queues again.
    eventually("the waiter tried again", || async {
        entry().await.is_some()
    })
    .await;
    resume_backend(inbox);
    stale_grant_is_not_taken(w, x).await;
}

/// A release that hands the lock to a queued waiter of the releasing handle does not
/// notify it: the grant comes back in the release's answer and the waiter takes it from
/// there, with no try of its own. Shown with the handle's listener stopped (SIGSTOP), so a
/// notification could not arrive: the row is still marked `pushed` (no try confirmed the
/// grant) when the waiter holds the lock. The holder is a resumed guard, which offers
/// nothing, so the waiter is queued by its own try.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_to_the_releasing_handle_comes_in_the_answer() {
    let Some(server) = server().await else { return };
    let url = format!("{}?table=da&schema=locks", server.url("postgres"));
    let (lm, b) = (
        Locksmith::connect(&url).await.unwrap(),
        Locksmith::connect(&url).await.unwrap(),
    );
    let admin = raw(&server.url("postgres")).await;
    let entry = || queue_entry(&admin, "da", "d");
    let token = lm
        .lock("d")
        .ttl(Duration::from_secs(60))
        .renew(Renew::Off)
        .acquire()
        .await
        .unwrap()
        .leak();
    let holder = b.resume("d", token).await.unwrap();
    let w = {
        let b = b.clone();
        tokio::spawn(async move {
            b.lock("d")
                .ttl(Duration::from_secs(60))
                .renew(Renew::Off)
                .wait(Wait::For(Duration::from_secs(30)))
                .acquire()
                .await
                .unwrap()
        })
    };
    eventually("the waiter queued", || async {
        entry().await.is_some_and(|(inbox, _)| inbox != 0)
    })
    .await;
    let inbox = right_after_a_try(&admin, "da", "d").await;
    if !stop_backend(inbox) {
        return;
    }
    holder.release().await.unwrap();
    // Without the answer's grant, the waiter's next try (within a second) would take it,
    // and clear the mark.
    let got = tokio::time::timeout(Duration::from_secs(5), w).await;
    let pushed: bool = admin
        .query_one("SELECT pushed FROM locks.da WHERE name = 'd'", &[])
        .await
        .unwrap()
        .get(0);
    resume_backend(inbox);
    let g = got
        .expect("the waiter took its grant without its listener")
        .unwrap();
    assert!(
        pushed,
        "a try confirmed the grant: it did not come in the answer"
    );
    g.release().await.unwrap();
}

/// A queue entry whose waiter went away without leaving (its process died with nobody
/// releasing after it) is removed by the garbage sweep once it is 10 s past its last try;
/// a fresh entry stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_queue_entries_are_swept() {
    let Some(server) = server().await else { return };
    let url = format!("{}?table=sq&schema=locks", server.url("postgres"));
    let lm = Locksmith::connect(&url).await.unwrap();
    let admin = raw(&server.url("postgres")).await;
    admin
        .batch_execute(
            "INSERT INTO locks.sq_queue (namespace, name, token, first_try, last_try, ttl,
                                         min_hold, owner, host, pid, grant_id, inbox)
             SELECT '', 'gone', v.token, c.t - v.age, c.t - v.age, NULL, NULL, 'o', 'h', 1,
                    'ff', 1
             FROM (VALUES ('old', 20000000), ('new', 0)) v(token, age),
                  (SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::int8 AS t) c",
        )
        .await
        .unwrap();
    eventually("only the fresh queue entry is left", || async {
        // Grants sweep in the background, every 64th.
        for _ in 0..64 {
            lm.lock("busy")
                .acquire()
                .await
                .unwrap()
                .release()
                .await
                .unwrap();
        }
        let left: Vec<String> = admin
            .query("SELECT token FROM locks.sq_queue ORDER BY token", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        left == ["new"]
    })
    .await;
}

/// The garbage sweep finds its rows through the expiry index, not by reading the table:
/// released rows stay for `retain` (an hour by default), so a table of a busy service holds
/// many of them, and a sweep that reads them all every 64th grant costs the server far more
/// than the grants. (A bound of `clock_timestamp()` is volatile and cannot bound an index
/// scan; the sweep reads it once in a subquery.) Shown by the table's scan counters: sweeps
/// run (the index is scanned) and no row is read by a scan of the whole table (the
/// migration's index builds count as whole-table scans, but read no rows: the table was
/// empty then).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweep_reads_the_expiry_index_not_the_table() {
    let Some(server) = server().await else { return };
    let lm = Locksmith::connect(&format!("{}?table=sw", server.url("postgres")))
        .await
        .unwrap();
    let admin = raw(&server.url("postgres")).await;
    // 5,000 released rows, kept for the default hour.
    admin
        .batch_execute(
            "SELECT count(a) FROM (SELECT public.sw_acquire('', 'r' || i, 't', 'o', 'h', 1,
                                                        60000000, NULL, 0) a
                                   FROM generate_series(1, 5000) i) x;
             SELECT count(r) FROM (SELECT public.sw_release('', 'r' || i, 't', NULL, 0) r
                                   FROM generate_series(1, 5000) i) x;",
        )
        .await
        .unwrap();
    // (rows read by whole-table scans, expiry index scans) so far, as the server's
    // statistics show them.
    let scans = || async {
        let r = admin
            .query_one(
                "SELECT t.seq_tup_read, coalesce(i.idx_scan, 0)
                 FROM pg_stat_user_tables t
                 JOIN pg_stat_user_indexes i ON i.relid = t.relid AND i.indexrelname = 'sw_expires_at'
                 WHERE t.relname = 'sw'",
                &[],
            )
            .await
            .unwrap();
        (r.get::<_, i64>(0), r.get::<_, i64>(1))
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (seq_before, idx_before) = scans().await;
    // Grants sweep in the background, every 64th: 256 grants run 4 sweeps.
    for _ in 0..256 {
        lm.lock("busy")
            .acquire()
            .await
            .unwrap()
            .release()
            .await
            .unwrap();
    }
    // A backend reports its counts when it exits (while it runs, up to 10 s late): end the
    // store's connections and wait for them to go, so every sweep is counted.
    lm.close().await.unwrap();
    drop(lm);
    let others = "SELECT pid FROM pg_stat_activity
                  WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()";
    admin
        .batch_execute(&format!(
            "SELECT pg_terminate_backend(pid) FROM ({others}) o"
        ))
        .await
        .unwrap();
    eventually("the store's backends exited", || async {
        admin.query(others, &[]).await.unwrap().is_empty()
    })
    .await;
    eventually("a sweep scanned the expiry index", || async {
        scans().await.1 > idx_before
    })
    .await;
    let (seq, idx) = scans().await;
    assert_eq!(
        seq, seq_before,
        "rows were read by whole-table scans while the sweeps ran (expiry index scans {idx_before} -> {idx})"
    );
}

/// `pg_terminate_backend` of every connection of the store, again and again, while tasks
/// take turns on a few locks: nothing gets stuck, no lock is left behind, and waiters are
/// still woken by notifications once the killing stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminated_connections_leave_nothing_stuck() {
    let Some(server) = server().await else { return };
    let url = format!("{}?namespace=kill&timeout=1s", server.url("postgres"));
    let lm = Locksmith::connect(&url).await.unwrap();
    let admin = raw(&server.url("postgres")).await;
    let done = Arc::new(AtomicUsize::new(0));
    let stop = Instant::now() + Duration::from_secs(4);
    let mut tasks = Vec::new();
    for i in 0..6 {
        let (lm, done) = (lm.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let name = format!("k{}", i % 2);
            while Instant::now() < stop {
                let got = lm
                    .lock(&name)
                    .ttl(Duration::from_secs(3))
                    .wait(Wait::For(Duration::from_secs(2)))
                    .acquire()
                    .await;
                match got {
                    Ok(g) => {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        let _ = g.release().await;
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => assert!(
                        e.is_retryable() || e.is_timeout(),
                        "an error that is neither retryable nor a timeout: {e}"
                    ),
                }
            }
        }));
    }
    let mut kills = 0;
    while Instant::now() < stop {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let rows = admin
            .query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                 WHERE application_name = 'locksmith' AND pid <> pg_backend_pid()",
                &[],
            )
            .await
            .unwrap();
        kills += rows.len();
    }
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(15), t)
            .await
            .expect("a task got stuck")
            .unwrap();
    }
    assert!(kills >= 5, "only {kills} connections were terminated");
    assert!(done.load(Ordering::Relaxed) > 0, "no task ever got a lock");
    // Detached releases of abandoned tries settle; then nothing is held.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (a, b) = (lm.inspect("k0").await, lm.inspect("k1").await);
        if matches!((&a, &b), (Ok(None), Ok(None))) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a lock was left behind: {a:?} {b:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Waking still works by notification (the listener reconnected).
    let g = lm
        .lock("k0")
        .ttl(Duration::from_secs(30))
        .acquire()
        .await
        .unwrap();
    let other = Locksmith::connect(&url).await.unwrap();
    let waiter = tokio::spawn(async move {
        let start = Instant::now();
        let g = other
            .lock("k0")
            .wait(Wait::For(Duration::from_secs(10)))
            .acquire()
            .await;
        (g.map(|g| g.leak()), start.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let released = Instant::now();
    g.release().await.unwrap();
    let (got, _) = waiter.await.unwrap();
    got.unwrap();
    assert!(
        released.elapsed() < Duration::from_millis(900),
        "the waiter was not woken by a notification ({:?} after the release)",
        released.elapsed()
    );
}

/// A restarted server gives retryable errors while it is down; then the store carries
/// on: a lease held across the restart survives and can be extended and released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_gives_retryable_errors_then_carries_on() {
    let Some(server) = server().await else { return };
    let url = format!("{}?namespace=rs&timeout=2s", server.url("postgres"));
    let lm = Locksmith::connect(&url).await.unwrap();
    let g = lm
        .lock("keep")
        .ttl(Duration::from_secs(60))
        .renew(Renew::Off)
        .acquire()
        .await
        .unwrap();
    let fence = g.fence();
    server.kill();
    let err = lm.inspect("keep").await.unwrap_err();
    assert!(err.is_retryable(), "{err}");
    let err = lm.lock("other").try_acquire().await.unwrap_err();
    assert!(err.is_retryable(), "{err}");
    server.restart().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let info = loop {
        match lm.inspect("keep").await {
            Ok(info) => break info,
            Err(e) => {
                assert!(e.is_retryable(), "{e}");
                assert!(Instant::now() < deadline, "the store never recovered: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let info = info.expect("the lease survived the restart");
    assert_eq!(info.fence, Some(fence));
    assert!(lm.lock("keep").try_acquire().await.unwrap().is_none());
    g.extend(Duration::from_secs(30)).await.unwrap();
    g.release().await.unwrap();
    let g = lm.lock("keep").acquire().await.unwrap();
    assert!(g.fence() > fence);
    g.release().await.unwrap();
}

/// A service that already has a deadpool pool hands it over; with a listener config its
/// waiters are notified, without one they poll — and the capabilities say which.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_can_be_handed_over() {
    use locksmith::store::Store;
    use locksmith::store::postgres::{
        PoolOptions, PostgresStore, deadpool_postgres, tokio_postgres as tp,
    };
    let Some(server) = server().await else { return };
    let config: tp::Config = server.url("postgres").parse().unwrap();
    let manager = deadpool_postgres::Manager::new(config.clone(), tp::NoTls);
    let pool = deadpool_postgres::Pool::builder(manager)
        .max_size(4)
        .build()
        .unwrap();
    let mut options = PoolOptions::default();
    options.listen = Some(config);
    let store = PostgresStore::from_pool(pool.clone(), options)
        .await
        .unwrap();
    assert!(store.capabilities().notify);
    let ns = locksmith::Namespace::new("pool").unwrap();
    let lm = Locksmith::with_store(store, ns.clone(), "postgres://handed-over");
    // Its locks are the same as a URL client's.
    let by_url = Locksmith::connect(&format!("{}?namespace=pool", server.url("postgres")))
        .await
        .unwrap();
    let g = lm
        .lock("p")
        .ttl(Duration::from_secs(30))
        .acquire()
        .await
        .unwrap();
    assert!(by_url.lock("p").try_acquire().await.unwrap().is_none());
    let waiter = tokio::spawn(async move {
        by_url
            .lock("p")
            .wait(Wait::For(Duration::from_secs(10)))
            .acquire()
            .await
            .map(|g| g.fence())
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let fence = g.fence();
    g.release().await.unwrap();
    assert!(waiter.await.unwrap().unwrap() > fence);
    // Without a listener: polling, and said so.
    let store = PostgresStore::from_pool(pool, PoolOptions::default())
        .await
        .unwrap();
    let caps = store.capabilities();
    assert!(!caps.notify && caps.poll_interval.is_some());
    let lm = Locksmith::with_store(store, ns, "postgres://handed-over");
    lm.lock("q")
        .acquire()
        .await
        .unwrap()
        .release()
        .await
        .unwrap();
}

/// Through a transaction-mode PgBouncer with `?listen=off`, the store opens no listener
/// (waiters poll; nothing is pushed), and tasks of two stores taking turns on one lock never
/// overlap, each grant with a fence of its own. (The whole conformance suite runs through
/// the pooler with `?listen=` pointing at the server: `conformance_postgres_pooler`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_a_transaction_pooler_with_the_listener_off_waiters_poll() {
    let Some(server) = server().await else {
        return;
    };
    let bouncer = match PgBouncer::start(&server).await {
        Ok(b) => b,
        Err(why) => {
            skip_store("pgbouncer", &why);
            return;
        }
    };
    let url = format!("{}?listen=off&table=pooled", bouncer.url("postgres"));
    let stores = [
        Locksmith::connect(&url).await.unwrap(),
        Locksmith::connect(&url).await.unwrap(),
    ];
    let caps = stores[0].capabilities();
    assert!(!caps.notify && !caps.pushed_grants, "{caps:?}");
    assert!(caps.poll_interval.is_some(), "{caps:?}");
    let inside = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for lm in &stores {
        for _ in 0..3 {
            let (lm, inside) = (lm.clone(), inside.clone());
            tasks.push(tokio::spawn(async move {
                let mut fences = Vec::new();
                for _ in 0..15 {
                    let g = lm
                        .lock("turns")
                        .wait(Wait::For(Duration::from_secs(60)))
                        .acquire()
                        .await
                        .unwrap();
                    assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0, "two holders");
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    inside.fetch_sub(1, Ordering::SeqCst);
                    fences.push(g.fence());
                    g.release().await.unwrap();
                }
                fences
            }));
        }
    }
    let mut fences = Vec::new();
    for t in tasks {
        fences.extend(t.await.unwrap());
    }
    fences.sort_unstable();
    fences.dedup();
    assert_eq!(fences.len(), 6 * 15, "a fence was handed out twice");
    // Nothing listens on the server, through the pooler or around it.
    let admin = raw(&server.url("postgres")).await;
    let listening: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity
             WHERE pid <> pg_backend_pid() AND query ILIKE '%listen%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(listening, 0, "{}", bouncer.log_tail(10));
}

/// A waiter that offered its claim to its own handle's holder, and was queued in the store
/// by that holder's release behind another process's waiter, never tried for itself. When
/// the lock then reaches it as a pushed grant whose notification does not arrive (its
/// listener backend is stopped), its next try takes that grant — it does not take the lock
/// held by its own token for somebody else's ("already held by this token").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_queued_by_a_hand_over_takes_its_grant_by_a_try() {
    use locksmith_testkit::process::{Helper, find_helper};
    let Some(server) = server().await else { return };
    let Some(helper) = find_helper() else {
        panic!("the locksmith-test-helper binary is not built next to this test");
    };
    let url = format!("{}?table=qh&schema=locks", server.url("postgres"));
    let b = Locksmith::connect(&url).await.unwrap();
    let admin = raw(&server.url("postgres")).await;
    let queued = || async {
        admin
            .query_one("SELECT count(*) FROM locks.qh_queue WHERE name = 'q'", &[])
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    let holder = b
        .lock("q")
        .ttl(Duration::from_secs(60))
        .acquire()
        .await
        .unwrap();
    // Another process waits first: its try queues it in the store.
    let mut other = Helper::spawn(&helper, &["churn", &url, "q", "300", "1"]);
    eventually("the other process queued", || async { queued().await == 1 }).await;
    // A waiter of the holder's handle offers its claim to the holder (no try).
    let w = {
        let b = b.clone();
        tokio::spawn(async move {
            b.lock("q")
                .ttl(Duration::from_secs(60))
                .wait(Wait::For(Duration::from_secs(20)))
                .acquire()
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The release hands the lock to the other process and queues the offered claim.
    holder.release().await.unwrap();
    other.expect("started", Duration::from_secs(10)).await;
    let (inbox, _) = queue_entry(&admin, "qh", "q")
        .await
        .expect("the claim queued");
    // The other process releases within 300 ms, handing the lock to the claim; its
    // notification stays with the stopped listener.
    if !stop_backend(inbox) {
        return;
    }
    let got = tokio::time::timeout(Duration::from_secs(10), w).await;
    resume_backend(inbox);
    other.finish(Duration::from_secs(10)).await;
    let g = got
        .expect("the waiter ended")
        .unwrap()
        .expect("the waiter got the lock");
    assert_eq!(queued().await, 0);
    g.release().await.unwrap();
}
