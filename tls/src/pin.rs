//! The client's check of a server's identity: pinned on first use,
//! refused loudly when it changed.
//!
//! A server's certificate is self-signed and names nobody; what is
//! checked is its public key: the fingerprint must be the one pinned for
//! the server's address in the known-servers file, or, for an address not
//! met before, it is pinned once the server has proved in the handshake
//! that it holds the key (the TLS 1.3 CertificateVerify signature checks
//! out). An identity that changed ends the handshake with
//! [`IdentityChanged`], which says what to do about it.

use std::sync::Arc;

use log::info;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};

use crate::known::{KnownServers, Verdict};
use crate::Fingerprint;

/// A server presented another identity than the one pinned for it.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "server {server} presented identity {seen}, but {file} pins {} for it. \
     Nothing was downloaded from it. If its identity changed on purpose (a new \
     --identity on the server), replace its line in {file} with \"{server} {seen}\" \
     and run again; otherwise someone may be between you and the server",
    pinned.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(" or ")
)]
pub struct IdentityChanged {
    pub server: String,
    pub seen: Fingerprint,
    pub pinned: Vec<Fingerprint>,
    pub file: String,
}

/// The verifier for one server address.
#[derive(Debug)]
pub struct PinnedServer {
    /// The address as given to `--server`: the key in the known servers.
    server: String,
    known: Arc<KnownServers>,
    provider: Arc<CryptoProvider>,
}

impl std::fmt::Debug for KnownServers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KnownServers({})", self.path().display())
    }
}

impl PinnedServer {
    pub fn new(server: &str, known: Arc<KnownServers>) -> PinnedServer {
        PinnedServer {
            server: server.to_owned(),
            known,
            provider: crate::provider(),
        }
    }

    fn changed(&self, seen: Fingerprint, pinned: Vec<Fingerprint>) -> rustls::Error {
        let changed = IdentityChanged {
            server: self.server.clone(),
            seen,
            pinned,
            file: self.known.path().display().to_string(),
        };
        rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
            Arc::new(changed),
        )))
    }

    /// The client configuration for connections to this server: TLS 1.3
    /// only, this verifier, ALPN `alpn`.
    pub fn client_config(self: Arc<Self>, alpn: &[u8]) -> Arc<ClientConfig> {
        let provider = Arc::clone(&self.provider);
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("the provider supports TLS 1.3")
            .dangerous()
            .with_custom_certificate_verifier(self)
            .with_no_client_auth();
        config.alpn_protocols = vec![alpn.to_vec()];
        Arc::new(config)
    }
}

/// The [`IdentityChanged`] inside a handshake error, if that is what it is.
pub fn identity_changed(e: &rustls::Error) -> Option<&IdentityChanged> {
    match e {
        rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other)) => {
            other.0.downcast_ref::<IdentityChanged>()
        }
        _ => None,
    }
}

impl ServerCertVerifier for PinnedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let seen = Fingerprint::of_cert(end_entity)?;
        match self.known.check(&self.server, &seen) {
            Verdict::Known | Verdict::FirstContact => Ok(ServerCertVerified::assertion()),
            Verdict::Changed { pinned } => Err(self.changed(seen, pinned)),
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let valid = rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )?;
        // The server holds the key: pin it if this is the first contact.
        let seen = Fingerprint::of_cert(cert)?;
        match self.known.pin(&self.server, seen) {
            Ok(false) => {}
            Ok(true) => {
                info!(
                    "server {}: first contact; pinned its identity {seen} in {}",
                    self.server,
                    self.known.path().display()
                );
                if let Err(e) = self.known.save(&self.server, &seen) {
                    log::warn!("{e}; the pin holds for this run only");
                }
            }
            Err(Verdict::Changed { pinned }) => return Err(self.changed(seen, pinned)),
            Err(_) => {}
        }
        Ok(valid)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;
    use std::io::{Read, Write};

    /// A TLS handshake in memory between `server` and a client for
    /// `addr` that pins in `known`.
    fn handshake(
        server: &Identity,
        addr: &str,
        known: &Arc<KnownServers>,
    ) -> Result<(), rustls::Error> {
        let sc = server.server_config(&[crate::ALPN_FASTDL])?;
        let cc =
            Arc::new(PinnedServer::new(addr, Arc::clone(known))).client_config(crate::ALPN_FASTDL);
        let mut s = rustls::ServerConnection::new(sc)?;
        let mut c = rustls::ClientConnection::new(cc, ServerName::try_from("127.0.0.1").unwrap())?;
        let mut buf = Vec::new();
        for _ in 0..8 {
            buf.clear();
            while c.wants_write() {
                c.write_tls(&mut buf).unwrap();
            }
            if !buf.is_empty() {
                s.read_tls(&mut &buf[..]).unwrap();
                s.process_new_packets()?;
            }
            buf.clear();
            while s.wants_write() {
                s.write_tls(&mut buf).unwrap();
            }
            if !buf.is_empty() {
                c.read_tls(&mut &buf[..]).unwrap();
                c.process_new_packets()?;
            }
        }
        assert!(!c.is_handshaking());
        c.writer().write_all(b"FASTDL 2\n").unwrap();
        buf.clear();
        c.write_tls(&mut buf).unwrap();
        s.read_tls(&mut &buf[..]).unwrap();
        s.process_new_packets()?;
        let mut got = [0u8; 9];
        s.reader().read_exact(&mut got).unwrap();
        assert_eq!(&got, b"FASTDL 2\n");
        Ok(())
    }

    #[test]
    fn pinned_on_first_contact_and_refused_when_changed() {
        let dir = tempfile::tempdir().unwrap();
        let (server, _) = Identity::load_or_create(&dir.path().join("s.pem")).unwrap();
        let (impostor, _) = Identity::load_or_create(&dir.path().join("i.pem")).unwrap();
        let path = dir.path().join("known");
        let known = Arc::new(KnownServers::load(&path).unwrap());
        handshake(&server, "127.0.0.1:1337", &known).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, format!("127.0.0.1:1337 {}\n", server.fingerprint));
        handshake(&server, "127.0.0.1:1337", &known).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), text, "pinned once");

        let err = handshake(&impostor, "127.0.0.1:1337", &known).unwrap_err();
        let changed = identity_changed(&err).expect("an identity change");
        assert_eq!(changed.seen, impostor.fingerprint);
        assert_eq!(changed.pinned, vec![server.fingerprint]);
        let message = changed.to_string();
        assert!(
            message.contains("127.0.0.1:1337") && message.contains(&path.display().to_string())
        );
        // Another address is another server: pinned on its own.
        handshake(&impostor, "127.0.0.1:1338", &known).unwrap();
        // A fresh run reads what was pinned.
        let again = Arc::new(KnownServers::load(&path).unwrap());
        assert!(handshake(&impostor, "127.0.0.1:1337", &again).is_err());
    }
}
