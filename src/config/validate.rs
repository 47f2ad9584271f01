//! From the settings as given to a [`Config`]: defaults applied, every value
//! checked, an error naming the setting and its environment variable.

use std::{path::PathBuf, time::Duration};

use super::{
    invalid,
    values::{
        addr, duration, nonzero_duration, parse_rate_limit, positive, read_secret_file, split_list,
    },
    Config, ConfigError, HygieneConfig, RouteRuleSettings, Settings, TlsConfig,
};
use crate::{
    admin::{hygiene::LeakAction, parse_admin_tokens},
    authz::ForeignBearer,
    domain::{ability, Ability, KeyFormat, RouteRule},
    ratelimit::{RateLimitStore, RedisSettings, RedisUrl},
    telemetry::LogFormat,
};

impl Settings {
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
                self.webhook_ca_file,
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
    ca_file: Option<std::path::PathBuf>,
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
        ca_file,
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
