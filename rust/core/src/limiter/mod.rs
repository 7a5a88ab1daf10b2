//! Rate limiters and budget windows with reservations: the kernels of every traffic policy.
//!
//! | kind | type | limits | per request |
//! |---|---|---|---|
//! | request rate | [`RateLimiter`] (GCRA) | `limit` requests per `period`, `burst` at once | [`RateLimiter::check`] |
//! | token rate | [`TokenBucket`] | `limit` tokens per `period`, `burst` (capacity) at once | `reserve`, then `settle` or `release` |
//! | concurrency | [`ConcurrencyLimiter`] | `limit` requests in flight | `acquire`, then `release` |
//! | budget | [`BudgetWindow`] | `limit` per calendar day/week/month or per rolling window | `reserve`, then `settle` or `release` |
//!
//! [`admission`] applies one request's takes over several of them, all or none (the policy
//! engine's memory backend).
//!
//! Every limiter keeps independent state per *partition key* (a string such as
//! `"team:research"`). Each is a plain struct with `&mut self` methods: callers serialise
//! calls (the Python binding holds one mutex per limiter), so every decision sees every earlier
//! one and each call is a few hash lookups, no allocation except for a new key.
//!
//! # Time
//! Every operation takes `now` explicitly, as **integer milliseconds since the Unix epoch**
//! (`u64`). Integers make the arithmetic exact (no float drift in refills, no decision that
//! depends on rounding), so decisions are reproducible and property-tested against reference
//! models with exact arithmetic; milliseconds are finer than anything HTTP rate limits or
//! `Retry-After` need. The Python binding takes seconds as a float (`time.time()`), rounds to
//! the nearest millisecond, and reads the system clock itself when `now` is `None`.
//!
//! Time never goes back inside a limiter: a `now` earlier than the latest one it has seen is
//! taken as that latest one (clocks step back under NTP, threads read the clock before they
//! get the lock; either way a limiter must not hand out the same capacity twice). `now` is
//! also capped at [`MAX_NOW_MS`] (the end of year 9999), which keeps every product in range.
//!
//! # Amounts
//! Amounts are `u64` integers: requests, tokens, or, for money, **micro-USD** (1 USD =
//! 1,000,000). Integer sums never drift (a million additions of $0.000003 in `f64` do not add
//! up to $3), compare exactly against a limit, and `u64` micro-USD reach 18 trillion dollars.
//! Sums saturate at `u64::MAX` rather than wrap.
//!
//! # Rate limits: GCRA and token bucket
//! Both are a bucket of capacity `burst` that refills `limit` per `period` (continuously, not
//! in steps), computed as a *theoretical arrival time* (TAT): the instant the bucket will be
//! full again. Time is counted in ticks of `1 / limit` ms and one unit of amount is `period`
//! ticks, so a refill rate of `limit / period` per ms is exactly one tick per tick and nothing
//! is ever rounded; only the numbers reported are (retry and reset times up to whole ms,
//! `remaining` down and `used` up to whole units). `used` = `burst` minus the level.
//!
//! - A request of `amount` is admitted iff the level after taking it is not negative, that
//!   is `used + amount <= burst`. A fresh (or evicted) key is a full bucket.
//! - [`RateLimiter`] (requests): the amount is taken at once. With `amount = 1` this is
//!   exactly the textbook GCRA (virtual scheduling) with emission interval `T = period /
//!   limit` and tolerance `(burst - 1) * T`: `burst` requests at once, then one every `T`.
//!   A GCRA admission is final: nothing to settle.
//! - [`TokenBucket`] (tokens): [`TokenBucket::reserve`] takes the estimate from the level and
//!   *holds* it: while held, the refill stops at `burst - held`, so the tokens in the bucket
//!   plus the tokens held never exceed `burst`. Settling at `actual` ends the hold and takes
//!   `actual` instead: a smaller `actual` refunds the difference, a larger one takes the excess
//!   even below zero. A negative level is **debt**: later requests are denied until the refill
//!   has paid it back. Releasing gives the whole estimate back (the request failed). Expiry
//!   ends the hold without giving anything back: the estimate is treated as spent and the
//!   bucket refills from where it is, so expiry can never create capacity (the refill that a
//!   hold blocked is not handed out later either, which is why holds cap the refill).
//!   [`TokenBucket::debit`] charges usage that had no reservation, possibly into debt.
//! - Guarantee: over any interval of length `W`, the reservations admitted in it account for
//!   at most `burst + W * limit / period` (each counted as `min(actual, estimate)`, or its
//!   estimate while outstanding or once expired, or 0 once released); what they actually use
//!   can exceed that by the sum of their excesses `actual - estimate`, which the bucket then
//!   carries as debt. For GCRA: at most `burst + W * limit / period` requests, exactly.
//!
//! # Concurrency limits
//! [`ConcurrencyLimiter::acquire`] admits iff fewer than `limit` leases of the key are in
//! flight; [`ConcurrencyLimiter::release`] ends a lease. A lease never released (a crashed
//! worker, a lost callback) expires after the lease time to live and frees its slot, so a
//! lost release costs a slot for at most that long. A denial's retry-after is when the key's
//! oldest lease expires: an upper bound, since any release frees a slot sooner.
//!
//! # Budgets
//! [`BudgetWindow`] sums usage per window and admits a reservation iff `used + estimate <=
//! limit`. The estimate is charged at once; settling charges `actual` instead (the refund
//! goes back to the window the estimate was charged to, if that window still counts; the
//! excess goes to the window current at settlement: money spent is never forgotten, and a
//! refund can never add room to a window that was not charged). Releasing refunds the estimate
//! under the same rule; expiry keeps it charged (conservative: the upstream call may have run
//! and cost money). [`BudgetWindow::debit`] charges usage without a reservation. `used` may
//! exceed `limit` (settled excess); everything is denied until the window moves on.
//! - **Calendar windows** ([`Period`]: day, week from Monday, month) in UTC or a fixed UTC
//!   offset; usage resets to zero at the window boundary. See [`calendar`].
//! - **Rolling windows** of `window` ms split into `buckets` sub-buckets of `window / buckets`
//!   ms each; the sum counts the current sub-bucket and the `buckets` before it. A charge
//!   therefore counts for at least `window` and at most `window + window / buckets` after it is
//!   made: the window never forgets early (any span of length `window` holds at most `limit`
//!   of admitted estimates), it may remember up to one sub-bucket too long (a denial can last
//!   up to `window / buckets` longer than with an exact sliding log). Memory is `buckets + 1`
//!   counters per key.
//!
//! # Reservations and expiry
//! `reserve` returns a [`ReservationId`] (unique per limiter; a settled, released or expired
//! id is unknown afterwards, never confused with a newer one). `settle` and `release` return
//! `false` for an unknown id and change nothing: after expiry the estimate stays charged, and
//! a caller that learns the actual usage late can still charge the excess with `debit`.
//! Choose a time to live longer than the slowest request (a long stream), since expiry is the
//! last resort. Expiry is processed in time order at the start of every call.
//!
//! # Denials
//! A [`Denial`] carries the numbers that explain it: the limit and its window (the period of
//! a rate, the length of the current budget window; none for concurrency), the burst
//! (capacity), the amount used, the amount requested, and when to retry: for rates when the
//! level will allow the request (exact when nothing is held; assuming held reservations
//! settle at their estimates otherwise), for calendar budgets when the window resets, for
//! rolling budgets when enough usage has left the window, for concurrency when the oldest
//! lease expires. No retry time (`None`) means waiting alone cannot help: the amount exceeds
//! the burst or the budget's limit.
//!
//! # Keys, memory and eviction
//! Each limiter holds at most `max_keys` keys (see `table.rs`). Every call drops up to two
//! least-recently-used keys whose state a fresh key would reproduce exactly (a full bucket
//! with nothing held, no lease in flight, no usage in the current budget window), so idle keys
//! go away at no cost to accuracy. A new key at the cap evicts one more:
//! - rate limits ([`RateLimiter`], [`TokenBucket`]) evict the least-recently-used key,
//!   whatever its state: its next request sees a full bucket, which is never more than a
//!   fresh key is allowed. A reservation whose key state was evicted settles against the
//!   key's current state: the refund is dropped (it was owed to the evicted state), the
//!   excess is still charged. Rate limits never refuse a key.
//! - concurrency and budgets only evict keys a fresh key would reproduce exactly (no lease
//!   in flight; no usage in the current window and no outstanding reservation). They look at
//!   up to 32 keys from the least-recently-used end; if none may go, the call fails with
//!   [`LimiterError::TooManyKeys`] (fail closed: budgets are money). Size `max_keys` for the
//!   keys active within one window.
//!
//! # Worst-case overshoot under concurrency
//! Decisions are serialised, so requests admitted concurrently are all counted at admission.
//! What can exceed a limit is only what is not known at admission:
//! - [`RateLimiter`] (GCRA): none.
//! - [`TokenBucket`] (tokens): the sum, over the reservations in flight, of `actual -
//!   estimate` where positive (charged as debt at settlement, and paid back by later requests
//!   waiting).
//! - [`BudgetWindow`] (budgets): the same sum, over the reservations in flight against the
//!   window.
//! - [`ConcurrencyLimiter`] (leases): none while leases are released; a request still running
//!   when its lease expires no longer counts, so choose a lease time to live above the request
//!   timeout.

