//! The Prometheus endpoint of a real process: the series operators rely on
//! are there, labelled by method and code, never by owner or key.

use crate::common;

use std::collections::HashMap;

use common::{check_request, process::KeygateProcess, scrape_metrics, Backend, Decision, TestDb};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use keygate::proto::{key_admin_client::KeyAdminClient, CreateKeyRequest};

fn line_with<'a>(text: &'a str, parts: &[&str]) -> Option<&'a str> {
    text.lines()
        .find(|line| !line.starts_with('#') && parts.iter().all(|p| line.contains(p)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_checks_cache_and_admin_calls_without_owner_labels() {
    let db = TestDb::new(Backend::Sqlite).await;
    let process = KeygateProcess::spawn(&db.url, &[]).await;
    let mut admin = KeyAdminClient::new(common::channel(process.admin_addr).await);
    let owner = "owner-that-must-not-appear-in-metrics";
    let created = admin
        .create_key(CreateKeyRequest {
            owner_id: owner.into(),
            name: "m".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let rejected = admin
        .create_key(CreateKeyRequest {
            owner_id: owner.into(),
            name: String::new(),
            ..Default::default()
        })
        .await;
    assert_eq!(rejected.unwrap_err().code(), tonic::Code::InvalidArgument);

    let mut authz = AuthorizationClient::new(common::channel(process.authz_addr).await);
    for key in [
        created.key.as_str(),
        created.key.as_str(),
        "sk_live_garbage",
    ] {
        let headers = HashMap::from([("authorization".to_string(), format!("Bearer {key}"))]);
        Decision::of(
            authz
                .check(check_request(headers, "GET", "/", HashMap::new()))
                .await
                .unwrap()
                .into_inner(),
        );
    }

    let text = scrape_metrics(process.metrics_addr);
    for (what, parts) in [
        (
            "allowed decisions",
            &["keygate_check_decisions_total", "code=\"allowed\"", " 2"][..],
        ),
        (
            "malformed decisions",
            &[
                "keygate_check_decisions_total",
                "code=\"malformed_key\"",
                " 1",
            ],
        ),
        (
            "check latency histogram",
            &["keygate_check_duration_seconds_count", " 3"],
        ),
        ("cache hits", &["keygate_cache_hits_total", " 1"]),
        ("cache misses", &["keygate_cache_misses_total", " 1"]),
        (
            "successful CreateKey",
            &[
                "keygate_admin_calls_total",
                "method=\"CreateKey\"",
                "code=\"OK\"",
                " 1",
            ],
        ),
        (
            "rejected CreateKey",
            &[
                "keygate_admin_calls_total",
                "method=\"CreateKey\"",
                "code=\"INVALID_ARGUMENT\"",
                " 1",
            ],
        ),
    ] {
        assert!(
            line_with(&text, parts).is_some(),
            "no series for {what} ({parts:?}) in:\n{text}"
        );
    }
    assert!(!text.contains(owner), "an owner id leaked into metrics");
    assert!(!text.contains(&created.key), "a key leaked into metrics");
    let (status, logs) = process.terminate().await;
    assert!(status.success(), "{logs}");
}

/// A KeyAdmin call refused for its token (none, or one nobody configured) is
/// counted like any other outcome of the call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_calls_refused_for_their_token_are_counted() {
    let (_token, line) =
        keygate::grpc::auth::new_admin_token("ops", keygate::admin::AdminRole::Admin);
    let db = TestDb::new(Backend::Sqlite).await;
    let process = KeygateProcess::spawn(&db.url, &[("KEYGATE_ADMIN_TOKENS", &line)]).await;
    let mut admin = KeyAdminClient::new(common::channel(process.admin_addr).await);
    let request = || CreateKeyRequest {
        owner_id: "acme".into(),
        name: "m".into(),
        ..Default::default()
    };
    let missing = admin.create_key(request()).await.unwrap_err();
    let unknown = admin
        .create_key(common::with_token(request(), "kga_nobody_configured_this"))
        .await
        .unwrap_err();
    assert_eq!(
        (missing.code(), unknown.code()),
        (tonic::Code::Unauthenticated, tonic::Code::Unauthenticated)
    );

    let text = scrape_metrics(process.metrics_addr);
    let parts = [
        "keygate_admin_calls_total",
        "method=\"CreateKey\"",
        "code=\"UNAUTHENTICATED\"",
        " 2",
    ];
    assert!(
        line_with(&text, &parts).is_some(),
        "no series {parts:?} in:\n{text}"
    );
    let (status, logs) = process.terminate().await;
    assert!(status.success(), "{logs}");
}
