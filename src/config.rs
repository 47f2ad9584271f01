//! Typed settings from a TOML file and `KEYGATE_*` environment variables,
//! validated once at start.
//!
//! `Settings` is at once the clap surface (flags, env names, `--help`) and the
//! TOML schema, so every setting is declared in exactly one place. Precedence:
//! flag, then environment, then file, then default. `*_FILE` variants let a
//! mounted Kubernetes Secret supply the database URL and admin token hashes.

use std::{net::SocketAddr, path::PathBuf, str::FromStr, time::Duration};

use clap::Args;
use serde::{Deserialize, Serialize};

use crate::{
    domain::{ability, Ability, KeyFormat, RateLimit},
    ratelimit::{RateLimitStore, RedisSettings, RedisUrl},
};

/// Every setting, as given. All optional: defaults are applied in [`Config`].
#[derive(Debug, Clone, Default, Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Database URL: `sqlite://keygate.db` (embedded default, a file) or
    /// `postgres://user:pass@host/db` (production). [default: sqlite://keygate.db]
    #[arg(long, env = "KEYGATE_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// File holding the database URL (for a mounted Secret); used when
    /// `database_url` is not set.
    #[arg(long, env = "KEYGATE_DATABASE_URL_FILE")]
    pub database_url_file: Option<PathBuf>,
    /// Connections in the database pool shared by KeyAdmin and the usage
    /// flusher. [default: 10]
    #[arg(long, env = "KEYGATE_DATABASE_MAX_CONNECTIONS")]
    pub database_max_connections: Option<u32>,
    /// Run migrations when `serve` starts. [default: true]
    #[arg(long, env = "KEYGATE_MIGRATE_ON_START")]
    pub migrate_on_start: Option<bool>,

    /// Address of the Envoy ext_authz Check listener. [default: 0.0.0.0:50051]
    #[arg(long, env = "KEYGATE_AUTHZ_ADDR")]
    pub authz_addr: Option<String>,
    /// Address of the KeyAdmin listener. Without admin tokens only a loopback
    /// address is accepted. [default: 127.0.0.1:50052]
    #[arg(long, env = "KEYGATE_ADMIN_ADDR")]
    pub admin_addr: Option<String>,
    /// Address of the HTTP forward-auth listener (NGINX `auth_request`,
    /// Traefik, Caddy, Envoy's HTTP ext_authz). [default: 0.0.0.0:8081]
    #[arg(long, env = "KEYGATE_FORWARD_AUTH_ADDR")]
    pub forward_auth_addr: Option<String>,
    /// Path prefix the proxy puts before the original path when it sends the
    /// request itself (Envoy HTTP ext_authz `path_prefix`); removed before
    /// route rules match. [default: none]
    #[arg(long, env = "KEYGATE_FORWARD_AUTH_PATH_PREFIX")]
    pub forward_auth_path_prefix: Option<String>,
    /// Comma-separated key metadata names sent to the proxy as
    /// `x-keygate-meta-<name>` headers on both transports, e.g. `tier,plan`.
    /// [default: none]
    #[arg(long, env = "KEYGATE_METADATA_HEADERS")]
    pub metadata_headers: Option<String>,
    /// Address of the Prometheus `/metrics` listener. [default: 0.0.0.0:9090]
    #[arg(long, env = "KEYGATE_METRICS_ADDR")]
    pub metrics_addr: Option<String>,
    /// Address of the REST/JSON API (the KeyAdmin use-cases over HTTP). Without
    /// admin tokens only a loopback address is accepted. [default: 127.0.0.1:8080]
    #[arg(long, env = "KEYGATE_HTTP_ADDR")]
    pub http_addr: Option<String>,

    /// KeyAdmin tokens, comma-separated `name:role:sha256hex`; role is
    /// `service` or `admin`. `keygate admin-token` prints a fresh one.
    #[arg(long, env = "KEYGATE_ADMIN_TOKENS", hide_env_values = true)]
    pub admin_tokens: Option<String>,
    /// File holding the admin tokens (for a mounted Secret).
    #[arg(long, env = "KEYGATE_ADMIN_TOKENS_FILE")]
    pub admin_tokens_file: Option<PathBuf>,

    /// Product prefix of every key, `[a-z][a-z0-9]{0,15}`. [default: sk]
    #[arg(long, env = "KEYGATE_KEY_PREFIX")]
    pub key_prefix: Option<String>,
    /// Comma-separated environments a key may belong to. [default: live,test]
    #[arg(long, env = "KEYGATE_ENVIRONMENTS")]
    pub environments: Option<String>,
    /// Random base58 characters in a new key (16..=128). [default: 32]
    #[arg(long, env = "KEYGATE_TOKEN_LENGTH")]
    pub token_length: Option<usize>,
    /// Keys (not revoked) one owner may hold at once. [default: 100]
    #[arg(long, env = "KEYGATE_MAX_KEYS_PER_OWNER")]
    pub max_keys_per_owner: Option<u32>,
    /// Comma-separated ability catalog; when set, unknown abilities are
    /// rejected at create and update. [default: none, any ability accepted]
    #[arg(long, env = "KEYGATE_ABILITIES")]
    pub abilities: Option<String>,
    /// Rate limit for keys that have none, `max_attempts/decay_seconds`
    /// such as `100/60`. [default: none]
    #[arg(long, env = "KEYGATE_DEFAULT_RATE_LIMIT")]
    pub default_rate_limit: Option<String>,
    /// Where rate-limit state lives: `local` (per replica) or a Redis URL
    /// `redis://[:password@]host:port[/db]` shared by every replica.
    /// [default: local]
    #[arg(long, env = "KEYGATE_RATE_LIMIT_STORE", hide_env_values = true)]
    pub rate_limit_store: Option<String>,
    /// How long a Check waits for Redis before the local limiter answers.
    /// [default: 5ms]
    #[arg(long, env = "KEYGATE_RATE_LIMIT_TIMEOUT")]
    pub rate_limit_timeout: Option<String>,
    /// Prefix of every Redis key keygate writes, so that several keygate
    /// deployments can share one Redis. [default: keygate:]
    #[arg(long, env = "KEYGATE_RATE_LIMIT_PREFIX")]
    pub rate_limit_prefix: Option<String>,
    /// Credits a replica leases from the database at once for a key with
    /// credits; a crash loses at most this many per key per replica.
    /// [default: 100]
    #[arg(long, env = "KEYGATE_CREDIT_LEASE")]
    pub credit_lease: Option<u64>,

    /// How long a known key stays cached; the last bound on staleness.
    /// [default: 60s]
    #[arg(long, env = "KEYGATE_CACHE_TTL")]
    pub cache_ttl: Option<String>,
    /// How long an unknown key hash stays cached. [default: 5s]
    #[arg(long, env = "KEYGATE_NEGATIVE_CACHE_TTL")]
    pub negative_cache_ttl: Option<String>,
    /// Keys held in the cache at most. [default: 1000000]
    #[arg(long, env = "KEYGATE_CACHE_CAPACITY")]
    pub cache_capacity: Option<u64>,
    /// Unknown hashes held in the negative cache at most. [default: 100000]
    #[arg(long, env = "KEYGATE_NEGATIVE_CACHE_CAPACITY")]
    pub negative_cache_capacity: Option<u64>,
    /// Bound on a cache-miss database read in Check (pool acquire and query),
    /// well inside Envoy's 200 ms default. [default: 100ms]
    #[arg(long, env = "KEYGATE_CHECK_TIMEOUT")]
    pub check_timeout: Option<String>,
    /// How long past its TTL a cached key keeps being answered while the
    /// store cannot be reached (stale-if-error); `0s` turns it off.
    /// [default: 15m]
    #[arg(long, env = "KEYGATE_CACHE_STALE_IF_ERROR")]
    pub cache_stale_if_error: Option<String>,
    /// Cache misses that may read the store at once; beyond it a miss is
    /// shed with UNAVAILABLE instead of queueing. [default: 64]
    #[arg(long, env = "KEYGATE_MAX_CONCURRENT_MISSES")]
    pub max_concurrent_misses: Option<usize>,

    /// Header carrying `Bearer <key>`. [default: authorization]
    #[arg(long, env = "KEYGATE_AUTHORIZATION_HEADER")]
    pub authorization_header: Option<String>,
    /// Header carrying a bare key. [default: x-api-key]
    #[arg(long, env = "KEYGATE_API_KEY_HEADER")]
    pub api_key_header: Option<String>,
    /// Remove the credential header before the request goes upstream.
    /// [default: true]
    #[arg(long, env = "KEYGATE_STRIP_CREDENTIAL")]
    pub strip_credential: Option<bool>,
    /// `deny` or `allow` bearer tokens that are not ours (allowed without
    /// identity). [default: deny]
    #[arg(long, env = "KEYGATE_FOREIGN_BEARER")]
    pub foreign_bearer: Option<String>,
    /// Trusted `x-forwarded-for` hops used to find the client IP; 0 uses the
    /// source address Envoy reports. [default: 0]
    #[arg(long, env = "KEYGATE_TRUSTED_PROXY_HOPS")]
    pub trusted_proxy_hops: Option<usize>,

    /// Record usage (counters, daily endpoint counts, log). Off only for
    /// measuring its cost. [default: true]
    #[arg(long, env = "KEYGATE_USAGE_ENABLED")]
    pub usage_enabled: Option<bool>,
    /// Usage flush interval. [default: 1s]
    #[arg(long, env = "KEYGATE_USAGE_FLUSH_INTERVAL")]
    pub usage_flush_interval: Option<String>,
    /// Usage events written per flush at most. [default: 5000]
    #[arg(long, env = "KEYGATE_USAGE_BATCH_SIZE")]
    pub usage_batch_size: Option<usize>,
    /// Usage events buffered in memory at most; beyond it events are dropped
    /// and counted, never blocking a Check. [default: 100000]
    #[arg(long, env = "KEYGATE_USAGE_BUFFER")]
    pub usage_buffer: Option<usize>,
    /// Bytes the buffered usage events may hold at most (an event keeps at
    /// most 512 bytes of path); beyond it events are dropped and counted.
    /// [default: 33554432, 32 MiB]
    #[arg(long, env = "KEYGATE_USAGE_BUFFER_BYTES")]
    pub usage_buffer_bytes: Option<usize>,
    /// Keep one row per request in the usage log. [default: true]
    #[arg(long, env = "KEYGATE_USAGE_LOG_ENABLED")]
    pub usage_log_enabled: Option<bool>,
    /// Days of usage log and daily counts kept by pruning. [default: 30]
    #[arg(long, env = "KEYGATE_USAGE_LOG_RETENTION_DAYS")]
    pub usage_log_retention_days: Option<u32>,
    /// Run the daily prune job in `serve` (one replica at a time). [default: true]
    #[arg(long, env = "KEYGATE_PRUNE_ENABLED")]
    pub prune_enabled: Option<bool>,

    /// Time allowed for a graceful stop: drain calls, flush usage, close the
    /// pool. [default: 25s]
    #[arg(long, env = "KEYGATE_SHUTDOWN_GRACE")]
    pub shutdown_grace: Option<String>,
    /// Log format, `pretty` or `json`. [default: pretty]
    #[arg(long, env = "KEYGATE_LOG_FORMAT")]
    pub log_format: Option<String>,

    /// PEM certificate chain for TLS on both gRPC listeners.
    #[arg(long, env = "KEYGATE_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for TLS on both gRPC listeners.
    #[arg(long, env = "KEYGATE_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA bundle; when set, the admin listener requires client
    /// certificates signed by it.
    #[arg(long, env = "KEYGATE_ADMIN_CLIENT_CA")]
    pub admin_client_ca: Option<PathBuf>,
    /// PEM CA bundle; when set, the Check listener requires client
    /// certificates signed by it, so only the proxies holding one can ask
    /// whether a key is valid.
    #[arg(long, env = "KEYGATE_AUTHZ_CLIENT_CA")]
    pub authz_client_ca: Option<PathBuf>,

    /// Longest rotation overlap a RotateKey may ask for; longer ones are
    /// refused. [default: 7d]
    #[arg(long, env = "KEYGATE_MAX_ROTATION_OVERLAP")]
    pub max_rotation_overlap: Option<String>,
    /// Let `service` tokens grant or raise `superkey` (otherwise only
    /// `admin` tokens may). [default: false]
    #[arg(long, env = "KEYGATE_SERVICE_TOKENS_MAY_GRANT_SUPERKEY")]
    pub service_tokens_may_grant_superkey: Option<bool>,

    /// Deliver webhooks to loopback, private, link-local and other
    /// non-public addresses (SSRF guard off; development and tests only).
    /// [default: false]
    #[arg(long, env = "KEYGATE_WEBHOOK_ALLOW_PRIVATE")]
    pub webhook_allow_private: Option<bool>,
    /// Allow `http://` webhook URLs (otherwise `https` only). [default: false]
    #[arg(long, env = "KEYGATE_WEBHOOK_ALLOW_HTTP")]
    pub webhook_allow_http: Option<bool>,
    /// Time allowed for one webhook delivery attempt. [default: 10s]
    #[arg(long, env = "KEYGATE_WEBHOOK_TIMEOUT")]
    pub webhook_timeout: Option<String>,
    /// How long a replica's claim on a delivery holds before another may
    /// take it; must exceed the timeout. [default: 60s]
    #[arg(long, env = "KEYGATE_WEBHOOK_LEASE")]
    pub webhook_lease: Option<String>,
    /// How often each replica looks for due deliveries. [default: 1s]
    #[arg(long, env = "KEYGATE_WEBHOOK_POLL_INTERVAL")]
    pub webhook_poll_interval: Option<String>,
    /// Delay before the first retry; each further one doubles (with
    /// jitter) up to 1h. [default: 10s]
    #[arg(long, env = "KEYGATE_WEBHOOK_RETRY_BASE")]
    pub webhook_retry_base: Option<String>,
    /// How long a failing delivery is retried before it is marked failed.
    /// [default: 24h]
    #[arg(long, env = "KEYGATE_WEBHOOK_RETRY_FOR")]
    pub webhook_retry_for: Option<String>,
    /// Run the webhook dispatcher in `serve`. [default: true]
    #[arg(long, env = "KEYGATE_WEBHOOKS_ENABLED")]
    pub webhooks_enabled: Option<bool>,
    /// Comma-separated durations before `expires_at` at which
    /// `api_key.expiring` is sent. [default: 7d,1d]
    #[arg(long, env = "KEYGATE_EXPIRY_WARNINGS")]
    pub expiry_warnings: Option<String>,

    /// Revoke keys unused this long (a key never used counts from its
    /// creation) in the prune job, e.g. `90d`; `off` or empty: never.
    /// [default: off]
    #[arg(long, env = "KEYGATE_DORMANT_AFTER")]
    pub dormant_after: Option<String>,
    /// Comma-separated prefixes of keys imported from another system (e.g.
    /// `lk_`): Check looks such a credential up by the SHA-256 of the whole
    /// string, without a checksum. [default: none]
    #[arg(long, env = "KEYGATE_IMPORTED_PREFIXES")]
    pub imported_prefixes: Option<String>,
    /// File of GitHub's secret-scanning public keys (its JSON format); turns
    /// on `POST /v1/secret-scanning/github` on the REST listener.
    /// [default: none, the route answers 404]
    #[arg(long, env = "KEYGATE_GITHUB_SCANNING_KEYS")]
    pub github_scanning_keys: Option<PathBuf>,
    /// What a leak report does to a key keygate knows: `revoke` (at once)
    /// or `notify` (audit and webhook only). [default: revoke]
    #[arg(long, env = "KEYGATE_LEAK_ACTION")]
    pub leak_action: Option<String>,

    /// Route rules (TOML only): `[[routes]]` with `method`, `path` (exact, or
    /// a prefix ending in `*`), `abilities`, `environment`, `mode`. Used when
    /// Envoy sends no `keygate.*` context extensions, e.g. under Istio.
    #[arg(skip)]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<RouteRuleSettings>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RouteRuleSettings {
    pub method: Option<String>,
    pub path: String,
    #[serde(default)]
    pub abilities: Vec<String>,
    pub environment: Option<String>,
    pub mode: Option<String>,
}

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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForeignBearer {
    Deny,
    Allow,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminRole {
    /// An application backend acting for its users.
    Service,
    /// An operator; may also call the admin RPCs.
    Admin,
}

/// A configured admin token: its name (the audit actor), role and SHA-256.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken {
    pub name: String,
    pub role: AdminRole,
    pub sha256: [u8; 32],
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminToken")
            .field("name", &self.name)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

/// A configured route rule, matched by method and normalised path
/// (`domain::path`). Paths compare without regard to ASCII case, so that
/// `/V1/orders` cannot slip past a `/v1/orders*` rule to a server that
/// ignores case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteRule {
    pub method: Option<String>,
    pub path: String,
    pub abilities: String,
    pub environment: Option<String>,
    pub shadow: bool,
}

