//! Sending an image: one stream, an offer the node accepts or refuses before
//! any byte moves, then the chunks from wherever the node says it already
//! is. The file is read and encrypted one chunk at a time.

use fastchat_proto::MessageId;
use fastchat_proto::image::{ImageAccept, ImageOffer, ImageStored};
use fastchat_proto::limits::MAX_CONTROL_FRAME;
use fastchat_proto::stream::StreamKind;
use fastchat_transport::quinn::Connection;
use fastchat_transport::{read_frame, write_frame};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::error::ClientError;
use crate::transfer::{SEALED_CHUNK, UploadRecord, chunk_count, chunk_len};
use crate::types::UploadReport;

/// Uploads `rec`, resuming where the node is; `progress(done, total)` gets
/// plaintext bytes.
pub(crate) async fn run(
    conn: &Connection,
    rec: &UploadRecord,
    progress: &(dyn Fn(u64, u64) + Send + Sync),
) -> Result<UploadReport, ClientError> {
    let lost = |_| ClientError::Disconnected;
    let (mut send, mut recv) = conn
        .open_bi()
        .await
        .map_err(|_| ClientError::Disconnected)?;
    write_frame(&mut send, &StreamKind::ImageUpload, 64)
        .await
        .map_err(lost)?;
    let offer = ImageOffer {
        id: MessageId(rec.id),
        to: rec.to.clone(),
        total_len: rec.total_len,
        header: rec.header.clone(),
        nonce_prefix: rec.nonce_prefix,
        signature: rec.signature.clone(),
    };
    write_frame(&mut send, &offer, MAX_CONTROL_FRAME)
        .await
        .map_err(lost)?;
    let mut buf = Vec::new();
    let have = match read_frame::<ImageAccept>(&mut recv, MAX_CONTROL_FRAME, &mut buf)
        .await
        .map_err(lost)?
    {
        Some(ImageAccept::Continue { have }) => have.min(rec.total_len),
        Some(ImageAccept::Refused(e)) => return Err(ClientError::Refused(e)),
        None => return Err(ClientError::Disconnected),
    };

    let mut file = tokio::fs::File::open(&rec.path)
        .await
        .map_err(ClientError::io(&rec.path))?;
    let cipher = rec.cipher();
    let chunks = chunk_count(rec.size);
    let first = have / SEALED_CHUNK;
    let mut skip = (have % SEALED_CHUNK) as usize;
    file.seek(std::io::SeekFrom::Start(
        first * fastchat_proto::limits::IMAGE_CHUNK as u64,
    ))
    .await
    .map_err(ClientError::io(&rec.path))?;
    let mut plain = vec![0u8; fastchat_proto::limits::IMAGE_CHUNK];
    let mut sent = 0u64;
    for i in first..chunks {
        let len = chunk_len(rec.size, i);
        file.read_exact(&mut plain[..len])
            .await
            .map_err(|e| ClientError::Unusable {
                path: rec.path.clone(),
                why: format!("it changed while being sent ({e})"),
            })?;
        let sealed = cipher.seal(i as u32, i + 1 == chunks, &plain[..len])?;
        sent += (sealed.len() - skip) as u64;
        // Handed over as it is: `write_all` would copy the chunk once more.
        send.write_chunk(bytes::Bytes::from(sealed).slice(skip..))
            .await
            .map_err(|_| ClientError::Disconnected)?;
        skip = 0;
        progress(
            (i * fastchat_proto::limits::IMAGE_CHUNK as u64 + len as u64).min(rec.size),
            rec.size,
        );
    }
    if rec.size == 0 {
        progress(0, 0);
    }
    send.finish().map_err(|_| ClientError::Disconnected)?;
    match read_frame::<ImageStored>(&mut recv, MAX_CONTROL_FRAME, &mut buf)
        .await
        .map_err(lost)?
    {
        Some(ImageStored::Stored) => Ok(UploadReport {
            id: MessageId(rec.id),
            bytes: rec.size,
            resumed_from: have,
            sent,
        }),
        Some(ImageStored::Failed(e)) => Err(ClientError::Refused(e)),
        None => Err(ClientError::Disconnected),
    }
}
