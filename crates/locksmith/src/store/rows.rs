//! The lock-row state machine shared by the stores that keep rows themselves (memory and
//! SQLite): one implementation of grant, release, extend and `set_locks` over a [`Table`] —
//! one namespace's rows, read and written inside one atomic step the store provides.
//!
//! Times are microseconds on the store's clock: since the store was created for memory
//! (monotonic), since the Unix epoch for SQLite (shared by every process on the machine).
//!
//! # Reservations (cross-process fairness)
//!
//! Where waiters in other processes poll (SQLite), a process whose waiters are notified
//! could win every race for a lock that keeps being released and re-taken, starving a
//! poller elsewhere. So a claim that has already waited [`RESERVE_AFTER`]
//! ([`Claim::waited`]) and finds the lock held *reserves* the next grant for
//! [`RESERVE_FOR`]: while a live reservation of another token exists, a free (or expired)
//! lock is not granted to anyone else — they see [`Grant::Held`] with a [`LockInfo`] whose
//! holder fields are `None`, `released = true` and `expires_in` the time left on the
//! reservation. The reserver refreshes the reservation while it keeps trying and the lock
//! is held, and a grant to anyone removes the name's reservation. A reservation is never taken
//! over while it is live, so long waiters are served one after the other. A reserver that
//! went away blocks the free lock for at most [`RESERVE_FOR`]; releasing its token (which the
//! core does after an abandoned try) removes its reservation at once.

use std::time::{Duration, SystemTime};

use super::{Claim, ExtendMode, Extended, Grant, GrantAll, Released};
use crate::error::Error;
use crate::info::LockInfo;
use crate::lease::Token;
use crate::name::LockName;
use crate::options::{SetAction, SetOutcome, SetPolicy, SetStatus};

/// One lock row.
#[derive(Clone, Debug)]
pub(crate) struct Row {
    /// `None` once released under `min_hold`: the row blocks others but nobody holds it.
    pub(crate) token: Option<Token>,
    pub(crate) owner: String,
    pub(crate) host: String,
    pub(crate) pid: u32,
    pub(crate) fence: u64,
    /// Microseconds, store clock.
    pub(crate) acquired_at: i64,
    /// Microseconds, store clock; `None`: never expires.
    pub(crate) expires_at: Option<i64>,
    /// The `min_hold` the lock was acquired with, in microseconds.
    pub(crate) min_hold: Option<i64>,
}

/// How long expired rows stay visible by default before a write removes them (`?retain=`).
pub(crate) const DEFAULT_RETAIN: Duration = Duration::from_secs(3600);

/// At most this many garbage rows are removed per write (SQLite), so a write's extra work
/// is bounded while garbage still goes faster than one write can make it.
#[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
pub(crate) const SWEEP_LIMIT: i64 = 64;

/// Store options parsed from the URL, for the stores that keep rows themselves.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct StoreOptions {
    /// `?retain=`: how long after expiry a row is kept (visible as expired) before a write
    /// removes it; `None` keeps the store's current setting (default one hour). Zero removes
    /// expired rows at the next write.
    pub(crate) retain: Option<Duration>,
}

impl StoreOptions {
    pub(crate) fn new(retain: Option<Duration>) -> StoreOptions {
        StoreOptions { retain }
    }
}

/// How long a claim must have waited before it reserves the next grant.
pub(crate) const RESERVE_AFTER: Duration = Duration::from_millis(200);

/// How long a reservation lasts after the reserver's last try: four of its polls (capped at
/// 25 ms). A reserver that misses it (a loaded machine) loses nothing but the reservation,
/// and reserves again at its next try while the lock is held; one that went away (timed
/// out, cancelled between tries) holds a free lock back for no longer than this.
pub(crate) const RESERVE_FOR: Duration = Duration::from_millis(100);

/// The next grant of a name, reserved for a claim that has waited long.
#[derive(Clone, Debug)]
pub(crate) struct Reservation {
    pub(crate) token: Token,
    /// Microseconds, store clock.
    pub(crate) until: i64,
}

pub(crate) fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

fn duration(us: i64) -> Duration {
    Duration::from_micros(u64::try_from(us).unwrap_or(0))
}

