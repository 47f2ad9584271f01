//! Webhook endpoints, the outbox of deliveries, and their attempts.
//!
//! Deliveries are written by [`enqueue_event!`] inside the transaction of
//! the change they report (through `insert_audit!`), so an event exists if
//! and only if its change committed. On Postgres the dispatcher claims due
//! rows with a lease (`claim_id`, `claimed_until`; `FOR UPDATE SKIP
//! LOCKED`, so replicas never take the same row), delivers with no
//! transaction open, and records the outcome only while its claim holds:
//! a replica that dies mid-delivery leaves the row to be claimed again once
//! the lease lapses. On SQLite (one keygate process per database file) it
//! reads due rows instead, and records an outcome only while the row is as
//! it read it; a process that dies mid-delivery finds the row due again
//! when it restarts.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{
    backend::Backend, owners_audit::insert_audit, with_pool, AuditRecord, DbPool, Store,
    StoreError, StoreResult,
};
use crate::domain::webhook::{
    events_column, events_from_column, Attempt, Delivery, DeliveryStatus, Webhook,
};

pub(crate) const ENQUEUE_SQL: &str = "INSERT INTO webhook_deliveries (event_id, endpoint_id, \
     owner_id, event_type, payload, status, attempts, next_attempt_at, retry_from, created_at) \
     SELECT $1, id, owner_id, $2, $3, 'pending', 0, $4, $4, $4 FROM webhook_endpoints \
     WHERE owner_id = $5 AND enabled AND (events = '' OR events LIKE $6)";

/// Fans an event out to the owner's enabled endpoints that want it, inside
/// the transaction `$tx`.
macro_rules! enqueue_event {
    ($tx:expr, $facts:expr) => {{
        let facts: &$crate::domain::webhook::EventFacts<'_> = $facts;
        let event_type = $crate::domain::webhook::event_type_of(facts.audit_event);
        sqlx::query($crate::store::webhooks::ENQUEUE_SQL)
            .bind(facts.event_id)
            .bind(event_type)
            .bind($crate::domain::webhook::payload(facts))
            .bind(facts.at)
            .bind(facts.owner_id)
            .bind(format!("%,{event_type},%"))
            .execute(&mut *$tx)
            .await?;
    }};
}
pub(crate) use enqueue_event;

const WEBHOOK_COLUMNS: &str =
    "id, owner_id, url, events, enabled, created_at, updated_at, paused_until";

/// The deliveries due at the time bound as `$at` (a placeholder such as
/// `"$3"`) whose endpoint is enabled and not paused, each due at or before
/// `$until` (an expression; `$at` itself, or the end of the due head): the
/// claim's condition.
macro_rules! due_deliveries {
    ($at:literal, $until:expr) => {
        concat!(
            "FROM webhook_deliveries d JOIN webhook_endpoints e ON e.id = d.endpoint_id \
             WHERE d.status = 'pending' AND e.enabled AND d.next_attempt_at <= ",
            $until,
            " AND (e.paused_until IS NULL OR e.paused_until <= ",
            $at,
            ")",
            " AND (d.claimed_until IS NULL OR d.claimed_until <= ",
            $at,
            ")"
        )
    };
}

/// The outbox's due head: deliveries due at `$at`, whatever their endpoint,
/// in due order, unclaimed where `$unclaimed` says so (Postgres:
/// `unclaimed_on_postgres!`; SQLite claims nothing, and reading each
/// row's claim would cost the walk a row per entry of the index). Followed
/// by ` LIMIT 1 OFFSET n`, the due time of the head's (n+1)th delivery.
macro_rules! due_head {
    ($at:literal, $unclaimed:expr) => {
        concat!(
            "SELECT x.next_attempt_at FROM webhook_deliveries x \
             WHERE x.status = 'pending' AND x.next_attempt_at <= ",
            $at,
            $unclaimed,
            " ORDER BY x.next_attempt_at"
        )
    };
}

/// Postgres: the head's rows not claimed at `$at` by a live claim.
macro_rules! unclaimed_on_postgres {
    ($at:literal) => {
        concat!(
            " AND (x.claimed_until IS NULL OR x.claimed_until <= ",
            $at,
            ")"
        )
    };
}

/// The due time of the head's delivery at `$last` (from 0), or `$at` when
/// fewer are due: how far a round's time-ordered walk goes.
macro_rules! head_end {
    ($at:literal, $last:literal, $unclaimed:expr) => {
        concat!(
            "COALESCE((",
            due_head!($at, $unclaimed),
            " LIMIT 1 OFFSET ",
            $last,
            "), ",
            $at,
            ")"
        )
    };
}

/// Whether the head's delivery at `$last` (from 0) exists: the head is full.
macro_rules! head_full {
    ($at:literal, $last:literal, $unclaimed:expr) => {
        concat!(
            "(SELECT EXISTS (",
            due_head!($at, $unclaimed),
            " LIMIT 1 OFFSET ",
            $last,
            "))"
        )
    };
}

/// A round reads the oldest due deliveries by walking the due index in
/// time order, which is also the order they go out in. A backlog whose
/// endpoint is paused (it let an attempt time out) or disabled stays in
/// that index, due, and such a walk steps over every row of it, on every
/// round: 200,000 of them took a round's read from 0.2 ms to 120 ms
/// (BENCHMARKS.md, session 20). So the walk stops at the end of the due
/// head, the first `HEAD_ROUNDS` rounds' worth of due deliveries whatever
/// their endpoint (`d.next_attempt_at` at most the due time of the head's
/// last row, `COALESCE`d to `$at` when fewer are due), and a round that
/// finds too few there while the head is full reads each active endpoint's
/// oldest due deliveries instead (`webhook_deliveries_due_by_endpoint`): a
/// cost that follows the number of endpoints, not the backlog.
const HEAD_ROUNDS: u32 = 4;

