//! A node killed with SIGKILL and restarted still delivers everything it
//! acknowledged, once and in order; its files and logs hold no plaintext.

mod common;

use std::fs::File;
use std::process::{Command, Stdio};

use common::{ChildGuard, befriend, contains, free_port};
use fastchat_balancer::BalancerConfig;
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
        .arg(dir.join("certs"))
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
    let certs = dir.path().join("certs");
    fastchat_certs::generate(&certs, &[], false).unwrap();
    let balancer = fastchat_balancer::start(BalancerConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        certs.clone(),
    ))
    .await
    .unwrap();
    let server = balancer.local_addr().to_string();
    let ca = certs.join("ca.pem");
    let port = free_port();

    let mut node = spawn_node(dir.path(), port, &server);
    wait_for_nodes(&ca, &server).await;

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

async fn wait_for_nodes(ca: &std::path::Path, server: &str) {
    common::wait_for_balancer(ca, server, "a node", |live| !live.is_empty()).await;
}
