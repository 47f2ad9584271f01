//! The Check client: one tonic `Channel` (one HTTP/2 connection) per
//! connection slot, sending pre-encoded requests.
//!
//! Requests are encoded once at start and sent as bytes, so the generator
//! spends its CPU on the transport (which it shares with every server it
//! measures) rather than on re-encoding the same messages.

use std::time::Duration;

use anyhow::Context;
use bytes::{BufMut, Bytes};
use envoy_types::ext_authz::v3::pb::{CheckRequest, CheckResponse, HttpResponse};
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

/// Sends one pre-encoded `CheckRequest`.
pub async fn check(channel: Channel, request: Bytes) -> Result<CheckResponse, Status> {
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
pub fn outcome(result: Result<CheckResponse, Status>) -> Outcome {
    match result {
        Ok(response) => {
            let status = response.status.unwrap_or_default();
            if status.code == 0 {
                return Outcome::Answer {
                    status: 200,
                    code: String::new(),
                };
            }
            let http = match response.http_response {
                Some(HttpResponse::DeniedResponse(denied)) => denied
                    .status
                    .and_then(|s| u16::try_from(s.code).ok())
                    .unwrap_or(403),
                _ => 403,
            };
            Outcome::Answer {
                status: http,
                code: status.message,
            }
        }
        Err(status) => Outcome::Error(format!("{:?}", status.code())),
    }
}

/// Sends `Bytes` as they are; decodes responses with prost.
#[derive(Debug, Clone, Copy)]
struct PreEncodedCodec;

impl Codec for PreEncodedCodec {
    type Encode = Bytes;
    type Decode = CheckResponse;
    type Encoder = PreEncoded;
    type Decoder = <ProstCodec<CheckRequest, CheckResponse> as Codec>::Decoder;

    fn encoder(&mut self) -> Self::Encoder {
        PreEncoded
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<CheckRequest, CheckResponse>::default().decoder()
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