impl RouteRule {
    pub fn matches(&self, method: &str, path: &str) -> bool {
        let path = path.split_once('?').map_or(path, |(p, _)| p);
        let method_ok = self
            .method
            .as_deref()
            .is_none_or(|m| m.eq_ignore_ascii_case(method));
        let path_ok = match self.path.strip_suffix('*') {
            Some(prefix) => path
                .get(..prefix.len())
                .is_some_and(|start| start.eq_ignore_ascii_case(prefix)),
            None => path.eq_ignore_ascii_case(&self.path),
        };
        method_ok && path_ok
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

/// What a leak report does to a key keygate knows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LeakAction {
    /// Revoke it at once (reason `leaked: <url>`).
    #[default]
    Revoke,
    /// Record the audit event and send the webhook; the key keeps working.
    Notify,
}

impl Settings {
    /// Reads the TOML file, if any, beneath the flags and environment.
    pub fn with_file(self, path: Option<&std::path::Path>) -> anyhow::Result<Settings> {
        let Some(path) = path else { return Ok(self) };
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read config file {}: {e}", path.display()))?;
        let file: Settings = toml::from_str(&text)
            .map_err(|e| anyhow::anyhow!("config file {}: {e}", path.display()))?;
        Ok(self.over(file))
    }

    /// `self` wins field by field; `below` fills what `self` leaves unset.
    pub fn over(self, below: Settings) -> Settings {
        let mut merged = serde_json::to_value(below).expect("settings serialize");
        let top = serde_json::to_value(self).expect("settings serialize");
        if let (Some(merged), serde_json::Value::Object(top)) = (merged.as_object_mut(), top) {
            for (name, value) in top {
                if !value.is_null() {
                    merged.insert(name, value);
                }
            }
        }
        serde_json::from_value(merged).expect("merged settings deserialize")
    }

