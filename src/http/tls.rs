//! The HTTPS metrics server's certificate: from `--metrics-cert-dir` (`tls.crt`, `tls.key`, as a mounted
//! `kubernetes.io/tls` Secret holds them, and as controller-runtime's `CertDir` expects), re-read when the files
//! change so a certificate cert-manager renews is served without a restart; or, without a folder, a self-signed
//! one generated at start, as controller-runtime does. Prometheus then scrapes with `insecureSkipVerify` (the
//! bearer token, not the certificate, decides who may read).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// The certificate chain's file name in `--metrics-cert-dir`.
pub const CERT_FILE: &str = "tls.crt";
/// The private key's file name in `--metrics-cert-dir`.
pub const KEY_FILE: &str = "tls.key";

/// Why the metrics server's certificate cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("TLS configuration: {0}")]
    Config(#[source] rustls::Error),
    #[error("generating a self-signed metrics certificate: {0}")]
    Generate(#[source] rcgen::Error),
    #[error("self-signed metrics certificate: {0}")]
    SelfSigned(#[source] rustls::Error),
    #[error("{}: {source}", path.display())]
    ReadCert {
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    #[error("{}: no certificate", .0.display())]
    NoCert(PathBuf),
    /// The key's own error would not say more than which file; its bytes never reach a message.
    #[error("{}: no PEM private key", .0.display())]
    NoKey(PathBuf),
    #[error("{} and {}: {source}", cert.display(), key.display())]
    Pair {
        cert: PathBuf,
        key: PathBuf,
        source: rustls::Error,
    },
}

/// A rustls server configuration for the metrics server: HTTP/1.1 only (a scrape is one request), the
/// certificate from `cert_dir` or a self-signed one.
pub fn server_config(cert_dir: Option<&Path>) -> Result<Arc<ServerConfig>, CertError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let resolver: Arc<dyn ResolvesServerCert> = match cert_dir {
        Some(dir) => Arc::new(FileCert::load(dir, provider.clone())?),
        None => Arc::new(Fixed(Arc::new(self_signed(&provider)?))),
    };
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(CertError::Config)?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A self-signed certificate for `localhost` with a fresh P-256 key, kept in memory only.
fn self_signed(provider: &CryptoProvider) -> Result<CertifiedKey, CertError> {
    let generated = rcgen::generate_simple_self_signed(vec![
        "localhost".to_string(),
        "pipedream-secrets-operator".to_string(),
    ])
    .map_err(CertError::Generate)?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        generated.signing_key.serialize_der(),
    ));
    CertifiedKey::from_der(vec![generated.cert.der().clone()], key, provider)
        .map_err(CertError::SelfSigned)
}

/// Always the same certificate.
#[derive(Debug)]
struct Fixed(Arc<CertifiedKey>);

impl ResolvesServerCert for Fixed {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// The certificate in a folder, re-read on the first handshake after either file changed.
struct FileCert {
    dir: PathBuf,
    provider: Arc<CryptoProvider>,
    current: Mutex<Loaded>,
}

struct Loaded {
    key: Arc<CertifiedKey>,
    /// Modification times and sizes of the two files when they were last read (or last tried).
    stamp: Stamp,
}

type Stamp = Option<[(SystemTime, u64); 2]>;

impl std::fmt::Debug for FileCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileCert")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl FileCert {
    /// Read the folder's certificate now: a missing or bad one fails startup, not the first scrape.
    fn load(dir: &Path, provider: Arc<CryptoProvider>) -> Result<Self, CertError> {
        let stamp = stamp(dir);
        let key = read(dir, &provider)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            provider,
            current: Mutex::new(Loaded {
                key: Arc::new(key),
                stamp,
            }),
        })
    }

    fn current(&self) -> Arc<CertifiedKey> {
        let mut loaded = self.current.lock().unwrap_or_else(|p| p.into_inner());
        let now = stamp(&self.dir);
        if now != loaded.stamp {
            // Remembered even when the read fails, so a half-written pair is tried again when it changes
            // again, not on every handshake (and is not logged on every handshake).
            loaded.stamp = now;
            match read(&self.dir, &self.provider) {
                Ok(key) => {
                    tracing::info!(dir = %self.dir.display(), "metrics certificate re-read");
                    loaded.key = Arc::new(key);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "metrics certificate changed but cannot be used; serving the previous one")
                }
            }
        }
        loaded.key.clone()
    }
}

impl ResolvesServerCert for FileCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// Both files' modification times and sizes (following symlinks: a mounted Secret's files are symlinks the
/// kubelet swaps at once).
fn stamp(dir: &Path) -> Stamp {
    let one = |name: &str| {
        let m = std::fs::metadata(dir.join(name)).ok()?;
        Some((m.modified().ok()?, m.len()))
    };
    Some([one(CERT_FILE)?, one(KEY_FILE)?])
}

fn read(dir: &Path, provider: &CryptoProvider) -> Result<CertifiedKey, CertError> {
    let (cert_path, key_path) = (dir.join(CERT_FILE), dir.join(KEY_FILE));
    let certs = match CertificateDer::pem_file_iter(&cert_path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
    {
        Ok(certs) if certs.is_empty() => return Err(CertError::NoCert(cert_path)),
        Ok(certs) => certs,
        Err(source) => {
            return Err(CertError::ReadCert {
                path: cert_path,
                source,
            });
        }
    };
    let Ok(key) = PrivateKeyDer::from_pem_file(&key_path) else {
        return Err(CertError::NoKey(key_path));
    };
    CertifiedKey::from_der(certs, key, provider).map_err(|source| CertError::Pair {
        cert: cert_path,
        key: key_path,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pair(dir: &Path, name: &str) -> Vec<u8> {
        let g = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
        std::fs::write(dir.join(CERT_FILE), g.cert.pem()).unwrap();
        std::fs::write(dir.join(KEY_FILE), g.signing_key.serialize_pem()).unwrap();
        g.cert.der().to_vec()
    }

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("pdso-tls-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_renewed_certificate_is_served_without_a_restart_and_a_broken_one_keeps_the_old() {
        let dir = tmp("renew");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let first = write_pair(&dir, "first.example");
        let certs = FileCert::load(&dir, provider).unwrap();
        assert_eq!(certs.current().cert[0].as_ref(), &first[..]);
        std::thread::sleep(std::time::Duration::from_millis(20));
        let second = write_pair(&dir, "second.example.with.a.longer.name");
        assert_eq!(certs.current().cert[0].as_ref(), &second[..]);
        // A key that does not parse: the previous certificate stays.
        std::fs::write(dir.join(KEY_FILE), "not a key, and longer than before").unwrap();
        assert_eq!(certs.current().cert[0].as_ref(), &second[..]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_missing_or_bad_certificate_fails_at_start_naming_the_file() {
        let dir = tmp("bad");
        let e = server_config(Some(&dir)).unwrap_err();
        assert!(matches!(e, CertError::ReadCert { .. }), "{e:?}");
        assert!(e.to_string().contains(CERT_FILE), "{e}");
        write_pair(&dir, "x.example");
        std::fs::write(dir.join(KEY_FILE), "-----BEGIN PRIVATE KEY-----\nAAAA\n").unwrap();
        let e = server_config(Some(&dir)).unwrap_err();
        assert!(e.to_string().contains(KEY_FILE), "{e}");
        assert!(server_config(None).is_ok(), "self-signed");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
