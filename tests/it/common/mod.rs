//! Shared harness for the black-box tests: a real keygate on loopback ports,
//! a real database (a fresh SQLite file or a fresh PostgreSQL database per
//! test), and real gRPC clients.
#![allow(dead_code)]

pub mod http;
pub mod process;
pub mod proxy;
pub mod replica;

use std::{collections::HashMap, time::Duration};

use envoy_types::{
    ext_authz::v3::pb::{CheckRequest, CheckResponse, HttpResponse},
    pb::envoy::service::auth::v3::{
        attribute_context::{HttpRequest, Request as AttrRequest},
        authorization_client::AuthorizationClient,
        AttributeContext,
    },
};
use keygate::{
    app::{self, Running},
    clock::Clock,
    config::Settings,
    proto::{key_admin_client::KeyAdminClient, CreateKeyRequest, CreateKeyResponse},
};
use sqlx::{Connection, PgConnection};
use tonic::{metadata::MetadataValue, transport::Channel, Request};

/// Which store a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The server every Postgres test database is created on.
pub fn postgres_base_url() -> String {
    std::env::var("KEYGATE_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A database used by one test, removed when dropped.
pub struct TestDb {
    pub url: String,
    pub backend: Backend,
    _dir: Option<tempfile::TempDir>,
    postgres_name: Option<String>,
}

impl TestDb {
    pub async fn new(backend: Backend) -> TestDb {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let url = format!("sqlite://{}", dir.path().join("keygate.db").display());
                TestDb {
                    url,
                    backend,
                    _dir: Some(dir),
                    postgres_name: None,
                }
            }
            Backend::Postgres => {
                let base = postgres_base_url();
                let mut admin = PgConnection::connect(&base).await.unwrap_or_else(|e| {
                    panic!(
                        "PostgreSQL tests need a server at {base} (set KEYGATE_TEST_POSTGRES_URL, or run scripts/test.sh, \
                         which starts the local cluster): {e}"
                    )
                });
                let name = format!("keygate_test_{}", uuid::Uuid::new_v4().simple());
                sqlx::query(&format!("CREATE DATABASE {name}"))
                    .execute(&mut admin)
                    .await
                    .expect("create test database");
                let url = match base.rsplit_once('/') {
                    Some((server, _)) => format!("{server}/{name}"),
                    None => panic!("KEYGATE_TEST_POSTGRES_URL must name a database: {base}"),
                };
                TestDb {
                    url,
                    backend,
                    _dir: None,
                    postgres_name: Some(name),
                }
            }
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some(name) = self.postgres_name.take() else {
            return;
        };
        // Drop runs inside the test's runtime: use a thread with its own.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async {
                if let Ok(mut admin) = PgConnection::connect(&postgres_base_url()).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&mut admin)
                        .await;
                }
            });
        })
        .join();
    }
}

/// Settings for a test server on ephemeral loopback ports.
pub fn test_settings(db: &TestDb) -> Settings {
    Settings {
        database_url: Some(db.url.clone()),
        authz_addr: Some("127.0.0.1:0".into()),
        admin_addr: Some("127.0.0.1:0".into()),
        forward_auth_addr: Some("127.0.0.1:0".into()),
        http_addr: Some("127.0.0.1:0".into()),
        usage_flush_interval: Some("50ms".into()),
        // Tests that are not about the Check bound must not depend on how
        // loaded the machine is; the outage test sets the real 100 ms.
        check_timeout: Some("5s".into()),
        prune_enabled: Some(false),
        shutdown_grace: Some("10s".into()),
        ..Default::default()
    }
}

/// A running keygate with clients for both listeners.
pub struct TestServer {
    pub running: Option<Running>,
    pub admin: KeyAdminClient<Channel>,
    pub authz: AuthorizationClient<Channel>,
    pub db: TestDb,
}

impl TestServer {
    pub async fn start(backend: Backend) -> TestServer {
        Self::start_with(backend, |_| {}).await
    }

