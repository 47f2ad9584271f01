//! Key hygiene (docs/behaviour.md, "Key hygiene") against a real server and
//! database: IP allow-lists on Check, forward-auth and the admin APIs;
//! dormant keys retired by the prune job on the test's clock (a
//! `Clock::manual` the server reads); keys imported
//! from another system (gRPC and `keygate import`); leak reports signed with
//! a key pair made here, refused when forged or replayed.

use crate::common;

use std::{collections::HashMap, time::Duration};

use base64::{engine::general_purpose::STANDARD, Engine};
use chrono::{DateTime, Utc};
use common::{check_request, eventually, replica::Replica, Backend, Decision, TestDb, TestServer};
use keygate::clock::Clock;
use keygate::proto::{
    import_key_result::Outcome, import_key_row::Secret, CreateKeyRequest, CreateWebhookRequest,
    GetKeyRequest, ImportKeyRow, ImportKeysRequest, ListAuditEventsRequest, ListKeysRequest,
    ListWebhookDeliveriesRequest, ReportLeakedKeyRequest, UpdateKeyRequest,
};
use p256::{
    ecdsa::{signature::Signer as _, Signature, SigningKey},
    pkcs8::{EncodePublicKey, LineEnding},
};
use sha2::{Digest, Sha256};
use tonic::Code;

const OWNER: &str = "acme";

/// A Check of `GET /v1/orders` carrying `key`, from behind the proxies that
/// wrote `forwarded_for`.
async fn check_from(
    server: &TestServer,
    key: &str,
    forwarded_for: &str,
    abilities: Option<&str>,
) -> Decision {
    let headers = HashMap::from([
        ("authorization".to_string(), format!("Bearer {key}")),
        ("x-forwarded-for".to_string(), forwarded_for.to_string()),
    ]);
    let mut extensions = HashMap::new();
    if let Some(abilities) = abilities {
        extensions.insert("keygate.abilities".to_string(), abilities.to_string());
    }
    server
        .check(check_request(headers, "GET", "/v1/orders", extensions))
        .await
        .expect("Check")
}

fn outcome(server_code: &Decision) -> (u16, &str) {
    (server_code.status, server_code.code.as_str())
}

/// A webhook of `OWNER` for `event` at an address nothing listens on; the
/// server under test runs with its dispatcher off, so what is sent to it
/// stays in the outbox to be read. Returns its id.
async fn webhook_for(server: &TestServer, event: &str) -> String {
    server
        .admin
        .clone()
        .create_webhook(CreateWebhookRequest {
            owner_id: OWNER.into(),
            url: "http://127.0.0.1:9/hooks".into(),
            events: vec![event.into()],
            enabled: None,
        })
        .await
        .expect("CreateWebhook")
        .into_inner()
        .webhook
        .expect("the created webhook")
        .id
}

async fn deliveries_to(
    server: &TestServer,
    webhook_id: String,
) -> Vec<keygate::proto::WebhookDelivery> {
    server
        .admin
        .clone()
        .list_webhook_deliveries(ListWebhookDeliveriesRequest {
            owner_id: OWNER.into(),
            webhook_id,
            ..Default::default()
        })
        .await
        .expect("ListWebhookDeliveries")
        .into_inner()
        .deliveries
}

/// How many keys `OWNER` has, as ListKeys counts them.
async fn keys_of_owner(server: &TestServer) -> i64 {
    server
        .admin
        .clone()
        .list_keys(ListKeysRequest {
            owner_id: OWNER.into(),
            ..Default::default()
        })
        .await
        .expect("ListKeys")
        .into_inner()
        .total_size
}

async fn get_key(server: &TestServer, id: &str) -> keygate::proto::ApiKey {
    server
        .admin
        .clone()
        .get_key(GetKeyRequest {
            owner_id: OWNER.into(),
            id: id.into(),
        })
        .await
        .expect("GetKey")
        .into_inner()
}

async fn audit_events(server: &TestServer, event: &str) -> Vec<keygate::proto::AuditEvent> {
    server
        .admin
        .clone()
        .list_audit_events(ListAuditEventsRequest {
            event: event.into(),
            page_size: 100,
            ..Default::default()
        })
        .await
        .expect("ListAuditEvents")
        .into_inner()
        .events
}

mod allow_lists {
    use super::*;

