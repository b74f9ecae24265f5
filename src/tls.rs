//! Server-side TLS for both listeners (rustls, TLS 1.2 and 1.3, ring): the certificate
//! and key from PEM files, optional client certificates verified against a CA bundle,
//! and the verified client's names ([`PeerIdentity`]) handed to the edges.
//!
//! Rotation without a restart: a [`TlsServer`] keeps its rustls configuration in a
//! [`Live`] cell. Every new connection takes the current one; a reload (SIGHUP, the
//! admin route) or a change of the files (their size and modification time, checked
//! every `server.tls.watch_secs`) builds a new configuration from the files and swaps it
//! in. A pair that does not load (unreadable, not PEM, a key that is not the
//! certificate's) changes nothing: the old pair keeps serving and the error is logged.
//! Swapping the whole configuration rather than only the certificate also picks up a
//! rotated client CA bundle.

use crate::config::{ClientAuth, PeerIdentity, TlsSection};
use crate::live::Live;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio_util::sync::CancellationToken;

/// Why a TLS configuration could not be built from its files.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("server.tls: cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("server.tls.cert: {path} holds no PEM certificate")]
    NoCertificate { path: PathBuf },
    #[error("server.tls.key: {path} holds no PEM private key ({why})")]
    NoKey { path: PathBuf, why: String },
    #[error("server.tls: the key {key} does not belong to the certificate {cert}, or is of an unsupported kind: {why}")]
    Pair {
        cert: PathBuf,
        key: PathBuf,
        why: String,
    },
    #[error("server.tls.client_ca: {path}: {why}")]
    ClientCa { path: PathBuf, why: String },
    #[error("server.tls: {0}")]
    Rustls(String),
}

/// What a change of the files is told by: size and modification time of each.
type Stamp = Vec<Option<(u64, SystemTime)>>;

fn stamp(section: &TlsSection) -> Stamp {
    let mut files = vec![&section.cert, &section.key];
    files.extend(section.client_ca.as_ref());
    files
        .into_iter()
        .map(|p| {
            std::fs::metadata(p)
                .ok()
                .and_then(|m| Some((m.len(), m.modified().ok()?)))
        })
        .collect()
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// A rustls server configuration read from the files of `section`.
fn build(section: &TlsSection, alpn: &[&[u8]]) -> Result<rustls::ServerConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cert_pem = read(&section.cert)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|_| TlsError::NoCertificate {
            path: section.cert.clone(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: section.cert.clone(),
        });
    }
    let key_pem = read(&section.key)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::NoKey {
        path: section.key.clone(),
        why: e.to_string(),
    })?;
    // Checks that the key is the certificate's public key's partner.
    let certified = rustls::sign::CertifiedKey::from_der(chain, key, &provider).map_err(|e| {
        TlsError::Pair {
            cert: section.cert.clone(),
            key: section.key.clone(),
            why: e.to_string(),
        }
    })?;
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        // TLS 1.2 is the minimum: rustls implements nothing older.
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    let mode = section.client_auth();
    let builder = match (&section.client_ca, mode) {
        (Some(ca), ClientAuth::Optional | ClientAuth::Required) => {
            let pem = read(ca)?;
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| TlsError::ClientCa {
                    path: ca.clone(),
                    why: format!("not PEM: {e}"),
                })?;
                roots.add(cert).map_err(|e| TlsError::ClientCa {
                    path: ca.clone(),
                    why: e.to_string(),
                })?;
            }
            if roots.is_empty() {
                return Err(TlsError::ClientCa {
                    path: ca.clone(),
                    why: "holds no PEM certificate".into(),
                });
            }
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
            let verifier = if mode == ClientAuth::Optional {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            let verifier = verifier.build().map_err(|e| TlsError::ClientCa {
                path: ca.clone(),
                why: e.to_string(),
            })?;
            builder.with_client_cert_verifier(verifier)
        }
        _ => builder.with_no_client_auth(),
    };
    let resolver = Arc::new(rustls::sign::SingleCertAndKey::from(certified));
    let mut config = builder.with_cert_resolver(resolver);
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// A configuration built and not yet in force (see [`TlsServer::prepare`]).
pub struct Prepared {
    section: TlsSection,
    config: rustls::ServerConfig,
    stamp: Stamp,
}

/// The TLS side of one listener: its current configuration and where it comes from.
pub struct TlsServer {
    /// `"http"` or `"grpc"`, for logs.
    listener: &'static str,
    alpn: Vec<&'static [u8]>,
    config: Live<rustls::ServerConfig>,
    /// The section in force and the stamp of its files when last read.
    source: Mutex<(TlsSection, Stamp)>,
}

