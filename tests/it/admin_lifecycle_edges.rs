//! Lifecycle edges: an expired key cannot be rotated into a successor that
//! is born expired and no longer counts toward the owner's key limit;
//! overlapping rotations cannot grow an owner past that limit plus one key
//! in overlap, and overlaps are capped; a storm of mutations cancelled
//! part-way, or a disk that fills and frees, leaves every later change
//! working. Expiry and overlaps are reached by moving the server's clock
//! ([`keygate::clock::Clock::manual`]), not by waiting or editing rows.

use crate::common;

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use common::{process::KeygateProcess, Backend, TestServer};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use keygate::clock::Clock;
use keygate::proto::{
    key_admin_client::KeyAdminClient, AdminRevokeKeyRequest, CreateKeyRequest, GetKeyRequest,
    ListKeysRequest, ResumeOwnerRequest, RevokeKeyRequest, RotateKeyRequest, SuspendOwnerRequest,
    UpdateKeyRequest,
};
use tonic::{transport::Channel, Request};

async fn live_keys(server: &TestServer, owner: &str) -> i64 {
    server
        .admin
        .clone()
        .list_keys(ListKeysRequest {
            owner_id: owner.into(),
            ..Default::default()
        })
        .await
        .expect("ListKeys")
        .into_inner()
        .total_size
}

fn rotate(id: &str, overlap_minutes: u32) -> RotateKeyRequest {
    RotateKeyRequest {
        owner_id: "acme".into(),
        id: id.into(),
        overlap_minutes,
    }
}

/// The instant every clocked test starts at: the server reads it until
/// the test moves the clock.
fn start_of_test() -> DateTime<Utc> {
    "2030-01-01T00:00:00Z".parse().unwrap()
}

/// A key for `owner` that expires an hour after [`start_of_test`].
async fn key_expiring_in_an_hour(server: &TestServer, owner: &str, name: &str) -> String {
    let expires = start_of_test() + chrono::Duration::hours(1);
    server
        .create(CreateKeyRequest {
            owner_id: owner.into(),
            name: name.into(),
            expires_at: Some(prost_types::Timestamp {
                seconds: expires.timestamp(),
                nanos: 0,
            }),
            ..Default::default()
        })
        .await
        .api_key
        .unwrap()
        .id
}

/// A request whose `grpc-timeout` expires after `deadline`: the server drops
/// the call wherever it then is.
fn expiring<T>(message: T, deadline: Duration) -> Request<T> {
    let mut request = Request::new(message);
    request.set_timeout(deadline);
    request
}

/// One mutating RPC, chosen by `round`, with `deadline`; the outcome does
/// not matter, only that the server was interrupted somewhere inside it.
async fn cancelled_mutation(
    server: &TestServer,
    round: usize,
    deadline: Duration,
    ids: &[String],
) -> Option<tonic::Code> {
    let mut admin = server.admin.clone();
    let id = ids[round % ids.len()].clone();
    let owner = "storm".to_string();
    let r = match round % 7 {
        0 => admin
            .create_key(expiring(
                CreateKeyRequest {
                    owner_id: owner,
                    name: "storm".into(),
                    ..Default::default()
                },
                deadline,
            ))
            .await
            .map(drop),
        1 => admin
            .update_key(expiring(
                UpdateKeyRequest {
                    owner_id: owner,
                    id,
                    update_mask: Some(prost_types::FieldMask {
                        paths: vec!["name".into()],
                    }),
                    name: format!("renamed {round}"),
                    ..Default::default()
                },
                deadline,
            ))
            .await
            .map(drop),
        2 => admin
            .rotate_key(expiring(
                RotateKeyRequest {
                    owner_id: owner,
                    id,
                    overlap_minutes: 5,
                },
                deadline,
            ))
            .await
            .map(drop),
        3 => admin
            .revoke_key(expiring(
                RevokeKeyRequest {
                    owner_id: owner,
                    id,
                    reason: "storm".into(),
                },
                deadline,
            ))
            .await
            .map(drop),
        4 => admin
            .admin_revoke_key(expiring(
                AdminRevokeKeyRequest {
                    id,
                    reason: "storm".into(),
                },
                deadline,
            ))
            .await
            .map(drop),
        5 => admin
            .suspend_owner(expiring(
                SuspendOwnerRequest {
                    owner_id: "storm-owner".into(),
                    reason: "storm".into(),
                },
                deadline,
            ))
            .await
            .map(drop),
        _ => admin
            .resume_owner(expiring(
                ResumeOwnerRequest {
                    owner_id: "storm-owner".into(),
                },
                deadline,
            ))
            .await
            .map(drop),
    };
    r.err().map(|s| s.code())
}

