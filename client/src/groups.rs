//! Groups, both sides. The admin creates a group, adds and kicks members;
//! every change is a new epoch with a fresh key, wrapped to each member
//! and signed by the admin, so removed members never read what follows.
//! A member takes a change in only if the admin (a verified friend)
//! signed it and it moves the group forward.

use fastchat_crypto::{ConversationKey, PublicIdentity, signing, transcript};
use fastchat_proto::control::Request;
use fastchat_proto::group::{GroupChange, GroupUpdate, MemberKey, RosterEntry};

use crate::error::ClientError;
use crate::room::{Change, Invalid, Me, Outcome, event, invalid};
use crate::types::{GroupState, InboxKind, Peer, PeerState};

/// The keystore entry for a group just created with id `id`: epoch 0, a
/// fresh key, and us as its admin and only member.
pub(crate) fn created(me: &Me, id: u64, name: &str) -> Result<Change, ClientError> {
    Ok(Change::PutGroupEpoch {
        id,
        name: name.to_string(),
        admin: me.name.clone(),
        epoch: 0,
        key: ConversationKey::generate()?,
        roster: vec![RosterEntry {
            name: me.name.clone(),
            signing_key: me.signing.public(),
        }],
    })
}

/// The group named `name` if we are in it.
pub(crate) fn member_of(name: &str, known: Option<GroupState>) -> Result<GroupState, ClientError> {
    match known {
        Some(g) if g.member => Ok(g),
        Some(_) => Err(ClientError::RemovedFromGroup(name.to_string())),
        None => Err(ClientError::UnknownGroup(name.to_string())),
    }
}

/// A roster entry for friend `peer` (looked up as `name`).
pub(crate) fn roster_entry(name: &str, peer: Option<Peer>) -> Result<RosterEntry, ClientError> {
    let peer = peer
        .filter(|p| p.state == PeerState::Friend)
        .ok_or_else(|| ClientError::NotFriend(name.to_string()))?;
    let signing_key = peer
        .signing_key
        .ok_or_else(|| ClientError::NotFriend(name.to_string()))?;
    Ok(RosterEntry {
        name: name.to_string(),
        signing_key,
    })
}

/// Adds `entries` to a roster; refuses members already in it.
pub(crate) fn add_members(
    roster: &mut Vec<RosterEntry>,
    entries: Vec<RosterEntry>,
) -> Result<(), ClientError> {
    for entry in entries {
        if roster.iter().any(|r| r.name == entry.name) {
            return Err(ClientError::AlreadyMember(entry.name));
        }
        roster.push(entry);
    }
    Ok(())
}

/// Removes `member` from a roster; refuses one not in it.
pub(crate) fn remove_member(
    roster: &mut Vec<RosterEntry>,
    member: &str,
) -> Result<(), ClientError> {
    if !roster.iter().any(|r| r.name == member) {
        return Err(ClientError::NotMember(member.to_string()));
    }
    roster.retain(|r| r.name != member);
    Ok(())
}

/// The request that moves `state` to its next epoch with `change` (whose
/// roster `edit` makes), and the keystore entry to write once the node took
/// it. `peer` looks up each remaining member, whose RSA key the new group
/// key is wrapped to.
pub(crate) fn rekey(
    me: &Me,
    state: GroupState,
    change: GroupChange,
    edit: impl FnOnce(&mut Vec<RosterEntry>) -> Result<(), ClientError>,
    mut peer: impl FnMut(&str) -> Result<Option<Peer>, ClientError>,
) -> Result<(Request, Change), ClientError> {
    if state.admin != me.name {
        return Err(ClientError::NotAdmin {
            group: state.name,
            admin: state.admin,
        });
    }
    let mut roster = state.roster;
    edit(&mut roster)?;
    let update = GroupUpdate {
        group_id: state.id,
        group: state.name,
        admin: state.admin,
        epoch: state.epoch + 1,
        change,
        roster,
    };
    let bytes = update.signed_bytes();
    let key = ConversationKey::generate()?;
    let mut keys = Vec::with_capacity(update.roster.len());
    for entry in update.roster.iter().filter(|r| r.name != me.name) {
        let member = peer(&entry.name)?
            .filter(|p| p.state == PeerState::Friend)
            .ok_or_else(|| ClientError::NotFriend(entry.name.clone()))?;
        let wrapped_key = PublicIdentity::from_der(&member.public_key)?.wrap_key(&key)?;
        let signature = me
            .signing
            .sign(&transcript::group_key(&bytes, &entry.name, &wrapped_key));
        keys.push(MemberKey {
            member: entry.name.clone(),
            wrapped_key,
            signature,
        });
    }
    let removed_notice = matches!(update.change, GroupChange::Removed(_))
        .then(|| me.signing.sign(&transcript::group_removed(&bytes)));
    let stored = Change::PutGroupEpoch {
        id: update.group_id,
        name: update.group.clone(),
        admin: update.admin.clone(),
        epoch: update.epoch,
        key,
        roster: update.roster.clone(),
    };
    let request = Request::GroupRekey {
        update,
        keys,
        removed_notice,
    };
    Ok((request, stored))
}

