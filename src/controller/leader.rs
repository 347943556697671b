//! Lease-based leader election as client-go's `leaderelection` does it: every decision is timed on this process's
//! monotonic clock, never by comparing the Lease's `renewTime` with the local wall clock, and every write is an
//! update guarded by the Lease's `resourceVersion`.
//!
//! - A standby takes the Lease only when it is free, or when its record has not changed for its whole
//!   `leaseDurationSeconds` *as this process observed it*. Clock skew between nodes, or a clock step, cannot make a
//!   standby take a Lease early (a judge of `renewTime + duration < now` took it as early as its clock ran ahead).
//! - Of two replicas that both saw the Lease free, the API server accepts one write (the other's `resourceVersion`
//!   is stale: 409), so exactly one leads.
//! - The leader renews every third of the duration and gives up (the `lost` future resolves) when no renewal was
//!   confirmed within two thirds of it, counted from when the last confirmed renewal was *sent*. A standby counts
//!   the full duration from when it *saw* that renewal, so the leader has stopped a third of the duration before
//!   anyone can take over, whatever the clocks say.
//!
//! `renewTime` and `acquireTime` are still written (from the wall clock), for people and other tools.
//! (Over 400 lines: taking, renewing and releasing a Lease and the wait for other shard counts are one protocol
//! over one record, read together; tests in leader/tests.rs.)

use std::collections::HashMap;
use std::time::Duration;

use futures::future::{BoxFuture, Shared};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::PostParams;
use kube::{Api, Client};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn};

/// Timing of one Lease, from its duration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Timing {
    duration: Duration,
    /// The leader renews this often.
    renew_every: Duration,
    /// The leader gives up when no renewal sent within this long has been confirmed.
    renew_deadline: Duration,
    /// Standbys read the Lease, and a failed renewal is retried, this often.
    retry: Duration,
}

impl Timing {
    fn new(duration_secs: u64) -> Self {
        let duration = Duration::from_secs(duration_secs.max(2));
        Self {
            duration,
            renew_every: duration / 3,
            renew_deadline: duration * 2 / 3,
            retry: (duration / 10).max(Duration::from_millis(200)),
        }
    }
}

/// Why a write of the Lease did not take.
#[derive(Debug, thiserror::Error)]
enum WriteError {
    /// Someone wrote the Lease since it was read (409).
    #[error("the Lease changed since it was read")]
    Stale,
    /// Anything else (the API server unreachable, RBAC, ...).
    #[error(transparent)]
    Api(#[from] kube::Error),
}

/// A failure to take part in leader election.
#[derive(Debug, thiserror::Error)]
pub enum ElectionError {
    /// The Lease could not be read or written while waiting to lead.
    #[error("leader election: cannot use Lease {lease}: {source}")]
    UseLease {
        /// `namespace/name`.
        lease: String,
        /// What the API server answered.
        source: kube::Error,
    },
    /// Leadership was lost while waiting for the leaders of another shard count.
    #[error("lost the leader-election Lease while waiting for the leaders of another shard count")]
    LostWhileWaiting,
}

fn holder(lease: &Lease) -> Option<&str> {
    lease
        .spec
        .as_ref()?
        .holder_identity
        .as_deref()
        .filter(|h| !h.is_empty())
}

fn lease_duration(lease: &Lease, fallback: Duration) -> Duration {
    lease
        .spec
        .as_ref()
        .and_then(|s| s.lease_duration_seconds)
        .and_then(|s| u64::try_from(s).ok())
        .map_or(fallback, Duration::from_secs)
}

/// What this process last saw of one Lease: its record (`resourceVersion`) and when it first saw it, on the
/// monotonic clock.
#[derive(Clone, Debug)]
struct Observed {
    version: Option<String>,
    since: Instant,
}

/// Observations of several Leases, keyed by name.
#[derive(Debug, Default)]
struct Observations(HashMap<String, Observed>);

impl Observations {
    /// Record `lease` as read at `now`; returns when its current record was first seen.
    fn see(&mut self, name: &str, lease: &Lease, now: Instant) -> Instant {
        let version = lease.metadata.resource_version.clone();
        let o = self.0.entry(name.to_string()).or_insert_with(|| Observed {
            version: version.clone(),
            since: now,
        });
        if o.version != version {
            *o = Observed {
                version,
                since: now,
            };
        }
        o.since
    }
}

/// Whether a Lease read at `now`, whose record was first seen at `since`, binds others: it has a holder and its
/// record changed within its duration (as observed here).
fn live(lease: &Lease, since: Instant, now: Instant, fallback: Duration) -> bool {
    holder(lease).is_some() && now.duration_since(since) < lease_duration(lease, fallback)
}

/// The names of `leases` on `base` of another shard count than `shard`'s that are `live` and were acquired before
/// `mine` (by `acquireTime`, then name: both written by their holders, so only an order, never a deadline).
fn earlier_leaders_of_other_counts(
    leases: &[Lease],
    base: &str,
    mine: &str,
    shard: crate::shard::Shard,
    live: impl Fn(&Lease) -> bool,
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
            let earlier = match (acquired(l), ours) {
                (Some(theirs), Some(ours)) => (theirs, name) < (ours, mine),
                // Ours unreadable: assume theirs came first.
                (_, None) => true,
                (None, Some(_)) => false,
            };
            (other.count() != shard.count() && earlier && live(l)).then(|| name.to_string())
        })
        .collect()
}

