//! The torture harness (issue 10): worker processes hammer one lock store while faults are
//! injected — SIGKILL and SIGSTOP of holders, SQLite writers killed mid-transaction, a busy
//! file, a full disk, a stepped lock clock — then a checker reads every log and lists each
//! broken promise.
//!
//! ```text
//! locksmith-bench torture [--store URL|mysql|postgres|redis] [--scenario NAME]... [--long] [--report FILE]
//! cargo run -p locksmith-bench --release -- torture --long    # writes RELIABILITY.md
//! ```
//!
//! `--store mysql` starts a MariaDB server of the test kit that the harness controls, for
//! the server scenarios (`server-restart`, `conn-kill`, `server-freeze`; see `server.rs`);
//! without a server of its own they say SKIPPED. `--store postgres` starts a PostgreSQL server
//! per scenario (`postgres.rs`), `--store redis` one persistent `redis-server` for the run (the
//! `redis-*` scenarios always start their own). Any other URL is opened once before a worker
//! starts, so a bad URL or a dead server is one clear error.
//!
//! Workers are this same binary re-executed (`torture-worker`, and `torture-body` as the
//! command of `locksmith run`; `torture-sqlite` is the second SQLite connection). The
//! `locksmith` binary for `run` is looked up next to this executable (its parent directory
//! for a test binary under `deps/`), else built with `cargo build -p locksmith-cli` in the
//! same profile; `--locksmith PATH` overrides both.

mod check;
mod postgres;
mod record;
mod resource;
mod scenario;
mod server;
mod worker;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser};
use comfy_table::{Table, presets::ASCII_MARKDOWN};

use scenario::{Outcome, Plan, Scenario};

#[derive(Parser, Debug)]
#[command(name = "locksmith-bench", about = "The locksmith torture harness")]
enum Cli {
    /// Run the torture scenarios and check the logs.
    Torture(TortureArgs),
    /// (internal) One worker process.
    TortureWorker(worker::WorkerArgs),
    /// (internal) The command `locksmith run` runs while holding a lock.
    TortureBody(worker::BodyArgs),
    /// (internal) A second connection to a SQLite lock file.
    TortureSqlite(SqliteArgs),
}

/// `torture` options.
#[derive(Args, Debug)]
struct TortureArgs {
    /// The store URL (default: a fresh SQLite file per scenario), or `mysql`, `postgres` or
    /// `redis` for a server the harness starts itself. Scenarios that need a SQLite file are
    /// skipped, loudly, on other stores.
    #[arg(long)]
    store: Option<String>,
    /// Run only these scenarios (repeatable; default: those every store shares and those of
    /// `--store`'s kind).
    #[arg(long, value_enum)]
    scenario: Vec<Scenario>,
    /// The long form: more workers, 45 s per scenario, and RELIABILITY.md written at the
    /// repository root (unless --report says elsewhere).
    #[arg(long)]
    long: bool,
    /// Seconds per scenario (default 8, or 45 with --long).
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Worker processes (default 4, or 6 with --long).
    #[arg(long)]
    workers: Option<u32>,
    /// Tasks per library (async) worker, each its own contender on the worker's one
    /// `Locksmith`: tasks of one process hand locks to each other inside a release.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
    tasks: u32,
    /// Write the markdown report here.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Keep logs under this directory (default: a temporary directory, removed after).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// The `locksmith` CLI binary.
    #[arg(long)]
    locksmith: Option<PathBuf>,
}

/// `torture-sqlite` options.
#[derive(Args, Debug)]
struct SqliteArgs {
    #[arg(long)]
    db: PathBuf,
    #[arg(long)]
    action: String,
    #[arg(long, value_parser = humantime::parse_duration)]
    hold: Duration,
}

