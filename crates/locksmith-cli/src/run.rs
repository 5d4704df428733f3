//! `run` and the scripting primitives `acquire`, `extend`, `release`, `status`.

use std::ffi::OsStr;
use std::io::IsTerminal;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::time::Duration;

use locksmith::{Error, LockBuilder, LockGuard, Locksmith, Renew, Token, Wait};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::json;
use tokio::signal::unix::{SignalKind, signal};

use crate::cli::{AcquireArgs, ExtendArgs, LeaseArgs, NameArgs, RunArgs, TokenArgs};
use crate::exit::{self, Failure};
use crate::output::{self, Out, holder, human, ms, safe, shell_quote};

/// The default owner label: the user running the command.
fn user() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "locksmith".into())
}

fn builder(lm: &Locksmith, name: &str, lease: &LeaseArgs, owner: String) -> LockBuilder {
    lm.lock(name)
        .ttl(lease.ttl)
        .wait(lease.wait.unwrap_or(Wait::No))
        .owner(lease.owner.clone().unwrap_or(owner))
}

/// Acquires, showing who holds the lock on a spinner while waiting on a terminal.
async fn acquire_showing_holder(
    lm: &Locksmith,
    name: &str,
    builder: LockBuilder,
    waits: bool,
    out: Out,
) -> Result<LockGuard, Error> {
    if !waits || out.quiet || out.json() || !std::io::stderr().is_terminal() {
        return builder.acquire().await;
    }
    let spinner = indicatif::ProgressBar::new_spinner();
    spinner.set_draw_target(indicatif::ProgressDrawTarget::stderr());
    spinner.enable_steady_tick(Duration::from_millis(100));
    spinner.set_message(format!("waiting for lock {}", safe(name)));
    let acquire = builder.acquire();
    tokio::pin!(acquire);
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let result = loop {
        tokio::select! {
            result = &mut acquire => break result,
            _ = tick.tick() => {
                if let Ok(Some(info)) = lm.inspect(name).await
                    && !info.expired
                {
                    spinner.set_message(format!("waiting for lock {}: held by {}", safe(name), holder(&info)));
                }
            }
        }
    };
    spinner.finish_and_clear();
    result
}

/// Turns contention into the CLI's exit codes with a message naming the holder: `busy`
/// follows a held lock (an expected skip, silent with -q), `timed_out` a `--wait` that ran out.
fn contention(e: Error, busy_code: u8, busy: &str, timed_out: &str) -> Failure {
    match e {
        Error::Locked { name, holder: info } => Failure::skip(
            busy_code,
            format!("lock {name:?} is held by {} — {busy}", holder(&info)),
        ),
        Error::Timeout { name, waited } => Failure::new(
            exit::TIMEOUT,
            format!(
                "gave up after waiting {} for lock {name:?} — {timed_out}",
                human(waited)
            ),
        ),
        other => other.into(),
    }
}

/// How often `run` checks that its lock is still its own, on any store: a `clear` or `reset`
/// from anywhere stops the command within about this long (plus one store call), even where
/// the store cannot notify this process.
const OWNERSHIP_CHECK: Duration = Duration::from_millis(500);

/// Whether the lock is still the one `run` was granted (same fence; same process where the
/// store keeps no fences). `None` when the store could not be asked.
async fn still_ours(lm: &Locksmith, name: &str, fence: u64) -> Option<bool> {
    let info = lm.inspect(name).await.ok()?;
    Some(info.is_some_and(|info| {
        !info.expired
            && !info.released
            && match info.fence {
                Some(f) => f == fence,
                None => info.pid == Some(std::process::id()),
            }
    }))
}

fn exit_code(status: std::process::ExitStatus) -> u8 {
    match (status.code(), status.signal()) {
        (Some(code), _) => u8::try_from(code & 0xff).unwrap_or(1),
        (None, Some(sig)) => u8::try_from(128 + sig).unwrap_or(255),
        _ => 1,
    }
}

/// A signal handler, or none for a signal the caller ignores (never fires).
struct Handler(Option<tokio::signal::unix::Signal>);

impl Handler {
    async fn recv(&mut self) {
        match &mut self.0 {
            Some(s) => {
                s.recv().await;
            }
            None => std::future::pending().await,
        }
    }
}

