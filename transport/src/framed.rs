//! Length-prefixed frames on quinn streams, with the limit checked before
//! the body is read.

use std::ops::Range;
use std::time::Duration;

use bytes::Bytes;
use fastchat_proto::{Decode, Encode};
use fastchat_proto::{FrameError, decode, encode_frame, frame_len};
use quinn::{ReadExactError, RecvStream, SendStream};
use tokio::time::Instant;

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The frame was too large or malformed.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The stream ended in the middle of a frame.
    #[error("the stream ended in the middle of a frame")]
    Truncated,
    /// The peer started a frame and did not finish it in time.
    #[error("the peer did not finish a frame within {} s", FRAME_TIMEOUT.as_secs())]
    Stalled,
    /// Reading failed: the stream was reset or the connection closed.
    #[error("the connection failed: {0}")]
    Read(#[from] quinn::ReadError),
    /// Writing failed: the stream was stopped or the connection closed.
    #[error("the connection failed: {0}")]
    Write(#[from] quinn::WriteError),
    /// A stream could not be opened: the connection is gone.
    #[error("the connection failed: {0}")]
    Closed(#[from] quinn::ConnectionError),
    /// The stream was finished or reset already.
    #[error("the stream is closed: {0}")]
    Finished(#[from] quinn::ClosedStream),
    /// The peer broke the protocol.
    #[error("the peer broke the protocol: {0}")]
    Protocol(&'static str),
    /// The peer did not do its part in time.
    #[error("the peer did not answer in time: {0}")]
    Timeout(&'static str),
    /// What serves the stream (a store, a bus, a file) failed.
    #[error(transparent)]
    Service(Box<dyn std::error::Error + Send + Sync>),
}

impl StreamError {
    /// A [`StreamError::Service`] keeping `e` as its cause.
    pub fn service(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Service(Box::new(e))
    }
}

/// Once a frame's first byte has arrived, the rest must follow within this
/// long: a peer that starts a frame and never finishes it (slow-loris) is cut
/// off instead of holding the stream and its buffer forever.
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads one frame into `buf` and decodes it. `Ok(None)` means the peer
/// finished the stream cleanly between frames. Waiting for a frame to start
/// has no limit (streams may be idle); finishing one has [`FRAME_TIMEOUT`].
pub async fn read_frame<T: Decode<()>>(
    recv: &mut RecvStream,
    limit: usize,
    buf: &mut Vec<u8>,
) -> Result<Option<T>, StreamError> {
    buf.clear();
    match append_frame(recv, limit, buf).await? {
        Some(_) => Ok(Some(decode(buf)?)),
        None => Ok(None),
    }
}

/// Reads one frame's body onto the end of `buf`; otherwise as [`read_frame`].
async fn append_frame(
    recv: &mut RecvStream,
    limit: usize,
    buf: &mut Vec<u8>,
) -> Result<Option<Range<usize>>, StreamError> {
    let mut prefix = [0u8; 4];
    match recv.read(&mut prefix[..1]).await? {
        None => return Ok(None),
        Some(0) => return Err(StreamError::Truncated),
        Some(_) => {}
    }
    let start = buf.len();
    let rest = async {
        match recv.read_exact(&mut prefix[1..]).await {
            Ok(()) => {}
            Err(ReadExactError::FinishedEarly(_)) => return Err(StreamError::Truncated),
            Err(ReadExactError::ReadError(e)) => return Err(e.into()),
        }
        let len = frame_len(prefix, limit)?;
        buf.resize(start + len, 0);
        match recv.read_exact(&mut buf[start..]).await {
            Ok(()) => Ok(()),
            Err(ReadExactError::FinishedEarly(_)) => Err(StreamError::Truncated),
            Err(ReadExactError::ReadError(e)) => Err(e.into()),
        }
    };
    match tokio::time::timeout(FRAME_TIMEOUT, rest).await {
        Ok(r) => r?,
        Err(_) => return Err(StreamError::Stalled),
    }
    Ok(Some(start..buf.len()))
}

/// Chunks taken from quinn by one read of a [`FrameReader`].
const CHUNKS_PER_READ: usize = 16;
/// A [`FrameReader`]'s first buffer, in bytes.
const FIRST_CAPACITY: usize = 8192;
/// The most buffer a [`FrameReader`] keeps for its next stream: a page of
/// a backlog (up to a thousand texts) fits, a rare huge batch is let go.
const KEPT_CAPACITY: usize = 1 << 20;

/// The frames of a stream that carries many, one after another (a batch of
/// texts, of deliveries, of acks), read as many chunks at a time as have
/// arrived. Reading each frame's prefix and body apart, each read under a
/// timer of its own, cost the node more per text than the rest of its
/// relaying did. The bodies stay where they were read, for decoding in
/// place.
pub struct FrameReader {
    /// The stream's bytes as read, length prefixes included.
    buf: Vec<u8>,
    /// Where the first byte not yet in a complete frame lies.
    parsed: usize,
    /// The bodies of the complete frames, in order.
    spans: Vec<Range<usize>>,
    limit: usize,
    /// When the frame now partly read began to arrive.
    started: Option<Instant>,
}

impl FrameReader {
    /// A reader refusing any frame over `limit` bytes as soon as its prefix
    /// arrives.
    pub fn new(limit: usize) -> Self {
        Self {
            // Most batches fit: fewer regrowths, each a copy of all read so far.
            buf: Vec::with_capacity(FIRST_CAPACITY),
            parsed: 0,
            spans: Vec::new(),
            limit,
            started: None,
        }
    }

    /// Forgets the frames read, for the next stream, keeping the buffer
    /// they grew: a fresh one per stream regrew from 8 KiB, copying all it
    /// held each time, which for a backlog's pages of hundreds of texts
    /// cost a client more per text than the frame's decoding.
    pub fn clear(&mut self) {
        self.buf.clear();
        self.buf.shrink_to(KEPT_CAPACITY);
        self.parsed = 0;
        self.spans.clear();
        self.started = None;
    }

    /// Waits for more of the stream, takes all that has arrived, and splits
    /// off the frames it completes; returns how many bytes came, or `None`
    /// once the peer finished the stream between frames. Between frames
    /// the wait is limited by `idle` when given; a frame, once started,
    /// must be complete within [`FRAME_TIMEOUT`].
    pub async fn fill(
        &mut self,
        recv: &mut RecvStream,
        idle: Option<Duration>,
    ) -> Result<Option<usize>, StreamError> {
        let mut chunks: [Bytes; CHUNKS_PER_READ] = Default::default();
        let read = recv.read_chunks(&mut chunks);
        let got = match (self.started, idle) {
            (Some(at), _) => tokio::time::timeout_at(at + FRAME_TIMEOUT, read)
                .await
                .map_err(|_| StreamError::Stalled)??,
            (None, Some(idle)) => tokio::time::timeout(idle, read)
                .await
                .map_err(|_| StreamError::Timeout("the next frame"))??,
            (None, None) => read.await?,
        };
        let Some(n) = got else {
            return match self.parsed == self.buf.len() {
                true => Ok(None),
                false => Err(StreamError::Truncated),
            };
        };
        let mut bytes = 0;
        for chunk in &chunks[..n] {
            bytes += chunk.len();
            self.buf.extend_from_slice(chunk);
        }
        self.split()?;
        self.started = match self.parsed == self.buf.len() {
            true => None,
            false => self.started.or_else(|| Some(Instant::now())),
        };
        Ok(Some(bytes))
    }

    fn split(&mut self) -> Result<(), FrameError> {
        while let Some(prefix) = self.buf.get(self.parsed..self.parsed + 4) {
            let len = frame_len(prefix.try_into().expect("four bytes"), self.limit)?;
            let start = self.parsed + 4;
            if self.buf.len() < start + len {
                break;
            }
            self.spans.push(start..start + len);
            self.parsed = start + len;
        }
        Ok(())
    }

    /// How many complete frames have been read.
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// Whether no frame is complete yet.
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Bytes read so far, prefixes and any partial frame included.
    pub fn held(&self) -> usize {
        self.buf.len()
    }

    /// The bodies of the complete frames, in order.
    pub fn frames(&self) -> impl ExactSizeIterator<Item = &[u8]> {
        self.spans.iter().map(|s| &self.buf[s.clone()])
    }
}

/// Readers kept at most by a [`ReaderPool`].
const POOLED_READERS: usize = 8;

/// Cleared [`FrameReader`]s kept for the next streams of an endpoint that
/// serves many at once (the node's text streams): a fresh reader per
/// stream regrew its buffer from 8 KiB, copying all it held at each step.
pub struct ReaderPool {
    limit: usize,
    kept: std::sync::Mutex<Vec<FrameReader>>,
}

impl ReaderPool {
    /// A pool of readers refusing any frame over `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            kept: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// A kept reader, or a fresh one.
    pub fn take(&self) -> FrameReader {
        let kept = self.kept.lock().expect("reader pool lock").pop();
        kept.unwrap_or_else(|| FrameReader::new(self.limit))
    }

    /// Clears `reader` and keeps it, unless enough are kept already.
    pub fn give(&self, mut reader: FrameReader) {
        reader.clear();
        let mut kept = self.kept.lock().expect("reader pool lock");
        if kept.len() < POOLED_READERS {
            kept.push(reader);
        }
    }
}

/// Reads every frame until the peer finishes the stream into `reader`
/// (cleared first), refusing more than `max_frames` of them; no limit on
/// waiting between frames.
pub async fn read_frames_to_end(
    recv: &mut RecvStream,
    reader: &mut FrameReader,
    max_frames: usize,
) -> Result<(), StreamError> {
    reader.clear();
    while reader.fill(recv, None).await?.is_some() {
        if reader.len() > max_frames {
            return Err(StreamError::Protocol(
                "more frames on a stream than a batch may hold",
            ));
        }
    }
    Ok(())
}

/// Writes one frame.
pub async fn write_frame<T: Encode>(
    send: &mut SendStream,
    value: &T,
    limit: usize,
) -> Result<(), StreamError> {
    let mut out = Vec::with_capacity(128);
    encode_frame(value, limit, &mut out)?;
    send.write_chunk(out.into()).await?;
    Ok(())
}

/// Writes many frames with one write, so a batch costs one syscall path.
/// The buffer is handed to quinn as it is: `write_all` copied it once more.
/// `size` is about how many bytes they take, so the buffer is allocated once.
pub async fn write_frames<'a, T: Encode + 'a>(
    send: &mut SendStream,
    values: impl IntoIterator<Item = &'a T>,
    limit: usize,
    size: usize,
) -> Result<(), StreamError> {
    let mut out = Vec::with_capacity(size);
    for value in values {
        encode_frame(value, limit, &mut out)?;
    }
    send.write_chunk(out.into()).await?;
    Ok(())
}

/// Opens a stream's contents: its kind (`head`), then `values`, all with one
/// write; otherwise as [`write_frames`].
pub async fn write_headed_frames<'a, H: Encode, T: Encode + 'a>(
    send: &mut SendStream,
    head: &H,
    values: impl IntoIterator<Item = &'a T>,
    limit: usize,
    size: usize,
) -> Result<(), StreamError> {
    let mut out = Vec::with_capacity(size + 16);
    encode_frame(head, limit, &mut out)?;
    for value in values {
        encode_frame(value, limit, &mut out)?;
    }
    send.write_chunk(out.into()).await?;
    Ok(())
}
