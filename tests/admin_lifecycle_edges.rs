//! Lifecycle edges around expiry: an expired key cannot be rotated into a
//! successor that is born expired, and it no longer counts toward the
//! owner's key limit.

mod common;

use common::{execute, Backend, TestServer};
use keygate::proto::{CreateKeyRequest, RotateKeyRequest};

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
}
