//! The codec of every SPM stub: prost, except that a request that does not decode is the
//! client's error (`INVALID_ARGUMENT`), not the server's. (gRPC's status-code guide says
//! INTERNAL; SPM answers client garbage with a 4xx-class code, always.)

use std::marker::PhantomData;

use prost::Message;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec as TonicCodec, DecodeBuf, Decoder as TonicDecoder};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// Prost encoding with client-error decode failures.
#[derive(Debug, Clone, Copy)]
pub struct Codec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for Codec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> TonicCodec for Codec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = Decoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::default().encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        Decoder(ProstCodec::<T, U>::default().decoder())
    }
}

/// Decodes with prost; a malformed message is `INVALID_ARGUMENT`.
#[derive(Debug)]
pub struct Decoder<U>(ProstDecoder<U>);

impl<U: Message + Default> TonicDecoder for Decoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        self.0.decode(buf).map_err(|s| {
            Status::invalid_argument(format!("malformed request message: {}", s.message()))
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}

/// A codec whose responses are messages encoded beforehand (a cache of encoded replies):
/// encoding copies the bytes into the frame, requests decode as with [`Codec`].
#[derive(Debug, Clone, Copy)]
pub struct Encoded<U>(PhantomData<U>);

impl<U> Default for Encoded<U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<U> TonicCodec for Encoded<U>
where
    U: Message + Default + Send + 'static,
{
    type Encode = prost::bytes::Bytes;
    type Decode = U;
    type Encoder = BytesEncoder;
    type Decoder = Decoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        BytesEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        Decoder(ProstCodec::<(), U>::default().decoder())
    }
}

/// Writes already-encoded message bytes as they are.
#[derive(Debug, Clone, Copy, Default)]
pub struct BytesEncoder;

impl tonic::codec::Encoder for BytesEncoder {
    type Item = prost::bytes::Bytes;
    type Error = Status;

    fn encode(
        &mut self,
        item: prost::bytes::Bytes,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), Status> {
        prost::bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}
