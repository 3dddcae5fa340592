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

/// Largest encoded public key accepted at registration (RSA-4096 SPKI fits).
pub const MAX_PUBLIC_KEY: usize = 1024;

/// Most members a group may have (bounds a re-key request's size).
pub const MAX_GROUP_MEMBERS: usize = 256;
