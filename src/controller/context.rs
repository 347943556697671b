//! Shared state of the reconcilers: API client, caches, connection dispatchers, the Secret index, clock, metrics,
//! per-object memory. (Over 400 lines: what the operator remembers of each object between passes and every way to
//! read it are kept here; what a ConnectedAccount pass changes is described in [`super::memory`].)

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::Store;
use kube::{Client, Resource};

use super::fetch::{Fetcher, Triggers};
use super::hosts::AllowedHosts;
use super::targets::SecretIndex;
use crate::crd::{ClusterPipedreamConnection, MANAGER, PipedreamConnection};
use crate::identity::AccountKey;
use crate::metrics::{Metrics, QueueStats};
use crate::rules::plan::Answer;

/// Labels of an object.
type Labels = BTreeMap<String, String>;

/// Namespace labels (for `namespaceSelector` access rules) are read at most this often per namespace.
const NAMESPACE_LABELS_TTL: Duration = Duration::from_secs(30);

/// Wall clock. Tests use a clock driven by (paused) tokio time.
#[derive(Clone, Debug)]
pub enum Clock {
    /// The system clock.
    System,
    /// A clock set by hand (tests).
    #[cfg(test)]
    Manual(Arc<Mutex<Timestamp>>),
    /// `base` plus the tokio time elapsed since `start`; with `tokio::time::pause` it moves only on `advance`.
    #[cfg(test)]
    Tokio {
        /// Wall time at `start`.
        base: Timestamp,
        /// Tokio instant the clock was created.
        start: tokio::time::Instant,
    },
}

impl Clock {
    /// A tokio-driven clock starting at `base`.
    #[cfg(test)]
    pub fn tokio(base: Timestamp) -> Self {
        Self::Tokio {
            base,
            start: tokio::time::Instant::now(),
        }
    }

    /// A manual clock at `t`.
    #[cfg(test)]
    pub fn manual(t: Timestamp) -> Self {
        Self::Manual(Arc::new(Mutex::new(t)))
    }

    /// Move a manual clock forward (no effect on other clocks).
    #[cfg(test)]
    pub fn advance(&self, d: Duration) {
        if let Self::Manual(t) = self {
            let mut g = t.lock().unwrap_or_else(|p| p.into_inner());
            *g = g
                .saturating_add(
                    jiff::SignedDuration::try_from(d).unwrap_or(jiff::SignedDuration::MAX),
                )
                .unwrap_or(*g);
        }
    }

