//! Lock options, their validation, and the query and policy types of the admin calls.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::info::{DisplayDuration, LockInfo};
use crate::lease::Token;

/// The lease of a lock acquired without `.ttl(…)`: 60 seconds.
pub const DEFAULT_TTL: Duration = Duration::from_secs(60);

/// The longest duration any option accepts: 100 years of 365.25 days (as `humantime` counts
/// a year, so `"100y"` is accepted); longer ones could overflow a deadline or a store's time
/// column. Use `.no_expiry()` or `Wait::Forever` instead.
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 36_525 * 24 * 36);

/// The shortest TTL a lock accepts (in `.ttl(…)`, `extend(…)` and [`SetPolicy::ttl`]): 50 ms.
///
/// A lease must outlive the work of keeping it: the guard's local deadline is the send time
/// plus the TTL minus a margin of a tenth of the TTL, and `Renew::Auto` renews every third
/// of the TTL and retries failed renewals at most every 10 ms. At 50 ms the margin is 5 ms
/// (thousands of times the stores' 1 µs clock granularity, and above one local store round
/// trip), and a renewal has about 28 ms — two retries — between its first attempt and the
/// local deadline. Shorter leases expire before a grant can be used (`--ttl 1ms` would be lost
/// as its command starts); use a TTL of seconds for anything that renews across a network.
pub const MIN_TTL: Duration = Duration::from_millis(50);

/// How long `acquire` waits for a held lock.
///
/// Every wait ends at its deadline at the latest (a try already sent then may take one more
/// call timeout, the URL's `?timeout=`), on cancel, or on an error that retrying cannot fix;
/// store errors that may pass (timeouts, dropped connections) are retried while it waits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Wait {
    /// Do not wait: a held lock is [`Error::Locked`] with the holder's info.
    No,
    /// Wait at most this long (a real deadline, not restarted by wake-ups), then
    /// [`Error::Timeout`].
    For(Duration),
    /// Wait until this instant at the latest, then [`Error::Timeout`]; an instant already
    /// past still tries once.
    Until(Instant),
    /// Wait until the lock is free, like a mutex. The default of `acquire`.
    #[default]
    Forever,
}

impl Wait {
    /// The deadline of a wait that started at `started`; `None` for no deadline (`Forever`)
    /// and for `No` (which tries once).
    pub(crate) fn deadline(self, started: Instant) -> Option<Instant> {
        match self {
            Wait::For(d) => Some(started + d),
            Wait::Until(at) => Some(at),
            Wait::No | Wait::Forever => None,
        }
    }
}

/// Whether the lease is renewed in the background while the guard lives.
///
/// The default is [`Auto`](Renew::Auto) for every lock that expires — holding the guard (or
/// running the body) means holding the lock, and the TTL only bounds how long a crashed
/// holder blocks others — and [`Off`](Renew::Off) for `.no_expiry()` locks, which have no
/// lease to renew.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Renew {
    /// A bare lease: it ends `ttl` after the grant (or the last `extend`), and the guard is
    /// then lost with [`LossReason::Expired`](crate::LossReason::Expired).
    Off,
    /// A watchdog extends the lease to `ttl` every `ttl / 3` until the guard is released or
    /// dropped, or `max_hold` is reached. The default for locks that expire.
    Auto,
}

/// The options shared by `lock(…)` and `acquire_all(…)`, as the caller set them.
#[derive(Clone, Debug, Default)]
pub(crate) struct Options {
    pub(crate) ttl: Option<Duration>,
    pub(crate) no_expiry: bool,
    pub(crate) wait: Option<Wait>,
    /// `None`: the default (`Auto` for locks that expire, `Off` for `.no_expiry()`).
    pub(crate) renew: Option<Renew>,
    pub(crate) min_hold: Option<Duration>,
    pub(crate) max_hold: Option<Duration>,
    pub(crate) owner: Option<String>,
    pub(crate) token: Option<Token>,
}

/// Options after validation, ready to use.
#[derive(Clone, Debug)]
pub(crate) struct Plan {
    /// `None`: the lock never expires.
    pub(crate) ttl: Option<Duration>,
    pub(crate) wait: Wait,
    pub(crate) renew: Renew,
    pub(crate) min_hold: Option<Duration>,
    pub(crate) max_hold: Option<Duration>,
    pub(crate) owner: Option<Arc<str>>,
    pub(crate) token: Option<Token>,
}