pub mod admission;
mod budget;
pub mod calendar;
mod concurrency;
mod rate;
mod reservations;
mod table;

#[cfg(test)]
mod tests;

pub use budget::{BudgetWindow, Window};
pub use calendar::Period;
pub use concurrency::ConcurrencyLimiter;
pub use rate::{Rate, RateLimiter, TokenBucket, MAX_PERIOD_MS};

/// The latest `now` a limiter uses: 9999-12-31T23:59:59.999Z. Later values are capped.
pub const MAX_NOW_MS: u64 = 253_402_300_799_999;

/// Errors of limiter construction and of calls that cannot be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimiterError {
    /// A configuration number out of range.
    #[error("limiter setting `{field}` is {got}; expected {expected}")]
    InvalidConfig {
        field: &'static str,
        got: String,
        expected: &'static str,
    },
    /// A new key while every key held must be kept (see the module documentation).
    #[error(
        "no room for another key: the limiter holds its maximum of {max_keys} keys (`max_keys`) \
         and none of them can be evicted (usage in the current window, or leases in flight)"
    )]
    TooManyKeys { max_keys: usize },
}

/// Which kind of limit decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Request rate ([`RateLimiter`]).
    Rate,
    /// Token rate ([`TokenBucket`]).
    Tokens,
    /// Requests in flight ([`ConcurrencyLimiter`]).
    Concurrency,
    /// Usage per window ([`BudgetWindow`]).
    Budget,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Rate => "rate",
            Kind::Tokens => "tokens",
            Kind::Concurrency => "concurrency",
            Kind::Budget => "budget",
        }
    }
}

