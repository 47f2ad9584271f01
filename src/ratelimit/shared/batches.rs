//! The one task that carries a replica's shared rate-limit decisions to
//! Redis, in batches.
//!
//! Checks queue their decisions. While one script call is out, the decisions
//! that arrive wait, and the next call takes them all: one command, one
//! round trip, one reply and one script run for as many decisions as came
//! in meanwhile, where each used to cost its own. At low load a batch is a
//! single decision and waits for nothing. The script takes a batch's
//! decisions in order, atomically, so a batch decides exactly what the same
//! decisions would one call each (docs/behaviour.md, "Rate limits").
//!
//! Every decision carries its deadline, `KEYGATE_RATE_LIMIT_TIMEOUT` after
//! it was queued. A call is given until the earliest deadline among its
//! decisions, and a decision already past its deadline is dropped unsent:
//! its Check has been answered by the local limiter, and sending it would
//! count that request twice.

use std::{
    fmt::Write,
    sync::Arc,
    time::{Duration, Instant},
};

use redis::{aio::ConnectionManager, Cmd, Script};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::{Availability, RedisSettings};
use crate::domain::RateLimit;

/// The script's answer to one decision: allowed (1/0), remaining, and
/// microseconds (until the allowance is full again, or until the next
/// request may pass).
pub type Verdict = (i64, i64, i64);

/// Decisions per script call at most: Redis runs a script to the end before
/// it serves anyone else, so a batch is kept to a few hundred microseconds
/// of its time.
const MAX_BATCH: usize = 128;

/// One Check's request to be counted against its key's limit in Redis.
pub struct Decision {
    pub key_id: Uuid,
    pub limit: RateLimit,
    /// After this instant the Check no longer waits for the verdict.
    pub deadline: Instant,
    pub reply: oneshot::Sender<Verdict>,
}

pub struct Batches {
    redis: ConnectionManager,
    script: Script,
    prefix: String,
    timeout: Duration,
    availability: Arc<Availability>,
    /// Reused from call to call, with `state`, so that building a command
    /// allocates only when a batch is bigger than any before.
    command: Cmd,
    state: String,
}

impl Batches {
    pub fn new(
        redis: ConnectionManager,
        script: Script,
        settings: &RedisSettings,
        availability: Arc<Availability>,
    ) -> Self {
        Self {
            redis,
            script,
            prefix: settings.prefix.clone(),
            timeout: settings.timeout,
            availability,
            command: Cmd::new(),
            state: String::new(),
        }
    }

    /// Sends what is queued, batch after batch, until every sender is gone
    /// (the limiter was dropped).
    pub async fn run(mut self, mut queue: mpsc::Receiver<Decision>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
            let now = Instant::now();
            batch.retain(|decision| decision.deadline > now && !decision.reply.is_closed());
            if let Some(deadline) = batch.iter().map(|decision| decision.deadline).min() {
                self.send(&mut batch, deadline).await;
            }
            // Whatever is left unanswered is dropped: those Checks fall back.
            batch.clear();
        }
    }

    async fn send(&mut self, batch: &mut Vec<Decision>, deadline: Instant) {
        self.build(batch);
        let answer = tokio::time::timeout_at(deadline.into(), self.evaluate()).await;
        match answer {
            Ok(Ok(verdicts)) if verdicts.len() == 3 * batch.len() => {
                self.availability.answered();
                for (decision, verdict) in batch.drain(..).zip(verdicts.chunks_exact(3)) {
                    // A Check that went away (its client cancelled) has no
                    // one to tell; Redis has counted it, as it would have.
                    let _ = decision.reply.send((verdict[0], verdict[1], verdict[2]));
                }
            }
            Ok(Ok(verdicts)) => self.availability.failed(&format_args!(
                "the limiter's script gave {} numbers for {} decisions",
                verdicts.len(),
                batch.len()
            )),
            Ok(Err(error)) => self.availability.failed(&error),
            Err(_) => self
                .availability
                .failed(&format_args!("no answer within {:?}", self.timeout)),
        }
    }

    /// `EVALSHA` with the batch's states as keys and two numbers per
    /// decision as arguments, built in place in the reused command.
    fn build(&mut self, batch: &[Decision]) {
        let command = &mut self.command;
        command.clear();
        command
            .arg("EVALSHA")
            .arg(self.script.get_hash())
            .arg(batch.len());
        for decision in batch {
            self.state.clear();
            // The limit is part of the name: a key whose limit changes
            // starts afresh under the new one, as it does locally, and the
            // old state expires on its own.
            let _ = write!(
                self.state,
                "{}rl:{}:{}:{}",
                self.prefix,
                decision.key_id,
                decision.limit.max_attempts,
                decision.limit.decay_seconds
            );
            command.arg(self.state.as_str());
        }
        for decision in batch {
            let interval_us = crate::ratelimit::per_request_interval(decision.limit)
                .as_micros()
                .max(1) as u64;
            command.arg(interval_us).arg(decision.limit.max_attempts);
        }
    }

    /// The built command; `SCRIPT LOAD` and once more when Redis does not
    /// know the script (a restart, a failover, a `SCRIPT FLUSH`).
    async fn evaluate(&self) -> redis::RedisResult<Vec<i64>> {
        let mut redis = self.redis.clone();
        match self.command.query_async(&mut redis).await {
            Err(error)
                if error.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
            {
                self.script.prepare_invoke().load_async(&mut redis).await?;
                self.command.query_async(&mut redis).await
            }
            answer => answer,
        }
    }
}
