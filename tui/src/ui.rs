//! Drawing the screen model: conversations on the left, the open one on the
//! right with transfers under it, the input line, the status line.

use fastchat_client::{HistoryEntry, InboxKind, shown};
use ratatui::Frame;
use ratatui::layout::{Constraint, Direction, Layout, Rect};

use crate::preview::{PREVIEW_ROWS, Preview};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Clear, List, ListItem, ListState, Paragraph, Wrap};

use crate::app::App;

fn clock(ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    let s = humantime::format_rfc3339_seconds(t).to_string();
    s.get(11..16).unwrap_or("--:--").to_string()
}

/// One history entry as a line.
pub fn entry_line(e: &HistoryEntry) -> Line<'static> {
    let who = Span::styled(
        format!("{}: ", shown(&e.from)),
        Style::default()
            .add_modifier(Modifier::BOLD)
            .fg(if e.outgoing {
                Color::Cyan
            } else {
                Color::Yellow
            }),
    );
    let time = Span::styled(
        format!("[{}] ", clock(e.sent_at_ms)),
        Style::default().fg(Color::DarkGray),
    );
    let member = e.member.clone().unwrap_or_default();
    let body = match e.kind {
        InboxKind::Text => e.text.clone(),
        InboxKind::Image | InboxKind::File => format!(
            "sent {} saved as {}",
            if e.kind == InboxKind::Image {
                "an image,"
            } else {
                "a file,"
            },
            e.path.clone().unwrap_or_default()
        ),
        InboxKind::FriendRequest => "wants to be your friend (/accept to agree)".into(),
        InboxKind::FriendAccepted => "accepted your friend request".into(),
        InboxKind::MemberAdded => format!("added {member}"),
        InboxKind::MemberRemoved => format!("removed {member}"),
        InboxKind::YouWereRemoved => "removed you from the group".into(),
    };
    // What a peer wrote is shown, never obeyed by the terminal.
    let mut spans = vec![time, who, Span::raw(shown(&body).into_owned())];
    if e.outgoing {
        spans.push(Span::styled(
            format!("  {}", e.state),
            Style::default().fg(Color::DarkGray),
        ));
    }
    Line::from(spans)
}

fn bar(done: u64, total: u64, width: usize) -> String {
    let frac = if total == 0 {
        1.0
    } else {
        done as f64 / total as f64
    };
    let filled = ((width as f64) * frac).round() as usize;
    format!(
        "[{}{}] {:>3}%",
        "=".repeat(filled.min(width)),
        " ".repeat(width - filled.min(width)),
        (frac * 100.0).round() as u64
    )
}

fn centered(area: Rect, w: u16, h: u16) -> Rect {
    let w = w.min(area.width);
    let h = h.min(area.height);
    Rect::new(
        area.x + (area.width - w) / 2,
        area.y + (area.height - h) / 2,
        w,
        h,
    )
}

