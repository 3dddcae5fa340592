//! Progress bars (indicatif) for image transfers; hidden when stderr is not
//! a terminal.

use std::collections::HashMap;

use fastchat_client::{Direction, Progress};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

fn style() -> ProgressStyle {
    ProgressStyle::with_template(
        "{msg:24!} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
    )
    .expect("valid template")
    .progress_chars("=> ")
}

/// A bar for one transfer, drawn on stderr if it is a terminal.
pub fn bar(label: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
    bar.set_style(style());
    // Titles come from peers: shown, never obeyed.
    bar.set_message(fastchat_client::shown(label).into_owned());
    bar
}

/// Moves `bar` to `done` of `total` bytes.
pub fn update(bar: &ProgressBar, done: u64, total: u64) {
    bar.set_length(total);
    bar.set_position(done);
}

/// Shows a bar per incoming image until the returned task is aborted.
pub fn follow_downloads(mut progress: broadcast::Receiver<Progress>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut bars: HashMap<[u8; 16], ProgressBar> = HashMap::new();
        while let Ok(p) = progress.recv().await {
            if p.direction != Direction::Down {
                continue;
            }
            let b = bars
                .entry(p.id.0)
                .or_insert_with(|| bar(&format!("{} from {}", p.title, p.peer)));
            update(b, p.done, p.total);
            if p.done >= p.total {
                b.finish();
            }
        }
    })
}
