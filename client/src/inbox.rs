//! Receiving: the node opens a delivery stream per batch; each envelope is
//! verified and decrypted, the whole batch is applied to the keystore in one
//! transaction, and only then acknowledged. Ids already stored are skipped,
//! so a redelivery after a crash is never shown twice.

use std::sync::Arc;

use fastchat_crypto::{PublicIdentity, sha256, signing, transcript};
use fastchat_proto::envelope::{Delivery, DeliveryAck, Envelope, TextContent};
use fastchat_proto::group::{GroupChange, GroupUpdate};
use fastchat_proto::limits::{MAX_CONTROL_FRAME, MAX_MESSAGE_FRAME};
use fastchat_proto::stream::StreamKind;
use fastchat_proto::{MessageId, decode, envelope::Sealed, error::close};
use fastchat_transport::quinn::{Connection, RecvStream, SendStream};
use fastchat_transport::{StreamError, read_frame, write_frame};

use crate::client::Core;
use crate::error::ClientError;
use crate::keystore::{InboxItem, InboxKind, Keystore, Peer, PeerState, Transfers};
use crate::transfer::DownloadRecord;
use fastchat_crypto::chunked::ChunkCipher;
use fastchat_proto::image::ImageHeader;
use fastchat_proto::limits::image_ciphertext_len;

/// Takes delivery streams one after another, in the order the node opened
/// them (which is queue order), until the connection closes. The node keeps
/// several in flight, so the next batch arrives while this one is applied.
pub(crate) async fn run(core: Arc<Core>, conn: Connection) {
    while let Ok((send, recv)) = conn.accept_bi().await {
        if let Err(e) = serve(&core, &conn, send, recv).await {
            tracing::debug!(error = %e, "delivery stream failed; the node will redeliver");
        }
    }
}

async fn serve(
    core: &Arc<Core>,
    conn: &Connection,
    mut send: SendStream,
    mut recv: RecvStream,
) -> Result<(), StreamError> {
    let mut buf = Vec::new();
    let kind = read_frame::<StreamKind>(&mut recv, 64, &mut buf).await?;
    if kind != Some(StreamKind::Delivery) {
        let _ = send.reset(close::PROTOCOL.into());
        return Ok(());
    }
    let mut deliveries = Vec::new();
    while let Some(d) = read_frame::<Delivery>(&mut recv, MAX_MESSAGE_FRAME, &mut buf).await? {
        deliveries.push(d);
    }
    let seqs: Vec<u64> = deliveries.iter().map(|d| d.seq).collect();
    let (fresh, downloads) =
        process(core, deliveries).map_err(|e| StreamError::Connection(e.to_string()))?;
    // Committed, not yet acknowledged: the node will deliver it again.
    crate::fault::crash_at(crate::fault::AFTER_KEYSTORE_COMMIT);
    write_frame(&mut send, &DeliveryAck { seqs }, MAX_CONTROL_FRAME).await?;
    let _ = send.finish();
    send_receipts(core, &fresh);
    let _ = core.changes.send(());
    for item in fresh {
        let _ = core.events.send(item);
    }
    for rec in downloads {
        crate::download::spawn(core.clone(), conn.clone(), rec);
    }
    Ok(())
}

/// Tells each friend which of their texts we just stored (sent → delivered
/// on their side). Best effort: a lost receipt only leaves "sent" showing.
fn send_receipts(core: &Core, fresh: &[InboxItem]) {
    let mut by_sender: Vec<(String, Vec<MessageId>)> = Vec::new();
    for item in fresh
        .iter()
        .filter(|i| i.kind == InboxKind::Text && i.group.is_none())
    {
        match by_sender.iter_mut().find(|(s, _)| *s == item.from) {
            Some((_, ids)) => ids.push(MessageId(item.id)),
            None => by_sender.push((item.from.clone(), vec![MessageId(item.id)])),
        }
    }
    for (to, ids) in by_sender {
        let Ok(id) = crate::ids::new_message_id() else {
            continue;
        };
        let receipt = fastchat_proto::envelope::Receipt { id, to, ids };
        let (done, _) = tokio::sync::oneshot::channel();
        let _ = core.outbox.send(crate::outbox::Pending {
            message: fastchat_proto::envelope::Outgoing::Receipt(receipt),
            history: None,
            done,
        });
    }
}

type Processed = (Vec<InboxItem>, Vec<DownloadRecord>);