/// Checks a duration option against [`MAX_DURATION`], and a TTL (option `"ttl"`: `.ttl(…)`,
/// `extend(…)`, [`SetPolicy::ttl`]) against [`MIN_TTL`] as well.
pub(crate) fn check_duration(option: &'static str, d: Duration) -> Result<()> {
    if d > MAX_DURATION || Instant::now().checked_add(d).is_none() {
        return Err(Error::invalid_option(
            option,
            format!(
                "{} is longer than the 100-year limit (of 365.25-day years) — use .no_expiry() or Wait::Forever for \"no limit\"",
                humantime::format_duration(d)
            ),
        ));
    }
    if option == "ttl" && d < MIN_TTL {
        return Err(Error::invalid_option(
            option,
            format!(
                "the TTL {} is below the minimum of {} (MIN_TTL), so the lease would end before it could be used — use at least {}, or seconds for locks that renew",
                DisplayDuration(d),
                DisplayDuration(MIN_TTL),
                DisplayDuration(MIN_TTL)
            ),
        ));
    }
    Ok(())
}

pub(crate) fn check_owner(owner: &str) -> Result<()> {
    if owner.is_empty() || owner.len() > 255 || owner.contains('\0') {
        return Err(Error::invalid_option(
            "owner",
            "an owner label is 1 to 255 bytes without NUL — pass a short label such as the job's name",
        ));
    }
    Ok(())
}

impl Options {
    /// Applies DESIGN §1's rules; `default_wait` is what the calling method uses when no
    /// `.wait(…)` was given.
    pub(crate) fn validate(&self, default_wait: Wait) -> Result<Plan> {
        let ttl = match (self.ttl, self.no_expiry) {
            (Some(_), true) => {
                return Err(Error::invalid_option(
                    "ttl",
                    "a TTL and .no_expiry() contradict each other — keep one",
                ));
            }
            (Some(ttl), false) if ttl.is_zero() => {
                return Err(Error::invalid_option(
                    "ttl",
                    "the TTL is zero, so the lock would expire as it is granted — use at least a few milliseconds (default 60s)",
                ));
            }
            (Some(ttl), false) => {
                check_duration("ttl", ttl)?;
                Some(ttl)
            }
            (None, true) => None,
            (None, false) => Some(DEFAULT_TTL),
        };
        if self.renew == Some(Renew::Auto) && ttl.is_none() {
            return Err(Error::invalid_option(
                "renew",
                "Renew::Auto renews a lease, but .no_expiry() has none — drop one of them",
            ));
        }
        let renew = match (self.renew, ttl) {
            (Some(renew), _) => renew,
            (None, Some(_)) => Renew::Auto,
            (None, None) => Renew::Off,
        };
        if let Some(min_hold) = self.min_hold {
            check_duration("min_hold", min_hold)?;
            if let Some(ttl) = ttl
                && min_hold > ttl
                && renew != Renew::Auto
            {
                return Err(Error::invalid_option(
                    "min_hold",
                    format!(
                        "min_hold ({}) is longer than the TTL ({}) with renewal off, so the lease would end first — raise the TTL or drop .renew(Renew::Off)",
                        DisplayDuration(min_hold),
                        DisplayDuration(ttl)
                    ),
                ));
            }
        }
        if let Some(max_hold) = self.max_hold {
            check_duration("max_hold", max_hold)?;
            if renew != Renew::Auto {
                return Err(Error::invalid_option(
                    "max_hold",
                    "max_hold limits automatic renewal, which is off here (.renew(Renew::Off) or .no_expiry()) — drop that, or use the TTL alone",
                ));
            }
            if let Some(ttl) = ttl
                && max_hold < ttl
            {
                return Err(Error::invalid_option(
                    "max_hold",
                    format!(
                        "max_hold ({}) is below the TTL ({}) — raise max_hold or lower the TTL",
                        DisplayDuration(max_hold),
                        DisplayDuration(ttl)
                    ),
                ));
            }
        }
        let wait = self.wait.unwrap_or(default_wait);
        match wait {
            Wait::For(d) => check_duration("wait", d)?,
            Wait::Until(at) => {
                check_duration("wait", at.saturating_duration_since(Instant::now()))?
            }
            Wait::No | Wait::Forever => {}
        }
        if let Some(owner) = &self.owner {
            check_owner(owner)?;
        }
        Ok(Plan {
            ttl,
            wait,
            renew,
            min_hold: self.min_hold.filter(|d| !d.is_zero()),
            max_hold: self.max_hold,
            owner: self.owner.as_deref().map(Arc::from),
            token: self.token.clone(),
        })
    }
}

