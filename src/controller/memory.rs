//! What one ConnectedAccount pass changes in the operator's memory of its object ([`ObjectState`]): collected as
//! the pass goes and applied once, when the pass ends, also when it ends with an API error (a Secret written before
//! a failed status write stays remembered). Every stage reads the snapshot the pass started with. Only what the
//! answer cache counts changes at once: the object's use of an account (`Context::use_account`) and the end of
//! its wait for an answer it read (`Context::answer_read`).

use jiff::Timestamp;

use super::ObjectState;
use crate::crd::ConnectedAccountStatus;
use crate::identity::AccountKey;
use crate::rules::plan::Remembered;
use crate::schedule::{self, parse_ts};
use tracing::debug;

/// How long a pass waits for the watch to deliver the operator's own last status write before it takes the cached
/// status as it is (someone else changed it).
const STALE_CACHE_PATIENCE: std::time::Duration = std::time::Duration::from_secs(10);
/// How soon it looks again meanwhile.
const STALE_CACHE_RECHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// How long a pass waits for the Secret watch to deliver the operator's own last Secret write before it reads the
/// Secret (the watch is lagging or broken). A change by someone else right after a write shows in the index as a
/// third version and is read at once; only a deletion within this window waits it out.
const INDEX_LAG_PATIENCE: std::time::Duration = std::time::Duration::from_secs(5);

/// When to look again, if this process wrote something the watches have not delivered yet: a cached object older
/// than its own status write (the Secret's watch event came first) would decide from the status before that write
/// and write it back; until the Secret index (which holds `indexed` for the target: `Some(None)` nothing, `None`
/// not ready) has seen its Secret write, the pass would have to read the Secret (a Merge target is read anyway).
pub fn awaits_watch(
    o: &ObjectState,
    raw_status: Option<&ConnectedAccountStatus>,
    indexed: Option<Option<&str>>,
    merge: bool,
    now: Timestamp,
) -> Option<Timestamp> {
    if let Some((digest, at)) = o.written_status
        && digest != status_digest(raw_status)
        && now < schedule::add(at, STALE_CACHE_PATIENCE)
    {
        debug!("the cached object predates the last status write; waiting for the watch");
        return Some(schedule::add(now, STALE_CACHE_RECHECK));
    }
    let (before, at) = o.index_before_write.as_ref()?;
    let lagging = now < schedule::add(*at, INDEX_LAG_PATIENCE)
        && !merge
        && indexed == Some(before.as_deref());
    lagging.then(|| {
        debug!("the Secret index has not seen the last Secret write; waiting for the watch");
        schedule::add(now, STALE_CACHE_RECHECK)
    })
}

/// What the memory `o` says for the plan, with the connection now at `connection_version`; `connection_failed`:
/// status records a failure a change to the connection can fix.
pub fn remembered(
    o: &ObjectState,
    connection_version: Option<&String>,
    connection_failed: bool,
) -> Remembered {
    Remembered {
        retry_at: o.retry_at,
        last_forced: o.last_forced,
        last_failed: o.last_failed,
        connection_changed: match &o.failed_connection_version {
            Some(was) => connection_version != Some(was),
            // This process has not tried the object yet (a new leader, a restart): nobody knows whether the
            // connection a recorded connection failure was about has changed since, so it is tried once.
            None => o.failures == 0 && connection_failed,
        },
        asked: o.asked.is_some(),
    }
}

/// One pass's change to [`ObjectState`].
#[derive(Debug, Default)]
pub struct MemoryChange {
    /// The pass read the answer it had asked for.
    answer_read: bool,
    /// It asked for a fetch: the account, the answer count at the time, and the force-sync time it answers.
    asked: Option<(AccountKey, u64, Option<Timestamp>)>,
    /// The target Secret's resourceVersion, as read or written.
    secret_version: Option<Option<String>>,
    /// What the Secret index held before this pass's Secret write, and when (`Some(None)`: nothing to wait for).
    index_before_write: Option<Option<(Option<String>, Timestamp)>>,
    /// How the pass ended, when it reached a result.
    ended: Option<Ended>,
    /// The status it wrote: its `nextSyncTime`, its digest, and when.
    status_written: Option<(Option<Timestamp>, u64, Timestamp)>,
    /// When the next pass is due.
    next_pass: Option<Timestamp>,
}

