//! `latency`: like `ring`, paced at R messages/s in total; latency from the
//! sender's call to the recipient's decrypt (same process, same clock).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use super::{Progress, bar, befriend, count_texts, stamped};
use crate::Options;
use crate::env::Env;
use crate::report::ScenarioResult;

pub async fn run(env: &Env, options: &Options) -> anyhow::Result<ScenarioResult> {
    let n = options.clients.unwrap_or(10).max(2);
    let rate = options.rate.unwrap_or(1000).max(1);
    let seconds = options.duration.unwrap_or(5.0);
    let size = super::text_size(options);
    let per_client = ((rate as f64 * seconds) / n as f64).ceil() as usize;
    let clients = env.users(n).await?;
    let pairs: Vec<_> = (0..n)
        .map(|i| (clients[i].clone(), clients[(i + 1) % n].clone()))
        .collect();
    befriend(&pairs).await?;

    let histogram = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(
        1, 60_000_000, 3,
    )?));
    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let received = Progress::new(start);
    let cpu = env.cpu_mark();
    let counters: Vec<_> = clients
        .iter()
        .map(|c| {
            count_texts(
                c,
                per_client as u64,
                received.clone(),
                start,
                Some(histogram.clone()),
            )
        })
        .collect();
    let interval = Duration::from_secs_f64(n as f64 / rate as f64);
    let mut senders = Vec::new();
    for i in 0..n {
        let (from, to) = (clients[i].clone(), clients[(i + 1) % n].name().to_string());
        let errors = errors.clone();
        // Spread the clients' ticks over one interval so the load is even.
        let offset = interval.mul_f64(i as f64 / n as f64);
        senders.push(tokio::spawn(async move {
            tokio::time::sleep(offset).await;
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut inflight = Vec::new();
            for _ in 0..per_client {
                ticker.tick().await;
                let (from, to, errors) = (from.clone(), to.clone(), errors.clone());
                let text = stamped(start, size);
                inflight.push(tokio::spawn(async move {
                    if from.send_text(&to, &text).await.is_err() {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }));
            }
            for t in inflight {
                let _ = t.await;
            }
        }));
    }
    let expect = (per_client * n) as u64;
    let progress = bar("latency", expect);
    let limit = Duration::from_secs_f64(seconds * 3.0 + 10.0);
    let (timeline, elapsed) = super::watch(&received, expect, limit, &progress).await;
    progress.finish_and_clear();
    for s in senders {
        s.await?;
    }
    for c in counters {
        c.abort();
    }
    let got = received.done();
    let h = histogram.lock().expect("histogram lock").clone();
    let mut r = ScenarioResult::new("latency", n, got, "msg", elapsed).with_latency(&h);
    r.set_cpu(env.cpu_since(&cpu, r.operations));
    r.errors = errors.load(Ordering::Relaxed);
    r.lost = expect.saturating_sub(got);
    r.timeline = timeline;
    r.notes.push(format!(
        "paced at {rate} msg/s in all for {seconds} s, {size}-byte texts"
    ));
    Ok(r)
}
