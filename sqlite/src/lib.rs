//! What the node's store and the client's keystore both do with SQLite
//! beyond opening it: checkpoints run off the commit path.
//!
//! In WAL mode SQLite checkpoints inside the commit that pushes the log past
//! its threshold: that commit copies the log into the database and syncs
//! it, and whoever waits on it (a sender's ack, a delivery's ack) waits
//! milliseconds longer (measured: the paced p99 went from 10–12 ms to
//! 1.2–1.3 ms when the keystores stopped doing this). Here the writer's WAL
//! hook only wakes a thread of its own, which checkpoints on a second
//! connection in PASSIVE mode (it never blocks the writer). The log can
//! only be reset when a checkpoint has caught up with the writer, which a
//! writer that never pauses does not allow; so past [`INLINE_PAGES`] the
//! writer checkpoints itself, as SQLite would, and the log stays bounded.
//! The thread stops once the writer's connection is closed.

use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use rusqlite::Connection;
use rusqlite::wal::CheckpointMode;

/// Keeps each statement's query plan for the connection's life: with the
/// planner free to look at bound values (`LIMIT ?`, ranges over `?`), each
/// such statement was marked stale whenever rusqlite's cache cleared its
/// bindings, so every use parsed and planned it again (measured: the
/// queue's read and ack queries, 12% of the node's instructions per group
/// delivery). Our statements are written for their indexes; the plan
/// never needs the values.
pub fn stable_plans(conn: &Connection) -> rusqlite::Result<()> {
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )
    .map(|_| ())
}

/// Runs one of a writer's fixed statements (`BEGIN`, `COMMIT`, …) from the
/// connection's statement cache: `execute_batch` parsed it again each time.
pub fn run_cached(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

/// A message id as the two integers the keystore's history keys it by:
/// its halves, big-endian, so ids ordered by time stay ordered. Keyed by
/// the 16-byte blob, every seek of an id index compared records field by
/// field (~116 instructions each, some twenty per seek); integers take
/// SQLite's own fast comparison. An id shorter than 16 bytes counts as
/// padded with zeros.
pub fn id_key(id: &[u8]) -> (i64, i64) {
    let mut full = [0u8; 16];
    let n = id.len().min(16);
    full[..n].copy_from_slice(&id[..n]);
    let half = |b: &[u8]| i64::from_be_bytes(b.try_into().expect("8 bytes"));
    (half(&full[..8]), half(&full[8..]))
}

/// The 16-byte id [`id_key`] made these integers from.
pub fn id_from_key(hi: i64, lo: i64) -> [u8; 16] {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&hi.to_be_bytes());
    id[8..].copy_from_slice(&lo.to_be_bytes());
    id
}

/// Log pages after which the other thread checkpoints (SQLite's own default).
pub const CHECKPOINT_PAGES: i32 = 1000;
/// Log pages after which the writer checkpoints itself: the other thread
/// has not caught up with a writer that never paused.
pub const INLINE_PAGES: i32 = 8 * CHECKPOINT_PAGES;

/// Why checkpoints could not be taken over.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database refused the hook.
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
}

