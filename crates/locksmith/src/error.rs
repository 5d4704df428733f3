//! The one error type of locksmith.

use std::time::Duration;

use crate::info::{LockInfo, LossReason};

/// A boxed error from a store driver, kept as the `source` of [`Error::Store`] and
/// [`Error::Config`] so driver types never appear in the public API.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// `Result<T, locksmith::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in locksmith.
///
/// Contention ([`Locked`](Error::Locked), [`Timeout`](Error::Timeout)) is kept apart from
/// ownership problems ([`NotHeld`](Error::NotHeld), [`AlreadyHeld`](Error::AlreadyHeld),
/// [`Lost`](Error::Lost)), from bad input ([`InvalidName`](Error::InvalidName),
/// [`InvalidOption`](Error::InvalidOption), [`Config`](Error::Config)) and from the store
/// itself ([`Store`](Error::Store), [`Unsupported`](Error::Unsupported)). Each message says
/// what to do about it. Match on the variants or use the `is_*` predicates.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The lock is held by someone else and the caller asked not to wait (`Wait::No`).
    #[error(
        "lock {name:?} is held by {holder} — wait for it with Wait::For/Wait::Forever, or try again later"
    )]
    Locked {
        /// The lock's name.
        name: String,
        /// Who holds it (never the holder's token).
        holder: Box<LockInfo>,
    },
    /// The lock stayed held for the whole `Wait::For` period.
    #[error(
        "timed out after {waited:?} waiting for lock {name:?} — wait longer, or check who holds it with inspect()"
    )]
    Timeout {
        /// The lock's name.
        name: String,
        /// How long the caller waited (at least the requested period).
        waited: Duration,
    },
    /// The token does not hold the lock (any more): it was released, expired and taken over,
    /// or cleared by an operator.
    #[error(
        "lock {name:?} is not held by this token (released, expired or cleared) — acquire it again"
    )]
    NotHeld {
        /// The lock's name.
        name: String,
    },
    /// The lock is already held by the very token used to acquire it (locks are not reentrant).
    #[error(
        "lock {name:?} is already held by this token — locks are not reentrant; use the guard you have, or resume() it"
    )]
    AlreadyHeld {
        /// The lock's name.
        name: String,
    },
    /// The lease ended while the work under it was still running.
    #[error(
        "lock {name:?} was lost while held ({reason}) — the work under it may have overlapped with another holder; use the fence to reject stale writes"
    )]
    Lost {
        /// The lock's name.
        name: String,
        /// Why the lease was lost.
        reason: LossReason,
    },
    /// A lock name is not acceptable.
    #[error("invalid lock name {name:?}: {reason}")]
    InvalidName {
        /// The offending name (shortened for display when very long).
        name: String,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// An option or a combination of options is not acceptable.
    #[error("invalid option `{option}`: {message}")]
    InvalidOption {
        /// The option at fault, e.g. `ttl` or `max_hold`.
        option: &'static str,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// The store URL or the environment is not usable.
    #[error("configuration error: {message}")]
    Config {
        /// What is wrong and how to fix it.
        message: String,
        /// The underlying error, if any.
        #[source]
        source: Option<BoxError>,
    },
    /// The store cannot do this operation.
    #[error(
        "the {store} store does not support {operation} — do without it, or use a store that has it (see Locksmith::capabilities())"
    )]
    Unsupported {
        /// The store's kind, e.g. `memory`.
        store: &'static str,
        /// The operation it cannot do.
        operation: &'static str,
    },
    /// The store failed (connection, I/O, server error).
    #[error("{store} store error{}: {source}", if *.retryable { " (retryable)" } else { "" })]
    Store {
        /// The store's kind, e.g. `memory`.
        store: &'static str,
        /// Whether trying again later may succeed.
        retryable: bool,
        /// The underlying error.
        #[source]
        source: BoxError,
    },
}

impl Error {
    /// Whether this is [`Error::Locked`] (held, no wait requested).
    pub fn is_locked(&self) -> bool {
        matches!(self, Error::Locked { .. })
    }

    /// Whether this is [`Error::Timeout`].
    pub fn is_timeout(&self) -> bool {
        matches!(self, Error::Timeout { .. })
    }

    /// Whether this is contention: [`Error::Locked`] or [`Error::Timeout`].
    pub fn is_contention(&self) -> bool {
        self.is_locked() || self.is_timeout()
    }

    /// Whether this is [`Error::NotHeld`].
    pub fn is_not_held(&self) -> bool {
        matches!(self, Error::NotHeld { .. })
    }

    /// Whether this is [`Error::AlreadyHeld`].
    pub fn is_already_held(&self) -> bool {
        matches!(self, Error::AlreadyHeld { .. })
    }

    /// Whether this is [`Error::Lost`].
    pub fn is_lost(&self) -> bool {
        matches!(self, Error::Lost { .. })
    }

    /// Whether this is bad input: [`Error::InvalidName`], [`Error::InvalidOption`] or
    /// [`Error::Config`].
    pub fn is_invalid_input(&self) -> bool {
        matches!(
            self,
            Error::InvalidName { .. } | Error::InvalidOption { .. } | Error::Config { .. }
        )
    }

    /// Whether this is a transient store failure worth retrying the same call (I/O, a
    /// timeout, a dropped connection, a busy file). Never contention: a held lock is
    /// [`is_contention`](Error::is_contention).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::Store {
                retryable: true,
                ..
            }
        )
    }

    /// Whether the store itself failed ([`Error::Store`]).
    pub fn is_store(&self) -> bool {
        matches!(self, Error::Store { .. })
    }

    /// The lock name this error is about, where there is one.
    pub fn lock_name(&self) -> Option<&str> {
        match self {
            Error::Locked { name, .. }
            | Error::Timeout { name, .. }
            | Error::NotHeld { name }
            | Error::AlreadyHeld { name }
            | Error::Lost { name, .. }
            | Error::InvalidName { name, .. } => Some(name),
            _ => None,
        }
    }

    pub(crate) fn invalid_option(option: &'static str, message: impl Into<String>) -> Error {
        Error::InvalidOption {
            option,
            message: message.into(),
        }
    }

    pub(crate) fn config(message: impl Into<String>) -> Error {
        Error::Config {
            message: message.into(),
            source: None,
        }
    }

    /// Builds an [`Error::Store`]; for store implementations.
    pub fn store(store: &'static str, retryable: bool, source: impl Into<BoxError>) -> Error {
        Error::Store {
            store,
            retryable,
            source: source.into(),
        }
    }
}