/// Why a TLS connection did not start.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("TLS handshake not complete within {0:?}")]
    Timeout(Duration),
    #[error("TLS handshake failed: {0}")]
    Failed(std::io::Error),
}

impl TlsServer {
    /// Reads the files of `section`: any error refuses to start.
    pub fn new(
        listener: &'static str,
        section: &TlsSection,
        alpn: Vec<&'static [u8]>,
    ) -> Result<Arc<TlsServer>, TlsError> {
        let stamp = stamp(section);
        let config = build(section, &alpn)?;
        Ok(Arc::new(TlsServer {
            listener,
            alpn,
            config: Live::new(config),
            source: Mutex::new((section.clone(), stamp)),
        }))
    }

    /// Builds the configuration of `section` (the one in force or a new one) without
    /// putting it in force.
    pub fn prepare(&self, section: &TlsSection) -> Result<Prepared, TlsError> {
        let stamp = stamp(section);
        Ok(Prepared {
            config: build(section, &self.alpn)?,
            section: section.clone(),
            stamp,
        })
    }

    /// Puts a prepared configuration in force for every later connection.
    pub fn install(&self, p: Prepared) {
        self.config.set(p.config);
        tracing::info!(listener = self.listener, cert = %p.section.cert.display(),
            "TLS certificate and key (re)loaded");
        *self.source.lock().unwrap_or_else(|e| e.into_inner()) = (p.section, p.stamp);
    }

    /// Re-reads the files if they changed since they were last read. A pair that does
    /// not load is logged and the old one keeps serving; the same files are not tried
    /// again until they change once more.
    pub fn reload_if_changed(&self) {
        let section = {
            let mut source = self.source.lock().unwrap_or_else(|e| e.into_inner());
            let now = stamp(&source.0);
            if now == source.1 {
                return;
            }
            source.1 = now;
            source.0.clone()
        };
        match self.prepare(&section) {
            Ok(p) => self.install(p),
            Err(e) => {
                metrics::counter!("gateway_tls_reload_failures_total", "listener" => self.listener)
                    .increment(1);
                tracing::error!(listener = self.listener, cert = %section.cert.display(), error = %e,
                    "the changed TLS files do not load; the previous certificate keeps serving");
            }
        }
    }

    /// Checks the files every `server.tls.watch_secs` until `shutdown`.
    pub fn watch(self: Arc<Self>, every: Duration, shutdown: CancellationToken) {
        if every.is_zero() {
            return;
        }
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let me = self.clone();
                let _ = tokio::task::spawn_blocking(move || me.reload_if_changed()).await;
            }
        });
    }

    /// The TLS handshake on an accepted connection, bounded by `limit`. The verified
    /// client certificate's names come with the stream when one was presented.
    pub async fn accept<IO>(
        &self,
        io: IO,
        limit: Duration,
    ) -> Result<
        (
            tokio_rustls::server::TlsStream<IO>,
            Option<Arc<PeerIdentity>>,
        ),
        HandshakeError,
    >
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let acceptor = tokio_rustls::TlsAcceptor::from(self.config.get());
        let stream = tokio::time::timeout(limit, acceptor.accept(io))
            .await
            .map_err(|_| HandshakeError::Timeout(limit))?
            .map_err(HandshakeError::Failed)?;
        let peer = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| Arc::new(identity(c)));
        Ok((stream, peer))
    }

    /// Logs a refused handshake with its reason (an expired certificate, an unknown
    /// issuer, no certificate where one is required, ...).
    pub fn log_refusal(&self, remote: Option<std::net::SocketAddr>, e: &HandshakeError) {
        metrics::counter!("gateway_tls_handshake_failures_total", "listener" => self.listener)
            .increment(1);
        tracing::warn!(listener = self.listener, remote = ?remote, error = %e,
            "TLS connection refused");
    }
}

/// The names of a certificate already verified by rustls (so it parses).
fn identity(cert: &CertificateDer<'_>) -> PeerIdentity {
    use x509_parser::extensions::GeneralName;
    let mut id = PeerIdentity::default();
    let Ok((_, x509)) = x509_parser::parse_x509_certificate(cert.as_ref()) else {
        return id;
    };
    id.common_names = x509
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok().map(str::to_string))
        .collect();
    if let Ok(Some(san)) = x509.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(d) => id.dns.push(d.to_string()),
                GeneralName::URI(u) => id.uris.push(u.to_string()),
                GeneralName::RFC822Name(e) => id.emails.push(e.to_string()),
                _ => {}
            }
        }
    }
    id
}
