//! Building quinn endpoints. Both sides use the ring provider explicitly:
//! with quinn, rcgen and rustls all compiled in, the process-default provider
//! is ambiguous and `ClientConfig::builder()` would panic.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use crate::eager_socket::EagerSocket;
use crate::receive_buffer::BoundedReceive;
use fastchat_certs::NodeIdentity;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{
    AsyncUdpSocket, Connection, Endpoint, EndpointConfig, IdleTimeout, TransportConfig, VarInt,
};
use rustls::RootCertStore;
use rustls::pki_types::{CertificateDer, ServerName};
use socket2::{Domain, Protocol, Socket, Type};

/// UDP buffer size: with the OS default (208 KiB) handshake bursts drop
/// Initial packets and each waits a ~1 s retransmit (NOTES-deps.md).
const SOCKET_BUFFER: usize = 4 * 1024 * 1024;

/// Idle connections are closed after this long without packets (the
/// server's side; a connection uses the lower of the two peers' values).
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest a client waits on a silent server, handshake included: a
/// server swamped by a burst of handshakes is slow, not dead. (A link in
/// use notices a dead peer sooner: [`crate::closed_or_silent`].)
const CLIENT_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Clients ping this often, so a live node is never silent for long.
const KEEP_ALIVE: Duration = Duration::from_millis(750);

/// Bytes a peer may have in flight to us on one connection, all streams
/// together (each stream's own window stays quinn's 1.25 MB).
const CONNECTION_RECEIVE_WINDOW: u32 = 16 << 20;

/// Streams a peer may have open at once towards a node.
const MAX_BIDI_STREAMS: u32 = 256;

/// Why an endpoint could not be made or a connection not established.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The UDP socket could not be bound.
    #[error("cannot listen on {addr}: {cause}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The cause.
        #[source]
        cause: std::io::Error,
    },
    /// The TLS configuration was refused (bad certificate or key).
    #[error("the TLS configuration is invalid: {0}")]
    Tls(#[from] rustls::Error),
    /// The client-certificate verifier could not be built from the CA.
    #[error("the TLS configuration is invalid: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// TLS offers no cipher suite QUIC can use.
    #[error("the TLS configuration is invalid: {0}")]
    NoQuicCipher(#[from] quinn::crypto::rustls::NoInitialCipherSuite),
    /// The address could not be parsed or resolved.
    #[error("'{0}' is not a reachable address (expected HOST:PORT)")]
    BadAddress(String),
    /// The peer's certificate is not signed by the cluster CA we trust.
    #[error(
        "the server at {0} presented a certificate not signed by the cluster CA; check that you were given the right CA file"
    )]
    UntrustedPeer(String),
    /// Nothing answered, or the handshake failed.
    #[error("cannot connect to {addr}: {reason}")]
    Connect {
        /// The target.
        addr: String,
        /// What went wrong.
        reason: String,
    },
}

/// What a server endpoint serves: it decides whether peers may present a
/// certificate and whether paths are probed for a larger MTU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerKind {
    /// A node. Clients are anonymous at the TLS level (users log in with
    /// their identity key); connections live long and carry images, so
    /// packets grow past QUIC's 1200 bytes: to 6,000 at once over loopback,
    /// probed up to 1,452 elsewhere.
    Node,
    /// A balancer. Peers may present a certificate signed by the cluster CA
    /// (nodes do, plain clients do not). A client's exchange is one
    /// question and a short answer, so neither side probes the path: the
    /// probes (padding, parsed a byte at a time) were a tenth of a login's
    /// CPU on both sides.
    Balancer,
}

/// QUIC's smallest datagram, which every path must carry; a balancer
/// announces it as its largest, so clients never probe towards it.
const MIN_UDP_PAYLOAD: u16 = 1200;

/// The datagram size of a node's connections over loopback, where the
/// path's MTU is 64 KiB and known without probing: a batch of texts then
/// goes in a few packets instead of one per 1.4 kB, and quinn's cost is
/// per packet (node instructions per relayed text −17%). quinn hands the
/// kernel up to 10 packets per send (GSO), which must stay under 64 KiB
/// together: above ~6.5 kB sends fail and throughput collapses
/// (NOTES-deps.md), hence 6,000. Other paths probe up to Ethernet's 1,452
/// as before: probing higher cost a login ~0.9 ms of CPU on each side
/// (quinn reads a probe's padding a byte at a time).
const LOOPBACK_UDP_PAYLOAD: u16 = 6000;

