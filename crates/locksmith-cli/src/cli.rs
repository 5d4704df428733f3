//! The command line: global options and one struct per command.

use std::ffi::OsString;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use locksmith::Wait;

/// Parses `30s`, `5m`, `1h30m`, `250ms`, up to the 100-year limit.
pub(crate) fn duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s)
        .map_err(|e| format!("{e} — write a duration such as 30s, 5m, 1h30m or 250ms"))?;
    if d > locksmith::MAX_DURATION {
        return Err(format!(
            "{s} is longer than the 100-year limit — write a duration such as 30s, 5m, 1h30m or 250ms"
        ));
    }
    Ok(d)
}

/// Parses a TTL: a duration from the library's minimum (50ms) to 100 years.
pub(crate) fn ttl(s: &str) -> Result<Duration, String> {
    let d = duration(s)?;
    if d.is_zero() {
        return Err(format!(
            "a zero TTL would expire as it is granted — write a duration such as 30s, 5m, 1h30m or 250ms (at least {}ms)",
            locksmith::MIN_TTL.as_millis()
        ));
    }
    if d < locksmith::MIN_TTL {
        return Err(format!(
            "{s} is below the shortest TTL, {}ms: the lease would end before the lock could be used — write a duration such as 30s, 5m, 1h30m or 250ms",
            locksmith::MIN_TTL.as_millis()
        ));
    }
    Ok(d)
}

/// Parses `--wait`: a duration, or `forever`.
pub(crate) fn wait(s: &str) -> Result<Wait, String> {
    if s.eq_ignore_ascii_case("forever") {
        return Ok(Wait::Forever);
    }
    // `--wait 0s` means "do not wait", with the busy exit code.
    duration(s)
        .map(|d| if d.is_zero() { Wait::No } else { Wait::For(d) })
        .map_err(|e| format!("{e}, or `forever`"))
}

/// The heading of the options every command takes, listed after the command's own.
const GLOBAL: &str = "Global options";

#[derive(Parser, Debug)]
#[command(
    name = "locksmith",
    version,
    about = "Named, leased, fenced locks for shell scripts and operators",
    long_about = "Named, leased, fenced locks for shell scripts and operators.\n\n\
        Locks live in a store: by default a SQLite file per user \
        ($XDG_STATE_HOME/locksmith/locks.db, else ~/.local/state/locksmith/locks.db); \
        --url or LOCKSMITH_URL picks another (sqlite:///var/lib/locksmith/locks.db, memory://).",
    after_help = crate::exit::TABLE,
    propagate_version = true
)]
pub(crate) struct Cli {
    /// The lock store [default: sqlite://, the per-user file; empty means the default].
    #[arg(
        long,
        env = "LOCKSMITH_URL",
        global = true,
        hide_env_values = true,
        help_heading = GLOBAL
    )]
    pub(crate) url: Option<String>,

    /// Output format: human text, or one JSON object per line.
    #[arg(long, value_enum, global = true, default_value_t = Format::Human, help_heading = GLOBAL)]
    pub(crate) format: Format,

    /// Print only what was asked for: no notes, no spinner, nothing for a busy lock.
    #[arg(short, long, global = true, help_heading = GLOBAL)]
    pub(crate) quiet: bool,

    /// Log what locksmith does to stderr (-v info, -vv debug, -vvv trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count, help_heading = GLOBAL)]
    pub(crate) verbose: u8,

    /// When to use colour (NO_COLOR is honoured by `auto`).
    #[arg(long, value_enum, global = true, default_value_t = Color::Auto, help_heading = GLOBAL)]
    pub(crate) color: Color,

    #[command(subcommand)]
    pub(crate) command: Command,
}

/// `--format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Format {
    /// Text for people.
    Human,
    /// One JSON object per line (see the README for the schema).
    Json,
}

