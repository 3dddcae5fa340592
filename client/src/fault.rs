//! Crash points for the durability tests: with `FASTCHAT_FAULT=<point>` in
//! its environment, a process aborts (as a SIGKILL would stop it) the first
//! time it reaches that point, and with `<point>:<n>` the n-th time, so a
//! test can stop a client exactly between two steps.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

/// After a delivery batch is committed to the keystore, before its ack.
pub(crate) const AFTER_KEYSTORE_COMMIT: &str = "after-keystore-commit";

/// After a received file is in place and recorded, before the node is told.
pub(crate) const AFTER_FILE_PLACED: &str = "after-file-placed";

/// Aborts the process if `FASTCHAT_FAULT` names `point` (and this is the
/// time it names).
pub(crate) fn crash_at(point: &str) {
    static CHOSEN: OnceLock<Option<(String, u32)>> = OnceLock::new();
    static REACHED: AtomicU32 = AtomicU32::new(0);
    let chosen = CHOSEN.get_or_init(|| std::env::var("FASTCHAT_FAULT").ok().map(|f| parse(&f)));
    if let Some((name, nth)) = chosen
        && name == point
        && REACHED.fetch_add(1, Ordering::Relaxed) + 1 == *nth
    {
        std::process::abort();
    }
}

/// `point` or `point:n` (n counted from 1).
fn parse(fault: &str) -> (String, u32) {
    match fault
        .rsplit_once(':')
        .map(|(name, n)| (name, n.parse::<u32>()))
    {
        Some((name, Ok(n))) if n > 0 => (name.to_string(), n),
        _ => (fault.to_string(), 1),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_fault_names_a_point_and_which_time() {
        assert_eq!(
            super::parse("after-keystore-commit"),
            ("after-keystore-commit".into(), 1)
        );
        assert_eq!(
            super::parse("after-keystore-commit:2"),
            ("after-keystore-commit".into(), 2)
        );
        assert_eq!(super::parse("x:0"), ("x:0".into(), 1));
    }
}
