//! The bus over NATS core (no JetStream: the store is the durable part).
//!
//! Subjects, with names and node ids hex-encoded because NATS gives '.'
//! a meaning and user names may contain it:
//! - `fastchat.user.<user>`: stored envelopes for a user; every node with a
//!   session of that user subscribes while it has one (that interest is the
//!   cluster's presence map, kept by NATS).
//! - `fastchat.blob.<node>`: requests for a range of a blob that node holds.
//! - `fastchat.drop.<node>`: a blob that node may delete.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_nats::{Client, Event};
use async_trait::async_trait;
use bytes::Bytes;
use fastchat_proto::bus as wire;
use futures::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::{Bus, BusError};
use crate::blobs::Blobs;
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

/// What the publisher sends for the node.
enum Outgoing {
    /// A stored envelope for a user's sessions elsewhere.
    Live(String, Live),
    /// A blob its owner may delete.
    Drop(String, u64),
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
        let publisher = tokio::spawn(publish_loop(client.clone(), node_id.to_string(), rx));
        Ok(Self {
            client,
            node_id: node_id.to_string(),
            sessions: OnceLock::new(),
            routes: Mutex::new(HashMap::new()),
            outgoing,
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
/// queue order, so the bus costs per batch and not per text under load.
async fn publish_loop(client: Client, origin: String, mut rx: mpsc::UnboundedReceiver<Outgoing>) {
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
            }
        }
        for (user, lives) in users {
            let subject = user_subject(&user);
            let mut rest = &lives[..];
            while !rest.is_empty() {
                let mut bytes = 0;
                let n = rest
                    .iter()
                    .take_while(|l| {
                        bytes += l.envelope.len();
                        bytes <= wire::LIVE_BATCH_BYTES
                    })
                    .count()
                    .max(1);
                let payload =
                    wire::encode_lives(&origin, rest[..n].iter().map(|l| (l.seq, &l.envelope[..])));
                send(&client, subject.clone(), payload.into()).await;
                rest = &rest[n..];
            }
        }
    }
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
) {
    while let Some(msg) = sub.next().await {
        match wire::decode_lives(&msg.payload) {
            // Our own publishes were pushed locally already.
            Some((origin, _)) if origin == me => {}
            Some((_, lives)) => {
                for (seq, envelope) in lives {
                    sessions.push(&user, Live::new(seq, Arc::new(envelope.to_vec())));
                }
            }
            None => tracing::warn!("malformed delivery on the bus"),
        }
    }
}

#[async_trait]
impl Bus for NatsBus {
    async fn start(&self, blobs: Arc<Blobs>, sessions: Arc<Sessions>) -> Result<(), BusError> {
        let _ = self.sessions.set(sessions);
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
    fn subjects_name_users_and_nodes_in_hex() {
        assert_eq!(user_subject("a.b"), "fastchat.user.612e62");
        assert_eq!(blob_subject("n:1"), "fastchat.blob.6e3a31");
    }
}
