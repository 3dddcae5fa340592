//! Length-prefixed bincode frames: a big-endian `u32` length, then the body.
//! The length is checked against the stream's limit before anything is
//! allocated, so a peer cannot make us reserve memory by lying about it.

use bincode::{BorrowDecode, Decode, Encode};

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
pub fn encode_frame<T: Encode>(
    value: &T,
    limit: usize,
    out: &mut Vec<u8>,
) -> Result<(), FrameError> {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    append_body(value, out)?;
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
pub fn decode<T: Decode<()>>(body: &[u8]) -> Result<T, FrameError> {
    let (value, used) = bincode::decode_from_slice(body, config())
        .map_err(|e| FrameError::Malformed(e.to_string()))?;
    all_used(body, used)?;
    Ok(value)
}

/// Decodes one frame body, borrowing strings and bytes from it; trailing
/// bytes are an error.
pub fn decode_borrowed<'a, T: BorrowDecode<'a, ()>>(body: &'a [u8]) -> Result<T, FrameError> {
    let (value, used) = decode_prefix(body)?;
    all_used(body, used)?;
    Ok(value)
}

fn all_used(body: &[u8], used: usize) -> Result<(), FrameError> {
    match body.len() - used {
        0 => Ok(()),
        trailing => Err(FrameError::Malformed(format!("{trailing} trailing bytes"))),
    }
}

/// Decodes a value at the start of `body`, borrowing strings and bytes
/// from it; returns it with the bytes it took (the rest may follow).
pub fn decode_prefix<'a, T: BorrowDecode<'a, ()>>(
    body: &'a [u8],
) -> Result<(T, usize), FrameError> {
    bincode::borrow_decode_from_slice(body, config())
        .map_err(|e| FrameError::Malformed(e.to_string()))
}

/// Appends `value`'s encoding, without a length prefix, to `out`.
pub fn append_body<T: Encode>(value: &T, out: &mut Vec<u8>) -> Result<(), FrameError> {
    bincode::encode_into_std_write(value, out, config())
        .map(|_| ())
        .map_err(|e| FrameError::Malformed(e.to_string()))
}

/// Encodes a value on its own, without a length prefix (for storage).
pub fn encode_body<T: Encode>(value: &T) -> Result<Vec<u8>, FrameError> {
    // Sized first: an empty Vec regrew four or five times for a ~300-byte
    // envelope, a third of the node's allocations per relayed text.
    let mut size = bincode::enc::write::SizeWriter::default();
    bincode::encode_into_writer(value, &mut size, config())
        .map_err(|e| FrameError::Malformed(e.to_string()))?;
    let mut out = Vec::with_capacity(size.bytes_written);
    append_body(value, &mut out)?;
    Ok(out)
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

    /// The bytes on the wire, spelled out: they are what nodes queue and
    /// keystores keep, so a change here must be a new protocol version.
    /// (bincode's own derives gave the same bytes as its serde ones.)
    #[test]
    fn wire_layout_is_pinned() {
        use crate::MessageId;
        use crate::envelope::{DeliveryRef, Envelope, Outgoing, OutgoingText, Sealed};
        let sealed = Sealed {
            nonce: [2; 12],
            ciphertext: vec![3, 4, 5],
        };
        let text = Envelope::Text {
            id: MessageId([1; 16]),
            from: "al".into(),
            sealed: sealed.clone(),
        };
        let mut want = vec![0u8];
        want.extend([1; 16]);
        want.extend([2, b'a', b'l']);
        want.extend([2; 12]);
        want.extend([3, 3, 4, 5]);
        assert_eq!(encode_body(&text).unwrap(), want);
        let outgoing = Outgoing::Direct(OutgoingText {
            id: MessageId([1; 16]),
            to: "al".into(),
            sealed,
        });
        assert_eq!(encode_body(&outgoing).unwrap(), want);
        let delivery = DeliveryRef {
            seq: 300,
            envelope: &[9, 9],
        };
        assert_eq!(encode_body(&delivery).unwrap(), [251, 44, 1, 2, 9, 9]);
    }

    /// A relayed text's envelope made in place is the very bytes its
    /// decode and re-encode gave; other kinds and damaged frames are told apart.
    #[test]
    fn a_direct_text_becomes_its_envelope_in_place() {
        use crate::MessageId;
        use crate::envelope::{DirectTextFrame, Envelope, Outgoing, OutgoingText, Receipt, Sealed};
        for (to, len) in [("b", 0), ("bob", 216), (&*"x".repeat(300), 70_000)] {
            let sealed = Sealed {
                nonce: [9; 12],
                ciphertext: (0..len).map(|i| i as u8).collect(),
            };
            let frame = encode_body(&Outgoing::Direct(OutgoingText {
                id: MessageId([4; 16]),
                to: to.to_string(),
                sealed: sealed.clone(),
            }))
            .unwrap();
            let view = DirectTextFrame::parse(&frame).unwrap().unwrap();
            assert_eq!(
                (view.id, view.to, view.ciphertext_len),
                (MessageId([4; 16]), to, len)
            );
            for from in ["al", &*"y".repeat(260)] {
                let want = encode_body(&Envelope::Text {
                    id: MessageId([4; 16]),
                    from: from.to_string(),
                    sealed: sealed.clone(),
                })
                .unwrap();
                assert_eq!(view.envelope_from(from).unwrap(), want);
            }
            assert!(DirectTextFrame::parse(&frame[..frame.len() - 1]).is_err());
            let mut longer = frame.clone();
            longer.push(0);
            assert!(DirectTextFrame::parse(&longer).is_err());
        }
        let receipt = encode_body(&Outgoing::Receipt(Receipt {
            id: MessageId([1; 16]),
            to: "bob".into(),
            ids: vec![MessageId([2; 16])],
        }))
        .unwrap();
        assert!(DirectTextFrame::parse(&receipt).unwrap().is_none());
    }
}
