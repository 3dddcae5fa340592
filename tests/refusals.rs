//! What the node and client must refuse: the wrong CA, logins with the wrong
//! key or a replayed signature, texts to non-friends, garbage and oversized
//! frames (while everyone else keeps being served), and fake node reports.

mod common;

use std::time::Duration;

use common::{Cluster, RawClient, befriend};
use fastchat_client::{Client, ClientError};
use fastchat_crypto::{Identity, SigningIdentity, transcript};
use fastchat_proto::control::Request;
use fastchat_proto::envelope::{Outgoing, OutgoingText, Sealed, SendAck};
use fastchat_proto::error::close;
use fastchat_proto::{ErrorCode, MessageId, PROTOCOL_VERSION};
use fastchat_transport::{TransportError, read_frame, write_frame};

/// Registers `name` with `identity` (binding `login_key`), by hand.
async fn raw_register(raw: &mut RawClient, name: &str, identity: &Identity, login_key: [u8; 32]) {
    let public_key = identity.public().der().to_vec();
    let proof = identity
        .sign(&transcript::register(name, &public_key, &login_key))
        .unwrap();
    raw.request(Request::Register {
        version: PROTOCOL_VERSION,
        name: name.into(),
        public_key,
        login_key,
        proof,
    })
    .await
    .unwrap();
}

