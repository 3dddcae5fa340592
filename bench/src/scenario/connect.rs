//! `connect`: N registered users log in at once (a login storm), then stay
//! connected while the node's memory is read.

use std::time::Instant;

use fastchat_client::Client;

use crate::Options;
use crate::env::Env;
use crate::report::ScenarioResult;

pub async fn run(env: &Env, options: &Options) -> anyhow::Result<ScenarioResult> {
    let n = options.clients.unwrap_or(200).max(1);
    let users = env.users(n).await?;
    let names: Vec<String> = users.iter().map(|u| u.name().to_string()).collect();
    // Closing waits for each connection to drain; one at a time that was
    // most of this scenario's wall time.
    futures::future::join_all(users.iter().map(|u| u.close())).await;
    drop(users);
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let before = env.node_rss().map(|(rss, _)| rss);

    let start = Instant::now();
    let cpu = env.cpu_mark();
    let mut tasks = Vec::with_capacity(n);
    for name in &names {
        let home = env.home(name);
        tasks.push(tokio::spawn(async move { Client::connect(&home).await }));
    }
    let mut clients = Vec::with_capacity(n);
    let mut errors = 0;
    for t in tasks {
        match t.await? {
            Ok(c) => clients.push(c),
            Err(e) => {
                tracing::warn!(error = %e, "login failed");
                errors += 1;
            }
        }
    }
    let elapsed = start.elapsed();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let after = env.node_rss().map(|(rss, _)| rss);
    let mut r = ScenarioResult::new("connect", n, clients.len() as u64, "login", elapsed);
    r.set_cpu(env.cpu_since(&cpu, r.operations));
    r.errors = errors;
    if let (Some(b), Some(a)) = (before, after) {
        r.notes.push(format!(
            "node RSS {b} KiB before, {a} KiB with {} idle clients: {:.1} KiB each",
            clients.len(),
            a.saturating_sub(b) as f64 / clients.len().max(1) as f64
        ));
    }
    futures::future::join_all(clients.iter().map(Client::close)).await;
    Ok(r)
}
