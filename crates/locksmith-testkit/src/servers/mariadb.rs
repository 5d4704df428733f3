//! Ephemeral MariaDB servers from Debian's own binaries (`mariadb-install-db`, `mariadbd`,
//! the `mariadb` client), run as the `mysql` user when the tests run as root.
//!
//! The data directory is created once per test process (`mariadb-install-db` into a
//! template) and copied for every server, so a server starts in about half a second. Each
//! server listens on a Unix socket in its temp dir and on a free TCP port of 127.0.0.1 (never
//! 3306), has a user `locksmith` with a password (no `--skip-grant-tables`) and a database
//! `locksmith`, and is killed on drop. A guardian process removes every server and temp dir
//! of this test process when it exits, however it exits.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::{ServerProcess, as_user, chown_to, find_binary, free_port, is_root, port_open};

/// The user every test server has.
pub const USER: &str = "locksmith";
/// Its password: tests check that it never shows up in errors, logs or `Debug`.
pub const PASSWORD: &str = "Pw-s3cret-4-tests";
/// The database every test server has.
pub const DATABASE: &str = "locksmith";

/// The binaries a MariaDB test server needs, if installed.
#[derive(Clone, Debug)]
pub struct Binaries {
    /// `mariadbd` (or `mysqld`).
    pub server: PathBuf,
    /// `mariadb-install-db` (or `mysql_install_db`).
    pub install: PathBuf,
    /// The `mariadb` (or `mysql`) client.
    pub client: PathBuf,
}

/// Finds Debian's MariaDB binaries; `Err` names what is missing.
pub fn binaries() -> Result<Binaries, String> {
    let any = |names: &[&str]| names.iter().find_map(|n| find_binary(n, &[]));
    let server = any(&["mariadbd", "mysqld"])
        .ok_or("mariadbd is not installed (apt-get install mariadb-server)")?;
    let install = any(&["mariadb-install-db", "mysql_install_db"])
        .ok_or("mariadb-install-db is not installed (apt-get install mariadb-server)")?;
    let client = any(&["mariadb", "mysql"])
        .ok_or("the mariadb client is not installed (apt-get install mariadb-client)")?;
    if is_root()
        && nix::unistd::User::from_name("mysql")
            .ok()
            .flatten()
            .is_none()
    {
        return Err("there is no `mysql` user to run mariadbd as".into());
    }
    Ok(Binaries {
        server,
        install,
        client,
    })
}

/// The root directory of this process's servers, with the template data dir, and the
/// guardian that cleans it up when the process exits.
struct Root {
    dir: PathBuf,
    template: PathBuf,
    bins: Binaries,
}

fn root() -> Result<&'static Root, String> {
    static ROOT: OnceLock<Result<Root, String>> = OnceLock::new();
    ROOT.get_or_init(make_root).as_ref().map_err(Clone::clone)
}

fn make_root() -> Result<Root, String> {
    let bins = binaries()?;
    let dir = std::env::temp_dir().join(format!(
        "locksmith-mariadb-{}-{}",
        std::process::id(),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    ));
    std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    // The servers run as `mysql` and need to traverse this directory.
    let _ = Command::new("chmod").arg("755").arg(&dir).status();
    guardian(&dir);
    let template = dir.join("template");
    std::fs::create_dir_all(&template).map_err(|e| e.to_string())?;
    chown_to("mysql", &dir);
    let log = dir.join("install.log");
    let out = std::fs::File::create(&log).map_err(|e| e.to_string())?;
    let status = as_user("mysql", &bins.install)
        .arg("--no-defaults")
        .arg(format!("--datadir={}", template.join("data").display()))
        .args([
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
            "--skip-name-resolve",
        ])
        .stdout(out.try_clone().map_err(|e| e.to_string())?)
        .stderr(out)
        .status()
        .map_err(|e| format!("run mariadb-install-db: {e}"))?;
    if !status.success() {
        return Err(format!(
            "mariadb-install-db failed ({status}); its log ends:\n{}",
            super::log_tail(&log, 30)
        ));
    }
    Ok(Root {
        dir,
        template: template.join("data"),
        bins,
    })
}

