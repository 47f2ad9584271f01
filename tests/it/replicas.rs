//! Many replicas, one truth: two real `keygate serve` processes on one
//! PostgreSQL database. A change made through one must reach the other's
//! cache through LISTEN/NOTIFY, not after the cache TTL.

use crate::common;

use std::{collections::HashMap, net::SocketAddr, time::Duration};

use common::{
    check_request, eventually, metric_value, process::KeygateProcess, proxy::CuttableProxy,
    replica::Replica, Backend, Decision, TestDb,
};
use keygate::proto::{
    CreateKeyRequest, RateLimit, RevokeKeyRequest, RotateKeyRequest, SuspendOwnerRequest,
};

/// A cache TTL far beyond the test, so only notifications can explain a
/// change seen on the other replica.
const LONG_TTL: (&str, &str) = ("KEYGATE_CACHE_TTL", "1h");

/// Test-only conveniences on the shared harness's replica.
impl Replica {
    async fn with_long_ttl(database_url: &str) -> Replica {
        Replica::start(database_url, &[LONG_TTL]).await
    }

    async fn revoke(&self, owner: &str, id: String, reason: &str) {
        self.admin
            .clone()
            .revoke_key(RevokeKeyRequest {
                owner_id: owner.into(),
                id,
                reason: reason.into(),
            })
            .await
            .unwrap();
    }

    async fn create_for(&self, owner: &str) -> (String, String) {
        self.create(CreateKeyRequest {
            owner_id: owner.into(),
            name: "replicated".into(),
            ..Default::default()
        })
        .await
    }

    async fn becomes(&self, key: &str, code: &str) -> bool {
        eventually(Duration::from_secs(5), async || {
            self.code(key).await == code
        })
        .await
    }
}

