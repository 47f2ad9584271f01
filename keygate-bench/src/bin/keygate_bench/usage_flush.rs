//! `keygate-bench usage-flush`: how many usage events per second the
//! flusher's store write sustains, with the per-request log on.
//!
//! Calls `Store::record_usage` directly, with batches of the flusher's
//! default size, back to back: the store write is the flusher's bottleneck
//! (the channel and normalisation in front of it cost microseconds).

use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;
use clap::Args;
use hdrhistogram::Histogram;
use keygate::{
    domain::KeyFormat,
    store::{AuditRecord, NewKey, Store, StoreOptions, UsageEvent},
};
use serde::Serialize;
use uuid::Uuid;

const KEYS_PER_OWNER: usize = 50;

#[derive(Debug, Args)]
pub struct UsageFlushArgs {
    /// The database to write to (it is migrated first).
    #[arg(long, env = "KEYGATE_BENCH_DATABASE_URL")]
    database_url: String,
    /// Keys the events are spread over.
    #[arg(long, default_value_t = 1000)]
    keys: usize,
    /// Distinct (normalised) endpoints the events are spread over.
    #[arg(long, default_value_t = 10)]
    endpoints: usize,
    /// Events per `record_usage` call (keygate's default batch size).
    #[arg(long, default_value_t = 5000)]
    batch: usize,
    /// Write the per-request usage log (keygate's default).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    log: bool,
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    duration: Duration,
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct FlushReport {
    events: u64,
    batches: u64,
    seconds: f64,
    events_per_second: f64,
    batch_p50_ms: f64,
    batch_p99_ms: f64,
    batch_max_ms: f64,
}

pub async fn run(args: UsageFlushArgs) -> anyhow::Result<()> {
    let store = Store::connect(&StoreOptions::new(&args.database_url)).await?;
    store.migrate().await.context("migrations failed")?;
    let key_ids = create_keys(&store, args.keys).await?;
    let endpoints: Vec<std::sync::Arc<str>> = (0..args.endpoints.max(1))
        .map(|i| format!("/v1/resource{i}/{{id}}").into())
        .collect();

    let mut batch_ms = Histogram::<u64>::new_with_bounds(1, 600_000, 3)?;
    let mut events = 0u64;
    let mut seq = 0usize;
    let started = Instant::now();
    while started.elapsed() < args.duration {
        let at = Utc::now();
        let batch: Vec<UsageEvent> = (0..args.batch)
            .map(|_| {
                seq += 1;
                UsageEvent {
                    key_id: key_ids[seq % key_ids.len()],
                    at,
                    ip: Some(std::net::IpAddr::from([203, 0, 113, (seq % 250) as u8])),
                    method: "GET",
                    endpoint: endpoints[(seq / key_ids.len()) % endpoints.len()].clone(),
                    decision: "allowed",
                    allowed: true,
                    requests: 1,
                }
            })
            .collect();
        let t0 = Instant::now();
        store
            .record_usage(&batch, args.log)
            .await
            .context("record_usage failed")?;
        batch_ms.saturating_record((t0.elapsed().as_micros() as u64).div_ceil(1000).max(1));
        events += batch.len() as u64;
    }
    let seconds = started.elapsed().as_secs_f64();
    store.close().await;
    let report = FlushReport {
        events,
        batches: batch_ms.len(),
        seconds,
        events_per_second: events as f64 / seconds,
        batch_p50_ms: batch_ms.value_at_quantile(0.5) as f64,
        batch_p99_ms: batch_ms.value_at_quantile(0.99) as f64,
        batch_max_ms: batch_ms.max() as f64,
    };
    let text = format!(
        "usage-flush: {} events in {} batches of {} over {:.1}s: {:.0} events/s (batch p50 {} ms, p99 {} ms, max {} ms), log {}",
        report.events,
        report.batches,
        args.batch,
        report.seconds,
        report.events_per_second,
        report.batch_p50_ms,
        report.batch_p99_ms,
        report.batch_max_ms,
        if args.log { "on" } else { "off" },
    );
    if args.json {
        eprintln!("{text}");
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{text}");
    }
    Ok(())
}

/// Inserts `count` keys the usage can refer to (the counters update needs
/// real rows).
async fn create_keys(store: &Store, count: usize) -> anyhow::Result<Vec<Uuid>> {
    let format = KeyFormat::new("sk", &["live".into()], 32)?;
    let audit = AuditRecord::new("api_key.created", "keygate-bench");
    let run = Uuid::new_v4().simple().to_string()[..8].to_owned();
    let mut ids = Vec::with_capacity(count);
    for i in 0..count.max(1) {
        let new = NewKey::bare(
            format.generate("live"),
            "live",
            format!("flush-{run}-{}", i / KEYS_PER_OWNER),
            format!("flush bench {i}"),
            Utc::now(),
        );
        ids.push(store.insert_key(&new, None, &audit).await?.id);
    }
    Ok(ids)
}