/// The signals this process was started with ignored, from `/proc/self/status` (read before
/// any handler is installed). Empty where that file is unavailable.
fn ignored_signals() -> Vec<Signal> {
    let mask = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("SigIgn:"))
                .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        })
        .unwrap_or(0);
    [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP]
        .into_iter()
        .filter(|&sig| mask & (1 << (sig as i32 - 1)) != 0)
        .collect()
}

/// Where `run` sends signals: the command, or its whole process group.
struct Target {
    pid: Option<i32>,
    group: bool,
}

impl Target {
    fn send(&self, sig: Signal) {
        if let Some(pid) = self.pid {
            let to = if self.group { -pid } else { pid };
            let _ = kill(Pid::from_raw(to), sig);
        }
    }
}

/// Makes the command die with locksmith: if locksmith is killed outright (SIGKILL, or a
/// signal it does not handle), nobody renews the lease any more, so the command must not
/// run on unlocked.
#[allow(unsafe_code)]
fn die_with_parent(command: &mut tokio::process::Command) {
    let parent = nix::unistd::getpid();
    // SAFETY: the closure runs in the forked child before exec and calls only prctl(2) and
    // getppid(2), which are async-signal-safe; it allocates nothing and takes no locks.
    unsafe {
        command.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
            // locksmith may have died before the prctl took effect
            if nix::unistd::getppid() != parent {
                return Err(std::io::Error::other(
                    "locksmith exited before the command started",
                ));
            }
            Ok(())
        });
    }
}

