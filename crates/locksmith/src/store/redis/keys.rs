//! Key names: every key of one lock shares one hash tag, so each operation is one script on
//! one slot and Redis Cluster works.
//!
//! ```text
//! <prefix>{<ns>:<name>}     the lock (a hash; its TTL is the lease)
//! <prefix>{<ns>:<name>}f    the name's last fence (expires FENCE_KEY_TTL after the grant)
//! <prefix>{<ns>:<name>}w    the pub/sub channel its releases are published on
//! <prefix>{<ns>:<name>}q    its queued waiters (a sorted set: token → first try, µs)
//! <prefix>{<ns>:<name>}e    what a release needs to grant each queued waiter (a hash)
//! ```
//!
//! Inside the tag, `%`, `{`, `}` and `:` of the namespace and the name are written `%25`,
//! `%7B`, `%7D` and `%3A`, so a name can neither end the tag early (moving the lock to
//! another slot) nor blur the line between namespace and name (`a:` + `b` vs `a` + `:b`).
//! The prefix may not contain `{` or `}` for the same reason.

/// Escapes one part of the hash tag.
pub(super) fn escape(part: &str) -> String {
    let mut out = String::with_capacity(part.len());
    for c in part.chars() {
        match c {
            '%' => out.push_str("%25"),
            '{' => out.push_str("%7B"),
            '}' => out.push_str("%7D"),
            ':' => out.push_str("%3A"),
            c => out.push(c),
        }
    }
    out
}

/// Undoes [`escape`]; `None` for text [`escape`] cannot have written.
pub(super) fn unescape(part: &str) -> Option<String> {
    let mut out = String::with_capacity(part.len());
    let mut rest = part;
    while let Some(at) = rest.find('%') {
        out.push_str(&rest[..at]);
        let code = rest.get(at + 1..at + 3)?;
        out.push(match code {
            "25" => '%',
            "7B" => '{',
            "7D" => '}',
            "3A" => ':',
            _ => return None,
        });
        rest = &rest[at + 3..];
    }
    out.push_str(rest);
    Some(out)
}

/// Escapes `text` for a `SCAN … MATCH` glob: `*`, `?`, `[`, `]` and `\` match themselves.
pub(super) fn glob_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The key names of one store (prefix) and namespace.
#[derive(Clone, Debug)]
pub(super) struct Keys {
    /// `<prefix>{<escaped ns>:`.
    head: String,
}

impl Keys {
    pub(super) fn new(prefix: &str, ns: &str) -> Keys {
        Keys {
            head: format!("{prefix}{{{}:", escape(ns)),
        }
    }

    /// The lock key of `name`.
    pub(super) fn lock(&self, name: &str) -> String {
        format!("{}{}}}", self.head, escape(name))
    }

    /// The fence key of `name`.
    pub(super) fn fence(&self, name: &str) -> String {
        format!("{}{}}}f", self.head, escape(name))
    }

    /// The waiting queue of `name`.
    pub(super) fn queue(&self, name: &str) -> String {
        format!("{}{}}}q", self.head, escape(name))
    }

    /// The queue entries of `name`.
    pub(super) fn entries(&self, name: &str) -> String {
        format!("{}{}}}e", self.head, escape(name))
    }

    /// The wake-up channel of `name`.
    pub(super) fn channel(&self, name: &str) -> String {
        format!("{}{}}}w", self.head, escape(name))
    }

    /// The `SCAN` pattern of the lock keys whose names start with `prefix`, and nothing else
    /// (not the fence keys, not other namespaces, not keys outside the store's prefix).
    pub(super) fn pattern(&self, prefix: &str) -> String {
        format!(
            "{}*}}",
            glob_escape(&format!("{}{}", self.head, escape(prefix)))
        )
    }

    /// The name of a lock key, if it is one of this namespace's lock keys.
    pub(super) fn name_of(&self, key: &str) -> Option<String> {
        let inner = key.strip_prefix(&self.head)?.strip_suffix('}')?;
        if inner.contains(['{', '}', ':']) {
            return None;
        }
        unescape(inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cannot_move_the_tag_or_blur_the_namespace() {
        let keys = Keys::new("locksmith:", "a");
        assert_eq!(keys.lock("x}y{z"), "locksmith:{a:x%7Dy%7Bz}");
        assert_eq!(Keys::new("p:", "a:").lock("b"), "p:{a%3A:b}");
        assert_eq!(Keys::new("p:", "a").lock(":b"), "p:{a:%3Ab}");
        for name in ["plain", "x}y{z", "%7B", "a:b", "*?[]\\", "100%"] {
            let key = keys.lock(name);
            assert_eq!(keys.name_of(&key).as_deref(), Some(name));
            // The hash tag is everything between the first `{` and the next `}`.
            let open = key.find('{').unwrap();
            let close = open + key[open..].find('}').unwrap();
            assert_eq!(close, key.len() - 1, "{key}");
            assert!(keys.fence(name).starts_with(&key));
            assert!(keys.channel(name).starts_with(&key));
            assert!(keys.queue(name).starts_with(&key));
            assert!(keys.entries(name).starts_with(&key));
            assert_eq!(keys.name_of(&keys.queue(name)), None);
        }
        assert_eq!(keys.name_of("locksmith:{a:x}f"), None);
        assert_eq!(keys.name_of("locksmith:{b:x}"), None);
    }

    #[test]
    fn patterns_escape_glob_characters() {
        let keys = Keys::new("locksmith:", "ns");
        assert_eq!(keys.pattern("a*[?"), "locksmith:{ns:a\\*\\[\\?*}");
        assert_eq!(keys.pattern(""), "locksmith:{ns:*}");
    }
}
