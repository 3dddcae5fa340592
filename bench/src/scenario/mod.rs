//! The scenarios, one file each, and what they share: befriending, paced or
//! windowed senders, counting receivers, progress bars and timelines.

mod connect;
mod cross;
mod drain;
mod fanout;
mod image;
mod latency;
mod raw;
mod ring;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fastchat_client::{Client, InboxKind};
use indicatif::{ProgressBar, ProgressStyle};

use crate::Options;
use crate::env::{Env, harness_peak_rss};
use crate::report::ScenarioResult;

/// Most unacknowledged messages a simulated client keeps in flight.
pub const WINDOW: usize = 64;

pub async fn run(name: &str, env: &Env, options: &Options) -> anyhow::Result<ScenarioResult> {
    let mut result = match name {
        "raw-quic" => raw::run(env, options).await?,
        "ring" => ring::run("ring", env, options).await?,
        "cross-node" => cross::run(env, options).await?,
        "latency" => on_one_worker(latency::run(env, options))?,
        "image" => image::run(env, options).await?,
        "fanout" => fanout::run(env, options).await?,
        "drain" => drain::run(env, options).await?,
        "connect" => connect::run(env, options).await?,
        other => anyhow::bail!("unknown scenario {other}"),
    };
    if result.node_rss_kib.is_none()
        && let Some((rss, peak)) = env.node_rss()
    {
        result.node_rss_kib = Some(rss);
        result.node_peak_rss_kib = Some(peak);
    }
    result.harness_peak_rss_kib = harness_peak_rss();
    if name != "raw-quic" && env.cluster_pid().is_none() {
        result.notes.push(
            "node CPU not measured: with --server the node is not a process of this run".into(),
        );
    }
    Ok(result)
}

/// Runs a scenario on a runtime of its own with one worker thread, as each
/// real client runs (`fastchat chat`, `send`, `recv`): a paced load on the
/// harness's shared workers measures their wake-ups of one another, a cost
/// no user's client has.
fn on_one_worker<T: Send>(
    scenario: impl std::future::Future<Output = anyhow::Result<T>> + Send,
) -> anyhow::Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()?
                .block_on(scenario)
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the scenario's thread panicked"))?
    })
}

/// A bar counting `total` operations, hidden when stderr is not a terminal.
pub fn bar(name: &str, total: u64) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{msg:10} [{bar:40}] {pos}/{len} {per_sec} ETA {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_message(name.to_string());
    bar
}

/// Makes each `(a, b)` pair friends: all requests first, then all accepts.
pub async fn befriend(pairs: &[(Arc<Client>, Arc<Client>)]) -> anyhow::Result<()> {
    let mut tasks = Vec::new();
    for (a, b) in pairs {
        let (a, b) = (a.clone(), b.clone());
        tasks.push(tokio::spawn(async move { a.friend_add(b.name()).await }));
    }
    for t in tasks {
        t.await??;
    }
    let mut tasks = Vec::new();
    for (a, b) in pairs {
        let (a, b) = (a.clone(), b.clone());
        tasks.push(tokio::spawn(async move { b.friend_add(a.name()).await }));
    }
    for t in tasks {
        t.await??;
    }
    for (a, _) in pairs {
        a.sync().await?;
    }
    Ok(())
}

/// A text of `size` bytes that starts with the nanoseconds since `start`,
/// so the receiver can compute the latency on the same clock.
pub fn stamped(start: Instant, size: usize) -> String {
    // Written digit by digit into the padded text: formatting and padding
    // one char at a time cost a twentieth of a simulated client's work per
    // text, load the bench put on itself rather than on the cluster.
    let mut text = vec![b'.'; size.max(20)];
    // As u64 (584 years): twenty u128 divisions cost more than the rest.
    let mut nanos = start.elapsed().as_nanos() as u64;
    for digit in text[..20].iter_mut().rev() {
        *digit = b'0' + (nanos % 10) as u8;
        nanos /= 10;
    }
    String::from_utf8(text).expect("ASCII digits and dots")
}

/// The send time written by [`stamped`].
pub fn stamp_of(text: &str) -> Option<Duration> {
    text.get(..20)?
        .parse::<u64>()
        .ok()
        .map(Duration::from_nanos)
}

/// Operations done so far, and when the last of them was done: a rate is
/// measured to that instant. Measured to the sampler's tick instead, a
/// 0.3 s run gained up to a third in its time (ticks are 100 ms apart).
pub struct Progress {
    start: Instant,
    done: AtomicU64,
    last_us: AtomicU64,
}

impl Progress {
    /// Nothing done yet; times count from `start`.
    pub fn new(start: Instant) -> Arc<Self> {
        Arc::new(Self {
            start,
            done: AtomicU64::new(0),
            last_us: AtomicU64::new(0),
        })
    }

