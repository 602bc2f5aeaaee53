//! The subscription's `encryptionCertificate`: base64 of an X.509 certificate (DER), from which
//! Graph takes the RSA public key to wrap each notification's key, and whose SHA-1 thumbprint it
//! sends as `encryptionCertificateThumbprint` (graph.md §6.1, §6.4).
//!
//! Only the few DER elements on the way to `subjectPublicKeyInfo` are walked; nothing is
//! verified (Graph does not verify the chain either: self-signed certificates are fine).

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use rsa::pkcs8::{DecodePublicKey, EncodePublicKey, LineEnding};
use rsa::RsaPublicKey;
use sha1::{Digest, Sha1};

/// The parts of an encryption certificate the simulator needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EncryptionCert {
    /// The RSA public key as an SPKI PEM, for `crypto::encrypt_for_subscription`.
    pub public_key_pem: String,
    /// Upper-case hex SHA-1 of the DER.
    pub thumbprint: String,
}

/// Read `encryptionCertificate` (base64 DER; a PEM is accepted too). `None` when it is not an
/// X.509 certificate with an RSA key.
pub(crate) fn parse(value: &str) -> Option<EncryptionCert> {
    let b64: String = value
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .flat_map(|l| l.chars())
        .filter(|c| !c.is_whitespace())
        .collect();
    let der = BASE64.decode(b64).ok()?;
    let spki = subject_public_key_info(&der)?;
    let key = RsaPublicKey::from_public_key_der(spki).ok()?;
    let public_key_pem = key.to_public_key_pem(LineEnding::LF).ok()?;
    let thumbprint = Sha1::digest(&der)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect();
    Some(EncryptionCert {
        public_key_pem,
        thumbprint,
    })
}

/// One DER element.
struct Element<'a> {
    tag: u8,
    /// Header and content.
    whole: &'a [u8],
    content: &'a [u8],
    /// What follows the element.
    rest: &'a [u8],
}

/// The first DER element of `input`.
fn element(input: &[u8]) -> Option<Element<'_>> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    let header = input.len() - rest.len();
    Some(Element {
        tag,
        whole: &input[..header + len],
        content: &rest[..len],
        rest: &rest[len..],
    })
}

/// `Certificate.tbsCertificate.subjectPublicKeyInfo`, as a whole DER element.
fn subject_public_key_info(der: &[u8]) -> Option<&[u8]> {
    const SEQUENCE: u8 = 0x30;
    let cert = element(der).filter(|e| e.tag == SEQUENCE)?;
    let tbs = element(cert.content).filter(|e| e.tag == SEQUENCE)?;
    let mut rest = tbs.content;
    // [0] EXPLICIT version, when present.
    if rest.first() == Some(&0xA0) {
        rest = element(rest)?.rest;
    }
    // serialNumber, signature, issuer, validity, subject.
    for _ in 0..5 {
        rest = element(rest)?.rest;
    }
    element(rest).filter(|e| e.tag == SEQUENCE).map(|e| e.whole)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CERT_PEM: &str = include_str!("../../../../fixtures/entra/test-only-cert.pem");

    #[test]
    fn reads_the_public_key_and_thumbprint_of_the_test_certificate() {
        let cert = parse(CERT_PEM).expect("the fixture parses");
        assert!(cert
            .public_key_pem
            .starts_with("-----BEGIN PUBLIC KEY-----"));
        assert_eq!(cert.thumbprint.len(), 40);
        assert!(cert
            .thumbprint
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_lowercase()));
    }

    #[test]
    fn refuses_what_is_not_a_certificate() {
        assert_eq!(parse("bm90IGEgY2VydA=="), None);
        assert_eq!(parse("%%%"), None);
    }
}
