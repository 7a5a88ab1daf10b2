//! Budgets: usage summed per calendar window or per rolling window, with reservations.

use std::sync::Arc;

use super::calendar::{calendar_window, Period, MAX_OFFSET_SECONDS};
use super::reservations::{Reservation, Reservations};
use super::table::{Full, KeyTable};
use super::{
    check_max_keys, check_positive, Check, Clock, Denial, Grant, Kind, LimiterError, ReservationId,
};

/// Most sub-buckets a rolling window may have (8 bytes each per key).
pub const MAX_BUCKETS: u32 = 4096;

/// The window usage is summed over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// A calendar day, week (from Monday) or month on a wall clock `utc_offset_seconds` east
    /// of UTC (`+02:00` is 7,200; strictly within a day either way).
    Calendar {
        period: Period,
        utc_offset_seconds: i32,
    },
    /// The last `window_ms`, in `buckets` sub-buckets of `window_ms / buckets` ms each
    /// (`buckets` must divide `window_ms`).
    Rolling { window_ms: u64, buckets: u32 },
}

/// Where `now` falls: a calendar window, or a rolling window's current sub-bucket.
#[derive(Debug, Clone, Copy)]
struct Position {
    /// Calendar window index, or sub-bucket index (`now / width`).
    index: i64,
    /// The calendar window's bounds (unused for rolling windows).
    start_ms: i64,
    end_ms: i64,
}

/// One key's usage.
#[derive(Debug)]
enum Usage {
    Calendar {
        window: i64,
        used: u64,
    },
    /// `ring[i % ring.len()]` holds sub-bucket `i` for `i` in `newest - buckets ..= newest`;
    /// `total` is their sum.
    Rolling {
        newest: i64,
        total: u64,
        ring: Box<[u64]>,
    },
}

#[derive(Debug)]
pub(crate) struct Account {
    usage: Usage,
    /// Reservations outstanding: while any is, the key is never evicted, so settlement always
    /// finds the window it charged.
    pins: u64,
}

fn ring_slot(index: i64, len: usize) -> usize {
    index.rem_euclid(len as i64) as usize
}

impl Account {
    /// Bring the usage to `pos`: a new calendar window starts from zero; rolling sub-buckets
    /// that left the window are cleared.
    fn advance(&mut self, pos: &Position) {
        match &mut self.usage {
            Usage::Calendar { window, used } => {
                if *window != pos.index {
                    *window = pos.index;
                    *used = 0;
                }
            }
            Usage::Rolling {
                newest,
                total,
                ring,
            } => {
                if pos.index > *newest {
                    let len = ring.len();
                    if pos.index - *newest >= len as i64 {
                        ring.fill(0);
                        *total = 0;
                    } else {
                        for i in *newest + 1..=pos.index {
                            let slot = &mut ring[ring_slot(i, len)];
                            *total -= *slot;
                            *slot = 0;
                        }
                    }
                    *newest = pos.index;
                }
            }
        }
    }

    /// Usage counted now (call [`Account::advance`] first).
    fn used(&self) -> u64 {
        match &self.usage {
            Usage::Calendar { used, .. } => *used,
            Usage::Rolling { total, .. } => *total,
        }
    }

    fn charge(&mut self, pos: &Position, amount: u64) {
        match &mut self.usage {
            Usage::Calendar { used, .. } => *used = used.saturating_add(amount),
            Usage::Rolling { total, ring, .. } => {
                let len = ring.len();
                let slot = &mut ring[ring_slot(pos.index, len)];
                // Saturate the slot and the total alike so that the total stays their sum.
                let added = amount.min(u64::MAX - *total);
                *slot += added;
                *total += added;
            }
        }
    }

    /// Give back `amount` charged at `charged_at`, if that window or sub-bucket still counts.
    fn refund(&mut self, charged_at: i64, amount: u64) {
        match &mut self.usage {
            Usage::Calendar { window, used } => {
                if *window == charged_at {
                    *used = used.saturating_sub(amount);
                }
            }
            Usage::Rolling {
                newest,
                total,
                ring,
            } => {
                let len = ring.len();
                if charged_at > *newest - len as i64 && charged_at <= *newest {
                    let slot = &mut ring[ring_slot(charged_at, len)];
                    let back = amount.min(*slot);
                    *slot -= back;
                    *total -= back;
                }
            }
        }
    }

