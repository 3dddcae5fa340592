//! Texts, both sides: sealing a text to a friend or a group, opening one
//! that arrived, and the "delivered" receipts that answer it.

use fastchat_crypto::{ConversationKey, batch, transcript};
use fastchat_proto::envelope::{
    BatchProof, Outgoing, OutgoingGroupText, OutgoingText, Receipt, Sealed, TextContent, TextRef,
};
use fastchat_proto::frame::encode_body;
use fastchat_proto::limits::MAX_TEXT_BYTES;
use fastchat_proto::{MessageId, decode};

use crate::error::ClientError;
use crate::room::{Change, EpochKeys, Invalid, Me, MemberCheck, Outcome, invalid};
use crate::types::{GroupState, InboxItem, InboxKind};

/// A text ready to seal: its id, send time and encoded content.
pub(crate) struct Draft {
    pub id: MessageId,
    pub text: String,
    pub sent_at_ms: u64,
    plain: Vec<u8>,
}

/// What the local history keeps of a sent text, written once the node
/// acknowledged it.
pub(crate) struct History {
    pub peer: String,
    pub group: Option<String>,
    pub text: String,
    pub sent_at_ms: u64,
}

/// Checks the length (before any key lookup or network work) and gives
/// the text a fresh id and its send time.
pub(crate) fn draft(text: &str) -> Result<Draft, ClientError> {
    if text.len() > MAX_TEXT_BYTES {
        return Err(ClientError::TooLong(text.len()));
    }
    let id = crate::ids::new_message_id();
    let sent_at_ms = fastchat_proto::now_ms();
    let content = TextContent {
        text: text.to_string(),
        sent_at_ms,
    };
    let plain = encode_body(&content).map_err(|_| ClientError::TooLong(text.len()))?;
    Ok(Draft {
        id,
        text: content.text,
        sent_at_ms,
        plain,
    })
}

/// Seals `draft` for friend `to` under our conversation key.
pub(crate) fn seal_direct(
    me: &Me,
    to: &str,
    key: &ConversationKey,
    draft: &Draft,
) -> Result<(Outgoing, History), ClientError> {
    let sealed = key.seal(
        &transcript::text_aad(&me.name, to, &draft.id.0, 0),
        &draft.plain,
    )?;
    let message = Outgoing::Direct(OutgoingText {
        id: draft.id,
        to: to.to_string(),
        sealed,
    });
    Ok((message, history(to, None, draft)))
}

/// Seals `draft` for `group` at its newest epoch. It is signed with the
/// batch it leaves in ([`sign_group_batch`]), so members know which of
/// them wrote it.
pub(crate) fn seal_group(
    me: &Me,
    group: &GroupState,
    draft: &Draft,
) -> Result<(Outgoing, History), ClientError> {
    let key = group
        .key
        .as_ref()
        .ok_or_else(|| ClientError::RemovedFromGroup(group.name.clone()))?;
    let sealed = key.seal(
        &transcript::group_text_aad(group.id, group.epoch, &me.name, &draft.id.0),
        &draft.plain,
    )?;
    let message = Outgoing::Group(OutgoingGroupText {
        id: draft.id,
        group_id: group.id,
        epoch: group.epoch,
        sealed,
        signature: Vec::new(),
        proof: BatchProof::default(),
    });
    Ok((message, history(&group.name, Some(&group.name), draft)))
}

/// Signs the group texts of one outgoing batch that are not signed yet:
/// one signature per group and epoch, over the root of their leaves, and
/// each text its path to that root (see [`fastchat_crypto::batch`]).
pub(crate) fn sign_group_batch<'a>(
    me: &Me,
    texts: impl IntoIterator<Item = &'a mut OutgoingGroupText>,
) {
    let mut unsigned: Vec<&mut OutgoingGroupText> = texts
        .into_iter()
        .filter(|t| t.signature.is_empty())
        .collect();
    while let Some(first) = unsigned.first() {
        let (group_id, epoch) = (first.group_id, first.epoch);
        let (mut same, rest): (Vec<_>, Vec<_>) = unsigned
            .into_iter()
            .partition(|t| (t.group_id, t.epoch) == (group_id, epoch));
        unsigned = rest;
        for chunk in same.chunks_mut(batch::MAX_TEXTS) {
            let leaves: Vec<batch::Hash> = chunk
                .iter()
                .map(|t| {
                    batch::leaf(&transcript::group_text_signature(
                        group_id,
                        epoch,
                        &me.name,
                        &t.id.0,
                        &t.sealed.nonce,
                        &t.sealed.ciphertext,
                    ))
                })
                .collect();
            let (root, paths) = batch::root_and_paths(&leaves);
            let count = chunk.len() as u32;
            let signature = me.signing.sign(&transcript::group_batch_signature(
                group_id, epoch, &me.name, count, &root,
            ));
            for (index, (t, path)) in chunk.iter_mut().zip(paths).enumerate() {
                t.signature = signature.clone();
                t.proof = BatchProof {
                    index: index as u32,
                    count,
                    path,
                };
            }
        }
    }
}

