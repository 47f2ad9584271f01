//! `keygate-bench`: load generator and measurements for keygate; the
//! commands behind BENCHMARKS.md (`scripts/bench.sh` runs them all).
//!
//! - `check`: drives `Authorization/Check` at full speed or at a fixed rate,
//!   optionally against a built-in no-op server first (`--baseline`).
//! - `admin`: KeyAdmin (gRPC) against the REST API, create and get.
//! - `http`: a fixed-rate HTTP/1.1 load, e.g. through Envoy.
//! - `usage-flush`: usage events/s the store write sustains.
//! - `propagation`: revoke on one replica → denied on another.
//! - `grpc-body`: one Check request as a gRPC-framed body file (for h2load).
//! - `noop-server`: the no-op ext_authz server used as the baseline.
//! - `noop-http-server`: the no-op HTTP server, forward-auth's baseline.

// Printing results on stdout is this tool's whole job.
#![allow(clippy::print_stdout)]

#[path = "keygate_bench/mod.rs"]
mod bench;

use std::{net::SocketAddr, process::ExitCode};

use clap::{Parser, Subcommand};

use bench::{admin, check, grpc_body, http, noop, noop_http, propagation, usage_flush};

/// keygate's own allocator (src/main.rs), so that the no-op servers this
/// tool runs as baselines differ from keygate in what they do, not in how
/// they allocate.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "keygate-bench",
    version,
    about = "Load generator and measurements for keygate"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Drive ext_authz Check (gRPC) and report throughput, latency and decisions.
    Check(check::CheckArgs),
    /// KeyAdmin over gRPC against the REST API: create and get, full speed.
    Admin(admin::AdminArgs),
    /// Fixed-rate HTTP/1.1 load against one or more URLs (e.g. through Envoy).
    Http(http::HttpArgs),
    /// Sustained usage events/s written by the store (Postgres or SQLite).
    UsageFlush(usage_flush::UsageFlushArgs),
    /// Revoke on replica A → denied on replica B, per key.
    Propagation(propagation::PropagationArgs),
    /// Issue one key and write a Check request for it as a gRPC-framed
    /// HTTP/2 body (`h2load -d FILE`).
    GrpcBody(grpc_body::GrpcBodyArgs),
    /// Serve a no-op ext_authz Check (always OK) until killed.
    NoopServer {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        /// Accept connections as keygate's Check listener does (coalesced
        /// writes, TCP keep-alive) rather than as a plain tonic server.
        #[arg(long)]
        keygate_transport: bool,
    },
    /// Serve an empty HTTP 200 (HTTP/1.1 and h2c) until killed.
    NoopHttpServer {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        /// Answer with the headers keygate's forward-auth allowance carries
        /// (fixed values, built once), not an empty 200: what answering
        /// with them costs, whatever the decision.
        #[arg(long)]
        with_identity_headers: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("keygate-bench: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Check(args) => check::run(args).await,
            Command::Admin(args) => admin::run(args).await,
            Command::Http(args) => http::run(args).await,
            Command::UsageFlush(args) => usage_flush::run(args).await,
            Command::Propagation(args) => propagation::run(args).await,
            Command::GrpcBody(args) => grpc_body::run(args).await,
            Command::NoopServer {
                listen,
                keygate_transport,
            } => noop::serve(listen, keygate_transport).await,
            Command::NoopHttpServer {
                listen,
                with_identity_headers,
            } => noop_http::serve(listen, with_identity_headers).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("keygate-bench: {error:#}");
            ExitCode::FAILURE
        }
    }
}
