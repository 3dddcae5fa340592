//! The SDK's front door: register, connect, befriend, send, receive.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use fastchat_crypto::{
    ConversationKey, Identity, PublicIdentity, SigningIdentity, random_bytes, transcript,
};
use fastchat_proto::control::{Relation, Request, Response};
use fastchat_proto::envelope::{Outgoing, OutgoingGroupText, OutgoingText, TextContent};
use fastchat_proto::frame::encode_body;
use fastchat_proto::group::{GroupChange, GroupUpdate, MemberKey, RosterEntry};
use fastchat_proto::image::{AttachmentKind, ImageHeader, ImageTarget};
use fastchat_proto::limits::{MAX_TEXT_BYTES, image_ciphertext_len};
use fastchat_proto::{ErrorCode, MessageId};
use fastchat_transport::client_endpoint;
use fastchat_transport::quinn::{Connection, Endpoint};
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use crate::connect::{login, reach_node, register};
use crate::control::Control;
use crate::error::ClientError;
use crate::keystore::{
    Conversation, GroupState, HistoryEntry, InboxItem, Keystore, Peer, PeerState, Profile,
    Transfers,
};
use crate::outbox::{self, History, Pending};
use crate::transfer::{Direction, Progress, UploadRecord, UploadReport};
use crate::{KEYSTORE_FILE, inbox};

/// What the delivery side and the API share.
pub(crate) struct Core {
    pub name: String,
    pub home: PathBuf,
    pub identity: Identity,
    pub signing: SigningIdentity,
    /// Signs logins (bound to the identity at the node).
    pub login_key: SigningIdentity,
    pub keystore: Mutex<Keystore>,
    pub events: broadcast::Sender<InboxItem>,
    pub progress: broadcast::Sender<Progress>,
    /// The balancer to ask for a node again when ours goes away.
    pub server: String,
    /// The connection to our node now; replaced on failover.
    link: Mutex<Link>,
    /// Counts links: changes each time a failover brings a new one.
    generation: watch::Sender<u64>,
    /// Set when the user closed the client: no more failovers.
    closing: watch::Sender<bool>,
    /// The sender task's queue (receipts are sent from the inbox side).
    pub outbox: mpsc::UnboundedSender<Pending>,
    /// Fires whenever a delivery batch changed the keystore (new items,
    /// receipts), for screens that redraw from it.
    pub changes: broadcast::Sender<()>,
    /// Downloads running now, by (sender, id), so none runs twice.
    pub active_downloads: Mutex<HashSet<(String, [u8; 16])>>,
}

/// One connection to a node and its control stream.
struct Link {
    conn: Connection,
    control: Arc<Control>,
}

impl Core {
    /// The connection in use now.
    pub fn conn(&self) -> Connection {
        self.link.lock().expect("link lock").conn.clone()
    }

    /// Sends a control request on the connection in use now.
    pub async fn request(&self, request: Request) -> Result<Response, ClientError> {
        let control = self.link.lock().expect("link lock").control.clone();
        control.request(request).await
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

    fn is_closing(&self) -> bool {
        *self.closing.borrow()
    }

    /// Resolves once the user closed (or dropped) the client.
    pub async fn closed(&self) {
        let mut closing = self.closing.subscribe();
        let _ = closing.wait_for(|c| *c).await;
    }
}

/// Keeps the client connected: when its node goes away, asks the balancer
/// for a node again (backing off up to 2 s between tries), logs in, and
/// puts the new connection in place. Senders waiting on the old one resend
/// what it did not acknowledge; the node redelivers what we did not.
async fn supervise(core: Arc<Core>, endpoint: Endpoint) {
    loop {
        let conn = core.conn();
        // A killed node sends nothing: silence is how we notice it.
        let reason =
            fastchat_transport::closed_or_silent(&conn, fastchat_transport::PEER_SILENCE).await;
        if core.is_closing() {
            return;
        }
        tracing::info!(%reason, "lost the node; asking the balancer for another");
        let _ = core.changes.send(());
        let mut delay = std::time::Duration::from_millis(50);
        loop {
            if core.is_closing() {
                return;
            }
            match relink(&core, &endpoint).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::debug!(error = %e, "reconnect failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(std::time::Duration::from_secs(2));
                }
            }
        }
    }
}

