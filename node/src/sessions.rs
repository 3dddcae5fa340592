//! Who is online on this node: each logged-in session's inbox, by user.
//! Deliveries reach a session through here, from this node's commands and
//! from the bus (sessions of users whose texts were stored on another node).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::mpsc;

use crate::handoff::{Handoff, Handoffs, next_transient};

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

    /// Hands texts to every session of `user` here, each under a fresh
    /// transient position, if it takes hand-offs: it has a session, and
    /// none let a hand-off time out since its last ack. Returns the
    /// hand-offs to wait on, or the envelopes untouched when it does not.
    /// One look-up for the whole batch: a look-up to decide and another
    /// per text to push cost the node two hashes of the name per text.
    pub fn hand_off(
        &self,
        user: &str,
        envelopes: Vec<Arc<Vec<u8>>>,
    ) -> Result<Arc<Handoffs>, Vec<Arc<Vec<u8>>>> {
        if self
            .unresponsive
            .lock()
            .expect("sessions lock")
            .contains(user)
        {
            return Err(envelopes);
        }
        let by_user = self.by_user.lock().expect("sessions lock");
        let Some(list) = by_user.get(user) else {
            return Err(envelopes);
        };
        let batch = Handoffs::new(envelopes.len());
        for (i, envelope) in envelopes.into_iter().enumerate() {
            let live = Live {
                seq: next_transient(),
                envelope,
                handoff: Some(batch.ticket(i)),
            };
            for sink in list {
                let _ = sink.tx.send(live.clone());
            }
        }
        Ok(batch)
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
        let text = || vec![Arc::new(b"text".to_vec())];
        assert!(sessions.hand_off("bob", text()).is_err(), "offline");
        let (tx, mut rx) = mpsc::unbounded_channel();
        let id = sessions.attach("bob", tx);
        assert!(sessions.hand_off("bob", text()).is_ok());
        let live = rx.try_recv().expect("handed to the session");
        assert!(fastchat_proto::envelope::is_handed_off(live.seq));
        sessions.unresponsive("bob");
        assert_eq!(sessions.hand_off("bob", text()).err(), Some(text()));
        assert!(rx.try_recv().is_err(), "nothing pushed when refused");
        sessions.responsive("bob");
        assert!(sessions.hand_off("bob", text()).is_ok());
        sessions.detach("bob", id);
        assert!(sessions.hand_off("bob", text()).is_err());
    }
}
