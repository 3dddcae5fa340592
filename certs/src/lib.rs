//! A cluster's certificates: one CA that clients pin, and one certificate
//! per role signed by it — the balancer, each node (which also presents it
//! as a client certificate when it reports to the balancer and joins the
//! bus), and the bus's server — each in a directory of its own. The CA's
//! key sits apart, in `ca/`, which no server loads: copy only a role's
//! directory to the machine that runs it.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, date_time_ymd,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// File name of the CA certificate (at the top, for clients, and in every
/// role's directory).
pub const CA_CERT: &str = "ca.pem";
/// File name of the CA's private key, inside [`CA_DIR`].
pub const CA_KEY: &str = "ca.key";
/// The directory holding the CA's key: keep it off the servers.
pub const CA_DIR: &str = "ca";
/// File name of a role's certificate inside its directory.
pub const NODE_CERT: &str = "node.pem";
/// File name of a role's private key inside its directory.
pub const NODE_KEY: &str = "node.key";

/// What part of a cluster a certificate is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The balancer (a server only).
    Balancer,
    /// Node number `k` (from 1): a server to clients, a client to the
    /// balancer and the bus.
    Node(u16),
    /// The NATS server between the nodes.
    Bus,
}

impl Role {
    /// The role's directory name inside a certificate directory.
    pub fn dir_name(self) -> String {
        match self {
            Role::Balancer => "balancer".into(),
            Role::Node(k) => format!("node-{k}"),
            Role::Bus => "bus".into(),
        }
    }

    fn common_name(self) -> String {
        match self {
            Role::Balancer => "fastchat balancer".into(),
            Role::Node(k) => format!("fastchat node {k}"),
            Role::Bus => "fastchat bus".into(),
        }
    }

    fn usages(self) -> Vec<ExtendedKeyUsagePurpose> {
        match self {
            Role::Node(_) => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            Role::Balancer | Role::Bus => vec![ExtendedKeyUsagePurpose::ServerAuth],
        }
    }
}

/// The directory of `role` inside the certificate directory `dir`.
pub fn role_dir(dir: &Path, role: Role) -> PathBuf {
    dir.join(role.dir_name())
}

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
    /// New certificates are needed and the CA's key is not there.
    #[error(
        "{0} is missing, so no certificate can be made for a new node or role; put the CA key back (or start over with `fastchat certs --force`, after which every client needs the new CA)"
    )]
    NoCaKey(PathBuf),
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

/// The files of one role's directory (or any directory laid out the same).
#[derive(Debug, Clone)]
pub struct CertPaths {
    /// The CA certificate.
    pub ca_cert: PathBuf,
    /// The role's certificate.
    pub node_cert: PathBuf,
    /// The role's key.
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

/// The CA's parameters: the same every time, so a CA key loaded back signs
/// certificates that chain to the CA certificate made with it.
fn ca_params() -> Result<CertificateParams, CertError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params
        .distinguished_name
        .push(DnType::CommonName, "fastchat cluster CA");
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = date_time_ymd(2024, 1, 1);
    params.not_after = date_time_ymd(2046, 1, 1);
    Ok(params)
}

/// The roles a cluster of `nodes` nodes needs.
fn roles(nodes: u16) -> Vec<Role> {
    let mut roles = vec![Role::Balancer, Role::Bus];
    roles.extend((1..=nodes.max(1)).map(Role::Node));
    roles
}

/// Generates a CA and a certificate for the balancer, the bus and each of
/// `nodes` nodes into `dir`. `extra_sans` are added to [`DEFAULT_SANS`].
/// Existing keys are an error unless `force`. Returns the clients' CA file.
pub fn generate(
    dir: &Path,
    extra_sans: &[String],
    force: bool,
    nodes: u16,
) -> Result<PathBuf, CertError> {
    let ca_dir = dir.join(CA_DIR);
    if !force {
        for p in [dir.join(CA_CERT), ca_dir.join(CA_KEY)] {
            if p.exists() {
                return Err(CertError::Exists(p));
            }
        }
    }
    create_private_dir(dir)?;
    create_private_dir(&ca_dir)?;
    let params = ca_params()?;
    let ca_key = KeyPair::generate()?;
    let ca_cert = params.self_signed(&ca_key)?;
    write_file(
        &ca_dir.join(CA_KEY),
        ca_key.serialize_pem().as_bytes(),
        true,
    )?;
    write_file(&ca_dir.join(CA_CERT), ca_cert.pem().as_bytes(), false)?;
    write_file(&dir.join(CA_CERT), ca_cert.pem().as_bytes(), false)?;
    let issuer = Issuer::new(params, ca_key);
    for role in roles(nodes) {
        write_role(dir, role, extra_sans, &issuer, ca_cert.pem().as_bytes())?;
    }
    Ok(dir.join(CA_CERT))
}

