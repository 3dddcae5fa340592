//! The balancer's protocol: clients ask which node to use; nodes report.

use bincode::{Decode, Encode};

use crate::ProtoError;

/// A request to the balancer, one per stream.
#[derive(Encode, Decode, Clone, Debug)]
pub enum BalancerRequest {
    /// Which node should I connect to?
    PickNode,
    /// A node says it is alive and how loaded it is. Accepted only from a
    /// connection that presented a certificate signed by the cluster CA.
    Report(NodeReport),
    /// Everything the balancer knows about its nodes.
    Status,
}

/// One node's report of itself.
#[derive(Encode, Decode, Clone, Debug, PartialEq, Eq, Default)]
pub struct NodeReport {
    /// Address clients should connect to.
    pub addr: String,
    /// Connections currently open.
    pub connections: u32,
    /// Users currently logged in.
    pub users: u32,
    /// Messages accepted per second, averaged over the last report interval.
    pub messages_per_sec: u64,
    /// Messages accepted since the node started.
    pub messages_total: u64,
    /// Envelopes waiting in the queue for offline or slow recipients.
    pub queue_depth: u64,
    /// The node process's resident memory, KiB (0 where unknown).
    pub rss_kib: u64,
}

/// The balancer's answer.
#[derive(Encode, Decode, Clone, Debug)]
pub enum BalancerResponse {
    /// Connect here.
    Node {
        /// The node's address.
        addr: String,
    },
    /// Report taken.
    Reported,
    /// The live nodes and the strategy in use.
    Status {
        /// The strategy name.
        strategy: String,
        /// Live nodes with their last reports.
        nodes: Vec<NodeReport>,
    },
    /// The request was refused.
    Error(ProtoError),
}
