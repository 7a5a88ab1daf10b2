//! Concurrency limits: leases per key that are released, or expire.

use std::sync::Arc;

use super::reservations::{KeyList, Reservation, Reservations};
use super::table::{Full, KeyTable};
use super::{
    check_max_keys, check_positive, Check, Clock, Denial, Grant, Kind, LimiterError, ReservationId,
};

/// One key's leases in flight, oldest first (they expire in that order).
#[derive(Debug, Default)]
pub(crate) struct Flight {
    in_flight: u64,
    leases: KeyList,
}

/// At most `limit` requests in flight per key.
pub struct ConcurrencyLimiter {
    limit: u64,
    ttl_ms: u64,
    keys: KeyTable<Flight>,
    leases: Reservations<()>,
    clock: Clock,
}

impl ConcurrencyLimiter {
    /// `lease_ttl_ms`: how long a lease lasts if it is never released.
    pub fn new(limit: u64, lease_ttl_ms: u64, max_keys: usize) -> Result<Self, LimiterError> {
        Ok(Self {
            limit: check_positive("limit", limit)?,
            ttl_ms: check_positive("lease_ttl", lease_ttl_ms)?,
            keys: KeyTable::new(check_max_keys(max_keys)?),
            leases: Reservations::new(),
            clock: Clock::default(),
        })
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Keys held.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.len() == 0
    }

    /// Leases outstanding, all keys together.
    pub fn leases(&self) -> usize {
        self.leases.len()
    }

    fn begin(&mut self, now: u64) -> u64 {
        let now = self.clock.advance(now);
        while let Some(id) = self.leases.expired(now) {
            self.end_lease(id);
        }
        self.keys.sweep(now, |flight| flight.in_flight == 0);
        now
    }

    /// Remove lease `id` and free its slot; `false` if it is unknown.
    fn end_lease(&mut self, id: ReservationId) -> bool {
        let slot = match self.leases.get(id) {
            Some(lease) => self.keys.find_quietly(&lease.key),
            None => return false,
        };
        match slot {
            Some(slot) => {
                let flight = self.keys.state_mut(slot);
                self.leases.remove(id, Some(&mut flight.leases));
                flight.in_flight -= 1;
            }
            // Unreachable: a key with leases in flight is never evicted. Drop the lease
            // anyway so that it cannot expire twice.
            None => {
                self.leases.remove(id, None);
            }
        }
        true
    }

    /// Take a lease for `key` if fewer than `limit` are in flight, or say why not.
    pub fn acquire(&mut self, key: &str, now: u64) -> Result<Check, LimiterError> {
        let now = self.begin(now);
        let slot = self
            .keys
            .find_or_insert(key, now, Flight::default, |flight| flight.in_flight == 0)
            .map_err(|Full| LimiterError::TooManyKeys {
                max_keys: self.keys.max_keys(),
            })?;
        let lease = Reservation {
            key: Arc::clone(self.keys.key(slot)),
            serial: self.keys.serial(slot),
            expires_at: now.saturating_add(self.ttl_ms),
            payload: (),
        };
        let flight = self.keys.state_mut(slot);
        if flight.in_flight < self.limit {
            let id = self.leases.insert(lease, Some(&mut flight.leases));
            flight.in_flight += 1;
            return Ok(Check::Admitted(Grant {
                id: Some(id),
                remaining: self.limit - flight.in_flight,
                reset_after_ms: self.ttl_ms,
            }));
        }
        Ok(Check::Denied(Denial {
            kind: Kind::Concurrency,
            limit: self.limit,
            window_ms: None,
            burst: self.limit,
            used: flight.in_flight,
            requested: 1,
            retry_after_ms: self
                .leases
                .oldest_of(&flight.leases)
                .map(|oldest| oldest.expires_at.saturating_sub(now)),
        }))
    }

    /// End a lease. `false` if it is unknown (already released, or expired).
    pub fn release(&mut self, id: ReservationId, now: u64) -> bool {
        self.begin(now);
        self.end_lease(id)
    }

    /// Leases in flight for `key`.
    pub fn used(&mut self, key: &str, now: u64) -> u64 {
        self.begin(now);
        self.keys
            .find_quietly(key)
            .map_or(0, |slot| self.keys.state(slot).in_flight)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_700_000_000_000;

    fn acquire(l: &mut ConcurrencyLimiter, key: &str, now: u64) -> Check {
        l.acquire(key, now).unwrap()
    }

    fn id(check: Check) -> ReservationId {
        match check {
            Check::Admitted(grant) => grant.id.unwrap(),
            Check::Denied(denial) => panic!("denied: {denial:?}"),
        }
    }

    #[test]
    fn limits_leases_in_flight_per_key() {
        let mut l = ConcurrencyLimiter::new(2, 30_000, 100).unwrap();
        let a = id(acquire(&mut l, "k", T0));
        let _b = id(acquire(&mut l, "k", T0 + 10));
        let d = match acquire(&mut l, "k", T0 + 20) {
            Check::Denied(d) => d,
            Check::Admitted(g) => panic!("admitted {g:?}"),
        };
        assert_eq!(
            d,
            Denial {
                kind: Kind::Concurrency,
                limit: 2,
                window_ms: None,
                burst: 2,
                used: 2,
                requested: 1,
                // The oldest lease expires at T0 + 30 s.
                retry_after_ms: Some(29_980),
            }
        );
        assert!(acquire(&mut l, "other", T0).is_admitted());
        assert!(l.release(a, T0 + 30));
        assert!(!l.release(a, T0 + 30), "released twice");
        assert!(acquire(&mut l, "k", T0 + 40).is_admitted());
        assert_eq!(l.used("k", T0 + 40), 2);
    }

    #[test]
    fn leases_never_released_expire() {
        let mut l = ConcurrencyLimiter::new(1, 1000, 100).unwrap();
        let a = id(acquire(&mut l, "k", T0));
        assert!(!acquire(&mut l, "k", T0 + 999).is_admitted());
        let b = id(acquire(&mut l, "k", T0 + 1000));
        assert!(!l.release(a, T0 + 1000), "expired: unknown");
        assert_eq!(l.leases(), 1);
        // The retry time follows the oldest lease still in flight.
        match acquire(&mut l, "k", T0 + 1500) {
            Check::Denied(d) => assert_eq!(d.retry_after_ms, Some(500)),
            Check::Admitted(g) => panic!("admitted {g:?}"),
        }
        assert!(l.release(b, T0 + 1600));
        assert_eq!(l.used("k", T0 + 1600), 0);
    }

    #[test]
    fn keys_with_leases_are_never_evicted() {
        let mut l = ConcurrencyLimiter::new(1, 1000, 2).unwrap();
        let a = id(acquire(&mut l, "a", T0));
        id(acquire(&mut l, "b", T0));
        assert_eq!(
            l.acquire("c", T0),
            Err(LimiterError::TooManyKeys { max_keys: 2 })
        );
        assert!(l.release(a, T0));
        // `a` has nothing in flight: swept, or evicted for `c`.
        assert!(acquire(&mut l, "c", T0).is_admitted());
        assert_eq!(l.len(), 2);
        assert!(!acquire(&mut l, "b", T0).is_admitted());
    }
}
