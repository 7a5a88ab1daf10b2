//! Property tests of every limiter against a simple reference model with exact arithmetic,
//! plus the guarantees of the module documentation checked on the admissions themselves.
//!
//! The models are written differently from the implementation on purpose: GCRA as the
//! textbook virtual-scheduling algorithm, the token bucket as an explicit level and held
//! amount refilled step by step, budgets as maps of windows or lists of charges, concurrency
//! as lists of lease expiry times. None of them evicts: the limiters run with room for every
//! key, so their only removals are the lossless sweeps, which must not change any decision.

use std::collections::HashMap;

use proptest::prelude::*;

use super::calendar::calendar_window;
use super::*;

const T0: u64 = 1_700_000_000_000;

/// One step of a generated scenario. `pick` chooses among every reservation made so far
/// (live or not); keys come from a small set so that they collide.
#[derive(Debug, Clone)]
enum Op {
    Reserve { key: u8, amount: u64 },
    Settle { pick: usize, actual: u64 },
    Release { pick: usize },
    Debit { key: u8, amount: u64 },
}

fn ops(max_amount: u64, max_dt: u64, len: usize) -> impl Strategy<Value = Vec<(u64, Op)>> {
    let dt = prop_oneof![2 => Just(0u64), 3 => 0..max_dt];
    let op = prop_oneof![
        5 => (0u8..3, 0..=max_amount).prop_map(|(key, amount)| Op::Reserve { key, amount }),
        2 => (any::<usize>(), 0..=2 * max_amount).prop_map(|(pick, actual)| Op::Settle { pick, actual }),
        1 => any::<usize>().prop_map(|pick| Op::Release { pick }),
        1 => (0u8..3, 0..=max_amount).prop_map(|(key, amount)| Op::Debit { key, amount }),
    ];
    proptest::collection::vec((dt, op), 1..len)
}

fn key(k: u8) -> String {
    format!("team:{k}")
}

/// What a decision looked like, without the reservation id.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Admitted { remaining: u64, reset_after_ms: u64 },
    Denied(Denial),
}

fn seen(check: &Check) -> Seen {
    match check {
        Check::Admitted(g) => Seen::Admitted {
            remaining: g.remaining,
            reset_after_ms: g.reset_after_ms,
        },
        Check::Denied(d) => Seen::Denied(d.clone()),
    }
}

fn div_ceil(a: i128, b: i128) -> i128 {
    // For a >= 0 and b > 0 only.
    (a + b - 1) / b
}

/// How much an admitted reservation accounts for in the guarantees: its estimate while
/// outstanding or once expired, `min(actual, estimate)` once settled, nothing once released.
#[derive(Debug, Clone, Copy)]
enum Fate {
    Outstanding,
    Settled(u64),
    Released,
}

#[derive(Debug, Clone)]
struct Admitted {
    key: String,
    at: u64,
    estimate: u64,
    fate: Fate,
}

impl Admitted {
    fn charge(&self) -> u64 {
        match self.fate {
            Fate::Outstanding => self.estimate,
            Fate::Settled(actual) => actual.min(self.estimate),
            Fate::Released => 0,
        }
    }
}

// ---------------------------------------------------------------------------------------
// GCRA

/// The textbook GCRA (virtual scheduling): increment `I = period / limit`, limit
/// `L = (burst - 1) * I`; a request at `t` conforms unless `TAT > t + L`, then
/// `TAT = max(t, TAT) + I`. Times in ticks of `1 / limit` ms, so `I = period` ticks.
struct TextbookGcra {
    limit: u128,
    period: u128,
    burst: u128,
    tat: HashMap<String, u128>,
}