/// Which rows [`Locksmith::list`](crate::Locksmith::list) returns with respect to expiry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Expired {
    /// Only live locks (the default).
    #[default]
    Exclude,
    /// Live and expired rows.
    Include,
    /// Only expired rows (what `purge_expired` would remove).
    Only,
}

/// The default page size of [`ListQuery`].
pub const DEFAULT_PAGE: usize = 100;

/// The largest page [`ListQuery`] accepts.
pub const MAX_PAGE: usize = 10_000;

/// What [`Locksmith::list`](crate::Locksmith::list) returns: one page of locks whose names
/// start with `prefix`, in byte order of name, after the name `after`.
///
/// # Examples
///
/// ```
/// use locksmith::{Expired, ListQuery};
///
/// let q = ListQuery::prefix("jobs/").expired(Expired::Include).limit(50);
/// assert_eq!(q.limit, 50);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ListQuery {
    /// Only names starting with this (empty: all).
    pub prefix: String,
    /// Which rows to return with respect to expiry.
    pub expired: Expired,
    /// Continue where the previous page ended: pass its [`Page::next`].
    pub after: Option<Cursor>,
    /// At most this many items (1 to [`MAX_PAGE`], default [`DEFAULT_PAGE`]).
    pub limit: usize,
}

impl Default for ListQuery {
    fn default() -> Self {
        ListQuery {
            prefix: String::new(),
            expired: Expired::Exclude,
            after: None,
            limit: DEFAULT_PAGE,
        }
    }
}

impl ListQuery {
    /// All live locks, first page.
    pub fn all() -> ListQuery {
        ListQuery::default()
    }

    /// Live locks whose names start with `prefix`.
    pub fn prefix(prefix: impl Into<String>) -> ListQuery {
        ListQuery {
            prefix: prefix.into(),
            ..ListQuery::default()
        }
    }

    /// Sets which rows to return with respect to expiry.
    pub fn expired(mut self, expired: Expired) -> ListQuery {
        self.expired = expired;
        self
    }

    /// Continues after the page that returned `cursor` (its [`Page::next`]).
    pub fn after(mut self, cursor: Cursor) -> ListQuery {
        self.after = Some(cursor);
        self
    }

    /// Sets the page size.
    pub fn limit(mut self, limit: usize) -> ListQuery {
        self.limit = limit;
        self
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.limit == 0 || self.limit > MAX_PAGE {
            return Err(Error::invalid_option(
                "limit",
                format!(
                    "a page holds 1 to {MAX_PAGE} locks (got {}) — page with Page::next instead",
                    self.limit
                ),
            ));
        }
        Ok(())
    }
}

/// Where a [`Page`] ended: pass it back as [`ListQuery::after`] for the next page.
///
/// Opaque: its text is the store's own (the last name on stores that list in name order, a
/// scan cursor on others), printable so a command-line tool can hand it over, and valid only
/// for the store and query that produced it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Cursor(String);

impl Cursor {
    /// A cursor from its text: one a store produced, or one printed by
    /// [`as_str`](Cursor::as_str) earlier.
    pub fn new(text: impl Into<String>) -> Cursor {
        Cursor(text.into())
    }

    /// The cursor's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// One page of [`Locksmith::list`](crate::Locksmith::list).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Page {
    /// The locks, ordered by name.
    pub items: Vec<LockInfo>,
    /// Pass this as [`ListQuery::after`] for the next page; `None` on the last page.
    pub next: Option<Cursor>,
}

impl Page {
    /// Builds a page (for store implementations).
    pub fn new(items: Vec<LockInfo>, next: Option<Cursor>) -> Page {
        Page { items, next }
    }
}

/// django-lockmgr's `set_lock` policy for [`Locksmith::set_locks`](crate::Locksmith::set_locks).
///
/// For each name: a free lock is created (`create`) or skipped; a held lock — whoever holds
/// it — is renewed (`renew`: its expiry becomes the later of the current one and
/// `now + ttl`, or never with `no_expiry`) or skipped; with `fail`, any held name rolls back
/// the whole call and returns [`Error::Locked`].
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use locksmith::SetPolicy;
///
/// let only_renew = SetPolicy::default().create(false).ttl(Duration::from_secs(600));
/// assert!(only_renew.renew && !only_renew.create);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SetPolicy {
    /// Create locks that are free (default true).
    pub create: bool,
    /// Renew locks that are held, whoever holds them (default true).
    pub renew: bool,
    /// Roll everything back and fail if any name is held (default false).
    pub fail: bool,
    /// The lease to set; `None` never expires (default 60 s).
    pub ttl: Option<Duration>,
    /// The owner label of created locks (default: the program's name).
    pub owner: Option<String>,
}

