//! Group texts in the SQLite store: each stored once, in its group's log,
//! and each member's place in that log kept as a cursor: the position up to
//! which everything in it for them (all but their own texts) is
//! acknowledged. A member's queue is their own rows in `queue` and the
//! entries of their groups' logs past their cursors.
//!
//! A row per member per text, inserted at the send and deleted at the ack,
//! was 71% of the node's instructions per group delivery; now a send
//! writes one log entry and an ack moves one cursor per group it touches.
//!
//! An ack that names a later entry but not an earlier one (batches
//! acknowledged out of order, a text the client did not take) would leave
//! a hole below the cursor: the entries it skips are copied into the
//! member's own queue at their positions, so the cursor still moves and
//! nothing is lost. A member who leaves takes what still waits for them
//! the same way. An entry goes once every member's cursor has passed it.

use std::cell::RefCell;

use rusqlite::{Connection, OptionalExtension, params};

use super::NextSeq;

/// The log and the cursors; members from before the log start at its end.
pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS group_log(
    group_id INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    sender TEXT NOT NULL,
    envelope BLOB NOT NULL,
    msg_id BLOB NOT NULL,
    PRIMARY KEY(group_id, seq)
) WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS group_log_ids ON group_log(msg_id);
CREATE TABLE IF NOT EXISTS group_cursors(
    member TEXT NOT NULL,
    group_id INTEGER NOT NULL,
    acked INTEGER NOT NULL,
    PRIMARY KEY(member, group_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS group_cursors_by_group ON group_cursors(group_id, acked);
INSERT OR IGNORE INTO group_cursors(member, group_id, acked)
    SELECT m.member, m.group_id,
           COALESCE((SELECT MAX(l.seq) FROM group_log l WHERE l.group_id = m.group_id), 0)
    FROM group_members m;
";

thread_local! {
    /// Groups whose cursors moved in the writer's current group
    /// transaction: their logs are cleared behind the slowest member once,
    /// before the commit.
    static TOUCHED: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
}

/// The writer thread's handle on [`TOUCHED`].
pub(super) struct Touched;

impl Touched {
    /// Forgets what an earlier group left.
    pub fn begin() {
        TOUCHED.with(|t| t.borrow_mut().clear());
    }

    fn add(id: u64) {
        TOUCHED.with(|t| {
            let mut t = t.borrow_mut();
            if t.last() != Some(&id) {
                t.push(id);
            }
        });
    }

    /// Deletes the entries every member of a touched group has passed.
    /// A call rolled back may have touched a group needlessly: its check
    /// then finds nothing to delete.
    pub fn collect(tx: &Connection) -> rusqlite::Result<()> {
        let mut touched = TOUCHED.with(|t| std::mem::take(&mut *t.borrow_mut()));
        if touched.is_empty() {
            return Ok(());
        }
        touched.sort_unstable();
        touched.dedup();
        let mut slowest =
            tx.prepare_cached("SELECT MIN(acked) FROM group_cursors WHERE group_id = ?1")?;
        let mut behind =
            tx.prepare_cached("DELETE FROM group_log WHERE group_id = ?1 AND seq <= ?2")?;
        for id in touched {
            // No member left: nothing waits for anyone.
            let upto = slowest
                .query_row([id as i64], |r| r.get::<_, Option<i64>>(0))?
                .unwrap_or(i64::MAX);
            behind.execute(params![id as i64, upto])?;
        }
        Ok(())
    }
}

/// `member`'s cursors: (group, acknowledged up to).
fn cursors(tx: &Connection, member: &str) -> rusqlite::Result<Vec<(u64, u64)>> {
    tx.prepare_cached("SELECT group_id, acked FROM group_cursors WHERE member = ?1")?
        .query_map([member], |r| {
            Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64))
        })?
        .collect()
}

fn move_cursor(tx: &Connection, member: &str, id: u64, to: u64) -> rusqlite::Result<()> {
    tx.prepare_cached("UPDATE group_cursors SET acked = ?3 WHERE member = ?1 AND group_id = ?2")?
        .execute(params![member, id as i64, to as i64])?;
    Touched::add(id);
    Ok(())
}

