//! The bus between nodes: live delivery to users connected elsewhere, and
//! image bytes held by another node. Everything durable goes through the
//! store first; the bus only carries what makes delivery fast, so a lost bus
//! message delays a delivery (until the next store poll) but loses nothing.
//!
//! Two implementations: [`LocalBus`] for a single node (nothing to route)
//! and [`NatsBus`] over a NATS server for a cluster.

mod local;
mod nats;
mod nats_server;

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::watch;

pub use local::LocalBus;
pub use nats::NatsBus;
pub use nats_server::NatsServer;

use crate::blobs::Blobs;
use crate::sessions::{Live, Sessions};

/// Why the bus could not do something.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The NATS server cannot be reached.
    #[error("cannot reach the NATS bus at {url}: {cause}; start nats-server or fix --bus")]
    Connect {
        /// The server address.
        url: String,
        /// The cause.
        cause: String,
    },
    /// A request over the bus failed.
    #[error("the bus request failed: {0}")]
    Request(String),
    /// The other node answered with an error.
    #[error("{0}")]
    Remote(String),
}

/// Routes live deliveries and blob bytes between nodes.
#[async_trait]
pub(crate) trait Bus: Send + Sync + 'static {
    /// Starts serving what other nodes send or ask this node for: their
    /// deliveries go to `sessions`, their blob requests to `blobs`.
    async fn start(&self, blobs: Arc<Blobs>, sessions: Arc<Sessions>) -> Result<(), BusError>;
    /// This node's id on the bus (the address it advertises).
    fn node_id(&self) -> &str;
    /// Starts receiving `user`'s deliveries from other nodes; returns once
    /// they will arrive, so a store read after it misses nothing.
    async fn join(&self, user: &str) -> Result<(), BusError>;
    /// Undoes one [`Bus::join`].
    fn leave(&self, user: &str);
    /// Sends a stored envelope to `user`'s sessions on other nodes.
    fn publish(&self, user: &str, live: &Live);
    /// Offers texts for `user` to its sessions on other nodes, handed off
    /// as on this node (`crate::handoff`), in order with what was published
    /// before. Resolves to which of them a session acknowledged, or `None`
    /// at once when no other node has a session of `user`.
    async fn hand_off(&self, user: &str, envelopes: Vec<Arc<Vec<u8>>>) -> Option<Vec<bool>>;
    /// Up to `max` bytes of blob `blob_id` from `offset`, read on node
    /// `owner`; empty when the upload has not got that far yet.
    async fn fetch_blob(
        &self,
        owner: &str,
        blob_id: u64,
        offset: u64,
        max: u32,
    ) -> Result<Vec<u8>, BusError>;
    /// Asks node `owner` to delete blob `blob_id` (every recipient has it).
    fn drop_blob(&self, owner: &str, blob_id: u64);
    /// Changes whenever the bus reconnected: pushes may have been lost
    /// meanwhile, so sessions re-read the store.
    fn reconnects(&self) -> watch::Receiver<u64>;
}
