//! `FrameReader` over real QUIC on loopback: frames cut anywhere by the
//! network come out whole, and a stream that breaks the framing is refused
//! as soon as it does.

use std::net::SocketAddr;
use std::time::Duration;

use fastchat_certs::{NodeIdentity, Role, role_dir};
use fastchat_transport::quinn::{Connection, SendStream};
use fastchat_transport::{
    ClientEndpoint, FrameReader, Listener, ServerKind, StreamError, client_endpoint, connect,
    read_frames_to_end, server_endpoint,
};

/// A connected pair: the server's accepted connection and the client's.
async fn pair() -> (
    Listener,
    ClientEndpoint,
    Connection,
    Connection,
    tempfile::TempDir,
) {
    let dir = tempfile::tempdir().unwrap();
    let ca = fastchat_certs::ensure(dir.path(), &[], 1).unwrap();
    let identity = NodeIdentity::load(&role_dir(dir.path(), Role::Node(1))).unwrap();
    let server = server_endpoint(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        &identity,
        ServerKind::Node,
    )
    .unwrap();
    let port = server.endpoint().local_addr().unwrap().port();
    let client = client_endpoint(&fastchat_certs::load_certs(&ca).unwrap(), None).unwrap();
    let target = format!("127.0.0.1:{port}");
    let (client_conn, server_conn) = tokio::join!(connect(&client, &target), async {
        server.accept().await.unwrap().await.unwrap()
    });
    (server, client, server_conn, client_conn.unwrap(), dir)
}

fn framed(body: &[u8]) -> Vec<u8> {
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

/// Writes `bytes` in pieces of `piece` bytes, letting each go out alone.
async fn trickle(send: &mut SendStream, bytes: &[u8], piece: usize) {
    for part in bytes.chunks(piece) {
        send.write_all(part).await.unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test]
async fn frames_cut_anywhere_come_out_whole_and_in_order() {
    let (_s, _c, server, client, _dir) = pair().await;
    // The last frame spans several packets.
    let bodies: Vec<Vec<u8>> = vec![
        b"one".to_vec(),
        Vec::new(),
        vec![7; 50],
        b"four".to_vec(),
        vec![9; 5000],
    ];
    let stream: Vec<u8> = bodies.iter().flat_map(|b| framed(b)).collect();
    let writer = tokio::spawn(async move {
        let (mut send, _) = client.open_bi().await.unwrap();
        // Prefixes and bodies split across reads at every offset.
        trickle(&mut send, &stream[..20], 1).await;
        trickle(&mut send, &stream[20..80], 3).await;
        send.write_all(&stream[80..]).await.unwrap();
        send.finish().unwrap();
        send.stopped().await.ok();
        client
    });
    let (_, mut recv) = server.accept_bi().await.unwrap();
    let mut frames = FrameReader::new(8192);
    read_frames_to_end(&mut recv, &mut frames, 16)
        .await
        .unwrap();
    let got: Vec<Vec<u8>> = frames.frames().map(|f| f.to_vec()).collect();
    assert_eq!(got, bodies);
    let client = writer.await.unwrap();

    // The same reader takes the next stream: only that stream's frames.
    let next: Vec<Vec<u8>> = vec![b"next".to_vec(), vec![3; 7000]];
    let (mut send, _) = client.open_bi().await.unwrap();
    send.write_all(&next.iter().flat_map(|b| framed(b)).collect::<Vec<u8>>())
        .await
        .unwrap();
    send.finish().unwrap();
    let (_, mut recv) = server.accept_bi().await.unwrap();
    read_frames_to_end(&mut recv, &mut frames, 16)
        .await
        .unwrap();
    let got: Vec<Vec<u8>> = frames.frames().map(|f| f.to_vec()).collect();
    assert_eq!(got, next);
    assert_eq!(
        frames.held(),
        4 + 4 + 4 + 7000,
        "nothing of the first stream"
    );
}

#[tokio::test]
async fn an_oversized_prefix_is_refused_before_its_body_arrives() {
    let (_s, _c, server, client, _dir) = pair().await;
    let (mut send, _) = client.open_bi().await.unwrap();
    send.write_all(&framed(b"fine")).await.unwrap();
    // A prefix announcing 1 MiB, and no body: the reader must not wait.
    send.write_all(&(1u32 << 20).to_be_bytes()).await.unwrap();
    let (_, mut recv) = server.accept_bi().await.unwrap();
    let mut reader = FrameReader::new(8192);
    let refused = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Err(e) = reader.fill(&mut recv, None).await {
                return e;
            }
        }
    })
    .await
    .expect("the oversized prefix was waited on");
    assert!(matches!(refused, StreamError::Frame(_)), "{refused:?}");
    assert_eq!(reader.len(), 1, "the frame before it was read");
}

#[tokio::test]
async fn a_stream_finished_inside_a_frame_is_truncated() {
    let (_s, _c, server, client, _dir) = pair().await;
    let (mut send, _) = client.open_bi().await.unwrap();
    let whole = framed(b"complete");
    let cut = framed(b"cut short");
    send.write_all(&whole).await.unwrap();
    send.write_all(&cut[..6]).await.unwrap();
    send.finish().unwrap();
    let (_, mut recv) = server.accept_bi().await.unwrap();
    let mut frames = FrameReader::new(8192);
    let e = read_frames_to_end(&mut recv, &mut frames, 16)
        .await
        .expect_err("a cut frame is an error");
    assert!(matches!(e, StreamError::Truncated), "{e:?}");

    // Nothing of the cut stream is left for the next one.
    let (mut send, _) = client.open_bi().await.unwrap();
    send.write_all(&framed(b"whole again")).await.unwrap();
    send.finish().unwrap();
    let (_, mut recv) = server.accept_bi().await.unwrap();
    read_frames_to_end(&mut recv, &mut frames, 16)
        .await
        .unwrap();
    let got: Vec<&[u8]> = frames.frames().collect();
    assert_eq!(got, [b"whole again".as_slice()]);
}

#[tokio::test]
async fn more_frames_than_allowed_are_refused() {
    let (_s, _c, server, client, _dir) = pair().await;
    let (mut send, _) = client.open_bi().await.unwrap();
    let stream: Vec<u8> = (0..5u8).flat_map(|n| framed(&[n])).collect();
    send.write_all(&stream).await.unwrap();
    send.finish().unwrap();
    let (_, mut recv) = server.accept_bi().await.unwrap();
    let e = read_frames_to_end(&mut recv, &mut FrameReader::new(8192), 4)
        .await
        .expect_err("five frames where four are allowed");
    assert!(matches!(e, StreamError::Protocol(_)), "{e:?}");
}

#[tokio::test]
async fn a_quiet_gap_between_frames_ends_the_wait_it_was_given() {
    let (_s, _c, server, client, _dir) = pair().await;
    let (mut send, _) = client.open_bi().await.unwrap();
    send.write_all(&framed(b"then silence")).await.unwrap();
    let (_, mut recv) = server.accept_bi().await.unwrap();
    let mut reader = FrameReader::new(8192);
    let idle = Some(Duration::from_millis(200));
    let e = loop {
        match reader.fill(&mut recv, idle).await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the stream was not finished"),
            Err(e) => break e,
        }
    };
    assert!(matches!(e, StreamError::Timeout(_)), "{e:?}");
    assert_eq!(reader.len(), 1);
    drop(send);
}
