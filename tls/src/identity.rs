//! The server's identity: an ECDSA P-256 key pair and a self-signed
//! certificate for it, made on first start and kept in one PEM file (the
//! key, then the certificate), created with mode 0600.
//!
//! The certificate is only a carrier for the public key: clients pin the
//! key's fingerprint, not a name or a CA (so it names nobody in
//! particular and never expires in practice). P-256 because every TLS
//! stack a user may point at the server (curl, browsers, aria2) speaks it.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;

use crate::Fingerprint;

/// A server identity, loaded or made.
pub struct Identity {
    pub cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
    /// What clients pin.
    pub fingerprint: Fingerprint,
}

/// Whether [`Identity::load_or_create`] found the identity or made it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Loaded,
    Created,
}

/// Why an identity could not be had.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot read identity file {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot create identity file {}: {source}", path.display())]
    Create { path: PathBuf, source: io::Error },
    #[error("identity file {} is not a fastdl identity ({why}); move it away to make a new one, or pass another --identity", path.display())]
    Bad { path: PathBuf, why: String },
    #[error("cannot make a key pair: {0}")]
    Generate(String),
}

impl Identity {
    /// Loads the identity in `path`, or makes one there (and the folders
    /// on the way, mode 0700) if there is none.
    pub fn load_or_create(path: &Path) -> Result<(Identity, Origin), IdentityError> {
        match fs::read(path) {
            Ok(pem) => Ok((Identity::parse(path, &pem)?, Origin::Loaded)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Identity::create(path),
            Err(source) => Err(IdentityError::Read {
                path: path.into(),
                source,
            }),
        }
    }

    /// Whether the file at `path` can be read by others than its owner.
    pub fn too_open(path: &Path) -> bool {
        fs::metadata(path).is_ok_and(|m| m.mode() & 0o077 != 0)
    }

    fn parse(path: &Path, pem: &[u8]) -> Result<Identity, IdentityError> {
        let bad = |why: &str| IdentityError::Bad {
            path: path.into(),
            why: why.into(),
        };
        let key = PrivateKeyDer::from_pem_slice(pem).map_err(|_| bad("no private key"))?;
        let cert = CertificateDer::pem_slice_iter(pem)
            .next()
            .ok_or_else(|| bad("no certificate"))?
            .map_err(|_| bad("unreadable certificate"))?;
        let fingerprint =
            Fingerprint::of_cert(&cert).map_err(|e| bad(&format!("certificate: {e}")))?;
        let identity = Identity {
            cert,
            key,
            fingerprint,
        };
        // The key must be the certificate's: a configuration test catches
        // a file put together from two identities.
        identity
            .server_config(&[])
            .map_err(|e| bad(&format!("key and certificate do not belong together: {e}")))?;
        Ok(identity)
    }

    fn create(path: &Path) -> Result<(Identity, Origin), IdentityError> {
        let key = rcgen::KeyPair::generate().map_err(|e| IdentityError::Generate(e.to_string()))?;
        let mut params = rcgen::CertificateParams::new(vec!["fastdl-server".to_owned()])
            .map_err(|e| IdentityError::Generate(e.to_string()))?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "fastdl-server");
        let cert = params
            .self_signed(&key)
            .map_err(|e| IdentityError::Generate(e.to_string()))?;
        let pem = format!("{}{}", key.serialize_pem(), cert.pem());
        let create = |source| IdentityError::Create {
            path: path.into(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.exists() {
                fs::create_dir_all(dir).map_err(create)?;
                let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
            }
        }
        // Written whole beside it, then linked into place: another server
        // starting at the same moment either wins (and its identity is
        // loaded) or loses, never finds half a file.
        let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
        let written = (|| {
            let mut file = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            file.write_all(pem.as_bytes())?;
            file.sync_all()
        })();
        let linked = written.and_then(|()| fs::hard_link(&tmp, path));
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => Ok((Identity::parse(path, pem.as_bytes())?, Origin::Created)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                let pem = fs::read(path).map_err(|source| IdentityError::Read {
                    path: path.into(),
                    source,
                })?;
                Ok((Identity::parse(path, &pem)?, Origin::Loaded))
            }
            Err(e) => Err(create(e)),
        }
    }

    /// The server's TLS configuration for this identity: TLS 1.3 only,
    /// the server's cipher order, and `alpn` as the protocols offered.
    pub fn server_config(&self, alpn: &[&[u8]]) -> Result<Arc<ServerConfig>, rustls::Error> {
        let mut config = ServerConfig::builder_with_provider(crate::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_no_client_auth()
            .with_single_cert(vec![self.cert.clone()], self.key.clone_key())?;
        config.ignore_client_order = true;
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(config))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_once_private_and_loaded_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new/folder/identity.pem");
        let (made, origin) = Identity::load_or_create(&path).unwrap();
        assert_eq!(origin, Origin::Created);
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        assert!(!Identity::too_open(&path));
        let (loaded, origin) = Identity::load_or_create(&path).unwrap();
        assert_eq!(origin, Origin::Loaded);
        assert_eq!(loaded.fingerprint, made.fingerprint);
        assert!(loaded.server_config(&[crate::ALPN_FASTDL]).is_ok());
        let names: Vec<_> = fs::read_dir(path.parent().unwrap()).unwrap().collect();
        assert_eq!(names.len(), 1, "no temporary file left");
    }

    #[test]
    fn a_file_that_is_not_an_identity_is_refused_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("id.pem");
        fs::write(&path, "hello").unwrap();
        let err = Identity::load_or_create(&path).err().unwrap();
        assert!(err.to_string().contains("not a fastdl identity"), "{err}");
        // Two identities' halves.
        let (a, _) = Identity::load_or_create(&dir.path().join("a.pem")).unwrap();
        let _ = a;
        let a_pem = fs::read_to_string(dir.path().join("a.pem")).unwrap();
        Identity::load_or_create(&dir.path().join("b.pem")).unwrap();
        let b_pem = fs::read_to_string(dir.path().join("b.pem")).unwrap();
        let key_a = &a_pem[..a_pem.find("-----BEGIN CERTIFICATE").unwrap()];
        let cert_b = &b_pem[b_pem.find("-----BEGIN CERTIFICATE").unwrap()..];
        fs::write(&path, format!("{key_a}{cert_b}")).unwrap();
        let err = Identity::load_or_create(&path).err().unwrap();
        assert!(err.to_string().contains("do not belong together"), "{err}");
    }
}
