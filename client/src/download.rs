//! Receiving an image: fetch the ciphertext from where the partial file
//! ends, decrypt chunk by chunk into a hidden partial file, check size and
//! SHA-256, then link it into place under a name that is never taken (an
//! existing file is never overwritten) and tell the node it may forget it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use fastchat_crypto::Hasher;
use fastchat_proto::MessageId;
use fastchat_proto::control::Request;
use fastchat_proto::image::{AttachmentKind, ImageFetch, ImageFetchReply};
use fastchat_proto::limits::{IMAGE_CHUNK, MAX_CONTROL_FRAME};
use fastchat_proto::stream::StreamKind;
use fastchat_transport::quinn::Connection;
use fastchat_transport::{read_frame, write_frame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::core::Core;
use crate::error::ClientError;
use crate::keystore::{TransferState, Transfers};
use crate::transfer::{
    DownloadRecord, SEALED_CHUNK, candidate, chunk_count, chunk_len, safe_file_name,
};
use crate::types::{Attachment, Direction, InboxItem, InboxKind, Progress};

/// Where received files go inside a home.
pub const DOWNLOADS_DIR: &str = "downloads";

/// Starts downloading `rec` unless it is already running.
pub(crate) fn spawn(core: Arc<Core>, conn: Connection, rec: DownloadRecord) {
    let key = (rec.from.clone(), rec.id);
    if !core
        .active_downloads
        .lock()
        .expect("lock")
        .insert(key.clone())
    {
        return;
    }
    tokio::spawn(async move {
        let result = run(&core, &conn, &rec).await;
        core.active_downloads.lock().expect("lock").remove(&key);
        match result {
            Ok(item) => {
                core.events.send(item);
                let _ = core.changes.send(());
            }
            Err(ClientError::Disconnected) => {
                tracing::debug!(from = %rec.from, "download interrupted; it resumes on the next connection")
            }
            Err(e) => tracing::warn!(from = %rec.from, error = %e, "download failed"),
        }
        // Wake anyone waiting for downloads, whatever happened.
        core.progress.send(Progress {
            id: MessageId(rec.id),
            direction: Direction::Down,
            peer: rec.from.clone(),
            title: rec.header.title.clone(),
            done: rec.header.size,
            total: rec.header.size,
            resumed_from: 0,
        });
    });
}

async fn run(
    core: &Core,
    conn: &Connection,
    rec: &DownloadRecord,
) -> Result<InboxItem, ClientError> {
    let dir = core.home.join(DOWNLOADS_DIR);
    crate::private::create_dir(&dir).map_err(ClientError::io(&dir))?;
    let partial = dir.join(format!(
        ".partial-{}-{}",
        safe_file_name(&rec.from),
        MessageId(rec.id).to_hex()
    ));
    let size = rec.header.size;
    let chunks = chunk_count(size);

    // Keep only whole chunks of an earlier attempt, and re-hash them.
    let mut file = crate::private::file_options()
        .create(true)
        .read(true)
        .write(true)
        .truncate(false)
        .open(&partial)
        .await
        .map_err(ClientError::io(&partial))?;
    let existing = file
        .metadata()
        .await
        .map_err(ClientError::io(&partial))?
        .len();
    let mut index = (existing / IMAGE_CHUNK as u64).min(chunks - 1);
    if size == 0 {
        index = 0;
    }
    let kept = (index * IMAGE_CHUNK as u64).min(size);
    file.set_len(kept)
        .await
        .map_err(ClientError::io(&partial))?;
    let mut hasher = Hasher::default();
    {
        let mut left = kept;
        let mut buf = vec![0u8; IMAGE_CHUNK];
        while left > 0 {
            let n = (left as usize).min(buf.len());
            file.read_exact(&mut buf[..n])
                .await
                .map_err(ClientError::io(&partial))?;
            hasher.update(&buf[..n]);
            left -= n as u64;
        }
    }

    let offset = index * SEALED_CHUNK;
    let lost = |_| ClientError::Disconnected;
    let (mut send, mut recv) = conn
        .open_bi()
        .await
        .map_err(|_| ClientError::Disconnected)?;
    write_frame(&mut send, &StreamKind::ImageFetch, 64)
        .await
        .map_err(lost)?;
    let fetch = ImageFetch {
        from: rec.from.clone(),
        id: MessageId(rec.id),
        offset,
    };
    write_frame(&mut send, &fetch, MAX_CONTROL_FRAME)
        .await
        .map_err(lost)?;
    let _ = send.finish();
    let mut buf = Vec::new();
    match read_frame::<ImageFetchReply>(&mut recv, MAX_CONTROL_FRAME, &mut buf)
        .await
        .map_err(lost)?
    {
        Some(ImageFetchReply::Sending { total_len }) if total_len == rec.total_len => {}
        Some(ImageFetchReply::Sending { .. }) => {
            return Err(fail(core, rec, &partial, "the node offers a different length").await);
        }
        Some(ImageFetchReply::Refused(e)) => {
            return Err(fail(core, rec, &partial, &e.message).await);
        }
        None => return Err(ClientError::Disconnected),
    }

    let cipher = rec.cipher();
    let report = |done: u64| {
        core.progress.send(Progress {
            id: MessageId(rec.id),
            direction: Direction::Down,
            peer: rec.from.clone(),
            title: rec.header.title.clone(),
            done,
            total: size,
            resumed_from: kept,
        });
    };
    report(kept);
    let mut pending: Vec<u8> = Vec::with_capacity(2 * SEALED_CHUNK as usize);
    while index < chunks {
        let want = chunk_len(size, index) + fastchat_proto::limits::IMAGE_TAG;
        while pending.len() < want {
            match recv.read_chunk(usize::MAX, true).await {
                Ok(Some(c)) => pending.extend_from_slice(&c.bytes),
                _ => return Err(ClientError::Disconnected),
            }
        }
        let last = index + 1 == chunks;
        let plain = match cipher.open(index as u32, last, &pending[..want]) {
            Ok(p) => p,
            Err(_) => return Err(fail(core, rec, &partial, "a chunk failed authentication").await),
        };
        pending.drain(..want);
        file.write_all(&plain)
            .await
            .map_err(ClientError::io(&partial))?;
        hasher.update(&plain);
        index += 1;
        report((index * IMAGE_CHUNK as u64).min(size));
    }
    file.flush().await.map_err(ClientError::io(&partial))?;
    file.sync_all().await.map_err(ClientError::io(&partial))?;
    drop(file);
    let digest = hasher.finish();
    if digest != rec.header.sha256 {
        return Err(fail(
            core,
            rec,
            &partial,
            "the SHA-256 does not match the sender's",
        )
        .await);
    }

    let path = place(&dir, &partial, &rec.header.title).await?;
    let item = InboxItem {
        id: rec.id,
        from: rec.from.clone(),
        kind: match rec.header.kind {
            AttachmentKind::Image => InboxKind::Image,
            AttachmentKind::File => InboxKind::File,
        },
        group: rec.group.clone(),
        member: None,
        attachment: Some(Attachment {
            path: path.display().to_string(),
            bytes: size,
            sha256: hex_string(&digest),
        }),
        text: String::new(),
        sent_at_ms: rec.header.sent_at_ms,
    };
    {
        let ks = core.keystore.lock().expect("keystore lock");
        ks.begin()?;
        let stored = ks.insert_inbox(vec![item.clone()]).and_then(|_| {
            ks.set_transfer_state(
                Transfers::Downloads,
                &rec.from,
                &rec.id,
                TransferState::Done,
            )
        });
        match stored {
            Ok(()) => ks.commit()?,
            Err(e) => {
                ks.rollback();
                return Err(e);
            }
        }
    }
    core.request(Request::ImageReceived {
        from: rec.from.clone(),
        id: MessageId(rec.id),
    })
    .await?;
    Ok(item)
}

fn hex_string(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Links the finished partial file to the first free name, then removes the
/// partial. A hard link fails rather than replace an existing file.
async fn place(dir: &Path, partial: &Path, title: &str) -> Result<PathBuf, ClientError> {
    let name = safe_file_name(title);
    for n in 1..10_000 {
        let path = candidate(dir, &name, n);
        match tokio::fs::hard_link(partial, &path).await {
            Ok(()) => {
                let _ = tokio::fs::remove_file(partial).await;
                return Ok(path);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(ClientError::io(&path)(e)),
        }
    }
    Err(ClientError::Unusable {
        path: dir.join(name),
        why: "no free name left".into(),
    })
}

async fn fail(core: &Core, rec: &DownloadRecord, partial: &Path, why: &str) -> ClientError {
    let _ = tokio::fs::remove_file(partial).await;
    if let Ok(ks) = core.keystore.lock() {
        let _ = ks.set_transfer_state(
            Transfers::Downloads,
            &rec.from,
            &rec.id,
            TransferState::Failed,
        );
    }
    ClientError::Corrupt {
        title: rec.header.title.clone(),
        from: rec.from.clone(),
        why: why.to_string(),
    }
}
