//! A tour of locksmith: `cargo run --example quickstart`.
//!
//! It uses the default store — the per-user SQLite file
//! (`$XDG_STATE_HOME/locksmith/locks.db`, else `~/.local/state/locksmith/locks.db`) — or
//! whatever `LOCKSMITH_URL` names (e.g. `LOCKSMITH_URL=memory://`).

use std::time::Duration;

use locksmith::{ListQuery, Locksmith, SetPolicy, Wait};

#[tokio::main]
async fn main() -> locksmith::Result<()> {
    let lm = Locksmith::from_env().await?.with_namespace("quickstart")?;
    let url = std::env::var(locksmith::URL_ENV).unwrap_or_else(|_| locksmith::DEFAULT_URL.into());
    // Never print a store URL as given: it may carry a password.
    let url = locksmith::redact_url(&url);
    println!(
        "store: {url} ({}), namespace {:?}",
        lm.store_kind(),
        lm.namespace()
    );

    // 1. A lock held by one worker blocks the others; each grant has a higher fence.
    let mut workers = Vec::new();
    for id in 0..3 {
        let lm = lm.clone();
        workers.push(tokio::spawn(async move {
            lm.lock("reports/daily")
                .owner(format!("worker-{id}"))
                .ttl(Duration::from_secs(5)) // renewed in the background while the body runs
                .run(|lease| async move {
                    println!(
                        "worker-{id} holds {} with fence {}",
                        lease.name(),
                        lease.fence()
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                })
                .await
        }));
    }
    for w in workers {
        w.await.expect("worker task")?;
    }

    // 2. Who holds it? Errors carry the holder, never its token.
    let guard = lm.lock("deploy").owner("alice").acquire().await?;
    let err = lm
        .lock("deploy")
        .wait(Wait::No)
        .acquire()
        .await
        .unwrap_err();
    println!("second deploy refused: {err}");

    // 3. "Skip if already running".
    let skipped = lm.lock("deploy").once(|_| async { "deployed" }).await?;
    println!("once() while held: {skipped:?}");
    guard.release().await?;

    // 4. At most once per period: min_hold keeps the lock after release.
    lm.lock("sync")
        .min_hold(Duration::from_millis(300))
        .run(|_| async {})
        .await?;
    let again = lm.lock("sync").once(|_| async {}).await?;
    println!(
        "sync again within its period: {}",
        if again.is_some() { "ran" } else { "skipped" }
    );

    // 5. Operators: set several locks at once, list them, clear them.
    let out = lm
        .set_locks(["maint/a", "maint/b"], SetPolicy::default())
        .await?;
    println!("set_locks: {:?}", out.counts);
    for info in lm.list(ListQuery::prefix("maint/")).await?.items {
        println!("  {}: {info}", info.name);
    }
    let cleared = lm.clear(["maint/a", "maint/b", "maint/c"]).await?;
    println!("cleared: {cleared:?}");
    println!("fences keep growing on every run: the SQLite file keeps its counter");
    // Finish releases still being retried, then close the store.
    lm.close().await
}
