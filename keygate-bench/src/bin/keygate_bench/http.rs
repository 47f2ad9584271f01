//! `keygate-bench http`: a fixed-rate (open loop) HTTP/1.1 load through
//! Envoy, one or more scenarios in a row, e.g. Envoy alone, Envoy + keygate,
//! Envoy + a no-op ext_authz server.
//!
//! HTTP/1.1 has one request in flight per connection: request `seq` goes to
//! connection `seq % connections` and waits its turn there, a wait that the
//! open-loop latency (from the intended send time) includes.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::Args;
use http::{header, HeaderValue, Request, Uri};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::{net::TcpStream, sync::Mutex};

use super::{
    load::{self, Pacer, Schedule, Target, Window},
    stats::{median, Outcome, Report},
    workload::{self, Issuer, Mix, Workload},
};

#[derive(Debug, Args)]
pub struct HttpArgs {
    /// `name=http://host:port/path`, repeatable; run in the order given.
    #[arg(long = "scenario", required = true, value_parser = parse_scenario)]
    scenarios: Vec<Scenario>,
    /// keygate's KeyAdmin listener, where the valid keys are issued.
    #[arg(long, default_value = "127.0.0.1:50052")]
    admin: String,
    #[arg(long, env = "KEYGATE_BENCH_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Request classes and weights (the credential in `Authorization`).
    #[arg(long, default_value = "valid=100")]
    mix: Mix,
    #[arg(long, default_value_t = 100)]
    keys: usize,
    /// Keep-alive HTTP/1.1 connections per scenario.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Requests per second (open loop).
    #[arg(long, default_value_t = 1000.0, value_parser = load::parse_rate)]
    rate: f64,
    /// How the fixed-rate schedule is kept.
    #[arg(long, value_enum, default_value = "thread")]
    pacer: Pacer,
    /// Burst spacing for `--pacer burst`: every tick, the requests due in
    /// it are sent together and timed from the tick.
    #[arg(long, default_value = "1ms", value_parser = load::parse_tick)]
    tick: Duration,
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Times the whole list of scenarios is run, interleaved.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Envoy's pid, to report its CPU use.
    #[arg(long)]
    server_pid: Option<u32>,
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone)]
struct Scenario {
    name: String,
    uri: Uri,
}

fn parse_scenario(text: &str) -> Result<Scenario, String> {
    let (name, url) = text
        .split_once('=')
        .ok_or("expected name=http://host:port/path")?;
    let uri: Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
    if uri.scheme_str() != Some("http") || uri.authority().is_none() {
        return Err(format!("{url}: only http://host:port/... is supported"));
    }
    Ok(Scenario {
        name: name.to_owned(),
        uri,
    })
}

/// One keep-alive HTTP/1.1 connection, reopened if the server closed it.
pub struct Connection<B> {
    addr: SocketAddr,
    sender: Option<SendRequest<B>>,
}

impl<B> Connection<B>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    pub fn new(addr: SocketAddr) -> Self {
        Self { addr, sender: None }
    }

    async fn sender(&mut self) -> anyhow::Result<&mut SendRequest<B>> {
        if self.sender.as_ref().is_none_or(SendRequest::is_closed) {
            let stream = TcpStream::connect(self.addr).await?;
            stream.set_nodelay(true)?;
            let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(connection);
            self.sender = Some(sender);
        }
        Ok(self.sender.as_mut().expect("just set"))
    }

    /// Sends `request` and reads the whole answer; returns its status.
    pub async fn exchange(&mut self, request: Request<B>) -> anyhow::Result<u16> {
        let sender = self.sender().await?;
        sender.ready().await?;
        let response = sender.send_request(request).await?;
        let status = response.status().as_u16();
        response.into_body().collect().await?;
        Ok(status)
    }
}

/// A scenario's connections and request target.
struct Endpoint {
    connections: Vec<Mutex<Connection<Empty<Bytes>>>>,
    uri: Uri,
}

struct HttpTarget {
    endpoint: Arc<Endpoint>,
    authorization: Arc<Workload<HeaderValue>>,
}

impl Endpoint {
    fn new(scenario: &Scenario, count: usize) -> anyhow::Result<Self> {
        let authority = scenario.uri.authority().expect("checked when parsed");
        let addr = std::net::ToSocketAddrs::to_socket_addrs(&(
            authority.host(),
            authority.port_u16().unwrap_or(80),
        ))?
        .next()
        .with_context(|| format!("cannot resolve {authority}"))?;
        Ok(Self {
            connections: (0..count)
                .map(|_| Mutex::new(Connection::new(addr)))
                .collect(),
            uri: scenario.uri.clone(),
        })
    }

    async fn send(&self, connection: usize, authorization: HeaderValue) -> anyhow::Result<u16> {
        let request = Request::get(self.uri.path_and_query().map_or("/", |p| p.as_str()))
            .header(
                header::HOST,
                self.uri.authority().expect("checked").as_str(),
            )
            .header(header::AUTHORIZATION, authorization)
            .body(Empty::<Bytes>::new())?;
        self.connections[connection]
            .lock()
            .await
            .exchange(request)
            .await
    }
}