impl TextbookGcra {
    /// `Ok(())` if it conforms, else the retry time in ms.
    fn arrive(&mut self, key: &str, now: u64) -> Result<(), u64> {
        let t = u128::from(now) * self.limit;
        let l = (self.burst - 1) * self.period;
        let tat = self.tat.get(key).copied().unwrap_or(0);
        if tat > t + l {
            let at = (tat - l).div_ceil(self.limit);
            return Err((at - u128::from(now)) as u64);
        }
        self.tat.insert(key.to_string(), tat.max(t) + self.period);
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// (3) GCRA admits exactly what the textbook GCRA admits, with the same retry times;
    /// and over any interval at most `burst + interval * limit / period` requests.
    #[test]
    fn gcra_matches_the_textbook_algorithm(
        limit in 1u64..20,
        period in 1u64..5000,
        burst in 1u64..10,
        steps in proptest::collection::vec((prop_oneof![Just(0u64), 0u64..3000], 0u8..3), 1..150),
    ) {
        let mut gcra = RateLimiter::new(Rate::new(limit, period, burst).unwrap(), 64).unwrap();
        let mut textbook = TextbookGcra {
            limit: limit.into(),
            period: period.into(),
            burst: burst.into(),
            tat: HashMap::new(),
        };
        let mut now = T0;
        let mut admitted: Vec<(u8, u64)> = Vec::new();
        for (dt, k) in steps {
            now += dt;
            let got = gcra.check(&key(k), 1, now);
            match (textbook.arrive(&key(k), now), &got) {
                (Ok(()), Check::Admitted(_)) => admitted.push((k, now)),
                (Err(retry), Check::Denied(d)) => {
                    prop_assert_eq!(d.retry_after_ms, Some(retry));
                    prop_assert!(d.used >= burst);
                }
                (want, got) => prop_assert!(false, "textbook {:?}, limiter {:?}", want, got),
            }
        }
        for &(k, a) in &admitted {
            for &(_, u) in admitted.iter().filter(|&&(k2, u)| k2 == k && u >= a) {
                let count = admitted.iter().filter(|&&(k2, t)| k2 == k && a <= t && t <= u).count() as u128;
                let bound = u128::from(burst) * u128::from(period) + u128::from(u - a) * u128::from(limit);
                prop_assert!(count * u128::from(period) <= bound);
            }
        }
    }

    /// Retrying exactly after the reported retry time succeeds, one millisecond earlier fails
    /// (for any amount up to the burst, with nothing else happening in between).
    #[test]
    fn gcra_retry_after_is_exact(
        limit in 1u64..50,
        period in 1u64..10_000,
        burst in 1u64..10,
        taken in proptest::collection::vec(1u64..10, 1..10),
        amount in 1u64..10,
    ) {
        prop_assume!(amount <= burst);
        let make = || {
            let mut gcra = RateLimiter::new(Rate::new(limit, period, burst).unwrap(), 8).unwrap();
            for t in &taken {
                gcra.check("k", (*t).min(burst), T0);
            }
            gcra
        };
        if let Check::Denied(d) = make().check("k", amount, T0) {
            let retry = d.retry_after_ms.unwrap();
            prop_assert!(retry >= 1);
            prop_assert!(!make().check("k", amount, T0 + retry - 1).is_admitted());
            prop_assert!(make().check("k", amount, T0 + retry).is_admitted());
        }
    }
}

// ---------------------------------------------------------------------------------------
// Token bucket

/// The token bucket as a level and a held amount, refilled explicitly. Amounts are scaled by
/// `period` and time by `limit`, so the refill is `limit` scaled units per ms, exactly.
#[derive(Debug, Clone)]
struct ModelKey {
    /// Tokens in the bucket x `period`; negative in debt.
    level: i128,
    held: u64,
    last: u64,
}

#[derive(Debug, Clone)]
struct ModelReservation {
    key: String,
    estimate: u64,
    expires_at: u64,
    live: bool,
}

struct ModelBucket {
    limit: i128,
    period: i128,
    burst: u64,
    ttl: u64,
    keys: HashMap<String, ModelKey>,
    reservations: Vec<ModelReservation>,
}

impl ModelBucket {
    fn capacity(&self) -> i128 {
        i128::from(self.burst) * self.period
    }