/// Takes in a new group key: signed by the admin, naming us in its roster,
/// newer than what we hold. `admin` is the update's admin as we know them,
/// `known` the group as we know it.
pub(crate) fn on_key(
    me: &Me,
    admin: Option<&Peer>,
    known: Option<&GroupState>,
    update: GroupUpdate,
    wrapped_key: &[u8],
    signature: &[u8],
    event_id: [u8; 16],
) -> Result<Outcome, Invalid> {
    let bytes = update.signed_bytes();
    check_admin_signature(
        admin,
        known,
        &update,
        &transcript::group_key(&bytes, &me.name, wrapped_key),
        signature,
    )?;
    if !update.roster.iter().any(|r| r.name == me.name) {
        return Err(invalid("a group key whose roster leaves us out"));
    }
    if !moves_forward(known, &update)? {
        return Ok(Outcome::nothing());
    }
    // Only now, with the admin's signature verified, touch RSA decryption.
    let key = me
        .identity
        .unwrap_key(wrapped_key)
        .map_err(|_| invalid("a group key could not be unwrapped"))?;
    let (kind, member) = match &update.change {
        GroupChange::Added(m) => (InboxKind::MemberAdded, m.join(", ")),
        GroupChange::Removed(m) => (InboxKind::MemberRemoved, m.clone()),
    };
    let mut item = event(event_id, &update.admin, kind);
    item.group = Some(update.group.clone());
    item.member = Some(member);
    let change = Change::PutGroupEpoch {
        id: update.group_id,
        name: update.group,
        admin: update.admin,
        epoch: update.epoch,
        key,
        roster: update.roster,
    };
    Ok(Outcome::both(change, item))
}

/// Takes in the admin's notice that we were removed.
pub(crate) fn on_removed(
    me: &Me,
    admin: Option<&Peer>,
    known: Option<&GroupState>,
    update: &GroupUpdate,
    signature: &[u8],
    event_id: [u8; 16],
) -> Result<Outcome, Invalid> {
    let bytes = update.signed_bytes();
    check_admin_signature(
        admin,
        known,
        update,
        &transcript::group_removed(&bytes),
        signature,
    )?;
    if update.change != GroupChange::Removed(me.name.clone()) {
        return Err(invalid("a removal notice for someone else"));
    }
    if !moves_forward(known, update)? {
        return Ok(Outcome::nothing());
    }
    let mut item = event(event_id, &update.admin, InboxKind::YouWereRemoved);
    item.group = Some(update.group.clone());
    item.member = Some(me.name.clone());
    let change = Change::LeaveGroup {
        id: update.group_id,
        epoch: update.epoch,
    };
    Ok(Outcome::both(change, item))
}

/// Checks that `update` is signed by its admin, who must be our friend (so
/// their signing key was certified to us by their RSA identity), and that it
/// does not change who the admin of a known group is.
fn check_admin_signature(
    admin: Option<&Peer>,
    known: Option<&GroupState>,
    update: &GroupUpdate,
    message: &[u8],
    signature: &[u8],
) -> Result<(), Invalid> {
    let admin_key = admin
        .filter(|p| p.name == update.admin && p.state == PeerState::Friend)
        .and_then(|p| p.signing_key)
        .ok_or_else(|| {
            invalid(format!(
                "a group update from {}, who is not a friend",
                update.admin
            ))
        })?;
    signing::verify(&admin_key, message, signature).map_err(|_| {
        invalid(format!(
            "a group update not signed by its admin {}",
            update.admin
        ))
    })?;
    if let Some(known) = known
        && (known.admin != update.admin || known.name != update.group)
    {
        return Err(invalid(
            "a group update that changes the group's admin or name",
        ));
    }
    Ok(())
}

