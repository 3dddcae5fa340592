//! Chunked AEAD for images (the STREAM construction): each chunk is sealed
//! with AES-256-GCM under a nonce made of a per-image random prefix, the
//! chunk index and a last-chunk flag. Reordering, truncating or extending
//! the chunk sequence fails authentication, and neither end ever holds more
//! than one chunk.
//!
//! Chunks are sealed by the image key's [`ConversationKey`], ring's AES-GCM
//! (the same AEAD as the `aes-gcm` crate, byte for byte, but with AES and
//! GHASH stitched together: two to three times faster here, and images are
//! most of the bytes a client encrypts).

use crate::{ConversationKey, CryptoError};

/// Seals and opens the chunks of one image.
pub struct ChunkCipher {
    key: ConversationKey,
    prefix: [u8; 7],
    aad: Vec<u8>,
}

impl ChunkCipher {
    /// A cipher for one image: `key` is the image's own (never a
    /// conversation key), `prefix` random per image, `aad` binds sender,
    /// recipient or group, image id and epoch.
    pub fn new(key: &ConversationKey, prefix: [u8; 7], aad: Vec<u8>) -> Self {
        Self {
            key: key.clone(),
            prefix,
            aad,
        }
    }

    fn nonce(&self, index: u32, flag: u8) -> [u8; 12] {
        let mut n = [0u8; 12];
        n[..7].copy_from_slice(&self.prefix);
        n[7..11].copy_from_slice(&index.to_be_bytes());
        n[11] = flag;
        n
    }

    fn chunk_flag(last: bool) -> u8 {
        u8::from(last)
    }

    /// Seals chunk `index`; `last` marks the final chunk.
    pub fn seal(&self, index: u32, last: bool, plain: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let nonce = self.nonce(index, Self::chunk_flag(last));
        self.key.seal_under(nonce, &self.aad, plain)
    }

    /// Opens chunk `index`; fails if it is not exactly what was sealed there.
    pub fn open(&self, index: u32, last: bool, sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let nonce = self.nonce(index, Self::chunk_flag(last));
        self.key.open_parts(&self.aad, &nonce, sealed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_are_bound_to_position_finality_and_context() {
        let key = ConversationKey::generate().unwrap();
        let c = ChunkCipher::new(&key, [1; 7], b"ctx".to_vec());
        let s0 = c.seal(0, false, b"first").unwrap();
        let s1 = c.seal(1, true, b"last").unwrap();
        assert_eq!(c.open(0, false, &s0).unwrap(), b"first");
        assert_eq!(c.open(1, true, &s1).unwrap(), b"last");
        // Swapped, truncated (a middle chunk passed off as last), or another context.
        assert!(c.open(1, true, &s0).is_err());
        assert!(c.open(0, true, &s0).is_err());
        let other = ChunkCipher::new(&key, [1; 7], b"other".to_vec());
        assert!(other.open(0, false, &s0).is_err());
    }

    #[test]
    fn chunks_are_plain_aes_256_gcm() {
        // What earlier versions sealed with the aes-gcm crate still opens.
        use aes_gcm::aead::{Aead, KeyInit, Payload};
        let key = ConversationKey::generate().unwrap();
        let c = ChunkCipher::new(&key, [3; 7], b"ctx".to_vec());
        let other =
            aes_gcm::Aes256Gcm::new(&aes_gcm::Key::<aes_gcm::Aes256Gcm>::from(*key.as_bytes()));
        let sealed = other
            .encrypt(
                &aes_gcm::Nonce::from(c.nonce(5, 1)),
                Payload {
                    msg: b"tail",
                    aad: b"ctx",
                },
            )
            .unwrap();
        assert_eq!(sealed, c.seal(5, true, b"tail").unwrap());
        assert_eq!(c.open(5, true, &sealed).unwrap(), b"tail");
    }
}
