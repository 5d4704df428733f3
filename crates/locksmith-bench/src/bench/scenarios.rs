//! The scenarios. Each returns the samples of one run; the caller interleaves runs.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use locksmith::{Expired, ListQuery, Locksmith, Namespace, SetPolicy};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use super::alloc::Window;
use super::counting::Counting;
use super::raw::{Raw, RawPostgres};
use super::stats::{Better, Sample, quantile};

pub(crate) type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Nanoseconds on `CLOCK_MONOTONIC`: comparable across processes on one machine (unlike
/// `Instant`, whose value is opaque).
pub(crate) fn mono_ns() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("CLOCK_MONOTONIC");
    t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
}

/// What every scenario of one store needs.
pub(crate) struct Env {
    /// The store's label in the table.
    pub(crate) label: String,
    pub(crate) url: String,
    pub(crate) lm: Locksmith,
    /// The raw baseline an async caller compares with, and its label.
    pub(crate) raw: (String, Raw),
    /// A second raw baseline, shown beside the first (SQLite through a thread + oneshot).
    pub(crate) raw_also: Option<(String, Raw)>,
    pub(crate) cross_process: bool,
    /// How long each timed scenario runs.
    pub(crate) budget: Duration,
    pub(crate) waiters: usize,
    pub(crate) many: usize,
    pub(crate) cli_runs: usize,
    pub(crate) run: usize,
    pub(crate) dir: PathBuf,
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// cycles/s, p50 and p99 (µs) of a latency series over `elapsed`.
fn rate_samples(
    scenario: &str,
    mut lat: Vec<f64>,
    elapsed: Duration,
    base: Option<&str>,
) -> Vec<Sample> {
    let n = lat.len() as f64;
    let p50 = quantile(&mut lat, 0.5);
    let p99 = quantile(&mut lat, 0.99);
    let mut out = vec![
        Sample::new(
            scenario,
            "cycles/s",
            "1/s",
            Better::Higher,
            n / elapsed.as_secs_f64(),
        ),
        Sample::new(scenario, "p50", "µs", Better::Lower, p50),
        Sample::new(scenario, "p99", "µs", Better::Lower, p99),
    ];
    if let Some(base) = base {
        out = out.into_iter().map(|s| s.against(base)).collect();
    }
    out
}

/// One task, acquire + release, for `budget`: latencies in µs, and the time taken.
async fn lm_cycles(
    lm: Locksmith,
    fresh: bool,
    tag: String,
    budget: Duration,
) -> Res<(Vec<f64>, Duration, Usage)> {
    let mut lat = Vec::new();
    let switched = usage();
    let start = Instant::now();
    let mut i = 0u64;
    let same = format!("{tag}-same");
    while start.elapsed() < budget {
        let name = if fresh {
            format!("{tag}-{i}")
        } else {
            same.clone()
        };
        let t = Instant::now();
        let guard = lm.lock(&name).acquire().await?;
        guard.release().await?;
        lat.push(us(t.elapsed()));
        i += 1;
    }
    let elapsed = start.elapsed();
    Ok((lat, elapsed, usage() - switched))
}

/// What this whole process (every thread: the runtime's workers, a store's worker thread)
/// has used so far (`getrusage(RUSAGE_SELF)`): context switches, voluntary and involuntary,
/// and CPU time (user + system) in µs.
fn usage() -> Usage {
    let Ok(u) = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF) else {
        return Usage::default();
    };
    let micros = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 * 1e6 + t.tv_usec() as f64;
    Usage {
        switches: u.voluntary_context_switches() + u.involuntary_context_switches(),
        cpu_us: micros(u.user_time()) + micros(u.system_time()),
    }
}

/// Process resource usage, see [`usage`].
#[derive(Clone, Copy, Debug, Default)]
struct Usage {
    switches: i64,
    cpu_us: f64,
}

impl std::ops::Sub for Usage {
    type Output = Usage;
    fn sub(self, earlier: Usage) -> Usage {
        Usage {
            switches: self.switches - earlier.switches,
            cpu_us: self.cpu_us - earlier.cpu_us,
        }
    }
}

async fn raw_cycles(
    raw: Raw,
    fresh: bool,
    tag: String,
    budget: Duration,
) -> (Vec<f64>, Duration, Usage) {
    let mut lat = Vec::new();
    let switched = usage();
    let start = Instant::now();
    let mut i = 0u64;
    let same = format!("{tag}-same");
    while start.elapsed() < budget {
        let name = if fresh {
            format!("{tag}-{i}")
        } else {
            same.clone()
        };
        let token = fastrand::u128(..);
        let t = Instant::now();
        assert!(
            raw.acquire(&name, token).await,
            "raw baseline: {name} is free"
        );
        assert!(
            raw.release(&name, token).await,
            "raw baseline: {name} is held"
        );
        lat.push(us(t.elapsed()));
        i += 1;
    }
    let elapsed = start.elapsed();
    (lat, elapsed, usage() - switched)
}

