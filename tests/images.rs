//! Images over real QUIC: sizes around the chunk boundary arrive
//! bit-identical (1:1 and group), offline delivery via the blob store (which
//! is emptied after the ack and never holds plaintext), resumption after a
//! cut connection on either side, and the refusals.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Cluster, befriend, contains};
use fastchat_client::{
    AttachmentKind, Client, ClientError, Direction, InboxItem, InboxKind, Recipient,
};
use fastchat_proto::ErrorCode;
use fastchat_proto::limits::IMAGE_CHUNK;

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| {
            (i as u32)
                .wrapping_mul(2654435761)
                .wrapping_add(seed as u32) as u8
                ^ seed
        })
        .collect()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn no_progress(_: u64, _: u64) {}

/// Registers alice and bob as friends and logs bob out; alice's client.
async fn friends_with_bob_away(cluster: &Cluster) -> Client {
    let alice = cluster.register("alice").await;
    let bob = cluster.register("bob").await;
    befriend(&alice, &bob).await;
    bob.close().await;
    alice
}

/// Waits for images and returns the attachments received, marking them shown.
async fn received(client: &Client) -> Vec<InboxItem> {
    client.sync().await.unwrap();
    assert_eq!(
        client
            .wait_downloads(Duration::from_secs(20))
            .await
            .unwrap(),
        0
    );
    let items: Vec<_> = client
        .unshown()
        .unwrap()
        .into_iter()
        .filter(|i| matches!(i.kind, InboxKind::Image | InboxKind::File))
        .collect();
    let ids: Vec<_> = items.iter().map(|i| i.id).collect();
    client.mark_shown(&ids).unwrap();
    items
}

