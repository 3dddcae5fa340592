//! Hard limits both ends check before allocating or storing anything.

/// Largest frame on a control stream (requests, replies, group re-keys for
/// up to [`MAX_GROUP_MEMBERS`] members).
pub const MAX_CONTROL_FRAME: usize = 256 * 1024;

/// Largest frame on a text or delivery stream (one message and its envelope).
pub const MAX_MESSAGE_FRAME: usize = 80 * 1024;

/// Largest text body, in bytes of UTF-8, a user may send.
pub const MAX_TEXT_BYTES: usize = 64 * 1024;

/// Longest user or group name.
pub const MAX_NAME_LEN: usize = 32;

/// Most messages a sender puts on one text stream.
pub const MAX_BATCH: usize = 1024;

/// Most bytes of frames on one text stream: a client closes a batch at
/// [`MAX_BATCH`] messages or this many bytes, whichever comes first, and a
/// node refuses a stream that carries more.
pub const MAX_BATCH_BYTES: usize = 4 << 20;

/// Most bytes of text frames a node holds for one connection at once,
/// across all its text streams (four full batches in flight).
pub const MAX_CONNECTION_TEXT_BYTES: usize = 4 * MAX_BATCH_BYTES;

/// Largest encoded public key accepted at registration (RSA-4096 SPKI fits).
pub const MAX_PUBLIC_KEY: usize = 1024;

/// Most members a group may have (bounds a re-key request's size).
pub const MAX_GROUP_MEMBERS: usize = 256;

/// Plaintext bytes per encrypted image chunk.
pub const IMAGE_CHUNK: usize = 64 * 1024;

/// AEAD tag bytes per chunk.
pub const IMAGE_TAG: usize = 16;

/// Default largest image a node accepts, in plaintext bytes.
pub const DEFAULT_MAX_IMAGE: u64 = 100 * 1024 * 1024;

/// Default bytes of not-yet-collected images one user may have stored on a node.
pub const DEFAULT_IMAGE_QUOTA: u64 = 1024 * 1024 * 1024;

/// Ciphertext length of an image of `plain` bytes: every chunk carries a
/// tag, and even an empty image has one (empty, final) chunk. `None` if it
/// does not fit in 64 bits (a size a peer made up).
pub fn image_ciphertext_len(plain: u64) -> Option<u64> {
    let chunks = plain.div_ceil(IMAGE_CHUNK as u64).max(1);
    plain.checked_add(chunks.checked_mul(IMAGE_TAG as u64)?)
}

/// Plaintext length for a ciphertext length, if it is a valid one.
pub fn image_plaintext_len(cipher: u64) -> Option<u64> {
    let full = (IMAGE_CHUNK + IMAGE_TAG) as u64;
    let chunks = cipher.div_ceil(full).max(1);
    let plain = cipher.checked_sub(chunks * IMAGE_TAG as u64)?;
    (image_ciphertext_len(plain) == Some(cipher)).then_some(plain)
}
