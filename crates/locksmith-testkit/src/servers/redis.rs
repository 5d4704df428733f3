//! Ephemeral `redis-server`s: one node, or a three-master cluster, on free loopback ports in
//! a temp dir, killed on drop.
//!
//! A node runs with `appendonly yes` and `appendfsync always` when asked
//! ([`RedisConfig::persistent`]), so a restart keeps every lock; it can be frozen (SIGSTOP),
//! restarted, and talked to directly with [`command`] (a minimal RESP client, so tests can
//! run `CLIENT LIST` or `CLIENT KILL` without another driver).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use super::{ServerProcess, find_binary, free_port, log_tail};

/// How a test node is configured.
#[derive(Clone, Debug, Default)]
pub struct RedisConfig {
    /// `appendonly yes` + `appendfsync always`: every write on disk before it is answered.
    pub persistent: bool,
    /// `requirepass`: clients must authenticate (as the `default` user).
    pub password: Option<String>,
    /// An ACL user `(name, password)` allowed everything, created at startup.
    pub acl_user: Option<(String, String)>,
    /// Serve TLS only: the node listens with `tls-port` and a self-signed certificate made
    /// by the `openssl` CLI (see [`RedisServer::ca_file`]).
    pub tls: bool,
    /// Extra `--option value` arguments.
    pub extra: Vec<String>,
}

/// A reply of [`command`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`.
    Status(String),
    /// `-ERR …`.
    Error(String),
    /// `:1`.
    Int(i64),
    /// A bulk string (`None`: nil).
    Bulk(Option<String>),
    /// An array.
    Array(Vec<Reply>),
}

impl Reply {
    /// The text of a status or bulk reply.
    pub fn text(&self) -> String {
        match self {
            Reply::Status(s) | Reply::Error(s) => s.clone(),
            Reply::Bulk(Some(s)) => s.clone(),
            Reply::Int(i) => i.to_string(),
            other => format!("{other:?}"),
        }
    }
}

/// Sends one command to 127.0.0.1:`port` on a new connection (authenticating first when
/// `password` is given) and reads its reply.
pub async fn command(port: u16, password: Option<&str>, args: &[&str]) -> std::io::Result<Reply> {
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    if let Some(pass) = password {
        write.write_all(&encode(&["AUTH", pass])).await?;
        let r = read_reply(&mut read).await?;
        if let Reply::Error(e) = r {
            return Ok(Reply::Error(e));
        }
    }
    write.write_all(&encode(args)).await?;
    read_reply(&mut read).await
}

fn encode(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out
}

fn read_reply<'a, R: tokio::io::AsyncBufRead + Unpin + Send>(
    r: &'a mut R,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<Reply>> + Send + 'a>> {
    Box::pin(async move {
        let mut line = String::new();
        r.read_line(&mut line).await?;
        let line = line.trim_end_matches(['\r', '\n']);
        let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "bad RESP reply");
        let (kind, rest) = line.split_at_checked(1).ok_or_else(bad)?;
        Ok(match kind {
            "+" => Reply::Status(rest.to_string()),
            "-" => Reply::Error(rest.to_string()),
            ":" => Reply::Int(rest.parse().map_err(|_| bad())?),
            "$" => {
                let len: i64 = rest.parse().map_err(|_| bad())?;
                if len < 0 {
                    Reply::Bulk(None)
                } else {
                    let mut buf = vec![0u8; len as usize + 2];
                    tokio::io::AsyncReadExt::read_exact(r, &mut buf).await?;
                    buf.truncate(len as usize);
                    Reply::Bulk(Some(String::from_utf8_lossy(&buf).into_owned()))
                }
            }
            "*" => {
                let len: i64 = rest.parse().map_err(|_| bad())?;
                let mut items = Vec::new();
                for _ in 0..len.max(0) {
                    items.push(read_reply(r).await?);
                }
                Reply::Array(items)
            }
            _ => return Err(bad()),
        })
    })
}

/// The `redis-server` binary, or `None` (after saying SKIPPED, or panicking when servers
/// are required).
pub fn redis_server_binary() -> Option<PathBuf> {
    let found = find_binary("redis-server", &[]);
    if found.is_none() {
        crate::skip_store(
            "redis",
            "redis-server is not installed (apt-get install redis-server)",
        );
    }
    found
}

