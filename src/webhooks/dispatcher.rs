//! The dispatcher: a task on every replica that delivers the outbox.
//!
//! Each round claims a batch of due deliveries for a lease (one statement,
//! a few more when the outbox's due head is held by paused or disabled
//! endpoints: `Store::claim_deliveries`; `FOR UPDATE SKIP LOCKED` on
//! Postgres, so two replicas never claim the same row; on SQLite, one
//! process, a read), sends them with no transaction
//! open (every endpoint's at once, a few at a time to any one endpoint; an
//! endpoint that lets an attempt time out hears no more of the round, the
//! rest of its deliveries put back unsent), and records each attempt and
//! its outcome.
//! A failed attempt is retried after an exponential backoff with jitter
//! until the retry window (24 h by default) has passed, then the delivery
//! is marked failed. A replica that dies mid-delivery holds nothing: its lease lapses
//! and another replica (or the restarted one) claims the row again (on
//! SQLite the restarted process finds it due), and the receiver sees the
//! same `webhook-id`.
//!
//! The same task, every five seconds, reports the outbox gauges and emits
//! the `api_key.expiring` warnings that have come due.

use std::{
    collections::HashMap,
    future::Future,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::{future::join_all, stream, StreamExt};
use http::{
    header::{HeaderName, HeaderValue, ACCEPT, CONTENT_TYPE, USER_AGENT},
    Method, Request, StatusCode,
};
use http_body_util::Full;
use rand::Rng;
use tokio::time::{Instant, MissedTickBehavior};
use uuid::Uuid;

use super::{
    client::{self, Connections, Lane, Target},
    endpoint_cache::EndpointCache,
    secret::SealKey,
    signature::SigningKey,
    target::TargetPolicy,
};
use crate::{
    clock::Clock,
    domain::webhook::DeliveryStatus,
    grpc::status::chain,
    store::{AttemptOutcome, ClaimedDelivery, EndpointPause, EndpointTarget, Store, StoreResult},
};

/// How the dispatcher delivers.
#[derive(Debug, Clone)]
pub struct DispatchSettings {
    pub policy: TargetPolicy,
    /// CA certificates (PEM) trusted for endpoints besides the webpki
    /// roots, read when the client is built.
    pub ca_file: Option<std::path::PathBuf>,
    /// One HTTP attempt, connection included.
    pub timeout: Duration,
    /// How long a claim holds; longer than `timeout`, so that a live
    /// replica records its attempt before anyone else may claim the row
    /// (a round's attempts to one endpoint, taken in turn, end a timeout
    /// before it: [`in_flight_per_endpoint`]).
    pub lease: Duration,
    /// How often the outbox is polled when it had nothing due.
    pub poll_interval: Duration,
    /// The first retry's delay; each further one doubles, up to
    /// `retry_max_delay`, with jitter.
    pub retry_base: Duration,
    pub retry_max_delay: Duration,
    /// How long after an event a failed delivery is still retried.
    pub retry_for: Duration,
    /// Deliveries claimed per round (and sent at once, up to
    /// [`in_flight_per_endpoint`] to one endpoint): 128, so that
    /// a busy outbox costs one recording transaction per 128 deliveries (a
    /// quarter less CPU on the SQLite writer per delivery than 32;
    /// BENCHMARKS.md, session 14).
    pub batch: u32,
    /// When `api_key.expiring` is sent, before `expires_at`.
    pub expiry_warnings: Vec<Duration>,
}

impl Default for DispatchSettings {
    fn default() -> Self {
        Self {
            policy: TargetPolicy::default(),
            ca_file: None,
            timeout: Duration::from_secs(10),
            lease: Duration::from_secs(60),
            poll_interval: Duration::from_secs(1),
            retry_base: Duration::from_secs(10),
            retry_max_delay: Duration::from_secs(60 * 60),
            retry_for: Duration::from_secs(24 * 60 * 60),
            batch: 128,
            expiry_warnings: vec![
                Duration::from_secs(7 * 24 * 60 * 60),
                Duration::from_secs(24 * 60 * 60),
            ],
        }
    }
}

/// Requests in flight to one endpoint at once, at most, unless a round of
/// timed-out attempts would then outlast its lease ([`in_flight_per_endpoint`]:
/// 26 with the default timeout and lease). A round of 128 due deliveries to
/// one receiver over 16 connections, each used again as soon as it answers,
/// costs the replica's core a quarter less than over 128 connections, each
/// touched once a round with cold caches (BENCHMARKS.md, session 15); and
/// one endpoint no longer hears a whole round at once.
pub const IN_FLIGHT_PER_ENDPOINT: usize = 16;
/// How often the gauges are read and expiry warnings looked for: two
/// indexed reads per warning threshold.
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(5);
/// Keys warned per threshold per round; the rest wait for the next.
const WARNINGS_PER_ROUND: u32 = 500;
/// The actor of `api_key.expiring` events.
const ACTOR: &str = "keygate";
/// The Standard Webhooks headers.
const WEBHOOK_ID: HeaderName = HeaderName::from_static("webhook-id");
const WEBHOOK_TIMESTAMP: HeaderName = HeaderName::from_static("webhook-timestamp");
const WEBHOOK_SIGNATURE: HeaderName = HeaderName::from_static("webhook-signature");
const USER_AGENT_VALUE: &str = concat!("keygate-webhooks/", env!("CARGO_PKG_VERSION"));

/// An endpoint ready to be sent to: its URL checked and prepared, its
/// signing key opened. Or why it is not (a refused URL, a secret that does
/// not open, the endpoint deleted since the claim): each of its deliveries
/// is a failed attempt with that error, retried as any other (a deleted
/// endpoint's deliveries went with it: their outcomes are recorded on
/// nothing).
type Prepared = Result<(Arc<Target>, SigningKey), String>;

/// What a round's sending came to.
#[derive(Default)]
struct Sent {
    attempted: Vec<(ClaimedDelivery, AttemptOutcome)>,
    /// Not sent: their endpoint had let an attempt time out.
    unsent: Vec<ClaimedDelivery>,
    /// The endpoints that let an attempt time out.
    timed_out: Vec<Uuid>,
}

pub struct Dispatcher {
    store: Store,
    settings: DispatchSettings,
    /// Connections to the endpoints, kept between rounds.
    connections: Connections,
    seal_key: tokio::sync::OnceCell<SealKey>,
    /// Endpoints' signing keys, opened once per sealed secret rather than
    /// per delivery.
    keys: EndpointCache<SigningKey>,
    /// Endpoints' URLs, parsed and checked once per URL text.
    urls: EndpointCache<Arc<Target>>,
    /// Requests in flight to one endpoint at once ([`in_flight_per_endpoint`]).
    per_endpoint: usize,
    clock: Clock,
    /// SQLite: until when no round runs after one whose outcomes could not
    /// be recorded. Nothing claimed those deliveries, so they are still due:
    /// delivered again at once, they would be repeated as fast as the
    /// receiver answers for as long as the database refuses writes. A
    /// lease's time, as a claim holds them back on Postgres.
    held_back_until: std::sync::Mutex<Option<Instant>>,
}

impl Dispatcher {
    pub fn new(store: Store, settings: DispatchSettings) -> anyhow::Result<Dispatcher> {
        let connections = Connections::new(
            settings.policy,
            settings.ca_file.as_deref(),
            settings.timeout,
        )?;
        let per_endpoint = in_flight_per_endpoint(settings.batch, settings.timeout, settings.lease);
        Ok(Dispatcher {
            store,
            settings,
            connections,
            seal_key: tokio::sync::OnceCell::new(),
            keys: EndpointCache::default(),
            urls: EndpointCache::default(),
            per_endpoint,
            clock: Clock::system(),
            held_back_until: std::sync::Mutex::new(None),
        })
    }

    /// Claims, schedules and warns by `clock` (the system clock otherwise).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Runs until `stop` resolves. A round cut short by `stop` leaves its
    /// claims to lapse (on SQLite its rows were never claimed): those
    /// events are delivered later, not lost.
    pub async fn run(self: Arc<Self>, stop: impl Future<Output = ()>) {
        tokio::pin!(stop);
        let mut poll = tokio::time::interval(self.settings.poll_interval);
        poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut housekeeping = tokio::time::interval(HOUSEKEEPING_EVERY);
        housekeeping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // Whether the last poll found nothing to claim.
        let mut idle = false;
        loop {
            tokio::select! {
                () = &mut stop => return,
                _ = poll.tick() => {
                    tokio::select! {
                        () = &mut stop => return,
                        claimed = self.drain_due(idle) => idle = !claimed,
                    }
                }
                _ = housekeeping.tick() => {
                    self.warn_expiring().await;
                    self.report_gauges().await;
                    self.keys.sweep();
                    self.urls.sweep();
                    self.connections.sweep();
                }
            }
        }
    }

    /// Delivers rounds until one finds less than a full batch due, and
    /// returns whether any round claimed something. On Postgres, after a
    /// poll that found nothing (`after_idle`), a read asks first whether
    /// anything is due: an idle replica polls every `poll_interval`, and a
    /// claim locks what it finds. A busy outbox goes straight to the claim,
    /// and on SQLite the round's own read of due rows is that question.
    async fn drain_due(&self, after_idle: bool) -> bool {
        if self.held_back() {
            return false;
        }
        if after_idle && self.store.is_postgres() {
            match self.store.any_due(self.clock.now()).await {
                Ok(true) => {}
                Ok(false) => return false,
                Err(error) => {
                    tracing::warn!(error = %chain(&error), "cannot read the webhook outbox; retrying at the next poll");
                    return false;
                }
            }
        }
        let mut claimed_any = false;
        loop {
            match self.deliver_round().await {
                Ok(claimed) => {
                    claimed_any |= claimed > 0;
                    if claimed < self.settings.batch as usize || self.held_back() {
                        return claimed_any;
                    }
                }
                Err(error) => {
                    tracing::warn!(error = %chain(&error), "webhook dispatch round failed; retrying at the next poll");
                    return claimed_any;
                }
            }
        }
    }

    /// One round: claim, read and prepare the claimed deliveries' endpoints
    /// ([`Self::prepare_endpoints`]), deliver ([`Self::attempt_all`]),
    /// record. Returns how many deliveries it claimed. A round that fails
    /// after its claim (the endpoints or the seal key cannot be read)
    /// sends nothing: on Postgres its rows wait for the lease to lapse, as
    /// a replica's that died after claiming, their attempt numbers counted
    /// by the claim (a number with no attempt behind it); on SQLite nothing
    /// was claimed and the next poll finds them due.
    pub async fn deliver_round(&self) -> StoreResult<usize> {
        let claim_id = Uuid::now_v7();
        let now = self.clock.now();
        let lease = chrono::Duration::from_std(self.settings.lease).unwrap_or_default();
        let claimed = self
            .store
            .claim_deliveries(claim_id, now, now + lease, self.settings.batch)
            .await?;
        if claimed.is_empty() {
            return Ok(0);
        }
        let count = claimed.len();
        let seal_key = self
            .seal_key
            .get_or_try_init(|| SealKey::load(&self.store, self.clock.now()))
            .await?;
        let prepared = self.prepare_endpoints(seal_key, &claimed).await?;
        let sent = self.attempt_all(&prepared, claimed).await;
        count_outcomes(&sent.attempted);
        let (put_back, pauses) = self.put_back_and_pause(sent.unsent, &sent.timed_out);
        match self
            .store
            .record_attempts(claim_id, &sent.attempted, &put_back, &pauses)
            .await
        {
            Ok(()) => {
                if !sent.timed_out.is_empty() {
                    tracing::info!(
                        put_back = put_back.len(),
                        endpoints = ?sent.timed_out,
                        "webhook endpoint timed out: paused, its deliveries wait for a later round"
                    );
                }
            }
            Err(error) => {
                // These deliveries are attempted again once the claims
                // lapse; on SQLite, once the dispatcher stops holding back.
                tracing::warn!(error = %chain(&error), deliveries = count, "cannot record a round of webhook attempts");
                if !self.store.is_postgres() {
                    let until = Instant::now() + self.settings.lease;
                    *self
                        .held_back_until
                        .lock()
                        .unwrap_or_else(|e| e.into_inner()) = Some(until);
                }
            }
        }
        Ok(count)
    }

    /// Attempts a round's deliveries: every endpoint's at once, and to each
    /// endpoint up to `per_endpoint` at a time, the next one sent as soon
    /// as one is answered, oldest event first (`retry_from`, the time its
    /// retries count from: a delivery put back by an earlier round goes
    /// before the endpoint's newer ones claimed with it). Once an attempt
    /// to an endpoint has timed out (no connection or no answer within the
    /// timeout), the endpoint's deliveries not yet sent are returned
    /// unsent: a round with an endpoint that never answers ends about one
    /// timeout after it began, rather than one per wave of attempts to it.
    /// Failures that come fast (refused, an HTTP error) hold no round, and
    /// change nothing.
    async fn attempt_all(
        &self,
        prepared: &HashMap<Uuid, Prepared>,
        claimed: Vec<ClaimedDelivery>,
    ) -> Sent {
        let mut by_endpoint: Vec<Vec<ClaimedDelivery>> = Vec::new();
        for delivery in claimed {
            match by_endpoint
                .iter_mut()
                .find(|group| group[0].endpoint_id == delivery.endpoint_id)
            {
                Some(group) => group.push(delivery),
                None => by_endpoint.push(vec![delivery]),
            }
        }
        for deliveries in &mut by_endpoint {
            deliveries.sort_by_key(|delivery| delivery.retry_from);
        }
        let endpoints = by_endpoint.into_iter().map(|deliveries| async move {
            let endpoint_id = deliveries[0].endpoint_id;
            // `prepare_endpoints` holds every endpoint of `claimed`.
            let endpoint = &prepared[&endpoint_id];
            let lane = self.connections.lane(endpoint_id);
            let lane = &lane;
            let timed_out = AtomicBool::new(false);
            let timed_out = &timed_out;
            let done = stream::iter(deliveries)
                .map(|mut delivery| async move {
                    if timed_out.load(Ordering::Relaxed) {
                        return (delivery, None);
                    }
                    // The body is sent, not copied: nothing after the attempt
                    // reads it.
                    let payload = std::mem::take(&mut delivery.payload);
                    let (outcome, answered_in_time) =
                        self.attempt(endpoint, lane, &delivery, payload).await;
                    if !answered_in_time {
                        timed_out.store(true, Ordering::Relaxed);
                    }
                    (delivery, Some(outcome))
                })
                .buffer_unordered(self.per_endpoint)
                .collect::<Vec<_>>()
                .await;
            (
                done,
                timed_out.load(Ordering::Relaxed).then_some(endpoint_id),
            )
        });
        let mut sent = Sent::default();
        for (done, timed_out) in join_all(endpoints).await {
            sent.timed_out.extend(timed_out);
            for (delivery, outcome) in done {
                match outcome {
                    Some(outcome) => sent.attempted.push((delivery, outcome)),
                    None => sent.unsent.push(delivery),
                }
            }
        }
        sent
    }

    /// The round's endpoints, each [`Prepared`] once from its row as read
    /// now ([`Store::endpoint_targets`]); the prepared URL and key are
    /// kept between rounds for as long as the row's bytes are the same
    /// ([`EndpointCache`]).
    async fn prepare_endpoints(
        &self,
        seal_key: &SealKey,
        claimed: &[ClaimedDelivery],
    ) -> StoreResult<HashMap<Uuid, Prepared>> {
        let mut ids: Vec<Uuid> = claimed
            .iter()
            .map(|delivery| delivery.endpoint_id)
            .collect();
        ids.sort_unstable();
        ids.dedup();
        let mut endpoints: HashMap<Uuid, Prepared> = self
            .store
            .endpoint_targets(&ids)
            .await?
            .into_iter()
            .map(|row| (row.id, self.prepare(seal_key, &row)))
            .collect();
        for id in ids {
            // Deleted since the claim, its deliveries with it: what is
            // recorded for them finds no row.
            endpoints
                .entry(id)
                .or_insert_with(|| Err("the webhook endpoint was deleted".to_string()));
        }
        Ok(endpoints)
    }

    fn prepare(&self, seal_key: &SealKey, row: &EndpointTarget) -> Prepared {
        let target = self.urls.get(row.id, row.url.as_bytes(), || {
            let uri = self
                .settings
                .policy
                .check_uri(&row.url)
                .map_err(|e| e.to_string())?;
            Target::new(uri).map(Arc::new)
        })?;
        let key = self
            .keys
            .get(row.id, &row.sealed_secret, || {
                seal_key
                    .open(row.id, &row.sealed_secret)
                    .map(|secret| SigningKey::new(&secret))
            })
            .map_err(|e| e.to_string())?;
        Ok((target, key))
    }

    /// When the deliveries a round did not send to an endpoint that let an
    /// attempt time out are due again: as a first retry would be
    /// (`retry_base`, half of it kept at random), so that the endpoint hears
    /// one wave of attempts at a time while it is down, and the other
    /// endpoints' deliveries, due meanwhile, come first in the next rounds.
    /// The endpoint itself is paused as long ([`EndpointPause`]): none of
    /// its deliveries is due meanwhile, else a backlog larger than a round
    /// would fill the next rounds one after the other, each holding every
    /// other endpoint's deliveries for a timeout, until all of it had been
    /// through a round once.
    fn put_back_and_pause(
        &self,
        unsent: Vec<ClaimedDelivery>,
        timed_out: &[Uuid],
    ) -> (Vec<(ClaimedDelivery, DateTime<Utc>)>, Vec<EndpointPause>) {
        let now = self.clock.now();
        let first_retry = || {
            let delay = backoff(
                1,
                self.settings.retry_base,
                self.settings.retry_max_delay,
                rand::rng().random::<f64>(),
            );
            now + chrono::Duration::from_std(delay).unwrap_or_default()
        };
        let put_back = unsent
            .into_iter()
            .map(|delivery| (delivery, first_retry()))
            .collect();
        let pauses = timed_out
            .iter()
            .map(|&endpoint_id| EndpointPause {
                endpoint_id,
                until: first_retry(),
            })
            .collect();
        (put_back, pauses)
    }

    /// Whether rounds wait, after one whose outcomes could not be recorded
    /// (SQLite).
    fn held_back(&self) -> bool {
        self.held_back_until
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|until| Instant::now() < until)
    }

    /// One attempt and its outcome, and whether it ended within the timeout
    /// (with an answer, whatever it was, or a failure that came fast).
    async fn attempt(
        &self,
        endpoint: &Prepared,
        lane: &Lane<'_>,
        delivery: &ClaimedDelivery,
        payload: String,
    ) -> (AttemptOutcome, bool) {
        let started = Instant::now();
        let sent = self.send(endpoint, lane, delivery, payload).await;
        let latency_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let at = self.clock.now();
        let in_time = !matches!(
            sent,
            Err(NoAnswer {
                timed_out: true,
                ..
            })
        );
        let (status_code, error) = match sent {
            Ok(status) if status.is_success() => {
                let outcome = AttemptOutcome {
                    at,
                    status_code: Some(status.as_u16()),
                    latency_ms,
                    error: None,
                    status: DeliveryStatus::Delivered,
                    next_attempt_at: at,
                };
                return (outcome, in_time);
            }
            Ok(status) => (Some(status.as_u16()), format!("HTTP {status}")),
            Err(NoAnswer { error, .. }) => (None, error),
        };
        let retry_for = chrono::Duration::from_std(self.settings.retry_for).unwrap_or_default();
        let (status, next_attempt_at) = if at - delivery.retry_from >= retry_for {
            (DeliveryStatus::Failed, at)
        } else {
            let delay = backoff(
                u32::try_from(delivery.attempts).unwrap_or(1),
                self.settings.retry_base,
                self.settings.retry_max_delay,
                rand::rng().random::<f64>(),
            );
            (
                DeliveryStatus::Pending,
                at + chrono::Duration::from_std(delay).unwrap_or_default(),
            )
        };
        tracing::debug!(event_id = %delivery.event_id, attempt = delivery.attempts, ?status_code, %error, "webhook attempt failed");
        let outcome = AttemptOutcome {
            at,
            status_code,
            latency_ms,
            error: Some(error),
            status,
            next_attempt_at,
        };
        (outcome, in_time)
    }

    /// One signed POST of `payload` (the delivery's) to `endpoint` over its
    /// `lane`. Redirects are answers, not followed. The response's body is
    /// not read: an unfinished one closes its connection instead of keeping
    /// it.
    async fn send(
        &self,
        endpoint: &Prepared,
        lane: &Lane<'_>,
        delivery: &ClaimedDelivery,
        payload: String,
    ) -> Result<StatusCode, NoAnswer> {
        let (target, key) = endpoint
            .as_ref()
            .map_err(|error| NoAnswer::before_sending(error.clone()))?;
        let id = delivery.event_id.to_string();
        // The receiver compares this with its own clock to refuse replays:
        // it is the wall clock's, whatever a test set `self.clock` to.
        let timestamp = Utc::now().timestamp().to_string();
        let signature = key.clone().sign(&id, &timestamp, &payload);
        let mut request = Request::new(Full::new(Bytes::from(payload)));
        *request.method_mut() = Method::POST;
        let headers = request.headers_mut();
        headers.reserve(7);
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(USER_AGENT, HeaderValue::from_static(USER_AGENT_VALUE));
        // reqwest's default, kept so that receivers see the same headers.
        headers.insert(ACCEPT, HeaderValue::from_static("*/*"));
        // Owned strings become header values without a copy.
        for (name, value) in [
            (WEBHOOK_ID, id),
            (WEBHOOK_TIMESTAMP, timestamp),
            (WEBHOOK_SIGNATURE, signature),
        ] {
            headers.insert(
                name,
                HeaderValue::try_from(value)
                    .map_err(|e| NoAnswer::before_sending(e.to_string()))?,
            );
        }
        // hyper's and the connector's errors name no URL (the owner's,
        // which may carry a token).
        let response = tokio::time::timeout(self.settings.timeout, lane.send(target, request))
            .await
            .map_err(|_| NoAnswer {
                error: "operation timed out".to_string(),
                timed_out: true,
            })?
            .map_err(|e| NoAnswer {
                error: chain(&*e),
                timed_out: client::set_up_timed_out(&*e),
            })?;
        Ok(response.status())
    }

    async fn report_gauges(&self) {
        match self.store.outbox_stats().await {
            Ok(stats) => {
                metrics::gauge!("keygate_webhook_outbox_depth").set(stats.pending as f64);
                let age = stats
                    .oldest_pending
                    .map(|at| (self.clock.now() - at).num_milliseconds().max(0) as f64 / 1000.0)
                    .unwrap_or(0.0);
                metrics::gauge!("keygate_webhook_oldest_pending_seconds").set(age);
            }
            Err(error) => {
                tracing::debug!(error = %chain(&error), "cannot read the webhook outbox gauges")
            }
        }
    }

    /// Sends every due `api_key.expiring`, nearest threshold first, so that
    /// a key already inside several windows hears only the nearest.
    pub async fn warn_expiring(&self) {
        let mut thresholds: Vec<chrono::Duration> = self
            .settings
            .expiry_warnings
            .iter()
            .filter_map(|d| chrono::Duration::from_std(*d).ok())
            .collect();
        thresholds.sort();
        for (i, before) in thresholds.iter().enumerate() {
            let wider = &thresholds[i + 1..];
            // Keys inside a narrower window are that window's: a key created
            // between two passes of one round must not hear a wider warning
            // first.
            let narrower = i
                .checked_sub(1)
                .map_or(chrono::Duration::zero(), |n| thresholds[n]);
            match self
                .store
                .warn_expiring(
                    self.clock.now(),
                    narrower,
                    *before,
                    wider,
                    ACTOR,
                    WARNINGS_PER_ROUND,
                )
                .await
            {
                Ok(0) => {}
                Ok(sent) => tracing::info!(sent, ?before, "expiry warnings emitted"),
                Err(error) => {
                    tracing::warn!(error = %chain(&error), "cannot emit expiry warnings; retrying at the next round");
                    return;
                }
            }
        }
    }
}