    /// Whether a fresh key would be the same: nothing outstanding and nothing counted at
    /// `pos`. For rolling windows this is conservative (usage that has aged out but not been
    /// cleared yet counts until the whole ring is out of the window), at O(1).
    fn is_idle(&self, pos: &Position) -> bool {
        self.pins == 0
            && match &self.usage {
                Usage::Calendar { window, used } => *window != pos.index || *used == 0,
                Usage::Rolling {
                    newest,
                    total,
                    ring,
                } => *total == 0 || pos.index - *newest >= ring.len() as i64,
            }
    }
}

/// What a reservation needs to be settled: its estimate and where it was charged.
#[derive(Debug, Clone, Copy)]
struct Charge {
    estimate: u64,
    index: i64,
}

/// Usage caps per window: tokens, or money in integer micro-USD.
pub struct BudgetWindow {
    limit: u64,
    window: Window,
    /// Rolling windows: the sub-bucket width in ms.
    width_ms: u64,
    ttl_ms: u64,
    keys: KeyTable<Account>,
    reservations: Reservations<Charge>,
    clock: Clock,
}

impl BudgetWindow {
    /// `reservation_ttl_ms`: how long a reservation may stay unsettled before it expires (its
    /// estimate stays charged).
    pub fn new(
        limit: u64,
        window: Window,
        reservation_ttl_ms: u64,
        max_keys: usize,
    ) -> Result<Self, LimiterError> {
        let width_ms = match window {
            Window::Calendar {
                utc_offset_seconds, ..
            } => {
                if utc_offset_seconds.unsigned_abs() > MAX_OFFSET_SECONDS as u32 {
                    return Err(LimiterError::InvalidConfig {
                        field: "utc_offset",
                        got: format!("{utc_offset_seconds} s"),
                        expected: "less than a day either way (-86399 to 86399 s)",
                    });
                }
                0
            }
            Window::Rolling { window_ms, buckets } => {
                check_positive("window", window_ms)?;
                if buckets == 0 || buckets > MAX_BUCKETS {
                    return Err(LimiterError::InvalidConfig {
                        field: "buckets",
                        got: buckets.to_string(),
                        expected: "between 1 and 4096",
                    });
                }
                if window_ms % u64::from(buckets) != 0 {
                    return Err(LimiterError::InvalidConfig {
                        field: "buckets",
                        got: format!("{buckets} (for a window of {window_ms} ms)"),
                        expected: "a number that divides the window in whole milliseconds",
                    });
                }
                window_ms / u64::from(buckets)
            }
        };
        Ok(Self {
            limit: check_positive("limit", limit)?,
            window,
            width_ms,
            ttl_ms: check_positive("reservation_ttl", reservation_ttl_ms)?,
            keys: KeyTable::new(check_max_keys(max_keys)?),
            reservations: Reservations::new(),
            clock: Clock::default(),
        })
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    pub fn window(&self) -> Window {
        self.window
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

    fn position(&self, now: u64) -> Position {
        match self.window {
            Window::Calendar {
                period,
                utc_offset_seconds,
            } => {
                let w = calendar_window(period, utc_offset_seconds, now);
                Position {
                    index: w.index,
                    start_ms: w.start_ms,
                    end_ms: w.end_ms,
                }
            }
            // `now` is at most `MAX_NOW_MS`, so the index fits in `i64`.
            Window::Rolling { .. } => Position {
                index: (now / self.width_ms) as i64,
                start_ms: 0,
                end_ms: 0,
            },
        }
    }

    fn fresh(window: Window, pos: Position) -> Account {
        let usage = match window {
            Window::Calendar { .. } => Usage::Calendar {
                window: pos.index,
                used: 0,
            },
            Window::Rolling { buckets, .. } => Usage::Rolling {
                newest: pos.index,
                total: 0,
                ring: vec![0; buckets as usize + 1].into_boxed_slice(),
            },
        };
        Account { usage, pins: 0 }
    }

    /// Advance the clock, expire what is due (the estimate stays charged), sweep.
    fn begin(&mut self, now: u64) -> (u64, Position) {
        let now = self.clock.advance(now);
        while let Some(id) = self.reservations.expired(now) {
            let Some(r) = self.reservations.remove(id, None) else {
                break;
            };
            if let Some(slot) = self.keys.find_quietly(&r.key) {
                if self.keys.serial(slot) == r.serial {
                    let account = self.keys.state_mut(slot);
                    account.pins = account.pins.saturating_sub(1);
                }
            }
        }
        let pos = self.position(now);
        self.keys.sweep(now, |account| account.is_idle(&pos));
        (now, pos)
    }

    fn find_or_insert(
        &mut self,
        key: &str,
        now: u64,
        pos: &Position,
    ) -> Result<usize, LimiterError> {
        let (window, at) = (self.window, *pos);
        let slot = self
            .keys
            .find_or_insert(
                key,
                now,
                || Self::fresh(window, at),
                |account| account.is_idle(pos),
            )
            .map_err(|Full| LimiterError::TooManyKeys {
                max_keys: self.keys.max_keys(),
            })?;
        self.keys.state_mut(slot).advance(pos);
        Ok(slot)
    }

    /// The window's length and when retrying `requested` can succeed.
    fn denial_numbers(
        &self,
        account: &Account,
        pos: &Position,
        now: u64,
        requested: u64,
    ) -> (u64, Option<u64>) {
        match (&self.window, &account.usage) {
            (Window::Rolling { window_ms, .. }, Usage::Rolling { newest, ring, .. }) => {
                let retry = (requested <= self.limit).then(|| {
                    // Sub-buckets leave the sum oldest first: find the first moment enough
                    // of them have left.
                    let need = account.used().saturating_add(requested) - self.limit;
                    let len = ring.len() as i64;
                    let mut freed = 0u64;
                    for i in *newest - len + 1..=*newest {
                        freed = freed.saturating_add(ring[ring_slot(i, ring.len())]);
                        if freed >= need {
                            return self.leaves_at(i).saturating_sub(now);
                        }
                    }
                    // Unreachable: `need <= used` when `requested <= limit`.
                    self.leaves_at(*newest).saturating_sub(now)
                });
                (*window_ms, retry)
            }
            _ => {
                let length = (pos.end_ms - pos.start_ms) as u64;
                let reset = (pos.end_ms - now as i64) as u64;
                (length, (requested <= self.limit).then_some(reset))
            }
        }
    }

    /// When sub-bucket `index` stops counting: once `buckets + 1` newer ones have begun.
    fn leaves_at(&self, index: i64) -> u64 {
        let buckets = match self.window {
            Window::Rolling { buckets, .. } => i64::from(buckets),
            Window::Calendar { .. } => 0,
        };
        ((index + buckets + 1) as u64).saturating_mul(self.width_ms)
    }

    fn reset_after(&self, account: &Account, pos: &Position, now: u64) -> u64 {
        match &account.usage {
            Usage::Rolling { newest, ring, .. } => {
                let len = ring.len() as i64;
                (*newest - len + 1..=*newest)
                    .find(|&i| ring[ring_slot(i, ring.len())] > 0)
                    .map_or(0, |i| self.leaves_at(i).saturating_sub(now))
            }
            Usage::Calendar { .. } => (pos.end_ms - now as i64) as u64,
        }
    }

    /// Charge `estimate` to `key`'s current window if it fits under the limit, or say why not.
    pub fn reserve(&mut self, key: &str, estimate: u64, now: u64) -> Result<Check, LimiterError> {
        let (now, pos) = self.begin(now);
        let slot = self.find_or_insert(key, now, &pos)?;
        let account = self.keys.state(slot);
        let used = account.used();
        if used.saturating_add(estimate) > self.limit {
            let (window_ms, retry_after_ms) = self.denial_numbers(account, &pos, now, estimate);
            return Ok(Check::Denied(Denial {
                kind: Kind::Budget,
                limit: self.limit,
                window_ms: Some(window_ms),
                burst: self.limit,
                used,
                requested: estimate,
                retry_after_ms,
            }));
        }
        let reservation = Reservation {
            key: Arc::clone(self.keys.key(slot)),
            serial: self.keys.serial(slot),
            expires_at: now.saturating_add(self.ttl_ms),
            payload: Charge {
                estimate,
                index: pos.index,
            },
        };
        let account = self.keys.state_mut(slot);
        account.charge(&pos, estimate);
        account.pins += 1;
        let remaining = self.limit - account.used();
        let id = self.reservations.insert(reservation, None);
        let reset_after_ms = self.reset_after(self.keys.state(slot), &pos, now);
        Ok(Check::Admitted(Grant {
            id: Some(id),
            remaining,
            reset_after_ms,
        }))
    }

    /// Replace a reservation's estimate by the `actual` usage: the refund goes back to the
    /// window the estimate was charged to (if it still counts), the excess to the current
    /// window. `false` if the reservation is unknown (settled, released, or expired: then the
    /// estimate stays charged).
    pub fn settle(&mut self, id: ReservationId, actual: u64, now: u64) -> bool {
        let (now, pos) = self.begin(now);
        let Some(r) = self.reservations.remove(id, None) else {
            return false;
        };
        let charge = r.payload;
        match self.keys.find(&r.key, now) {
            Some(slot) if self.keys.serial(slot) == r.serial => {
                let account = self.keys.state_mut(slot);
                account.pins = account.pins.saturating_sub(1);
                account.advance(&pos);
                if actual < charge.estimate {
                    account.refund(charge.index, charge.estimate - actual);
                } else {
                    account.charge(&pos, actual - charge.estimate);
                }
            }
            // Unreachable: a key with an outstanding reservation is never evicted. Should it
            // happen, the excess is still charged if there is room for the key.
            _ => {
                if actual > charge.estimate {
                    if let Ok(slot) = self.find_or_insert(&r.key, now, &pos) {
                        self.keys
                            .state_mut(slot)
                            .charge(&pos, actual - charge.estimate);
                    }
                }
            }
        }
        true
    }

    /// Refund a reservation's whole estimate (the request failed), if its window still
    /// counts. `false` if the reservation is unknown.
    pub fn release(&mut self, id: ReservationId, now: u64) -> bool {
        let (now, pos) = self.begin(now);
        let Some(r) = self.reservations.remove(id, None) else {
            return false;
        };
        if let Some(slot) = self.keys.find(&r.key, now) {
            if self.keys.serial(slot) == r.serial {
                let account = self.keys.state_mut(slot);
                account.pins = account.pins.saturating_sub(1);
                account.advance(&pos);
                account.refund(r.payload.index, r.payload.estimate);
            }
        }
        true
    }

    /// Charge `amount` used without a reservation to `key`'s current window.
    pub fn debit(&mut self, key: &str, amount: u64, now: u64) -> Result<(), LimiterError> {
        let (now, pos) = self.begin(now);
        let slot = self.find_or_insert(key, now, &pos)?;
        self.keys.state_mut(slot).charge(&pos, amount);
        Ok(())
    }

    /// Usage counted for `key` now (0 for an unknown key).
    pub fn used(&mut self, key: &str, now: u64) -> u64 {
        let (_, pos) = self.begin(now);
        match self.keys.find_quietly(key) {
            Some(slot) => {
                let account = self.keys.state_mut(slot);
                account.advance(&pos);
                account.used()
            }
            None => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::calendar::days_from_civil;
    use super::*;

    const DAY: u64 = 86_400_000;

    fn utc(y: i64, m: u32, d: u32, hh: u64) -> u64 {
        days_from_civil(y, m, d) as u64 * DAY + hh * 3_600_000
    }

    fn calendar(limit: u64, period: Period, offset: i32) -> BudgetWindow {
        let window = Window::Calendar {
            period,
            utc_offset_seconds: offset,
        };
        BudgetWindow::new(limit, window, 2 * DAY, 1000).unwrap()
    }

    fn rolling(limit: u64, window_ms: u64, buckets: u32) -> BudgetWindow {
        let window = Window::Rolling { window_ms, buckets };
        BudgetWindow::new(limit, window, 600_000, 1000).unwrap()
    }

    fn grant(check: Result<Check, LimiterError>) -> Grant {
        match check.unwrap() {
            Check::Admitted(grant) => grant,
            Check::Denied(denial) => panic!("denied: {denial:?}"),
        }
    }

    fn denial(check: Result<Check, LimiterError>) -> Denial {
        match check.unwrap() {
            Check::Admitted(grant) => panic!("admitted: {grant:?}"),
            Check::Denied(denial) => denial,
        }
    }

    #[test]
    fn daily_budget_resets_at_midnight_and_explains_denials() {
        // $5.00 a day in micro-USD.
        let mut b = calendar(5_000_000, Period::Day, 0);
        let t = utc(2024, 3, 10, 18);
        let g = grant(b.reserve("team:research", 4_000_000, t));
        assert_eq!((g.remaining, g.reset_after_ms), (1_000_000, 6 * 3_600_000));
        let d = denial(b.reserve("team:research", 2_000_000, t));
        assert_eq!(
            d,
            Denial {
                kind: Kind::Budget,
                limit: 5_000_000,
                window_ms: Some(DAY),
                burst: 5_000_000,
                used: 4_000_000,
                requested: 2_000_000,
                retry_after_ms: Some(6 * 3_600_000),
            }
        );
        // More than the whole budget never fits.
        assert_eq!(
            denial(b.reserve("team:research", 5_000_001, t)).retry_after_ms,
            None
        );
        // Midnight: a new window.
        assert!(b
            .reserve("team:research", 5_000_000, utc(2024, 3, 11, 0))
            .unwrap()
            .is_admitted());
    }

    #[test]
    fn settle_refunds_to_the_charged_window_and_charges_excess_to_the_current_one() {
        let mut b = calendar(100, Period::Day, 0);
        let t = utc(2024, 3, 10, 23);
        let a = grant(b.reserve("k", 60, t)).id.unwrap();
        let c = grant(b.reserve("k", 40, t)).id.unwrap();
        assert!(b.settle(a, 20, t));
        assert_eq!(b.used("k", t), 60);
        // The next day: c's refund is owed to a window that has ended, so it is dropped; the
        // new day must not get room it was never charged for.
        let next = utc(2024, 3, 11, 1);
        assert!(b.settle(c, 0, next));
        assert_eq!(b.used("k", next), 0);
        // An excess settled in the next day is charged to the next day.
        let e = grant(b.reserve("k", 10, next)).id.unwrap();
        assert!(b.settle(e, 130, next));
        assert_eq!(b.used("k", next), 130);
        assert_eq!(denial(b.reserve("k", 0, next)).used, 130);
    }

    #[test]
    fn release_refunds_and_expiry_keeps_the_charge() {
        let mut b = BudgetWindow::new(
            100,
            Window::Calendar {
                period: Period::Month,
                utc_offset_seconds: 0,
            },
            1000,
            10,
        )
        .unwrap();
        let t = utc(2024, 2, 1, 0);
        let a = grant(b.reserve("k", 70, t)).id.unwrap();
        assert!(b.release(a, t + 10));
        assert!(!b.release(a, t + 10));
        assert_eq!(b.used("k", t + 10), 0);
        let c = grant(b.reserve("k", 70, t + 20)).id.unwrap();
        assert_eq!(b.reservations(), 1);
        // Expired at t + 1020: unknown afterwards, and the 70 stays charged.
        assert!(!b.settle(c, 0, t + 1020));
        assert_eq!(b.used("k", t + 1020), 70);
        assert_eq!(b.reservations(), 0);
    }

    #[test]
    fn monthly_windows_follow_the_calendar_at_an_offset() {
        let mut b = calendar(10, Period::Month, 7200);
        // 2024-02-29 21:00 UTC is 23:00 local: still February (29 days in 2024).
        let g = grant(b.reserve("k", 10, utc(2024, 2, 29, 21)));
        assert_eq!(g.reset_after_ms, 3_600_000);
        let d = denial(b.reserve("k", 1, utc(2024, 2, 29, 21)));
        assert_eq!(d.window_ms, Some(29 * DAY));
        // 22:00 UTC is March 1st local.
        assert!(b
            .reserve("k", 10, utc(2024, 2, 29, 22))
            .unwrap()
            .is_admitted());
    }

    #[test]
    fn weekly_windows_start_on_monday() {
        let mut b = calendar(10, Period::Week, 0);
        // Sunday 2024-01-07, then Monday 2024-01-08.
        assert!(b
            .reserve("k", 10, utc(2024, 1, 7, 23))
            .unwrap()
            .is_admitted());
        assert_eq!(
            denial(b.reserve("k", 1, utc(2024, 1, 7, 23))).retry_after_ms,
            Some(3_600_000)
        );
        assert!(b
            .reserve("k", 10, utc(2024, 1, 8, 0))
            .unwrap()
            .is_admitted());
    }

    #[test]
    fn rolling_window_forgets_after_the_window_plus_at_most_one_bucket() {
        // 100 per 60 s in 6 buckets of 10 s.
        let mut b = rolling(100, 60_000, 6);
        let t = 1_000_000_000_000 + 3_000; // 3 s into a bucket
        grant(b.reserve("k", 60, t));
        grant(b.reserve("k", 40, t + 20_000));
        let d = denial(b.reserve("k", 50, t + 30_000));
        assert_eq!(d.window_ms, Some(60_000));
        // The 60 leaves when 7 newer buckets... i.e. at the start of the bucket 70 s after its
        // own start: t - 3 s + 70 s.
        assert_eq!(d.retry_after_ms, Some(67_000 - 30_000));
        assert!(!b.reserve("k", 50, t + 66_999).unwrap().is_admitted());
        assert!(b.reserve("k", 50, t + 67_000).unwrap().is_admitted());
        // Never earlier than the window: at t + 60 s the 60 still counts.
        let mut b = rolling(100, 60_000, 6);
        grant(b.reserve("k", 100, t));
        assert!(!b.reserve("k", 1, t + 60_000).unwrap().is_admitted());
    }

    #[test]
    fn rolling_refunds_go_to_their_bucket_while_it_counts() {
        let mut b = rolling(100, 60_000, 6);
        let t = 1_000_000_000_000;
        let a = grant(b.reserve("k", 50, t)).id.unwrap();
        let c = grant(b.reserve("k", 50, t)).id.unwrap();
        assert!(b.settle(a, 10, t + 30_000));
        assert_eq!(b.used("k", t + 30_000), 60);
        // After 70 s the bucket has left the window: nothing to refund to.
        assert!(b.release(c, t + 70_000));
        assert_eq!(b.used("k", t + 70_000), 0);
        let g = grant(b.reserve("k", 10, t + 70_000));
        assert_eq!(g.reset_after_ms, 70_000);
    }

    #[test]
    fn keys_with_live_usage_are_never_evicted() {
        let window = Window::Calendar {
            period: Period::Day,
            utc_offset_seconds: 0,
        };
        let mut b = BudgetWindow::new(100, window, 2 * DAY, 2).unwrap();
        let t = utc(2024, 5, 1, 12);
        b.debit("a", 1, t).unwrap();
        grant(b.reserve("b", 1, t));
        assert_eq!(
            b.reserve("c", 1, t),
            Err(LimiterError::TooManyKeys { max_keys: 2 })
        );
        assert_eq!(
            b.debit("c", 1, t),
            Err(LimiterError::TooManyKeys { max_keys: 2 })
        );
        // Once the day is over, `a` may go (`b` still has a reservation outstanding).
        let tomorrow = utc(2024, 5, 2, 0);
        assert!(b.reserve("c", 1, tomorrow).unwrap().is_admitted());
        assert_eq!(b.len(), 2);
        assert_eq!(b.used("a", tomorrow), 0);
    }

    #[test]
    fn an_outstanding_reservation_pins_its_key_even_with_zero_usage() {
        // A zero estimate leaves no usage, but the settlement may still charge: the key must
        // stay, or a full table could make the excess impossible to charge.
        let window = Window::Calendar {
            period: Period::Day,
            utc_offset_seconds: 0,
        };
        let mut b = BudgetWindow::new(100, window, 2 * DAY, 1).unwrap();
        let t = utc(2024, 5, 1, 12);
        let a = grant(b.reserve("a", 0, t)).id.unwrap();
        assert_eq!(
            b.debit("b", 1, t),
            Err(LimiterError::TooManyKeys { max_keys: 1 })
        );
        assert!(b.settle(a, 50, t));
        assert_eq!(b.used("a", t), 50);
    }

    #[test]
    fn invalid_configuration() {
        let bad = |window| {
            BudgetWindow::new(1, window, 1, 1)
                .err()
                .unwrap()
                .to_string()
        };
        assert_eq!(
            bad(Window::Rolling {
                window_ms: 1000,
                buckets: 7
            }),
            "limiter setting `buckets` is 7 (for a window of 1000 ms); expected a number that \
             divides the window in whole milliseconds"
        );
        assert!(bad(Window::Rolling {
            window_ms: 1000,
            buckets: 0
        })
        .contains("between 1 and 4096"));
        assert!(bad(Window::Calendar {
            period: Period::Day,
            utc_offset_seconds: 86_400
        })
        .contains("`utc_offset` is 86400 s"));
        assert!(BudgetWindow::new(
            0,
            Window::Rolling {
                window_ms: 1,
                buckets: 1
            },
            1,
            1
        )
        .is_err());
    }
}
