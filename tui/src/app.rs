//! The screen model: what the TUI shows and how keys change it. Pure: it
//! turns key presses into [`Action`]s for the runner and is fed what the
//! SDK reports, so it is tested without a terminal or a network.

use std::collections::BTreeMap;

use fastchat_client::{Conversation, HistoryEntry};
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

use crate::command::{self, Command};

/// Something the runner must do with the SDK.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Load this conversation's history and mark it read.
    Open(Conversation),
    /// Send a text.
    Send(Conversation, String),
    /// Send an image (`true`) or a file.
    Attach(Conversation, String, bool),
    /// Send or accept a friend request.
    AddFriend(String),
    /// Create a group.
    GroupCreate(String),
    /// Add members to a group.
    GroupAdd(String, Vec<String>),
    /// Remove a member from a group.
    Kick(String, String),
    /// Search history.
    Search(String),
    /// Show a safety number.
    Verify(String),
    /// Leave.
    Quit,
}

/// A conversation in the list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    /// Which conversation.
    pub conversation: Conversation,
    /// Unread items.
    pub unread: u64,
}

impl Row {
    /// How the list shows it.
    pub fn label(&self) -> String {
        match &self.conversation {
            Conversation::Friend(n) => n.clone(),
            Conversation::Group(g) => format!("#{g}"),
        }
    }
}

/// A transfer in progress.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transfer {
    /// Label: file and peer.
    pub label: String,
    /// Bytes done.
    pub done: u64,
    /// Bytes in all.
    pub total: u64,
}

/// The whole screen's state.
#[derive(Default)]
pub struct App {
    /// Our name.
    pub me: String,
    /// Conversations, in list order.
    pub rows: Vec<Row>,
    /// The selected row.
    pub selected: usize,
    /// The open conversation's history.
    pub messages: Vec<HistoryEntry>,
    /// What is being typed.
    pub input: String,
    /// Lines from the client itself (errors, confirmations), newest last.
    pub notices: Vec<String>,
    /// The status line.
    pub status: String,
    /// Whether the node connection is up.
    pub connected: bool,
    /// Transfers in progress, by id.
    pub transfers: BTreeMap<[u8; 16], Transfer>,
    /// A pop-up (help, search results, safety number), closed with Esc.
    pub overlay: Option<(String, Vec<String>)>,
    /// Names Tab can complete, besides conversations.
    pub names: Vec<String>,
}

impl App {
    /// An empty screen for `me`.
    pub fn new(me: &str) -> Self {
        Self {
            me: me.to_string(),
            status: "connecting…".into(),
            ..Default::default()
        }
    }

    /// The open conversation, if any.
    pub fn current(&self) -> Option<&Conversation> {
        self.rows.get(self.selected).map(|r| &r.conversation)
    }

    /// Replaces the conversation list, keeping the selection on the same
    /// conversation where it still exists.
    pub fn set_rows(&mut self, rows: Vec<Row>) {
        let current = self.current().cloned();
        self.rows = rows;
        if let Some(c) = current
            && let Some(i) = self.rows.iter().position(|r| r.conversation == c)
        {
            self.selected = i;
        }
        self.selected = self.selected.min(self.rows.len().saturating_sub(1));
    }

    /// Shows a line from the client.
    pub fn notice(&mut self, line: impl Into<String>) {
        self.notices.push(line.into());
        if self.notices.len() > 50 {
            self.notices.remove(0);
        }
    }

    fn select(&mut self, i: usize) -> Option<Action> {
        if i >= self.rows.len() {
            return None;
        }
        self.selected = i;
        self.rows[i].unread = 0;
        Some(Action::Open(self.rows[i].conversation.clone()))
    }

    fn find(&self, name: &str) -> Option<usize> {
        let name = name.trim_start_matches('#');
        let exact = |c: &Conversation| match c {
            Conversation::Friend(n) | Conversation::Group(n) => n == name,
        };
        self.rows.iter().position(|r| exact(&r.conversation))
    }

    fn open_group(&self) -> Result<String, String> {
        match self.current() {
            Some(Conversation::Group(g)) => Ok(g.clone()),
            _ => Err("open a group first (/chat #group)".into()),
        }
    }

