//! TLS on both listeners, and client-certificate verification on KeyAdmin
//! and on the Check listener, with certificates made by the openssl CLI for
//! each test run.

use crate::common;

use std::{path::Path, process::Command};

use common::{Backend, TestDb};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use keygate::proto::{key_admin_client::KeyAdminClient, CreateKeyRequest};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};

/// Runs the openssl CLI in `dir`; panics with its error output if it fails.
pub(crate) fn openssl(dir: &Path, args: &[&str]) {
    let output = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl is installed");
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A CA, a server certificate for localhost / 127.0.0.1 and a client
/// certificate, all signed by the CA.
pub(crate) fn make_certificates(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=keygate test CA",
        ],
    );
    // Extensions make these X.509 v3 certificates, which rustls requires.
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    for name in ["server", "client"] {
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                &format!("/CN={name}"),
            ],
        );
        let mut sign = vec![
            "x509",
            "-req",
            "-in",
            &*format!("{name}.csr"),
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &*format!("{name}.crt"),
            "-days",
            "2",
        ]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
        sign.extend(["-extfile".into(), format!("{name}.ext")]);
        openssl(dir, &sign.iter().map(String::as_str).collect::<Vec<_>>());
    }
}

async fn tls_channel(
    addr: std::net::SocketAddr,
    dir: &Path,
    with_client_cert: bool,
) -> Result<Channel, tonic::transport::Error> {
    let ca = std::fs::read(dir.join("ca.crt")).unwrap();
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("localhost");
    if with_client_cert {
        let cert = std::fs::read(dir.join("client.crt")).unwrap();
        let key = std::fs::read(dir.join("client.key")).unwrap();
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)?
        .connect()
        .await
}

/// A server with TLS on both listeners; `client_ca` gets the test CA's path
/// to require client certificates where the test wants them.
async fn start_tls(
    db: &TestDb,
    certs: &Path,
    client_ca: impl FnOnce(&mut keygate::config::Settings, std::path::PathBuf),
) -> keygate::app::Running {
    let mut settings = common::test_settings(db);
    settings.tls_cert = Some(certs.join("server.crt"));
    settings.tls_key = Some(certs.join("server.key"));
    client_ca(&mut settings, certs.join("ca.crt"));
    keygate::app::start(settings.validate().unwrap())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_listeners_serve_tls_and_keyadmin_requires_a_client_certificate() {
    let certs = tempfile::tempdir().unwrap();
    make_certificates(certs.path());
    let db = TestDb::new(Backend::Sqlite).await;
    let running = start_tls(&db, certs.path(), |s, ca| s.admin_client_ca = Some(ca)).await;

    let authz = tls_channel(running.authz_addr, certs.path(), false)
        .await
        .expect("TLS to the Check listener");
    let health = HealthClient::new(authz)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap();
    assert_eq!(health.into_inner().status, 1);

    let admin = tls_channel(running.admin_addr, certs.path(), true)
        .await
        .expect("mutual TLS to KeyAdmin");
    let created = KeyAdminClient::new(admin)
        .create_key(CreateKeyRequest {
            owner_id: "acme".into(),
            name: "over tls".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(created.into_inner().key.starts_with("sk_live_"));

    // Without a client certificate the handshake (or the first call) fails.
    let refused = match tls_channel(running.admin_addr, certs.path(), false).await {
        Err(_) => true,
        Ok(channel) => KeyAdminClient::new(channel)
            .create_key(CreateKeyRequest {
                owner_id: "acme".into(),
                name: "no cert".into(),
                ..Default::default()
            })
            .await
            .is_err(),
    };
    assert!(refused, "KeyAdmin accepted a client without a certificate");

    // A plaintext client gets nowhere on a TLS listener.
    let plaintext = Channel::from_shared(format!("http://{}", running.authz_addr))
        .unwrap()
        .connect()
        .await;
    let plaintext_works = match plaintext {
        Err(_) => false,
        Ok(channel) => HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .is_ok(),
    };
    assert!(!plaintext_works);
    running.stop().await;
}

/// Whether a Check over `channel` gets an answer (any decision).
async fn check_answers(channel: Result<Channel, tonic::transport::Error>) -> bool {
    let Ok(channel) = channel else { return false };
    let request = common::check_request(
        [("x-api-key".to_string(), "sk_live_nonsense".to_string())].into(),
        "GET",
        "/v1/orders",
        Default::default(),
    );
    AuthorizationClient::new(channel)
        .check(request)
        .await
        .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_check_listener_answers_only_proxies_with_a_client_certificate() {
    let certs = tempfile::tempdir().unwrap();
    make_certificates(certs.path());
    let db = TestDb::new(Backend::Sqlite).await;
    let running = start_tls(&db, certs.path(), |s, ca| s.authz_client_ca = Some(ca)).await;

    let proxy = tls_channel(running.authz_addr, certs.path(), true).await;
    assert!(
        check_answers(proxy).await,
        "a proxy with a certificate gets decisions"
    );
    let stranger = tls_channel(running.authz_addr, certs.path(), false).await;
    assert!(
        !check_answers(stranger).await,
        "a client without a certificate learned whether a key is valid"
    );
    // The admin listener keeps its own setting: no client CA, no client cert needed.
    let admin = tls_channel(running.admin_addr, certs.path(), false)
        .await
        .expect("TLS to KeyAdmin without a client certificate");
    KeyAdminClient::new(admin)
        .create_key(CreateKeyRequest {
            owner_id: "acme".into(),
            name: "over tls".into(),
            ..Default::default()
        })
        .await
        .expect("CreateKey");
    running.stop().await;
}
