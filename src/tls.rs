//! The TLS certificate shared by HTTPS and DICOM TLS.
//!
//! On first start a self-signed certificate is generated into `cert_dir` so
//! the gateway is HTTPS from the first minute; afterwards the files are reused
//! (or replaced by the hospital's own). Only the ring provider is used: two
//! providers in one process make rustls panic at runtime.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read or write {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {msg}")]
    Pem { path: PathBuf, msg: String },
    #[error("generating the development certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

pub struct CertPaths {
    pub cert: PathBuf,
    pub key: PathBuf,
}

pub fn paths(cert_dir: &Path) -> CertPaths {
    CertPaths {
        cert: cert_dir.join("medrelay.crt"),
        key: cert_dir.join("medrelay.key"),
    }
}

pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Make sure a certificate exists; returns true when one was generated now.
pub fn ensure_certificate(cert_dir: &Path) -> Result<bool, TlsError> {
    let p = paths(cert_dir);
    if p.cert.exists() && p.key.exists() {
        return Ok(false);
    }
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| TlsError::Io { path, source }
    };
    std::fs::create_dir_all(cert_dir).map_err(io(cert_dir))?;
    let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()];
    if let Ok(h) = std::fs::read_to_string("/etc/hostname") {
        let h = h.trim();
        if !h.is_empty() {
            names.push(h.to_string());
        }
    }
    let mut params = rcgen::CertificateParams::new(names)?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "medrelay development certificate");
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "medrelay");
    let key = rcgen::KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    write_private(&p.key, key.serialize_pem().as_bytes()).map_err(io(&p.key))?;
    std::fs::write(&p.cert, cert.pem()).map_err(io(&p.cert))?;
    Ok(true)
}

fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(data)?;
    f.sync_all()
}

pub fn load(cert_dir: &Path) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let p = paths(cert_dir);
    let pem_err = |path: &Path| {
        let path = path.to_path_buf();
        move |e: rustls::pki_types::pem::Error| TlsError::Pem {
            path,
            msg: e.to_string(),
        }
    };
    let certs = CertificateDer::pem_file_iter(&p.cert)
        .map_err(pem_err(&p.cert))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem_err(&p.cert))?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: p.cert,
            msg: "no certificate in file".into(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(&p.key).map_err(pem_err(&p.key))?;
    Ok((certs, key))
}

/// Server config; `alpn` lists the protocols (HTTP wants h2 + http/1.1, DICOM none).
pub fn server_config(cert_dir: &Path, alpn: &[&[u8]]) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let (certs, key) = load(cert_dir)?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(cfg))
}

#[cfg(test)]
mod tests {
    #[test]
    fn generates_once_and_builds_a_config() {
        let dir = tempfile::tempdir().expect("tmp");
        assert!(super::ensure_certificate(dir.path()).expect("gen"));
        let first = std::fs::read(super::paths(dir.path()).cert).expect("read");
        assert!(!super::ensure_certificate(dir.path()).expect("reuse"));
        assert_eq!(std::fs::read(super::paths(dir.path()).cert).expect("read"), first);
        super::server_config(dir.path(), &[b"h2"]).expect("config");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(super::paths(dir.path()).key)
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