async fn relink(core: &Arc<Core>, endpoint: &Endpoint) -> Result<(), ClientError> {
    let (conn, control) = reach_node(endpoint, &core.server).await?;
    login(&control, &core.name, &core.identity, &core.login_key).await?;
    if core.is_closing() {
        conn.close(0u32.into(), b"bye");
        return Ok(());
    }
    *core.link.lock().expect("link lock") = Link {
        conn: conn.clone(),
        control: Arc::new(control),
    };
    tokio::spawn(inbox::run(core.clone(), conn.clone()));
    core.generation.send_modify(|g| *g += 1);
    tracing::info!(node = %conn.remote_address(), "reconnected");
    // Downloads the old connection cut off go on from where they stopped.
    let records = core
        .keystore
        .lock()
        .expect("keystore lock")
        .transfers(Transfers::Downloads, "pending")?;
    for record in records {
        if let Ok(rec) = fastchat_proto::decode(&record) {
            crate::download::spawn(core.clone(), conn.clone(), rec);
        }
    }
    let _ = core.changes.send(());
    Ok(())
}

/// Where an attachment goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Recipient {
    /// A friend, by name.
    Friend(String),
    /// A group, by name.
    Group(String),
}

/// A fresh id, the send time and the encoded content of a text, after
/// checking its length (before any key lookup or network work).
fn new_text(text: &str) -> Result<(MessageId, u64, Vec<u8>), ClientError> {
    if text.len() > MAX_TEXT_BYTES {
        return Err(ClientError::TooLong(text.len()));
    }
    let id = crate::ids::new_message_id()?;
    let sent_at_ms = now_ms();
    let plain = encode_body(&TextContent {
        text: text.to_string(),
        sent_at_ms,
    })
    .map_err(|_| ClientError::TooLong(text.len()))?;
    Ok((id, sent_at_ms, plain))
}

/// Checks the name first (key generation takes a moment), then makes a key.
async fn new_identity(name: &str) -> Result<Identity, ClientError> {
    fastchat_proto::validate_name(name).map_err(ClientError::InvalidName)?;
    tokio::task::spawn_blocking(Identity::generate)
        .await
        .map_err(|e| ClientError::Keystore(e.to_string()))?
        .map_err(ClientError::from)
}

async fn hash_file(path: &Path) -> Result<[u8; 32], ClientError> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let err = |e: std::io::Error| ClientError::File {
            path: path.clone(),
            why: e.to_string(),
        };
        let mut f = std::fs::File::open(&path).map_err(err)?;
        let mut hasher = fastchat_crypto::Hasher::default();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f.read(&mut buf).map_err(err)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        Ok(hasher.finish())
    })
    .await
    .map_err(|e| ClientError::Keystore(e.to_string()))?
}

/// What `friend add` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FriendAdd {
    /// A request is on its way; they must add us back.
    RequestSent,
    /// They had asked us; we are now friends and they get the key.
    Accepted,
}

/// A logged-in fastchat client.
pub struct Client {
    core: Arc<Core>,
    endpoint: Endpoint,
    pending_at_login: u64,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

type CertDer = fastchat_transport::quinn::rustls::pki_types::CertificateDer<'static>;

fn parse_ca(pem: &[u8], path: &Path) -> Result<Vec<CertDer>, ClientError> {
    fastchat_certs::load_certs_pem(pem).ok_or_else(|| ClientError::BadCa {
        path: path.to_path_buf(),
        why: "it holds no PEM certificate".into(),
    })
}

impl Client {
    /// Makes a new identity, registers it as `name` with the cluster whose
    /// balancer is at `server` and whose CA is in `ca_file`, and stores
    /// everything in `home`. Returns a logged-in client.
    pub async fn register(
        home: &Path,
        name: &str,
        server: &str,
        ca_file: &Path,
    ) -> Result<Self, ClientError> {
        let identity = new_identity(name).await?;
        Self::register_inner(home, name, server, ca_file, identity, None).await
    }

    /// Like [`Client::register`], sealing every secret in the keystore under
    /// a key derived from `passphrase` (argon2id).
    pub async fn register_with_passphrase(
        home: &Path,
        name: &str,
        server: &str,
        ca_file: &Path,
        passphrase: &str,
    ) -> Result<Self, ClientError> {
        let identity = new_identity(name).await?;
        Self::register_inner(home, name, server, ca_file, identity, Some(passphrase)).await
    }

    /// Like [`Client::register`], with an identity made beforehand (the
    /// bench keeps a pool of them: RSA-3072 key generation takes ~0.2 s).
    pub async fn register_with_identity(
        home: &Path,
        name: &str,
        server: &str,
        ca_file: &Path,
        identity: Identity,
    ) -> Result<Self, ClientError> {
        Self::register_inner(home, name, server, ca_file, identity, None).await
    }

