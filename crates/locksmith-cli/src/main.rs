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
            // One line, in the chosen format: clap's first paragraph, without its "error: ".
            let rendered = e.render().to_string();
            let paragraph: Vec<&str> = rendered
                .lines()
                .take_while(|l| !l.trim().is_empty())
                .map(str::trim)
                .collect();
            let joined = paragraph.join(" ");
            let message = joined.strip_prefix("error: ").unwrap_or(&joined);
            let out = Out {
                format: if wants_json(&args) {
                    cli::Format::Json
                } else {
                    cli::Format::Human
                },
                quiet: false,
                color: false,
                table_color: false,
            };
            out.error(&Failure::new(
                exit::USAGE,
                format!("{message} (see `locksmith --help`)"),
            ));
            return ExitCode::from(exit::USAGE);
        }
    };
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
            return ExitCode::from(exit::STORE);
        }
    };
    match runtime.block_on(dispatch(cli, out)) {
        Ok(code) => ExitCode::from(code),
        Err(failure) => {
            out.error(&failure);
            ExitCode::from(failure.code)
        }
    }
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

async fn dispatch(cli: Cli, out: Out) -> Result<u8, Failure> {
    if let Command::Completions { shell } = cli.command {
        let mut cmd = Cli::command();
        clap_complete::generate(shell, &mut cmd, "locksmith", &mut std::io::stdout());
        return Ok(exit::OK);
    }
    let lm = connect(&cli.url).await?;
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
