//! Ed25519 signing keys: one per user, certified by the user's RSA identity
//! inside the signed friend handshake. They sign group traffic, where an
//! RSA-PSS-3072 signature per message (~3.7 ms) would cap a sender near 270
//! messages/s; Ed25519 signs in tens of microseconds.

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use zeroize::Zeroizing;

use crate::{CryptoError, random_bytes};

/// A user's Ed25519 signing key.
pub struct SigningIdentity(SigningKey);

impl SigningIdentity {
    /// A fresh random key.
    pub fn generate() -> Result<Self, CryptoError> {
        let mut seed = Zeroizing::new([0u8; 32]);
        random_bytes(&mut seed[..])?;
        Ok(Self(SigningKey::from_bytes(&seed)))
    }

    /// Restores a key from its 32-byte seed.
    pub fn from_seed(seed: &[u8]) -> Result<Self, CryptoError> {
        let seed: [u8; 32] = seed.try_into().map_err(|_| CryptoError::BadKey)?;
        Ok(Self(SigningKey::from_bytes(&seed)))
    }

    /// The 32-byte seed, zeroed when dropped.
    pub fn seed(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.0.to_bytes())
    }

    /// The public key.
    pub fn public(&self) -> [u8; 32] {
        self.0.verifying_key().to_bytes()
    }

    /// Signs `message`.
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        self.0.sign(message).to_bytes().to_vec()
    }
}

/// Verifies an Ed25519 signature (strict: no malleable encodings).
pub fn verify(public: &[u8; 32], message: &[u8], signature: &[u8]) -> Result<(), CryptoError> {
    VerifyKey::from_bytes(public)?.verify(message, signature)
}

/// An Ed25519 public key decoded once, for keys that verify many
/// signatures (a group member's): decoding is a field square root, a good
/// part of a verification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyKey(VerifyingKey);

impl VerifyKey {
    /// Decodes a 32-byte public key.
    pub fn from_bytes(public: &[u8; 32]) -> Result<Self, CryptoError> {
        VerifyingKey::from_bytes(public)
            .map(Self)
            .map_err(|_| CryptoError::BadKey)
    }

    /// Verifies `signature` over `message` (strict: no malleable encodings).
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> Result<(), CryptoError> {
        let sig: [u8; 64] = signature
            .try_into()
            .map_err(|_| CryptoError::BadSignature)?;
        self.0
            .verify_strict(message, &ed25519_dalek::Signature::from_bytes(&sig))
            .map_err(|_| CryptoError::BadSignature)
    }
}

/// Verifies many signatures together, `(key, message, signature)` each:
/// one multi-scalar multiplication for the batch costs a fraction of a
/// verification per signature (a group member checks every group text, so
/// this is most of what a busy group costs a member). `Ok` only if every
/// signature verifies; on `Err` verify each alone to find the bad ones.
///
/// Not strict the way [`VerifyKey::verify`] is: a member holding their own
/// key could craft a signature with a small-order part that passes here and
/// fails there. That forges nothing (only the key's owner can sign at all);
/// at worst members disagree on whether to show that member's own
/// malformed text. Weak (small-order) keys are refused here, as there.
pub fn verify_batch(items: &[(&VerifyKey, &[u8], &[u8])]) -> Result<(), CryptoError> {
    // One signature (a delivery holding one sender's batch, the usual
    // case) checks faster alone: 60 against 69 µs here, and strictly.
    if let [(key, message, signature)] = items {
        return key.verify(message, signature);
    }
    let mut keys = Vec::with_capacity(items.len());
    let mut messages = Vec::with_capacity(items.len());
    let mut signatures = Vec::with_capacity(items.len());
    for (key, message, signature) in items {
        if key.0.is_weak() {
            return Err(CryptoError::BadSignature);
        }
        let sig: [u8; 64] = (*signature)
            .try_into()
            .map_err(|_| CryptoError::BadSignature)?;
        keys.push(key.0);
        messages.push(*message);
        signatures.push(ed25519_dalek::Signature::from_bytes(&sig));
    }
    ed25519_dalek::verify_batch(&messages, &signatures, &keys)
        .map_err(|_| CryptoError::BadSignature)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify_and_restore() {
        let k = SigningIdentity::generate().unwrap();
        let sig = k.sign(b"m");
        verify(&k.public(), b"m", &sig).unwrap();
        assert!(verify(&k.public(), b"n", &sig).is_err());
        let other = SigningIdentity::generate().unwrap();
        assert!(verify(&other.public(), b"m", &sig).is_err());
        let again = SigningIdentity::from_seed(&k.seed()[..]).unwrap();
        assert_eq!(again.public(), k.public());
        assert!(verify(&k.public(), b"m", &sig[..63]).is_err());
    }

    #[test]
    fn a_batch_verifies_only_if_every_signature_does() {
        let keys: Vec<SigningIdentity> = (0..5)
            .map(|_| SigningIdentity::generate().unwrap())
            .collect();
        let publics: Vec<VerifyKey> = keys
            .iter()
            .map(|k| VerifyKey::from_bytes(&k.public()).unwrap())
            .collect();
        let messages: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 40]).collect();
        let sigs: Vec<Vec<u8>> = keys.iter().zip(&messages).map(|(k, m)| k.sign(m)).collect();
        let batch = |sigs: &[Vec<u8>]| {
            let items: Vec<(&VerifyKey, &[u8], &[u8])> = publics
                .iter()
                .zip(&messages)
                .zip(sigs)
                .map(|((k, m), s)| (k, m.as_slice(), s.as_slice()))
                .collect();
            verify_batch(&items)
        };
        batch(&sigs).unwrap();
        // One signature over another message, one cut short, one swapped.
        let mut wrong = sigs.clone();
        wrong[2] = keys[2].sign(b"something else");
        assert!(batch(&wrong).is_err());
        let mut short = sigs.clone();
        short[4].pop();
        assert!(batch(&short).is_err());
        let mut swapped = sigs.clone();
        swapped.swap(0, 1);
        assert!(batch(&swapped).is_err());
        assert!(verify_batch(&[]).is_ok());
        // A batch of one is checked alone, with the same answers.
        let one = |sig: &[u8]| verify_batch(&[(&publics[3], messages[3].as_slice(), sig)]);
        one(&sigs[3]).unwrap();
        assert!(one(&wrong[2]).is_err() && one(&short[4]).is_err() && one(&sigs[0]).is_err());
    }
}
