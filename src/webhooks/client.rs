//! The HTTP connections deliveries are sent over: hyper's HTTP/1.1 and
//! HTTP/2 connections, set up by hyper-util's connector and kept by
//! endpoint between rounds ([`Connections`]).
//!
//! A round sends each endpoint's deliveries over that endpoint's own
//! connections ([`Lane`]), taken at the round's start and kept again at its
//! end: no lookup per request. hyper-util's pooling `Client`, which this
//! replaced, found a pooled connection for every request by hashing its
//! scheme and authority (SipHash), took a lock, rewrote the URI to origin
//! form and set `Host`, and raced a lazy connect future against the pool's
//! checkout: 8,500 instructions a delivery, 7 % of its cost
//! (BENCHMARKS.md, session 21). reqwest, before it, added its redirect and
//! retry services on top (session 13).
//!
//! What reqwest was set to do is still done here: no redirect is followed
//! (hyper follows none), no proxy is used (the connector knows none, so
//! none from the environment connects on our behalf), every name goes
//! through [`GuardedResolver`], plain http only when the policy allows it,
//! rustls with the webpki roots, HTTP/2 when TLS's ALPN agrees on it, and
//! a deadline on setting up a connection (TCP and the TLS handshake
//! together) besides the dispatcher's per attempt.

use std::{
    collections::HashMap,
    future::Future,
    io,
    path::Path,
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard},
    task::{Context, Poll},
    time::Duration,
};

use anyhow::Context as _;
use bytes::Bytes;
use futures::future::Either;
use http::{header::HOST, HeaderValue, Request, Response, Uri};
use http_body_util::Full;
use hyper::{
    body::Incoming,
    client::conn::{http1, http2, TrySendError},
};
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::connect::{Connection as _, HttpConnector},
    rt::{TokioExecutor, TokioTimer},
};
use tokio::time::Instant;
use tower_service::Service as _;
use uuid::Uuid;

use super::target::{GuardedResolver, TargetPolicy};

/// TCP keep-alive on idle connections (what reqwest, the client before
/// these, set).
const TCP_KEEPALIVE: Duration = Duration::from_secs(15);
/// How long a connection is kept unused before it is closed: hyper-util's
/// pool's default, which the dispatcher used before.
const IDLE_FOR: Duration = Duration::from_secs(90);

type Connector = HttpsConnector<HttpConnector<GuardedResolver>>;
type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Body = Full<Bytes>;

/// An endpoint's URL as its requests are written, prepared once per URL
/// text (the dispatcher's `EndpointCache`).
pub struct Target {
    /// Absolute: what the connector connects to (its scheme, host and
    /// port), and an HTTP/2 request's URI.
    uri: Uri,
    /// The path and query: an HTTP/1.1 request's URI.
    path: Uri,
    /// An HTTP/1.1 request's `Host`: the host, and the port unless it is
    /// the scheme's own (as hyper-util's client set it).
    host: HeaderValue,
}

impl Target {
    /// `uri` must be absolute (`TargetPolicy::check_uri`'s).
    pub fn new(uri: Uri) -> Result<Target, String> {
        let host = uri.host().ok_or("the URL names no host")?;
        let default_port = match uri.scheme_str() {
            Some("https") => Some(443),
            Some("http") => Some(80),
            _ => None,
        };
        let host = match uri.port_u16() {
            Some(port) if Some(port) != default_port => format!("{host}:{port}"),
            _ => host.to_string(),
        };
        let host = HeaderValue::try_from(host).map_err(|e| e.to_string())?;
        let path = uri
            .path_and_query()
            .map_or("/", |path| path.as_str())
            .parse::<Uri>()
            .map_err(|e| e.to_string())?;
        Ok(Target { uri, path, host })
    }

    /// Whether a connection made for `other` serves this target: the same
    /// scheme, host and port.
    fn same_origin(&self, other: &Target) -> bool {
        self.uri.scheme() == other.uri.scheme() && self.uri.authority() == other.uri.authority()
    }
}

/// A connection's sending half: one request at a time over HTTP/1.1, any
/// number at once over HTTP/2.
enum Sender {
    Http1(http1::SendRequest<Body>),
    Http2(http2::SendRequest<Body>),
}

impl Sender {
    fn is_closed(&self) -> bool {
        match self {
            Sender::Http1(sender) => sender.is_closed(),
            Sender::Http2(sender) => sender.is_closed(),
        }
    }

    /// Waits until the connection can take a request: over HTTP/1.1, until
    /// the previous response has been read to its end. Fails if the
    /// connection has closed.
    async fn ready(&mut self) -> hyper::Result<()> {
        match self {
            Sender::Http1(sender) => sender.ready().await,
            Sender::Http2(sender) => sender.ready().await,
        }
    }

