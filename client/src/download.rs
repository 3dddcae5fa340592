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
use tokio::io::AsyncReadExt;

use crate::core::Core;
use crate::error::ClientError;
use crate::file_sink::FileSink;
use crate::keystore::{TransferState, Transfers};
use crate::transfer::{
    DownloadRecord, SEALED_CHUNK, candidate, chunk_count, chunk_len, safe_file_name, stream_len,
};
use crate::types::{Attachment, Direction, InboxItem, InboxKind, Progress};

/// Where received files go inside a home.
pub const DOWNLOADS_DIR: &str = "downloads";

/// First pause before asking again for a download whose fetch ended on a
/// live connection; it doubles up to [`RETRY_MOST`].
const RETRY_FIRST: std::time::Duration = std::time::Duration::from_millis(500);
/// Longest pause between two asks for the same download.
const RETRY_MOST: std::time::Duration = std::time::Duration::from_secs(30);

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
        let link = core.generation();
        let mut pause = RETRY_FIRST;
        let outcome = loop {
            match run(&core, &conn, &rec).await {
                // The fetch ended on a connection that is still up: the
                // node stopped following an upload that stalled, or could
                // not read the blob. Ask again after a pause; without it
                // the file waited for the next connection, which a chat
                // left open may never make.
                Err(ClientError::Disconnected)
                    if conn.close_reason().is_none() && !core.is_closing() =>
                {
                    tracing::debug!(from = %rec.from, ?pause, "download interrupted; asking again");
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = conn.closed() => break Err(ClientError::Disconnected),
                        _ = core.closed() => break Err(ClientError::Disconnected),
                    }
                    pause = (pause * 2).min(RETRY_MOST);
                }
                other => break other,
            }
        };
        let lost = match outcome {
            Ok(item) => {
                core.events.send(item);
                let _ = core.changes.send(());
                tell_node(&core, &rec.from, rec.id).await;
                false
            }
            Err(ClientError::Disconnected) => {
                tracing::debug!(from = %rec.from, "download interrupted; it resumes on the next connection");
                true
            }
            Err(e) => {
                tracing::warn!(from = %rec.from, error = %e, "download failed");
                false
            }
        };
        core.active_downloads.lock().expect("lock").remove(&key);
        // A failover that brought a new link while this task held the
        // download skipped it; take it up on the new link.
        if lost && !core.is_closing() && core.generation() != link {
            spawn(core.clone(), core.conn(), rec.clone());
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
    let group = rec.group.is_some();
    // The sealed stream is the file, then its trailer (digest, signature).
    let stream = stream_len(size, group).ok_or_else(|| ClientError::Corrupt {
        title: rec.header.title.clone(),
        from: rec.from.clone(),
        why: "its length does not fit".into(),
    })?;
    let chunks = chunk_count(stream);

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
    // Only chunks wholly inside the file: a chunk that also held trailer
    // bytes is fetched again for them.
    let index = (existing / IMAGE_CHUNK as u64)
        .min(size / IMAGE_CHUNK as u64)
        .min(chunks - 1);
    let kept = index * IMAGE_CHUNK as u64;
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
    let sink = FileSink::start(file.into_std().await, hasher);
    let received = receive(
        &mut recv,
        &cipher,
        &sink,
        (index, chunks),
        (stream, size),
        &report,
    )
    .await;
    // The writer stops either way; only a whole file is synced.
    let written = sink.finish(received.is_ok()).await;
    let (trailer, digest) = match (received, written) {
        (Err(Received::Forged), _) => {
            return Err(fail(core, rec, &partial, "a chunk failed authentication").await);
        }
        (_, Err(e)) => return Err(ClientError::io(&partial)(e)),
        (Err(Received::Lost), Ok(_)) => return Err(ClientError::Disconnected),
        (Ok(trailer), Ok(digest)) => (trailer, digest),
    };
    let digest = match the_senders_digest(&partial, digest, &trailer).await {
        Ok(d) => d,
        Err(e) => return Err(ClientError::io(&partial)(e)),
    };
    if let Err(why) = check_trailer(rec, digest.bytes(), &trailer) {
        return Err(fail(core, rec, &partial, why).await);
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
            digest: digest.named(),
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
                TransferState::Placed,
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
    crate::fault::crash_at(crate::fault::AFTER_FILE_PLACED);
    Ok(item)
}

/// Tells the node we have `from`'s image `id`, so it may delete its copy
/// (and stop counting it against the sender's quota), and marks the
/// download done. Left placed if the node cannot be told now: the next
/// connection tells it ([`crate::failover::tell_node_of_placed`]).
pub(crate) async fn tell_node(core: &Core, from: &str, id: [u8; 16]) {
    let told = core
        .request(Request::ImageReceived {
            from: from.to_string(),
            id: MessageId(id),
        })
        .await;
    let marked = told.and_then(|_| {
        core.keystore()
            .set_transfer_state(Transfers::Downloads, from, &id, TransferState::Done)
    });
    if let Err(e) = marked {
        tracing::debug!(%from, error = %e, "the node is told of a received image later");
    }
}

/// Why the chunks stopped before the last.
enum Received {
    /// The stream ended or the writer stopped (its error is the sink's).
    Lost,
    /// A chunk failed authentication.
    Forged,
}

/// Opens chunks `index..chunks` of a sealed `stream` from `recv`, hands
/// the file's bytes to `sink` and returns the trailer's.
async fn receive(
    recv: &mut fastchat_transport::quinn::RecvStream,
    cipher: &fastchat_crypto::chunked::ChunkCipher,
    sink: &FileSink,
    (mut index, chunks): (u64, u64),
    (stream, size): (u64, u64),
    report: &impl Fn(u64),
) -> Result<Vec<u8>, Received> {
    let mut pending: Vec<u8> = Vec::with_capacity(2 * SEALED_CHUNK as usize);
    let mut trailer = Vec::new();
    while index < chunks {
        let want = chunk_len(stream, index) + fastchat_proto::limits::IMAGE_TAG;
        while pending.len() < want {
            match recv.read_chunk(usize::MAX, true).await {
                Ok(Some(c)) => pending.extend_from_slice(&c.bytes),
                _ => return Err(Received::Lost),
            }
        }
        let last = index + 1 == chunks;
        let mut plain = cipher
            .open(index as u32, last, &pending[..want])
            .map_err(|_| Received::Forged)?;
        pending.drain(..want);
        let begin = index * IMAGE_CHUNK as u64;
        let in_file = size.saturating_sub(begin).min(plain.len() as u64) as usize;
        trailer.extend_from_slice(&plain[in_file..]);
        plain.truncate(in_file);
        if !plain.is_empty() && !sink.write(plain).await {
            return Err(Received::Lost);
        }
        index += 1;
        report((index * IMAGE_CHUNK as u64).min(size));
    }
    Ok(trailer)
}

/// A file's digest, by the hash that made it.
#[derive(Debug, PartialEq)]
enum FileDigest {
    /// Since protocol version 7.
    Blake3([u8; 32]),
    /// A file sealed by a version-6 sender that still waited on the node
    /// when both sides were upgraded.
    Sha256([u8; 32]),
}

impl FileDigest {
    fn bytes(&self) -> &[u8; 32] {
        match self {
            FileDigest::Blake3(d) | FileDigest::Sha256(d) => d,
        }
    }

    /// As the history keeps it and `recv --json` shows it.
    fn named(&self) -> String {
        match self {
            FileDigest::Blake3(d) => format!("blake3:{}", hex_string(d)),
            FileDigest::Sha256(d) => format!("sha256:{}", hex_string(d)),
        }
    }
}

/// The digest of what we wrote that the trailer names: our BLAKE3 as it
/// was written, else (an older sender) the SHA-256 of the partial file,
/// read again; the BLAKE3 when neither matches, which the check refuses.
async fn the_senders_digest(
    partial: &Path,
    blake3: [u8; 32],
    trailer: &[u8],
) -> std::io::Result<FileDigest> {
    let sent = trailer.get(..32);
    if sent == Some(&blake3[..]) {
        return Ok(FileDigest::Blake3(blake3));
    }
    let path = partial.to_path_buf();
    let sha256 = tokio::task::spawn_blocking(move || sha256_of(&path))
        .await
        .map_err(std::io::Error::other)??;
    Ok(if sent == Some(&sha256[..]) {
        FileDigest::Sha256(sha256)
    } else {
        FileDigest::Blake3(blake3)
    })
}

/// The SHA-256 of the file at `path`.
fn sha256_of(path: &Path) -> std::io::Result<[u8; 32]> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut hasher = fastchat_crypto::Sha256Hasher::default();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(hasher.finish());
        }
        hasher.update(&buf[..n]);
    }
}

