//! Many nodes: users spread over three nodes by the balancer, linked by a
//! real nats-server, sharing one store (a SQLite file, or PostgreSQL),
//! befriend, chat, send images and run a group; a stream of 10,000 messages
//! survives two nodes being SIGKILLed (clients fail over, nothing is lost or
//! shown twice, the killed node rejoins); a NATS restart loses nothing.

mod common;

use fastchat_certs::{Role, role_dir};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{
    LoggedChild, befriend, bin, cli_ok, free_port, next_text, start_up_with, wait_for_balancer,
};
use fastchat_balancer::{BalancerConfig, BalancerHandle, Strategy};
use fastchat_client::{Client, Conversation, InboxItem, InboxKind};
use fastchat_node::{NatsServer, NodeConfig, NodeHandle};
use fastchat_testkit::postgres::PgServer;
use futures::StreamExt;

/// A balancer (round-robin, so users land on nodes in turn), a nats-server
/// and the shared store, all for one test.
struct Multi {
    dir: tempfile::TempDir,
    balancer: BalancerHandle,
    nats: Option<NatsServer>,
    store: String,
    _postgres: Option<Arc<PgServer>>,
}

impl Multi {
    async fn start(postgres: bool) -> Self {
        Self::start_with(postgres, Strategy::RoundRobin).await
    }

    async fn start_with(postgres: bool, strategy: Strategy) -> Self {
        let dir = tempfile::tempdir().unwrap();
        fastchat_certs::generate(&dir.path().join("certs"), &[], false, 3).unwrap();
        let mut config = BalancerConfig::new(
            "127.0.0.1:0".parse().unwrap(),
            role_dir(&dir.path().join("certs"), Role::Balancer),
        );
        config.strategy = strategy;
        let balancer = fastchat_balancer::start(config).await.unwrap();
        let nats = NatsServer::start(
            &dir.path().join("nats"),
            0,
            &role_dir(&dir.path().join("certs"), Role::Bus),
        )
        .unwrap();
        let (store, pg) = if postgres {
            let pg = PgServer::shared();
            let name = format!("cluster_{}", std::process::id());
            (pg.create_database(&name), Some(pg))
        } else {
            (dir.path().join("cluster.db").display().to_string(), None)
        };
        Self {
            dir,
            balancer,
            nats: Some(nats),
            store,
            _postgres: pg,
        }
    }

    fn certs(&self) -> PathBuf {
        self.dir.path().join("certs")
    }

    fn ca(&self) -> PathBuf {
        self.certs().join("ca.pem")
    }

    fn server(&self) -> String {
        self.balancer.local_addr().to_string()
    }

    fn bus(&self) -> String {
        self.nats.as_ref().unwrap().url()
    }

    fn node_dir(&self, k: usize) -> PathBuf {
        self.dir.path().join(format!("node-{k}"))
    }

    /// Starts node `k` in this process.
    async fn node(&self, k: usize) -> NodeHandle {
        let mut config = NodeConfig::new(
            "127.0.0.1:0".parse().unwrap(),
            self.node_dir(k),
            role_dir(&self.certs(), Role::Node(k as u16)),
        );
        config.balancers = vec![self.server()];
        config.bus = Some(self.bus());
        config.store = Some(self.store.clone());
        fastchat_node::start(config).await.unwrap()
    }

    /// Starts node `k` as its own `fastchat node` process on `port`.
    /// Node `k` as a process of its own; its log is shown if the test fails.
    fn node_process(&self, k: usize, port: u16) -> LoggedChild {
        let log = self.dir.path().join(format!("node-{k}-{port}.log"));
        LoggedChild::spawn(
            Command::new(bin())
                .args(["node", "--listen", &format!("127.0.0.1:{port}"), "--data"])
                .arg(self.node_dir(k))
                .arg("--certs")
                .arg(role_dir(&self.certs(), Role::Node(k as u16)))
                .args(["--balancer", &self.server(), "--bus", &self.bus()])
                .args(["--store", &self.store])
                .stdout(Stdio::null()),
            log,
        )
    }

