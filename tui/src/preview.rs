//! Inline previews of received images: the newest image of the open
//! conversation, drawn with the best protocol the terminal answers to
//! (kitty, sixel, iTerm2), else with coloured half blocks, which every
//! terminal shows (ssh and tmux included).

use std::path::Path;

use image::DynamicImage;
use ratatui::layout::Size;
use ratatui_image::Resize;
use ratatui_image::picker::Picker;
use ratatui_image::protocol::Protocol;

/// Rows the preview pane takes below the messages.
pub const PREVIEW_ROWS: u16 = 10;

/// One decoded image ready to draw.
pub struct Preview {
    /// The saved file.
    pub path: String,
    /// The protocol-encoded picture.
    pub protocol: Protocol,
}

/// How images are drawn in this terminal.
pub struct Previewer {
    picker: Picker,
}

impl Previewer {
    /// Asks the terminal what it supports when it names itself as one with
    /// an image protocol (call before raw mode and the key reader); every
    /// other terminal, and tmux, gets half blocks without being queried
    /// (under tmux the query's answers leaked into the key input).
    pub fn detect() -> Self {
        let var = |k: &str| std::env::var(k).unwrap_or_default().to_lowercase();
        let (term, program) = (var("TERM"), var("TERM_PROGRAM"));
        let in_tmux = std::env::var_os("TMUX").is_some() || term.starts_with("tmux");
        let graphical = [
            "kitty", "wezterm", "iterm", "foot", "mlterm", "contour", "ghostty", "konsole", "rio",
        ]
        .iter()
        .any(|t| term.contains(t) || program.contains(t));
        let picker = if graphical && !in_tmux {
            Picker::from_query_stdio().unwrap_or_else(|_| Picker::halfblocks())
        } else {
            Picker::halfblocks()
        };
        Self { picker }
    }

    /// Half blocks only (for tests and terminals that must not be queried).
    #[cfg(test)]
    pub fn halfblocks() -> Self {
        Self {
            picker: Picker::halfblocks(),
        }
    }

    /// Encodes `image` to fit `width` columns of the preview pane.
    pub fn encode(&self, path: &str, image: DynamicImage, width: u16) -> Option<Preview> {
        let size = Size::new(width.max(4), PREVIEW_ROWS.saturating_sub(2).max(1));
        let protocol = self
            .picker
            .new_protocol(image, size, Resize::Fit(None))
            .ok()?;
        Some(Preview {
            path: path.to_string(),
            protocol,
        })
    }
}

/// Decodes an image file; None for files that are not images we can read.
pub fn decode(path: &Path) -> Option<DynamicImage> {
    image::ImageReader::open(path)
        .ok()?
        .with_guessed_format()
        .ok()?
        .decode()
        .ok()
}
