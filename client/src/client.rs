//! The SDK's front door: register, connect, befriend, send, receive. Each
//! method looks up what it needs, lets the protocol room decide, and does
//! the I/O: the rooms hold the rules, this file only wires them.

use std::path::Path;
use std::sync::Arc;

use fastchat_crypto::{Identity, SigningIdentity, random_bytes};
use fastchat_proto::control::{Request, Response};
use fastchat_proto::group::GroupChange;
use fastchat_proto::image::{AttachmentKind, ImageTarget};
use fastchat_proto::{ErrorCode, MessageId};
use fastchat_transport::ClientEndpoint;
use fastchat_transport::client_endpoint;
use fastchat_transport::quinn::Connection;
use tokio::sync::{broadcast, mpsc, watch};

use crate::KEYSTORE_FILE;
use crate::attachments::{self, Attaching, SealFor};
use crate::connect::{login, reach_node, register};
use crate::control::Control;
use crate::core::Core;
use crate::error::ClientError;
use crate::failover;
use crate::keystore::{Keystore, Profile, TransferState, Transfers};
use crate::room::Me;
use crate::sender::{self, submit};
use crate::transfer::{FileStamp, UploadRecord};
use crate::types::{
    Conversation, Direction, FriendAdd, GroupState, HistoryEntry, InboxItem, Peer, PeerState,
    Progress, Recipient, UploadReport,
};
use crate::{friends, groups, texts};

/// Checks the name first (key generation takes a moment), then makes a key.
async fn new_identity(name: &str) -> Result<Identity, ClientError> {
    fastchat_proto::validate_name(name).map_err(ClientError::InvalidName)?;
    Ok(tokio::task::spawn_blocking(Identity::generate).await??)
}

/// A logged-in fastchat client.
pub struct Client {
    core: Arc<Core>,
    /// Held so the client's socket lives as long as the client.
    _endpoint: ClientEndpoint,
    pending_at_login: u64,
}

