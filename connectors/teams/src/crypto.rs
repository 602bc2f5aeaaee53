//! Rich (encrypted) change notifications (graph.md §6.5): [`DecryptionKeys`] opens the
//! `encryptedContent` of a presence notification, [`encrypt_for_subscription`] seals one the way
//! Graph does (for the Teams simulator and tests).
//!
//! The scheme: a fresh 32-byte key per item, wrapped with RSA-OAEP(SHA-1) for the subscription's
//! certificate (`dataKey`); the resource JSON encrypted with AES-256-CBC and PKCS#7 padding, the IV
//! being the first 16 bytes of the key (`data`); HMAC-SHA256 of the ciphertext under the same key
//! (`dataSignature`). Decryption checks the HMAC, in constant time, before touching the
//! ciphertext.
//!
//! The RSA step of the `rsa` crate is not constant time (RUSTSEC-2023-0071), so check an item's
//! `clientState` before decrypting it: strangers then cannot make us decrypt chosen `dataKey`s.

use std::fmt;

use aes::cipher::{block_padding::Pkcs7, BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use rsa::pkcs1::{DecodeRsaPrivateKey, DecodeRsaPublicKey};
use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey};
use rsa::rand_core::{OsRng, RngCore};
use rsa::{Oaep, RsaPrivateKey, RsaPublicKey};
use serde_json::Value;
use sha2::Sha256;

use crate::notifications::EncryptedContent;

type Aes256CbcDec = cbc::Decryptor<aes::Aes256>;
type Aes256CbcEnc = cbc::Encryptor<aes::Aes256>;
type HmacSha256 = Hmac<Sha256>;

/// Length of the symmetric key Graph generates per notification.
const SYMMETRIC_KEY_LEN: usize = 32;
/// The AES-CBC IV is this many leading bytes of the symmetric key.
const IV_LEN: usize = 16;

/// Why a rich notification could not be opened or sealed.
///
/// No variant carries key material, the symmetric key or the plaintext.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// A private key PEM could not be read (neither PKCS#8 nor PKCS#1 RSA).
    #[error("private key for certificate id {cert_id:?} is not an RSA private key PEM (PKCS#8 or PKCS#1)")]
    InvalidPrivateKey {
        /// The certificate id the key was configured for.
        cert_id: String,
    },
    /// A public key PEM could not be read (neither SPKI nor PKCS#1 RSA).
    #[error(
        "public key for certificate id {cert_id:?} is not an RSA public key PEM (SPKI or PKCS#1)"
    )]
    InvalidPublicKey {
        /// The certificate id the key was given for.
        cert_id: String,
    },
    /// Two keys were configured under one certificate id.
    #[error("certificate id {cert_id:?} is configured twice")]
    DuplicateCertificateId {
        /// The repeated id.
        cert_id: String,
    },
    /// No key is configured for the notification's `encryptionCertificateId`.
    #[error("no decryption key for encryptionCertificateId {cert_id:?}")]
    UnknownCertificate {
        /// The id the notification named.
        cert_id: String,
    },
    /// A field is not valid base64.
    #[error("encryptedContent.{field} is not valid base64")]
    Base64 {
        /// `data`, `dataKey` or `dataSignature`.
        field: &'static str,
        /// The decoder's complaint.
        #[source]
        source: base64::DecodeError,
    },
    /// RSA-OAEP(SHA-1) unwrapping of `dataKey` failed (wrong key or corrupted `dataKey`).
    #[error("encryptedContent.dataKey cannot be unwrapped with the key for this certificate id")]
    KeyUnwrap,
    /// The unwrapped symmetric key is not 32 bytes long.
    #[error("encryptedContent.dataKey holds a {len}-byte key, expected 32")]
    SymmetricKeyLength {
        /// The length found.
        len: usize,
    },
    /// `dataSignature` does not match HMAC-SHA256 of `data`: tampered or corrupted.
    #[error("encryptedContent.dataSignature does not match data (tampered or corrupted)")]
    SignatureMismatch,
    /// AES-256-CBC decryption failed (bad length or padding).
    #[error("encryptedContent.data does not decrypt (bad length or padding)")]
    Decrypt,
    /// The plaintext is not UTF-8 JSON.
    #[error("decrypted data is not UTF-8 JSON at line {line} column {column}")]
    NotJson {
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
    },
    /// Sealing failed (RSA encryption or serialisation); only from [`encrypt_for_subscription`].
    #[error("cannot encrypt the payload: {0}")]
    Encrypt(&'static str),
}

