//! Usage tracking: what GetKeyUsage reports, a graceful stop that loses no
//! event, a stop that cannot flush and says what it lost, a full buffer
//! that never blocks Check, and pruning.

use crate::common;

use std::{collections::HashMap, time::Duration};

use common::{
    check_request, eventually, execute, metric_value, process::KeygateProcess, scalar_i64,
    scrape_metrics, Backend, TestDb, TestServer,
};
use keygate::{
    proto::{GetKeyRequest, GetKeyUsageRequest, ListAuditEventsRequest, RevokeKeyRequest},
    store::{Store, StoreOptions, UsageEvent},
};
use uuid::Uuid;

async fn check_path(
    server: &TestServer,
    key: &str,
    method: &str,
    path: &str,
    abilities: &str,
) -> String {
    check_path_from(server, "203.0.113.7", key, method, path, abilities).await
}

/// A Check whose client, behind one trusted hop, is `client_ip`.
async fn check_path_from(
    server: &TestServer,
    client_ip: &str,
    key: &str,
    method: &str,
    path: &str,
    abilities: &str,
) -> String {
    let headers = HashMap::from([
        ("authorization".to_string(), format!("Bearer {key}")),
        (
            "x-forwarded-for".to_string(),
            format!("198.51.100.1, {client_ip}"),
        ),
    ]);
    let extensions = HashMap::from([("keygate.abilities".to_string(), abilities.to_string())]);
    server
        .check(check_request(headers, method, path, extensions))
        .await
        .unwrap()
        .code
}

/// Sends `count` allowed Checks for `key` through a running process.
async fn drive_checks(authz: std::net::SocketAddr, key: &str, count: usize) {
    let mut client =
        envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient::new(
            common::channel(authz).await,
        );
    for i in 0..count {
        let headers = HashMap::from([("authorization".to_string(), format!("Bearer {key}"))]);
        let response = client
            .check(check_request(
                headers,
                "GET",
                &format!("/v1/items/{i}"),
                HashMap::new(),
            ))
            .await
            .unwrap();
        assert_eq!(common::Decision::of(response.into_inner()).code, "allowed");
    }
}

/// `count` keys spread over seven owners, straight into the store.
async fn insert_keys(store: &Store, count: usize) -> Vec<Uuid> {
    use keygate::{
        domain::KeyFormat,
        store::{AuditRecord, NewKey},
    };
    let format = KeyFormat::new("sk", &["live".into()], 32).unwrap();
    let audit = AuditRecord::new("api_key.created", "test");
    let mut ids = Vec::new();
    for i in 0..count {
        let owner = format!("owner-{}", i % 7);
        let new = NewKey::bare(
            format.generate("live"),
            "live",
            owner,
            "bulk".into(),
            keygate::clock::Clock::system().now(),
        );
        ids.push(store.insert_key(&new, None, &audit).await.unwrap().id);
    }
    ids
}

/// Two allowed events per key, on two endpoints (`/v1/e0`, `/v1/e1`), so
/// that 1,201 keys need more than one multi-row statement for every table.
fn two_events_per_key(ids: &[Uuid]) -> Vec<UsageEvent> {
    let now = keygate::clock::Clock::system().now();
    ids.iter()
        .flat_map(|id| {
            (0..2).map(move |n| UsageEvent {
                key_id: *id,
                at: now,
                ip: Some("192.0.2.9".parse().unwrap()),
                method: "GET",
                endpoint: format!("/v1/e{n}").into(),
                decision: "allowed",
                allowed: true,
                requests: 1,
            })
        })
        .collect()
}

/// Rows in the three places a flush writes: the log, the daily counts, and
/// the keys' request counters.
async fn usage_written(db: &TestDb) -> (i64, i64, i64) {
    (
        scalar_i64(
            db,
            "SELECT COUNT(*) FROM usage_log WHERE key_id <> $1",
            Uuid::nil(),
        )
        .await,
        scalar_i64(
            db,
            "SELECT COUNT(*) FROM usage_daily WHERE key_id <> $1",
            Uuid::nil(),
        )
        .await,
        scalar_i64(
            db,
            "SELECT CAST(COALESCE(SUM(request_count), 0) AS BIGINT) FROM api_keys WHERE id <> $1",
            Uuid::nil(),
        )
        .await,
    )
}

