//! The README's task-lock section, runnable: `cargo run --example task_locks`.
//!
//! A cron-style job kept to once per period with `min_hold`, and a method whose lock name
//! comes from `{self.id}`.

use locksmith::{Locksmith, locked, stores};

#[derive(Debug)]
enum JobError {
    Lock(locksmith::Error),
    Export(String),
}

impl From<locksmith::Error> for JobError {
    fn from(e: locksmith::Error) -> Self {
        JobError::Lock(e)
    }
}

// A cron-style job: every host's cron fires it each hour; it runs at most once per 50 minutes
// (the lock is kept for `min_hold` after it finishes), and a run still going when the next
// one fires makes that one skip. Busy → `on_locked`.
#[locked(name = "cron:export", ttl = "5m", min_hold = "50m", on_locked = Ok(false))]
async fn hourly_export() -> Result<bool, JobError> {
    // … export; errors come back as they are and release the lock
    Ok(true)
}

struct Tenant {
    id: u64,
}

impl Tenant {
    // One sync per tenant at a time; a second caller waits up to 10 s, then gets
    // Err(JobError::Lock(e)) with e.is_contention().
    #[locked(name = "tenant:{self.id}:sync", wait = "10s")]
    fn sync(&self, full: bool) -> Result<u64, JobError> {
        if full {
            return Err(JobError::Export(
                "full sync needs a maintenance window".into(),
            ));
        }
        Ok(self.id)
    }
}

#[tokio::main]
async fn main() -> Result<(), JobError> {
    // `default` comes from LOCKSMITH_URL on first use; install stores to choose yourself.
    stores::install("default", Locksmith::connect("memory://").await?);
    assert!(hourly_export().await?);
    assert!(!hourly_export().await?, "inside the period: skipped");
    let synced = tokio::task::spawn_blocking(|| {
        let tenant = Tenant { id: 7 };
        (tenant.sync(false), tenant.sync(true))
    });
    match synced.await.unwrap() {
        (Ok(id), Err(JobError::Export(why))) => println!("synced tenant {id}; full sync: {why}"),
        (Err(JobError::Lock(e)), _) if e.is_contention() => println!("busy: {e}"),
        other => println!("{other:?}"),
    }
    Ok(())
}
