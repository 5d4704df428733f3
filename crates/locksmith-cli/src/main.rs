//! `locksmith`: run commands under a lock, and administer locks, on any locksmith store.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{CommandFactory, Parser};

use locksmith::Locksmith;

mod admin;
mod cli;
mod exit;
mod output;
mod run;

use cli::{Cli, Color, Command};
use exit::Failure;
use output::Out;

/// Whether the raw arguments ask for JSON output (for errors found before they parse).
fn wants_json(args: &[std::ffi::OsString]) -> bool {
    args.windows(2)
        .any(|w| w[0] == "--format" && w[1] == "json")
        || args.iter().any(|a| a == "--format=json")
}

/// The subcommand the raw arguments name (for errors found before they parse): the first
/// word that is not an option or the value of a global option.
fn subcommand_of(args: &[std::ffi::OsString]) -> Option<String> {
    let mut words = args.iter().skip(1);
    while let Some(word) = words.next() {
        let word = word.to_str()?;
        if matches!(word, "--url" | "--format" | "--color") {
            words.next();
        } else if word == "--" {
            return None;
        } else if !word.starts_with('-') {
            return Some(word.to_string());
        }
    }
    None
}

/// The one line a clap error becomes: its message, tips (`tip: a similar subcommand exists:
/// 'list'`) and usage (`usage: locksmith run [OPTIONS] <NAME> -- <COMMAND>...`, which shows
/// where `--` goes), pointing at the help of the command at fault.
fn usage_line(e: &clap::Error, args: &[std::ffi::OsString]) -> String {
    let rendered = e.render().to_string();
    let mut parts: Vec<&str> = Vec::new();
    let mut command = None;
    for line in rendered.lines().map(str::trim) {
        if let Some(usage) = line.strip_prefix("Usage: ") {
            // `locksmith run [OPTIONS] …`: the command at fault is the second word
            command = usage
                .split_whitespace()
                .nth(1)
                .filter(|w| Cli::command().find_subcommand(w).is_some())
                .map(str::to_string);
            parts.push(line);
            break;
        }
        if !line.is_empty() && !line.starts_with("For more information") {
            parts.push(line);
        }
    }
    // Errors in a value carry no usage: the command is the one the arguments name.
    let command = command
        .or_else(|| subcommand_of(args).filter(|w| Cli::command().find_subcommand(w).is_some()));
    let joined = parts.join("; ").replacen("; Usage: ", "; usage: ", 1);
    let message = joined.strip_prefix("error: ").unwrap_or(&joined);
    let help = match command {
        Some(sub) => format!("locksmith {sub} --help"),
        None => "locksmith --help".to_string(),
    };
    format!("{message} (see `{help}`)")
}

/// Prints `(exit N)` on stdout for a failed `acquire`, unless stdout is a terminal or the
/// output is JSON: `eval "$(locksmith acquire …)"` then fails with N instead of evaluating
/// nothing and going on without the lock.
fn fail_closed(subcommand: Option<&str>, json: bool, code: u8) {
    if code != exit::OK
        && subcommand == Some("acquire")
        && !json
        && !std::io::stdout().is_terminal()
    {
        use std::io::Write;
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "(exit {code})").and_then(|()| stdout.flush());
    }
}

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let cli = match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help, --version: clap prints them as usual
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) if e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            // `locksmith` alone: the help, as a usage error
            let _ = e.print();
            return ExitCode::from(exit::USAGE);
        }
        Err(e) => {
            // One line, in the chosen format.
            let json = wants_json(&args);
            let out = Out {
                format: if json {
                    cli::Format::Json
                } else {
                    cli::Format::Human
                },
                quiet: false,
                color: false,
                table_color: false,
            };
            out.error(&Failure::new(exit::USAGE, usage_line(&e, &args)));
            fail_closed(subcommand_of(&args).as_deref(), json, exit::USAGE);
            return ExitCode::from(exit::USAGE);
        }
    };
    let subcommand = subcommand_of(&args);
    init_tracing(&cli);
    let color = |terminal: bool| match cli.color {
        Color::Always => true,
        Color::Never => false,
        Color::Auto => std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()) && terminal,
    };
    let out = Out {
        format: cli.format,
        quiet: cli.quiet,
        color: color(std::io::stderr().is_terminal()),
        table_color: color(std::io::stdout().is_terminal()),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            out.error(&Failure::new(exit::STORE, format!("cannot start: {e}")));
            fail_closed(subcommand.as_deref(), out.json(), exit::STORE);
            return ExitCode::from(exit::STORE);
        }
    };
    let code = match runtime.block_on(dispatch(cli, out)) {
        Ok(code) => code,
        Err(failure) => {
            out.failure(&failure);
            failure.code
        }
    };
    fail_closed(subcommand.as_deref(), out.json(), code);
    ExitCode::from(code)
}

fn init_tracing(cli: &Cli) {
    let level = match (cli.quiet, cli.verbose) {
        // The CLI reports what matters itself; -v shows the library's warnings and more.
        (_, 0) => "error",
        (_, 1) => "info",
        (_, 2) => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!("locksmith={level},locksmith_cli={level}"))
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(matches!(cli.color, Color::Always))
        .try_init();
}

async fn connect(url: &str) -> Result<Locksmith, Failure> {
    Locksmith::connect(url).await.map_err(Failure::from)
}

/// Whether the store URL is the in-process memory store.
fn is_memory(url: &str) -> bool {
    url.trim_start()
        .get(..7)
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("memory:"))
}

async fn dispatch(cli: Cli, out: Out) -> Result<u8, Failure> {
    if let Command::Completions { shell } = cli.command {
        let mut cmd = Cli::command();
        clap_complete::generate(shell, &mut cmd, "locksmith", &mut std::io::stdout());
        return Ok(exit::OK);
    }
    // An empty URL (`LOCKSMITH_URL=`) means the default, as for the library's from_env.
    let url = cli
        .url
        .clone()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| locksmith::DEFAULT_URL.to_string());
    if is_memory(&url) && !matches!(cli.command, Command::Run(_)) {
        return Err(Failure::new(
            exit::USAGE,
            format!(
                "{url} keeps locks inside this one locksmith process, so they vanish when it exits — \
                 only `run` can use it (for trying things out); use a shared store such as \
                 sqlite:///var/lib/locksmith/locks.db, or the default (no --url)"
            ),
        ));
    }
    let lm = connect(&url).await?;
    match cli.command {
        Command::Run(args) => run::run(&lm, args, out).await,
        Command::Acquire(args) => run::acquire(&lm, args, out).await,
        Command::Extend(args) => run::extend(&lm, args, out).await,
        Command::Release(args) => run::release(&lm, args, out).await,
        Command::Status(args) => run::status(&lm, args, out).await,
        Command::List(args) => admin::list(&lm, args, out).await,
        Command::Set(args) => admin::set(&lm, args, out).await,
        Command::Clear(args) => admin::clear(&lm, args, out).await,
        Command::Reset(args) => admin::reset(&lm, args, out).await,
        Command::Purge => admin::purge(&lm, out).await,
        Command::Completions { .. } => unreachable!("handled above"),
    }
}
