//! The cluster's certificates: `adcnn-run certs` makes a cluster CA and one certificate per
//! node (the coordinator's doubles as the client certificate), and the worker and the
//! coordinator load theirs for mutual TLS. A node's certificate names the node (a DNS name
//! that the other side checks) and the host of its address.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
    SanType,
};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// The files `adcnn-run certs` writes in its folder.
pub const CA_CERT: &str = "ca.pem";
pub const CA_KEY: &str = "ca.key";

/// Largest certificate or key file read.
const MAX_PEM_BYTES: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot make certificates: {0}")]
    Generate(String),
    #[error("cannot write {path}: {reason}")]
    Write { path: String, reason: String },
    #[error(
        "cannot read {path}: {reason} (make the cluster's certificates with `adcnn-run certs --cluster CLUSTER.yaml -o DIR`)"
    )]
    Read { path: String, reason: String },
    #[error(
        "`{0}` cannot name a node in a certificate: node names must be letters, digits, `-` and `.`"
    )]
    Name(String),
}

/// The PEM file of node `name`'s certificate and key in `dir`.
pub fn node_files(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    )
}

/// A node name as a DNS name in a certificate (and the name the peer is checked against).
fn dns_name(name: &str) -> Result<String, TlsError> {
    let ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        && !name.starts_with(['-', '.']);
    if ok {
        Ok(name.to_ascii_lowercase())
    } else {
        Err(TlsError::Name(name.to_string()))
    }
}

/// Makes the cluster CA and a certificate for every `(name, address)` node in `dir`.
/// Returns the files written.
pub fn generate(nodes: &[(String, Option<String>)], dir: &Path) -> Result<Vec<PathBuf>, TlsError> {
    let gen_err = |e: rcgen::Error| TlsError::Generate(e.to_string());
    std::fs::create_dir_all(dir).map_err(|e| TlsError::Write {
        path: dir.display().to_string(),
        reason: e.to_string(),
    })?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(gen_err)?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "adcnn cluster CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate().map_err(gen_err)?;
    let ca_key_pem = ca_key.serialize_pem();
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key).map_err(gen_err)?;
    let mut written = Vec::new();
    let mut write = |path: PathBuf, text: &str, secret: bool| -> Result<(), TlsError> {
        write_file(&path, text, secret)?;
        written.push(path);
        Ok(())
    };
    write(dir.join(CA_CERT), &ca.pem(), false)?;
    write(dir.join(CA_KEY), &ca_key_pem, true)?;
    for (name, address) in nodes {
        let dns = dns_name(name)?;
        let mut params = CertificateParams::new(vec![dns.clone()]).map_err(gen_err)?;
        params.distinguished_name.push(DnType::CommonName, dns);
        if let Some(host) = address
            .as_deref()
            .and_then(|a| a.rsplit_once(':'))
            .map(|h| h.0)
        {
            let host = host.trim_start_matches('[').trim_end_matches(']');
            match host.parse::<IpAddr>() {
                Ok(ip) => params.subject_alt_names.push(SanType::IpAddress(ip)),
                Err(_) => {
                    if let Ok(h) = host.to_string().try_into() {
                        params.subject_alt_names.push(SanType::DnsName(h));
                    }
                }
            }
        }
        let key = KeyPair::generate().map_err(gen_err)?;
        let cert = params.signed_by(&key, &ca).map_err(gen_err)?;
        let (cert_path, key_path) = node_files(dir, name);
        write(cert_path, &cert.pem(), false)?;
        write(key_path, &key.serialize_pem(), true)?;
    }
    Ok(written)
}

fn write_file(path: &Path, text: &str, secret: bool) -> Result<(), TlsError> {
    use std::io::Write;
    let fail = |e: std::io::Error| TlsError::Write {
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let _ = secret;
    let mut f = opts.open(path).map_err(fail)?;
    f.write_all(text.as_bytes()).map_err(fail)
}

fn read_pem(path: &Path) -> Result<String, TlsError> {
    let fail = |reason: String| TlsError::Read {
        path: path.display().to_string(),
        reason,
    };
    let meta = std::fs::metadata(path).map_err(|e| fail(e.to_string()))?;
    if meta.len() > MAX_PEM_BYTES {
        return Err(fail(format!("larger than {MAX_PEM_BYTES} bytes")));
    }
    std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))
}

/// Node `name`'s identity and the cluster CA, from `dir`.
fn load(dir: &Path, name: &str) -> Result<(Identity, Certificate), TlsError> {
    let (cert, key) = node_files(dir, name);
    let identity = Identity::from_pem(read_pem(&cert)?, read_pem(&key)?);
    let ca = Certificate::from_pem(read_pem(&dir.join(CA_CERT))?);
    Ok((identity, ca))
}

/// A worker's server side: its certificate, and coordinators must present one of the
/// cluster's.
pub fn server(dir: &Path, name: &str) -> Result<ServerTlsConfig, TlsError> {
    let (identity, ca) = load(dir, name)?;
    Ok(ServerTlsConfig::new().identity(identity).client_ca_root(ca))
}

/// The coordinator's side towards worker `peer`: the cluster CA, the peer's name, and the
/// coordinator's own certificate (`name`).
pub fn client(dir: &Path, name: &str, peer: &str) -> Result<ClientTlsConfig, TlsError> {
    let (identity, ca) = load(dir, name)?;
    Ok(ClientTlsConfig::new()
        .ca_certificate(ca)
        .identity(identity)
        .domain_name(dns_name(peer)?))
}