/// Result type of this module.
pub type Result<T, E = CryptoError> = std::result::Result<T, E>;

/// The private keys of our encryption certificates, by certificate id.
///
/// Holds several so that a rotation works: Graph may keep using the old certificate for a while
/// after the subscription was patched with the new one. `Debug` shows the certificate ids only.
#[derive(Clone, Default)]
pub struct DecryptionKeys {
    keys: Vec<(String, RsaPrivateKey)>,
}

impl DecryptionKeys {
    /// No keys yet; add them with [`DecryptionKeys::add_pem`].
    pub fn new() -> Self {
        Self::default()
    }

    /// One key: `private_key_pem` (PKCS#8 `PRIVATE KEY` or PKCS#1 `RSA PRIVATE KEY`) for the
    /// subscription's `encryptionCertificateId` `cert_id`.
    pub fn from_pem(cert_id: &str, private_key_pem: &str) -> Result<Self> {
        let mut keys = Self::new();
        keys.add_pem(cert_id, private_key_pem)?;
        Ok(keys)
    }

    /// Adds the key for another certificate id (rotation). A repeated id is refused.
    pub fn add_pem(&mut self, cert_id: &str, private_key_pem: &str) -> Result<()> {
        if self.key(cert_id).is_some() {
            return Err(CryptoError::DuplicateCertificateId {
                cert_id: cert_id.to_owned(),
            });
        }
        let key = RsaPrivateKey::from_pkcs8_pem(private_key_pem)
            .or_else(|_| RsaPrivateKey::from_pkcs1_pem(private_key_pem))
            .map_err(|_| CryptoError::InvalidPrivateKey {
                cert_id: cert_id.to_owned(),
            })?;
        self.keys.push((cert_id.to_owned(), key));
        Ok(())
    }

    /// The configured certificate ids, in the order they were added.
    pub fn certificate_ids(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|(id, _)| id.as_str())
    }

    /// Whether no key is configured.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Opens a rich notification's `encryptedContent` and returns the resource it carries
    /// (for presence: `{"id", "availability", "activity", ...}`).
    ///
    /// Refuses an unknown certificate id, a `dataKey` that does not unwrap to 32 bytes, a
    /// `dataSignature` that does not match (checked in constant time, before decrypting), bad
    /// padding, and plaintext that is not UTF-8 JSON.
    pub fn decrypt(&self, content: &EncryptedContent) -> Result<Value> {
        let key = self
            .key(&content.encryption_certificate_id)
            .ok_or_else(|| CryptoError::UnknownCertificate {
                cert_id: content.encryption_certificate_id.clone(),
            })?;
        let wrapped = decode("dataKey", &content.data_key)?;
        let symmetric = key
            .decrypt(Oaep::new::<sha1::Sha1>(), &wrapped)
            .map_err(|_| CryptoError::KeyUnwrap)?;
        if symmetric.len() != SYMMETRIC_KEY_LEN {
            return Err(CryptoError::SymmetricKeyLength {
                len: symmetric.len(),
            });
        }
        let data = decode("data", &content.data)?;
        let signature = decode("dataSignature", &content.data_signature)?;
        mac(&symmetric)?
            .chain_update(&data)
            .verify_slice(&signature)
            .map_err(|_| CryptoError::SignatureMismatch)?;
        let plaintext = Aes256CbcDec::new_from_slices(&symmetric, &symmetric[..IV_LEN])
            .map_err(|_| CryptoError::Decrypt)?
            .decrypt_padded_vec_mut::<Pkcs7>(&data)
            .map_err(|_| CryptoError::Decrypt)?;
        serde_json::from_slice(&plaintext).map_err(|e| CryptoError::NotJson {
            line: e.line(),
            column: e.column(),
        })
    }

    fn key(&self, cert_id: &str) -> Option<&RsaPrivateKey> {
        self.keys
            .iter()
            .find(|(id, _)| id == cert_id)
            .map(|(_, key)| key)
    }
}

