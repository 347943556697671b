//! Answers per account, as seen through one connection: the last attempt (which the object that asked for it
//! reads) and the last success (for reuse and drift repair).
//!
//! Bounded: a slot goes when no ConnectedAccount uses its account through that connection any more (each object
//! reports when it moves to another key; see [`AccountCache::switch_use`]) or when its connection changes, and the
//! answers held in all slots together stay under [`MAX_CACHED_BYTES`] (an evicted answer only costs a fetch if its
//! Secret must be repaired). Eviction is fair between tenants (the namespaces of the ConnectedAccounts using an
//! answer): the tenant holding the most bytes loses its least recently used answer first, so a tenant with large
//! answers evicts its own, not others'. An answer some pass is waiting for (an object asked for it and has not read
//! it yet, see [`AccountCache::wait`]) is not evicted unless the cache is past twice its bound.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use jiff::Timestamp;

use crate::identity::{AccountKey, ConnectionKey};
use crate::pipedream::{FetchedAccount, PipedreamError};
pub use crate::rules::answer::{Attempt, CachedFetch};

/// Most bytes of answers held at once, answers a pass waits for aside.
pub const MAX_CACHED_BYTES: usize = 32 << 20;
/// Past this multiple of the bound, answers a pass waits for are evicted too: memory stays bounded even when
/// everything is awaited at once.
const HARD_BOUND_FACTOR: usize = 2;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One account as seen through one connection: its users and its answers. Kept small (56 bytes): at 10,000
/// accounts the map's table holds 16,384 of them.
#[derive(Default)]
struct Slot {
    /// The last successful answer.
    ok: Option<CachedFetch>,
    /// The last attempt, when it failed (boxed: rare, and an error is larger than the rest of the slot).
    failed: Option<Box<PipedreamError>>,
    /// The sequence number of its last completed attempt (global, so a slot evicted and made again never
    /// repeats a number an object is waiting past).
    generation: u64,
    /// When it was last used (a global counter).
    used: u64,
    /// Bytes its answers hold.
    bytes: u32,
    /// How many ConnectedAccounts use it.
    users: u32,
    /// How many of them asked for an attempt they have not read yet.
    waiting: u32,
    /// The tenant its bytes are charged to (an index into [`Slots::tenants`]): the namespace of the
    /// ConnectedAccount that last started using it.
    tenant: u32,
}

impl Slot {
    /// The outcome of the last completed attempt still held.
    fn last(&self) -> Option<Attempt> {
        match (&self.failed, &self.ok) {
            (Some(e), _) => Some(Attempt::Failed(PipedreamError::clone(e))),
            (None, Some(ok)) => Some(Attempt::Ok(ok.clone())),
            (None, None) => None,
        }
    }

    fn holds_answer(&self) -> bool {
        self.ok.is_some() || self.failed.is_some()
    }
}

struct Slots {
    map: HashMap<AccountKey, Slot>,
    bytes: usize,
    /// Tenants by index: name and bytes charged. Namespaces are few; an index keeps each slot small. Index 0 is
    /// the unnamed tenant of slots no object has used yet.
    tenants: Vec<(Box<str>, usize)>,
}

impl Default for Slots {
    fn default() -> Self {
        Self {
            map: HashMap::new(),
            bytes: 0,
            tenants: vec![("".into(), 0)],
        }
    }
}

impl Slots {
    fn tenant(&mut self, name: &str) -> u32 {
        let i = match self.tenants.iter().position(|(n, _)| &**n == name) {
            Some(i) => i,
            None => {
                self.tenants.push((name.into(), 0));
                self.tenants.len() - 1
            }
        };
        u32::try_from(i).unwrap_or(u32::MAX)
    }

    /// Change `key`'s charged bytes to `bytes`, keeping the totals.
    fn charge(&mut self, key: &AccountKey, bytes: usize) {
        let Some(s) = self.map.get_mut(key) else {
            return;
        };
        let before = s.bytes as usize;
        s.bytes = u32::try_from(bytes).unwrap_or(u32::MAX);
        let after = s.bytes as usize;
        self.bytes = self.bytes - before + after;
        if let Some((_, t)) = self.tenants.get_mut(s.tenant as usize) {
            *t = *t - before + after;
        }
    }

    /// Drop the answers of `key` (the slot stays while someone uses it).
    fn drop_answers(&mut self, key: &AccountKey) {
        self.charge(key, 0);
        let Some(s) = self.map.get_mut(key) else {
            return;
        };
        if s.users == 0 {
            self.map.remove(key);
        } else {
            (s.ok, s.failed) = (None, None);
        }
    }
}

/// Answers per account (as seen through one connection).
#[derive(Default)]
pub struct AccountCache {
    slots: Mutex<Slots>,
    seq: AtomicU64,
    max_bytes: Option<usize>,
}

fn answer_bytes(f: &FetchedAccount) -> usize {
    // The credentials are most of it; the rest of an account is a few hundred bytes.
    f.account.credentials.as_ref().map_or(0, |c| c.size()) + 512
}

impl AccountCache {
    /// A cache holding at most `max_bytes` of answers (tests).
    #[cfg(test)]
    pub fn with_limit(max_bytes: usize) -> Self {
        Self {
            max_bytes: Some(max_bytes),
            ..Default::default()
        }
    }

