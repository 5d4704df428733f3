//! The conformance suite on a three-master Redis Cluster started by the test kit
//! (`redis-server --cluster-enabled yes` ×3 + `redis-cli --cluster create`; a fresh cluster
//! per test).

#![cfg(feature = "redis")]

locksmith_testkit::conformance_suite!(
    redis_cluster,
    locksmith_testkit::servers::redis::cluster_target()
);
