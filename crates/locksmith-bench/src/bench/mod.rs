//! The benchmark harness (issue 9): speed of locksmith on each store as a ratio to the raw
//! driver doing the same work, measured in the same run.
//!
//! ```text
//! cargo run -p locksmith-bench --release -- [--store URL]... [--quick] [--json FILE]
//! ```
//!
//! Without `--store` it measures `memory://` and a SQLite file in a temporary directory.
//! `--store mysql` starts a MariaDB server of the test kit for the run (Debian's
//! `mariadbd`); `--store mysql://user:pass@host/db` measures an existing server. Its raw
//! baseline issues the store's own statements (`CALL <table>_acquire/_release`) with sqlx.
//! Every figure is the median of at least three runs (`--runs`), interleaved: run 1 of
//! every store and scenario, then run 2, and so on, so drift in the machine spreads over all
//! figures alike. The table goes to stdout (markdown), the JSON report to `--json`.
//! Adding a store is one more URL plus one more [`raw::Raw`] baseline.

mod alloc;
mod counting;
mod raw;
mod raw_mysql;
mod scenarios;
mod stats;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use clap::Parser;
use locksmith::Locksmith;
use serde::Serialize;

use raw::{Raw, RawMemory, RawPostgres, RawRedis, RawSqlite, RawSqliteThread};
use scenarios::Env;
use stats::{Figure, Figures, Sample};

/// `argv[1]` of a contended worker process (this binary re-executed).
const WORKER: &str = "__bench-worker";

/// Every scenario, in the order each run does them.
const SCENARIOS: &[&str] = &[
    "uncontended",
    "parallel",
    "contended",
    "processes",
    "waiters",
    "many",
    "cli",
];

/// Measures locksmith against raw drivers; prints a markdown table.
#[derive(Debug, Parser)]
#[command(name = "locksmith-bench", version)]
struct Args {
    /// A store to measure (repeat for several) [default: memory:// and a temporary SQLite file].
    /// `redis` (no URL) starts a `redis-server` of its own through the test kit.
    /// `postgres` starts a PostgreSQL server of the bench's own (the test kit's).
    #[arg(long = "store", value_name = "URL")]
    stores: Vec<String>,

    /// Short runs and fewer locks: under two minutes in all.
    #[arg(long)]
    quick: bool,

    /// Also write the report as JSON to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,

    /// How many interleaved runs (at least 3 for a published table).
    #[arg(long, default_value_t = 3, hide = true)]
    runs: usize,

    /// Only these scenarios (comma-separated): uncontended, parallel, contended, processes,
    /// waiters, many, cli.
    #[arg(long, value_delimiter = ',', hide = true)]
    scenarios: Vec<String>,

    /// How long each timed scenario runs [default: 1s, 250ms with --quick].
    #[arg(long, value_parser = humantime::parse_duration, hide = true)]
    budget: Option<Duration>,

    /// Waiters in the waiters scenario.
    #[arg(long, default_value_t = 10_000, hide = true)]
    waiters: usize,

    /// Locks in the many-locks scenario [default: 1,000,000, 20,000 with --quick].
    #[arg(long, hide = true)]
    many: Option<usize>,
}

/// The report: what ran where, and every figure.
#[derive(Debug, Serialize)]
struct Report {
    command: String,
    date: String,
    machine: Machine,
    versions: Versions,
    runs: usize,
    quick: bool,
    notes: Vec<String>,
    figures: Vec<Figure>,
}

#[derive(Debug, Serialize)]
struct Machine {
    cpus: usize,
    cpu_model: String,
    os: String,
    kernel: String,
}

#[derive(Debug, Serialize)]
struct Versions {
    rustc: String,
    locksmith: String,
    sqlite: String,
}

fn machine() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown".into(), |(_, m)| m.trim().to_string());
    let os = std::fs::read_to_string("/etc/os-release")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map_or(std::env::consts::OS.to_string(), |s| {
            s.trim_matches('"').to_string()
        });
    let kernel = format!(
        "Linux {} {}",
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim(),
        std::env::consts::ARCH
    );
    Machine {
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        cpu_model,
        os,
        kernel,
    }
}

fn versions() -> Versions {
    let rustc =
        std::process::Command::new(std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into()))
            .arg("--version")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .map_or("unknown".into(), |s| s.trim().to_string());
    Versions {
        rustc,
        locksmith: env!("CARGO_PKG_VERSION").to_string(),
        sqlite: rusqlite::version().to_string(),
    }
}

/// The `locksmith` CLI binary next to this one (same target directory), if built.
fn locksmith_bin() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let bin = exe.parent()?.join("locksmith");
    bin.is_file().then_some(bin)
}

