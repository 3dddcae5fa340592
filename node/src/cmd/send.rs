//! A text stream: a batch of encrypted messages from the logged-in user.
//! All are stored in one transaction, handed to online recipients, and each
//! gets its own ack (or refusal) on the same stream.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use fastchat_proto::envelope::{Envelope, OutgoingText, SendAck};
use fastchat_proto::frame::encode_body;
use fastchat_proto::limits::{MAX_BATCH, MAX_MESSAGE_FRAME, MAX_TEXT_BYTES};
use fastchat_proto::{ErrorCode, FrameError, ProtoError};
use fastchat_transport::quinn::{RecvStream, SendStream};
use fastchat_transport::{StreamError, read_frame, write_frames};

use crate::shared::{Live, Shared};
use crate::store::{Queuing, TextToQueue};

/// AEAD tag plus the plaintext's own framing.
const SEAL_OVERHEAD: usize = 256;

pub(crate) async fn serve(
    shared: &Shared,
    user: &str,
    send: &mut SendStream,
    recv: &mut RecvStream,
) -> Result<(), StreamError> {
    let mut texts: Vec<OutgoingText> = Vec::new();
    let mut buf = Vec::new();
    while let Some(text) = read_frame(recv, MAX_MESSAGE_FRAME, &mut buf).await? {
        if texts.len() == MAX_BATCH {
            return Err(FrameError::TooLarge {
                len: MAX_BATCH + 1,
                limit: MAX_BATCH,
            }
            .into());
        }
        texts.push(text);
    }

    let mut acks: Vec<SendAck> = Vec::with_capacity(texts.len());
    let mut queue: Vec<TextToQueue> = Vec::with_capacity(texts.len());
    let mut slots: Vec<usize> = Vec::with_capacity(texts.len());
    for text in texts {
        let refusal = if fastchat_proto::validate_name(&text.to).is_err() {
            Some(ProtoError::new(
                ErrorCode::BadRequest,
                "invalid recipient name",
            ))
        } else if text.sealed.ciphertext.len() > MAX_TEXT_BYTES + SEAL_OVERHEAD {
            Some(ProtoError::new(
                ErrorCode::TooLarge,
                format!("a text may be at most {MAX_TEXT_BYTES} bytes"),
            ))
        } else {
            None
        };
        acks.push(SendAck {
            id: text.id,
            result: refusal.map_or(Ok(()), Err),
        });
        if acks.last().is_some_and(|a| a.result.is_err()) {
            continue;
        }
        let envelope = Envelope::Text {
            id: text.id,
            from: user.to_string(),
            sealed: text.sealed,
        };
        let envelope = encode_body(&envelope)?;
        slots.push(acks.len() - 1);
        queue.push(TextToQueue {
            to: text.to,
            id: text.id,
            envelope,
        });
    }

    let recipients: Vec<(String, Arc<Vec<u8>>)> = queue
        .iter()
        .map(|t| (t.to.clone(), Arc::new(t.envelope.clone())))
        .collect();
    match shared.store.enqueue_texts(user, queue).await {
        Ok(outcomes) => {
            let mut stored = 0;
            for ((slot, outcome), (to, envelope)) in slots.into_iter().zip(outcomes).zip(recipients)
            {
                match outcome {
                    Queuing::Stored(seq) => {
                        stored += 1;
                        shared.push(&to, Live { seq, envelope });
                    }
                    Queuing::Duplicate => {}
                    Queuing::Refused(e) => acks[slot].result = Err(e),
                }
            }
            shared.stats.messages.fetch_add(stored, Ordering::Relaxed);
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot store messages");
            let e = ProtoError::from(e);
            for slot in slots {
                acks[slot].result = Err(e.clone());
            }
        }
    }
    write_frames(send, &acks, MAX_MESSAGE_FRAME).await
}
