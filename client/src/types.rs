//! The SDK's public types: what the keystore holds and the screen shows,
//! where a message goes, and how transfers report.

use fastchat_crypto::ConversationKey;
use fastchat_proto::MessageId;
use fastchat_proto::group::RosterEntry;
use serde::Serialize;

/// How a peer relates to us.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PeerState {
    /// We asked them; waiting for their key.
    Requested,
    /// They asked us; `friend add` accepts.
    Incoming,
    /// Friends with a shared conversation key.
    Friend,
}

impl PeerState {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Requested => "requested",
            Self::Incoming => "incoming",
            Self::Friend => "friend",
        }
    }

    pub(crate) fn parse(s: &str) -> Self {
        match s {
            "friend" => Self::Friend,
            "incoming" => Self::Incoming,
            _ => Self::Requested,
        }
    }
}

/// A peer as the keystore knows them.
#[derive(Clone)]
pub struct Peer {
    /// Their name.
    pub name: String,
    /// Their RSA public key (SPKI DER), as first seen.
    pub public_key: Vec<u8>,
    /// Their Ed25519 signing key, once certified by the friend handshake.
    pub signing_key: Option<[u8; 32]>,
    /// Where the friendship stands.
    pub state: PeerState,
    /// The conversation key, once friends.
    pub key: Option<ConversationKey>,
}

/// What kind of entry an inbox item is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum InboxKind {
    /// A text message.
    Text,
    /// Someone asked to be friends.
    FriendRequest,
    /// Someone accepted our friend request.
    FriendAccepted,
    /// A member joined a group (possibly us).
    MemberAdded,
    /// A member was removed from a group.
    MemberRemoved,
    /// We were removed from a group.
    YouWereRemoved,
    /// An image, saved under the home's downloads.
    Image,
    /// A file, saved under the home's downloads.
    File,
}

impl InboxKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::FriendRequest => "friend_request",
            Self::FriendAccepted => "friend_accepted",
            Self::MemberAdded => "member_added",
            Self::MemberRemoved => "member_removed",
            Self::YouWereRemoved => "you_were_removed",
            Self::Image => "image",
            Self::File => "file",
        }
    }

    pub(crate) fn parse(s: &str) -> Self {
        match s {
            "friend_request" => Self::FriendRequest,
            "friend_accepted" => Self::FriendAccepted,
            "member_added" => Self::MemberAdded,
            "member_removed" => Self::MemberRemoved,
            "you_were_removed" => Self::YouWereRemoved,
            "image" => Self::Image,
            "file" => Self::File,
            _ => Self::Text,
        }
    }
}

/// Something received, decrypted and stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InboxItem {
    /// Unique id (the sender's message id for texts).
    pub id: [u8; 16],
    /// Who it is from.
    pub from: String,
    /// What it is.
    pub kind: InboxKind,
    /// The group it concerns, for group traffic.
    pub group: Option<String>,
    /// The member who joined or left, for membership changes.
    pub member: Option<String>,
    /// The saved file, for images and files.
    pub attachment: Option<Attachment>,
    /// The text, for texts; empty otherwise.
    pub text: String,
    /// When the sender sent it (ms since the Unix epoch).
    pub sent_at_ms: u64,
}

/// A received image or file, checked and saved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attachment {
    /// Where it was saved.
    pub path: String,
    /// Its size.
    pub bytes: u64,
    /// Its digest, named by its hash: `blake3:HEX` (`sha256:HEX` for a
    /// file sealed before protocol version 7).
    pub digest: String,
}

/// A group as this user knows it.
#[derive(Clone)]
pub struct GroupState {
    /// The node's id for it.
    pub id: u64,
    /// Its name.
    pub name: String,
    /// Its admin.
    pub admin: String,
    /// The newest epoch we know.
    pub epoch: u64,
    /// Whether we are still a member.
    pub member: bool,
    /// Members at that epoch (empty once removed).
    pub roster: Vec<RosterEntry>,
    /// The key at that epoch (none once removed).
    pub key: Option<ConversationKey>,
}

/// A conversation: a friend or a group.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Conversation {
    /// With one friend.
    Friend(String),
    /// In a group.
    Group(String),
}

/// One line of a conversation's history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryEntry {
    /// The message's id.
    pub id: [u8; 16],
    /// Who wrote it (the sender, or our name for ours).
    pub from: String,
    /// Whether we sent it.
    pub outgoing: bool,
    /// What it is.
    pub kind: InboxKind,
    /// The text (empty for events).
    pub text: String,
    /// The member concerned, for membership events.
    pub member: Option<String>,
    /// The saved file, for images and files.
    pub path: Option<String>,
    /// When it was sent (ms since the Unix epoch).
    pub sent_at_ms: u64,
    /// Where it stands: sent, delivered, or received.
    pub state: MessageState,
    /// Which conversation it belongs to.
    pub conversation: Conversation,
}

/// Where a sent or received message stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageState {
    /// Ours, stored by the node.
    Sent,
    /// Ours, stored by the friend's client (the node's ack of a handed-off
    /// text, or a best-effort receipt, said so).
    Delivered,
    /// Theirs, stored here.
    Received,
}

impl MessageState {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Sent => "sent",
            Self::Delivered => "delivered",
            Self::Received => "received",
        }
    }

    pub(crate) fn parse(s: &str) -> Self {
        match s {
            "delivered" => Self::Delivered,
            "received" => Self::Received,
            _ => Self::Sent,
        }
    }
}

impl std::fmt::Display for MessageState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where an attachment goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Recipient {
    /// A friend, by name.
    Friend(String),
    /// A group, by name.
    Group(String),
}

/// What `friend add` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FriendAdd {
    /// A request is on its way; they must add us back.
    RequestSent,
    /// They had asked us; we are now friends and they get the key.
    Accepted,
}

/// Which way a transfer goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// We send.
    Up,
    /// We receive.
    Down,
}

/// How far a transfer has come.
#[derive(Clone, Debug)]
pub struct Progress {
    /// The image's id.
    pub id: MessageId,
    /// Up or down.
    pub direction: Direction,
    /// The other side (friend or group name, or the sender).
    pub peer: String,
    /// The file's title.
    pub title: String,
    /// Plaintext bytes done.
    pub done: u64,
    /// Plaintext bytes in all.
    pub total: u64,
    /// Plaintext bytes that were already done when this attempt started.
    pub resumed_from: u64,
}

/// What an upload did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UploadReport {
    /// The image's id.
    pub id: MessageId,
    /// Plaintext size.
    pub bytes: u64,
    /// Ciphertext bytes the node already had when this attempt started.
    pub resumed_from: u64,
    /// Ciphertext bytes sent by this attempt.
    pub sent: u64,
}
