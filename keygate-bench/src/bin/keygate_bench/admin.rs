//! `keygate-bench admin`: the same key operations over KeyAdmin (gRPC) and
//! the REST API, at full speed (closed loop), rounds interleaved:
//!
//! - `CreateKey` against `POST /v1/api-keys` (one new owner per key, so no
//!   run reaches `max_keys_per_owner`);
//! - `GetKey` against `GET /v1/api-keys/{id}` (one key, read again and
//!   again).
//!
//! Both transports keep the same number of requests in flight
//! (`--in-flight`): gRPC multiplexes them over `--grpc-connections` HTTP/2
//! connections, as a tonic client does; REST gives each its own keep-alive
//! HTTP/1.1 connection, as an HTTP/1.1 client must. The ratio REST/gRPC is
//! therefore the cost of JSON over HTTP/1.1 against protobuf over HTTP/2 for
//! the same use-case code underneath.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::Args;
use http::{header, HeaderValue, Method, Request};
use http_body_util::Full;
use keygate::proto::{key_admin_client::KeyAdminClient, CreateKeyRequest, GetKeyRequest};
use serde::Serialize;
use tokio::sync::Mutex;
use tonic::{metadata::AsciiMetadataValue, transport::Channel};

use super::{
    grpc,
    http::Connection,
    load::{self, Target, Window},
    stats::{median, Outcome, Ratios, Report},
    workload::{admin_request, bearer, ABILITY},
};

#[derive(Debug, Args)]
pub struct AdminArgs {
    /// keygate's KeyAdmin (gRPC) listener.
    #[arg(long, default_value = "127.0.0.1:50052")]
    grpc: String,
    /// keygate's REST listener.
    #[arg(long, default_value = "127.0.0.1:8080")]
    rest: SocketAddr,
    /// An admin token (`keygate admin-token`), sent on both transports.
    #[arg(long, env = "KEYGATE_BENCH_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Requests in flight on each transport.
    #[arg(long, default_value_t = 16)]
    in_flight: usize,
    /// HTTP/2 connections the gRPC requests share.
    #[arg(long, default_value_t = 2)]
    grpc_connections: usize,
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Times the four scenarios are run, interleaved.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// keygate's pid, to report its CPU use.
    #[arg(long)]
    server_pid: Option<u32>,
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Operation {
    Create,
    Get,
}

/// The four scenarios, in the order each round runs them.
const SCENARIOS: [(&str, Operation, bool); 4] = [
    ("grpc CreateKey", Operation::Create, false),
    ("rest POST /v1/api-keys", Operation::Create, true),
    ("grpc GetKey", Operation::Get, false),
    ("rest GET /v1/api-keys/{id}", Operation::Get, true),
];

/// The key `Get` reads.
struct ReadKey {
    id: String,
    owner_id: String,
}

enum Transport {
    Grpc {
        clients: Vec<KeyAdminClient<Channel>>,
        token: Option<AsciiMetadataValue>,
    },
    Rest {
        connections: Vec<Mutex<Connection<Full<Bytes>>>>,
        authorization: Option<HeaderValue>,
        host: HeaderValue,
    },
}

struct Scenario {
    operation: Operation,
    transport: Transport,
    read: Arc<ReadKey>,
    /// Unique to this run, so repeated runs on one database never collide.
    run: String,
}

struct AdminTarget(Arc<Scenario>);

impl Target for AdminTarget {
    fn connections(&self) -> usize {
        match &self.0.transport {
            Transport::Grpc { clients, .. } => clients.len(),
            Transport::Rest { connections, .. } => connections.len(),
        }
    }

    fn call(
        &self,
        connection: usize,
        seq: u64,
    ) -> impl std::future::Future<Output = Outcome> + Send + 'static {
        let scenario = self.0.clone();
        async move { scenario.call(connection, seq).await }
    }
}

impl Scenario {
    async fn call(&self, connection: usize, seq: u64) -> Outcome {
        let owner_id = format!("bench-{}-{seq}", self.run);
        match &self.transport {
            Transport::Grpc { clients, token } => {
                let mut client = clients[connection].clone();
                let result = match self.operation {
                    Operation::Create => client
                        .create_key(admin_request(
                            CreateKeyRequest {
                                owner_id,
                                name: "bench".into(),
                                environment: "live".into(),
                                abilities: vec![ABILITY.into()],
                                ..Default::default()
                            },
                            token.as_ref(),
                        ))
                        .await
                        .map(|_| ()),
                    Operation::Get => client
                        .get_key(admin_request(
                            GetKeyRequest {
                                id: self.read.id.clone(),
                                owner_id: self.read.owner_id.clone(),
                            },
                            token.as_ref(),
                        ))
                        .await
                        .map(|_| ()),
                };
                match result {
                    Ok(()) => Outcome::Answer {
                        status: 200,
                        code: String::new(),
                    },
                    Err(status) => Outcome::Error(format!("{:?}", status.code())),
                }
            }
            Transport::Rest {
                connections,
                authorization,
                host,
            } => {
                let (method, path, body) = match self.operation {
                    Operation::Create => (
                        Method::POST,
                        "/v1/api-keys".to_owned(),
                        Bytes::from(format!(
                            r#"{{"owner_id":"{owner_id}","name":"bench","environment":"live","abilities":["{ABILITY}"]}}"#
                        )),
                    ),
                    Operation::Get => (
                        Method::GET,
                        format!(
                            "/v1/api-keys/{}?owner_id={}",
                            self.read.id, self.read.owner_id
                        ),
                        Bytes::new(),
                    ),
                };
                let mut request = Request::builder()
                    .method(method)
                    .uri(path)
                    .header(header::HOST, host.clone());
                if !body.is_empty() {
                    request = request.header(header::CONTENT_TYPE, "application/json");
                }
                if let Some(authorization) = authorization {
                    request = request.header(header::AUTHORIZATION, authorization.clone());
                }
                let result = match request.body(Full::new(body)) {
                    Ok(request) => connections[connection].lock().await.exchange(request).await,
                    Err(error) => Err(error.into()),
                };
                match result {
                    Ok(status @ 200..=299) => Outcome::Answer {
                        status,
                        code: String::new(),
                    },
                    Ok(status) => Outcome::Error(format!("HTTP {status}")),
                    Err(error) => Outcome::Error(error.to_string()),
                }
            }
        }
    }
}

