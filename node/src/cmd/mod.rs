//! One file per request kind, each with the same shape: take the decoded
//! request, apply it (authorise, store, route), return the reply. Nothing
//! here touches a socket, so each step is testable on its own.

mod friend;
mod group;
pub(crate) mod image;
pub(crate) mod login;
mod lookup;
mod register;
pub(crate) mod send;
pub(crate) mod sync;

use fastchat_proto::control::{Request, Response};
use fastchat_proto::{ErrorCode, ProtoError};

use crate::shared::Shared;

/// What the node knows about the connection's user.
pub(crate) struct Session {
    /// Set once login succeeded.
    pub user: Option<String>,
    /// The outstanding login challenge: who asked and the nonce.
    pub challenge: Option<login::Challenge>,
    /// Logins refused on this connection so far.
    pub failed_logins: u32,
    /// The connection's login binding (its TLS exporter secret): a login
    /// signed for another connection is refused.
    pub binding: [u8; 32],
}

impl Session {
    /// A session on a connection whose login binding is `binding`.
    pub fn new(binding: [u8; 32]) -> Self {
        Self {
            user: None,
            challenge: None,
            failed_logins: 0,
            binding,
        }
    }

    fn user(&self) -> Result<&str, ProtoError> {
        self.user
            .as_deref()
            .ok_or_else(|| ProtoError::new(ErrorCode::NotLoggedIn, "log in first"))
    }
}

fn bad_request(why: impl Into<String>) -> ProtoError {
    ProtoError::new(ErrorCode::BadRequest, why)
}

fn check_version(version: u32) -> Result<(), ProtoError> {
    if version != fastchat_proto::PROTOCOL_VERSION {
        return Err(ProtoError::new(
            ErrorCode::UnsupportedVersion,
            format!(
                "this node speaks protocol version {}, the client {version}; upgrade the older side",
                fastchat_proto::PROTOCOL_VERSION
            ),
        ));
    }
    Ok(())
}

fn check_name(name: &str) -> Result<(), ProtoError> {
    fastchat_proto::validate_name(name).map_err(bad_request)
}

/// Applies one control request.
pub(crate) async fn apply(
    shared: &Shared,
    session: &mut Session,
    request: Request,
) -> Result<Response, ProtoError> {
    match request {
        Request::Register {
            version,
            name,
            public_key,
            login_key,
            proof,
        } => register::apply(shared, version, &name, &public_key, login_key, &proof).await,
        Request::Hello { version, name } => login::hello(shared, session, version, name).await,
        Request::Login { signature } => login::login(shared, session, &signature).await,
        Request::BindLoginKey { login_key, proof } => {
            login::bind(shared, session.user()?, login_key, &proof).await
        }
        Request::LookupUser { name } => lookup::apply(shared, session.user()?, &name).await,
        Request::FriendRequest {
            to,
            signing_key,
            signature,
        } => friend::request(shared, session.user()?, &to, signing_key, signature).await,
        Request::FriendAccept {
            to,
            wrapped_key,
            signing_key,
            signature,
        } => {
            friend::accept(
                shared,
                session.user()?,
                &to,
                wrapped_key,
                signing_key,
                signature,
            )
            .await
        }
        Request::GroupCreate { name } => group::create(shared, session.user()?, &name).await,
        Request::GroupRekey {
            update,
            keys,
            removed_notice,
        } => group::rekey(shared, session.user()?, update, keys, removed_notice).await,
        Request::ImageReceived { from, id } => {
            image::received(shared, session.user()?, &from, id).await
        }
        Request::Sync => Err(ProtoError::new(ErrorCode::NotLoggedIn, "log in first")),
    }
}
