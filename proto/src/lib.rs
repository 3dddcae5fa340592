//! The fastchat wire protocol: every type that crosses a QUIC stream, the
//! framing that carries it, and the limits both ends enforce. No I/O and no
//! key material live here, so every other crate can share it.

pub mod balancer;
pub mod bus;
pub mod control;
pub mod envelope;
pub mod error;
pub mod frame;
pub mod fuzzing;
pub mod group;
pub mod image;
pub mod limits;
pub mod stream;

/// What a frame body must be: bincode's own traits, derived on every protocol type.
pub use bincode::{Decode, Encode};
pub use error::{ErrorCode, ProtoError};
pub use frame::{FrameError, decode, encode_frame, frame_len};

/// TLS ALPN identifier every fastchat endpoint negotiates.
pub const ALPN: &[u8] = b"fastchat/1";

/// Protocol version sent in the first control request.
pub const PROTOCOL_VERSION: u32 = 7;

/// Milliseconds since the Unix epoch (0 if the clock is before it): the one
/// clock every timestamp on the wire and in the stores is read from.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A message identifier chosen by the sender; unique per message, used for
/// de-duplication end to end.
#[derive(bincode::Encode, bincode::Decode, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(pub [u8; 16]);

impl MessageId {
    /// Lower-case hex form used in JSON output and logs.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses the hex form written by [`MessageId::to_hex`].
    pub fn from_hex(s: &str) -> Option<Self> {
        let bytes = hex::decode(s).ok()?;
        Some(Self(bytes.try_into().ok()?))
    }
}

impl std::fmt::Debug for MessageId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MessageId({})", self.to_hex())
    }
}

impl std::fmt::Display for MessageId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// Checks a user or group name: 1–32 characters of `[a-z0-9_.-]`, starting
/// with a letter or digit. Returns a sentence saying what is wrong otherwise.
pub fn validate_name(name: &str) -> Result<(), String> {
    let ok_len = (1..=limits::MAX_NAME_LEN).contains(&name.len());
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b));
    let ok_first = name
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if ok_len && ok_chars && ok_first {
        Ok(())
    } else {
        Err(format!(
            "'{name}' is not a valid name: use 1 to {} lower-case letters, digits, '_', '.' or '-', starting with a letter or digit",
            limits::MAX_NAME_LEN
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(validate_name("alice").is_ok());
        assert!(validate_name("bob_2.x-y").is_ok());
        assert!(validate_name("").is_err());
        assert!(validate_name("Alice").is_err());
        assert!(validate_name("../x").is_err());
        assert!(validate_name(&"a".repeat(33)).is_err());
    }

    #[test]
    fn message_id_hex_roundtrip() {
        let id = MessageId([7; 16]);
        assert_eq!(MessageId::from_hex(&id.to_hex()), Some(id));
        assert_eq!(MessageId::from_hex("zz"), None);
    }
}

#[cfg(test)]
mod image_len_tests {
    use crate::limits::{IMAGE_CHUNK, image_ciphertext_len, image_plaintext_len};

    #[test]
    fn lengths_roundtrip() {
        let c = IMAGE_CHUNK as u64;
        for plain in [0, 1, c - 1, c, c + 1, 3 * c, 50 << 20] {
            let cipher = image_ciphertext_len(plain).unwrap();
            assert_eq!(image_plaintext_len(cipher), Some(plain), "{plain}");
        }
        assert_eq!(image_ciphertext_len(0), Some(16));
        assert_eq!(image_plaintext_len(5), None);
        // A size near 2^64 from a peer does not wrap into a small length.
        assert_eq!(image_ciphertext_len(u64::MAX - 3), None);
    }
}
