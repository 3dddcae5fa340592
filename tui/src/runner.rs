//! Runs the TUI: the terminal (raw mode, alternate screen, restored on exit
//! and on panic), a thread reading keys, and the SDK's events. When the node
//! goes away the SDK fails over through the balancer; the screen says so,
//! and anything typed meanwhile is sent once it is back.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fastchat_client::{AttachmentKind, Client, Conversation, PeerState, Recipient};
use ratatui::DefaultTerminal;
use ratatui::crossterm::event::{self, Event, KeyEventKind};
use tokio::sync::mpsc;

use crate::app::{Action, App, Row, Transfer};
use crate::preview::{Preview, Previewer};
use crate::ui;

/// How many history entries the open conversation loads.
const HISTORY: usize = 300;

/// What background work reports back.
enum Report {
    Notice(String),
    Refresh,
    Overlay(String, Vec<String>),
    /// A received image decoded for the preview pane.
    Preview(String, image::DynamicImage),
}

/// The newest received image of the open conversation, if any.
fn newest_image(app: &App) -> Option<String> {
    app.messages
        .iter()
        .rev()
        .find(|m| m.kind == fastchat_client::InboxKind::Image && !m.outgoing)
        .and_then(|m| m.path.clone())
}

/// Opens the chat for the identity in `home` until the user quits.
pub async fn run(home: &Path, passphrase: Option<String>) -> anyhow::Result<()> {
    // Connect before touching the terminal, so an error is a plain sentence.
    let client = Client::connect_with_passphrase(home, passphrase.as_deref()).await?;
    // Ask the terminal about image protocols before raw mode and the key
    // reader take over (the query reads its answers from stdin).
    let previewer = Previewer::detect();
    let mut terminal = ratatui::try_init()?;
    let result = event_loop(&mut terminal, client, previewer).await;
    ratatui::restore();
    result
}

fn conversation_rows(client: &Client) -> anyhow::Result<Vec<Row>> {
    let unread = client.unread_counts()?;
    let count = |c: &Conversation| {
        unread
            .iter()
            .find(|(k, _)| k == c)
            .map(|(_, n)| *n)
            .unwrap_or(0)
    };
    let mut rows = Vec::new();
    for p in client.peers()? {
        if p.state != PeerState::Requested {
            let c = Conversation::Friend(p.name.clone());
            rows.push(Row {
                unread: count(&c),
                conversation: c,
            });
        }
    }
    for g in client.groups()? {
        let c = Conversation::Group(g.name.clone());
        rows.push(Row {
            unread: count(&c),
            conversation: c,
        });
    }
    Ok(rows)
}

fn refresh(app: &mut App, client: &Client) {
    match conversation_rows(client) {
        Ok(rows) => app.set_rows(rows),
        Err(e) => app.notice(e.to_string()),
    }
    app.names = client
        .peers()
        .map(|p| p.into_iter().map(|p| p.name).collect())
        .unwrap_or_default();
    if let Some(c) = app.current().cloned() {
        let _ = client.mark_read(&c);
        if let Some(row) = app.rows.get_mut(app.selected) {
            row.unread = 0;
        }
        match client.history(&c, HISTORY) {
            Ok(m) => app.messages = m,
            Err(e) => app.notice(e.to_string()),
        }
    } else {
        app.messages.clear();
    }
}

fn recipient(c: &Conversation) -> Recipient {
    match c {
        Conversation::Friend(n) => Recipient::Friend(n.clone()),
        Conversation::Group(g) => Recipient::Group(g.clone()),
    }
}

