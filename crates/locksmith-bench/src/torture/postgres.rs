//! PostgreSQL faults for the torture harness (`--store postgres` starts a server of the
//! harness's own through the test kit, one per scenario): the server killed and restarted
//! (`pg-restart`), every client connection terminated (`pg-kill-connections`), and the
//! whole server frozen with SIGSTOP past the call timeout (`pg-freeze`).

use std::time::Duration;

use locksmith_testkit::servers::postgres::PostgresServer;

use super::record::{Fault, mono_ns};
use super::scenario::Ctx;

/// A server of the harness's own and a runtime to drive it from the harness's thread.
pub(crate) struct PgServer {
    pub(crate) server: PostgresServer,
    rt: tokio::runtime::Runtime,
}

impl PgServer {
    /// Starts a fresh server.
    pub(crate) fn start() -> Result<PgServer, String> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let server = rt.block_on(PostgresServer::start())?;
        Ok(PgServer { server, rt })
    }

    /// The URL clients use.
    pub(crate) fn url(&self) -> String {
        self.server.url("postgres")
    }

    /// Terminates every connection of a locksmith client; how many.
    fn terminate(&self) -> usize {
        let url = self.url();
        self.rt.block_on(async move {
            let Ok((client, conn)) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await
            else {
                return 0;
            };
            tokio::spawn(conn);
            client
                .query(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                     WHERE application_name = 'locksmith' AND pid <> pg_backend_pid()",
                    &[],
                )
                .await
                .map_or(0, |rows| rows.len())
        })
    }
}

fn record(ctx: &mut Ctx, kind: &str, at: u64, note: String) {
    ctx.fault(&Fault {
        kind: kind.into(),
        at,
        until: Some(mono_ns()),
        name: None,
        fence: None,
        expires_in: None,
        inspected_at: None,
        pid: None,
        note,
    });
}

/// Kills the server (SIGKILL, backends included) and starts it again, every few TTLs.
pub(crate) fn restart(ctx: &mut Ctx, pg: &PgServer) {
    let every = ctx.plan.ttl * 3;
    while ctx.time_left() > every + ctx.plan.ttl * 2 {
        std::thread::sleep(every);
        let at = mono_ns();
        pg.server.kill();
        std::thread::sleep(Duration::from_millis(300));
        pg.rt.block_on(pg.server.restart());
        let down = (mono_ns() - at) / 1_000_000;
        record(ctx, "pg_restart", at, format!("server down for {down} ms"));
    }
    ctx.sleep_until_end();
}

/// Terminates every client connection (`pg_terminate_backend`) every TTL.
pub(crate) fn kill_connections(ctx: &mut Ctx, pg: &PgServer) {
    while ctx.time_left() > ctx.plan.ttl * 2 {
        std::thread::sleep(ctx.plan.ttl);
        let at = mono_ns();
        let n = pg.terminate();
        record(
            ctx,
            "pg_kill_connections",
            at,
            format!("{n} connections terminated"),
        );
    }
    ctx.sleep_until_end();
}

/// Freezes the whole server (SIGSTOP, backends included) for twice the TTL plus the call
/// timeout, then thaws it, every few TTLs.
pub(crate) fn freeze(ctx: &mut Ctx, pg: &PgServer) {
    let stop_for = ctx.plan.ttl * 2 + Duration::from_millis(500);
    while ctx.time_left() > stop_for + ctx.plan.ttl * 3 {
        std::thread::sleep(ctx.plan.ttl * 2);
        let at = mono_ns();
        pg.server.freeze();
        std::thread::sleep(stop_for);
        pg.server.thaw();
        record(
            ctx,
            "pg_freeze",
            at,
            format!("server frozen {} ms", stop_for.as_millis()),
        );
    }
    ctx.sleep_until_end();
}
