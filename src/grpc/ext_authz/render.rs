//! Check responses in protobuf wire form, assembled from parts encoded once.
//!
//! An allowed response is mostly the same bytes for a given key: its five
//! identity headers and its dynamic metadata. Those are encoded the first
//! time the key is allowed and kept with the cached entry; denials are
//! encoded once per reason at start. Answering is then a few reference-count
//! increments and slice copies into the transport's buffer, where building
//! a fresh message cost a dozen string allocations and a hash map per Check.
//!
//! Protobuf makes this sound: a message is the concatenation of its fields
//! in any order, and a repeated field may arrive in several runs, which the
//! reader appends in order.

use std::{collections::HashMap, sync::Arc};

use bytes::{BufMut, Bytes};
use envoy_types::{
    ext_authz::v3::pb::{
        CheckResponse, DeniedHttpResponse, HeaderAppendAction, HeaderValue, HeaderValueOption,
        HttpResponse, HttpStatus, OkHttpResponse,
    },
    pb::google::{
        protobuf::{value::Kind, Struct, Value},
        rpc,
    },
};
use prost::{
    encoding::{encode_key, encode_varint, encoded_len_varint, key_len, WireType},
    Message,
};

use super::CredentialHeaders;
use crate::{
    answer::{
        denial_body, denial_headers, identity_values, rate_headers, sunset_headers,
        MetadataHeaders, HEADER_SHADOW_DECISION, IDENTITY_FIELDS, IDENTITY_HEADERS,
    },
    authz::Allowance,
    cache::{CachedKey, EncodedIdentity},
    domain::{CheckKey, DenyReason},
};

/// `CheckResponse.ok_response`.
const OK_RESPONSE_FIELD: u32 = 3;
/// Removals (identity, shadow, credential) and per-request headers.
const OK_PARTS: usize = 4;

/// A Check response ready to be written.
#[derive(Debug, Clone)]
pub struct EncodedCheckResponse {
    /// `status`, and for a denial the whole response.
    head: Bytes,
    /// The fields of `ok_response` after the identity headers, in order;
    /// `None` for a denial.
    ok_parts: Option<[Bytes; OK_PARTS]>,
    /// The allowed key, whose encoded identity supplies the identity
    /// headers and the `dynamic_metadata`.
    identity: Option<Arc<CachedKey>>,
}

impl EncodedCheckResponse {
    /// Set by [`Renderer::allowed`] before the response exists.
    fn identity(&self) -> Option<&EncodedIdentity> {
        self.identity.as_ref()?.encoded.get()
    }

    fn ok_len(&self, parts: &[Bytes; OK_PARTS]) -> usize {
        let identity = self.identity().map_or(0, |i| i.upstream_headers().len());
        identity + parts.iter().map(Bytes::len).sum::<usize>()
    }

    pub fn encoded_len(&self) -> usize {
        let ok = self.ok_parts.as_ref().map_or(0, |parts| {
            let len = self.ok_len(parts);
            key_len(OK_RESPONSE_FIELD) + encoded_len_varint(len as u64) + len
        });
        let metadata = self.identity().map_or(0, |i| i.metadata().len());
        self.head.len() + ok + metadata
    }

    pub fn write(&self, buf: &mut impl BufMut) {
        buf.put_slice(&self.head);
        let identity = self.identity();
        if let Some(parts) = &self.ok_parts {
            encode_key(OK_RESPONSE_FIELD, WireType::LengthDelimited, buf);
            encode_varint(self.ok_len(parts) as u64, buf);
            if let Some(identity) = identity {
                buf.put_slice(identity.upstream_headers());
            }
            for part in parts {
                buf.put_slice(part);
            }
        }
        if let Some(identity) = identity {
            buf.put_slice(identity.metadata());
        }
    }

    /// The response as the client decodes it (tests and tools).
    pub fn decode(&self) -> CheckResponse {
        let mut bytes = Vec::with_capacity(self.encoded_len());
        self.write(&mut bytes);
        CheckResponse::decode(bytes.as_slice()).expect("keygate encodes valid responses")
    }
}

