//! The worker processes: `torture-worker` loops acquire → fenced read-modify-write →
//! release through the async library, the blocking facade, or `locksmith run` (whose child
//! is `torture-body`).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use clap::{Args, ValueEnum};
use locksmith::{Error, Wait};
use serde::{Deserialize, Serialize};

use super::record::{Hold, Record, WriteResult, append, mono_ns, open_log};
use super::resource::Resource;

/// How a worker takes its locks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
pub(crate) enum Mode {
    /// `Locksmith` (tokio).
    Async,
    /// `locksmith::blocking`.
    Blocking,
    /// `locksmith run NAME -- torture-body`.
    Cli,
}

impl Mode {
    fn label(self) -> &'static str {
        match self {
            Mode::Async => "async",
            Mode::Blocking => "blocking",
            Mode::Cli => "cli",
        }
    }
}

/// `torture-worker` options.
#[derive(Args, Debug, Clone)]
pub(crate) struct WorkerArgs {
    /// The lock store URL.
    #[arg(long)]
    pub(crate) store: String,
    /// The fenced resource file.
    #[arg(long)]
    pub(crate) resource: PathBuf,
    /// This worker's JSON-lines log.
    #[arg(long)]
    pub(crate) log: PathBuf,
    /// The worker id.
    #[arg(long)]
    pub(crate) id: u32,
    /// How to take locks.
    #[arg(long, value_enum)]
    pub(crate) mode: Mode,
    /// How many lock names (`t0`…).
    #[arg(long, default_value_t = 2)]
    pub(crate) names: u32,
    /// Contending tasks on this worker's one `Locksmith` (`--mode async` only). Task `t > 0`
    /// logs as worker `id + 1000 t`, to this log's name with `.t<t>` before the extension.
    #[arg(long, default_value_t = 1)]
    pub(crate) tasks: u32,
    /// The lease TTL.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub(crate) ttl: Duration,
    /// How long each hold lasts (between the fenced read and write).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub(crate) hold: Duration,
    /// How long to wait for a lock.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub(crate) wait: Duration,
    /// Stop starting new cycles at this `CLOCK_MONOTONIC` time (ns).
    #[arg(long)]
    pub(crate) until: u64,
    /// The `locksmith` binary (for `--mode cli`).
    #[arg(long)]
    pub(crate) locksmith: Option<PathBuf>,
    /// Step this process's view of the SQLite lock clock by this many µs …
    #[arg(long, allow_hyphen_values = true)]
    pub(crate) step_micros: Option<i64>,
    /// … after this many cycles.
    #[arg(long, default_value_t = 0)]
    pub(crate) step_after: u32,
}

/// `torture-body` options: the child of `locksmith run`.
#[derive(Args, Debug, Clone)]
pub(crate) struct BodyArgs {
    /// The fenced resource file.
    #[arg(long)]
    pub(crate) resource: PathBuf,
    /// The lock name.
    #[arg(long)]
    pub(crate) name: String,
    /// The worker id.
    #[arg(long)]
    pub(crate) id: u32,
    /// How long the hold lasts.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub(crate) hold: Duration,
}

/// A progress line `torture-body` prints for its worker.
#[derive(Debug, Serialize, Deserialize)]
struct BodyLine {
    fence: u64,
    at: u64,
    step: String,
    read: Option<i64>,
    accepted: Option<bool>,
}

/// What a guard tells the body, for both library modes.
trait Held {
    fn is_held(&self) -> bool;
    fn expires_in(&self) -> Option<Duration>;
}

impl Held for locksmith::LockGuard {
    fn is_held(&self) -> bool {
        locksmith::LockGuard::is_held(self)
    }
    fn expires_in(&self) -> Option<Duration> {
        locksmith::LockGuard::expires_in(self)
    }
}

impl Held for locksmith::blocking::LockGuard {
    fn is_held(&self) -> bool {
        locksmith::blocking::LockGuard::is_held(self)
    }
    fn expires_in(&self) -> Option<Duration> {
        locksmith::blocking::LockGuard::expires_in(self)
    }
}

/// Tracks the guard's vouched-for deadline and the first moment it said "lost".
struct Watch {
    deadline: Option<u64>,
    lost_at: Option<u64>,
}

