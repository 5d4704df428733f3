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
    /// A cluster node (`cluster-enabled yes`) with this `cluster-node-timeout`; its cluster
    /// bus port is picked afresh on each start attempt, as the client port is, so a port
    /// taken between the pick and the bind costs a retry, not a failed test.
    pub cluster_node_timeout: Option<Duration>,
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
            let bus = config.cluster_node_timeout.map(|_| free_port());
            let args = node_args(&config, dir.path(), port, bus);
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

fn node_args(config: &RedisConfig, dir: &Path, port: u16, bus: Option<u16>) -> Vec<String> {
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
    if let (Some(timeout), Some(bus)) = (config.cluster_node_timeout, bus) {
        args.extend([
            "--cluster-enabled".into(),
            "yes".into(),
            "--cluster-port".into(),
            bus.to_string(),
            "--cluster-node-timeout".into(),
            timeout.as_millis().to_string(),
        ]);
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

/// A Redis Cluster of three masters made with `redis-cli --cluster create`: without
/// replicas ([`RedisCluster::start`]), or with replicas that take over when a master dies
/// ([`RedisCluster::start_with_replicas`]), for failover tests.
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
    /// Each node's cluster node id (`CLUSTER MYID`), read at startup so a dead node can
    /// still be recognised in other nodes' `CLUSTER NODES`.
    ids: Vec<String>,
    /// The nodes killed by [`RedisCluster::kill_node`].
    dead: Vec<bool>,
}

impl std::fmt::Debug for RedisCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCluster")
            .field("ports", &self.ports())
            .finish()
    }
}

/// A node's view of one cluster node, from a line of `CLUSTER NODES`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterNode {
    /// The node id.
    pub id: String,
    /// The client port.
    pub port: u16,
    /// The flags (`myself`, `master`, `slave`, `fail?`, `fail`, …).
    pub flags: Vec<String>,
    /// The master's node id for a replica (`None` for a master).
    pub master_of: Option<String>,
    /// The slot ranges it serves, inclusive.
    pub slots: Vec<(u16, u16)>,
}

impl ClusterNode {
    /// Whether the node is a master (`master` flag), whatever its health.
    pub fn is_master(&self) -> bool {
        self.flags.iter().any(|f| f == "master")
    }

    /// Whether the node is flagged failing (`fail` or `fail?`).
    pub fn is_failing(&self) -> bool {
        self.flags.iter().any(|f| f == "fail" || f == "fail?")
    }

    /// Whether it serves `slot`.
    pub fn serves(&self, slot: u16) -> bool {
        self.slots.iter().any(|(a, b)| (*a..=*b).contains(&slot))
    }
}

/// Parses `CLUSTER NODES` output.
pub fn parse_cluster_nodes(text: &str) -> Vec<ClusterNode> {
    let mut out = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 8 {
            continue;
        }
        let addr = f[1].split('@').next().unwrap_or_default();
        let Some(port) = addr.rsplit_once(':').and_then(|(_, p)| p.parse().ok()) else {
            continue;
        };
        let slots = f[8..]
            .iter()
            .filter(|r| !r.starts_with('['))
            .filter_map(|r| match r.split_once('-') {
                Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                None => r.parse().ok().map(|a| (a, a)),
            })
            .collect();
        out.push(ClusterNode {
            id: f[0].to_string(),
            port,
            flags: f[2].split(',').map(str::to_string).collect(),
            master_of: (f[3] != "-").then(|| f[3].to_string()),
            slots,
        });
    }
    out
}

/// How often the failover helpers poll.
const POLL: Duration = Duration::from_millis(100);

impl RedisCluster {
    /// Starts three masters and joins them; `None` when `redis-server` or `redis-cli` is
    /// missing (SKIPPED).
    pub async fn start() -> Option<RedisCluster> {
        RedisCluster::start_nodes(0, Duration::from_millis(2000)).await
    }