    async fn register_inner(
        home: &Path,
        name: &str,
        server: &str,
        ca_file: &Path,
        identity: Identity,
        passphrase: Option<&str>,
    ) -> Result<Self, ClientError> {
        fastchat_proto::validate_name(name).map_err(ClientError::InvalidName)?;
        if let Ok(ks) = Keystore::open(home) {
            return Err(ClientError::AlreadyRegistered {
                home: home.to_path_buf(),
                name: ks.profile()?.name,
            });
        }
        let ca_pem = std::fs::read(ca_file).map_err(|e| ClientError::BadCa {
            path: ca_file.to_path_buf(),
            why: e.to_string(),
        })?;
        let ca = parse_ca(&ca_pem, ca_file)?;
        let endpoint = client_endpoint(&ca, None)?;
        let (conn, control) = reach_node(&endpoint, server).await?;
        let login_key = SigningIdentity::generate()?;
        register(&control, name, &identity, &login_key).await?;

        std::fs::create_dir_all(home)
            .map_err(|e| ClientError::Keystore(format!("cannot create {}: {e}", home.display())))?;
        let profile = Profile {
            name: name.to_string(),
            server: server.to_string(),
            ca_pem,
        };
        let signing = SigningIdentity::generate()?;
        let keystore = Keystore::create(
            &home.join(KEYSTORE_FILE),
            &profile,
            &identity,
            &signing,
            passphrase,
        )?;
        keystore.set_login_identity(&login_key)?;
        let pending = login(&control, name, &identity, &login_key).await?;
        Ok(Self::assemble(
            home,
            name,
            server,
            (identity, signing, login_key),
            keystore,
            endpoint,
            conn,
            control,
            pending,
        ))
    }

    /// Connects and logs in with the identity stored in `home`.
    pub async fn connect(home: &Path) -> Result<Self, ClientError> {
        Self::connect_with_passphrase(home, None).await
    }

    /// [`Client::connect`] for a keystore protected by a passphrase.
    pub async fn connect_with_passphrase(
        home: &Path,
        passphrase: Option<&str>,
    ) -> Result<Self, ClientError> {
        let keystore = Keystore::open_with(home, passphrase)?;
        let profile = keystore.profile()?;
        let identity = keystore.identity()?;
        let signing = keystore.signing_identity()?;
        let login_key = keystore.login_identity()?;
        let ca = parse_ca(&profile.ca_pem, &home.join(KEYSTORE_FILE))?;
        let endpoint = client_endpoint(&ca, None)?;
        let (conn, control) = reach_node(&endpoint, &profile.server).await?;
        let pending = login(&control, &profile.name, &identity, &login_key).await?;
        Ok(Self::assemble(
            home,
            &profile.name,
            &profile.server,
            (identity, signing, login_key),
            keystore,
            endpoint,
            conn,
            control,
            pending,
        ))
    }

    #[allow(clippy::too_many_arguments)]
    fn assemble(
        home: &Path,
        name: &str,
        server: &str,
        (identity, signing, login_key): (Identity, SigningIdentity, SigningIdentity),
        keystore: Keystore,
        endpoint: Endpoint,
        conn: Connection,
        control: Control,
        pending_at_login: u64,
    ) -> Self {
        let (events, _) = broadcast::channel(4096);
        let (progress, _) = broadcast::channel(1024);
        let (changes, _) = broadcast::channel(64);
        let (outbox, outbox_rx) = mpsc::unbounded_channel();
        let core = Arc::new(Core {
            name: name.to_string(),
            home: home.to_path_buf(),
            identity,
            signing,
            login_key,
            keystore: Mutex::new(keystore),
            events,
            progress,
            server: server.to_string(),
            link: Mutex::new(Link {
                conn: conn.clone(),
                control: Arc::new(control),
            }),
            generation: watch::channel(0).0,
            closing: watch::channel(false).0,
            outbox,
            changes,
            active_downloads: Mutex::new(HashSet::new()),
        });
        tokio::spawn(inbox::run(core.clone(), conn));
        outbox::start(core.clone(), outbox_rx);
        tokio::spawn(supervise(core.clone(), endpoint.clone()));
        Self {
            core,
            endpoint,
            pending_at_login,
        }
    }

    /// The logged-in user's name.
    pub fn name(&self) -> &str {
        &self.core.name
    }

    /// How many items were waiting when this client logged in.
    pub fn pending_at_login(&self) -> u64 {
        self.pending_at_login
    }

    /// The address of the node this client is connected to.
    pub fn node_addr(&self) -> std::net::SocketAddr {
        let a = self.core.conn().remote_address();
        // The dual-stack endpoint reports IPv4 peers as IPv4-mapped IPv6.
        std::net::SocketAddr::new(a.ip().to_canonical(), a.port())
    }

