//! The exact bytes each signature covers. Every transcript starts with its
//! own label and length-prefixes each field, so a signature made for one
//! purpose can never be replayed as another.

fn build(label: &str, fields: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + fields.iter().map(|f| f.len() + 4).sum::<usize>());
    out.extend_from_slice(b"fastchat/1 ");
    out.extend_from_slice(label.as_bytes());
    for field in fields {
        out.extend_from_slice(&(field.len() as u32).to_be_bytes());
        out.extend_from_slice(field);
    }
    out
}

/// Registration: proves possession of the key being registered.
pub fn register(name: &str, public_key: &[u8], login_key: &[u8; 32]) -> Vec<u8> {
    build("register", &[name.as_bytes(), public_key, login_key])
}

/// Binding a (new) Ed25519 login key to a user's RSA identity.
pub fn login_key(name: &str, login_key: &[u8; 32]) -> Vec<u8> {
    build("login-key", &[name.as_bytes(), login_key])
}

/// Login: binds the user name to the node's fresh challenge and to the
/// connection it is made on (`session`, its TLS exporter secret).
pub fn login(name: &str, challenge: &[u8; 32], session: &[u8; 32]) -> Vec<u8> {
    build("login", &[name.as_bytes(), challenge, session])
}

/// A friend request, binding both names and both keys as the requester saw
/// them, and certifying the requester's Ed25519 signing key.
pub fn friend_request(
    from: &str,
    to: &str,
    from_key: &[u8],
    to_key: &[u8],
    from_signing_key: &[u8; 32],
) -> Vec<u8> {
    build(
        "friend-request",
        &[
            from.as_bytes(),
            to.as_bytes(),
            from_key,
            to_key,
            from_signing_key,
        ],
    )
}

/// A friend accept: the wrapped key, the requester key it was wrapped for,
/// and the accepter's Ed25519 signing key.
pub fn friend_accept(
    from: &str,
    to: &str,
    wrapped_key: &[u8],
    to_key: &[u8],
    from_signing_key: &[u8; 32],
) -> Vec<u8> {
    build(
        "friend-accept",
        &[
            from.as_bytes(),
            to.as_bytes(),
            wrapped_key,
            to_key,
            from_signing_key,
        ],
    )
}

/// A group key for one member: the admin-signed update (its encoding), the
/// member it is for and the key wrapped for them.
pub fn group_key(update: &[u8], member: &str, wrapped_key: &[u8]) -> Vec<u8> {
    build("group-key", &[update, member.as_bytes(), wrapped_key])
}

/// The notice a removed member gets: the admin-signed update alone.
pub fn group_removed(update: &[u8]) -> Vec<u8> {
    build("group-removed", &[update])
}

/// Associated data of an image: sender, recipient (or group id), image id, epoch.
pub fn image_aad(from: &str, to: &str, id: &[u8; 16], epoch: u64) -> Vec<u8> {
    build(
        "image",
        &[from.as_bytes(), to.as_bytes(), id, &epoch.to_be_bytes()],
    )
}

/// What a group image's sender signs before the bytes: the group, epoch,
/// sender, image id, nonce prefix, sealed header and length.
pub fn group_image_signature(
    group_id: u64,
    epoch: u64,
    from: &str,
    id: &[u8; 16],
    nonce_prefix: &[u8; 7],
    header: &[u8],
    total_len: u64,
) -> Vec<u8> {
    build(
        "group-image-sig",
        &[
            &group_id.to_be_bytes(),
            &epoch.to_be_bytes(),
            from.as_bytes(),
            id,
            nonce_prefix,
            header,
            &total_len.to_be_bytes(),
        ],
    )
}

/// What a group image's sender signs after the bytes, in the trailer: the
/// plaintext's SHA-256, computed while the file was encrypted.
pub fn group_image_digest(
    group_id: u64,
    epoch: u64,
    from: &str,
    id: &[u8; 16],
    digest: &[u8; 32],
) -> Vec<u8> {
    build(
        "group-image-digest",
        &[
            &group_id.to_be_bytes(),
            &epoch.to_be_bytes(),
            from.as_bytes(),
            id,
            digest,
        ],
    )
}

/// Associated data of a group text.
pub fn group_text_aad(group_id: u64, epoch: u64, from: &str, id: &[u8; 16]) -> Vec<u8> {
    build(
        "group-text",
        &[
            &group_id.to_be_bytes(),
            &epoch.to_be_bytes(),
            from.as_bytes(),
            id,
        ],
    )
}

/// A group text's leaf in its batch (see [`group_batch_signature`]):
/// everything a member checks, ciphertext included.
pub fn group_text_signature(
    group_id: u64,
    epoch: u64,
    from: &str,
    id: &[u8; 16],
    nonce: &[u8; 12],
    ciphertext: &[u8],
) -> Vec<u8> {
    build(
        "group-text-sig",
        &[
            &group_id.to_be_bytes(),
            &epoch.to_be_bytes(),
            from.as_bytes(),
            id,
            nonce,
            ciphertext,
        ],
    )
}

/// What a sender signs for a batch of its group texts (see
/// [`crate::batch`]): the group, epoch and sender every text in it shares,
/// the batch's size and its root over the texts' [`group_text_signature`]
/// leaves.
pub fn group_batch_signature(
    group_id: u64,
    epoch: u64,
    from: &str,
    count: u32,
    root: &[u8; 32],
) -> Vec<u8> {
    build(
        "group-batch-sig",
        &[
            &group_id.to_be_bytes(),
            &epoch.to_be_bytes(),
            from.as_bytes(),
            &count.to_be_bytes(),
            root,
        ],
    )
}

/// Associated data of a 1:1 text: sender, recipient, message id, key epoch.
pub fn text_aad(from: &str, to: &str, id: &[u8; 16], epoch: u64) -> Vec<u8> {
    build(
        "text",
        &[from.as_bytes(), to.as_bytes(), id, &epoch.to_be_bytes()],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_cannot_slide_into_each_other() {
        assert_ne!(
            register("ab", b"c", &[1; 32]),
            register("a", b"bc", &[1; 32])
        );
        assert_ne!(login_key("a", &[0; 32]), login("a", &[0; 32], &[0; 32]));
        assert_ne!(
            login("a", &[0; 32], &[0; 32]),
            register("a", &[0; 32], &[0; 32])
        );
    }
}
