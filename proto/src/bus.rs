//! What nodes send each other on the bus: a live delivery for a user's
//! sessions on another node, a request for a range of a blob another node
//! holds, its reply, and a blob to drop. Everything read here came from
//! another process and is untrusted input: every decoder is bounded and
//! total (it returns `None` instead of panicking), and fuzzed.

use crate::limits::MAX_MESSAGE_FRAME;

/// Most bytes a node asks of another's blob in one request.
pub const MAX_BLOB_RANGE: u32 = 1 << 20;

/// A live delivery: origin node, queue position, encoded envelope.
pub fn encode_live(origin: &str, seq: u64, envelope: &[u8]) -> Vec<u8> {
    let origin = &origin.as_bytes()[..origin.len().min(u8::MAX as usize)];
    let mut out = Vec::with_capacity(9 + origin.len() + envelope.len());
    out.push(origin.len() as u8);
    out.extend_from_slice(origin);
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(envelope);
    out
}

/// The parts of a live delivery, if it is one: its envelope no larger than
/// a message frame may be.
pub fn decode_live(bytes: &[u8]) -> Option<(&str, u64, &[u8])> {
    let (&n, rest) = bytes.split_first()?;
    let origin = std::str::from_utf8(rest.get(..n as usize)?).ok()?;
    let rest = &rest[n as usize..];
    let seq = u64::from_be_bytes(rest.get(..8)?.try_into().ok()?);
    let envelope = &rest[8..];
    (envelope.len() <= MAX_MESSAGE_FRAME).then_some((origin, seq, envelope))
}

/// A blob range request: blob id, offset, most bytes wanted.
pub fn encode_range(blob_id: u64, offset: u64, max: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(20);
    out.extend_from_slice(&blob_id.to_be_bytes());
    out.extend_from_slice(&offset.to_be_bytes());
    out.extend_from_slice(&max.to_be_bytes());
    out
}

/// The parts of a range request, if it is one; the length asked for is
/// capped at [`MAX_BLOB_RANGE`].
pub fn decode_range(bytes: &[u8]) -> Option<(u64, u64, u32)> {
    if bytes.len() != 20 {
        return None;
    }
    Some((
        u64::from_be_bytes(bytes[..8].try_into().ok()?),
        u64::from_be_bytes(bytes[8..16].try_into().ok()?),
        u32::from_be_bytes(bytes[16..20].try_into().ok()?).min(MAX_BLOB_RANGE),
    ))
}

/// The reply to a range request: 0 and the bytes, or 1 and a sentence.
pub fn encode_reply(result: Result<&[u8], &str>) -> Vec<u8> {
    let (tag, body) = match result {
        Ok(b) => (0u8, b),
        Err(e) => (1u8, e.as_bytes()),
    };
    let mut out = Vec::with_capacity(1 + body.len());
    out.push(tag);
    out.extend_from_slice(body);
    out
}

/// The bytes or the sentence of a reply, if it is one; no more bytes than
/// a range may hold, and a sentence of at most 512 bytes.
pub fn decode_reply(bytes: &[u8]) -> Option<Result<&[u8], String>> {
    match bytes.split_first()? {
        (0, data) if data.len() <= MAX_BLOB_RANGE as usize => Some(Ok(data)),
        (1, why) => Some(Err(
            String::from_utf8_lossy(&why[..why.len().min(512)]).into_owned()
        )),
        _ => None,
    }
}

/// The blob id of a drop notice, if it is one.
pub fn decode_drop(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_formats_round_trip_and_refuse_what_they_should() {
        let bytes = encode_live("127.0.0.1:7701", 42, b"sealed");
        assert_eq!(
            decode_live(&bytes),
            Some(("127.0.0.1:7701", 42, &b"sealed"[..]))
        );
        assert!(decode_live(&bytes[..5]).is_none());
        assert!(decode_live(&[]).is_none());
        let huge = encode_live("n", 1, &vec![0; MAX_MESSAGE_FRAME + 1]);
        assert!(decode_live(&huge).is_none(), "an envelope past a frame");
        assert_eq!(
            decode_range(&encode_range(7, 1 << 40, 65536)),
            Some((7, 1 << 40, 65536))
        );
        assert_eq!(
            decode_range(&encode_range(7, 0, u32::MAX)),
            Some((7, 0, MAX_BLOB_RANGE))
        );
        assert!(decode_range(&[0; 19]).is_none());
        assert!(decode_range(&[0; 21]).is_none());
        assert_eq!(decode_reply(&encode_reply(Ok(b"x"))), Some(Ok(&b"x"[..])));
        assert_eq!(
            decode_reply(&encode_reply(Err("gone"))),
            Some(Err("gone".to_string()))
        );
        assert!(decode_reply(&[2, 0]).is_none());
        assert!(decode_reply(&[]).is_none());
        assert_eq!(decode_drop(&9u64.to_be_bytes()), Some(9));
        assert!(decode_drop(&[1, 2]).is_none());
    }
}
