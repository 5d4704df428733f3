//! The conformance suite on the python-redis-lock layout (`?layout=python-redis-lock`) of
//! the Redis store, on a fresh single node per case (the layout has no namespaces).

#![cfg(feature = "redis")]

locksmith_testkit::conformance_suite!(redis_prl, locksmith_testkit::servers::redis::prl_target());
