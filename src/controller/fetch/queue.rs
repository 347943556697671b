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

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use jiff::Timestamp;
use kube::runtime::reflector::ObjectRef;

use crate::crd::ConnectedAccount;
pub use crate::rules::answer::Urgency;

/// An account id or a lane's name: one allocation, shared by every place that holds it (the entry, its places in
/// the lanes, its waiters).
type Name = Arc<str>;

/// A place in a lane's order: the time it is wanted by, then the request's sequence (unique).
type Order = (Timestamp, u64);

#[derive(Default)]
struct Lane {
    expiring: BTreeMap<Order, Name>,
    rest: BTreeMap<Order, Name>,
    in_flight: usize,
    /// The queue's turn when this lane was last served: the lowest goes next.
    served: u64,
}

impl Lane {
    fn queued(&self) -> usize {
        self.expiring.len() + self.rest.len()
    }
    fn set(&mut self, expiring: bool) -> &mut BTreeMap<Order, Name> {
        if expiring {
            &mut self.expiring
        } else {
            &mut self.rest
        }
    }
    /// The lane's most urgent account, from refreshes only or from all.
    fn first(&self, refreshes_only: bool) -> Option<(bool, Order)> {
        let e = self.expiring.first_key_value().map(|(o, _)| (true, *o));
        if refreshes_only {
            return e;
        }
        let r = self.rest.first_key_value().map(|(o, _)| (false, *o));
        match (e, r) {
            (Some(e), Some(r)) => Some(if r.1.0 < e.1.0 { r } else { e }),
            (e, r) => e.or(r),
        }
    }
}

/// Where an entry waits in one lane: the lane, its urgency and sequence there.
type Slot = (Name, Urgency, u64);

/// Who asked, by namespace (shared with its lane's name) and name only (see [`Queue::request`]).
struct Waiter {
    namespace: Option<Name>,
    name: Box<str>,
}

impl Waiter {
    fn is(&self, who: &ObjectRef<ConnectedAccount>) -> bool {
        *self.name == who.name && self.namespace.as_deref() == who.namespace.as_deref()
    }

    fn reference(&self) -> ObjectRef<ConnectedAccount> {
        let mut r = ObjectRef::new(&self.name);
        r.namespace = self.namespace.as_deref().map(str::to_string);
        r
    }
}

/// One queued account. Boxed in the map, with its lane places and waiters in vectors: a herd of refreshes coming
/// due at once queues an entry per account (10,000 at the benchmark's refresh), so an entry is one small block
/// plus its waiter's name, and the account id and namespace are shared, not copied (a one-element hash set costs
/// four slots; an unboxed entry costs its size 1.6 times over in the map's table).
#[derive(Default)]
struct Entry {
    slots: Vec<Slot>,
    /// The lane that took it, while in flight.
    taken_by: Option<Name>,
    waiters: Vec<Waiter>,
}

/// The queue of one connection.
#[derive(Default)]
pub(super) struct Queue {
    lanes: BTreeMap<Name, Lane>,
    entries: HashMap<Name, Box<Entry>>,
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
        let lane_name = self.lane_name(who.namespace.as_deref().unwrap_or_default());
        let id = match self.entries.get_key_value(account) {
            Some((id, _)) => id.clone(),
            None => {
                let id = Name::from(account);
                self.entries.insert(id.clone(), Box::default());
                id
            }
        };
        let Some(e) = self.entries.get_mut(&id) else {
            return;
        };
        if !e.waiters.iter().any(|w| w.is(who)) {
            e.waiters.push(Waiter {
                namespace: who.namespace.as_ref().map(|_| lane_name.clone()),
                name: who.name.as_str().into(),
            });
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
            lane.set(set).remove(&(t, old_seq));
        }
        let (set, t) = urgency.slot();
        lane.set(set).insert((t, seq), id);
    }

    /// The name of lane `namespace`, shared with the lane when it exists.
    fn lane_name(&self, namespace: &str) -> Name {
        match self.lanes.get_key_value(namespace) {
            Some((name, _)) => name.clone(),
            None => Name::from(namespace),
        }
    }

    /// Remove an account's places in every lane but `except`, and lanes left with nothing.
    fn unqueue(&mut self, slots: &[Slot], except: Option<&str>) {
        for (lane, u, seq) in slots {
            if Some(&**lane) == except {
                continue;
            }
            if let Some(l) = self.lanes.get_mut(lane) {
                let (set, t) = u.slot();
                l.set(set).remove(&(t, *seq));
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
            .values()
            .chain(lane.rest.values())
            .position(|id| **id == *account)
    }

    /// The lane, order and place that would go next, if any may go now.
    fn pick(&self) -> Option<(&Name, bool, Order)> {
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
                .min_by_key(|(name, served, _)| (*served, &***name));
            if let Some((name, _, (set, order))) = best {
                return Some((name, set, order));
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
        let (lane, set, order) = self.pick().map(|(l, s, o)| (l.clone(), s, o))?;
        self.turn += 1;
        let turn = self.turn;
        let l = self.lanes.get_mut(&lane)?;
        let id = l.set(set).remove(&order)?;
        l.in_flight += 1;
        l.served = turn;
        self.in_flight += 1;
        let slots = match self.entries.get_mut(&id) {
            Some(e) => {
                e.taken_by = Some(lane.clone());
                std::mem::take(&mut e.slots)
            }
            None => Vec::new(),
        };
        self.unqueue(&slots, Some(&lane));
        Some(id.to_string())
    }

    /// `account`'s fetch is done: its waiters.
    pub(super) fn finish(&mut self, account: &str) -> Vec<ObjectRef<ConnectedAccount>> {
        let Some(e) = self.entries.remove(account) else {
            return Vec::new();
        };
        self.unqueue(&e.slots, None);
        if let Some(lane) = &e.taken_by {
            self.in_flight = self.in_flight.saturating_sub(1);
            if let Some(l) = self.lanes.get_mut(lane) {
                l.in_flight = l.in_flight.saturating_sub(1);
                if l.queued() == 0 && l.in_flight == 0 {
                    self.lanes.remove(lane);
                }
            }
        }
        // A map keeps its largest table: after a herd (10,000 refreshes due at once) give it back as it drains.
        if self.entries.capacity() > 64 && self.entries.len() < self.entries.capacity() / 4 {
            self.entries.shrink_to(self.entries.len() * 2);
        }
        e.waiters.iter().map(Waiter::reference).collect()
    }

    /// Drop everything queued: the waiters of every entry.
    pub(super) fn drain(&mut self) -> Vec<ObjectRef<ConnectedAccount>> {
        self.lanes.clear();
        self.in_flight = 0;
        self.entries
            .drain()
            .flat_map(|(_, e)| e.waiters.into_iter().map(|w| w.reference()))
            .collect()
    }
}

#[cfg(test)]
mod tests;
