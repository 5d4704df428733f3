//! The django-lockmgr compat layout (`?layout=django-lockmgr`) of the SQL stores: locks kept
//! in the `lockmgr_lock` table of a running Django project, so that a Rust service or a shell
//! script and the project's Python code (the `lockmgr` package, 2.0.0) exclude each other on
//! the same names. What this module holds is what the SQLite, PostgreSQL and MySQL versions
//! of the layout share; each store's own module speaks its SQL.
//!
//! # The tables
//!
//! `lockmgr_lock` is Django's table, made by `python manage.py migrate lockmgr`; locksmith
//! never creates, alters or drops it, and refuses to open the layout when it is missing
//! (the error names the migrate command). Its columns (SEEDS.md §7.3): `name varchar(100)`
//! primary key; `locked_by varchar(100) NULL`; `lock_process integer NULL`;
//! `locked_until` datetime NULL (NULL = never expires); `created_at`, `updated_at` datetime
//! NOT NULL with no defaults in the database. Rows are read and written by column name.
//!
//! The table has no token column, so locksmith keeps a side table of its own,
//! [`SIDE_TABLE`], created when missing: one row per name that locksmith granted, holding
//! the copies of `created_at`, `locked_by` and `lock_process` it wrote into Django's row,
//! the owner token, the holder's host name and the lock's `min_hold`. Django ignores tables
//! it has no model for. A lock row belongs to a locksmith token when its side row names the
//! same `created_at`, `locked_by` and `lock_process` (NULL-safe): a Python peer that deletes
//! an expired row and inserts its own writes a new `created_at`, and the side row no longer
//! matches. A side row whose lock row is gone or no longer matches is garbage, removed by
//! the next write that meets it (and swept with the expired rows). Django saves a row back
//! (`renew_lock` saves every column) with `str(datetime)`, which drops a fraction of
//! `.000000`: compare `created_at` as a time, or accept that spelling (SQLite does).
//!
//! A store whose waiters in other processes poll may keep a second table of its own for
//! the native store's cross-process fairness reservations (SQLite:
//! `locksmith_lockmgr_reservation`, name → token and end); Python peers ignore it.
//!
//! # What a row says
//!
//! - A lock row with a matching side row that has a token: held by that locksmith token;
//!   owner = `locked_by`, pid = `lock_process`, host and `min_hold` from the side row.
//! - A lock row with a matching side row without a token: released by locksmith before its
//!   `min_hold` passed; nobody holds it, and it blocks everyone until `locked_until`
//!   (`created_at + min_hold`), which Python peers respect as an ordinary lock.
//! - Any other lock row: held by a Python peer (or written by hand). No locksmith token
//!   holds it, so locksmith never releases, extends or renews it — except through the admin
//!   operations that act on any holder (`clear`, `reset_all`, `set_locks` renewing, just as
//!   django-lockmgr's own `set_lock` does). Owner = `locked_by` (NULL: none), pid =
//!   `lock_process` (NULL: none), host unknown.
//!
//! Locksmith writes `locked_by` = the holder's owner label (at most 100 characters, cut at a
//! character boundary), `lock_process` = its process id, `created_at` = `updated_at` = the
//! grant time, `locked_until` = grant time + TTL (NULL for a lock that never expires). An
//! extension writes `locked_until` and `updated_at`, and never moves `created_at`.
//!
//! # Time
//!
//! django-lockmgr decides expiry with each Python process's own clock (`timezone.now()`),
//! and every Python call first deletes every row whose `locked_until` is before that. This
//! layout keeps locksmith's rule that the store's clock decides (DESIGN §1): on PostgreSQL
//! `clock_timestamp()`, on MySQL `UTC_TIMESTAMP(6)`, on SQLite this machine's clock (which is
//! also the clock of every Python process on the machine that shares the file). Times are
//! written as Django writes them with `USE_TZ = True`: `timestamptz` on PostgreSQL, naive UTC
//! `datetime(6)` on MySQL, naive UTC text `YYYY-MM-DD HH:MM:SS.ffffff` on SQLite
//! ([`sqlite_text`], [`parse_sqlite_text`]). A Python peer whose clock runs ahead of the
//! database's sees locksmith's leases end early and deletes them (locksmith's guard then
//! reports the lock lost); one that runs behind takes expired locks late. Keep the Django
//! hosts on NTP, or make their `timezone.now()` read the database's clock; projects with
//! `USE_TZ = False` write local time and cannot share this table with locksmith.
//!
//! # What the layout lacks
//!
//! [`capabilities`]: no fencing (Python holders carry no fence, so a fence cannot protect a
//! resource from them; grants return fence 0), no namespaces (one table), names of at most
//! [`MAX_NAME_CHARS`] (Django's `varchar(100)`; the layout counts bytes, so a name of 100
//! bytes always fits), and waiters in other processes poll, since Python releases notify
//! nobody.

use std::time::{Duration, SystemTime};

use crate::error::{Error, Result};
use crate::name::Namespace;
use crate::store::Capabilities;

/// The `?layout=` value that selects this layout.
pub(crate) const LAYOUT: &str = "django-lockmgr";

/// Django's table.
pub(crate) const TABLE: &str = "lockmgr_lock";

