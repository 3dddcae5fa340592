//! The README flow through the real binary: `fastchat up`, then register,
//! friend add, send and recv as a user types them.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::{ChildGuard, cli, cli_ok};

/// Starts `fastchat up` on port 0 and returns it with the balancer address
/// and CA path from the line it prints.
fn start_up(dir: &std::path::Path) -> (ChildGuard, String, String) {
    let mut child = Command::new(common::bin())
        .args(["up", "--listen", "127.0.0.1:0", "--dir"])
        .arg(dir.join("cluster"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let guard = ChildGuard(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    assert!(line.starts_with("fastchat is up"), "{line}");
    let word_after = |key: &str| {
        line.split(key)
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .trim_end_matches(',')
            .to_string()
    };
    (guard, word_after("--server "), word_after("--ca "))
}

#[test]
fn readme_flow_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let (mut up, server, ca) = start_up(dir.path());
    let alice = dir.path().join("alice");
    let bob = dir.path().join("bob");

    let out = cli_ok(
        &alice,
        &[
            "register", "--name", "alice", "--server", &server, "--ca", &ca,
        ],
    );
    assert!(out.contains("registered as alice"), "{out}");
    cli_ok(
        &bob,
        &[
            "register", "--name", "bob", "--server", &server, "--ca", &ca,
        ],
    );
    let out = cli_ok(&alice, &["friend", "add", "bob"]);
    assert!(out.contains("friend request sent to bob"), "{out}");
    let out = cli_ok(&bob, &["friend", "add", "alice"]);
    assert!(out.contains("now friends"), "{out}");
    cli_ok(&alice, &["send", "--to", "bob", "hello bob"]);

    let out = cli_ok(&bob, &["recv", "--json"]);
    let items: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let texts: Vec<_> = items.iter().filter(|v| v["kind"] == "text").collect();
    assert_eq!(texts.len(), 1, "{out}");
    assert_eq!(texts[0]["from"], "alice");
    assert_eq!(texts[0]["text"], "hello bob");
    assert_eq!(texts[0]["id"].as_str().unwrap().len(), 32);
    assert!(texts[0]["sent_at"].as_str().unwrap().ends_with('Z'));
    // Printed once, ever.
    assert_eq!(cli_ok(&bob, &["recv", "--json"]), "");

    // Alice sees the acceptance, and both see the same safety number.
    let out = cli_ok(&alice, &["recv"]);
    assert!(out.contains("bob accepted your friend request"), "{out}");
    let fa = cli_ok(&alice, &["fingerprint", "bob"]);
    let fb = cli_ok(&bob, &["fingerprint", "alice"]);
    let number = |s: &str| s.lines().nth(1).unwrap().to_string();
    assert_eq!(number(&fa), number(&fb));
    let list = cli_ok(&alice, &["friend", "list"]);
    assert!(list.contains("bob") && list.contains("friend"), "{list}");

    // recv --wait picks up what arrives while it waits.
    let waiting = Command::new(common::bin())
        .arg("--home")
        .arg(&bob)
        .args(["recv", "--json", "--wait", "3"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(700));
    cli_ok(&alice, &["send", "--to", "bob", "while you wait"]);
    let out = waiting.wait_with_output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("while you wait"));

    // Errors a user can cause are one clear sentence, not a panic.
    let (ok, _, err) = cli(&alice, &["send", "--to", "carol", "hi"]);
    assert!(!ok);
    assert!(err.contains("carol is not your friend"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let (ok, _, err) = cli(&dir.path().join("nobody"), &["send", "--to", "bob", "hi"]);
    assert!(!ok);
    assert!(err.contains("run `fastchat register` first"), "{err}");
    let (ok, _, err) = cli(
        &dir.path().join("carol"),
        &[
            "register",
            "--name",
            "carol",
            "--server",
            &server,
            "--ca",
            "/nonexistent/ca.pem",
        ],
    );
    assert!(!ok);
    assert!(
        err.contains("cannot use /nonexistent/ca.pem as the cluster CA"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");

    // SIGTERM shuts the cluster down cleanly.
    let pid = up.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = up.0.wait().unwrap();
    assert!(status.success(), "{status:?}");

    // Re-running `up` reuses the certificates: the same CA still works.
    let (_up2, server2, ca2) = start_up(dir.path());
    assert_eq!(ca, ca2);
    let _ = server2;
}

#[test]
fn certs_never_overwrite_without_force() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("certs");
    let run = |extra: &[&str]| {
        Command::new(common::bin())
            .args(["certs", "--out"])
            .arg(&out)
            .args(extra)
            .output()
            .unwrap()
    };
    assert!(run(&["--san", "chat.example.org"]).status.success());
    let ca = std::fs::read(out.join("ca.pem")).unwrap();
    let second = run(&[]);
    assert!(!second.status.success());
    assert!(String::from_utf8_lossy(&second.stderr).contains("--force"));
    assert_eq!(ca, std::fs::read(out.join("ca.pem")).unwrap());
    assert!(run(&["--force"]).status.success());
    assert_ne!(ca, std::fs::read(out.join("ca.pem")).unwrap());
}
