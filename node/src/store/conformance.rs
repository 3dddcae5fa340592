//! The behaviour every [`Store`] must have, as scenarios each
//! implementation's tests run against a fresh store of its own.

use std::sync::Arc;

use fastchat_proto::control::Relation;
use fastchat_proto::{ErrorCode, MessageId};

use super::{
    BlobLocation, Membership, QueueLimits, Queuing, Store, StoreError, Target, TextToQueue,
    UserKeys,
};

/// A text with id `[n; 16]`.
pub fn text(to: Target, n: u8, body: &[u8]) -> TextToQueue {
    TextToQueue {
        to,
        id: MessageId([n; 16]),
        envelope: Arc::new(body.to_vec()),
    }
}

/// The queue positions of the first `limit` envelopes waiting for `user`.
pub async fn positions(s: &dyn Store, user: &str, limit: usize) -> Vec<u64> {
    let page = s.pending(user, 0, limit).await.unwrap();
    page.iter().map(|(seq, _)| *seq).collect()
}

/// Login keys: stored at registration, absent for older accounts, bound later.
pub async fn login_keys_are_stored_and_rebound(s: &dyn Store) {
    s.create_user("carol", b"kc", Some([7; 32])).await.unwrap();
    s.create_user("dave", b"kd", None).await.unwrap();
    let carol = UserKeys {
        public_key: b"kc".to_vec(),
        login_key: Some([7; 32]),
    };
    assert_eq!(s.user_keys("carol").await.unwrap(), Some(carol));
    assert_eq!(s.user_keys("dave").await.unwrap().unwrap().login_key, None);
    assert_eq!(s.user_keys("erin").await.unwrap(), None);
    s.set_login_key("dave", [9; 32]).await.unwrap();
    assert_eq!(
        s.user_keys("dave").await.unwrap().unwrap().login_key,
        Some([9; 32])
    );
    assert_eq!(
        s.set_login_key("erin", [1; 32]).await,
        Err(StoreError::UnknownUser)
    );
}