/// Names one outstanding reservation or lease of one limiter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReservationId(pub u64);

/// An admission, with the numbers for `x-ratelimit-*` headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The reservation or lease to settle or release; `None` for a GCRA admission.
    pub id: Option<ReservationId>,
    /// What is left after this admission (whole units, rounded down).
    pub remaining: u64,
    /// Milliseconds until the limit is whole again: the bucket full (rates), the window's end
    /// (calendar budgets), the oldest usage leaving the window (rolling budgets), this lease's
    /// expiry (concurrency).
    pub reset_after_ms: u64,
}

/// A refusal, with the numbers that explain it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    pub kind: Kind,
    /// The limit: per `window_ms` for rates and budgets, in flight for concurrency.
    pub limit: u64,
    /// The rate's period or the current budget window's length; `None` for concurrency.
    pub window_ms: Option<u64>,
    /// The most that can be admitted at once (a rate's capacity; `limit` for the others).
    pub burst: u64,
    /// What is in use now, compared with `burst` (above it when in debt).
    pub used: u64,
    /// The amount asked for.
    pub requested: u64,
    /// Milliseconds until retrying can succeed (see the module documentation); `None` when
    /// waiting cannot help because `requested` alone exceeds `burst`.
    pub retry_after_ms: Option<u64>,
}

/// The answer to an admission request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    Admitted(Grant),
    Denied(Denial),
}

impl Check {
    pub fn is_admitted(&self) -> bool {
        matches!(self, Check::Admitted(_))
    }
}

/// The latest `now` a limiter has seen; see "Time" above.
#[derive(Debug, Clone, Copy, Default)]
struct Clock {
    latest: u64,
}

impl Clock {
    fn advance(&mut self, now: u64) -> u64 {
        let now = now.min(MAX_NOW_MS).max(self.latest);
        self.latest = now;
        now
    }
}

fn check_positive(field: &'static str, value: u64) -> Result<u64, LimiterError> {
    if value == 0 {
        return Err(LimiterError::InvalidConfig {
            field,
            got: "0".into(),
            expected: "at least 1",
        });
    }
    Ok(value)
}

/// The table's slot indices are `u32`, with one value reserved.
fn check_max_keys(max_keys: usize) -> Result<usize, LimiterError> {
    if max_keys == 0 || max_keys >= u32::MAX as usize {
        return Err(LimiterError::InvalidConfig {
            field: "max_keys",
            got: max_keys.to_string(),
            expected: "between 1 and 4294967294",
        });
    }
    Ok(max_keys)
}
