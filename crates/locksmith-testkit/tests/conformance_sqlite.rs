//! The conformance suite on the embedded SQLite store (a fresh file per test).

locksmith_testkit::conformance_suite!(sqlite, locksmith_testkit::targets::sqlite());