/// One `redis-server` on a free port in a temp dir.
pub struct RedisServer {
    process: Arc<Mutex<ServerProcess>>,
    port: u16,
    password: Option<String>,
    tls: bool,
    dir: tempfile::TempDir,
}

impl std::fmt::Debug for RedisServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisServer")
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

/// Makes a test CA (`ca.pem`) and a server certificate it signs (`cert.pem`, `key.pem`) for
/// `localhost` and 127.0.0.1, with the `openssl` CLI.
fn make_cert(dir: &Path) {
    let run = |args: &[&str]| {
        let status = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .expect("run openssl (apt-get install openssl)");
        assert!(status.success(), "openssl {args:?} failed");
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=locksmith-test-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        "key.pem",
        "-out",
        "server.csr",
    ]);
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )
    .expect("write ext.cnf");
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
        "-days",
        "2",
        "-out",
        "cert.pem",
        "-extfile",
        "ext.cnf",
    ]);
}

impl RedisServer {
    /// Starts a node; `None` when `redis-server` is missing (SKIPPED).
    pub async fn start(config: RedisConfig) -> Option<RedisServer> {
        let binary = redis_server_binary()?;
        for _attempt in 0..5 {
            let dir = tempfile::tempdir().expect("temp dir");
            let port = free_port();
            if config.tls {
                make_cert(dir.path());
            }
            let args = node_args(&config, dir.path(), port);
            let bin = binary.clone();
            let process =
                ServerProcess::start("redis-server", dir.path().join("redis.log"), move || {
                    let mut cmd = Command::new(&bin);
                    cmd.args(&args);
                    cmd
                })
                .expect("start redis-server");
            let mut server = RedisServer {
                process: Arc::new(Mutex::new(process)),
                port,
                password: config.password.clone(),
                tls: config.tls,
                dir,
            };
            if server.wait_ready().await {
                return Some(server);
            }
            let log = log_tail(&server.dir.path().join("redis.log"), 40);
            if !log.contains("Address already in use") {
                panic!("redis-server did not start; its log ends:\n{log}");
            }
            server.process.lock().unwrap().kill();
        }
        panic!("redis-server found no free port in 5 attempts");
    }

    /// Waits until the node answers PING (not LOADING); `false` if it exited.
    async fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + super::READY_TIMEOUT;
        loop {
            if self.tls {
                if super::port_open(self.port).await {
                    return true;
                }
            } else if let Ok(Reply::Status(s)) =
                command(self.port, self.password.as_deref(), &["PING"]).await
                && s == "PONG"
            {
                return true;
            }
            if self.process.lock().unwrap().exited() {
                return false;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server was not ready in time; its log ends:\n{}",
                self.log_tail(40)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The node's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://[:password@]127.0.0.1:PORT` (or `rediss://…` for a TLS node).
    pub fn url(&self) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        match &self.password {
            Some(p) => format!("{scheme}://:{p}@127.0.0.1:{}", self.port),
            None => format!("{scheme}://127.0.0.1:{}", self.port),
        }
    }

    /// The test CA that signed a TLS node's certificate (PEM), to pass as `?tls_ca=`.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// Sends one command to the node (see [`command`]).
    pub async fn command(&self, args: &[&str]) -> Reply {
        command(self.port, self.password.as_deref(), args)
            .await
            .unwrap_or_else(|e| panic!("redis command {args:?}: {e}"))
    }

    /// Freezes (SIGSTOP) or thaws (SIGCONT) the node.
    pub fn set_frozen(&self, frozen: bool) {
        let p = self.process.lock().unwrap();
        if frozen { p.freeze() } else { p.thaw() }
    }

    /// A fault switch for a [`Target`](crate::Target): freezes the node.
    pub fn fault_switch(&self) -> crate::FaultSwitch {
        let process = self.process.clone();
        Arc::new(move |offline| {
            let p = process.lock().unwrap();
            if offline { p.freeze() } else { p.thaw() }
        })
    }

    /// Kills the node (SIGKILL) and starts it again on the same port and data dir.
    pub async fn restart(&mut self) {
        restart_process(&self.process, self.port, self.password.clone()).await;
    }

    /// A restart hook for a [`Target`](crate::Target).
    pub fn restart_hook(&self) -> crate::RestartHook {
        let (process, port, password) = (self.process.clone(), self.port, self.password.clone());
        Arc::new(move || {
            let (process, password) = (process.clone(), password.clone());
            Box::pin(async move { restart_process(&process, port, password).await })
        })
    }

    /// The node's data dir (e.g. for a `--unixsocket` given in [`RedisConfig::extra`]).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The last lines of the node's log.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.dir.path().join("redis.log"), lines)
    }
}

