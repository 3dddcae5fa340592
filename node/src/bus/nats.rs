//! The bus over NATS core (no JetStream: the store is the durable part).
//!
//! Subjects, with names and node ids hex-encoded because NATS gives '.'
//! a meaning and user names may contain it:
//! - `fastchat.user.<user>`: stored envelopes for a user; every node with a
//!   session of that user subscribes while it has one (that interest is the
//!   cluster's presence map, kept by NATS).
//! - `fastchat.blob.<node>`: requests for a range of a blob that node holds.
//! - `fastchat.drop.<node>`: a blob that node may delete.
//! - `fastchat.offered.<node>.<id>`: the answer to that node's offer `id` of
//!   handed-off texts (an offer is a delivery on a user's subject that asks
//!   for a reply: which texts a session acknowledged).

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_nats::{Client, Event};
use async_trait::async_trait;
use bytes::Bytes;
use fastchat_proto::bus as wire;
use futures::StreamExt;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use super::{Bus, BusError};
use crate::blobs::Blobs;
use crate::handoff::HANDOFF_WAIT;
use crate::sessions::{Live, Sessions};

/// Longest a blob request waits at the owner for an upload to progress
/// before answering "nothing yet" (the asker then asks again).
const BLOB_WAIT: Duration = Duration::from_secs(5);
/// A blob request's whole round trip, wait included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

fn user_subject(user: &str) -> String {
    format!("fastchat.user.{}", hex::encode(user))
}

fn blob_subject(node: &str) -> String {
    format!("fastchat.blob.{}", hex::encode(node))
}

fn drop_subject(node: &str) -> String {
    format!("fastchat.drop.{}", hex::encode(node))
}

/// Where the answer to this node's offer `id` goes.
fn offer_reply_subject(node: &str, id: u64) -> String {
    format!("fastchat.offered.{}.{id}", hex::encode(node))
}

/// What the publisher sends for the node.
enum Outgoing {
    /// A stored envelope for a user's sessions elsewhere.
    Live(String, Live),
    /// A blob its owner may delete.
    Drop(String, u64),
    /// Handed-off texts for a user's sessions elsewhere, answered on
    /// [`offer_reply_subject`] under this id.
    Offer {
        user: String,
        envelopes: Vec<Arc<Vec<u8>>>,
        id: u64,
    },
}

/// Where an offer's answer goes.
type AnswerTo = oneshot::Sender<Option<Vec<bool>>>;

/// Offers waiting for their answer: how many texts each holds, and who
/// waits for the flags (`None`: no other node has a session of the user).
#[derive(Default)]
struct Offers {
    waiting: Mutex<HashMap<u64, (usize, AnswerTo)>>,
    next: AtomicU64,
}

impl Offers {
    fn answer(&self, id: u64, answer: impl FnOnce(usize) -> Option<Vec<bool>>) {
        let waiting = self.waiting.lock().expect("offers lock").remove(&id);
        if let Some((n, tx)) = waiting {
            let _ = tx.send(answer(n));
        }
    }
}

struct Route {
    sessions: usize,
    task: JoinHandle<()>,
}

