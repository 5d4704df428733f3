//! The locksmith conformance suite: one list of cases, run against every store.
//!
//! Each case is an `async fn(Ctx)` in [`cases`] that panics on failure. A store's test file
//! expands the whole list with [`conformance_suite!`] into one test per case, named
//! `conformance::<store>::<case>`, plus `conformance::<store>::capabilities_declared`, which
//! asserts that the store reports exactly the capabilities its test file declares — so a
//! case gated on a capability is never skipped by accident.
//!
//! ```ignore
//! // crates/locksmith-testkit/tests/conformance_memory.rs
//! locksmith_testkit::conformance_suite!(memory, locksmith_testkit::targets::memory());
//! ```
//!
//! Stores that need a server get it from the test kit (ephemeral, on a temp dir, killed on
//! drop) or from `LOCKSMITH_TEST_<STORE>_URL`. Where the server binary is missing the
//! store's tests print `SKIPPED` loudly — and fail when `LOCKSMITH_TEST_REQUIRE_SERVERS=1`,
//! which CI sets.

#![warn(missing_docs)]

use std::any::Any;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use locksmith::{Capabilities, Locksmith};

pub mod cases;
pub mod targets;

/// The environment variable that turns a missing server from SKIPPED into a failure.
pub const REQUIRE_SERVERS_ENV: &str = "LOCKSMITH_TEST_REQUIRE_SERVERS";

/// Whether missing servers must fail the run (`LOCKSMITH_TEST_REQUIRE_SERVERS=1`).
pub fn require_servers() -> bool {
    std::env::var(REQUIRE_SERVERS_ENV).is_ok_and(|v| v == "1")
}

/// Reports a store whose tests cannot run here: SKIPPED on stderr, or a panic when servers
/// are required.
pub fn skip_store(store: &str, why: &str) {
    if require_servers() {
        panic!("{store} tests cannot run: {why} ({REQUIRE_SERVERS_ENV}=1 forbids skipping)");
    }
    eprintln!("SKIPPED: {store} tests: {why} (set {REQUIRE_SERVERS_ENV}=1 to make this fail)");
}

/// A boxed fault switch: `true` makes the store unreachable, `false` reachable again.
pub type FaultSwitch = Arc<dyn Fn(bool) + Send + Sync>;

/// A store under test.
pub struct Target {
    /// The store's name in test names, e.g. `memory`.
    pub store: &'static str,
    /// Its URL without `?namespace=`.
    pub base_url: String,
    /// The capabilities its test file declares.
    pub declared: Capabilities,
    /// How to make the store unreachable, where the test kit can.
    pub faults: Option<FaultSwitch>,
    /// Keeps a server (or other resource) alive for the test's duration.
    pub keep_alive: Option<Box<dyn Any + Send + Sync>>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("store", &self.store)
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

/// What a case gets: a client in a fresh namespace, and ways to make more.
#[derive(Clone, Debug)]
pub struct Ctx {
    /// A client in this case's own namespace.
    pub lm: Locksmith,
    target: Arc<Target>,
    namespace: String,
}

impl Ctx {
    /// A new, independent client on the same store and namespace (as another part of the
    /// program, or another process, would have).
    pub async fn client(&self) -> Locksmith {
        self.client_in(&self.namespace).await
    }

    /// A new client on the same store in another namespace.
    pub async fn client_in(&self, namespace: &str) -> Locksmith {
        let sep = if self.target.base_url.contains('?') {
            '&'
        } else {
            '?'
        };
        let url = format!("{}{sep}namespace={namespace}", self.target.base_url);
        Locksmith::connect(&url)
            .await
            .unwrap_or_else(|e| panic!("connect {url}: {e}"))
    }

    /// This case's namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The store's declared capabilities.
    pub fn caps(&self) -> Capabilities {
        self.target.declared
    }

    /// The store's name.
    pub fn store(&self) -> &'static str {
        self.target.store
    }

    /// Makes the store unreachable (`true`) or reachable; `false` when the test kit cannot
    /// do that for this store.
    pub fn set_offline(&self, offline: bool) -> bool {
        match &self.target.faults {
            Some(switch) => {
                switch(offline);
                true
            }
            None => false,
        }
    }

    /// Says SKIPPED for a case that needs a capability this store lacks; `true` to go on.
    pub fn needs(&self, have: bool, capability: &str) -> bool {
        if !have {
            eprintln!(
                "SKIPPED: conformance::{}: the store lacks `{capability}` (declared)",
                self.target.store
            );
        }
        have
    }
}

