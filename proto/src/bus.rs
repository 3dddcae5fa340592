//! What nodes send each other on the bus: a live delivery for a user's
//! sessions on another node, a request for a range of a blob another node
//! holds, its reply, and a blob to drop. Everything read here came from
//! another process and is untrusted input: every decoder is bounded and
//! total (it returns `None` instead of panicking), and fuzzed.

use crate::limits::MAX_MESSAGE_FRAME;

/// Most bytes a node asks of another's blob in one request.
pub const MAX_BLOB_RANGE: u32 = 1 << 20;

/// Most bytes of envelopes one batch of live deliveries carries (a single
/// larger envelope goes alone); well under NATS's 1 MiB payload limit.
pub const LIVE_BATCH_BYTES: usize = 256 * 1024;

/// Live deliveries for one user, in queue order: origin node, then each
/// envelope with its queue position and length.
pub fn encode_lives<'a>(origin: &str, lives: impl IntoIterator<Item = (u64, &'a [u8])>) -> Vec<u8> {
    let origin = &origin.as_bytes()[..origin.len().min(u8::MAX as usize)];
    let mut out = Vec::with_capacity(1 + origin.len() + 512);
    out.push(origin.len() as u8);
    out.extend_from_slice(origin);
    for (seq, envelope) in lives {
        out.extend_from_slice(&seq.to_be_bytes());
        out.extend_from_slice(&(envelope.len() as u32).to_be_bytes());
        out.extend_from_slice(envelope);
    }
    out
}

/// A batch of live deliveries as read: origin node, then (queue position,
/// envelope) in queue order.
pub type Lives<'a> = (&'a str, Vec<(u64, &'a [u8])>);

/// The origin and deliveries of a batch, if it is one: at least one
/// delivery, each envelope no larger than a message frame may be.
pub fn decode_lives(bytes: &[u8]) -> Option<Lives<'_>> {
    let (&n, rest) = bytes.split_first()?;
    let origin = std::str::from_utf8(rest.get(..n as usize)?).ok()?;
    let mut rest = &rest[n as usize..];
    let mut lives = Vec::new();
    while !rest.is_empty() {
        let seq = u64::from_be_bytes(rest.get(..8)?.try_into().ok()?);
        let len = u32::from_be_bytes(rest.get(8..12)?.try_into().ok()?) as usize;
        if len > MAX_MESSAGE_FRAME {
            return None;
        }
        lives.push((seq, rest.get(12..12 + len)?));
        rest = &rest[12 + len..];
    }
    (!lives.is_empty()).then_some((origin, lives))
}

/// The answer to an offer of handed-off texts: per text, 1 if a session
/// of the recipient acknowledged it, else 0.
pub fn encode_acks(acked: &[bool]) -> Vec<u8> {
    acked.iter().map(|a| u8::from(*a)).collect()
}

/// The flags of an answer to an offer of `n` texts, if it is one.
pub fn decode_acks(bytes: &[u8], n: usize) -> Option<Vec<bool>> {
    if bytes.len() != n {
        return None;
    }
    bytes
        .iter()
        .map(|b| match b {
            0 => Some(false),
            1 => Some(true),
            _ => None,
        })
        .collect()
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
        let bytes = encode_lives("127.0.0.1:7701", [(42, &b"sealed"[..]), (43, &b""[..])]);
        assert_eq!(
            decode_lives(&bytes),
            Some(("127.0.0.1:7701", vec![(42, &b"sealed"[..]), (43, &b""[..])]))
        );
        for cut in 1..bytes.len() {
            if cut != bytes.len() - 12 {
                assert!(decode_lives(&bytes[..cut]).is_none(), "cut at {cut}");
            }
        }
        assert!(decode_lives(&[]).is_none());
        assert!(
            decode_lives(&encode_lives("n", [])).is_none(),
            "no delivery"
        );
        let huge = encode_lives("n", [(1, &vec![0; MAX_MESSAGE_FRAME + 1][..])]);
        assert!(decode_lives(&huge).is_none(), "an envelope past a frame");
        let acks = encode_acks(&[true, false, true]);
        assert_eq!(decode_acks(&acks, 3), Some(vec![true, false, true]));
        assert!(decode_acks(&acks, 2).is_none(), "another count");
        assert!(decode_acks(&[2], 1).is_none());
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
