//! The baseline: an ext_authz server that allows everything without looking
//! at the request, on the same tonic stack as keygate. Whatever keygate costs
//! above it is keygate's own work.
//!
//! It runs as a child process (`keygate-bench noop-server`), optionally
//! pinned with `taskset`, so that it is measured exactly like a keygate
//! server: its own process, its own core, its own CPU counters.

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    process::{Child, Command, Stdio},
};

use anyhow::{bail, Context};
use envoy_types::{
    ext_authz::v3::pb::{
        Authorization, AuthorizationServer, CheckRequest, CheckResponse, HttpResponse,
        OkHttpResponse,
    },
    pb::google::rpc,
};
use tokio::net::TcpListener;
use tonic::{
    transport::{server::TcpIncoming, Server},
    Request, Response, Status,
};

/// Printed first on stdout by `noop-server`, followed by the bound address.
const READY_PREFIX: &str = "listening on ";

struct NoopAuthz;

#[tonic::async_trait]
impl Authorization for NoopAuthz {
    async fn check(
        &self,
        _request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        Ok(Response::new(CheckResponse {
            status: Some(rpc::Status::default()),
            http_response: Some(HttpResponse::OkResponse(OkHttpResponse::default())),
            dynamic_metadata: None,
        }))
    }
}

/// Serves until the process is killed. With `keygate_transport`, accepts
/// connections as keygate's Check listener does (`grpc::accept`: writes
/// coalesced, TCP keep-alive), so that a comparison isolates keygate's own
/// work from its transport tuning.
pub async fn serve(listen: SocketAddr, keygate_transport: bool) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot bind {listen}"))?;
    println!("{READY_PREFIX}{}", listener.local_addr()?);
    let router = Server::builder().add_service(AuthorizationServer::new(NoopAuthz));
    match keygate_transport {
        true => {
            router
                .serve_with_incoming(keygate::grpc::accept::incoming(listener))
                .await?
        }
        false => {
            router
                .serve_with_incoming(TcpIncoming::from(listener).with_nodelay(Some(true)))
                .await?
        }
    }
    Ok(())
}

/// A running `noop-server` child; killed when dropped.
pub struct NoopChild {
    child: Child,
    pub addr: SocketAddr,
}

impl NoopChild {
    /// Starts `noop-server` on a free loopback port, under `taskset -c cpu`
    /// when `cpu` is given.
    pub fn spawn(cpu: Option<&str>) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("cannot find this executable")?;
        let mut command = match cpu {
            Some(cpu) => {
                let mut c = Command::new("taskset");
                c.arg("-c").arg(cpu).arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        command
            .args(["noop-server", "--listen", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = command.spawn().context("cannot start the no-op server")?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let addr = match line.trim().strip_prefix(READY_PREFIX) {
            Some(addr) => addr.parse()?,
            None => {
                let _ = child.kill();
                bail!("the no-op server did not start: {line:?}");
            }
        };
        Ok(Self { child, addr })
    }

    /// The server's pid (`taskset` execs it, so this is the server itself).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for NoopChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
