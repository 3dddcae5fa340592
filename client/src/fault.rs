//! Crash points for the durability tests: with `FASTCHAT_FAULT=<point>` in
//! its environment, a process aborts (as a SIGKILL would stop it) at that
//! point, so a test can stop a client exactly between two steps.

use std::sync::OnceLock;

/// After a delivery batch is committed to the keystore, before its ack.
pub(crate) const AFTER_KEYSTORE_COMMIT: &str = "after-keystore-commit";

/// Aborts the process if `FASTCHAT_FAULT` names `point`.
pub(crate) fn crash_at(point: &str) {
    static CHOSEN: OnceLock<Option<String>> = OnceLock::new();
    let chosen = CHOSEN.get_or_init(|| std::env::var("FASTCHAT_FAULT").ok());
    if chosen.as_deref() == Some(point) {
        std::process::abort();
    }
}
