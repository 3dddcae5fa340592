//! One signature for a batch of texts: the sender hashes each text into a
//! leaf of a Merkle tree (RFC 9162's, SHA-256, leaves and nodes
//! domain-separated) and signs the root once; each text carries its
//! position, the batch's size and the path to the root. A member checks a
//! text alone (its path gives the root the signature covers) and verifies
//! a signature once for all the texts of the batch it holds. Verifying an
//! Ed25519 signature per text per member was most of a member's work in a
//! busy group; a path costs a few hashes.

use sha2::{Digest, Sha256};

/// A leaf or node hash.
pub type Hash = [u8; 32];

/// Most texts one signature covers (the path of a bigger batch would be
/// longer than [`MAX_PATH`]).
pub const MAX_TEXTS: usize = 1 << MAX_PATH;
/// Longest path a batch of [`MAX_TEXTS`] needs.
pub const MAX_PATH: usize = 16;

/// The leaf of a text whose signed part is `signed`.
pub fn leaf(signed: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(signed);
    h.finalize().into()
}

fn node(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The root over `leaves` (not empty, at most [`MAX_TEXTS`]) and each
/// leaf's path to it.
pub fn root_and_paths(leaves: &[Hash]) -> (Hash, Vec<Vec<Hash>>) {
    assert!(!leaves.is_empty() && leaves.len() <= MAX_TEXTS);
    let mut paths = vec![Vec::new(); leaves.len()];
    let root = subtree(leaves, &mut paths);
    (root, paths)
}

/// The root over `leaves` (not empty, at most [`MAX_TEXTS`]) alone: a
/// member holding a whole batch rebuilds it with a hash per text, where a
/// path per text costs a hash per level per text.
pub fn root(leaves: &[Hash]) -> Hash {
    assert!(!leaves.is_empty() && leaves.len() <= MAX_TEXTS);
    mth(leaves)
}

/// RFC 9162's MTH over `leaves`.
fn mth(leaves: &[Hash]) -> Hash {
    if leaves.len() == 1 {
        return leaves[0];
    }
    let k = split(leaves.len());
    node(&mth(&leaves[..k]), &mth(&leaves[k..]))
}

/// The largest power of two below `count` (more than one): where RFC
/// 9162's tree splits.
fn split(count: usize) -> usize {
    1 << (usize::BITS - 1 - (count - 1).leading_zeros())
}

/// RFC 9162's MTH over `leaves`, pushing onto each leaf's path the sibling
/// it needs at this level (innermost first, as the proof lists them).
fn subtree(leaves: &[Hash], paths: &mut [Vec<Hash>]) -> Hash {
    if leaves.len() == 1 {
        return leaves[0];
    }
    let k = split(leaves.len());
    let (left_paths, right_paths) = paths.split_at_mut(k);
    let left = subtree(&leaves[..k], left_paths);
    let right = subtree(&leaves[k..], right_paths);
    for p in left_paths.iter_mut() {
        p.push(right);
    }
    for p in right_paths.iter_mut() {
        p.push(left);
    }
    node(&left, &right)
}

/// The root that `leaf`, at `index` of a batch of `count`, reaches by
/// `path` (RFC 9162, 2.1.3.2); `None` if the path does not fit that
/// position and size.
pub fn root_from_path(leaf: &Hash, index: u32, count: u32, path: &[Hash]) -> Option<Hash> {
    if index >= count || path.len() > MAX_PATH {
        return None;
    }
    let (mut f, mut s) = (index, count - 1);
    let mut r = *leaf;
    for p in path {
        if s == 0 {
            return None;
        }
        if f & 1 == 1 || f == s {
            r = node(p, &r);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            r = node(&r, p);
        }
        f >>= 1;
        s >>= 1;
    }
    (s == 0).then_some(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaves(n: usize) -> Vec<Hash> {
        (0..n).map(|i| leaf(&(i as u32).to_be_bytes())).collect()
    }

    #[test]
    fn every_leaf_of_every_size_reaches_the_root_and_nothing_else_does() {
        for n in 1..=70usize {
            let l = leaves(n);
            let (root, paths) = root_and_paths(&l);
            for (i, path) in paths.iter().enumerate() {
                let (i, count) = (i as u32, n as u32);
                assert_eq!(root_from_path(&l[i as usize], i, count, path), Some(root));
                // Another leaf or position does not reach it.
                let other = leaf(b"not in the batch");
                assert_ne!(root_from_path(&other, i, count, path), Some(root));
                if n > 1 {
                    let j = (i + 1) % count;
                    assert_ne!(root_from_path(&l[i as usize], j, count, path), Some(root));
                }
                // A path can fit a larger size too (the signed message
                // names the size, so that gains nothing).
                if let Some((_, shorter)) = path.split_last() {
                    assert_ne!(
                        root_from_path(&l[i as usize], i, count, shorter),
                        Some(root)
                    );
                }
            }
        }
    }

    #[test]
    fn a_whole_batch_rebuilds_the_root_its_paths_reach() {
        for n in 1..=70usize {
            let l = leaves(n);
            assert_eq!(root(&l), root_and_paths(&l).0, "{n} leaves");
        }
        let mut l = leaves(5);
        l.swap(1, 2);
        assert_ne!(root(&l), root_and_paths(&leaves(5)).0, "order matters");
    }

    #[test]
    fn a_single_text_is_its_own_root_and_an_index_past_the_end_fails() {
        let l = leaves(1);
        let (root, paths) = root_and_paths(&l);
        assert_eq!(root, l[0]);
        assert!(paths[0].is_empty());
        assert_eq!(root_from_path(&l[0], 1, 1, &[]), None);
        assert_eq!(root_from_path(&l[0], 0, 0, &[]), None);
    }

    #[test]
    fn the_tree_is_rfc_9162s() {
        // MTH of three leaves: node(node(a, b), c).
        let l = leaves(3);
        let (root, _) = root_and_paths(&l);
        assert_eq!(root, node(&node(&l[0], &l[1]), &l[2]));
        let l = leaves(5);
        let (root, _) = root_and_paths(&l);
        let four = node(&node(&l[0], &l[1]), &node(&l[2], &l[3]));
        assert_eq!(root, node(&four, &l[4]));
    }
}
