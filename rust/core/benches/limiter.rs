//! Limiter decisions: one GCRA check, a token-bucket reservation and its settlement, a
//! concurrency lease, budget reservations (calendar month, rolling hour in 60 buckets), on a
//! hot key and spread over 10,000 keys. Time advances 1 ms per operation, so expiry and
//! refill run as they would in production. Target: well under 1 us per check.
use criterion::{criterion_group, criterion_main, Criterion};
use std::hint::black_box;
use tollway_core::limiter::{
    BudgetWindow, Check, ConcurrencyLimiter, Period, Rate, RateLimiter, TokenBucket, Window,
};

const T0: u64 = 1_700_000_000_000;
const KEYS: usize = 10_000;

fn keys() -> Vec<String> {
    (0..KEYS).map(|i| format!("team:{i}")).collect()
}

fn id(check: Check) -> Option<tollway_core::limiter::ReservationId> {
    match check {
        Check::Admitted(grant) => grant.id,
        Check::Denied(_) => None,
    }
}

fn bench(c: &mut Criterion) {
    let keys = keys();
    let mut group = c.benchmark_group("limiter");

    group.bench_function("gcra_check_hot_key", |b| {
        let mut l = RateLimiter::new(Rate::new(1000, 1000, 100).unwrap(), KEYS).unwrap();
        let mut now = T0;
        b.iter(|| {
            now += 1;
            black_box(l.check(black_box("team:research"), 1, now))
        })
    });

    group.bench_function("gcra_check_10k_keys", |b| {
        let mut l = RateLimiter::new(Rate::new(1000, 1000, 100).unwrap(), KEYS).unwrap();
        let (mut now, mut i) = (T0, 0);
        b.iter(|| {
            now += 1;
            i = (i + 1) % KEYS;
            black_box(l.check(black_box(&keys[i]), 1, now))
        })
    });

    group.bench_function("token_bucket_reserve_settle_hot_key", |b| {
        // 1,000 tokens per ms: every reservation is admitted.
        let rate = Rate::new(1_000, 1, 100_000).unwrap();
        let mut t = TokenBucket::new(rate, 600_000, KEYS).unwrap();
        let mut now = T0;
        b.iter(|| {
            now += 1;
            let id = id(t.reserve(black_box("team:research"), 500, now));
            t.settle(id.expect("admitted"), 420, now)
        })
    });

    group.bench_function("token_bucket_reserve_then_expire_10k_keys", |b| {
        // Never settled: 1,000 reservations outstanding, one expiring per call.
        let rate = Rate::new(1_000_000, 60_000, 1_000_000).unwrap();
        let mut t = TokenBucket::new(rate, 1000, KEYS).unwrap();
        let (mut now, mut i) = (T0, 0);
        b.iter(|| {
            now += 1;
            i = (i + 1) % KEYS;
            black_box(t.reserve(black_box(&keys[i]), 10, now))
        })
    });

    group.bench_function("concurrency_acquire_release", |b| {
        let mut l = ConcurrencyLimiter::new(10, 600_000, KEYS).unwrap();
        let (mut now, mut i) = (T0, 0);
        b.iter(|| {
            now += 1;
            i = (i + 1) % KEYS;
            if let Some(id) = id(l.acquire(black_box(&keys[i]), now).unwrap()) {
                l.release(id, now);
            }
        })
    });

    for (name, window) in [
        (
            "budget_month_reserve_settle",
            Window::Calendar {
                period: Period::Month,
                utc_offset_seconds: 7200,
            },
        ),
        (
            "budget_rolling_hour_60_reserve_settle",
            Window::Rolling {
                window_ms: 3_600_000,
                buckets: 60,
            },
        ),
    ] {
        group.bench_function(name, |b| {
            let mut budget = BudgetWindow::new(u64::MAX / 2, window, 600_000, KEYS).unwrap();
            let (mut now, mut i) = (T0, 0);
            b.iter(|| {
                now += 1;
                i = (i + 1) % KEYS;
                if let Some(id) = id(budget.reserve(black_box(&keys[i]), 5_000, now).unwrap()) {
                    budget.settle(id, 4_200, now);
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