    /// Refill `key` up to `at`, never above the capacity left by what is held.
    fn refill(&mut self, key: &str, at: u64) -> &mut ModelKey {
        let capacity = self.capacity();
        let (limit, period) = (self.limit, self.period);
        let k = self.keys.entry(key.to_string()).or_insert(ModelKey {
            level: capacity,
            held: 0,
            last: at,
        });
        let cap = capacity - i128::from(k.held) * period;
        if k.level < cap {
            k.level = (k.level + i128::from(at - k.last) * limit).min(cap);
        }
        k.last = at;
        k
    }

    fn expire(&mut self, now: u64) {
        for i in 0..self.reservations.len() {
            let r = self.reservations[i].clone();
            if r.live && r.expires_at <= now {
                let k = self.refill(&r.key, r.expires_at);
                k.held -= r.estimate;
                self.reservations[i].live = false;
            }
        }
    }

    fn used(&mut self, key: &str, now: u64) -> u64 {
        let capacity = self.capacity();
        let period = self.period;
        let k = self.refill(key, now);
        div_ceil(capacity - k.level, period) as u64
    }

    fn reserve(&mut self, key: &str, estimate: u64, now: u64) -> Seen {
        let (capacity, limit, period, burst) =
            (self.capacity(), self.limit, self.period, self.burst);
        let k = self.refill(key, now);
        let cost = i128::from(estimate) * period;
        if k.level >= cost {
            k.level -= cost;
            k.held += estimate;
            let level = k.level;
            self.reservations.push(ModelReservation {
                key: key.to_string(),
                estimate,
                expires_at: now + self.ttl,
                live: true,
            });
            return Seen::Admitted {
                remaining: (level / period) as u64,
                reset_after_ms: div_ceil(capacity - level, limit) as u64,
            };
        }
        Seen::Denied(Denial {
            kind: Kind::Tokens,
            limit: limit as u64,
            window_ms: Some(period as u64),
            burst,
            used: div_ceil(capacity - k.level, period) as u64,
            requested: estimate,
            retry_after_ms: (estimate <= burst).then(|| div_ceil(cost - k.level, limit) as u64),
        })
    }

    /// Settle (`Some(actual)`) or release (`None`) reservation `i`; `false` if not live.
    fn finish(&mut self, i: usize, actual: Option<u64>, now: u64) -> bool {
        if !self.reservations[i].live {
            return false;
        }
        self.reservations[i].live = false;
        let r = self.reservations[i].clone();
        let period = self.period;
        let k = self.refill(&r.key, now);
        k.held -= r.estimate;
        k.level += i128::from(r.estimate) * period;
        k.level -= i128::from(actual.unwrap_or(0)) * period;
        true
    }