fn history(peer: &str, group: Option<&str>, draft: &Draft) -> History {
    History {
        peer: peer.to_string(),
        group: group.map(str::to_string),
        text: draft.text.clone(),
        sent_at_ms: draft.sent_at_ms,
    }
}

/// Opens a text read in place from its delivery, under its sender's
/// conversation key (`None`: they are not a friend).
pub(crate) fn open_direct(
    me: &Me,
    key: Option<&ConversationKey>,
    text: &TextRef<'_>,
) -> Result<Outcome, Invalid> {
    let from = text.from;
    let key = key.ok_or_else(|| invalid(format!("a text from {from}, who is not a friend")))?;
    let plain = key
        .open_parts(
            &transcript::text_aad(from, &me.name, &text.id.0, 0),
            &text.nonce,
            text.ciphertext,
        )
        .map_err(|_| invalid(format!("a text from {from} failed authentication")))?;
    text_item(text.id, from, None, &plain)
}

/// A group text as it arrived.
#[derive(Clone, Copy)]
pub(crate) struct GroupText<'a> {
    pub id: MessageId,
    pub group_id: u64,
    pub from: &'a str,
    pub epoch: u64,
    pub sealed: &'a Sealed,
    pub signature: &'a [u8],
    pub proof: &'a BatchProof,
}

/// What a group text's sender signed: its batch's root, reached from the
/// text's leaf by its path; `None` if the path does not fit. A text signed
/// alone (protocol 5, queued before an upgrade: `count` 0) signed its own
/// transcript.
fn signed_part(t: &GroupText<'_>) -> Option<Vec<u8>> {
    let text = text_transcript(t);
    if t.proof.count == 0 && t.proof.index == 0 && t.proof.path.is_empty() {
        return Some(text);
    }
    let leaf = batch::leaf(&text);
    let root = batch::root_from_path(&leaf, t.proof.index, t.proof.count, &t.proof.path)?;
    Some(batch_message(t, &root))
}

/// What a group text's leaf (or, signed alone, its signature) covers.
fn text_transcript(t: &GroupText<'_>) -> Vec<u8> {
    transcript::group_text_signature(
        t.group_id,
        t.epoch,
        t.from,
        &t.id.0,
        &t.sealed.nonce,
        &t.sealed.ciphertext,
    )
}

/// What the sender of `t`'s batch signed, given the batch's root.
fn batch_message(t: &GroupText<'_>, root: &batch::Hash) -> Vec<u8> {
    transcript::group_batch_signature(t.group_id, t.epoch, t.from, t.proof.count, root)
}

