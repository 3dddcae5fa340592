//! The node's rules of admission and quota, written once. Each store
//! backend reads what a rule needs (inside its transaction, under its
//! locks), asks the rule, and writes what it allows; no backend decides
//! anything itself, so SQLite and PostgreSQL cannot drift apart.

use std::collections::HashMap;

use fastchat_proto::{ErrorCode, ProtoError};

use super::{QueueLimits, StoreError, Target};

/// Whether a friend request from `from` to `to` is stored. `Ok(false)`: it
/// is already pending (a resend), nothing to store.
pub(crate) fn friend_request(
    to_exists: bool,
    already_friends: bool,
    already_asked: bool,
) -> Result<bool, StoreError> {
    if !to_exists {
        return Err(StoreError::UnknownUser);
    }
    if already_friends {
        return Err(StoreError::AlreadyFriends);
    }
    Ok(!already_asked)
}

/// Whether an accept may turn a request into a friendship.
pub(crate) fn friend_accept(already_friends: bool, was_asked: bool) -> Result<(), StoreError> {
    if already_friends {
        return Err(StoreError::AlreadyFriends);
    }
    if !was_asked {
        return Err(StoreError::NoPendingRequest);
    }
    Ok(())
}

/// Whether a group at `current` epoch (`None`: no such group) may move to
/// `epoch`: only to the very next one, so two admins' devices racing
/// cannot both win.
pub(crate) fn rekey(current: Option<u64>, epoch: u64) -> Result<(), StoreError> {
    match current {
        Some(c) if c.checked_add(1) == Some(epoch) => Ok(()),
        _ => Err(StoreError::StaleEpoch),
    }
}

/// Whether a new upload of `total_len` bytes fits beside the `used` bytes
/// of the sender's uploads not yet collected. Sizes come from peers, so
/// the sum is checked: an overflow is over quota, never a wrap.
pub(crate) fn blob_quota(used: u64, total_len: u64, quota: u64) -> Result<(), StoreError> {
    match used.checked_add(total_len) {
        Some(sum) if sum <= quota => Ok(()),
        _ => Err(StoreError::QuotaExceeded),
    }
}

/// Whether a recipient whose queue holds `waiting` (texts, bytes) has room
/// for `texts` more texts of `bytes` in all under `limits`.
pub(crate) fn queue_room(
    to: &str,
    waiting: (u64, u64),
    (texts, bytes): (u64, u64),
    limits: QueueLimits,
) -> Result<(), ProtoError> {
    let count = waiting.0.checked_add(texts);
    let size = waiting.1.checked_add(bytes);
    match (count, size) {
        (Some(c), Some(b)) if c <= limits.max_texts && b <= limits.max_bytes => Ok(()),
        _ => Err(ProtoError::new(
            ErrorCode::QuotaExceeded,
            format!(
                "{to} has too many messages waiting on this node ({} texts, {} MiB); try again once they have read some",
                waiting.0,
                waiting.1 >> 20
            ),
        )),
    }
}

/// What one batch of texts adds to its recipients' queues, against what
/// they held before it: the backend reads a queue once ([`Self::unread`],
/// [`Self::knows`]), asks [`Self::check`] before each text and tells
/// [`Self::stored`] after.
pub(crate) struct QueueRoom {
    limits: QueueLimits,
    /// Per recipient: (waiting before the batch, added by it). A map, as a
    /// group text names every member: a list made each text cost a pass
    /// over all the members per member.
    queues: HashMap<String, (Usage, Usage)>,
}

/// A queue's (texts, bytes).
type Usage = (u64, u64);

impl QueueRoom {
    /// Room under `limits`.
    pub fn new(limits: QueueLimits) -> Self {
        Self {
            limits,
            queues: HashMap::new(),
        }
    }

