//! One client connection: the control stream (requests and replies, in this
//! task) and the other streams the client opens (text batches, each in its
//! own task). The delivery side lives in `delivery`.

use std::sync::Arc;
use std::time::Duration;

use fastchat_proto::control::{Request, RequestFrame, ResponseFrame};
use fastchat_proto::error::close;
use fastchat_proto::limits::{MAX_CONNECTION_TEXT_BYTES, MAX_CONTROL_FRAME};
use fastchat_proto::stream::StreamKind;
use fastchat_transport::quinn::{Connection, ConnectionError, RecvStream, SendStream};
use fastchat_transport::{StreamError, read_frame, write_frame};
use tokio::sync::{Mutex, Semaphore, watch};

use crate::cmd::{self, Session};
use crate::delivery::Delivery;
use crate::shared::Shared;

/// How long a peer may take to say what a new stream is for.
const STREAM_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves one incoming connection until it closes.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    accepting: impl Future<Output = Result<Connection, ConnectionError>>,
) {
    let conn = match accepting.await {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(error = %e, "handshake failed");
            return;
        }
    };
    shared
        .stats
        .connections
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let remote = conn.remote_address();
    match run(shared.clone(), conn.clone()).await {
        Ok(()) => conn.close(close::OK.into(), b"bye"),
        Err(e) => {
            tracing::debug!(%remote, error = %e, "closing connection after a protocol error");
            conn.close(close::PROTOCOL.into(), e.to_string().as_bytes());
        }
    }
    shared
        .stats
        .connections
        .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
}

async fn stream_kind(recv: &mut RecvStream) -> Result<StreamKind, StreamError> {
    let mut buf = Vec::new();
    match tokio::time::timeout(
        STREAM_HEADER_TIMEOUT,
        read_frame::<StreamKind>(recv, 64, &mut buf),
    )
    .await
    {
        Ok(Ok(Some(kind))) => Ok(kind),
        Ok(Ok(None)) => Err(StreamError::Truncated),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(StreamError::Timeout("no stream header")),
    }
}

