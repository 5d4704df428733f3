//! The conformance suite on the MySQL/MariaDB store's django-lockmgr layout
//! (`?layout=django-lockmgr`): a fresh MariaDB server per test with Django's `lockmgr_lock`
//! table, made as `python manage.py migrate lockmgr` makes it.
#![cfg(feature = "mysql")]

locksmith_testkit::conformance_suite!(
    mysql_lockmgr,
    locksmith_testkit::servers::mariadb::lockmgr_target()
);
