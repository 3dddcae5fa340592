//! What travels on text and delivery streams: messages from a sender, the
//! envelopes a node queues and delivers, and the acknowledgements.

use bincode::{BorrowDecode, Decode, Encode};

use crate::{MessageId, ProtoError};

/// AES-256-GCM output: the nonce it used and ciphertext with its tag.
#[derive(Encode, Decode, Clone, Debug, PartialEq, Eq)]
pub struct Sealed {
    /// 96-bit nonce, unique per key.
    pub nonce: [u8; 12],
    /// Ciphertext followed by the 16-byte tag.
    pub ciphertext: Vec<u8>,
}

/// One message as a sender puts it on a [`crate::stream::StreamKind::Text`] stream.
#[derive(Encode, Decode, Clone, Debug)]
pub enum Outgoing {
    /// To one friend.
    Direct(OutgoingText),
    /// To every other member of a group.
    Group(OutgoingGroupText),
    /// Tells a friend which of their texts we have stored.
    Receipt(Receipt),
}

/// Which of a friend's texts the sender of the receipt has stored.
#[derive(Encode, Decode, Clone, Debug)]
pub struct Receipt {
    /// Id of the receipt itself.
    pub id: MessageId,
    /// The friend whose texts these were.
    pub to: String,
    /// Their ids.
    pub ids: Vec<MessageId>,
}

impl Outgoing {
    /// The sender's id for the message.
    pub fn id(&self) -> MessageId {
        match self {
            Self::Direct(t) => t.id,
            Self::Group(t) => t.id,
            Self::Receipt(r) => r.id,
        }
    }

    /// Its size on the wire, near enough to close a batch before
    /// [`crate::limits::MAX_BATCH_BYTES`] (an upper bound: ids, names and
    /// framing take less than the allowance added).
    pub fn wire_size_bound(&self) -> usize {
        const ALLOWANCE: usize = 256;
        ALLOWANCE
            + match self {
                Self::Direct(t) => t.sealed.ciphertext.len() + t.to.len(),
                Self::Group(t) => t.sealed.ciphertext.len() + 64 + BatchProof::WIRE_BOUND,
                Self::Receipt(r) => r.to.len() + 17 * r.ids.len(),
            }
    }
}

/// An [`Outgoing::Direct`] read in place from its frame: what a node checks
/// and routes by, with the sealed bytes left where they are. A relayed text
/// becomes its [`Envelope::Text`] by one copy, the sender's name in place
/// of the recipient's (the two encodings differ in nothing else), instead
/// of a decode that copies the ciphertext and an encode that copies it back.
pub struct DirectTextFrame<'a> {
    /// The sender's id for it.
    pub id: MessageId,
    /// The recipient's name.
    pub to: &'a str,
    /// Ciphertext length, tag included.
    pub ciphertext_len: usize,
    /// The encoded [`Sealed`], to the end of the frame.
    sealed: &'a [u8],
}

impl<'a> DirectTextFrame<'a> {
    /// Reads `frame` if it holds an [`Outgoing::Direct`]; `None` for the
    /// other kinds, which are decoded whole.
    pub fn parse(frame: &'a [u8]) -> Result<Option<Self>, crate::FrameError> {
        use crate::frame::decode_prefix;
        let (variant, tag_len): (u32, usize) = decode_prefix(frame)?;
        // `Outgoing::Direct` is the first variant.
        if variant != 0 {
            return Ok(None);
        }
        let ((id, to), head_len): (([u8; 16], &str), usize) = decode_prefix(&frame[tag_len..])?;
        let sealed = &frame[tag_len + head_len..];
        let ((_nonce, ciphertext), sealed_len): (([u8; 12], &[u8]), usize) = decode_prefix(sealed)?;
        if sealed_len != sealed.len() {
            return Err(crate::FrameError::Malformed(format!(
                "{} trailing bytes",
                sealed.len() - sealed_len
            )));
        }
        Ok(Some(Self {
            id: MessageId(id),
            to,
            ciphertext_len: ciphertext.len(),
            sealed,
        }))
    }

    /// The encoded [`Envelope::Text`] its recipient gets, from `from`.
    pub fn envelope_from(&self, from: &str) -> Result<Vec<u8>, crate::FrameError> {
        use crate::frame::append_body;
        let mut out = Vec::with_capacity(1 + 16 + 10 + from.len() + self.sealed.len());
        // `Envelope::Text` is the first variant.
        append_body(&0u32, &mut out)?;
        append_body(&self.id, &mut out)?;
        append_body(&from, &mut out)?;
        out.extend_from_slice(self.sealed);
        Ok(out)
    }
}

