//! How both gRPC listeners accept connections: `TCP_NODELAY`, TCP
//! keep-alive, and small responses sharing one write.
//!
//! ## Dead peers found by the kernel, not by HTTP/2 PINGs
//!
//! hyper's HTTP/2 PING keep-alive takes a mutex and reads the clock on every
//! frame it receives, three or so per Check. The kernel does the same job at
//! no cost per request: TCP keep-alive probes an idle connection after 30 s,
//! every 10 s, and drops it after 3 unanswered probes; `TCP_USER_TIMEOUT`
//! drops a connection whose sent data has gone unacknowledged for 60 s
//! (keep-alive only probes idle sockets; without it, a peer that vanished
//! mid-response would hold the connection until retransmissions give up,
//! about 15 minutes). Envoy's own `connection_keepalive` PINGs cover the
//! other direction (see `examples/envoy/envoy.yaml`).
//!
//! ## Coalesced writes
//!
//! h2 copies a DATA frame into its write buffer only when the payload is
//! shorter than a threshold: 256 bytes when the socket says it supports
//! vectored writes, 1,024 when it does not. A longer frame is kept aside and
//! the buffer accepts nothing more until it has been written, so every such
//! response costs at least one `writev` of its own. An allowed Check
//! response (identity headers, rate-limit headers, dynamic metadata) is
//! a few hundred bytes: with a vectored TCP socket, each one was a system
//! call, which on loopback cost more than keygate's whole decision.
//!
//! [`CoalescedWrites`] reports the socket as not vectored, so responses up
//! to 1 KiB (a typical allowed Check response is 400–700 bytes) are copied
//! and many go out in one `write`. Frames above 1 KiB are still written
//! without copying, in two writes (head, then payload).
//!
//! Under TLS, tonic wraps this stream in a rustls stream, which reports
//! vectored writes itself: h2 then chains frames over 256 bytes as before,
//! and rustls hands its queued records to [`CoalescedWrites`] with
//! `poll_write_vectored`, which is forwarded as a real `writev`.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use futures::{Stream, TryStreamExt};
use socket2::SockRef;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
};
use tonic::transport::server::{Connected, TcpConnectInfo, TcpIncoming};

/// A TCP connection that tells h2 to copy small frames into its buffer.
#[derive(Debug)]
pub struct CoalescedWrites(TcpStream);

const KEEPALIVE_IDLE: Duration = Duration::from_secs(30);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_PROBES: u32 = 3;
const UNACKNOWLEDGED_TIMEOUT: Duration = Duration::from_secs(60);

/// Accepts connections on `listener` with `TCP_NODELAY`, TCP keep-alive and
/// `TCP_USER_TIMEOUT`, each wrapped in [`CoalescedWrites`].
pub fn incoming(listener: TcpListener) -> impl Stream<Item = io::Result<CoalescedWrites>> {
    TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(KEEPALIVE_IDLE))
        .with_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .with_keepalive_retries(Some(KEEPALIVE_PROBES))
        .map_ok(|stream| {
            if let Err(error) =
                SockRef::from(&stream).set_tcp_user_timeout(Some(UNACKNOWLEDGED_TIMEOUT))
            {
                // The connection still works; only a vanished peer lingers.
                tracing::warn!(%error, "cannot set TCP_USER_TIMEOUT on an accepted connection");
            }
            CoalescedWrites(stream)
        })
}

impl Connected for CoalescedWrites {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.0.connect_info()
    }
}

impl AsyncRead for CoalescedWrites {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for CoalescedWrites {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    /// Only for callers that gather regardless of `is_write_vectored`
    /// (rustls under TLS); h2 on a plain connection never calls it.
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    /// The point of this type: see the module documentation.
    fn is_write_vectored(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn accepted_connections_are_tuned_and_keep_their_peer_address() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut accepted = Box::pin(incoming(listener));
        let mut client = TcpStream::connect(addr).await.unwrap();
        let mut server = accepted.next().await.unwrap().unwrap();

        // Not vectored: h2 then copies small responses into one write.
        assert!(!server.is_write_vectored());
        assert!(server.0.nodelay().unwrap());
        let socket = SockRef::from(&server.0);
        assert!(socket.keepalive().unwrap());
        assert_eq!(socket.tcp_keepalive_time().unwrap(), KEEPALIVE_IDLE);
        assert_eq!(socket.tcp_keepalive_interval().unwrap(), KEEPALIVE_INTERVAL);
        assert_eq!(socket.tcp_keepalive_retries().unwrap(), KEEPALIVE_PROBES);
        assert_eq!(
            socket.tcp_user_timeout().unwrap(),
            Some(UNACKNOWLEDGED_TIMEOUT)
        );
        let info = server.connect_info();
        assert_eq!(info.remote_addr, Some(client.local_addr().unwrap()));
        assert_eq!(info.local_addr, Some(addr));

        // Bytes pass both ways unchanged, gathered writes included.
        let parts = [io::IoSlice::new(b"po"), io::IoSlice::new(b"ng")];
        let written = server.write_vectored(&parts).await.unwrap();
        server.write_all(&b"pong"[written..]).await.unwrap();
        client.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        server.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        client.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"pong");
    }
}
