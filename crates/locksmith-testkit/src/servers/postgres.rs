//! An ephemeral PostgreSQL server: Debian's `initdb`/`postgres` (under
//! `/usr/lib/postgresql/*/bin`) run as the `postgres` user, on a free port on 127.0.0.1 and a
//! Unix socket in its temp dir, killed on drop.
//!
//! `initdb` runs once per test binary into a template directory; each server copies it (a
//! fraction of a second), so every test can have a server of its own that it may freeze,
//! restart or kill without disturbing the others. TCP connections need a password
//! (`scram-sha-256`) for [`PASSWORD_ROLE`] only; URLs of the superuser carry
//! [`PASSWORD`] too (not checked), so the store's redaction is exercised everywhere.
//!
//! `LOCKSMITH_TEST_POSTGRES_URL` points the conformance target at an existing server instead
//! (it must not be a production one: tests create and drop tables there); such a target has
//! no fault switch or restart hook.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use locksmith::Capabilities;

use super::{ServerProcess, as_user, chown_to, find_binary, free_port};
use crate::{Target, skip_store};

/// The superuser's password on test servers.
pub const PASSWORD: &str = "locksmith-pw-5ecret";

/// The environment variable naming an existing server for the conformance suite.
pub const URL_ENV: &str = "LOCKSMITH_TEST_POSTGRES_URL";

/// The directory holding Debian's PostgreSQL server binaries (the newest version).
pub fn bin_dir() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            Some((v, e.path().join("bin")))
        })
        .filter(|(_, bin)| bin.join("postgres").is_file() && bin.join("initdb").is_file())
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin).or_else(|| {
        let initdb = find_binary("initdb", &[])?;
        find_binary("postgres", &[])?;
        initdb.parent().map(Path::to_path_buf)
    })
}

/// The initialised data directory every server of this test binary copies.
fn template() -> Result<PathBuf, String> {
    static TEMPLATE: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    TEMPLATE.get_or_init(make_template).clone()
}