    /// Sends `request` in this connection's form; the request comes back in
    /// the error if it was not sent.
    fn send(
        &mut self,
        target: &Target,
        mut request: Request<Body>,
    ) -> impl Future<Output = Result<Response<Incoming>, TrySendError<Request<Body>>>> {
        match self {
            Sender::Http1(sender) => {
                *request.uri_mut() = target.path.clone();
                request.headers_mut().insert(HOST, target.host.clone());
                Either::Left(sender.try_send_request(request))
            }
            Sender::Http2(sender) => {
                *request.uri_mut() = target.uri.clone();
                request.headers_mut().remove(HOST);
                Either::Right(sender.try_send_request(request))
            }
        }
    }
}

/// A connection, the target it was made for, and when a request last
/// went out on it.
struct Open {
    sender: Sender,
    target: Arc<Target>,
    last_used: Instant,
}

impl Open {
    /// Whether the connection is worth keeping: open, and used within
    /// `idle_for` ([`IDLE_FOR`]). A round that needed many connections at
    /// once leaves those later rounds do not need to expire, one by one
    /// (a lane reuses its most recently used connection first).
    fn worth_keeping(&self, idle_for: Duration) -> bool {
        !self.sender.is_closed() && self.last_used.elapsed() < idle_for
    }
}

/// The connections to every endpoint, kept between rounds.
pub struct Connections {
    connector: TimedConnector,
    idle: Mutex<HashMap<Uuid, Vec<Open>>>,
    /// [`IDLE_FOR`]; shorter in tests.
    idle_for: Duration,
}

impl Connections {
    /// Connections for `policy`, trusting the CAs in `ca_file` besides the
    /// webpki roots, each given `connect_within` to be set up.
    pub fn new(
        policy: TargetPolicy,
        ca_file: Option<&Path>,
        connect_within: Duration,
    ) -> anyhow::Result<Connections> {
        Ok(Connections {
            connector: connector(policy, ca_file, connect_within)?,
            idle: Mutex::default(),
            idle_for: IDLE_FOR,
        })
    }

    /// `endpoint`'s connections, for one round: kept again when the lane
    /// is dropped.
    pub fn lane(&self, endpoint: Uuid) -> Lane<'_> {
        let open = self.idle().remove(&endpoint).unwrap_or_default();
        Lane {
            connections: self,
            endpoint,
            open: Mutex::new(open),
        }
    }

    /// Closes the connections unused for [`IDLE_FOR`], and forgets those
    /// the other side closed.
    pub fn sweep(&self) {
        self.idle().retain(|_, idle| {
            idle.retain(|open| open.worth_keeping(self.idle_for));
            !idle.is_empty()
        });
    }

    fn idle(&self) -> MutexGuard<'_, HashMap<Uuid, Vec<Open>>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One endpoint's connections during a round: each attempt takes one (or,
/// over HTTP/2, shares one), or makes one, and gives it back once its
/// answer has come.
pub struct Lane<'a> {
    connections: &'a Connections,
    endpoint: Uuid,
    open: Mutex<Vec<Open>>,
}

