//! A cluster's certificates: one CA that clients pin, and a node certificate
//! signed by it that nodes and the balancer present (and that nodes also use
//! as a client certificate when they report to the balancer).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, date_time_ymd,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// File name of the CA certificate clients are given.
pub const CA_CERT: &str = "ca.pem";
/// File name of the CA's private key (keep it off the nodes in production).
pub const CA_KEY: &str = "ca.key";
/// File name of the node certificate.
pub const NODE_CERT: &str = "node.pem";
/// File name of the node certificate's private key.
pub const NODE_KEY: &str = "node.key";

/// Names every node certificate carries so loopback clusters work unchanged.
pub const DEFAULT_SANS: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// Why certificates could not be made or loaded.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// Refusing to replace keys that exist.
    #[error(
        "{0} already exists; pass --force to replace the cluster's keys (every client must then get the new CA)"
    )]
    Exists(PathBuf),
    /// A file could not be read or written.
    #[error("cannot access {path}: {cause}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        cause: std::io::Error,
    },
    /// A file held no usable certificate or key.
    #[error("{0} does not contain a valid PEM certificate or key")]
    BadPem(PathBuf),
    /// rcgen refused the parameters (for example an invalid --san).
    #[error("cannot generate the certificate: {0}")]
    Generate(rcgen::Error),
}

impl From<rcgen::Error> for CertError {
    fn from(e: rcgen::Error) -> Self {
        CertError::Generate(e)
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CertError + '_ {
    move |cause| CertError::Io {
        path: path.to_path_buf(),
        cause,
    }
}

/// The paths of a generated certificate set.
#[derive(Debug, Clone)]
pub struct CertPaths {
    /// The CA certificate to hand to clients.
    pub ca_cert: PathBuf,
    /// The node certificate.
    pub node_cert: PathBuf,
    /// The node key.
    pub node_key: PathBuf,
}

impl CertPaths {
    /// The standard file names inside `dir`.
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            ca_cert: dir.join(CA_CERT),
            node_cert: dir.join(NODE_CERT),
            node_key: dir.join(NODE_KEY),
        }
    }
}

/// Generates a CA and a node certificate into `dir`. `extra_sans` are added
/// to [`DEFAULT_SANS`]. Existing files are an error unless `force`.
pub fn generate(dir: &Path, extra_sans: &[String], force: bool) -> Result<CertPaths, CertError> {
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    if !force {
        for name in [CA_CERT, CA_KEY, NODE_CERT, NODE_KEY] {
            let p = dir.join(name);
            if p.exists() {
                return Err(CertError::Exists(p));
            }
        }
    }

    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "fastchat cluster CA");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca_params.not_before = date_time_ymd(2024, 1, 1);
    ca_params.not_after = date_time_ymd(2046, 1, 1);
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca_params.self_signed(&ca_key)?;

    let mut sans: Vec<String> = DEFAULT_SANS.iter().map(|s| s.to_string()).collect();
    for san in extra_sans {
        if !sans.contains(san) {
            sans.push(san.clone());
        }
    }
    let mut node_params = CertificateParams::new(sans)?;
    node_params
        .distinguished_name
        .push(DnType::CommonName, "fastchat node");
    node_params.use_authority_key_identifier_extension = true;
    node_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    node_params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    node_params.not_before = date_time_ymd(2024, 1, 1);
    node_params.not_after = date_time_ymd(2036, 1, 1);
    let node_key = KeyPair::generate()?;
    let issuer = Issuer::new(ca_params, ca_key);
    let node_cert = node_params.signed_by(&node_key, &issuer)?;

    write_file(&dir.join(CA_CERT), ca_cert.pem().as_bytes(), false)?;
    write_file(
        &dir.join(CA_KEY),
        issuer.key().serialize_pem().as_bytes(),
        true,
    )?;
    write_file(&dir.join(NODE_CERT), node_cert.pem().as_bytes(), false)?;
    write_file(
        &dir.join(NODE_KEY),
        node_key.serialize_pem().as_bytes(),
        true,
    )?;
    Ok(CertPaths::in_dir(dir))
}

/// Generates certificates into `dir` unless a complete set is already there.
pub fn ensure(dir: &Path, extra_sans: &[String]) -> Result<CertPaths, CertError> {
    let paths = CertPaths::in_dir(dir);
    if paths.ca_cert.exists() && paths.node_cert.exists() && paths.node_key.exists() {
        return Ok(paths);
    }
    generate(dir, extra_sans, false)
}

fn write_file(path: &Path, data: &[u8], secret: bool) -> Result<(), CertError> {
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut f = opts.open(path).map_err(io_err(path))?;
    f.write_all(data).map_err(io_err(path))
}

/// Reads every certificate in a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let data = fs::read(path).map_err(io_err(path))?;
    load_certs_pem(&data).ok_or_else(|| CertError::BadPem(path.to_path_buf()))
}

/// Parses every certificate in PEM text; `None` if there is none or one is broken.
pub fn load_certs_pem(pem: &[u8]) -> Option<Vec<CertificateDer<'static>>> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .ok()?;
    (!certs.is_empty()).then_some(certs)
}

/// Reads a private key from a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, CertError> {
    let data = fs::read(path).map_err(io_err(path))?;
    PrivateKeyDer::from_pem_slice(&data).map_err(|_| CertError::BadPem(path.to_path_buf()))
}

/// A node's certificate chain and key, loaded from a certificate directory.
pub struct NodeIdentity {
    /// Node certificate first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The node certificate's key.
    pub key: PrivateKeyDer<'static>,
    /// The cluster CA, for verifying peers.
    pub ca: Vec<CertificateDer<'static>>,
}

impl NodeIdentity {
    /// Loads `node.pem`, `node.key` and `ca.pem` from `dir`.
    pub fn load(dir: &Path) -> Result<Self, CertError> {
        let paths = CertPaths::in_dir(dir);
        Ok(Self {
            chain: load_certs(&paths.node_cert)?,
            key: load_key(&paths.node_key)?,
            ca: load_certs(&paths.ca_cert)?,
        })
    }

    /// A copy (private keys are not `Clone`).
    pub fn clone_identity(&self) -> Self {
        Self {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
            ca: self.ca.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generate_load_and_refuse_overwrite() {
        let dir = std::env::temp_dir().join(format!("fastchat-certs-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        generate(&dir, &["chat.example.org".into()], false).unwrap();
        let id = NodeIdentity::load(&dir).unwrap();
        assert_eq!(id.chain.len(), 1);
        assert_eq!(id.ca.len(), 1);
        assert!(matches!(
            generate(&dir, &[], false),
            Err(CertError::Exists(_))
        ));
        let before = fs::read(dir.join(CA_CERT)).unwrap();
        ensure(&dir, &[]).unwrap();
        assert_eq!(before, fs::read(dir.join(CA_CERT)).unwrap());
        generate(&dir, &[], true).unwrap();
        assert_ne!(before, fs::read(dir.join(CA_CERT)).unwrap());
        assert!(matches!(
            load_certs(&dir.join("missing.pem")),
            Err(CertError::Io { .. })
        ));
        fs::remove_dir_all(&dir).unwrap();
    }
}
