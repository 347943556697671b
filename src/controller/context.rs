//! Shared state of the reconcilers: API client, caches, connection runtimes, clock, metrics, per-object memory.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use kube::Client;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::Store;

use super::fetch::{Fetcher, Triggers};
use crate::crd::{ClusterPipedreamConnection, ConnectedAccount, MANAGER, PipedreamConnection};
use crate::identity::AccountKey;
use crate::metrics::{Metrics, QueueStats};

/// Wall clock. Tests use a clock driven by (paused) tokio time.
#[derive(Clone, Debug)]
pub enum Clock {
    /// The system clock.
    System,
    /// A clock set by hand (tests).
    Manual(Arc<Mutex<Timestamp>>),
    /// `base` plus the tokio time elapsed since `start`; with `tokio::time::pause` it moves only on `advance`.
    Tokio {
        /// Wall time at `start`.
        base: Timestamp,
        /// Tokio instant the clock was created.
        start: tokio::time::Instant,
    },
}

impl Clock {
    /// A tokio-driven clock starting at `base`.
    pub fn tokio(base: Timestamp) -> Self {
        Self::Tokio {
            base,
            start: tokio::time::Instant::now(),
        }
    }

    /// A manual clock at `t`.
    pub fn manual(t: Timestamp) -> Self {
        Self::Manual(Arc::new(Mutex::new(t)))
    }

    /// Move a manual clock forward (no effect on other clocks).
    pub fn advance(&self, d: Duration) {
        if let Self::Manual(t) = self {
            let mut g = t.lock().unwrap_or_else(|p| p.into_inner());
            *g = g
                .saturating_add(SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX))
                .unwrap_or(*g);
        }
    }

    /// Now.
    pub fn now(&self) -> Timestamp {
        match self {
            Self::System => Timestamp::now(),
            Self::Manual(t) => *t.lock().unwrap_or_else(|p| p.into_inner()),
            Self::Tokio { base, start } => {
                let d = SignedDuration::try_from(start.elapsed()).unwrap_or(SignedDuration::MAX);
                base.saturating_add(d).unwrap_or(*base)
            }
        }
    }
}

/// Hosts a tenant's `PipedreamConnection.spec.apiUrl` may name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllowedHosts(Vec<String>);

impl AllowedHosts {
    /// Exact host names, or `*.suffix` for any subdomain of `suffix`.
    pub fn new(hosts: impl IntoIterator<Item = String>) -> Self {
        Self(
            hosts
                .into_iter()
                .map(|h| h.trim().to_ascii_lowercase())
                .filter(|h| !h.is_empty())
                .collect(),
        )
    }

    /// Why `api_url` may not be used by a tenant's connection, if it may not: the host must be listed, and plain
    /// `http` is only for loopback hosts (tests).
    pub fn check(&self, api_url: &str) -> Result<(), String> {
        let url = reqwest::Url::parse(api_url)
            .map_err(|_| format!("spec.apiUrl {api_url:?} is not a URL"))?;
        let host = url
            .host_str()
            .ok_or_else(|| format!("spec.apiUrl {api_url:?} has no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        if !url.username().is_empty() || url.password().is_some() {
            return Err("spec.apiUrl must not carry credentials".into());
        }
        let loopback = host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        match url.scheme() {
            "https" => {}
            "http" if loopback => {}
            s => {
                return Err(format!(
                    "spec.apiUrl uses {s}; only https is allowed (http only for loopback hosts)"
                ));
            }
        }
        let listed = self.0.iter().any(|a| match a.strip_prefix("*.") {
            Some(suffix) => host.ends_with(&format!(".{suffix}")),
            None => *a == host,
        });
        if listed {
            Ok(())
        } else {
            Err(format!(
                "spec.apiUrl host {host} is not among the operator's allowed Pipedream hosts ({}); ask the cluster admin (--allowed-api-hosts)",
                self.0.join(", ")
            ))
        }
    }
}

impl Default for AllowedHosts {
    fn default() -> Self {
        Self::new(["api.pipedream.com".to_string()])
    }
}

/// Operator-wide settings the reconciler needs.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Namespace the operator runs in (empty `access` rules admit only it).
    pub operator_namespace: String,
    /// ClusterPipedreamConnection used when a ConnectedAccount names none.
    pub default_connection: Option<String>,
    /// ClusterPipedreamConnections are not watched (namespace-scoped install).
    pub cluster_connections_disabled: bool,
    /// Hosts a namespaced PipedreamConnection may point at.
    pub allowed_api_hosts: AllowedHosts,
    /// The ConnectedAccounts this replica reconciles (and its share of each connection's rate limit).
    pub shard: crate::shard::Shard,
}

/// What the operator remembers about one ConnectedAccount between passes (lost on restart, by design: the
/// schedule survives in status).
#[derive(Clone, Debug, Default)]
pub struct ObjectState {
    /// Consecutive failed passes.
    pub failures: u32,
    /// Not before this time after a failure (also written to status, except for short waits).
    pub retry_at: Option<Timestamp>,
    /// The fetch this object asked for: the account and the answer count at the time.
    pub asked: Option<(AccountKey, u64)>,
    /// Last time a force-sync made it fetch.
    pub last_forced: Option<Timestamp>,
    /// The connection's resourceVersion when a connection-related failure happened: a change retries at once.
    pub failed_connection_version: Option<String>,
    /// When the controller will next reconcile it (queue-depth metric).
    pub next_pass: Option<Timestamp>,
    /// `status.nextSyncTime` as this process last wrote it. The cached object can be older than our own write
    /// (the Secret's watch event may arrive first); its old time must not count as "due".
    pub written_next_sync: Option<Timestamp>,
}