pub(crate) fn main(args: Vec<OsString>) -> ExitCode {
    match Cli::parse_from(args) {
        Cli::TortureWorker(a) => {
            worker::worker(a);
            ExitCode::SUCCESS
        }
        Cli::TortureBody(a) => {
            worker::body_main(a);
            ExitCode::SUCCESS
        }
        Cli::TortureSqlite(a) => {
            scenario::sqlite_helper_main(&a.db, &a.action, a.hold);
            ExitCode::SUCCESS
        }
        Cli::Torture(a) => torture(a),
    }
}

/// Finds (or builds) the `locksmith` binary.
fn locksmith_bin() -> Result<PathBuf, String> {
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut dir = me.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let bin = dir.join("locksmith");
    if bin.is_file() {
        return Ok(bin);
    }
    let release = dir.ends_with("release");
    eprintln!(
        "torture: {} not found; building it with cargo",
        bin.display()
    );
    let mut cmd =
        std::process::Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.args(["build", "-q", "-p", "locksmith-cli"]);
    if release {
        cmd.arg("--release");
    }
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"));
    let status = cmd.status().map_err(|e| format!("cannot run cargo: {e}"))?;
    if status.success() && bin.is_file() {
        Ok(bin)
    } else {
        Err(format!(
            "cannot build locksmith-cli into {} — build it (cargo build -p locksmith-cli) or pass --locksmith PATH",
            bin.display()
        ))
    }
}

/// Opens the store once before any worker starts, so a bad URL or a dead server is one clear
/// error here rather than a panic in every worker.
fn check_store(url: &str) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("no runtime: {e}"))?;
    rt.block_on(async {
        let lm = tokio::time::timeout(Duration::from_secs(10), locksmith::Locksmith::connect(url))
            .await
            .map_err(|_| "the store did not answer within 10 s".to_string())?
            .map_err(|e| e.to_string())?;
        let _ = lm.close().await;
        Ok(())
    })
}

fn torture(mut a: TortureArgs) -> ExitCode {
    // As given on the command line, for the report's "reproduce" line and its section.
    let store_arg = a.store.clone();
    a.store = match server::resolve_store(a.store.take()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("torture: cannot start a server for --store: {e}");
            return ExitCode::from(2);
        }
    };
    // `--store redis`: a redis-server of the test kit (persistent), alive for the whole run.
    let _redis = match a.store.as_deref() {
        Some("redis" | "redis://") => match scenario::start_redis(true) {
            Some((rt, server)) => {
                a.store = Some(format!("{}?timeout=1s", server.url()));
                Some((rt, server))
            }
            None => {
                eprintln!(
                    "torture: cannot start a server for --store redis: redis-server is not installed (apt-get install redis-server)"
                );
                return ExitCode::from(2);
            }
        },
        _ => None,
    };
    if let Some(url) = a.store.as_deref().filter(|s| *s != "postgres")
        && let Err(e) = check_store(url)
    {
        eprintln!(
            "torture: --store {}: {e} — pass a store URL that works, or `mysql`, `postgres` or `redis` for a server the harness starts itself",
            locksmith::redact_url(url)
        );
        return ExitCode::from(2);
    }
    let locksmith = match a.locksmith.clone().map(Ok).unwrap_or_else(locksmith_bin) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("torture: {e}");
            return ExitCode::from(2);
        }
    };
    let plan = Plan {
        workers: a.workers.unwrap_or(if a.long { 6 } else { 4 }),
        names: if a.long { 3 } else { 2 },
        tasks: a.tasks,
        ttl: Duration::from_secs(1),
        hold: Duration::from_millis(20),
        wait: Duration::from_secs(4),
        duration: a
            .duration
            .unwrap_or(Duration::from_secs(if a.long { 45 } else { 8 })),
    };
    let scenarios: Vec<Scenario> = if a.scenario.is_empty() {
        Scenario::value_variants()
            .iter()
            .copied()
            .filter(|s| s.applies_to(store_arg.as_deref()))
            .collect()
    } else {
        a.scenario.clone()
    };
    let temp;
    let root = match &a.dir {
        Some(d) => d.clone(),
        None => {
            temp = tempfile::tempdir().expect("a temporary directory");
            temp.path().to_path_buf()
        }
    };
    let mut outcomes = Vec::new();
    for s in scenarios {
        eprintln!("torture: {} …", s.label());
        let o = scenario::run(s, &plan, a.store.as_deref(), &root, &locksmith);
        print_outcome(&o);
        outcomes.push(o);
    }
    let table = table(&outcomes);
    println!("{table}");
    let violations: usize = outcomes.iter().map(|o| o.report.violations.len()).sum();
    let report = a.report.clone().or_else(|| {
        a.long
            .then(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../RELIABILITY.md"))
    });
    if let Some(path) = report {
        let key = section_key(store_arg.as_deref());
        let text = markdown(&a, store_arg.as_deref(), &plan, &outcomes, &table);
        let old = std::fs::read_to_string(&path).unwrap_or_default();
        match std::fs::write(&path, with_section(&old, key, &text)) {
            Ok(()) => eprintln!("torture: wrote the {key} section of {}", path.display()),
            Err(e) => eprintln!("torture: cannot write {}: {e}", path.display()),
        }
    }
    if violations == 0 {
        ExitCode::SUCCESS
    } else {
        eprintln!("torture: {violations} violations");
        ExitCode::FAILURE
    }
}