impl Lane<'_> {
    /// Sends `request` to `target` and returns its answer's head; the body
    /// is left unread (an unfinished one closes its connection rather than
    /// keeping it). When a kept connection turns out closed before the
    /// request goes out, the request is sent once more, over a new
    /// connection (the other kept ones are likely closed too); a failure
    /// once it is out fails the attempt, as one on a new connection does.
    pub async fn send(
        &self,
        target: &Arc<Target>,
        mut request: Request<Body>,
    ) -> Result<Response<Incoming>, BoxError> {
        let mut may_use_kept = true;
        loop {
            let kept = may_use_kept.then(|| self.take(target)).flatten();
            let (mut sender, is_kept) = match kept {
                Some(sender) => (sender, true),
                // Boxed: setting up a connection (the connector's call,
                // itself boxed, then hyper's HTTP/1.1 or HTTP/2
                // handshake) is a future of 6,624 bytes, most of this one's,
                // which every attempt would carry and move (into the
                // dispatcher's `buffer_unordered`, three copies each) though
                // most attempts reuse a kept connection.
                None => (Box::pin(self.connect(target)).await?, false),
            };
            may_use_kept = false;
            if let Err(closed) = sender.ready().await {
                if is_kept {
                    continue;
                }
                return Err(closed.into());
            }
            match sender.send(target, request).await {
                Ok(response) => {
                    self.give_back(sender, target);
                    return Ok(response);
                }
                Err(mut not_sent) => match not_sent.take_message() {
                    Some(unsent) if is_kept => request = unsent,
                    _ => return Err(not_sent.into_error().into()),
                },
            }
        }
    }

    /// A connection to `target`'s origin: an HTTP/2 one shared, an
    /// HTTP/1.1 one taken. Those made for another origin (the endpoint's
    /// URL changed) or closed are dropped.
    fn take(&self, target: &Arc<Target>) -> Option<Sender> {
        let mut open = self.open();
        loop {
            let last = open.last_mut()?;
            if last.sender.is_closed() || !last.target.same_origin(target) {
                open.pop();
                continue;
            }
            if let Sender::Http2(shared) = &last.sender {
                let shared = shared.clone();
                last.last_used = Instant::now();
                return Some(Sender::Http2(shared));
            }
            return open.pop().map(|open| open.sender);
        }
    }

    fn give_back(&self, sender: Sender, target: &Arc<Target>) {
        // An HTTP/2 connection stays in the lane while it is used.
        if let Sender::Http1(_) = sender {
            self.open().push(Open {
                sender,
                target: target.clone(),
                last_used: Instant::now(),
            });
        }
    }

    /// A new connection to `target`, its task on the dispatcher's runtime.
    async fn connect(&self, target: &Arc<Target>) -> Result<Sender, BoxError> {
        let mut connector = self.connections.connector.clone();
        std::future::poll_fn(|cx| connector.poll_ready(cx)).await?;
        let stream = connector.call(target.uri.clone()).await?;
        if stream.connected().is_negotiated_h2() {
            let (sender, connection) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .handshake(stream)
                .await?;
            tokio::spawn(run(connection));
            self.open().push(Open {
                sender: Sender::Http2(sender.clone()),
                target: target.clone(),
                last_used: Instant::now(),
            });
            Ok(Sender::Http2(sender))
        } else {
            let (sender, connection) = http1::Builder::new().handshake(stream).await?;
            tokio::spawn(run(connection));
            Ok(Sender::Http1(sender))
        }
    }

    fn open(&self) -> MutexGuard<'_, Vec<Open>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The lane's connections are kept for the next round, but for those
/// closed meanwhile or unused for [`IDLE_FOR`], and for all but one HTTP/2
/// connection to an origin: the round's first attempts, sent at once,
/// each made one before any could tell that the endpoint speaks HTTP/2.
impl Drop for Lane<'_> {
    fn drop(&mut self) {
        let open = std::mem::take(self.open.get_mut().unwrap_or_else(|e| e.into_inner()));
        let mut kept: Vec<Open> = Vec::with_capacity(open.len());
        for open in open {
            let shared_already = matches!(open.sender, Sender::Http2(_))
                && kept.iter().any(|other| {
                    matches!(other.sender, Sender::Http2(_))
                        && other.target.same_origin(&open.target)
                });
            if open.worth_keeping(self.connections.idle_for) && !shared_already {
                kept.push(open);
            }
        }
        if !kept.is_empty() {
            self.connections
                .idle()
                .entry(self.endpoint)
                .or_default()
                .extend(kept);
        }
    }
}