async fn two_replicas() -> (TestDb, Replica, Replica) {
    let db = TestDb::new(Backend::Postgres).await;
    let a = Replica::with_long_ttl(&db.url).await;
    let b = Replica::with_long_ttl(&db.url).await;
    (db, a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_created_on_one_replica_works_on_the_other_and_a_revoke_reaches_it() {
    let (_db, a, b) = two_replicas().await;
    let (key, id) = a.create_for("acme").await;
    assert_eq!(b.code(&key).await, "allowed");
    a.revoke("acme", id, "leaked").await;
    assert!(
        b.becomes(&key, "key_revoked").await,
        "replica B kept allowing a key revoked on A"
    );
    assert!(metric_value(&b.metrics(), "keygate_invalidations_total").unwrap_or_default() >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_without_overlap_on_one_replica_switches_keys_on_the_other() {
    let (_db, a, b) = two_replicas().await;
    let (old_key, id) = a.create_for("acme").await;
    assert_eq!(b.code(&old_key).await, "allowed");
    let rotated = a
        .admin
        .clone()
        .rotate_key(RotateKeyRequest {
            owner_id: "acme".into(),
            id,
            overlap_minutes: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(b.becomes(&old_key, "key_revoked").await);
    assert_eq!(b.code(&rotated.key).await, "allowed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_starts_the_old_keys_rate_limit_window_afresh_on_every_replica() {
    // One post-change step on both paths (docs/architecture.md, "The path of
    // an invalidation"): the replica that rotates and the replica told by
    // notification forget the same state.
    let (_db, a, b) = two_replicas().await;
    let (key, id) = a
        .create(CreateKeyRequest {
            owner_id: "acme".into(),
            name: "limited".into(),
            rate_limit: Some(RateLimit {
                max_attempts: 1,
                decay_seconds: 3600,
            }),
            ..Default::default()
        })
        .await;
    for replica in [&a, &b] {
        assert_eq!(replica.code(&key).await, "allowed");
        assert_eq!(replica.code(&key).await, "rate_limited");
    }
    a.admin
        .clone()
        .rotate_key(RotateKeyRequest {
            owner_id: "acme".into(),
            id,
            overlap_minutes: 60,
        })
        .await
        .unwrap();
    assert!(
        b.becomes(&key, "allowed").await,
        "replica B kept the old key's window after a rotation on A"
    );
    assert_eq!(a.code(&key).await, "allowed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspending_an_owner_on_one_replica_denies_all_its_keys_on_the_other() {
    let (_db, a, b) = two_replicas().await;
    let (first, _) = a.create_for("acme").await;
    let (second, _) = a.create_for("acme").await;
    let (bystander, _) = a.create_for("globex").await;
    for key in [&first, &second, &bystander] {
        assert_eq!(b.code(key).await, "allowed");
    }
    a.admin
        .clone()
        .suspend_owner(SuspendOwnerRequest {
            owner_id: "acme".into(),
            reason: "unpaid".into(),
        })
        .await
        .unwrap();
    assert!(b.becomes(&first, "owner_suspended").await);
    assert!(b.becomes(&second, "owner_suspended").await);
    assert_eq!(b.code(&bystander).await, "allowed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_listener_lost_notifications_clears_its_cache_on_reconnect() {
    let db = TestDb::new(Backend::Postgres).await;
    let a = Replica::with_long_ttl(&db.url).await;
    let upstream: SocketAddr = "127.0.0.1:5432".parse().unwrap();
    let proxy = CuttableProxy::start(upstream).await;
    let b = Replica::with_long_ttl(&proxy.postgres_url(&db.url)).await;
    let (key, id) = a.create_for("acme").await;
    assert_eq!(b.code(&key).await, "allowed");

    proxy.cut();
    a.revoke("acme", id, "while B was away").await;
    // B cannot hear the notification; it still answers from its cache.
    assert_eq!(b.code(&key).await, "allowed");
    assert!(
        eventually(Duration::from_secs(5), async || {
            metric_value(&b.metrics(), "keygate_listener_connected") == Some(0.0)
        })
        .await,
        "B's listener was cut but keygate_listener_connected did not drop to 0"
    );
    proxy.restore();

    assert!(
        eventually(Duration::from_secs(15), async || b.code(&key).await
            == "key_revoked")
        .await,
        "after reconnecting, B still allowed a key revoked while it was disconnected:\n{}",
        b.process.logs()
    );
    // The cache is cleared first thing after LISTEN, before the listener
    // reads what was issued meanwhile and reports itself connected: the
    // revoke can be seen a moment before the metrics say so.
    let reconnected = |metrics: &str| {
        metric_value(metrics, "keygate_listener_connected") == Some(1.0)
            && metric_value(metrics, "keygate_listener_reconnects_total").unwrap_or_default() >= 1.0
            && metric_value(metrics, "keygate_cache_clears_total").unwrap_or_default() >= 2.0
    };
    assert!(
        eventually(Duration::from_secs(5), async || reconnected(&b.metrics())).await,
        "B's metrics do not show the reconnect and the clear:\n{}",
        b.metrics()
    );
}

/// A LISTEN connection that dies without a reset (README, "Operations",
/// replicas): the heartbeat must notice within seconds, reconnect and clear
/// the cache, so a revoke made elsewhere takes effect long before the TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoke_reaches_a_replica_whose_listener_died_silently_within_seconds() {
    let db = TestDb::new(Backend::Postgres).await;
    let proxy = CuttableProxy::start("127.0.0.1:5432".parse().unwrap()).await;
    let a = Replica::with_long_ttl(&db.url).await;
    let b = Replica::with_long_ttl(&proxy.postgres_url(&db.url)).await;
    let (key, id) = a.create_for("acme").await;
    assert!(b.becomes(&key, "allowed").await);

    proxy.silence_open_connections();
    a.revoke("acme", id, "leaked").await;
    let revoked = std::time::Instant::now();
    let headers = HashMap::from([("authorization".to_string(), format!("Bearer {key}"))]);
    let request = check_request(headers, "GET", "/", HashMap::new());
    // The bound the README gives: heartbeat deadline plus a bounded reconnect.
    let stopped_allowing = eventually(Duration::from_secs(10), async || {
        let answer = b.authz.clone().check(request.clone()).await;
        answer.map_or(true, |r| Decision::of(r.into_inner()).code != "allowed")
    })
    .await;
    assert!(
        stopped_allowing,
        "replica B kept allowing a revoked key for 10 s behind a silent LISTEN connection:\n{}",
        b.process.logs()
    );
    eprintln!(
        "B stopped allowing {:?} after the revoke",
        revoked.elapsed()
    );
    assert!(
        eventually(Duration::from_secs(30), async || b
            .authz
            .clone()
            .check(request.clone())
            .await
            .is_ok_and(|r| Decision::of(r.into_inner()).code == "key_revoked"))
        .await,
        "replica B did not come back to answering key_revoked"
    );
    let metrics = b.metrics();
    assert!(metric_value(&metrics, "keygate_listener_reconnects_total").unwrap_or_default() >= 1.0);
    assert!(metric_value(&metrics, "keygate_listener_heartbeat_age_seconds").is_some());
}

/// A SQLite database serves one keygate process (README, Configuration):
/// a second server of the same file would keep serving keys the first
/// revoked, and send every webhook again. It refuses to start, and says
/// why; a process that was killed leaves the file free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_keygate_on_one_sqlite_file_refuses_to_start_and_a_killed_ones_file_is_free() {
    let db = TestDb::new(Backend::Sqlite).await;
    let refused_because = |logs: &str| {
        assert!(
            logs.contains("another keygate process is serving the SQLite database")
                && logs.contains("keygate.db.lock")
                && logs.contains("run replicas on PostgreSQL"),
            "{logs}"
        );
    };
    let first = KeygateProcess::spawn(&db.url, &[]).await;
    refused_because(&KeygateProcess::refused(&db.url, &[]).await);
    drop(first); // SIGKILL: the lock goes with the process.

    let second = KeygateProcess::spawn(&db.url, &[]).await;
    refused_because(&KeygateProcess::refused(&db.url, &[]).await);
    // `keygate import` would add keys the server's issued-key set, filled
    // at start, does not hold: it is refused too, and told where to go.
    let dir = tempfile::tempdir().unwrap();
    let rows = dir.path().join("keys.jsonl");
    std::fs::write(&rows, "").unwrap();
    let import = std::process::Command::new(env!("CARGO_BIN_EXE_keygate"))
        .arg("import")
        .arg(&rows)
        .env("KEYGATE_DATABASE_URL", &db.url)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&import.stderr);
    assert!(!import.status.success(), "{said}");
    refused_because(&said);
    assert!(said.contains("ImportKeys"), "{said}");
    let (status, logs) = second.terminate().await;
    assert!(
        status.success(),
        "the server that held the file stops cleanly:\n{logs}"
    );
}