    crate::on_both_backends! {
        async fn check_and_forward_auth_allow_only_clients_inside_the_list(backend) {
            let server = TestServer::start_with(backend, |s| s.trusted_proxy_hops = Some(1)).await;
            let created = server
                .create(CreateKeyRequest {
                    owner_id: OWNER.into(),
                    name: "office only".into(),
                    abilities: vec!["read:orders".into()],
                    allowed_cidrs: vec!["203.0.113.0/24".into(), "2001:DB8::/32".into()],
                    ..Default::default()
                })
                .await;
            let key = created.key.as_str();
            let stored = created.api_key.unwrap();
            assert_eq!(stored.allowed_cidrs, ["203.0.113.0/24", "2001:db8::/32"]);

            // One trusted hop: the client is the rightmost address.
            let inside_v4 = check_from(&server, key, "198.51.100.1, 203.0.113.7", None).await;
            assert_eq!(outcome(&inside_v4), (200, "allowed"));
            let outside_v4 = check_from(&server, key, "203.0.113.7, 198.51.100.1", None).await;
            assert_eq!(outcome(&outside_v4), (403, "ip_not_allowed"));
            let inside_v6 = check_from(&server, key, "2001:db8:0:1::5", None).await;
            assert_eq!(outcome(&inside_v6), (200, "allowed"));
            let outside_v6 = check_from(&server, key, "2001:db9::1", None).await;
            assert_eq!(outcome(&outside_v6), (403, "ip_not_allowed"));
            // Outside the list, the route's abilities are not even judged.
            let outside_lacking = check_from(&server, key, "192.0.2.1", Some("write:orders")).await;
            assert_eq!(outcome(&outside_lacking), (403, "ip_not_allowed"));

            let forward_auth = server.running().forward_auth_addr;
            let bearer = format!("Bearer {key}");
            let refused = common::http::forward_auth(
                forward_auth,
                "/v1/orders",
                &[("authorization", bearer.as_bytes()), ("x-forwarded-for", b"192.0.2.1")],
            )
            .await;
            assert_eq!((refused.status, refused.code()), (403, "ip_not_allowed".to_string()));
            let let_through = common::http::forward_auth(
                forward_auth,
                "/v1/orders",
                &[("authorization", bearer.as_bytes()), ("x-forwarded-for", b"203.0.113.99")],
            )
            .await;
            assert_eq!(let_through.status, 200);

            // An empty list allows every address again.
            server
                .admin
                .clone()
                .update_key(UpdateKeyRequest {
                    owner_id: OWNER.into(),
                    id: stored.id.clone(),
                    update_mask: Some(prost_types::FieldMask { paths: vec!["allowed_cidrs".into()] }),
                    ..Default::default()
                })
                .await
                .expect("UpdateKey");
            let anywhere = check_from(&server, key, "192.0.2.1", None).await;
            assert_eq!(outcome(&anywhere), (200, "allowed"));
            assert!(get_key(&server, &stored.id).await.allowed_cidrs.is_empty());
        }

        async fn without_trusted_hops_the_source_address_is_judged_not_the_header(backend) {
            use envoy_types::pb::envoy::config::core::v3::{address::Address, Address as EnvoyAddress, SocketAddress};
            use envoy_types::pb::envoy::service::auth::v3::attribute_context::Peer;
            let server = TestServer::start(backend).await;
            let created = server
                .create(CreateKeyRequest {
                    owner_id: OWNER.into(),
                    name: "office only".into(),
                    allowed_cidrs: vec!["203.0.113.0/24".into()],
                    ..Default::default()
                })
                .await;
            let from = |source: &str| {
                let headers = HashMap::from([
                    ("authorization".to_string(), format!("Bearer {}", created.key)),
                    // A client may write anything here; with no trusted hop it is ignored.
                    ("x-forwarded-for".to_string(), "203.0.113.7".to_string()),
                ]);
                let mut request = check_request(headers, "GET", "/v1/orders", HashMap::new());
                request.attributes.as_mut().unwrap().source = Some(Peer {
                    address: Some(EnvoyAddress {
                        address: Some(Address::SocketAddress(SocketAddress {
                            address: source.into(),
                            ..Default::default()
                        })),
                    }),
                    ..Default::default()
                });
                request
            };
            let outside = server.check(from("192.0.2.1")).await.unwrap();
            assert_eq!(outcome(&outside), (403, "ip_not_allowed"));
            let inside = server.check(from("203.0.113.50")).await.unwrap();
            assert_eq!(outcome(&inside), (200, "allowed"));
            let unknown = check_from(&server, &created.key, "203.0.113.7", None).await;
            assert_eq!(outcome(&unknown), (403, "ip_not_allowed"));
        }

        async fn a_key_calling_the_rest_api_is_held_to_its_allow_list(backend) {
            let server = TestServer::start_with(backend, |s| s.trusted_proxy_hops = Some(1)).await;
            let created = server
                .create(CreateKeyRequest {
                    owner_id: OWNER.into(),
                    name: "self service".into(),
                    abilities: vec!["keygate:keys".into()],
                    allowed_cidrs: vec!["192.0.2.0/24".into()],
                    ..Default::default()
                })
                .await;
            let list = |forwarded_for: &'static str| {
                reqwest::Client::new()
                    .get(format!("http://{}/v1/api-keys", server.running().http_addr))
                    .bearer_auth(&created.key)
                    .header("x-forwarded-for", forwarded_for)
                    .send()
            };
            assert_eq!(list("198.51.100.1, 192.0.2.9").await.unwrap().status(), 200);
            let refused = list("192.0.2.9, 198.51.100.1").await.unwrap();
            assert_eq!(refused.status(), 403);
        }