/// Uncontended: same name / new name each cycle, from the main task and a spawned task;
/// the raw baseline(s) the same way; and locksmith's overhead per cycle in µs.
pub(crate) async fn uncontended(env: &Env) -> Res<Vec<Sample>> {
    let mut out = Vec::new();
    if let Raw::Redis(raw) = &env.raw.1 {
        // One bare round trip on the raw connection: what a handoff is compared with.
        let mut lat = Vec::new();
        let start = Instant::now();
        while start.elapsed() < env.budget / 2 {
            let t = Instant::now();
            raw.ping().await;
            lat.push(us(t.elapsed()));
        }
        out.extend(rate_samples(
            "raw redis-rs: round trip (PING)",
            lat,
            start.elapsed(),
            None,
        ));
    }
    if let Raw::Postgres(raw) = &env.raw.1 {
        // What a handoff is compared with: one bare round trip, and the release statement
        // alone (a round trip plus its commit).
        let mut rtt = Vec::new();
        let start = Instant::now();
        while start.elapsed() < env.budget / 2 {
            let t = Instant::now();
            raw.ping().await;
            rtt.push(us(t.elapsed()));
        }
        let ping_took = start.elapsed();
        out.extend(rate_samples(
            "raw tokio-postgres: round trip (SELECT 1)",
            rtt,
            ping_took,
            None,
        ));
        out.extend(
            release_alone(
                raw,
                &format!("u{}-release-only", env.run),
                env.budget / 2,
                "raw tokio-postgres: release statement alone",
            )
            .await,
        );
    }
    for fresh in [false, true] {
        for spawned in [false, true] {
            let what = format!(
                "uncontended {} {}",
                if fresh { "new-name" } else { "same-name" },
                if spawned { "spawned" } else { "main-task" }
            );
            let tag = format!("u{}-{}-{}", env.run, fresh as u8, spawned as u8);
            let budget = env.budget;
            let (raw_label, raw) = &env.raw;
            let raw_name = format!("{raw_label}: {what}");
            let raw_run = raw_cycles(raw.clone(), fresh, format!("{tag}-raw"), budget);
            let lm_run = lm_cycles(env.lm.clone(), fresh, tag.clone(), budget);
            let server_cpu = || async {
                match &env.raw.1 {
                    Raw::Redis(r) => Some(r.server_cpu_us().await),
                    _ => None,
                }
            };
            let before_raw = server_cpu().await;
            let raw_result = if spawned {
                tokio::spawn(raw_run).await?
            } else {
                raw_run.await
            };
            let before_lm = server_cpu().await;
            let lm_result = if spawned {
                tokio::spawn(lm_run).await??
            } else {
                lm_run.await?
            };
            let after_lm = server_cpu().await;
            let ((rl, re, rs), (ll, le, ls)) = (raw_result, lm_result);
            if let (Some(b_raw), Some(b_lm), Some(a_lm)) = (before_raw, before_lm, after_lm) {
                // The server's own CPU per cycle (the two `INFO` calls between runs are
                // noise next to thousands of cycles).
                out.push(Sample::new(
                    &raw_name,
                    "server cpu/cycle",
                    "µs",
                    Better::Lower,
                    (b_lm - b_raw) / rl.len() as f64,
                ));
                out.push(
                    Sample::new(
                        &what,
                        "server cpu/cycle",
                        "µs",
                        Better::Lower,
                        (a_lm - b_lm) / ll.len() as f64,
                    )
                    .against(&raw_name),
                );
            }
            let raw_mean = us(re) / rl.len() as f64;
            let lm_mean = us(le) / ll.len() as f64;
            let (raw_cycles_n, lm_cycles_n) = (rl.len() as f64, ll.len() as f64);
            out.extend(rate_samples(&raw_name, rl, re, None));
            out.extend(rate_samples(&what, ll, le, Some(&raw_name)));
            for (metric, unit, raw_value, lm_value) in [
                (
                    "switches/cycle",
                    "1",
                    rs.switches as f64 / raw_cycles_n,
                    ls.switches as f64 / lm_cycles_n,
                ),
                (
                    "cpu/cycle",
                    "µs",
                    rs.cpu_us / raw_cycles_n,
                    ls.cpu_us / lm_cycles_n,
                ),
            ] {
                out.push(Sample::new(
                    &raw_name,
                    metric,
                    unit,
                    Better::Lower,
                    raw_value,
                ));
                out.push(
                    Sample::new(&what, metric, unit, Better::Lower, lm_value).against(&raw_name),
                );
            }
            out.push(Sample::new(
                &what,
                "overhead/cycle",
                "µs",
                Better::Lower,
                lm_mean - raw_mean,
            ));
            if let Some((label, also)) = &env.raw_also
                && !spawned
            {
                let (dl, de, _) =
                    raw_cycles(also.clone(), fresh, format!("{tag}-also"), budget).await;
                out.extend(rate_samples(&format!("{label}: {what}"), dl, de, None));
            }
        }
    }
    Ok(out)
}