/// Draws the whole screen.
/// Draws the screen; `preview` is the open conversation's newest image, if any.
pub fn draw(frame: &mut Frame<'_>, app: &App, preview: Option<&Preview>) {
    let outer = Layout::default()
        .direction(Direction::Vertical)
        .constraints([
            Constraint::Min(3),
            Constraint::Length(3),
            Constraint::Length(1),
        ])
        .split(frame.area());
    let main = Layout::default()
        .direction(Direction::Horizontal)
        .constraints([Constraint::Length(22), Constraint::Min(10)])
        .split(outer[0]);

    let items: Vec<ListItem> = app
        .rows
        .iter()
        .map(|r| {
            let unread = if r.unread > 0 {
                format!(" ({})", r.unread)
            } else {
                String::new()
            };
            ListItem::new(format!("{}{unread}", shown(&r.label())))
        })
        .collect();
    let mut state = ListState::default();
    if !app.rows.is_empty() {
        state.select(Some(app.selected));
    }
    frame.render_stateful_widget(
        List::new(items)
            .block(Block::default().borders(Borders::ALL).title("chats"))
            .highlight_style(Style::default().add_modifier(Modifier::REVERSED)),
        main[0],
        &mut state,
    );

    let title = app
        .rows
        .get(app.selected)
        .map(|r| shown(&r.label()).into_owned())
        .unwrap_or_else(|| "no conversation".into());
    let mut lines: Vec<Line> = app.messages.iter().map(entry_line).collect();
    for t in app.transfers.values() {
        lines.push(Line::styled(
            format!("{} {}", shown(&t.label), bar(t.done, t.total, 20)),
            Style::default().fg(Color::Green),
        ));
    }
    for n in app.notices.iter().rev().take(3).rev() {
        lines.push(Line::styled(
            format!("* {}", shown(n)),
            Style::default().fg(Color::Magenta),
        ));
    }
    let (messages_area, preview_area) = match preview {
        Some(_) if main[1].height > PREVIEW_ROWS + 5 => {
            let split = Layout::default()
                .direction(Direction::Vertical)
                .constraints([Constraint::Min(5), Constraint::Length(PREVIEW_ROWS)])
                .split(main[1]);
            (split[0], Some(split[1]))
        }
        _ => (main[1], None),
    };
    let inner_height = messages_area.height.saturating_sub(2) as usize;
    let skip = lines.len().saturating_sub(inner_height);
    frame.render_widget(
        Paragraph::new(lines.into_iter().skip(skip).collect::<Vec<_>>())
            .block(Block::default().borders(Borders::ALL).title(title))
            .wrap(Wrap { trim: false }),
        messages_area,
    );
    if let (Some(p), Some(area)) = (preview, preview_area) {
        let name = std::path::Path::new(&p.path)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let block = Block::default()
            .borders(Borders::ALL)
            .title(format!("image: {}", shown(&name)));
        let inner = block.inner(area);
        frame.render_widget(block, area);
        frame.render_widget(ratatui_image::Image::new(&p.protocol), inner);
    }

    frame.render_widget(
        Paragraph::new(format!("> {}", app.input)).block(
            Block::default()
                .borders(Borders::ALL)
                .title("message or /command (/help)"),
        ),
        outer[1],
    );
    let status_style = if app.connected {
        Style::default().fg(Color::Black).bg(Color::Green)
    } else {
        Style::default().fg(Color::Black).bg(Color::Yellow)
    };
    frame.render_widget(
        Paragraph::new(format!(" {} · {}", app.me, app.status)).style(status_style),
        outer[2],
    );
    frame.set_cursor_position((
        outer[1].x + 3 + app.input.chars().count() as u16,
        outer[1].y + 1,
    ));

    if let Some((title, body)) = &app.overlay {
        let width = body.iter().map(|l| l.chars().count()).max().unwrap_or(10) as u16 + 4;
        let area = centered(frame.area(), width, body.len() as u16 + 2);
        frame.render_widget(Clear, area);
        frame.render_widget(
            Paragraph::new(
                body.iter()
                    .map(|l| Line::raw(shown(l).into_owned()))
                    .collect::<Vec<_>>(),
            )
            .block(
                Block::default()
                    .borders(Borders::ALL)
                    .title(format!("{title} (Esc closes)")),
            ),
            area,
        );
    }
}

#[cfg(test)]
mod tests {
    use fastchat_client::Conversation;
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;

    use super::*;
    use crate::app::{Row, Transfer};