/// The trailer must carry the digest of the bytes we got, and in a group
/// the sender's signature over it: any member could seal chunks under the
/// file key, only the sender can sign.
fn check_trailer(
    rec: &DownloadRecord,
    digest: &[u8; 32],
    trailer: &[u8],
) -> Result<(), &'static str> {
    let (sent, signature) = trailer.split_at(32.min(trailer.len()));
    if sent != digest {
        return Err("the file's digest does not match the sender's");
    }
    if rec.group.is_none() {
        return Ok(());
    }
    let Some(signer) = &rec.signer else {
        return Err("the sender's signing key is unknown");
    };
    let signed = fastchat_crypto::transcript::group_image_digest(
        signer.group_id,
        signer.epoch,
        &rec.from,
        &rec.id,
        digest,
    );
    fastchat_crypto::signing::verify(&signer.key, &signed, signature)
        .map_err(|_| "the file is not signed by its sender")
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

#[cfg(test)]
mod tests {
    use fastchat_crypto::signing::SigningIdentity;
    use fastchat_proto::image::{AttachmentKind, ImageHeader};

    use super::*;
    use crate::transfer::GroupSigner;

    fn record(signer: Option<GroupSigner>) -> DownloadRecord {
        DownloadRecord {
            id: [1; 16],
            from: "alice".into(),
            group: signer.as_ref().map(|_| "team".into()),
            header: ImageHeader {
                title: "f".into(),
                size: 3,
                kind: AttachmentKind::File,
                sent_at_ms: 0,
                file_key: [2; 32],
            },
            key: [2; 32],
            aad: Vec::new(),
            nonce_prefix: [0; 7],
            total_len: 0,
            signer,
        }
    }