    pub fn validate(self) -> Result<Config, ConfigError> {
        let database_url = match (self.database_url, self.database_url_file) {
            (Some(url), _) => url,
            (None, Some(file)) => read_secret_file(&file)
                .map_err(|e| invalid("database_url_file", "KEYGATE_DATABASE_URL_FILE", e))?,
            (None, None) => "sqlite://keygate.db".to_owned(),
        };
        if !(database_url.starts_with("sqlite:")
            || database_url.starts_with("postgres://")
            || database_url.starts_with("postgresql://"))
        {
            return Err(invalid(
                "database_url",
                "KEYGATE_DATABASE_URL",
                "must start with sqlite:, postgres:// or postgresql://",
            ));
        }
        let tokens_text = match (self.admin_tokens, self.admin_tokens_file) {
            (Some(tokens), _) => tokens,
            (None, Some(file)) => read_secret_file(&file)
                .map_err(|e| invalid("admin_tokens_file", "KEYGATE_ADMIN_TOKENS_FILE", e))?,
            (None, None) => String::new(),
        };
        let admin_tokens = parse_admin_tokens(&tokens_text)
            .map_err(|e| invalid("admin_tokens", "KEYGATE_ADMIN_TOKENS", e))?;

        let environments = split_list(self.environments.as_deref().unwrap_or("live,test"));
        let key_format = KeyFormat::new(
            self.key_prefix.as_deref().unwrap_or("sk"),
            &environments,
            self.token_length.unwrap_or(32),
        )
        .map_err(|e| {
            invalid(
                "key_format",
                "KEYGATE_KEY_PREFIX / KEYGATE_ENVIRONMENTS / KEYGATE_TOKEN_LENGTH",
                e,
            )
        })?;

        let ability_catalog =
            ability::parse_all(&split_list(self.abilities.as_deref().unwrap_or("")), &[])
                .map_err(|e| invalid("abilities", "KEYGATE_ABILITIES", e))?;

        let default_rate_limit = self
            .default_rate_limit
            .as_deref()
            .filter(|s| !s.trim().is_empty() && s.trim() != "none")
            .map(parse_rate_limit)
            .transpose()
            .map_err(|e| invalid("default_rate_limit", "KEYGATE_DEFAULT_RATE_LIMIT", e))?;

        let foreign_bearer = match self.foreign_bearer.as_deref().unwrap_or("deny") {
            "deny" => ForeignBearer::Deny,
            "allow" => ForeignBearer::Allow,
            other => {
                return Err(invalid(
                    "foreign_bearer",
                    "KEYGATE_FOREIGN_BEARER",
                    format!("{other:?} is neither deny nor allow"),
                ))
            }
        };
        let log_format = match self.log_format.as_deref().unwrap_or("pretty") {
            "pretty" => LogFormat::Pretty,
            "json" => LogFormat::Json,
            other => {
                return Err(invalid(
                    "log_format",
                    "KEYGATE_LOG_FORMAT",
                    format!("{other:?} is neither pretty nor json"),
                ))
            }
        };
        let tls = match (self.tls_cert, self.tls_key) {
            (Some(cert), Some(key)) => Some(TlsConfig {
                cert,
                key,
                admin_client_ca: self.admin_client_ca,
                authz_client_ca: self.authz_client_ca,
            }),
            (None, None) if self.admin_client_ca.is_some() => {
                return Err(invalid(
                    "admin_client_ca",
                    "KEYGATE_ADMIN_CLIENT_CA",
                    "requires tls_cert and tls_key",
                ))
            }
            (None, None) if self.authz_client_ca.is_some() => {
                return Err(invalid(
                    "authz_client_ca",
                    "KEYGATE_AUTHZ_CLIENT_CA",
                    "requires tls_cert and tls_key",
                ))
            }
            (None, None) => None,
            _ => {
                return Err(invalid(
                    "tls_cert",
                    "KEYGATE_TLS_CERT / KEYGATE_TLS_KEY",
                    "set both or neither",
                ))
            }
        };
        let routes = self
            .routes
            .into_iter()
            .map(|r| route_rule(r, &key_format))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid("routes", "(config file only)", e))?;