async fn event_loop(
    terminal: &mut DefaultTerminal,
    client: Client,
    previewer: Previewer,
) -> anyhow::Result<()> {
    let client = Arc::new(client);
    let mut app = App::new(client.name());
    let mut preview: Option<Preview> = None;
    let mut wanted_preview: Option<String> = None;
    let (keys_tx, mut keys) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        while let Ok(ev) = event::read() {
            if keys_tx.send(ev).is_err() {
                break;
            }
        }
    });
    let (reports_tx, mut reports) = mpsc::unbounded_channel::<Report>();
    let mut inbox = client.subscribe_changes();
    let mut progress = client.subscribe_progress();
    let mut unsent: Vec<(Conversation, String)> = Vec::new();
    let mut relinks = client.subscribe_relinks();
    let mut ticker = tokio::time::interval(Duration::from_millis(500));

    let start = |client: &Arc<Client>, app: &mut App| {
        app.connected = true;
        app.status = format!("node {} · connected", client.node_addr());
        let (c, tx) = (client.clone(), reports_tx.clone());
        tokio::spawn(async move {
            // Take in what waited for us, then any images it announced.
            if let Err(e) = c.sync().await {
                let _ = tx.send(Report::Notice(e.to_string()));
            }
            let _ = tx.send(Report::Refresh);
            let _ = c.wait_downloads(Duration::from_secs(30)).await;
            let _ = tx.send(Report::Refresh);
        });
    };
    start(&client, &mut app);
    refresh(&mut app, &client);

    loop {
        // Decode the open conversation's newest image off the UI thread.
        let newest = newest_image(&app);
        if newest != wanted_preview {
            wanted_preview = newest.clone();
            preview = None;
            if let Some(path) = newest {
                let tx = reports_tx.clone();
                tokio::task::spawn_blocking(move || {
                    if let Some(img) = crate::preview::decode(std::path::Path::new(&path)) {
                        let _ = tx.send(Report::Preview(path, img));
                    }
                });
            }
        }
        terminal.draw(|f| ui::draw(f, &app, preview.as_ref()))?;
        let mut action = None;
        tokio::select! {
            Some(ev) = keys.recv() => match ev {
                Event::Key(k) if k.kind == KeyEventKind::Press => action = app.on_key(k),
                _ => {}
            },
            Ok(_) = inbox.recv() => refresh(&mut app, &client),
            Ok(p) = progress.recv() => {
                if p.done >= p.total {
                    app.transfers.remove(&p.id.0);
                } else {
                    let arrow = match p.direction {
                        fastchat_client::Direction::Up => "to",
                        fastchat_client::Direction::Down => "from",
                    };
                    app.transfers.insert(p.id.0, Transfer {
                        label: format!("{} {arrow} {}", p.title, p.peer),
                        done: p.done,
                        total: p.total,
                    });
                }
            },
            Some(r) = reports.recv() => match r {
                Report::Notice(n) => app.notice(n),
                Report::Refresh => refresh(&mut app, &client),
                Report::Overlay(t, lines) => app.overlay = Some((t, lines)),
                Report::Preview(path, img) => {
                    if wanted_preview.as_deref() == Some(path.as_str()) {
                        let width = terminal.size()?.width.saturating_sub(22 + 2);
                        preview = previewer.encode(&path, img, width);
                    }
                }
            },
            Ok(()) = relinks.changed() => {
                start(&client, &mut app);
                app.notice("reconnected");
                for (conv, text) in std::mem::take(&mut unsent) {
                    perform(&client, &mut app, Action::Send(conv, text), &reports_tx, &mut unsent);
                }
                refresh(&mut app, &client);
            },
            _ = ticker.tick() => {
                if !client.is_connected() && app.connected {
                    app.connected = false;
                    app.status = "connection lost · reconnecting through the balancer…".into();
                }
            }
        }
        match action {
            Some(Action::Quit) => break,
            Some(Action::Send(c, t)) if !client.is_connected() => {
                app.notice("not connected: the message will be sent on reconnect");
                unsent.push((c, t));
            }
            Some(a) => perform(&client, &mut app, a, &reports_tx, &mut unsent),
            None => {}
        }
    }
    // Tell the node we left; tasks still holding the client see it closed.
    client.close().await;
    Ok(())
}

