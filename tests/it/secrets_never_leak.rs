//! A plaintext key exists only in the CreateKey and RotateKey responses; it,
//! its token segment and its hash never reach logs, metrics, other responses
//! or audit events (docs/behaviour.md §1, §5).

use crate::common;

use std::{net::SocketAddr, time::Duration};

use base64::{
    engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD},
    Engine,
};
use common::{channel, eventually, process::KeygateProcess, Backend, Decision, TestDb, TestServer};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use keygate::{
    admin::AdminRole,
    grpc::auth::new_admin_token,
    proto::{
        key_admin_client::KeyAdminClient, AdminListKeysRequest, AdminRevokeKeyRequest,
        CreateKeyRequest, GetKeyRequest, GetKeyUsageRequest, ListAbilitiesRequest,
        ListAuditEventsRequest, ListKeysRequest, RateLimit, ResumeOwnerRequest, RevokeKeyRequest,
        RotateKeyRequest, SuspendOwnerRequest, UpdateKeyRequest,
    },
};
use prost::Message;
use sha2::{Digest, Sha256};
use sqlx::{Connection, PgConnection, SqliteConnection};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::{transport::Channel, Request};

/// Every form in which a secret could leak, labelled for the failure message.
struct Secret {
    forms: Vec<(String, Vec<u8>)>,
    hash: [u8; 32],
}

impl Secret {
    /// A key: the plaintext, its token segment, the random part and the
    /// SHA-256 of the token segment in raw, hex, base64 and Debug forms.
    fn key(plaintext: &str) -> Secret {
        let token = plaintext
            .splitn(3, '_')
            .nth(2)
            .expect("prefix_environment_token");
        assert!(token.len() > 30, "{plaintext:?} has a token segment");
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut forms = vec![
            ("plaintext".to_owned(), plaintext.as_bytes().to_vec()),
            ("token segment".to_owned(), token.as_bytes().to_vec()),
            (
                "random part".to_owned(),
                token.as_bytes()[..token.len() - 6].to_vec(),
            ),
        ];
        forms.extend(hash_forms("key hash", &hash));
        Secret { forms, hash }
    }

    /// An admin token and the SHA-256 it is configured by.
    fn admin_token(token: &str) -> Secret {
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut forms = vec![
            ("admin token".to_owned(), token.as_bytes().to_vec()),
            (
                "admin token body".to_owned(),
                token.trim_start_matches("kga_").as_bytes().to_vec(),
            ),
        ];
        forms.extend(hash_forms("admin token hash", &hash));
        Secret { forms, hash }
    }

    /// Panics when `haystack` holds any form of this secret.
    fn assert_absent(&self, haystack: &[u8], place: &str) {
        for (label, needle) in &self.forms {
            assert!(
                !contains(haystack, needle),
                "the {label} leaked into {place}"
            );
        }
    }
}