/// `--color`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Color {
    /// When stderr/stdout is a terminal and NO_COLOR is not set.
    Auto,
    /// Always.
    Always,
    /// Never.
    Never,
}

#[derive(Subcommand, Debug)]
pub(crate) enum Command {
    /// Run a command while holding a lock (renewed while it runs; released when it exits).
    #[command(after_help = "\
Examples:
  # cron: at most one backup at a time; skip (exit 75) if one is running
  locksmith run nightly-backup -- /usr/local/bin/backup.sh
  # wait up to 5 minutes for the lock, then run
  locksmith run deploy --wait 5m -- ./deploy.sh production
  # at most once per hour, even if the job is quick
  locksmith run hourly-report --min-hold 1h -- ./report.sh

The command sees LOCKSMITH_NAME, LOCKSMITH_FENCE and LOCKSMITH_OWNER in its environment.
SIGINT, SIGTERM and SIGHUP are forwarded to it. If the lock is lost, it gets SIGTERM, then
SIGKILL after --kill-grace, and locksmith exits 76.")]
    Run(RunArgs),

    /// Acquire a lock and keep it after exiting; prints the token and fence.
    #[command(after_help = "\
Examples:
  set -e
  eval \"$(locksmith acquire migration --ttl 10m)\"    # sets $token and $fence
  ./migrate.sh                                        # runs only if the lock was acquired
  locksmith release migration --token \"$token\"

On failure, acquire prints `(exit N)` on stdout (unless it is a terminal), so the eval fails
with acquire's exit code and `set -e` stops the script.")]
    Acquire(AcquireArgs),

    /// Set the lease of a lock held by a token to end TTL from now.
    #[command(after_help = "Example:\n  locksmith extend migration --token \"$token\" --ttl 10m")]
    Extend(ExtendArgs),

    /// Release a lock held by a token.
    #[command(after_help = "Example:\n  locksmith release migration --token \"$token\"")]
    Release(TokenArgs),

    /// Show who holds a lock; exits 0 when held, 1 when free (like grep -q).
    #[command(
        after_help = "Example:\n  locksmith status nightly-backup -q || echo \"no backup running\""
    )]
    Status(NameArgs),

    /// List locks (live ones; --expired adds expired rows).
    #[command(
        after_help = "Examples:\n  locksmith list\n  locksmith list jobs/ --format json | jq .owner"
    )]
    List(ListArgs),

    /// Create or renew locks whoever holds them (django-lockmgr's set_lock).
    #[command(after_help = "\
Examples:
  # hold maintenance locks for an hour; renew them if already held
  locksmith set maint/db maint/cache --ttl 1h
  # only renew what is held; fail (exit 75, nothing changed) if anything is held
  locksmith set a b --only-renew
  locksmith set a b --fail")]
    Set(SetArgs),

    /// Force-release locks whoever holds them, and say which existed; a `locksmith run`
    /// holding one stops its command within a second.
    #[command(after_help = "Example:\n  locksmith clear nightly-backup")]
    Clear(NamesArgs),

    /// Remove every lock in the namespace (asks to type YES unless --force); running holders
    /// are stopped.
    #[command(
        after_help = "Examples:\n  locksmith reset\n  locksmith reset --force   # in scripts"
    )]
    Reset(ResetArgs),

    /// Delete expired locks.
    #[command(after_help = "Example:\n  locksmith purge")]
    Purge,

    /// Print a shell completion script.
    #[command(
        after_help = "Example:\n  locksmith completions bash > /etc/bash_completion.d/locksmith"
    )]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

#[derive(Args, Debug)]
pub(crate) struct LeaseArgs {
    /// The lease: the lock expires this long after its last renewal (at least 50ms).
    #[arg(long, value_parser = ttl, default_value = "60s")]
    pub(crate) ttl: Duration,
    /// How long to wait for a held lock: a duration, or `forever`. Default: do not wait.
    #[arg(long, value_parser = wait)]
    pub(crate) wait: Option<Wait>,
    /// A label for the holder, shown by status and list.
    #[arg(long)]
    pub(crate) owner: Option<String>,
}

