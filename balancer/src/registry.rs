//! Which nodes are alive and which one a new client should get. Pure logic:
//! the caller supplies the time and the randomness.

use std::time::{Duration, Instant};

use fastchat_proto::balancer::NodeReport;

/// How the balancer chooses among live nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Strategy {
    /// Each live node in turn.
    RoundRobin,
    /// The node with the fewest connections.
    LeastConn,
    /// The less loaded of two nodes picked at random (power of two choices).
    #[default]
    P2c,
}

impl std::str::FromStr for Strategy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "round-robin" | "rr" => Ok(Self::RoundRobin),
            "least-conn" => Ok(Self::LeastConn),
            "p2c" => Ok(Self::P2c),
            other => Err(format!(
                "unknown strategy '{other}': use round-robin, least-conn or p2c"
            )),
        }
    }
}

impl std::fmt::Display for Strategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::RoundRobin => "round-robin",
            Self::LeastConn => "least-conn",
            Self::P2c => "p2c",
        })
    }
}

struct Entry {
    report: NodeReport,
    last_seen: Instant,
    /// Clients sent here since the last report: reports are up to one
    /// interval old, and without this a burst would all go to one node.
    assigned: u32,
}

impl Entry {
    fn load(&self) -> u32 {
        self.report.connections.saturating_add(self.assigned)
    }
}

/// The live nodes and the strategy.
pub struct Registry {
    strategy: Strategy,
    timeout: Duration,
    nodes: Vec<Entry>,
    next: usize,
}

impl Registry {
    /// An empty registry; nodes silent for longer than `timeout` are dropped.
    pub fn new(strategy: Strategy, timeout: Duration) -> Self {
        Self {
            strategy,
            timeout,
            nodes: Vec::new(),
            next: 0,
        }
    }

    /// The strategy in use.
    pub fn strategy(&self) -> Strategy {
        self.strategy
    }

    /// Records a node's report (admitting it, or re-admitting it after a silence).
    pub fn report(&mut self, report: NodeReport, now: Instant) {
        match self.nodes.iter_mut().find(|e| e.report.addr == report.addr) {
            Some(e) => {
                e.report = report;
                e.last_seen = now;
                e.assigned = 0;
            }
            None => {
                tracing::info!(node = %report.addr, "node joined");
                self.nodes.push(Entry {
                    report,
                    last_seen: now,
                    assigned: 0,
                });
            }
        }
    }

    fn expire(&mut self, now: Instant) {
        let timeout = self.timeout;
        self.nodes.retain(|e| {
            let alive = now.duration_since(e.last_seen) <= timeout;
            if !alive {
                tracing::warn!(node = %e.report.addr, "node stopped reporting; dropped");
            }
            alive
        });
    }

    /// The live nodes' last reports.
    pub fn live(&mut self, now: Instant) -> Vec<NodeReport> {
        self.expire(now);
        self.nodes.iter().map(|e| e.report.clone()).collect()
    }

    /// Picks a node for a new client; `random` is any uniformly random number.
    pub fn pick(&mut self, now: Instant, random: u64) -> Option<String> {
        self.expire(now);
        let n = self.nodes.len();
        if n == 0 {
            return None;
        }
        let i = match self.strategy {
            Strategy::RoundRobin => {
                self.next = (self.next + 1) % n;
                self.next
            }
            Strategy::LeastConn => (0..n).min_by_key(|&i| self.nodes[i].load())?,
            Strategy::P2c => {
                // Two distinct candidates: comparing a node with itself
                // would hand out the loaded one 1/n of the time.
                let a = (random % n as u64) as usize;
                let b = if n == 1 {
                    a
                } else {
                    (a + 1 + ((random >> 32) % (n as u64 - 1)) as usize) % n
                };
                if self.nodes[b].load() < self.nodes[a].load() {
                    b
                } else {
                    a
                }
            }
        };
        let entry = &mut self.nodes[i];
        entry.assigned = entry.assigned.saturating_add(1);
        Some(entry.report.addr.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(addr: &str, connections: u32) -> NodeReport {
        NodeReport {
            addr: addr.into(),
            connections,
            users: 0,
            messages_per_sec: 0,
            ..Default::default()
        }
    }

    #[test]
    fn round_robin_spreads_evenly() {
        let now = Instant::now();
        let mut r = Registry::new(Strategy::RoundRobin, Duration::from_secs(3));
        r.report(report("a", 100), now);
        r.report(report("b", 0), now);
        r.report(report("c", 0), now);
        let mut counts = std::collections::HashMap::new();
        for i in 0..300 {
            *counts.entry(r.pick(now, i).unwrap()).or_insert(0) += 1;
        }
        assert_eq!(counts.values().copied().collect::<Vec<_>>(), vec![100; 3]);
    }

    #[test]
    fn least_conn_and_p2c_avoid_the_loaded_node() {
        let now = Instant::now();
        for strategy in [Strategy::LeastConn, Strategy::P2c] {
            let mut r = Registry::new(strategy, Duration::from_secs(3));
            r.report(report("loaded", 10_000), now);
            r.report(report("idle1", 0), now);
            r.report(report("idle2", 0), now);
            let mut seed = 0x9e37_79b9_7f4a_7c15u64;
            for _ in 0..200 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                assert_ne!(r.pick(now, seed).unwrap(), "loaded", "{strategy}");
            }
        }
    }

    #[test]
    fn silent_nodes_are_dropped_and_readmitted() {
        let t0 = Instant::now();
        let mut r = Registry::new(Strategy::RoundRobin, Duration::from_secs(3));
        r.report(report("a", 0), t0);
        assert_eq!(r.pick(t0, 0).as_deref(), Some("a"));
        let later = t0 + Duration::from_secs(4);
        assert_eq!(r.pick(later, 0), None);
        r.report(report("a", 0), later);
        assert_eq!(r.live(later).len(), 1);
    }
}
