//! Helpers shared by the integration tests: a real cluster on 127.0.0.1 with
//! port 0, temp dirs, the built `fastchat` binary, and a raw QUIC client for
//! playing an attacker.

#![allow(dead_code)]

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fastchat_balancer::{BalancerConfig, BalancerHandle};
use fastchat_node::{NodeConfig, NodeHandle};
use fastchat_proto::ProtoError;
use fastchat_proto::control::{Request, RequestFrame, Response, ResponseFrame};
use fastchat_proto::limits::MAX_CONTROL_FRAME;
use fastchat_proto::stream::StreamKind;
use fastchat_transport::quinn::{Connection, RecvStream, SendStream};
use fastchat_transport::{client_endpoint, connect, read_frame, write_frame};

/// The `fastchat` binary cargo built for these tests.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_fastchat")
}

/// A UDP port that was free a moment ago.
pub fn free_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A balancer and one node running in this process, with their files.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub balancer: Option<BalancerHandle>,
    pub node: Option<NodeHandle>,
}

impl Cluster {
    /// Certificates, a balancer and a node, all on 127.0.0.1 port 0.
    pub async fn start() -> Self {
        let mut cluster = Self::start_without_node().await;
        cluster.start_node().await;
        cluster
    }

    /// Certificates and a balancer, with no node yet.
    pub async fn start_without_node() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let balancer = certs_and_balancer(&dir.path().join("certs")).await;
        Self {
            dir,
            balancer: Some(balancer),
            node: None,
        }
    }

    /// Starts a node with `config` (from [`Cluster::node_config`], changed).
    pub async fn start_node_with(&mut self, config: NodeConfig) {
        self.node = Some(fastchat_node::start(config).await.unwrap());
        self.wait_for_nodes(1).await;
    }

    /// Starts the (or a new) node on port 0 with the cluster's data dir.
    pub async fn start_node(&mut self) {
        let node = fastchat_node::start(self.node_config("127.0.0.1:0".parse().unwrap()))
            .await
            .unwrap();
        self.node = Some(node);
        self.wait_for_nodes(1).await;
    }

    pub fn node_config(&self, listen: SocketAddr) -> NodeConfig {
        let mut config = NodeConfig::new(listen, self.data_dir(), self.certs_dir());
        config.balancers = vec![self.server()];
        config
    }

    /// The node's certificate directory (its role's).
    pub fn certs_dir(&self) -> PathBuf {
        fastchat_certs::role_dir(
            &self.dir.path().join("certs"),
            fastchat_certs::Role::Node(1),
        )
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("node")
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("certs").join("ca.pem")
    }

    /// The balancer's address, as clients are given it.
    pub fn server(&self) -> String {
        self.balancer.as_ref().unwrap().local_addr().to_string()
    }

    /// A fresh home directory for a user.
    pub fn home(&self, user: &str) -> PathBuf {
        self.dir.path().join("homes").join(user)
    }

    pub fn node_addr(&self) -> SocketAddr {
        self.node.as_ref().unwrap().local_addr()
    }

    /// Waits until the balancer knows at least `n` live nodes.
    pub async fn wait_for_nodes(&self, n: usize) {
        wait_for_balancer(&self.ca(), &self.server(), &format!("{n} nodes"), |live| {
            live.len() >= n
        })
        .await;
    }

    /// Waits until the balancer's live nodes are exactly the cluster's node.
    pub async fn wait_for_only_this_node(&self) {
        let addr = self.node_addr().to_string();
        wait_for_balancer(&self.ca(), &self.server(), &addr, |live| {
            live.len() == 1 && live[0].addr == addr
        })
        .await;
    }

    /// Registers a user through the SDK.
    pub async fn register(&self, name: &str) -> fastchat_client::Client {
        fastchat_client::Client::register(&self.home(name), name, &self.server(), &self.ca())
            .await
            .unwrap()
    }
}

/// The balancer's list of live node addresses.
pub async fn balancer_status(ca: &Path, server: &str) -> Vec<String> {
    balancer_reports(ca, server)
        .await
        .into_iter()
        .map(|n| n.addr)
        .collect()
}

