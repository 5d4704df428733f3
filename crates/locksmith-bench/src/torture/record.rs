//! What workers and the harness write down: one JSON object per line.
//!
//! Times are nanoseconds of `CLOCK_MONOTONIC`, which every process on this machine reads
//! from the same clock, so records of different workers compare directly.

use std::io::Write;
use std::path::Path;

use nix::time::{ClockId, clock_gettime};
use serde::{Deserialize, Serialize};

/// Now, in nanoseconds of `CLOCK_MONOTONIC` (shared by every process on the machine).
pub(crate) fn mono_ns() -> u64 {
    let t = clock_gettime(ClockId::CLOCK_MONOTONIC).expect("CLOCK_MONOTONIC is always readable");
    t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
}

/// One line of a worker's log.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum Record {
    /// Written (and flushed) as soon as a lock is granted, so a holder killed before it
    /// could write its [`Record::Hold`] still shows up.
    Grant {
        /// The worker's id.
        worker: u32,
        /// The lock name.
        name: String,
        /// The grant's fence.
        fence: u64,
        /// When `acquire` returned.
        start: u64,
    },
    /// Written (and flushed) just before a library worker calls `release`: a kill that lands
    /// after this may find the release already on its way to the store, so the lock can be
    /// free before its lease would have ended.
    Releasing {
        /// The worker's id.
        worker: u32,
        /// The lock name.
        name: String,
        /// The grant's fence.
        fence: u64,
        /// When the worker called `release`.
        at: u64,
    },
    /// A finished hold: `(name, fence, start, end, worker, outcome)` and the resource write.
    Hold(Hold),
    /// An attempt that did not get the lock, or a store error.
    Miss {
        /// The worker's id.
        worker: u32,
        /// The lock name.
        name: String,
        /// When the attempt ended.
        at: u64,
        /// `timeout`, `busy` or `error`.
        outcome: String,
        /// The error message (must never contain a token).
        error: String,
    },
}

/// A finished hold.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub(crate) struct Hold {
    /// The worker's id.
    pub(crate) worker: u32,
    /// `async`, `blocking` or `cli`.
    pub(crate) mode: String,
    /// The lock name.
    pub(crate) name: String,
    /// The grant's fence.
    pub(crate) fence: u64,
    /// When `acquire` returned (the CLI child: when it started).
    pub(crate) start: u64,
    /// When the holder stopped using the lock (before `release`).
    pub(crate) end: u64,
    /// The latest local deadline the guard vouched for during the hold (`now +
    /// expires_in()` while `is_held()`): by contract the lease lasts at least this long.
    /// `None` where the holder cannot know it (`locksmith run`'s child).
    pub(crate) deadline: Option<u64>,
    /// When the holder was first told the lock was lost, if it was.
    pub(crate) lost_at: Option<u64>,
    /// `released`, `lost`, or `release_error`.
    pub(crate) outcome: String,
    /// Whether this process's view of the lock clock was stepped (`step_clock`) before
    /// this grant.
    #[serde(default)]
    pub(crate) stepped: bool,
    /// The read-modify-write of the fenced counter.
    pub(crate) write: Option<WriteResult>,
    /// An error text the holder saw (release error, loss reason).
    #[serde(default)]
    pub(crate) error: Option<String>,
}

/// The outcome of a read-modify-write on the fenced resource.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub(crate) struct WriteResult {
    /// The value read (`None`: the read was rejected by the fence).
    pub(crate) read: Option<i64>,
    /// Whether the write was accepted.
    pub(crate) accepted: bool,
    /// When the write was attempted.
    pub(crate) at: u64,
}

/// A fault the harness injected, in the harness's `faults.jsonl`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub(crate) struct Fault {
    /// `sigkill`, `sigstop`, `sqlite_tx_kill`, `sqlite_busy`, `disk_full`, `clock_step`.
    pub(crate) kind: String,
    /// When it was injected.
    pub(crate) at: u64,
    /// When it ended (SIGCONT, the busy connection closed, space returned).
    pub(crate) until: Option<u64>,
    /// The lock it targeted, if any.
    pub(crate) name: Option<String>,
    /// The fence of the hold it targeted, if any.
    pub(crate) fence: Option<u64>,
    /// The store's `expires_in` of that lock just before the fault (ns).
    pub(crate) expires_in: Option<u64>,
    /// When that `expires_in` was read.
    pub(crate) inspected_at: Option<u64>,
    /// The pid it hit.
    pub(crate) pid: Option<i32>,
    /// Free text.
    pub(crate) note: String,
}

/// Appends one JSON line and flushes it.
pub(crate) fn append<T: Serialize>(file: &mut std::fs::File, record: &T) {
    let mut line = serde_json::to_vec(record).expect("records serialise");
    line.push(b'\n');
    // One write call per line: lines of a killed worker are whole or absent.
    let _ = file.write_all(&line);
}

/// Opens a log for appending.
pub(crate) fn open_log(path: &Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("cannot open log {}: {e}", path.display()))
}

/// Reads every line of a JSON-lines file; a torn last line (a killed writer) is skipped.
pub(crate) fn read_lines<T: for<'de> Deserialize<'de>>(path: &Path) -> Vec<T> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}