        let header = |v: Option<String>, default: &str, setting, env| {
            let name = v.unwrap_or_else(|| default.to_owned()).to_ascii_lowercase();
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                Err(invalid(
                    setting,
                    env,
                    format!("{name:?} is not a header name"),
                ))
            } else {
                Ok(name)
            }
        };

        let config = Config {
            database_url,
            database_max_connections: positive(
                self.database_max_connections.unwrap_or(10),
                "database_max_connections",
                "KEYGATE_DATABASE_MAX_CONNECTIONS",
            )?,
            migrate_on_start: self.migrate_on_start.unwrap_or(true),
            authz_addr: addr(
                self.authz_addr,
                "0.0.0.0:50051",
                "authz_addr",
                "KEYGATE_AUTHZ_ADDR",
            )?,
            admin_addr: addr(
                self.admin_addr,
                "127.0.0.1:50052",
                "admin_addr",
                "KEYGATE_ADMIN_ADDR",
            )?,
            metrics_addr: addr(
                self.metrics_addr,
                "0.0.0.0:9090",
                "metrics_addr",
                "KEYGATE_METRICS_ADDR",
            )?,
            forward_auth_addr: addr(
                self.forward_auth_addr,
                "0.0.0.0:8081",
                "forward_auth_addr",
                "KEYGATE_FORWARD_AUTH_ADDR",
            )?,
            forward_auth_path_prefix: path_prefix(self.forward_auth_path_prefix.as_deref())?,
            metadata_headers: metadata_headers(self.metadata_headers.as_deref())?,
            http_addr: addr(
                self.http_addr,
                "127.0.0.1:8080",
                "http_addr",
                "KEYGATE_HTTP_ADDR",
            )?,
            admin_tokens,
            key_format,
            max_keys_per_owner: positive(
                self.max_keys_per_owner.unwrap_or(100),
                "max_keys_per_owner",
                "KEYGATE_MAX_KEYS_PER_OWNER",
            )?,
            ability_catalog,
            default_rate_limit,
            rate_limit_store: rate_limit_store(
                self.rate_limit_store.as_deref(),
                duration(
                    self.rate_limit_timeout,
                    "5ms",
                    "rate_limit_timeout",
                    "KEYGATE_RATE_LIMIT_TIMEOUT",
                )?,
                self.rate_limit_prefix
                    .unwrap_or_else(|| "keygate:".to_owned()),
            )?,
            credit_lease: positive(
                self.credit_lease.unwrap_or(100),
                "credit_lease",
                "KEYGATE_CREDIT_LEASE",
            )?,
            cache_ttl: duration(self.cache_ttl, "60s", "cache_ttl", "KEYGATE_CACHE_TTL")?,
            negative_cache_ttl: duration(
                self.negative_cache_ttl,
                "5s",
                "negative_cache_ttl",
                "KEYGATE_NEGATIVE_CACHE_TTL",
            )?,
            cache_capacity: self.cache_capacity.unwrap_or(1_000_000),
            negative_cache_capacity: self.negative_cache_capacity.unwrap_or(100_000),
            check_timeout: nonzero_duration(
                self.check_timeout,
                "100ms",
                "check_timeout",
                "KEYGATE_CHECK_TIMEOUT",
            )?,
            cache_stale_if_error: duration(
                self.cache_stale_if_error,
                "15m",
                "cache_stale_if_error",
                "KEYGATE_CACHE_STALE_IF_ERROR",
            )?,
            max_concurrent_misses: positive(
                self.max_concurrent_misses.unwrap_or(64),
                "max_concurrent_misses",
                "KEYGATE_MAX_CONCURRENT_MISSES",
            )?,
            authorization_header: header(
                self.authorization_header,
                "authorization",
                "authorization_header",
                "KEYGATE_AUTHORIZATION_HEADER",
            )?,
            api_key_header: header(
                self.api_key_header,
                "x-api-key",
                "api_key_header",
                "KEYGATE_API_KEY_HEADER",
            )?,
            strip_credential: self.strip_credential.unwrap_or(true),
            foreign_bearer,
            trusted_proxy_hops: self.trusted_proxy_hops.unwrap_or(0),
            usage_enabled: self.usage_enabled.unwrap_or(true),
            usage_flush_interval: nonzero_duration(
                self.usage_flush_interval,
                "1s",
                "usage_flush_interval",
                "KEYGATE_USAGE_FLUSH_INTERVAL",
            )?,
            usage_batch_size: positive(
                self.usage_batch_size.unwrap_or(5000),
                "usage_batch_size",
                "KEYGATE_USAGE_BATCH_SIZE",
            )?,
            usage_buffer: positive(
                self.usage_buffer.unwrap_or(100_000),
                "usage_buffer",
                "KEYGATE_USAGE_BUFFER",
            )?,
            usage_buffer_bytes: positive(
                self.usage_buffer_bytes.unwrap_or(32 << 20),
                "usage_buffer_bytes",
                "KEYGATE_USAGE_BUFFER_BYTES",
            )?,
            usage_log_enabled: self.usage_log_enabled.unwrap_or(true),
            usage_log_retention_days: positive(
                self.usage_log_retention_days.unwrap_or(30),
                "usage_log_retention_days",
                "KEYGATE_USAGE_LOG_RETENTION_DAYS",
            )?,
            prune_enabled: self.prune_enabled.unwrap_or(true),
            shutdown_grace: duration(
                self.shutdown_grace,
                "25s",
                "shutdown_grace",
                "KEYGATE_SHUTDOWN_GRACE",
            )?,
            log_format,
            tls,
            routes,
            max_rotation_overlap: duration(
                self.max_rotation_overlap,
                "7d",
                "max_rotation_overlap",
                "KEYGATE_MAX_ROTATION_OVERLAP",
            )?,
            service_tokens_may_grant_superkey: self
                .service_tokens_may_grant_superkey
                .unwrap_or(false),
            webhooks_enabled: self.webhooks_enabled.unwrap_or(true),
            webhooks: webhook_settings(
                self.webhook_allow_private,
                self.webhook_allow_http,
                self.webhook_timeout,
                self.webhook_lease,
                self.webhook_poll_interval,
                self.webhook_retry_base,
                self.webhook_retry_for,
                self.expiry_warnings,
            )?,
            hygiene: hygiene(
                self.dormant_after,
                self.imported_prefixes,
                self.github_scanning_keys,
                self.leak_action,
            )?,
        };
        if config.admin_tokens.is_empty() && !config.admin_addr.ip().is_loopback() {
            return Err(invalid(
                "admin_addr",
                "KEYGATE_ADMIN_ADDR",
                "without admin tokens the KeyAdmin listener may only bind a loopback address; set KEYGATE_ADMIN_TOKENS (see `keygate admin-token`)",
            ));
        }
        if config.admin_tokens.is_empty() && !config.http_addr.ip().is_loopback() {
            return Err(invalid(
                "http_addr",
                "KEYGATE_HTTP_ADDR",
                "without admin tokens the REST API may only bind a loopback address; set KEYGATE_ADMIN_TOKENS (see `keygate admin-token`)",
            ));
        }
        Ok(config)
    }
}

