//! `Hello` and `Login`: the node sends a fresh challenge, the client signs it
//! with its identity key. A challenge is used at most once, so a recorded
//! login cannot be replayed.

use fastchat_crypto::{PublicIdentity, random_bytes, transcript};
use fastchat_proto::control::Response;
use fastchat_proto::{ErrorCode, ProtoError};

use super::{Session, bad_request, check_name, check_version};
use crate::shared::Shared;

fn auth_failed() -> ProtoError {
    ProtoError::new(
        ErrorCode::AuthFailed,
        "login failed: the signature does not match this user's identity key",
    )
}

pub(super) async fn hello(
    shared: &Shared,
    session: &mut Session,
    version: u32,
    name: String,
) -> Result<Response, ProtoError> {
    check_version(version)?;
    check_name(&name)?;
    if session.user.is_some() {
        return Err(bad_request("this connection is already logged in"));
    }
    if shared.store.public_key(&name).await?.is_none() {
        return Err(ProtoError::new(
            ErrorCode::UnknownUser,
            format!("no user named '{name}' is registered on this cluster"),
        ));
    }
    let mut nonce = [0u8; 32];
    random_bytes(&mut nonce).map_err(|_| ProtoError::new(ErrorCode::Internal, "no randomness"))?;
    session.challenge = Some((name, nonce));
    Ok(Response::Challenge { nonce })
}

pub(super) async fn login(
    shared: &Shared,
    session: &mut Session,
    signature: &[u8],
) -> Result<Response, ProtoError> {
    let (name, nonce) = session
        .challenge
        .take()
        .ok_or_else(|| bad_request("send Hello before Login"))?;
    let der = shared
        .store
        .public_key(&name)
        .await?
        .ok_or_else(auth_failed)?;
    let key = PublicIdentity::from_der(&der).map_err(|_| auth_failed())?;
    if key
        .verify(&transcript::login(&name, &nonce), signature)
        .is_err()
    {
        tracing::info!(user = %name, "login refused: bad signature");
        session.failed_logins += 1;
        return Err(auth_failed());
    }
    let pending = shared.store.count_pending_upto(&name, u64::MAX).await?;
    tracing::info!(user = %name, pending, "logged in");
    session.user = Some(name);
    Ok(Response::LoggedIn { pending })
}