    #[tokio::test]
    async fn a_trailer_names_our_blake3_or_an_older_senders_sha256() {
        let dir = tempfile::tempdir().unwrap();
        let partial = dir.path().join("partial");
        let content = vec![7u8; 200_000];
        std::fs::write(&partial, &content).unwrap();
        let blake3 = fastchat_crypto::file_digest(&content);
        let mut sha = fastchat_crypto::Sha256Hasher::default();
        sha.update(&content);
        let sha256 = sha.finish();
        assert_eq!(fastchat_crypto::sha256(&content), sha256);
        let found = |trailer: Vec<u8>| {
            let partial = partial.clone();
            async move {
                the_senders_digest(&partial, blake3, &trailer)
                    .await
                    .unwrap()
            }
        };
        let named = found(blake3.to_vec()).await;
        assert_eq!(named, FileDigest::Blake3(blake3));
        assert!(named.named().starts_with("blake3:"));
        let older = found([&sha256[..], &[1; 64]].concat()).await;
        assert_eq!(older, FileDigest::Sha256(sha256));
        assert!(older.named().starts_with("sha256:"));
        // Neither: our own digest, which the trailer check then refuses.
        assert_eq!(found(vec![9; 32]).await, FileDigest::Blake3(blake3));
    }

    #[test]
    fn the_trailer_must_hold_the_digest_and_in_a_group_the_senders_signature() {
        let digest = fastchat_crypto::file_digest(b"abc");
        let direct = record(None);
        assert!(check_trailer(&direct, &digest, &digest).is_ok());
        let other = fastchat_crypto::file_digest(b"abd");
        assert!(check_trailer(&direct, &digest, &other).is_err());

        let alice = SigningIdentity::generate().unwrap();
        let mallory = SigningIdentity::generate().unwrap();
        let group = record(Some(GroupSigner {
            key: alice.public(),
            group_id: 7,
            epoch: 2,
        }));
        let signed = |by: &SigningIdentity, epoch: u64| {
            let message = fastchat_crypto::transcript::group_image_digest(
                7, epoch, "alice", &[1; 16], &digest,
            );
            [&digest[..], &by.sign(&message)].concat()
        };
        assert!(check_trailer(&group, &digest, &signed(&alice, 2)).is_ok());
        // Any member could seal chunks and a digest under the file key; only
        // the sender's signature, for this group and epoch, is accepted.
        assert!(check_trailer(&group, &digest, &signed(&mallory, 2)).is_err());
        assert!(check_trailer(&group, &digest, &signed(&alice, 3)).is_err());
        assert!(check_trailer(&group, &digest, &digest).is_err());
        let mut unknown = group.clone();
        unknown.signer = None;
        assert!(check_trailer(&unknown, &digest, &signed(&alice, 2)).is_err());
    }
}
