//! A text stream: a batch of encrypted messages from the logged-in user, to
//! friends or to groups. Texts for friends online on this node are handed
//! to their sessions (`crate::handoff`); the rest, and what a session did
//! not acknowledge in time, are stored in one transaction and pushed to
//! online recipients. Each message gets its own ack (or refusal) on the
//! same stream, once it is durable.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use fastchat_proto::control::Relation;
use fastchat_proto::envelope::{Accepted, DirectTextFrame, Envelope, Outgoing, SendAck};
use fastchat_proto::frame::encode_body;
use fastchat_proto::limits::{MAX_BATCH, MAX_BATCH_BYTES, MAX_MESSAGE_FRAME, MAX_TEXT_BYTES};
use fastchat_proto::{ErrorCode, FrameError, MessageId, ProtoError, decode};
use fastchat_transport::quinn::{RecvStream, SendStream};
use fastchat_transport::{StreamError, write_frames};
use futures::future::BoxFuture;
use tokio::sync::{Semaphore, SemaphorePermit};

use crate::handoff::HANDOFF_WAIT;
use crate::shared::{Live, Shared};
use crate::store::{Queuing, Target, TextToQueue};

/// AEAD tag plus the plaintext's own framing.
const SEAL_OVERHEAD: usize = 256;
/// An accepting ack's frame, in bytes, about (a refusal's sentence is more).
const ACK_SIZE: usize = 24;

/// What an admitted message becomes.
enum Admitted {
    /// A text, queued durably.
    Queue(TextToQueue),
    /// A receipt: a best-effort mark for the friend's online sessions, never
    /// a queue entry (a lost one only leaves "sent" showing).
    Live { to: String, envelope: Arc<Vec<u8>> },
}

/// Reads one message from its frame: its id, and what it becomes or why
/// it is refused. A frame that is not a message fails the stream.
fn admit(
    user: &str,
    frame: &[u8],
) -> Result<(MessageId, Result<Admitted, ProtoError>), FrameError> {
    if let Some(text) = DirectTextFrame::parse(frame)? {
        return Ok((text.id, admit_direct(user, &text)));
    }
    let message: Outgoing = decode(frame)?;
    Ok((message.id(), admit_decoded(user, message)))
}

/// A direct text, the bulk of the traffic: checked and re-addressed in
/// place (`DirectTextFrame`).
fn admit_direct(user: &str, text: &DirectTextFrame<'_>) -> Result<Admitted, ProtoError> {
    fastchat_proto::validate_name(text.to)
        .map_err(|_| ProtoError::new(ErrorCode::BadRequest, "invalid recipient name"))?;
    check_text_len(text.ciphertext_len)?;
    let envelope = text
        .envelope_from(user)
        .map_err(|e| ProtoError::new(ErrorCode::TooLarge, e.to_string()))?;
    Ok(Admitted::Queue(TextToQueue {
        to: Target::Direct(text.to.to_string()),
        id: text.id,
        envelope: Arc::new(envelope),
    }))
}

fn check_text_len(sealed_len: usize) -> Result<(), ProtoError> {
    if sealed_len > MAX_TEXT_BYTES + SEAL_OVERHEAD {
        return Err(ProtoError::new(
            ErrorCode::TooLarge,
            format!("a text may be at most {MAX_TEXT_BYTES} bytes"),
        ));
    }
    Ok(())
}

/// Group texts and receipts, decoded whole.
fn admit_decoded(user: &str, message: Outgoing) -> Result<Admitted, ProtoError> {
    match message {
        // `DirectTextFrame::parse` takes every direct text.
        Outgoing::Direct(_) => Err(ProtoError::new(
            ErrorCode::BadRequest,
            "a direct text that did not parse in place",
        )),
        Outgoing::Receipt(r) => {
            fastchat_proto::validate_name(&r.to)
                .map_err(|_| ProtoError::new(ErrorCode::BadRequest, "invalid recipient name"))?;
            if r.ids.len() > fastchat_proto::limits::MAX_BATCH * 4 {
                return Err(ProtoError::new(
                    ErrorCode::TooLarge,
                    "too many ids in a receipt",
                ));
            }
            let envelope = Envelope::Delivered {
                from: user.to_string(),
                ids: r.ids,
            };
            let envelope = encode_body(&envelope)
                .map_err(|e| ProtoError::new(ErrorCode::TooLarge, e.to_string()))?;
            Ok(Admitted::Live {
                to: r.to,
                envelope: Arc::new(envelope),
            })
        }
        Outgoing::Group(t) => {
            if t.signature.len() != 64 {
                return Err(ProtoError::new(
                    ErrorCode::BadRequest,
                    "a group text needs an Ed25519 signature",
                ));
            }
            if t.proof.path.len() > fastchat_crypto::batch::MAX_PATH {
                return Err(ProtoError::new(
                    ErrorCode::BadRequest,
                    "a group text's batch path is longer than any batch",
                ));
            }
            check_text_len(t.sealed.ciphertext.len())?;
            let (to, id) = (
                Target::Group {
                    id: t.group_id,
                    epoch: t.epoch,
                },
                t.id,
            );
            let envelope = Envelope::GroupText {
                id: t.id,
                group_id: t.group_id,
                from: user.to_string(),
                epoch: t.epoch,
                sealed: t.sealed,
                signature: t.signature,
                proof: t.proof,
            };
            let envelope = encode_body(&envelope)
                .map_err(|e| ProtoError::new(ErrorCode::TooLarge, e.to_string()))?;
            Ok(Admitted::Queue(TextToQueue {
                to,
                id,
                envelope: Arc::new(envelope),
            }))
        }
    }
}

