//! Typed bodies: MessagePack (rmp-serde) for Rust peers, JSON for peers that
//! speak JSON (NoisePage's model server). Decoding never panics: bytes that
//! do not fit the type give [`Error::Decode`].
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use messenger::{Incoming, Messenger, NOOP, Responder};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize)]
//! struct Batch { lsn: u64, records: Vec<String> }
//! #[derive(Serialize, Deserialize, Debug, PartialEq)]
//! struct Ack { lsn: u64 }
//!
//! let replica = Messenger::new()?;
//! let apply = |msg: Incoming, r: Responder| {
//!     let batch: Batch = msg.decode().expect("a batch");
//!     let _ = r.try_reply_typed(&Ack { lsn: batch.lsn });
//! };
//! let at = "inproc://typed-doc".parse()?;
//! replica.listen_for_connection(&at, apply).await?;
//! let primary = Messenger::new()?;
//! let conn = primary.make_connection(&at).await?;
//! let batch = Batch { lsn: 42, records: vec!["INSERT".into()] };
//! let ack: Ack = primary.request_typed(conn, NOOP, &batch).await?;
//! assert_eq!(ack, Ack { lsn: 42 });
//! # Ok(()) }
//! ```

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::address::Destination;
use crate::error::Error;
use crate::messenger::Messenger;
use crate::runtime::server_loop::Responder;
use crate::types::{Callback, Incoming};

/// Encodes `value` as MessagePack with named fields, so peers in other
/// languages see maps, not positional arrays.
pub fn to_msgpack<T: Serialize + ?Sized>(value: &T) -> Result<Bytes, Error> {
    rmp_serde::to_vec_named(value)
        .map(Bytes::from)
        .map_err(|e| Error::Encode(format!("as MessagePack: {e}")))
}

/// Decodes a MessagePack body.
pub fn from_msgpack<T: DeserializeOwned>(body: &[u8]) -> Result<T, Error> {
    rmp_serde::from_slice(body)
        .map_err(|e| Error::Decode(format!("not MessagePack of the expected type: {e}")))
}

/// Encodes `value` as JSON.
pub fn to_json<T: Serialize + ?Sized>(value: &T) -> Result<Bytes, Error> {
    serde_json::to_vec(value)
        .map(Bytes::from)
        .map_err(|e| Error::Encode(format!("as JSON: {e}")))
}

/// Decodes a JSON body.
pub fn from_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, Error> {
    serde_json::from_slice(body)
        .map_err(|e| Error::Decode(format!("not JSON of the expected type: {e}")))
}

impl Incoming {
    /// Decodes the body as MessagePack.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, Error> {
        from_msgpack(&self.body)
    }

    /// Decodes the body as JSON.
    pub fn decode_json<T: DeserializeOwned>(&self) -> Result<T, Error> {
        from_json(&self.body)
    }
}

impl Responder {
    /// Replies with `value` as MessagePack, without waiting.
    pub fn try_reply_typed<T: Serialize + ?Sized>(&self, value: &T) -> Result<(), Error> {
        self.try_reply(to_msgpack(value)?)
    }

    /// Replies with `value` as MessagePack.
    pub async fn reply_typed<T: Serialize + ?Sized>(&self, value: &T) -> Result<(), Error> {
        self.reply(to_msgpack(value)?).await
    }
}

impl Messenger {
    /// Sends `value` as MessagePack; see [`send_message`](Self::send_message).
    pub async fn send_typed<T: Serialize + ?Sized>(
        &self,
        dest: impl Into<Destination>,
        dst_cb: u64,
        value: &T,
        callback: Option<Callback>,
    ) -> Result<u64, Error> {
        let body = to_msgpack(value)?;
        self.send_message(dest, dst_cb, body, callback).await
    }

    /// Sends `request` as MessagePack and decodes the reply as `R`.
    pub async fn request_typed<T: Serialize + ?Sized, R: DeserializeOwned>(
        &self,
        dest: impl Into<Destination>,
        dst_cb: u64,
        request: &T,
    ) -> Result<R, Error> {
        let body = to_msgpack(request)?;
        let reply = self.request(dest, dst_cb, body).await?;
        reply.decode()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Batch {
        term: u64,
        first_lsn: u64,
        records: Vec<String>,
    }

    #[test]
    fn msgpack_round_trip_and_typed_errors() {
        let b = Batch {
            term: 3,
            first_lsn: 10,
            records: vec!["a".into(), "b".into()],
        };
        let bytes = to_msgpack(&b).unwrap();
        assert_eq!(from_msgpack::<Batch>(&bytes).unwrap(), b);
        let decode = |r: Result<Batch, Error>| match r {
            Err(Error::Decode(why)) => why,
            other => panic!("{other:?}"),
        };
        assert!(decode(from_msgpack::<Batch>(b"\xc1 not msgpack")).contains("MessagePack"));
        assert!(decode(from_msgpack::<Batch>(b"")).contains("MessagePack"));
        assert!(decode(from_json::<Batch>(b"\xff\xfe")).contains("JSON"));
    }
}
