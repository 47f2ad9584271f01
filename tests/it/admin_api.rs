//! KeyAdmin against a real server and database: every RPC's happy path and
//! every error row of docs/behaviour.md §4 (GetKeyUsage is covered elsewhere), with the
//! Check listener as the witness that a change took effect.

use crate::common;

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Duration, SubsecRound, Utc};
use common::{with_token, TestServer};
use keygate::{
    admin::AdminRole,
    grpc::auth::new_admin_token,
    proto::{
        api_key::State, AdminListKeysRequest, AdminRevokeKeyRequest, ApiKey, AuditEvent,
        CreateKeyRequest, Credits, GetKeyRequest, ListAbilitiesRequest, ListAuditEventsRequest,
        ListKeysRequest, ListKeysResponse, RateLimit, ResumeOwnerRequest, RevokeKeyRequest,
        RotateKeyRequest, SuspendOwnerRequest, UpdateKeyRequest,
    },
};
use prost_types::{FieldMask, Timestamp};
use tonic::Code;

/// Bitcoin's base58 alphabet (docs/behaviour.md §1).
const BASE58: &str = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";
const MASK: &str = "••••••••";

fn timestamp(at: DateTime<Utc>) -> Timestamp {
    Timestamp {
        seconds: at.timestamp(),
        nanos: at.timestamp_subsec_nanos() as i32,
    }
}

fn instant(ts: &Option<Timestamp>) -> DateTime<Utc> {
    let ts = ts.as_ref().expect("timestamp present");
    DateTime::from_timestamp(ts.seconds, ts.nanos as u32).expect("valid timestamp")
}

/// A future instant at the microsecond precision both stores keep.
fn in_future(by: Duration) -> DateTime<Utc> {
    (Utc::now() + by).trunc_subsecs(6)
}

fn mask(paths: &[&str]) -> Option<FieldMask> {
    Some(FieldMask {
        paths: paths.iter().map(|p| p.to_string()).collect(),
    })
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn metadata(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn request(owner: &str, name: &str) -> CreateKeyRequest {
    CreateKeyRequest {
        owner_id: owner.into(),
        name: name.into(),
        ..Default::default()
    }
}

/// Asserts the docs/behaviour.md §1 shape and returns the token segment.
fn token_of<'a>(key: &'a str, environment: &str) -> &'a str {
    let prefix = format!("sk_{environment}_");
    let token = key
        .strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("{key:?} does not start with {prefix}"));
    assert_eq!(
        token.chars().count(),
        32 + 6,
        "32 random characters and a 6-character checksum"
    );
    assert!(
        token.chars().all(|c| BASE58.contains(c)),
        "{token:?} is not base58"
    );
    token
}

/// A key without its usage counters, which the asynchronous usage flush
/// may move between two reads.
fn without_usage(mut key: ApiKey) -> ApiKey {
    key.request_count = 0;
    key.last_used_at = None;
    key.last_used_ip.clear();
    key
}

fn ids(keys: &[ApiKey]) -> Vec<String> {
    keys.iter().map(|k| k.id.clone()).collect()
}

fn header<'a>(headers: &'a HashMap<String, String>, name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Admin tokens: `billing` (service) and `ops` (admin).
struct Tokens {
    service: String,
    admin: String,
}

async fn start_with_tokens(backend: common::Backend) -> (TestServer, Tokens) {
    let (service, service_line) = new_admin_token("billing", AdminRole::Service);
    let (admin, admin_line) = new_admin_token("ops", AdminRole::Admin);
    let server = TestServer::start_with(backend, |settings| {
        settings.admin_tokens = Some(format!("{service_line},{admin_line}"));
    })
    .await;
    (server, Tokens { service, admin })
}

/// Calls that tests expect to succeed, unwrapped.
trait TestServerExt {
    async fn get(&self, owner: &str, id: &str) -> ApiKey;
    async fn list(&self, request: ListKeysRequest) -> ListKeysResponse;
    async fn revoke(&self, owner: &str, id: &str, reason: &str) -> ApiKey;
    async fn update(&self, request: UpdateKeyRequest) -> Result<ApiKey, tonic::Status>;
}

impl TestServerExt for TestServer {
    async fn get(&self, owner: &str, id: &str) -> ApiKey {
        self.admin
            .clone()
            .get_key(GetKeyRequest {
                owner_id: owner.into(),
                id: id.into(),
            })
            .await
            .expect("GetKey")
            .into_inner()
    }

    async fn list(&self, request: ListKeysRequest) -> ListKeysResponse {
        self.admin
            .clone()
            .list_keys(request)
            .await
            .expect("ListKeys")
            .into_inner()
    }

    async fn revoke(&self, owner: &str, id: &str, reason: &str) -> ApiKey {
        self.admin
            .clone()
            .revoke_key(RevokeKeyRequest {
                owner_id: owner.into(),
                id: id.into(),
                reason: reason.into(),
            })
            .await
            .expect("RevokeKey")
            .into_inner()
    }

    async fn update(&self, request: UpdateKeyRequest) -> Result<ApiKey, tonic::Status> {
        self.admin
            .clone()
            .update_key(request)
            .await
            .map(|r| r.into_inner())
    }
}

/// The audit events of one key and kind, newest first.
async fn audit_events(
    server: &TestServer,
    key_id: String,
    event: &str,
) -> Vec<keygate::proto::AuditEvent> {
    let request = ListAuditEventsRequest {
        key_id,
        event: event.to_owned(),
        ..Default::default()
    };
    server
        .admin
        .clone()
        .list_audit_events(request)
        .await
        .expect("ListAuditEvents")
        .into_inner()
        .events
}

