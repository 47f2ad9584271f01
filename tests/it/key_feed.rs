//! The key feed (`KeyFeed.WatchKeys`) that keeps keygate's Envoy module's
//! key table current (docs/envoy-module.md, "The key feed"): a snapshot of
//! every key with its hash, then each change as it happens, on both
//! stores; changes made on another replica (PostgreSQL); admin tokens only.

use crate::common;

use std::time::Duration;

use common::{eventually, replica::Replica, scalar_bytes, with_token, Backend, TestDb, TestServer};
use keygate::{
    admin::AdminRole,
    feed_proto::{
        key_feed_client::KeyFeedClient, KeyTableUpdate, TableKey, UsageRecord, UsageReport,
        WatchKeysRequest,
    },
    grpc::auth::new_admin_token,
    proto::{
        CreateKeyRequest, GetKeyRequest, GetKeyUsageRequest, RevokeKeyRequest, SuspendOwnerRequest,
    },
};
use tonic::{transport::Channel, Code, Streaming};

/// Far longer than any change takes to arrive; a test waiting this long
/// has failed.
const PATIENCE: Duration = Duration::from_secs(10);

async fn watch(
    channel: Channel,
    token: Option<&str>,
) -> Result<Streaming<KeyTableUpdate>, tonic::Status> {
    let request = match token {
        Some(token) => with_token(WatchKeysRequest {}, token),
        None => tonic::Request::new(WatchKeysRequest {}),
    };
    KeyFeedClient::new(channel)
        .watch_keys(request)
        .await
        .map(tonic::Response::into_inner)
}

async fn next(updates: &mut Streaming<KeyTableUpdate>) -> KeyTableUpdate {
    tokio::time::timeout(PATIENCE, updates.message())
        .await
        .expect("an update in time")
        .expect("the stream stays up")
        .expect("the stream stays open")
}

/// Every key of the snapshot the stream starts with.
async fn snapshot(updates: &mut Streaming<KeyTableUpdate>) -> Vec<TableKey> {
    let first = next(updates).await;
    assert!(first.snapshot_begins, "the stream starts with a snapshot");
    let mut keys = Vec::new();
    let mut update = first;
    loop {
        keys.extend(update.keys);
        if update.snapshot_complete {
            return keys;
        }
        update = next(updates).await;
        assert!(!update.snapshot_begins);
    }
}

/// The key `id` as the first update that holds it in the state `wanted`
/// has it; fails after [`PATIENCE`]. Updates about other keys, heartbeats
/// and older states are passed over: a change can be sent more than once
/// (on PostgreSQL the replica that made it hears its own notification too,
/// and a key created just before the stream began can come again after the
/// snapshot), and each copy replaces the entry with its id, so only the
/// last state counts.
async fn news_of(
    updates: &mut Streaming<KeyTableUpdate>,
    id: &str,
    wanted: impl Fn(&TableKey) -> bool,
) -> TableKey {
    let found = async {
        loop {
            let update = next(updates).await;
            if let Some(key) = update
                .keys
                .into_iter()
                .find(|key| key.id == id && wanted(key))
            {
                return key;
            }
        }
    };
    tokio::time::timeout(PATIENCE, found)
        .await
        .expect("the change reached the feed in time")
}

fn key_for(owner: &str) -> CreateKeyRequest {
    CreateKeyRequest {
        owner_id: owner.into(),
        name: "fed".into(),
        abilities: vec!["read:orders".into()],
        metadata: [("tier".to_owned(), "gold".to_owned())].into(),
        ..Default::default()
    }
}

