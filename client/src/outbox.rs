//! Sending texts: whatever is queued when a stream opens goes on that one
//! short stream (one message when idle, hundreds under load), and each
//! message still gets its own ack. A stream per message would cost ~17×
//! more CPU (NOTES-deps.md); one stream for everything would let one lost
//! packet stall every message behind it.

use std::collections::HashMap;
use std::sync::Arc;

use fastchat_proto::envelope::{Outgoing, SendAck};
use fastchat_proto::limits::{MAX_BATCH, MAX_MESSAGE_FRAME};
use fastchat_proto::stream::StreamKind;
use fastchat_proto::{MessageId, ProtoError};
use fastchat_transport::quinn::Connection;
use fastchat_transport::{read_frame, write_frame, write_frames};
use tokio::sync::{mpsc, oneshot};

use crate::client::Core;
use crate::error::ClientError;

/// A message waiting to go, with whom to tell when it is acknowledged.
pub(crate) struct Pending {
    pub message: Outgoing,
    /// The local history entry, written once the node acknowledged it,
    /// for the whole batch in one transaction.
    pub history: Option<History>,
    pub done: oneshot::Sender<Result<(), ClientError>>,
}

/// What the local history keeps of a sent text.
pub(crate) struct History {
    pub peer: String,
    pub group: Option<String>,
    pub text: String,
    pub sent_at_ms: u64,
}

/// Starts the sender task for `conn`, fed by `rx`.
pub(crate) fn start(core: Arc<Core>, conn: Connection, rx: mpsc::UnboundedReceiver<Pending>) {
    tokio::spawn(run(core, conn, rx));
}

/// Runs `f` on the keystore inside one transaction.
fn in_transaction(
    core: &Core,
    f: impl FnOnce(&crate::keystore::Keystore) -> Result<(), ClientError>,
) -> Result<(), ClientError> {
    let ks = core.keystore.lock().expect("keystore lock");
    ks.begin()?;
    match f(&ks) {
        Ok(()) => ks.commit(),
        Err(e) => {
            ks.rollback();
            Err(e)
        }
    }
}

async fn run(core: Arc<Core>, conn: Connection, mut rx: mpsc::UnboundedReceiver<Pending>) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(o) => batch.push(o),
                Err(_) => break,
            }
        }
        tokio::spawn(send_batch(core.clone(), conn.clone(), batch));
    }
}

async fn send_batch(core: Arc<Core>, conn: Connection, batch: Vec<Pending>) {
    let acks = exchange(&conn, &batch).await;
    let mut acks: HashMap<MessageId, Result<(), ProtoError>> = match acks {
        Ok(a) => a.into_iter().map(|a| (a.id, a.result)).collect(),
        Err(_) => HashMap::new(),
    };
    // History holds what the node accepted; one transaction per batch.
    let recorded = in_transaction(&core, |ks| {
        for o in &batch {
            if let (Some(h), Some(Ok(()))) = (&o.history, acks.get(&o.message.id())) {
                ks.record_sent(
                    &o.message.id().0,
                    &h.peer,
                    h.group.as_deref(),
                    &h.text,
                    h.sent_at_ms,
                )?;
            }
        }
        Ok(())
    });
    if let Err(e) = recorded {
        tracing::warn!(error = %e, "cannot record sent messages in the history");
    }
    for o in batch {
        let result = match acks.remove(&o.message.id()) {
            Some(Ok(())) => Ok(()),
            Some(Err(e)) => Err(ClientError::Refused(e)),
            None => Err(ClientError::Disconnected),
        };
        let _ = o.done.send(result);
    }
}

async fn exchange(conn: &Connection, batch: &[Pending]) -> Result<Vec<SendAck>, ClientError> {
    let lost = |_| ClientError::Disconnected;
    let (mut send, mut recv) = conn
        .open_bi()
        .await
        .map_err(|_| ClientError::Disconnected)?;
    write_frame(&mut send, &StreamKind::Text, 64)
        .await
        .map_err(lost)?;
    write_frames(
        &mut send,
        batch.iter().map(|o| &o.message),
        MAX_MESSAGE_FRAME,
    )
    .await
    .map_err(lost)?;
    send.finish().map_err(|_| ClientError::Disconnected)?;
    let mut acks = Vec::with_capacity(batch.len());
    let mut buf = Vec::new();
    while let Some(ack) = read_frame::<SendAck>(&mut recv, MAX_MESSAGE_FRAME, &mut buf)
        .await
        .map_err(lost)?
    {
        acks.push(ack);
    }
    Ok(acks)
}
