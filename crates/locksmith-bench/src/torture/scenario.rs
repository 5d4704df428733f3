//! The harness: starts workers against one store, injects one kind of fault, then runs the
//! checker.
//!
//! Each scenario is a function of a [`Ctx`]. A networked store later adds its URL (the
//! `--store` option) and implements its fault hooks — restart the server, drop its
//! connections, SIGSTOP it — as more scenarios here; the SQLite-only ones
//! (`sqlite-tx-kill`, `sqlite-busy`, `disk-full`, `clock-step`) check `Ctx::sqlite_path`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::ValueEnum;
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use super::check::{self, Final, Input, Report};
use super::record::{Fault, Hold, Record, append, mono_ns, open_log, read_lines};
use super::resource::Resource;
use super::worker::Mode;

/// The scenarios.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
pub(crate) enum Scenario {
    /// No faults: the workers and the checker alone.
    Baseline,
    /// SIGKILL of random holders (library workers and `locksmith run`).
    Sigkill,
    /// SIGSTOP of a holder for twice its TTL, then SIGCONT.
    Sigstop,
    /// SQLite: a process killed with SIGKILL inside a write transaction that deleted every lock.
    SqliteTxKill,
    /// SQLite: a second connection holding the file's write lock, briefly and past the call timeout.
    SqliteBusy,
    /// SQLite: the file system full (a small tmpfs), then space returned.
    DiskFull,
    /// A wall-clock step in one worker's view of the lock clock (forward, and back in another).
    ClockStep,
    /// Redis (a server of the harness's own, `appendonly yes` + `appendfsync always`):
    /// SIGKILL and restart of the server.
    RedisRestart,
    /// Redis: every client connection dropped (`CLIENT KILL TYPE normal` and `pubsub`).
    RedisClientKill,
    /// Redis: the server frozen (SIGSTOP) past the TTL, then thawed.
    RedisFreeze,
    /// Redis without persistence, restarted: what a restart costs (locks forgotten). Its
    /// double holders are reported as the cost, not as violations.
    RedisRestartVolatile,
    /// A networked store's server SIGKILLed and started again (needs `--store mysql`).
    ServerRestart,
    /// Every client connection killed on the server (`KILL CONNECTION`; needs `--store mysql`).
    ConnKill,
    /// The server frozen (SIGSTOP) past the TTL, then thawed (needs `--store mysql`).
    ServerFreeze,
    /// PostgreSQL (`--store postgres`): the server killed and restarted every few TTLs.
    PgRestart,
    /// PostgreSQL (`--store postgres`): every client connection terminated every TTL.
    PgKillConnections,
    /// PostgreSQL (`--store postgres`): the whole server frozen (SIGSTOP) past the TTL.
    PgFreeze,
}

impl Scenario {
    /// The scenario's name on the command line.
    pub(crate) fn label(self) -> String {
        self.to_possible_value()
            .expect("no skipped variants")
            .get_name()
            .to_string()
    }

    /// Whether a run without `--scenario` on `store` (`--store`'s value; `None`: a SQLite
    /// file per scenario) includes this scenario: the ones every store shares, and those of
    /// the store's own kind. Any scenario named with `--scenario` still runs (or says why not).
    pub(crate) fn applies_to(self, store: Option<&str>) -> bool {
        let sqlite = store.is_none_or(|s| s.starts_with("sqlite"));
        let redis = store.is_some_and(|s| s.starts_with("redis"));
        match self {
            Scenario::Baseline | Scenario::Sigkill | Scenario::Sigstop => true,
            Scenario::SqliteTxKill
            | Scenario::SqliteBusy
            | Scenario::DiskFull
            | Scenario::ClockStep => sqlite,
            Scenario::RedisRestart
            | Scenario::RedisClientKill
            | Scenario::RedisFreeze
            | Scenario::RedisRestartVolatile => redis,
            Scenario::ServerRestart | Scenario::ConnKill | Scenario::ServerFreeze => {
                store == Some("mysql")
            }
            Scenario::PgRestart | Scenario::PgKillConnections | Scenario::PgFreeze => {
                store == Some("postgres")
            }
        }
    }
}

/// How hard to push.
#[derive(Clone, Debug)]
pub(crate) struct Plan {
    pub(crate) workers: u32,
    pub(crate) names: u32,
    /// Contending tasks per library (async) worker.
    pub(crate) tasks: u32,
    pub(crate) ttl: Duration,
    pub(crate) hold: Duration,
    pub(crate) wait: Duration,
    pub(crate) duration: Duration,
}

/// One scenario's result.
#[derive(Clone, Debug)]
pub(crate) struct Outcome {
    pub(crate) scenario: Scenario,
    pub(crate) store: String,
    pub(crate) workers: u32,
    pub(crate) seconds: f64,
    pub(crate) faults: usize,
    pub(crate) report: Report,
    /// Why the scenario did not run, if it did not.
    pub(crate) skipped: Option<String>,
    /// Store errors workers saw, first few distinct ones.
    pub(crate) errors: Vec<String>,
    pub(crate) error_count: usize,
}

/// The running harness of one scenario.
pub(crate) struct Ctx {
    pub(crate) plan: Plan,
    pub(crate) url: String,
    pub(crate) dir: PathBuf,
    pub(crate) resource: PathBuf,
    pub(crate) locksmith: PathBuf,
    pub(crate) until: u64,
    workers: Vec<(u32, Mode, Child)>,
    next_id: u32,
    faults: std::fs::File,
    lm: Option<locksmith::blocking::Locksmith>,
    extra_args: Vec<(u32, Vec<String>)>,
}

