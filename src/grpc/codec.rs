//! The KeyAdmin codec: prost, except that a request that is not a valid
//! message is the caller's fault.
//!
//! `tonic_prost` answers a message it cannot decode (a string field holding
//! invalid UTF-8, a truncated field) with INTERNAL, which tells the caller
//! the server failed and invites a retry of the same bytes. Here it is
//! INVALID_ARGUMENT. The decode error names the message and field, never
//! the value.

use std::marker::PhantomData;

use tonic::{
    codec::{Codec, DecodeBuf, Decoder},
    Code, Status,
};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// A prost codec whose decode errors are INVALID_ARGUMENT (named by
/// `build.rs` as the codec of the generated KeyAdmin server and client).
#[derive(Debug, Clone)]
pub struct KeyAdminCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for KeyAdminCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for KeyAdminCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = InvalidArgumentDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::default().encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        InvalidArgumentDecoder(ProstCodec::<T, U>::default().decoder())
    }
}

#[derive(Debug)]
pub struct InvalidArgumentDecoder<U>(ProstDecoder<U>);

impl<U: prost::Message + Default> Decoder for InvalidArgumentDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        self.0.decode(buf).map_err(|status| match status.code() {
            Code::Internal => Status::invalid_argument(format!(
                "the request is not a valid message: {}",
                status.message()
            )),
            _ => status,
        })
    }

    fn buffer_settings(&self) -> tonic::codec::BufferSettings {
        self.0.buffer_settings()
    }
}
