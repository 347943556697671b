//! A tower layer on the Kubernetes client that counts and times every request to the API server by method and
//! HTTP code (`kubernetes_requests_total`, `kubernetes_request_duration_seconds`), as client-go's
//! `rest_client_requests_total` does.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use futures::future::BoxFuture;

use super::Metrics;

/// The layer: `kube::client::ClientBuilder::with_layer(&KubeRequestMetrics::new(metrics))`.
#[derive(Clone)]
pub struct KubeRequestMetrics(Arc<Metrics>);

impl KubeRequestMetrics {
    /// Count into `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self(metrics)
    }
}

impl<S> tower::Layer<S> for KubeRequestMetrics {
    type Service = Counted<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Counted {
            inner,
            metrics: self.0.clone(),
        }
    }
}

/// The wrapped service.
#[derive(Clone)]
pub struct Counted<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

/// A bounded label for the method.
fn method_label(m: &http::Method) -> &'static str {
    match *m {
        http::Method::GET => "GET",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::PATCH => "PATCH",
        http::Method::DELETE => "DELETE",
        _ => "OTHER",
    }
}

impl<S, B, R> tower::Service<http::Request<B>> for Counted<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let method = method_label(req.method());
        let metrics = self.metrics.clone();
        let started = Instant::now();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let result = fut.await;
            let code = result.as_ref().ok().map(|r| r.status().as_u16());
            metrics.observe_kube_request(method, code, started.elapsed());
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::{Layer, Service, ServiceExt};

    #[tokio::test]
    async fn every_request_is_counted_by_method_and_code() {
        let metrics = Arc::new(Metrics::new());
        let inner = tower::service_fn(|req: http::Request<()>| async move {
            let code = if req.method() == http::Method::PATCH {
                409
            } else {
                200
            };
            Ok::<_, std::convert::Infallible>(
                http::Response::builder().status(code).body(()).unwrap(),
            )
        });
        let mut svc = KubeRequestMetrics::new(metrics.clone()).layer(inner);
        for m in [http::Method::GET, http::Method::GET, http::Method::PATCH] {
            let req = http::Request::builder().method(m).body(()).unwrap();
            svc.ready().await.unwrap().call(req).await.unwrap();
        }
        let text = metrics.encode();
        assert!(
            text.contains(
                "pipedream_secrets_kubernetes_requests_total{method=\"GET\",code=\"200\"} 2"
            ),
            "{text}"
        );
        assert!(text.contains(
            "pipedream_secrets_kubernetes_requests_total{method=\"PATCH\",code=\"409\"} 1"
        ));
        assert!(text.contains(
            "pipedream_secrets_kubernetes_request_duration_seconds_count{method=\"GET\"} 2"
        ));
    }
}
