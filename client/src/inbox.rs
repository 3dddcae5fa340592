//! Receiving: the node opens a delivery stream per batch; each envelope is
//! verified and decrypted, the batch is committed to the keystore in one
//! transaction, and only then acknowledged. Ids already stored are skipped,
//! so a redelivery after a crash is never shown twice.

use std::collections::HashMap;
use std::sync::Arc;

use fastchat_crypto::{ConversationKey, PublicIdentity, sha256, transcript};
use fastchat_proto::envelope::{Delivery, DeliveryAck, Envelope, TextContent};
use fastchat_proto::limits::{MAX_CONTROL_FRAME, MAX_MESSAGE_FRAME};
use fastchat_proto::stream::StreamKind;
use fastchat_proto::{decode, error::close};
use fastchat_transport::quinn::{Connection, RecvStream, SendStream};
use fastchat_transport::{StreamError, read_frame, write_frame};

use crate::client::Core;
use crate::error::ClientError;
use crate::keystore::{InboxItem, InboxKind, Peer, PeerState};

/// Accepts delivery streams until the connection closes.
pub(crate) async fn run(core: Arc<Core>, conn: Connection) {
    while let Ok((send, recv)) = conn.accept_bi().await {
        let core = core.clone();
        tokio::spawn(async move {
            if let Err(e) = serve(&core, send, recv).await {
                tracing::debug!(error = %e, "delivery stream failed; the node will redeliver");
            }
        });
    }
}

async fn serve(core: &Core, mut send: SendStream, mut recv: RecvStream) -> Result<(), StreamError> {
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
    // One processor at a time keeps the peer overlay and keystore consistent
    // when two batches race (backlog and live).
    let _turn = core.inbox_turn.lock().await;
    let seqs: Vec<u64> = deliveries.iter().map(|d| d.seq).collect();
    let fresh = process(core, deliveries).map_err(|e| StreamError::Connection(e.to_string()))?;
    write_frame(&mut send, &DeliveryAck { seqs }, MAX_CONTROL_FRAME).await?;
    let _ = send.finish();
    for item in fresh {
        let _ = core.events.send(item);
    }
    Ok(())
}

/// Peers as changed by this batch so far, over what the keystore holds.
struct Overlay<'a> {
    core: &'a Core,
    changed: HashMap<String, Peer>,
}

impl Overlay<'_> {
    fn get(&self, name: &str) -> Result<Option<Peer>, ClientError> {
        if let Some(p) = self.changed.get(name) {
            return Ok(Some(p.clone()));
        }
        self.core.keystore.lock().expect("keystore lock").peer(name)
    }

    fn set(&mut self, peer: Peer) {
        self.changed.insert(peer.name.clone(), peer);
    }
}

fn process(core: &Core, deliveries: Vec<Delivery>) -> Result<Vec<InboxItem>, ClientError> {
    let mut overlay = Overlay {
        core,
        changed: HashMap::new(),
    };
    let mut items = Vec::with_capacity(deliveries.len());
    for d in deliveries {
        let envelope: Envelope = match decode(&d.envelope) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(seq = d.seq, error = %e, "dropping an undecodable envelope");
                continue;
            }
        };
        let event_id = || {
            let h = sha256(&d.envelope);
            <[u8; 16]>::try_from(&h[..16]).expect("16 bytes")
        };
        match handle(core, &mut overlay, envelope, event_id) {
            Ok(Some(item)) => items.push(item),
            Ok(None) => {}
            Err(why) => tracing::warn!(seq = d.seq, %why, "ignoring an envelope"),
        }
    }
    let peers: Vec<Peer> = overlay.changed.into_values().collect();
    core.keystore
        .lock()
        .expect("keystore lock")
        .commit_delivery(&peers, items)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn handle(
    core: &Core,
    overlay: &mut Overlay<'_>,
    envelope: Envelope,
    event_id: impl Fn() -> [u8; 16],
) -> Result<Option<InboxItem>, String> {
    let me = core.name.as_str();
    let my_key = core.identity.public().der();
    match envelope {
        Envelope::Text { id, from, sealed } => {
            let peer = overlay.get(&from).map_err(|e| e.to_string())?;
            let key: ConversationKey = match peer.and_then(|p| p.key) {
                Some(k) => k,
                None => return Err(format!("a text from {from}, who is not a friend")),
            };
            let plain = key
                .open(&transcript::text_aad(&from, me, &id.0, 0), &sealed)
                .map_err(|_| format!("a text from {from} failed authentication"))?;
            let content: TextContent =
                decode(&plain).map_err(|_| format!("a text from {from} is malformed"))?;
            Ok(Some(InboxItem {
                id: id.0,
                from,
                kind: InboxKind::Text,
                text: content.text,
                sent_at_ms: content.sent_at_ms,
            }))
        }
        Envelope::FriendRequest {
            from,
            public_key,
            signature,
        } => {
            let key = PublicIdentity::from_der(&public_key)
                .map_err(|_| format!("a friend request from {from} carries a bad key"))?;
            key.verify(
                &transcript::friend_request(&from, me, &public_key, my_key),
                &signature,
            )
            .map_err(|_| format!("a friend request from {from} is not signed by its sender"))?;
            let existing = overlay.get(&from).map_err(|e| e.to_string())?;
            if existing
                .as_ref()
                .is_some_and(|p| p.state == PeerState::Friend)
            {
                return Ok(None);
            }
            overlay.set(Peer {
                name: from.clone(),
                public_key,
                state: PeerState::Incoming,
                key: None,
            });
            Ok(Some(InboxItem {
                id: event_id(),
                from,
                kind: InboxKind::FriendRequest,
                text: String::new(),
                sent_at_ms: now_ms(),
            }))
        }
        Envelope::FriendAccepted {
            from,
            wrapped_key,
            signature,
        } => {
            let Some(mut peer) = overlay.get(&from).map_err(|e| e.to_string())? else {
                return Err(format!("a key from {from}, whom we never asked"));
            };
            if peer.state == PeerState::Friend {
                return Ok(None);
            }
            let their_key = PublicIdentity::from_der(&peer.public_key)
                .map_err(|_| format!("the stored key of {from} is corrupt"))?;
            // Verify before decrypting: RSA decryption is not constant-time
            // (RUSTSEC-2023-0071), so only authenticated ciphertexts reach it.
            their_key
                .verify(
                    &transcript::friend_accept(&from, me, &wrapped_key, my_key),
                    &signature,
                )
                .map_err(|_| format!("a key from {from} is not signed by {from}"))?;
            let conv = core
                .identity
                .unwrap_key(&wrapped_key)
                .map_err(|_| format!("the key from {from} could not be unwrapped"))?;
            peer.state = PeerState::Friend;
            peer.key = Some(conv);
            overlay.set(peer);
            Ok(Some(InboxItem {
                id: event_id(),
                from,
                kind: InboxKind::FriendAccepted,
                text: String::new(),
                sent_at_ms: now_ms(),
            }))
        }
    }
}
