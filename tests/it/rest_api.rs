//! The REST/JSON API against a real server and database, through a real HTTP
//! client: every route, both ways of calling (admin tokens and an owner's own
//! key), owner isolation, page totals, and each documented error status.

use crate::common;

use common::{Backend, TestServer};
use keygate::{admin::AdminRole, grpc::auth::new_admin_token};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// Admin tokens: `billing` (service) and `ops` (admin).
struct Api {
    server: TestServer,
    base: String,
    http: reqwest::Client,
    service: String,
    admin: String,
}

async fn start(backend: Backend) -> Api {
    start_with(backend, |_| {}).await
}

async fn start_with(
    backend: Backend,
    configure: impl FnOnce(&mut keygate::config::Settings),
) -> Api {
    let (service, service_line) = new_admin_token("billing", AdminRole::Service);
    let (admin, admin_line) = new_admin_token("ops", AdminRole::Admin);
    let server = TestServer::start_with(backend, |settings| {
        settings.admin_tokens = Some(format!("{service_line},{admin_line}"));
        configure(settings);
    })
    .await;
    let base = format!("http://{}", server.running().http_addr);
    Api {
        server,
        base,
        http: reqwest::Client::new(),
        service,
        admin,
    }
}

impl Api {
    /// Sends `body` as JSON (when given) with `token` as the bearer.
    async fn call(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("HTTP request");
        let status = response.status();
        let text = response.text().await.expect("body");
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, value)
    }

    async fn raw(&self, path: &str, content_type: &str, body: Vec<u8>) -> (StatusCode, Value) {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.service)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("HTTP request");
        let status = response.status();
        (status, response.json().await.expect("JSON error body"))
    }

    /// Creates a key for `owner` with a service token; returns the response data.
    async fn create(&self, owner: &str, abilities: Value) -> Value {
        let (status, body) = self
            .call(
                Method::POST,
                "/v1/api-keys",
                &self.service,
                Some(json!({"owner_id": owner, "name": "k", "abilities": abilities})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["data"].clone()
    }
}

fn error_code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or_default()
}

