//! Group membership as the admin signs it. The node stores and fans out
//! these updates but cannot forge one: members verify the admin's signature
//! over the update's encoding before using anything in it.

use bincode::{Decode, Encode};

/// One member and the Ed25519 key their group messages verify against.
#[derive(Encode, Decode, Clone, Debug, PartialEq, Eq)]
pub struct RosterEntry {
    /// The member's name.
    pub name: String,
    /// Their Ed25519 signing key, as certified to the admin by the friend handshake.
    pub signing_key: [u8; 32],
}

/// What moved the group to its new epoch.
#[derive(Encode, Decode, Clone, Debug, PartialEq, Eq)]
pub enum GroupChange {
    /// These members joined (one re-key for all of them).
    Added(Vec<String>),
    /// This member was removed.
    Removed(String),
}

/// A group at a new key epoch, as signed by its admin.
#[derive(Encode, Decode, Clone, Debug, PartialEq, Eq)]
pub struct GroupUpdate {
    /// The group's id (from the node at creation).
    pub group_id: u64,
    /// The group's name.
    pub group: String,
    /// The admin.
    pub admin: String,
    /// The new epoch.
    pub epoch: u64,
    /// What changed.
    pub change: GroupChange,
    /// Every member at the new epoch, the admin included.
    pub roster: Vec<RosterEntry>,
}

impl GroupUpdate {
    /// The bytes signatures cover (bincode is deterministic for these types).
    pub fn signed_bytes(&self) -> Vec<u8> {
        crate::frame::encode_body(self).expect("a group update always encodes")
    }
}

/// The new epoch key for one member.
#[derive(Encode, Decode, Clone, Debug)]
pub struct MemberKey {
    /// The member.
    pub member: String,
    /// The key wrapped for the member (RSA-OAEP-SHA256).
    pub wrapped_key: Vec<u8>,
    /// The admin's Ed25519 signature over `transcript::group_key`.
    pub signature: Vec<u8>,
}
