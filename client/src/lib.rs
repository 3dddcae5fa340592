//! The fastchat client SDK. A [`Client`] holds one QUIC connection to the
//! node the balancer picked, logs in with the user's RSA identity, and turns
//! every envelope the node delivers into a verified, decrypted entry in the
//! local keystore before acknowledging it, so nothing acknowledged is lost
//! and nothing is shown twice.

// The SDK's surface.
mod client;
mod display;
mod error;
mod types;

// Protocol rooms: the rules, both sides of each, with no I/O.
mod attachments;
mod friends;
mod groups;
mod room;
mod texts;

// The I/O around them.
mod connect;
mod control;
mod core;
mod download;
mod failover;
mod fault;
mod file_sink;
mod file_source;
mod ids;
pub mod keystore;
pub mod private;
mod receiver;
mod recent_sent;
mod sender;
mod sql_rows;
mod transfer;
mod upload;

pub use client::Client;
pub use connect::cluster_status;
pub use display::{is_format_control, shown};
pub use download::DOWNLOADS_DIR;
pub use error::ClientError;
pub use fastchat_proto::balancer::NodeReport;
pub use fastchat_proto::image::AttachmentKind;
pub use transfer::safe_file_name;
pub use types::{
    Attachment, Conversation, Direction, FriendAdd, GroupState, HistoryEntry, InboxItem, InboxKind,
    MessageState, Peer, PeerState, Progress, Recipient, UploadReport,
};

/// File name of the keystore inside a user's home directory.
pub const KEYSTORE_FILE: &str = "keystore.db";