macro_rules! claim_sql {
    ($from:expr) => {
        concat!(
            "UPDATE webhook_deliveries SET claim_id = $1, claimed_until = $2, \
             attempts = attempts + 1 WHERE (event_id, endpoint_id) IN (\
             SELECT d.event_id, d.endpoint_id ",
            $from,
            " ORDER BY d.next_attempt_at LIMIT $4 FOR UPDATE OF d SKIP LOCKED)"
        )
    };
}
/// Postgres: the due head's oldest active deliveries, claimed; rows another
/// replica is claiming are skipped, not waited for. `$5`: the head's length
/// less one.
const CLAIM_POSTGRES: &str = claim_sql!(due_deliveries!(
    "$3",
    head_end!("$3", "$5", unclaimed_on_postgres!("$3"))
));
/// Postgres: each active endpoint's oldest due deliveries (at most `$4`
/// of each), and the oldest `$4` of those claimed. The row's conditions
/// are checked again on `d`, which is what is locked: a row another
/// replica claimed meanwhile is skipped.
const CLAIM_BY_ENDPOINT_POSTGRES: &str = claim_sql!(concat!(
    "FROM webhook_endpoints e CROSS JOIN LATERAL (SELECT x.event_id, x.endpoint_id \
     FROM webhook_deliveries x WHERE x.endpoint_id = e.id AND x.status = 'pending' \
     AND x.next_attempt_at <= $3 AND (x.claimed_until IS NULL OR x.claimed_until <= $3) \
     ORDER BY x.next_attempt_at LIMIT $4) h \
     JOIN webhook_deliveries d ON d.event_id = h.event_id AND d.endpoint_id = h.endpoint_id \
     WHERE d.status = 'pending' AND e.enabled AND d.next_attempt_at <= $3 \
     AND (e.paused_until IS NULL OR e.paused_until <= $3) \
     AND (d.claimed_until IS NULL OR d.claimed_until <= $3)"
));

/// What a SQLite round reads of each due delivery ([`ClaimedRow`]); its
/// endpoint's URL and secret are read once for the round
/// ([`Store::endpoint_targets`]).
macro_rules! read_due_columns_sqlite {
    () => {
        "d.event_id, d.endpoint_id, d.payload, d.attempts + 1, d.retry_from, d.next_attempt_at"
    };
}

/// SQLite: due rows are read, not claimed. One keygate process uses a
/// database file and its dispatcher runs one round at a time, so nothing
/// else can take a row between its read and its outcome. A claim rewrote
/// every row, payload included, in a write transaction of its own each
/// round (BENCHMARKS.md, session 14). The attempt's number is the count so
/// far plus one; `next_attempt_at` comes back as the text stored, the
/// version the outcome is recorded against ([`RECORD_ATTEMPTS_SQLITE_HEAD`]).
/// Rows a claim of an older keygate still holds wait for its lease, as
/// before. The due head's oldest active deliveries; `$3`: the head's
/// length less one. Each row says too whether the head is full (one
/// evaluation for the statement), so that a round that finds some but
/// fewer than it takes needs no statement of its own to ask
/// ([`HEAD_FULL_SQLITE`]): another hop to the writer's thread and back,
/// on the replica's core, every round.
const READ_DUE_SQLITE: &str = concat!(
    "SELECT ",
    read_due_columns_sqlite!(),
    ", ",
    head_full!("$1", "$3", ""),
    " ",
    due_deliveries!("$1", head_end!("$1", "$3", "")),
    " ORDER BY d.next_attempt_at LIMIT $2"
);
/// SQLite: each active endpoint's oldest due deliveries (at most `$2` of
/// each), and the oldest `$2` of those. The subquery chooses the rows, so
/// their conditions are not repeated on `d` (repeated, they made the
/// planner build an index of its own for `d` on every read).
const READ_DUE_BY_ENDPOINT_SQLITE: &str = concat!(
    "SELECT ",
    read_due_columns_sqlite!(),
    ", FALSE FROM webhook_endpoints e JOIN webhook_deliveries d ON d.rowid IN \
     (SELECT x.rowid FROM webhook_deliveries x WHERE x.endpoint_id = e.id \
     AND x.status = 'pending' AND x.next_attempt_at <= $1 \
     AND (x.claimed_until IS NULL OR x.claimed_until <= $1) \
     ORDER BY x.next_attempt_at LIMIT $2) \
     WHERE e.enabled AND (e.paused_until IS NULL OR e.paused_until <= $1) \
     ORDER BY d.next_attempt_at LIMIT $2"
);

/// Whether the due head is full: its `$2`+1th delivery exists. Asked only
/// when a round found fewer than it could take there; if the head is
/// full, the rest of the due deliveries lie past it, behind blocked ones.
const HEAD_FULL_SQLITE: &str = concat!("SELECT ", head_full!("$1", "$2", ""));
const HEAD_FULL_POSTGRES: &str = concat!(
    "SELECT ",
    head_full!("$1", "$2", unclaimed_on_postgres!("$1"))
);

/// Whether anything is due at all, whatever its endpoint: one step into
/// the due index, locking nothing (BENCHMARKS.md, session 12). Postgres
/// only: on SQLite the round's own read of due rows is that question. A
/// due delivery of a paused or disabled endpoint makes the round run, and
/// find nothing to claim at the cost of the due head and the endpoints.
const ANY_DUE: &str = concat!(
    "SELECT EXISTS (",
    due_head!("$1", unclaimed_on_postgres!("$1")),
    ")"
);

/// Postgres: the rows a claim took, read back as a tuple, by position (a
/// derived `FromRow` looks each column up by name, per row); no `read_due`,
/// the claim guards the outcome. In no order: the dispatcher sends each
/// endpoint's share oldest event first.
const SELECT_CLAIMED: &str = "SELECT event_id, endpoint_id, payload, attempts, retry_from, \
     NULL::text, FALSE FROM webhook_deliveries WHERE claim_id = $1";

/// A round is recorded from `VALUES` lists of its rows (`o`), a few
/// statements whatever its size: a statement per delivery cost more than
/// the writes themselves (on SQLite each is a hop to the writer's worker
/// thread; BENCHMARKS.md, session 12).
///
/// Postgres: every attempt goes to `webhook_attempts`, and each outcome onto
/// its delivery while this round's claim (bound after the guard) still
/// holds it; a lapsed claim may have passed to another replica, whose
/// outcome stands. An attempt is logged only while its delivery exists (its
/// endpoint may have been deleted meanwhile).
const LOG_ATTEMPTS_POSTGRES_HEAD: &str =
    "WITH o (event_id, endpoint_id, attempt, at, status_code, latency_ms, error) AS (";
