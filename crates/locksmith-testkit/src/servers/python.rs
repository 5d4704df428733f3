//! The real Python libraries locksmith's compat layouts share locks with, for interop tests:
//! virtual environments with packages from PyPI, created once under a directory the test names
//! (its `CARGO_TARGET_TMPDIR`) and reused while they work, and [`PyProcess`], a Python process
//! a test talks to line by line.
//!
//! - [`python_redis_lock`]: `python-redis-lock` and `redis`;
//! - [`django_lockmgr`]: Django, `django-lockmgr`, `psycopg` (binary wheel) and `PyMySQL`,
//!   with [`DJANGO_PEER`], a script that drives django-lockmgr on a database URL.
//!
//! No `python3` (or no `venv`/`pip`, or no way to PyPI) → [`skip_store`](crate::skip_store):
//! SKIPPED locally, a failure when `LOCKSMITH_TEST_REQUIRE_SERVERS=1`.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, mpsc};
use std::time::{Duration, Instant};

/// The package version the python-redis-lock interop tests run against.
pub const PACKAGE: &str = "python-redis-lock==4.0.0";

/// The Python client library python-redis-lock talks through.
pub const CLIENT: &str = "redis>=4,<9";

/// The django-lockmgr version the django-lockmgr interop tests run against, and what it
/// runs on: Django 5.2 (LTS), psycopg 3 for PostgreSQL, PyMySQL for MySQL/MariaDB (pure
/// Python, so no compiler or client headers are needed).
pub const DJANGO_LOCKMGR: &[&str] = &[
    "django-lockmgr==2.0.0",
    "Django>=5.2,<5.3",
    "psycopg[binary]>=3.1,<4",
    "PyMySQL>=1.1,<2",
];

/// The django-lockmgr peer script (see its header): run it with the venv's interpreter from
/// [`django_lockmgr`] and a database URL (`sqlite:///…`, `postgres://…`, `mysql://…`).
pub const DJANGO_PEER: &str = include_str!("django_peer.py");

static CREATING: Mutex<()> = Mutex::new(());

/// The interpreter of a venv with python-redis-lock, made under `dir/prl-venv` on first use
/// (a minute, from PyPI), reused afterwards. `None` (after reporting SKIPPED) when Python
/// is missing or the packages cannot be installed.
pub fn python_redis_lock(dir: &Path) -> Option<PathBuf> {
    venv(
        dir,
        "python-redis-lock interop",
        "prl-venv",
        &[PACKAGE, CLIENT],
        "import redis_lock, redis",
    )
}

/// The interpreter of a venv with django-lockmgr and its database drivers
/// ([`DJANGO_LOCKMGR`]), made under `dir/lockmgr-venv` on first use, reused afterwards.
/// `None` (after reporting SKIPPED) when Python is missing or the packages cannot be
/// installed.
pub fn django_lockmgr(dir: &Path) -> Option<PathBuf> {
    venv(
        dir,
        "django-lockmgr interop",
        "lockmgr-venv",
        DJANGO_LOCKMGR,
        "import lockmgr, django, psycopg, pymysql",
    )
}

/// A venv under `dir/name` with `packages`, usable when `probe` runs in it.
fn venv(dir: &Path, what: &str, name: &str, packages: &[&str], probe: &str) -> Option<PathBuf> {
    let _one = CREATING.lock().unwrap_or_else(|e| e.into_inner());
    let venv = dir.join(name);
    let python = venv.join("bin").join("python");
    if imports(&python, probe) {
        return Some(python);
    }
    let Some(system) = super::find_binary("python3", &[]) else {
        crate::skip_store(
            what,
            "python3 not found (install python3, python3-venv and python3-pip)",
        );
        return None;
    };
    let step = |doing: &str, cmd: &mut Command| -> bool {
        match cmd.stdout(Stdio::null()).output() {
            Ok(out) if out.status.success() => true,
            Ok(out) => {
                crate::skip_store(
                    what,
                    &format!(
                        "{doing} failed: {}",
                        String::from_utf8_lossy(&out.stderr).trim()
                    ),
                );
                false
            }
            Err(e) => {
                crate::skip_store(what, &format!("{doing}: {e}"));
                false
            }
        }
    };
    let make = |at: &Path| -> bool {
        step(
            "python3 -m venv (install python3-venv)",
            Command::new(&system).arg("-m").arg("venv").arg(at),
        ) && step(
            &format!("pip install {} (is PyPI reachable?)", packages.join(" ")),
            Command::new(at.join("bin").join("pip"))
                .args(["install", "--quiet", "--disable-pip-version-check"])
                .args(packages),
        )
    };
    // Build in a fresh directory, then move it in place, so another test process never sees
    // a half-made venv.
    let building = dir.join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&building);
    let _ = std::fs::create_dir_all(dir);
    if !make(&building) {
        let _ = std::fs::remove_dir_all(&building);
        return None;
    }
    // A venv's scripts name its directory: rename only if nobody made one meanwhile, and
    // otherwise use theirs.
    if std::fs::rename(&building, &venv).is_err() {
        let _ = std::fs::remove_dir_all(&building);
    }
    if imports(&python, probe) {
        return Some(python);
    }
    // The venv records its own path, so a moved venv may not run: rebuild in place.
    let _ = std::fs::remove_dir_all(&venv);
    if make(&venv) && imports(&python, probe) {
        return Some(python);
    }
    crate::skip_store(what, &format!("the venv cannot run {probe:?}"));
    None
}

fn imports(python: &Path, probe: &str) -> bool {
    python.exists()
        && Command::new(python)
            .args(["-c", probe])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
}

/// A Python process a test talks to: lines to its stdin, lines from its stdout (each with
/// the moment it arrived); its stderr goes to the test's. Killed on drop.
#[derive(Debug)]
pub struct PyProcess {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<(Instant, String)>,
}

impl PyProcess {
    /// Runs `python -c script args…`.
    pub fn start(python: &Path, script: &str, args: &[&str]) -> PyProcess {
        let mut child = Command::new(python)
            .arg("-c")
            .arg(script)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start python");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send((Instant::now(), line));
            }
        });
        PyProcess {
            stdin: child.stdin.take(),
            child,
            lines: rx,
        }
    }

    /// The next line the process prints, and when it arrived. Panics after `within`, or
    /// when the process exits without printing one (its stderr shows why).
    pub fn line(&mut self, within: Duration) -> (Instant, String) {
        match self.lines.recv_timeout(within) {
            Ok(line) => line,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                panic!("python said nothing within {within:?}")
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = self.child.wait().expect("wait for python");
                panic!("python exited ({status}) without saying more; its stderr is above")
            }
        }
    }

    /// Writes `line` (and a newline) to the process's stdin.
    pub fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin still open");
        writeln!(stdin, "{line}").expect("write to python");
        stdin.flush().expect("flush to python");
    }

    /// Closes stdin and waits for a successful exit.
    pub fn finish(mut self) {
        drop(self.stdin.take());
        let status = self.child.wait().expect("wait for python");
        assert!(status.success(), "python failed: {status}");
    }
}

impl Drop for PyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
