//! The client side of the control stream: requests go out with ids, a
//! reader task matches replies back to their callers.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use fastchat_proto::control::{Request, RequestFrame, Response, ResponseFrame};
use fastchat_proto::limits::MAX_CONTROL_FRAME;
use fastchat_proto::{ProtoError, stream::StreamKind};
use fastchat_transport::quinn::{Connection, RecvStream, SendStream};
use fastchat_transport::{read_frame, write_frame};
use tokio::sync::oneshot;

use crate::error::ClientError;

type Waiter = oneshot::Sender<Result<Response, ProtoError>>;

/// The control stream, shared by every caller.
pub(crate) struct Control {
    send: tokio::sync::Mutex<SendStream>,
    waiting: std::sync::Arc<Mutex<HashMap<u64, Waiter>>>,
    next_id: AtomicU64,
    /// The connection's login binding (its TLS exporter secret).
    binding: [u8; 32],
}

impl Control {
    /// The login binding of the connection this stream belongs to.
    pub fn binding(&self) -> &[u8; 32] {
        &self.binding
    }

    /// Opens the control stream on `conn` and starts its reader task.
    pub async fn open(conn: &Connection) -> Result<Self, ClientError> {
        let binding = fastchat_transport::session_binding(conn).ok_or(ClientError::Disconnected)?;
        let (mut send, recv) = conn
            .open_bi()
            .await
            .map_err(|_| ClientError::Disconnected)?;
        write_frame(&mut send, &StreamKind::Control, 64)
            .await
            .map_err(|_| ClientError::Disconnected)?;
        let waiting = std::sync::Arc::new(Mutex::new(HashMap::new()));
        tokio::spawn(read_replies(recv, waiting.clone()));
        Ok(Self {
            send: tokio::sync::Mutex::new(send),
            waiting,
            binding,
            next_id: AtomicU64::new(1),
        })
    }

    /// Sends `request` and waits for its reply.
    pub async fn request(&self, request: Request) -> Result<Response, ClientError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.waiting.lock().expect("waiting lock").insert(id, tx);
        {
            let mut send = self.send.lock().await;
            if write_frame(&mut send, &RequestFrame { id, request }, MAX_CONTROL_FRAME)
                .await
                .is_err()
            {
                self.waiting.lock().expect("waiting lock").remove(&id);
                return Err(ClientError::Disconnected);
            }
        }
        match rx.await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(refusal)) => Err(ClientError::Refused(refusal)),
            Err(_) => Err(ClientError::Disconnected),
        }
    }
}

async fn read_replies(mut recv: RecvStream, waiting: std::sync::Arc<Mutex<HashMap<u64, Waiter>>>) {
    let mut buf = Vec::new();
    while let Ok(Some(frame)) =
        read_frame::<ResponseFrame>(&mut recv, MAX_CONTROL_FRAME, &mut buf).await
    {
        if let Some(waiter) = waiting.lock().expect("waiting lock").remove(&frame.id) {
            let _ = waiter.send(frame.result);
        }
    }
    // Dropping the waiters wakes every caller with `Disconnected`.
    waiting.lock().expect("waiting lock").clear();
}
