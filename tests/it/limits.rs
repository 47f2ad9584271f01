//! Limits that hold across replicas (docs/behaviour.md, "Rate limits" and
//! "Credits"): real `keygate serve` processes on one PostgreSQL database,
//! sharing the real Redis on 127.0.0.1:6379 (scripts/test.sh starts it).
//! Every test writes under its own Redis key prefix, so tests run at once.

use crate::common;

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use common::{
    check_request, eventually, http::forward_auth, proxy::CuttableProxy, replica::Replica, Backend,
    Decision, TestDb, TestServer,
};
use keygate::proto::{CreateKeyRequest, Credits, GetKeyRequest, RateLimit, UpdateKeyRequest};

const REDIS: &str = "127.0.0.1:6379";

/// A Redis key prefix no other test uses.
fn fresh_prefix() -> String {
    format!("keygate-test:{}:", uuid::Uuid::new_v4())
}

/// Fails loudly when the suite's Redis is not there: these tests are never
/// skipped.
fn redis_connection() -> redis::Connection {
    redis::Client::open(format!("redis://{REDIS}"))
        .and_then(|client| client.get_connection())
        .unwrap_or_else(|e| {
            panic!("Redis is not reachable on {REDIS} ({e}); scripts/test.sh starts it")
        })
}

/// A replica's settings for limits kept in the Redis at `store`, under
/// `prefix`, waiting `timeout` for each decision.
fn shared_limits<'a>(
    store: &'a str,
    timeout: &'a str,
    prefix: &'a str,
) -> [(&'static str, &'a str); 3] {
    [
        ("KEYGATE_RATE_LIMIT_STORE", store),
        ("KEYGATE_RATE_LIMIT_TIMEOUT", timeout),
        ("KEYGATE_RATE_LIMIT_PREFIX", prefix),
    ]
}

fn limited_key(owner: &str, max_attempts: u32, decay_seconds: u32) -> CreateKeyRequest {
    CreateKeyRequest {
        owner_id: owner.into(),
        name: "limited".into(),
        rate_limit: Some(RateLimit {
            max_attempts,
            decay_seconds,
        }),
        ..Default::default()
    }
}

/// Sends `total` Checks for `key` spread round-robin over `replicas`,
/// `concurrency` at a time; returns how many were allowed. Every denial
/// must be `denial`.
async fn spread_load(
    replicas: &[Replica],
    key: &str,
    total: usize,
    concurrency: usize,
    denial: &'static str,
) -> usize {
    let clients: Vec<_> = replicas.iter().map(|r| r.authz.clone()).collect();
    let next = Arc::new(AtomicU64::new(0));
    let allowed = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (clients, next, allowed) = (clients.clone(), next.clone(), allowed.clone());
        let headers = HashMap::from([("authorization".to_string(), format!("Bearer {key}"))]);
        let request = check_request(headers, "GET", "/", HashMap::new());
        workers.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed) as usize;
                if n >= total {
                    return;
                }
                let mut client = clients[n % clients.len()].clone();
                let decision =
                    Decision::of(client.check(request.clone()).await.unwrap().into_inner());
                match decision.code.as_str() {
                    "allowed" => {
                        allowed.fetch_add(1, Ordering::Relaxed);
                    }
                    code if code == denial => {}
                    other => panic!("unexpected decision {other}"),
                }
            }
        }));
    }
    for worker in workers {
        worker.await.unwrap();
    }
    allowed.load(Ordering::Relaxed) as usize
}

