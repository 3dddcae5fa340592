//! A scenario's figures: what JSON and the summary table show.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latency percentiles, in microseconds.
#[derive(Serialize, Clone, Debug, Default)]
pub struct Latency {
    /// Median.
    pub p50_us: u64,
    /// 90th percentile.
    pub p90_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// Largest.
    pub max_us: u64,
    /// Samples.
    pub samples: u64,
}

impl Latency {
    /// Reads the percentiles off a histogram of microseconds.
    pub fn from_histogram(h: &Histogram<u64>) -> Self {
        Self {
            p50_us: h.value_at_quantile(0.5),
            p90_us: h.value_at_quantile(0.9),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
            samples: h.len(),
        }
    }
}

/// One scenario's outcome.
#[derive(Serialize, Clone, Debug, Default)]
pub struct ScenarioResult {
    /// Scenario name.
    pub scenario: String,
    /// Simulated clients.
    pub clients: usize,
    /// Operations measured (messages, deliveries, logins, bytes).
    pub operations: u64,
    /// What an operation is.
    pub unit: String,
    /// Wall-clock seconds of the measured part.
    pub seconds: f64,
    /// Operations per second.
    pub throughput: f64,
    /// Latency, where measured.
    pub latency: Option<Latency>,
    /// Failed operations.
    pub errors: u64,
    /// Operations that never completed.
    pub lost: u64,
    /// Peak resident memory of the cluster process (KiB), when local.
    pub node_peak_rss_kib: Option<u64>,
    /// Resident memory of the cluster process at the end (KiB), when local.
    pub node_rss_kib: Option<u64>,
    /// Peak resident memory of the harness (KiB).
    pub harness_peak_rss_kib: Option<u64>,
    /// CPU microseconds the cluster's processes spent per operation in the
    /// measured part; `None` with `--server` (the node is out of sight).
    pub node_cpu_us_per_op: Option<f64>,
    /// CPU microseconds the harness (all simulated clients) spent per operation.
    pub harness_cpu_us_per_op: Option<f64>,
    /// What one operation of the CPU figures is, when not `unit`.
    pub cpu_unit: Option<String>,
    /// Throughput as a fraction of the `raw-quic` counterpart from the same run.
    pub ratio_to_raw: Option<f64>,
    /// Throughput samples (seconds since start, operations done), for plots.
    pub timeline: Vec<(f64, u64)>,
    /// Anything else worth knowing.
    pub notes: Vec<String>,
    /// For `raw-quic`: its two figures (messages/s, bytes/s).
    pub raw: Option<(f64, f64)>,
    /// Latency histogram buckets (upper bound µs, count), for plots.
    pub histogram: Vec<(u64, u64)>,
}

impl ScenarioResult {
    /// A result with the throughput computed from `operations` and `elapsed`.
    pub fn new(
        scenario: &str,
        clients: usize,
        operations: u64,
        unit: &str,
        elapsed: Duration,
    ) -> Self {
        let seconds = elapsed.as_secs_f64();
        Self {
            scenario: scenario.to_string(),
            clients,
            operations,
            unit: unit.to_string(),
            seconds,
            throughput: if seconds > 0.0 {
                operations as f64 / seconds
            } else {
                0.0
            },
            ..Default::default()
        }
    }

    /// Records the CPU spent per operation.
    pub fn set_cpu(&mut self, cpu: crate::cpu::CpuPerOp) {
        self.node_cpu_us_per_op = cpu.cluster_us;
        self.harness_cpu_us_per_op = cpu.harness_us;
    }

    /// Adds the latency percentiles and a coarse histogram of `h`.
    pub fn with_latency(mut self, h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return self;
        }
        self.latency = Some(Latency::from_histogram(h));
        self.histogram = h
            .iter_log(10, 1.5)
            .map(|v| (v.value_iterated_to(), v.count_since_last_iteration()))
            .filter(|(_, c)| *c > 0)
            .collect();
        self
    }
}

/// Sets `ratio_to_raw` from an earlier `raw-quic` result, where the
/// scenario has a raw counterpart.
pub fn attach_ratio(result: &mut ScenarioResult, earlier: &[ScenarioResult]) {
    // Crossing nodes is judged against the same load on one node.
    if result.scenario == "cross-node"
        && let Some(ring) = earlier.iter().find(|r| r.scenario == "ring")
        && ring.throughput > 0.0
    {
        result.notes.push(format!(
            "{:.2} of the single-node ring in this run ({:.0} vs {:.0} msg/s)",
            result.throughput / ring.throughput,
            result.throughput,
            ring.throughput
        ));
    }
    let Some((msgs, bytes)) = earlier.iter().find_map(|r| r.raw) else {
        return;
    };
    result.ratio_to_raw = match result.scenario.as_str() {
        "ring" | "cross-node" | "fanout" | "drain" if msgs > 0.0 => Some(result.throughput / msgs),
        "image" if bytes > 0.0 => Some(result.throughput / bytes),
        _ => None,
    };
}

fn human(x: f64, unit: &str) -> String {
    if unit == "bytes" {
        return format!("{:.0} MB/s", x / 1e6);
    }
    if x >= 1e6 {
        format!("{:.2}M {unit}/s", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.1}k {unit}/s", x / 1e3)
    } else {
        format!("{x:.0} {unit}/s")
    }
}

/// A CPU figure for the table.
fn cpu(us: Option<f64>) -> String {
    match us {
        Some(x) if x < 10.0 => format!("{x:.2}"),
        Some(x) => format!("{x:.1}"),
        None => "-".into(),
    }
}

/// Prints the summary table.
pub fn print_table(results: &[ScenarioResult]) {
    println!(
        "{:<9} {:>7} {:>22} {:>8} {:>8} {:>8} {:>8} {:>9} {:>6} {:>5} {:>11} {:>7} {:>10} {:>10}",
        "scenario",
        "clients",
        "throughput",
        "p50 µs",
        "p90 µs",
        "p99 µs",
        "p99.9",
        "max µs",
        "errors",
        "lost",
        "node peak",
        "vs raw",
        "node µs/op",
        "harn µs/op"
    );
    for r in results {
        let l = r.latency.clone().unwrap_or_default();
        let lat = |v: u64| {
            if r.latency.is_some() {
                v.to_string()
            } else {
                "-".into()
            }
        };
        let throughput = match r.raw {
            Some((m, b)) => format!("{} | {:.0} MB/s", human(m, "msg"), b / 1e6),
            None => human(r.throughput, &r.unit),
        };
        println!(
            "{:<9} {:>7} {:>22} {:>8} {:>8} {:>8} {:>8} {:>9} {:>6} {:>5} {:>11} {:>7} {:>10} {:>10}",
            r.scenario,
            r.clients,
            throughput,
            lat(l.p50_us),
            lat(l.p90_us),
            lat(l.p99_us),
            lat(l.p999_us),
            lat(l.max_us),
            r.errors,
            r.lost,
            r.node_peak_rss_kib
                .map(|k| format!("{:.1} MiB", k as f64 / 1024.0))
                .unwrap_or_else(|| "-".into()),
            r.ratio_to_raw
                .map(|x| format!("{x:.2}"))
                .unwrap_or_else(|| "-".into()),
            cpu(r.node_cpu_us_per_op),
            cpu(r.harness_cpu_us_per_op),
        );
        if let Some(unit) = &r.cpu_unit {
            println!("          note: CPU figures are per {unit}");
        }
        for note in &r.notes {
            println!("          note: {note}");
        }
    }
}
