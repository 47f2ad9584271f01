//! The in-process Check decision path with a million keys cached: parse +
//! hash + cache hit + decide + response build, through
//! `ExtAuthzService::decide` exactly as the gRPC handler calls it (the gRPC
//! transport itself is `keygate-bench check`'s business), then the response
//! written out as the transport would.
//!
//! The hit benchmark cycles through 10,000 of the cached keys by writing
//! the next key into one request's `authorization` header (that copy is
//! measured too): a served request has just been decoded and is in the CPU
//! cache, while the key's cache entry generally is not. Cycling through
//! 10,000 prebuilt requests instead would add their cache misses, which no
//! server pays.
//!
//! The service is assembled as `app::start` does, from the default
//! configuration, except the cache TTL (an hour: the default minute would
//! expire the entries while Criterion is still measuring), usage (`None`:
//! the buffer is a `try_send`, measured end to end by `keygate-bench`) and no
//! metrics recorder (counters are no-ops here, atomics in `serve`).
//!
//! Two more benchmarks split the hit: `cache/lookup_hit` is
//! `KeyCache::lookup` alone over the same probes (moka's `get` plus the
//! invalidation check), and `cache/plain_hashmap_reference` is a
//! `std::collections::HashMap` holding the same million keys, probed the
//! same way: a reference point for a lookup among a million entries on
//! this machine, for comparison only (it has no TTL, bound, eviction or
//! concurrency).
//!
//!     cargo bench --bench decision_path
//!     KEYGATE_BENCH_KEYS=100000 cargo bench --bench decision_path   # quicker setup

use std::{
    collections::HashMap,
    hint::black_box,
    sync::Arc,
    time::{Duration, Instant},
};

use criterion::{criterion_group, criterion_main, Criterion};
use envoy_types::ext_authz::v3::pb::{CheckRequest, HttpResponse};
use keygate::{
    authz::Authorizer,
    cache::{CacheSettings, KeyCache},
    config::Settings,
    domain::{CheckKey, KeyHash},
    grpc::ext_authz::ExtAuthzService,
    ratelimit::RateLimiters,
    store::{Store, StoreOptions},
};
use uuid::Uuid;

#[path = "support/check_fixture.rs"]
mod check_fixture;

use check_fixture::{check_key, check_request, set_authorization};

const DEFAULT_KEYS: usize = 1_000_000;
/// Distinct valid keys the hit benchmark cycles through, spread over the
/// whole cache so that lookups are not all served from one hot entry.
const PROBES: usize = 10_000;

struct Fixture {
    runtime: tokio::runtime::Runtime,
    service: ExtAuthzService,
    cache: Arc<KeyCache>,
    valid: Vec<String>,
    /// The hashes of `valid`, in the same order.
    probe_hashes: Vec<KeyHash>,
    /// The same keys as the cache, in a plain map (see the module header).
    reference: HashMap<KeyHash, Arc<CheckKey>>,
    revoked: CheckRequest,
    malformed: CheckRequest,
    // Keeps the SQLite file alive for the fixture's lifetime.
    _dir: tempfile::TempDir,
}