        async fn a_key_with_an_allow_list_grants_only_networks_within_it(backend) {
            let server = TestServer::start_with(backend, |s| s.trusted_proxy_hops = Some(1)).await;
            let own = server
                .create(CreateKeyRequest {
                    owner_id: OWNER.into(),
                    name: "self service".into(),
                    abilities: vec!["keygate:keys".into(), "read:orders".into()],
                    allowed_cidrs: vec!["192.0.2.0/24".into()],
                    ..Default::default()
                })
                .await;
            let base = format!("http://{}/v1/api-keys", server.running().http_addr);
            let create = |allowed_cidrs: serde_json::Value| {
                reqwest::Client::new()
                    .post(&base)
                    .bearer_auth(&own.key)
                    .header("x-forwarded-for", "192.0.2.9")
                    .json(&serde_json::json!({
                        "owner_id": OWNER,
                        "name": "minted",
                        "abilities": ["read:orders"],
                        "allowed_cidrs": allowed_cidrs
                    }))
                    .send()
            };
            for wider in [serde_json::json!([]), serde_json::json!(["192.0.0.0/16"])] {
                let refused = create(wider.clone()).await.unwrap();
                assert_eq!(refused.status(), 403, "{wider}");
                let error: serde_json::Value = refused.json().await.unwrap();
                let message = error["error"]["message"].as_str().unwrap_or_default();
                assert!(message.contains("allowed_cidrs"), "{error}");
            }
            let narrower = create(serde_json::json!(["192.0.2.128/25"])).await.unwrap();
            assert_eq!(narrower.status(), 201);
            let minted: serde_json::Value = narrower.json().await.unwrap();
            let id = minted["data"]["api_key"]["id"].as_str().unwrap().to_owned();
            // Widening that key afterwards is refused as well, and changes nothing.
            let widened = reqwest::Client::new()
                .patch(format!("{base}/{id}"))
                .bearer_auth(&own.key)
                .header("x-forwarded-for", "192.0.2.9")
                .json(&serde_json::json!({ "owner_id": OWNER, "allowed_cidrs": [] }))
                .send()
                .await
                .unwrap();
            assert_eq!(widened.status(), 403);
            assert_eq!(get_key(&server, &id).await.allowed_cidrs, ["192.0.2.128/25"]);
            assert_eq!(keys_of_owner(&server).await, 2, "a refused key was stored");
        }

        async fn a_malformed_cidr_is_refused_naming_the_entry_and_nothing_is_stored(backend) {
            let server = TestServer::start(backend).await;
            let refused = server
                .admin
                .clone()
                .create_key(CreateKeyRequest {
                    owner_id: OWNER.into(),
                    name: "typo".into(),
                    allowed_cidrs: vec!["10.0.0.0/8".into(), "10.0.0.0/33".into()],
                    ..Default::default()
                })
                .await
                .unwrap_err();
            assert_eq!(refused.code(), Code::InvalidArgument);
            assert!(refused.message().contains("allowed_cidrs[1]"), "{}", refused.message());
            let host_bits = server
                .admin
                .clone()
                .create_key(CreateKeyRequest {
                    owner_id: OWNER.into(),
                    name: "typo".into(),
                    allowed_cidrs: vec!["10.1.2.3/8".into()],
                    ..Default::default()
                })
                .await
                .unwrap_err();
            assert_eq!(host_bits.code(), Code::InvalidArgument);
            assert!(host_bits.message().contains("10.0.0.0/8"), "{}", host_bits.message());
            assert_eq!(keys_of_owner(&server).await, 0);
        }

