//! Server-side commands: `up`, `certs`, `balancer`, `node`.

use fastchat_certs::Role;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;
use fastchat_balancer::{BalancerConfig, Strategy};
use fastchat_node::{Durability, NodeConfig};

#[derive(Args)]
pub struct UpArgs {
    /// Where certificates and node data live (reused when re-run).
    #[arg(long, default_value = "fastchat-cluster")]
    dir: PathBuf,
    /// The (first) balancer's address; further balancers and then the nodes
    /// listen on the ports after it.
    #[arg(long, default_value = "127.0.0.1:7700")]
    listen: SocketAddr,
    /// How many balancers to start: every node reports to each, and clients
    /// are given them all, so losing one stops nobody.
    #[arg(long, default_value_t = 1)]
    balancers: u16,
    /// How many nodes to start (more than one starts a private nats-server
    /// unless --bus names one, and shares one SQLite file unless --store
    /// names another store).
    #[arg(long, default_value_t = 1)]
    nodes: u16,
    /// A running NATS server for the nodes (default with --nodes > 1: start one).
    #[arg(long)]
    bus: Option<String>,
    /// The nodes' store: a postgres:// URL or a SQLite file (default: one
    /// file per node, shared by all nodes when there are several).
    #[arg(long)]
    store: Option<String>,
    /// How the balancer chooses a node: round-robin, least-conn or p2c.
    #[arg(long, default_value = "p2c")]
    strategy: Strategy,
    #[command(flatten)]
    node: NodeOptions,
}

/// What `up` and `node` both let a user set about a node.
#[derive(Args)]
pub struct NodeOptions {
    /// fsync every commit (survives power loss, ~30x fewer commits/s).
    #[arg(long)]
    fsync: bool,
    /// Largest image accepted, in MiB.
    #[arg(long, default_value_t = 100)]
    max_image_mib: u64,
    /// Most MiB of not-yet-collected images one user may have stored.
    #[arg(long, default_value_t = 1024)]
    image_quota_mib: u64,
    /// Friend requests one user may send a minute.
    #[arg(long, default_value_t = fastchat_node::limits::DEFAULT_FRIEND_REQUESTS_PER_MINUTE)]
    friend_requests_per_minute: u32,
    /// Most texts that may wait for one user; past it, senders are told to
    /// try again later.
    #[arg(long, default_value_t = fastchat_node::store::DEFAULT_QUEUE_TEXTS)]
    queue_max_texts: u64,
    /// Most MiB of texts that may wait for one user.
    #[arg(long, default_value_t = fastchat_node::store::DEFAULT_QUEUE_BYTES >> 20)]
    queue_max_mib: u64,
    /// Threads that run connections (default: half the cores, at least one).
    #[arg(long)]
    workers: Option<std::num::NonZeroUsize>,
}

impl UpArgs {
    /// Worker threads the user asked for, if any.
    pub fn workers(&self) -> Option<usize> {
        self.node.workers.map(|n| n.get())
    }
}

impl NodeArgs {
    /// Worker threads the user asked for, if any.
    pub fn workers(&self) -> Option<usize> {
        self.node.workers.map(|n| n.get())
    }
}

impl NodeOptions {
    fn apply(&self, config: &mut NodeConfig) {
        config.durability = if self.fsync {
            Durability::PowerLoss
        } else {
            Durability::Process
        };
        config.max_image_bytes = self.max_image_mib * 1024 * 1024;
        config.image_quota = self.image_quota_mib * 1024 * 1024;
        config.friend_requests_per_minute = self.friend_requests_per_minute;
        config.queue_limits = fastchat_node::store::QueueLimits {
            max_texts: self.queue_max_texts,
            max_bytes: self.queue_max_mib.saturating_mul(1 << 20),
        };
    }
}

#[derive(Args)]
pub struct CertsArgs {
    /// Directory for the CA (ca.pem for clients, ca/ with its key) and one
    /// directory per role: balancer/, bus/, node-1/, ...
    #[arg(long)]
    out: PathBuf,
    /// Extra DNS names or IP addresses for the servers' certificates.
    #[arg(long = "san")]
    sans: Vec<String>,
    /// How many node certificates to make.
    #[arg(long, default_value_t = 1)]
    nodes: u16,
    /// Replace existing keys.
    #[arg(long)]
    force: bool,
}