    /// Starts three masters with `replicas` replicas each (`--cluster-replicas`) and a
    /// `cluster-node-timeout` of 1 s, so a dead master's replica is promoted a few seconds
    /// after it dies; waits until every replica has synced with its master. `None` when
    /// `redis-server` or `redis-cli` is missing (SKIPPED).
    pub async fn start_with_replicas(replicas: usize) -> Option<RedisCluster> {
        assert!(
            replicas >= 1,
            "start_with_replicas needs at least one replica"
        );
        let cluster = RedisCluster::start_nodes(replicas, Duration::from_millis(1000)).await?;
        let deadline = Instant::now() + super::READY_TIMEOUT;
        'sync: loop {
            assert!(
                Instant::now() < deadline,
                "the test cluster's replicas did not sync in time"
            );
            for node in &cluster.nodes {
                let info = node.command(&["INFO", "replication"]).await.text();
                if info.contains("role:slave") && !info.contains("master_link_status:up") {
                    tokio::time::sleep(POLL).await;
                    continue 'sync;
                }
            }
            break;
        }
        Some(cluster)
    }

    async fn start_nodes(replicas: usize, node_timeout: Duration) -> Option<RedisCluster> {
        let Some(cli) = find_binary("redis-cli", &[]) else {
            crate::skip_store(
                "redis-cluster",
                "redis-cli is not installed (apt-get install redis-tools)",
            );
            return None;
        };
        let mut nodes = Vec::new();
        for _ in 0..3 * (1 + replicas) {
            let config = RedisConfig {
                cluster_node_timeout: Some(node_timeout),
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
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let mut ids = Vec::new();
        for node in &nodes {
            ids.push(node.command(&["CLUSTER", "MYID"]).await.text());
        }
        let dead = vec![false; nodes.len()];
        let cluster = RedisCluster { nodes, ids, dead };
        let deadline = Instant::now() + super::READY_TIMEOUT;
        loop {
            assert!(
                Instant::now() < deadline,
                "the test cluster did not become ready"
            );
            if cluster.state_ok_everywhere().await {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Some(cluster)
    }

    /// Every node's port (masters and replicas, dead or alive), in start order.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    /// The nodes, in start order (which of them are masters: [`RedisCluster::masters`]).
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// `redis+cluster://127.0.0.1:P1,127.0.0.1:P2,…`, every node as a seed.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .ports()
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        format!("redis+cluster://{}", hosts.join(","))
    }

    /// Freezes or thaws every live node.
    pub fn set_frozen(&self, frozen: bool) {
        for (n, dead) in self.nodes.iter().zip(&self.dead) {
            if !dead {
                n.set_frozen(frozen);
            }
        }
    }

    /// Whether every live node says `cluster_state:ok` (`false` if one does not answer).
    pub async fn state_ok_everywhere(&self) -> bool {
        for (node, dead) in self.nodes.iter().zip(&self.dead) {
            if *dead {
                continue;
            }
            match command(node.port, None, &["CLUSTER", "INFO"]).await {
                Ok(r) if r.text().contains("cluster_state:ok") => {}
                _ => return false,
            }
        }
        true
    }

    /// `CLUSTER NODES` as the first live node (other than `except`) that answers sees it.
    async fn view(&self, except: Option<usize>) -> Vec<ClusterNode> {
        for (i, node) in self.nodes.iter().enumerate() {
            if self.dead[i] || Some(i) == except {
                continue;
            }
            if let Ok(Reply::Bulk(Some(text))) =
                command(node.port, None, &["CLUSTER", "NODES"]).await
            {
                return parse_cluster_nodes(&text);
            }
        }
        panic!("no live cluster node answered CLUSTER NODES");
    }

    fn index_of_id(&self, id: &str) -> Option<usize> {
        self.ids.iter().position(|i| i == id)
    }

    /// The slot of `key` (`CLUSTER KEYSLOT`, asked of a live node).
    pub async fn slot_of(&self, key: &str) -> u16 {
        for (i, node) in self.nodes.iter().enumerate() {
            if self.dead[i] {
                continue;
            }
            if let Ok(Reply::Int(slot)) =
                command(node.port, None, &["CLUSTER", "KEYSLOT", key]).await
            {
                return u16::try_from(slot).expect("a slot below 16384");
            }
        }
        panic!("no live cluster node answered CLUSTER KEYSLOT");
    }

    /// The index (in [`RedisCluster::nodes`]) of the master serving `key`'s slot now.
    pub async fn master_of(&self, key: &str) -> usize {
        let slot = self.slot_of(key).await;
        let view = self.view(None).await;
        let master = view
            .iter()
            .find(|n| n.is_master() && n.serves(slot))
            .unwrap_or_else(|| panic!("no master serves slot {slot}: {view:?}"));
        self.index_of_id(&master.id)
            .expect("a node of this cluster")
    }

    /// The indexes of the masters that serve slots now.
    pub async fn masters(&self) -> Vec<usize> {
        let view = self.view(None).await;
        let mut out: Vec<usize> = view
            .iter()
            .filter(|n| n.is_master() && !n.slots.is_empty())
            .filter_map(|n| self.index_of_id(&n.id))
            .collect();
        out.sort_unstable();
        out
    }

    /// Kills node `index` (SIGKILL); it stays dead. Its replica takes over after about
    /// `cluster-node-timeout` plus an election ([`RedisCluster::wait_failover`]).
    pub fn kill_node(&mut self, index: usize) {
        self.nodes[index].process.lock().unwrap().kill();
        self.dead[index] = true;
    }

    /// Freezes (SIGSTOP) or thaws (SIGCONT) node `index`. A master frozen for longer than
    /// `cluster-node-timeout` is failed over and comes back as a replica when thawed.
    pub fn set_node_frozen(&self, index: usize, frozen: bool) {
        self.nodes[index].set_frozen(frozen);
    }

    /// Waits (at most `limit`) until the slots master `old` served belong to another node,
    /// as every live node other than `old` sees it, and every live node other than `old`
    /// says `cluster_state:ok`; returns the new master's index. Panics after `limit`.
    pub async fn wait_failover(&self, old: usize, slots: &[(u16, u16)], limit: Duration) -> usize {
        let deadline = Instant::now() + limit;
        let old_id = self.ids[old].clone();
        let first = slots.first().expect("the old master's slots").0;
        'wait: loop {
            assert!(
                Instant::now() < deadline,
                "no replica took over node {old}'s slots within {limit:?}: {:?}",
                self.view(Some(old)).await
            );
            let mut new_master = None;
            for (i, node) in self.nodes.iter().enumerate() {
                if self.dead[i] || i == old {
                    continue;
                }
                let (Ok(Reply::Bulk(Some(text))), Ok(info)) = (
                    command(node.port, None, &["CLUSTER", "NODES"]).await,
                    command(node.port, None, &["CLUSTER", "INFO"]).await,
                ) else {
                    tokio::time::sleep(POLL).await;
                    continue 'wait;
                };
                let view = parse_cluster_nodes(&text);
                let owner = view.iter().find(|n| n.is_master() && n.serves(first));
                match owner {
                    Some(o) if o.id != old_id && info.text().contains("cluster_state:ok") => {
                        let idx = self.index_of_id(&o.id).expect("a node of this cluster");
                        if new_master.is_some_and(|m| m != idx) {
                            tokio::time::sleep(POLL).await;
                            continue 'wait;
                        }
                        new_master = Some(idx);
                    }
                    _ => {
                        tokio::time::sleep(POLL).await;
                        continue 'wait;
                    }
                }
            }
            return new_master.expect("a live node besides the old master");
        }
    }

    /// The slot ranges node `index` serves now, as the cluster sees it.
    pub async fn slots_of(&self, index: usize) -> Vec<(u16, u16)> {
        let id = &self.ids[index];
        self.view(None)
            .await
            .into_iter()
            .find(|n| &n.id == id)
            .map(|n| n.slots)
            .unwrap_or_default()
    }

    /// Makes sure every write node `index` (a master) accepted so far reached at least one
    /// replica: writes a key of one of its slots and sends `WAIT 1 <timeout>` on the same
    /// connection (replication is ordered, so earlier writes got there first). Returns the
    /// number of replicas that acknowledged.
    pub async fn sync_replicas(&self, index: usize, timeout: Duration) -> i64 {
        let slots = self.slots_of(index).await;
        let mut key = None;
        for i in 0..10_000 {
            let k = format!("locksmith-testkit:sync:{i}");
            let slot = self.slot_of(&k).await;
            if slots.iter().any(|(a, b)| (*a..=*b).contains(&slot)) {
                key = Some(k);
                break;
            }
        }
        let key = key.expect("a key on the node's slots");
        let port = self.nodes[index].port;
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect to the master");
        let (read, mut write) = stream.into_split();
        let mut read = BufReader::new(read);
        write
            .write_all(&encode(&["SET", &key, "1"]))
            .await
            .expect("send SET");
        let set = read_reply(&mut read).await.expect("SET reply");
        assert_eq!(set, Reply::Status("OK".into()), "SET {key}");
        let ms = timeout.as_millis().to_string();
        write
            .write_all(&encode(&["WAIT", "1", &ms]))
            .await
            .expect("send WAIT");
        match read_reply(&mut read).await.expect("WAIT reply") {
            Reply::Int(n) => n,
            other => panic!("WAIT answered {other:?}"),
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
    caps.pushed_grants = true;
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
