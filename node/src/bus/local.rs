//! The bus of a node that is alone: every session is local, every blob is
//! in its own directory.

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::watch;

use super::{Bus, BusError};
use crate::blobs::Blobs;
use crate::sessions::{Live, Sessions};

/// A bus with no other nodes on it.
pub struct LocalBus {
    node_id: String,
    reconnects: watch::Sender<u64>,
}

impl LocalBus {
    /// A bus for the node known as `node_id`.
    pub fn new(node_id: &str) -> Self {
        Self {
            node_id: node_id.to_string(),
            reconnects: watch::channel(0).0,
        }
    }
}

#[async_trait]
impl Bus for LocalBus {
    async fn start(&self, _blobs: Arc<Blobs>, _sessions: Arc<Sessions>) -> Result<(), BusError> {
        Ok(())
    }

    fn node_id(&self) -> &str {
        &self.node_id
    }

    async fn join(&self, _user: &str) -> Result<(), BusError> {
        Ok(())
    }

    fn leave(&self, _user: &str) {}

    fn publish(&self, _user: &str, _live: &Live) {}

    async fn hand_off(&self, _user: &str, _envelopes: Vec<Arc<Vec<u8>>>) -> Option<Vec<bool>> {
        None
    }

    async fn fetch_blob(
        &self,
        owner: &str,
        _blob_id: u64,
        _offset: u64,
        _max: u32,
    ) -> Result<Vec<u8>, BusError> {
        Err(BusError::Remote(format!(
            "the image is held by node {owner}, and this node has no bus to reach it (start it with --bus)"
        )))
    }

    fn drop_blob(&self, _owner: &str, _blob_id: u64) {}

    fn reconnects(&self) -> watch::Receiver<u64> {
        self.reconnects.subscribe()
    }
}