/// The bus over a NATS server.
pub struct NatsBus {
    client: Client,
    node_id: String,
    sessions: OnceLock<Arc<Sessions>>,
    routes: Mutex<HashMap<String, Route>>,
    outgoing: mpsc::UnboundedSender<Outgoing>,
    offers: Arc<Offers>,
    reconnects: watch::Sender<u64>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl NatsBus {
    /// Connects to the NATS server at `url` as node `node_id`; with `tls`
    /// (a certificate directory) over TLS, trusting only the cluster CA
    /// and presenting the node's certificate.
    pub async fn connect(url: &str, node_id: &str, tls: Option<&Path>) -> Result<Self, BusError> {
        let reconnects = watch::channel(0u64).0;
        let bumped = reconnects.clone();
        let mut options = async_nats::ConnectOptions::new();
        if let Some(certs) = tls {
            options = options
                .require_tls(true)
                .add_root_certificates(certs.join(fastchat_certs::CA_CERT))
                .add_client_certificate(
                    certs.join(fastchat_certs::NODE_CERT),
                    certs.join(fastchat_certs::NODE_KEY),
                );
        }
        let client = options
            // Our own deliveries were pushed locally already.
            .no_echo()
            .name(format!("fastchat-node {node_id}"))
            .request_timeout(Some(REQUEST_TIMEOUT))
            .connection_timeout(Duration::from_secs(5))
            .max_reconnects(None)
            .event_callback(move |event| {
                let bumped = bumped.clone();
                async move {
                    match event {
                        Event::Connected => {
                            tracing::info!("bus connected");
                            bumped.send_modify(|n| *n += 1);
                        }
                        Event::Disconnected => tracing::warn!("bus disconnected; reconnecting"),
                        other => tracing::debug!(event = %other, "bus event"),
                    }
                }
            })
            .connect(url)
            .await
            .map_err(|e| BusError::Connect {
                url: url.to_string(),
                cause: e.to_string(),
            })?;
        let (outgoing, rx) = mpsc::unbounded_channel();
        let offers = Arc::new(Offers::default());
        let publisher = tokio::spawn(publish_loop(
            client.clone(),
            node_id.to_string(),
            offers.clone(),
            rx,
        ));
        Ok(Self {
            client,
            node_id: node_id.to_string(),
            sessions: OnceLock::new(),
            routes: Mutex::new(HashMap::new()),
            outgoing,
            offers,
            reconnects,
            tasks: Mutex::new(vec![publisher]),
        })
    }

    fn spawn(&self, task: JoinHandle<()>) {
        self.tasks.lock().expect("tasks lock").push(task);
    }

    async fn serve_blobs(&self, blobs: Arc<Blobs>) -> Result<(), BusError> {
        let request_err = |e: &dyn std::fmt::Display| BusError::Request(e.to_string());
        let mut gets = self
            .client
            .subscribe(blob_subject(&self.node_id))
            .await
            .map_err(|e| request_err(&e))?;
        let mut drops = self
            .client
            .subscribe(drop_subject(&self.node_id))
            .await
            .map_err(|e| request_err(&e))?;
        let client = self.client.clone();
        let readers = blobs.clone();
        self.spawn(tokio::spawn(async move {
            while let Some(msg) = gets.next().await {
                let Some(reply) = msg.reply else {
                    continue;
                };
                let (client, blobs) = (client.clone(), readers.clone());
                tokio::spawn(async move {
                    let result = match wire::decode_range(&msg.payload) {
                        Some((id, offset, max)) => blobs
                            .read(id, offset, max, BLOB_WAIT)
                            .await
                            .map_err(|e| e.to_string()),
                        None => Err("malformed blob request".to_string()),
                    };
                    let reply_bytes = wire::encode_reply(result.as_deref().map_err(|e| e.as_str()));
                    let _ = client.publish(reply, reply_bytes.into()).await;
                });
            }
        }));
        self.spawn(tokio::spawn(async move {
            while let Some(msg) = drops.next().await {
                if let Some(id) = wire::decode_drop(&msg.payload) {
                    blobs.delete(id).await;
                }
            }
        }));
        self.client.flush().await.map_err(|e| request_err(&e))
    }

    /// Takes the answers to this node's offers of handed-off texts.
    async fn serve_offer_answers(&self) -> Result<(), BusError> {
        let mut answers = self
            .client
            .subscribe(format!("fastchat.offered.{}.*", hex::encode(&self.node_id)))
            .await
            .map_err(|e| BusError::Request(e.to_string()))?;
        let offers = self.offers.clone();
        self.spawn(tokio::spawn(async move {
            while let Some(msg) = answers.next().await {
                let Some(id) = msg
                    .subject
                    .rsplit('.')
                    .next()
                    .and_then(|id| id.parse::<u64>().ok())
                else {
                    continue;
                };
                if msg.status == Some(async_nats::StatusCode::NO_RESPONDERS) {
                    offers.answer(id, |_| None);
                } else {
                    // A malformed answer counts as no ack: the texts are stored.
                    offers.answer(id, |n| {
                        Some(wire::decode_acks(&msg.payload, n).unwrap_or_else(|| vec![false; n]))
                    });
                }
            }
        }));
        Ok(())
    }
}

impl Drop for NatsBus {
    fn drop(&mut self) {
        for t in self.tasks.lock().expect("tasks lock").drain(..) {
            t.abort();
        }
        for (_, r) in self.routes.lock().expect("routes lock").drain() {
            r.task.abort();
        }
    }
}

/// Publishes what the node hands over, grouping whatever is waiting: one
/// bus message per user carries all of that user's waiting deliveries, in
/// queue order, so the bus costs per batch and not per text under load. An
/// offer goes after what was published for its user before it.
async fn publish_loop(
    client: Client,
    origin: String,
    offers: Arc<Offers>,
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
) {
    let mut waiting = Vec::new();
    while rx.recv_many(&mut waiting, 1024).await > 0 {
        let mut users: Vec<(String, Vec<Live>)> = Vec::new();
        let mut at: HashMap<String, usize> = HashMap::new();
        for out in waiting.drain(..) {
            match out {
                Outgoing::Live(user, live) => match at.get(&user) {
                    Some(&i) => users[i].1.push(live),
                    None => {
                        at.insert(user.clone(), users.len());
                        users.push((user, vec![live]));
                    }
                },
                Outgoing::Drop(owner, blob) => {
                    let payload = Bytes::copy_from_slice(&blob.to_be_bytes());
                    send(&client, drop_subject(&owner), payload).await;
                }
                Outgoing::Offer {
                    user,
                    envelopes,
                    id,
                } => {
                    if let Some(i) = at.remove(&user) {
                        let lives = std::mem::take(&mut users[i].1);
                        publish_lives(&client, &origin, &user, &lives).await;
                    }
                    let payload =
                        wire::encode_lives(&origin, envelopes.iter().map(|e| (0, &e[..])));
                    let sent = client
                        .publish_with_reply(
                            user_subject(&user),
                            offer_reply_subject(&origin, id),
                            payload.into(),
                        )
                        .await;
                    if let Err(e) = sent {
                        tracing::warn!(error = %e, "cannot offer texts on the bus; storing them");
                        offers.answer(id, |n| Some(vec![false; n]));
                    }
                }
            }
        }
        for (user, lives) in users {
            publish_lives(&client, &origin, &user, &lives).await;
        }
    }
}

/// Publishes `lives` for `user` in as few messages as their size allows.
async fn publish_lives(client: &Client, origin: &str, user: &str, lives: &[Live]) {
    let subject = user_subject(user);
    let mut rest = lives;
    while !rest.is_empty() {
        let n = fitting(rest.iter().map(|l| l.envelope.len()));
        let payload =
            wire::encode_lives(origin, rest[..n].iter().map(|l| (l.seq, &l.envelope[..])));
        send(client, subject.clone(), payload.into()).await;
        rest = &rest[n..];
    }
}

/// How many of the envelopes ahead, of these sizes, one bus message
/// carries: as many as fit in [`wire::LIVE_BATCH_BYTES`], and at least one.
fn fitting(sizes: impl Iterator<Item = usize>) -> usize {
    let mut bytes = 0;
    sizes
        .take_while(|len| {
            bytes += len;
            bytes <= wire::LIVE_BATCH_BYTES
        })
        .count()
        .max(1)
}

async fn send(client: &Client, subject: String, payload: Bytes) {
    if let Err(e) = client.publish(subject, payload).await {
        // What it carried is stored; the recipient's node finds it on its next store poll.
        tracing::warn!(error = %e, "cannot publish on the bus");
    }
}

async fn forward(
    mut sub: async_nats::Subscriber,
    user: String,
    me: String,
    sessions: Arc<Sessions>,
    client: Client,
) {
    while let Some(msg) = sub.next().await {
        let Some((origin, lives)) = wire::decode_lives(&msg.payload) else {
            tracing::warn!("malformed delivery on the bus");
            continue;
        };
        // Our own publishes were pushed locally already.
        if origin == me {
            continue;
        }
        match msg.reply {
            None => {
                for (seq, envelope) in lives {
                    sessions.push(&user, Live::new(seq, Arc::new(envelope.to_vec())));
                }
            }
            Some(reply) => take_offer(&client, &sessions, &user, lives, reply).await,
        }
    }
}

/// Hands offered texts to `user`'s sessions here and answers, once they
/// acknowledged them or the wait ran out, which they did.
async fn take_offer(
    client: &Client,
    sessions: &Arc<Sessions>,
    user: &str,
    lives: Vec<(u64, &[u8])>,
    reply: async_nats::Subject,
) {
    let n = lives.len();
    let envelopes = lives
        .into_iter()
        .map(|(_, envelope)| Arc::new(envelope.to_vec()))
        .collect();
    let Ok(batch) = sessions.hand_off(user, envelopes) else {
        // No live session here: the offering node stores them at once.
        let _ = client
            .publish(reply, wire::encode_acks(&vec![false; n]).into())
            .await;
        return;
    };
    let (client, sessions, user) = (client.clone(), sessions.clone(), user.to_string());
    // One task per offered batch (not per text), so this user's next
    // deliveries are not held up behind the wait.
    tokio::spawn(async move {
        let acked = batch.wait(HANDOFF_WAIT).await;
        if acked.contains(&false) {
            sessions.unresponsive(&user);
        }
        let _ = client
            .publish(reply, wire::encode_acks(&acked).into())
            .await;
    });
}

#[async_trait]
impl Bus for NatsBus {
    async fn start(&self, blobs: Arc<Blobs>, sessions: Arc<Sessions>) -> Result<(), BusError> {
        let _ = self.sessions.set(sessions);
        self.serve_offer_answers().await?;
        self.serve_blobs(blobs).await
    }

