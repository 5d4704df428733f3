//! `#[locked]` end to end, on the memory and SQLite stores: every naming example of the
//! django-redis-task-lock and cachelock READMEs translated to Rust, busy calls with and
//! without `on_locked`, waiting, `min_hold` in one process and across processes (this test
//! binary re-executes itself), the `default` store from `LOCKSMITH_URL`, and the lock being
//! released after an early `return`, a `?` error and a panic.
//!
//! Every test runs once per store: it installs a fresh store under the aliases the
//! functions use (`default`, `other`), so the tests of this binary take turns (`SERIAL`).

#![cfg(all(feature = "macros", feature = "memory", feature = "sqlite"))]

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use locksmith::{Error, ListQuery, Locksmith, locked, stores};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const STORES: [&str; 2] = ["memory", "sqlite"];

/// A fresh store of `kind`, installed as `default` (and a second one as `other`), connected
/// on locksmith's own runtime so it outlives each test's runtime.
struct Setup {
    lm: Locksmith,
    other: Locksmith,
    _dir: tempfile::TempDir,
    _serial: tokio::sync::MutexGuard<'static, ()>,
}

fn connect(kind: &str, dir: &tempfile::TempDir, file: &str) -> Locksmith {
    let url = match kind {
        "memory" => "memory://".to_string(),
        "sqlite" => format!("sqlite://{}", dir.path().join(file).display()),
        other => unreachable!("{other}"),
    };
    locksmith::blocking::Locksmith::connect(&url)
        .expect("connect")
        .as_async()
        .clone()
}

fn install(kind: &str, serial: tokio::sync::MutexGuard<'static, ()>) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let lm = connect(kind, &dir, "default.db");
    let other = connect(kind, &dir, "other.db");
    stores::install("default", lm.clone());
    stores::install("other", other.clone());
    Setup {
        lm,
        other,
        _dir: dir,
        _serial: serial,
    }
}

async fn setup(kind: &str) -> Setup {
    let serial = SERIAL.lock().await;
    tokio::task::block_in_place(|| install(kind, serial))
}

fn setup_sync(kind: &str) -> Setup {
    install(kind, SERIAL.blocking_lock())
}

/// The live locks of the `default` store, by name.
async fn held() -> Vec<String> {
    let lm = stores::get("default").await.unwrap();
    let page = lm.list(ListQuery::all()).await.unwrap();
    page.items
        .into_iter()
        .filter(|i| !i.expired)
        .map(|i| i.name)
        .collect()
}

fn held_sync() -> Vec<String> {
    let lm = stores::get_blocking("default").unwrap();
    lm.list(ListQuery::all())
        .unwrap()
        .items
        .into_iter()
        .filter(|i| !i.expired)
        .map(|i| i.name)
        .collect()
}

/// The module path `#[locked]` puts before a function's name.
fn m(rest: &str) -> String {
    format!("{}::{rest}", module_path!())
}

#[derive(Debug)]
enum JobError {
    Lock(Error),
    Boom,
}

impl From<Error> for JobError {
    fn from(e: Error) -> Self {
        JobError::Lock(e)
    }
}

impl fmt::Display for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?}")
    }
}

// ---------------------------------------------------------------------------------------
// django-redis-task-lock: "For a function call such as foo(1, 'temp', bar9=4, bar8=3), the
// lock_name would be foo:1:temp:4:3. If a parameter is a type with only the default
// __str__ or __repr__, it will not be included in the name."

/// A type without `Display`: left out of default names.
#[derive(Debug)]
struct Opaque;

#[locked]
async fn foo(a: i32, b: &str, bar9: u8, bar8: u8) -> Result<Vec<String>, Error> {
    let _ = (a, b, bar9, bar8);
    Ok(held().await)
}

#[locked]
async fn with_opaque(x: u32, o: Opaque, v: Vec<u8>, s: String) -> Result<Vec<String>, Error> {
    let _ = (x, o, v, s);
    Ok(held().await)
}

