//! GCRA ([`RateLimiter`]) and the token bucket with reservations ([`TokenBucket`]): the same
//! bucket arithmetic ([`Pace`]), documented in the parent module.

use std::sync::Arc;

use super::reservations::{Reservation, Reservations};
use super::table::KeyTable;
use super::{
    check_max_keys, check_positive, Check, Clock, Denial, Grant, Kind, LimiterError, ReservationId,
};

/// The longest period: 2^40 ms, about 34 years.
///
/// It keeps the arithmetic exact for every `u64` amount: a tick count is at most `now x
/// limit` < 2^48 x 2^64 and an amount at most 2^64 x 2^40, so sums of many of them stay far
/// below 2^128 (beyond, `u128` arithmetic saturates instead of wrapping).
pub const MAX_PERIOD_MS: u64 = 1 << 40;

/// `limit` per `period_ms`, at most `burst` at once.
///
/// Internally time is counted in ticks of `1 / limit` ms and one unit of amount is
/// `period_ms` ticks, so nothing rounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    limit: u64,
    period_ms: u64,
    burst: u64,
}

impl Rate {
    /// All three at least 1; `period_ms` at most [`MAX_PERIOD_MS`].
    pub fn new(limit: u64, period_ms: u64, burst: u64) -> Result<Self, LimiterError> {
        if period_ms > MAX_PERIOD_MS {
            return Err(LimiterError::InvalidConfig {
                field: "period",
                got: format!("{period_ms} ms"),
                expected: "at most 2^40 ms (about 34 years)",
            });
        }
        Ok(Self {
            limit: check_positive("limit", limit)?,
            period_ms: check_positive("period", period_ms)?,
            burst: check_positive("burst", burst)?,
        })
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    pub fn period_ms(&self) -> u64 {
        self.period_ms
    }

    pub fn burst(&self) -> u64 {
        self.burst
    }

    fn ticks(&self, now: u64) -> u128 {
        u128::from(now) * u128::from(self.limit)
    }

    fn cost(&self, amount: u64) -> u128 {
        u128::from(amount) * u128::from(self.period_ms)
    }

    /// The backlog a full burst makes: the most the bucket can be ahead of time.
    fn tolerance(&self) -> u128 {
        self.cost(self.burst)
    }

    /// Ticks as whole ms, rounded up.
    fn ms_ceil(&self, ticks: u128) -> u64 {
        u64::try_from(ticks.div_ceil(u128::from(self.limit))).unwrap_or(u64::MAX)
    }

    /// Ticks as whole units of amount, rounded up.
    fn units_ceil(&self, ticks: u128) -> u64 {
        u64::try_from(ticks.div_ceil(u128::from(self.period_ms))).unwrap_or(u64::MAX)
    }

    /// Ticks as whole units of amount, rounded down.
    fn units_floor(&self, ticks: u128) -> u64 {
        u64::try_from(ticks / u128::from(self.period_ms)).unwrap_or(u64::MAX)
    }
}

/// One key's bucket: the theoretical arrival time and the amount held by reservations.
///
/// `tat` is the tick at which the bucket would be full if nothing were held; the level is
/// `burst - (tat - now)` in ticks. Holding caps the level at `burst - held`: the effective
/// TAT is never below `now + held`. The cap is applied (materialised into `tat`) at every
/// change, which is what a continuous cap would have done in between, because `held` only
/// changes at those points.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Pace {
    tat: u128,
    held: u64,
}

impl Pace {
    fn effective(&self, rate: &Rate, now: u64) -> u128 {
        self.tat
            .max(rate.ticks(now).saturating_add(rate.cost(self.held)))
    }

    /// Amount in use at `now` (rounded up), at least what is held; above `burst` in debt.
    pub(crate) fn used(&self, rate: &Rate, now: u64) -> u64 {
        rate.units_ceil(self.effective(rate, now) - rate.ticks(now))
    }

    /// A full bucket with nothing held: exactly what a fresh key is.
    pub(crate) fn is_idle(&self, rate: &Rate, now: u64) -> bool {
        self.held == 0 && self.tat <= rate.ticks(now)
    }

