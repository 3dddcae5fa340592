//! A file being sent, read off the runtime: one blocking thread per upload
//! reads it a chunk at a time and hashes it, a few chunks ahead of the task
//! that seals and sends them. Through `tokio::fs` each 64 KiB read was a hop
//! to the blocking pool and back with the sending task waiting, then a copy
//! out of tokio's buffer, and the digest was computed on that task too.

use std::fs::File;
use std::io::{self, Read};

use fastchat_crypto::Hasher;
use tokio::sync::mpsc;

/// Chunks read ahead of the sending task.
const READ_AHEAD: usize = 8;

/// The next bytes of the file, and after its last byte, its digest.
pub(crate) struct Piece {
    /// Up to one chunk of the file.
    pub bytes: Vec<u8>,
    /// The SHA-256 of the whole file, on the piece that ends it.
    pub digest: Option<[u8; 32]>,
}

/// The reader of one file being sent.
pub(crate) struct FileSource {
    pieces: mpsc::Receiver<io::Result<Piece>>,
}

impl FileSource {
    /// Reads the `size` bytes of `file` from its start: the first `skip`
    /// are only hashed (a resumed upload sent them before), the rest come
    /// in pieces of `chunk` bytes, the last one shorter and carrying the
    /// digest (empty if nothing is left to send).
    pub(crate) fn start(mut file: File, size: u64, skip: u64, chunk: usize) -> Self {
        let (tx, pieces) = mpsc::channel(READ_AHEAD);
        tokio::task::spawn_blocking(move || {
            let mut hasher = Hasher::default();
            let mut read = |n: usize, hasher: &mut Hasher| {
                let mut bytes = vec![0u8; n];
                file.read_exact(&mut bytes)?;
                hasher.update(&bytes);
                Ok::<_, io::Error>(bytes)
            };
            let skip = skip.min(size);
            let mut at = 0;
            while at < skip {
                let n = (skip - at).min(chunk as u64) as usize;
                if let Err(e) = read(n, &mut hasher) {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
                at += n as u64;
            }
            loop {
                let n = (size - at).min(chunk as u64) as usize;
                let piece = read(n, &mut hasher).map(|bytes| {
                    at += n as u64;
                    let digest = (at == size).then(|| hasher.clone().finish());
                    Piece { bytes, digest }
                });
                let last = piece.as_ref().map_or(true, |p| p.digest.is_some());
                if tx.blocking_send(piece).is_err() || last {
                    return;
                }
            }
        });
        Self { pieces }
    }

    /// The next piece; an error if the file could not be read as long as
    /// it was.
    pub(crate) async fn next(&mut self) -> io::Result<Piece> {
        self.pieces
            .recv()
            .await
            .unwrap_or_else(|| Err(io::Error::other("the file's reader stopped")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn all_pieces(source: &mut FileSource) -> io::Result<Vec<Piece>> {
        let mut pieces = Vec::new();
        loop {
            let piece = source.next().await?;
            let last = piece.digest.is_some();
            pieces.push(piece);
            if last {
                return Ok(pieces);
            }
        }
    }

    #[tokio::test]
    async fn pieces_follow_the_skipped_part_and_the_last_carries_the_whole_digest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let content: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        std::fs::write(&path, &content).unwrap();
        let open = || File::open(&path).unwrap();
        let mut source = FileSource::start(open(), 1000, 300, 256);
        let pieces = all_pieces(&mut source).await.unwrap();
        let lens: Vec<usize> = pieces.iter().map(|p| p.bytes.len()).collect();
        assert_eq!(lens, [256, 256, 188]);
        let sent: Vec<u8> = pieces.iter().flat_map(|p| p.bytes.clone()).collect();
        assert_eq!(sent, content[300..]);
        assert_eq!(
            pieces.last().unwrap().digest,
            Some(fastchat_crypto::file_digest(&content))
        );
        // Everything sent before: one empty piece with the digest.
        let mut source = FileSource::start(open(), 1000, 1000, 256);
        let pieces = all_pieces(&mut source).await.unwrap();
        assert_eq!(pieces.len(), 1);
        assert!(pieces[0].bytes.is_empty());
        assert_eq!(
            pieces[0].digest,
            Some(fastchat_crypto::file_digest(&content))
        );
    }

    #[tokio::test]
    async fn a_file_shorter_than_it_was_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, [1u8; 500]).unwrap();
        let mut source = FileSource::start(File::open(&path).unwrap(), 1000, 0, 256);
        assert!(all_pieces(&mut source).await.is_err());
    }
}
