//! What each page of a queue the SQLite store's writer handed out weighs,
//! so the ack of a whole page need not read its rows again. An ack took
//! two passes over its range: one reading each row's size and shared
//! envelope (for the recipient's usage and the envelopes' counts), one
//! deleting; the first was 1.9k of the node's 14.0k instructions per
//! drained text. Kept by the writer thread alone, next to the reads that
//! fill it; bounded, and only ever a shortcut: an ack that does not name
//! exactly a page's positions, or whose delete finds fewer rows than the
//! page held (another ack took some), is weighed by reading as before.

use std::cell::RefCell;
use std::collections::HashMap;

/// Pages remembered per recipient; the oldest goes first. A session keeps
/// a few in flight.
const PAGES_PER_USER: usize = 8;
/// Recipients remembered at once; past it all is forgotten (the acks then
/// read their rows, as before), so pages of sessions that went away
/// without acknowledging cannot pile up.
const USERS: usize = 4096;

/// Rows of one recipient's queue, weighed: a page as it was read, or the
/// rows an ack names as they were found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct PageWeight {
    /// Their positions, ascending (a page's: all the recipient's rows in
    /// its range).
    pub seqs: Vec<u64>,
    /// Their envelopes' bytes, together.
    pub bytes: i64,
    /// The shared envelopes they point at, with how many rows each, in
    /// queue order.
    pub released: Vec<(i64, i64)>,
}

impl PageWeight {
    /// Adds a row at `seq`, of `len` bytes, pointing at `shared`.
    pub fn add(&mut self, seq: u64, len: usize, shared: Option<i64>) {
        self.seqs.push(seq);
        self.bytes += len as i64;
        if let Some(shared) = shared {
            match self.released.last_mut() {
                Some((id, n)) if *id == shared => *n += 1,
                _ => self.released.push((shared, 1)),
            }
        }
    }
}

thread_local! {
    static WEIGHTS: RefCell<HashMap<String, Vec<PageWeight>>> = RefCell::new(HashMap::new());
}

/// Remembers the page just read for `user` (ignored if empty).
pub(crate) fn remember(user: &str, page: PageWeight) {
    if page.seqs.is_empty() {
        return;
    }
    WEIGHTS.with(|w| {
        let mut w = w.borrow_mut();
        if w.len() >= USERS && !w.contains_key(user) {
            w.clear();
        }
        let pages = w.entry(user.to_string()).or_default();
        if pages.len() >= PAGES_PER_USER {
            pages.remove(0);
        }
        pages.push(page);
    });
}

/// Takes the page of `user` whose positions are exactly `seqs` (sorted,
/// without repeats), if one was remembered.
pub(crate) fn take(user: &str, seqs: &[u64]) -> Option<PageWeight> {
    WEIGHTS.with(|w| {
        let mut w = w.borrow_mut();
        let pages = w.get_mut(user)?;
        let at = pages.iter().position(|page| page.seqs == seqs)?;
        let page = pages.remove(at);
        if pages.is_empty() {
            w.remove(user);
        }
        Some(page)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_page_named_exactly_comes_back_once() {
        let mut page = PageWeight::default();
        page.add(3, 10, None);
        page.add(5, 20, Some(7));
        page.add(9, 30, Some(7));
        page.add(11, 40, Some(8));
        assert_eq!(page.bytes, 100);
        assert_eq!(page.released, [(7, 2), (8, 1)]);
        remember("bob", page.clone());
        assert_eq!(take("bob", &[3, 5, 9]), None, "part of it");
        assert_eq!(take("carol", &[3, 5, 9, 11]), None, "someone else's");
        assert_eq!(take("bob", &[3, 5, 9, 11]), Some(page));
        assert_eq!(take("bob", &[3, 5, 9, 11]), None, "taken once");
        for n in 0..PAGES_PER_USER as u64 + 1 {
            let mut p = PageWeight::default();
            p.add(n, 1, None);
            remember("dave", p);
        }
        assert_eq!(take("dave", &[0]), None, "the oldest went first");
        assert!(take("dave", &[PAGES_PER_USER as u64]).is_some());
    }
}