fn process(core: &Core, deliveries: Vec<Delivery>) -> Result<Processed, ClientError> {
    let ks = core.keystore.lock().expect("keystore lock");
    // One transaction: a key that arrives in the same batch as the texts it
    // opens is visible to them, and nothing is half-applied on a crash.
    ks.begin()?;
    let mut downloads = Vec::new();
    let result = (|| {
        let mut items = Vec::with_capacity(deliveries.len());
        for d in deliveries {
            let envelope: Envelope = match decode(&d.envelope) {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(seq = d.seq, error = %e, "dropping an undecodable envelope");
                    continue;
                }
            };
            // Texts and images carry their own ids; only events (friend
            // and group changes) are named by a hash of their envelope.
            let event_id = match &envelope {
                Envelope::Text { .. }
                | Envelope::GroupText { .. }
                | Envelope::Image { .. }
                | Envelope::Delivered { .. } => [0u8; 16],
                _ => {
                    let h = sha256(&d.envelope);
                    <[u8; 16]>::try_from(&h[..16]).expect("16 bytes")
                }
            };
            match handle(
                &core.name,
                &core.identity,
                &ks,
                envelope,
                event_id,
                &mut downloads,
            ) {
                Ok(Some(item)) => items.push(item),
                Ok(None) => {}
                Err(Rejected::Keystore(e)) => return Err(e),
                Err(Rejected::Invalid(why)) => {
                    tracing::warn!(seq = d.seq, %why, "ignoring an envelope")
                }
            }
        }
        ks.insert_inbox(items)
    })();
    match result {
        Ok(fresh) => {
            ks.commit()?;
            Ok((fresh, downloads))
        }
        Err(e) => {
            ks.rollback();
            Err(e)
        }
    }
}

/// Why an envelope was not taken in.
enum Rejected {
    /// It failed a check; it is acknowledged and dropped.
    Invalid(String),
    /// The keystore failed; nothing is acknowledged.
    Keystore(ClientError),
}

impl From<ClientError> for Rejected {
    fn from(e: ClientError) -> Self {
        Rejected::Keystore(e)
    }
}