    /// Live stream of newly received items (texts, friend requests, accepts).
    pub fn subscribe(&self) -> broadcast::Receiver<InboxItem> {
        self.core.events.subscribe()
    }

    fn keystore(&self) -> std::sync::MutexGuard<'_, Keystore> {
        self.core.keystore.lock().expect("keystore lock")
    }

    /// Waits until everything queued for us at the node has been received,
    /// stored and acknowledged.
    pub async fn sync(&self) -> Result<(), ClientError> {
        match self.core.request(Request::Sync).await? {
            Response::Synced => Ok(()),
            _ => Err(ClientError::UnexpectedReply),
        }
    }

    /// Sends a friend request to `name`, or accepts theirs if they asked first.
    pub async fn friend_add(&self, name: &str) -> Result<FriendAdd, ClientError> {
        fastchat_proto::validate_name(name).map_err(ClientError::InvalidName)?;
        if name == self.name() {
            return Err(ClientError::InvalidName(
                "you cannot befriend yourself".into(),
            ));
        }
        // Take in any request or key already waiting, so the decision below
        // is made on current state.
        self.sync().await?;
        if let Some(p) = self.keystore().peer(name)?
            && p.state == PeerState::Friend
        {
            return Err(ClientError::AlreadyFriends(name.to_string()));
        }
        let (their_der, relation) = match self
            .core
            .request(Request::LookupUser {
                name: name.to_string(),
            })
            .await?
        {
            Response::User {
                public_key,
                relation,
                ..
            } => (public_key, relation),
            _ => return Err(ClientError::UnexpectedReply),
        };
        let their_key = PublicIdentity::from_der(&their_der)?;
        let known = self.keystore().peer(name)?;
        if let Some(p) = &known
            && p.public_key != their_der
        {
            return Err(ClientError::KeyMismatch(name.to_string()));
        }
        let me = self.name().to_string();
        let my_der = self.core.identity.public().der().to_vec();
        let signing_key = self.core.signing.public();
        if relation == Relation::RequestedByThem {
            let key = ConversationKey::generate()?;
            let wrapped_key = their_key.wrap_key(&key)?;
            let signature = self.core.identity.sign(&transcript::friend_accept(
                &me,
                name,
                &wrapped_key,
                &their_der,
                &signing_key,
            ))?;
            self.core
                .request(Request::FriendAccept {
                    to: name.to_string(),
                    wrapped_key,
                    signing_key,
                    signature,
                })
                .await?;
            // Their signing key came with their (verified) request.
            let their_signing = known.and_then(|p| p.signing_key);
            self.keystore().put_peer(&Peer {
                name: name.to_string(),
                public_key: their_der,
                signing_key: their_signing,
                state: PeerState::Friend,
                key: Some(key),
            })?;
            return Ok(FriendAdd::Accepted);
        }
        let signature = self.core.identity.sign(&transcript::friend_request(
            &me,
            name,
            &my_der,
            &their_der,
            &signing_key,
        ))?;
        self.core
            .request(Request::FriendRequest {
                to: name.to_string(),
                signing_key,
                signature,
            })
            .await
            .map_err(|e| match e {
                ClientError::Refused(p) if p.code == ErrorCode::AlreadyFriends => {
                    ClientError::AlreadyFriends(name.to_string())
                }
                other => other,
            })?;
        self.keystore().put_peer(&Peer {
            name: name.to_string(),
            public_key: their_der,
            signing_key: None,
            state: PeerState::Requested,
            key: None,
        })?;
        Ok(FriendAdd::RequestSent)
    }

    /// Friends and pending requests, by name.
    pub fn peers(&self) -> Result<Vec<Peer>, ClientError> {
        self.keystore().peers()
    }

    /// The safety number to compare with `name` out of band.
    pub fn fingerprint(&self, name: &str) -> Result<String, ClientError> {
        let peer = self
            .keystore()
            .peer(name)?
            .ok_or_else(|| ClientError::NotFriend(name.to_string()))?;
        Ok(fastchat_crypto::safety_number(
            (self.name(), self.core.identity.public().der()),
            (&peer.name, &peer.public_key),
        ))
    }

    fn friend_key(&self, name: &str) -> Result<Option<ConversationKey>, ClientError> {
        let ks = self.keystore();
        if let Some(k) = ks.friend_key(name)? {
            return Ok(Some(k));
        }
        match ks.peer(name)? {
            Some(Peer {
                state: PeerState::Friend,
                key: Some(k),
                ..
            }) => Ok(Some(k)),
            Some(Peer {
                state: PeerState::Requested,
                ..
            }) => Err(ClientError::AwaitingAcceptance(name.to_string())),
            _ => Ok(None),
        }
    }