/// A loopback connection's first congestion window: ten of its packets,
/// as QUIC allows ten of Ethernet's. quinn's default (12,000 bytes, ten
/// 1,200-byte packets) holds one 6,000-byte packet, since a packet is sent
/// only while another would still fit: the first flight of a file was that
/// one packet, which the peer acknowledges only after its 25 ms ACK delay,
/// and every thread slept meanwhile (`perf` sched_switch over `bench
/// image`: 24 ms of ~150). Loopback has no shared link to be gentle with;
/// the window still shrinks on loss.
const LOOPBACK_INITIAL_WINDOW: u64 = 10 * LOOPBACK_UDP_PAYLOAD as u64;

/// How a connection sizes its packets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PathMtu {
    /// QUIC's 1,200 bytes, never probed (a balancer's short exchanges).
    Minimum,
    /// Probed from 1,200 up to Ethernet's 1,452 once connected.
    Probed,
    /// [`LOOPBACK_UDP_PAYLOAD`] from the first packet.
    Loopback,
}

impl PathMtu {
    /// A node connection's setting for a peer at `addr`.
    fn towards(addr: SocketAddr) -> Self {
        if addr.ip().to_canonical().is_loopback() {
            PathMtu::Loopback
        } else {
            PathMtu::Probed
        }
    }
}

/// ring, with AES-128-GCM/SHA-256 preferred: the handshake's key schedule
/// then hashes with SHA-256, which this class of CPU does in hardware
/// (SHA-384 in software was a twentieth of a client's login), and packets
/// take fewer AES rounds. AES-256 and ChaCha20 stay available.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    use rustls::crypto::ring::cipher_suite;
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites = vec![
        cipher_suite::TLS13_AES_128_GCM_SHA256,
        cipher_suite::TLS13_AES_256_GCM_SHA384,
        cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
    ];
    Arc::new(provider)
}

fn roots(ca: &[CertificateDer<'static>]) -> Result<RootCertStore, TransportError> {
    let mut roots = RootCertStore::empty();
    for cert in ca {
        roots.add(cert.clone())?;
    }
    Ok(roots)
}

fn udp_socket(addr: SocketAddr) -> Result<UdpSocket, TransportError> {
    let bind_err = |cause| TransportError::Bind { addr, cause };
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))
        .map_err(bind_err)?;
    if addr.is_ipv6() {
        // Dual-stack so a client bound to [::] reaches IPv4 nodes too.
        let _ = socket.set_only_v6(false);
    }
    // Larger buffers are an optimisation; a kernel cap is not an error.
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
    socket.bind(&addr.into()).map_err(bind_err)?;
    Ok(socket.into())
}

fn transport_config(client: bool, mtu: PathMtu) -> Arc<TransportConfig> {
    let mut t = TransportConfig::default();
    let idle = if client {
        CLIENT_IDLE_TIMEOUT
    } else {
        IDLE_TIMEOUT
    };
    t.max_idle_timeout(Some(IdleTimeout::from(VarInt::from_u32(
        idle.as_millis() as u32
    ))));
    t.max_concurrent_bidi_streams(VarInt::from_u32(MAX_BIDI_STREAMS));
    // quinn's connection-wide window is unbounded by default: a peer could
    // make us buffer a full stream window on every one of its streams.
    t.receive_window(VarInt::from_u32(CONNECTION_RECEIVE_WINDOW));
    // Nothing in the protocol uses unidirectional streams yet.
    t.max_concurrent_uni_streams(VarInt::from_u32(0));
    if client {
        t.keep_alive_interval(Some(KEEP_ALIVE));
    }
    match mtu {
        PathMtu::Minimum => {
            t.mtu_discovery_config(None);
        }
        PathMtu::Probed => {}
        PathMtu::Loopback => {
            t.initial_mtu(LOOPBACK_UDP_PAYLOAD);
            t.mtu_discovery_config(None);
            let mut cubic = quinn::congestion::CubicConfig::default();
            cubic.initial_window(LOOPBACK_INITIAL_WINDOW);
            t.congestion_controller_factory(Arc::new(cubic));
        }
    }
    Arc::new(t)
}

/// How an endpoint's socket reads datagrams.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reads {
    /// Coalesced by the kernel (GRO) into reads of up to 64 KiB: a server's
    /// socket, which carries every peer's traffic.
    Coalesced,
    /// One datagram per read: a client's socket. quinn reads 32 at a time
    /// into a buffer it zeroes when the endpoint is made; coalesced reads
    /// need 2 MiB of it, single datagrams 192 KiB. Those pages were a
    /// quarter of a login's CPU on the client (perf, `bench connect`:
    /// allocation, page faults, zeroing).
    Single,
}

