//! Each component's settings, built from the validated [`Config`] here, so
//! that no component reads the configuration itself.

use super::Config;
use crate::{
    admin::{hygiene::HygienePolicy, AdminPolicy},
    answer::MetadataHeaders,
    authz::AuthzSettings,
    cache::CacheSettings,
    forward_auth::{InputSettings, RenderSettings},
    grpc::ext_authz::CredentialHeaders,
    store::StoreOptions,
    usage::{BufferBounds, FlushSettings},
};

impl Config {
    /// How to reach the database (`serve` and the CLI commands alike).
    pub fn store_options(&self) -> StoreOptions {
        StoreOptions {
            url: self.database_url.clone(),
            max_connections: self.database_max_connections,
            check_timeout: self.check_timeout,
        }
    }

    /// The limits KeyAdmin holds callers to besides their role.
    pub fn admin_policy(&self) -> AdminPolicy {
        AdminPolicy {
            max_rotation_overlap: self.max_rotation_overlap,
            services_may_grant_superkey: self.service_tokens_may_grant_superkey,
        }
    }

    /// The key cache's bounds and lifetimes.
    pub fn cache_settings(&self) -> CacheSettings {
        CacheSettings {
            capacity: self.cache_capacity,
            ttl: self.cache_ttl,
            negative_capacity: self.negative_cache_capacity,
            negative_ttl: self.negative_cache_ttl,
            stale_if_error: self.cache_stale_if_error,
            max_concurrent_misses: self.max_concurrent_misses,
        }
    }

    /// How many usage events (and bytes of them) wait for a flush at most.
    pub fn usage_buffer_bounds(&self) -> BufferBounds {
        BufferBounds {
            events: self.usage_buffer,
            bytes: self.usage_buffer_bytes,
        }
    }

    /// When and how the usage flusher writes.
    pub fn usage_flush_settings(&self) -> FlushSettings {
        FlushSettings {
            interval: self.usage_flush_interval,
            batch_size: self.usage_batch_size,
            log_enabled: self.usage_log_enabled,
        }
    }

    /// What Check needs besides the cache and the limiters.
    pub fn authz_settings(&self) -> AuthzSettings {
        AuthzSettings {
            format: self.key_format.clone(),
            foreign_bearer: self.foreign_bearer,
            default_rate_limit: self.default_rate_limit,
            routes: self.routes.clone(),
            trusted_proxy_hops: self.trusted_proxy_hops,
            imported_prefixes: self.hygiene.imported_prefixes.clone(),
        }
    }

    /// The headers the gRPC Check service reads, sets and strips.
    pub fn credential_headers(&self) -> CredentialHeaders {
        CredentialHeaders {
            authorization: self.authorization_header.clone(),
            api_key: self.api_key_header.clone(),
            strip: self.strip_credential,
            metadata: MetadataHeaders::new(&self.metadata_headers),
        }
    }

    /// How forward-auth reads a request and writes its answer.
    pub fn forward_auth_settings(&self) -> (InputSettings, RenderSettings) {
        let input = InputSettings {
            authorization_header: self.authorization_header.clone(),
            api_key_header: self.api_key_header.clone(),
            path_prefix: self.forward_auth_path_prefix.clone(),
        };
        let render = RenderSettings {
            authorization_header: self.authorization_header.clone(),
            api_key_header: self.api_key_header.clone(),
            strip_credential: self.strip_credential,
            metadata: MetadataHeaders::new(&self.metadata_headers),
        };
        (input, render)
    }

    /// Dormancy, imports and leak reports, as the use-cases follow them.
    pub fn hygiene_policy(&self) -> HygienePolicy {
        HygienePolicy {
            dormant_after: self.hygiene.dormant_after,
            imported_prefixes: self.hygiene.imported_prefixes.clone(),
            leak_action: self.hygiene.leak_action,
        }
    }
}