const LOG_ATTEMPTS_POSTGRES_TAIL: &str = ") INSERT INTO webhook_attempts \
     (event_id, endpoint_id, attempt, at, status_code, latency_ms, error) \
     SELECT o.event_id, o.endpoint_id, o.attempt, o.at, o.status_code, o.latency_ms, o.error \
     FROM o JOIN webhook_deliveries d ON d.event_id = o.event_id AND d.endpoint_id = o.endpoint_id \
     ON CONFLICT DO NOTHING";

/// Postgres: each outcome. The attempt's time is bound once: it is also
/// the next attempt's time (bound as NULL) of a finished delivery, and a
/// delivered one's `delivered_at`. `attempts` is the attempt's number, as
/// the claim counted it.
const RECORD_OUTCOMES_POSTGRES_HEAD: &str = "WITH o (event_id, endpoint_id, status, \
     next_attempt_at, at, status_code, error, attempt) AS (";
const RECORD_OUTCOMES_POSTGRES_TAIL: &str = ") UPDATE webhook_deliveries SET status = o.status, \
     attempts = o.attempt, next_attempt_at = COALESCE(o.next_attempt_at, o.at), \
     delivered_at = CASE WHEN o.status = 'delivered' THEN o.at END, \
     last_status_code = o.status_code, last_error = o.error, claim_id = NULL, \
     claimed_until = NULL FROM o WHERE webhook_deliveries.event_id = o.event_id \
     AND webhook_deliveries.endpoint_id = o.endpoint_id AND webhook_deliveries.claim_id = ";

/// SQLite keeps a delivery's latest attempt in its own row (`last_attempt`,
/// `last_attempt_at`, `last_status_code`, `last_latency_ms`, `last_error`)
/// and the earlier ones in `webhook_attempts`: a delivery answered at its
/// first attempt, most of them, is one row written once per round rather
/// than a row and a log entry in a transaction (the log's `INSERT` and the
/// transaction cost the writer about a fifth of its work per delivery;
/// BENCHMARKS.md, session 18). One process writes the file and its
/// dispatcher runs one round at a time, so no attempt is recorded between
/// a round's read and its record: the round's attempt is always the
/// delivery's latest. Before it replaces the row's, that one moves to the
/// log (retries only: a first attempt's row holds none). Rows written before
/// the columns existed hold none either (`last_attempt` NULL): all of
/// theirs are in the log.
const LOG_PREVIOUS_ATTEMPTS_SQLITE_HEAD: &str = "WITH o (event_id, endpoint_id) AS (";
const LOG_PREVIOUS_ATTEMPTS_SQLITE_TAIL: &str = ") INSERT INTO webhook_attempts \
     (event_id, endpoint_id, attempt, at, status_code, latency_ms, error) \
     SELECT d.event_id, d.endpoint_id, d.last_attempt, d.last_attempt_at, d.last_status_code, \
     d.last_latency_ms, d.last_error FROM o JOIN webhook_deliveries d \
     ON d.event_id = o.event_id AND d.endpoint_id = o.endpoint_id \
     WHERE d.last_attempt IS NOT NULL ON CONFLICT DO NOTHING";

/// SQLite: each attempt into its delivery's row, and its outcome too while
/// the due time is the one the round read: a `RedeliverWebhook` meanwhile
/// (due now, a fresh retry window) wins over the outcome, as a redelivery
/// drops a claim on Postgres; the attempt is recorded and its number spent
/// either way. One statement, so a round of first attempts needs no
/// transaction. (Every right-hand side reads the row as it was.)
const RECORD_ATTEMPTS_SQLITE_HEAD: &str = "WITH o (event_id, endpoint_id, status, \
     next_attempt_at, at, status_code, error, attempt, read_due, latency_ms) AS (";
const RECORD_ATTEMPTS_SQLITE_TAIL: &str = ") UPDATE webhook_deliveries SET \
     attempts = o.attempt, last_attempt = o.attempt, last_attempt_at = o.at, \
     last_status_code = o.status_code, last_latency_ms = o.latency_ms, last_error = o.error, \
     status = CASE WHEN webhook_deliveries.next_attempt_at = o.read_due \
       THEN o.status ELSE webhook_deliveries.status END, \
     next_attempt_at = CASE WHEN webhook_deliveries.next_attempt_at = o.read_due \
       THEN COALESCE(o.next_attempt_at, o.at) ELSE webhook_deliveries.next_attempt_at END, \
     delivered_at = CASE WHEN webhook_deliveries.next_attempt_at = o.read_due \
       THEN CASE WHEN o.status = 'delivered' THEN o.at END ELSE webhook_deliveries.delivered_at END, \
     claim_id = NULL, claimed_until = NULL \
     FROM o WHERE webhook_deliveries.event_id = o.event_id \
     AND webhook_deliveries.endpoint_id = o.endpoint_id";

/// Deliveries a round sent nothing for, because their endpoint stopped
/// answering in that round: due again at `o.next_attempt_at`, with no
/// attempt counted (the Postgres claim counted one: `attempt - 1` takes it
/// back; on SQLite it is the count as read) and no claim held; under a
/// guard per backend.
const PUT_BACK_HEAD: &str =
    "WITH o (event_id, endpoint_id, next_attempt_at, attempt, read_due) AS (";
const PUT_BACK_TAIL: &str = ") UPDATE webhook_deliveries SET next_attempt_at = o.next_attempt_at, \
     attempts = o.attempt - 1, claim_id = NULL, claimed_until = NULL FROM o \
     WHERE webhook_deliveries.event_id = o.event_id \
     AND webhook_deliveries.endpoint_id = o.endpoint_id AND ";

/// An endpoint that let an attempt time out: none of its deliveries is due
/// before `$1` (`due_deliveries!`). One row per endpoint, whatever its
/// backlog: its deliveries' own due times are left as they are.
/// A later pause stands: two replicas pausing one endpoint keep the longer.
const PAUSE_ENDPOINT: &str = "UPDATE webhook_endpoints SET paused_until = CASE \
     WHEN paused_until IS NULL OR paused_until < $1 THEN $1 ELSE paused_until END WHERE id = $2";
/// An owner's redelivery or test event goes out now, not after a pause,
/// and so do the endpoint's deliveries whose own due time has come (those
/// a round put back keep theirs); an update of the endpoint clears the
/// pause too.
const UNPAUSE_ENDPOINT: &str =
    "UPDATE webhook_endpoints SET paused_until = NULL WHERE id = $1 AND paused_until IS NOT NULL";

