//! Per-key limiter state with a cap on the number of keys.
//!
//! A hash index (`key -> slot`) over a dense vector of entries threaded on a doubly-linked
//! recency list (most recently used at the head). Every operation is O(1): lookups touch the
//! entry (move it to the head), removal swaps the last entry into the hole.
//!
//! Two kinds of removal, both decided by the owning limiter through predicates:
//! - **Sweeping** ([`KeyTable::sweep`]): on every call the limiter offers up to
//!   [`SWEEP_PER_CALL`] entries at the least-recently-used end; those unused for at least
//!   [`SWEEP_GRACE_MS`] whose state is indistinguishable from a fresh key (a full bucket, no
//!   usage) are dropped. This keeps the table proportional to the keys that are actually
//!   active, at a constant cost per call. The grace period keeps a busy key whose bucket is
//!   full at every call from being dropped and re-created (an allocation) call after call.
//! - **Eviction at the cap** ([`KeyTable::insert`]): a new key when the table holds `max_keys`
//!   examines up to [`EVICTION_SCAN`] entries from the least-recently-used end and removes the
//!   first one the limiter allows to go. Entries it may not evict are moved to the head, so the
//!   next insertion examines different ones. If none of them may go, the insertion fails.
//!
//! Each entry carries a serial number, unique within the table, so a reservation can tell the
//! state it was charged to from a later entry of the same key created after an eviction.

use std::collections::HashMap;
use std::sync::Arc;

/// The index's hasher: aHash with per-table random keys. Partition keys hold what clients send
/// (user names, model names), so the hash must stay keyed against flooding; SipHash, std's
/// default, was a sixth of the native admission's instructions (callgrind).
type Hasher = ahash::RandomState;

const NIL: u32 = u32::MAX;

/// Entries examined at the least-recently-used end per call for lossless removal.
pub(crate) const SWEEP_PER_CALL: usize = 2;

/// How long an entry must go unused before sweeping may drop it (ms).
pub(crate) const SWEEP_GRACE_MS: u64 = 1000;

/// Entries examined at the least-recently-used end for one that may be evicted at the cap.
pub(crate) const EVICTION_SCAN: usize = 32;

struct Entry<S> {
    key: Arc<str>,
    serial: u64,
    /// The `now` of the last use (lookup or insertion).
    last_used: u64,
    state: S,
    /// Towards the head (more recently used).
    prev: u32,
    /// Towards the tail (less recently used).
    next: u32,
}

/// The table is at its cap and none of the examined entries may be evicted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Full;

pub(crate) struct KeyTable<S> {
    index: HashMap<Arc<str>, u32, Hasher>,
    entries: Vec<Entry<S>>,
    head: u32,
    tail: u32,
    max_keys: usize,
    next_serial: u64,
}