/// The webhook dispatcher's settings; see `webhooks::DispatchSettings`.
#[allow(clippy::too_many_arguments)]
fn webhook_settings(
    allow_private: Option<bool>,
    allow_http: Option<bool>,
    timeout: Option<String>,
    lease: Option<String>,
    poll_interval: Option<String>,
    retry_base: Option<String>,
    retry_for: Option<String>,
    expiry_warnings: Option<String>,
) -> Result<crate::webhooks::DispatchSettings, ConfigError> {
    let timeout = nonzero_duration(timeout, "10s", "webhook_timeout", "KEYGATE_WEBHOOK_TIMEOUT")?;
    let lease = nonzero_duration(lease, "60s", "webhook_lease", "KEYGATE_WEBHOOK_LEASE")?;
    if lease <= timeout {
        return Err(invalid(
            "webhook_lease",
            "KEYGATE_WEBHOOK_LEASE",
            "must be longer than webhook_timeout, or a live replica's claim could pass to another mid-delivery",
        ));
    }
    let mut warnings = Vec::new();
    for raw in split_list(expiry_warnings.as_deref().unwrap_or("7d,1d")) {
        let warning =
            nonzero_duration(Some(raw), "", "expiry_warnings", "KEYGATE_EXPIRY_WARNINGS")?;
        warnings.push(warning);
    }
    Ok(crate::webhooks::DispatchSettings {
        policy: crate::webhooks::TargetPolicy {
            allow_private: allow_private.unwrap_or(false),
            allow_http: allow_http.unwrap_or(false),
        },
        timeout,
        lease,
        poll_interval: nonzero_duration(
            poll_interval,
            "1s",
            "webhook_poll_interval",
            "KEYGATE_WEBHOOK_POLL_INTERVAL",
        )?,
        retry_base: nonzero_duration(
            retry_base,
            "10s",
            "webhook_retry_base",
            "KEYGATE_WEBHOOK_RETRY_BASE",
        )?,
        retry_for: duration(
            retry_for,
            "24h",
            "webhook_retry_for",
            "KEYGATE_WEBHOOK_RETRY_FOR",
        )?,
        expiry_warnings: warnings,
        ..crate::webhooks::DispatchSettings::default()
    })
}

