//! The friend handshake, both sides. Alice asks (a request signed by her
//! RSA identity, carrying her Ed25519 key); Bob accepts (a fresh
//! conversation key wrapped to Alice, signed, carrying his Ed25519 key).
//! Each side verifies the other's signature before it stores or decrypts
//! anything.

use fastchat_crypto::{ConversationKey, PublicIdentity, transcript};
use fastchat_proto::control::{Relation, Request};

use crate::error::ClientError;
use crate::room::{Change, Invalid, Me, Outcome, event, invalid};
use crate::types::{FriendAdd, InboxKind, Peer, PeerState};

/// Refuses names we cannot befriend before any network work.
pub(crate) fn check_name(me: &Me, name: &str) -> Result<(), ClientError> {
    fastchat_proto::validate_name(name).map_err(ClientError::InvalidName)?;
    if name == me.name {
        return Err(ClientError::InvalidName(
            "you cannot befriend yourself".into(),
        ));
    }
    Ok(())
}

/// Refuses to befriend someone we already are friends with.
pub(crate) fn check_not_friends(name: &str, known: Option<&Peer>) -> Result<(), ClientError> {
    match known {
        Some(p) if p.state == PeerState::Friend => {
            Err(ClientError::AlreadyFriends(name.to_string()))
        }
        _ => Ok(()),
    }
}

/// What `friend add name` sends and stores, given the key the node gave
/// for them (`their_der`), how the node says we relate, and what we knew.
pub(crate) fn add(
    me: &Me,
    name: &str,
    their_der: Vec<u8>,
    relation: Relation,
    known: Option<Peer>,
) -> Result<(FriendAdd, Request, Change), ClientError> {
    // The key we verified before is the key we keep: a node that swaps it
    // is told off, not trusted.
    if let Some(p) = &known
        && p.public_key != their_der
    {
        return Err(ClientError::KeyMismatch(name.to_string()));
    }
    let their_key = PublicIdentity::from_der(&their_der)?;
    let signing_key = me.signing.public();
    if relation == Relation::RequestedByThem {
        let key = ConversationKey::generate()?;
        let wrapped_key = their_key.wrap_key(&key)?;
        let signature = me.identity.sign(&transcript::friend_accept(
            &me.name,
            name,
            &wrapped_key,
            &their_der,
            &signing_key,
        ))?;
        let request = Request::FriendAccept {
            to: name.to_string(),
            wrapped_key,
            signing_key,
            signature,
        };
        // Their signing key came with their (verified) request.
        let peer = Peer {
            name: name.to_string(),
            public_key: their_der,
            signing_key: known.and_then(|p| p.signing_key),
            state: PeerState::Friend,
            key: Some(key),
        };
        return Ok((FriendAdd::Accepted, request, Change::PutPeer(peer)));
    }
    let signature = me.identity.sign(&transcript::friend_request(
        &me.name,
        name,
        me.public_der(),
        &their_der,
        &signing_key,
    ))?;
    let request = Request::FriendRequest {
        to: name.to_string(),
        signing_key,
        signature,
    };
    let peer = Peer {
        name: name.to_string(),
        public_key: their_der,
        signing_key: None,
        state: PeerState::Requested,
        key: None,
    };
    Ok((FriendAdd::RequestSent, request, Change::PutPeer(peer)))
}

/// A friend request as it arrived.
pub(crate) struct Asking<'a> {
    pub from: &'a str,
    pub public_key: &'a [u8],
    pub signing_key: [u8; 32],
    pub signature: &'a [u8],
}

/// Takes in a friend request: stored as incoming once its sender's RSA
/// signature verifies; a request from a friend is a redelivery.
pub(crate) fn on_request(
    me: &Me,
    known: Option<&Peer>,
    r: &Asking<'_>,
    event_id: [u8; 16],
) -> Result<Outcome, Invalid> {
    let from = r.from;
    let key = PublicIdentity::from_der(r.public_key)
        .map_err(|_| invalid(format!("a friend request from {from} carries a bad key")))?;
    key.verify(
        &transcript::friend_request(
            from,
            &me.name,
            r.public_key,
            me.public_der(),
            &r.signing_key,
        ),
        r.signature,
    )
    .map_err(|_| {
        invalid(format!(
            "a friend request from {from} is not signed by its sender"
        ))
    })?;
    if known.is_some_and(|p| p.state == PeerState::Friend) {
        return Ok(Outcome::nothing());
    }
    let peer = Peer {
        name: from.to_string(),
        public_key: r.public_key.to_vec(),
        signing_key: Some(r.signing_key),
        state: PeerState::Incoming,
        key: None,
    };
    Ok(Outcome::both(
        Change::PutPeer(peer),
        event(event_id, from, InboxKind::FriendRequest),
    ))
}

/// A friend's accept as it arrived.
pub(crate) struct Accept<'a> {
    pub from: &'a str,
    pub wrapped_key: &'a [u8],
    pub signing_key: [u8; 32],
    pub signature: &'a [u8],
}

