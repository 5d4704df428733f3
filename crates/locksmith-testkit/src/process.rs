//! Client processes for cross-process cases: the `locksmith-test-helper` binary, spawned
//! with a store URL, talking one line per event on stdout.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

/// The helper binary's file name.
pub const HELPER_NAME: &str = "locksmith-test-helper";

/// Looks for the helper binary next to the running test binary: cargo puts integration
/// tests in `target/<profile>/deps/` and binaries in `target/<profile>/`.
pub fn find_helper() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let mut dir = exe.parent()?;
    for _ in 0..2 {
        let candidate = dir.join(format!("{HELPER_NAME}{}", std::env::consts::EXE_SUFFIX));
        if candidate.is_file() {
            return Some(candidate);
        }
        dir = dir.parent()?;
    }
    None
}

/// A running helper process. It is killed (SIGKILL) when dropped, and it exits by itself
/// when its stdin closes (`hold`), so a failed test leaves nothing behind.
#[derive(Debug)]
pub struct Helper {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    _stdin: Option<ChildStdin>,
    what: String,
}

impl Helper {
    /// Starts `path` with `args`; stdout is read line by line, stderr goes to the test's.
    pub fn spawn(path: &Path, args: &[&str]) -> Helper {
        let mut child = Command::new(path)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {} {args:?}: {e}", path.display()));
        let stdout = child.stdout.take().expect("piped stdout");
        let stdin = child.stdin.take();
        Helper {
            child,
            lines: BufReader::new(stdout).lines(),
            _stdin: stdin,
            what: format!("helper {args:?}"),
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    /// The next line on its stdout; panics if none comes within `within` or it exits.
    pub async fn line(&mut self, within: Duration) -> String {
        match tokio::time::timeout(within, self.lines.next_line()).await {
            Ok(Ok(Some(line))) => line,
            Ok(Ok(None)) => panic!("{} exited without the expected line", self.what),
            Ok(Err(e)) => panic!("{}: reading stdout: {e}", self.what),
            Err(_) => panic!("{}: no line within {within:?}", self.what),
        }
    }

    /// Reads lines until one starts with `word` and a space (or is `word`); returns the
    /// words after it. Panics after `within`.
    pub async fn expect(&mut self, word: &str, within: Duration) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let line = self.line(left).await;
            let mut words = line.split_whitespace();
            if words.next() == Some(word) {
                return words.map(str::to_string).collect();
            }
        }
    }

    /// Kills it with SIGKILL (no cleanup runs in it) and reaps it.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    /// Waits for it to exit; panics unless it exits successfully within `within`.
    pub async fn finish(&mut self, within: Duration) {
        let status = tokio::time::timeout(within, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("{} did not exit within {within:?}", self.what))
            .unwrap_or_else(|e| panic!("{}: wait: {e}", self.what));
        assert!(status.success(), "{} failed: {status}", self.what);
    }
}