impl Ctx {
    /// The SQLite file of the store, if it is one.
    pub(crate) fn sqlite_path(&self) -> Option<PathBuf> {
        let body = self.url.strip_prefix("sqlite://")?;
        Some(PathBuf::from(body.split('?').next().unwrap_or(body)))
    }

    fn admin(&mut self) -> Option<&locksmith::blocking::Locksmith> {
        if self.lm.is_none() {
            self.lm = locksmith::blocking::Locksmith::connect(&self.url).ok();
        }
        self.lm.as_ref()
    }

    fn spawn(&mut self, mode: Mode) {
        let id = self.next_id;
        self.next_id += 1;
        let me = std::env::current_exe().expect("the current executable");
        let p = &self.plan;
        let mut cmd = Command::new(me);
        cmd.arg("torture-worker")
            .args(["--store", &self.url])
            .arg("--resource")
            .arg(&self.resource)
            .arg("--log")
            .arg(self.dir.join(format!("worker-{id}.jsonl")))
            .args(["--id", &id.to_string()])
            .args(["--mode", mode_arg(mode)])
            .args(["--names", &p.names.to_string()])
            .args(["--tasks", &p.tasks.to_string()])
            .args(["--ttl", &humantime::format_duration(p.ttl).to_string()])
            .args(["--hold", &humantime::format_duration(p.hold).to_string()])
            .args(["--wait", &humantime::format_duration(p.wait).to_string()])
            .args(["--until", &self.until.to_string()])
            .arg("--locksmith")
            .arg(&self.locksmith)
            .stdin(Stdio::null());
        for (worker, args) in &self.extra_args {
            if *worker == id {
                cmd.args(args);
            }
        }
        let child = cmd.spawn().expect("a worker starts");
        self.workers.push((id, mode, child));
    }

    /// Records a fault.
    pub(crate) fn fault(&mut self, f: &Fault) {
        append(&mut self.faults, f);
    }

    /// A current holder whose process this harness can signal: `(pid, name, fence,
    /// expires_in, inspected_at, is_run)`. `want_run` picks a `locksmith run` holder.
    fn holder(
        &mut self,
        want_run: Option<bool>,
    ) -> Option<(i32, String, u64, Duration, u64, bool)> {
        let names = self.plan.names;
        let workers: Vec<(i32, Mode)> = self
            .workers
            .iter()
            .map(|(_, m, c)| (c.id() as i32, *m))
            .collect();
        let mut found = Vec::new();
        for n in 0..names {
            let name = format!("t{n}");
            let inspected_at = mono_ns();
            let lm = self.admin()?;
            let Ok(Some(info)) = lm.inspect(&name) else {
                continue;
            };
            if info.expired {
                continue;
            }
            let (Some(pid), Some(fence), Some(left)) = (info.pid, info.fence, info.expires_in)
            else {
                continue;
            };
            let pid = pid as i32;
            let is_run = if workers.iter().any(|(p, m)| *p == pid && *m != Mode::Cli) {
                false
            } else if parent_of(pid)
                .is_some_and(|pp| workers.iter().any(|(p, m)| *p == pp && *m == Mode::Cli))
            {
                true
            } else {
                continue;
            };
            if want_run.is_none_or(|w| w == is_run) {
                found.push((pid, name, fence, left, inspected_at, is_run));
            }
        }
        if found.is_empty() {
            None
        } else {
            Some(found.swap_remove(fastrand::usize(..found.len())))
        }
    }

    /// Waits up to `d` for a holder.
    fn wait_holder(
        &mut self,
        want_run: Option<bool>,
        d: Duration,
    ) -> Option<(i32, String, u64, Duration, u64, bool)> {
        let t = Instant::now();
        while t.elapsed() < d {
            if let Some(h) = self.holder(want_run) {
                return Some(h);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        None
    }

    pub(crate) fn sleep_until_end(&self) {
        let now = mono_ns();
        if self.until > now {
            std::thread::sleep(Duration::from_nanos(self.until - now));
        }
    }

    pub(crate) fn time_left(&self) -> Duration {
        Duration::from_nanos(self.until.saturating_sub(mono_ns()))
    }
}

fn mode_arg(m: Mode) -> &'static str {
    match m {
        Mode::Async => "async",
        Mode::Blocking => "blocking",
        Mode::Cli => "cli",
    }
}

/// The parent pid of `pid`, from `/proc`.
fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(1)?.parse().ok()
}

/// The children of `pid`, from `/proc`.
fn children_of(pid: i32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Whether `pid`, or a process in one of the process groups `groups`, holds a POSIX write
/// lock (from `/proc/locks`) on the SQLite database file or its WAL index (`-shm`): a write
/// transaction in progress, which no other process can get past until it ends.
fn holds_sqlite_write_lock(pid: i32, groups: &[i32], db: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let mut shm = db.as_os_str().to_owned();
    shm.push("-shm");
    let inodes: Vec<u64> = [db.to_path_buf(), PathBuf::from(shm)]
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.ino())
        .collect();
    let in_groups = |p: i32| {
        nix::unistd::getpgid(Some(Pid::from_raw(p))).is_ok_and(|g| groups.contains(&g.as_raw()))
    };
    std::fs::read_to_string("/proc/locks")
        .unwrap_or_default()
        .lines()
        .filter_map(held_write_lock)
        .any(|(p, inode)| inodes.contains(&inode) && (p == pid || in_groups(p)))
}

/// The `(pid, inode)` of a POSIX write lock held, from one line of `/proc/locks`
/// (`1: POSIX  ADVISORY  WRITE 4242 fd:01:1234 120 120`); `None` for any other line,
/// including a request still waiting (`1: -> POSIX …`).
fn held_write_lock(line: &str) -> Option<(i32, u64)> {
    let f: Vec<&str> = line.split_whitespace().collect();
    if f.len() < 6 || f[1] != "POSIX" || f[3] != "WRITE" {
        return None;
    }
    let inode = f[5].rsplit(':').next()?.parse().ok()?;
    Some((f[4].parse().ok()?, inode))
}

