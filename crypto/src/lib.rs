//! End-to-end crypto for fastchat, as pure functions: RSA identity keys
//! (RSA-PSS-SHA256 signatures, RSA-OAEP-SHA256 key wrap), AES-256-GCM content
//! encryption with bound associated data, signed transcripts, and safety
//! numbers. Nothing here does I/O or logs.

pub mod aead;
pub mod batch;
pub mod chunked;
pub mod fingerprint;
pub mod identity;
pub mod signing;
pub mod transcript;

pub use aead::ConversationKey;
pub use fingerprint::safety_number;
pub use identity::{Identity, PublicIdentity};
pub use signing::SigningIdentity;

/// Why a crypto operation failed. Variants carry no detail on purpose: a
/// peer must not learn *why* a decryption failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    /// A key could not be parsed or is of an unacceptable size.
    #[error("the key is malformed or of an unsupported size")]
    BadKey,
    /// A signature did not verify.
    #[error("the signature does not verify")]
    BadSignature,
    /// Authenticated decryption or key unwrapping failed.
    #[error("the message could not be decrypted")]
    DecryptFailed,
    /// The system random number generator failed.
    #[error("the system random number generator failed")]
    Random,
}

/// Fills `buf` from the operating system's CSPRNG.
pub fn random_bytes(buf: &mut [u8]) -> Result<(), CryptoError> {
    getrandom::fill(buf).map_err(|_| CryptoError::Random)
}

/// Fills `buf` for a nonce or an id from `rand`'s thread-local ChaCha12
/// CSPRNG, seeded from the operating system and reseeded every 64 KiB.
/// Asking the kernel for each AES-GCM nonce and message id was two
/// `getrandom` calls per text, 4% of a client's CPU at load; keys still
/// come from [`random_bytes`]. No process forks without exec, so no two
/// processes share a generator state.
pub fn fresh_bytes(buf: &mut [u8]) {
    use rand::Rng;
    rand::rng().fill_bytes(buf);
}

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(data).into()
}

/// Incremental BLAKE3, for hashing files chunk by chunk as they are sent
/// and written (DESIGN.md, "Images and files"): on this class of CPU it
/// hashes ~4 times as fast as SHA-256 with the SHA instructions, and
/// SHA-256 was a fifth of an image transfer's CPU.
#[derive(Clone, Default)]
pub struct Hasher(blake3::Hasher);

/// Incremental SHA-256 (ring's, with the CPU's SHA instructions): the
/// digest of files sealed before protocol version 7.
#[derive(Clone)]
pub struct Sha256Hasher(ring::digest::Context);

impl Default for Sha256Hasher {
    fn default() -> Self {
        Self(ring::digest::Context::new(&ring::digest::SHA256))
    }
}

impl Sha256Hasher {
    /// Adds bytes.
    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    /// The digest of everything added.
    pub fn finish(self) -> [u8; 32] {
        self.0
            .finish()
            .as_ref()
            .try_into()
            .expect("SHA-256 is 32 bytes")
    }
}

/// The BLAKE3 digest of `data` (what [`Hasher`] computes in pieces).
pub fn file_digest(data: &[u8]) -> [u8; 32] {
    *blake3::hash(data).as_bytes()
}

impl Hasher {
    /// Adds bytes.
    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    /// The digest of everything added.
    pub fn finish(self) -> [u8; 32] {
        *self.0.finalize().as_bytes()
    }
}
