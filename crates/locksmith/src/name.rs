//! Lock names and namespaces, validated once at the edge.

use std::fmt;
use std::sync::Arc;

use crate::error::{Error, Result};

/// The longest lock name, in bytes.
pub const MAX_NAME_LEN: usize = 255;

/// The longest namespace, in bytes.
pub const MAX_NAMESPACE_LEN: usize = 64;

/// A validated lock name: UTF-8, 1 to 255 bytes, no NUL.
///
/// Names are always passed to stores as bound parameters or script arguments, never spliced
/// into SQL or key patterns, so any other character (spaces, `%`, `*`, `'`, emoji) is fine.
///
/// # Examples
///
/// ```
/// use locksmith::LockName;
///
/// assert!(LockName::new("invoice:42").is_ok());
/// assert!(LockName::new("").unwrap_err().to_string().contains("empty"));
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LockName(Arc<str>);

impl LockName {
    /// Validates `name`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidName`] when the name is empty, longer than [`MAX_NAME_LEN`] bytes, or
    /// contains a NUL byte; the message says which.
    pub fn new(name: impl AsRef<str>) -> Result<LockName> {
        let name = name.as_ref();
        let reason = if name.is_empty() {
            Some("the name is empty — give every lock a non-empty name".to_string())
        } else if name.len() > MAX_NAME_LEN {
            Some(format!(
                "the name is {} bytes long — at most {MAX_NAME_LEN} bytes are allowed; hash or shorten long keys",
                name.len()
            ))
        } else if name.contains('\0') {
            Some("the name contains a NUL byte — remove it".to_string())
        } else {
            None
        };
        match reason {
            Some(reason) => Err(Error::InvalidName {
                name: shorten(name),
                reason,
            }),
            None => Ok(LockName(Arc::from(name))),
        }
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for LockName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for LockName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for LockName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// Shortens a name for an error message, on a character boundary.
fn shorten(name: &str) -> String {
    const KEEP: usize = 64;
    if name.len() <= KEEP {
        return name.to_string();
    }
    let mut end = KEEP;
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &name[..end])
}

/// A validated namespace (`?namespace=` in the store URL): at most 64 bytes of ASCII letters,
/// digits and `-_.:/`. The empty namespace is the default.
#[derive(Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Namespace(Arc<str>);

impl Namespace {
    /// Validates `ns`.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when the namespace is too long or has other characters.
    pub fn new(ns: impl AsRef<str>) -> Result<Namespace> {
        let ns = ns.as_ref();
        if ns.len() > MAX_NAMESPACE_LEN {
            return Err(Error::config(format!(
                "namespace {:?} is {} bytes long — at most {MAX_NAMESPACE_LEN} are allowed",
                shorten(ns),
                ns.len()
            )));
        }
        if let Some(c) = ns
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || "-_.:/".contains(*c)))
        {
            return Err(Error::config(format!(
                "namespace {ns:?} contains {c:?} — use only ASCII letters, digits and -_.:/"
            )));
        }
        Ok(Namespace(Arc::from(ns)))
    }

    /// The namespace as a string slice (empty for the default namespace).
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(LockName::new("a").is_ok());
        assert!(LockName::new("x".repeat(255)).is_ok());
        assert!(LockName::new("é".repeat(127)).is_ok());
        let err = LockName::new("x".repeat(256)).unwrap_err();
        assert!(err.to_string().contains("256 bytes"), "{err}");
        assert!(
            LockName::new("a\0b")
                .unwrap_err()
                .to_string()
                .contains("NUL")
        );
        // shortening never splits a character
        let err = LockName::new("é".repeat(200)).unwrap_err();
        assert!(err.to_string().contains('…'));
    }

    #[test]
    fn namespaces() {
        assert!(Namespace::new("").is_ok());
        assert!(Namespace::new("team-a/ci:42").is_ok());
        assert!(Namespace::new("a b").is_err());
        assert!(Namespace::new("x".repeat(65)).is_err());
    }
}
