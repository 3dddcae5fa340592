//! The embedded store: one SQLite file in WAL mode. A single connection
//! owned by one thread, which runs the calls in arrival order; each call is
//! one transaction. (One long-lived thread rather than tokio's blocking
//! pool: under load the pool grew a thread per waiting call, each with its
//! own allocator arena, and the node's memory crept up with them.)

use std::path::Path;

use async_trait::async_trait;
use fastchat_proto::MessageId;
use fastchat_proto::control::Relation;
use fastchat_sqlite::Checkpointer;
use rusqlite::{Connection, OptionalExtension, params};

mod group_log;

use super::page_weights::{self, PageWeight};
use super::{
    BlobLocation, BlobStart, GroupRecord, Membership, QueueLimits, Queued, Queuing, Store,
    StoreError, Target, TextToQueue, UserKeys,
    policy::{self, Lookup},
};

/// How hard a commit tries to reach the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Durability {
    /// WAL with `synchronous=NORMAL`: survives the process being killed at any instant.
    #[default]
    Process,
    /// `synchronous=FULL`: an fsync per commit; also survives power loss.
    PowerLoss,
}

/// One call for the writer thread: it runs inside the group's transaction
/// (under a savepoint of its own) and is answered only after the commit.
trait Call: Send {
    /// Runs the call; `false` if it failed and its changes must be undone.
    fn run(&mut self, conn: &Connection) -> bool;
    /// Answers the caller once the group's fate is known.
    fn answer(self: Box<Self>, committed: Result<(), StoreError>);
}

/// A [`Call`] made of a closure and the channel its caller waits on.
struct Pending<F, R> {
    work: Option<F>,
    result: Option<Result<R, StoreError>>,
    done: Option<tokio::sync::oneshot::Sender<Result<R, StoreError>>>,
}

impl<F, R> Call for Pending<F, R>
where
    F: FnOnce(&Connection) -> Result<R, StoreError> + Send,
    R: Send,
{
    fn run(&mut self, conn: &Connection) -> bool {
        let Some(work) = self.work.take() else {
            return false;
        };
        // A call that panics fails alone (its caller sees the store as
        // unavailable); the rest of the group goes on.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(conn)))
            .unwrap_or_else(|_| {
                tracing::error!("a store call panicked");
                Err(StoreError::Unavailable("a store call failed".into()))
            });
        let ok = result.is_ok();
        self.result = Some(result);
        ok
    }

    fn answer(mut self: Box<Self>, committed: Result<(), StoreError>) {
        let result = match (self.result.take(), committed) {
            (Some(Ok(r)), Ok(())) => Ok(r),
            (Some(Err(e)), _) => Err(e),
            (Some(Ok(_)), Err(e)) | (None, Err(e)) => Err(e),
            (None, Ok(())) => Err(StoreError::Unavailable("a store call was not run".into())),
        };
        if let Some(done) = self.done.take() {
            let _ = done.send(result);
        }
    }
}

/// What the writer thread is asked to do.
enum Request {
    /// Run one call; `write` says whether it may change the database.
    Call { call: Box<dyn Call>, write: bool },
    /// Close the database and stop; the sender learns when the file is shut.
    Close(tokio::sync::oneshot::Sender<()>),
}

/// Most calls one group transaction takes, so one commit stays short.
const MAX_GROUP: usize = 1024;

