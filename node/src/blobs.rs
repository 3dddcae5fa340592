//! Blob files: image ciphertext this node keeps until every recipient has
//! it. One file per blob, named by its id. A reader can follow a file while
//! its upload is still arriving (cut-through): every writer publishes how
//! many bytes are in place, and its latest pieces, and readers wait on
//! that and take those pieces from memory.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
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

/// Pieces a writer keeps for its followers, newest last: a recipient
/// following an upload takes them from memory, and only one that falls
/// further behind reads the file.
const RECENT_PIECES: usize = 4;

/// What a blob's writer has published.
#[derive(Clone, Default)]
struct Written {
    /// Bytes in place in the file.
    have: u64,
    /// The latest pieces written, each with its offset.
    recent: VecDeque<(u64, Bytes)>,
    /// Whether an upload is writing it now.
    writing: bool,
}

impl Written {
    /// Up to `max` bytes at `pos` from a recent piece, without a copy.
    fn piece_at(&self, pos: u64, max: usize) -> Option<Bytes> {
        let (at, piece) = self
            .recent
            .iter()
            .find(|(at, p)| *at <= pos && pos < at + p.len() as u64)?;
        let start = (pos - at) as usize;
        Some(piece.slice(start..piece.len().min(start + max)))
    }
}

/// This node's blob files.
pub(crate) struct Blobs {
    dir: PathBuf,
    /// Whether a finished upload is fsynced before it is acknowledged.
    fsync: bool,
    /// What is in place so far, per blob being written or followed.
    progress: Mutex<HashMap<u64, watch::Sender<Written>>>,
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
    fn progress(&self, id: u64, have: u64) -> watch::Sender<Written> {
        let mut progress = self.progress.lock().expect("blobs lock");
        progress
            .entry(id)
            .or_insert_with(|| {
                watch::channel(Written {
                    have,
                    ..Written::default()
                })
                .0
            })
            .clone()
    }

    /// Opens blob `id` to write its `total_len` bytes, keeping what an
    /// earlier attempt wrote (the upload resumes after it).
    pub async fn write(&self, id: u64, total_len: u64) -> Result<BlobWriter, BlobError> {
        let path = self.path(id);
        let (file, have) = blocking(move || {
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(false)
                .open(path)?;
            let have = file.metadata()?.len().min(total_len);
            file.set_len(have)?;
            file.seek(SeekFrom::Start(have))?;
            Ok((file, have))
        })
        .await?;
        let progress = self.progress(id, have);
        progress.send_replace(Written {
            have,
            recent: VecDeque::new(),
            writing: true,
        });
        Ok(BlobWriter {
            file: Arc::new(file),
            have,
            total_len,
            fsync: self.fsync,
            progress,
        })
    }

