//! State every connection of a node shares: the store, who is online, counters.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

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

/// Node-wide state.
pub(crate) struct Shared {
    pub store: Arc<dyn Store>,
    sessions: Mutex<HashMap<String, Vec<Sink>>>,
    next_session: AtomicU64,
    pub stats: Stats,
}

impl Shared {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            sessions: Mutex::new(HashMap::new()),
            next_session: AtomicU64::new(1),
            stats: Stats::default(),
        }
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

    /// Hands a just-stored envelope to every online session of `user`. An
    /// offline user gets it from the store at next login.
    pub fn push(&self, user: &str, live: Live) {
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
