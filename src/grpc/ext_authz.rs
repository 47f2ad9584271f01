//! Envoy's `envoy.service.auth.v3.Authorization/Check`.
//!
//! Translates a `CheckRequest` into a borrowed [`CheckInput`], asks the
//! [`Authorizer`], and renders the outcome. A denial is an ordinary response
//! carrying the HTTP status Envoy returns; only store trouble is a gRPC error,
//! so Envoy's own `failure_mode_allow` / `status_on_error` decide.

use std::{collections::HashMap, sync::Arc, time::Instant};

use envoy_types::{
    ext_authz::v3::pb::{
        Authorization, CheckRequest, CheckResponse, DeniedHttpResponse, HeaderAppendAction,
        HeaderValue, HeaderValueOption, HttpResponse, HttpStatus, OkHttpResponse,
    },
    pb::{
        envoy::config::core::v3::address::Address,
        google::{
            protobuf::{value::Kind, Struct, Value},
            rpc,
        },
    },
};
use metrics::Histogram;
use tonic::{Request, Response, Status};

use super::status::check_unavailable;
use crate::{
    authz::{Allowance, Authorizer, CheckInput, CredentialSource, HeaderText, NotUtf8, Outcome},
    domain::DenyReason,
    store,
};

pub const HEADER_KEY_ID: &str = "x-keygate-key-id";
pub const HEADER_OWNER_ID: &str = "x-keygate-owner-id";
pub const HEADER_ENVIRONMENT: &str = "x-keygate-environment";
pub const HEADER_KEY_PREFIX: &str = "x-keygate-key-prefix";
pub const HEADER_ABILITIES: &str = "x-keygate-abilities";
pub const HEADER_SHADOW_DECISION: &str = "x-keygate-shadow-decision";
/// Every header keygate sets upstream: whichever it does not set on a
/// response is removed, so a client can never forge one.
const IDENTITY_HEADERS: [&str; 6] = [
    HEADER_KEY_ID,
    HEADER_OWNER_ID,
    HEADER_ENVIRONMENT,
    HEADER_KEY_PREFIX,
    HEADER_ABILITIES,
    HEADER_SHADOW_DECISION,
];

/// Header names the Check service reads and strips.
#[derive(Debug, Clone)]
pub struct CredentialHeaders {
    pub authorization: String,
    pub api_key: String,
    pub strip: bool,
}

pub struct ExtAuthzService {
    authorizer: Arc<Authorizer>,
    headers: CredentialHeaders,
    latency: Histogram,
}

impl ExtAuthzService {
    pub fn new(authorizer: Arc<Authorizer>, headers: CredentialHeaders) -> Self {
        Self {
            authorizer,
            headers,
            latency: metrics::histogram!("keygate_check_duration_seconds"),
        }
    }

    /// Decides one request; shared by the gRPC handler and the benchmarks.
    pub async fn decide(&self, request: &CheckRequest) -> Result<CheckResponse, Status> {
        let input = self.input(request);
        let outcome = self
            .authorizer
            .check(&input, store::now())
            .await
            .map_err(|e| check_unavailable(&e))?;
        Ok(match outcome {
            Outcome::Allow(allowance) => self.allowed(allowance),
            Outcome::Deny(reason) => denied(reason),
        })
    }

