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

/// A live delivery on the wire: origin node, queue position, envelope.
fn encode_live(origin: &str, live: &Live) -> Bytes {
    let mut out = Vec::with_capacity(9 + origin.len() + live.envelope.len());
    out.push(origin.len() as u8);
    out.extend_from_slice(origin.as_bytes());
    out.extend_from_slice(&live.seq.to_be_bytes());
    out.extend_from_slice(&live.envelope);
    out.into()
}

fn decode_live(bytes: &[u8]) -> Option<(&str, Live)> {
    let (&n, rest) = bytes.split_first()?;
    let origin = std::str::from_utf8(rest.get(..n as usize)?).ok()?;
    let rest = &rest[n as usize..];
    let seq = u64::from_be_bytes(rest.get(..8)?.try_into().ok()?);
    Some((
        origin,
        Live {
            seq,
            envelope: std::sync::Arc::new(rest[8..].to_vec()),
        },
    ))
}

/// A blob range request: blob id, offset, most bytes wanted.
fn encode_range(blob_id: u64, offset: u64, max: u32) -> Bytes {
    let mut out = Vec::with_capacity(20);
    out.extend_from_slice(&blob_id.to_be_bytes());
    out.extend_from_slice(&offset.to_be_bytes());
    out.extend_from_slice(&max.to_be_bytes());
    out.into()
}

fn decode_range(bytes: &[u8]) -> Option<(u64, u64, u32)> {
    Some((
        u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?),
        u64::from_be_bytes(bytes.get(8..16)?.try_into().ok()?),
        u32::from_be_bytes(bytes.get(16..20)?.try_into().ok()?),
    ))
}

/// The reply to a range request: 0 and the bytes, or 1 and an error sentence.
fn encode_reply(result: Result<Vec<u8>, String>) -> Bytes {
    let (tag, body) = match result {
        Ok(b) => (0u8, b),
        Err(e) => (1u8, e.into_bytes()),
    };
    let mut out = Vec::with_capacity(1 + body.len());
    out.push(tag);
    out.extend_from_slice(&body);
    out.into()
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
    outgoing: mpsc::UnboundedSender<(String, Bytes)>,
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
        let publisher = tokio::spawn(publish_loop(client.clone(), rx));
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
                    let result = match decode_range(&msg.payload) {
                        Some((id, offset, max)) => blobs
                            .read(id, offset, max, BLOB_WAIT)
                            .await
                            .map_err(|e| e.to_string()),
                        None => Err("malformed blob request".to_string()),
                    };
                    let _ = client.publish(reply, encode_reply(result)).await;
                });
            }
        }));
        self.spawn(tokio::spawn(async move {
            while let Some(msg) = drops.next().await {
                let id = msg
                    .payload
                    .get(..8)
                    .and_then(|b| b.try_into().ok())
                    .map(u64::from_be_bytes);
                if let Some(id) = id {
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

async fn publish_loop(client: Client, mut rx: mpsc::UnboundedReceiver<(String, Bytes)>) {
    while let Some((subject, payload)) = rx.recv().await {
        if let Err(e) = client.publish(subject, payload).await {
            // The envelope is stored; the recipient's node finds it on its next store poll.
            tracing::warn!(error = %e, "cannot publish a delivery on the bus");
        }
    }
}

async fn forward(
    mut sub: async_nats::Subscriber,
    user: String,
    me: String,
    sessions: Arc<Sessions>,
) {
    while let Some(msg) = sub.next().await {
        match decode_live(&msg.payload) {
            // Our own publishes were pushed locally already.
            Some((origin, _)) if origin == me => {}
            Some((_, live)) => sessions.push(&user, live),
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
            .send((user_subject(user), encode_live(&self.node_id, live)));
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
            .request(blob_subject(owner), encode_range(blob_id, offset, max))
            .await
            .map_err(|e| {
                BusError::Request(format!("node {owner} did not answer for the image: {e}"))
            })?;
        match reply.payload.split_first() {
            Some((0, bytes)) => Ok(bytes.to_vec()),
            Some((_, why)) => Err(BusError::Remote(String::from_utf8_lossy(why).into_owned())),
            None => Err(BusError::Request("empty reply".into())),
        }
    }

    fn drop_blob(&self, owner: &str, blob_id: u64) {
        let _ = self.outgoing.send((
            drop_subject(owner),
            Bytes::copy_from_slice(&blob_id.to_be_bytes()),
        ));
    }

    fn reconnects(&self) -> watch::Receiver<u64> {
        self.reconnects.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_formats_round_trip_and_reject_short_input() {
        let live = Live {
            seq: 42,
            envelope: std::sync::Arc::new(b"sealed".to_vec()),
        };
        let bytes = encode_live("127.0.0.1:7701", &live);
        let (origin, back) = decode_live(&bytes).expect("decodes");
        assert_eq!(origin, "127.0.0.1:7701");
        assert_eq!(back.seq, 42);
        assert_eq!(&back.envelope[..], b"sealed");
        assert!(decode_live(&bytes[..5]).is_none());
        assert!(decode_live(&[]).is_none());
        assert_eq!(
            decode_range(&encode_range(7, 1 << 40, 65536)),
            Some((7, 1 << 40, 65536))
        );
        assert!(decode_range(&[0; 19]).is_none());
        assert_eq!(user_subject("a.b"), "fastchat.user.612e62");
    }
}
