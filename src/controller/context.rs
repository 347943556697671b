//! Shared state of the reconcilers: API client, caches, Pipedream clients, clock, metrics.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use kube::Client;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::Store;

use crate::crd::{ClusterPipedreamConnection, MANAGER, PipedreamConnection};
use crate::metrics::Metrics;
use crate::pipedream::{
    ClientSettings, FetchedAccount, MaterialLoader, PipedreamClient, PipedreamError,
};

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

/// Operator-wide settings the reconciler needs.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Namespace the operator runs in (empty `access` rules admit only it).
    pub operator_namespace: String,
    /// ClusterPipedreamConnection used when a ConnectedAccount names none.
    pub default_connection: Option<String>,
    /// ClusterPipedreamConnections are not watched (namespace-scoped install).
    pub cluster_connections_disabled: bool,
}

/// One Pipedream client per connection, rebuilt when the connection's spec changes.
#[derive(Default)]
pub struct ClientRegistry {
    clients: Mutex<HashMap<String, (String, Arc<PipedreamClient>)>>,
}

impl ClientRegistry {
    /// The client for connection `id` whose spec serializes to `fingerprint`.
    pub fn get_or_build(
        &self,
        id: &str,
        fingerprint: &str,
        build: impl FnOnce() -> PipedreamClient,
    ) -> Arc<PipedreamClient> {
        let mut map = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((fp, c)) = map.get(id)
            && fp == fingerprint
        {
            return c.clone();
        }
        let client = Arc::new(build());
        map.insert(id.to_string(), (fingerprint.to_string(), client.clone()));
        client
    }
}

/// A fetch result shared between ConnectedAccounts naming the same account.
#[derive(Clone, Debug)]
pub struct CachedFetch {
    /// The answer.
    pub fetched: FetchedAccount,
    /// Local time the answer arrived.
    pub at: Timestamp,
}

type Slot = Arc<tokio::sync::Mutex<Option<CachedFetch>>>;

/// Single-flight fetches per (connection, account): concurrent callers wait for one request, and later callers
/// reuse its answer while it is fresh for them. Also the source for drift repair without a new fetch.
#[derive(Default)]
pub struct AccountCache {
    slots: Mutex<HashMap<(String, String), Slot>>,
}

impl AccountCache {
    /// Return a cached fetch that `reuse` accepts, or fetch (once, however many callers wait).
    pub async fn fetch(
        &self,
        connection: &str,
        account_id: &str,
        client: &PipedreamClient,
        clock: &Clock,
        reuse: impl Fn(&CachedFetch) -> bool,
    ) -> Result<(CachedFetch, bool), PipedreamError> {
        let slot = {
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            slots
                .entry((connection.to_string(), account_id.to_string()))
                .or_default()
                .clone()
        };
        let mut guard = slot.lock().await;
        if let Some(c) = guard.as_ref().filter(|c| reuse(c)) {
            return Ok((c.clone(), true));
        }
        let fetched = client.fetch_account(account_id).await?;
        let entry = CachedFetch {
            fetched,
            at: clock.now(),
        };
        *guard = Some(entry.clone());
        Ok((entry, false))
    }

    /// The cached fetch, if any, without fetching.
    pub async fn peek(&self, connection: &str, account_id: &str) -> Option<CachedFetch> {
        let slot = {
            let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            slots
                .get(&(connection.to_string(), account_id.to_string()))
                .cloned()
        }?;
        slot.lock().await.clone()
    }
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
    /// Pipedream clients.
    pub pipedream: ClientRegistry,
    /// Shared HTTP client for Pipedream.
    pub http: reqwest::Client,
    /// Account fetch cache.
    pub accounts: AccountCache,
    /// Event recorder.
    pub recorder: Recorder,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Clock.
    pub clock: Clock,
    /// Consecutive failures per object UID (error backoff).
    pub failures: Mutex<HashMap<String, u32>>,
    /// Consecutive fetches that returned credentials inside the refresh margin, per object UID.
    pub stale: Mutex<HashMap<String, u32>>,
}

impl Context {
    /// Build a context.
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
    ) -> Self {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: MANAGER.into(),
                instance,
            },
        );
        Self {
            client,
            settings,
            connections,
            cluster_connections,
            pipedream: ClientRegistry::default(),
            http,
            accounts: AccountCache::default(),
            recorder,
            metrics,
            clock,
            failures: Mutex::default(),
            stale: Mutex::default(),
        }
    }

    /// Build (or reuse) the Pipedream client of a connection.
    pub fn pipedream_client(
        &self,
        id: &str,
        fingerprint: &str,
        settings: ClientSettings,
        loader: MaterialLoader,
    ) -> Arc<PipedreamClient> {
        self.pipedream.get_or_build(id, fingerprint, || {
            PipedreamClient::new(
                self.http.clone(),
                settings,
                loader,
                Some(self.metrics.clone()),
            )
        })
    }

    /// Increment and return the failure count of an object.
    pub fn record_failure(&self, uid: &str) -> u32 {
        let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let n = f.entry(uid.to_string()).or_insert(0);
        *n = n.saturating_add(1);
        *n
    }

    /// Forget an object's failures.
    pub fn clear_failures(&self, uid: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(uid);
    }

    /// How many fetches in a row returned credentials already inside the refresh margin.
    pub fn stale_count(&self, uid: &str) -> u32 {
        self.stale
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(uid)
            .copied()
            .unwrap_or(0)
    }

    /// Count one more stale fetch, or reset the counter.
    pub fn set_stale(&self, uid: &str, stale: bool) {
        let mut s = self.stale.lock().unwrap_or_else(|p| p.into_inner());
        if stale {
            *s.entry(uid.to_string()).or_insert(0) += 1;
        } else {
            s.remove(uid);
        }
    }
}

/// Default request timeout towards Pipedream.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
