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

/// A keystore made before login keys (none stored) logs in with its RSA
/// identity once, makes a login key and binds it; later logins use that key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keystore_without_a_login_key_binds_one_at_its_next_login() {
    let cluster = Cluster::start().await;
    let home = cluster.home("alice");
    cluster.register("alice").await.close().await;
    let node_key = || -> Option<Vec<u8>> {
        let db = rusqlite::Connection::open(cluster.data_dir().join("node.db")).unwrap();
        db.query_row(
            "SELECT login_key FROM users WHERE name = 'alice'",
            [],
            |r| r.get(0),
        )
        .unwrap()
    };
    let stored_key = || -> Option<Vec<u8>> {
        let ks = rusqlite::Connection::open(home.join(fastchat_client::KEYSTORE_FILE)).unwrap();
        ks.query_row(
            "SELECT value FROM settings WHERE key = 'login_key'",
            [],
            |r| r.get(0),
        )
        .ok()
    };
    let registered = node_key().expect("registration bound a login key");
    assert!(stored_key().is_some());
    rusqlite::Connection::open(home.join(fastchat_client::KEYSTORE_FILE))
        .unwrap()
        .execute("DELETE FROM settings WHERE key = 'login_key'", [])
        .unwrap();

    let alice = Client::connect(&home).await.unwrap();
    alice.close().await;
    let rebound = node_key().unwrap();
    assert_ne!(rebound, registered, "a new login key was bound");
    // Stored unsealed (no passphrase): the seed, whose public half the node holds.
    let seed = stored_key().expect("the new key was kept");
    let public = fastchat_crypto::SigningIdentity::from_seed(&seed)
        .unwrap()
        .public();
    assert_eq!(rebound, public.to_vec());
    // And it logs in again with that key alone: with the RSA key the node
    // holds made unusable, only a login-key signature can get in.
    rusqlite::Connection::open(cluster.data_dir().join("node.db"))
        .unwrap()
        .execute(
            "UPDATE users SET public_key = x'00' WHERE name = 'alice'",
            [],
        )
        .unwrap();
    Client::connect(&home).await.unwrap().close().await;
    assert_eq!(node_key().unwrap(), rebound);
}
