//! A throwaway PostgreSQL server for tests: `initdb` into a temp dir (trust
//! auth, superuser `fastchat`), `postgres` on 127.0.0.1 at a free port with
//! fsync off, stopped (`pg_ctl -m immediate stop`) and deleted when dropped.
//!
//! PostgreSQL refuses to run as root; when the tests run as root the server
//! runs as the `postgres` system user (`runuser -u postgres --`), which the
//! Debian `postgresql` package creates.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use crate::free_tcp_port;

const INSTALL: &str = "PostgreSQL is not installed: apt-get install -y postgresql";
const USER: &str = "fastchat";
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Tries on a fresh port when the one picked was taken before the server bound it.
const START_TRIES: usize = 3;

/// A running PostgreSQL server with its own data directory and port.
pub struct PgServer {
    bin: PathBuf,
    as_postgres: bool,
    port: u16,
    data: PathBuf,
    child: Option<Child>,
    dir: Option<tempfile::TempDir>,
    /// The certificate and key it accepts TLS with, if any.
    ssl: Option<(PathBuf, PathBuf)>,
}

impl PgServer {
    /// Starts a new server with a `fastchat` database. Panics with a clear
    /// message when PostgreSQL is missing or does not come up within 30 s.
    pub fn start() -> PgServer {
        Self::start_inner(None)
    }

    /// Like [`Self::start`], also accepting TLS with this certificate and key
    /// (PEM), for clients that ask for it.
    pub fn start_with_tls(cert: &Path, key: &Path) -> PgServer {
        Self::start_inner(Some((cert, key)))
    }

