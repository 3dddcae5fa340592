//! Staying connected: when our node goes away, ask the balancer for a node
//! again, log in, put the new link in place and restart what ran on the
//! old one (the receiver, unfinished downloads).

use std::sync::Arc;

use fastchat_transport::ClientEndpoint;
use fastchat_transport::quinn::Connection;

use crate::connect::{login, reach_node};
use crate::core::Core;
use crate::error::ClientError;
use crate::keystore::{TransferState, Transfers};

/// Starts the receiver on `conn` (a fresh link).
pub(crate) fn start_receiving(core: &Arc<Core>, conn: Connection) {
    tokio::spawn(crate::receiver::run(core.clone(), conn));
}

/// Keeps the client connected: when its node goes away, asks the balancer
/// for a node again (backing off up to 2 s between tries), logs in, and
/// puts the new connection in place. Senders waiting on the old one resend
/// what it did not acknowledge; the node redelivers what we did not.
pub(crate) async fn supervise(core: Arc<Core>, endpoint: ClientEndpoint) {
    loop {
        let conn = core.conn();
        // A killed node sends nothing: silence is how we notice it.
        let reason =
            fastchat_transport::closed_or_silent(&conn, fastchat_transport::PEER_SILENCE).await;
        if core.is_closing() {
            return;
        }
        tracing::info!(%reason, "lost the node; asking the balancer for another");
        let _ = core.changes.send(());
        let mut delay = std::time::Duration::from_millis(50);
        loop {
            if core.is_closing() {
                return;
            }
            match relink(&core, &endpoint).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::debug!(error = %e, "reconnect failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(std::time::Duration::from_secs(2));
                }
            }
        }
    }
}

async fn relink(core: &Arc<Core>, endpoint: &ClientEndpoint) -> Result<(), ClientError> {
    let (conn, control) = reach_node(endpoint, &core.server).await?;
    login(&control, core.name(), &core.me.identity, &core.login_key).await?;
    if core.is_closing() {
        conn.close(0u32.into(), b"bye");
        return Ok(());
    }
    core.relinked(conn.clone(), control);
    start_receiving(core, conn.clone());
    tracing::info!(node = %conn.remote_address(), "reconnected");
    // Downloads the old connection cut off go on from where they stopped.
    resume_downloads(core, &conn)?;
    let _ = core.changes.send(());
    Ok(())
}

/// Tells the node of the received files in place that it was not told of
/// (the connection was cut, or the client stopped, just before), except
/// those whose download task is still at it.
pub(crate) fn tell_node_of_placed(core: &Arc<Core>) -> Result<(), ClientError> {
    let placed: Vec<_> = core
        .keystore()
        .transfers(Transfers::Downloads, TransferState::Placed)?
        .into_iter()
        .filter(|(sender, id, _)| {
            !core
                .active_downloads
                .lock()
                .expect("lock")
                .contains(&(sender.clone(), *id))
        })
        .collect();
    if !placed.is_empty() {
        let core = core.clone();
        tokio::spawn(async move {
            for (sender, id, _) in placed {
                crate::download::tell_node(&core, &sender, id).await;
            }
        });
    }
    Ok(())
}

/// Starts every download the keystore still has pending, and tells the
/// node of those in place that it was not told of.
pub(crate) fn resume_downloads(core: &Arc<Core>, conn: &Connection) -> Result<(), ClientError> {
    tell_node_of_placed(core)?;
    let records = core
        .keystore()
        .transfers(Transfers::Downloads, TransferState::Pending)?;
    for (sender, id, record) in records {
        match fastchat_proto::decode(&record) {
            Ok(rec) => crate::download::spawn(core.clone(), conn.clone(), rec),
            // Saved by a version with another attachment format: the sender
            // has to send it again.
            Err(_) => {
                tracing::warn!(%sender, "a download saved by an older version cannot be resumed");
                core.keystore().set_transfer_state(
                    Transfers::Downloads,
                    &sender,
                    &id,
                    TransferState::Failed,
                )?;
            }
        }
    }
    Ok(())
}
