//! The fastchat client SDK. A [`Client`] holds one QUIC connection to the
//! node the balancer picked, logs in with the user's RSA identity, and turns
//! every envelope the node delivers into a verified, decrypted entry in the
//! local keystore before acknowledging it, so nothing acknowledged is lost
//! and nothing is shown twice.

mod client;
mod connect;
mod control;
mod download;
mod error;
mod fault;
mod ids;
mod inbox;
pub mod keystore;
mod outbox;
mod transfer;
mod upload;

pub use client::{Client, FriendAdd, Recipient};
pub use connect::cluster_status;
pub use download::DOWNLOADS_DIR;
pub use error::ClientError;
pub use fastchat_proto::balancer::NodeReport;
pub use fastchat_proto::image::AttachmentKind;
pub use keystore::{
    Attachment, Conversation, GroupState, HistoryEntry, InboxItem, InboxKind, Peer, PeerState,
};
pub use transfer::{Direction, Progress, UploadReport, safe_file_name};

/// File name of the keystore inside a user's home directory.
pub const KEYSTORE_FILE: &str = "keystore.db";
