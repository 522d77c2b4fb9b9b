//! The codec of the DPS streams: prost's encoding with small starting buffers.
//!
//! A zone holds one DPS stream per sidecar for the sidecar's life, and tonic's default codec
//! reserves 8 KB to encode and 8 KB to decode on each; the messages of an idle stream are
//! acknowledgements and heartbeats of a few bytes, and a configuration grows the buffer to its
//! size when it is sent. Starting at 1 KB saves about 14 KB per stream on both ends. A buffer
//! never shrinks: a zone sends large configurations in pieces of a few KB
//! ([`crate::dps_delta::pieces`]), and each message is handed to HTTP/2 on its own, so the
//! buffers of a stream that took pieces stay at about 4 KB.

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{BufferSettings, Codec, ProstCodec};

/// Bytes reserved when a stream starts (and the step a buffer grows by).
const START: usize = 1024;
/// A stream's encoded messages are handed to HTTP/2 at the latest when this many are buffered:
/// each message of a piece's size on its own, so pieces do not pile up in the buffer.
const YIELD_AT: usize = 1024;

/// Prost's codec with [`START`]-byte buffers.
pub struct DpsCodec<T, U>(PhantomData<fn() -> (T, U)>);

impl<T, U> Default for DpsCodec<T, U> {
    fn default() -> Self {
        DpsCodec(PhantomData)
    }
}

impl<T, U> Codec for DpsCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = <ProstCodec<T, U> as Codec>::Encoder;
    type Decoder = <ProstCodec<T, U> as Codec>::Decoder;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(BufferSettings::new(START, YIELD_AT))
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(BufferSettings::new(START, YIELD_AT))
    }
}
