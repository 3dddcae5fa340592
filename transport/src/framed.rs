//! Length-prefixed frames on quinn streams, with the limit checked before
//! the body is read.

use std::time::Duration;

use fastchat_proto::{Decode, Encode};
use fastchat_proto::{FrameError, decode, encode_frame, frame_len};
use quinn::{ReadExactError, RecvStream, SendStream};

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

/// Reads one frame's body onto the end of `buf`, undecoded, and returns
/// where it lies there (several frames can then be read in place, without
/// a copy each); otherwise as [`read_frame`].
pub async fn append_frame(
    recv: &mut RecvStream,
    limit: usize,
    buf: &mut Vec<u8>,
) -> Result<Option<std::ops::Range<usize>>, StreamError> {
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
pub async fn write_frames<'a, T: Encode + 'a>(
    send: &mut SendStream,
    values: impl IntoIterator<Item = &'a T>,
    limit: usize,
) -> Result<(), StreamError> {
    let mut out = Vec::with_capacity(4096);
    for value in values {
        encode_frame(value, limit, &mut out)?;
    }
    send.write_chunk(out.into()).await?;
    Ok(())
}