/// Copies log entries of group `id` into `member`'s own queue, at their
/// positions: those past `after` (and up to `upto`) that are not theirs.
fn copy_to_queue(
    tx: &Connection,
    member: &str,
    id: u64,
    after: u64,
    upto: u64,
) -> rusqlite::Result<usize> {
    tx.prepare_cached(
        "INSERT OR IGNORE INTO queue(recipient, seq, envelope, shared)
         SELECT ?1, seq, envelope, NULL FROM group_log
         WHERE group_id = ?2 AND seq > ?3 AND seq <= ?4 AND sender != ?1",
    )?
    .execute(params![
        member,
        id as i64,
        after as i64,
        upto.min(i64::MAX as u64) as i64
    ])
}

/// `member` joins group `id`: their cursor starts at the log's end, so
/// they get the texts sent from now on.
pub(super) fn join(tx: &Connection, id: u64, member: &str) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT OR REPLACE INTO group_cursors(member, group_id, acked)
         VALUES (?1, ?2, COALESCE((SELECT MAX(seq) FROM group_log WHERE group_id = ?2), 0))",
    )?
    .execute(params![member, id as i64])?;
    Ok(())
}

/// `member` leaves group `id`: what still waits for them moves to their
/// own queue (they keep texts sent while they were a member).
pub(super) fn leave(tx: &Connection, id: u64, member: &str) -> rusqlite::Result<()> {
    let acked = cursors(tx, member)?
        .into_iter()
        .find(|&(g, _)| g == id)
        .map(|(_, acked)| acked);
    let Some(acked) = acked else {
        return Ok(());
    };
    let moved = copy_to_queue(tx, member, id, acked, u64::MAX)?;
    if moved > 0 {
        tracing::debug!(
            group = id,
            moved,
            "a leaving member's backlog moved to their queue"
        );
    }
    tx.prepare_cached("DELETE FROM group_cursors WHERE member = ?1 AND group_id = ?2")?
        .execute(params![member, id as i64])?;
    Touched::add(id);
    Ok(())
}

/// Appends a text from `from` to group `id`'s log; its position, or
/// `None` while a text with `msg_id` is still in the log (a resend).
pub(super) fn append(
    tx: &Connection,
    id: u64,
    from: &str,
    msg_id: &[u8],
    envelope: &[u8],
) -> rusqlite::Result<Option<u64>> {
    // A resend wastes the position it took; positions need only grow.
    let seq = NextSeq::take(tx)?;
    let new = tx
        .prepare_cached(
            "INSERT OR IGNORE INTO group_log(group_id, seq, sender, envelope, msg_id)
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )?
        .execute(params![id as i64, seq as i64, from, envelope, msg_id])?;
    Ok((new > 0).then_some(seq))
}

/// After `from` sent to group `id`: if nothing in its log waits for them,
/// their cursor moves past their own texts, so a member who only sends
/// does not hold the log's entries back.
pub(super) fn sent(tx: &Connection, id: u64, from: &str) -> rusqlite::Result<()> {
    let Some((_, acked)) = cursors(tx, from)?.into_iter().find(|&(g, _)| g == id) else {
        return Ok(());
    };
    let waiting = tx
        .prepare_cached(
            "SELECT EXISTS(SELECT 1 FROM group_log WHERE group_id = ?1 AND seq > ?2 AND sender != ?3)",
        )?
        .query_row(params![id as i64, acked as i64, from], |r| r.get::<_, bool>(0))?;
    if waiting {
        return Ok(());
    }
    let last = tx
        .prepare_cached("SELECT MAX(seq) FROM group_log WHERE group_id = ?1")?
        .query_row([id as i64], |r| r.get::<_, Option<i64>>(0))?;
    match last {
        Some(last) if last as u64 > acked => move_cursor(tx, from, id, last as u64),
        _ => Ok(()),
    }
}