/// Starts a process that waits for this one to exit, then kills every server recorded in
/// `dir/pgids` and removes `dir`.
fn guardian(dir: &Path) {
    let script = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 1; done; \
         for p in $(cat '{d}/pgids' 2>/dev/null); do env kill -CONT -- -$p 2>/dev/null; env kill -KILL -- -$p 2>/dev/null; done; \
         sleep 1; rm -rf '{d}'",
        pid = std::process::id(),
        d = dir.display()
    );
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let _ = cmd.spawn();
}

/// A running MariaDB server of the test kit.
pub struct MariaDb {
    process: Arc<Mutex<ServerProcess>>,
    /// The guardian's list of process groups to kill when this process exits.
    pgids: PathBuf,
    dir: PathBuf,
    port: u16,
    socket: PathBuf,
    client: PathBuf,
}

impl std::fmt::Debug for MariaDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MariaDb")
            .field("port", &self.port)
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl MariaDb {
    /// Starts a fresh server (blocking, up to a minute); `Err` when MariaDB is not
    /// installed here, panics when an installed server fails to start (with its log).
    pub fn start() -> Result<MariaDb, String> {
        MariaDb::start_with(&[])
    }

    /// Starts a fresh server that only accepts TLS connections
    /// (`require_secure_transport`), with a certificate for `127.0.0.1` and `localhost`
    /// signed by a throwaway CA made with the `openssl` CLI. Returns the server and the CA
    /// certificate's path (for `?ssl-ca=`).
    pub fn start_tls() -> Result<(MariaDb, PathBuf), String> {
        let root = root()?;
        let certs = root.dir.join(format!(
            "tls-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        ));
        std::fs::create_dir_all(&certs).map_err(|e| e.to_string())?;
        let openssl = find_binary("openssl", &[]).ok_or("the openssl CLI is not installed")?;
        let run = |args: &[&str]| -> Result<(), String> {
            let out = Command::new(&openssl)
                .args(args)
                .current_dir(&certs)
                .output()
                .map_err(|e| format!("run openssl: {e}"))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "openssl {args:?} failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                ))
            }
        };
        run(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=locksmith test CA",
        ])?;
        run(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ])?;
        std::fs::write(
            certs.join("ext.cnf"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
        )
        .map_err(|e| e.to_string())?;
        run(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ])?;
        chown_to("mysql", &certs);
        let args = vec![
            format!("--ssl-ca={}", certs.join("ca.pem").display()),
            format!("--ssl-cert={}", certs.join("server.pem").display()),
            format!("--ssl-key={}", certs.join("server.key").display()),
            "--require-secure-transport=ON".to_string(),
        ];
        let server = MariaDb::start_with(&args)?;
        Ok((server, certs.join("ca.pem")))
    }

    fn start_with(extra: &[String]) -> Result<MariaDb, String> {
        let root = root()?;
        let dir = root.dir.join(format!(
            "s-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        ));
        std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        let copied = Command::new("cp")
            .arg("-a")
            .arg(&root.template)
            .arg(dir.join("data"))
            .status()
            .map_err(|e| format!("run cp: {e}"))?;
        if !copied.success() {
            return Err(format!("copy the template data dir to {}", dir.display()));
        }
        chown_to("mysql", &dir);
        let socket = dir.join("mysqld.sock");
        for _attempt in 0..5 {
            let port = free_port();
            let extra = extra.to_vec();
            let (server, data, sock, pid) = (
                root.bins.server.clone(),
                dir.join("data"),
                socket.clone(),
                dir.join("mysqld.pid"),
            );
            let make = move || {
                let mut cmd = as_user("mysql", &server);
                cmd.arg("--no-defaults")
                    .arg(format!("--datadir={}", data.display()))
                    .arg(format!("--socket={}", sock.display()))
                    .arg(format!("--pid-file={}", pid.display()))
                    .arg(format!("--port={port}"))
                    .args([
                        "--bind-address=127.0.0.1",
                        "--skip-name-resolve",
                        "--innodb-buffer-pool-size=16M",
                        "--innodb-log-file-size=8M",
                        "--innodb-flush-log-at-trx-commit=2",
                        "--skip-log-bin",
                        "--max-connections=400",
                        "--performance-schema=OFF",
                    ])
                    .args(&extra);
                cmd
            };
            let log = dir.join("server.log");
            let mut process = ServerProcess::start("mariadbd", log.clone(), make)
                .map_err(|e| format!("start mariadbd: {e}"))?;
            record_group(&root.dir.join("pgids"), &process);
            match wait_up(&mut process, port, &socket) {
                Ok(()) => {
                    let server = MariaDb {
                        process: Arc::new(Mutex::new(process)),
                        pgids: root.dir.join("pgids"),
                        dir: dir.clone(),
                        port,
                        socket: socket.clone(),
                        client: root.bins.client.clone(),
                    };
                    server.sql(&format!(
                        "CREATE USER '{USER}'@'%' IDENTIFIED BY '{PASSWORD}';
                         GRANT ALL PRIVILEGES ON *.* TO '{USER}'@'%';
                         CREATE DATABASE {DATABASE};"
                    ))?;
                    return Ok(server);
                }
                Err(e) if super::log_tail(&log, 40).contains("already in use") => {
                    drop(process);
                    tracing_note(&e);
                    continue;
                }
                Err(e) => panic!("{e}"),
            }
        }
        Err("no free port for mariadbd after 5 tries".into())
    }

    /// `mysql://locksmith:PASSWORD@127.0.0.1:PORT/locksmith`.
    pub fn url(&self) -> String {
        self.url_for(DATABASE)
    }

    /// The URL of another database on this server (see [`create_database`](Self::create_database)).
    pub fn url_for(&self, database: &str) -> String {
        format!(
            "mysql://{USER}:{PASSWORD}@127.0.0.1:{}/{database}",
            self.port
        )
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's Unix socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The server's directory (data dir, socket, log).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Creates a database and returns its name.
    pub fn create_database(&self) -> Result<String, String> {
        let name = format!("t_{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        self.sql(&format!("CREATE DATABASE {name}"))?;
        Ok(name)
    }

    /// Runs SQL as root over the Unix socket with the `mariadb` client; returns its output
    /// (tab-separated, no headers).
    pub fn sql(&self, sql: &str) -> Result<String, String> {
        let out = Command::new(&self.client)
            .arg("--no-defaults")
            .arg(format!("--socket={}", self.socket.display()))
            .args(["-uroot", "--batch", "--skip-column-names", "-e", sql])
            .output()
            .map_err(|e| format!("run the mariadb client: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mariadb -e {sql:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Kills every client connection of `user` (`KILL CONNECTION`); returns how many.
    pub fn kill_connections_of(&self, user: &str) -> usize {
        let ids = self
            .sql(&format!(
                "SELECT id FROM information_schema.processlist WHERE user = '{user}'"
            ))
            .unwrap_or_default();
        let mut n = 0;
        for id in ids.lines().filter(|l| !l.trim().is_empty()) {
            if self.sql(&format!("KILL CONNECTION {}", id.trim())).is_ok() {
                n += 1;
            }
        }
        n
    }

    /// Freezes the server (SIGSTOP): connections stay open, nothing answers.
    pub fn freeze(&self) {
        self.process
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .freeze();
    }

    /// Thaws a frozen server.
    pub fn thaw(&self) {
        self.process
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .thaw();
    }

    /// Kills the server (SIGKILL), starts it again on the same port and data dir, and waits
    /// until it answers (blocking).
    pub fn restart(&self) {
        let mut process = self.process.lock().unwrap_or_else(|e| e.into_inner());
        process.restart().expect("restart mariadbd");
        record_group(&self.pgids, &process);
        if let Err(e) = wait_up(&mut process, self.port, &self.socket) {
            panic!("{e}");
        }
    }

    /// Kills the server (SIGKILL) and leaves it down until [`start_again`](Self::start_again).
    pub fn kill(&self) {
        self.process
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .kill();
    }

    /// Starts a killed server again (blocking until it answers).
    pub fn start_again(&self) {
        self.restart();
    }

    /// The last lines of the server's log.
    pub fn log_tail(&self, lines: usize) -> String {
        self.process
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .log_tail(lines)
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        self.process
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Adds the server's process group to the guardian's list.
fn record_group(pgids: &Path, process: &ServerProcess) {
    if let Some(pid) = process.pid() {
        let _ = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(pgids)
            .and_then(|mut f| std::io::Write::write_all(&mut f, format!("{pid}\n").as_bytes()));
    }
}

fn tracing_note(e: &str) {
    eprintln!("mariadbd: {e}; trying another port");
}

/// Waits (blocking, up to [`READY_TIMEOUT`](super::READY_TIMEOUT)) until the socket exists
/// and the port accepts connections.
fn wait_up(process: &mut ServerProcess, port: u16, socket: &Path) -> Result<(), String> {
    let deadline = Instant::now() + super::READY_TIMEOUT;
    loop {
        if socket.exists() && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        if process.exited() {
            return Err(format!(
                "mariadbd exited before it was ready; its log ends:\n{}",
                process.log_tail(40)
            ));
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "mariadbd was not ready after {:?}; its log ends:\n{}",
                super::READY_TIMEOUT,
                process.log_tail(40)
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether 127.0.0.1:`port` accepts connections (async).
pub async fn up(port: u16) -> bool {
    port_open(port).await
}

/// The environment variable that points the MySQL tests at an existing server instead
/// (`mysql://user:password@host:port/database`; tests isolate themselves by namespace, and
/// the fault and restart cases say SKIPPED).
pub const URL_ENV: &str = "LOCKSMITH_TEST_MYSQL_URL";

/// The capabilities the MySQL/MariaDB store must declare: those of SQLite (persistent, cross
/// process, this process's waiters notified, other processes polling every ≤ 25 ms).
pub fn mysql_capabilities() -> locksmith::Capabilities {
    crate::targets::sqlite_capabilities()
}

/// A conformance target: a fresh MariaDB server for this test (or the server of
/// [`URL_ENV`]), with a fault switch (SIGSTOP/SIGCONT), a restart hook (SIGKILL and start
/// again on the same data) and a clock hook. `None` (SKIPPED, or a failure when servers are
/// required) when MariaDB is not installed.
#[cfg(feature = "mysql")]
pub async fn target() -> Option<crate::Target> {
    if let Ok(url) = std::env::var(URL_ENV)
        && !url.is_empty()
    {
        return Some(crate::Target::new("mysql", url, mysql_capabilities()));
    }
    let server = match tokio::task::spawn_blocking(MariaDb::start)
        .await
        .expect("start mariadbd")
    {
        Ok(server) => Arc::new(server),
        Err(why) => {
            crate::skip_store("mysql", &why);
            return None;
        }
    };
    let mut target = crate::Target::new("mysql", server.url(), mysql_capabilities());
    let s = server.clone();
    target.faults = Some(Arc::new(
        move |offline| {
            if offline { s.freeze() } else { s.thaw() }
        },
    ));
    let s = server.clone();
    target.restart = Some(Arc::new(move || {
        let s = s.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || s.restart())
                .await
                .expect("restart mariadbd");
        })
    }));
    let identity = format!(
        "mysql://127.0.0.1:{}/{DATABASE}?table={}",
        server.port(),
        locksmith::store::mysql::DEFAULT_TABLE
    );
    target.step_clock = Some(Arc::new(move |micros| {
        locksmith::store::mysql::step_clock(&identity, micros);
    }));
    target.keep_alive = Some(Box::new(server));
    Some(target)
}

/// The database of the django-lockmgr layout's targets and tests.
pub const LOCKMGR_DATABASE: &str = "django";

/// MariaDB's default collation of `utf8mb4`, the one a Django project's database usually
/// has: case-, accent- and trailing-space-insensitive, so `Lock`, `lock` and `lock ` are one
/// primary key of Django's table.
pub const COLLATION_CI: &str = "utf8mb4_general_ci";

/// A byte-exact collation (binary, NO PAD), as Django's docs suggest for case-sensitive
/// columns: every name locksmith tells apart is its own row.
pub const COLLATION_BIN: &str = "utf8mb4_nopad_bin";

/// Creates [`LOCKMGR_DATABASE`] (`utf8mb4`, `collation`) on `server` with Django's
/// `lockmgr_lock` table from [`crate::lockmgr::MYSQL`] (what `python manage.py migrate
/// lockmgr` runs; the table takes the database's collation, as Django's does), and returns
/// the layout's URL (`mysql://…/django?layout=django-lockmgr`).
pub fn lockmgr_database(server: &MariaDb, collation: &str) -> Result<String, String> {
    let mut sql = format!(
        "CREATE DATABASE {LOCKMGR_DATABASE} CHARACTER SET utf8mb4 COLLATE {collation}; USE {LOCKMGR_DATABASE};"
    );
    for statement in crate::lockmgr::MYSQL {
        sql.push_str(statement);
        sql.push(';');
    }
    server.sql(&sql)?;
    Ok(format!(
        "{}?layout=django-lockmgr",
        server.url_for(LOCKMGR_DATABASE)
    ))
}

/// A conformance target for the django-lockmgr layout (`?layout=django-lockmgr`): a fresh
/// MariaDB server for this test with Django's table made by [`lockmgr_database`] in a
/// [`COLLATION_BIN`] database, declaring [`crate::lockmgr::capabilities`], with the native target's fault switch, restart hook and
/// clock hook. `None` (SKIPPED, or a failure when servers are required) when MariaDB is not
/// installed. (It always starts its own server: [`URL_ENV`] is not used, since the layout
/// needs Django's table.)
///
/// Why a byte-exact collation: the suite holds `Lock`, `lock` and `LOCK` (and `é1` next to
/// `e1`) as different locks at once, which a case- and accent-insensitive table cannot
/// store as different rows. What the layout does on such a table (the usual one) is tested
/// by `tests/lockmgr_mysql.rs`.
#[cfg(feature = "mysql")]
pub async fn lockmgr_target() -> Option<crate::Target> {
    let server = match tokio::task::spawn_blocking(MariaDb::start)
        .await
        .expect("start mariadbd")
    {
        Ok(server) => Arc::new(server),
        Err(why) => {
            crate::skip_store("mysql-lockmgr", &why);
            return None;
        }
    };
    let url = lockmgr_database(&server, COLLATION_BIN).expect("create Django's lockmgr_lock table");
    let mut target = crate::Target::new("mysql", url, crate::lockmgr::capabilities());
    let s = server.clone();
    target.faults = Some(Arc::new(
        move |offline| {
            if offline { s.freeze() } else { s.thaw() }
        },
    ));
    let s = server.clone();
    target.restart = Some(Arc::new(move || {
        let s = s.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || s.restart())
                .await
                .expect("restart mariadbd");
        })
    }));
    let identity = format!(
        "mysql://127.0.0.1:{}/{LOCKMGR_DATABASE}?layout=django-lockmgr",
        server.port()
    );
    target.step_clock = Some(Arc::new(move |micros| {
        locksmith::store::mysql::step_clock(&identity, micros);
    }));
    target.keep_alive = Some(Box::new(server));
    Some(target)
}