/// Users, friend requests and accepts, the queue: order, paging, de-duplication, acks.
pub async fn friendship_lifecycle_and_queue(s: &dyn Store) {
    s.create_user("alice", b"ka", None).await.unwrap();
    s.create_user("bob", b"kb", None).await.unwrap();
    assert_eq!(
        s.create_user("bob", b"x", None).await,
        Err(StoreError::NameTaken)
    );
    assert_eq!(s.public_key("bob").await.unwrap(), Some(b"kb".to_vec()));
    assert_eq!(s.public_key("carol").await.unwrap(), None);
    assert_eq!(
        s.request_friend("alice", "carol", b"e").await,
        Err(StoreError::UnknownUser)
    );
    assert_eq!(
        s.accept_friend("bob", "alice", b"e").await,
        Err(StoreError::NoPendingRequest)
    );
    assert_eq!(s.relation("alice", "bob").await.unwrap(), Relation::None);
    let seq = s.request_friend("alice", "bob", b"req").await.unwrap();
    assert!(seq.is_some());
    assert_eq!(
        s.request_friend("alice", "bob", b"req").await.unwrap(),
        None
    );
    assert_eq!(
        s.relation("bob", "alice").await.unwrap(),
        Relation::RequestedByThem
    );
    assert_eq!(
        s.relation("alice", "bob").await.unwrap(),
        Relation::RequestedByMe
    );
    s.accept_friend("bob", "alice", b"acc").await.unwrap();
    assert_eq!(s.relation("alice", "bob").await.unwrap(), Relation::Friends);
    assert_eq!(
        s.accept_friend("bob", "alice", b"acc").await,
        Err(StoreError::AlreadyFriends)
    );
    assert_eq!(
        s.request_friend("bob", "alice", b"req").await,
        Err(StoreError::AlreadyFriends)
    );
    assert_eq!(s.pending("alice", 0, 100).await.unwrap().len(), 1); // the accept

    // A direct text's resend is each store's own (see `Queuing::Duplicate`).
    let texts = vec![text(Target::Direct("bob".into()), 1, b"t1")];
    let r = s
        .enqueue_texts("alice", texts, QueueLimits::default())
        .await
        .unwrap();
    assert!(matches!(r[..], [Queuing::Stored(_)]), "{r:?}");
    let refused = s
        .enqueue_texts(
            "bob",
            vec![text(Target::Direct("carol".into()), 2, b"")],
            QueueLimits::default(),
        )
        .await
        .unwrap();
    assert!(matches!(&refused[0], Queuing::Refused(e) if e.code == ErrorCode::NotFriends));

    let bob = s.pending("bob", 0, 100).await.unwrap();
    assert_eq!(bob.len(), 2); // friend request + text
    assert_eq!(bob[0].1, b"req");
    assert_eq!(bob[1].1, b"t1");
    assert_eq!(s.pending("bob", bob[0].0, 100).await.unwrap().len(), 1);
    assert_eq!(s.pending("bob", 0, 1).await.unwrap().len(), 1);
    let last = s.last_pending("bob").await.unwrap().unwrap();
    assert_eq!(last, bob[1].0);
    assert_eq!(s.queued_for("bob").await.unwrap(), 2);
    assert_eq!(s.queued_for("carol").await.unwrap(), 0);
    // "Everything" must not wrap to a negative position.
    assert!(s.any_pending_upto("bob", u64::MAX).await.unwrap());
    assert!(s.any_pending_upto("bob", bob[0].0).await.unwrap());
    assert!(!s.any_pending_upto("bob", bob[0].0 - 1).await.unwrap());
    assert!(!s.any_pending_upto("carol", u64::MAX).await.unwrap());
    assert_eq!(s.queue_depth().await.unwrap(), 3);
    s.ack("bob", &[bob[0].0]).await.unwrap();
    s.ack("alice", &[bob[1].0]).await.unwrap(); // not alice's: no effect
    s.ack("bob", &[]).await.unwrap();
    assert_eq!(s.pending("bob", 0, 100).await.unwrap().len(), 1);
    // The request is acknowledged; the text after it is not.
    assert_eq!(s.queued_for("bob").await.unwrap(), 1);
    assert!(!s.any_pending_upto("bob", bob[0].0).await.unwrap());
    assert!(s.any_pending_upto("bob", bob[1].0).await.unwrap());
    assert_eq!(s.last_pending("carol").await.unwrap(), None);
}

/// Uploads: resume by id, owner moves, quota, who may fetch, deletion when all have it.
pub async fn blobs_resume_count_quota_move_and_go_when_all_have_them(s: &dyn Store) {
    let id = MessageId([5; 16]);
    let who = vec!["bob".to_string(), "carol".to_string()];
    let b = s
        .begin_blob("alice", id, 100, who.clone(), b"env".to_vec(), 150, "n1")
        .await
        .unwrap();
    assert_eq!(b.queued.len(), 2);
    assert_eq!(b.queued[0].0, "bob");
    assert!(b.queued[0].1 < b.queued[1].1);
    assert_eq!(b.previous_owner, None);
    let again = s
        .begin_blob("alice", id, 100, who.clone(), b"env".to_vec(), 150, "n1")
        .await
        .unwrap();
    assert_eq!(
        (
            again.blob_id,
            again.total_len,
            again.queued.len(),
            again.previous_owner
        ),
        (b.blob_id, 100, 0, None)
    );
    // Resumed on another node: the blob moves there.
    let moved = s
        .begin_blob("alice", id, 100, who.clone(), b"env".to_vec(), 150, "n2")
        .await
        .unwrap();
    assert_eq!(moved.blob_id, b.blob_id);
    assert_eq!(moved.previous_owner.as_deref(), Some("n1"));
    assert_eq!(
        s.begin_blob("alice", MessageId([6; 16]), 100, who, vec![], 150, "n1")
            .await,
        Err(StoreError::QuotaExceeded)
    );
    let at = BlobLocation {
        blob_id: b.blob_id,
        total_len: 100,
        owner: "n2".into(),
    };
    assert_eq!(
        s.blob_for("bob", "alice", id).await.unwrap(),
        Some(at.clone())
    );
    assert_eq!(s.blob_for("eve", "alice", id).await.unwrap(), None);
    assert_eq!(s.blob_received("bob", "alice", id).await.unwrap(), None);
    assert_eq!(s.blob_for("bob", "alice", id).await.unwrap(), None);
    assert_eq!(
        s.blob_received("carol", "alice", id).await.unwrap(),
        Some(at)
    );
    assert_eq!(s.blob_received("carol", "alice", id).await.unwrap(), None);
    // The quota is free again.
    s.begin_blob("alice", MessageId([7; 16]), 100, vec![], vec![], 150, "n1")
        .await
        .unwrap();
}