/// The Lease's spec with `identity` holding it from now.
fn held_spec(
    previous: Option<&LeaseSpec>,
    identity: &str,
    timing: Timing,
    take: bool,
) -> LeaseSpec {
    let now = MicroTime(jiff::Timestamp::now());
    let previous = previous.cloned().unwrap_or_default();
    let secs = i32::try_from(timing.duration.as_secs()).unwrap_or(i32::MAX);
    LeaseSpec {
        holder_identity: Some(identity.to_string()),
        lease_duration_seconds: Some(secs),
        acquire_time: if take {
            Some(now.clone())
        } else {
            previous.acquire_time
        },
        renew_time: Some(now),
        lease_transitions: if take {
            Some(previous.lease_transitions.unwrap_or(0).saturating_add(1))
        } else {
            previous.lease_transitions
        },
        ..previous
    }
}

/// One Lease, as this replica reads and writes it.
#[derive(Clone)]
struct LeaseClient {
    api: Api<Lease>,
    name: String,
    identity: String,
    timing: Timing,
    params: PostParams,
}

impl LeaseClient {
    async fn get(&self) -> Result<Option<Lease>, kube::Error> {
        self.api.get_opt(&self.name).await
    }

    /// Write `spec` over `current` (create when there is none), guarded by its resourceVersion.
    async fn write(&self, current: Option<&Lease>, spec: LeaseSpec) -> Result<Lease, WriteError> {
        let result = match current {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        ..Default::default()
                    },
                    spec: Some(spec),
                };
                self.api.create(&self.params, &lease).await
            }
            Some(current) => {
                let lease = Lease {
                    metadata: current.metadata.clone(),
                    spec: Some(spec),
                };
                self.api.replace(&self.name, &self.params, &lease).await
            }
        };
        result.map_err(|e| match e {
            kube::Error::Api(s) if s.code == 409 => WriteError::Stale,
            e => WriteError::Api(e),
        })
    }

    /// One attempt to take the Lease, `observed` keeping what was seen of it: `Some(lease)` when this replica now
    /// holds it.
    async fn try_acquire(&self, observed: &mut Observations) -> Result<Option<Lease>, kube::Error> {
        let current = self.get().await?;
        let now = Instant::now();
        let take = match &current {
            None => true,
            Some(lease) => {
                let since = observed.see(&self.name, lease, now);
                match holder(lease) {
                    // A restart of this replica (same identity): its own Lease.
                    Some(h) if h == self.identity => true,
                    Some(_) => !live(lease, since, now, self.timing.duration),
                    None => true,
                }
            }
        };
        if !take {
            return Ok(None);
        }
        let spec = held_spec(
            current.as_ref().and_then(|l| l.spec.as_ref()),
            &self.identity,
            self.timing,
            true,
        );
        match self.write(current.as_ref(), spec).await {
            Ok(lease) => Ok(Some(lease)),
            Err(WriteError::Stale) => Ok(None),
            Err(WriteError::Api(e)) => Err(e),
        }
    }

    /// Renew `held`: the new record, or why not. A Lease someone else now holds is `Ok(None)`.
    async fn renew(&self, held: &Lease) -> Result<Option<Lease>, WriteError> {
        let spec = held_spec(held.spec.as_ref(), &self.identity, self.timing, false);
        match self.write(Some(held), spec).await {
            Ok(lease) => Ok(Some(lease)),
            Err(WriteError::Stale) => {
                // Written by someone since: ours still (a retried request that did land), or taken.
                let Some(now) = self.get().await? else {
                    return Ok(None);
                };
                if holder(&now) != Some(self.identity.as_str()) {
                    return Ok(None);
                }
                let spec = held_spec(now.spec.as_ref(), &self.identity, self.timing, false);
                self.write(Some(&now), spec).await.map(Some)
            }
            Err(e) => Err(e),
        }
    }

    /// Give the Lease up: no holder, so a standby takes it at once.
    async fn release(&self, held: &Lease) {
        let mut spec = held.spec.clone().unwrap_or_default();
        spec.holder_identity = None;
        spec.renew_time = Some(MicroTime(jiff::Timestamp::now()));
        match self.write(Some(held), spec).await {
            Ok(_) => info!("released the leader-election Lease"),
            Err(e) => warn!(error = %e, "releasing the Lease failed"),
        }
    }
}

