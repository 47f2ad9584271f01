//! Latency histograms, outcome counts and the printed / JSON report.

use std::{collections::BTreeMap, time::Duration};

use hdrhistogram::Histogram;
use serde::Serialize;

/// What one request produced, as the client saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// An answer from the server: the HTTP status Envoy would return (200
    /// for an allowed Check) and the denial code when there is one. A
    /// denial is a successful RPC: it is counted here, not as an error.
    Answer { status: u16, code: String },
    /// The request failed: gRPC status code or I/O error, by name.
    Error(String),
}

/// Latencies (nanoseconds) from 1 µs to 60 s at 3 significant digits.
fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1_000, 60_000_000_000, 3).expect("valid histogram bounds")
}

/// Per-worker results, merged at the end (no locks on the request path).
pub struct Recorder {
    latency: Histogram<u64>,
    /// Open loop only: how late the generator itself sent each request
    /// relative to its schedule (its own inaccuracy, part of `latency`).
    send_lag: Histogram<u64>,
    answers: BTreeMap<(u16, String), u64>,
    errors: BTreeMap<String, u64>,
}

impl Default for Recorder {
    fn default() -> Self {
        Self {
            latency: new_histogram(),
            send_lag: new_histogram(),
            answers: BTreeMap::new(),
            errors: BTreeMap::new(),
        }
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Recorder {
    pub fn record(&mut self, latency: Duration, outcome: Outcome) {
        self.latency.saturating_record(nanos(latency).max(1_000));
        match outcome {
            Outcome::Answer { status, code } => {
                *self.answers.entry((status, code)).or_default() += 1
            }
            Outcome::Error(name) => *self.errors.entry(name).or_default() += 1,
        }
    }

    pub fn record_send_lag(&mut self, lag: Duration) {
        self.send_lag.saturating_record(nanos(lag).max(1_000));
    }

    pub fn merge(&mut self, other: Recorder) {
        self.latency
            .add(&other.latency)
            .expect("same histogram bounds");
        self.send_lag
            .add(&other.send_lag)
            .expect("same histogram bounds");
        for (k, v) in other.answers {
            *self.answers.entry(k).or_default() += v;
        }
        for (k, v) in other.errors {
            *self.errors.entry(k).or_default() += v;
        }
    }

    /// The report for requests completed over `elapsed`.
    pub fn report(&self, name: &str, elapsed: Duration, cpu: CpuReport) -> Report {
        let us = |q: f64| self.latency.value_at_quantile(q) as f64 / 1_000.0;
        let requests = self.latency.len();
        Report {
            name: name.to_owned(),
            seconds: elapsed.as_secs_f64(),
            requests,
            rps: requests as f64 / elapsed.as_secs_f64(),
            p50_us: us(0.5),
            p90_us: us(0.9),
            p99_us: us(0.99),
            p999_us: us(0.999),
            max_us: self.latency.max() as f64 / 1_000.0,
            send_lag_p99_us: (!self.send_lag.is_empty())
                .then(|| self.send_lag.value_at_quantile(0.99) as f64 / 1_000.0),
            decisions: self
                .answers
                .iter()
                .map(|((status, code), n)| {
                    let label = match code.is_empty() {
                        true => status.to_string(),
                        false => format!("{status} {code}"),
                    };
                    (label, *n)
                })
                .collect(),
            errors: self.errors.clone(),
            cpu,
        }
    }
}

/// CPU used during the measured window, in % of one core.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct CpuReport {
    pub client_pct: Option<f64>,
    pub server_pct: Option<f64>,
    /// Share of all CPUs' time stolen by the hypervisor during the run.
    pub steal_pct: Option<f64>,
}

/// One measured run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub name: String,
    pub seconds: f64,
    pub requests: u64,
    pub rps: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    /// Open loop: p99 of the generator's own lateness against its schedule.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub send_lag_p99_us: Option<f64>,
    /// `"200"` for allowed, `"401 invalid_key"` and so on for denials.
    pub decisions: BTreeMap<String, u64>,
    pub errors: BTreeMap<String, u64>,
    pub cpu: CpuReport,
}

fn pct(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.0}%"))
}

impl Report {
    /// The human-readable summary.
    pub fn render(&self) -> String {
        let mut text = format!(
            "{:<22} {:>9.0} req/s  p50 {:>7.1}µs  p90 {:>7.1}µs  p99 {:>7.1}µs  p99.9 {:>8.1}µs  max {:>8.1}µs  cpu client {} server {} steal {}",
            self.name,
            self.rps,
            self.p50_us,
            self.p90_us,
            self.p99_us,
            self.p999_us,
            self.max_us,
            pct(self.cpu.client_pct),
            pct(self.cpu.server_pct),
            pct(self.cpu.steal_pct),
        );
        if let Some(lag) = self.send_lag_p99_us {
            text += &format!("\n{:<22} generator send lag p99 {lag:.1}µs", "");
        }
        let decisions: Vec<String> = self
            .decisions
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        text += &format!("\n{:<22} decisions  {}", "", decisions.join(", "));
        if !self.errors.is_empty() {
            let errors: Vec<String> = self
                .errors
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect();
            text += &format!("\n{:<22} ERRORS     {}", "", errors.join(", "));
        }
        text
    }
}

/// The median of `values` (the upper one of an even count); rounds of a
/// run are summarised by it, so one disturbed round does not move a figure.
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Target-over-baseline ratios, printed after a `--baseline` run.
#[derive(Debug, Clone, Serialize)]
pub struct Ratios {
    pub rps: f64,
    pub p50: f64,
    pub p99: f64,
}

impl Ratios {
    pub fn of(target: &Report, baseline: &Report) -> Self {
        Self {
            rps: target.rps / baseline.rps,
            p50: target.p50_us / baseline.p50_us,
            p99: target.p99_us / baseline.p99_us,
        }
    }

    pub fn render(&self, target: &str, baseline: &str) -> String {
        format!(
            "ratio {target}/{baseline}: rps {:.3}  p50 {:.2}x  p99 {:.2}x",
            self.rps, self.p50, self.p99
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn denials_are_decisions_and_failures_are_errors() {
        let mut a = Recorder::default();
        a.record(
            Duration::from_micros(100),
            Outcome::Answer {
                status: 200,
                code: String::new(),
            },
        );
        let mut b = Recorder::default();
        b.record(
            Duration::from_micros(300),
            Outcome::Answer {
                status: 401,
                code: "invalid_key".into(),
            },
        );
        b.record(
            Duration::from_micros(5),
            Outcome::Error("Unavailable".into()),
        );
        a.merge(b);
        let report = a.report("t", Duration::from_secs(1), CpuReport::default());
        assert_eq!(report.requests, 3);
        assert_eq!(report.decisions["200"], 1);
        assert_eq!(report.decisions["401 invalid_key"], 1);
        assert_eq!(report.errors["Unavailable"], 1);
        assert!((report.rps - 3.0).abs() < 1e-9);
        assert!(report.max_us >= 299.0);
    }
}