impl Default for SetPolicy {
    fn default() -> Self {
        SetPolicy {
            create: true,
            renew: true,
            fail: false,
            ttl: Some(DEFAULT_TTL),
            owner: None,
        }
    }
}

impl SetPolicy {
    /// Whether to create free locks.
    pub fn create(mut self, create: bool) -> SetPolicy {
        self.create = create;
        self
    }

    /// Whether to renew held locks.
    pub fn renew(mut self, renew: bool) -> SetPolicy {
        self.renew = renew;
        self
    }

    /// Whether a held name fails the whole call.
    pub fn fail(mut self, fail: bool) -> SetPolicy {
        self.fail = fail;
        self
    }

    /// The lease to set.
    pub fn ttl(mut self, ttl: Duration) -> SetPolicy {
        self.ttl = Some(ttl);
        self
    }

    /// Created and renewed locks never expire.
    pub fn no_expiry(mut self) -> SetPolicy {
        self.ttl = None;
        self
    }

    /// The owner label of created locks.
    pub fn owner(mut self, owner: impl Into<String>) -> SetPolicy {
        self.owner = Some(owner.into());
        self
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if let Some(ttl) = self.ttl {
            if ttl.is_zero() {
                return Err(Error::invalid_option(
                    "ttl",
                    "the TTL is zero — give a positive TTL or use no_expiry()",
                ));
            }
            check_duration("ttl", ttl)?;
        }
        if let Some(owner) = &self.owner {
            check_owner(owner)?;
        }
        Ok(())
    }
}

/// What [`Locksmith::set_locks`](crate::Locksmith::set_locks) did to one name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SetAction {
    /// The lock was free and was created.
    Created,
    /// The lock was held and its lease was renewed.
    Renewed,
    /// The lock was free and was left free (`create` off).
    SkippedCreate,
    /// The lock was held and was left as it was (`renew` off).
    SkippedRenew,
}

/// One name's line in a [`SetOutcome`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SetStatus {
    /// The lock's name.
    pub name: String,
    /// Whether it was held before the call.
    pub was_locked: bool,
    /// Whether it is held after the call.
    pub locked: bool,
    /// What was done.
    pub action: SetAction,
}

impl SetStatus {
    /// Builds a status line (for store implementations).
    pub fn new(name: impl Into<String>, was_locked: bool, locked: bool, action: SetAction) -> Self {
        SetStatus {
            name: name.into(),
            was_locked,
            locked,
            action,
        }
    }
}

/// How many names got each [`SetAction`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SetCounts {
    /// Names created.
    pub created: usize,
    /// Names renewed.
    pub renewed: usize,
    /// Free names left free.
    pub skipped_create: usize,
    /// Held names left as they were.
    pub skipped_renew: usize,
}

impl SetCounts {
    /// Counts the actions of `statuses`.
    pub fn of(statuses: &[SetStatus]) -> SetCounts {
        let mut c = SetCounts::default();
        for s in statuses {
            match s.action {
                SetAction::Created => c.created += 1,
                SetAction::Renewed => c.renewed += 1,
                SetAction::SkippedCreate => c.skipped_create += 1,
                SetAction::SkippedRenew => c.skipped_renew += 1,
            }
        }
        c
    }
}

/// The result of [`Locksmith::set_locks`](crate::Locksmith::set_locks).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct SetOutcome {
    /// One line per name, in the order given.
    pub statuses: Vec<SetStatus>,
    /// How many names got each action.
    pub counts: SetCounts,
    /// The info of every name held after the call (created, renewed or skipped).
    pub locks: Vec<LockInfo>,
    /// The tokens of the locks this call created, by name: `resume` them to release early.
    pub created_tokens: Vec<(String, Token)>,
}

