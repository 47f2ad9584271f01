//! The one task that carries a replica's shared rate-limit decisions to
//! Redis, in batches.
//!
//! Checks queue their decisions. While a script call is out, the decisions
//! that arrive wait, and the next call takes them all: one command, one
//! round trip, one reply and one script run for as many decisions as came
//! in meanwhile, where each used to cost its own. At low load a batch is a
//! single decision and goes at once. One call at a time batches the most
//! (with up to two or four out at once, batches were smaller and Redis mode
//! lost 0.02–0.07 of its throughput, BENCHMARKS.md); the price is that a
//! decision queued just after a call left waits for that call's answer
//! before its own can go, so Redis must answer within half of
//! `KEYGATE_RATE_LIMIT_TIMEOUT` for decisions not to fall back
//! (docs/behaviour.md). The script
//! takes a batch's decisions in order, atomically, so a batch decides
//! exactly what the same decisions would one call each (docs/behaviour.md,
//! "Rate limits").
//!
//! Every decision carries its deadline, `KEYGATE_RATE_LIMIT_TIMEOUT` after
//! it was queued, and its Check waits no longer: a decision still queued
//! at its deadline is dropped unsent, and one whose call is out when its
//! deadline passes is let go while the call goes on for the others. Those
//! Checks are answered by the local limiter; Redis may still count a
//! request whose decision had already left, as it could when each Check
//! sent its own.

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
        }
    }

    /// Sends what is queued, batch after batch, until every sender is gone
    /// (the limiter was dropped).
    pub async fn run(self, mut queue: mpsc::Receiver<Decision>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
            let now = Instant::now();
            // Past their deadline, or their Check went away: their requests
            // were (or will be) decided locally.
            batch.retain(|decision| decision.deadline > now && !decision.reply.is_closed());
            if !batch.is_empty() {
                self.call(&mut batch).await;
            }
            batch.clear();
        }
    }

    /// One script call for `batch`. Each Check is answered, or let go at its
    /// deadline, whichever comes first.
    async fn call(&self, batch: &mut Vec<Decision>) {
        let command = self.command(batch);
        let mut replies: Vec<(Instant, Option<oneshot::Sender<Verdict>>)> = batch
            .drain(..)
            .map(|decision| (decision.deadline, Some(decision.reply)))
            .collect();
        let evaluation = self.evaluate(&command);
        tokio::pin!(evaluation);
        let answer = loop {
            let next_deadline = replies
                .iter()
                .filter(|(_, reply)| reply.is_some())
                .map(|(deadline, _)| *deadline)
                .min();
            let Some(next_deadline) = next_deadline else {
                // Every Check has stopped waiting: the call is abandoned.
                break None;
            };
            tokio::select! {
                answer = &mut evaluation => break Some(answer),
                () = tokio::time::sleep_until(next_deadline.into()) => {
                    let now = Instant::now();
                    for (deadline, reply) in &mut replies {
                        if *deadline <= now {
                            reply.take();
                        }
                    }
                }
            }
        };
        match answer {
            Some(Ok(verdicts)) if verdicts.len() == 3 * replies.len() => {
                self.availability.answered();
                for ((_, reply), verdict) in replies.into_iter().zip(verdicts.chunks_exact(3)) {
                    // A Check that went away (its client cancelled, or its
                    // deadline passed) has no one to tell.
                    if let Some(reply) = reply {
                        let _ = reply.send((verdict[0], verdict[1], verdict[2]));
                    }
                }
            }
            Some(Ok(verdicts)) => self.availability.failed(&format_args!(
                "the limiter's script gave {} numbers for {} decisions",
                verdicts.len(),
                replies.len()
            )),
            Some(Err(error)) => self.availability.failed(&error),
            None => self
                .availability
                .failed(&format_args!("no answer within {:?}", self.timeout)),
        }
    }

    /// `EVALSHA` with the batch's states as keys and two numbers per
    /// decision as arguments, built in place.
    fn command(&self, batch: &[Decision]) -> Cmd {
        let mut command = Cmd::with_capacity(3 + 3 * batch.len(), 96 * batch.len());
        command
            .arg("EVALSHA")
            .arg(self.script.get_hash())
            .arg(batch.len());
        let mut state = String::new();
        for decision in batch {
            state.clear();
            // The limit is part of the name: a key whose limit changes
            // starts afresh under the new one, as it does locally, and the
            // old state expires on its own.
            let _ = write!(
                state,
                "{}rl:{}:{}:{}",
                self.prefix,
                decision.key_id,
                decision.limit.max_attempts,
                decision.limit.decay_seconds
            );
            command.arg(state.as_str());
        }
        for decision in batch {
            let interval_us = crate::ratelimit::per_request_interval(decision.limit)
                .as_micros()
                .max(1) as u64;
            command.arg(interval_us).arg(decision.limit.max_attempts);
        }
        command
    }

    /// The built command; `SCRIPT LOAD` and once more when Redis does not
    /// know the script (a restart, a failover, a `SCRIPT FLUSH`).
    async fn evaluate(&self, command: &Cmd) -> redis::RedisResult<Vec<i64>> {
        let mut redis = self.redis.clone();
        match command.query_async(&mut redis).await {
            Err(error)
                if error.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
            {
                self.script.prepare_invoke().load_async(&mut redis).await?;
                command.query_async(&mut redis).await
            }
            answer => answer,
        }
    }
}

