//! `Register`: a new user with an RSA identity, proven by a signature that
//! also binds the user's Ed25519 login key (checked once, here, so that
//! every later login costs an Ed25519 check instead of RSA).

use fastchat_crypto::{PublicIdentity, transcript};
use fastchat_proto::control::Response;
use fastchat_proto::limits::MAX_PUBLIC_KEY;
use fastchat_proto::{ErrorCode, ProtoError};

use super::{bad_request, check_name, check_version};
use crate::shared::Shared;

pub(super) async fn apply(
    shared: &Shared,
    version: u32,
    name: &str,
    public_key: &[u8],
    login_key: [u8; 32],
    proof: &[u8],
) -> Result<Response, ProtoError> {
    check_version(version)?;
    check_name(name)?;
    if public_key.len() > MAX_PUBLIC_KEY {
        return Err(bad_request("the public key is too large"));
    }
    let key = PublicIdentity::from_der(public_key)
        .map_err(|_| bad_request("the public key is not an RSA key of 2048 to 4096 bits"))?;
    key.verify(&transcript::register(name, public_key, &login_key), proof)
        .map_err(|_| {
            ProtoError::new(
                ErrorCode::AuthFailed,
                "the registration is not signed by the key it registers",
            )
        })?;
    shared
        .store
        .create_user(name, public_key, Some(login_key))
        .await
        .map_err(|e| match e {
            crate::store::StoreError::NameTaken => ProtoError::new(
                ErrorCode::NameTaken,
                format!("the name '{name}' is already taken; choose another"),
            ),
            other => other.into(),
        })?;
    tracing::info!(user = %name, "registered");
    Ok(Response::Registered)
}
