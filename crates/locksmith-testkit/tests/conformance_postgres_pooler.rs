//! The conformance suite on the PostgreSQL store through a PgBouncer in transaction mode
//! (every transaction may run on another server connection), with the store's listener
//! connected to the server itself (`?listen=`): the store keeps no session state on its
//! pooled connections. Both servers are the test kit's own; the fault switch freezes the
//! server behind the pooler and the restart hook restarts it.

#![cfg(feature = "postgres")]

locksmith_testkit::conformance_suite!(
    postgres_pooler,
    locksmith_testkit::servers::pgbouncer::target()
);
