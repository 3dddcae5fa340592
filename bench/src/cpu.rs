//! CPU time spent during a scenario's measured part: the cluster process
//! (with its children, such as a private nats-server) and the harness,
//! read from /proc, so each scenario can report microseconds per operation.

use std::time::Duration;

/// CPU time consumed so far, read at the start of a measured part.
#[derive(Clone, Copy, Debug)]
pub struct CpuMark {
    cluster: Option<Duration>,
    harness: Option<Duration>,
}

/// CPU microseconds per operation over a measured part.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CpuPerOp {
    /// The cluster's processes; `None` when the cluster is remote (`--server`).
    pub cluster_us: Option<f64>,
    /// The harness (every simulated client together).
    pub harness_us: Option<f64>,
}

impl CpuMark {
    /// Reads the CPU used so far by `cluster` (and its children) and by this process.
    pub fn now(cluster: Option<u32>) -> Self {
        Self {
            cluster: cluster.and_then(tree_cpu),
            harness: process_cpu(std::process::id()),
        }
    }

    /// CPU per operation since this mark, for `operations` operations.
    pub fn per_op(&self, cluster: Option<u32>, operations: u64) -> CpuPerOp {
        let later = Self::now(cluster);
        let per = |a: Option<Duration>, b: Option<Duration>| match (a, b) {
            (Some(a), Some(b)) if operations > 0 => {
                Some(b.saturating_sub(a).as_secs_f64() * 1e6 / operations as f64)
            }
            _ => None,
        };
        CpuPerOp {
            cluster_us: per(self.cluster, later.cluster),
            harness_us: per(self.harness, later.harness),
        }
    }
}

/// Clock ticks per second of /proc's CPU figures.
fn ticks_per_second() -> u64 {
    // SAFETY: sysconf only reads a configuration value.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as u64 } else { 100 }
}

/// (parent pid, user + system CPU) of `pid`, from /proc/PID/stat.
fn stat(pid: u32) -> Option<(u32, Duration)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; the fields after it do not.
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state(0) ppid(1) ... utime(11) stime(12).
    let ppid = fields.get(1)?.parse().ok()?;
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let tps = ticks_per_second();
    Some((
        ppid,
        Duration::from_secs(ticks / tps)
            + Duration::from_nanos((ticks % tps) * 1_000_000_000 / tps),
    ))
}

fn process_cpu(pid: u32) -> Option<Duration> {
    stat(pid).map(|(_, cpu)| cpu)
}

/// CPU of `root` and every live process below it.
fn tree_cpu(root: u32) -> Option<Duration> {
    let mut total = process_cpu(root)?;
    let mut parents = vec![root];
    let all: Vec<(u32, u32, Duration)> = std::fs::read_dir("/proc")
        .ok()?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| stat(pid).map(|(ppid, cpu)| (pid, ppid, cpu)))
        .collect();
    while let Some(parent) = parents.pop() {
        for (pid, ppid, cpu) in &all {
            if *ppid == parent {
                total += *cpu;
                parents.push(*pid);
            }
        }
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burning_cpu_shows_in_the_harness_figure() {
        let mark = CpuMark::now(None);
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < Duration::from_millis(300) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        let per = mark.per_op(None, 1);
        assert_eq!(per.cluster_us, None);
        // Some of those 300 ms were ours (the machine may be shared).
        assert!(per.harness_us.unwrap() > 0.0);
    }

    #[test]
    fn a_child_process_counts_toward_its_parent() {
        let me = std::process::id();
        assert!(tree_cpu(me).unwrap() >= process_cpu(me).unwrap());
    }
}
