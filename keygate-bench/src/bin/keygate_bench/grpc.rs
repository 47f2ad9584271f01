//! The Check client: one tonic `Channel` (one HTTP/2 connection) per
//! connection slot, sending pre-encoded requests.
//!
//! Requests are encoded once at start and sent as bytes, and responses are
//! decoded only as far as the decision ([`Verdict`]), so the generator
//! spends its CPU on the transport (which it shares with every server it
//! measures) rather than on messages. Decoding a whole `CheckResponse`
//! would also charge a server with a richer response (identity headers,
//! metadata) for the client's allocations: at full speed the generator's
//! core is as busy as the server's.

use std::time::Duration;

use anyhow::Context;
use bytes::{BufMut, Bytes};
use envoy_types::ext_authz::v3::pb::CheckRequest;
use http::uri::PathAndQuery;
use prost::Message;
use tonic::{
    codec::{Codec, EncodeBuf, Encoder},
    transport::{Channel, Endpoint},
    Request, Status,
};
use tonic_prost::ProstCodec;

use super::stats::Outcome;

const CHECK_PATH: &str = "/envoy.service.auth.v3.Authorization/Check";

/// Opens `count` separate HTTP/2 connections to `target` (`host:port`).
pub async fn connect(target: &str, count: usize) -> anyhow::Result<Vec<Channel>> {
    let endpoint = Endpoint::from_shared(format!("http://{target}"))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true);
    let mut channels = Vec::with_capacity(count);
    for _ in 0..count {
        // Each `connect` makes its own connection; clones of one Channel
        // would share a single one.
        channels.push(
            endpoint
                .connect()
                .await
                .with_context(|| format!("cannot connect to {target}"))?,
        );
    }
    Ok(channels)
}

pub fn encode(request: &CheckRequest) -> Bytes {
    Bytes::from(request.encode_to_vec())
}

/// The fields of a `CheckResponse` that carry the decision; prost skips
/// the rest (`ok_response`, `dynamic_metadata`, denial headers and body)
/// without building them.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Verdict {
    /// `CheckResponse.status` (`google.rpc.Status`).
    #[prost(message, optional, tag = "1")]
    pub status: Option<RpcStatus>,
    /// `CheckResponse.denied_response`.
    #[prost(message, optional, tag = "2")]
    pub denied: Option<Denied>,
}

/// `google.rpc.Status` without `details`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RpcStatus {
    #[prost(int32, tag = "1")]
    pub code: i32,
    #[prost(string, tag = "2")]
    pub message: String,
}

/// `DeniedHttpResponse` with only its `status` (`envoy.type.v3.HttpStatus`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Denied {
    #[prost(message, optional, tag = "1")]
    pub status: Option<HttpStatus>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct HttpStatus {
    #[prost(int32, tag = "1")]
    pub code: i32,
}

/// Sends one pre-encoded `CheckRequest`.
pub async fn check(channel: Channel, request: Bytes) -> Result<Verdict, Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    grpc.unary(
        Request::new(request),
        PathAndQuery::from_static(CHECK_PATH),
        PreEncodedCodec,
    )
    .await
    .map(tonic::Response::into_inner)
}

/// The decision in a Check response, as Envoy reads it: gRPC status OK
/// allows; otherwise the denied response's HTTP status (Envoy's default
/// 403 when absent) and keygate's code, which it puts in the status message.
pub fn outcome(result: Result<Verdict, Status>) -> Outcome {
    match result {
        Ok(response) => {
            let status = response.status.unwrap_or_default();
            if status.code == 0 {
                return Outcome::Answer {
                    status: 200,
                    code: String::new(),
                };
            }
            let http = response
                .denied
                .and_then(|denied| denied.status)
                .and_then(|s| u16::try_from(s.code).ok())
                .unwrap_or(403);
            Outcome::Answer {
                status: http,
                code: status.message,
            }
        }
        Err(status) => Outcome::Error(format!("{:?}", status.code())),
    }
}

/// Sends `Bytes` as they are; decodes each response's [`Verdict`].
#[derive(Debug, Clone, Copy)]
struct PreEncodedCodec;

impl Codec for PreEncodedCodec {
    type Encode = Bytes;
    type Decode = Verdict;
    type Encoder = PreEncoded;
    type Decoder = <ProstCodec<CheckRequest, Verdict> as Codec>::Decoder;

    fn encoder(&mut self) -> Self::Encoder {
        PreEncoded
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<CheckRequest, Verdict>::default().decoder()
    }
}

#[derive(Debug, Clone, Copy)]
struct PreEncoded;

impl Encoder for PreEncoded {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::{
        ext_authz::v3::pb::{CheckResponse, DeniedHttpResponse, HttpResponse, OkHttpResponse},
        pb::{
            envoy::{
                config::core::v3::{HeaderValue, HeaderValueOption},
                r#type::v3::HttpStatus as EnvoyHttpStatus,
            },
            google::{protobuf::Struct, rpc},
        },
    };

    use super::*;

    fn read(response: &CheckResponse) -> Outcome {
        outcome(Ok(
            Verdict::decode(response.encode_to_vec().as_slice()).unwrap()
        ))
    }

    fn header(key: &str, value: &str) -> HeaderValueOption {
        HeaderValueOption {
            header: Some(HeaderValue {
                key: key.into(),
                value: value.into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn the_verdict_reads_allowances_and_denials_out_of_whole_responses() {
        let allowed = CheckResponse {
            status: Some(rpc::Status::default()),
            http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
                headers: vec![header("x-keygate-key-id", "k1")],
                headers_to_remove: vec!["authorization".into()],
                ..Default::default()
            })),
            dynamic_metadata: Some(Struct::default()),
        };
        let denied = |http: Option<i32>| CheckResponse {
            status: Some(rpc::Status {
                code: 16,
                message: "key_revoked".into(),
                details: vec![],
            }),
            http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
                status: http.map(|code| EnvoyHttpStatus { code }),
                headers: vec![header("www-authenticate", "Bearer")],
                body: "{}".into(),
            })),
            dynamic_metadata: None,
        };
        let answer = |status: u16, code: &str| Outcome::Answer {
            status,
            code: code.into(),
        };
        assert_eq!(read(&allowed), answer(200, ""));
        assert_eq!(read(&denied(Some(401))), answer(401, "key_revoked"));
        // Envoy's default when a denial carries no HTTP status.
        assert_eq!(read(&denied(None)), answer(403, "key_revoked"));
    }
}
