//! The conformance suite on the django-lockmgr layout of the SQLite store
//! (`?layout=django-lockmgr`): a fresh Django database per case, holding `lockmgr_lock` as
//! Django's migration makes it (the layout has no namespaces).

locksmith_testkit::conformance_suite!(sqlite_lockmgr, locksmith_testkit::targets::sqlite_lockmgr());
