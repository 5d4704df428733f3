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
//! Every case declares the capabilities it needs with [`Ctx::requires`] (see [`Cap`]) and
//! says `SKIPPED` on a store that lacks one; parts of a case that only some stores can show
//! (holder metadata, fences) are checked where the store declares them.
//!
//! What the suite holds a store to, beyond the single-client basics:
//!
//! - **atomicity where the waiting queue cannot help**: clients on separate connections,
//!   and client processes, spinning on `try_acquire` around a non-atomic counter; racing
//!   takeovers of one expired lock ([`cases::spin_try_acquire_no_lost_updates`],
//!   [`cases::spin_try_acquire_across_processes`],
//!   [`cases::expired_takeover_race_one_winner`]);
//! - **cross-process behaviour** through the `locksmith-test-helper` binary
//!   ([`Ctx::spawn_helper`], gated on `cross_process`) and a store restart
//!   ([`Target::restart`], gated on `persistent`);
//! - **unknown outcomes**: a [`Faulty`] wrapper makes calls fail before applying, apply
//!   and then fail, hang, or answer late ([`faults`]).
//!
//! The suite's teeth are proven in `tests/teeth.rs`: the test-only stores of [`teeth`] (a
//! non-atomic GET-then-SET store, a store that ignores `min_hold`) must fail it.
//!
//! Stores that need a server get it from the test kit (ephemeral, on a temp dir, killed on
//! drop) or from `LOCKSMITH_TEST_<STORE>_URL`. Where the server binary is missing the
//! store's tests print `SKIPPED` loudly — and fail when `LOCKSMITH_TEST_REQUIRE_SERVERS=1`,
//! which CI sets.

#![warn(missing_docs)]

use std::any::Any;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use locksmith::{Capabilities, Locksmith};

pub mod cases;
pub mod faults;
pub mod lockmgr;
pub mod process;
pub mod servers;
pub mod targets;
pub mod teeth;

pub use faults::{FaultMode, Faults, Faulty, Op};
pub use process::Helper;

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

/// A boxed future, as the hooks of a [`Target`] return.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Restarts a target's store (see [`Target::restart`]).
pub type RestartHook = Arc<dyn Fn() -> BoxFuture<()> + Send + Sync>;

/// Shifts a target's store clock by this many microseconds, in this process (see
/// [`Target::step_clock`]).
pub type ClockHook = Arc<dyn Fn(i64) + Send + Sync>;

/// Builds a client of a target on a namespace, for stores that are not reached by URL
/// alone (see [`Target::connector`]).
pub type Connector = Arc<dyn Fn(String) -> BoxFuture<Locksmith> + Send + Sync>;

/// A capability a case may need; see [`Ctx::requires`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cap {
    /// [`Capabilities::fencing`].
    Fencing,
    /// [`Capabilities::persistent`].
    Persistent,
    /// [`Capabilities::cross_process`].
    CrossProcess,
    /// [`Capabilities::notify`].
    Notify,
    /// [`Capabilities::poll_interval`] is set (waiters in other processes poll).
    Polling,
    /// [`Capabilities::atomic_multi`].
    AtomicMulti,
    /// [`Capabilities::never_expire`].
    NeverExpire,
    /// [`Capabilities::expired_visible`].
    ExpiredVisible,
    /// [`Capabilities::holder_metadata`].
    HolderMetadata,
    /// [`Capabilities::namespaces`].
    Namespaces,
    /// [`Capabilities::min_hold`].
    MinHold,
    /// [`Capabilities::ordered_list`].
    OrderedList,
    /// [`Capabilities::pushed_grants`].
    PushedGrants,
}

impl Cap {
    /// Whether `caps` has this capability.
    pub fn in_set(self, caps: &Capabilities) -> bool {
        match self {
            Cap::Fencing => caps.fencing,
            Cap::Persistent => caps.persistent,
            Cap::CrossProcess => caps.cross_process,
            Cap::Notify => caps.notify,
            Cap::Polling => caps.poll_interval.is_some(),
            Cap::AtomicMulti => caps.atomic_multi,
            Cap::NeverExpire => caps.never_expire,
            Cap::ExpiredVisible => caps.expired_visible,
            Cap::HolderMetadata => caps.holder_metadata,
            Cap::Namespaces => caps.namespaces,
            Cap::MinHold => caps.min_hold,
            Cap::OrderedList => caps.ordered_list,
            Cap::PushedGrants => caps.pushed_grants,
        }
    }

