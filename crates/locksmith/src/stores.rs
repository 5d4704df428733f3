//! Named stores: a process-wide registry of [`Locksmith`] handles under short aliases, for
//! code that cannot pass a handle around — above all the `#[locked]` attribute
//! (`locksmith::locked`), whose `store = "alias"` option picks one.
//!
//! Install handles once at startup with [`install`]. The alias [`DEFAULT`] (`"default"`) is
//! special: if nothing is installed under it when it is first needed, it is connected from
//! the `LOCKSMITH_URL` environment variable (or the per-user SQLite file when that is unset;
//! see [`Locksmith::from_env`]) and kept for the rest of the process. Any other alias must be
//! installed before use.
//!
//! Handles connected by the registry itself (the `default` fallback) are connected on
//! locksmith's own background runtime, which lives as long as the process, so they stay
//! usable from every runtime and from synchronous code. A handle you install is used as is:
//! connect it on a runtime that outlives its use (the one of `#[tokio::main]`, or through
//! [`blocking::Locksmith`](crate::blocking::Locksmith) and
//! [`as_async`](crate::blocking::Locksmith::as_async)).
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> locksmith::Result<()> {
//! use locksmith::{Locksmith, stores};
//!
//! stores::install("jobs", Locksmith::connect("memory://jobs").await?);
//! let lm = stores::get("jobs").await?;
//! assert_eq!(lm.store_kind(), "memory");
//! assert!(stores::get("nope").await.unwrap_err().is_invalid_input());
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

use crate::{Error, Locksmith, Result, URL_ENV};

/// The alias used when none is given; connected from `LOCKSMITH_URL` on first use unless a
/// handle was installed under it.
pub const DEFAULT: &str = "default";

static REGISTRY: Mutex<BTreeMap<String, Locksmith>> = Mutex::new(BTreeMap::new());

/// Serializes connecting the `default` store, so concurrent first users connect it once.
static CONNECTING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn registry() -> MutexGuard<'static, BTreeMap<String, Locksmith>> {
    // Map operations never panic halfway, so a poisoned lock still holds a valid map.
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

fn check_alias(alias: &str) -> Result<()> {
    if alias.is_empty() || alias.len() > 64 || alias.chars().any(|c| c.is_control()) {
        return Err(Error::config(format!(
            "the store alias {alias:?} is not usable — an alias is 1 to 64 characters without control characters, e.g. \"jobs\""
        )));
    }
    Ok(())
}

/// Installs `lm` under `alias`, replacing (and returning) any handle installed there before.
/// Later lookups — and `#[locked(store = "alias")]` calls that start afterwards — use it;
/// calls already holding a lock keep the handle they started with.
///
/// # Panics
///
/// If `alias` is empty, longer than 64 bytes, or has control characters: an alias is
/// written in the program's source, so a bad one is a bug to fix there.
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> locksmith::Result<()> {
/// use locksmith::{Locksmith, stores};
///
/// let first = Locksmith::connect("memory://").await?;
/// assert!(stores::install("reports", first).is_none());
/// let second = Locksmith::connect("memory://?namespace=b").await?;
/// let replaced = stores::install("reports", second).expect("the first handle");
/// assert_eq!(replaced.namespace(), "");
/// assert_eq!(stores::get("reports").await?.namespace(), "b");
/// # Ok(()) }
/// ```
pub fn install(alias: &str, lm: Locksmith) -> Option<Locksmith> {
    if let Err(err) = check_alias(alias) {
        panic!("locksmith::stores::install: {err}");
    }
    registry().insert(alias.to_string(), lm)
}

/// Removes and returns the handle installed under `alias`. Removing [`DEFAULT`] makes the
/// next use connect it from `LOCKSMITH_URL` again.
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> locksmith::Result<()> {
/// use locksmith::{Locksmith, stores};
///
/// stores::install("scratch", Locksmith::connect("memory://").await?);
/// assert!(stores::uninstall("scratch").is_some());
/// assert!(stores::uninstall("scratch").is_none());
/// # Ok(()) }
/// ```
pub fn uninstall(alias: &str) -> Option<Locksmith> {
    registry().remove(alias)
}

/// The aliases installed now, sorted (`default` only once it was installed or connected).
pub fn aliases() -> Vec<String> {
    registry().keys().cloned().collect()
}

/// The handle installed under `alias`, if any, without connecting anything.
pub fn installed(alias: &str) -> Option<Locksmith> {
    registry().get(alias).cloned()
}

/// The handle under `alias`. For [`DEFAULT`] with nothing installed, connects the store
/// named by `LOCKSMITH_URL` (or the per-user SQLite file) once, on locksmith's own
/// background runtime, and installs it.
///
/// # Errors
///
/// [`Error::Config`] for an alias nothing was installed under (the message lists the
/// installed ones and the fix), or when connecting `default` fails on configuration;
/// [`Error::Store`] when the default store cannot be reached (nothing is kept, so the next
/// call tries again).
pub async fn get(alias: &str) -> Result<Locksmith> {
    if let Some(lm) = installed(alias) {
        return Ok(lm);
    }
    check_alias(alias)?;
    if alias != DEFAULT {
        let have = aliases();
        let have = if have.is_empty() {
            "none yet".to_string()
        } else {
            have.join(", ")
        };
        return Err(Error::config(format!(
            "no lock store is installed under the alias {alias:?} (installed: {have}) — call locksmith::stores::install({alias:?}, Locksmith::connect(url).await?) at startup, or drop `store = {alias:?}` to use {DEFAULT:?} ({URL_ENV})"
        )));
    }
    let _connecting = CONNECTING.lock().await;
    if let Some(lm) = installed(alias) {
        return Ok(lm);
    }
    // On the process-lifetime runtime: a handle connected on a caller's runtime could lose
    // its connection tasks when that runtime shuts down (a test's, say).
    let lm = crate::blocking::runtime()
        .spawn(Locksmith::from_env())
        .await
        .map_err(|e| {
            Error::store(
                "core",
                true,
                format!("connecting the default store stopped: {e}"),
            )
        })??;
    let mut map = registry();
    Ok(map.entry(alias.to_string()).or_insert(lm).clone())
}

/// [`get`] for synchronous code, as a [`blocking::Locksmith`](crate::blocking::Locksmith).
///
/// # Errors
///
/// As [`get`].
///
/// # Examples
///
/// ```
/// use locksmith::{blocking, stores};
///
/// let lm = blocking::Locksmith::connect("memory://")?;
/// stores::install("sync-jobs", lm.as_async().clone());
/// assert_eq!(stores::get_blocking("sync-jobs")?.store_kind(), "memory");
/// # Ok::<(), locksmith::Error>(())
/// ```
pub fn get_blocking(alias: &str) -> Result<crate::blocking::Locksmith> {
    if let Some(lm) = installed(alias) {
        return Ok(lm.into());
    }
    let alias = alias.to_string();
    crate::blocking::block(async move { get(&alias).await }).map(Into::into)
}

#[cfg(all(test, feature = "memory"))]
mod tests {
    use super::*;

    #[tokio::test]
    async fn unknown_alias_names_the_fix() {
        let err = get("never-installed").await.unwrap_err();
        let msg = err.to_string();
        assert!(err.is_invalid_input(), "{msg}");
        assert!(
            msg.contains("never-installed") && msg.contains("stores::install"),
            "{msg}"
        );
        assert!(get("").await.unwrap_err().is_invalid_input());
    }

    #[test]
    #[should_panic(expected = "not usable")]
    fn bad_alias_panics_at_install() {
        let lm = crate::blocking::Locksmith::connect("memory://").unwrap();
        install("", lm.as_async().clone());
    }
}