fn invalid(why: impl Into<String>) -> Rejected {
    Rejected::Invalid(why.into())
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn event(id: [u8; 16], from: &str, kind: InboxKind) -> InboxItem {
    InboxItem {
        id,
        from: from.to_string(),
        kind,
        group: None,
        member: None,
        attachment: None,
        text: String::new(),
        sent_at_ms: now_ms(),
    }
}

fn handle(
    me: &str,
    identity: &fastchat_crypto::Identity,
    ks: &Keystore,
    envelope: Envelope,
    event_id: [u8; 16],
    downloads: &mut Vec<DownloadRecord>,
) -> Result<Option<InboxItem>, Rejected> {
    let my_key = identity.public().der();
    match envelope {
        Envelope::Delivered { from, ids } => {
            let ids: Vec<[u8; 16]> = ids.into_iter().map(|i| i.0).collect();
            ks.mark_delivered(&from, &ids)?;
            Ok(None)
        }
        Envelope::Text { id, from, sealed } => {
            let key = match ks.friend_key(&from)? {
                Some(k) => k,
                None => return Err(invalid(format!("a text from {from}, who is not a friend"))),
            };
            let plain = key
                .open(&transcript::text_aad(&from, me, &id.0, 0), &sealed)
                .map_err(|_| invalid(format!("a text from {from} failed authentication")))?;
            text_item(id, &from, None, &plain)
        }
        Envelope::FriendRequest {
            from,
            public_key,
            signing_key,
            signature,
        } => {
            let key = PublicIdentity::from_der(&public_key)
                .map_err(|_| invalid(format!("a friend request from {from} carries a bad key")))?;
            key.verify(
                &transcript::friend_request(&from, me, &public_key, my_key, &signing_key),
                &signature,
            )
            .map_err(|_| {
                invalid(format!(
                    "a friend request from {from} is not signed by its sender"
                ))
            })?;
            if ks
                .peer(&from)?
                .is_some_and(|p| p.state == PeerState::Friend)
            {
                return Ok(None);
            }
            ks.put_peer(&Peer {
                name: from.clone(),
                public_key,
                signing_key: Some(signing_key),
                state: PeerState::Incoming,
                key: None,
            })?;
            Ok(Some(event(event_id, &from, InboxKind::FriendRequest)))
        }
        Envelope::FriendAccepted {
            from,
            wrapped_key,
            signing_key,
            signature,
        } => {
            let Some(mut peer) = ks.peer(&from)? else {
                return Err(invalid(format!("a key from {from}, whom we never asked")));
            };
            if peer.state == PeerState::Friend {
                return Ok(None);
            }
            let their_key = PublicIdentity::from_der(&peer.public_key)
                .map_err(|_| invalid(format!("the stored key of {from} is corrupt")))?;
            // Verify before decrypting: RSA decryption is not constant-time
            // (RUSTSEC-2023-0071), so only authenticated ciphertexts reach it.
            their_key
                .verify(
                    &transcript::friend_accept(&from, me, &wrapped_key, my_key, &signing_key),
                    &signature,
                )
                .map_err(|_| invalid(format!("a key from {from} is not signed by {from}")))?;
            let conv = identity
                .unwrap_key(&wrapped_key)
                .map_err(|_| invalid(format!("the key from {from} could not be unwrapped")))?;
            peer.state = PeerState::Friend;
            peer.key = Some(conv);
            peer.signing_key = Some(signing_key);
            ks.put_peer(&peer)?;
            Ok(Some(event(event_id, &from, InboxKind::FriendAccepted)))
        }
        Envelope::GroupKey {
            update,
            wrapped_key,
            signature,
        } => {
            let bytes = update.signed_bytes();
            check_admin_signature(
                ks,
                &update,
                &transcript::group_key(&bytes, me, &wrapped_key),
                &signature,
            )?;
            if !update.roster.iter().any(|r| r.name == me) {
                return Err(invalid("a group key whose roster leaves us out"));
            }
            if !check_epoch(ks, &update)? {
                return Ok(None);
            }
            // Only now, with the admin's signature verified, touch RSA decryption.
            let key = identity
                .unwrap_key(&wrapped_key)
                .map_err(|_| invalid("a group key could not be unwrapped"))?;
            ks.put_group_epoch(
                update.group_id,
                &update.group,
                &update.admin,
                update.epoch,
                &key,
                &update.roster,
            )?;
            let (kind, member) = match &update.change {
                GroupChange::Added(m) => (InboxKind::MemberAdded, m.join(", ")),
                GroupChange::Removed(m) => (InboxKind::MemberRemoved, m.clone()),
            };
            let mut item = event(event_id, &update.admin, kind);
            item.group = Some(update.group.clone());
            item.member = Some(member);
            Ok(Some(item))
        }
        Envelope::GroupRemoved { update, signature } => {
            let bytes = update.signed_bytes();
            check_admin_signature(ks, &update, &transcript::group_removed(&bytes), &signature)?;
            if update.change != GroupChange::Removed(me.to_string()) {
                return Err(invalid("a removal notice for someone else"));
            }
            if !check_epoch(ks, &update)? {
                return Ok(None);
            }
            ks.leave_group(update.group_id, update.epoch)?;
            let mut item = event(event_id, &update.admin, InboxKind::YouWereRemoved);
            item.group = Some(update.group.clone());
            item.member = Some(me.to_string());
            Ok(Some(item))
        }
        Envelope::Image {
            id,
            from,
            group,
            header,
            nonce_prefix,
            total_len,
            signature,
        } => {
            if ks.has_download(&from, &id.0)? {
                return Ok(None);
            }
            let (key, aad, group_name) = match group {
                None => {
                    let key = ks.peer(&from)?.and_then(|p| p.key).ok_or_else(|| {
                        invalid(format!("an image from {from}, who is not a friend"))
                    })?;
                    (key, transcript::image_aad(&from, me, &id.0, 0), None)
                }
                Some((gid, epoch)) => {
                    let g = ks
                        .group(gid)?
                        .ok_or_else(|| invalid("an image for a group we do not know"))?;
                    let (key, roster) = ks.group_epoch(gid, epoch)?.ok_or_else(|| {
                        invalid(format!("an image in {} under an epoch we lack", g.name))
                    })?;
                    let sender = roster.iter().find(|r| r.name == from).ok_or_else(|| {
                        invalid(format!(
                            "an image from {from}, not a member at epoch {epoch}"
                        ))
                    })?;
                    signing::verify(
                        &sender.signing_key,
                        &transcript::group_image_signature(
                            gid,
                            epoch,
                            &from,
                            &id.0,
                            &nonce_prefix,
                            &header,
                            total_len,
                        ),
                        &signature,
                    )
                    .map_err(|_| invalid(format!("an image in {} not signed by {from}", g.name)))?;
                    let aad = transcript::image_aad(&from, &format!("group:{gid}"), &id.0, epoch);
                    (key, aad, Some(g.name))
                }
            };
            let rec_cipher = ChunkCipher::new(&key, nonce_prefix, aad.clone());
            let plain = rec_cipher.open_header(&header).map_err(|_| {
                invalid(format!("an image header from {from} failed authentication"))
            })?;
            let header: ImageHeader = decode(&plain)
                .map_err(|_| invalid(format!("an image header from {from} is malformed")))?;
            if image_ciphertext_len(header.size) != total_len {
                return Err(invalid(format!(
                    "an image from {from} has an inconsistent length"
                )));
            }
            let rec = DownloadRecord {
                id: id.0,
                from: from.clone(),
                group: group_name,
                header,
                key: *key.as_bytes(),
                aad,
                nonce_prefix,
                total_len,
            };
            let record = fastchat_proto::frame::encode_body(&rec)
                .map_err(|e| Rejected::Keystore(ClientError::Keystore(e.to_string())))?;
            ks.put_transfer(Transfers::Downloads, &from, &id.0, &record, "pending")?;
            downloads.push(rec);
            Ok(None)
        }
        Envelope::GroupText {
            id,
            group_id,
            from,
            epoch,
            sealed,
            signature,
        } => {
            let group = ks
                .group(group_id)?
                .ok_or_else(|| invalid("a text for a group we do not know"))?;
            let plain = open_group_text(ks, group_id, epoch, &from, id, &sealed, &signature)
                .map_err(|why| invalid(format!("a text in {}: {why}", group.name)))?;
            text_item(id, &from, Some(group.name), &plain)
        }
    }
}

fn text_item(
    id: MessageId,
    from: &str,
    group: Option<String>,
    plain: &[u8],
) -> Result<Option<InboxItem>, Rejected> {
    let content: TextContent =
        decode(plain).map_err(|_| invalid(format!("a text from {from} is malformed")))?;
    Ok(Some(InboxItem {
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

/// Checks that `update` is signed by its admin, who must be our friend (so
/// their signing key was certified to us by their RSA identity), and that it
/// does not change who the admin of a known group is.
fn check_admin_signature(
    ks: &Keystore,
    update: &GroupUpdate,
    message: &[u8],
    signature: &[u8],
) -> Result<(), Rejected> {
    let admin_key = ks
        .peer(&update.admin)?
        .filter(|p| p.state == PeerState::Friend)
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
    if let Some(known) = ks.group(update.group_id)?
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
fn check_epoch(ks: &Keystore, update: &GroupUpdate) -> Result<bool, Rejected> {
    match ks.group(update.group_id)? {
        Some(g) if update.epoch < g.epoch => Err(invalid(format!(
            "a replayed key for {} (epoch {} < {})",
            g.name, update.epoch, g.epoch
        ))),
        Some(g) if update.epoch == g.epoch => Ok(false),
        _ => Ok(true),
    }
}

/// Verifies and decrypts a group text: the sender must be in the roster of
/// the epoch it claims, and its signature must verify with that roster's key.
pub(crate) fn open_group_text(
    ks: &Keystore,
    group_id: u64,
    epoch: u64,
    from: &str,
    id: MessageId,
    sealed: &Sealed,
    signature: &[u8],
) -> Result<Vec<u8>, String> {
    let (key, roster) = ks
        .group_epoch(group_id, epoch)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("we hold no key for epoch {epoch}"))?;
    let sender = roster
        .iter()
        .find(|r| r.name == from)
        .ok_or_else(|| format!("{from} was not a member at epoch {epoch}"))?;
    signing::verify(
        &sender.signing_key,
        &transcript::group_text_signature(
            group_id,
            epoch,
            from,
            &id.0,
            &sealed.nonce,
            &sealed.ciphertext,
        ),
        signature,
    )
    .map_err(|_| format!("the signature is not {from}'s"))?;
    key.open(
        &transcript::group_text_aad(group_id, epoch, from, &id.0),
        sealed,
    )
    .map_err(|_| "it failed authentication".to_string())
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use fastchat_crypto::{ConversationKey, Identity, SigningIdentity};
    use fastchat_proto::group::{GroupChange, GroupUpdate, RosterEntry};
    use fastchat_proto::{MessageId, frame::encode_body};

    use super::*;
    use crate::keystore::Profile;

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

    /// Bob's side: his identities and keystore, with alice (the admin) as a verified friend.
    struct Bob {
        identity: Identity,
        signing: SigningIdentity,
        keystore: Mutex<Keystore>,
    }

    fn bob_core(dir: &std::path::Path, alice: &Member) -> Bob {
        let identity = Identity::generate().unwrap();
        let signing = SigningIdentity::generate().unwrap();
        let profile = Profile {
            name: "bob".into(),
            server: "127.0.0.1:1".into(),
            ca_pem: vec![],
        };
        let ks = Keystore::create(&dir.join("ks.db"), &profile, &identity, &signing, None).unwrap();
        let alice_rsa = Identity::generate().unwrap();
        ks.put_peer(&Peer {
            name: "alice".into(),
            public_key: alice_rsa.public().der().to_vec(),
            signing_key: Some(alice.signing.public()),
            state: PeerState::Friend,
            key: Some(ConversationKey::generate().unwrap()),
        })
        .unwrap();
        Bob {
            identity,
            signing,
            keystore: Mutex::new(ks),
        }
    }

    fn key_envelope(
        core: &Bob,
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
        let wrapped_key = core.identity.public().wrap_key(key).unwrap();
        let signature = signer.signing.sign(&transcript::group_key(
            &update.signed_bytes(),
            "bob",
            &wrapped_key,
        ));
        Envelope::GroupKey {
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
        let signature = from.signing.sign(&transcript::group_text_signature(
            7,
            epoch,
            claimed,
            &id.0,
            &sealed.nonce,
            &sealed.ciphertext,
        ));
        Envelope::GroupText {
            id,
            group_id: 7,
            from: claimed.into(),
            epoch,
            sealed,
            signature,
        }
    }

    fn apply(core: &Bob, envelope: Envelope) -> Result<Option<InboxItem>, String> {
        let ks = core.keystore.lock().unwrap();
        let digest = sha256(&encode_body(&envelope).unwrap());
        let id: [u8; 16] = digest[..16].try_into().unwrap();
        handle("bob", &core.identity, &ks, envelope, id, &mut Vec::new()).map_err(|e| match e {
            Rejected::Invalid(why) => why,
            Rejected::Keystore(e) => panic!("keystore: {e}"),
        })
    }

    #[test]
    fn group_keys_texts_and_removal_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let (alice, carol, bob_m) = (member("alice"), member("carol"), member("bob"));
        let core = bob_core(dir.path(), &alice);
        // Bob's roster entry must carry bob's real signing key.
        let bob = Member {
            name: "bob",
            signing: SigningIdentity::from_seed(&core.signing.seed()[..]).unwrap(),
        };
        drop(bob_m);
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
            apply(&core, forged)
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
        let item = apply(&core, good.clone()).unwrap().unwrap();
        assert_eq!(item.kind, InboxKind::MemberAdded);
        assert_eq!(item.group.as_deref(), Some("team"));
        // Redelivery is a no-op, not an error.
        assert_eq!(apply(&core, good.clone()).unwrap(), None);

        // Texts: carol's own message verifies; carol posing as alice does not.
        let ok = apply(&core, group_text(&carol, "carol", 1, &k1, 1))
            .unwrap()
            .unwrap();
        assert_eq!((ok.from.as_str(), ok.text.as_str()), ("carol", "message 1"));
        let posing = apply(&core, group_text(&carol, "alice", 1, &k1, 2)).unwrap_err();
        assert!(posing.contains("signature is not alice's"), "{posing}");
        let eve = member("eve");
        let stranger = apply(&core, group_text(&eve, "eve", 1, &k1, 3)).unwrap_err();
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
            apply(&core, kick).unwrap().unwrap().kind,
            InboxKind::MemberRemoved
        );
        // A replay of the old epoch-1 key is refused.
        assert!(apply(&core, good).unwrap_err().contains("replayed"));
        // Carol's posts at the new epoch are ignored even with a valid signature.
        let late = apply(&core, group_text(&carol, "carol", 2, &k2, 4)).unwrap_err();
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
        let removed = apply(&core, Envelope::GroupRemoved { update, signature })
            .unwrap()
            .unwrap();
        assert_eq!(removed.kind, InboxKind::YouWereRemoved);
        let after = group_text(&alice, "alice", 3, &k3, 5);
        assert!(
            apply(&core, after.clone())
                .unwrap_err()
                .contains("no key for epoch 3")
        );
        let Envelope::GroupText { sealed, id, .. } = after else {
            unreachable!()
        };
        for old in [&k1, &k2] {
            assert!(
                old.open(&transcript::group_text_aad(7, 3, "alice", &id.0), &sealed)
                    .is_err()
            );
        }
        let ks = core.keystore.lock().unwrap();
        assert!(!ks.group(7).unwrap().unwrap().member);
    }
}
