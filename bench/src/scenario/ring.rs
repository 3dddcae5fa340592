//! `ring`: N clients, each sending M texts to the next, flat out, at most 64
//! unacknowledged each; done when every recipient has every message.

use std::time::{Duration, Instant};

use super::{Progress, bar, befriend, count_texts, send_windowed, watch};
use crate::Options;
use crate::env::Env;
use crate::report::ScenarioResult;

pub async fn run(name: &str, env: &Env, options: &Options) -> anyhow::Result<ScenarioResult> {
    let n = options.clients.unwrap_or(50).max(2);
    let m = options.messages.unwrap_or(2000);
    let size = super::text_size(options);
    let clients = env.users(n).await?;
    let pairs: Vec<_> = (0..n)
        .map(|i| (clients[i].clone(), clients[(i + 1) % n].clone()))
        .collect();
    befriend(&pairs).await?;
    let crossing = pairs
        .iter()
        .filter(|(a, b)| a.node_addr() != b.node_addr())
        .count();

    let expect = (n * m) as u64;
    let start = Instant::now();
    let received = Progress::new(start);
    let cpu = env.cpu_mark();
    let counters: Vec<_> = clients
        .iter()
        .map(|c| count_texts(c, m as u64, received.clone(), start, None))
        .collect();
    let senders: Vec<_> = (0..n)
        .map(|i| {
            let to = clients[(i + 1) % n].name().to_string();
            tokio::spawn(send_windowed(clients[i].clone(), to, m, size, start, false))
        })
        .collect();
    let progress = bar(name, expect);
    let (timeline, elapsed) = watch(&received, expect, Duration::from_secs(120), &progress).await;
    progress.finish_and_clear();
    let mut errors = 0;
    for s in senders {
        errors += s.await?;
    }
    let mut got = 0;
    for c in counters {
        c.abort();
    }
    got += received.done();
    let mut r = ScenarioResult::new(name, n, got.min(expect), "msg", elapsed);
    r.set_cpu(env.cpu_since(&cpu, r.operations));
    r.errors = errors;
    r.lost = expect.saturating_sub(got);
    r.timeline = timeline;
    r.notes.push(format!(
        "{n} clients x {m} texts of {size} bytes, window {}; {crossing} of {n} sender->recipient pairs on different nodes",
        super::WINDOW
    ));
    Ok(r)
}
