//! The forward-auth listener: HTTP/1.1 (keep-alive) and h2c on one port,
//! connections accepted like the gRPC listeners' (`grpc::accept`).
//!
//! Every connection task is watched by a [`GracefulShutdown`]: on stop the
//! listener stops accepting, each connection finishes its in-flight request
//! and closes, and `serve` returns when the last one has; the caller bounds
//! that wait with the grace period.

use std::{convert::Infallible, future::Future, net::SocketAddr, sync::Arc, time::Duration};

use futures::StreamExt;
use hyper::{body::Incoming, service::service_fn, Request};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto::Builder, graceful::GracefulShutdown},
};
use tokio::net::TcpListener;
use tonic::transport::server::Connected;

use super::ForwardAuth;
use crate::grpc::accept::incoming;

/// A client that has not finished sending its request head by then is
/// dropped: slow-header clients cannot hold connections open.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Request head bytes buffered at most (HTTP/1.1); beyond it, 431.
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Serves until `shutdown` resolves, then drains the open connections.
pub async fn serve(
    listener: TcpListener,
    service: Arc<ForwardAuth>,
    shutdown: impl Future<Output = ()>,
) {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEAD_BYTES);
    builder.http2().max_header_list_size(MAX_HEAD_BYTES as u32);
    let graceful = GracefulShutdown::new();
    let mut accepted = Box::pin(incoming(listener));
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            () = &mut shutdown => break,
            next = accepted.next() => match next {
                Some(Ok(stream)) => stream,
                Some(Err(error)) => {
                    tracing::warn!(%error, "forward-auth: accept failed");
                    continue;
                }
                None => break,
            },
        };
        // The peer's address, formatted once per connection rather than
        // once per request.
        let peer: Arc<str> = stream
            .connect_info()
            .remote_addr
            .map_or_else(String::new, |addr: SocketAddr| addr.ip().to_string())
            .into();
        let service = service.clone();
        let handler = service_fn(move |request: Request<Incoming>| {
            let service = service.clone();
            let peer = peer.clone();
            // Boxed: hyper spawns a task per HTTP/2 stream holding this
            // future, and the decision's future is kilobytes that would be
            // copied into every task; a box is one small allocation instead.
            Box::pin(async move { Ok::<_, Infallible>(service.answer(&request, &peer).await) })
        });
        let connection = builder
            .serve_connection(TokioIo::new(stream), handler)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(error = %error, "forward-auth: connection ended with an error");
            }
        });
    }
    drop(accepted);
    graceful.shutdown().await;
}
