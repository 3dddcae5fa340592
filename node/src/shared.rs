//! State every connection of a node shares: the store, who is online, counters.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, watch};

use crate::bus::Bus;
use crate::store::Store;

/// An envelope on its way to an online session.
#[derive(Clone)]
pub(crate) struct Live {
    /// Queue position.
    pub seq: u64,
    /// Encoded envelope, shared between sessions of the same user.
    pub envelope: Arc<Vec<u8>>,
}

/// One logged-in session's inbox.
pub(crate) struct Sink {
    pub id: u64,
    pub tx: mpsc::UnboundedSender<Live>,
}

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
}

/// Node-wide state.
pub(crate) struct Shared {
    pub store: Arc<dyn Store>,
    /// The way to sessions and blobs on other nodes.
    pub bus: Arc<dyn Bus>,
    sessions: Mutex<HashMap<String, Vec<Sink>>>,
    next_session: AtomicU64,
    pub stats: Stats,
    /// Where image ciphertext is kept until every recipient has it.
    pub blob_dir: PathBuf,
    pub images: ImageLimits,
    /// Bytes written so far, per blob being uploaded, so fetches can
    /// follow an upload as it arrives (cut-through).
    blobs: Mutex<HashMap<u64, watch::Sender<u64>>>,
    /// Whether blob files are fsynced before an upload is acknowledged.
    pub fsync: bool,
    /// Friend requests per user.
    pub friend_requests: crate::limits::RateLimit,
    pub friend_requests_per_minute: u32,
}

impl Shared {
    pub fn new(
        store: Arc<dyn Store>,
        bus: Arc<dyn Bus>,
        blob_dir: PathBuf,
        images: ImageLimits,
        fsync: bool,
        friend_requests_per_minute: u32,
    ) -> Self {
        Self {
            store,
            bus,
            sessions: Mutex::new(HashMap::new()),
            next_session: AtomicU64::new(1),
            stats: Stats::default(),
            blob_dir,
            images,
            blobs: Mutex::new(HashMap::new()),
            fsync,
            friend_requests: crate::limits::RateLimit::new(
                friend_requests_per_minute,
                std::time::Duration::from_secs(60),
            ),
            friend_requests_per_minute,
        }
    }

    /// The file holding blob `id`.
    pub fn blob_path(&self, id: u64) -> PathBuf {
        self.blob_dir.join(id.to_string())
    }

    /// The progress channel of blob `id`, created at `have` bytes if new.
    pub fn blob_progress(&self, id: u64, have: u64) -> watch::Sender<u64> {
        let mut blobs = self.blobs.lock().expect("blobs lock");
        blobs
            .entry(id)
            .or_insert_with(|| watch::channel(have).0)
            .clone()
    }

    /// Forgets a blob's progress channel (the blob is gone).
    pub fn forget_blob(&self, id: u64) {
        self.blobs.lock().expect("blobs lock").remove(&id);
    }

    /// Adds an online session for `user`; returns its id.
    pub fn attach(&self, user: &str, tx: mpsc::UnboundedSender<Live>) -> u64 {
        let id = self.next_session.fetch_add(1, Ordering::Relaxed);
        let mut sessions = self.sessions.lock().expect("sessions lock");
        sessions
            .entry(user.to_string())
            .or_default()
            .push(Sink { id, tx });
        id
    }

    /// Removes a session added by [`Shared::attach`].
    pub fn detach(&self, user: &str, id: u64) {
        let mut sessions = self.sessions.lock().expect("sessions lock");
        if let Some(list) = sessions.get_mut(user) {
            list.retain(|s| s.id != id);
            if list.is_empty() {
                sessions.remove(user);
            }
        }
    }

    /// Hands a just-stored envelope to every online session of `user`, here
    /// and on other nodes. An offline user gets it from the store at next login.
    pub fn push(&self, user: &str, live: Live) {
        self.bus.publish(user, &live);
        self.push_local(user, live);
    }

    /// Hands an envelope to the sessions of `user` on this node only.
    pub fn push_local(&self, user: &str, live: Live) {
        let sessions = self.sessions.lock().expect("sessions lock");
        if let Some(list) = sessions.get(user) {
            for sink in list {
                let _ = sink.tx.send(live.clone());
            }
        }
    }

    /// Users with at least one session.
    pub fn online_users(&self) -> usize {
        self.sessions.lock().expect("sessions lock").len()
    }
}