on_both_backends! {
    async fn a_service_token_drives_every_key_route(backend) {
        let api = start(backend).await;
        let (status, body) = api
            .call(Method::POST, "/v1/api-keys", &api.service, Some(json!({
                "owner_id": "acme", "name": "ci", "environment": "test",
                "abilities": ["orders:read"], "rate_limit": {"max_attempts": 5, "decay_seconds": 60},
                "expires_at": "2999-01-01T00:00:00Z", "metadata": {"team": "ops"}
            })))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let data = &body["data"];
        let key = data["key"].as_str().unwrap();
        assert!(key.starts_with("sk_test_"));
        assert_eq!(data["message"], "Store this key securely. It will not be shown again.");
        let created = &data["api_key"];
        assert_eq!(created["abilities"], json!(["orders:read"]));
        assert_eq!(created["superkey"], false);
        assert_eq!(created["rate_limit"], json!({"max_attempts": 5, "decay_seconds": 60}));
        assert_eq!(created["expires_at"], "2999-01-01T00:00:00Z");
        assert_eq!(created["state"], "ACTIVE");
        assert!(!created.to_string().contains(key), "the masked key never carries the secret");
        let id = created["id"].as_str().unwrap();
        assert_eq!(api.server.check_key(key, Some("orders:read")).await.code, "allowed");

        let (status, got) = api.call(Method::GET, &format!("/v1/api-keys/{id}?owner_id=acme"), &api.service, None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!((&got["data"]["id"], &got["data"]["masked_key"]), (&created["id"], &created["masked_key"]));
        assert!(!got.to_string().contains(key));

        let (status, list) = api.call(Method::GET, "/v1/api-keys?owner_id=acme", &api.service, None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(list["meta"], json!({"page": 1, "per_page": 20, "total": 1, "last_page": 1}));
        assert_eq!(list["data"][0]["id"], id);

        let (status, updated) = api
            .call(Method::PATCH, &format!("/v1/api-keys/{id}?owner_id=acme"), &api.service,
                Some(json!({"name": "renamed", "rate_limit": null})))
            .await;
        assert_eq!(status, StatusCode::OK, "{updated}");
        assert_eq!(updated["data"]["name"], "renamed");
        assert_eq!(updated["data"]["rate_limit"], Value::Null);
        assert_eq!(updated["data"]["abilities"], json!(["orders:read"]), "fields absent are kept");

        // The Check above reaches the log with the next flush.
        let mut usage = Value::Null;
        for _ in 0..100 {
            let (status, body) = api.call(Method::GET, &format!("/v1/api-keys/{id}/usage?owner_id=acme&recent=5"), &api.service, None).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            usage = body;
            if usage["data"]["recent_logs"].as_array().is_some_and(|logs| !logs.is_empty()) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        let log = &usage["data"]["recent_logs"][0];
        assert_eq!((&log["decision"], &log["count"]), (&json!("allowed"), &json!(1)), "{usage}");

        let (status, scopes) = api.call(Method::GET, "/v1/api-keys/scopes", &api.service, None).await;
        assert_eq!((status, scopes), (StatusCode::OK, json!({"data": []})));

        let (status, rotated) = api
            .call(Method::POST, &format!("/v1/api-keys/{id}/rotate"), &api.service,
                Some(json!({"owner_id": "acme", "overlap_minutes": 0})))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{rotated}");
        let successor = rotated["data"]["key"].as_str().unwrap();
        assert_eq!(rotated["data"]["previous"]["id"], id);
        assert_eq!(rotated["data"]["previous"]["state"], "REVOKED");
        assert_eq!(rotated["data"]["api_key"]["rotated_from_id"], id);
        assert_eq!(api.server.check_key(key, None).await.code, "key_revoked");
        assert_eq!(api.server.check_key(successor, None).await.code, "allowed");

        let new_id = rotated["data"]["api_key"]["id"].as_str().unwrap();
        let (status, revoked) = api
            .call(Method::DELETE, &format!("/v1/api-keys/{new_id}?owner_id=acme"), &api.service,
                Some(json!({"reason": "leaked"})))
            .await;
        assert_eq!(status, StatusCode::OK, "{revoked}");
        assert_eq!(revoked["data"]["revocation_reason"], "leaked");
        assert_eq!(api.server.check_key(successor, None).await.code, "key_revoked");
    }

    async fn an_owners_own_key_acts_for_that_owner_only(backend) {
        let api = start(backend).await;
        let own = api.create("acme", json!(["keygate:keys", "orders:*"])).await;
        let own_key = own["key"].as_str().unwrap();
        let sibling = api.create("acme", json!(["orders:read"])).await;
        let sibling_id = sibling["api_key"]["id"].as_str().unwrap();
        let foreign = api.create("globex", json!(["orders:read"])).await;
        let foreign_id = foreign["api_key"]["id"].as_str().unwrap();

        let (status, created) = api
            .call(Method::POST, "/v1/api-keys", own_key, Some(json!({"name": "mine", "abilities": ["orders:write"]})))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        assert_eq!(created["data"]["api_key"]["owner_id"], "acme");
        let (_, audit) = api.call(Method::GET, "/v1/admin/audit-events?event=api_key.created&per_page=1", &api.admin, None).await;
        let prefix = own["api_key"]["key_prefix"].as_str().unwrap();
        assert_eq!(audit["data"][0]["actor"], format!("key:{prefix}"), "the calling key is the audit actor");

        let (status, list) = api.call(Method::GET, "/v1/api-keys", own_key, None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(list["meta"]["total"], 3, "the owner's three keys, none of globex's");

        // Every route on another owner's key: 403, and nothing changes.
        let routes = [
            (Method::GET, format!("/v1/api-keys/{foreign_id}"), None),
            (Method::PATCH, format!("/v1/api-keys/{foreign_id}"), Some(json!({"name": "x"}))),
            (Method::POST, format!("/v1/api-keys/{foreign_id}/rotate"), None),
            (Method::DELETE, format!("/v1/api-keys/{foreign_id}"), None),
            (Method::GET, format!("/v1/api-keys/{foreign_id}/usage"), None),
            (Method::GET, "/v1/api-keys?owner_id=globex".to_owned(), None),
            (Method::POST, "/v1/api-keys".to_owned(), Some(json!({"owner_id": "globex", "name": "x", "abilities": []}))),
        ];
        for (method, path, body) in routes {
            let (status, error) = api.call(method.clone(), &path, own_key, body).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path}: {error}");
            assert_eq!(error_code(&error), "forbidden");
        }
        // A service token naming the wrong owner gets the same answer.
        let (status, _) = api.call(Method::GET, &format!("/v1/api-keys/{foreign_id}?owner_id=acme"), &api.service, None).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        let (status, _) = api.call(Method::GET, &format!("/v1/api-keys/{foreign_id}?owner_id=globex"), &api.service, None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(api.server.check_key(foreign["key"].as_str().unwrap(), None).await.code, "allowed");

        for path in ["/v1/admin/api-keys", "/v1/admin/audit-events"] {
            let (status, _) = api.call(Method::GET, path, own_key, None).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{path}");
        }
        let (status, _) = api.call(Method::GET, &format!("/v1/api-keys/{sibling_id}"), own_key, None).await;
        assert_eq!(status, StatusCode::OK);
    }

    async fn a_self_service_key_never_grants_more_than_it_holds(backend) {
        let api = start(backend).await;
        let own = api.create("acme", json!(["keygate:keys", "orders:read"])).await;
        let own_key = own["key"].as_str().unwrap();
        let stronger = api.create("acme", json!(["billing:write"])).await;
        let stronger_id = stronger["api_key"]["id"].as_str().unwrap();
        let weaker = api.create("acme", json!(["orders:read"])).await;
        let weaker_id = weaker["api_key"]["id"].as_str().unwrap();

        let refused = [
            (Method::POST, "/v1/api-keys".to_owned(), Some(json!({"name": "x", "abilities": ["billing:write"]}))),
            (Method::POST, "/v1/api-keys".to_owned(), Some(json!({"name": "x", "abilities": ["orders:*"]}))),
            (Method::POST, "/v1/api-keys".to_owned(), Some(json!({"name": "x"}))),
            (Method::PATCH, format!("/v1/api-keys/{weaker_id}"), Some(json!({"abilities": ["billing:write"]}))),
            (Method::PATCH, format!("/v1/api-keys/{weaker_id}"), Some(json!({"superkey": true}))),
            (Method::POST, format!("/v1/api-keys/{stronger_id}/rotate"), None),
        ];
        for (method, path, body) in refused {
            let (status, error) = api.call(method.clone(), &path, own_key, body.clone()).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path} {body:?}: {error}");
        }
        let (_, list) = api.call(Method::GET, "/v1/api-keys", own_key, None).await;
        assert_eq!(list["meta"]["total"], 3, "nothing was created or rotated");

        let (status, _) = api.call(Method::PATCH, &format!("/v1/api-keys/{stronger_id}"), own_key, Some(json!({"name": "renamed"}))).await;
        assert_eq!(status, StatusCode::OK, "renaming a stronger key grants nothing");
        let (status, _) = api.call(Method::POST, &format!("/v1/api-keys/{weaker_id}/rotate"), own_key, None).await;
        assert_eq!(status, StatusCode::CREATED);
    }

    async fn a_key_that_check_would_deny_is_refused(backend) {
        let api = start(backend).await;
        let lacking = api.create("acme", json!(["orders:read"])).await;
        let (status, error) = api.call(Method::GET, "/v1/api-keys", lacking["key"].as_str().unwrap(), None).await;
        assert_eq!((status, error_code(&error)), (StatusCode::FORBIDDEN, "forbidden"));

        let revoked = api.create("acme", json!(["keygate:keys"])).await;
        let id = revoked["api_key"]["id"].as_str().unwrap();
        api.call(Method::DELETE, &format!("/v1/api-keys/{id}?owner_id=acme"), &api.service, None).await;
        let (status, error) = api.call(Method::GET, "/v1/api-keys", revoked["key"].as_str().unwrap(), None).await;
        assert_eq!((status, error_code(&error)), (StatusCode::UNAUTHORIZED, "unauthenticated"));

        let expired = api.create("acme", json!(["keygate:keys"])).await;
        let id = expired["api_key"]["id"].as_str().unwrap();
        let sql = match backend {
            Backend::Sqlite => format!(
                "UPDATE api_keys SET expires_at = '2020-01-01T00:00:00+00:00' WHERE id = X'{}'",
                uuid::Uuid::parse_str(id).unwrap().simple()
            ),
            Backend::Postgres => {
                format!("UPDATE api_keys SET expires_at = '2020-01-01T00:00:00Z' WHERE id = '{id}'")
            }
        };
        common::execute(&api.server.db, &sql).await;
        api.server.running().cache.clear();
        let (status, _) = api.call(Method::GET, "/v1/api-keys", expired["key"].as_str().unwrap(), None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);

        let suspended = api.create("initech", json!(["keygate:keys"])).await;
        let (status, _) = api.call(Method::POST, "/v1/admin/owners/initech/suspend", &api.admin, Some(json!({"reason": "unpaid"}))).await;
        assert_eq!(status, StatusCode::OK);
        let (status, _) = api.call(Method::GET, "/v1/api-keys", suspended["key"].as_str().unwrap(), None).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "a key of a suspended owner");

        let (status, error) = api.call(Method::GET, "/v1/api-keys", "sk_live_notakey", None).await;
        assert_eq!((status, error_code(&error)), (StatusCode::UNAUTHORIZED, "unauthenticated"));
        let (status, _) = api.call(Method::GET, "/v1/api-keys?owner_id=acme", "kga_unknown", None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let response = api.http.get(format!("{}/v1/api-keys?owner_id=acme", api.base)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }

    async fn list_pages_report_totals_and_cap_per_page(backend) {
        let api = start(backend).await;
        for _ in 0..5 {
            api.create("acme", json!([])).await;
        }
        api.create("globex", json!([])).await;
        let mut seen = std::collections::HashSet::new();
        for page in 1..=3 {
            let (status, body) = api.call(Method::GET, &format!("/v1/api-keys?owner_id=acme&per_page=2&page={page}"), &api.service, None).await;
            assert_eq!(status, StatusCode::OK);
            assert_eq!(body["meta"], json!({"page": page, "per_page": 2, "total": 5, "last_page": 3}));
            for key in body["data"].as_array().unwrap() {
                assert!(seen.insert(key["id"].as_str().unwrap().to_owned()), "pages do not overlap");
            }
        }
        assert_eq!(seen.len(), 5);
        let (_, beyond) = api.call(Method::GET, "/v1/api-keys?owner_id=acme&per_page=2&page=9", &api.service, None).await;
        assert_eq!(beyond["data"], json!([]));
        assert_eq!(beyond["meta"]["total"], 5);
        let (_, capped) = api.call(Method::GET, "/v1/api-keys?owner_id=acme&per_page=100000", &api.service, None).await;
        assert_eq!(capped["meta"]["per_page"], 100);
        let (_, everyone) = api.call(Method::GET, "/v1/admin/api-keys?per_page=4", &api.admin, None).await;
        assert_eq!(everyone["meta"], json!({"page": 1, "per_page": 4, "total": 6, "last_page": 2}));
        for query in ["page=0", "page=-1", "per_page=0", "page=x", "include_revoked=maybe", "colour=red"] {
            let (status, error) = api.call(Method::GET, &format!("/v1/api-keys?owner_id=acme&{query}"), &api.service, None).await;
            assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{query}: {error}");
            assert!(error["error"]["fields"].is_object(), "{query}: {error}");
        }
    }

    async fn bad_input_gets_a_precise_status_and_changes_nothing(backend) {
        let api = start_with(backend, |s| s.max_keys_per_owner = Some(2)).await;
        let key = api.create("acme", json!([])).await;
        let id = key["api_key"]["id"].as_str().unwrap();

        let huge = json!({"owner_id": "acme", "name": "x".repeat(70 * 1024)}).to_string();
        let (status, error) = api.raw("/v1/api-keys", "application/json", huge.into_bytes()).await;
        assert_eq!((status, error_code(&error)), (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"));
        let (status, error) = api.raw("/v1/api-keys", "text/plain", b"name=x".to_vec()).await;
        assert_eq!((status, error_code(&error)), (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"));
        let (status, error) = api.raw("/v1/api-keys", "application/json", b"{\"name\": ".to_vec()).await;
        assert_eq!((status, error_code(&error)), (StatusCode::BAD_REQUEST, "bad_request"));
        let (status, _) = api.raw("/v1/api-keys", "application/json", b"{\"owner_id\":\"acme\",\"name\":\"\xff\xfe\"}".to_vec()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "invalid UTF-8");

        let invalid = [
            (json!({"owner_id": "acme", "name": "x", "colour": "red"}), ""),
            (json!({"owner_id": "acme", "name": 5}), "name"),
            (json!({"owner_id": "acme", "name": "x", "rate_limit": {"max_attempts": -1, "decay_seconds": 1}}), "rate_limit.max_attempts"),
            (json!({"owner_id": "acme", "name": ""}), "name"),
            (json!({"owner_id": "acme", "name": "x", "environment": "staging"}), "environment"),
            (json!({"owner_id": "acme", "name": "x", "abilities": ["bad ability"]}), "abilities"),
            (json!({"owner_id": "acme", "name": "x", "abilities": [], "expires_at": "2001-01-01T00:00:00Z"}), "expires_at"),
            (json!({"owner_id": "acme", "name": "x", "abilities": [], "expires_at": "not a time"}), "expires_at"),
            (json!({"name": "x"}), "owner_id"),
        ];
        for (body, field) in invalid {
            let (status, error) = api.call(Method::POST, "/v1/api-keys", &api.service, Some(body.clone())).await;
            assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {error}");
            assert_eq!(error_code(&error), "validation_failed");
            let fields = &error["error"]["fields"];
            assert!(if field.is_empty() { fields.is_object() } else { fields[field].is_array() }, "{body}: {error}");
        }
        // Absent abilities ask for a superkey, which only an admin token grants.
        let (status, error) = api.call(Method::POST, "/v1/api-keys", &api.service, Some(json!({"owner_id": "acme", "name": "x"}))).await;
        assert_eq!((status, error_code(&error)), (StatusCode::FORBIDDEN, "forbidden"), "{error}");

        let (status, error) = api.call(Method::PATCH, &format!("/v1/api-keys/{id}?owner_id=acme"), &api.service, Some(json!({"environment": "test"}))).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(error["error"]["fields"]["environment"].is_array());
        let (status, _) = api.call(Method::GET, "/v1/api-keys/not-a-uuid?owner_id=acme", &api.service, None).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "a malformed id is a validation error");
        let unknown = uuid::Uuid::now_v7();
        let (status, error) = api.call(Method::GET, &format!("/v1/api-keys/{unknown}?owner_id=acme"), &api.service, None).await;
        assert_eq!((status, error_code(&error)), (StatusCode::NOT_FOUND, "not_found"));
        let (status, _) = api.call(Method::GET, "/v1/nothing-here", &api.service, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND);

        api.create("acme", json!([])).await;
        let (status, error) = api.call(Method::POST, "/v1/api-keys", &api.service, Some(json!({"owner_id": "acme", "name": "third", "abilities": []}))).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "max_keys_per_owner: {error}");
        assert!(error["error"]["fields"]["owner_id"].is_array());

        api.call(Method::DELETE, &format!("/v1/api-keys/{id}?owner_id=acme"), &api.service, None).await;
        let (status, error) = api.call(Method::POST, &format!("/v1/api-keys/{id}/rotate?owner_id=acme"), &api.service, None).await;
        assert_eq!((status, error_code(&error)), (StatusCode::CONFLICT, "conflict"));

        let (_, list) = api.call(Method::GET, "/v1/api-keys?owner_id=acme&include_revoked=true", &api.service, None).await;
        assert_eq!(list["meta"]["total"], 2, "no refused request stored anything");
        assert_eq!(list["data"][1]["name"], "k", "no refused request changed the key");
    }

    async fn admin_routes_span_owners_and_refuse_a_service_token(backend) {
        let api = start(backend).await;
        let acme = api.create("acme", json!(["orders:read"])).await;
        let acme_id = acme["api_key"]["id"].as_str().unwrap();
        api.create("globex", json!([])).await;

        let (status, all) = api.call(Method::GET, "/v1/admin/api-keys", &api.admin, None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(all["meta"]["total"], 2);
        let (_, filtered) = api.call(Method::GET, "/v1/admin/api-keys?owner_id=globex", &api.admin, None).await;
        assert_eq!(filtered["meta"]["total"], 1);

        let (status, revoked) = api.call(Method::POST, &format!("/v1/admin/api-keys/{acme_id}/revoke"), &api.admin, Some(json!({"reason": "abuse"}))).await;
        assert_eq!(status, StatusCode::OK, "{revoked}");
        assert_eq!(revoked["data"]["state"], "REVOKED");
        assert_eq!(api.server.check_key(acme["key"].as_str().unwrap(), None).await.code, "key_revoked");

        let globex = api.create("globex", json!([])).await;
        let (status, owner) = api.call(Method::POST, "/v1/admin/owners/globex/suspend", &api.admin, None).await;
        assert_eq!(status, StatusCode::OK, "{owner}");
        assert_eq!(owner["data"]["suspension_reason"], "suspended");
        assert_eq!(api.server.check_key(globex["key"].as_str().unwrap(), None).await.code, "owner_suspended");
        let (status, owner) = api.call(Method::POST, "/v1/admin/owners/globex/resume", &api.admin, None).await;
        assert_eq!((status, owner["data"]["suspended_at"].clone()), (StatusCode::OK, Value::Null));
        assert_eq!(api.server.check_key(globex["key"].as_str().unwrap(), None).await.code, "allowed");

        let (status, events) = api.call(Method::GET, "/v1/admin/audit-events?per_page=2", &api.admin, None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(events["data"][0]["event"], "owner.resumed");
        assert_eq!(events["data"][0]["actor"], "ops");
        let token = events["meta"]["next_page_token"].as_str().expect("more events");
        let (_, next) = api.call(Method::GET, &format!("/v1/admin/audit-events?per_page=2&page_token={token}"), &api.admin, None).await;
        assert_eq!(next["data"][0]["event"], "api_key.created");
        assert!(!events.to_string().contains(acme["key"].as_str().unwrap()));

        let service_calls = [
            (Method::GET, "/v1/admin/api-keys".to_owned()),
            (Method::POST, format!("/v1/admin/api-keys/{acme_id}/revoke")),
            (Method::POST, "/v1/admin/owners/globex/suspend".to_owned()),
            (Method::POST, "/v1/admin/owners/globex/resume".to_owned()),
            (Method::GET, "/v1/admin/audit-events".to_owned()),
        ];
        for (method, path) in service_calls {
            let (status, error) = api.call(method.clone(), &path, &api.service, None).await;
            assert_eq!((status, error_code(&error)), (StatusCode::FORBIDDEN, "forbidden"), "{method} {path}");
        }
    }

    async fn webhooks_are_managed_over_rest_owner_scoped_with_the_secret_shown_once(backend) {
        let api = start_with(backend, |s| {
            s.webhook_allow_private = Some(true);
            s.webhook_allow_http = Some(true);
            // Deliveries stay queued: this test is about management.
            s.webhooks_enabled = Some(false);
        }).await;
        let (status, created) = api.call(Method::POST, "/v1/webhooks", &api.service,
            Some(json!({"owner_id": "acme", "url": "http://127.0.0.1:9/hook", "events": ["api_key.created"]}))).await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        let secret = created["data"]["secret"].as_str().unwrap();
        assert!(secret.starts_with("whsec_"));
        let hook = &created["data"]["webhook"];
        assert_eq!((&hook["enabled"], &hook["events"]), (&json!(true), &json!(["api_key.created"])));
        let id = hook["id"].as_str().unwrap();

        let (status, list) = api.call(Method::GET, "/v1/webhooks?owner_id=acme", &api.service, None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(list["data"][0]["id"], id);
        assert!(!list.to_string().contains(secret), "the secret is shown only at creation");
        let (status, _) = api.call(Method::GET, &format!("/v1/webhooks/{id}?owner_id=globex"), &api.service, None).await;
        assert_eq!(status, StatusCode::FORBIDDEN);

        let (status, bad) = api.call(Method::POST, "/v1/webhooks", &api.service,
            Some(json!({"owner_id": "acme", "url": "http://127.0.0.1:9/hook", "events": ["nope"]}))).await;
        assert_eq!((status, &bad["error"]["fields"]["events"].is_array()), (StatusCode::UNPROCESSABLE_ENTITY, &true));

        // An event through the REST API's own key creation reaches the outbox,
        // with created_by naming the token.
        let (status, key) = api.call(Method::POST, "/v1/api-keys", &api.service,
            Some(json!({"owner_id": "acme", "name": "hooked", "abilities": []}))).await;
        assert_eq!(status, StatusCode::CREATED);
        assert_eq!(key["data"]["api_key"]["created_by"], "billing");
        let (status, deliveries) = api.call(Method::GET, &format!("/v1/webhooks/{id}/deliveries?owner_id=acme"), &api.service, None).await;
        assert_eq!(status, StatusCode::OK);
        let delivery = &deliveries["data"][0];
        assert_eq!((&delivery["event_type"], &delivery["status"]), (&json!("api_key.created"), &json!("pending")));
        let payload: Value = serde_json::from_str(delivery["payload"].as_str().unwrap()).unwrap();
        assert_eq!(payload["data"]["created_by"], "billing");
        assert_eq!(payload["data"]["key_id"], key["data"]["api_key"]["id"]);

        let event_id = delivery["event_id"].as_str().unwrap();
        let (status, again) = api.call(Method::POST, &format!("/v1/webhooks/{id}/redeliver"), &api.service,
            Some(json!({"owner_id": "acme", "event_id": event_id}))).await;
        assert_eq!((status, &again["data"]["event_id"]), (StatusCode::ACCEPTED, &json!(event_id)));
        let (status, test) = api.call(Method::POST, &format!("/v1/webhooks/{id}/test?owner_id=acme"), &api.service, None).await;
        assert_eq!((status, &test["data"]["event_type"]), (StatusCode::ACCEPTED, &json!("webhook.test")));

        let (status, patched) = api.call(Method::PATCH, &format!("/v1/webhooks/{id}"), &api.service,
            Some(json!({"owner_id": "acme", "enabled": false, "events": []}))).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!((&patched["data"]["enabled"], &patched["data"]["events"]), (&json!(false), &json!([])));
        let (status, _) = api.call(Method::DELETE, &format!("/v1/webhooks/{id}?owner_id=acme"), &api.service, None).await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        let (status, _) = api.call(Method::GET, &format!("/v1/webhooks/{id}?owner_id=acme"), &api.service, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_describes_every_route_and_error() {
    let api = start(Backend::Sqlite).await;
    let response = reqwest::get(format!("{}/openapi.json", api.base))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let document: Value = response.json().await.unwrap();
    assert!(document["openapi"].as_str().unwrap().starts_with("3.1"));
    let paths = document["paths"].as_object().unwrap();
    for (path, method) in [
        ("/v1/api-keys", "get"),
        ("/v1/api-keys", "post"),
        ("/v1/api-keys/scopes", "get"),
        ("/v1/api-keys/{id}", "get"),
        ("/v1/api-keys/{id}", "patch"),
        ("/v1/api-keys/{id}", "delete"),
        ("/v1/api-keys/{id}/rotate", "post"),
        ("/v1/api-keys/{id}/usage", "get"),
        ("/v1/admin/api-keys", "get"),
        ("/v1/admin/api-keys/{id}/revoke", "post"),
        ("/v1/admin/owners/{owner_id}/suspend", "post"),
        ("/v1/admin/owners/{owner_id}/resume", "post"),
        ("/v1/admin/audit-events", "get"),
    ] {
        let operation = &paths[path][method];
        assert!(operation.is_object(), "{method} {path} is documented");
        for status in ["401", "403", "422", "503"] {
            assert!(
                operation["responses"][status].is_object(),
                "{method} {path} documents {status}"
            );
        }
    }
    assert_eq!(
        paths["/v1/api-keys"]["post"]["responses"]["413"]["content"]["application/json"]["schema"]
            ["$ref"],
        "#/components/schemas/ErrorBody"
    );
}

/// KeyAdmin and the REST API are served on a runtime of their own, so admin
/// work never takes a worker thread from Check (docs/architecture.md,
/// "Runtimes"). This test's runtime has one thread and is the runtime the
/// server's Check listener runs on; the test blocks that thread and calls
/// both admin listeners from another thread. Had they shared the runtime, no
/// call could be answered until the thread came back.
///
/// SQLite only: its connections are driven by sqlx's own threads, while a
/// Postgres connection the pool opened on the blocked runtime would wait for
/// that runtime's I/O driver, which is not what this test is about. For the
/// same reason the background tasks that use the database from the blocked
/// runtime (usage flushes, webhook delivery) are off: a connection one of
/// them held when the thread was blocked would go back to the pool only
/// through that runtime, and the admin call would wait for the pool instead.
/// In a server that runtime is never blocked for good, only busy.
#[tokio::test(flavor = "current_thread")]
async fn admin_listeners_answer_while_the_check_runtime_is_blocked() {
    use keygate::proto::{key_admin_client::KeyAdminClient, ListAbilitiesRequest};
    use std::{sync::mpsc, time::Duration};

    let api = start_with(Backend::Sqlite, |settings| {
        settings.usage_enabled = Some(false);
        settings.webhooks_enabled = Some(false);
    })
    .await;
    // Start-up used the single SQLite writer connection on this runtime; sqlx
    // hands a connection back to its pool in a task on the runtime that
    // dropped it. One call awaited here lets that happen before the block.
    api.create("acme", json!(["orders:read"])).await;
    let rest_base = api.base.clone();
    let admin_addr = api.server.running().admin_addr;
    let (service, admin) = (api.service.clone(), api.admin.clone());
    let (answered, answers) = mpsc::channel();
    std::thread::spawn(move || {
        let client_runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("client runtime");
        let outcome = client_runtime.block_on(async {
            let created = reqwest::Client::new()
                .post(format!("{rest_base}/v1/api-keys"))
                .bearer_auth(&service)
                .json(&json!({"owner_id": "acme", "name": "while-blocked", "abilities": ["orders:read"]}))
                .send()
                .await
                .map(|response| response.status());
            let mut grpc = KeyAdminClient::new(common::channel(admin_addr).await);
            let listed = grpc
                .list_abilities(common::with_token(ListAbilitiesRequest {}, &admin))
                .await
                .map(|_| ());
            (created, listed)
        });
        let _ = answered.send(outcome);
    });

    // Blocking on purpose: this is the Check runtime's only thread.
    let (created, listed) = answers
        .recv_timeout(Duration::from_secs(30))
        .expect("the admin listeners did not answer while the Check runtime was blocked");
    assert_eq!(created.expect("REST create"), StatusCode::CREATED);
    listed.expect("gRPC ListAbilities");
}
