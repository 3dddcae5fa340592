//! Message ids: 48 bits of milliseconds since the Unix epoch, then 80
//! random bits. Ordered by time, so every keystore and node queue index
//! over ids grows at its right edge instead of dirtying a random page per
//! insert (a random id touched one index page per text, which at load was
//! most of the bytes each commit wrote); 80 random bits per millisecond
//! keep them unique. The node learns nothing new: it sees when a text
//! arrives anyway.

use fastchat_proto::MessageId;

/// A fresh, time-ordered message id.
pub(crate) fn new_message_id() -> MessageId {
    let mut id = [0u8; 16];
    fastchat_crypto::fresh_bytes(&mut id[6..]);
    let ms = fastchat_proto::now_ms();
    id[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    MessageId(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_grow_with_time() {
        let a = new_message_id();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = new_message_id();
        assert!(a < b, "a later id sorts after an earlier one");
        let many: std::collections::HashSet<_> = (0..10_000).map(|_| new_message_id()).collect();
        assert_eq!(many.len(), 10_000);
    }
}
