//! Prometheus metrics. Every label value is bounded: endpoints and statuses are fixed sets, results are Ready
//! reasons, objects are namespace/name pairs of our own resources. No error text, no secret data.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    endpoint: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ObjectLabels {
    namespace: String,
    name: String,
}

/// Expiry of each synced credential, reported as seconds from now at scrape time.
#[derive(Debug, Default)]
struct ExpiryCollector {
    expiries: Arc<Mutex<BTreeMap<(String, String), Timestamp>>>,
}

impl Collector for ExpiryCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let now = Timestamp::now();
        let snapshot: Vec<_> = match self.expiries.lock() {
            Ok(m) => m.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            Err(_) => return Ok(()),
        };
        let gauge_type = ConstGauge::new(0.0f64).metric_type();
        let mut metric = encoder.encode_descriptor(
            "credentials_expiry_seconds",
            "Seconds until the credentials now in each synced Secret expire (negative: already expired)",
            None,
            gauge_type,
        )?;
        for ((namespace, name), at) in snapshot {
            let labels = ObjectLabels { namespace, name };
            let secs = at.duration_since(now).as_secs_f64();
            ConstGauge::new(secs).encode(metric.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

/// All metrics of the operator.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    syncs: Family<ResultLabels, Counter>,
    requests: Family<RequestLabels, Counter>,
    request_duration: Family<EndpointLabels, Histogram>,
    reconcile_duration: Histogram,
    /// Times a request waited for the client-side rate limiter.
    pub rate_limit_waits: Counter,
    expiries: Arc<Mutex<BTreeMap<(String, String), Timestamp>>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Register every metric under the `pipedream_secrets` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("pipedream_secrets");
        let syncs = Family::<ResultLabels, Counter>::default();
        registry.register(
            "syncs",
            "ConnectedAccount syncs by result (the Ready reason)",
            syncs.clone(),
        );
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "pipedream_requests",
            "Requests to Pipedream by endpoint and HTTP status",
            requests.clone(),
        );
        let request_duration = Family::<EndpointLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.01, 2.0, 12))
        });
        registry.register(
            "pipedream_request_duration_seconds",
            "Latency of requests to Pipedream",
            request_duration.clone(),
        );
        let reconcile_duration = Histogram::new(exponential_buckets(0.005, 2.0, 14));
        registry.register(
            "reconcile_duration_seconds",
            "Duration of ConnectedAccount reconciles",
            reconcile_duration.clone(),
        );
        let rate_limit_waits = Counter::default();
        registry.register(
            "rate_limit_waits",
            "Requests that waited for the per-connection client-side rate limiter",
            rate_limit_waits.clone(),
        );
        let collector = ExpiryCollector::default();
        let expiries = collector.expiries.clone();
        registry.register_collector(Box::new(collector));
        Self {
            registry,
            syncs,
            requests,
            request_duration,
            reconcile_duration,
            rate_limit_waits,
            expiries,
        }
    }

    /// Count one sync outcome.
    pub fn count_sync(&self, result: &str) {
        self.syncs
            .get_or_create(&ResultLabels {
                result: result.to_string(),
            })
            .inc();
    }

    /// Count and time one Pipedream request.
    pub fn observe_request(&self, endpoint: &str, status: &str, elapsed: Duration) {
        self.requests
            .get_or_create(&RequestLabels {
                endpoint: endpoint.into(),
                status: status.into(),
            })
            .inc();
        self.request_duration
            .get_or_create(&EndpointLabels {
                endpoint: endpoint.into(),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// Time one reconcile.
    pub fn observe_reconcile(&self, elapsed: Duration) {
        self.reconcile_duration.observe(elapsed.as_secs_f64());
    }

    /// Record (or clear) the expiry of the credentials synced for one ConnectedAccount.
    pub fn set_expiry(&self, namespace: &str, name: &str, expires_at: Option<Timestamp>) {
        if let Ok(mut m) = self.expiries.lock() {
            let key = (namespace.to_string(), name.to_string());
            match expires_at {
                Some(t) => m.insert(key, t),
                None => m.remove(&key),
            };
        }
    }

    /// OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
