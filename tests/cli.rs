//! The README flow through the real binary: `fastchat up`, then register,
//! friend add, send and recv as a user types them.

mod common;

use std::process::{Command, Stdio};

use common::{cli, cli_ok, start_up};

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
    let notes = dir.path().join("notes.bin");
    let content: Vec<u8> = (0..200_000u32).map(|i| (i * 31) as u8).collect();
    std::fs::write(&notes, &content).unwrap();
    cli_ok(
        &alice,
        &["send", "--to", "bob", "--file", notes.to_str().unwrap()],
    );

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
    let files: Vec<_> = items.iter().filter(|v| v["kind"] == "file").collect();
    assert_eq!(files.len(), 1, "{out}");
    assert_eq!(files[0]["bytes"], 200_000);
    let digest: String = fastchat_crypto::file_digest(&content)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(files[0]["digest"], format!("blake3:{digest}"));
    let saved = std::fs::read(files[0]["path"].as_str().unwrap()).unwrap();
    assert_eq!(saved, content);
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

    // A friend's text is shown, never obeyed: escapes that would clear the
    // screen, retitle the window or fake a line reach the terminal as
    // visible pictures.
    cli_ok(
        &alice,
        &[
            "send",
            "--to",
            "bob",
            "\u{1b}[2J\u{1b}]0;owned\u{7}\n[00:00] carol: fake",
        ],
    );
    let out = cli_ok(&bob, &["recv"]);
    assert!(
        out.contains("alice: ␛[2J␛]0;owned␇␊[00:00] carol: fake"),
        "{out}"
    );
    assert!(!out.contains('\u{1b}') && !out.contains('\u{7}'), "{out:?}");
    assert_eq!(out.lines().count(), 1, "{out}");

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

    // The balancer reports its node, with the node's own counters.
    let status: serde_json::Value =
        serde_json::from_str(&cli_ok(&alice, &["status", "--json"])).unwrap();
    assert_eq!(status["strategy"], "p2c");
    let nodes = status["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 1, "{status}");
    assert!(nodes[0]["rss_kib"].as_u64().unwrap() > 0, "{status}");
    assert!(
        nodes[0]["messages_total"].as_u64().unwrap() >= 2,
        "{status}"
    );
    let human = cli_ok(&alice, &["status"]);
    assert!(human.contains("strategy p2c, 1 live node(s)"), "{human}");

    // Each command above told the node it was leaving as it exited: the
    // node holds no session, where a close that never went out would leave
    // one for QUIC's 10 s idle timeout (the node reports every 0.5 s).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let status: serde_json::Value =
            serde_json::from_str(&cli_ok(&alice, &["status", "--json"])).unwrap();
        let node = &status["nodes"][0];
        if node["users"] == 0 && node["connections"] == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the node still holds sessions of exited commands: {status}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }

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

#[test]
fn group_flow_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let (_up, server, ca) = start_up(dir.path());
    let home = |u: &str| dir.path().join(u);
    for user in ["alice", "bob", "carol"] {
        cli_ok(
            &home(user),
            &["register", "--name", user, "--server", &server, "--ca", &ca],
        );
    }
    for friend in ["bob", "carol"] {
        cli_ok(&home("alice"), &["friend", "add", friend]);
        cli_ok(&home(friend), &["friend", "add", "alice"]);
    }
    let out = cli_ok(&home("alice"), &["group", "create", "team"]);
    assert!(out.contains("created group team (id "), "{out}");
    cli_ok(&home("alice"), &["group", "add", "team", "bob"]);
    cli_ok(&home("alice"), &["group", "add", "team", "carol"]);
    cli_ok(&home("bob"), &["send", "--group", "team", "hi all"]);

    let (ok, _, err) = cli(&home("bob"), &["group", "kick", "team", "carol"]);
    assert!(!ok);
    assert!(err.contains("only alice, the admin of team"), "{err}");
    cli_ok(&home("alice"), &["group", "kick", "team", "carol"]);
    cli_ok(
        &home("alice"),
        &["send", "--group", "team", "carol can't read this"],
    );

    let carol: Vec<serde_json::Value> = cli_ok(&home("carol"), &["recv", "--json"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let kinds: Vec<&str> = carol.iter().map(|v| v["kind"].as_str().unwrap()).collect();
    assert!(kinds.contains(&"member_added"), "{kinds:?}");
    assert!(kinds.contains(&"you_were_removed"), "{kinds:?}");
    let hi = carol
        .iter()
        .find(|v| v["kind"] == "text")
        .expect("carol got the message sent while she was a member");
    assert_eq!(
        (hi["group"].as_str(), hi["from"].as_str()),
        (Some("team"), Some("bob"))
    );
    assert!(!carol.iter().any(|v| v["text"] == "carol can't read this"));

    let bob = cli_ok(&home("bob"), &["recv", "--json"]);
    assert!(bob.contains("carol can't read this"), "{bob}");
    assert!(bob.contains("\"member_removed\""), "{bob}");
    let list = cli_ok(&home("bob"), &["group", "list"]);
    assert!(
        list.contains("team") && list.contains("admin alice"),
        "{list}"
    );
    assert!(
        list.contains("members: alice, bob") && !list.contains("carol"),
        "{list}"
    );

    let (ok, _, err) = cli(&home("carol"), &["send", "--group", "team", "let me in"]);
    assert!(!ok);
    assert!(
        err.contains("you were removed from the group 'team'"),
        "{err}"
    );
}