use clap::ValueEnum;

fn print_outcome(o: &Outcome) {
    if let Some(s) = &o.skipped {
        println!("{}: {s}", o.scenario.label());
        return;
    }
    let r = &o.report;
    println!(
        "{}: {} holds, {} faults, {} lost (told), {} accepted writes, {} rejected by the fence, {} step overlaps, {} violations ({:.1} s)",
        o.scenario.label(),
        r.holds,
        o.faults,
        r.lost,
        r.accepted_writes,
        r.rejected,
        r.step_overlaps,
        r.violations.len(),
        o.seconds
    );
    for v in &r.violations {
        println!("  VIOLATION {v}");
    }
    for n in r.notes.iter().take(12) {
        println!("  {n}");
    }
    if o.error_count > 0 {
        println!("  {} store errors seen by workers, e.g.:", o.error_count);
        for e in &o.errors {
            println!("    {e}");
        }
    }
}

fn table(outcomes: &[Outcome]) -> String {
    let mut t = Table::new();
    t.load_style(ASCII_MARKDOWN);
    t.set_header([
        "scenario",
        "store",
        "workers",
        "seconds",
        "lock cycles",
        "faults injected",
        "lost (told)",
        "stale ops rejected",
        "step overlaps",
        "store errors",
        "violations",
    ]);
    for o in outcomes {
        if let Some(s) = &o.skipped {
            t.add_row([o.scenario.label(), o.store.clone(), s.clone()]);
            continue;
        }
        let r = &o.report;
        t.add_row([
            o.scenario.label(),
            o.store.split("://").next().unwrap_or("").to_string(),
            o.workers.to_string(),
            format!("{:.0}", o.seconds),
            r.holds.to_string(),
            o.faults.to_string(),
            r.lost.to_string(),
            r.rejected.to_string(),
            r.step_overlaps.to_string(),
            o.error_count.to_string(),
            r.violations.len().to_string(),
        ]);
    }
    t.to_string()
}

/// Which section of the report a run writes: one per kind of store, so a run on one store
/// leaves the others' results in place.
fn section_key(store: Option<&str>) -> &'static str {
    let scheme = store.map_or("sqlite", |s| s.split("://").next().unwrap_or(s));
    match scheme {
        "sqlite" => "sqlite",
        "postgres" | "postgresql" => "postgres",
        "mysql" | "mariadb" => "mysql",
        s if s.starts_with("redis") => "redis",
        "memory" => "memory",
        _ => "other",
    }
}

