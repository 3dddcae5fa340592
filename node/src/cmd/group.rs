//! `GroupCreate` and `GroupRekey`. The node enforces who may do what (only
//! the admin re-keys; the roster must be exactly the members after the
//! change; every member gets a key) but cannot forge any of it: members
//! verify the admin's signatures themselves.

use std::sync::Arc;

use fastchat_proto::control::Response;
use fastchat_proto::envelope::Envelope;
use fastchat_proto::frame::encode_body;
use fastchat_proto::group::{GroupChange, GroupUpdate, MemberKey};
use fastchat_proto::limits::MAX_GROUP_MEMBERS;
use fastchat_proto::{ErrorCode, ProtoError};

use super::{bad_request, check_name};
use crate::shared::{Live, Shared};
use crate::store::{Membership, StoreError};

fn unknown_group(name: &str) -> ProtoError {
    ProtoError::new(ErrorCode::UnknownGroup, format!("no group named '{name}'"))
}

pub(super) async fn create(shared: &Shared, me: &str, name: &str) -> Result<Response, ProtoError> {
    check_name(name)?;
    let id = shared
        .store
        .create_group(name, me)
        .await
        .map_err(|e| match e {
            StoreError::NameTaken => ProtoError::new(
                ErrorCode::NameTaken,
                format!("a group named '{name}' already exists; choose another name"),
            ),
            other => other.into(),
        })?;
    tracing::info!(group = id, admin = %me, "group created");
    Ok(Response::GroupCreated { id })
}

pub(super) async fn rekey(
    shared: &Shared,
    me: &str,
    update: GroupUpdate,
    keys: Vec<MemberKey>,
    removed_notice: Option<Vec<u8>>,
) -> Result<Response, ProtoError> {
    let group = shared
        .store
        .group(update.group_id)
        .await?
        .ok_or_else(|| unknown_group(&update.group))?;
    if group.admin != me {
        return Err(ProtoError::new(
            ErrorCode::NotAdmin,
            format!(
                "only {}, the admin of {}, can add or remove members",
                group.admin, group.name
            ),
        ));
    }
    if update.group != group.name || update.admin != group.admin {
        return Err(bad_request("the update names another group or admin"));
    }
    if update.epoch != group.epoch + 1 {
        return Err(ProtoError::new(
            ErrorCode::StaleEpoch,
            "the group changed meanwhile; sync and try again",
        ));
    }
    let mut expected = group.members.clone();
    let (change, removed) = match &update.change {
        GroupChange::Added(new) => {
            if new.is_empty() {
                return Err(bad_request("name at least one member to add"));
            }
            for m in new {
                check_name(m)?;
                if expected.contains(m) {
                    return Err(bad_request(format!(
                        "{m} is already a member of {}",
                        group.name
                    )));
                }
                if shared.store.relation(me, m).await? != fastchat_proto::control::Relation::Friends
                {
                    return Err(ProtoError::new(
                        ErrorCode::NotFriends,
                        format!("{m} must be your friend before you can add them"),
                    ));
                }
                expected.push(m.clone());
            }
            if expected.len() > MAX_GROUP_MEMBERS {
                return Err(ProtoError::new(
                    ErrorCode::TooLarge,
                    format!("a group may have at most {MAX_GROUP_MEMBERS} members"),
                ));
            }
            (Membership::Add(new.clone()), None)
        }
        GroupChange::Removed(m) => {
            if m == me {
                return Err(bad_request("the admin cannot remove themselves"));
            }
            if !expected.contains(m) {
                return Err(ProtoError::new(
                    ErrorCode::NotMember,
                    format!("{m} is not a member of {}", group.name),
                ));
            }
            expected.retain(|x| x != m);
            (Membership::Remove(m.clone()), Some(m.clone()))
        }
    };
    expected.sort();
    let mut roster: Vec<String> = update.roster.iter().map(|r| r.name.clone()).collect();
    roster.sort();
    let mut keyed: Vec<String> = keys.iter().map(|k| k.member.clone()).collect();
    keyed.sort();
    let others: Vec<String> = expected.iter().filter(|m| *m != me).cloned().collect();
    if roster != expected || keyed != others {
        return Err(bad_request(
            "the roster and keys must cover exactly the members after the change",
        ));
    }

    let mut envelopes = Vec::with_capacity(keys.len() + 1);
    let encode = |e: &Envelope| {
        encode_body(e).map_err(|e| ProtoError::new(ErrorCode::TooLarge, e.to_string()))
    };
    for key in keys {
        let envelope = encode(&Envelope::GroupKey {
            update: update.clone(),
            wrapped_key: key.wrapped_key,
            signature: key.signature,
        })?;
        envelopes.push((key.member, envelope));
    }
    if let Some(m) = removed {
        let signature =
            removed_notice.ok_or_else(|| bad_request("a removal needs a notice signature"))?;
        envelopes.push((
            m,
            encode(&Envelope::GroupRemoved {
                update: update.clone(),
                signature,
            })?,
        ));
    }
    let payloads: Vec<Arc<Vec<u8>>> = envelopes.iter().map(|(_, e)| Arc::new(e.clone())).collect();
    let stored = shared
        .store
        .rekey(group.id, update.epoch, change, envelopes)
        .await?;
    for ((to, seq), envelope) in stored.into_iter().zip(payloads) {
        shared.push(&to, Live::new(seq, envelope));
    }
    tracing::info!(group = group.id, epoch = update.epoch, "group re-keyed");
    Ok(Response::GroupRekeyed)
}
