//! A passphrase-protected keystore: it works with the passphrase, refuses a
//! wrong or missing one with a clear error, and the file copied off the
//! machine reveals no key.

mod common;

use common::{Cluster, befriend, cli, contains};
use fastchat_client::keystore::Keystore;
use fastchat_client::{Client, ClientError};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_protected_keystore_reveals_no_key_and_needs_its_passphrase() {
    let cluster = Cluster::start().await;
    let home = cluster.home("alice");
    let alice = Client::register_with_passphrase(
        &home,
        "alice",
        &cluster.server(),
        &cluster.ca(),
        "correct horse battery staple",
    )
    .await
    .unwrap();
    let bob = cluster.register("bob").await;
    befriend(&alice, &bob).await;
    alice.group_create("team").await.unwrap();
    alice.group_add("team", &["bob"]).await.unwrap();
    alice.send_text("bob", "hi").await.unwrap();
    alice.close().await;

    match Client::connect(&home).await {
        Err(ClientError::PassphraseNeeded) => {}
        other => panic!("{:?}", other.err()),
    }
    match Keystore::open_with(&home, Some("wrong")) {
        Err(e @ ClientError::WrongPassphrase) => {
            assert_eq!(e.to_string(), "the passphrase is wrong")
        }
        other => panic!("{:?}", other.err()),
    }

    let ks = Keystore::open_with(&home, Some("correct horse battery staple")).unwrap();
    let identity = ks.identity().unwrap().to_pkcs8_der().unwrap();
    let seed = ks.signing_identity().unwrap().seed();
    let friend_key = *ks.peer("bob").unwrap().unwrap().key.unwrap().as_bytes();
    let group = ks.group_by_name("team").unwrap().unwrap();
    let group_key = *group.key.unwrap().as_bytes();
    drop(ks);

    let mut file = std::fs::read(home.join(fastchat_client::KEYSTORE_FILE)).unwrap();
    file.extend(std::fs::read(home.join("keystore.db-wal")).unwrap_or_default());
    // Any 32-byte piece of the private key would be a leak, not only all of it.
    for piece in identity.chunks(32).filter(|c| c.len() == 32) {
        assert!(
            !contains(&file, piece),
            "the identity key is readable in the file"
        );
    }
    assert!(!contains(&file, &seed[..]), "the signing key is readable");
    assert!(!contains(&file, &friend_key), "the friend key is readable");
    assert!(!contains(&file, &group_key), "the group key is readable");

    let alice = Client::connect_with_passphrase(&home, Some("correct horse battery staple"))
        .await
        .unwrap();
    alice.send_text("bob", "still works").await.unwrap();
}

#[test]
fn the_cli_takes_the_passphrase_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let (_up, server, ca) = common::start_up(dir.path());
    let home = dir.path().join("carol");
    let run = |pass: &str, args: &[&str]| {
        let out = std::process::Command::new(common::bin())
            .arg("--home")
            .arg(&home)
            .args(args)
            .env("FASTCHAT_PASSPHRASE", pass)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, err) = run(
        "s3cret",
        &[
            "register",
            "--name",
            "carol",
            "--server",
            &server,
            "--ca",
            &ca,
            "--passphrase",
        ],
    );
    assert!(ok, "{err}");
    let (ok, err) = run("s3cret", &["friend", "list"]);
    assert!(ok, "{err}");
    let (ok, err) = run("nope", &["friend", "list"]);
    assert!(!ok);
    assert!(err.contains("the passphrase is wrong"), "{err}");
    // Without the variable and without a terminal: a clear sentence.
    let (ok, _, err) = cli(&home, &["friend", "list"]);
    assert!(!ok);
    assert!(err.contains("FASTCHAT_PASSPHRASE"), "{err}");
}
