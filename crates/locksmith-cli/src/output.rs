//! Output: human text or one JSON object per line, with a stable schema (see the README).
//!
//! Every JSON line has a `"type"`: `lock` (a lock's info), `acquired`, `extended`,
//! `released`, `status`, `set`, `set_summary`, `cleared`, `reset`, `purged`, `run`, `error`.
//! Durations are integer milliseconds (`*_ms`), times are Unix milliseconds (`*_at_ms`),
//! "never expires" is `null`.

use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use comfy_table::{Attribute, Cell, Table};
use locksmith::LockInfo;
use serde_json::{Value, json};

use crate::cli::Format;
use crate::exit::Failure;

/// Where results, notes and errors go, and how they look.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Out {
    pub(crate) format: Format,
    pub(crate) quiet: bool,
    /// Colour on stderr (errors).
    pub(crate) color: bool,
    /// Colour on stdout (tables).
    pub(crate) table_color: bool,
}

pub(crate) fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn unix_ms(t: SystemTime) -> u64 {
    ms(t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO))
}

/// Whether a character must not reach a terminal raw: control characters (ESC, newline,
/// tab, …) and the bidirectional overrides that reorder what follows them.
fn unsafe_char(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Text (a lock name, owner or host) made safe for a person's terminal: control characters
/// are shown escaped (`a\u{1b}[31mb`, `a\nb`), so they can neither colour the terminal nor
/// split a table row. JSON output stays exact and never goes through this.
pub(crate) fn safe(text: &str) -> String {
    if !text.chars().any(unsafe_char) {
        return text.to_string();
    }
    text.chars()
        .map(|c| {
            if unsafe_char(c) {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// A word quoted for a POSIX shell, for commands shown as hints: as is when it is plain,
/// `'…'` otherwise, and `$'…'` with escapes when it holds control characters.
pub(crate) fn shell_quote(word: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "/._-+,:@%=".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        return word.to_string();
    }
    if word.chars().any(unsafe_char) {
        let mut quoted = String::from("$'");
        for c in word.chars() {
            match c {
                '\\' => quoted.push_str("\\\\"),
                '\'' => quoted.push_str("\\'"),
                c if unsafe_char(c) && (c as u32) < 0x80 => {
                    quoted.push_str(&format!("\\x{:02x}", c as u32));
                }
                c if unsafe_char(c) => quoted.push_str(&format!("\\u{:04x}", c as u32)),
                c => quoted.push(c),
            }
        }
        quoted.push('\'');
        return quoted;
    }
    format!("'{}'", word.replace('\'', "'\\''"))
}

/// `1 lock`, `2 locks`.
pub(crate) fn count(n: impl Into<u64>, one: &str, many: &str) -> String {
    let n = n.into();
    format!("{n} {}", if n == 1 { one } else { many })
}

/// A short human duration: `250ms`, `4.2s`, `3m 5s`, `2h 10m`.
pub(crate) fn human(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else if d < Duration::from_secs(60) {
        format!("{:.1}s", d.as_secs_f64())
    } else {
        let secs = d.as_secs();
        let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
        match h {
            0 => format!("{m}m {s}s"),
            _ => format!("{h}h {m}m"),
        }
    }
}

/// When a lock expires, for people.
pub(crate) fn expiry(info: &LockInfo) -> String {
    match (info.expired, info.expires_in) {
        (true, _) => "expired".into(),
        (false, None) => "never".into(),
        (false, Some(d)) if info.released => format!("{} (released, min-hold)", human(d)),
        (false, Some(d)) => human(d),
    }
}

/// A lock's info as JSON (never a token).
pub(crate) fn lock_json(info: &LockInfo) -> Value {
    json!({
        "type": "lock",
        "name": info.name,
        "owner": info.owner,
        "host": info.host,
        "pid": info.pid,
        "fence": info.fence,
        "held_for_ms": info.held_for.map(ms),
        "expires_in_ms": info.expires_in.map(ms),
        "expired": info.expired,
        "released": info.released,
        "acquired_at_ms": info.acquired_at.map(unix_ms),
        "expires_at_ms": info.expires_at.map(unix_ms),
    })
}

/// "owner on host (pid N, fence F, held for X, expires in Y)"; fields the store does not
/// record are left out.
pub(crate) fn holder(info: &LockInfo) -> String {
    let mut s = info
        .owner
        .as_deref()
        .map_or_else(|| "an unknown holder".into(), safe);
    if let Some(host) = &info.host {
        s.push_str(&format!(" on {}", safe(host)));
    }
    let mut parts = Vec::new();
    if let Some(pid) = info.pid {
        parts.push(format!("pid {pid}"));
    }
    if let Some(fence) = info.fence {
        parts.push(format!("fence {fence}"));
    }
    if let Some(held) = info.held_for {
        parts.push(format!("held for {}", human(held)));
    }
    parts.push(format!("expires in {}", expiry(info)));
    format!("{s} ({})", parts.join(", "))
}

/// A holder field for a table cell: `-` where the store does not record it.
pub(crate) fn cell<T: ToString>(v: &Option<T>) -> String {
    v.as_ref()
        .map_or_else(|| "-".to_string(), |v| safe(&v.to_string()))
}

impl Out {
    pub(crate) fn json(&self) -> bool {
        self.format == Format::Json
    }

    /// A result line on stdout. Read-only output to a closed pipe (`| head`) ends the program
    /// quietly, as `grep` would.
    pub(crate) fn line(&self, text: impl std::fmt::Display) {
        if !self.try_line(text) {
            std::process::exit(0);
        }
    }

    /// A result line on stdout; whether it was written (and flushed).
    pub(crate) fn try_line(&self, text: impl std::fmt::Display) -> bool {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{text}").is_ok() && stdout.flush().is_ok()
    }

    /// A JSON object on stdout.
    pub(crate) fn object(&self, value: Value) {
        self.line(value);
    }

    /// A note for people on stderr (not in JSON mode, not with -q); control characters in it
    /// are escaped.
    pub(crate) fn note(&self, text: impl std::fmt::Display) {
        if !self.quiet && !self.json() {
            eprintln!("{}", safe(&text.to_string()));
        }
    }

    /// The one line a failure prints (in human text, control characters escaped).
    pub(crate) fn error(&self, failure: &Failure) {
        if self.json() {
            eprintln!(
                "{}",
                json!({"type": "error", "code": failure.code, "message": failure.message})
            );
        } else if self.color {
            eprintln!(
                "\x1b[1;31mlocksmith: error:\x1b[0m {}",
                safe(&failure.message)
            );
        } else {
            eprintln!("locksmith: error: {}", safe(&failure.message));
        }
    }

    /// Reports a failure: an expected skip (the lock is busy) prints nothing with `-q`, and is
    /// a note rather than an error when its exit code is 0 (`--busy-exit-code 0`).
    pub(crate) fn failure(&self, failure: &Failure) {
        if failure.skip && self.quiet {
            return;
        }
        if failure.skip && failure.code == 0 {
            self.note(format!("locksmith: skipped: {}", failure.message));
            return;
        }
        self.error(failure);
    }

    /// A table with a header row.
    pub(crate) fn table(&self, header: &[&str]) -> Table {
        let mut table = Table::new();
        table.load_style(comfy_table::presets::NOTHING);
        if self.table_color {
            table.enforce_styling();
        } else {
            table.force_no_tty();
        }
        table.set_header(
            header
                .iter()
                .map(|h| Cell::new(h).add_attribute(Attribute::Bold)),
        );
        table
    }

    /// Prints the rows of locks (one table per page, so long lists stream).
    pub(crate) fn locks(&self, items: &[LockInfo]) {
        if self.json() {
            for info in items {
                self.object(lock_json(info));
            }
            return;
        }
        let mut table = self.table(&[
            "NAME",
            "OWNER",
            "HOST",
            "PID",
            "FENCE",
            "HELD FOR",
            "EXPIRES IN",
        ]);
        for i in items {
            table.add_row(vec![
                safe(&i.name),
                cell(&i.owner),
                cell(&i.host),
                cell(&i.pid),
                cell(&i.fence),
                i.held_for.map_or_else(|| "-".to_string(), human),
                expiry(i),
            ]);
        }
        self.line(table);
    }
}