/// How often closing checks that the close went out.
const CLOSE_POLL: std::time::Duration = std::time::Duration::from_millis(1);
/// The longest closing waits for the close to go out.
const CLOSE_WAIT_LIMIT: std::time::Duration = std::time::Duration::from_secs(1);

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

        crate::private::create_dir(home).map_err(ClientError::io(home))?;
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
        let me = Me {
            name: name.to_string(),
            identity,
            signing,
        };
        Ok(Self::assemble(
            home,
            server,
            (me, login_key),
            keystore,
            endpoint,
            (conn, control),
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
        let me = Me {
            name: profile.name.clone(),
            identity: keystore.identity()?,
            signing: keystore.signing_identity()?,
        };
        let login_key = keystore.login_identity()?;
        let ca = parse_ca(&profile.ca_pem, &home.join(KEYSTORE_FILE))?;
        let endpoint = client_endpoint(&ca, None)?;
        let (conn, control) = reach_node(&endpoint, &profile.server).await?;
        let pending = login(&control, &me.name, &me.identity, &login_key).await?;
        Ok(Self::assemble(
            home,
            &profile.server,
            (me, login_key),
            keystore,
            endpoint,
            (conn, control),
            pending,
        ))
    }

    fn assemble(
        home: &Path,
        server: &str,
        (me, login_key): (Me, SigningIdentity),
        keystore: Keystore,
        endpoint: ClientEndpoint,
        (conn, control): (Connection, Control),
        pending_at_login: u64,
    ) -> Self {
        let (outbox, outbox_rx) = mpsc::unbounded_channel();
        let core = Arc::new(Core::new(
            me,
            home.to_path_buf(),
            login_key,
            keystore,
            server.to_string(),
            (conn.clone(), control),
            outbox,
        ));
        failover::start_receiving(&core, conn);
        if let Err(e) = failover::tell_node_of_placed(&core) {
            tracing::warn!(error = %e, "cannot read the received files the node was not told of");
        }
        sender::start(core.clone(), outbox_rx);
        tokio::spawn(failover::supervise(core.clone(), endpoint.clone()));
        Self {
            core,
            _endpoint: endpoint,
            pending_at_login,
        }
    }

    /// The logged-in user's name.
    pub fn name(&self) -> &str {
        self.core.name()
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
        self.core.keystore()
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
        friends::check_name(&self.core.me, name)?;
        // Take in any request or key already waiting, so the decision below
        // is made on current state.
        self.sync().await?;
        friends::check_not_friends(name, self.keystore().peer(name)?.as_ref())?;
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
        let known = self.keystore().peer(name)?;
        let (did, request, change) = friends::add(&self.core.me, name, their_der, relation, known)?;
        self.core.request(request).await.map_err(|e| match e {
            ClientError::Refused(p) if p.code == ErrorCode::AlreadyFriends => {
                ClientError::AlreadyFriends(name.to_string())
            }
            other => other,
        })?;
        self.keystore().apply(&change)?;
        Ok(did)
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
            (self.name(), self.core.me.public_der()),
            (&peer.name, &peer.public_key),
        ))
    }

    /// Our conversation key with friend `name`: `None` if they are not one;
    /// an error if they have not accepted yet.
    fn friend_key(
        &self,
        name: &str,
    ) -> Result<Option<Arc<fastchat_crypto::ConversationKey>>, ClientError> {
        let ks = self.keystore();
        if let Some(k) = ks.friend_key(name)? {
            return Ok(Some(k));
        }
        match ks.peer(name)? {
            Some(p) if p.state == PeerState::Requested => {
                Err(ClientError::AwaitingAcceptance(name.to_string()))
            }
            _ => Ok(None),
        }
    }

    /// The key for friend `name`, taking in what waits at the node first if
    /// we have none yet (their accept may be waiting there).
    async fn friend_key_synced(
        &self,
        name: &str,
    ) -> Result<Arc<fastchat_crypto::ConversationKey>, ClientError> {
        match self.friend_key(name) {
            Ok(Some(k)) => Ok(k),
            Ok(None) | Err(ClientError::AwaitingAcceptance(_)) => {
                // Boxed, as every rare path of a send: a send's future is
                // moved whole into whatever holds it (a task, a set of
                // sends in flight), and the inline sync doubled its size.
                Box::pin(self.sync()).await?;
                self.friend_key(name)?
                    .ok_or_else(|| ClientError::NotFriend(name.to_string()))
            }
            Err(e) => Err(e),
        }
    }

    /// Sends an end-to-end encrypted text to friend `to`; returns once the
    /// node has stored it durably (or refused it).
    pub async fn send_text(&self, to: &str, text: &str) -> Result<MessageId, ClientError> {
        let draft = texts::draft(text)?;
        let key = self.friend_key_synced(to).await?;
        let (message, history) = texts::seal_direct(&self.core.me, to, &key, &draft)?;
        match submit(&self.core, message, Some(history)).await {
            Ok(()) => Ok(draft.id),
            Err(ClientError::Refused(e)) if e.code == ErrorCode::NotFriends => {
                Err(ClientError::NotFriend(to.to_string()))
            }
            Err(e) => Err(e),
        }
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
        self.keystore()
            .apply(&groups::created(&self.core.me, id, name)?)?;
        Ok(id)
    }

    fn my_group(&self, name: &str) -> Result<GroupState, ClientError> {
        groups::member_of(name, self.keystore().group_by_name(name)?)
    }

    /// The group `name`, taking in what waits at the node first if we are
    /// not (yet) in it: the key that made us a member may be waiting there.
    async fn my_group_synced(&self, name: &str) -> Result<GroupState, ClientError> {
        if let Ok(g) = self.my_group(name) {
            return Ok(g);
        }
        Box::pin(self.sync()).await?;
        self.my_group(name)
    }

    /// Adds friends to group `group` (admin only), all in one re-key: the
    /// group moves to a new key epoch so newcomers read nothing sent before.
    pub async fn group_add(&self, group: &str, members: &[&str]) -> Result<(), ClientError> {
        let entries = members
            .iter()
            .map(|m| groups::roster_entry(m, self.keystore().peer(m)?))
            .collect::<Result<Vec<_>, _>>()?;
        let names = members.iter().map(|m| m.to_string()).collect();
        self.rekey(group, GroupChange::Added(names), |roster| {
            groups::add_members(roster, entries)
        })
        .await
    }

    /// Removes `member` from group `group` (admin only); the remaining
    /// members move to a new key the removed member never sees.
    pub async fn group_kick(&self, group: &str, member: &str) -> Result<(), ClientError> {
        self.rekey(group, GroupChange::Removed(member.to_string()), |roster| {
            groups::remove_member(roster, member)
        })
        .await
    }

    async fn rekey(
        &self,
        group: &str,
        change: GroupChange,
        edit: impl FnOnce(&mut Vec<fastchat_proto::group::RosterEntry>) -> Result<(), ClientError>,
    ) -> Result<(), ClientError> {
        let state = self.my_group(group)?;
        let (request, stored) = groups::rekey(&self.core.me, state, change, edit, |name| {
            self.keystore().peer(name)
        })?;
        match self.core.request(request).await? {
            Response::GroupRekeyed => {}
            _ => return Err(ClientError::UnexpectedReply),
        }
        self.keystore().apply(&stored)
    }

    /// Every group we belong (or belonged) to.
    pub fn groups(&self) -> Result<Vec<GroupState>, ClientError> {
        self.keystore().groups()
    }

    /// Sends an end-to-end encrypted text to every other member of `group`,
    /// signed with our Ed25519 key; returns once the node has stored it.
    pub async fn send_group_text(&self, group: &str, text: &str) -> Result<MessageId, ClientError> {
        let draft = texts::draft(text)?;
        self.my_group_synced(group).await?;
        // One retry: if the admin re-keyed meanwhile, take in the new key first.
        for attempt in 0..2 {
            // The group's state is dropped before the await, not carried in the future.
            let (message, history) =
                texts::seal_group(&self.core.me, &self.my_group(group)?, &draft)?;
            match submit(&self.core, message, Some(history)).await {
                Ok(()) => return Ok(draft.id),
                Err(ClientError::Refused(e)) if e.code == ErrorCode::StaleEpoch && attempt == 0 => {
                    Box::pin(self.sync()).await?;
                }
                Err(ClientError::Refused(e)) if e.code == ErrorCode::NotMember => {
                    Box::pin(self.sync()).await?;
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
        self.core.subscribe_relinks()
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
        let meta = tokio::fs::metadata(path)
            .await
            .map_err(ClientError::io(path))?;
        if !meta.is_file() {
            return Err(ClientError::Unusable {
                path: path.to_path_buf(),
                why: "it is not a regular file".into(),
            });
        }
        if kind == AttachmentKind::Image {
            let mut head = [0u8; 64];
            let mut f = tokio::fs::File::open(path)
                .await
                .map_err(ClientError::io(path))?;
            let n = tokio::io::AsyncReadExt::read(&mut f, &mut head)
                .await
                .map_err(ClientError::io(path))?;
            if !infer::is_image(&head[..n]) {
                return Err(ClientError::NotAnImage(path.to_path_buf()));
            }
        }
        let file = Attaching {
            path: path.to_path_buf(),
            title: path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "file".into()),
            size: meta.len(),
            stamp: FileStamp::of(path).await?,
            kind,
        };
        let id = crate::ids::new_message_id().0;
        let mut nonce_prefix = [0u8; 7];
        random_bytes(&mut nonce_prefix)?;
        let (group, key);
        let seal_for = match to {
            Recipient::Friend(name) => {
                key = self.friend_key_synced(name).await?;
                SealFor::Friend { name, key: &key }
            }
            Recipient::Group(name) => {
                group = self.my_group_synced(name).await?;
                SealFor::Group(&group)
            }
        };
        let rec = attachments::plan_upload(&self.core.me, seal_for, id, nonce_prefix, file)?;
        let record = fastchat_proto::frame::encode_body(&rec)?;
        self.keystore().put_transfer(
            Transfers::Uploads,
            self.name(),
            &id,
            &record,
            TransferState::Uploading,
        )?;
        self.upload(&rec, progress).await
    }

    async fn upload(
        &self,
        rec: &UploadRecord,
        progress: &(dyn Fn(u64, u64) + Send + Sync),
    ) -> Result<UploadReport, ClientError> {
        let report = |done: u64, total: u64| {
            progress(done, total);
            self.core.progress.send(Progress {
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
            match crate::upload::run(&self.core.conn(), &self.core.me, rec, &report).await {
                // The node went away: continue on the next one from where it stopped.
                Err(ClientError::Disconnected)
                    if tries < 5 && self.core.wait_relink(seen).await =>
                {
                    tries += 1;
                }
                other => break other,
            }
        };
        let settled = match &outcome {
            Ok(_) => TransferState::Done,
            Err(ClientError::Refused(_)) => TransferState::Failed,
            Err(_) => return outcome,
        };
        self.keystore()
            .set_transfer_state(Transfers::Uploads, self.name(), &rec.id, settled)?;
        outcome
    }

    /// Finishes uploads an earlier connection left incomplete.
    pub async fn resume_uploads(
        &self,
        progress: &(dyn Fn(u64, u64) + Send + Sync),
    ) -> Result<Vec<UploadReport>, ClientError> {
        let records = self
            .keystore()
            .transfers(Transfers::Uploads, TransferState::Uploading)?;
        let mut out = Vec::with_capacity(records.len());
        for (_, id, record) in records {
            let Ok(rec) = fastchat_proto::decode::<UploadRecord>(&record) else {
                // Saved by a version with another attachment format: it
                // cannot go on, and would be tried at every start.
                tracing::warn!(
                    "an upload saved by an older version cannot be resumed; send the file again"
                );
                self.keystore().set_transfer_state(
                    Transfers::Uploads,
                    self.name(),
                    &id,
                    TransferState::Failed,
                )?;
                continue;
            };
            // Going on re-encrypts under the same key and nonces: safe only
            // for the very bytes sent before. A changed file starts over
            // under a new key (the node drops the stale part with its quota
            // in time; the recipient never hears of it).
            if FileStamp::of(&rec.path).await.ok() == Some(rec.stamp) {
                out.push(self.upload(&rec, progress).await?);
                continue;
            }
            tracing::info!(file = %rec.path.display(), "the file changed since its upload began; sending it anew");
            self.keystore().set_transfer_state(
                Transfers::Uploads,
                self.name(),
                &rec.id,
                TransferState::Failed,
            )?;
            let to = match &rec.to {
                ImageTarget::Direct(name) => Recipient::Friend(name.clone()),
                ImageTarget::Group { .. } => Recipient::Group(rec.label.clone()),
            };
            out.push(
                self.send_attachment(&to, &rec.path, rec.kind, progress)
                    .await?,
            );
        }
        Ok(out)
    }

    /// Starts every download an earlier connection left incomplete, then
    /// waits until none is left running, or until nothing moved for
    /// `stall`. Returns how many are still incomplete.
    pub async fn wait_downloads(&self, stall: std::time::Duration) -> Result<usize, ClientError> {
        let mut progress = self.core.progress.subscribe();
        failover::resume_downloads(&self.core, &self.core.conn())?;
        loop {
            let left = self
                .keystore()
                .transfers(Transfers::Downloads, TransferState::Pending)?
                .len();
            // A task runs until the node has been told its file is in place.
            let running = self.core.active_downloads.lock().expect("lock").len();
            if running == 0 {
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

    /// Closes the connection politely: returns once the close has gone out
    /// and two round trips have passed, so a packet the node sent before it
    /// heard of the close is answered with the close again.
    ///
    /// Not QUIC's whole closing period (`Endpoint::wait_idle`): three probe
    /// timeouts, each with the node's 25 ms ACK delay, ~80 ms on loopback
    /// that every CLI command spent asleep before exiting (`strace`: a
    /// `send` took 90 ms, 78 of them in that wait). A close lost on the way
    /// costs the node only the session's idle timeout.
    pub async fn close(&self) {
        let conn = self.core.conn();
        // Closed already (the node left, or a failover is under way): no
        // close of ours will go out, so nothing to wait for.
        let closed = conn.close_reason().is_some();
        let sent_before = conn.stats().udp_tx.datagrams;
        self.shut();
        if closed {
            return;
        }
        let gone = async {
            while conn.stats().udp_tx.datagrams == sent_before {
                tokio::time::sleep(CLOSE_POLL).await;
            }
            tokio::time::sleep((conn.rtt() * 2).max(CLOSE_POLL)).await;
        };
        let _ = tokio::time::timeout(CLOSE_WAIT_LIMIT, gone).await;
    }

    fn shut(&self) {
        self.core.close();
        self.core.conn().close(0u32.into(), b"bye");
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        // No failover for a client nobody holds.
        self.shut();
    }
}
