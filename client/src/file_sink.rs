//! A received file written off the runtime: one blocking thread per
//! download takes the decrypted chunks in order, hashes and writes them, and
//! asks the kernel to start writing each few MiB to disk as it goes, so the
//! sync at the end waits for little. Through `tokio::fs` each 64 KiB chunk
//! was a hop to the blocking pool and back, the digest was computed on the
//! task that also decrypts, and the final sync of a 50 MiB file took about
//! 20 ms after the last byte had arrived.

use std::fs::File;
use std::io::{self, Write};

use fastchat_crypto::Hasher;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Bytes written between two requests to start writing back.
const WRITEBACK_STEP: u64 = 4 << 20;

/// Chunks that may wait for the writer (64 KiB each).
const QUEUED_CHUNKS: usize = 8;

/// The writer of one partial file.
pub(crate) struct FileSink {
    chunks: mpsc::Sender<Vec<u8>>,
    thread: JoinHandle<io::Result<(File, Hasher)>>,
}

impl FileSink {
    /// Writes at `file`'s current position, `hasher` holding the digest of
    /// everything before it.
    pub(crate) fn start(mut file: File, mut hasher: Hasher) -> Self {
        let (chunks, mut queued) = mpsc::channel::<Vec<u8>>(QUEUED_CHUNKS);
        let thread = tokio::task::spawn_blocking(move || {
            let mut at = io::Seek::stream_position(&mut file)?;
            let mut asked = at;
            while let Some(chunk) = queued.blocking_recv() {
                hasher.update(&chunk);
                file.write_all(&chunk)?;
                at += chunk.len() as u64;
                if at - asked >= WRITEBACK_STEP {
                    start_writeback(&file, asked, at - asked);
                    asked = at;
                }
            }
            Ok((file, hasher))
        });
        Self { chunks, thread }
    }

    /// Queues the next chunk; false once the writer has stopped (its error
    /// comes from [`FileSink::finish`]).
    pub(crate) async fn write(&self, chunk: Vec<u8>) -> bool {
        self.chunks.send(chunk).await.is_ok()
    }

    /// Waits for every queued chunk to be written and, with `sync`, on
    /// disk; the digest of the whole file.
    pub(crate) async fn finish(self, sync: bool) -> io::Result<[u8; 32]> {
        drop(self.chunks);
        let (file, hasher) = self.thread.await.map_err(io::Error::other)??;
        if sync {
            tokio::task::spawn_blocking(move || file.sync_all())
                .await
                .map_err(io::Error::other)??;
        }
        Ok(hasher.finish())
    }
}

/// Starts writing `len` bytes at `offset` to disk without waiting for it.
#[cfg(target_os = "linux")]
fn start_writeback(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: a valid descriptor; the call only schedules I/O.
    let rc = unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        )
    };
    if rc != 0 {
        // Only an optimisation: the final sync writes whatever is left.
        tracing::debug!(error = %io::Error::last_os_error(), "cannot start writeback");
    }
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_file: &File, _offset: u64, _len: u64) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn chunks_land_in_order_after_what_was_there_and_the_digest_covers_all() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("partial");
        std::fs::write(&path, b"kept").unwrap();
        let mut file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        io::Seek::seek(&mut file, io::SeekFrom::End(0)).unwrap();
        let mut hasher = Hasher::default();
        hasher.update(b"kept");
        let sink = FileSink::start(file, hasher);
        let mut all = b"kept".to_vec();
        // Past a writeback step, in uneven pieces.
        for i in 0..70u32 {
            let chunk: Vec<u8> = (0..65_536 + i).map(|b| (b ^ i) as u8).collect();
            all.extend_from_slice(&chunk);
            assert!(sink.write(chunk).await);
        }
        let digest = sink.finish(true).await.unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), all);
        assert_eq!(digest, fastchat_crypto::file_digest(&all));
    }

    #[tokio::test]
    async fn a_failed_write_stops_the_writer_and_reports_why() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("partial");
        std::fs::write(&path, b"").unwrap();
        // Read-only: the first write fails.
        let file = std::fs::File::open(&path).unwrap();
        let sink = FileSink::start(file, Hasher::default());
        let mut accepted = 0;
        for _ in 0..2 * QUEUED_CHUNKS + 2 {
            if !sink.write(vec![1; 10]).await {
                break;
            }
            accepted += 1;
        }
        assert!(
            accepted <= QUEUED_CHUNKS + 1,
            "the writer stopped taking chunks"
        );
        assert!(sink.finish(false).await.is_err());
    }
}