/// Against the real Redis on 127.0.0.1:6379 (scripts/test.sh starts it),
/// slowed on purpose with `CLIENT PAUSE … WRITE`, which holds every script
/// call until the pause ends.
#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::ratelimit::RedisUrl;

    const URL: &str = "redis://127.0.0.1:6379";
    const LIMIT: RateLimit = RateLimit {
        max_attempts: 5,
        decay_seconds: 60,
    };

    struct Fixture {
        queue: mpsc::Sender<Decision>,
        running: tokio::task::JoinHandle<()>,
        availability: Arc<Availability>,
        prefix: String,
        redis: ConnectionManager,
    }

    async fn fixture() -> Fixture {
        let client = redis::Client::open(URL).unwrap();
        // Longer than any pause: the deadlines under test are the
        // decisions', not the connection's.
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_response_timeout(Some(Duration::from_secs(10)));
        let redis = ConnectionManager::new_with_config(client, config)
            .await
            .expect("Redis on 127.0.0.1:6379 (scripts/test.sh starts it)");
        let settings = RedisSettings {
            url: RedisUrl(URL.into()),
            timeout: Duration::from_secs(5),
            prefix: format!("keygate-test-{}:", Uuid::new_v4().simple()),
        };
        let availability = Arc::new(Availability::new());
        let batches = Batches::new(
            redis.clone(),
            Script::new(include_str!("../gcra.lua")),
            &settings,
            availability.clone(),
        );
        let (queue, decisions) = mpsc::channel(16);
        Fixture {
            queue,
            running: tokio::spawn(batches.run(decisions)),
            availability,
            prefix: settings.prefix,
            redis,
        }
    }

    fn decision(key_id: Uuid, deadline: Instant) -> (Decision, oneshot::Receiver<Verdict>) {
        let (reply, verdict) = oneshot::channel();
        let decision = Decision {
            key_id,
            limit: LIMIT,
            deadline,
            reply,
        };
        (decision, verdict)
    }

    async fn pause_script_calls(redis: &mut ConnectionManager, millis: u64) {
        redis::cmd("CLIENT")
            .arg("PAUSE")
            .arg(millis)
            .arg("WRITE")
            .query_async::<()>(redis)
            .await
            .expect("CLIENT PAUSE");
    }

    #[tokio::test]
    async fn a_decision_past_its_deadline_is_let_go_while_the_call_goes_on_for_the_others() {
        let mut fixture = fixture().await;
        let (short, mut short_verdict) =
            decision(Uuid::new_v4(), Instant::now() + Duration::from_millis(50));
        let (long, mut long_verdict) =
            decision(Uuid::new_v4(), Instant::now() + Duration::from_secs(30));
        // Far longer than the short deadline, so that a slow machine still
        // sees the deadline pass while the call is out.
        pause_script_calls(&mut fixture.redis, 2_500).await;
        // Queued without yielding, so the task takes both in one call.
        fixture.queue.try_send(short).unwrap();
        fixture.queue.try_send(long).unwrap();

        assert!(
            (&mut short_verdict).await.is_err(),
            "the short decision was let go, with no verdict"
        );
        assert_eq!(
            long_verdict.try_recv(),
            Err(oneshot::error::TryRecvError::Empty),
            "the call was still out when the short decision was let go"
        );
        let (allowed, remaining, _) = long_verdict.await.expect("a verdict once Redis answers");
        assert_eq!((allowed, remaining), (1, 4));
        assert!(
            !fixture.availability.down.load(Ordering::Relaxed),
            "Redis answered"
        );
        drop(short_verdict);
    }

    #[tokio::test]
    async fn a_decision_already_past_its_deadline_is_never_sent_and_the_task_stops_with_its_senders(
    ) {
        let mut fixture = fixture().await;
        let key_id = Uuid::new_v4();
        let (late, late_verdict) = decision(key_id, Instant::now());
        fixture.queue.try_send(late).unwrap();
        assert!(
            late_verdict.await.is_err(),
            "no verdict for a late decision"
        );
        let state = format!(
            "{}rl:{key_id}:{}:{}",
            fixture.prefix, LIMIT.max_attempts, LIMIT.decay_seconds
        );
        let exists: bool = redis::cmd("EXISTS")
            .arg(&state)
            .query_async(&mut fixture.redis)
            .await
            .unwrap();
        assert!(!exists, "the late decision reached Redis");

        // The same key's next decision is its first.
        let (next, next_verdict) = decision(key_id, Instant::now() + Duration::from_secs(30));
        fixture.queue.try_send(next).unwrap();
        let (allowed, remaining, _) = next_verdict.await.unwrap();
        assert_eq!((allowed, remaining), (1, 4));

        drop(fixture.queue);
        tokio::time::timeout(Duration::from_secs(10), fixture.running)
            .await
            .expect("the task stops once the limiter is gone")
            .unwrap();
    }
}
