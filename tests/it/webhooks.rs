//! Webhooks end to end (docs/behaviour.md, "Webhooks"): a real keygate, a
//! real database, and a real HTTP receiver on a loopback port. The receiver
//! checks each signature with the Standard Webhooks algorithm written out
//! here, independently of keygate's own signing code.

use crate::common;

use std::{
    collections::{HashMap, HashSet, VecDeque},
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    extract::State,
    http::{header::LOCATION, HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::post,
    Router,
};
use base64::{engine::general_purpose::STANDARD, Engine};
use common::{eventually, process::KeygateProcess, Backend, TestDb, TestServer};
use hmac::{Hmac, Mac};
use keygate::{
    app,
    config::Settings,
    proto::{
        key_admin_client::KeyAdminClient, webhook_delivery::Status as DeliveryStatus,
        CreateKeyRequest, CreateWebhookRequest, GetKeyRequest, ListWebhookDeliveriesRequest,
        RedeliverWebhookRequest, RevokeKeyRequest, SendTestWebhookRequest, WebhookDelivery,
    },
};
use sha2::Sha256;
use tonic::transport::Channel;

const OWNER: &str = "org_hooks";
/// The dispatcher's pace in these tests: fast polls and short retries, so
/// nothing waits on production intervals.
const RETRY_BASE: Duration = Duration::from_millis(100);
/// Requests in flight to one endpoint at once, when the lease leaves room
/// (docs/behaviour.md, "Delivery").
const IN_FLIGHT_PER_ENDPOINT: usize = 16;

/// What the receiver answers to one request.
#[derive(Clone, Copy, Debug)]
enum Reply {
    Status(u16),
    /// Never answers (the sender's timeout or death ends the request).
    Hang,
    /// 307 to this same `/hook`: a sender following it would post again.
    RedirectToSelf,
    /// 200 after this long.
    After(Duration),
}

#[derive(Clone, Debug)]
struct Received {
    id: String,
    timestamp: String,
    signature: String,
    body: String,
}

#[derive(Default)]
struct ReceiverState {
    received: Mutex<Vec<Received>>,
    /// Replies to the next requests, in order; then `otherwise`.
    script: Mutex<VecDeque<Reply>>,
    otherwise: Mutex<Option<Reply>>,
    /// When each `After` request arrived and was answered.
    spans: Mutex<Vec<(Instant, Instant)>>,
}

/// An HTTP server on a loopback port that records every webhook request.
struct Receiver {
    addr: SocketAddr,
    state: Arc<ReceiverState>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    async fn start() -> Receiver {
        let state = Arc::new(ReceiverState::default());
        let router = Router::new()
            .route("/hook", post(receive))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, router).await.unwrap();
        });
        Receiver { addr, state, task }
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    fn script(&self, replies: &[Reply]) {
        self.state
            .script
            .lock()
            .unwrap()
            .extend(replies.iter().copied());
    }

    fn answer_otherwise(&self, reply: Reply) {
        *self.state.otherwise.lock().unwrap() = Some(reply);
    }

    fn received(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }

    fn spans(&self) -> Vec<(Instant, Instant)> {
        self.state.spans.lock().unwrap().clone()
    }

    async fn wait_for(&self, count: usize) -> Vec<Received> {
        let arrived = eventually(Duration::from_secs(30), async || {
            self.received().len() >= count
        })
        .await;
        assert!(
            arrived,
            "expected {count} webhook requests, got {:?}",
            self.received()
        );
        self.received()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn receive(
    State(state): State<Arc<ReceiverState>>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let arrived = Instant::now();
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    state.received.lock().unwrap().push(Received {
        id: header("webhook-id"),
        timestamp: header("webhook-timestamp"),
        signature: header("webhook-signature"),
        body,
    });
    let reply = state
        .script
        .lock()
        .unwrap()
        .pop_front()
        .or(*state.otherwise.lock().unwrap())
        .unwrap_or(Reply::Status(200));
    match reply {
        Reply::Status(code) => StatusCode::from_u16(code).unwrap().into_response(),
        Reply::Hang => std::future::pending().await,
        Reply::RedirectToSelf => {
            (StatusCode::TEMPORARY_REDIRECT, [(LOCATION, "/hook")]).into_response()
        }
        Reply::After(delay) => {
            tokio::time::sleep(delay).await;
            state.spans.lock().unwrap().push((arrived, Instant::now()));
            StatusCode::OK.into_response()
        }
    }
}

/// The most requests open at one moment, of these (arrival, answer) spans.
fn most_at_once(spans: &[(Instant, Instant)]) -> usize {
    let mut edges: Vec<(Instant, i32)> = spans
        .iter()
        .flat_map(|&(arrived, answered)| [(arrived, 1), (answered, -1)])
        .collect();
    // An answer at the instant of an arrival closes first.
    edges.sort();
    let (mut open, mut most) = (0, 0);
    for (_, change) in edges {
        open += change;
        most = most.max(open);
    }
    most as usize
}

/// The Standard Webhooks verification, from the specification: the secret
/// is the base64 after `whsec_`; the signed content is `id.timestamp.body`;
/// the header lists `v1,<base64 HMAC-SHA256>` signatures separated by
/// spaces; the timestamp must be within five minutes.
fn verify(secret: &str, received: &Received) -> bool {
    let key = STANDARD
        .decode(secret.strip_prefix("whsec_").expect("whsec_ prefix"))
        .expect("base64 secret");
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{}.{}.{}", received.id, received.timestamp, received.body).as_bytes());
    let expected = STANDARD.encode(mac.finalize().into_bytes());
    let timestamp: i64 = received.timestamp.parse().expect("numeric timestamp");
    let fresh = (chrono::Utc::now().timestamp() - timestamp).abs() < 300;
    fresh
        && received
            .signature
            .split(' ')
            .filter_map(|s| s.strip_prefix("v1,"))
            .any(|s| s == expected)
}

/// Test settings plus a fast dispatcher allowed to call loopback over HTTP.
fn fast_webhooks(settings: &mut Settings) {
    settings.webhook_allow_private = Some(true);
    settings.webhook_allow_http = Some(true);
    settings.webhook_poll_interval = Some("50ms".into());
    settings.webhook_retry_base = Some(format!("{}ms", RETRY_BASE.as_millis()));
    settings.webhook_timeout = Some("1s".into());
    settings.webhook_lease = Some("2s".into());
}

async fn register(
    admin: &mut KeyAdminClient<Channel>,
    url: &str,
    events: &[&str],
) -> (String, String) {
    let created = admin
        .create_webhook(CreateWebhookRequest {
            owner_id: OWNER.into(),
            url: url.into(),
            events: events.iter().map(|e| e.to_string()).collect(),
            enabled: None,
        })
        .await
        .expect("webhook registered")
        .into_inner();
    (created.webhook.unwrap().id, created.secret)
}

async fn create_key(
    admin: &mut KeyAdminClient<Channel>,
    name: &str,
) -> keygate::proto::CreateKeyResponse {
    admin
        .create_key(CreateKeyRequest {
            owner_id: OWNER.into(),
            name: name.into(),
            ..Default::default()
        })
        .await
        .expect("key created")
        .into_inner()
}

/// `events` keys made for endpoints at `urls` (one `api_key.created` to
/// each) while the dispatcher is off, then the server stopped: the first
/// round of the next server on the database finds all their deliveries
/// due. Returns the database and the endpoints' ids, in order.
async fn deliveries_due_at_once(
    backend: Backend,
    urls: &[String],
    events: usize,
) -> (TestDb, Vec<String>) {
    let mut server = TestServer::start_with(backend, |s| {
        fast_webhooks(s);
        s.webhooks_enabled = Some(false);
    })
    .await;
    let mut ids = Vec::new();
    for url in urls {
        ids.push(
            register(&mut server.admin, url, &["api_key.created"])
                .await
                .0,
        );
    }
    for i in 0..events {
        create_key(&mut server.admin, &format!("key {i}")).await;
    }
    server.stop().await;
    (server.db, ids)
}

async fn deliveries(admin: &mut KeyAdminClient<Channel>, webhook_id: &str) -> Vec<WebhookDelivery> {
    admin
        .list_webhook_deliveries(ListWebhookDeliveriesRequest {
            owner_id: OWNER.into(),
            webhook_id: webhook_id.into(),
            page_size: 100,
            page_token: String::new(),
        })
        .await
        .expect("deliveries listed")
        .into_inner()
        .deliveries
}

/// Waits until `count` deliveries to `webhook_id` are delivered; whether
/// they were within 30 s.
async fn all_delivered(
    admin: &mut KeyAdminClient<Channel>,
    webhook_id: &str,
    count: usize,
) -> bool {
    eventually(Duration::from_secs(30), async || {
        deliveries(admin, webhook_id)
            .await
            .iter()
            .filter(|d| d.status == DeliveryStatus::Delivered as i32)
            .count()
            == count
    })
    .await
}

/// Waits until the delivery of `event_id` satisfies `done`.
async fn delivery_where(
    admin: &mut KeyAdminClient<Channel>,
    webhook_id: &str,
    event_id: &str,
    done: impl Fn(&WebhookDelivery) -> bool,
) -> WebhookDelivery {
    let mut last = None;
    let reached = eventually(Duration::from_secs(30), async || {
        last = deliveries(admin, webhook_id)
            .await
            .into_iter()
            .find(|d| d.event_id == event_id);
        last.as_ref().is_some_and(&done)
    })
    .await;
    assert!(
        reached,
        "delivery never reached the expected state: {last:?}"
    );
    last.unwrap()
}

/// Sends the endpoint's test event and waits for its first attempt, which
/// must have been refused before any answer (left pending for a retry): the
/// attempt's recorded error.
async fn first_test_attempt_refused(
    admin: &mut KeyAdminClient<Channel>,
    webhook_id: &str,
) -> String {
    let test = admin
        .send_test_webhook(SendTestWebhookRequest {
            owner_id: OWNER.into(),
            webhook_id: webhook_id.into(),
        })
        .await
        .unwrap()
        .into_inner();
    let refused = delivery_where(admin, webhook_id, &test.event_id, |d| {
        !d.attempt_log.is_empty()
    })
    .await;
    assert_eq!(refused.status, DeliveryStatus::Pending as i32);
    assert_eq!(refused.attempt_log[0].status_code, 0);
    refused.attempt_log[0].error.clone()
}

/// A change to test settings that a server then runs with.
type Tighten = fn(&mut Settings);

/// A store on a fresh database with one endpoint and one event queued for
/// it at `now` (whole seconds: each backend keeps its own sub-second
/// precision), for tests that drive the dispatcher's store calls by hand.
struct OneDelivery {
    db: TestDb,
    store: keygate::store::Store,
    hook: keygate::domain::webhook::Webhook,
    event_id: uuid::Uuid,
    now: chrono::DateTime<chrono::Utc>,
}

impl OneDelivery {
    async fn queued(backend: Backend) -> OneDelivery {
        use chrono::SubsecRound;
        use keygate::{
            domain::webhook::Webhook,
            store::{NewWebhook, Store, StoreOptions},
        };
        let db = TestDb::new(backend).await;
        let store = Store::connect(&StoreOptions::new(db.url.clone()))
            .await
            .unwrap();
        store.migrate().await.unwrap();
        let now = chrono::Utc::now().trunc_subsecs(0);
        let hook = Webhook {
            id: uuid::Uuid::now_v7(),
            owner_id: OWNER.into(),
            url: "https://hooks.example/in".into(),
            events: Vec::new(),
            enabled: true,
            created_at: now,
            updated_at: now,
            paused_until: None,
        };
        let new = NewWebhook {
            webhook: hook,
            sealed_secret: vec![7; 44],
        };
        let hook = store.insert_webhook(&new, 10).await.unwrap();
        let event_id = uuid::Uuid::now_v7();
        store
            .enqueue_for_endpoint(hook.id, event_id, "webhook.test", "{}", now)
            .await
            .unwrap();
        OneDelivery {
            db,
            store,
            hook,
            event_id,
            now,
        }
    }
}

/// Runs each statement on the test database.
async fn run_sql(db: &TestDb, statements: &[&str]) {
    with_test_pool!(db, pool => {
        for statement in statements {
            sqlx::query(statement).execute(&pool).await.expect(statement);
        }
    })
}

fn body_of(received: &Received) -> serde_json::Value {
    serde_json::from_str(&received.body).expect("JSON body")
}

on_both_backends! {
    async fn a_key_event_reaches_the_receiver_signed_per_standard_webhooks(backend) {
        let receiver = Receiver::start().await;
        let mut server = TestServer::start_with(backend, fast_webhooks).await;
        let (webhook_id, secret) = register(&mut server.admin, &receiver.url(), &[]).await;
        assert!(secret.starts_with("whsec_"));
        let issued = create_key(&mut server.admin, "billing").await;
        let key = issued.api_key.unwrap();

        let received = receiver.wait_for(1).await;
        let event = &received[0];
        assert!(verify(&secret, event), "signature must verify: {event:?}");
        let mut tampered = event.clone();
        tampered.body = tampered.body.replace("billing", "b1lling");
        assert!(!verify(&secret, &tampered), "a changed body must not verify");
        let body = body_of(event);
        assert_eq!(body["type"], "api_key.created");
        assert_eq!(body["data"]["key_id"], key.id);
        assert_eq!(body["data"]["key_prefix"], key.key_prefix);
        assert_eq!(body["data"]["owner_id"], OWNER);
        assert_eq!(body["data"]["created_by"], key.created_by);
        assert!(!key.created_by.is_empty(), "created_by is recorded");
        assert_eq!(body["data"]["event_id"], event.id);
        assert!(!event.body.contains(&issued.key), "the plaintext key is never sent");
        let token = issued.key.rsplit('_').next().unwrap();
        assert!(!event.body.contains(token));
        use sha2::Digest;
        let hash = sha2::Sha256::digest(token.as_bytes());
        assert!(!event.body.contains(&hex::encode(hash)), "nor the key's hash");
        assert!(!event.body.contains(&STANDARD.encode(hash)));

        let fetched = server.admin.get_key(GetKeyRequest { owner_id: OWNER.into(), id: key.id.clone() })
            .await.unwrap().into_inner();
        assert_eq!(fetched.created_by, key.created_by);

        let delivered = delivery_where(&mut server.admin, &webhook_id, &event.id, |d| {
            d.status == DeliveryStatus::Delivered as i32
        }).await;
        assert_eq!(delivered.attempts, 1);
        assert_eq!(delivered.attempt_log.len(), 1);
        assert_eq!(delivered.attempt_log[0].status_code, 200);
        assert_eq!(delivered.payload, event.body);
        server.stop().await;
    }

    async fn an_updated_url_takes_the_next_event_to_the_new_receiver(backend) {
        // The prepared URL and key are kept between rounds
        // (src/webhooks/endpoint_cache.rs) and each round reads its
        // endpoints' rows once (`prepare_endpoints`): an update must still
        // take the next event to the new URL, signed as before, and the old
        // one hear nothing more.
        let (old, new) = (Receiver::start().await, Receiver::start().await);
        let mut server = TestServer::start_with(backend, fast_webhooks).await;
        let (webhook_id, secret) = register(&mut server.admin, &old.url(), &[]).await;
        create_key(&mut server.admin, "before").await;
        assert!(verify(&secret, &old.wait_for(1).await[0]));

        server.admin.update_webhook(keygate::proto::UpdateWebhookRequest {
            owner_id: OWNER.into(),
            id: webhook_id.clone(),
            update_mask: Some(prost_types::FieldMask { paths: vec!["url".into()] }),
            url: new.url(),
            ..Default::default()
        }).await.expect("endpoint updated");
        create_key(&mut server.admin, "after").await;
        let event = &new.wait_for(1).await[0];
        assert!(verify(&secret, event), "signed with the endpoint's secret: {event:?}");
        assert_eq!(body_of(event)["data"]["name"], "after");
        assert_eq!(old.received().len(), 1, "the old URL hears nothing more");
        server.stop().await;
    }

    async fn a_receiver_answering_500_is_retried_until_it_accepts(backend) {
        let receiver = Receiver::start().await;
        receiver.script(&[Reply::Status(500)]);
        let mut server = TestServer::start_with(backend, fast_webhooks).await;
        let (webhook_id, secret) = register(&mut server.admin, &receiver.url(), &["api_key.created"]).await;
        create_key(&mut server.admin, "retried").await;

        let received = receiver.wait_for(2).await;
        assert_eq!(received[0].id, received[1].id, "a retry carries the same webhook-id");
        assert!(received.iter().all(|r| verify(&secret, r)));
        let delivery = delivery_where(&mut server.admin, &webhook_id, &received[0].id, |d| {
            d.status == DeliveryStatus::Delivered as i32
        }).await;
        let codes: Vec<u32> = delivery.attempt_log.iter().map(|a| a.status_code).collect();
        assert_eq!(codes, [500, 200]);
        assert_eq!(delivery.attempt_log[0].error, "HTTP 500 Internal Server Error");
        // Delivered means done: no third request.
        assert_eq!(receiver.received().len(), 2);
        server.stop().await;
    }

    async fn a_timed_out_attempt_and_a_redirect_are_recorded_and_retried(backend) {
        // The attempt that times out and the redirect are both failed
        // attempts, recorded as such; the redirect is not followed (a
        // followed 307 would post to the receiver a fourth time).
        let receiver = Receiver::start().await;
        receiver.script(&[Reply::Hang, Reply::RedirectToSelf]);
        let mut server = TestServer::start_with(backend, fast_webhooks).await;
        let (webhook_id, _) = register(&mut server.admin, &receiver.url(), &["api_key.created"]).await;
        create_key(&mut server.admin, "patient").await;

        let received = receiver.wait_for(3).await;
        let delivery = delivery_where(&mut server.admin, &webhook_id, &received[0].id, |d| {
            d.status == DeliveryStatus::Delivered as i32
        }).await;
        let attempts: Vec<(u32, &str)> = delivery.attempt_log.iter()
            .map(|a| (a.status_code, a.error.as_str()))
            .collect();
        assert_eq!(attempts.len(), 3, "{attempts:?}");
        assert_eq!(attempts[0], (0, "operation timed out"));
        assert_eq!(attempts[1].0, 307);
        assert!(attempts[1].1.starts_with("HTTP 307"), "{attempts:?}");
        assert_eq!(attempts[2], (200, ""));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(receiver.received().len(), 3, "the redirect was not followed");
        server.stop().await;
    }

    async fn a_receiver_that_stays_down_makes_the_event_wait_with_growing_backoff(backend) {
        let receiver = Receiver::start().await;
        receiver.answer_otherwise(Reply::Status(503));
        let mut server = TestServer::start_with(backend, fast_webhooks).await;
        let (webhook_id, _) = register(&mut server.admin, &receiver.url(), &[]).await;
        create_key(&mut server.admin, "patient").await;

        let received = receiver.wait_for(5).await;
        let event_id = received[0].id.clone();
        let waiting = delivery_where(&mut server.admin, &webhook_id, &event_id, |d| d.attempt_log.len() >= 5).await;
        assert_eq!(waiting.status, DeliveryStatus::Pending as i32, "the event waits, not failed");
        assert!(waiting.delivered_at.is_none());
        assert!(waiting.next_attempt_at.is_some());
        // Attempt k+1 cannot come before the k-th backoff's lower bound,
        // base · 2^(k-1) / 2: the gaps must grow.
        let at = |i: usize| {
            let t = waiting.attempt_log[i].at.unwrap();
            Duration::from_secs(t.seconds as u64) + Duration::from_nanos(t.nanos as u64)
        };
        for k in 1..5usize {
            let gap = at(k) - at(k - 1);
            let floor = RETRY_BASE * (1 << (k - 1)) / 2;
            assert!(gap >= floor, "gap {k} was {gap:?}, below the backoff floor {floor:?}");
        }

        receiver.answer_otherwise(Reply::Status(204));
        delivery_where(&mut server.admin, &webhook_id, &event_id, |d| {
            d.status == DeliveryStatus::Delivered as i32
        }).await;
        server.stop().await;
    }

    async fn a_change_whose_transaction_rolls_back_emits_nothing(backend) {
        let receiver = Receiver::start().await;
        let mut server = TestServer::start_with(backend, fast_webhooks).await;
        let (webhook_id, _) = register(&mut server.admin, &receiver.url(), &["api_key.revoked", "api_key.updated", "webhook.test"]).await;
        let key = create_key(&mut server.admin, "kept").await.api_key.unwrap();
        // The revoke's outbox row fails to insert, after the key row and
        // its audit row were written in the same transaction.
        match backend {
            Backend::Sqlite => common::execute(&server.db,
                "CREATE TRIGGER refuse_revoked BEFORE INSERT ON webhook_deliveries \
                 WHEN NEW.event_type = 'api_key.revoked' BEGIN SELECT RAISE(ABORT, 'refused by test'); END").await,
            Backend::Postgres => {
                common::execute(&server.db,
                    "CREATE FUNCTION refuse_revoked() RETURNS trigger LANGUAGE plpgsql AS \
                     $$ BEGIN RAISE EXCEPTION 'refused by test'; END $$").await;
                common::execute(&server.db,
                    "CREATE TRIGGER refuse_revoked BEFORE INSERT ON webhook_deliveries FOR EACH ROW \
                     WHEN (NEW.event_type = 'api_key.revoked') EXECUTE FUNCTION refuse_revoked()").await;
            }
        }
        let revoked = server.admin.revoke_key(RevokeKeyRequest {
            owner_id: OWNER.into(), id: key.id.clone(), reason: "rolled back".into(),
        }).await;
        assert!(revoked.is_err(), "the revoke fails as a whole");
        let still = server.admin.get_key(GetKeyRequest { owner_id: OWNER.into(), id: key.id.clone() })
            .await.unwrap().into_inner();
        assert!(still.revoked_at.is_none(), "the change rolled back");
        let audit_rows = common::scalar_i64(&server.db,
            "SELECT COUNT(*) FROM audit_events WHERE key_id = $1 AND event = 'api_key.revoked'",
            uuid::Uuid::parse_str(&key.id).unwrap()).await;
        assert_eq!(audit_rows, 0);

        // A later event goes through: the receiver hears it and only it.
        let test = server.admin.send_test_webhook(SendTestWebhookRequest {
            owner_id: OWNER.into(), webhook_id: webhook_id.clone(),
        }).await.unwrap().into_inner();
        let received = receiver.wait_for(1).await;
        assert_eq!(received.len(), 1);
        assert_eq!(received[0].id, test.event_id);
        assert_eq!(body_of(&received[0])["type"], "webhook.test");
        let listed = deliveries(&mut server.admin, &webhook_id).await;
        assert_eq!(listed.len(), 1, "no delivery of the rolled-back revoke: {listed:?}");
        server.stop().await;
    }

    async fn a_key_near_its_expiry_sends_the_nearest_warning_once(backend) {
        let receiver = Receiver::start().await;
        let mut server = TestServer::start_with(backend, fast_webhooks).await;
        let (webhook_id, _) = register(&mut server.admin, &receiver.url(), &["api_key.expiring"]).await;
        let expires = chrono::Utc::now() + chrono::Duration::hours(12);
        let key = server.admin.create_key(CreateKeyRequest {
            owner_id: OWNER.into(),
            name: "short-lived".into(),
            expires_at: Some(prost_types::Timestamp { seconds: expires.timestamp(), nanos: 0 }),
            ..Default::default()
        }).await.unwrap().into_inner().api_key.unwrap();

        let received = receiver.wait_for(1).await;
        let body = body_of(&received[0]);
        assert_eq!(body["type"], "api_key.expiring");
        assert_eq!(body["data"]["key_id"], key.id);
        assert_eq!(body["data"]["warning_before"], "1day");
        // The 7-day warning was marked as had in the same transaction, so
        // it can never follow.
        let warnings = common::scalar_i64(&server.db,
            "SELECT COUNT(*) FROM key_expiry_warnings WHERE key_id = $1",
            uuid::Uuid::parse_str(&key.id).unwrap()).await;
        assert_eq!(warnings, 2);
        assert_eq!(deliveries(&mut server.admin, &webhook_id).await.len(), 1);
        server.stop().await;
    }

    async fn pruning_sends_api_key_expired_and_drops_old_finished_deliveries(backend) {
        let receiver = Receiver::start().await;
        let mut server = TestServer::start_with(backend, fast_webhooks).await;
        let (webhook_id, _) = register(&mut server.admin, &receiver.url(), &["api_key.created", "api_key.expired"]).await;
        let key = create_key(&mut server.admin, "old").await.api_key.unwrap();
        let created = receiver.wait_for(1).await;
        delivery_where(&mut server.admin, &webhook_id, &created[0].id, |d| {
            d.status == DeliveryStatus::Delivered as i32
        }).await;
        // The API refuses a past expiry, and the created event is to look
        // older than the retention: put both in place directly.
        let key_id = uuid::Uuid::parse_str(&key.id).unwrap();
        let event_id = uuid::Uuid::parse_str(&created[0].id).unwrap();
        let sqlite = backend == Backend::Sqlite;
        let past = if sqlite { "'2020-01-01T00:00:00+00:00'" } else { "'2020-01-01T00:00:00Z'" };
        let literal = |id: uuid::Uuid| if sqlite { format!("X'{}'", id.simple()) } else { format!("'{id}'") };
        common::execute(&server.db, &format!("UPDATE api_keys SET expires_at = {past} WHERE id = {}", literal(key_id))).await;
        common::execute(&server.db, &format!("UPDATE webhook_deliveries SET created_at = {past} WHERE event_id = {}", literal(event_id))).await;

        let stdout = common::prune_cli(&server.db.url);
        assert!(stdout.contains("1 finished webhook deliveries deleted"), "{stdout}");

        let received = receiver.wait_for(2).await;
        let expired = body_of(&received[1]);
        assert_eq!(expired["type"], "api_key.expired");
        assert_eq!(expired["data"]["key_id"], key.id);
        let listed: Vec<String> = deliveries(&mut server.admin, &webhook_id).await.into_iter().map(|d| d.event_type).collect();
        assert_eq!(listed, ["api_key.expired"], "the old delivered event is gone, the new one is kept");
        server.stop().await;
    }

    async fn private_targets_and_plain_http_are_refused_unless_allowed(backend) {
        let mut server = TestServer::start(backend).await;
        for url in [
            "https://127.0.0.1/hook",
            "https://localhost/hook",
            "https://10.0.0.8/hook",
            "https://192.168.1.1/hook",
            "https://169.254.169.254/latest/meta-data/",
            "https://[::1]/hook",
            "https://[fe80::1]/hook",
            "https://[::ffff:169.254.169.254]/hook",
            "http://example.com/hook",
            "ftp://example.com/hook",
            "https://user:password@example.com/hook",
        ] {
            let refused = server.admin.create_webhook(CreateWebhookRequest {
                owner_id: OWNER.into(), url: url.into(), events: vec![], enabled: None,
            }).await.expect_err(url);
            assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{url}: {refused:?}");
        }
        let unknown = server.admin.create_webhook(CreateWebhookRequest {
            owner_id: OWNER.into(), url: "https://example.com/hook".into(),
            events: vec!["api_key.exploded".into()], enabled: None,
        }).await.unwrap_err();
        assert_eq!(unknown.code(), tonic::Code::InvalidArgument);
        server.stop().await;
    }

    async fn an_endpoint_registered_while_allowed_is_refused_at_delivery_once_no_longer_allowed(backend) {
        // Registered on a server that allows plain HTTP to loopback, with a
        // token in its query as some receivers want.
        let receiver = Receiver::start().await;
        let mut server = TestServer::start_with(backend, fast_webhooks).await;
        let url = format!("{}?token=tok-in-the-url-8fd1", receiver.url());
        let (webhook_id, _) = register(&mut server.admin, &url, &[]).await;
        server.stop().await;

        // The same database under stricter servers: each rule is checked
        // again at delivery, before any connection.
        let stricter: [(Tighten, &str); 2] = [
            (|s| s.webhook_allow_http = Some(false), "url must use https"),
            (|s| s.webhook_allow_private = Some(false), "url points at 127.0.0.1"),
        ];
        let mut db = server.db;
        for (tighten, refusal) in stricter {
            let mut server = TestServer::start_on(db, |s| {
                fast_webhooks(s);
                tighten(s);
            })
            .await;
            let error = first_test_attempt_refused(&mut server.admin, &webhook_id).await;
            assert!(error.starts_with(refusal), "{error}");
            assert!(!error.contains("tok-in-the-url"), "the URL's token is not recorded: {error}");
            server.stop().await;
            db = server.db;
        }
        assert!(receiver.received().is_empty(), "nothing was sent: {:?}", receiver.received());
    }

    async fn a_round_whose_outcomes_cannot_be_recorded_is_not_repeated_before_the_lease(backend) {
        let receiver = Receiver::start().await;
        let mut server = TestServer::start_with(backend, fast_webhooks).await;
        let (webhook_id, _) = register(&mut server.admin, &receiver.url(), &["api_key.created"]).await;
        // The database refuses to record a delivery, as a full disk would.
        let refuse: &[&str] = match backend {
            Backend::Sqlite => &["CREATE TRIGGER refuse_outcomes BEFORE UPDATE OF status \
                ON webhook_deliveries WHEN NEW.status = 'delivered' \
                BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END"],
            Backend::Postgres => &[
                "CREATE FUNCTION refuse_outcomes() RETURNS trigger LANGUAGE plpgsql AS \
                 $$ BEGIN RAISE EXCEPTION 'could not extend file: No space left on device'; END $$",
                "CREATE TRIGGER refuse_outcomes BEFORE UPDATE OF status ON webhook_deliveries \
                 FOR EACH ROW WHEN (NEW.status = 'delivered') EXECUTE FUNCTION refuse_outcomes()",
            ],
        };
        run_sql(&server.db, refuse).await;
        create_key(&mut server.admin, "unrecorded").await;
        let first = receiver.wait_for(1).await;
        // Polls every 50 ms: were the round run again at once, the receiver
        // would hear the event again and again (lease 2 s).
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        assert_eq!(receiver.received().len(), 1, "sent again before the lease");

        let allow: &[&str] = match backend {
            Backend::Sqlite => &["DROP TRIGGER refuse_outcomes"],
            Backend::Postgres => &[
                "DROP TRIGGER refuse_outcomes ON webhook_deliveries",
                "DROP FUNCTION refuse_outcomes()",
            ],
        };
        run_sql(&server.db, allow).await;
        let received = receiver.wait_for(2).await;
        assert_eq!(received[1].id, first[0].id, "the same event, attempted again");
        let delivered = delivery_where(&mut server.admin, &webhook_id, &first[0].id, |d| {
            d.status == DeliveryStatus::Delivered as i32
        })
        .await;
        // The unrecorded attempt left no record; on Postgres its claim
        // counted it.
        assert_eq!(delivered.attempt_log.len(), 1, "{delivered:?}");
        let counted = if backend == Backend::Postgres { 2 } else { 1 };
        assert_eq!(delivered.attempts, counted, "{delivered:?}");
        server.stop().await;
    }

    async fn a_round_sends_each_endpoint_a_few_requests_at_a_time(backend) {
        const EVENTS: usize = 40;
        let receivers = [Receiver::start().await, Receiver::start().await];
        for receiver in &receivers {
            // Long enough that a wave's requests are all open at once, even
            // on a loaded machine.
            receiver.answer_otherwise(Reply::After(Duration::from_secs(1)));
        }
        let urls = receivers.iter().map(Receiver::url).collect::<Vec<_>>();
        let (db, _) = deliveries_due_at_once(backend, &urls, EVENTS).await;
        // A lease that leaves room for rounds of timeouts one after another:
        // the floor applies (in_flight_per_endpoint).
        let mut server = TestServer::start_on(db, |s| {
            fast_webhooks(s);
            s.webhook_timeout = Some("5s".into());
            s.webhook_lease = Some("120s".into());
        })
        .await;

        let mut all_spans = Vec::new();
        for receiver in &receivers {
            let received = receiver.wait_for(EVENTS).await;
            let ids: HashSet<_> = received.iter().map(|r| r.id.clone()).collect();
            assert_eq!(ids.len(), EVENTS, "each event to each endpoint");
            assert_eq!(received.len(), EVENTS, "and once");
            let answered = eventually(Duration::from_secs(10), async || {
                receiver.spans().len() >= EVENTS
            })
            .await;
            assert!(answered, "{} of {EVENTS} answered", receiver.spans().len());
            let spans = receiver.spans();
            assert_eq!(
                most_at_once(&spans),
                IN_FLIGHT_PER_ENDPOINT,
                "at most this many at once, and that many"
            );
            all_spans.extend(spans);
        }
        // The limit is each endpoint's: both were sent to at once.
        assert_eq!(most_at_once(&all_spans), 2 * IN_FLIGHT_PER_ENDPOINT);
        server.stop().await;
    }

    async fn an_endpoint_that_never_answers_hears_one_wave_and_the_rest_is_put_back(backend) {
        const EVENTS: usize = 40;
        let silent = Receiver::start().await;
        silent.answer_otherwise(Reply::Hang);
        let healthy = Receiver::start().await;
        let (db, ids) = deliveries_due_at_once(backend, &[silent.url(), healthy.url()], EVENTS).await;
        let [silent_id, healthy_id] = <[String; 2]>::try_from(ids).unwrap();
        let round_began = std::time::SystemTime::now();
        let mut server = TestServer::start_on(db, |s| {
            fast_webhooks(s);
            // A lease that leaves the floor of 16 at once (1 s timeouts).
            s.webhook_lease = Some("120s".into());
            // Nothing is tried again while the test looks.
            s.webhook_retry_base = Some("10m".into());
        })
        .await;

        healthy.wait_for(EVENTS).await;
        let healthy_done = all_delivered(&mut server.admin, &healthy_id, EVENTS).await;
        assert!(healthy_done, "the endpoint that answers had every event delivered");
        // The round that held both endpoints' deliveries is recorded: the
        // silent endpoint's first wave timed out, and the rest of its
        // deliveries were put back unsent (before this, two more waves
        // would have been sent, each waiting a timeout).
        let settled = eventually(Duration::from_secs(30), async || {
            deliveries(&mut server.admin, &silent_id).await.iter()
                .filter(|d| d.attempts == 1)
                .count() == IN_FLIGHT_PER_ENDPOINT
        })
        .await;
        assert!(settled, "one wave of attempts to the silent endpoint recorded");
        let silent_deliveries = deliveries(&mut server.admin, &silent_id).await;
        assert_eq!(silent_deliveries.len(), EVENTS);
        let (tried, unsent): (Vec<_>, Vec<_>) =
            silent_deliveries.iter().partition(|d| d.attempts == 1);
        assert_eq!(tried.len(), IN_FLIGHT_PER_ENDPOINT);
        for delivery in &tried {
            assert_eq!(delivery.status, DeliveryStatus::Pending as i32, "{delivery:?}");
            assert_eq!(delivery.attempt_log.len(), 1, "{delivery:?}");
            // The attempt's timeout, or the connector's (the same 1 s) on a
            // slow machine: a timeout either way.
            let error = &delivery.attempt_log[0].error;
            assert!(error.contains("timed out"), "{delivery:?}");
        }
        // Half of the 10 min first retry is kept, at least, and all of it
        // at most: due 5 to 10 min after the round.
        let not_before = round_began + Duration::from_secs(5 * 60);
        let not_after = std::time::SystemTime::now() + Duration::from_secs(10 * 60);
        for delivery in &unsent {
            assert_eq!(delivery.attempts, 0, "no attempt counted: {delivery:?}");
            assert!(delivery.attempt_log.is_empty(), "none recorded: {delivery:?}");
            assert_eq!(delivery.status, DeliveryStatus::Pending as i32);
            let due = delivery.next_attempt_at.as_ref().expect("due again");
            let due = std::time::UNIX_EPOCH
                + Duration::from_secs(due.seconds as u64)
                + Duration::from_nanos(due.nanos as u64);
            assert!(
                due >= not_before && due <= not_after,
                "put back for a first retry's delay: {delivery:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            silent.received().len(),
            IN_FLIGHT_PER_ENDPOINT,
            "the silent endpoint heard one wave, not the round"
        );
        server.stop().await;
    }

    async fn a_silent_endpoints_backlog_waits_and_holds_no_other_endpoint_back(backend) {
        // More deliveries due to a silent endpoint than two rounds take
        // (128 each), all older than a healthy endpoint's. The first round
        // takes 128 of them, hears one wave time out, and the rest of the
        // endpoint's due deliveries wait as its unsent ones do: the next
        // round is the healthy endpoint's. (Before, each of the next rounds
        // took 128 more of the backlog and waited a timeout on them.)
        const BACKLOG: usize = 300;
        const FRESH: usize = 10;
        let silent = Receiver::start().await;
        silent.answer_otherwise(Reply::Hang);
        let healthy = Receiver::start().await;
        let mut server = TestServer::start_with(backend, |s| {
            fast_webhooks(s);
            s.webhooks_enabled = Some(false);
            s.max_keys_per_owner = Some(1_000);
        })
        .await;
        let silent_id = register(&mut server.admin, &silent.url(), &["api_key.created"]).await.0;
        for i in 0..BACKLOG {
            create_key(&mut server.admin, &format!("old {i}")).await;
        }
        let healthy_id = register(&mut server.admin, &healthy.url(), &["api_key.created"]).await.0;
        for i in 0..FRESH {
            create_key(&mut server.admin, &format!("new {i}")).await;
        }
        server.stop().await;
        let mut server = TestServer::start_on(server.db, |s| {
            fast_webhooks(s);
            s.webhook_lease = Some("120s".into());
            s.webhook_retry_base = Some("10m".into());
        })
        .await;

        healthy.wait_for(FRESH).await;
        assert_eq!(
            silent.received().len(),
            IN_FLIGHT_PER_ENDPOINT,
            "the healthy endpoint's events came in the round after the silent one's first wave"
        );
        let healthy_done = all_delivered(&mut server.admin, &healthy_id, FRESH).await;
        assert!(healthy_done, "the healthy endpoint had every event delivered");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(silent.received().len(), IN_FLIGHT_PER_ENDPOINT, "one wave, not one a round");
        // The endpoint is paused, not its deliveries rescheduled: its page
        // of the newest is unattempted and due as it was.
        let page = deliveries(&mut server.admin, &silent_id).await;
        for delivery in &page {
            assert_eq!(delivery.attempts, 0, "{delivery:?}");
            assert_eq!(delivery.status, DeliveryStatus::Pending as i32, "{delivery:?}");
            assert_eq!(delivery.next_attempt_at, delivery.created_at, "due as created: {delivery:?}");
        }
        // What an owner does to a paused endpoint lifts the pause: the
        // backlog is due again, and the next round sends the endpoint its
        // next wave (and pauses it again once that times out).
        // Each lift comes after the round that paused the endpoint again
        // is recorded: one made while a round still waits on the endpoint
        // is undone when that round pauses it.
        let endpoint = uuid::Uuid::parse_str(&silent_id).unwrap();
        let recorded = async |waves: usize| {
            // The latest attempt of each delivery is in its row, the
            // earlier ones in the log.
            let attempts = "SELECT (SELECT COUNT(*) FROM webhook_attempts WHERE endpoint_id = $1) \
                 + (SELECT COUNT(*) FROM webhook_deliveries WHERE endpoint_id = $1 \
                 AND last_attempt IS NOT NULL)";
            let done = eventually(Duration::from_secs(30), async || {
                common::scalar_i64(&server.db, attempts, endpoint).await == (waves * IN_FLIGHT_PER_ENDPOINT) as i64
            }).await;
            assert!(done, "wave {waves} recorded");
        };
        recorded(1).await;
        // The owner sees the pause: the silent endpoint paused for a first
        // retry's delay (between half and all of the 10 minutes), the
        // healthy one not.
        let listed = server.admin.list_webhooks(keygate::proto::ListWebhooksRequest {
            owner_id: OWNER.into(),
        }).await.expect("endpoints listed").into_inner().webhooks;
        let paused_until = |id: &str| listed.iter().find(|hook| hook.id == id).unwrap().paused_until;
        let until = paused_until(&silent_id).expect("the silent endpoint is shown paused");
        let ahead = until.seconds - chrono::Utc::now().timestamp();
        assert!((4 * 60..=10 * 60).contains(&ahead), "paused for {ahead} s");
        assert_eq!(paused_until(&healthy_id), None, "the healthy endpoint is not paused");
        server.admin.send_test_webhook(SendTestWebhookRequest {
            owner_id: OWNER.into(),
            webhook_id: silent_id.clone(),
        }).await.expect("test event sent");
        silent.wait_for(2 * IN_FLIGHT_PER_ENDPOINT).await;
        recorded(2).await;
        let updated = server.admin.update_webhook(keygate::proto::UpdateWebhookRequest {
            owner_id: OWNER.into(),
            id: silent_id.clone(),
            update_mask: Some(prost_types::FieldMask { paths: vec!["enabled".into()] }),
            enabled: true,
            ..Default::default()
        }).await.expect("endpoint updated").into_inner();
        assert_eq!(updated.paused_until, None, "the update lifted the pause");
        silent.wait_for(3 * IN_FLIGHT_PER_ENDPOINT).await;
        recorded(3).await;
        server.admin.redeliver_webhook(RedeliverWebhookRequest {
            owner_id: OWNER.into(),
            webhook_id: silent_id.clone(),
            event_id: page[0].event_id.clone(),
        }).await.expect("redelivery asked for");
        // By now three rounds have taken all 311 (the test event too) and
        // put back what they did not send: the redelivered event alone is
        // due.
        let heard = silent.wait_for(3 * IN_FLIGHT_PER_ENDPOINT + 1).await;
        assert_eq!(heard.last().unwrap().id, page[0].event_id, "the redelivery went out");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(silent.received().len(), 3 * IN_FLIGHT_PER_ENDPOINT + 1, "no more than each lift let go");
        server.stop().await;
    }

    async fn a_due_head_held_by_paused_and_disabled_endpoints_holds_no_other_endpoint_back(backend) {
        // Three endpoints hear every key event; one is then disabled and one
        // paused (as a timeout pauses it), so that the outbox's due head,
        // the first four rounds' worth of due deliveries in time order
        // (4 x 128), soon holds only theirs. The healthy endpoint's
        // deliveries interleave with them: the first rounds find theirs in
        // the head, the later ones past it, endpoint by endpoint
        // (docs/behaviour.md, "Delivery"). Every one arrives; the blocked
        // endpoints hear nothing.
        const EVENTS: usize = 300;
        let healthy = Receiver::start().await;
        let disabled = Receiver::start().await;
        let paused = Receiver::start().await;
        let mut server = TestServer::start_with(backend, |s| {
            fast_webhooks(s);
            s.webhooks_enabled = Some(false);
            s.max_keys_per_owner = Some(1_000);
        })
        .await;
        let healthy_id = register(&mut server.admin, &healthy.url(), &["api_key.created"]).await.0;
        let disabled_id = register(&mut server.admin, &disabled.url(), &["api_key.created"]).await.0;
        register(&mut server.admin, &paused.url(), &["api_key.created"]).await;
        for i in 0..EVENTS {
            create_key(&mut server.admin, &format!("key {i}")).await;
        }
        server.admin.update_webhook(keygate::proto::UpdateWebhookRequest {
            owner_id: OWNER.into(),
            id: disabled_id.clone(),
            update_mask: Some(prost_types::FieldMask { paths: vec!["enabled".into()] }),
            enabled: false,
            ..Default::default()
        }).await.expect("endpoint disabled");
        server.stop().await;
        let pause = format!(
            "UPDATE webhook_endpoints SET paused_until = '9999-01-01T00:00:00+00:00' WHERE url = '{}'",
            paused.url()
        );
        run_sql(&server.db, &[&pause]).await;
        let mut server = TestServer::start_on(server.db, fast_webhooks).await;

        let heard = healthy.wait_for(EVENTS).await;
        let ids: HashSet<_> = heard.iter().map(|r| r.id.clone()).collect();
        assert_eq!(ids.len(), EVENTS, "each event once");
        let endpoint = uuid::Uuid::parse_str(&healthy_id).unwrap();
        let delivered = eventually(Duration::from_secs(30), async || {
            common::scalar_i64(
                &server.db,
                "SELECT COUNT(*) FROM webhook_deliveries WHERE endpoint_id = $1 AND status = 'delivered'",
                endpoint,
            )
            .await
                == EVENTS as i64
        })
        .await;
        assert!(delivered, "every delivery to the healthy endpoint recorded as delivered");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(disabled.received().is_empty(), "the disabled endpoint heard nothing");
        assert!(paused.received().is_empty(), "the paused endpoint heard nothing");
        let blocked = eventually(Duration::from_secs(5), async || {
            common::scalar_i64(
                &server.db,
                "SELECT COUNT(*) FROM webhook_deliveries WHERE endpoint_id <> $1 \
                 AND status = 'pending' AND attempts = 0",
                endpoint,
            )
            .await
                == 2 * EVENTS as i64
        })
        .await;
        assert!(blocked, "the blocked endpoints' deliveries wait, unattempted");
        server.stop().await;
    }

    async fn an_endpoint_hears_its_oldest_event_first_whatever_came_due_first(backend) {
        // One endpoint, more due deliveries than go to it at once, and the
        // one due last given the oldest retry window's start (as a
        // delivery put back by an earlier round is: due late, owed
        // longest). It goes in the first wave; the endpoint never answers,
        // so the first wave is all it hears. SQLite reads due rows in due
        // order, so without the dispatcher's sort this fails there; a
        // Postgres claim's rows come back in no set order, so there it may
        // pass by chance.
        const EVENTS: usize = IN_FLIGHT_PER_ENDPOINT + 8;
        let silent = Receiver::start().await;
        silent.answer_otherwise(Reply::Hang);
        let (db, _) = deliveries_due_at_once(backend, &[silent.url()], EVENTS).await;
        let sqlite = backend == Backend::Sqlite;
        let id_bytes = if sqlite { "event_id" } else { "uuid_send(event_id)" };
        let due_last = common::scalar_bytes(&db, &format!(
            "SELECT {id_bytes} FROM webhook_deliveries WHERE $1 = $1 ORDER BY next_attempt_at DESC LIMIT 1"
        ), "").await;
        let due_last = uuid::Uuid::from_slice(&due_last).unwrap();
        let (literal, long_ago) = if sqlite {
            (format!("X'{}'", due_last.simple()), "'2020-01-01T00:00:00+00:00'")
        } else {
            (format!("'{due_last}'"), "'2020-01-01T00:00:00Z'")
        };
        common::execute(&db, &format!(
            "UPDATE webhook_deliveries SET retry_from = {long_ago} WHERE event_id = {literal}"
        )).await;
        let mut server = TestServer::start_on(db, |s| {
            fast_webhooks(s);
            s.webhook_lease = Some("120s".into());
            s.webhook_retry_base = Some("10m".into());
        })
        .await;
        let heard = silent.wait_for(IN_FLIGHT_PER_ENDPOINT).await;
        assert!(
            heard.iter().any(|r| r.id == due_last.to_string()),
            "the event owed longest went in the first wave"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(silent.received().len(), IN_FLIGHT_PER_ENDPOINT, "one wave, not the round");
        server.stop().await;
    }

    async fn an_endpoint_that_refuses_connections_is_sent_the_whole_round(backend) {
        // A refusal comes at once: it holds no round, so nothing is put
        // back (only a timeout puts the rest of a round back).
        const EVENTS: usize = 40;
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook", closed.local_addr().unwrap());
        drop(closed);
        let (db, ids) = deliveries_due_at_once(backend, &[url], EVENTS).await;
        let webhook_id = ids[0].clone();
        let mut server = TestServer::start_on(db, |s| {
            fast_webhooks(s);
            s.webhook_lease = Some("120s".into());
            s.webhook_retry_base = Some("10m".into());
        })
        .await;
        // Tried means recorded: on Postgres the claim counts the attempt
        // (`attempts`) before the attempt is made.
        let all_tried = eventually(Duration::from_secs(30), async || {
            deliveries(&mut server.admin, &webhook_id).await.iter()
                .filter(|d| d.attempt_log.len() == 1)
                .count() == EVENTS
        })
        .await;
        assert!(all_tried, "{:?}", deliveries(&mut server.admin, &webhook_id).await);
        for delivery in deliveries(&mut server.admin, &webhook_id).await {
            assert_eq!(delivery.attempts, 1, "{delivery:?}");
            assert_eq!(delivery.attempt_log[0].status_code, 0, "no answer: {delivery:?}");
            assert_ne!(delivery.attempt_log[0].error, "operation timed out");
        }
        server.stop().await;
    }

    async fn an_https_endpoint_is_called_over_tls_and_an_untrusted_certificate_refused(backend) {
        let tls = SelfSignedTlsServer::start();
        let mut server = TestServer::start_with(backend, fast_webhooks).await;
        let url = format!("https://127.0.0.1:{}/hook", tls.port);
        let (webhook_id, _) = register(&mut server.admin, &url, &["webhook.test"]).await;
        let error = first_test_attempt_refused(&mut server.admin, &webhook_id).await;
        // The handshake was made, and a certificate no webpki root signed
        // was refused.
        assert!(error.contains("invalid peer certificate"), "{error:?}");
        server.stop().await;
    }

    async fn an_https_endpoint_signed_by_a_ca_in_the_ca_file_is_delivered_to(backend) {
        // A receiver behind a private CA: trusted once KEYGATE_WEBHOOK_CA_FILE
        // names the CA, refused without it.
        let tls = PrivateCaTlsReceiver::start();
        let url = format!("https://127.0.0.1:{}/hook", tls.port);
        let mut server = TestServer::start_with(backend, |s| {
            fast_webhooks(s);
            s.webhook_ca_file = Some(tls.ca_file());
        })
        .await;
        let (webhook_id, _) = register(&mut server.admin, &url, &["api_key.created"]).await;
        create_key(&mut server.admin, "over tls").await;
        assert!(all_delivered(&mut server.admin, &webhook_id, 1).await, "delivered over TLS");
        assert_eq!(tls.posts(), 1, "the receiver answered one POST");
        server.stop().await;

        let mut without = TestServer::start_on(server.db, fast_webhooks).await;
        let error = first_test_attempt_refused(&mut without.admin, &webhook_id).await;
        assert!(error.contains("invalid peer certificate"), "{error:?}");
        without.stop().await;
    }

    async fn a_name_that_resolves_to_loopback_is_refused_at_delivery(backend) {
        let receiver = Receiver::start().await;
        let db = TestDb::new(backend).await;
        // Registered while private targets were allowed…
        let mut open = TestServer::start_on(db, fast_webhooks).await;
        let url = format!("http://localhost:{}/hook", receiver.addr.port());
        let (webhook_id, _) = register(&mut open.admin, &url, &["webhook.test"]).await;
        open.stop().await;
        // …then delivered by a server that refuses them.
        let mut strict = TestServer::start_on(open.db, |s| {
            fast_webhooks(s);
            s.webhook_allow_private = Some(false);
        }).await;
        let error = first_test_attempt_refused(&mut strict.admin, &webhook_id).await;
        assert!(error.contains("resolves to no address that may be called"), "{error:?}");
        assert!(receiver.received().is_empty(), "nothing reached the loopback receiver");
        strict.stop().await;
    }

    async fn a_redelivery_asked_for_during_an_attempt_wins_and_no_attempt_number_is_reused(backend) {
        use keygate::{domain::webhook::DeliveryStatus, store::AttemptOutcome};
        use chrono::TimeDelta;

        let OneDelivery { db: _db, store, hook, event_id, now } = OneDelivery::queued(backend).await;
        let seconds = |n| now + TimeDelta::seconds(n);
        let delivered = |at| AttemptOutcome {
            at,
            status_code: Some(200),
            latency_ms: 3,
            error: None,
            status: DeliveryStatus::Delivered,
            next_attempt_at: at,
        };

        let first_claim = uuid::Uuid::now_v7();
        let first = store.claim_deliveries(first_claim, now, seconds(60), 32).await.unwrap();
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].attempts, 1);
        // The owner asks for a redelivery while that attempt is under way.
        store.redeliver(event_id, hook.id, seconds(1)).await.unwrap();
        store.record_attempts(first_claim, &[(first[0].clone(), delivered(seconds(2)))], &[], &[]).await.unwrap();
        let after = store.get_delivery(event_id, hook.id).await.unwrap();
        assert_eq!(after.status, DeliveryStatus::Pending, "the redelivery wins: {after:?}");
        assert_eq!(after.next_attempt_at, seconds(1));
        assert_eq!(after.attempt_log.len(), 1, "the attempt is recorded all the same");

        let second_claim = uuid::Uuid::now_v7();
        let second = store.claim_deliveries(second_claim, seconds(3), seconds(63), 32).await.unwrap();
        assert_eq!(second.len(), 1);
        assert_eq!(second[0].attempts, 2, "attempt 1's number is spent");
        store.record_attempts(second_claim, &[(second[0].clone(), delivered(seconds(4)))], &[], &[]).await.unwrap();
        let done = store.get_delivery(event_id, hook.id).await.unwrap();
        assert_eq!(done.status, DeliveryStatus::Delivered);
        assert_eq!(done.attempts, 2);
        let numbers: Vec<u32> = done.attempt_log.iter().map(|a| a.attempt).collect();
        assert_eq!(numbers, [1, 2]);
        store.close().await;
    }

    async fn a_round_of_first_attempts_retries_and_put_backs_records_each_on_its_own_delivery(backend) {
        // One round holding all a round can: a retry delivered, a first
        // attempt delivered, a second endpoint's retry put back unsent and
        // that endpoint paused (SQLite records this round in a
        // transaction, moving the retry's first attempt to the log).
        use keygate::{
            domain::webhook::{DeliveryStatus, Webhook},
            store::{AttemptOutcome, EndpointPause, NewWebhook},
        };
        use chrono::TimeDelta;

        let OneDelivery { db: _db, store, hook: a, event_id: a1, now } = OneDelivery::queued(backend).await;
        let seconds = |n| now + TimeDelta::seconds(n);
        let b = store.insert_webhook(&NewWebhook {
            webhook: Webhook { id: uuid::Uuid::now_v7(), url: "https://other.example/in".into(), ..a.clone() },
            sealed_secret: vec![8; 44],
        }, 10).await.unwrap();
        let (a2, b1, b2) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
        store.enqueue_for_endpoint(a.id, a2, "webhook.test", "{}", now).await.unwrap();
        store.enqueue_for_endpoint(b.id, b1, "webhook.test", "{}", now).await.unwrap();
        let answered = |at, code: u16| AttemptOutcome {
            at,
            status_code: Some(code),
            latency_ms: u64::from(code),
            error: (code >= 300).then(|| format!("HTTP {code}")),
            status: if code < 300 { DeliveryStatus::Delivered } else { DeliveryStatus::Pending },
            next_attempt_at: if code < 300 { at } else { at + TimeDelta::seconds(1) },
        };
        let claimed = |round: &[keygate::store::ClaimedDelivery], id| {
            round.iter().find(|c| c.event_id == id).unwrap_or_else(|| panic!("{id} claimed")).clone()
        };

        let claim = uuid::Uuid::now_v7();
        let first = store.claim_deliveries(claim, now, seconds(60), 32).await.unwrap();
        assert_eq!(first.len(), 3);
        store.record_attempts(claim, &[
            (claimed(&first, a1), answered(seconds(1), 500)),
            (claimed(&first, a2), answered(seconds(1), 200)),
            (claimed(&first, b1), answered(seconds(1), 502)),
        ], &[], &[]).await.unwrap();
        store.enqueue_for_endpoint(b.id, b2, "webhook.test", "{}", seconds(2)).await.unwrap();

        let claim = uuid::Uuid::now_v7();
        let second = store.claim_deliveries(claim, seconds(3), seconds(63), 32).await.unwrap();
        assert_eq!(second.len(), 3, "a1 and b1 retried, b2 new");
        let put_back_due = seconds(30);
        store.record_attempts(claim, &[
            (claimed(&second, a1), answered(seconds(4), 200)),
            (claimed(&second, b2), answered(seconds(4), 204)),
        ], &[(claimed(&second, b1), put_back_due)], &[EndpointPause {
            endpoint_id: b.id,
            until: seconds(30),
        }]).await.unwrap();

        let codes = |d: &keygate::domain::webhook::Delivery| -> Vec<(u32, Option<u16>)> {
            d.attempt_log.iter().map(|a| (a.attempt, a.status_code)).collect()
        };
        let get = async |event, hook: &Webhook| store.get_delivery(event, hook.id).await.unwrap();
        let d = get(a1, &a).await;
        assert_eq!((d.status, d.attempts, codes(&d)), (DeliveryStatus::Delivered, 2, vec![(1, Some(500)), (2, Some(200))]));
        let d = get(a2, &a).await;
        assert_eq!((d.status, d.attempts, codes(&d)), (DeliveryStatus::Delivered, 1, vec![(1, Some(200))]));
        let d = get(b2, &b).await;
        assert_eq!((d.status, d.attempts, codes(&d)), (DeliveryStatus::Delivered, 1, vec![(1, Some(204))]));
        let d = get(b1, &b).await;
        assert_eq!((d.status, d.attempts, codes(&d)), (DeliveryStatus::Pending, 1, vec![(1, Some(502))]), "put back, not attempted");
        assert_eq!(d.next_attempt_at, put_back_due);
        assert_eq!(store.get_webhook(b.id).await.unwrap().paused_until, Some(seconds(30)));
        assert_eq!(store.get_webhook(a.id).await.unwrap().paused_until, None);
        store.close().await;
    }

    async fn a_round_larger_than_one_recording_statement_records_every_attempt(backend) {
        // More deliveries than one statement's rows (256): recorded in
        // chunks, in one transaction, each attempt once.
        use keygate::{domain::webhook::DeliveryStatus, store::AttemptOutcome};
        use chrono::TimeDelta;

        const ROUND: usize = 300;
        let OneDelivery { db: _db, store, hook, event_id: _, now } = OneDelivery::queued(backend).await;
        for _ in 1..ROUND {
            store.enqueue_for_endpoint(hook.id, uuid::Uuid::now_v7(), "webhook.test", "{}", now).await.unwrap();
        }
        let at = now + TimeDelta::seconds(1);
        let claim = uuid::Uuid::now_v7();
        let round = store.claim_deliveries(claim, now, now + TimeDelta::seconds(60), ROUND as u32).await.unwrap();
        assert_eq!(round.len(), ROUND);
        let attempts: Vec<_> = round.into_iter().map(|claimed| (claimed, AttemptOutcome {
            at,
            status_code: Some(200),
            latency_ms: 2,
            error: None,
            status: DeliveryStatus::Delivered,
            next_attempt_at: at,
        })).collect();
        store.record_attempts(claim, &attempts, &[], &[]).await.unwrap();
        let listed = store.list_deliveries(hook.id, None, ROUND as u32).await.unwrap();
        assert_eq!(listed.len(), ROUND);
        for delivery in &listed {
            assert_eq!(delivery.status, DeliveryStatus::Delivered, "{delivery:?}");
            let log: Vec<_> = delivery.attempt_log.iter().map(|a| (a.attempt, a.status_code, a.at)).collect();
            assert_eq!(log, [(1, Some(200), at)], "{delivery:?}");
        }
        store.close().await;
    }

    async fn every_attempt_is_listed_once_in_order_across_the_upgrade_retries_and_a_redelivery(backend) {
        // SQLite keeps a delivery's latest attempt in its row and moves it
        // to the log when the next one is recorded; rows from before that
        // (migration 0008) hold none, all of theirs in the log. Postgres
        // logs every attempt. Either way the listing is every attempt,
        // once, in order: through an attempt on such a row, a retry, a
        // retry whose outcome a redelivery overtakes, and the last one.
        use keygate::{domain::webhook::{Attempt, DeliveryStatus}, store::AttemptOutcome};
        use chrono::TimeDelta;

        let OneDelivery { db, store, hook, event_id, now } = OneDelivery::queued(backend).await;
        let seconds = |n| now + TimeDelta::seconds(n);
        let answered = |at, code: u16, latency_ms| AttemptOutcome {
            at,
            status_code: Some(code),
            latency_ms,
            error: (code >= 300).then(|| format!("HTTP {code}")),
            status: if code < 300 { DeliveryStatus::Delivered } else { DeliveryStatus::Pending },
            next_attempt_at: if code < 300 { at } else { at + TimeDelta::seconds(1) },
        };
        // Claims what is due at `at` (one delivery), records `outcome` for it.
        let attempt = async |at, outcome: AttemptOutcome, redelivered_meanwhile: bool| {
            let claim = uuid::Uuid::now_v7();
            let claimed = store.claim_deliveries(claim, at, at + TimeDelta::seconds(60), 32).await.unwrap();
            assert_eq!(claimed.len(), 1, "due at {at}");
            if redelivered_meanwhile {
                store.redeliver(event_id, hook.id, at).await.unwrap();
            }
            store.record_attempts(claim, &[(claimed[0].clone(), outcome)], &[], &[]).await.unwrap();
            claimed[0].attempts
        };
        let listed = |log: &[Attempt]| -> Vec<(u32, Option<u16>, u64, Option<String>)> {
            log.iter().map(|a| (a.attempt, a.status_code, a.latency_ms, a.error.clone())).collect()
        };
        let failed = |n, code: u16, ms| (n, Some(code), ms, Some(format!("HTTP {code}")));

        assert_eq!(attempt(now, answered(seconds(1), 500, 4), false).await, 1);
        // As a row from before the upgrade: its attempt in the log alone.
        run_sql(&db, &[
            "INSERT INTO webhook_attempts (event_id, endpoint_id, attempt, at, status_code, \
             latency_ms, error) SELECT event_id, endpoint_id, last_attempt, last_attempt_at, \
             last_status_code, last_latency_ms, last_error FROM webhook_deliveries \
             WHERE last_attempt IS NOT NULL",
            "UPDATE webhook_deliveries SET last_attempt = NULL, last_attempt_at = NULL, \
             last_latency_ms = NULL",
        ]).await;
        let logged = store.get_delivery(event_id, hook.id).await.unwrap();
        assert_eq!(listed(&logged.attempt_log), [failed(1, 500, 4)]);

        assert_eq!(attempt(seconds(3), answered(seconds(4), 503, 5), false).await, 2);
        // Redelivered while attempt 3 is under way: its 200 is recorded,
        // the delivery stays pending, due at the redelivery's time.
        assert_eq!(attempt(seconds(6), answered(seconds(7), 200, 6), true).await, 3);
        let overtaken = store.get_delivery(event_id, hook.id).await.unwrap();
        assert_eq!(overtaken.status, DeliveryStatus::Pending, "{overtaken:?}");
        assert_eq!(overtaken.next_attempt_at, seconds(6));
        assert_eq!(listed(&overtaken.attempt_log), [
            failed(1, 500, 4),
            failed(2, 503, 5),
            (3, Some(200), 6, None),
        ]);

        assert_eq!(attempt(seconds(8), answered(seconds(9), 204, 7), false).await, 4);
        let done = store.get_delivery(event_id, hook.id).await.unwrap();
        assert_eq!(done.status, DeliveryStatus::Delivered);
        assert_eq!(done.attempts, 4);
        assert_eq!(listed(&done.attempt_log), [
            failed(1, 500, 4),
            failed(2, 503, 5),
            (3, Some(200), 6, None),
            (4, Some(204), 7, None),
        ]);
        let at: Vec<_> = done.attempt_log.iter().map(|a| a.at).collect();
        assert_eq!(at, [seconds(1), seconds(4), seconds(7), seconds(9)]);
        // Where they are: SQLite's row holds the last, Postgres logs all.
        let logged = common::scalar_i64(&db, "SELECT COUNT(*) FROM webhook_attempts WHERE endpoint_id = $1", hook.id).await;
        let in_row = common::scalar_i64(&db, "SELECT COUNT(*) FROM webhook_deliveries WHERE endpoint_id = $1 AND last_attempt IS NOT NULL", hook.id).await;
        let expected = if backend == Backend::Sqlite { (3, 1) } else { (4, 0) };
        assert_eq!((logged, in_row), expected);
        assert_eq!(
            store.list_deliveries(hook.id, None, 10).await.unwrap()[0].attempt_log,
            done.attempt_log,
            "the listing reads attempts as a single delivery's read does"
        );
        store.close().await;
    }

    // The owner deletes an endpoint while a round is sending to it: the
    // round's attempt, the put-back of what it did not send, and the
    // endpoint's pause find nothing to record on, fail nothing, and bring
    // back neither the delivery nor its attempts nor the endpoint.
    async fn an_endpoint_deleted_during_a_round_is_recorded_on_by_nothing(backend) {
        use keygate::{domain::webhook::DeliveryStatus, store::{AttemptOutcome, EndpointPause, StoreError}};
        use chrono::TimeDelta;

        let OneDelivery { db, store, hook, event_id, now } = OneDelivery::queued(backend).await;
        let seconds = |n| now + TimeDelta::seconds(n);
        let failed = |at: chrono::DateTime<chrono::Utc>| AttemptOutcome {
            at,
            status_code: Some(500),
            latency_ms: 3,
            error: Some("HTTP 500".into()),
            status: DeliveryStatus::Pending,
            next_attempt_at: at + TimeDelta::seconds(1),
        };
        // A first attempt fails, so that the next is a retry (on SQLite, the
        // round that moves the earlier attempt from the row to the log).
        let claim = uuid::Uuid::now_v7();
        let first = store.claim_deliveries(claim, now, seconds(60), 32).await.unwrap();
        store.record_attempts(claim, &[(first[0].clone(), failed(seconds(1)))], &[], &[]).await.unwrap();

        let claim = uuid::Uuid::now_v7();
        let second = store.claim_deliveries(claim, seconds(2), seconds(62), 32).await.unwrap();
        assert_eq!(second.len(), 1);
        assert_eq!(second[0].attempts, 2);
        // A round reads its endpoints after its claim: an id with no
        // endpoint is left out, and so is one deleted since (the dispatcher
        // fails its deliveries; what it records for them finds no row).
        let targets = store.endpoint_targets(&[hook.id, uuid::Uuid::now_v7()]).await.unwrap();
        assert_eq!(targets.len(), 1);
        assert_eq!((targets[0].id, targets[0].url.as_str()), (hook.id, hook.url.as_str()));
        assert!(!targets[0].sealed_secret.is_empty());
        store.delete_webhook(hook.id).await.unwrap();
        assert!(store.endpoint_targets(&[hook.id]).await.unwrap().is_empty());
        let pause = EndpointPause { endpoint_id: hook.id, until: seconds(30) };
        store
            .record_attempts(claim, &[(second[0].clone(), failed(seconds(3)))], &[], &[pause])
            .await
            .expect("an attempt to a deleted endpoint is recorded on nothing, without error");
        store
            .record_attempts(claim, &[], &[(second[0].clone(), seconds(40))], &[pause])
            .await
            .expect("a put-back for a deleted endpoint changes nothing, without error");

        assert!(
            matches!(store.get_delivery(event_id, hook.id).await, Err(StoreError::NotFound)),
            "the delivery went with its endpoint"
        );
        for (table, column) in [
            ("webhook_deliveries", "endpoint_id"),
            ("webhook_attempts", "endpoint_id"),
            ("webhook_endpoints", "id"),
        ] {
            let sql = format!("SELECT COUNT(*) FROM {table} WHERE {column} = $1");
            assert_eq!(common::scalar_i64(&db, &sql, hook.id).await, 0, "{table}");
        }
        assert!(store.claim_deliveries(uuid::Uuid::now_v7(), seconds(100), seconds(160), 32).await.unwrap().is_empty());
        store.close().await;
    }
}

/// `openssl s_server` on a loopback port with a self-signed certificate for
/// 127.0.0.1, which no webpki root signed; stopped on drop.
struct SelfSignedTlsServer {
    port: u16,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl SelfSignedTlsServer {
    fn start() -> SelfSignedTlsServer {
        let dir = tempfile::tempdir().unwrap();
        crate::tls::openssl(
            dir.path(),
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "key.pem",
                "-out",
                "cert.pem",
                "-days",
                "1",
                "-subj",
                "/CN=127.0.0.1",
                "-addext",
                "subjectAltName=IP:127.0.0.1",
            ],
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = std::process::Command::new("openssl")
            .args(["s_server", "-quiet", "-cert", "cert.pem", "-key", "key.pem"])
            .args(["-accept", &format!("127.0.0.1:{port}")])
            .current_dir(dir.path())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("openssl s_server starts");
        let listening = (0..200).any(|_| {
            std::thread::sleep(Duration::from_millis(25));
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        assert!(listening, "openssl s_server listens on {port}");
        SelfSignedTlsServer {
            port,
            child,
            _dir: dir,
        }
    }
}

impl Drop for SelfSignedTlsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTPS receiver on a loopback port (python3's `http.server` over
/// `ssl`) whose certificate, for 127.0.0.1, a private CA signed
/// (`tls::make_certificates`); it answers every POST with 204 and counts
/// them in a file. Stopped on drop.
struct PrivateCaTlsReceiver {
    port: u16,
    child: std::process::Child,
    dir: tempfile::TempDir,
}

impl PrivateCaTlsReceiver {
    const SERVER: &str = r#"
import http.server, ssl, sys
class Hook(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        with open("posts", "a") as posts:
            posts.write("post\n")
        self.send_response(204)
        self.end_headers()
    def log_message(self, *args):
        pass
server = http.server.HTTPServer(("127.0.0.1", 0), Hook)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain("server.crt", "server.key")
server.socket = context.wrap_socket(server.socket, server_side=True)
print(server.server_address[1], flush=True)
server.serve_forever()
"#;

    fn start() -> PrivateCaTlsReceiver {
        use std::io::BufRead;
        let dir = tempfile::tempdir().unwrap();
        crate::tls::make_certificates(dir.path());
        let mut child = std::process::Command::new("python3")
            .args(["-c", Self::SERVER])
            .current_dir(dir.path())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("python3 starts");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("the receiver's port, not {line:?}"));
        PrivateCaTlsReceiver { port, child, dir }
    }

    fn ca_file(&self) -> std::path::PathBuf {
        self.dir.path().join("ca.crt")
    }

    fn posts(&self) -> usize {
        std::fs::read_to_string(self.dir.path().join("posts"))
            .map_or(0, |posts| posts.lines().count())
    }
}

impl Drop for PrivateCaTlsReceiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// After a crash cut the first request short: the event's second request,
/// with the first's `webhook-id` and a valid signature, and its delivery
/// once recorded as delivered.
async fn delivered_again(
    receiver: &Receiver,
    admin: &mut KeyAdminClient<Channel>,
    webhook_id: &str,
    secret: &str,
) -> WebhookDelivery {
    let received = receiver.wait_for(2).await;
    assert_eq!(
        received[1].id, received[0].id,
        "the redelivery carries the same webhook-id"
    );
    assert!(verify(secret, &received[1]));
    delivery_where(admin, webhook_id, &received[0].id, |d| {
        d.status == DeliveryStatus::Delivered as i32
    })
    .await
}

/// A keygate process's settings for a fast dispatcher allowed to call the
/// loopback receiver over plain HTTP (as `fast_webhooks` for in-process
/// servers).
const PROCESS_WEBHOOKS: [(&str, &str); 3] = [
    ("KEYGATE_WEBHOOK_ALLOW_PRIVATE", "true"),
    ("KEYGATE_WEBHOOK_ALLOW_HTTP", "true"),
    ("KEYGATE_WEBHOOK_POLL_INTERVAL", "50ms"),
];

/// A second replica on an existing database.
async fn replica(db: &TestDb) -> (app::Running, KeyAdminClient<Channel>) {
    let mut settings = common::test_settings(db);
    fast_webhooks(&mut settings);
    let running = app::start(settings.validate().unwrap()).await.unwrap();
    let admin = KeyAdminClient::new(common::channel(running.admin_addr).await);
    (running, admin)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_postgres_deliver_each_event_once() {
    let receiver = Receiver::start().await;
    let mut first = TestServer::start_with(Backend::Postgres, fast_webhooks).await;
    let (second, mut second_admin) = replica(&first.db).await;
    let (_, secret) = register(&mut first.admin, &receiver.url(), &["api_key.created"]).await;
    const EVENTS: usize = 40;
    for i in 0..EVENTS {
        let admin = if i % 2 == 0 {
            &mut first.admin
        } else {
            &mut second_admin
        };
        create_key(admin, &format!("key {i}")).await;
    }
    let received = receiver.wait_for(EVENTS).await;
    // Both replicas run a dispatcher; let any double claim show itself.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let received = if receiver.received().len() > received.len() {
        receiver.received()
    } else {
        received
    };
    let mut per_id: HashMap<String, usize> = HashMap::new();
    for r in &received {
        assert!(verify(&secret, r));
        *per_id.entry(r.id.clone()).or_default() += 1;
    }
    assert_eq!(per_id.len(), EVENTS, "every event delivered");
    assert!(
        per_id.values().all(|&n| n == 1),
        "no event delivered twice: {per_id:?}"
    );
    second.stop().await;
    first.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_mid_delivery_leaves_the_event_to_another() {
    let receiver = Receiver::start().await;
    // The first request hangs: the replica that sent it dies waiting.
    receiver.script(&[Reply::Hang]);
    let db = TestDb::new(Backend::Postgres).await;
    let mut survivor = TestServer::start_on(db, |s| {
        fast_webhooks(s);
        // Off until the other replica has claimed the event.
        s.webhooks_enabled = Some(false);
    })
    .await;
    let (webhook_id, secret) =
        register(&mut survivor.admin, &receiver.url(), &["api_key.created"]).await;
    let doomed = KeygateProcess::spawn(
        &survivor.db.url,
        &[
            PROCESS_WEBHOOKS.as_slice(),
            &[
                ("KEYGATE_WEBHOOK_TIMEOUT", "5s"),
                ("KEYGATE_WEBHOOK_LEASE", "6s"),
            ],
        ]
        .concat(),
    )
    .await;
    create_key(&mut survivor.admin, "orphaned").await;
    receiver.wait_for(1).await;
    drop(doomed); // SIGKILL, mid-request.
    survivor.stop().await;

    let mut survivor = TestServer::start_on(survivor.db, fast_webhooks).await;
    let delivered = delivered_again(&receiver, &mut survivor.admin, &webhook_id, &secret).await;
    assert_eq!(
        delivered.attempts, 2,
        "the killed attempt counts: {delivered:?}"
    );
    survivor.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_keygate_killed_mid_delivery_delivers_the_event_when_restarted() {
    let receiver = Receiver::start().await;
    // The first request hangs: the process that sent it dies waiting.
    receiver.script(&[Reply::Hang]);
    let db = TestDb::new(Backend::Sqlite).await;
    // The default lease (60 s): were the row claimed on SQLite, the
    // restarted process would wait that long for it.
    let doomed = KeygateProcess::spawn(
        &db.url,
        &[
            PROCESS_WEBHOOKS.as_slice(),
            &[("KEYGATE_WEBHOOK_TIMEOUT", "5s")],
        ]
        .concat(),
    )
    .await;
    let mut admin = KeyAdminClient::new(common::channel(doomed.admin_addr).await);
    let (webhook_id, secret) = register(&mut admin, &receiver.url(), &["api_key.created"]).await;
    create_key(&mut admin, "orphaned").await;
    receiver.wait_for(1).await;
    drop(doomed); // SIGKILL, mid-request.

    let mut restarted = TestServer::start_on(db, fast_webhooks).await;
    let delivered = delivered_again(&receiver, &mut restarted.admin, &webhook_id, &secret).await;
    assert_eq!(
        delivered.attempts, 1,
        "the attempt the crash cut short is not counted on SQLite: {delivered:?}"
    );
    restarted.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_and_the_outbox_are_reported_as_metrics() {
    let receiver = Receiver::start().await;
    receiver.script(&[Reply::Status(500)]);
    let db = TestDb::new(Backend::Sqlite).await;
    let process = KeygateProcess::spawn(
        &db.url,
        &[
            PROCESS_WEBHOOKS.as_slice(),
            &[("KEYGATE_WEBHOOK_RETRY_BASE", "100ms")],
        ]
        .concat(),
    )
    .await;
    let mut admin = KeyAdminClient::new(common::channel(process.admin_addr).await);
    register(&mut admin, &receiver.url(), &["api_key.created"]).await;
    create_key(&mut admin, "measured").await;
    receiver.wait_for(2).await;

    let counter = |text: &str, outcome: &str| {
        let prefix = format!("keygate_webhook_deliveries_total{{outcome=\"{outcome}\"}} ");
        text.lines()
            .find_map(|line| line.strip_prefix(prefix.as_str()))
            .and_then(|v| v.parse::<f64>().ok())
    };
    let mut text = String::new();
    let reported = eventually(Duration::from_secs(10), async || {
        text = common::scrape_metrics(process.metrics_addr);
        counter(&text, "delivered") == Some(1.0)
    })
    .await;
    assert!(reported, "{text}");
    assert_eq!(counter(&text, "retrying"), Some(1.0), "{text}");
    assert!(
        common::metric_value(&text, "keygate_webhook_outbox_depth").is_some(),
        "{text}"
    );
    assert!(
        common::metric_value(&text, "keygate_webhook_oldest_pending_seconds").is_some(),
        "{text}"
    );
}