    fn screen(app: &App) -> String {
        let mut terminal = Terminal::new(TestBackend::new(80, 24)).unwrap();
        terminal.draw(|f| draw(f, app, None)).unwrap();
        let buf = terminal.backend().buffer().clone();
        (0..buf.area.height)
            .map(|y| {
                (0..buf.area.width)
                    .map(|x| buf[(x, y)].symbol().to_string())
                    .collect::<String>()
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn entry(from: &str, text: &str, outgoing: bool) -> HistoryEntry {
        HistoryEntry {
            id: [0; 16],
            from: from.into(),
            outgoing,
            kind: InboxKind::Text,
            text: text.into(),
            member: None,
            path: None,
            sent_at_ms: 0,
            state: fastchat_client::MessageState::Sent,
            conversation: Conversation::Friend("bob".into()),
        }
    }

    #[test]
    fn a_peers_escapes_are_drawn_as_pictures() {
        let line = entry_line(&entry("mal\u{1b}[31m", "\u{1b}[2J\u{202E}hi\n", false));
        let text: String = line.spans.iter().map(|s| s.content.as_ref()).collect();
        assert!(text.contains("mal␛[31m: ␛[2J\u{FFFD}hi␊"), "{text:?}");
        assert!(!text.contains('\u{1b}') && !text.contains('\u{202E}'));
    }

    #[test]
    fn the_screen_shows_conversations_unread_messages_transfers_and_status() {
        let mut app = App::new("alice");
        app.connected = true;
        app.status = "node 127.0.0.1:7701 · connected".into();
        app.set_rows(vec![
            Row {
                conversation: Conversation::Friend("bob".into()),
                unread: 0,
            },
            Row {
                conversation: Conversation::Group("team".into()),
                unread: 3,
            },
        ]);
        app.messages = vec![
            entry("bob", "hi alice", false),
            entry("alice", "hello bob", true),
        ];
        app.transfers.insert(
            [1; 16],
            Transfer {
                label: "cat.png to bob".into(),
                done: 50,
                total: 100,
            },
        );
        app.input = "typing".into();
        let s = screen(&app);
        for want in [
            "bob",
            "#team (3)",
            "bob: hi alice",
            "alice: hello bob",
            "sent",
            "cat.png to bob",
            "50%",
            "> typing",
            "alice · node 127.0.0.1:7701 · connected",
        ] {
            assert!(s.contains(want), "missing {want:?} in\n{s}");
        }
    }

    #[test]
    fn help_overlay_lists_every_command_in_80_columns() {
        let mut app = App::new("alice");
        app.overlay = Some((
            "help".into(),
            crate::command::HELP.iter().map(|s| s.to_string()).collect(),
        ));
        let s = screen(&app);
        for cmd in [
            "/chat",
            "/add",
            "/accept",
            "/group create",
            "/group add",
            "/kick",
            "/image",
            "/search",
            "/verify",
            "/quit",
        ] {
            assert!(s.contains(cmd), "missing {cmd} in\n{s}");
        }
    }

    #[test]
    fn a_received_image_shows_inline_below_the_messages() {
        let mut app = App::new("bob");
        app.rows = vec![Row {
            conversation: Conversation::Friend("alice".into()),
            unread: 0,
        }];
        let mut cat = entry("alice", "", false);
        cat.kind = fastchat_client::InboxKind::Image;
        cat.path = Some("/home/bob/downloads/cat.png".into());
        app.messages = vec![cat];
        let picture = image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(400, 160, |x, _| {
            if x < 200 {
                image::Rgb([255, 0, 0])
            } else {
                image::Rgb([0, 0, 255])
            }
        }));
        let preview = crate::preview::Previewer::halfblocks()
            .encode("/home/bob/downloads/cat.png", picture, 56)
            .unwrap();
        let mut terminal = Terminal::new(TestBackend::new(80, 24)).unwrap();
        terminal.draw(|f| draw(f, &app, Some(&preview))).unwrap();
        let buffer = terminal.backend().buffer().clone();
        let text: String = buffer.content().iter().map(|c| c.symbol()).collect();
        assert!(text.contains("image: cat.png"), "{text}");
        // The picture itself: cells coloured like the image (red and blue).
        let painted = buffer
            .content()
            .iter()
            .filter(|c| {
                [c.fg, c.bg]
                    .iter()
                    .any(|k| matches!(k, Color::Rgb(255, 0, 0) | Color::Rgb(0, 0, 255)))
            })
            .count();
        assert!(painted > 10, "only {painted} painted cells");
    }
}