    fn debit(&mut self, key: &str, amount: u64, now: u64) {
        let period = self.period;
        self.refill(key, now).level -= i128::from(amount) * period;
    }
}

/// Run one scenario on a `TokenBucket` and the model, asserting they agree at every step.
/// `phantom_at`: before that step, also reserve and at once release (a no-op by design).
fn run_bucket(
    limit: u64,
    period: u64,
    burst: u64,
    ttl: u64,
    steps: &[(u64, Op)],
    phantom_at: Option<(usize, u64)>,
) -> Result<(Vec<Seen>, Vec<Admitted>), TestCaseError> {
    let rate = Rate::new(limit, period, burst).unwrap();
    let mut bucket = TokenBucket::new(rate, ttl, 64).unwrap();
    let mut model = ModelBucket {
        limit: limit.into(),
        period: period.into(),
        burst,
        ttl,
        keys: HashMap::new(),
        reservations: Vec::new(),
    };
    // Parallel to `model.reservations`.
    let mut ids: Vec<ReservationId> = Vec::new();
    let mut admitted: Vec<Admitted> = Vec::new();
    let mut seen_all = Vec::new();
    let mut now = T0;
    for (step, (dt, op)) in steps.iter().enumerate() {
        now += dt;
        model.expire(now);
        if let Some((_, amount)) = phantom_at.filter(|&(at, _)| at == step) {
            if let Check::Admitted(g) = bucket.reserve("team:0", amount, now) {
                prop_assert!(bucket.release(g.id.unwrap(), now));
            }
        }
        match op {
            Op::Reserve { key: k, amount } => {
                let got = bucket.reserve(&key(*k), *amount, now);
                let want = model.reserve(&key(*k), *amount, now);
                prop_assert_eq!(&seen(&got), &want);
                if let Check::Admitted(g) = got {
                    ids.push(g.id.unwrap());
                    admitted.push(Admitted {
                        key: key(*k),
                        at: now,
                        estimate: *amount,
                        fate: Fate::Outstanding,
                    });
                }
                seen_all.push(want);
            }
            Op::Settle { pick, actual } if !ids.is_empty() => {
                let i = pick % ids.len();
                let want = model.finish(i, Some(*actual), now);
                prop_assert_eq!(bucket.settle(ids[i], *actual, now), want);
                if want {
                    admitted[i].fate = Fate::Settled(*actual);
                }
            }
            Op::Release { pick } if !ids.is_empty() => {
                let i = pick % ids.len();
                let want = model.finish(i, None, now);
                prop_assert_eq!(bucket.release(ids[i], now), want);
                if want {
                    admitted[i].fate = Fate::Released;
                }
            }
            Op::Debit { key: k, amount } => {
                bucket.debit(&key(*k), *amount, now);
                model.debit(&key(*k), *amount, now);
            }
            Op::Settle { .. } | Op::Release { .. } => {}
        }
        for k in 0..3 {
            let (got, want) = (bucket.used(&key(k), now), model.used(&key(k), now));
            prop_assert_eq!(got, want, "used of {} at step {}", key(k), step);
        }
        let live = model.reservations.iter().filter(|r| r.live).count();
        prop_assert_eq!(bucket.reservations(), live);
    }
    Ok((seen_all, admitted))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// The token bucket agrees with the model on every decision and every level, through
    /// reservations, settlements (refunds and debt), releases, debits and expiry; (2) its
    /// level never exceeds the capacity (`used` never below what is held is in the model).
    /// (1) Over any interval, the reservations admitted in it account for at most
    /// `burst + interval * limit / period`.
    #[test]
    fn token_bucket_matches_the_model(
        limit in 1u64..30,
        period in 1u64..3000,
        burst in 1u64..30,
        ttl in 1u64..8000,
        steps in ops(20, 3000, 120),
    ) {
        let (_, admitted) = run_bucket(limit, period, burst, ttl, &steps, None)?;
        let (limit, period, burst) = (u128::from(limit), u128::from(period), u128::from(burst));
        for a in &admitted {
            for u in admitted.iter().filter(|u| u.key == a.key && u.at >= a.at) {
                let sum: u128 = admitted
                    .iter()
                    .filter(|r| r.key == a.key && a.at <= r.at && r.at <= u.at)
                    .map(|r| u128::from(r.charge()))
                    .sum();
                prop_assert!(
                    sum * period <= burst * period + u128::from(u.at - a.at) * limit,
                    "{} admitted in [{}, {}]", sum, a.at, u.at
                );
            }
        }
    }

    /// (2) Reserving and at once releasing changes nothing: a release can never hand out
    /// capacity that was not there before the reservation.
    #[test]
    fn reserve_then_release_is_a_no_op(
        limit in 1u64..30,
        period in 1u64..3000,
        burst in 1u64..30,
        ttl in 1u64..8000,
        steps in ops(20, 3000, 60),
        at in any::<usize>(),
        amount in 0u64..30,
    ) {
        let (plain, _) = run_bucket(limit, period, burst, ttl, &steps, None)?;
        let (with_phantom, _) = run_bucket(limit, period, burst, ttl, &steps, Some((at % steps.len(), amount)))?;
        prop_assert_eq!(plain, with_phantom);
    }

    /// With nothing held, the reported retry time is exact for the token bucket too.
    #[test]
    fn token_bucket_retry_after_is_exact_when_nothing_is_held(
        limit in 1u64..30,
        period in 1u64..3000,
        burst in 1u64..30,
        debt in 0u64..100,
        amount in 0u64..30,
    ) {
        prop_assume!(amount <= burst);
        let make = || {
            let mut b = TokenBucket::new(Rate::new(limit, period, burst).unwrap(), 1, 8).unwrap();
            b.debit("k", debt, T0);
            b
        };
        if let Check::Denied(d) = make().reserve("k", amount, T0) {
            let retry = d.retry_after_ms.unwrap();
            prop_assert!(!make().reserve("k", amount, T0 + retry - 1).is_admitted());
            prop_assert!(make().reserve("k", amount, T0 + retry).is_admitted());
        }
    }
}

// ---------------------------------------------------------------------------------------
// Budgets

/// A calendar budget as a map of windows; a rolling one as a list of charges.
enum ModelUsage {
    Calendar(HashMap<(String, i64), u64>),
    /// Per key: (sub-bucket index, amount) in charge order.
    Rolling(HashMap<String, Vec<(i64, u64)>>),
}

struct ModelBudget {
    limit: u64,
    window: Window,
    ttl: u64,
    usage: ModelUsage,
    /// (key, estimate, where charged: window index or index into the key's charge list,
    /// expires_at, live)
    reservations: Vec<(String, u64, i64, u64, bool)>,
}

impl ModelBudget {
    fn width(&self) -> u64 {
        match self.window {
            Window::Rolling { window_ms, buckets } => window_ms / u64::from(buckets),
            Window::Calendar { .. } => 0,
        }
    }