    fn run_command(&mut self, line: &str) -> Option<Action> {
        let cmd = match command::parse(line) {
            Ok(c) => c,
            Err(why) => {
                self.notice(why);
                return None;
            }
        };
        let in_conversation =
            |app: &mut App, f: &dyn Fn(Conversation) -> Action| match app.current() {
                Some(c) => Some(f(c.clone())),
                None => {
                    app.notice("open a conversation first (/chat NAME)");
                    None
                }
            };
        match cmd {
            Command::Chat(name) => match self.find(&name) {
                Some(i) => self.select(i),
                None => {
                    self.notice(format!(
                        "no conversation with {name}; /add {name} to befriend them"
                    ));
                    None
                }
            },
            Command::AddFriend(n) => Some(Action::AddFriend(n)),
            Command::GroupCreate(n) => Some(Action::GroupCreate(n)),
            Command::GroupAdd(names) => match self.open_group() {
                Ok(g) => Some(Action::GroupAdd(g, names)),
                Err(why) => {
                    self.notice(why);
                    None
                }
            },
            Command::Kick(n) => match self.open_group() {
                Ok(g) => Some(Action::Kick(g, n)),
                Err(why) => {
                    self.notice(why);
                    None
                }
            },
            Command::Attach(path, image) => {
                in_conversation(self, &|c| Action::Attach(c, path.clone(), image))
            }
            Command::Search(w) => Some(Action::Search(w)),
            Command::Verify(n) => Some(Action::Verify(n)),
            Command::Help => {
                self.overlay = Some((
                    "help".into(),
                    command::HELP.iter().map(|s| s.to_string()).collect(),
                ));
                None
            }
            Command::Quit => Some(Action::Quit),
        }
    }

    fn complete(&mut self) {
        let start = self.input.rfind(' ').map(|i| i + 1).unwrap_or(0);
        let word = self.input[start..].to_string();
        if word.is_empty() || word.starts_with('/') && start == 0 {
            return;
        }
        let is_path = self.input.starts_with("/image ") || self.input.starts_with("/file ");
        let candidates: Vec<String> = if is_path {
            complete_path(&word)
        } else {
            let mut names: Vec<String> = self
                .rows
                .iter()
                .map(|r| match &r.conversation {
                    Conversation::Friend(n) => n.clone(),
                    Conversation::Group(g) => format!("#{g}"),
                })
                .chain(self.names.iter().cloned())
                .filter(|n| {
                    n.trim_start_matches('#')
                        .starts_with(word.trim_start_matches('#'))
                })
                .collect();
            names.sort();
            names.dedup();
            names
        };
        match candidates.as_slice() {
            [one] => {
                self.input.truncate(start);
                self.input.push_str(one);
                if !is_path {
                    self.input.push(' ');
                }
            }
            [] => {}
            many => {
                // As a shell does: type what they all share, list the rest.
                let shared = common_prefix(many);
                if shared.len() > word.len() {
                    self.input.truncate(start);
                    self.input.push_str(&shared);
                }
                // Paths are listed by their last part, as a shell does.
                let from = if is_path {
                    word.rfind('/').map(|i| i + 1).unwrap_or(0)
                } else {
                    0
                };
                let names: Vec<&str> = many.iter().map(|c| &c[from..]).collect();
                self.notice(names.join("  "));
            }
        }
    }

    /// Applies a key press; returns what the runner must do, if anything.
    pub fn on_key(&mut self, key: KeyEvent) -> Option<Action> {
        if key.modifiers.contains(KeyModifiers::CONTROL)
            && matches!(key.code, KeyCode::Char('c') | KeyCode::Char('d'))
        {
            return Some(Action::Quit);
        }
        if self.overlay.is_some() && matches!(key.code, KeyCode::Esc | KeyCode::Enter) {
            self.overlay = None;
            return None;
        }
        match key.code {
            KeyCode::Up => self.select(self.selected.saturating_sub(1)),
            KeyCode::Down => self.select(self.selected + 1),
            KeyCode::Tab => {
                self.complete();
                None
            }
            KeyCode::Backspace => {
                self.input.pop();
                None
            }
            KeyCode::Esc => {
                self.input.clear();
                None
            }
            KeyCode::Char(c) => {
                self.input.push(c);
                None
            }
            KeyCode::Enter => {
                let line = std::mem::take(&mut self.input);
                let line = line.trim();
                if line.is_empty() {
                    None
                } else if line.starts_with('/') {
                    self.run_command(line)
                } else {
                    let text = line.to_string();
                    match self.current().cloned() {
                        Some(c) => Some(Action::Send(c, text)),
                        None => {
                            self.notice("open a conversation first: /add NAME, then /chat NAME");
                            self.input = text;
                            None
                        }
                    }
                }
            }
            _ => None,
        }
    }
}

/// The longest start every candidate shares (whole characters).
fn common_prefix(candidates: &[String]) -> String {
    let first = &candidates[0];
    let mut end = first.len();
    for c in &candidates[1..] {
        end = first
            .char_indices()
            .zip(c.chars())
            .find(|((_, a), b)| a != b)
            .map(|((i, _), _)| i)
            .unwrap_or(end.min(c.len()))
            .min(end);
    }
    first[..end].to_string()
}