/// Takes in an accept of our request: the signature is checked with the
/// key we asked (`known`) before the conversation key is unwrapped.
pub(crate) fn on_accepted(
    me: &Me,
    known: Option<Peer>,
    a: &Accept<'_>,
    event_id: [u8; 16],
) -> Result<Outcome, Invalid> {
    let from = a.from;
    let Some(mut peer) = known else {
        return Err(invalid(format!("a key from {from}, whom we never asked")));
    };
    if peer.state == PeerState::Friend {
        return Ok(Outcome::nothing());
    }
    let their_key = PublicIdentity::from_der(&peer.public_key)
        .map_err(|_| invalid(format!("the stored key of {from} is corrupt")))?;
    // Verify before decrypting: RSA decryption is not constant-time
    // (RUSTSEC-2023-0071), so only authenticated ciphertexts reach it.
    their_key
        .verify(
            &transcript::friend_accept(
                from,
                &me.name,
                a.wrapped_key,
                me.public_der(),
                &a.signing_key,
            ),
            a.signature,
        )
        .map_err(|_| invalid(format!("a key from {from} is not signed by {from}")))?;
    let conv = me
        .identity
        .unwrap_key(a.wrapped_key)
        .map_err(|_| invalid(format!("the key from {from} could not be unwrapped")))?;
    peer.state = PeerState::Friend;
    peer.key = Some(conv);
    peer.signing_key = Some(a.signing_key);
    Ok(Outcome::both(
        Change::PutPeer(peer),
        event(event_id, from, InboxKind::FriendAccepted),
    ))
}

#[cfg(test)]
mod tests {
    use fastchat_proto::control::Request as Req;

    use super::*;

    fn me(name: &str) -> Me {
        Me::generate(name)
    }

    fn put_peer(change: Change) -> Peer {
        match change {
            Change::PutPeer(p) => p,
            _ => panic!("expected a peer"),
        }
    }

    #[test]
    fn a_request_then_an_accept_makes_both_sides_friends_with_one_key() {
        let (alice, bob) = (me("alice"), me("bob"));
        let alice_der = alice.public_der().to_vec();
        let bob_der = bob.public_der().to_vec();

        // Alice asks.
        let (did, request, change) =
            add(&alice, "bob", bob_der.clone(), Relation::None, None).unwrap();
        assert_eq!(did, FriendAdd::RequestSent);
        let asked = put_peer(change);
        assert_eq!(asked.state, PeerState::Requested);
        let Req::FriendRequest {
            signing_key,
            signature,
            ..
        } = request
        else {
            panic!("expected a request")
        };

        // Bob takes the request in; a forged copy is refused.
        let arrived = Asking {
            from: "alice",
            public_key: &alice_der,
            signing_key,
            signature: &signature,
        };
        let taken = on_request(&bob, None, &arrived, [1; 16]).unwrap();
        assert_eq!(taken.item.unwrap().kind, InboxKind::FriendRequest);
        let incoming = put_peer(taken.change.unwrap());
        assert_eq!(incoming.state, PeerState::Incoming);
        let mallory = me("mallory");
        let forged = Asking {
            public_key: mallory.public_der(),
            ..arrived
        };
        let refused = on_request(&bob, None, &forged, [2; 16]).unwrap_err();
        assert!(refused.0.contains("not signed by its sender"), "{refused}");

        // Bob accepts.
        let (did, accept, change) = add(
            &bob,
            "alice",
            alice_der.clone(),
            Relation::RequestedByThem,
            Some(incoming),
        )
        .unwrap();
        assert_eq!(did, FriendAdd::Accepted);
        let bob_side = put_peer(change);
        assert_eq!(bob_side.state, PeerState::Friend);
        assert_eq!(bob_side.signing_key, Some(alice.signing.public()));
        let Req::FriendAccept {
            wrapped_key,
            signing_key,
            signature,
            ..
        } = accept
        else {
            panic!("expected an accept")
        };

        // Alice takes the accept in: same conversation key on both sides.
        let arrived = Accept {
            from: "bob",
            wrapped_key: &wrapped_key,
            signing_key,
            signature: &signature,
        };
        let taken = on_accepted(&alice, Some(asked.clone()), &arrived, [3; 16]).unwrap();
        let alice_side = put_peer(taken.change.unwrap());
        assert_eq!(alice_side.state, PeerState::Friend);
        assert_eq!(
            alice_side.key.unwrap().as_bytes(),
            bob_side.key.unwrap().as_bytes()
        );
        // A redelivery once friends changes nothing.
        let again = on_accepted(&alice, Some(alice_side_friend(&asked)), &arrived, [3; 16]);
        assert!(again.unwrap().change.is_none());

        // An accept we never asked for, or signed by someone else, is refused.
        assert!(on_accepted(&alice, None, &arrived, [4; 16]).is_err());
        let carol = me("carol");
        let mut asked_carol = asked.clone();
        asked_carol.public_key = carol.public_der().to_vec();
        let wrong = on_accepted(&alice, Some(asked_carol), &arrived, [5; 16]).unwrap_err();
        assert!(wrong.0.contains("not signed by bob"), "{wrong}");
    }

    fn alice_side_friend(asked: &Peer) -> Peer {
        Peer {
            state: PeerState::Friend,
            ..asked.clone()
        }
    }

    #[test]
    fn a_swapped_key_and_oneself_are_refused() {
        let (alice, bob, mallory) = (me("alice"), me("bob"), me("mallory"));
        let (_, _, change) = add(
            &alice,
            "bob",
            bob.public_der().to_vec(),
            Relation::None,
            None,
        )
        .unwrap();
        let known = put_peer(change);
        let swapped = add(
            &alice,
            "bob",
            mallory.public_der().to_vec(),
            Relation::RequestedByThem,
            Some(known),
        );
        assert!(matches!(swapped, Err(ClientError::KeyMismatch(_))));
        assert!(matches!(
            check_name(&alice, "alice"),
            Err(ClientError::InvalidName(_))
        ));
    }
}
