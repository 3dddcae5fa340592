//! `fastchat bench`: flags for the load harness.

use std::path::PathBuf;

use clap::Args;

#[derive(Args)]
pub struct BenchArgs {
    /// ring, cross-node, latency, image, fanout, drain, connect, raw-quic, or all.
    scenario: String,
    /// Start a local cluster for the run (the default without --server).
    #[arg(long)]
    local: bool,
    /// Use the cluster whose balancer is here.
    #[arg(long, requires = "ca", conflicts_with = "local")]
    server: Option<String>,
    /// That cluster's CA.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Simulated clients.
    #[arg(long)]
    clients: Option<usize>,
    /// Messages per client (or in all, for one-sender scenarios).
    #[arg(long)]
    messages: Option<usize>,
    /// Paced rate for `latency`, messages per second in all.
    #[arg(long)]
    rate: Option<u64>,
    /// Text size in bytes, or image size for `image`.
    #[arg(long)]
    size: Option<u64>,
    /// Seconds for `latency`.
    #[arg(long)]
    duration: Option<f64>,
    /// One JSON document per scenario on stdout.
    #[arg(long)]
    json: bool,
    /// Write all results as JSON to FILE, and a plot per scenario next to it.
    #[arg(long)]
    out: Option<PathBuf>,
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let target = match (args.server, args.ca) {
        (Some(server), Some(ca)) => fastchat_bench::Target::Remote { server, ca },
        _ => fastchat_bench::Target::Local {
            binary: std::env::current_exe()?,
        },
    };
    let options = fastchat_bench::Options {
        scenario: args.scenario,
        target,
        clients: args.clients,
        messages: args.messages,
        rate: args.rate,
        size: args.size,
        duration: args.duration,
        json: args.json,
        out: args.out,
    };
    let results = fastchat_bench::run(options).await?;
    let lost: u64 = results.iter().map(|r| r.lost).sum();
    if lost > 0 {
        anyhow::bail!("{lost} operations were lost");
    }
    Ok(())
}
