//! The forward-auth baseline: an HTTP server that answers every request
//! with an empty 200 without looking at it, on the same stack as keygate's
//! forward-auth listener (hyper-util's HTTP/1.1 + h2c builder over the same
//! accepted connections). Whatever keygate costs above it is its own work.
//!
//! With identity headers, it answers as keygate allows a cache hit: the five
//! `x-keygate-*` identity headers and `x-envoy-auth-headers-to-remove`,
//! their values made once and cloned into each answer's map as keygate's
//! renderer does (`forward_auth/render.rs`). That is the least any
//! forward-auth server giving keygate's answer pays on this stack, before
//! reading the request or deciding anything.

use std::{convert::Infallible, net::SocketAddr, sync::Arc};

use anyhow::Context;
use bytes::Bytes;
use futures::StreamExt;
use http_body_util::Full;
use hyper::{
    header::{HeaderName, HeaderValue},
    service::service_fn,
    HeaderMap, Response,
};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto::Builder,
};
use keygate::{
    answer::{HEADERS_TO_REMOVE, IDENTITY_HEADERS},
    grpc::accept::incoming,
};
use tokio::net::TcpListener;

/// What keygate's answer to the bench's key carries (`bench-forward-auth-h2load.sh`
/// creates it with owner `bench` and ability `read:orders`), with values of
/// the same lengths.
fn identity_headers() -> Vec<(HeaderName, HeaderValue)> {
    let values = [
        "0b9a6e4c-3f1d-4c2a-9a57-1f4e2d3c5b6a",
        "bench",
        "live",
        "sk_live_4fQz9Rkt",
        "read:orders",
    ];
    IDENTITY_HEADERS
        .iter()
        .zip(values)
        .chain([(&HEADERS_TO_REMOVE, "authorization")])
        .map(|(name, value)| {
            (
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            )
        })
        .collect()
}

/// Serves until the process is killed.
pub async fn serve(listen: SocketAddr, with_identity_headers: bool) -> anyhow::Result<()> {
    let answer: Arc<[(HeaderName, HeaderValue)]> = match with_identity_headers {
        true => identity_headers().into(),
        false => Arc::new([]),
    };
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot bind {listen}"))?;
    println!("listening on {}", listener.local_addr()?);
    let builder = Builder::new(TokioExecutor::new());
    let mut accepted = Box::pin(incoming(listener));
    while let Some(stream) = accepted.next().await {
        let Ok(stream) = stream else { continue };
        let answer = Arc::clone(&answer);
        let connection = builder
            .serve_connection(
                TokioIo::new(stream),
                service_fn(move |_request| {
                    let mut response = Response::new(Full::new(Bytes::new()));
                    if !answer.is_empty() {
                        let mut headers = HeaderMap::with_capacity(16);
                        for (name, value) in answer.iter() {
                            headers.insert(name.clone(), value.clone());
                        }
                        *response.headers_mut() = headers;
                    }
                    async { Ok::<_, Infallible>(response) }
                }),
            )
            .into_owned();
        tokio::spawn(connection);
    }
    Ok(())
}