    /// Sends an end-to-end encrypted text to friend `to`; returns once the
    /// node has stored it durably (or refused it).
    pub async fn send_text(&self, to: &str, text: &str) -> Result<MessageId, ClientError> {
        let (id, sent_at_ms, plain) = new_text(text)?;
        let key = match self.friend_key(to) {
            Ok(Some(k)) => k,
            // Their accept may be waiting at the node; take it in and look again.
            Ok(None) | Err(ClientError::AwaitingAcceptance(_)) => {
                self.sync().await?;
                self.friend_key(to)?
                    .ok_or_else(|| ClientError::NotFriend(to.to_string()))?
            }
            Err(e) => return Err(e),
        };
        let sealed = key.seal(&transcript::text_aad(self.name(), to, &id.0, 0), &plain)?;
        let message = Outgoing::Direct(OutgoingText {
            id,
            to: to.to_string(),
            sealed,
        });
        let history = History {
            peer: to.to_string(),
            group: None,
            text: text.to_string(),
            sent_at_ms,
        };
        match self.submit(message, Some(history)).await {
            Ok(()) => Ok(id),
            Err(ClientError::Refused(e)) if e.code == ErrorCode::NotFriends => {
                Err(ClientError::NotFriend(to.to_string()))
            }
            Err(e) => Err(e),
        }
    }

    /// Hands a message to the sender task and waits for the node's answer.
    async fn submit(&self, message: Outgoing, history: Option<History>) -> Result<(), ClientError> {
        let (done, rx) = oneshot::channel();
        self.core
            .outbox
            .send(Pending {
                message,
                history,
                done,
            })
            .map_err(|_| ClientError::Disconnected)?;
        rx.await.map_err(|_| ClientError::Disconnected)?
    }

    /// Creates a group with us as admin and only member; returns its id.
    pub async fn group_create(&self, name: &str) -> Result<u64, ClientError> {
        fastchat_proto::validate_name(name).map_err(ClientError::InvalidName)?;
        let id = match self
            .core
            .request(Request::GroupCreate {
                name: name.to_string(),
            })
            .await?
        {
            Response::GroupCreated { id } => id,
            _ => return Err(ClientError::UnexpectedReply),
        };
        let key = ConversationKey::generate()?;
        let roster = vec![RosterEntry {
            name: self.name().to_string(),
            signing_key: self.core.signing.public(),
        }];
        self.keystore()
            .put_group_epoch(id, name, self.name(), 0, &key, &roster)?;
        Ok(id)
    }

    fn my_group(&self, name: &str) -> Result<GroupState, ClientError> {
        match self.keystore().group_by_name(name)? {
            Some(g) if g.member => Ok(g),
            Some(_) => Err(ClientError::RemovedFromGroup(name.to_string())),
            None => Err(ClientError::UnknownGroup(name.to_string())),
        }
    }

    /// Adds friends to group `group` (admin only), all in one re-key: the
    /// group moves to a new key epoch so newcomers read nothing sent before.
    pub async fn group_add(&self, group: &str, members: &[&str]) -> Result<(), ClientError> {
        let mut entries = Vec::with_capacity(members.len());
        for member in members {
            let peer = match self.keystore().peer(member)? {
                Some(p) if p.state == PeerState::Friend => p,
                _ => return Err(ClientError::NotFriend(member.to_string())),
            };
            let signing_key = peer
                .signing_key
                .ok_or_else(|| ClientError::NotFriend(member.to_string()))?;
            entries.push(RosterEntry {
                name: member.to_string(),
                signing_key,
            });
        }
        let names = members.iter().map(|m| m.to_string()).collect();
        self.rekey(group, GroupChange::Added(names), |roster| {
            for entry in entries {
                if roster.iter().any(|r| r.name == entry.name) {
                    return Err(ClientError::AlreadyMember(entry.name));
                }
                roster.push(entry);
            }
            Ok(())
        })
        .await
    }

    /// Removes `member` from group `group` (admin only); the remaining
    /// members move to a new key the removed member never sees.
    pub async fn group_kick(&self, group: &str, member: &str) -> Result<(), ClientError> {
        self.rekey(group, GroupChange::Removed(member.to_string()), |roster| {
            if !roster.iter().any(|r| r.name == member) {
                return Err(ClientError::NotMember(member.to_string()));
            }
            roster.retain(|r| r.name != member);
            Ok(())
        })
        .await
    }

