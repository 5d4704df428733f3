//! What a grant is made of: the secret [`Token`] and the [`Lease`] a body fences its writes
//! with.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use crate::error::{Error, Result};

/// The longest token accepted by [`Token::from_str`], in bytes.
pub const MAX_TOKEN_LEN: usize = 128;

/// The secret that proves ownership of a lock: a random UUID v4 unless you bring your own.
///
/// Release, extend and renew succeed only with the token. Its `Debug` output is redacted and
/// it has no `Display`, so it does not end up in logs by accident; [`Token::expose`] gives the
/// text for the few places that must hand it on (the CLI's `acquire`, a job queue).
///
/// # Examples
///
/// ```
/// use locksmith::Token;
///
/// let t = Token::new();
/// assert_eq!(format!("{t:?}"), "Token(<redacted>)");
/// let same: Token = t.expose().parse()?;
/// assert_eq!(same, t);
/// # Ok::<(), locksmith::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Token(Arc<str>);

impl Token {
    /// A fresh random token (UUID v4, 122 random bits from the operating system).
    pub fn new() -> Token {
        Token(Arc::from(uuid::Uuid::new_v4().to_string()))
    }

    /// The token's text. Treat it as a secret.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// A public id of this token, for a store to publish with a grant it pushes to a queued
    /// waiter (see [`Capabilities::pushed_grants`](crate::Capabilities::pushed_grants)):
    /// 64 bits of a keyed hash whose key is random per process, so it tells nothing about
    /// the token and only this process can match it.
    pub fn grant_id(&self) -> String {
        use std::hash::BuildHasher;
        static KEY: std::sync::LazyLock<std::collections::hash_map::RandomState> =
            std::sync::LazyLock::new(std::collections::hash_map::RandomState::new);
        format!("{:016x}", KEY.hash_one(&*self.0))
    }
}

impl Default for Token {
    fn default() -> Self {
        Token::new()
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl FromStr for Token {
    type Err = Error;

    /// Accepts 1 to 128 printable ASCII characters without spaces (so tokens from
    /// python-redis-lock and other tools can be used).
    fn from_str(s: &str) -> Result<Token> {
        if s.is_empty() || s.len() > MAX_TOKEN_LEN || !s.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Error::invalid_option(
                "token",
                format!(
                    "a token is 1 to {MAX_TOKEN_LEN} printable ASCII characters without spaces \
                     (got {} bytes) — pass the token printed by `acquire` or use Token::new()",
                    s.len()
                ),
            ));
        }
        Ok(Token(Arc::from(s)))
    }
}

/// What the work under a lock needs to fence its writes: the lock's name and its fencing
/// token.
///
/// The fence is strictly greater than every fence granted before for the same name on the
/// same store, so a resource that remembers the highest fence it has seen can reject writes
/// from a holder whose lease has ended (`UPDATE … WHERE last_fence <= $fence`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Lease {
    pub(crate) name: crate::LockName,
    pub(crate) fence: u64,
}

impl Lease {
    /// The lock's name.
    pub fn name(&self) -> &str {
        self.name.as_str()
    }

    /// The fencing token of this grant.
    pub fn fence(&self) -> u64 {
        self.fence
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens() {
        assert!("P4qyOxpMBDH5f9Uh6iAkbm2a".parse::<Token>().is_ok());
        assert!("".parse::<Token>().is_err());
        assert!("a b".parse::<Token>().is_err());
        assert!("x".repeat(129).parse::<Token>().is_err());
        assert_ne!(Token::new(), Token::new());
    }
}