/// Registers `name` with `identity` and logs in (with the RSA key), by hand.
async fn raw_login(cluster: &Cluster, name: &str, identity: &Identity) -> RawClient {
    let mut raw = RawClient::connect(&cluster.ca(), cluster.node_addr()).await;
    let login_key = SigningIdentity::generate().unwrap().public();
    raw_register(&mut raw, name, identity, login_key).await;
    raw.login(name, identity).await;
    raw
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_are_checked_against_the_bound_login_key_and_only_the_identity_rebinds_it() {
    let cluster = Cluster::start().await;
    let carol = Identity::generate().unwrap();
    let login = SigningIdentity::generate().unwrap();
    let other = SigningIdentity::generate().unwrap();
    let mut raw = RawClient::connect(&cluster.ca(), cluster.node_addr()).await;
    raw_register(&mut raw, "carol", &carol, login.public()).await;

    // The node names the key it holds; another Ed25519 key is refused.
    let mut a = RawClient::connect(&cluster.ca(), cluster.node_addr()).await;
    let nonce = match a
        .request(Request::Hello {
            version: PROTOCOL_VERSION,
            name: "carol".into(),
        })
        .await
        .unwrap()
    {
        fastchat_proto::control::Response::Challenge { nonce, login_key } => {
            assert_eq!(login_key, Some(login.public()));
            nonce
        }
        other => panic!("no challenge: {other:?}"),
    };
    let forged = other.sign(&transcript::login("carol", &nonce, &a.binding()));
    let err = a
        .request(Request::Login { signature: forged })
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::AuthFailed);

    // The bound key logs in.
    let mut b = RawClient::connect(&cluster.ca(), cluster.node_addr()).await;
    let nonce = b.hello("carol").await;
    let signature = login.sign(&transcript::login("carol", &nonce, &b.binding()));
    b.request(Request::Login { signature }).await.unwrap();

    // Rebinding needs the RSA identity's signature, not the login key's.
    let err = b
        .request(Request::BindLoginKey {
            login_key: other.public(),
            proof: login.sign(&transcript::login_key("carol", &other.public())),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::AuthFailed);
    let proof = carol
        .sign(&transcript::login_key("carol", &other.public()))
        .unwrap();
    b.request(Request::BindLoginKey {
        login_key: other.public(),
        proof,
    })
    .await
    .unwrap();
    // Now the old login key no longer works, the new one does.
    let mut c = RawClient::connect(&cluster.ca(), cluster.node_addr()).await;
    let nonce = c.hello("carol").await;
    let stale = login.sign(&transcript::login("carol", &nonce, &c.binding()));
    let err = c
        .request(Request::Login { signature: stale })
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::AuthFailed);
    let nonce = c.hello("carol").await;
    let signature = other.sign(&transcript::login("carol", &nonce, &c.binding()));
    c.request(Request::Login { signature }).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_with_another_ca_is_refused() {
    let cluster = Cluster::start().await;
    let other = tempfile::tempdir().unwrap();
    fastchat_certs::generate(other.path(), &[], false, 1).unwrap();
    let result = Client::register(
        &cluster.home("eve"),
        "eve",
        &cluster.server(),
        &other.path().join("ca.pem"),
    )
    .await;
    match result {
        Err(ClientError::Transport(e @ TransportError::UntrustedPeer(_))) => {
            assert!(
                e.to_string().contains("not signed by the cluster CA"),
                "{e}"
            );
        }
        Err(other) => panic!("unexpected error: {other}"),
        Ok(_) => panic!("connected with the wrong CA"),
    }
    // A file that is not a certificate is a clear error too.
    let bogus = other.path().join("bogus.pem");
    std::fs::write(&bogus, "not a cert").unwrap();
    assert!(matches!(
        Client::register(&cluster.home("eve"), "eve", &cluster.server(), &bogus).await,
        Err(ClientError::BadCa { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_with_the_wrong_key_or_a_replayed_signature_are_refused() {
    let cluster = Cluster::start().await;
    let alice = cluster.register("alice").await;
    let mallory = Identity::generate().unwrap();

    // Mallory claims to be alice and signs the challenge with her own key.
    let mut raw = RawClient::connect(&cluster.ca(), cluster.node_addr()).await;
    let nonce = raw.hello("alice").await;
    let forged = mallory
        .sign(&transcript::login("alice", &nonce, &raw.binding()))
        .unwrap();
    let err = raw
        .request(Request::Login { signature: forged })
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::AuthFailed);
    // Still not logged in: asking for anything is refused.
    let err = raw
        .request(Request::LookupUser {
            name: "alice".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::NotLoggedIn);
    // Login without a challenge is refused.
    let err = raw
        .request(Request::Login {
            signature: vec![0; 384],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::BadRequest);

    // A valid signature recorded from one login does not work for the next.
    let mut first = raw_login(&cluster, "mallory", &mallory).await;
    let _ = first.request(Request::Sync).await;
    let mut eavesdropped = RawClient::connect(&cluster.ca(), cluster.node_addr()).await;
    let old = eavesdropped.hello("mallory").await;
    let recorded = mallory
        .sign(&transcript::login("mallory", &old, &eavesdropped.binding()))
        .unwrap();
    let mut replay = RawClient::connect(&cluster.ca(), cluster.node_addr()).await;
    replay.hello("mallory").await;
    let err = replay
        .request(Request::Login {
            signature: recorded,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::AuthFailed);
    alice.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_refuses_texts_to_non_friends() {
    let cluster = Cluster::start().await;
    let alice = cluster.register("alice").await;
    let mallory = Identity::generate().unwrap();
    let raw = raw_login(&cluster, "mallory", &mallory).await;

    // Mallory skips the client's checks and pushes a text at alice directly.
    let id = MessageId([9; 16]);
    let text = Outgoing::Direct(OutgoingText {
        id,
        to: "alice".into(),
        sealed: Sealed {
            nonce: [0; 12],
            ciphertext: vec![1; 64],
        },
    });
    let ack = raw.post(&text).await;
    assert_eq!(ack.id, id);
    let err = ack.result.unwrap_err();
    assert_eq!(err.code, ErrorCode::NotFriends);
    assert!(err.message.contains("not your friend"), "{}", err.message);

    alice.sync().await.unwrap();
    assert!(alice.unshown().unwrap().is_empty(), "nothing reached alice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_oversized_frames_do_not_take_the_node_down() {
    let cluster = Cluster::start().await;
    let alice = cluster.register("alice").await;
    let bob = cluster.register("bob").await;
    befriend(&alice, &bob).await;

    let attacks: Vec<Vec<u8>> = vec![
        // A frame that claims 4 GiB.
        u32::MAX.to_be_bytes().to_vec(),
        // A valid length with garbage inside.
        [&5u32.to_be_bytes()[..], b"\xff\xff\xff\xff\xff"].concat(),
        // Just over the control limit.
        ((fastchat_proto::limits::MAX_CONTROL_FRAME + 1) as u32)
            .to_be_bytes()
            .to_vec(),
    ];
    for bytes in attacks {
        let mut raw = RawClient::connect(&cluster.ca(), cluster.node_addr()).await;
        raw.send.write_all(&bytes).await.unwrap();
        let reason = tokio::time::timeout(Duration::from_secs(10), raw.conn.closed())
            .await
            .expect("the node closes the connection");
        match reason {
            fastchat_transport::quinn::ConnectionError::ApplicationClosed(c) => {
                assert_eq!(c.error_code, close::PROTOCOL.into());
            }
            other => panic!("unexpected close: {other}"),
        }
    }
    // A stream that starts with garbage instead of a stream header.
    let mut raw = RawClient::connect(&cluster.ca(), cluster.node_addr()).await;
    let (mut send, mut recv) = raw.conn.open_bi().await.unwrap();
    send.write_all(b"\x00\x00\x00\x03abc").await.unwrap();
    let mut buf = Vec::new();
    assert!(
        read_frame::<SendAck>(&mut recv, 1024, &mut buf)
            .await
            .is_err()
    );
    // ... which resets only that stream; the connection still answers.
    let err = raw
        .request(Request::LookupUser { name: "bob".into() })
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::NotLoggedIn);

    // Everyone else is still served.
    let mut events = bob.subscribe();
    alice.send_text("bob", "still here").await.unwrap();
    let item = common::next_text(&mut events, None).await;
    assert_eq!(item.text, "still here");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_cluster_nodes_may_report_to_the_balancer() {
    use fastchat_proto::balancer::{BalancerRequest, BalancerResponse, NodeReport};
    let cluster = Cluster::start().await;
    let ca = fastchat_certs::load_certs(&cluster.ca()).unwrap();
    let endpoint = fastchat_transport::client_endpoint(&ca, None).unwrap();
    let conn = fastchat_transport::connect(&endpoint, &cluster.server())
        .await
        .unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let fake = NodeReport {
        addr: "127.0.0.1:9".into(),
        connections: 0,
        users: 0,
        messages_per_sec: 0,
        ..Default::default()
    };
    write_frame(&mut send, &BalancerRequest::Report(fake), 1024)
        .await
        .unwrap();
    send.finish().unwrap();
    let mut buf = Vec::new();
    match read_frame::<BalancerResponse>(&mut recv, 4096, &mut buf)
        .await
        .unwrap()
    {
        Some(BalancerResponse::Error(e)) => assert_eq!(e.code, ErrorCode::AuthFailed),
        other => panic!("unexpected {other:?}"),
    }
    let live = common::balancer_status(&cluster.ca(), &cluster.server()).await;
    assert!(!live.contains(&"127.0.0.1:9".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_a_certificate_from_another_ca_is_not_admitted() {
    let cluster = Cluster::start().await;
    let rogue = tempfile::tempdir().unwrap();
    fastchat_certs::generate(&rogue.path().join("certs"), &[], false, 1).unwrap();
    let mut config = fastchat_node::NodeConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        rogue.path().join("data"),
        fastchat_certs::role_dir(&rogue.path().join("certs"), fastchat_certs::Role::Node(1)),
    );
    config.balancers = vec![cluster.server()];
    let node = fastchat_node::start(config).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let live = common::balancer_status(&cluster.ca(), &cluster.server()).await;
    assert_eq!(
        live,
        vec![cluster.node_addr().to_string()],
        "the rogue node got in"
    );
    // And a client that trusts the cluster CA refuses to talk to it.
    let ca = fastchat_certs::load_certs(&cluster.ca()).unwrap();
    let endpoint = fastchat_transport::client_endpoint(&ca, None).unwrap();
    let err = fastchat_transport::connect(&endpoint, &node.local_addr().to_string())
        .await
        .unwrap_err();
    assert!(matches!(err, TransportError::UntrustedPeer(_)), "{err}");
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_message_id_is_shown_once() {
    let cluster = Cluster::start().await;
    let alice = cluster.register("alice").await;
    let bob = cluster.register("bob").await;
    befriend(&alice, &bob).await;
    // Take in bob's accept (and the key it carries) before going raw.
    alice.sync().await.unwrap();
    alice.close().await;

    // A valid text from alice, sent three times with the same id: twice
    // while bob has not collected it, once after.
    let ks = fastchat_client::keystore::Keystore::open(&cluster.home("alice")).unwrap();
    let key = ks.peer("bob").unwrap().unwrap().key.unwrap();
    let identity = ks.identity().unwrap();
    let id = MessageId([42; 16]);
    let plain = fastchat_proto::frame::encode_body(&fastchat_proto::envelope::TextContent {
        text: "only once".into(),
        sent_at_ms: 1,
    })
    .unwrap();
    let sealed = key
        .seal(&transcript::text_aad("alice", "bob", &id.0, 0), &plain)
        .unwrap();
    let mut raw = RawClient::connect(&cluster.ca(), cluster.node_addr()).await;
    raw.login("alice", &identity).await;
    let text = Outgoing::Direct(OutgoingText {
        id,
        to: "bob".into(),
        sealed,
    });
    for collect_first in [false, false, true] {
        if collect_first {
            bob.sync().await.unwrap();
        }
        let ack = raw.post(&text).await;
        assert!(ack.result.is_ok(), "{:?}", ack.result);
    }
    bob.sync().await.unwrap();
    let texts = common::unshown_texts(&bob);
    assert_eq!(texts, vec!["only once".to_string()]);
}

/// A login is bound to the connection it was made on (the TLS exporter
/// secret is in the signed transcript): whoever holds a node's key, and so
/// can pose as a node to a user, cannot relay the user's login to a real
/// node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_relayed_from_another_connection_is_refused() {
    let cluster = Cluster::start().await;
    cluster.register("alice").await.close().await;
    let identity = fastchat_client::keystore::Keystore::open(&cluster.home("alice"))
        .unwrap()
        .identity()
        .unwrap();
    // The user's connection (to the relay) and the relay's to the real node.
    let users_side = RawClient::connect(&cluster.ca(), cluster.node_addr()).await;
    let mut relay = RawClient::connect(&cluster.ca(), cluster.node_addr()).await;
    let nonce = relay.hello("alice").await;
    let relayed = identity
        .sign(&transcript::login("alice", &nonce, &users_side.binding()))
        .unwrap();
    let err = relay
        .request(Request::Login { signature: relayed })
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::AuthFailed);
    // The same key signing for the relay's own connection is let in: the
    // binding is what refused the relayed one.
    let nonce = relay.hello("alice").await;
    let own = identity
        .sign(&transcript::login("alice", &nonce, &relay.binding()))
        .unwrap();
    relay
        .request(Request::Login { signature: own })
        .await
        .unwrap();
}
