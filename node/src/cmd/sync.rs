//! `Sync`: answers once everything queued for the user when it was asked
//! has been delivered and acknowledged (by this or another session).

use std::time::{Duration, Instant};

use fastchat_proto::control::Response;
use fastchat_proto::{ErrorCode, ProtoError};
use tokio::sync::watch;

use crate::shared::Shared;

/// Longest a sync may wait before it reports failure.
const SYNC_TIMEOUT: Duration = Duration::from_secs(60);
/// How often the store is re-checked, for acks made by another session.
const RECHECK: Duration = Duration::from_millis(200);

pub(crate) async fn wait(
    shared: &Shared,
    user: &str,
    mut acked: watch::Receiver<u64>,
) -> Result<Response, ProtoError> {
    let Some(upto) = shared.store.last_pending(user).await? else {
        return Ok(Response::Synced);
    };
    let deadline = Instant::now() + SYNC_TIMEOUT;
    loop {
        // Acks may come in any order, so only the store can say that
        // nothing at or before `upto` is left; the watch just wakes us.
        acked.borrow_and_update();
        if !shared.store.any_pending_upto(user, upto).await? {
            return Ok(Response::Synced);
        }
        if Instant::now() > deadline {
            return Err(ProtoError::new(
                ErrorCode::Internal,
                "timed out waiting for queued messages to be acknowledged",
            ));
        }
        tokio::select! {
            _ = acked.changed() => {}
            _ = tokio::time::sleep(RECHECK) => {}
        }
    }
}
