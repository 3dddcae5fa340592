//! Noticing a dead peer fast without failing a slow one. QUIC's idle timeout
//! covers the handshake too, and a server swamped by handshakes (every client
//! of a dead node arriving at once) can take seconds to answer; so the idle
//! timeout is patient and an established link watches for silence instead.

use std::time::{Duration, Instant};

use quinn::{Connection, ConnectionError, VarInt};

/// An established peer silent this long is taken for dead. Clients send a
/// keep-alive every 0.75 s, so a live peer answers well within it.
pub const PEER_SILENCE: Duration = Duration::from_secs(3);

/// The close code sent when the peer has gone silent.
const SILENT_PEER: VarInt = VarInt::from_u32(0);

/// Waits until `conn` closes and returns why; if nothing arrives from the
/// peer for `silence`, closes it first (the reason is then `TimedOut`).
pub async fn closed_or_silent(conn: &Connection, silence: Duration) -> ConnectionError {
    let tick = silence / 6;
    let mut seen = conn.stats().udp_rx.datagrams;
    let mut heard = Instant::now();
    loop {
        tokio::select! {
            reason = conn.closed() => return reason,
            _ = tokio::time::sleep(tick) => {}
        }
        let now = conn.stats().udp_rx.datagrams;
        if now != seen {
            seen = now;
            heard = Instant::now();
        } else if heard.elapsed() >= silence {
            conn.close(SILENT_PEER, b"peer silent");
            return ConnectionError::TimedOut;
        }
    }
}
