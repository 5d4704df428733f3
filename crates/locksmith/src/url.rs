//! Store URLs: parsing the parts every store shares (`?namespace=`, `?timeout=`) and
//! redacting the password of a URL before it appears anywhere (errors, `Debug`, logs).

use std::time::Duration;

use crate::error::{Error, Result};
use crate::name::Namespace;

/// How long one store call may take when the URL gives no `?timeout=`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// The URLs this version of locksmith can open, for messages.
pub(crate) const SCHEMES: &str = "sqlite://, sqlite:///abs/path.db, memory://, memory://NAME, postgres://, mysql://, mariadb://, redis://, rediss://, redis+unix://, redis+cluster://";

/// `url` with the password of its userinfo replaced by `***`
/// (`postgres://u:secret@h/db` → `postgres://u:***@h/db`); other URLs unchanged.
///
/// Only the part between `://` and the first `/`, `?` or `#` is looked at; a userinfo is what
/// comes before the last `@` there, and its password what follows the first `:`.
///
/// # Examples
///
/// ```
/// use locksmith::redact_url;
///
/// assert_eq!(redact_url("postgres://u:secret@h/db"), "postgres://u:***@h/db");
/// assert_eq!(redact_url("redis://:secret@h"), "redis://:***@h");
/// assert_eq!(redact_url("memory://x?namespace=a"), "memory://x?namespace=a");
/// ```
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let Some(at) = authority.rfind('@') else {
        return url.to_string();
    };
    let (userinfo, host) = authority.split_at(at);
    match userinfo.split_once(':') {
        Some((user, _password)) => format!("{scheme}://{user}:***{host}{tail}"),
        None => url.to_string(),
    }
}

/// A parsed store URL: the scheme, what follows `://` up to `?`, the shared parameters, and
/// the other query parameters for the store to take. It never keeps the raw URL: messages
/// quote [`redacted`](StoreUrl::redacted).
#[cfg_attr(not(any(feature = "memory", feature = "sqlite")), allow(dead_code))]
pub(crate) struct StoreUrl {
    redacted: String,
    pub(crate) scheme: String,
    pub(crate) body: String,
    pub(crate) namespace: Namespace,
    pub(crate) timeout: Duration,
    params: Vec<(String, String)>,
}

impl std::fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreUrl")
            .field("url", &self.redacted)
            .finish_non_exhaustive()
    }
}

impl StoreUrl {
    /// Parses `raw`, taking `?namespace=` and `?timeout=` (every store has them).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] (quoting the redacted URL) for a missing scheme, a repeated
    /// parameter, a bad namespace, or a timeout that is zero or not a duration.
    pub(crate) fn parse(raw: &str) -> Result<StoreUrl> {
        let redacted = redact_url(raw);
        let Some((scheme, rest)) = raw.split_once("://") else {
            return Err(Error::config(format!(
                "store URL {redacted:?} has no scheme — use one of {SCHEMES} (e.g. memory://)"
            )));
        };
        let (body, query) = rest.split_once('?').unwrap_or((rest, ""));
        let mut params: Vec<(String, String)> = Vec::new();
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            if params.iter().any(|(k, _)| *k == key) {
                return Err(Error::config(format!(
                    "store URL {redacted:?} gives {key:?} twice — keep one"
                )));
            }
            params.push((key.into_owned(), value.into_owned()));
        }
        let mut url = StoreUrl {
            redacted,
            scheme: scheme.to_string(),
            body: body.to_string(),
            namespace: Namespace::default(),
            timeout: DEFAULT_TIMEOUT,
            params,
        };
        if let Some(ns) = url.take("namespace") {
            url.namespace = Namespace::new(ns)?;
        }
        if let Some(timeout) = url.take_duration("timeout")? {
            if timeout.is_zero() {
                return Err(Error::config(format!(
                    "store URL {:?}: timeout=0 would fail every store call — give the longest a call may take, e.g. timeout=5s (the default)",
                    url.redacted
                )));
            }
            crate::options::check_duration("timeout", timeout).map_err(|_| {
                Error::config(format!(
                    "store URL {:?}: the timeout is longer than 100 years — give e.g. timeout=30s",
                    url.redacted
                ))
            })?;
            url.timeout = timeout;
        }
        Ok(url)
    }

    /// The URL with its password masked, for messages and `Debug`.
    pub(crate) fn redacted(&self) -> &str {
        &self.redacted
    }

    /// Removes and returns the parameter `key`.
    pub(crate) fn take(&mut self, key: &str) -> Option<String> {
        let at = self.params.iter().position(|(k, _)| k == key)?;
        Some(self.params.remove(at).1)
    }

    /// Removes the duration parameter `key`, e.g. `latency=5ms`.
    pub(crate) fn take_duration(&mut self, key: &str) -> Result<Option<Duration>> {
        self.take(key)
            .map(|v| {
                humantime::parse_duration(&v).map_err(|e| {
                    Error::config(format!(
                        "store URL {:?}: {key}={v:?} is not a duration ({e}) — write e.g. {key}=5s",
                        self.redacted
                    ))
                })
            })
            .transpose()
    }

    /// Fails on parameters nobody took; `allowed` lists the store's own ones.
    pub(crate) fn finish(&self, allowed: &str) -> Result<()> {
        match self.params.first() {
            None => Ok(()),
            Some((key, _)) => Err(Error::config(format!(
                "store URL {:?} has unknown parameter {key:?} — {} takes ?namespace=, ?timeout={allowed}",
                self.redacted, self.scheme
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction() {
        for (raw, shown) in [
            ("postgres://u:secret@h/db", "postgres://u:***@h/db"),
            ("redis://:secret@h", "redis://:***@h"),
            ("mysql://u:secret@h/db?x=1", "mysql://u:***@h/db?x=1"),
            ("redis://u:p%40ss:word@h:6379/0", "redis://u:***@h:6379/0"),
            ("postgres://u@h/db", "postgres://u@h/db"),
            ("sqlite:///tmp/a@b.db", "sqlite:///tmp/a@b.db"),
            ("memory://x?namespace=a", "memory://x?namespace=a"),
            ("no-scheme", "no-scheme"),
        ] {
            assert_eq!(redact_url(raw), shown, "{raw}");
        }
    }

    #[test]
    fn timeouts() {
        assert_eq!(
            StoreUrl::parse("memory://").unwrap().timeout,
            DEFAULT_TIMEOUT
        );
        assert_eq!(
            StoreUrl::parse("memory://?timeout=250ms").unwrap().timeout,
            Duration::from_millis(250)
        );
        for bad in ["memory://?timeout=0s", "memory://?timeout=soon"] {
            let err = StoreUrl::parse(bad).unwrap_err();
            assert!(matches!(err, Error::Config { .. }), "{bad}: {err}");
            assert!(err.to_string().contains("timeout=5s"), "{err}");
        }
    }

    #[test]
    fn errors_quote_the_redacted_url() {
        let err = StoreUrl::parse("postgres://u:secret@h/db?timeout=x").unwrap_err();
        let text = format!("{err} {err:?}");
        assert!(!text.contains("secret"), "{text}");
        assert!(text.contains("u:***@h"), "{text}");
        let url = StoreUrl::parse("postgres://u:secret@h/db?x=1").unwrap();
        let err = url.finish("").unwrap_err();
        assert!(!format!("{err} {err:?} {url:?}").contains("secret"));
    }
}