/// 64 tasks on distinct names: cycles/s, against the raw baseline the same way.
pub(crate) async fn parallel(env: &Env) -> Res<Vec<Sample>> {
    const TASKS: usize = 64;
    let budget = env.budget;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let raw = env.raw.1.clone();
        let name = format!("p{}-raw-{t}", env.run);
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while start.elapsed() < budget {
                let token = fastrand::u128(..);
                assert!(raw.acquire(&name, token).await);
                assert!(raw.release(&name, token).await);
                n += 1;
            }
            n
        }));
    }
    let mut raw_total = 0;
    for t in tasks {
        raw_total += t.await?;
    }
    let raw_rate = raw_total as f64 / start.elapsed().as_secs_f64();

    let start = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let lm = env.lm.clone();
        let name = format!("p{}-{t}", env.run);
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while start.elapsed() < budget {
                lm.lock(&name).acquire().await?.release().await?;
                n += 1;
            }
            Ok::<_, locksmith::Error>(n)
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await??;
    }
    let rate = total as f64 / start.elapsed().as_secs_f64();
    let raw_name = format!("{}: parallel 64 tasks", env.raw.0);
    Ok(vec![
        Sample::new(&raw_name, "cycles/s", "1/s", Better::Higher, raw_rate),
        Sample::new("parallel 64 tasks", "cycles/s", "1/s", Better::Higher, rate)
            .against(&raw_name),
    ])
}

/// What one contender reports.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Contender {
    pub(crate) cycles: u64,
    pub(crate) switches: u64,
    pub(crate) max_wait_ns: u64,
    /// Release → this holder's acquire returned, for acquisitions that changed holder (ns).
    pub(crate) handoffs: Vec<u64>,
}

/// The counter and the last release, shared by the contenders: in memory (one process) or
/// in a file (several). Read and written without any atomicity of its own.
pub(crate) trait Shared: Send + Sync {
    fn read(&self) -> (u64, u64, u64);
    fn write(&self, counter: u64, released_ns: u64, holder: u64);
}

#[derive(Default)]
struct MemShared(AtomicU64, AtomicU64, AtomicU64);

impl Shared for MemShared {
    fn read(&self) -> (u64, u64, u64) {
        (
            self.0.load(Ordering::Relaxed),
            self.1.load(Ordering::Relaxed),
            self.2.load(Ordering::Relaxed),
        )
    }
    fn write(&self, counter: u64, released_ns: u64, holder: u64) {
        self.0.store(counter, Ordering::Relaxed);
        self.1.store(released_ns, Ordering::Relaxed);
        self.2.store(holder, Ordering::Relaxed);
    }
}

/// The shared state in a file: `counter released_ns holder`, each 20 digits wide, so a write
/// overwrites the previous one in place. `pwrite` at offset 0 costs about 2.5 µs here; the
/// `std::fs::write` used before (open, truncate, write) cost about 190 µs on this VM's ext4,
/// and the holder's last write lies inside every measured handoff (session 11).
pub(crate) struct FileShared(std::fs::File);

impl FileShared {
    /// Creates (or resets) the file at `path`, with every field 0.
    pub(crate) fn create(path: &std::path::Path) -> std::io::Result<FileShared> {
        let shared = FileShared::open(path)?;
        shared.put(0, 0, 0)?;
        Ok(shared)
    }

    /// Opens the file a [`create`](FileShared::create) made.
    pub(crate) fn open(path: &std::path::Path) -> std::io::Result<FileShared> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        Ok(FileShared(file))
    }

    fn put(&self, counter: u64, released_ns: u64, holder: u64) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        let line = format!("{counter:020} {released_ns:020} {holder:020}\n");
        self.0.write_all_at(line.as_bytes(), 0)
    }
}

impl Shared for FileShared {
    fn read(&self) -> (u64, u64, u64) {
        use std::os::unix::fs::FileExt;
        let mut buf = [0u8; 63];
        let n = self.0.read_at(&mut buf, 0).unwrap_or(0);
        let text = std::str::from_utf8(&buf[..n]).unwrap_or_default();
        let mut it = text.split_whitespace().map(|w| w.parse().unwrap_or(0));
        (
            it.next().unwrap_or(0),
            it.next().unwrap_or(0),
            it.next().unwrap_or(0),
        )
    }
    fn write(&self, counter: u64, released_ns: u64, holder: u64) {
        self.put(counter, released_ns, holder)
            .expect("counter file");
    }
}

/// What a contender locks with.
#[derive(Clone)]
pub(crate) enum Locker {
    Lm(Locksmith, String),
    /// The in-process raw baseline: a `tokio::sync::Mutex` (FIFO, like locksmith's queue).
    Tokio(Arc<tokio::sync::Mutex<()>>),
    /// A networked store's raw baseline: its grant statement retried in a loop until it
    /// succeeds, then its release statement (no queue, no notification).
    RawSpin(Raw, String),
}

