//! The certificate credential: loading PEMs, certificate thumbprints, and the client assertion
//! JWT that proves possession of the private key.
//!
//! Entra's rules (certificate-credentials page): header `alg` PS256 with `x5t#S256` (base64url
//! SHA-256 of the certificate DER), or the legacy RS256 with `x5t` (SHA-1); claims `aud` = the
//! token URL, `iss` = `sub` = client id, a fresh `jti`, `nbf`/`iat` = now, `exp` = now + 5 min.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha1::Sha1;
use sha2::{Digest, Sha256};
use x509_cert::der::Decode as _;
use x509_cert::spki::ObjectIdentifier;

use crate::config::AssertionMode;
use crate::secret::Secret;

/// How long a client assertion is valid.
pub const ASSERTION_LIFETIME: Duration = Duration::from_secs(5 * 60);

const RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");

/// The certificate credential cannot be used. Messages name files and fields, never key
/// material.
#[derive(Clone, Debug, thiserror::Error)]
pub enum CredentialError {
    /// The certificate file could not be read.
    #[error("cannot read the certificate file {path}")]
    ReadCertificate {
        /// The file's path (a certificate is public, so its path may be shown).
        path: PathBuf,
        /// The I/O failure.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// The private key file could not be read. Its path is not shown: the value might have been
    /// key material that was mistaken for a path.
    #[error("cannot read the private key file named by private_key_pem")]
    ReadPrivateKey {
        /// The I/O failure.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// The certificate is not a PEM X.509 certificate.
    #[error("certificate_pem is not a PEM X.509 certificate: {reason}")]
    InvalidCertificate {
        /// What is wrong.
        reason: String,
    },
    /// The certificate's public key is not RSA (Entra client assertions here are RSA only).
    #[error("the certificate's public key is not an RSA key")]
    NotRsaCertificate,
    /// The private key is not an unencrypted RSA key in PEM.
    #[error(
        "private_key_pem is not an unencrypted RSA private key in PEM (PKCS#8 `BEGIN PRIVATE KEY` or PKCS#1 `BEGIN RSA PRIVATE KEY`)"
    )]
    InvalidPrivateKey,
    /// The private key and the certificate are not a pair.
    #[error("the private key does not belong to the certificate")]
    KeyDoesNotMatchCertificate,
    /// Signing the client assertion failed.
    #[error("cannot sign the client assertion")]
    Signing {
        /// The signing failure (it carries no key material).
        #[source]
        source: jsonwebtoken::errors::Error,
    },
}

/// Which PEM a value or file is expected to hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PemKind {
    Certificate,
    PrivateKey,
}

/// Reads a PEM file; the error names the path only for a certificate.
pub(crate) fn read_pem_file(path: &Path, kind: PemKind) -> Result<String, CredentialError> {
    std::fs::read_to_string(path).map_err(|e| match kind {
        PemKind::Certificate => CredentialError::ReadCertificate {
            path: path.to_owned(),
            source: Arc::new(e),
        },
        PemKind::PrivateKey => CredentialError::ReadPrivateKey {
            source: Arc::new(e),
        },
    })
}

/// A config value that is either inline PEM text or the path of a PEM file.
pub(crate) fn resolve_pem(value: &str, kind: PemKind) -> Result<String, CredentialError> {
    if value.trim_start().starts_with("-----BEGIN") {
        Ok(value.to_owned())
    } else {
        read_pem_file(Path::new(value.trim()), kind)
    }
}

/// The first PEM block with one of `labels`, as (label, the block's text from BEGIN to END).
fn find_pem_block<'a>(text: &'a str, labels: &[&'a str]) -> Option<(&'a str, &'a str)> {
    let mut search_from = 0;
    while let Some(offset) = text[search_from..].find("-----BEGIN ") {
        let start = search_from + offset;
        let label_start = start + "-----BEGIN ".len();
        let label_len = text[label_start..].find("-----")?;
        let label = &text[label_start..label_start + label_len];
        let end_marker = format!("-----END {label}-----");
        let end = label_start + text[label_start..].find(&end_marker)? + end_marker.len();
        if labels.contains(&label) {
            return Some((label, &text[start..end]));
        }
        search_from = end;
    }
    None
}

