//! Image streams. An upload is written to a blob file as it arrives; every
//! recipient's fetch streams from that file, following it while it grows, so
//! an online recipient gets bytes as they reach the node (cut-through) and
//! an offline one gets them later. Either side can resume from an offset.
//! The blob is deleted once every recipient has said it has the image.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use fastchat_proto::control::{Relation, Response};
use fastchat_proto::envelope::Envelope;
use fastchat_proto::frame::encode_body;
use fastchat_proto::image::{
    ImageAccept, ImageFetch, ImageFetchReply, ImageOffer, ImageStored, ImageTarget,
};
use fastchat_proto::limits::{MAX_CONTROL_FRAME, image_plaintext_len};
use fastchat_proto::{ErrorCode, MessageId, ProtoError};
use fastchat_transport::quinn::{RecvStream, SendStream};
use fastchat_transport::{StreamError, read_frame, write_frame};

use crate::blobs::BlobError;
use crate::shared::{Live, Shared};
use crate::store::{BlobLocation, StoreError};

/// Bytes gathered before each write to the blob file (and progress update).
const WRITE_CHUNK: usize = 256 * 1024;
/// Bytes read from the blob file per send to a fetching recipient.
const READ_CHUNK: usize = 256 * 1024;
/// Bytes per blob request over the bus (NATS's default payload limit is 1 MiB).
const BUS_CHUNK: u32 = 512 * 1024;

