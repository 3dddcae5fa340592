//! RSA identity keys: a user's private key (never leaves the keystore) and
//! the public half everyone else sees.

use std::sync::OnceLock;

use rsa::pkcs1::{self, RsaPrivateKeyRef};
use rsa::pkcs8::der::Decode;
use rsa::pkcs8::{
    DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, PrivateKeyInfoRef,
};
use rsa::sha2::Sha256;
use rsa::traits::PublicKeyParts;
use rsa::{Generate, PrivateKey, PublicKey};
use zeroize::Zeroizing;

use crate::CryptoError;
use crate::aead::ConversationKey;

/// Smallest RSA modulus accepted from a peer, in bytes (2048 bits).
const MIN_KEY_BYTES: usize = 256;
/// Largest RSA modulus accepted from a peer, in bytes (4096 bits).
const MAX_KEY_BYTES: usize = 512;

/// A user's RSA-3072 identity key pair.
///
/// Loading one from DER reads only the public half: building the private
/// key (its CRT values) costs a fifth of a millisecond, which every client
/// start paid though most sessions never sign or unwrap with RSA (logins
/// sign with the Ed25519 login key). It is built on first use.
pub struct Identity {
    der: Zeroizing<Vec<u8>>,
    key: OnceLock<PrivateKey>,
    public: PublicIdentity,
}

impl Identity {
    /// Generates a fresh 3072-bit identity (takes a fraction of a second).
    pub fn generate() -> Result<Self, CryptoError> {
        let key = PrivateKey::try_generate().map_err(|_| CryptoError::Random)?;
        Self::from_key(key)
    }

    fn from_key(key: PrivateKey) -> Result<Self, CryptoError> {
        let public = public_of(&key.to_public_key())?;
        let doc = key.to_pkcs8_der().map_err(|_| CryptoError::BadKey)?;
        Ok(Self {
            der: Zeroizing::new(doc.as_bytes().to_vec()),
            key: OnceLock::from(key),
            public,
        })
    }

    /// Loads an identity from PKCS#8 DER. The encoding and the public half
    /// are checked now; the private numbers when first used.
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self, CryptoError> {
        let info = PrivateKeyInfoRef::from_der(der).map_err(|_| CryptoError::BadKey)?;
        let pair = RsaPrivateKeyRef::try_from(info.private_key.as_bytes())
            .map_err(|_| CryptoError::BadKey)?;
        if pair.version() != pkcs1::Version::TwoPrime {
            return Err(CryptoError::BadKey);
        }
        let public = pkcs1::RsaPublicKey {
            modulus: pair.modulus,
            public_exponent: pair.public_exponent,
        };
        Ok(Self {
            der: Zeroizing::new(der.to_vec()),
            key: OnceLock::new(),
            public: PublicIdentity::ours(&public)?,
        })
    }

    /// The private key, built from the DER on first use.
    fn key(&self) -> Result<&PrivateKey, CryptoError> {
        if let Some(key) = self.key.get() {
            return Ok(key);
        }
        let key = PrivateKey::from_pkcs8_der(&self.der).map_err(|_| CryptoError::BadKey)?;
        if key.to_public_key() != *self.public.key()? {
            return Err(CryptoError::BadKey);
        }
        // A racing first use builds it twice; either copy is the same key.
        Ok(self.key.get_or_init(|| key))
    }

    /// The private key as PKCS#8 DER, zeroed when dropped.
    pub fn to_pkcs8_der(&self) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        Ok(self.der.clone())
    }

    /// The public half.
    pub fn public(&self) -> &PublicIdentity {
        &self.public
    }

    /// Signs `message` with RSA-PSS-SHA256.
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.key()?
            .pss_sign::<Sha256>(message)
            .map_err(|_| CryptoError::Random)
    }

    /// Unwraps a conversation key wrapped for us. Callers must verify the
    /// sender's signature over `wrapped` first (see DESIGN.md on
    /// RUSTSEC-2023-0071): only verified ciphertexts reach RSA decryption.
    pub fn unwrap_key(&self, wrapped: &[u8]) -> Result<ConversationKey, CryptoError> {
        let plain = Zeroizing::new(
            self.key()?
                .oaep_decrypt::<Sha256>(wrapped)
                .map_err(|_| CryptoError::DecryptFailed)?,
        );
        let bytes: [u8; 32] = plain
            .as_slice()
            .try_into()
            .map_err(|_| CryptoError::DecryptFailed)?;
        Ok(ConversationKey::from_bytes(bytes))
    }
}

/// The public half of `key` with its DER encoding, size-checked.
fn public_of(key: &PublicKey) -> Result<PublicIdentity, CryptoError> {
    let der = key.to_public_key_der().map_err(|_| CryptoError::BadKey)?;
    PublicIdentity::from_der(der.as_bytes())
}

