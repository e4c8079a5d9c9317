//! Deterministic slices of stored blocks for rotating scrubs
//! (`verify --subset n/m`): stored block `b` of any data file belongs to
//! slice `(b / 64) mod m`, so a slice reads whole 64-block runs (4 MiB at
//! the default block size) instead of scattered blocks, and running slices
//! 1..m checks every stored block exactly once.

use std::str::FromStr;

/// Blocks per run that stays together in one slice.
pub const RUN: u64 = 64;

/// Slice `n` (1-based) of `m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subset {
    pub n: u32,
    pub m: u32,
}

impl Subset {
    /// Whether stored block `block` is in this slice.
    pub fn contains(&self, block: u64) -> bool {
        (block / RUN) % u64::from(self.m) == u64::from(self.n - 1)
    }

    /// The slice for day `day` (e.g. days since the epoch) of a rotation over
    /// `m` days: a nightly job covers everything every `m` nights.
    pub fn for_day(day: u64, m: u32) -> Subset {
        Subset {
            n: (day % u64::from(m)) as u32 + 1,
            m,
        }
    }
}

impl FromStr for Subset {
    type Err = String;
    fn from_str(s: &str) -> Result<Subset, String> {
        let bad = || format!("{s:?} is not a subset: want n/m with 1 <= n <= m, e.g. 3/7");
        let (n, m) = s.split_once('/').ok_or_else(bad)?;
        let (n, m): (u32, u32) = (
            n.trim().parse().map_err(|_| bad())?,
            m.trim().parse().map_err(|_| bad())?,
        );
        if n == 0 || m == 0 || n > m {
            return Err(bad());
        }
        Ok(Subset { n, m })
    }
}

impl std::fmt::Display for Subset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.n, self.m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_partition_every_block() {
        for m in [1u32, 2, 3, 7] {
            for b in 0..2000u64 {
                let hits = (1..=m).filter(|&n| Subset { n, m }.contains(b)).count();
                assert_eq!(hits, 1, "block {b}, m {m}");
            }
        }
        assert_eq!("3/7".parse::<Subset>().unwrap(), Subset { n: 3, m: 7 });
        for bad in ["0/3", "4/3", "3", "a/b", "1/0"] {
            assert!(bad.parse::<Subset>().is_err(), "{bad}");
        }
        assert_eq!(Subset::for_day(10, 7), Subset { n: 4, m: 7 });
    }
}
