//! `/healthz`, `/readyz`, `/metrics`.
//!
//! By default one plain-HTTP listener (`--metrics-addr`) answers all three. With `--metrics-secure`, `/metrics`
//! is served over HTTPS to authenticated and authorized clients only (see [`auth`]), and the probes move to a
//! plain-HTTP listener of their own (`--health-addr`), as controller-runtime separates its metrics and
//! health-probe servers: the kubelet probes without a token, and probes reveal nothing.
//!
//! Connections are served by a loop of our own rather than `axum::serve`, because only the task that owns a
//! connection can drop it: a scrape that its client stops reading loses its connection (and so its slot and its
//! body) after [`SCRAPE_DEADLINE`].

pub mod auth;
pub mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::metrics::Metrics;

/// Scrapes in flight at once. A scrape's body lives until its client has read it, so clients that ask and never
/// read would otherwise hold one whole scrape each (several MB at 10,000 objects); beyond this they get 503.
pub const MAX_SCRAPES_IN_FLIGHT: usize = 2;

/// How long a scrape may take from taking its slot to handing over its last piece; then its connection is
/// dropped, and with it the slot and the body. Without it, two clients that ask and never read would hold both
/// slots for as long as they keep their connections open. 10 s is Prometheus's default `scrape_timeout`: a
/// Prometheus that has not read a scrape by then has given up on it. Sending one takes milliseconds otherwise
/// (10,000 objects are about 600 KB gzipped).
pub const SCRAPE_DEADLINE: Duration = Duration::from_secs(10);

/// How long a connection may take to send a request's headers, and how long a kept-alive connection may sit idle
/// before its next request. Requests are a few hundred bytes; connections a client opens and leaves idle would
/// otherwise cost a task and buffers each, indefinitely.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a TLS handshake may take (the same reasoning as [`HEADER_READ_TIMEOUT`]).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone)]
struct ScrapeState {
    metrics: Arc<Metrics>,
    /// One permit per scrape being encoded or sent.
    scrapes: Arc<Semaphore>,
    /// With `--metrics-secure`: who may scrape.
    gate: Option<Arc<auth::Gate>>,
}

/// The plain router with all three paths, no authentication (the default server; exposed for tests).
pub fn router(metrics: Arc<Metrics>, ready: Arc<AtomicBool>) -> Router {
    metrics_routes(metrics, None).merge(health_router(ready))
}

/// `/healthz` and `/readyz` alone.
pub fn health_router(ready: Arc<AtomicBool>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(ready)
}

/// `/metrics` alone, every request checked by `gate` before it may take a scrape slot (so clients that are not
/// allowed can never hold one).
pub fn secure_metrics_router(metrics: Arc<Metrics>, gate: Arc<auth::Gate>) -> Router {
    metrics_routes(metrics, Some(gate))
}

fn metrics_routes(metrics: Arc<Metrics>, gate: Option<Arc<auth::Gate>>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .with_state(ScrapeState {
            metrics,
            scrapes: Arc::new(Semaphore::new(MAX_SCRAPES_IN_FLIGHT)),
            gate,
        })
}

async fn readyz(State(ready): State<Arc<AtomicBool>>) -> impl IntoResponse {
    if ready.load(Ordering::SeqCst) {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "caches not synced")
    }
}

async fn metrics_handler(State(s): State<ScrapeState>, request: Request) -> Response {
    let headers = request.headers();
    if let Some(gate) = &s.gate
        && let Err(refused) = gate.check(headers).await
    {
        return refused;
    }
    let Ok(permit) = s.scrapes.clone().try_acquire_owned() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
            "too many scrapes in flight",
        )
            .into_response();
    };
    let deadline = request.extensions().get::<ConnectionDeadline>().cloned();
    if let Some(d) = &deadline {
        d.arm(Instant::now() + SCRAPE_DEADLINE);
    }
    let slot = Slot {
        _permit: permit,
        deadline,
    };
    let gzip = accepts_gzip(headers);
    // Encoding 10,000 objects takes hundreds of milliseconds: not on a reconciler's worker thread. The body goes out in
    // pieces as it is made, so a scrape read as it comes never holds its whole body. The encoder never waits for
    // the client: it holds the metric families' locks, which the reconcilers take too. A client that reads slowly
    // makes the pieces wait (at most the whole body, for SCRAPE_DEADLINE, MAX_SCRAPES_IN_FLIGHT at once); one that
    // is gone ends the encoding.
    let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
    let metrics = s.metrics.clone();
    tokio::task::spawn_blocking(move || {
        metrics.encode_to(gzip, |piece| tx.send(Bytes::from(piece)).is_ok())
    });
    let mut response = Body::from_stream(pieces(rx, slot)).into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    h.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    if gzip {
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    response
}

fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(crate::metrics::accepts_gzip)
}

/// A scrape in progress: its slot, and its connection's deadline, disarmed when the scrape ends (its last piece
/// taken, or its body dropped).
struct Slot {
    _permit: OwnedSemaphorePermit,
    deadline: Option<ConnectionDeadline>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(d) = &self.deadline {
            d.disarm();
        }
    }
}

/// The pieces of a body as they are made, holding `slot` until the last one is taken or the client goes away.
fn pieces(
    rx: mpsc::UnboundedReceiver<Bytes>,
    slot: Slot,
) -> impl futures::Stream<Item = Result<Bytes, std::convert::Infallible>> {
    futures::stream::unfold((rx, slot), |(mut rx, slot)| async move {
        let piece = rx.recv().await?;
        Some((Ok(piece), (rx, slot)))
    })
}

/// The instant a connection is dropped at, set by the scrape it is answering. The connection loop puts one into
/// every request's extensions.
#[derive(Clone)]
struct ConnectionDeadline(Arc<watch::Sender<Option<Instant>>>);

impl ConnectionDeadline {
    fn arm(&self, at: Instant) {
        self.0.send_replace(Some(at));
    }

    fn disarm(&self) {
        self.0.send_replace(None);
    }
}

/// Resolves once the armed deadline passes (never while disarmed).
async fn deadline_passed(rx: &mut watch::Receiver<Option<Instant>>) {
    loop {
        let armed = *rx.borrow_and_update();
        let changed = match armed {
            Some(at) => tokio::select! {
                () = tokio::time::sleep_until(at) => return,
                changed = rx.changed() => changed,
            },
            None => rx.changed().await,
        };
        if changed.is_err() {
            // The connection is gone.
            return std::future::pending().await;
        }
    }
}

/// Serve `app` on `listener` (over TLS with `tls`) until `shutdown` resolves; then stop accepting. Connections
/// still open end on their own terms: a scrape within its deadline, an idle one within the header timeout.
pub async fn serve_on(
    listener: TcpListener,
    app: Router,
    tls: Option<TlsAcceptor>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            () = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, or a connection reset before it was accepted: try again shortly.
                    tracing::debug!(error = %e, "accepting a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        tokio::spawn(connection(stream, app.clone(), tls.clone()));
    }
}

async fn connection(stream: TcpStream, app: Router, tls: Option<TlsAcceptor>) {
    let _ = stream.set_nodelay(true);
    match tls {
        None => drive(TokioIo::new(stream), app).await,
        Some(acceptor) => {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(stream)) => drive(TokioIo::new(stream), app).await,
                // Includes plain HTTP sent to the HTTPS port: the connection is closed.
                Ok(Err(e)) => tracing::debug!(error = %e, "metrics TLS handshake failed"),
                Err(_) => tracing::debug!("metrics TLS handshake timed out"),
            }
        }
    }
}