    /// Opens blob `id` to read from `offset`, following its upload.
    pub async fn follow(&self, id: u64, offset: u64) -> Result<BlobReader, BlobError> {
        let path = self.path(id);
        let (file, on_disk) = blocking(move || {
            let file = File::open(path).map_err(not_found_is_gone)?;
            let len = file.metadata()?.len();
            Ok((file, len))
        })
        .await?;
        let progress = self.progress(id, on_disk);
        Ok(BlobReader {
            file: Arc::new(file),
            pos: offset,
            written: progress.subscribe(),
            progress,
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
    ) -> Result<Bytes, BlobError> {
        let mut reader = self.follow(id, offset).await?;
        match reader.next(max as usize, wait).await {
            Ok(bytes) => Ok(bytes),
            Err(BlobError::Stalled) => Ok(Bytes::new()),
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

/// Runs file work on the blocking pool.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, BlobError> + Send + 'static,
) -> Result<T, BlobError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| BlobError::Io(std::io::Error::other(e)))?
}

/// An upload being written to its blob file.
pub(crate) struct BlobWriter {
    file: Arc<File>,
    have: u64,
    total_len: u64,
    fsync: bool,
    progress: watch::Sender<Written>,
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

    /// Appends `piece` and hands it to followers. The file is written from
    /// the piece itself (`tokio::fs` copied it into a buffer of its own
    /// first).
    pub async fn append(&mut self, piece: Bytes) -> Result<(), BlobError> {
        let end = self
            .have
            .checked_add(piece.len() as u64)
            .filter(|end| *end <= self.total_len)
            .ok_or(BlobError::TooLong)?;
        let (file, bytes) = (self.file.clone(), piece.clone());
        blocking(move || Ok((&*file).write_all(&bytes)?)).await?;
        let at = self.have;
        self.have = end;
        self.progress.send_modify(|w| {
            w.have = end;
            if w.recent.len() == RECENT_PIECES {
                w.recent.pop_front();
            }
            w.recent.push_back((at, piece));
        });
        Ok(())
    }

    /// Makes a complete upload durable (if the node fsyncs) before it is
    /// acknowledged.
    pub async fn finish(&mut self) -> Result<(), BlobError> {
        if self.fsync {
            let file = self.file.clone();
            blocking(move || Ok(file.sync_data()?)).await?;
        }
        Ok(())
    }
}

impl Drop for BlobWriter {
    /// The pieces stay for followers still catching up, and go with the
    /// last of them: a blob waiting for an offline recipient keeps none.
    fn drop(&mut self) {
        let followed = self.progress.receiver_count() > 0;
        self.progress.send_modify(|w| {
            w.writing = false;
            if !followed {
                w.recent.clear();
            }
        });
    }
}

/// A reader of a blob file that follows its upload.
pub(crate) struct BlobReader {
    file: Arc<File>,
    pos: u64,
    written: watch::Receiver<Written>,
    progress: watch::Sender<Written>,
}

impl Drop for BlobReader {
    /// The last follower of a finished upload lets its pieces go.
    fn drop(&mut self) {
        let last = self.progress.receiver_count() <= 1;
        self.progress.send_if_modified(|w| {
            let clear = last && !w.writing && !w.recent.is_empty();
            if clear {
                w.recent.clear();
            }
            clear
        });
    }
}

impl BlobReader {
    /// The next up to `max` bytes, waiting up to `stall` for the upload to
    /// bring them: a piece the upload just wrote as it is, else read from
    /// the file into a buffer of its own.
    pub async fn next(&mut self, max: usize, stall: Duration) -> Result<Bytes, BlobError> {
        let mut available = self.written.borrow_and_update().have;
        while available <= self.pos {
            match tokio::time::timeout(stall, self.written.changed()).await {
                Ok(Ok(())) => available = self.written.borrow_and_update().have,
                _ => return Err(BlobError::Stalled),
            }
        }
        let want = ((available - self.pos) as usize).min(max);
        let in_memory = self.written.borrow().piece_at(self.pos, want);
        let bytes = match in_memory {
            Some(piece) => piece,
            None => {
                let (file, pos) = (self.file.clone(), self.pos);
                blocking(move || {
                    let mut out = vec![0u8; want];
                    read_exact_at(&file, &mut out, pos).map_err(|_| BlobError::Short)?;
                    Ok(Bytes::from(out))
                })
                .await?
            }
        };
        self.pos += bytes.len() as u64;
        Ok(bytes)
    }
}

/// Fills `buf` from `file` at `pos`, leaving the file's own position alone.
#[cfg(unix)]
fn read_exact_at(file: &File, buf: &mut [u8], pos: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, pos)
}

/// Fills `buf` from `file` at `pos`.
#[cfg(not(unix))]
fn read_exact_at(file: &File, buf: &mut [u8], pos: u64) -> std::io::Result<()> {
    use std::io::Read;
    let mut file = file;
    file.seek(SeekFrom::Start(pos))?;
    file.read_exact(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_follower_gets_bytes_as_they_are_written_and_writes_resume() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = Blobs::new(dir.path().to_path_buf(), false);
        let mut w = blobs.write(1, 10).await.unwrap();
        w.append(Bytes::from_static(b"hello")).await.unwrap();
        let mut r = blobs.follow(1, 0).await.unwrap();
        let short = Duration::from_millis(50);
        assert_eq!(&r.next(100, short).await.unwrap()[..], b"hello");
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
            w.append(Bytes::from_static(b"too long!")).await,
            Err(BlobError::TooLong)
        ));
        w.append(Bytes::from_static(b"world")).await.unwrap();
        assert!(w.is_complete());
        assert_eq!(&r.next(100, short).await.unwrap()[..], b"world");
        assert_eq!(&blobs.read(1, 3, 4, short).await.unwrap()[..], b"lowo");
        blobs.delete(1).await;
        assert!(matches!(blobs.follow(1, 0).await, Err(BlobError::Gone)));
    }

    /// How many pieces blob `id` keeps in memory.
    fn pieces_kept(blobs: &Blobs, id: u64) -> usize {
        let progress = blobs.progress.lock().unwrap();
        progress.get(&id).map_or(0, |p| p.borrow().recent.len())
    }

    #[tokio::test]
    async fn followers_take_recent_pieces_from_memory_and_the_file_for_older_ones() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = Blobs::new(dir.path().to_path_buf(), false);
        let pieces: Vec<Bytes> = (0..6u8).map(|i| Bytes::from(vec![i; 10])).collect();
        let mut w = blobs.write(7, 60).await.unwrap();
        let mut near = blobs.follow(7, 0).await.unwrap();
        let mut far = blobs.follow(7, 0).await.unwrap();
        let short = Duration::from_millis(50);
        w.append(pieces[0].clone()).await.unwrap();
        let got = near.next(100, short).await.unwrap();
        assert_eq!(got, pieces[0]);
        assert_eq!(
            got.as_ptr(),
            pieces[0].as_ptr(),
            "taken from memory, not copied"
        );
        for p in &pieces[1..] {
            w.append(p.clone()).await.unwrap();
        }
        assert_eq!(pieces_kept(&blobs, 7), RECENT_PIECES);
        // The first two pieces left memory: `far` reads them from the file,
        // then takes the rest as written, each read stopping at a piece's end.
        let mut all = Vec::new();
        while all.len() < 60 {
            all.extend_from_slice(&far.next(25, short).await.unwrap());
        }
        assert_eq!(all, pieces.concat());
        // `near` is past the first piece, whose successor left memory too.
        let from_file = near.next(15, short).await.unwrap();
        assert_eq!(&from_file[..], &pieces.concat()[10..25]);
        let rest = near.next(100, short).await.unwrap();
        assert_eq!(&rest[..], &pieces[2][5..]);
        assert_eq!(rest.as_ptr(), pieces[2][5..].as_ptr());
        // The upload is over; its pieces go with its last follower.
        drop(w);
        drop(far);
        assert_eq!(pieces_kept(&blobs, 7), RECENT_PIECES);
        drop(near);
        assert_eq!(pieces_kept(&blobs, 7), 0);
        // An upload nobody follows keeps none once it stops.
        let mut w = blobs.write(8, 10).await.unwrap();
        w.append(pieces[0].clone()).await.unwrap();
        drop(w);
        assert_eq!(pieces_kept(&blobs, 8), 0);
    }
}
