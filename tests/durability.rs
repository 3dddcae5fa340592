//! A node killed with SIGKILL and restarted still delivers everything it
//! acknowledged, once and in order; its files and logs hold no plaintext.

mod common;

use std::fs::File;
use std::process::{Command, Stdio};
use std::sync::Arc;

use common::{ChildGuard, befriend, contains, free_port, send_file, unshown_texts};
use fastchat_client::{Client, InboxKind};

const SECRET: &str = "plaintext-canary-4f9c2b";

fn spawn_node(dir: &std::path::Path, port: u16, balancer: &str) -> ChildGuard {
    let log = File::options()
        .create(true)
        .append(true)
        .open(dir.join("node.log"))
        .unwrap();
    let child = Command::new(common::bin())
        .args(["node", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data")
        .arg(dir.join("node"))
        .arg("--certs")
        .arg(fastchat_certs::role_dir(
            &dir.join("certs"),
            fastchat_certs::Role::Node(1),
        ))
        .args(["--balancer", balancer])
        // The most verbose logs the node can write must still hold no plaintext.
        .env("FASTCHAT_LOG", "trace")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    ChildGuard(child)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_queue_survives_sigkill_and_holds_no_plaintext() {
    let dir = tempfile::tempdir().unwrap();
    let (balancer, server, ca, port, mut node) = balancer_and_node(dir.path()).await;

    let home = |u: &str| dir.path().join("homes").join(u);
    let alice = Client::register(&home("alice"), "alice", &server, &ca)
        .await
        .unwrap();
    let bob = Client::register(&home("bob"), "bob", &server, &ca)
        .await
        .unwrap();
    befriend(&alice, &bob).await;
    bob.close().await;

    // Bob is offline: each send returns only once the node has it durably.
    for i in 0..100 {
        alice
            .send_text("bob", &format!("{SECRET} #{i:03}"))
            .await
            .unwrap();
    }
    alice.close().await;

    // SIGKILL: no chance to flush anything.
    node.0.kill().unwrap();
    node.0.wait().unwrap();
    drop(node);
    let node = spawn_node(dir.path(), port, &server);
    wait_for_nodes(&ca, &server).await;

    let bob = Client::connect(&home("bob")).await.unwrap();
    bob.sync().await.unwrap();
    let texts: Vec<String> = bob
        .unshown()
        .unwrap()
        .into_iter()
        .filter(|i| i.kind == InboxKind::Text && i.from == "alice")
        .map(|i| i.text)
        .collect();
    let want: Vec<String> = (0..100).map(|i| format!("{SECRET} #{i:03}")).collect();
    assert_eq!(texts, want, "all 100, in order, once");
    let ids: Vec<_> = bob.unshown().unwrap().iter().map(|i| i.id).collect();
    bob.mark_shown(&ids).unwrap();
    bob.close().await;

    // Nothing is delivered a second time, and the node's queue is empty.
    let bob = Client::connect(&home("bob")).await.unwrap();
    bob.sync().await.unwrap();
    assert!(bob.unshown().unwrap().is_empty());
    assert_eq!(bob.pending_at_login(), 0);
    bob.close().await;

    drop(node);
    for name in ["node.db", "node.db-wal", "node.db-shm"] {
        let path = dir.path().join("node").join(name);
        if let Ok(bytes) = std::fs::read(&path) {
            assert!(
                !contains(&bytes, SECRET.as_bytes()),
                "{name} holds plaintext"
            );
        }
    }
    let log = std::fs::read(dir.path().join("node.log")).unwrap();
    assert!(!log.is_empty(), "the node logged nothing at all");
    assert!(
        !contains(&log, SECRET.as_bytes()),
        "the node log holds plaintext"
    );
    // The client's own keystore does hold it: that is where history lives.
    let ks = std::fs::read(home("bob").join(fastchat_client::KEYSTORE_FILE)).unwrap();
    let wal = std::fs::read(home("bob").join("keystore.db-wal")).unwrap_or_default();
    assert!(contains(&ks, SECRET.as_bytes()) || contains(&wal, SECRET.as_bytes()));
    balancer.shutdown().await;
}

/// Certificates, a balancer in this process, and a node process reporting
/// to it on a free port: (balancer, its address, CA file, node port, node).
async fn balancer_and_node(
    dir: &std::path::Path,
) -> (
    fastchat_balancer::BalancerHandle,
    String,
    std::path::PathBuf,
    u16,
    ChildGuard,
) {
    let certs = dir.join("certs");
    let balancer = common::certs_and_balancer(&certs).await;
    let server = balancer.local_addr().to_string();
    let ca = certs.join("ca.pem");
    let port = free_port();
    let node = spawn_node(dir, port, &server);
    wait_for_nodes(&ca, &server).await;
    (balancer, server, ca, port, node)
}

async fn wait_for_nodes(ca: &std::path::Path, server: &str) {
    common::wait_for_balancer(ca, server, "a node", |live| !live.is_empty()).await;
}

/// Senders flat out, many texts inside each group commit; the node is
/// SIGKILLed mid-stream and restarted. Every text the node acknowledged
/// arrives exactly once, and nothing arrives that was never sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_inside_group_commits_loses_no_acknowledged_text() {
    const SENDERS: usize = 6;
    let dir = tempfile::tempdir().unwrap();
    let (balancer, server, ca, port, node) = balancer_and_node(dir.path()).await;

    let home = |u: &str| dir.path().join("homes").join(u);
    let bob = Client::register(&home("bob"), "bob", &server, &ca)
        .await
        .unwrap();
    let mut senders = Vec::new();
    for i in 0..SENDERS {
        let name = format!("s{i}");
        let c = Client::register(&home(&name), &name, &server, &ca)
            .await
            .unwrap();
        befriend(&c, &bob).await;
        senders.push(Arc::new(c));
    }
    bob.close().await;

    let flood = flood_through_a_sigkill(
        dir.path(),
        port,
        &server,
        node,
        senders,
        |c, text| async move { c.send_text("bob", &text).await.is_ok() },
    )
    .await;
    let bob = Client::connect(&home("bob")).await.unwrap();
    bob.sync().await.unwrap();
    flood.arrived_once(&unshown_texts(&bob));
    bob.close().await;
    drop(flood);
    balancer.shutdown().await;
}

/// The same for group texts: members post to a group flat out, two members
/// offline; each text is stored once for both (in the group's log, their
/// cursors behind it) and signed with its batch. Every acknowledged text reaches each offline
/// member exactly once, its signature still good after the resend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_inside_group_commits_loses_no_acknowledged_group_text() {
    const SENDERS: usize = 4;
    let dir = tempfile::tempdir().unwrap();
    let (balancer, server, ca, port, node) = balancer_and_node(dir.path()).await;

    let home = |u: &str| dir.path().join("homes").join(u);
    let register = |name: String| {
        let (home, server, ca) = (home(&name), server.clone(), ca.clone());
        async move { Client::register(&home, &name, &server, &ca).await.unwrap() }
    };
    let admin = register("s0".into()).await;
    let (bob, carol) = (register("bob".into()).await, register("carol".into()).await);
    admin.group_create("crew").await.unwrap();
    let mut senders = vec![Arc::new(admin)];
    for i in 1..SENDERS {
        senders.push(Arc::new(register(format!("s{i}")).await));
    }
    let members: Vec<&Client> = senders
        .iter()
        .skip(1)
        .map(|c| &**c)
        .chain([&bob, &carol])
        .collect();
    for m in &members {
        befriend(&senders[0], m).await;
    }
    // The admin takes in the acceptances before adding anyone.
    senders[0].sync().await.unwrap();
    for m in &members {
        senders[0].group_add("crew", &[m.name()]).await.unwrap();
    }
    for c in senders.iter().skip(1) {
        c.sync().await.unwrap();
    }
    bob.close().await;
    carol.close().await;

    let flood = flood_through_a_sigkill(
        dir.path(),
        port,
        &server,
        node,
        senders,
        |c, text| async move { c.send_group_text("crew", &text).await.is_ok() },
    )
    .await;
    for name in ["bob", "carol"] {
        let member = Client::connect(&home(name)).await.unwrap();
        member.sync().await.unwrap();
        flood.arrived_once(&unshown_texts(&member));
        member.close().await;
    }
    drop(flood);
    balancer.shutdown().await;
}

/// What [`flood_through_a_sigkill`] sent, and the node it restarted.
struct Flood {
    acked: Vec<String>,
    tried: std::collections::HashSet<String>,
    _node: ChildGuard,
}

impl Flood {
    /// Every acknowledged text is in `got` once, and nothing never sent.
    fn arrived_once(&self, got: &[String]) {
        let unique: std::collections::HashSet<&String> = got.iter().collect();
        assert_eq!(unique.len(), got.len(), "a text was shown twice");
        assert!(self.acked.len() >= 300);
        for text in &self.acked {
            assert!(unique.contains(text), "acknowledged {text:?} was lost");
        }
        assert!(
            got.iter().all(|t| self.tried.contains(t)),
            "a text nobody sent"
        );
    }
}

/// Each sender sends texts through `send` flat out (32 in flight), the
/// node is SIGKILLed once 300 are acknowledged, so commits are full of
/// them, and restarted on its port; texts in flight at the kill are resent
/// after failover, with their ids. Returns once every sender has settled.
async fn flood_through_a_sigkill<F, Fut>(
    dir: &std::path::Path,
    port: u16,
    server: &str,
    mut node: ChildGuard,
    senders: Vec<Arc<Client>>,
    send: F,
) -> Flood
where
    F: Fn(Arc<Client>, String) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = bool> + Send + 'static,
{
    use futures::stream::{FuturesUnordered, StreamExt};
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    let stop = Arc::new(AtomicBool::new(false));
    let acked_count = Arc::new(AtomicUsize::new(0));
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let tried = Arc::new(Mutex::new(Vec::<String>::new()));
    let tasks: Vec<_> = senders
        .iter()
        .map(|c| {
            let (c, stop, acked, tried, count, send) = (
                c.clone(),
                stop.clone(),
                acked.clone(),
                tried.clone(),
                acked_count.clone(),
                send.clone(),
            );
            tokio::spawn(async move {
                let mut in_flight = FuturesUnordered::new();
                let mut n = 0;
                loop {
                    if !stop.load(Ordering::Relaxed) && in_flight.len() < 32 {
                        let text = format!("{} #{n}", c.name());
                        n += 1;
                        tried.lock().unwrap().push(text.clone());
                        let sent = send(c.clone(), text.clone());
                        in_flight.push(async move { (sent.await, text) });
                        continue;
                    }
                    match in_flight.next().await {
                        Some((true, text)) => {
                            acked.lock().unwrap().push(text);
                            count.fetch_add(1, Ordering::Relaxed);
                        }
                        // Not acknowledged: it may or may not arrive.
                        Some((false, _)) => {}
                        None => break,
                    }
                }
            })
        })
        .collect();

    let t = std::time::Instant::now();
    while acked_count.load(Ordering::Relaxed) < 300 {
        assert!(t.elapsed().as_secs() < 60, "the senders never got going");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    node.0.kill().unwrap();
    node.0.wait().unwrap();
    stop.store(true, Ordering::Relaxed);
    drop(node);
    let node = spawn_node(dir, port, server);
    for task in tasks {
        tokio::time::timeout(std::time::Duration::from_secs(60), task)
            .await
            .expect("the senders settle after the restart")
            .unwrap();
    }
    for c in senders {
        Arc::try_unwrap(c).ok().unwrap().close().await;
    }
    let acked = acked.lock().unwrap().clone();
    let tried = tried.lock().unwrap().iter().cloned().collect();
    Flood {
        acked,
        tried,
        _node: node,
    }
}

/// A local cluster (`fastchat up` in `dir`) with alice and bob registered
/// under `dir/homes` and befriended, bob offline; returns it and alice.
async fn alice_and_offline_bob(dir: &std::path::Path) -> (ChildGuard, Client) {
    let (up, server, ca) = common::start_up(dir);
    let home = |u: &str| dir.join("homes").join(u);
    let ca = std::path::PathBuf::from(ca);
    let alice = Client::register(&home("alice"), "alice", &server, &ca)
        .await
        .unwrap();
    let bob = Client::register(&home("bob"), "bob", &server, &ca)
        .await
        .unwrap();
    befriend(&alice, &bob).await;
    bob.close().await;
    (up, alice)
}

/// A recipient killed after its keystore committed a batch and before it
/// acknowledged it: the node delivers the batch again, and each text is
/// still shown once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recipient_killed_between_commit_and_ack_shows_each_text_once() {
    let dir = tempfile::tempdir().unwrap();
    let home = |u: &str| dir.path().join("homes").join(u);
    let (_up, alice) = alice_and_offline_bob(dir.path()).await;
    for i in 0..50 {
        alice.send_text("bob", &format!("t{i:02}")).await.unwrap();
    }

    // Bob's `recv` dies right after committing its first delivery batch.
    let out = Command::new(common::bin())
        .arg("--home")
        .arg(home("bob"))
        .args(["recv", "--json"])
        .env("FASTCHAT_FAULT", "after-keystore-commit")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success(), "recv should have been stopped");
    use std::os::unix::process::ExitStatusExt;
    assert!(out.status.signal().is_some(), "stopped by a signal");
    assert!(out.stdout.is_empty(), "nothing was shown before the crash");

    let bob = Client::connect(&home("bob")).await.unwrap();
    // Committed before the crash...
    let kept = bob.unshown().unwrap();
    assert!(
        kept.iter().any(|i| i.kind == InboxKind::Text),
        "the batch was committed before the crash"
    );
    // ...and still queued at the node, since it was never acknowledged.
    assert!(bob.pending_at_login() > 0, "the node still had the batch");
    bob.sync().await.unwrap();
    let texts = unshown_texts(&bob);
    let want: Vec<String> = (0..50).map(|i| format!("t{i:02}")).collect();
    assert_eq!(texts, want, "each text once, in order");
    bob.close().await;
    alice.close().await;

    let bob = Client::connect(&home("bob")).await.unwrap();
    assert_eq!(bob.pending_at_login(), 0, "the redelivery was acknowledged");
    bob.close().await;
}