    /// Take `amount` if the level allows it; `hold` it until settled for a reservation.
    pub(crate) fn take(
        &mut self,
        rate: &Rate,
        now: u64,
        amount: u64,
        hold: bool,
        kind: Kind,
    ) -> Result<Grant, Denial> {
        let t = rate.ticks(now);
        let effective = self.effective(rate, now);
        let after = effective.saturating_add(rate.cost(amount));
        let tolerance = rate.tolerance();
        if after - t <= tolerance {
            self.tat = after;
            if hold {
                self.held = self.held.saturating_add(amount);
            }
            return Ok(Grant {
                id: None,
                remaining: rate.units_floor(tolerance - (after - t)),
                reset_after_ms: rate.ms_ceil(after - t),
            });
        }
        // Denied: `after - tolerance > t`. The level allows the request from the tick
        // `after - tolerance` on (as refill goes on; with something held, once it settles
        // at its estimate), so the first whole ms at or after it.
        Err(Denial {
            kind,
            limit: rate.limit,
            window_ms: Some(rate.period_ms),
            burst: rate.burst,
            used: rate.units_ceil(effective - t),
            requested: amount,
            retry_after_ms: (amount <= rate.burst)
                .then(|| rate.ms_ceil(after - tolerance).saturating_sub(now)),
        })
    }

    /// Take `amount` unconditionally, into debt if need be.
    pub(crate) fn debit(&mut self, rate: &Rate, now: u64, amount: u64) {
        self.tat = self.effective(rate, now).saturating_add(rate.cost(amount));
    }

    /// End a hold of `amount` and give it back, the level capped as always.
    pub(crate) fn release(&mut self, rate: &Rate, now: u64, amount: u64) {
        let effective = self.effective(rate, now);
        self.held = self.held.saturating_sub(amount);
        self.tat = effective
            .saturating_sub(rate.cost(amount))
            .max(rate.ticks(now).saturating_add(rate.cost(self.held)));
    }

    /// End a hold of `estimate` and take `actual` instead.
    pub(crate) fn settle(&mut self, rate: &Rate, now: u64, estimate: u64, actual: u64) {
        self.release(rate, now, estimate);
        self.debit(rate, now, actual);
    }

    /// End a hold of `estimate` at `at` without giving it back: it counts as spent.
    pub(crate) fn expire(&mut self, rate: &Rate, at: u64, estimate: u64) {
        self.tat = self.effective(rate, at);
        self.held = self.held.saturating_sub(estimate);
    }
}

/// Request-rate limiting with GCRA: `limit` requests per `period`, `burst` at once.
pub struct RateLimiter {
    rate: Rate,
    keys: KeyTable<Pace>,
    clock: Clock,
}

impl RateLimiter {
    pub fn new(rate: Rate, max_keys: usize) -> Result<Self, LimiterError> {
        Ok(Self {
            rate,
            keys: KeyTable::new(check_max_keys(max_keys)?),
            clock: Clock::default(),
        })
    }

    pub fn rate(&self) -> Rate {
        self.rate
    }

    /// Keys held.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.len() == 0
    }

    fn begin(&mut self, now: u64) -> u64 {
        let now = self.clock.advance(now);
        let rate = self.rate;
        self.keys.sweep(now, |pace| pace.is_idle(&rate, now));
        now
    }

    /// Admit `amount` requests (usually 1) for `key`, or say why not.
    pub fn check(&mut self, key: &str, amount: u64, now: u64) -> Check {
        let now = self.begin(now);
        let slot = self.keys.find_or_insert_lru(key, now, Pace::default);
        match self
            .keys
            .state_mut(slot)
            .take(&self.rate, now, amount, false, Kind::Rate)
        {
            Ok(grant) => Check::Admitted(grant),
            Err(denial) => Check::Denied(denial),
        }
    }

    /// Requests counted against `key` now (0 for an unknown key).
    pub fn used(&mut self, key: &str, now: u64) -> u64 {
        let now = self.begin(now);
        self.keys
            .find_quietly(key)
            .map_or(0, |slot| self.keys.state(slot).used(&self.rate, now))
    }
}

/// Token-rate limiting: a token bucket with weighted reservations that settle later.
pub struct TokenBucket {
    rate: Rate,
    ttl_ms: u64,
    keys: KeyTable<Pace>,
    /// Payload: the estimate held.
    reservations: Reservations<u64>,
    clock: Clock,
}