/// Polls the balancer (up to 20 s, so a loaded CI machine has time) until
/// its live nodes satisfy `ready`; `what` names the wait in the failure.
pub async fn wait_for_balancer(
    ca: &Path,
    server: &str,
    what: &str,
    ready: impl Fn(&[fastchat_proto::balancer::NodeReport]) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let live = balancer_reports(ca, server).await;
        if ready(&live) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the balancer never showed {what}: {live:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The balancer's live nodes with their last reports.
pub async fn balancer_reports(
    ca: &Path,
    server: &str,
) -> Vec<fastchat_proto::balancer::NodeReport> {
    use fastchat_proto::balancer::{BalancerRequest, BalancerResponse};
    let ca = fastchat_certs::load_certs(ca).unwrap();
    let endpoint = client_endpoint(&ca, None).unwrap();
    let conn = connect(&endpoint, server).await.unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    write_frame(&mut send, &BalancerRequest::Status, MAX_CONTROL_FRAME)
        .await
        .unwrap();
    send.finish().unwrap();
    let mut buf = Vec::new();
    match read_frame::<BalancerResponse>(&mut recv, MAX_CONTROL_FRAME, &mut buf)
        .await
        .unwrap()
    {
        Some(BalancerResponse::Status { nodes, .. }) => nodes,
        other => panic!("unexpected {other:?}"),
    }
}

/// Waits (up to 10 s) for the next text event, or the next one whose text
/// is `want`.
pub async fn next_text(
    events: &mut tokio::sync::broadcast::Receiver<fastchat_client::InboxItem>,
    want: Option<&str>,
) -> fastchat_client::InboxItem {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let item = events.recv().await.unwrap();
            if item.kind == fastchat_client::InboxKind::Text && want.is_none_or(|w| item.text == w)
            {
                return item;
            }
        }
    })
    .await
    .expect("the text arrives")
}

/// The texts `client` has stored and not yet shown, oldest first.
pub fn unshown_texts(client: &fastchat_client::Client) -> Vec<String> {
    client
        .unshown()
        .unwrap()
        .into_iter()
        .filter(|i| i.kind == fastchat_client::InboxKind::Text)
        .map(|i| i.text)
        .collect()
}

/// `from` sends the file at `path` to its friend `to`, and the node has it.
pub async fn send_file(from: &fastchat_client::Client, to: &str, path: &Path) {
    from.send_attachment(
        &fastchat_client::Recipient::Friend(to.into()),
        path,
        fastchat_client::AttachmentKind::File,
        &|_, _| {},
    )
    .await
    .unwrap();
}

/// Makes two users friends through the SDK.
pub async fn befriend(a: &fastchat_client::Client, b: &fastchat_client::Client) {
    assert_eq!(
        a.friend_add(b.name()).await.unwrap(),
        fastchat_client::FriendAdd::RequestSent
    );
    assert_eq!(
        b.friend_add(a.name()).await.unwrap(),
        fastchat_client::FriendAdd::Accepted
    );
}

/// A hand-driven QUIC client speaking the protocol directly, as an attacker would.
pub struct RawClient {
    pub conn: Connection,
    pub send: SendStream,
    pub recv: RecvStream,
    next_id: u64,
}

impl RawClient {
    /// Connects to `node` trusting `ca` and opens the control stream.
    pub async fn connect(ca: &Path, node: SocketAddr) -> Self {
        let ca = fastchat_certs::load_certs(ca).unwrap();
        let endpoint = client_endpoint(&ca, None).unwrap();
        let conn = connect(&endpoint, &node.to_string()).await.unwrap();
        let (mut send, recv) = conn.open_bi().await.unwrap();
        write_frame(&mut send, &StreamKind::Control, 64)
            .await
            .unwrap();
        Self {
            conn,
            send,
            recv,
            next_id: 1,
        }
    }

    /// This connection's login binding (its TLS exporter secret).
    pub fn binding(&self) -> [u8; 32] {
        fastchat_transport::session_binding(&self.conn).unwrap()
    }

    /// Asks for a login challenge as `name`.
    pub async fn hello(&mut self, name: &str) -> [u8; 32] {
        match self
            .request(Request::Hello {
                version: fastchat_proto::PROTOCOL_VERSION,
                name: name.into(),
            })
            .await
            .unwrap()
        {
            Response::Challenge { nonce, .. } => nonce,
            other => panic!("no challenge: {other:?}"),
        }
    }

    /// Logs in as `name` with `identity`'s signature over a fresh challenge.
    pub async fn login(&mut self, name: &str, identity: &fastchat_crypto::Identity) {
        let nonce = self.hello(name).await;
        let signature = identity
            .sign(&fastchat_crypto::transcript::login(
                name,
                &nonce,
                &self.binding(),
            ))
            .unwrap();
        self.request(Request::Login { signature }).await.unwrap();
    }