/// Builds responses from the parts that never change after start.
pub struct Renderer {
    metadata: MetadataHeaders,
    ok_status: Bytes,
    remove_identity_headers: Bytes,
    remove_shadow_header: Bytes,
    /// Every configured credential header, not only the one that carried
    /// the key: a second key in the other must not reach upstream either.
    strip_credentials: Bytes,
    strip_api_key: Bytes,
    /// Indexed by [`DenyReason::index`]; the rate-limited one carries a
    /// per-request `Retry-After` and is encoded when needed.
    denials: [Bytes; DenyReason::ALL_CODES.len()],
}

impl Renderer {
    pub fn new(headers: &CredentialHeaders) -> Self {
        let removal = |names: &[&str]| {
            ok_fields(OkHttpResponse {
                headers_to_remove: names.iter().map(|name| (*name).to_owned()).collect(),
                ..Default::default()
            })
        };
        let strip = |names: &[&str]| match headers.strip {
            true => removal(names),
            false => Bytes::new(),
        };
        let static_denial = |reason: DenyReason| match reason {
            // Its Retry-After differs per request.
            DenyReason::RateLimited { .. } => Bytes::new(),
            _ => Bytes::from(denied(reason).encode_to_vec()),
        };
        let mut owned: Vec<&str> = IDENTITY_HEADERS.to_vec();
        owned.extend(headers.metadata.header_names());
        Self {
            metadata: headers.metadata.clone(),
            ok_status: Bytes::from(
                CheckResponse {
                    status: Some(ok_status()),
                    ..Default::default()
                }
                .encode_to_vec(),
            ),
            remove_identity_headers: removal(&owned),
            remove_shadow_header: removal(&[HEADER_SHADOW_DECISION]),
            strip_credentials: strip(&[&headers.authorization, &headers.api_key]),
            strip_api_key: strip(&[&headers.api_key]),
            denials: DenyReason::one_of_each(0).map(static_denial),
        }
    }

    pub fn allowed(&self, allowance: Allowance) -> EncodedCheckResponse {
        let remove_identity = match &allowance.identity {
            Some(cached) => {
                cached
                    .encoded
                    .get_or_init(|| encode_identity(&cached.key, &self.metadata));
                Bytes::new()
            }
            None => self.remove_identity_headers.clone(),
        };
        let remove_shadow = match allowance.shadow_decision {
            Some(_) => Bytes::new(),
            None => self.remove_shadow_header.clone(),
        };
        let strip = match allowance.credential {
            Some(_) => self.strip_credentials.clone(),
            // A foreign bearer token let through is the upstream's own
            // credential; only the API-key header is surely ours.
            None => self.strip_api_key.clone(),
        };
        EncodedCheckResponse {
            head: self.ok_status.clone(),
            ok_parts: Some([
                remove_identity,
                remove_shadow,
                strip,
                per_request_headers(&allowance),
            ]),
            identity: allowance.identity,
        }
    }

    pub fn denied(&self, reason: DenyReason) -> EncodedCheckResponse {
        let head = match reason {
            DenyReason::RateLimited { .. } => Bytes::from(denied(reason).encode_to_vec()),
            _ => self.denials[reason.index()].clone(),
        };
        EncodedCheckResponse {
            head,
            ok_parts: None,
            identity: None,
        }
    }
}

