//! `fanout`: one sender to a group of 100 members (joined in one re-key);
//! deliveries per second until every member has every message.

use std::time::{Duration, Instant};

use super::{Progress, bar, befriend, count_texts, send_windowed, watch};
use crate::Options;
use crate::env::Env;
use crate::report::ScenarioResult;

pub async fn run(env: &Env, options: &Options) -> anyhow::Result<ScenarioResult> {
    let members = options.clients.unwrap_or(100).max(1);
    let m = options.messages.unwrap_or(500);
    let size = super::text_size(options);
    let users = env.users(members + 1).await?;
    let admin = users[0].clone();
    let pairs: Vec<_> = users[1..]
        .iter()
        .map(|u| (admin.clone(), u.clone()))
        .collect();
    befriend(&pairs).await?;
    let group = format!("{}g", admin.name());
    admin.group_create(&group).await?;
    let names: Vec<&str> = users[1..].iter().map(|u| u.name()).collect();
    admin.group_add(&group, &names).await?;
    for u in &users[1..] {
        u.sync().await?;
    }

    let expect = (members * m) as u64;
    let start = Instant::now();
    let received = Progress::new(start);
    let cpu = env.cpu_mark();
    let counters: Vec<_> = users[1..]
        .iter()
        .map(|c| count_texts(c, m as u64, received.clone(), start, None))
        .collect();
    let sender = tokio::spawn(send_windowed(admin.clone(), group, m, size, start, true));
    let progress = bar("fanout", expect);
    let (timeline, elapsed) = watch(&received, expect, Duration::from_secs(120), &progress).await;
    progress.finish_and_clear();
    let errors = sender.await?;
    for c in counters {
        c.abort();
    }
    let got = received.done();
    let mut r = ScenarioResult::new("fanout", members + 1, got.min(expect), "delivery", elapsed);
    r.set_cpu(env.cpu_since(&cpu, r.operations));
    r.errors = errors;
    r.lost = expect.saturating_sub(got);
    r.timeline = timeline;
    r.notes.push(format!(
        "1 sender, {members} members, {m} group texts of {size} bytes"
    ));
    Ok(r)
}