/// Files and directories starting with `prefix` (`~/` allowed), written as typed.
fn complete_path(prefix: &str) -> Vec<String> {
    let (dir, file) = match prefix.rfind('/') {
        Some(i) => (&prefix[..=i], &prefix[i + 1..]),
        None => ("", prefix),
    };
    let read = if dir.is_empty() {
        ".".to_string()
    } else {
        crate::command::expand_home(dir)
    };
    let Ok(entries) = std::fs::read_dir(read) else {
        return Vec::new();
    };
    let mut out: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            name.starts_with(file).then(|| {
                let slash = if e.path().is_dir() { "/" } else { "" };
                format!("{dir}{name}{slash}")
            })
        })
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ratatui::crossterm::event::KeyEventKind;

    fn key(code: KeyCode) -> KeyEvent {
        KeyEvent::new_with_kind(code, KeyModifiers::NONE, KeyEventKind::Press)
    }

    fn typed(app: &mut App, s: &str) -> Option<Action> {
        for c in s.chars() {
            app.on_key(key(KeyCode::Char(c)));
        }
        app.on_key(key(KeyCode::Enter))
    }

    fn app() -> App {
        let mut app = App::new("alice");
        app.set_rows(vec![
            Row {
                conversation: Conversation::Friend("bob".into()),
                unread: 2,
            },
            Row {
                conversation: Conversation::Group("team".into()),
                unread: 0,
            },
        ]);
        app
    }

    #[test]
    fn typing_sends_to_the_open_conversation_and_commands_act() {
        let mut a = app();
        assert_eq!(
            typed(&mut a, "hello"),
            Some(Action::Send(
                Conversation::Friend("bob".into()),
                "hello".into()
            ))
        );
        assert_eq!(
            a.on_key(key(KeyCode::Down)),
            Some(Action::Open(Conversation::Group("team".into())))
        );
        assert_eq!(
            typed(&mut a, "/kick carol"),
            Some(Action::Kick("team".into(), "carol".into()))
        );
        assert_eq!(
            typed(&mut a, "/chat bob"),
            Some(Action::Open(Conversation::Friend("bob".into())))
        );
        assert_eq!(a.rows[0].unread, 0);
        assert_eq!(typed(&mut a, "/kick carol"), None);
        assert!(a.notices.last().unwrap().contains("open a group first"));
        assert_eq!(typed(&mut a, "/help"), None);
        assert_eq!(a.overlay.as_ref().unwrap().1.len(), command::HELP.len());
        a.on_key(key(KeyCode::Esc));
        assert!(a.overlay.is_none());
        assert_eq!(typed(&mut a, "/quit"), Some(Action::Quit));
    }

    #[test]
    fn tab_completes_paths_and_stops_where_candidates_part() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["sunset.png", "sunrise.png", "cat.jpg"] {
            std::fs::write(dir.path().join(name), b"x").unwrap();
        }
        std::fs::create_dir(dir.path().join("album")).unwrap();
        let mut a = app();
        let typed = |a: &mut App, text: &str| {
            a.input.clear();
            for c in text.chars() {
                a.on_key(key(KeyCode::Char(c)));
            }
            a.on_key(key(KeyCode::Tab));
            a.input.clone()
        };
        let base = format!("/image {}/", dir.path().display());
        assert_eq!(typed(&mut a, &format!("{base}c")), format!("{base}cat.jpg"));
        assert_eq!(typed(&mut a, &format!("{base}al")), format!("{base}album/"));
        // Two candidates: complete what they share and list both.
        assert_eq!(typed(&mut a, &format!("{base}s")), format!("{base}sun"));
        let listed = a.notices.last().unwrap();
        assert!(
            listed.contains("sunrise.png") && listed.contains("sunset.png"),
            "{listed}"
        );
        assert_eq!(typed(&mut a, &format!("{base}zz")), format!("{base}zz"));
    }

    #[test]
    fn a_path_under_home_is_expanded() {
        let home = std::env::var("HOME").unwrap();
        assert_eq!(
            crate::command::expand_home("~/cat.png"),
            format!("{}/cat.png", home.trim_end_matches('/'))
        );
        assert_eq!(crate::command::expand_home("~bob/cat.png"), "~bob/cat.png");
        assert_eq!(crate::command::expand_home("/tmp/~x"), "/tmp/~x");
        assert_eq!(
            crate::command::parse("/image ~/cat.png"),
            Ok(crate::command::Command::Attach(
                format!("{}/cat.png", home.trim_end_matches('/')),
                true
            ))
        );
    }

    #[test]
    fn tab_completes_names() {
        let mut a = app();
        for c in "/chat te".chars() {
            a.on_key(key(KeyCode::Char(c)));
        }
        a.on_key(key(KeyCode::Tab));
        assert_eq!(a.input, "/chat #team ");
    }

    #[test]
    fn the_selection_follows_its_conversation() {
        let mut a = app();
        a.on_key(key(KeyCode::Down));
        a.set_rows(vec![
            Row {
                conversation: Conversation::Friend("aaron".into()),
                unread: 1,
            },
            Row {
                conversation: Conversation::Friend("bob".into()),
                unread: 0,
            },
            Row {
                conversation: Conversation::Group("team".into()),
                unread: 0,
            },
        ]);
        assert_eq!(a.current(), Some(&Conversation::Group("team".into())));
    }
}
