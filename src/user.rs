//! Client commands: `register`, `friend`, `send`, `recv`, `fingerprint`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Subcommand};
use fastchat_client::{AttachmentKind, Client, FriendAdd, PeerState, Recipient};

use crate::{output, progress};

#[derive(Args)]
pub struct RegisterArgs {
    /// Your user name (lower-case letters, digits, '_', '.', '-').
    #[arg(long)]
    name: String,
    /// The balancer's address (HOST:PORT).
    #[arg(long)]
    server: String,
    /// The cluster CA certificate (PEM) you were given.
    #[arg(long)]
    ca: PathBuf,
    /// Protect the keystore with a passphrase (asked for, or $FASTCHAT_PASSPHRASE).
    #[arg(long)]
    passphrase: bool,
}

/// The passphrase scripts pass in the environment.
pub fn env_passphrase() -> Option<String> {
    std::env::var("FASTCHAT_PASSPHRASE").ok()
}

fn prompt(what: &str) -> anyhow::Result<String> {
    if !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        anyhow::bail!("a passphrase is needed: set FASTCHAT_PASSPHRASE or run in a terminal");
    }
    Ok(rpassword::prompt_password(what)?)
}

/// The passphrase for an existing keystore: from the environment, or asked
/// for when the keystore turns out to need one.
pub fn passphrase_for(home: &Path) -> anyhow::Result<Option<String>> {
    if let Some(p) = env_passphrase() {
        return Ok(Some(p));
    }
    match fastchat_client::keystore::Keystore::open(home) {
        Ok(ks) if ks.is_protected() => Ok(Some(prompt("keystore passphrase: ")?)),
        _ => Ok(None),
    }
}

/// Connects with the identity in `home`, unlocking its keystore if needed.
pub async fn connect(home: &Path) -> anyhow::Result<Client> {
    let passphrase = passphrase_for(home)?;
    Ok(Client::connect_with_passphrase(home, passphrase.as_deref()).await?)
}

#[derive(Subcommand)]
pub enum FriendCommand {
    /// Ask NAME to be friends, or accept NAME's pending request.
    Add {
        /// Who.
        name: String,
    },
    /// Friends and pending requests, with safety numbers.
    List,
}

#[derive(Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["to", "group"])))]
#[command(group(clap::ArgGroup::new("content").required(true).args(["text", "image", "file"])))]
pub struct SendArgs {
    /// The friend to send to.
    #[arg(long)]
    to: Option<String>,
    /// The group to send to.
    #[arg(long)]
    group: Option<String>,
    /// An image to send (PNG, JPEG, GIF, WebP, ...).
    #[arg(long)]
    image: Option<PathBuf>,
    /// Any file to send.
    #[arg(long)]
    file: Option<PathBuf>,
    /// The message.
    text: Option<String>,
}

#[derive(Subcommand)]
pub enum GroupCommand {
    /// Make a group with you as admin.
    Create {
        /// Its name (unique on the cluster).
        name: String,
    },
    /// Add friends to a group you administer (moves the group to a new key).
    Add {
        /// The group.
        group: String,
        /// The friends to add.
        #[arg(required = true)]
        members: Vec<String>,
    },
    /// Remove a member from a group you administer (the rest get a new key).
    Kick {
        /// The group.
        group: String,
        /// The member to remove.
        member: String,
    },
    /// Your groups: members, admin, current key epoch.
    List,
}

#[derive(Args)]
pub struct RecvArgs {
    /// Keep waiting until nothing new arrived for this many seconds.
    #[arg(long)]
    wait: Option<u64>,
    /// One JSON object a line.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct FingerprintArgs {
    /// The friend.
    name: String,
}

pub async fn register(home: &Path, args: RegisterArgs) -> anyhow::Result<()> {
    let client = if args.passphrase {
        let passphrase = match env_passphrase() {
            Some(p) => p,
            None => {
                let first = prompt("passphrase for the new keystore: ")?;
                if prompt("the same again: ")? != first {
                    anyhow::bail!("the two passphrases differ; nothing was registered");
                }
                first
            }
        };
        if passphrase.is_empty() {
            anyhow::bail!(
                "an empty passphrase protects nothing; choose one or leave out --passphrase"
            );
        }
        Client::register_with_passphrase(home, &args.name, &args.server, &args.ca, &passphrase)
            .await?
    } else {
        Client::register(home, &args.name, &args.server, &args.ca).await?
    };
    println!(
        "registered as {} (identity stored in {})",
        client.name(),
        home.display()
    );
    client.close().await;
    Ok(())
}