fn blob_err(e: BlobError) -> StreamError {
    StreamError::service(e)
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// Checks an offer and works out who receives it.
async fn admit(shared: &Shared, user: &str, offer: &ImageOffer) -> Result<Vec<String>, ProtoError> {
    if offer.header.len() > 4096 || offer.signature.len() > 64 {
        return Err(ProtoError::new(
            ErrorCode::BadRequest,
            "oversized image header",
        ));
    }
    let plain = image_plaintext_len(offer.total_len)
        .ok_or_else(|| ProtoError::new(ErrorCode::BadRequest, "impossible image length"))?;
    if plain > shared.images.max_bytes {
        return Err(ProtoError::new(
            ErrorCode::TooLarge,
            format!(
                "the image is {}; this node accepts images up to {}",
                mib(plain),
                mib(shared.images.max_bytes)
            ),
        ));
    }
    match &offer.to {
        ImageTarget::Direct(to) => {
            if shared.store.relation(user, to).await? != Relation::Friends {
                return Err(ProtoError::new(
                    ErrorCode::NotFriends,
                    format!("{to} is not your friend; send a friend request first"),
                ));
            }
            Ok(vec![to.clone()])
        }
        ImageTarget::Group { id, epoch } => {
            let group = shared
                .store
                .group(*id)
                .await?
                .ok_or_else(|| ProtoError::new(ErrorCode::UnknownGroup, "no such group"))?;
            if !group.members.iter().any(|m| m == user) {
                return Err(ProtoError::new(
                    ErrorCode::NotMember,
                    "you are not a member of this group",
                ));
            }
            if group.epoch != *epoch {
                return Err(ProtoError::new(
                    ErrorCode::StaleEpoch,
                    "the group has a newer key; sync and resend",
                ));
            }
            Ok(group.members.into_iter().filter(|m| m != user).collect())
        }
    }
}

pub(crate) async fn serve_upload(
    shared: &Shared,
    user: &str,
    send: &mut SendStream,
    recv: &mut RecvStream,
) -> Result<(), StreamError> {
    let mut buf = Vec::new();
    let offer: ImageOffer = read_frame(recv, MAX_CONTROL_FRAME, &mut buf)
        .await?
        .ok_or(StreamError::Truncated)?;
    let refuse = |e: ProtoError| ImageAccept::Refused(e);
    let recipients = match admit(shared, user, &offer).await {
        Ok(r) => r,
        Err(e) => return write_frame(send, &refuse(e), MAX_CONTROL_FRAME).await,
    };
    let envelope = Envelope::Image {
        id: offer.id,
        from: user.to_string(),
        group: match offer.to {
            ImageTarget::Direct(_) => None,
            ImageTarget::Group { id, epoch } => Some((id, epoch)),
        },
        header: offer.header.clone(),
        nonce_prefix: offer.nonce_prefix,
        total_len: offer.total_len,
        signature: offer.signature.clone(),
    };
    let envelope = encode_body(&envelope)?;
    let start = match shared
        .store
        .begin_blob(
            user,
            offer.id,
            offer.total_len,
            recipients,
            envelope.clone(),
            shared.images.quota,
            shared.bus.node_id(),
        )
        .await
    {
        Ok(s) => s,
        Err(StoreError::QuotaExceeded) => {
            let e = ProtoError::new(
                ErrorCode::QuotaExceeded,
                format!(
                    "your images waiting on this node would exceed your {} quota; wait until recipients collect them",
                    mib(shared.images.quota)
                ),
            );
            return write_frame(send, &refuse(e), MAX_CONTROL_FRAME).await;
        }
        Err(e) => return write_frame(send, &refuse(e.into()), MAX_CONTROL_FRAME).await,
    };
    if start.total_len != offer.total_len {
        let e = ProtoError::new(ErrorCode::BadRequest, "this id was used for another image");
        return write_frame(send, &refuse(e), MAX_CONTROL_FRAME).await;
    }
    if let Some(previous) = &start.previous_owner {
        // Resumed here after a failover: this node starts the file afresh
        // (the client re-encrypts identically from the offset we give).
        shared.bus.drop_blob(previous, start.blob_id);
    }
    let mut blob = shared
        .blobs
        .write(start.blob_id, start.total_len)
        .await
        .map_err(blob_err)?;
    // Recipients hear of the image now, so they can fetch while it
    // uploads; only now, since a fetch that came before the file existed
    // found no blob and failed (CI saw a recipient who was quick enough).
    let envelope = Arc::new(envelope);
    for (to, seq) in start.queued {
        shared.push(&to, Live::new(seq, envelope.clone()));
    }
    write_frame(
        send,
        &ImageAccept::Continue { have: blob.have() },
        MAX_CONTROL_FRAME,
    )
    .await?;

    // Two pieces: the next fills from the stream while the last is
    // written. Written in turn, the stream stood still during each write
    // (a trip to the blocking pool and back) and the sender with it. A
    // written piece is handed to followers as it is, so each is a fresh
    // buffer.
    let mut filling = BytesMut::with_capacity(WRITE_CHUNK);
    let mut writing = Bytes::new();
    let mut received = blob.have();
    loop {
        let fill = async {
            while filling.len() < WRITE_CHUNK {
                let Some(c) = recv.read_chunk(WRITE_CHUNK - filling.len(), true).await? else {
                    return Ok::<_, StreamError>(true);
                };
                received += c.bytes.len() as u64;
                if received > start.total_len {
                    return Err(blob_err(BlobError::TooLong));
                }
                filling.extend_from_slice(&c.bytes);
            }
            Ok(false)
        };
        let write = async {
            if writing.is_empty() {
                return Ok(());
            }
            blob.append(std::mem::take(&mut writing)).await
        };
        let (done, wrote) = tokio::join!(fill, write);
        wrote.map_err(blob_err)?;
        let done = done?;
        writing = std::mem::replace(&mut filling, BytesMut::with_capacity(WRITE_CHUNK)).freeze();
        if done {
            if !writing.is_empty() {
                blob.append(writing).await.map_err(blob_err)?;
            }
            break;
        }
    }
    let outcome = if blob.is_complete() {
        blob.finish().await.map_err(blob_err)?;
        ImageStored::Stored
    } else {
        ImageStored::Failed(ProtoError::new(
            ErrorCode::BadRequest,
            "the upload ended before the offered length",
        ))
    };
    write_frame(send, &outcome, MAX_CONTROL_FRAME).await
}

pub(crate) async fn serve_fetch(
    shared: &Shared,
    user: &str,
    send: &mut SendStream,
    recv: &mut RecvStream,
) -> Result<(), StreamError> {
    let mut buf = Vec::new();
    let fetch: ImageFetch = read_frame(recv, MAX_CONTROL_FRAME, &mut buf)
        .await?
        .ok_or(StreamError::Truncated)?;
    let found = match shared.store.blob_for(user, &fetch.from, fetch.id).await {
        Ok(f) => f,
        Err(e) => {
            let reply = ImageFetchReply::Refused(e.into());
            return write_frame(send, &reply, MAX_CONTROL_FRAME).await;
        }
    };
    let Some(blob) = found.filter(|b| fetch.offset <= b.total_len) else {
        let reply = ImageFetchReply::Refused(ProtoError::new(
            ErrorCode::UnknownUser,
            "no such image waiting for you",
        ));
        return write_frame(send, &reply, MAX_CONTROL_FRAME).await;
    };
    write_frame(
        send,
        &ImageFetchReply::Sending {
            total_len: blob.total_len,
        },
        MAX_CONTROL_FRAME,
    )
    .await?;
    if shared.holds_blob(&blob.owner) {
        send_local(shared, blob.blob_id, fetch.offset, blob.total_len, send).await
    } else {
        send_remote(shared, &blob, fetch.offset, send).await
    }
}

/// Streams a blob in this node's directory, following an upload in progress.
async fn send_local(
    shared: &Shared,
    blob_id: u64,
    offset: u64,
    total_len: u64,
    send: &mut SendStream,
) -> Result<(), StreamError> {
    let mut reader = shared
        .blobs
        .follow(blob_id, offset)
        .await
        .map_err(blob_err)?;
    if offset >= total_len {
        return Ok(());
    }
    // The next piece is read from the file while the last goes out.
    // A stalled upload ends this fetch; the recipient asks again.
    let stall = shared.images.stall;
    let mut bytes = reader.next(READ_CHUNK, stall).await.map_err(blob_err)?;
    let mut pos = offset + bytes.len() as u64;
    loop {
        // Handed over as it is: `write_all` would copy it into quinn again.
        let sent = send.write_chunk(bytes);
        if pos >= total_len {
            sent.await?;
            return Ok(());
        }
        let (sent, next) = tokio::join!(sent, reader.next(READ_CHUNK, stall));
        sent?;
        bytes = next.map_err(blob_err)?;
        pos += bytes.len() as u64;
    }
}

/// Streams a blob held by another node, in bus-sized chunks, one request
/// ahead so the bus round trip overlaps the QUIC send.
async fn send_remote(
    shared: &Shared,
    blob: &BlobLocation,
    offset: u64,
    send: &mut SendStream,
) -> Result<(), StreamError> {
    let bus_err = |e: crate::bus::BusError| StreamError::service(e);
    let fetch = |at: u64| {
        shared
            .bus
            .fetch_blob(&blob.owner, blob.blob_id, at, BUS_CHUNK)
    };
    let mut pos = offset;
    let mut stalled_since = tokio::time::Instant::now();
    while pos < blob.total_len {
        let bytes = fetch(pos).await.map_err(bus_err)?;
        if bytes.is_empty() {
            if stalled_since.elapsed() > shared.images.stall {
                return Err(blob_err(BlobError::Stalled));
            }
            continue;
        }
        stalled_since = tokio::time::Instant::now();
        let next = pos + bytes.len() as u64;
        // Ask for the next chunk while this one goes out.
        let (sent, ahead) = tokio::join!(send.write_chunk(bytes.into()), async {
            if next < blob.total_len {
                Some(fetch(next).await)
            } else {
                None
            }
        });
        sent?;
        pos = next;
        if let Some(ahead) = ahead {
            let bytes = ahead.map_err(bus_err)?;
            if !bytes.is_empty() {
                stalled_since = tokio::time::Instant::now();
                pos += bytes.len() as u64;
                send.write_chunk(bytes.into()).await?;
            }
        }
    }
    Ok(())
}

pub(crate) async fn received(
    shared: &Shared,
    user: &str,
    from: &str,
    id: MessageId,
) -> Result<Response, ProtoError> {
    if let Some(blob) = shared.store.blob_received(user, from, id).await? {
        if shared.holds_blob(&blob.owner) {
            // Unlinking a large file frees its pages: 12 ms for 50 MiB, which
            // the recipient, whose file is already in place, need not wait.
            let blobs = shared.blobs.clone();
            tokio::spawn(async move { blobs.delete(blob.blob_id).await });
        } else {
            shared.bus.drop_blob(&blob.owner, blob.blob_id);
        }
    }
    Ok(Response::Done)
}
