//! Client commands: `register`, `friend`, `send`, `recv`, `fingerprint`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Subcommand};
use fastchat_client::{Client, FriendAdd, PeerState};

use crate::output;

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
pub struct SendArgs {
    /// The friend to send to.
    #[arg(long)]
    to: Option<String>,
    /// The group to send to.
    #[arg(long)]
    group: Option<String>,
    /// The message.
    text: String,
}

#[derive(Subcommand)]
pub enum GroupCommand {
    /// Make a group with you as admin.
    Create {
        /// Its name (unique on the cluster).
        name: String,
    },
    /// Add a friend to a group you administer (moves the group to a new key).
    Add {
        /// The group.
        group: String,
        /// The friend to add.
        member: String,
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
    let client = Client::register(home, &args.name, &args.server, &args.ca).await?;
    println!(
        "registered as {} (identity stored in {})",
        client.name(),
        home.display()
    );
    client.close().await;
    Ok(())
}

pub async fn friend(home: &Path, cmd: FriendCommand) -> anyhow::Result<()> {
    let client = Client::connect(home).await?;
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
    client.close().await;
    Ok(())
}

pub async fn send(home: &Path, args: SendArgs) -> anyhow::Result<()> {
    let client = Client::connect(home).await?;
    let id = match (&args.to, &args.group) {
        (Some(to), _) => client.send_text(to, &args.text).await?,
        (None, Some(group)) => client.send_group_text(group, &args.text).await?,
        (None, None) => unreachable!("clap requires --to or --group"),
    };
    println!("sent {id}");
    client.close().await;
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
    let client = Client::connect(home).await?;
    let mut events = client.subscribe();
    client.sync().await?;
    print_unshown(&client, args.json)?;
    if let Some(wait) = args.wait {
        let wait = Duration::from_secs(wait);
        use tokio::sync::broadcast::error::RecvError;
        // Ends after `wait` with nothing new (or if the client shuts down).
        while let Ok(Ok(_) | Err(RecvError::Lagged(_))) =
            tokio::time::timeout(wait, events.recv()).await
        {
            print_unshown(&client, args.json)?;
        }
    }
    client.close().await;
    Ok(())
}

pub async fn fingerprint(home: &Path, args: FingerprintArgs) -> anyhow::Result<()> {
    let client = Client::connect(home).await?;
    client.sync().await?;
    println!(
        "safety number for you and {}:\n{}\ncompare it with theirs over a channel you trust; if it differs, a key was swapped",
        args.name,
        client.fingerprint(&args.name)?
    );
    client.close().await;
    Ok(())
}

pub async fn group(home: &Path, cmd: GroupCommand) -> anyhow::Result<()> {
    let client = Client::connect(home).await?;
    // Membership and keys may be waiting at the node; take them in first.
    client.sync().await?;
    match cmd {
        GroupCommand::Create { name } => {
            let id = client.group_create(&name).await?;
            println!("created group {name} (id {id}); you are its admin");
        }
        GroupCommand::Add { group, member } => {
            client.group_add(&group, &member).await?;
            println!("added {member} to {group}");
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
    client.close().await;
    Ok(())
}