    fn input<'a>(&self, request: &'a CheckRequest) -> CheckInput<'a> {
        let attributes = request.attributes.as_ref();
        let http = attributes
            .and_then(|a| a.request.as_ref())
            .and_then(|r| r.http.as_ref());
        let headers = http.map(|h| &h.headers);
        let raw_headers = http
            .and_then(|h| h.header_map.as_ref())
            .map(|m| m.headers.as_slice());
        let header = |name: &str| -> Option<HeaderText<'a>> {
            if let Some(value) = headers.and_then(|h| h.get(name)) {
                return Some(Ok(value.as_str()));
            }
            raw_headers?
                .iter()
                .find(|h| h.key.eq_ignore_ascii_case(name))
                .map(|h| match h.raw_value.is_empty() {
                    true => Ok(h.value.as_str()),
                    false => std::str::from_utf8(&h.raw_value).map_err(|_| NotUtf8),
                })
        };
        let source_address = attributes
            .and_then(|a| a.source.as_ref())
            .and_then(|peer| peer.address.as_ref())
            .and_then(|address| address.address.as_ref())
            .and_then(|address| match address {
                Address::SocketAddress(socket) => Some(socket.address.as_str()),
                _ => None,
            });
        CheckInput {
            authorization: header(&self.headers.authorization),
            api_key: header(&self.headers.api_key),
            forwarded_for: header("x-forwarded-for").and_then(Result::ok),
            source_address,
            method: http.map_or("", |h| h.method.as_str()),
            path: http.map_or("", |h| h.path.as_str()),
            context_extensions: attributes.map(|a| &a.context_extensions),
        }
    }

    fn allowed(&self, allowance: Allowance) -> CheckResponse {
        let mut headers = Vec::with_capacity(6);
        let mut response_headers = Vec::new();
        let mut metadata = None;
        if let Some(cached) = &allowance.identity {
            let key = &cached.key;
            headers.extend([
                overwrite(HEADER_KEY_ID, key.id_header.clone()),
                overwrite(HEADER_OWNER_ID, key.owner_id.clone()),
                overwrite(HEADER_ENVIRONMENT, key.environment.clone()),
                overwrite(HEADER_KEY_PREFIX, key.key_prefix.clone()),
                overwrite(HEADER_ABILITIES, key.abilities_header.clone()),
            ]);
            metadata = Some(Struct {
                fields: HashMap::from([
                    string_field("key_id", &key.id_header),
                    string_field("owner_id", &key.owner_id),
                    string_field("environment", &key.environment),
                    string_field("key_prefix", &key.key_prefix),
                    string_field("abilities", &key.abilities_header),
                ]),
            });
        }
        if let Some(code) = allowance.shadow_decision {
            headers.push(overwrite(HEADER_SHADOW_DECISION, code.to_owned()));
        }
        if let Some(rate) = allowance.rate {
            response_headers.extend([
                overwrite("x-ratelimit-limit", rate.limit.to_string()),
                overwrite("x-ratelimit-remaining", rate.remaining.to_string()),
                overwrite("x-ratelimit-reset", rate.reset_secs.to_string()),
            ]);
        }
        if let Some(sunset) = allowance.sunset {
            response_headers.extend([
                overwrite("deprecation", "true".to_owned()),
                overwrite(
                    "sunset",
                    sunset.format("%a, %d %b %Y %H:%M:%S GMT").to_string(),
                ),
            ]);
        }
        let set = |name: &str| {
            headers
                .iter()
                .any(|h| h.header.as_ref().is_some_and(|h| h.key == name))
        };
        let mut headers_to_remove: Vec<String> = IDENTITY_HEADERS
            .iter()
            .filter(|name| !set(name))
            .map(|name| (*name).to_owned())
            .collect();
        if self.headers.strip {
            match allowance.credential {
                Some(CredentialSource::Authorization) => {
                    headers_to_remove.push(self.headers.authorization.clone())
                }
                Some(CredentialSource::ApiKey) => {
                    headers_to_remove.push(self.headers.api_key.clone())
                }
                None => {}
            }
        }
        CheckResponse {
            status: Some(rpc::Status {
                code: tonic::Code::Ok as i32,
                ..Default::default()
            }),
            http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
                headers,
                headers_to_remove,
                response_headers_to_add: response_headers,
                ..Default::default()
            })),
            dynamic_metadata: metadata,
        }
    }
}

fn overwrite(key: &str, value: String) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.to_owned(),
            value,
            ..Default::default()
        }),
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        ..Default::default()
    }
}