    async fn rekey(
        &self,
        group: &str,
        change: GroupChange,
        edit: impl FnOnce(&mut Vec<RosterEntry>) -> Result<(), ClientError>,
    ) -> Result<(), ClientError> {
        let state = self.my_group(group)?;
        if state.admin != self.name() {
            return Err(ClientError::NotAdmin {
                group: group.to_string(),
                admin: state.admin,
            });
        }
        let mut roster = state.roster.clone();
        edit(&mut roster)?;
        let update = GroupUpdate {
            group_id: state.id,
            group: state.name.clone(),
            admin: state.admin.clone(),
            epoch: state.epoch + 1,
            change: change.clone(),
            roster,
        };
        let bytes = update.signed_bytes();
        let key = ConversationKey::generate()?;
        let mut keys = Vec::with_capacity(update.roster.len());
        for entry in update.roster.iter().filter(|r| r.name != self.name()) {
            let peer = self
                .keystore()
                .peer(&entry.name)?
                .filter(|p| p.state == PeerState::Friend)
                .ok_or_else(|| ClientError::NotFriend(entry.name.clone()))?;
            let wrapped_key = PublicIdentity::from_der(&peer.public_key)?.wrap_key(&key)?;
            let signature =
                self.core
                    .signing
                    .sign(&transcript::group_key(&bytes, &entry.name, &wrapped_key));
            keys.push(MemberKey {
                member: entry.name.clone(),
                wrapped_key,
                signature,
            });
        }
        let removed_notice = matches!(change, GroupChange::Removed(_))
            .then(|| self.core.signing.sign(&transcript::group_removed(&bytes)));
        match self
            .core
            .request(Request::GroupRekey {
                update: update.clone(),
                keys,
                removed_notice,
            })
            .await?
        {
            Response::GroupRekeyed => {}
            _ => return Err(ClientError::UnexpectedReply),
        }
        self.keystore().put_group_epoch(
            state.id,
            &state.name,
            &state.admin,
            update.epoch,
            &key,
            &update.roster,
        )?;
        Ok(())
    }

    /// Every group we belong (or belonged) to.
    pub fn groups(&self) -> Result<Vec<GroupState>, ClientError> {
        self.keystore().groups()
    }

    /// Sends an end-to-end encrypted text to every other member of `group`,
    /// signed with our Ed25519 key; returns once the node has stored it.
    pub async fn send_group_text(&self, group: &str, text: &str) -> Result<MessageId, ClientError> {
        let (id, sent_at_ms, plain) = new_text(text)?;
        if self.my_group(group).is_err() {
            // The key that made us a member may still be waiting at the node.
            self.sync().await?;
            self.my_group(group)?;
        }
        // One retry: if the admin re-keyed meanwhile, take in the new key first.
        for attempt in 0..2 {
            let state = self.my_group(group)?;
            let key = state
                .key
                .clone()
                .ok_or_else(|| ClientError::RemovedFromGroup(group.to_string()))?;
            let sealed = key.seal(
                &transcript::group_text_aad(state.id, state.epoch, self.name(), &id.0),
                &plain,
            )?;
            let signature = self.core.signing.sign(&transcript::group_text_signature(
                state.id,
                state.epoch,
                self.name(),
                &id.0,
                &sealed.nonce,
                &sealed.ciphertext,
            ));
            let message = Outgoing::Group(OutgoingGroupText {
                id,
                group_id: state.id,
                epoch: state.epoch,
                sealed,
                signature,
            });
            let history = History {
                peer: group.to_string(),
                group: Some(group.to_string()),
                text: text.to_string(),
                sent_at_ms,
            };
            match self.submit(message, Some(history)).await {
                Ok(()) => return Ok(id),
                Err(ClientError::Refused(e)) if e.code == ErrorCode::StaleEpoch && attempt == 0 => {
                    self.sync().await?;
                }
                Err(ClientError::Refused(e)) if e.code == ErrorCode::NotMember => {
                    self.sync().await?;
                    return Err(ClientError::RemovedFromGroup(group.to_string()));
                }
                Err(e) => return Err(e),
            }
        }
        Err(ClientError::Refused(fastchat_proto::ProtoError::new(
            ErrorCode::StaleEpoch,
            "the group keeps changing; try again",
        )))
    }

    /// Whether the connection to the node is up (false while failing over).
    pub fn is_connected(&self) -> bool {
        self.core.conn().close_reason().is_none()
    }

    /// Fires each time a failover connected this client to a node again.
    pub fn subscribe_relinks(&self) -> watch::Receiver<u64> {
        self.core.generation.subscribe()
    }