fn overflow() -> Error {
    Error::invalid_option("ttl", "the lease would overflow the store's clock")
}

fn deadline(now: i64, ttl: Option<Duration>) -> Result<Option<i64>, Error> {
    ttl.map(|t| now.checked_add(micros(t)).ok_or_else(overflow))
        .transpose()
}

impl Row {
    pub(crate) fn live(&self, now: i64) -> bool {
        self.expires_at.is_none_or(|e| e > now)
    }

    pub(crate) fn held_by(&self, token: &Token, now: i64) -> bool {
        self.live(now) && self.token.as_ref() == Some(token)
    }

    fn granted(claim: &Claim, fence: u64, now: i64) -> Result<Row, Error> {
        Ok(Row {
            token: Some(claim.token.clone()),
            owner: claim.owner.to_string(),
            host: claim.host.to_string(),
            pid: claim.pid,
            fence,
            acquired_at: now,
            expires_at: deadline(now, claim.ttl)?,
            min_hold: claim.min_hold.map(micros),
        })
    }

    /// What anyone may see of this row at `now`; `epoch` is the wall time of store-clock
    /// zero, for the display-only absolute times. Holder fields a row does not know (a
    /// compat layout's row written by another library) are kept as empty text, pid 0 and
    /// fence 0, and shown as `None`.
    pub(crate) fn info(&self, name: &str, now: i64, epoch: SystemTime) -> LockInfo {
        let expires_in = self.expires_at.map(|e| duration(e.saturating_sub(now)));
        let held_for = duration(now.saturating_sub(self.acquired_at));
        let wall = |t: i64| epoch + duration(t);
        let mut info = LockInfo::new(name, expires_in);
        let known = |s: &String| (!s.is_empty()).then(|| s.clone());
        info.owner = known(&self.owner);
        info.host = known(&self.host);
        info.pid = (self.pid != 0).then_some(self.pid);
        info.fence = (self.fence != 0).then_some(self.fence);
        info.held_for = Some(held_for);
        info.expired = !self.live(now);
        info.released = self.token.is_none();
        info.acquired_at = Some(wall(self.acquired_at));
        info.expires_at = self.expires_at.map(wall);
        info.min_hold = self.min_hold.map(duration);
        info
    }
}

/// One namespace's rows inside one atomic step.
pub(crate) trait Table {
    /// The store's error type; locksmith errors (an overflowing lease) convert into it.
    type Error: From<Error>;

    /// The store's clock, in microseconds.
    fn now(&self) -> i64;
    /// The wall time of the store clock's zero.
    fn epoch(&self) -> SystemTime;
    fn get(&mut self, name: &str) -> Result<Option<Row>, Self::Error>;
    /// Inserts or replaces.
    fn put(&mut self, name: &str, row: &Row) -> Result<(), Self::Error>;
    /// Whether a row was there.
    fn delete(&mut self, name: &str) -> Result<bool, Self::Error>;
    /// Mints the next fence: [`hybrid_fence`](super::hybrid_fence) of the store-wide
    /// counter and the store's fence clock.
    fn next_fence(&mut self) -> Result<u64, Self::Error>;
    /// The live reservation of `name`, if any. Stores without reservations return `None`.
    fn reservation(&mut self, name: &str) -> Result<Option<Reservation>, Self::Error> {
        let _ = name;
        Ok(None)
    }
    /// Records (or refreshes) the reservation of `name`.
    fn reserve(&mut self, name: &str, reservation: &Reservation) -> Result<(), Self::Error> {
        let _ = (name, reservation);
        Ok(())
    }
    /// Removes the reservation of `name`, if any.
    fn unreserve(&mut self, name: &str) -> Result<(), Self::Error> {
        let _ = name;
        Ok(())
    }
}

fn live<T: Table>(t: &mut T, name: &str) -> Result<Option<Row>, T::Error> {
    let now = t.now();
    Ok(t.get(name)?.filter(|r| r.live(now)))
}

fn grant<T: Table>(t: &mut T, claim: &Claim) -> Result<u64, T::Error> {
    let fence = t.next_fence()?;
    let row = Row::granted(claim, fence, t.now())?;
    t.put(claim.name.as_str(), &row)?;
    t.unreserve(claim.name.as_str())?;
    Ok(fence)
}