/// The identity headers upstream sees (the key's own, its exported metadata
/// and the removal of metadata headers it lacks) and the same facts as
/// `dynamic_metadata` for other filters and access logs, the key's whole
/// metadata map under `metadata`.
fn encode_identity(key: &CheckKey, exported: &MetadataHeaders) -> EncodedIdentity {
    let mut id_text = uuid::Uuid::encode_buffer();
    let values = identity_values(key, &mut id_text);
    let mut headers: Vec<HeaderValueOption> = IDENTITY_HEADERS
        .iter()
        .zip(&values)
        .map(|(name, value)| overwrite(name, value.to_string()))
        .collect();
    let mut headers_to_remove = Vec::new();
    for (name, value) in exported.values(key) {
        match value {
            Some(value) => headers.push(overwrite(name, value.to_owned())),
            None => headers_to_remove.push(name.to_owned()),
        }
    }
    let upstream_headers = ok_fields(OkHttpResponse {
        headers,
        headers_to_remove,
        ..Default::default()
    });
    let text = |value: &str| Value {
        kind: Some(Kind::StringValue(value.to_owned())),
    };
    let key_metadata = Struct {
        fields: key
            .metadata
            .iter()
            .map(|(name, value)| (name.clone(), text(value)))
            .collect(),
    };
    let fields = IDENTITY_FIELDS
        .iter()
        .zip(&values)
        .map(|(name, value)| ((*name).to_owned(), text(value)))
        .chain([(
            "metadata".to_owned(),
            Value {
                kind: Some(Kind::StructValue(key_metadata)),
            },
        )]);
    let metadata = CheckResponse {
        dynamic_metadata: Some(Struct {
            fields: HashMap::from_iter(fields),
        }),
        ..Default::default()
    };
    EncodedIdentity::new(&upstream_headers, &metadata.encode_to_vec())
}

/// The shadow decision, rate-limit state and sunset: rare, so encoded per
/// request only when present.
fn per_request_headers(allowance: &Allowance) -> Bytes {
    if allowance.shadow_decision.is_none() && allowance.rate.is_none() && allowance.sunset.is_none()
    {
        return Bytes::new();
    }
    let mut headers = Vec::new();
    let mut response_headers = Vec::new();
    if let Some(code) = allowance.shadow_decision {
        headers.push(overwrite(HEADER_SHADOW_DECISION, code.to_owned()));
    }
    if let Some(rate) = allowance.rate {
        response_headers.extend(rate_headers(rate).map(|(name, value)| overwrite(name, value)));
    }
    if let Some(sunset) = allowance.sunset {
        response_headers.extend(sunset_headers(sunset).map(|(name, value)| overwrite(name, value)));
    }
    ok_fields(OkHttpResponse {
        headers,
        response_headers_to_add: response_headers,
        ..Default::default()
    })
}

/// The fields of an `OkHttpResponse`, to be concatenated with others.
fn ok_fields(fields: OkHttpResponse) -> Bytes {
    Bytes::from(fields.encode_to_vec())
}