fn fixture() -> Fixture {
    let keys: usize = std::env::var("KEYGATE_BENCH_KEYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_KEYS);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let config = Settings::default().validate().expect("default settings");
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("bench.db").display());

    let (service, cache, valid, probe_hashes, reference, revoked, malformed) =
        runtime.block_on(async {
            let store = Store::connect(&StoreOptions::new(url))
                .await
                .expect("store");
            store.migrate().await.expect("migrate");
            let cache = Arc::new(KeyCache::new(
                store,
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
            let stride = (keys / PROBES).max(1);
            let mut valid = Vec::with_capacity(PROBES);
            let mut probe_hashes = Vec::with_capacity(PROBES);
            let mut reference = HashMap::with_capacity(keys);
            for i in 0..keys {
                let issued = config.key_format.generate("live");
                let id = Uuid::from_u128(i as u128 + 1);
                let key = check_key(id, issued.key_prefix, false);
                reference.insert(issued.hash, Arc::new(key.clone()));
                cache.insert_for_bench(issued.hash, key).await;
                if i % stride == 0 && valid.len() < PROBES {
                    valid.push(format!("Bearer {}", issued.plaintext.expose()));
                    probe_hashes.push(issued.hash);
                }
            }
            let issued = config.key_format.generate("live");
            cache
                .insert_for_bench(
                    issued.hash,
                    check_key(Uuid::new_v4(), issued.key_prefix, true),
                )
                .await;
            let revoked = check_request(issued.plaintext.expose());
            let mut bad = config.key_format.generate("live").plaintext.into_exposed();
            let last = bad.pop().expect("non-empty key");
            bad.push(if last == 'z' { 'y' } else { 'z' });
            let malformed = check_request(&bad);
            cache.run_pending_tasks().await;
            eprintln!(
                "decision_path: {} keys cached in {:.1?}",
                cache.entry_count(),
                started.elapsed()
            );

            let authorizer = Arc::new(Authorizer::new(
                config.authz_settings(),
                cache.clone(),
                Arc::new(RateLimiters::new(1_000_000)),
                None,
            ));
            let service = ExtAuthzService::new(authorizer, config.credential_headers());
            (
                service,
                cache,
                valid,
                probe_hashes,
                reference,
                revoked,
                malformed,
            )
        });
    Fixture {
        runtime,
        service,
        cache,
        valid,
        probe_hashes,
        reference,
        revoked,
        malformed,
        _dir: dir,
    }
}

/// HTTP status and code of a decision, to check each benchmark measures
/// the path it is named after.
fn decision(fixture: &Fixture, request: &CheckRequest) -> (i32, String) {
    let response = fixture
        .runtime
        .block_on(fixture.service.decide(request))
        .expect("decide")
        .decode();
    match response.http_response {
        Some(HttpResponse::OkResponse(_)) => (200, String::new()),
        Some(HttpResponse::DeniedResponse(denied)) => (
            denied.status.map_or(0, |s| s.code),
            response.status.unwrap_or_default().message,
        ),
        _ => (0, String::new()),
    }
}

/// Times `iterations` decisions, each followed by writing the response's
/// wire bytes as the transport would (into a buffer reused throughout).
/// `next` prepares the request for an iteration (the hit benchmark writes
/// the next key into it), and is timed too.
fn time_decisions(
    fixture: &Fixture,
    mut request: CheckRequest,
    iterations: u64,
    mut next: impl FnMut(&mut CheckRequest, u64),
) -> Duration {
    fixture.runtime.block_on(async {
        let mut buffer = Vec::with_capacity(4096);
        let started = Instant::now();
        for i in 0..iterations {
            next(&mut request, i);
            let response = fixture
                .service
                .decide(black_box(&request))
                .await
                .expect("decide");
            buffer.clear();
            response.write(&mut buffer);
            black_box(buffer.len());
        }
        started.elapsed()
    })
}

fn decision_path(c: &mut Criterion) {
    let fixture = fixture();
    let mut request = check_request("");
    for authorization in &fixture.valid {
        set_authorization(&mut request, authorization);
        assert_eq!(decision(&fixture, &request).0, 200);
    }
    assert_eq!(
        decision(&fixture, &fixture.revoked),
        (401, "key_revoked".into())
    );
    assert_eq!(
        decision(&fixture, &fixture.malformed),
        (401, "malformed_key".into())
    );

    let mut group = c.benchmark_group("decide");
    group.bench_function("allowed_cache_hit", |b| {
        b.iter_custom(|iterations| {
            time_decisions(&fixture, request.clone(), iterations, |request, i| {
                let key = &fixture.valid[i as usize % fixture.valid.len()];
                set_authorization(request, key);
            })
        })
    });
    group.bench_function("denied_revoked_cache_hit", |b| {
        b.iter_custom(|iterations| {
            time_decisions(&fixture, fixture.revoked.clone(), iterations, |_, _| {})
        })
    });
    group.bench_function("denied_malformed", |b| {
        b.iter_custom(|iterations| {
            time_decisions(&fixture, fixture.malformed.clone(), iterations, |_, _| {})
        })
    });
    group.finish();

    let mut group = c.benchmark_group("cache");
    group.bench_function("lookup_hit", |b| {
        b.iter_custom(|iterations| {
            fixture.runtime.block_on(async {
                let started = Instant::now();
                for i in 0..iterations {
                    let hash = &fixture.probe_hashes[i as usize % fixture.probe_hashes.len()];
                    let hit = fixture.cache.lookup(black_box(hash)).await.expect("lookup");
                    black_box(hit.expect("cached").key.superkey);
                }
                started.elapsed()
            })
        })
    });
    group.bench_function("plain_hashmap_reference", |b| {
        b.iter_custom(|iterations| {
            let started = Instant::now();
            for i in 0..iterations {
                let hash = &fixture.probe_hashes[i as usize % fixture.probe_hashes.len()];
                let hit = fixture.reference.get(black_box(hash)).cloned();
                black_box(hit.expect("present").superkey);
            }
            started.elapsed()
        })
    });
    group.finish();
}

criterion_group!(benches, decision_path);
criterion_main!(benches);