/// `report` with the section `key` set to `section`: replaced between its markers where it
/// exists, appended otherwise (after the file's title, written when the file is new).
fn with_section(report: &str, key: &str, section: &str) -> String {
    let (start, end) = (
        format!("<!-- torture:{key} -->"),
        format!("<!-- /torture:{key} -->"),
    );
    let block = format!("{start}\n{}\n{end}", section.trim_end());
    if let (Some(a), Some(b)) = (report.find(&start), report.find(&end))
        && a < b
    {
        return format!("{}{block}{}", &report[..a], &report[b + end.len()..]);
    }
    let mut out = if report.trim().is_empty() {
        "# Reliability\n\nWhat the torture harness (`crates/locksmith-bench/src/torture`) found, one \
         section per store; each section is rewritten by the command it shows and leaves the others \
         alone.\n"
            .to_string()
    } else {
        report.trim_end().to_string() + "\n"
    };
    out.push('\n');
    out.push_str(&block);
    out.push('\n');
    out
}

fn markdown(
    a: &TortureArgs,
    store_arg: Option<&str>,
    plan: &Plan,
    outcomes: &[Outcome],
    table: &str,
) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let total: usize = outcomes.iter().map(|o| o.report.holds).sum();
    let faults: usize = outcomes.iter().map(|o| o.faults).sum();
    let violations: usize = outcomes.iter().map(|o| o.report.violations.len()).sum();
    let title = match section_key(store_arg) {
        "sqlite" if store_arg.is_none() => "SQLite (a fresh file per scenario) and the CLI",
        "sqlite" => "SQLite",
        "postgres" => "PostgreSQL",
        "mysql" => "MySQL/MariaDB",
        "redis" => "Redis",
        "memory" => "memory",
        _ => "other stores",
    };
    let _ = writeln!(s, "## {title}\n");
    let _ = writeln!(
        s,
        "{} scenarios: {total} lock cycles, {faults} faults injected, **{violations} violations** \
         (run {}).\n",
        outcomes.len(),
        humantime::format_rfc3339_seconds(std::time::SystemTime::now())
    );
    let mut cmd = "cargo run -p locksmith-bench --release -- torture".to_string();
    if a.long {
        cmd.push_str(" --long");
    }
    if let Some(st) = store_arg {
        let _ = write!(cmd, " --store {}", locksmith::redact_url(st));
    }
    if a.tasks > 1 {
        let _ = write!(cmd, " --tasks {}", a.tasks);
    }
    for sc in &a.scenario {
        let _ = write!(cmd, " --scenario {}", sc.label());
    }
    let _ = writeln!(s, "Reproduce with:\n\n```sh\n{cmd}\n```\n");
    let _ = writeln!(
        s,
        "Each scenario: {} worker processes (library async, blocking facade and `locksmith run`, in turn) \
         loop acquire (one of {} names, wait up to {}) → fenced read, hold {}, fenced write of a counter in a \
         separate SQLite file → release, with TTL {} (renewed automatically), for {}. \
         A \"lock cycle\" is one finished hold. The checker's rules are in \
         `crates/locksmith-bench/src/torture/check.rs`.{}\n",
        plan.workers,
        plan.names,
        humantime::format_duration(plan.wait),
        humantime::format_duration(plan.hold),
        humantime::format_duration(plan.ttl),
        humantime::format_duration(plan.duration),
        if plan.tasks > 1 {
            format!(
                " Each library (async) worker runs {} such loops as tasks on its one `Locksmith`, \
                 each a contender of its own.",
                plan.tasks
            )
        } else {
            String::new()
        }
    );
    let _ = writeln!(s, "{table}\n");
    for o in outcomes {
        let _ = writeln!(s, "### {}\n", o.scenario.label());
        if let Some(sk) = &o.skipped {
            let _ = writeln!(s, "{sk}\n");
            continue;
        }
        let _ = writeln!(s, "{}\n", describe(o.scenario));
        for v in &o.report.violations {
            let _ = writeln!(s, "- **VIOLATION** {v}");
        }
        let mut notes = o.report.notes.clone();
        notes.sort();
        notes.dedup();
        for n in notes.iter().take(10) {
            let _ = writeln!(s, "- {n}");
        }
        if notes.len() > 10 {
            let _ = writeln!(s, "- … {} more notes", notes.len() - 10);
        }
        if o.error_count > 0 {
            let _ = writeln!(
                s,
                "- {} store errors seen by workers, for example:",
                o.error_count
            );
            for e in &o.errors {
                let _ = writeln!(s, "  - `{}`", e.replace('`', "'"));
            }
        }
        let _ = writeln!(s);
    }
    s
}

