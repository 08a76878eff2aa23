//! Sets of shard indexes kept as compressed ranges ("0-55,57,60-62"), the form the status
//! stores them in, as the Job controller's `completedIndexes` does.

use std::fmt;

/// A set of non-negative indexes as sorted, disjoint, non-adjacent inclusive ranges.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ranges(Vec<(i32, i32)>);

impl Ranges {
    /// Parses the status form. Anything unreadable is skipped: the status is ours, and a
    /// hand-edited one must not stop the controller.
    pub fn parse(s: &str) -> Self {
        let mut set = Ranges::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (a, b) = match part.split_once('-') {
                Some((a, b)) => (a.trim().parse::<i32>(), b.trim().parse::<i32>()),
                None => (part.parse::<i32>(), part.parse::<i32>()),
            };
            if let (Ok(a), Ok(b)) = (a, b)
                && 0 <= a
                && a <= b
            {
                set.insert_range(a, b);
            }
        }
        set
    }

    pub fn from_opt(s: Option<&String>) -> Self {
        s.map(|s| Ranges::parse(s)).unwrap_or_default()
    }

    pub fn contains(&self, i: i32) -> bool {
        let idx = self.0.partition_point(|&(_, end)| end < i);
        self.0.get(idx).is_some_and(|&(start, _)| start <= i)
    }

    pub fn insert(&mut self, i: i32) {
        self.insert_range(i, i)
    }

    fn insert_range(&mut self, a: i32, b: i32) {
        // First range that ends at or after a-1 (could merge), through the last that starts at or before b+1.
        let lo = self.0.partition_point(|&(_, end)| end < a.saturating_sub(1));
        let hi = self.0.partition_point(|&(start, _)| start <= b.saturating_add(1));
        if lo >= hi {
            self.0.insert(lo, (a, b));
        } else {
            let start = a.min(self.0[lo].0);
            let end = b.max(self.0[hi - 1].1);
            self.0.splice(lo..hi, [(start, end)]);
        }
    }

    /// Adds every index of `other`, range by range.
    pub fn union(&mut self, other: &Ranges) {
        for &(a, b) in &other.0 {
            self.insert_range(a, b);
        }
    }

    /// How many indexes the set holds.
    pub fn len(&self) -> i64 {
        self.0.iter().map(|&(a, b)| i64::from(b) - i64::from(a) + 1).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The status form, or None for the empty set.
    pub fn to_opt_string(&self) -> Option<String> {
        (!self.is_empty()).then(|| self.to_string())
    }

    /// The status form for a message: cut after about `max` bytes, at a range, saying how
    /// many indexes the set holds in all ("0,2,4,… (2500 in all)"), so that a message never
    /// grows with the number of shards.
    pub fn abbreviated(&self, max: usize) -> String {
        let full = self.to_string();
        if full.len() <= max {
            return full;
        }
        let cut = full[..max].rfind(',').unwrap_or(0);
        format!("{},… ({} in all)", &full[..cut], self.len())
    }

    /// The highest index, if any.
    pub fn last(&self) -> Option<i32> {
        self.0.last().map(|&(_, end)| end)
    }

    /// The indexes, ascending.
    pub fn iter(&self) -> impl Iterator<Item = i32> + '_ {
        self.0.iter().flat_map(|&(a, b)| a..=b)
    }

    /// Indexes below `limit` not in the set, in ascending order.
    pub fn gaps(&self, limit: i32) -> impl Iterator<Item = i32> + '_ {
        let mut next = 0;
        let mut ranges = self.0.iter().peekable();
        std::iter::from_fn(move || {
            while let Some(&&(a, b)) = ranges.peek() {
                if next < a {
                    break;
                }
                next = next.max(b.saturating_add(1));
                ranges.next();
            }
            (next < limit).then(|| {
                next += 1;
                next - 1
            })
        })
    }
}

impl fmt::Display for Ranges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, &(a, b)) in self.0.iter().enumerate() {
            if n > 0 {
                f.write_str(",")?;
            }
            if a == b { write!(f, "{a}")? } else { write!(f, "{a}-{b}")? }
        }
        Ok(())
    }
}

impl FromIterator<i32> for Ranges {
    fn from_iter<T: IntoIterator<Item = i32>>(iter: T) -> Self {
        let mut set = Ranges::default();
        for i in iter {
            set.insert(i);
        }
        set
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn formats_like_completed_indexes() {
        let set: Ranges = [0, 1, 2, 3, 5, 7, 8, 9].into_iter().collect();
        assert_eq!(set.to_string(), "0-3,5,7-9");
        assert_eq!(Ranges::parse("0-3,5,7-9"), set);
        assert_eq!(set.len(), 8);
        assert_eq!(Ranges::default().to_opt_string(), None);
    }

    #[test]
    fn an_abbreviation_stays_short_and_counts_all() {
        let set: Ranges = (0..5000).map(|i| i * 2).collect();
        let short = set.abbreviated(100);
        assert!(short.len() <= 130 && short.starts_with("0,2,4,") && short.ends_with(",… (5000 in all)"), "{short}");
        assert_eq!(Ranges::parse("3,7-9").abbreviated(100), "3,7-9");
    }

    #[test]
    fn parse_skips_garbage() {
        assert_eq!(Ranges::parse("x,3-1,-4,2").to_string(), "2");
    }

    #[test]
    fn gaps_lists_what_is_missing() {
        let set = Ranges::parse("1-2,5");
        assert_eq!(set.gaps(8).collect::<Vec<_>>(), vec![0, 3, 4, 6, 7]);
        assert_eq!(Ranges::parse("0-9").gaps(10).count(), 0);
    }

    proptest! {
        #[test]
        fn behaves_like_a_set(items in prop::collection::vec(0..200i32, 0..100)) {
            let set: Ranges = items.iter().copied().collect();
            let model: BTreeSet<i32> = items.iter().copied().collect();
            prop_assert_eq!(set.len(), model.len() as i64);
            for i in 0..210 {
                prop_assert_eq!(set.contains(i), model.contains(&i), "index {}", i);
            }
            prop_assert_eq!(Ranges::parse(&set.to_string()), set.clone());
            let gaps: Vec<i32> = set.gaps(210).collect();
            let model_gaps: Vec<i32> = (0..210).filter(|i| !model.contains(i)).collect();
            prop_assert_eq!(gaps, model_gaps);
            // Ranges are disjoint and not adjacent, so the form is canonical.
            for w in set.0.windows(2) {
                prop_assert!(w[0].1 + 1 < w[1].0);
            }
        }
    }
}
