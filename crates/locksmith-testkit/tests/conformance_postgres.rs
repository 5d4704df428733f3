//! The conformance suite on the PostgreSQL store: a server of its own per test (a copy of
//! one `initdb` template), started by the test kit; its fault switch freezes the server
//! (SIGSTOP) and its restart hook kills and restarts it.

#![cfg(feature = "postgres")]

locksmith_testkit::conformance_suite!(postgres, locksmith_testkit::servers::postgres::target());
