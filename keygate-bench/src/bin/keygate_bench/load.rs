//! The two ways of driving a target.
//!
//! - Closed loop (full speed): `concurrency` workers per connection, each
//!   sending its next request when the previous one returns. Measures the
//!   maximum throughput; latency is service time under saturation.
//! - Open loop (fixed rate): requests are due at `start + i / rate`
//!   whatever happened to earlier ones, and latency runs from the *intended*
//!   send time, so a stall is charged to every request it delayed (no
//!   coordinated omission). Tokio's timer has millisecond granularity, too
//!   coarse for sub-millisecond latencies, so the schedule is kept either by
//!   a plain thread that sleeps until each send ([`Pacer::Thread`], the
//!   default) or by the sending task yielding in a loop near each send
//!   ([`Pacer::Spin`]). Either way the generator's own lateness is recorded
//!   ("send lag"), so its share of a latency figure is visible. On a small
//!   VM neither is precise to better than about a millisecond at p99.
//! - Open loop in bursts ([`Pacer::Burst`]): every `tick`, the requests that
//!   fall due in it arrive together and are intended at the tick itself.
//!   Same rate, burstier arrivals (harder on the server, whose queue holds
//!   a whole burst), but the generator sends a burst with a few system
//!   calls instead of one per request, so one core can keep a schedule
//!   several times faster than per-request pacing allows.

use std::{
    future::Future,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use futures::{stream::FuturesUnordered, StreamExt};

use super::{
    procstat::CpuMeter,
    stats::{CpuReport, Outcome, Recorder},
};

/// Within this of the next send, the open loop spins instead of sleeping
/// (a tokio timer can fire up to a millisecond late).
const SPIN_WITHIN: Duration = Duration::from_millis(2);

/// Something requests can be sent to.
pub trait Target: Send + Sync + 'static {
    fn connections(&self) -> usize;
    /// Sends request number `seq` of the workload on `connection`.
    fn call(&self, connection: usize, seq: u64) -> impl Future<Output = Outcome> + Send + 'static;
}

/// The measured window: requests sent during `warmup` are not recorded.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub warmup: Duration,
    pub duration: Duration,
}

/// What a run measured.
pub struct Measured {
    pub recorder: Recorder,
    pub elapsed: Duration,
    pub cpu: CpuReport,
}

/// Samples CPU use over exactly the measured window.
fn spawn_cpu_window(
    measure_from: Instant,
    duration: Duration,
    server_pid: Option<u32>,
) -> tokio::task::JoinHandle<CpuReport> {
    tokio::spawn(async move {
        tokio::time::sleep_until(measure_from.into()).await;
        let meter = CpuMeter::start(server_pid);
        tokio::time::sleep(duration).await;
        meter.stop()
    })
}

pub async fn closed_loop<T: Target>(
    target: Arc<T>,
    concurrency: usize,
    window: Window,
    server_pid: Option<u32>,
) -> Measured {
    let start = Instant::now();
    let measure_from = start + window.warmup;
    let end = measure_from + window.duration;
    let cpu = spawn_cpu_window(measure_from, window.duration, server_pid);
    let seq = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..target.connections() * concurrency.max(1))
        .map(|worker| {
            let target = target.clone();
            let seq = seq.clone();
            tokio::spawn(async move {
                let connection = worker % target.connections();
                let mut recorder = Recorder::default();
                loop {
                    let sent = Instant::now();
                    if sent >= end {
                        break;
                    }
                    let outcome = target
                        .call(connection, seq.fetch_add(1, Ordering::Relaxed))
                        .await;
                    if sent >= measure_from {
                        recorder.record(sent.elapsed(), outcome);
                    }
                }
                recorder
            })
        })
        .collect();
    let mut recorder = Recorder::default();
    for worker in workers {
        recorder.merge(worker.await.expect("worker panicked"));
    }
    Measured {
        recorder,
        elapsed: window.duration,
        cpu: cpu.await.expect("cpu sampler panicked"),
    }
}

/// How the open loop keeps its schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Pacer {
    /// The sending task sleeps until a timer tick before the next send,
    /// then yields in a loop: busy core, precise sends.
    Spin,
    /// A separate thread sleeps until each send and hands it to the
    /// runtime: idle core between sends, one thread wake-up per request.
    Thread,
    /// A separate thread wakes every `tick` and hands the runtime every
    /// request due in that tick, all intended at the tick's start.
    Burst,
}

