//! The node's durable state behind one trait, so the embedded SQLite store
//! and a distributed one are interchangeable. Everything stored is
//! ciphertext or routing metadata; nothing here can read a message.

#[cfg(test)]
mod conformance;
mod page_weights;
mod policy;
mod postgres;
mod shared_file;
mod sqlite;

use async_trait::async_trait;
use fastchat_proto::control::Relation;
use fastchat_proto::{ErrorCode, MessageId, ProtoError};

pub use postgres::{PostgresStore, PostgresTls};
pub use shared_file::SharedSqlite;
pub use sqlite::{Durability, SqliteStore};

/// One queued envelope: its queue position and its encoded bytes.
pub type Queued = (u64, Vec<u8>);

/// Why the store refused or failed.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// The name is registered already.
    #[error("that name is already taken")]
    NameTaken,
    /// No such user.
    #[error("no user has that name")]
    UnknownUser,
    /// Already friends.
    #[error("you are already friends")]
    AlreadyFriends,
    /// There is no request to accept.
    #[error("there is no pending friend request to accept")]
    NoPendingRequest,
    /// The group moved on since the caller read it.
    #[error("the group changed meanwhile; sync and try again")]
    StaleEpoch,
    /// The sender's stored-bytes quota would be exceeded.
    #[error("your stored images on this node would exceed the quota")]
    QuotaExceeded,
    /// The data could not be stored (disk full, read-only, corrupt).
    #[error("the node cannot store data right now: {0}")]
    Unavailable(String),
}

impl From<StoreError> for ProtoError {
    fn from(e: StoreError) -> Self {
        let code = match &e {
            StoreError::NameTaken => ErrorCode::NameTaken,
            StoreError::UnknownUser => ErrorCode::UnknownUser,
            StoreError::AlreadyFriends => ErrorCode::AlreadyFriends,
            StoreError::NoPendingRequest => ErrorCode::NoPendingRequest,
            StoreError::StaleEpoch => ErrorCode::StaleEpoch,
            StoreError::QuotaExceeded => ErrorCode::QuotaExceeded,
            StoreError::Unavailable(_) => ErrorCode::StoreUnavailable,
        };
        ProtoError::new(code, e.to_string())
    }
}

/// Where a text goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// One friend.
    Direct(String),
    /// Every member of a group but the sender, at this epoch.
    Group {
        /// The group.
        id: u64,
        /// The epoch the sender encrypted under; must be the current one.
        epoch: u64,
    },
}

/// A text to queue: target, sender's message id, encoded envelope.
pub struct TextToQueue {
    /// Who gets it.
    pub to: Target,
    /// The sender's id for the message (catches a group text's resend).
    pub id: MessageId,
    /// The encoded [`fastchat_proto::envelope::Envelope`], shared with the
    /// live pushes to online recipients.
    pub envelope: std::sync::Arc<Vec<u8>>,
}

impl Queuing {
    /// A text stored at `stored` (none: all were there already).
    pub(crate) fn of(stored: Vec<(String, u64)>) -> Self {
        if stored.is_empty() {
            Queuing::Duplicate
        } else {
            Queuing::Stored(stored)
        }
    }
}

/// How much one user's queue may hold: texts waiting for them (count and
/// bytes). A text that would pass either is refused, so a flood cannot fill
/// the node's disk through one recipient.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueLimits {
    /// Most texts waiting.
    pub max_texts: u64,
    /// Most bytes of texts waiting.
    pub max_bytes: u64,
}

impl Default for QueueLimits {
    fn default() -> Self {
        Self {
            max_texts: DEFAULT_QUEUE_TEXTS,
            max_bytes: DEFAULT_QUEUE_BYTES,
        }
    }
}

/// Default most texts waiting for one user.
pub const DEFAULT_QUEUE_TEXTS: u64 = 1_000_000;
/// Default most bytes of texts waiting for one user.
pub const DEFAULT_QUEUE_BYTES: u64 = 512 << 20;

/// What happened to one queued text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Queuing {
    /// Stored for these recipients at these queue positions.
    Stored(Vec<(String, u64)>),
    /// Already queued earlier and still waiting (a resend); nothing new
    /// stored. Every store catches a group text's resend; a direct text's
    /// may be queued again (SQLite does, PostgreSQL catches it too), and
    /// its recipient, whose keystore keeps received ids unique, stores it
    /// once.
    Duplicate,
    /// Refused.
    Refused(ProtoError),
}

/// A group as the node knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupRecord {
    /// Id.
    pub id: u64,
    /// Unique name.
    pub name: String,
    /// The only user who may add and remove.
    pub admin: String,
    /// Current key epoch.
    pub epoch: u64,
    /// Current members, the admin included, by name.
    pub members: Vec<String>,
}

/// A membership change to apply with a re-key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Membership {
    /// Add these users.
    Add(Vec<String>),
    /// Remove this user.
    Remove(String),
}

/// An upload the node holds (or is receiving).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobStart {
    /// The blob's id (its file name in the blob directory).
    pub blob_id: u64,
    /// Ciphertext length.
    pub total_len: u64,
    /// Envelopes queued by this call (empty when resuming).
    pub queued: Vec<(String, u64)>,
    /// The node that held the blob before this call moved it here (an
    /// upload resumed on another node after a failover starts over there).
    pub previous_owner: Option<String>,
}

