//! The forward-auth baseline: an HTTP server that answers every request
//! with an empty 200 without looking at it, on the same stack as keygate's
//! forward-auth listener (hyper-util's HTTP/1.1 + h2c builder over the same
//! accepted connections). Whatever keygate costs above it is its own work.

use std::{convert::Infallible, net::SocketAddr};

use anyhow::Context;
use bytes::Bytes;
use futures::StreamExt;
use http_body_util::Full;
use hyper::{service::service_fn, Response};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto::Builder,
};
use keygate::grpc::accept::incoming;
use tokio::net::TcpListener;

/// Serves until the process is killed.
pub async fn serve(listen: SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot bind {listen}"))?;
    println!("listening on {}", listener.local_addr()?);
    let builder = Builder::new(TokioExecutor::new());
    let mut accepted = Box::pin(incoming(listener));
    while let Some(stream) = accepted.next().await {
        let Ok(stream) = stream else { continue };
        let connection = builder
            .serve_connection(
                TokioIo::new(stream),
                service_fn(|_request| async {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
                }),
            )
            .into_owned();
        tokio::spawn(connection);
    }
    Ok(())
}
