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
        let forged = mallory
            .sign(&transcript::login("alice", &nonce, &raw.binding()))
            .unwrap();
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

/// Alice and bob, friends, and mallory logged in on a raw connection.
async fn friends_and_a_hostile_client() -> (
    Cluster,
    fastchat_client::Client,
    fastchat_client::Client,
    RawClient,
) {
    let cluster = Cluster::start().await;
    let alice = cluster.register("alice").await;
    let bob = cluster.register("bob").await;
    befriend(&alice, &bob).await;
    cluster.register("mallory").await.close().await;
    let identity = fastchat_client::keystore::Keystore::open(&cluster.home("mallory"))
        .unwrap()
        .identity()
        .unwrap();
    let mut raw = RawClient::connect(&cluster.ca(), cluster.node_addr()).await;
    raw.login("mallory", &identity).await;
    (cluster, alice, bob, raw)
}

fn rss_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kib / 1024
}

/// One client fills 200 text streams and never finishes them, and pipelines
/// a thousand syncs: the node holds a bounded amount of it (its text budget
/// per connection, its connection window), answers the syncs from one poll
/// loop, and another user keeps chatting meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_filling_every_stream_and_piling_up_syncs_is_bounded() {
    use fastchat_proto::envelope::{Outgoing, OutgoingText, Sealed};
    use fastchat_proto::limits::MAX_MESSAGE_FRAME;
    use fastchat_proto::stream::StreamKind;
    use fastchat_transport::write_frame;

    let (_cluster, alice, bob, mut raw) = friends_and_a_hostile_client().await;
    let before = rss_mib();

    // 200 streams × 60 texts of 60 KB (3.6 MB each, under the per-stream
    // cap): 720 MB if the node took it all in.
    let mut tasks = Vec::new();
    for s in 0..200u32 {
        let conn = raw.conn.clone();
        tasks.push(tokio::spawn(async move {
            let Ok((mut send, _recv)) = conn.open_bi().await else {
                return;
            };
            if write_frame(&mut send, &StreamKind::Text, 64).await.is_err() {
                return;
            }
            for n in 0..60u32 {
                let mut id = [0u8; 16];
                id[..4].copy_from_slice(&s.to_be_bytes());
                id[4..8].copy_from_slice(&n.to_be_bytes());
                let text = Outgoing::Direct(OutgoingText {
                    id: fastchat_proto::MessageId(id),
                    to: "bob".into(),
                    sealed: Sealed {
                        nonce: [0; 12],
                        ciphertext: vec![7; 60_000],
                    },
                });
                if write_frame(&mut send, &text, MAX_MESSAGE_FRAME)
                    .await
                    .is_err()
                {
                    return;
                }
            }
            // Never finished: the node must not wait on it forever either.
            tokio::time::sleep(Duration::from_secs(60)).await;
        }));
    }
    // A thousand syncs, pipelined, none read.
    for id in 0..1000u64 {
        let frame = fastchat_proto::control::RequestFrame {
            id: 10_000 + id,
            request: Request::Sync,
        };
        write_frame(
            &mut raw.send,
            &frame,
            fastchat_proto::limits::MAX_CONTROL_FRAME,
        )
        .await
        .unwrap();
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    still_served(&alice, &bob, "under attack").await;
    let during = rss_mib();
    assert!(
        during.saturating_sub(before) < 256,
        "the node took in {} MiB for one client",
        during.saturating_sub(before)
    );
    for t in tasks {
        t.abort();
    }
}

/// Many syncs at once from one client (a hundred `friend add`s at once do
/// that) are all answered, each after what was queued when it was asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_concurrent_syncs_on_one_connection_are_all_answered() {
    let cluster = Cluster::start().await;
    let alice = Arc::new(cluster.register("alice").await);
    let bob = cluster.register("bob").await;
    befriend(&alice, &bob).await;
    let mut tasks = Vec::new();
    for n in 0..300 {
        let alice = alice.clone();
        tasks.push(tokio::spawn(async move { alice.sync().await }));
        if n == 150 {
            bob.send_text("alice", "in the middle").await.unwrap();
        }
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    // The last syncs were asked after bob's text was stored: it is in.
    assert!(
        common::unshown_texts(&alice).contains(&"in the middle".to_string()),
        "a sync answered before what it waited for"
    );
}

