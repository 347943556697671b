//! A fetch's answer as a pass reads it, and how soon a fetch is wanted: what [`super::plan`] decides from, shared
//! with the fetch queue and the answer cache.

use std::sync::Arc;

use jiff::Timestamp;

use crate::pipedream::{FetchedAccount, PipedreamError};

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

/// How soon a fetch is needed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Urgency {
    /// The Secret holds credentials that expire at this time: a refresh, before everything else.
    Expiring(Timestamp),
    /// No Secret yet.
    Missing,
    /// Wanted by this time (a periodic check, a force-sync).
    By(Timestamp),
}

impl Urgency {
    /// Which of a lane's two orders it joins, and where.
    pub(crate) fn slot(self) -> (bool, Timestamp) {
        match self {
            Urgency::Expiring(t) => (true, t),
            Urgency::Missing => (false, Timestamp::MIN),
            Urgency::By(t) => (false, t),
        }
    }

    /// `self` asks for the fetch sooner than `other`.
    pub(crate) fn sooner_than(self, other: Urgency) -> bool {
        let (a, b) = (self.slot(), other.slot());
        (a.0 && !b.0) || (a.0 == b.0 && a.1 < b.1)
    }
}
