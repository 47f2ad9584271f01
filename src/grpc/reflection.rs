//! Server reflection per listener. Each listener advertises exactly the
//! services it serves, so `grpcurl list` shows what can be called there (a
//! service listed on the wrong listener would answer `Unimplemented`), and
//! grpcurl can call Check by name, without proto files.

use tonic::server::NamedService;
use tonic_health::pb::health_server::HealthServer;
use tonic_reflection::{
    pb::{v1, v1alpha},
    server::{
        v1::{ServerReflection as ReflectionV1, ServerReflectionServer as ReflectionServerV1},
        v1alpha::{
            ServerReflection as ReflectionV1Alpha,
            ServerReflectionServer as ReflectionServerV1Alpha,
        },
        Builder, Error,
    },
};

use crate::{grpc::ext_authz::AuthorizationServer, proto::key_admin_server::KeyAdminServer};

/// Envoy's `external_auth.proto` and its imports, compiled by `build.rs` from
/// the protos the `envoy-types` crate ships.
const ENVOY_AUTHZ_FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/envoy_authz_descriptor.bin"));

const HEALTH: &str = <HealthServer<()> as NamedService>::NAME;
const REFLECTION_V1: &str = <ReflectionServerV1<()> as NamedService>::NAME;
const REFLECTION_V1ALPHA: &str = <ReflectionServerV1Alpha<()> as NamedService>::NAME;

/// A gRPC listener of keygate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listener {
    /// `KEYGATE_AUTHZ_ADDR`: Envoy's Check.
    Check,
    /// `KEYGATE_ADMIN_ADDR`: KeyAdmin.
    Admin,
}

impl Listener {
    /// The fully qualified names of the services this listener serves,
    /// health and both reflection versions included.
    pub fn services(self) -> [&'static str; 4] {
        let own = match self {
            Listener::Check => <AuthorizationServer as NamedService>::NAME,
            Listener::Admin => <KeyAdminServer<()> as NamedService>::NAME,
        };
        [own, HEALTH, REFLECTION_V1, REFLECTION_V1ALPHA]
    }

    fn own_descriptors(self) -> &'static [u8] {
        match self {
            Listener::Check => ENVOY_AUTHZ_FILE_DESCRIPTOR_SET,
            Listener::Admin => crate::proto::FILE_DESCRIPTOR_SET,
        }
    }

    fn builder(self) -> Builder<'static> {
        let builder = [
            self.own_descriptors(),
            tonic_health::pb::FILE_DESCRIPTOR_SET,
            v1::FILE_DESCRIPTOR_SET,
            v1alpha::FILE_DESCRIPTOR_SET,
        ]
        .into_iter()
        .fold(
            Builder::configure(),
            Builder::register_encoded_file_descriptor_set,
        );
        self.services()
            .into_iter()
            .fold(builder, Builder::with_service_name)
    }
}

/// The v1 and v1alpha reflection services for `listener`. Both, because the
/// grpcurl shipped on PyPI (1.8) only speaks v1alpha.
#[allow(clippy::type_complexity)]
pub fn services(
    listener: Listener,
) -> Result<
    (
        ReflectionServerV1<impl ReflectionV1>,
        ReflectionServerV1Alpha<impl ReflectionV1Alpha>,
    ),
    Error,
> {
    Ok((
        listener.builder().build_v1()?,
        listener.builder().build_v1alpha()?,
    ))
}
