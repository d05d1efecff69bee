//! Server fingerprints: SHA-256 of the public key, `sha256//BASE64`.
//!
//! The hash covers the certificate's SubjectPublicKeyInfo (the public key
//! and its algorithm), not the whole certificate, as HTTP public key
//! pinning and curl's `--pinnedpubkey sha256//...` do: the same key in a
//! re-issued certificate is the same server. BASE64 is the standard
//! alphabet with padding, 44 characters.

use std::fmt;
use std::str::FromStr;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use rustls::pki_types::CertificateDer;

/// The prefix of the written form.
const PREFIX: &str = "sha256//";

/// A server's identity: SHA-256 of its SubjectPublicKeyInfo.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

/// Why a text is not a fingerprint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a fingerprint (want sha256// and 44 characters of base64, as printed by the server)")]
pub struct BadFingerprint;

impl Fingerprint {
    /// The fingerprint of a DER SubjectPublicKeyInfo.
    pub fn of_spki(spki: &[u8]) -> Fingerprint {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, spki);
        let mut out = [0u8; 32];
        out.copy_from_slice(digest.as_ref());
        Fingerprint(out)
    }

    /// The fingerprint of the key in a DER certificate.
    pub fn of_cert(cert: &CertificateDer<'_>) -> Result<Fingerprint, rustls::Error> {
        let parsed = webpki::EndEntityCert::try_from(cert).map_err(|e| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
                std::sync::Arc::new(e),
            )))
        })?;
        Ok(Fingerprint::of_spki(
            parsed.subject_public_key_info().as_ref(),
        ))
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}{}", STANDARD.encode(self.0))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

impl FromStr for Fingerprint {
    type Err = BadFingerprint;

    fn from_str(text: &str) -> Result<Fingerprint, BadFingerprint> {
        let b64 = text.strip_prefix(PREFIX).ok_or(BadFingerprint)?;
        if b64.len() != 44 {
            return Err(BadFingerprint);
        }
        let bytes = STANDARD.decode(b64).map_err(|_| BadFingerprint)?;
        let bytes: [u8; 32] = bytes.try_into().map_err(|_| BadFingerprint)?;
        Ok(Fingerprint(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_form_round_trips_and_is_curls() {
        let fp = Fingerprint::of_spki(b"spki");
        let text = fp.to_string();
        assert!(
            text.starts_with("sha256//") && text.len() == 8 + 44,
            "{text}"
        );
        assert_eq!(text.parse::<Fingerprint>(), Ok(fp));
        for bad in [
            "",
            "sha256//",
            &text[1..],
            &text.replace("sha256", "sha1"),
            &format!("{text}="),
            "sha256//@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@=",
        ] {
            assert!(bad.parse::<Fingerprint>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_certificate_fingerprint_is_its_keys() {
        let key = rcgen::KeyPair::generate().unwrap();
        let a = rcgen::CertificateParams::new(vec!["a".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let b = rcgen::CertificateParams::new(vec!["b".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let fa = Fingerprint::of_cert(a.der()).unwrap();
        assert_eq!(fa, Fingerprint::of_cert(b.der()).unwrap(), "same key");
        let other = rcgen::KeyPair::generate().unwrap();
        let c = rcgen::CertificateParams::new(vec!["a".into()])
            .unwrap()
            .self_signed(&other)
            .unwrap();
        assert_ne!(fa, Fingerprint::of_cert(c.der()).unwrap());
        assert!(Fingerprint::of_cert(&CertificateDer::from(vec![1, 2, 3])).is_err());
    }
}
