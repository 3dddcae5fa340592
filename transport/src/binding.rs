//! A secret both ends of one QUIC connection share and nobody else knows:
//! exported from its TLS 1.3 session (RFC 8446 §7.5). A login signs it, so a
//! signature made on one connection is worthless on any other: whoever
//! holds a node's key cannot relay a user's login to a real node.

use quinn::Connection;

/// The TLS exporter label of fastchat's login binding.
const LABEL: &[u8] = b"EXPORTER-fastchat-login";

/// This connection's binding, the same on both ends; `None` only if TLS
/// has no exporter (never with TLS 1.3).
pub fn session_binding(conn: &Connection) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    conn.export_keying_material(&mut out, LABEL, b"").ok()?;
    Some(out)
}
