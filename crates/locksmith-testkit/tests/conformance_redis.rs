//! The conformance suite on a single Redis node started by the test kit (`appendonly yes`,
//! `appendfsync always`; a fresh server per test), or on `LOCKSMITH_TEST_REDIS_URL`.

#![cfg(feature = "redis")]

locksmith_testkit::conformance_suite!(redis, locksmith_testkit::servers::redis::target());