    /// Sends one message on its own text stream and returns the node's ack.
    pub async fn post(
        &self,
        message: &fastchat_proto::envelope::Outgoing,
    ) -> fastchat_proto::envelope::SendAck {
        use fastchat_proto::limits::MAX_MESSAGE_FRAME;
        let (mut send, mut recv) = self.conn.open_bi().await.unwrap();
        write_frame(&mut send, &StreamKind::Text, 64).await.unwrap();
        write_frame(&mut send, message, MAX_MESSAGE_FRAME)
            .await
            .unwrap();
        send.finish().unwrap();
        let mut buf = Vec::new();
        read_frame(&mut recv, MAX_MESSAGE_FRAME, &mut buf)
            .await
            .unwrap()
            .expect("an ack")
    }

    /// Sends a request and reads its reply.
    pub async fn request(&mut self, request: Request) -> Result<Response, ProtoError> {
        let id = self.next_id;
        self.next_id += 1;
        write_frame(
            &mut self.send,
            &RequestFrame { id, request },
            MAX_CONTROL_FRAME,
        )
        .await
        .unwrap();
        let mut buf = Vec::new();
        let reply: ResponseFrame = read_frame(&mut self.recv, MAX_CONTROL_FRAME, &mut buf)
            .await
            .unwrap()
            .expect("a reply");
        assert_eq!(reply.id, id);
        reply.result
    }
}

/// Makes a cluster's certificates in `certs` (one node) and starts a
/// balancer on a free port with its own.
pub async fn certs_and_balancer(certs: &Path) -> BalancerHandle {
    fastchat_certs::generate(certs, &[], false, 1).unwrap();
    fastchat_balancer::start(BalancerConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        fastchat_certs::role_dir(certs, fastchat_certs::Role::Balancer),
    ))
    .await
    .unwrap()
}

/// Starts `fastchat up` on port 0 in `dir/cluster`; returns it with the
/// balancer address and CA path from the line it prints.
pub fn start_up(dir: &Path) -> (ChildGuard, String, String) {
    start_up_with(dir, &[])
}

/// [`start_up`] with more arguments for `up`; its log goes to `dir/up.log`.
pub fn start_up_with(dir: &Path, extra: &[&str]) -> (ChildGuard, String, String) {
    use std::io::{BufRead, BufReader};
    let log = std::fs::File::create(dir.join("up.log")).unwrap();
    let mut child = Command::new(bin())
        .args(["up", "--listen", "127.0.0.1:0", "--dir"])
        .arg(dir.join("cluster"))
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let guard = ChildGuard(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    assert!(line.starts_with("fastchat is up"), "{line}");
    let word_after = |key: &str| {
        line.split(key)
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .trim_end_matches(',')
            .to_string()
    };
    (guard, word_after("--server "), word_after("--ca "))
}

/// A child process killed when dropped. When the test is failing, it
/// says so if the child had already exited: a server that never started
/// otherwise shows only as a wait that timed out.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if std::thread::panicking()
            && let Ok(Some(status)) = self.0.try_wait()
        {
            eprintln!("child process {} had exited: {status}", self.0.id());
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A [`ChildGuard`] whose stderr goes to a file, printed (its end) when
/// the test fails.
pub struct LoggedChild {
    pub guard: ChildGuard,
    log: PathBuf,
}

impl LoggedChild {
    /// Spawns `command` with its stderr written to `log`.
    pub fn spawn(command: &mut Command, log: PathBuf) -> Self {
        let file = std::fs::File::create(&log).unwrap();
        let child = command.stderr(file).spawn().unwrap();
        Self {
            guard: ChildGuard(child),
            log,
        }
    }
}

impl Drop for LoggedChild {
    fn drop(&mut self) {
        if std::thread::panicking()
            && let Ok(text) = std::fs::read_to_string(&self.log)
        {
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(20)..];
            eprintln!("--- end of {} ---\n{}", self.log.display(), tail.join("\n"));
        }
    }
}

/// Runs the CLI with `--home home` and returns (status ok, stdout, stderr).
pub fn cli(home: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(bin())
        .arg("--home")
        .arg(home)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs the CLI and insists it succeeds; returns stdout.
pub fn cli_ok(home: &Path, args: &[&str]) -> String {
    let (ok, out, err) = cli(home, args);
    assert!(
        ok,
        "fastchat {args:?} failed:\nstdout: {out}\nstderr: {err}"
    );
    out
}

/// Whether `needle` occurs anywhere in `haystack`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
