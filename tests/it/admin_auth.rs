//! KeyAdmin authentication, who may grant superkeys, the refusal of an
//! unauthenticated public admin listener, the health service on the admin
//! listener, and reflection on both listeners.

use crate::common;

use common::{channel, test_settings, with_token, TestDb, TestServer};
use keygate::{
    admin::AdminRole,
    grpc::auth::new_admin_token,
    proto::{
        CreateKeyRequest, ListAbilitiesRequest, ListKeysRequest, RotateKeyRequest, UpdateKeyRequest,
    },
};
use tokio_stream::StreamExt;
use tonic::{metadata::MetadataValue, Code, Request};
use tonic_health::pb::{
    health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
};
use tonic_reflection::pb::v1::{
    server_reflection_client::ServerReflectionClient, server_reflection_request::MessageRequest,
    server_reflection_response::MessageResponse, ServerReflectionRequest,
};

fn create(owner: &str) -> CreateKeyRequest {
    CreateKeyRequest {
        owner_id: owner.into(),
        name: "k".into(),
        abilities: vec!["read:orders".into()],
        ..Default::default()
    }
}

fn superkey(owner: &str) -> CreateKeyRequest {
    CreateKeyRequest {
        superkey: true,
        ..create(owner)
    }
}

fn set_superkey(owner: &str, id: &str, superkey: bool) -> UpdateKeyRequest {
    UpdateKeyRequest {
        owner_id: owner.into(),
        id: id.into(),
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["superkey".into()],
        }),
        superkey,
        ..Default::default()
    }
}

/// A server with a `billing` service token and an `ops` admin token.
async fn start_with_roles(
    backend: common::Backend,
    configure: impl FnOnce(&mut keygate::config::Settings),
) -> (TestServer, String, String) {
    let (service, service_line) = new_admin_token("billing", AdminRole::Service);
    let (admin, admin_line) = new_admin_token("ops", AdminRole::Admin);
    let server = TestServer::start_with(backend, |settings| {
        settings.admin_tokens = Some(format!("{service_line},{admin_line}"));
        configure(settings);
    })
    .await;
    (server, service, admin)
}

fn with_authorization<T>(message: T, value: &str) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        MetadataValue::try_from(value).expect("ascii"),
    );
    request
}