/// How a pass that reached a result ended.
#[derive(Debug)]
pub enum Ended {
    /// Synced (`confirmed`: the Secret was checked against an answer or the index, not only kept).
    Synced { confirmed: bool },
    /// Failed: the `attempt`-th failure in a row, retried at `retry_at`; `at` is when it failed, and
    /// `connection_version` the connection's resourceVersion when the failure was about the connection.
    Failed {
        attempt: u32,
        retry_at: Timestamp,
        at: Timestamp,
        connection_version: Option<String>,
    },
}

impl MemoryChange {
    /// The pass read the answer it had asked for.
    pub fn answer_read(&mut self) {
        self.answer_read = true;
    }

    /// The pass asked for an attempt at `key` past `generation` (`forced_at`: the time of the force-sync it
    /// answers).
    pub fn asked(&mut self, key: AccountKey, generation: u64, forced_at: Option<Timestamp>) {
        self.asked = Some((key, generation, forced_at));
    }

    /// The account a fetch asked for before this pass is still awaited, as the memory `before` holds it: the
    /// answer cache keeps awaited answers, so a new ask replacing it releases it.
    pub fn still_awaited<'a>(&self, before: &'a ObjectState) -> Option<&'a AccountKey> {
        (!self.answer_read)
            .then_some(before.asked.as_ref().map(|(k, _)| k))
            .flatten()
    }

    /// The pass read the Secret, as this process wrote it, at `version`.
    pub fn secret_read(&mut self, version: Option<String>) {
        self.secret_version = Some(version);
    }

    /// The pass wrote the Secret, now at `version`; the index held `indexed_before` (`None`: not ready) just
    /// before, at `now`. A write that changed nothing (same resourceVersion) has no watch event to wait for.
    pub fn secret_written(
        &mut self,
        version: Option<String>,
        indexed_before: Option<Option<String>>,
        now: Timestamp,
    ) {
        self.index_before_write = Some(
            indexed_before
                .filter(|before| before.as_ref() != version.as_ref())
                .map(|before| (before, now)),
        );
        self.secret_version = Some(version);
    }

    /// How the pass ended.
    pub fn ended(&mut self, ended: Ended) {
        self.ended = Some(ended);
    }

    /// The pass wrote `status`, at `at`.
    pub fn status_written(&mut self, status: &ConnectedAccountStatus, at: Timestamp) {
        let next_sync = status.next_sync_time.as_deref().and_then(parse_ts);
        self.status_written = Some((next_sync, status_digest(Some(status)), at));
    }

    /// The next pass is due at `at`.
    pub fn next_pass(&mut self, at: Timestamp) {
        self.next_pass = Some(at);
    }

    /// Apply the change to the object's memory.
    pub fn apply(self, o: &mut ObjectState) {
        if self.answer_read {
            o.asked = None;
        }
        if let Some((key, generation, forced_at)) = self.asked {
            if forced_at.is_some() {
                o.last_forced = forced_at;
            }
            o.asked = Some((key, generation));
        }
        if let Some(v) = self.secret_version {
            o.secret_version = v;
        }
        if let Some(b) = self.index_before_write {
            o.index_before_write = b;
        }
        match self.ended {
            Some(Ended::Synced { confirmed }) => {
                o.failures = 0;
                o.retry_at = None;
                o.failed_connection_version = None;
                if confirmed {
                    o.syncs.succeeded = o.syncs.succeeded.saturating_add(1);
                }
            }
            Some(Ended::Failed {
                attempt,
                retry_at,
                at,
                connection_version,
            }) => {
                o.failures = attempt;
                o.retry_at = Some(retry_at);
                o.last_failed = Some(at);
                o.failed_connection_version = connection_version;
                o.syncs.failed = o.syncs.failed.saturating_add(1);
            }
            None => {}
        }
        if let Some((next_sync, digest, at)) = self.status_written {
            o.written_next_sync = next_sync;
            o.written_status = Some((digest, at));
        }
        if let Some(at) = self.next_pass {
            o.next_pass = Some(at);
        }
    }
}

