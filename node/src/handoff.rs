//! Hand-off: a direct text whose recipient has a session on this node goes
//! to that session before anything is stored, and its sender is
//! acknowledged once the recipient acknowledges it, that is once it is
//! committed to the recipient's keystore. What is not acknowledged within
//! [`HANDOFF_WAIT`] (the session closed, or is slow) is stored as any other
//! text, then acknowledged. Either way the sender's ack means the text is
//! durable somewhere; a text delivered twice (handed off, then stored
//! because the ack came late) is stored once by the recipient, which keeps
//! received ids unique.
//!
//! Order holds because a handed-off text travels the same per-session
//! channel as everything stored for that recipient before it (a friend's
//! accept, which its key depends on, was pushed there at its commit).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fastchat_proto::envelope::HANDED_OFF;
use tokio::sync::Notify;

/// Longest a sender's batch waits for its recipients' acks before the
/// rest of it is stored instead.
pub(crate) const HANDOFF_WAIT: Duration = Duration::from_secs(2);

/// A fresh position for a handed-off text: [`HANDED_OFF`] set, so it
/// names no queue row (store positions never get there) and acking it
/// deletes nothing.
pub(crate) fn next_transient() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    HANDED_OFF | NEXT.fetch_add(1, Ordering::Relaxed)
}

/// The hand-offs of one text batch: which texts a recipient acknowledged,
/// and a wake-up for the sender's stream when all have been.
pub(crate) struct Handoffs {
    acked: Mutex<Vec<bool>>,
    left: AtomicUsize,
    all_acked: Notify,
}

/// One handed-off text of a batch, carried with it to the session.
#[derive(Clone)]
pub(crate) struct Handoff {
    batch: Arc<Handoffs>,
    index: usize,
}

impl Handoffs {
    /// Hand-offs for `n` texts, none acknowledged yet.
    pub fn new(n: usize) -> Arc<Self> {
        Arc::new(Self {
            acked: Mutex::new(vec![false; n]),
            left: AtomicUsize::new(n),
            all_acked: Notify::new(),
        })
    }

    /// The ticket for text `index` of the batch.
    pub fn ticket(self: &Arc<Self>, index: usize) -> Handoff {
        Handoff {
            batch: self.clone(),
            index,
        }
    }

    /// Waits until every text is acknowledged or `limit` passes; returns
    /// which were acknowledged.
    pub async fn wait(&self, limit: Duration) -> Vec<bool> {
        let all = self.all_acked.notified();
        if self.left.load(Ordering::Acquire) > 0 {
            let _ = tokio::time::timeout(limit, all).await;
        }
        self.acked.lock().expect("hand-off lock").clone()
    }
}

impl Handoff {
    /// A session of the recipient acknowledged the text (again, perhaps:
    /// only the first counts).
    pub fn acked(&self) {
        let first = {
            let mut acked = self.batch.acked.lock().expect("hand-off lock");
            !std::mem::replace(&mut acked[self.index], true)
        };
        if first && self.batch.left.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.batch.all_acked.notify_one();
        }
    }
}

/// Most friend pairs remembered; past it the memory starts over.
const KNOWN_FRIENDS: usize = 100_000;

/// Pairs of users known to be friends, so a hand-off checks a friendship
/// in the store once, not once per batch. Only friendships are remembered:
/// nothing undoes one (there is no unfriending), so an entry never goes
/// stale; were that to change, it must forget the pair too.
#[derive(Default)]
pub(crate) struct KnownFriends {
    inner: Mutex<Known>,
}

/// Per sender, the friends it was checked against (looked up by `&str`, so
/// a check on the hot path allocates nothing), and how many pairs in all.
#[derive(Default)]
struct Known {
    by_sender: HashMap<String, HashSet<String>>,
    pairs: usize,
}

impl KnownFriends {
    /// Whether `from` and `to` are known to be friends.
    pub fn contains(&self, from: &str, to: &str) -> bool {
        self.inner
            .lock()
            .expect("friends lock")
            .by_sender
            .get(from)
            .is_some_and(|friends| friends.contains(to))
    }

    /// Remembers that `from` and `to` are friends.
    pub fn insert(&self, from: &str, to: &str) {
        let mut known = self.inner.lock().expect("friends lock");
        if known.pairs >= KNOWN_FRIENDS {
            *known = Known::default();
        }
        if known
            .by_sender
            .entry(from.to_string())
            .or_default()
            .insert(to.to_string())
        {
            known.pairs += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_batch_waits_for_every_ack_or_the_limit() {
        let batch = Handoffs::new(3);
        let (a, b, c) = (batch.ticket(0), batch.ticket(1), batch.ticket(2));
        a.acked();
        a.acked(); // a second session's ack of the same text counts once
        c.acked();
        // One is missing: the wait ends at the limit and says which.
        assert_eq!(
            batch.wait(Duration::from_millis(20)).await,
            vec![true, false, true]
        );
        b.acked();
        // All acknowledged: no wait at all.
        assert_eq!(batch.wait(HANDOFF_WAIT * 100).await, vec![true; 3]);
        assert!(fastchat_proto::envelope::is_handed_off(next_transient()));
        let known = KnownFriends::default();
        known.insert("alice", "bob");
        assert!(known.contains("alice", "bob"));
        assert!(!known.contains("bob", "alice"), "remembered as asked");
        assert!(!fastchat_proto::envelope::is_handed_off(u64::MAX >> 1));
    }
}
