//! Blob files: image ciphertext this node keeps until every recipient has
//! it. One file per blob, named by its id. A reader can follow a file while
//! its upload is still arriving (cut-through): every writer publishes how
//! many bytes are in place, and readers wait on that.

use std::collections::HashMap;
use std::io::SeekFrom;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use tokio::fs::File;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio::sync::watch;

/// Why a blob could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// The blob is not (or no longer) on this node.
    #[error("this node no longer holds that image")]
    Gone,
    /// The file could not be read or written.
    #[error("blob file: {0}")]
    Io(#[from] std::io::Error),
    /// The file ends before the bytes its writer said were in place.
    #[error("the blob file is short")]
    Short,
    /// The upload being followed made no progress for too long.
    #[error("the sender's upload stalled")]
    Stalled,
    /// More bytes arrived than the upload offered.
    #[error("the upload is longer than offered")]
    TooLong,
}

/// This node's blob files.
pub(crate) struct Blobs {
    dir: PathBuf,
    /// Whether a finished upload is fsynced before it is acknowledged.
    fsync: bool,
    /// Bytes in place so far, per blob being written or followed.
    progress: Mutex<HashMap<u64, watch::Sender<u64>>>,
}

impl Blobs {
    /// The blobs in `dir` (which must exist).
    pub fn new(dir: PathBuf, fsync: bool) -> Self {
        Self {
            dir,
            fsync,
            progress: Mutex::new(HashMap::new()),
        }
    }

    fn path(&self, id: u64) -> PathBuf {
        self.dir.join(id.to_string())
    }

    /// The progress channel of blob `id`, created at `have` bytes if new.
    fn progress(&self, id: u64, have: u64) -> watch::Sender<u64> {
        let mut progress = self.progress.lock().expect("blobs lock");
        progress
            .entry(id)
            .or_insert_with(|| watch::channel(have).0)
            .clone()
    }

    /// Opens blob `id` to write its `total_len` bytes, keeping what an
    /// earlier attempt wrote (the upload resumes after it).
    pub async fn write(&self, id: u64, total_len: u64) -> Result<BlobWriter, BlobError> {
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(self.path(id))
            .await?;
        let have = file.metadata().await?.len().min(total_len);
        file.set_len(have).await?;
        file.seek(SeekFrom::Start(have)).await?;
        let progress = self.progress(id, have);
        progress.send_replace(have);
        Ok(BlobWriter {
            file,
            have,
            total_len,
            fsync: self.fsync,
            progress,
        })
    }

    /// Opens blob `id` to read from `offset`, following its upload.
    pub async fn follow(&self, id: u64, offset: u64) -> Result<BlobReader, BlobError> {
        let mut file = File::open(self.path(id)).await.map_err(not_found_is_gone)?;
        let on_disk = file.metadata().await?.len();
        let written = self.progress(id, on_disk).subscribe();
        file.seek(SeekFrom::Start(offset)).await?;
        Ok(BlobReader {
            file,
            pos: offset,
            written,
        })
    }

    /// Up to `max` bytes of blob `id` from `offset`, waiting up to `wait`
    /// for an upload in progress to get there (empty if it did not).
    pub async fn read(
        &self,
        id: u64,
        offset: u64,
        max: u32,
        wait: Duration,
    ) -> Result<Vec<u8>, BlobError> {
        let mut reader = self.follow(id, offset).await?;
        match reader.next(max as usize, wait).await {
            Ok(bytes) => Ok(bytes),
            Err(BlobError::Stalled) => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    /// Deletes blob `id` (every recipient has it).
    pub async fn delete(&self, id: u64) {
        self.progress.lock().expect("blobs lock").remove(&id);
        if let Err(e) = tokio::fs::remove_file(self.path(id)).await
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(blob = id, error = %e, "cannot delete a collected blob");
        }
    }
}

fn not_found_is_gone(e: std::io::Error) -> BlobError {
    if e.kind() == std::io::ErrorKind::NotFound {
        BlobError::Gone
    } else {
        BlobError::Io(e)
    }
}

/// An upload being written to its blob file.
pub(crate) struct BlobWriter {
    file: File,
    have: u64,
    total_len: u64,
    fsync: bool,
    progress: watch::Sender<u64>,
}

impl BlobWriter {
    /// Bytes in place.
    pub fn have(&self) -> u64 {
        self.have
    }

    /// Whether every offered byte is in place.
    pub fn is_complete(&self) -> bool {
        self.have == self.total_len
    }

    /// Appends `bytes` and tells followers they are there.
    pub async fn append(&mut self, bytes: &[u8]) -> Result<(), BlobError> {
        if self
            .have
            .checked_add(bytes.len() as u64)
            .is_none_or(|end| end > self.total_len)
        {
            return Err(BlobError::TooLong);
        }
        self.file.write_all(bytes).await?;
        self.file.flush().await?;
        self.have += bytes.len() as u64;
        self.progress.send_replace(self.have);
        Ok(())
    }

    /// Makes a complete upload durable (if the node fsyncs) before it is
    /// acknowledged.
    pub async fn finish(&mut self) -> Result<(), BlobError> {
        if self.fsync {
            self.file.sync_data().await?;
        }
        Ok(())
    }
}

/// A reader of a blob file that follows its upload.
pub(crate) struct BlobReader {
    file: File,
    pos: u64,
    written: watch::Receiver<u64>,
}

impl BlobReader {
    /// The next up to `max` bytes, waiting up to `stall` for the upload to
    /// bring them.
    pub async fn next(&mut self, max: usize, stall: Duration) -> Result<Vec<u8>, BlobError> {
        let mut available = *self.written.borrow_and_update();
        while available <= self.pos {
            match tokio::time::timeout(stall, self.written.changed()).await {
                Ok(Ok(())) => available = *self.written.borrow_and_update(),
                _ => return Err(BlobError::Stalled),
            }
        }
        let want = ((available - self.pos) as usize).min(max);
        let mut out = vec![0u8; want];
        self.file
            .read_exact(&mut out)
            .await
            .map_err(|_| BlobError::Short)?;
        self.pos += want as u64;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_follower_gets_bytes_as_they_are_written_and_writes_resume() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = Blobs::new(dir.path().to_path_buf(), false);
        let mut w = blobs.write(1, 10).await.unwrap();
        w.append(b"hello").await.unwrap();
        let mut r = blobs.follow(1, 0).await.unwrap();
        let short = Duration::from_millis(50);
        assert_eq!(r.next(100, short).await.unwrap(), b"hello");
        // Nothing more yet: the follower waits, then gives up.
        assert!(matches!(r.next(100, short).await, Err(BlobError::Stalled)));
        assert!(
            blobs.read(1, 5, 100, short).await.unwrap().is_empty(),
            "a bus read past the end answers empty"
        );
        // A writer that comes back keeps what is there.
        drop(w);
        let mut w = blobs.write(1, 10).await.unwrap();
        assert_eq!(w.have(), 5);
        assert!(matches!(
            w.append(b"too long!").await,
            Err(BlobError::TooLong)
        ));
        w.append(b"world").await.unwrap();
        assert!(w.is_complete());
        assert_eq!(r.next(100, short).await.unwrap(), b"world");
        assert_eq!(blobs.read(1, 3, 4, short).await.unwrap(), b"lowo");
        blobs.delete(1).await;
        assert!(matches!(blobs.follow(1, 0).await, Err(BlobError::Gone)));
    }
}
