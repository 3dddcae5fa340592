//! `raw-quic`: the physical limit, measured in the same run. Plain quinn on
//! the same TLS and socket settings, one hop, no fastchat logic: the same
//! message count with one stream per message (each answered by one byte),
//! and the same bytes as `image` over one stream.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fastchat_transport::quinn::Connection;
use fastchat_transport::{Listener, ServerKind, client_endpoint, connect, server_endpoint};

use super::{Progress, WINDOW, bar, watch};
use crate::Options;
use crate::env::Env;
use crate::report::ScenarioResult;

async fn serve(listener: Listener) {
    while let Some(accepting) = listener.accept().await {
        tokio::spawn(async move {
            let Ok(conn) = accepting.await else { return };
            while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                tokio::spawn(async move {
                    let mut n = 0usize;
                    while let Ok(Some(c)) = recv.read_chunk(usize::MAX, true).await {
                        n += c.bytes.len();
                    }
                    let _ = send.write_all(&[(n & 0xff) as u8]).await;
                    let _ = send.finish();
                });
            }
        });
    }
}

async fn one_message(conn: &Connection, payload: &[u8]) -> anyhow::Result<()> {
    let (mut send, mut recv) = conn.open_bi().await?;
    send.write_all(payload).await?;
    send.finish()?;
    recv.read_to_end(16).await?;
    Ok(())
}

pub async fn run(env: &Env, options: &Options) -> anyhow::Result<ScenarioResult> {
    let n = options.clients.unwrap_or(50).max(1);
    let m = options.messages.unwrap_or(2000);
    let msg_size = 200usize;
    let bulk = options.size.unwrap_or(50 << 20);
    let certs = env.scratch().join("raw-certs");
    let identity = fastchat_certs::NodeIdentity::load(&fastchat_certs::role_dir(
        &certs,
        fastchat_certs::Role::Node(1),
    ));
    let identity = match identity {
        Ok(id) => id,
        Err(_) => {
            fastchat_certs::generate(&certs, &[], true, 1)?;
            fastchat_certs::NodeIdentity::load(&fastchat_certs::role_dir(
                &certs,
                fastchat_certs::Role::Node(1),
            ))?
        }
    };
    let server = server_endpoint("127.0.0.1:0".parse()?, &identity, ServerKind::Node)?;
    let addr = server.endpoint().local_addr()?.to_string();
    let server_task = tokio::spawn(serve(server.clone()));

    // Messages: n connections, each with at most WINDOW streams in flight.
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        let ep = client_endpoint(&identity.ca, None)?;
        conns.push((connect(&ep, &addr).await?, ep));
    }
    let errors = Arc::new(AtomicU64::new(0));
    let expect = (n * m) as u64;
    let start = Instant::now();
    let done = Progress::new(start);
    let mut senders = Vec::new();
    for (conn, _) in &conns {
        let (conn, done, errors) = (conn.clone(), done.clone(), errors.clone());
        senders.push(tokio::spawn(async move {
            let window = Arc::new(tokio::sync::Semaphore::new(WINDOW));
            let payload: Arc<[u8]> = vec![b'x'; msg_size].into();
            for _ in 0..m {
                let permit = window.clone().acquire_owned().await.expect("open");
                let (conn, done, errors, payload) =
                    (conn.clone(), done.clone(), errors.clone(), payload.clone());
                tokio::spawn(async move {
                    match one_message(&conn, &payload).await {
                        Ok(()) => done.add(1),
                        Err(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    drop(permit);
                });
            }
        }));
    }
    let progress = bar("raw msgs", expect);
    let (timeline, msg_elapsed) = watch(&done, expect, Duration::from_secs(120), &progress).await;
    progress.finish_and_clear();
    for s in senders {
        s.await?;
    }
    let msgs = done.done();
    let msg_rate = msgs as f64 / msg_elapsed.as_secs_f64();

    // Bulk: the same bytes as `image`, one stream.
    let (conn, _ep) = &conns[0];
    let block = vec![7u8; 1 << 20];
    let start = Instant::now();
    let (mut send, mut recv) = conn.open_bi().await?;
    let mut left = bulk;
    while left > 0 {
        let k = left.min(block.len() as u64) as usize;
        send.write_all(&block[..k]).await?;
        left -= k as u64;
    }
    send.finish()?;
    recv.read_to_end(16).await?;
    let bulk_elapsed = start.elapsed();
    let byte_rate = bulk as f64 / bulk_elapsed.as_secs_f64();

    for (c, _) in &conns {
        c.close(0u32.into(), b"done");
    }
    server.endpoint().close(0u32.into(), b"done");
    server_task.abort();

    let mut r = ScenarioResult::new("raw-quic", n, msgs, "msg", msg_elapsed);
    r.raw = Some((msg_rate, byte_rate));
    r.errors = errors.load(Ordering::Relaxed);
    r.lost = expect.saturating_sub(msgs + r.errors);
    r.timeline = timeline;
    r.notes.push(format!(
        "{n} connections x {m} streams of {msg_size} bytes (window {WINDOW}): {msg_rate:.0} msg/s; {:.1} MiB over one stream in {:.0} ms: {:.0} MB/s",
        bulk as f64 / (1 << 20) as f64,
        bulk_elapsed.as_secs_f64() * 1e3,
        byte_rate / 1e6
    ));
    Ok(r)
}