    fn next(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// The number of the last completed attempt for `key` (a later attempt has a higher number).
    pub fn generation(&self, key: &AccountKey) -> u64 {
        lock(&self.slots).map.get(key).map_or(0, |s| s.generation)
    }

    /// The latest attempt, if one completed after generation `after`. Reading it ends a wait ([`Self::wait`]).
    pub fn attempt_after(&self, key: &AccountKey, after: u64) -> Option<Attempt> {
        let used = self.next();
        let mut slots = lock(&self.slots);
        let s = slots.map.get_mut(key)?;
        s.used = used;
        let attempt = (s.generation > after).then(|| s.last()).flatten();
        if attempt.is_some() {
            s.waiting = s.waiting.saturating_sub(1);
        }
        attempt
    }

    /// An object asked for an attempt at `key` and will read it with [`Self::attempt_after`]: until then its
    /// answer is not evicted (within twice the bound). A wait that ends otherwise (the object is deleted or asks
    /// for another account) ends with [`Self::unwait`].
    pub fn wait(&self, key: &AccountKey) {
        let mut slots = lock(&self.slots);
        let s = slots.map.entry(key.clone()).or_default();
        s.waiting = s.waiting.saturating_add(1);
    }

    /// A pass waits for `key`'s next answer instead of for `before`'s (an earlier ask it never read).
    pub fn wait_instead(&self, before: Option<&AccountKey>, key: &AccountKey) {
        if let Some(old) = before {
            self.unwait(old);
        }
        self.wait(key);
    }

    /// A wait ended without reading the answer.
    pub fn unwait(&self, key: &AccountKey) {
        if let Some(s) = lock(&self.slots).map.get_mut(key) {
            s.waiting = s.waiting.saturating_sub(1);
        }
    }

    /// The last successful answer, for reuse and drift repair.
    pub fn last_ok(&self, key: &AccountKey) -> Option<CachedFetch> {
        let used = self.next();
        let mut slots = lock(&self.slots);
        let s = slots.map.get_mut(key)?;
        s.used = used;
        s.ok.clone()
    }

    /// A ConnectedAccount of namespace `tenant` moved from `from` to `to` (either may be none; the caller remembers
    /// which it used): an account no object uses any more is forgotten with its answers.
    pub fn switch_use(&self, from: Option<&AccountKey>, to: Option<&AccountKey>, tenant: &str) {
        if from == to {
            return;
        }
        let mut slots = lock(&self.slots);
        if let Some(k) = to {
            let t = slots.tenant(tenant);
            let s = slots.map.entry(k.clone()).or_default();
            s.users = s.users.saturating_add(1);
            // Charged to the tenant that uses it now.
            let (old, bytes) = (s.tenant, s.bytes as usize);
            s.tenant = t;
            if old != t {
                if let Some((_, b)) = slots.tenants.get_mut(old as usize) {
                    *b -= bytes;
                }
                if let Some((_, b)) = slots.tenants.get_mut(t as usize) {
                    *b += bytes;
                }
            }
        }
        if let Some(old) = from
            && let Some(s) = slots.map.get_mut(old)
        {
            s.users = s.users.saturating_sub(1);
            if s.users == 0 {
                slots.drop_answers(old);
            }
        }
    }

    /// Forget every answer fetched through a connection `which` picks (its spec changed or it was deleted).
    pub fn forget_connections(&self, which: impl Fn(&ConnectionKey) -> bool) {
        let mut slots = lock(&self.slots);
        let gone: Vec<AccountKey> = slots
            .map
            .keys()
            .filter(|k| which(&k.connection))
            .cloned()
            .collect();
        for k in gone {
            slots.drop_answers(&k);
        }
    }

    /// Bytes of answers held, and how many accounts have one.
    pub fn held(&self) -> (usize, usize) {
        let slots = lock(&self.slots);
        let entries = slots.map.values().filter(|s| s.holds_answer()).count();
        (slots.bytes, entries)
    }

    pub(super) fn complete(
        &self,
        key: AccountKey,
        result: Result<FetchedAccount, PipedreamError>,
        at: Timestamp,
    ) {
        let generation = self.next();
        let mut slots = lock(&self.slots);
        let s = slots.map.entry(key.clone()).or_default();
        s.generation = generation;
        s.used = generation;
        let bytes = match result {
            Ok(f) => {
                let bytes = answer_bytes(&f);
                s.ok = Some(CachedFetch {
                    fetched: Arc::new(f),
                    at,
                });
                s.failed = None;
                bytes
            }
            Err(e) => {
                s.failed = Some(Box::new(e));
                s.bytes as usize
            }
        };
        slots.charge(&key, bytes);
        self.evict(&mut slots, &key);
    }

    /// Drop answers (never `keep`'s) until the total is under the bound: of the tenant charged the most bytes, the
    /// least recently used answer no pass waits for; past twice the bound, awaited ones too.
    fn evict(&self, slots: &mut Slots, keep: &AccountKey) {
        let max = self.max_bytes.unwrap_or(MAX_CACHED_BYTES);
        while slots.bytes > max {
            let hard = slots.bytes > max.saturating_mul(HARD_BOUND_FACTOR);
            let evictable =
                |k: &AccountKey, s: &Slot| k != keep && s.bytes > 0 && (hard || s.waiting == 0);
            // Bytes per tenant among evictable answers: the largest holder gives first.
            let mut holding = vec![0usize; slots.tenants.len()];
            for (k, s) in &slots.map {
                if evictable(k, s)
                    && let Some(h) = holding.get_mut(s.tenant as usize)
                {
                    *h += s.bytes as usize;
                }
            }
            let Some(tenant) = (0..holding.len())
                .filter(|t| holding[*t] > 0)
                .max_by_key(|t| holding[*t])
            else {
                return;
            };
            let Some(victim) = slots
                .map
                .iter()
                .filter(|(k, s)| evictable(k, s) && s.tenant as usize == tenant)
                .min_by_key(|(_, s)| s.used)
                .map(|(k, _)| k.clone())
            else {
                return;
            };
            slots.charge(&victim, 0);
            if let Some(s) = slots.map.get_mut(&victim) {
                s.ok = None;
            }
        }
    }
}

#[cfg(test)]
mod tests;