/// The SQLite-backed [`Store`].
#[derive(Clone)]
pub struct SqliteStore {
    jobs: std::sync::mpsc::Sender<Request>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS users(
    name TEXT PRIMARY KEY,
    public_key BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    login_key BLOB
);
CREATE TABLE IF NOT EXISTS friend_requests(
    from_user TEXT NOT NULL,
    to_user TEXT NOT NULL,
    PRIMARY KEY(from_user, to_user)
);
CREATE TABLE IF NOT EXISTS friendships(
    a TEXT NOT NULL,
    b TEXT NOT NULL,
    PRIMARY KEY(a, b)
);
CREATE TABLE IF NOT EXISTS queue_seq(
    id INTEGER PRIMARY KEY CHECK (id = 0),
    next INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS groups(
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    admin TEXT NOT NULL,
    epoch INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS blobs(
    blob_id INTEGER PRIMARY KEY AUTOINCREMENT,
    sender TEXT NOT NULL,
    msg_id BLOB NOT NULL,
    total_len INTEGER NOT NULL,
    owner TEXT NOT NULL DEFAULT '',
    UNIQUE(sender, msg_id)
);
CREATE TABLE IF NOT EXISTS blob_recipients(
    blob_id INTEGER NOT NULL,
    recipient TEXT NOT NULL,
    PRIMARY KEY(blob_id, recipient)
);
CREATE TABLE IF NOT EXISTS group_members(
    group_id INTEGER NOT NULL,
    member TEXT NOT NULL,
    PRIMARY KEY(group_id, member)
);
";

fn unavailable(e: rusqlite::Error) -> StoreError {
    use rusqlite::ErrorCode as C;
    let why = match e.sqlite_error_code() {
        Some(C::DiskFull) => "its disk is full".to_string(),
        Some(C::ReadOnly) => "its database is read-only".to_string(),
        Some(C::CannotOpen) => "its database cannot be opened".to_string(),
        _ => e.to_string(),
    };
    StoreError::Unavailable(why)
}

fn blob_location(r: &rusqlite::Row<'_>) -> rusqlite::Result<BlobLocation> {
    Ok(BlobLocation {
        blob_id: r.get::<_, i64>(0)? as u64,
        total_len: r.get::<_, i64>(1)? as u64,
        owner: r.get(2)?,
    })
}

fn pair<'a>(a: &'a str, b: &'a str) -> (&'a str, &'a str) {
    if a <= b { (a, b) } else { (b, a) }
}

fn are_friends(tx: &Connection, a: &str, b: &str) -> rusqlite::Result<bool> {
    let (a, b) = pair(a, b);
    tx.prepare_cached("SELECT 1 FROM friendships WHERE a = ?1 AND b = ?2")?
        .query_row(params![a, b], |_| Ok(()))
        .optional()
        .map(|r| r.is_some())
}

fn has_request(tx: &Connection, from: &str, to: &str) -> rusqlite::Result<bool> {
    tx.prepare_cached("SELECT 1 FROM friend_requests WHERE from_user = ?1 AND to_user = ?2")?
        .query_row(params![from, to], |_| Ok(()))
        .optional()
        .map(|r| r.is_some())
}

fn user_exists(tx: &Connection, name: &str) -> rusqlite::Result<bool> {
    tx.prepare_cached("SELECT 1 FROM users WHERE name = ?1")?
        .query_row(params![name], |_| Ok(()))
        .optional()
        .map(|r| r.is_some())
}

/// The queue: rows clustered by (recipient, position), so a user's backlog
/// is one range, an ack deletes by key, and a direct text's insert and its
/// ack touch this one B-tree and nothing else. Positions
/// come from `queue_seq`, read once per group transaction (see
/// [`NextSeq`]).
///
/// Group texts live in their group's log (see [`group_log`]). Rows from
/// before it, a group text stored once in `shared_envelopes` and a row per
/// member pointing at it (`shared`; their own `envelope` empty), are still
/// delivered, and the last ack deletes the envelope.
const QUEUE_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS queue(
    recipient TEXT NOT NULL,
    seq INTEGER NOT NULL,
    envelope BLOB NOT NULL,
    shared INTEGER,
    PRIMARY KEY(recipient, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS shared_envelopes(
    id INTEGER PRIMARY KEY,
    envelope BLOB NOT NULL,
    refs INTEGER NOT NULL,
    msg_id BLOB
);
";

/// A group text's id, which catches its resend while any member still
/// waits for it (one entry per text, not per member). A direct text has
/// none: its resend after a lost ack is queued again, and the recipient,
/// whose keystore keeps received ids unique, stores it once, as it already
/// does for a handed-off text stored because its ack came late. The
/// per-recipient index that caught it here cost a B-tree insert at every
/// store and a seek and delete at every ack: without it, and without the
/// id columns it read, the node's instructions per drained text fell from
/// 11.3k to 8.2k. Made after the late columns, which it names; databases
/// from before drop the older indexes.
const QUEUE_INDEXES: &str = "
DROP INDEX IF EXISTS queue_ids;
DROP INDEX IF EXISTS queue_direct_ids;
DROP INDEX IF EXISTS queue_direct_id_pairs;
DROP INDEX IF EXISTS queue_direct_id_keys;
CREATE UNIQUE INDEX IF NOT EXISTS shared_ids ON shared_envelopes(msg_id);
";

/// Databases made with the first queue layout (a rowid table with
/// AUTOINCREMENT and a second index) move to the clustered one, and those
/// whose queue kept ids (as blobs or as integers) to rows without them,
/// keeping every row and position.
fn migrate_queue(conn: &mut Connection) -> rusqlite::Result<()> {
    let old: Option<String> = conn
        .query_row(
            "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'queue'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    // IMMEDIATE: nodes sharing the file may be writing; a deferred
    // transaction upgrading to a write would fail at once instead of waiting.
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    if old
        .as_deref()
        .is_some_and(|sql| sql.contains("AUTOINCREMENT"))
    {
        tx.execute_batch(
            "DROP INDEX IF EXISTS queue_by_recipient;
             ALTER TABLE queue RENAME TO queue_rowid;",
        )?;
        tx.execute_batch(QUEUE_SCHEMA)?;
        copy_queue(&tx, "queue_rowid")?;
        tx.execute_batch(
            "INSERT OR REPLACE INTO queue_seq(id, next) VALUES (0,
                 MAX(COALESCE((SELECT MAX(seq) FROM queue_rowid), 0),
                     COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'queue_rowid'), 0)) + 1);
             DROP TABLE queue_rowid;",
        )?;
    } else if old
        .as_deref()
        .is_some_and(|sql| sql.contains("msg_id") || sql.contains("id_hi"))
    {
        // Its indexes go with it.
        tx.execute_batch("ALTER TABLE queue RENAME TO queue_with_ids;")?;
        tx.execute_batch(QUEUE_SCHEMA)?;
        copy_queue(&tx, "queue_with_ids")?;
        tx.execute_batch("DROP TABLE queue_with_ids;")?;
    } else {
        tx.execute_batch(QUEUE_SCHEMA)?;
    }
    tx.execute(
        "INSERT OR IGNORE INTO queue_seq(id, next) VALUES (0, 1)",
        [],
    )?;
    // What each user's queue holds, kept with every insert and delete; a
    // database from before it counts its queue once.
    let counted: bool = tx.query_row(
        "SELECT COUNT(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'queue_usage'",
        [],
        |r| r.get(0),
    )?;
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS queue_usage(
             recipient TEXT PRIMARY KEY,
             texts INTEGER NOT NULL,
             bytes INTEGER NOT NULL
         ) WITHOUT ROWID;",
    )?;
    if !counted {
        tx.execute_batch(
            "INSERT INTO queue_usage(recipient, texts, bytes)
                 SELECT recipient, COUNT(*), SUM(LENGTH(envelope)) FROM queue GROUP BY recipient;",
        )?;
    }
    tx.commit()
}

/// Copies an older queue table's rows into `queue`, each at its position,
/// leaving their ids behind; a layout from before shared envelopes has no
/// `shared`.
fn copy_queue(tx: &Connection, from: &str) -> rusqlite::Result<()> {
    let shared: bool = tx
        .prepare(&format!(
            "SELECT 1 FROM pragma_table_info('{from}') WHERE name = 'shared'"
        ))?
        .exists([])?;
    let shared = if shared { "shared" } else { "NULL" };
    tx.execute(
        &format!(
            "INSERT INTO queue(recipient, seq, envelope, shared)
             SELECT recipient, seq, envelope, {shared} FROM {from}"
        ),
        [],
    )?;
    Ok(())
}

/// Deletes a recipient's queue rows from one position to another.
const DELETE_RANGE: &str = "DELETE FROM queue WHERE recipient = ?1 AND seq BETWEEN ?2 AND ?3";

/// Acknowledges a whole page as it was read ([`page_weights`]): one delete
/// over its range, weighed by what the read saw. No row can have joined
/// the range since (positions only grow), so the page is exact if the
/// delete removed as many rows as it held; if it removed fewer (another
/// ack took some, their weight already counted), it is undone and `false`
/// says the rows must be weighed by reading them.
fn ack_page(tx: &Connection, user: &str, page: &PageWeight) -> rusqlite::Result<bool> {
    let (Some(&first), Some(&last)) = (page.seqs.first(), page.seqs.last()) else {
        return Ok(false);
    };
    fastchat_sqlite::run_cached(tx, "SAVEPOINT page")?;
    let deleted =
        tx.prepare_cached(DELETE_RANGE)?
            .execute(params![user, first as i64, last as i64])?;
    if deleted != page.seqs.len() {
        fastchat_sqlite::run_cached(tx, "ROLLBACK TO page")?;
        fastchat_sqlite::run_cached(tx, "RELEASE page")?;
        return Ok(false);
    }
    fastchat_sqlite::run_cached(tx, "RELEASE page")?;
    add_usage(tx, user, -(deleted as i64), -page.bytes)?;
    Released::add(&page.released);
    Ok(true)
}

/// Adds `texts` and `bytes` (negative to remove) to what `to`'s queue holds.
fn add_usage(tx: &Connection, to: &str, texts: i64, bytes: i64) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO queue_usage(recipient, texts, bytes) VALUES (?1, MAX(?2, 0), MAX(?3, 0))
         ON CONFLICT(recipient) DO UPDATE SET
             texts = MAX(texts + excluded.texts + MIN(?2, 0), 0),
             bytes = MAX(bytes + excluded.bytes + MIN(?3, 0), 0)",
    )?
    .execute(params![to, texts, bytes])?;
    Ok(())
}

/// What `to`'s queue holds: (texts, bytes).
fn usage(tx: &Connection, to: &str) -> rusqlite::Result<(u64, u64)> {
    Ok(tx
        .prepare_cached("SELECT texts, bytes FROM queue_usage WHERE recipient = ?1")?
        .query_row(params![to], |r| {
            Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64))
        })
        .optional()?
        .unwrap_or((0, 0)))
}

thread_local! {
    /// The next queue position, while the writer thread's group transaction
    /// holds the write lock: read from `queue_seq` at its first use, handed
    /// out from memory, written back before the commit. One read and one
    /// write per group instead of a counter update per row; nodes sharing
    /// the file take turns on the write lock, so positions stay unique and
    /// grow in commit order.
    static NEXT_SEQ: std::cell::Cell<Option<u64>> = const { std::cell::Cell::new(None) };
}

/// The writer thread's handle on [`NEXT_SEQ`] for one group transaction.
struct NextSeq;

impl NextSeq {
    /// Forgets any position held from an earlier group.
    fn begin() {
        NEXT_SEQ.with(|n| n.set(None));
    }

    /// The next position, reading `queue_seq` if this group has not yet.
    fn take(tx: &Connection) -> rusqlite::Result<u64> {
        let next = match NEXT_SEQ.with(|n| n.get()) {
            Some(n) => n,
            None => tx
                .prepare_cached("SELECT next FROM queue_seq WHERE id = 0")?
                .query_row([], |r| r.get::<_, i64>(0))? as u64,
        };
        NEXT_SEQ.with(|n| n.set(Some(next + 1)));
        Ok(next)
    }

    /// Writes the next position back, if this group used any.
    fn save(tx: &Connection) -> rusqlite::Result<()> {
        if let Some(next) = NEXT_SEQ.with(|n| n.take()) {
            tx.prepare_cached("UPDATE queue_seq SET next = ?1 WHERE id = 0")?
                .execute([next as i64])?;
        }
        Ok(())
    }
}

fn enqueue(tx: &Connection, to: &str, envelope: &[u8]) -> rusqlite::Result<u64> {
    let seq = insert_row(tx, to, envelope)?;
    add_usage(tx, to, 1, envelope.len() as i64)?;
    Ok(seq)
}

/// Inserts one queue row holding `envelope`; the caller keeps
/// `queue_usage` (texts add theirs up per batch).
fn insert_row(tx: &Connection, to: &str, envelope: &[u8]) -> rusqlite::Result<u64> {
    let seq = NextSeq::take(tx)?;
    tx.prepare_cached("INSERT INTO queue(recipient, seq, envelope) VALUES (?1, ?2, ?3)")?
        .execute(params![to, seq as i64, envelope])?;
    Ok(seq)
}

