//! The connection core: who we are, the keystore, the link to our node
//! and the channels the screen listens on. Everything that does I/O holds
//! one; it imports none of them, so the sender, the receiver and the
//! transfers build on it without a cycle.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use fastchat_crypto::SigningIdentity;
use fastchat_proto::control::{Request, Response};
use fastchat_proto::envelope::Outgoing;
use fastchat_transport::quinn::Connection;
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use crate::control::Control;
use crate::error::ClientError;
use crate::keystore::Keystore;
use crate::room::Me;
use crate::texts::History;
use crate::types::{InboxItem, Progress};

/// A message waiting for the sender task, with whom to tell when the node
/// acknowledged it.
pub(crate) struct Pending {
    pub message: Outgoing,
    /// The local history entry, written once the node acknowledged it,
    /// for the whole batch in one transaction.
    pub history: Option<History>,
    pub done: oneshot::Sender<Result<(), ClientError>>,
}

/// What the delivery side and the API share.
pub(crate) struct Core {
    /// Our name and keys.
    pub me: Me,
    pub home: PathBuf,
    /// Signs logins (bound to the identity at the node).
    pub login_key: SigningIdentity,
    pub keystore: Mutex<Keystore>,
    pub events: LazyBroadcast<InboxItem>,
    pub progress: LazyBroadcast<Progress>,
    /// The balancer to ask for a node again when ours goes away.
    pub server: String,
    /// The connection to our node now; replaced on failover.
    link: Mutex<Link>,
    /// Counts links: changes each time a failover brings a new one.
    generation: watch::Sender<u64>,
    /// Set when the user closed the client: no more failovers.
    closing: watch::Sender<bool>,
    /// The sender task's queue (receipts are sent from the receiver).
    pub outbox: mpsc::UnboundedSender<Pending>,
    /// Fires whenever a delivery batch changed the keystore (new items,
    /// receipts), for screens that redraw from it.
    pub changes: broadcast::Sender<()>,
    /// Downloads running now, by (sender, id), so none runs twice.
    pub active_downloads: Mutex<HashSet<(String, [u8; 16])>>,
}

/// Items a slow [`crate::Client::subscribe`]r may fall behind by.
const EVENT_SLOTS: usize = 4096;
/// Progress reports a slow subscriber may fall behind by.
const PROGRESS_SLOTS: usize = 1024;

/// A broadcast channel made at its first subscription. Tokio allocates
/// every slot up front (4096 items are a megabyte zeroed), which each client
/// start paid though most (a `send`, a `recv`) never subscribe; until
/// someone does, nothing is sent, as a channel without receivers would drop
/// it anyway.
pub(crate) struct LazyBroadcast<T> {
    slots: usize,
    tx: OnceLock<broadcast::Sender<T>>,
}

impl<T: Clone> LazyBroadcast<T> {
    fn new(slots: usize) -> Self {
        Self {
            slots,
            tx: OnceLock::new(),
        }
    }

    /// Sends `value` to the subscribers, if any.
    pub fn send(&self, value: T) {
        if let Some(tx) = self.tx.get() {
            let _ = tx.send(value);
        }
    }

    /// A new subscriber, seeing what is sent from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<T> {
        self.tx
            .get_or_init(|| broadcast::channel(self.slots).0)
            .subscribe()
    }
}

/// One connection to a node and its control stream.
struct Link {
    conn: Connection,
    control: Arc<Control>,
}

impl Core {
    /// A core on a fresh link; `outbox` feeds the sender task.
    pub fn new(
        me: Me,
        home: PathBuf,
        login_key: SigningIdentity,
        keystore: Keystore,
        server: String,
        (conn, control): (Connection, Control),
        outbox: mpsc::UnboundedSender<Pending>,
    ) -> Self {
        Self {
            me,
            home,
            login_key,
            keystore: Mutex::new(keystore),
            events: LazyBroadcast::new(EVENT_SLOTS),
            progress: LazyBroadcast::new(PROGRESS_SLOTS),
            server,
            link: Mutex::new(Link {
                conn,
                control: Arc::new(control),
            }),
            generation: watch::channel(0).0,
            closing: watch::channel(false).0,
            outbox,
            changes: broadcast::channel(64).0,
            active_downloads: Mutex::new(HashSet::new()),
        }
    }

    /// Our user name.
    pub fn name(&self) -> &str {
        &self.me.name
    }

    /// The keystore, for one short step (never across an await).
    pub fn keystore(&self) -> MutexGuard<'_, Keystore> {
        self.keystore.lock().expect("keystore lock")
    }

    /// The connection in use now.
    pub fn conn(&self) -> Connection {
        self.link.lock().expect("link lock").conn.clone()
    }

    /// Puts a new link in place (after a failover) and tells the waiters.
    pub fn relinked(&self, conn: Connection, control: Control) {
        *self.link.lock().expect("link lock") = Link {
            conn,
            control: Arc::new(control),
        };
        self.generation.send_modify(|g| *g += 1);
    }

    /// Sends a control request on the connection in use now.
    pub async fn request(&self, request: Request) -> Result<Response, ClientError> {
        let control = self.link.lock().expect("link lock").control.clone();
        control.request(request).await
    }

    /// Fires each time a failover brought a new link.
    pub fn subscribe_relinks(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Which link is in use now (compare with [`Core::wait_relink`]).
    pub fn generation(&self) -> u64 {
        *self.generation.borrow()
    }

    /// Waits until a failover replaced link `seen`; false if the client
    /// closed instead.
    pub async fn wait_relink(&self, seen: u64) -> bool {
        let mut generation = self.generation.subscribe();
        let mut closing = self.closing.subscribe();
        if *closing.borrow_and_update() {
            return false;
        }
        tokio::select! {
            r = generation.wait_for(|g| *g != seen) => r.is_ok(),
            _ = closing.wait_for(|c| *c) => false,
        }
    }

    /// Whether the user closed the client.
    pub fn is_closing(&self) -> bool {
        *self.closing.borrow()
    }

    /// Marks the client closed: no more failovers.
    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    /// Resolves once the user closed (or dropped) the client.
    pub async fn closed(&self) {
        let mut closing = self.closing.subscribe();
        let _ = closing.wait_for(|c| *c).await;
    }
}
