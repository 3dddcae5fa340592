//! The `fastchat` command: parses flags and calls the libraries.

mod allocator;
mod bench;
mod cluster;
mod output;
mod progress;
mod user;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// End-to-end encrypted terminal messenger over QUIC.
#[derive(Parser)]
#[command(name = "fastchat", version, about)]
struct Cli {
    /// The user's home (keystore, downloads); default $FASTCHAT_HOME, else the platform data dir.
    #[arg(long, global = true, env = "FASTCHAT_HOME")]
    home: Option<PathBuf>,

    /// More log output (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start a local cluster (certificates, balancer, node, SQLite); runs until Ctrl-C.
    Up(cluster::UpArgs),
    /// Make a cluster CA and a node certificate signed by it.
    Certs(cluster::CertsArgs),
    /// Run a balancer.
    Balancer(cluster::BalancerArgs),
    /// Run a node.
    Node(cluster::NodeArgs),
    /// Make an identity on this machine and register it with a cluster.
    Register(user::RegisterArgs),
    /// Friends: send or accept requests, list them.
    #[command(subcommand)]
    Friend(user::FriendCommand),
    /// Groups: create, add, kick, list.
    #[command(subcommand)]
    Group(user::GroupCommand),
    /// Send an end-to-end encrypted text to a friend or a group.
    Send(user::SendArgs),
    /// Receive and print what was sent to you.
    Recv(user::RecvArgs),
    /// Show the safety number to compare with a friend.
    Fingerprint(user::FingerprintArgs),
    /// Open the full-screen chat.
    Chat,
    /// The cluster's nodes, their load and the balancer's strategy.
    Status(user::StatusArgs),
    /// Load-test a cluster (see BENCHMARKS.md).
    Bench(bench::BenchArgs),
}

fn init_logging(server: bool, verbose: u8) {
    // The NATS client narrates every (re)connect at info; our bus says it once.
    let default = match (server, verbose) {
        (_, 2..) => "debug",
        (true, _) | (false, 1) => "info,async_nats=warn",
        (false, 0) => "warn",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("FASTCHAT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn init_chat_logging(home: Option<PathBuf>, verbose: u8) {
    let Some(dir) = home.or_else(|| dirs::data_dir().map(|d| d.join("fastchat"))) else {
        return;
    };
    let log = dir.join("chat.log");
    // The home is the user's alone (0700, files 0600), the log included.
    if fastchat_client::private::create_dir(&dir).is_err()
        || fastchat_client::private::create_file(&log).is_err()
    {
        return;
    }
    let Ok(file) = std::fs::OpenOptions::new().append(true).open(&log) else {
        return;
    };
    let level = if verbose > 0 { "debug" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("FASTCHAT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::sync::Mutex::new(file))
        .with_ansi(false)
        .init();
}

pub(crate) fn home(cli_home: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    cli_home
        .or_else(|| dirs::data_dir().map(|d| d.join("fastchat")))
        .ok_or_else(|| anyhow::anyhow!("cannot find a home directory; pass --home DIR"))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Up(args) => cluster::up(args).await,
        Command::Certs(args) => cluster::certs(args),
        Command::Balancer(args) => cluster::balancer(args).await,
        Command::Node(args) => cluster::node(args).await,
        Command::Register(args) => user::register(&home(cli.home)?, args).await,
        Command::Friend(cmd) => user::friend(&home(cli.home)?, cmd).await,
        Command::Group(cmd) => user::group(&home(cli.home)?, cmd).await,
        Command::Send(args) => user::send(&home(cli.home)?, args).await,
        Command::Recv(args) => user::recv(&home(cli.home)?, args).await,
        Command::Fingerprint(args) => user::fingerprint(&home(cli.home)?, args).await,
        Command::Bench(args) => bench::run(args).await,
        Command::Chat => {
            let home = home(cli.home)?;
            let passphrase = user::passphrase_for(&home)?;
            fastchat_tui::run(&home, passphrase).await
        }
        Command::Status(args) => user::status(cli.home, args).await,
    }
}

/// The async runtime a command runs on. Its worker count is chosen by role
/// (DESIGN.md, "Threads"): a tokio worker that finds work wakes an idle
/// sibling to share it, and at a paced load that cost each text more CPU
/// than the text itself.
fn runtime(command: &Command) -> std::io::Result<tokio::runtime::Runtime> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let workers = match command {
        // A node's store writer, blob files and the kernel's UDP path take
        // the other half.
        Command::Up(args) => args.workers().unwrap_or(cores / 2),
        Command::Node(args) => args.workers().unwrap_or(cores / 2),
        Command::Balancer(_) => cores / 2,
        // The harness hosts hundreds of clients at once.
        Command::Bench(_) => cores,
        // One user's client.
        _ => 1,
    };
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers.max(1))
        .enable_all()
        .build()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let server = matches!(
        cli.command,
        Command::Up(_) | Command::Balancer(_) | Command::Node(_)
    );
    // Logs would scribble over the full-screen chat; send them to a file there.
    if matches!(cli.command, Command::Chat) {
        init_chat_logging(cli.home.clone(), cli.verbose);
    } else {
        init_logging(server, cli.verbose);
    }
    let runtime = match runtime(&cli.command) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
