//! The MySQL/MariaDB store's SQL: the schema, its versioned migration, and every statement,
//! built once per table name (a validated identifier, the only thing ever spliced in).

use std::sync::Arc;

/// The schema version this build writes (the `version` row of `<table>_meta`).
pub(crate) const SCHEMA_VERSION: i64 = 1;

/// The store clock: microseconds since the Unix epoch on the server's clock, in UTC (no
/// session time zone involved), plus the test hook's offset (always a bound parameter).
/// `UTC_TIMESTAMP(6)` is the time the statement started; every statement that reads it runs
/// after the rows it decides on are locked.
pub(crate) const NOW: &str =
    "(TIMESTAMPDIFF(MICROSECOND, '1970-01-01 00:00:00', UTC_TIMESTAMP(6)) + ?)";

/// The columns a [`Row`](super::super::rows::Row) is read from, in order.
pub(crate) const COLUMNS: &str =
    "token, owner, host, pid, fence, acquired_at, expires_at, min_hold";

/// Whether `table` is an identifier locksmith accepts for `?table=`: ASCII letters, digits
/// and `_`, not starting with a digit, at most 48 bytes (the derived `<table>_reservations`
/// must fit MySQL's 64).
pub(crate) fn valid_table(table: &str) -> bool {
    !table.is_empty()
        && table.len() <= 48
        && table
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !table.as_bytes()[0].is_ascii_digit()
}

/// Every statement of one table, built once.
#[derive(Debug)]
pub(crate) struct Sql {
    pub(crate) table: String,
    pub(crate) lock_rows_head: String,
    pub(crate) select_rows_head: String,
    pub(crate) select_res_head: String,
    pub(crate) now_only: Arc<str>,
    pub(crate) now_and_counter: Arc<str>,
    pub(crate) upsert_row: Arc<str>,
    pub(crate) delete_row: Arc<str>,
    pub(crate) delete_placeholder: Arc<str>,
    pub(crate) upsert_res: Arc<str>,
    pub(crate) delete_res: Arc<str>,
    pub(crate) set_counter: Arc<str>,
    pub(crate) peek: Arc<str>,
    pub(crate) inspect: Arc<str>,
    pub(crate) held_by: Arc<str>,
    pub(crate) list: Arc<str>,
    pub(crate) force_live: Arc<str>,
    pub(crate) force_any: Arc<str>,
    pub(crate) reset_all: Arc<str>,
    pub(crate) purge: Arc<str>,
    pub(crate) sweep_rows: Arc<str>,
    pub(crate) sweep_row: Arc<str>,
    pub(crate) sweep_res: Arc<str>,
    pub(crate) sweep_one_res: Arc<str>,
    pub(crate) version: Arc<str>,
    pub(crate) call_acquire: Arc<str>,
    pub(crate) call_release: Arc<str>,
    pub(crate) call_extend: Arc<str>,
}