/// When the open loop's requests are intended.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    /// Requests per second.
    pub rate: f64,
    pub pacer: Pacer,
    /// Burst spacing (only [`Pacer::Burst`]).
    pub tick: Duration,
}

impl Schedule {
    /// Arrival `index`: its offset from the start and how many requests it
    /// carries, `None` once the offset is past what a `Duration` holds (or
    /// for a zero tick, which would never advance). Burst sizes carry the
    /// fractions over, so every tick's share adds up to exactly `rate` per
    /// second.
    fn arrival(&self, index: u64) -> Option<(Duration, u64)> {
        match self.pacer {
            Pacer::Burst => {
                if self.tick.is_zero() {
                    return None;
                }
                let per_tick = self.rate * self.tick.as_secs_f64();
                let due_by = |arrivals: u64| (arrivals as f64 * per_tick).floor() as u64;
                let offset = u32::try_from(index)
                    .ok()
                    .and_then(|ticks| self.tick.checked_mul(ticks))?;
                Some((offset, due_by(index + 1) - due_by(index)))
            }
            Pacer::Spin | Pacer::Thread => Duration::try_from_secs_f64(index as f64 / self.rate)
                .ok()
                .map(|offset| (offset, 1)),
        }
    }
}

/// `--rate`: a positive, finite number of requests per second.
pub fn parse_rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate > 0.0 => Ok(rate),
        Ok(_) => Err("the rate must be a positive number of requests per second".into()),
        Err(error) => Err(error.to_string()),
    }
}

/// `--tick`: a positive duration (a zero tick would never advance).
pub fn parse_tick(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Ok(tick) if tick.is_zero() => Err("the tick must be longer than zero".into()),
        Ok(tick) => Ok(tick),
        Err(error) => Err(error.to_string()),
    }
}

pub async fn open_loop<T: Target>(
    target: Arc<T>,
    schedule: Schedule,
    window: Window,
    server_pid: Option<u32>,
) -> Measured {
    match schedule.pacer {
        Pacer::Spin => open_loop_spin(target, schedule.rate, window, server_pid).await,
        Pacer::Thread | Pacer::Burst => {
            open_loop_thread(target, schedule, window, server_pid).await
        }
    }
}

async fn open_loop_spin<T: Target>(
    target: Arc<T>,
    rate: f64,
    window: Window,
    server_pid: Option<u32>,
) -> Measured {
    let interval = Duration::from_secs_f64(1.0 / rate);
    let start = Instant::now() + Duration::from_millis(10);
    let measure_from = start + window.warmup;
    let end = measure_from + window.duration;
    let cpu = spawn_cpu_window(measure_from, window.duration, server_pid);

    let mut recorder = Recorder::default();
    let mut in_flight = FuturesUnordered::new();
    let mut seq: u64 = 0;
    let mut next_due = start;
    loop {
        // Send everything due. After a late wake-up several go at once: the
        // schedule never slips, and the lateness shows in the latency.
        let now = Instant::now();
        while next_due <= now && next_due < end {
            if next_due >= measure_from {
                recorder.record_send_lag(now - next_due);
            }
            let due = next_due;
            let call = target.call((seq % target.connections() as u64) as usize, seq);
            in_flight.push(async move { (due, call.await) });
            seq += 1;
            next_due = start + interval.mul_f64(seq as f64);
        }
        let sending = next_due < end;
        if !sending && in_flight.is_empty() {
            break;
        }
        let wait = next_due.saturating_duration_since(now);
        tokio::select! {
            biased;
            Some((due, outcome)) = in_flight.next(), if !in_flight.is_empty() => {
                if due >= measure_from {
                    recorder.record(Instant::now() - due, outcome);
                }
            }
            // Far from the next send: sleep, waking a timer tick early.
            () = tokio::time::sleep(wait.saturating_sub(SPIN_WITHIN)), if sending && wait > SPIN_WITHIN => {}
            // Close to it: stay runnable, letting I/O and completions in
            // between (yield_now polls the I/O driver before returning).
            () = tokio::task::yield_now(), if sending && wait <= SPIN_WITHIN => {}
        }
    }
    Measured {
        recorder,
        elapsed: window.duration,
        cpu: cpu.await.expect("cpu sampler panicked"),
    }
}