    pub async fn start_with(backend: Backend, configure: impl FnOnce(&mut Settings)) -> TestServer {
        let db = TestDb::new(backend).await;
        Self::start_on(db, configure).await
    }

    /// Starts a server on an existing database (e.g. a second replica).
    pub async fn start_on(db: TestDb, configure: impl FnOnce(&mut Settings)) -> TestServer {
        Self::start_on_with_clock(db, Clock::system(), configure).await
    }

    /// Starts a server whose use-cases and Check read the time from `clock`
    /// (a [`Clock::manual`] the test moves instead of waiting).
    pub async fn start_with_clock(
        backend: Backend,
        clock: Clock,
        configure: impl FnOnce(&mut Settings),
    ) -> TestServer {
        let db = TestDb::new(backend).await;
        Self::start_on_with_clock(db, clock, configure).await
    }

    async fn start_on_with_clock(
        db: TestDb,
        clock: Clock,
        configure: impl FnOnce(&mut Settings),
    ) -> TestServer {
        let mut settings = test_settings(&db);
        configure(&mut settings);
        let config = settings.validate().expect("valid test settings");
        let running = app::start_with_clock(config, clock)
            .await
            .expect("server starts");
        let admin = KeyAdminClient::new(channel(running.admin_addr).await);
        let authz = AuthorizationClient::new(channel(running.authz_addr).await);
        TestServer {
            running: Some(running),
            admin,
            authz,
            db,
        }
    }

    pub fn running(&self) -> &Running {
        self.running.as_ref().expect("server running")
    }

    pub async fn stop(&mut self) {
        if let Some(running) = self.running.take() {
            running.stop().await;
        }
    }

    /// Creates a key for `owner` with the given abilities.
    pub async fn create_key(&self, owner: &str, abilities: &[&str]) -> CreateKeyResponse {
        self.create(CreateKeyRequest {
            owner_id: owner.into(),
            name: "test key".into(),
            abilities: abilities.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        })
        .await
    }

    pub async fn create(&self, request: CreateKeyRequest) -> CreateKeyResponse {
        self.admin
            .clone()
            .create_key(request)
            .await
            .expect("CreateKey")
            .into_inner()
    }

    /// Sends a Check carrying `key` as a bearer token.
    pub async fn check_key(&self, key: &str, abilities: Option<&str>) -> Decision {
        let mut headers = HashMap::from([("authorization".to_string(), format!("Bearer {key}"))]);
        headers.insert("x-forwarded-for".into(), "203.0.113.7".into());
        let mut extensions = HashMap::new();
        if let Some(abilities) = abilities {
            extensions.insert("keygate.abilities".to_string(), abilities.to_string());
        }
        self.check(check_request(headers, "GET", "/v1/orders/42", extensions))
            .await
            .expect("Check")
    }

    pub async fn check(&self, request: CheckRequest) -> Result<Decision, tonic::Status> {
        self.authz
            .clone()
            .check(request)
            .await
            .map(|r| Decision::of(r.into_inner()))
    }
}

pub async fn channel(addr: std::net::SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .expect("connect")
}

