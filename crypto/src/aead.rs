//! AES-256-GCM under a 256-bit conversation key. Nonces are 96 random bits
//! (both friends encrypt under the same key, so a counter would need
//! coordination); at fewer than 2^32 messages per key the collision chance
//! stays below the 2^-32 NIST bound.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use fastchat_proto::envelope::Sealed;
use zeroize::Zeroize;

use crate::{CryptoError, fresh_bytes, random_bytes};

/// A 256-bit symmetric key shared by two friends (or a group at one epoch),
/// with its AES key schedule expanded once, ready for every message.
#[derive(Clone)]
pub struct ConversationKey {
    bytes: [u8; 32],
    cipher: Aes256Gcm,
}

impl Drop for ConversationKey {
    fn drop(&mut self) {
        self.bytes.zeroize();
    }
}

impl ConversationKey {
    /// A fresh random key.
    pub fn generate() -> Result<Self, CryptoError> {
        let mut k = [0u8; 32];
        random_bytes(&mut k)?;
        Ok(Self::from_bytes(k))
    }

    /// Wraps raw key bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        let cipher = Aes256Gcm::new(&Key::<Aes256Gcm>::from(bytes));
        Self { bytes, cipher }
    }

    /// The raw key bytes (for wrapping and the keystore only).
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.bytes
    }

    /// Encrypts `plaintext`, binding `aad`, under a fresh random nonce.
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<Sealed, CryptoError> {
        let mut nonce = [0u8; 12];
        fresh_bytes(&mut nonce);
        let ciphertext = self
            .cipher
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .map_err(|_| CryptoError::DecryptFailed)?;
        Ok(Sealed { nonce, ciphertext })
    }

    /// Decrypts and authenticates; fails if the key, `aad` or bytes differ.
    pub fn open(&self, aad: &[u8], sealed: &Sealed) -> Result<Vec<u8>, CryptoError> {
        self.open_parts(aad, &sealed.nonce, &sealed.ciphertext)
    }

    /// [`ConversationKey::open`] for a nonce and ciphertext read in place.
    pub fn open_parts(
        &self,
        aad: &[u8],
        nonce: &[u8; 12],
        ciphertext: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        self.cipher
            .decrypt(
                &Nonce::from(*nonce),
                Payload {
                    msg: ciphertext,
                    aad,
                },
            )
            .map_err(|_| CryptoError::DecryptFailed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_and_tamper() {
        let key = ConversationKey::generate().unwrap();
        let sealed = key.seal(b"aad", b"secret").unwrap();
        assert_eq!(key.open(b"aad", &sealed).unwrap(), b"secret");
        assert!(key.open(b"other", &sealed).is_err());
        let mut bad = sealed.clone();
        bad.ciphertext[0] ^= 1;
        assert!(key.open(b"aad", &bad).is_err());
        let other = ConversationKey::generate().unwrap();
        assert!(other.open(b"aad", &sealed).is_err());
        let again = key.seal(b"aad", b"secret").unwrap();
        assert_ne!(again.nonce, sealed.nonce);
    }
}
