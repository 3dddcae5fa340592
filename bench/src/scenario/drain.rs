//! `drain`: M texts queued for an offline user, then it connects; delivered
//! messages per second from its login until all are stored on its side.

use std::time::{Duration, Instant};

use fastchat_client::Client;

use super::{bar, befriend, send_windowed};
use crate::Options;
use crate::env::Env;
use crate::report::ScenarioResult;

pub async fn run(env: &Env, options: &Options) -> anyhow::Result<ScenarioResult> {
    let m = options.messages.unwrap_or(100_000);
    let size = super::text_size(options);
    let users = env.users(2).await?;
    let (alice, bob) = (users[0].clone(), users[1].clone());
    befriend(&[(alice.clone(), bob.clone())]).await?;
    let bob_name = bob.name().to_string();
    drop(users);
    match std::sync::Arc::try_unwrap(bob) {
        Ok(b) => b.close().await,
        Err(_) => anyhow::bail!("the drain recipient is still in use"),
    }

    let queued_from = Instant::now();
    let progress = bar("queueing", m as u64);
    let sender = tokio::spawn(send_windowed(
        alice.clone(),
        bob_name.clone(),
        m,
        size,
        queued_from,
        false,
    ));
    while !sender.is_finished() {
        tokio::time::sleep(Duration::from_millis(100)).await;
        progress
            .set_position((queued_from.elapsed().as_secs_f64() * 1000.0) as u64 % (m as u64 + 1));
    }
    progress.finish_and_clear();
    let errors = sender.await?;
    let queue_time = queued_from.elapsed();

    let start = Instant::now();
    let cpu = env.cpu_mark();
    let bob = Client::connect(&env.home(&bob_name)).await?;
    bob.sync().await?;
    let elapsed = start.elapsed();
    // Over the same span as the rate: reading the texts back below is the
    // bench's check, not the client's work (a seventh of the harness's CPU
    // in a drain).
    let expect = m as u64 - errors;
    let cpu = env.cpu_since(&cpu, expect);
    let got = bob
        .unshown()?
        .iter()
        .filter(|i| i.kind == fastchat_client::InboxKind::Text)
        .count() as u64;
    bob.close().await;
    let mut r = ScenarioResult::new("drain", 2, got, "msg", elapsed);
    r.set_cpu(cpu);
    r.errors = errors;
    r.lost = expect.saturating_sub(got);
    r.notes.push(format!(
        "{m} texts queued in {:.1} s ({:.0} msg/s) while the recipient was offline",
        queue_time.as_secs_f64(),
        m as f64 / queue_time.as_secs_f64()
    ));
    Ok(r)
}
