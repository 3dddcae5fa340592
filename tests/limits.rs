//! Resource limits under abuse: a frame started and never finished, repeated
//! failed logins, a friend-request flood, and 10,000 streams from one client.
//! Each is refused or cut off, and everyone else keeps being served.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Cluster, RawClient, befriend};
use fastchat_client::ClientError;
use fastchat_crypto::{Identity, transcript};
use fastchat_proto::ErrorCode;
use fastchat_proto::control::Request;
use fastchat_proto::error::close;
use fastchat_transport::FRAME_TIMEOUT;
use fastchat_transport::quinn::ConnectionError;

async fn still_served(alice: &fastchat_client::Client, bob: &fastchat_client::Client, text: &str) {
    let mut events = bob.subscribe();
    alice.send_text("bob", text).await.unwrap();
    common::next_text(&mut events, Some(text)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_started_and_never_finished_is_cut_off() {
    let cluster = Cluster::start().await;
    let alice = cluster.register("alice").await;
    let bob = cluster.register("bob").await;
    befriend(&alice, &bob).await;

    let mut raw = RawClient::connect(&cluster.ca(), cluster.node_addr()).await;
    // Two bytes of a length prefix, then nothing (the connection stays alive
    // with keep-alives, so only the frame deadline can end it).
    raw.send.write_all(&[0, 0]).await.unwrap();
    let started = Instant::now();
    still_served(&alice, &bob, "meanwhile").await;
    let reason = tokio::time::timeout(FRAME_TIMEOUT + Duration::from_secs(10), raw.conn.closed())
        .await
        .expect("the node cuts the stalled client off");
    assert!(started.elapsed() >= FRAME_TIMEOUT - Duration::from_secs(1));
    match reason {
        ConnectionError::ApplicationClosed(c) => assert_eq!(c.error_code, close::PROTOCOL.into()),
        other => panic!("unexpected close: {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_failed_logins_close_the_connection() {
    let cluster = Cluster::start().await;
    let _alice = cluster.register("alice").await;
    let mallory = Identity::generate().unwrap();
    let mut raw = RawClient::connect(&cluster.ca(), cluster.node_addr()).await;
    for attempt in 1..=3 {
        let nonce = raw.hello("alice").await;
        let forged = mallory.sign(&transcript::login("alice", &nonce)).unwrap();
        let err = raw
            .request(Request::Login { signature: forged })
            .await
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::AuthFailed, "attempt {attempt}");
    }
    let reason = tokio::time::timeout(Duration::from_secs(5), raw.conn.closed())
        .await
        .expect("closed after the third failure");
    assert!(
        matches!(reason, ConnectionError::ApplicationClosed(_)),
        "{reason}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn friend_request_floods_are_rate_limited() {
    // A small limit refills one request every 20 s, so a slow machine cannot
    // earn a token back while the burst is being sent.
    let limit = 3;
    let mut cluster = Cluster::start_without_node().await;
    let mut config = cluster.node_config("127.0.0.1:0".parse().unwrap());
    config.friend_requests_per_minute = limit;
    cluster.start_node_with(config).await;
    let alice = cluster.register("alice").await;
    let _bob = cluster.register("bob").await;
    for _ in 0..limit {
        alice.friend_add("bob").await.unwrap();
    }
    match alice.friend_add("bob").await {
        Err(ClientError::Refused(e)) => {
            assert_eq!(e.code, ErrorCode::RateLimited);
            assert!(
                e.message.contains("too many friend requests"),
                "{}",
                e.message
            );
        }
        other => panic!("not limited: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_streams_from_one_client_are_capped() {
    let cluster = Cluster::start().await;
    let alice = cluster.register("alice").await;
    let bob = cluster.register("bob").await;
    befriend(&alice, &bob).await;

    let raw = RawClient::connect(&cluster.ca(), cluster.node_addr()).await;
    let opened = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..10_000 {
        let (conn, opened) = (raw.conn.clone(), opened.clone());
        tasks.push(tokio::spawn(async move {
            // Open and hold: never say what the stream is for.
            if let Ok((mut send, _recv)) = conn.open_bi().await {
                let _ = send.write_all(&[0]).await;
                opened.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_secs(60)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let n = opened.load(Ordering::Relaxed);
    // The control stream counts too: at most 256 streams at once.
    assert!((1..=256).contains(&n), "{n} streams opened at once");
    still_served(&alice, &bob, "not starved").await;
    for t in tasks {
        t.abort();
    }
}