#[derive(Args)]
pub struct BalancerArgs {
    /// UDP address to listen on.
    #[arg(long)]
    listen: SocketAddr,
    /// The balancer's certificate directory (`balancer/` from `fastchat certs`).
    #[arg(long)]
    certs: PathBuf,
    /// How to choose a node: round-robin, least-conn or p2c.
    #[arg(long, default_value = "p2c")]
    strategy: Strategy,
}

#[derive(Args)]
pub struct NodeArgs {
    /// UDP address to listen on.
    #[arg(long)]
    listen: SocketAddr,
    /// Directory for the node's database.
    #[arg(long)]
    data: PathBuf,
    /// This node's certificate directory (`node-K/` from `fastchat certs`).
    #[arg(long)]
    certs: PathBuf,
    /// The balancers to report to (repeat, or separate with commas): every
    /// one, so clients may ask any.
    #[arg(long = "balancer", value_delimiter = ',')]
    balancers: Vec<String>,
    /// Address clients should use for this node (default: the listen address).
    #[arg(long)]
    advertise: Option<String>,
    /// The durable store: a SQLite file (default DATA/node.db; nodes on one
    /// host may share one) or postgres://USER@HOST:PORT/DB.
    #[arg(long)]
    store: Option<String>,
    /// The CA of the PostgreSQL server's certificate: the node then reaches
    /// PostgreSQL over TLS and checks its name. Needed for a PostgreSQL on
    /// another machine (or --store-plaintext).
    #[arg(long)]
    store_ca: Option<PathBuf>,
    /// Reach a PostgreSQL on another machine without TLS. Only on a network
    /// nobody else can reach.
    #[arg(long)]
    store_plaintext: bool,
    /// The NATS server linking this node to the cluster's other nodes
    /// (tls://HOST:4222, run with the cluster's certificates: see the
    /// README); leave out for a node that is alone.
    #[arg(long)]
    bus: Option<String>,
    /// Reach the bus without TLS or a client certificate. Only for a NATS
    /// server on a network nobody else can reach.
    #[arg(long)]
    bus_plaintext: bool,
    #[command(flatten)]
    node: NodeOptions,
}

/// Waits for Ctrl-C or SIGTERM.
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

fn reachable(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        SocketAddr::new(IpAddr::from([127, 0, 0, 1]), addr.port())
    } else {
        addr
    }
}