async fn run(shared: Arc<Shared>, conn: Connection) -> Result<(), StreamError> {
    let (send, mut recv) = match conn.accept_bi().await {
        Ok(s) => s,
        // The client went away without opening anything: not a protocol error.
        Err(_) => return Ok(()),
    };
    if stream_kind(&mut recv).await? != StreamKind::Control {
        return Err(StreamError::Protocol(
            "the first stream must be the control stream",
        ));
    }
    let control = Arc::new(Mutex::new(send));
    let (user_tx, user_rx) = watch::channel::<Option<String>>(None);
    let budget = Arc::new(Semaphore::new(MAX_CONNECTION_TEXT_BYTES));
    let streams = tokio::spawn(accept_streams(
        shared.clone(),
        conn.clone(),
        user_rx,
        budget,
    ));
    let _streams_guard = AbortOnDrop(streams);

    let Some(binding) = fastchat_transport::session_binding(&conn) else {
        return Err(StreamError::Protocol("no TLS exporter on this connection"));
    };
    let mut session = Session::new(binding);
    let mut delivery: Option<Delivery> = None;
    let syncs: Arc<std::sync::Mutex<Syncs>> = Arc::default();
    let mut buf = Vec::new();
    loop {
        let frame: RequestFrame = match read_frame(&mut recv, MAX_CONTROL_FRAME, &mut buf).await {
            Ok(Some(f)) => f,
            Ok(None) => return Ok(()),
            Err(StreamError::Read(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        if let (Request::Sync, Some(d)) = (&frame.request, &delivery) {
            // Sync waits for the client's acks; answer it from its own task
            // so the control stream keeps serving meanwhile. One task runs
            // per connection: it answers every sync waiting when it starts
            // a round (reading the queue's end after they all arrived, so
            // each gets what it asked for), then the ones that came
            // meanwhile, so pipelined syncs cost the store one poll loop.
            let start = {
                let mut syncs = syncs.lock().expect("syncs lock");
                if syncs.waiting.len() >= MAX_WAITING_SYNCS {
                    None
                } else {
                    syncs.waiting.push(frame.id);
                    Some(!std::mem::replace(&mut syncs.running, true))
                }
            };
            match start {
                None => {
                    let busy = Err(fastchat_proto::ProtoError::new(
                        fastchat_proto::ErrorCode::TooLarge,
                        "too many syncs waiting; wait for one to finish",
                    ));
                    reply(&control, frame.id, busy).await?;
                }
                Some(true) => {
                    let (shared, control, user, acked, syncs) = (
                        shared.clone(),
                        control.clone(),
                        d.user().to_string(),
                        d.acked(),
                        syncs.clone(),
                    );
                    tokio::spawn(answer_syncs(shared, control, user, acked, syncs));
                }
                Some(false) => {}
            }
            continue;
        }
        let result = cmd::apply(&shared, &mut session, frame.request).await;
        // Mark the connection logged in before the reply leaves: a client may
        // open its first text stream the moment it reads `LoggedIn`.
        if delivery.is_none()
            && let Some(user) = &session.user
        {
            let _ = user_tx.send(Some(user.clone()));
            delivery = Some(Delivery::start(shared.clone(), user.clone(), conn.clone()));
        }
        reply(&control, frame.id, result).await?;
        if session.failed_logins >= crate::limits::MAX_FAILED_LOGINS {
            // Let the refusal reach the client before closing: finish the
            // stream and wait (briefly) until it has been read.
            let mut send = control.lock().await;
            let _ = send.finish();
            let _ = tokio::time::timeout(Duration::from_secs(2), send.stopped()).await;
            return Err(StreamError::Protocol("too many failed logins"));
        }
    }
}

async fn reply(
    control: &Mutex<SendStream>,
    id: u64,
    result: Result<fastchat_proto::control::Response, fastchat_proto::ProtoError>,
) -> Result<(), StreamError> {
    let frame = ResponseFrame { id, result };
    let mut send = control.lock().await;
    write_frame(&mut send, &frame, MAX_CONTROL_FRAME).await
}

/// Accepts the streams a client opens after the control stream.
async fn accept_streams(
    shared: Arc<Shared>,
    conn: Connection,
    user: watch::Receiver<Option<String>>,
    budget: Arc<Semaphore>,
) {
    while let Ok((send, recv)) = conn.accept_bi().await {
        let (shared, user, budget) = (shared.clone(), user.clone(), budget.clone());
        tokio::spawn(async move {
            serve_stream(shared, user, (send, recv), &budget).await;
        });
    }
}

async fn serve_stream(
    shared: Arc<Shared>,
    user: watch::Receiver<Option<String>>,
    (mut send, mut recv): (SendStream, RecvStream),
    budget: &Semaphore,
) {
    let refuse = |send: &mut SendStream, recv: &mut RecvStream| {
        let _ = send.reset(close::PROTOCOL.into());
        let _ = recv.stop(close::PROTOCOL.into());
    };
    let kind = match stream_kind(&mut recv).await {
        Ok(k) => k,
        Err(_) => return refuse(&mut send, &mut recv),
    };
    let Some(user) = user.borrow().clone() else {
        return refuse(&mut send, &mut recv);
    };
    let result = match kind {
        StreamKind::Text => cmd::send::serve(&shared, &user, (&mut send, &mut recv), budget).await,
        StreamKind::ImageUpload => {
            cmd::image::serve_upload(&shared, &user, &mut send, &mut recv).await
        }
        StreamKind::ImageFetch => {
            cmd::image::serve_fetch(&shared, &user, &mut send, &mut recv).await
        }
        StreamKind::Control | StreamKind::Delivery => {
            Err(StreamError::Protocol("unexpected stream kind"))
        }
    };
    match result {
        Ok(()) => {
            let _ = send.finish();
        }
        Err(e) => {
            tracing::debug!(%user, error = %e, "refusing a stream");
            refuse(&mut send, &mut recv);
        }
    }
}

/// Syncs one connection may have waiting at once (a few bytes each).
const MAX_WAITING_SYNCS: usize = 4096;

/// The syncs of one connection.
#[derive(Default)]
struct Syncs {
    /// Request ids not answered yet.
    waiting: Vec<u64>,
    /// Whether a task is answering them.
    running: bool,
}

/// Answers the connection's syncs in rounds until none is left.
async fn answer_syncs(
    shared: Arc<Shared>,
    control: Arc<Mutex<SendStream>>,
    user: String,
    acked: watch::Receiver<u64>,
    syncs: Arc<std::sync::Mutex<Syncs>>,
) {
    loop {
        let ids = {
            let mut s = syncs.lock().expect("syncs lock");
            if s.waiting.is_empty() {
                s.running = false;
                return;
            }
            std::mem::take(&mut s.waiting)
        };
        let result = cmd::sync::wait(&shared, &user, acked.clone()).await;
        for id in ids {
            if reply(&control, id, result.clone()).await.is_err() {
                syncs.lock().expect("syncs lock").running = false;
                return;
            }
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
