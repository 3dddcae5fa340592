//! Length-prefixed bincode frames: a big-endian `u32` length, then the body.
//! The length is checked against the stream's limit before anything is
//! allocated, so a peer cannot make us reserve memory by lying about it.

use serde::{Serialize, de::DeserializeOwned};

/// Why a frame could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The declared or actual length exceeds the limit for this stream.
    #[error("frame of {len} bytes exceeds the {limit}-byte limit")]
    TooLarge {
        /// Declared length.
        len: usize,
        /// Limit that applied.
        limit: usize,
    },
    /// The body is not a valid encoding of the expected type.
    #[error("malformed frame: {0}")]
    Malformed(String),
}

fn config() -> impl bincode::config::Config {
    // The varint encoding keeps small ids and lengths small on the wire; the
    // byte limit bounds any allocation the decoder makes on a lying length.
    bincode::config::standard().with_limit::<{ crate::limits::MAX_CONTROL_FRAME }>()
}

/// Appends `value` as one frame (length prefix and body) to `out`.
pub fn encode_frame<T: Serialize>(
    value: &T,
    limit: usize,
    out: &mut Vec<u8>,
) -> Result<(), FrameError> {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    bincode::serde::encode_into_std_write(value, out, config())
        .map_err(|e| FrameError::Malformed(e.to_string()))?;
    let len = out.len() - start - 4;
    if len > limit {
        out.truncate(start);
        return Err(FrameError::TooLarge { len, limit });
    }
    out[start..start + 4].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(())
}

/// Reads the length from a 4-byte prefix and checks it against `limit`.
pub fn frame_len(prefix: [u8; 4], limit: usize) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(prefix) as usize;
    if len > limit {
        return Err(FrameError::TooLarge { len, limit });
    }
    Ok(len)
}

/// Decodes one frame body; trailing bytes are an error.
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    let (value, used) = bincode::serde::decode_from_slice(body, config())
        .map_err(|e| FrameError::Malformed(e.to_string()))?;
    if used != body.len() {
        return Err(FrameError::Malformed(format!(
            "{} trailing bytes",
            body.len() - used
        )));
    }
    Ok(value)
}

/// Encodes a value on its own, without a length prefix (for storage).
pub fn encode_body<T: Serialize>(value: &T) -> Result<Vec<u8>, FrameError> {
    bincode::serde::encode_to_vec(value, config()).map_err(|e| FrameError::Malformed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::{Request, RequestFrame};

    #[test]
    fn roundtrip() {
        let req = RequestFrame {
            id: 9,
            request: Request::Hello {
                version: 1,
                name: "alice".into(),
            },
        };
        let mut buf = Vec::new();
        encode_frame(&req, 1024, &mut buf).unwrap();
        let len = frame_len(buf[..4].try_into().unwrap(), 1024).unwrap();
        assert_eq!(len, buf.len() - 4);
        let back: RequestFrame = decode(&buf[4..]).unwrap();
        assert_eq!(back.id, 9);
    }

    #[test]
    fn oversized_length_is_refused_before_reading() {
        assert!(matches!(
            frame_len(u32::MAX.to_be_bytes(), 1024),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        for body in [
            &b""[..],
            b"\xff\xff\xff\xff\xff",
            b"\x05garbage",
            &[0x0f; 300],
        ] {
            assert!(decode::<RequestFrame>(body).is_err());
        }
    }

    #[test]
    fn encoding_over_limit_is_refused() {
        let req = Request::Hello {
            version: 1,
            name: "x".repeat(100),
        };
        let mut buf = vec![1, 2, 3];
        assert!(encode_frame(&req, 10, &mut buf).is_err());
        assert_eq!(buf, vec![1, 2, 3]);
    }
}