impl Sql {
    pub(crate) fn new(table: &str) -> Sql {
        assert!(valid_table(table), "validated before");
        let t = table;
        let s = |x: String| -> Arc<str> { Arc::from(x) };
        Sql {
            table: t.to_string(),
            // placeholders: token NULL, fence 0, never committed (see `Snapshot`)
            lock_rows_head: format!(
                "INSERT INTO {t} (namespace, name, token, owner, host, pid, fence, acquired_at, expires_at, min_hold) VALUES "
            ),
            select_rows_head: format!(
                "SELECT name, {COLUMNS} FROM {t} WHERE namespace = ? AND name IN "
            ),
            select_res_head: format!(
                "SELECT name, token, until FROM {t}_reservations WHERE namespace = ? AND name IN "
            ),
            now_only: s(format!("SELECT {NOW}")),
            now_and_counter: s(format!(
                "SELECT value, {NOW} FROM {t}_fence WHERE id = 0 FOR UPDATE"
            )),
            upsert_row: s(format!(
                "INSERT INTO {t} (namespace, name, token, owner, host, pid, fence, acquired_at, expires_at, min_hold)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                 ON DUPLICATE KEY UPDATE token = VALUES(token), owner = VALUES(owner),
                   host = VALUES(host), pid = VALUES(pid), fence = VALUES(fence),
                   acquired_at = VALUES(acquired_at), expires_at = VALUES(expires_at),
                   min_hold = VALUES(min_hold)"
            )),
            delete_row: s(format!("DELETE FROM {t} WHERE namespace = ? AND name = ?")),
            delete_placeholder: s(format!(
                "DELETE FROM {t} WHERE namespace = ? AND name = ? AND fence = 0"
            )),
            upsert_res: s(format!(
                "INSERT INTO {t}_reservations (namespace, name, token, until) VALUES (?, ?, ?, ?)
                 ON DUPLICATE KEY UPDATE token = VALUES(token), until = VALUES(until)"
            )),
            delete_res: s(format!(
                "DELETE FROM {t}_reservations WHERE namespace = ? AND name = ?"
            )),
            set_counter: s(format!(
                "INSERT INTO {t}_fence (id, value) VALUES (0, ?) ON DUPLICATE KEY UPDATE value = VALUES(value)"
            )),
            peek: s(format!(
                "SELECT {NOW}, l.token, l.owner, l.host, l.pid, l.fence, l.acquired_at, l.expires_at, l.min_hold,
                        r.token, r.until
                 FROM (SELECT 1) AS one
                 LEFT JOIN {t} AS l ON l.namespace = ? AND l.name = ? AND l.fence <> 0
                 LEFT JOIN {t}_reservations AS r ON r.namespace = ? AND r.name = ?"
            )),
            inspect: s(format!(
                "SELECT {NOW}, l.token, l.owner, l.host, l.pid, l.fence, l.acquired_at, l.expires_at, l.min_hold
                 FROM (SELECT 1) AS one
                 LEFT JOIN {t} AS l ON l.namespace = ? AND l.name = ? AND l.fence <> 0"
            )),
            held_by: s(format!(
                "SELECT {NOW}, l.token, l.owner, l.host, l.pid, l.fence, l.acquired_at, l.expires_at, l.min_hold
                 FROM (SELECT 1) AS one
                 LEFT JOIN {t} AS l ON l.namespace = ? AND l.name = ? AND l.token = ? AND l.fence <> 0"
            )),
            // ?1 now offset, ?2 namespace, ?3 start bound, ?4 LIKE pattern (escaped with !),
            // ?5 expired filter (0 live, 1 all, 2 expired), ?6/?7 the clock again, ?8 limit
            list: s(format!(
                "SELECT n.now, l.name, {cols} FROM (SELECT {NOW} AS now) AS n
                 JOIN {t} AS l ON l.namespace = ? AND l.name > ? AND l.name LIKE ? ESCAPE '!'
                   AND l.fence <> 0
                   AND CASE ? WHEN 0 THEN l.expires_at IS NULL OR l.expires_at > n.now
                              WHEN 1 THEN TRUE
                              ELSE l.expires_at IS NOT NULL AND l.expires_at <= n.now END
                 ORDER BY l.name LIMIT ?",
                cols = "l.token, l.owner, l.host, l.pid, l.fence, l.acquired_at, l.expires_at, l.min_hold"
            )),
            force_live: s(format!(
                "DELETE FROM {t} WHERE namespace = ? AND name = ? AND fence <> 0
                   AND (expires_at IS NULL OR expires_at > {NOW})"
            )),
            force_any: s(format!(
                "DELETE FROM {t} WHERE namespace = ? AND name = ? AND fence <> 0"
            )),
            reset_all: s(format!(
                "DELETE FROM {t} WHERE namespace = ? AND fence <> 0"
            )),
            purge: s(format!(
                "DELETE FROM {t} WHERE namespace = ? AND fence <> 0
                   AND expires_at IS NOT NULL AND expires_at <= {NOW}"
            )),
            // The sweep finds garbage with a plain (non-locking) read, then deletes it row by
            // row by primary key, checking again: no range locks on the expiry index that
            // would hold up grants.
            sweep_rows: s(format!(
                "SELECT namespace, name FROM {t} WHERE expires_at IS NOT NULL AND expires_at <= {NOW} - ? AND fence <> 0 LIMIT 64"
            )),
            sweep_row: s(format!(
                "DELETE FROM {t} WHERE namespace = ? AND name = ? AND fence <> 0
                   AND expires_at IS NOT NULL AND expires_at <= {NOW} - ?"
            )),
            sweep_res: s(format!(
                "SELECT namespace, name FROM {t}_reservations WHERE until <= {NOW} LIMIT 64"
            )),
            sweep_one_res: s(format!(
                "DELETE FROM {t}_reservations WHERE namespace = ? AND name = ? AND until <= {NOW}"
            )),
            version: s(format!("SELECT version FROM {t}_meta WHERE id = 0")),
            call_acquire: s(format!("CALL {t}_acquire(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")),
            call_release: s(format!("CALL {t}_release(?, ?, ?, ?, ?)")),
            call_extend: s(format!("CALL {t}_extend(?, ?, ?, ?, ?, ?)")),
        }
    }