/// Put back while this round's claim holds the delivery (Postgres; the
/// claim is bound after it), or while no attempt was counted since the
/// read and the due time is the one read (SQLite).
const PUT_BACK_POSTGRES_GUARD: &str = "webhook_deliveries.claim_id = ";
const PUT_BACK_SQLITE_GUARD: &str = "webhook_deliveries.attempts = o.attempt - 1 \
     AND webhook_deliveries.next_attempt_at = o.read_due";

/// An outcome's next attempt time as bound: NULL for a finished delivery,
/// whose next attempt time is the attempt's own (bound once, as `at`).
fn next_attempt_bound(outcome: &AttemptOutcome) -> Option<DateTime<Utc>> {
    (outcome.next_attempt_at != outcome.at).then_some(outcome.next_attempt_at)
}

/// An attempt's latency as bound (a signed column on both backends).
fn latency_bound(outcome: &AttemptOutcome) -> i64 {
    i64::try_from(outcome.latency_ms).unwrap_or(i64::MAX)
}

/// Rows per recording statement: up to 10 parameters each, well inside both
/// backends' limits (SQLite 32,766, Postgres 65,535).
const RECORD_ROWS_PER_STATEMENT: usize = 256;

const DELIVERY_COLUMNS: &str = "event_id, endpoint_id, event_type, payload, status, attempts, \
     next_attempt_at, last_status_code, last_error, created_at, delivered_at, last_attempt, \
     last_attempt_at, last_latency_ms";

/// Keys expiring within a warning window that have not had that warning.
const SELECT_EXPIRING: &str =
    "SELECT k.id, k.owner_id, k.key_prefix, k.expires_at FROM api_keys k \
     WHERE k.deleted_at IS NULL AND k.revoked_at IS NULL AND k.expires_at > $1 \
     AND k.expires_at <= $2 AND NOT EXISTS (SELECT 1 FROM key_expiry_warnings w \
     WHERE w.key_id = k.id AND w.before_seconds = $3) ORDER BY k.expires_at LIMIT $4";

const MARK_WARNED: &str = "INSERT INTO key_expiry_warnings (key_id, before_seconds, at) \
     VALUES ($1, $2, $3) ON CONFLICT DO NOTHING";

#[derive(sqlx::FromRow)]
struct WebhookRow {
    id: Uuid,
    owner_id: String,
    url: String,
    events: String,
    enabled: bool,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    paused_until: Option<DateTime<Utc>>,
}

impl From<WebhookRow> for Webhook {
    fn from(row: WebhookRow) -> Self {
        Webhook {
            id: row.id,
            owner_id: row.owner_id,
            url: row.url,
            events: events_from_column(&row.events),
            enabled: row.enabled,
            created_at: row.created_at,
            updated_at: row.updated_at,
            paused_until: row.paused_until,
        }
    }
}

#[derive(sqlx::FromRow)]
struct DeliveryRow {
    event_id: Uuid,
    endpoint_id: Uuid,
    event_type: String,
    payload: String,
    status: String,
    attempts: i32,
    next_attempt_at: DateTime<Utc>,
    last_status_code: Option<i32>,
    last_error: Option<String>,
    created_at: DateTime<Utc>,
    delivered_at: Option<DateTime<Utc>>,
    last_attempt: Option<i32>,
    last_attempt_at: Option<DateTime<Utc>>,
    last_latency_ms: Option<i64>,
}

impl DeliveryRow {
    /// The delivery, with its attempts: those of the log (read in order),
    /// then the row's when it holds one, the latest
    /// ([`LOG_PREVIOUS_ATTEMPTS_SQLITE_HEAD`]; on Postgres the row holds none).
    fn into_delivery(self, mut attempt_log: Vec<Attempt>) -> StoreResult<Delivery> {
        if let (Some(attempt), Some(at)) = (self.last_attempt, self.last_attempt_at) {
            attempt_log.push(Attempt {
                attempt: u32::try_from(attempt).unwrap_or_default(),
                at,
                status_code: self.last_status_code.and_then(|c| u16::try_from(c).ok()),
                latency_ms: self
                    .last_latency_ms
                    .and_then(|ms| u64::try_from(ms).ok())
                    .unwrap_or_default(),
                error: self.last_error.clone(),
            });
        }
        Ok(Delivery {
            status: DeliveryStatus::parse(&self.status)
                .ok_or_else(|| StoreError::Corrupt(format!("delivery status {:?}", self.status)))?,
            event_id: self.event_id,
            webhook_id: self.endpoint_id,
            event_type: self.event_type,
            payload: self.payload,
            attempts: u32::try_from(self.attempts).unwrap_or_default(),
            next_attempt_at: self.next_attempt_at,
            last_status_code: self.last_status_code.and_then(|c| u16::try_from(c).ok()),
            last_error: self.last_error,
            created_at: self.created_at,
            delivered_at: self.delivered_at,
            attempt_log,
        })
    }
}

#[derive(sqlx::FromRow)]
struct AttemptRow {
    attempt: i32,
    at: DateTime<Utc>,
    status_code: Option<i32>,
    latency_ms: i64,
    error: Option<String>,
}

impl From<AttemptRow> for Attempt {
    fn from(row: AttemptRow) -> Self {
        Attempt {
            attempt: u32::try_from(row.attempt).unwrap_or_default(),
            at: row.at,
            status_code: row.status_code.and_then(|c| u16::try_from(c).ok()),
            latency_ms: u64::try_from(row.latency_ms).unwrap_or_default(),
            error: row.error,
        }
    }
}

/// A new endpoint: its fields and its sealed signing secret.
#[derive(Debug, Clone)]
pub struct NewWebhook {
    pub webhook: Webhook,
    pub sealed_secret: Vec<u8>,
}

/// Fields an endpoint update sets; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WebhookChanges {
    pub url: Option<String>,
    pub events: Option<Vec<String>>,
    pub enabled: Option<bool>,
}