// `@lock def plain(arg, kwarg)`: lock_name would be plain:<arg>:<kwarg>.
#[locked]
fn plain(arg: &str, kwarg: u64) -> Result<Vec<String>, Error> {
    let _ = (arg, kwarg);
    Ok(held_sync())
}

#[locked(skip(secret))]
async fn skipped(user: u32, secret: &str) -> Result<Vec<String>, Error> {
    let _ = (user, secret);
    Ok(held().await)
}

#[locked]
async fn generic<T: fmt::Display + Send, U: Send>(
    shown: T,
    hidden: U,
) -> Result<Vec<String>, Error> {
    let _ = (shown, hidden);
    Ok(held().await)
}

mod reexports {
    pub(crate) use locksmith as ls;
}

#[locked(crate = crate::reexports::ls, name = "via-reexport:{n}")]
async fn via_reexport(n: u8) -> Result<Vec<String>, Error> {
    Ok(held().await)
}

#[locked]
async fn r#type(r#in: u8) -> Result<Vec<String>, Error> {
    let _ = r#in;
    Ok(held().await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_names_take_display_arguments_in_order() {
    for kind in STORES {
        let _s = setup(kind).await;
        assert_eq!(
            foo(1, "temp", 4, 3).await.unwrap(),
            [m("foo:1:temp:4:3")],
            "{kind}"
        );
        assert_eq!(
            with_opaque(7, Opaque, vec![1], "s".into()).await.unwrap(),
            [m("with_opaque:7:s")],
            "{kind}"
        );
        let names = tokio::task::spawn_blocking(|| plain("a", 2)).await.unwrap();
        assert_eq!(names.unwrap(), [m("plain:a:2")], "{kind}");
        assert_eq!(skipped(3, "pw").await.unwrap(), [m("skipped:3")], "{kind}");
        assert_eq!(
            generic("shown", Opaque).await.unwrap(),
            [m("generic:shown")],
            "{kind}"
        );
        assert_eq!(r#type(1).await.unwrap(), [m("type:1")], "{kind}");
        assert_eq!(via_reexport(4).await.unwrap(), ["via-reexport:4"], "{kind}");
        assert!(held().await.is_empty(), "{kind}: every lock released");
    }
}

// ---------------------------------------------------------------------------------------
// django-redis-task-lock: lock_name lists. `@lock(lock_name=['arg4', 'arg2', 'arg3'])
// def bar(arg1, arg2, arg3, arg4)`: bar(1, 2, 3, 4) gets bar:4:2:3; ClassExample().foo(1)
// with lock_name=['arg1', ['self', 'id']] and self.id = 27 gets foo:1:27;
// ["self", "obj1", "dict1", "list1", 0] looks up self.obj1.dict1["list1"][0].

#[locked(name = "bar:{arg4}:{arg2}:{arg3}")]
async fn bar(arg1: u8, arg2: u8, arg3: u8, arg4: u8) -> Result<Vec<String>, Error> {
    let _ = arg1;
    Ok(held().await)
}

struct Obj1 {
    dict1: HashMap<String, Vec<u32>>,
}

struct ClassExample {
    id: u32,
    obj1: Obj1,
    runs: usize,
}

impl ClassExample {
    #[locked(name = "foo:{arg1}:{self.id}")]
    async fn foo(&self, arg1: u8) -> Result<Vec<String>, Error> {
        let _ = arg1;
        Ok(held().await)
    }

    #[locked(name = r#"deep:{self.obj1.dict1["list1"][0]}"#)]
    fn deep(&mut self) -> Result<Vec<String>, Error> {
        self.runs += 1;
        Ok(held_sync())
    }

    // `self` never joins a default name.
    #[locked]
    async fn method_default(&mut self, n: u8) -> Result<Vec<String>, Error> {
        self.runs += 1;
        let _ = n;
        Ok(held().await)
    }
}

// Generic impls and `self` by value.
struct Queue<T> {
    name: String,
    items: Vec<T>,
}

impl<T: Send + 'static> Queue<T> {
    #[locked(name = "queue:{self.name}:{extra}")]
    async fn drain<E: fmt::Display + Send>(self, extra: E) -> Result<(usize, Vec<String>), Error> {
        Ok((self.items.len(), held().await))
    }
}

// The README says `lock_name="hard_code_name"` gives hard_name:hard_code_name; the code
// always used the string as the whole key (SEEDS §3.2). A template is the whole name, so
// both spellings are a literal away.
#[locked(name = "hard_code_name")]
async fn hard_name(arg: u8, kwarg: u8) -> Result<Vec<String>, Error> {
    let _ = (arg, kwarg);
    Ok(held().await)
}

#[locked(name = "hard_name:hard_code_name")]
async fn hard_name_readme(arg: u8) -> Result<Vec<String>, Error> {
    let _ = arg;
    Ok(held().await)
}

// `@lock(lock_name=["kwarg", "arg"]) def kwarg(arg, kwarg)`: kwarg:<kwarg>:<arg>.
#[locked(name = "kwarg:{kwarg}:{arg}")]
async fn kwarg(arg: &str, kwarg: &str) -> Result<Vec<String>, Error> {
    Ok(held().await)
}

// Tuple fields, `{{` escapes.
#[locked(name = "pair:{p.0}-{p.1}:{{x}}")]
async fn pair(p: (u8, &str)) -> Result<Vec<String>, Error> {
    Ok(held().await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn django_lock_name_lists() {
    for kind in STORES {
        let _s = setup(kind).await;
        assert_eq!(bar(1, 2, 3, 4).await.unwrap(), ["bar:4:2:3"], "{kind}");
        let mut c = ClassExample {
            id: 27,
            obj1: Obj1 {
                dict1: HashMap::from([("list1".to_string(), vec![5, 6])]),
            },
            runs: 0,
        };
        assert_eq!(c.foo(1).await.unwrap(), ["foo:1:27"], "{kind}");
        let names = tokio::task::block_in_place(|| c.deep()).unwrap();
        assert_eq!(names, ["deep:5"], "{kind}");
        assert_eq!(
            c.method_default(9).await.unwrap(),
            [m("method_default:9")],
            "{kind}"
        );
        assert_eq!(c.runs, 2);
        let q = Queue {
            name: "mail".into(),
            items: vec![Opaque, Opaque],
        };
        assert_eq!(
            q.drain('x').await.unwrap(),
            (2, vec!["queue:mail:x".to_string()]),
            "{kind}"
        );
        assert_eq!(hard_name(1, 2).await.unwrap(), ["hard_code_name"], "{kind}");
        assert_eq!(
            hard_name_readme(1).await.unwrap(),
            ["hard_name:hard_code_name"],
            "{kind}"
        );
        assert_eq!(kwarg("a", "k").await.unwrap(), ["kwarg:k:a"], "{kind}");
        assert_eq!(pair((1, "b")).await.unwrap(), ["pair:1-b:{x}"], "{kind}");
        assert!(held().await.is_empty(), "{kind}");
    }
}

// ---------------------------------------------------------------------------------------
// django-redis-task-lock: `@lock(lock_name=[PriorityList(["kwarg1", "kwarg2", "arg"])])
// def priority_list(arg=None, kwarg1=None, kwarg2=None)`: priority_list(0, kwarg2=2) gets
// priority_list:2; when all are falsy, the name is just priority_list.

#[locked(name = "priority_list:{kwarg1|kwarg2|arg}")]
async fn priority_list(
    arg: i64,
    kwarg1: Option<&str>,
    kwarg2: Option<u8>,
) -> Result<Vec<String>, Error> {
    Ok(held().await)
}

// `combination(self, url=None, language='en', is_resend=False, debug=False)` with
// lock_name=[["self", "name_list", 1], "debug", PriorityList(["is_resend", "language"])],
// timeout=30, cache='other', blocking=True: combination:<self.name_list[1]>:<debug>:
// <is_resend, else language, else nothing>.
struct Mailer {
    name_list: Vec<String>,
}

impl Mailer {
    #[locked(
        name = "combination:{self.name_list[1]}:{debug}:{is_resend|language}",
        ttl = "30s",
        store = "other",
        wait = forever
    )]
    async fn combination(
        &self,
        url: Option<&str>,
        language: &str,
        is_resend: bool,
        debug: bool,
    ) -> Result<Vec<(String, Duration)>, Error> {
        let _ = url;
        let lm = stores::get("other").await?;
        Ok(lm
            .list(ListQuery::all())
            .await?
            .items
            .into_iter()
            .map(|i| (i.name, i.expires_in.unwrap()))
            .collect())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn django_priority_lists() {
    for kind in STORES {
        let s = setup(kind).await;
        assert_eq!(
            priority_list(0, None, Some(2)).await.unwrap(),
            ["priority_list:2"],
            "{kind}"
        );
        assert_eq!(
            priority_list(0, Some(""), None).await.unwrap(),
            ["priority_list"],
            "{kind}: all empty adds nothing, not an empty segment"
        );
        assert_eq!(
            priority_list(5, None, Some(0)).await.unwrap(),
            ["priority_list:5"],
            "{kind}"
        );
        assert_eq!(
            priority_list(5, Some("k1"), Some(2)).await.unwrap(),
            ["priority_list:k1"],
            "{kind}"
        );

        let mailer = Mailer {
            name_list: vec!["first".into(), "second".into()],
        };
        let seen = mailer.combination(None, "en", false, false).await.unwrap();
        assert_eq!(seen.len(), 1, "{kind}: {seen:?}");
        assert_eq!(seen[0].0, "combination:second:false:en", "{kind}");
        assert!(
            seen[0].1 <= Duration::from_secs(30) && seen[0].1 > Duration::from_secs(20),
            "{kind}: ttl 30s, got {:?}",
            seen[0].1
        );
        let seen = mailer.combination(None, "", true, true).await.unwrap();
        assert_eq!(seen[0].0, "combination:second:true:true", "{kind}");
        let seen = mailer.combination(None, "", false, false).await.unwrap();
        assert_eq!(seen[0].0, "combination:second:false", "{kind}");
        // `store = "other"`: the default store never saw these locks.
        assert!(held().await.is_empty(), "{kind}");
        assert!(
            s.lm.inspect("combination:second:false")
                .await
                .unwrap()
                .is_none()
        );

        // `blocking=True` → `wait = forever`: a second call waits for the first.
        let busy = s
            .other
            .lock("combination:second:false:en")
            .acquire()
            .await
            .unwrap();
        let waiting = tokio::spawn(async move {
            let mailer = Mailer {
                name_list: vec!["first".into(), "second".into()],
            };
            mailer.combination(None, "en", false, false).await
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            !waiting.is_finished(),
            "{kind}: waits while the lock is held"
        );
        busy.release().await.unwrap();
        let seen = waiting.await.unwrap().unwrap();
        assert_eq!(seen[0].0, "combination:second:false:en", "{kind}");
    }
}

// ---------------------------------------------------------------------------------------
// cachelock: `@cachelock.once(key='foo-{arg_a}-{arg_b}') def func(arg_a, arg_b)`, and its
// test suite's keys `foo-key-{arg_a}`, `{arg_b}`, `{arg_a}-{arg_b}`. If locked, `once`
// "quits silently" (returns None); with raise_if_lock=True it raises LockError.

#[locked(name = "foo-{arg_a}-{arg_b}", on_locked = None)]
fn func(arg_a: u8, arg_b: &str) -> Option<Vec<String>> {
    Some(held_sync())
}

#[locked(name = "foo-{arg_a}-{arg_b}")]
fn func_raising(arg_a: u8, arg_b: &str) -> Result<Vec<String>, Error> {
    Ok(held_sync())
}

#[locked(name = "foo-key-{arg_a}", on_locked = None)]
fn key_a(arg_a: u8, arg_b: u8) -> Option<Vec<String>> {
    let _ = arg_b;
    Some(held_sync())
}

#[locked(name = "{arg_b}", on_locked = None)]
fn key_b(arg_a: u8, arg_b: u8) -> Option<Vec<String>> {
    let _ = arg_a;
    Some(held_sync())
}

#[test]
fn cachelock_keys() {
    for kind in STORES {
        let s = setup_sync(kind);
        assert_eq!(func(1, "x").unwrap(), ["foo-1-x"], "{kind}");
        assert_eq!(key_a(1, 2).unwrap(), ["foo-key-1"], "{kind}");
        assert_eq!(key_b(1, 2).unwrap(), ["2"], "{kind}");
        // Busy: quits silently, or raises.
        let sync = locksmith::blocking::Locksmith::from(s.lm.clone());
        let held = sync.lock("foo-1-x").acquire().unwrap();
        assert_eq!(func(1, "x"), None, "{kind}");
        let err = func_raising(1, "x").unwrap_err();
        assert!(err.is_locked(), "{kind}: {err}");
        assert_eq!(err.lock_name(), Some("foo-1-x"));
        held.release().unwrap();
        assert_eq!(func_raising(1, "x").unwrap(), ["foo-1-x"], "{kind}");
    }
}

// ---------------------------------------------------------------------------------------
// Expression names, busy calls, waiting.

const JOB: &str = "nightly-export";

#[locked(name = JOB, on_locked = 0)]
async fn constant_name() -> usize {
    held().await.len()
}

#[locked(name = format!("tenant/{}/sync", tenant.to_uppercase()))]
async fn expr_name(tenant: &str) -> Result<Vec<String>, Error> {
    Ok(held().await)
}

static RUNS: AtomicUsize = AtomicUsize::new(0);

#[locked(name = "busy-job")]
async fn busy_job() -> Result<(), JobError> {
    RUNS.fetch_add(1, Ordering::SeqCst);
    Ok(())
}

#[locked(name = "busy-job", on_locked = Ok("skipped"))]
async fn busy_job_on_locked() -> Result<&'static str, JobError> {
    RUNS.fetch_add(1, Ordering::SeqCst);
    Ok("ran")
}

#[locked(name = "busy-job", wait = "150ms")]
async fn busy_job_waiting() -> Result<(), Error> {
    RUNS.fetch_add(1, Ordering::SeqCst);
    Ok(())
}

#[locked(name = "busy-job", wait = Duration::from_millis(50) * 3, on_locked = ())]
fn busy_job_sync() {
    RUNS.fetch_add(1, Ordering::SeqCst);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_calls_with_and_without_on_locked() {
    for kind in STORES {
        let s = setup(kind).await;
        assert_eq!(constant_name().await, 1, "{kind}");
        assert_eq!(
            expr_name("acme").await.unwrap(),
            ["tenant/ACME/sync"],
            "{kind}"
        );

        RUNS.store(0, Ordering::SeqCst);
        let holder = s.lm.lock("busy-job").acquire().await.unwrap();
        match busy_job().await {
            Err(JobError::Lock(e)) => assert!(e.is_locked(), "{kind}: {e}"),
            other => panic!("{kind}: {other:?}"),
        }
        assert_eq!(busy_job_on_locked().await.unwrap(), "skipped", "{kind}");
        let started = std::time::Instant::now();
        let err = busy_job_waiting().await.unwrap_err();
        assert!(err.is_timeout(), "{kind}: {err}");
        assert!(started.elapsed() >= Duration::from_millis(150), "{kind}");
        tokio::task::block_in_place(busy_job_sync);
        assert_eq!(
            RUNS.load(Ordering::SeqCst),
            0,
            "{kind}: no body ran while busy"
        );

        // Freed within the wait: the waiting call runs.
        let release = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(30)).await;
            holder.release().await.unwrap();
        });
        busy_job_waiting().await.unwrap();
        release.await.unwrap();
        busy_job().await.unwrap();
        assert_eq!(busy_job_on_locked().await.unwrap(), "ran", "{kind}");
        tokio::task::block_in_place(busy_job_sync);
        assert_eq!(RUNS.load(Ordering::SeqCst), 4, "{kind}");
    }
}

// ---------------------------------------------------------------------------------------
// Early return, `?` and panic release the lock.

#[locked(name = "exit:{how}")]
async fn exits(how: &str) -> Result<u8, JobError> {
    if how == "return" {
        return Ok(1);
    }
    if how == "question" {
        Err(JobError::Boom)?;
    }
    if how == "panic" {
        panic!("boom inside a locked body");
    }
    Ok(0)
}

#[locked(name = "exit-sync:{how}")]
fn exits_sync(how: &str) -> Result<u8, JobError> {
    if how == "return" {
        return Ok(1);
    }
    let n: u8 = if how == "question" {
        "not a number".parse().map_err(|_| JobError::Boom)?
    } else {
        0
    };
    if how == "panic" {
        panic!("boom inside a locked body");
    }
    Ok(n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_return_question_mark_and_panic_release() {
    for kind in STORES {
        let s = setup(kind).await;
        assert_eq!(exits("return").await.unwrap(), 1);
        assert!(matches!(exits("question").await, Err(JobError::Boom)));
        let panicked = tokio::spawn(exits("panic")).await.unwrap_err();
        assert!(panicked.is_panic(), "{kind}");
        for how in ["return", "question", "panic"] {
            let name = format!("exit:{how}");
            assert!(
                s.lm.inspect(&name).await.unwrap().is_none_or(|i| i.expired),
                "{kind}: {name} released"
            );
            // And taken again at once.
            drop(s.lm.lock(&name).try_acquire().await.unwrap().expect("free"));
        }

        tokio::task::block_in_place(|| {
            assert_eq!(exits_sync("return").unwrap(), 1);
            assert!(matches!(exits_sync("question"), Err(JobError::Boom)));
            let panicked = std::panic::catch_unwind(|| exits_sync("panic"));
            assert!(panicked.is_err(), "{kind}");
        });
        for how in ["return", "question", "panic"] {
            let name = format!("exit-sync:{how}");
            assert!(
                s.lm.inspect(&name).await.unwrap().is_none_or(|i| i.expired),
                "{kind}: {name} released"
            );
            drop(s.lm.lock(&name).try_acquire().await.unwrap().expect("free"));
        }
    }
}

// ---------------------------------------------------------------------------------------
// min_hold, renew = false, store aliases.

#[locked(name = "period", min_hold = "1h", on_locked = false)]
async fn once_an_hour() -> bool {
    true
}

#[locked(name = "bare", ttl = "200ms", renew = false)]
async fn bare_lease(work: Duration) -> Result<(), Error> {
    tokio::time::sleep(work).await;
    Ok(())
}

#[locked(name = "renewed", ttl = "200ms")]
async fn renewed_lease(work: Duration) -> Result<(), Error> {
    tokio::time::sleep(work).await;
    Ok(())
}

#[locked(store = "nowhere")]
async fn unknown_store() -> Result<(), Error> {
    Ok(())
}

// No `Result` to report the failure in: it is logged, and the body does not run.
#[locked(store = "nowhere", on_locked = 7)]
fn unknown_store_without_result() -> u32 {
    RUNS.fetch_add(1, Ordering::SeqCst);
    1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_hold_renew_and_store_aliases() {
    for kind in STORES {
        let s = setup(kind).await;
        assert!(once_an_hour().await, "{kind}: first run");
        assert!(!once_an_hour().await, "{kind}: skipped inside the period");
        let info = s.lm.inspect("period").await.unwrap().expect("kept");
        assert!(!info.expired, "{kind}");
        assert!(
            info.expires_in.unwrap() > Duration::from_secs(3500),
            "{kind}: kept until acquired_at + 1h, {info:?}"
        );

        // A bare lease ends during long work; the default renewal keeps it.
        let err = bare_lease(Duration::from_millis(600)).await.unwrap_err();
        assert!(err.is_lost(), "{kind}: {err}");
        renewed_lease(Duration::from_millis(600)).await.unwrap();

        let err = unknown_store().await.unwrap_err();
        assert!(err.is_invalid_input(), "{kind}: {err}");
        assert!(err.to_string().contains("nowhere"), "{err}");
        let before = RUNS.load(Ordering::SeqCst);
        assert_eq!(tokio::task::block_in_place(unknown_store_without_result), 7);
        assert_eq!(
            RUNS.load(Ordering::SeqCst),
            before,
            "{kind}: the body never ran"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Across processes: this binary re-executes itself (`child_process`, ignored in normal runs).

#[locked(name = "cron:hourly", min_hold = "1h", on_locked = false)]
fn hourly_child_job() -> bool {
    true
}

#[locked(name = "cron:short", min_hold = "1s", on_locked = false)]
fn short_child_job() -> bool {
    true
}

#[locked(min_hold = "1h")]
fn from_env_job(tag: &str) -> Result<bool, Error> {
    let _ = tag;
    Ok(true)
}

const CHILD_MODE: &str = "LOCKSMITH_LOCKED_TEST_CHILD";
const CHILD_DB: &str = "LOCKSMITH_LOCKED_TEST_DB";

#[test]
#[ignore = "run by cross_process_* tests in a child process"]
fn child_process() {
    let Ok(mode) = std::env::var(CHILD_MODE) else {
        return;
    };
    if mode != "from-env" {
        let url = format!("sqlite://{}", std::env::var(CHILD_DB).unwrap());
        let lm = locksmith::blocking::Locksmith::connect(&url).unwrap();
        stores::install("default", lm.as_async().clone());
    }
    let ran = match mode.as_str() {
        "hourly" => hourly_child_job(),
        "short" => short_child_job(),
        "from-env" => match from_env_job("x") {
            Ok(ran) => ran,
            Err(e) if e.is_locked() => false,
            Err(e) => panic!("{e}"),
        },
        other => panic!("unknown mode {other}"),
    };
    println!("OUTCOME={}", if ran { "ran" } else { "skipped" });
}

fn run_child(mode: &str, db: &std::path::Path) -> String {
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--ignored",
        "--exact",
        "child_process",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(CHILD_MODE, mode)
    .env(CHILD_DB, db);
    if mode == "from-env" {
        cmd.env("LOCKSMITH_URL", format!("sqlite://{}", db.display()));
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "child {mode} failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .find_map(|l| l.split("OUTCOME=").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("child {mode} printed no outcome: {stdout}"))
        .to_string()
}

#[test]
fn cross_process_min_hold_skips_inside_the_period() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("cron.db");
    assert_eq!(run_child("hourly", &db), "ran");
    assert_eq!(run_child("hourly", &db), "skipped", "inside the hour");
    assert_eq!(run_child("hourly", &db), "skipped");

    assert_eq!(run_child("short", &db), "ran");
    // Past the 1 s period the job runs again (waits on the store's verdict, not a clock).
    let lm =
        locksmith::blocking::Locksmith::connect(&format!("sqlite://{}", db.display())).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while lm
        .inspect("cron:short")
        .unwrap()
        .is_some_and(|i| !i.expired)
    {
        assert!(std::time::Instant::now() < deadline, "min_hold never ended");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(run_child("short", &db), "ran", "after the period");
    // The hourly lock is still kept.
    assert_eq!(run_child("hourly", &db), "skipped");
}

#[test]
fn cross_process_default_store_comes_from_locksmith_url() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("env.db");
    assert_eq!(run_child("from-env", &db), "ran");
    let lm =
        locksmith::blocking::Locksmith::connect(&format!("sqlite://{}", db.display())).unwrap();
    let info = lm
        .inspect(&m("from_env_job:x"))
        .unwrap()
        .expect("the child locked in the LOCKSMITH_URL store");
    assert!(!info.expired);
    assert_eq!(run_child("from-env", &db), "skipped");
}
