//! A private nats-server for `fastchat up --nodes N` and for tests: a child
//! process on a free loopback port, stopped when dropped (or when this
//! process dies, on Linux). It speaks TLS only, with the cluster's node
//! certificate, and admits only clients that present a certificate from
//! the cluster CA: an anonymous client cannot read, fetch or publish.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::BusError;

/// A running nats-server child process.
pub struct NatsServer {
    child: Child,
    addr: SocketAddr,
}

impl NatsServer {
    /// Starts `nats-server` on 127.0.0.1 (a free port when `port` is 0),
    /// with TLS from the certificate directory `certs` (`ca.pem`,
    /// `node.pem`, `node.key`) and client certificates required, logging to
    /// `log_dir/nats.log`, and waits until it accepts clients.
    pub fn start(log_dir: &Path, port: u16, certs: &Path) -> Result<Self, BusError> {
        std::fs::create_dir_all(log_dir).map_err(|e| failed(e.to_string()))?;
        // A port found free here can be taken before nats-server binds it
        // (tests start many servers at once); then another one is tried.
        let tries = if port == 0 { 3 } else { 1 };
        let mut last = None;
        for _ in 0..tries {
            let port = match port {
                0 => free_port().map_err(|e| failed(e.to_string()))?,
                p => p,
            };
            match Self::start_on(log_dir, port, certs) {
                Ok(server) => return Ok(server),
                Err(Attempt::Fatal(e)) => return Err(e),
                Err(Attempt::Exited(e)) => last = Some(e),
            }
        }
        Err(last.expect("at least one try"))
    }

