//! Starting and stopping a node: open the store, bind the endpoint, accept
//! connections, keep the balancer informed.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use fastchat_certs::NodeIdentity;
use fastchat_transport::quinn::Endpoint;
use fastchat_transport::{Listener, ServerKind, server_endpoint};
use tokio::task::JoinHandle;

use crate::bus::{Bus, LocalBus, NatsBus};
use crate::shared::{ImageLimits, Shared};
use crate::store::{Durability, QueueLimits, SharedSqlite, Store, StoreError};

/// Everything a node needs to start.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// UDP address to listen on (port 0 picks a free one).
    pub listen: SocketAddr,
    /// Address clients should be sent to; defaults to the bound address
    /// (with an unspecified IP replaced by 127.0.0.1).
    pub advertise: Option<String>,
    /// Directory for the node's SQLite file.
    pub data_dir: PathBuf,
    /// Directory holding `ca.pem`, `node.pem`, `node.key`.
    pub certs_dir: PathBuf,
    /// The balancers to report to (every one of them, so clients may ask
    /// any); empty for a node nobody is sent to.
    pub balancers: Vec<String>,
    /// Commit durability.
    pub durability: Durability,
    /// Largest image accepted, in bytes.
    pub max_image_bytes: u64,
    /// Most bytes of uncollected images one user may have stored.
    pub image_quota: u64,
    /// How long a recipient's fetch that follows an upload waits for the
    /// upload to move before the node ends it (the recipient asks again).
    pub image_stall: Duration,
    /// Friend requests one user may send a minute.
    pub friend_requests_per_minute: u32,
    /// How much may wait for one user (texts, bytes).
    pub queue_limits: QueueLimits,
    /// The durable store: `None` for `node.db` in the data directory, a
    /// SQLite file path (several nodes on one host may share it), or a
    /// `postgres://` URL.
    pub store: Option<String>,
    /// The CA that signed the PostgreSQL server's certificate: with it the
    /// node speaks TLS to PostgreSQL and checks the server's name.
    pub store_ca: Option<PathBuf>,
    /// Reach a PostgreSQL on another machine without TLS (a private
    /// network only); without it and without `store_ca`, only this machine.
    pub store_plaintext: bool,
    /// The NATS server linking this node to the others (`tls://host:port`);
    /// `None` for a node that is alone.
    pub bus: Option<String>,
    /// Reach the bus without TLS (only for a NATS server on a network
    /// nobody else can reach): by default the node speaks TLS to it and
    /// presents its certificate from `certs_dir`.
    pub bus_plaintext: bool,
}

/// How long a fetch follows a stalled upload by default.
const DEFAULT_IMAGE_STALL: Duration = Duration::from_secs(30);

