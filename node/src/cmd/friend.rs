//! `FriendRequest` and `FriendAccept`. The node checks the signatures too
//! (cheap, and it keeps junk out of queues) but clients never rely on that:
//! each verifies the other's signature itself before using anything.

use std::sync::Arc;

use fastchat_crypto::{PublicIdentity, transcript};
use fastchat_proto::control::Response;
use fastchat_proto::envelope::Envelope;
use fastchat_proto::frame::encode_body;
use fastchat_proto::{ErrorCode, ProtoError};

use super::{bad_request, check_name};
use crate::shared::{Live, Shared};

/// RSA signatures and wrapped keys are at most 512 bytes (4096-bit keys).
const MAX_RSA_BLOB: usize = 512;

async fn key_of(shared: &Shared, name: &str) -> Result<(Vec<u8>, PublicIdentity), ProtoError> {
    let der = shared.store.public_key(name).await?.ok_or_else(|| {
        ProtoError::new(
            ErrorCode::UnknownUser,
            format!("no user named '{name}' is registered on this cluster"),
        )
    })?;
    let key = PublicIdentity::from_der(&der)
        .map_err(|_| ProtoError::new(ErrorCode::Internal, "a stored key is corrupt"))?;
    Ok((der, key))
}

fn encode(envelope: &Envelope) -> Result<Vec<u8>, ProtoError> {
    encode_body(envelope).map_err(|e| ProtoError::new(ErrorCode::Internal, e.to_string()))
}

pub(super) async fn request(
    shared: &Shared,
    me: &str,
    to: &str,
    signing_key: [u8; 32],
    signature: Vec<u8>,
) -> Result<Response, ProtoError> {
    check_name(to)?;
    if to == me {
        return Err(bad_request("you cannot befriend yourself"));
    }
    if !shared.friend_requests.allow(me) {
        return Err(ProtoError::new(
            ErrorCode::RateLimited,
            format!(
                "too many friend requests; you may send {} a minute",
                shared.friend_requests_per_minute
            ),
        ));
    }
    if signature.len() > MAX_RSA_BLOB {
        return Err(bad_request("the signature is too large"));
    }
    let (my_der, my_key) = key_of(shared, me).await?;
    let (their_der, _) = key_of(shared, to).await?;
    my_key
        .verify(
            &transcript::friend_request(me, to, &my_der, &their_der, &signing_key),
            &signature,
        )
        .map_err(|_| {
            ProtoError::new(
                ErrorCode::AuthFailed,
                "the friend request is not signed by your identity key",
            )
        })?;
    let envelope = encode(&Envelope::FriendRequest {
        from: me.to_string(),
        public_key: my_der,
        signing_key,
        signature,
    })?;
    let stored = shared
        .store
        .request_friend(me, to, &envelope)
        .await
        .map_err(|e| match e {
            crate::store::StoreError::AlreadyFriends => ProtoError::new(
                ErrorCode::AlreadyFriends,
                format!("you and {to} are already friends"),
            ),
            other => other.into(),
        })?;
    if let Some(seq) = stored {
        shared.push(to, Live::new(seq, Arc::new(envelope)));
    }
    Ok(Response::FriendRequestSent)
}

pub(super) async fn accept(
    shared: &Shared,
    me: &str,
    to: &str,
    wrapped_key: Vec<u8>,
    signing_key: [u8; 32],
    signature: Vec<u8>,
) -> Result<Response, ProtoError> {
    check_name(to)?;
    if signature.len() > MAX_RSA_BLOB || wrapped_key.len() > MAX_RSA_BLOB {
        return Err(bad_request("the key message is too large"));
    }
    let (_, my_key) = key_of(shared, me).await?;
    let (their_der, _) = key_of(shared, to).await?;
    my_key
        .verify(
            &transcript::friend_accept(me, to, &wrapped_key, &their_der, &signing_key),
            &signature,
        )
        .map_err(|_| {
            ProtoError::new(
                ErrorCode::AuthFailed,
                "the key message is not signed by your identity key",
            )
        })?;
    let envelope = encode(&Envelope::FriendAccepted {
        from: me.to_string(),
        wrapped_key,
        signing_key,
        signature,
    })?;
    let seq = shared
        .store
        .accept_friend(me, to, &envelope)
        .await
        .map_err(|e| match e {
            crate::store::StoreError::NoPendingRequest => ProtoError::new(
                ErrorCode::NoPendingRequest,
                format!("{to} has not asked to be your friend"),
            ),
            crate::store::StoreError::AlreadyFriends => ProtoError::new(
                ErrorCode::AlreadyFriends,
                format!("you and {to} are already friends"),
            ),
            other => other.into(),
        })?;
    shared.push(to, Live::new(seq, Arc::new(envelope)));
    tracing::info!(user = %me, friend = %to, "friendship established");
    Ok(Response::FriendAccepted)
}
