//! Prometheus metrics, following cert-manager's and External Secrets' conventions: absolute timestamps per object
//! (true whenever scraped), a ready gauge per condition status, counters by result, and controller-style process
//! metrics.
//!
//! The per-ConnectedAccount series are read off the operator's cache of ConnectedAccounts at scrape time, from
//! their status, as cert-manager's `certmanager_certificate_ready_status` is: every object has its series from the
//! moment it is cached, including right after a restart, and they go when it does.
//!
//! Every label value is bounded: endpoints, statuses, results, reasons and error kinds come from fixed lists;
//! objects are namespace/name pairs of our own resources (one series per object, removed when it is deleted). No
//! error text, no secret data.
//!
//! (Over 400 lines: every family is declared in one registry, so names, types and label sets read as the
//! documented table.)

mod kube_layer;
mod process;
mod scrape;

pub use kube_layer::KubeRequestMetrics;
pub use scrape::accepts_gzip;

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use crate::identity::ConnectionId;

/// The git commit the binary was built from (`unknown` outside a checkout).
pub const GIT_COMMIT: &str = env!("PDSO_GIT_COMMIT");

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    endpoint: &'static str,
    status: &'static str,
}

/// The shard a replica serves (`0` unsharded): a shard whose replicas are all standbys is visible by its label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ShardLabels {
    shard: u32,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    endpoint: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    error: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ControllerLabels {
    controller: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReconcileLabels {
    controller: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KubeLabels {
    method: &'static str,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RetryLabels {
    endpoint: &'static str,
    cause: &'static str,
}

/// The controllers, as the `controller` label names them.
pub const CONTROLLERS: [&str; 2] = ["connectedaccount", "connection"];
/// Pipedream endpoints, as the `endpoint` label names them.
pub const ENDPOINTS: [&str; 4] = ["token", "connect_account", "account", "account_credentials"];
/// Why a Pipedream request was sent again: a 401 answered with a new token, or a transient failure.
pub const RETRY_CAUSES: [&str; 2] = ["reauth", "transient"];

/// Labels of a connection: kind, namespace (empty for a ClusterPipedreamConnection), name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]

pub struct ConnectionLabels {
    kind: &'static str,
    namespace: String,
    name: String,
}

impl From<&ConnectionId> for ConnectionLabels {
    fn from(id: &ConnectionId) -> Self {
        Self {
            kind: id.kind.as_str(),
            namespace: id.namespace.clone().unwrap_or_default(),
            name: id.name.clone(),
        }
    }
}

/// The values of a Ready condition's status.
pub const CONDITION_STATUSES: [&str; 3] = ["True", "False", "Unknown"];

/// What the metrics show about one ConnectedAccount, read off its status (borrowed from the cached object: a scrape
/// of 10,000 objects copies none of them).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ObjectView<'a> {
    /// Namespace.
    pub namespace: &'a str,
    /// Name.
    pub name: &'a str,
    /// Ready's status: `True`, `False`, or `Unknown` (no Ready condition yet).
    pub ready: &'static str,
    /// Ready's reason (`Pending` before the first pass reports one). Bounded: the reasons the operator writes.
    pub reason: &'a str,
    /// Expiry of the credentials in its Secret.
    pub expires_at: Option<Timestamp>,
    /// When it is fetched next.
    pub next_sync: Option<Timestamp>,
    /// Last time its Secret was written or confirmed against Pipedream.
    pub last_sync: Option<Timestamp>,
    /// Its `PodsAtRisk` condition: pods may read expired credentials (absent before the first judgement).
    pub pods_at_risk: Option<bool>,
    /// How long before the replaced credentials expired the last new ones were written (seconds).
    pub refresh_lead_seconds: Option<i64>,
    /// The connection it uses, as `status.connection` names it (`Kind/name`; a PipedreamConnection is in the
    /// object's namespace): labels `connection_kind` and `connection_name` on its series, as cert-manager's
    /// `issuer_kind`/`issuer_name`. Absent before the first pass resolves one.
    pub connection: Option<(&'a str, &'a str)>,
    /// Passes of this process that synced it (wrote or confirmed its Secret) and that failed.
    pub syncs: SyncCounts,
}

/// Per-object outcome counts of this process (a counter per object; reset when the process restarts).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncCounts {
    /// Passes that wrote or confirmed the Secret.
    pub succeeded: u32,
    /// Passes that failed (the Secret kept its data).
    pub failed: u32,
}