/// Why an attempt got no HTTP answer.
struct NoAnswer {
    error: String,
    /// No connection was made, or no answer came, within the timeout: the
    /// endpoint's other deliveries in the round are not sent.
    timed_out: bool,
}

impl NoAnswer {
    /// The delivery could not be sent at all (its URL refused, its secret
    /// unreadable): nothing about the endpoint is learnt.
    fn before_sending(error: String) -> Self {
        NoAnswer {
            error,
            timed_out: false,
        }
    }
}

/// A round's outcomes, added to `keygate_webhook_deliveries_total` once per
/// outcome rather than once per delivery (each is a look-up of the labelled
/// counter).
fn count_outcomes(attempts: &[(ClaimedDelivery, AttemptOutcome)]) {
    for status in [
        DeliveryStatus::Delivered,
        DeliveryStatus::Pending,
        DeliveryStatus::Failed,
    ] {
        let count = attempts.iter().filter(|(_, o)| o.status == status).count() as u64;
        if count > 0 {
            metrics::counter!("keygate_webhook_deliveries_total", "outcome" => outcome_label(status))
                .increment(count);
        }
    }
}

fn outcome_label(status: DeliveryStatus) -> &'static str {
    match status {
        DeliveryStatus::Delivered => "delivered",
        DeliveryStatus::Pending => "retrying",
        DeliveryStatus::Failed => "failed",
    }
}