async fn restart_process(process: &Arc<Mutex<ServerProcess>>, port: u16, password: Option<String>) {
    process
        .lock()
        .unwrap()
        .restart()
        .expect("restart redis-server");
    let deadline = Instant::now() + super::READY_TIMEOUT;
    loop {
        if let Ok(Reply::Status(s)) = command(port, password.as_deref(), &["PING"]).await
            && s == "PONG"
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "redis-server did not come back after a restart"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn node_args(config: &RedisConfig, dir: &Path, port: u16) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "--bind".into(),
        "127.0.0.1".into(),
        "--dir".into(),
        dir.display().to_string(),
        "--save".into(),
        String::new(),
        "--daemonize".into(),
        "no".into(),
        "--protected-mode".into(),
        "no".into(),
        "--logfile".into(),
        String::new(),
    ];
    if config.tls {
        args.extend([
            "--port".into(),
            "0".into(),
            "--tls-port".into(),
            port.to_string(),
            "--tls-cert-file".into(),
            dir.join("cert.pem").display().to_string(),
            "--tls-key-file".into(),
            dir.join("key.pem").display().to_string(),
            "--tls-auth-clients".into(),
            "no".into(),
        ]);
    } else {
        args.extend(["--port".into(), port.to_string()]);
    }
    if config.persistent {
        args.extend([
            "--appendonly".into(),
            "yes".into(),
            "--appendfsync".into(),
            "always".into(),
        ]);
    } else {
        args.extend(["--appendonly".into(), "no".into()]);
    }
    if let Some(p) = &config.password {
        args.extend(["--requirepass".into(), p.clone()]);
    }
    if let Some((user, pass)) = &config.acl_user {
        args.extend([
            "--user".into(),
            user.clone(),
            "on".into(),
            format!(">{pass}"),
            "~*".into(),
            "&*".into(),
            "+@all".into(),
        ]);
    }
    args.extend(config.extra.iter().cloned());
    args
}

/// A three-master Redis Cluster (no replicas) made with `redis-cli --cluster create`.
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl std::fmt::Debug for RedisCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCluster")
            .field("ports", &self.ports())
            .finish()
    }
}

impl RedisCluster {
    /// Starts three masters and joins them; `None` when `redis-server` or `redis-cli` is
    /// missing (SKIPPED).
    pub async fn start() -> Option<RedisCluster> {
        let Some(cli) = find_binary("redis-cli", &[]) else {
            crate::skip_store(
                "redis-cluster",
                "redis-cli is not installed (apt-get install redis-tools)",
            );
            return None;
        };
        let mut nodes = Vec::new();
        for _ in 0..3 {
            let bus = free_port();
            let config = RedisConfig {
                extra: vec![
                    "--cluster-enabled".into(),
                    "yes".into(),
                    "--cluster-port".into(),
                    bus.to_string(),
                    "--cluster-node-timeout".into(),
                    "2000".into(),
                ],
                ..RedisConfig::default()
            };
            nodes.push(RedisServer::start(config).await?);
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new(&cli)
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = RedisCluster { nodes };
        let deadline = Instant::now() + super::READY_TIMEOUT;
        'wait: loop {
            assert!(
                Instant::now() < deadline,
                "the test cluster did not become ready"
            );
            for node in &cluster.nodes {
                let info = node.command(&["CLUSTER", "INFO"]).await.text();
                if !info.contains("cluster_state:ok") {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue 'wait;
                }
            }
            break;
        }
        Some(cluster)
    }