/// Runs one scenario in a fresh directory under `root`.
/// Starts a `redis-server` of the test kit (`persistent`: `appendonly yes` + `appendfsync
/// always`) on a runtime kept for its lifetime; `None` when redis-server is not installed.
pub(crate) fn start_redis(
    persistent: bool,
) -> Option<(
    tokio::runtime::Runtime,
    locksmith_testkit::servers::redis::RedisServer,
)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let config = locksmith_testkit::servers::redis::RedisConfig {
        persistent,
        ..Default::default()
    };
    let server = rt.block_on(locksmith_testkit::servers::redis::RedisServer::start(
        config,
    ))?;
    Some((rt, server))
}

pub(crate) fn run(
    scenario: Scenario,
    plan: &Plan,
    store: Option<&str>,
    root: &Path,
    locksmith: &Path,
) -> Outcome {
    let dir = root.join(scenario.label());
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a scenario directory");
    let started = Instant::now();
    let mut skipped = None;
    let mut mount = None;
    // The Redis scenarios start a server of their own (they restart, freeze or kill it).
    let redis = matches!(
        scenario,
        Scenario::RedisRestart
            | Scenario::RedisClientKill
            | Scenario::RedisFreeze
            | Scenario::RedisRestartVolatile
    );
    let mut redis_server = None;
    if redis {
        redis_server = start_redis(scenario != Scenario::RedisRestartVolatile);
        if redis_server.is_none() {
            skipped = Some("SKIPPED: redis-server is not installed".to_string());
        }
    }
    let mut pg = None;
    let url = match (scenario, store) {
        _ if redis => match &redis_server {
            Some((_, server)) => format!("{}?timeout=1s", server.url()),
            None => String::new(),
        },
        // Its own SQLite file on a small tmpfs; on any other store it is skipped below.
        (Scenario::DiskFull, st) if st.is_none_or(|s| s.starts_with("sqlite")) => {
            let mnt = dir.join("tmpfs");
            std::fs::create_dir_all(&mnt).expect("a mount point");
            let ok = Command::new("mount")
                .args(["-t", "tmpfs", "-o", "size=16m", "tmpfs"])
                .arg(&mnt)
                .stderr(Stdio::piped())
                .output();
            match ok {
                Ok(o) if o.status.success() => {
                    mount = Some(mnt.clone());
                    format!("sqlite://{}", mnt.join("locks.db").display())
                }
                Ok(o) => {
                    skipped = Some(format!(
                        "SKIPPED: cannot mount a tmpfs ({}) — run as root",
                        String::from_utf8_lossy(&o.stderr).trim()
                    ));
                    String::new()
                }
                Err(e) => {
                    skipped = Some(format!("SKIPPED: cannot run mount: {e}"));
                    String::new()
                }
            }
        }
        (_, Some("postgres")) => match super::postgres::PgServer::start() {
            Ok(server) => {
                let url = server.url();
                pg = Some(server);
                url
            }
            Err(e) => {
                skipped = Some(format!("SKIPPED: cannot start a PostgreSQL server: {e}"));
                String::new()
            }
        },
        (_, Some(url)) => url.to_string(),
        (_, None) => format!("sqlite://{}", dir.join("locks.db").display()),
    };
    let sqlite_only = matches!(
        scenario,
        Scenario::SqliteTxKill | Scenario::SqliteBusy | Scenario::DiskFull | Scenario::ClockStep
    );
    if skipped.is_none() && sqlite_only && !url.starts_with("sqlite://") {
        skipped = Some(format!(
            "SKIPPED: {} needs a SQLite store",
            scenario.label()
        ));
    }
    let server_only = matches!(
        scenario,
        Scenario::ServerRestart | Scenario::ConnKill | Scenario::ServerFreeze
    );
    if skipped.is_none() && server_only && !super::server::have_server() {
        skipped = Some(format!(
            "SKIPPED: {} needs a server the harness starts itself (--store mysql)",
            scenario.label()
        ));
    }
    let pg_only = matches!(
        scenario,
        Scenario::PgRestart | Scenario::PgKillConnections | Scenario::PgFreeze
    );
    if skipped.is_none() && pg_only && pg.is_none() {
        skipped = Some(format!(
            "SKIPPED: {} needs --store postgres (a server of the harness's own)",
            scenario.label()
        ));
    }
    if skipped.is_none()
        && !url.starts_with("sqlite://")
        && !url.starts_with("postgres")
        && !url.starts_with("mysql")
        && !url.starts_with("redis")
    {
        skipped = Some(format!(
            "SKIPPED: {} is not shared between processes (memory:// is per process)",
            locksmith::redact_url(&url)
        ));
    }
    if let Some(why) = skipped {
        eprintln!("torture {}: {why}", scenario.label());
        return Outcome {
            scenario,
            store: locksmith::redact_url(&url),
            workers: 0,
            seconds: 0.0,
            faults: 0,
            report: Report::default(),
            skipped: Some(why),
            errors: Vec::new(),
            error_count: 0,
        };
    }
    let mut plan = plan.clone();
    if scenario == Scenario::SqliteBusy {
        // A short call timeout, so a long busy spell outlives it in a short run.
        plan.wait = plan.wait.max(Duration::from_secs(2));
    }
    let url = if scenario == Scenario::SqliteBusy {
        format!("{url}?timeout=1s")
    } else {
        url
    };
    let resource = dir.join("resource.db");
    Resource::open(&resource).expect("the fenced resource");
    let mut ctx = Ctx {
        until: mono_ns() + plan.duration.as_nanos() as u64,
        plan: plan.clone(),
        url,
        resource,
        locksmith: locksmith.to_path_buf(),
        workers: Vec::new(),
        next_id: 0,
        faults: open_log(&dir.join("faults.jsonl")),
        lm: None,
        extra_args: Vec::new(),
        dir: dir.clone(),
    };
    // Create the store before the workers race to.
    let _ = ctx.admin();
    if scenario == Scenario::ClockStep {
        let step = (plan.ttl * 2).as_micros() as i64;
        ctx.extra_args.push((
            0,
            vec![format!("--step-micros={step}"), "--step-after=3".into()],
        ));
        ctx.extra_args.push((
            1,
            vec![format!("--step-micros=-{step}"), "--step-after=3".into()],
        ));
    }
    let modes = [Mode::Async, Mode::Blocking, Mode::Cli];
    for i in 0..plan.workers {
        ctx.spawn(modes[i as usize % 3]);
    }
    let mut extra = Vec::new();
    match scenario {
        Scenario::Baseline => ctx.sleep_until_end(),
        Scenario::Sigkill => sigkill(&mut ctx),
        Scenario::Sigstop => sigstop(&mut ctx),
        Scenario::SqliteTxKill => tx_kill(&mut ctx),
        Scenario::SqliteBusy => busy(&mut ctx),
        Scenario::DiskFull => extra = disk_full(&mut ctx, mount.as_deref().expect("mounted")),
        Scenario::RedisRestart | Scenario::RedisRestartVolatile => {
            let (rt, server) = redis_server.as_mut().expect("started");
            redis_restarts(&mut ctx, rt, server)
        }
        Scenario::RedisClientKill => {
            let (rt, server) = redis_server.as_ref().expect("started");
            redis_client_kills(&mut ctx, rt, server)
        }
        Scenario::RedisFreeze => {
            let (_, server) = redis_server.as_ref().expect("started");
            redis_freezes(&mut ctx, server)
        }
        Scenario::ServerRestart => super::server::restart(&mut ctx),
        Scenario::ConnKill => super::server::conn_kill(&mut ctx),
        Scenario::ServerFreeze => super::server::freeze(&mut ctx),
        Scenario::PgRestart => super::postgres::restart(&mut ctx, pg.as_ref().expect("a server")),
        Scenario::PgKillConnections => {
            super::postgres::kill_connections(&mut ctx, pg.as_ref().expect("a server"))
        }
        Scenario::PgFreeze => super::postgres::freeze(&mut ctx, pg.as_ref().expect("a server")),
        Scenario::ClockStep => {
            let step = (plan.ttl * 2).as_nanos() as u64;
            ctx.fault(&Fault {
                kind: "clock_step".into(),
                at: mono_ns(),
                until: None,
                name: None,
                fence: None,
                expires_in: None,
                inspected_at: None,
                pid: None,
                note: format!(
                    "worker 0 steps its lock clock {} ms forward, worker 1 {} ms back, after 3 cycles",
                    step / 1_000_000,
                    step / 1_000_000
                ),
            });
            ctx.sleep_until_end();
        }
    }
    // Let the workers finish their last cycle; kill stragglers.
    let grace = Instant::now() + plan.wait + plan.ttl * 3 + plan.hold + Duration::from_secs(20);
    for (_, _, child) in ctx.workers.iter_mut() {
        loop {
            match child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < grace => std::thread::sleep(Duration::from_millis(20)),
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
            }
        }
    }
    let finals = finals(&mut ctx);
    let mut input = gather(&dir, &ctx.resource);
    input.finals = finals;
    input.ttl_ns = plan.ttl.as_nanos() as u64;
    let mut report = check::check(&input);
    scenario_checks(scenario, &input, &plan, &mut report);
    if scenario == Scenario::RedisRestartVolatile {
        // Documentation, not a failure: a server without persistence forgets locks.
        for v in std::mem::take(&mut report.violations) {
            report
                .notes
                .push(format!("COST of a restart without persistence: {v}"));
        }
    }
    for n in extra {
        match n.strip_prefix("VIOLATION ") {
            Some(v) => report.violations.push(v.to_string()),
            None => report.notes.push(n),
        }
    }
    if let Some(path) = ctx.sqlite_path() {
        match integrity(&path) {
            Ok(()) => report.notes.push("PRAGMA integrity_check: ok".into()),
            Err(e) => report
                .violations
                .push(format!("the lock file is corrupt: {e}")),
        }
    }
    drop(ctx.lm.take());
    if let Some(m) = mount {
        let _ = Command::new("umount").arg(&m).status();
    }
    let (errors, error_count) = errors(&dir);
    for e in &errors {
        if e.contains("tok_") || looks_like_token(e) {
            report
                .violations
                .push(format!("an error shows a token: {e}"));
        }
    }
    Outcome {
        scenario,
        store: locksmith::redact_url(&ctx.url),
        workers: ctx.next_id,
        seconds: started.elapsed().as_secs_f64(),
        faults: read_lines::<Fault>(&dir.join("faults.jsonl")).len(),
        report,
        skipped: None,
        errors,
        error_count,
    }
}