/// Drives a connection until it closes; its failures reach the request
/// that was on it.
async fn run(connection: impl Future<Output = hyper::Result<()>>) {
    if let Err(error) = connection.await {
        tracing::debug!(error = %error, "webhook connection closed");
    }
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
/// connect and the TLS handshake. The dispatcher's timeout per attempt
/// covers it too; this one tells a connection not set up in time (nothing
/// listening that answers: the endpoint is down, [`set_up_timed_out`])
/// apart from an answer that did not come, and holds no socket past it
/// whoever waits on it.
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
                Connections::new(TargetPolicy::default(), Some(file), Duration::from_secs(1))
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
        let connections = plain_http_connections();
        let target = target(port);
        let error = connections
            .lane(Uuid::now_v7())
            .send(&target, post())
            .await
            .unwrap_err();
        assert!(chain(&*error).contains("refused"), "{error:?}");
        assert!(!set_up_timed_out(&*error), "{error:?}");
    }

    /// An endpoint's deliveries in one round and the next go over the
    /// connection the first one made, and each request is written as
    /// HTTP/1.1 wants it: origin-form, with the target's `Host`.
    #[tokio::test]
    async fn an_endpoint_s_connection_is_kept_from_round_to_round() {
        let receiver = Receiver::start(true).await;
        let connections = plain_http_connections();
        let target = target(receiver.port);
        let endpoint = Uuid::now_v7();
        for _round in 0..3 {
            let lane = connections.lane(endpoint);
            for _ in 0..2 {
                let response = lane.send(&target, post()).await.unwrap();
                assert_eq!(response.status(), http::StatusCode::NO_CONTENT);
            }
        }
        assert_eq!(receiver.connections(), 1, "one connection for all six");
        let seen = receiver.requests();
        assert_eq!(seen.len(), 6);
        let host = format!("127.0.0.1:{}", receiver.port);
        for (uri, host_header) in &seen {
            assert_eq!(uri, "/hook?x=1");
            assert_eq!(host_header, &host);
        }
        // Another endpoint, even at the same address, has its own.
        let lane = connections.lane(Uuid::now_v7());
        lane.send(&target, post()).await.unwrap();
        assert_eq!(receiver.connections(), 2);
    }

    /// A receiver that closes each connection after its answer: the kept
    /// connection is found closed and another one made, and nothing fails.
    #[tokio::test]
    async fn a_connection_the_receiver_closed_is_replaced() {
        let receiver = Receiver::start(false).await;
        let connections = plain_http_connections();
        let target = target(receiver.port);
        let endpoint = Uuid::now_v7();
        for round in 1..=3 {
            let lane = connections.lane(endpoint);
            let response = lane.send(&target, post()).await.unwrap();
            assert_eq!(response.status(), http::StatusCode::NO_CONTENT);
            drop(response);
            drop(lane);
            // The close reaches the kept connection's task.
            tokio::time::sleep(Duration::from_millis(50)).await;
            assert_eq!(receiver.connections(), round);
        }
        connections.sweep();
        assert!(
            connections.idle().is_empty(),
            "closed connections are forgotten"
        );
    }

    /// Over TLS, when the receiver's ALPN picks h2, the endpoint's
    /// attempts share one HTTP/2 connection, at once, and the next round
    /// uses it again.
    #[tokio::test]
    async fn over_tls_an_endpoint_that_speaks_http2_gets_one_shared_connection() {
        let dir = tempfile::tempdir().unwrap();
        let receiver = Http2Receiver::start(dir.path()).await;
        let policy = TargetPolicy {
            allow_private: true,
            allow_http: false,
        };
        let ca = dir.path().join("ca.crt");
        let connections = Connections::new(policy, Some(&ca), Duration::from_secs(10)).unwrap();
        let uri = format!("https://127.0.0.1:{}/hook", receiver.port)
            .parse()
            .unwrap();
        let target = Arc::new(Target::new(uri).unwrap());
        let endpoint = Uuid::now_v7();
        connections
            .lane(endpoint)
            .send(&target, post())
            .await
            .unwrap();
        four_at_once(connections.lane(endpoint), &target).await;
        four_at_once(connections.lane(endpoint), &target).await;
        assert_eq!(receiver.connections(), 1, "nine requests, one connection");
        // A first round sent at once cannot know the protocol: each of its
        // attempts connects, and one connection is kept for the next.
        let other = Uuid::now_v7();
        four_at_once(connections.lane(other), &target).await;
        let made = receiver.connections() - 1;
        assert!((1..=4).contains(&made), "{made}");
        assert_eq!(connections.idle()[&other].len(), 1);
        four_at_once(connections.lane(other), &target).await;
        assert_eq!(receiver.connections() - 1, made, "the next round made none");
    }

    /// Four requests sent at once over `lane`, each answered over HTTP/2.
    async fn four_at_once(lane: Lane<'_>, target: &Arc<Target>) {
        let answers = futures::future::join_all((0..4).map(|_| lane.send(target, post()))).await;
        for answer in answers {
            let answer = answer.unwrap();
            assert_eq!(answer.status(), http::StatusCode::NO_CONTENT);
            assert_eq!(answer.version(), http::Version::HTTP_2);
        }
    }

    /// A round that needed two connections at once, then rounds that need
    /// one: the one they do not use is closed once unused for the idle
    /// time, the one they use is kept.
    #[tokio::test]
    async fn a_connection_no_round_uses_is_closed_after_the_idle_time() {
        let receiver = Receiver::start(true).await;
        let mut connections = plain_http_connections();
        connections.idle_for = Duration::from_millis(400);
        let target = target(receiver.port);
        let endpoint = Uuid::now_v7();
        {
            let lane = connections.lane(endpoint);
            let (first, second) =
                tokio::join!(lane.send(&target, post()), lane.send(&target, post()));
            first.unwrap();
            second.unwrap();
        }
        assert_eq!(receiver.connections(), 2);
        for _round in 0..8 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            connections
                .lane(endpoint)
                .send(&target, post())
                .await
                .unwrap();
            connections.sweep();
        }
        assert_eq!(receiver.connections(), 2, "the used one was kept");
        assert_eq!(connections.idle()[&endpoint].len(), 1);
    }

    fn plain_http_connections() -> Connections {
        let policy = TargetPolicy {
            allow_private: true,
            allow_http: true,
        };
        Connections::new(policy, None, Duration::from_secs(10)).unwrap()
    }

    fn target(port: u16) -> Arc<Target> {
        let uri = format!("http://127.0.0.1:{port}/hook?x=1").parse().unwrap();
        Arc::new(Target::new(uri).unwrap())
    }

    fn post() -> Request<Body> {
        let mut request = Request::new(Full::new(Bytes::from_static(b"{}")));
        *request.method_mut() = http::Method::POST;
        request
    }

    fn chain(error: &(dyn std::error::Error + 'static)) -> String {
        crate::grpc::status::chain(error)
    }

    /// An HTTPS receiver on a loopback port that offers only h2 by ALPN
    /// and answers 204; its CA is `ca.crt` in the directory given, made by
    /// the openssl CLI.
    struct Http2Receiver {
        port: u16,
        connections: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl Http2Receiver {
        async fn start(dir: &Path) -> Http2Receiver {
            use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
            let openssl = |args: &str| {
                let status = std::process::Command::new("openssl")
                    .args(args.split(' '))
                    .current_dir(dir)
                    .stderr(std::process::Stdio::null())
                    .status()
                    .expect("the openssl CLI");
                assert!(status.success(), "openssl {args}");
            };
            openssl(
                "req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 2 -subj /CN=ca",
            );
            std::fs::write(dir.join("server.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
            openssl(
                "req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj /CN=server",
            );
            openssl("x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out server.crt -days 2 -extfile server.ext");
            let chain = CertificateDer::pem_file_iter(dir.join("server.crt"))
                .unwrap()
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let key = PrivateKeyDer::from_pem_file(dir.join("server.key")).unwrap();
            let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
            tls.alpn_protocols = vec![b"h2".to_vec()];
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = listener.local_addr().unwrap().port();
            let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let counted = connections.clone();
            tokio::spawn(async move {
                loop {
                    let (stream, _) = listener.accept().await.unwrap();
                    counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let acceptor = acceptor.clone();
                    tokio::spawn(async move {
                        let stream = acceptor.accept(stream).await.unwrap();
                        let service = hyper::service::service_fn(|_: Request<Incoming>| async {
                            let mut answer = Response::new(Full::new(Bytes::new()));
                            *answer.status_mut() = http::StatusCode::NO_CONTENT;
                            Ok::<_, std::convert::Infallible>(answer)
                        });
                        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                            .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                            .await;
                    });
                }
            });
            Http2Receiver { port, connections }
        }

        fn connections(&self) -> usize {
            self.connections.load(std::sync::atomic::Ordering::SeqCst)
        }
    }

    /// An HTTP/1.1 receiver on a loopback port that answers 204 and keeps
    /// each connection open (`keep_alive`) or closes it after the answer;
    /// it counts connections and records each request's URI and `Host`.
    struct Receiver {
        port: u16,
        connections: Arc<std::sync::atomic::AtomicUsize>,
        requests: Arc<Mutex<Vec<(String, String)>>>,
    }

    impl Receiver {
        async fn start(keep_alive: bool) -> Receiver {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = listener.local_addr().unwrap().port();
            let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let requests = Arc::new(Mutex::new(Vec::new()));
            let (counted, recorded) = (connections.clone(), requests.clone());
            tokio::spawn(async move {
                loop {
                    let (stream, _) = listener.accept().await.unwrap();
                    counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let recorded = recorded.clone();
                    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                        let host = request.headers()[HOST].to_str().unwrap().to_string();
                        recorded
                            .lock()
                            .unwrap()
                            .push((request.uri().to_string(), host));
                        let mut answer = Response::new(Full::new(Bytes::new()));
                        *answer.status_mut() = http::StatusCode::NO_CONTENT;
                        async move { Ok::<_, std::convert::Infallible>(answer) }
                    });
                    tokio::spawn(
                        hyper::server::conn::http1::Builder::new()
                            .keep_alive(keep_alive)
                            .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
                    );
                }
            });
            Receiver {
                port,
                connections,
                requests,
            }
        }

        fn connections(&self) -> usize {
            self.connections.load(std::sync::atomic::Ordering::SeqCst)
        }

        fn requests(&self) -> Vec<(String, String)> {
            self.requests.lock().unwrap().clone()
        }
    }
}
