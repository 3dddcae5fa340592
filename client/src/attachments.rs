//! Attachments (images and files), both sides: what an upload carries and
//! signs, and the checks an announced attachment passes before it is
//! fetched. The bytes themselves move in `upload.rs` and `download.rs`.

use std::path::PathBuf;
use std::sync::Arc;

use fastchat_crypto::{ConversationKey, transcript};
use fastchat_proto::decode;
use fastchat_proto::envelope::Sealed;
use fastchat_proto::frame::encode_body;
use fastchat_proto::image::{AttachmentKind, ImageHeader, ImageTarget};
use fastchat_proto::limits::image_ciphertext_len;

use crate::error::ClientError;
use crate::room::{Change, EpochKeys, Invalid, Me, MemberCheck, Outcome, invalid};
use crate::transfer::{DownloadRecord, FileStamp, GroupSigner, UploadRecord, stream_len};
use crate::types::GroupState;

/// Whom an upload is sealed for, with the key that seals it.
pub(crate) enum SealFor<'a> {
    /// A friend, by name.
    Friend {
        name: &'a str,
        key: &'a ConversationKey,
    },
    /// A group at its newest epoch.
    Group(&'a GroupState),
}

/// The file an upload sends, as read before it starts.
pub(crate) struct Attaching {
    pub path: PathBuf,
    pub title: String,
    pub size: u64,
    pub stamp: FileStamp,
    pub kind: AttachmentKind,
}

/// The saved record of a new upload: a fresh random key for the file's
/// chunks, carried inside the header (title, size, kind), which alone is
/// sealed for the recipient under the conversation or group key; in a
/// group, signed by us so members know who sent it. The file's digest
/// follows its bytes (`transfer::trailer_len`).
pub(crate) fn plan_upload(
    me: &Me,
    to: SealFor<'_>,
    id: [u8; 16],
    nonce_prefix: [u8; 7],
    file: Attaching,
) -> Result<UploadRecord, ClientError> {
    let (target, label, key, aad, group) = match to {
        SealFor::Friend { name, key } => (
            ImageTarget::Direct(name.to_string()),
            name.to_string(),
            key.clone(),
            transcript::image_aad(&me.name, name, &id, 0),
            None,
        ),
        SealFor::Group(g) => (
            ImageTarget::Group {
                id: g.id,
                epoch: g.epoch,
            },
            g.name.clone(),
            g.key
                .clone()
                .ok_or_else(|| ClientError::RemovedFromGroup(g.name.clone()))?,
            transcript::image_aad(&me.name, &format!("group:{}", g.id), &id, g.epoch),
            Some((g.id, g.epoch)),
        ),
    };
    let file_key = ConversationKey::generate()?;
    let header = ImageHeader {
        title: file.title,
        size: file.size,
        kind: file.kind,
        sent_at_ms: fastchat_proto::now_ms(),
        file_key: *file_key.as_bytes(),
    };
    let sealed = key.seal(&aad, &encode_body(&header)?)?;
    let mut sealed_header = sealed.nonce.to_vec();
    sealed_header.extend_from_slice(&sealed.ciphertext);
    let total_len = stream_len(file.size, group.is_some())
        .and_then(image_ciphertext_len)
        .ok_or_else(|| ClientError::Unusable {
            path: file.path.clone(),
            why: "it is too large".into(),
        })?;
    let signature = match group {
        Some((gid, epoch)) => me.signing.sign(&transcript::group_image_signature(
            gid,
            epoch,
            &me.name,
            &id,
            &nonce_prefix,
            &sealed_header,
            total_len,
        )),
        None => Vec::new(),
    };
    Ok(UploadRecord {
        id,
        path: file.path,
        to: target,
        label,
        key: *file_key.as_bytes(),
        aad,
        nonce_prefix,
        header: sealed_header,
        signature,
        size: file.size,
        total_len,
        stamp: file.stamp,
        kind: file.kind,
    })
}

/// What we hold to open an announced attachment.
// Built once per announcement and matched at once: boxing would only add
// an allocation.
#[allow(clippy::large_enum_variant)]
pub(crate) enum OpenWith {
    /// From a friend: our conversation key, if they are one.
    Friend(Option<Arc<ConversationKey>>),
    /// In a group: the group, and the key and roster of the epoch it claims.
    Group {
        group: Option<String>,
        at_epoch: Option<Arc<EpochKeys>>,
    },
}

/// An attachment announcement as it arrived.
pub(crate) struct Announced<'a> {
    pub id: [u8; 16],
    pub from: &'a str,
    pub group: Option<(u64, u64)>,
    pub header: &'a [u8],
    pub nonce_prefix: [u8; 7],
    pub total_len: u64,
    pub signature: &'a [u8],
}

