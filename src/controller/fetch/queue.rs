//! One connection's fetch queue, pure: one lane per namespace, so on a connection several namespaces share (a
//! ClusterPipedreamConnection) each gets a fair share of its requests and of its in-flight slots, whatever the
//! others queue. The next request is chosen only when one may be sent (after the rate limiter's wait), so it is
//! the most urgent at that moment:
//!
//! 1. refreshes of credentials a Secret holds, earliest expiry first, lanes taking turns;
//! 2. then everything else (missing Secrets first, then by the time needed), lanes taking turns.
//!
//! A lane at its share of the in-flight slots waits while other lanes have work. An account several namespaces
//! ask for waits in each asker's lane, at each one's urgency, and goes with whichever lane reaches it first: a
//! namespace asking first for another's account cannot put that account's refresh in its own (busy) lane.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use jiff::Timestamp;
use kube::runtime::reflector::ObjectRef;

use crate::crd::ConnectedAccount;
pub use crate::rules::answer::Urgency;

type Key = (Timestamp, u64, String);

#[derive(Default)]
struct Lane {
    expiring: BTreeSet<Key>,
    rest: BTreeSet<Key>,
    in_flight: usize,
    /// The queue's turn when this lane was last served: the lowest goes next.
    served: u64,
}

impl Lane {
    fn queued(&self) -> usize {
        self.expiring.len() + self.rest.len()
    }
    fn set(&mut self, expiring: bool) -> &mut BTreeSet<Key> {
        if expiring {
            &mut self.expiring
        } else {
            &mut self.rest
        }
    }
    /// The lane's most urgent account, from refreshes only or from all.
    fn first(&self, refreshes_only: bool) -> Option<(bool, &Key)> {
        let e = self.expiring.first().map(|k| (true, k));
        if refreshes_only {
            return e;
        }
        let r = self.rest.first().map(|k| (false, k));
        match (e, r) {
            (Some(e), Some(r)) => Some(if r.1.0 < e.1.0 { r } else { e }),
            (e, r) => e.or(r),
        }
    }
}

/// Where an entry waits in one lane: the lane, its urgency and sequence there.
type Slot = (String, Urgency, u64);

/// One queued account. Vectors, not sets: nearly every entry has one lane and one waiter, and a queue holds an
/// entry per account while a first sync of 10,000 waits for the rate limit (a one-element hash set costs four
/// slots).
struct Entry {
    slots: Vec<Slot>,
    /// The lane that took it, while in flight.
    taken_by: Option<String>,
    /// Who asked, by name only (see [`Queue::request`]).
    waiters: Vec<ObjectRef<ConnectedAccount>>,
}

/// The queue of one connection.
#[derive(Default)]
pub(super) struct Queue {
    lanes: BTreeMap<String, Lane>,
    entries: HashMap<String, Entry>,
    in_flight: usize,
    seq: u64,
    turn: u64,
    /// The connection's in-flight limit.
    pub(super) max_in_flight: usize,
}

impl Queue {
    pub(super) fn new(max_in_flight: usize) -> Self {
        Self {
            max_in_flight,
            ..Self::default()
        }
    }

    /// Queue `account` for `who` in `who`'s lane (its namespace); a request for an account already queued joins it
    /// and can only make it sooner in that lane. `who` is kept by name and namespace only (a trigger needs no
    /// more; its uid and resourceVersion would be two more strings per queued request).
    pub(super) fn request(
        &mut self,
        account: &str,
        urgency: Urgency,
        who: &ObjectRef<ConnectedAccount>,
    ) {
        self.seq += 1;
        let seq = self.seq;
        let lane_name = who.namespace.clone().unwrap_or_default();
        let e = self
            .entries
            .entry(account.to_string())
            .or_insert_with(|| Entry {
                slots: Vec::new(),
                taken_by: None,
                waiters: Vec::new(),
            });
        if !e.waiters.contains(who) {
            let mut by_name = ObjectRef::new(&who.name);
            by_name.namespace.clone_from(&who.namespace);
            e.waiters.push(by_name);
        }
        if e.taken_by.is_some() {
            return;
        }
        let at = e.slots.iter().position(|(l, ..)| *l == lane_name);
        let old = at.map(|i| (e.slots[i].1, e.slots[i].2));
        if old.is_some_and(|(u, _)| !urgency.sooner_than(u)) {
            return;
        }
        match at {
            Some(i) => e.slots[i] = (lane_name.clone(), urgency, seq),
            None => e.slots.push((lane_name.clone(), urgency, seq)),
        }
        let lane = self.lanes.entry(lane_name).or_default();
        if let Some((u, old_seq)) = old {
            let (set, t) = u.slot();
            lane.set(set).remove(&(t, old_seq, account.to_string()));
        }
        let (set, t) = urgency.slot();
        lane.set(set).insert((t, seq, account.to_string()));
    }

