//! Keeps the balancer informed: a report every second over a QUIC connection
//! authenticated with the node certificate. If the balancer is away the node
//! keeps serving and retries.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use fastchat_certs::NodeIdentity;
use fastchat_proto::balancer::{BalancerRequest, BalancerResponse, NodeReport};
use fastchat_proto::limits::MAX_CONTROL_FRAME;
use fastchat_transport::quinn::Connection;
use fastchat_transport::{
    PEER_SILENCE, client_endpoint, closed_or_silent, connect, read_frame, write_frame,
};

use crate::shared::Shared;

/// How often the node reports; the balancer drops a node after a few misses.
pub const REPORT_INTERVAL: Duration = Duration::from_millis(500);

/// How often the queue depth is counted again: a count scans the queue, and
/// the figure is for people reading `status`, not for picking nodes.
const QUEUE_COUNT_EVERY: u32 = 10;

pub(crate) async fn run(
    balancer: String,
    identity: NodeIdentity,
    advertised: String,
    shared: Arc<Shared>,
) {
    let endpoint = match client_endpoint(&identity.ca, Some(&identity)) {
        Ok(e) => e,
        Err(e) => {
            tracing::error!(error = %e, "cannot create the balancer client endpoint");
            return;
        }
    };
    let mut warned = false;
    let mut last_messages = shared.stats.messages.load(Ordering::Relaxed);
    loop {
        match connect(&endpoint, &balancer).await {
            Ok(conn) => {
                tracing::info!(%balancer, "reporting to the balancer");
                warned = false;
                let reported = tokio::select! {
                    r = report_loop(&conn, &advertised, &shared, &mut last_messages) => r,
                    reason = closed_or_silent(&conn, PEER_SILENCE) => Err(reason.to_string()),
                };
                if let Err(e) = reported {
                    tracing::warn!(%balancer, error = %e, "lost the balancer; retrying");
                }
                conn.close(0u32.into(), b"reconnecting");
            }
            Err(e) if !warned => {
                tracing::warn!(%balancer, error = %e, "cannot reach the balancer; retrying");
                warned = true;
            }
            Err(_) => {}
        }
        tokio::time::sleep(REPORT_INTERVAL).await;
    }
}

async fn report_loop(
    conn: &Connection,
    advertised: &str,
    shared: &Shared,
    last_messages: &mut u64,
) -> Result<(), String> {
    let mut ticker = tokio::time::interval(REPORT_INTERVAL);
    let mut buf = Vec::new();
    let mut queue_depth = 0;
    let mut report_no = 0u32;
    loop {
        ticker.tick().await;
        report_no = report_no.wrapping_add(1);
        if report_no % QUEUE_COUNT_EVERY == 1 {
            queue_depth = shared.store.queue_depth().await.unwrap_or(queue_depth);
        }
        let messages = shared.stats.messages.load(Ordering::Relaxed);
        let per_sec =
            (messages - *last_messages) * 1000 / REPORT_INTERVAL.as_millis().max(1) as u64;
        *last_messages = messages;
        let report = NodeReport {
            addr: advertised.to_string(),
            connections: shared.stats.connections.load(Ordering::Relaxed),
            users: shared.online_users() as u32,
            messages_per_sec: per_sec,
            messages_total: messages,
            queue_depth,
            rss_kib: rss_kib(),
        };
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        write_frame(
            &mut send,
            &BalancerRequest::Report(report),
            MAX_CONTROL_FRAME,
        )
        .await
        .map_err(|e| e.to_string())?;
        send.finish().map_err(|e| e.to_string())?;
        match read_frame::<BalancerResponse>(&mut recv, MAX_CONTROL_FRAME, &mut buf).await {
            Ok(Some(BalancerResponse::Reported)) => {}
            Ok(Some(BalancerResponse::Error(e))) => return Err(e.to_string()),
            Ok(_) => return Err("unexpected reply from the balancer".into()),
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// This process's resident memory in KiB, where /proc tells it.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}