/// One contender: acquire (waiting) → read-modify-write of the shared counter → release,
/// until `until_ns` (CLOCK_MONOTONIC).
pub(crate) async fn contend(
    locker: Locker,
    shared: Arc<dyn Shared>,
    me: u64,
    until_ns: u64,
) -> Res<Contender> {
    let mut out = Contender::default();
    while mono_ns() < until_ns {
        let asked = mono_ns();
        enum Hold {
            Lm(locksmith::LockGuard),
            Tokio(tokio::sync::OwnedMutexGuard<()>),
            Raw(u128),
        }
        let hold = match &locker {
            Locker::Lm(lm, name) => Hold::Lm(lm.lock(name).acquire().await?),
            Locker::Tokio(m) => Hold::Tokio(m.clone().lock_owned().await),
            Locker::RawSpin(raw, name) => {
                let token = uuid::Uuid::new_v4().as_u128();
                while !raw.acquire(name, token).await {
                    tokio::task::yield_now().await;
                }
                Hold::Raw(token)
            }
        };
        let got = mono_ns();
        out.max_wait_ns = out.max_wait_ns.max(got - asked);
        let (counter, released, holder) = shared.read();
        if holder != me {
            out.switches += 1;
            if released != 0 {
                out.handoffs.push(got.saturating_sub(released));
            }
        }
        // Not atomic on its own: another holder in between would lose an update.
        tokio::task::yield_now().await;
        shared.write(counter + 1, 0, me);
        out.cycles += 1;
        shared.write(counter + 1, mono_ns(), me);
        match hold {
            Hold::Lm(g) => g.release().await?,
            Hold::Tokio(g) => drop(g),
            Hold::Raw(token) => {
                if let Locker::RawSpin(raw, name) = &locker {
                    raw.release(name, token).await;
                }
            }
        }
    }
    Ok(out)
}

fn contended_samples(
    scenario: &str,
    parts: Vec<Contender>,
    counter: u64,
    elapsed: Duration,
    base: Option<&str>,
) -> Vec<Sample> {
    let cycles: u64 = parts.iter().map(|c| c.cycles).sum();
    let switches: u64 = parts.iter().map(|c| c.switches).sum();
    let max_wait = parts.iter().map(|c| c.max_wait_ns).max().unwrap_or(0);
    let mut handoffs: Vec<f64> = parts
        .iter()
        .flat_map(|c| c.handoffs.iter().map(|&h| h as f64 / 1e3))
        .collect();
    let p50 = quantile(&mut handoffs, 0.5);
    let p99 = quantile(&mut handoffs, 0.99);
    let with = |s: Sample| match base {
        Some(b) => s.against(b),
        None => s,
    };
    vec![
        with(Sample::new(
            scenario,
            "cycles/s",
            "1/s",
            Better::Higher,
            cycles as f64 / elapsed.as_secs_f64(),
        )),
        with(Sample::new(
            scenario,
            "handoff p50",
            "µs",
            Better::Lower,
            p50,
        )),
        with(Sample::new(
            scenario,
            "handoff p99",
            "µs",
            Better::Lower,
            p99,
        )),
        Sample::new(
            scenario,
            "holder switches",
            "% of cycles",
            Better::Neither,
            100.0 * switches as f64 / cycles.max(1) as f64,
        ),
        Sample::new(
            scenario,
            "longest wait",
            "ms",
            Better::Lower,
            max_wait as f64 / 1e6,
        ),
        Sample::new(
            scenario,
            "lost updates",
            "count",
            Better::Neither,
            cycles as f64 - counter as f64,
        ),
    ]
}

/// K contenders on one name as tasks in this process (and, for memory, the tokio Mutex
/// baseline).
pub(crate) async fn contended_tasks(
    env: &Env,
    k: usize,
    memory_baseline: bool,
) -> Res<Vec<Sample>> {
    let mut out = Vec::new();
    let scenario = format!("contended K={k} tasks");
    let base = format!("raw tokio Mutex: contended K={k} tasks");
    let spin = matches!(env.raw.1, Raw::Postgres(_));
    let base = if spin {
        format!(
            "{}: contended K={k} tasks, grant retried in a loop",
            env.raw.0
        )
    } else {
        base
    };
    let lockers: Vec<(String, Locker)> = {
        let mut v = Vec::new();
        if memory_baseline {
            v.push((base.clone(), Locker::Tokio(Arc::default())));
        }
        if spin {
            v.push((
                base.clone(),
                Locker::RawSpin(env.raw.1.clone(), format!("c{}-{k}", env.run)),
            ));
        }
        v.push((
            scenario.clone(),
            Locker::Lm(env.lm.clone(), format!("c{}-{k}", env.run)),
        ));
        v
    };
    for (label, locker) in lockers {
        let shared: Arc<MemShared> = Arc::default();
        let start = Instant::now();
        let until = mono_ns() + env.budget.as_nanos() as u64;
        let mut tasks = Vec::new();
        for me in 1..=k as u64 {
            let (locker, shared) = (locker.clone(), shared.clone() as Arc<dyn Shared>);
            tasks.push(tokio::spawn(contend(locker, shared, me, until)));
        }
        let mut parts = Vec::new();
        for t in tasks {
            parts.push(t.await??);
        }
        let elapsed = start.elapsed();
        let counter = shared.read().0;
        let b = (label != base && (memory_baseline || spin)).then_some(base.as_str());
        out.extend(contended_samples(&label, parts, counter, elapsed, b));
    }
    Ok(out)
}

