//! Outstanding reservations (and leases) of one limiter, in expiry order.
//!
//! A slab of slots threaded on two doubly-linked lists: one over all reservations, oldest
//! first, and optionally one per key (its head and tail live in the key's state as a
//! [`KeyList`]). Every reservation of a limiter gets the same time to live and the limiter's
//! clock never goes back, so insertion order is expiry order: the oldest reservation is always
//! at the head, expiry pops from there, and settling or releasing unlinks from the middle, all
//! in O(1). Memory is proportional to the reservations outstanding (at most the request rate
//! times the time to live); freed slots are reused.
//!
//! A [`ReservationId`] is the slot index and the slot's generation: a slot's generation
//! changes every time it is freed, so a stale id (settled, released, expired) is unknown
//! rather than naming a newer reservation. Generations start at 1, so no id is 0 (which
//! Python code could mistake for "no reservation").

use std::sync::Arc;

use super::ReservationId;

const NIL: u32 = u32::MAX;

/// One outstanding reservation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reservation<P> {
    /// The partition key it was charged to.
    pub key: Arc<str>,
    /// The serial of the key's table entry when it was charged (see `table.rs`).
    pub serial: u64,
    /// When it expires (ms).
    pub expires_at: u64,
    /// What the limiter needs to undo or complete it.
    pub payload: P,
}

struct Slot<P> {
    generation: u32,
    item: Option<Reservation<P>>,
    prev: u32,
    next: u32,
    key_prev: u32,
    key_next: u32,
}

/// The head (oldest) and tail (newest) of one key's reservations, kept in the key's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct KeyList {
    first: u32,
    last: u32,
}

impl Default for KeyList {
    fn default() -> Self {
        Self {
            first: NIL,
            last: NIL,
        }
    }
}

pub(crate) struct Reservations<P> {
    slots: Vec<Slot<P>>,
    free: Vec<u32>,
    head: u32,
    tail: u32,
    live: usize,
}

impl<P> Reservations<P> {
    pub(crate) fn new() -> Self {
        Self {
            slots: Vec::new(),
            free: Vec::new(),
            head: NIL,
            tail: NIL,
            live: 0,
        }
    }

    /// Reservations outstanding.
    pub(crate) fn len(&self) -> usize {
        self.live
    }

