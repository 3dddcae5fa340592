//! The cluster under test and the simulated users: a local `fastchat up`
//! process (so its memory can be read apart from the harness), or a remote
//! cluster; users registered from a cached pool of identities.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::Context;
use fastchat_client::Client;
use fastchat_crypto::Identity;

use crate::Target;

/// A running cluster plus what the harness needs to use it.
pub struct Env {
    /// Where the cluster is (a scenario may start another like it).
    pub target: Target,
    pub server: String,
    pub ca: PathBuf,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// Tells this run's user names apart from earlier runs' on a remote cluster.
    tag: String,
    next_user: AtomicUsize,
    /// Every cached identity, and how many this run has used.
    pool: tokio::sync::Mutex<(Vec<Vec<u8>>, usize)>,
}

impl Env {
    /// Starts (or reaches) the cluster; a local one gets `nodes` nodes (more
    /// than one: a private nats-server, one shared SQLite file, round-robin
    /// so users spread evenly).
    pub async fn start(target: &Target, image_bytes: u64, nodes: u16) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let mut tag = [0u8; 3];
        fastchat_crypto::random_bytes(&mut tag)?;
        let tag: String = tag.iter().map(|b| format!("{b:02x}")).collect();
        let (server, ca, child) = match target {
            Target::Remote { server, ca } => (server.clone(), ca.clone(), None),
            Target::Local { binary } => {
                // Room for the largest image this run sends.
                let image_mib = (image_bytes >> 20) + 1;
                let mut child = Command::new(binary)
                    .args(["up", "--listen", "127.0.0.1:0", "--dir"])
                    .arg(dir.path().join("cluster"))
                    .arg("--max-image-mib")
                    .arg(image_mib.max(100).to_string())
                    .arg("--image-quota-mib")
                    .arg((image_mib * 4).max(1024).to_string())
                    // The harness befriends hundreds of users from one admin.
                    .args(["--friend-requests-per-minute", "1000000"])
                    .args(["--nodes", &nodes.to_string()])
                    .args(if nodes > 1 {
                        &["--strategy", "round-robin"][..]
                    } else {
                        &[]
                    })
                    .env("FASTCHAT_LOG", "warn")
                    .stdout(Stdio::piped())
                    .stderr(Stdio::inherit())
                    .spawn()
                    .with_context(|| format!("cannot start {}", binary.display()))?;
                let mut line = String::new();
                BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line)?;
                let word_after = |key: &str| {
                    line.split(key)
                        .nth(1)
                        .and_then(|s| s.split_whitespace().next())
                        .map(|s| s.trim_end_matches(',').to_string())
                };
                let (Some(server), Some(ca)) = (word_after("--server "), word_after("--ca "))
                else {
                    let _ = child.kill();
                    anyhow::bail!("the local cluster did not start: {line}");
                };
                (server, PathBuf::from(ca), Some(child))
            }
        };
        Ok(Self {
            target: target.clone(),
            server,
            ca,
            dir,
            child,
            tag,
            next_user: AtomicUsize::new(0),
            pool: tokio::sync::Mutex::new((load_pool(), 0)),
        })
    }

    /// The cluster process's id, when this run started it.
    pub fn cluster_pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Marks the start of a measured part, for CPU per operation.
    pub fn cpu_mark(&self) -> crate::cpu::CpuMark {
        profile_mark("start");
        crate::cpu::CpuMark::now(self.cluster_pid())
    }

    /// CPU per operation since `mark`, over `operations` operations.
    pub fn cpu_since(&self, mark: &crate::cpu::CpuMark, operations: u64) -> crate::cpu::CpuPerOp {
        profile_mark("end");
        mark.per_op(self.cluster_pid(), operations)
    }

    /// The cluster process's (current, peak) resident memory in KiB, if local.
    pub fn node_rss(&self) -> Option<(u64, u64)> {
        let pid = self.child.as_ref()?.id();
        rss_of(&format!("/proc/{pid}/status"))
    }

    /// `count` freshly registered, logged-in users.
    pub async fn users(&self, count: usize) -> anyhow::Result<Vec<Arc<Client>>> {
        let identities = self.identities(count).await?;
        let mut tasks = Vec::with_capacity(count);
        for der in identities {
            let n = self.next_user.fetch_add(1, Ordering::Relaxed);
            let name = format!("b{}u{n}", self.tag);
            let home = self.home(&name);
            let (server, ca) = (self.server.clone(), self.ca.clone());
            tasks.push(tokio::spawn(async move {
                let identity = Identity::from_pkcs8_der(&der)?;
                anyhow::Ok(
                    Client::register_with_identity(&home, &name, &server, &ca, identity).await?,
                )
            }));
        }
        let mut clients = Vec::with_capacity(count);
        for t in tasks {
            clients.push(Arc::new(t.await??));
        }
        Ok(clients)
    }

    /// The home directory of a simulated user.
    pub fn home(&self, name: &str) -> PathBuf {
        self.dir.path().join("homes").join(name)
    }

    /// A scratch directory for files.
    pub fn scratch(&self) -> PathBuf {
        self.dir.path().join("scratch")
    }

    async fn identities(&self, count: usize) -> anyhow::Result<Vec<Vec<u8>>> {
        let mut guard = self.pool.lock().await;
        let (pool, used) = &mut *guard;
        if pool.len() - *used < count {
            let missing = count - (pool.len() - *used);
            eprintln!("bench: generating {missing} RSA-3072 identities (cached for later runs)...");
            let workers = std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2);
            let mut tasks = Vec::new();
            for w in 0..workers {
                let share = missing / workers + usize::from(w < missing % workers);
                tasks.push(tokio::task::spawn_blocking(move || {
                    (0..share)
                        .map(|_| Ok(Identity::generate()?.to_pkcs8_der()?.to_vec()))
                        .collect::<anyhow::Result<Vec<_>>>()
                }));
            }
            for t in tasks {
                pool.extend(t.await??);
            }
            save_pool(pool);
        }
        // Each identity is used once per run: a key registered twice is fine,
        // but the node would hold two users with the same key.
        let out = pool[*used..*used + count].to_vec();
        *used += count;
        Ok(out)
    }

    pub async fn stop(mut self) {
        if let Some(child) = &mut self.child {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// (VmRSS, VmHWM) in KiB from a /proc status file.
fn rss_of(status: &str) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(status).ok()?;
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// The harness's own peak resident memory in KiB.
pub fn harness_peak_rss() -> Option<u64> {
    rss_of("/proc/self/status").map(|(_, hwm)| hwm)
}

fn pool_path() -> Option<PathBuf> {
    std::env::var_os("FASTCHAT_BENCH_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/fastchat-bench")))
        .map(|d| d.join("identities.bin"))
}

