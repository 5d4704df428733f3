//! TLS to PostgreSQL (`?sslmode=require|verify-full`, feature `postgres-tls`) against a
//! test-kit server with a self-signed certificate made by the `openssl` command.

#![cfg(feature = "postgres-tls")]

use std::path::Path;
use std::process::Command;

use locksmith::Locksmith;
use locksmith_testkit::servers::postgres::PostgresServer;

/// Writes a test CA (`ca.crt`) and a server certificate it signed (`server.crt`,
/// `server.key`; CN=localhost, SAN localhost and 127.0.0.1, not a CA).
fn make_cert(dir: &Path) -> bool {
    let run = |args: &[&str]| {
        Command::new("openssl")
            .current_dir(dir)
            .args(args)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=locksmith test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
    ]) && run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]) && run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
        "-out",
        "server.crt",
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sslmode_require_and_verify_full() {
    let certs = tempfile::tempdir().unwrap();
    if !make_cert(certs.path()) {
        locksmith_testkit::skip_store("postgres (TLS)", "the openssl command is missing");
        return;
    }
    let (crt, key) = (
        certs.path().join("server.crt"),
        certs.path().join("server.key"),
    );
    let server = match PostgresServer::start_prepared(
        &[
            ("ssl", "on"),
            ("ssl_cert_file", "server.crt"),
            ("ssl_key_file", "server.key"),
        ],
        |data| {
            std::fs::copy(&crt, data.join("server.crt")).unwrap();
            std::fs::copy(&key, data.join("server.key")).unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(
                data.join("server.key"),
                std::fs::Permissions::from_mode(0o600),
            )
            .unwrap();
        },
    )
    .await
    {
        Ok(s) => s,
        Err(why) => {
            locksmith_testkit::skip_store("postgres", &why);
            return;
        }
    };
    let (admin, conn) = tokio_postgres::connect(&server.url("postgres"), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let tls_connections = || async {
        admin
            .query_one(
                "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
                 WHERE a.application_name = $1 AND s.ssl",
                &[&"ls-tls"],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    let base = format!("{}?application_name=ls-tls", server.url("postgres"));

    // require: encrypted, the certificate not checked.
    let lm = Locksmith::connect(&format!("{base}&sslmode=require"))
        .await
        .unwrap();
    lm.lock("t")
        .acquire()
        .await
        .unwrap()
        .release()
        .await
        .unwrap();
    assert!(tls_connections().await >= 1, "no TLS connection seen");
    drop(lm);

    // verify-full with the test CA as the root: checked, and accepted.
    let lm = Locksmith::connect(&format!(
        "{base}&sslmode=verify-full&sslrootcert={}",
        certs.path().join("ca.crt").display()
    ))
    .await
    .unwrap();
    lm.lock("t")
        .acquire()
        .await
        .unwrap()
        .release()
        .await
        .unwrap();

    // verify-full against the public roots: the self-signed certificate is refused.
    let err = Locksmith::connect(&format!("{base}&sslmode=verify-full&timeout=3s"))
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.to_lowercase().contains("certificate") || text.contains("invalid peer"),
        "{text}"
    );

    // A missing root file is a configuration error naming it.
    let err = Locksmith::connect(&format!(
        "{base}&sslmode=verify-full&sslrootcert=/nonexistent.pem"
    ))
    .await
    .unwrap_err();
    assert!(matches!(err, locksmith::Error::Config { .. }), "{err}");
    assert!(err.to_string().contains("/nonexistent.pem"), "{err}");
}
