//! A corporate egress proxy in miniature: HTTP `CONNECT` tunnels (what clients use for `https://` targets) and
//! absolute-form requests (`GET http://host/path`, what they use for `http://` targets), forwarded as bytes. It
//! records the target of the first request of each connection, so a test can tell which requests went through it.
//! [`TlsFront`] plays the other half of a TLS-inspecting proxy: HTTPS under a CA of its own.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A running proxy; it stops when dropped.
pub struct EgressProxy {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for EgressProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl EgressProxy {
    /// Listen on an ephemeral loopback port.
    pub async fn start() -> std::io::Result<Self> {
        Self::start_resolving("127.0.0.1:0".parse().expect("an address"), HashMap::new()).await
    }

    /// Listen on `listen`, and send targets named in `hosts` (`host:port`) to the address given there instead of
    /// resolving them: a proxy with a DNS view of its own, which is how a test reaches "api.pipedream.com".
    pub async fn start_resolving(
        listen: SocketAddr,
        hosts: HashMap<String, SocketAddr>,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let log = seen.clone();
        let hosts = Arc::new(hosts);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (log, hosts) = (log.clone(), hosts.clone());
                tokio::spawn(async move {
                    let _ = serve(client, log, &hosts).await;
                });
            }
        });
        Ok(Self { addr, seen, task })
    }

    /// `http://127.0.0.1:<port>`, for `HTTPS_PROXY` / `HTTP_PROXY`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `CONNECT host:port` or `GET http://host:port/path`, one per proxied connection, in order.
    pub fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

async fn connect(target: &str, hosts: &HashMap<String, SocketAddr>) -> std::io::Result<TcpStream> {
    match hosts.get(target) {
        Some(addr) => TcpStream::connect(addr).await,
        None => TcpStream::connect(target).await,
    }
}

async fn serve(
    mut client: TcpStream,
    log: Arc<Mutex<Vec<String>>>,
    hosts: &HashMap<String, SocketAddr>,
) -> std::io::Result<()> {
    // The request head: up to the blank line (16 KiB at most).
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = client.read(&mut buf).await?;
        if n == 0 || head.len() > 16 * 1024 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head[..head.iter().position(|b| *b == b'\r').unwrap_or(0)])
        .to_string();
    let mut parts = line.split(' ');
    let (method, target) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    log.lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(format!("{method} {target}"));
    if method == "CONNECT" {
        let mut upstream = connect(target, hosts).await?;
        client
            .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
            .await?;
        tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
        return Ok(());
    }
    // Absolute form: connect to its authority and pass the request on as it came (servers accept the absolute
    // form), then relay both ways.
    let authority = target
        .strip_prefix("http://")
        .and_then(|rest| rest.split('/').next())
        .unwrap_or_default()
        .to_string();
    let mut upstream = connect(&authority, hosts).await?;
    upstream.write_all(&head).await?;
    tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
    Ok(())
}

/// A TLS front for a plain-HTTP server (the fake Pipedream): HTTPS on loopback with a certificate for `127.0.0.1`
/// from a CA of its own, which no system trusts, relaying the decrypted bytes to `upstream`. What a
/// TLS-inspecting egress proxy looks like to a client: a certificate only its CA vouches for.
pub struct TlsFront {
    addr: SocketAddr,
    ca_pem: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TlsFront {
    /// Listen on an ephemeral loopback port, relaying to `upstream` (`host:port`).
    pub async fn start(upstream: &str) -> Result<Self, String> {
        Self::start_for(upstream, "127.0.0.1").await
    }

    /// As [`Self::start`], with a certificate for `host` (a DNS name or an IP address).
    pub async fn start_for(upstream: &str, host: &str) -> Result<Self, String> {
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
        let (ca_pem, cert, key) =
            crate::certs::ca_and_serving("corporate-egress-ca", host, &[host])?;
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from(cert.der().to_vec())],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .map_err(|e| e.to_string())?;
        let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| e.to_string())?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let upstream = upstream.to_string();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (acceptor, upstream) = (acceptor.clone(), upstream.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(client).await else {
                        return;
                    };
                    let Ok(mut plain) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                });
            }
        });
        Ok(Self { addr, ca_pem, task })
    }

    /// `https://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The CA that signed its certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }
}