impl<S> KeyTable<S> {
    /// `max_keys` is at least 1 and at most `u32::MAX - 1` (checked by the limiters).
    pub(crate) fn new(max_keys: usize) -> Self {
        Self {
            index: HashMap::with_hasher(Hasher::new()),
            entries: Vec::new(),
            head: NIL,
            tail: NIL,
            max_keys,
            next_serial: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn max_keys(&self) -> usize {
        self.max_keys
    }

    /// The slot of `key`, moved to the most-recently-used end.
    pub(crate) fn find(&mut self, key: &str, now: u64) -> Option<usize> {
        let slot = *self.index.get(key)?;
        self.move_to_head(slot);
        self.entries[slot as usize].last_used = now;
        Some(slot as usize)
    }

    /// The slot of `key`, leaving its recency alone (for bookkeeping such as expiry, which is
    /// not a use of the key).
    pub(crate) fn find_quietly(&self, key: &str) -> Option<usize> {
        self.index.get(key).map(|&slot| slot as usize)
    }

    /// The slot of `key`, inserting `fresh()` when the key is new (see [`KeyTable::insert`]).
    pub(crate) fn find_or_insert(
        &mut self,
        key: &str,
        now: u64,
        fresh: impl FnOnce() -> S,
        may_evict: impl FnMut(&S) -> bool,
    ) -> Result<usize, Full> {
        match self.find(key, now) {
            Some(slot) => Ok(slot),
            None => self.insert(Arc::from(key), now, fresh(), may_evict),
        }
    }

    /// The slot of `key`, inserting `fresh()` when the key is new and evicting the
    /// least-recently-used entry at the cap, whatever its state. Never fails.
    pub(crate) fn find_or_insert_lru(
        &mut self,
        key: &str,
        now: u64,
        fresh: impl FnOnce() -> S,
    ) -> usize {
        if let Some(slot) = self.find(key, now) {
            return slot;
        }
        if self.entries.len() >= self.max_keys && self.tail != NIL {
            self.remove(self.tail as usize);
        }
        self.push(Arc::from(key), now, fresh())
    }

    /// Insert a key that is not in the table, at the most-recently-used end. At the cap, first
    /// evict one entry that `may_evict` allows, looking at no more than [`EVICTION_SCAN`]
    /// entries from the least-recently-used end.
    fn insert(
        &mut self,
        key: Arc<str>,
        now: u64,
        state: S,
        mut may_evict: impl FnMut(&S) -> bool,
    ) -> Result<usize, Full> {
        if self.entries.len() >= self.max_keys {
            let mut evicted = false;
            for _ in 0..EVICTION_SCAN.min(self.entries.len()) {
                let candidate = self.tail;
                if may_evict(&self.entries[candidate as usize].state) {
                    self.remove(candidate as usize);
                    evicted = true;
                    break;
                }
                // Rotate it to the head so that the next insertion looks at other entries.
                self.move_to_head(candidate);
            }
            if !evicted {
                return Err(Full);
            }
        }
        Ok(self.push(key, now, state))
    }

    fn push(&mut self, key: Arc<str>, now: u64, state: S) -> usize {
        let slot = self.entries.len() as u32;
        let serial = self.next_serial;
        self.next_serial += 1;
        self.index.insert(Arc::clone(&key), slot);
        self.entries.push(Entry {
            key,
            serial,
            last_used: now,
            state,
            prev: NIL,
            next: NIL,
        });
        self.link_at_head(slot);
        slot as usize
    }

    /// Drop entries at the least-recently-used end that have not been used for
    /// [`SWEEP_GRACE_MS`] and whose state `idle` says carries no information (a fresh key
    /// would behave the same), looking at [`SWEEP_PER_CALL`] at most.
    pub(crate) fn sweep(&mut self, now: u64, mut idle: impl FnMut(&S) -> bool) {
        for _ in 0..SWEEP_PER_CALL {
            let tail = self.tail;
            let Some(entry) = self.entries.get(tail as usize) else {
                return;
            };
            if now.saturating_sub(entry.last_used) < SWEEP_GRACE_MS || !idle(&entry.state) {
                return;
            }
            self.remove(tail as usize);
        }
    }

    pub(crate) fn state(&self, slot: usize) -> &S {
        &self.entries[slot].state
    }

    pub(crate) fn state_mut(&mut self, slot: usize) -> &mut S {
        &mut self.entries[slot].state
    }

    pub(crate) fn key(&self, slot: usize) -> &Arc<str> {
        &self.entries[slot].key
    }

    pub(crate) fn serial(&self, slot: usize) -> u64 {
        self.entries[slot].serial
    }

    fn remove(&mut self, slot: usize) {
        self.unlink(slot as u32);
        let removed = self.entries.swap_remove(slot);
        self.index.remove(&removed.key);
        if slot < self.entries.len() {
            // The former last entry now lives at `slot`: repoint the index and its neighbours.
            let moved = slot as u32;
            let (prev, next) = {
                let entry = &self.entries[slot];
                (entry.prev, entry.next)
            };
            if let Some(index) = self.index.get_mut(&self.entries[slot].key) {
                *index = moved;
            }
            match prev {
                NIL => self.head = moved,
                p => self.entries[p as usize].next = moved,
            }
            match next {
                NIL => self.tail = moved,
                n => self.entries[n as usize].prev = moved,
            }
        }
    }

    fn move_to_head(&mut self, slot: u32) {
        if self.head != slot {
            self.unlink(slot);
            self.link_at_head(slot);
        }
    }

    fn unlink(&mut self, slot: u32) {
        let (prev, next) = {
            let entry = &self.entries[slot as usize];
            (entry.prev, entry.next)
        };
        match prev {
            NIL => self.head = next,
            p => self.entries[p as usize].next = next,
        }
        match next {
            NIL => self.tail = prev,
            n => self.entries[n as usize].prev = prev,
        }
    }

    fn link_at_head(&mut self, slot: u32) {
        let old_head = self.head;
        {
            let entry = &mut self.entries[slot as usize];
            entry.prev = NIL;
            entry.next = old_head;
        }
        match old_head {
            NIL => self.tail = slot,
            h => self.entries[h as usize].prev = slot,
        }
        self.head = slot;
    }

    /// Keys from most to least recently used (tests).
    #[cfg(test)]
    pub(crate) fn keys_by_recency(&self) -> Vec<String> {
        let mut out = Vec::with_capacity(self.entries.len());
        let mut slot = self.head;
        while slot != NIL {
            let entry = &self.entries[slot as usize];
            out.push(entry.key.to_string());
            slot = entry.next;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn check_links<S>(table: &KeyTable<S>) {
        assert_eq!(table.index.len(), table.entries.len());
        let keys = table.keys_by_recency();
        assert_eq!(keys.len(), table.entries.len());
        for (key, &slot) in &table.index {
            assert_eq!(&table.entries[slot as usize].key, key);
        }
        let mut slot = table.tail;
        let mut backwards = Vec::new();
        while slot != NIL {
            backwards.push(table.entries[slot as usize].key.to_string());
            slot = table.entries[slot as usize].prev;
        }
        backwards.reverse();
        assert_eq!(backwards, keys);
    }

    #[test]
    fn recency_order_and_eviction_of_the_least_recently_used() {
        let mut t = KeyTable::new(3);
        for k in ["a", "b", "c"] {
            t.find_or_insert(k, 0, || 0, |_| true).unwrap();
        }
        assert_eq!(t.keys_by_recency(), ["c", "b", "a"]);
        t.find("a", 0).unwrap();
        assert_eq!(t.keys_by_recency(), ["a", "c", "b"]);
        t.find_or_insert("d", 0, || 0, |_| true).unwrap();
        assert_eq!(t.keys_by_recency(), ["d", "a", "c"]);
        check_links(&t);
    }

    #[test]
    fn entries_that_may_not_go_are_skipped_and_rotated() {
        let mut t = KeyTable::new(3);
        for (k, pinned) in [("a", true), ("b", false), ("c", true)] {
            t.find_or_insert(k, 0, || pinned, |_| true).unwrap();
        }
        // `a` (least recent) is pinned, so `b` goes; `a` moves to the head.
        t.find_or_insert("d", 0, || false, |&pinned| !pinned)
            .unwrap();
        assert_eq!(t.keys_by_recency(), ["d", "a", "c"]);
        check_links(&t);
    }

    #[test]
    fn a_full_table_of_pinned_entries_refuses_a_new_key() {
        let mut t = KeyTable::new(2);
        t.find_or_insert("a", 0, || (), |_| false).unwrap();
        t.find_or_insert("b", 0, || (), |_| false).unwrap();
        assert_eq!(t.find_or_insert("c", 0, || (), |_| false), Err(Full));
        // An existing key is still found.
        assert!(t.find_or_insert("a", 0, || (), |_| false).is_ok());
        check_links(&t);
    }

    #[test]
    fn sweep_drops_idle_entries_at_the_tail_only() {
        let mut t = KeyTable::new(10);
        for (k, idle) in [("a", true), ("b", true), ("c", true), ("d", false)] {
            t.find_or_insert(k, 0, || idle, |_| true).unwrap();
        }
        t.sweep(SWEEP_GRACE_MS, |&idle| idle);
        assert_eq!(t.keys_by_recency(), ["d", "c"]);
        t.sweep(SWEEP_GRACE_MS, |&idle| idle);
        assert_eq!(t.keys_by_recency(), ["d"]);
        t.sweep(SWEEP_GRACE_MS, |&idle| idle);
        assert_eq!(t.keys_by_recency(), ["d"]);
        check_links(&t);
    }

    #[test]
    fn sweep_spares_entries_used_within_the_grace_period() {
        let mut t = KeyTable::new(10);
        t.find_or_insert("a", 0, || (), |_| true).unwrap();
        t.find_or_insert("b", 500, || (), |_| true).unwrap();
        t.sweep(SWEEP_GRACE_MS + 499, |_| true);
        assert_eq!(t.keys_by_recency(), ["b"]);
        t.find("b", 2000).unwrap();
        t.sweep(2999, |_| true);
        assert_eq!(t.len(), 1);
        t.sweep(3000, |_| true);
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn serials_tell_a_recreated_key_apart() {
        let mut t = KeyTable::new(1);
        let a = t.find_or_insert("a", 0, || (), |_| true).unwrap();
        let first = t.serial(a);
        t.find_or_insert("b", 0, || (), |_| true).unwrap();
        let a = t.find_or_insert("a", 0, || (), |_| true).unwrap();
        assert_ne!(t.serial(a), first);
    }

    proptest! {
        /// Against a naive model (a vector in recency order), with random pins.
        #[test]
        fn behaves_like_a_recency_ordered_list(
            ops in proptest::collection::vec((0u8..8, any::<bool>(), 0u8..3, 0u64..800), 1..200),
            cap in 1usize..6,
        ) {
            let mut t: KeyTable<bool> = KeyTable::new(cap);
            // (key, pinned, last used), most recent first.
            let mut model: Vec<(String, bool, u64)> = Vec::new();
            let mut now = 0;
            for (k, pinned, op, dt) in ops {
                now += dt;
                let key = format!("k{k}");
                match op {
                    0 | 1 => {
                        let got = t.find_or_insert(&key, now, || pinned, |&p| !p);
                        if let Some(pos) = model.iter().position(|(m, _, _)| *m == key) {
                            let mut entry = model.remove(pos);
                            entry.2 = now;
                            model.insert(0, entry);
                            prop_assert!(got.is_ok());
                        } else {
                            let mut ok = true;
                            if model.len() >= cap {
                                let mut evicted = false;
                                for _ in 0..EVICTION_SCAN.min(model.len()) {
                                    let last = model.pop().unwrap();
                                    if !last.1 {
                                        evicted = true;
                                        break;
                                    }
                                    model.insert(0, last);
                                }
                                ok = evicted;
                            }
                            prop_assert_eq!(got.is_ok(), ok);
                            if ok {
                                model.insert(0, (key, pinned, now));
                            }
                        }
                    }
                    _ => {
                        t.sweep(now, |&p| !p);
                        for _ in 0..SWEEP_PER_CALL {
                            match model.last() {
                                Some(&(_, false, used)) if now - used >= SWEEP_GRACE_MS => {
                                    model.pop();
                                }
                                _ => break,
                            }
                        }
                    }
                }
                let keys: Vec<String> = model.iter().map(|(k, _, _)| k.clone()).collect();
                prop_assert_eq!(t.keys_by_recency(), keys);
                prop_assert!(t.len() <= cap);
                check_links(&t);
            }
        }
    }
}