/// Requests in flight to one endpoint at once: [`IN_FLIGHT_PER_ENDPOINT`],
/// or as many as it takes for a round of `batch` deliveries to one endpoint,
/// every one of them timing out, to end a whole timeout before the `lease`
/// does (each slot's attempts run one after another; that last timeout's
/// worth is for the claim, the recording and a late timer). A lease shorter
/// than three timeouts leaves room for one attempt in turn: the whole round
/// goes at once, as before this limit.
/// A claim must not lapse while its replica is still delivering, or another
/// replica would deliver the event too.
pub fn in_flight_per_endpoint(batch: u32, timeout: Duration, lease: Duration) -> usize {
    // Timeouts that fit one after another, one timeout short of the lease.
    let in_turn = (lease.saturating_sub(timeout).as_nanos() / timeout.as_nanos().max(1)).max(1);
    let needed = u128::from(batch).div_ceil(in_turn);
    IN_FLIGHT_PER_ENDPOINT.max(usize::try_from(needed).unwrap_or(usize::MAX))
}

/// The delay before attempt `attempt + 1`: `base · 2^(attempt-1)`, capped at
/// `max`, of which a random half is kept ("equal jitter"): replicas that
/// failed together spread out, and below the cap a later delay is never
/// shorter than an earlier one.
pub fn backoff(attempt: u32, base: Duration, max: Duration, random: f64) -> Duration {
    let doubled = base.saturating_mul(1u32 << attempt.saturating_sub(1).min(30));
    let delay = doubled.min(max);
    delay / 2 + delay.mul_f64(random.clamp(0.0, 1.0) / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_round_of_timeouts_to_one_endpoint_ends_within_the_lease() {
        let s = Duration::from_secs;
        // Defaults: 10 s attempts, a 60 s lease: five in turn, so 26 at once.
        assert_eq!(in_flight_per_endpoint(128, s(10), s(60)), 26);
        // A long lease leaves the floor.
        assert_eq!(
            in_flight_per_endpoint(128, s(1), s(30)),
            IN_FLIGHT_PER_ENDPOINT
        );
        // Under three timeouts, one attempt in turn with a timeout spare:
        // the whole round at once.
        assert_eq!(in_flight_per_endpoint(128, s(10), s(11)), 128);
        assert_eq!(in_flight_per_endpoint(128, s(1), s(2)), 128);
        let just_under = Duration::from_millis(29_999);
        assert_eq!(in_flight_per_endpoint(128, s(10), just_under), 128);
        // Three timeouts: two in turn.
        assert_eq!(in_flight_per_endpoint(128, s(10), s(30)), 64);
        assert_eq!(in_flight_per_endpoint(128, s(10), s(0)), 128);
        for (batch, timeout, lease) in [(128, 10, 60), (128, 10, 30), (40, 3, 100), (128, 7, 30)] {
            let at_once = in_flight_per_endpoint(batch, s(timeout), s(lease));
            let in_turn = u64::from(batch).div_ceil(at_once as u64);
            assert!(
                at_once == batch as usize || in_turn * timeout + timeout <= lease,
                "{batch} {timeout} {lease}: {at_once}"
            );
        }
    }

    #[test]
    fn backoff_doubles_keeps_half_and_never_shrinks() {
        let base = Duration::from_secs(10);
        let max = Duration::from_secs(3600);
        assert_eq!(backoff(1, base, max, 0.0), Duration::from_secs(5));
        assert_eq!(backoff(1, base, max, 1.0), Duration::from_secs(10));
        assert_eq!(backoff(3, base, max, 0.0), Duration::from_secs(20));
        assert_eq!(backoff(40, base, max, 1.0), max);
        for attempt in 1..9 {
            assert!(backoff(attempt + 1, base, max, 0.0) >= backoff(attempt, base, max, 1.0));
        }
    }
}