fn describe(s: Scenario) -> &'static str {
    match s {
        Scenario::Baseline => "No faults.",
        Scenario::PgRestart => {
            "PostgreSQL (`--store postgres`, a server of the harness's own): every 3×TTL the server is \
             SIGKILLed (postmaster and backends) and started again on the same data. Checked: no double holder, \
             fences increase, locks are granted again after each restart."
        }
        Scenario::PgKillConnections => {
            "PostgreSQL: every TTL, `pg_terminate_backend` of every connection of every locksmith client \
             (pools and listeners). Checked: no double holder, fences increase, nothing stuck."
        }
        Scenario::PgFreeze => {
            "PostgreSQL: the whole server frozen with SIGSTOP (backends included) for 2×TTL + 0.5 s, then \
             thawed. Checked: holders whose renewals time out report the lock lost; no double holder."
        }
        Scenario::Sigkill => {
            "Every TTL/2 the harness inspects the store, picks a holder (a library worker, or every third time a \
             `locksmith run`) and SIGKILLs it (library workers are replaced). Checked: the lock is taken over \
             no sooner than the lease the store reported just before the kill."
        }
        Scenario::Sigstop => {
            "A holder (a library worker, or `locksmith run` with its command) is frozen with SIGSTOP for \
             2×TTL + 0.5 s, then SIGCONT (a process caught inside a SQLite write transaction, on the store's \
             file or the shared resource's, is thawed at once and another moment picked: frozen there it would \
             stop every process's writes, which is SQLite's single writer, not the lock manager). Checked: \
             others get locks meanwhile; the frozen holder reports the lock lost (`run` exits 76 after stopping \
             its command); its late writes are rejected by the fence."
        }
        Scenario::SqliteTxKill => {
            "A second process opens the lock file, `BEGIN IMMEDIATE; DELETE FROM locksmith_locks; DELETE FROM \
             locksmith_fence`, and is SIGKILLed inside the transaction. Checked: the rollback leaves every \
             holder's lock and fence in place (no double holder, no repeated fence), the file passes \
             `PRAGMA integrity_check`, and locks are granted after the last kill."
        }
        Scenario::SqliteBusy => {
            "A second connection holds `BEGIN EXCLUSIVE` on the lock file for 300 ms (below the 1 s call \
             timeout the workers use here) and for TTL + 0.8 s (past it and past the TTL). Checked: clear \
             retryable errors, guards lost rather than double holders, progress afterwards."
        }
        Scenario::DiskFull => {
            "The lock file lives on a 16 MiB tmpfs, which is filled with a file while workers run and the \
             harness creates new locks; then the file is removed. Checked: clear errors (a retryable store \
             error naming the file), a new lock after space returns, `PRAGMA integrity_check` ok, nothing \
             stuck. Known limit: a disk with less free space than SQLite's WAL auto-checkpoint size \
             (1000 pages, about 4 MiB) stays full once space returns, because the WAL grows back to fill it \
             before a checkpoint can reset it (seen with a 3 MiB tmpfs); the tmpfs is larger than that here."
        }
        Scenario::RedisRestart => {
            "A `redis-server` of the harness's own with `appendonly yes` and `appendfsync always` is \
             SIGKILLed and started again on its data dir every 2×TTL. Checked: every grant was on disk \
             before it was answered, so no lock is forgotten (no double holder), fences never repeat, and \
             workers reconnect and carry on."
        }
        Scenario::RedisClientKill => {
            "Every TTL/2 `CLIENT KILL TYPE normal` and `CLIENT KILL TYPE pubsub` drop every connection of \
             every worker (commands and wake-up subscriptions). Checked: retryable errors only, holders keep \
             renewing through the reconnect or are told they lost the lock, waiters resubscribe, no double \
             holder."
        }
        Scenario::RedisFreeze => {
            "The `redis-server` is frozen with SIGSTOP for 1.5×TTL every 3×TTL. Its clock runs on, so leases \
             end while it is frozen. Checked: holders are told the lock is lost before their lease could have \
             ended (their renewals time out), no double holder, stale writes rejected by the fence, progress \
             after each thaw."
        }
        Scenario::RedisRestartVolatile => {
            "Documentation, not a promise: the same restarts on a `redis-server` without persistence. The \
             restarted server has forgotten every lock, so a holder may still be working when another worker \
             takes its lock (until its next renewal tells it the lock is lost). The checker's findings are \
             listed as the COST of running Redis without persistence; fences still never repeat (they come \
             from the server's clock), so a fenced resource rejects the stale holder's writes."
        }
        Scenario::ClockStep => {
            "Worker 0 steps its process's view of the SQLite lock clock 2×TTL forward and worker 1 2×TTL back \
             (`locksmith::store::sqlite::step_clock`, process-local: it models that one client's clock — \
             SQLite's lock clock is each client's own wall clock). A forward-stepped client sees live leases \
             as expired and takes them over; a back-stepped client writes leases that others see as already \
             expired. Leases break by design (counted as step overlaps, not violations; the design says \
             fencing is the answer to clock steps). Checked: fences still increase and never repeat, and the \
             fenced resource rejects every stale holder (no lost update)."
        }
        Scenario::ServerRestart => {
            "The harness's own MariaDB server (`--store mysql`) is SIGKILLed and started again on the same \
             data every 3 s. Checked: retryable errors while it is down, no double holder, fences increasing \
             across restarts, locks granted after the last restart."
        }
        Scenario::ConnKill => {
            "Every 700 ms the server kills every connection of the workers' user (`KILL CONNECTION`), \
             mid-call or idle. Checked: nothing stuck (calls fail retryably and the pool reconnects), no \
             double holder, no stale write accepted."
        }
        Scenario::ServerFreeze => {
            "The server is frozen with SIGSTOP for TTL + 0.5 s every 3 s, then thawed. Checked: holders whose \
             renewals cannot get through report the lock lost before the lease could end; no double holder; \
             their late writes are rejected by the fence; progress after each thaw."
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{section_key, with_section};

    #[test]
    fn a_run_rewrites_its_own_section_only() {
        let first = with_section("", "sqlite", "## SQLite\n\nold sqlite\n");
        assert!(first.starts_with("# Reliability\n"));
        let both = with_section(&first, "redis", "## Redis\n\nredis run\n");
        let again = with_section(&both, "sqlite", "## SQLite\n\nnew sqlite\n");
        assert!(again.contains("new sqlite") && !again.contains("old sqlite"));
        assert!(again.contains("redis run"));
        assert_eq!(again.matches("<!-- torture:sqlite -->").count(), 1);
        assert_eq!(again.matches("<!-- /torture:redis -->").count(), 1);
        // The section keeps its place: SQLite before Redis.
        assert!(again.find("new sqlite") < again.find("redis run"));
    }

    #[test]
    fn sections_are_keyed_by_the_kind_of_store() {
        assert_eq!(section_key(None), "sqlite");
        assert_eq!(section_key(Some("sqlite:///tmp/x.db")), "sqlite");
        assert_eq!(section_key(Some("redis")), "redis");
        assert_eq!(section_key(Some("redis+cluster://a:1,b:2")), "redis");
        assert_eq!(section_key(Some("postgres")), "postgres");
        assert_eq!(section_key(Some("mariadb://u@h/db")), "mysql");
    }
}
