//! Sending an image: one stream, an offer the node accepts or refuses before
//! any byte moves, then the chunks from wherever the node says it already
//! is. The file is read and hashed on a thread of its own (`file_source`)
//! and sealed here one chunk at a time.

use fastchat_crypto::transcript;
use fastchat_proto::MessageId;
use fastchat_proto::image::{ImageAccept, ImageOffer, ImageStored, ImageTarget};
use fastchat_proto::limits::IMAGE_CHUNK;
use fastchat_proto::limits::MAX_CONTROL_FRAME;
use fastchat_proto::stream::StreamKind;
use fastchat_transport::quinn::Connection;
use fastchat_transport::{read_frame, write_frame};

use crate::error::ClientError;
use crate::file_source::FileSource;
use crate::room::Me;
use crate::transfer::{SEALED_CHUNK, UploadRecord, chunk_count, chunk_len, stream_len};
use crate::types::UploadReport;

/// Uploads `rec`, resuming where the node is; `progress(done, total)` gets
/// plaintext bytes.
pub(crate) async fn run(
    conn: &Connection,
    me: &Me,
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

    let file = std::fs::File::open(&rec.path).map_err(ClientError::io(&rec.path))?;
    let changed = |e: std::io::Error| ClientError::Unusable {
        path: rec.path.clone(),
        why: format!("it changed while being sent ({e})"),
    };
    let cipher = rec.cipher();
    let group = match rec.to {
        ImageTarget::Group { id, epoch } => Some((id, epoch)),
        ImageTarget::Direct(_) => None,
    };
    let stream = stream_len(rec.size, group.is_some()).ok_or_else(|| ClientError::Unusable {
        path: rec.path.clone(),
        why: "it is too large".into(),
    })?;
    let chunks = chunk_count(stream);
    let first = have / SEALED_CHUNK;
    let mut skip = (have % SEALED_CHUNK) as usize;
    // The digest covers the whole file: a resumed upload hashes again what
    // went before the chunk it resumes at (a fresh one reads nothing twice).
    let mut source = FileSource::start(file, rec.size, first * IMAGE_CHUNK as u64, IMAGE_CHUNK);
    let mut trailer: Option<Vec<u8>> = None;
    let mut sent = 0u64;
    for i in first..chunks {
        let len = chunk_len(stream, i);
        let begin = i * IMAGE_CHUNK as u64;
        let from_file = rec.size.saturating_sub(begin).min(len as u64) as usize;
        // The file's pieces end with its digest; chunks after that hold
        // only the trailer.
        let mut plain = if trailer.is_none() {
            let piece = source.next().await.map_err(changed)?;
            if piece.bytes.len() != from_file {
                return Err(changed(std::io::ErrorKind::UnexpectedEof.into()));
            }
            if let Some(digest) = piece.digest {
                trailer = Some(seal_trailer(me, rec, group, digest));
            }
            piece.bytes
        } else {
            Vec::with_capacity(len)
        };
        if from_file < len {
            // The file has ended inside this chunk: its trailer follows.
            let t = trailer.as_ref().ok_or_else(|| {
                changed(std::io::Error::other(
                    "its digest did not come with its end",
                ))
            })?;
            let at = (begin + from_file as u64 - rec.size) as usize;
            plain.extend_from_slice(&t[at..at + len - from_file]);
        }
        let sealed = cipher.seal(i as u32, i + 1 == chunks, &plain)?;
        sent += (sealed.len() - skip) as u64;
        // Handed over as it is: `write_all` would copy the chunk once more.
        send.write_chunk(bytes::Bytes::from(sealed).slice(skip..))
            .await
            .map_err(|_| ClientError::Disconnected)?;
        skip = 0;
        progress((begin + from_file as u64).min(rec.size), rec.size);
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

/// The trailer after the file's bytes: its digest, and in a group our
/// signature over it (`transfer::trailer_len`).
fn seal_trailer(
    me: &Me,
    rec: &UploadRecord,
    group: Option<(u64, u64)>,
    digest: [u8; 32],
) -> Vec<u8> {
    let mut trailer = digest.to_vec();
    if let Some((gid, epoch)) = group {
        trailer.extend(me.signing.sign(&transcript::group_image_digest(
            gid, epoch, &me.name, &rec.id, &digest,
        )));
    }
    trailer
}