/// K contenders on one name as separate processes (this binary, re-executed as workers).
pub(crate) async fn contended_processes(env: &Env, k: usize) -> Res<Vec<Sample>> {
    let scenario = format!("contended K={k} processes");
    let file = env.dir.join(format!("counter-{}-{k}", env.run));
    FileShared::create(&file)?;
    let name = format!("cp{}-{k}", env.run);
    // Workers start together, once every process is up.
    let start_ns = mono_ns() + 400_000_000;
    let until_ns = start_ns + env.budget.as_nanos() as u64;
    let exe = std::env::current_exe()?;
    let mut children = Vec::new();
    for me in 1..=k {
        let child = tokio::process::Command::new(&exe)
            .args([
                super::WORKER,
                &env.url,
                &name,
                &file.display().to_string(),
                &me.to_string(),
                &start_ns.to_string(),
                &until_ns.to_string(),
            ])
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        children.push(child);
    }
    let mut parts = Vec::new();
    for child in children {
        let out = child.wait_with_output().await?;
        if !out.status.success() {
            return Err(format!("worker failed: {}", out.status).into());
        }
        parts.push(serde_json::from_slice::<Contender>(&out.stdout)?);
    }
    let elapsed = Duration::from_nanos(mono_ns().saturating_sub(start_ns)).max(env.budget);
    let counter = FileShared::open(&file)?.read().0;
    Ok(contended_samples(&scenario, parts, counter, elapsed, None))
}

/// The worker process of [`contended_processes`]: args URL NAME FILE ID START_NS UNTIL_NS;
/// prints its [`Contender`] as JSON.
pub(crate) fn worker(args: &[String]) -> Res<()> {
    let [url, name, file, me, start_ns, until_ns] = args else {
        return Err("worker args: URL NAME FILE ID START_NS UNTIL_NS".into());
    };
    let (me, start_ns, until_ns): (u64, u64, u64) =
        (me.parse()?, start_ns.parse()?, until_ns.parse()?);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let out = rt.block_on(async {
        let lm = Locksmith::connect(url).await?;
        let wait = start_ns.saturating_sub(mono_ns());
        tokio::time::sleep(Duration::from_nanos(wait)).await;
        let shared: Arc<dyn Shared> = Arc::new(FileShared::open(file.as_ref())?);
        let out = contend(Locker::Lm(lm.clone(), name.clone()), shared, me, until_ns).await?;
        lm.close().await?;
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(out)
    })?;
    println!("{}", serde_json::to_string(&out)?);
    Ok(())
}