    fn start_on(log_dir: &Path, port: u16, certs: &Path) -> Result<Self, Attempt> {
        // The name tells our server apart from anything else that answers
        // on the port (another test's server, or a TCP self-connect).
        let name = format!("fastchat-{}-{port}-{:08x}", std::process::id(), rand_u32());
        let mut command = Command::new("nats-server");
        command
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-n",
                &name,
                "-l",
            ])
            .arg(log_dir.join("nats.log"))
            .arg("--tlsverify")
            .arg("--tlscert")
            .arg(certs.join(fastchat_certs::NODE_CERT))
            .arg("--tlskey")
            .arg(certs.join(fastchat_certs::NODE_KEY))
            .arg("--tlscacert")
            .arg(certs.join(fastchat_certs::CA_CERT))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if std::env::var_os("GOMAXPROCS").is_none() {
            command.env("GOMAXPROCS", go_threads().to_string());
        }
        #[cfg(target_os = "linux")]
        {
            use std::os::unix::process::CommandExt;
            // SAFETY: prctl is async-signal-safe; it only asks the kernel to
            // stop the server if we die without dropping it.
            unsafe {
                command.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                    Ok(())
                });
            }
        }
        let child = command.spawn().map_err(|e| {
            Attempt::Fatal(failed(if e.kind() == std::io::ErrorKind::NotFound {
                "nats-server is not installed (apt-get install -y nats-server), or pass --bus nats://HOST:PORT of a running one".into()
            } else {
                format!("cannot start nats-server: {e}")
            }))
        })?;
        let mut server = Self {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if answers_as(&server.addr, &name) {
                return Ok(server);
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(Attempt::Exited(failed(format!(
                    "nats-server exited at start ({status}); see {}",
                    log_dir.join("nats.log").display()
                ))));
            }
            if Instant::now() > deadline {
                return Err(Attempt::Fatal(failed(
                    "nats-server did not start within 10 s".into(),
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The URL nodes connect to (TLS only).
    pub fn url(&self) -> String {
        format!("tls://{}", self.addr)
    }

    /// The server's process id (for tests that stop and restart it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }
}

/// Why one try to start the server failed.
enum Attempt {
    /// It exited at start (its port was likely taken): worth another port.
    Exited(BusError),
    /// Trying again would fail the same way.
    Fatal(BusError),
}

/// Threads the private server's Go runtime may run at once: half the
/// cores, at least one, as a node's workers (DESIGN.md, "Threads"). With
/// one per core, the bus's goroutines handed each message between threads:
/// under `bench cross-node` on two cores nats-server spent 41% of the
/// cluster's CPU, a fifth of it switching threads; with one, the
/// cluster's CPU per text fell by a quarter. `GOMAXPROCS` set by the user
/// is left alone.
fn go_threads() -> usize {
    (std::thread::available_parallelism().map_or(1, |n| n.get()) / 2).max(1)
}

fn failed(cause: String) -> BusError {
    BusError::Connect {
        url: "a local nats-server".into(),
        cause,
    }
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn rand_u32() -> u32 {
    let mut b = [0u8; 4];
    let _ = fastchat_crypto::random_bytes(&mut b);
    u32::from_le_bytes(b)
}

/// Whether a NATS server named `name` greets a client at `addr`.
fn answers_as(addr: &SocketAddr, name: &str) -> bool {
    use std::io::{BufRead, BufReader};
    let Ok(stream) = TcpStream::connect_timeout(addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let mut greeting = String::new();
    // NATS speaks first: one `INFO {json}` line.
    if BufReader::new(stream).read_line(&mut greeting).is_err() {
        return false;
    }
    greeting.starts_with("INFO ") && greeting.contains(&format!("\"server_name\":\"{name}\""))
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_taken_port_is_reported_and_only_our_server_counts_as_started() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("certs");
        fastchat_certs::generate(&root, &[], false, 1).unwrap();
        let certs = fastchat_certs::role_dir(&root, fastchat_certs::Role::Bus);
        let first = NatsServer::start(&dir.path().join("a"), 0, &certs).unwrap();
        // Something else answering on the port is not mistaken for a new server.
        let err = NatsServer::start(&dir.path().join("b"), first.port(), &certs)
            .err()
            .expect("a second server on a taken port");
        assert!(err.to_string().contains("exited at start"), "{err}");
        // Port 0 finds a free port, also while others are being started.
        let second = NatsServer::start(&dir.path().join("c"), 0, &certs).unwrap();
        assert_ne!(first.port(), second.port());
        assert!(!answers_as(&first.addr, "someone-else"));
        // Its Go runtime runs half the cores' threads (or what the user set).
        #[cfg(target_os = "linux")]
        {
            let environ = std::fs::read(format!("/proc/{}/environ", second.pid())).unwrap();
            let wanted = std::env::var("GOMAXPROCS").unwrap_or_else(|_| go_threads().to_string());
            assert!(
                environ
                    .split(|b| *b == 0)
                    .any(|v| v == format!("GOMAXPROCS={wanted}").as_bytes()),
                "nats-server runs without GOMAXPROCS={wanted}"
            );
        }
    }

    /// The bus is closed to anyone without a cluster certificate: a plain
    /// client is told TLS is required, and never gets to subscribe.
    #[test]
    fn a_client_without_tls_cannot_subscribe() {
        use std::io::{BufRead, BufReader, Write};
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("certs");
        fastchat_certs::generate(&root, &[], false, 1).unwrap();
        let certs = fastchat_certs::role_dir(&root, fastchat_certs::Role::Bus);
        let server = NatsServer::start(&dir.path().join("n"), 0, &certs).unwrap();
        let mut stream = TcpStream::connect(server.addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut info = String::new();
        reader.read_line(&mut info).unwrap();
        assert!(info.contains("\"tls_required\":true"), "{info}");
        let _ = stream.write_all(b"CONNECT {\"verbose\":true}\r\nSUB > 1\r\nPING\r\n");
        let mut rest = String::new();
        while reader.read_line(&mut rest).is_ok_and(|n| n > 0) {}
        assert!(!rest.contains("PONG") && !rest.contains("+OK"), "{rest}");
    }
}