/// A delivery this replica has claimed (Postgres) or found due (SQLite):
/// what it needs to send it.
#[derive(Clone)]
pub struct ClaimedDelivery {
    pub event_id: Uuid,
    pub endpoint_id: Uuid,
    pub payload: String,
    /// This attempt's number, counting from 1.
    pub attempts: i32,
    pub retry_from: DateTime<Utc>,
    /// SQLite: `next_attempt_at` as the text read, which the outcome is
    /// recorded against. Postgres guards with the claim: `None`.
    read_due: Option<String>,
}

/// Without the payload.
impl std::fmt::Debug for ClaimedDelivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClaimedDelivery")
            .field("event_id", &self.event_id)
            .field("endpoint_id", &self.endpoint_id)
            .field("attempts", &self.attempts)
            .field("retry_from", &self.retry_from)
            .finish_non_exhaustive()
    }
}

/// [`SELECT_CLAIMED`]'s and [`READ_DUE_SQLITE`]'s columns, in order; then
/// `read_due` (NULL from Postgres), and whether the due head is full (read
/// by [`READ_DUE_SQLITE`]; the other reads say false).
type ClaimedRow = (Uuid, Uuid, String, i32, DateTime<Utc>, Option<String>, bool);

impl From<ClaimedRow> for ClaimedDelivery {
    fn from(row: ClaimedRow) -> Self {
        let (event_id, endpoint_id, payload, attempts, retry_from, read_due, _) = row;
        ClaimedDelivery {
            event_id,
            endpoint_id,
            payload,
            attempts,
            retry_from,
            read_due,
        }
    }
}

/// Where a round's deliveries to an endpoint go and how they are signed:
/// its row's URL and sealed secret ([`Store::endpoint_targets`]).
#[derive(Clone)]
pub struct EndpointTarget {
    pub id: Uuid,
    pub url: String,
    pub sealed_secret: Vec<u8>,
}

/// Without the URL (an owner's, which may carry a token) or the sealed
/// secret.
impl std::fmt::Debug for EndpointTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointTarget")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// What became of an attempt, as the dispatcher decided.
#[derive(Debug, Clone)]
pub struct AttemptOutcome {
    pub at: DateTime<Utc>,
    pub status_code: Option<u16>,
    pub latency_ms: u64,
    pub error: Option<String>,
    pub status: DeliveryStatus,
    /// When the next attempt is due (pending only).
    pub next_attempt_at: DateTime<Utc>,
}

/// An endpoint that let an attempt time out in a round: none of its
/// deliveries is due before `until`.
#[derive(Debug, Clone, Copy)]
pub struct EndpointPause {
    pub endpoint_id: Uuid,
    pub until: DateTime<Utc>,
}

/// Pending deliveries: how many, and since when the oldest waits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OutboxStats {
    pub pending: i64,
    pub oldest_pending: Option<DateTime<Utc>>,
}

impl Store {
    /// Stores an endpoint unless the owner already holds `limit` of them.
    pub async fn insert_webhook(&self, new: &NewWebhook, limit: u32) -> StoreResult<Webhook> {
        let hook = &new.webhook;
        with_pool!(&self.main, pool => {
            let mut tx = pool.begin_write().await?;
            pool.serialize_owner(&mut tx, &hook.owner_id).await?;
            let held: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM webhook_endpoints WHERE owner_id = $1")
                .bind(&hook.owner_id)
                .fetch_one(&mut *tx)
                .await?;
            if held >= i64::from(limit) {
                return Err(StoreError::OwnerWebhookLimit { limit });
            }
            sqlx::query(
                "INSERT INTO webhook_endpoints (id, owner_id, url, events, enabled, sealed_secret, \
                 created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $7)",
            )
            .bind(hook.id)
            .bind(&hook.owner_id)
            .bind(&hook.url)
            .bind(events_column(&hook.events))
            .bind(hook.enabled)
            .bind(&new.sealed_secret)
            .bind(hook.created_at)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
        });
        self.get_webhook(hook.id).await
    }

    pub async fn get_webhook(&self, id: Uuid) -> StoreResult<Webhook> {
        let sql = format!("SELECT {WEBHOOK_COLUMNS} FROM webhook_endpoints WHERE id = $1");
        with_pool!(&self.main, pool => {
            sqlx::query_as::<_, WebhookRow>(&sql)
                .bind(id)
                .fetch_optional(pool)
                .await?
                .map(Webhook::from)
                .ok_or(StoreError::NotFound)
        })
    }

    /// The owner's endpoints, newest first.
    pub async fn list_webhooks(&self, owner_id: &str) -> StoreResult<Vec<Webhook>> {
        let sql = format!(
            "SELECT {WEBHOOK_COLUMNS} FROM webhook_endpoints WHERE owner_id = $1 \
             ORDER BY created_at DESC, id DESC"
        );
        with_pool!(&self.main, pool => {
            Ok(sqlx::query_as::<_, WebhookRow>(&sql)
                .bind(owner_id)
                .fetch_all(pool)
                .await?
                .into_iter()
                .map(Webhook::from)
                .collect())
        })
    }

    pub async fn update_webhook(
        &self,
        id: Uuid,
        changes: &WebhookChanges,
        at: DateTime<Utc>,
    ) -> StoreResult<Webhook> {
        with_pool!(&self.main, pool => {
            let updated = sqlx::query(
                "UPDATE webhook_endpoints SET url = COALESCE($2, url), \
                 events = COALESCE($3, events), enabled = COALESCE($4, enabled), updated_at = $5, \
                 paused_until = NULL WHERE id = $1",
            )
            .bind(id)
            .bind(changes.url.as_deref())
            .bind(changes.events.as_deref().map(events_column))
            .bind(changes.enabled)
            .bind(at)
            .execute(pool)
            .await?;
            if updated.rows_affected() == 0 {
                return Err(StoreError::NotFound);
            }
        });
        self.get_webhook(id).await
    }

    /// Deletes an endpoint with its deliveries and their attempts.
    pub async fn delete_webhook(&self, id: Uuid) -> StoreResult<()> {
        with_pool!(&self.main, pool => {
            let deleted = sqlx::query("DELETE FROM webhook_endpoints WHERE id = $1")
                .bind(id)
                .execute(pool)
                .await?;
            if deleted.rows_affected() == 0 {
                return Err(StoreError::NotFound);
            }
        });
        Ok(())
    }

