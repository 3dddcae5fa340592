//! The fastchat balancer: nodes report themselves (over connections that
//! present a cluster certificate), clients ask which node to use. The choice
//! logic lives in `registry`, apart from the QUIC server in `server`.

mod registry;
mod server;

pub use registry::{Registry, Strategy};
pub use server::{BalancerConfig, BalancerError, BalancerHandle, start};
