//! The fastchat load harness. Every scenario drives the real client SDK over
//! real QUIC (many simulated clients in one process) against a cluster it
//! starts itself (`--local`, a separate `fastchat up` process whose memory
//! is measured) or one it is pointed at. `raw-quic` measures plain quinn in
//! the same run, so each figure can be read as a fraction of the physical
//! limit of this machine at this moment.

pub mod cpu;
mod env;
mod plot;
mod report;
mod scenario;

use std::path::PathBuf;

pub use report::ScenarioResult;

/// Every scenario `all` runs, in order.
pub const SCENARIOS: [&str; 8] = [
    "raw-quic",
    "ring",
    "cross-node",
    "latency",
    "image",
    "fanout",
    "drain",
    "connect",
];

/// Where the cluster under test is.
#[derive(Clone, Debug)]
pub enum Target {
    /// Start one with this `fastchat` binary, in a temp dir.
    Local {
        /// The `fastchat` executable.
        binary: PathBuf,
    },
    /// Use a running one.
    Remote {
        /// The balancer's address.
        server: String,
        /// The cluster CA.
        ca: PathBuf,
    },
}

/// What to run and how big.
#[derive(Clone, Debug)]
pub struct Options {
    /// A scenario name, or `all`.
    pub scenario: String,
    /// The cluster.
    pub target: Target,
    /// Simulated clients (scenario default if unset).
    pub clients: Option<usize>,
    /// Messages per client (or in all, for single-sender scenarios).
    pub messages: Option<usize>,
    /// Paced rate for `latency`, messages per second in all.
    pub rate: Option<u64>,
    /// Message size for text scenarios, image size for `image`.
    pub size: Option<u64>,
    /// Seconds for `latency`.
    pub duration: Option<f64>,
    /// Print one JSON document per scenario instead of the table.
    pub json: bool,
    /// Write all results as JSON here, and plots next to it.
    pub out: Option<PathBuf>,
}

/// Runs the chosen scenario(s) and prints the results.
pub async fn run(options: Options) -> anyhow::Result<Vec<ScenarioResult>> {
    let names: Vec<&str> = if options.scenario == "all" {
        SCENARIOS.to_vec()
    } else if SCENARIOS.contains(&options.scenario.as_str()) {
        vec![options.scenario.as_str()]
    } else {
        anyhow::bail!(
            "unknown scenario '{}': choose one of {} or all",
            options.scenario,
            SCENARIOS.join(", ")
        );
    };
    let env = env::Env::start(&options.target, options.size.unwrap_or(0), 1).await?;
    let mut results: Vec<ScenarioResult> = Vec::new();
    for name in names {
        let mut result = scenario::run(name, &env, &options).await?;
        report::attach_ratio(&mut result, &results);
        if options.json {
            println!("{}", serde_json::to_string(&result)?);
        }
        results.push(result);
    }
    if !options.json {
        report::print_table(&results);
    }
    if let Some(out) = &options.out {
        if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(out, serde_json::to_string_pretty(&results)?)?;
        for r in &results {
            plot::write(out, r)?;
        }
    }
    env.stop().await;
    Ok(results)
}