        async fn the_rest_api_sets_and_shows_allowed_cidrs_and_refuses_bad_ones(backend) {
            let server = TestServer::start(backend).await;
            let base = format!("http://{}", server.running().http_addr);
            let http = reqwest::Client::new();
            let created = http
                .post(format!("{base}/v1/api-keys"))
                .json(&serde_json::json!({
                    "owner_id": OWNER,
                    "name": "rest",
                    "abilities": [],
                    "allowed_cidrs": ["192.0.2.0/24"]
                }))
                .send()
                .await
                .unwrap();
            assert_eq!(created.status(), 201);
            let body: serde_json::Value = created.json().await.unwrap();
            assert_eq!(body["data"]["api_key"]["allowed_cidrs"], serde_json::json!(["192.0.2.0/24"]));
            let id = body["data"]["api_key"]["id"].as_str().unwrap().to_owned();
            let refused = http
                .patch(format!("{base}/v1/api-keys/{id}"))
                .json(&serde_json::json!({ "owner_id": OWNER, "allowed_cidrs": ["192.0.2.300/24"] }))
                .send()
                .await
                .unwrap();
            assert_eq!(refused.status(), 422);
            let error: serde_json::Value = refused.json().await.unwrap();
            assert!(error["error"]["fields"]["allowed_cidrs"].is_array(), "{error}");
            assert_eq!(get_key(&server, &id).await.allowed_cidrs, ["192.0.2.0/24"]);
            let document: serde_json::Value = http
                .get(format!("{base}/openapi.json"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let schemas = &document["components"]["schemas"];
            for shape in ["ApiKey", "CreateKeyBody", "UpdateKeyBody"] {
                assert!(schemas[shape]["properties"]["allowed_cidrs"].is_object(), "{shape}");
            }
        }
    }
}

mod dormancy {
    use super::*;

    crate::on_both_backends! {
        async fn the_prune_job_revokes_keys_unused_for_the_dormancy_period(backend) {
            let clock = Clock::manual("2030-01-01T00:00:00Z".parse().unwrap());
            let server = TestServer::start_with_clock(backend, clock.clone(), |s| {
                s.dormant_after = Some("90d".into());
                s.webhook_allow_private = Some(true);
                s.webhook_allow_http = Some(true);
                s.webhooks_enabled = Some(false);
            })
            .await;
            let webhook = webhook_for(&server, "api_key.dormant").await;
            let idle = server.create_key(OWNER, &[]).await;
            clock.advance(chrono::Duration::minutes(1));
            let busy = server.create_key(OWNER, &[]).await;
            let (idle_id, busy_id) = (idle.api_key.unwrap().id, busy.api_key.unwrap().id);
            assert_eq!(server.check_key(&busy.key, None).await.code, "allowed");
            let used = eventually(Duration::from_secs(10), async || {
                get_key(&server, &busy_id).await.last_used_at.is_some()
            })
            .await;
            assert!(used, "the usage flush never recorded the busy key's use");
            let last_used = instant(get_key(&server, &busy_id).await.last_used_at.unwrap());

            assert_eq!(last_used, clock.now(), "the use is recorded at the server's clock");

            // A moment before the busy key's last use is 90 days old. The
            // idle key, never used, counts from its creation a minute
            // earlier.
            let now = last_used + chrono::Duration::days(90) - chrono::Duration::microseconds(1);
            let admin = server.running().admin.clone();
            clock.set(now - chrono::Duration::days(1));
            let before = admin.prune("test-clock").await.unwrap().unwrap();
            assert_eq!(before.keys_dormant, 0);
            clock.set(now);
            let summary = admin.prune("test-clock").await.unwrap().unwrap();
            assert_eq!(summary.keys_dormant, 1);

            // Revoked at the instant the job ran, and Check agrees.
            let retired = get_key(&server, &idle_id).await;
            assert_eq!(retired.revocation_reason, "dormant");
            assert_eq!(instant(retired.revoked_at.unwrap()), now);
            assert!(get_key(&server, &busy_id).await.revoked_at.is_none());
            assert_eq!(server.check_key(&idle.key, None).await.code, "key_revoked");
            assert_eq!(server.check_key(&busy.key, None).await.code, "allowed");
            let events = audit_events(&server, "api_key.dormant").await;
            assert_eq!(events.len(), 1);
            assert_eq!(events[0].key_id, idle_id);
            let deliveries = deliveries_to(&server, webhook).await;
            assert_eq!(deliveries.len(), 1);
            assert_eq!(deliveries[0].event_type, "api_key.dormant");
            assert!(deliveries[0].payload.contains(&idle_id));
        }

        async fn without_a_dormancy_period_nothing_is_retired(backend) {
            let clock = Clock::manual(Utc::now());
            let server = TestServer::start_with_clock(backend, clock.clone(), |_| {}).await;
            let idle = server.create_key(OWNER, &[]).await;
            clock.advance(chrono::Duration::days(3650));
            let summary = server.running().admin.prune("test-clock").await.unwrap().unwrap();
            assert_eq!(summary.keys_dormant, 0);
            let key = get_key(&server, &idle.api_key.unwrap().id).await;
            assert!(key.revoked_at.is_none());
        }
    }
}

fn instant(ts: prost_types::Timestamp) -> DateTime<Utc> {
    DateTime::from_timestamp(ts.seconds, ts.nanos as u32).unwrap()
}

/// A key in another system's format: `lk_` and 40 characters.
fn legacy_key(seed: char) -> String {
    let body: String = "Ab3dE5gH7jK9mN2pQ4sT6vW8yZ"
        .chars()
        .cycle()
        .take(39)
        .collect();
    format!("lk_{seed}{body}")
}

fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

fn row(owner: &str, abilities: &[&str], secret: Secret) -> ImportKeyRow {
    ImportKeyRow {
        owner_id: owner.into(),
        name: "from the old system".into(),
        abilities: abilities.iter().map(|a| a.to_string()).collect(),
        secret: Some(secret),
        ..Default::default()
    }
}

mod imports {
    use super::*;

