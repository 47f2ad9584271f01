//! `keygate-bench propagation`: how long after `RevokeKey` returns on
//! replica A a Check on replica B denies the key (Postgres LISTEN/NOTIFY).
//!
//! Each key is first allowed on B (so B holds it in its cache), then revoked
//! on A; B is polled every `--poll` until it answers `key_revoked`. The
//! figure includes up to one poll interval of sampling error.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use hdrhistogram::Histogram;
use keygate::proto::{key_admin_client::KeyAdminClient, CreateKeyRequest, RevokeKeyRequest};
use serde::Serialize;
use tonic::transport::Channel;

use super::{grpc, stats::Outcome, workload};

const KEYS_PER_OWNER: usize = 50;

#[derive(Debug, Args)]
pub struct PropagationArgs {
    /// Replica A's KeyAdmin listener (keys are created and revoked there).
    #[arg(long)]
    a_admin: String,
    /// Replica B's Check listener (polled until it denies).
    #[arg(long)]
    b_authz: String,
    #[arg(long, env = "KEYGATE_BENCH_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    #[arg(long, default_value_t = 200)]
    keys: usize,
    /// Interval between Checks on B.
    #[arg(long, default_value = "1ms", value_parser = humantime::parse_duration)]
    poll: Duration,
    /// Give up on a key after this long.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct PropagationReport {
    keys: u64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    /// Keys B already denied on the first Check after the revoke returned.
    denied_on_first_poll: u64,
}

pub async fn run(args: PropagationArgs) -> anyhow::Result<()> {
    let admin = Channel::from_shared(format!("http://{}", args.a_admin))?
        .connect()
        .await
        .with_context(|| format!("cannot reach replica A at {}", args.a_admin))?;
    let mut admin = KeyAdminClient::new(admin);
    let b = grpc::connect(&args.b_authz, 1)
        .await?
        .pop()
        .context("no channel")?;
    let token = workload::bearer(args.admin_token.as_deref())?;

    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let mut keys = Vec::with_capacity(args.keys);
    for i in 0..args.keys {
        let owner_id = format!("prop-{run}-{}", i / KEYS_PER_OWNER);
        let created = admin
            .create_key(workload::admin_request(
                CreateKeyRequest {
                    owner_id: owner_id.clone(),
                    name: format!("propagation {i}"),
                    environment: "live".into(),
                    abilities: vec![workload::ABILITY.into()],
                    ..Default::default()
                },
                token.as_ref(),
            ))
            .await?
            .into_inner();
        let id = created.api_key.context("CreateKey returned no key")?.id;
        let request = grpc::encode(&workload::check_request(&created.key));
        // Warm B: the key must be cached there for the revoke to matter.
        match grpc::outcome(grpc::check(b.clone(), request.clone()).await) {
            Outcome::Answer { status: 200, .. } => {}
            other => bail!("replica B did not allow a fresh key: {other:?}"),
        }
        keys.push((owner_id, id, request));
    }

    let mut latency_us = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    let mut first_poll = 0u64;
    for (owner_id, id, request) in keys {
        admin
            .revoke_key(workload::admin_request(
                RevokeKeyRequest {
                    owner_id,
                    id,
                    reason: "propagation benchmark".into(),
                },
                token.as_ref(),
            ))
            .await?;
        let revoked = Instant::now();
        let mut polls = 0u64;
        loop {
            polls += 1;
            match grpc::outcome(grpc::check(b.clone(), request.clone()).await) {
                Outcome::Answer { status: 200, .. } => {}
                Outcome::Answer { code, .. } if code == "key_revoked" => break,
                other => bail!("replica B answered {other:?} while waiting for the revoke"),
            }
            if revoked.elapsed() > args.timeout {
                bail!(
                    "replica B still allows a key {:?} after its revoke",
                    args.timeout
                );
            }
            tokio::time::sleep(args.poll).await;
        }
        latency_us.saturating_record(revoked.elapsed().as_micros() as u64);
        first_poll += u64::from(polls == 1);
    }

    let ms = |q: f64| latency_us.value_at_quantile(q) as f64 / 1_000.0;
    let report = PropagationReport {
        keys: latency_us.len(),
        p50_ms: ms(0.5),
        p99_ms: ms(0.99),
        max_ms: latency_us.max() as f64 / 1_000.0,
        denied_on_first_poll: first_poll,
    };
    let text = format!(
        "propagation: {} keys, revoke on A → denied on B: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} denied on the first poll; poll every {:?})",
        report.keys, report.p50_ms, report.p99_ms, report.max_ms, report.denied_on_first_poll, args.poll
    );
    if args.json {
        eprintln!("{text}");
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{text}");
    }
    Ok(())
}
