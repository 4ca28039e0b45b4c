//! Certificates of the relay link. The hub keeps a private relay CA in
//! `cert_dir` (separate from the HTTPS certificate, which a hospital may
//! replace with a public one): it signs the hub's relay certificate and one
//! client certificate per edge. Both sides authenticate (mutual TLS); the
//! hub then looks the edge's certificate fingerprint up in `relay_edges`, so
//! revoking an edge is one row, effective on its next handshake, without a
//! CRL to distribute.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use sha2::{Digest, Sha256};

use super::wire::ALPN;
use crate::tls::provider;

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {msg}")]
    Pem { path: PathBuf, msg: String },
    #[error("generating a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("client verifier: {0}")]
    Verifier(String),
    #[error("QUIC crypto: {0}")]
    Quic(String),
    #[error("edge name {0:?}: use 1-63 lowercase letters, digits and '-'")]
    BadName(String),
}

pub struct RelayPaths {
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub hub_cert: PathBuf,
    pub hub_key: PathBuf,
}

pub fn paths(cert_dir: &Path) -> RelayPaths {
    RelayPaths {
        ca_cert: cert_dir.join("relay-ca.pem"),
        ca_key: cert_dir.join("relay-ca.key"),
        hub_cert: cert_dir.join("relay-hub.pem"),
        hub_key: cert_dir.join("relay-hub.key"),
    }
}

pub fn valid_edge_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Hex SHA-256 of a DER certificate: the edge's identity at the hub.
pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn write_private(path: &Path, data: &[u8]) -> Result<(), PkiError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io(path))?;
    f.write_all(data).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

fn year_now() -> i32 {
    let secs = crate::clock::unix_secs();
    1970 + (secs / 31_556_952) as i32
}

fn ca_params() -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, "medrelay relay CA");
    p.distinguished_name.push(DnType::OrganizationName, "medrelay");
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let y = year_now();
    p.not_before = rcgen::date_time_ymd(y - 1, 1, 1);
    p.not_after = rcgen::date_time_ymd(y + 30, 1, 1);
    p
}

fn leaf_params(name: &str, years: i32, eku: ExtendedKeyUsagePurpose) -> Result<CertificateParams, PkiError> {
    let mut p = CertificateParams::new(vec![name.to_string()])?;
    p.distinguished_name.push(DnType::CommonName, name);
    p.distinguished_name.push(DnType::OrganizationName, "medrelay");
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![eku];
    let y = year_now();
    p.not_before = rcgen::date_time_ymd(y - 1, 1, 1);
    p.not_after = rcgen::date_time_ymd(y + years, 1, 1);
    Ok(p)
}

/// Create the relay CA and the hub's relay certificate if missing (or if
/// the hub's name changed). Returns true when anything was generated.
pub fn ensure_hub(cert_dir: &Path, hub_name: &str) -> Result<bool, PkiError> {
    let p = paths(cert_dir);
    std::fs::create_dir_all(cert_dir).map_err(io(cert_dir))?;
    let mut made = false;
    if !(p.ca_cert.exists() && p.ca_key.exists()) {
        let key = KeyPair::generate()?;
        let cert = ca_params().self_signed(&key)?;
        write_private(&p.ca_key, key.serialize_pem().as_bytes())?;
        std::fs::write(&p.ca_cert, cert.pem()).map_err(io(&p.ca_cert))?;
        made = true;
    }
    let name_file = cert_dir.join("relay-hub.name");
    let current = std::fs::read_to_string(&name_file).unwrap_or_default();
    if made || !(p.hub_cert.exists() && p.hub_key.exists()) || current.trim() != hub_name {
        let issuer = ca_issuer(&p)?;
        let key = KeyPair::generate()?;
        let cert = leaf_params(hub_name, 10, ExtendedKeyUsagePurpose::ServerAuth)?.signed_by(&key, &issuer)?;
        write_private(&p.hub_key, key.serialize_pem().as_bytes())?;
        std::fs::write(&p.hub_cert, cert.pem()).map_err(io(&p.hub_cert))?;
        std::fs::write(&name_file, hub_name).map_err(io(&name_file))?;
        made = true;
    }
    Ok(made)
}

fn ca_issuer(p: &RelayPaths) -> Result<Issuer<'static, KeyPair>, PkiError> {
    let pem = std::fs::read_to_string(&p.ca_key).map_err(io(&p.ca_key))?;
    let key = KeyPair::from_pem(&pem)?;
    Ok(Issuer::new(ca_params(), key))
}

pub struct IssuedEdge {
    pub cert_pem: String,
    pub key_pem: String,
    pub ca_pem: String,
    pub fingerprint: String,
}

/// Sign a new client certificate for an edge (5 years).
pub fn issue_edge(cert_dir: &Path, edge_name: &str) -> Result<IssuedEdge, PkiError> {
    if !valid_edge_name(edge_name) {
        return Err(PkiError::BadName(edge_name.to_string()));
    }
    let p = paths(cert_dir);
    let issuer = ca_issuer(&p)?;
    let key = KeyPair::generate()?;
    let cert = leaf_params(edge_name, 5, ExtendedKeyUsagePurpose::ClientAuth)?.signed_by(&key, &issuer)?;
    let ca_pem = std::fs::read_to_string(&p.ca_cert).map_err(io(&p.ca_cert))?;
    Ok(IssuedEdge {
        fingerprint: fingerprint(cert.der()),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        ca_pem,
    })
}