    async fn wait_for_nodes(&self, n: usize) {
        wait_for_balancer(&self.ca(), &self.server(), &format!("{n} nodes"), |live| {
            live.len() == n
        })
        .await;
    }

    fn home(&self, user: &str) -> PathBuf {
        self.dir.path().join("homes").join(user)
    }

    async fn register(&self, name: &str) -> Client {
        Client::register(&self.home(name), name, &self.server(), &self.ca())
            .await
            .unwrap()
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| {
            (i as u32)
                .wrapping_mul(2654435761)
                .wrapping_add(seed as u32) as u8
        })
        .collect()
}

/// Waits for the next item of `kind` (up to 20 s).
async fn next_of(
    events: &mut tokio::sync::broadcast::Receiver<InboxItem>,
    kind: InboxKind,
) -> InboxItem {
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let item = events.recv().await.unwrap();
            if item.kind == kind {
                return item;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {kind:?} arrived"))
}

fn blob_files(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("blobs"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Three users on three nodes do everything a user does, across nodes.
async fn everything_across_three_nodes(postgres: bool) {
    let multi = Multi::start(postgres).await;
    let mut nodes = Vec::new();
    for k in 1..=3 {
        nodes.push(multi.node(k).await);
    }
    multi.wait_for_nodes(3).await;
    let alice = multi.register("alice").await;
    let bob = multi.register("bob").await;
    let carol = multi.register("carol").await;
    let on: Vec<_> = [&alice, &bob, &carol]
        .iter()
        .map(|c| c.node_addr())
        .collect();
    assert!(
        on[0] != on[1] && on[1] != on[2] && on[0] != on[2],
        "round-robin put each user on their own node: {on:?}"
    );

    befriend(&alice, &bob).await;
    befriend(&alice, &carol).await;
    befriend(&bob, &carol).await;
    assert_eq!(
        alice.fingerprint("bob").unwrap(),
        bob.fingerprint("alice").unwrap()
    );

    // Texts both ways, live.
    let mut bob_events = bob.subscribe();
    let mut alice_events = alice.subscribe();
    alice.send_text("bob", "hello from node 1").await.unwrap();
    assert_eq!(
        next_text(&mut bob_events, None).await.text,
        "hello from node 1"
    );
    bob.send_text("alice", "hi from node 2").await.unwrap();
    let got = next_text(&mut alice_events, None).await;
    assert_eq!(
        (got.from.as_str(), got.text.as_str()),
        ("bob", "hi from node 2")
    );

    // An image held by alice's node streams to bob and carol through their nodes.
    let files = tempfile::tempdir().unwrap();
    let bytes = pattern(3 * 1024 * 1024 + 17, 9);
    let path = files.path().join("big.bin");
    std::fs::write(&path, &bytes).unwrap();
    common::send_file(&alice, "bob", &path).await;
    let file = next_of(&mut bob_events, InboxKind::File).await;
    let saved = std::fs::read(&file.attachment.unwrap().path).unwrap();
    assert!(saved == bytes, "the file arrived changed");

    // A group across all three nodes: add, talk, kick (re-key), talk.
    let mut carol_events = carol.subscribe();
    alice.group_create("ops").await.unwrap();
    alice.group_add("ops", &["bob", "carol"]).await.unwrap();
    alice.send_group_text("ops", "standup in 5").await.unwrap();
    for events in [&mut bob_events, &mut carol_events] {
        let t = next_text(events, Some("standup in 5")).await;
        assert_eq!(t.group.as_deref(), Some("ops"));
    }
    carol.send_group_text("ops", "on my way").await.unwrap();
    assert_eq!(
        next_text(&mut bob_events, Some("on my way")).await.from,
        "carol"
    );
    alice.group_kick("ops", "carol").await.unwrap();
    next_of(&mut carol_events, InboxKind::YouWereRemoved).await;
    alice.send_group_text("ops", "carol is gone").await.unwrap();
    next_text(&mut bob_events, Some("carol is gone")).await;
    carol.sync().await.unwrap();
    assert!(
        !carol
            .history(&Conversation::Group("ops".into()), 100)
            .unwrap()
            .iter()
            .any(|h| h.text == "carol is gone"),
        "a kicked member read the group"
    );

    // Everyone has the file: alice's node deleted its blob (asked over the bus).
    let deadline = Instant::now() + Duration::from_secs(10);
    while (1..=3)
        .map(|k| blob_files(&multi.node_dir(k)))
        .sum::<usize>()
        != 0
    {
        assert!(
            Instant::now() < deadline,
            "a collected blob was left behind"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for n in nodes {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_on_nats_sharing_one_sqlite_file() {
    everything_across_three_nodes(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_on_nats_sharing_postgresql() {
    everything_across_three_nodes(true).await;
}

/// Which of `ports` a client is connected to.
fn node_index(client: &Client, ports: &[u16]) -> usize {
    let port = client.node_addr().port();
    ports.iter().position(|p| *p == port).expect("a known node")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_messages_survive_two_nodes_being_killed() {
    const TOTAL: usize = 10_000;
    let multi = Multi::start(false).await;
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let mut procs: Vec<Option<LoggedChild>> = (0..3)
        .map(|k| Some(multi.node_process(k + 1, ports[k])))
        .collect();
    multi.wait_for_nodes(3).await;
    let alice = Arc::new(multi.register("alice").await);
    let bob = multi.register("bob").await;
    befriend(&alice, &bob).await;
    assert_ne!(alice.node_addr(), bob.node_addr());

    // What bob's screen shows: every text event, counted by text.
    let mut events = bob.subscribe();
    let shown = tokio::spawn(async move {
        let mut seen: HashMap<String, usize> = HashMap::new();
        while seen.len() < TOTAL {
            match tokio::time::timeout(Duration::from_secs(60), events.recv()).await {
                Ok(Ok(item)) if item.kind == InboxKind::Text => {
                    *seen.entry(item.text).or_default() += 1;
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => panic!("bob's screen missed events: {e}"),
                Err(_) => break,
            }
        }
        // Anything shown twice would show up here, after the last one.
        while let Ok(Ok(item)) = tokio::time::timeout(Duration::from_secs(2), events.recv()).await {
            if item.kind == InboxKind::Text {
                *seen.entry(item.text).or_default() += 1;
            }
        }
        seen
    });

    let acked = Arc::new(AtomicUsize::new(0));
    let sender = {
        let (alice, acked) = (alice.clone(), acked.clone());
        tokio::spawn(async move {
            futures::stream::iter(0..TOTAL)
                .map(|i| {
                    let (alice, acked) = (alice.clone(), acked.clone());
                    async move {
                        let r = alice.send_text("bob", &format!("m{i}")).await;
                        acked.fetch_add(1, Ordering::Relaxed);
                        r
                    }
                })
                .buffer_unordered(200)
                .collect::<Vec<_>>()
                .await
        })
    };

    let wait_for = |n: usize| {
        let acked = acked.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(120);
            while acked.load(Ordering::Relaxed) < n {
                assert!(Instant::now() < deadline, "sending stalled before {n}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    // A third in: SIGKILL the sender's node; the sender fails over.
    wait_for(TOTAL / 3).await;
    let a = node_index(&alice, &ports);
    let mut relinks = alice.subscribe_relinks();
    let killed = Instant::now();
    drop(procs[a].take());
    tokio::time::timeout(Duration::from_secs(30), relinks.changed())
        .await
        .expect("alice fails over")
        .unwrap();
    eprintln!(
        "alice failed over from node {} to node {} in {:?}",
        a + 1,
        node_index(&alice, &ports) + 1,
        killed.elapsed()
    );
    multi.wait_for_nodes(2).await;
    // It comes back on the same address and rejoins the balancer.
    procs[a] = Some(multi.node_process(a + 1, ports[a]));
    multi.wait_for_nodes(3).await;
    // Two thirds in: SIGKILL the recipient's node; the recipient fails over.
    wait_for(2 * TOTAL / 3).await;
    let b = node_index(&bob, &ports);
    let mut relinks = bob.subscribe_relinks();
    let killed = Instant::now();
    drop(procs[b].take());
    tokio::time::timeout(Duration::from_secs(30), relinks.changed())
        .await
        .expect("bob fails over")
        .unwrap();
    eprintln!(
        "bob failed over from node {} to node {} in {:?}",
        b + 1,
        node_index(&bob, &ports) + 1,
        killed.elapsed()
    );

    let results = tokio::time::timeout(Duration::from_secs(180), sender)
        .await
        .expect("every send settles")
        .unwrap();
    let failed: Vec<_> = results.iter().filter(|r| r.is_err()).collect();
    assert!(
        failed.is_empty(),
        "{} sends failed: {:?}",
        failed.len(),
        failed.first()
    );

    let seen = shown.await.unwrap();
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "shown more than once: {:?}",
        &twice[..twice.len().min(5)]
    );
    let missing: Vec<_> = (0..TOTAL)
        .filter(|i| !seen.contains_key(&format!("m{i}")))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {TOTAL} never arrived, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    let texts = bob
        .history(&Conversation::Friend("alice".into()), 2 * TOTAL)
        .unwrap()
        .into_iter()
        .filter(|h| h.kind == InboxKind::Text)
        .count();
    assert_eq!(texts, TOTAL, "bob's history holds each message once");
    assert!(bob.is_connected() && alice.is_connected());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_restart_delays_nothing_for_long_and_loses_nothing() {
    let mut multi = Multi::start(false).await;
    let n1 = multi.node(1).await;
    let n2 = multi.node(2).await;
    multi.wait_for_nodes(2).await;
    let alice = multi.register("alice").await;
    let bob = multi.register("bob").await;
    assert_ne!(alice.node_addr(), bob.node_addr());
    befriend(&alice, &bob).await;
    let mut events = bob.subscribe();
    alice.send_text("bob", "before").await.unwrap();
    next_text(&mut events, Some("before")).await;

    // NATS goes away: texts are still stored, and reach bob by his node's
    // store poll; then NATS comes back on the same port and the nodes reconnect.
    let port = multi.nats.as_ref().unwrap().port();
    drop(multi.nats.take());
    for i in 0..20 {
        alice
            .send_text("bob", &format!("during {i}"))
            .await
            .unwrap();
    }
    multi.nats = Some(
        NatsServer::start(
            &multi.dir.path().join("nats"),
            port,
            &role_dir(&multi.certs(), Role::Bus),
        )
        .unwrap(),
    );
    let mut got = HashMap::new();
    tokio::time::timeout(Duration::from_secs(30), async {
        while got.len() < 20 {
            let t = events.recv().await.unwrap();
            if t.kind == InboxKind::Text {
                *got.entry(t.text).or_insert(0) += 1;
            }
        }
    })
    .await
    .expect("the texts sent while NATS was down arrive");
    assert!(got.values().all(|n| *n == 1), "{got:?}");
    // Live delivery works again once the nodes are back on the bus.
    tokio::time::sleep(Duration::from_secs(1)).await;
    alice.send_text("bob", "after").await.unwrap();
    next_text(&mut events, Some("after")).await;
    n1.shutdown().await;
    n2.shutdown().await;
}

#[test]
fn up_with_three_nodes_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    // More workers than the default: the nodes must not rely on one.
    let (_up, server, ca) = start_up_with(
        dir.path(),
        &["--nodes", "3", "--balancers", "2", "--workers", "3"],
    );
    let home = |u: &str| dir.path().join(u);
    // Two balancers, each knowing all three nodes; clients are given both.
    let balancers: Vec<&str> = server.split(',').collect();
    assert_eq!(balancers.len(), 2, "{server}");
    for b in balancers {
        let status: serde_json::Value = serde_json::from_str(&cli_ok(
            &home("alice"),
            &["status", "--server", b, "--ca", &ca, "--json"],
        ))
        .unwrap();
        assert_eq!(status["nodes"].as_array().unwrap().len(), 3, "{status}");
    }
    for u in ["alice", "bob"] {
        cli_ok(
            &home(u),
            &["register", "--name", u, "--server", &server, "--ca", &ca],
        );
    }
    cli_ok(&home("alice"), &["friend", "add", "bob"]);
    cli_ok(&home("bob"), &["friend", "add", "alice"]);
    cli_ok(&home("alice"), &["send", "--to", "bob", "over the cluster"]);
    let got = cli_ok(&home("bob"), &["recv", "--json"]);
    assert!(got.contains("\"text\":\"over the cluster\""), "{got}");
    // Several nodes share one SQLite file next to their own blob directories.
    assert!(dir.path().join("cluster/cluster.db").exists());
}

/// Asks the balancer once, on a new connection, which node to use.
async fn pick(
    endpoint: &fastchat_transport::ClientEndpoint,
    server: &str,
) -> Result<String, String> {
    use fastchat_proto::balancer::{BalancerRequest, BalancerResponse};
    use fastchat_proto::limits::MAX_CONTROL_FRAME;
    use fastchat_transport::{connect, read_frame, write_frame};
    let conn = connect(endpoint, server).await.map_err(|e| e.to_string())?;
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    write_frame(&mut send, &BalancerRequest::PickNode, MAX_CONTROL_FRAME)
        .await
        .map_err(|e| e.to_string())?;
    send.finish().map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    let answer = read_frame::<BalancerResponse>(&mut recv, MAX_CONTROL_FRAME, &mut buf).await;
    conn.close(0u32.into(), b"");
    match answer {
        Ok(Some(BalancerResponse::Node { addr })) => Ok(addr),
        other => Err(format!("{other:?}")),
    }
}

fn client_endpoint(multi: &Multi) -> fastchat_transport::ClientEndpoint {
    let ca = fastchat_certs::load_certs(&multi.ca()).unwrap();
    fastchat_transport::client_endpoint(&ca, None).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strategies_with_one_node_loaded() {
    for strategy in [Strategy::LeastConn, Strategy::P2c, Strategy::RoundRobin] {
        let multi = Multi::start_with(false, strategy).await;
        let loaded = multi.node(1).await;
        let idle = multi.node(2).await;
        multi.wait_for_nodes(2).await;
        // Load node 1 with 40 open connections, then let it report them.
        let endpoint = client_endpoint(&multi);
        let mut held = Vec::new();
        for _ in 0..40 {
            held.push(
                fastchat_transport::connect(&endpoint, loaded.advertised())
                    .await
                    .unwrap(),
            );
        }
        let loaded_addr = loaded.advertised().to_string();
        wait_for_balancer(&multi.ca(), &multi.server(), "node 1 loaded", |live| {
            live.iter()
                .any(|n| n.addr == loaded_addr && n.connections >= 40)
        })
        .await;
        let mut counts: HashMap<String, usize> = HashMap::new();
        for _ in 0..20 {
            *counts
                .entry(pick(&endpoint, &multi.server()).await.unwrap())
                .or_default() += 1;
        }
        let to_loaded = counts.get(loaded.advertised()).copied().unwrap_or(0);
        let to_idle = counts.get(idle.advertised()).copied().unwrap_or(0);
        match strategy {
            Strategy::RoundRobin => assert_eq!((to_loaded, to_idle), (10, 10), "{counts:?}"),
            _ => assert_eq!((to_loaded, to_idle), (0, 20), "{strategy}: {counts:?}"),
        }
        drop(held);
        loaded.shutdown().await;
        idle.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_balancer_answers_two_thousand_concurrent_requests() {
    let multi = Multi::start(false).await;
    let a = multi.node(1).await;
    let b = multi.node(2).await;
    multi.wait_for_nodes(2).await;
    let endpoint = client_endpoint(&multi);
    let server = multi.server();
    let answers = futures::future::join_all((0..2000).map(|_| pick(&endpoint, &server))).await;
    let errors: Vec<_> = answers.iter().filter_map(|a| a.as_ref().err()).collect();
    assert!(
        errors.is_empty(),
        "{} failed, e.g. {:?}",
        errors.len(),
        errors.first()
    );
    let to_a = answers
        .iter()
        .filter(|r| r.as_deref() == Ok(a.advertised()))
        .count();
    assert_eq!(to_a, 1000, "round-robin splits evenly");
    a.shutdown().await;
    b.shutdown().await;
}

/// Two balancers, two nodes reporting to both, every piece its own process.
/// One balancer is SIGKILLed: a new user still registers (given both), and
/// a client whose node is then SIGKILLed fails over through the other
/// balancer and loses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_two_balancers_losing_one_stops_no_login_and_no_failover() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    fastchat_certs::generate(&certs, &[], false, 2).unwrap();
    let ca = certs.join("ca.pem");
    let nats =
        NatsServer::start(&dir.path().join("nats"), 0, &role_dir(&certs, Role::Bus)).unwrap();
    let ports = [free_port(), free_port()];
    let mut balancers: Vec<LoggedChild> = ports
        .iter()
        .map(|p| {
            LoggedChild::spawn(
                Command::new(bin())
                    .args(["balancer", "--listen", &format!("127.0.0.1:{p}"), "--certs"])
                    .arg(role_dir(&certs, Role::Balancer))
                    .stdout(Stdio::null()),
                dir.path().join(format!("balancer-{p}.log")),
            )
        })
        .collect();
    let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let servers = addrs.join(",");
    let store = dir.path().join("cluster.db").display().to_string();
    let node_ports = [free_port(), free_port()];
    let mut nodes: Vec<Option<LoggedChild>> = (1..=2u16)
        .zip(node_ports)
        .map(|(k, port)| {
            Some(LoggedChild::spawn(
                Command::new(bin())
                    .args(["node", "--listen", &format!("127.0.0.1:{port}"), "--data"])
                    .arg(dir.path().join(format!("node-{k}")))
                    .arg("--certs")
                    .arg(role_dir(&certs, Role::Node(k)))
                    .args(["--balancer", &servers, "--bus", &nats.url()])
                    .args(["--store", &store])
                    .stdout(Stdio::null()),
                dir.path().join(format!("node-{k}.log")),
            ))
        })
        .collect();
    for addr in &addrs {
        wait_for_balancer(&ca, addr, "2 nodes on each balancer", |live| {
            live.len() == 2
        })
        .await;
    }
    let home = |u: &str| dir.path().join("homes").join(u);
    let alice = Client::register(&home("alice"), "alice", &servers, &ca)
        .await
        .unwrap();
    let bob = Client::register(&home("bob"), "bob", &servers, &ca)
        .await
        .unwrap();
    befriend(&alice, &bob).await;

    // The first balancer dies; a new user gets in through the second.
    let _ = balancers[0].guard.0.kill();
    let _ = balancers[0].guard.0.wait();
    let carol = Client::register(&home("carol"), "carol", &servers, &ca)
        .await
        .expect("registration with one balancer of two gone");
    carol.close().await;

    // Alice's node dies too: she fails over through the balancer left.
    let mut events = bob.subscribe();
    let alice_node = alice.node_addr().port();
    let k = node_ports
        .iter()
        .position(|p| *p == alice_node)
        .expect("alice is on one of the two nodes");
    drop(nodes[k].take());
    alice.send_text("bob", "after both losses").await.unwrap();
    next_text(&mut events, Some("after both losses")).await;
    assert_ne!(alice.node_addr().port(), alice_node, "alice moved");
}
