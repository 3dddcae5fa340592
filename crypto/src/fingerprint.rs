//! Safety numbers: 60 digits both friends compute from both public keys, to
//! compare out of band. A node that swapped a key changes the number.

use crate::sha256;

/// 30 digits standing for one user's name and key.
fn half(name: &str, public_key: &[u8]) -> String {
    // Iterating the hash makes searching for a key with a colliding number
    // more expensive without slowing a single comparison noticeably.
    let mut input = Vec::with_capacity(name.len() + public_key.len() + 8);
    input.extend_from_slice(&(name.len() as u32).to_be_bytes());
    input.extend_from_slice(name.as_bytes());
    input.extend_from_slice(public_key);
    let mut digest = sha256(&input);
    for _ in 0..1024 {
        let mut next = digest.to_vec();
        next.extend_from_slice(public_key);
        digest = sha256(&next);
    }
    (0..6)
        .map(|i| {
            let chunk = &digest[i * 5..i * 5 + 5];
            let n = chunk.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
            format!("{:05}", n % 100_000)
        })
        .collect()
}

/// The safety number for a pair of users, the same from either side:
/// twelve groups of five digits.
pub fn safety_number(a: (&str, &[u8]), b: (&str, &[u8])) -> String {
    let (first, second) = if a.0 <= b.0 { (a, b) } else { (b, a) };
    let digits = half(first.0, first.1) + &half(second.0, second.1);
    digits
        .as_bytes()
        .chunks(5)
        .map(|c| std::str::from_utf8(c).expect("ascii digits"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symmetric_and_key_sensitive() {
        let n1 = safety_number(("alice", b"key-a"), ("bob", b"key-b"));
        let n2 = safety_number(("bob", b"key-b"), ("alice", b"key-a"));
        assert_eq!(n1, n2);
        assert_eq!(n1.len(), 12 * 5 + 11);
        let swapped = safety_number(("alice", b"key-a"), ("bob", b"key-X"));
        assert_ne!(n1, swapped);
    }
}