    /// The masters' ports.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    /// The nodes.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// `redis+cluster://127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3`.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .ports()
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        format!("redis+cluster://{}", hosts.join(","))
    }

    /// Freezes or thaws every node.
    pub fn set_frozen(&self, frozen: bool) {
        for n in &self.nodes {
            n.set_frozen(frozen);
        }
    }
}

/// The capabilities the Redis store must declare on a node with `appendfsync always`
/// (`persistent`) or a cluster (`atomic_multi` off, not `persistent`).
pub fn capabilities(persistent: bool, cluster: bool) -> locksmith::Capabilities {
    let mut caps = locksmith::Capabilities::NONE;
    caps.fencing = true;
    caps.persistent = persistent && !cluster;
    caps.cross_process = true;
    caps.notify = true;
    caps.atomic_multi = !cluster;
    caps.never_expire = true;
    caps.holder_metadata = true;
    caps.namespaces = true;
    caps.min_hold = true;
    caps.ordered_list = true;
    caps.max_name_len = 255;
    caps.ttl_granularity = Duration::from_millis(1);
    caps
}

/// The environment variable that points the Redis tests at an existing server instead.
pub const URL_ENV: &str = "LOCKSMITH_TEST_REDIS_URL";

/// A conformance target: a fresh persistent node (`appendfsync always`) with a fault switch
/// (freeze) and a restart hook, or the server `LOCKSMITH_TEST_REDIS_URL` names (no faults,
/// no restarts, `persistent` as that server reports). `None`: SKIPPED.
pub async fn target() -> Option<crate::Target> {
    if let Ok(url) = std::env::var(URL_ENV)
        && !url.is_empty()
    {
        let lm = locksmith::Locksmith::connect(&url)
            .await
            .unwrap_or_else(|e| panic!("{URL_ENV}: {e}"));
        let persistent = lm.store().capabilities().persistent;
        return Some(crate::Target::new(
            "redis",
            url,
            capabilities(persistent, false),
        ));
    }
    let server = RedisServer::start(RedisConfig {
        persistent: true,
        ..RedisConfig::default()
    })
    .await?;
    let mut target = crate::Target::new("redis", server.url(), capabilities(true, false));
    target.faults = Some(server.fault_switch());
    target.restart = Some(server.restart_hook());
    target.keep_alive = Some(Box::new(server));
    Some(target)
}

/// A conformance target on a fresh three-master cluster. `None`: SKIPPED.
pub async fn cluster_target() -> Option<crate::Target> {
    let cluster = RedisCluster::start().await?;
    let mut target = crate::Target::new("redis", cluster.url(), capabilities(false, true));
    let switch: Vec<crate::FaultSwitch> =
        cluster.nodes().iter().map(|n| n.fault_switch()).collect();
    target.faults = Some(Arc::new(move |offline| {
        for s in &switch {
            s(offline)
        }
    }));
    target.keep_alive = Some(Box::new(cluster));
    Some(target)
}

/// The capabilities the python-redis-lock layout (`?layout=python-redis-lock`) must
/// declare: no fencing, holder metadata, namespaces, `min_hold` or expired rows; whole-second
/// leases; waiters notified by `BLPOP` and re-polling every second.
pub fn prl_capabilities() -> locksmith::Capabilities {
    let mut caps = locksmith::Capabilities::NONE;
    caps.cross_process = true;
    caps.notify = true;
    caps.poll_interval = Some(Duration::from_secs(1));
    caps.never_expire = true;
    caps.ordered_list = true;
    caps.max_name_len = 255;
    caps.ttl_granularity = Duration::from_secs(1);
    caps
}

/// A conformance target for the python-redis-lock layout on a fresh node (a server per
/// case, since the layout has no namespaces). `None`: SKIPPED.
pub async fn prl_target() -> Option<crate::Target> {
    let server = RedisServer::start(RedisConfig::default()).await?;
    let url = format!("{}?layout=python-redis-lock", server.url());
    let mut target = crate::Target::new("redis", url, prl_capabilities());
    target.faults = Some(server.fault_switch());
    target.keep_alive = Some(Box::new(server));
    Some(target)
}
