//! `LookupUser`: a user's public key and how they relate to the caller.

use fastchat_proto::control::Response;
use fastchat_proto::{ErrorCode, ProtoError};

use super::check_name;
use crate::shared::Shared;

pub(super) async fn apply(shared: &Shared, me: &str, name: &str) -> Result<Response, ProtoError> {
    check_name(name)?;
    let public_key = shared.store.public_key(name).await?.ok_or_else(|| {
        ProtoError::new(
            ErrorCode::UnknownUser,
            format!("no user named '{name}' is registered on this cluster"),
        )
    })?;
    let relation = shared.store.relation(me, name).await?;
    Ok(Response::User {
        name: name.to_string(),
        public_key,
        relation,
    })
}