impl NodeConfig {
    /// A configuration with default durability and image limits.
    pub fn new(listen: SocketAddr, data_dir: PathBuf, certs_dir: PathBuf) -> Self {
        Self {
            listen,
            advertise: None,
            data_dir,
            certs_dir,
            balancers: Vec::new(),
            durability: Durability::default(),
            max_image_bytes: fastchat_proto::limits::DEFAULT_MAX_IMAGE,
            image_quota: fastchat_proto::limits::DEFAULT_IMAGE_QUOTA,
            image_stall: DEFAULT_IMAGE_STALL,
            friend_requests_per_minute: crate::limits::DEFAULT_FRIEND_REQUESTS_PER_MINUTE,
            queue_limits: QueueLimits::default(),
            store: None,
            store_ca: None,
            store_plaintext: false,
            bus: None,
            bus_plaintext: false,
        }
    }
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// Certificates missing or unreadable.
    #[error(transparent)]
    Certs(#[from] fastchat_certs::CertError),
    /// The endpoint could not be created.
    #[error(transparent)]
    Transport(#[from] fastchat_transport::TransportError),
    /// The store could not be opened.
    #[error("cannot open the node database in {dir}: {cause}")]
    Store {
        /// The data directory.
        dir: PathBuf,
        /// The cause.
        cause: StoreError,
    },
    /// The bus could not be reached.
    #[error(transparent)]
    Bus(#[from] crate::bus::BusError),
    /// The data directory could not be created.
    #[error("cannot create the data directory {dir}: {cause}")]
    DataDir {
        /// The directory.
        dir: PathBuf,
        /// The cause.
        cause: std::io::Error,
    },
}

/// A running node.
pub struct NodeHandle {
    endpoint: Endpoint,
    accept: JoinHandle<()>,
    links: Vec<JoinHandle<()>>,
    advertised: String,
    store: OpenStore,
}

/// The store a node opened: its own, or a SQLite file shared with the
/// other nodes of this process.
enum OpenStore {
    Own(Arc<dyn Store>),
    Shared(SharedSqlite),
}

impl OpenStore {
    fn handle(&self) -> Arc<dyn Store> {
        match self {
            Self::Own(store) => store.clone(),
            Self::Shared(file) => file.store(),
        }
    }

    async fn close(self) {
        match self {
            Self::Own(store) => store.close().await,
            Self::Shared(file) => file.close().await,
        }
    }
}

impl NodeHandle {
    /// The address the node is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.endpoint.local_addr().expect("bound endpoint")
    }

    /// The address the node tells the balancer.
    pub fn advertised(&self) -> &str {
        &self.advertised
    }

    /// Closes every connection, then the store, and stops.
    pub async fn shutdown(self) {
        for link in &self.links {
            link.abort();
        }
        self.endpoint.close(0u32.into(), b"node shutting down");
        self.accept.abort();
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
        // Sessions still finishing see the store as unavailable; what they
        // had not committed was never acknowledged.
        self.store.close().await;
    }
}

/// The node database's file name inside the data directory.
pub const DB_FILE: &str = "node.db";

/// Starts a node; it runs on the current tokio runtime until shut down.
pub async fn start(config: NodeConfig) -> Result<NodeHandle, NodeError> {
    let identity = NodeIdentity::load(&config.certs_dir)?;
    std::fs::create_dir_all(&config.data_dir).map_err(|cause| NodeError::DataDir {
        dir: config.data_dir.clone(),
        cause,
    })?;
    let opened = open_store(&config).await?;
    let store = opened.handle();
    let listener = server_endpoint(config.listen, &identity, ServerKind::Node)?;
    let endpoint = listener.endpoint().clone();
    let local = endpoint.local_addr().expect("bound endpoint");
    let advertised = config.advertise.clone().unwrap_or_else(|| {
        let ip = if local.ip().is_unspecified() {
            "127.0.0.1".parse().expect("literal")
        } else {
            local.ip()
        };
        SocketAddr::new(ip, local.port()).to_string()
    });
    let blob_dir = config.data_dir.join("blobs");
    std::fs::create_dir_all(&blob_dir).map_err(|cause| NodeError::DataDir {
        dir: blob_dir.clone(),
        cause,
    })?;
    let bus: Arc<dyn Bus> = match &config.bus {
        None => Arc::new(LocalBus::new(&advertised)),
        Some(url) => {
            let tls = (!config.bus_plaintext).then_some(config.certs_dir.as_path());
            Arc::new(NatsBus::connect(url, &advertised, tls).await?)
        }
    };
    let shared = Arc::new(Shared::new(
        store.clone(),
        bus,
        (blob_dir, config.durability == Durability::PowerLoss),
        (
            ImageLimits {
                max_bytes: config.max_image_bytes,
                quota: config.image_quota,
                stall: config.image_stall,
            },
            config.queue_limits,
        ),
        config.friend_requests_per_minute.max(1),
    ));

    shared
        .bus
        .start(shared.blobs.clone(), shared.sessions.clone())
        .await?;

    let accept = tokio::spawn(accept_loop(listener, shared.clone()));
    let links = config
        .balancers
        .iter()
        .map(|balancer| {
            tokio::spawn(crate::balancer_link::run(
                balancer.clone(),
                identity.clone_identity(),
                advertised.clone(),
                shared.clone(),
            ))
        })
        .collect();
    tracing::info!(addr = %local, advertised = %advertised, "node listening");
    Ok(NodeHandle {
        endpoint,
        accept,
        links,
        advertised,
        store: opened,
    })
}

/// Opens the store the configuration names.
async fn open_store(config: &NodeConfig) -> Result<OpenStore, NodeError> {
    let failed = |cause| NodeError::Store {
        dir: config.data_dir.clone(),
        cause,
    };
    match config.store.as_deref() {
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            let tls = match &config.store_ca {
                Some(ca) => crate::store::PostgresTls::Verify(fastchat_certs::load_certs(ca)?),
                None => crate::store::PostgresTls::Plain {
                    anywhere: config.store_plaintext,
                },
            };
            let store = crate::store::PostgresStore::connect(url, &tls)
                .await
                .map_err(failed)?;
            Ok(OpenStore::Own(Arc::new(store)))
        }
        other => {
            let path = match other {
                Some(path) => PathBuf::from(path.strip_prefix("sqlite://").unwrap_or(path)),
                None => config.data_dir.join(DB_FILE),
            };
            let file = SharedSqlite::open(&path, config.durability).map_err(failed)?;
            Ok(OpenStore::Shared(file))
        }
    }
}

async fn accept_loop(listener: Listener, shared: Arc<Shared>) {
    while let Some(accepting) = listener.accept().await {
        tokio::spawn(crate::connection::serve(shared.clone(), accepting));
    }
}
