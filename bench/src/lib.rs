//! The fastchat load harness. Its scenarios (ring, latency, image, fanout,
//! drain, connect, cross-node, raw-quic) are not written yet; this crate only
//! reserves its place in the workspace so the layout matches DESIGN.md.
