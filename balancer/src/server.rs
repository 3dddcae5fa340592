//! The balancer's QUIC server: one stream per request.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fastchat_certs::NodeIdentity;
use fastchat_proto::balancer::{BalancerRequest, BalancerResponse};
use fastchat_proto::error::close;
use fastchat_proto::limits::MAX_CONTROL_FRAME;
use fastchat_proto::{ErrorCode, ProtoError};
use fastchat_transport::quinn::{Connection, Endpoint, RecvStream, SendStream};
use fastchat_transport::{Listener, ServerKind, read_frame, server_endpoint, write_frame};
use tokio::task::JoinHandle;

use crate::registry::{Registry, Strategy};

/// Everything a balancer needs to start.
#[derive(Clone, Debug)]
pub struct BalancerConfig {
    /// UDP address to listen on.
    pub listen: SocketAddr,
    /// Directory with `ca.pem`, `node.pem`, `node.key`.
    pub certs_dir: PathBuf,
    /// How to choose a node.
    pub strategy: Strategy,
    /// Drop a node after this long without a report.
    pub node_timeout: Duration,
}

impl BalancerConfig {
    /// Defaults: p2c, nodes dropped after 2 s of silence (four missed reports).
    pub fn new(listen: SocketAddr, certs_dir: PathBuf) -> Self {
        Self {
            listen,
            certs_dir,
            strategy: Strategy::default(),
            node_timeout: Duration::from_secs(2),
        }
    }
}

/// Why the balancer could not start.
#[derive(Debug, thiserror::Error)]
pub enum BalancerError {
    /// Certificates missing or unreadable.
    #[error(transparent)]
    Certs(#[from] fastchat_certs::CertError),
    /// The endpoint could not be created.
    #[error(transparent)]
    Transport(#[from] fastchat_transport::TransportError),
}

/// A running balancer.
pub struct BalancerHandle {
    endpoint: Endpoint,
    accept: JoinHandle<()>,
    registry: Arc<Mutex<Registry>>,
}

impl BalancerHandle {
    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.endpoint.local_addr().expect("bound endpoint")
    }

    /// Waits until at least `n` nodes have reported, for at most `limit`;
    /// false if they did not in time.
    pub async fn wait_for_nodes(&self, n: usize, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            let live = self
                .registry
                .lock()
                .expect("registry lock")
                .live(Instant::now())
                .len();
            if live >= n {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops accepting and closes every connection.
    pub async fn shutdown(self) {
        self.endpoint
            .close(close::SHUTDOWN.into(), b"balancer shutting down");
        self.accept.abort();
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
    }
}

/// Starts a balancer on the current tokio runtime.
pub async fn start(config: BalancerConfig) -> Result<BalancerHandle, BalancerError> {
    let identity = NodeIdentity::load(&config.certs_dir)?;
    let listener = server_endpoint(config.listen, &identity, ServerKind::Balancer)?;
    let endpoint = listener.endpoint().clone();
    let registry = Arc::new(Mutex::new(Registry::new(
        config.strategy,
        config.node_timeout,
    )));
    tracing::info!(addr = %endpoint.local_addr().expect("bound"), strategy = %config.strategy, "balancer listening");
    let accept = tokio::spawn(accept_loop(listener, registry.clone()));
    Ok(BalancerHandle {
        endpoint,
        accept,
        registry,
    })
}

async fn accept_loop(listener: Listener, registry: Arc<Mutex<Registry>>) {
    while let Some(accepting) = listener.accept().await {
        let registry = registry.clone();
        tokio::spawn(async move {
            if let Ok(conn) = accepting.await {
                serve(conn, registry).await;
            }
        });
    }
}

async fn serve(conn: Connection, registry: Arc<Mutex<Registry>>) {
    // rustls verified any certificate presented against the cluster CA, so
    // its presence is what marks a node.
    let is_node = conn.peer_identity().is_some();
    while let Ok((send, recv)) = conn.accept_bi().await {
        let registry = registry.clone();
        tokio::spawn(answer(send, recv, registry, is_node));
    }
}

fn random() -> u64 {
    RandomState::new().hash_one(Instant::now())
}

async fn answer(
    mut send: SendStream,
    mut recv: RecvStream,
    registry: Arc<Mutex<Registry>>,
    is_node: bool,
) {
    let mut buf = Vec::new();
    let request = match tokio::time::timeout(
        Duration::from_secs(10),
        read_frame::<BalancerRequest>(&mut recv, MAX_CONTROL_FRAME, &mut buf),
    )
    .await
    {
        Ok(Ok(Some(r))) => r,
        _ => {
            let _ = send.reset(close::PROTOCOL.into());
            return;
        }
    };
    let now = Instant::now();
    let response = {
        let mut reg = registry.lock().expect("registry lock");
        match request {
            BalancerRequest::PickNode => match reg.pick(now, random()) {
                Some(addr) => BalancerResponse::Node { addr },
                None => BalancerResponse::Error(ProtoError::new(
                    ErrorCode::NoNodes,
                    "no node is available right now; try again shortly",
                )),
            },
            BalancerRequest::Report(report) if is_node => {
                reg.report(report, now);
                BalancerResponse::Reported
            }
            BalancerRequest::Report(_) => BalancerResponse::Error(ProtoError::new(
                ErrorCode::AuthFailed,
                "only nodes with a cluster certificate may report",
            )),
            BalancerRequest::Status => BalancerResponse::Status {
                strategy: reg.strategy().to_string(),
                nodes: reg.live(now),
            },
        }
    };
    if write_frame(&mut send, &response, MAX_CONTROL_FRAME)
        .await
        .is_ok()
    {
        let _ = send.finish();
    }
}