/// Everything a reconcile needs.
pub struct Context {
    /// Kubernetes client.
    pub client: Client,
    /// Operator settings.
    pub settings: Settings,
    /// Namespaced connections, per watched namespace (key `None` = all namespaces).
    pub connections: BTreeMap<Option<String>, Store<PipedreamConnection>>,
    /// Cluster connections.
    pub cluster_connections: Store<ClusterPipedreamConnection>,
    /// ConnectedAccounts, per watched scope (filled in by `run`; empty in unit tests).
    pub accounts: Mutex<Vec<Store<ConnectedAccount>>>,
    /// Connection runtimes and account answers.
    pub fetcher: Fetcher,
    /// Shared HTTP client for Pipedream.
    pub http: reqwest::Client,
    /// Who reports Events (see [`Context::recorder`]).
    reporter: Reporter,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Clock.
    pub clock: Clock,
    objects: Mutex<HashMap<String, ObjectState>>,
}

impl Context {
    /// Build a context. `triggers` carries "fetch done" back to the controllers.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        client: Client,
        settings: Settings,
        connections: BTreeMap<Option<String>, Store<PipedreamConnection>>,
        cluster_connections: Store<ClusterPipedreamConnection>,
        http: reqwest::Client,
        metrics: Arc<Metrics>,
        clock: Clock,
        instance: Option<String>,
        triggers: Triggers,
    ) -> Arc<Self> {
        let reporter = Reporter {
            controller: MANAGER.into(),
            instance,
        };
        let ctx = Arc::new(Self {
            client,
            settings,
            connections,
            cluster_connections,
            accounts: Mutex::default(),
            fetcher: Fetcher::new(triggers, clock.clone()),
            http,
            reporter,
            metrics: metrics.clone(),
            clock,
            objects: Mutex::default(),
        });
        let weak = Arc::downgrade(&ctx);
        metrics.set_queue_source(move || {
            weak.upgrade().map_or_else(Vec::new, |c| {
                c.fetcher
                    .runtimes()
                    .iter()
                    .map(|rt| QueueStats {
                        id: rt.key.id.clone(),
                        queued: rt.queued(),
                        in_flight: rt.in_flight(),
                    })
                    .collect()
            })
        });
        let weak = Arc::downgrade(&ctx);
        metrics.set_due_source(move || {
            weak.upgrade().map_or(0, |c| {
                let now = c.clock.now();
                c.lock_objects()
                    .values()
                    .filter(|o| o.asked.is_some() || o.next_pass.is_some_and(|t| t <= now))
                    .count() as i64
            })
        });
        ctx
    }

    /// An Event recorder for one pass, as kube-runtime intends. A long-lived `Recorder` keeps every Event it sent
    /// for six minutes in a map that never shrinks: after a sync of 10,000 accounts that was about 25 MiB, a third
    /// of the operator's memory. Our Events mark transitions and Secret writes, minutes apart per object, so
    /// kube's series aggregation had nothing to aggregate.
    pub fn recorder(&self) -> Recorder {
        Recorder::new(self.client.clone(), self.reporter.clone())
    }

    fn lock_objects(&self) -> std::sync::MutexGuard<'_, HashMap<String, ObjectState>> {
        self.objects.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A copy of what is remembered about object `uid`.
    pub fn object(&self, uid: &str) -> ObjectState {
        self.lock_objects().get(uid).cloned().unwrap_or_default()
    }

    /// Change what is remembered about object `uid`.
    pub fn update_object<T>(&self, uid: &str, f: impl FnOnce(&mut ObjectState) -> T) -> T {
        f(self.lock_objects().entry(uid.to_string()).or_default())
    }

    /// Forget a deleted object.
    pub fn forget_object(&self, uid: &str) {
        self.lock_objects().remove(uid);
    }

    /// Whether a ConnectedAccount with this UID exists (Merge writers that were deleted free their keys). Without
    /// stores (unit tests) every writer counts as existing.
    pub fn account_exists(&self, uid: &str) -> bool {
        let stores = self.accounts.lock().unwrap_or_else(|p| p.into_inner());
        stores.is_empty()
            || stores.iter().any(|s| {
                s.state()
                    .iter()
                    .any(|ca| ca.metadata.uid.as_deref() == Some(uid))
            })
    }
}

/// Default request timeout towards Pipedream.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression (issue 7): a namespaced `apiUrl` could name any host (limited SSRF from inside the cluster).
    #[test]
    fn tenant_api_urls_must_name_an_allowed_host_over_https() {
        let a = AllowedHosts::default();
        assert!(a.check("https://api.pipedream.com").is_ok());
        assert!(a.check("https://API.pipedream.com/").is_ok());
        for bad in [
            "https://evil.example",
            "http://api.pipedream.com",
            "https://api.pipedream.com.evil.example",
            "https://user:pw@api.pipedream.com",
            "http://10.0.0.1:8080",
            "http://169.254.169.254/latest",
            "file:///etc/passwd",
            "not a url",
        ] {
            assert!(a.check(bad).is_err(), "{bad}");
        }
        let tests = AllowedHosts::new(["127.0.0.1".into(), "*.pipedream.com".into(), "::1".into()]);
        assert!(tests.check("http://127.0.0.1:8081").is_ok());
        assert!(tests.check("http://[::1]:8081").is_ok());
        assert!(tests.check("https://api2.pipedream.com").is_ok());
        assert!(tests.check("https://pipedream.com.evil.example").is_err());
        let m = a.check("https://evil.example").unwrap_err();
        assert!(
            m.contains("evil.example") && m.contains("--allowed-api-hosts"),
            "{m}"
        );
    }
}