thread_local! {
    /// Shared envelopes the acks of the writer's current group released,
    /// with how many rows each: counted down once per group, before its
    /// commit. A hundred members acknowledging the same group text in one
    /// group rewrote its row a hundred times (measured: 15% of the node's
    /// instructions per group delivery); now once.
    static RELEASED: std::cell::RefCell<Vec<(i64, i64)>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The writer thread's handle on [`RELEASED`] for one group transaction.
struct Released;

impl Released {
    /// Forgets what an earlier group left (it failed before its commit).
    fn begin() {
        RELEASED.with(|r| r.borrow_mut().clear());
    }

    /// How much is noted so far, to undo a call that is rolled back.
    fn mark() -> usize {
        RELEASED.with(|r| r.borrow().len())
    }

    /// Drops what was noted since `mark` (its call was rolled back).
    fn undo(mark: usize) {
        RELEASED.with(|r| r.borrow_mut().truncate(mark));
    }

    /// Notes rows released by an ack in this group.
    fn add(released: &[(i64, i64)]) {
        RELEASED.with(|r| r.borrow_mut().extend_from_slice(released));
    }

    /// Counts the group's releases down, one statement per envelope.
    fn apply(tx: &Connection) -> rusqlite::Result<()> {
        let mut released = RELEASED.with(|r| std::mem::take(&mut *r.borrow_mut()));
        released.sort_unstable_by_key(|&(id, _)| id);
        let mut merged: Vec<(i64, i64)> = Vec::with_capacity(released.len());
        for (id, n) in released {
            match merged.last_mut() {
                Some((last, total)) if *last == id => *total += n,
                _ => merged.push((id, n)),
            }
        }
        release_shared(tx, &merged)
    }
}

/// Drops `n` references to each shared envelope `id` (acked queue rows
/// that pointed at it), deleting those no row points at any more.
fn release_shared(tx: &Connection, released: &[(i64, i64)]) -> rusqlite::Result<()> {
    if released.is_empty() {
        return Ok(());
    }
    // The last release deletes; any other counts down. No RETURNING: it
    // builds a result table per statement (measured: three times the cost).
    let mut last =
        tx.prepare_cached("DELETE FROM shared_envelopes WHERE id = ?1 AND refs <= ?2")?;
    let mut count_down =
        tx.prepare_cached("UPDATE shared_envelopes SET refs = refs - ?2 WHERE id = ?1")?;
    for &(id, n) in released {
        if last.execute(params![id, n])? == 0 {
            count_down.execute(params![id, n])?;
        }
    }
    Ok(())
}

fn load_group(
    tx: &Connection,
    by: &str,
    key: &dyn rusqlite::ToSql,
) -> rusqlite::Result<Option<GroupRecord>> {
    let head = tx
        .query_row(
            &format!("SELECT id, name, admin, epoch FROM groups WHERE {by} = ?1"),
            [key],
            |r| {
                Ok((
                    r.get::<_, i64>(0)? as u64,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, i64>(3)? as u64,
                ))
            },
        )
        .optional()?;
    let Some((id, name, admin, epoch)) = head else {
        return Ok(None);
    };
    let members = group_members(tx, id)?;
    Ok(Some(GroupRecord {
        id,
        name,
        admin,
        epoch,
        members,
    }))
}

fn group_members(tx: &Connection, id: u64) -> rusqlite::Result<Vec<String>> {
    let mut stmt =
        tx.prepare_cached("SELECT member FROM group_members WHERE group_id = ?1 ORDER BY member")?;
    let rows = stmt.query_map([id as i64], |r| r.get(0))?;
    rows.collect()
}

fn group_epoch(tx: &Connection, id: u64) -> rusqlite::Result<Option<u64>> {
    tx.prepare_cached("SELECT epoch FROM groups WHERE id = ?1")?
        .query_row([id as i64], |r| r.get::<_, i64>(0))
        .optional()
        .map(|e| e.map(|e| e as u64))
}

/// Adds `column` to `table` in databases made before it existed.
fn add_column(conn: &Connection, table: &str, column: &str, decl: &str) -> rusqlite::Result<()> {
    let has: bool = conn
        .prepare(&format!(
            "SELECT 1 FROM pragma_table_info('{table}') WHERE name = '{column}'"
        ))?
        .exists([])?;
    if has {
        return Ok(());
    }
    match conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {decl}")) {
        // Another node sharing the file added it meanwhile.
        Err(e) if e.to_string().contains("duplicate column name") => Ok(()),
        done => done,
    }
}

/// Databases made before blobs had owners gain the column (owner '' is
/// whichever node opens it: the only one there was), and users made before
/// login keys log in with their RSA key until they bind one.
fn add_late_columns(conn: &Connection) -> rusqlite::Result<()> {
    add_column(conn, "blobs", "owner", "TEXT NOT NULL DEFAULT ''")?;
    add_column(conn, "users", "login_key", "BLOB")?;
    add_column(conn, "queue", "shared", "INTEGER")?;
    add_column(conn, "shared_envelopes", "msg_id", "BLOB")
}

/// Sets the connection up and makes or migrates the schema; every step may
/// run again after another node's.
fn prepare(conn: &mut Connection, sync: &str) -> rusqlite::Result<()> {
    // 16 KiB pages for a new database (one made with another size keeps
    // it: changing it takes a VACUUM outside WAL mode). An acknowledged
    // range of queue rows is deleted row by row, and each 4 KiB leaf
    // emptied below a third was rebalanced with its neighbours, over and
    // over along the range: 2.1k instructions per drained text in
    // `sqlite3BtreeDelete`, most of them rebalancing. With 16 KiB the
    // node's instructions per drained text fell by 15% (64 KiB: 18%,
    // for four times the bytes per small commit); a ring text, handed
    // off and never stored, costs the same.
    conn.execute_batch(&format!(
        "PRAGMA busy_timeout=5000; PRAGMA page_size=16384; PRAGMA journal_mode=WAL; PRAGMA synchronous={sync}; PRAGMA foreign_keys=ON;"
    ))?;
    conn.execute_batch(SCHEMA)?;
    migrate_queue(conn)?;
    add_late_columns(conn)?;
    conn.execute_batch(QUEUE_INDEXES)?;
    conn.execute_batch(group_log::SCHEMA)
}

/// Whether another connection's lock is what failed `e`.
fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path, durability: Durability) -> Result<Self, StoreError> {
        let conn = Connection::open(path).map_err(unavailable)?;
        // The writer runs some twenty distinct statements, more than
        // rusqlite's default cache of sixteen holds.
        conn.set_prepared_statement_cache_capacity(64);
        fastchat_sqlite::stable_plans(&conn).map_err(unavailable)?;
        let sync = match durability {
            Durability::Process => "NORMAL",
            Durability::PowerLoss => "FULL",
        };
        // Nodes sharing one file may open it at the same moment, and a
        // step of making or migrating it can then meet another's lock in a
        // way SQLite does not wait out (a write after a read whose snapshot
        // another node's commit made stale): one of three nodes started
        // together on a loaded machine exited with "database is locked".
        // Each step is idempotent, so the whole preparation is tried again.
        let mut conn = conn;
        let mut tries = 0;
        loop {
            match prepare(&mut conn, sync) {
                Ok(()) => break,
                Err(e) if is_busy(&e) && tries < 40 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(25 * tries.min(8)));
                }
                Err(e) => return Err(unavailable(e)),
            }
        }
        let checkpointer = Checkpointer::start(path, &mut conn)
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let (jobs, queue) = std::sync::mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("fastchat-store".into())
            .spawn(move || writer(conn, checkpointer, queue))
            .map_err(|e| StoreError::Unavailable(format!("cannot start the store thread: {e}")))?;
        Ok(Self { jobs })
    }

    /// Runs a call that may write, in the next group transaction.
    async fn with<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        self.call(f, true).await
    }

    /// Runs a call that only reads.
    async fn read<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        self.call(f, false).await
    }

    async fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<R, StoreError> + Send + 'static,
        write: bool,
    ) -> Result<R, StoreError> {
        let (done, result) = tokio::sync::oneshot::channel();
        let call = Box::new(Pending {
            work: Some(f),
            result: None,
            done: Some(done),
        });
        self.jobs
            .send(Request::Call { call, write })
            .map_err(|_| StoreError::Unavailable("the store thread has stopped".into()))?;
        result
            .await
            .map_err(|_| StoreError::Unavailable("the store thread has stopped".into()))?
    }
}