/// A uuid-shaped word in a message.
fn looks_like_token(s: &str) -> bool {
    s.split(|c: char| !(c.is_ascii_hexdigit() || c == '-'))
        .any(|w| w.len() == 36 && uuid::Uuid::parse_str(w).is_ok())
}

fn finals(ctx: &mut Ctx) -> Vec<Final> {
    let names = ctx.plan.names;
    let mut out = Vec::new();
    let Some(lm) = ctx.admin() else { return out };
    for n in 0..names {
        let name = format!("t{n}");
        let expires_in = match lm.inspect(&name) {
            Ok(Some(info)) if !info.expired && !info.released => {
                Some(info.expires_in.map(|d| d.as_nanos() as u64))
            }
            _ => None,
        };
        out.push(Final { name, expires_in });
    }
    out
}

fn gather(dir: &Path, resource: &Path) -> Input {
    let mut input = Input::default();
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("the scenario directory")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("worker-"))
        })
        .collect();
    paths.sort();
    for p in paths {
        for r in read_lines::<Record>(&p) {
            match r {
                Record::Grant {
                    worker,
                    name,
                    fence,
                    start,
                } => {
                    input.last_activity = input.last_activity.max(start);
                    input.grants.push((worker, name, fence, start));
                }
                Record::Releasing {
                    name, fence, at, ..
                } => {
                    input.last_activity = input.last_activity.max(at);
                    input.releasing.push((name, fence, at));
                }
                Record::Hold(h) => {
                    input.last_activity = input.last_activity.max(h.end);
                    input.holds.push(h);
                }
                Record::Miss { at, .. } => input.last_activity = input.last_activity.max(at),
            }
        }
    }
    let res = Resource::open(resource).expect("the fenced resource");
    input.ops = res.ops().expect("resource ops");
    input.counters = res.counters().expect("resource counters");
    input.faults = read_lines(&dir.join("faults.jsonl"));
    input
}