#[derive(Serialize)]
struct AdminOutput {
    in_flight: usize,
    /// Median over rounds of each round's REST/gRPC ratios.
    ratios: Vec<NamedRatios>,
    rounds: Vec<Vec<Report>>,
}

#[derive(Serialize)]
struct NamedRatios {
    operation: &'static str,
    rest_over_grpc_throughput: f64,
    rest_over_grpc_p99: f64,
}

pub async fn run(args: AdminArgs) -> anyhow::Result<()> {
    if args.in_flight == 0 || args.grpc_connections == 0 {
        bail!("--in-flight and --grpc-connections must be at least 1");
    }
    let say = |text: String| match args.json {
        true => eprintln!("{text}"),
        false => println!("{text}"),
    };
    let token = bearer(args.admin_token.as_deref())?;
    let authorization = args
        .admin_token
        .as_deref()
        .map(|t| HeaderValue::from_str(&format!("Bearer {t}")))
        .transpose()
        .context("invalid admin token")?;
    let clients: Vec<_> = grpc::connect(&args.grpc, args.grpc_connections)
        .await?
        .into_iter()
        .map(KeyAdminClient::new)
        .collect();
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let read_owner = format!("bench-{run}-read");
    let created = clients[0]
        .clone()
        .create_key(admin_request(
            CreateKeyRequest {
                owner_id: read_owner.clone(),
                name: "bench read".into(),
                environment: "live".into(),
                abilities: vec![ABILITY.into()],
                ..Default::default()
            },
            token.as_ref(),
        ))
        .await
        .context("CreateKey for the key GetKey reads")?
        .into_inner();
    let read = Arc::new(ReadKey {
        id: created.api_key.context("CreateKey returned no key")?.id,
        owner_id: read_owner,
    });
    let host = HeaderValue::from_str(&args.rest.to_string())?;
    let targets: Vec<Arc<AdminTarget>> = SCENARIOS
        .iter()
        .map(|&(_, operation, rest)| {
            let transport = match rest {
                false => Transport::Grpc {
                    clients: clients.clone(),
                    token: token.clone(),
                },
                true => Transport::Rest {
                    connections: (0..args.in_flight)
                        .map(|_| Mutex::new(Connection::new(args.rest)))
                        .collect(),
                    authorization: authorization.clone(),
                    host: host.clone(),
                },
            };
            Arc::new(AdminTarget(Arc::new(Scenario {
                operation,
                transport,
                read: read.clone(),
                run: run.clone(),
            })))
        })
        .collect();
    // One call each before anything is measured: a wrong token or address
    // shows up here, not as a run of errors.
    for ((name, ..), target) in SCENARIOS.iter().zip(&targets) {
        if let Outcome::Error(error) = target.0.call(0, u64::MAX).await {
            bail!("{name}: the first call failed: {error}");
        }
    }
    let window = Window {
        warmup: args.warmup,
        duration: args.duration,
    };
    say(format!(
        "admin: closed loop, {} in flight per transport ({} HTTP/2 connections for gRPC, {} HTTP/1.1 for REST)",
        args.in_flight, args.grpc_connections, args.in_flight
    ));
    let mut rounds = Vec::new();
    for round in 1..=args.rounds.max(1) {
        let mut reports = Vec::new();
        for ((name, ..), target) in SCENARIOS.iter().zip(&targets) {
            let per_connection = args.in_flight.div_ceil(target.connections());
            let measured =
                load::closed_loop(target.clone(), per_connection, window, args.server_pid).await;
            let report = measured
                .recorder
                .report(name, measured.elapsed, measured.cpu);
            say(format!("round {round}: {}", report.render()));
            reports.push(report);
        }
        rounds.push(reports);
    }
    let ratios: Vec<NamedRatios> = [("create", 0, 1), ("get", 2, 3)]
        .into_iter()
        .map(|(operation, grpc, rest)| {
            let each: Vec<Ratios> = rounds
                .iter()
                .map(|r| Ratios::of(&r[rest], &r[grpc]))
                .collect();
            NamedRatios {
                operation,
                rest_over_grpc_throughput: median(each.iter().map(|r| r.rps).collect()),
                rest_over_grpc_p99: median(each.iter().map(|r| r.p99).collect()),
            }
        })
        .collect();
    for ratio in &ratios {
        say(format!(
            "{}: REST/gRPC throughput {:.2}×, p99 {:.2}× (medians over rounds)",
            ratio.operation, ratio.rest_over_grpc_throughput, ratio.rest_over_grpc_p99
        ));
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&AdminOutput {
                in_flight: args.in_flight,
                ratios,
                rounds,
            })?
        );
    }
    Ok(())
}
