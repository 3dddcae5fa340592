//! Texts, both sides: sealing a text to a friend or a group, opening one
//! that arrived, and the "delivered" receipts that answer it.

use fastchat_crypto::{ConversationKey, transcript};
use fastchat_proto::envelope::{
    Outgoing, OutgoingGroupText, OutgoingText, Receipt, Sealed, TextContent,
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
    let id = crate::ids::new_message_id()?;
    let sent_at_ms = fastchat_proto::now_ms();
    let plain = encode_body(&TextContent {
        text: text.to_string(),
        sent_at_ms,
    })
    .map_err(|_| ClientError::TooLong(text.len()))?;
    Ok(Draft {
        id,
        text: text.to_string(),
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

/// Seals `draft` for `group` at its newest epoch and signs it, so members
/// know which of them wrote it.
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
    let signature = me.signing.sign(&transcript::group_text_signature(
        group.id,
        group.epoch,
        &me.name,
        &draft.id.0,
        &sealed.nonce,
        &sealed.ciphertext,
    ));
    let message = Outgoing::Group(OutgoingGroupText {
        id: draft.id,
        group_id: group.id,
        epoch: group.epoch,
        sealed,
        signature,
    });
    Ok((message, history(&group.name, Some(&group.name), draft)))
}

fn history(peer: &str, group: Option<&str>, draft: &Draft) -> History {
    History {
        peer: peer.to_string(),
        group: group.map(str::to_string),
        text: draft.text.clone(),
        sent_at_ms: draft.sent_at_ms,
    }
}

/// Opens a text from `from`, whose conversation key (if they are a friend)
/// is `key`.
pub(crate) fn open_direct(
    me: &Me,
    from: &str,
    key: Option<&ConversationKey>,
    id: MessageId,
    sealed: &Sealed,
) -> Result<Outcome, Invalid> {
    let key = key.ok_or_else(|| invalid(format!("a text from {from}, who is not a friend")))?;
    let plain = key
        .open(&transcript::text_aad(from, &me.name, &id.0, 0), sealed)
        .map_err(|_| invalid(format!("a text from {from} failed authentication")))?;
    text_item(id, from, None, &plain)
}

/// A group text as it arrived.
pub(crate) struct GroupText<'a> {
    pub id: MessageId,
    pub group_id: u64,
    pub from: &'a str,
    pub epoch: u64,
    pub sealed: &'a Sealed,
    pub signature: &'a [u8],
}

/// What a group text's sender signed.
fn signed_part(t: &GroupText<'_>) -> Vec<u8> {
    transcript::group_text_signature(
        t.group_id,
        t.epoch,
        t.from,
        &t.id.0,
        &t.sealed.nonce,
        &t.sealed.ciphertext,
    )
}

/// Checks the signatures of several group texts together, each against
/// the roster of the epoch it claims: `true` if every sender was a member
/// and every signature verifies (see [`fastchat_crypto::signing::verify_batch`]
/// for what that costs and how it is weaker). On `false`, [`open_group`]
/// checks each text alone.
pub(crate) fn verify_group_batch(texts: &[(&EpochKeys, GroupText<'_>)]) -> bool {
    let signed: Vec<Vec<u8>> = texts.iter().map(|(_, t)| signed_part(t)).collect();
    let mut items = Vec::with_capacity(texts.len());
    for ((keys, t), message) in texts.iter().zip(&signed) {
        match keys.member_key(t.from) {
            Ok(key) => items.push((key, message.as_slice(), t.signature)),
            Err(_) => return false,
        }
    }
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
        keys.verify_member(t.from, &signed_part(t), t.signature)
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
                id: crate::ids::new_message_id()?,
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

        let item = open_direct(&bob, "alice", Some(&key), id, &sealed)
            .unwrap()
            .item
            .unwrap();
        assert_eq!((item.from.as_str(), item.text.as_str()), ("alice", "hello"));

        // Not a friend: no key.
        let stranger = open_direct(&bob, "alice", None, id, &sealed).unwrap_err();
        assert!(stranger.0.contains("not a friend"), "{stranger}");
        // Another key, another claimed sender, or another id: refused.
        let other = ConversationKey::generate().unwrap();
        assert!(open_direct(&bob, "alice", Some(&other), id, &sealed).is_err());
        assert!(open_direct(&bob, "carol", Some(&key), id, &sealed).is_err());
        assert!(open_direct(&bob, "alice", Some(&key), MessageId([9; 16]), &sealed).is_err());
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
        let roster: Vec<RosterEntry> = [&alice, &bob]
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
        let epoch = EpochKeys::new(key, roster);
        let sealed: Vec<(String, OutgoingGroupText)> =
            [(&alice, "one"), (&bob, "two"), (&alice, "three")]
                .iter()
                .map(|(who, text)| {
                    match seal_group(who, &group, &draft(text).unwrap()).unwrap().0 {
                        Outgoing::Group(g) => (who.name.clone(), g),
                        _ => unreachable!(),
                    }
                })
                .collect();
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
        let Outgoing::Group(stranger) = stranger else {
            unreachable!()
        };
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
    }

    fn view<'a>(from: &'a str, g: &'a OutgoingGroupText) -> GroupText<'a> {
        GroupText {
            id: g.id,
            group_id: g.group_id,
            from,
            epoch: g.epoch,
            sealed: &g.sealed,
            signature: &g.signature,
        }
    }
}