on_both_backends! {
    async fn calls_without_a_valid_admin_token_are_unauthenticated(backend) {
        let (service, service_line) = new_admin_token("billing", AdminRole::Service);
        let (admin, admin_line) = new_admin_token("ops", AdminRole::Admin);
        let server = TestServer::start_with(backend, |settings| {
            settings.admin_tokens = Some(format!("{service_line},{admin_line}"));
        })
        .await;
        let mut client = server.admin.clone();

        let status = client.list_abilities(ListAbilitiesRequest {}).await.expect_err("no metadata");
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
        let status = client.create_key(create("acme")).await.expect_err("no metadata");
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");

        let (other, _) = new_admin_token("billing", AdminRole::Admin);
        let refused = [
            ("an unknown token", format!("Bearer {other}")),
            ("a wrong token", "Bearer kga_wrong".to_owned()),
            ("the token without its scheme", service.clone()),
            ("another scheme", format!("Basic {service}")),
            ("a bearer without a token", "Bearer ".to_owned()),
            ("a truncated token", format!("Bearer {}", &service[..service.len() - 1])),
        ];
        for (what, value) in refused {
            let status = client.create_key(with_authorization(create("acme"), &value)).await.expect_err(what);
            assert_eq!(status.code(), Code::Unauthenticated, "{what}: {status:?}");
            assert!(!status.message().contains(&service), "{what}: the message echoes no token");
        }
        let listed = client
            .list_keys(with_token(ListKeysRequest { owner_id: "acme".into(), include_revoked: true, ..Default::default() }, &admin))
            .await
            .expect("ListKeys")
            .into_inner();
        assert_eq!(listed.total_size, 0, "no refused call created a key");

        // The scheme is case-insensitive; both roles may manage keys.
        let created = client
            .create_key(with_authorization(create("acme"), &format!("bearer {service}")))
            .await
            .expect("a service token can CreateKey")
            .into_inner();
        assert_eq!(server.check_key(&created.key, Some("read:orders")).await.code, "allowed");
        client.create_key(with_token(create("acme"), &admin)).await.expect("an admin token can CreateKey");
        let listed = client
            .list_keys(with_token(ListKeysRequest { owner_id: "acme".into(), ..Default::default() }, &service))
            .await
            .expect("ListKeys")
            .into_inner();
        assert_eq!(listed.total_size, 2);
    }

    async fn a_public_admin_listener_without_tokens_is_refused(backend) {
        let db = TestDb::new(backend).await;
        for addr in ["0.0.0.0:0", "192.0.2.10:50052", "[::]:50052"] {
            let mut settings = test_settings(&db);
            settings.admin_addr = Some(addr.into());
            let error = settings.validate().expect_err("a public bind without tokens").to_string();
            assert!(error.contains("KEYGATE_ADMIN_TOKENS"), "{addr}: {error}");
        }
        let (_, line) = new_admin_token("ops", AdminRole::Admin);
        let mut settings = test_settings(&db);
        settings.admin_addr = Some("0.0.0.0:0".into());
        settings.admin_tokens = Some(line);
        let config = settings.validate().expect("a public bind with tokens");
        assert!(config.admin_addr.ip().is_unspecified());
        // Loopback without tokens stays allowed, for development.
        for addr in ["127.0.0.1:0", "[::1]:0"] {
            let mut settings = test_settings(&db);
            settings.admin_addr = Some(addr.into());
            settings.validate().unwrap_or_else(|e| panic!("{addr}: {e}"));
        }
    }

    async fn health_reports_serving_on_the_admin_listener_without_a_token(backend) {
        let (_, line) = new_admin_token("ops", AdminRole::Admin);
        let server = TestServer::start_with(backend, |settings| settings.admin_tokens = Some(line)).await;
        let mut health = HealthClient::new(channel(server.running().admin_addr).await);
        for service in ["", "keygate.admin.v1.KeyAdmin"] {
            let response = health
                .check(HealthCheckRequest { service: service.into() })
                .await
                .unwrap_or_else(|s| panic!("{service:?}: {s:?}"))
                .into_inner();
            assert_eq!(response.status(), ServingStatus::Serving, "{service:?}");
        }
        let status = health.check(HealthCheckRequest { service: "no.such.Service".into() }).await.expect_err("unknown service");
        assert_eq!(status.code(), Code::NotFound);
    }

    async fn reflection_on_each_listener_lists_exactly_the_services_it_serves(backend) {
        let (_, line) = new_admin_token("ops", AdminRole::Admin);
        let server = TestServer::start_with(backend, |settings| settings.admin_tokens = Some(line)).await;
        let running = server.running();
        let common = ["grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"];
        for (listener, addr, own, method, other) in [
            ("Check", running.authz_addr, "envoy.service.auth.v3.Authorization", "Check", "keygate.admin.v1.KeyAdmin"),
            ("KeyAdmin", running.admin_addr, "keygate.admin.v1.KeyAdmin", "RotateKey", "envoy.service.auth.v3.Authorization"),
        ] {
            let [listed, own_file, other_file] = reflect(addr, [
                MessageRequest::ListServices(String::new()),
                MessageRequest::FileContainingSymbol(own.into()),
                MessageRequest::FileContainingSymbol(other.into()),
            ])
            .await;
            let Ok(MessageResponse::ListServicesResponse(listed)) = listed else {
                panic!("{listener}: expected a service list, got {listed:?}");
            };
            let mut names: Vec<&str> = listed.service.iter().map(|s| s.name.as_str()).collect();
            names.sort_unstable();
            let mut expected = vec![own];
            expected.extend(common);
            expected.sort_unstable();
            assert_eq!(names, expected, "{listener}");

            let Ok(MessageResponse::FileDescriptorResponse(file)) = own_file else {
                panic!("{listener}: expected {own}'s file, got {own_file:?}");
            };
            let descriptor = String::from_utf8_lossy(&file.file_descriptor_proto[0]).into_owned();
            assert!(descriptor.contains(method), "{listener}: {descriptor}");

            let error = other_file.expect_err(&format!("{listener} describes {other}, which it does not serve"));
            assert_eq!(error.code(), Code::NotFound, "{listener}");
        }
    }

    async fn only_admin_tokens_grant_or_raise_superkey(backend) {
        let (server, service, admin) = start_with_roles(backend, |_| {}).await;
        let mut client = server.admin.clone();

        let status = client.create_key(with_token(superkey("acme"), &service)).await.expect_err("service superkey");
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
        assert!(status.message().contains("admin token"), "{status:?}");
        let ordinary = client.create_key(with_token(create("acme"), &service)).await.expect("CreateKey").into_inner();
        let id = ordinary.api_key.unwrap().id;
        let status = client.update_key(with_token(set_superkey("acme", &id, true), &service)).await.expect_err("raise");
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
        let check = server.check_key(&ordinary.key, Some("write:orders")).await;
        assert_eq!(check.code, "insufficient_ability", "the refused raise changed nothing");
        let listed = client
            .list_keys(with_token(ListKeysRequest { owner_id: "acme".into(), ..Default::default() }, &admin))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(listed.total_size, 1, "the refused create stored no key");

        // An admin token grants and raises; a service token may lower, and
        // rotating a superkey hands its successor the same power.
        let granted = client.create_key(with_token(superkey("acme"), &admin)).await.expect("admin superkey").into_inner();
        client.update_key(with_token(set_superkey("acme", &id, true), &admin)).await.expect("admin raise");
        assert_eq!(server.check_key(&ordinary.key, Some("write:orders")).await.code, "allowed");
        let lowered = client.update_key(with_token(set_superkey("acme", &id, false), &service)).await.expect("lower");
        assert!(!lowered.into_inner().superkey);
        let rotate = RotateKeyRequest { owner_id: "acme".into(), id: granted.api_key.unwrap().id, overlap_minutes: 0 };
        let rotated = client.rotate_key(with_token(rotate, &service)).await.expect("service rotates a superkey");
        assert!(rotated.into_inner().api_key.unwrap().superkey);
    }

    async fn a_setting_lets_service_tokens_grant_superkey(backend) {
        let (server, service, _) =
            start_with_roles(backend, |s| s.service_tokens_may_grant_superkey = Some(true)).await;
        let mut client = server.admin.clone();
        let created = client.create_key(with_token(superkey("acme"), &service)).await.expect("allowed by the setting");
        assert!(created.into_inner().api_key.unwrap().superkey);
        let id = client.create_key(with_token(create("acme"), &service)).await.unwrap().into_inner().api_key.unwrap().id;
        client.update_key(with_token(set_superkey("acme", &id, true), &service)).await.expect("raise allowed by the setting");
    }
}

/// Sends `requests` on one reflection stream to `addr`: one answer each,
/// where an unknown symbol is answered with an error status.
async fn reflect<const N: usize>(
    addr: std::net::SocketAddr,
    requests: [MessageRequest; N],
) -> [Result<MessageResponse, tonic::Status>; N] {
    let mut reflection = ServerReflectionClient::new(channel(addr).await);
    let requests = requests.map(|request| ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    });
    let mut responses = reflection
        .server_reflection_info(tokio_stream::iter(requests))
        .await
        .expect("ServerReflectionInfo")
        .into_inner();
    let mut answers = Vec::with_capacity(N);
    for _ in 0..N {
        let answer = responses.next().await.expect("a response");
        answers.push(answer.map(|a| a.message_response.expect("an answer")));
    }
    answers
        .try_into()
        .unwrap_or_else(|_| unreachable!("N answers were collected"))
}