/// The DER bytes inside a PEM block found by [`find_pem_block`].
fn pem_block_der(block: &str) -> Option<Vec<u8>> {
    let body: String = block
        .lines()
        .filter(|line| !line.starts_with("-----"))
        .flat_map(|line| line.chars())
        .filter(|c| !c.is_whitespace())
        .collect();
    STANDARD.decode(body).ok()
}

/// A parsed X.509 certificate: its thumbprints and RSA public key.
#[derive(Clone)]
pub(crate) struct CertificateInfo {
    sha1_thumbprint: [u8; 20],
    x5t: String,
    x5t_s256: String,
    /// PKCS#1 `RSAPublicKey` DER, as `DecodingKey::from_rsa_der` wants it.
    public_key_der: Vec<u8>,
}

impl CertificateInfo {
    /// Parses the first `CERTIFICATE` block of `pem`.
    pub(crate) fn from_pem(pem: &str) -> Result<Self, CredentialError> {
        let invalid = |reason: &str| CredentialError::InvalidCertificate {
            reason: reason.to_owned(),
        };
        let (_, block) = find_pem_block(pem, &["CERTIFICATE"])
            .ok_or_else(|| invalid("no -----BEGIN CERTIFICATE----- block"))?;
        let der = pem_block_der(block).ok_or_else(|| invalid("the PEM body is not base64"))?;
        let certificate = x509_cert::Certificate::from_der(&der)
            .map_err(|e| invalid(&format!("not a DER X.509 certificate ({e})")))?;
        let spki = &certificate.tbs_certificate.subject_public_key_info;
        if spki.algorithm.oid != RSA_ENCRYPTION {
            return Err(CredentialError::NotRsaCertificate);
        }
        let public_key_der = spki
            .subject_public_key
            .as_bytes()
            .ok_or_else(|| invalid("the public key bit string is not byte-aligned"))?
            .to_vec();
        let sha1_thumbprint: [u8; 20] = Sha1::digest(&der).into();
        Ok(Self {
            sha1_thumbprint,
            x5t: URL_SAFE_NO_PAD.encode(sha1_thumbprint),
            x5t_s256: URL_SAFE_NO_PAD.encode(Sha256::digest(&der)),
            public_key_der,
        })
    }

    /// `x5t`: base64url SHA-1 thumbprint of the DER.
    pub(crate) fn x5t(&self) -> &str {
        &self.x5t
    }

    /// `x5t#S256`: base64url SHA-256 thumbprint of the DER.
    pub(crate) fn x5t_s256(&self) -> &str {
        &self.x5t_s256
    }

    /// The SHA-1 thumbprint in upper-case hex, as the Azure portal shows it.
    pub(crate) fn sha1_thumbprint_hex(&self) -> String {
        self.sha1_thumbprint
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect()
    }

    /// The key that verifies signatures made with the certificate's private key.
    pub(crate) fn decoding_key(&self) -> DecodingKey {
        DecodingKey::from_rsa_der(&self.public_key_der)
    }
}

impl fmt::Debug for CertificateInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateInfo")
            .field("sha1_thumbprint", &self.sha1_thumbprint_hex())
            .field("x5t#S256", &self.x5t_s256)
            .finish_non_exhaustive()
    }
}

/// The claims of a client assertion.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct AssertionClaims {
    pub(crate) aud: String,
    pub(crate) iss: String,
    pub(crate) sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) jti: Option<String>,
    pub(crate) nbf: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) iat: Option<u64>,
    pub(crate) exp: u64,
}

