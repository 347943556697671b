//! Pipedream fetches run here, not on the controller's workers: one dispatcher per connection takes requests in
//! order of urgency (expired or missing Secrets first, then by expiry), at most a few in flight, paced by the
//! connection's rate limiter and paused by `Retry-After`. A reconcile asks for a fetch and returns; the dispatcher
//! re-triggers it when the answer is in. So a slow or hostile connection delays only its own accounts, and a
//! large backlog is served most-urgent-first.
//!
//! Answers are kept per [`AccountKey`] (connection identity + fingerprint + account), shared by every
//! ConnectedAccount naming the same account through the same connection, and used to repair drift without a new
//! call.

mod cache;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use kube::runtime::reflector::ObjectRef;
use tokio::sync::{Notify, Semaphore, mpsc};

pub use cache::{AccountCache, Attempt, CachedFetch};

use super::Clock;
use crate::crd::{ConnectedAccount, RateLimit};
use crate::identity::{AccountKey, ConnectionId, ConnectionKey};
use crate::pipedream::{PipedreamClient, PipedreamError};

/// Requests of one connection in flight at once.
pub const MAX_IN_FLIGHT: usize = 4;
/// Requests in flight at once over all of one tenant's (namespace's) own connections.
pub const MAX_IN_FLIGHT_PER_TENANT: usize = 8;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Routes "this ConnectedAccount's fetch is done" to the controller watching its namespace.
#[derive(Clone, Default)]
pub struct Triggers {
    senders: Vec<(
        Option<String>,
        mpsc::UnboundedSender<ObjectRef<ConnectedAccount>>,
    )>,
}

impl Triggers {
    /// A stream of triggers for the controller of `scope` (a namespace, or `None` for all).
    pub fn subscribe(
        &mut self,
        scope: Option<String>,
    ) -> mpsc::UnboundedReceiver<ObjectRef<ConnectedAccount>> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.senders.push((scope, tx));
        rx
    }

    fn send(&self, obj: ObjectRef<ConnectedAccount>) {
        let target = self
            .senders
            .iter()
            .find(|(scope, _)| scope.is_none() || scope.as_deref() == obj.namespace.as_deref());
        if let Some((_, tx)) = target {
            let _ = tx.send(obj);
        }
    }
}

struct Entry {
    needed_by: Timestamp,
    seq: u64,
    waiters: HashSet<ObjectRef<ConnectedAccount>>,
    in_flight: bool,
}

#[derive(Default)]
struct Queue {
    order: BTreeSet<(Timestamp, u64, String)>,
    entries: HashMap<String, Entry>,
    in_flight: usize,
    seq: u64,
    paused_until: Option<tokio::time::Instant>,
}

/// One connection as used: its key, its Pipedream client (token, rate limiter) and its fetch queue, served by
/// its own dispatcher task.
pub struct Dispatcher {
    /// Identity and fingerprint, shared by every [`AccountKey`] fetched through it.
    pub key: Arc<ConnectionKey>,
    /// The client.
    pub client: Arc<PipedreamClient>,
    rate: RateLimit,
    queue: Mutex<Queue>,
    wake: Notify,
    closed: AtomicBool,
    tenant: Option<Arc<Semaphore>>,
}

impl Dispatcher {
    /// Ask for `account` to be fetched; `who` is triggered when the answer is in. `needed_by` orders the queue:
    /// earliest first.
    pub fn request(&self, account: &str, needed_by: Timestamp, who: ObjectRef<ConnectedAccount>) {
        let mut q = lock(&self.queue);
        q.seq += 1;
        let seq = q.seq;
        let reorder = match q.entries.get_mut(account) {
            Some(e) => {
                e.waiters.insert(who);
                if !e.in_flight && needed_by < e.needed_by {
                    let old = (e.needed_by, e.seq, account.to_string());
                    e.needed_by = needed_by;
                    e.seq = seq;
                    Some(old)
                } else {
                    None
                }
            }
            None => {
                q.entries.insert(
                    account.to_string(),
                    Entry {
                        needed_by,
                        seq,
                        waiters: [who].into(),
                        in_flight: false,
                    },
                );
                q.order.insert((needed_by, seq, account.to_string()));
                None
            }
        };
        if let Some(old) = reorder {
            q.order.remove(&old);
            q.order.insert((needed_by, seq, account.to_string()));
        }
        drop(q);
        self.wake.notify_one();
    }

    /// Requests waiting (not yet in flight).
    pub fn queued(&self) -> usize {
        lock(&self.queue).order.len()
    }

    /// Requests in flight.
    pub fn in_flight(&self) -> usize {
        lock(&self.queue).in_flight
    }

    /// Position of `account` in the queue (0 = next), if queued.
    #[cfg(test)]
    pub fn position(&self, account: &str) -> Option<usize> {
        let q = lock(&self.queue);
        q.order.iter().position(|(_, _, a)| a == account)
    }

    fn close(&self) -> Vec<ObjectRef<ConnectedAccount>> {
        self.closed.store(true, Ordering::SeqCst);
        self.wake.notify_one();
        let mut q = lock(&self.queue);
        q.order.clear();
        q.entries.drain().flat_map(|(_, e)| e.waiters).collect()
    }

