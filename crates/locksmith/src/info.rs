//! Plain types at the bottom of the crate: what anyone may see of a lock ([`LockInfo`]) and
//! why a guard was lost ([`LossReason`]). They depend on nothing else in locksmith, so the
//! error type, the stores and the guard can all build on them.

use std::fmt;
use std::time::{Duration, SystemTime};

/// What anyone may know about a lock: who holds it, since when and until when. Never the
/// token.
///
/// Durations are computed by the store from its own clock; the absolute times are for display
/// only (they mix the store's clock with this machine's). Holder fields that a store layout
/// does not record are `None` — the python-redis-lock layout keeps only a token, so it knows
/// neither owner, host, pid, fence nor grant time; django-lockmgr's table has no host or
/// fence. Each store says which it records in its [`Capabilities`](crate::Capabilities)
/// (`holder_metadata`, `fencing`).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct LockInfo {
    /// The lock's name.
    pub name: String,
    /// The holder's label (`.owner(…)`, by default the program's name).
    pub owner: Option<String>,
    /// The holder's host name.
    pub host: Option<String>,
    /// The holder's process id.
    pub pid: Option<u32>,
    /// The fencing token of the current grant.
    pub fence: Option<u64>,
    /// How long ago the lock was granted.
    pub held_for: Option<Duration>,
    /// How long until the lease expires; `None` for a lock that never expires. Zero when
    /// expired.
    pub expires_in: Option<Duration>,
    /// Whether the lease has expired (the row is still there until someone takes the lock
    /// over, purges it, or the store's retention removes it). Always `false` on stores that
    /// drop expired locks (`Capabilities::expired_visible` is false).
    pub expired: bool,
    /// Whether the holder has released the lock and `min_hold` keeps it until `expires_in`.
    pub released: bool,
    /// The `min_hold` the lock was acquired with, where the store records it: a release
    /// before `held_for` reaches it keeps the lock until then.
    pub min_hold: Option<Duration>,
    /// When the lock was granted (display only).
    pub acquired_at: Option<SystemTime>,
    /// When the lease expires (display only); `None` when it never expires.
    pub expires_at: Option<SystemTime>,
    /// How soon the store asks the waiter that got this answer to try again, where it asks:
    /// a store whose waiters in other processes poll gives the waiter next in line (SQLite's
    /// reservation holder) a short interval, so the lock reaches it soon after its release.
    /// `None` otherwise; not part of the lock's state.
    pub retry_in: Option<Duration>,
}

impl LockInfo {
    /// Info about the lock `name` with nothing known but its lease (`None`: never expires);
    /// for store implementations, which then fill in what they record.
    pub fn new(name: impl Into<String>, expires_in: Option<Duration>) -> LockInfo {
        LockInfo {
            name: name.into(),
            owner: None,
            host: None,
            pid: None,
            fence: None,
            held_for: None,
            expires_in,
            expired: false,
            released: false,
            min_hold: None,
            acquired_at: None,
            expires_at: None,
            retry_in: None,
        }
    }
}

impl fmt::Display for LockInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.owner.as_deref().unwrap_or("an unknown holder"))?;
        if let Some(host) = &self.host {
            write!(f, " on {host}")?;
        }
        let mut parts: Vec<String> = Vec::new();
        if let Some(pid) = self.pid {
            parts.push(format!("pid {pid}"));
        }
        if let Some(fence) = self.fence {
            parts.push(format!("fence {fence}"));
        }
        if let Some(held) = self.held_for {
            parts.push(format!("held for {}", DisplayDuration(held)));
        }
        parts.push(match (self.expired, self.expires_in) {
            (true, _) => "expired".to_string(),
            (false, Some(d)) => format!("expires in {}", DisplayDuration(d)),
            (false, None) => "never expires".to_string(),
        });
        if self.released {
            parts.push("released but kept by min_hold".to_string());
        }
        write!(f, " ({})", parts.join(", "))
    }
}

/// Why a guard was lost (see [`LockGuard::lost`](crate::LockGuard::lost)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LossReason {
    /// The store answered that the token no longer holds the lock: it was cleared, reset,
    /// or expired and taken over.
    Revoked,
    /// The lease ran out: renewal was off (`Renew::Off`, or a resumed guard) and the local
    /// deadline — the last confirmed lease minus a safety margin — passed.
    Expired,
    /// Renewal was on, but no renewal reached the store before the local deadline, so the
    /// lease may have expired (store unreachable or too slow).
    RenewalFailed,
    /// `max_hold` was reached; the watchdog stopped renewing.
    MaxHold,
}

impl fmt::Display for LossReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LossReason::Revoked => "the store says this token no longer holds it",
            LossReason::Expired => "the lease ran out (renewal was off)",
            LossReason::RenewalFailed => "the lease ran out before a renewal reached the store",
            LossReason::MaxHold => "max_hold was reached",
        })
    }
}

/// Formats a duration to millisecond precision for messages.
pub(crate) struct DisplayDuration(pub(crate) Duration);

impl fmt::Display for DisplayDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms < 1000 {
            let us = self.0.as_micros();
            if ms == 0 && us > 0 {
                write!(f, "{us}µs")
            } else {
                write!(f, "{ms}ms")
            }
        } else {
            write!(f, "{:.1}s", self.0.as_secs_f64())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_with_and_without_holder_fields() {
        let mut info = LockInfo::new("a", Some(Duration::from_millis(1500)));
        assert_eq!(info.to_string(), "an unknown holder (expires in 1.5s)");
        info.owner = Some("cron".into());
        info.host = Some("web1".into());
        info.pid = Some(7);
        info.fence = Some(9);
        info.held_for = Some(Duration::from_millis(20));
        assert_eq!(
            info.to_string(),
            "cron on web1 (pid 7, fence 9, held for 20ms, expires in 1.5s)"
        );
    }
}