    fn node_id(&self) -> &str {
        &self.node_id
    }

    async fn join(&self, user: &str) -> Result<(), BusError> {
        {
            let mut routes = self.routes.lock().expect("routes lock");
            if let Some(r) = routes.get_mut(user) {
                r.sessions += 1;
                return Ok(());
            }
        }
        let sub = self
            .client
            .subscribe(user_subject(user))
            .await
            .map_err(|e| BusError::Request(e.to_string()))?;
        // The server has the subscription once a ping after it is answered.
        self.client
            .flush()
            .await
            .map_err(|e| BusError::Request(e.to_string()))?;
        let sessions = self.sessions.get().cloned().unwrap_or_default();
        let task = tokio::spawn(forward(
            sub,
            user.to_string(),
            self.node_id.clone(),
            sessions,
            self.client.clone(),
        ));
        let mut routes = self.routes.lock().expect("routes lock");
        match routes.get_mut(user) {
            Some(r) => {
                // Another session subscribed meanwhile; one route is enough.
                r.sessions += 1;
                task.abort();
            }
            None => {
                routes.insert(user.to_string(), Route { sessions: 1, task });
            }
        }
        Ok(())
    }

    fn leave(&self, user: &str) {
        let mut routes = self.routes.lock().expect("routes lock");
        if let Some(r) = routes.get_mut(user) {
            r.sessions -= 1;
            if r.sessions == 0 {
                r.task.abort();
                routes.remove(user);
            }
        }
    }

