//! Requests and replies on the long-lived control stream. Each request
//! carries an id chosen by the client; its reply echoes it, so replies may
//! arrive in any order.

use bincode::{Decode, Encode};

use crate::ProtoError;

/// A request with the id its reply will carry.
#[derive(Encode, Decode, Clone, Debug)]
pub struct RequestFrame {
    /// Chosen by the client, echoed in the reply.
    pub id: u64,
    /// The request itself.
    pub request: Request,
}

/// A reply to the request with the same id.
#[derive(Encode, Decode, Clone, Debug)]
pub struct ResponseFrame {
    /// The id of the request this answers.
    pub id: u64,
    /// The answer, or why it was refused.
    pub result: Result<Response, ProtoError>,
}

/// Everything a client can ask of a node on the control stream.
#[derive(Encode, Decode, Clone, Debug)]
pub enum Request {
    /// Creates an account. `proof` is the identity key's signature over
    /// `fastchat_crypto::transcript::register(name, public_key, login_key)`,
    /// so the one RSA check at registration also binds the login key.
    Register {
        /// Protocol version the client speaks.
        version: u32,
        /// Requested user name.
        name: String,
        /// RSA public key, SubjectPublicKeyInfo DER.
        public_key: Vec<u8>,
        /// The Ed25519 key that signs this user's logins.
        login_key: [u8; 32],
        /// Proof of possession of the private key.
        proof: Vec<u8>,
    },
    /// Starts a login; the node answers with a fresh challenge.
    Hello {
        /// Protocol version the client speaks.
        version: u32,
        /// Who is logging in.
        name: String,
    },
    /// Finishes a login with a signature over
    /// `fastchat_crypto::transcript::login(name, challenge, binding)`, where
    /// `binding` is the connection's TLS exporter secret: by the login
    /// key the node holds for the user (64 bytes, Ed25519), or else by the
    /// RSA identity key.
    Login {
        /// The signature.
        signature: Vec<u8>,
    },
    /// Binds a (new) Ed25519 login key to the logged-in user, for accounts
    /// registered before login keys or whose keystore made a new one.
    /// `proof` is the RSA identity's signature over
    /// `fastchat_crypto::transcript::login_key(name, login_key)`.
    BindLoginKey {
        /// The Ed25519 public key.
        login_key: [u8; 32],
        /// The RSA identity's signature binding it.
        proof: Vec<u8>,
    },
    /// Looks up a user's public key and how they relate to the caller.
    LookupUser {
        /// Whom to look up.
        name: String,
    },
    /// Asks `to` to become a friend. `signature` covers
    /// `transcript::friend_request(from, to, from_key, to_key, signing_key)`.
    FriendRequest {
        /// The requested friend.
        to: String,
        /// The requester's Ed25519 signing key, certified by the signature.
        signing_key: [u8; 32],
        /// The requester's signature.
        signature: Vec<u8>,
    },
    /// Accepts `to`'s pending request, handing over a fresh conversation key
    /// wrapped for `to` and signed by the accepter.
    FriendAccept {
        /// The requester being accepted.
        to: String,
        /// The conversation key, RSA-OAEP-SHA256 wrapped for `to`.
        wrapped_key: Vec<u8>,
        /// The accepter's Ed25519 signing key, certified by the signature.
        signing_key: [u8; 32],
        /// Signature over `transcript::friend_accept(...)`.
        signature: Vec<u8>,
    },
    /// Creates a group with the caller as admin and only member (epoch 0).
    GroupCreate {
        /// The group's name, unique on the cluster.
        name: String,
    },
    /// The admin moves a group to a new key epoch, adding or removing one
    /// member; every remaining member gets the new key wrapped for them.
    GroupRekey {
        /// What changes, signed (per member) by the admin.
        update: crate::group::GroupUpdate,
        /// The new key for each member other than the admin.
        keys: Vec<crate::group::MemberKey>,
        /// For a removal: the admin's signature over the update alone, for
        /// the removed member.
        removed_notice: Option<Vec<u8>>,
    },
    /// Replies once everything queued for the caller when the request
    /// arrived has been delivered and acknowledged.
    Sync,
    /// The caller has the whole image and checked it; the node may forget
    /// it once every recipient has said so.
    ImageReceived {
        /// Who sent it.
        from: String,
        /// The sender's id for it.
        id: crate::MessageId,
    },
}

/// How a looked-up user relates to the caller, as the node sees it.
#[derive(Encode, Decode, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Relation {
    /// No request either way.
    None,
    /// The caller asked them; they have not answered.
    RequestedByMe,
    /// They asked the caller; the caller has not answered.
    RequestedByThem,
    /// Friends.
    Friends,
}

/// Successful answers on the control stream.
#[derive(Encode, Decode, Clone, Debug)]
pub enum Response {
    /// The account was created.
    Registered,
    /// Sign this (with the transcript) to log in.
    Challenge {
        /// Fresh random bytes, never reused.
        nonce: [u8; 32],
        /// The login key the node holds for this user, if any: sign with it
        /// when it is yours, else with the RSA identity (and bind yours).
        login_key: Option<[u8; 32]>,
    },
    /// Logged in.
    LoggedIn {
        /// Messages and events waiting for the user.
        pending: u64,
    },
    /// Answer to [`Request::LookupUser`].
    User {
        /// The user's name.
        name: String,
        /// The user's RSA public key, SPKI DER.
        public_key: Vec<u8>,
        /// How the user relates to the caller.
        relation: Relation,
    },
    /// The friend request is queued for its recipient.
    FriendRequestSent,
    /// The friendship is recorded and the key is queued for the requester.
    FriendAccepted,
    /// Everything queued at the time of the [`Request::Sync`] was delivered.
    Synced,
    /// The group exists with this id.
    GroupCreated {
        /// The group's id.
        id: u64,
    },
    /// The re-key is stored and queued for every member.
    GroupRekeyed,
    /// Noted.
    Done,
}
