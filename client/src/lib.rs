//! The fastchat client SDK. A [`Client`] holds one QUIC connection to the
//! node the balancer picked, logs in with the user's RSA identity, and turns
//! every envelope the node delivers into a verified, decrypted entry in the
//! local keystore before acknowledging it, so nothing acknowledged is lost
//! and nothing is shown twice.

mod client;
mod connect;
mod control;
mod error;
mod inbox;
pub mod keystore;
mod outbox;

pub use client::{Client, FriendAdd};
pub use error::ClientError;
pub use keystore::{GroupState, InboxItem, InboxKind, Peer, PeerState};

/// File name of the keystore inside a user's home directory.
pub const KEYSTORE_FILE: &str = "keystore.db";
