//! Overlap checks against many filters at once, without comparing every pair.
//!
//! Ten thousand sessions on one port, each `x-user: <name>`, would need 50 million
//! [`overlap`] calls if every new filter were compared with every held one. Most of
//! those pairs are disjoint for a reason visible without automata: both filters pin the
//! same key (a header or the path) to exact values, and the values differ. A
//! [`DisjointIndex`] files each filter under the exact values it pins and, for a new
//! filter, runs the full [`overlap`] only against the filters such a pin does not rule
//! out. The answer is the same as comparing every pair: a pair is skipped only when
//! every request one filter matches carries a value of the key that no request the
//! other matches carries (the single-value model of [`overlap`]), so it has no witness.

use std::collections::{BTreeMap, BTreeSet};

use super::compile::Test;
use super::{overlap, Filter, Key, Witness};

/// Filters by id, with the exact values each pins per key.
#[derive(Debug)]
pub struct DisjointIndex<I> {
    filters: BTreeMap<I, (Filter, Pins)>,
    /// key → value → ids of the filters that pin the key and allow the value.
    by_value: BTreeMap<Key, BTreeMap<Box<[u8]>, BTreeSet<I>>>,
    /// key → how many filters pin it.
    pinned: BTreeMap<Key, usize>,
}

/// For each key the filter pins: the values it allows (every alternative of the filter
/// requires the key to equal one of them).
type Pins = BTreeMap<Key, BTreeSet<Box<[u8]>>>;

fn pins(filter: &Filter) -> Pins {
    let compiled = filter.compiled();
    let mut alternatives = compiled.dnf.iter().map(|alt| {
        let mut exact: BTreeMap<Key, Box<[u8]>> = BTreeMap::new();
        for &i in alt {
            if let Test::Exact(v) = &compiled.atoms[i].test {
                // Two different exact values on one key: the alternative is empty, and
                // pinning it to either value is still true of every request it matches.
                exact.entry(compiled.atoms[i].key.clone()).or_insert_with(|| v.clone());
            }
        }
        exact
    });
    let Some(first) = alternatives.next() else {
        return Pins::new(); // a filter without alternatives: nothing to skip on
    };
    let mut pins: Pins = first.into_iter().map(|(k, v)| (k, BTreeSet::from([v]))).collect();
    for alt in alternatives {
        pins.retain(|key, values| match alt.get(key) {
            Some(v) => {
                values.insert(v.clone());
                true
            }
            None => false, // this alternative does not pin the key: neither does the filter
        });
    }
    pins
}

impl<I: Ord + Clone> Default for DisjointIndex<I> {
    fn default() -> Self {
        Self::new()
    }
}

impl<I: Ord + Clone> DisjointIndex<I> {
    /// An empty index.
    pub fn new() -> Self {
        DisjointIndex {
            filters: BTreeMap::new(),
            by_value: BTreeMap::new(),
            pinned: BTreeMap::new(),
        }
    }

    /// How many filters are held.
    pub fn len(&self) -> usize {
        self.filters.len()
    }

    /// True when no filter is held.
    pub fn is_empty(&self) -> bool {
        self.filters.is_empty()
    }

    /// Adds (or replaces) the filter of `id`. Does not check overlap: call
    /// [`DisjointIndex::first_overlap`] first.
    pub fn insert(&mut self, id: I, filter: Filter) {
        self.remove(&id);
        let pins = pins(&filter);
        for (key, values) in &pins {
            *self.pinned.entry(key.clone()).or_default() += 1;
            let by_value = self.by_value.entry(key.clone()).or_default();
            for v in values {
                by_value.entry(v.clone()).or_default().insert(id.clone());
            }
        }
        self.filters.insert(id, (filter, pins));
    }

    /// Removes the filter of `id`, if held.
    pub fn remove(&mut self, id: &I) -> Option<Filter> {
        let (filter, pins) = self.filters.remove(id)?;
        for (key, values) in &pins {
            if let Some(n) = self.pinned.get_mut(key) {
                *n -= 1;
                if *n == 0 {
                    self.pinned.remove(key);
                }
            }
            if let Some(by_value) = self.by_value.get_mut(key) {
                for v in values {
                    if let Some(ids) = by_value.get_mut(v) {
                        ids.remove(id);
                        if ids.is_empty() {
                            by_value.remove(v);
                        }
                    }
                }
                if by_value.is_empty() {
                    self.by_value.remove(key);
                }
            }
        }
        Some(filter)
    }

    /// A held filter that can match a request `filter` matches, with that request:
    /// the same answer as [`overlap`] against every held filter in id order, found by
    /// comparing only the filters no exact pin rules out.
    pub fn first_overlap(&self, filter: &Filter) -> Option<(&I, Witness)> {
        let pins = pins(filter);
        // The key that leaves the fewest candidates: held filters that do not pin it
        // (they may match any value) plus those that allow one of our values.
        let best = pins
            .iter()
            .map(|(key, values)| {
                let pinned = self.pinned.get(key).copied().unwrap_or(0);
                let by_value = self.by_value.get(key);
                let allowing: usize = values.iter().filter_map(|v| by_value?.get(v)).map(BTreeSet::len).sum();
                (self.filters.len() - pinned + allowing, key, values)
            })
            .min_by_key(|(n, _, _)| *n);
        let Some((_, key, values)) = best else {
            return self.check(filter, self.filters.keys());
        };
        let mut candidates: BTreeSet<&I> = BTreeSet::new();
        if let Some(by_value) = self.by_value.get(key) {
            for v in values {
                candidates.extend(by_value.get(v).into_iter().flatten());
            }
        }
        if self.pinned.get(key).copied().unwrap_or(0) < self.filters.len() {
            candidates.extend(
                self.filters
                    .iter()
                    .filter(|(_, (_, their))| !their.contains_key(key))
                    .map(|(id, _)| id),
            );
        }
        self.check(filter, candidates.into_iter())
    }

    fn check<'a>(&'a self, filter: &Filter, ids: impl Iterator<Item = &'a I>) -> Option<(&'a I, Witness)> {
        ids.filter_map(|id| Some((id, &self.filters.get(id)?.0)))
            .find_map(|(id, held)| overlap(filter, held).map(|w| (id, w)))
    }
}