    /// Now.
    pub fn now(&self) -> Timestamp {
        match self {
            Self::System => Timestamp::now(),
            #[cfg(test)]
            Self::Manual(t) => *t.lock().unwrap_or_else(|p| p.into_inner()),
            #[cfg(test)]
            Self::Tokio { base, start } => {
                let d = jiff::SignedDuration::try_from(start.elapsed())
                    .unwrap_or(jiff::SignedDuration::MAX);
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
    /// Hosts a namespaced PipedreamConnection may point at.
    pub allowed_api_hosts: AllowedHosts,
    /// The ConnectedAccounts this replica reconciles (and its share of each connection's rate limit).
    pub shard: crate::shard::Shard,
    /// Propagation time of ConnectedAccounts that set none (`--propagation-time`).
    pub propagation: std::time::Duration,
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
    /// When the last failed pass happened (spec edits of a failing object are debounced from it).
    pub last_failed: Option<Timestamp>,
    /// The connection's resourceVersion when a connection-related failure happened: a change retries at once.
    pub failed_connection_version: Option<String>,
    /// When the controller will next reconcile it (queue-depth metric).
    pub next_pass: Option<Timestamp>,
    /// `status.nextSyncTime` as this process last wrote it. The cached object can be older than our own write
    /// (the Secret's watch event may arrive first); its old time must not count as "due".
    pub written_next_sync: Option<Timestamp>,
    /// The target Secret's resourceVersion when this process last wrote or read it (status keeps it too).
    pub secret_version: Option<String>,
    /// A digest of the status this process last wrote, and when: a cached object whose status differs is older
    /// than that write (only the operator writes status), so a pass waits for the watch to catch up.
    pub written_status: Option<(u64, Timestamp)>,
    /// What the Secret index held for the target just before this process's last Secret write, and when: while it
    /// still holds that, its watch has not delivered the write yet, and a pass waits instead of reading the Secret.
    pub index_before_write: Option<(Option<String>, Timestamp)>,
    /// The account (through its connection) whose answers it uses: the answer cache counts an account's users
    /// and forgets it with the last (see [`Context::use_account`]).
    pub uses: Option<AccountKey>,
    /// Its passes' outcomes (the per-object sync counter).
    pub syncs: crate::metrics::SyncCounts,
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
    pub accounts: Mutex<Vec<Store<super::cached::CachedAccount>>>,
    /// Connection dispatchers and account answers.
    pub fetcher: Fetcher,
    /// The Secrets the operator writes into, by resourceVersion (fed by the Secret watch).
    pub secrets: SecretIndex,
    namespace_labels: Mutex<HashMap<String, (Timestamp, Option<Labels>)>>,
    /// Shared HTTP client for Pipedream.
    pub http: reqwest::Client,
    /// Who reports Events (see [`Context::recorder`]).
    reporter: Reporter,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Clock.
    pub clock: Clock,
    /// Boxed: a map's table is sized in powers of two, so at 10,000 objects an unboxed one held 16,384 slots of
    /// the full state (5 MiB); boxed, the spare slots cost a pointer.
    objects: Mutex<HashMap<String, Box<ObjectState>>>,
    /// Rotated connection credentials (see [`super::credentials`]).
    pub credential_watch: super::credentials::CredentialWatch,
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
        // One Secret watch per watched scope, as there is one connection store per scope.
        let scopes: Vec<Option<String>> = connections.keys().cloned().collect();
        let ctx = Arc::new(Self {
            client,
            settings,
            connections,
            cluster_connections,
            accounts: Mutex::default(),
            fetcher: Fetcher::new(triggers, clock.clone()),
            secrets: SecretIndex::new(&scopes),
            namespace_labels: Mutex::default(),
            http,
            reporter,
            metrics: metrics.clone(),
            clock,
            objects: Mutex::default(),
            credential_watch: Default::default(),
        });
        ctx.feed_metrics(&metrics);
        ctx
    }

    /// Give the metrics what they read at scrape time: fetch queues, per-object views, passes due, the answer
    /// cache. Weak references: the metrics never keep a context alive.
    fn feed_metrics(self: &Arc<Self>, metrics: &Metrics) {
        let weak = Arc::downgrade(self);
        metrics.set_queue_source(move || {
            weak.upgrade().map_or_else(Vec::new, |c| {
                c.fetcher
                    .dispatchers()
                    .iter()
                    .map(|rt| QueueStats {
                        id: rt.key.id.clone(),
                        queued: rt.queued(),
                        in_flight: rt.in_flight(),
                    })
                    .collect()
            })
        });
        let weak = Arc::downgrade(self);
        metrics.set_object_source(move |f| {
            if let Some(c) = weak.upgrade() {
                c.each_object_view(f);
            }
        });
        let weak = Arc::downgrade(self);
        metrics.set_due_source(move || {
            weak.upgrade().map_or(0, |c| {
                let now = c.clock.now();
                c.lock_objects()
                    .values()
                    .filter(|o| o.asked.is_some() || o.next_pass.is_some_and(|t| t <= now))
                    .count() as i64
            })
        });
        let weak = Arc::downgrade(self);
        metrics.set_cache_source(move || weak.upgrade().map_or((0, 0), |c| c.fetcher.cache.held()));
    }

    /// An Event recorder for one Event (kube-runtime intends one per pass; ours publish at most a few). A long-lived `Recorder` keeps every Event it sent
    /// for six minutes in a map that never shrinks: after a sync of 10,000 accounts that was about 25 MiB, a third
    /// of the operator's memory. Our Events mark transitions and Secret writes, minutes apart per object, so
    /// kube's series aggregation had nothing to aggregate.
    pub fn recorder(&self) -> Recorder {
        Recorder::new(self.client.clone(), self.reporter.clone())
    }

    fn lock_objects(&self) -> std::sync::MutexGuard<'_, HashMap<String, Box<ObjectState>>> {
        lock(&self.objects)
    }

    /// A copy of what is remembered about object `uid`.
    pub fn object(&self, uid: &str) -> ObjectState {
        self.lock_objects()
            .get(uid)
            .map(|o| ObjectState::clone(o))
            .unwrap_or_default()
    }

    /// Change what is remembered about object `uid`.
    pub fn update_object<T>(&self, uid: &str, f: impl FnOnce(&mut ObjectState) -> T) -> T {
        let mut objects = self.lock_objects();
        match objects.get_mut(uid) {
            Some(o) => f(o),
            None => f(objects.entry(uid.to_string()).or_default()),
        }
    }

    /// Forget a deleted object; what was remembered about it.
    pub fn forget_object(&self, uid: &str) -> Option<Box<ObjectState>> {
        self.lock_objects().remove(uid)
    }

    /// Forget a deleted connection: its memory, its dispatcher and answers, its metric series.
    pub fn forget_connection(&self, id: &crate::identity::ConnectionId, uid: &str) {
        self.forget_object(uid);
        self.fetcher.remove(id);
        self.metrics.forget_connection(id);
    }

    /// Forget a deleted ConnectedAccount (its metric series go with it from the cache).
    pub fn forget(&self, uid: &str) {
        let Some(state) = self.forget_object(uid) else {
            return;
        };
        if let Some((key, _)) = &state.asked {
            self.fetcher.cache.unwait(key);
        }
        self.fetcher.cache.switch_use(state.uses.as_ref(), None, "");
    }

    /// Entries held for Secrets, by every structure the Secret watches feed.
    #[cfg(test)]
    pub fn secret_entries_held(&self) -> usize {
        self.secrets.len() + self.credential_watch.len()
    }

    /// ConnectedAccount `uid` of namespace `tenant` now uses `key` (or nothing): the answer cache keeps an
    /// account's answers while some object uses them, charged to the tenant that uses them.
    fn use_account(&self, uid: &str, tenant: &str, key: Option<&AccountKey>) {
        let moved = self.update_object(uid, |o| {
            (o.uses.as_ref() != key).then(|| std::mem::replace(&mut o.uses, key.cloned()))
        });
        if let Some(from) = moved {
            self.fetcher.cache.switch_use(from.as_ref(), key, tenant);
        }
    }

    /// The answer a pass of ConnectedAccount `uid` (in namespace `tenant`, with memory `mem`) decides from, now
    /// that it uses `key`: the attempt it asked for once it arrived, else the last success for `key`; and whether
    /// it read the attempt it asked for (which ends the cache's wait for it, at once: see [`Self::answer_read`]).
    pub fn answer_for(
        &self,
        uid: &str,
        tenant: &str,
        mem: &ObjectState,
        key: Option<&AccountKey>,
    ) -> (Answer, bool) {
        self.use_account(uid, tenant, key);
        let cache = &self.fetcher.cache;
        let asked = mem
            .asked
            .as_ref()
            .filter(|(k, _)| Some(k) == key)
            .map(|(_, g)| *g);
        match (asked, key) {
            (Some(g), Some(k)) => match cache.attempt_after(k, g) {
                Some(a) => {
                    self.answer_read(uid);
                    (Answer::Arrived(a), true)
                }
                None => (Answer::Awaited, false),
            },
            (None, Some(k)) => (Answer::Last(cache.last_ok(k)), false),
            (_, None) => (Answer::Last(None), false),
        }
    }

    /// ConnectedAccount `uid` read the answer it asked for, which ended the answer cache's wait for it: forgotten
    /// at once (not with the pass's [`MemoryChange`](super::memory::MemoryChange)), so a deletion meanwhile
    /// ([`Context::forget`]) does not end that wait again.
    pub fn answer_read(&self, uid: &str) {
        if let Some(o) = self.lock_objects().get_mut(uid) {
            o.asked = None;
        }
    }

    /// Show `f` what the metrics show about every cached ConnectedAccount, from its status.
    pub fn each_object_view(&self, f: &mut dyn FnMut(crate::metrics::ObjectView<'_>)) {
        let stores = lock(&self.accounts).clone();
        for store in stores {
            for ca in store.state() {
                let syncs = ca
                    .uid()
                    .and_then(|uid| self.lock_objects().get(&*uid).map(|o| o.syncs))
                    .unwrap_or_default();
                f(object_view(&ca, syncs));
            }
        }
    }

    /// Count a failed pass of object `uid`; the attempt number (1 for the first failure in a row).
    pub fn record_failure(&self, uid: &str) -> u32 {
        self.update_object(uid, |o| {
            o.failures = o.failures.saturating_add(1);
            o.failures
        })
    }

    /// The labels of namespace `ns` (`None` when it does not exist), read at most every
    /// [`NAMESPACE_LABELS_TTL`].
    pub async fn namespace_labels(&self, ns: &str) -> Result<Option<Labels>, kube::Error> {
        let now = self.clock.now();
        if let Some((at, labels)) = lock(&self.namespace_labels).get(ns)
            && now < crate::schedule::add(*at, NAMESPACE_LABELS_TTL)
        {
            return Ok(labels.clone());
        }
        let api: kube::Api<k8s_openapi::api::core::v1::Namespace> =
            kube::Api::all(self.client.clone());
        let labels = api
            .get_metadata_opt(ns)
            .await?
            .map(|n| kube::ResourceExt::labels(&n).clone());
        lock(&self.namespace_labels).insert(ns.to_string(), (now, labels.clone()));
        Ok(labels)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The metrics' view of one ConnectedAccount: its status, as cached.
pub fn object_view(
    ca: &super::cached::CachedAccount,
    syncs: crate::metrics::SyncCounts,
) -> crate::metrics::ObjectView<'_> {
    let o = ca.observed();
    crate::metrics::ObjectView {
        namespace: ca.meta().namespace.as_deref().unwrap_or_default(),
        name: ca.meta().name.as_deref().unwrap_or_default(),
        ready: match o.ready {
            Some(true) => "True",
            Some(false) => "False",
            None => "Unknown",
        },
        reason: o.reason.as_deref().unwrap_or("Pending"),
        expires_at: o.expires_at(),
        next_sync: o.next_sync(),
        last_sync: o.last_sync(),
        pods_at_risk: o.pods_at_risk,
        refresh_lead_seconds: o.refresh_lead_seconds(),
        connection: o.connection.as_deref().and_then(|c| c.split_once('/')),
        syncs,
    }
}
