//! Error codes carried on the wire, each with a sentence for the user.

use bincode::{Decode, Encode};

/// Why a request or message was refused.
#[derive(Encode, Decode, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    /// The frame decoded but made no sense in this state.
    BadRequest,
    /// The peer speaks a protocol version this end does not.
    UnsupportedVersion,
    /// The name is already registered.
    NameTaken,
    /// No user has that name.
    UnknownUser,
    /// The request needs a logged-in session.
    NotLoggedIn,
    /// The login proof did not verify.
    AuthFailed,
    /// Sender and recipient are not friends.
    NotFriends,
    /// There is no pending friend request to accept.
    NoPendingRequest,
    /// The two users are already friends.
    AlreadyFriends,
    /// Something was larger than the limit allows.
    TooLarge,
    /// A stored-bytes quota would be exceeded.
    QuotaExceeded,
    /// Too many requests; slow down.
    RateLimited,
    /// The node could not store the data (disk full, read-only store, ...).
    StoreUnavailable,
    /// No group has that name or id.
    UnknownGroup,
    /// Only the group's admin may do that.
    NotAdmin,
    /// The sender is not a member of the group.
    NotMember,
    /// The group moved to a newer key epoch; sync and retry.
    StaleEpoch,
    /// No node is available right now.
    NoNodes,
    /// An unexpected server-side failure.
    Internal,
}

/// A refusal as it travels: a code for programs, a sentence for people.
#[derive(Encode, Decode, Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ProtoError {
    /// What kind of refusal this is.
    pub code: ErrorCode,
    /// One sentence saying what went wrong.
    pub message: String,
}

impl ProtoError {
    /// Builds a refusal with the given code and sentence.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// QUIC application close and stream reset codes.
pub mod close {
    /// Normal close.
    pub const OK: u32 = 0;
    /// The peer broke the protocol (malformed or oversized frame, wrong order).
    pub const PROTOCOL: u32 = 1;
    /// The server is shutting down.
    pub const SHUTDOWN: u32 = 2;
    /// The peer was too slow to send what it started.
    pub const TIMEOUT: u32 = 3;
}