/// An endpoint on `addr` accepting datagrams of up to `largest` bytes
/// (announced to peers, who send no larger).
fn endpoint_on(
    addr: SocketAddr,
    largest: u16,
    reads: Reads,
    server: Option<quinn::ServerConfig>,
) -> Result<Endpoint, TransportError> {
    let bind_err = |cause| TransportError::Bind { addr, cause };
    let mut config = EndpointConfig::default();
    config
        .max_udp_payload_size(largest)
        .expect("the sizes used here are within QUIC's bounds");
    let runtime = quinn::TokioRuntime;
    let udp = udp_socket(addr)?;
    // quinn turns coalescing on when the socket is wrapped; a second handle
    // on the same socket turns it off again.
    let same = match reads {
        Reads::Single => Some(udp.try_clone().map_err(bind_err)?),
        Reads::Coalesced => None,
    };
    let socket: Arc<dyn AsyncUdpSocket> = Arc::new(EagerSocket::new(udp).map_err(bind_err)?);
    let segments = match same {
        Some(same) if coalescing_off(&same) => 1,
        _ => BoundedReceive::segments_for(socket.as_ref(), largest),
    };
    let socket = Arc::new(BoundedReceive::new(socket, segments));
    Endpoint::new_with_abstract_socket(config, server, socket, Arc::new(runtime)).map_err(bind_err)
}

/// Turns the kernel's receive coalescing (UDP GRO) off for `socket`; false
/// where it cannot be, and reads must then stay sized for it.
#[cfg(not(target_os = "linux"))]
fn coalescing_off(_socket: &UdpSocket) -> bool {
    false
}

/// Turns the kernel's receive coalescing (UDP GRO) off for `socket`; false
/// where it cannot be, and reads must then stay sized for it.
#[cfg(target_os = "linux")]
fn coalescing_off(socket: &UdpSocket) -> bool {
    use std::os::fd::AsRawFd;
    let off: libc::c_int = 0;
    // SAFETY: a valid socket and a c_int option of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_UDP,
            libc::UDP_GRO,
            (&off as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    rc == 0
}

/// The client's TLS and QUIC settings: for paths that probe, and for
/// loopback.
fn client_configs(
    ca: &[CertificateDer<'static>],
    client_cert: Option<&NodeIdentity>,
) -> Result<(quinn::ClientConfig, quinn::ClientConfig), TransportError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots(ca)?);
    let mut tls = match client_cert {
        Some(id) => builder.with_client_auth_cert(id.chain.clone(), id.key.clone_key())?,
        None => builder.with_no_client_auth(),
    };
    tls.alpn_protocols = vec![fastchat_proto::ALPN.to_vec()];
    let quic = QuicClientConfig::try_from(tls)?;
    let mut probed = quinn::ClientConfig::new(Arc::new(quic));
    let mut loopback = probed.clone();
    probed.transport_config(transport_config(true, PathMtu::Probed));
    loopback.transport_config(transport_config(true, PathMtu::Loopback));
    Ok((probed, loopback))
}

/// A server's endpoint, with the settings each connection gets by its path.
#[derive(Clone, Debug)]
pub struct Listener {
    endpoint: Endpoint,
    /// A node's settings for peers on this host (see [`PathMtu`]).
    loopback: Option<Arc<quinn::ServerConfig>>,
}

impl Listener {
    /// The endpoint (its address, closing it).
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The next connection attempt, accepted with its path's settings:
    /// await it for the connection or why its handshake failed. `None` once
    /// the endpoint is closed.
    pub async fn accept(
        &self,
    ) -> Option<impl Future<Output = Result<Connection, quinn::ConnectionError>> + Send + 'static>
    {
        let incoming = self.endpoint.accept().await?;
        let attempt = match &self.loopback {
            Some(config) if PathMtu::towards(incoming.remote_address()) == PathMtu::Loopback => {
                incoming.accept_with(config.clone())
            }
            _ => incoming.accept(),
        };
        Some(async move { attempt?.await })
    }
}

/// A server endpoint on `addr` presenting the node certificate.
pub fn server_endpoint(
    addr: SocketAddr,
    identity: &NodeIdentity,
    kind: ServerKind,
) -> Result<Listener, TransportError> {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?;
    let builder = match kind {
        ServerKind::Node => builder.with_no_client_auth(),
        ServerKind::Balancer => {
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots(&identity.ca)?),
                provider(),
            )
            .allow_unauthenticated()
            .build()?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut tls = builder.with_single_cert(identity.chain.clone(), identity.key.clone_key())?;
    tls.alpn_protocols = vec![fastchat_proto::ALPN.to_vec()];
    let quic = QuicServerConfig::try_from(tls)?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(quic));
    let (largest, loopback) = match kind {
        ServerKind::Node => {
            let mut loopback = server.clone();
            loopback.transport_config(transport_config(false, PathMtu::Loopback));
            server.transport_config(transport_config(false, PathMtu::Probed));
            (LOOPBACK_UDP_PAYLOAD, Some(Arc::new(loopback)))
        }
        ServerKind::Balancer => {
            server.transport_config(transport_config(false, PathMtu::Minimum));
            (MIN_UDP_PAYLOAD, None)
        }
    };
    Ok(Listener {
        endpoint: endpoint_on(addr, largest, Reads::Coalesced, Some(server))?,
        loopback,
    })
}

