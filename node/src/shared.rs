//! State every connection of a node shares: the store, the blobs, who is
//! online, the bus, counters and limits.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64};

use tokio::sync::mpsc;

use crate::blobs::Blobs;
use crate::bus::Bus;
pub(crate) use crate::sessions::Live;
use crate::sessions::Sessions;
use crate::store::{QueueLimits, Store};

/// Counters the node reports to the balancer.
#[derive(Default)]
pub(crate) struct Stats {
    pub connections: AtomicU32,
    pub messages: AtomicU64,
}

/// Limits on images, from the node's configuration.
#[derive(Clone, Debug)]
pub(crate) struct ImageLimits {
    /// Largest image, in plaintext bytes.
    pub max_bytes: u64,
    /// Largest total of one user's uncollected uploads, in ciphertext bytes.
    pub quota: u64,
    /// How long a fetch waits for a stalled upload before it ends.
    pub stall: std::time::Duration,
}

/// Node-wide state.
pub(crate) struct Shared {
    pub store: Arc<dyn Store>,
    /// The way to sessions and blobs on other nodes.
    pub bus: Arc<dyn Bus>,
    /// The sessions online here.
    pub sessions: Arc<Sessions>,
    /// Image ciphertext kept until every recipient has it.
    pub blobs: Arc<Blobs>,
    pub stats: Stats,
    /// Friendships a hand-off already checked.
    pub known_friends: crate::handoff::KnownFriends,
    pub images: ImageLimits,
    /// How much may wait for one user.
    pub queue_limits: QueueLimits,
    /// Friend requests per user.
    pub friend_requests: crate::limits::RateLimit,
    pub friend_requests_per_minute: u32,
    /// Readers for text streams, kept with their buffers between streams.
    pub text_readers: fastchat_transport::ReaderPool,
}

impl Shared {
    pub fn new(
        store: Arc<dyn Store>,
        bus: Arc<dyn Bus>,
        (blob_dir, fsync): (PathBuf, bool),
        (images, queue_limits): (ImageLimits, QueueLimits),
        friend_requests_per_minute: u32,
    ) -> Self {
        Self {
            store,
            bus,
            sessions: Arc::new(Sessions::default()),
            blobs: Arc::new(Blobs::new(blob_dir, fsync)),
            stats: Stats::default(),
            known_friends: Default::default(),
            images,
            queue_limits,
            friend_requests: crate::limits::RateLimit::new(
                friend_requests_per_minute,
                std::time::Duration::from_secs(60),
            ),
            friend_requests_per_minute,
            text_readers: fastchat_transport::ReaderPool::new(
                fastchat_proto::limits::MAX_MESSAGE_FRAME,
            ),
        }
    }

    /// Adds an online session for `user`; returns its id.
    pub fn attach(&self, user: &str, tx: mpsc::UnboundedSender<Live>) -> u64 {
        self.sessions.attach(user, tx)
    }

    /// Removes a session added by [`Shared::attach`].
    pub fn detach(&self, user: &str, id: u64) {
        self.sessions.detach(user, id)
    }

    /// Hands a just-stored envelope to every online session of `user`, here
    /// and on other nodes. An offline user gets it from the store at next login.
    pub fn push(&self, user: &str, live: Live) {
        self.bus.publish(user, &live);
        self.sessions.push(user, live);
    }

    /// Users with at least one session.
    pub fn online_users(&self) -> usize {
        self.sessions.online_users()
    }

    /// Whether a blob held by `owner` is on this node.
    pub fn holds_blob(&self, owner: &str) -> bool {
        // Blobs stored before nodes had ids belong to the node that holds the store file.
        owner.is_empty() || owner == self.bus.node_id()
    }
}