/// The leader's renewal loop: renews every `renew_every`, retries failures every `retry`, and reports on `tx`
/// whether leadership still holds; ends (releasing the Lease) when `stop` fires, or when leadership is lost.
async fn keep(
    client: LeaseClient,
    mut held: Lease,
    tx: watch::Sender<bool>,
    mut stop: watch::Receiver<bool>,
) {
    let t = client.timing;
    let mut confirmed_sent = Instant::now();
    let mut next = confirmed_sent + t.renew_every;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next.min(confirmed_sent + t.renew_deadline)) => {}
            _ = stop.changed() => {
                client.release(&held).await;
                return;
            }
        }
        let sent = Instant::now();
        if sent.duration_since(confirmed_sent) >= t.renew_deadline {
            warn!(
                renew_deadline_seconds = t.renew_deadline.as_secs_f64(),
                "no Lease renewal confirmed within the renew deadline; giving up leadership"
            );
            let _ = tx.send(false);
            return;
        }
        // An attempt never outlasts the renew deadline.
        let budget = (confirmed_sent + t.renew_deadline).duration_since(sent);
        match tokio::time::timeout(budget, client.renew(&held)).await {
            Ok(Ok(Some(lease))) => {
                held = lease;
                confirmed_sent = sent;
                next = sent + t.renew_every;
                debug!("renewed the leader-election Lease");
            }
            Ok(Ok(None)) => {
                warn!("the Lease is held by another replica");
                let _ = tx.send(false);
                return;
            }
            Ok(Err(e)) => {
                warn!(error = %e, "renewing the leader-election Lease failed");
                next = Instant::now() + t.retry;
            }
            Err(_) => {
                warn!("renewing the leader-election Lease timed out");
                next = Instant::now();
            }
        }
    }
}

/// Held while this replica leads.
pub struct Leadership {
    rx: watch::Receiver<bool>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    client: LeaseClient,
}

impl Leadership {
    /// Resolves when leadership is lost: another replica holds the Lease, or no renewal could be confirmed within
    /// the renew deadline.
    pub async fn lost(&mut self) {
        loop {
            if !*self.rx.borrow_and_update() {
                warn!("leadership lost");
                return;
            }
            if self.rx.changed().await.is_err() {
                warn!("leadership lost");
                return;
            }
        }
    }

