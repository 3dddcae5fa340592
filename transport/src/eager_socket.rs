//! quinn's tokio UDP socket, except that a datagram is sent before the
//! runtime has reported the socket writable.
//!
//! quinn asks whether a socket is writable before each send, and tokio
//! knows only once a worker has polled its reactor, which a busy worker
//! does every 61 tasks. A client's socket is new at each login, so its
//! first packets waited for that poll: in `bench connect` the 200 logins'
//! Initials left only after every login had opened its keystore, and the
//! node sat idle for the storm's first quarter. A UDP send that cannot go
//! says so (`WouldBlock`) without harm, so this socket tries at once and
//! waits for the runtime only after the kernel has said no.

use std::fmt;
use std::future::Future;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use quinn::udp::{RecvMeta, Transmit, UdpSocketState};
use quinn::{AsyncUdpSocket, UdpPoller};
use tokio::io::Interest;

/// A UDP socket that sends without waiting for the runtime's readiness
/// report until a send would block.
pub(crate) struct EagerSocket {
    io: tokio::net::UdpSocket,
    state: UdpSocketState,
    /// The kernel refused the last send: wait for writability again.
    full: AtomicBool,
}

impl EagerSocket {
    /// Wraps a bound `socket` (quinn's socket options applied, as its own
    /// wrapper does). Must run inside the tokio runtime.
    pub(crate) fn new(socket: std::net::UdpSocket) -> io::Result<Self> {
        Ok(Self {
            state: UdpSocketState::new((&socket).into())?,
            io: tokio::net::UdpSocket::from_std(socket)?,
            full: AtomicBool::new(false),
        })
    }

    fn send(&self, transmit: &Transmit) -> io::Result<()> {
        self.state.send((&self.io).into(), transmit)
    }
}

impl fmt::Debug for EagerSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EagerSocket")
            .field("io", &self.io)
            .field("full", &self.full)
            .finish()
    }
}

impl AsyncUdpSocket for EagerSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Box::pin(Writable {
            socket: self,
            waiting: None,
        })
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        // Through tokio when it knows the socket is writable, so a refusal
        // clears what it knows; when it knows nothing yet (a new socket, or
        // one refused before), straight to the kernel: a refusal then
        // leaves tokio waiting for the next writable edge, which is what a
        // full buffer needs.
        let mut tried = false;
        let sent = self.io.try_io(Interest::WRITABLE, || {
            tried = true;
            self.send(transmit)
        });
        let sent = match sent {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && !tried => self.send(transmit),
            other => other,
        };
        let refused = matches!(&sent, Err(e) if e.kind() == io::ErrorKind::WouldBlock);
        self.full.store(refused, Ordering::Relaxed);
        sent
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        loop {
            std::task::ready!(self.io.poll_recv_ready(cx))?;
            if let Ok(n) = self.io.try_io(Interest::READABLE, || {
                self.state.recv((&self.io).into(), bufs, meta)
            }) {
                return Poll::Ready(Ok(n));
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.io.local_addr()
    }

    fn may_fragment(&self) -> bool {
        self.state.may_fragment()
    }

    fn max_transmit_segments(&self) -> usize {
        self.state.max_gso_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.state.gro_segments()
    }
}

type WritableFuture = Pin<Box<dyn Future<Output = io::Result<()>> + Send + Sync>>;

/// Says "writable" unless the kernel refused the last send; then waits for
/// the runtime to see the socket writable.
struct Writable {
    socket: Arc<EagerSocket>,
    waiting: Option<WritableFuture>,
}

impl fmt::Debug for Writable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Writable")
            .field("waiting", &self.waiting.is_some())
            .finish()
    }
}

impl UdpPoller for Writable {
    fn poll_writable(mut self: Pin<&mut Self>, cx: &mut Context) -> Poll<io::Result<()>> {
        if !self.socket.full.load(Ordering::Relaxed) {
            self.waiting = None;
            return Poll::Ready(Ok(()));
        }
        let socket = self.socket.clone();
        let waiting = self
            .waiting
            .get_or_insert_with(|| Box::pin(async move { socket.io.writable().await }));
        let ready = waiting.as_mut().poll(cx);
        if ready.is_ready() {
            self.waiting = None;
        }
        ready
    }
}
