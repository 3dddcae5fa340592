//! Images and files travel on their own streams: an upload stream from the
//! sender, a fetch stream per recipient. After the first frame each carries
//! raw ciphertext bytes (fixed-size AEAD chunks), never the whole image in
//! one frame.

use bincode::{Decode, Encode};

use crate::{MessageId, ProtoError};

/// Whether the attachment is shown as an image or as a plain file.
#[derive(Encode, Decode, Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachmentKind {
    /// An image (checked by the sender's client).
    Image,
    /// Any file, sent on purpose as one.
    File,
}

/// The encrypted header's content: what the recipient needs before the bytes.
#[derive(Encode, Decode, Clone, Debug, PartialEq, Eq)]
pub struct ImageHeader {
    /// The sender's file name (recipients strip any path from it).
    pub title: String,
    /// Plaintext size in bytes.
    pub size: u64,
    /// Image or file.
    pub kind: AttachmentKind,
    /// When the sender sent it, milliseconds since the Unix epoch.
    pub sent_at_ms: u64,
    /// The key of this file's chunks: fresh and random per file, so the
    /// conversation key (which seals only this header) never encrypts bulk
    /// data, and no two files ever share a key and nonce.
    pub file_key: [u8; 32],
}

/// Where an upload goes.
#[derive(Encode, Decode, Clone, Debug, PartialEq, Eq)]
pub enum ImageTarget {
    /// One friend.
    Direct(String),
    /// Every other member of a group at this epoch.
    Group {
        /// The group.
        id: u64,
        /// The epoch the key belongs to.
        epoch: u64,
    },
}

/// First frame of an upload stream. The same id resumes an earlier upload.
#[derive(Encode, Decode, Clone, Debug)]
pub struct ImageOffer {
    /// The sender's id for the image.
    pub id: MessageId,
    /// Recipient(s).
    pub to: ImageTarget,
    /// Ciphertext bytes that will follow in total.
    pub total_len: u64,
    /// The [`ImageHeader`], sealed under the conversation (or group) key:
    /// a 12-byte random nonce, then the ciphertext.
    pub header: Vec<u8>,
    /// Per-image nonce prefix of the chunk nonces.
    pub nonce_prefix: [u8; 7],
    /// For group images: the sender's Ed25519 signature over
    /// `transcript::group_image_signature` (empty for 1:1 images, whose
    /// pairwise key already authenticates the sender).
    pub signature: Vec<u8>,
}

/// The node's answer to an offer.
#[derive(Encode, Decode, Clone, Debug)]
pub enum ImageAccept {
    /// Send the ciphertext from byte `have` on.
    Continue {
        /// Bytes the node already holds from earlier attempts.
        have: u64,
    },
    /// Refused before any byte was sent.
    Refused(ProtoError),
}

/// The node's answer once the whole upload is stored.
#[derive(Encode, Decode, Clone, Debug)]
pub enum ImageStored {
    /// Durable; recipients fetch it from the node.
    Stored,
    /// Something failed after the offer was accepted.
    Failed(ProtoError),
}

/// First frame of a fetch stream: the recipient asks for one image's ciphertext.
#[derive(Encode, Decode, Clone, Debug)]
pub struct ImageFetch {
    /// Who sent it.
    pub from: String,
    /// The sender's id for it.
    pub id: MessageId,
    /// First ciphertext byte wanted (resuming).
    pub offset: u64,
}

/// The node's answer to a fetch, before the bytes.
#[derive(Encode, Decode, Clone, Debug)]
pub enum ImageFetchReply {
    /// The bytes from `offset` to the end follow, as they arrive at the node.
    Sending {
        /// Total ciphertext length.
        total_len: u64,
    },
    /// Refused.
    Refused(ProtoError),
}
