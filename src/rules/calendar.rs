//! Refresh slots: one namespace's next fetches on one connection, booked at the rate the connection can serve.
//!
//! Tokens Pipedream minted together are refreshed together: every account of such a batch comes due in the same
//! second (`R + δ` for all of them), and the fetch queue then held one entry per account while the rate limiter
//! served them one by one (10,000 entries, a few MiB, at the benchmark's refresh, and the memory stayed scattered
//! after). When a pass schedules its next fetch, it books a slot instead: the time it wants if that slot is free,
//! else the first free slot after it, so a batch comes due spread at the connection's rate and is served as it
//! comes. A slot is never later than the latest time the schedule allows ([`crate::schedule::latest_booking`]);
//! past that the wanted time stands and the queue orders it by urgency, as before.
//!
//! Each namespace books on its own calendar: a namespace that books a thousand slots moves none of another
//! namespace's times (the queue's lanes share the connection between namespaces that are due together).

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;

/// One namespace's booked slots on one connection: runs of consecutive slots (`start → end`, end exclusive), so a
/// batch booked back to back is one entry.
#[derive(Debug)]
pub struct Calendar {
    /// One slot's length, in nanoseconds (the connection's interval between requests): slot `k` starts at
    /// `k × slot` since the Unix epoch.
    slot: i128,
    runs: BTreeMap<i128, i128>,
}

impl Calendar {
    /// A calendar of slots `period` long (at least a nanosecond).
    pub fn new(period: Duration) -> Self {
        Self {
            slot: i128::try_from(period.as_nanos())
                .unwrap_or(i128::MAX)
                .max(1),
            runs: BTreeMap::new(),
        }
    }

    /// Book the slot for a fetch wanted at `at` and return when to schedule it: `at` itself when its slot is free;
    /// else the start of the first free slot after it, if that is no later than `latest`; else `at` (not booked).
    /// Slots that ended before `now` are forgotten first.
    pub fn book(&mut self, now: Timestamp, at: Timestamp, latest: Timestamp) -> Timestamp {
        self.forget_before(now);
        let wanted = at.as_nanosecond().div_euclid(self.slot);
        let free = match self.runs.range(..=wanted).next_back() {
            Some((_, &end)) if end > wanted => end,
            _ => wanted,
        };
        if free == wanted {
            self.insert(free);
            return at;
        }
        let start = Timestamp::from_nanosecond(free.saturating_mul(self.slot)).ok();
        match start {
            Some(t) if t <= latest => {
                self.insert(free);
                t
            }
            _ => at,
        }
    }

    /// Booked slots.
    #[cfg(test)]
    fn booked(&self) -> i128 {
        self.runs.iter().map(|(s, e)| e - s).sum()
    }

    /// Mark free slot `k` booked, joining the runs it touches.
    fn insert(&mut self, k: i128) {
        let start = match self.runs.range(..k).next_back() {
            Some((&s, &e)) if e == k => s,
            _ => k,
        };
        let end = self.runs.remove(&(k + 1)).unwrap_or(k + 1);
        self.runs.insert(start, end);
    }

    fn forget_before(&mut self, now: Timestamp) {
        let current = now.as_nanosecond().div_euclid(self.slot);
        while let Some(entry) = self.runs.first_entry() {
            if *entry.get() > current {
                break;
            }
            entry.remove();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn secs(at: Timestamp, s: f64) -> Timestamp {
        at + Duration::from_secs_f64(s)
    }

    /// `n` bookings at 10:00 of a fetch wanted `at`, allowed up to `latest_after` seconds later.
    fn batch(c: &mut Calendar, n: usize, at: Timestamp, latest_after: f64) -> Vec<Timestamp> {
        let now = t("2026-12-07T10:00:00Z");
        (0..n)
            .map(|_| c.book(now, at, secs(at, latest_after)))
            .collect()
    }

    /// A batch wanted at one moment comes due one slot apart, the first at the wanted time; a booking with a free
    /// slot keeps its exact time.
    #[test]
    fn a_batch_is_spread_one_slot_apart() {
        let now = t("2026-12-07T10:00:00Z");
        let at = t("2026-12-07T10:50:05Z");
        let mut c = Calendar::new(Duration::from_millis(200));
        let want: Vec<_> = (0..5).map(|i| secs(at, 0.2 * f64::from(i))).collect();
        assert_eq!(batch(&mut c, 5, at, 60.0), want);
        assert_eq!((c.booked(), c.runs.len()), (5, 1), "one run");
        let odd = t("2026-12-07T10:20:00.123456789Z");
        assert_eq!(
            c.book(now, odd, odd),
            odd,
            "a free slot keeps its exact time"
        );
        assert_eq!(
            c.book(now, odd, secs(odd, 1.0)),
            secs(t("2026-12-07T10:20:00Z"), 0.2)
        );
    }

    /// A slot past the latest allowed time is not taken: the wanted time stands, and nothing is booked for it.
    #[test]
    fn no_slot_is_later_than_allowed() {
        let at = t("2026-12-07T10:50:00Z");
        let mut c = Calendar::new(Duration::from_secs(1));
        let got = batch(&mut c, 5, at, 2.0);
        assert_eq!(got, [at, secs(at, 1.0), secs(at, 2.0), at, at]);
        assert_eq!(c.booked(), 3);
    }

    /// Bookings fill the gaps between runs and join them; slots that have passed are forgotten.
    #[test]
    fn runs_join_and_passed_slots_are_forgotten() {
        let now = t("2026-12-07T10:00:00Z");
        let mut c = Calendar::new(Duration::from_secs(1));
        for s in [10.0, 12.0, 11.0, 14.0] {
            c.book(now, secs(now, s), secs(now, s));
        }
        assert_eq!(c.runs.len(), 2, "{:?}", c.runs);
        assert_eq!(
            c.book(now, secs(now, 10.0), secs(now, 100.0)),
            secs(now, 13.0)
        );
        assert_eq!(c.runs.len(), 1);
        assert_eq!(
            c.book(now, secs(now, 10.0), secs(now, 100.0)),
            secs(now, 15.0)
        );
        c.book(secs(now, 15.5), secs(now, 30.0), secs(now, 30.0));
        assert_eq!(c.booked(), 7, "slot 15 has not ended: {:?}", c.runs);
        c.book(secs(now, 31.0), secs(now, 40.0), secs(now, 40.0));
        assert_eq!(c.booked(), 1);
    }

    /// Ten thousand bookings of one moment are one run (the calendar's memory does not grow with a batch), and
    /// the last is ten thousand slots later.
    #[test]
    fn a_large_batch_is_one_run() {
        let at = t("2026-12-07T10:10:05Z");
        let mut c = Calendar::new(Duration::from_millis(5));
        let got = batch(&mut c, 10_000, at, 300.0);
        assert_eq!(got.last(), Some(&secs(at, 49.995)));
        assert_eq!(c.runs.len(), 1);
    }
}
