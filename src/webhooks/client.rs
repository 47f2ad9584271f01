//! The HTTP client deliveries are sent with: hyper-util's pooling client,
//! without reqwest's layers above it (its redirect and retry services, and
//! the two URL parses per request they brought, were a sixth of a
//! delivery's instructions; BENCHMARKS.md, session 13). What reqwest was
//! set to do is done here: no redirect is followed (hyper follows none), no
//! proxy is used (hyper-util's connector knows none, so none from the
//! environment connects on our behalf), every name goes through
//! [`GuardedResolver`], plain http only when the policy allows it, rustls
//! with the webpki roots, and a deadline on setting up a connection (TCP
//! and the TLS handshake together) besides the dispatcher's per attempt.

use std::{
    future::Future,
    io,
    path::Path,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use anyhow::Context as _;
use bytes::Bytes;
use http::Uri;
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::{TokioExecutor, TokioTimer},
};

use super::target::{GuardedResolver, TargetPolicy};

/// TCP keep-alive on idle pooled connections (what reqwest, the client
/// before this one, set).
const TCP_KEEPALIVE: Duration = Duration::from_secs(15);

pub type HttpClient = Client<TimedConnector, Full<Bytes>>;

type Connector = HttpsConnector<HttpConnector<GuardedResolver>>;
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The client for `policy`, trusting the CAs in `ca_file` besides the
/// webpki roots, a connection given `connect_within` to be set up.
pub fn http_client(
    policy: TargetPolicy,
    ca_file: Option<&Path>,
    connect_within: Duration,
) -> anyhow::Result<HttpClient> {
    Ok(Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .build(connector(policy, ca_file, connect_within)?))
}

fn connector(
    policy: TargetPolicy,
    ca_file: Option<&Path>,
    connect_within: Duration,
) -> anyhow::Result<TimedConnector> {
    let mut http = HttpConnector::new_with_resolver(GuardedResolver { policy });
    // The TLS connector decides which schemes are allowed.
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_keepalive(Some(TCP_KEEPALIVE));
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(file) = ca_file {
        add_private_roots(&mut roots, file)?;
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let https = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls);
    let https = if policy.allow_http {
        https.https_or_http()
    } else {
        https.https_only()
    };
    Ok(TimedConnector {
        inner: https.enable_http1().enable_http2().wrap_connector(http),
        within: connect_within,
    })
}

/// Adds every certificate of the PEM file `file` (KEYGATE_WEBHOOK_CA_FILE)
/// as a trust anchor. A file that cannot be read, holds no certificate or
/// one that does not parse stops the start: deliveries to the endpoints it
/// was meant for would all fail. What a certificate may sign (its basic
/// constraints, its validity) is judged at each handshake, not here.
fn add_private_roots(roots: &mut rustls::RootCertStore, file: &Path) -> anyhow::Result<()> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let shown = file.display();
    let certificates = CertificateDer::pem_file_iter(file)
        .and_then(|certificates| certificates.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("cannot read KEYGATE_WEBHOOK_CA_FILE {shown}"))?;
    if certificates.is_empty() {
        anyhow::bail!("KEYGATE_WEBHOOK_CA_FILE {shown} holds no PEM certificate");
    }
    for certificate in certificates {
        roots.add(certificate).with_context(|| {
            format!("KEYGATE_WEBHOOK_CA_FILE {shown} holds a certificate that cannot be a root")
        })?;
    }
    Ok(())
}

/// The connector with one deadline over setting up a connection: the TCP
/// connect and the TLS handshake. The dispatcher's timeout per attempt is
/// not enough: when a pooled connection comes free while a new one is
/// being set up, hyper-util finishes the new one in the background, where
/// no attempt waits on it; a target that accepts and never answers the
/// handshake would hold a task and a socket there for good.
#[derive(Clone)]
pub struct TimedConnector {
    inner: Connector,
    within: Duration,
}

impl tower_service::Service<Uri> for TimedConnector {
    type Response = <Connector as tower_service::Service<Uri>>::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.inner.call(uri);
        let within = self.within;
        Box::pin(async move {
            match tokio::time::timeout(within, connecting).await {
                Ok(connected) => connected,
                Err(_) => Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "connection set-up timed out",
                )
                .into()),
            }
        })
    }
}

/// Whether a client error is a deadline: an `io::Error` of kind
/// `TimedOut` anywhere in its chain, which in practice is
/// [`TimedConnector`]'s (the connection not set up in time; the kernel's
/// own connect timeout comes long after any attempt's), rather than a
/// failure that came fast (refused, a name that resolves to nothing
/// allowed, a bad certificate).
pub fn set_up_timed_out(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(error);
    while let Some(error) = source {
        if error
            .downcast_ref::<io::Error>()
            .is_some_and(|e| e.kind() == io::ErrorKind::TimedOut)
        {
            return true;
        }
        source = error.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;
    use tower_service::Service;

    use super::*;

    #[test]
    fn a_ca_file_that_cannot_be_used_stops_the_client_with_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let not_der = dir.path().join("garbled.pem");
        std::fs::write(
            &not_der,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        for (file, says) in [
            (&missing, "cannot read KEYGATE_WEBHOOK_CA_FILE"),
            (&empty, "holds no PEM certificate"),
            (&not_der, "cannot be a root"),
        ] {
            let Err(error) =
                http_client(TargetPolicy::default(), Some(file), Duration::from_secs(1))
            else {
                panic!("{} was taken", file.display());
            };
            let message = format!("{error:#}");
            assert!(message.contains(says), "{message}");
            assert!(message.contains(&file.display().to_string()), "{message}");
        }
    }

    /// A target that accepts and never answers the TLS handshake: the
    /// connection attempt ends at the deadline, and the socket is closed.
    #[tokio::test]
    async fn a_handshake_never_answered_ends_at_the_deadline_and_closes_its_socket() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let policy = TargetPolicy {
            allow_private: true,
            allow_http: false,
        };
        let mut connector = connector(policy, None, Duration::from_millis(300)).unwrap();
        let uri: Uri = format!("https://127.0.0.1:{port}/hook").parse().unwrap();
        let connecting = tokio::spawn(async move { connector.call(uri).await });
        let (mut accepted, _) = listener.accept().await.unwrap();
        let outcome = tokio::time::timeout(Duration::from_secs(10), connecting)
            .await
            .expect("the attempt ends at its deadline, not later")
            .unwrap();
        let Err(error) = outcome else {
            panic!("a connection without a handshake");
        };
        assert!(error.to_string().contains("timed out"), "{error}");
        assert!(set_up_timed_out(&*error), "the deadline is told apart");
        // The client's ClientHello, then the end of the stream: the socket
        // was dropped with the attempt.
        let mut read = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), accepted.read_to_end(&mut read))
            .await
            .expect("the client closed its socket")
            .unwrap();
        assert_eq!(read.first(), Some(&0x16), "a TLS handshake record was sent");
    }

    /// A refused connection fails fast: not the deadline.
    #[tokio::test]
    async fn a_refused_connection_is_not_taken_for_the_deadline() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let policy = TargetPolicy {
            allow_private: true,
            allow_http: true,
        };
        let client = http_client(policy, None, Duration::from_secs(10)).unwrap();
        let request = http::Request::post(format!("http://127.0.0.1:{port}/hook"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let error = client.request(request).await.unwrap_err();
        assert!(error.is_connect(), "{error}");
        assert!(!set_up_timed_out(&error), "{error:?}");
    }
}
