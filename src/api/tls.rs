//! HTTPS for `serve --tls-cert FILE --tls-key FILE`: the certificate chain and key read
//! from PEM files into a rustls server configuration, with the aws-lc-rs provider that
//! reqwest already builds (one rustls, no OpenSSL).

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The PEM files HTTPS is served with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, leaf first (`--tls-cert`).
    pub cert: PathBuf,
    /// Its private key: PKCS#8, PKCS#1 or SEC1 (`--tls-key`).
    pub key: PathBuf,
}

impl TlsFiles {
    /// `--tls-cert` and `--tls-key`: both or neither.
    pub fn from_flags(
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
    ) -> Result<Option<TlsFiles>, String> {
        match (cert, key) {
            (Some(cert), Some(key)) => Ok(Some(TlsFiles { cert, key })),
            (None, None) => Ok(None),
            (Some(_), None) => {
                Err("--tls-cert needs --tls-key (the certificate's private key)".into())
            }
            (None, Some(_)) => {
                Err("--tls-key needs --tls-cert (the certificate chain it signs for)".into())
            }
        }
    }

    /// Reads both files and checks that the key fits the certificate; every error names
    /// the file and what is wrong with it.
    pub fn server_config(&self) -> Result<rustls::ServerConfig, String> {
        let certs = read_certs(&self.cert, "--tls-cert")?;
        let key = PrivateKeyDer::from_pem_file(&self.key).map_err(|e| {
            format!(
                "--tls-key {}: {}",
                self.key.display(),
                pem_problem(e, "private key")
            )
        })?;
        rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| {
                format!(
                    "--tls-cert {} with --tls-key {}: {e}",
                    self.cert.display(),
                    self.key.display()
                )
            })
    }
}

/// The crypto provider of every rustls configuration batchforge makes.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The certificates of a PEM file (`flag` names the option it came from); none is an error.
pub fn read_certs(path: &Path, flag: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            format!(
                "{flag} {}: {}",
                path.display(),
                pem_problem(e, "certificate")
            )
        })?;
    if certs.is_empty() {
        return Err(format!(
            "{flag} {}: no PEM certificate (-----BEGIN CERTIFICATE-----) in it",
            path.display()
        ));
    }
    Ok(certs)
}

/// A PEM reading error in words: the I/O error as it is, "nothing found" naming what was
/// looked for.
fn pem_problem(e: rustls::pki_types::pem::Error, what: &str) -> String {
    match e {
        rustls::pki_types::pem::Error::Io(io) => io.to_string(),
        rustls::pki_types::pem::Error::NoItemsFound => format!("no PEM {what} in it"),
        other => format!("not a valid PEM {what}: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_flags_or_neither() {
        assert_eq!(TlsFiles::from_flags(None, None), Ok(None));
        let err = TlsFiles::from_flags(Some("c.pem".into()), None).unwrap_err();
        assert!(err.contains("--tls-key"), "{err}");
        let err = TlsFiles::from_flags(None, Some("k.pem".into())).unwrap_err();
        assert!(err.contains("--tls-cert"), "{err}");
    }

    #[test]
    fn unreadable_and_invalid_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not pem at all\n").unwrap();
        let files = TlsFiles {
            cert: missing.clone(),
            key: garbage.clone(),
        };
        let err = files.server_config().unwrap_err();
        assert!(
            err.contains("--tls-cert") && err.contains("missing.pem"),
            "{err}"
        );
        let files = TlsFiles {
            cert: garbage.clone(),
            key: garbage,
        };
        let err = files.server_config().unwrap_err();
        assert!(
            err.contains("garbage.pem") && err.contains("no PEM certificate"),
            "{err}"
        );
    }
}