    fn publish(&self, user: &str, live: &Live) {
        let _ = self
            .outgoing
            .send(Outgoing::Live(user.to_string(), live.clone()));
    }

    async fn fetch_blob(
        &self,
        owner: &str,
        blob_id: u64,
        offset: u64,
        max: u32,
    ) -> Result<Vec<u8>, BusError> {
        let reply = self
            .client
            .request(
                blob_subject(owner),
                wire::encode_range(blob_id, offset, max).into(),
            )
            .await
            .map_err(|e| {
                BusError::Request(format!("node {owner} did not answer for the image: {e}"))
            })?;
        match wire::decode_reply(&reply.payload) {
            Some(Ok(bytes)) => Ok(bytes.to_vec()),
            Some(Err(why)) => Err(BusError::Remote(why)),
            None => Err(BusError::Request(format!(
                "node {owner} sent a malformed reply"
            ))),
        }
    }

    async fn hand_off(&self, user: &str, envelopes: Vec<Arc<Vec<u8>>>) -> Option<Vec<bool>> {
        // Off the bus, an offer would only wait out its time: store at once.
        if self.client.connection_state() != async_nats::connection::State::Connected {
            return None;
        }
        // One offer per bus message's worth of texts, all in flight at once.
        let mut chunks = Vec::new();
        let mut rest = &envelopes[..];
        while !rest.is_empty() {
            let n = fitting(rest.iter().map(|e| e.len()));
            let id = self.offers.next.fetch_add(1, Ordering::Relaxed);
            let (tx, rx) = oneshot::channel();
            self.offers
                .waiting
                .lock()
                .expect("offers lock")
                .insert(id, (n, tx));
            let _ = self.outgoing.send(Outgoing::Offer {
                user: user.to_string(),
                envelopes: rest[..n].to_vec(),
                id,
            });
            chunks.push((id, n, rx));
            rest = &rest[n..];
        }
        let mut flags = Vec::with_capacity(envelopes.len());
        let mut anyone = false;
        for (id, n, rx) in chunks {
            // The answering node waits HANDOFF_WAIT for its session; a
            // second more covers the way back.
            match tokio::time::timeout(HANDOFF_WAIT + Duration::from_secs(1), rx).await {
                Ok(Ok(Some(acked))) => {
                    anyone = true;
                    flags.extend(acked);
                }
                Ok(Ok(None)) => flags.extend(std::iter::repeat_n(false, n)),
                Ok(Err(_)) | Err(_) => {
                    self.offers.waiting.lock().expect("offers lock").remove(&id);
                    anyone = true;
                    flags.extend(std::iter::repeat_n(false, n));
                }
            }
        }
        anyone.then_some(flags)
    }

    fn drop_blob(&self, owner: &str, blob_id: u64) {
        let _ = self
            .outgoing
            .send(Outgoing::Drop(owner.to_string(), blob_id));
    }

    fn reconnects(&self) -> watch::Receiver<u64> {
        self.reconnects.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bus_message_carries_what_fits_and_at_least_one() {
        let half = wire::LIVE_BATCH_BYTES / 2;
        assert_eq!(fitting([half, half, 1].into_iter()), 2);
        assert_eq!(fitting([wire::LIVE_BATCH_BYTES * 2, 1].into_iter()), 1);
    }

    #[test]
    fn subjects_name_users_and_nodes_in_hex() {
        assert_eq!(user_subject("a.b"), "fastchat.user.612e62");
        assert_eq!(blob_subject("n:1"), "fastchat.blob.6e3a31");
    }
}
