//! An ephemeral PgBouncer in transaction mode (`pool_mode = transaction`) in front of a
//! test-kit [`PostgresServer`]: Debian's `pgbouncer`, run as the `postgres` user (it refuses
//! to run as root) on a free port of 127.0.0.1, killed on drop.
//!
//! Every transaction may run on a different server connection, so whatever a client leaves
//! in its session (prepared statements, advisory locks, `LISTEN`, `SET`) is not there at its
//! next transaction, and may be seen by another client's. A store that passes the conformance
//! suite through it keeps no session state on its pooled connections.

use std::sync::Arc;
use std::time::Duration;

use super::postgres::{PASSWORD, PostgresServer, server_target};
use super::{ServerProcess, as_user, chown_to, find_binary, free_port};
use crate::{Target, skip_store};

/// A running PgBouncer.
#[derive(Debug)]
pub struct PgBouncer {
    process: ServerProcess,
    port: u16,
    _dir: tempfile::TempDir,
}

impl PgBouncer {
    /// Starts a PgBouncer in transaction mode that sends every database to `server` (as
    /// the `postgres` user, which the test servers trust on TCP), or the reason it could not
    /// (`pgbouncer` not installed).
    pub async fn start(server: &PostgresServer) -> Result<PgBouncer, String> {
        let bin = find_binary("pgbouncer", &[])
            .ok_or("no pgbouncer binary (Debian package pgbouncer)")?;
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        std::fs::write(dir.path().join("users.txt"), "\"postgres\" \"\"\n")
            .map_err(|e| e.to_string())?;
        for _attempt in 0..5 {
            let port = free_port();
            let ini = dir.path().join("pgbouncer.ini");
            std::fs::write(
                &ini,
                format!(
                    "[databases]\n\
                     * = host=127.0.0.1 port={pg}\n\
                     [pgbouncer]\n\
                     listen_addr = 127.0.0.1\n\
                     listen_port = {port}\n\
                     unix_socket_dir =\n\
                     auth_type = trust\n\
                     auth_file = {users}\n\
                     pool_mode = transaction\n\
                     max_client_conn = 2000\n\
                     default_pool_size = 60\n\
                     server_reset_query =\n\
                     ignore_startup_parameters = extra_float_digits\n",
                    pg = server.port(),
                    users = dir.path().join("users.txt").display(),
                ),
            )
            .map_err(|e| e.to_string())?;
            chown_to("postgres", dir.path());
            let (bin, config) = (bin.clone(), ini.clone());
            let mut process = ServerProcess::start(
                format!("pgbouncer on port {port}"),
                dir.path().join("pgbouncer.log"),
                move || {
                    let mut cmd = as_user("postgres", &bin);
                    cmd.arg(&config);
                    cmd
                },
            )
            .map_err(|e| format!("start pgbouncer: {e}"))?;
            match wait_ready(&mut process, port).await {
                Ready::Yes => {
                    return Ok(PgBouncer {
                        process,
                        port,
                        _dir: dir,
                    });
                }
                Ready::PortTaken => process.kill(),
                Ready::Failed(log) => return Err(format!("pgbouncer did not start:\n{log}")),
            }
        }
        Err("pgbouncer could not bind a free port in 5 tries".into())
    }

    /// The pooler's TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A URL for database `db` through the pooler, as the superuser (with the test servers'
    /// password, which is not checked).
    pub fn url(&self, db: &str) -> String {
        format!(
            "postgres://postgres:{PASSWORD}@127.0.0.1:{}/{db}",
            self.port
        )
    }

    /// The last `lines` lines of the pooler's log.
    pub fn log_tail(&self, lines: usize) -> String {
        self.process.log_tail(lines)
    }
}

enum Ready {
    Yes,
    PortTaken,
    Failed(String),
}

async fn wait_ready(process: &mut ServerProcess, port: u16) -> Ready {
    for _ in 0..600 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ready::Yes;
        }
        if process.exited() {
            let log = process.log_tail(20);
            if log.contains("Address already in use") {
                return Ready::PortTaken;
            }
            return Ready::Failed(log);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ready::Failed(process.log_tail(40))
}

/// A conformance target: the PostgreSQL store through a PgBouncer in transaction mode, with
/// its listener connected to the server itself (`?listen=`, which `LISTEN` needs). The
/// fault switch freezes the server behind the pooler; the restart hook restarts it (the
/// pooler reconnects).
pub async fn target() -> Option<Target> {
    let server = match PostgresServer::start().await {
        Ok(s) => Arc::new(s),
        Err(why) => {
            skip_store("postgres", &why);
            return None;
        }
    };
    let bouncer = match PgBouncer::start(&server).await {
        Ok(b) => b,
        Err(why) => {
            skip_store("pgbouncer", &why);
            return None;
        }
    };
    let url = format!(
        "{}?listen=127.0.0.1:{}",
        bouncer.url("postgres"),
        server.port()
    );
    Some(server_target(
        &server,
        url,
        Box::new((server.clone(), bouncer)),
    ))
}