#[derive(Args, Debug)]
pub(crate) struct RunArgs {
    /// The lock's name.
    pub(crate) name: String,
    #[command(flatten)]
    pub(crate) lease: LeaseArgs,
    /// Keep the lock at least this long after it was taken, even if the command ends sooner.
    #[arg(long, value_parser = duration)]
    pub(crate) min_hold: Option<Duration>,
    /// Stop renewing after this long: the command is stopped and locksmith exits 76.
    #[arg(long, value_parser = duration)]
    pub(crate) max_hold: Option<Duration>,
    /// How long the command gets between SIGTERM and SIGKILL when the lock is lost.
    #[arg(long, value_parser = duration, default_value = "10s")]
    pub(crate) kill_grace: Duration,
    /// The exit code when the lock is held elsewhere.
    #[arg(long, default_value_t = crate::exit::BUSY)]
    pub(crate) busy_exit_code: u8,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub(crate) command: Vec<OsString>,
}

#[derive(Args, Debug)]
pub(crate) struct AcquireArgs {
    /// The lock's name.
    pub(crate) name: String,
    #[command(flatten)]
    pub(crate) lease: LeaseArgs,
    /// Hold the lock with this token instead of a random one (printable ASCII, no spaces):
    /// e.g. the id a python-redis-lock `Lock(…, id=…)` will extend and release.
    #[arg(long)]
    pub(crate) token: Option<String>,
}

#[derive(Args, Debug)]
pub(crate) struct ExtendArgs {
    #[command(flatten)]
    pub(crate) token: TokenArgs,
    /// The new lease, from now (at least 50ms).
    #[arg(long, value_parser = ttl)]
    pub(crate) ttl: Duration,
}

#[derive(Args, Debug)]
pub(crate) struct TokenArgs {
    /// The lock's name.
    pub(crate) name: String,
    /// The token printed by `acquire`.
    #[arg(long, env = "LOCKSMITH_TOKEN", hide_env_values = true)]
    pub(crate) token: String,
}

#[derive(Args, Debug)]
pub(crate) struct NameArgs {
    /// The lock's name.
    pub(crate) name: String,
}

#[derive(Args, Debug)]
pub(crate) struct NamesArgs {
    /// The locks' names.
    #[arg(required = true)]
    pub(crate) names: Vec<String>,
}

#[derive(Args, Debug)]
pub(crate) struct ListArgs {
    /// Only names starting with this.
    pub(crate) prefix: Option<String>,
    /// Include expired locks (marked as such).
    #[arg(long)]
    pub(crate) expired: bool,
}

#[derive(Args, Debug)]
pub(crate) struct SetArgs {
    /// The locks' names.
    #[arg(required = true)]
    pub(crate) names: Vec<String>,
    /// Do not renew locks that are already held (skip them).
    #[arg(short = 'n', long, conflicts_with = "only_renew")]
    pub(crate) no_renew: bool,
    /// Only renew locks that are held; create none.
    #[arg(short = 'r', long)]
    pub(crate) only_renew: bool,
    /// The locks never expire.
    #[arg(short = 'k', long, conflicts_with = "ttl")]
    pub(crate) no_expiry: bool,
    /// The lease to set (at least 50ms).
    #[arg(short = 't', long, value_parser = ttl)]
    pub(crate) ttl: Option<Duration>,
    /// Change nothing and exit 75 if any of the locks is held.
    #[arg(short = 'e', long)]
    pub(crate) fail: bool,
    /// The owner label of created locks.
    #[arg(long)]
    pub(crate) owner: Option<String>,
}

#[derive(Args, Debug)]
pub(crate) struct ResetArgs {
    /// Do not ask; required when not run from a terminal.
    #[arg(long)]
    pub(crate) force: bool,
}
