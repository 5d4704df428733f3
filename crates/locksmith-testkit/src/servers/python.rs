//! The real python-redis-lock, for interop tests of the Redis store's python-redis-lock
//! layout: a virtual environment with `python-redis-lock` and `redis` from PyPI, created once
//! under a directory the test names (its `CARGO_TARGET_TMPDIR`) and reused while it works.
//!
//! No `python3` (or no `venv`/`pip`, or no way to PyPI) → [`skip_store`](crate::skip_store):
//! SKIPPED locally, a failure when `LOCKSMITH_TEST_REQUIRE_SERVERS=1`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

/// The package version the interop tests run against.
pub const PACKAGE: &str = "python-redis-lock==4.0.0";

/// The Python client library python-redis-lock talks through.
pub const CLIENT: &str = "redis>=4,<9";

static CREATING: Mutex<()> = Mutex::new(());

/// The venv's interpreter, with `redis_lock` importable: made under `dir/prl-venv` on first
/// use (a minute, from PyPI), reused afterwards. `None` (after reporting SKIPPED) when Python
/// is missing or the packages cannot be installed.
pub fn python_redis_lock(dir: &Path) -> Option<PathBuf> {
    let _one = CREATING.lock().unwrap_or_else(|e| e.into_inner());
    let venv = dir.join("prl-venv");
    let python = venv.join("bin").join("python");
    if imports(&python) {
        return Some(python);
    }
    let Some(system) = super::find_binary("python3", &[]) else {
        crate::skip_store(
            "python-redis-lock interop",
            "python3 not found (install python3, python3-venv and python3-pip)",
        );
        return None;
    };
    // Build in a fresh directory, then move it in place, so another test process never sees
    // a half-made venv.
    let building = dir.join(format!("prl-venv-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&building);
    let _ = std::fs::create_dir_all(dir);
    let step = |what: &str, cmd: &mut Command| -> bool {
        match cmd.stdout(Stdio::null()).output() {
            Ok(out) if out.status.success() => true,
            Ok(out) => {
                crate::skip_store(
                    "python-redis-lock interop",
                    &format!(
                        "{what} failed: {}",
                        String::from_utf8_lossy(&out.stderr).trim()
                    ),
                );
                false
            }
            Err(e) => {
                crate::skip_store("python-redis-lock interop", &format!("{what}: {e}"));
                false
            }
        }
    };
    if !step(
        "python3 -m venv (install python3-venv)",
        Command::new(&system).arg("-m").arg("venv").arg(&building),
    ) {
        return None;
    }
    let pip = building.join("bin").join("pip");
    if !step(
        "pip install python-redis-lock redis (is PyPI reachable?)",
        Command::new(&pip)
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .arg(PACKAGE)
            .arg(CLIENT),
    ) {
        return None;
    }
    // A venv's scripts name its directory: rename only if nobody made one meanwhile, and
    // otherwise use theirs.
    if std::fs::rename(&building, &venv).is_err() {
        let _ = std::fs::remove_dir_all(&building);
    }
    if imports(&python) {
        return Some(python);
    }
    // The venv records its own path, so a moved venv may not run: rebuild in place.
    let _ = std::fs::remove_dir_all(&venv);
    if step(
        "python3 -m venv",
        Command::new(&system).arg("-m").arg("venv").arg(&venv),
    ) && step(
        "pip install python-redis-lock redis",
        Command::new(venv.join("bin").join("pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .arg(PACKAGE)
            .arg(CLIENT),
    ) && imports(&python)
    {
        return Some(python);
    }
    crate::skip_store(
        "python-redis-lock interop",
        "the venv does not import redis_lock",
    );
    None
}

fn imports(python: &Path) -> bool {
    python.exists()
        && Command::new(python)
            .args(["-c", "import redis_lock, redis"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
}