    fn buckets(&self) -> i64 {
        match self.window {
            Window::Rolling { buckets, .. } => buckets.into(),
            Window::Calendar { .. } => 0,
        }
    }

    fn current(&self, now: u64) -> i64 {
        match self.window {
            Window::Calendar {
                period,
                utc_offset_seconds,
            } => calendar_window(period, utc_offset_seconds, now).index,
            Window::Rolling { .. } => (now / self.width()) as i64,
        }
    }

    fn counts(&self, bucket: i64, now: u64) -> bool {
        let current = self.current(now);
        bucket >= current - self.buckets() && bucket <= current
    }

    fn used(&self, key: &str, now: u64) -> u64 {
        let current = self.current(now);
        match &self.usage {
            ModelUsage::Calendar(m) => m.get(&(key.to_string(), current)).copied().unwrap_or(0),
            ModelUsage::Rolling(m) => m
                .get(key)
                .map(|charges| {
                    charges
                        .iter()
                        .filter(|(b, _)| self.counts(*b, now))
                        .map(|(_, a)| a)
                        .sum()
                })
                .unwrap_or(0),
        }
    }

    /// Charge now; returns where.
    fn charge(&mut self, key: &str, amount: u64, now: u64) -> i64 {
        let current = self.current(now);
        match &mut self.usage {
            ModelUsage::Calendar(m) => {
                *m.entry((key.to_string(), current)).or_insert(0) += amount;
                current
            }
            ModelUsage::Rolling(m) => {
                let charges = m.entry(key.to_string()).or_default();
                charges.push((current, amount));
                (charges.len() - 1) as i64
            }
        }
    }

    fn refund(&mut self, key: &str, at: i64, amount: u64, now: u64) {
        let current = self.current(now);
        let counts = match &self.usage {
            ModelUsage::Calendar(_) => at == current,
            ModelUsage::Rolling(m) => self.counts(m[key][at as usize].0, now),
        };
        if !counts {
            return;
        }
        match &mut self.usage {
            ModelUsage::Calendar(m) => *m.get_mut(&(key.to_string(), at)).unwrap() -= amount,
            ModelUsage::Rolling(m) => m.get_mut(key).unwrap()[at as usize].1 -= amount,
        }
    }

    /// The earliest time from `now` at which `requested` more fits: brute force over the
    /// moments a charge stops counting.
    fn retry_after(&self, key: &str, requested: u64, now: u64) -> Option<u64> {
        if requested > self.limit {
            return None;
        }
        match (&self.usage, self.window) {
            (
                ModelUsage::Calendar(_),
                Window::Calendar {
                    period,
                    utc_offset_seconds,
                },
            ) => {
                let w = calendar_window(period, utc_offset_seconds, now);
                Some((w.end_ms - now as i64) as u64)
            }
            (ModelUsage::Rolling(m), _) => {
                let mut moments: Vec<u64> = m[key]
                    .iter()
                    .map(|(b, _)| (*b + self.buckets() + 1) as u64 * self.width())
                    .filter(|&t| t > now)
                    .collect();
                moments.sort_unstable();
                moments
                    .into_iter()
                    .find(|&t| self.used(key, t) + requested <= self.limit)
                    .map(|t| t - now)
            }
            _ => unreachable!(),
        }
    }