/// Where a blob lives: its id, ciphertext length, and the node holding the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobLocation {
    /// The blob's id (its file name in the owner's blob directory).
    pub blob_id: u64,
    /// Ciphertext length.
    pub total_len: u64,
    /// The id of the node whose blob directory holds the file.
    pub owner: String,
}

/// What a login is checked against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserKeys {
    /// The RSA identity, SPKI DER.
    pub public_key: Vec<u8>,
    /// The Ed25519 login key bound to it, if any.
    pub login_key: Option<[u8; 32]>,
}

/// The node's durable state.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Registers a user with their public key and login key.
    async fn create_user(
        &self,
        name: &str,
        public_key: &[u8],
        login_key: Option<[u8; 32]>,
    ) -> Result<(), StoreError>;
    /// A user's public key, if registered.
    async fn public_key(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// A user's public key and login key, if registered.
    async fn user_keys(&self, name: &str) -> Result<Option<UserKeys>, StoreError>;
    /// Binds a new login key to a registered user.
    async fn set_login_key(&self, name: &str, login_key: [u8; 32]) -> Result<(), StoreError>;
    /// How `other` relates to `me`.
    async fn relation(&self, me: &str, other: &str) -> Result<Relation, StoreError>;
    /// Records a friend request and queues its envelope for `to`, atomically.
    /// Returns the queue position, or `None` if the request was already pending.
    async fn request_friend(
        &self,
        from: &str,
        to: &str,
        envelope: &[u8],
    ) -> Result<Option<u64>, StoreError>;
    /// Turns `requester`'s pending request into a friendship and queues the
    /// accept envelope for `requester`, atomically.
    async fn accept_friend(
        &self,
        accepter: &str,
        requester: &str,
        envelope: &[u8],
    ) -> Result<u64, StoreError>;
    /// Creates a group with `admin` as its only member; returns its id.
    async fn create_group(&self, name: &str, admin: &str) -> Result<u64, StoreError>;
    /// A group by name.
    async fn group_by_name(&self, name: &str) -> Result<Option<GroupRecord>, StoreError>;
    /// A group by id.
    async fn group(&self, id: u64) -> Result<Option<GroupRecord>, StoreError>;
    /// Moves group `id` to `epoch` (which must be the current one plus one),
    /// applies `change` and queues `envelopes`, atomically. Returns the queue
    /// positions, one per envelope, in order.
    async fn rekey(
        &self,
        id: u64,
        epoch: u64,
        change: Membership,
        envelopes: Vec<(String, Vec<u8>)>,
    ) -> Result<Vec<(String, u64)>, StoreError>;
    /// Queues texts from `from` in one transaction; refuses those to
    /// non-friends, to groups `from` is not in, under stale epochs, and
    /// those a recipient's queue has no room for under `limits`.
    async fn enqueue_texts(
        &self,
        from: &str,
        texts: Vec<TextToQueue>,
        limits: QueueLimits,
    ) -> Result<Vec<Queuing>, StoreError>;
    /// Records an upload from `sender` and queues `envelope` for each
    /// recipient, atomically; an upload with the same id resumes instead.
    /// Refuses if the sender's uncollected uploads would exceed `quota` bytes.
    /// `owner` is the node receiving the upload; a resume on another node
    /// moves the blob there and reports the node it came from.
    #[allow(clippy::too_many_arguments)]
    async fn begin_blob(
        &self,
        sender: &str,
        id: MessageId,
        total_len: u64,
        recipients: Vec<String>,
        envelope: Vec<u8>,
        quota: u64,
        owner: &str,
    ) -> Result<BlobStart, StoreError>;
    /// The blob `recipient` may fetch, and where it lives.
    async fn blob_for(
        &self,
        recipient: &str,
        sender: &str,
        id: MessageId,
    ) -> Result<Option<BlobLocation>, StoreError>;
    /// Notes that `recipient` has the image; returns the blob once every
    /// recipient has it (the owner then deletes the file).
    async fn blob_received(
        &self,
        recipient: &str,
        sender: &str,
        id: MessageId,
    ) -> Result<Option<BlobLocation>, StoreError>;
    /// Up to `limit` envelopes queued for `user` after position `after`, oldest first.
    async fn pending(
        &self,
        user: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Queued>, StoreError>;
    /// Deletes envelopes `user` has acknowledged.
    async fn ack(&self, user: &str, seqs: &[u64]) -> Result<(), StoreError>;
    /// Envelopes queued for all users.
    async fn queue_depth(&self) -> Result<u64, StoreError>;
    /// The newest queue position holding something for `user`.
    async fn last_pending(&self, user: &str) -> Result<Option<u64>, StoreError>;
    /// How many envelopes wait for `user`, from the usage kept with every
    /// insert and delete (a count would read the whole backlog at login).
    async fn queued_for(&self, user: &str) -> Result<u64, StoreError>;
    /// Whether anything for `user` remains at or before position `upto`:
    /// one index probe, where a count reads every row left (a sync asked
    /// this after every ack of a 100,000-text backlog).
    async fn any_pending_upto(&self, user: &str, upto: u64) -> Result<bool, StoreError>;
    /// Closes the store's files and connections; later calls fail as unavailable.
    async fn close(&self);
}