fn flock_available() -> bool {
    std::process::Command::new("flock")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// One store under test.
struct Store {
    env: Env,
}

async fn open_store(
    url: &str,
    args: &Args,
    dir: &Path,
) -> Result<Store, Box<dyn std::error::Error + Send + Sync>> {
    let lm = Locksmith::connect(url).await?;
    let kind = lm.store_kind();
    let cross_process = lm.store().capabilities().cross_process;
    let (raw, raw_also) = match kind {
        "memory" => (
            (
                "raw HashMap+Mutex".to_string(),
                Raw::Memory(Arc::new(RawMemory::default())),
            ),
            None,
        ),
        "sqlite" => {
            let path = dir.join(format!("raw-{}.db", uuid::Uuid::new_v4().simple()));
            let thread = RawSqliteThread::start(&path)?;
            let direct = RawSqlite::open(&path)?;
            // locksmith runs an uncontended call's statements on the caller's thread, so
            // the baseline does too; the thread + oneshot hand-off (what locksmith did until
            // session 9, and what an async caller of a blocking driver usually does) is
            // measured beside it.
            (
                (
                    "raw rusqlite (direct)".to_string(),
                    Raw::SqliteDirect(Arc::new(Mutex::new(direct))),
                ),
                Some((
                    "raw rusqlite (thread+oneshot)".to_string(),
                    Raw::SqliteThread(thread),
                )),
            )
        }
        "redis" => (
            (
                "raw redis-rs (SET NX PX + compare-and-delete)".to_string(),
                Raw::Redis(RawRedis::open(url).await?),
            ),
            None,
        ),
        "mysql" => {
            let table = url
                .split(['?', '&'])
                .find_map(|p| p.strip_prefix("table="))
                .unwrap_or(locksmith::store::mysql::DEFAULT_TABLE);
            (
                (
                    "raw sqlx (same CALLs)".to_string(),
                    Raw::MySql(raw_mysql::RawMySql::connect(url, table).await?),
                ),
                None,
            )
        }
        "postgres" => {
            // The raw client connects with the URL's connection part only.
            let plain = url.split('?').next().unwrap_or(url);
            (
                (
                    "raw tokio-postgres (1 pipelined connection)".to_string(),
                    Raw::Postgres(Arc::new(RawPostgres::connect(plain).await?)),
                ),
                None,
            )
        }
        other => return Err(format!("no raw baseline for the {other} store yet").into()),
    };
    let budget = args.budget.unwrap_or(if args.quick {
        Duration::from_millis(250)
    } else {
        Duration::from_secs(1)
    });
    Ok(Store {
        env: Env {
            label: kind.to_string(),
            url: url.to_string(),
            lm,
            raw,
            raw_also,
            cross_process,
            budget,
            waiters: if args.quick {
                args.waiters.min(10_000)
            } else {
                args.waiters
            },
            many: args
                .many
                .unwrap_or(if args.quick { 20_000 } else { 1_000_000 }),
            cli_runs: if args.quick { 10 } else { 50 },
            run: 0,
            dir: dir.to_path_buf(),
        },
    })
}

pub(crate) fn main(args: Vec<OsString>) -> ExitCode {
    // This binary re-executed as a worker process of a scenario.
    type Worker = fn(&[String]) -> scenarios::Res<()>;
    let workers: [(&str, &str, Worker); 2] = [
        (WORKER, "worker", scenarios::worker),
        (scenarios::HOP_WORKER, "hop worker", scenarios::hop_worker),
    ];
    if let Some((_, what, work)) = workers
        .iter()
        .find(|(mode, ..)| args.get(1).is_some_and(|a| a == *mode))
    {
        let rest: Vec<String> = args[2..]
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        return match work(&rest) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("locksmith-bench {what}: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let command = args
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ");
    let args = Args::parse_from(args);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("locksmith-bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    // block_on: the scenarios' "main task" is this thread, as under #[tokio::main].
    match rt.block_on(bench(args, command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("locksmith-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn bench(
    args: Args,
    command: String,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let dir = tempfile::Builder::new()
        .prefix("locksmith-bench")
        .tempdir()?;
    // `--store mysql` (or `mysql://`, `mariadb`): a MariaDB server of the test kit, for
    // this run only.
    let mut servers = Vec::new();
    let mut stores_asked = Vec::new();
    for s in &args.stores {
        if ["mysql", "mysql://", "mariadb", "mariadb://"].contains(&s.as_str()) {
            let server =
                tokio::task::spawn_blocking(locksmith_testkit::servers::mariadb::MariaDb::start)
                    .await?
                    .map_err(|e| format!("cannot start a MariaDB server for --store {s}: {e}"))?;
            stores_asked.push(server.url());
            servers.push(server);
        } else {
            stores_asked.push(s.clone());
        }
    }
    let urls = if stores_asked.is_empty() {
        vec![
            "memory://".to_string(),
            format!("sqlite://{}", dir.path().join("bench.db").display()),
        ]
    } else {
        stores_asked
    };
    let wanted = |s: &str| args.scenarios.is_empty() || args.scenarios.iter().any(|w| w == s);
    for s in &args.scenarios {
        if !SCENARIOS.contains(&s.as_str()) {
            return Err(format!("unknown scenario {s:?}; known: {}", SCENARIOS.join(", ")).into());
        }
    }
    // Servers the bench starts itself (`--store redis`), alive until the end.
    let mut servers = Vec::new();
    let mut urls = urls;
    for url in &mut urls {
        if url == "redis" {
            let server = locksmith_testkit::servers::redis::RedisServer::start(
                locksmith_testkit::servers::redis::RedisConfig::default(),
            )
            .await
            .ok_or("redis-server is not installed (apt-get install redis-server)")?;
            *url = server.url();
            servers.push(server);
        }
    }
    let mut stores = Vec::new();
    // `--store postgres`: a server of the bench's own, started by the test kit.
    let mut pg_servers = Vec::new();
    for url in &urls {
        let url = if url == "postgres" {
            let server = locksmith_testkit::servers::postgres::PostgresServer::start()
                .await
                .map_err(|e| {
                    format!("cannot start a PostgreSQL server for --store postgres: {e}")
                })?;
            let url = server.url("postgres");
            pg_servers.push(server);
            url
        } else {
            url.clone()
        };
        stores.push(open_store(&url, &args, dir.path()).await?);
    }
    let mut notes = Vec::new();
    let cli_bin = locksmith_bin();
    if wanted("cli") {
        if cli_bin.is_none() {
            notes.push(
                "cli skipped: build the CLI first (cargo build --release -p locksmith-cli)"
                    .to_string(),
            );
        }
        if !flock_available() {
            notes.push("cli skipped: flock(1) (util-linux) is not installed".to_string());
        }
    }
    let cli_ok = cli_bin.is_some() && flock_available();
    if let Some(s) = stores.first() {
        notes.push(format!(
            "each timed scenario runs {:?} per run; waiters: {}; many locks: {}; handoff latency counts acquisitions that changed holder",
            s.env.budget, s.env.waiters, s.env.many
        ));
    }
    for s in &stores {
        if !s.env.cross_process {
            notes.push(format!(
                "{}: contended across processes skipped (the store is in-process only)",
                s.env.label
            ));
        }
    }

    let started = Instant::now();
    let mut figures = Figures::default();
    for run in 0..args.runs {
        for store in &mut stores {
            store.env.run = run;
            let env = &store.env;
            let mut record = |samples: Vec<Sample>| {
                for s in samples {
                    figures.add(&env.label, s);
                }
            };
            eprintln!("run {}/{}: {} …", run + 1, args.runs, env.label);
            if wanted("uncontended") {
                record(scenarios::uncontended(env).await?);
            }
            if wanted("parallel") {
                record(scenarios::parallel(env).await?);
            }
            if wanted("contended") {
                for k in [2, 8, 32] {
                    record(scenarios::contended_tasks(env, k, env.label == "memory").await?);
                }
            }
            if wanted("processes") && env.cross_process {
                if matches!(&env.raw.1, Raw::Redis(_) | Raw::Postgres(_)) {
                    record(scenarios::pubsub_hop(env, &env.raw.1).await?);
                }
                if let Raw::Postgres(raw) = &env.raw.1 {
                    for k in [0, 2, 8, 32] {
                        record(scenarios::notify_fanout(env, raw, k).await?);
                    }
                }
                for k in [2, 8, 32] {
                    record(scenarios::contended_processes(env, k).await?);
                }
            }
            if wanted("waiters") {
                record(scenarios::waiters(env).await?);
            }
            if wanted("many") {
                record(scenarios::many_locks(env).await?);
            }
            if wanted("cli") && cli_ok {
                let bin = cli_bin.as_deref().expect("checked");
                record(scenarios::cli(env, bin).await?);
            }
        }
    }
    for s in &stores {
        s.env.lm.close().await?;
    }
    drop(servers);
    let figures = figures.finish();
    let report = Report {
        command,
        date: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        machine: machine(),
        versions: versions(),
        runs: args.runs,
        quick: args.quick,
        notes,
        figures,
    };
    print_report(&report, started.elapsed());
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
    }
    Ok(())
}

fn print_report(r: &Report, took: Duration) {
    println!("# locksmith-bench");
    println!();
    println!("- command: `{}`", r.command);
    println!("- date: {}", r.date);
    println!(
        "- machine: {} CPUs, {}, {}, {}",
        r.machine.cpus, r.machine.cpu_model, r.machine.os, r.machine.kernel
    );
    println!(
        "- versions: {}, locksmith {}, SQLite {}",
        r.versions.rustc, r.versions.locksmith, r.versions.sqlite
    );
    println!(
        "- {} interleaved runs{}; median and min–max over runs; took {}",
        r.runs,
        if r.quick { " (--quick)" } else { "" },
        humantime::format_duration(Duration::from_secs(took.as_secs()))
    );
    for n in &r.notes {
        println!("- {n}");
    }
    println!();
    println!("{}", stats::table(&r.figures));
}
