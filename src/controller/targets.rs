//! What the operator knows about target Secrets without reading them.
//!
//! The label-selected, metadata-only Secret watch feeds [`SecretIndex`]: for each Secret the operator writes into,
//! its resourceVersion and who writes it (owner annotation, Merge writers), a few dozen bytes per Secret rather
//! than a cached object. A pass compares the indexed resourceVersion with the one recorded when the operator last
//! wrote or read the Secret: equal means the Secret is exactly as written, so the pass needs no read.
//!
//! A Secret the operator has never written may still exist and belong to someone else, and a server-side apply
//! would take it over; so a first write asks [`ForeignNames`] first. It answers from the names the credentials
//! watch (metadata of the Secrets without the watch label, which the operator runs anyway to follow connection
//! credentials) has delivered, so a first write costs no request. Before that watch's first listing completes it
//! lists the names of the namespace's Secrets without the watch label (a metadata list, usually a handful of
//! names) at most once per [`FOREIGN_NAMES_TTL`], shared by every first write meanwhile.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::ListParams;
use kube::core::PartialObjectMeta;
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use tokio::sync::OnceCell;

use crate::crd::{OWNER_ANNOTATION, WATCH_LABEL};
use crate::secret::MERGE_ANNOTATION_PREFIX;

/// A listing of a namespace's foreign Secret names serves first writes for this long.
pub const FOREIGN_NAMES_TTL: Duration = Duration::from_secs(1);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The identity of a Secret: namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SecretId {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl SecretId {
    /// `namespace/name`.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

/// What the index keeps of one Secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Indexed {
    /// Its resourceVersion.
    pub resource_version: String,
    /// The `pipedream-secrets.io/connected-account` annotation (`namespace/name`), on Secrets the operator owns.
    pub owner: Option<String>,
    /// UIDs of the ConnectedAccounts merging keys into it.
    pub merge_writers: Vec<String>,
}

/// What a scope's index keeps of each Secret its watch delivers.
pub trait Kept: Clone + Send + 'static {
    /// The entry for one Secret's metadata.
    fn of(meta: &PartialObjectMeta<Secret>) -> Self;
}

impl Kept for Indexed {
    fn of(meta: &PartialObjectMeta<Secret>) -> Self {
        let annotations = meta.annotations();
        Self {
            resource_version: meta.resource_version().unwrap_or_default(),
            owner: annotations.get(OWNER_ANNOTATION).cloned(),
            merge_writers: annotations
                .keys()
                .filter_map(|k| k.strip_prefix(MERGE_ANNOTATION_PREFIX).map(str::to_string))
                .collect(),
        }
    }
}

/// The name alone.
impl Kept for () {
    fn of(_: &PartialObjectMeta<Secret>) -> Self {}
}

struct IndexState<V> {
    entries: HashMap<SecretId, V>,
    /// A re-list in progress: its entries replace the index when it completes.
    relist: Option<HashMap<SecretId, V>>,
    ready: bool,
}

impl<V> Default for IndexState<V> {
    fn default() -> Self {
        Self {
            entries: HashMap::new(),
            relist: None,
            ready: false,
        }
    }
}

impl<V: Kept> IndexState<V> {
    fn apply(&mut self, scope: &Option<String>, event: &watcher::Event<PartialObjectMeta<Secret>>) {
        let id = |m: &PartialObjectMeta<Secret>| {
            let ns = m.namespace().or_else(|| scope.clone());
            SecretId::new(ns.unwrap_or_default(), m.name_any())
        };
        match event {
            watcher::Event::Apply(m) => {
                self.entries.insert(id(m), V::of(m));
            }
            watcher::Event::Delete(m) => {
                self.entries.remove(&id(m));
            }
            watcher::Event::Init => self.relist = Some(HashMap::new()),
            watcher::Event::InitApply(m) => {
                self.relist
                    .get_or_insert_with(HashMap::new)
                    .insert(id(m), V::of(m));
            }
            watcher::Event::InitDone => {
                if let Some(fresh) = self.relist.take() {
                    self.entries = fresh;
                }
                self.ready = true;
            }
        }
    }
}

/// Secrets by identity, fed by a metadata watch of each watched scope (a namespace, or `None` for all), each with
/// its own listings. [`SecretIndex`] keeps the Secrets carrying the watch label by resourceVersion and writer.
pub struct ScopedIndex<V>(Arc<Mutex<HashMap<Option<String>, IndexState<V>>>>);

