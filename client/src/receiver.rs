//! Receiving: the node opens a delivery stream per batch; each envelope goes
//! to its room (friends, groups, texts, attachments) to be verified and
//! decrypted, the whole batch is applied to the keystore in one
//! transaction, and only then acknowledged. Ids already stored are skipped,
//! so a redelivery after a crash is never shown twice.

use std::sync::Arc;

use fastchat_crypto::sha256;
use fastchat_proto::envelope::{
    DeliveryAck, DeliveryRef, Envelope, Outgoing, TextRef, is_handed_off,
};
use fastchat_proto::error::close;
use fastchat_proto::frame::decode_borrowed;
use fastchat_proto::limits::{MAX_BATCH, MAX_CONTROL_FRAME, MAX_MESSAGE_FRAME};
use fastchat_proto::stream::StreamKind;
use fastchat_transport::quinn::{Connection, RecvStream, SendStream};
use fastchat_transport::{FrameReader, StreamError, read_frame, read_frames_to_end, write_frame};

use crate::core::Core;
use crate::error::ClientError;
use crate::keystore::Keystore;
use crate::room::{Change, Invalid, Me, Outcome};
use crate::transfer::DownloadRecord;
use crate::types::InboxItem;
use crate::{attachments, friends, groups, texts};

/// Takes delivery streams one after another, in the order the node opened
/// them (which is queue order), until the connection closes. The node keeps
/// several in flight, so the next batch arrives while this one is applied.
/// One frame buffer serves them all.
pub(crate) async fn run(core: Arc<Core>, conn: Connection) {
    let mut frames = FrameReader::new(MAX_MESSAGE_FRAME);
    while let Ok((send, recv)) = conn.accept_bi().await {
        if let Err(e) = serve(&core, &conn, send, recv, &mut frames).await {
            tracing::debug!(error = %e, "delivery stream failed; the node will redeliver");
        }
    }
}