/// Groups: re-keys by epoch, fan-out to members, refusals (stale epoch, unknown group, non-member).
pub async fn groups_fan_out_and_refuse(s: &dyn Store) {
    let id = s.create_group("team", "alice").await.unwrap();
    assert_eq!(
        s.create_group("team", "bob").await,
        Err(StoreError::NameTaken)
    );
    let keyed = s
        .rekey(
            id,
            1,
            Membership::Add(vec!["bob".into()]),
            vec![("bob".into(), b"k".to_vec())],
        )
        .await
        .unwrap();
    assert_eq!(keyed.len(), 1);
    assert_eq!(keyed[0].0, "bob");
    assert_eq!(
        s.rekey(id, 1, Membership::Add(vec!["carol".into()]), vec![])
            .await,
        Err(StoreError::StaleEpoch)
    );
    assert_eq!(
        s.rekey(id + 100, 1, Membership::Add(vec![]), vec![]).await,
        Err(StoreError::StaleEpoch)
    );
    s.rekey(id, 2, Membership::Add(vec!["carol".into()]), vec![])
        .await
        .unwrap();
    let g = s.group_by_name("team").await.unwrap().unwrap();
    assert_eq!(g.members, vec!["alice", "bob", "carol"]);
    assert_eq!((g.id, g.epoch, g.admin.as_str()), (id, 2, "alice"));
    assert_eq!(s.group(id).await.unwrap(), Some(g));
    assert_eq!(s.group(id + 100).await.unwrap(), None);
    assert_eq!(s.group_by_name("nope").await.unwrap(), None);
    let to = |epoch| Target::Group { id, epoch };
    let r = s
        .enqueue_texts(
            "bob",
            vec![
                text(to(2), 1, &[1]),
                text(to(1), 2, &[2]),
                text(to(2), 1, &[1]),
            ],
            QueueLimits::default(),
        )
        .await
        .unwrap();
    match &r[0] {
        Queuing::Stored(to) => {
            let names: Vec<_> = to.iter().map(|(n, _)| n.as_str()).collect();
            assert_eq!(names, vec!["alice", "carol"]);
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(&r[1], Queuing::Refused(e) if e.code == ErrorCode::StaleEpoch));
    assert_eq!(r[2], Queuing::Duplicate);
    let unknown = s
        .enqueue_texts(
            "bob",
            vec![text(
                Target::Group {
                    id: id + 100,
                    epoch: 0,
                },
                4,
                &[4],
            )],
            QueueLimits::default(),
        )
        .await
        .unwrap();
    assert!(matches!(&unknown[0], Queuing::Refused(e) if e.code == ErrorCode::UnknownGroup));
    s.rekey(id, 3, Membership::Remove("carol".into()), vec![])
        .await
        .unwrap();
    let r = s
        .enqueue_texts("carol", vec![text(to(3), 3, &[3])], QueueLimits::default())
        .await
        .unwrap();
    assert!(matches!(&r[0], Queuing::Refused(e) if e.code == ErrorCode::NotMember));
}

/// A group text waits for each member until that member acks it: acks by
/// some leave it whole for the others, a resend meanwhile is a duplicate
/// for every member, and once every member has acked, the queues count
/// nothing for it.
pub async fn a_group_text_waits_for_each_member_until_each_acks(s: &dyn Store) {
    let id = s.create_group("crew", "alice").await.unwrap();
    let add = Membership::Add(vec!["bob".into(), "carol".into()]);
    s.rekey(id, 1, add, vec![]).await.unwrap();
    let to = || Target::Group { id, epoch: 1 };
    let before = (
        s.queued_for("alice").await.unwrap(),
        s.queued_for("carol").await.unwrap(),
    );
    let sent = vec![text(to(), 1, &[1, 1, 1]), text(to(), 2, &[2, 2])];
    let r = s
        .enqueue_texts("bob", sent, QueueLimits::default())
        .await
        .unwrap();
    assert!(
        r.iter()
            .all(|q| matches!(q, Queuing::Stored(to) if to.len() == 2)),
        "{r:?}"
    );
    let bodies = |page: Vec<(u64, Vec<u8>)>| page.into_iter().map(|(_, b)| b).collect::<Vec<_>>();
    let texts = vec![vec![1, 1, 1], vec![2, 2]];
    for member in ["alice", "carol"] {
        let page = s.pending(member, 0, 100).await.unwrap();
        assert!(
            bodies(page).ends_with(&texts),
            "{member} has both texts, whole"
        );
    }
    let alice = positions(s, "alice", 100).await;
    s.ack("alice", &alice).await.unwrap();
    assert!(s.pending("alice", 0, 100).await.unwrap().is_empty());
    assert_eq!(s.queued_for("alice").await.unwrap(), 0);
    let carol = s.pending("carol", 0, 100).await.unwrap();
    assert!(
        bodies(carol.clone()).ends_with(&texts),
        "alice's ack left carol's copy whole"
    );
    assert_eq!(s.queued_for("carol").await.unwrap(), before.1 + 2);
    let resend = || async {
        let mut r = s
            .enqueue_texts(
                "bob",
                vec![text(to(), 1, &[1, 1, 1])],
                QueueLimits::default(),
            )
            .await
            .unwrap();
        r.remove(0)
    };
    let again = resend().await;
    assert!(
        matches!(&again, Queuing::Duplicate),
        "a resend while carol still waits is a duplicate, for alice too: {again:?}"
    );
    assert!(s.pending("alice", 0, 100).await.unwrap().is_empty());
    let (last, _) = carol[carol.len() - 1];
    s.ack("carol", &[last]).await.unwrap();
    let left = bodies(s.pending("carol", 0, 100).await.unwrap());
    assert_eq!(
        left.last(),
        Some(&vec![1, 1, 1]),
        "carol's first text still waits"
    );
    let rest = positions(s, "carol", 100).await;
    s.ack("carol", &rest).await.unwrap();
    assert_eq!(s.queued_for("carol").await.unwrap(), 0);
    // Once no member waits for it, the node no longer knows the id: a late
    // resend is queued again (clients show a text once by its id).
    let late = resend().await;
    assert!(
        matches!(&late, Queuing::Stored(to) if to.len() == 2),
        "{late:?}"
    );
    assert_eq!(before.0, 0);
}

/// A recipient's queue has room for so many texts and bytes: past either,
/// texts to them are refused with one sentence; acks make room again.
pub async fn queues_are_bounded_per_recipient(s: &dyn Store) {
    s.create_user("alice", b"ka", None).await.unwrap();
    s.create_user("bob", b"kb", None).await.unwrap();
    s.request_friend("alice", "bob", b"r").await.unwrap();
    s.accept_friend("bob", "alice", b"a").await.unwrap();
    // Bob's queue already holds the request: one text, one byte.
    let limits = QueueLimits {
        max_texts: 4,
        max_bytes: 1 + 4 * 10,
    };
    let to_bob = |n: u8| text(Target::Direct("bob".into()), n, &[n; 10]);
    let r = s
        .enqueue_texts("alice", (1..=4).map(to_bob).collect(), limits)
        .await
        .unwrap();
    assert!(
        r[..3].iter().all(|q| matches!(q, Queuing::Stored(_))),
        "{r:?}"
    );
    let Queuing::Refused(full) = &r[3] else {
        panic!("the fourth text fit: {r:?}")
    };
    assert_eq!(full.code, ErrorCode::QuotaExceeded);
    assert!(
        full.message.contains("bob has too many messages waiting"),
        "{full}"
    );
    // By bytes too: one big text does not fit where a small one would.
    let roomy = QueueLimits {
        max_texts: 100,
        max_bytes: 1 + 3 * 10 + 5,
    };
    let big = text(Target::Direct("bob".into()), 9, &[9; 6]);
    let r = s.enqueue_texts("alice", vec![big], roomy).await.unwrap();
    assert!(matches!(&r[0], Queuing::Refused(e) if e.code == ErrorCode::QuotaExceeded));
    // Bob reads two: two more fit, and a resend of one stored is no new text.
    let seqs = positions(s, "bob", 2).await;
    s.ack("bob", &seqs).await.unwrap();
    let r = s
        .enqueue_texts("alice", vec![to_bob(5), to_bob(6), to_bob(1)], limits)
        .await
        .unwrap();
    assert!(
        matches!(r[0], Queuing::Stored(_)) && matches!(r[1], Queuing::Stored(_)),
        "{r:?}"
    );
    assert!(
        matches!(r[2], Queuing::Refused(_) | Queuing::Duplicate),
        "{r:?}"
    );
    // An ack with a gap deletes only what it names, and the usage follows.
    let left = positions(s, "bob", 10).await;
    assert_eq!(left.len(), 4, "{left:?}");
    s.ack("bob", &[left[0], left[2]]).await.unwrap();
    let rest = positions(s, "bob", 10).await;
    assert_eq!(rest, vec![left[1], left[3]]);
    assert_eq!(s.queued_for("bob").await.unwrap(), 2);
    // The whole run acked again, with two already gone, deletes the rest.
    s.ack("bob", &left).await.unwrap();
    assert!(s.pending("bob", 0, 10).await.unwrap().is_empty());
    assert_eq!(s.queued_for("bob").await.unwrap(), 0);
}

/// A member gets the group texts of their time in the group, among their
/// other envelopes in queue order: not those from before they joined, all
/// those from before they left (and none after), whichever order their
/// acks come in; the newest and the oldest waiting are known across groups.
pub async fn members_get_the_texts_of_their_time_in_the_group_in_queue_order(s: &dyn Store) {
    let limits = QueueLimits::default;
    let g1 = s.create_group("one", "alice").await.unwrap();
    let add = Membership::Add(vec!["bob".into(), "carol".into()]);
    s.rekey(g1, 1, add, vec![]).await.unwrap();
    let g2 = s.create_group("two", "dave").await.unwrap();
    let key = vec![("bob".to_string(), b"key two".to_vec())];
    s.rekey(g2, 1, Membership::Add(vec!["bob".into()]), key)
        .await
        .unwrap();
    let one = |epoch| Target::Group { id: g1, epoch };
    let two = Target::Group { id: g2, epoch: 1 };
    s.enqueue_texts("alice", vec![text(one(1), 1, b"t1")], limits())
        .await
        .unwrap();
    s.enqueue_texts("dave", vec![text(two.clone(), 2, b"u1")], limits())
        .await
        .unwrap();
    // Bob is dave's only other member: a text for one recipient.
    s.enqueue_texts("dave", vec![text(two, 3, b"u2")], limits())
        .await
        .unwrap();
    let bodies = |page: Vec<(u64, Vec<u8>)>| page.into_iter().map(|(_, b)| b).collect::<Vec<_>>();
    let waiting =
        |user: &'static str| async move { bodies(s.pending(user, 0, 100).await.unwrap()) };
    let bob = s.pending("bob", 0, 100).await.unwrap();
    assert_eq!(
        bodies(bob.clone()),
        vec![
            b"key two".to_vec(),
            b"t1".to_vec(),
            b"u1".to_vec(),
            b"u2".to_vec()
        ],
        "queue order across groups"
    );
    assert!(bob.windows(2).all(|w| w[0].0 < w[1].0));
    let later = s.pending("bob", bob[1].0, 100).await.unwrap();
    assert_eq!(bodies(later), vec![b"u1".to_vec(), b"u2".to_vec()]);
    assert_eq!(
        bodies(s.pending("bob", 0, 2).await.unwrap()),
        vec![b"key two".to_vec(), b"t1".to_vec()],
        "a short page is the oldest"
    );
    assert_eq!(s.last_pending("bob").await.unwrap(), Some(bob[3].0));
    assert!(s.pending("alice", 0, 100).await.unwrap().is_empty());
    assert_eq!(s.last_pending("alice").await.unwrap(), None);

    let key = vec![("erin".to_string(), b"key one".to_vec())];
    s.rekey(g1, 2, Membership::Add(vec!["erin".into()]), key)
        .await
        .unwrap();
    s.enqueue_texts("alice", vec![text(one(2), 4, b"t2")], limits())
        .await
        .unwrap();
    assert_eq!(
        waiting("erin").await,
        vec![b"key one".to_vec(), b"t2".to_vec()],
        "nothing from before erin joined"
    );

    // Bob acknowledges t2 and u1 before t1 and u2.
    let bob = s.pending("bob", 0, 100).await.unwrap();
    let at = |body: &[u8]| bob.iter().find(|(_, b)| b == body).unwrap().0;
    s.ack("bob", &[at(b"key two"), at(b"t2"), at(b"u1")])
        .await
        .unwrap();
    assert_eq!(
        waiting("bob").await,
        vec![b"t1".to_vec(), b"u2".to_vec()],
        "what bob skipped still waits"
    );
    assert!(s.any_pending_upto("bob", at(b"t1")).await.unwrap());
    assert!(!s.any_pending_upto("bob", at(b"t1") - 1).await.unwrap());
    assert_eq!(s.queued_for("bob").await.unwrap(), 2);
    s.ack("bob", &[at(b"t1"), at(b"u2")]).await.unwrap();
    assert!(s.pending("bob", 0, 100).await.unwrap().is_empty());
    assert_eq!(s.queued_for("bob").await.unwrap(), 0);
    assert_eq!(s.last_pending("bob").await.unwrap(), None);
    assert!(!s.any_pending_upto("bob", u64::MAX).await.unwrap());

    s.rekey(g1, 3, Membership::Remove("carol".into()), vec![])
        .await
        .unwrap();
    s.enqueue_texts("alice", vec![text(one(3), 5, b"t3")], limits())
        .await
        .unwrap();
    assert_eq!(
        waiting("carol").await,
        vec![b"t1".to_vec(), b"t2".to_vec()],
        "carol keeps what was sent while she was a member, and nothing after"
    );
    assert_eq!(s.queued_for("carol").await.unwrap(), 2);
    for user in ["alice", "bob", "carol", "dave", "erin"] {
        let seqs = positions(s, user, 100).await;
        s.ack(user, &seqs).await.unwrap();
        assert_eq!(s.queued_for(user).await.unwrap(), 0, "{user}");
    }
    assert_eq!(s.queue_depth().await.unwrap(), 0);
}

/// A member of several groups reads their texts page by page in queue
/// order, however the groups' texts interleave.
pub async fn pages_across_groups_come_in_queue_order(s: &dyn Store) {
    let mut groups = Vec::new();
    for (name, admin) in [("a", "ann"), ("b", "ben"), ("c", "cat")] {
        let id = s.create_group(name, admin).await.unwrap();
        s.rekey(
            id,
            1,
            Membership::Add(vec!["max".into(), "zoe".into()]),
            vec![],
        )
        .await
        .unwrap();
        groups.push((id, admin));
    }
    let mut sent = Vec::new();
    for n in 0..12u8 {
        let (id, admin) = groups[usize::from(n * 7 % 3)];
        let body = vec![n; 3];
        s.enqueue_texts(
            admin,
            vec![text(Target::Group { id, epoch: 1 }, n + 1, &body)],
            QueueLimits::default(),
        )
        .await
        .unwrap();
        sent.push(body);
    }
    let mut read = Vec::new();
    let mut after = 0;
    loop {
        let page = s.pending("max", after, 5).await.unwrap();
        let Some(&(last, _)) = page.last() else { break };
        assert!(page.len() <= 5);
        assert!(page.windows(2).all(|w| w[0].0 < w[1].0));
        read.extend(page.into_iter().map(|(_, body)| body));
        after = last;
    }
    assert_eq!(read, sent);
}