/// Longest wait for the next frame of a text batch.
const FRAME_GAP: Duration = Duration::from_secs(10);

pub(crate) async fn serve(
    shared: &Shared,
    user: &str,
    (send, recv): (&mut SendStream, &mut RecvStream),
    budget: &Semaphore,
) -> Result<(), StreamError> {
    // Every frame of the batch, one after the other: read in place below.
    let mut frames = shared.text_readers.take();
    // What this stream holds counts against its connection's budget until
    // the batch is answered: a client cannot make the node buffer more than
    // MAX_CONNECTION_TEXT_BYTES across all its streams (plus one read each).
    let mut held: Option<SemaphorePermit<'_>> = None;
    // Frames follow each other promptly; a stream left open and silent
    // would hold its buffers forever.
    while let Some(read) = frames.fill(recv, Some(FRAME_GAP)).await? {
        if frames.len() > MAX_BATCH || frames.held() > MAX_BATCH_BYTES {
            return Err(FrameError::TooLarge {
                len: frames.held(),
                limit: MAX_BATCH_BYTES,
            }
            .into());
        }
        let permit = budget
            .acquire_many(read as u32)
            .await
            .map_err(|_| StreamError::Protocol("the connection is closing"))?;
        match &mut held {
            Some(h) => h.merge(permit),
            None => held = Some(permit),
        }
    }

    let mut acks: Vec<SendAck> = Vec::with_capacity(frames.len());
    let mut queue: Vec<TextToQueue> = Vec::with_capacity(frames.len());
    let mut slots: Vec<usize> = Vec::with_capacity(frames.len());
    let mut live: Vec<(String, Arc<Vec<u8>>)> = Vec::new();
    for frame in frames.frames() {
        let (id, admitted) = admit(user, frame)?;
        match admitted {
            Ok(Admitted::Queue(item)) => {
                slots.push(acks.len());
                queue.push(item);
                acks.push(SendAck {
                    id,
                    result: Ok(Accepted::Stored),
                });
            }
            Ok(Admitted::Live { to, envelope }) => {
                live.push((to, envelope));
                acks.push(SendAck {
                    id,
                    result: Ok(Accepted::Stored),
                });
            }
            Err(e) => acks.push(SendAck { id, result: Err(e) }),
        }
    }
    shared.text_readers.give(frames);

    // Position 0: never stored, so nothing to delete when acknowledged.
    for (to, envelope) in live {
        shared.push(&to, Live::new(0, envelope));
    }
    if queue.is_empty() {
        return write_frames(send, &acks, MAX_MESSAGE_FRAME, acks.len() * ACK_SIZE).await;
    }
    let offers = hand_off(shared, user, &mut queue, &mut slots).await;
    let mut done = 0;
    if !queue.is_empty() {
        done += store(shared, user, queue, slots, &mut acks).await;
    }
    if !offers.is_empty() {
        let (offered, answers): (Vec<_>, Vec<_>) = offers
            .into_iter()
            .map(|o| ((o.items, o.local), o.answer))
            .unzip();
        let answers = futures::future::join_all(answers).await;
        let (mut late, mut late_slots) = (Vec::new(), Vec::new());
        for ((items, local), answer) in offered.into_iter().zip(answers) {
            let acked = answer.unwrap_or_else(|| vec![false; items.len()]);
            for ((slot, item), acked) in items.into_iter().zip(acked) {
                if acked {
                    acks[slot].result = Ok(Accepted::Delivered);
                    done += 1;
                    continue;
                }
                if let (true, Target::Direct(to)) = (local, &item.to) {
                    shared.sessions.unresponsive(to);
                }
                late_slots.push(slot);
                late.push(item);
            }
        }
        if !late.is_empty() {
            done += store(shared, user, late, late_slots, &mut acks).await;
        }
    }
    shared.stats.messages.fetch_add(done, Ordering::Relaxed);
    write_frames(send, &acks, MAX_MESSAGE_FRAME, acks.len() * ACK_SIZE).await
}

