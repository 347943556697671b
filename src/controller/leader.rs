//! Lease-based leader election (kube-lease-manager): wait to lead, give leadership up when it cannot be confirmed
//! in time, release the Lease on shutdown so a standby takes over at once.
//!
//! kube-lease-manager renews the Lease but does not report a renewal that keeps failing: a leader cut off from the
//! API server would go on reconciling while a standby takes the expired Lease, and both would write once the
//! partition healed. So, like client-go's `renewDeadline`, the leader reads its Lease back every tenth of the
//! duration and gives up when the last renewal it has seen is older than two thirds of the duration, a third of
//! the duration before a standby can take the Lease.

use std::time::Duration;

use futures::future::{BoxFuture, Shared};
use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client};
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

/// Timing of one Lease, from its duration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Timing {
    duration: Duration,
    /// Renew this long before expiry (kube-lease-manager's grace), so renewals come every third of the duration.
    grace_secs: u64,
    /// Give up when the last confirmed renewal is older than this.
    renew_deadline: Duration,
    /// Read the Lease back this often.
    check_every: Duration,
}

impl Timing {
    fn new(duration_secs: u64) -> Self {
        let duration_secs = duration_secs.max(2);
        let duration = Duration::from_secs(duration_secs);
        Self {
            duration,
            grace_secs: (duration_secs * 2 / 3).clamp(1, duration_secs - 1),
            renew_deadline: duration * 2 / 3,
            check_every: (duration / 10).max(Duration::from_millis(200)),
        }
    }
}

/// What one read of the Lease says about this replica's leadership.
#[derive(Debug, PartialEq, Eq)]
enum Check {
    /// Still ours, renewed at this time.
    Renewed(Timestamp),
    /// Someone else holds it.
    Taken(Option<String>),
}

fn check(lease: &Lease, identity: &str) -> Check {
    let spec = lease.spec.as_ref();
    let holder = spec.and_then(|s| s.holder_identity.clone());
    match (holder.as_deref(), spec.and_then(|s| s.renew_time.as_ref())) {
        (Some(h), Some(t)) if h == identity => Check::Renewed(t.0),
        _ => Check::Taken(holder),
    }
}

/// Whether a leader whose last confirmed renewal was at `renewed` must give up at `now`.
fn overdue(renewed: Timestamp, now: Timestamp, timing: Timing) -> bool {
    now.duration_since(renewed)
        .try_into()
        .is_ok_and(|age: Duration| age > timing.renew_deadline)
}

/// The names of live Leases on `base` of another shard count than `shard`'s, held and acquired before `mine`.
fn earlier_leaders_of_other_counts(
    leases: &[Lease],
    base: &str,
    mine: &str,
    shard: crate::shard::Shard,
    now: Timestamp,
) -> Vec<String> {
    let acquired = |l: &Lease| l.spec.as_ref()?.acquire_time.as_ref().map(|t| t.0);
    let ours = leases
        .iter()
        .find(|l| l.metadata.name.as_deref() == Some(mine))
        .and_then(acquired);
    leases
        .iter()
        .filter_map(|l| {
            let name = l.metadata.name.as_deref()?;
            let other = crate::shard::Shard::of_lease(base, name)?;
            let spec = l.spec.as_ref()?;
            spec.holder_identity.as_ref()?;
            let expires = spec.renew_time.as_ref()?.0
                + jiff::SignedDuration::from_secs(spec.lease_duration_seconds?.into());
            let earlier = match (acquired(l), ours) {
                (Some(theirs), Some(ours)) => (theirs, name) < (ours, mine),
                // Ours unreadable: assume theirs came first.
                (_, None) => true,
                (None, Some(_)) => false,
            };
            (other.count() != shard.count() && expires > now && earlier).then(|| name.to_string())
        })
        .collect()
}

/// Held while this replica leads.
pub struct Leadership {
    rx: watch::Receiver<bool>,
    task: JoinHandle<kube_lease_manager::Result<LeaseManager>>,
    leases: Api<Lease>,
    name: String,
    identity: String,
    timing: Timing,
    /// The last renewal seen (the renewal time kube-lease-manager wrote, from this process's clock).
    renewed: Timestamp,
}

