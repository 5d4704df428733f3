//! The fenced resource: a counter per lock name in its own SQLite file (never the lock
//! store), which rejects any read or write whose fence is lower than the highest fence it
//! has seen for that name.
//!
//! Both halves of the read-modify-write are fenced: the read registers the reader's fence,
//! so a holder that read, froze, and wrote after a newer holder read is rejected — the
//! interleaving *A reads, B reads, A writes, B writes* (a lost update that a write-only
//! fence check lets through) cannot happen. Every read and write is appended to `ops`, the
//! checker's ground truth.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::record::mono_ns;

/// A connection to the fenced resource file.
pub(crate) struct Resource {
    conn: Connection,
}

/// One read or write, as the resource recorded it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Op {
    /// Order of application.
    pub(crate) seq: i64,
    /// The lock name.
    pub(crate) name: String,
    /// The fence it carried.
    pub(crate) fence: u64,
    /// The worker that sent it.
    pub(crate) worker: u32,
    /// `read` or `write`.
    pub(crate) op: String,
    /// The value read, or the value written.
    pub(crate) value: i64,
    /// Whether the fence let it through.
    pub(crate) accepted: bool,
    /// When it was applied.
    pub(crate) at: u64,
}

impl Resource {
    /// Opens (and creates) the resource file.
    pub(crate) fn open(path: &Path) -> rusqlite::Result<Resource> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(Duration::from_secs(30))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS counter (name TEXT PRIMARY KEY, value INTEGER NOT NULL, max_fence INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS ops (seq INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL,
                fence INTEGER NOT NULL, worker INTEGER NOT NULL, op TEXT NOT NULL, value INTEGER NOT NULL,
                accepted INTEGER NOT NULL, at INTEGER NOT NULL);",
        )?;
        Ok(Resource { conn })
    }

    /// Applies one fenced operation: `None` to read, `Some(v)` to write `v`. Returns the
    /// value read (or written) if the fence was accepted.
    fn fenced(
        &mut self,
        name: &str,
        fence: u64,
        worker: u32,
        write: Option<i64>,
    ) -> rusqlite::Result<Option<i64>> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let row: Option<(i64, i64)> = tx
            .query_row(
                "SELECT value, max_fence FROM counter WHERE name = ?1",
                [name],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let (value, max_fence) = row.unwrap_or((0, 0));
        let fence_i = i64::try_from(fence).unwrap_or(i64::MAX);
        let accepted = fence_i >= max_fence;
        let shown = write.unwrap_or(value);
        if accepted {
            tx.execute(
                "INSERT INTO counter (name, value, max_fence) VALUES (?1, ?2, ?3)
                 ON CONFLICT (name) DO UPDATE SET value = ?2, max_fence = ?3",
                params![name, shown, fence_i],
            )?;
        }
        tx.execute(
            "INSERT INTO ops (name, fence, worker, op, value, accepted, at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                name,
                fence_i,
                worker,
                if write.is_some() { "write" } else { "read" },
                shown,
                accepted,
                mono_ns() as i64
            ],
        )?;
        tx.commit()?;
        Ok(accepted.then_some(shown))
    }

    /// The fenced read: the counter, or `None` if a newer fence was seen.
    pub(crate) fn read(
        &mut self,
        name: &str,
        fence: u64,
        worker: u32,
    ) -> rusqlite::Result<Option<i64>> {
        self.fenced(name, fence, worker, None)
    }

    /// The fenced write: whether `value` was stored.
    pub(crate) fn write(
        &mut self,
        name: &str,
        fence: u64,
        worker: u32,
        value: i64,
    ) -> rusqlite::Result<bool> {
        Ok(self.fenced(name, fence, worker, Some(value))?.is_some())
    }

    /// Every operation, in order.
    pub(crate) fn ops(&self) -> rusqlite::Result<Vec<Op>> {
        let mut stmt = self.conn.prepare(
            "SELECT seq, name, fence, worker, op, value, accepted, at FROM ops ORDER BY seq",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(Op {
                seq: r.get(0)?,
                name: r.get(1)?,
                fence: r.get::<_, i64>(2)? as u64,
                worker: r.get(3)?,
                op: r.get(4)?,
                value: r.get(5)?,
                accepted: r.get(6)?,
                at: r.get::<_, i64>(7)? as u64,
            })
        })?;
        rows.collect()
    }

    /// The final counter per name.
    pub(crate) fn counters(&self) -> rusqlite::Result<Vec<(String, i64)>> {
        let mut stmt = self
            .conn
            .prepare("SELECT name, value FROM counter ORDER BY name")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect()
    }
}