    fn expire(&mut self, now: u64) {
        for r in &mut self.reservations {
            if r.3 <= now {
                r.4 = false;
            }
        }
    }

    fn reserve(&mut self, key: &str, estimate: u64, now: u64) -> Option<Denial> {
        let used = self.used(key, now);
        if used + estimate > self.limit {
            let window_ms = match self.window {
                Window::Calendar {
                    period,
                    utc_offset_seconds,
                } => {
                    let w = calendar_window(period, utc_offset_seconds, now);
                    (w.end_ms - w.start_ms) as u64
                }
                Window::Rolling { window_ms, .. } => window_ms,
            };
            return Some(Denial {
                kind: Kind::Budget,
                limit: self.limit,
                window_ms: Some(window_ms),
                burst: self.limit,
                used,
                requested: estimate,
                retry_after_ms: self.retry_after(key, estimate, now),
            });
        }
        let at = self.charge(key, estimate, now);
        self.reservations
            .push((key.to_string(), estimate, at, now + self.ttl, true));
        None
    }

    fn finish(&mut self, i: usize, actual: Option<u64>, now: u64) -> bool {
        let (key, estimate, at, _, live) = self.reservations[i].clone();
        if !live {
            return false;
        }
        self.reservations[i].4 = false;
        let actual = actual.unwrap_or(0);
        if actual < estimate {
            self.refund(&key, at, estimate - actual, now);
        } else {
            self.charge(&key, actual - estimate, now);
        }
        true
    }
}

fn run_budget(
    limit: u64,
    window: Window,
    ttl: u64,
    steps: &[(u64, Op)],
    start: u64,
) -> Result<Vec<Admitted>, TestCaseError> {
    let mut budget = BudgetWindow::new(limit, window, ttl, 64).unwrap();
    let mut model = ModelBudget {
        limit,
        window,
        ttl,
        usage: match window {
            Window::Calendar { .. } => ModelUsage::Calendar(HashMap::new()),
            Window::Rolling { .. } => ModelUsage::Rolling(HashMap::new()),
        },
        reservations: Vec::new(),
    };
    let mut ids = Vec::new();
    let mut admitted = Vec::new();
    let mut now = start;
    for (step, (dt, op)) in steps.iter().enumerate() {
        now += dt;
        model.expire(now);
        match op {
            Op::Reserve { key: k, amount } => {
                let got = budget.reserve(&key(*k), *amount, now).unwrap();
                match (model.reserve(&key(*k), *amount, now), got) {
                    (None, Check::Admitted(g)) => {
                        prop_assert_eq!(g.remaining, limit - model.used(&key(*k), now));
                        ids.push(g.id.unwrap());
                        admitted.push(Admitted {
                            key: key(*k),
                            at: now,
                            estimate: *amount,
                            fate: Fate::Outstanding,
                        });
                    }
                    (Some(want), Check::Denied(got)) => prop_assert_eq!(got, want),
                    (want, got) => prop_assert!(false, "model {:?}, budget {:?}", want, got),
                }
            }
            Op::Settle { pick, actual } if !ids.is_empty() => {
                let i = pick % ids.len();
                let want = model.finish(i, Some(*actual), now);
                prop_assert_eq!(budget.settle(ids[i], *actual, now), want);
                if want {
                    admitted[i].fate = Fate::Settled(*actual);
                }
            }
            Op::Release { pick } if !ids.is_empty() => {
                let i = pick % ids.len();
                let want = model.finish(i, None, now);
                prop_assert_eq!(budget.release(ids[i], now), want);
                if want {
                    admitted[i].fate = Fate::Released;
                }
            }
            Op::Debit { key: k, amount } => {
                budget.debit(&key(*k), *amount, now).unwrap();
                model.charge(&key(*k), *amount, now);
            }
            Op::Settle { .. } | Op::Release { .. } => {}
        }
        for k in 0..3 {
            prop_assert_eq!(
                budget.used(&key(k), now),
                model.used(&key(k), now),
                "step {}",
                step
            );
        }
        let live = model.reservations.iter().filter(|r| r.4).count();
        prop_assert_eq!(budget.reservations(), live);
    }
    Ok(admitted)
}

fn period() -> impl Strategy<Value = Period> {
    prop_oneof![Just(Period::Day), Just(Period::Week), Just(Period::Month)]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Calendar budgets agree with the model; (1) the reservations admitted within one
    /// window account for at most the limit.
    #[test]
    fn calendar_budget_matches_the_model(
        limit in 1u64..60,
        period in period(),
        offset in -50_400i32..=50_400,
        ttl in 1u64..(3 * 86_400_000),
        start in 0u64..(400 * 86_400_000),
        steps in ops(25, 2 * 86_400_000, 100),
    ) {
        let window = Window::Calendar { period, utc_offset_seconds: offset };
        let admitted = run_budget(limit, window, ttl, &steps, T0 + start)?;
        let mut per_window: HashMap<(String, i64), u64> = HashMap::new();
        for a in &admitted {
            let w = calendar_window(period, offset, a.at).index;
            *per_window.entry((a.key.clone(), w)).or_insert(0) += a.charge();
        }
        for sum in per_window.values() {
            prop_assert!(*sum <= limit);
        }
    }

    /// Rolling budgets agree with the model; (1) the reservations admitted within any span
    /// of the window's length account for at most the limit.
    #[test]
    fn rolling_budget_matches_the_model(
        limit in 1u64..60,
        width in 1u64..2000,
        buckets in 1u32..8,
        ttl in 1u64..20_000,
        steps in ops(25, 4000, 120),
    ) {
        let window_ms = width * u64::from(buckets);
        let window = Window::Rolling { window_ms, buckets };
        let admitted = run_budget(limit, window, ttl, &steps, T0)?;
        for u in &admitted {
            let sum: u64 = admitted
                .iter()
                .filter(|r| r.key == u.key && r.at <= u.at && u.at - r.at < window_ms)
                .map(Admitted::charge)
                .sum();
            prop_assert!(sum <= limit, "{} admitted in the {} ms up to {}", sum, window_ms, u.at);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Concurrency

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// The concurrency limiter agrees with lists of lease expiry times; never more than
    /// `limit` leases of a key are live.
    #[test]
    fn concurrency_matches_the_model(
        limit in 1u64..5,
        ttl in 1u64..5000,
        steps in ops(1, 2000, 150),
    ) {
        let mut limiter = ConcurrencyLimiter::new(limit, ttl, 64).unwrap();
        // (key, expires_at, live) per lease ever granted.
        let mut model: Vec<(String, u64, bool)> = Vec::new();
        let mut ids = Vec::new();
        let mut now = T0;
        for (dt, op) in steps {
            now += dt;
            for lease in &mut model {
                if lease.1 <= now {
                    lease.2 = false;
                }
            }
            match op {
                Op::Reserve { key: k, .. } | Op::Debit { key: k, .. } => {
                    let k = key(k);
                    let live: Vec<u64> = model.iter().filter(|l| l.2 && l.0 == k).map(|l| l.1).collect();
                    match limiter.acquire(&k, now).unwrap() {
                        Check::Admitted(g) => {
                            prop_assert!((live.len() as u64) < limit);
                            prop_assert_eq!(g.remaining, limit - live.len() as u64 - 1);
                            ids.push(g.id.unwrap());
                            model.push((k, now + ttl, true));
                        }
                        Check::Denied(d) => {
                            prop_assert_eq!(live.len() as u64, limit);
                            prop_assert_eq!(d.used, limit);
                            prop_assert_eq!(d.retry_after_ms, live.iter().min().map(|e| e - now));
                        }
                    }
                }
                Op::Settle { pick, .. } | Op::Release { pick } => {
                    if !ids.is_empty() {
                        let i = pick % ids.len();
                        prop_assert_eq!(limiter.release(ids[i], now), model[i].2);
                        model[i].2 = false;
                    }
                }
            }
            for k in 0..3 {
                let live = model.iter().filter(|l| l.2 && l.0 == key(k)).count() as u64;
                prop_assert_eq!(limiter.used(&key(k), now), live);
                prop_assert!(live <= limit);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Eviction

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Under key pressure (more keys than `max_keys`), GCRA behaves exactly like the textbook
    /// algorithm on a naive least-recently-used list that forgets an evicted key (so an
    /// evicted key comes back as a fresh key, never as anything more) and drops up to two
    /// full buckets unused for a second from the tail per call; the table never exceeds its
    /// cap.
    #[test]
    fn gcra_under_key_pressure_forgets_evicted_keys_as_fresh(
        limit in 1u64..10,
        period in 1u64..2000,
        burst in 1u64..5,
        max_keys in 1usize..4,
        steps in proptest::collection::vec((prop_oneof![Just(0u64), 0u64..1500], 0u8..6), 1..200),
    ) {
        let mut gcra = RateLimiter::new(Rate::new(limit, period, burst).unwrap(), max_keys).unwrap();
        let mut textbook = TextbookGcra {
            limit: limit.into(),
            period: period.into(),
            burst: burst.into(),
            tat: HashMap::new(),
        };
        // (key, last used), most recently used first.
        let mut lru: Vec<(String, u64)> = Vec::new();
        let mut now = T0;
        for (dt, k) in steps {
            now += dt;
            let k = key(k);
            let ticks = u128::from(now) * u128::from(limit);
            for _ in 0..2 {
                match lru.last() {
                    Some((last, used))
                        if now - used >= 1000
                            && textbook.tat.get(last).copied().unwrap_or(0) <= ticks =>
                    {
                        textbook.tat.remove(last);
                        lru.pop();
                    }
                    _ => break,
                }
            }
            if let Some(pos) = lru.iter().position(|x| x.0 == k) {
                lru.remove(pos);
            } else if lru.len() >= max_keys {
                if let Some((evicted, _)) = lru.pop() {
                    textbook.tat.remove(&evicted);
                }
            }
            lru.insert(0, (k.clone(), now));
            let want = textbook.arrive(&k, now).is_ok();
            prop_assert_eq!(gcra.check(&k, 1, now).is_admitted(), want);
            prop_assert!(gcra.len() <= max_keys);
            prop_assert_eq!(gcra.len(), lru.len());
        }
    }

    /// Budgets under key pressure never lose usage in a live window: a key that was charged
    /// in the current window always reports that usage (or the call fails with
    /// `TooManyKeys`).
    #[test]
    fn budgets_under_key_pressure_never_forget_live_usage(
        max_keys in 1usize..4,
        steps in proptest::collection::vec((prop_oneof![Just(0u64), 0u64..40_000_000], 0u8..6, 1u64..5), 1..100),
    ) {
        let window = Window::Calendar { period: Period::Day, utc_offset_seconds: 0 };
        let mut budget = BudgetWindow::new(1000, window, 1000, max_keys).unwrap();
        let mut model: HashMap<(String, i64), u64> = HashMap::new();
        let mut now = T0;
        for (dt, k, amount) in steps {
            now += dt;
            let day = calendar_window(Period::Day, 0, now).index;
            match budget.debit(&key(k), amount, now) {
                Ok(()) => *model.entry((key(k), day)).or_insert(0) += amount,
                Err(LimiterError::TooManyKeys { .. }) => {}
                Err(e) => prop_assert!(false, "{}", e),
            }
            prop_assert!(budget.len() <= max_keys);
            for k in 0..6 {
                let want = model.get(&(key(k), day)).copied().unwrap_or(0);
                prop_assert_eq!(budget.used(&key(k), now), want);
            }
        }
    }
}