/// Visits every cached ConnectedAccount: calls its argument once per object.
type EachObject<'a> = dyn Fn(&mut dyn FnMut(ObjectView<'_>)) + 'a;
type ObjectSource = Box<dyn Fn(&mut dyn FnMut(ObjectView<'_>)) + Send + Sync>;

#[derive(Clone, Copy, Debug, Default)]
struct ConnectionGauges {
    ready: Option<bool>,
    token_expires_at: Option<Timestamp>,
}

/// Queue figures of one connection's fetch dispatcher.
#[derive(Clone, Debug)]
pub struct QueueStats {
    /// The connection.
    pub id: ConnectionId,
    /// Requests waiting.
    pub queued: usize,
    /// Requests in flight.
    pub in_flight: usize,
}

type Source<T> = Mutex<Option<Box<dyn Fn() -> T + Send + Sync>>>;

#[derive(Default)]
struct State {
    objects: Mutex<Option<ObjectSource>>,
    connections: Mutex<BTreeMap<ConnectionLabels, ConnectionGauges>>,
    queues: Source<Vec<QueueStats>>,
    due: Source<i64>,
    cache: Source<(usize, usize)>,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("State")
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn secs(t: Timestamp) -> f64 {
    t.as_millisecond() as f64 / 1000.0
}

fn gauge<S: EncodeLabelSet>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (S, f64)>,
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, ConstGauge::new(0.0f64).metric_type())?;
    for (labels, v) in rows {
        ConstGauge::new(v).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

/// Writes one series of a family: its labels and value.
type Row<'r> = dyn FnMut(&[(&str, &str)], f64) -> Result<(), std::fmt::Error> + 'r;

/// A gauge family with `rows` series per object, written as the objects are visited (nothing is collected first).
fn object_gauge(
    enc: &mut DescriptorEncoder,
    each: &EachObject<'_>,
    name: &str,
    help: &str,
    rows: impl Fn(&ObjectView<'_>, &mut Row<'_>) -> Result<(), std::fmt::Error>,
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, ConstGauge::new(0.0f64).metric_type())?;
    let mut result = Ok(());
    each(&mut |o| {
        if result.is_ok() {
            result = rows(&o, &mut |labels, v| {
                with_connection(&o, labels, |all| {
                    ConstGauge::new(v).encode(m.encode_family(&all)?)
                })
            });
        }
    });
    result
}

/// `labels` and the object's connection labels (at most [`MAX_OBJECT_LABELS`] in all), without allocating.
fn with_connection<T>(
    o: &ObjectView<'_>,
    labels: &[(&str, &str)],
    f: impl FnOnce(&[(&str, &str)]) -> T,
) -> T {
    let mut all = [("", ""); MAX_OBJECT_LABELS];
    let n = labels.len().min(MAX_OBJECT_LABELS - 2);
    all[..n].copy_from_slice(&labels[..n]);
    match o.connection {
        Some((kind, name)) => {
            all[n] = ("connection_kind", kind);
            all[n + 1] = ("connection_name", name);
            f(&all[..n + 2])
        }
        None => f(&all[..n]),
    }
}

/// Labels of a per-object series: namespace, name, one of its own, and the two of its connection.
const MAX_OBJECT_LABELS: usize = 5;

#[derive(Debug)]
struct StateCollector(Arc<State>);

impl Collector for StateCollector {
    /// Long because it is a table: one call per per-object metric family, in the order they are exposed.
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let state = &self.0;
        let objects = lock(&state.objects);
        let each = |f: &mut dyn FnMut(ObjectView<'_>)| {
            if let Some(source) = objects.as_ref() {
                source(f);
            }
        };
        let timestamp = |at: fn(&ObjectView<'_>) -> Option<Timestamp>| {
            move |o: &ObjectView<'_>, row: &mut Row<'_>| match at(o) {
                Some(t) => row(&[("namespace", o.namespace), ("name", o.name)], secs(t)),
                None => Ok(()),
            }
        };
        object_gauge(
            &mut enc,
            &each,
            "connectedaccount_credentials_expiration_timestamp_seconds",
            "Expiry of the credentials in each ConnectedAccount's Secret (Unix seconds; absent when they do not expire)",
            timestamp(|o| o.expires_at),
        )?;
        object_gauge(
            &mut enc,
            &each,
            "connectedaccount_next_sync_timestamp_seconds",
            "When each ConnectedAccount is fetched from Pipedream next (Unix seconds)",
            timestamp(|o| o.next_sync),
        )?;
        object_gauge(
            &mut enc,
            &each,
            "connectedaccount_last_sync_timestamp_seconds",
            "Last time each ConnectedAccount's Secret was written or confirmed against Pipedream (Unix seconds)",
            timestamp(|o| o.last_sync),
        )?;
        object_gauge(
            &mut enc,
            &each,
            "connectedaccount_ready_status",
            "The status of each ConnectedAccount's Ready condition: 1 on the series of its current status (True, False or Unknown), 0 on the others",
            |o, row| {
                for c in CONDITION_STATUSES {
                    let labels = [
                        ("namespace", o.namespace),
                        ("name", o.name),
                        ("condition", c),
                    ];
                    row(&labels, if c == o.ready { 1.0 } else { 0.0 })?;
                }
                Ok(())
            },
        )?;
        object_gauge(
            &mut enc,
            &each,
            "connectedaccount_pods_at_risk",
            "1 when pods may read expired credentials from the ConnectedAccount's Secret (Pipedream refreshes, or the last new credentials were written, less than the propagation time before expiry), else 0",
            |o, row| match o.pods_at_risk {
                Some(r) => row(
                    &[("namespace", o.namespace), ("name", o.name)],
                    if r { 1.0 } else { 0.0 },
                ),
                None => Ok(()),
            },
        )?;
        object_gauge(
            &mut enc,
            &each,
            "connectedaccount_refresh_lead_seconds",
            "How long before the credentials they replaced expired the last new credentials were written into each ConnectedAccount's Secret (seconds); pods need at least the propagation time",
            |o, row| match o.refresh_lead_seconds {
                Some(l) => row(&[("namespace", o.namespace), ("name", o.name)], l as f64),
                None => Ok(()),
            },
        )?;
        object_gauge(
            &mut enc,
            &each,
            "connectedaccount_ready_reason",
            "1 per ConnectedAccount, labelled with its Ready reason (SecretSynced, or why not)",
            |o, row| {
                let labels = [
                    ("namespace", o.namespace),
                    ("name", o.name),
                    ("reason", o.reason),
                ];
                row(&labels, 1.0)
            },
        )?;
        {
            let mut m = enc.encode_descriptor(
                "connectedaccount_syncs",
                "Passes of this replica that synced each ConnectedAccount (result success: its Secret written or confirmed against Pipedream) or failed (result failure; the Secret kept its data), from 0 for every cached object",
                None,
                ConstCounter::new(0u64).metric_type(),
            )?;
            let mut result = Ok(());
            each(&mut |o| {
                for (r, n) in [("success", o.syncs.succeeded), ("failure", o.syncs.failed)] {
                    if result.is_ok() {
                        let labels = [("namespace", o.namespace), ("name", o.name), ("result", r)];
                        result = with_connection(&o, &labels, |all| {
                            ConstCounter::new(u64::from(n)).encode(m.encode_family(&all)?)
                        });
                    }
                }
            });
            result?;
        }
        drop(objects);
        let conns: Vec<(ConnectionLabels, ConnectionGauges)> = lock(&state.connections)
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        gauge(
            &mut enc,
            "connection_ready",
            "1 when the operator can authenticate to Pipedream with the connection, 0 when not",
            conns
                .iter()
                .filter_map(|(k, c)| Some((k.clone(), if c.ready? { 1.0 } else { 0.0 }))),
        )?;
        gauge(
            &mut enc,
            "connection_token_expiration_timestamp_seconds",
            "Expiry of the connection's current Pipedream OAuth token (Unix seconds)",
            conns
                .iter()
                .filter_map(|(k, c)| Some((k.clone(), secs(c.token_expires_at?)))),
        )?;
        let queues = lock(&state.queues)
            .as_ref()
            .map(|f| f())
            .unwrap_or_default();
        gauge(
            &mut enc,
            "connection_fetch_queue_depth",
            "Fetches waiting in each connection's queue (rate limit, in-flight cap or Retry-After)",
            queues
                .iter()
                .map(|q| (ConnectionLabels::from(&q.id), q.queued as f64)),
        )?;
        gauge(
            &mut enc,
            "connection_fetches_in_flight",
            "Fetches in flight per connection",
            queues
                .iter()
                .map(|q| (ConnectionLabels::from(&q.id), q.in_flight as f64)),
        )?;
        let due = lock(&state.due).as_ref().map_or(0, |f| f());
        let m = enc.encode_descriptor(
            "reconcile_queue_depth",
            "ConnectedAccounts whose reconcile is due or waiting for a fetch",
            None,
            ConstGauge::new(0i64).metric_type(),
        )?;
        ConstGauge::new(due).encode(m)?;
        let (bytes, entries) = lock(&state.cache).as_ref().map_or((0, 0), |f| f());
        let m = enc.encode_descriptor(
            "credentials_cache_bytes",
            "Bytes of Pipedream answers held in memory (bounded; answers for accounts no ConnectedAccount uses are dropped)",
            None,
            ConstGauge::new(0i64).metric_type(),
        )?;
        ConstGauge::new(bytes as i64).encode(m)?;
        let m = enc.encode_descriptor(
            "credentials_cache_entries",
            "Accounts whose last Pipedream answer is held in memory",
            None,
            ConstGauge::new(0i64).metric_type(),
        )?;
        ConstGauge::new(entries as i64).encode(m)?;
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
    reconcile_duration: Family<ControllerLabels, Histogram>,
    reconciles: Family<ReconcileLabels, Counter>,
    reconcile_errors: Family<ErrorLabels, Counter>,
    kube_requests: Family<KubeLabels, Counter>,
    kube_request_duration: Family<MethodLabels, Histogram>,
    pipedream_retries: Family<RetryLabels, Counter>,
    rate_limit_waits: Family<ConnectionLabels, Counter>,
    rate_limit_wait_seconds: Family<ConnectionLabels, Counter<f64, AtomicU64>>,
    in_flight: Gauge,
    leader: Family<ShardLabels, Gauge>,
    state: Arc<State>,
    /// Length of the last plain-text scrape (the next one's buffer starts that large).
    last_scrape_len: std::sync::atomic::AtomicUsize,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Decrements the in-flight gauge when a reconcile ends.
pub struct InFlight<'a>(&'a Gauge);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Metrics {
    /// Register every metric under the `pipedream_secrets` prefix.
    ///
    /// Long because it is a table: one registration per metric family, so every name, help text and type is in
    /// one place.
    pub fn new() -> Self {
        let mut root = Registry::default();
        root.register_collector(Box::new(process::ProcessCollector));
        let r = root.sub_registry_with_prefix("pipedream_secrets");
        r.register(
            "build",
            "Version and commit of the running operator",
            Info::new(vec![
                ("version", env!("CARGO_PKG_VERSION")),
                ("commit", GIT_COMMIT),
            ]),
        );
        let syncs = Family::<ResultLabels, Counter>::default();
        r.register(
            "syncs",
            "ConnectedAccount syncs by result (SecretSynced or the failing Ready reason)",
            syncs.clone(),
        );
        let requests = Family::<RequestLabels, Counter>::default();
        r.register(
            "pipedream_requests",
            "Requests to Pipedream by endpoint and HTTP status (error: no answer)",
            requests.clone(),
        );
        let request_duration = Family::<EndpointLabels, Histogram>::new_with_constructor(|| {
            // Up to 40.96 s: past the default 30 s request timeout, so a timeout lands in a finite bucket.
            Histogram::new(exponential_buckets(0.01, 2.0, 13))
        });
        r.register(
            "pipedream_request_duration_seconds",
            "Latency of requests to Pipedream",
            request_duration.clone(),
        );
        let reconcile_duration =
            Family::<ControllerLabels, Histogram>::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.005, 2.0, 14))
            });
        r.register(
            "reconcile_duration_seconds",
            "Duration of reconciles, by controller (connectedaccount, connection)",
            reconcile_duration.clone(),
        );
        let reconciles = Family::<ReconcileLabels, Counter>::default();
        r.register(
            "reconciles",
            "Reconciles by controller and result (success, error: a Kubernetes API failure)",
            reconciles.clone(),
        );
        let kube_requests = Family::<KubeLabels, Counter>::default();
        r.register(
            "kubernetes_requests",
            "Requests to the Kubernetes API server by method and HTTP code (error: no answer)",
            kube_requests.clone(),
        );
        let kube_request_duration = Family::<MethodLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 2.0, 16))
        });
        r.register(
            "kubernetes_request_duration_seconds",
            "Time until the API server's response headers (for a watch: until it starts)",
            kube_request_duration.clone(),
        );
        let pipedream_retries = Family::<RetryLabels, Counter>::default();
        r.register(
            "pipedream_retries",
            "Pipedream requests sent again within one fetch: after a 401 with a fresh token (reauth) or a transient failure",
            pipedream_retries.clone(),
        );
        let reconcile_errors = Family::<ErrorLabels, Counter>::default();
        r.register(
            "reconcile_errors",
            "Reconciles ended by a Kubernetes API failure, by the failed action",
            reconcile_errors.clone(),
        );
        let rate_limit_waits = Family::<ConnectionLabels, Counter>::default();
        r.register(
            "rate_limit_waits",
            "Requests that waited for the connection's client-side rate limiter",
            rate_limit_waits.clone(),
        );
        let rate_limit_wait_seconds =
            Family::<ConnectionLabels, Counter<f64, AtomicU64>>::default();
        r.register(
            "rate_limit_wait_seconds",
            "Time requests spent waiting for the connection's client-side rate limiter",
            rate_limit_wait_seconds.clone(),
        );
        let in_flight = Gauge::default();
        r.register(
            "reconciles_in_flight",
            "ConnectedAccount reconciles running now",
            in_flight.clone(),
        );
        let leader = Family::<ShardLabels, Gauge>::default();
        r.register(
            "leader",
            "1 on the replica that holds its shard's leader-election Lease (or runs without election), 0 on standbys; label shard: the shard's index (0 unsharded)",
            leader.clone(),
        );
        let state = Arc::new(State::default());
        r.register_collector(Box::new(StateCollector(state.clone())));
        // Counters with bounded label sets exist from 0, so `increase()` sees the first event.
        for reason in crate::reason::Reason::all() {
            let _ = syncs.get_or_create(&ResultLabels {
                result: reason.as_str(),
            });
        }
        for controller in CONTROLLERS {
            let _ = reconcile_duration.get_or_create(&ControllerLabels { controller });
            for result in ["success", "error"] {
                let _ = reconciles.get_or_create(&ReconcileLabels { controller, result });
            }
        }
        for endpoint in ENDPOINTS {
            for cause in RETRY_CAUSES {
                let _ = pipedream_retries.get_or_create(&RetryLabels { endpoint, cause });
            }
        }
        for error in crate::controller::Error::labels() {
            let _ = reconcile_errors.get_or_create(&ErrorLabels { error });
        }
        Self {
            registry: root,
            syncs,
            requests,
            request_duration,
            reconcile_duration,
            reconciles,
            reconcile_errors,
            kube_requests,
            kube_request_duration,
            pipedream_retries,
            rate_limit_waits,
            rate_limit_wait_seconds,
            in_flight,
            leader,
            state,
            last_scrape_len: Default::default(),
        }
    }

    /// Count one sync outcome (`SecretSynced` or a Ready reason).
    pub fn count_sync(&self, result: &'static str) {
        self.syncs.get_or_create(&ResultLabels { result }).inc();
    }

    /// Count and time one Pipedream request.
    pub fn observe_request(&self, endpoint: &'static str, status: &'static str, elapsed: Duration) {
        self.requests
            .get_or_create(&RequestLabels { endpoint, status })
            .inc();
        self.request_duration
            .get_or_create(&EndpointLabels { endpoint })
            .observe(elapsed.as_secs_f64());
    }

    /// A reconcile starts; the returned guard ends it.
    pub fn reconcile_started(&self) -> InFlight<'_> {
        self.in_flight.inc();
        InFlight(&self.in_flight)
    }

    /// Time and count one reconcile of `controller` (one of [`CONTROLLERS`]).
    pub fn observe_reconcile(&self, controller: &'static str, ok: bool, elapsed: Duration) {
        self.reconcile_duration
            .get_or_create(&ControllerLabels { controller })
            .observe(elapsed.as_secs_f64());
        let result = if ok { "success" } else { "error" };
        self.reconciles
            .get_or_create(&ReconcileLabels { controller, result })
            .inc();
    }

    /// Count and time one request to the Kubernetes API server.
    pub fn observe_kube_request(&self, method: &'static str, code: Option<u16>, elapsed: Duration) {
        let code = code.map_or_else(|| "error".to_string(), |c| c.to_string());
        self.kube_requests
            .get_or_create(&KubeLabels { method, code })
            .inc();
        self.kube_request_duration
            .get_or_create(&MethodLabels { method })
            .observe(elapsed.as_secs_f64());
    }

    /// A Pipedream request of one fetch is sent again (`cause`: one of [`RETRY_CAUSES`]).
    pub fn count_pipedream_retry(&self, endpoint: &'static str, cause: &'static str) {
        self.pipedream_retries
            .get_or_create(&RetryLabels { endpoint, cause })
            .inc();
    }

    /// Count a reconcile ended by a Kubernetes API failure.
    pub fn count_reconcile_error(&self, error: &'static str) {
        self.reconcile_errors
            .get_or_create(&ErrorLabels { error })
            .inc();
    }

    /// A request of connection `id` waited `waited` for the rate limiter.
    pub fn count_rate_limit_wait(&self, id: &ConnectionId, waited: Duration) {
        let l = ConnectionLabels::from(id);
        self.rate_limit_waits.get_or_create(&l).inc();
        self.rate_limit_wait_seconds
            .get_or_create(&l)
            .inc_by(waited.as_secs_f64());
    }

    /// This replica leads shard `shard` (or not). Called with `false` at start-up, so a standby's series exists.
    pub fn set_leader(&self, shard: crate::shard::Shard, leading: bool) {
        self.leader
            .get_or_create(&ShardLabels {
                shard: shard.index(),
            })
            .set(i64::from(leading));
    }

    /// Where the per-ConnectedAccount series come from (read at scrape time: the cache of ConnectedAccounts).
    /// `f` calls its argument once per object.
    pub fn set_object_source(
        &self,
        f: impl Fn(&mut dyn FnMut(ObjectView<'_>)) + Send + Sync + 'static,
    ) {
        *lock(&self.state.objects) = Some(Box::new(f));
    }

    /// Record whether connection `id` can authenticate.
    pub fn set_connection_ready(&self, id: &ConnectionId, ready: bool) {
        lock(&self.state.connections)
            .entry(id.into())
            .or_default()
            .ready = Some(ready);
        // The wait counters exist from the start (at 0), so rate() over them works before the first wait.
        let l = ConnectionLabels::from(id);
        let _ = self.rate_limit_waits.get_or_create(&l);
        let _ = self.rate_limit_wait_seconds.get_or_create(&l);
    }

    /// Record the expiry of connection `id`'s OAuth token.
    pub fn set_token_expiry(&self, id: &ConnectionId, at: Option<Timestamp>) {
        lock(&self.state.connections)
            .entry(id.into())
            .or_default()
            .token_expires_at = at;
    }

    /// Drop a deleted connection's series.
    pub fn forget_connection(&self, id: &ConnectionId) {
        let l = ConnectionLabels::from(id);
        lock(&self.state.connections).remove(&l);
        self.rate_limit_waits.remove(&l);
        self.rate_limit_wait_seconds.remove(&l);
    }

    /// Where the fetch queue figures come from (read at scrape time).
    pub fn set_queue_source(&self, f: impl Fn() -> Vec<QueueStats> + Send + Sync + 'static) {
        *lock(&self.state.queues) = Some(Box::new(f));
    }

    /// Where the reconcile queue depth comes from (read at scrape time).
    pub fn set_due_source(&self, f: impl Fn() -> i64 + Send + Sync + 'static) {
        *lock(&self.state.due) = Some(Box::new(f));
    }

    /// Where the answer cache's size comes from (read at scrape time): bytes and entries.
    pub fn set_cache_source(&self, f: impl Fn() -> (usize, usize) + Send + Sync + 'static) {
        *lock(&self.state.cache) = Some(Box::new(f));
    }

    /// OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        scrape::plain(&self.registry, &self.last_scrape_len)
    }

    /// OpenMetrics text of every metric, gzip-compressed or not, handed to `send` in pieces as it is made (see
    /// `scrape`). False when it ended early (`send` refused a piece: the client is gone).
    pub fn encode_to(&self, gzip: bool, send: impl FnMut(Vec<u8>) -> bool) -> bool {
        scrape::stream(&self.registry, gzip, send)
    }
}
