//! The SDK's front door: register, connect, befriend, send, receive.

use std::path::Path;
use std::sync::{Arc, Mutex};

use fastchat_crypto::{
    ConversationKey, Identity, PublicIdentity, SigningIdentity, random_bytes, transcript,
};
use fastchat_proto::control::{Relation, Request, Response};
use fastchat_proto::envelope::{Outgoing, OutgoingGroupText, OutgoingText, TextContent};
use fastchat_proto::frame::encode_body;
use fastchat_proto::group::{GroupChange, GroupUpdate, MemberKey, RosterEntry};
use fastchat_proto::limits::MAX_TEXT_BYTES;
use fastchat_proto::{ErrorCode, MessageId};
use fastchat_transport::client_endpoint;
use fastchat_transport::quinn::{Connection, Endpoint};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::connect::{login, reach_node, register};
use crate::control::Control;
use crate::error::ClientError;
use crate::keystore::{GroupState, InboxItem, Keystore, Peer, PeerState, Profile};
use crate::outbox::{self, Pending};
use crate::{KEYSTORE_FILE, inbox};

/// What the delivery side and the API share.
pub(crate) struct Core {
    pub name: String,
    pub identity: Identity,
    pub signing: SigningIdentity,
    pub keystore: Mutex<Keystore>,
    pub events: broadcast::Sender<InboxItem>,
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
    conn: Connection,
    control: Control,
    outbox: mpsc::UnboundedSender<Pending>,
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
        let identity = tokio::task::spawn_blocking(Identity::generate)
            .await
            .map_err(|e| ClientError::Keystore(e.to_string()))??;
        let (conn, control) = reach_node(&endpoint, server).await?;
        register(&control, name, &identity).await?;

        std::fs::create_dir_all(home)
            .map_err(|e| ClientError::Keystore(format!("cannot create {}: {e}", home.display())))?;
        let profile = Profile {
            name: name.to_string(),
            server: server.to_string(),
            ca_pem,
        };
        let signing = SigningIdentity::generate()?;
        let keystore = Keystore::create(&home.join(KEYSTORE_FILE), &profile, &identity, &signing)?;
        let pending = login(&control, name, &identity).await?;
        Ok(Self::assemble(
            name, identity, signing, keystore, endpoint, conn, control, pending,
        ))
    }

    /// Connects and logs in with the identity stored in `home`.
    pub async fn connect(home: &Path) -> Result<Self, ClientError> {
        let keystore = Keystore::open(home)?;
        let profile = keystore.profile()?;
        let identity = keystore.identity()?;
        let signing = keystore.signing_identity()?;
        let ca = parse_ca(&profile.ca_pem, &home.join(KEYSTORE_FILE))?;
        let endpoint = client_endpoint(&ca, None)?;
        let (conn, control) = reach_node(&endpoint, &profile.server).await?;
        let pending = login(&control, &profile.name, &identity).await?;
        Ok(Self::assemble(
            &profile.name,
            identity,
            signing,
            keystore,
            endpoint,
            conn,
            control,
            pending,
        ))
    }

    #[allow(clippy::too_many_arguments)]
    fn assemble(
        name: &str,
        identity: Identity,
        signing: SigningIdentity,
        keystore: Keystore,
        endpoint: Endpoint,
        conn: Connection,
        control: Control,
        pending_at_login: u64,
    ) -> Self {
        let (events, _) = broadcast::channel(4096);
        let core = Arc::new(Core {
            name: name.to_string(),
            identity,
            signing,
            keystore: Mutex::new(keystore),
            events,
        });
        tokio::spawn(inbox::run(core.clone(), conn.clone()));
        let outbox = outbox::start(conn.clone());
        Self {
            core,
            endpoint,
            conn,
            control,
            outbox,
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
        self.conn.remote_address()
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
        match self.control.request(Request::Sync).await? {
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
            .control
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
            self.control
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
        self.control
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
        match self.keystore().peer(name)? {
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
        if text.len() > MAX_TEXT_BYTES {
            return Err(ClientError::TooLong(text.len()));
        }
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
        let mut id = [0u8; 16];
        random_bytes(&mut id)?;
        let id = MessageId(id);
        let sent_at_ms = now_ms();
        let plain = encode_body(&TextContent {
            text: text.to_string(),
            sent_at_ms,
        })
        .map_err(|_| ClientError::TooLong(text.len()))?;
        let sealed = key.seal(&transcript::text_aad(self.name(), to, &id.0, 0), &plain)?;
        self.keystore()
            .record_outgoing(&id.0, to, None, text, sent_at_ms)?;
        let message = Outgoing::Direct(OutgoingText {
            id,
            to: to.to_string(),
            sealed,
        });
        match self.submit(message).await {
            Ok(()) => {
                self.keystore().mark_sent(&id.0)?;
                Ok(id)
            }
            Err(ClientError::Refused(e)) if e.code == ErrorCode::NotFriends => {
                Err(ClientError::NotFriend(to.to_string()))
            }
            Err(e) => Err(e),
        }
    }

    /// Hands a message to the sender task and waits for the node's answer.
    async fn submit(&self, message: Outgoing) -> Result<(), ClientError> {
        let (done, rx) = oneshot::channel();
        self.outbox
            .send(Pending { message, done })
            .map_err(|_| ClientError::Disconnected)?;
        rx.await.map_err(|_| ClientError::Disconnected)?
    }

    /// Creates a group with us as admin and only member; returns its id.
    pub async fn group_create(&self, name: &str) -> Result<u64, ClientError> {
        fastchat_proto::validate_name(name).map_err(ClientError::InvalidName)?;
        let id = match self
            .control
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

    /// Adds friend `member` to group `group` (admin only); the group moves
    /// to a new key epoch so the newcomer reads nothing sent before.
    pub async fn group_add(&self, group: &str, member: &str) -> Result<(), ClientError> {
        let peer = match self.keystore().peer(member)? {
            Some(p) if p.state == PeerState::Friend => p,
            _ => return Err(ClientError::NotFriend(member.to_string())),
        };
        let signing_key = peer
            .signing_key
            .ok_or_else(|| ClientError::NotFriend(member.to_string()))?;
        self.rekey(group, GroupChange::Added(member.to_string()), |roster| {
            if roster.iter().any(|r| r.name == member) {
                return Err(ClientError::AlreadyMember(member.to_string()));
            }
            roster.push(RosterEntry {
                name: member.to_string(),
                signing_key,
            });
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
            .control
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
        if text.len() > MAX_TEXT_BYTES {
            return Err(ClientError::TooLong(text.len()));
        }
        let mut id = [0u8; 16];
        random_bytes(&mut id)?;
        let id = MessageId(id);
        let sent_at_ms = now_ms();
        let plain = encode_body(&TextContent {
            text: text.to_string(),
            sent_at_ms,
        })
        .map_err(|_| ClientError::TooLong(text.len()))?;
        if self.my_group(group).is_err() {
            // The key that made us a member may still be waiting at the node.
            self.sync().await?;
            self.my_group(group)?;
        }
        self.keystore()
            .record_outgoing(&id.0, group, Some(group), text, sent_at_ms)?;
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
            match self.submit(message).await {
                Ok(()) => {
                    self.keystore().mark_sent(&id.0)?;
                    return Ok(id);
                }
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
        self.conn.close(0u32.into(), b"bye");
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), self.endpoint.wait_idle())
            .await;
    }
}