/// A boxed case future.
pub type CaseFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Runs one case against a target (used by [`conformance_suite!`]).
pub async fn run_case<T>(case: &str, target: T, f: fn(Ctx) -> CaseFuture)
where
    T: Future<Output = Option<Target>>,
{
    let Some(target) = target.await else {
        return;
    };
    let namespace = format!(
        "t-{}-{}",
        case.chars().take(24).collect::<String>(),
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let target = Arc::new(target);
    let ctx = Ctx {
        lm: Locksmith::connect(&format!(
            "{}{}namespace={namespace}",
            target.base_url,
            if target.base_url.contains('?') {
                '&'
            } else {
                '?'
            }
        ))
        .await
        .unwrap_or_else(|e| panic!("connect {}: {e}", target.base_url)),
        target: target.clone(),
        namespace,
    };
    // A case that hangs is a failure, not a stuck CI run.
    tokio::time::timeout(Duration::from_secs(60), f(ctx))
        .await
        .unwrap_or_else(|_| panic!("conformance case {case} did not finish within 60 s"));
}

/// Asserts that a target's store reports exactly its declared capabilities.
pub async fn check_declared<T>(target: T)
where
    T: Future<Output = Option<Target>>,
{
    let Some(target) = target.await else {
        return;
    };
    let lm = Locksmith::connect(&target.base_url)
        .await
        .unwrap_or_else(|e| panic!("connect {}: {e}", target.base_url));
    assert_eq!(
        lm.capabilities(),
        target.declared,
        "the {} store's capabilities differ from those its test file declares",
        target.store
    );
    assert_eq!(lm.store_kind(), target.store);
}

/// Expands the whole conformance suite for one store: one test per case, named
/// `conformance::<store>::<case>`, and `conformance::<store>::capabilities_declared`.
///
/// `$target` is an expression evaluated anew for every test, yielding a
/// `Future<Output = Option<Target>>` (`None`: the store is skipped here).
#[macro_export]
macro_rules! conformance_suite {
    ($store:ident, $target:expr) => {
        mod conformance {
            pub mod $store {
                #[allow(unused_imports)]
                use super::super::*;

                $crate::for_each_case!($crate::__emit_cases, $target);

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn capabilities_declared() {
                    $crate::check_declared($target).await;
                }
            }
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __emit_cases {
    ($target:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                $crate::run_case(stringify!($case), $target, |ctx| {
                    ::std::boxed::Box::pin($crate::cases::$case(ctx))
                })
                .await;
            }
        )*
    };
}

/// Calls `$m!($args; case, case, …)` with every case of the suite. The one list of cases.
#[macro_export]
macro_rules! for_each_case {
    ($m:path, $($args:tt)*) => {
        $m!($($args)*;
            // acquiring and contention
            acquire_and_release,
            try_on_held_lock,
            wait_until_release,
            wait_no_reports_holder,
            wait_for_deadline_honoured,
            wait_for_not_restarted_by_wakeups,
            wait_for_shorter_than_round_trip,
            wait_survives_store_errors,
            inspect_shows_holder_without_token,
            // ownership
            double_release_not_held,
            foreign_token_not_held,
            already_held_via_token,
            resume_reattaches,
            leak_keeps_lock_past_drop,
            drop_releases,
            // leases
            takeover_after_expiry,
            expired_row_inspect,
            extend_prevents_expiry,
            extend_may_shorten,
            renew_by_adds,
            renew_by_never_shortens,
            renew_by_survives_auto_renew,
            renew_by_capped_at_max_hold,
            never_expiring_lock,
            min_hold_keeps_lock,
            min_hold_passed_releases,
            release_now_ignores_min_hold,
            // renewal and loss
            auto_renew_holds_past_ttl,
            lost_when_cleared,
            lost_at_deadline_without_renewal,
            lost_when_store_unreachable,
            lost_at_max_hold,
            lost_never_after_clean_release,
            lease_changes_serialised,
            made_permanent_while_renewing,
            cancelled_release_still_releases,
            // run and once
            run_returns_value_and_releases,
            run_lost_drops_body,
            run_releases_on_panic,
            run_lost_at_deadline_reports_expired,
            once_none_when_held,
            once_honours_explicit_wait,
            // multi-lock and admin
            acquire_all_all_or_nothing,
            acquire_all_waits_for_all,
            set_locks_statuses_and_counts,
            set_locks_skip_flags,
            set_locks_fail_rolls_back,
            list_prefix_and_paging,
            list_expired_filter,
            clear_reports_and_wakes,
            reset_all_counts_and_wakes,
            purge_expired_removes_only_expired,
            namespaces_isolated,
            // bad input
            invalid_names,
            invalid_options,
            // concurrency and cancellation
            counter_no_lost_updates,
            fences_strictly_increase,
            fifo_order_of_waiters,
            cancel_while_waiting,
            cancel_with_request_in_flight
        );
    };
}

macro_rules! __names {
    (; $($case:ident),* $(,)?) => {
        /// The names of every case, in suite order.
        pub const CASE_NAMES: &[&str] = &[$(stringify!($case)),*];
    };
}
for_each_case!(__names,);
