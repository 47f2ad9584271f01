//! One `keygate serve` process with clients for its Check and KeyAdmin
//! listeners: a replica among several on one PostgreSQL database.

use std::collections::HashMap;

use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use keygate::proto::{key_admin_client::KeyAdminClient, CreateKeyRequest};
use tonic::transport::Channel;

use super::{check_request, metric_value, process::KeygateProcess, scrape_metrics, Decision};

pub struct Replica {
    pub process: KeygateProcess,
    pub admin: KeyAdminClient<Channel>,
    pub authz: AuthorizationClient<Channel>,
}

impl Replica {
    /// Starts a replica with `env` on top of the process defaults.
    pub async fn start(database_url: &str, env: &[(&str, &str)]) -> Replica {
        let process = KeygateProcess::spawn(database_url, env).await;
        let admin = KeyAdminClient::new(super::channel(process.admin_addr).await);
        let authz = AuthorizationClient::new(super::channel(process.authz_addr).await);
        Replica {
            process,
            admin,
            authz,
        }
    }

    /// Creates a key; returns its plaintext and id.
    pub async fn create(&self, request: CreateKeyRequest) -> (String, String) {
        let created = self
            .admin
            .clone()
            .create_key(request)
            .await
            .unwrap()
            .into_inner();
        (created.key, created.api_key.unwrap().id)
    }

    /// A Check of `GET /` carrying `key` as a bearer token.
    pub async fn check(&self, key: &str) -> Result<Decision, tonic::Status> {
        let headers = HashMap::from([("authorization".to_string(), format!("Bearer {key}"))]);
        self.authz
            .clone()
            .check(check_request(headers, "GET", "/", HashMap::new()))
            .await
            .map(|r| Decision::of(r.into_inner()))
    }

    /// The decision code of [`Replica::check`].
    pub async fn code(&self, key: &str) -> String {
        self.check(key).await.unwrap().code
    }

    pub fn metrics(&self) -> String {
        scrape_metrics(self.process.metrics_addr)
    }

    /// One metric's value, 0 when absent.
    pub fn metric(&self, name: &str) -> f64 {
        metric_value(&self.metrics(), name).unwrap_or_default()
    }
}