    /// Those of `recipients` whose queue is not read yet.
    pub fn unread<'r>(&self, recipients: &'r [String]) -> Vec<&'r str> {
        recipients
            .iter()
            .filter(|to| !self.queues.contains_key(to.as_str()))
            .map(String::as_str)
            .collect()
    }

    /// Records what `to`'s queue held before this batch.
    pub fn knows(&mut self, to: &str, waiting: (u64, u64)) {
        self.queues.insert(to.to_string(), (waiting, (0, 0)));
    }

    /// Whether every one of `recipients` has room for a text of `bytes`.
    pub fn check(&self, recipients: &[String], bytes: u64) -> Result<(), ProtoError> {
        for to in recipients {
            if let Some((waiting, added)) = self.queues.get(to.as_str()) {
                let now = (waiting.0 + added.0, waiting.1 + added.1);
                queue_room(to, now, (1, bytes), self.limits)?;
            }
        }
        Ok(())
    }

    /// Counts a text of `bytes` stored for `to`.
    pub fn stored(&mut self, to: &str, bytes: u64) {
        if let Some((_, added)) = self.queues.get_mut(to) {
            added.0 += 1;
            added.1 += bytes;
        }
    }

    /// What the batch added, per recipient it added to: (recipient, texts,
    /// bytes), by name, so concurrent writers update usage rows in one order.
    pub fn added(self) -> impl Iterator<Item = (String, u64, u64)> {
        let mut added: Vec<_> = self
            .queues
            .into_iter()
            .filter(|(_, (_, (texts, _)))| *texts > 0)
            .map(|(to, (_, (texts, bytes)))| (to, texts, bytes))
            .collect();
        added.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        added.into_iter()
    }
}

/// Where a resumed upload's blob moves: `Some(previous)` if it was held by
/// another node (the upload starts over here); `None` if it stays put.
pub(crate) fn blob_moves(held_by: &str, here: &str) -> Option<String> {
    (held_by != here && !held_by.is_empty()).then(|| held_by.to_string())
}

/// A group's current epoch and members, as read under the backend's lock.
pub(crate) type GroupNow = Option<(u64, Vec<String>)>;

/// What must be read before a text's target can be judged.
pub(crate) enum Lookup<'a> {
    /// Whether the sender and this user are friends.
    Friendship(&'a str),
    /// The group's epoch and members.
    Group(u64),
}

/// Admits the texts of one batch from one sender. A batch usually repeats
/// a few targets, so each is read once: the backend asks [`Self::needs`],
/// reads that, tells it back, then asks [`Self::recipients`].
pub(crate) struct TextAdmission<'a> {
    from: &'a str,
    friends: Vec<(String, bool)>,
    groups: Vec<(u64, GroupNow)>,
}

impl<'a> TextAdmission<'a> {
    /// Admission for texts from `from`.
    pub fn new(from: &'a str) -> Self {
        Self {
            from,
            friends: Vec::new(),
            groups: Vec::new(),
        }
    }

    /// What to read before `to` can be judged; `None` if already known.
    pub fn needs<'t>(&self, to: &'t Target) -> Option<Lookup<'t>> {
        match to {
            Target::Direct(name) if !self.friends.iter().any(|(n, _)| n == name) => {
                Some(Lookup::Friendship(name))
            }
            Target::Group { id, .. } if !self.groups.iter().any(|(g, _)| g == id) => {
                Some(Lookup::Group(*id))
            }
            _ => None,
        }
    }

    /// Records whether the sender and `to` are friends.
    pub fn knows_friendship(&mut self, to: &str, friends: bool) {
        self.friends.push((to.to_string(), friends));
    }

    /// Records group `id` as read.
    pub fn knows_group(&mut self, id: u64, now: GroupNow) {
        self.groups.push((id, now));
    }

    /// Who gets a text to `to`, or why it is refused. Every target must
    /// have been read first (see [`Self::needs`]).
    pub fn recipients(&self, to: &Target) -> Result<Vec<String>, ProtoError> {
        match to {
            Target::Direct(name) => {
                let friends = self
                    .friends
                    .iter()
                    .find(|(n, _)| n == name)
                    .is_some_and(|(_, f)| *f);
                if !friends {
                    return Err(not_friends(name));
                }
                Ok(vec![name.clone()])
            }
            Target::Group { id, epoch } => {
                let now = self.groups.iter().find(|(g, _)| g == id).map(|(_, s)| s);
                let (current, members) = match now.and_then(Option::as_ref) {
                    None => return Err(refusal(ErrorCode::UnknownGroup, "no such group")),
                    Some(state) => state,
                };
                if !members.iter().any(|m| m == self.from) {
                    return Err(refusal(
                        ErrorCode::NotMember,
                        "you are not a member of this group",
                    ));
                }
                if current != epoch {
                    return Err(refusal(
                        ErrorCode::StaleEpoch,
                        "the group has a newer key; sync and resend",
                    ));
                }
                Ok(members
                    .iter()
                    .filter(|m| *m != self.from)
                    .cloned()
                    .collect())
            }
        }
    }
}

