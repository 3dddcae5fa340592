//! The terminal client as a person uses it: two `fastchat chat` sessions in
//! real terminals under tmux, typed into with send-keys and read with
//! capture-pane. `.ci/run` installs tmux.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::cli_ok;

/// A private tmux server, killed when dropped; `logs` are printed (their
/// ends) with every pane when a wait fails.
struct Tmux(String, Vec<std::path::PathBuf>);

impl Tmux {
    fn new() -> Self {
        let status = Command::new("tmux").arg("-V").status();
        assert!(
            status.is_ok_and(|s| s.success()),
            "tmux is needed for this test (apt-get install tmux; .ci/run does it)"
        );
        Self(format!("fastchat-test-{}", std::process::id()), Vec::new())
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new("tmux");
        c.args(["-L", &self.0]);
        c
    }

    fn open(&self, name: &str, shell_command: &str) {
        let ok = self
            .cmd()
            .args([
                "new-session",
                "-d",
                "-s",
                name,
                "-x",
                "80",
                "-y",
                "24",
                shell_command,
            ])
            .status()
            .unwrap()
            .success();
        assert!(ok, "tmux new-session failed");
    }

    fn keys(&self, name: &str, keys: &[&str]) {
        assert!(
            self.cmd()
                .args(["send-keys", "-t", name])
                .args(keys)
                .status()
                .unwrap()
                .success()
        );
    }

    fn type_line(&self, name: &str, line: &str) {
        self.keys(name, &["-l", line]);
        self.keys(name, &["Enter"]);
    }

    fn resize(&self, name: &str, width: usize, height: usize) {
        let ok = self
            .cmd()
            .args(["resize-window", "-t", name, "-x", &width.to_string()])
            .args(["-y", &height.to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "tmux resize-window failed");
    }

    fn screen(&self, name: &str) -> String {
        let out = self
            .cmd()
            .args(["capture-pane", "-p", "-t", name])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits until the screen shows `want`; returns the screen.
    fn wait_for(&self, name: &str, want: &str, timeout: Duration) -> String {
        self.wait_until(name, want, timeout, |s| s.contains(want))
    }

    /// Waits until `ready` holds for the screen (`what` names it in a failure).
    fn wait_until(
        &self,
        name: &str,
        what: &str,
        timeout: Duration,
        ready: impl Fn(&str) -> bool,
    ) -> String {
        let start = Instant::now();
        loop {
            let s = self.screen(name);
            if ready(&s) {
                return s;
            }
            assert!(
                start.elapsed() < timeout,
                "{name} never showed {what:?}; screen:\n{s}\n{}",
                self.everything()
            );
            // Often: a fast image shows its progress bar only for a
            // tenth of a second.
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Tmux {
    /// Every pane and the end of every log, for a failure's message.
    fn everything(&self) -> String {
        let mut all = String::new();
        for pane in ["a", "b"] {
            all += &format!("--- pane {pane}:\n{}\n", self.screen(pane));
        }
        for log in &self.1 {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(60)..].join("\n");
            all += &format!("--- {}:\n{tail}\n", log.display());
        }
        all
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd().arg("kill-server").status();
    }
}

fn png(path: &Path) {
    // The smallest valid PNG signature and header is enough for the sniffing.
    let mut bytes = b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR".to_vec();
    bytes.extend_from_slice(&[
        0, 0, 0, 1, 0, 0, 0, 1, 8, 2, 0, 0, 0, 0x90, 0x77, 0x53, 0xde,
    ]);
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn two_people_chat_in_real_terminals() {
    let mut tmux = Tmux::new();
    let dir = tempfile::tempdir().unwrap();
    let (_up, server, ca) = common::start_up(dir.path());
    let home = |u: &str| dir.path().join(u);
    for u in ["alice", "bob"] {
        cli_ok(
            &home(u),
            &["register", "--name", u, "--server", &server, "--ca", &ca],
        );
    }
    cli_ok(&home("alice"), &["friend", "add", "bob"]);
    cli_ok(&home("bob"), &["friend", "add", "alice"]);

    let bin = common::bin();
    tmux.1.push(dir.path().join("up.log"));
    for (pane, user) in [("a", "alice"), ("b", "bob")] {
        // The chat logs to its home; a failure prints the logs' ends.
        tmux.1.push(home(user).join("chat.log"));
        tmux.open(
            pane,
            &format!(
                "FASTCHAT_LOG=info,fastchat_client=debug {bin} --home {} chat; echo RESTORED; stty -a | grep -o -- '-\\?icanon'; sleep 30",
                home(user).display()
            ),
        );
    }
    let t = Duration::from_secs(20);
    tmux.wait_for("a", "connected", t);
    tmux.wait_for("b", "connected", t);

    // A message typed by one appears for the other.
    tmux.type_line("a", "hello bob, typed in a terminal");
    let b = tmux.wait_for("b", "alice: hello bob, typed in a terminal", t);
    assert!(b.contains("chats"), "{b}");

    // /help lists the commands.
    tmux.type_line("a", "/help");
    let help = tmux.wait_for("a", "/verify NAME", t);
    for cmd in [
        "/chat NAME",
        "/add NAME",
        "/group create",
        "/kick NAME",
        "/image PATH",
        "/search WORDS",
        "/quit",
    ] {
        assert!(help.contains(cmd), "{cmd} missing:\n{help}");
    }
    tmux.keys("a", &["Escape"]);

    // An image send shows progress, completes, and arrives.
    let big = dir.path().join("big.png");
    png(&big);
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(&big).unwrap();
        f.write_all(&vec![7u8; 64 << 20]).unwrap();
    }
    tmux.type_line("a", &format!("/image {}", big.display()));
    tmux.wait_for("a", "% ", t);
    tmux.wait_for(
        "a",
        &format!("sent {}", big.display()),
        Duration::from_secs(60),
    );
    tmux.wait_for("b", "sent an image, saved as", Duration::from_secs(60));

    // A real picture shows inline in bob's open conversation (half blocks
    // under tmux; kitty, sixel or iTerm2 where the terminal has them).
    let sunset = dir.path().join("sunset.png");
    image::RgbImage::from_fn(300, 120, |x, _| {
        image::Rgb([(x % 256) as u8, 64, 255 - (x % 256) as u8])
    })
    .save(&sunset)
    .unwrap();
    tmux.type_line("a", &format!("/image {}", sunset.display()));
    tmux.wait_for("b", "image: sunset.png", Duration::from_secs(60));

    // History search finds what was said.
    tmux.type_line("b", "/search typed in");
    tmux.wait_for("b", "search \"typed in\"", t);
    tmux.keys("b", &["Escape"]);

    // A resize redraws at the new size: wider, taller, the status line on
    // the new last row; then back to 80×24.
    for (width, height) in [(120usize, 40usize), (80, 24)] {
        tmux.resize("b", width, height);
        tmux.wait_until("b", &format!("status on row {height}"), t, |s| {
            let rows: Vec<&str> = s.lines().collect();
            rows.len() == height
                && rows[height - 1].contains("bob · ")
                && rows[height - 1].contains("connected")
        });
    }

    // /quit (alice) and Ctrl-C (bob) both restore the terminal: the shell
    // sees canonical mode again.
    tmux.type_line("a", "/quit");
    tmux.keys("b", &["C-c"]);
    for pane in ["a", "b"] {
        tmux.wait_for(pane, "RESTORED", t);
        let after = tmux.wait_for(pane, "icanon", t);
        assert!(
            after.lines().any(|l| l.trim() == "icanon"),
            "{pane}: terminal left in raw mode:\n{after}"
        );
    }
}
