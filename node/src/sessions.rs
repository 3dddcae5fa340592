//! Who is online on this node: each logged-in session's inbox, by user.
//! Deliveries reach a session through here, from this node's commands and
//! from the bus (sessions of users whose texts were stored on another node).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::mpsc;

/// An envelope on its way to an online session.
#[derive(Clone)]
pub(crate) struct Live {
    /// Queue position.
    pub seq: u64,
    /// Encoded envelope, shared between sessions of the same user.
    pub envelope: Arc<Vec<u8>>,
}

/// One logged-in session's inbox.
struct Sink {
    id: u64,
    tx: mpsc::UnboundedSender<Live>,
}

/// The online sessions of this node.
#[derive(Default)]
pub(crate) struct Sessions {
    by_user: Mutex<HashMap<String, Vec<Sink>>>,
    next_id: AtomicU64,
}

impl Sessions {
    /// Adds an online session for `user`; returns its id.
    pub fn attach(&self, user: &str, tx: mpsc::UnboundedSender<Live>) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let mut by_user = self.by_user.lock().expect("sessions lock");
        by_user
            .entry(user.to_string())
            .or_default()
            .push(Sink { id, tx });
        id
    }

    /// Removes a session added by [`Sessions::attach`].
    pub fn detach(&self, user: &str, id: u64) {
        let mut by_user = self.by_user.lock().expect("sessions lock");
        if let Some(list) = by_user.get_mut(user) {
            list.retain(|s| s.id != id);
            if list.is_empty() {
                by_user.remove(user);
            }
        }
    }

    /// Hands an envelope to every session of `user` on this node.
    pub fn push(&self, user: &str, live: Live) {
        let by_user = self.by_user.lock().expect("sessions lock");
        if let Some(list) = by_user.get(user) {
            for sink in list {
                let _ = sink.tx.send(live.clone());
            }
        }
    }

    /// Users with at least one session.
    pub fn online_users(&self) -> usize {
        self.by_user.lock().expect("sessions lock").len()
    }
}
