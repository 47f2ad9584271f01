//! The Check hot path against a real server and database: cache
//! single-flight, invalidation by KeyAdmin, races, and malformed input; the
//! same decision over the forward-auth listener (HTTP/1.1 and h2c).

use crate::common;

use std::{collections::HashMap, sync::Arc};

use common::{
    check_request,
    http::{forward_auth, ForwardAuthClient},
    Decision, TestServer,
};
use envoy_types::pb::envoy::{
    config::core::v3::{HeaderMap, HeaderValue},
    service::auth::v3::{AttributeContext, CheckRequest},
};
use keygate::{
    domain::{KeyFormat, KeyHash},
    proto::RevokeKeyRequest,
};

fn bearer(key: &str) -> HashMap<String, String> {
    HashMap::from([("authorization".to_string(), format!("Bearer {key}"))])
}

fn unissued_key() -> String {
    let format = KeyFormat::new("sk", &["live".into(), "test".into()], 32).unwrap();
    format.generate("live").plaintext.into_exposed()
}

/// Sends `count` identical Checks at once and returns their decisions.
async fn concurrent_checks(
    server: &TestServer,
    request: CheckRequest,
    count: usize,
) -> Vec<Decision> {
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..count {
        let mut client = server.authz.clone();
        let request = request.clone();
        calls.spawn(async move {
            Decision::of(client.check(request).await.expect("Check").into_inner())
        });
    }
    calls.join_all().await
}