pub fn check_request(
    headers: HashMap<String, String>,
    method: &str,
    path: &str,
    context_extensions: HashMap<String, String>,
) -> CheckRequest {
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(AttrRequest {
                http: Some(HttpRequest {
                    method: method.into(),
                    path: path.into(),
                    headers,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            context_extensions,
            ..Default::default()
        }),
    }
}

/// A Check response reduced to what tests assert on.
#[derive(Debug, Clone)]
pub struct Decision {
    /// HTTP status Envoy would return: 200 for allowed.
    pub status: u16,
    /// `allowed` or the denial code.
    pub code: String,
    pub upstream_headers: HashMap<String, String>,
    pub response_headers: HashMap<String, String>,
}

impl Decision {
    pub fn of(response: CheckResponse) -> Decision {
        match response.http_response {
            Some(HttpResponse::OkResponse(ok)) => Decision {
                status: 200,
                code: "allowed".into(),
                upstream_headers: ok
                    .headers
                    .into_iter()
                    .filter_map(|h| h.header)
                    .map(|h| (h.key, h.value))
                    .collect(),
                response_headers: ok
                    .response_headers_to_add
                    .into_iter()
                    .filter_map(|h| h.header)
                    .map(|h| (h.key, h.value))
                    .collect(),
            },
            Some(HttpResponse::DeniedResponse(denied)) => {
                let body: serde_json::Value =
                    serde_json::from_str(&denied.body).expect("JSON body");
                Decision {
                    status: denied.status.map(|s| s.code as u16).unwrap_or_default(),
                    code: body["error"]["code"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                    upstream_headers: HashMap::new(),
                    response_headers: denied
                        .headers
                        .into_iter()
                        .filter_map(|h| h.header)
                        .map(|h| (h.key, h.value))
                        .collect(),
                }
            }
            _ => panic!("Check response without an http_response"),
        }
    }
}

/// Adds `authorization: Bearer <token>` metadata.
pub fn with_token<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        MetadataValue::try_from(format!("Bearer {token}")).expect("ascii token"),
    );
    request
}

/// Polls `probe` until it returns true or `within` passes. For effects that
/// are asynchronous by design (usage flushes, cross-replica notifications).
pub async fn eventually(within: Duration, mut probe: impl AsyncFnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if probe().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Declares each test once per backend: `sqlite::name` and `postgres::name`.
#[macro_export]
macro_rules! on_both_backends {
    ($(async fn $name:ident($backend:ident) $body:block)*) => {
        mod sqlite {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let $backend = $crate::common::Backend::Sqlite;
                    $body
                }
            )*
        }
        mod postgres {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let $backend = $crate::common::Backend::Postgres;
                    $body
                }
            )*
        }
    };
}

/// Runs `$body` with `$pool` connected to the test database, for
/// assertions on what was stored and for setting up states the API refuses.
macro_rules! with_test_pool {
    ($db:expr, $pool:ident => $body:expr) => {
        match $db.backend {
            Backend::Sqlite => {
                let $pool = sqlx::SqlitePool::connect(&$db.url).await.expect("sqlite");
                let result = $body;
                $pool.close().await;
                result
            }
            Backend::Postgres => {
                let $pool = sqlx::PgPool::connect(&$db.url).await.expect("postgres");
                let result = $body;
                $pool.close().await;
                result
            }
        }
    };
}

/// One scalar query with the key id bound as `$1`.
pub async fn scalar_i64(db: &TestDb, sql: &str, key_id: uuid::Uuid) -> i64 {
    with_test_pool!(db, pool => sqlx::query_scalar(sql).bind(key_id).fetch_one(&pool).await.expect(sql))
}

/// One bytes-valued scalar query with `param` bound as `$1`.
pub async fn scalar_bytes(db: &TestDb, sql: &str, param: &str) -> Vec<u8> {
    with_test_pool!(db, pool => sqlx::query_scalar(sql).bind(param).fetch_one(&pool).await.expect(sql))
}

/// One statement, e.g. to put an expiry in the past.
pub async fn execute(db: &TestDb, sql: &str) {
    with_test_pool!(db, pool => {
        sqlx::query(sql).execute(&pool).await.expect(sql);
    })
}

/// Runs `keygate prune` on `database_url`; returns its standard output
/// after checking that it succeeded.
pub fn prune_cli(database_url: &str) -> String {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_keygate"))
        .arg("prune")
        .env("KEYGATE_DATABASE_URL", database_url)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// Fetches `/metrics` from a running process over plain HTTP/1.1.
pub fn scrape_metrics(addr: std::net::SocketAddr) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("metrics listener");
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut body = String::new();
    stream.read_to_string(&mut body).unwrap();
    body
}

/// The value of an unlabelled counter or gauge in Prometheus text.
pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|line| line.starts_with(name) && line[name.len()..].starts_with(' '))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}