/// What a claim sees of a free lock reserved for another claim.
pub(crate) fn reserved_info(name: &str, reservation: &Reservation, now: i64) -> LockInfo {
    let mut info = LockInfo::new(name, Some(duration(reservation.until - now)));
    info.released = true;
    info
}

/// Whether `claim`, blocked by a live holder, should record or refresh a reservation, given
/// the name's live reservation: when it has waited long, and nobody else has one, or its own
/// has less than half its time left (so a poller does not write on every try).
pub(crate) fn wants_reservation(claim: &Claim, current: Option<&Reservation>, now: i64) -> bool {
    claim.waited >= RESERVE_AFTER
        && match current {
            None => true,
            Some(r) if r.token == claim.token => r.until - now < micros(RESERVE_FOR) / 2,
            Some(_) => false,
        }
}

/// Why a claim cannot be granted now, if it cannot; records its reservation when it has
/// waited long.
fn blocked<T: Table>(t: &mut T, claim: &Claim) -> Result<Option<Grant>, T::Error> {
    let now = t.now();
    let name = claim.name.as_str();
    if let Some(row) = live(t, name)? {
        if row.token.as_ref() == Some(&claim.token) {
            return Ok(Some(Grant::AlreadyHeld));
        }
        let current = t.reservation(name)?;
        if wants_reservation(claim, current.as_ref(), now) {
            let until = now.saturating_add(micros(RESERVE_FOR));
            t.reserve(
                name,
                &Reservation {
                    token: claim.token.clone(),
                    until,
                },
            )?;
        }
        return Ok(Some(Grant::Held(row.info(name, now, t.epoch()))));
    }
    Ok(t.reservation(name)?
        .filter(|r| r.token != claim.token)
        .map(|r| Grant::Held(reserved_info(name, &r, now))))
}

pub(crate) fn try_acquire<T: Table>(t: &mut T, claim: &Claim) -> Result<Grant, T::Error> {
    if let Some(answer) = blocked(t, claim)? {
        return Ok(answer);
    }
    Ok(Grant::Acquired {
        fence: grant(t, claim)?,
    })
}

pub(crate) fn try_acquire_all<T: Table>(t: &mut T, claims: &[Claim]) -> Result<GrantAll, T::Error> {
    for claim in claims {
        match blocked(t, claim)? {
            Some(Grant::Held(info)) => return Ok(GrantAll::Held(info)),
            Some(_) => return Ok(GrantAll::AlreadyHeld(claim.name.clone())),
            None => {}
        }
    }
    // Check every lease before writing anything, so an error leaves nothing behind.
    for claim in claims {
        deadline(t.now(), claim.ttl)?;
    }
    let fences = claims
        .iter()
        .map(|claim| grant(t, claim))
        .collect::<Result<Vec<u64>, T::Error>>()?;
    Ok(GrantAll::Acquired(fences))
}

pub(crate) fn release<T: Table>(
    t: &mut T,
    name: &LockName,
    token: &Token,
    min_hold: Option<Duration>,
) -> Result<Released, T::Error> {
    let now = t.now();
    // A token given up on (an abandoned try is released) gives up its reservation too.
    if t.reservation(name.as_str())?
        .is_some_and(|r| &r.token == token)
    {
        t.unreserve(name.as_str())?;
    }
    let Some(mut row) = t.get(name.as_str())?.filter(|r| r.held_by(token, now)) else {
        return Ok(Released::NotHeld);
    };
    let keep_until = min_hold.and_then(|m| row.acquired_at.checked_add(micros(m)));
    match keep_until {
        Some(until) if until > now => {
            row.token = None;
            row.expires_at = Some(until);
            t.put(name.as_str(), &row)?;
            Ok(Released::Kept)
        }
        _ => {
            t.delete(name.as_str())?;
            Ok(Released::Released)
        }
    }
}

