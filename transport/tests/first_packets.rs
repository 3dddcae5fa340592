//! A new client socket sends its first packets at once, even while its
//! runtime is too busy to poll for I/O readiness: in a login storm many
//! clients share one runtime, and the node should start on their
//! handshakes at once, not after every client has opened its keystore.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use fastchat_certs::{NodeIdentity, Role, role_dir};
use fastchat_transport::{ServerKind, client_endpoint, connect, server_endpoint};

/// A task that is always ready to run until `seen` is set or `deadline`
/// passes, so a runtime running it never runs out of work.
struct Busy {
    seen: Arc<AtomicBool>,
    deadline: Instant,
}

impl Future for Busy {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.seen.load(Ordering::SeqCst) || Instant::now() > self.deadline {
            return Poll::Ready(());
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

#[test]
fn a_connection_attempt_leaves_while_its_runtime_never_polls_for_readiness() {
    let dir = tempfile::tempdir().unwrap();
    let ca = fastchat_certs::ensure(dir.path(), &[], 1).unwrap();
    let identity = NodeIdentity::load(&role_dir(dir.path(), Role::Node(1))).unwrap();

    // The server on a runtime of its own, noting the first attempt.
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let seen = Arc::new(AtomicBool::new(false));
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let noted = seen.clone();
    server_rt.spawn(async move {
        let server = server_endpoint(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            &identity,
            ServerKind::Node,
        )
        .unwrap();
        addr_tx
            .send(server.endpoint().local_addr().unwrap())
            .unwrap();
        let _attempt = server.accept().await;
        noted.store(true, Ordering::SeqCst);
        std::future::pending::<()>().await;
    });
    let addr = addr_rx.recv().unwrap();

    // The client's runtime polls for readiness only when it runs out of
    // tasks or after `event_interval` of them: never, while `Busy` runs.
    let client_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .event_interval(u32::MAX)
        .build()
        .unwrap();
    let arrived = client_rt.block_on(async {
        let client = client_endpoint(&fastchat_certs::load_certs(&ca).unwrap(), None).unwrap();
        let target = format!("127.0.0.1:{}", addr.port());
        let attempt = tokio::spawn(async move {
            let _ = connect(&client, &target).await;
        });
        tokio::spawn(Busy {
            seen: seen.clone(),
            deadline: Instant::now() + Duration::from_secs(10),
        })
        .await
        .unwrap();
        attempt.abort();
        seen.load(Ordering::SeqCst)
    });
    assert!(
        arrived,
        "the client's first packet waited for its runtime to poll for readiness"
    );
}
