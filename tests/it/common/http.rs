//! A real HTTP client for the forward-auth listener: HTTP/1.1 with
//! keep-alive or h2c, one connection per client, raw header bytes allowed.

use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

enum Sender {
    Http1(http1::SendRequest<Empty<Bytes>>),
    Http2(http2::SendRequest<Empty<Bytes>>),
}

pub struct ForwardAuthClient {
    sender: Sender,
}

/// A forward-auth answer.
#[derive(Debug)]
pub struct HttpAnswer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl HttpAnswer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .map(|v| v.to_str().expect("ASCII header"))
    }

    /// `error.code` of a JSON error body.
    pub fn code(&self) -> String {
        let body: serde_json::Value = serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"));
        body["error"]["code"]
            .as_str()
            .expect("error.code")
            .to_owned()
    }
}

impl ForwardAuthClient {
    pub async fn http1(addr: SocketAddr) -> Self {
        let io = TokioIo::new(TcpStream::connect(addr).await.expect("connect"));
        let (sender, connection) = http1::handshake(io).await.expect("HTTP/1.1 handshake");
        tokio::spawn(connection);
        Self {
            sender: Sender::Http1(sender),
        }
    }

    pub async fn h2c(addr: SocketAddr) -> Self {
        let io = TokioIo::new(TcpStream::connect(addr).await.expect("connect"));
        let (sender, connection) = http2::handshake(TokioExecutor::new(), io)
            .await
            .expect("h2c handshake");
        tokio::spawn(connection);
        Self {
            sender: Sender::Http2(sender),
        }
    }

    /// Sends `method path` with `headers` (values as raw bytes).
    pub async fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &[u8])],
    ) -> HttpAnswer {
        let mut request = Request::builder().method(method).uri(path);
        if let Sender::Http2(_) = self.sender {
            request = request.uri(format!("http://keygate{path}"));
        }
        for (name, value) in headers {
            request = request.header(*name, HeaderValue::from_bytes(value).expect("header value"));
        }
        let request = request.body(Empty::new()).expect("request");
        // Kept alive: the connection takes the next request once it has
        // finished the previous one.
        let response = match &mut self.sender {
            Sender::Http1(sender) => {
                sender.ready().await.expect("connection ready");
                sender.send_request(request).await
            }
            Sender::Http2(sender) => {
                sender.ready().await.expect("connection ready");
                sender.send_request(request).await
            }
        }
        .expect("a response");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        HttpAnswer {
            status,
            headers,
            body,
        }
    }
}

/// One request on a fresh HTTP/1.1 connection.
pub async fn forward_auth(addr: SocketAddr, path: &str, headers: &[(&str, &[u8])]) -> HttpAnswer {
    ForwardAuthClient::http1(addr)
        .await
        .send("GET", path, headers)
        .await
}