async fn open_loop_thread<T: Target>(
    target: Arc<T>,
    schedule: Schedule,
    window: Window,
    server_pid: Option<u32>,
) -> Measured {
    let start = Instant::now() + Duration::from_millis(10);
    let measure_from = start + window.warmup;
    let end = measure_from + window.duration;
    let cpu = spawn_cpu_window(measure_from, window.duration, server_pid);
    let (due_tx, mut due_rx) = tokio::sync::mpsc::unbounded_channel::<Arrival>();
    let scheduler = std::thread::Builder::new()
        .name("schedule".into())
        .spawn(move || keep_schedule(schedule, start, end, &due_tx))
        .expect("cannot start the scheduler thread");

    let mut recorder = Recorder::default();
    let mut in_flight = FuturesUnordered::new();
    let mut scheduling = true;
    while scheduling || !in_flight.is_empty() {
        tokio::select! {
            biased;
            Some((due, outcome)) = in_flight.next(), if !in_flight.is_empty() => {
                if due >= measure_from {
                    recorder.record(Instant::now() - due, outcome);
                }
            }
            next = due_rx.recv(), if scheduling => match next {
                Some(Arrival { first_seq, count, due }) => {
                    if due >= measure_from {
                        recorder.record_send_lag(Instant::now().saturating_duration_since(due));
                    }
                    for seq in first_seq..first_seq + count {
                        let call = target.call((seq % target.connections() as u64) as usize, seq);
                        in_flight.push(async move { (due, call.await) });
                    }
                }
                None => scheduling = false,
            },
        }
    }
    scheduler.join().expect("scheduler panicked");
    Measured {
        recorder,
        elapsed: window.duration,
        cpu: cpu.await.expect("cpu sampler panicked"),
    }
}

/// Requests `first_seq..first_seq + count`, all intended at `due`.
struct Arrival {
    first_seq: u64,
    count: u64,
    due: Instant,
}

/// Hands over every arrival of `schedule` before `end`, each as soon as it
/// is due (all those already due after a late wake-up).
fn keep_schedule(
    schedule: Schedule,
    start: Instant,
    end: Instant,
    due_tx: &tokio::sync::mpsc::UnboundedSender<Arrival>,
) {
    let mut first_seq: u64 = 0;
    for index in 0.. {
        let Some((due, count)) = schedule
            .arrival(index)
            .and_then(|(offset, count)| Some((start.checked_add(offset)?, count)))
        else {
            return;
        };
        if due >= end {
            return;
        }
        if count == 0 {
            continue;
        }
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        let arrival = Arrival {
            first_seq,
            count,
            due,
        };
        if due_tx.send(arrival).is_err() {
            return;
        }
        first_seq += count;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_carry_fractions_over_and_add_up_to_the_rate() {
        let schedule = Schedule {
            rate: 35_500.0,
            pacer: Pacer::Burst,
            tick: Duration::from_millis(1),
        };
        let arrivals: Vec<_> = (0..1_000).map(|i| schedule.arrival(i).unwrap()).collect();
        assert_eq!(arrivals.iter().map(|(_, n)| n).sum::<u64>(), 35_500);
        assert_eq!(arrivals[0], (Duration::ZERO, 35));
        assert_eq!(arrivals[1], (Duration::from_millis(1), 36));
        assert_eq!(arrivals[999].0, Duration::from_millis(999));
    }

    #[test]
    fn per_request_pacing_spaces_single_requests_evenly() {
        let schedule = Schedule {
            rate: 4_000.0,
            pacer: Pacer::Thread,
            tick: Duration::from_millis(1),
        };
        let (offset, count) = schedule.arrival(3).unwrap();
        assert_eq!(count, 1);
        assert!(offset.abs_diff(Duration::from_micros(750)) < Duration::from_nanos(2));
    }

    #[test]
    fn a_schedule_ends_where_its_offsets_cannot_be_represented() {
        let bursts = |tick| Schedule {
            rate: 1_000.0,
            pacer: Pacer::Burst,
            tick,
        };
        assert_eq!(bursts(Duration::ZERO).arrival(0), None);
        assert_eq!(bursts(Duration::from_secs(1)).arrival(u64::MAX), None);
        assert!(parse_tick("0ms").is_err());
        assert_eq!(parse_tick("250us"), Ok(Duration::from_micros(250)));
        for bad in ["0", "-5", "inf", "NaN", "fast"] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_rate("35000.5"), Ok(35_000.5));
    }
}