/// A group text as its sender sends it.
#[derive(Encode, Decode, Clone, Debug)]
pub struct OutgoingGroupText {
    /// The sender's id for it.
    pub id: MessageId,
    /// Which group.
    pub group_id: u64,
    /// The key epoch it is encrypted under.
    pub epoch: u64,
    /// The encrypted content.
    pub sealed: Sealed,
    /// The sender's Ed25519 signature over `transcript::group_batch_signature`
    /// of the batch this text was sent in (empty until the batch is formed).
    pub signature: Vec<u8>,
    /// Where this text sits in that batch.
    pub proof: BatchProof,
}

/// A text's place in the batch one signature covers (`fastchat_crypto::batch`).
/// `count` 0 (the default) marks a text signed alone, as protocol 5 signed
/// every group text: its signature covers `transcript::group_text_signature`.
#[derive(Encode, Decode, Clone, Debug, Default, PartialEq, Eq)]
pub struct BatchProof {
    /// Its position in the batch.
    pub index: u32,
    /// How many texts the batch holds.
    pub count: u32,
    /// The sibling hashes from its leaf up to the root.
    pub path: Vec<[u8; 32]>,
}

impl BatchProof {
    /// Most bytes a proof takes on the wire (a path of up to 16 hashes).
    pub const WIRE_BOUND: usize = 16 + 33 * 16;
}

/// One text message to a friend.
#[derive(Encode, Decode, Clone, Debug)]
pub struct OutgoingText {
    /// The sender's id for it.
    pub id: MessageId,
    /// The recipient's name.
    pub to: String,
    /// The encrypted content.
    pub sealed: Sealed,
}

/// The node's answer to one [`OutgoingText`]: durable, or refused.
#[derive(Encode, Decode, Clone, Debug)]
pub struct SendAck {
    /// Which message this answers.
    pub id: MessageId,
    /// `Ok` once the message is durable (and where); otherwise why it was refused.
    pub result: Result<Accepted, ProtoError>,
}

/// Where an acknowledged message is durable.
#[derive(Encode, Decode, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accepted {
    /// In the node's store, to be delivered.
    Stored,
    /// In the recipient's keystore already (handed off to its session): no
    /// receipt will follow, the ack is the receipt.
    Delivered,
}

/// Queue positions with this bit set name no stored row: the node handed
/// the text to the session directly, and its sender learns of the delivery
/// from its own ack, so the recipient sends no receipt for it.
pub const HANDED_OFF: u64 = 1 << 63;

/// Whether a delivery's position marks a handed-off text.
pub fn is_handed_off(seq: u64) -> bool {
    seq & HANDED_OFF != 0
}

/// A group text as a protocol-5 client had it queued: no [`BatchProof`].
#[derive(Encode, Decode, Clone, Debug)]
pub struct GroupTextV5 {
    /// The sender's id for it.
    pub id: MessageId,
    /// Which group.
    pub group_id: u64,
    /// Who sent it.
    pub from: String,
    /// The key epoch.
    pub epoch: u64,
    /// The encrypted content.
    pub sealed: Sealed,
    /// The sender's Ed25519 signature over the text alone.
    pub signature: Vec<u8>,
}

/// [`Envelope::GroupText`]'s variant index, which protocol 5 used too.
pub const GROUP_TEXT_VARIANT: u32 = 7;

impl Envelope {
    /// Decodes a queued envelope. A group text a protocol-5 client queued
    /// before the upgrade decodes too, as signed alone (its proof's
    /// `count` 0), so an upgrade drops none of them.
    pub fn decode_queued(body: &[u8]) -> Result<Self, crate::FrameError> {
        let current = crate::decode::<Envelope>(body);
        if current.is_ok() {
            return current;
        }
        match crate::decode::<(u32, GroupTextV5)>(body) {
            Ok((GROUP_TEXT_VARIANT, t)) => Ok(Envelope::GroupText {
                id: t.id,
                group_id: t.group_id,
                from: t.from,
                epoch: t.epoch,
                sealed: t.sealed,
                signature: t.signature,
                proof: BatchProof::default(),
            }),
            _ => current,
        }
    }
}