/// Texts handed off together, and the answer saying which a session of
/// their recipient acknowledged (`None`: nobody took them).
struct Offer<'a> {
    items: Vec<(usize, TextToQueue)>,
    /// Handed to sessions on this node, rather than offered over the bus.
    local: bool,
    answer: BoxFuture<'a, Option<Vec<bool>>>,
}

/// Takes the direct texts for the sender's friends out of `queue` and
/// hands them off (see `crate::handoff`): to the friend's sessions on this
/// node, else to its sessions on other nodes over the bus. Returns them
/// with their ack slots.
async fn hand_off<'a>(
    shared: &'a Shared,
    user: &str,
    queue: &mut Vec<TextToQueue>,
    slots: &mut Vec<usize>,
) -> Vec<Offer<'a>> {
    let mut recipients: Vec<&str> = Vec::new();
    for item in queue.iter() {
        if let Target::Direct(to) = &item.to
            && !recipients.contains(&to.as_str())
        {
            recipients.push(to);
        }
    }
    // The store would refuse a text to a non-friend; such texts go to it.
    let mut friends: Vec<String> = Vec::new();
    for to in recipients {
        if shared.known_friends.contains(user, to) {
            friends.push(to.to_string());
        } else if let Ok(Relation::Friends) = shared.store.relation(user, to).await {
            shared.known_friends.insert(user, to);
            friends.push(to.to_string());
        }
    }
    if friends.is_empty() {
        return Vec::new();
    }
    // Most batches are for one friend: its list takes them all without regrowing.
    let room = if friends.len() == 1 { queue.len() } else { 0 };
    let mut by_friend: Vec<(String, Vec<(usize, TextToQueue)>)> = friends
        .into_iter()
        .map(|f| (f, Vec::with_capacity(room)))
        .collect();
    let mut rest = Vec::with_capacity(queue.len());
    let mut rest_slots = Vec::with_capacity(slots.len());
    for (item, slot) in queue.drain(..).zip(slots.drain(..)) {
        let friend = match &item.to {
            Target::Direct(to) => by_friend.iter().position(|(f, _)| f == to),
            Target::Group { .. } => None,
        };
        match friend {
            Some(at) => by_friend[at].1.push((slot, item)),
            None => {
                rest.push(item);
                rest_slots.push(slot);
            }
        }
    }
    *queue = rest;
    *slots = rest_slots;
    by_friend
        .into_iter()
        .map(|(to, items)| {
            let envelopes = items.iter().map(|(_, t)| t.envelope.clone()).collect();
            match shared.sessions.hand_off(&to, envelopes) {
                Ok(batch) => Offer {
                    items,
                    local: true,
                    answer: Box::pin(async move { Some(batch.wait(HANDOFF_WAIT).await) }),
                },
                Err(envelopes) => Offer {
                    items,
                    local: false,
                    answer: Box::pin(async move { shared.bus.hand_off(&to, envelopes).await }),
                },
            }
        })
        .collect()
}

/// Stores texts in one transaction, pushes each stored one to its online
/// recipients, and fills in the acks of those refused; returns how many
/// were stored.
async fn store(
    shared: &Shared,
    user: &str,
    queue: Vec<TextToQueue>,
    slots: Vec<usize>,
    acks: &mut [SendAck],
) -> u64 {
    let envelopes: Vec<Arc<Vec<u8>>> = queue.iter().map(|t| t.envelope.clone()).collect();
    match shared
        .store
        .enqueue_texts(user, queue, shared.queue_limits)
        .await
    {
        Ok(outcomes) => {
            let mut stored = 0;
            for ((slot, outcome), envelope) in slots.into_iter().zip(outcomes).zip(envelopes) {
                match outcome {
                    Queuing::Stored(recipients) => {
                        stored += 1;
                        for (to, seq) in recipients {
                            shared.push(&to, Live::new(seq, envelope.clone()));
                        }
                    }
                    Queuing::Duplicate => {}
                    Queuing::Refused(e) => acks[slot].result = Err(e),
                }
            }
            stored
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot store messages");
            let e = ProtoError::from(e);
            for slot in slots {
                acks[slot].result = Err(e.clone());
            }
            0
        }
    }
}
