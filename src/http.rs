//! `/healthz`, `/readyz`, `/metrics`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::metrics::Metrics;

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    /// One permit per scrape being encoded or sent.
    scrapes: Arc<Semaphore>,
}

/// Scrapes in flight at once. A scrape's body lives until its client has read it, so clients that ask and never
/// read would otherwise hold one whole scrape each (several MB at 10,000 objects); beyond this they get 503.
pub const MAX_SCRAPES_IN_FLIGHT: usize = 2;

/// The body is sent in pieces of this size, so a scrape's permit is held until its client has read the last one.
const CHUNK: usize = 64 * 1024;

/// The router (exposed for tests).
pub fn router(metrics: Arc<Metrics>, ready: Arc<AtomicBool>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_handler))
        .with_state(AppState {
            metrics,
            ready,
            scrapes: Arc::new(Semaphore::new(MAX_SCRAPES_IN_FLIGHT)),
        })
}

async fn readyz(State(s): State<AppState>) -> impl IntoResponse {
    if s.ready.load(Ordering::SeqCst) {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "caches not synced")
    }
}

async fn metrics_handler(State(s): State<AppState>, headers: HeaderMap) -> Response {
    let Ok(permit) = s.scrapes.clone().try_acquire_owned() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
            "too many scrapes in flight",
        )
            .into_response();
    };
    let gzip = headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(crate::metrics::accepts_gzip);
    // Encoding 10,000 objects takes tens of milliseconds: not on a reconciler's worker thread.
    let metrics = s.metrics.clone();
    let body = tokio::task::spawn_blocking(move || {
        if gzip {
            metrics.encode_gzip()
        } else {
            metrics.encode().into_bytes()
        }
    })
    .await;
    let Ok(body) = body else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let mut response = Body::from_stream(pieces(Bytes::from(body), permit)).into_response();
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

/// `body` in [`CHUNK`]s, holding `permit` until the last one is taken or the client goes away.
fn pieces(
    body: Bytes,
    permit: OwnedSemaphorePermit,
) -> impl futures::Stream<Item = Result<Bytes, std::convert::Infallible>> {
    futures::stream::unfold((body, permit), |(mut rest, permit)| async move {
        if rest.is_empty() {
            return None;
        }
        let piece = rest.split_to(rest.len().min(CHUNK));
        Some((Ok(piece), (rest, permit)))
    })
}

/// Serve until `shutdown` resolves.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "serving /healthz, /readyz and /metrics");
    axum::serve(listener, router(metrics, ready))
        .with_graceful_shutdown(shutdown)
        .await
}