on_both_backends! {
    async fn rotating_an_expired_key_fails_precondition(backend) {
        let clock = Clock::manual(start_of_test());
        let server = TestServer::start_with_clock(backend, clock.clone(), |_| {}).await;
        let id = key_expiring_in_an_hour(&server, "acme", "short-lived").await;
        clock.advance(chrono::Duration::hours(2));
        let error = server.admin.clone()
            .rotate_key(RotateKeyRequest { owner_id: "acme".into(), id, overlap_minutes: 0 })
            .await
            .unwrap_err();
        assert_eq!(error.code(), tonic::Code::FailedPrecondition, "{error:?}");
        assert!(error.message().contains("expired"), "{error:?}");
    }

    async fn expired_keys_do_not_count_toward_the_owner_limit(backend) {
        let clock = Clock::manual(start_of_test());
        let server =
            TestServer::start_with_clock(backend, clock.clone(), |s| s.max_keys_per_owner = Some(2)).await;
        key_expiring_in_an_hour(&server, "acme", "first").await;
        server.create_key("acme", &[]).await;
        let request = CreateKeyRequest { owner_id: "acme".into(), name: "third".into(), ..Default::default() };
        let full = server.admin.clone().create_key(request.clone()).await.unwrap_err();
        assert_eq!(full.code(), tonic::Code::FailedPrecondition);
        clock.advance(chrono::Duration::minutes(59));
        let still_full = server.admin.clone().create_key(request.clone()).await.unwrap_err();
        assert_eq!(still_full.code(), tonic::Code::FailedPrecondition, "the first key has a minute left");
        clock.advance(chrono::Duration::minutes(2));
        server.admin.clone().create_key(request).await.expect("an expired key frees its place");
    }

    async fn the_old_key_stops_working_when_its_rotation_overlap_ends(backend) {
        let clock = Clock::manual(start_of_test());
        let server = TestServer::start_with_clock(backend, clock.clone(), |_| {}).await;
        let created = server.create_key("acme", &[]).await;
        let id = created.api_key.unwrap().id;
        let rotated = server.admin.clone().rotate_key(rotate(&id, 10)).await.expect("RotateKey").into_inner();
        assert_eq!(server.check_key(&created.key, None).await.code, "allowed");
        clock.advance(chrono::Duration::minutes(9));
        assert_eq!(server.check_key(&created.key, None).await.code, "allowed", "a minute of overlap is left");
        clock.advance(chrono::Duration::minutes(1));
        let denied = server.check_key(&created.key, None).await;
        assert_eq!((denied.status, denied.code.as_str()), (401, "key_revoked"), "the overlap has ended");
        assert_eq!(server.check_key(&rotated.key, None).await.code, "allowed");
    }

    async fn an_expiring_key_works_until_its_expiry_and_not_after(backend) {
        let clock = Clock::manual(start_of_test());
        let server = TestServer::start_with_clock(backend, clock.clone(), |_| {}).await;
        let id = key_expiring_in_an_hour(&server, "acme", "short-lived").await;
        let key = server.admin.clone()
            .rotate_key(rotate(&id, 0))
            .await
            .expect("RotateKey")
            .into_inner()
            .key;
        clock.advance(chrono::Duration::minutes(59));
        assert_eq!(server.check_key(&key, None).await.code, "allowed");
        clock.advance(chrono::Duration::minutes(1));
        let denied = server.check_key(&key, None).await;
        assert_eq!((denied.status, denied.code.as_str()), (401, "key_expired"));
    }

    async fn chained_overlapping_rotations_never_exceed_the_limit_plus_one_live_key(backend) {
        let server = TestServer::start_with(backend, |s| s.max_keys_per_owner = Some(3)).await;
        let mut id = server.create_key("acme", &[]).await.api_key.unwrap().id;
        server.create_key("acme", &[]).await;
        server.create_key("acme", &[]).await;
        let day = 24 * 60;
        let mut refused = 0;
        for _ in 0..10 {
            match server.admin.clone().rotate_key(rotate(&id, day)).await {
                Ok(rotated) => id = rotated.into_inner().api_key.unwrap().id,
                Err(status) => {
                    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
                    assert!(status.message().contains("overlap_minutes = 0"), "{status:?}");
                    refused += 1;
                }
            }
            assert!(live_keys(&server, "acme").await <= 4, "more than 3 keys plus one in overlap");
        }
        assert_eq!((refused, live_keys(&server, "acme").await), (9, 4));

        // A rotation without overlap adds no live key, so it is always allowed.
        let rotated = server.admin.clone().rotate_key(rotate(&id, 0)).await.expect("RotateKey");
        assert!(rotated.into_inner().previous.unwrap().revoked_at.is_some());
        assert_eq!(live_keys(&server, "acme").await, 4);
    }

    async fn rotation_overlaps_are_capped_by_the_setting(backend) {
        let server = TestServer::start(backend).await;
        let week = 7 * 24 * 60;
        let id = server.create_key("acme", &[]).await.api_key.unwrap().id;
        let status = server.admin.clone().rotate_key(rotate(&id, week + 1)).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains(&week.to_string()), "{status:?}");
        assert_eq!(live_keys(&server, "acme").await, 1, "the refused rotation changed nothing");
        server.admin.clone().rotate_key(rotate(&id, week)).await.expect("a 7-day overlap");

        let server = TestServer::start_with(backend, |s| s.max_rotation_overlap = Some("1h".into())).await;
        let id = server.create_key("acme", &[]).await.api_key.unwrap().id;
        let status = server.admin.clone().rotate_key(rotate(&id, 61)).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        server.admin.clone().rotate_key(rotate(&id, 60)).await.expect("a 60-minute overlap");
    }

    async fn a_storm_of_cancelled_mutations_under_check_load_leaves_revoke_working(backend) {
        let server = TestServer::start_with(backend, |s| s.max_keys_per_owner = Some(100_000)).await;
        let victim = server.create_key("acme", &[]).await;
        let victim_id = victim.api_key.clone().unwrap().id;
        let mut storm_ids = Vec::new();
        for _ in 0..40 {
            storm_ids.push(server.create_key("storm", &[]).await.api_key.unwrap().id);
        }
        // How long a mutation takes here, so that deadlines land inside one.
        let started = Instant::now();
        for round in 0..7 {
            cancelled_mutation(&server, round, Duration::from_secs(10), &storm_ids).await;
        }
        let typical = (started.elapsed() / 7).max(Duration::from_micros(200));

        let checking = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let mut load = Vec::new();
        for _ in 0..2 {
            let (checking, authz, key) = (checking.clone(), server.authz.clone(), victim.key.clone());
            load.push(tokio::spawn(async move {
                let mut checks = 0u64;
                while checking.load(std::sync::atomic::Ordering::Relaxed) {
                    let request = common::check_request(
                        [("authorization".to_string(), format!("Bearer {key}"))].into(),
                        "GET",
                        "/v1/orders/42",
                        Default::default(),
                    );
                    let _ = authz.clone().check(request).await;
                    checks += 1;
                }
                checks
            }));
        }

        // Deadlines that follow the server's own latency (longer after a
        // cancelled call, shorter after a finished one) and are spread
        // around it, four calls at a time: calls are cut while queued for
        // the writer, inside BEGIN, mid-statement and at COMMIT.
        const CALLS: usize = 2_800;
        let storm_started = Instant::now();
        let mut codes = std::collections::BTreeMap::new();
        let mut deadline = typical;
        let mut round = 0;
        while round < CALLS && storm_started.elapsed() < Duration::from_secs(15) {
            let batch: Vec<_> = (round..round + 4)
                .map(|r| {
                    let spread = deadline * (50 + (r * 37) % 100) as u32 / 100;
                    cancelled_mutation(&server, r, spread, &storm_ids)
                })
                .collect();
            for code in futures::future::join_all(batch).await {
                deadline = match code {
                    Some(tonic::Code::Cancelled | tonic::Code::DeadlineExceeded) => deadline * 21 / 20,
                    _ => deadline * 19 / 20,
                }
                .clamp(typical / 4, typical * 50);
                *codes.entry(format!("{code:?}")).or_insert(0) += 1;
            }
            round += 4;
        }
        checking.store(false, std::sync::atomic::Ordering::Relaxed);
        let mut checks = 0;
        for task in load {
            checks += task.await.unwrap();
        }
        assert!(checks > 0, "the Check load ran");

        let revoked = tokio::time::timeout(
            Duration::from_secs(15),
            server.admin.clone().revoke_key(RevokeKeyRequest {
                owner_id: "acme".into(),
                id: victim_id.clone(),
                reason: "leaked".into(),
            }),
        )
        .await
        .expect("RevokeKey answered within 15 s");
        let revoked = revoked.unwrap_or_else(|status| {
            panic!("RevokeKey failed after {round} mutations with expiring deadlines (outcomes {codes:?}): {status:?}")
        });
        assert!(revoked.into_inner().revoked_at.is_some());
        assert_eq!(server.check_key(&victim.key, None).await.code, "key_revoked");
        // The writer takes new keys too.
        server.create_key("acme", &[]).await;
    }
}