/// Write an issued edge's files into `dir` (key 0600).
pub fn write_edge_files(dir: &Path, e: &IssuedEdge) -> Result<(PathBuf, PathBuf, PathBuf), PkiError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let cert = dir.join("edge-cert.pem");
    let key = dir.join("edge-key.pem");
    let ca = dir.join("hub-ca.pem");
    std::fs::write(&cert, &e.cert_pem).map_err(io(&cert))?;
    write_private(&key, e.key_pem.as_bytes())?;
    std::fs::write(&ca, &e.ca_pem).map_err(io(&ca))?;
    Ok((cert, key, ca))
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let pem = |e: rustls::pki_types::pem::Error| PkiError::Pem {
        path: path.to_path_buf(),
        msg: e.to_string(),
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(pem)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PkiError::Pem {
            path: path.to_path_buf(),
            msg: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(PkiError::Pem {
            path: path.to_path_buf(),
            msg: "no certificate in file".into(),
        });
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, PkiError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| PkiError::Pem {
        path: path.to_path_buf(),
        msg: e.to_string(),
    })
}

fn roots(path: &Path) -> Result<rustls::RootCertStore, PkiError> {
    let mut roots = rustls::RootCertStore::empty();
    for c in load_certs(path)? {
        roots.add(c).map_err(PkiError::Tls)?;
    }
    Ok(roots)
}

/// Transport tuned for long, lossy links: our delivery-rate congestion
/// control (`cc`: random loss is not read as congestion, and the window, by
/// which quinn paces, stays near one BDP), windows large enough for 50 Mbit/s at 800 ms RTT with loss
/// recovery in flight, keep-alives under typical 4G NAT timeouts, and an
/// idle timeout after which the edge reconnects and resumes.
pub fn transport() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.congestion_controller_factory(Arc::new(super::cc::RelayCcConfig::default()));
    t.keep_alive_interval(Some(Duration::from_secs(4)));
    if let Ok(idle) = quinn::IdleTimeout::try_from(Duration::from_secs(20)) {
        t.max_idle_timeout(Some(idle));
    }
    t.stream_receive_window(quinn::VarInt::from_u32(16 << 20));
    t.receive_window(quinn::VarInt::from_u32(64 << 20));
    t.send_window(64 << 20);
    t.initial_rtt(Duration::from_millis(300));
    t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(64));
    t.max_concurrent_uni_streams(quinn::VarInt::from_u32(0));
    Arc::new(t)
}

/// The hub's QUIC server config: its relay certificate, and client
/// certificates required and checked against the relay CA.
pub fn hub_server_config(cert_dir: &Path) -> Result<quinn::ServerConfig, PkiError> {
    let p = paths(cert_dir);
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots(&p.ca_cert)?), provider())
            .build()
            .map_err(|e| PkiError::Verifier(e.to_string()))?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(load_certs(&p.hub_cert)?, load_key(&p.hub_key)?)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).map_err(|e| PkiError::Quic(e.to_string()))?;
    let mut sc = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    sc.transport_config(transport());
    // A 4G address change must not restart transfers.
    sc.migration(true);
    Ok(sc)
}

/// The edge's QUIC client config: its certificate, and the hub verified
/// against the relay CA only (not the system roots).
pub fn edge_client_config(cert: &Path, key: &Path, hub_ca: &Path) -> Result<quinn::ClientConfig, PkiError> {
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots(hub_ca)?)
        .with_client_auth_cert(load_certs(cert)?, load_key(key)?)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(|e| PkiError::Quic(e.to_string()))?;
    let mut cc = quinn::ClientConfig::new(Arc::new(crypto));
    cc.transport_config(transport());
    Ok(cc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_dns_labels() {
        assert!(valid_edge_name("clinic-a-edge1"));
        for bad in ["", "-x", "Clinic", "a b", "x/y", &"a".repeat(64)] {
            assert!(!valid_edge_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn ca_and_hub_cert_are_made_once_and_edges_chain_to_the_ca() {
        let dir = tempfile::tempdir().expect("tmp");
        assert!(ensure_hub(dir.path(), "medrelay-hub").expect("pki"));
        assert!(!ensure_hub(dir.path(), "medrelay-hub").expect("pki"));
        // Renaming the hub re-issues only its certificate.
        let ca_before = std::fs::read(paths(dir.path()).ca_cert).expect("ca");
        assert!(ensure_hub(dir.path(), "hub2").expect("pki"));
        assert_eq!(std::fs::read(paths(dir.path()).ca_cert).expect("ca"), ca_before);

        let e = issue_edge(dir.path(), "clinic-a").expect("issue");
        let e2 = issue_edge(dir.path(), "clinic-a").expect("issue");
        assert_ne!(e.fingerprint, e2.fingerprint, "each issuance is a new identity");
        let out = dir.path().join("edge");
        let (c, k, ca) = write_edge_files(&out, &e).expect("write");
        // Both TLS configs build from what was issued.
        hub_server_config(dir.path()).expect("server config");
        edge_client_config(&c, &k, &ca).expect("client config");
        assert!(issue_edge(dir.path(), "Bad Name").is_err());
    }
}