on_both_backends! {
    async fn a_batch_larger_than_one_statement_is_written_whole(backend) {
        let db = TestDb::new(backend).await;
        let store = Store::connect(&StoreOptions::new(db.url.clone())).await.unwrap();
        store.migrate().await.unwrap();
        let ids = insert_keys(&store, 1_201).await;
        let events = two_events_per_key(&ids);
        store.record_usage(&events, true).await.unwrap();
        for id in [ids[0], ids[600], ids[1_200]] {
            let key = store.get_key(id).await.unwrap();
            assert_eq!(key.request_count, 2);
            assert_eq!(key.last_used_ip.as_deref(), Some("192.0.2.9"));
        }
        store.close().await;
        assert_eq!(usage_written(&db).await, (2_402, 2_402, 2_402));
    }

    async fn a_batch_that_fails_part_way_writes_nothing_and_its_retry_writes_it_once(backend) {
        let db = TestDb::new(backend).await;
        let store = Store::connect(&StoreOptions::new(db.url.clone())).await.unwrap();
        store.migrate().await.unwrap();
        let ids = insert_keys(&store, 1_201).await;
        let mut events = two_events_per_key(&ids);
        events.last_mut().unwrap().endpoint = "/v1/rejected".into();
        // The database rejects the batch's very last log row: every other
        // statement of the batch, and most of the last one, has run by then.
        match backend {
            Backend::Sqlite => execute(&db, "CREATE TRIGGER reject_usage BEFORE INSERT ON usage_log \
                WHEN NEW.endpoint = '/v1/rejected' BEGIN SELECT RAISE(FAIL, 'rejected'); END").await,
            Backend::Postgres => {
                execute(&db, "CREATE FUNCTION reject_usage() RETURNS trigger LANGUAGE plpgsql AS $$ \
                    BEGIN IF NEW.endpoint = '/v1/rejected' THEN RAISE EXCEPTION 'rejected'; END IF; \
                    RETURN NEW; END $$").await;
                execute(&db, "CREATE TRIGGER reject_usage BEFORE INSERT ON usage_log \
                    FOR EACH ROW EXECUTE FUNCTION reject_usage()").await;
            }
        }
        assert!(store.record_usage(&events, true).await.is_err());
        assert_eq!(usage_written(&db).await, (0, 0, 0), "a failed batch left rows behind");

        // The flusher keeps the batch and writes it again, on the same pool.
        execute(&db, match backend {
            Backend::Sqlite => "DROP TRIGGER reject_usage",
            Backend::Postgres => "DROP TRIGGER reject_usage ON usage_log",
        }).await;
        store.record_usage(&events, true).await.unwrap();
        store.close().await;
        assert_eq!(usage_written(&db).await, (2_402, 2_402, 2_402));
    }

    async fn get_key_usage_reports_counts_top_endpoints_and_recent_logs(backend) {
        let server = TestServer::start_with(backend, |s| s.trusted_proxy_hops = Some(1)).await;
        let created = server.create_key("acme", &["read:orders"]).await;
        let id = created.api_key.unwrap().id;
        assert_eq!(check_path(&server, &created.key, "GET", "/v1/orders/1", "read:orders").await, "allowed");
        assert_eq!(check_path(&server, &created.key, "GET", "/v1/orders/2?expand=items", "read:orders").await, "allowed");
        assert_eq!(check_path(&server, &created.key, "GET", "/v1/users/me", "").await, "allowed");
        assert_eq!(check_path(&server, &created.key, "POST", "/v1/orders", "write:orders").await, "insufficient_ability");

        let request = GetKeyUsageRequest { owner_id: "acme".into(), id: id.clone(), recent_limit: 0 };
        let logged = |usage: &keygate::proto::KeyUsage| usage.recent_logs.iter().map(|log| log.count).sum::<u64>();
        let flushed = eventually(Duration::from_secs(10), async || {
            let usage = server.admin.clone().get_key_usage(request.clone()).await.unwrap().into_inner();
            logged(&usage) == 4
        })
        .await;
        assert!(flushed, "usage was not flushed");
        let usage = server.admin.clone().get_key_usage(request).await.unwrap().into_inner();
        assert_eq!(usage.request_count, 3, "only allowed requests count");
        // The two GETs of /v1/orders/{id} share a row when they fell in one
        // second and one flush; every row stands for at least one request.
        assert!((3..=4).contains(&usage.recent_logs.len()), "{:?}", usage.recent_logs);
        assert!(usage.recent_logs.iter().all(|log| log.count >= 1));
        assert_eq!(usage.last_used_ip, "203.0.113.7");
        assert!(usage.last_used_at.is_some());
        assert_eq!(usage.top_endpoints[0].endpoint, "/v1/orders/{id}");
        assert_eq!(usage.top_endpoints[0].count, 2);
        let newest = &usage.recent_logs[0];
        assert_eq!((newest.method.as_str(), newest.endpoint.as_str(), newest.decision.as_str()), ("POST", "/v1/orders", "insufficient_ability"));
        assert_eq!(newest.ip, "203.0.113.7");

        let two = server.admin.clone().get_key_usage(GetKeyUsageRequest { owner_id: "acme".into(), id: id.clone(), recent_limit: 2 }).await.unwrap();
        assert_eq!(two.into_inner().recent_logs.len(), 2);
        let key = server.admin.clone().get_key(GetKeyRequest { owner_id: "acme".into(), id: id.clone() }).await.unwrap().into_inner();
        assert_eq!(key.request_count, 3);
        let other = server.admin.clone().get_key_usage(GetKeyUsageRequest { owner_id: "other".into(), id, recent_limit: 0 }).await.unwrap_err();
        assert_eq!(other.code(), tonic::Code::PermissionDenied);
    }

    async fn denied_attempts_are_logged_but_do_not_count_as_use(backend) {
        // last_used_at / last_used_ip and top_endpoints describe the last
        // authenticated request (docs/behaviour.md, "Usage"); a denied
        // attempt, even on a revoked key, shows only in the recent log.
        let server = TestServer::start_with(backend, |s| s.trusted_proxy_hops = Some(1)).await;
        let created = server.create_key("acme", &["read:orders"]).await;
        let id = created.api_key.unwrap().id;
        assert_eq!(check_path_from(&server, "203.0.113.7", &created.key, "GET", "/v1/orders/1", "read:orders").await, "allowed");
        let request = GetKeyUsageRequest { owner_id: "acme".into(), id: id.clone(), recent_limit: 0 };
        let logged = |usage: &keygate::proto::KeyUsage| usage.recent_logs.iter().map(|log| log.count).sum::<u64>();
        let flushed = eventually(Duration::from_secs(10), async || {
            logged(&server.admin.clone().get_key_usage(request.clone()).await.unwrap().into_inner()) == 1
        })
        .await;
        assert!(flushed, "the allowed request was not flushed");
        let used = server.admin.clone().get_key_usage(request.clone()).await.unwrap().into_inner();

        assert_eq!(check_path_from(&server, "192.0.2.66", &created.key, "POST", "/v1/orders", "write:orders").await, "insufficient_ability");
        server.admin.clone().revoke_key(RevokeKeyRequest { owner_id: "acme".into(), id: id.clone(), reason: "test".into() }).await.unwrap();
        assert_eq!(check_path_from(&server, "192.0.2.99", &created.key, "GET", "/v1/admin/export", "").await, "key_revoked");
        let flushed = eventually(Duration::from_secs(10), async || {
            logged(&server.admin.clone().get_key_usage(request.clone()).await.unwrap().into_inner()) == 3
        })
        .await;
        assert!(flushed, "the denied attempts were not logged");
        let usage = server.admin.clone().get_key_usage(request).await.unwrap().into_inner();
        assert_eq!(usage.request_count, 1);
        assert_eq!((usage.last_used_ip.as_str(), usage.last_used_at), ("203.0.113.7", used.last_used_at));
        let top: Vec<_> = usage.top_endpoints.iter().map(|e| (e.endpoint.as_str(), e.count)).collect();
        assert_eq!(top, [("/v1/orders/{id}", 1)]);
        let decisions: Vec<_> = usage.recent_logs.iter().map(|log| (log.decision.as_str(), log.ip.as_str())).collect();
        assert_eq!(decisions, [("key_revoked", "192.0.2.99"), ("insufficient_ability", "192.0.2.66"), ("allowed", "203.0.113.7")]);
    }

    async fn a_key_pasted_into_a_path_is_stored_as_a_placeholder(backend) {
        let server = TestServer::start(backend).await;
        let created = server.create_key("acme", &[]).await;
        let id = created.api_key.unwrap().id;
        let pasted = server.create_key("acme", &[]).await.key;
        let token = pasted.rsplit('_').next().unwrap().to_owned();
        for path in [format!("/v1/files/{pasted}.json"), format!("/v1/files/{}", pasted.replace('_', "%5F"))] {
            assert_eq!(check_path(&server, &created.key, "GET", &path, "").await, "allowed");
        }
        let request = GetKeyUsageRequest { owner_id: "acme".into(), id, recent_limit: 0 };
        let flushed = eventually(Duration::from_secs(10), async || {
            let usage = server.admin.clone().get_key_usage(request.clone()).await.unwrap().into_inner();
            // Both requests, in one row when they shared a second and a flush.
            usage.recent_logs.iter().map(|log| log.count).sum::<u64>() == 2
        })
        .await;
        assert!(flushed, "usage was not flushed");
        let usage = server.admin.clone().get_key_usage(request).await.unwrap().into_inner();
        assert_eq!(usage.top_endpoints.len(), 1);
        assert_eq!((usage.top_endpoints[0].endpoint.as_str(), usage.top_endpoints[0].count), ("/v1/files/{key}", 2));
        assert!(usage.recent_logs.iter().all(|log| log.endpoint == "/v1/files/{key}"));
        assert!(!format!("{usage:?}").contains(&token), "the key reached the usage tables");
    }

    async fn a_graceful_stop_flushes_every_usage_event(backend) {
        let db = TestDb::new(backend).await;
        // A flush interval far beyond the test: only the drain can write.
        let process = KeygateProcess::spawn(&db.url, &[("KEYGATE_USAGE_FLUSH_INTERVAL", "1h"), ("KEYGATE_USAGE_BATCH_SIZE", "100000")]).await;
        let mut admin = keygate::proto::key_admin_client::KeyAdminClient::new(common::channel(process.admin_addr).await);
        let created = admin
            .create_key(keygate::proto::CreateKeyRequest { owner_id: "acme".into(), name: "drain".into(), ..Default::default() })
            .await
            .unwrap()
            .into_inner();
        const N: usize = 300;
        let started = std::time::Instant::now();
        drive_checks(process.authz_addr, &created.key, N).await;
        let seconds_spanned = started.elapsed().as_secs() as i64 + 2;
        let (status, logs) = process.terminate().await;
        assert!(status.success(), "keygate exited with {status}:\n{logs}");
        assert!(logs.contains("final usage flush"), "{logs}");

        let id = Uuid::parse_str(&created.api_key.unwrap().id).unwrap();
        let store = Store::connect(&StoreOptions::new(db.url.clone())).await.unwrap();
        assert_eq!(store.get_key(id).await.unwrap().request_count, N as u64);
        store.close().await;
        assert_eq!(scalar_i64(&db, "SELECT CAST(SUM(count) AS BIGINT) FROM usage_log WHERE key_id = $1", id).await, N as i64);
        assert_eq!(scalar_i64(&db, "SELECT CAST(SUM(count) AS BIGINT) FROM usage_daily WHERE key_id = $1", id).await, N as i64);
        // One call repeated (`/v1/items/{id}` once normalised), flushed as one
        // batch: a log row per second it spanned, not one per request.
        let rows = scalar_i64(&db, "SELECT COUNT(*) FROM usage_log WHERE key_id = $1", id).await;
        assert!((1..=seconds_spanned).contains(&rows), "{rows} log rows for {N} requests over at most {seconds_spanned} s");
    }

    async fn prune_soft_deletes_expired_keys_and_old_usage(backend) {
        let server = TestServer::start(backend).await;
        let expired = server.create_key("acme", &[]).await.api_key.unwrap().id;
        let kept = server.create_key("acme", &[]).await.api_key.unwrap().id;
        let expired_id = Uuid::parse_str(&expired).unwrap();
        let store = Store::connect(&StoreOptions::new(server.db.url.clone())).await.unwrap();
        let event = |days_ago: i64| UsageEvent {
            key_id: Uuid::parse_str(&kept).unwrap(),
            at: keygate::clock::Clock::system().now() - chrono::Duration::days(days_ago),
            ip: None,
            method: "GET",
            endpoint: "/v1/x".into(),
            decision: "allowed",
            allowed: true,
            requests: 1,
        };
        store.record_usage(&[event(40), event(1)], true).await.unwrap();
        store.close().await;
        // The API refuses a past expiry, so put one in place directly.
        let past = if backend == Backend::Sqlite { "'2020-01-01T00:00:00+00:00'" } else { "'2020-01-01T00:00:00Z'" };
        let id_literal = if backend == Backend::Sqlite { format!("X'{}'", expired_id.simple()) } else { format!("'{expired_id}'") };
        execute(&server.db, &format!("UPDATE api_keys SET expires_at = {past} WHERE id = {id_literal}")).await;

        let stdout = common::prune_cli(&server.db.url);
        assert!(stdout.contains("1 expired keys soft-deleted, 1 usage log rows and 1 daily counts deleted"), "{stdout}");

        let gone = server.admin.clone().get_key(GetKeyRequest { owner_id: "acme".into(), id: expired.clone() }).await.unwrap_err();
        assert_eq!(gone.code(), tonic::Code::NotFound);
        server.admin.clone().get_key(GetKeyRequest { owner_id: "acme".into(), id: kept.clone() }).await.unwrap();
        let events = server.admin.clone()
            .list_audit_events(ListAuditEventsRequest { key_id: expired, event: "api_key.expired".into(), ..Default::default() })
            .await.unwrap().into_inner().events;
        assert_eq!(events.len(), 1);
        assert_eq!(scalar_i64(&server.db, "SELECT COUNT(*) FROM usage_log WHERE key_id = $1", Uuid::parse_str(&kept).unwrap()).await, 1);
    }
}