impl TokenBucket {
    /// `reservation_ttl_ms`: how long a reservation may stay unsettled before it expires.
    pub fn new(rate: Rate, reservation_ttl_ms: u64, max_keys: usize) -> Result<Self, LimiterError> {
        Ok(Self {
            rate,
            ttl_ms: check_positive("reservation_ttl", reservation_ttl_ms)?,
            keys: KeyTable::new(check_max_keys(max_keys)?),
            reservations: Reservations::new(),
            clock: Clock::default(),
        })
    }

    pub fn rate(&self) -> Rate {
        self.rate
    }

    /// Keys held.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.len() == 0
    }

    /// Reservations outstanding.
    pub fn reservations(&self) -> usize {
        self.reservations.len()
    }

    /// Advance the clock, expire what is due (each at its own expiry time, in order), sweep.
    fn begin(&mut self, now: u64) -> u64 {
        let now = self.clock.advance(now);
        while let Some(id) = self.reservations.expired(now) {
            let Some(r) = self.reservations.remove(id, None) else {
                break;
            };
            if let Some(slot) = self.keys.find_quietly(&r.key) {
                if self.keys.serial(slot) == r.serial {
                    self.keys
                        .state_mut(slot)
                        .expire(&self.rate, r.expires_at, r.payload);
                }
            }
        }
        let rate = self.rate;
        self.keys.sweep(now, |pace| pace.is_idle(&rate, now));
        now
    }

    /// Take and hold `estimate` tokens for `key` until [`TokenBucket::settle`] or
    /// [`TokenBucket::release`], or say why not.
    pub fn reserve(&mut self, key: &str, estimate: u64, now: u64) -> Check {
        let now = self.begin(now);
        let slot = self.keys.find_or_insert_lru(key, now, Pace::default);
        match self
            .keys
            .state_mut(slot)
            .take(&self.rate, now, estimate, true, Kind::Tokens)
        {
            Ok(mut grant) => {
                let reservation = Reservation {
                    key: Arc::clone(self.keys.key(slot)),
                    serial: self.keys.serial(slot),
                    expires_at: now.saturating_add(self.ttl_ms),
                    payload: estimate,
                };
                grant.id = Some(self.reservations.insert(reservation, None));
                Check::Admitted(grant)
            }
            Err(denial) => Check::Denied(denial),
        }
    }

    /// Replace a reservation's estimate by the `actual` usage: refund the difference or take
    /// the excess (into debt if need be). `false` if the reservation is unknown (already
    /// settled or released, or expired: then its estimate stays spent).
    pub fn settle(&mut self, id: ReservationId, actual: u64, now: u64) -> bool {
        let now = self.begin(now);
        let Some(r) = self.reservations.remove(id, None) else {
            return false;
        };
        match self.keys.find(&r.key, now) {
            Some(slot) if self.keys.serial(slot) == r.serial => {
                self.keys
                    .state_mut(slot)
                    .settle(&self.rate, now, r.payload, actual);
            }
            // The state the estimate was charged to was evicted: the refund is owed to a
            // bucket that no longer exists, the excess is still charged to the key.
            _ => {
                if actual > r.payload {
                    let slot = self.keys.find_or_insert_lru(&r.key, now, Pace::default);
                    self.keys
                        .state_mut(slot)
                        .debit(&self.rate, now, actual - r.payload);
                }
            }
        }
        true
    }

    /// Give a reservation's whole estimate back (the request failed before using anything).
    /// `false` if the reservation is unknown.
    pub fn release(&mut self, id: ReservationId, now: u64) -> bool {
        let now = self.begin(now);
        let Some(r) = self.reservations.remove(id, None) else {
            return false;
        };
        if let Some(slot) = self.keys.find(&r.key, now) {
            if self.keys.serial(slot) == r.serial {
                self.keys
                    .state_mut(slot)
                    .release(&self.rate, now, r.payload);
            }
        }
        true
    }

    /// Charge `amount` tokens used without a reservation (into debt if need be).
    pub fn debit(&mut self, key: &str, amount: u64, now: u64) {
        let now = self.begin(now);
        let slot = self.keys.find_or_insert_lru(key, now, Pace::default);
        self.keys.state_mut(slot).debit(&self.rate, now, amount);
    }

    /// Tokens in use for `key` now, held ones included (0 for an unknown key).
    pub fn used(&mut self, key: &str, now: u64) -> u64 {
        let now = self.begin(now);
        self.keys
            .find_quietly(key)
            .map_or(0, |slot| self.keys.state(slot).used(&self.rate, now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(check: Check) -> Grant {
        match check {
            Check::Admitted(grant) => grant,
            Check::Denied(denial) => panic!("denied: {denial:?}"),
        }
    }

    fn denial(check: Check) -> Denial {
        match check {
            Check::Admitted(grant) => panic!("admitted: {grant:?}"),
            Check::Denied(denial) => denial,
        }
    }

    fn gcra(limit: u64, period_ms: u64, burst: u64) -> RateLimiter {
        RateLimiter::new(Rate::new(limit, period_ms, burst).unwrap(), 1000).unwrap()
    }

    fn bucket(limit: u64, period_ms: u64, burst: u64, ttl_ms: u64) -> TokenBucket {
        TokenBucket::new(Rate::new(limit, period_ms, burst).unwrap(), ttl_ms, 1000).unwrap()
    }

    const T0: u64 = 1_700_000_000_000;

    #[test]
    fn gcra_admits_the_burst_then_one_per_interval() {
        // 10 per second, 3 at once: one every 100 ms after the burst.
        let mut l = gcra(10, 1000, 3);
        for remaining in [2, 1, 0] {
            assert_eq!(grant(l.check("k", 1, T0)).remaining, remaining);
        }
        let d = denial(l.check("k", 1, T0));
        assert_eq!(
            d,
            Denial {
                kind: Kind::Rate,
                limit: 10,
                window_ms: Some(1000),
                burst: 3,
                used: 3,
                requested: 1,
                retry_after_ms: Some(100),
            }
        );
        assert!(!l.check("k", 1, T0 + 99).is_admitted());
        assert!(l.check("k", 1, T0 + 100).is_admitted());
        assert!(!l.check("k", 1, T0 + 150).is_admitted());
        assert!(l.check("k", 1, T0 + 200).is_admitted());
        // Keys are independent.
        assert!(l.check("other", 1, T0 + 200).is_admitted());
    }

    #[test]
    fn gcra_intervals_that_do_not_divide_evenly_are_exact() {
        // 3 per second with burst 1: one every 333.33.. ms, scheduled from each admission
        // (textbook GCRA). Rounded up to whole ms: the second from 334 ms; admitted at 334,
        // the third from 667.33.. so 668; admitted at 668, the fourth from 1001.33.. so 1002.
        let mut l = gcra(3, 1000, 1);
        assert!(l.check("k", 1, T0).is_admitted());
        assert_eq!(denial(l.check("k", 1, T0 + 333)).retry_after_ms, Some(1));
        assert!(l.check("k", 1, T0 + 334).is_admitted());
        assert_eq!(denial(l.check("k", 1, T0 + 667)).retry_after_ms, Some(1));
        assert!(l.check("k", 1, T0 + 668).is_admitted());
        assert!(!l.check("k", 1, T0 + 1001).is_admitted());
        assert!(l.check("k", 1, T0 + 1002).is_admitted());
        // Polling every millisecond for 3 s: with a burst of 1 nothing banks, so each
        // admission is scheduled from its (rounded-up) arrival, 334 ms apart: 8, not 9.
        let admitted = (1003..4003)
            .filter(|ms| l.check("k", 1, T0 + ms).is_admitted())
            .count();
        assert_eq!(admitted, 8);
    }

    #[test]
    fn gcra_weighted_and_oversized_requests() {
        let mut l = gcra(10, 1000, 5);
        assert!(l.check("k", 5, T0).is_admitted());
        let d = denial(l.check("k", 2, T0));
        assert_eq!((d.used, d.retry_after_ms), (5, Some(200)));
        // More than the burst can never be admitted: no retry time.
        let d = denial(l.check("k", 6, T0 + 10_000));
        assert_eq!(d.retry_after_ms, None);
        assert!(l.check("k", 0, T0 + 10_000).is_admitted());
    }

    #[test]
    fn grant_reports_remaining_and_time_to_full() {
        let mut l = gcra(10, 1000, 10);
        let g = grant(l.check("k", 4, T0));
        assert_eq!((g.id, g.remaining, g.reset_after_ms), (None, 6, 400));
        assert_eq!(l.used("k", T0 + 150), 3);
    }

    #[test]
    fn reserve_settle_refunds_the_difference() {
        // 100 tokens per second, capacity 100.
        let mut b = bucket(100, 1000, 100, 60_000);
        let g = grant(b.reserve("k", 80, T0));
        assert_eq!(g.remaining, 20);
        assert!(!b.reserve("k", 30, T0).is_admitted());
        assert!(b.settle(g.id.unwrap(), 50, T0));
        assert_eq!(b.used("k", T0), 50);
        assert!(b.reserve("k", 30, T0).is_admitted());
        assert_eq!(b.reservations(), 1);
    }

    #[test]
    fn settling_above_the_estimate_goes_into_debt_that_must_be_waited_out() {
        let mut b = bucket(100, 1000, 100, 60_000);
        let id = grant(b.reserve("k", 10, T0)).id.unwrap();
        assert!(b.settle(id, 250, T0));
        assert_eq!(b.used("k", T0), 250);
        let d = denial(b.reserve("k", 1, T0));
        // Level -150: 1.51 s until one token is available.
        assert_eq!((d.used, d.retry_after_ms), (250, Some(1510)));
        assert!(!b.reserve("k", 1, T0 + 1509).is_admitted());
        assert!(b.reserve("k", 1, T0 + 1510).is_admitted());
    }

    #[test]
    fn release_gives_everything_back_but_never_above_capacity() {
        let mut b = bucket(100, 1000, 100, 60_000);
        let a = grant(b.reserve("k", 60, T0)).id.unwrap();
        let c = grant(b.reserve("k", 40, T0)).id.unwrap();
        assert!(b.release(a, T0 + 500));
        assert_eq!(b.used("k", T0 + 500), 40);
        assert!(!b.release(a, T0 + 500), "a second release is unknown");
        assert!(b.release(c, T0 + 500));
        assert_eq!(b.used("k", T0 + 500), 0);
        assert!(b.reserve("k", 100, T0 + 500).is_admitted());
        assert!(!b.reserve("k", 1, T0 + 500).is_admitted());
    }

    #[test]
    fn held_tokens_stop_the_refill_so_release_creates_no_capacity() {
        // Without the hold cap, the refill during the hold plus the release would hand out
        // more than capacity + rate x time.
        let mut b = bucket(100, 1000, 100, 60_000);
        let a = grant(b.reserve("k", 100, T0)).id.unwrap();
        // 600 ms later the refill would have added 60, but the bucket holds 100 already.
        let d = denial(b.reserve("k", 60, T0 + 600));
        assert_eq!(d.used, 100);
        assert!(b.release(a, T0 + 600));
        assert!(b.reserve("k", 100, T0 + 600).is_admitted());
        assert!(!b.reserve("k", 1, T0 + 600).is_admitted());
    }

    #[test]
    fn expiry_keeps_the_estimate_spent_and_forgets_the_reservation() {
        let mut b = bucket(100, 1000, 100, 1000);
        let id = grant(b.reserve("k", 100, T0)).id.unwrap();
        // At expiry (T0 + 1000) the hold ends; the bucket refills from empty, from then on.
        assert_eq!(b.used("k", T0 + 999), 100);
        assert_eq!(b.used("k", T0 + 1000), 100);
        assert_eq!(b.used("k", T0 + 1500), 50);
        assert_eq!(b.reservations(), 0);
        assert!(!b.settle(id, 0, T0 + 1500), "expired: unknown");
        assert_eq!(b.used("k", T0 + 1500), 50);
        assert!(!b.release(id, T0 + 1500));
    }

    #[test]
    fn expiry_is_applied_at_its_own_time_even_when_processed_later() {
        let mut b = bucket(100, 1000, 100, 1000);
        b.reserve("k", 100, T0);
        // Nothing happens until T0 + 1800: the hold ended at T0 + 1000, so 80 refilled.
        assert_eq!(b.used("k", T0 + 1800), 20);
    }

    #[test]
    fn debit_charges_without_a_reservation() {
        let mut b = bucket(100, 1000, 100, 1000);
        b.debit("k", 130, T0);
        assert_eq!(b.used("k", T0), 130);
        assert_eq!(denial(b.reserve("k", 0, T0)).retry_after_ms, Some(300));
    }

    #[test]
    fn idle_keys_are_swept_and_the_cap_evicts_the_least_recently_used() {
        let mut b = TokenBucket::new(Rate::new(10, 1000, 10).unwrap(), 60_000, 2).unwrap();
        b.reserve("a", 10, T0);
        b.reserve("b", 10, T0);
        b.reserve("c", 10, T0);
        assert_eq!(b.len(), 2);
        // `a` was evicted: it is a full bucket again.
        assert_eq!(b.used("a", T0), 0);
        assert!(b.reserve("a", 10, T0).is_admitted());
        // Once every bucket is full and nothing held, keys go away by themselves.
        let mut l = gcra(10, 1000, 10);
        l.check("x", 10, T0);
        l.check("y", 10, T0);
        assert_eq!(l.len(), 2);
        l.check("z", 1, T0 + 5000);
        assert_eq!(l.len(), 1);
    }

    #[test]
    fn settling_a_reservation_whose_key_was_evicted() {
        let mut b = TokenBucket::new(Rate::new(10, 1000, 10).unwrap(), 60_000, 1).unwrap();
        let a = grant(b.reserve("a", 5, T0)).id.unwrap();
        let a2 = grant(b.reserve("a", 5, T0)).id.unwrap();
        b.reserve("b", 1, T0); // evicts `a`
                               // The refund is dropped, the excess charged to a's current (fresh) state.
        assert!(b.settle(a, 0, T0));
        assert_eq!(b.used("a", T0), 0);
        assert!(b.settle(a2, 8, T0));
        assert_eq!(b.used("a", T0), 3);
    }

    #[test]
    fn time_going_back_is_taken_as_the_latest_time() {
        let mut l = gcra(1, 1000, 1);
        assert!(l.check("k", 1, T0 + 1000).is_admitted());
        // An earlier `now` does not reopen the bucket; it counts as T0 + 1000.
        assert_eq!(denial(l.check("k", 1, T0)).retry_after_ms, Some(1000));
    }

    #[test]
    fn invalid_configuration() {
        assert_eq!(
            Rate::new(0, 1000, 1),
            Err(LimiterError::InvalidConfig {
                field: "limit",
                got: "0".into(),
                expected: "at least 1"
            })
        );
        assert!(Rate::new(1, 0, 1).is_err());
        assert!(Rate::new(1, 1, 0).is_err());
        let rate = Rate::new(1, 1, 1).unwrap();
        assert!(RateLimiter::new(rate, 0).is_err());
        assert!(TokenBucket::new(rate, 0, 10).is_err());
        assert_eq!(
            RateLimiter::new(rate, 0).err().map(|e| e.to_string()),
            Some("limiter setting `max_keys` is 0; expected between 1 and 4294967294".into())
        );
    }

    #[test]
    fn extreme_numbers_stay_exact() {
        let rate = Rate::new(u64::MAX, MAX_PERIOD_MS, u64::MAX).unwrap();
        let mut b = TokenBucket::new(rate, u64::MAX, 10).unwrap();
        let id = grant(b.reserve("k", u64::MAX, u64::MAX)).id.unwrap();
        b.debit("k", u64::MAX, u64::MAX);
        assert!(b.settle(id, u64::MAX, u64::MAX));
        assert!(!b.reserve("k", 1, u64::MAX).is_admitted());
        assert_eq!(b.used("k", u64::MAX), u64::MAX);
        let mut l = RateLimiter::new(Rate::new(1, MAX_PERIOD_MS, 1).unwrap(), 10).unwrap();
        assert!(l.check("k", 1, 0).is_admitted());
        assert_eq!(l.check("k", 1, 1).retry_after(), Some(MAX_PERIOD_MS - 1));
        assert!(l.check("k", u64::MAX, u64::MAX).retry_after().is_none());
        assert!(Rate::new(1, MAX_PERIOD_MS + 1, 1).is_err());
    }

    impl Check {
        fn retry_after(&self) -> Option<u64> {
            match self {
                Check::Admitted(_) => None,
                Check::Denied(d) => d.retry_after_ms,
            }
        }
    }
}