    /// Notes `n` more done, now.
    pub fn add(&self, n: u64) {
        // The time goes first: whoever sees the count sees its time.
        let at = self.start.elapsed().as_micros() as u64;
        self.last_us.fetch_max(at, Ordering::Release);
        self.done.fetch_add(n, Ordering::Release);
    }

    /// How many are done.
    pub fn done(&self) -> u64 {
        self.done.load(Ordering::Acquire)
    }

    /// When the last was done, since `start`.
    pub fn last(&self) -> Duration {
        Duration::from_micros(self.last_us.load(Ordering::Acquire))
    }
}

/// Counts texts arriving at `client` until `expect` have, adding each one's
/// latency (from its stamp) to `latencies`. Returns the count reached.
pub fn count_texts(
    client: &Client,
    expect: u64,
    counter: Arc<Progress>,
    start: Instant,
    latencies: Option<Arc<std::sync::Mutex<hdrhistogram::Histogram<u64>>>>,
) -> tokio::task::JoinHandle<u64> {
    let mut events = client.subscribe();
    tokio::spawn(async move {
        let mut got = 0u64;
        while got < expect {
            match events.recv().await {
                Ok(item) if item.kind == InboxKind::Text => {
                    got += 1;
                    counter.add(1);
                    if let (Some(h), Some(sent)) = (&latencies, stamp_of(&item.text)) {
                        let us = start.elapsed().saturating_sub(sent).as_micros() as u64;
                        let _ = h.lock().expect("histogram lock").record(us.max(1));
                    }
                }
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    got += n;
                    counter.add(n);
                }
                Err(_) => break,
            }
        }
        got
    })
}

/// Text size for text scenarios: `--size` where it fits a text (in `all`,
/// `--size` sizes the image), else 200 bytes.
pub fn text_size(options: &Options) -> usize {
    match options.size {
        Some(s) if s as usize <= fastchat_proto::limits::MAX_TEXT_BYTES => s as usize,
        _ => 200,
    }
}

/// Samples `progress` every 100 ms (and moves `bar`) until it reaches
/// `expect`, `limit` passes, or nothing moved for 10 s; returns the timeline
/// and the time of the last progress (what throughput is measured over).
pub async fn watch(
    progress: &Progress,
    expect: u64,
    limit: Duration,
    bar: &ProgressBar,
) -> (Vec<(f64, u64)>, Duration) {
    let start = progress.start;
    let mut timeline = vec![(0.0, 0)];
    let mut last_change = Instant::now();
    let mut last = 0;
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let n = progress.done();
        if n != last {
            last = n;
            last_change = Instant::now();
        }
        bar.set_position(n);
        timeline.push((start.elapsed().as_secs_f64(), n));
        if n >= expect || start.elapsed() > limit || last_change.elapsed() > Duration::from_secs(10)
        {
            return (timeline, progress.last());
        }
    }
}

/// Sends `count` texts from `from` to `to`, at most [`WINDOW`] unacknowledged;
/// returns how many failed. One task per sender (the sends in flight are
/// futures it polls), as a real client would hold them.
pub async fn send_windowed(
    from: Arc<Client>,
    to: String,
    count: usize,
    size: usize,
    start: Instant,
    group: bool,
) -> u64 {
    use futures::stream::{FuturesUnordered, StreamExt};
    let send = |text: String| {
        let (from, to) = (from.clone(), to.clone());
        async move {
            if group {
                from.send_group_text(&to, &text).await
            } else {
                from.send_text(&to, &text).await
            }
        }
    };
    let mut errors = 0;
    let mut in_flight = FuturesUnordered::new();
    let mut sent = 0;
    while sent < count || !in_flight.is_empty() {
        if sent < count && in_flight.len() < WINDOW {
            in_flight.push(send(stamped(start, size)));
            sent += 1;
            continue;
        }
        if let Some(Err(e)) = in_flight.next().await {
            tracing::warn!(error = %e, "send failed");
            errors += 1;
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamped_text_has_its_size_and_reads_back_its_time() {
        let start = Instant::now();
        std::thread::sleep(Duration::from_millis(2));
        let text = stamped(start, 200);
        assert_eq!(text.len(), 200);
        assert!(text[20..].bytes().all(|b| b == b'.'));
        let stamp = stamp_of(&text).unwrap();
        assert!(
            stamp >= Duration::from_millis(2) && stamp <= start.elapsed(),
            "{stamp:?}"
        );
        // Shorter than its stamp: the stamp still fits.
        assert_eq!(stamped(start, 5).len(), 20);
    }
}