fn ok_status() -> rpc::Status {
    rpc::Status {
        code: tonic::Code::Ok as i32,
        ..Default::default()
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

/// The denial Envoy returns to the client: status, JSON body, headers.
pub fn denied(reason: DenyReason) -> CheckResponse {
    let status = reason.http_status();
    let grpc_code = reason.row().rpc_code;
    let headers = denial_headers(reason)
        .into_iter()
        .map(|(name, value)| overwrite(name, value))
        .collect();
    let body = denial_body(reason);
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

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};
    use uuid::Uuid;

    use super::*;
    use crate::{
        answer::*,
        authz::{CredentialSource, RateHeaders},
    };

    fn every_reason() -> [DenyReason; DenyReason::ALL_CODES.len()] {
        DenyReason::one_of_each(7)
    }

    fn renderer(strip: bool) -> Renderer {
        Renderer::new(&CredentialHeaders {
            authorization: "authorization".into(),
            api_key: "x-api-key".into(),
            strip,
            metadata: MetadataHeaders::default(),
        })
    }

    fn cached_key() -> Arc<CachedKey> {
        let key = CheckKey::sample(
            Uuid::from_u128(42),
            "acme",
            &["read:orders", "write:orders"],
        );
        Arc::new(CachedKey::detached(key))
    }

    fn allowance(identity: Option<Arc<CachedKey>>) -> Allowance {
        Allowance {
            identity,
            credential: Some(CredentialSource::Authorization),
            rate: None,
            sunset: None,
            shadow_decision: None,
        }
    }

    /// The response as Envoy reads it, and its `OkHttpResponse`.
    fn ok_response(encoded: &EncodedCheckResponse) -> (CheckResponse, OkHttpResponse) {
        let mut written = Vec::new();
        encoded.write(&mut written);
        assert_eq!(written.len(), encoded.encoded_len());
        let response = CheckResponse::decode(written.as_slice()).unwrap();
        assert_eq!(response.status.as_ref().unwrap().code, 0);
        match &response.http_response {
            Some(HttpResponse::OkResponse(ok)) => {
                let ok = ok.clone();
                (response, ok)
            }
            other => panic!("not an OK response: {other:?}"),
        }
    }

    fn set(ok: &OkHttpResponse) -> Vec<(&str, &str)> {
        ok.headers
            .iter()
            .map(|h| {
                assert_eq!(
                    h.append_action,
                    HeaderAppendAction::OverwriteIfExistsOrAdd as i32
                );
                let header = h.header.as_ref().unwrap();
                (header.key.as_str(), header.value.as_str())
            })
            .collect()
    }

    fn added(ok: &OkHttpResponse) -> Vec<(&str, &str)> {
        ok.response_headers_to_add
            .iter()
            .map(|h| {
                let header = h.header.as_ref().unwrap();
                (header.key.as_str(), header.value.as_str())
            })
            .collect()
    }

    #[test]
    fn an_allowed_key_sets_its_identity_removes_the_rest_and_describes_itself() {
        let key = cached_key();
        let encoded = renderer(true).allowed(allowance(Some(key.clone())));
        let (response, ok) = ok_response(&encoded);
        let id = key.key.id.to_string();
        assert_eq!(
            set(&ok),
            [
                (HEADER_KEY_ID, id.as_str()),
                (HEADER_OWNER_ID, "acme"),
                (HEADER_ENVIRONMENT, "live"),
                (HEADER_KEY_PREFIX, "sk_live_abcdefgh"),
                (HEADER_ABILITIES, "read:orders,write:orders"),
            ]
        );
        assert_eq!(
            ok.headers_to_remove,
            [HEADER_SHADOW_DECISION, "authorization", "x-api-key"]
        );
        assert!(ok.response_headers_to_add.is_empty());
        let metadata = response.dynamic_metadata.unwrap().fields;
        let text = |name: &str| match &metadata[name].kind {
            Some(Kind::StringValue(value)) => value.clone(),
            other => panic!("{name}: {other:?}"),
        };
        assert_eq!(text("key_id"), id);
        assert_eq!(text("owner_id"), "acme");
        assert_eq!(text("environment"), "live");
        assert_eq!(text("key_prefix"), "sk_live_abcdefgh");
        assert_eq!(text("abilities"), "read:orders,write:orders");
        assert_eq!(
            metadata["metadata"].kind,
            Some(Kind::StructValue(Struct::default()))
        );
        assert_eq!(metadata.len(), 6);

        // A later allowance of the same key (answered from its stored
        // encoding) reads the same.
        let again = renderer(true).allowed(allowance(Some(key)));
        assert_eq!(again.decode(), encoded.decode());
    }

    #[test]
    fn without_stripping_the_credential_header_is_kept() {
        let mut api_key = allowance(Some(cached_key()));
        api_key.credential = Some(CredentialSource::ApiKey);
        let (_, ok) = ok_response(&renderer(false).allowed(api_key.clone()));
        assert_eq!(ok.headers_to_remove, [HEADER_SHADOW_DECISION]);
    }

    #[test]
    fn every_credential_header_is_stripped_whichever_carried_the_key() {
        for source in [CredentialSource::Authorization, CredentialSource::ApiKey] {
            let mut presented = allowance(Some(cached_key()));
            presented.credential = Some(source);
            let (_, ok) = ok_response(&renderer(true).allowed(presented));
            assert_eq!(
                ok.headers_to_remove,
                [HEADER_SHADOW_DECISION, "authorization", "x-api-key"],
                "{source:?}"
            );
        }
    }

    #[test]
    fn a_foreign_bearer_let_through_keeps_authorization_but_not_the_api_key_header() {
        let mut foreign = allowance(None);
        foreign.credential = None;
        let (_, ok) = ok_response(&renderer(true).allowed(foreign));
        assert_eq!(ok.headers_to_remove.last().unwrap(), "x-api-key");
        assert!(!ok.headers_to_remove.iter().any(|h| h == "authorization"));
    }

    #[test]
    fn exported_metadata_is_set_upstream_and_the_whole_map_is_dynamic_metadata() {
        let mut key = CheckKey::sample(Uuid::from_u128(7), "acme", &[]);
        key.metadata.insert("tier".into(), "gold".into());
        key.metadata.insert("team".into(), "payments".into());
        let renderer = Renderer::new(&CredentialHeaders {
            authorization: "authorization".into(),
            api_key: "x-api-key".into(),
            strip: true,
            metadata: MetadataHeaders::new(&["tier", "plan"]),
        });
        let cached = Arc::new(CachedKey::detached(key));
        let (response, ok) = ok_response(&renderer.allowed(allowance(Some(cached))));
        assert_eq!(set(&ok)[5], ("x-keygate-meta-tier", "gold"));
        assert_eq!(set(&ok).len(), 6);
        assert_eq!(
            ok.headers_to_remove,
            [
                "x-keygate-meta-plan",
                HEADER_SHADOW_DECISION,
                "authorization",
                "x-api-key"
            ]
        );
        let fields = response.dynamic_metadata.unwrap().fields;
        let Some(Kind::StructValue(map)) = &fields["metadata"].kind else {
            panic!("metadata is not a struct: {fields:?}");
        };
        let text = |name: &str| map.fields[name].kind.clone();
        assert_eq!(text("tier"), Some(Kind::StringValue("gold".into())));
        assert_eq!(text("team"), Some(Kind::StringValue("payments".into())));

        // Without identity, the metadata headers go with the others.
        let (_, ok) = ok_response(&renderer.allowed(allowance(None)));
        assert!(ok
            .headers_to_remove
            .iter()
            .any(|name| name == "x-keygate-meta-tier"));
    }

    #[test]
    fn an_allowance_without_identity_removes_every_keygate_header() {
        let (response, ok) = ok_response(&renderer(true).allowed(allowance(None)));
        assert!(ok.headers.is_empty());
        let mut expected: Vec<&str> = IDENTITY_HEADERS.to_vec();
        expected.extend([HEADER_SHADOW_DECISION, "authorization", "x-api-key"]);
        assert_eq!(ok.headers_to_remove, expected);
        assert!(response.dynamic_metadata.is_none());
    }

    #[test]
    fn shadow_rate_and_sunset_headers_join_the_identity() {
        let mut shadowed = allowance(Some(cached_key()));
        shadowed.shadow_decision = Some("insufficient_ability");
        shadowed.rate = Some(RateHeaders {
            limit: 100,
            remaining: 99,
            reset_secs: 3,
        });
        shadowed.sunset = Some(Utc.with_ymd_and_hms(2026, 12, 1, 8, 30, 0).unwrap());
        let (_, ok) = ok_response(&renderer(true).allowed(shadowed));
        let headers = set(&ok);
        assert_eq!(headers.len(), 6);
        assert_eq!(headers[5], (HEADER_SHADOW_DECISION, "insufficient_ability"));
        assert_eq!(ok.headers_to_remove, ["authorization", "x-api-key"]);
        assert_eq!(
            added(&ok),
            [
                ("x-ratelimit-limit", "100"),
                ("x-ratelimit-remaining", "99"),
                ("x-ratelimit-reset", "3"),
                ("deprecation", "true"),
                ("sunset", "Tue, 01 Dec 2026 08:30:00 GMT"),
            ]
        );
    }

    #[test]
    fn every_encoded_denial_is_the_structured_one() {
        let renderer = renderer(true);
        for reason in every_reason() {
            assert_eq!(
                renderer.denied(reason).decode(),
                denied(reason),
                "{reason:?}"
            );
        }
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
                400 => (tonic::Code::InvalidArgument, None),
                401 => (tonic::Code::Unauthenticated, Some("www-authenticate")),
                403 => (tonic::Code::PermissionDenied, None),
                _ if reason == DenyReason::CreditsExhausted => {
                    (tonic::Code::ResourceExhausted, None)
                }
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