    /// The field's name in [`Capabilities`].
    pub fn field(self) -> &'static str {
        match self {
            Cap::Fencing => "fencing",
            Cap::Persistent => "persistent",
            Cap::CrossProcess => "cross_process",
            Cap::Notify => "notify",
            Cap::Polling => "poll_interval",
            Cap::AtomicMulti => "atomic_multi",
            Cap::NeverExpire => "never_expire",
            Cap::ExpiredVisible => "expired_visible",
            Cap::HolderMetadata => "holder_metadata",
            Cap::Namespaces => "namespaces",
            Cap::MinHold => "min_hold",
            Cap::OrderedList => "ordered_list",
            Cap::PushedGrants => "pushed_grants",
        }
    }
}

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
    /// Restarts the store, for `persistent` stores: a case calls it once every client
    /// process it spawned has exited, and connects anew afterwards. `None`: the store
    /// cannot be restarted here (cases that need it say SKIPPED).
    pub restart: Option<RestartHook>,
    /// Builds clients instead of `Locksmith::connect(base_url?namespace=…)`: for test-only
    /// stores that are wrapped in-process (see [`teeth`]). Such a target has no URL that
    /// another process could use, so it must not declare `cross_process`.
    pub connector: Option<Connector>,
    /// Steps the store's clock (expiry and fence clock) by signed microseconds, where the
    /// store has a test hook for it; cases that need it say SKIPPED without.
    pub step_clock: Option<ClockHook>,
}

impl Target {
    /// A target reached by `base_url`, with nothing else set.
    pub fn new(store: &'static str, base_url: String, declared: Capabilities) -> Target {
        Target {
            store,
            base_url,
            declared,
            faults: None,
            keep_alive: None,
            restart: None,
            connector: None,
            step_clock: None,
        }
    }
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
    helper: Option<PathBuf>,
}

/// `url` with `param` (`key=value`) appended to its query.
fn with_param(url: &str, param: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{param}")
}

/// `url` in `namespace`; the empty (default) namespace adds nothing, so stores without
/// namespaces (`Capabilities::namespaces` false) are reached by their plain URL.
fn with_namespace(url: &str, namespace: &str) -> String {
    if namespace.is_empty() {
        url.to_string()
    } else {
        with_param(url, &format!("namespace={namespace}"))
    }
}

/// A client of `target` in `namespace`.
async fn client_of(target: &Target, namespace: &str) -> Locksmith {
    if let Some(connect) = &target.connector {
        return connect(namespace.to_string()).await;
    }
    let url = with_namespace(&target.base_url, namespace);
    Locksmith::connect(&url)
        .await
        .unwrap_or_else(|e| panic!("connect {url}: {e}"))
}

impl Ctx {
    /// A new, independent client on the same store and namespace (as another part of the
    /// program, or another process, would have).
    pub async fn client(&self) -> Locksmith {
        self.client_in(&self.namespace).await
    }

    /// A new client on the same store in another namespace.
    pub async fn client_in(&self, namespace: &str) -> Locksmith {
        client_of(&self.target, namespace).await
    }

    /// A new client on this case's namespace whose URL also carries `params` (e.g.
    /// `timeout=200ms`).
    pub async fn client_with(&self, params: &str) -> Locksmith {
        let url = with_param(&self.url(), params);
        Locksmith::connect(&url)
            .await
            .unwrap_or_else(|e| panic!("connect {url}: {e}"))
    }

    /// A new client on this case's namespace whose store calls go through a fault
    /// injector; the [`Faults`] handle switches its modes. It shares this process's waiting
    /// queue with the case's other clients (same store identity).
    pub async fn faulty_client(&self) -> (Locksmith, Faults) {
        let base = self.client().await;
        let (store, faults) = Faulty::wrap(base.store());
        let ns = locksmith::Namespace::new(&self.namespace).expect("namespace");
        (Locksmith::with_store(store, ns, &self.url()), faults)
    }

    /// The URL of this case's namespace on the store (what another process connects to).
    pub fn url(&self) -> String {
        self.url_in(&self.namespace)
    }

    /// The URL of `namespace` on the store.
    pub fn url_in(&self, namespace: &str) -> String {
        with_namespace(&self.target.base_url, namespace)
    }

    /// Starts the helper binary (`locksmith-test-helper`) with `args`, as a client process
    /// of this store: pass [`url`](Ctx::url) in `args`. Panics when the helper binary is not
    /// built (cases that spawn processes are gated on `cross_process`).
    pub fn spawn_helper(&self, args: &[&str]) -> Helper {
        let path = self
            .helper
            .clone()
            .or_else(process::find_helper)
            .expect("the locksmith-test-helper binary is not built next to this test");
        Helper::spawn(&path, args)
    }

    /// Restarts the store (every client process this case spawned must have exited);
    /// `false` when the target cannot.
    pub async fn restart(&self) -> bool {
        match &self.target.restart {
            Some(hook) => {
                hook().await;
                true
            }
            None => false,
        }
    }

    /// Steps the store's clock by `micros` (negative: back); `false` when the target
    /// cannot.
    pub fn step_clock(&self, micros: i64) -> bool {
        match &self.target.step_clock {
            Some(hook) => {
                hook(micros);
                true
            }
            None => false,
        }
    }

