//! Ephemeral database servers for tests: Debian's own binaries started on loopback (or a Unix
//! socket) in a temp dir, on a free port that is never a standard one, killed on drop.
//!
//! This module holds what every server shares — finding a binary, picking a port, running
//! a command as another user, a process that is killed on drop and can be frozen, restarted
//! or killed, and a bounded readiness wait whose failure shows the server's log. Each
//! server kind lives in its own submodule.

#[cfg(feature = "postgres")]
pub mod pgbouncer;
#[cfg(feature = "postgres")]
pub mod postgres;

use std::fs::File;
use std::future::Future;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Ports tests must never bind: the standard ones the machine's own servers use.
pub const STANDARD_PORTS: [u16; 3] = [5432, 3306, 6379];

/// How long a server may take to become ready before the test fails with its log.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Finds `name` on `PATH` or in one of `extra_dirs` (e.g. `/usr/lib/postgresql/*/bin`,
/// where Debian keeps `initdb`). Globs are not expanded here: pass directories.
pub fn find_binary(name: &str, extra_dirs: &[PathBuf]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(extra_dirs.iter().cloned())
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// A free TCP port on 127.0.0.1 (asked of the kernel, never a standard port). Another
/// process may take it before the server binds it; servers retry startup on a new port
/// when their log says the address is in use.
pub fn free_port() -> u16 {
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local addr").port();
        if !STANDARD_PORTS.contains(&port) {
            return port;
        }
    }
}

/// Whether this process runs as root (then `initdb`/`postgres`/`mariadbd` must be run as
/// their own users, see [`as_user`]).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A command for `program`, run as `user` through `runuser -u USER --` when this process is
/// root, or directly otherwise.
pub fn as_user(user: &str, program: &Path) -> Command {
    if is_root() {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", user, "--"]).arg(program);
        cmd
    } else {
        Command::new(program)
    }
}

/// Gives `path` (recursively) to `user`, so a server run as that user can write there.
/// Does nothing unless this process is root.
pub fn chown_to(user: &str, path: &Path) {
    if !is_root() {
        return;
    }
    let status = Command::new("chown")
        .arg("-R")
        .arg(user)
        .arg(path)
        .status()
        .expect("run chown");
    assert!(status.success(), "chown -R {user} {}", path.display());
}

/// A server process writing to a log file; killed (SIGKILL, with its process group) on drop.
pub struct ServerProcess {
    what: String,
    child: Option<Child>,
    log: PathBuf,
    command: Option<Box<dyn Fn() -> Command + Send + Sync>>,
}

impl std::fmt::Debug for ServerProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerProcess")
            .field("what", &self.what)
            .field("pid", &self.pid())
            .field("log", &self.log)
            .finish_non_exhaustive()
    }
}

impl ServerProcess {
    /// Starts the command `make` builds, in its own process group, with stdout and stderr
    /// appended to `log`. `make` is kept so [`restart`](Self::restart) can run it again.
    pub fn start(
        what: impl Into<String>,
        log: PathBuf,
        make: impl Fn() -> Command + Send + Sync + 'static,
    ) -> std::io::Result<ServerProcess> {
        let mut server = ServerProcess {
            what: what.into(),
            child: None,
            log,
            command: Some(Box::new(make)),
        };
        server.spawn()?;
        Ok(server)
    }

    fn spawn(&mut self) -> std::io::Result<()> {
        let make = self.command.as_ref().expect("a command");
        let out = File::options().create(true).append(true).open(&self.log)?;
        let err = out.try_clone()?;
        let mut cmd = make();
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        self.child = Some(cmd.spawn()?);
        Ok(())
    }

    /// The server's process id (of `runuser` when started through [`as_user`]; signals go
    /// to the whole process group, so they reach the server too).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends `signal` (e.g. `"STOP"`, `"CONT"`, `"KILL"`, `"TERM"`) to the server's process
    /// group.
    pub fn signal(&self, signal: &str) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill")
                .arg(format!("-{signal}"))
                .arg("--")
                .arg(format!("-{pid}"))
                .stderr(Stdio::null())
                .status();
        }
    }

    /// Freezes the server (SIGSTOP): connections stay open, nothing answers.
    pub fn freeze(&self) {
        self.signal("STOP");
    }

    /// Thaws a frozen server (SIGCONT).
    pub fn thaw(&self) {
        self.signal("CONT");
    }

    /// Kills the server (SIGKILL to its process group) and waits for it to exit.
    pub fn kill(&mut self) {
        // Signal the group while the child (its leader's pid) is still known: a server run
        // through `runuser` is the leader's child and would outlive `child.kill()`.
        self.signal("CONT");
        self.signal("KILL");
        let group = self.pid();
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Wait (up to 10 s) until the whole group is gone, so a restart finds the port and
        // the data dir free.
        if let Some(pgid) = group.and_then(|p| i32::try_from(p).ok()) {
            let deadline = Instant::now() + Duration::from_secs(10);
            while nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), None).is_ok()
                && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    /// Stops the server gracefully (SIGTERM, then SIGKILL after `grace`), waiting for it.
    pub fn stop(&mut self, grace: Duration) {
        self.signal("CONT");
        self.signal("TERM");
        let Some(mut child) = self.child.take() else {
            return;
        };
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child = Some(child);
        self.kill();
    }

    /// Starts the server again with the same command (after [`kill`](Self::kill) or
    /// [`stop`](Self::stop); the data dir is kept).
    pub fn restart(&mut self) -> std::io::Result<()> {
        self.kill();
        self.spawn()
    }

    /// Whether the process has exited (a crash at startup, say).
    pub fn exited(&mut self) -> bool {
        match self.child.as_mut() {
            None => true,
            Some(child) => matches!(child.try_wait(), Ok(Some(_))),
        }
    }

    /// The last `lines` lines of the server's log, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log, lines)
    }

    /// Waits until `probe` answers `true` (polling every 50 ms, at most [`READY_TIMEOUT`]);
    /// panics with the log's tail if the server exits first or the time runs out.
    pub async fn wait_ready<F, Fut>(&mut self, mut probe: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if probe().await {
                return;
            }
            if self.exited() {
                panic!(
                    "{} exited before it was ready; its log ends:\n{}",
                    self.what,
                    self.log_tail(40)
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "{} was not ready after {READY_TIMEOUT:?}; its log ends:\n{}",
                    self.what,
                    self.log_tail(40)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The last `lines` lines of the file at `path` (or why it could not be read).
pub fn log_tail(path: &Path, lines: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// Whether a TCP connection to 127.0.0.1:`port` succeeds now.
pub async fn port_open(port: u16) -> bool {
    tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_ok()
}

pub mod mariadb;
pub mod python;
pub mod redis;