/// Distinct store errors the workers saw (first 8), and how many in all.
fn errors(dir: &Path) -> (Vec<String>, usize) {
    let mut distinct: Vec<String> = Vec::new();
    let mut count = 0;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if !e.file_name().to_string_lossy().starts_with("worker-") {
            continue;
        }
        for r in read_lines::<Record>(&e.path()) {
            let msg = match r {
                Record::Miss { outcome, error, .. } if outcome == "error" => error,
                Record::Hold(Hold {
                    outcome,
                    error: Some(error),
                    ..
                }) if outcome == "release_error" => error,
                _ => continue,
            };
            count += 1;
            if distinct.len() < 8 && !distinct.contains(&msg) {
                distinct.push(msg);
            }
        }
    }
    (distinct, count)
}

fn integrity(path: &Path) -> Result<(), String> {
    let conn = rusqlite::Connection::open(path).map_err(|e| e.to_string())?;
    conn.busy_timeout(Duration::from_secs(10))
        .map_err(|e| e.to_string())?;
    let rows: Vec<String> = conn
        .prepare("PRAGMA integrity_check")
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
        .map_err(|e| e.to_string())?;
    if rows == ["ok"] {
        Ok(())
    } else {
        Err(rows.join("; "))
    }
}

/// Checks that belong to one scenario.
fn scenario_checks(scenario: Scenario, input: &Input, plan: &Plan, r: &mut Report) {
    let faults: Vec<&Fault> = input.faults.iter().collect();
    match scenario {
        Scenario::ServerRestart | Scenario::ConnKill | Scenario::ServerFreeze => {
            let last = faults.iter().filter_map(|f| f.until).max();
            r.notes
                .push(format!("{} server faults injected", faults.len()));
            if let Some(last) = last {
                let after = input.grants.iter().filter(|g| g.3 > last).count();
                r.notes
                    .push(format!("{after} grants after the last server fault"));
                if after == 0 {
                    r.violations
                        .push("no lock was granted after the last server fault".into());
                }
            } else {
                r.violations.push("no server fault was injected".into());
            }
            let _ = plan;
        }
        Scenario::Sigstop => {
            for f in faults.iter().filter(|f| f.kind == "sigstop") {
                let (Some(name), Some(fence), Some(until)) = (&f.name, f.fence, f.until) else {
                    continue;
                };
                let others = input
                    .grants
                    .iter()
                    .filter(|g| g.3 > f.at && g.3 < until)
                    .count();
                let same = input
                    .grants
                    .iter()
                    .filter(|g| &g.1 == name && g.2 > fence && g.3 < until)
                    .count();
                r.notes.push(format!(
                    "SIGSTOP {} ms of the holder of {name:?} (fence {fence}, {}): {others} grants while it was frozen, {same} of them on its lock",
                    (until - f.at) / 1_000_000, f.note
                ));
                if others == 0 {
                    r.violations.push(format!(
                        "nobody got a lock while the holder of {name:?} was frozen"
                    ));
                }
                if let Some(h) = input
                    .holds
                    .iter()
                    .find(|h| &h.name == name && h.fence == fence)
                {
                    if h.mode == "cli"
                        && h.outcome == "lost"
                        && !h.error.as_deref().unwrap_or("").contains("Some(76)")
                    {
                        r.violations.push(format!(
                            "locksmith run lost {name:?} but did not exit 76: {:?}",
                            h.error
                        ));
                    }
                    if h.end > until && h.outcome != "lost" {
                        r.violations.push(format!(
                            "the holder of {name:?} (fence {fence}, {}) was frozen past its TTL but reported {:?}, not lost",
                            h.mode, h.outcome
                        ));
                    }
                    let late = input
                        .ops
                        .iter()
                        .filter(|o| &o.name == name && o.fence == fence && o.at > until)
                        .collect::<Vec<_>>();
                    let rejected = late.iter().filter(|o| !o.accepted).count();
                    r.notes.push(format!(
                        "  it reported {:?}{}; {} late resource ops, {rejected} rejected by the fence",
                        h.outcome,
                        h.error.as_deref().map(|e| format!(" ({e})")).unwrap_or_default(),
                        late.len()
                    ));
                    // A late op is accepted legitimately when the newer holder has not
                    // touched the resource yet (its fence is unknown there): the old
                    // holder's read-modify-write then serialises before the new one's. It
                    // is a violation only once an op with a newer fence came first.
                    let first_newer = input
                        .ops
                        .iter()
                        .filter(|o| &o.name == name && o.fence > fence)
                        .map(|o| o.seq)
                        .min();
                    let accepted_after_newer = late
                        .iter()
                        .filter(|o| o.accepted && first_newer.is_some_and(|n| o.seq > n))
                        .count();
                    if same > 0 && accepted_after_newer > 0 {
                        r.violations.push(format!("the frozen holder of {name:?} wrote after a newer holder used the resource, and was accepted"));
                    } else if late.iter().any(|o| o.accepted) {
                        r.notes.push(
                            "  its late ops were accepted before any newer holder used the resource (fencing serialises them first; no update lost)".into(),
                        );
                    }
                } else {
                    r.notes.push("  its hold has no record (the run process was frozen mid-acquire or killed)".into());
                }
            }
        }
        Scenario::SqliteTxKill | Scenario::SqliteBusy | Scenario::DiskFull => {
            // Progress after the last fault ended.
            let end = faults
                .iter()
                .filter_map(|f| f.until.or(Some(f.at)))
                .max()
                .unwrap_or(0);
            let after = input.grants.iter().filter(|g| g.3 > end).count();
            // And still in the last half of the time after it: not a burst, then stuck again.
            let late_from = end + input.last_activity.saturating_sub(end) / 2;
            let late = input.grants.iter().filter(|g| g.3 > late_from).count();
            r.notes.push(format!(
                "{after} grants after the last fault ended, {late} in the second half of that time"
            ));
            if !faults.is_empty() && (after == 0 || late == 0) {
                r.violations.push(format!(
                    "stuck: {after} grants after the fault ended, {late} in the second half of that time"
                ));
            }
        }
        _ => {}
    }
    let _ = plan;
}

