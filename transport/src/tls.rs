//! TLS identities: every node and client of a cluster presents a certificate
//! signed by the cluster's certificate authority, and checks the peer's.
//!
//! Production clusters load their identity from PEM files made by their own
//! PKI ([`Identity::from_pem`]). For tests, examples and development,
//! [`dev_identity`] keeps a throw-away CA in a directory and issues node
//! certificates from it, so that several processes sharing the directory
//! trust each other.

use std::fs;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A TLS setup failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct TlsError(pub(crate) String);

/// What a process presents and trusts: the cluster CA's certificate, its own
/// certificate (signed by that CA) and its private key.
pub struct Identity {
    pub(crate) ca: CertificateDer<'static>,
    pub(crate) chain: Vec<CertificateDer<'static>>,
    pub(crate) key: PrivateKeyDer<'static>,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Identity { ca: self.ca.clone(), chain: self.chain.clone(), key: self.key.clone_key() }
    }
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity").field("chain", &self.chain.len()).finish_non_exhaustive()
    }
}

impl Identity {
    /// An identity from PEM text: the CA certificate, this process's
    /// certificate chain, and its private key.
    pub fn from_pem(ca: &str, chain: &str, key: &str) -> Result<Self, TlsError> {
        let ca = CertificateDer::from_pem_slice(ca.as_bytes())
            .map_err(|e| TlsError(format!("the CA certificate is not a PEM certificate: {e}")))?;
        let chain = CertificateDer::pem_slice_iter(chain.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError(format!("the certificate chain is not PEM: {e}")))?;
        if chain.is_empty() {
            return Err(TlsError("the certificate chain holds no certificate".into()));
        }
        let key = PrivateKeyDer::from_pem_slice(key.as_bytes())
            .map_err(|e| TlsError(format!("the private key is not a PEM private key: {e}")))?;
        Ok(Identity { ca, chain, key })
    }

    /// Whether this identity's certificate names node `name` (a DNS subject
    /// alternative name): only then can it serve as that node, since the
    /// other processes check the name at every connection.
    pub fn names(&self, name: &str) -> bool {
        let Some(leaf) = self.chain.first() else { return false };
        let Ok(name) = rustls::pki_types::ServerName::try_from(name) else { return false };
        webpki::EndEntityCert::try_from(leaf)
            .is_ok_and(|cert| cert.verify_is_valid_for_subject_name(&name).is_ok())
    }

    /// An identity from three PEM files.
    pub fn from_pem_files(ca: &Path, chain: &Path, key: &Path) -> Result<Self, TlsError> {
        let read = |path: &Path| {
            fs::read_to_string(path).map_err(|e| TlsError(format!("cannot read {}: {e}", path.display())))
        };
        Identity::from_pem(&read(ca)?, &read(chain)?, &read(key)?)
    }
}

/// A development identity for `name`, issued by the throw-away CA kept in
/// `dir` (created on first use). Every process that uses the same `dir`
/// trusts every other; nothing else does.
///
/// **For development and tests only.** Anyone who can read `dir` can mint
/// identities of the cluster: the CA's private key (`ca.key.pem`) is written
/// readable by its owner only (mode 0600), and the directory should be too.
/// In production, issue certificates from a CA whose key stays offline and
/// load them with [`Identity::from_pem_files`].
pub fn dev_identity(dir: &Path, name: &str) -> Result<Identity, TlsError> {
    fs::create_dir_all(dir).map_err(|e| TlsError(format!("cannot create {}: {e}", dir.display())))?;
    let (ca_pem, ca_key) = dev_ca(dir)?;
    let key = KeyPair::generate().map_err(rcgen_error)?;
    let mut params = CertificateParams::new(vec![name.to_string()]).map_err(rcgen_error)?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.extended_key_usages =
        vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    let issuer = ca_params().self_signed(&ca_key).map_err(rcgen_error)?;
    let cert = params.signed_by(&key, &issuer, &ca_key).map_err(rcgen_error)?;
    Identity::from_pem(&ca_pem, &cert.pem(), &key.serialize_pem())
}

/// A certificate for `name` from a CA that no cluster trusts: for testing
/// that strangers are refused.
pub fn stranger_identity(name: &str) -> Result<Identity, TlsError> {
    let dir = std::env::temp_dir().join(format!("stead-stranger-ca-{}-{name}", std::process::id()));
    let identity = dev_identity(&dir, name);
    let _ = fs::remove_dir_all(&dir);
    identity
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, "stead development CA");
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
}