/// Makes whatever `dir` lacks for a cluster of `nodes` nodes, signing new
/// roles with the CA already there (a CA is made only if there is none).
/// A directory in the old layout (CA key and one node certificate side by
/// side) moves its CA key into `ca/`. Returns the clients' CA file.
pub fn ensure(dir: &Path, extra_sans: &[String], nodes: u16) -> Result<PathBuf, CertError> {
    let ca_dir = dir.join(CA_DIR);
    let old_key = dir.join(CA_KEY);
    if old_key.exists() && !ca_dir.join(CA_KEY).exists() {
        create_private_dir(&ca_dir)?;
        fs::rename(&old_key, ca_dir.join(CA_KEY)).map_err(io_err(&old_key))?;
        fs::copy(dir.join(CA_CERT), ca_dir.join(CA_CERT)).map_err(io_err(&ca_dir))?;
    }
    if !dir.join(CA_CERT).exists() {
        return generate(dir, extra_sans, false, nodes);
    }
    let missing: Vec<Role> = roles(nodes)
        .into_iter()
        .filter(|r| !CertPaths::in_dir(&role_dir(dir, *r)).node_key.exists())
        .collect();
    if !missing.is_empty() {
        let key_file = ca_dir.join(CA_KEY);
        // The CA's key may have been put away, as it should be: new roles
        // need it back, never a new CA (every client trusts this one).
        if !key_file.exists() {
            return Err(CertError::NoCaKey(key_file));
        }
        let pem = fs::read_to_string(&key_file).map_err(io_err(&key_file))?;
        let ca_key = KeyPair::from_pem(&pem).map_err(|_| CertError::BadPem(key_file.clone()))?;
        let ca_pem = fs::read(dir.join(CA_CERT)).map_err(io_err(dir))?;
        let issuer = Issuer::new(ca_params()?, ca_key);
        for role in missing {
            write_role(dir, role, extra_sans, &issuer, &ca_pem)?;
        }
    }
    Ok(dir.join(CA_CERT))
}

fn write_role(
    dir: &Path,
    role: Role,
    extra_sans: &[String],
    issuer: &Issuer<'_, KeyPair>,
    ca_pem: &[u8],
) -> Result<(), CertError> {
    let mut sans: Vec<String> = DEFAULT_SANS.iter().map(|s| s.to_string()).collect();
    for san in extra_sans {
        if !sans.contains(san) {
            sans.push(san.clone());
        }
    }
    let mut params = CertificateParams::new(sans)?;
    params
        .distinguished_name
        .push(DnType::CommonName, role.common_name());
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = role.usages();
    params.not_before = date_time_ymd(2024, 1, 1);
    params.not_after = date_time_ymd(2036, 1, 1);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, issuer)?;
    let out = role_dir(dir, role);
    create_private_dir(&out)?;
    write_file(&out.join(CA_CERT), ca_pem, false)?;
    write_file(&out.join(NODE_CERT), cert.pem().as_bytes(), false)?;
    write_file(&out.join(NODE_KEY), key.serialize_pem().as_bytes(), true)
}

fn create_private_dir(dir: &Path) -> Result<(), CertError> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).map_err(io_err(dir))
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
    /// Loads `node.pem`, `node.key` and `ca.pem` from `dir` (a role's
    /// directory).
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
    fn one_certificate_per_role_and_the_ca_key_apart() {
        let dir = tempfile_dir("roles");
        let ca = generate(&dir, &["chat.example.org".into()], false, 2).unwrap();
        assert_eq!(ca, dir.join(CA_CERT));
        let ids: Vec<NodeIdentity> = [Role::Balancer, Role::Bus, Role::Node(1), Role::Node(2)]
            .into_iter()
            .map(|r| NodeIdentity::load(&role_dir(&dir, r)).unwrap())
            .collect();
        // Each role has its own key; none holds the CA's.
        for (i, a) in ids.iter().enumerate() {
            for b in &ids[i + 1..] {
                assert_ne!(a.key.secret_der(), b.key.secret_der());
            }
        }
        for role in ["balancer", "bus", "node-1", "node-2"] {
            assert!(!dir.join(role).join(CA_KEY).exists());
        }
        assert!(dir.join(CA_DIR).join(CA_KEY).exists());
        assert!(matches!(
            generate(&dir, &[], false, 1),
            Err(CertError::Exists(_))
        ));
        // A third node is signed by the same CA, which stays as it was.
        let before = fs::read(dir.join(CA_CERT)).unwrap();
        ensure(&dir, &[], 3).unwrap();
        assert_eq!(before, fs::read(dir.join(CA_CERT)).unwrap());
        let third = NodeIdentity::load(&role_dir(&dir, Role::Node(3))).unwrap();
        assert_eq!(third.ca, ids[0].ca);
        generate(&dir, &[], true, 1).unwrap();
        assert_ne!(before, fs::read(dir.join(CA_CERT)).unwrap());
        assert!(matches!(
            load_certs(&dir.join("missing.pem")),
            Err(CertError::Io { .. })
        ));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_old_directory_moves_its_ca_key_apart_and_keeps_its_ca() {
        let dir = tempfile_dir("old");
        generate(&dir, &[], false, 1).unwrap();
        // The old layout: the CA key beside ca.pem, no role directories.
        fs::rename(dir.join(CA_DIR).join(CA_KEY), dir.join(CA_KEY)).unwrap();
        fs::remove_dir_all(dir.join(CA_DIR)).unwrap();
        for role in ["balancer", "bus", "node-1"] {
            fs::remove_dir_all(dir.join(role)).unwrap();
        }
        let ca = fs::read(dir.join(CA_CERT)).unwrap();
        ensure(&dir, &[], 2).unwrap();
        assert_eq!(
            ca,
            fs::read(dir.join(CA_CERT)).unwrap(),
            "the CA clients trust"
        );
        assert!(!dir.join(CA_KEY).exists());
        assert!(dir.join(CA_DIR).join(CA_KEY).exists());
        NodeIdentity::load(&role_dir(&dir, Role::Node(2))).unwrap();
        // With the CA key put away, existing roles still load, and a new
        // one is refused rather than a new CA made.
        fs::remove_dir_all(dir.join(CA_DIR)).unwrap();
        ensure(&dir, &[], 2).unwrap();
        assert!(matches!(ensure(&dir, &[], 3), Err(CertError::NoCaKey(_))));
        assert_eq!(ca, fs::read(dir.join(CA_CERT)).unwrap());
        fs::remove_dir_all(&dir).unwrap();
    }

    fn tempfile_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("fastchat-certs-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }
}
