//! The `envoy.service.auth.v3.Authorization` gRPC service, written out
//! rather than generated: the generated one only accepts a `CheckResponse`
//! message to encode, and ours are pre-encoded (see `render`). Requests are
//! decoded with prost as the generated service would.

use std::{convert::Infallible, sync::Arc};

use envoy_types::ext_authz::v3::pb::CheckRequest;
use prost::Message;
use tonic::{
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    codegen::{http, Body, BoxFuture, Context, Poll, Service, StdError},
    server::{Grpc, NamedService, UnaryService},
    Status,
};

use super::{EncodedCheckResponse, ExtAuthzService};

const CHECK_PATH: &str = "/envoy.service.auth.v3.Authorization/Check";

/// Serves `Check` from an [`ExtAuthzService`].
#[derive(Clone)]
pub struct AuthorizationServer {
    service: Arc<ExtAuthzService>,
}

impl AuthorizationServer {
    pub fn new(service: ExtAuthzService) -> Self {
        Self {
            service: Arc::new(service),
        }
    }
}

impl NamedService for AuthorizationServer {
    const NAME: &'static str = "envoy.service.auth.v3.Authorization";
}

impl<B> Service<http::Request<B>> for AuthorizationServer
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.uri().path() != CHECK_PATH {
            return Box::pin(async { Ok(Status::unimplemented("").into_http()) });
        }
        let method = CheckMethod(self.service.clone());
        Box::pin(async move { Ok(Grpc::new(CheckCodec).unary(method, request).await) })
    }
}

struct CheckMethod(Arc<ExtAuthzService>);

impl UnaryService<CheckRequest> for CheckMethod {
    type Response = EncodedCheckResponse;
    type Future = BoxFuture<tonic::Response<EncodedCheckResponse>, Status>;

    fn call(&mut self, request: tonic::Request<CheckRequest>) -> Self::Future {
        let service = self.0.clone();
        Box::pin(async move { service.handle(request).await })
    }
}

/// Decodes `CheckRequest`s with prost and writes pre-encoded responses.
struct CheckCodec;

impl Codec for CheckCodec {
    type Encode = EncodedCheckResponse;
    type Decode = CheckRequest;
    type Encoder = CheckCodec;
    type Decoder = CheckCodec;

    fn encoder(&mut self) -> Self::Encoder {
        CheckCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        CheckCodec
    }
}

impl Encoder for CheckCodec {
    type Item = EncodedCheckResponse;
    type Error = Status;

    fn encode(&mut self, item: Self::Item, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.reserve(item.encoded_len());
        item.write(dst);
        Ok(())
    }
}

impl Decoder for CheckCodec {
    type Item = CheckRequest;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<CheckRequest>, Status> {
        CheckRequest::decode(src)
            .map(Some)
            // INVALID_ARGUMENT rather than the generated codec's INTERNAL: the
            // fault is the caller's. prost's error names the message and
            // field, never a value.
            .map_err(|error| Status::invalid_argument(format!("invalid CheckRequest: {error}")))
    }
}