    /// An endpoint's deliveries, newest first, after the `(created_at,
    /// event_id)` cursor, each with its attempts.
    pub async fn list_deliveries(
        &self,
        webhook_id: Uuid,
        after: Option<(DateTime<Utc>, Uuid)>,
        limit: u32,
    ) -> StoreResult<Vec<Delivery>> {
        let rows = with_pool!(&self.main, pool => {
            let mut query = sqlx::QueryBuilder::new(format!(
                "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE endpoint_id = "
            ));
            query.push_bind(webhook_id);
            if let Some((at, id)) = after {
                query.push(" AND (created_at < ").push_bind(at)
                    .push(" OR (created_at = ").push_bind(at)
                    .push(" AND event_id < ").push_bind(id).push("))");
            }
            query.push(" ORDER BY created_at DESC, event_id DESC LIMIT ").push_bind(i64::from(limit));
            query.build_query_as::<DeliveryRow>().fetch_all(pool).await?
        });
        let mut deliveries = Vec::with_capacity(rows.len());
        for row in rows {
            let attempts = self.attempts(row.event_id, row.endpoint_id).await?;
            deliveries.push(row.into_delivery(attempts)?);
        }
        Ok(deliveries)
    }

    pub async fn get_delivery(&self, event_id: Uuid, webhook_id: Uuid) -> StoreResult<Delivery> {
        let sql = format!(
            "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE event_id = $1 AND endpoint_id = $2"
        );
        let row = with_pool!(&self.main, pool => {
            sqlx::query_as::<_, DeliveryRow>(&sql)
                .bind(event_id)
                .bind(webhook_id)
                .fetch_optional(pool)
                .await?
        })
        .ok_or(StoreError::NotFound)?;
        let attempts = self.attempts(event_id, webhook_id).await?;
        row.into_delivery(attempts)
    }

    async fn attempts(&self, event_id: Uuid, webhook_id: Uuid) -> StoreResult<Vec<Attempt>> {
        with_pool!(&self.main, pool => {
            Ok(sqlx::query_as::<_, AttemptRow>(
                "SELECT attempt, at, status_code, latency_ms, error FROM webhook_attempts \
                 WHERE event_id = $1 AND endpoint_id = $2 ORDER BY attempt",
            )
            .bind(event_id)
            .bind(webhook_id)
            .fetch_all(pool)
            .await?
            .into_iter()
            .map(Attempt::from)
            .collect())
        })
    }

    /// Puts a delivery back in the queue, due now, with a fresh retry
    /// window. The `webhook-id` stays the same.
    pub async fn redeliver(
        &self,
        event_id: Uuid,
        webhook_id: Uuid,
        at: DateTime<Utc>,
    ) -> StoreResult<Delivery> {
        with_pool!(&self.main, pool => {
            let updated = sqlx::query(
                "UPDATE webhook_deliveries SET status = 'pending', next_attempt_at = $3, \
                 retry_from = $3, claim_id = NULL, claimed_until = NULL \
                 WHERE event_id = $1 AND endpoint_id = $2",
            )
            .bind(event_id)
            .bind(webhook_id)
            .bind(at)
            .execute(pool)
            .await?;
            if updated.rows_affected() == 0 {
                return Err(StoreError::NotFound);
            }
            sqlx::query(UNPAUSE_ENDPOINT).bind(webhook_id).execute(pool).await?;
        });
        self.get_delivery(event_id, webhook_id).await
    }

    /// Queues one event for one endpoint only (`webhook.test`).
    pub async fn enqueue_for_endpoint(
        &self,
        webhook_id: Uuid,
        event_id: Uuid,
        event_type: &str,
        payload: &str,
        at: DateTime<Utc>,
    ) -> StoreResult<Delivery> {
        with_pool!(&self.main, pool => {
            sqlx::query(
                "INSERT INTO webhook_deliveries (event_id, endpoint_id, owner_id, event_type, payload, \
                 status, attempts, next_attempt_at, retry_from, created_at) \
                 SELECT $1, id, owner_id, $2, $3, 'pending', 0, $4, $4, $4 FROM webhook_endpoints \
                 WHERE id = $5",
            )
            .bind(event_id)
            .bind(event_type)
            .bind(payload)
            .bind(at)
            .bind(webhook_id)
            .execute(pool)
            .await?;
            sqlx::query(UNPAUSE_ENDPOINT).bind(webhook_id).execute(pool).await?;
        });
        self.get_delivery(event_id, webhook_id).await
    }

    /// Whether anything is due at `now`, whatever its endpoint: when this
    /// says no, [`Store::claim_deliveries`] would find nothing.
    pub async fn any_due(&self, now: DateTime<Utc>) -> StoreResult<bool> {
        with_pool!(&self.main, pool => {
            Ok(sqlx::query_scalar::<_, bool>(ANY_DUE).bind(now).fetch_one(pool).await?)
        })
    }

    /// The `limit` deliveries due at `now` that fell due first, of enabled
    /// endpoints that are not paused. On Postgres they are claimed for
    /// `lease` (until `lease_until`) under `claim_id`, a statement at a
    /// time: no transaction stays open after it. On SQLite they are read
    /// ([`READ_DUE_SQLITE`]); the claim's arguments are not used. Taken from
    /// the due head, or, when that is full and holds too few of them,
    /// endpoint by endpoint ([`HEAD_ROUNDS`]).
    pub async fn claim_deliveries(
        &self,
        claim_id: Uuid,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: u32,
    ) -> StoreResult<Vec<ClaimedDelivery>> {
        let head_last = i64::from(limit.saturating_mul(HEAD_ROUNDS)) - 1;
        let limit = i64::from(limit);
        match &self.main {
            DbPool::Postgres(pool) => {
                let mut claimed = sqlx::query(CLAIM_POSTGRES)
                    .bind(claim_id)
                    .bind(lease_until)
                    .bind(now)
                    .bind(limit)
                    .bind(head_last)
                    .execute(pool)
                    .await?
                    .rows_affected();
                let claimed_now = i64::try_from(claimed).unwrap_or(limit);
                let short = limit - claimed_now;
                // Those just claimed are no longer due to anyone: the head
                // was full if what is left of it still is.
                if short > 0 && self.head_full(now, head_last - claimed_now).await? {
                    claimed += sqlx::query(CLAIM_BY_ENDPOINT_POSTGRES)
                        .bind(claim_id)
                        .bind(lease_until)
                        .bind(now)
                        .bind(short)
                        .execute(pool)
                        .await?
                        .rows_affected();
                }
                if claimed == 0 {
                    return Ok(Vec::new());
                }
                let rows: Vec<ClaimedRow> = sqlx::query_as(SELECT_CLAIMED)
                    .bind(claim_id)
                    .fetch_all(pool)
                    .await?;
                Ok(rows.into_iter().map(ClaimedDelivery::from).collect())
            }
            DbPool::Sqlite(pool) => {
                let mut rows: Vec<ClaimedRow> = sqlx::query_as(READ_DUE_SQLITE)
                    .bind(now)
                    .bind(limit)
                    .bind(head_last)
                    .fetch_all(pool)
                    .await?;
                let head_full = match rows.first() {
                    Some(row) => row.6,
                    None => self.head_full(now, head_last).await?,
                };
                if (rows.len() as i64) < limit && head_full {
                    // Every active endpoint's oldest: those of the head
                    // among them.
                    rows = sqlx::query_as(READ_DUE_BY_ENDPOINT_SQLITE)
                        .bind(now)
                        .bind(limit)
                        .fetch_all(pool)
                        .await?;
                }
                Ok(rows.into_iter().map(ClaimedDelivery::from).collect())
            }
        }
    }