impl AssertionClaims {
    /// Claims for `client_id` at `now` (seconds since the Unix epoch), with a new `jti`.
    pub(crate) fn new(client_id: &str, audience: &str, now: u64) -> Self {
        Self {
            aud: audience.to_owned(),
            iss: client_id.to_owned(),
            sub: client_id.to_owned(),
            jti: Some(uuid::Uuid::new_v4().to_string()),
            nbf: now,
            iat: Some(now),
            exp: now + ASSERTION_LIFETIME.as_secs(),
        }
    }
}

/// Signs client assertions with the certificate's private key.
#[derive(Clone)]
pub(crate) struct AssertionSigner {
    key: EncodingKey,
    mode: AssertionMode,
    certificate: CertificateInfo,
}

impl AssertionSigner {
    /// Parses the key, and proves it pairs with the certificate by signing a probe and checking
    /// it with the certificate's public key, so a mismatch fails at start-up rather than as an
    /// opaque AADSTS700027 from Entra.
    pub(crate) fn new(
        certificate: CertificateInfo,
        private_key_pem: &Secret,
        mode: AssertionMode,
    ) -> Result<Self, CredentialError> {
        let (label, block) = find_pem_block(
            private_key_pem.expose(),
            &["PRIVATE KEY", "RSA PRIVATE KEY", "ENCRYPTED PRIVATE KEY"],
        )
        .ok_or(CredentialError::InvalidPrivateKey)?;
        if label == "ENCRYPTED PRIVATE KEY" {
            return Err(CredentialError::InvalidPrivateKey);
        }
        let key = EncodingKey::from_rsa_pem(block.as_bytes())
            .map_err(|_| CredentialError::InvalidPrivateKey)?;
        let signer = Self {
            key,
            mode,
            certificate,
        };
        signer.check_pair()?;
        Ok(signer)
    }

    fn check_pair(&self) -> Result<(), CredentialError> {
        let probe = AssertionClaims::new("probe", "probe", 0);
        let token = jsonwebtoken::encode(&self.header(), &probe, &self.key)
            .map_err(|_| CredentialError::InvalidPrivateKey)?;
        let mut validation = Validation::new(self.algorithm());
        validation.validate_exp = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        jsonwebtoken::decode::<AssertionClaims>(
            &token,
            &self.certificate.decoding_key(),
            &validation,
        )
        .map(|_| ())
        .map_err(|_| CredentialError::KeyDoesNotMatchCertificate)
    }

    fn algorithm(&self) -> Algorithm {
        match self.mode {
            AssertionMode::Ps256 => Algorithm::PS256,
            AssertionMode::Rs256 => Algorithm::RS256,
        }
    }

    /// The JOSE header: `typ: JWT`, the algorithm and the matching thumbprint.
    pub(crate) fn header(&self) -> Header {
        let mut header = Header::new(self.algorithm());
        match self.mode {
            AssertionMode::Ps256 => header.x5t_s256 = Some(self.certificate.x5t_s256().to_owned()),
            AssertionMode::Rs256 => header.x5t = Some(self.certificate.x5t().to_owned()),
        }
        header
    }

    /// A fresh client assertion for `client_id`, addressed to `token_url`, valid from now.
    pub(crate) fn sign(&self, client_id: &str, token_url: &str) -> Result<String, CredentialError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        self.sign_claims(
            &self.header(),
            &AssertionClaims::new(client_id, token_url, now),
        )
    }

    /// Signs arbitrary header and claims (tests use it to build wrong assertions).
    pub(crate) fn sign_claims(
        &self,
        header: &Header,
        claims: &AssertionClaims,
    ) -> Result<String, CredentialError> {
        jsonwebtoken::encode(header, claims, &self.key)
            .map_err(|source| CredentialError::Signing { source })
    }

    pub(crate) fn mode(&self) -> AssertionMode {
        self.mode
    }

    pub(crate) fn certificate(&self) -> &CertificateInfo {
        &self.certificate
    }
}