/// The Check decision code for `key` through `authz`.
async fn decision(authz: &mut AuthorizationClient<Channel>, key: &str) -> String {
    let headers = [("authorization".to_string(), format!("Bearer {key}"))].into();
    let request = common::check_request(headers, "GET", "/v1/orders/42", Default::default());
    common::Decision::of(authz.check(request).await.expect("Check").into_inner()).code
}

/// SQLite only: a file size limit on the real process stands in for a full
/// disk (every write to the database files fails with EFBIG), then is lifted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_that_fills_fails_writes_with_their_cause_and_once_freed_revoke_and_usage_work() {
    let db = common::TestDb::new(Backend::Sqlite).await;
    let process =
        KeygateProcess::spawn_with_piped_logs(&db.url, &[("KEYGATE_USAGE_FLUSH_INTERVAL", "50ms")])
            .await;
    let mut admin = KeyAdminClient::new(common::channel(process.admin_addr).await);
    let mut authz = AuthorizationClient::new(common::channel(process.authz_addr).await);
    let created = admin
        .create_key(CreateKeyRequest {
            owner_id: "acme".into(),
            name: "disk".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let id = created.api_key.unwrap().id;
    let revoke = RevokeKeyRequest {
        owner_id: "acme".into(),
        id: id.clone(),
        reason: "leaked".into(),
    };
    assert_eq!(decision(&mut authz, &created.key).await, "allowed");

    process.limit_file_size(Some(1));
    const DURING: u64 = 20;
    for _ in 0..DURING {
        assert_eq!(
            decision(&mut authz, &created.key).await,
            "allowed",
            "a cache hit needs no write"
        );
    }
    let full = admin
        .revoke_key(revoke.clone())
        .await
        .expect_err("nothing can be written");
    assert_eq!(full.code(), tonic::Code::Unavailable, "{full:?}");
    assert!(full.message().contains("cannot write"), "{full:?}");
    assert!(
        common::eventually(Duration::from_secs(10), async || {
            let logs = process.logs();
            logs.contains("usage flush failed") && logs.contains("disk I/O error")
        })
        .await,
        "the flush failure and its cause are logged:\n{}",
        process.logs()
    );
    assert_eq!(
        decision(&mut authz, &created.key).await,
        "allowed",
        "the failed revoke changed nothing"
    );

    process.limit_file_size(None);
    let revoked = tokio::time::timeout(Duration::from_secs(15), admin.revoke_key(revoke))
        .await
        .expect("RevokeKey answered within 15 s")
        .unwrap_or_else(|status| {
            panic!(
                "RevokeKey after the disk freed: {status:?}\n{}",
                process.logs()
            )
        });
    assert!(revoked.into_inner().revoked_at.is_some());
    assert_eq!(decision(&mut authz, &created.key).await, "key_revoked");
    // Usage buffered while the disk was full is written once it frees.
    let get = GetKeyRequest {
        owner_id: "acme".into(),
        id,
    };
    assert!(
        common::eventually(Duration::from_secs(10), async || {
            admin
                .clone()
                .get_key(get.clone())
                .await
                .is_ok_and(|k| k.into_inner().request_count == DURING + 2)
        })
        .await,
        "every allowed Check was counted:\n{}",
        process.logs()
    );
    let (status, logs) = process.terminate().await;
    assert!(status.success(), "keygate exited with {status}:\n{logs}");
}
