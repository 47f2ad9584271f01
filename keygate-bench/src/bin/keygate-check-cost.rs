//! `keygate-check-cost`: what one cache-hit Check costs keygate's own code,
//! in the two measures the `decision_path` Criterion benchmark does not give.
//!
//! - Heap allocations per Check, counted by a counting global allocator
//!   around each call of `ExtAuthzService::decide` (credential, cache hit,
//!   decision, the usage event handed to the buffer) and the writing of the
//!   response's wire bytes, with usage recording on. The request's decoding
//!   is prost's, done by tonic for every server alike, and is not counted.
//!   The usage flusher runs between calls (outside the counted regions), as
//!   it would in a server, so the buffer's channel reuses its blocks.
//! - The decision path's latency per call (the same work, timed with
//!   `Instant` around each call, so the timer's own cost is included) over
//!   100,000 cached keys probed by Zipf(1.1) popularity, and over 1,000,000
//!   cached keys probed uniformly beside it.
//!
//! Each call first writes the probed key into one request's `authorization`
//! header (as `decision_path` does; that copy is measured too).
//!
//!     cargo build --release --bins && target/release/keygate-check-cost
//!
//! Env: KEYGATE_BENCH_ZIPF_KEYS (default 100000), KEYGATE_BENCH_UNIFORM_KEYS
//! (default 1000000), KEYGATE_BENCH_CALLS (measured calls per run, default
//! 200000).

// Printing results on stdout is this tool's whole job.
#![allow(clippy::print_stdout)]

use std::{
    alloc::System,
    hint::black_box,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use envoy_types::ext_authz::v3::pb::{CheckRequest, HttpResponse};
use keygate::{
    authz::Authorizer,
    cache::{CacheSettings, KeyCache},
    config::{Config, Settings},
    grpc::ext_authz::{EncodedCheckResponse, ExtAuthzService},
    ratelimit::RateLimiters,
    store::{Store, StoreOptions},
    usage::{self, BufferBounds, FlushSettings},
};
use rand::Rng;
use stats_alloc::{StatsAlloc, INSTRUMENTED_SYSTEM};
use uuid::Uuid;

#[path = "../../benches/support/check_fixture.rs"]
mod check_fixture;

use check_fixture::{check_key, check_request, set_authorization};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Calls between two flushes of the usage buffer.
const FLUSH_EVERY: usize = 1_000;
/// The flusher's interval here: it writes between two chunks of calls.
const FLUSH_INTERVAL: Duration = Duration::from_millis(5);
const ZIPF_EXPONENT: f64 = 1.1;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> anyhow::Result<()> {
    let zipf_keys = env_usize("KEYGATE_BENCH_ZIPF_KEYS", 100_000);
    let uniform_keys = env_usize("KEYGATE_BENCH_UNIFORM_KEYS", 1_000_000);
    let calls = env_usize("KEYGATE_BENCH_CALLS", 200_000);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let zipf = Fixture::new(zipf_keys).await?;
        let probes = zipf_probes(zipf_keys, calls);
        let (allocations, latency) = zipf.measure(&probes).await?;
        println!(
            "heap allocations per cache-hit Check (decide + response write, usage on): {:.4} \
             ({} in {calls} calls; {} calls allocated at all)",
            allocations.total as f64 / calls as f64,
            allocations.total,
            allocations.calls,
        );
        println!("decision path, {zipf_keys} keys cached, Zipf({ZIPF_EXPONENT}) probes: {latency}");
        drop(zipf);

        let uniform = Fixture::new(uniform_keys).await?;
        let mut rng = rand::rng();
        let probes: Vec<usize> = (0..calls)
            .map(|_| rng.random_range(0..uniform_keys))
            .collect();
        let (_, latency) = uniform.measure(&probes).await?;
        println!("decision path, {uniform_keys} keys cached, uniform probes: {latency}");
        Ok(())
    })
}

/// `count` key indices in `0..keys` drawn with probability ∝ 1/(rank^s),
/// rank 1 being key 0.
fn zipf_probes(keys: usize, count: usize) -> Vec<usize> {
    let mut cumulative = Vec::with_capacity(keys);
    let mut total = 0.0;
    for rank in 1..=keys {
        total += 1.0 / (rank as f64).powf(ZIPF_EXPONENT);
        cumulative.push(total);
    }
    let mut rng = rand::rng();
    (0..count)
        .map(|_| {
            let u = rng.random::<f64>() * total;
            cumulative.partition_point(|&c| c < u).min(keys - 1)
        })
        .collect()
}

struct Fixture {
    service: ExtAuthzService,
    /// `Bearer <key>` of every cached key, by index.
    authorizations: Vec<String>,
    /// Usage events accepted and not yet written.
    usage: Arc<usage::UsageTally>,
    /// Runs the usage flusher for as long as the fixture lives.
    _flusher: tokio::task::JoinHandle<()>,
}