/// `locksmith run NAME -- CMD…`.
pub(crate) async fn run(lm: &Locksmith, args: RunArgs, out: Out) -> Result<u8, Failure> {
    let program = args.command[0].clone();
    let shown = Path::new(&program)
        .file_name()
        .unwrap_or(OsStr::new("command"))
        .to_string_lossy()
        .into_owned();
    let owner = args.lease.owner.clone().unwrap_or_else(|| shown.clone());
    // The library's max_hold must not be below the TTL; say so in the CLI's words (the
    // library would see --max-hold plus the kill grace).
    if let Some(max_hold) = args.max_hold
        && max_hold < args.lease.ttl
    {
        return Err(Failure::new(
            exit::USAGE,
            format!(
                "--max-hold {} is shorter than --ttl {} — raise --max-hold or lower --ttl (the lock is renewed every third of --ttl until --max-hold)",
                human(max_hold),
                human(args.lease.ttl)
            ),
        ));
    }
    let mut b = builder(lm, &args.name, &args.lease, owner.clone()).renew(Renew::Auto);
    if let Some(d) = args.min_hold {
        b = b.min_hold(d);
    }
    // The lease must outlive the kill grace: the library's max_hold is --max-hold plus the
    // grace; locksmith itself starts stopping the command at --max-hold.
    if let Some(d) = args.max_hold {
        b = b.max_hold(d.saturating_add(args.kill_grace));
    }
    // Signal handlers first: a signal while waiting gives up the wait (nothing is held or
    // queued afterwards); one after the grant is forwarded to the command. A signal our
    // caller ignores (`nohup`, `&` in a script) stays ignored, for us and for the command.
    let ignored = ignored_signals();
    let handler = |kind: SignalKind, sig: Signal| -> Result<Handler, Failure> {
        if ignored.contains(&sig) {
            return Ok(Handler(None));
        }
        signal(kind)
            .map(|s| Handler(Some(s)))
            .map_err(|e| Failure::new(exit::STORE, format!("cannot handle signals: {e}")))
    };
    let mut int = handler(SignalKind::interrupt(), Signal::SIGINT)?;
    let mut term = handler(SignalKind::terminate(), Signal::SIGTERM)?;
    let mut hup = handler(SignalKind::hangup(), Signal::SIGHUP)?;

    let waits = args
        .lease
        .wait
        .is_some_and(|w| w != Wait::No && w != Wait::For(Duration::ZERO));
    let acquire = acquire_showing_holder(lm, &args.name, b, waits, out);
    let interrupted = |sig: Signal| {
        Failure::new(
            u8::try_from(128 + sig as i32).unwrap_or(1),
            format!(
                "interrupted by {sig} while waiting for lock {:?}; {shown} did not run",
                args.name
            ),
        )
    };
    let guard = tokio::select! {
        acquired = acquire => acquired.map_err(|e| {
            let not_running = format!("not running {shown}");
            contention(e, args.busy_exit_code, &not_running, &not_running)
        })?,
        _ = int.recv() => return Err(interrupted(Signal::SIGINT)),
        _ = term.recv() => return Err(interrupted(Signal::SIGTERM)),
        _ = hup.recv() => return Err(interrupted(Signal::SIGHUP)),
    };
    let fence = guard.fence();
    tracing::info!(lock = %args.name, fence, "acquired; starting {shown}");

    // Without a terminal (cron, scripts, services) the command gets a process group of its
    // own, so stopping it reaches everything it started. On a terminal it stays in
    // locksmith's group for job control, and the terminal's own Ctrl-C reaches it directly.
    let on_terminal = std::io::stdin().is_terminal();
    let mut command = tokio::process::Command::new(&program);
    command
        .args(&args.command[1..])
        .env("LOCKSMITH_NAME", &args.name)
        .env("LOCKSMITH_FENCE", fence.to_string())
        .env("LOCKSMITH_OWNER", &owner);
    if !on_terminal {
        command.process_group(0);
    }
    die_with_parent(&mut command);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            // Nothing ran: free the lock at once, whatever --min-hold says.
            let _ = guard.release_now().await;
            let code = if e.kind() == std::io::ErrorKind::NotFound {
                127
            } else {
                126
            };
            return Err(Failure::new(
                code,
                format!(
                    "cannot run {}: {e}; the lock was released",
                    shell_quote(&program.to_string_lossy())
                ),
            ));
        }
    };
    let target = Target {
        pid: child.id().and_then(|id| i32::try_from(id).ok()),
        group: !on_terminal,
    };

    let lost = guard.lost();
    tokio::pin!(lost);
    let max_hold = async {
        match args.max_hold {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(max_hold);
    // The first check comes one period after the grant (an interval's first tick is at once,
    // which would spend a store call on a lock just granted).
    let mut check = tokio::time::interval_at(
        tokio::time::Instant::now() + OWNERSHIP_CHECK,
        OWNERSHIP_CHECK,
    );
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let status = loop {
        let why = tokio::select! {
            status = child.wait() => break status,
            _ = int.recv() => {
                // On a terminal, Ctrl-C already reached the command; do not send a second.
                if !on_terminal {
                    target.send(Signal::SIGINT);
                }
                continue;
            }
            _ = term.recv() => { target.send(Signal::SIGTERM); continue; }
            _ = hup.recv() => { target.send(Signal::SIGHUP); continue; }
            reason = &mut lost => reason.to_string(),
            _ = &mut max_hold => "--max-hold was reached".to_string(),
            _ = check.tick() => {
                if still_ours(lm, &args.name, fence).await == Some(false) {
                    "it was cleared, reset or taken over".to_string()
                } else {
                    continue;
                }
            }
        };
        out.error(&Failure::new(exit::LOST, format!(
            "lock {:?} was lost while {shown} ran ({why}); stopping it (SIGTERM, then SIGKILL after {})",
            args.name, human(args.kill_grace)
        )));
        target.send(Signal::SIGTERM);
        if tokio::time::timeout(args.kill_grace, child.wait())
            .await
            .is_err()
        {
            target.send(Signal::SIGKILL);
            let _ = child.wait().await;
        }
        let _ = guard.release().await;
        return Ok(exit::LOST);
    };
    let status =
        status.map_err(|e| Failure::new(exit::STORE, format!("waiting for {shown}: {e}")))?;
    let code = exit_code(status);
    match guard.release().await {
        Ok(()) => {}
        Err(Error::NotHeld { .. }) => {
            return Err(Failure::new(
                exit::LOST,
                format!(
                    "lock {:?} was lost before {shown} finished (it exited {code}); its work may have overlapped another holder's",
                    args.name
                ),
            ));
        }
        Err(e) => out.note(format!(
            "locksmith: warning: releasing {:?} failed ({e}); it stays held until its lease expires",
            args.name
        )),
    }
    if out.json() {
        // On stderr, like errors: stdout is the command's alone.
        eprintln!(
            "{}",
            json!({"type": "run", "name": args.name, "fence": fence, "exit_code": code})
        );
    }
    Ok(code)
}

/// `locksmith acquire NAME`: prints the token and fence; the lock outlives the command.
pub(crate) async fn acquire(lm: &Locksmith, args: AcquireArgs, out: Out) -> Result<u8, Failure> {
    // No renewal: the process exits at once, and its watchdog would die with it.
    let mut b = builder(lm, &args.name, &args.lease, user()).renew(Renew::Off);
    if let Some(token) = &args.token {
        b = b.token(token.parse::<Token>().map_err(Failure::from)?);
    }
    let waits = args.lease.wait.is_some_and(|w| w != Wait::No);
    let busy = if args.lease.wait.is_some() {
        "try again later"
    } else {
        "try again later or pass --wait (e.g. --wait 5m)"
    };
    let guard = acquire_showing_holder(lm, &args.name, b, waits, out)
        .await
        .map_err(|e| {
            contention(
                e,
                exit::BUSY,
                busy,
                "try again later or wait longer (a larger --wait, or --wait forever)",
            )
        })?;
    let fence = guard.fence();
    let expires = guard.expires_in();
    let token = guard.token().expose().to_string();
    let printed = if out.json() {
        out.try_line(json!({
            "type": "acquired",
            "name": args.name,
            "token": token,
            "fence": fence,
            "expires_in_ms": expires.map(ms),
        }))
    } else {
        out.try_line(format!("token={token}\nfence={fence}"))
    };
    if !printed {
        // Nobody received the token, so nobody could release the lock: give it back.
        let _ = guard.release_now().await;
        return Err(Failure::new(
            exit::STORE,
            "cannot write the token to stdout (closed?); the lock was released",
        ));
    }
    let _ = guard.leak();
    if !out.json() {
        out.note(format!(
            "locksmith: acquired {:?} (fence {fence}); it stays held until it expires in {} or `locksmith release {} --token …`",
            args.name,
            expires.map_or("never".into(), human),
            shell_quote(&args.name)
        ));
    }
    Ok(exit::OK)
}

fn token(args: &TokenArgs) -> Result<Token, Failure> {
    args.token.parse().map_err(Failure::from)
}

fn not_held(name: &str) -> Failure {
    Failure::new(
        exit::NOT_HELD,
        format!("lock {name:?} is not held by this token (released, expired or cleared)"),
    )
}

/// `locksmith extend NAME --token T --ttl D`.
pub(crate) async fn extend(lm: &Locksmith, args: ExtendArgs, out: Out) -> Result<u8, Failure> {
    let name = &args.token.name;
    let guard = match lm.resume(name, token(&args.token)?).await {
        Err(Error::NotHeld { .. }) => return Err(not_held(name)),
        other => other?,
    };
    guard.extend(args.ttl).await?;
    let _ = guard.leak();
    if out.json() {
        out.object(json!({"type": "extended", "name": name, "expires_in_ms": ms(args.ttl)}));
    } else {
        out.note(format!(
            "locksmith: {name:?} now expires in {}",
            human(args.ttl)
        ));
    }
    Ok(exit::OK)
}

/// `locksmith release NAME --token T`.
pub(crate) async fn release(lm: &Locksmith, args: TokenArgs, out: Out) -> Result<u8, Failure> {
    let guard = match lm.resume(&args.name, token(&args)?).await {
        Err(Error::NotHeld { .. }) => return Err(not_held(&args.name)),
        other => other?,
    };
    match guard.release().await {
        Err(Error::NotHeld { .. }) => return Err(not_held(&args.name)),
        other => other?,
    }
    if out.json() {
        out.object(json!({"type": "released", "name": args.name}));
    } else {
        out.note(format!("locksmith: released {:?}", args.name));
    }
    Ok(exit::OK)
}

/// `locksmith status NAME`: 0 when held, 1 when free.
pub(crate) async fn status(lm: &Locksmith, args: NameArgs, out: Out) -> Result<u8, Failure> {
    let info = lm.inspect(&args.name).await?.filter(|i| !i.expired);
    if out.json() {
        let mut value = match &info {
            Some(info) => output::lock_json(info),
            None => json!({"name": args.name}),
        };
        value["type"] = json!("status");
        value["held"] = json!(info.is_some());
        out.object(value);
    } else if !out.quiet {
        match &info {
            Some(info) => out.line(format!("{} is held by {}", safe(&args.name), holder(info))),
            None => out.line(format!("{} is free", safe(&args.name))),
        }
    }
    Ok(if info.is_some() {
        exit::OK
    } else {
        exit::NOT_HELD
    })
}