impl Watch {
    fn sample(&mut self, g: &dyn Held) {
        let now = mono_ns();
        if g.is_held() {
            if let Some(left) = g.expires_in() {
                let d = now + left.as_nanos() as u64;
                self.deadline = Some(self.deadline.map_or(d, |old| old.max(d)));
            }
        } else if self.lost_at.is_none() {
            self.lost_at = Some(now);
        }
    }
}

/// Sleeps `d` in small steps, sampling the guard.
fn hold_for(d: Duration, g: &dyn Held, w: &mut Watch) {
    let until = mono_ns() + d.as_nanos() as u64;
    loop {
        w.sample(g);
        let now = mono_ns();
        if now >= until {
            break;
        }
        std::thread::sleep(Duration::from_nanos((until - now).min(5_000_000)));
    }
}

/// The fenced read-modify-write. It is attempted even when the guard already said "lost":
/// the fence, not the client's good manners, must stop a stale holder.
fn body(
    res: &mut Resource,
    name: &str,
    fence: u64,
    id: u32,
    hold: Duration,
    g: &dyn Held,
    w: &mut Watch,
) -> WriteResult {
    w.sample(g);
    let read = res
        .read(name, fence, id)
        .expect("the fenced resource is readable");
    hold_for(hold, g, w);
    let at = mono_ns();
    let accepted = match read {
        Some(v) => res
            .write(name, fence, id, v + 1)
            .expect("the fenced resource is writable"),
        None => false,
    };
    w.sample(g);
    WriteResult { read, accepted, at }
}