/// Runs `body` on a connection with the identity in `home`, then closes the
/// connection politely whether `body` succeeded or not: a command that fails
/// after logging in (say, a text to someone who is not a friend) still tells
/// the node it left, instead of leaving a session for the idle timeout.
async fn with_client(
    home: &Path,
    body: impl AsyncFnOnce(&Client) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let client = connect(home).await?;
    let result = body(&client).await;
    client.close().await;
    result
}

pub async fn friend(home: &Path, cmd: FriendCommand) -> anyhow::Result<()> {
    with_client(home, async |client| friend_on(client, cmd).await).await
}

async fn friend_on(client: &Client, cmd: FriendCommand) -> anyhow::Result<()> {
    match cmd {
        FriendCommand::Add { name } => match client.friend_add(&name).await? {
            FriendAdd::RequestSent => println!(
                "friend request sent to {name}; you can chat once they run `fastchat friend add {}`",
                client.name()
            ),
            FriendAdd::Accepted => println!("you and {name} are now friends"),
        },
        FriendCommand::List => {
            client.sync().await?;
            let peers = client.peers()?;
            if peers.is_empty() {
                println!("no friends yet; add one with `fastchat friend add NAME`");
            }
            for peer in peers {
                let state = match peer.state {
                    PeerState::Friend => "friend",
                    PeerState::Requested => "request sent",
                    PeerState::Incoming => "wants to be your friend",
                };
                println!(
                    "{:<20} {:<24} {}",
                    peer.name,
                    state,
                    client.fingerprint(&peer.name)?
                );
            }
        }
    }
    Ok(())
}

pub async fn send(home: &Path, args: SendArgs) -> anyhow::Result<()> {
    let recipient = match (&args.to, &args.group) {
        (Some(to), _) => Recipient::Friend(to.clone()),
        (None, Some(group)) => Recipient::Group(group.clone()),
        (None, None) => unreachable!("clap requires --to or --group"),
    };
    let attachment = match (&args.image, &args.file) {
        (Some(p), _) => Some((p.clone(), AttachmentKind::Image)),
        (None, Some(p)) => Some((p.clone(), AttachmentKind::File)),
        (None, None) => None,
    };
    let Some((path, kind)) = attachment else {
        return with_client(home, async |client| {
            let text = args.text.as_deref().unwrap_or_default();
            let id = match &recipient {
                Recipient::Friend(to) => client.send_text(to, text).await?,
                Recipient::Group(group) => client.send_group_text(group, text).await?,
            };
            println!("sent {id}");
            Ok(())
        })
        .await;
    };
    let bar = progress::bar(&path.display().to_string());
    let report = |done: u64, total: u64| progress::update(&bar, done, total);
    let mut client = connect(home).await?;
    let mut result = client
        .send_attachment(&recipient, &path, kind, &report)
        .await;
    // A dropped connection is not the end: reconnect and continue from
    // where the node stopped.
    for attempt in 1..=5u64 {
        match &result {
            Err(fastchat_client::ClientError::Disconnected) => {}
            _ => break,
        }
        tokio::time::sleep(Duration::from_millis(500 * attempt)).await;
        if let Ok(c) = connect(home).await {
            client = c;
            result = client
                .resume_uploads(&report)
                .await
                .map(|mut r| r.pop().expect("the upload was pending"));
        }
    }
    client.close().await;
    let report = result?;
    bar.finish_and_clear();
    println!("sent {} ({} bytes)", report.id, report.bytes);
    Ok(())
}

fn print_unshown(client: &Client, json: bool) -> anyhow::Result<()> {
    let items = client.unshown()?;
    if items.is_empty() {
        return Ok(());
    }
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        for item in &items {
            if json {
                writeln!(out, "{}", output::json(item))?;
            } else {
                writeln!(out, "{}", output::human(item))?;
            }
        }
        out.flush()?;
    }
    // Marked only after printing: a crash in between shows an item again
    // rather than never.
    let ids: Vec<[u8; 16]> = items.iter().map(|i| i.id).collect();
    client.mark_shown(&ids)?;
    Ok(())
}

pub async fn recv(home: &Path, args: RecvArgs) -> anyhow::Result<()> {
    with_client(home, async |client| recv_on(client, args).await).await
}