    /// Remove `account`'s places in every lane but `except`, and lanes left with nothing.
    fn unqueue(&mut self, account: &str, slots: &[Slot], except: Option<&str>) {
        for (lane, u, seq) in slots {
            if Some(lane.as_str()) == except {
                continue;
            }
            if let Some(l) = self.lanes.get_mut(lane) {
                let (set, t) = u.slot();
                l.set(set).remove(&(t, *seq, account.to_string()));
                if l.queued() == 0 && l.in_flight == 0 {
                    self.lanes.remove(lane);
                }
            }
        }
    }

    /// Requests waiting (not in flight).
    pub(super) fn queued(&self) -> usize {
        self.entries
            .values()
            .filter(|e| e.taken_by.is_none())
            .count()
    }

    /// Requests in flight.
    pub(super) fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Where `account` is among its lane's own (0 = next), in the lane where it is nearest, if queued.
    #[cfg(test)]
    pub(super) fn position(&self, account: &str) -> Option<usize> {
        let e = self.entries.get(account)?;
        e.slots
            .iter()
            .filter_map(|(l, ..)| self.position_in(l, account))
            .min()
    }

    /// Where `account` is among lane `lane`'s own (0 = next), if it waits there.
    #[cfg(test)]
    pub(super) fn position_in(&self, lane: &str, account: &str) -> Option<usize> {
        let lane = self.lanes.get(lane)?;
        lane.expiring
            .iter()
            .chain(lane.rest.iter())
            .position(|k| k.2 == account)
    }

    /// The lane and account that would go next, if any may go now.
    fn pick(&self) -> Option<(&str, bool, &Key)> {
        if self.in_flight >= self.max_in_flight {
            return None;
        }
        let active = self
            .lanes
            .values()
            .filter(|l| l.queued() > 0 || l.in_flight > 0)
            .count()
            .max(1);
        let share = self.max_in_flight.div_ceil(active).max(1);
        let eligible = || {
            self.lanes
                .iter()
                .filter(move |(_, l)| l.queued() > 0 && l.in_flight < share)
        };
        for refreshes_only in [true, false] {
            let best = eligible()
                .filter_map(|(name, l)| l.first(refreshes_only).map(|f| (name, l.served, f)))
                .min_by_key(|(name, served, _)| (*served, name.as_str()));
            if let Some((name, _, (set, key))) = best {
                return Some((name.as_str(), set, key));
            }
        }
        None
    }

    /// Whether a request may go now.
    pub(super) fn ready(&self) -> bool {
        self.pick().is_some()
    }

    /// Take the next request: it is in flight until [`Self::finish`].
    pub(super) fn take(&mut self) -> Option<String> {
        let (lane, set, key) = self.pick().map(|(l, s, k)| (l.to_string(), s, k.clone()))?;
        self.turn += 1;
        let turn = self.turn;
        let l = self.lanes.get_mut(&lane)?;
        l.set(set).remove(&key);
        l.in_flight += 1;
        l.served = turn;
        self.in_flight += 1;
        let slots = match self.entries.get_mut(&key.2) {
            Some(e) => {
                e.taken_by = Some(lane.clone());
                std::mem::take(&mut e.slots)
            }
            None => Vec::new(),
        };
        self.unqueue(&key.2, &slots, Some(&lane));
        Some(key.2)
    }

    /// `account`'s fetch is done: its waiters.
    pub(super) fn finish(&mut self, account: &str) -> Vec<ObjectRef<ConnectedAccount>> {
        let Some(e) = self.entries.remove(account) else {
            return Vec::new();
        };
        self.unqueue(account, &e.slots, None);
        if let Some(lane) = &e.taken_by {
            self.in_flight = self.in_flight.saturating_sub(1);
            if let Some(l) = self.lanes.get_mut(lane) {
                l.in_flight = l.in_flight.saturating_sub(1);
                if l.queued() == 0 && l.in_flight == 0 {
                    self.lanes.remove(lane);
                }
            }
        }
        e.waiters
    }

    /// Drop everything queued: the waiters of every entry.
    pub(super) fn drain(&mut self) -> Vec<ObjectRef<ConnectedAccount>> {
        self.lanes.clear();
        self.in_flight = 0;
        self.entries.drain().flat_map(|(_, e)| e.waiters).collect()
    }
}

#[cfg(test)]
mod tests;