fn miss(log: &mut std::fs::File, id: u32, name: &str, e: &Error) {
    let outcome = if e.is_timeout() {
        "timeout"
    } else if e.is_contention() {
        "busy"
    } else {
        "error"
    };
    append(
        log,
        &Record::Miss {
            worker: id,
            name: name.into(),
            at: mono_ns(),
            outcome: outcome.into(),
            error: e.to_string(),
        },
    );
    if outcome == "error" {
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn sqlite_path(url: &str) -> Option<PathBuf> {
    let body = url.strip_prefix("sqlite://")?;
    let body = body.split('?').next().unwrap_or(body);
    Some(PathBuf::from(body))
}

/// `torture-worker`.
pub(crate) fn worker(args: WorkerArgs) {
    let mut log = open_log(&args.log);
    let mut res = Resource::open(&args.resource).expect("the fenced resource opens");
    let mut cycle = 0u32;
    let mut stepped = false;
    let maybe_step = |cycle: u32, stepped: &mut bool| {
        if let Some(micros) = args.step_micros
            && !*stepped
            && cycle >= args.step_after
            && let Some(path) = sqlite_path(&args.store)
        {
            locksmith::store::sqlite::step_clock(&path, micros);
            *stepped = true;
        }
    };
    match args.mode {
        Mode::Async => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("a tokio runtime");
            rt.block_on(async {
                let lm = locksmith::Locksmith::connect(&args.store)
                    .await
                    .expect("the store opens");
                let mut others = Vec::new();
                for t in 1..args.tasks {
                    let (lm, args) = (lm.clone(), args.clone());
                    let id = args.id + 1000 * t;
                    let path = args.log.with_extension(format!("t{t}.jsonl"));
                    let res = Resource::open(&args.resource).expect("the fenced resource opens");
                    others.push(tokio::spawn(async move {
                        let mut log = open_log(&path);
                        contend(&lm, &args, id, &mut log, res, |_| false).await;
                    }));
                }
                let step = |cycle: u32| {
                    maybe_step(cycle, &mut stepped);
                    stepped
                };
                contend(&lm, &args, args.id, &mut log, res, step).await;
                for t in others {
                    let _ = t.await;
                }
                let _ = lm.close().await;
            });
        }
        Mode::Blocking => {
            let lm = locksmith::blocking::Locksmith::connect(&args.store).expect("the store opens");
            while mono_ns() < args.until {
                maybe_step(cycle, &mut stepped);
                cycle += 1;
                let name = format!("t{}", fastrand::u32(0..args.names));
                let got = lm
                    .lock(name.as_str())
                    .ttl(args.ttl)
                    .wait(Wait::For(args.wait))
                    .acquire();
                let g = match got {
                    Ok(g) => g,
                    Err(e) => {
                        miss(&mut log, args.id, &name, &e);
                        continue;
                    }
                };
                let start = mono_ns();
                let fence = g.fence();
                append(
                    &mut log,
                    &Record::Grant {
                        worker: args.id,
                        name: name.clone(),
                        fence,
                        start,
                    },
                );
                let mut w = Watch {
                    deadline: None,
                    lost_at: None,
                };
                let write = body(&mut res, &name, fence, args.id, args.hold, &g, &mut w);
                let end = mono_ns();
                releasing(&mut log, args.id, &name, fence);
                let released = g.release();
                finish(
                    &mut log, &args, args.id, name, fence, start, end, w, stepped, write, released,
                );
            }
            let _ = lm.close();
        }
        Mode::Cli => {
            let bin = args.locksmith.clone().expect("--locksmith for --mode cli");
            while mono_ns() < args.until {
                let name = format!("t{}", fastrand::u32(0..args.names));
                cli_cycle(&mut log, &args, &bin, &name);
            }
        }
    }
}

/// One contender of an async worker: acquire → fenced read-modify-write → release, logged as
/// worker `id`, until `args.until`. `step(cycle)` steps the SQLite lock clock when due and
/// says whether it has been stepped.
async fn contend(
    lm: &locksmith::Locksmith,
    args: &WorkerArgs,
    id: u32,
    log: &mut std::fs::File,
    mut res: Resource,
    mut step: impl FnMut(u32) -> bool,
) {
    let mut cycle = 0u32;
    while mono_ns() < args.until {
        let stepped = step(cycle);
        cycle += 1;
        let name = format!("t{}", fastrand::u32(0..args.names));
        let got = lm
            .lock(name.as_str())
            .ttl(args.ttl)
            .wait(Wait::For(args.wait))
            .acquire()
            .await;
        let g = match got {
            Ok(g) => g,
            Err(e) => {
                miss(log, id, &name, &e);
                continue;
            }
        };
        let start = mono_ns();
        let fence = g.fence();
        append(
            log,
            &Record::Grant {
                worker: id,
                name: name.clone(),
                fence,
                start,
            },
        );
        let mut w = Watch {
            deadline: None,
            lost_at: None,
        };
        let write =
            tokio::task::block_in_place(|| body(&mut res, &name, fence, id, args.hold, &g, &mut w));
        let end = mono_ns();
        releasing(log, id, &name, fence);
        let released = g.release().await;
        finish(
            log, args, id, name, fence, start, end, w, stepped, write, released,
        );
    }
}

/// Logs (flushed, like every record) that the worker is about to release `name`.
fn releasing(log: &mut std::fs::File, worker: u32, name: &str, fence: u64) {
    append(
        log,
        &Record::Releasing {
            worker,
            name: name.to_string(),
            fence,
            at: mono_ns(),
        },
    );
}

#[allow(clippy::too_many_arguments)]
fn finish(
    log: &mut std::fs::File,
    args: &WorkerArgs,
    id: u32,
    name: String,
    fence: u64,
    start: u64,
    end: u64,
    mut w: Watch,
    stepped: bool,
    write: WriteResult,
    released: locksmith::Result<()>,
) {
    let (outcome, error) = match &released {
        Ok(()) if w.lost_at.is_none() => ("released", None),
        Ok(()) => ("lost", None),
        Err(Error::NotHeld { .. }) | Err(Error::Lost { .. }) => {
            w.lost_at.get_or_insert(end);
            ("lost", released.as_ref().err().map(|e| e.to_string()))
        }
        Err(e) => ("release_error", Some(e.to_string())),
    };
    append(
        log,
        &Record::Hold(Hold {
            worker: id,
            mode: args.mode.label().into(),
            name,
            fence,
            start,
            end,
            deadline: w.deadline,
            lost_at: w.lost_at,
            outcome: outcome.into(),
            stepped,
            write: Some(write),
            error,
        }),
    );
}

/// One `locksmith run` cycle.
fn cli_cycle(log: &mut std::fs::File, args: &WorkerArgs, bin: &Path, name: &str) {
    let me = std::env::current_exe().expect("the current executable");
    let mut child = Command::new(bin)
        .arg("--url")
        .arg(&args.store)
        .arg("-q")
        .arg("--color=never")
        .arg("run")
        .arg(name)
        .arg("--ttl")
        .arg(humantime::format_duration(args.ttl).to_string())
        .arg("--wait")
        .arg(humantime::format_duration(args.wait).to_string())
        .arg("--")
        .arg(&me)
        .arg("torture-body")
        .arg("--resource")
        .arg(&args.resource)
        .arg("--name")
        .arg(name)
        .arg("--id")
        .arg(args.id.to_string())
        .arg("--hold")
        .arg(humantime::format_duration(args.hold).to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("locksmith run starts");
    let stdout = child.stdout.take().expect("piped");
    let mut lines: Vec<BodyLine> = Vec::new();
    for line in BufReader::new(stdout).lines().map_while(|l| l.ok()) {
        let Ok(l) = serde_json::from_str::<BodyLine>(&line) else {
            continue;
        };
        if l.step == "grant" {
            append(
                log,
                &Record::Grant {
                    worker: args.id,
                    name: name.into(),
                    fence: l.fence,
                    start: l.at,
                },
            );
        }
        lines.push(l);
    }
    let out = child.wait_with_output().expect("locksmith run exits");
    let code = out.status.code();
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    let Some(first) = lines.first() else {
        let outcome = match code {
            Some(4) => "timeout",
            Some(75) => "busy",
            _ => "error",
        };
        append(
            log,
            &Record::Miss {
                worker: args.id,
                name: name.into(),
                at: mono_ns(),
                outcome: outcome.into(),
                error: format!("exit {code:?}: {stderr}"),
            },
        );
        if outcome == "error" {
            std::thread::sleep(Duration::from_millis(20));
        }
        return;
    };
    let last = lines.last().expect("non-empty");
    let read = lines.iter().find(|l| l.step == "read").and_then(|l| l.read);
    let wrote = lines.iter().find(|l| l.step == "write");
    let (outcome, lost_at) = match code {
        Some(0) => ("released", None),
        Some(76) => ("lost", Some(last.at)),
        None => ("killed", None),
        _ => ("release_error", None),
    };
    append(
        log,
        &Record::Hold(Hold {
            worker: args.id,
            mode: "cli".into(),
            name: name.into(),
            fence: first.fence,
            start: first.at,
            end: last.at,
            deadline: None,
            lost_at,
            outcome: outcome.into(),
            stepped: false,
            write: Some(WriteResult {
                read,
                accepted: wrote.and_then(|w| w.accepted).unwrap_or(false),
                at: wrote.map_or(last.at, |w| w.at),
            }),
            error: (code != Some(0)).then(|| format!("exit {code:?}: {stderr}")),
        }),
    );
}

/// `torture-body`: the command `locksmith run` runs while it holds the lock.
pub(crate) fn body_main(args: BodyArgs) {
    let start = mono_ns();
    let fence: u64 = std::env::var("LOCKSMITH_FENCE")
        .ok()
        .and_then(|f| f.parse().ok())
        .expect("LOCKSMITH_FENCE is set by locksmith run");
    let say = |l: &BodyLine| {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{}", serde_json::to_string(l).expect("serialises"));
        let _ = out.flush();
    };
    say(&BodyLine {
        fence,
        at: start,
        step: "grant".into(),
        read: None,
        accepted: None,
    });
    let mut res = Resource::open(&args.resource).expect("the fenced resource opens");
    let read = res
        .read(&args.name, fence, args.id)
        .expect("the fenced resource is readable");
    say(&BodyLine {
        fence,
        at: mono_ns(),
        step: "read".into(),
        read,
        accepted: None,
    });
    std::thread::sleep(args.hold);
    let at = mono_ns();
    let accepted = match read {
        Some(v) => res
            .write(&args.name, fence, args.id, v + 1)
            .expect("the fenced resource is writable"),
        None => false,
    };
    say(&BodyLine {
        fence,
        at,
        step: "write".into(),
        read: None,
        accepted: Some(accepted),
    });
}