on_both_backends! {
    async fn check_allows_a_fresh_key_and_denies_it_once_revoked(backend) {
        let server = TestServer::start(backend).await;
        let created = server.create_key("acme", &["read:orders"]).await;
        let id = created.api_key.as_ref().unwrap().id.clone();
        let allowed = server.check_key(&created.key, Some("read:orders")).await;
        assert_eq!(allowed.code, "allowed");
        assert_eq!(allowed.upstream_headers["x-keygate-owner-id"], "acme");
        server.admin.clone().revoke_key(RevokeKeyRequest { owner_id: "acme".into(), id, reason: "test".into() }).await.unwrap();
        // The revoke evicted this replica's cache before returning.
        let denied = server.check_key(&created.key, Some("read:orders")).await;
        assert_eq!((denied.status, denied.code.as_str()), (401, "key_revoked"));
    }

    async fn a_thousand_concurrent_misses_on_one_key_make_one_store_read(backend) {
        let server = TestServer::start(backend).await;
        let created = server.create_key("acme", &[]).await;
        let cache = server.running().cache.clone();
        let before = cache.store_reads();
        let request = check_request(bearer(&created.key), "GET", "/", HashMap::new());
        let decisions = concurrent_checks(&server, request, 1000).await;
        assert!(decisions.iter().all(|d| d.code == "allowed"), "{:?}", decisions.iter().find(|d| d.code != "allowed"));
        assert_eq!(cache.store_reads() - before, 1);
    }

    async fn concurrent_checks_of_an_unknown_key_make_one_store_read_and_are_negatively_cached(backend) {
        let server = TestServer::start(backend).await;
        let cache = server.running().cache.clone();
        let before = cache.store_reads();
        let request = check_request(bearer(&unissued_key()), "GET", "/", HashMap::new());
        let decisions = concurrent_checks(&server, request.clone(), 500).await;
        assert!(decisions.iter().all(|d| (d.status, d.code.as_str()) == (401, "invalid_key")));
        let again = server.check(request).await.unwrap();
        assert_eq!(again.code, "invalid_key");
        assert_eq!(cache.store_reads() - before, 1);
    }

    async fn unknown_keys_rarely_reach_the_store_and_new_keys_still_pass(backend) {
        let server = TestServer::start(backend).await;
        let known = server.create_key("acme", &[]).await;
        let cache = server.running().cache.clone();
        assert!(
            common::eventually(std::time::Duration::from_secs(10), async || cache.issued().is_trusted()).await,
            "the set of issued keys was never filled"
        );
        const UNKNOWN: usize = 200_000;
        let before = cache.store_reads();
        for n in 0..UNKNOWN {
            let hash = KeyHash::of_token(&format!("minted-{n}"));
            assert!(cache.lookup(&hash).await.unwrap().is_none());
        }
        let reads = cache.store_reads() - before;
        assert!(reads * 100 < UNKNOWN as u64, "{reads} of {UNKNOWN} unknown keys reached the store");
        eprintln!("{reads} of {UNKNOWN} unknown keys reached the store");
        let unknown = server.check(check_request(bearer(&unissued_key()), "GET", "/", HashMap::new())).await.unwrap();
        assert_eq!((unknown.status, unknown.code.as_str()), (401, "invalid_key"));
        assert_eq!(server.check_key(&known.key, None).await.code, "allowed");
        let fresh = server.create_key("acme", &[]).await;
        assert_eq!(server.check_key(&fresh.key, None).await.code, "allowed");
    }

    async fn malformed_input_gets_a_clear_denial_and_never_reads_the_store(backend) {
        let server = TestServer::start(backend).await;
        let cache = server.running().cache.clone();
        let before = cache.store_reads();
        let key = server.create_key("acme", &[]).await.key;
        let mut bad_checksum = key.clone().into_bytes();
        let last = bad_checksum.len() - 1;
        bad_checksum[last] = if bad_checksum[last] == b'2' { b'3' } else { b'2' };
        let bad_checksum = String::from_utf8(bad_checksum).unwrap();

        let many_headers: HashMap<String, String> = (0..10_000).map(|i| (format!("x-filler-{i}"), "v".repeat(10))).collect();
        let mut huge = bearer(&format!("sk_live_{}", "A".repeat(64 * 1024)));
        huge.insert("x-api-key".into(), "é".repeat(1000));
        let raw_not_utf8 = CheckRequest {
            attributes: Some(AttributeContext {
                request: Some(envoy_types::pb::envoy::service::auth::v3::attribute_context::Request {
                    http: Some(envoy_types::pb::envoy::service::auth::v3::attribute_context::HttpRequest {
                        header_map: Some(HeaderMap {
                            headers: vec![HeaderValue { key: "x-api-key".into(), raw_value: vec![0xff, 0xfe, b's', b'k'], ..Default::default() }],
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        };
        let cases: Vec<(&str, CheckRequest, &str)> = vec![
            ("empty request", CheckRequest::default(), "missing_credentials"),
            ("no http block", CheckRequest { attributes: Some(AttributeContext::default()) }, "missing_credentials"),
            ("10,000 headers", check_request(many_headers, "GET", "/", HashMap::new()), "missing_credentials"),
            ("64 KiB bearer", check_request(huge, "GET", "/", HashMap::new()), "malformed_key"),
            ("non-ASCII key", check_request(HashMap::from([("x-api-key".into(), "sk_live_ключ".into())]), "GET", "/", HashMap::new()), "malformed_key"),
            ("raw header not UTF-8", raw_not_utf8, "malformed_key"),
            ("bad checksum", check_request(bearer(&bad_checksum), "GET", "/", HashMap::new()), "malformed_key"),
            ("unknown environment", check_request(bearer(&key.replacen("sk_live_", "sk_prod_", 1)), "GET", "/", HashMap::new()), "malformed_key"),
            ("a JWT", check_request(bearer("eyJhbGciOiJIUzI1NiJ9.e30.sig"), "GET", "/", HashMap::new()), "missing_credentials"),
            ("basic auth", check_request(HashMap::from([("authorization".into(), "Basic dTpw".into())]), "GET", "/", HashMap::new()), "missing_credentials"),
        ];
        for (name, request, code) in cases {
            let decision = server.check(request).await.unwrap_or_else(|e| panic!("{name}: gRPC error {e}"));
            assert_eq!((decision.status, decision.code.as_str()), (401, code), "{name}");
            assert!(decision.response_headers.contains_key("www-authenticate"), "{name}");
        }
        assert_eq!(cache.store_reads(), before, "malformed input must not reach the store");
    }

    async fn a_revoke_racing_cache_fills_never_leaves_the_key_usable(backend) {
        let server = Arc::new(TestServer::start(backend).await);
        for round in 0..20 {
            let created = server.create_key("racer", &[]).await;
            let id = created.api_key.unwrap().id;
            let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let mut fillers = tokio::task::JoinSet::new();
            for _ in 0..4 {
                let (server, stop, key) = (server.clone(), stop.clone(), created.key.clone());
                fillers.spawn(async move {
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        server.check_key(&key, None).await;
                    }
                });
            }
            server.admin.clone().revoke_key(RevokeKeyRequest { owner_id: "racer".into(), id, reason: "race".into() }).await.unwrap();
            let after = server.check_key(&created.key, None).await;
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            fillers.join_all().await;
            assert_eq!(after.code, "key_revoked", "round {round}: a revoked key was still allowed");
            let settled = server.check_key(&created.key, None).await;
            assert_eq!(settled.code, "key_revoked", "round {round}: a stale entry stayed cached");
        }
    }

    async fn route_rules_from_the_config_apply_when_envoy_sends_no_requirements(backend) {
        use keygate::config::RouteRuleSettings;
        let server = TestServer::start_with(backend, |s| {
            s.routes = vec![
                RouteRuleSettings { method: Some("POST".into()), path: "/v1/orders*".into(), abilities: vec!["write:orders".into()], ..Default::default() },
                RouteRuleSettings { path: "/v1/live/*".into(), environment: Some("live".into()), ..Default::default() },
                RouteRuleSettings { path: "/v1/beta".into(), abilities: vec!["beta:use".into()], mode: Some("shadow".into()), ..Default::default() },
            ];
        })
        .await;
        let reader = server.create_key("acme", &["read:orders"]).await.key;
        let test_key = server
            .create(keygate::proto::CreateKeyRequest { owner_id: "acme".into(), name: "t".into(), environment: "test".into(), ..Default::default() })
            .await
            .key;
        let decide = |key: &str, method: &str, path: &str| check_request(bearer(key), method, path, HashMap::new());
        let code = |d: Decision| (d.status, d.code);
        assert_eq!(code(server.check(decide(&reader, "POST", "/v1/orders/9")).await.unwrap()), (403, "insufficient_ability".into()));
        assert_eq!(code(server.check(decide(&reader, "GET", "/v1/orders/9")).await.unwrap()), (200, "allowed".into()));
        assert_eq!(code(server.check(decide(&test_key, "GET", "/v1/live/x")).await.unwrap()), (403, "environment_not_allowed".into()));
        let shadow = server.check(decide(&reader, "GET", "/v1/beta?x=1")).await.unwrap();
        assert_eq!(shadow.status, 200);
        assert_eq!(shadow.upstream_headers["x-keygate-shadow-decision"], "insufficient_ability");
        // Context extensions from Envoy take precedence over the rules.
        let ext = HashMap::from([("keygate.abilities".to_string(), "read:orders".to_string())]);
        let explicit = server.check(check_request(bearer(&reader), "POST", "/v1/orders/9", ext)).await.unwrap();
        assert_eq!(explicit.code, "allowed");
    }

    async fn route_rules_hold_for_every_spelling_of_a_path_and_deny_ambiguous_ones(backend) {
        use keygate::config::RouteRuleSettings;
        let server = TestServer::start_with(backend, |s| {
            s.routes = vec![RouteRuleSettings { path: "/v1/orders*".into(), abilities: vec!["write:orders".into()], ..Default::default() }];
        })
        .await;
        let reader = server.create_key("acme", &["read:orders"]).await.key;
        let writer = server.create_key("acme", &["write:orders"]).await.key;
        let decide = async |key: &str, method: &str, path: &str, ext: HashMap<String, String>| {
            let d = server.check(check_request(bearer(key), method, path, ext)).await.unwrap();
            (d.status, d.code)
        };
        for path in ["//v1/orders", "/v1//orders", "/v1/./orders", "/x/../v1/orders", "/V1/orders", "/v1/%6frders", "/v1/%6Frders/../orders?x=/.."] {
            for method in ["GET", "POST"] {
                assert_eq!(decide(&reader, method, path, HashMap::new()).await, (403, "insufficient_ability".into()), "{method} {path}");
            }
            assert_eq!(decide(&writer, "POST", path, HashMap::new()).await, (200, "allowed".into()), "{path}");
        }
        for path in ["/v1%2forders", "/v1%5Corders", "v1/orders", "/v1\\orders", "/../v1/orders", "/v1/%zz", "/v1/..;/orders", ""] {
            assert_eq!(decide(&writer, "GET", path, HashMap::new()).await, (400, "invalid_path".into()), "{path:?}");
        }
        // The path is judged only where rules decide: Envoy's own route
        // requirements were matched by Envoy.
        let ext = HashMap::from([("keygate.abilities".to_string(), "read:orders".to_string())]);
        assert_eq!(decide(&reader, "GET", "/v1%2forders", ext).await, (200, "allowed".into()));
        assert_eq!(decide(&reader, "GET", "/v2/%6fther", HashMap::new()).await, (200, "allowed".into()));
    }

    async fn the_default_rate_limit_applies_to_keys_without_their_own(backend) {
        let server = TestServer::start_with(backend, |s| s.default_rate_limit = Some("2/60".into())).await;
        let unlimited_by_default = server.create_key("acme", &[]).await.key;
        let own_limit = server
            .create(keygate::proto::CreateKeyRequest {
                owner_id: "acme".into(),
                name: "own".into(),
                rate_limit: Some(keygate::proto::RateLimit { max_attempts: 5, decay_seconds: 60 }),
                ..Default::default()
            })
            .await
            .key;
        let first = server.check_key(&unlimited_by_default, None).await;
        assert_eq!(first.response_headers["x-ratelimit-limit"], "2");
        assert_eq!(first.response_headers["x-ratelimit-remaining"], "1");
        assert_eq!(server.check_key(&unlimited_by_default, None).await.code, "allowed");
        let limited = server.check_key(&unlimited_by_default, None).await;
        assert_eq!((limited.status, limited.code.as_str()), (429, "rate_limited"));
        let retry_after: u64 = limited.response_headers["retry-after"].parse().unwrap();
        assert!(retry_after >= 1);
        for _ in 0..5 {
            assert_eq!(server.check_key(&own_limit, None).await.code, "allowed");
        }
        assert_eq!(server.check_key(&own_limit, None).await.code, "rate_limited");
    }

    async fn the_replica_that_rotates_a_key_starts_its_rate_limit_window_afresh(backend) {
        // Before the call returns, as the other replicas do on notification
        // (tests/it/replicas.rs): no wait, no second replica needed.
        let server = TestServer::start(backend).await;
        let created = server
            .create(keygate::proto::CreateKeyRequest {
                owner_id: "acme".into(),
                name: "limited".into(),
                rate_limit: Some(keygate::proto::RateLimit { max_attempts: 1, decay_seconds: 3600 }),
                ..Default::default()
            })
            .await;
        assert_eq!(server.check_key(&created.key, None).await.code, "allowed");
        assert_eq!(server.check_key(&created.key, None).await.code, "rate_limited");
        server
            .admin
            .clone()
            .rotate_key(keygate::proto::RotateKeyRequest {
                owner_id: "acme".into(),
                id: created.api_key.unwrap().id,
                overlap_minutes: 60,
            })
            .await
            .unwrap();
        assert_eq!(server.check_key(&created.key, None).await.code, "allowed");
    }

    async fn forward_auth_gives_check_decisions_with_identity_and_metadata_headers(backend) {
        let server = TestServer::start_with(backend, |s| s.metadata_headers = Some("tier,plan".into())).await;
        let addr = server.running().forward_auth_addr;
        let created = server
            .create(keygate::proto::CreateKeyRequest {
                owner_id: "acme".into(),
                name: "meta".into(),
                abilities: vec!["read:orders".into()],
                metadata: HashMap::from([("tier".to_string(), "gold".to_string())]),
                ..Default::default()
            })
            .await;
        let auth = format!("Bearer {}", created.key);
        let id = created.api_key.as_ref().unwrap().id.clone();

        // NGINX's headers, on one kept-alive HTTP/1.1 connection.
        let mut client = ForwardAuthClient::http1(addr).await;
        let allowed = client
            .send("GET", "/auth", &[("authorization", auth.as_bytes()), ("x-original-method", b"GET"), ("x-original-uri", b"/v1/orders/1"), ("keygate-require-abilities", b"read:orders")])
            .await;
        assert_eq!(allowed.status, 200, "{allowed:?}");
        assert!(allowed.body.is_empty());
        assert_eq!(allowed.header("x-keygate-key-id"), Some(id.as_str()));
        assert_eq!(allowed.header("x-keygate-owner-id"), Some("acme"));
        assert_eq!(allowed.header("x-keygate-abilities"), Some("read:orders"));
        assert_eq!(allowed.header("x-keygate-meta-tier"), Some("gold"));
        assert_eq!(allowed.header("x-keygate-meta-plan"), None);
        assert_eq!(allowed.header("x-envoy-auth-headers-to-remove"), Some("x-keygate-meta-plan,x-keygate-shadow-decision,authorization"));
        let lacking = client
            .send("GET", "/auth", &[("authorization", auth.as_bytes()), ("x-original-method", b"POST"), ("x-original-uri", b"/v1/orders"), ("keygate-require-abilities", b"write:orders")])
            .await;
        assert_eq!((lacking.status, lacking.code()), (403, "insufficient_ability".into()));
        let shadow = client
            .send("GET", "/auth", &[("authorization", auth.as_bytes()), ("x-original-uri", b"/v1/orders"), ("keygate-require-abilities", b"write:orders"), ("keygate-mode", b"shadow")])
            .await;
        assert_eq!((shadow.status, shadow.header("x-keygate-shadow-decision")), (200, Some("insufficient_ability")));
        let missing = client.send("GET", "/auth", &[("x-original-uri", b"/v1/orders")]).await;
        assert_eq!((missing.status, missing.code()), (401, "missing_credentials".into()));
        assert_eq!(missing.header("www-authenticate"), Some("Bearer realm=\"keygate\""));
        assert_eq!(missing.header("content-type"), Some("application/json"));
        let invalid = client.send("GET", "/auth", &[("x-api-key", unissued_key().as_bytes())]).await;
        assert_eq!((invalid.status, invalid.code()), (401, "invalid_key".into()));

        // Traefik's and Caddy's headers, over h2c.
        let mut h2 = ForwardAuthClient::h2c(addr).await;
        let traefik = h2
            .send("GET", "/", &[("x-api-key", created.key.as_bytes()), ("x-forwarded-method", b"DELETE"), ("x-forwarded-uri", b"/v1/orders/9"), ("keygate-require-environment", b"test")])
            .await;
        assert_eq!((traefik.status, traefik.code()), (403, "environment_not_allowed".into()));

        // Check gives the same metadata: a header and `metadata` in dynamic_metadata.
        let response = server
            .authz
            .clone()
            .check(check_request(bearer(&created.key), "GET", "/v1/orders/1", HashMap::new()))
            .await
            .unwrap()
            .into_inner();
        let fields = response.dynamic_metadata.clone().expect("dynamic metadata").fields;
        let Some(envoy_types::pb::google::protobuf::value::Kind::StructValue(metadata)) = &fields["metadata"].kind else {
            panic!("no metadata struct: {fields:?}");
        };
        assert_eq!(
            metadata.fields["tier"].kind,
            Some(envoy_types::pb::google::protobuf::value::Kind::StringValue("gold".into()))
        );
        let check = Decision::of(response);
        assert_eq!(check.upstream_headers["x-keygate-meta-tier"], "gold");
    }

    async fn forward_auth_answers_ambiguous_or_garbage_input_with_400_never_an_allowance(backend) {
        let server = TestServer::start_with(backend, |s| s.forward_auth_path_prefix = Some("/ext-authz".into())).await;
        let addr = server.running().forward_auth_addr;
        let key = server.create_key("acme", &[]).await.key;
        let auth = format!("Bearer {key}");
        let with_key = |extra: &[(&'static str, &'static [u8])]| {
            let mut headers: Vec<(&str, Vec<u8>)> = vec![("authorization", auth.clone().into_bytes())];
            headers.extend(extra.iter().map(|(n, v)| (*n, v.to_vec())));
            headers
        };
        let cases: Vec<(&str, &str, RawHeaders)> = vec![
            ("absolute URI", "/ext-authz/", with_key(&[("x-original-uri", b"http://evil.example/v1")])),
            ("dot segments", "/ext-authz/", with_key(&[("x-original-uri", b"/public/../admin")])),
            ("encoded dot segments", "/ext-authz/", with_key(&[("x-forwarded-uri", b"/public/%2e%2E/admin")])),
            ("method without URI", "/ext-authz/", with_key(&[("x-original-method", b"DELETE")])),
            ("URI not UTF-8", "/ext-authz/", with_key(&[("x-original-uri", b"/caf\xff")])),
            ("empty URI", "/ext-authz/", with_key(&[("x-original-uri", b"")])),
            ("repeated URI", "/ext-authz/", with_key(&[("x-original-uri", b"/a"), ("x-original-uri", b"/b")])),
            ("repeated credential", "/ext-authz/", with_key(&[("authorization", b"Bearer sk_live_other")])),
            ("outside the path prefix", "/elsewhere/v1", with_key(&[])),
        ];
        for (name, path, headers) in cases {
            let headers: Vec<(&str, &[u8])> = headers.iter().map(|(n, v)| (*n, v.as_slice())).collect();
            let answer = forward_auth(addr, path, &headers).await;
            assert_eq!((answer.status, answer.code()), (400, "bad_request".into()), "{name}: {answer:?}");
        }
        // Envoy's own request, prefix removed: allowed.
        let answer = forward_auth(addr, "/ext-authz/v1/orders?x=1", &[("authorization", auth.as_bytes())]).await;
        assert_eq!(answer.status, 200, "{answer:?}");
        let not_utf8 = forward_auth(addr, "/ext-authz/", &[("x-api-key", b"sk_live_\xff\xfe")]).await;
        assert_eq!((not_utf8.status, not_utf8.code()), (401, "malformed_key".into()));
        let oversized = "x".repeat(80 * 1024);
        let too_big = forward_auth(addr, "/ext-authz/", &[("authorization", auth.as_bytes()), ("x-filler", oversized.as_bytes())]).await;
        assert_eq!(too_big.status, 431, "{too_big:?}");
    }

    async fn forward_auth_rate_limits_with_retry_after(backend) {
        let server = TestServer::start_with(backend, |s| s.default_rate_limit = Some("1/60".into())).await;
        let addr = server.running().forward_auth_addr;
        let key = server.create_key("acme", &[]).await.key;
        let mut client = ForwardAuthClient::http1(addr).await;
        let first = client.send("GET", "/", &[("x-api-key", key.as_bytes())]).await;
        assert_eq!((first.status, first.header("x-ratelimit-remaining")), (200, Some("0")));
        let limited = client.send("GET", "/", &[("x-api-key", key.as_bytes())]).await;
        assert_eq!((limited.status, limited.code()), (429, "rate_limited".into()));
        assert!(limited.header("retry-after").unwrap().parse::<u64>().unwrap() >= 1);
    }

    async fn health_turns_not_serving_as_soon_as_a_stop_begins(backend) {
        use tokio_stream::StreamExt;
        use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
        let mut server = TestServer::start(backend).await;
        let channel = common::channel(server.running().authz_addr).await;
        let mut watch = HealthClient::new(channel)
            .watch(HealthCheckRequest { service: "envoy.service.auth.v3.Authorization".into() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(watch.next().await.unwrap().unwrap().status, 1, "SERVING before the stop");
        let stopping = tokio::spawn(async move { server.stop().await });
        let next = watch.next().await.expect("a status before the stream ends").unwrap();
        assert_eq!(next.status, 2, "NOT_SERVING once the stop began");
        // A watch is an open stream: the drain waits for it (up to the grace).
        drop(watch);
        stopping.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_does_nothing_while_another_replica_holds_the_prune_lock() {
    use keygate::store::{Store, StoreOptions, PRUNE_LOCK_ID};
    use sqlx::Connection;
    let db = common::TestDb::new(common::Backend::Postgres).await;
    let store = Store::connect(&StoreOptions::new(db.url.clone()))
        .await
        .unwrap();
    store.migrate().await.unwrap();
    let mut other = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let mut held = other.begin().await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(PRUNE_LOCK_ID)
        .execute(&mut *held)
        .await
        .unwrap();
    let now = keygate::clock::Clock::system().now();
    assert_eq!(store.prune(now, now, None, "test").await.unwrap(), None);
    held.rollback().await.unwrap();
    assert!(store.prune(now, now, None, "test").await.unwrap().is_some());
    store.close().await;
}

/// Request headers as a test sends them over HTTP: names and raw values.
type RawHeaders = Vec<(&'static str, Vec<u8>)>;
