//! Every setting as given: the clap surface and the TOML schema in one
//! type, and the file read beneath flags and environment.

use std::path::PathBuf;

use clap::Args;
use serde::{Deserialize, Serialize};

use super::list;

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
    #[serde(default, deserialize_with = "list::comma_string_or_array")]
    pub metadata_headers: Option<String>,
    /// Address of the Prometheus `/metrics` listener. [default: 0.0.0.0:9090]
    #[arg(long, env = "KEYGATE_METRICS_ADDR")]
    pub metrics_addr: Option<String>,
    /// Address of the REST/JSON API (the KeyAdmin use-cases over HTTP). Without
    /// admin tokens only a loopback address is accepted. [default: 127.0.0.1:8080]
    #[arg(long, env = "KEYGATE_HTTP_ADDR")]
    pub http_addr: Option<String>,

    /// KeyAdmin tokens, comma-separated `name:role:sha256hex`; role is
    /// `service`, `admin` or `feed` (KeyFeed only). `keygate admin-token`
    /// prints a fresh one.
    #[arg(long, env = "KEYGATE_ADMIN_TOKENS", hide_env_values = true)]
    #[serde(default, deserialize_with = "list::comma_string_or_array")]
    pub admin_tokens: Option<String>,
    /// File holding the admin tokens (for a mounted Secret).
    #[arg(long, env = "KEYGATE_ADMIN_TOKENS_FILE")]
    pub admin_tokens_file: Option<PathBuf>,

    /// Product prefix of every key, `[a-z][a-z0-9]{0,15}`. [default: sk]
    #[arg(long, env = "KEYGATE_KEY_PREFIX")]
    pub key_prefix: Option<String>,
    /// Comma-separated environments a key may belong to. [default: live,test]
    #[arg(long, env = "KEYGATE_ENVIRONMENTS")]
    #[serde(default, deserialize_with = "list::comma_string_or_array")]
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
    #[serde(default, deserialize_with = "list::comma_string_or_array")]
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
    /// PEM file of CA certificates that sign webhook endpoints' TLS
    /// certificates, trusted besides the public (webpki) roots: receivers
    /// behind a private CA. [default: none]
    #[arg(long, env = "KEYGATE_WEBHOOK_CA_FILE")]
    pub webhook_ca_file: Option<PathBuf>,
    /// Time allowed for one webhook delivery attempt. [default: 10s]
    #[arg(long, env = "KEYGATE_WEBHOOK_TIMEOUT")]
    pub webhook_timeout: Option<String>,
    /// How long a replica's claim on a delivery holds before another may
    /// take it (PostgreSQL; on SQLite, one process, nothing is claimed);
    /// must exceed the timeout. [default: 60s]
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
    #[serde(default, deserialize_with = "list::comma_string_or_array")]
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
    #[serde(default, deserialize_with = "list::comma_string_or_array")]
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
    #[serde(default, deserialize_with = "list::items_from_string_or_array")]
    pub abilities: Vec<String>,
    pub environment: Option<String>,
    pub mode: Option<String>,
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
}