fn sigkill(ctx: &mut Ctx) {
    let mut n = 0u32;
    while ctx.time_left() > ctx.plan.ttl * 2 {
        std::thread::sleep(ctx.plan.ttl / 2);
        let want_run = Some(n % 3 == 2);
        let Some((pid, name, fence, left, inspected_at, is_run)) =
            ctx.wait_holder(want_run, ctx.plan.ttl)
        else {
            continue;
        };
        let at = mono_ns();
        if kill(Pid::from_raw(pid), Signal::SIGKILL).is_err() {
            continue;
        }
        n += 1;
        ctx.fault(&Fault {
            kind: "sigkill".into(),
            at,
            until: None,
            name: Some(name),
            fence: Some(fence),
            expires_in: Some(left.as_nanos() as u64),
            inspected_at: Some(inspected_at),
            pid: Some(pid),
            note: if is_run {
                "locksmith run".into()
            } else {
                "library worker".into()
            },
        });
        if !is_run {
            // Replace the worker with one of the same mode.
            if let Some(pos) = ctx
                .workers
                .iter()
                .position(|(_, _, c)| c.id() as i32 == pid)
            {
                let (_, mode, mut child) = ctx.workers.remove(pos);
                let _ = child.wait();
                ctx.spawn(mode);
            }
        }
    }
    ctx.sleep_until_end();
}

fn sigstop(ctx: &mut Ctx) {
    let stop_for = ctx.plan.ttl * 2 + Duration::from_millis(500);
    let mut n = 0u32;
    while ctx.time_left() > stop_for + ctx.plan.ttl * 2 {
        std::thread::sleep(ctx.plan.ttl / 2);
        let want_run = Some(n % 2 == 1);
        let Some((pid, name, fence, left, inspected_at, is_run)) =
            ctx.wait_holder(want_run, ctx.plan.ttl)
        else {
            continue;
        };
        let at = mono_ns();
        // `locksmith run`'s command is in its own process group: freeze it too, as a frozen
        // machine would.
        let kids = if is_run { children_of(pid) } else { Vec::new() };
        if is_run && kids.is_empty() {
            // Granted, but the command has not started yet: pick again.
            continue;
        }
        if kill(Pid::from_raw(pid), Signal::SIGSTOP).is_err() {
            continue;
        }
        for k in &kids {
            let _ = killpg(Pid::from_raw(*k), Signal::SIGSTOP);
        }
        let files: Vec<PathBuf> = ctx
            .sqlite_path()
            .into_iter()
            .chain([ctx.resource.clone()])
            .collect();
        if files
            .iter()
            .any(|db| holds_sqlite_write_lock(pid, &kids, db))
        {
            // Frozen inside a write transaction — on the store's file, or on the shared
            // resource (a SQLite file too) during its fenced write — it would hold that
            // file's only write lock and stop every other worker: SQLite's single writer,
            // not what this scenario tests (a frozen *holder*). Thaw it and pick again.
            let _ = kill(Pid::from_raw(pid), Signal::SIGCONT);
            for k in &kids {
                let _ = killpg(Pid::from_raw(*k), Signal::SIGCONT);
            }
            continue;
        }
        n += 1;
        std::thread::sleep(stop_for);
        let _ = kill(Pid::from_raw(pid), Signal::SIGCONT);
        for k in &kids {
            let _ = killpg(Pid::from_raw(*k), Signal::SIGCONT);
        }
        ctx.fault(&Fault {
            kind: "sigstop".into(),
            at,
            until: Some(mono_ns()),
            name: Some(name),
            fence: Some(fence),
            expires_in: Some(left.as_nanos() as u64),
            inspected_at: Some(inspected_at),
            pid: Some(pid),
            note: if is_run {
                "locksmith run and its command".into()
            } else {
                "library worker".into()
            },
        });
    }
    ctx.sleep_until_end();
}