/// Up to `limit` entries of `member`'s groups' logs past `after`, oldest
/// first.
pub(super) fn pending(
    tx: &Connection,
    member: &str,
    after: u64,
    limit: usize,
) -> rusqlite::Result<Vec<(u64, Vec<u8>)>> {
    let groups = cursors(tx, member)?;
    let mut stmt = tx.prepare_cached(
        "SELECT seq, envelope FROM group_log
         WHERE group_id = ?1 AND seq > ?2 AND seq < ?5 AND sender != ?3 ORDER BY seq LIMIT ?4",
    )?;
    let mut out: Vec<(u64, Vec<u8>)> = Vec::new();
    // Once a page is full, later groups read only what comes before its
    // last entry: a member of several busy groups reads a page, not one
    // per group.
    let mut before = i64::MAX;
    for &(id, acked) in &groups {
        let rows = stmt.query_map(
            params![
                id as i64,
                acked.max(after) as i64,
                member,
                limit as i64,
                before
            ],
            |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, Vec<u8>>(1)?)),
        )?;
        for row in rows {
            out.push(row?);
        }
        if groups.len() > 1 {
            out.sort_unstable_by_key(|&(seq, _)| seq);
            out.truncate(limit);
            if out.len() == limit
                && let Some(&(last, _)) = out.last()
            {
                before = last as i64;
            }
        }
    }
    Ok(out)
}

/// Acknowledges, for `member`, the log entries among `seqs` (ascending):
/// each group's cursor moves to the last of its entries named, entries
/// skipped on the way going to the member's own queue. Returns the texts
/// and bytes acknowledged, for the member's usage.
pub(super) fn ack(tx: &Connection, member: &str, seqs: &[u64]) -> rusqlite::Result<(i64, i64)> {
    let Some(&last) = seqs.last() else {
        return Ok((0, 0));
    };
    let mut acked = (0i64, 0i64);
    for (id, cursor) in cursors(tx, member)? {
        if cursor >= last {
            continue;
        }
        let entries = tx
            .prepare_cached(
                "SELECT seq, sender = ?3, LENGTH(envelope) FROM group_log
                 WHERE group_id = ?1 AND seq > ?2 AND seq <= ?4 ORDER BY seq",
            )?
            .query_map(
                params![id as i64, cursor as i64, member, last as i64],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)? as u64,
                        r.get::<_, bool>(1)?,
                        r.get::<_, i64>(2)?,
                    ))
                },
            )?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let named = |seq: &u64| seqs.binary_search(seq).is_ok();
        let Some(upto) = entries
            .iter()
            .rev()
            .find(|(seq, own, _)| !own && named(seq))
            .map(|&(seq, _, _)| seq)
        else {
            continue;
        };
        // An entry skipped (rare) waits on in the member's own queue.
        let mut skipped = 0;
        for &(seq, own, len) in entries.iter().take_while(|(seq, _, _)| *seq <= upto) {
            if own {
                continue;
            }
            if named(&seq) {
                acked.0 += 1;
                acked.1 += len;
            } else {
                skipped += copy_to_queue(tx, member, id, seq - 1, seq)?;
            }
        }
        if skipped > 0 {
            tracing::debug!(
                group = id,
                skipped,
                "an ack skipped log entries; they wait in the member's queue"
            );
        }
        move_cursor(tx, member, id, upto)?;
    }
    Ok(acked)
}

/// The newest position in `member`'s groups' logs that waits for them.
pub(super) fn last_pending(tx: &Connection, member: &str) -> rusqlite::Result<Option<u64>> {
    let mut newest = None;
    for (id, acked) in cursors(tx, member)? {
        let seq = tx
            .prepare_cached(
                "SELECT seq FROM group_log WHERE group_id = ?1 AND seq > ?2 AND sender != ?3
                 ORDER BY seq DESC LIMIT 1",
            )?
            .query_row(params![id as i64, acked as i64, member], |r| {
                r.get::<_, i64>(0)
            })
            .optional()?;
        newest = newest.max(seq.map(|s| s as u64));
    }
    Ok(newest)
}

/// Whether anything in `member`'s groups' logs waits for them at or
/// before `upto`.
pub(super) fn any_pending_upto(tx: &Connection, member: &str, upto: u64) -> rusqlite::Result<bool> {
    let mut probe = tx.prepare_cached(
        "SELECT EXISTS(SELECT 1 FROM group_log
         WHERE group_id = ?1 AND seq > ?2 AND seq <= ?4 AND sender != ?3)",
    )?;
    for (id, acked) in cursors(tx, member)? {
        let upto = upto.min(i64::MAX as u64) as i64;
        if probe.query_row(params![id as i64, acked as i64, member, upto], |r| {
            r.get::<_, bool>(0)
        })? {
            return Ok(true);
        }
    }
    Ok(false)
}
