//! A private nats-server for `fastchat up --nodes N` and for tests: a child
//! process on a free loopback port, stopped when dropped (or when this
//! process dies, on Linux).

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
    /// logging to `log_dir/nats.log`, and waits until it accepts clients.
    pub fn start(log_dir: &Path, port: u16) -> Result<Self, BusError> {
        let failed = |cause: String| BusError::Connect {
            url: "a local nats-server".into(),
            cause,
        };
        let port = match port {
            0 => TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map_err(|e| failed(e.to_string()))?
                .port(),
            p => p,
        };
        std::fs::create_dir_all(log_dir).map_err(|e| failed(e.to_string()))?;
        let mut command = Command::new("nats-server");
        command
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-l"])
            .arg(log_dir.join("nats.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
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
            if e.kind() == std::io::ErrorKind::NotFound {
                BusError::Connect {
                    url: "a local nats-server".into(),
                    cause: "nats-server is not installed (apt-get install -y nats-server), or pass --bus nats://HOST:PORT of a running one".into(),
                }
            } else {
                failed(format!("cannot start nats-server: {e}"))
            }
        })?;
        let mut server = Self {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if TcpStream::connect_timeout(&server.addr, Duration::from_millis(200)).is_ok() {
                return Ok(server);
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(failed(format!(
                    "nats-server exited at start ({status}); see {}",
                    log_dir.join("nats.log").display()
                )));
            }
            if Instant::now() > deadline {
                return Err(failed("nats-server did not start within 10 s".into()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The URL nodes connect to.
    pub fn url(&self) -> String {
        format!("nats://{}", self.addr)
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

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
