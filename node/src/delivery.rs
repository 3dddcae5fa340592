//! Pushing queued envelopes to a logged-in session: first everything stored
//! while the user was away, then whatever arrives live. An envelope leaves
//! the store only once the client acknowledged it, so a dropped connection
//! loses nothing: the next login delivers it again (clients de-duplicate).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use fastchat_proto::envelope::{DeliveryAck, DeliveryRef};
use fastchat_proto::limits::{MAX_BATCH, MAX_CONTROL_FRAME, MAX_MESSAGE_FRAME};
use fastchat_proto::stream::StreamKind;
use fastchat_transport::quinn::{Connection, RecvStream, SendStream};
use fastchat_transport::{StreamError, read_frame, write_headed_frames};
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::shared::{Live, Shared};

/// How long a client may take to acknowledge a delivery batch.
const ACK_TIMEOUT: Duration = Duration::from_secs(30);
/// Delivery batches a session keeps unacknowledged at once.
const IN_FLIGHT: usize = 4;
/// How often a session re-reads the store, for envelopes whose live push
/// was lost (a node died between its commit and its push, the bus dropped
/// a message). Cheap: one indexed read that usually finds nothing.
const STORE_POLL: Duration = Duration::from_secs(5);

/// A session's delivery task; detaches and stops when dropped.
pub(crate) struct Delivery {
    shared: Arc<Shared>,
    user: String,
    id: u64,
    acked: watch::Receiver<u64>,
    /// Whether the task joined the bus (and so must leave it).
    joined: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl Delivery {
    /// Registers `user` as online on `conn` and starts delivering.
    pub fn start(shared: Arc<Shared>, user: String, conn: Connection) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        // Attach before reading the store so nothing stored in between is missed.
        let id = shared.attach(&user, tx);
        let (acked_tx, acked) = watch::channel(0);
        let joined = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(run(
            shared.clone(),
            user.clone(),
            conn,
            rx,
            acked_tx,
            joined.clone(),
        ));
        Self {
            shared,
            user,
            id,
            acked,
            joined,
            task,
        }
    }

    /// The logged-in user.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The highest queue position this session has had acknowledged.
    pub fn acked(&self) -> watch::Receiver<u64> {
        self.acked.clone()
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        self.task.abort();
        self.shared.detach(&self.user, self.id);
        if self.joined.load(Ordering::Acquire) {
            self.shared.bus.leave(&self.user);
        }
    }
}