fn perform(
    client: &Arc<Client>,
    app: &mut App,
    action: Action,
    reports: &mpsc::UnboundedSender<Report>,
    unsent: &mut Vec<(Conversation, String)>,
) {
    let (c, tx) = (client.clone(), reports.clone());
    match action {
        Action::Open(_) => refresh(app, client),
        Action::Send(conv, text) => {
            if !client.is_connected() {
                unsent.push((conv, text));
                return;
            }
            tokio::spawn(async move {
                let r = match &conv {
                    Conversation::Friend(n) => c.send_text(n, &text).await.map(|_| ()),
                    Conversation::Group(g) => c.send_group_text(g, &text).await.map(|_| ()),
                };
                if let Err(e) = r {
                    let _ = tx.send(Report::Notice(format!("not sent: {e}")));
                }
                let _ = tx.send(Report::Refresh);
            });
        }
        Action::Attach(conv, path, image) => {
            tokio::spawn(async move {
                let kind = if image {
                    AttachmentKind::Image
                } else {
                    AttachmentKind::File
                };
                let path = PathBuf::from(path);
                let r = c
                    .send_attachment(&recipient(&conv), &path, kind, &|_, _| {})
                    .await;
                let line = match r {
                    Ok(r) => format!("sent {} ({} bytes)", path.display(), r.bytes),
                    Err(e) => format!("not sent: {e}"),
                };
                let _ = tx.send(Report::Notice(line));
            });
        }
        Action::AddFriend(name) => {
            tokio::spawn(async move {
                let line = match c.friend_add(&name).await {
                    Ok(fastchat_client::FriendAdd::RequestSent) => {
                        format!("friend request sent to {name}")
                    }
                    Ok(fastchat_client::FriendAdd::Accepted) => {
                        format!("you and {name} are now friends")
                    }
                    Err(e) => e.to_string(),
                };
                let _ = tx.send(Report::Notice(line));
                let _ = tx.send(Report::Refresh);
            });
        }
        Action::GroupCreate(name) => {
            tokio::spawn(async move {
                let line = match c.group_create(&name).await {
                    Ok(_) => format!("created #{name}; /chat #{name} then /group add NAME"),
                    Err(e) => e.to_string(),
                };
                let _ = tx.send(Report::Notice(line));
                let _ = tx.send(Report::Refresh);
            });
        }
        Action::GroupAdd(group, names) => {
            tokio::spawn(async move {
                let refs: Vec<&str> = names.iter().map(String::as_str).collect();
                let line = match c.group_add(&group, &refs).await {
                    Ok(()) => format!("added {} to #{group}", names.join(", ")),
                    Err(e) => e.to_string(),
                };
                let _ = tx.send(Report::Notice(line));
                let _ = tx.send(Report::Refresh);
            });
        }
        Action::Kick(group, name) => {
            tokio::spawn(async move {
                let line = match c.group_kick(&group, &name).await {
                    Ok(()) => format!("removed {name} from #{group}; the others have a new key"),
                    Err(e) => e.to_string(),
                };
                let _ = tx.send(Report::Notice(line));
                let _ = tx.send(Report::Refresh);
            });
        }
        Action::Search(words) => match client.search(&words, 50) {
            Ok(hits) if hits.is_empty() => app.notice(format!("nothing matches \"{words}\"")),
            Ok(hits) => {
                let lines = hits
                    .iter()
                    .map(|h| {
                        let place = match &h.conversation {
                            Conversation::Friend(n) => n.clone(),
                            Conversation::Group(g) => format!("#{g}"),
                        };
                        format!("{place:<12} {}: {}", h.from, h.text)
                    })
                    .collect();
                app.overlay = Some((format!("search \"{words}\""), lines));
            }
            Err(e) => app.notice(e.to_string()),
        },
        Action::Verify(name) => match client.fingerprint(&name) {
            Ok(number) => {
                let _ = tx.send(Report::Overlay(
                    format!("safety number with {name}"),
                    vec![
                        number,
                        String::new(),
                        format!("Compare it with {name}'s over a channel you trust."),
                        "If it differs, a key was swapped.".into(),
                    ],
                ));
            }
            Err(e) => app.notice(e.to_string()),
        },
        Action::Quit => {}
    }
}