on_both_backends! {
    async fn the_feed_sends_every_key_with_its_hash_then_each_change(backend) {
        let server = TestServer::start(backend).await;
        let first = server.create(key_for("acme")).await.api_key.unwrap();
        let second = server.create(key_for("globex")).await.api_key.unwrap();
        let channel = common::channel(server.running().admin_addr).await;
        let mut updates = watch(channel, None).await.expect("WatchKeys");

        let keys = snapshot(&mut updates).await;
        assert_eq!(keys.len(), 2, "{:?}", keys.iter().map(|k| &k.id).collect::<Vec<_>>());
        let fed = keys.iter().find(|k| k.id == first.id).expect("the first key");
        let stored = scalar_bytes(&server.db, "SELECT key_hash FROM api_keys WHERE key_prefix = $1", &first.key_prefix).await;
        assert_eq!(fed.hash, stored, "the hash Check looks the key up by");
        assert_eq!(fed.owner_id, "acme");
        assert_eq!(fed.environment, "live");
        assert_eq!(fed.abilities, ["read:orders"]);
        assert_eq!(fed.metadata.get("tier").map(String::as_str), Some("gold"));
        assert!(fed.revoked_at.is_none() && !fed.owner_suspended);

        // A revoke: the key again, revoked.
        server.admin.clone().revoke_key(RevokeKeyRequest {
            owner_id: "acme".into(), id: first.id.clone(), reason: "leaked".into(),
        }).await.expect("RevokeKey");
        news_of(&mut updates, &first.id, |key| key.revoked_at.is_some()).await;

        // A new key.
        let third = server.create(key_for("acme")).await.api_key.unwrap();
        assert_eq!(news_of(&mut updates, &third.id, |_| true).await.owner_id, "acme");

        // An owner suspended: every key of theirs, suspended.
        server.admin.clone().suspend_owner(SuspendOwnerRequest {
            owner_id: "globex".into(), reason: "unpaid".into(),
        }).await.expect("SuspendOwner");
        news_of(&mut updates, &second.id, |key| key.owner_suspended).await;
    }

    async fn only_admin_and_feed_tokens_may_watch_the_feed(backend) {
        let (service, service_line) = new_admin_token("billing", AdminRole::Service);
        let (admin, admin_line) = new_admin_token("ops", AdminRole::Admin);
        let (feed, feed_line) = new_admin_token("envoy", AdminRole::Feed);
        let server = TestServer::start_with(backend, |settings| {
            settings.admin_tokens = Some(format!("{service_line},{admin_line},{feed_line}"));
        })
        .await;
        let addr = server.running().admin_addr;
        let status = watch(common::channel(addr).await, None).await.expect_err("no token");
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
        let status = watch(common::channel(addr).await, Some(&service)).await.expect_err("service token");
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
        let mut updates = watch(common::channel(addr).await, Some(&admin)).await.expect("admin token");
        assert!(snapshot(&mut updates).await.is_empty());

        let mut client = KeyFeedClient::new(common::channel(addr).await);
        let status = client.report_usage(with_token(UsageReport::default(), &service)).await.expect_err("service token");
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
        client.report_usage(with_token(UsageReport::default(), &admin)).await.expect("admin token");

        let mut updates = watch(common::channel(addr).await, Some(&feed)).await.expect("feed token");
        assert!(snapshot(&mut updates).await.is_empty());
        client.report_usage(with_token(UsageReport::default(), &feed)).await.expect("feed token");
    }

    // The token a proxy holds to follow the feed can neither issue, read
    // nor revoke keys: KeyAdmin and the REST API refuse it, whatever the
    // call.
    async fn a_feed_token_may_call_nothing_but_the_feed(backend) {
        let (feed, feed_line) = new_admin_token("envoy", AdminRole::Feed);
        let (admin, admin_line) = new_admin_token("ops", AdminRole::Admin);
        let server = TestServer::start_with(backend, |settings| {
            settings.admin_tokens = Some(format!("{feed_line},{admin_line}"));
        })
        .await;
        let key = server.admin.clone()
            .create_key(with_token(key_for("acme"), &admin)).await.expect("admin token")
            .into_inner().api_key.unwrap();
        let mut admin_client = server.admin.clone();
        let refused = [
            admin_client.create_key(with_token(key_for("acme"), &feed)).await.map(drop),
            admin_client.get_key(with_token(GetKeyRequest { owner_id: "acme".into(), id: key.id.clone() }, &feed)).await.map(drop),
            admin_client.revoke_key(with_token(RevokeKeyRequest { owner_id: "acme".into(), id: key.id.clone(), ..Default::default() }, &feed)).await.map(drop),
            admin_client.suspend_owner(with_token(SuspendOwnerRequest { owner_id: "acme".into(), reason: "x".into() }, &feed)).await.map(drop),
        ];
        for status in refused {
            let status = status.expect_err("a feed token");
            assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
            assert!(status.message().contains("only KeyFeed"), "{status:?}");
        }
        let http = format!("http://{}", server.running().http_addr);
        let response = reqwest::Client::new()
            .get(format!("{http}/v1/api-keys?owner_id=acme"))
            .bearer_auth(&feed)
            .send().await.expect("REST answers");
        assert_eq!(response.status(), reqwest::StatusCode::FORBIDDEN);
        let body: serde_json::Value = response.json().await.expect("JSON");
        assert!(body["error"]["message"].as_str().unwrap().contains("only KeyFeed"), "{body}");
        // Nothing was revoked.
        let still = server.admin.clone()
            .get_key(with_token(GetKeyRequest { owner_id: "acme".into(), id: key.id }, &admin)).await
            .expect("admin token").into_inner();
        assert!(still.revoked_at.is_none());
    }

    async fn reported_usage_is_recorded_as_checks_own(backend) {
        let server = TestServer::start(backend).await;
        let key = server.create(key_for("acme")).await.api_key.unwrap();
        let mut client = KeyFeedClient::new(common::channel(server.running().admin_addr).await);
        let record = |method: &str, path: &str, decision: &str, requests: u32| UsageRecord {
            key_id: key.id.clone(),
            at: Some(prost_types::Timestamp { seconds: chrono::Utc::now().timestamp(), nanos: 0 }),
            ip: "203.0.113.9".into(),
            method: method.into(),
            path: path.into(),
            decision: decision.into(),
            requests,
        };
        // A record a request (0, as a reporter that does not coalesce sends),
        // and records the module coalesced: 40 allowed requests, 2 denied.
        let report = UsageReport { records: vec![
            record("GET", "/v1/orders/1?expand=items", "allowed", 0),
            record("GET", "/v1/orders/{id}", "allowed", 40),
            record("POST", "/v1/orders", "insufficient_ability", 2),
        ] };
        let taken = client.report_usage(report).await.expect("ReportUsage").into_inner();
        assert_eq!((taken.accepted, taken.dropped), (3, 0), "records, not requests");

        let request = GetKeyUsageRequest { owner_id: "acme".into(), id: key.id.clone(), recent_limit: 0 };
        let flushed = eventually(PATIENCE, async || {
            let usage = server.admin.clone().get_key_usage(request.clone()).await.unwrap().into_inner();
            usage.recent_logs.iter().map(|log| log.count).sum::<u64>() == 43
        })
        .await;
        assert!(flushed, "the reported usage was not written");
        let usage = server.admin.clone().get_key_usage(request).await.unwrap().into_inner();
        assert_eq!(usage.request_count, 41, "only allowed requests count");
        assert_eq!(usage.last_used_ip, "203.0.113.9");
        assert_eq!(usage.top_endpoints[0].endpoint, "/v1/orders/{id}");
        assert_eq!(usage.top_endpoints[0].count, 41);
        let denied: Vec<_> = usage.recent_logs.iter()
            .filter(|log| log.decision == "insufficient_ability")
            .map(|log| (log.endpoint.as_str(), log.count))
            .collect();
        assert_eq!(denied, [("/v1/orders", 2)]);
    }

    async fn a_report_with_a_bad_record_is_refused_whole_and_says_which(backend) {
        let server = TestServer::start(backend).await;
        let key = server.create(key_for("acme")).await.api_key.unwrap();
        let mut client = KeyFeedClient::new(common::channel(server.running().admin_addr).await);
        let good = UsageRecord {
            key_id: key.id.clone(),
            at: Some(prost_types::Timestamp { seconds: chrono::Utc::now().timestamp(), nanos: 0 }),
            method: "GET".into(),
            path: "/".into(),
            decision: "allowed".into(),
            ..Default::default()
        };
        let bad = [
            ("key_id", UsageRecord { key_id: "not-a-uuid".into(), ..good.clone() }),
            ("at", UsageRecord { at: None, ..good.clone() }),
            ("ip", UsageRecord { ip: "300.1.1.1".into(), ..good.clone() }),
            ("decision", UsageRecord { decision: "maybe".into(), ..good.clone() }),
        ];
        for (field, record) in bad {
            let report = UsageReport { records: vec![good.clone(), record] };
            let status = client.report_usage(report).await.expect_err(field);
            assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
            assert_eq!(status.message(), format!("records[1].{field} is not valid"));
        }
        let too_many = UsageReport { records: vec![good; 10_001] };
        let status = client.report_usage(too_many).await.expect_err("too many");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains("at most 10000"), "{status:?}");
        // Nothing of the refused reports was recorded.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let request = GetKeyUsageRequest { owner_id: "acme".into(), id: key.id, recent_limit: 0 };
        let usage = server.admin.clone().get_key_usage(request).await.unwrap().into_inner();
        assert!(usage.recent_logs.is_empty(), "{:?}", usage.recent_logs);
    }
}

/// A revoke made through one replica reaches the feed of another, through
/// PostgreSQL's notifications.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_made_on_another_replica_reaches_the_feed() {
    let db = TestDb::new(Backend::Postgres).await;
    let a = Replica::start(&db.url, &[]).await;
    let b = Replica::start(&db.url, &[]).await;
    let mut updates = watch(common::channel(b.process.admin_addr).await, None)
        .await
        .expect("WatchKeys");
    assert!(snapshot(&mut updates).await.is_empty());

    let (_, id) = a.create(key_for("acme")).await;
    let created = news_of(&mut updates, &id, |_| true).await;
    assert!(
        created.revoked_at.is_none(),
        "the key created on the other replica"
    );

    a.admin
        .clone()
        .revoke_key(RevokeKeyRequest {
            owner_id: "acme".into(),
            id: id.clone(),
            reason: "leaked".into(),
        })
        .await
        .expect("RevokeKey");
    news_of(&mut updates, &id, |key| key.revoked_at.is_some()).await;
}