/// Creates a key for `acme` on a spawned keygate and returns the plaintext.
async fn create_key_on(process: &KeygateProcess, name: &str) -> String {
    keygate::proto::key_admin_client::KeyAdminClient::new(common::channel(process.admin_addr).await)
        .create_key(keygate::proto::CreateKeyRequest {
            owner_id: "acme".into(),
            name: name.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .key
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_usage_buffer_drops_and_counts_events_without_blocking_check() {
    let db = TestDb::new(Backend::Sqlite).await;
    let process = KeygateProcess::spawn(
        &db.url,
        &[
            ("KEYGATE_USAGE_BUFFER", "5"),
            ("KEYGATE_USAGE_FLUSH_INTERVAL", "1h"),
            ("KEYGATE_USAGE_BATCH_SIZE", "100000"),
        ],
    )
    .await;
    let key = create_key_on(&process, "full").await;
    drive_checks(process.authz_addr, &key, 50).await;
    let metrics = scrape_metrics(process.metrics_addr);
    let dropped = metric_value(&metrics, "keygate_usage_dropped_total").unwrap_or_default();
    assert!(
        dropped >= 40.0,
        "expected dropped events to be counted, got {dropped}:\n{metrics}"
    );
    let (status, logs) = process.terminate().await;
    assert!(status.success(), "{logs}");
}

/// SQLite only: a file size limit on the real process stands in for a full
/// disk, so the final flush cannot write and the stop must say so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_that_abandons_usage_exits_non_zero_and_says_how_many_events() {
    let db = TestDb::new(Backend::Sqlite).await;
    let process = KeygateProcess::spawn_with_piped_logs(
        &db.url,
        &[
            ("KEYGATE_USAGE_FLUSH_INTERVAL", "1h"),
            ("KEYGATE_USAGE_BATCH_SIZE", "100000"),
            ("KEYGATE_SHUTDOWN_GRACE", "2s"),
        ],
    )
    .await;
    let key = create_key_on(&process, "abandoned").await;
    const N: usize = 25;
    drive_checks(process.authz_addr, &key, N).await;
    process.limit_file_size(Some(1));
    let (status, logs) = process.terminate().await;
    assert_eq!(status.code(), Some(1), "{logs}");
    assert!(
        logs.contains(&format!("stopped with {N} usage events never written")),
        "{logs}"
    );
}