fn make_template() -> Result<PathBuf, String> {
    let bin = bin_dir().ok_or("no initdb/postgres under /usr/lib/postgresql/*/bin or on PATH")?;
    // Templates of test binaries that have exited are removed here.
    if let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(pid) = name.strip_prefix("locksmith-pg-template-")
                && !Path::new("/proc").join(pid).exists()
            {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    let dir = std::env::temp_dir().join(format!("locksmith-pg-template-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let pwfile = dir.join("pw");
    std::fs::write(&pwfile, PASSWORD).map_err(|e| e.to_string())?;
    chown_to("postgres", &dir);
    let data = dir.join("data");
    let out = as_user("postgres", &bin.join("initdb"))
        .arg("-D")
        .arg(&data)
        .args([
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
            "--auth-local=trust",
            "--auth-host=trust",
        ])
        .arg(format!("--pwfile={}", pwfile.display()))
        .output()
        .map_err(|e| format!("run initdb: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    // One role must give its password (SCRAM) over TCP; everyone else is trusted, so the
    // many connections of a test run do not each pay a SCRAM exchange in a debug build.
    let hba = data.join("pg_hba.conf");
    let rest = std::fs::read_to_string(&hba).map_err(|e| e.to_string())?;
    std::fs::write(
        &hba,
        format!("host all {PASSWORD_ROLE} 127.0.0.1/32 scram-sha-256\n{rest}"),
    )
    .map_err(|e| e.to_string())?;
    Ok(data)
}

/// The role whose TCP logins need [`PASSWORD`] (SCRAM); create it with
/// [`PostgresServer::password_role_sql`].
pub const PASSWORD_ROLE: &str = "locksmith_pw";

/// One running test server.
#[derive(Debug)]
pub struct PostgresServer {
    process: Mutex<ServerProcess>,
    port: u16,
    dir: tempfile::TempDir,
}

impl PostgresServer {
    /// Starts a server of its own (a copy of the template cluster), or `None` with the
    /// reason when PostgreSQL is not installed.
    pub async fn start() -> Result<PostgresServer, String> {
        PostgresServer::start_with(&[]).await
    }

    /// As [`start`](Self::start), with extra `-c name=value` settings (and files copied in
    /// by `prepare`, e.g. TLS certificates).
    pub async fn start_with(settings: &[(&str, &str)]) -> Result<PostgresServer, String> {
        PostgresServer::start_prepared(settings, |_| {}).await
    }

    /// As [`start_with`](Self::start_with); `prepare` gets the data directory before the
    /// server first starts (files it writes there are given to the `postgres` user).
    pub async fn start_prepared(
        settings: &[(&str, &str)],
        prepare: impl FnOnce(&Path),
    ) -> Result<PostgresServer, String> {
        let template = template()?;
        let bin = bin_dir().ok_or("no postgres binary")?;
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let data = dir.path().join("data");
        let status = Command::new("cp")
            .arg("-a")
            .arg(&template)
            .arg(&data)
            .status()
            .map_err(|e| e.to_string())?;
        if !status.success() {
            return Err("copying the template cluster failed".into());
        }
        prepare(&data);
        chown_to("postgres", dir.path());
        let mut extra: Vec<String> = vec![
            "listen_addresses=127.0.0.1".into(),
            "fsync=off".into(),
            "shared_buffers=16MB".into(),
            "max_connections=300".into(),
            "log_min_messages=warning".into(),
        ];
        extra.extend(settings.iter().map(|(k, v)| format!("{k}={v}")));
        for _attempt in 0..5 {
            let port = free_port();
            let (bin, data, sock, extra) = (
                bin.join("postgres"),
                data.clone(),
                dir.path().to_path_buf(),
                extra.clone(),
            );
            let mut process = ServerProcess::start(
                format!("postgres on port {port}"),
                dir.path().join("server.log"),
                move || {
                    let mut cmd = as_user("postgres", &bin);
                    cmd.arg("-D").arg(&data).arg("-p").arg(port.to_string());
                    cmd.arg("-k").arg(&sock);
                    for setting in &extra {
                        cmd.arg("-c").arg(setting);
                    }
                    cmd
                },
            )
            .map_err(|e| format!("start postgres: {e}"))?;
            let in_use = wait_ready_or_bind_error(&mut process, port).await;
            if in_use {
                process.kill();
                continue;
            }
            return Ok(PostgresServer {
                process: Mutex::new(process),
                port,
                dir,
            });
        }
        Err("postgres could not bind a free port in 5 tries".into())
    }

    /// The server's TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The directory holding the data dir, the Unix socket and the log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A URL for database `db` as the superuser, with the password.
    pub fn url(&self, db: &str) -> String {
        format!(
            "postgres://postgres:{PASSWORD}@127.0.0.1:{}/{db}",
            self.port
        )
    }

    /// The SQL that creates [`PASSWORD_ROLE`] with [`PASSWORD`] (a superuser, so it can
    /// create the lock table).
    pub fn password_role_sql() -> String {
        format!("CREATE ROLE {PASSWORD_ROLE} LOGIN SUPERUSER PASSWORD '{PASSWORD}'")
    }

    /// A URL for database `db` as [`PASSWORD_ROLE`] with `password`.
    pub fn password_url(&self, db: &str, password: &str) -> String {
        format!(
            "postgres://{PASSWORD_ROLE}:{password}@127.0.0.1:{}/{db}",
            self.port
        )
    }

    /// The postmaster's pid (from `postmaster.pid`) and those of its children. Backends
    /// run in process groups of their own (PostgreSQL calls `setsid`), so signalling the
    /// server's process group does not reach them.
    pub fn pids(&self) -> Vec<i32> {
        let pidfile = self.dir.path().join("data/postmaster.pid");
        let Some(main) = std::fs::read_to_string(pidfile)
            .ok()
            .and_then(|t| t.lines().next()?.trim().parse::<i32>().ok())
        else {
            return Vec::new();
        };
        // A stale pid file (the server was killed) may name a pid reused by another
        // program: only processes named postgres count.
        let is_postgres = |pid: i32| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|stat| stat.contains("(postgres)"))
        };
        if !is_postgres(main) {
            return Vec::new();
        }
        let mut pids = vec![main];
        if let Ok(entries) = std::fs::read_dir("/proc") {
            for e in entries.flatten() {
                let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<i32>().ok()) else {
                    continue;
                };
                let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
                // pid (comm) state ppid …: comm may hold spaces, so split after the ')'.
                let ppid = stat
                    .rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<i32>().ok());
                if ppid == Some(main) && stat.contains("(postgres)") {
                    pids.push(pid);
                }
            }
        }
        pids
    }

    fn signal_all(&self, signal: nix::sys::signal::Signal) -> Vec<i32> {
        let pids = self.pids();
        for &pid in &pids {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
        }
        pids
    }

    /// SIGKILL to every server process, then waits (up to 10 s) until they are gone, so
    /// a restart does not find the old shared memory still attached.
    fn kill_all(&self) {
        let pids = self.signal_all(nix::sys::signal::Signal::SIGKILL);
        let gone = |pid: i32| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|stat| {
                    let state = stat
                        .rsplit_once(')')
                        .and_then(|(_, r)| r.split_whitespace().next());
                    state == Some("Z") || !stat.contains("(postgres)")
                })
                .unwrap_or(true)
        };
        for _ in 0..500 {
            if pids.iter().all(|&p| gone(p)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Freezes every server process, backends included (SIGSTOP, the postmaster first):
    /// connections stay open, nothing answers.
    pub fn freeze(&self) {
        self.signal_all(nix::sys::signal::Signal::SIGSTOP);
    }

    /// Thaws a frozen server.
    pub fn thaw(&self) {
        let mut pids = self.pids();
        pids.reverse();
        for pid in pids {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGCONT,
            );
        }
        self.process
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .thaw();
    }

    /// Kills the server: SIGKILL to the postmaster and every backend (as a crash or an
    /// OOM kill would); the data dir stays.
    pub fn kill(&self) {
        self.kill_all();
        self.process
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .kill();
    }

    /// Starts the server again after [`kill`](Self::kill) (or kills and restarts it), on
    /// the same port, and waits until it accepts connections.
    pub async fn restart(&self) {
        self.kill_all();
        {
            let mut p = self.process.lock().unwrap_or_else(|e| e.into_inner());
            p.restart().expect("restart postgres");
        }
        for _ in 0..600 {
            if self.ready() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "postgres did not come back after a restart; its log ends:\n{}",
            self.process
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .log_tail(30)
        );
    }

    /// Whether the server accepts connections now (`pg_isready`).
    pub fn ready(&self) -> bool {
        pg_isready(self.port)
    }

    /// The last lines of the server's log.
    pub fn log_tail(&self, lines: usize) -> String {
        self.process
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .log_tail(lines)
    }
}

impl Drop for PostgresServer {
    /// An immediate shutdown (SIGQUIT), so the server removes its shared memory, then a
    /// SIGKILL for anything left.
    fn drop(&mut self) {
        self.thaw();
        let mut p = self.process.lock().unwrap_or_else(|e| e.into_inner());
        p.signal("QUIT");
        for _ in 0..100 {
            if p.exited() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        p.kill();
    }
}

fn pg_isready(port: u16) -> bool {
    let isready = bin_dir()
        .map(|b| b.join("pg_isready"))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("pg_isready"));
    Command::new(isready)
        .args(["-q", "-h", "127.0.0.1", "-p", &port.to_string(), "-t", "1"])
        .status()
        .is_ok_and(|s| s.success())
}

/// Waits for the server; `true` when it failed because the port was taken.
async fn wait_ready_or_bind_error(process: &mut ServerProcess, port: u16) -> bool {
    for _ in 0..1200 {
        if pg_isready(port) {
            return false;
        }
        if process.exited() {
            let log = process.log_tail(20);
            if log.contains("could not bind") || log.contains("Address already in use") {
                return true;
            }
            panic!("postgres exited before it was ready; its log ends:\n{log}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "postgres was not ready after 60 s; its log ends:\n{}",
        process.log_tail(40)
    );
}

/// The capabilities the PostgreSQL store must declare: everything the SQLite store has,
/// with every waiter notified (`LISTEN`/`NOTIFY`), so no polling interval, and releases
/// that hand the lock to the first waiter queued (pushed grants).
pub fn capabilities() -> Capabilities {
    let mut caps = crate::targets::sqlite_capabilities();
    caps.poll_interval = None;
    caps.pushed_grants = true;
    caps
}

/// A conformance target on a server of its own (freeze = SIGSTOP, restart = SIGKILL and
/// start again, a clock hook), or on `LOCKSMITH_TEST_POSTGRES_URL`; `None` (SKIPPED, or a
/// panic under `LOCKSMITH_TEST_REQUIRE_SERVERS=1`) when PostgreSQL is not installed.
pub async fn target() -> Option<Target> {
    if let Ok(url) = std::env::var(URL_ENV)
        && !url.is_empty()
    {
        let mut target = Target::new("postgres", url.clone(), capabilities());
        let table = format!("t_{}", &uuid::Uuid::new_v4().simple().to_string()[..16]);
        target.base_url = with_table(&url, &table);
        return Some(target);
    }
    let server = match PostgresServer::start().await {
        Ok(s) => Arc::new(s),
        Err(why) => {
            skip_store("postgres", &why);
            return None;
        }
    };
    let url = server.url("postgres");
    Some(server_target(&server, url, Box::new(server.clone())))
}

/// A conformance target at `url` whose store lives on `server` (directly or through a
/// pooler): the fault switch freezes the server, the restart hook restarts it, the clock
/// step applies to the URL's store, and `keep_alive` (the server, and whatever stands in
/// front of it) lives as long as the target.
pub fn server_target(
    server: &Arc<PostgresServer>,
    url: String,
    keep_alive: Box<dyn std::any::Any + Send + Sync>,
) -> Target {
    let mut target = Target::new("postgres", url, capabilities());
    let s = server.clone();
    target.faults = Some(Arc::new(
        move |offline| {
            if offline { s.freeze() } else { s.thaw() }
        },
    ));
    let s = server.clone();
    target.restart = Some(Arc::new(move || {
        let s = s.clone();
        Box::pin(async move { s.restart().await })
    }));
    let identity =
        locksmith::store::postgres::identity_of(&target.base_url).expect("the target's URL");
    target.step_clock = Some(Arc::new(move |micros| {
        locksmith::store::postgres::step_clock(&identity, micros);
    }));
    target.keep_alive = Some(keep_alive);
    target
}

/// `url` with `?table=` (or `&table=`) appended.
pub fn with_table(url: &str, table: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}table={table}")
}

/// Creates Django's `lockmgr_lock` table in database `db` of `server` from
/// [`crate::lockmgr::POSTGRES`] (what `python manage.py migrate lockmgr` runs).
pub async fn create_lockmgr_table(server: &PostgresServer, db: &str) -> Result<(), String> {
    let (client, conn) = tokio_postgres::connect(&server.url(db), tokio_postgres::NoTls)
        .await
        .map_err(|e| format!("connect to create lockmgr_lock: {e}"))?;
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    for statement in crate::lockmgr::POSTGRES {
        client
            .batch_execute(statement)
            .await
            .map_err(|e| format!("{statement}: {e}"))?;
    }
    drop(client);
    let _ = driver.await;
    Ok(())
}

/// A conformance target for the django-lockmgr layout (`?layout=django-lockmgr`): a server
/// of its own with Django's table made from [`crate::lockmgr::POSTGRES`], declaring
/// [`crate::lockmgr::capabilities`]; freeze, restart and clock hooks as [`target`]. `None`
/// (SKIPPED, or a panic under `LOCKSMITH_TEST_REQUIRE_SERVERS=1`) when PostgreSQL is not
/// installed.
pub async fn lockmgr_target() -> Option<Target> {
    let server = match PostgresServer::start().await {
        Ok(s) => Arc::new(s),
        Err(why) => {
            skip_store("postgres", &why);
            return None;
        }
    };
    if let Err(why) = create_lockmgr_table(&server, "postgres").await {
        panic!("creating Django's lockmgr_lock table failed: {why}");
    }
    let url = format!("{}?layout=django-lockmgr", server.url("postgres"));
    let mut target = Target::new("postgres", url, crate::lockmgr::capabilities());
    let s = server.clone();
    target.faults = Some(Arc::new(
        move |offline| {
            if offline { s.freeze() } else { s.thaw() }
        },
    ));
    let s = server.clone();
    target.restart = Some(Arc::new(move || {
        let s = s.clone();
        Box::pin(async move { s.restart().await })
    }));
    let identity =
        locksmith::store::postgres::identity_of(&target.base_url).expect("the target's URL");
    target.step_clock = Some(Arc::new(move |micros| {
        locksmith::store::postgres::step_clock(&identity, micros);
    }));
    target.keep_alive = Some(Box::new(server));
    Some(target)
}