    /// The statements that create the schema (idempotent; run under the migration lock).
    pub(crate) fn schema(&self) -> Vec<String> {
        let t = &self.table;
        let mut out = vec![
            // Names and namespaces are compared byte by byte (binary strings have no
            // collation and no PAD SPACE): `A`/`a` and `a`/`a ` are different locks, and
            // ORDER BY name is byte order.
            format!(
                "CREATE TABLE IF NOT EXISTS {t} (
                    namespace   VARBINARY(64)  NOT NULL,
                    name        VARBINARY(255) NOT NULL,
                    token       VARBINARY(128) NULL,
                    owner       VARBINARY(1024) NOT NULL,
                    host        VARBINARY(1024) NOT NULL,
                    pid         BIGINT NOT NULL,
                    fence       BIGINT UNSIGNED NOT NULL,
                    acquired_at BIGINT NOT NULL,
                    expires_at  BIGINT NULL,
                    min_hold    BIGINT NULL,
                    PRIMARY KEY (namespace, name),
                    KEY {t}_expires_at (expires_at)
                ) ENGINE = InnoDB"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {t}_fence (
                    id    TINYINT NOT NULL PRIMARY KEY,
                    value BIGINT UNSIGNED NOT NULL
                ) ENGINE = InnoDB"
            ),
            format!("INSERT IGNORE INTO {t}_fence (id, value) VALUES (0, 0)"),
            format!(
                "CREATE TABLE IF NOT EXISTS {t}_reservations (
                    namespace VARBINARY(64)  NOT NULL,
                    name      VARBINARY(255) NOT NULL,
                    token     VARBINARY(128) NOT NULL,
                    until     BIGINT NOT NULL,
                    PRIMARY KEY (namespace, name),
                    KEY {t}_reservations_until (until)
                ) ENGINE = InnoDB"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {t}_meta (
                    id      TINYINT NOT NULL PRIMARY KEY,
                    version INT NOT NULL
                ) ENGINE = InnoDB"
            ),
        ];
        out.extend(self.procedures());
        out.push(format!(
            "INSERT INTO {t}_meta (id, version) VALUES (0, {SCHEMA_VERSION})
             ON DUPLICATE KEY UPDATE version = VALUES(version)"
        ));
        out
    }

    /// The stored procedures of the one-round-trip paths (acquire, release, extend): dropped
    /// and created again by the migration.
    fn procedures(&self) -> Vec<String> {
        let t = &self.table;
        let now = "(TIMESTAMPDIFF(MICROSECOND, '1970-01-01 00:00:00', UTC_TIMESTAMP(6)) + p_off)";
        vec![
            format!("DROP PROCEDURE IF EXISTS {t}_acquire"),
            // Grants (status 0, fence), or reports the holder (1), the caller's own holding
            // (2) or another waiter's reservation (3). The row is locked first (an upsert of a
            // placeholder that is deleted again if unused, never committed), then the clock is
            // read, then — only for a grant — the fence counter is locked and advanced:
            // fence = max(counter + 1, clock). The counter row stays locked until COMMIT, so
            // fences are minted in commit order.
            format!(
                "CREATE PROCEDURE {t}_acquire(
                    IN p_ns VARBINARY(64), IN p_name VARBINARY(255), IN p_token VARBINARY(128),
                    IN p_owner VARBINARY(1024), IN p_host VARBINARY(1024), IN p_pid BIGINT,
                    IN p_ttl BIGINT, IN p_min_hold BIGINT, IN p_waited BIGINT, IN p_off BIGINT)
                BEGIN
                    DECLARE v_now, v_acq, v_exp, v_mh, v_pid, v_until BIGINT;
                    DECLARE v_fence, v_counter BIGINT UNSIGNED;
                    DECLARE v_token, v_rtoken VARBINARY(128);
                    DECLARE v_owner, v_host VARBINARY(1024);
                    DECLARE v_status INT DEFAULT 0;
                    DECLARE EXIT HANDLER FOR SQLEXCEPTION BEGIN ROLLBACK; RESIGNAL; END;
                    START TRANSACTION;
                    INSERT INTO {t} (namespace, name, token, owner, host, pid, fence, acquired_at, expires_at, min_hold)
                        VALUES (p_ns, p_name, NULL, '', '', 0, 0, 0, NULL, NULL)
                        ON DUPLICATE KEY UPDATE fence = fence;
                    SELECT token, owner, host, pid, fence, acquired_at, expires_at, min_hold
                        INTO v_token, v_owner, v_host, v_pid, v_fence, v_acq, v_exp, v_mh
                        FROM {t} WHERE namespace = p_ns AND name = p_name FOR UPDATE;
                    SET v_now = {now};
                    SET v_rtoken = NULL, v_until = NULL;
                    SELECT token, until INTO v_rtoken, v_until FROM {t}_reservations
                        WHERE namespace = p_ns AND name = p_name AND until > v_now;
                    IF v_fence <> 0 AND (v_exp IS NULL OR v_exp > v_now) THEN
                        IF v_token IS NOT NULL AND v_token = p_token THEN
                            SET v_status = 2;
                        ELSE
                            SET v_status = 1;
                            IF p_waited >= 200000 AND (v_rtoken IS NULL
                                 OR (v_rtoken = p_token AND v_until - v_now < 50000)) THEN
                                INSERT INTO {t}_reservations (namespace, name, token, until)
                                    VALUES (p_ns, p_name, p_token, v_now + 100000)
                                    ON DUPLICATE KEY UPDATE token = VALUES(token), until = VALUES(until);
                            END IF;
                        END IF;
                    ELSEIF v_rtoken IS NOT NULL AND v_rtoken <> p_token THEN
                        SET v_status = 3;
                    END IF;
                    IF v_status = 0 THEN
                        SELECT value INTO v_counter FROM {t}_fence WHERE id = 0 FOR UPDATE;
                        SET v_fence = GREATEST(IFNULL(v_counter, 0) + 1, v_now);
                        INSERT INTO {t}_fence (id, value) VALUES (0, v_fence)
                            ON DUPLICATE KEY UPDATE value = VALUES(value);
                        UPDATE {t} SET token = p_token, owner = p_owner, host = p_host, pid = p_pid,
                            fence = v_fence, acquired_at = v_now,
                            expires_at = IF(p_ttl IS NULL, NULL, v_now + p_ttl), min_hold = p_min_hold
                            WHERE namespace = p_ns AND name = p_name;
                        IF v_rtoken IS NOT NULL THEN
                            DELETE FROM {t}_reservations WHERE namespace = p_ns AND name = p_name;
                        END IF;
                    ELSEIF v_fence = 0 THEN
                        DELETE FROM {t} WHERE namespace = p_ns AND name = p_name AND fence = 0;
                    END IF;
                    COMMIT;
                    SELECT v_status, v_fence, v_now, v_owner, v_host, v_pid, v_acq, v_exp, v_mh,
                           v_token IS NULL, v_until;
                END"
            ),
            format!("DROP PROCEDURE IF EXISTS {t}_release"),
            // 0 released, 1 kept by min_hold, 2 not held.
            format!(
                "CREATE PROCEDURE {t}_release(
                    IN p_ns VARBINARY(64), IN p_name VARBINARY(255), IN p_token VARBINARY(128),
                    IN p_min_hold BIGINT, IN p_off BIGINT)
                BEGIN
                    DECLARE v_now, v_acq, v_exp BIGINT;
                    DECLARE v_found INT DEFAULT 0;
                    DECLARE v_status INT DEFAULT 2;
                    DECLARE EXIT HANDLER FOR SQLEXCEPTION BEGIN ROLLBACK; RESIGNAL; END;
                    START TRANSACTION;
                    DELETE FROM {t}_reservations WHERE namespace = p_ns AND name = p_name AND token = p_token;
                    SELECT 1, acquired_at, expires_at INTO v_found, v_acq, v_exp FROM {t}
                        WHERE namespace = p_ns AND name = p_name AND token = p_token AND fence <> 0
                        FOR UPDATE;
                    SET v_now = {now};
                    IF v_found = 1 AND (v_exp IS NULL OR v_exp > v_now) THEN
                        IF p_min_hold IS NOT NULL AND v_acq + p_min_hold > v_now THEN
                            UPDATE {t} SET token = NULL, expires_at = v_acq + p_min_hold
                                WHERE namespace = p_ns AND name = p_name;
                            SET v_status = 1;
                        ELSE
                            DELETE FROM {t} WHERE namespace = p_ns AND name = p_name;
                            SET v_status = 0;
                        END IF;
                    END IF;
                    COMMIT;
                    SELECT v_status;
                END"
            ),
            format!("DROP PROCEDURE IF EXISTS {t}_extend"),
            // p_mode: 0 set, 1 add, 2 at least. 0 extended (expires_in, shortened), 1 not
            // held, 2 never expires.
            format!(
                "CREATE PROCEDURE {t}_extend(
                    IN p_ns VARBINARY(64), IN p_name VARBINARY(255), IN p_token VARBINARY(128),
                    IN p_mode INT, IN p_d BIGINT, IN p_off BIGINT)
                BEGIN
                    DECLARE v_now, v_exp, v_end BIGINT;
                    DECLARE v_found INT DEFAULT 0;
                    DECLARE v_status INT DEFAULT 1;
                    DECLARE EXIT HANDLER FOR SQLEXCEPTION BEGIN ROLLBACK; RESIGNAL; END;
                    START TRANSACTION;
                    SELECT 1, expires_at INTO v_found, v_exp FROM {t}
                        WHERE namespace = p_ns AND name = p_name AND token = p_token AND fence <> 0
                        FOR UPDATE;
                    SET v_now = {now};
                    IF v_found = 1 AND v_exp IS NULL THEN
                        SET v_status = 2;
                    ELSEIF v_found = 1 AND v_exp > v_now THEN
                        SET v_end = CASE p_mode
                            WHEN 0 THEN v_now + p_d
                            WHEN 1 THEN GREATEST(v_exp, v_now) + p_d
                            ELSE GREATEST(v_exp, v_now + p_d) END;
                        UPDATE {t} SET expires_at = v_end WHERE namespace = p_ns AND name = p_name;
                        SET v_status = 0;
                    END IF;
                    COMMIT;
                    SELECT v_status, v_end - v_now, v_end < v_exp;
                END"
            ),
        ]
    }
}

/// `prefix` as a `LIKE` pattern escaped with `!`, matching names that start with it.
pub(crate) fn like_prefix(prefix: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(prefix.len() + 1);
    for b in prefix.bytes() {
        if matches!(b, b'!' | b'%' | b'_') {
            out.push(b'!');
        }
        out.push(b);
    }
    out.push(b'%');
    out
}