    /// Says SKIPPED, naming what is missing, unless the store declares every capability in
    /// `caps`; `true` to go on.
    pub fn requires(&self, caps: &[Cap]) -> bool {
        let declared = self.target.declared;
        let missing: Vec<&str> = caps
            .iter()
            .filter(|c| !c.in_set(&declared))
            .map(|c| c.field())
            .collect();
        if !missing.is_empty() {
            eprintln!(
                "SKIPPED: conformance::{}: the store lacks {} (declared)",
                self.target.store,
                missing.join(", ")
            );
        }
        missing.is_empty()
    }

    /// This case's namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The store's declared capabilities.
    pub fn caps(&self) -> Capabilities {
        self.target.declared
    }

    /// `n` milliseconds, scaled for a store with a coarse `ttl_granularity` (×10 for whole
    /// seconds), so a case's short leases — and the sleeps around them — keep their meaning
    /// once the core has rounded the TTLs up.
    pub fn ms(&self, n: u64) -> Duration {
        let scale = (self.target.declared.ttl_granularity.as_millis() / 100).max(1);
        Duration::from_millis(n) * u32::try_from(scale).unwrap_or(u32::MAX)
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

/// Runs one case against a target (used by [`conformance_suite!`]). `helper` is the
/// path of the `locksmith-test-helper` binary where the caller knows it
/// (`option_env!("CARGO_BIN_EXE_locksmith-test-helper")`); otherwise it is looked for next
/// to the test binary.
pub async fn run_case<T>(case: &str, target: T, helper: Option<&str>, f: fn(Ctx) -> CaseFuture)
where
    T: Future<Output = Option<Target>>,
{
    log_if_asked();
    let Some(target) = target.await else {
        return;
    };
    // A store without namespaces gets a fresh server per case and the default namespace.
    let namespace = if target.declared.namespaces {
        format!(
            "t-{}-{}",
            case.chars().take(24).collect::<String>(),
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        )
    } else {
        String::new()
    };
    let target = Arc::new(target);
    let ctx = Ctx {
        lm: client_of(&target, &namespace).await,
        target: target.clone(),
        namespace,
        helper: helper.map(PathBuf::from),
    };
    // A case that hangs is a failure, not a stuck CI run.
    tokio::time::timeout(Duration::from_secs(60), f(ctx))
        .await
        .unwrap_or_else(|_| panic!("conformance case {case} did not finish within 60 s"));
}

/// The environment variable that makes conformance cases print locksmith's own `tracing`
/// events to stderr, with `RUST_LOG`'s syntax: e.g. `LOCKSMITH_TEST_LOG=locksmith=trace
/// cargo test … -- CASE --nocapture` shows every try and wait of a case.
pub const LOG_ENV: &str = "LOCKSMITH_TEST_LOG";

fn log_if_asked() {
    if std::env::var_os(LOG_ENV).is_some() {
        // A second case in the same test binary finds the subscriber already installed.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_env(LOG_ENV))
            .with_writer(std::io::stderr)
            .try_init();
    }
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
                $crate::run_case(
                    stringify!($case),
                    $target,
                    ::std::option_env!("CARGO_BIN_EXE_locksmith-test-helper"),
                    |ctx| {
                        ::std::boxed::Box::pin($crate::cases::$case(ctx))
                    },
                )
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
            fences_increase_across_clock_steps,
            fifo_order_of_waiters,
            cancel_while_waiting,
            cancel_with_request_in_flight,
            // atomicity where the waiting queue cannot help
            spin_try_acquire_no_lost_updates,
            expired_takeover_race_one_winner,
            // wake-ups and re-polls
            waiter_woken_when_lease_shortened,
            pushed_grant_hands_over_in_order,
            abandoned_waiters_leave_the_queue,
            subscribed_waiter_granted_after_one_try,
            waiter_of_the_holders_handle_needs_no_try,
            waiter_of_a_renewed_holder_needs_no_try,
            dead_waiter_process_never_granted,
            repoll_at_holder_expiry_bounded,
            held_for_tracks_real_time,
            // names, prefixes, namespaces, TTLs
            names_differ_by_case_space_and_normalisation,
            list_prefix_special_characters,
            reset_all_prefix_namespace_isolated,
            namespace_name_split_isolated,
            fractional_ttls_never_shorter_in_store,
            fifo_across_connects,
            drop_after_runtime_shutdown,
            // unknown outcomes and failing stores
            apply_then_fail_leaves_no_lock,
            fail_before_applying_is_retryable,
            cancel_during_backoff_leaves_nothing,
            first_try_has_not_waited,
            failed_release_retried_in_background,
            drop_never_blocks_on_hung_store,
            subscribe_failure_keeps_waiting,
            late_extend_never_revives,
            lost_soon_after_clear,
            declared_limits_honoured,
            // across processes
            spin_try_acquire_across_processes,
            wake_across_processes,
            sigkilled_holder_taken_over_after_ttl,
            fences_across_processes_and_restart,
            polling_waiter_not_starved,
            long_waiter_keeps_its_turn_through_a_release,
            // API of seam v2
            wait_until_deadline_honoured,
            into_future_acquires,
            close_finishes_detached_releases,
            hung_store_calls_bounded
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