async fn drive<I>(io: I, app: Router)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (tx, mut rx) = watch::channel(None);
    let deadline = ConnectionDeadline(Arc::new(tx));
    let service = hyper::service::service_fn(move |mut request: hyper::Request<_>| {
        request.extensions_mut().insert(deadline.clone());
        app.clone().oneshot(request.map(Body::new))
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let conn = builder.serve_connection(io, service);
    tokio::select! {
        done = conn => if let Err(e) = done {
            tracing::debug!(error = %e, "metrics connection ended");
        },
        () = deadline_passed(&mut rx) => {
            tracing::debug!(deadline = ?SCRAPE_DEADLINE, "a scrape was not read within its deadline; connection dropped");
        }
    }
}

/// How `run` serves its HTTP endpoints (from its flags).
#[derive(Clone, Debug)]
pub struct Endpoints {
    /// `--metrics-addr`.
    pub metrics_addr: SocketAddr,
    /// `--health-addr`: the probes' own plain listener.
    pub health_addr: Option<SocketAddr>,
    /// `--metrics-secure`.
    pub secure: bool,
    /// `--metrics-cert-dir`.
    pub cert_dir: Option<PathBuf>,
}

/// Listeners bound and certificates read, ready to serve: done before the controllers start, so a taken port or
/// an unusable certificate stops `run` at once with a clear message.
pub struct Servers {
    metrics: (TcpListener, Router, Option<TlsAcceptor>),
    health: Option<(TcpListener, Router)>,
}

/// Why the metrics and health servers cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("--metrics-cert-dir is only used with --metrics-secure")]
    CertDirWithoutSecure,
    #[error(
        "--metrics-secure serves only /metrics, over HTTPS: give --health-addr for /healthz and /readyz (plain HTTP, for the kubelet's probes)"
    )]
    SecureWithoutHealth,
    #[error(transparent)]
    Certificate(#[from] tls::CertError),
    #[error("cannot listen on {addr} for {what}: {source}")]
    Listen {
        addr: SocketAddr,
        what: &'static str,
        source: std::io::Error,
    },
}

impl Endpoints {
    /// Flags that do not fit together, found before anything else starts.
    pub fn validate(&self) -> Result<(), ServeError> {
        if self.cert_dir.is_some() && !self.secure {
            return Err(ServeError::CertDirWithoutSecure);
        }
        if self.secure && self.health_addr.is_none() {
            return Err(ServeError::SecureWithoutHealth);
        }
        Ok(())
    }
}

impl Servers {
    /// Bind and prepare. `client` reviews the tokens of secure scrapes.
    pub async fn bind(
        endpoints: &Endpoints,
        metrics: Arc<Metrics>,
        ready: Arc<AtomicBool>,
        client: kube::Client,
    ) -> Result<Self, ServeError> {
        endpoints.validate()?;
        let (app, tls) = if endpoints.secure {
            let tls = tls::server_config(endpoints.cert_dir.as_deref())?;
            let gate = Arc::new(auth::Gate::new(Arc::new(auth::KubeReviewer::new(client))));
            (
                secure_metrics_router(metrics, gate),
                Some(TlsAcceptor::from(tls)),
            )
        } else {
            (router(metrics, ready.clone()), None)
        };
        let bind = |addr: SocketAddr, what: &'static str| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| ServeError::Listen { addr, what, source })
        };
        let metrics_listener = bind(endpoints.metrics_addr, "/metrics").await?;
        let health = match endpoints.health_addr {
            Some(addr) => Some((
                bind(addr, "/healthz and /readyz").await?,
                health_router(ready),
            )),
            None => None,
        };
        Ok(Self {
            metrics: (metrics_listener, app, tls),
            health,
        })
    }

    /// Serve until `shutdown` resolves.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Clone + Send + 'static) {
        let (listener, app, tls) = self.metrics;
        let scheme = if tls.is_some() { "https" } else { "http" };
        if let Ok(addr) = listener.local_addr() {
            match &self.health {
                Some((health, _)) => {
                    let health = health.local_addr().ok();
                    tracing::info!(%addr, scheme, ?health, "serving /metrics; /healthz and /readyz on the health address")
                }
                None => tracing::info!(%addr, scheme, "serving /healthz, /readyz and /metrics"),
            }
        }
        let health = self
            .health
            .map(|(listener, app)| tokio::spawn(serve_on(listener, app, None, shutdown.clone())));
        serve_on(listener, app, tls, shutdown).await;
        if let Some(h) = health {
            let _ = h.await;
        }
    }
}
