//! Sending texts: whatever is queued when a stream opens goes on that one
//! short stream (one message when idle, hundreds under load), and each
//! message still gets its own ack. A stream per message would cost ~17×
//! more CPU (NOTES-deps.md); one stream for everything would let one lost
//! packet stall every message behind it.

use std::sync::Arc;

use fastchat_proto::envelope::{Accepted, Outgoing, SendAck};
use fastchat_proto::limits::{MAX_BATCH, MAX_BATCH_BYTES, MAX_MESSAGE_FRAME};
use fastchat_proto::stream::StreamKind;
use fastchat_proto::{MessageId, ProtoError, decode};
use fastchat_transport::quinn::Connection;
use fastchat_transport::{FrameReader, write_headed_frames};
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::{mpsc, oneshot};

use crate::core::{Core, Pending};
use crate::error::ClientError;
use crate::keystore::SentRecord;
use crate::texts::{self, History};
use crate::types::MessageState;

/// Starts the sender task, fed by `rx`.
pub(crate) fn start(core: Arc<Core>, rx: mpsc::UnboundedReceiver<Pending>) {
    tokio::spawn(run(core, rx));
}

/// Hands a message to the sender task and waits for the node's answer.
pub(crate) async fn submit(
    core: &Core,
    message: Outgoing,
    history: Option<History>,
) -> Result<(), ClientError> {
    let (done, rx) = oneshot::channel();
    core.outbox
        .send(Pending {
            message,
            history,
            done,
        })
        .map_err(|_| ClientError::Disconnected)?;
    rx.await.map_err(|_| ClientError::Disconnected)?
}

/// Queues a message nobody waits for (a receipt): a lost one costs nothing.
pub(crate) fn send_best_effort(core: &Core, message: Outgoing) {
    let (done, _) = oneshot::channel();
    let _ = core.outbox.send(Pending {
        message,
        history: None,
        done,
    });
}

/// Text streams a connection keeps in flight at once. Whatever is queued
/// while they are busy goes on the next one, so batches grow with load.
/// Two, not four: with 64 texts unacknowledged a batch carries about 32
/// instead of 16, so the node handles half the streams (its instructions
/// per relayed text −5%) and a group member checks one batch signature
/// per 32 texts; one stream still fills while the other is answered.
const IN_FLIGHT: usize = 2;

async fn run(core: Arc<Core>, mut rx: mpsc::UnboundedReceiver<Pending>) {
    let mut flights = FuturesUnordered::new();
    // A message that did not fit the last batch: it opens the next one.
    let mut held: Option<Pending> = None;
    loop {
        // The task holds the core, and the core the queue's sender, so the
        // queue never closes by itself: stop when the client does.
        tokio::select! {
            _ = flights.next(), if !flights.is_empty() => {}
            first = next(&mut rx, &mut held), if flights.len() < IN_FLIGHT => {
                let Some(first) = first else { break };
                // A batch closes at MAX_BATCH messages or MAX_BATCH_BYTES,
                // which the node enforces; what does not fit rides the next.
                let mut bytes = first.message.wire_size_bound();
                let mut batch = vec![first];
                while batch.len() < MAX_BATCH {
                    let Ok(o) = rx.try_recv() else { break };
                    let size = o.message.wire_size_bound();
                    if bytes + size > MAX_BATCH_BYTES {
                        held = Some(o);
                        break;
                    }
                    bytes += size;
                    batch.push(o);
                }
                sign_group_texts(&core, &mut batch);
                flights.push(send_batch(core.clone(), batch));
            }
            _ = core.closed() => break,
        }
    }
}

/// Signs the batch's group texts, one signature per group (see
/// [`texts::sign_group_batch`]); a text sent again keeps its signature.
fn sign_group_texts(core: &Core, batch: &mut [Pending]) {
    let group_texts = batch.iter_mut().filter_map(|p| match &mut p.message {
        Outgoing::Group(t) => Some(t),
        _ => None,
    });
    texts::sign_group_batch(&core.me, group_texts);
}

