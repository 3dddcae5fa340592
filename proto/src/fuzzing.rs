//! Entry points that feed arbitrary bytes to every decoder of bytes that
//! come from the network or disk. Shared by the `fuzz/` targets and the test
//! that replays their corpus, so both exercise exactly the same code.

use crate::balancer::{BalancerRequest, BalancerResponse};
use crate::control::{RequestFrame, ResponseFrame};
use crate::envelope::{
    DeliveryAck, DeliveryRef, DirectTextFrame, Envelope, Outgoing, SendAck, TextContent,
};
use crate::group::{GroupUpdate, MemberKey, RosterEntry};
use crate::image::{
    ImageAccept, ImageFetch, ImageFetchReply, ImageHeader, ImageOffer, ImageStored,
};
use crate::limits::{MAX_CONTROL_FRAME, image_plaintext_len};
use crate::stream::StreamKind;
use crate::{decode, frame_len};

/// Splits `data` into length-prefixed frames as a reader would, decoding
/// each with `f`; stops at the first error, as a reader does.
fn frames(data: &[u8], mut f: impl FnMut(&[u8])) {
    let mut rest = data;
    while rest.len() >= 4 {
        let Ok(len) = frame_len(rest[..4].try_into().expect("4 bytes"), MAX_CONTROL_FRAME) else {
            return;
        };
        let Some(body) = rest.get(4..4 + len) else {
            return;
        };
        f(body);
        rest = &rest[4 + len..];
    }
}

/// Control-stream and balancer traffic.
pub fn control(data: &[u8]) {
    frames(data, |b| {
        let _ = decode::<StreamKind>(b);
        let _ = decode::<RequestFrame>(b);
        let _ = decode::<ResponseFrame>(b);
        let _ = decode::<BalancerRequest>(b);
        let _ = decode::<BalancerResponse>(b);
    });
}

/// Text and delivery streams, envelopes and what the keystore stores of them.
pub fn envelope(data: &[u8]) {
    frames(data, |b| {
        let _ = decode::<Outgoing>(b);
        // What a node reads a direct text as, in place: it must agree with
        // the whole decode, and re-address to the same envelope.
        if let Ok(Some(text)) = DirectTextFrame::parse(b) {
            let Ok(Outgoing::Direct(whole)) = decode::<Outgoing>(b) else {
                panic!("a direct text read in place does not decode whole");
            };
            assert_eq!((text.id, text.to), (whole.id, whole.to.as_str()));
            let envelope = Envelope::Text {
                id: whole.id,
                from: "fuzz".into(),
                sealed: whole.sealed,
            };
            assert_eq!(
                text.envelope_from("fuzz").ok(),
                crate::frame::encode_body(&envelope).ok()
            );
        }
        let _ = decode::<SendAck>(b);
        let _ = crate::frame::decode_borrowed::<DeliveryRef<'_>>(b);
        let _ = decode::<DeliveryAck>(b);
    });
    let _ = decode::<Envelope>(data);
    let _ = decode::<TextContent>(data);
    let _ = decode::<GroupUpdate>(data);
    let _ = decode::<MemberKey>(data);
    let _ = decode::<Vec<RosterEntry>>(data);
}

/// Image streams: offers, fetches, replies and headers.
pub fn image(data: &[u8]) {
    frames(data, |b| {
        let _ = decode::<ImageOffer>(b);
        let _ = decode::<ImageAccept>(b);
        let _ = decode::<ImageStored>(b);
        let _ = decode::<ImageFetch>(b);
        let _ = decode::<ImageFetchReply>(b);
    });
    let _ = decode::<ImageHeader>(data);
    if data.len() >= 8 {
        let _ = image_plaintext_len(u64::from_le_bytes(data[..8].try_into().expect("8 bytes")));
    }
}

/// What nodes send each other on the bus (`crate::bus`).
pub fn bus(data: &[u8]) {
    let _ = crate::bus::decode_lives(data);
    let _ = crate::bus::decode_acks(data, data.first().copied().unwrap_or(0) as usize);
    let _ = crate::bus::decode_range(data);
    let _ = crate::bus::decode_reply(data);
    let _ = crate::bus::decode_drop(data);
}

#[cfg(test)]
mod tests {
    #[test]
    fn arbitrary_bytes_never_panic() {
        // A cheap deterministic sweep; the fuzz targets go much further.
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for len in 0..600usize {
            let data: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            super::control(&data);
            super::envelope(&data);
            super::image(&data);
        }
    }
}
