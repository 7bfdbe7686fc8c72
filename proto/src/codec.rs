//! Binary codec of Raft entries and RPC payloads: bincode 2 over serde, standard config.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::ProtoError;

/// Upper bound on a decoded message, so a hostile peer cannot make us allocate without limit.
pub const DECODE_LIMIT_BYTES: usize = 256 * 1024 * 1024;

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<DECODE_LIMIT_BYTES>()
}

pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, ProtoError> {
    bincode::serde::encode_to_vec(value, config()).map_err(|e| ProtoError::Codec(e.to_string()))
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ProtoError> {
    let (value, used) = bincode::serde::decode_from_slice(bytes, config())
        .map_err(|e| ProtoError::Codec(e.to_string()))?;
    if used != bytes.len() {
        return Err(ProtoError::Codec(format!(
            "{} trailing bytes after message",
            bytes.len() - used
        )));
    }
    Ok(value)
}