/// The writer thread: owns the connection, takes every call waiting, runs
/// them in one transaction (each under its own savepoint, so a refused call
/// undoes only itself) and answers them after the one commit. With a single
/// call waiting it commits at once: nothing waits on a timer. Ends on
/// `close` or when the last handle to the store is dropped.
fn writer(
    mut conn: Connection,
    checkpointer: Checkpointer,
    queue: std::sync::mpsc::Receiver<Request>,
) {
    let mut group: Vec<Box<dyn Call>> = Vec::new();
    let mut closing = None;
    while let Ok(first) = queue.recv() {
        let mut writes = false;
        let mut take = |request: Request, group: &mut Vec<Box<dyn Call>>| match request {
            Request::Call { call, write } => {
                writes |= write;
                group.push(call);
                None
            }
            Request::Close(closed) => Some(closed),
        };
        closing = take(first, &mut group);
        while closing.is_none() && group.len() < MAX_GROUP {
            match queue.try_recv() {
                Ok(request) => closing = take(request, &mut group),
                Err(_) => break,
            }
        }
        if !group.is_empty() {
            let committed = run_group(&mut conn, &mut group, writes);
            for call in group.drain(..) {
                call.answer(committed.clone());
            }
        }
        if closing.is_some() {
            break;
        }
    }
    // The file must be shut before `close` returns, so a stopped node
    // leaves nothing open on its disk: the writer's connection, then the
    // checkpointer's (which stops once the writer's hook is gone).
    drop(conn);
    checkpointer.join();
    if let Some(closed) = closing {
        let _ = closed.send(());
    }
}

/// Runs one of the writer's fixed statements (cached: parsed once).
fn exec(conn: &Connection, sql: &str) -> Result<(), StoreError> {
    fastchat_sqlite::run_cached(conn, sql).map_err(unavailable)
}

/// Runs `group` in one transaction; `Err` if it could not be committed.
fn run_group(
    conn: &mut Connection,
    group: &mut [Box<dyn Call>],
    writes: bool,
) -> Result<(), StoreError> {
    // IMMEDIATE takes the write lock up front, so nodes sharing the file
    // never deadlock upgrading a read lock.
    exec(conn, if writes { "BEGIN IMMEDIATE" } else { "BEGIN" })?;
    NextSeq::begin();
    Released::begin();
    group_log::Touched::begin();
    let result = (|| {
        for call in group.iter_mut() {
            exec(conn, "SAVEPOINT call")?;
            let mark = Released::mark();
            if !call.run(conn) {
                exec(conn, "ROLLBACK TO call")?;
                Released::undo(mark);
            }
            exec(conn, "RELEASE call")?;
        }
        NextSeq::save(conn).map_err(unavailable)?;
        Released::apply(conn).map_err(unavailable)?;
        group_log::Touched::collect(conn).map_err(unavailable)?;
        exec(conn, "COMMIT")
    })();
    if result.is_err() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    result
}

#[async_trait]
impl Store for SqliteStore {
    async fn create_user(
        &self,
        name: &str,
        public_key: &[u8],
        login_key: Option<[u8; 32]>,
    ) -> Result<(), StoreError> {
        let (name, key) = (name.to_string(), public_key.to_vec());
        let login = login_key.map(|k| k.to_vec());
        self.with(move |c| {
            let now = (fastchat_proto::now_ms() / 1000) as i64;
            let n = c
                .execute(
                    "INSERT OR IGNORE INTO users(name, public_key, created_at, login_key) VALUES (?1, ?2, ?3, ?4)",
                    params![name, key, now, login],
                )
                .map_err(unavailable)?;
            if n == 0 {
                return Err(StoreError::NameTaken);
            }
            Ok(())
        })
        .await
    }

    async fn public_key(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let name = name.to_string();
        self.read(move |c| {
            c.query_row(
                "SELECT public_key FROM users WHERE name = ?1",
                params![name],
                |r| r.get(0),
            )
            .optional()
            .map_err(unavailable)
        })
        .await
    }

