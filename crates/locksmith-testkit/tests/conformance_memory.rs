//! The conformance suite on the in-process store.

locksmith_testkit::conformance_suite!(memory, locksmith_testkit::targets::memory());
