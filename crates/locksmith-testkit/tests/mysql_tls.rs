//! The MySQL store over TLS (`?ssl-mode=`, `?ssl-ca=`), against a test-kit MariaDB that
//! refuses plain connections and presents a certificate signed by a throwaway CA.
#![cfg(feature = "mysql-tls")]

use locksmith::Locksmith;
use locksmith_testkit::servers::mariadb::{MariaDb, PASSWORD};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssl_modes_against_a_tls_only_server() {
    let (server, ca) = match tokio::task::spawn_blocking(MariaDb::start_tls)
        .await
        .unwrap()
    {
        Ok(s) => s,
        Err(why) => {
            locksmith_testkit::skip_store("mysql (TLS)", &why);
            return;
        }
    };
    let url = server.url();
    let ca = ca.display().to_string();
    // the server refuses plain connections
    let err = Locksmith::connect(&format!("{url}?ssl-mode=disabled&timeout=2s"))
        .await
        .unwrap_err();
    assert!(!err.to_string().contains(PASSWORD), "{err}");
    // encrypted, not verified
    let lm = Locksmith::connect(&format!("{url}?ssl-mode=required"))
        .await
        .unwrap_or_else(|e| panic!("ssl-mode=required: {e}"));
    let g = lm.lock("tls").acquire().await.unwrap();
    g.release().await.unwrap();
    // verified against the CA, and the host name (127.0.0.1 is in the certificate)
    for mode in ["verify-ca", "verify-identity"] {
        let lm = Locksmith::connect(&format!(
            "{url}?ssl-mode={mode}&ssl-ca={ca}&namespace={mode}"
        ))
        .await
        .unwrap_or_else(|e| panic!("ssl-mode={mode}: {e}"));
        let g = lm.lock("tls").acquire().await.unwrap();
        assert!(g.fence() > 0);
        g.release().await.unwrap();
    }
    // verification without the CA fails (the certificate is not from a public CA)
    let err = Locksmith::connect(&format!("{url}?ssl-mode=verify-ca&timeout=2s&namespace=x"))
        .await
        .unwrap_err();
    assert!(!err.to_string().contains(PASSWORD), "{err}");
    // a bad mode is a clear configuration error
    let err = Locksmith::connect(&format!("{url}?ssl-mode=maybe"))
        .await
        .unwrap_err();
    assert!(matches!(err, locksmith::Error::Config { .. }), "{err}");
    assert!(err.to_string().contains("verify-identity"), "{err}");
}