/// The accuracy docs/behaviour.md states: three replicas under load spread
/// over all of them allow the limit once, within 2 %.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_sharing_redis_allow_a_key_its_limit_once_not_three_times() {
    drop(redis_connection());
    let db = TestDb::new(Backend::Postgres).await;
    let prefix = fresh_prefix();
    let store = format!("redis://{REDIS}");
    // Generous: this test is about the count, not the fallback, and a loaded
    // machine must not push decisions to the local limiters.
    let env = shared_limits(&store, "2s", &prefix);
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(Replica::start(&db.url, &env).await);
    }
    // 300 per hour: one request in 12 s comes back, so a load lasting a few
    // seconds may see one more at most.
    const LIMIT: usize = 300;
    let (key, _) = replicas[0]
        .create(limited_key("acme", LIMIT as u32, 3600))
        .await;
    let first = replicas[1].check(&key).await.unwrap();
    assert_eq!(first.code, "allowed");
    assert_eq!(
        first
            .response_headers
            .get("x-ratelimit-remaining")
            .map(String::as_str),
        Some("299"),
        "{first:?}"
    );
    let allowed = 1 + spread_load(&replicas, &key, 3 * LIMIT, 24, "rate_limited").await;
    let error = (allowed as f64 - LIMIT as f64) / LIMIT as f64;
    eprintln!(
        "3 replicas, limit {LIMIT}: {allowed} allowed of {} ({:+.2} %)",
        3 * LIMIT + 1,
        error * 100.0
    );
    assert!(
        error.abs() <= 0.02,
        "{allowed} allowed for a limit of {LIMIT} across three replicas"
    );
    for replica in &replicas {
        assert_eq!(
            replica.metric("keygate_rate_limit_fallbacks_total"),
            0.0,
            "a decision fell back to a local limiter:\n{}",
            replica.process.logs()
        );
    }

    // The same headers on forward-auth, from any replica.
    let bearer = format!("Bearer {key}");
    let denied = forward_auth(
        replicas[2].process.forward_auth_addr,
        "/",
        &[("authorization", bearer.as_bytes())],
    )
    .await;
    assert_eq!(denied.status, 429);
    assert_eq!(denied.code(), "rate_limited");
    let retry_after: u64 = denied.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=12).contains(&retry_after), "Retry-After {retry_after}");
}

/// The limiter's script takes a batch (the decisions that arrived together
/// at one replica) as it would take the same decisions one call each: in
/// order, a key asked for again within the batch seeing its own earlier
/// decisions, keys independent of each other.
#[test]
fn a_batch_of_decisions_is_decided_as_the_same_decisions_one_by_one() {
    let mut direct = redis_connection();
    let prefix = fresh_prefix();
    let script = redis::Script::new(include_str!("../../src/ratelimit/gcra.lua"));
    let (a, b) = (format!("{prefix}a"), format!("{prefix}b"));
    // Limit 3 per hour: 1,200 s between requests, in microseconds.
    let interval = "1200000000";
    let batch = [&a, &a, &b, &a, &a, &b];
    let mut invocation = script.prepare_invoke();
    for state in batch {
        invocation.key(state.as_str());
    }
    for _ in batch {
        invocation.arg(interval).arg(3);
    }
    let together: Vec<i64> = invocation.invoke(&mut direct).expect("the batch");
    let decisions: Vec<(i64, i64)> = together.chunks(3).map(|v| (v[0], v[1])).collect();
    assert_eq!(
        decisions,
        [(1, 2), (1, 1), (1, 2), (1, 0), (0, 0), (1, 1)],
        "(allowed, remaining) per decision"
    );
    // Limited: one request's interval, exactly, since the batch reads
    // Redis's clock once.
    assert_eq!(
        together[4 * 3 + 2],
        1_200_000_000,
        "the limited decision's wait in µs"
    );
    // What the batch wrote is what single calls continue from.
    let next: Vec<i64> = script
        .key(b.as_str())
        .arg(interval)
        .arg(3)
        .invoke(&mut direct)
        .expect("one more for b");
    assert_eq!(&next[..2], [1, 0]);
    let ttl: i64 = redis::cmd("PTTL").arg(&a).query(&mut direct).unwrap();
    assert!(
        (3_500_000..=3_600_000).contains(&ttl),
        "a's state expires when its allowance is full again, not {ttl} ms"
    );
}

/// A Redis that forgot the limiter's script (restarted, failed over, or
/// `SCRIPT FLUSH`ed) is given it again: the next Check is still decided by
/// Redis, on the state it kept, with no fallback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_lost_the_script_is_given_it_again_without_a_fallback() {
    let mut direct = redis_connection();
    let db = TestDb::new(Backend::Sqlite).await;
    let prefix = fresh_prefix();
    let store = format!("redis://{REDIS}");
    let env = shared_limits(&store, "2s", &prefix);
    let replica = Replica::start(&db.url, &env).await;
    let (key, _) = replica.create(limited_key("acme", 5, 3600)).await;
    let remaining = |decision: &Decision| {
        assert_eq!(decision.code, "allowed", "{decision:?}");
        decision.response_headers["x-ratelimit-remaining"].clone()
    };
    assert_eq!(remaining(&replica.check(&key).await.unwrap()), "4");
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query(&mut direct)
        .expect("SCRIPT FLUSH");
    assert_eq!(remaining(&replica.check(&key).await.unwrap()), "3");
    assert_eq!(
        replica.metric("keygate_rate_limit_fallbacks_total"),
        0.0,
        "{}",
        replica.process.logs()
    );
}

