//! [`VecSet`]: an ordered set kept as a sorted vector, for the small sets
//! the control plane keeps per Service (a claim's members, a Service's IPs,
//! its (IP, interface) pairs). Nearly all of them hold one element; a
//! `BTreeSet` of one allocates a whole tree node (11 slots: 200–500 bytes),
//! which at thousands of Services was several MiB of the agent's memory.
//! Lookups are binary searches and inserts shift the tail: fine for the
//! handful of elements these sets have, wrong for large ones.

use std::borrow::Borrow;

/// A sorted, duplicate-free vector used as a set. Iterates in order, like
/// a `BTreeSet`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VecSet<T>(Vec<T>);

impl<T> Default for VecSet<T> {
    fn default() -> Self {
        VecSet(Vec::new())
    }
}

impl<T: Ord> VecSet<T> {
    pub fn new() -> Self {
        VecSet(Vec::new())
    }

    /// Adds `value`; false when it was there already.
    pub fn insert(&mut self, value: T) -> bool {
        match self.0.binary_search(&value) {
            Ok(_) => false,
            Err(at) => {
                // Grow by one: these sets stay small and mostly of one.
                self.0.reserve_exact(1);
                self.0.insert(at, value);
                true
            }
        }
    }

    /// Removes `value`; false when it was not there.
    pub fn remove<Q>(&mut self, value: &Q) -> bool
    where
        T: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        match self.0.binary_search_by(|e| e.borrow().cmp(value)) {
            Ok(at) => {
                self.0.remove(at);
                true
            }
            Err(_) => false,
        }
    }

    pub fn contains<Q>(&self, value: &Q) -> bool
    where
        T: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        self.0.binary_search_by(|e| e.borrow().cmp(value)).is_ok()
    }
}

impl<T> VecSet<T> {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The smallest element.
    pub fn first(&self) -> Option<&T> {
        self.0.first()
    }

    pub fn iter(&self) -> std::slice::Iter<'_, T> {
        self.0.iter()
    }

    /// The elements in order.
    pub fn as_slice(&self) -> &[T] {
        &self.0
    }
}

impl<T: Ord> FromIterator<T> for VecSet<T> {
    fn from_iter<I: IntoIterator<Item = T>>(iter: I) -> Self {
        let mut v: Vec<T> = iter.into_iter().collect();
        v.sort();
        v.dedup();
        v.shrink_to_fit();
        VecSet(v)
    }
}

impl<T: Ord, const N: usize> From<[T; N]> for VecSet<T> {
    fn from(values: [T; N]) -> Self {
        values.into_iter().collect()
    }
}

impl<T: Ord> Extend<T> for VecSet<T> {
    fn extend<I: IntoIterator<Item = T>>(&mut self, iter: I) {
        for value in iter {
            self.insert(value);
        }
    }
}

impl<T> IntoIterator for VecSet<T> {
    type Item = T;
    type IntoIter = std::vec::IntoIter<T>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'a, T> IntoIterator for &'a VecSet<T> {
    type Item = &'a T;
    type IntoIter = std::slice::Iter<'a, T>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn one_element_costs_one_slot() {
        let mut s = VecSet::new();
        assert!(s.insert("web".to_string()));
        assert!(!s.insert("web".to_string()));
        assert_eq!(s.0.capacity(), 1);
        assert!(s.contains("web"));
        assert!(s.remove("web"));
        assert!(!s.remove("web"));
        assert!(s.is_empty());
    }

    proptest! {
        /// Any sequence of inserts and removes leaves the same elements, in
        /// the same order, as a BTreeSet given the same sequence.
        #[test]
        fn behaves_like_a_btreeset(ops in proptest::collection::vec((any::<bool>(), 0u8..16), 0..64)) {
            let mut v = VecSet::new();
            let mut b = BTreeSet::new();
            for (insert, x) in ops {
                if insert {
                    prop_assert_eq!(v.insert(x), b.insert(x));
                } else {
                    prop_assert_eq!(v.remove(&x), b.remove(&x));
                }
                prop_assert_eq!(v.iter().collect::<Vec<_>>(), b.iter().collect::<Vec<_>>());
                prop_assert_eq!(v.first(), b.first());
                prop_assert_eq!(v.len(), b.len());
            }
            let collected: VecSet<u8> = b.iter().rev().copied().chain(b.iter().copied()).collect();
            let expected: Vec<u8> = b.iter().copied().collect();
            prop_assert_eq!(collected.as_slice(), expected.as_slice());
        }
    }
}