/// A digest of a status, to tell whether a cached object carries the status last written.
fn status_digest(status: Option<&ConnectedAccountStatus>) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    serde_json::to_string(&status)
        .unwrap_or_default()
        .hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{ConnectionId, ConnectionKey};

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn key(id: &str) -> AccountKey {
        let spec: crate::crd::PipedreamConnectionSpec = serde_json::from_value(serde_json::json!({
            "auth": {"apiKey": {"secretRef": {"name": "k", "key": "k"}}}}))
        .unwrap();
        AccountKey {
            connection: ConnectionKey::new(ConnectionId::namespaced("team-a", "pd"), &spec).into(),
            account_id: id.into(),
        }
    }

    /// A pass that reads its answer and asks again leaves the new ask; one that only reads leaves none.
    #[test]
    fn an_answer_read_then_a_new_ask_leaves_the_new_ask() {
        let mut o = ObjectState {
            asked: Some((key("apn_A"), 3)),
            ..Default::default()
        };
        let mut read = MemoryChange::default();
        read.answer_read();
        assert_eq!(read.still_awaited(&o), None);
        let mut again = MemoryChange::default();
        again.answer_read();
        again.asked(key("apn_B"), 4, Some(ts("2026-12-07T10:00:00Z")));
        again.apply(&mut o);
        assert_eq!(o.asked, Some((key("apn_B"), 4)));
        assert_eq!(o.last_forced, Some(ts("2026-12-07T10:00:00Z")));
        read.apply(&mut o);
        assert_eq!(o.asked, None);
    }

    /// A failure counts up from what the pass started with; a sync resets it and keeps the counters.
    #[test]
    fn failures_count_and_a_sync_resets_them() {
        let at = ts("2026-12-07T10:00:00Z");
        let mut o = ObjectState::default();
        for attempt in 1..=2 {
            let mut c = MemoryChange::default();
            c.ended(Ended::Failed {
                attempt,
                retry_at: at,
                at,
                connection_version: Some("7".into()),
            });
            c.apply(&mut o);
        }
        assert_eq!((o.failures, o.syncs.failed), (2, 2));
        assert_eq!(o.failed_connection_version.as_deref(), Some("7"));
        let mut c = MemoryChange::default();
        c.ended(Ended::Synced { confirmed: true });
        c.next_pass(at);
        c.apply(&mut o);
        assert_eq!((o.failures, o.retry_at, o.next_pass), (0, None, Some(at)));
        assert_eq!((o.syncs.failed, o.syncs.succeeded), (2, 1));
        assert!(o.failed_connection_version.is_none());
    }

    /// A write the index already holds (same resourceVersion) leaves nothing to wait for.
    #[test]
    fn a_write_that_changed_nothing_waits_for_no_watch_event() {
        let at = ts("2026-12-07T10:00:00Z");
        let mut o = ObjectState::default();
        let mut c = MemoryChange::default();
        c.secret_written(Some("5".into()), Some(Some("5".into())), at);
        c.apply(&mut o);
        assert_eq!(o.index_before_write, None);
        assert_eq!(o.secret_version.as_deref(), Some("5"));
        let mut c = MemoryChange::default();
        c.secret_written(Some("6".into()), Some(Some("5".into())), at);
        c.apply(&mut o);
        assert_eq!(o.index_before_write, Some((Some("5".into()), at)));
        // Nothing recorded leaves the rest as it was.
        MemoryChange::default().apply(&mut o);
        assert_eq!(o.secret_version.as_deref(), Some("6"));
    }
}