/// Redis cut mid-load (a proxy the test controls): every Check still gets
/// an answer within the timeout, from the local limiter, the fallback is
/// counted and logged once, and Redis decides again once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn checks_fall_back_to_local_limits_while_redis_is_cut_and_shared_limits_resume() {
    let mut direct = redis_connection();
    let db = TestDb::new(Backend::Postgres).await;
    let proxy = CuttableProxy::start(REDIS.parse::<SocketAddr>().unwrap()).await;
    let prefix = fresh_prefix();
    let store = format!("redis://{}", proxy.addr);
    let env = shared_limits(&store, "100ms", &prefix);
    let a = Arc::new(Replica::start(&db.url, &env).await);
    let b = Replica::start(&db.url, &env).await;
    let (key, id) = a.create(limited_key("acme", 3, 3600)).await;
    let state = format!("{prefix}rl:{id}:3:3600");
    // Shared: three allowed in all, whichever replica is asked.
    assert_eq!(a.code(&key).await, "allowed");
    assert_eq!(b.code(&key).await, "allowed");
    assert_eq!(a.code(&key).await, "allowed");
    assert_eq!(b.code(&key).await, "rate_limited");
    assert_eq!(a.code(&key).await, "rate_limited");

    // Load on A across the cut: no Check fails, none waits much past the timeout.
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (a, key, stop) = (a.clone(), key.clone(), stop.clone());
        tokio::spawn(async move {
            let mut slowest = Duration::ZERO;
            let mut codes = HashMap::<String, u64>::new();
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let decision = a.check(&key).await.expect("a Check failed during the cut");
                slowest = slowest.max(started.elapsed());
                *codes.entry(decision.code).or_default() += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (slowest, codes)
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    proxy.cut();
    assert!(
        eventually(Duration::from_secs(10), async || {
            a.metric("keygate_rate_limit_redis_up") == 0.0
        })
        .await,
        "A did not notice that Redis was cut:\n{}",
        a.process.logs()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let (slowest, codes) = load.await.unwrap();
    eprintln!("during the cut: slowest Check {slowest:?}, decisions {codes:?}");
    assert!(
        slowest < Duration::from_secs(2),
        "a Check waited {slowest:?} for a cut Redis"
    );
    // The local limiter: three more on A (its own allowance), then limited.
    assert_eq!(codes.get("allowed"), Some(&3), "{codes:?}");
    assert!(a.metric("keygate_rate_limit_fallbacks_total") >= 1.0);

    // B has counted nothing locally: its first Checks after the cut come
    // from its own local limiter.
    assert_eq!(b.code(&key).await, "allowed");

    proxy.restore();
    // Redis decides again: with its state cleared the key is allowed on A,
    // whose local limiter would say rate_limited.
    let resumed = eventually(Duration::from_secs(15), async || {
        let _: () = redis::cmd("DEL").arg(&state).query(&mut direct).unwrap();
        a.code(&key).await == "allowed"
    })
    .await;
    assert!(
        resumed,
        "Redis limits did not resume on A:\n{}",
        a.process.logs()
    );
    assert_eq!(a.metric("keygate_rate_limit_redis_up"), 1.0);
    let logs = a.process.logs();
    assert_eq!(
        logs.matches("Redis is unavailable").count(),
        1,
        "the outage is logged once:\n{logs}"
    );
    assert_eq!(logs.matches("Redis answers again").count(), 1, "{logs}");
}

/// Credits leased 50 at a time in these tests: the crash bound.
const LEASE: &str = "50";

fn credited_key(owner: &str, remaining: u64) -> CreateKeyRequest {
    CreateKeyRequest {
        owner_id: owner.into(),
        name: "credited".into(),
        credits: Some(Credits {
            remaining,
            ..Default::default()
        }),
        ..Default::default()
    }
}

impl Replica {
    /// Credits not leased by any replica, as KeyAdmin reports them.
    async fn remaining(&self, owner: &str, id: &str) -> u64 {
        self.admin
            .clone()
            .get_key(GetKeyRequest {
                owner_id: owner.into(),
                id: id.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .credits
            .expect("the key has credits")
            .remaining
    }
}

async fn credit_replicas(db: &TestDb, n: usize) -> Vec<Replica> {
    let mut replicas = Vec::new();
    for _ in 0..n {
        replicas.push(Replica::start(&db.url, &[("KEYGATE_CREDIT_LEASE", LEASE)]).await);
    }
    replicas
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_racing_a_key_with_1000_credits_allow_exactly_1000() {
    let db = TestDb::new(Backend::Postgres).await;
    let replicas = credit_replicas(&db, 3).await;
    let (key, id) = replicas[0].create(credited_key("acme", 1000)).await;
    let allowed = spread_load(&replicas, &key, 1600, 24, "credits_exhausted").await;
    eprintln!("3 replicas, 1000 credits: {allowed} allowed of 1600");
    assert_eq!(allowed, 1000);
    assert_eq!(replicas[1].remaining("acme", &id).await, 0);
    let denied = replicas[2].check(&key).await.unwrap();
    assert_eq!(
        (denied.status, denied.code.as_str()),
        (429, "credits_exhausted")
    );
}

/// SIGTERM gives the unspent lease back; SIGKILL loses at most the one
/// lease the replica held (the bound the README states).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_graceful_stop_returns_the_unspent_lease_and_a_crash_loses_at_most_one() {
    let db = TestDb::new(Backend::Postgres).await;
    let mut replicas = credit_replicas(&db, 3).await;
    let (key, id) = replicas[0].create(credited_key("acme", 1000)).await;
    let survivor = replicas.pop().unwrap();
    let crashing = replicas.pop().unwrap();
    let stopping = replicas.pop().unwrap();

    assert_eq!(stopping.code(&key).await, "allowed");
    assert_eq!(
        survivor.remaining("acme", &id).await,
        950,
        "one lease of 50 taken"
    );
    let (status, logs) = stopping.process.terminate().await;
    assert!(status.success(), "{logs}");
    assert_eq!(
        survivor.remaining("acme", &id).await,
        999,
        "SIGTERM did not return the 49 unspent credits:\n{logs}"
    );

    assert_eq!(crashing.code(&key).await, "allowed");
    assert_eq!(crashing.code(&key).await, "allowed");
    drop(crashing); // SIGKILL
    let after_crash = survivor.remaining("acme", &id).await;
    let lost = 999 - 2 - after_crash;
    eprintln!("SIGKILL lost {lost} credits (bound: one lease, {LEASE})");
    assert!(
        lost <= LEASE.parse().unwrap(),
        "a crash lost {lost} credits"
    );
    assert_eq!(after_crash, 949);
}

/// Credits set anew through KeyAdmin void the leases replicas hold: the
/// new number is what can be spent, across replicas.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn setting_credits_anew_voids_the_leases_other_replicas_hold() {
    let db = TestDb::new(Backend::Postgres).await;
    let replicas = credit_replicas(&db, 2).await;
    let (a, b) = (&replicas[0], &replicas[1]);
    let (key, id) = a.create(credited_key("acme", 1000)).await;
    assert_eq!(a.code(&key).await, "allowed"); // A holds 49 credits.
    let heard_before = a.metric("keygate_invalidations_total");
    let updated = b
        .admin
        .clone()
        .update_key(UpdateKeyRequest {
            owner_id: "acme".into(),
            id: id.clone(),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["credits".into()],
            }),
            credits: Some(Credits {
                remaining: 2,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.credits.unwrap().remaining, 2);
    assert!(
        eventually(Duration::from_secs(5), async || {
            a.metric("keygate_invalidations_total") > heard_before
        })
        .await,
        "A never heard of the update"
    );
    let mut allowed = 0;
    for replica in [a, b, a, b, a, b] {
        if replica.code(&key).await == "allowed" {
            allowed += 1;
        }
    }
    assert_eq!(allowed, 2, "credits set to 2, yet {allowed} allowed");
    assert_eq!(a.remaining("acme", &id).await, 0);
}

/// Refill: `remaining` goes back to the refill amount every interval, and
/// within one interval no more than that is spent.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn credits_refill_every_interval() {
    let db = TestDb::new(Backend::Postgres).await;
    let replicas = credit_replicas(&db, 2).await;
    let mut request = credited_key("acme", 1);
    request.credits = Some(Credits {
        remaining: 1,
        refill_amount: 3,
        refill_interval_seconds: 2,
    });
    let (key, _) = replicas[0].create(request).await;
    assert_eq!(replicas[0].code(&key).await, "allowed");
    assert_eq!(replicas[1].code(&key).await, "credits_exhausted");
    assert_eq!(replicas[0].code(&key).await, "credits_exhausted");
    let refilled = Instant::now();
    // The first Check of the new period on either replica.
    assert!(
        eventually(Duration::from_secs(6), async || {
            replicas[1].code(&key).await == "allowed"
        })
        .await,
        "no refill within three intervals"
    );
    eprintln!("refilled after {:?}", refilled.elapsed());
    let mut allowed = 1;
    for replica in replicas.iter().cycle().take(8) {
        if replica.code(&key).await == "allowed" {
            allowed += 1;
        }
    }
    assert_eq!(allowed, 3, "a refill of 3 allowed {allowed}");
}

// Credits through both admin surfaces, and spent by Check and forward-auth
// alike; a graceful stop returns the unspent lease.
on_both_backends! {
    async fn credits_are_set_read_and_spent_through_every_surface(backend) {
        let mut server = TestServer::start_with(backend, |s| s.credit_lease = Some(5)).await;
        // Restarted on the same database below.
        let created = server.create(credited_key("acme", 3)).await;
        let (key, id) = (created.key, created.api_key.unwrap().id);
        assert_eq!(server.check_key(&key, None).await.code, "allowed");
        let bearer = format!("Bearer {key}");
        let via_http = forward_auth(
            server.running().forward_auth_addr,
            "/",
            &[("authorization", bearer.as_bytes())],
        )
        .await;
        assert_eq!(via_http.status, 200);
        assert_eq!(server.check_key(&key, None).await.code, "allowed");
        let denied = server.check_key(&key, None).await;
        assert_eq!((denied.status, denied.code.as_str()), (429, "credits_exhausted"));
        let via_http = forward_auth(
            server.running().forward_auth_addr,
            "/",
            &[("authorization", bearer.as_bytes())],
        )
        .await;
        assert_eq!((via_http.status, via_http.code()), (429, "credits_exhausted".to_owned()));

        // REST: read, then set anew with a refill; the lease held is void.
        let base = format!("http://{}/v1/api-keys/{id}?owner_id=acme", server.running().http_addr);
        let http = reqwest::Client::new();
        let got: serde_json::Value = http.get(&base).send().await.unwrap().json().await.unwrap();
        assert_eq!(got["data"]["credits"]["remaining"], 0, "{got}");
        let patched = http
            .patch(&base)
            .json(&serde_json::json!({"credits": {"remaining": 7, "refill_amount": 7, "refill_interval_seconds": 3600}}))
            .send()
            .await
            .unwrap();
        assert_eq!(patched.status(), 200);
        let patched: serde_json::Value = patched.json().await.unwrap();
        assert_eq!(patched["data"]["credits"]["refill_amount"], 7, "{patched}");
        assert_eq!(server.check_key(&key, None).await.code, "allowed");
        // A lease of 5 taken, one spent: 2 left unleased until the stop
        // returns the other 4.
        let remaining = |server: &TestServer| {
            let (admin, id) = (server.admin.clone(), id.clone());
            async move {
                admin
                    .clone()
                    .get_key(GetKeyRequest { owner_id: "acme".into(), id })
                    .await
                    .unwrap()
                    .into_inner()
                    .credits
                    .unwrap()
                    .remaining
            }
        };
        assert_eq!(remaining(&server).await, 2);
        let bad = http
            .patch(&base)
            .json(&serde_json::json!({"credits": {"remaining": 1, "refill_amount": 5}}))
            .send()
            .await
            .unwrap();
        assert_eq!(bad.status(), 422);
        server.stop().await;

        let server = TestServer::start_on(server.db, |_| {}).await;
        assert_eq!(remaining(&server).await, 6, "the stop did not return the 4 unspent credits");
        // Removing credits makes the key unlimited again.
        let removed = server
            .admin
            .clone()
            .update_key(UpdateKeyRequest {
                owner_id: "acme".into(),
                id: id.clone(),
                update_mask: Some(prost_types::FieldMask { paths: vec!["credits".into()] }),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(removed.credits, None);
        for _ in 0..10 {
            assert_eq!(server.check_key(&key, None).await.code, "allowed");
        }
    }
}