/// `/ext-authz` or nothing: `/` alone or a trailing `/` would eat the
/// original path's own leading slash.
fn path_prefix(raw: Option<&str>) -> Result<String, ConfigError> {
    let prefix = raw.unwrap_or("").trim();
    let valid = prefix.is_empty()
        || (prefix.starts_with('/')
            && !prefix.ends_with('/')
            && prefix.bytes().all(|b| b.is_ascii_graphic() && b != b'?'));
    if valid {
        Ok(prefix.to_owned())
    } else {
        Err(invalid(
            "forward_auth_path_prefix",
            "KEYGATE_FORWARD_AUTH_PATH_PREFIX",
            format!("{prefix:?} must start with / and not end with one, as in /ext-authz"),
        ))
    }
}

/// `local`, or a `redis://` URL with the timeout and key prefix that go
/// with it.
fn rate_limit_store(
    raw: Option<&str>,
    timeout: Duration,
    prefix: String,
) -> Result<RateLimitStore, ConfigError> {
    let raw = raw.map(str::trim).unwrap_or("local");
    if raw == "local" {
        return Ok(RateLimitStore::Local);
    }
    if !raw.starts_with("redis://") {
        return Err(invalid(
            "rate_limit_store",
            "KEYGATE_RATE_LIMIT_STORE",
            "must be local or a redis:// URL",
        ));
    }
    if timeout.is_zero() {
        return Err(invalid(
            "rate_limit_timeout",
            "KEYGATE_RATE_LIMIT_TIMEOUT",
            "must be greater than zero",
        ));
    }
    Ok(RateLimitStore::Redis(RedisSettings {
        url: RedisUrl(raw.to_owned()),
        timeout,
        prefix,
    }))
}

/// Metadata names usable in a header name: `[A-Za-z0-9_-]`, at most 64.
fn metadata_headers(raw: Option<&str>) -> Result<Vec<String>, ConfigError> {
    let names = split_list(raw.unwrap_or(""));
    for name in &names {
        let usable = name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !usable {
            return Err(invalid(
                "metadata_headers",
                "KEYGATE_METADATA_HEADERS",
                format!("{name:?} cannot be part of a header name (letters, digits, - and _ only)"),
            ));
        }
    }
    Ok(names)
}

fn hygiene(
    dormant_after: Option<String>,
    imported_prefixes: Option<String>,
    scanning_keys: Option<PathBuf>,
    leak_action: Option<String>,
) -> Result<HygieneConfig, ConfigError> {
    let dormant_after = match dormant_after.as_deref().map(str::trim) {
        None | Some("" | "off") => None,
        Some(raw) => Some(nonzero_duration(
            Some(raw.to_owned()),
            "",
            "dormant_after",
            "KEYGATE_DORMANT_AFTER",
        )?),
    };
    let imported_prefixes = split_list(imported_prefixes.as_deref().unwrap_or(""));
    if let Some(bad) = imported_prefixes
        .iter()
        .find(|p| p.len() > 32 || !p.bytes().all(|b| b.is_ascii_graphic()) || p.contains(','))
    {
        return Err(invalid(
            "imported_prefixes",
            "KEYGATE_IMPORTED_PREFIXES",
            format!("{bad:?} must be 1 to 32 printable ASCII characters without spaces"),
        ));
    }
    let scanning_keys = scanning_keys
        .map(|path| {
            std::fs::read_to_string(&path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))
                .and_then(|text| crate::leaks::ScanningKeys::from_json(&text))
        })
        .transpose()
        .map_err(|e| invalid("github_scanning_keys", "KEYGATE_GITHUB_SCANNING_KEYS", e))?;
    let leak_action = match leak_action.as_deref().map(str::trim) {
        None | Some("revoke") => LeakAction::Revoke,
        Some("notify") => LeakAction::Notify,
        Some(other) => {
            return Err(invalid(
                "leak_action",
                "KEYGATE_LEAK_ACTION",
                format!("{other:?} is neither revoke nor notify"),
            ))
        }
    };
    Ok(HygieneConfig {
        dormant_after,
        imported_prefixes,
        scanning_keys,
        leak_action,
    })
}

fn read_secret_file(path: &std::path::Path) -> Result<String, String> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .map_err(|e| format!("cannot read {}: {e}", path.display()))
}