/// Checks an announced attachment (sender, signature in a group, header
/// authenticity, a length that matches the header) and, if it passes,
/// records it to fetch.
pub(crate) fn on_announced(me: &Me, with: OpenWith, a: &Announced<'_>) -> Result<Outcome, Invalid> {
    let from = a.from;
    let (key, aad, group_name, signer) = match (with, a.group) {
        (OpenWith::Friend(key), None) => {
            let key =
                key.ok_or_else(|| invalid(format!("an image from {from}, who is not a friend")))?;
            (
                ConversationKey::clone(&key),
                transcript::image_aad(from, &me.name, &a.id, 0),
                None,
                None,
            )
        }
        (OpenWith::Group { group, at_epoch }, Some((gid, epoch))) => {
            let name = group.ok_or_else(|| invalid("an image for a group we do not know"))?;
            let keys = at_epoch
                .ok_or_else(|| invalid(format!("an image in {name} under an epoch we lack")))?;
            let signed = transcript::group_image_signature(
                gid,
                epoch,
                from,
                &a.id,
                &a.nonce_prefix,
                a.header,
                a.total_len,
            );
            keys.verify_member(from, &signed, a.signature)
                .map_err(|e| match e {
                    MemberCheck::NotMember => invalid(format!(
                        "an image from {from}, not a member at epoch {epoch}"
                    )),
                    MemberCheck::BadSignature => {
                        invalid(format!("an image in {name} not signed by {from}"))
                    }
                })?;
            let key = &keys.key;
            let aad = transcript::image_aad(from, &format!("group:{gid}"), &a.id, epoch);
            let signer = keys
                .roster
                .iter()
                .find(|r| r.name == from)
                .map(|r| GroupSigner {
                    key: r.signing_key,
                    group_id: gid,
                    epoch,
                });
            (key.clone(), aad, Some(name), signer)
        }
        _ => return Err(invalid("an image whose target does not match its keys")),
    };
    let unauthentic = || invalid(format!("an image header from {from} failed authentication"));
    let (nonce, ciphertext) = a.header.split_at_checked(12).ok_or_else(unauthentic)?;
    let sealed = Sealed {
        nonce: nonce.try_into().expect("12 bytes"),
        ciphertext: ciphertext.to_vec(),
    };
    let plain = key.open(&aad, &sealed).map_err(|_| unauthentic())?;
    let header: ImageHeader =
        decode(&plain).map_err(|_| invalid(format!("an image header from {from} is malformed")))?;
    let group = a.group.is_some();
    if stream_len(header.size, group).and_then(image_ciphertext_len) != Some(a.total_len) {
        return Err(invalid(format!(
            "an image from {from} has an inconsistent length"
        )));
    }
    Ok(Outcome::change(Change::AddDownload(DownloadRecord {
        id: a.id,
        from: from.to_string(),
        group: group_name,
        key: header.file_key,
        header,
        aad,
        nonce_prefix: a.nonce_prefix,
        total_len: a.total_len,
        signer,
    })))
}

#[cfg(test)]
mod tests {
    use fastchat_proto::image::AttachmentKind;

    use super::*;
    use fastchat_proto::group::RosterEntry;

    fn me(name: &str) -> Me {
        Me::generate(name)
    }

    fn file(size: u64) -> Attaching {
        Attaching {
            path: "cat.png".into(),
            title: "cat.png".into(),
            size,
            stamp: FileStamp::default(),
            kind: AttachmentKind::Image,
        }
    }

    fn announced<'a>(rec: &'a UploadRecord, from: &'a str) -> Announced<'a> {
        Announced {
            id: rec.id,
            from,
            group: match rec.to {
                ImageTarget::Group { id, epoch } => Some((id, epoch)),
                ImageTarget::Direct(_) => None,
            },
            header: &rec.header,
            nonce_prefix: rec.nonce_prefix,
            total_len: rec.total_len,
            signature: &rec.signature,
        }
    }