fn load_pool() -> Vec<Vec<u8>> {
    let Some(bytes) = pool_path().and_then(|p| std::fs::read(p).ok()) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut rest = &bytes[..];
    while rest.len() >= 4 {
        let len = u32::from_be_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
        if rest.len() < 4 + len {
            break;
        }
        out.push(rest[4..4 + len].to_vec());
        rest = &rest[4 + len..];
    }
    out
}

fn save_pool(pool: &[Vec<u8>]) {
    let Some(path) = pool_path() else { return };
    // The pool is refilled by each run; keep what was generated so the next
    // run does not pay for key generation again.
    let mut bytes = Vec::new();
    for der in pool {
        bytes.extend_from_slice(&(der.len() as u32).to_be_bytes());
        bytes.extend_from_slice(der);
    }
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let _ = std::fs::write(path, bytes);
}

/// With `FASTCHAT_BENCH_MARKS` set, prints when the measured part of a
/// scenario starts and ends on the monotonic clock, so a profile of the
/// whole run can be cut to it: `perf record -k CLOCK_MONOTONIC ...`, then
/// `perf report --time START,END`.
fn profile_mark(what: &str) {
    if std::env::var_os("FASTCHAT_BENCH_MARKS").is_none() {
        return;
    }
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid timespec for the call to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) };
    eprintln!(
        "bench: measured part {what} at {}.{:09}",
        t.tv_sec, t.tv_nsec
    );
}