fn split_list(raw: &str) -> Vec<String> {
    raw.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

fn positive<T: PartialOrd + Default + Copy>(
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

fn addr(
    value: Option<String>,
    default: &str,
    setting: &'static str,
    env: &'static str,
) -> Result<SocketAddr, ConfigError> {
    let raw = value.unwrap_or_else(|| default.to_owned());
    SocketAddr::from_str(&raw)
        .map_err(|e| invalid(setting, env, format!("{raw:?} is not host:port ({e})")))
}

fn duration(
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
fn nonzero_duration(
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

/// Parses `name:role:sha256hex,…`. Tokens are configured by hash only.
pub fn parse_admin_tokens(raw: &str) -> Result<Vec<AdminToken>, String> {
    let mut tokens: Vec<AdminToken> = Vec::new();
    for entry in split_list(raw) {
        let mut parts = entry.splitn(3, ':');
        let (Some(name), Some(role), Some(hash)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err("each entry must be name:role:sha256hex".into());
        };
        let role = match role {
            "service" => AdminRole::Service,
            "admin" => AdminRole::Admin,
            other => {
                return Err(format!(
                    "role {other:?} for token {name:?} is neither service nor admin"
                ))
            }
        };
        let sha256: [u8; 32] = hex::decode(hash)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| {
                format!("token {name:?}: the hash must be 64 hex characters (a SHA-256)")
            })?;
        if name.is_empty() || tokens.iter().any(|t| t.name == name) {
            return Err(format!("token name {name:?} is empty or repeated"));
        }
        // One secret under two names would make the audit actor (and, with
        // two roles, the permissions) depend on the order of the entries.
        if let Some(first) = tokens.iter().find(|t| t.sha256 == sha256) {
            return Err(format!(
                "tokens {:?} and {name:?} have the same hash; give each caller its own token",
                first.name
            ));
        }
        tokens.push(AdminToken {
            name: name.to_owned(),
            role,
            sha256,
        });
    }
    Ok(tokens)
}

fn route_rule(rule: RouteRuleSettings, format: &KeyFormat) -> Result<RouteRule, String> {
    if !rule.path.starts_with('/') {
        return Err(format!("path {:?} must start with /", rule.path));
    }
    // Requests are matched in normal form, so a rule in another could never
    // match.
    let pattern = rule.path.strip_suffix('*').unwrap_or(&rule.path);
    match crate::domain::path::normalize(pattern) {
        Ok(normal) if normal == pattern => {}
        Ok(normal) => {
            return Err(format!(
                "path {:?} is not normalised: write {:?}",
                rule.path,
                rule.path.replacen(pattern, &normal, 1)
            ))
        }
        Err(error) => return Err(format!("path {:?}: {error}", rule.path)),
    }
    let abilities = ability::parse_all(&rule.abilities, &[]).map_err(|e| e.to_string())?;
    if let Some(env) = rule
        .environment
        .as_deref()
        .filter(|e| !format.has_environment(e))
    {
        return Err(format!("environment {env:?} is not configured"));
    }
    let shadow = match rule.mode.as_deref() {
        None | Some("enforce") => false,
        Some("shadow") => true,
        Some(other) => return Err(format!("mode {other:?} is neither enforce nor shadow")),
    };
    Ok(RouteRule {
        method: rule.method,
        path: rule.path,
        abilities: abilities
            .iter()
            .map(Ability::as_str)
            .collect::<Vec<_>>()
            .join(","),
        environment: rule.environment,
        shadow,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hygiene_settings_are_off_by_default_and_bad_values_name_their_setting() {
        let hygiene = Settings::default().validate().unwrap().hygiene;
        assert_eq!(hygiene.dormant_after, None);
        assert!(hygiene.imported_prefixes.is_empty() && hygiene.scanning_keys.is_none());
        assert_eq!(hygiene.leak_action, LeakAction::Revoke);
        let with = |change: fn(&mut Settings)| {
            let mut settings = Settings::default();
            change(&mut settings);
            settings.validate()
        };
        let set = with(|s| {
            s.dormant_after = Some("90d".into());
            s.imported_prefixes = Some("lk_, old_".into());
            s.leak_action = Some("notify".into());
        })
        .unwrap()
        .hygiene;
        assert_eq!(set.dormant_after, Some(Duration::from_secs(90 * 86_400)));
        assert_eq!(set.imported_prefixes, ["lk_", "old_"]);
        assert_eq!(set.leak_action, LeakAction::Notify);
        for (error, env) in [
            (
                with(|s| s.leak_action = Some("delete".into())),
                "KEYGATE_LEAK_ACTION",
            ),
            (
                with(|s| s.dormant_after = Some("soon".into())),
                "KEYGATE_DORMANT_AFTER",
            ),
            (
                with(|s| s.dormant_after = Some("0s".into())),
                "KEYGATE_DORMANT_AFTER",
            ),
            (
                with(|s| s.imported_prefixes = Some("l k".into())),
                "KEYGATE_IMPORTED_PREFIXES",
            ),
            (
                with(|s| s.github_scanning_keys = Some("/nonexistent/keys.json".into())),
                "KEYGATE_GITHUB_SCANNING_KEYS",
            ),
        ] {
            assert_eq!(error.unwrap_err().env, env);
        }
    }

    #[test]
    fn defaults_validate() {
        let config = Settings::default().validate().unwrap();
        assert_eq!(config.database_url, "sqlite://keygate.db");
        assert_eq!(config.authz_addr.port(), 50051);
        assert_eq!(config.cache_ttl, Duration::from_secs(60));
        assert_eq!(config.check_timeout, Duration::from_millis(100));
        assert_eq!(config.key_format.environments(), ["live", "test"]);
    }

    #[test]
    fn a_zero_flush_interval_or_check_timeout_is_refused_by_name() {
        let zero_flush = Settings {
            usage_flush_interval: Some("0s".into()),
            ..Default::default()
        };
        let message = zero_flush.validate().unwrap_err().to_string();
        assert!(
            message.contains("KEYGATE_USAGE_FLUSH_INTERVAL")
                && message.contains("greater than zero"),
            "{message}"
        );
        let zero_timeout = Settings {
            check_timeout: Some("0ms".into()),
            ..Default::default()
        };
        let message = zero_timeout.validate().unwrap_err().to_string();
        assert!(message.contains("KEYGATE_CHECK_TIMEOUT"), "{message}");
    }

    #[test]
    fn an_invalid_setting_is_named_in_the_error() {
        let settings = Settings {
            cache_ttl: Some("ten minutes".into()),
            ..Default::default()
        };
        let message = settings.validate().unwrap_err().to_string();
        assert!(
            message.contains("cache_ttl") && message.contains("KEYGATE_CACHE_TTL"),
            "{message}"
        );
        let settings = Settings {
            foreign_bearer: Some("maybe".into()),
            ..Default::default()
        };
        assert!(settings
            .validate()
            .unwrap_err()
            .to_string()
            .contains("KEYGATE_FOREIGN_BEARER"));
    }

    #[test]
    fn forward_auth_settings_refuse_unusable_prefixes_and_metadata_names() {
        let config = Settings::default().validate().unwrap();
        assert_eq!(config.forward_auth_addr.port(), 8081);
        assert_eq!(config.forward_auth_path_prefix, "");
        let settings = Settings {
            forward_auth_path_prefix: Some("/ext-authz".into()),
            metadata_headers: Some("tier, plan_code".into()),
            ..Default::default()
        };
        let config = settings.validate().unwrap();
        assert_eq!(config.forward_auth_path_prefix, "/ext-authz");
        assert_eq!(config.metadata_headers, ["tier", "plan_code"]);
        for prefix in ["/", "ext-authz", "/ext-authz/", "/a?b"] {
            let settings = Settings {
                forward_auth_path_prefix: Some(prefix.into()),
                ..Default::default()
            };
            let message = settings.validate().unwrap_err().to_string();
            assert!(
                message.contains("KEYGATE_FORWARD_AUTH_PATH_PREFIX"),
                "{prefix}: {message}"
            );
        }
        for names in ["tier,pl an", "a:b", "caf\u{e9}"] {
            let settings = Settings {
                metadata_headers: Some(names.into()),
                ..Default::default()
            };
            let message = settings.validate().unwrap_err().to_string();
            assert!(
                message.contains("KEYGATE_METADATA_HEADERS"),
                "{names}: {message}"
            );
        }
    }

    #[test]
    fn a_public_admin_bind_requires_tokens() {
        let settings = Settings {
            admin_addr: Some("0.0.0.0:50052".into()),
            ..Default::default()
        };
        assert!(settings
            .validate()
            .unwrap_err()
            .to_string()
            .contains("KEYGATE_ADMIN_TOKENS"));
        let hash = "a".repeat(64);
        let settings = Settings {
            admin_addr: Some("0.0.0.0:50052".into()),
            admin_tokens: Some(format!("ops:admin:{hash}")),
            ..Default::default()
        };
        assert_eq!(
            settings.validate().unwrap().admin_tokens[0].role,
            AdminRole::Admin
        );
    }

    #[test]
    fn a_public_rest_bind_requires_tokens() {
        let settings = Settings {
            http_addr: Some("0.0.0.0:8080".into()),
            ..Default::default()
        };
        assert!(settings
            .validate()
            .unwrap_err()
            .to_string()
            .contains("KEYGATE_HTTP_ADDR"));
        let settings = Settings {
            http_addr: Some("0.0.0.0:8080".into()),
            admin_tokens: Some(format!("ops:admin:{}", "a".repeat(64))),
            ..Default::default()
        };
        assert_eq!(settings.validate().unwrap().http_addr.port(), 8080);
    }

    #[test]
    fn flags_and_env_win_over_the_file() {
        let file: Settings = toml::from_str("cache_ttl = \"30s\"\nkey_prefix = \"pk\"\n[[routes]]\npath = \"/v1/orders*\"\nabilities = [\"read:orders\"]\n").unwrap();
        let cli = Settings {
            key_prefix: Some("ak".into()),
            ..Default::default()
        };
        let config = cli.over(file).validate().unwrap();
        assert_eq!(config.key_format.prefix(), "ak");
        assert_eq!(config.cache_ttl, Duration::from_secs(30));
        assert!(config.routes[0].matches("GET", "/v1/orders/42?x=1"));
        assert!(!config.routes[0].matches("GET", "/v2/orders"));
    }

    fn rules(paths: &[&str]) -> Result<Config, ConfigError> {
        let routes = paths.iter().map(|path| RouteRuleSettings {
            path: (*path).into(),
            abilities: vec!["write:orders".into()],
            ..Default::default()
        });
        Settings {
            routes: routes.collect(),
            ..Default::default()
        }
        .validate()
    }

    #[test]
    fn route_rules_match_normalised_paths_in_any_case() {
        let config = rules(&["/v1/orders*", "/v1/%40me"]).unwrap();
        let [prefix, exact] = &config.routes[..] else {
            panic!("two rules")
        };
        for path in ["/v1/orders", "/V1/Orders/42", "/v1/orders-archive"] {
            assert!(prefix.matches("POST", path), "{path}");
        }
        assert!(!prefix.matches("POST", "/v1/order"));
        assert!(exact.matches("GET", "/V1/%40ME"));
        assert!(!exact.matches("GET", "/v1/%40me/x"));
    }

    #[test]
    fn a_route_rule_path_that_is_not_normalised_is_refused() {
        for (path, problem) in [
            ("/v1//orders*", "write \"/v1/orders*\""),
            ("/v1/./orders", "write \"/v1/orders\""),
            ("/v1/%6frders*", "write \"/v1/orders*\""),
            ("/v1/../../x", "above the root"),
            ("/v1%2forders*", "encoded slash"),
        ] {
            let message = rules(&[path]).unwrap_err().to_string();
            assert!(message.contains(problem), "{path}: {message}");
        }
    }

    #[test]
    fn one_token_hash_under_two_names_is_refused() {
        let hash = "b".repeat(64);
        let error =
            parse_admin_tokens(&format!("ops:admin:{hash},billing:service:{hash}")).unwrap_err();
        assert!(
            error.contains("\"ops\"") && error.contains("\"billing\""),
            "{error}"
        );
        let other = "c".repeat(64);
        assert_eq!(
            parse_admin_tokens(&format!("ops:admin:{hash},billing:service:{other}"))
                .unwrap()
                .len(),
            2
        );
    }

    #[test]
    fn rotation_overlap_defaults_to_seven_days_and_superkeys_to_admins() {
        let config = Settings::default().validate().unwrap();
        assert_eq!(
            config.max_rotation_overlap,
            Duration::from_secs(7 * 24 * 3600)
        );
        assert!(!config.service_tokens_may_grant_superkey);
    }

    #[test]
    fn a_check_client_ca_requires_tls() {
        let settings = Settings {
            authz_client_ca: Some("ca.crt".into()),
            ..Default::default()
        };
        assert!(settings
            .validate()
            .unwrap_err()
            .to_string()
            .contains("KEYGATE_AUTHZ_CLIENT_CA"));
    }

    #[test]
    fn unknown_file_keys_are_rejected() {
        assert!(toml::from_str::<Settings>("cache_tll = \"30s\"").is_err());
    }

    #[test]
    fn secrets_can_come_from_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("url");
        std::fs::write(&path, "postgres://u@h/db\n").unwrap();
        let settings = Settings {
            database_url_file: Some(path),
            ..Default::default()
        };
        assert_eq!(
            settings.validate().unwrap().database_url,
            "postgres://u@h/db"
        );
    }
}
