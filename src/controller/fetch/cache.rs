//! Answers per account, as seen through one connection: the last attempt (which the object that asked for it
//! reads) and the last success (for reuse and drift repair).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use jiff::Timestamp;

use crate::identity::AccountKey;
use crate::pipedream::{FetchedAccount, PipedreamError};

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A successful answer and when it arrived (local clock).
#[derive(Clone, Debug)]
pub struct CachedFetch {
    /// The answer.
    pub fetched: Arc<FetchedAccount>,
    /// Local time the answer arrived.
    pub at: Timestamp,
}

/// The outcome of one completed attempt.
#[derive(Clone, Debug)]
pub enum Attempt {
    /// Pipedream answered.
    Ok(CachedFetch),
    /// It did not.
    Failed(PipedreamError),
}

#[derive(Default)]
struct Slot {
    ok: Option<CachedFetch>,
    last: Option<Attempt>,
    /// Completed attempts so far.
    generation: u64,
}

/// Answers per account (as seen through one connection).
#[derive(Default)]
pub struct AccountCache {
    slots: Mutex<HashMap<AccountKey, Slot>>,
}

impl AccountCache {
    /// Completed attempts so far for `key` (a later attempt has a higher number).
    pub fn generation(&self, key: &AccountKey) -> u64 {
        lock(&self.slots).get(key).map_or(0, |s| s.generation)
    }

    /// The latest attempt, if one completed after generation `after`.
    pub fn attempt_after(&self, key: &AccountKey, after: u64) -> Option<Attempt> {
        let slots = lock(&self.slots);
        let s = slots.get(key)?;
        (s.generation > after).then(|| s.last.clone()).flatten()
    }

    /// The last successful answer, for reuse and drift repair.
    pub fn last_ok(&self, key: &AccountKey) -> Option<CachedFetch> {
        lock(&self.slots).get(key).and_then(|s| s.ok.clone())
    }

    pub(super) fn complete(
        &self,
        key: AccountKey,
        result: Result<FetchedAccount, PipedreamError>,
        at: Timestamp,
    ) {
        let mut slots = lock(&self.slots);
        let s = slots.entry(key).or_default();
        s.generation += 1;
        s.last = Some(match result {
            Ok(f) => {
                let c = CachedFetch {
                    fetched: Arc::new(f),
                    at,
                };
                s.ok = Some(c.clone());
                Attempt::Ok(c)
            }
            Err(e) => Attempt::Failed(e),
        });
    }
}
