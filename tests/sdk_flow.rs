//! The walking-skeleton flow through the client SDK over real QUIC.

mod common;

use common::{Cluster, befriend, next_text};
use fastchat_client::{Client, ClientError, InboxKind, PeerState};
use fastchat_proto::ErrorCode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_befriend_chat_both_ways() {
    let cluster = Cluster::start().await;
    let alice = cluster.register("alice").await;
    let bob = cluster.register("bob").await;
    befriend(&alice, &bob).await;

    // Live delivery to an online recipient.
    let mut bob_events = bob.subscribe();
    alice.send_text("bob", "hello bob").await.unwrap();
    let item = next_text(&mut bob_events, None).await;
    assert_eq!(
        (item.from.as_str(), item.text.as_str()),
        ("alice", "hello bob")
    );

    let mut alice_events = alice.subscribe();
    bob.send_text("alice", "hi alice").await.unwrap();
    let item = next_text(&mut alice_events, None).await;
    assert_eq!(
        (item.from.as_str(), item.text.as_str()),
        ("bob", "hi alice")
    );

    // Both sides compute the same safety number, and it depends on the keys.
    let fa = alice.fingerprint("bob").unwrap();
    assert_eq!(fa, bob.fingerprint("alice").unwrap());
    assert_eq!(fa.split(' ').count(), 12);

    let peers = alice.peers().unwrap();
    assert_eq!(peers.len(), 1);
    assert_eq!(peers[0].state, PeerState::Friend);

    // What bob received is in his keystore exactly once: the request, then the text.
    let unshown = bob.unshown().unwrap();
    let kinds: Vec<_> = unshown.iter().map(|i| i.kind).collect();
    assert_eq!(kinds, vec![InboxKind::FriendRequest, InboxKind::Text]);
    let ids: Vec<_> = unshown.iter().map(|i| i.id).collect();
    bob.mark_shown(&ids).unwrap();

    // Reconnecting delivers nothing again.
    bob.close().await;
    let bob = Client::connect(&cluster.home("bob")).await.unwrap();
    bob.sync().await.unwrap();
    assert!(bob.unshown().unwrap().is_empty());

    // Adding an existing friend again is a clear error.
    match bob.friend_add("alice").await {
        Err(ClientError::AlreadyFriends(n)) => assert_eq!(n, "alice"),
        Err(other) => panic!("unexpected error: {other}"),
        Ok(r) => panic!("unexpected success: {r:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn taken_names_and_double_registration_are_refused() {
    let cluster = Cluster::start().await;
    let alice = cluster.register("alice").await;
    let other_home = cluster.home("impostor");
    match Client::register(&other_home, "alice", &cluster.server(), &cluster.ca()).await {
        Err(ClientError::Refused(e)) => {
            assert_eq!(e.code, ErrorCode::NameTaken);
            assert!(e.message.contains("already taken"), "{}", e.message);
        }
        Err(other) => panic!("unexpected error: {other}"),
        Ok(_) => panic!("registered a taken name"),
    }
    // A refused registration leaves no identity behind.
    assert!(!other_home.join(fastchat_client::KEYSTORE_FILE).exists());

    match Client::register(
        &cluster.home("alice"),
        "alice2",
        &cluster.server(),
        &cluster.ca(),
    )
    .await
    {
        Err(ClientError::AlreadyRegistered { name, .. }) => assert_eq!(name, "alice"),
        Err(other) => panic!("unexpected error: {other}"),
        Ok(_) => panic!("registered twice in one home"),
    }
    match Client::register(
        &cluster.home("x"),
        "Bad Name",
        &cluster.server(),
        &cluster.ca(),
    )
    .await
    {
        Err(ClientError::InvalidName(_)) => {}
        Err(other) => panic!("unexpected error: {other}"),
        Ok(_) => panic!("accepted an invalid name"),
    }
    alice.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn texting_before_acceptance_and_to_strangers_is_refused() {
    let cluster = Cluster::start().await;
    let alice = cluster.register("alice").await;
    let bob = cluster.register("bob").await;
    let _carol = cluster.register("carol").await;

    assert!(matches!(
        alice.send_text("carol", "psst").await,
        Err(ClientError::NotFriend(n)) if n == "carol"
    ));
    alice.friend_add("bob").await.unwrap();
    assert!(matches!(
        alice.send_text("bob", "too early").await,
        Err(ClientError::AwaitingAcceptance(n)) if n == "bob"
    ));
    // Once bob accepts, alice's next send picks up the key by itself.
    bob.friend_add("alice").await.unwrap();
    alice.send_text("bob", "now it works").await.unwrap();
    bob.sync().await.unwrap();
    let texts = common::unshown_texts(&bob);
    assert_eq!(texts, vec!["now it works".to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_sends_each_get_their_own_ack() {
    let cluster = Cluster::start().await;
    let alice = std::sync::Arc::new(cluster.register("alice").await);
    let bob = cluster.register("bob").await;
    befriend(&alice, &bob).await;
    let sends = (0..300).map(|i| {
        let alice = alice.clone();
        tokio::spawn(async move { alice.send_text("bob", &format!("m{i}")).await })
    });
    let mut ids = Vec::new();
    for s in sends {
        ids.push(s.await.unwrap().unwrap());
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 300);
    bob.sync().await.unwrap();
    let mut texts = common::unshown_texts(&bob);
    texts.sort();
    let mut want: Vec<_> = (0..300).map(|i| format!("m{i}")).collect();
    want.sort();
    assert_eq!(texts, want);
}

/// A text to a friend online on the node is handed to its session, and the
/// node's ack says it was delivered (no receipt follows); a text to a friend
/// offline is stored, shows "sent", and turns "delivered" when the friend's
/// receipt comes back after it was received.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_state_comes_from_the_ack_or_the_receipt() {
    use fastchat_client::{Conversation, MessageState};
    let cluster = Cluster::start().await;
    let alice = cluster.register("alice").await;
    let bob = cluster.register("bob").await;
    befriend(&alice, &bob).await;
    let state = |text: &str| {
        alice
            .history(&Conversation::Friend("bob".into()), 100)
            .unwrap()
            .into_iter()
            .find(|e| e.outgoing && e.text == text)
            .map(|e| e.state)
    };

    alice.send_text("bob", "online").await.unwrap();
    assert_eq!(state("online"), Some(MessageState::Delivered));
    assert!(
        bob.unshown().unwrap().iter().any(|i| i.text == "online"),
        "acknowledged as delivered, so already in bob's keystore"
    );

    bob.close().await;
    alice.send_text("bob", "offline").await.unwrap();
    assert_eq!(state("offline"), Some(MessageState::Sent));
    let bob = Client::connect(&cluster.home("bob")).await.unwrap();
    bob.sync().await.unwrap();
    // The receipt travels back on its own, shortly after.
    for _ in 0..500 {
        if state("offline") == Some(MessageState::Delivered) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(state("offline"), Some(MessageState::Delivered));
}
