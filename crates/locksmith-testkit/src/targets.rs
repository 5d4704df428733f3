//! The stores the suite runs against, and how each is set up for a test.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use locksmith::Capabilities;

use crate::Target;

/// The capabilities the memory store must declare: everything but `persistent`,
/// `cross_process` and `poll_interval`; names up to 255 bytes; TTLs to the microsecond.
pub fn memory_capabilities() -> Capabilities {
    let mut caps = Capabilities::NONE;
    caps.fencing = true;
    caps.notify = true;
    caps.atomic_multi = true;
    caps.never_expire = true;
    caps.expired_visible = true;
    caps.holder_metadata = true;
    caps.namespaces = true;
    caps.min_hold = true;
    caps.ordered_list = true;
    caps.max_name_len = 255;
    caps.ttl_granularity = Duration::from_micros(1);
    caps
}

/// A fresh named in-process store (`memory://conformance-<uuid>`), with a fault switch.
pub async fn memory() -> Option<Target> {
    let name = format!("conformance-{}", uuid::Uuid::new_v4().simple());
    let switch_name = name.clone();
    let mut target = Target::new("memory", format!("memory://{name}"), memory_capabilities());
    target.faults = Some(Arc::new(move |offline| {
        locksmith::store::memory::set_offline(&switch_name, offline);
    }));
    let clock_name = name.clone();
    target.step_clock = Some(Arc::new(move |micros| {
        locksmith::store::memory::step_clock(&clock_name, micros);
    }));
    Some(target)
}

/// The memory store behind 4 ms of simulated round trip (`?latency=4ms`): every call
/// really awaits, so races a networked store would show are exercised here too.
pub async fn memory_latency() -> Option<Target> {
    let mut target = memory().await?;
    target.base_url.push_str("?latency=4ms");
    Some(target)
}

/// The capabilities the SQLite store must declare.
pub fn sqlite_capabilities() -> Capabilities {
    let mut caps = memory_capabilities();
    caps.persistent = true;
    caps.cross_process = true;
    caps.poll_interval = Some(Duration::from_millis(25));
    caps
}

/// A fresh SQLite file in a temp dir. Its fault switch holds the file's write lock from
/// another connection (`BEGIN EXCLUSIVE`), so every write finds it busy, as when another
/// process hangs inside a transaction.
pub async fn sqlite() -> Option<Target> {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("locks.db");
    let blocker: Arc<Mutex<Option<rusqlite::Connection>>> = Arc::default();
    let switch_path = path.clone();
    let faults: crate::FaultSwitch = Arc::new(move |offline| {
        let mut slot = blocker.lock().unwrap();
        if offline {
            let conn = rusqlite::Connection::open(&switch_path).expect("open blocker");
            conn.execute_batch("BEGIN EXCLUSIVE")
                .expect("take the write lock");
            *slot = Some(conn);
        } else if let Some(conn) = slot.take() {
            conn.execute_batch("ROLLBACK")
                .expect("release the write lock");
        }
    });
    let mut target = Target::new(
        "sqlite",
        format!("sqlite://{}", path.display()),
        sqlite_capabilities(),
    );
    target.faults = Some(faults);
    let clock_path = path.clone();
    target.step_clock = Some(Arc::new(move |micros| {
        locksmith::store::sqlite::step_clock(&clock_path, micros);
    }));
    target.keep_alive = Some(Box::new(dir));
    // The file is the store: a restart is every client going away and new ones opening
    // it. The case's client processes have exited when this runs; nothing else to do.
    target.restart = Some(Arc::new(|| Box::pin(async {})));
    Some(target)
}

/// How long cases wait for something that should happen "soon" (a detached release on a
/// networked store, a wake-up): generous, because CI machines are slow.
pub const SOON: Duration = Duration::from_secs(3);

/// The django-lockmgr layout on SQLite (`sqlite:///…/db.sqlite3?layout=django-lockmgr`): a
/// fresh temp file holding Django's `lockmgr_lock` as its migration makes it
/// ([`crate::lockmgr::SQLITE`]), switched to WAL as many Django projects switch their file.
/// The fault switch (another connection holding `BEGIN EXCLUSIVE`) and the clock hook are as
/// the native SQLite target's.
///
/// Why WAL here: in SQLite's default rollback-journal mode (which the layout keeps when it
/// finds it: it never changes a Django file's journal mode) every commit syncs the disk with
/// `synchronous = FULL`, about 2 ms on a quiet disk but tens of ms, with spikes past 150 ms,
/// while other builds load it — enough to push the suite's 300 ms leases and 500 ms wake-up
/// bounds past their limits on a busy 2-core machine (1–2 of 92 cases failed in about half
/// of the runs at load 5–8, always a bound, never a wrong answer). The rollback-journal mode
/// is covered by `tests/lockmgr_sqlite.rs` and by the interop tests, whose file Django's own
/// `migrate` makes.
pub async fn sqlite_lockmgr() -> Option<Target> {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("db.sqlite3");
    {
        let conn = rusqlite::Connection::open(&path).expect("create the Django database");
        for ddl in crate::lockmgr::SQLITE {
            conn.execute_batch(ddl).expect("Django's lockmgr_lock");
        }
        conn.execute_batch("PRAGMA journal_mode = WAL")
            .expect("switch the file to WAL");
    }
    let blocker: Arc<Mutex<Option<rusqlite::Connection>>> = Arc::default();
    let switch_path = path.clone();
    let mut target = Target::new(
        "sqlite",
        format!("sqlite://{}?layout=django-lockmgr", path.display()),
        crate::lockmgr::capabilities(),
    );
    target.faults = Some(Arc::new(move |offline| {
        let mut slot = blocker.lock().unwrap();
        if offline {
            let conn = rusqlite::Connection::open(&switch_path).expect("open blocker");
            conn.busy_timeout(Duration::from_secs(5))
                .expect("busy timeout");
            conn.execute_batch("BEGIN EXCLUSIVE")
                .expect("take the write lock");
            *slot = Some(conn);
        } else if let Some(conn) = slot.take() {
            conn.execute_batch("ROLLBACK")
                .expect("release the write lock");
        }
    }));
    let clock_path = path.clone();
    target.step_clock = Some(Arc::new(move |micros| {
        locksmith::store::sqlite::step_clock(&clock_path, micros);
    }));
    target.keep_alive = Some(Box::new(dir));
    // The file is the store: a restart is every client going away and new ones opening it.
    target.restart = Some(Arc::new(|| Box::pin(async {})));
    Some(target)
}