/// `Ok(true)` if `update` moves the group forward; `Ok(false)` if we already
/// applied it (a redelivery); an error if it is older (a replay).
fn moves_forward(known: Option<&GroupState>, update: &GroupUpdate) -> Result<bool, Invalid> {
    match known {
        Some(g) if update.epoch < g.epoch => Err(invalid(format!(
            "a replayed key for {} (epoch {} < {})",
            g.name, update.epoch, g.epoch
        ))),
        Some(g) if update.epoch == g.epoch => Ok(false),
        _ => Ok(true),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use fastchat_crypto::{Identity, SigningIdentity};
    use fastchat_proto::envelope::TextContent;
    use fastchat_proto::frame::encode_body;
    use fastchat_proto::{MessageId, envelope::Sealed};

    use super::*;
    use crate::room::EpochKeys;
    use crate::texts::{GroupText, open_group};
    use crate::types::InboxItem;

    struct Member {
        name: &'static str,
        signing: SigningIdentity,
    }

    fn member(name: &'static str) -> Member {
        Member {
            name,
            signing: SigningIdentity::generate().unwrap(),
        }
    }

    fn roster(members: &[&Member]) -> Vec<RosterEntry> {
        members
            .iter()
            .map(|m| RosterEntry {
                name: m.name.into(),
                signing_key: m.signing.public(),
            })
            .collect()
    }

    /// What Bob's keystore would hold, kept in memory: alice (the admin)
    /// as a verified friend, the group, and a key and roster per epoch.
    struct Bob {
        me: Me,
        alice: Peer,
        group: Option<GroupState>,
        epochs: HashMap<u64, EpochKeys>,
    }

    impl Bob {
        fn new(alice: &Member) -> Self {
            Bob {
                me: Me::generate("bob"),
                alice: Peer {
                    name: "alice".into(),
                    public_key: Identity::generate().unwrap().public().der().to_vec(),
                    signing_key: Some(alice.signing.public()),
                    state: PeerState::Friend,
                    key: Some(ConversationKey::generate().unwrap()),
                },
                group: None,
                epochs: HashMap::new(),
            }
        }

        /// Takes `outcome` in as the keystore would.
        fn keep(&mut self, outcome: Outcome) -> Option<InboxItem> {
            match outcome.change {
                Some(Change::PutGroupEpoch {
                    id,
                    name,
                    admin,
                    epoch,
                    key,
                    roster,
                }) => {
                    self.epochs
                        .insert(epoch, EpochKeys::new(key.clone(), roster.clone()));
                    self.group = Some(GroupState {
                        id,
                        name,
                        admin,
                        epoch,
                        member: true,
                        roster,
                        key: Some(key),
                    });
                }
                Some(Change::LeaveGroup { epoch, .. }) => {
                    let g = self.group.as_mut().unwrap();
                    (g.member, g.epoch, g.key) = (false, epoch, None);
                    g.roster.clear();
                }
                None => {}
                Some(_) => panic!("a group change touched something else"),
            }
            outcome.item
        }

        fn apply(&mut self, envelope: Envelope) -> Result<Option<InboxItem>, String> {
            let outcome = match envelope {
                Envelope::Key {
                    update,
                    wrapped_key,
                    signature,
                } => on_key(
                    &self.me,
                    Some(&self.alice),
                    self.group.as_ref(),
                    update,
                    &wrapped_key,
                    &signature,
                    [1; 16],
                ),
                Envelope::Removed { update, signature } => on_removed(
                    &self.me,
                    Some(&self.alice),
                    self.group.as_ref(),
                    &update,
                    &signature,
                    [2; 16],
                ),
                Envelope::Text {
                    id,
                    from,
                    epoch,
                    sealed,
                    signature,
                } => open_group(
                    self.group.as_ref().map(|g| g.name.as_str()),
                    self.epochs.get(&epoch),
                    &GroupText {
                        id,
                        group_id: 7,
                        from: &from,
                        epoch,
                        sealed: &sealed,
                        signature: &signature,
                        proof: &fastchat_proto::envelope::BatchProof {
                            index: 0,
                            count: 1,
                            path: Vec::new(),
                        },
                    },
                    crate::texts::Signature::Unchecked,
                ),
            };
            outcome.map(|o| self.keep(o)).map_err(|e| e.0)
        }
    }

    #[derive(Clone)]
    enum Envelope {
        Key {
            update: GroupUpdate,
            wrapped_key: Vec<u8>,
            signature: Vec<u8>,
        },
        Removed {
            update: GroupUpdate,
            signature: Vec<u8>,
        },
        Text {
            id: MessageId,
            from: String,
            epoch: u64,
            sealed: Sealed,
            signature: Vec<u8>,
        },
    }

    fn key_envelope(
        bob: &Bob,
        signer: &Member,
        epoch: u64,
        change: GroupChange,
        members: &[&Member],
        key: &ConversationKey,
    ) -> Envelope {
        let update = GroupUpdate {
            group_id: 7,
            group: "team".into(),
            admin: "alice".into(),
            epoch,
            change,
            roster: roster(members),
        };
        let wrapped_key = bob.me.identity.public().wrap_key(key).unwrap();
        let signature = signer.signing.sign(&transcript::group_key(
            &update.signed_bytes(),
            "bob",
            &wrapped_key,
        ));
        Envelope::Key {
            update,
            wrapped_key,
            signature,
        }
    }

    fn group_text(
        from: &Member,
        claimed: &str,
        epoch: u64,
        key: &ConversationKey,
        n: u8,
    ) -> Envelope {
        let id = MessageId([n; 16]);
        let plain = encode_body(&TextContent {
            text: format!("message {n}"),
            sent_at_ms: 1,
        })
        .unwrap();
        let sealed = key
            .seal(
                &transcript::group_text_aad(7, epoch, claimed, &id.0),
                &plain,
            )
            .unwrap();
        // A batch of one: its leaf is the root the signature covers.
        let leaf = fastchat_crypto::batch::leaf(&transcript::group_text_signature(
            7,
            epoch,
            claimed,
            &id.0,
            &sealed.nonce,
            &sealed.ciphertext,
        ));
        let signature = from.signing.sign(&transcript::group_batch_signature(
            7, epoch, claimed, 1, &leaf,
        ));
        Envelope::Text {
            id,
            from: claimed.into(),
            epoch,
            sealed,
            signature,
        }
    }

    #[test]
    fn group_keys_texts_and_removal_are_checked() {
        let (alice, carol) = (member("alice"), member("carol"));
        let mut core = Bob::new(&alice);
        // Bob's roster entry must carry bob's real signing key.
        let bob = Member {
            name: "bob",
            signing: SigningIdentity::from_seed(&core.me.signing.seed()[..]).unwrap(),
        };
        let k1 = ConversationKey::generate().unwrap();

        // A key message signed by someone other than the admin is refused.
        let forged = key_envelope(
            &core,
            &carol,
            1,
            GroupChange::Added(vec!["bob".into()]),
            &[&alice, &bob, &carol],
            &k1,
        );
        assert!(
            core.apply(forged)
                .unwrap_err()
                .contains("not signed by its admin")
        );

        let good = key_envelope(
            &core,
            &alice,
            1,
            GroupChange::Added(vec!["bob".into()]),
            &[&alice, &bob, &carol],
            &k1,
        );
        let item = core.apply(good.clone()).unwrap().unwrap();
        assert_eq!(item.kind, InboxKind::MemberAdded);
        assert_eq!(item.group.as_deref(), Some("team"));
        // Redelivery is a no-op, not an error.
        assert_eq!(core.apply(good.clone()).unwrap(), None);

        // Texts: carol's own message verifies; carol posing as alice does not.
        let ok = core
            .apply(group_text(&carol, "carol", 1, &k1, 1))
            .unwrap()
            .unwrap();
        assert_eq!((ok.from.as_str(), ok.text.as_str()), ("carol", "message 1"));
        let posing = core
            .apply(group_text(&carol, "alice", 1, &k1, 2))
            .unwrap_err();
        assert!(posing.contains("signature is not alice's"), "{posing}");
        let eve = member("eve");
        let stranger = core.apply(group_text(&eve, "eve", 1, &k1, 3)).unwrap_err();
        assert!(stranger.contains("not a member at epoch 1"), "{stranger}");

        // Carol is kicked: epoch 2 without her.
        let k2 = ConversationKey::generate().unwrap();
        let kick = key_envelope(
            &core,
            &alice,
            2,
            GroupChange::Removed("carol".into()),
            &[&alice, &bob],
            &k2,
        );
        assert_eq!(
            core.apply(kick).unwrap().unwrap().kind,
            InboxKind::MemberRemoved
        );
        // A replay of the old epoch-1 key is refused.
        assert!(core.apply(good).unwrap_err().contains("replayed"));
        // Carol's posts at the new epoch are ignored even with a valid signature.
        let late = core
            .apply(group_text(&carol, "carol", 2, &k2, 4))
            .unwrap_err();
        assert!(late.contains("not a member at epoch 2"), "{late}");

        // Bob himself is removed at epoch 3: he holds no key for it, and the
        // keys he does hold do not open epoch-3 ciphertext.
        let k3 = ConversationKey::generate().unwrap();
        let update = GroupUpdate {
            group_id: 7,
            group: "team".into(),
            admin: "alice".into(),
            epoch: 3,
            change: GroupChange::Removed("bob".into()),
            roster: roster(&[&alice]),
        };
        let signature = alice
            .signing
            .sign(&transcript::group_removed(&update.signed_bytes()));
        let removed = core
            .apply(Envelope::Removed { update, signature })
            .unwrap()
            .unwrap();
        assert_eq!(removed.kind, InboxKind::YouWereRemoved);
        let after = group_text(&alice, "alice", 3, &k3, 5);
        assert!(
            core.apply(after.clone())
                .unwrap_err()
                .contains("no key for epoch 3")
        );
        let Envelope::Text { sealed, id, .. } = after else {
            unreachable!()
        };
        for old in [&k1, &k2] {
            assert!(
                old.open(&transcript::group_text_aad(7, 3, "alice", &id.0), &sealed)
                    .is_err()
            );
        }
        assert!(!core.group.as_ref().unwrap().member);
    }

    #[test]
    fn only_the_admin_rekeys_and_every_member_gets_a_wrapped_key() {
        let alice = Me::generate("alice");
        let bob = Identity::generate().unwrap();
        let bob_peer = Peer {
            name: "bob".into(),
            public_key: bob.public().der().to_vec(),
            signing_key: Some(SigningIdentity::generate().unwrap().public()),
            state: PeerState::Friend,
            key: None,
        };
        let Change::PutGroupEpoch {
            id,
            name,
            admin,
            epoch,
            key,
            roster,
        } = created(&alice, 7, "team").unwrap()
        else {
            unreachable!()
        };
        let state = GroupState {
            id,
            name,
            admin,
            epoch,
            member: true,
            roster,
            key: Some(key),
        };
        let entry = roster_entry("bob", Some(bob_peer.clone())).unwrap();
        let lookup = |n: &str| Ok((n == "bob").then(|| bob_peer.clone()));
        let (request, stored) = rekey(
            &alice,
            state.clone(),
            GroupChange::Added(vec!["bob".into()]),
            |r| add_members(r, vec![entry.clone()]),
            lookup,
        )
        .unwrap();
        let Request::GroupRekey {
            update,
            keys,
            removed_notice,
        } = request
        else {
            unreachable!()
        };
        assert_eq!(update.epoch, 1);
        assert!(removed_notice.is_none());
        assert_eq!(keys.len(), 1);
        let Change::PutGroupEpoch { key, .. } = stored else {
            unreachable!()
        };
        let unwrapped = bob.unwrap_key(&keys[0].wrapped_key).unwrap();
        assert_eq!(unwrapped.as_bytes(), key.as_bytes());
        // Adding bob twice, kicking a stranger, or rekeying as a member: refused.
        let mut twice = update.roster.clone();
        assert!(matches!(
            add_members(&mut twice, vec![entry]),
            Err(ClientError::AlreadyMember(_))
        ));
        assert!(matches!(
            remove_member(&mut twice, "eve"),
            Err(ClientError::NotMember(_))
        ));
        let mut not_mine = state;
        not_mine.admin = "carol".into();
        let refused = rekey(
            &alice,
            not_mine,
            GroupChange::Removed("bob".into()),
            |r| remove_member(r, "bob"),
            lookup,
        );
        assert!(matches!(refused, Err(ClientError::NotAdmin { .. })));
    }
}