async fn next(
    rx: &mut mpsc::UnboundedReceiver<Pending>,
    held: &mut Option<Pending>,
) -> Option<Pending> {
    match held.take() {
        Some(p) => Some(p),
        None => rx.recv().await,
    }
}

/// The node's answers by message id. Our own ids: hashed with foldhash,
/// where SipHash cost ~900 instructions per text over four look-ups.
type Acks = foldhash::HashMap<MessageId, Result<Accepted, ProtoError>>;

/// Sends a batch and settles each message with the node's answer. What
/// the node did not answer (its connection died) goes again, with the same
/// ids, once the client has failed over: the node stores a message once per
/// id, so a message it stored before dying is not stored twice.
async fn send_batch(core: Arc<Core>, mut batch: Vec<Pending>) {
    loop {
        let seen = core.generation();
        let conn = core.conn();
        let acks: Acks = exchange(&conn, &batch)
            .await
            .into_iter()
            .map(|a| (a.id, a.result))
            .collect();
        let (answered, unanswered): (Vec<Pending>, Vec<Pending>) = batch
            .into_iter()
            .partition(|o| acks.contains_key(&o.message.id()));
        settle(&core, answered, acks);
        if unanswered.is_empty() {
            return;
        }
        let relinked = if conn.close_reason().is_some() {
            core.wait_relink(seen).await
        } else {
            // The stream failed on a live connection (reset): try again shortly.
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            true
        };
        if !relinked {
            for o in unanswered {
                let _ = o.done.send(Err(ClientError::Disconnected));
            }
            return;
        }
        batch = unanswered;
    }
}

/// Records what the node accepted in the history (one transaction) and
/// tells each sender its message's fate.
fn settle(core: &Core, batch: Vec<Pending>, mut acks: Acks) {
    let rows: Vec<SentRecord<'_>> = batch
        .iter()
        .filter_map(|o| {
            let (h, accepted) = (
                o.history.as_ref()?,
                acks.get(&o.message.id())?.as_ref().ok()?,
            );
            Some((&o.message, h, accepted))
        })
        .map(|(message, h, accepted)| SentRecord {
            id: message.id().0,
            to: &h.peer,
            group: h.group.as_deref(),
            text: &h.text,
            sent_at_ms: h.sent_at_ms,
            // Handed off: the recipient holds it already, and no receipt will come.
            state: match accepted {
                Accepted::Stored => MessageState::Sent,
                Accepted::Delivered => MessageState::Delivered,
            },
        })
        .collect();
    let recorded = core.keystore().transaction(|ks| ks.record_sent(&rows));
    if let Err(e) = recorded {
        tracing::warn!(error = %e, "cannot record sent messages in the history");
    }
    for o in batch {
        let result = match acks.remove(&o.message.id()) {
            Some(Ok(_)) => Ok(()),
            Some(Err(e)) => Err(ClientError::Refused(e)),
            None => Err(ClientError::Disconnected),
        };
        let _ = o.done.send(result);
    }
}

/// Sends `batch` on a fresh stream and returns the acks that came back
/// (fewer than sent if the stream or connection failed).
async fn exchange(conn: &Connection, batch: &[Pending]) -> Vec<SendAck> {
    let mut acks = Vec::with_capacity(batch.len());
    let Ok((mut send, mut recv)) = conn.open_bi().await else {
        return acks;
    };
    let size = batch.iter().map(|o| o.message.wire_size_bound()).sum();
    if write_headed_frames(
        &mut send,
        &StreamKind::Text,
        batch.iter().map(|o| &o.message),
        MAX_MESSAGE_FRAME,
        size,
    )
    .await
    .is_err()
        || send.finish().is_err()
    {
        return acks;
    }
    // Acks come as the node settles them; those read before a failure
    // still count.
    let mut frames = FrameReader::new(MAX_MESSAGE_FRAME);
    while let Ok(Some(_)) = frames.fill(&mut recv, None).await {
        if frames.len() > batch.len() {
            break;
        }
    }
    acks.extend(frames.frames().map_while(|f| decode::<SendAck>(f).ok()));
    acks
}
