//! TLS to PostgreSQL: a real server that accepts TCP connections only with TLS (and a client
//! certificate for one role); the store opens every one of its connections (the pool, the
//! notification listener, a lock's) encrypted, verifies the server as `sslmode` says, and refuses
//! what does not verify with a message that says why.

mod common;

use std::time::Duration;

use common::{key, next_event, postgres};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use serde_json::json;
use strait_store::{PgOptions, PgStore, Precondition, Store};

/// A CA and what it signed, as PEM.
struct Pki {
    ca_pem: String,
    ca: rcgen::Certificate,
    ca_key: KeyPair,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let ca_key = KeyPair::generate().unwrap();
        let ca = params.self_signed(&ca_key).unwrap();
        Pki { ca_pem: ca.pem(), ca, ca_key }
    }

    /// A leaf for `names` (DNS names or IP addresses) with common name `cn`: (cert, key).
    fn issue(&self, cn: &str, names: &[&str]) -> (String, String) {
        let mut params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_connection_is_encrypted_and_the_server_verified_as_sslmode_says() {
    if !postgres::available() {
        return;
    }
    let pki = Pki::new("database CA");
    let (cert_pem, key_pem) = pki.issue("db", &["127.0.0.1"]);
    let server = postgres::start_tls(&postgres::Tls { cert_pem, key_pem, client_ca_pem: pki.ca_pem.clone() }).expect("a server");
    let files = tempfile::tempdir().unwrap();
    let file = |name: &str, text: &str| {
        let path = files.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let ca = file("ca.pem", &pki.ca_pem);
    let other_ca = file("other-ca.pem", &Pki::new("another CA").ca_pem);
    let port = server.port();
    let tcp = |host: &str, user: &str, params: &str| format!("postgres://{user}@{host}:{port}/postgres?{params}");

    // verify-full against the name in the server's certificate: every connection encrypted.
    let url = tcp("127.0.0.1", "strait", &format!("sslmode=verify-full&sslrootcert={ca}&application_name=tls-test"));
    let store = PgStore::open(&url, PgOptions::default()).await.expect("verify-full");
    let mut watch = store.watch(0).await.unwrap();
    store.put(key("Mesh", "", "one"), json!(1), Precondition::None).await.unwrap();
    assert_eq!(next_event(&mut watch).await.object.key.name, "one", "the watch works over TLS");
    let lease = store.try_lock("compaction").await.unwrap().expect("the lock");
    let (admin, connection) = tokio_postgres::connect(&server.url(), tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    let rows = admin
        .query(
            "SELECT a.application_name, s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
             WHERE a.backend_type = 'client backend' AND a.pid <> pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    let connections: Vec<(String, bool)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert!(connections.len() >= 3, "the pool, the listener and the lock: {connections:?}");
    assert!(connections.iter().all(|(_, ssl)| *ssl), "every connection of the store is encrypted: {connections:?}");
    drop((lease, watch, store));

    // A server this CA did not sign is refused, whatever the mode that verifies.
    for mode in ["verify-full", "verify-ca", "require"] {
        let url = tcp("127.0.0.1", "strait", &format!("sslmode={mode}&sslrootcert={other_ca}"));
        let refused = PgStore::open(&url, PgOptions::default()).await.err().unwrap_or_else(|| panic!("{mode} with another CA opened"));
        let message = refused.to_string();
        assert!(message.contains("certificate") && message.contains("127.0.0.1"), "{mode}: {message}");
    }
    // A name the certificate does not carry: refused by verify-full, accepted by verify-ca.
    let refused = PgStore::open(&tcp("localhost", "strait", &format!("sslmode=verify-full&sslrootcert={ca}")), PgOptions::default())
        .await
        .err()
        .expect("verify-full checks the name");
    assert!(refused.to_string().contains("certificate"), "{refused}");
    PgStore::open(&tcp("localhost", "strait", &format!("sslmode=verify-ca&sslrootcert={ca}")), PgOptions::default())
        .await
        .expect("verify-ca checks the chain only");
    // require: encrypted without verification, as libpq; disable: the server refuses plain TCP.
    PgStore::open(&tcp("localhost", "strait", "sslmode=require"), PgOptions::default()).await.expect("require");
    let refused =
        PgStore::open(&tcp("127.0.0.1", "strait", "sslmode=disable"), PgOptions::default()).await.err().expect("plain TCP is rejected");
    assert!(refused.to_string().contains("no encryption"), "the server's reason is kept: {refused}");

    // A client certificate for `cert` authentication.
    admin.batch_execute("CREATE ROLE certuser LOGIN SUPERUSER").await.unwrap();
    let (client_cert, client_key) = pki.issue("certuser", &["certuser"]);
    let (cert, key_file) = (file("client.pem", &client_cert), file("client.key", &client_key));
    let with_cert = format!("sslmode=verify-full&sslrootcert={ca}&sslcert={cert}&sslkey={key_file}");
    let store =
        tokio::time::timeout(Duration::from_secs(30), PgStore::open(&tcp("127.0.0.1", "certuser", &with_cert), PgOptions::default()))
            .await
            .unwrap()
            .expect("a client certificate logs certuser in");
    assert!(store.get(&key("Mesh", "", "one")).await.unwrap().is_some());
    let refused = PgStore::open(&tcp("127.0.0.1", "certuser", &format!("sslmode=verify-full&sslrootcert={ca}")), PgOptions::default())
        .await
        .err()
        .expect("certuser without a certificate");
    assert!(refused.to_string().contains("certuser"), "{refused}");
}
