//! The conformance suite on the django-lockmgr layout (`?layout=django-lockmgr`) of the
//! PostgreSQL store: a server of its own per case, with Django's `lockmgr_lock` table made
//! from the test kit's copy of django-lockmgr's migrations (the layout has no namespaces).

#![cfg(feature = "postgres")]

locksmith_testkit::conformance_suite!(
    postgres_lockmgr,
    locksmith_testkit::servers::postgres::lockmgr_target()
);