/// The thread checkpointing one database; see the crate docs. It starts
/// when the log first reaches [`CHECKPOINT_PAGES`]: a client opening its
/// keystore for a short session never pays for a second connection and a
/// thread (a tenth of the cost of opening it).
pub struct Checkpointer {
    thread: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl Checkpointer {
    /// Takes over `writer`'s checkpoints for the database at `path`.
    pub fn start(path: &Path, writer: &mut Connection) -> Result<Self, Error> {
        let thread = Arc::new(Mutex::new(None));
        let (path, slot) = (path.to_path_buf(), thread.clone());
        let mut wake: Option<mpsc::SyncSender<()>> = None;
        // Replaces SQLite's automatic checkpoint (the same hook).
        writer.wal_hook(Some(move |wal: &mut rusqlite::hooks::Wal, pages: i32| {
            if pages >= INLINE_PAGES {
                // Between transactions nothing is appended meanwhile, so
                // this one catches up and the next write resets the log.
                if let Err(e) = wal.checkpoint_v2(CheckpointMode::PASSIVE) {
                    checkpoint_failed(&e);
                }
            } else if pages >= CHECKPOINT_PAGES {
                if wake.is_none() {
                    wake = spawn(&path, &slot);
                }
                // Full means a wake-up is pending already; gone means the
                // thread could not open the database, so try again later.
                if let Some(Err(mpsc::TrySendError::Disconnected(()))) =
                    wake.as_ref().map(|w| w.try_send(()))
                {
                    wake = None;
                }
            }
            Ok(())
        }))?;
        Ok(Self { thread })
    }

    /// Waits for the thread (if it started) to stop and close its
    /// connection. Call it after closing the writer's connection (else it
    /// waits for ever).
    pub fn join(self) {
        let handle = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(t) = handle {
            let _ = t.join();
        }
    }
}

/// Starts the checkpoint thread for `path`, leaving its handle in `slot`;
/// `None` (logged) if the system would not start it.
fn spawn(path: &Path, slot: &Mutex<Option<JoinHandle<()>>>) -> Option<mpsc::SyncSender<()>> {
    let (wake, woken) = mpsc::sync_channel::<()>(1);
    let path = path.to_path_buf();
    let started = std::thread::Builder::new()
        .name("sqlite-checkpoint".into())
        .spawn(move || {
            let own = match open_second(&path) {
                Ok(c) => c,
                Err(e) => return checkpoint_failed(&e),
            };
            for () in woken {
                // Until it catches up with the writer (every frame in the
                // database), so the writer's next transaction can reset the
                // log; a few passes, each shorter than the last.
                for _ in 0..8 {
                    match own.wal_checkpoint_v2(None::<&str>, CheckpointMode::PASSIVE) {
                        Ok((log, done)) if done >= log => break,
                        Ok(_) => {}
                        Err(e) => {
                            checkpoint_failed(&e);
                            break;
                        }
                    }
                }
            }
        });
    match started {
        Ok(handle) => {
            if let Ok(mut s) = slot.lock() {
                // A thread started before has stopped (its sender is gone).
                if let Some(old) = s.replace(handle) {
                    let _ = old.join();
                }
            }
            Some(wake)
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot start the checkpoint thread; the writer checkpoints itself");
            None
        }
    }
}

/// The checkpointing thread's own connection.
fn open_second(path: &Path) -> rusqlite::Result<Connection> {
    let own = Connection::open(path)?;
    // Until it reads the database a connection does not know it is in
    // WAL mode, and its checkpoints do nothing.
    own.execute_batch("PRAGMA busy_timeout=5000; PRAGMA journal_mode=WAL;")?;
    Ok(own)
}

/// Logs a failed checkpoint. Busy or locked is expected where several
/// processes share the file (nodes on one machine) and the next one
/// retries; anything else is worth a warning.
fn checkpoint_failed(e: &rusqlite::Error) {
    let busy = matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    );
    if busy {
        tracing::debug!(error = %e, "a WAL checkpoint met a lock; the next one retries");
    } else {
        tracing::warn!(error = %e, "a WAL checkpoint failed; the next one retries");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_keys_keep_each_id_and_its_order() {
        let a = [[0u8; 16], [1; 16], [0x80; 16], [0xff; 16]];
        for id in a {
            let (hi, lo) = id_key(&id);
            assert_eq!(id_from_key(hi, lo), id);
        }
        let early = id_key(&[0, 0, 1, 0x90, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9]);
        let late = id_key(&[0, 0, 1, 0x91, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        assert!(early < late, "time-ordered ids stay ordered");
        assert_eq!(id_key(&[]), (0, 0));
        assert_eq!(id_key(&[1]), (1 << 56, 0));
    }

    /// A WAL database in a temp dir with one table, its checkpoints taken over.
    fn wal_database() -> (
        tempfile::TempDir,
        std::path::PathBuf,
        Connection,
        Checkpointer,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let mut c = Connection::open(&path).unwrap();
        c.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t(x BLOB);")
            .unwrap();
        let ckpt = Checkpointer::start(&path, &mut c).unwrap();
        (dir, path, c, ckpt)
    }

    fn insert_pages(c: &mut Connection, pages: i32) {
        for _ in 0..(pages / 50) {
            let tx = c.transaction().unwrap();
            for _ in 0..50 {
                tx.execute("INSERT INTO t VALUES (zeroblob(4000))", [])
                    .unwrap();
            }
            tx.commit().unwrap();
        }
    }

    #[test]
    fn the_other_thread_copies_the_log_into_the_database() {
        let (_dir, path, mut c, ckpt) = wal_database();
        // Past the thread's threshold, far below the writer's own.
        insert_pages(&mut c, CHECKPOINT_PAGES + 200);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::fs::metadata(&path).unwrap().len() < CHECKPOINT_PAGES as u64 * 4096 {
            assert!(
                std::time::Instant::now() < deadline,
                "no checkpoint reached the database"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        drop(c);
        ckpt.join();
    }

    #[test]
    fn the_log_reaches_the_database_and_stays_bounded_and_all_closes() {
        let (dir, path, mut c, ckpt) = wal_database();
        // Writes that never pause, far past both thresholds: the log is
        // copied into the database and stays bounded.
        insert_pages(&mut c, 3 * INLINE_PAGES);
        let wal = std::fs::metadata(dir.path().join("db-wal")).unwrap().len();
        let bound = 2 * INLINE_PAGES as u64 * 4200;
        assert!(wal < bound, "the log kept growing: {wal} bytes");
        let db = std::fs::metadata(&path).unwrap().len();
        assert!(
            db > INLINE_PAGES as u64 * 4096,
            "little reached the database: {db} bytes"
        );
        drop(c);
        ckpt.join();
        // Every connection is closed: the last one removed the log.
        assert!(!dir.path().join("db-wal").exists());
    }
}