async fn run(
    shared: Arc<Shared>,
    user: String,
    conn: Connection,
    mut live: mpsc::UnboundedReceiver<Live>,
    acked: watch::Sender<u64>,
    joined: Arc<AtomicBool>,
) {
    let result: Result<(), StreamError> = async {
        // Join the bus before reading the store, so nothing stored on
        // another node in between is missed.
        shared.bus.join(&user).await.map_err(StreamError::service)?;
        joined.store(true, Ordering::Release);
        let mut reconnects = shared.bus.reconnects();
        let mut recent = Recent::default();
        drain_store(&shared, &user, &conn, &acked, &mut recent).await?;
        let mut poll = tokio::time::interval(STORE_POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        poll.reset();
        // Batches sent and not yet acknowledged; what arrives meanwhile
        // waits and goes in the next one, so batches grow with load.
        let mut flights = FuturesUnordered::new();
        let mut waiting = Vec::new();
        loop {
            tokio::select! {
                done = flights.next(), if !flights.is_empty() => {
                    if let Some(r) = done {
                        r?;
                    }
                }
                taken = live.recv_many(&mut waiting, MAX_BATCH), if flights.len() < IN_FLIGHT => {
                    if taken == 0 {
                        break;
                    }
                    // The next batch starts as large as this one: grown from empty, each regrowth copied it.
                    let mut batch = std::mem::replace(&mut waiting, Vec::with_capacity(taken));
                    // A store read may already have delivered what was pushed meanwhile.
                    batch.retain(|l| !recent.contains(l.seq));
                    if batch.is_empty() {
                        continue;
                    }
                    let stream = open(&conn).await?;
                    flights.push(deliver(&shared, &user, stream, batch, &acked));
                }
                _ = poll.tick() => {
                    // A store read must see nothing in flight (see drain_store).
                    while let Some(r) = flights.next().await {
                        r?;
                    }
                    recent.rotate();
                    drain_store(&shared, &user, &conn, &acked, &mut recent).await?;
                }
                changed = reconnects.changed() => {
                    if changed.is_err() {
                        // The bus is gone (node shutting down); polling still covers us.
                        reconnects = watch::channel(0).1;
                        continue;
                    }
                    while let Some(r) = flights.next().await {
                        r?;
                    }
                    drain_store(&shared, &user, &conn, &acked, &mut recent).await?;
                }
            }
        }
        Ok(())
    }
    .await;
    if let Err(e) = result {
        // Without a delivery task the session's live queue would only grow:
        // close the connection; the client reconnects and gets the backlog.
        tracing::debug!(%user, error = %e, "delivery stopped; the rest stays queued");
        conn.close(
            fastchat_proto::error::close::TIMEOUT.into(),
            b"delivery failed; reconnect",
        );
    }
}

/// Queue positions recently delivered from the store, so the same envelopes
/// arriving live afterwards are not sent twice. Two generations, swapped at
/// each poll: a push follows its commit by milliseconds, never by a poll
/// period. A store read hands out pages in ascending order, so each read
/// is kept as one sorted run and searched by halves: a hash set took an
/// insert per drained text (~500 instructions with its regrowth).
#[derive(Default)]
struct Recent {
    current: Vec<Vec<u64>>,
    previous: Vec<Vec<u64>>,
}

impl Recent {
    fn contains(&self, seq: u64) -> bool {
        self.current
            .iter()
            .chain(&self.previous)
            .any(|run| run.binary_search(&seq).is_ok())
    }

    /// Notes what one store read delivered, ascending.
    fn add_run(&mut self, run: Vec<u64>) {
        if !run.is_empty() {
            self.current.push(run);
        }
    }

    fn rotate(&mut self) {
        self.previous = std::mem::take(&mut self.current);
    }
}

/// Delivers everything the store holds for `user`, several pages in
/// flight. Nothing else is in flight when this starts, so what the store
/// holds is exactly what this session still owes: stored while away, stored
/// on another node whose push was lost, or not yet pushed.
async fn drain_store(
    shared: &Shared,
    user: &str,
    conn: &Connection,
    acked: &watch::Sender<u64>,
    recent: &mut Recent,
) -> Result<(), StreamError> {
    let mut cursor = 0u64;
    let mut flights = FuturesUnordered::new();
    let mut delivered = Vec::new();
    loop {
        while flights.len() >= IN_FLIGHT {
            if let Some(r) = flights.next().await {
                r?;
            }
        }
        let page = shared
            .store
            .pending(user, cursor, MAX_BATCH)
            .await
            .map_err(StreamError::service)?;
        let Some(last) = page.last().map(|(seq, _)| *seq) else {
            break;
        };
        delivered.extend(page.iter().map(|(seq, _)| *seq));
        let batch = page
            .into_iter()
            .map(|(seq, envelope)| Live::new(seq, Arc::new(envelope)))
            .collect();
        let stream = open(conn).await?;
        flights.push(deliver(shared, user, stream, batch, acked));
        cursor = last;
    }
    recent.add_run(delivered);
    while let Some(r) = flights.next().await {
        r?;
    }
    Ok(())
}

/// Opens the stream for the next batch. Streams are opened in queue order
/// and the client applies them in the order they were opened, so a key
/// always lands before the texts it opens, however many are in flight.
async fn open(conn: &Connection) -> Result<(SendStream, RecvStream), StreamError> {
    Ok(conn.open_bi().await?)
}

/// Sends one batch on its stream, waits for the client's ack, and deletes
/// what it acknowledged (in the store's next group commit).
async fn deliver(
    shared: &Shared,
    user: &str,
    (mut send, mut recv): (SendStream, RecvStream),
    batch: Vec<Live>,
    acked: &watch::Sender<u64>,
) -> Result<(), StreamError> {
    // Borrowed: a group envelope shared by every member is not copied.
    let frames = batch
        .iter()
        .map(|l| DeliveryRef {
            seq: l.seq,
            envelope: &l.envelope,
        })
        .collect::<Vec<_>>();
    // Each frame: its prefix, its position and the envelope's length.
    let size = batch.iter().map(|l| l.envelope.len() + 16).sum();
    write_headed_frames(
        &mut send,
        &StreamKind::Delivery,
        &frames,
        MAX_MESSAGE_FRAME,
        size,
    )
    .await?;
    send.finish()?;
    let mut buf = Vec::new();
    let ack: DeliveryAck = tokio::time::timeout(
        ACK_TIMEOUT,
        read_frame(&mut recv, MAX_CONTROL_FRAME, &mut buf),
    )
    .await
    .map_err(|_| StreamError::Timeout("the client did not acknowledge a delivery"))??
    .ok_or(StreamError::Truncated)?;
    shared.sessions.responsive(user);
    // Handed-off texts are acknowledged to their senders' streams.
    if batch.iter().any(|l| l.handoff.is_some()) {
        let mut acked = ack.seqs.clone();
        acked.sort_unstable();
        for live in &batch {
            if let Some(h) = &live.handoff
                && acked.binary_search(&live.seq).is_ok()
            {
                h.acked();
            }
        }
    }
    // Only positions we actually sent on this stream may be deleted; 0
    // marks a live-only envelope (a receipt) and a transient position a
    // handed-off text, neither of them stored.
    let mut ours: Vec<u64> = frames
        .iter()
        .map(|f| f.seq)
        .filter(|s| *s != 0 && !fastchat_proto::envelope::is_handed_off(*s))
        .collect();
    ours.sort_unstable();
    let sent: Vec<u64> = ack
        .seqs
        .into_iter()
        .filter(|s| ours.binary_search(s).is_ok())
        .collect();
    if sent.is_empty() {
        return Ok(());
    }
    shared
        .store
        .ack(user, &sent)
        .await
        .map_err(StreamError::service)?;
    if let Some(max) = sent.iter().max() {
        acked.send_if_modified(|v| {
            let grew = *max > *v;
            *v = (*v).max(*max);
            grew
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::Recent;

    #[test]
    fn recent_positions_are_found_in_their_runs_until_two_polls_pass() {
        let mut recent = Recent::default();
        recent.add_run(vec![3, 5, 9, 12]);
        recent.add_run(Vec::new());
        recent.add_run(vec![1, 20]);
        for seq in [1, 3, 5, 9, 12, 20] {
            assert!(recent.contains(seq), "{seq}");
        }
        for seq in [0, 2, 4, 10, 13, 21] {
            assert!(!recent.contains(seq), "{seq}");
        }
        recent.rotate();
        recent.add_run(vec![30]);
        assert!(recent.contains(9) && recent.contains(30));
        recent.rotate();
        assert!(!recent.contains(9), "two polls later it is forgotten");
        assert!(recent.contains(30));
    }
}
