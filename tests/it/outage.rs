//! Behaviour while PostgreSQL is unreachable, with the connection cut by a
//! proxy in the test (the shared server keeps running): hits are answered,
//! misses fail fast with UNAVAILABLE, KeyAdmin says UNAVAILABLE, usage stays
//! buffered, and everything recovers without a restart.

use crate::common;

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use common::{
    check_request, eventually, process::KeygateProcess, proxy::CuttableProxy, Backend, Decision,
    TestDb, TestServer,
};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use keygate::proto::{key_admin_client::KeyAdminClient, CreateKeyRequest, GetKeyRequest};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_postgres_is_unreachable_hits_are_answered_misses_fail_fast_and_everything_recovers()
{
    let db = TestDb::new(Backend::Postgres).await;
    let proxy = CuttableProxy::start("127.0.0.1:5432".parse().unwrap()).await;
    let url = proxy.postgres_url(&db.url);
    let server = TestServer::start_on(db, |s| {
        s.database_url = Some(url);
        s.usage_flush_interval = Some("100ms".into());
        s.check_timeout = Some("100ms".into());
    })
    .await;
    let cached = server.create_key("acme", &[]).await;
    let uncached = server.create_key("acme", &[]).await;
    let headers = HashMap::from([(
        "authorization".to_string(),
        format!("Bearer {}", cached.key),
    )]);
    let warm = check_request(headers, "GET", "/", HashMap::new());
    // The first miss may need a fresh connection; under load that can take
    // longer than the Check bound, which is UNAVAILABLE by design.
    assert!(
        eventually(Duration::from_secs(10), async || server
            .check(warm.clone())
            .await
            .is_ok_and(|d| d.code == "allowed"))
        .await
    );

    proxy.cut();
    for _ in 0..10 {
        assert_eq!(
            server.check_key(&cached.key, None).await.code,
            "allowed",
            "a cache hit must not need the store"
        );
    }
    let allowed_during_outage = 10;
    let headers = HashMap::from([(
        "authorization".to_string(),
        format!("Bearer {}", uncached.key),
    )]);
    let started = Instant::now();
    let miss = server
        .check(check_request(headers, "GET", "/", HashMap::new()))
        .await
        .unwrap_err();
    let waited = started.elapsed();
    assert_eq!(miss.code(), tonic::Code::Unavailable, "{miss:?}");
    // Forward-auth answers the same miss with 503, within the same bound.
    let started = Instant::now();
    let http_miss = common::http::forward_auth(
        server.running().forward_auth_addr,
        "/",
        &[("x-api-key", uncached.key.as_bytes())],
    )
    .await;
    assert_eq!(
        (http_miss.status, http_miss.code().as_str()),
        (503, "unavailable")
    );
    assert!(started.elapsed() < Duration::from_secs(1));
    // The Check bound is 100 ms; Envoy's own timeout is 200 ms.
    assert!(
        waited < Duration::from_secs(1),
        "a miss took {waited:?} to fail"
    );

    let admin_error = server
        .admin
        .clone()
        .create_key(CreateKeyRequest {
            owner_id: "acme".into(),
            name: "during outage".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        admin_error.code(),
        tonic::Code::Unavailable,
        "{admin_error:?}"
    );

    proxy.restore();
    assert!(
        eventually(Duration::from_secs(15), async || server
            .check_key(&uncached.key, None)
            .await
            .code
            == "allowed")
        .await,
        "Check did not recover after the database came back"
    );
    // The allowed checks of the cached key were buffered during the outage
    // and written once the store returned.
    let id = cached.api_key.unwrap().id;
    let flushed = eventually(Duration::from_secs(15), async || {
        let key = server
            .admin
            .clone()
            .get_key(GetKeyRequest {
                owner_id: "acme".into(),
                id: id.clone(),
            })
            .await;
        key.is_ok_and(|k| k.into_inner().request_count == 1 + allowed_during_outage)
    })
    .await;
    assert!(
        flushed,
        "usage buffered during the outage was not flushed after recovery"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_postgres_at_start_is_named_as_the_cause() {
    let nobody = common::process::free_addr();
    let settings = keygate::config::Settings {
        database_url: Some(format!("postgres://postgres@{nobody}/keygate")),
        authz_addr: Some("127.0.0.1:0".into()),
        admin_addr: Some("127.0.0.1:0".into()),
        ..Default::default()
    };
    let started = keygate::app::start(settings.validate().unwrap()).await;
    let error = format!("{:#}", started.err().expect("no database, no start"));
    assert!(error.contains("refused"), "{error}");
}

/// Stale-if-error (README, "Operations", database outage): an outage three times
/// the cache TTL long must not take cached keys down with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_three_times_the_cache_ttl_keeps_cached_keys_answered() {
    const TTL: Duration = Duration::from_secs(1);
    let db = TestDb::new(Backend::Postgres).await;
    let proxy = CuttableProxy::start("127.0.0.1:5432".parse().unwrap()).await;
    let url = proxy.postgres_url(&db.url);
    let server = TestServer::start_on(db, |s| {
        s.database_url = Some(url);
        s.cache_ttl = Some("1s".into());
        s.check_timeout = Some("100ms".into());
    })
    .await;
    let cached = server.create_key("acme", &[]).await;
    let uncached = server.create_key("acme", &[]).await;
    let check = |key: &str| {
        let headers = HashMap::from([("authorization".to_string(), format!("Bearer {key}"))]);
        server.check(check_request(headers, "GET", "/", HashMap::new()))
    };
    assert!(
        eventually(Duration::from_secs(10), async || check(&cached.key)
            .await
            .is_ok_and(|d| d.code == "allowed"))
        .await
    );

    proxy.cut();
    let outage = Instant::now();
    let mut hits = 0;
    while outage.elapsed() < 3 * TTL {
        let decision = check(&cached.key).await;
        assert!(
            decision.as_ref().is_ok_and(|d| d.code == "allowed"),
            "a cached key failed {:?} into a store outage: {decision:?}",
            outage.elapsed()
        );
        hits += 1;
        let started = Instant::now();
        let miss = check(&uncached.key).await.unwrap_err();
        assert_eq!(miss.code(), tonic::Code::Unavailable, "{miss:?}");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "a miss took {:?} to fail",
            started.elapsed()
        );
    }
    assert!(hits > 3, "only {hits} checks were made during the outage");

    proxy.restore();
    assert!(
        eventually(Duration::from_secs(15), async || check(&uncached.key)
            .await
            .is_ok_and(|d| d.code == "allowed"))
        .await,
        "Check did not recover after the database came back"
    );
}

/// Usage events are bounded in what they hold and in bytes (README,
/// "Usage tracking and pruning"): Checks with 1 MB paths while the store is away, so nothing is
/// flushed, must not grow the process by their size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_huge_paths_during_an_outage_keeps_memory_bounded() {
    const FLOOD: usize = 300;
    const PATH_BYTES: usize = 1 << 20;
    const BOUND: u64 = 64 << 20;
    let db = TestDb::new(Backend::Postgres).await;
    let proxy = CuttableProxy::start("127.0.0.1:5432".parse().unwrap()).await;
    let process = KeygateProcess::spawn(&proxy.postgres_url(&db.url), &[]).await;
    let admin = KeyAdminClient::new(common::channel(process.admin_addr).await);
    let authz = AuthorizationClient::new(common::channel(process.authz_addr).await);
    let key = admin
        .clone()
        .create_key(CreateKeyRequest {
            owner_id: "acme".into(),
            name: "flooded".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .key;
    let request = |path: &str| {
        let headers = HashMap::from([("authorization".to_string(), format!("Bearer {key}"))]);
        check_request(headers, "GET", path, HashMap::new())
    };
    let decision = authz.clone().check(request("/warm")).await.unwrap();
    assert_eq!(Decision::of(decision.into_inner()).code, "allowed");

    proxy.cut();
    let before = process.rss_bytes();
    let path = format!("/v1/{}", "a/".repeat(PATH_BYTES / 2));
    let flood = (0..4).map(|_| {
        let (mut authz, request) = (authz.clone(), request(&path));
        tokio::spawn(async move {
            for _ in 0..FLOOD / 4 {
                let decision = authz.check(request.clone()).await.unwrap().into_inner();
                assert_eq!(Decision::of(decision).code, "allowed");
            }
        })
    });
    for task in flood {
        task.await.unwrap();
    }
    let grown = process.rss_bytes().saturating_sub(before);
    assert!(
        grown < BOUND,
        "{FLOOD} Checks with {PATH_BYTES}-byte paths grew RSS by {} MiB during an outage",
        grown >> 20
    );
}