/// [`Envelope::Text`]'s variant index (its first byte, a varint).
const TEXT_VARIANT: u8 = 0;

/// An [`Envelope::Text`] read where its bytes lie: the recipient decrypts
/// straight from the delivery frame, where an owned decode copied the
/// sender's name and the ciphertext into fresh allocations first (~0.9k
/// of a drained text's 13k instructions on the recipient's one delivery
/// task).
#[derive(BorrowDecode, Clone, Copy, Debug)]
pub struct TextRef<'a> {
    /// The sender's id for it.
    pub id: MessageId,
    /// Who sent it.
    pub from: &'a str,
    /// [`Sealed::nonce`].
    pub nonce: [u8; 12],
    /// [`Sealed::ciphertext`].
    pub ciphertext: &'a [u8],
}

impl<'a> TextRef<'a> {
    /// The text queued as `body`, or `None` for any other envelope.
    pub fn parse(body: &'a [u8]) -> Result<Option<Self>, crate::FrameError> {
        match body.split_first() {
            Some((&TEXT_VARIANT, rest)) => crate::frame::decode_borrowed(rest).map(Some),
            _ => Ok(None),
        }
    }
}

/// Something the node queues for a user and delivers when they are online.
#[derive(Encode, Decode, Clone, Debug)]
pub enum Envelope {
    /// An end-to-end encrypted text from a friend.
    Text {
        /// The sender's id for it.
        id: MessageId,
        /// Who sent it (authenticated by the node at login, and by the AEAD).
        from: String,
        /// The encrypted content.
        sealed: Sealed,
    },
    /// Someone asks to be friends.
    FriendRequest {
        /// The requester.
        from: String,
        /// The requester's public key as the node has it (SPKI DER).
        public_key: Vec<u8>,
        /// The requester's Ed25519 signing key (covered by the signature).
        signing_key: [u8; 32],
        /// The requester's signature over the request transcript.
        signature: Vec<u8>,
    },
    /// A friend request was accepted; carries the wrapped conversation key.
    FriendAccepted {
        /// The accepter.
        from: String,
        /// The conversation key wrapped for the recipient.
        wrapped_key: Vec<u8>,
        /// The accepter's Ed25519 signing key (covered by the signature).
        signing_key: [u8; 32],
        /// The accepter's signature over the accept transcript.
        signature: Vec<u8>,
    },
    /// A group's new key epoch, for one member, signed by the admin.
    GroupKey {
        /// What changed and the new roster.
        update: crate::group::GroupUpdate,
        /// The epoch key wrapped for the recipient.
        wrapped_key: Vec<u8>,
        /// The admin's Ed25519 signature over `transcript::group_key`.
        signature: Vec<u8>,
    },
    /// The recipient was removed from a group.
    GroupRemoved {
        /// The update that removed them.
        update: crate::group::GroupUpdate,
        /// The admin's Ed25519 signature over `transcript::group_removed`.
        signature: Vec<u8>,
    },
    /// An image or file waiting at the node; fetch it with an
    /// [`crate::image::ImageFetch`] stream.
    Image {
        /// The sender's id for it.
        id: MessageId,
        /// Who sent it.
        from: String,
        /// The group and epoch, for group images.
        group: Option<(u64, u64)>,
        /// The sealed [`crate::image::ImageHeader`].
        header: Vec<u8>,
        /// Per-image nonce prefix of the chunk nonces.
        nonce_prefix: [u8; 7],
        /// Ciphertext bytes to fetch.
        total_len: u64,
        /// The sender's Ed25519 signature, for group images.
        signature: Vec<u8>,
    },
    /// A friend has stored these texts of ours.
    Delivered {
        /// The friend.
        from: String,
        /// Our message ids.
        ids: Vec<MessageId>,
    },
    /// A text to a group the recipient belongs to.
    GroupText {
        /// The sender's id for it.
        id: MessageId,
        /// Which group.
        group_id: u64,
        /// Who sent it (checked by the node; members check the signature).
        from: String,
        /// The key epoch.
        epoch: u64,
        /// The encrypted content.
        sealed: Sealed,
        /// The sender's Ed25519 signature over its batch.
        signature: Vec<u8>,
        /// Where the text sits in that batch.
        proof: BatchProof,
    },
}

