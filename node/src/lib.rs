//! The fastchat node: accepts QUIC connections, authenticates users by their
//! identity key, relays and queues end-to-end encrypted envelopes it cannot
//! read, and reports its load to the balancer.
//!
//! Layout follows mini-redis: `server` accepts, `connection` runs one
//! connection's streams, `cmd/` holds one file per request kind (decode,
//! apply, reply), `delivery` pushes queued envelopes to online users,
//! `sessions` knows who is online, `blobs` owns image files, and `store` is
//! the durable state behind a trait (its rules in `store/policy.rs`).

mod balancer_link;
mod blobs;
mod bus;
mod cmd;
mod connection;
mod delivery;
mod handoff;
pub mod limits;
mod server;
mod sessions;
mod shared;
pub mod store;

pub use blobs::BlobError;
pub use bus::{BusError, NatsServer};
pub use server::{NodeConfig, NodeError, NodeHandle, start};
pub use store::Durability;
