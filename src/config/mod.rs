//! The configuration: typed settings from flags, `KEYGATE_*` environment
//! variables and a TOML file, validated once at start, and the settings of
//! each component built from them. Only `main.rs` and `app.rs` use this
//! module; components own their settings types.
//!
//! - `settings.rs`: [`Settings`], at once the clap surface (flags, env
//!   names, `--help`) and the TOML schema, so every setting is declared in
//!   exactly one place; the file read beneath flags and environment.
//!   Precedence: flag, then environment, then file, then default. `*_FILE`
//!   variants let a mounted Kubernetes Secret supply the database URL and
//!   admin token hashes.
//! - `list.rs`: lists in the file, as arrays or comma-separated strings.
//! - `validate.rs`: [`Settings::validate`], defaults and checks → [`Config`].
//! - `values.rs`: the small parsers (durations, addresses, lists, rate limits).
//! - `components.rs`: each component's settings from a [`Config`].

use std::{net::SocketAddr, path::PathBuf, time::Duration};

mod components;
mod list;
mod settings;
#[cfg(test)]
mod tests;
mod validate;
mod values;

pub use settings::{RouteRuleSettings, Settings};
pub use values::parse_rate_limit;

use crate::{
    admin::{hygiene::LeakAction, AdminToken},
    authz::ForeignBearer,
    domain::{Ability, KeyFormat, RateLimit, RouteRule},
    ratelimit::RateLimitStore,
    telemetry::LogFormat,
};

/// A setting that could not be used, named as the operator wrote it.
#[derive(Debug, thiserror::Error)]
#[error("invalid setting {setting} ({env}): {problem}")]
pub struct ConfigError {
    pub setting: &'static str,
    pub env: &'static str,
    pub problem: String,
}

fn invalid(setting: &'static str, env: &'static str, problem: impl ToString) -> ConfigError {
    ConfigError {
        setting,
        env,
        problem: problem.to_string(),
    }
}

#[derive(Debug, Clone)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub admin_client_ca: Option<PathBuf>,
    pub authz_client_ca: Option<PathBuf>,
}

/// Validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub database_url: String,
    pub database_max_connections: u32,
    pub migrate_on_start: bool,
    pub authz_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub forward_auth_addr: SocketAddr,
    /// Empty, or a prefix starting with `/` and not ending with one.
    pub forward_auth_path_prefix: String,
    pub metadata_headers: Vec<String>,
    pub http_addr: SocketAddr,
    pub admin_tokens: Vec<AdminToken>,
    pub key_format: KeyFormat,
    pub max_keys_per_owner: u32,
    pub ability_catalog: Vec<Ability>,
    pub default_rate_limit: Option<RateLimit>,
    pub rate_limit_store: RateLimitStore,
    pub credit_lease: u64,
    pub cache_ttl: Duration,
    pub negative_cache_ttl: Duration,
    pub cache_capacity: u64,
    pub negative_cache_capacity: u64,
    pub check_timeout: Duration,
    pub cache_stale_if_error: Duration,
    pub max_concurrent_misses: usize,
    pub authorization_header: String,
    pub api_key_header: String,
    pub strip_credential: bool,
    pub foreign_bearer: ForeignBearer,
    pub trusted_proxy_hops: usize,
    pub usage_enabled: bool,
    pub usage_flush_interval: Duration,
    pub usage_batch_size: usize,
    pub usage_buffer: usize,
    pub usage_buffer_bytes: usize,
    pub usage_log_enabled: bool,
    pub usage_log_retention_days: u32,
    pub prune_enabled: bool,
    pub shutdown_grace: Duration,
    pub log_format: LogFormat,
    pub tls: Option<TlsConfig>,
    pub routes: Vec<RouteRule>,
    pub max_rotation_overlap: Duration,
    pub service_tokens_may_grant_superkey: bool,
    pub webhooks_enabled: bool,
    pub webhooks: crate::webhooks::DispatchSettings,
    pub hygiene: HygieneConfig,
}

/// Key hygiene settings (docs/behaviour.md, "Key hygiene").
#[derive(Debug, Clone, Default)]
pub struct HygieneConfig {
    /// Unused this long, a key is revoked by the prune job.
    pub dormant_after: Option<Duration>,
    /// Prefixes of imported keys, looked up by the hash of the whole string.
    pub imported_prefixes: Vec<String>,
    /// The keys leak reports must be signed with; `None` turns reports off.
    pub scanning_keys: Option<crate::leaks::ScanningKeys>,
    pub leak_action: LeakAction,
}
