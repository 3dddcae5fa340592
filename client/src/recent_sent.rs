//! Where in the history the direct texts we sent lately and the node
//! stored are, by id: those are the texts a receipt comes back for (a
//! handed-off text is delivered when sent, a group text gets none). A
//! receipt names its texts by id; looking each up in the history's id
//! index cost a client 2.2k instructions per marked text, most of a
//! receipt's price, and receipts mostly come back while their texts are
//! still here. Only what the keystore committed may be here (it forgets
//! everything on a rollback), and history rows are never deleted, so a
//! position here is the text's for good; an id not here is looked up in
//! the index.

use std::collections::VecDeque;

/// Texts remembered; the oldest goes first. 7–10 MiB when full (the map
/// and the queue, with their spare capacity): a
/// backlog of more texts than this to one offline friend gets its oldest
/// receipts from the index.
const KEPT: usize = 1 << 17;

/// Sent texts' positions by id key (`fastchat_sqlite::id_key`).
#[derive(Default)]
pub(crate) struct RecentSent {
    /// Keyed by our own ids: foldhash, not SipHash (nothing to resist).
    by_id: foldhash::HashMap<(i64, i64), i64>,
    order: VecDeque<(i64, i64)>,
}

impl RecentSent {
    /// Notes that the text with id key `id` is at `pos`.
    pub fn note(&mut self, id: (i64, i64), pos: i64) {
        if self.by_id.insert(id, pos).is_none() {
            self.order.push_back(id);
            if self.order.len() > KEPT
                && let Some(oldest) = self.order.pop_front()
            {
                self.by_id.remove(&oldest);
            }
        }
    }

    /// Where the text with id key `id` is, if it is remembered.
    pub fn get(&self, id: (i64, i64)) -> Option<i64> {
        self.by_id.get(&id).copied()
    }

    /// Forgets everything (the transaction that wrote them was undone).
    pub fn clear(&mut self) {
        self.by_id.clear();
        self.order.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_goes_first_once_full() {
        let mut recent = RecentSent::default();
        for n in 0..KEPT as i64 + 2 {
            recent.note((n, -n), n + 100);
        }
        assert_eq!(recent.get((0, 0)), None);
        assert_eq!(recent.get((1, -1)), None);
        assert_eq!(recent.get((2, -2)), Some(102));
        assert_eq!(
            recent.get((KEPT as i64 + 1, -(KEPT as i64 + 1))),
            Some(KEPT as i64 + 101)
        );
        recent.note((2, -2), 7);
        assert_eq!(recent.get((2, -2)), Some(7), "noted again, not twice");
        assert_eq!(recent.order.len(), KEPT);
        recent.clear();
        assert_eq!(recent.get((2, -2)), None);
    }
}
