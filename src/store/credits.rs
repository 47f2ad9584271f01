//! Credit leases (docs/behaviour.md, "Credits"): one conditional UPDATE …
//! RETURNING takes a block of a key's credits, so that no two replicas can
//! ever hold the same credit; a return gives back what was not spent.
//!
//! The statements are plain integer arithmetic on whole seconds since the
//! Unix epoch, so one text serves both stores. `credits_last_lease` carries
//! the amount granted out of the UPDATE, since RETURNING sees only the new
//! row.

use uuid::Uuid;

use super::{with_pool, Store, StoreResult};

/// What one replica may spend of a key until `period_end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub granted: u64,
    /// Changes when KeyAdmin sets the credits: older leases are void.
    pub generation: i64,
    /// Start of the refill period the lease belongs to (`-1`: no refill).
    pub period_start: i64,
    /// When the lease stops being spendable (the next refill); `i64::MAX`
    /// without a refill.
    pub period_end: i64,
}

/// The key's credits as available now: refilled if a refill is due.
macro_rules! available {
    () => {
        "(CASE WHEN credits_refill_interval IS NOT NULL \
           AND credits_refilled_at + credits_refill_interval <= $2 \
         THEN credits_refill_amount ELSE credits_remaining END)"
    };
}

macro_rules! granted {
    () => {
        concat!(
            "(CASE WHEN ",
            available!(),
            " < $3 THEN ",
            available!(),
            " ELSE $3 END)"
        )
    };
}

/// `$1` key, `$2` now (epoch seconds), `$3` credits wanted. A refill that is
/// due moves `credits_refilled_at` to the start of the current period.
const LEASE: &str = concat!(
    "UPDATE api_keys SET credits_last_lease = ",
    granted!(),
    ", credits_remaining = ",
    available!(),
    " - ",
    granted!(),
    ", credits_refilled_at = CASE WHEN credits_refill_interval IS NOT NULL \
       AND credits_refilled_at + credits_refill_interval <= $2 \
     THEN credits_refilled_at + (($2 - credits_refilled_at) / credits_refill_interval) \
       * credits_refill_interval ELSE credits_refilled_at END \
     WHERE id = $1 AND credits_remaining IS NOT NULL \
     RETURNING credits_last_lease, credits_generation, credits_refilled_at, credits_refill_interval"
);

/// Gives `$2` back, unless the credits were set anew (`$3` generation) or
/// refilled (`$4` period start) since the lease: then they are void.
const RETURN: &str = "UPDATE api_keys SET credits_remaining = credits_remaining + $2 \
     WHERE id = $1 AND credits_remaining IS NOT NULL AND credits_generation = $3 \
     AND COALESCE(credits_refilled_at, -1) = $4 \
     AND (credits_refill_interval IS NULL OR credits_refilled_at + credits_refill_interval > $5)";

impl Store {
    /// Takes up to `want` of key `id`'s credits at `now_secs`. `None` when
    /// the key has no credits (or no longer exists).
    pub async fn lease_credits(
        &self,
        id: Uuid,
        want: u64,
        now_secs: i64,
    ) -> StoreResult<Option<Lease>> {
        let want = i64::try_from(want).unwrap_or(i64::MAX);
        with_pool!(&self.main, pool => {
            let row: Option<(i64, i64, Option<i64>, Option<i64>)> = sqlx::query_as(LEASE)
                .bind(id)
                .bind(now_secs)
                .bind(want)
                .fetch_optional(pool)
                .await?;
            Ok(row.map(|(granted, generation, refilled_at, interval)| {
                let period_end = match (refilled_at, interval) {
                    (Some(start), Some(interval)) => start.saturating_add(interval),
                    _ => i64::MAX,
                };
                Lease {
                    granted: granted.max(0) as u64,
                    generation,
                    period_start: refilled_at.unwrap_or(-1),
                    period_end,
                }
            }))
        })
    }

    /// Returns `unspent` credits of `lease` at `now_secs`; `false` when they
    /// were void (credits set anew or refilled since).
    pub async fn return_credits(
        &self,
        id: Uuid,
        lease: &Lease,
        unspent: u64,
        now_secs: i64,
    ) -> StoreResult<bool> {
        let unspent = i64::try_from(unspent).unwrap_or(i64::MAX);
        with_pool!(&self.main, pool => {
            let returned = sqlx::query(RETURN)
                .bind(id)
                .bind(unspent)
                .bind(lease.generation)
                .bind(lease.period_start)
                .bind(now_secs)
                .execute(pool)
                .await?;
            Ok(returned.rows_affected() == 1)
        })
    }
}
