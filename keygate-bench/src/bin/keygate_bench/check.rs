//! `keygate-bench check`: drives `Authorization/Check` against keygate and,
//! with `--baseline`, first against a no-op ext_authz server.

use std::{sync::Arc, time::Duration};

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::Args;
use serde::Serialize;
use tonic::transport::Channel;

use super::{
    grpc,
    load::{self, Pacer, Schedule, Target, Window},
    noop::NoopChild,
    stats::{Outcome, Ratios, Report},
    workload::{self, Issuer, Mix, Workload},
};

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// keygate's Check listener.
    #[arg(long, default_value = "127.0.0.1:50051")]
    target: String,
    /// keygate's KeyAdmin listener, where the valid keys are issued.
    #[arg(long, default_value = "127.0.0.1:50052")]
    admin: String,
    /// Bearer token for KeyAdmin, when the server has admin tokens.
    #[arg(long, env = "KEYGATE_BENCH_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// HTTP/2 connections, each its own tonic Channel.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Full speed: requests in flight per connection.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Fixed rate (requests/s, open loop) instead of full speed.
    #[arg(long, value_parser = load::parse_rate)]
    rate: Option<f64>,
    /// How the fixed-rate schedule is kept.
    #[arg(long, value_enum, default_value = "thread")]
    pacer: Pacer,
    /// Burst spacing for `--pacer burst`: every tick, the requests due in
    /// it are sent together and timed from the tick.
    #[arg(long, default_value = "1ms", value_parser = load::parse_tick)]
    tick: Duration,
    /// Measured time.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Unrecorded time before it (connections, caches, allocator settle).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Request classes and weights.
    #[arg(long, default_value = "valid=90,unknown=5,malformed=5")]
    mix: Mix,
    /// Distinct keys per class (valid ones are issued through KeyAdmin).
    #[arg(long, default_value_t = 1000)]
    keys: usize,
    /// First run the same load against a built-in no-op ext_authz server
    /// and report keygate/baseline ratios.
    #[arg(long)]
    baseline: bool,
    /// CPU list (`taskset -c`) to pin the no-op server to, e.g. `0`.
    #[arg(long, requires = "baseline")]
    baseline_cpu: Option<String>,
    /// keygate's pid, to report its CPU use during the run.
    #[arg(long)]
    server_pid: Option<u32>,
    /// A name for this run in the output.
    #[arg(long, default_value = "keygate")]
    name: String,
    /// Print one JSON object on stdout (the human summary goes to stderr).
    #[arg(long)]
    json: bool,
}

/// Check requests over a set of connections.
struct CheckTarget {
    channels: Vec<Channel>,
    requests: Arc<Workload<Bytes>>,
}

impl Target for CheckTarget {
    fn connections(&self) -> usize {
        self.channels.len()
    }

    fn call(
        &self,
        connection: usize,
        seq: u64,
    ) -> impl std::future::Future<Output = Outcome> + Send + 'static {
        let channel = self.channels[connection].clone();
        let request = self.requests.get(seq).clone();
        async move { grpc::outcome(grpc::check(channel, request).await) }
    }
}

#[derive(Serialize)]
struct CheckOutput {
    #[serde(skip_serializing_if = "Option::is_none")]
    baseline: Option<Report>,
    target: Report,
    #[serde(skip_serializing_if = "Option::is_none")]
    ratios: Option<Ratios>,
}

pub async fn run(args: CheckArgs) -> anyhow::Result<()> {
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
    let requests = Arc::new(credentials.map(|c| grpc::encode(&workload::check_request(c))));
    warm(&args.target, &credentials).await?;
    let window = Window {
        warmup: args.warmup,
        duration: args.duration,
    };
    say(format!(
        "check: mix {:?}, {} keys/class, {} connections, {}",
        args.mix,
        args.keys,
        args.connections,
        match args.rate {
            Some(rate) => format!("open loop at {rate} req/s"),
            None => format!("full speed, {} in flight per connection", args.concurrency),
        }
    ));

    let baseline = match args.baseline {
        true => {
            let noop = NoopChild::spawn(args.baseline_cpu.as_deref())?;
            let report = drive(
                &args,
                &noop.addr.to_string(),
                requests.clone(),
                window,
                Some(noop.pid()),
                "no-op baseline",
            )
            .await?;
            say(report.render());
            Some(report)
        }
        false => None,
    };
    let target = drive(
        &args,
        &args.target,
        requests,
        window,
        args.server_pid,
        &args.name,
    )
    .await?;
    say(target.render());
    let ratios = baseline.as_ref().map(|b| Ratios::of(&target, b));
    if let Some(ratios) = &ratios {
        say(ratios.render(&args.name, "baseline"));
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&CheckOutput {
                baseline,
                target,
                ratios
            })?
        );
    }
    Ok(())
}

async fn drive(
    args: &CheckArgs,
    address: &str,
    requests: Arc<Workload<Bytes>>,
    window: Window,
    server_pid: Option<u32>,
    name: &str,
) -> anyhow::Result<Report> {
    let target = Arc::new(CheckTarget {
        channels: grpc::connect(address, args.connections).await?,
        requests,
    });
    let measured = match args.rate {
        Some(rate) => {
            let schedule = Schedule {
                rate,
                pacer: args.pacer,
                tick: args.tick,
            };
            load::open_loop(target, schedule, window, server_pid).await
        }
        None => load::closed_loop(target, args.concurrency, window, server_pid).await,
    };
    Ok(measured
        .recorder
        .report(name, measured.elapsed, measured.cpu))
}

/// One Check per issued key, so the measured run hits a warm cache; fails
/// unless every one is allowed (a misconfigured run measures nothing).
async fn warm(target: &str, credentials: &Workload<String>) -> anyhow::Result<()> {
    let channel = grpc::connect(target, 1)
        .await?
        .pop()
        .context("no channel")?;
    for key in credentials.valid() {
        let request = grpc::encode(&workload::check_request(key));
        match grpc::outcome(grpc::check(channel.clone(), request).await) {
            Outcome::Answer { status: 200, .. } => {}
            other => bail!("warming: an issued key was not allowed: {other:?}"),
        }
    }
    Ok(())
}
