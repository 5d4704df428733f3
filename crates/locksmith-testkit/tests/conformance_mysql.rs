//! The conformance suite on the MySQL/MariaDB store: a fresh MariaDB server per test
//! (started by the test kit from Debian's binaries), or `LOCKSMITH_TEST_MYSQL_URL`.
#![cfg(feature = "mysql")]

locksmith_testkit::conformance_suite!(mysql, locksmith_testkit::servers::mariadb::target());
