//! Groups over real QUIC: add, message, kick, message; node-side refusals;
//! an offline member across two epochs; fan-out to 50 members.

mod common;

use std::sync::Arc;

use common::{Cluster, RawClient, befriend};
use fastchat_client::{Client, ClientError, InboxItem, InboxKind};
use fastchat_proto::control::Request;
use fastchat_proto::envelope::{BatchProof, Outgoing, OutgoingGroupText, Sealed, SendAck};
use fastchat_proto::group::{GroupChange, GroupUpdate};
use fastchat_proto::{ErrorCode, MessageId};

/// Syncs and returns what arrived, marking it shown.
async fn drain(client: &Client) -> Vec<InboxItem> {
    client.sync().await.unwrap();
    let items = client.unshown().unwrap();
    let ids: Vec<_> = items.iter().map(|i| i.id).collect();
    client.mark_shown(&ids).unwrap();
    items
}

fn group_texts(items: &[InboxItem]) -> Vec<(String, String)> {
    items
        .iter()
        .filter(|i| i.kind == InboxKind::Text && i.group.as_deref() == Some("team"))
        .map(|i| (i.from.clone(), i.text.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_message_kick_message() {
    let cluster = Cluster::start().await;
    let alice = cluster.register("alice").await;
    let bob = cluster.register("bob").await;
    let carol = cluster.register("carol").await;
    let dave = cluster.register("dave").await;
    for other in [&bob, &carol, &dave] {
        befriend(&alice, other).await;
    }
    alice.group_create("team").await.unwrap();
    for m in ["bob", "carol", "dave"] {
        alice.group_add("team", &[m]).await.unwrap();
    }
    for m in [&bob, &carol, &dave] {
        let items = drain(m).await;
        assert!(items.iter().any(|i| i.kind == InboxKind::MemberAdded
            && i.member.as_deref() == Some(m.name())
            && i.group.as_deref() == Some("team")));
    }

    bob.send_group_text("team", "hi all").await.unwrap();
    for m in [&alice, &carol, &dave] {
        assert_eq!(
            group_texts(&drain(m).await),
            vec![("bob".into(), "hi all".into())]
        );
    }
    assert!(
        group_texts(&drain(&bob).await).is_empty(),
        "no echo to the sender"
    );

    // Only the admin may kick.
    assert!(matches!(
        bob.group_kick("team", "carol").await,
        Err(ClientError::NotAdmin { admin, .. }) if admin == "alice"
    ));
    alice.group_kick("team", "carol").await.unwrap();
    alice
        .send_group_text("team", "carol can't read this")
        .await
        .unwrap();

    let carol_items = drain(&carol).await;
    assert!(
        carol_items
            .iter()
            .any(|i| i.kind == InboxKind::YouWereRemoved)
    );
    assert!(group_texts(&carol_items).is_empty());
    for m in [&bob, &dave] {
        let items = drain(m).await;
        assert!(items.iter().any(|i| i.kind == InboxKind::MemberRemoved
            && i.member.as_deref() == Some("carol")));
        assert_eq!(
            group_texts(&items),
            vec![("alice".into(), "carol can't read this".into())]
        );
    }
    // The kicked member's own client refuses to post...
    assert!(matches!(
        carol.send_group_text("team", "let me back").await,
        Err(ClientError::RemovedFromGroup(_))
    ));
    let list = bob.groups().unwrap();
    assert_eq!(list[0].epoch, 4);
    let names: Vec<_> = list[0].roster.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, vec!["alice", "bob", "dave"]);
}

/// Logs in by hand with the identity stored in `home`.
async fn raw_as(cluster: &Cluster, name: &str) -> RawClient {
    let ks = fastchat_client::keystore::Keystore::open(&cluster.home(name)).unwrap();
    let identity = ks.identity().unwrap();
    let mut raw = RawClient::connect(&cluster.ca(), cluster.node_addr()).await;
    raw.login(name, &identity).await;
    raw
}

async fn raw_group_post(raw: &RawClient, group_id: u64, epoch: u64) -> SendAck {
    let post = Outgoing::Group(OutgoingGroupText {
        id: MessageId([3; 16]),
        group_id,
        epoch,
        sealed: Sealed {
            nonce: [0; 12],
            ciphertext: vec![0; 40],
        },
        signature: vec![0; 64],
        proof: BatchProof {
            index: 0,
            count: 1,
            path: Vec::new(),
        },
    });
    raw.post(&post).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_refuses_non_admins_non_members_and_kicked_members() {
    let cluster = Cluster::start().await;
    let alice = cluster.register("alice").await;
    let bob = cluster.register("bob").await;
    let carol = cluster.register("carol").await;
    let _eve = cluster.register("eve").await;
    befriend(&alice, &bob).await;
    befriend(&alice, &carol).await;
    let id = alice.group_create("team").await.unwrap();
    alice.group_add("team", &["bob"]).await.unwrap();
    alice.group_add("team", &["carol"]).await.unwrap();
    drain(&bob).await;

    // Bob bypasses his client and asks the node to kick carol.
    let mut raw_bob = raw_as(&cluster, "bob").await;
    let update = GroupUpdate {
        group_id: id,
        group: "team".into(),
        admin: "bob".into(),
        epoch: 3,
        change: GroupChange::Removed("carol".into()),
        roster: vec![],
    };
    let err = raw_bob
        .request(Request::GroupRekey {
            update,
            keys: vec![],
            removed_notice: Some(vec![0; 64]),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::NotAdmin);
    assert!(err.message.contains("only alice"), "{}", err.message);

    // A non-member cannot post.
    let raw_eve = raw_as(&cluster, "eve").await;
    let ack = raw_group_post(&raw_eve, id, 2).await;
    assert_eq!(ack.result.unwrap_err().code, ErrorCode::NotMember);

    // A stale epoch is refused (the client then syncs and retries).
    let ack = raw_group_post(&raw_bob, id, 1).await;
    assert_eq!(ack.result.unwrap_err().code, ErrorCode::StaleEpoch);

    // A kicked member cannot post.
    alice.group_kick("team", "carol").await.unwrap();
    let raw_carol = raw_as(&cluster, "carol").await;
    let ack = raw_group_post(&raw_carol, id, 3).await;
    assert_eq!(ack.result.unwrap_err().code, ErrorCode::NotMember);

    // Adding a stranger (not the admin's friend) is refused.
    assert!(matches!(
        alice.group_add("team", &["eve"]).await,
        Err(ClientError::NotFriend(n)) if n == "eve"
    ));
    drop(raw_bob);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_member_catches_up_across_two_epochs_in_order() {
    let cluster = Cluster::start().await;
    let alice = cluster.register("alice").await;
    let bob = cluster.register("bob").await;
    let carol = cluster.register("carol").await;
    let erin = cluster.register("erin").await;
    let dave = cluster.register("dave").await;
    for other in [&bob, &carol, &erin, &dave] {
        befriend(&alice, other).await;
    }
    alice.group_create("team").await.unwrap();
    for m in ["bob", "carol", "dave"] {
        alice.group_add("team", &[m]).await.unwrap();
    }
    drain(&dave).await;
    dave.close().await;

    alice.group_add("team", &["erin"]).await.unwrap();
    alice.send_group_text("team", "welcome erin").await.unwrap();
    alice.group_kick("team", "carol").await.unwrap();
    drain(&bob).await;
    bob.send_group_text("team", "carol is gone").await.unwrap();

    let dave = Client::connect(&cluster.home("dave")).await.unwrap();
    let items = drain(&dave).await;
    let story: Vec<String> = items
        .iter()
        .map(|i| match i.kind {
            InboxKind::Text => format!("{}: {}", i.from, i.text),
            InboxKind::MemberAdded => format!("+{}", i.member.as_deref().unwrap()),
            InboxKind::MemberRemoved => format!("-{}", i.member.as_deref().unwrap()),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(
        story,
        vec![
            "+erin",
            "alice: welcome erin",
            "-carol",
            "bob: carol is gone"
        ]
    );
    // Erin joined after nothing was sent before her, and reads only what came after.
    let erin_texts = group_texts(&drain(&erin).await);
    assert_eq!(
        erin_texts,
        vec![
            ("alice".into(), "welcome erin".into()),
            ("bob".into(), "carol is gone".into())
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_to_fifty_members_delivers_each_message_once() {
    let cluster = Arc::new(Cluster::start().await);
    let admin = cluster.register("admin").await;
    let mut tasks = Vec::new();
    for i in 0..49 {
        let cluster = cluster.clone();
        tasks.push(tokio::spawn(async move {
            cluster.register(&format!("m{i:02}")).await
        }));
    }
    let mut members = Vec::new();
    for t in tasks {
        members.push(t.await.unwrap());
    }
    for m in &members {
        befriend(&admin, m).await;
    }
    admin.group_create("team").await.unwrap();
    // All 49 join in one re-key.
    let names: Vec<&str> = members.iter().map(|m| m.name()).collect();
    admin.group_add("team", &names).await.unwrap();
    admin.send_group_text("team", "to all fifty").await.unwrap();
    members[7]
        .send_group_text("team", "from m07")
        .await
        .unwrap();
    for (i, m) in members.iter().enumerate() {
        let texts = group_texts(&drain(m).await);
        let mut want = vec![("admin".to_string(), "to all fifty".to_string())];
        if i != 7 {
            want.push(("m07".into(), "from m07".into()));
        }
        assert_eq!(texts, want, "member {}", m.name());
    }
    let admin_texts = group_texts(&drain(&admin).await);
    assert_eq!(admin_texts, vec![("m07".into(), "from m07".into())]);
    assert_eq!(admin.groups().unwrap()[0].roster.len(), 50);
}