fn hash_forms(label: &str, hash: &[u8; 32]) -> Vec<(String, Vec<u8>)> {
    let text = [
        ("raw", hash.to_vec()),
        ("hex", hex::encode(hash).into_bytes()),
        ("HEX", hex::encode_upper(hash).into_bytes()),
        ("base64", STANDARD.encode(hash).into_bytes()),
        ("base64 unpadded", STANDARD_NO_PAD.encode(hash).into_bytes()),
        ("base64url", URL_SAFE.encode(hash).into_bytes()),
        (
            "base64url unpadded",
            URL_SAFE_NO_PAD.encode(hash).into_bytes(),
        ),
        ("Debug bytes", format!("{hash:?}").into_bytes()),
        (
            "Debug bytes, no spaces",
            format!("{hash:?}").replace(' ', "").into_bytes(),
        ),
    ];
    text.into_iter()
        .map(|(form, bytes)| (format!("{label} ({form})"), bytes))
        .collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// How many `api_keys` rows carry `hash`: proves the hash the test looks for
/// is the one keygate stores.
async fn stored_hashes(db: &TestDb, hash: &[u8; 32]) -> i64 {
    const QUERY: &str = "SELECT COUNT(*) FROM api_keys WHERE key_hash = $1";
    match db.backend {
        Backend::Sqlite => {
            let mut conn = SqliteConnection::connect(&db.url).await.expect("sqlite");
            sqlx::query_scalar(QUERY)
                .bind(&hash[..])
                .fetch_one(&mut conn)
                .await
                .expect("count")
        }
        Backend::Postgres => {
            let mut conn = PgConnection::connect(&db.url).await.expect("postgres");
            sqlx::query_scalar(QUERY)
                .bind(&hash[..])
                .fetch_one(&mut conn)
                .await
                .expect("count")
        }
    }
}

/// Every audit row's text columns, one string per row.
async fn audit_rows(db: &TestDb) -> Vec<String> {
    let rows: Vec<(String, String, String, String, String)> = match db.backend {
        Backend::Sqlite => {
            let mut conn = SqliteConnection::connect(&db.url).await.expect("sqlite");
            sqlx::query_as(
                "SELECT event, actor, COALESCE(owner_id, ''), COALESCE(key_prefix, ''), metadata FROM audit_events",
            )
            .fetch_all(&mut conn)
            .await
            .expect("audit rows")
        }
        Backend::Postgres => {
            let mut conn = PgConnection::connect(&db.url).await.expect("postgres");
            sqlx::query_as(
                "SELECT event, actor, COALESCE(owner_id, ''), COALESCE(key_prefix, ''), metadata::text FROM audit_events",
            )
            .fetch_all(&mut conn)
            .await
            .expect("audit rows")
        }
    };
    rows.into_iter()
        .map(|(a, b, c, d, e)| [a, b, c, d, e].join("\t"))
        .collect()
}

/// Whether `addr` accepts connections within 30 s.
async fn listening(addr: SocketAddr) -> bool {
    eventually(Duration::from_secs(30), async || {
        tokio::net::TcpStream::connect(addr).await.is_ok()
    })
    .await
}

/// `GET /metrics` over plain HTTP/1.1.
async fn scrape(addr: SocketAddr) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("metrics listener");
    stream
        .write_all(
            format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .expect("request");
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
        .await
        .expect("the metrics response ends")
        .expect("response");
    let response = String::from_utf8(response).expect("UTF-8 metrics");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response
}

fn authed<T>(message: T, token: &str) -> Request<T> {
    common::with_token(message, token)
}

async fn check(authz: &AuthorizationClient<Channel>, key: &str, abilities: &str) -> Decision {
    let headers = [
        ("authorization".to_string(), format!("Bearer {key}")),
        ("x-forwarded-for".into(), "198.51.100.4".into()),
    ];
    let extensions = [("keygate.abilities".to_string(), abilities.to_string())];
    let request = common::check_request(
        headers.into(),
        "POST",
        "/v1/orders/42?debug=1",
        extensions.into(),
    );
    Decision::of(
        authz
            .clone()
            .check(request)
            .await
            .expect("Check")
            .into_inner(),
    )
}

on_both_backends! {
    async fn the_binary_never_writes_a_key_or_its_hash_to_logs_or_metrics(backend) {
        let db = TestDb::new(backend).await;
        let (admin_token, admin_line) = new_admin_token("ops", AdminRole::Admin);
        let (service_token, service_line) = new_admin_token("billing", AdminRole::Service);
        let tokens = format!("{admin_line},{service_line}");
        // Started as every other test's child process is: a port another
        // test took meanwhile is retried with new ones.
        let process = KeygateProcess::spawn(
            &db.url,
            &[("KEYGATE_ADMIN_TOKENS", &tokens), ("KEYGATE_USAGE_FLUSH_INTERVAL", "100ms"), ("RUST_LOG", "debug")],
        )
        .await;
        let (authz_addr, admin_addr) = (process.authz_addr, process.admin_addr);
        let (metrics_addr, http_addr) = (process.metrics_addr, process.http_addr);
        for (addr, listener) in [(authz_addr, "Check"), (metrics_addr, "metrics"), (http_addr, "REST")] {
            assert!(listening(addr).await, "the {listener} listener comes up");
        }

        let mut admin = KeyAdminClient::new(channel(admin_addr).await);
        let authz = AuthorizationClient::new(channel(authz_addr).await);
        let (svc, ops) = (service_token.as_str(), admin_token.as_str());

        let created = admin
            .create_key(authed(
                CreateKeyRequest {
                    owner_id: "acme".into(),
                    name: "leak probe".into(),
                    abilities: vec!["read:orders".into()],
                    rate_limit: Some(RateLimit { max_attempts: 1000, decay_seconds: 60 }),
                    metadata: [("team".to_string(), "platform".to_string())].into(),
                    ..Default::default()
                },
                svc,
            ))
            .await
            .expect("CreateKey")
            .into_inner();
        let first = created.api_key.expect("api_key");
        let superkey = admin
            .create_key(authed(
                CreateKeyRequest { owner_id: "globex".into(), name: "root".into(), environment: "test".into(), superkey: true, ..Default::default() },
                // Only an admin token may grant superkey.
                ops,
            ))
            .await
            .expect("CreateKey")
            .into_inner();

        assert_eq!(check(&authz, &created.key, "read:orders").await.code, "allowed");
        assert_eq!(check(&authz, &created.key, "write:orders").await.code, "insufficient_ability");
        assert_eq!(check(&authz, &superkey.key, "anything").await.code, "allowed");
        // A near miss (one character changed) is turned away without echoing it.
        let mut near_miss = created.key.clone();
        let last = near_miss.pop().expect("a character");
        near_miss.push(if last == 'z' { 'y' } else { 'z' });
        assert_eq!(check(&authz, &near_miss, "read:orders").await.status, 401);

        admin
            .update_key(authed(
                UpdateKeyRequest {
                    owner_id: "acme".into(),
                    id: first.id.clone(),
                    update_mask: Some(prost_types::FieldMask { paths: vec!["abilities".into()] }),
                    abilities: vec!["read:orders".into(), "write:orders".into()],
                    ..Default::default()
                },
                svc,
            ))
            .await
            .expect("UpdateKey");
        assert_eq!(check(&authz, &created.key, "write:orders").await.code, "allowed");
        let rotated = admin
            .rotate_key(authed(RotateKeyRequest { owner_id: "acme".into(), id: first.id.clone(), overlap_minutes: 10 }, svc))
            .await
            .expect("RotateKey")
            .into_inner();
        let successor = rotated.api_key.expect("api_key");
        let old_check = check(&authz, &created.key, "read:orders").await;
        assert_eq!((old_check.code.as_str(), old_check.response_headers.get("deprecation").map(String::as_str)), ("allowed", Some("true")));
        assert_eq!(check(&authz, &rotated.key, "read:orders").await.code, "allowed");

        assert!(
            eventually(Duration::from_secs(10), async || {
                let usage = admin
                    .get_key_usage(authed(GetKeyUsageRequest { owner_id: "acme".into(), id: first.id.clone(), recent_limit: 0 }, svc))
                    .await
                    .expect("GetKeyUsage")
                    .into_inner();
                usage.request_count > 0
            })
            .await,
            "usage is flushed"
        );
        admin.get_key(authed(GetKeyRequest { owner_id: "acme".into(), id: first.id.clone() }, svc)).await.expect("GetKey");
        admin.list_keys(authed(ListKeysRequest { owner_id: "acme".into(), include_revoked: true, ..Default::default() }, svc)).await.expect("ListKeys");
        admin
            .revoke_key(authed(RevokeKeyRequest { owner_id: "acme".into(), id: successor.id.clone(), reason: "probe done".into() }, svc))
            .await
            .expect("RevokeKey");
        assert_eq!(check(&authz, &rotated.key, "read:orders").await.code, "key_revoked");
        let superkey_id = superkey.api_key.expect("api_key").id;
        admin.admin_revoke_key(authed(AdminRevokeKeyRequest { id: superkey_id, reason: "probe".into() }, ops)).await.expect("AdminRevokeKey");
        admin.suspend_owner(authed(SuspendOwnerRequest { owner_id: "acme".into(), reason: "probe".into() }, ops)).await.expect("SuspendOwner");
        assert_eq!(check(&authz, &created.key, "read:orders").await.code, "owner_suspended");
        admin.resume_owner(authed(ResumeOwnerRequest { owner_id: "acme".into() }, ops)).await.expect("ResumeOwner");
        admin.list_audit_events(authed(ListAuditEventsRequest::default(), ops)).await.expect("ListAuditEvents");
        // The REST API, access log included: a key created there, a key used
        // as the caller (self-service), and refused calls carrying keys.
        let rest = reqwest::Client::new();
        let base = format!("http://{http_addr}");
        let issued: serde_json::Value = rest
            .post(format!("{base}/v1/api-keys"))
            .bearer_auth(svc)
            .json(&serde_json::json!({"owner_id": "acme", "name": "rest probe", "abilities": ["keygate:keys", "read:orders"]}))
            .send().await.expect("REST create").json().await.expect("JSON");
        let rest_key = issued["data"]["key"].as_str().expect("REST create returns the key").to_owned();
        for bearer in [rest_key.as_str(), created.key.as_str(), near_miss.as_str()] {
            rest.get(format!("{base}/v1/api-keys?owner_id=acme")).bearer_auth(bearer).send().await.expect("REST list");
        }
        rest.post(format!("{base}/v1/api-keys")).bearer_auth(&rest_key)
            .json(&serde_json::json!({"name": rest_key, "abilities": ["write:orders"]}))
            .send().await.expect("REST create above the caller");
        // Refused calls log too; they must not echo what they were sent.
        admin.list_keys(authed(ListKeysRequest::default(), &created.key)).await.expect_err("a key is not an admin token");
        admin.list_abilities(authed(ListAbilitiesRequest {}, &format!("{admin_token}x"))).await.expect_err("a near-miss admin token");

        let metrics = scrape(metrics_addr).await;
        assert!(metrics.contains("keygate_check_decisions_total"), "{metrics}");

        let (exit, logs) = process.terminate().await;
        assert!(exit.success(), "a graceful stop exits 0: {exit:?}");
        let output = logs.into_bytes();
        let text = String::from_utf8_lossy(&output);
        assert!(!text.trim().is_empty(), "keygate logged nothing");
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            serde_json::from_str::<serde_json::Value>(line).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        }
        let audit_lines: Vec<&str> = text.lines().filter(|l| l.contains("keygate::audit")).collect();
        for event in ["api_key.created", "api_key.updated", "api_key.rotated", "api_key.revoked", "api_key.admin_revoked", "owner.suspended", "owner.resumed"] {
            assert!(audit_lines.iter().any(|l| l.contains(&format!("\"{event}\""))), "no audit line for {event}:\n{}", audit_lines.join("\n"));
        }
        assert!(audit_lines.iter().any(|l| l.contains(&first.key_prefix)), "audit lines carry the display prefix");

        let secrets = [
            ("the first key", Secret::key(&created.key)),
            ("the superkey", Secret::key(&superkey.key)),
            ("the rotated key", Secret::key(&rotated.key)),
            ("the key created over REST", Secret::key(&rest_key)),
            ("the admin token", Secret::admin_token(&admin_token)),
            ("the service token", Secret::admin_token(&service_token)),
        ];
        for (name, secret) in &secrets {
            secret.assert_absent(&output, &format!("the log output ({name})"));
            secret.assert_absent(metrics.as_bytes(), &format!("/metrics ({name})"));
        }
        for (name, secret) in &secrets[..4] {
            assert_eq!(stored_hashes(&db, &secret.hash).await, 1, "{name}: the searched-for hash is the stored one");
        }
    }

    async fn only_create_and_rotate_responses_carry_the_plaintext(backend) {
        let server = TestServer::start_with(backend, |settings| {
            settings.abilities = Some("read:orders,write:orders".into());
        })
        .await;
        let mut admin = server.admin.clone();
        let created = admin
            .create_key(CreateKeyRequest {
                owner_id: "acme".into(),
                name: "probe".into(),
                abilities: vec!["read:orders".into()],
                metadata: [("purpose".to_string(), "leak test".to_string())].into(),
                ..Default::default()
            })
            .await
            .expect("CreateKey")
            .into_inner();
        let id = created.api_key.clone().expect("api_key").id;
        let first = Secret::key(&created.key);
        assert!(contains(&created.encode_to_vec(), created.key.as_bytes()), "CreateKey carries the plaintext");

        for _ in 0..3 {
            assert_eq!(server.check_key(&created.key, Some("read:orders")).await.code, "allowed");
        }
        let updated = admin
            .update_key(UpdateKeyRequest {
                owner_id: "acme".into(),
                id: id.clone(),
                update_mask: Some(prost_types::FieldMask { paths: vec!["name".into()] }),
                name: "renamed probe".into(),
                ..Default::default()
            })
            .await
            .expect("UpdateKey")
            .into_inner();
        let rotated = admin
            .rotate_key(RotateKeyRequest { owner_id: "acme".into(), id: id.clone(), overlap_minutes: 10 })
            .await
            .expect("RotateKey")
            .into_inner();
        let second = Secret::key(&rotated.key);
        let successor = rotated.api_key.clone().expect("api_key").id;
        assert!(contains(&rotated.encode_to_vec(), rotated.key.as_bytes()), "RotateKey carries the new plaintext");
        first.assert_absent(&rotated.encode_to_vec(), "the RotateKey response (old key)");
        assert_eq!(server.check_key(&rotated.key, Some("read:orders")).await.code, "allowed");

        let reached = eventually(Duration::from_secs(10), async || {
            let usage = admin
                .get_key_usage(GetKeyUsageRequest { owner_id: "acme".into(), id: id.clone(), recent_limit: 0 })
                .await
                .expect("GetKeyUsage")
                .into_inner();
            usage.request_count >= 3 && !usage.recent_logs.is_empty()
        })
        .await;
        assert!(reached, "usage is flushed");
        let usage = admin
            .get_key_usage(GetKeyUsageRequest { owner_id: "acme".into(), id: id.clone(), recent_limit: 0 })
            .await
            .expect("GetKeyUsage")
            .into_inner();
        let revoked = admin
            .revoke_key(RevokeKeyRequest { owner_id: "acme".into(), id: successor.clone(), reason: "done".into() })
            .await
            .expect("RevokeKey")
            .into_inner();
        let admin_revoked = admin
            .admin_revoke_key(AdminRevokeKeyRequest { id: id.clone(), reason: "done".into() })
            .await
            .expect("AdminRevokeKey")
            .into_inner();

        let responses: Vec<(&str, Vec<u8>)> = vec![
            ("GetKey (old)", admin.get_key(GetKeyRequest { owner_id: "acme".into(), id: id.clone() }).await.expect("GetKey").into_inner().encode_to_vec()),
            ("GetKey (new)", admin.get_key(GetKeyRequest { owner_id: "acme".into(), id: successor.clone() }).await.expect("GetKey").into_inner().encode_to_vec()),
            (
                "ListKeys",
                admin
                    .list_keys(ListKeysRequest { owner_id: "acme".into(), include_revoked: true, ..Default::default() })
                    .await
                    .expect("ListKeys")
                    .into_inner()
                    .encode_to_vec(),
            ),
            ("UpdateKey", updated.encode_to_vec()),
            ("RevokeKey", revoked.encode_to_vec()),
            ("AdminRevokeKey", admin_revoked.encode_to_vec()),
            (
                "AdminListKeys",
                admin
                    .admin_list_keys(AdminListKeysRequest { include_revoked: true, ..Default::default() })
                    .await
                    .expect("AdminListKeys")
                    .into_inner()
                    .encode_to_vec(),
            ),
            (
                "ListAuditEvents",
                admin.list_audit_events(ListAuditEventsRequest::default()).await.expect("ListAuditEvents").into_inner().encode_to_vec(),
            ),
            ("GetKeyUsage", usage.encode_to_vec()),
            ("ListAbilities", admin.list_abilities(ListAbilitiesRequest {}).await.expect("ListAbilities").into_inner().encode_to_vec()),
        ];
        for (rpc, encoded) in &responses {
            assert!(!encoded.is_empty(), "{rpc} answered something");
            first.assert_absent(encoded, &format!("the {rpc} response (first key)"));
            second.assert_absent(encoded, &format!("the {rpc} response (rotated key)"));
        }

        let rows = audit_rows(&server.db).await;
        for event in ["api_key.created", "api_key.updated", "api_key.rotated", "api_key.revoked", "api_key.admin_revoked"] {
            assert!(rows.iter().any(|r| r.starts_with(&format!("{event}\t"))), "no {event} row in {rows:#?}");
        }
        let rows = rows.join("\n");
        first.assert_absent(rows.as_bytes(), "the audit_events table (first key)");
        second.assert_absent(rows.as_bytes(), "the audit_events table (rotated key)");
        assert_eq!(stored_hashes(&server.db, &first.hash).await, 1, "the searched-for hash is the stored one");
        assert_eq!(stored_hashes(&server.db, &second.hash).await, 1);
    }
}
