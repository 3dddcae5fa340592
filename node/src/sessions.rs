//! Who is online on this node: each logged-in session's inbox, by user.
//! Deliveries reach a session through here, from this node's commands and
//! from the bus (sessions of users whose texts were stored on another node).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::mpsc;

use crate::handoff::Handoff;

/// An envelope on its way to an online session.
#[derive(Clone)]
pub(crate) struct Live {
    /// Queue position (0: a receipt, never stored; with
    /// [`fastchat_proto::envelope::HANDED_OFF`] set: a handed-off text).
    pub seq: u64,
    /// Encoded envelope, shared between sessions of the same user.
    pub envelope: Arc<Vec<u8>>,
    /// For a handed-off text, whom to tell when it is acknowledged.
    pub handoff: Option<Handoff>,
}

impl Live {
    /// A stored envelope at queue position `seq` (or a receipt, at 0).
    pub fn new(seq: u64, envelope: Arc<Vec<u8>>) -> Self {
        Self {
            seq,
            envelope,
            handoff: None,
        }
    }
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
    /// Users whose sessions let a hand-off time out and have not
    /// acknowledged anything since: their texts are stored instead, so a
    /// dead connection the node has not noticed yet stalls no sender.
    unresponsive: Mutex<HashSet<String>>,
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

    /// Whether texts for `user` may be handed to its sessions here: it has
    /// one, and none has let a hand-off time out since its last ack.
    pub fn takes_handoffs(&self, user: &str) -> bool {
        self.by_user
            .lock()
            .expect("sessions lock")
            .contains_key(user)
            && !self
                .unresponsive
                .lock()
                .expect("sessions lock")
                .contains(user)
    }

    /// A hand-off to `user` timed out.
    pub fn unresponsive(&self, user: &str) {
        self.unresponsive
            .lock()
            .expect("sessions lock")
            .insert(user.to_string());
    }

    /// A session of `user` acknowledged a delivery.
    pub fn responsive(&self, user: &str) {
        let mut set = self.unresponsive.lock().expect("sessions lock");
        if !set.is_empty() {
            set.remove(user);
        }
    }

    /// Users with at least one session.
    pub fn online_users(&self) -> usize {
        self.by_user.lock().expect("sessions lock").len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_whose_hand_off_timed_out_takes_none_until_it_acks() {
        let sessions = Sessions::default();
        assert!(!sessions.takes_handoffs("bob"), "offline");
        let (tx, _rx) = mpsc::unbounded_channel();
        let id = sessions.attach("bob", tx);
        assert!(sessions.takes_handoffs("bob"));
        sessions.unresponsive("bob");
        assert!(!sessions.takes_handoffs("bob"));
        sessions.responsive("bob");
        assert!(sessions.takes_handoffs("bob"));
        sessions.detach("bob", id);
        assert!(!sessions.takes_handoffs("bob"));
    }
}