/// A client's endpoint, with its settings for loopback paths.
#[derive(Clone, Debug)]
pub struct ClientEndpoint {
    endpoint: Endpoint,
    loopback: quinn::ClientConfig,
}

impl ClientEndpoint {
    /// The endpoint (closing it, waiting for it to be idle).
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }
}

/// A client endpoint that trusts only `ca`; with `client_cert` it also
/// proves itself a cluster member (nodes reporting to the balancer).
pub fn client_endpoint(
    ca: &[CertificateDer<'static>],
    client_cert: Option<&NodeIdentity>,
) -> Result<ClientEndpoint, TransportError> {
    let mut endpoint = match endpoint_on(
        SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
        LOOPBACK_UDP_PAYLOAD,
        Reads::Single,
        None,
    ) {
        Ok(e) => e,
        // Hosts without IPv6 still get a working IPv4 endpoint.
        Err(_) => endpoint_on(
            SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
            LOOPBACK_UDP_PAYLOAD,
            Reads::Single,
            None,
        )?,
    };
    let (probed, loopback) = client_configs(ca, client_cert)?;
    endpoint.set_default_client_config(probed);
    Ok(ClientEndpoint { endpoint, loopback })
}

/// Connects to `target` (`HOST:PORT`), checking the certificate against the
/// endpoint's CA and `HOST`.
pub async fn connect(
    endpoint: &ClientEndpoint,
    target: &str,
) -> Result<Connection, TransportError> {
    let bad = || TransportError::BadAddress(target.to_string());
    let (host, _) = target.rsplit_once(':').ok_or_else(bad)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_string()).map_err(|_| bad())?;
    let mut addrs = tokio::net::lookup_host(target).await.map_err(|_| bad())?;
    let addr = addrs.next().ok_or_else(bad)?;
    let connecting = match PathMtu::towards(addr) {
        PathMtu::Loopback => endpoint
            .endpoint
            .connect_with(endpoint.loopback.clone(), addr, host),
        _ => endpoint.endpoint.connect(addr, host),
    }
    .map_err(|e| TransportError::Connect {
        addr: target.to_string(),
        reason: e.to_string(),
    })?;
    connecting.await.map_err(|e| classify(target, e))
}

fn classify(target: &str, e: quinn::ConnectionError) -> TransportError {
    let text = e.to_string();
    if text.contains("invalid peer certificate") || text.contains("UnknownIssuer") {
        return TransportError::UntrustedPeer(target.to_string());
    }
    let reason = match e {
        quinn::ConnectionError::TimedOut => "no answer (is the server running?)".to_string(),
        other => other.to_string(),
    };
    TransportError::Connect {
        addr: target.to_string(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    fn coalescing(socket: &UdpSocket) -> libc::c_int {
        use std::os::fd::AsRawFd;
        let mut on: libc::c_int = -1;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: a valid socket and a c_int with its size.
        let rc = unsafe {
            libc::getsockopt(
                socket.as_raw_fd(),
                libc::SOL_UDP,
                libc::UDP_GRO,
                (&mut on as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        // A kernel without the option reads single datagrams anyway.
        if rc == 0 { on } else { 0 }
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_client_socket_reads_single_datagrams_after_it_is_wrapped() {
        // quinn's socket state turns coalescing on; a client's 192 KiB of read slots
        // would cut coalesced reads short if it stayed on.
        let udp = udp_socket(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).unwrap();
        let same = udp.try_clone().unwrap();
        let _wrapped = EagerSocket::new(udp).unwrap();
        if coalescing(&same) == 0 {
            return; // a kernel without UDP GRO: nothing to turn off
        }
        assert!(coalescing_off(&same));
        assert_eq!(coalescing(&same), 0);
    }

    #[test]
    fn only_peers_on_this_host_get_large_packets_unprobed() {
        for addr in ["127.0.0.1:4433", "[::1]:4433", "[::ffff:127.0.0.1]:4433"] {
            assert_eq!(
                PathMtu::towards(addr.parse().unwrap()),
                PathMtu::Loopback,
                "{addr}"
            );
        }
        for addr in [
            "192.0.2.1:4433",
            "[2001:db8::1]:4433",
            "[::ffff:192.0.2.1]:4433",
        ] {
            assert_eq!(
                PathMtu::towards(addr.parse().unwrap()),
                PathMtu::Probed,
                "{addr}"
            );
        }
    }
}
