//! Exit codes: a stable contract for scripts, documented in `--help` and the README.

use locksmith::Error;

/// Success (and, for `status`, "the lock is held").
pub(crate) const OK: u8 = 0;
/// `status`: the lock is free. `release`/`extend`: the token does not hold the lock.
/// `reset`: cancelled at the prompt, nothing removed.
pub(crate) const NOT_HELD: u8 = 1;
/// Bad usage: unknown flag, malformed duration, bad name, bad store URL, unusable lock file.
pub(crate) const USAGE: u8 = 2;
/// The store failed: an operation failed or stayed busy, a server is unreachable.
pub(crate) const STORE: u8 = 3;
/// `--wait` ran out while the lock stayed held.
pub(crate) const TIMEOUT: u8 = 4;
/// The lock is held elsewhere (EX_TEMPFAIL); `run --busy-exit-code` overrides it.
pub(crate) const BUSY: u8 = 75;
/// The lock was lost while `run`'s command was running; the command was stopped.
pub(crate) const LOST: u8 = 76;

/// The table printed by `--help`.
pub(crate) const TABLE: &str = "\
Exit codes:
  0   ok (status: the lock is held)
  1   status: the lock is free; release/extend: the token does not hold the lock;
      reset: cancelled at the prompt, nothing removed
  2   usage error: bad flag, duration, name or store URL, or an unusable lock file
  3   store error: the store failed or stayed busy, a server is unreachable
  4   --wait ran out
  75  busy: the lock is held elsewhere (run --busy-exit-code N overrides)
  76  the lock was lost (or --max-hold reached) while the command ran; it was stopped
  126 run: the command could not be started (127: not found)
  run otherwise exits with the command's code (128+N if it was killed by signal N)
With -q a busy lock (75, or run --busy-exit-code N) prints nothing.";

/// A failure to report: one line on stderr and an exit code.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) code: u8,
    pub(crate) message: String,
    /// An expected skip (the lock is held elsewhere): silent with `-q`.
    pub(crate) skip: bool,
}

impl Failure {
    pub(crate) fn new(code: u8, message: impl Into<String>) -> Failure {
        Failure {
            code,
            message: message.into(),
            skip: false,
        }
    }

    /// An expected skip: the lock is held elsewhere.
    pub(crate) fn skip(code: u8, message: impl Into<String>) -> Failure {
        Failure {
            skip: true,
            ..Failure::new(code, message)
        }
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        let code = match &e {
            Error::Locked { .. } => BUSY,
            Error::Timeout { .. } => TIMEOUT,
            Error::NotHeld { .. } | Error::AlreadyHeld { .. } => NOT_HELD,
            Error::Lost { .. } => LOST,
            Error::InvalidName { .. } | Error::InvalidOption { .. } | Error::Config { .. } => USAGE,
            _ => STORE,
        };
        let message = match e {
            // The CLI's words: `--max-hold`, not `max_hold`.
            Error::InvalidOption { option, message } => {
                format!("--{}: {message}", option.replace('_', "-"))
            }
            e => e.to_string(),
        };
        Failure::new(code, message)
    }
}
