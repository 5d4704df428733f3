//! Server faults for the networked stores (issue 11): the harness starts the server itself
//! (a MariaDB of the test kit for `--store mysql`), and the scenarios `server-restart`,
//! `conn-kill` and `server-freeze` SIGKILL and restart it, `KILL CONNECTION` every client
//! connection, or SIGSTOP it for a while — while the workers run. The checker's rules are the
//! same as for every scenario: no two holders at once, fences increasing, no stale write
//! accepted, and locks granted after the last fault.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use locksmith_testkit::servers::mariadb::{MariaDb, USER};

use super::record::{Fault, mono_ns};
use super::scenario::Ctx;

/// The server this harness started, if any.
static SERVER: OnceLock<Arc<MariaDb>> = OnceLock::new();

/// Starts a MariaDB server of the test kit for `--store mysql` (or `mariadb`, or a bare
/// `mysql://`) and returns its URL; other values are returned unchanged.
pub(crate) fn resolve_store(store: Option<String>) -> Result<Option<String>, String> {
    match store.as_deref() {
        Some("mysql" | "mysql://" | "mariadb" | "mariadb://") => {
            let server = MariaDb::start()?;
            let url = server.url();
            let _ = SERVER.set(Arc::new(server));
            Ok(Some(url))
        }
        _ => Ok(store),
    }
}

/// Whether the harness controls a server (the server scenarios need one).
pub(crate) fn have_server() -> bool {
    SERVER.get().is_some()
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

/// SIGKILL the server and start it again on the same data, every 3 s.
pub(crate) fn restart(ctx: &mut Ctx) {
    let server = SERVER.get().expect("a server").clone();
    let pause = Duration::from_secs(3);
    while ctx.time_left() > pause + ctx.plan.ttl * 3 {
        std::thread::sleep(pause);
        let at = mono_ns();
        server.restart();
        record(
            ctx,
            "server_restart",
            at,
            "mariadbd SIGKILLed and started again".into(),
        );
    }
    ctx.sleep_until_end();
}

/// `KILL CONNECTION` every connection of the workers' user, every 700 ms.
pub(crate) fn conn_kill(ctx: &mut Ctx) {
    let server = SERVER.get().expect("a server").clone();
    let pause = Duration::from_millis(700);
    while ctx.time_left() > pause + ctx.plan.ttl * 3 {
        std::thread::sleep(pause);
        let at = mono_ns();
        let n = server.kill_connections_of(USER);
        record(ctx, "conn_kill", at, format!("{n} connections killed"));
    }
    ctx.sleep_until_end();
}

/// SIGSTOP the server for TTL + 0.5 s (leases run out meanwhile: holders must report them
/// lost rather than keep writing), then SIGCONT, every 3 s.
pub(crate) fn freeze(ctx: &mut Ctx) {
    let server = SERVER.get().expect("a server").clone();
    let pause = Duration::from_secs(3);
    let frozen = ctx.plan.ttl + Duration::from_millis(500);
    while ctx.time_left() > pause + frozen + ctx.plan.ttl * 3 {
        std::thread::sleep(pause);
        let at = mono_ns();
        server.freeze();
        std::thread::sleep(frozen);
        server.thaw();
        record(
            ctx,
            "server_freeze",
            at,
            format!("mariadbd SIGSTOPped for {frozen:?}"),
        );
    }
    ctx.sleep_until_end();
}