    /// Wait until no leader of another shard count may still write: a live Lease on `base` of another shard
    /// count that was acquired before this one. During a change of `sharding.shards` the old shards keep leading
    /// until their pods stop; the new ones hold their Leases (standing by, ready) and start once the old Leases
    /// are released, or unchanged for their duration as observed here. Only earlier Leases count, so an old-count
    /// pod that restarts mid-rollout waits for the new ones rather than both waiting for each other. Fails if
    /// leadership is lost meanwhile.
    pub async fn wait_for_other_shard_counts(
        &mut self,
        base: &str,
        shard: crate::shard::Shard,
    ) -> Result<(), ElectionError> {
        let mut told = false;
        let mut observed = Observations::default();
        loop {
            let blocking = match self.client.api.list(&Default::default()).await {
                Ok(list) => {
                    let now = Instant::now();
                    let since: HashMap<String, Instant> = list
                        .items
                        .iter()
                        .filter_map(|l| {
                            let name = l.metadata.name.clone()?;
                            let since = observed.see(&name, l, now);
                            Some((name, since))
                        })
                        .collect();
                    let fallback = self.client.timing.duration;
                    Some(earlier_leaders_of_other_counts(
                        &list.items,
                        base,
                        &self.client.name,
                        shard,
                        |l| {
                            l.metadata
                                .name
                                .as_ref()
                                .and_then(|n| since.get(n))
                                .is_some_and(|s| live(l, *s, now, fallback))
                        },
                    ))
                }
                Err(e) => {
                    warn!(error = %e, "cannot list Leases to check for other shard counts");
                    None
                }
            };
            match blocking {
                Some(b) if b.is_empty() => {
                    if told {
                        info!("the leaders of the other shard count have stopped");
                    }
                    return Ok(());
                }
                Some(b) if !told => {
                    info!(leases = ?b, "waiting for the leaders of another shard count to stop");
                    told = true;
                }
                _ => {}
            }
            let pause = self.client.timing.retry;
            tokio::select! {
                _ = self.lost() => return Err(ElectionError::LostWhileWaiting),
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// Give the Lease up (graceful shutdown).
    pub async fn release(self) {
        let _ = self.stop.send(true);
        if let Err(e) = self.task.await {
            warn!(error = %e, "the leader-election task failed");
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
) -> Result<Option<Leadership>, ElectionError> {
    let timing = Timing::new(duration_secs);
    let lc = LeaseClient {
        api: Api::namespaced(client, namespace),
        name: lease.to_string(),
        identity: identity.to_string(),
        timing,
        // A field manager per replica, so the Lease's managed fields say who wrote it.
        params: PostParams {
            field_manager: Some(format!("{}-{identity}", crate::crd::MANAGER)),
            ..Default::default()
        },
    };
    info!(lease = %format!("{namespace}/{lease}"), %identity, "waiting to become leader");
    let mut observed = Observations::default();
    let mut failures = 0u32;
    let held = loop {
        match lc.try_acquire(&mut observed).await {
            Ok(Some(held)) => break held,
            Ok(None) => failures = 0,
            Err(e) => {
                failures += 1;
                // Keep trying while the API server is unreachable; give up on what will not pass by itself.
                let permanent = matches!(&e, kube::Error::Api(s) if s.code == 403 || s.code == 404 || s.code == 422);
                if permanent || failures > 30 {
                    return Err(ElectionError::UseLease {
                        lease: format!("{namespace}/{lease}"),
                        source: e,
                    });
                }
                warn!(error = %e, "cannot read the leader-election Lease");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(timing.retry) => {}
            _ = &mut shutdown => return Ok(None),
        }
    };
    info!(%identity, "became leader");
    let (tx, rx) = watch::channel(true);
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(keep(lc.clone(), held, tx, stop_rx));
    Ok(Some(Leadership {
        rx,
        stop,
        task,
        client: lc,
    }))
}

#[cfg(test)]
mod tests;
