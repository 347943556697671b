//! What the operator knows about target Secrets without reading them.
//!
//! The label-selected, metadata-only Secret watch feeds [`SecretIndex`]: for each Secret the operator writes into,
//! its resourceVersion and who writes it (owner annotation, Merge writers), a few dozen bytes per Secret rather
//! than a cached object. A pass compares the indexed resourceVersion with the one recorded when the operator last
//! wrote or read the Secret: equal means the Secret is exactly as written, so the pass needs no read.
//!
//! Nothing is kept of Secrets without the watch label: a Secret the operator has never written is created, and the
//! API server refuses the create (409) when a Secret of that name exists, so no name needs remembering to keep a
//! first write from taking someone else's Secret.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::core::PartialObjectMeta;
use kube::runtime::watcher;

use crate::crd::OWNER_ANNOTATION;
use crate::secret::MERGE_ANNOTATION_PREFIX;

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
    fn apply_event(
        &mut self,
        scope: &Option<String>,
        event: &watcher::Event<PartialObjectMeta<Secret>>,
    ) {
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
    pub fn apply_event(
        &self,
        scope: &Option<String>,
        event: &watcher::Event<PartialObjectMeta<Secret>>,
    ) {
        lock(&self.0)
            .entry(scope.clone())
            .or_default()
            .apply_event(scope, event);
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

#[cfg(test)]
mod tests;
