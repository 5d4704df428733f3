//! The MySQL/MariaDB raw baseline: the statements locksmith's store sends for a grant and a
//! release — `CALL <table>_acquire(…)` and `CALL <table>_release(…)`, the store's own stored
//! procedures — issued directly with sqlx over a pool like the store's (10 connections, no
//! test before acquire), in a namespace of their own. The difference to locksmith is
//! locksmith's own work: option checks, guards, the waiter queue, the detached-release and
//! watchdog machinery.

use sqlx::mysql::{MySqlPool, MySqlPoolOptions};

/// The baseline's namespace in the store's table.
const NS: &[u8] = b"raw-baseline";

/// A pool and the two statements.
#[derive(Clone, Debug)]
pub(crate) struct RawMySql {
    pool: MySqlPool,
    acquire: String,
    release: String,
}

impl RawMySql {
    /// Connects to `url` (a `mysql://` URL whose store schema already exists: open the
    /// store first) for the lock table `table`.
    pub(crate) async fn connect(url: &str, table: &str) -> Result<RawMySql, sqlx::Error> {
        let base = url.split('?').next().unwrap_or(url);
        let base = base.replacen("mariadb://", "mysql://", 1);
        let pool = MySqlPoolOptions::new()
            .max_connections(10)
            .test_before_acquire(false)
            .connect(&base)
            .await?;
        Ok(RawMySql {
            pool,
            acquire: format!("CALL {table}_acquire(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"),
            release: format!("CALL {table}_release(?, ?, ?, ?, ?)"),
        })
    }

    pub(crate) async fn acquire(&self, name: &str, token: u128) -> bool {
        let rows = sqlx::query(sqlx::AssertSqlSafe(self.acquire.as_str()))
            .bind(NS)
            .bind(name.as_bytes())
            .bind(format!("{token:032x}").into_bytes())
            .bind(&b"bench"[..])
            .bind(&b"host"[..])
            .bind(1_i64)
            .bind(Some(60_000_000_i64))
            .bind(None::<i64>)
            .bind(0_i64)
            .bind(0_i64)
            .fetch_all(&self.pool)
            .await
            .expect("raw MySQL acquire");
        status(&rows) == 0
    }

    pub(crate) async fn release(&self, name: &str, token: u128) -> bool {
        let rows = sqlx::query(sqlx::AssertSqlSafe(self.release.as_str()))
            .bind(NS)
            .bind(name.as_bytes())
            .bind(format!("{token:032x}").into_bytes())
            .bind(None::<i64>)
            .bind(0_i64)
            .fetch_all(&self.pool)
            .await
            .expect("raw MySQL release");
        status(&rows) == 0
    }
}

fn status(rows: &[sqlx::mysql::MySqlRow]) -> i64 {
    use sqlx::Row as _;
    let r = rows.first().expect("a status row");
    r.try_get::<i64, _>(0)
        .or_else(|_| r.try_get::<i32, _>(0).map(i64::from))
        .expect("an integer status")
}