impl Target for HttpTarget {
    fn connections(&self) -> usize {
        self.endpoint.connections.len()
    }

    fn call(
        &self,
        connection: usize,
        seq: u64,
    ) -> impl std::future::Future<Output = Outcome> + Send + 'static {
        let endpoint = self.endpoint.clone();
        let authorization = self.authorization.get(seq).clone();
        async move { outcome(endpoint.send(connection, authorization).await) }
    }
}

fn outcome(result: anyhow::Result<u16>) -> Outcome {
    match result {
        Ok(status) => Outcome::Answer {
            status,
            code: String::new(),
        },
        Err(error) => Outcome::Error(error.to_string()),
    }
}

#[derive(Serialize)]
struct HttpOutput {
    rate: f64,
    summary: Vec<Summary>,
    rounds: Vec<Vec<Report>>,
}

/// One scenario over all rounds: medians, and the quietest round (least
/// hypervisor steal), the one least disturbed by the machine.
#[derive(Serialize)]
struct Summary {
    name: String,
    median_p50_us: f64,
    median_p99_us: f64,
    quietest_steal_pct: Option<f64>,
    quietest_p50_us: f64,
    quietest_p99_us: f64,
}

impl Summary {
    fn of<'a>(reports: impl Iterator<Item = &'a Report>) -> Self {
        let reports: Vec<&Report> = reports.collect();
        let quietest = reports
            .iter()
            .min_by(|a, b| {
                let steal = |r: &Report| r.cpu.steal_pct.unwrap_or(0.0);
                steal(a).total_cmp(&steal(b))
            })
            .expect("at least one round");
        Self {
            name: quietest.name.clone(),
            median_p50_us: median(reports.iter().map(|r| r.p50_us).collect()),
            median_p99_us: median(reports.iter().map(|r| r.p99_us).collect()),
            quietest_steal_pct: quietest.cpu.steal_pct,
            quietest_p50_us: quietest.p50_us,
            quietest_p99_us: quietest.p99_us,
        }
    }

    fn render(&self) -> String {
        format!(
            "{:<22} median p50 {:>7.1}µs p99 {:>8.1}µs | quietest round (steal {}): p50 {:>7.1}µs p99 {:>8.1}µs",
            self.name,
            self.median_p50_us,
            self.median_p99_us,
            self.quietest_steal_pct
                .map_or_else(|| "-".to_owned(), |s| format!("{s:.0}%")),
            self.quietest_p50_us,
            self.quietest_p99_us,
        )
    }
}

pub async fn run(args: HttpArgs) -> anyhow::Result<()> {
    if args.connections == 0 {
        bail!("--connections must be at least 1");
    }
    let say = |text: String| match args.json {
        true => eprintln!("{text}"),
        false => println!("{text}"),
    };
    let issuer = Issuer {
        admin: &args.admin,
        token: args.admin_token.as_deref(),
    };
    let credentials = workload::credentials(args.mix, args.keys, &issuer).await?;
    let authorization =
        Arc::new(credentials.map(|key| {
            HeaderValue::from_str(&format!("Bearer {key}")).expect("keys are header-safe")
        }));
    let window = Window {
        warmup: args.warmup,
        duration: args.duration,
    };
    say(format!(
        "http: {} req/s open loop, {} connections, mix {:?}",
        args.rate, args.connections, args.mix
    ));
    let mut targets = Vec::new();
    for scenario in &args.scenarios {
        let endpoint = Arc::new(Endpoint::new(scenario, args.connections)?);
        // One request per issued key first: keygate's cache is warm and a
        // misconfigured route shows up before anything is measured.
        for key in authorization.valid() {
            match outcome(endpoint.send(0, key.clone()).await) {
                Outcome::Answer { status: 200, .. } => {}
                other => bail!("{}: warming: an issued key got {other:?}", scenario.name),
            }
        }
        targets.push(Arc::new(HttpTarget {
            endpoint,
            authorization: authorization.clone(),
        }));
    }
    // Rounds interleave the scenarios, so that a noisy spell on the machine
    // (hypervisor steal) hits all of them rather than one.
    let mut rounds = Vec::new();
    for round in 1..=args.rounds.max(1) {
        let mut reports = Vec::new();
        for (scenario, target) in args.scenarios.iter().zip(&targets) {
            let schedule = Schedule {
                rate: args.rate,
                pacer: args.pacer,
                tick: args.tick,
            };
            let measured = load::open_loop(target.clone(), schedule, window, args.server_pid).await;
            let report = measured
                .recorder
                .report(&scenario.name, measured.elapsed, measured.cpu);
            say(format!("round {round}: {}", report.render()));
            reports.push(report);
        }
        rounds.push(reports);
    }
    let summary: Vec<Summary> = (0..args.scenarios.len())
        .map(|i| Summary::of(rounds.iter().map(|r| &r[i])))
        .collect();
    if rounds.len() > 1 {
        for s in &summary {
            say(s.render());
        }
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&HttpOutput {
                rate: args.rate,
                summary,
                rounds,
            })?
        );
    }
    Ok(())
}
