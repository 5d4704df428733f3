//! The conformance suite on the in-process store with a simulated network round trip.

locksmith_testkit::conformance_suite!(memory_latency, locksmith_testkit::targets::memory_latency());