/// Someone's RSA public key, kept with its DER encoding.
///
/// A peer's key is checked whole when parsed. Our own, read from our
/// keystore at each start, is only encoded then: building an RSA key
/// (its Montgomery parameters) was a tenth of a client's login, and a
/// session that never verifies or wraps with it never needs it.
#[derive(Clone)]
pub struct PublicIdentity {
    key: OnceLock<PublicKey>,
    der: Vec<u8>,
}

impl PublicIdentity {
    /// Parses SubjectPublicKeyInfo DER, refusing keys under 2048 or over 4096 bits.
    pub fn from_der(der: &[u8]) -> Result<Self, CryptoError> {
        let key = PublicKey::from_public_key_der(der).map_err(|_| CryptoError::BadKey)?;
        if !(MIN_KEY_BYTES..=MAX_KEY_BYTES).contains(&key.size()) {
            return Err(CryptoError::BadKey);
        }
        Ok(Self {
            key: OnceLock::from(key),
            der: der.to_vec(),
        })
    }

    /// Our own public key from the numbers in our private key's encoding:
    /// encoded now, built on first use.
    fn ours(public: &pkcs1::RsaPublicKeyRef<'_>) -> Result<Self, CryptoError> {
        use rsa::pkcs8::der::Encode;
        let pkcs1_der = public.to_der().map_err(|_| CryptoError::BadKey)?;
        let der = rsa::pkcs8::SubjectPublicKeyInfoRef {
            algorithm: pkcs1::ALGORITHM_ID,
            subject_public_key: rsa::pkcs8::der::asn1::BitStringRef::new(0, &pkcs1_der)
                .map_err(|_| CryptoError::BadKey)?,
        }
        .to_der()
        .map_err(|_| CryptoError::BadKey)?;
        Ok(Self {
            key: OnceLock::new(),
            der,
        })
    }

    /// The key, built from the DER on first use (only our own is built late).
    fn key(&self) -> Result<&PublicKey, CryptoError> {
        if let Some(key) = self.key.get() {
            return Ok(key);
        }
        let key = Self::from_der(&self.der)?
            .key
            .into_inner()
            .ok_or(CryptoError::BadKey)?;
        Ok(self.key.get_or_init(|| key))
    }

    /// SubjectPublicKeyInfo DER.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// Verifies an RSA-PSS-SHA256 signature over `message`.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> Result<(), CryptoError> {
        self.key()
            .map_err(|_| CryptoError::BadSignature)?
            .pss_verify::<Sha256>(message, signature)
            .map_err(|_| CryptoError::BadSignature)
    }

    /// Wraps a conversation key for this key's owner with RSA-OAEP-SHA256.
    pub fn wrap_key(&self, key: &ConversationKey) -> Result<Vec<u8>, CryptoError> {
        self.key()?
            .oaep_encrypt::<Sha256>(key.as_bytes())
            .map_err(|_| CryptoError::Random)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify_wrap_unwrap_and_reload() {
        let alice = Identity::generate().unwrap();
        let bob = Identity::generate().unwrap();
        let sig = alice.sign(b"hello").unwrap();
        alice.public().verify(b"hello", &sig).unwrap();
        assert_eq!(
            alice.public().verify(b"hellO", &sig),
            Err(CryptoError::BadSignature)
        );
        assert_eq!(
            bob.public().verify(b"hello", &sig),
            Err(CryptoError::BadSignature)
        );

        let key = ConversationKey::generate().unwrap();
        let wrapped = bob.public().wrap_key(&key).unwrap();
        assert_eq!(bob.unwrap_key(&wrapped).unwrap().as_bytes(), key.as_bytes());
        assert!(alice.unwrap_key(&wrapped).is_err());

        let der = alice.to_pkcs8_der().unwrap();
        let again = Identity::from_pkcs8_der(&der).unwrap();
        assert_eq!(again.public().der(), alice.public().der());
        // The reloaded key (built on first use) signs and unwraps as before.
        alice
            .public()
            .verify(b"again", &again.sign(b"again").unwrap())
            .unwrap();
        let for_alice = alice.public().wrap_key(&key).unwrap();
        assert_eq!(
            again.unwrap_key(&for_alice).unwrap().as_bytes(),
            key.as_bytes()
        );
        // Its public half, encoded at load and built on first use, verifies
        // and wraps like the original.
        let reloaded = Identity::from_pkcs8_der(&der).unwrap();
        reloaded
            .public()
            .verify(b"hello", &sig)
            .expect("the reloaded public key verifies the original's signature");
        assert!(reloaded.public().verify(b"hellO", &sig).is_err());
        let wrapped = reloaded.public().wrap_key(&key).unwrap();
        assert_eq!(
            alice.unwrap_key(&wrapped).unwrap().as_bytes(),
            key.as_bytes()
        );
    }

    #[test]
    fn garbage_keys_are_refused() {
        assert!(PublicIdentity::from_der(b"not a key").is_err());
        assert!(Identity::from_pkcs8_der(&[0x30, 0x03, 0x02, 0x01, 0x00]).is_err());
    }
}