/// The Secrets carrying the watch label, by resourceVersion and writer.
pub type SecretIndex = ScopedIndex<Indexed>;

impl<V> Clone for ScopedIndex<V> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<V> Default for ScopedIndex<V> {
    fn default() -> Self {
        Self(Arc::default())
    }
}

impl<V: Kept> ScopedIndex<V> {
    /// An index fed by one watch per scope.
    pub fn new(scopes: &[Option<String>]) -> Self {
        Self(Arc::new(Mutex::new(
            scopes
                .iter()
                .map(|s| (s.clone(), IndexState::default()))
                .collect(),
        )))
    }

    /// Apply one watch event of `scope`'s watch (the same events a reflector store takes).
    pub fn apply(&self, scope: &Option<String>, event: &watcher::Event<PartialObjectMeta<Secret>>) {
        lock(&self.0)
            .entry(scope.clone())
            .or_default()
            .apply(scope, event);
    }

    /// What the index holds for `id`; `None` when it does not hold it. Before the first listing of the scope
    /// covering it completed, nothing is known (`Err`).
    pub fn get(&self, id: &SecretId) -> Result<Option<V>, NotReady> {
        let parts = lock(&self.0);
        let part = parts
            .get(&Some(id.namespace.clone()))
            .or_else(|| parts.get(&None))
            .filter(|p| p.ready)
            .ok_or(NotReady)?;
        Ok(part.entries.get(id).cloned())
    }

    /// Whether every scope's first listing completed.
    pub fn is_ready(&self) -> bool {
        lock(&self.0).values().all(|p| p.ready)
    }

    /// Entries held.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        lock(&self.0).values().map(|p| p.entries.len()).sum()
    }
}

/// The index has not been filled yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotReady;

struct Listing {
    taken: tokio::time::Instant,
    names: OnceCell<Result<HashSet<String>, String>>,
}

/// Names of the Secrets that do not carry the watch label: as the credentials watch delivered them, or (before
/// its first listing) listed on demand and shared by every first write within [`FOREIGN_NAMES_TTL`].
#[derive(Default)]
pub struct ForeignNames {
    /// Fed by the credentials watch of each scope.
    watched: ScopedIndex<()>,
    listings: Mutex<HashMap<String, Arc<Listing>>>,
}

impl ForeignNames {
    /// Apply one event of `scope`'s credentials watch.
    pub fn apply(&self, scope: &Option<String>, event: &watcher::Event<PartialObjectMeta<Secret>>) {
        self.watched.apply(scope, event);
    }

    /// Whether a Secret named `id.name` exists in `id.namespace` without the watch label. From the watch when it
    /// has listed its scope; otherwise one metadata list per namespace per [`FOREIGN_NAMES_TTL`], however many
    /// first writes ask.
    pub async fn exists(&self, client: &Client, id: &SecretId) -> Result<bool, kube::Error> {
        if let Ok(found) = self.watched.get(id) {
            return Ok(found.is_some());
        }
        let listing = {
            let mut map = lock(&self.listings);
            let now = tokio::time::Instant::now();
            map.retain(|_, l| now.duration_since(l.taken) < FOREIGN_NAMES_TTL);
            map.entry(id.namespace.clone())
                .or_insert_with(|| {
                    Arc::new(Listing {
                        taken: now,
                        names: OnceCell::new(),
                    })
                })
                .clone()
        };
        let names = listing
            .names
            .get_or_init(|| async {
                list_foreign(client, &id.namespace)
                    .await
                    .map_err(|e| e.to_string())
            })
            .await;
        match names {
            Ok(names) => Ok(names.contains(&id.name)),
            Err(_) => {
                // Shared listings keep the error text only; ask again for the caller's own error.
                lock(&self.listings).remove(&id.namespace);
                list_foreign(client, &id.namespace)
                    .await
                    .map(|n| n.contains(&id.name))
            }
        }
    }
}

async fn list_foreign(client: &Client, ns: &str) -> Result<HashSet<String>, kube::Error> {
    let api: Api<PartialObjectMeta<Secret>> = Api::namespaced(client.clone(), ns);
    let mut names = HashSet::new();
    let mut params = ListParams::default()
        .labels(&format!("{WATCH_LABEL}!=true"))
        .limit(500);
    loop {
        let page = api.list_metadata(&params).await?;
        names.extend(page.items.iter().map(ResourceExt::name_any));
        match page.metadata.continue_ {
            Some(c) if !c.is_empty() => params = params.continue_token(&c),
            _ => return Ok(names),
        }
    }
}

#[cfg(test)]
mod tests;