impl fmt::Debug for DecryptionKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DecryptionKeys")
            .field(
                "certificate_ids",
                &self.certificate_ids().collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// Seals `payload` for a subscription exactly as Graph does for a rich notification: a random
/// 32-byte key, AES-256-CBC/PKCS#7 with IV = key[..16], HMAC-SHA256 of the ciphertext, and the key
/// wrapped with RSA-OAEP(SHA-1) for `public_key_pem` (SPKI `PUBLIC KEY` or PKCS#1
/// `RSA PUBLIC KEY`). `cert_id` and `thumbprint` are copied into the result.
///
/// For the Teams simulator and tests; the inverse of [`DecryptionKeys::decrypt`].
pub fn encrypt_for_subscription(
    cert_id: &str,
    public_key_pem: &str,
    thumbprint: &str,
    payload: &Value,
) -> Result<EncryptedContent> {
    let public = RsaPublicKey::from_public_key_pem(public_key_pem)
        .or_else(|_| RsaPublicKey::from_pkcs1_pem(public_key_pem))
        .map_err(|_| CryptoError::InvalidPublicKey {
            cert_id: cert_id.to_owned(),
        })?;
    let plaintext = serde_json::to_vec(payload)
        .map_err(|_| CryptoError::Encrypt("payload does not serialise"))?;

    let mut symmetric = [0_u8; SYMMETRIC_KEY_LEN];
    OsRng.fill_bytes(&mut symmetric);
    let data = Aes256CbcEnc::new_from_slices(&symmetric, &symmetric[..IV_LEN])
        .map_err(|_| CryptoError::Encrypt("bad AES key or IV length"))?
        .encrypt_padded_vec_mut::<Pkcs7>(&plaintext);
    let signature = mac(&symmetric)?.chain_update(&data).finalize().into_bytes();
    let wrapped = public
        .encrypt(&mut OsRng, Oaep::new::<sha1::Sha1>(), &symmetric)
        .map_err(|_| CryptoError::Encrypt("RSA-OAEP encryption of the key failed"))?;
    symmetric.fill(0);

    Ok(EncryptedContent {
        data: BASE64.encode(&data),
        data_key: BASE64.encode(&wrapped),
        data_signature: BASE64.encode(signature),
        encryption_certificate_id: cert_id.to_owned(),
        encryption_certificate_thumbprint: thumbprint.to_owned(),
    })
}

fn decode(field: &'static str, value: &str) -> Result<Vec<u8>> {
    BASE64
        .decode(value.trim())
        .map_err(|source| CryptoError::Base64 { field, source })
}

fn mac(key: &[u8]) -> Result<HmacSha256> {
    // HMAC accepts keys of any length; the error arm is unreachable in practice.
    <HmacSha256 as Mac>::new_from_slice(key).map_err(|_| CryptoError::Encrypt("bad HMAC key"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_PEM: &str = include_str!("../../../fixtures/entra/test-only-key.pem");

    #[test]
    fn debug_shows_certificate_ids_but_no_key_material() {
        let keys = DecryptionKeys::from_pem("cert-1", KEY_PEM).expect("key parses");
        let debug = format!("{keys:?}");
        assert!(debug.contains("cert-1"), "{debug}");
        assert!(!debug.contains("BigUint"), "{debug}");
        assert!(debug.len() < 100, "{debug}");
    }

    #[test]
    fn a_non_pem_private_key_is_refused_without_echoing_it() {
        let error = DecryptionKeys::from_pem("cert-1", "not a key: hunter2").expect_err("refused");
        assert!(!error.to_string().contains("hunter2"));
    }

    #[test]
    fn the_same_certificate_id_cannot_be_added_twice() {
        let mut keys = DecryptionKeys::from_pem("cert-1", KEY_PEM).expect("key parses");
        let error = keys.add_pem("cert-1", KEY_PEM).expect_err("refused");
        assert!(matches!(error, CryptoError::DuplicateCertificateId { .. }));
    }
}