/// Starts `torture-sqlite` and waits for its "ready" line.
fn sqlite_helper(path: &Path, action: &str, hold: Duration) -> Child {
    use std::io::BufRead;
    let me = std::env::current_exe().expect("the current executable");
    let mut child = Command::new(me)
        .arg("torture-sqlite")
        .arg("--db")
        .arg(path)
        .args(["--action", action])
        .args(["--hold", &humantime::format_duration(hold).to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("torture-sqlite starts");
    let mut line = String::new();
    let _ = std::io::BufReader::new(child.stdout.as_mut().expect("piped")).read_line(&mut line);
    child
}

fn tx_kill(ctx: &mut Ctx) {
    let path = ctx.sqlite_path().expect("a SQLite store");
    while ctx.time_left() > ctx.plan.ttl * 2 {
        std::thread::sleep(ctx.plan.ttl / 2);
        let at = mono_ns();
        let mut child = sqlite_helper(&path, "delete-all", Duration::from_secs(3600));
        let ready = mono_ns();
        std::thread::sleep(Duration::from_millis(fastrand::u64(50..400)));
        let _ = child.kill();
        let _ = child.wait();
        ctx.fault(&Fault {
            kind: "sqlite_tx_kill".into(),
            at,
            until: Some(mono_ns()),
            name: None,
            fence: None,
            expires_in: None,
            inspected_at: None,
            pid: Some(child.id() as i32),
            note: format!(
                "BEGIN IMMEDIATE; DELETE FROM locksmith_locks; then SIGKILL (write lock taken after {} ms)",
                (ready - at) / 1_000_000
            ),
        });
    }
    ctx.sleep_until_end();
}

fn busy(ctx: &mut Ctx) {
    let path = ctx.sqlite_path().expect("a SQLite store");
    // A short spell (below the 1 s call timeout) and a long one (past it, and past the TTL).
    for spell in [
        Duration::from_millis(300),
        ctx.plan.ttl + Duration::from_millis(800),
    ] {
        std::thread::sleep(ctx.plan.ttl);
        let at = mono_ns();
        let mut child = sqlite_helper(&path, "hold", spell);
        let _ = child.wait();
        ctx.fault(&Fault {
            kind: "sqlite_busy".into(),
            at,
            until: Some(mono_ns()),
            name: None,
            fence: None,
            expires_in: None,
            inspected_at: None,
            pid: Some(child.id() as i32),
            note: format!(
                "a second connection held BEGIN EXCLUSIVE for {} ms",
                spell.as_millis()
            ),
        });
    }
    ctx.sleep_until_end();
}

fn disk_full(ctx: &mut Ctx, mnt: &Path) -> Vec<String> {
    use std::io::Write;
    let mut notes = Vec::new();
    std::thread::sleep(ctx.plan.ttl);
    let at = mono_ns();
    let filler = mnt.join("filler");
    let mut f = std::fs::File::create(&filler).expect("a filler file");
    let chunk = vec![0u8; 4096];
    while f.write_all(&chunk).is_ok() {}
    let _ = f.sync_all();
    drop(f);
    // Meanwhile, new lock names need new pages.
    let full_for = (ctx.time_left() / 2).max(Duration::from_secs(1));
    let t = Instant::now();
    let mut attempts = 0;
    let mut failures: Vec<String> = Vec::new();
    let mut i = 0;
    while t.elapsed() < full_for {
        i += 1;
        let name = format!("fill-{i}-{}", "x".repeat(200));
        if let Some(lm) = ctx.admin() {
            attempts += 1;
            match lm
                .lock(name.as_str())
                .ttl(Duration::from_secs(600))
                .try_acquire()
            {
                Ok(Some(g)) => {
                    let _ = g.leak();
                }
                Ok(None) => {}
                Err(e) => {
                    let m = e.to_string();
                    if failures.len() < 3 && !failures.contains(&m) {
                        failures.push(m);
                    }
                }
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = std::fs::remove_file(&filler);
    ctx.fault(&Fault {
        kind: "disk_full".into(),
        at,
        until: Some(mono_ns()),
        name: None,
        fence: None,
        expires_in: None,
        inspected_at: None,
        pid: None,
        note: format!("a 16 MiB tmpfs filled for {} ms", full_for.as_millis()),
    });
    notes.push(format!(
        "disk full: {attempts} new-lock attempts by the harness, errors: {failures:?}"
    ));
    for m in &failures {
        if !(m.contains("full") || m.contains("space")) {
            notes.push(format!("  unclear disk-full error: {m}"));
        }
    }
    // After space returns, a new lock works again.
    if let Some(lm) = ctx.admin() {
        match lm
            .lock("after-space")
            .ttl(ctx.plan.ttl)
            .wait(locksmith::Wait::For(Duration::from_secs(5)))
            .acquire()
        {
            Ok(g) => {
                let _ = g.release();
                notes.push("a new lock after space returned: ok".into());
            }
            Err(e) => notes.push(format!(
                "VIOLATION a new lock after space returned failed: {e}"
            )),
        }
    }
    ctx.sleep_until_end();
    notes
}

/// `torture-sqlite`: a second connection to the lock file that holds its write lock.
pub(crate) fn sqlite_helper_main(db: &Path, action: &str, hold: Duration) {
    use std::io::Write;
    let conn = rusqlite::Connection::open(db).expect("the lock file opens");
    conn.busy_timeout(Duration::from_secs(30))
        .expect("busy timeout");
    match action {
        "delete-all" => conn
            .execute_batch(
                "BEGIN IMMEDIATE; DELETE FROM locksmith_locks; DELETE FROM locksmith_fence;",
            )
            .expect("a write transaction"),
        _ => conn
            .execute_batch("BEGIN EXCLUSIVE; UPDATE locksmith_locks SET pid = pid;")
            .expect("an exclusive transaction"),
    }
    println!("ready");
    let _ = std::io::stdout().flush();
    std::thread::sleep(hold);
    let _ = conn.execute_batch("COMMIT");
}

/// Kills (SIGKILL) and restarts the Redis server every 2 × TTL.
fn redis_restarts(
    ctx: &mut Ctx,
    rt: &tokio::runtime::Runtime,
    server: &mut locksmith_testkit::servers::redis::RedisServer,
) {
    while ctx.time_left() > ctx.plan.ttl * 4 {
        std::thread::sleep(ctx.plan.ttl * 2);
        let at = mono_ns();
        rt.block_on(server.restart());
        ctx.fault(&Fault {
            kind: "redis_restart".into(),
            at,
            until: Some(mono_ns()),
            name: None,
            fence: None,
            expires_in: None,
            inspected_at: None,
            pid: None,
            note: "redis-server SIGKILLed and started again on its data dir".into(),
        });
    }
    ctx.sleep_until_end();
}

/// Drops every client connection of the Redis server every TTL / 2.
fn redis_client_kills(
    ctx: &mut Ctx,
    rt: &tokio::runtime::Runtime,
    server: &locksmith_testkit::servers::redis::RedisServer,
) {
    while ctx.time_left() > ctx.plan.ttl * 2 {
        std::thread::sleep(ctx.plan.ttl / 2);
        let at = mono_ns();
        let mut killed = 0;
        for kind in ["normal", "pubsub"] {
            if let locksmith_testkit::servers::redis::Reply::Int(n) =
                rt.block_on(server.command(&["CLIENT", "KILL", "TYPE", kind]))
            {
                killed += n;
            }
        }
        ctx.fault(&Fault {
            kind: "redis_client_kill".into(),
            at,
            until: Some(mono_ns()),
            name: None,
            fence: None,
            expires_in: None,
            inspected_at: None,
            pid: None,
            note: format!("CLIENT KILL dropped {killed} connections"),
        });
    }
    ctx.sleep_until_end();
}

/// Freezes the Redis server (SIGSTOP) for 1.5 × TTL every 3 × TTL.
fn redis_freezes(ctx: &mut Ctx, server: &locksmith_testkit::servers::redis::RedisServer) {
    let freeze = ctx.plan.ttl * 3 / 2;
    while ctx.time_left() > freeze + ctx.plan.ttl * 3 {
        std::thread::sleep(ctx.plan.ttl * 3 / 2);
        let at = mono_ns();
        server.set_frozen(true);
        std::thread::sleep(freeze);
        server.set_frozen(false);
        ctx.fault(&Fault {
            kind: "redis_freeze".into(),
            at,
            until: Some(mono_ns()),
            name: None,
            fence: None,
            expires_in: None,
            inspected_at: None,
            pid: None,
            note: format!("redis-server SIGSTOPped for {} ms", freeze.as_millis()),
        });
    }
    ctx.sleep_until_end();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_default_run_takes_the_scenarios_of_its_store() {
        let picked = |store: Option<&str>| -> Vec<String> {
            Scenario::value_variants()
                .iter()
                .filter(|s| s.applies_to(store))
                .map(|s| s.label())
                .collect()
        };
        let shared = ["baseline", "sigkill", "sigstop"];
        let sqlite = [
            &shared[..],
            &["sqlite-tx-kill", "sqlite-busy", "disk-full", "clock-step"],
        ]
        .concat();
        assert_eq!(picked(None), sqlite);
        assert_eq!(picked(Some("sqlite:///tmp/l.db")), sqlite);
        assert_eq!(
            picked(Some("redis")),
            [
                &shared[..],
                &[
                    "redis-restart",
                    "redis-client-kill",
                    "redis-freeze",
                    "redis-restart-volatile"
                ]
            ]
            .concat()
        );
        assert_eq!(
            picked(Some("postgres")),
            [
                &shared[..],
                &["pg-restart", "pg-kill-connections", "pg-freeze"]
            ]
            .concat()
        );
        assert_eq!(
            picked(Some("mysql")),
            [
                &shared[..],
                &["server-restart", "conn-kill", "server-freeze"]
            ]
            .concat()
        );
        // A server of the user's own: only what needs no server of the harness's.
        assert_eq!(picked(Some("postgres://u@h/db")), shared);
    }

    #[test]
    fn proc_locks_lines() {
        let held = "1: POSIX  ADVISORY  WRITE 4242 fd:01:1234 120 120";
        assert_eq!(held_write_lock(held), Some((4242, 1234)));
        let read = "2: POSIX  ADVISORY  READ 4242 fd:01:1234 123 123";
        assert_eq!(held_write_lock(read), None);
        let waiting = "3: -> POSIX  ADVISORY  WRITE 4242 fd:01:1234 120 120";
        assert_eq!(held_write_lock(waiting), None);
    }

    #[test]
    fn a_write_transaction_is_seen_and_its_end_too() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("t.db");
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        conn.execute_batch("CREATE TABLE t (x INTEGER)").unwrap();
        let me = std::process::id() as i32;
        assert!(!holds_sqlite_write_lock(me, &[], &db));
        conn.execute_batch("BEGIN IMMEDIATE; INSERT INTO t VALUES (1)")
            .unwrap();
        assert!(holds_sqlite_write_lock(me, &[], &db));
        conn.execute_batch("COMMIT").unwrap();
        assert!(!holds_sqlite_write_lock(me, &[], &db));
    }
}