impl SetOutcome {
    /// Builds an outcome from its parts (for store implementations); counts are derived.
    pub fn new(
        statuses: Vec<SetStatus>,
        locks: Vec<LockInfo>,
        created_tokens: Vec<(String, Token)>,
    ) -> SetOutcome {
        SetOutcome {
            counts: SetCounts::of(&statuses),
            statuses,
            locks,
            created_tokens,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> Options {
        Options::default()
    }

    #[test]
    fn defaults() {
        let p = opts().validate(Wait::Forever).unwrap();
        assert_eq!(p.ttl, Some(DEFAULT_TTL));
        assert_eq!(p.wait, Wait::Forever);
        assert_eq!(p.renew, Renew::Auto);
        let p = Options {
            no_expiry: true,
            ..opts()
        }
        .validate(Wait::Forever)
        .unwrap();
        assert_eq!((p.ttl, p.renew), (None, Renew::Off));
    }

    #[test]
    fn rules() {
        let bad = |o: Options, opt: &str| {
            let e = o.validate(Wait::Forever).unwrap_err();
            assert!(
                matches!(&e, Error::InvalidOption { option, .. } if *option == opt),
                "{e}"
            );
        };
        bad(
            Options {
                ttl: Some(Duration::ZERO),
                ..opts()
            },
            "ttl",
        );
        bad(
            Options {
                ttl: Some(Duration::from_secs(1)),
                no_expiry: true,
                ..opts()
            },
            "ttl",
        );
        bad(
            Options {
                no_expiry: true,
                renew: Some(Renew::Auto),
                ..opts()
            },
            "renew",
        );
        bad(
            Options {
                ttl: Some(Duration::from_secs(1)),
                min_hold: Some(Duration::from_secs(2)),
                renew: Some(Renew::Off),
                ..opts()
            },
            "min_hold",
        );
        bad(
            Options {
                max_hold: Some(Duration::from_secs(120)),
                renew: Some(Renew::Off),
                ..opts()
            },
            "max_hold",
        );
        bad(
            Options {
                max_hold: Some(Duration::from_secs(120)),
                no_expiry: true,
                ..opts()
            },
            "max_hold",
        );
        bad(
            Options {
                max_hold: Some(Duration::from_secs(30)),
                ..opts()
            },
            "max_hold",
        );
        bad(
            Options {
                ttl: Some(Duration::MAX),
                ..opts()
            },
            "ttl",
        );
        bad(
            Options {
                wait: Some(Wait::For(Duration::MAX)),
                ..opts()
            },
            "wait",
        );
        bad(
            Options {
                wait: Some(Wait::Until(Instant::now() + MAX_DURATION * 2)),
                ..opts()
            },
            "wait",
        );
        // allowed: min_hold > ttl with renewal (the default), max_hold by default
        Options {
            ttl: Some(Duration::from_secs(1)),
            min_hold: Some(Duration::from_secs(2)),
            max_hold: Some(Duration::from_secs(5)),
            ..opts()
        }
        .validate(Wait::No)
        .unwrap();
    }

    #[test]
    fn ttls_below_the_minimum_are_refused_everywhere() {
        let ttl = |d: Duration| {
            Options {
                ttl: Some(d),
                ..opts()
            }
            .validate(Wait::No)
        };
        for d in [Duration::from_millis(1), MIN_TTL - Duration::from_micros(1)] {
            let e = ttl(d).unwrap_err();
            assert!(
                matches!(&e, Error::InvalidOption { option, .. } if *option == "ttl"),
                "{e}"
            );
            assert!(e.to_string().contains("minimum of 50ms"), "{e}");
            // extend(…) and SetPolicy share the check
            assert!(check_duration("ttl", d).is_err());
            assert!(SetPolicy::default().ttl(d).validate().is_err());
        }
        ttl(MIN_TTL).unwrap();
        SetPolicy::default().ttl(MIN_TTL).validate().unwrap();
        // other durations have no minimum
        check_duration("wait", Duration::from_millis(1)).unwrap();
        check_duration("renew_by", Duration::from_millis(1)).unwrap();
    }

    #[test]
    fn the_100_year_limit_counts_years_as_humantime_does() {
        let year = humantime::parse_duration("1y").unwrap();
        assert_eq!(MAX_DURATION, year * 100);
        check_duration("ttl", humantime::parse_duration("100y").unwrap()).unwrap();
        let e = check_duration("ttl", humantime::parse_duration("101y").unwrap()).unwrap_err();
        assert!(e.to_string().contains("100-year limit"), "{e}");
        assert!(e.to_string().contains("101years"), "{e}");
    }
}
