//! The small parsers settings share: lists, numbers, addresses, durations,
//! rate limits and secrets read from files.

use std::{net::SocketAddr, str::FromStr, time::Duration};

use super::{invalid, ConfigError};
use crate::domain::RateLimit;

pub(super) fn read_secret_file(path: &std::path::Path) -> Result<String, String> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .map_err(|e| format!("cannot read {}: {e}", path.display()))
}

pub(super) fn split_list(raw: &str) -> Vec<String> {
    raw.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

pub(super) fn positive<T: PartialOrd + Default + Copy>(
    value: T,
    setting: &'static str,
    env: &'static str,
) -> Result<T, ConfigError> {
    if value > T::default() {
        Ok(value)
    } else {
        Err(invalid(setting, env, "must be greater than zero"))
    }
}

pub(super) fn addr(
    value: Option<String>,
    default: &str,
    setting: &'static str,
    env: &'static str,
) -> Result<SocketAddr, ConfigError> {
    let raw = value.unwrap_or_else(|| default.to_owned());
    SocketAddr::from_str(&raw)
        .map_err(|e| invalid(setting, env, format!("{raw:?} is not host:port ({e})")))
}

pub(super) fn duration(
    value: Option<String>,
    default: &str,
    setting: &'static str,
    env: &'static str,
) -> Result<Duration, ConfigError> {
    let raw = value.unwrap_or_else(|| default.to_owned());
    humantime::parse_duration(&raw).map_err(|e| {
        invalid(
            setting,
            env,
            format!("{raw:?} is not a duration like 60s or 100ms ({e})"),
        )
    })
}

/// A duration that must not be zero: a zero flush interval would spin the
/// flusher, a zero check timeout would fail every cache miss.
pub(super) fn nonzero_duration(
    value: Option<String>,
    default: &str,
    setting: &'static str,
    env: &'static str,
) -> Result<Duration, ConfigError> {
    match duration(value, default, setting, env)? {
        Duration::ZERO => Err(invalid(setting, env, "must be greater than zero")),
        positive => Ok(positive),
    }
}

/// `max_attempts/decay_seconds`, e.g. `100/60`.
pub fn parse_rate_limit(raw: &str) -> Result<RateLimit, String> {
    let (max, decay) = raw
        .trim()
        .split_once('/')
        .ok_or_else(|| format!("{raw:?} is not max_attempts/decay_seconds such as 100/60"))?;
    let max_attempts: u32 = max
        .trim()
        .parse()
        .map_err(|_| format!("{max:?} is not a whole number"))?;
    let decay_seconds: u32 = decay
        .trim()
        .trim_end_matches('s')
        .parse()
        .map_err(|_| format!("{decay:?} is not a whole number of seconds"))?;
    if max_attempts == 0 || decay_seconds == 0 {
        return Err("both numbers must be greater than zero".into());
    }
    Ok(RateLimit {
        max_attempts,
        decay_seconds,
    })
}
