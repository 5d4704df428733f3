//! django-lockmgr's table as Django creates it, for the conformance targets of the
//! django-lockmgr layout (`?layout=django-lockmgr`). locksmith never creates Django's table;
//! a Django project makes it with `python manage.py migrate lockmgr`, and these statements
//! are what that migration (0001 + 0002, Django 5.2) runs, as `sqlmigrate` prints them.
//! The interop tests run the real migration instead.

use std::time::Duration;

use locksmith::Capabilities;

/// SQLite: 0001 makes the table; 0002 rebuilds it with `locked_until` nullable (and moved to
/// the first column, which is why the layout names columns and never counts them).
pub const SQLITE: &[&str] = &[
    r#"CREATE TABLE "lockmgr_lock" ("locked_until" datetime NULL, "name" varchar(100) NOT NULL PRIMARY KEY, "locked_by" varchar(100) NULL, "lock_process" integer NULL, "created_at" datetime NOT NULL, "updated_at" datetime NOT NULL)"#,
];

/// PostgreSQL: `timestamp with time zone` columns and the `varchar_pattern_ops` index.
pub const POSTGRES: &[&str] = &[
    r#"CREATE TABLE "lockmgr_lock" ("name" varchar(100) NOT NULL PRIMARY KEY, "locked_by" varchar(100) NULL, "lock_process" integer NULL, "locked_until" timestamp with time zone NOT NULL, "created_at" timestamp with time zone NOT NULL, "updated_at" timestamp with time zone NOT NULL)"#,
    r#"CREATE INDEX "lockmgr_lock_name_58da10a7_like" ON "lockmgr_lock" ("name" varchar_pattern_ops)"#,
    r#"ALTER TABLE "lockmgr_lock" ALTER COLUMN "locked_until" DROP NOT NULL"#,
];

/// MySQL/MariaDB: naive `datetime(6)` columns.
pub const MYSQL: &[&str] = &[
    "CREATE TABLE `lockmgr_lock` (`name` varchar(100) NOT NULL PRIMARY KEY, `locked_by` varchar(100) NULL, `lock_process` integer NULL, `locked_until` datetime(6) NOT NULL, `created_at` datetime(6) NOT NULL, `updated_at` datetime(6) NOT NULL)",
    "ALTER TABLE `lockmgr_lock` MODIFY `locked_until` datetime(6) NULL",
];

/// What every version of the layout must declare: no fencing or namespaces, names of at
/// most 100 bytes, µs leases, waiters in other processes polling every 25 ms at most (Python
/// releases notify nobody), everything else as the native SQL stores.
pub fn capabilities() -> Capabilities {
    let mut caps = Capabilities::NONE;
    caps.persistent = true;
    caps.cross_process = true;
    caps.notify = true;
    caps.poll_interval = Some(Duration::from_millis(25));
    caps.atomic_multi = true;
    caps.never_expire = true;
    caps.expired_visible = true;
    caps.holder_metadata = true;
    caps.min_hold = true;
    caps.ordered_list = true;
    caps.max_name_len = 100;
    caps.ttl_granularity = Duration::from_micros(1);
    caps
}
