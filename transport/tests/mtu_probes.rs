//! How connections size their packets, over real QUIC on loopback: a
//! node's use 6,000-byte packets from the start (loopback's MTU is known;
//! other paths probe up to 1,452, see the unit tests of `PathMtu`) and may
//! send ten of them before the first acknowledgement, a balancer's stay at
//! QUIC's 1,200 bytes and never probe.

use std::net::SocketAddr;
use std::time::Duration;

use fastchat_certs::{NodeIdentity, Role, role_dir};
use fastchat_transport::quinn::Connection;
use fastchat_transport::{
    ClientEndpoint, Listener, ServerKind, client_endpoint, connect, server_endpoint,
};

/// A client connected to a server of `kind`, after one round trip on a
/// stream: the two endpoints, the client's and the server's connection.
async fn connected(
    kind: ServerKind,
    dir: &std::path::Path,
) -> (Listener, ClientEndpoint, Connection, Connection) {
    let ca = fastchat_certs::ensure(dir, &[], 1).unwrap();
    let role = match kind {
        ServerKind::Node => Role::Node(1),
        ServerKind::Balancer => Role::Balancer,
    };
    let identity = NodeIdentity::load(&role_dir(dir, role)).unwrap();
    let server = server_endpoint(SocketAddr::from(([127, 0, 0, 1], 0)), &identity, kind).unwrap();
    let target = format!(
        "127.0.0.1:{}",
        server.endpoint().local_addr().unwrap().port()
    );
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
async fn node_connections_over_loopback_send_large_packets_without_probing() {
    let dir = tempfile::tempdir().unwrap();
    let (_s, _c, client, server) = connected(ServerKind::Node, dir.path()).await;
    // 64 KiB each way: over a 1,452-byte path that is 46 packets or more.
    let echo = {
        let server = server.clone();
        tokio::spawn(async move {
            let (mut send, mut recv) = server.accept_bi().await.unwrap();
            let got = recv.read_to_end(1 << 20).await.unwrap();
            send.write_all(&got).await.unwrap();
            send.finish().unwrap();
        })
    };
    let before = (client.stats().udp_tx, server.stats().udp_tx);
    let (mut send, mut recv) = client.open_bi().await.unwrap();
    send.write_all(&vec![7u8; 64 * 1024]).await.unwrap();
    send.finish().unwrap();
    assert_eq!(recv.read_to_end(1 << 20).await.unwrap().len(), 64 * 1024);
    echo.await.unwrap();
    let (c, s) = (client.stats(), server.stats());
    assert_eq!(
        (c.path.sent_plpmtud_probes, s.path.sent_plpmtud_probes),
        (0, 0)
    );
    assert_eq!((c.path.current_mtu, s.path.current_mtu), (6000, 6000));
    for (side, now, then) in [
        ("client", c.udp_tx, before.0),
        ("server", s.udp_tx, before.1),
    ] {
        let (bytes, datagrams) = (now.bytes - then.bytes, now.datagrams - then.datagrams);
        assert!(
            bytes / datagrams > 1500,
            "the {side} sent {bytes} bytes in {datagrams} datagrams"
        );
    }
}

#[tokio::test]
async fn node_connections_over_loopback_start_with_room_for_ten_large_packets() {
    // quinn's default window (12,000 bytes) holds one 6,000-byte packet: a
    // file's first flight was that packet alone, and its acknowledgement
    // came only after the peer's 25 ms ACK delay.
    let dir = tempfile::tempdir().unwrap();
    let (_s, _c, client, server) = connected(ServerKind::Node, dir.path()).await;
    for (side, conn) in [("client", &client), ("server", &server)] {
        let cwnd = conn.stats().path.cwnd;
        assert!(
            cwnd >= 10 * 6000,
            "the {side}'s congestion window is {cwnd} bytes"
        );
    }
}

#[tokio::test]
async fn balancer_connections_never_probe() {
    let dir = tempfile::tempdir().unwrap();
    let (_s, _c, client, server) = connected(ServerKind::Balancer, dir.path()).await;
    // Longer than probing takes to start once connected.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (c, s) = (client.stats().path, server.stats().path);
    assert_eq!((c.sent_plpmtud_probes, s.sent_plpmtud_probes), (0, 0));
    assert_eq!((c.current_mtu, s.current_mtu), (1200, 1200));
}