async fn recv_on(client: &Client, args: RecvArgs) -> anyhow::Result<()> {
    let mut events = client.subscribe();
    let bars = (!args.json && std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .then(|| progress::follow_downloads(client.subscribe_progress()));
    client.sync().await?;
    // Images that arrived take their bytes separately; wait for them (or
    // until the sender's upload stalls).
    let left = client.wait_downloads(Duration::from_secs(10)).await?;
    print_unshown(client, args.json)?;
    if left > 0 {
        eprintln!(
            "{left} image(s) are still arriving (the sender's upload is incomplete); they finish on a later recv"
        );
    }
    if let Some(wait) = args.wait {
        let wait = Duration::from_secs(wait);
        use tokio::sync::broadcast::error::RecvError;
        // Ends after `wait` with nothing new (or if the client shuts down).
        while let Ok(Ok(_) | Err(RecvError::Lagged(_))) =
            tokio::time::timeout(wait, events.recv()).await
        {
            print_unshown(client, args.json)?;
        }
    }
    if let Some(bars) = bars {
        bars.abort();
    }
    Ok(())
}

pub async fn fingerprint(home: &Path, args: FingerprintArgs) -> anyhow::Result<()> {
    with_client(home, async |client| fingerprint_on(client, args).await).await
}

async fn fingerprint_on(client: &Client, args: FingerprintArgs) -> anyhow::Result<()> {
    client.sync().await?;
    println!(
        "safety number for you and {}:\n{}\ncompare it with theirs over a channel you trust; if it differs, a key was swapped",
        args.name,
        client.fingerprint(&args.name)?
    );
    Ok(())
}

pub async fn group(home: &Path, cmd: GroupCommand) -> anyhow::Result<()> {
    with_client(home, async |client| group_on(client, cmd).await).await
}

async fn group_on(client: &Client, cmd: GroupCommand) -> anyhow::Result<()> {
    // Membership and keys may be waiting at the node; take them in first.
    client.sync().await?;
    match cmd {
        GroupCommand::Create { name } => {
            let id = client.group_create(&name).await?;
            println!("created group {name} (id {id}); you are its admin");
        }
        GroupCommand::Add { group, members } => {
            let names: Vec<&str> = members.iter().map(String::as_str).collect();
            client.group_add(&group, &names).await?;
            println!("added {} to {group}", members.join(", "));
        }
        GroupCommand::Kick { group, member } => {
            client.group_kick(&group, &member).await?;
            println!("removed {member} from {group}; the others have a new key");
        }
        GroupCommand::List => {
            let groups = client.groups()?;
            if groups.is_empty() {
                println!("no groups yet; make one with `fastchat group create NAME`");
            }
            for g in groups {
                let members: Vec<&str> = g.roster.iter().map(|r| r.name.as_str()).collect();
                let state = if g.member { "member" } else { "removed" };
                println!(
                    "{:<20} admin {:<16} epoch {:<4} {state:<8} members: {}",
                    g.name,
                    g.admin,
                    g.epoch,
                    members.join(", ")
                );
            }
        }
    }
    Ok(())
}

#[derive(Args)]
pub struct StatusArgs {
    /// The balancer (default: the one in the home's profile).
    #[arg(long, requires = "ca")]
    server: Option<String>,
    /// The cluster CA (default: the one in the home's profile).
    #[arg(long)]
    ca: Option<PathBuf>,
    /// One JSON document.
    #[arg(long)]
    json: bool,
}

pub async fn status(home: Option<PathBuf>, args: StatusArgs) -> anyhow::Result<()> {
    let (server, ca_pem) = match (args.server, args.ca) {
        (Some(server), Some(ca)) => (
            server,
            std::fs::read(&ca).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", ca.display()))?,
        ),
        _ => {
            let home = crate::home(home)?;
            let profile = fastchat_client::keystore::Keystore::profile_of(&home)?;
            (profile.server, profile.ca_pem)
        }
    };
    let ca = fastchat_certs::load_certs_pem(&ca_pem)
        .ok_or_else(|| anyhow::anyhow!("the CA file holds no PEM certificate"))?;
    let (strategy, nodes) = fastchat_client::cluster_status(&server, &ca).await?;
    if args.json {
        let nodes: Vec<_> = nodes
            .iter()
            .map(|n| {
                serde_json::json!({
                    "addr": n.addr, "connections": n.connections, "users": n.users,
                    "messages_per_sec": n.messages_per_sec, "messages_total": n.messages_total,
                    "queue_depth": n.queue_depth, "rss_kib": n.rss_kib,
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({ "balancer": server, "strategy": strategy, "nodes": nodes })
        );
        return Ok(());
    }
    println!(
        "balancer {server}, strategy {strategy}, {} live node(s)",
        nodes.len()
    );
    for n in nodes {
        println!(
            "  {:<22} {:>5} conns {:>5} users {:>8} msg/s {:>8} queued {:>8} KiB RSS",
            n.addr, n.connections, n.users, n.messages_per_sec, n.queue_depth, n.rss_kib
        );
    }
    Ok(())
}
