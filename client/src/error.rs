//! Errors a client user can meet, each one sentence saying what to do.

use std::path::PathBuf;

use fastchat_proto::ProtoError;

/// Why a client operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The home holds no identity.
    #[error(
        "no fastchat identity in {0}; run `fastchat register` first (or pass the right --home)"
    )]
    NotRegistered(PathBuf),
    /// The home already holds an identity.
    #[error(
        "{home} already holds the identity '{name}'; use another --home to register a new user"
    )]
    AlreadyRegistered {
        /// The home directory.
        home: PathBuf,
        /// Who is registered there.
        name: String,
    },
    /// The CA file is missing or not a certificate.
    #[error("cannot use {path} as the cluster CA: {why}")]
    BadCa {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// The keystore could not be read or written.
    #[error("the keystore failed: {0}")]
    Keystore(#[from] rusqlite::Error),
    /// The keystore's background checkpointer could not start.
    #[error("the keystore failed: {0}")]
    Checkpoint(#[from] fastchat_sqlite::Error),
    /// An entry in the keystore does not decode.
    #[error(
        "the keystore is damaged ({0}); restore it from a backup, or register again in another --home"
    )]
    Damaged(String),
    /// No key could be derived from the passphrase.
    #[error("cannot derive a key from the passphrase: {0}")]
    KeyDerivation(String),
    /// A message could not be encoded.
    #[error("cannot encode a message: {0}")]
    Encode(#[from] fastchat_proto::FrameError),
    /// A background task died.
    #[error("a background task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// Networking failed.
    #[error(transparent)]
    Transport(#[from] fastchat_transport::TransportError),
    /// The node refused the request.
    #[error(transparent)]
    Refused(#[from] ProtoError),
    /// A name was not valid.
    #[error("{0}")]
    InvalidName(String),
    /// The peer is not a friend (yet).
    #[error("{0} is not your friend; run `fastchat friend add {0}` and wait for them to accept")]
    NotFriend(String),
    /// A friend request is still waiting for the other side.
    #[error("{0} has not accepted your friend request yet")]
    AwaitingAcceptance(String),
    /// Already friends.
    #[error("you and {0} are already friends")]
    AlreadyFriends(String),
    /// A key the node handed over does not match what we verified before.
    #[error(
        "the node presented a different key for {0} than the one you verified; do not trust this connection and compare safety numbers"
    )]
    KeyMismatch(String),
    /// The text is too long.
    #[error("the message is {0} bytes; the limit is {limit}", limit = fastchat_proto::limits::MAX_TEXT_BYTES)]
    TooLong(usize),
    /// No group by that name in our keystore.
    #[error("you are not in a group named '{0}'")]
    UnknownGroup(String),
    /// We were removed from the group.
    #[error("you were removed from the group '{0}'")]
    RemovedFromGroup(String),
    /// Only the admin may do that.
    #[error("only {admin}, the admin of {group}, can add or remove members")]
    NotAdmin {
        /// The group.
        group: String,
        /// Its admin.
        admin: String,
    },
    /// Already in the group.
    #[error("{0} is already a member")]
    AlreadyMember(String),
    /// Not in the group.
    #[error("{0} is not a member of that group")]
    NotMember(String),
    /// A local file or directory could not be read or written.
    #[error("cannot use {path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
    /// A local file is not one we can use.
    #[error("cannot use {path}: {why}")]
    Unusable {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        why: String,
    },
    /// The file to send is not an image.
    #[error("{0} is not an image (PNG, JPEG, GIF, WebP, ...); send it with --file instead")]
    NotAnImage(PathBuf),
    /// A received image failed its checks and was discarded.
    #[error("the image '{title}' from {from} was discarded: {why}")]
    Corrupt {
        /// Its title.
        title: String,
        /// Its sender.
        from: String,
        /// What failed.
        why: String,
    },
    /// The keystore is protected and no passphrase was given.
    #[error(
        "this keystore is protected by a passphrase; set FASTCHAT_PASSPHRASE or run in a terminal to be asked"
    )]
    PassphraseNeeded,
    /// The passphrase does not open the keystore.
    #[error("the passphrase is wrong")]
    WrongPassphrase,
    /// The connection to the node went away.
    #[error("the connection to the node was lost; try again")]
    Disconnected,
    /// A local crypto operation failed.
    #[error(transparent)]
    Crypto(#[from] fastchat_crypto::CryptoError),
    /// The node answered something that makes no sense here.
    #[error("the node sent an unexpected reply")]
    UnexpectedReply,
}

impl ClientError {
    /// A [`ClientError::File`] maker for `path`, for `map_err`.
    pub(crate) fn io(path: &std::path::Path) -> impl Fn(std::io::Error) -> Self + '_ {
        move |source| ClientError::File {
            path: path.to_path_buf(),
            source,
        }
    }
}