impl Fixture {
    /// `keys` keys in the cache, a service assembled as `app::start` does
    /// from the default configuration (cache TTL an hour, so that nothing
    /// expires while measuring), usage recording on into SQLite.
    async fn new(keys: usize) -> anyhow::Result<Self> {
        let config = Settings::default().validate()?;
        let store = Store::connect(&StoreOptions::new("sqlite::memory:")).await?;
        store.migrate().await?;
        let cache = Arc::new(KeyCache::new(
            store.clone(),
            CacheSettings {
                capacity: config.cache_capacity.max(keys as u64 + 1),
                ttl: Duration::from_secs(3600),
                negative_capacity: config.negative_cache_capacity,
                negative_ttl: config.negative_cache_ttl,
                stale_if_error: config.cache_stale_if_error,
                max_concurrent_misses: config.max_concurrent_misses,
            },
        ));
        let started = Instant::now();
        let mut authorizations = Vec::with_capacity(keys);
        for i in 0..keys {
            let issued = config.key_format.generate("live");
            let id = Uuid::from_u128(i as u128 + 1);
            cache
                .insert_for_bench(issued.hash, check_key(id, issued.key_prefix, false))
                .await;
            authorizations.push(format!("Bearer {}", issued.plaintext.expose()));
        }
        cache.run_pending_tasks().await;
        eprintln!(
            "keygate-check-cost: {} keys cached in {:.1?}",
            cache.entry_count(),
            started.elapsed()
        );
        let (sender, flusher) = usage::buffer(
            BufferBounds {
                events: config.usage_buffer,
                bytes: config.usage_buffer_bytes,
            },
            store,
            FlushSettings {
                interval: FLUSH_INTERVAL,
                batch_size: config.usage_batch_size,
                log_enabled: config.usage_log_enabled,
            },
        );
        let flusher = tokio::spawn(flusher.run(std::future::pending()));
        let usage = sender.tally().clone();
        let service = service(&config, cache, sender);
        Ok(Self {
            service,
            authorizations,
            usage,
            _flusher: flusher,
        })
    }

    /// Allocations counted over all calls, and the latency distribution.
    async fn measure(&self, probes: &[usize]) -> anyhow::Result<(Allocations, Latency)> {
        let mut request = check_request("");
        let mut buffer = Vec::with_capacity(4096);
        // Warm-up: every probed key once (a key's identity headers are
        // encoded on its first allowed Check and kept with its cache entry:
        // once per cache fill, not per Check), then the allocator and buffer.
        let mut distinct = probes.to_vec();
        distinct.sort_unstable();
        distinct.dedup();
        for &probe in distinct.iter().chain(probes.iter().take(probes.len() / 4)) {
            let response = self.call(&mut request, probe, &mut buffer).await?;
            let decoded = response.decode();
            if !matches!(decoded.http_response, Some(HttpResponse::OkResponse(_))) {
                bail!("a probed key was not allowed: {decoded:?}");
            }
        }
        self.let_flusher_run().await;
        let mut allocations = Allocations::default();
        let mut nanos = Vec::with_capacity(probes.len());
        for chunk in probes.chunks(FLUSH_EVERY) {
            for &probe in chunk {
                let before = GLOBAL.stats().allocations;
                let started = Instant::now();
                let _ = self.call(&mut request, probe, &mut buffer).await?;
                let elapsed = started.elapsed();
                allocations.add(GLOBAL.stats().allocations - before);
                nanos.push(elapsed.as_nanos() as u64);
            }
            self.let_flusher_run().await;
        }
        Ok((allocations, Latency::of(nanos)))
    }

    /// One Check for key `probe`, its response written into `buffer`.
    async fn call(
        &self,
        request: &mut CheckRequest,
        probe: usize,
        buffer: &mut Vec<u8>,
    ) -> anyhow::Result<EncodedCheckResponse> {
        set_authorization(request, &self.authorizations[probe]);
        let response = self
            .service
            .decide(black_box(request))
            .await
            .context("decide")?;
        buffer.clear();
        response.write(buffer);
        black_box(buffer.len());
        Ok(response)
    }

    /// Waits until the flusher (which shares this thread, and runs only
    /// while we wait) has written every event, so that no store work runs
    /// on another thread while allocations are counted.
    async fn let_flusher_run(&self) {
        while self.usage.unwritten() > 0 {
            tokio::time::sleep(FLUSH_INTERVAL).await;
        }
    }
}

fn service(config: &Config, cache: Arc<KeyCache>, usage: usage::UsageSender) -> ExtAuthzService {
    let authorizer = Arc::new(Authorizer::new(
        config.authz_settings(),
        cache,
        Arc::new(RateLimiters::new(1_000_000)),
        Some(usage),
    ));
    ExtAuthzService::new(authorizer, config.credential_headers())
}

/// Heap allocations counted over the measured calls.
#[derive(Debug, Default)]
struct Allocations {
    total: usize,
    /// Calls that allocated at all.
    calls: usize,
}

impl Allocations {
    fn add(&mut self, count: usize) {
        self.total += count;
        self.calls += usize::from(count > 0);
    }
}

struct Latency {
    p50: u64,
    p90: u64,
    p99: u64,
}

impl Latency {
    fn of(mut nanos: Vec<u64>) -> Self {
        nanos.sort_unstable();
        let at = |q: f64| nanos[((nanos.len() - 1) as f64 * q) as usize];
        Self {
            p50: at(0.5),
            p90: at(0.9),
            p99: at(0.99),
        }
    }
}

impl std::fmt::Display for Latency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "median {} ns, p90 {} ns, p99 {} ns",
            self.p50, self.p90, self.p99
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zipf_probes_favour_the_first_ranks() {
        let probes = zipf_probes(1000, 100_000);
        let first = probes.iter().filter(|&&p| p == 0).count();
        let tenth = probes.iter().filter(|&&p| p == 9).count();
        assert!(probes.iter().all(|&p| p < 1000));
        // P(1) / P(10) = 10^1.1 ≈ 12.6.
        assert!(first > 8 * tenth, "{first} vs {tenth}");
    }
}