    /// Fires whenever received data changed the keystore (new items, receipts).
    pub fn subscribe_changes(&self) -> broadcast::Receiver<()> {
        self.core.changes.subscribe()
    }

    /// Progress of every upload and download of this client.
    pub fn subscribe_progress(&self) -> broadcast::Receiver<Progress> {
        self.core.progress.subscribe()
    }

    /// Drops the connection at once, as a network failure would: what was
    /// not acknowledged stays queued on both sides, and the client fails
    /// over to a node the balancer picks.
    pub fn abort(&self) {
        self.core.conn().close(0u32.into(), b"aborted");
    }

    /// Sends the file at `path` to a friend (`to`) or a group (`group`), as
    /// an image (checked to be one) or as a plain file, encrypted chunk by
    /// chunk on its own stream. `progress(done, total)` gets plaintext bytes.
    /// If the connection drops, [`Client::resume_uploads`] on a new client
    /// continues where the node stopped.
    pub async fn send_attachment(
        &self,
        to: &Recipient,
        path: &Path,
        kind: AttachmentKind,
        progress: &(dyn Fn(u64, u64) + Send + Sync),
    ) -> Result<UploadReport, ClientError> {
        let file_err = |e: std::io::Error| ClientError::File {
            path: path.to_path_buf(),
            why: e.to_string(),
        };
        let meta = tokio::fs::metadata(path).await.map_err(file_err)?;
        if !meta.is_file() {
            return Err(ClientError::File {
                path: path.to_path_buf(),
                why: "it is not a regular file".into(),
            });
        }
        let size = meta.len();
        if kind == AttachmentKind::Image {
            let mut head = [0u8; 64];
            let mut f = tokio::fs::File::open(path).await.map_err(file_err)?;
            let n = tokio::io::AsyncReadExt::read(&mut f, &mut head)
                .await
                .map_err(file_err)?;
            if !infer::is_image(&head[..n]) {
                return Err(ClientError::NotAnImage(path.to_path_buf()));
            }
        }
        let sha256 = hash_file(path).await?;
        let title = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "file".into());
        let id = crate::ids::new_message_id()?.0;
        let mut nonce_prefix = [0u8; 7];
        random_bytes(&mut nonce_prefix)?;
        let (target, label, key, aad, epoch_group) = match to {
            Recipient::Friend(name) => {
                let key = match self.friend_key(name)? {
                    Some(k) => k,
                    None => {
                        self.sync().await?;
                        self.friend_key(name)?
                            .ok_or_else(|| ClientError::NotFriend(name.clone()))?
                    }
                };
                let aad = transcript::image_aad(self.name(), name, &id, 0);
                (
                    ImageTarget::Direct(name.clone()),
                    name.clone(),
                    key,
                    aad,
                    None,
                )
            }
            Recipient::Group(name) => {
                if self.my_group(name).is_err() {
                    self.sync().await?;
                }
                let g = self.my_group(name)?;
                let key = g
                    .key
                    .clone()
                    .ok_or_else(|| ClientError::RemovedFromGroup(name.clone()))?;
                let aad =
                    transcript::image_aad(self.name(), &format!("group:{}", g.id), &id, g.epoch);
                (
                    ImageTarget::Group {
                        id: g.id,
                        epoch: g.epoch,
                    },
                    name.clone(),
                    key,
                    aad,
                    Some((g.id, g.epoch)),
                )
            }
        };
        let header = ImageHeader {
            title,
            size,
            sha256,
            kind,
            sent_at_ms: now_ms(),
        };
        let mut rec = UploadRecord {
            id,
            path: path.to_path_buf(),
            to: target,
            label,
            key: *key.as_bytes(),
            aad,
            nonce_prefix,
            header: Vec::new(),
            signature: Vec::new(),
            size,
            total_len: image_ciphertext_len(size),
        };
        let header_plain =
            encode_body(&header).map_err(|e| ClientError::Keystore(e.to_string()))?;
        rec.header = rec.cipher().seal_header(&header_plain)?;
        if let Some((gid, epoch)) = epoch_group {
            rec.signature = self.core.signing.sign(&transcript::group_image_signature(
                gid,
                epoch,
                self.name(),
                &id,
                &nonce_prefix,
                &rec.header,
                rec.total_len,
            ));
        }
        let record = encode_body(&rec).map_err(|e| ClientError::Keystore(e.to_string()))?;
        self.keystore()
            .put_transfer(Transfers::Uploads, self.name(), &id, &record, "uploading")?;
        self.upload(&rec, progress).await
    }

    async fn upload(
        &self,
        rec: &UploadRecord,
        progress: &(dyn Fn(u64, u64) + Send + Sync),
    ) -> Result<UploadReport, ClientError> {
        let report = |done: u64, total: u64| {
            progress(done, total);
            let _ = self.core.progress.send(Progress {
                id: MessageId(rec.id),
                direction: Direction::Up,
                peer: rec.label.clone(),
                title: rec
                    .path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                done,
                total,
                resumed_from: 0,
            });
        };
        let mut tries = 0;
        let outcome = loop {
            let seen = self.core.generation();
            match crate::upload::run(&self.core.conn(), rec, &report).await {
                // The node went away: continue on the next one from where it stopped.
                Err(ClientError::Disconnected)
                    if tries < 5 && self.core.wait_relink(seen).await =>
                {
                    tries += 1;
                }
                other => break other,
            }
        };
        match outcome {
            Ok(r) => {
                self.keystore().set_transfer_state(
                    Transfers::Uploads,
                    self.name(),
                    &rec.id,
                    "done",
                )?;
                Ok(r)
            }
            Err(ClientError::Refused(e)) => {
                self.keystore().set_transfer_state(
                    Transfers::Uploads,
                    self.name(),
                    &rec.id,
                    "failed",
                )?;
                Err(ClientError::Refused(e))
            }
            Err(e) => Err(e),
        }
    }

    /// Finishes uploads an earlier connection left incomplete.
    pub async fn resume_uploads(
        &self,
        progress: &(dyn Fn(u64, u64) + Send + Sync),
    ) -> Result<Vec<UploadReport>, ClientError> {
        let records = self.keystore().transfers(Transfers::Uploads, "uploading")?;
        let mut out = Vec::with_capacity(records.len());
        for record in records {
            let rec: UploadRecord = fastchat_proto::decode(&record)
                .map_err(|_| ClientError::Keystore("a saved upload is corrupt".into()))?;
            out.push(self.upload(&rec, progress).await?);
        }
        Ok(out)
    }

    /// Starts every download an earlier connection left incomplete, then
    /// waits until none is left running, or until nothing moved for
    /// `stall`. Returns how many are still incomplete.
    pub async fn wait_downloads(&self, stall: std::time::Duration) -> Result<usize, ClientError> {
        let mut progress = self.core.progress.subscribe();
        let records = self.keystore().transfers(Transfers::Downloads, "pending")?;
        for record in records {
            if let Ok(rec) = fastchat_proto::decode(&record) {
                crate::download::spawn(self.core.clone(), self.core.conn(), rec);
            }
        }
        loop {
            let left = self
                .keystore()
                .transfers(Transfers::Downloads, "pending")?
                .len();
            let running = self.core.active_downloads.lock().expect("lock").len();
            if left == 0 || running == 0 {
                return Ok(left);
            }
            if tokio::time::timeout(stall, progress.recv()).await.is_err() {
                return Ok(left);
            }
        }
    }

    /// The newest `limit` entries of a conversation, oldest first.
    pub fn history(
        &self,
        conversation: &Conversation,
        limit: usize,
    ) -> Result<Vec<HistoryEntry>, ClientError> {
        self.keystore().history(self.name(), conversation, limit)
    }

    /// Unread items per conversation.
    pub fn unread_counts(&self) -> Result<Vec<(Conversation, u64)>, ClientError> {
        self.keystore().unread_counts()
    }

    /// Marks a conversation read.
    pub fn mark_read(&self, conversation: &Conversation) -> Result<(), ClientError> {
        self.keystore().mark_read(conversation)
    }

    /// Searches local history for texts containing `words`, newest first.
    pub fn search(&self, words: &str, limit: usize) -> Result<Vec<HistoryEntry>, ClientError> {
        self.keystore().search(self.name(), words, limit)
    }

    /// Received items `recv` has not shown yet, oldest first.
    pub fn unshown(&self) -> Result<Vec<InboxItem>, ClientError> {
        self.keystore().unshown()
    }

    /// Marks items as shown.
    pub fn mark_shown(&self, ids: &[[u8; 16]]) -> Result<(), ClientError> {
        self.keystore().mark_shown(ids)
    }

    /// Closes the connection politely and waits briefly for it to go out.
    pub async fn close(self) {
        self.shut();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), self.endpoint.wait_idle())
            .await;
    }

    fn shut(&self) {
        self.core.closing.send_replace(true);
        self.core.conn().close(0u32.into(), b"bye");
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        // No failover for a client nobody holds.
        self.shut();
    }
}