/// Files in every `blobs` directory below `root` (the nodes' image copies).
fn blob_files(root: &std::path::Path) -> usize {
    let Ok(entries) = std::fs::read_dir(root) else {
        return 0;
    };
    entries
        .map_while(Result::ok)
        .filter(|e| e.path().is_dir())
        .map(|e| {
            let path = e.path();
            if e.file_name() == "blobs" {
                std::fs::read_dir(&path).map(|d| d.count()).unwrap_or(0)
            } else {
                blob_files(&path)
            }
        })
        .sum()
}

/// A recipient killed once its received file is in place and recorded,
/// before it told the node: the node keeps its copy (counted against the
/// sender's quota) until the recipient's next connection tells it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recipient_killed_before_telling_the_node_tells_it_when_it_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let home = |u: &str| dir.path().join("homes").join(u);
    let (_up, alice) = alice_and_offline_bob(dir.path()).await;
    let files = tempfile::tempdir().unwrap();
    let path = files.path().join("notes.bin");
    let bytes: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&path, &bytes).unwrap();
    send_file(&alice, "bob", &path).await;
    let cluster = dir.path().join("cluster");
    assert_eq!(blob_files(&cluster), 1);

    let out = Command::new(common::bin())
        .arg("--home")
        .arg(home("bob"))
        .args(["recv", "--json"])
        .env("FASTCHAT_FAULT", "after-file-placed")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert!(
        out.status.signal().is_some(),
        "recv was stopped by a signal"
    );
    let downloads = home("bob").join(fastchat_client::DOWNLOADS_DIR);
    assert_eq!(std::fs::read(downloads.join("notes.bin")).unwrap(), bytes);
    assert_eq!(blob_files(&cluster), 1, "the node was not told");

    let bob = Client::connect(&home("bob")).await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while blob_files(&cluster) != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the node still holds the image"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // Shown once: the file is in the history, and not fetched again.
    let files: Vec<_> = bob
        .unshown()
        .unwrap()
        .into_iter()
        .filter(|i| i.kind == InboxKind::File)
        .collect();
    assert_eq!(files.len(), 1);
    assert_eq!(std::fs::read_dir(&downloads).unwrap().count(), 1);
    bob.close().await;
    alice.close().await;
}