/// The refusal of a text to `to`, who is not the sender's friend.
fn not_friends(to: &str) -> ProtoError {
    ProtoError::new(
        ErrorCode::NotFriends,
        format!("{to} is not your friend; send a friend request first"),
    )
}

fn refusal(code: ErrorCode, why: &str) -> ProtoError {
    ProtoError::new(code, why)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn friend_rules() {
        assert_eq!(
            friend_request(false, false, false),
            Err(StoreError::UnknownUser)
        );
        assert_eq!(
            friend_request(true, true, false),
            Err(StoreError::AlreadyFriends)
        );
        assert_eq!(friend_request(true, false, true), Ok(false));
        assert_eq!(friend_request(true, false, false), Ok(true));
        assert_eq!(friend_accept(true, true), Err(StoreError::AlreadyFriends));
        assert_eq!(
            friend_accept(false, false),
            Err(StoreError::NoPendingRequest)
        );
        assert_eq!(friend_accept(false, true), Ok(()));
    }

    #[test]
    fn rekeys_move_one_epoch_at_a_time() {
        assert_eq!(rekey(Some(3), 4), Ok(()));
        for (current, epoch) in [(Some(3), 3), (Some(3), 5), (None, 1), (Some(u64::MAX), 0)] {
            assert_eq!(rekey(current, epoch), Err(StoreError::StaleEpoch));
        }
    }

    #[test]
    fn quota_sums_never_wrap() {
        assert_eq!(blob_quota(10, 90, 100), Ok(()));
        assert_eq!(blob_quota(10, 91, 100), Err(StoreError::QuotaExceeded));
        // A length near 2^64 from a hostile peer would wrap an unchecked sum.
        assert_eq!(
            blob_quota(10, u64::MAX - 5, 100),
            Err(StoreError::QuotaExceeded)
        );
        assert_eq!(blob_moves("n1", "n1"), None);
        assert_eq!(blob_moves("", "n1"), None);
        assert_eq!(blob_moves("n2", "n1"), Some("n2".into()));
    }

    #[test]
    fn a_full_queue_refuses_by_count_and_by_bytes() {
        let limits = QueueLimits {
            max_texts: 10,
            max_bytes: 1000,
        };
        assert!(queue_room("bob", (9, 900), (1, 100), limits).is_ok());
        let by_count = queue_room("bob", (10, 0), (1, 1), limits).unwrap_err();
        assert_eq!(by_count.code, ErrorCode::QuotaExceeded);
        assert!(by_count.message.contains("bob has too many"), "{by_count}");
        assert!(queue_room("bob", (0, 900), (1, 101), limits).is_err());
        assert!(queue_room("bob", (0, u64::MAX), (1, 1), limits).is_err());
    }

    #[test]
    fn texts_go_to_friends_and_current_members_only() {
        let mut a = TextAdmission::new("alice");
        let bob = Target::Direct("bob".into());
        let eve = Target::Direct("eve".into());
        let team = Target::Group { id: 7, epoch: 2 };
        let old = Target::Group { id: 7, epoch: 1 };
        let gone = Target::Group { id: 9, epoch: 0 };
        assert!(matches!(a.needs(&bob), Some(Lookup::Friendship("bob"))));
        a.knows_friendship("bob", true);
        a.knows_friendship("eve", false);
        assert!(matches!(a.needs(&team), Some(Lookup::Group(7))));
        a.knows_group(
            7,
            Some((2, vec!["alice".into(), "bob".into(), "carol".into()])),
        );
        a.knows_group(9, None);
        for t in [&bob, &eve, &team, &old, &gone] {
            assert!(a.needs(t).is_none(), "each target is read once");
        }
        assert_eq!(a.recipients(&bob).unwrap(), vec!["bob".to_string()]);
        assert_eq!(a.recipients(&eve).unwrap_err().code, ErrorCode::NotFriends);
        assert_eq!(
            a.recipients(&team).unwrap(),
            vec!["bob".to_string(), "carol".to_string()]
        );
        assert_eq!(a.recipients(&old).unwrap_err().code, ErrorCode::StaleEpoch);
        assert_eq!(
            a.recipients(&gone).unwrap_err().code,
            ErrorCode::UnknownGroup
        );
        let mut outsider = TextAdmission::new("mallory");
        outsider.knows_group(7, Some((2, vec!["alice".into()])));
        assert_eq!(
            outsider.recipients(&team).unwrap_err().code,
            ErrorCode::NotMember
        );
    }
}