fn blob_files(cluster: &Cluster) -> Vec<PathBuf> {
    std::fs::read_dir(cluster.data_dir().join("blobs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect()
}

/// The blob files left once every recipient's notice of receipt could reach
/// the node: a download is done (file in place, keystore committed) just
/// before its notice is sent, so the last deletion may trail it a little.
async fn blobs_left(cluster: &Cluster) -> Vec<PathBuf> {
    for _ in 0..500 {
        if blob_files(cluster).is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    blob_files(cluster)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sizes_around_the_chunk_boundary_arrive_identical_one_to_one_and_in_groups() {
    let cluster = Cluster::start().await;
    let alice = cluster.register("alice").await;
    let bob = cluster.register("bob").await;
    let carol = cluster.register("carol").await;
    befriend(&alice, &bob).await;
    befriend(&alice, &carol).await;
    alice.group_create("team").await.unwrap();
    alice.group_add("team", &["bob"]).await.unwrap();
    alice.group_add("team", &["carol"]).await.unwrap();

    let files = tempfile::tempdir().unwrap();
    let sizes = [
        0,
        1,
        // The trailer (digest, and a signature in a group) after the file:
        // ending a chunk exactly, and split across two.
        IMAGE_CHUNK - 96,
        IMAGE_CHUNK - 32,
        IMAGE_CHUNK - 1,
        IMAGE_CHUNK,
        IMAGE_CHUNK + 1,
        20 << 20,
    ];
    for (n, size) in sizes.iter().enumerate() {
        let bytes = pattern(*size, n as u8);
        let path = write(files.path(), &format!("f{n}.bin"), &bytes);
        alice
            .send_attachment(
                &Recipient::Friend("bob".into()),
                &path,
                AttachmentKind::File,
                &no_progress,
            )
            .await
            .unwrap();
        alice
            .send_attachment(
                &Recipient::Group("team".into()),
                &path,
                AttachmentKind::File,
                &no_progress,
            )
            .await
            .unwrap();
    }
    for member in [&bob, &carol] {
        let items = received(member).await;
        let expect = if member.name() == "bob" {
            2 * sizes.len()
        } else {
            sizes.len()
        };
        assert_eq!(items.len(), expect, "{}", member.name());
        for item in items {
            let a = item.attachment.unwrap();
            let n: usize = Path::new(&a.path)
                .file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .trim_start_matches('f')
                .split(['.', ' '])
                .next()
                .unwrap()
                .parse()
                .unwrap();
            let got = std::fs::read(&a.path).unwrap();
            assert_eq!(got.len(), sizes[n], "{}", a.path);
            assert!(got == pattern(sizes[n], n as u8), "{} differs", a.path);
            assert_eq!(a.bytes as usize, sizes[n]);
        }
    }
    // Every recipient has everything: the node keeps no blob.
    let left = blobs_left(&cluster).await;
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_recipient_gets_it_later_and_the_node_never_holds_plaintext() {
    let cluster = Cluster::start().await;
    let alice = friends_with_bob_away(&cluster).await;

    let files = tempfile::tempdir().unwrap();
    let canary = b"image-plaintext-canary-91c3";
    let mut bytes = pattern(3 * IMAGE_CHUNK + 123, 7);
    bytes[1000..1000 + canary.len()].copy_from_slice(canary);
    let path = write(files.path(), "../../etc/x", &bytes);
    let path2 = write(files.path(), "x", b"\x89PNG\r\n\x1a\n and more");
    alice
        .send_attachment(
            &Recipient::Friend("bob".into()),
            &path,
            AttachmentKind::File,
            &no_progress,
        )
        .await
        .unwrap();
    alice
        .send_attachment(
            &Recipient::Friend("bob".into()),
            &path2,
            AttachmentKind::Image,
            &no_progress,
        )
        .await
        .unwrap();

    // While bob is away, the node holds the ciphertext, and only that.
    let blobs = blob_files(&cluster);
    assert_eq!(blobs.len(), 2);
    for blob in &blobs {
        assert!(!contains(&std::fs::read(blob).unwrap(), canary));
    }
    for f in ["node.db", "node.db-wal"] {
        if let Ok(db) = std::fs::read(cluster.data_dir().join(f)) {
            assert!(!contains(&db, canary));
        }
    }

    // A file of that name already exists in bob's downloads: it is kept.
    let downloads = cluster.home("bob").join(fastchat_client::DOWNLOADS_DIR);
    std::fs::create_dir_all(&downloads).unwrap();
    std::fs::write(downloads.join("x"), b"mine").unwrap();

    let bob = Client::connect(&cluster.home("bob")).await.unwrap();
    let items = received(&bob).await;
    assert_eq!(items.len(), 2);
    let mut paths: Vec<String> = items
        .iter()
        .map(|i| i.attachment.clone().unwrap().path)
        .collect();
    paths.sort();
    assert_eq!(std::fs::read(downloads.join("x")).unwrap(), b"mine");
    for p in &paths {
        // The path-traversal title ended up inside downloads, under its last component.
        assert!(Path::new(p).starts_with(&downloads), "{p}");
        assert!(p.ends_with("x (2)") || p.ends_with("x (3)"), "{p}");
    }
    let big = items
        .iter()
        .find(|i| i.attachment.as_ref().unwrap().bytes == bytes.len() as u64)
        .unwrap();
    assert_eq!(
        std::fs::read(&big.attachment.as_ref().unwrap().path).unwrap(),
        bytes
    );
    assert!(items.iter().any(|i| i.kind == InboxKind::Image));
    // No partial file is left under any name.
    for e in std::fs::read_dir(&downloads).unwrap() {
        let name = e.unwrap().file_name().into_string().unwrap();
        assert!(!name.starts_with(".partial"), "{name}");
    }
    let left = blobs_left(&cluster).await;
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_altered_on_the_node_is_refused_and_nothing_is_put_in_place() {
    let cluster = Cluster::start().await;
    let alice = friends_with_bob_away(&cluster).await;

    let files = tempfile::tempdir().unwrap();
    let bytes = pattern(5 * IMAGE_CHUNK + 77, 3);
    let path = write(files.path(), "report.bin", &bytes);
    let to_bob = Recipient::Friend("bob".into());
    alice
        .send_attachment(&to_bob, &path, AttachmentKind::File, &no_progress)
        .await
        .unwrap();

    // One flipped bit in the third chunk: the first two are good and get
    // written before the forgery shows.
    let blobs = blob_files(&cluster);
    assert_eq!(blobs.len(), 1);
    let mut sealed = std::fs::read(&blobs[0]).unwrap();
    sealed[2 * IMAGE_CHUNK + 5000] ^= 0x10;
    std::fs::write(&blobs[0], &sealed).unwrap();

    let bob = Client::connect(&cluster.home("bob")).await.unwrap();
    let items = received(&bob).await;
    assert!(items.is_empty(), "{items:?}");
    let downloads = cluster.home("bob").join(fastchat_client::DOWNLOADS_DIR);
    let left: Vec<_> = std::fs::read_dir(&downloads)
        .map(|d| d.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
    // It was fetched and refused, not merely left waiting.
    use fastchat_client::keystore::{Keystore, TransferState, Transfers};
    let failed = Keystore::open(&cluster.home("bob"))
        .unwrap()
        .transfers(Transfers::Downloads, TransferState::Failed)
        .unwrap();
    assert_eq!(failed.len(), 1);
}

/// Alice (befriended with bob) starts sending `bytes` as a file and loses
/// her connection a third of the way; returns the cluster, bob, and the
/// file's path (in `files`).
async fn cut_upload(files: &Path, bytes: &[u8]) -> (Cluster, Client, PathBuf) {
    cut_upload_on(Cluster::start().await, files, bytes).await
}

/// [`cut_upload`] on a cluster already started.
async fn cut_upload_on(cluster: Cluster, files: &Path, bytes: &[u8]) -> (Cluster, Client, PathBuf) {
    let alice = std::sync::Arc::new(cluster.register("alice").await);
    let bob = cluster.register("bob").await;
    befriend(&alice, &bob).await;
    let path = write(files, "big.bin", bytes);
    let cutter = alice.clone();
    let cut = move |done: u64, total: u64| {
        if done > total / 3 {
            cutter.abort();
        }
    };
    let first = alice
        .send_attachment(
            &Recipient::Friend("bob".into()),
            &path,
            AttachmentKind::File,
            &cut,
        )
        .await;
    assert!(matches!(first, Err(ClientError::Disconnected)), "{first:?}");
    (cluster, bob, path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_upload_resumes_without_resending_what_arrived() {
    let files = tempfile::tempdir().unwrap();
    let bytes = pattern(16 << 20, 3);
    let (cluster, bob, _) = cut_upload(files.path(), &bytes).await;

    let alice = Client::connect(&cluster.home("alice")).await.unwrap();
    let reports = alice.resume_uploads(&no_progress).await.unwrap();
    assert_eq!(reports.len(), 1);
    let r = &reports[0];
    // The file, then its 32-byte digest, sealed.
    let total = fastchat_proto::limits::image_ciphertext_len(bytes.len() as u64 + 32).unwrap();
    assert!(r.resumed_from > 0, "nothing had arrived before the cut?");
    assert_eq!(r.resumed_from + r.sent, total, "resent what had arrived");

    let items = received(&bob).await;
    assert_eq!(
        std::fs::read(&items[0].attachment.as_ref().unwrap().path).unwrap(),
        bytes
    );
}

/// Bob stays online while alice's upload stands still for longer than the
/// node follows it: the node ends bob's fetch, bob asks again on the same
/// connection, and the file arrives once alice resumes, with nobody
/// reconnecting or asking for downloads (as in a chat left open).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recipient_online_through_a_stalled_upload_gets_the_file_when_it_resumes() {
    let files = tempfile::tempdir().unwrap();
    let bytes = pattern(4 << 20, 5);
    let mut cluster = Cluster::start_without_node().await;
    let mut config = cluster.node_config("127.0.0.1:0".parse().unwrap());
    config.image_stall = Duration::from_millis(200);
    cluster.start_node_with(config).await;
    let (cluster, bob, _) = cut_upload_on(cluster, files.path(), &bytes).await;
    let mut arrivals = bob.subscribe();
    // Bob's fetch follows the cut upload, and the node ends it.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let alice = Client::connect(&cluster.home("alice")).await.unwrap();
    assert_eq!(alice.resume_uploads(&no_progress).await.unwrap().len(), 1);
    let item = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let item = arrivals.recv().await.unwrap();
            if item.kind == InboxKind::File {
                return item;
            }
        }
    })
    .await
    .expect("the file never arrived while bob stayed online");
    assert_eq!(
        std::fs::read(&item.attachment.as_ref().unwrap().path).unwrap(),
        bytes
    );
    assert!(bob.is_connected());
}

/// Resuming re-encrypts under the file's key and nonces, which is safe only
/// for the very bytes sent before: a file changed meanwhile is sent anew,
/// under a new key, and only its new content arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_changed_before_its_upload_resumed_is_sent_anew() {
    let files = tempfile::tempdir().unwrap();
    let (cluster, bob, path) = cut_upload(files.path(), &pattern(16 << 20, 4)).await;

    let after = pattern(16 << 20, 5);
    std::fs::write(&path, &after).unwrap();
    let alice = Client::connect(&cluster.home("alice")).await.unwrap();
    let reports = alice.resume_uploads(&no_progress).await.unwrap();
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0].resumed_from, 0, "a changed file starts over");

    bob.sync().await.unwrap();
    bob.wait_downloads(Duration::from_secs(3)).await.unwrap();
    let files: Vec<Vec<u8>> = bob
        .unshown()
        .unwrap()
        .iter()
        .filter_map(|i| i.attachment.as_ref())
        .map(|a| std::fs::read(&a.path).unwrap())
        .collect();
    assert_eq!(files.len(), 1, "only the new content arrives");
    assert!(files[0] == after, "the new content, intact");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_download_resumes_from_where_it_stopped() {
    let cluster = Cluster::start().await;
    let alice = friends_with_bob_away(&cluster).await;
    let files = tempfile::tempdir().unwrap();
    let bytes = pattern(16 << 20, 9);
    let path = write(files.path(), "big.bin", &bytes);
    alice
        .send_attachment(
            &Recipient::Friend("bob".into()),
            &path,
            AttachmentKind::File,
            &no_progress,
        )
        .await
        .unwrap();

    let bob = Client::connect(&cluster.home("bob")).await.unwrap();
    let mut progress = bob.subscribe_progress();
    bob.sync().await.unwrap();
    // The download starts as soon as the envelope arrives; cut it a third in.
    loop {
        let p = tokio::time::timeout(Duration::from_secs(20), progress.recv())
            .await
            .unwrap()
            .unwrap();
        if p.direction == Direction::Down && p.done > p.total / 3 {
            bob.abort();
            break;
        }
    }
    drop(bob);

    let bob = Client::connect(&cluster.home("bob")).await.unwrap();
    let mut progress = bob.subscribe_progress();
    let waiter = tokio::spawn(async move {
        let p = progress.recv().await.unwrap();
        p.resumed_from
    });
    let items = received(&bob).await;
    let resumed_from = waiter.await.unwrap();
    assert!(resumed_from > 0, "the download started over");
    assert_eq!(
        std::fs::read(&items[0].attachment.as_ref().unwrap().path).unwrap(),
        bytes
    );
    let left = blobs_left(&cluster).await;
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_over_quota_and_non_images_are_refused_before_any_byte() {
    let dir_cluster = Cluster::start().await;
    // A node with small limits, on its own data dir.
    let mut config = dir_cluster.node_config("127.0.0.1:0".parse().unwrap());
    config.data_dir = dir_cluster.dir.path().join("small-node");
    config.max_image_bytes = 1 << 20;
    config.image_quota = 3 << 20;
    let mut cluster = dir_cluster;
    cluster.node.take().unwrap().shutdown().await;
    cluster.node = Some(fastchat_node::start(config).await.unwrap());
    // The old node drops out of the balancer once it misses its reports.
    cluster.wait_for_only_this_node().await;

    let alice = friends_with_bob_away(&cluster).await;
    let files = tempfile::tempdir().unwrap();
    let to_bob = Recipient::Friend("bob".into());

    let big = write(files.path(), "big.bin", &pattern(2 << 20, 1));
    let sent_bytes = std::sync::atomic::AtomicU64::new(0);
    let watch = |done: u64, _| sent_bytes.store(done, std::sync::atomic::Ordering::Relaxed);
    match alice
        .send_attachment(&to_bob, &big, AttachmentKind::File, &watch)
        .await
    {
        Err(ClientError::Refused(e)) => {
            assert_eq!(e.code, ErrorCode::TooLarge);
            assert!(
                e.message.contains("accepts images up to 1.0 MiB"),
                "{}",
                e.message
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(sent_bytes.load(std::sync::atomic::Ordering::Relaxed), 0);

    let ok = write(files.path(), "ok.bin", &pattern(900 << 10, 2));
    for _ in 0..3 {
        alice
            .send_attachment(&to_bob, &ok, AttachmentKind::File, &no_progress)
            .await
            .unwrap();
    }
    match alice
        .send_attachment(&to_bob, &ok, AttachmentKind::File, &no_progress)
        .await
    {
        Err(ClientError::Refused(e)) => {
            assert_eq!(e.code, ErrorCode::QuotaExceeded);
            assert!(e.message.contains("quota"), "{}", e.message);
        }
        other => panic!("{other:?}"),
    }

    let text = write(files.path(), "notes.txt", b"just text");
    assert!(matches!(
        alice
            .send_attachment(&to_bob, &text, AttachmentKind::Image, &no_progress)
            .await,
        Err(ClientError::NotAnImage(_))
    ));
    assert!(matches!(
        alice
            .send_attachment(
                &to_bob,
                &files.path().join("missing.png"),
                AttachmentKind::Image,
                &no_progress
            )
            .await,
        Err(ClientError::File { .. })
    ));
    // Once bob collects, the quota is free again.
    let bob = Client::connect(&cluster.home("bob")).await.unwrap();
    assert_eq!(received(&bob).await.len(), 3);
    alice
        .send_attachment(&to_bob, &ok, AttachmentKind::File, &no_progress)
        .await
        .unwrap();
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Files on the user's machine are the user's alone: the home and the
/// downloads 0700, the keystore (and its WAL and SHM) and received files
/// 0600, even where the home existed before with a looser mode.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_home_the_keystore_and_received_files_are_the_users_alone() {
    use std::os::unix::fs::PermissionsExt;
    let cluster = Cluster::start().await;
    let loose = cluster.home("bob");
    std::fs::create_dir_all(&loose).unwrap();
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o755)).unwrap();
    let alice = cluster.register("alice").await;
    let bob = cluster.register("bob").await;
    befriend(&alice, &bob).await;
    let files = tempfile::tempdir().unwrap();
    let path = write(files.path(), "notes.bin", &pattern(3000, 7));
    alice
        .send_attachment(
            &Recipient::Friend("bob".into()),
            &path,
            AttachmentKind::File,
            &no_progress,
        )
        .await
        .unwrap();
    let got = received(&bob).await;
    let saved = PathBuf::from(&got[0].attachment.as_ref().unwrap().path);

    let home = cluster.home("bob");
    assert_eq!(mode(&home), 0o700, "the home");
    assert_eq!(mode(&home.join("downloads")), 0o700, "the downloads");
    assert_eq!(mode(&saved), 0o600, "a received file");
    for name in ["keystore.db", "keystore.db-wal", "keystore.db-shm"] {
        let p = home.join(name);
        if p.exists() {
            assert_eq!(mode(&p), 0o600, "{name}");
        }
    }
    assert!(
        home.join("keystore.db-wal").exists(),
        "the WAL is checked too"
    );
}