    /// The URL and sealed secret of each endpoint of `ids` that still
    /// exists, read once for a round's deliveries to them rather than with
    /// each delivery: two columns a row less to copy out of the database,
    /// and each endpoint prepared once a round rather than looked up per
    /// delivery, 4,278 fewer instructions a delivery together
    /// (BENCHMARKS.md, session 22).
    pub async fn endpoint_targets(&self, ids: &[Uuid]) -> StoreResult<Vec<EndpointTarget>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        with_pool!(&self.main, pool => {
            let mut select = sqlx::QueryBuilder::new(
                "SELECT id, url, sealed_secret FROM webhook_endpoints WHERE id IN (",
            );
            let mut list = select.separated(", ");
            for id in ids {
                list.push_bind(*id);
            }
            select.push(")");
            let rows: Vec<(Uuid, String, Vec<u8>)> = select.build_query_as().fetch_all(pool).await?;
            Ok(rows
                .into_iter()
                .map(|(id, url, sealed_secret)| EndpointTarget { id, url, sealed_secret })
                .collect())
        })
    }

    /// Whether the due head, up to its delivery at `head_last` (from 0),
    /// is full.
    async fn head_full(&self, now: DateTime<Utc>, head_last: i64) -> StoreResult<bool> {
        let sql = if self.is_postgres() {
            HEAD_FULL_POSTGRES
        } else {
            HEAD_FULL_SQLITE
        };
        with_pool!(&self.main, pool => {
            Ok(sqlx::query_scalar::<_, bool>(sql).bind(now).bind(head_last).fetch_one(pool).await?)
        })
    }

    /// Records a round's attempts, always, and each outcome on its delivery
    /// while the delivery is still as the round found it: on Postgres while
    /// `claim_id` holds it (a lapsed claim may have passed to another
    /// replica, whose outcome then stands), on SQLite while no redelivery
    /// changed it. The deliveries in `put_back` were not attempted: each is
    /// due again at the time given, its attempt not counted, under the
    /// same guard. Each endpoint of `pauses` is paused ([`EndpointPause`])
    /// first, in the order of their ids: a transaction that deletes an
    /// endpoint locks its row before its deliveries', and two replicas
    /// pausing the same endpoints lock them in one order, so neither can
    /// wait on the other in a cycle (Postgres). One transaction for the
    /// round, or on SQLite a single statement for a round of first attempts
    /// with nothing put back or paused ([`RECORD_ATTEMPTS_SQLITE_HEAD`]): a
    /// write per delivery would cost the replica's Check path a commit per
    /// event (docs/behaviour.md §9).
    pub async fn record_attempts(
        &self,
        claim_id: Uuid,
        attempts: &[(ClaimedDelivery, AttemptOutcome)],
        put_back: &[(ClaimedDelivery, DateTime<Utc>)],
        pauses: &[EndpointPause],
    ) -> StoreResult<()> {
        if attempts.is_empty() && put_back.is_empty() && pauses.is_empty() {
            return Ok(());
        }
        let mut pauses = pauses.to_vec();
        pauses.sort_by_key(|pause| pause.endpoint_id);
        // The pauses, first in the round's transaction `$tx`.
        macro_rules! pause_endpoints {
            ($tx:expr) => {
                for pause in &pauses {
                    sqlx::query(PAUSE_ENDPOINT)
                        .bind(pause.until)
                        .bind(pause.endpoint_id)
                        .execute(&mut *$tx)
                        .await?;
                }
            };
        }
        // An outcome's first columns, as both backends' `o` lists them
        // (`RECORD_OUTCOMES_POSTGRES_HEAD`, `RECORD_ATTEMPTS_SQLITE_HEAD`).
        macro_rules! bind_outcome {
            ($row:expr, $claimed:expr, $outcome:expr) => {
                $row.push_bind($claimed.event_id)
                    .push_bind($claimed.endpoint_id)
                    .push_bind($outcome.status.as_str())
                    .push_bind(next_attempt_bound($outcome))
                    .push_bind($outcome.at)
                    .push_bind($outcome.status_code.map(i32::from))
                    .push_bind($outcome.error.as_deref())
                    .push_bind($claimed.attempts)
            };
        }
        // The put-backs, last in `$tx`, under `$guard` (on Postgres with
        // the claim `$claim` bound after it).
        macro_rules! put_back {
            ($tx:expr, $guard:expr, $claim:expr) => {
                for chunk in put_back.chunks(RECORD_ROWS_PER_STATEMENT) {
                    let mut update = sqlx::QueryBuilder::new(PUT_BACK_HEAD);
                    update.push_values(chunk, |mut row, (claimed, due)| {
                        row.push_bind(claimed.event_id)
                            .push_bind(claimed.endpoint_id)
                            .push_bind(*due)
                            .push_bind(claimed.attempts)
                            .push_bind(claimed.read_due.as_deref());
                    });
                    update.push(PUT_BACK_TAIL).push($guard);
                    if let Some(claim) = $claim {
                        update.push_bind(claim);
                    }
                    update.build().execute(&mut *$tx).await?;
                }
            };
        }
        match &self.main {
            DbPool::Postgres(pool) => {
                let mut tx = pool.begin_write().await?;
                pause_endpoints!(tx);
                for chunk in attempts.chunks(RECORD_ROWS_PER_STATEMENT) {
                    let mut insert = sqlx::QueryBuilder::new(LOG_ATTEMPTS_POSTGRES_HEAD);
                    insert.push_values(chunk, |mut row, (claimed, outcome)| {
                        row.push_bind(claimed.event_id)
                            .push_bind(claimed.endpoint_id)
                            .push_bind(claimed.attempts)
                            .push_bind(outcome.at)
                            .push_bind(outcome.status_code.map(i32::from))
                            .push_bind(latency_bound(outcome))
                            .push_bind(outcome.error.as_deref());
                    });
                    insert.push(LOG_ATTEMPTS_POSTGRES_TAIL);
                    insert.build().execute(&mut *tx).await?;
                    let mut update = sqlx::QueryBuilder::new(RECORD_OUTCOMES_POSTGRES_HEAD);
                    update.push_values(chunk, |mut row, (claimed, outcome)| {
                        bind_outcome!(row, claimed, outcome);
                    });
                    update
                        .push(RECORD_OUTCOMES_POSTGRES_TAIL)
                        .push_bind(claim_id);
                    update.build().execute(&mut *tx).await?;
                }
                put_back!(tx, PUT_BACK_POSTGRES_GUARD, Some(claim_id));
                tx.commit().await?;
            }
            DbPool::Sqlite(pool) => {
                // Each chunk's attempts into their rows, the retries'
                // earlier attempts moved to the log first.
                macro_rules! record_chunk {
                    ($executor:expr, $chunk:expr) => {{
                        let retries: Vec<_> = $chunk
                            .iter()
                            .filter(|(claimed, _)| claimed.attempts > 1)
                            .collect();
                        if !retries.is_empty() {
                            let mut insert =
                                sqlx::QueryBuilder::new(LOG_PREVIOUS_ATTEMPTS_SQLITE_HEAD);
                            insert.push_values(retries, |mut row, (claimed, _)| {
                                row.push_bind(claimed.event_id)
                                    .push_bind(claimed.endpoint_id);
                            });
                            insert.push(LOG_PREVIOUS_ATTEMPTS_SQLITE_TAIL);
                            insert.build().execute(&mut *$executor).await?;
                        }
                        let mut update = sqlx::QueryBuilder::new(RECORD_ATTEMPTS_SQLITE_HEAD);
                        update.push_values($chunk, |mut row, (claimed, outcome)| {
                            bind_outcome!(row, claimed, outcome)
                                .push_bind(claimed.read_due.as_deref())
                                .push_bind(latency_bound(outcome));
                        });
                        update.push(RECORD_ATTEMPTS_SQLITE_TAIL);
                        update.build().execute(&mut *$executor).await?;
                    }};
                }
                let one_statement = pauses.is_empty()
                    && put_back.is_empty()
                    && attempts.len() <= RECORD_ROWS_PER_STATEMENT
                    && attempts.iter().all(|(claimed, _)| claimed.attempts <= 1);
                if one_statement {
                    let mut connection = pool.acquire().await?;
                    record_chunk!(connection, attempts);
                    return Ok(());
                }
                let mut tx = pool.begin_write().await?;
                pause_endpoints!(tx);
                for chunk in attempts.chunks(RECORD_ROWS_PER_STATEMENT) {
                    record_chunk!(tx, chunk);
                }
                put_back!(tx, PUT_BACK_SQLITE_GUARD, None::<Uuid>);
                tx.commit().await?;
            }
        }
        Ok(())
    }

    pub async fn outbox_stats(&self) -> StoreResult<OutboxStats> {
        with_pool!(&self.main, pool => {
            let pending: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM webhook_deliveries WHERE status = 'pending'",
            )
            .fetch_one(pool)
            .await?;
            let oldest_pending: Option<DateTime<Utc>> = sqlx::query_scalar(
                "SELECT created_at FROM webhook_deliveries WHERE status = 'pending' \
                 ORDER BY created_at LIMIT 1",
            )
            .fetch_optional(pool)
            .await?;
            Ok(OutboxStats { pending, oldest_pending })
        })
    }

    /// Emits `api_key.expiring` for up to `limit` keys that expire more than
    /// `narrower` (the next narrower warning's window) and at most `before`
    /// after `now` and have not had this warning, each with its audit
    /// row and webhooks in one transaction. Every wider warning (in
    /// `wider`) is marked as had too, so a key created close to its expiry
    /// hears only the nearest warning. Returns how many warnings were sent.
    pub async fn warn_expiring(
        &self,
        now: DateTime<Utc>,
        narrower: chrono::Duration,
        before: chrono::Duration,
        wider: &[chrono::Duration],
        actor: &str,
        limit: u32,
    ) -> StoreResult<u64> {
        let before_seconds = before.num_seconds();
        let due: Vec<(Uuid, String, String, DateTime<Utc>)> = with_pool!(&self.main, pool => {
            sqlx::query_as(SELECT_EXPIRING)
                .bind(now + narrower)
                .bind(now + before)
                .bind(before_seconds)
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await?
        });
        let mut sent = 0;
        for (key_id, owner_id, key_prefix, expires_at) in due {
            let audit = AuditRecord::new("api_key.expiring", actor)
                .with("expires_at", expires_at.to_rfc3339())
                .with(
                    "warning_before",
                    humantime::format_duration(before.to_std().unwrap_or_default()).to_string(),
                );
            let first = with_pool!(&self.main, pool => {
                let mut tx = pool.begin_write().await?;
                let marked = sqlx::query(MARK_WARNED)
                    .bind(key_id)
                    .bind(before_seconds)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                if marked.rows_affected() == 0 {
                    false
                } else {
                    for wider in wider {
                        sqlx::query(MARK_WARNED)
                            .bind(key_id)
                            .bind(wider.num_seconds())
                            .bind(now)
                            .execute(&mut *tx)
                            .await?;
                    }
                    insert_audit!(tx, &audit, Some(key_id), &owner_id, Some(&key_prefix), now);
                    tx.commit().await?;
                    true
                }
            });
            if first {
                sent += 1;
            }
        }
        Ok(sent)
    }
}