on_both_backends! {
    async fn a_key_without_an_environment_is_issued_in_the_first_configured_one(backend) {
        // docs/behaviour.md §1: with KEYGATE_ENVIRONMENTS=prod,staging there
        // is no `live`; a key issued as `sk_live_` would be refused by Check.
        let server = TestServer::start_with(backend, |settings| {
            settings.environments = Some("prod,staging".into());
        })
        .await;
        let created = server.create_key("acme", &["read:orders"]).await;
        let key = created.api_key.clone().expect("api_key");
        assert_eq!(key.environment, "prod");
        assert!(created.key.starts_with("sk_prod_"), "issued in prod");
        assert_eq!(server.check_key(&created.key, Some("read:orders")).await.code, "allowed");
    }

    async fn create_key_returns_the_plaintext_once_and_echoes_every_setting(backend) {
        let server = TestServer::start(backend).await;
        let expires = in_future(Duration::days(30));
        let before = Utc::now().trunc_subsecs(6);
        let created = server
            .create(CreateKeyRequest {
                owner_id: "acme".into(),
                name: "CI deploys".into(),
                abilities: strings(&["read:orders", "refunds:*"]),
                rate_limit: Some(RateLimit { max_attempts: 100, decay_seconds: 60 }),
                expires_at: Some(timestamp(expires)),
                metadata: metadata(&[("team", "platform"), ("ticket", "OPS-42")]),
                ..Default::default()
            })
            .await;
        let after = Utc::now();
        let token = token_of(&created.key, "live");
        assert!(!created.message.is_empty());
        let key = created.api_key.clone().expect("api_key");
        assert_eq!(key.key_prefix, format!("sk_live_{}", &token[..8]));
        assert_eq!(key.masked_key, format!("{}{MASK}", key.key_prefix));
        assert!(!key.masked_key.contains(token));
        assert_eq!(key.state(), State::Active);
        assert_eq!(key.owner_id, "acme");
        assert_eq!(key.name, "CI deploys");
        assert_eq!(key.environment, "live", "environment defaults to live");
        assert_eq!(key.abilities, strings(&["read:orders", "refunds:*"]));
        assert!(!key.superkey);
        assert_eq!(key.rate_limit, Some(RateLimit { max_attempts: 100, decay_seconds: 60 }));
        assert_eq!(instant(&key.expires_at), expires);
        assert_eq!(key.metadata, metadata(&[("team", "platform"), ("ticket", "OPS-42")]));
        assert_eq!((key.revoked_at, key.revocation_reason.as_str()), (None, ""));
        assert_eq!((key.rotated_from_id.as_str(), key.rotated_to_id.as_str()), ("", ""));
        assert_eq!((key.request_count, key.last_used_at, key.last_used_ip.as_str()), (0, None, ""));
        let created_at = instant(&key.created_at);
        assert!(before <= created_at && created_at <= after, "{before} <= {created_at} <= {after}");
        assert_eq!(key.updated_at, key.created_at);
        uuid::Uuid::parse_str(&key.id).expect("id is a UUID");

        // What GetKey reads back is what CreateKey answered.
        assert_eq!(server.get("acme", &key.id).await, key);
        // The plaintext works on the Check listener (so its checksum is right).
        assert_eq!(server.check_key(&created.key, Some("refunds:create")).await.code, "allowed");

        let superkey = server
            .create(CreateKeyRequest { environment: "test".into(), superkey: true, ..request("acme", "ops") })
            .await;
        token_of(&superkey.key, "test");
        let api_key = superkey.api_key.expect("api_key");
        assert_eq!((api_key.environment.as_str(), api_key.superkey), ("test", true));
        assert!(api_key.abilities.is_empty());
        assert_eq!((api_key.rate_limit, api_key.expires_at), (None, None));
        assert_ne!(superkey.key, created.key);
        let allowed = server.check_key(&superkey.key, Some("anything:at-all")).await;
        assert_eq!((allowed.code.as_str(), allowed.upstream_headers["x-keygate-abilities"].as_str()), ("allowed", "*"));
    }

    async fn create_key_rejects_invalid_arguments(backend) {
        let server = TestServer::start(backend).await;
        let invalid = [
            ("unknown environment", CreateKeyRequest { environment: "staging".into(), ..request("acme", "k") }),
            ("empty name", request("acme", "")),
            ("blank name", request("acme", "   ")),
            ("a name with surrounding spaces", request("acme", "  CI deploys  ")),
            ("a name with a bidi override", request("acme", "deploy\u{202e}gnp.exe")),
            ("an owner with a trailing zero-width space", request("bob\u{200b}", "k")),
            ("an owner with a leading space", request(" bob", "k")),
            ("an owner with a trailing tab", request("bob\t", "k")),
            ("an owner with a byte-order mark", request("\u{feff}bob", "k")),
            ("257 abilities", CreateKeyRequest { abilities: vec!["read:orders".into(); 257], ..request("acme", "k") }),
            ("101 ASCII characters", request("acme", &"a".repeat(101))),
            ("101 two-byte characters", request("acme", &"é".repeat(101))),
            ("101 four-byte characters", request("acme", &"🔑".repeat(101))),
            ("ability with a space", CreateKeyRequest { abilities: strings(&["read orders"]), ..request("acme", "k") }),
            ("empty ability", CreateKeyRequest { abilities: strings(&[""]), ..request("acme", "k") }),
            ("misplaced wildcard", CreateKeyRequest { abilities: strings(&["read*"]), ..request("acme", "k") }),
            (
                "expiry in the past",
                CreateKeyRequest { expires_at: Some(timestamp(Utc::now() - Duration::minutes(1))), ..request("acme", "k") },
            ),
            ("empty owner", request("", "k")),
            (
                "expiry past the Timestamp range (year 10000)",
                CreateKeyRequest { expires_at: Some(Timestamp { seconds: 253_402_300_800, nanos: 0 }), ..request("acme", "k") },
            ),
            (
                "nanos of a second or more",
                CreateKeyRequest {
                    expires_at: Some(Timestamp { seconds: in_future(Duration::days(1)).timestamp(), nanos: 1_500_000_000 }),
                    ..request("acme", "k")
                },
            ),
            (
                "negative nanos",
                CreateKeyRequest {
                    expires_at: Some(Timestamp { seconds: in_future(Duration::days(1)).timestamp(), nanos: -1 }),
                    ..request("acme", "k")
                },
            ),
        ];
        for (what, invalid) in invalid {
            let status = server.admin.clone().create_key(invalid).await.expect_err(what);
            assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
        }
        let listed = server.list(ListKeysRequest { owner_id: "acme".into(), include_revoked: true, ..Default::default() }).await;
        assert_eq!(listed.total_size, 0, "nothing was stored");
        let status = server.admin.clone().get_key(GetKeyRequest { owner_id: "acme\u{200b}".into(), id: uuid::Uuid::nil().to_string() }).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "look-alike owners are refused on reads too");

        // 256 abilities are accepted, repeats kept once in their first place.
        let mut abilities: Vec<String> = (0..255).map(|i| format!("read:r{i}")).collect();
        abilities.insert(0, "read:r7".into());
        let created = server.create(CreateKeyRequest { abilities, ..request("acme", "many") }).await;
        let stored = created.api_key.expect("api_key").abilities;
        assert_eq!((stored.len(), stored[0].as_str(), stored[8].as_str()), (255, "read:r7", "read:r8"));

        // Exactly 100 characters is accepted, whatever their byte length.
        for name in ["a".repeat(100), "é".repeat(100), "🔑".repeat(100)] {
            let created = server.create(request("acme", &name)).await;
            assert_eq!(created.api_key.expect("api_key").name, name);
        }
    }

    async fn create_key_rejects_an_ability_outside_the_configured_catalog(backend) {
        let server = TestServer::start_with(backend, |settings| {
            settings.abilities = Some("read:orders,write:orders".into());
        })
        .await;
        for abilities in [&["delete:orders"][..], &["read:orders", "read:invoices"], &["invoices:*"]] {
            let status = server
                .admin
                .clone()
                .create_key(CreateKeyRequest { abilities: strings(abilities), ..request("acme", "k") })
                .await
                .expect_err("an ability outside the catalog");
            assert_eq!(status.code(), Code::InvalidArgument, "{abilities:?}");
        }
        let created = server
            .create(CreateKeyRequest { abilities: strings(&["read:orders", "write:orders"]), ..request("acme", "k") })
            .await;
        assert_eq!(created.api_key.expect("api_key").abilities, strings(&["read:orders", "write:orders"]));
        // A wildcard is accepted when it covers a catalog entry.
        let wildcard = server.create(CreateKeyRequest { abilities: strings(&["read:*"]), ..request("acme", "k") }).await;
        assert_eq!(wildcard.api_key.expect("api_key").abilities, strings(&["read:*"]));
    }

    async fn create_key_fails_precondition_past_max_keys_per_owner(backend) {
        let server = TestServer::start_with(backend, |settings| settings.max_keys_per_owner = Some(2)).await;
        let first = server.create(request("acme", "one")).await;
        server.create(request("acme", "two")).await;
        let status = server.admin.clone().create_key(request("acme", "three")).await.expect_err("over the limit");
        assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
        // The limit is per owner.
        server.create(request("globex", "one")).await;
        // A revoked key no longer counts.
        server.revoke("acme", &first.api_key.expect("api_key").id, "make room").await;
        server.create(request("acme", "three")).await;
        let status = server.admin.clone().create_key(request("acme", "four")).await.expect_err("over the limit again");
        assert_eq!(status.code(), Code::FailedPrecondition);
    }

    async fn concurrent_creates_never_exceed_max_keys_per_owner(backend) {
        let server = TestServer::start_with(backend, |settings| settings.max_keys_per_owner = Some(5)).await;
        let calls: Vec<_> = (0..20)
            .map(|i| {
                let mut client = server.admin.clone();
                tokio::spawn(async move { client.create_key(request("acme", &format!("key {i}"))).await })
            })
            .collect();
        let (mut created, mut refused) = (0, 0);
        for call in calls {
            match call.await.expect("task") {
                Ok(_) => created += 1,
                Err(status) if status.code() == Code::FailedPrecondition => refused += 1,
                Err(status) => panic!("unexpected error: {status:?}"),
            }
        }
        assert_eq!((created, refused), (5, 15));
        let listed = server.list(ListKeysRequest { owner_id: "acme".into(), include_revoked: true, ..Default::default() }).await;
        assert_eq!((listed.total_size, listed.keys.len()), (5, 5));
    }

    async fn get_key_refuses_unknown_foreign_and_malformed_ids(backend) {
        let server = TestServer::start(backend).await;
        let created = server.create_key("acme", &["read:orders"]).await;
        let id = created.api_key.clone().expect("api_key").id;
        assert_eq!(server.get("acme", &id).await, created.api_key.expect("api_key"));
        let cases = [
            ("unknown id", "acme".to_string(), uuid::Uuid::now_v7().to_string(), Code::NotFound),
            ("another owner's key", "globex".to_string(), id.clone(), Code::PermissionDenied),
            ("not a UUID", "acme".to_string(), "key-1".to_string(), Code::InvalidArgument),
            ("empty id", "acme".to_string(), String::new(), Code::InvalidArgument),
        ];
        for (what, owner_id, id, code) in cases {
            let status = server.admin.clone().get_key(GetKeyRequest { owner_id, id }).await.expect_err(what);
            assert_eq!(status.code(), code, "{what}: {status:?}");
            assert!(!status.message().contains("sk_live_"), "{what}: {status:?}");
        }
    }

    async fn list_keys_pages_newest_first_with_a_total(backend) {
        let server = TestServer::start(backend).await;
        let mut created = Vec::new();
        for i in 0..7 {
            created.push(server.create(request("acme", &format!("key {i}"))).await.api_key.expect("api_key").id);
        }
        server.create(request("globex", "not acme's")).await;
        created.reverse();

        let mut seen = Vec::new();
        let mut page_token = String::new();
        let mut pages = 0;
        loop {
            let page = server
                .list(ListKeysRequest { owner_id: "acme".into(), page_size: 3, page_token, ..Default::default() })
                .await;
            pages += 1;
            assert_eq!(page.total_size, 7);
            assert!(page.keys.len() <= 3);
            assert!(page.keys.iter().all(|k| k.owner_id == "acme"));
            assert!(page.keys.iter().all(|k| k.masked_key.ends_with(MASK)));
            seen.extend(ids(&page.keys));
            if page.next_page_token.is_empty() {
                break;
            }
            page_token = page.next_page_token;
            assert!(pages < 10, "paging does not end");
        }
        assert_eq!(pages, 3);
        assert_eq!(seen, created, "newest first, each key once");

        // The default page holds them all.
        let all = server.list(ListKeysRequest { owner_id: "acme".into(), ..Default::default() }).await;
        assert_eq!((ids(&all.keys), all.next_page_token.as_str()), (created, ""));
        let status = server
            .admin
            .clone()
            .list_keys(ListKeysRequest { owner_id: "acme".into(), page_size: -1, ..Default::default() })
            .await
            .expect_err("negative page size");
        assert_eq!(status.code(), Code::InvalidArgument);
    }

    async fn list_keys_filters_by_environment_and_hides_revoked_but_not_rotating_keys(backend) {
        let server = TestServer::start(backend).await;
        let revoked = server.create(request("acme", "revoked")).await.api_key.expect("api_key").id;
        let test = server
            .create(CreateKeyRequest { environment: "test".into(), ..request("acme", "test") })
            .await
            .api_key
            .expect("api_key")
            .id;
        let rotating = server.create(request("acme", "rotating")).await.api_key.expect("api_key").id;
        server.revoke("acme", &revoked, "gone").await;
        let rotated = server
            .admin
            .clone()
            .rotate_key(RotateKeyRequest { owner_id: "acme".into(), id: rotating.clone(), overlap_minutes: 10 })
            .await
            .expect("RotateKey")
            .into_inner();
        let successor = rotated.api_key.expect("api_key").id;

        let live = server.list(ListKeysRequest { owner_id: "acme".into(), ..Default::default() }).await;
        assert_eq!(ids(&live.keys), [successor.clone(), rotating.clone(), test.clone()]);
        assert_eq!(live.total_size, 3);
        assert_eq!(live.keys[1].state(), State::Rotating);

        let all = server.list(ListKeysRequest { owner_id: "acme".into(), include_revoked: true, ..Default::default() }).await;
        assert_eq!(ids(&all.keys), [successor.clone(), rotating.clone(), test.clone(), revoked.clone()]);
        assert_eq!(all.total_size, 4);
        assert_eq!(all.keys[3].state(), State::Revoked);

        let only_test = server
            .list(ListKeysRequest { owner_id: "acme".into(), environment: "test".into(), include_revoked: true, ..Default::default() })
            .await;
        assert_eq!((ids(&only_test.keys), only_test.total_size), (vec![test], 1));
        let only_live = server.list(ListKeysRequest { owner_id: "acme".into(), environment: "live".into(), ..Default::default() }).await;
        assert_eq!((ids(&only_live.keys), only_live.total_size), (vec![successor, rotating], 2));

        let status = server
            .admin
            .clone()
            .list_keys(ListKeysRequest { owner_id: "acme".into(), environment: "staging".into(), ..Default::default() })
            .await
            .expect_err("unknown environment");
        assert_eq!(status.code(), Code::InvalidArgument);
    }

    async fn list_keys_refuses_tampered_and_foreign_page_tokens(backend) {
        let server = TestServer::start(backend).await;
        for owner in ["acme", "globex"] {
            for i in 0..3 {
                server.create(request(owner, &format!("key {i}"))).await;
            }
        }
        let first = |owner: &str| ListKeysRequest { owner_id: owner.into(), page_size: 2, ..Default::default() };
        let acme_token = server.list(first("acme")).await.next_page_token;
        let globex_page = server.list(first("globex")).await;
        assert!(!acme_token.is_empty() && !globex_page.next_page_token.is_empty());

        // The genuine token works for the query that made it.
        let second = server.list(ListKeysRequest { page_token: acme_token.clone(), ..first("acme") }).await;
        assert_eq!((second.keys.len(), second.next_page_token.as_str()), (1, ""));

        let mut tampered: Vec<char> = acme_token.chars().collect();
        let middle = tampered.len() / 2;
        tampered[middle] = if tampered[middle] == 'A' { 'B' } else { 'A' };
        let tampered: String = tampered.into_iter().collect();
        let cases = [
            ("a flipped character", ListKeysRequest { page_token: tampered, ..first("acme") }),
            ("a truncated token", ListKeysRequest { page_token: acme_token[..acme_token.len() - 4].to_owned(), ..first("acme") }),
            ("garbage", ListKeysRequest { page_token: "not a token!".into(), ..first("acme") }),
            ("another owner's token", ListKeysRequest { page_token: globex_page.next_page_token.clone(), ..first("acme") }),
            ("acme's token used for globex", ListKeysRequest { page_token: acme_token.clone(), ..first("globex") }),
            (
                "a token from a different filter",
                ListKeysRequest { page_token: acme_token.clone(), include_revoked: true, ..first("acme") },
            ),
        ];
        for (what, request) in cases {
            let status = server.admin.clone().list_keys(request).await.expect_err(what);
            assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
        }
    }

    async fn list_keys_caps_page_size_at_500(backend) {
        let server = TestServer::start_with(backend, |settings| settings.max_keys_per_owner = Some(1000)).await;
        let creates: Vec<_> = (0..501)
            .map(|i| {
                let mut client = server.admin.clone();
                async move { client.create_key(request("acme", &format!("key {i}"))).await.expect("CreateKey") }
            })
            .collect();
        use futures::StreamExt;
        futures::stream::iter(creates).buffer_unordered(16).collect::<Vec<_>>().await;

        let page = server.list(ListKeysRequest { owner_id: "acme".into(), page_size: 10_000, ..Default::default() }).await;
        assert_eq!((page.keys.len(), page.total_size), (500, 501));
        assert!(!page.next_page_token.is_empty());
        let rest = server
            .list(ListKeysRequest { owner_id: "acme".into(), page_size: 10_000, page_token: page.next_page_token, ..Default::default() })
            .await;
        assert_eq!((rest.keys.len(), rest.next_page_token.as_str()), (1, ""));
        let all: HashSet<String> = ids(&page.keys).into_iter().chain(ids(&rest.keys)).collect();
        assert_eq!(all.len(), 501);
    }

    async fn update_key_changes_only_the_fields_its_mask_names(backend) {
        let server = TestServer::start(backend).await;
        let created = server
            .create(CreateKeyRequest {
                abilities: strings(&["read:orders"]),
                rate_limit: Some(RateLimit { max_attempts: 10, decay_seconds: 60 }),
                expires_at: Some(timestamp(in_future(Duration::days(1)))),
                metadata: metadata(&[("team", "platform")]),
                ..request("acme", "original")
            })
            .await;
        let mut current = created.api_key.expect("api_key");
        // Every value differs from the key's; only the masked one may land.
        let everything = |id: &str, paths: &[&str]| UpdateKeyRequest {
            owner_id: "acme".into(),
            id: id.into(),
            update_mask: mask(paths),
            name: "renamed".into(),
            abilities: strings(&["write:orders", "refunds:*"]),
            superkey: true,
            rate_limit: Some(RateLimit { max_attempts: 500, decay_seconds: 1 }),
            metadata: metadata(&[("team", "payments"), ("cost_center", "42")]),
            credits: Some(Credits { remaining: 77, refill_amount: 77, refill_interval_seconds: 60 }),
            allowed_cidrs: strings(&["192.0.2.0/24"]),
        };
        for path in ["name", "abilities", "superkey", "rate_limit", "metadata", "credits", "allowed_cidrs"] {
            let updated = server.update(everything(&current.id, &[path])).await.unwrap_or_else(|s| panic!("{path}: {s:?}"));
            let mut expected = current.clone();
            match path {
                "name" => expected.name = "renamed".into(),
                "abilities" => expected.abilities = strings(&["write:orders", "refunds:*"]),
                "superkey" => expected.superkey = true,
                "rate_limit" => expected.rate_limit = Some(RateLimit { max_attempts: 500, decay_seconds: 1 }),
                "metadata" => expected.metadata = metadata(&[("team", "payments"), ("cost_center", "42")]),
                "credits" => {
                    expected.credits = Some(Credits { remaining: 77, refill_amount: 77, refill_interval_seconds: 60 })
                }
                "allowed_cidrs" => expected.allowed_cidrs = strings(&["192.0.2.0/24"]),
                _ => unreachable!(),
            }
            assert!(instant(&updated.updated_at) > instant(&current.updated_at), "{path}: updated_at moves");
            expected.updated_at = updated.updated_at;
            assert_eq!(updated, expected, "{path} alone changed");
            assert_eq!(server.get("acme", &current.id).await, updated, "{path}: the change is stored");
            current = updated;
        }

        // The mask's values replace, so an empty list or an absent limit clears.
        let cleared = server
            .update(UpdateKeyRequest {
                owner_id: "acme".into(),
                id: current.id.clone(),
                update_mask: mask(&["abilities", "rate_limit", "metadata", "superkey"]),
                ..Default::default()
            })
            .await
            .expect("UpdateKey");
        assert_eq!((cleared.abilities.len(), cleared.rate_limit, cleared.metadata.len(), cleared.superkey), (0, None, 0, false));
        assert_eq!((cleared.name.as_str(), cleared.created_at), ("renamed", current.created_at));
    }

    async fn update_key_refuses_bad_masks_long_names_and_other_owners(backend) {
        let server = TestServer::start(backend).await;
        let key = server.create_key("acme", &["read:orders"]).await.api_key.expect("api_key");
        let update = |paths: Option<FieldMask>| UpdateKeyRequest {
            owner_id: "acme".into(),
            id: key.id.clone(),
            update_mask: paths,
            name: "renamed".into(),
            ..Default::default()
        };
        let cases = [
            ("environment is immutable", update(mask(&["environment"])), Code::InvalidArgument),
            ("environment among valid paths", update(mask(&["name", "environment"])), Code::InvalidArgument),
            ("expires_at is immutable", update(mask(&["expires_at"])), Code::InvalidArgument),
            ("unknown path", update(mask(&["colour"])), Code::InvalidArgument),
            ("empty mask", update(mask(&[])), Code::InvalidArgument),
            ("absent mask", update(None), Code::InvalidArgument),
            ("101-character name", UpdateKeyRequest { name: "é".repeat(101), ..update(mask(&["name"])) }, Code::InvalidArgument),
            ("empty name", UpdateKeyRequest { name: String::new(), ..update(mask(&["name"])) }, Code::InvalidArgument),
            (
                "bad ability",
                UpdateKeyRequest { abilities: strings(&["read orders"]), ..update(mask(&["abilities"])) },
                Code::InvalidArgument,
            ),
            ("another owner", UpdateKeyRequest { owner_id: "globex".into(), ..update(mask(&["name"])) }, Code::PermissionDenied),
            ("unknown key", UpdateKeyRequest { id: uuid::Uuid::now_v7().to_string(), ..update(mask(&["name"])) }, Code::NotFound),
        ];
        for (what, request, code) in cases {
            let status = server.update(request).await.expect_err(what);
            assert_eq!(status.code(), code, "{what}: {status:?}");
        }
        assert_eq!(server.get("acme", &key.id).await, key, "no refused update changed anything");
    }

    async fn update_key_that_removes_an_ability_denies_the_next_check(backend) {
        let server = TestServer::start(backend).await;
        let created = server.create_key("acme", &["read:orders", "write:orders"]).await;
        let id = created.api_key.expect("api_key").id;
        // Warm this replica's cache with the old abilities.
        assert_eq!(server.check_key(&created.key, Some("write:orders")).await.code, "allowed");
        server
            .update(UpdateKeyRequest {
                owner_id: "acme".into(),
                id,
                update_mask: mask(&["abilities"]),
                abilities: strings(&["read:orders"]),
                ..Default::default()
            })
            .await
            .expect("UpdateKey");
        let denied = server.check_key(&created.key, Some("write:orders")).await;
        assert_eq!((denied.status, denied.code.as_str()), (403, "insufficient_ability"));
        let allowed = server.check_key(&created.key, Some("read:orders")).await;
        assert_eq!((allowed.code.as_str(), allowed.upstream_headers["x-keygate-abilities"].as_str()), ("allowed", "read:orders"));
    }

    async fn rotate_key_without_overlap_revokes_the_old_key_at_once(backend) {
        let server = TestServer::start(backend).await;
        let expires = in_future(Duration::days(7));
        let created = server
            .create(CreateKeyRequest {
                environment: "test".into(),
                abilities: strings(&["read:orders", "write:orders"]),
                superkey: true,
                rate_limit: Some(RateLimit { max_attempts: 100, decay_seconds: 60 }),
                expires_at: Some(timestamp(expires)),
                metadata: metadata(&[("team", "platform")]),
                ..request("acme", "deploy bot")
            })
            .await;
        let old = created.api_key.expect("api_key");
        assert_eq!(server.check_key(&created.key, Some("read:orders")).await.code, "allowed");

        let rotated = server
            .admin
            .clone()
            .rotate_key(RotateKeyRequest { owner_id: "acme".into(), id: old.id.clone(), overlap_minutes: 0 })
            .await
            .expect("RotateKey")
            .into_inner();
        token_of(&rotated.key, "test");
        assert_ne!(rotated.key, created.key);
        assert!(!rotated.message.is_empty());
        let new = rotated.api_key.expect("api_key");
        let previous = rotated.previous.expect("previous");
        assert_ne!(new.id, old.id);
        assert_eq!(new.masked_key, format!("{}{MASK}", new.key_prefix));
        assert_eq!(
            (&new.owner_id, &new.name, &new.environment, &new.abilities, new.superkey, new.rate_limit, &new.expires_at, &new.metadata),
            (&old.owner_id, &old.name, &old.environment, &old.abilities, old.superkey, old.rate_limit, &old.expires_at, &old.metadata),
            "the successor inherits every setting"
        );
        assert_eq!(new.state(), State::Active);
        assert_eq!((new.rotated_from_id.as_str(), new.rotated_to_id.as_str()), (old.id.as_str(), ""));
        assert_eq!((previous.id.as_str(), previous.rotated_to_id.as_str()), (old.id.as_str(), new.id.as_str()));
        assert_eq!(previous.state(), State::Revoked);
        assert_eq!(without_usage(server.get("acme", &old.id).await), without_usage(previous.clone()));
        assert_eq!(server.get("acme", &new.id).await, new);

        let denied = server.check_key(&created.key, Some("read:orders")).await;
        assert_eq!((denied.status, denied.code.as_str()), (401, "key_revoked"));
        let allowed = server.check_key(&rotated.key, Some("write:orders")).await;
        assert_eq!(allowed.code, "allowed");
        assert_eq!(allowed.upstream_headers["x-keygate-key-id"], new.id);
        assert_eq!(allowed.upstream_headers["x-keygate-abilities"], "*", "still a superkey");
        assert_eq!(header(&allowed.response_headers, "deprecation"), None);
    }

    async fn rotate_key_with_overlap_keeps_the_old_key_working_with_a_sunset(backend) {
        let server = TestServer::start(backend).await;
        let created = server.create_key("acme", &["read:orders"]).await;
        let old = created.api_key.expect("api_key");
        assert_eq!(server.check_key(&created.key, Some("read:orders")).await.code, "allowed");

        let before = Utc::now();
        let rotated = server
            .admin
            .clone()
            .rotate_key(RotateKeyRequest { owner_id: "acme".into(), id: old.id.clone(), overlap_minutes: 10 })
            .await
            .expect("RotateKey")
            .into_inner();
        let after = Utc::now();
        let previous = rotated.previous.expect("previous");
        let new = rotated.api_key.expect("api_key");
        assert_eq!(previous.state(), State::Rotating);
        let revoked_at = instant(&previous.revoked_at);
        let slack = Duration::seconds(1);
        assert!(
            before + Duration::minutes(10) - slack <= revoked_at && revoked_at <= after + Duration::minutes(10),
            "revoked_at {revoked_at} is about ten minutes after {before}"
        );

        let old_check = server.check_key(&created.key, Some("read:orders")).await;
        assert_eq!(old_check.code, "allowed", "the old key works during the overlap");
        assert_eq!(old_check.upstream_headers["x-keygate-key-id"], old.id);
        assert_eq!(header(&old_check.response_headers, "deprecation"), Some("true"));
        let sunset = header(&old_check.response_headers, "sunset").expect("a Sunset header");
        let sunset = DateTime::parse_from_rfc2822(sunset).unwrap_or_else(|e| panic!("{sunset:?} is not an HTTP date: {e}"));
        assert_eq!(sunset.timestamp(), revoked_at.timestamp());
        let new_check = server.check_key(&rotated.key, Some("read:orders")).await;
        assert_eq!(new_check.code, "allowed");
        assert_eq!(header(&new_check.response_headers, "deprecation"), None);
        assert_eq!(header(&new_check.response_headers, "sunset"), None);

        // A key in its overlap cannot be rotated again, but can be revoked at once.
        let status = server
            .admin
            .clone()
            .rotate_key(RotateKeyRequest { owner_id: "acme".into(), id: old.id.clone(), overlap_minutes: 0 })
            .await
            .expect_err("rotating a rotating key");
        assert_eq!(status.code(), Code::FailedPrecondition);
        let revoked = server.revoke("acme", &old.id, "cut the overlap short").await;
        assert_eq!(revoked.state(), State::Revoked);
        assert_eq!(revoked.rotated_to_id, new.id);
        let denied = server.check_key(&created.key, Some("read:orders")).await;
        assert_eq!((denied.status, denied.code.as_str()), (401, "key_revoked"));
    }

    async fn rotate_key_never_extends_the_old_key_past_its_expiry(backend) {
        let server = TestServer::start(backend).await;
        let expires = in_future(Duration::minutes(5));
        let created = server
            .create(CreateKeyRequest { expires_at: Some(timestamp(expires)), ..request("acme", "short-lived") })
            .await;
        let id = created.api_key.expect("api_key").id;
        let rotated = server
            .admin
            .clone()
            .rotate_key(RotateKeyRequest { owner_id: "acme".into(), id, overlap_minutes: 60 })
            .await
            .expect("RotateKey")
            .into_inner();
        let previous = rotated.previous.expect("previous");
        assert_eq!(instant(&previous.revoked_at), expires);
        assert_eq!(instant(&previous.expires_at), expires);
        assert_eq!(instant(&rotated.api_key.expect("api_key").expires_at), expires, "the successor keeps the expiry");
    }

    async fn rotate_key_refuses_an_overlap_past_the_year_9999(backend) {
        // Above the default 7-day cap only so the year-9999 bound is reached.
        let server =
            TestServer::start_with(backend, |s| s.max_rotation_overlap = Some("9000years".into())).await;
        let key = server.create(request("acme", "forever")).await.api_key.expect("api_key");
        let status = server
            .admin
            .clone()
            .rotate_key(RotateKeyRequest { owner_id: "acme".into(), id: key.id.clone(), overlap_minutes: u32::MAX })
            .await
            .expect_err("an overlap of 8000 years");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert_eq!(server.get("acme", &key.id).await, key, "the refused rotation changed nothing");

        // A long overlap that stays in range is listed as ROTATING on every backend.
        let ten_years = 10 * 366 * 24 * 60;
        let rotated = server
            .admin
            .clone()
            .rotate_key(RotateKeyRequest { owner_id: "acme".into(), id: key.id.clone(), overlap_minutes: ten_years })
            .await
            .expect("RotateKey")
            .into_inner();
        assert_eq!(rotated.previous.expect("previous").state(), State::Rotating);
        let live = server.list(ListKeysRequest { owner_id: "acme".into(), ..Default::default() }).await;
        assert_eq!((live.total_size, live.keys[1].id.as_str(), live.keys[1].state()), (2, key.id.as_str(), State::Rotating));

        // The old key's expiry bounds any overlap, however long.
        let expires = in_future(Duration::hours(1));
        let short = server
            .create(CreateKeyRequest { expires_at: Some(timestamp(expires)), ..request("acme", "short") })
            .await
            .api_key
            .expect("api_key");
        let rotated = server
            .admin
            .clone()
            .rotate_key(RotateKeyRequest { owner_id: "acme".into(), id: short.id, overlap_minutes: u32::MAX })
            .await
            .expect("RotateKey")
            .into_inner();
        assert_eq!(instant(&rotated.previous.expect("previous").revoked_at), expires);
    }

    async fn expiry_is_kept_at_the_same_microsecond_precision_on_every_backend(backend) {
        let server = TestServer::start(backend).await;
        let requested = Timestamp { seconds: in_future(Duration::days(1)).timestamp(), nanos: 123_456_789 };
        let key = server
            .create(CreateKeyRequest { expires_at: Some(requested), ..request("acme", "precise") })
            .await
            .api_key
            .expect("api_key");
        assert_eq!(key.expires_at, Some(Timestamp { nanos: 123_456_000, ..requested }));
        assert_eq!(server.get("acme", &key.id).await.expires_at, key.expires_at);
    }

    async fn rotate_key_refuses_a_revoked_foreign_or_unknown_key(backend) {
        let server = TestServer::start(backend).await;
        let id = server.create_key("acme", &[]).await.api_key.expect("api_key").id;
        let rotate = |owner: &str, id: &str| RotateKeyRequest { owner_id: owner.into(), id: id.into(), overlap_minutes: 5 };
        let status = server.admin.clone().rotate_key(rotate("globex", &id)).await.expect_err("another owner's key");
        assert_eq!(status.code(), Code::PermissionDenied);
        let unknown = uuid::Uuid::now_v7().to_string();
        let status = server.admin.clone().rotate_key(rotate("acme", &unknown)).await.expect_err("unknown key");
        assert_eq!(status.code(), Code::NotFound);
        let revoked = server.revoke("acme", &id, "done").await;
        let status = server.admin.clone().rotate_key(rotate("acme", &id)).await.expect_err("a revoked key");
        assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
        assert_eq!(server.get("acme", &id).await, revoked, "the refused rotation changed nothing");
        let listed = server.list(ListKeysRequest { owner_id: "acme".into(), include_revoked: true, ..Default::default() }).await;
        assert_eq!(listed.total_size, 1, "no successor was issued");
    }

    async fn revoke_key_denies_the_key_and_revoking_again_changes_nothing(backend) {
        let server = TestServer::start(backend).await;
        let created = server.create_key("acme", &["read:orders"]).await;
        let id = created.api_key.expect("api_key").id;
        assert_eq!(server.check_key(&created.key, Some("read:orders")).await.code, "allowed");

        let status = server
            .admin
            .clone()
            .revoke_key(RevokeKeyRequest { owner_id: "globex".into(), id: id.clone(), reason: "not mine".into() })
            .await
            .expect_err("another owner's key");
        assert_eq!(status.code(), Code::PermissionDenied);

        let before = Utc::now().trunc_subsecs(6);
        let revoked = server.revoke("acme", &id, "leaked in CI logs").await;
        assert_eq!(revoked.state(), State::Revoked);
        assert_eq!(revoked.revocation_reason, "leaked in CI logs");
        assert!(instant(&revoked.revoked_at) >= before);
        let denied = server.check_key(&created.key, Some("read:orders")).await;
        assert_eq!((denied.status, denied.code.as_str()), (401, "key_revoked"));

        let again = server.revoke("acme", &id, "second thoughts").await;
        // Usage counters may move in between (the Check above is flushed
        // asynchronously); the revocation itself must not.
        assert_eq!(
            (again.state(), again.revoked_at, &again.revocation_reason, again.updated_at),
            (revoked.state(), revoked.revoked_at, &revoked.revocation_reason, revoked.updated_at),
            "a second revoke changes nothing"
        );
        let events = audit_events(&server, id.clone(), "api_key.revoked").await;
        assert_eq!(events.len(), 1, "one revocation, one event");
        assert_eq!(events[0].metadata["reason"], "leaked in CI logs");
    }

    async fn concurrent_revokes_revoke_once(backend) {
        let server = TestServer::start(backend).await;
        for round in 0..5 {
            let id = server.create(request("acme", &format!("round {round}"))).await.api_key.expect("api_key").id;
            let calls: Vec<_> = (0..20)
                .map(|i| {
                    let mut client = server.admin.clone();
                    let request = RevokeKeyRequest { owner_id: "acme".into(), id: id.clone(), reason: format!("caller {i}") };
                    tokio::spawn(async move { client.revoke_key(request).await.expect("RevokeKey").into_inner() })
                })
                .collect();
            let mut answers = Vec::new();
            for call in calls {
                answers.push(call.await.expect("task"));
            }
            let stored = server.get("acme", &id).await;
            for answer in &answers {
                assert_eq!(
                    (answer.revoked_at, &answer.revocation_reason),
                    (stored.revoked_at, &stored.revocation_reason),
                    "every caller sees the one revocation"
                );
            }
            let events = audit_events(&server, id.clone(), "api_key.revoked").await;
            assert_eq!(events.len(), 1, "round {round}: one revocation, one audit event");
            assert_eq!(events[0].metadata["reason"], stored.revocation_reason);
        }
    }

    async fn list_abilities_returns_the_configured_catalog(backend) {
        let catalog = ["read:orders", "write:orders", "refunds:create"];
        let server = TestServer::start_with(backend, |settings| settings.abilities = Some(catalog.join(","))).await;
        let listed = server.admin.clone().list_abilities(ListAbilitiesRequest {}).await.expect("ListAbilities").into_inner();
        let listed: HashSet<String> = listed.abilities.into_iter().collect();
        assert_eq!(listed, catalog.iter().map(|s| s.to_string()).collect());

        let open = TestServer::start(backend).await;
        let listed = open.admin.clone().list_abilities(ListAbilitiesRequest {}).await.expect("ListAbilities").into_inner();
        assert!(listed.abilities.is_empty(), "no catalog configured");
    }

    async fn admin_list_keys_spans_owners_and_filters_by_owner(backend) {
        let (server, tokens) = start_with_tokens(backend).await;
        let mut created = Vec::new();
        for (owner, environment) in [("acme", "live"), ("globex", "live"), ("acme", "test"), ("initech", "live")] {
            let request = CreateKeyRequest { environment: environment.into(), ..request(owner, owner) };
            let response = server.admin.clone().create_key(with_token(request, &tokens.service)).await.expect("CreateKey");
            created.push(response.into_inner().api_key.expect("api_key"));
        }
        server
            .admin
            .clone()
            .revoke_key(with_token(
                RevokeKeyRequest { owner_id: "initech".into(), id: created[3].id.clone(), reason: "gone".into() },
                &tokens.service,
            ))
            .await
            .expect("RevokeKey");
        let admin_list = |request: AdminListKeysRequest| {
            let mut client = server.admin.clone();
            let token = tokens.admin.clone();
            async move { client.admin_list_keys(with_token(request, &token)).await.expect("AdminListKeys").into_inner() }
        };

        let everyone = admin_list(AdminListKeysRequest::default()).await;
        let newest_first: Vec<String> = created[..3].iter().rev().map(|k| k.id.clone()).collect();
        assert_eq!((ids(&everyone.keys), everyone.total_size), (newest_first, 3));
        let with_revoked = admin_list(AdminListKeysRequest { include_revoked: true, ..Default::default() }).await;
        assert_eq!(with_revoked.total_size, 4);
        assert_eq!(with_revoked.keys[0].id, created[3].id);

        let acme = admin_list(AdminListKeysRequest { owner_id: "acme".into(), ..Default::default() }).await;
        assert_eq!((ids(&acme.keys), acme.total_size), (vec![created[2].id.clone(), created[0].id.clone()], 2));
        let live = admin_list(AdminListKeysRequest { environment: "live".into(), ..Default::default() }).await;
        assert_eq!(ids(&live.keys), [created[1].id.clone(), created[0].id.clone()]);

        let first = admin_list(AdminListKeysRequest { page_size: 2, include_revoked: true, ..Default::default() }).await;
        let second = admin_list(AdminListKeysRequest {
            page_size: 2,
            include_revoked: true,
            page_token: first.next_page_token.clone(),
            ..Default::default()
        })
        .await;
        let paged: Vec<String> = ids(&first.keys).into_iter().chain(ids(&second.keys)).collect();
        assert_eq!(paged, ids(&with_revoked.keys));
        let status = server
            .admin
            .clone()
            .admin_list_keys(with_token(
                AdminListKeysRequest { page_size: 2, page_token: first.next_page_token, ..Default::default() },
                &tokens.admin,
            ))
            .await
            .expect_err("a token from a different filter");
        assert_eq!(status.code(), Code::InvalidArgument);
    }

    async fn admin_revoke_key_revokes_any_owners_key_and_is_audited(backend) {
        let (server, tokens) = start_with_tokens(backend).await;
        let request = CreateKeyRequest { abilities: strings(&["read:orders"]), ..request("acme", "k") };
        let created = server.admin.clone().create_key(with_token(request, &tokens.service)).await.expect("CreateKey").into_inner();
        let id = created.api_key.expect("api_key").id;
        assert_eq!(server.check_key(&created.key, Some("read:orders")).await.code, "allowed");

        let revoked = server
            .admin
            .clone()
            .admin_revoke_key(with_token(AdminRevokeKeyRequest { id: id.clone(), reason: "abuse report".into() }, &tokens.admin))
            .await
            .expect("AdminRevokeKey")
            .into_inner();
        assert_eq!((revoked.state(), revoked.revocation_reason.as_str()), (State::Revoked, "abuse report"));
        let denied = server.check_key(&created.key, Some("read:orders")).await;
        assert_eq!((denied.status, denied.code.as_str()), (401, "key_revoked"));

        let events = server
            .admin
            .clone()
            .list_audit_events(with_token(
                ListAuditEventsRequest { key_id: id.clone(), event: "api_key.admin_revoked".into(), ..Default::default() },
                &tokens.admin,
            ))
            .await
            .expect("ListAuditEvents")
            .into_inner()
            .events;
        assert_eq!(events.len(), 1);
        let event = &events[0];
        assert_eq!((event.actor.as_str(), event.owner_id.as_str(), event.key_id.as_str()), ("ops", "acme", id.as_str()));
        assert_eq!(event.metadata["reason"], "abuse report");
        assert_eq!(event.key_prefix, revoked.key_prefix);

        let status = server
            .admin
            .clone()
            .admin_revoke_key(with_token(AdminRevokeKeyRequest { id: uuid::Uuid::now_v7().to_string(), reason: String::new() }, &tokens.admin))
            .await
            .expect_err("unknown key");
        assert_eq!(status.code(), Code::NotFound);
    }

    async fn suspending_an_owner_denies_all_its_keys_until_resumed(backend) {
        let (server, tokens) = start_with_tokens(backend).await;
        let mut keys = Vec::new();
        for owner in ["acme", "acme", "globex"] {
            let request = CreateKeyRequest { abilities: strings(&["read:orders"]), ..request(owner, "k") };
            keys.push(server.admin.clone().create_key(with_token(request, &tokens.service)).await.expect("CreateKey").into_inner().key);
        }
        for key in &keys {
            assert_eq!(server.check_key(key, Some("read:orders")).await.code, "allowed");
        }

        let owner = server
            .admin
            .clone()
            .suspend_owner(with_token(SuspendOwnerRequest { owner_id: "acme".into(), reason: "unpaid invoices".into() }, &tokens.admin))
            .await
            .expect("SuspendOwner")
            .into_inner();
        assert_eq!((owner.owner_id.as_str(), owner.suspension_reason.as_str()), ("acme", "unpaid invoices"));
        assert!(owner.suspended_at.is_some());
        for key in &keys[..2] {
            let denied = server.check_key(key, Some("read:orders")).await;
            assert_eq!((denied.status, denied.code.as_str()), (403, "owner_suspended"));
        }
        assert_eq!(server.check_key(&keys[2], Some("read:orders")).await.code, "allowed", "other owners are unaffected");
        // A key issued while suspended is denied too.
        let request = CreateKeyRequest { abilities: strings(&["read:orders"]), ..request("acme", "new") };
        let fresh = server.admin.clone().create_key(with_token(request, &tokens.service)).await.expect("CreateKey").into_inner().key;
        assert_eq!(server.check_key(&fresh, Some("read:orders")).await.code, "owner_suspended");

        let owner = server
            .admin
            .clone()
            .resume_owner(with_token(ResumeOwnerRequest { owner_id: "acme".into() }, &tokens.admin))
            .await
            .expect("ResumeOwner")
            .into_inner();
        assert_eq!((owner.suspended_at, owner.suspension_reason.as_str()), (None, ""));
        for key in keys.iter().chain([&fresh]) {
            assert_eq!(server.check_key(key, Some("read:orders")).await.code, "allowed");
        }
    }

    async fn audit_events_record_every_change_newest_first_with_the_token_name(backend) {
        let (server, tokens) = start_with_tokens(backend).await;
        let (service, admin) = (tokens.service.as_str(), tokens.admin.as_str());
        let mut client = server.admin.clone();
        let key = client.create_key(with_token(request("acme", "audited"), service)).await.expect("CreateKey").into_inner().api_key.expect("api_key");
        client
            .update_key(with_token(UpdateKeyRequest {
                owner_id: "acme".into(),
                id: key.id.clone(),
                update_mask: mask(&["name"]),
                name: "renamed".into(),
                ..Default::default()
            }, service))
            .await
            .expect("UpdateKey");
        let rotated = client
            .rotate_key(with_token(RotateKeyRequest { owner_id: "acme".into(), id: key.id.clone(), overlap_minutes: 0 }, service))
            .await
            .expect("RotateKey")
            .into_inner();
        let successor = rotated.api_key.expect("api_key");
        client
            .revoke_key(with_token(RevokeKeyRequest { owner_id: "acme".into(), id: successor.id.clone(), reason: "retired".into() }, service))
            .await
            .expect("RevokeKey");
        client.suspend_owner(with_token(SuspendOwnerRequest { owner_id: "acme".into(), reason: "audit".into() }, admin)).await.expect("SuspendOwner");
        client.resume_owner(with_token(ResumeOwnerRequest { owner_id: "acme".into() }, admin)).await.expect("ResumeOwner");
        // Noise from another owner.
        client.create_key(with_token(request("globex", "other"), service)).await.expect("CreateKey");

        let list = |request: ListAuditEventsRequest| {
            let mut client = server.admin.clone();
            let token = tokens.admin.clone();
            async move { client.list_audit_events(with_token(request, &token)).await.map(|r| r.into_inner()) }
        };
        let names = |events: &[AuditEvent]| events.iter().map(|e| e.event.clone()).collect::<Vec<_>>();

        let acme = list(ListAuditEventsRequest { owner_id: "acme".into(), ..Default::default() }).await.expect("ListAuditEvents");
        assert_eq!(
            names(&acme.events),
            ["owner.resumed", "owner.suspended", "api_key.revoked", "api_key.rotated", "api_key.updated", "api_key.created"]
        );
        assert!(acme.next_page_token.is_empty());
        assert!(acme.events.windows(2).all(|w| instant(&w[0].at) >= instant(&w[1].at)), "newest first");
        let actors: Vec<&str> = acme.events.iter().map(|e| e.actor.as_str()).collect();
        assert_eq!(actors, ["ops", "ops", "billing", "billing", "billing", "billing"]);
        assert!(acme.events.iter().all(|e| e.owner_id == "acme"));
        let by_name: HashMap<&str, &AuditEvent> = acme.events.iter().map(|e| (e.event.as_str(), e)).collect();
        assert_eq!(by_name["api_key.created"].key_prefix, key.key_prefix);
        assert_eq!(by_name["api_key.rotated"].metadata["rotated_to_id"], successor.id);
        assert_eq!(by_name["api_key.revoked"].metadata["reason"], "retired");
        assert_eq!(by_name["api_key.revoked"].key_id, successor.id);
        assert_eq!(by_name["owner.suspended"].metadata["reason"], "audit");
        assert_eq!(by_name["owner.suspended"].key_id, "");

        let of_key = list(ListAuditEventsRequest { key_id: key.id.clone(), ..Default::default() }).await.expect("ListAuditEvents");
        assert_eq!(names(&of_key.events), ["api_key.rotated", "api_key.updated", "api_key.created"]);
        assert!(of_key.events.iter().all(|e| e.key_id == key.id));

        let suspended = list(ListAuditEventsRequest { event: "owner.suspended".into(), ..Default::default() }).await.expect("ListAuditEvents");
        assert_eq!(names(&suspended.events), ["owner.suspended"]);
        let created = list(ListAuditEventsRequest { event: "api_key.created".into(), ..Default::default() }).await.expect("ListAuditEvents");
        assert_eq!(created.events.iter().map(|e| e.owner_id.as_str()).collect::<Vec<_>>(), ["globex", "acme"]);

        // Paging over the owner filter yields the same events, in order.
        let first = list(ListAuditEventsRequest { owner_id: "acme".into(), page_size: 4, ..Default::default() }).await.expect("page 1");
        assert_eq!(first.events.len(), 4);
        let second = list(ListAuditEventsRequest { owner_id: "acme".into(), page_size: 4, page_token: first.next_page_token.clone(), ..Default::default() })
            .await
            .expect("page 2");
        assert!(second.next_page_token.is_empty());
        let paged: Vec<String> = names(&first.events).into_iter().chain(names(&second.events)).collect();
        assert_eq!(paged, names(&acme.events));

        let status = list(ListAuditEventsRequest { event: "api_key.created".into(), page_size: 4, page_token: first.next_page_token, ..Default::default() })
            .await
            .expect_err("a token from another filter");
        assert_eq!(status.code(), Code::InvalidArgument);
        let status = list(ListAuditEventsRequest { key_id: "not-a-uuid".into(), ..Default::default() }).await.expect_err("bad key id");
        assert_eq!(status.code(), Code::InvalidArgument);
    }

    async fn admin_rpcs_refuse_a_service_token(backend) {
        let (server, tokens) = start_with_tokens(backend).await;
        let request = CreateKeyRequest { abilities: strings(&["read:orders"]), ..request("acme", "k") };
        let created = server.admin.clone().create_key(with_token(request, &tokens.service)).await.expect("CreateKey").into_inner();
        let id = created.api_key.expect("api_key").id;
        let service = tokens.service.as_str();
        let mut client = server.admin.clone();
        let refused = [
            ("AdminListKeys", client.admin_list_keys(with_token(AdminListKeysRequest::default(), service)).await.map(drop)),
            (
                "AdminRevokeKey",
                client.admin_revoke_key(with_token(AdminRevokeKeyRequest { id: id.clone(), reason: "no".into() }, service)).await.map(drop),
            ),
            (
                "SuspendOwner",
                client.suspend_owner(with_token(SuspendOwnerRequest { owner_id: "acme".into(), reason: "no".into() }, service)).await.map(drop),
            ),
            ("ResumeOwner", client.resume_owner(with_token(ResumeOwnerRequest { owner_id: "acme".into() }, service)).await.map(drop)),
            ("ListAuditEvents", client.list_audit_events(with_token(ListAuditEventsRequest::default(), service)).await.map(drop)),
        ];
        for (rpc, result) in refused {
            let status = result.expect_err(rpc);
            assert_eq!(status.code(), Code::PermissionDenied, "{rpc}: {status:?}");
        }
        // Nothing happened: the key works and its owner is not suspended.
        assert_eq!(server.check_key(&created.key, Some("read:orders")).await.code, "allowed");
        let events = client
            .list_audit_events(with_token(ListAuditEventsRequest { owner_id: "acme".into(), ..Default::default() }, &tokens.admin))
            .await
            .expect("ListAuditEvents")
            .into_inner()
            .events;
        assert_eq!(events.iter().map(|e| e.event.as_str()).collect::<Vec<_>>(), ["api_key.created"]);
    }

    async fn errors_echo_only_a_short_prefix_of_the_refused_value(backend) {
        let server = TestServer::start(backend).await;
        let huge = "x y".repeat(60_000);
        let cases = [
            ("an ability", CreateKeyRequest { abilities: vec![huge.clone()], ..request("acme", "k") }),
            ("an environment", CreateKeyRequest { environment: huge.clone(), ..request("acme", "k") }),
        ];
        for (what, invalid) in cases {
            let status = server.admin.clone().create_key(invalid).await.expect_err(what);
            assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
            assert!(status.message().len() < 300, "{what}: a {}-byte message", status.message().len());
            assert!(status.message().contains("\"x yx y") && status.message().contains("(180000 bytes)"), "{what}: {status:?}");
        }
        let id = server.create_key("acme", &[]).await.api_key.expect("api_key").id;
        let update = UpdateKeyRequest { owner_id: "acme".into(), id, update_mask: mask(&[&huge]), ..Default::default() };
        let status = server.update(update).await.expect_err("an unknown path");
        assert!(status.message().len() < 300, "a {}-byte message", status.message().len());
    }

    async fn a_request_above_the_size_bound_is_refused_before_it_is_decoded(backend) {
        let server = TestServer::start(backend).await;
        let oversized = CreateKeyRequest {
            metadata: metadata(&[("note", &"n".repeat(keygate::app::MAX_ADMIN_REQUEST_BYTES))]),
            ..request("acme", "k")
        };
        let status = server.admin.clone().create_key(oversized).await.expect_err("oversized");
        assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
        assert!(status.message().len() < 300, "{status:?}");
        let listed = server.list(ListKeysRequest { owner_id: "acme".into(), ..Default::default() }).await;
        assert_eq!(listed.total_size, 0);
    }

    async fn invalid_utf8_in_a_string_field_is_invalid_argument(backend) {
        /// CreateKeyRequest with `owner_id` as raw bytes, to send what no
        /// well-behaved client can.
        #[derive(Clone, PartialEq, prost::Message)]
        struct RawCreateKey {
            #[prost(bytes = "vec", tag = "1")]
            owner_id: Vec<u8>,
            #[prost(string, tag = "2")]
            name: String,
        }
        let server = TestServer::start(backend).await;
        let mut grpc = tonic::client::Grpc::new(common::channel(server.running().admin_addr).await);
        grpc.ready().await.expect("ready");
        let path = http::uri::PathAndQuery::from_static("/keygate.admin.v1.KeyAdmin/CreateKey");
        let request = RawCreateKey { owner_id: b"bob\xff\xfe".to_vec(), name: "k".into() };
        let status = grpc
            .unary::<_, keygate::proto::CreateKeyResponse, _>(
                tonic::Request::new(request),
                path,
                tonic_prost::ProstCodec::default(),
            )
            .await
            .expect_err("invalid UTF-8");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains("owner_id"), "{status:?}");
    }

    async fn page_tokens_are_sealed_with_a_key_every_server_on_the_database_shares(backend) {
        let mut server = TestServer::start(backend).await;
        for i in 0..3 {
            server.create(request("acme", &format!("key {i}"))).await;
        }
        let first = ListKeysRequest { owner_id: "acme".into(), page_size: 2, ..Default::default() };
        let token = server.list(first.clone()).await.next_page_token;

        // A second server on the same database accepts the first one's
        // token: a replica beside it on PostgreSQL; on SQLite, which one
        // process serves (README, Configuration), the file served again
        // after the first stopped.
        let sqlite = backend == common::Backend::Sqlite;
        if sqlite {
            server.stop().await;
        }
        let other = keygate::app::start(common::test_settings(&server.db).validate().unwrap()).await.unwrap();
        let mut other_client = keygate::proto::key_admin_client::KeyAdminClient::new(common::channel(other.admin_addr).await);
        let page = other_client
            .list_keys(ListKeysRequest { page_token: token.clone(), ..first.clone() })
            .await
            .expect("the other server accepts the token")
            .into_inner();
        assert_eq!(page.keys.len(), 1);
        other.stop().await;
        let server = if sqlite { TestServer::start_on(server.db, |_| {}).await } else { server };

        // Anyone who reads the source can compute the query fingerprint; the
        // token only verifies when sealed with the stored key.
        use keygate::admin::page_token::{self, PageKey};
        let last = server.list(first.clone()).await.keys[1].clone();
        let at = instant(&last.created_at);
        let id = uuid::Uuid::parse_str(&last.id).unwrap();
        let query = page_token::fingerprint(&["keys", "acme", "*", "live"]);
        let stored = common::scalar_bytes(&server.db, "SELECT value FROM server_secrets WHERE name = $1", page_token::SECRET_NAME).await;
        assert_eq!(stored.len(), 32);
        let genuine = page_token::encode(&PageKey::new(&stored), at, id, query);
        assert_eq!(genuine, token, "the test seals as the server does");
        for guess in [&b"keygate.page-token.v1"[..], b"", &[0; 32]] {
            let forged = page_token::encode(&PageKey::new(guess), at, id, query);
            let status = server.admin.clone().list_keys(ListKeysRequest { page_token: forged, ..first.clone() }).await.unwrap_err();
            assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        }
    }
}
