//! QUIC plumbing shared by every fastchat process: endpoints whose TLS trusts
//! only the cluster CA, socket and transport settings that measured well on
//! loopback, reading/writing length-prefixed frames on quinn streams, and
//! noticing a silent peer.

mod binding;
mod eager_socket;
mod endpoint;
mod framed;
mod liveness;
mod receive_buffer;

pub use binding::session_binding;
pub use endpoint::{
    ClientEndpoint, Listener, ServerKind, TransportError, client_endpoint, connect, server_endpoint,
};
pub use framed::{
    FRAME_TIMEOUT, FrameReader, ReaderPool, StreamError, read_frame, read_frames_to_end,
    write_frame, write_frames, write_headed_frames,
};
pub use liveness::{PEER_SILENCE, closed_or_silent};
pub use quinn;
