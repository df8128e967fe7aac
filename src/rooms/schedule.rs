//! [`Schedule`]: deadlines by key, soonest first: what a room (or the server, for saved rooms to
//! wake) has to do at what time. Setting a key's deadline replaces the one it had, so each key
//! is due at most once; finding the next deadline and taking what is due cost O(log n).

use std::collections::{BTreeMap, BTreeSet};

use tokio::time::Instant;

#[derive(Debug, Clone)]
pub struct Schedule<K: Ord + Clone, T: Ord + Copy = Instant> {
    queue: BTreeSet<(T, K)>,
    due: BTreeMap<K, T>,
}

impl<K: Ord + Clone, T: Ord + Copy> Default for Schedule<K, T> {
    fn default() -> Self {
        Schedule {
            queue: BTreeSet::new(),
            due: BTreeMap::new(),
        }
    }
}

impl<K: Ord + Clone, T: Ord + Copy> Schedule<K, T> {
    /// `key` is due at `at` (instead of when it was due before, if it was).
    pub fn set(&mut self, key: K, at: T) {
        if let Some(old) = self.due.insert(key.clone(), at) {
            self.queue.remove(&(old, key.clone()));
        }
        self.queue.insert((at, key));
    }

    /// `key` is no longer due; true if it was.
    pub fn clear(&mut self, key: &K) -> bool {
        match self.due.remove(key) {
            Some(at) => self.queue.remove(&(at, key.clone())),
            None => false,
        }
    }

    /// When `key` is due.
    pub fn get(&self, key: &K) -> Option<T> {
        self.due.get(key).copied()
    }

    /// The soonest deadline.
    pub fn next(&self) -> Option<T> {
        self.queue.first().map(|(at, _)| *at)
    }

    /// Takes everything due at `now` or before, soonest first.
    pub fn take_due(&mut self, now: T) -> Vec<(T, K)> {
        let mut due = Vec::new();
        while self.queue.first().is_some_and(|(at, _)| *at <= now) {
            if let Some((at, key)) = self.queue.pop_first() {
                self.due.remove(&key);
                due.push((at, key));
            }
        }
        due
    }

    pub fn len(&self) -> usize {
        self.due.len()
    }

    pub fn is_empty(&self) -> bool {
        self.due.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each key is due once, at its latest setting; what is due comes soonest first and only up
    /// to now; cleared keys never come.
    #[test]
    fn keys_are_due_once_at_their_latest_time() {
        let mut s: Schedule<&str, u64> = Schedule::default();
        s.set("tick", 50);
        s.set("timer", 30);
        s.set("grace", 70);
        s.set("tick", 10);
        assert_eq!(s.len(), 3);
        assert_eq!(s.next(), Some(10));
        assert_eq!(s.get(&"tick"), Some(10));
        assert!(s.clear(&"grace"));
        assert!(!s.clear(&"grace"));
        assert_eq!(s.take_due(40), vec![(10, "tick"), (30, "timer")]);
        assert_eq!(s.take_due(100), vec![]);
        assert!(s.is_empty());
        assert_eq!(s.next(), None);
    }
}