    #[test]
    fn a_friends_attachment_is_recorded_with_its_header() {
        let (alice, bob) = (me("alice"), me("bob"));
        let key = ConversationKey::generate().unwrap();
        let to = SealFor::Friend {
            name: "bob",
            key: &key,
        };
        let rec = plan_upload(&alice, to, [1; 16], [2; 7], file(5000)).unwrap();
        let outcome = on_announced(
            &bob,
            OpenWith::Friend(Some(Arc::new(key.clone()))),
            &announced(&rec, "alice"),
        )
        .unwrap();
        let Some(Change::AddDownload(down)) = outcome.change else {
            panic!("expected a download")
        };
        assert_eq!(
            (down.header.title.as_str(), down.header.size),
            ("cat.png", 5000)
        );
        // The chunks' key is the file's own, carried in the header: the
        // conversation key seals the header and nothing else.
        assert_eq!(down.key, rec.key);
        assert_ne!(&down.key, key.as_bytes());
        let chunk = rec.cipher().seal(0, true, b"bytes").unwrap();
        assert_eq!(down.cipher().open(0, true, &chunk).unwrap(), b"bytes");
        let with_conversation_key =
            fastchat_crypto::chunked::ChunkCipher::new(&key, rec.nonce_prefix, rec.aad.clone());
        assert!(with_conversation_key.open(0, true, &chunk).is_err());
        let to = SealFor::Friend {
            name: "bob",
            key: &key,
        };
        let again = plan_upload(&alice, to, [1; 16], [2; 7], file(5000)).unwrap();
        assert_ne!(again.key, rec.key, "every upload has a key of its own");

        // Not a friend, the wrong claimed sender, or a length that does not
        // match the header: refused.
        assert!(on_announced(&bob, OpenWith::Friend(None), &announced(&rec, "alice")).is_err());
        assert!(
            on_announced(
                &bob,
                OpenWith::Friend(Some(Arc::new(key.clone()))),
                &announced(&rec, "carol")
            )
            .is_err()
        );
        let mut longer = announced(&rec, "alice");
        longer.total_len += 1;
        let refused =
            on_announced(&bob, OpenWith::Friend(Some(Arc::new(key))), &longer).unwrap_err();
        assert!(refused.0.contains("inconsistent length"), "{refused}");
    }

    #[test]
    fn a_size_near_two_to_the_64_does_not_wrap_past_the_length_check() {
        let (alice, bob) = (me("alice"), me("bob"));
        let key = ConversationKey::generate().unwrap();
        let to = SealFor::Friend {
            name: "bob",
            key: &key,
        };
        let mut rec = plan_upload(&alice, to, [1; 16], [2; 7], file(10)).unwrap();
        // A header claiming 2^64 - 2^16 bytes: unchecked, its ciphertext
        // length would wrap to a few hundred KiB.
        let size = u64::MAX - 65535;
        let chunks = size.div_ceil(fastchat_proto::limits::IMAGE_CHUNK as u64);
        let wrapped = size.wrapping_add(chunks.wrapping_mul(16));
        let header = ImageHeader {
            title: "x".into(),
            size,
            kind: AttachmentKind::File,
            sent_at_ms: 0,
            file_key: [1; 32],
        };
        let sealed = key.seal(&rec.aad, &encode_body(&header).unwrap()).unwrap();
        rec.header = [&sealed.nonce[..], &sealed.ciphertext].concat();
        rec.total_len = wrapped;
        let refused = on_announced(
            &bob,
            OpenWith::Friend(Some(Arc::new(key))),
            &announced(&rec, "alice"),
        )
        .unwrap_err();
        assert!(refused.0.contains("inconsistent length"), "{refused}");
    }

    #[test]
    fn a_group_attachment_must_be_signed_by_a_member_of_its_epoch() {
        let (alice, bob) = (me("alice"), me("bob"));
        let key = ConversationKey::generate().unwrap();
        let roster = vec![RosterEntry {
            name: "alice".into(),
            signing_key: alice.signing.public(),
        }];
        let group = GroupState {
            id: 7,
            name: "team".into(),
            admin: "alice".into(),
            epoch: 2,
            member: true,
            roster: roster.clone(),
            key: Some(key.clone()),
        };
        let rec = plan_upload(&alice, SealFor::Group(&group), [1; 16], [2; 7], file(10)).unwrap();
        let with = || OpenWith::Group {
            group: Some(group.name.clone()),
            at_epoch: Some(Arc::new(EpochKeys::new(key.clone(), roster.clone()))),
        };
        assert!(on_announced(&bob, with(), &announced(&rec, "alice")).is_ok());
        let mut forged = announced(&rec, "alice");
        let bad = [0u8; 64];
        forged.signature = &bad;
        let refused = on_announced(&bob, with(), &forged).unwrap_err();
        assert!(refused.0.contains("not signed by alice"), "{refused}");
        let lacking = OpenWith::Group {
            group: Some(group.name.clone()),
            at_epoch: None,
        };
        assert!(on_announced(&bob, lacking, &announced(&rec, "alice")).is_err());
    }
}
