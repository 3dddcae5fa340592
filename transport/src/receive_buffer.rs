//! A UDP socket for quinn whose receive buffer is sized by what one read
//! can hold, not by the largest datagram times the most packets the kernel
//! may coalesce (GRO).
//!
//! quinn allocates `max_udp_payload_size × GRO segments × 32` bytes per
//! endpoint, and every client (each simulated user of the bench too) makes
//! one. With datagrams of up to 6,000 bytes that is 12 MiB, zeroed at each
//! endpoint's start: measured, a client's login cost 0.4–1.8 ms more. A
//! coalesced read never passes 64 KiB (UDP's own limit, which the kernel's
//! GRO keeps to unless an administrator raised `gro_max_size`; then a read
//! too long is cut and QUIC sends that packet again), so each of the 32
//! slots needs only that: 2 MiB in all, less than quinn's 3 MiB for 1,472.
//! A client's socket does not coalesce at all (see `Reads` in the endpoint
//! module): one datagram per slot, 192 KiB.

use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};

/// The most bytes one coalesced read delivers.
const LARGEST_READ: usize = 64 * 1024;

/// A UDP socket for quinn, announcing only as many receive segments as fit
/// [`LARGEST_READ`] for datagrams of `largest` bytes.
pub(crate) struct BoundedReceive {
    inner: Arc<dyn AsyncUdpSocket>,
    segments: usize,
}

impl BoundedReceive {
    /// The datagrams of at most `largest` bytes that one coalesced read of
    /// `inner` can hold.
    pub(crate) fn segments_for(inner: &dyn AsyncUdpSocket, largest: u16) -> usize {
        LARGEST_READ
            .div_ceil(usize::from(largest))
            .clamp(1, inner.max_receive_segments().max(1))
    }

    /// Wraps `inner`, announcing `segments` datagrams per read.
    pub(crate) fn new(inner: Arc<dyn AsyncUdpSocket>, segments: usize) -> Self {
        Self { inner, segments }
    }
}

impl fmt::Debug for BoundedReceive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BoundedReceive")
            .field("inner", &self.inner)
            .field("segments", &self.segments)
            .finish()
    }
}

impl AsyncUdpSocket for BoundedReceive {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        self.inner.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        self.inner.poll_recv(cx, bufs, meta)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.segments
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}
