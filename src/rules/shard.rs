//! Sharding ConnectedAccounts across replicas: `--shard i/n` reconciles the accounts whose UID hashes to `i`.
//!
//! Each shard elects its own leader on its own Lease, so `n` shards × 2 replicas give `n` active reconcilers.
//! The hash is FNV-1a over the object's UID: stable across processes and versions (it must never change, or two
//! shards would briefly own the same account after an upgrade), and even for random UIDs.

use std::fmt;
use std::str::FromStr;

/// This replica's slice of the ConnectedAccounts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    index: u32,
    count: u32,
}

impl Default for Shard {
    /// One shard owning everything.
    fn default() -> Self {
        Self { index: 0, count: 1 }
    }
}

impl Shard {
    /// Shard `index` of `count`, if `index < count`.
    pub fn new(index: u32, count: u32) -> Option<Self> {
        (count >= 1 && index < count).then_some(Self { index, count })
    }

    /// Whether the ConnectedAccount with this UID belongs to this shard.
    pub fn owns(&self, uid: &str) -> bool {
        self.count == 1 || fnv1a(uid.as_bytes()) % u64::from(self.count) == u64::from(self.index)
    }

    /// Whether this shard also runs the connection controllers (exactly one shard writes connection status).
    pub fn checks_connections(&self) -> bool {
        self.index == 0
    }

    /// The Lease this shard elects its leader on: the base name unsharded, `<base>-shard-<i>-of-<n>` otherwise.
    pub fn lease_name(&self, base: &str) -> String {
        if self.count == 1 {
            base.to_string()
        } else {
            format!("{base}-shard-{}-of-{}", self.index, self.count)
        }
    }

    /// The shard whose Lease on `base` is named `name`, if it is one (`base` itself is the unsharded one).
    pub fn of_lease(base: &str, name: &str) -> Option<Self> {
        if name == base {
            return Some(Self::default());
        }
        let (i, n) = name
            .strip_prefix(base)?
            .strip_prefix("-shard-")?
            .split_once("-of-")?;
        let parsed = Self::new(i.parse().ok()?, n.parse().ok()?)?;
        // Only the canonical spelling (no `01`, no `+1`).
        (parsed.lease_name(base) == name).then_some(parsed)
    }

    /// This shard's index, `i` of `i/n`.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// How many shards the ConnectedAccounts are split into.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// True when there is more than one shard.
    pub fn is_sharded(&self) -> bool {
        self.count > 1
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl FromStr for Shard {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("{s:?}: expected i/n with 0 <= i < n, e.g. 0/2");
        let (i, n) = s.trim().split_once('/').ok_or_else(bad)?;
        let (i, n) = (
            i.trim().parse().map_err(|_| bad())?,
            n.trim().parse().map_err(|_| bad())?,
        );
        Self::new(i, n).ok_or_else(bad)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_names_round_trip_and_nothing_else_is_a_shard_lease() {
        for (i, n) in [(0, 1), (0, 2), (1, 2), (6, 7)] {
            let s = Shard::new(i, n).unwrap();
            assert_eq!(Shard::of_lease("pdso", &s.lease_name("pdso")), Some(s));
        }
        for other in [
            "pdso-other",
            "pdso-shard-2-of-2",
            "pdso-shard-01-of-2",
            "pdso-shard-+1-of-2",
            "pdso-shard-1-of-",
            "other-shard-0-of-2",
            "pdso2",
        ] {
            assert_eq!(Shard::of_lease("pdso", other), None, "{other}");
        }
    }

    #[test]
    fn parses_i_of_n_and_rejects_the_rest() {
        assert_eq!("1/3".parse::<Shard>(), Ok(Shard { index: 1, count: 3 }));
        assert_eq!("0/1".parse::<Shard>(), Ok(Shard::default()));
        for bad in ["3/3", "0/0", "1", "-1/2", "a/b", "1/2/3", ""] {
            let e = bad.parse::<Shard>().unwrap_err();
            assert!(e.contains("expected i/n"), "{bad}: {e}");
        }
    }

    #[test]
    fn every_uid_has_exactly_one_owner_and_shards_are_even() {
        let n = 4;
        let shards: Vec<Shard> = (0..n).map(|i| Shard::new(i, n).unwrap()).collect();
        let mut per = vec![0usize; n as usize];
        for k in 0..10_000 {
            let uid = format!("{:08x}-1c2d-4e5f-8a9b-{:012x}", k * 7919, k);
            let owners: Vec<usize> = (0..n as usize).filter(|&i| shards[i].owns(&uid)).collect();
            assert_eq!(owners.len(), 1, "{uid}");
            per[owners[0]] += 1;
        }
        assert!(per.iter().all(|&c| (2_250..=2_750).contains(&c)), "{per:?}");
    }

    #[test]
    fn the_hash_is_fixed_forever() {
        // Changing it would move accounts between shards on upgrade: these values must never change.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(
            Shard::new(0, 2).unwrap().lease_name("pdso"),
            "pdso-shard-0-of-2"
        );
        assert_eq!(Shard::default().lease_name("pdso"), "pdso");
        assert!(Shard::default().owns("anything"));
        // Issue 25 (10): shares were whole requests per second, at least 1: 8 shards of 5/s sent 8/s.
        let r = crate::crd::RateLimit {
            requests_per_second: 5,
            burst: 10,
        };
        for shards in [1u32, 2, 3, 8, 16] {
            let q = crate::pipedream::quota(r, shards);
            let together = f64::from(shards) / q.replenish_interval().as_secs_f64();
            assert!(
                (together - 5.0).abs() < 1e-6,
                "{shards} shards send {together}/s"
            );
            assert!(q.burst_size().get() * shards <= 10 || q.burst_size().get() == 1);
        }
        assert_eq!(crate::pipedream::quota(r, 1).burst_size().get(), 10);
    }
}
