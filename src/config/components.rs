//! Each component's settings, built from the validated [`Config`] here, so
//! that no component reads the configuration itself.

use super::Config;
use crate::{
    admin::hygiene::HygienePolicy,
    answer::MetadataHeaders,
    authz::AuthzSettings,
    forward_auth::{InputSettings, RenderSettings},
    grpc::ext_authz::CredentialHeaders,
};

impl Config {
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
