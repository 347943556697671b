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
mod queue;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use kube::runtime::reflector::ObjectRef;
use tokio::sync::{Notify, Semaphore, mpsc};

pub use cache::{AccountCache, CachedFetch};
use queue::Queue;
pub use queue::Urgency;

use super::Clock;
use crate::crd::{ConnectedAccount, RateLimit};
use crate::identity::{AccountKey, ConnectionId, ConnectionKey};
use crate::pipedream::{PipedreamClient, PipedreamError};
use crate::rules::calendar::Calendar;

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

/// One connection as used: its key, its Pipedream client (token, rate limiter) and its fetch queue, served by
/// its own dispatcher task.
pub struct Dispatcher {
    /// Identity and fingerprint, shared by every [`AccountKey`] fetched through it.
    pub key: Arc<ConnectionKey>,
    /// The client.
    pub client: Arc<PipedreamClient>,
    rate: RateLimit,
    queue: Mutex<Queue>,
    paused_until: Mutex<Option<tokio::time::Instant>>,
    wake: Notify,
    closed: AtomicBool,
    tenant: Option<Arc<Semaphore>>,
    /// Each namespace's booked refresh slots.
    calendars: Mutex<HashMap<Box<str>, Calendar>>,
}

impl Dispatcher {
    /// Ask for `account` to be fetched; `who` is triggered when the answer is in. `urgency` orders it within
    /// `who`'s namespace; namespaces take turns.
    pub fn request(&self, account: &str, urgency: Urgency, who: ObjectRef<ConnectedAccount>) {
        lock(&self.queue).request(account, urgency, &who);
        self.wake.notify_one();
    }

    /// When namespace `lane` should next fetch an account it wants at `at` (no later than `latest`): the slot
    /// booked for it at the connection's rate (see [`crate::rules::calendar`]).
    pub fn book(&self, lane: &str, now: Timestamp, at: Timestamp, latest: Timestamp) -> Timestamp {
        let mut calendars = lock(&self.calendars);
        if let Some(c) = calendars.get_mut(lane) {
            return c.book(now, at, latest);
        }
        let mut c = Calendar::new(self.client.period());
        let booked = c.book(now, at, latest);
        calendars.insert(lane.into(), c);
        booked
    }

    /// Requests waiting (not yet in flight).
    pub fn queued(&self) -> usize {
        lock(&self.queue).queued()
    }

    /// Requests in flight.
    pub fn in_flight(&self) -> usize {
        lock(&self.queue).in_flight()
    }

    /// Position of `account` among its namespace's requests (0 = next), if queued.
    #[cfg(test)]
    pub fn position(&self, account: &str) -> Option<usize> {
        lock(&self.queue).position(account)
    }

    fn close(&self) -> Vec<ObjectRef<ConnectedAccount>> {
        self.closed.store(true, Ordering::SeqCst);
        self.wake.notify_one();
        lock(&self.queue).drain()
    }

    /// Whether a request may be sent now (the rate limiter aside).
    fn state(&self) -> Next {
        let mut paused = lock(&self.paused_until);
        if let Some(until) = *paused {
            if tokio::time::Instant::now() < until {
                return Next::Sleep(until);
            }
            *paused = None;
        }
        drop(paused);
        if lock(&self.queue).ready() {
            Next::Ready
        } else {
            Next::Wait
        }
    }

    fn finish(&self, account: &str, pause: Option<Duration>) -> Vec<ObjectRef<ConnectedAccount>> {
        if let Some(p) = pause {
            *lock(&self.paused_until) = Some(tokio::time::Instant::now() + p);
        }
        lock(&self.queue).finish(account)
    }
}

enum Next {
    Ready,
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
            queue: Mutex::new(Queue::new(MAX_IN_FLIGHT)),
            paused_until: Mutex::default(),
            wake: Notify::new(),
            closed: AtomicBool::new(false),
            tenant,
            calendars: Mutex::default(),
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

    /// The dispatcher of connection `id`, if one runs.
    pub fn get(&self, id: &ConnectionId) -> Option<Arc<Dispatcher>> {
        lock(&self.dispatchers).get(id).cloned()
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
        match rt.state() {
            Next::Ready => {}
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
        }
        // The rate limiter's wait comes before the choice, so the request sent is the most urgent one at the
        // moment it may go, not the one that happened to wait longest.
        rt.client.pace().await;
        if !matches!(rt.state(), Next::Ready) {
            continue;
        }
        let Some(account) = lock(&rt.queue).take() else {
            continue;
        };
        let permit = match &rt.tenant {
            Some(s) => s.clone().acquire_owned().await.ok(),
            None => None,
        };
        let (rt2, cache, triggers, clock) =
            (rt.clone(), cache.clone(), triggers.clone(), clock.clone());
        tokio::spawn(async move {
            let result = rt2.client.fetch_account_paced(&account).await;
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