/// A recipient online on the node: its texts are handed to its session
/// before anything is stored, and the sender is acknowledged once the
/// recipient's keystore holds them. Killed after committing one and before
/// acknowledging it, it loses nothing: the node stores what was not
/// acknowledged, delivers it again, and each text is shown once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_online_recipient_killed_between_commit_and_ack_shows_each_text_once() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let home = |u: &str| dir.path().join("homes").join(u);
    let (_up, alice) = alice_and_offline_bob(dir.path()).await;
    alice.send_text("bob", "warm-up").await.unwrap();

    // Bob's `recv` shows the warm-up (its first commit) and stays online;
    // it dies after its second commit, the first text sent to it online.
    let mut recv = Command::new(common::bin())
        .arg("--home")
        .arg(home("bob"))
        .args(["recv", "--json", "--wait", "120"])
        .env("FASTCHAT_FAULT", "after-keystore-commit:2")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = recv.stdout.take().unwrap();
    let stdout = std::io::BufReader::new(stdout);
    let shown = tokio::task::spawn_blocking(move || {
        // Earlier events (the friendship) come first.
        stdout
            .lines()
            .map_while(Result::ok)
            .find(|line| line.contains("warm-up"))
    })
    .await
    .unwrap();
    assert!(shown.is_some(), "recv showed the warm-up");

    for i in 0..10 {
        alice.send_text("bob", &format!("t{i:02}")).await.unwrap();
    }
    let status = tokio::task::spawn_blocking(move || recv.wait().unwrap())
        .await
        .unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert!(status.signal().is_some(), "recv was stopped by a signal");

    let bob = Client::connect(&home("bob")).await.unwrap();
    // `recv` marks what it printed as shown just after printing it; t00's
    // commit and the crash may come first, leaving the warm-up unshown (a
    // crash in that gap shows it again, as it should). The t's are what
    // this test follows.
    let ts = |bob: &Client| -> Vec<String> {
        unshown_texts(bob)
            .into_iter()
            .filter(|t| t != "warm-up")
            .collect()
    };
    let kept = ts(&bob);
    assert_eq!(
        kept.first().map(String::as_str),
        Some("t00"),
        "t00 was committed before the crash"
    );
    assert!(
        bob.pending_at_login() > 0,
        "the node stored what was not acknowledged"
    );
    bob.sync().await.unwrap();
    let want: Vec<String> = (0..10).map(|i| format!("t{i:02}")).collect();
    assert_eq!(ts(&bob), want, "each text once, in order");
    bob.close().await;
    alice.close().await;
}