impl Leadership {
    /// Resolves when leadership is lost: kube-lease-manager says so, another replica holds the Lease, or no
    /// renewal could be confirmed within the renew deadline.
    pub async fn lost(&mut self) {
        let mut tick = tokio::time::interval(self.timing.check_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                changed = self.rx.changed() => {
                    if changed.is_err() || !*self.rx.borrow_and_update() {
                        warn!("leadership lost");
                        return;
                    }
                }
                _ = tick.tick() => {
                    let read = tokio::time::timeout(self.timing.check_every, self.leases.get(&self.name)).await;
                    match read {
                        Ok(Ok(lease)) => match check(&lease, &self.identity) {
                            Check::Renewed(t) => self.renewed = self.renewed.max(t),
                            Check::Taken(holder) => {
                                warn!(holder = holder.as_deref().unwrap_or("none"), "the Lease is held by another replica");
                                return;
                            }
                        },
                        Ok(Err(e)) => warn!(error = %e, "cannot read the leader-election Lease"),
                        Err(_) => warn!("reading the leader-election Lease timed out"),
                    }
                    if overdue(self.renewed, Timestamp::now(), self.timing) {
                        warn!(
                            renew_deadline_seconds = self.timing.renew_deadline.as_secs_f64(),
                            "no Lease renewal confirmed within the renew deadline; giving up leadership"
                        );
                        return;
                    }
                }
            }
        }
    }

    /// Wait until no leader of another shard count may still write: a live Lease on `base` of another shard
    /// count that was acquired before this one. During a change of `sharding.shards` the old shards keep leading
    /// until their pods stop; the new ones hold their Leases (standing by, ready) and start once the old Leases
    /// are released or expire. Only earlier Leases count, so an old-count pod that restarts mid-rollout waits for
    /// the new ones rather than both waiting for each other. Fails if leadership is lost meanwhile.
    pub async fn wait_for_other_shard_counts(
        &mut self,
        base: &str,
        shard: crate::shard::Shard,
    ) -> Result<(), String> {
        let mut told = false;
        loop {
            let blocking = match self.leases.list(&Default::default()).await {
                Ok(list) => earlier_leaders_of_other_counts(
                    &list.items,
                    base,
                    &self.name,
                    shard,
                    Timestamp::now(),
                ),
                Err(e) => {
                    warn!(error = %e, "cannot list Leases to check for other shard counts");
                    vec![String::new()]
                }
            };
            if blocking.is_empty() {
                if told {
                    info!("the leaders of the other shard count have stopped");
                }
                return Ok(());
            }
            if !told && !blocking[0].is_empty() {
                info!(leases = ?blocking, "waiting for the leaders of another shard count to stop");
                told = true;
            }
            let pause = self.timing.check_every;
            tokio::select! {
                _ = self.lost() => return Err("lost the leader-election Lease while waiting for the leaders of another shard count".into()),
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// Give the Lease up (graceful shutdown).
    pub async fn release(self) {
        drop(self.rx);
        match self.task.await {
            Ok(Ok(_)) => info!("released the leader-election Lease"),
            Ok(Err(e)) => warn!(error = %e, "releasing the Lease failed"),
            Err(e) => warn!(error = %e, "the leader-election task failed"),
        }
    }
}

/// Block until this replica holds the Lease, or `None` if shutdown came first.
pub async fn acquire(
    client: Client,
    namespace: &str,
    lease: &str,
    identity: &str,
    duration_secs: u64,
    mut shutdown: Shared<BoxFuture<'static, ()>>,
) -> Result<Option<Leadership>, String> {
    let timing = Timing::new(duration_secs);
    let manager = LeaseManagerBuilder::new(client.clone(), lease)
        .with_namespace(namespace)
        .with_identity(identity)
        .with_duration(timing.duration.as_secs())
        .with_grace(timing.grace_secs)
        // A field manager per replica: of two replicas that both saw the Lease free, the API server refuses the
        // second one's apply (holderIdentity is the first one's field), where one shared manager let both win.
        .with_field_manager(format!("{}-{identity}", crate::crd::MANAGER))
        .build()
        .await
        .map_err(|e| format!("leader election: cannot use Lease {namespace}/{lease}: {e}"))?;
    let (mut rx, task) = manager.watch().await;
    info!(lease = %format!("{namespace}/{lease}"), %identity, "waiting to become leader");
    while !*rx.borrow_and_update() {
        tokio::select! {
            changed = rx.changed() => {
                if changed.is_err() {
                    return Err("leader election stopped unexpectedly".into());
                }
            }
            _ = &mut shutdown => {
                drop(rx);
                let _ = task.await;
                return Ok(None);
            }
        }
    }
    info!(%identity, "became leader");
    Ok(Some(Leadership {
        rx,
        task,
        leases: Api::namespaced(client, namespace),
        name: lease.to_string(),
        identity: identity.to_string(),
        timing,
        // Just acquired: the Lease was written now.
        renewed: Timestamp::now(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: Option<&str>, renewed: Option<&str>) -> Lease {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "l"},
            "spec": {"holderIdentity": holder, "renewTime": renewed, "leaseDurationSeconds": 15}}))
        .unwrap()
    }

    #[test]
    fn renewals_come_well_inside_the_renew_deadline_which_ends_before_the_lease() {
        for secs in [2, 3, 6, 15, 30, 137] {
            let t = Timing::new(secs);
            let renew_every = t.duration - Duration::from_secs(t.grace_secs);
            assert!(
                t.grace_secs >= 1 && t.grace_secs < t.duration.as_secs(),
                "{t:?}"
            );
            assert!(
                renew_every + t.check_every < t.renew_deadline || secs <= 3,
                "{t:?}"
            );
            assert!(t.renew_deadline < t.duration, "{t:?}");
        }
        assert_eq!(Timing::new(15).grace_secs, 10);
        assert_eq!(Timing::new(15).renew_deadline, Duration::from_secs(10));
    }

    #[test]
    fn a_lease_is_ours_only_with_our_identity_and_a_renewal_time() {
        let t = "2026-12-01T10:00:00.000000Z";
        assert_eq!(
            check(&lease(Some("me"), Some(t)), "me"),
            Check::Renewed(t.parse().unwrap())
        );
        assert_eq!(
            check(&lease(Some("other"), Some(t)), "me"),
            Check::Taken(Some("other".into()))
        );
        assert_eq!(check(&lease(None, None), "me"), Check::Taken(None));
        assert_eq!(
            check(&lease(Some("me"), None), "me"),
            Check::Taken(Some("me".into()))
        );
    }

    fn shard_lease(name: &str, holder: Option<&str>, acquired: &str, renewed: &str) -> Lease {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "spec": {"holderIdentity": holder, "acquireTime": acquired, "renewTime": renewed,
                     "leaseDurationSeconds": 15}}))
        .unwrap()
    }

    #[test]
    fn new_shards_wait_only_for_live_earlier_leases_of_another_count() {
        use crate::shard::Shard;
        let now: Timestamp = "2026-12-01T10:00:10Z".parse().unwrap();
        let (early, late, fresh) = (
            "2026-12-01T09:00:00Z",
            "2026-12-01T10:00:00Z",
            "2026-12-01T10:00:05Z",
        );
        let leases = [
            shard_lease("pdso", Some("old"), early, fresh),
            shard_lease("pdso-shard-0-of-2", Some("new-0"), late, fresh),
            shard_lease("pdso-shard-1-of-2", Some("new-1"), late, fresh),
            shard_lease("unrelated", Some("x"), early, fresh),
        ];
        let new0 = Shard::new(0, 2).unwrap();
        assert_eq!(
            earlier_leaders_of_other_counts(&leases, "pdso", "pdso-shard-0-of-2", new0, now),
            vec!["pdso".to_string()]
        );
        // The old leader does not wait for the later ones (no deadlock when an old pod restarts first).
        assert!(
            earlier_leaders_of_other_counts(&leases, "pdso", "pdso", Shard::default(), now)
                .is_empty()
        );
        // Released (no holder) or expired Leases do not block.
        let released = [shard_lease("pdso", None, early, fresh), leases[1].clone()];
        assert!(
            earlier_leaders_of_other_counts(&released, "pdso", "pdso-shard-0-of-2", new0, now)
                .is_empty()
        );
        let expired = [
            shard_lease("pdso", Some("old"), early, "2026-12-01T09:59:50Z"),
            leases[1].clone(),
        ];
        assert!(
            earlier_leaders_of_other_counts(&expired, "pdso", "pdso-shard-0-of-2", new0, now)
                .is_empty()
        );
        // A Lease of the same shard count never blocks, however early.
        let same = [
            shard_lease("pdso-shard-1-of-2", Some("new-1"), early, fresh),
            leases[1].clone(),
        ];
        assert!(
            earlier_leaders_of_other_counts(&same, "pdso", "pdso-shard-0-of-2", new0, now)
                .is_empty()
        );
    }

    #[test]
    fn leadership_ends_past_the_renew_deadline() {
        let timing = Timing::new(15);
        let renewed: Timestamp = "2026-12-01T10:00:00Z".parse().unwrap();
        let at = |s: i64| renewed + jiff::SignedDuration::from_secs(s);
        assert!(!overdue(renewed, at(9), timing));
        assert!(overdue(renewed, at(11), timing));
        // A renewal time in the future (clock stepped back) is not overdue.
        assert!(!overdue(renewed, at(-30), timing));
    }
}