    fn start_inner(tls: Option<(&Path, &Path)>) -> PgServer {
        let bin = bindir().unwrap_or_else(|| panic!("{INSTALL}"));
        let as_postgres = running_as_root();
        let dir = tempfile::Builder::new()
            .prefix("fastchat-pg-")
            .tempdir()
            .expect("create a temp dir for PostgreSQL");
        let data = dir.path().join("data");
        let ssl = tls.map(|(cert, key)| {
            // PostgreSQL reads them as itself and wants the key private.
            let (c, k) = (dir.path().join("server.crt"), dir.path().join("server.key"));
            std::fs::copy(cert, &c).expect("copy the server certificate");
            std::fs::copy(key, &k).expect("copy the server key");
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o600))
                    .expect("make the key private");
            }
            (c, k)
        });
        if as_postgres {
            let ok = Command::new("chown")
                .args(["-R", "postgres:"])
                .arg(dir.path())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            assert!(
                ok,
                "cannot hand {} to the postgres user (PostgreSQL refuses to run as root); \
                 is the postgresql package installed? apt-get install -y postgresql",
                dir.path().display()
            );
        }
        let mut server = PgServer {
            bin,
            as_postgres,
            port: 0,
            data,
            child: None,
            dir: Some(dir),
            ssl,
        };
        server.initdb();
        let mut last_log = String::new();
        for _ in 0..START_TRIES {
            match server.launch() {
                Ok(()) => {
                    server.createdb(USER);
                    return server;
                }
                Err(log) => last_log = log,
            }
        }
        panic!(
            "PostgreSQL did not start (tried {START_TRIES} ports); its log ends with:\n{last_log}"
        );
    }

    /// A server shared by everyone holding the returned handle: started on
    /// first use, stopped when the last handle is dropped (tests in one
    /// binary share it and take a database each, see [`Self::create_database`]).
    pub fn shared() -> Arc<PgServer> {
        static SHARED: Mutex<Weak<PgServer>> = Mutex::new(Weak::new());
        let mut slot = SHARED.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(server) = slot.upgrade() {
            return server;
        }
        let server = Arc::new(PgServer::start());
        *slot = Arc::downgrade(&server);
        server
    }

    /// The URL of the `fastchat` database.
    pub fn url(&self) -> String {
        self.url_of(USER)
    }

    /// The port the server listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Creates a fresh, empty database `name` and returns its URL.
    pub fn create_database(&self, name: &str) -> String {
        self.createdb(name);
        self.url_of(name)
    }

    fn url_of(&self, db: &str) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/{db}", self.port)
    }

    fn dir(&self) -> &Path {
        self.dir.as_ref().expect("temp dir").path()
    }

    /// A command for one of the server binaries, as the postgres user when we are root.
    fn server_cmd(&self, tool: &str) -> Command {
        let path = self.bin.join(tool);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        };
        // The postgres user may not be able to enter the caller's directory.
        cmd.current_dir(self.dir());
        cmd
    }

    fn initdb(&self) {
        let out = self
            .server_cmd("initdb")
            .arg("-D")
            .arg(&self.data)
            .args([
                "-U",
                USER,
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run initdb ({e}); {INSTALL}"));
        assert!(
            out.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts postgres on a free port and waits until it accepts
    /// connections; on failure returns the tail of its log.
    fn launch(&mut self) -> Result<(), String> {
        self.port = free_tcp_port();
        let log_path = self.dir().join(format!("postgres-{}.log", self.port));
        let log = File::create(&log_path).expect("create the PostgreSQL log file");
        let mut command = self.server_cmd("postgres");
        command
            .arg("-D")
            .arg(&self.data)
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-k")
            .arg(self.dir())
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "max_connections=300",
                "-c",
                "shared_buffers=32MB",
                // Deadlocks (which the code under test must survive) are
                // found in 100 ms instead of a second.
                "-c",
                "deadlock_timeout=100ms",
            ]);
        if let Some((cert, key)) = &self.ssl {
            command
                .args(["-c", "ssl=on", "-c"])
                .arg(format!("ssl_cert_file={}", cert.display()))
                .arg("-c")
                .arg(format!("ssl_key_file={}", key.display()));
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log file handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run postgres ({e}); {INSTALL}"));
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                return Err(tail(&log_path));
            }
            if self.ready() {
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                self.stop_quietly();
                panic!(
                    "PostgreSQL did not accept connections on 127.0.0.1:{} within {}s; its log ends with:\n{}",
                    self.port,
                    READY_TIMEOUT.as_secs(),
                    tail(&log_path)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn ready(&self) -> bool {
        Command::new(self.bin.join("pg_isready"))
            .args([
                "-q",
                "-h",
                "127.0.0.1",
                "-U",
                USER,
                "-d",
                "postgres",
                "-t",
                "1",
            ])
            .arg("-p")
            .arg(self.port.to_string())
            .stdin(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    /// Runs `sql` with psql in database `db` (as the superuser) and returns its output.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .args([
                "-h",
                "127.0.0.1",
                "-U",
                USER,
                "-X",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
            ])
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-d", db, "-c", sql])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run psql ({e}); {INSTALL}"));
        assert!(
            out.status.success(),
            "psql {sql:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn createdb(&self, name: &str) {
        let out = Command::new(self.bin.join("createdb"))
            .args(["-h", "127.0.0.1", "-U", USER])
            .arg("-p")
            .arg(self.port.to_string())
            .arg("--")
            .arg(name)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run createdb ({e}); {INSTALL}"));
        assert!(
            out.status.success(),
            "createdb {name} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn stop_quietly(&self) {
        let _ = self
            .server_cmd("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "-t", "10", "stop"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            self.stop_quietly();
            // Under runuser the child is runuser, which exits with postgres;
            // a server that ignored pg_ctl is killed.
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() > deadline => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
        // Dropping the TempDir removes the data directory.
        self.dir.take();
    }
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// The directory holding initdb/postgres/pg_ctl: `pg_config --bindir`, else
/// the newest `/usr/lib/postgresql/*/bin`, else wherever PATH has `initdb`.
fn bindir() -> Option<PathBuf> {
    let has_all = |dir: &Path| {
        ["initdb", "postgres", "pg_ctl", "pg_isready", "createdb"]
            .iter()
            .all(|t| dir.join(t).is_file())
    };
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if has_all(&dir) {
            return Some(dir);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            Some((v, e.path().join("bin")))
        })
        .filter(|(_, dir)| has_all(dir))
        .collect();
    versions.sort();
    if let Some((_, dir)) = versions.pop() {
        return Some(dir);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).find_map(|dir| {
        let initdb = dir.join("initdb");
        if !initdb.is_file() {
            return None;
        }
        // A symlinked initdb (e.g. /usr/local/bin) points at the real bindir.
        let real = std::fs::canonicalize(&initdb).ok()?;
        let real_dir = real.parent()?.to_path_buf();
        if has_all(&real_dir) {
            Some(real_dir)
        } else if has_all(&dir) {
            Some(dir)
        } else {
            None
        }
    })
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}
