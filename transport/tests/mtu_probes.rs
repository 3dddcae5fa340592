//! Which connections probe their path for packets above QUIC's 1200 bytes,
//! over real QUIC on loopback: a node's do (they live long and carry
//! images), a balancer's never (one short question per client).

use std::net::SocketAddr;
use std::time::Duration;

use fastchat_certs::{NodeIdentity, Role, role_dir};
use fastchat_transport::quinn::{Connection, Endpoint};
use fastchat_transport::{ServerKind, client_endpoint, connect, server_endpoint};

/// A client connected to a server of `kind`, after one round trip on a
/// stream: the two endpoints, the client's and the server's connection.
async fn connected(
    kind: ServerKind,
    dir: &std::path::Path,
) -> (Endpoint, Endpoint, Connection, Connection) {
    let ca = fastchat_certs::ensure(dir, &[], 1).unwrap();
    let role = match kind {
        ServerKind::Node => Role::Node(1),
        ServerKind::Balancer => Role::Balancer,
    };
    let identity = NodeIdentity::load(&role_dir(dir, role)).unwrap();
    let server = server_endpoint(SocketAddr::from(([127, 0, 0, 1], 0)), &identity, kind).unwrap();
    let target = format!("127.0.0.1:{}", server.local_addr().unwrap().port());
    let client = client_endpoint(&fastchat_certs::load_certs(&ca).unwrap(), None).unwrap();
    let (client_conn, server_conn) = tokio::join!(connect(&client, &target), async {
        server.accept().await.unwrap().await.unwrap()
    });
    let client_conn = client_conn.unwrap();
    let echo = {
        let server_conn = server_conn.clone();
        tokio::spawn(async move {
            let (mut send, mut recv) = server_conn.accept_bi().await.unwrap();
            let got = recv.read_to_end(64).await.unwrap();
            send.write_all(&got).await.unwrap();
            send.finish().unwrap();
        })
    };
    let (mut send, mut recv) = client_conn.open_bi().await.unwrap();
    send.write_all(b"which node?").await.unwrap();
    send.finish().unwrap();
    assert_eq!(recv.read_to_end(64).await.unwrap(), b"which node?");
    echo.await.unwrap();
    (server, client, client_conn, server_conn)
}

#[tokio::test]
async fn node_connections_probe_for_larger_packets() {
    let dir = tempfile::tempdir().unwrap();
    let (_s, _c, client, server) = connected(ServerKind::Node, dir.path()).await;
    // Probing starts after the handshake; give it up to 10 s.
    for _ in 0..1000 {
        if client.stats().path.current_mtu > 1200 && server.stats().path.current_mtu > 1200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (c, s) = (client.stats().path, server.stats().path);
    assert!(c.sent_plpmtud_probes > 0 && s.sent_plpmtud_probes > 0);
    assert!(
        c.current_mtu > 1200 && s.current_mtu > 1200,
        "loopback carries more than 1200 bytes: {} / {}",
        c.current_mtu,
        s.current_mtu
    );
}

#[tokio::test]
async fn balancer_connections_never_probe() {
    let dir = tempfile::tempdir().unwrap();
    let (_s, _c, client, server) = connected(ServerKind::Balancer, dir.path()).await;
    // Longer than a node's connections take to send their first probes.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (c, s) = (client.stats().path, server.stats().path);
    assert_eq!((c.sent_plpmtud_probes, s.sent_plpmtud_probes), (0, 0));
    assert_eq!((c.current_mtu, s.current_mtu), (1200, 1200));
}
