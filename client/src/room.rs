//! What every protocol room shares. A room (`friends`, `groups`, `texts`,
//! `attachments`) decides; it never touches a socket or the keystore. It is
//! given what the keystore knows and returns what should change there
//! ([`Change`]) and what the screen should show ([`Outcome::item`]); the
//! sender, the receiver and the [`crate::Client`] do the I/O around it.

use std::sync::OnceLock;

use fastchat_crypto::signing::VerifyKey;
use fastchat_crypto::{ConversationKey, Identity, SigningIdentity};
use fastchat_proto::group::RosterEntry;

use crate::transfer::DownloadRecord;
use crate::types::{InboxItem, InboxKind, Peer};

/// Who we are: the keys the rooms sign, unwrap and verify with.
pub(crate) struct Me {
    /// Our user name.
    pub name: String,
    /// Our RSA identity (signs friend handshakes, unwraps keys).
    pub identity: Identity,
    /// Our Ed25519 key (signs group traffic).
    pub signing: SigningIdentity,
}

impl Me {
    /// Fresh keys for `name`, for the rooms' tests.
    #[cfg(test)]
    pub fn generate(name: &str) -> Self {
        Self {
            name: name.into(),
            identity: Identity::generate().unwrap(),
            signing: SigningIdentity::generate().unwrap(),
        }
    }

    /// Our RSA public key, SPKI DER.
    pub fn public_der(&self) -> &[u8] {
        self.identity.public().der()
    }
}

/// A group's key and roster at one epoch, with each member's signing key
/// decoded once, at its first use (a group text costs a verification, not
/// a decode too). Decoding is a field square root, ~20 µs: a hundred-member
/// roster decoded whole cost every member 2 ms per epoch, most of it for
/// members who never sent anything under it (measured: 12% of a fan-out's
/// CPU, each member's first text of the epoch paying for the roster).
pub(crate) struct EpochKeys {
    pub key: ConversationKey,
    pub roster: Vec<RosterEntry>,
    verifiers: Vec<OnceLock<Option<VerifyKey>>>,
}

/// Why a member's signature was not accepted.
pub(crate) enum MemberCheck {
    /// The name is not in the roster of that epoch.
    NotMember,
    /// The signature does not verify with that member's key.
    BadSignature,
}

impl EpochKeys {
    /// The keys of an epoch.
    pub fn new(key: ConversationKey, roster: Vec<RosterEntry>) -> Self {
        let verifiers = roster.iter().map(|_| OnceLock::new()).collect();
        Self {
            key,
            roster,
            verifiers,
        }
    }

    /// The signing key of `name` if a member at this epoch.
    pub fn member_key(&self, name: &str) -> Result<&VerifyKey, MemberCheck> {
        let i = self
            .roster
            .iter()
            .position(|r| r.name == name)
            .ok_or(MemberCheck::NotMember)?;
        self.verifiers[i]
            .get_or_init(|| VerifyKey::from_bytes(&self.roster[i].signing_key).ok())
            .as_ref()
            .ok_or(MemberCheck::BadSignature)
    }

    /// Checks that `name` was a member at this epoch and signed `message`.
    pub fn verify_member(
        &self,
        name: &str,
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), MemberCheck> {
        match self.member_key(name)?.verify(message, signature) {
            Ok(()) => Ok(()),
            Err(_) => Err(MemberCheck::BadSignature),
        }
    }
}

/// A change a room asks the keystore to make.
pub(crate) enum Change {
    /// Insert or replace a peer.
    PutPeer(Peer),
    /// Store a group key at a new epoch and make it the group's newest.
    PutGroupEpoch {
        id: u64,
        name: String,
        admin: String,
        epoch: u64,
        key: ConversationKey,
        roster: Vec<RosterEntry>,
    },
    /// We were removed from a group at `epoch`.
    LeaveGroup { id: u64, epoch: u64 },
    /// Our texts with these ids reached `peer`.
    MarkDelivered { peer: String, ids: Vec<[u8; 16]> },
    /// An attachment announced to us, to fetch.
    AddDownload(DownloadRecord),
}

/// What one incoming envelope came to.
#[derive(Default)]
pub(crate) struct Outcome {
    /// What to write, in the same transaction as the item.
    pub change: Option<Change>,
    /// What to store in the inbox and show.
    pub item: Option<InboxItem>,
}

impl Outcome {
    /// Nothing to do (a redelivery, or a mark that needs no row).
    pub fn nothing() -> Self {
        Self::default()
    }

    /// Only an item to show.
    pub fn item(item: InboxItem) -> Self {
        Self {
            change: None,
            item: Some(item),
        }
    }

    /// A change and an item to show.
    pub fn both(change: Change, item: InboxItem) -> Self {
        Self {
            change: Some(change),
            item: Some(item),
        }
    }

    /// Only a change.
    pub fn change(change: Change) -> Self {
        Self {
            change: Some(change),
            item: None,
        }
    }
}

// Tests unwrap results: say what an outcome holds without its keys.
impl std::fmt::Debug for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outcome")
            .field("change", &self.change.is_some())
            .field("item", &self.item)
            .finish()
    }
}

/// Why an envelope was refused: it failed a check, so it is acknowledged
/// (the node must not deliver it again) and dropped, with this logged.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Invalid(pub String);

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// An [`Invalid`] saying `why`.
pub(crate) fn invalid(why: impl Into<String>) -> Invalid {
    Invalid(why.into())
}

/// An inbox event (a friend or group change) named by `id`.
pub(crate) fn event(id: [u8; 16], from: &str, kind: InboxKind) -> InboxItem {
    InboxItem {
        id,
        from: from.to_string(),
        kind,
        group: None,
        member: None,
        attachment: None,
        text: String::new(),
        sent_at_ms: fastchat_proto::now_ms(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_members_key_is_decoded_when_first_asked_for_and_a_bad_one_only_fails_its_owner() {
        let alice = SigningIdentity::generate().unwrap();
        let roster = vec![
            RosterEntry {
                name: "alice".into(),
                signing_key: alice.public(),
            },
            // Not a point on the curve: decoding it fails.
            RosterEntry {
                name: "mallory".into(),
                signing_key: [0xff; 32],
            },
        ];
        let keys = EpochKeys::new(ConversationKey::from_bytes([1; 32]), roster);
        assert!(
            keys.verifiers.iter().all(|v| v.get().is_none()),
            "nothing decoded before it is needed"
        );
        let signature = alice.sign(b"hello");
        assert!(keys.verify_member("alice", b"hello", &signature).is_ok());
        assert!(matches!(
            keys.verify_member("alice", b"other", &signature),
            Err(MemberCheck::BadSignature)
        ));
        assert!(
            keys.verifiers[1].get().is_none(),
            "mallory's key is untouched"
        );
        assert!(matches!(
            keys.verify_member("mallory", b"hello", &signature),
            Err(MemberCheck::BadSignature)
        ));
        assert!(matches!(
            keys.verify_member("bob", b"hello", &signature),
            Err(MemberCheck::NotMember)
        ));
    }
}
