//! Through a UDP relay the test controls: a handshake the server answers
//! late still connects (the idle timeout is patient), and an established
//! link whose peer goes silent is closed within `PEER_SILENCE`, while a
//! live one is left alone.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fastchat_certs::NodeIdentity;
use fastchat_transport::quinn::ConnectionError;
use fastchat_transport::{
    PEER_SILENCE, ServerKind, client_endpoint, closed_or_silent, connect, server_endpoint,
};
use tokio::net::UdpSocket;

/// A loopback UDP relay in front of one server: it can hold every packet
/// for a while (a swamped server) or drop them all (a killed one).
struct Relay {
    addr: SocketAddr,
    hold_ms: Arc<AtomicU64>,
    dropping: Arc<AtomicBool>,
}

impl Relay {
    async fn start(server: SocketAddr) -> Self {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let back = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        back.connect(server).await.unwrap();
        let relay = Self {
            addr: front.local_addr().unwrap(),
            hold_ms: Arc::new(AtomicU64::new(0)),
            dropping: Arc::new(AtomicBool::new(false)),
        };
        let client = Arc::new(tokio::sync::Mutex::new(None::<SocketAddr>));
        let (hold, dropping) = (relay.hold_ms.clone(), relay.dropping.clone());
        let (f, b, c) = (front.clone(), back.clone(), client.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            while let Ok((n, from)) = f.recv_from(&mut buf).await {
                *c.lock().await = Some(from);
                if dropping.load(Ordering::Relaxed) {
                    continue;
                }
                let (packet, b) = (buf[..n].to_vec(), b.clone());
                let hold = Duration::from_millis(hold.load(Ordering::Relaxed));
                tokio::spawn(async move {
                    tokio::time::sleep(hold).await;
                    let _ = b.send(&packet).await;
                });
            }
        });
        let dropping = relay.dropping.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            while let Ok(n) = back.recv(&mut buf).await {
                let to = *client.lock().await;
                if let (Some(to), false) = (to, dropping.load(Ordering::Relaxed)) {
                    let _ = front.send_to(&buf[..n], to).await;
                }
            }
        });
        relay
    }
}

/// A server endpoint on loopback that accepts and holds connections.
fn server(certs: &std::path::Path) -> (fastchat_transport::Listener, NodeIdentity) {
    fastchat_certs::generate(certs, &[], false, 1).unwrap();
    let identity = NodeIdentity::load(&fastchat_certs::role_dir(
        certs,
        fastchat_certs::Role::Node(1),
    ))
    .unwrap();
    let endpoint =
        server_endpoint("127.0.0.1:0".parse().unwrap(), &identity, ServerKind::Node).unwrap();
    let accepting = endpoint.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Some(attempt) = accepting.accept().await {
            if let Ok(conn) = attempt.await {
                held.push(conn);
            }
        }
    });
    (endpoint, identity)
}

#[tokio::test]
async fn a_server_answering_late_still_gets_the_connection() {
    let dir = tempfile::tempdir().unwrap();
    let (endpoint, identity) = server(dir.path());
    let relay = Relay::start(endpoint.endpoint().local_addr().unwrap()).await;
    // Longer than a dead peer's silence: a swamped server, not a dead one.
    relay.hold_ms.store(4000, Ordering::Relaxed);
    let client = client_endpoint(&identity.ca, None).unwrap();
    let conn = connect(&client, &relay.addr.to_string()).await;
    assert!(conn.is_ok(), "{:?}", conn.err());
}

#[tokio::test]
async fn a_silent_peer_is_noticed_and_a_live_one_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let (endpoint, identity) = server(dir.path());
    let relay = Relay::start(endpoint.endpoint().local_addr().unwrap()).await;
    let client = client_endpoint(&identity.ca, None).unwrap();
    let conn = connect(&client, &relay.addr.to_string()).await.unwrap();

    // Alive (keep-alives are answered): the watch does not fire.
    let quiet = tokio::time::timeout(
        PEER_SILENCE + Duration::from_secs(1),
        closed_or_silent(&conn, PEER_SILENCE),
    )
    .await;
    assert!(quiet.is_err(), "a live peer was taken for dead");

    // Killed (nothing comes back): closed well before the idle timeout.
    relay.dropping.store(true, Ordering::Relaxed);
    let start = Instant::now();
    let reason = closed_or_silent(&conn, PEER_SILENCE).await;
    assert_eq!(reason, ConnectionError::TimedOut);
    assert!(
        start.elapsed() < Duration::from_secs(8),
        "{:?}",
        start.elapsed()
    );
    assert!(conn.close_reason().is_some());
}
