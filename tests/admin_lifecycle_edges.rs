//! Lifecycle edges around expiry and rotation: an expired key cannot be
//! rotated into a successor that is born expired, and it no longer counts
//! toward the owner's key limit; overlapping rotations cannot grow an owner
//! past that limit plus one key in overlap, and overlaps are capped.

mod common;

use common::{execute, Backend, TestServer};
use keygate::proto::{CreateKeyRequest, ListKeysRequest, RotateKeyRequest};

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

/// Puts a key's expiry in the past (the API refuses to).
async fn expire(server: &TestServer, id: &str) {
    let id = uuid::Uuid::parse_str(id).unwrap();
    let sql = match server.db.backend {
        Backend::Sqlite => format!(
            "UPDATE api_keys SET expires_at = '2020-01-01T00:00:00+00:00' WHERE id = X'{}'",
            id.simple()
        ),
        Backend::Postgres => {
            format!("UPDATE api_keys SET expires_at = '2020-01-01T00:00:00Z' WHERE id = '{id}'")
        }
    };
    execute(&server.db, &sql).await;
}

on_both_backends! {
    async fn rotating_an_expired_key_fails_precondition(backend) {
        let server = TestServer::start(backend).await;
        let id = server.create_key("acme", &[]).await.api_key.unwrap().id;
        expire(&server, &id).await;
        let error = server.admin.clone()
            .rotate_key(RotateKeyRequest { owner_id: "acme".into(), id, overlap_minutes: 0 })
            .await
            .unwrap_err();
        assert_eq!(error.code(), tonic::Code::FailedPrecondition, "{error:?}");
        assert!(error.message().contains("expired"), "{error:?}");
    }

    async fn expired_keys_do_not_count_toward_the_owner_limit(backend) {
        let server = TestServer::start_with(backend, |s| s.max_keys_per_owner = Some(2)).await;
        let first = server.create_key("acme", &[]).await.api_key.unwrap().id;
        server.create_key("acme", &[]).await;
        let request = CreateKeyRequest { owner_id: "acme".into(), name: "third".into(), ..Default::default() };
        let full = server.admin.clone().create_key(request.clone()).await.unwrap_err();
        assert_eq!(full.code(), tonic::Code::FailedPrecondition);
        expire(&server, &first).await;
        server.admin.clone().create_key(request).await.expect("an expired key frees its place");
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
}