pub async fn up(args: UpArgs) -> anyhow::Result<()> {
    if args.nodes == 0 {
        bail!("--nodes must be at least 1");
    }
    let certs_dir = args.dir.join("certs");
    let mut sans = Vec::new();
    if !args.listen.ip().is_unspecified() && !args.listen.ip().is_loopback() {
        sans.push(args.listen.ip().to_string());
    }
    let ca = fastchat_certs::ensure(&certs_dir, &sans, args.nodes)?;
    let role = |r| fastchat_certs::role_dir(&certs_dir, r);
    // Several nodes route to each other over NATS (TLS, cluster
    // certificates required) and share one store.
    let mut nats = None;
    let bus = match (&args.bus, args.nodes) {
        (Some(url), _) => Some(url.clone()),
        (None, 1) => None,
        (None, _) => {
            let server =
                fastchat_node::NatsServer::start(&args.dir.join("nats"), 0, &role(Role::Bus))?;
            let url = server.url();
            nats = Some(server);
            Some(url)
        }
    };
    let store = match (&args.store, args.nodes) {
        (Some(store), _) => Some(store.clone()),
        (None, 1) => None,
        (None, _) => {
            std::fs::create_dir_all(&args.dir)
                .with_context(|| format!("cannot create {}", args.dir.display()))?;
            Some(args.dir.join("cluster.db").display().to_string())
        }
    };

    let port_after = |n: u16| {
        args.listen
            .port()
            .checked_add(n)
            .context("the listen port leaves no room for the ports after it")
    };
    let mut balancers = Vec::new();
    for b in 0..args.balancers.max(1) {
        let port = if args.listen.port() == 0 {
            0
        } else {
            port_after(b)?
        };
        let mut config = BalancerConfig::new(
            SocketAddr::new(args.listen.ip(), port),
            role(Role::Balancer),
        );
        config.strategy = args.strategy;
        balancers.push(
            fastchat_balancer::start(config)
                .await
                .context("cannot start the balancer")?,
        );
    }
    let balancer_addrs: Vec<String> = balancers
        .iter()
        .map(|b| reachable(b.local_addr()).to_string())
        .collect();
    let balancer_addr = balancer_addrs.join(",");
    let mut nodes = Vec::new();
    for k in 1..=args.nodes {
        let port = port_after(args.balancers.max(1) - 1 + k)?;
        let mut config = NodeConfig::new(
            SocketAddr::new(
                args.listen.ip(),
                if args.listen.port() == 0 { 0 } else { port },
            ),
            args.dir.join(format!("node-{k}")),
            role(Role::Node(k)),
        );
        config.balancers = balancer_addrs.clone();
        config.bus = bus.clone();
        config.store = store.clone();
        args.node.apply(&mut config);
        let node = fastchat_node::start(config)
            .await
            .with_context(|| format!("cannot start node {k}"))?;
        nodes.push(node);
    }
    // Ready means a client can register now: every node has reported to
    // every balancer.
    for balancer in &balancers {
        if !balancer
            .wait_for_nodes(nodes.len(), std::time::Duration::from_secs(10))
            .await
        {
            tracing::warn!("not every node has reported to every balancer yet");
        }
    }
    let bus_note = match (&nats, &bus) {
        (Some(server), _) => format!(" over nats-server {}", server.url()),
        (None, Some(url)) => format!(" over {url}"),
        (None, None) => String::new(),
    };
    println!(
        "fastchat is up: {} on {balancer_addr}, {} node(s){bus_note}; register with --server {balancer_addr} --ca {} (Ctrl-C stops)",
        if balancers.len() > 1 {
            "balancers"
        } else {
            "balancer"
        },
        nodes.len(),
        ca.display()
    );
    stop_signal().await;
    tracing::info!("shutting down");
    for node in nodes {
        node.shutdown().await;
    }
    for balancer in balancers {
        balancer.shutdown().await;
    }
    drop(nats);
    Ok(())
}

pub fn certs(args: CertsArgs) -> anyhow::Result<()> {
    let ca = fastchat_certs::generate(&args.out, &args.sans, args.force, args.nodes)?;
    println!(
        "wrote the cluster CA to {} (give it to clients), its key to {} (keep it off the servers), and one directory per role in {}: balancer, bus, node-1..node-{} (copy each only to the machine that runs it)",
        ca.display(),
        args.out.join(fastchat_certs::CA_DIR).display(),
        args.out.display(),
        args.nodes.max(1)
    );
    Ok(())
}

pub async fn balancer(args: BalancerArgs) -> anyhow::Result<()> {
    let mut config = BalancerConfig::new(args.listen, args.certs);
    config.strategy = args.strategy;
    let handle = fastchat_balancer::start(config).await?;
    println!("balancer listening on {}", handle.local_addr());
    stop_signal().await;
    handle.shutdown().await;
    Ok(())
}

pub async fn node(args: NodeArgs) -> anyhow::Result<()> {
    let mut config = NodeConfig::new(args.listen, args.data, args.certs);
    config.advertise = args.advertise;
    config.balancers = args.balancers;
    config.store = args.store;
    config.store_ca = args.store_ca;
    config.store_plaintext = args.store_plaintext;
    config.bus = args.bus;
    config.bus_plaintext = args.bus_plaintext;
    args.node.apply(&mut config);
    let handle = fastchat_node::start(config).await?;
    println!(
        "node listening on {} (advertised as {})",
        handle.local_addr(),
        handle.advertised()
    );
    stop_signal().await;
    handle.shutdown().await;
    Ok(())
}