    fn imported_prefixes(settings: &mut keygate::config::Settings) {
        settings.imported_prefixes = Some("lk_".into());
        settings.max_keys_per_owner = Some(3);
    }

    crate::on_both_backends! {
        async fn imported_keys_pass_check_with_their_abilities_and_a_changed_one_does_not(backend) {
            let server = TestServer::start_with(backend, imported_prefixes).await;
            let (plain, hashed) = (legacy_key('a'), legacy_key('b'));
            let rows = vec![
                row(OWNER, &["read:orders"], Secret::Key(plain.clone())),
                row(OWNER, &["write:orders"], Secret::KeySha256(sha256_hex(&hashed))),
                row(OWNER, &[], Secret::KeySha256("abcd".into())),
                row(OWNER, &[], Secret::Key(plain.clone())),
                ImportKeyRow { environment: "staging".into(), ..row(OWNER, &[], Secret::Key(legacy_key('c'))) },
            ];
            let report = server
                .admin
                .clone()
                .import_keys(ImportKeysRequest { rows: rows.clone() })
                .await
                .expect("ImportKeys")
                .into_inner();
            assert_eq!((report.imported, report.already_present, report.invalid), (2, 0, 3));
            let outcomes: Vec<_> = report.results.iter().map(|r| (r.row, r.outcome())).collect();
            assert_eq!(outcomes, [
                (1, Outcome::Imported),
                (2, Outcome::Imported),
                (3, Outcome::Invalid),
                (4, Outcome::Invalid),
                (5, Outcome::Invalid),
            ]);
            assert!(report.results[2].reason.contains("64 hexadecimal digits"), "{}", report.results[2].reason);
            assert_eq!(report.results[3].reason, "the same key as row 1");
            assert!(report.results[4].reason.contains("environment"), "{}", report.results[4].reason);

            let reader = check_from(&server, &plain, "192.0.2.1", Some("read:orders")).await;
            assert_eq!(outcome(&reader), (200, "allowed"));
            assert_eq!(reader.upstream_headers["x-keygate-owner-id"], OWNER);
            assert_eq!(reader.upstream_headers["x-keygate-key-prefix"], "lk_aAb3dE5g");
            let lacking = check_from(&server, &plain, "192.0.2.1", Some("write:orders")).await;
            assert_eq!(outcome(&lacking), (403, "insufficient_ability"));
            let writer = check_from(&server, &hashed, "192.0.2.1", Some("write:orders")).await;
            assert_eq!(outcome(&writer), (200, "allowed"));
            let mut changed = hashed.clone();
            changed.replace_range(10..11, "X");
            assert_ne!(changed, hashed);
            let forged = check_from(&server, &changed, "192.0.2.1", None).await;
            assert_eq!(outcome(&forged), (401, "invalid_key"));

            // Idempotent by hash: the same rows again change nothing.
            let again = server
                .admin
                .clone()
                .import_keys(ImportKeysRequest { rows: rows[..2].to_vec() })
                .await
                .unwrap()
                .into_inner();
            assert_eq!((again.imported, again.already_present), (0, 2));
            assert_eq!(again.results[0].id, report.results[0].id);
            assert_eq!(audit_events(&server, "api_key.imported").await.len(), 2);

            // The owner limit (3) holds: one more fits, the next is refused.
            let over = server
                .admin
                .clone()
                .import_keys(ImportKeysRequest {
                    rows: vec![
                        row(OWNER, &[], Secret::Key(legacy_key('d'))),
                        row(OWNER, &[], Secret::Key(legacy_key('e'))),
                    ],
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!((over.imported, over.invalid), (1, 1));
            assert!(over.results[1].reason.contains("maximum of 3"), "{}", over.results[1].reason);
            let listed = server
                .admin
                .clone()
                .list_keys(ListKeysRequest { owner_id: OWNER.into(), ..Default::default() })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(listed.total_size, 3);
            assert!(listed.keys.iter().all(|k| k.imported));
        }

        async fn imports_are_refused_until_their_prefixes_are_configured(backend) {
            let server = TestServer::start(backend).await;
            let refused = server
                .admin
                .clone()
                .import_keys(ImportKeysRequest {
                    rows: vec![row(OWNER, &[], Secret::Key(legacy_key('a')))],
                })
                .await
                .unwrap_err();
            assert_eq!(refused.code(), Code::FailedPrecondition);
            assert!(refused.message().contains("KEYGATE_IMPORTED_PREFIXES"));
        }

        async fn the_import_command_reports_each_row_and_the_keys_then_work(backend) {
            let db = TestDb::new(backend).await;
            let cli = |args: &[&str], file: Option<&std::path::Path>| {
                let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_keygate"));
                command
                    .args(args)
                    .env("KEYGATE_DATABASE_URL", &db.url)
                    .env("KEYGATE_IMPORTED_PREFIXES", "lk_");
                if let Some(file) = file {
                    command.arg(file);
                }
                command.output().unwrap()
            };
            assert!(cli(&["migrate"], None).status.success());
            let key = legacy_key('f');
            let dir = tempfile::tempdir().unwrap();
            let file = dir.path().join("keys.jsonl");
            let lines = [
                serde_json::json!({
                    "owner_id": OWNER, "name": "seed", "environment": "live",
                    "abilities": ["read:orders"], "superkey": false,
                    "metadata": {"plan": "gold"}, "key_sha256": sha256_hex(&key)
                })
                .to_string(),
                "{not json".to_owned(),
                serde_json::json!({ "owner_id": OWNER, "name": "short", "key_sha256": "00ff" }).to_string(),
                serde_json::json!({ "owner_id": OWNER, "name": "odd", "key": legacy_key('g'), "colour": "red" }).to_string(),
            ];
            std::fs::write(&file, lines.join("\n") + "\n").unwrap();
            let output = cli(&["import"], Some(&file));
            let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
            assert!(!output.status.success(), "{stdout}");
            assert!(stdout.contains("row 1: imported"), "{stdout}");
            assert!(stdout.contains("row 2: invalid: not a JSON object"), "{stdout}");
            assert!(stdout.contains("row 3: invalid: key_sha256 must be 64 hexadecimal digits"), "{stdout}");
            assert!(stdout.contains("row 4: invalid: unknown field \"colour\""), "{stdout}");
            assert!(stdout.contains("imported 1, already present 0, invalid 3"), "{stdout}");
            assert!(!stdout.contains(&key) && !stdout.contains(&legacy_key('g')));

            let server = TestServer::start_on(db, |s| s.imported_prefixes = Some("lk_".into())).await;
            let allowed = check_from(&server, &key, "192.0.2.1", Some("read:orders")).await;
            assert_eq!(outcome(&allowed), (200, "allowed"));
            assert_eq!(allowed.upstream_headers["x-keygate-key-prefix"], "lk_");
        }
    }
}

/// A key pair for signing reports, and GitHub's public-keys file for it.
struct Signer {
    key: SigningKey,
    identifier: String,
}

impl Signer {
    fn new(identifier: &str) -> Signer {
        use rand::RngCore;
        loop {
            let mut secret = [0u8; 32];
            rand::rng().fill_bytes(&mut secret);
            if let Ok(key) = SigningKey::from_slice(&secret) {
                return Signer {
                    key,
                    identifier: identifier.into(),
                };
            }
        }
    }

    fn keys_file(&self, dir: &std::path::Path) -> std::path::PathBuf {
        let pem = self
            .key
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap();
        let file = dir.join("github-keys.json");
        let json = serde_json::json!({
            "public_keys": [{ "key_identifier": self.identifier, "key": pem, "is_current": true }]
        });
        std::fs::write(&file, json.to_string()).unwrap();
        file
    }

    fn sign(&self, body: &[u8]) -> String {
        let signature: Signature = self.key.sign(body);
        STANDARD.encode(signature.to_der().as_bytes())
    }
}

const LEAK_URL: &str = "https://github.com/acme/app/blob/main/.env";

fn report(tokens: &[&str]) -> Vec<u8> {
    let entries: Vec<_> = tokens
        .iter()
        .map(|token| {
            serde_json::json!({ "token": token, "type": "keygate_api_key", "url": LEAK_URL, "source": "content" })
        })
        .collect();
    serde_json::to_vec(&entries).unwrap()
}

async fn post_report(
    server: &TestServer,
    body: &[u8],
    signature: Option<(&str, String)>,
) -> reqwest::Response {
    let mut request = reqwest::Client::new()
        .post(format!(
            "http://{}/v1/secret-scanning/github",
            server.running().http_addr
        ))
        .header("content-type", "application/json")
        .body(body.to_vec());
    if let Some((identifier, signature)) = signature {
        request = request
            .header("Github-Public-Key-Identifier", identifier)
            .header("Github-Public-Key-Signature", signature);
    }
    request.send().await.unwrap()
}

/// A key with its last character changed: the same shape, not the key.
fn one_off(key: &str) -> String {
    let mut changed = key.to_owned();
    let last = changed.pop().unwrap();
    changed.push(if last == 'a' { 'b' } else { 'a' });
    changed
}

mod leaks {
    use super::*;

    crate::on_both_backends! {
        async fn a_signed_report_revokes_a_known_key_and_forgeries_and_replays_change_nothing(backend) {
            let dir = tempfile::tempdir().unwrap();
            let github = Signer::new("github-test-key");
            let keys_file = github.keys_file(dir.path());
            let clock = Clock::manual(Utc::now());
            let server = TestServer::start_with_clock(backend, clock.clone(), |s| {
                s.github_scanning_keys = Some(keys_file.clone());
                s.webhook_allow_private = Some(true);
                s.webhook_allow_http = Some(true);
                s.webhooks_enabled = Some(false);
            })
            .await;
            let webhook = webhook_for(&server, "api_key.leaked").await;
            let leaked = server.create_key(OWNER, &[]).await;
            let leaked_id = leaked.api_key.unwrap().id;
            let body = report(&[&leaked.key, &one_off(&leaked.key), "sk_live_notakeyatall"]);

            let unsigned = post_report(&server, &body, None).await;
            assert_eq!(unsigned.status(), 401);
            let impostor = Signer::new("github-test-key");
            let forged = post_report(&server, &body, Some((&github.identifier, impostor.sign(&body)))).await;
            assert_eq!(forged.status(), 401);
            let unknown_key = post_report(&server, &body, Some(("another-key", github.sign(&body)))).await;
            assert_eq!(unknown_key.status(), 401);
            assert_eq!(server.check_key(&leaked.key, None).await.code, "allowed");

            let answered = post_report(&server, &body, Some((&github.identifier, github.sign(&body)))).await;
            assert_eq!(answered.status(), 200);
            let labels: serde_json::Value = answered.json().await.unwrap();
            assert_eq!(labels, serde_json::json!([
                { "token_raw": leaked.key, "token_type": "keygate_api_key", "label": "true_positive" },
                { "token_raw": one_off(&leaked.key), "token_type": "keygate_api_key", "label": "false_positive" },
                { "token_raw": "sk_live_notakeyatall", "token_type": "keygate_api_key", "label": "false_positive" },
            ]));
            assert_eq!(server.check_key(&leaked.key, None).await.code, "key_revoked");
            let revoked = get_key(&server, &leaked_id).await;
            assert_eq!(revoked.revocation_reason, format!("leaked: {LEAK_URL}"));
            let events = audit_events(&server, "api_key.leaked").await;
            assert_eq!(events.len(), 1);
            assert_eq!(events[0].metadata["action"], "revoked");
            let sent = deliveries_to(&server, webhook.clone()).await;
            assert_eq!(sent.len(), 1, "the leak was not sent to the owner's webhook");
            assert_eq!(sent[0].event_type, "api_key.leaked");
            assert!(sent[0].payload.contains(&leaked_id));
            assert!(!sent[0].payload.contains(&leaked.key), "the payload holds the key");

            let replayed = post_report(&server, &body, Some((&github.identifier, github.sign(&body)))).await;
            assert_eq!(replayed.status(), 401);
            assert_eq!(audit_events(&server, "api_key.leaked").await.len(), 1);

            // Reports are kept as long as usage (30 days by default), then
            // pruned: a report that old, replayed, finds its key revoked.
            let admin = server.running().admin.clone();
            clock.advance(chrono::Duration::days(29));
            let kept = admin.prune("test-clock").await.unwrap().unwrap();
            assert_eq!(kept.leak_reports_deleted, 0);
            clock.advance(chrono::Duration::days(2));
            let pruned = admin.prune("test-clock").await.unwrap().unwrap();
            assert_eq!(pruned.leak_reports_deleted, 1);
            let late_replay = post_report(&server, &body, Some((&github.identifier, github.sign(&body)))).await;
            assert_eq!(late_replay.status(), 200);
            assert_eq!(server.check_key(&leaked.key, None).await.code, "key_revoked");
        }

        async fn admins_report_leaks_and_notify_mode_keeps_the_key_working(backend) {
            let server = TestServer::start_with(backend, |s| s.leak_action = Some("notify".into())).await;
            let leaked = server.create_key(OWNER, &[]).await;
            let reported = server
                .admin
                .clone()
                .report_leaked_key(ReportLeakedKeyRequest { key: leaked.key.clone(), url: LEAK_URL.into() })
                .await
                .expect("ReportLeakedKey")
                .into_inner();
            assert!(reported.known);
            assert!(reported.api_key.unwrap().revoked_at.is_none());
            assert_eq!(server.check_key(&leaked.key, None).await.code, "allowed");
            let events = audit_events(&server, "api_key.leaked").await;
            assert_eq!(events.len(), 1);
            assert_eq!(events[0].metadata["action"], "notified");

            let unknown = server
                .admin
                .clone()
                .report_leaked_key(ReportLeakedKeyRequest { key: one_off(&leaked.key), url: LEAK_URL.into() })
                .await
                .unwrap()
                .into_inner();
            assert!(!unknown.known && unknown.api_key.is_none());
        }

        async fn without_a_keys_file_the_report_route_is_not_there(backend) {
            let server = TestServer::start(backend).await;
            let body = report(&["sk_live_x"]);
            let answer = post_report(&server, &body, Some(("k", "c2ln".into()))).await;
            assert_eq!(answer.status(), 404);
        }
    }

    /// A report handled by one replica denies the key on another within the
    /// propagation bound, not after its cache TTL.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_leaked_key_is_denied_on_every_replica() {
        let dir = tempfile::tempdir().unwrap();
        let github = Signer::new("github-test-key");
        let keys_file = github.keys_file(dir.path());
        let server = TestServer::start_with(Backend::Postgres, |s| {
            s.github_scanning_keys = Some(keys_file.clone());
            s.cache_ttl = Some("1h".into());
        })
        .await;
        let other = Replica::start(&server.db.url, &[("KEYGATE_CACHE_TTL", "1h")]).await;
        let leaked = server.create_key(OWNER, &[]).await;
        assert!(
            eventually(Duration::from_secs(5), async || other
                .code(&leaked.key)
                .await
                == "allowed")
            .await
        );
        let body = report(&[&leaked.key]);
        let answered = post_report(
            &server,
            &body,
            Some((&github.identifier, github.sign(&body))),
        )
        .await;
        assert_eq!(answered.status(), 200);
        assert!(
            eventually(Duration::from_secs(5), async || other
                .code(&leaked.key)
                .await
                == "key_revoked")
            .await,
            "the other replica still allows the leaked key"
        );
    }
}