/// Returns the answer and whether the lease now ends earlier than before.
pub(crate) fn extend<T: Table>(
    t: &mut T,
    name: &LockName,
    token: &Token,
    mode: ExtendMode,
) -> Result<(Extended, bool), T::Error> {
    let now = t.now();
    let Some(mut row) = t.get(name.as_str())?.filter(|r| r.held_by(token, now)) else {
        return Ok((Extended::NotHeld, false));
    };
    let Some(current) = row.expires_at else {
        return Ok((Extended::NotExpirable, false));
    };
    let end = match mode {
        ExtendMode::Set(d) => now.checked_add(micros(d)),
        ExtendMode::Add(d) => current.max(now).checked_add(micros(d)),
        ExtendMode::AtLeast(d) => now.checked_add(micros(d)).map(|e| e.max(current)),
    }
    .ok_or_else(overflow)?;
    row.expires_at = Some(end);
    t.put(name.as_str(), &row)?;
    let answer = Extended::Extended {
        expires_in: duration(end - now),
    };
    Ok((answer, end < current))
}

pub(crate) fn held_by<T: Table>(
    t: &mut T,
    name: &LockName,
    token: &Token,
) -> Result<Option<LockInfo>, T::Error> {
    let now = t.now();
    Ok(t.get(name.as_str())?
        .filter(|r| r.held_by(token, now))
        .map(|r| r.info(name.as_str(), now, t.epoch())))
}

pub(crate) fn inspect<T: Table>(t: &mut T, name: &LockName) -> Result<Option<LockInfo>, T::Error> {
    let now = t.now();
    let epoch = t.epoch();
    Ok(t.get(name.as_str())?
        .map(|r| r.info(name.as_str(), now, epoch)))
}

/// Per name, whether a live lock was removed.
pub(crate) fn force_release<T: Table>(
    t: &mut T,
    names: &[LockName],
) -> Result<Vec<bool>, T::Error> {
    names
        .iter()
        .map(|name| {
            let was_live = live(t, name.as_str())?.is_some();
            t.delete(name.as_str())?;
            Ok(was_live)
        })
        .collect()
}

pub(crate) fn set_locks<T: Table>(
    t: &mut T,
    claims: &[Claim],
    policy: &SetPolicy,
) -> Result<SetOutcome, T::Error> {
    let now = t.now();
    // Decide every name first, then write: `fail` must leave nothing changed.
    let mut plan = Vec::with_capacity(claims.len());
    for claim in claims {
        let held = live(t, claim.name.as_str())?;
        let action = match (held, policy.create, policy.renew) {
            (Some(row), ..) if policy.fail => {
                return Err(Error::Locked {
                    name: claim.name.to_string(),
                    holder: Box::new(row.info(claim.name.as_str(), now, t.epoch())),
                }
                .into());
            }
            (Some(row), _, true) => SetAction::Renewed.with(Some(row)),
            (Some(_), _, false) => SetAction::SkippedRenew.with(None),
            (None, true, _) => SetAction::Created.with(None),
            (None, false, _) => SetAction::SkippedCreate.with(None),
        };
        plan.push(action);
    }
    let renew_to = deadline(now, policy.ttl)?;
    let mut statuses = Vec::with_capacity(claims.len());
    let mut locks = Vec::new();
    let mut created = Vec::new();
    for (claim, (action, row)) in claims.iter().zip(plan) {
        let name = claim.name.as_str();
        match (action, row) {
            (SetAction::Created, _) => {
                grant(t, claim)?;
                created.push((name.to_string(), claim.token.clone()));
            }
            (SetAction::Renewed, Some(mut row)) => {
                // Never shortens: the later end wins; never-expiring wins over any end.
                row.expires_at = match (row.expires_at, renew_to) {
                    (Some(current), Some(new)) => Some(current.max(new)),
                    _ => None,
                };
                t.put(name, &row)?;
            }
            _ => {}
        }
        let was_locked = matches!(action, SetAction::Renewed | SetAction::SkippedRenew);
        let locked = action != SetAction::SkippedCreate;
        if locked && let Some(row) = t.get(name)? {
            locks.push(row.info(name, now, t.epoch()));
        }
        statuses.push(SetStatus::new(name, was_locked, locked, action));
    }
    Ok(SetOutcome::new(statuses, locks, created))
}

impl SetAction {
    fn with(self, row: Option<Row>) -> (SetAction, Option<Row>) {
        (self, row)
    }
}
