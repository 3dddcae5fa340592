//! `Hello` and `Login`: the node sends a fresh challenge, the client signs it
//! with the Ed25519 login key bound to its identity (or, for an account that
//! has none bound yet, with the RSA identity key itself). A challenge is used
//! at most once, so a recorded login cannot be replayed. `BindLoginKey`
//! binds a login key to a logged-in user, proven by the RSA identity.

use fastchat_crypto::{PublicIdentity, random_bytes, signing, transcript};
use fastchat_proto::control::Response;
use fastchat_proto::{ErrorCode, ProtoError};

use super::{Session, bad_request, check_name, check_version};
use crate::shared::Shared;
use crate::store::UserKeys;

/// Length of an Ed25519 signature; RSA-PSS signatures are far longer.
const ED25519_SIGNATURE: usize = 64;

/// A challenge sent and not yet answered: who, the nonce, and their keys.
pub(crate) struct Challenge {
    name: String,
    nonce: [u8; 32],
    keys: UserKeys,
}

fn auth_failed() -> ProtoError {
    ProtoError::new(
        ErrorCode::AuthFailed,
        "login failed: the signature does not match this user's keys",
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
    let Some(keys) = shared.store.user_keys(&name).await? else {
        return Err(ProtoError::new(
            ErrorCode::UnknownUser,
            format!("no user named '{name}' is registered on this cluster"),
        ));
    };
    let mut nonce = [0u8; 32];
    random_bytes(&mut nonce).map_err(|_| ProtoError::new(ErrorCode::Internal, "no randomness"))?;
    let login_key = keys.login_key;
    session.challenge = Some(Challenge { name, nonce, keys });
    Ok(Response::Challenge { nonce, login_key })
}

/// Whether `signature` over the login transcript is the user's: by their
/// login key (Ed25519) or, failing a bound one, their RSA identity.
fn signed_by_user(challenge: &Challenge, binding: &[u8; 32], signature: &[u8]) -> bool {
    let message = transcript::login(&challenge.name, &challenge.nonce, binding);
    if signature.len() == ED25519_SIGNATURE {
        return challenge
            .keys
            .login_key
            .is_some_and(|k| signing::verify(&k, &message, signature).is_ok());
    }
    PublicIdentity::from_der(&challenge.keys.public_key)
        .and_then(|key| key.verify(&message, signature))
        .is_ok()
}

pub(super) async fn login(
    shared: &Shared,
    session: &mut Session,
    signature: &[u8],
) -> Result<Response, ProtoError> {
    let challenge = session
        .challenge
        .take()
        .ok_or_else(|| bad_request("send Hello before Login"))?;
    if !signed_by_user(&challenge, &session.binding, signature) {
        tracing::info!(user = %challenge.name, "login refused: bad signature");
        session.failed_logins += 1;
        return Err(auth_failed());
    }
    let name = challenge.name;
    let pending = shared.store.queued_for(&name).await?;
    tracing::info!(user = %name, pending, "logged in");
    session.user = Some(name);
    Ok(Response::LoggedIn { pending })
}

pub(super) async fn bind(
    shared: &Shared,
    user: &str,
    login_key: [u8; 32],
    proof: &[u8],
) -> Result<Response, ProtoError> {
    let der = shared
        .store
        .public_key(user)
        .await?
        .ok_or_else(auth_failed)?;
    let key = PublicIdentity::from_der(&der).map_err(|_| auth_failed())?;
    key.verify(&transcript::login_key(user, &login_key), proof)
        .map_err(|_| {
            ProtoError::new(
                ErrorCode::AuthFailed,
                "the login key is not signed by this user's identity key",
            )
        })?;
    shared.store.set_login_key(user, login_key).await?;
    tracing::info!(%user, "login key bound");
    Ok(Response::Done)
}