    fn next(&self) -> Next {
        let mut q = lock(&self.queue);
        if let Some(until) = q.paused_until {
            if tokio::time::Instant::now() < until {
                return Next::Sleep(until);
            }
            q.paused_until = None;
        }
        if q.in_flight >= MAX_IN_FLIGHT {
            return Next::Wait;
        }
        let Some((_, _, account)) = q.order.pop_first() else {
            return Next::Wait;
        };
        q.in_flight += 1;
        if let Some(e) = q.entries.get_mut(&account) {
            e.in_flight = true;
        }
        Next::Fetch(account)
    }

    fn finish(
        &self,
        account: &str,
        pause: Option<Duration>,
    ) -> HashSet<ObjectRef<ConnectedAccount>> {
        let mut q = lock(&self.queue);
        q.in_flight = q.in_flight.saturating_sub(1);
        if let Some(p) = pause {
            q.paused_until = Some(tokio::time::Instant::now() + p);
        }
        q.entries
            .remove(account)
            .map(|e| e.waiters)
            .unwrap_or_default()
    }
}

enum Next {
    Fetch(String),
    Sleep(tokio::time::Instant),
    Wait,
}

/// Everything the dispatchers share.
pub struct Fetcher {
    dispatchers: Mutex<HashMap<ConnectionId, Arc<Dispatcher>>>,
    tenants: Mutex<HashMap<String, Arc<Semaphore>>>,
    /// Answers.
    pub cache: Arc<AccountCache>,
    triggers: Triggers,
    clock: Clock,
}

impl Fetcher {
    /// A fetcher that reports finished fetches through `triggers`.
    pub fn new(triggers: Triggers, clock: Clock) -> Self {
        Self {
            dispatchers: Mutex::default(),
            tenants: Mutex::default(),
            cache: Arc::default(),
            triggers,
            clock,
        }
    }

    /// The dispatcher of connection `key`, built (and its task started) when missing or when the connection's
    /// spec changed. A replaced dispatcher's waiters are re-triggered so they ask the new one.
    pub fn dispatcher(
        &self,
        key: &ConnectionKey,
        rate: RateLimit,
        build: impl FnOnce() -> PipedreamClient,
    ) -> Arc<Dispatcher> {
        let mut map = lock(&self.dispatchers);
        if let Some(rt) = map.get(&key.id)
            && *rt.key == *key
            && rt.rate == rate
        {
            return rt.clone();
        }
        let tenant = key.id.namespace.as_ref().map(|ns| {
            lock(&self.tenants)
                .entry(ns.clone())
                .or_insert_with(|| Arc::new(Semaphore::new(MAX_IN_FLIGHT_PER_TENANT)))
                .clone()
        });
        let rt = Arc::new(Dispatcher {
            key: Arc::new(key.clone()),
            client: Arc::new(build()),
            rate,
            queue: Mutex::default(),
            wake: Notify::new(),
            closed: AtomicBool::new(false),
            tenant,
        });
        if let Some(old) = map.insert(key.id.clone(), rt.clone()) {
            for w in old.close() {
                self.triggers.send(w);
            }
            self.cache.forget_connections(|c| *c == *old.key);
        }
        drop(map);
        tokio::spawn(dispatch(
            rt.clone(),
            self.cache.clone(),
            self.triggers.clone(),
            self.clock.clone(),
        ));
        rt
    }

    /// Stop and forget the dispatcher of a deleted connection.
    pub fn remove(&self, id: &ConnectionId) {
        if let Some(old) = lock(&self.dispatchers).remove(id) {
            for w in old.close() {
                self.triggers.send(w);
            }
        }
        self.cache.forget_connections(|c| c.id == *id);
    }

    /// Every live dispatcher (metrics).
    pub fn dispatchers(&self) -> Vec<Arc<Dispatcher>> {
        lock(&self.dispatchers).values().cloned().collect()
    }
}

async fn dispatch(rt: Arc<Dispatcher>, cache: Arc<AccountCache>, triggers: Triggers, clock: Clock) {
    loop {
        if rt.closed.load(Ordering::SeqCst) {
            return;
        }
        // Registered before looking at the queue, so a request that arrives in between is not missed.
        let woken = rt.wake.notified();
        let account = match rt.next() {
            Next::Fetch(a) => a,
            Next::Sleep(until) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(until) => {}
                    _ = woken => {}
                }
                continue;
            }
            Next::Wait => {
                woken.await;
                continue;
            }
        };
        let permit = match &rt.tenant {
            Some(s) => s.clone().acquire_owned().await.ok(),
            None => None,
        };
        let (rt2, cache, triggers, clock) =
            (rt.clone(), cache.clone(), triggers.clone(), clock.clone());
        tokio::spawn(async move {
            let result = rt2.client.fetch_account(&account).await;
            drop(permit);
            let pause = match &result {
                Err(PipedreamError::RateLimited { retry_after }) => {
                    Some(retry_after.unwrap_or(Duration::from_secs(1)))
                }
                _ => None,
            };
            let key = AccountKey {
                connection: rt2.key.clone(),
                account_id: account.clone(),
            };
            cache.complete(key, result, clock.now());
            for w in rt2.finish(&account, pause) {
                triggers.send(w);
            }
            rt2.wake.notify_one();
        });
    }
}

#[cfg(test)]
mod tests;