fn string_field(name: &str, value: &str) -> (String, Value) {
    (
        name.to_owned(),
        Value {
            kind: Some(Kind::StringValue(value.to_owned())),
        },
    )
}

/// The denial Envoy returns to the client: status, JSON body, headers.
pub fn denied(reason: DenyReason) -> CheckResponse {
    let status = reason.http_status();
    let grpc_code = match status {
        401 => tonic::Code::Unauthenticated,
        403 => tonic::Code::PermissionDenied,
        _ => tonic::Code::ResourceExhausted,
    };
    let mut headers = vec![overwrite("content-type", "application/json".to_owned())];
    match reason {
        DenyReason::RateLimited { retry_after_secs } => {
            headers.push(overwrite("retry-after", retry_after_secs.to_string()))
        }
        _ if status == 401 => headers.push(overwrite(
            "www-authenticate",
            "Bearer realm=\"keygate\"".to_owned(),
        )),
        _ => {}
    }
    // Codes and messages are static ASCII without quotes or backslashes
    // (a test checks every one parses), so no JSON tree is needed.
    let body = format!(
        r#"{{"error":{{"code":"{}","message":"{}"}}}}"#,
        reason.code(),
        reason.message()
    );
    CheckResponse {
        status: Some(rpc::Status {
            code: grpc_code as i32,
            message: reason.code().to_owned(),
            details: vec![],
        }),
        http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus {
                code: i32::from(status),
            }),
            headers,
            body,
        })),
        dynamic_metadata: None,
    }
}

#[tonic::async_trait]
impl Authorization for ExtAuthzService {
    // Debug level: with the default filter the span is a disabled callsite,
    // one cached check on the hot path; `RUST_LOG=keygate=debug` shows it.
    #[tracing::instrument(level = "debug", name = "Check", skip_all)]
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        let started = Instant::now();
        let response = self.decide(request.get_ref()).await;
        self.latency.record(started.elapsed().as_secs_f64());
        response.map(Response::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_reason() -> [DenyReason; 9] {
        [
            DenyReason::MissingCredentials,
            DenyReason::MalformedKey,
            DenyReason::InvalidKey,
            DenyReason::KeyRevoked,
            DenyReason::KeyExpired,
            DenyReason::OwnerSuspended,
            DenyReason::EnvironmentNotAllowed,
            DenyReason::InsufficientAbility,
            DenyReason::RateLimited {
                retry_after_secs: 7,
            },
        ]
    }

    fn denial(reason: DenyReason) -> (i32, DeniedHttpResponse) {
        let response = denied(reason);
        match response.http_response {
            Some(HttpResponse::DeniedResponse(d)) => (response.status.unwrap().code, d),
            _ => panic!("{reason:?} is not a denial"),
        }
    }

    #[test]
    fn every_denial_body_is_the_documented_json() {
        for reason in every_reason() {
            let (_, denied) = denial(reason);
            let body: serde_json::Value = serde_json::from_str(&denied.body).unwrap();
            assert_eq!(body["error"]["code"], reason.code());
            assert_eq!(body["error"]["message"], reason.message());
            assert_eq!(denied.status.unwrap().code, i32::from(reason.http_status()));
        }
    }

    #[test]
    fn denials_carry_the_right_grpc_code_and_headers() {
        for reason in every_reason() {
            let (grpc, denied) = denial(reason);
            let names: Vec<&str> = denied
                .headers
                .iter()
                .filter_map(|h| h.header.as_ref())
                .map(|h| h.key.as_str())
                .collect();
            let (code, header) = match reason.http_status() {
                401 => (tonic::Code::Unauthenticated, Some("www-authenticate")),
                403 => (tonic::Code::PermissionDenied, None),
                _ => (tonic::Code::ResourceExhausted, Some("retry-after")),
            };
            assert_eq!(grpc, code as i32, "{reason:?}");
            assert!(names.contains(&"content-type"));
            if let Some(header) = header {
                assert!(names.contains(&header), "{reason:?} lacks {header}");
            }
        }
    }
}
