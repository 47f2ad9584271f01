//! A TCP proxy that a test can cut and restore, to take the database away
//! from one keygate without stopping the shared server, or whose open
//! connections it can silence (half-open: bytes are swallowed, nobody is
//! told), as a middlebox that drops packets without a reset does.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{
        tcp::{OwnedReadHalf, OwnedWriteHalf},
        TcpListener, TcpStream,
    },
    task::AbortHandle,
};

/// One proxied connection: its forwarding task and whether it is silenced.
struct Connection {
    task: AbortHandle,
    silenced: Arc<AtomicBool>,
}

pub struct CuttableProxy {
    pub addr: SocketAddr,
    up: Arc<AtomicBool>,
    connections: Arc<Mutex<Vec<Connection>>>,
    accept: AbortHandle,
}

/// Copies one direction until either side closes; while `silenced`, what
/// is read is dropped.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, silenced: Arc<AtomicBool>) {
    let mut buffer = vec![0; 16 * 1024];
    loop {
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(read) => read,
        };
        if silenced.load(Ordering::SeqCst) {
            continue;
        }
        if to.write_all(&buffer[..read]).await.is_err() {
            return;
        }
    }
}

impl CuttableProxy {
    /// Listens on a loopback port and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> CuttableProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let up = Arc::new(AtomicBool::new(true));
        let connections: Arc<Mutex<Vec<Connection>>> = Arc::default();
        let (accept_up, accept_connections) = (up.clone(), connections.clone());
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if !accept_up.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let silenced = Arc::new(AtomicBool::new(false));
                let pump_silenced = silenced.clone();
                let task = tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(upstream).await {
                        let (client_read, client_write) = client.into_split();
                        let (server_read, server_write) = server.into_split();
                        tokio::select! {
                            () = pump(client_read, server_write, pump_silenced.clone()) => {}
                            () = pump(server_read, client_write, pump_silenced) => {}
                        }
                    }
                });
                accept_connections.lock().unwrap().push(Connection {
                    task: task.abort_handle(),
                    silenced,
                });
            }
        })
        .abort_handle();
        CuttableProxy {
            addr,
            up,
            connections,
            accept,
        }
    }

    /// Drops every open connection and refuses new ones.
    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for connection in self.connections.lock().unwrap().drain(..) {
            connection.task.abort();
        }
    }

    /// Every connection open now goes silent in both directions, without a
    /// FIN or RST; connections opened later work.
    pub fn silence_open_connections(&self) {
        for connection in self.connections.lock().unwrap().iter() {
            connection.silenced.store(true, Ordering::SeqCst);
        }
    }

    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }

    /// A Postgres URL for `database` that goes through this proxy.
    pub fn postgres_url(&self, database_url: &str) -> String {
        let (_, database) = database_url.rsplit_once('/').expect("database in url");
        format!("postgres://postgres@{}/{database}", self.addr)
    }
}

impl Drop for CuttableProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}