impl fmt::Debug for AssertionSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AssertionSigner")
            .field("mode", &self.mode)
            .field("certificate", &self.certificate)
            .field("key", &"***")
            .finish()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use x509_cert::der::asn1::OctetString;
    use x509_cert::der::{Reader as _, SliceReader};
    use x509_cert::spki::AlgorithmIdentifierOwned;

    pub(crate) const CERT_PEM: &str = include_str!("../../../fixtures/entra/test-only-cert.pem");
    pub(crate) const KEY_PEM: &str = include_str!("../../../fixtures/entra/test-only-key.pem");
    /// `openssl x509 -outform der | openssl dgst -sha256 -binary | base64url`
    const FIXTURE_X5T_S256: &str = "oEidlgPvgPtWqk_GZ75Ywma9u1JcGVXxBRgtXojjNMo";
    /// Same with SHA-1.
    const FIXTURE_X5T: &str = "wEwJYAk7TqtUjHJGJ5QknZZZg2w";

    pub(crate) fn signer(mode: AssertionMode) -> AssertionSigner {
        let certificate = CertificateInfo::from_pem(CERT_PEM).unwrap();
        AssertionSigner::new(certificate, &Secret::new(KEY_PEM), mode).unwrap()
    }

    /// The fixture key re-wrapped as PKCS#1 (`BEGIN RSA PRIVATE KEY`).
    fn pkcs1_key_pem() -> String {
        let (_, block) = find_pem_block(KEY_PEM, &["PRIVATE KEY"]).unwrap();
        let der = pem_block_der(block).unwrap();
        let mut reader = SliceReader::new(&der).unwrap();
        let rsa_key = reader
            .sequence(|r| {
                let _version: u8 = r.decode()?;
                let _algorithm: AlgorithmIdentifierOwned = r.decode()?;
                r.decode::<OctetString>()
            })
            .unwrap();
        let body = STANDARD.encode(rsa_key.as_bytes());
        let lines: Vec<&str> = body
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        format!(
            "-----BEGIN RSA PRIVATE KEY-----\n{}\n-----END RSA PRIVATE KEY-----\n",
            lines.join("\n")
        )
    }

    fn decode(token: &str, alg: Algorithm) -> (Header, AssertionClaims) {
        let certificate = CertificateInfo::from_pem(CERT_PEM).unwrap();
        let mut validation = Validation::new(alg);
        validation.set_audience(&["https://login.example/t/oauth2/v2.0/token"]);
        validation.set_issuer(&["client-1"]);
        let data = jsonwebtoken::decode::<AssertionClaims>(
            token,
            &certificate.decoding_key(),
            &validation,
        )
        .unwrap();
        (data.header, data.claims)
    }

    #[test]
    fn thumbprints_match_openssl() {
        let certificate = CertificateInfo::from_pem(CERT_PEM).unwrap();
        assert_eq!(certificate.x5t_s256(), FIXTURE_X5T_S256);
        assert_eq!(certificate.x5t(), FIXTURE_X5T);
        assert_eq!(
            certificate.sha1_thumbprint_hex(),
            "C04C0960093B4EAB548C72462794249D9659836C"
        );
    }

    #[test]
    fn ps256_assertion_carries_sha256_thumbprint_and_required_claims() {
        let token = signer(AssertionMode::Ps256)
            .sign("client-1", "https://login.example/t/oauth2/v2.0/token")
            .unwrap();
        let (header, claims) = decode(&token, Algorithm::PS256);
        assert_eq!(header.alg, Algorithm::PS256);
        assert_eq!(header.typ.as_deref(), Some("JWT"));
        assert_eq!(header.x5t_s256.as_deref(), Some(FIXTURE_X5T_S256));
        assert_eq!(header.x5t, None);
        assert_eq!(claims.iss, "client-1");
        assert_eq!(claims.sub, "client-1");
        assert_eq!(claims.exp - claims.nbf, 300);
        assert_eq!(claims.iat, Some(claims.nbf));
        assert!(uuid::Uuid::parse_str(claims.jti.as_deref().unwrap()).is_ok());
        let raw_header = URL_SAFE_NO_PAD
            .decode(token.split('.').next().unwrap())
            .unwrap();
        assert!(String::from_utf8(raw_header)
            .unwrap()
            .contains("\"x5t#S256\""));
    }

    #[test]
    fn rs256_assertion_carries_sha1_thumbprint() {
        let token = signer(AssertionMode::Rs256)
            .sign("client-1", "https://login.example/t/oauth2/v2.0/token")
            .unwrap();
        let (header, _) = decode(&token, Algorithm::RS256);
        assert_eq!(header.alg, Algorithm::RS256);
        assert_eq!(header.x5t.as_deref(), Some(FIXTURE_X5T));
        assert_eq!(header.x5t_s256, None);
    }

    #[test]
    fn each_assertion_has_a_new_jti() {
        let signer = signer(AssertionMode::Ps256);
        let a = decode(
            &signer
                .sign("client-1", "https://login.example/t/oauth2/v2.0/token")
                .unwrap(),
            Algorithm::PS256,
        );
        let b = decode(
            &signer
                .sign("client-1", "https://login.example/t/oauth2/v2.0/token")
                .unwrap(),
            Algorithm::PS256,
        );
        assert_ne!(a.1.jti, b.1.jti);
    }

    #[test]
    fn pkcs1_private_key_is_accepted() {
        let certificate = CertificateInfo::from_pem(CERT_PEM).unwrap();
        let pem = pkcs1_key_pem();
        assert!(pem.starts_with("-----BEGIN RSA PRIVATE KEY-----"));
        AssertionSigner::new(certificate, &Secret::new(pem), AssertionMode::Ps256).unwrap();
    }

    #[test]
    fn combined_pem_file_is_accepted_for_both_roles() {
        let combined = format!("{KEY_PEM}\n{CERT_PEM}");
        let certificate = CertificateInfo::from_pem(&combined).unwrap();
        AssertionSigner::new(certificate, &Secret::new(combined), AssertionMode::Ps256).unwrap();
    }

    #[test]
    fn garbage_private_key_is_rejected_without_echoing_it() {
        let certificate = CertificateInfo::from_pem(CERT_PEM).unwrap();
        let bogus = "-----BEGIN PRIVATE KEY-----\nTk9UQUtFWXNlY3JldG1hdGVyaWFs\n-----END PRIVATE KEY-----\n";
        let err = AssertionSigner::new(certificate, &Secret::new(bogus), AssertionMode::Ps256)
            .unwrap_err();
        assert!(matches!(err, CredentialError::InvalidPrivateKey));
        let shown = format!("{err} {err:?}");
        assert!(!shown.contains("Tk9UQUtF"), "{shown}");
    }

    #[test]
    fn encrypted_private_key_is_rejected() {
        let certificate = CertificateInfo::from_pem(CERT_PEM).unwrap();
        let encrypted =
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n";
        let err = AssertionSigner::new(certificate, &Secret::new(encrypted), AssertionMode::Ps256)
            .unwrap_err();
        assert!(matches!(err, CredentialError::InvalidPrivateKey));
    }

    #[test]
    fn certificate_without_pem_block_is_rejected() {
        let err = CertificateInfo::from_pem("hello").unwrap_err();
        assert!(err.to_string().contains("BEGIN CERTIFICATE"), "{err}");
        let err = CertificateInfo::from_pem(
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----",
        )
        .unwrap_err();
        assert!(matches!(err, CredentialError::InvalidCertificate { .. }));
    }

    #[test]
    fn signer_debug_hides_the_key() {
        let shown = format!("{:?}", signer(AssertionMode::Ps256));
        assert!(shown.contains("key: \"***\""), "{shown}");
        assert!(!shown.contains("PRIVATE"), "{shown}");
    }

    #[test]
    fn resolve_pem_takes_inline_text_or_a_path() {
        assert_eq!(
            resolve_pem(CERT_PEM, PemKind::Certificate).unwrap(),
            CERT_PEM
        );
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../fixtures/entra/test-only-cert.pem"
        );
        assert_eq!(resolve_pem(path, PemKind::Certificate).unwrap(), CERT_PEM);
    }
}
