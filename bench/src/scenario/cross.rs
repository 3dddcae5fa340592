//! `cross-node`: the `ring` load on a cluster of three nodes (a private
//! nats-server, one shared SQLite file, round-robin placement), so most
//! texts go durable on the sender's node and cross NATS to the recipient's.
//! Read beside `ring` from the same run (one node): the ratio is the cost
//! of crossing nodes on this machine.

use crate::Options;
use crate::Target;
use crate::env::Env;
use crate::report::ScenarioResult;

/// Nodes in the cluster this scenario starts.
const NODES: u16 = 3;

pub async fn run(env: &Env, options: &Options) -> anyhow::Result<ScenarioResult> {
    let Target::Local { .. } = &env.target else {
        // A remote cluster is what it is: measure the ring on it.
        return super::ring::run("cross-node", env, options).await;
    };
    let cluster = Env::start(&env.target, 0, NODES).await?;
    let mut r = super::ring::run("cross-node", &cluster, options).await;
    if let Ok(r) = &mut r {
        r.notes.push(format!(
            "{NODES} nodes in one process over a private nats-server, sharing one SQLite file"
        ));
        if let Some((rss, peak)) = cluster.node_rss() {
            r.node_rss_kib = Some(rss);
            r.node_peak_rss_kib = Some(peak);
        }
    }
    cluster.stop().await;
    r
}