    async fn user_keys(&self, name: &str) -> Result<Option<UserKeys>, StoreError> {
        let name = name.to_string();
        self.read(move |c| {
            c.prepare_cached("SELECT public_key, login_key FROM users WHERE name = ?1")
                .and_then(|mut s| {
                    s.query_row(params![name], |r| {
                        Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Option<Vec<u8>>>(1)?))
                    })
                    .optional()
                })
                .map_err(unavailable)
                .map(|row| {
                    row.map(|(public_key, login)| UserKeys {
                        public_key,
                        login_key: login.and_then(|k| k.try_into().ok()),
                    })
                })
        })
        .await
    }

    async fn set_login_key(&self, name: &str, login_key: [u8; 32]) -> Result<(), StoreError> {
        let name = name.to_string();
        self.with(move |c| {
            let n = c
                .execute(
                    "UPDATE users SET login_key = ?2 WHERE name = ?1",
                    params![name, &login_key[..]],
                )
                .map_err(unavailable)?;
            if n == 0 {
                return Err(StoreError::UnknownUser);
            }
            Ok(())
        })
        .await
    }

    async fn relation(&self, me: &str, other: &str) -> Result<Relation, StoreError> {
        let (me, other) = (me.to_string(), other.to_string());
        self.read(move |c| {
            let rel = if are_friends(c, &me, &other).map_err(unavailable)? {
                Relation::Friends
            } else if has_request(c, &other, &me).map_err(unavailable)? {
                Relation::RequestedByThem
            } else if has_request(c, &me, &other).map_err(unavailable)? {
                Relation::RequestedByMe
            } else {
                Relation::None
            };
            Ok(rel)
        })
        .await
    }

    async fn request_friend(
        &self,
        from: &str,
        to: &str,
        envelope: &[u8],
    ) -> Result<Option<u64>, StoreError> {
        let (from, to, envelope) = (from.to_string(), to.to_string(), envelope.to_vec());
        self.with(move |c| {
            let tx = c;
            let store_it = policy::friend_request(
                user_exists(tx, &to).map_err(unavailable)?,
                are_friends(tx, &from, &to).map_err(unavailable)?,
                has_request(tx, &from, &to).map_err(unavailable)?,
            )?;
            if !store_it {
                return Ok(None);
            }
            tx.execute(
                "INSERT INTO friend_requests(from_user, to_user) VALUES (?1, ?2)",
                params![from, to],
            )
            .map_err(unavailable)?;
            let seq = enqueue(tx, &to, &envelope).map_err(unavailable)?;
            Ok(Some(seq))
        })
        .await
    }

    async fn accept_friend(
        &self,
        accepter: &str,
        requester: &str,
        envelope: &[u8],
    ) -> Result<u64, StoreError> {
        let (accepter, requester, envelope) = (
            accepter.to_string(),
            requester.to_string(),
            envelope.to_vec(),
        );
        self.with(move |c| {
            let tx = c;
            policy::friend_accept(
                are_friends(tx, &accepter, &requester).map_err(unavailable)?,
                has_request(tx, &requester, &accepter).map_err(unavailable)?,
            )?;
            tx.execute(
                "DELETE FROM friend_requests WHERE (from_user = ?1 AND to_user = ?2) OR (from_user = ?2 AND to_user = ?1)",
                params![requester, accepter],
            )
            .map_err(unavailable)?;
            let (a, b) = pair(&accepter, &requester);
            tx.execute(
                "INSERT INTO friendships(a, b) VALUES (?1, ?2)",
                params![a, b],
            )
            .map_err(unavailable)?;
            let seq = enqueue(tx, &requester, &envelope).map_err(unavailable)?;
            Ok(seq)
        })
        .await
    }

    async fn create_group(&self, name: &str, admin: &str) -> Result<u64, StoreError> {
        let (name, admin) = (name.to_string(), admin.to_string());
        self.with(move |c| {
            let tx = c;
            let n = tx
                .execute(
                    "INSERT OR IGNORE INTO groups(name, admin, epoch) VALUES (?1, ?2, 0)",
                    params![name, admin],
                )
                .map_err(unavailable)?;
            if n == 0 {
                return Err(StoreError::NameTaken);
            }
            let id = tx.last_insert_rowid();
            tx.execute(
                "INSERT INTO group_members(group_id, member) VALUES (?1, ?2)",
                params![id, admin],
            )
            .map_err(unavailable)?;
            group_log::join(tx, id as u64, &admin).map_err(unavailable)?;
            Ok(id as u64)
        })
        .await
    }

    async fn group_by_name(&self, name: &str) -> Result<Option<GroupRecord>, StoreError> {
        let name = name.to_string();
        self.read(move |c| load_group(c, "name", &name).map_err(unavailable))
            .await
    }

    async fn group(&self, id: u64) -> Result<Option<GroupRecord>, StoreError> {
        self.read(move |c| load_group(c, "id", &(id as i64)).map_err(unavailable))
            .await
    }

    async fn rekey(
        &self,
        id: u64,
        epoch: u64,
        change: Membership,
        envelopes: Vec<(String, Vec<u8>)>,
    ) -> Result<Vec<(String, u64)>, StoreError> {
        self.with(move |c| {
            let tx = c;
            policy::rekey(group_epoch(tx, id).map_err(unavailable)?, epoch)?;
            tx.execute(
                "UPDATE groups SET epoch = ?2 WHERE id = ?1",
                params![id as i64, epoch as i64],
            )
            .map_err(unavailable)?;
            match &change {
                Membership::Add(members) => {
                    for m in members {
                        tx.execute(
                            "INSERT INTO group_members(group_id, member) VALUES (?1, ?2)",
                            params![id as i64, m],
                        )
                        .map_err(unavailable)?;
                        group_log::join(tx, id, m).map_err(unavailable)?;
                    }
                }
                Membership::Remove(m) => {
                    group_log::leave(tx, id, m).map_err(unavailable)?;
                    tx.execute(
                        "DELETE FROM group_members WHERE group_id = ?1 AND member = ?2",
                        params![id as i64, m],
                    )
                    .map_err(unavailable)?;
                }
            }
            let mut out = Vec::with_capacity(envelopes.len());
            for (to, envelope) in envelopes {
                let seq = enqueue(tx, &to, &envelope).map_err(unavailable)?;
                out.push((to, seq));
            }
            Ok(out)
        })
        .await
    }

    async fn enqueue_texts(
        &self,
        from: &str,
        texts: Vec<TextToQueue>,
        limits: QueueLimits,
    ) -> Result<Vec<Queuing>, StoreError> {
        let from = from.to_string();
        self.with(move |c| {
            let tx = c;
            let mut admission = policy::TextAdmission::new(&from);
            // Written back to queue_usage once, at the end of the batch.
            let mut room = policy::QueueRoom::new(limits);
            let mut out = Vec::with_capacity(texts.len());
            // Groups this batch appended to, for the sender's cursors.
            let mut sent_to: Vec<u64> = Vec::new();
            for text in &texts {
                match admission.needs(&text.to) {
                    Some(Lookup::Friendship(to)) => {
                        let f = are_friends(tx, &from, to).map_err(unavailable)?;
                        admission.knows_friendship(to, f);
                    }
                    Some(Lookup::Group(id)) => {
                        let now = match group_epoch(tx, id).map_err(unavailable)? {
                            Some(e) => Some((e, group_members(tx, id).map_err(unavailable)?)),
                            None => None,
                        };
                        admission.knows_group(id, now);
                    }
                    None => {}
                }
                let recipients = match admission.recipients(&text.to) {
                    Ok(r) => r,
                    Err(refusal) => {
                        out.push(Queuing::Refused(refusal));
                        continue;
                    }
                };
                let size = text.envelope.len() as u64;
                for to in room.unread(&recipients) {
                    let waiting = usage(tx, to).map_err(unavailable)?;
                    room.knows(to, waiting);
                }
                if let Err(refusal) = room.check(&recipients, size) {
                    out.push(Queuing::Refused(refusal));
                    continue;
                }
                let envelope = text.envelope.as_slice();
                let stored =
                    if let (Target::Group { id, .. }, true) = (&text.to, recipients.len() > 1) {
                        match group_log::append(tx, *id, &from, &text.id.0, envelope)
                            .map_err(unavailable)?
                        {
                            Some(seq) => {
                                if sent_to.last() != Some(id) {
                                    sent_to.push(*id);
                                }
                                recipients.into_iter().map(|to| (to, seq)).collect()
                            }
                            None => Vec::new(),
                        }
                    } else {
                        let mut stored = Vec::with_capacity(1);
                        for to in recipients {
                            let seq = insert_row(tx, &to, envelope).map_err(unavailable)?;
                            stored.push((to, seq));
                        }
                        stored
                    };
                for (to, _) in &stored {
                    room.stored(to, size);
                }
                out.push(Queuing::of(stored));
            }
            for (to, texts, bytes) in room.added() {
                add_usage(tx, &to, texts as i64, bytes as i64).map_err(unavailable)?;
            }
            sent_to.sort_unstable();
            sent_to.dedup();
            for id in sent_to {
                group_log::sent(tx, id, &from).map_err(unavailable)?;
            }
            Ok(out)
        })
        .await
    }

    async fn begin_blob(
        &self,
        sender: &str,
        id: MessageId,
        total_len: u64,
        recipients: Vec<String>,
        envelope: Vec<u8>,
        quota: u64,
        owner: &str,
    ) -> Result<BlobStart, StoreError> {
        let (sender, owner) = (sender.to_string(), owner.to_string());
        self.with(move |c| {
            let tx = c;
            let existing: Option<(i64, i64, String)> = tx
                .query_row(
                    "SELECT blob_id, total_len, owner FROM blobs WHERE sender = ?1 AND msg_id = ?2",
                    params![sender, &id.0[..]],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()
                .map_err(unavailable)?;
            if let Some((blob_id, len, was)) = existing {
                let previous_owner = policy::blob_moves(&was, &owner);
                if was != owner {
                    tx.execute(
                        "UPDATE blobs SET owner = ?1 WHERE blob_id = ?2",
                        params![owner, blob_id],
                    )
                    .map_err(unavailable)?;
                }
                return Ok(BlobStart {
                    blob_id: blob_id as u64,
                    total_len: len as u64,
                    queued: Vec::new(),
                    previous_owner,
                });
            }
            let used: i64 = tx
                .query_row(
                    "SELECT COALESCE(SUM(total_len), 0) FROM blobs WHERE sender = ?1",
                    params![sender],
                    |r| r.get(0),
                )
                .map_err(unavailable)?;
            policy::blob_quota(used as u64, total_len, quota)?;
            tx.execute(
                "INSERT INTO blobs(sender, msg_id, total_len, owner) VALUES (?1, ?2, ?3, ?4)",
                params![sender, &id.0[..], total_len as i64, owner],
            )
            .map_err(unavailable)?;
            let blob_id = tx.last_insert_rowid();
            let mut queued = Vec::with_capacity(recipients.len());
            for r in recipients {
                tx.execute(
                    "INSERT OR IGNORE INTO blob_recipients(blob_id, recipient) VALUES (?1, ?2)",
                    params![blob_id, r],
                )
                .map_err(unavailable)?;
                let seq = enqueue(tx, &r, &envelope).map_err(unavailable)?;
                queued.push((r, seq));
            }
            Ok(BlobStart {
                blob_id: blob_id as u64,
                total_len,
                queued,
                previous_owner: None,
            })
        })
        .await
    }

    async fn blob_for(
        &self,
        recipient: &str,
        sender: &str,
        id: MessageId,
    ) -> Result<Option<BlobLocation>, StoreError> {
        let (recipient, sender) = (recipient.to_string(), sender.to_string());
        self.read(move |c| {
            c.query_row(
                "SELECT b.blob_id, b.total_len, b.owner FROM blobs b JOIN blob_recipients r ON r.blob_id = b.blob_id
                 WHERE b.sender = ?1 AND b.msg_id = ?2 AND r.recipient = ?3",
                params![sender, &id.0[..], recipient],
                blob_location,
            )
            .optional()
            .map_err(unavailable)
        })
        .await
    }

    async fn blob_received(
        &self,
        recipient: &str,
        sender: &str,
        id: MessageId,
    ) -> Result<Option<BlobLocation>, StoreError> {
        let (recipient, sender) = (recipient.to_string(), sender.to_string());
        self.with(move |c| {
            let tx = c;
            let blob: Option<BlobLocation> = tx
                .query_row(
                    "SELECT blob_id, total_len, owner FROM blobs WHERE sender = ?1 AND msg_id = ?2",
                    params![sender, &id.0[..]],
                    blob_location,
                )
                .optional()
                .map_err(unavailable)?;
            let Some(blob) = blob else {
                return Ok(None);
            };
            let blob_id = blob.blob_id as i64;
            tx.execute(
                "DELETE FROM blob_recipients WHERE blob_id = ?1 AND recipient = ?2",
                params![blob_id, recipient],
            )
            .map_err(unavailable)?;
            let left: i64 = tx
                .query_row(
                    "SELECT COUNT(*) FROM blob_recipients WHERE blob_id = ?1",
                    params![blob_id],
                    |r| r.get(0),
                )
                .map_err(unavailable)?;
            let gone = if left == 0 {
                tx.execute("DELETE FROM blobs WHERE blob_id = ?1", params![blob_id])
                    .map_err(unavailable)?;
                Some(blob)
            } else {
                None
            };
            Ok(gone)
        })
        .await
    }

    async fn pending(
        &self,
        user: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Queued>, StoreError> {
        let user = user.to_string();
        self.read(move |c| {
            let mut stmt = c
                .prepare_cached(
                    "SELECT q.seq, COALESCE(s.envelope, q.envelope), q.shared FROM queue q
                     LEFT JOIN shared_envelopes s ON s.id = q.shared
                     WHERE q.recipient = ?1 AND q.seq > ?2 ORDER BY q.seq LIMIT ?3",
                )
                .map_err(unavailable)?;
            let mut weight = PageWeight::default();
            let rows = stmt
                .query_map(params![user, after as i64, limit as i64], |r| {
                    let (seq, envelope) = (r.get::<_, i64>(0)? as u64, r.get::<_, Vec<u8>>(1)?);
                    weight.add(seq, envelope.len(), r.get(2)?);
                    Ok((seq, envelope))
                })
                .map_err(unavailable)?;
            let mut page = rows.collect::<Result<Vec<_>, _>>().map_err(unavailable)?;
            let logged = group_log::pending(c, &user, after, limit).map_err(unavailable)?;
            if logged.is_empty() {
                page_weights::remember(&user, weight);
                return Ok(page);
            }
            // The page's own rows and its groups' log entries, in queue
            // order. Its weight is not remembered: an ack of it is
            // weighed by reading, log entries and all.
            page.extend(logged);
            page.sort_unstable_by_key(|&(seq, _)| seq);
            page.truncate(limit);
            Ok(page)
        })
        .await
    }

    async fn ack(&self, user: &str, seqs: &[u64]) -> Result<(), StoreError> {
        let (user, seqs) = (user.to_string(), seqs.to_vec());
        self.with(move |c| {
            let tx = c;
            let mut seqs = seqs;
            seqs.sort_unstable();
            seqs.dedup();
            let (Some(&first), Some(&last)) = (seqs.first(), seqs.last()) else {
                return Ok(());
            };
            if let Some(page) = page_weights::take(&user, &seqs)
                && ack_page(tx, &user, &page).map_err(unavailable)?
            {
                return Ok(());
            }
            // What the acked rows weigh, read in one pass over their range
            // (a blob's length comes from its row header); RETURNING on
            // each delete would materialise a result table per row.
            let mut acked = PageWeight::default();
            let mut in_range = 0usize;
            {
                let mut sizes = tx
                    .prepare_cached(
                        "SELECT q.seq, COALESCE(LENGTH(s.envelope), LENGTH(q.envelope)), q.shared FROM queue q
                         LEFT JOIN shared_envelopes s ON s.id = q.shared
                         WHERE q.recipient = ?1 AND q.seq BETWEEN ?2 AND ?3",
                    )
                    .map_err(unavailable)?;
                let mut rows = sizes
                    .query(params![user, first as i64, last as i64])
                    .map_err(unavailable)?;
                while let Some(row) = rows.next().map_err(unavailable)? {
                    in_range += 1;
                    let seq = row.get::<_, i64>(0).map_err(unavailable)? as u64;
                    if seqs.binary_search(&seq).is_ok() {
                        let len = row.get::<_, i64>(1).map_err(unavailable)?;
                        let shared = row.get::<_, Option<i64>>(2).map_err(unavailable)?;
                        acked.add(seq, len as usize, shared);
                    }
                }
            }
            let texts = acked.seqs.len() as i64;
            if in_range == acked.seqs.len() {
                // Every row in the range was acked (the usual case: a batch
                // is a run of the queue): one statement deletes them all.
                tx.prepare_cached(DELETE_RANGE)
                    .and_then(|mut stmt| stmt.execute(params![user, first as i64, last as i64]))
                    .map_err(unavailable)?;
            } else {
                let mut stmt = tx
                    .prepare_cached("DELETE FROM queue WHERE recipient = ?1 AND seq = ?2")
                    .map_err(unavailable)?;
                for &seq in &seqs {
                    stmt.execute(params![user, seq as i64])
                        .map_err(unavailable)?;
                }
            }
            // Positions not in the queue are group log entries (or gone).
            let logged: Vec<u64> = seqs
                .iter()
                .copied()
                .filter(|s| acked.seqs.binary_search(s).is_err())
                .collect();
            let (log_texts, log_bytes) =
                group_log::ack(tx, &user, &logged).map_err(unavailable)?;
            if texts + log_texts > 0 {
                add_usage(tx, &user, -(texts + log_texts), -(acked.bytes + log_bytes))
                    .map_err(unavailable)?;
            }
            Released::add(&acked.released);
            Ok(())
        })
        .await
    }

    async fn queue_depth(&self) -> Result<u64, StoreError> {
        self.read(|c| {
            // Kept with every insert and delete; a count would read each
            // member's view of each group's log.
            c.query_row("SELECT COALESCE(SUM(texts), 0) FROM queue_usage", [], |r| {
                r.get::<_, i64>(0)
            })
            .map(|n| n.max(0) as u64)
            .map_err(unavailable)
        })
        .await
    }

    async fn last_pending(&self, user: &str) -> Result<Option<u64>, StoreError> {
        let user = user.to_string();
        self.read(move |c| {
            let own = c
                .query_row(
                    "SELECT MAX(seq) FROM queue WHERE recipient = ?1",
                    params![user],
                    |r| r.get::<_, Option<i64>>(0),
                )
                .map(|v| v.map(|s| s as u64))
                .map_err(unavailable)?;
            let logged = group_log::last_pending(c, &user).map_err(unavailable)?;
            Ok(own.max(logged))
        })
        .await
    }

    async fn any_pending_upto(&self, user: &str, upto: u64) -> Result<bool, StoreError> {
        let user = user.to_string();
        self.read(move |c| {
            let own = c
                .query_row(
                    "SELECT EXISTS(SELECT 1 FROM queue WHERE recipient = ?1 AND seq <= ?2)",
                    params![user, upto.min(i64::MAX as u64) as i64],
                    |r| r.get::<_, bool>(0),
                )
                .map_err(unavailable)?;
            Ok(own || group_log::any_pending_upto(c, &user, upto).map_err(unavailable)?)
        })
        .await
    }

    async fn queued_for(&self, user: &str) -> Result<u64, StoreError> {
        let user = user.to_string();
        self.read(move |c| {
            c.query_row(
                "SELECT texts FROM queue_usage WHERE recipient = ?1",
                params![user],
                |r| r.get::<_, i64>(0),
            )
            .optional()
            .map(|n| n.unwrap_or(0).max(0) as u64)
            .map_err(unavailable)
        })
        .await
    }

    async fn close(&self) {
        // Calls already queued run first; the thread then drops the connection.
        let (closed, shut) = tokio::sync::oneshot::channel();
        if self.jobs.send(Request::Close(closed)).is_ok() {
            let _ = shut.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::conformance;
    use super::*;

    fn store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("node.db"), Durability::Process).unwrap();
        (dir, s)
    }

    #[test]
    fn a_node_opening_a_file_another_is_making_waits_for_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.db");
        // Another node, mid-way through making the file.
        let other = Connection::open(&path).unwrap();
        other
            .execute_batch("BEGIN EXCLUSIVE; CREATE TABLE early(x);")
            .unwrap();
        let release = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(300));
            other.execute_batch("COMMIT;").unwrap();
        });
        let opened = SqliteStore::open(&path, Durability::Process);
        release.join().unwrap();
        assert!(opened.is_ok(), "{:?}", opened.err());
    }

    /// An ack of exactly a page as it was read is weighed by that read; one
    /// that finds some of the page gone (acked before) is weighed by its
    /// rows. Either way the recipient's usage ends exact.
    #[tokio::test]
    async fn acks_of_whole_pages_keep_the_usage_exact() {
        let (dir, s) = store();
        for user in ["alice", "bob"] {
            s.create_user(user, b"k", None).await.unwrap();
        }
        s.request_friend("alice", "bob", b"req").await.unwrap();
        s.accept_friend("bob", "alice", b"acc").await.unwrap();
        let usage = || {
            Connection::open(dir.path().join("node.db"))
                .unwrap()
                .query_row(
                    "SELECT texts, bytes FROM queue_usage WHERE recipient = 'bob'",
                    [],
                    |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)),
                )
                .unwrap()
        };
        let to = || crate::store::Target::Direct("bob".into());
        let six = |first: u8| -> Vec<TextToQueue> {
            (1..=6)
                .map(|n| conformance::text(to(), first + n, &vec![n; usize::from(n) * 10]))
                .collect()
        };
        for round in 0..2u8 {
            let before = usage();
            s.enqueue_texts("alice", six(20 * round), QueueLimits::default())
                .await
                .unwrap();
            assert_eq!(usage(), (before.0 + 6, before.1 + 210));
            let page = s.pending("bob", 0, 100).await.unwrap();
            let seqs: Vec<u64> = page.iter().map(|(seq, _)| *seq).collect();
            // Six more, past the page, stay queued through its acks.
            s.enqueue_texts("alice", six(20 * round + 10), QueueLimits::default())
                .await
                .unwrap();
            if round == 1 {
                // Two of the page's rows acked on their own first.
                s.ack("bob", &seqs[..2]).await.unwrap();
                assert_eq!(usage(), (10, 390));
            }
            s.ack("bob", &seqs).await.unwrap();
            assert_eq!(usage(), (6, 210), "round {round}");
            let rest = conformance::positions(&s, "bob", 100).await;
            assert_eq!(rest.len(), 6);
            s.ack("bob", &rest).await.unwrap();
            assert_eq!(usage(), (0, 0), "round {round}");
        }
    }

    #[tokio::test]
    async fn close_shuts_the_file_and_later_calls_fail() {
        let (dir, s) = store();
        s.create_user("alice", b"key", None).await.unwrap();
        assert!(dir.path().join("node.db-wal").exists());
        s.close().await;
        // SQLite removes the WAL when its last connection closes cleanly.
        assert!(!dir.path().join("node.db-wal").exists());
        assert!(matches!(
            s.public_key("alice").await,
            Err(StoreError::Unavailable(_))
        ));
        let again = SqliteStore::open(&dir.path().join("node.db"), Durability::Process).unwrap();
        assert_eq!(again.public_key("alice").await.unwrap().unwrap(), b"key");
    }

    /// A new database gets 16 KiB pages; one made with SQLite's 4 KiB keeps
    /// them and works as before.
    #[tokio::test]
    async fn a_new_database_gets_large_pages_and_an_older_one_keeps_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let page_size = |path: &std::path::Path| -> i64 {
            Connection::open(path)
                .unwrap()
                .query_row("PRAGMA page_size", [], |r| r.get(0))
                .unwrap()
        };
        let new = dir.path().join("new.db");
        SqliteStore::open(&new, Durability::Process)
            .unwrap()
            .close()
            .await;
        assert_eq!(page_size(&new), 16384);
        let older = dir.path().join("older.db");
        Connection::open(&older)
            .unwrap()
            .execute_batch("CREATE TABLE t(x); DROP TABLE t;")
            .unwrap();
        let s = SqliteStore::open(&older, Durability::Process).unwrap();
        s.create_user("alice", b"key", None).await.unwrap();
        assert_eq!(s.public_key("alice").await.unwrap().unwrap(), b"key");
        s.close().await;
        assert_eq!(page_size(&older), 4096);
    }

    #[tokio::test]
    async fn a_database_with_the_first_queue_layout_keeps_its_rows_and_positions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.db");
        {
            let c = Connection::open(&path).unwrap();
            c.execute_batch(
                "CREATE TABLE queue(
                     seq INTEGER PRIMARY KEY AUTOINCREMENT,
                     recipient TEXT NOT NULL, msg_id BLOB NOT NULL, envelope BLOB NOT NULL,
                     UNIQUE(recipient, msg_id));
                 CREATE INDEX queue_by_recipient ON queue(recipient, seq);
                 INSERT INTO queue(recipient, msg_id, envelope) VALUES ('bob', x'01', x'aa');
                 INSERT INTO queue(recipient, msg_id, envelope) VALUES ('bob', x'02', x'bb');
                 INSERT INTO queue(recipient, msg_id, envelope) VALUES ('eve', x'03', x'cc');
                 DELETE FROM queue WHERE recipient = 'eve';",
            )
            .unwrap();
        }
        let s = SqliteStore::open(&path, Durability::Process).unwrap();
        let bob = s.pending("bob", 0, 10).await.unwrap();
        assert_eq!(bob, vec![(1, vec![0xaa]), (2, vec![0xbb])]);
        // New positions continue after the highest ever handed out (3, deleted).
        s.create_user("alice", b"k", None).await.unwrap();
        s.create_user("bob", b"k", None).await.unwrap();
        let seq = s
            .request_friend("alice", "bob", b"req")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(seq, 4);
        assert_eq!(s.queued_for("bob").await.unwrap(), 3);
        drop(s);
        // Opening again leaves the new layout as it is.
        let again = SqliteStore::open(&path, Durability::Process).unwrap();
        assert_eq!(again.pending("bob", 0, 10).await.unwrap().len(), 3);
    }

    /// A store's file made by this code, then turned back by `older` (SQL)
    /// into an older layout, not yet opened again.
    async fn file_turned_back(older: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.db");
        SqliteStore::open(&path, Durability::Process)
            .unwrap()
            .close()
            .await;
        Connection::open(&path)
            .unwrap()
            .execute_batch(older)
            .unwrap();
        (dir, path)
    }

    #[tokio::test]
    async fn a_queue_from_before_shared_envelopes_keeps_its_rows_and_takes_group_texts() {
        // Back to the clustered layout as it was before `shared`.
        let (_dir, path) = file_turned_back(
            "DROP TABLE queue; DROP TABLE shared_envelopes;
                 CREATE TABLE queue(
                     recipient TEXT NOT NULL, seq INTEGER NOT NULL,
                     msg_id BLOB NOT NULL, envelope BLOB NOT NULL,
                     PRIMARY KEY(recipient, seq)) WITHOUT ROWID;
                 CREATE UNIQUE INDEX queue_ids ON queue(recipient, msg_id);
                 INSERT INTO queue(recipient, seq, msg_id, envelope)
                   VALUES ('bob', 1, x'01010101010101010101010101010101', x'aa');
                 INSERT INTO queue_usage(recipient, texts, bytes) VALUES ('bob', 1, 1);
                 UPDATE queue_seq SET next = 2;",
        )
        .await;
        let s = SqliteStore::open(&path, Durability::Process).unwrap();
        assert_eq!(
            s.pending("bob", 0, 10).await.unwrap(),
            vec![(1, vec![0xaa])]
        );
        // A resend of a direct text is queued again: the recipient drops it.
        for user in ["alice", "bob"] {
            s.create_user(user, b"k", None).await.unwrap();
        }
        s.request_friend("alice", "bob", b"req").await.unwrap();
        s.accept_friend("bob", "alice", b"acc").await.unwrap();
        let resend = vec![
            conformance::text(crate::store::Target::Direct("bob".into()), 1, b"again"),
            conformance::text(crate::store::Target::Direct("bob".into()), 2, b"new"),
        ];
        let r = s
            .enqueue_texts("alice", resend, QueueLimits::default())
            .await
            .unwrap();
        assert!(
            matches!(&r[..], [Queuing::Stored(a), Queuing::Stored(b)] if a[0].1 < b[0].1),
            "{r:?}"
        );
        let seqs = conformance::positions(&s, "bob", 10).await;
        assert_eq!(seqs.len(), 4, "moved, request, resend, new: {seqs:?}");
        s.ack("bob", &seqs[1..]).await.unwrap();
        let id = s.create_group("crew", "alice").await.unwrap();
        let add = Membership::Add(vec!["bob".into(), "carol".into()]);
        s.rekey(id, 1, add, vec![]).await.unwrap();
        let group = crate::store::Target::Group { id, epoch: 1 };
        let r = s
            .enqueue_texts(
                "carol",
                vec![conformance::text(group, 2, &[2])],
                QueueLimits::default(),
            )
            .await
            .unwrap();
        assert!(
            matches!(&r[0], Queuing::Stored(to) if to.len() == 2),
            "{r:?}"
        );
        let bob = s.pending("bob", 0, 10).await.unwrap();
        let bodies: Vec<&[u8]> = bob.iter().map(|(_, b)| b.as_slice()).collect();
        assert_eq!(bodies, vec![&[0xaa][..], &[2][..]]);
        let seqs: Vec<u64> = bob.iter().map(|(q, _)| *q).collect();
        s.ack("bob", &seqs).await.unwrap();
        assert_eq!(s.queued_for("bob").await.unwrap(), 0);
        // Bob's acceptance and the group text.
        assert_eq!(s.pending("alice", 0, 10).await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn a_queue_with_ids_keeps_its_rows_positions_and_shared_counts_without_them() {
        // Back to the layout with ids as integers and their index.
        let (_dir, path) = file_turned_back(
                "DROP TABLE queue;
                 CREATE TABLE queue(
                     recipient TEXT NOT NULL, seq INTEGER NOT NULL,
                     id_hi INTEGER NOT NULL, id_lo INTEGER NOT NULL,
                     envelope BLOB NOT NULL, shared INTEGER,
                     PRIMARY KEY(recipient, seq)) WITHOUT ROWID;
                 CREATE UNIQUE INDEX queue_direct_id_keys
                     ON queue(id_hi, id_lo, recipient) WHERE shared IS NULL;
                 INSERT INTO shared_envelopes(id, envelope, refs, msg_id)
                   VALUES (7, x'cc', 2, x'02020202020202020202020202020202');
                 INSERT INTO queue VALUES ('bob', 3, 72340172838076673, 72340172838076673, x'aa', NULL);
                 INSERT INTO queue VALUES ('bob', 5, 0, 0, x'', 7);
                 INSERT INTO queue VALUES ('eve', 6, 0, 0, x'', 7);
                 INSERT INTO queue_usage(recipient, texts, bytes) VALUES ('bob', 2, 2), ('eve', 1, 1);
                 UPDATE queue_seq SET next = 7;",
        )
        .await;
        let s = SqliteStore::open(&path, Durability::Process).unwrap();
        assert_eq!(
            s.pending("bob", 0, 10).await.unwrap(),
            vec![(3, vec![0xaa]), (5, vec![0xcc])]
        );
        assert_eq!(
            s.pending("eve", 0, 10).await.unwrap(),
            vec![(6, vec![0xcc])]
        );
        s.ack("bob", &[3, 5]).await.unwrap();
        s.ack("eve", &[6]).await.unwrap();
        assert_eq!(s.queue_depth().await.unwrap(), 0);
        s.close().await;
        let c = Connection::open(&path).unwrap();
        let left: i64 = c
            .query_row("SELECT COUNT(*) FROM shared_envelopes", [], |r| r.get(0))
            .unwrap();
        assert_eq!(left, 0, "the last member's ack deleted the shared envelope");
        let sql: String = c
            .query_row(
                "SELECT sql FROM sqlite_master WHERE name = 'queue'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert!(!sql.contains("id_hi"), "{sql}");
        let indexes: i64 = c
            .query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE type = 'index' AND tbl_name = 'queue' AND sql IS NOT NULL",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(indexes, 0);
    }

    #[tokio::test]
    async fn friendship_lifecycle_and_queue() {
        let (_d, s) = store();
        conformance::friendship_lifecycle_and_queue(&s).await;
    }

    #[tokio::test]
    async fn blobs_resume_count_quota_move_and_go_when_all_have_them() {
        let (_d, s) = store();
        conformance::blobs_resume_count_quota_move_and_go_when_all_have_them(&s).await;
    }

    #[tokio::test]
    async fn login_keys_are_stored_and_rebound() {
        let (_d, s) = store();
        conformance::login_keys_are_stored_and_rebound(&s).await;
    }

    #[tokio::test]
    async fn groups_fan_out_and_refuse() {
        let (_d, s) = store();
        conformance::groups_fan_out_and_refuse(&s).await;
    }

    #[tokio::test]
    async fn a_group_text_waits_for_each_member_until_each_acks() {
        let (dir, s) = store();
        conformance::a_group_text_waits_for_each_member_until_each_acks(&s).await;
        let stored = |dir: &Path| {
            let c = Connection::open(dir.join("node.db")).unwrap();
            c.query_row(
                "SELECT (SELECT COUNT(*) FROM group_log), (SELECT COUNT(*) FROM queue)",
                [],
                |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)),
            )
            .unwrap()
        };
        assert_eq!(
            stored(dir.path()),
            (1, 0),
            "the late resend, stored once for both, in the log alone"
        );
        let indexes: Vec<String> = Connection::open(dir.path().join("node.db"))
            .unwrap()
            .prepare("SELECT sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'queue' AND sql IS NOT NULL")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(
            indexes.is_empty(),
            "a row, a member's or a direct text's, is one B-tree write: {indexes:?}"
        );
        for member in ["alice", "carol"] {
            let seqs = conformance::positions(&s, member, 100).await;
            s.ack(member, &seqs).await.unwrap();
        }
        assert_eq!(stored(dir.path()), (0, 0), "the last ack deletes it");
    }

    #[tokio::test]
    async fn acks_from_many_members_at_once_clear_the_log_behind_the_slowest() {
        let (dir, s) = store();
        let members: Vec<String> = (0..6).map(|i| format!("m{i}")).collect();
        let id = s.create_group("crew", "admin").await.unwrap();
        s.rekey(id, 1, Membership::Add(members.clone()), vec![])
            .await
            .unwrap();
        let to = || crate::store::Target::Group { id, epoch: 1 };
        let texts = (1..=3)
            .map(|n| conformance::text(to(), n, &[n; 300]))
            .collect();
        s.enqueue_texts("admin", texts, QueueLimits::default())
            .await
            .unwrap();
        let stored = || {
            let c = Connection::open(dir.path().join("node.db")).unwrap();
            c.query_row(
                "SELECT (SELECT COUNT(*) FROM group_log), (SELECT COUNT(*) FROM queue)",
                [],
                |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)),
            )
            .unwrap()
        };
        assert_eq!(stored(), (3, 0), "each text once, no row per member");
        // All at once, so the writer takes several acks into one group; the
        // last member acknowledges only the first text.
        let mut acks = Vec::new();
        for m in &members {
            let mut seqs = conformance::positions(&s, m, 10).await;
            if m == "m5" {
                seqs.truncate(1);
            }
            acks.push((m.clone(), seqs));
        }
        let done = futures::future::join_all(acks.iter().map(|(m, seqs)| s.ack(m, seqs))).await;
        assert!(done.iter().all(Result::is_ok));
        assert_eq!(stored(), (2, 0), "the first is gone, m5's last two wait");
        let m5 = conformance::positions(&s, "m5", 10).await;
        assert_eq!(m5.len(), 2);
        s.ack("m5", &m5).await.unwrap();
        assert_eq!(stored(), (0, 0), "the last ack deletes them");
        for m in &members {
            assert_eq!(s.queued_for(m).await.unwrap(), 0, "{m}");
        }
    }

    #[tokio::test]
    async fn members_get_the_texts_of_their_time_in_the_group_in_queue_order() {
        let (dir, s) = store();
        conformance::members_get_the_texts_of_their_time_in_the_group_in_queue_order(&s).await;
        let c = Connection::open(dir.path().join("node.db")).unwrap();
        let left: i64 = c
            .query_row("SELECT COUNT(*) FROM group_log", [], |r| r.get(0))
            .unwrap();
        assert_eq!(left, 0, "senders who receive nothing hold no entry back");
    }

    #[tokio::test]
    async fn pages_across_groups_come_in_queue_order() {
        let (_d, s) = store();
        conformance::pages_across_groups_come_in_queue_order(&s).await;
    }

    #[tokio::test]
    async fn queues_are_bounded_per_recipient() {
        let (_d, s) = store();
        conformance::queues_are_bounded_per_recipient(&s).await;
    }
}
