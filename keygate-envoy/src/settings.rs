//! The filter's configuration, as JSON in Envoy's `DynamicModuleFilter`
//! (`filter_config`, a `google.protobuf.StringValue`) and per route in
//! `DynamicModuleFilterPerRoute`. The names follow keygate's own settings
//! (README, "Configuration") so that one keygate deployment and its Envoy
//! filters can be configured alike.

use std::path::PathBuf;

use keygate::{
    authz::ForeignBearer,
    domain::{KeyFormat, KeyFormatError, RateLimit, RouteRequirements},
};
use serde::Deserialize;

use crate::lookup::LookupSettings;

/// The dynamic-metadata namespace of an allowed key's identity: the fields
/// Check returns in its `dynamic_metadata` (`key_id`, `owner_id`,
/// `environment`, `key_prefix`, `abilities`).
pub const METADATA_NAMESPACE: &str = "keygate";
/// The namespace of the key's own metadata map, one entry per name.
pub const KEY_METADATA_NAMESPACE: &str = "keygate.metadata";

/// `filter_config` of the filter.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterSettings {
    /// The key format's product prefix (`KEYGATE_KEY_PREFIX`), default `sk`.
    #[serde(default = "default_prefix")]
    pub key_prefix: String,
    /// The configured environments (`KEYGATE_ENVIRONMENTS`), default
    /// `live` and `test`.
    #[serde(default = "default_environments")]
    pub environments: Vec<String>,
    /// `deny` (default) or `allow` a bearer token without our prefix.
    #[serde(default)]
    pub foreign_bearer: ForeignBearerSetting,
    #[serde(default = "default_authorization_header")]
    pub authorization_header: String,
    #[serde(default = "default_api_key_header")]
    pub api_key_header: String,
    /// Remove the credential headers before the request goes upstream.
    #[serde(default = "yes")]
    pub strip_credential: bool,
    /// Metadata names sent upstream as `x-keygate-meta-<name>`.
    #[serde(default)]
    pub metadata_headers: Vec<String>,
    /// Also describe an allowed key in the stream's dynamic metadata, for
    /// access logs and later filters (e.g. rate-limit descriptors): the
    /// identity under [`METADATA_NAMESPACE`], the key's metadata map under
    /// [`KEY_METADATA_NAMESPACE`]. Off by default: Envoy builds a struct per
    /// value, which costs more than the decision itself.
    #[serde(default)]
    pub dynamic_metadata: bool,
    /// The limit of keys that have none of their own.
    #[serde(default)]
    pub default_rate_limit: Option<RateLimitSetting>,
    /// A key table file to decide from (`crate::table`) until the feed's
    /// first snapshot arrives, or for good without a feed.
    #[serde(default)]
    pub snapshot_path: Option<PathBuf>,
    /// keygate's key feed, which keeps the table current (`crate::feed`).
    #[serde(default)]
    pub feed: Option<FeedSettings>,
    /// Ask keygate's forward-auth listener about what the table cannot
    /// decide (`crate::lookup`); without it, those requests get a 503.
    #[serde(default)]
    pub lookup: Option<LookupSettings>,
    /// keygate's `KEYGATE_IMPORTED_PREFIXES`: keys with these prefixes were
    /// imported from another system and are asked of keygate (or get a 503
    /// without a `lookup`), never judged by keygate's own key format.
    #[serde(default)]
    pub imported_prefixes: Vec<String>,
}

/// Where the key feed comes from: a keygate admin listener. Filter configs
/// with equal settings share one feed (`crate::feed::SharedFeed`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedSettings {
    /// `http://host:port` or `https://host:port` (keygate's
    /// `KEYGATE_ADMIN_ADDR`).
    pub address: String,
    /// A file holding a `feed` token (`keygate admin-token --name NAME
    /// --role feed`: KeyFeed only) or an `admin` one; none for a listener
    /// without tokens (loopback only).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// The CA certificate (PEM) that signed keygate's TLS certificate; for
    /// `https://` addresses.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Report each decision about a known key back to keygate for its
    /// usage records (`crate::usage`); on by default.
    #[serde(default = "yes")]
    pub report_usage: bool,
}

#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ForeignBearerSetting {
    #[default]
    Deny,
    Allow,
}

impl From<ForeignBearerSetting> for ForeignBearer {
    fn from(value: ForeignBearerSetting) -> Self {
        match value {
            ForeignBearerSetting::Deny => ForeignBearer::Deny,
            ForeignBearerSetting::Allow => ForeignBearer::Allow,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSetting {
    pub max_attempts: u32,
    pub decay_seconds: u32,
}

impl From<RateLimitSetting> for RateLimit {
    fn from(value: RateLimitSetting) -> Self {
        Self {
            max_attempts: value.max_attempts,
            decay_seconds: value.decay_seconds,
        }
    }
}

fn default_prefix() -> String {
    "sk".to_owned()
}

fn default_environments() -> Vec<String> {
    vec!["live".to_owned(), "test".to_owned()]
}

fn default_authorization_header() -> String {
    "authorization".to_owned()
}

fn default_api_key_header() -> String {
    "x-api-key".to_owned()
}

fn yes() -> bool {
    true
}

/// The token length only matters when generating keys, which the filter
/// never does; parsing accepts every length keygate may have issued.
const ANY_TOKEN_LENGTH: usize = 32;

impl FilterSettings {
    pub fn key_format(&self) -> Result<KeyFormat, KeyFormatError> {
        KeyFormat::new(&self.key_prefix, &self.environments, ANY_TOKEN_LENGTH)
    }
}

/// `filter_config` of `DynamicModuleFilterPerRoute`: what a route requires,
/// named as in Check's context extensions (`keygate.abilities`,
/// `keygate.environment`, `keygate.mode`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSettings {
    /// Comma-separated abilities, all required.
    #[serde(default)]
    pub abilities: Option<String>,
    #[serde(default)]
    pub environment: Option<String>,
    /// `shadow`: always allow, and report the decision upstream.
    #[serde(default)]
    pub mode: Option<RouteMode>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RouteMode {
    Enforce,
    Shadow,
}

impl RouteSettings {
    pub fn requirements(&self) -> RouteRequirements<'_> {
        RouteRequirements {
            abilities: self.abilities.as_deref(),
            environment: self.environment.as_deref().filter(|e| !e.is_empty()),
            shadow: self.mode == Some(RouteMode::Shadow),
        }
    }
}