/// What may wait for one user is bounded (`--queue-max-texts`,
/// `--queue-max-mib`): past it a sender hears why in one sentence, and once
/// the recipient reads, texts flow again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_refuses_texts_with_one_sentence_until_read() {
    let mut cluster = Cluster::start_without_node().await;
    let mut config = cluster.node_config("127.0.0.1:0".parse().unwrap());
    config.queue_limits = fastchat_node::store::QueueLimits {
        max_texts: 6,
        max_bytes: 1 << 20,
    };
    cluster.start_node_with(config).await;
    let alice = cluster.register("alice").await;
    let bob = cluster.register("bob").await;
    befriend(&alice, &bob).await;
    bob.close().await;
    let mut sent = 0;
    let refusal = loop {
        match alice.send_text("bob", &format!("text {sent}")).await {
            Ok(_) => sent += 1,
            Err(e) => break e,
        }
        assert!(sent <= 6, "the queue took more than its limit");
    };
    let ClientError::Refused(e) = &refusal else {
        panic!("{refusal:?}")
    };
    assert_eq!(e.code, ErrorCode::QuotaExceeded);
    assert!(
        refusal
            .to_string()
            .contains("bob has too many messages waiting"),
        "{refusal}"
    );
    assert!(sent >= 4, "only {sent} fit");

    let bob = fastchat_client::Client::connect(&cluster.home("bob"))
        .await
        .unwrap();
    bob.sync().await.unwrap();
    assert_eq!(common::unshown_texts(&bob).len(), sent);
    alice.send_text("bob", "room again").await.unwrap();
}

/// A text stream that goes quiet between frames is cut off after the gap
/// it is allowed, one that stops inside a frame after the frame deadline,
/// and one that carries more than a batch may is refused:
/// neither holds the node's buffers, and the connection's others go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_text_stream_too_slow_or_too_long_is_cut_off() {
    use fastchat_proto::envelope::{Outgoing, OutgoingText, Sealed};
    use fastchat_proto::limits::{MAX_BATCH_BYTES, MAX_MESSAGE_FRAME};
    use fastchat_proto::stream::StreamKind;
    use fastchat_transport::write_frame;

    let (_cluster, alice, bob, raw) = friends_and_a_hostile_client().await;
    let text = |n: u32| {
        let mut id = [0u8; 16];
        id[..4].copy_from_slice(&n.to_be_bytes());
        Outgoing::Direct(OutgoingText {
            id: fastchat_proto::MessageId(id),
            to: "bob".into(),
            sealed: Sealed {
                nonce: [0; 12],
                ciphertext: vec![7; 60_000],
            },
        })
    };

    // Too long: more frames than a batch's bytes allow, on one stream.
    let (mut send, mut recv) = raw.conn.open_bi().await.unwrap();
    write_frame(&mut send, &StreamKind::Text, 64).await.unwrap();
    let frames = MAX_BATCH_BYTES / 60_000 + 2;
    let mut refused = false;
    for n in 0..frames as u32 {
        if write_frame(&mut send, &text(n), MAX_MESSAGE_FRAME)
            .await
            .is_err()
        {
            refused = true;
            break;
        }
    }
    let _ = send.finish();
    let mut buf = [0u8; 1];
    let answer = tokio::time::timeout(Duration::from_secs(10), recv.read(&mut buf)).await;
    assert!(
        refused || matches!(answer, Ok(Err(_))),
        "a stream past the batch limit was served: {answer:?}"
    );

    // Too slow: one frame, then silence past the gap allowed; and, at the
    // same time, a frame started and never finished.
    let (mut send, mut recv) = raw.conn.open_bi().await.unwrap();
    write_frame(&mut send, &StreamKind::Text, 64).await.unwrap();
    write_frame(&mut send, &text(1_000), MAX_MESSAGE_FRAME)
        .await
        .unwrap();
    let (mut half_send, mut half_recv) = raw.conn.open_bi().await.unwrap();
    write_frame(&mut half_send, &StreamKind::Text, 64)
        .await
        .unwrap();
    let mut whole = Vec::new();
    fastchat_proto::encode_frame(&text(1_001), MAX_MESSAGE_FRAME, &mut whole).unwrap();
    half_send
        .write_all(&whole[..whole.len() / 2])
        .await
        .unwrap();
    let mut half_buf = [0u8; 1];
    let (cut, half_cut) = tokio::join!(
        tokio::time::timeout(Duration::from_secs(25), recv.read(&mut buf)),
        tokio::time::timeout(Duration::from_secs(25), half_recv.read(&mut half_buf)),
    );
    let cut = cut.expect("the silent stream was not cut off");
    assert!(cut.is_err(), "the silent stream got an answer: {cut:?}");
    let half_cut = half_cut.expect("the half-sent frame was waited on for ever");
    assert!(
        half_cut.is_err(),
        "a half-sent frame got an answer: {half_cut:?}"
    );
    still_served(&alice, &bob, "unbothered").await;
    assert!(
        raw.conn.close_reason().is_none(),
        "the connection itself lives on"
    );
}