    /// Add a reservation at the newest end; `list` threads it on its key's list too.
    /// `expires_at` must not be earlier than that of any outstanding reservation.
    pub(crate) fn insert(
        &mut self,
        item: Reservation<P>,
        list: Option<&mut KeyList>,
    ) -> ReservationId {
        debug_assert!(
            self.tail == NIL
                || self.slots[self.tail as usize]
                    .item
                    .as_ref()
                    .is_some_and(|newest| newest.expires_at <= item.expires_at),
            "reservations must be inserted in expiry order"
        );
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.slots.push(Slot {
                    generation: 1,
                    item: None,
                    prev: NIL,
                    next: NIL,
                    key_prev: NIL,
                    key_next: NIL,
                });
                (self.slots.len() - 1) as u32
            }
        };
        let old_tail = self.tail;
        {
            let s = &mut self.slots[slot as usize];
            s.item = Some(item);
            s.prev = old_tail;
            s.next = NIL;
            s.key_prev = NIL;
            s.key_next = NIL;
        }
        match old_tail {
            NIL => self.head = slot,
            t => self.slots[t as usize].next = slot,
        }
        self.tail = slot;
        if let Some(list) = list {
            let old_last = list.last;
            self.slots[slot as usize].key_prev = old_last;
            match old_last {
                NIL => list.first = slot,
                l => self.slots[l as usize].key_next = slot,
            }
            list.last = slot;
        }
        self.live += 1;
        let generation = self.slots[slot as usize].generation;
        ReservationId((u64::from(generation) << 32) | u64::from(slot))
    }

    fn slot_of(&self, id: ReservationId) -> Option<u32> {
        let slot = (id.0 & u64::from(u32::MAX)) as u32;
        let generation = (id.0 >> 32) as u32;
        let s = self.slots.get(slot as usize)?;
        (s.generation == generation && s.item.is_some()).then_some(slot)
    }

    /// The reservation `id` names, if it is still outstanding.
    pub(crate) fn get(&self, id: ReservationId) -> Option<&Reservation<P>> {
        let slot = self.slot_of(id)?;
        self.slots[slot as usize].item.as_ref()
    }

    /// Remove reservation `id`; `list` must be its key's list if it was threaded on one.
    pub(crate) fn remove(
        &mut self,
        id: ReservationId,
        list: Option<&mut KeyList>,
    ) -> Option<Reservation<P>> {
        let slot = self.slot_of(id)?;
        let (prev, next, key_prev, key_next, item) = {
            let s = &mut self.slots[slot as usize];
            // A new generation makes every copy of this id stale (0 is skipped, see above).
            s.generation = s.generation.checked_add(1).unwrap_or(1);
            (s.prev, s.next, s.key_prev, s.key_next, s.item.take())
        };
        match prev {
            NIL => self.head = next,
            p => self.slots[p as usize].next = next,
        }
        match next {
            NIL => self.tail = prev,
            n => self.slots[n as usize].prev = prev,
        }
        if let Some(list) = list {
            match key_prev {
                NIL => list.first = key_next,
                p => self.slots[p as usize].key_next = key_next,
            }
            match key_next {
                NIL => list.last = key_prev,
                n => self.slots[n as usize].key_prev = key_prev,
            }
        }
        self.free.push(slot);
        self.live -= 1;
        item
    }

    /// The oldest reservation if it has expired by `now`.
    pub(crate) fn expired(&self, now: u64) -> Option<ReservationId> {
        let s = self.slots.get(self.head as usize)?;
        let item = s.item.as_ref()?;
        (item.expires_at <= now).then_some(ReservationId(
            (u64::from(s.generation) << 32) | u64::from(self.head),
        ))
    }

    /// The oldest reservation on a key's list.
    pub(crate) fn oldest_of(&self, list: &KeyList) -> Option<&Reservation<P>> {
        self.slots.get(list.first as usize)?.item.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn item(key: &str, expires_at: u64) -> Reservation<u64> {
        Reservation {
            key: Arc::from(key),
            serial: 0,
            expires_at,
            payload: expires_at,
        }
    }

    #[test]
    fn expiry_pops_in_insertion_order_and_ids_go_stale() {
        let mut r = Reservations::new();
        let a = r.insert(item("k", 10), None);
        let b = r.insert(item("k", 20), None);
        assert_eq!(r.expired(9), None);
        assert_eq!(r.expired(10), Some(a));
        assert_eq!(r.remove(a, None).map(|i| i.payload), Some(10));
        assert_eq!(r.remove(a, None), None);
        // The freed slot is reused with a new generation: the old id stays unknown.
        let c = r.insert(item("k", 30), None);
        assert_ne!(a, c);
        assert!(r.get(a).is_none());
        assert_eq!(r.get(c).map(|i| i.payload), Some(30));
        assert_eq!(r.expired(25), Some(b));
        assert_eq!(r.len(), 2);
    }

    #[test]
    fn unknown_ids_are_not_found() {
        let mut r: Reservations<u64> = Reservations::new();
        assert!(r.get(ReservationId(12345)).is_none());
        assert!(r.remove(ReservationId(u64::MAX), None).is_none());
        assert_eq!(r.expired(u64::MAX), None);
    }

    #[test]
    fn no_id_is_zero() {
        let mut r = Reservations::new();
        let id = r.insert(item("k", 1), None);
        assert_ne!(id, ReservationId(0));
        assert!(r.get(ReservationId(0)).is_none());
    }

    proptest! {
        /// Against a vector model: global order, per-key order and removal from anywhere.
        #[test]
        fn lists_stay_consistent(ops in proptest::collection::vec((0u8..3, 0usize..64), 1..200)) {
            let mut r: Reservations<u64> = Reservations::new();
            let mut lists = [KeyList::default(); 3];
            // (id, key, expires_at), oldest first.
            let mut model: Vec<(ReservationId, usize, u64)> = Vec::new();
            let mut time = 0;
            for (key, pick) in ops {
                let key = key as usize;
                if pick % 2 == 0 || model.is_empty() {
                    time += 1;
                    let id = r.insert(item(&key.to_string(), time), Some(&mut lists[key]));
                    model.push((id, key, time));
                } else {
                    let (id, key, at) = model.remove(pick % model.len());
                    let got = r.remove(id, Some(&mut lists[key]));
                    prop_assert_eq!(got.map(|i| i.expires_at), Some(at));
                }
                prop_assert_eq!(r.len(), model.len());
                prop_assert_eq!(r.expired(u64::MAX), model.first().map(|m| m.0));
                for (k, list) in lists.iter().enumerate() {
                    let oldest = model.iter().find(|m| m.1 == k).map(|m| m.2);
                    prop_assert_eq!(r.oldest_of(list).map(|i| i.expires_at), oldest);
                }
            }
        }
    }
}