async fn serve(
    core: &Arc<Core>,
    conn: &Connection,
    mut send: SendStream,
    mut recv: RecvStream,
    frames: &mut FrameReader,
) -> Result<(), StreamError> {
    let mut buf = Vec::new();
    let kind = read_frame::<StreamKind>(&mut recv, 64, &mut buf).await?;
    if kind != Some(StreamKind::Delivery) {
        let _ = send.reset(close::PROTOCOL.into());
        return Ok(());
    }
    read_frames_to_end(&mut recv, frames, MAX_BATCH).await?;
    let deliveries = frames
        .frames()
        .map(decode_borrowed::<DeliveryRef<'_>>)
        .collect::<Result<Vec<_>, _>>()?;
    let seqs: Vec<u64> = deliveries.iter().map(|d| d.seq).collect();
    let (fresh, downloads, handed_off) =
        process(core, &deliveries).map_err(StreamError::service)?;
    // Committed, not yet acknowledged: the node will deliver it again.
    crate::fault::crash_at(crate::fault::AFTER_KEYSTORE_COMMIT);
    write_frame(&mut send, &DeliveryAck { seqs }, MAX_CONTROL_FRAME).await?;
    let _ = send.finish();
    // A handed-off text's sender learns of its delivery from its own ack.
    let stored: Vec<&InboxItem> = fresh
        .iter()
        .filter(|i| handed_off.binary_search(&i.id).is_err())
        .collect();
    send_receipts(core, &stored);
    let _ = core.changes.send(());
    for item in fresh {
        core.events.send(item);
    }
    for rec in downloads {
        crate::download::spawn(core.clone(), conn.clone(), rec);
    }
    Ok(())
}

/// Tells each friend which of their texts we just stored (sent → delivered
/// on their side). Best effort: a lost receipt only leaves "sent" showing.
fn send_receipts(core: &Core, fresh: &[&InboxItem]) {
    match texts::receipts(fresh.iter().copied()) {
        Ok(receipts) => {
            for r in receipts {
                crate::sender::send_best_effort(core, Outgoing::Receipt(r));
            }
        }
        Err(e) => tracing::debug!(error = %e, "no receipts this time"),
    }
}

/// A batch taken in: the items new to the keystore, the downloads to
/// start, and the ids of texts that were handed off (no receipt for
/// them), sorted.
type Processed = (Vec<InboxItem>, Vec<DownloadRecord>, Vec<[u8; 16]>);

fn process(core: &Core, deliveries: &[DeliveryRef<'_>]) -> Result<Processed, ClientError> {
    // Decoded before the keystore is locked.
    let mut envelopes = Vec::with_capacity(deliveries.len());
    let mut handed_off = Vec::new();
    for d in deliveries {
        // Texts, the bulk, are read in place; the rest decoded whole.
        let decoded = match TextRef::parse(d.envelope) {
            Ok(Some(text)) => Ok(Incoming::Text(text)),
            Ok(None) => Envelope::decode_queued(d.envelope).map(Incoming::Other),
            Err(e) => Err(e),
        };
        match decoded {
            Ok(incoming) => {
                if let (true, Incoming::Text(text)) = (is_handed_off(d.seq), &incoming) {
                    handed_off.push(text.id.0);
                }
                // Texts and images carry their own ids; only events (friend
                // and group changes) are named by a hash of their envelope.
                let event_id = match &incoming {
                    Incoming::Text(_)
                    | Incoming::Other(
                        Envelope::Text { .. }
                        | Envelope::GroupText { .. }
                        | Envelope::Image { .. }
                        | Envelope::Delivered { .. },
                    ) => [0u8; 16],
                    Incoming::Other(_) => {
                        let h = sha256(d.envelope);
                        <[u8; 16]>::try_from(&h[..16]).expect("16 bytes")
                    }
                };
                envelopes.push((d.seq, incoming, event_id));
            }
            Err(e) => tracing::warn!(seq = d.seq, error = %e, "dropping an undecodable envelope"),
        }
    }
    // A key to unwrap costs milliseconds of RSA: let the runtime move this
    // worker's other tasks elsewhere meanwhile. Texts (AES, microseconds)
    // stay where they are; a hand-off per batch measured 10% of the ring.
    let unwraps = envelopes.iter().any(|(_, e, _)| {
        matches!(
            e,
            Incoming::Other(Envelope::FriendAccepted { .. } | Envelope::GroupKey { .. })
        )
    });
    let multi_thread = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    let (fresh, downloads) = if unwraps && multi_thread {
        tokio::task::block_in_place(|| apply(core, envelopes))?
    } else {
        apply(core, envelopes)?
    };
    handed_off.sort_unstable();
    Ok((fresh, downloads, handed_off))
}

/// A delivered envelope: a text read in place, or anything else decoded.
enum Incoming<'a> {
    Text(TextRef<'a>),
    Other(Envelope),
}

/// Takes a batch in, in one transaction: a key that arrives in the same
/// batch as the texts it opens is visible to them, and nothing is
/// half-applied on a crash.
fn apply(
    core: &Core,
    envelopes: Vec<(u64, Incoming<'_>, [u8; 16])>,
) -> Result<(Vec<InboxItem>, Vec<DownloadRecord>), ClientError> {
    core.keystore().transaction(|ks| {
        let mut items = Vec::with_capacity(envelopes.len());
        let mut downloads = Vec::new();
        let checked = group_signatures(ks, &envelopes)?;
        for ((seq, envelope, event_id), checked) in envelopes.into_iter().zip(checked) {
            let signature = if checked {
                texts::Signature::CheckedInBatch
            } else {
                texts::Signature::Unchecked
            };
            match take(&core.me, ks, envelope, event_id, signature)? {
                Ok(outcome) => {
                    if let Some(change) = outcome.change {
                        ks.apply(&change)?;
                        if let Change::AddDownload(rec) = change {
                            downloads.push(rec);
                        }
                    }
                    items.extend(outcome.item);
                }
                Err(why) => tracing::warn!(seq, %why, "ignoring an envelope"),
            }
        }
        Ok((ks.insert_inbox(items)?, downloads))
    })
}

/// For each envelope of a batch, whether it is a group text whose
/// signature was checked together with the others, against the epochs we
/// already hold. A batch that fails leaves each text to be checked alone
/// (and the bad one refused).
fn group_signatures(
    ks: &Keystore,
    envelopes: &[(u64, Incoming<'_>, [u8; 16])],
) -> Result<Vec<bool>, ClientError> {
    let mut checked = vec![false; envelopes.len()];
    let mut held = Vec::new();
    for (i, (_, incoming, _)) in envelopes.iter().enumerate() {
        if let Incoming::Other(
            envelope @ Envelope::GroupText {
                group_id, epoch, ..
            },
        ) = incoming
            && let Some(keys) = ks.group_epoch(*group_id, *epoch)?
        {
            held.push((i, keys, envelope));
        }
    }
    if held.len() < 2 {
        return Ok(checked);
    }
    let texts: Vec<_> = held
        .iter()
        .filter_map(|(_, keys, envelope)| Some((&**keys, group_text(envelope)?)))
        .collect();
    if texts::verify_group_batch(&texts) {
        for (i, _, _) in &held {
            checked[*i] = true;
        }
    }
    Ok(checked)
}

/// A group text's fields, as its room reads them.
fn group_text(envelope: &Envelope) -> Option<texts::GroupText<'_>> {
    match envelope {
        Envelope::GroupText {
            id,
            group_id,
            from,
            epoch,
            sealed,
            signature,
            proof,
        } => Some(texts::GroupText {
            id: *id,
            group_id: *group_id,
            from,
            epoch: *epoch,
            sealed,
            signature,
            proof,
        }),
        _ => None,
    }
}

/// Hands `envelope` to its room with what the keystore knows that the room
/// needs. The outer error is the keystore failing (nothing is
/// acknowledged); the inner one an envelope that failed a check.
fn take(
    me: &Me,
    ks: &Keystore,
    incoming: Incoming<'_>,
    event_id: [u8; 16],
    signature_check: texts::Signature,
) -> Result<Result<Outcome, Invalid>, ClientError> {
    let envelope = match incoming {
        Incoming::Text(text) => {
            let key = ks.friend_key(text.from)?;
            return Ok(texts::open_direct(me, key.as_deref(), &text));
        }
        Incoming::Other(envelope) => envelope,
    };
    Ok(match envelope {
        Envelope::Delivered { from, ids } => Ok(texts::on_delivered(from, ids)),
        // `TextRef::parse` reads texts in place; one decoded whole opens the same way.
        Envelope::Text { id, from, sealed } => {
            let key = ks.friend_key(&from)?;
            let text = TextRef {
                id,
                from: &from,
                nonce: sealed.nonce,
                ciphertext: &sealed.ciphertext,
            };
            texts::open_direct(me, key.as_deref(), &text)
        }
        Envelope::GroupText { .. } => match group_text(&envelope) {
            Some(text) => texts::open_group(
                ks.group_name(text.group_id)?.as_deref(),
                ks.group_epoch(text.group_id, text.epoch)?.as_deref(),
                &text,
                signature_check,
            ),
            None => unreachable!("a group text"),
        },
        Envelope::FriendRequest {
            from,
            public_key,
            signing_key,
            signature,
        } => friends::on_request(
            me,
            ks.peer(&from)?.as_ref(),
            &friends::Asking {
                from: &from,
                public_key: &public_key,
                signing_key,
                signature: &signature,
            },
            event_id,
        ),
        Envelope::FriendAccepted {
            from,
            wrapped_key,
            signing_key,
            signature,
        } => friends::on_accepted(
            me,
            ks.peer(&from)?,
            &friends::Accept {
                from: &from,
                wrapped_key: &wrapped_key,
                signing_key,
                signature: &signature,
            },
            event_id,
        ),
        Envelope::GroupKey {
            update,
            wrapped_key,
            signature,
        } => {
            let admin = ks.peer(&update.admin)?;
            let known = ks.group(update.group_id)?;
            groups::on_key(
                me,
                admin.as_ref(),
                known.as_ref(),
                update,
                &wrapped_key,
                &signature,
                event_id,
            )
        }
        Envelope::GroupRemoved { update, signature } => groups::on_removed(
            me,
            ks.peer(&update.admin)?.as_ref(),
            ks.group(update.group_id)?.as_ref(),
            &update,
            &signature,
            event_id,
        ),
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
                return Ok(Ok(Outcome::nothing()));
            }
            let with = match group {
                None => attachments::OpenWith::Friend(ks.friend_key(&from)?),
                Some((gid, epoch)) => attachments::OpenWith::Group {
                    group: ks.group_name(gid)?,
                    at_epoch: ks.group_epoch(gid, epoch)?,
                },
            };
            attachments::on_announced(
                me,
                with,
                &attachments::Announced {
                    id: id.0,
                    from: &from,
                    group,
                    header: &header,
                    nonce_prefix,
                    total_len,
                    signature: &signature,
                },
            )
        }
    })
}