/// One queued envelope with its position in the recipient's queue, its
/// bytes borrowed: the node writes one stored envelope to many recipients
/// without a copy each, and the client decodes it where the frame was read
/// (an owned copy of every envelope made a drained text's frame decoding
/// 1.75k instructions instead of 1.38k).
#[derive(Encode, BorrowDecode, Clone, Copy, Debug)]
pub struct DeliveryRef<'a> {
    /// Queue position; increases with every envelope queued.
    pub seq: u64,
    /// The envelope, as bincode bytes (kept encoded so the node never re-encodes).
    pub envelope: &'a [u8],
}

/// The client's answer to a delivery batch: these may now be deleted.
#[derive(Encode, Decode, Clone, Debug)]
pub struct DeliveryAck {
    /// Queue positions the client has stored.
    pub seqs: Vec<u64>,
}

/// The content inside a text's ciphertext.
#[derive(Encode, Decode, Clone, Debug, PartialEq, Eq)]
pub struct TextContent {
    /// The message.
    pub text: String,
    /// When the sender sent it, milliseconds since the Unix epoch.
    pub sent_at_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delivery_decodes_in_place_as_it_was_encoded() {
        let envelope = [1, 2, 3, 250];
        let body = crate::frame::encode_body(&DeliveryRef {
            seq: 300,
            envelope: &envelope,
        })
        .unwrap();
        // The wire form: a varint position, then the bytes with their length.
        assert_eq!(body, [251, 44, 1, 4, 1, 2, 3, 250]);
        let back: DeliveryRef<'_> = crate::frame::decode_borrowed(&body).unwrap();
        assert_eq!((back.seq, back.envelope), (300, &envelope[..]));
        assert!(
            crate::frame::decode_borrowed::<DeliveryRef<'_>>(&[body.as_slice(), &[0]].concat())
                .is_err()
        );
    }

    #[test]
    fn a_queued_text_reads_in_place_as_it_decodes_whole() {
        let text = Envelope::Text {
            id: MessageId([7; 16]),
            from: "alice".into(),
            sealed: Sealed {
                nonce: [3; 12],
                ciphertext: vec![9; 300],
            },
        };
        let body = crate::frame::encode_body(&text).unwrap();
        let read = TextRef::parse(&body).unwrap().expect("a text");
        assert_eq!(read.id, MessageId([7; 16]));
        assert_eq!((read.from, read.nonce), ("alice", [3; 12]));
        assert_eq!(read.ciphertext, &[9; 300][..]);
        let receipt = Envelope::Delivered {
            from: "bob".into(),
            ids: vec![MessageId([1; 16])],
        };
        let other = crate::frame::encode_body(&receipt).unwrap();
        assert!(TextRef::parse(&other).unwrap().is_none());
        assert!(
            TextRef::parse(&body[..body.len() - 1]).is_err(),
            "cut short"
        );
        assert!(TextRef::parse(&[]).unwrap().is_none());
    }

    #[test]
    fn a_group_text_queued_by_protocol_5_decodes_as_signed_alone() {
        let sealed = Sealed {
            nonce: [4; 12],
            ciphertext: vec![5; 40],
        };
        let v5 = GroupTextV5 {
            id: MessageId([1; 16]),
            group_id: 9,
            from: "alice".into(),
            epoch: 2,
            sealed: sealed.clone(),
            signature: vec![6; 64],
        };
        let queued = crate::frame::encode_body(&(GROUP_TEXT_VARIANT, v5)).unwrap();
        let Envelope::GroupText {
            from,
            signature,
            proof,
            ..
        } = Envelope::decode_queued(&queued).unwrap()
        else {
            panic!("not a group text")
        };
        assert_eq!(
            (from.as_str(), signature, proof.count),
            ("alice", vec![6; 64], 0)
        );
        // The variant index is still the one protocol 5 wrote.
        let now = Envelope::GroupText {
            id: MessageId([1; 16]),
            group_id: 9,
            from: "alice".into(),
            epoch: 2,
            sealed,
            signature: vec![6; 64],
            proof: BatchProof::default(),
        };
        let now = crate::frame::encode_body(&now).unwrap();
        assert!(now.starts_with(&queued[..1]) && queued[0] == GROUP_TEXT_VARIANT as u8);
        assert!(matches!(
            Envelope::decode_queued(&now).unwrap(),
            Envelope::GroupText { .. }
        ));
        assert!(Envelope::decode_queued(&[200, 1, 2]).is_err());
    }
}