/// locksmith's side table: one row per name it granted (see the module docs).
pub(crate) const SIDE_TABLE: &str = "locksmith_lockmgr_owner";

/// Django's `varchar(100)`.
pub(crate) const MAX_NAME_CHARS: usize = 100;

/// How often (at most) a waiter re-reads a lock that a Python peer may release without a
/// word: the native SQL stores' polling cap. 100 ms was tried first; under a loaded 2-core
/// machine a polling waiter then missed its reservation windows often enough to wait 2.3 s
/// behind two churning processes (conformance `polling_waiter_not_starved`, bound 2 s).
pub(crate) const POLL_INTERVAL: Duration = Duration::from_millis(25);

/// What every version of the layout declares; `ttl_granularity` is the column's (1 µs).
pub(crate) fn capabilities() -> Capabilities {
    let mut caps = Capabilities::NONE;
    caps.fencing = false;
    caps.persistent = true;
    caps.cross_process = true;
    caps.notify = true;
    caps.poll_interval = Some(POLL_INTERVAL);
    caps.atomic_multi = true;
    caps.never_expire = true;
    caps.expired_visible = true;
    caps.holder_metadata = true;
    caps.namespaces = false;
    caps.min_hold = true;
    caps.ordered_list = true;
    caps.max_name_len = MAX_NAME_CHARS;
    caps.ttl_granularity = Duration::from_micros(1);
    caps
}

/// Refuses a namespace other than the default: the layout has one table.
pub(crate) fn check_namespace(ns: &Namespace) -> Result<()> {
    if ns.as_str().is_empty() {
        Ok(())
    } else {
        Err(Error::invalid_option(
            "namespace",
            "layout=django-lockmgr has no namespaces (django-lockmgr keeps one table) — drop ?namespace=, or give each group of services its own database",
        ))
    }
}

/// The error for a URL that asks the layout for something it does not have.
pub(crate) fn url_refuses(shown: &str, what: &str) -> Error {
    Error::config(format!("store URL {shown:?}: layout=django-lockmgr {what}"))
}

/// The error for a database without Django's table.
pub(crate) fn table_missing(shown: &str) -> Error {
    Error::config(format!(
        "store URL {shown:?}: layout=django-lockmgr needs Django's table {TABLE}, which this database lacks — run `python manage.py migrate lockmgr` in the Django project first (locksmith never creates Django's tables)"
    ))
}

/// `owner` as `locked_by` holds it: at most 100 characters, cut at a character boundary.
pub(crate) fn locked_by(owner: &str) -> &str {
    match owner.char_indices().nth(MAX_NAME_CHARS) {
        Some((at, _)) => &owner[..at],
        None => owner,
    }
}

/// `t` as Django writes a datetime into SQLite with `USE_TZ = True`: naive UTC text with six
/// fractional digits, `YYYY-MM-DD HH:MM:SS.ffffff` (text order is time order).
pub(crate) fn sqlite_text(t: SystemTime) -> String {
    let mut s = humantime::format_rfc3339_micros(t).to_string();
    s.pop(); // the trailing Z
    s.replace('T', " ")
}

/// Reads a SQLite datetime as Django (or a hand) wrote it: `YYYY-MM-DD HH:MM:SS` with or
/// without a fraction (Django drops `.000000`), `T` or a space between date and time, and an
/// optional `Z` or `+00:00`. Other offsets, and anything else, are `None`: the caller decides
/// what an unreadable time means (never "expired": an unreadable row is never taken over).
pub(crate) fn parse_sqlite_text(text: &str) -> Option<SystemTime> {
    let t = text.trim();
    let t = t
        .strip_suffix("+00:00")
        .or_else(|| t.strip_suffix('Z'))
        .unwrap_or(t);
    if t.len() < 19 {
        return None;
    }
    humantime::parse_rfc3339_weak(t).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_text_round_trips_as_django_writes_it() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_micros(1_796_212_345_123_456);
        let s = sqlite_text(t);
        assert_eq!(s, "2026-12-02 11:52:25.123456");
        assert_eq!(parse_sqlite_text(&s), Some(t));
        let whole = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_212_345);
        assert_eq!(sqlite_text(whole), "2026-12-02 11:52:25.000000");
        for django in [
            "2026-12-02 11:52:25",
            "2026-12-02T11:52:25",
            "2026-12-02 11:52:25Z",
            "2026-12-02 11:52:25+00:00",
            "2026-12-02 11:52:25.000000",
        ] {
            assert_eq!(parse_sqlite_text(django), Some(whole), "{django}");
        }
        for bad in [
            "",
            "soon",
            "2026-12-02",
            "2026-12-02 11:52:25+02:00",
            "2026-13-02 11:52:25",
        ] {
            assert_eq!(parse_sqlite_text(bad), None, "{bad}");
        }
    }

    #[test]
    fn locked_by_cuts_at_100_characters() {
        assert_eq!(locked_by("worker"), "worker");
        let long = "é".repeat(150);
        assert_eq!(locked_by(&long).chars().count(), 100);
        assert_eq!(locked_by(&"a".repeat(100)).len(), 100);
    }

    #[test]
    fn only_the_default_namespace() {
        assert!(check_namespace(&Namespace::default()).is_ok());
    }
}