/// The root of a sender's batch whose texts are all in `batch` (each index
/// of its count once): rebuilt from their leaves, a hash per text, where
/// each text's path costs a hash per level. `None` if some are missing.
fn whole_batch_root(batch: &[&GroupText<'_>]) -> Option<batch::Hash> {
    let count = batch.first()?.proof.count as usize;
    if count != batch.len() {
        return None;
    }
    let mut leaves: Vec<Option<batch::Hash>> = vec![None; count];
    for t in batch {
        let slot = leaves.get_mut(t.proof.index as usize)?;
        if slot.is_some() {
            return None;
        }
        *slot = Some(batch::leaf(&text_transcript(t)));
    }
    let leaves: Vec<batch::Hash> = leaves.into_iter().collect::<Option<_>>()?;
    Some(batch::root(&leaves))
}

/// Checks the signatures of several group texts together, each against
/// the roster of the epoch it claims: `true` if every sender was a member,
/// every text's path fits and every signature verifies (see
/// [`fastchat_crypto::signing::verify_batch`] for what that costs and how
/// it is weaker). Texts of one sender's batch share their signature, which
/// is checked once. On `false`, [`open_group`] checks each text alone.
pub(crate) fn verify_group_batch(texts: &[(&EpochKeys, GroupText<'_>)]) -> bool {
    // The texts of each sender's batch (one signature over one root).
    let mut batches: Vec<(&EpochKeys, Vec<&GroupText<'_>>)> = Vec::new();
    for (epoch_keys, t) in texts {
        let same = |b: &GroupText<'_>| {
            (b.group_id, b.epoch, b.from, b.proof.count, b.signature)
                == (t.group_id, t.epoch, t.from, t.proof.count, t.signature)
        };
        match batches.iter_mut().find(|(_, b)| same(b[0])) {
            Some((_, b)) => b.push(t),
            None => batches.push((*epoch_keys, vec![t])),
        }
    }
    let mut items: Vec<(&fastchat_crypto::signing::VerifyKey, Vec<u8>, &[u8])> = Vec::new();
    for (epoch_keys, batch) in &batches {
        let first = batch[0];
        let Ok(key) = epoch_keys.member_key(first.from) else {
            return false;
        };
        let messages = match whole_batch_root(batch) {
            Some(root) if first.proof.count > 0 => vec![batch_message(first, &root)],
            _ => match batch
                .iter()
                .map(|t| signed_part(t))
                .collect::<Option<Vec<_>>>()
            {
                Some(m) => m,
                None => return false,
            },
        };
        for message in messages {
            // The message names group, epoch, sender, size and root: the
            // same message and signature under the same key are one check.
            let seen = items
                .iter()
                .any(|(k, m, sig)| *k == key && *m == message && *sig == first.signature);
            if !seen {
                items.push((key, message, first.signature));
            }
        }
    }
    let items: Vec<_> = items
        .iter()
        .map(|(key, message, signature)| (*key, message.as_slice(), *signature))
        .collect();
    fastchat_crypto::signing::verify_batch(&items).is_ok()
}

/// Whether a group text's signature is still to be checked.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Signature {
    /// Check it (and the sender's membership) here.
    Unchecked,
    /// [`verify_group_batch`] checked both against this epoch's roster.
    CheckedInBatch,
}

/// Opens a group text: the sender must be in the roster of the epoch it
/// claims (`at_epoch`, the keys we hold for it), and its signature must
/// verify with that roster's key.
pub(crate) fn open_group(
    group_name: Option<&str>,
    at_epoch: Option<&EpochKeys>,
    text: &GroupText<'_>,
    signature: Signature,
) -> Result<Outcome, Invalid> {
    let name = group_name.ok_or_else(|| invalid("a text for a group we do not know"))?;
    let plain = verify_group_text(at_epoch, text, signature)
        .map_err(|why| invalid(format!("a text in {name}: {why}")))?;
    text_item(text.id, text.from, Some(name.to_string()), &plain)
}

fn verify_group_text(
    at_epoch: Option<&EpochKeys>,
    t: &GroupText<'_>,
    signature: Signature,
) -> Result<Vec<u8>, String> {
    let keys = at_epoch.ok_or_else(|| format!("we hold no key for epoch {}", t.epoch))?;
    if signature == Signature::Unchecked {
        let signed = signed_part(t).ok_or("its place in its batch does not fit")?;
        keys.verify_member(t.from, &signed, t.signature)
            .map_err(|e| match e {
                MemberCheck::NotMember => {
                    format!("{} was not a member at epoch {}", t.from, t.epoch)
                }
                MemberCheck::BadSignature => format!("the signature is not {}'s", t.from),
            })?;
    }
    keys.key
        .open(
            &transcript::group_text_aad(t.group_id, t.epoch, t.from, &t.id.0),
            t.sealed,
        )
        .map_err(|_| "it failed authentication".to_string())
}

fn text_item(
    id: MessageId,
    from: &str,
    group: Option<String>,
    plain: &[u8],
) -> Result<Outcome, Invalid> {
    let content: TextContent =
        decode(plain).map_err(|_| invalid(format!("a text from {from} is malformed")))?;
    Ok(Outcome::item(InboxItem {
        id: id.0,
        from: from.to_string(),
        kind: InboxKind::Text,
        group,
        member: None,
        attachment: None,
        text: content.text,
        sent_at_ms: content.sent_at_ms,
    }))
}

/// A friend's receipt: our texts `ids` reached them.
pub(crate) fn on_delivered(from: String, ids: Vec<MessageId>) -> Outcome {
    Outcome::change(Change::MarkDelivered {
        peer: from,
        ids: ids.into_iter().map(|i| i.0).collect(),
    })
}

/// One receipt per friend for the direct texts just stored (sent →
/// delivered on their side). Best effort: a lost one only leaves "sent".
pub(crate) fn receipts<'a>(
    fresh: impl IntoIterator<Item = &'a InboxItem>,
) -> Result<Vec<Receipt>, ClientError> {
    let mut by_sender: Vec<(String, Vec<MessageId>)> = Vec::new();
    for item in fresh
        .into_iter()
        .filter(|i| i.kind == InboxKind::Text && i.group.is_none())
    {
        match by_sender.iter_mut().find(|(s, _)| *s == item.from) {
            Some((_, ids)) => ids.push(MessageId(item.id)),
            None => by_sender.push((item.from.clone(), vec![MessageId(item.id)])),
        }
    }
    by_sender
        .into_iter()
        .map(|(to, ids)| {
            Ok(Receipt {
                id: crate::ids::new_message_id(),
                to,
                ids,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {

    use super::*;
    use fastchat_proto::group::RosterEntry;

    fn me(name: &str) -> Me {
        Me::generate(name)
    }

    fn sealed_of(message: Outgoing) -> (MessageId, Sealed) {
        match message {
            Outgoing::Direct(t) => (t.id, t.sealed),
            _ => unreachable!(),
        }
    }

    #[test]
    fn a_direct_text_opens_only_for_its_pair_and_key() {
        let (alice, bob) = (me("alice"), me("bob"));
        let key = ConversationKey::generate().unwrap();
        let d = draft("hello").unwrap();
        let (message, history) = seal_direct(&alice, "bob", &key, &d).unwrap();
        assert_eq!(
            (history.peer.as_str(), history.text.as_str()),
            ("bob", "hello")
        );
        let (id, sealed) = sealed_of(message);

        let text = |from, id| TextRef {
            id,
            from,
            nonce: sealed.nonce,
            ciphertext: &sealed.ciphertext,
        };
        let item = open_direct(&bob, Some(&key), &text("alice", id))
            .unwrap()
            .item
            .unwrap();
        assert_eq!((item.from.as_str(), item.text.as_str()), ("alice", "hello"));

        // Not a friend: no key.
        let stranger = open_direct(&bob, None, &text("alice", id)).unwrap_err();
        assert!(stranger.0.contains("not a friend"), "{stranger}");
        // Another key, another claimed sender, or another id: refused.
        let other = ConversationKey::generate().unwrap();
        assert!(open_direct(&bob, Some(&other), &text("alice", id)).is_err());
        assert!(open_direct(&bob, Some(&key), &text("carol", id)).is_err());
        assert!(open_direct(&bob, Some(&key), &text("alice", MessageId([9; 16]))).is_err());
    }

    #[test]
    fn texts_past_the_limit_are_refused_before_sealing() {
        let long = "x".repeat(MAX_TEXT_BYTES + 1);
        assert!(matches!(draft(&long), Err(ClientError::TooLong(_))));
    }

    #[test]
    fn receipts_are_one_per_friend_and_skip_groups_and_events() {
        let text = |from: &str, n: u8, group: Option<&str>| InboxItem {
            id: [n; 16],
            from: from.into(),
            kind: InboxKind::Text,
            group: group.map(Into::into),
            member: None,
            attachment: None,
            text: String::new(),
            sent_at_ms: 0,
        };
        let mut request = text("dave", 9, None);
        request.kind = InboxKind::FriendRequest;
        let fresh = [
            text("alice", 1, None),
            text("bob", 2, None),
            text("alice", 3, None),
            text("carol", 4, Some("team")),
            request,
        ];
        let r = receipts(&fresh).unwrap();
        let got: Vec<(&str, Vec<MessageId>)> =
            r.iter().map(|r| (r.to.as_str(), r.ids.clone())).collect();
        assert_eq!(
            got,
            vec![
                ("alice", vec![MessageId([1; 16]), MessageId([3; 16])]),
                ("bob", vec![MessageId([2; 16])]),
            ]
        );
    }

    #[test]
    fn group_texts_checked_in_a_batch_open_and_one_bad_signature_fails_the_batch() {
        let (alice, bob, mallory) = (me("alice"), me("bob"), me("mallory"));
        let (group, epoch) = team(&[&alice, &bob]);
        let mut sealed: Vec<(String, OutgoingGroupText)> =
            [(&alice, "one"), (&bob, "two"), (&alice, "three")]
                .iter()
                .map(|(who, text)| {
                    match seal_group(who, &group, &draft(text).unwrap()).unwrap().0 {
                        Outgoing::Group(g) => (who.name.clone(), g),
                        _ => unreachable!(),
                    }
                })
                .collect();
        // Alice's two texts leave in one batch (one signature), bob's alone.
        let alices = sealed.iter_mut().filter(|(from, _)| from == "alice");
        sign_group_batch(&alice, alices.map(|(_, g)| g));
        sign_group_batch(&bob, [&mut sealed[1].1]);
        assert_eq!(sealed[0].1.signature, sealed[2].1.signature);
        assert_eq!((sealed[2].1.proof.index, sealed[2].1.proof.count), (1, 2));
        assert_eq!(sealed[1].1.proof.count, 1);
        let texts: Vec<(&EpochKeys, GroupText<'_>)> = sealed
            .iter()
            .map(|(from, g)| (&epoch, view(from, g)))
            .collect();
        assert!(verify_group_batch(&texts));
        for (_, t) in &texts {
            let item = open_group(Some("team"), Some(&epoch), t, Signature::CheckedInBatch)
                .unwrap()
                .item
                .unwrap();
            assert_eq!(item.from, t.from);
        }
        // A text claimed by another member, and one from outside the
        // roster, each fail the whole batch; alone, each is refused.
        let stranger = seal_group(&mallory, &group, &draft("hi").unwrap())
            .unwrap()
            .0;
        let Outgoing::Group(mut stranger) = stranger else {
            unreachable!()
        };
        sign_group_batch(&mallory, [&mut stranger]);
        let all = || -> Vec<(&EpochKeys, GroupText<'_>)> {
            sealed
                .iter()
                .map(|(from, g)| (&epoch, view(from, g)))
                .collect()
        };
        let refused = |t: &GroupText<'_>| {
            open_group(Some("team"), Some(&epoch), t, Signature::Unchecked).is_err()
        };
        let mut forged = all();
        forged[2].1.from = "bob";
        assert!(!verify_group_batch(&forged) && refused(&forged[2].1));
        let mut outside = all();
        outside.push((&epoch, view("mallory", &stranger)));
        assert!(!verify_group_batch(&outside) && refused(&outside[3].1));
        // A text's place in its batch is part of what was signed: another
        // position, size or path, or a text from outside the batch with
        // the batch's signature, does not verify.
        let (first, third) = (&sealed[0].1, &sealed[2].1);
        let moved = BatchProof {
            index: 1,
            ..first.proof.clone()
        };
        let grown = BatchProof {
            count: 3,
            ..first.proof.clone()
        };
        let swapped = BatchProof {
            path: third.proof.path.clone(),
            ..first.proof.clone()
        };
        for proof in [&moved, &grown, &swapped] {
            let t = GroupText {
                proof,
                ..view("alice", first)
            };
            assert!(refused(&t));
            assert!(!verify_group_batch(&[(&epoch, t)]));
        }
        let mut stray = seal_group(&alice, &group, &draft("stray").unwrap())
            .unwrap()
            .0;
        let Outgoing::Group(stray) = &mut stray else {
            unreachable!()
        };
        stray.signature = first.signature.clone();
        stray.proof = first.proof.clone();
        assert!(refused(&view("alice", stray)));
        let mut with_stray = all();
        with_stray.push((&epoch, view("alice", stray)));
        assert!(!verify_group_batch(&with_stray));
    }

    #[test]
    fn a_text_signed_alone_as_protocol_5_did_still_opens() {
        let (alice, bob) = (me("alice"), me("bob"));
        let (group, epoch) = team(&[&alice, &bob]);
        let Outgoing::Group(mut old) = seal_group(&alice, &group, &draft("hi").unwrap()).unwrap().0
        else {
            unreachable!()
        };
        let alone = |who: &Me, t: &OutgoingGroupText| {
            who.signing.sign(&transcript::group_text_signature(
                t.group_id,
                t.epoch,
                "alice",
                &t.id.0,
                &t.sealed.nonce,
                &t.sealed.ciphertext,
            ))
        };
        old.signature = alone(&alice, &old);
        let t = view("alice", &old);
        assert!(open_group(Some("team"), Some(&epoch), &t, Signature::Unchecked).is_ok());
        assert!(verify_group_batch(&[(&epoch, view("alice", &old))]));
        // Signed alone by someone else, it is refused as before.
        old.signature = alone(&bob, &old);
        let t = view("alice", &old);
        assert!(open_group(Some("team"), Some(&epoch), &t, Signature::Unchecked).is_err());
    }

    #[test]
    fn texts_signed_together_are_checked_with_one_signature() {
        let alice = me("alice");
        let (group, epoch) = team(&[&alice]);
        let mut batch: Vec<Outgoing> = (0..37)
            .map(|n| {
                seal_group(&alice, &group, &draft(&format!("{n}")).unwrap())
                    .unwrap()
                    .0
            })
            .collect();
        let group_texts = batch.iter_mut().filter_map(|m| match m {
            Outgoing::Group(g) => Some(g),
            _ => None,
        });
        sign_group_batch(&alice, group_texts);
        let texts: Vec<&OutgoingGroupText> = batch
            .iter()
            .map(|m| match m {
                Outgoing::Group(g) => g,
                _ => unreachable!(),
            })
            .collect();
        assert!(texts.iter().all(|t| t.signature == texts[0].signature));
        let views: Vec<(&EpochKeys, GroupText<'_>)> =
            texts.iter().map(|t| (&epoch, view("alice", t))).collect();
        assert!(verify_group_batch(&views));
        for (_, t) in &views {
            assert!(open_group(Some("team"), Some(&epoch), t, Signature::Unchecked).is_ok());
        }
        // Held whole, the batch's root is rebuilt from the texts' leaves:
        // their paths are not read (empty ones pass), every text is (one
        // altered fails them all).
        let no_path = BatchProof {
            path: Vec::new(),
            ..texts[3].proof.clone()
        };
        let mut pathless = views.clone();
        pathless[3].1.proof = &no_path;
        assert!(verify_group_batch(&pathless));
        let mut altered = texts[8].sealed.clone();
        altered.ciphertext[0] ^= 1;
        let mut tampered = views.clone();
        tampered[8].1.sealed = &altered;
        assert!(!verify_group_batch(&tampered));
        // Part of it (or a text twice): each text reaches the root by its
        // own path, so a missing path fails.
        assert!(verify_group_batch(&views[1..]));
        let mut twice = views.clone();
        twice.push(views[4]);
        assert!(verify_group_batch(&twice));
        let mut partial = views[1..].to_vec();
        partial[2].1.proof = &no_path;
        assert!(!verify_group_batch(&partial));
        // Signing again leaves signed texts as they are (a resend keeps its proof).
        let before = texts[5].proof.clone();
        let mut again = batch.clone();
        sign_group_batch(
            &alice,
            again.iter_mut().filter_map(|m| match m {
                Outgoing::Group(g) => Some(g),
                _ => None,
            }),
        );
        let Outgoing::Group(after) = &again[5] else {
            unreachable!()
        };
        assert_eq!(after.proof, before);
    }

    /// Group 7, "team", at epoch 1 with `members`: its state and its keys.
    fn team(members: &[&Me]) -> (GroupState, EpochKeys) {
        let roster: Vec<RosterEntry> = members
            .iter()
            .map(|m| RosterEntry {
                name: m.name.clone(),
                signing_key: m.signing.public(),
            })
            .collect();
        let key = ConversationKey::generate().unwrap();
        let group = GroupState {
            id: 7,
            name: "team".into(),
            admin: "alice".into(),
            epoch: 1,
            member: true,
            roster: roster.clone(),
            key: Some(ConversationKey::from_bytes(*key.as_bytes())),
        };
        (group, EpochKeys::new(key, roster))
    }

    fn view<'a>(from: &'a str, g: &'a OutgoingGroupText) -> GroupText<'a> {
        GroupText {
            id: g.id,
            group_id: g.group_id,
            from,
            epoch: g.epoch,
            sealed: &g.sealed,
            signature: &g.signature,
            proof: &g.proof,
        }
    }
}