/// The PostgreSQL side of [`hop_worker`]: `LISTEN`s on `channel` and returns how long each
/// of `n` notifications took to arrive, in ns.
async fn listen_hops(url: &str, channel: &str, n: usize) -> Res<Vec<u64>> {
    use std::io::Write;
    use tokio_postgres::AsyncMessage;
    let (client, mut conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    // The connection is driven by its own task, as locksmith's listener is.
    tokio::spawn(async move {
        while let Some(Ok(m)) = std::future::poll_fn(|cx| conn.poll_message(cx)).await {
            if let AsyncMessage::Notification(n) = m {
                let now = mono_ns();
                if tx.send((now, n.payload().to_string())).is_err() {
                    break;
                }
            }
        }
    });
    client
        .batch_execute(&format!("LISTEN \"{channel}\""))
        .await?;
    println!("ready");
    std::io::stdout().flush()?;
    let mut hops = Vec::with_capacity(n);
    while hops.len() < n {
        let (now, payload) = rx.recv().await.ok_or("the listener closed")?;
        let sent: u64 = payload.parse()?;
        hops.push(now.saturating_sub(sent));
    }
    Ok(hops)
}

/// `argv[1]` of the pub/sub hop worker process (this binary re-executed).
pub(crate) const HOP_WORKER: &str = "__bench-hop";

/// How many messages [`pubsub_hop`] sends.
const HOPS: usize = 400;

/// The floor of any handoff that crosses processes through the store: the time from one
/// process starting a `PUBLISH` (Redis) or a `NOTIFY` statement (PostgreSQL: a round trip
/// and a commit, at which the notification is sent) to a subscriber in another, idle
/// process receiving it. A release that hands the lock over is such a command, and its
/// waiter such a subscriber. Both processes read `CLOCK_MONOTONIC`.
pub(crate) async fn pubsub_hop(env: &Env, raw: &Raw) -> Res<Vec<Sample>> {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt};
    let (channel, scenario) = match raw {
        Raw::Postgres(_) => (
            format!("rawbench_hop_{}", env.run),
            "raw tokio-postgres: NOTIFY statement → listener in another process",
        ),
        _ => (
            format!("rawbench:hop:{}", env.run),
            "raw redis-rs: PUBLISH → subscriber in another process",
        ),
    };
    let mut child = tokio::process::Command::new(std::env::current_exe()?)
        .args([HOP_WORKER, &env.url, &channel, &HOPS.to_string()])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut out = tokio::io::BufReader::new(child.stdout.take().ok_or("no worker stdout")?);
    let mut line = String::new();
    out.read_line(&mut line).await?;
    if line.trim() != "ready" {
        return Err(format!("hop worker: {line:?}").into());
    }
    for _ in 0..HOPS {
        match raw {
            Raw::Redis(raw) => {
                if raw.publish(&channel, &mono_ns().to_string()).await != 1 {
                    return Err("hop worker: not subscribed".into());
                }
            }
            Raw::Postgres(raw) => raw.notify(&channel, &mono_ns().to_string()).await,
            _ => return Err("no pub/sub on this store".into()),
        }
        // Let the subscriber go idle again, as a waiter is between handoffs.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let mut rest = String::new();
    out.read_to_string(&mut rest).await?;
    child.wait().await?;
    let hops: Vec<u64> = serde_json::from_str(rest.trim())?;
    let mut lat: Vec<f64> = hops.iter().map(|&ns| ns as f64 / 1e3).collect();
    Ok(vec![
        Sample::new(
            scenario,
            "p50",
            "µs",
            Better::Lower,
            quantile(&mut lat, 0.5),
        ),
        Sample::new(
            scenario,
            "p99",
            "µs",
            Better::Lower,
            quantile(&mut lat, 0.99),
        ),
    ])
}

/// locksmith's release statement alone, uncontended, through the raw driver for `budget`:
/// each cycle grants `name` and times only the release.
async fn release_alone(
    raw: &RawPostgres,
    name: &str,
    budget: Duration,
    scenario: &str,
) -> Vec<Sample> {
    let mut lat = Vec::new();
    let start = Instant::now();
    while start.elapsed() < budget {
        let token = fastrand::u128(..);
        assert!(
            raw.acquire(name, token).await,
            "raw baseline: {name} is free"
        );
        let t = Instant::now();
        assert!(
            raw.release(name, token).await,
            "raw baseline: {name} is held"
        );
        lat.push(us(t.elapsed()));
    }
    rate_samples(scenario, lat, start.elapsed(), None)
}

/// What one `NOTIFY` costs the server with `k` other sessions listening in the database:
/// PostgreSQL up to version 18 signals every listening backend of the database at each commit
/// that notifies, whatever channels they listen on (version 19 keeps a map of channels to
/// listeners). K processes waiting on PostgreSQL are K such sessions, one listener each, so
/// this is the floor of a handoff among K processes. Reported: the `NOTIFY` statement's round
/// trip (to a channel nobody listens on) with `k` idle sessions each listening on a channel
/// of its own, and locksmith's release statement (uncontended) with the same sessions.
pub(crate) async fn notify_fanout(env: &Env, raw: &RawPostgres, k: usize) -> Res<Vec<Sample>> {
    let base = env.url.split_once('?').map_or(env.url.as_str(), |(b, _)| b);
    let mut listeners = Vec::with_capacity(k);
    for i in 0..k {
        let (client, conn) = tokio_postgres::connect(base, tokio_postgres::NoTls).await?;
        let conn = tokio::spawn(async move {
            let _ = conn.await;
        });
        client
            .batch_execute(&format!("LISTEN \"rawbench_idle_{}_{i}\"", env.run))
            .await?;
        listeners.push((client, conn));
    }
    let channel = format!("rawbench_nobody_{}", env.run);
    let mut lat = Vec::new();
    let start = Instant::now();
    while start.elapsed() < env.budget / 2 {
        let t = Instant::now();
        raw.notify(&channel, "x").await;
        lat.push(us(t.elapsed()));
    }
    let took = start.elapsed();
    let mut out = rate_samples(
        &format!("raw tokio-postgres: NOTIFY statement, {k} other sessions listening"),
        lat,
        took,
        None,
    );
    // locksmith's release statement, uncontended, with the same sessions listening: a
    // release that notified would pay the fan-out above.
    out.extend(
        release_alone(
            raw,
            &format!("fanout{}-{k}", env.run),
            env.budget / 2,
            &format!("raw tokio-postgres: release statement alone, {k} other sessions listening"),
        )
        .await,
    );
    for (client, conn) in listeners {
        drop(client);
        let _ = conn.await;
    }
    Ok(out)
}

/// The worker process of [`pubsub_hop`]: args URL CHANNEL N. Subscribes (`LISTEN`s on
/// PostgreSQL), prints `ready`, receives N messages (each the sender's `CLOCK_MONOTONIC` in
/// ns) and prints how long each took, as a JSON array of ns.
pub(crate) fn hop_worker(args: &[String]) -> Res<()> {
    use futures_util::StreamExt;
    use std::io::Write;
    let [url, channel, n] = args else {
        return Err("hop worker args: URL CHANNEL N".into());
    };
    let n: usize = n.parse()?;
    let base = url.split_once('?').map_or(url.as_str(), |(b, _)| b);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    if base.starts_with("postgres") {
        let hops = rt.block_on(listen_hops(base, channel, n))?;
        println!("{}", serde_json::to_string(&hops)?);
        return Ok(());
    }
    let hops = rt.block_on(async {
        let client = redis::Client::open(base)?;
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(channel.as_str()).await?;
        println!("ready");
        std::io::stdout().flush()?;
        let mut messages = pubsub.on_message();
        let mut hops = Vec::with_capacity(n);
        while hops.len() < n {
            let msg = messages.next().await.ok_or("the subscription closed")?;
            let now = mono_ns();
            let sent: u64 = msg.get_payload::<String>()?.parse()?;
            hops.push(now.saturating_sub(sent));
        }
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(hops)
    })?;
    println!("{}", serde_json::to_string(&hops)?);
    Ok(())
}

/// 10,000 (`env.waiters`) tasks wait on one name; 100 releases hand it on. Store calls per
/// handoff (a counting wrapper around the store) and client heap bytes per waiter.
pub(crate) async fn waiters(env: &Env) -> Res<Vec<Sample>> {
    const HANDOFFS: u64 = 100;
    let (counting, calls) = Counting::new(env.lm.store());
    let lm = Locksmith::with_store(counting, Namespace::new(env.lm.namespace())?, &env.url);
    let name = format!("w{}", env.run);
    let holder = lm.lock(&name).acquire().await?;
    let done = Arc::new(AtomicU64::new(0));
    let all_done = Arc::new(Notify::new());
    let queued = Arc::new(AtomicUsize::new(0));

    // The raw reference: as many tasks waiting on a held tokio Mutex.
    let raw_per_waiter = {
        let mutex = Arc::new(tokio::sync::Mutex::new(()));
        let held = mutex.clone().lock_owned().await;
        let window = Window::start();
        let queued = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..env.waiters)
            .map(|_| {
                let (mutex, queued) = (mutex.clone(), queued.clone());
                tokio::spawn(async move {
                    queued.fetch_add(1, Ordering::Relaxed);
                    drop(mutex.lock().await);
                })
            })
            .collect();
        while queued.load(Ordering::Relaxed) < env.waiters {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let per = window.live() as f64 / env.waiters as f64;
        drop(window);
        drop(held);
        for t in tasks {
            t.await?;
        }
        per
    };

    let mem_before = match &env.raw.1 {
        Raw::Redis(r) => Some(r.info_field("used_memory").await),
        _ => None,
    };
    let window = Window::start();
    let mut tasks = Vec::with_capacity(env.waiters);
    for _ in 0..env.waiters {
        let (lm, name, done, all_done, queued) = (
            lm.clone(),
            name.clone(),
            done.clone(),
            all_done.clone(),
            queued.clone(),
        );
        tasks.push(tokio::spawn(async move {
            queued.fetch_add(1, Ordering::Relaxed);
            let guard = lm.lock(&name).acquire().await?;
            if done.fetch_add(1, Ordering::SeqCst) + 1 == HANDOFFS {
                all_done.notify_one();
                // Keep the lock: the 100th holder ends the measurement.
                std::future::pending::<()>().await;
            }
            guard.release().await?;
            Ok::<_, locksmith::Error>(())
        }));
    }
    while queued.load(Ordering::Relaxed) < env.waiters {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Let every waiter reach its wait.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let per_waiter = window.live() as f64 / env.waiters as f64;
    drop(window);
    let server_mem_per_waiter = match (&env.raw.1, mem_before) {
        (Raw::Redis(r), Some(before)) => {
            Some((r.info_field("used_memory").await - before) / env.waiters as f64)
        }
        _ => None,
    };

    let redis = match &env.raw.1 {
        Raw::Redis(r) => Some(r.clone()),
        _ => None,
    };
    let server_before = match &redis {
        Some(r) => Some(r.command_calls().await),
        None => None,
    };
    let before = calls.load(Ordering::SeqCst);
    let started = Instant::now();
    let finished = all_done.notified();
    holder.release().await?;
    finished.await;
    let elapsed = started.elapsed();
    let used = calls.load(Ordering::SeqCst) - before;
    let mut server = Vec::new();
    if let (Some(r), Some((sent, inner))) = (&redis, server_before) {
        let (sent_after, inner_after) = r.command_calls().await;
        let label = format!("waiters {}", env.waiters);
        // Minus the INFO that read the first figures.
        server.push(Sample::new(
            &label,
            "commands sent/handoff",
            "commands",
            Better::Lower,
            (sent_after - sent - 1.0) / HANDOFFS as f64,
        ));
        server.push(Sample::new(
            &label,
            "commands in scripts/handoff",
            "commands",
            Better::Lower,
            (inner_after - inner) / HANDOFFS as f64,
        ));
    }
    for t in &tasks {
        t.abort();
    }
    for t in tasks {
        let _ = t.await;
    }
    let label = format!("waiters {}", env.waiters);
    let raw_label = format!("raw tokio Mutex: waiters {}", env.waiters);
    if let (Some(r), Some(mem)) = (&redis, server_mem_per_waiter) {
        let _ = r;
        server.push(Sample::new(
            &label,
            "server memory/waiter",
            "bytes",
            Better::Lower,
            mem,
        ));
    }
    Ok(server
        .into_iter()
        .chain(vec![
            Sample::new(
                &raw_label,
                "client heap/waiter",
                "bytes",
                Better::Lower,
                raw_per_waiter,
            ),
            Sample::new(
                &label,
                "store calls/handoff",
                "calls",
                Better::Lower,
                used as f64 / HANDOFFS as f64,
            ),
            Sample::new(
                &label,
                "handoffs/s",
                "1/s",
                Better::Higher,
                HANDOFFS as f64 / elapsed.as_secs_f64(),
            ),
            Sample::new(
                &label,
                "client heap/waiter",
                "bytes",
                Better::Lower,
                per_waiter,
            )
            .against(&raw_label),
            Sample::new(
                &label,
                "locksmith heap/waiter",
                "bytes",
                Better::Lower,
                per_waiter - raw_per_waiter,
            ),
        ])
        .collect())
}

/// `env.many` held locks (created with `set_locks` in batches): `list` streams them page by
/// page with bounded client memory; then as many expired locks, and `purge_expired`.
pub(crate) async fn many_locks(env: &Env) -> Res<Vec<Sample>> {
    const BATCH: usize = 10_000;
    const PAGE: usize = 1_000;
    let ns = format!("many-{}-{}", env.run, uuid::Uuid::new_v4().simple());
    let sep = if env.url.contains('?') { '&' } else { '?' };
    let lm = Locksmith::connect(&format!("{}{sep}namespace={ns}", env.url)).await?;
    let label = format!("many locks {}", env.many);
    let create = |ttl: Duration, prefix: &'static str| {
        let lm = lm.clone();
        let n = env.many;
        async move {
            let started = Instant::now();
            let mut i = 0;
            while i < n {
                let names: Vec<String> = (i..(i + BATCH).min(n))
                    .map(|j| format!("{prefix}{j:08}"))
                    .collect();
                let mut policy = SetPolicy::default();
                policy.ttl = Some(ttl);
                lm.set_locks(names, policy).await?;
                i += BATCH;
            }
            Ok::<_, locksmith::Error>(started.elapsed())
        }
    };
    let created = create(Duration::from_secs(3600), "held-").await?;

    let window = Window::start();
    let started = Instant::now();
    let mut seen = 0usize;
    let mut after = None;
    loop {
        let mut query = ListQuery::default();
        query.limit = PAGE;
        query.after = after.take();
        query.expired = Expired::Include;
        let page = lm.list(query).await?;
        seen += page.items.len();
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    let listed = started.elapsed();
    let peak = window.peak();
    drop(window);
    if seen != env.many {
        return Err(format!("list saw {seen} locks, not {}", env.many).into());
    }
    lm.reset_all().await?;

    let ttl = locksmith::MIN_TTL;
    create(ttl, "gone-").await?;
    tokio::time::sleep(ttl + Duration::from_millis(20)).await;
    let started = Instant::now();
    let purged = lm.purge_expired().await?;
    let purge = started.elapsed();
    lm.reset_all().await?;
    Ok(vec![
        Sample::new(
            &label,
            "set_locks create",
            "locks/s",
            Better::Higher,
            env.many as f64 / created.as_secs_f64(),
        ),
        Sample::new(
            &label,
            "list rate",
            "locks/s",
            Better::Higher,
            seen as f64 / listed.as_secs_f64(),
        ),
        Sample::new(
            &label,
            "list peak client heap",
            "KiB",
            Better::Lower,
            peak as f64 / 1024.0,
        ),
        Sample::new(
            &label,
            "purge_expired rate",
            "locks/s",
            Better::Higher,
            purged as f64 / purge.as_secs_f64(),
        ),
        Sample::new(&label, "purged", "count", Better::Neither, purged as f64),
    ])
}

/// `locksmith run NAME -- true` per invocation against `flock FILE true`.
pub(crate) async fn cli(env: &Env, locksmith_bin: &std::path::Path) -> Res<Vec<Sample>> {
    let lockfile = env.dir.join("flock.lock");
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    for _ in 0..env.cli_runs {
        let t = Instant::now();
        let st = tokio::process::Command::new(locksmith_bin)
            .args([
                "--url",
                &env.url,
                "-q",
                "run",
                &format!("cli{}", env.run),
                "--",
                "true",
            ])
            .status()
            .await?;
        if !st.success() {
            return Err(format!("locksmith run failed: {st}").into());
        }
        ours.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        let st = tokio::process::Command::new("flock")
            .arg(&lockfile)
            .arg("true")
            .status()
            .await?;
        if !st.success() {
            return Err(format!("flock failed: {st}").into());
        }
        theirs.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let base = "flock(1): run true";
    Ok(vec![
        Sample::new(
            base,
            "wall p50",
            "ms",
            Better::Lower,
            quantile(&mut theirs, 0.5),
        ),
        Sample::new(
            "cli: locksmith run -- true",
            "wall p50",
            "ms",
            Better::Lower,
            quantile(&mut ours, 0.5),
        )
        .against(base),
    ])
}