/// The CA in `dir`: its certificate (PEM) and key, created if missing.
fn dev_ca(dir: &Path) -> Result<(String, KeyPair), TlsError> {
    let cert_path = dir.join("ca.pem");
    let key_path = dir.join("ca.key.pem");
    if let (Ok(cert), Ok(key)) = (fs::read_to_string(&cert_path), fs::read_to_string(&key_path)) {
        return Ok((cert, KeyPair::from_pem(&key).map_err(rcgen_error)?));
    }
    let key = KeyPair::generate().map_err(rcgen_error)?;
    let cert = ca_params().self_signed(&key).map_err(rcgen_error)?;
    // Write the key first and the certificate last: the certificate's
    // presence means the pair is complete. A racing process that loses
    // `create_new` reads the winner's files instead.
    let staged = dir.join(format!("ca.{}.tmp", std::process::id()));
    write_new(&staged, &key.serialize_pem(), PRIVATE)?;
    match fs::hard_link(&staged, &key_path) {
        Ok(()) => {
            let _ = fs::remove_file(&staged);
            write_new(&cert_path, &cert.pem(), PUBLIC)?;
            Ok((cert.pem(), key))
        }
        Err(_) => {
            let _ = fs::remove_file(&staged);
            for _ in 0..100 {
                if let (Ok(cert), Ok(key)) = (fs::read_to_string(&cert_path), fs::read_to_string(&key_path)) {
                    return Ok((cert, KeyPair::from_pem(&key).map_err(rcgen_error)?));
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(TlsError(format!(
                "the development CA in {} is incomplete; delete the directory",
                dir.display()
            )))
        }
    }
}

/// File modes: a private key is readable by its owner only; a certificate
/// by everyone.
const PRIVATE: u32 = 0o600;
const PUBLIC: u32 = 0o644;

/// Creates `path` (which must not exist) with `text`, with permissions
/// `mode` from the start (on Unix), so that a key is never readable by
/// others, not even for a moment.
fn write_new(path: &Path, text: &str, mode: u32) -> Result<(), TlsError> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    #[cfg(not(unix))]
    let _ = mode;
    let mut file =
        options.open(path).map_err(|e| TlsError(format!("cannot create {}: {e}", path.display())))?;
    file.write_all(text.as_bytes()).map_err(|e| TlsError(format!("cannot write {}: {e}", path.display())))
}

fn rcgen_error(err: rcgen::Error) -> TlsError {
    TlsError(format!("certificate generation failed: {err}"))
}

/// The crypto provider: ring.
pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The trust anchors: the cluster CA only.
fn roots(identity: &Identity) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(identity.ca.clone()).map_err(|e| TlsError(format!("the CA certificate is unusable: {e}")))?;
    Ok(roots)
}

/// Server side: present `identity`, require a client certificate from the CA.
pub(crate) fn server_crypto(
    identity: &Identity,
    alpn: Vec<Vec<u8>>,
) -> Result<rustls::ServerConfig, TlsError> {
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots(identity)?), provider())
            .build()
            .map_err(|e| TlsError(format!("cannot build the client verifier: {e}")))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(identity.chain.clone(), identity.key.clone_key())
        .map_err(|e| TlsError(format!("the certificate or key is unusable: {e}")))?;
    config.alpn_protocols = alpn;
    Ok(config)
}

/// Client side: present `identity`, accept only servers with a CA certificate.
pub(crate) fn client_crypto(
    identity: &Identity,
    alpn: Vec<Vec<u8>>,
) -> Result<rustls::ClientConfig, TlsError> {
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError(e.to_string()))?
        .with_root_certificates(roots(identity)?)
        .with_client_auth_cert(identity.chain.clone(), identity.key.clone_key())
        .map_err(|e| TlsError(format!("the certificate or key is unusable: {e}")))?;
    config.alpn_protocols = alpn;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn the_development_ca_key_is_readable_by_its_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("stead-tls-mode-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dev_identity(&dir, "ohio").unwrap();
        let mode = |file: &str| fs::metadata(dir.join(file)).unwrap().permissions().mode() & 0o777;
        let (key, cert) = (mode("ca.key.pem"), mode("ca.pem"));
        fs::remove_dir_all(&dir).unwrap();
        assert_eq!(key, 0o600, "the CA's private key must not be readable by others");
        assert_eq!(cert & 0o400, 0o400, "the certificate stays readable");
    }
}
