//! One request's admission over every limit rule that applies to it: all or none.
//!
//! The policy engine (`tollway.policy.engine`) turns a request into [`Take`]s, one per limit
//! rule of every matching policy, in configuration order, and [`admit`] applies them:
//!
//! - Each rule's amount comes from the request ([`Rule::estimate`]): 1 for request rates and
//!   concurrency; for token rates and token budgets, the prompt and/or output tokens (as the
//!   rule counts them) at the highest weight they may be charged; for dollar budgets, the
//!   request's worst-case cost in micro-USD (computed by the caller from the catalog).
//! - Takes are applied in order. An *enforcing* take that is denied denies the request: what
//!   was already taken for it is given back, and the later takes are not evaluated. A *shadow*
//!   take that would be denied is reported and not taken; one that fits is taken like an
//!   enforcing one.
//! - When the request is admitted, request rates are final (settled at 1: a request is a
//!   request, whatever it uses) and the rest is held until the request ends: [`settle`] at the
//!   actual usage ([`Rule::actual`]; leases end), or [`release`] when it made no model call.
//! - The tightest enforcing request and token rates (least remaining) are reported for
//!   OpenAI's `x-ratelimit-*` headers ([`reset_text`] writes their reset durations).
//!
//! The limiters are reached through [`Limit`], implemented for a mutex around each limiter
//! type: the caller owns them (the Python binding shares them with the engine's Python path,
//! which serves the rules this module does not: audit and truncating budgets, and dollar
//! budgets on an unpriced model).

use std::sync::{Mutex, MutexGuard};

use super::{
    BudgetWindow, Check, ConcurrencyLimiter, Denial, Grant, Kind, LimiterError, ReservationId,
    TokenBucket,
};

/// A limiter one admission can take from, settle and release (each call takes the lock).
pub trait Limit {
    fn take(&self, key: &str, amount: u64, now: u64) -> Result<Check, LimiterError>;
    fn settle(&self, id: ReservationId, actual: u64, now: u64);
    fn release(&self, id: ReservationId, now: u64);
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every limiter change is a single assignment: a panic mid-call (which the limiters do not
    // do) would still leave a valid state, so keep going rather than fail forever.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Limit for Mutex<TokenBucket> {
    fn take(&self, key: &str, amount: u64, now: u64) -> Result<Check, LimiterError> {
        Ok(lock(self).reserve(key, amount, now))
    }
    fn settle(&self, id: ReservationId, actual: u64, now: u64) {
        lock(self).settle(id, actual, now);
    }
    fn release(&self, id: ReservationId, now: u64) {
        lock(self).release(id, now);
    }
}

impl Limit for Mutex<ConcurrencyLimiter> {
    fn take(&self, key: &str, _amount: u64, now: u64) -> Result<Check, LimiterError> {
        lock(self).acquire(key, now)
    }
    /// A lease ends the same way whatever the request used.
    fn settle(&self, id: ReservationId, _actual: u64, now: u64) {
        lock(self).release(id, now);
    }
    fn release(&self, id: ReservationId, now: u64) {
        lock(self).release(id, now);
    }
}

impl Limit for Mutex<BudgetWindow> {
    fn take(&self, key: &str, amount: u64, now: u64) -> Result<Check, LimiterError> {
        lock(self).reserve(key, amount, now)
    }
    fn settle(&self, id: ReservationId, actual: u64, now: u64) {
        lock(self).settle(id, actual, now);
    }
    fn release(&self, id: ReservationId, now: u64) {
        lock(self).release(id, now);
    }
}

/// What a token rate or budget counts of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Count {
    /// One per request (request rates, concurrency).
    One,
    Input,
    Output,
    Total,
}

/// One limit rule, as admission needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub kind: Kind,
    pub limit: u64,
    /// A dollar budget: amounts are micro-USD.
    pub usd: bool,
    pub count: Count,
    /// Weights of cached prompt tokens and reasoning output tokens (token rates and budgets).
    pub cached_weight: f64,
    pub reasoning_weight: f64,
    /// A dollar budget's price for an unpriced model at settlement, in micro-USD per input and
    /// output token; `None`: such usage is not charged.
    pub estimate_price: Option<(f64, f64)>,
}

/// What a request may use, known before it is sent.
#[derive(Debug, Clone, Copy, Default)]
pub struct Request {
    pub prompt_tokens: u64,
    /// The output bound: `max_tokens`, capped by the model's maximum, or a default.
    pub output_tokens: u64,
    /// The worst-case cost in micro-USD (used by dollar budgets only).
    pub usd: u64,
}

/// What a request used.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cached_tokens: u64,
    pub reasoning_tokens: u64,
    /// The cost in micro-USD; `None` when the served model is unpriced.
    pub cost: Option<u64>,
}

// Float arithmetic as the engine's Python path does it (the same IEEE operations), so that
// both paths reserve and charge the same integers.
impl Rule {
    /// What a request may use, at the highest weights: the amount reserved.
    pub fn estimate(&self, request: &Request) -> u64 {
        if self.usd {
            return request.usd;
        }
        let p = request.prompt_tokens as f64 * self.cached_weight.max(1.0);
        let o = request.output_tokens as f64 * self.reasoning_weight.max(1.0);
        match self.count {
            Count::One => 1,
            Count::Input => p.ceil() as u64,
            Count::Output => o.ceil() as u64,
            Count::Total => (p + o).ceil() as u64,
        }
    }

    /// What a request used, cached and reasoning tokens at their weights: the amount charged.
    pub fn actual(&self, usage: &Usage) -> u64 {
        match self.count {
            Count::One => return 1,
            _ if self.usd => {
                return usage.cost.unwrap_or_else(|| {
                    self.estimate_price.map_or(0, |(input, output)| {
                        (usage.prompt_tokens as f64 * input
                            + usage.completion_tokens as f64 * output)
                            .ceil() as u64
                    })
                });
            }
            _ => {}
        }
        let cached = usage.cached_tokens.min(usage.prompt_tokens);
        let reasoning = usage.reasoning_tokens.min(usage.completion_tokens);
        let p = (usage.prompt_tokens - cached) as f64 + cached as f64 * self.cached_weight;
        let o =
            (usage.completion_tokens - reasoning) as f64 + reasoning as f64 * self.reasoning_weight;
        match self.count {
            Count::Input => p.ceil() as u64,
            Count::Output => o.ceil() as u64,
            Count::One | Count::Total => (p + o).ceil() as u64,
        }
    }
}

/// One rule's part in one request's admission.
#[derive(Debug, Clone, Copy)]
pub struct Take<'a> {
    /// Index into the rules (and limits) given to [`admit`].
    pub rule: usize,
    /// The partition key, e.g. `key=alice`.
    pub partition: &'a str,
    /// False for a policy in shadow mode.
    pub enforce: bool,
}

/// What one take came to.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Granted {
        amount: u64,
        grant: Grant,
    },
    Denied {
        amount: u64,
        denial: Denial,
    },
    /// An enforcing take before it denied the request.
    NotEvaluated,
}

/// The tightest rate of a kind that admitted the request: `(limit, remaining, reset in ms)`.
pub type Tightest = Option<(u64, u64, u64)>;

/// One request's admission: an outcome per take, in order.
#[derive(Debug, Clone, PartialEq)]
pub struct Admission {
    pub outcomes: Vec<Outcome>,
    /// The take that denied the request (the first enforcing denial), if any.
    pub denied_by: Option<usize>,
    /// What the admitted request holds until it ends: `(rule, reservation or lease)`.
    pub held: Vec<(usize, ReservationId)>,
    /// The tightest enforcing request rate and token rate (none when denied).
    pub requests: Tightest,
    pub tokens: Tightest,
}

/// Apply a request's takes in order, all or none (see the module documentation). `limits[i]`
/// is the limiter of `rules[i]`. On a limiter error, what was taken is given back first.
pub fn admit<L: Limit>(
    limits: &[L],
    rules: &[Rule],
    takes: &[Take<'_>],
    request: &Request,
    now: u64,
) -> Result<Admission, LimiterError> {
    let mut outcomes = Vec::with_capacity(takes.len());
    let mut made: Vec<(usize, ReservationId)> = Vec::new();
    let mut denied_by = None;
    let (mut requests, mut tokens): (Tightest, Tightest) = (None, None);
    for (i, take) in takes.iter().enumerate() {
        if denied_by.is_some() {
            outcomes.push(Outcome::NotEvaluated);
            continue;
        }
        let rule = &rules[take.rule];
        let amount = rule.estimate(request);
        let check = match limits[take.rule].take(take.partition, amount, now) {
            Ok(check) => check,
            Err(err) => {
                release(limits, &made, now);
                return Err(err);
            }
        };
        match check {
            Check::Admitted(grant) => {
                if let Some(id) = grant.id {
                    made.push((take.rule, id));
                }
                let tightest = match rule.kind {
                    Kind::Rate => Some(&mut requests),
                    Kind::Tokens => Some(&mut tokens),
                    Kind::Concurrency | Kind::Budget => None,
                };
                if let (Some(tightest), true) = (tightest, take.enforce) {
                    if tightest.map_or(true, |(_, remaining, _)| grant.remaining < remaining) {
                        *tightest = Some((rule.limit, grant.remaining, grant.reset_after_ms));
                    }
                }
                outcomes.push(Outcome::Granted { amount, grant });
            }
            Check::Denied(denial) => {
                if take.enforce {
                    release(limits, &made, now);
                    made.clear();
                    denied_by = Some(i);
                }
                outcomes.push(Outcome::Denied { amount, denial });
            }
        }
    }
    if denied_by.is_some() {
        return Ok(Admission {
            outcomes,
            denied_by,
            held: Vec::new(),
            requests: None,
            tokens: None,
        });
    }
    made.retain(|&(rule, id)| {
        let rate = rules[rule].kind == Kind::Rate;
        if rate {
            limits[rule].settle(id, 1, now);
        }
        !rate
    });
    Ok(Admission {
        outcomes,
        denied_by,
        held: made,
        requests,
        tokens,
    })
}

/// The largest output bound reserved (2^40 tokens: past every limit, within a counter).
pub const OUTPUT_BOUND_CAP: u64 = 1 << 40;

/// The output tokens to reserve for a request: its `max_tokens` (`requested`, as sent), capped
/// by the model's maximum output (`model_max`, 0 or `None` when unknown); `default` (also
/// capped) when the request sets none. A bound at or below zero reserves nothing (the provider
/// refuses it); one past `OUTPUT_BOUND_CAP`, or not a number, reserves the cap (the limit
/// refuses it).
pub fn output_bound(requested: Option<f64>, model_max: Option<u64>, default: u64) -> u64 {
    let model_max = model_max.filter(|&max| max > 0);
    let Some(requested) = requested else {
        return model_max.map_or(default, |max| default.min(max));
    };
    let wanted = match model_max {
        Some(max) if requested > max as f64 => max as f64,
        _ => requested,
    };
    if wanted <= 0.0 {
        0
    } else if wanted < OUTPUT_BOUND_CAP as f64 {
        // Truncated toward zero, as Python's `int` does.
        wanted as u64
    } else {
        OUTPUT_BOUND_CAP
    }
}

/// The request ended with `usage`: settle what it held at what it used; leases end.
pub fn settle<L: Limit>(
    limits: &[L],
    rules: &[Rule],
    held: &[(usize, ReservationId)],
    usage: &Usage,
    now: u64,
) {
    for &(rule, id) in held {
        limits[rule].settle(id, rules[rule].actual(usage), now);
    }
}

/// The request ended without a model call: give back everything it held.
pub fn release<L: Limit>(limits: &[L], held: &[(usize, ReservationId)], now: u64) {
    for &(rule, id) in held {
        limits[rule].release(id, now);
    }
}

/// OpenAI's duration format for `x-ratelimit-reset-*`: `20ms`, `1s`, `1.5s`, `6m0s`,
/// `1h2m3.25s`.
pub fn reset_text(ms: u64) -> String {
    // Written piece by piece: `format!` made this a tenth of a request's native admission.
    let mut out = String::with_capacity(16);
    let mut digits = itoa::Buffer::new();
    if ms < 1000 {
        out.push_str(digits.format(ms));
        out.push_str("ms");
        return out;
    }
    let (hours, minutes) = (ms / 3_600_000, ms % 3_600_000 / 60_000);
    let (whole, millis) = (ms % 60_000 / 1000, ms % 1000);
    if hours > 0 {
        out.push_str(digits.format(hours));
        out.push('h');
    }
    if hours > 0 || minutes > 0 {
        out.push_str(digits.format(minutes));
        out.push('m');
    }
    out.push_str(digits.format(whole));
    if millis > 0 {
        // Three digits, trailing zeros dropped: 250 -> `.25`, 5 -> `.005`.
        let three = [millis / 100, millis / 10 % 10, millis % 10];
        let kept = if three[2] != 0 {
            3
        } else if three[1] != 0 {
            2
        } else {
            1
        };
        out.push('.');
        for d in &three[..kept] {
            out.push(char::from(b'0' + *d as u8));
        }
    }
    out.push('s');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limiter::{Period, Rate, Window};

    /// The limits of one test, behind one enum so rules of every kind share a slice.
    enum AnyLimit {
        Bucket(Mutex<TokenBucket>),
        Leases(Mutex<ConcurrencyLimiter>),
        Budget(Mutex<BudgetWindow>),
    }

    impl Limit for AnyLimit {
        fn take(&self, key: &str, amount: u64, now: u64) -> Result<Check, LimiterError> {
            match self {
                AnyLimit::Bucket(l) => l.take(key, amount, now),
                AnyLimit::Leases(l) => l.take(key, amount, now),
                AnyLimit::Budget(l) => l.take(key, amount, now),
            }
        }
        fn settle(&self, id: ReservationId, actual: u64, now: u64) {
            match self {
                AnyLimit::Bucket(l) => l.settle(id, actual, now),
                AnyLimit::Leases(l) => l.settle(id, actual, now),
                AnyLimit::Budget(l) => l.settle(id, actual, now),
            }
        }
        fn release(&self, id: ReservationId, now: u64) {
            match self {
                AnyLimit::Bucket(l) => l.release(id, now),
                AnyLimit::Leases(l) => l.release(id, now),
                AnyLimit::Budget(l) => l.release(id, now),
            }
        }
    }

    impl AnyLimit {
        fn used(&self, key: &str, now: u64) -> u64 {
            match self {
                AnyLimit::Bucket(l) => lock(l).used(key, now),
                AnyLimit::Leases(l) => lock(l).used(key, now),
                AnyLimit::Budget(l) => lock(l).used(key, now),
            }
        }
    }

    fn rule(kind: Kind, limit: u64, count: Count) -> Rule {
        Rule {
            kind,
            limit,
            usd: false,
            count,
            cached_weight: 1.0,
            reasoning_weight: 1.0,
            estimate_price: None,
        }
    }

    fn bucket(limit: u64) -> AnyLimit {
        let rate = Rate::new(limit, 60_000, limit).unwrap();
        AnyLimit::Bucket(Mutex::new(TokenBucket::new(rate, 600_000, 100).unwrap()))
    }

    /// A request rate of 2, a token rate of 100 and one lease, all per `key=a`.
    fn setup() -> (Vec<AnyLimit>, Vec<Rule>) {
        let limits = vec![
            bucket(2),
            bucket(100),
            AnyLimit::Leases(Mutex::new(
                ConcurrencyLimiter::new(1, 600_000, 100).unwrap(),
            )),
            AnyLimit::Budget(Mutex::new(
                BudgetWindow::new(
                    1_000,
                    Window::Calendar {
                        period: Period::Day,
                        utc_offset_seconds: 0,
                    },
                    600_000,
                    100,
                )
                .unwrap(),
            )),
        ];
        let rules = vec![
            rule(Kind::Rate, 2, Count::One),
            rule(Kind::Tokens, 100, Count::Total),
            rule(Kind::Concurrency, 1, Count::One),
            rule(Kind::Budget, 1_000, Count::Input),
        ];
        (limits, rules)
    }

    fn takes(enforce: bool) -> Vec<Take<'static>> {
        (0..4)
            .map(|rule| Take {
                rule,
                partition: "key=a",
                enforce,
            })
            .collect()
    }

    const REQUEST: Request = Request {
        prompt_tokens: 10,
        output_tokens: 20,
        usd: 0,
    };

    #[test]
    fn an_admitted_request_holds_all_but_its_request_rate() {
        let (limits, rules) = setup();
        let a = admit(&limits, &rules, &takes(true), &REQUEST, 1_000).unwrap();
        assert_eq!(a.denied_by, None);
        let amounts: Vec<u64> = a
            .outcomes
            .iter()
            .map(|o| match o {
                Outcome::Granted { amount, .. } => *amount,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(amounts, [1, 30, 1, 10]);
        assert_eq!(a.held.iter().map(|h| h.0).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(a.requests.map(|t| (t.0, t.1)), Some((2, 1)));
        assert_eq!(a.tokens.map(|t| (t.0, t.1)), Some((100, 70)));
        settle(
            &limits,
            &rules,
            &a.held,
            &Usage {
                prompt_tokens: 10,
                completion_tokens: 5,
                ..Usage::default()
            },
            2_000,
        );
        // Settled at 15 tokens and 10 input: the next request sees 85 and 990 left.
        let b = admit(&limits, &rules, &takes(true), &REQUEST, 2_000).unwrap();
        assert_eq!(b.tokens.map(|t| t.1), Some(100 - 15 - 30));
    }

    #[test]
    fn an_enforcing_denial_gives_back_what_was_taken_and_skips_the_rest() {
        let (limits, rules) = setup();
        let first = admit(&limits, &rules, &takes(true), &REQUEST, 1_000).unwrap();
        // The lease is held: the second request is denied at the concurrency limit.
        let second = admit(&limits, &rules, &takes(true), &REQUEST, 1_000).unwrap();
        assert_eq!(second.denied_by, Some(2));
        assert!(matches!(second.outcomes[3], Outcome::NotEvaluated));
        assert!(second.held.is_empty() && second.tokens.is_none());
        // Its token reservation was given back, and its request did not count.
        release(&limits, &first.held, 1_000);
        let third = admit(&limits, &rules, &takes(true), &REQUEST, 1_000).unwrap();
        assert_eq!(third.tokens.map(|t| t.1), Some(70));
        assert_eq!(third.requests.map(|t| t.1), Some(0));
    }

    #[test]
    fn a_shadow_denial_is_reported_and_nothing_is_taken_for_it() {
        let (limits, rules) = setup();
        let _held = admit(&limits, &rules, &takes(false), &REQUEST, 1_000).unwrap();
        let shadow = admit(&limits, &rules, &takes(false), &REQUEST, 1_000).unwrap();
        assert_eq!(shadow.denied_by, None);
        assert!(matches!(shadow.outcomes[2], Outcome::Denied { .. }));
        // Shadow rates are not headers; what fits is held (token rate and budget).
        assert!(shadow.requests.is_none() && shadow.tokens.is_none());
        assert_eq!(shadow.held.iter().map(|h| h.0).collect::<Vec<_>>(), [1, 3]);
    }

    #[test]
    fn amounts_weigh_cached_and_reasoning_tokens() {
        let weighted = Rule {
            cached_weight: 0.1,
            reasoning_weight: 2.0,
            ..rule(Kind::Tokens, 100, Count::Total)
        };
        // Reserved at the highest weights: prompt at 1 (0.1 < 1), output at 2.
        assert_eq!(weighted.estimate(&REQUEST), 10 + 40);
        let usage = Usage {
            prompt_tokens: 100,
            cached_tokens: 50,
            completion_tokens: 10,
            reasoning_tokens: 4,
            cost: None,
        };
        assert_eq!(weighted.actual(&usage), 50 + 5 + 6 + 8);
        let dollars = Rule {
            usd: true,
            estimate_price: Some((1.0, 3.0)),
            ..rule(Kind::Budget, 1_000_000, Count::Total)
        };
        assert_eq!(dollars.actual(&usage), 100 + 30);
        assert_eq!(
            dollars.actual(&Usage {
                cost: Some(7),
                ..usage
            }),
            7
        );
    }

    proptest::proptest! {
        /// A denied request consumes nothing anywhere; an admitted one holds exactly its
        /// takes that were granted and are not request rates.
        #[test]
        fn admission_is_all_or_none(
            requests in proptest::collection::vec(
                (
                    proptest::collection::vec((0usize..4, proptest::bool::weighted(0.8)), 1..6),
                    0u64..60,
                    0u64..60,
                    proptest::bool::ANY,
                ),
                1..12,
            ),
        ) {
            let (limits, rules) = setup();
            let mut now = 1_000;
            let mut outstanding = Vec::new();
            for (picked, prompt, output, end_one) in requests {
                let takes: Vec<Take<'_>> = picked
                    .iter()
                    .map(|&(rule, enforce)| Take { rule, partition: "key=a", enforce })
                    .collect();
                let before: Vec<u64> = limits.iter().map(|l| l.used("key=a", now)).collect();
                let request = Request { prompt_tokens: prompt, output_tokens: output, usd: 0 };
                let a = admit(&limits, &rules, &takes, &request, now).unwrap();
                proptest::prop_assert_eq!(a.outcomes.len(), takes.len());
                if let Some(at) = a.denied_by {
                    proptest::prop_assert!(takes[at].enforce);
                    proptest::prop_assert!(a.held.is_empty());
                    let after: Vec<u64> = limits.iter().map(|l| l.used("key=a", now)).collect();
                    proptest::prop_assert_eq!(after, before);
                } else {
                    let granted: Vec<usize> = takes
                        .iter()
                        .zip(&a.outcomes)
                        .filter(|(t, o)| {
                            matches!(o, Outcome::Granted { .. }) && rules[t.rule].kind != Kind::Rate
                        })
                        .map(|(t, _)| t.rule)
                        .collect();
                    let held: Vec<usize> = a.held.iter().map(|h| h.0).collect();
                    proptest::prop_assert_eq!(held, granted);
                    outstanding.push(a.held);
                }
                if end_one && !outstanding.is_empty() {
                    let held = outstanding.remove(0);
                    settle(&limits, &rules, &held, &Usage { prompt_tokens: prompt, ..Usage::default() }, now);
                }
                now += 250;
            }
        }
    }

    #[test]
    fn reset_durations_read_as_openai_writes_them() {
        for (ms, text) in [
            (0, "0ms"),
            (20, "20ms"),
            (1_000, "1s"),
            (1_500, "1.5s"),
            (59_999, "59.999s"),
            (360_000, "6m0s"),
            (3_723_250, "1h2m3.25s"),
        ] {
            assert_eq!(reset_text(ms), text);
        }
    }

    /// The duration as the `format!`-based writer of before wrote it.
    fn reset_text_reference(ms: u64) -> String {
        if ms < 1000 {
            return format!("{ms}ms");
        }
        let (hours, minutes) = (ms / 3_600_000, ms % 3_600_000 / 60_000);
        let (whole, millis) = (ms % 60_000 / 1000, ms % 1000);
        let mut secs = whole.to_string();
        if millis > 0 {
            secs.push('.');
            secs.push_str(format!("{millis:03}").trim_end_matches('0'));
        }
        if hours > 0 {
            format!("{hours}h{minutes}m{secs}s")
        } else if minutes > 0 {
            format!("{minutes}m{secs}s")
        } else {
            format!("{secs}s")
        }
    }

    proptest::proptest! {
        #[test]
        fn reset_text_writes_what_format_wrote(ms in proptest::prop_oneof![0u64..100_000_000, proptest::num::u64::ANY]) {
            proptest::prop_assert_eq!(reset_text(ms), reset_text_reference(ms));
        }
    }

    #[test]
    fn the_output_bound_is_max_tokens_within_the_model_maximum() {
        assert_eq!(output_bound(Some(500.0), Some(4_000), 1_000), 500);
        assert_eq!(output_bound(Some(9_000.0), Some(4_000), 1_000), 4_000);
        assert_eq!(output_bound(Some(9_000.0), None, 1_000), 9_000);
        assert_eq!(output_bound(Some(9_000.0), Some(0), 1_000), 9_000); // 0: unknown
        assert_eq!(output_bound(Some(10.9), None, 1_000), 10); // truncated, as `int` does
    }

    #[test]
    fn without_max_tokens_the_default_is_reserved_within_the_model_maximum() {
        assert_eq!(output_bound(None, None, 1_000), 1_000);
        assert_eq!(output_bound(None, Some(400), 1_000), 400);
        assert_eq!(output_bound(None, Some(0), 1_000), 1_000);
    }

    #[test]
    fn out_of_range_bounds_reserve_nothing_or_the_cap() {
        assert_eq!(output_bound(Some(-5.0), None, 1_000), 0);
        assert_eq!(output_bound(Some(0.0), Some(4_000), 1_000), 0);
        assert_eq!(output_bound(Some(1e300), None, 1_000), OUTPUT_BOUND_CAP);
        assert_eq!(
            output_bound(Some(f64::INFINITY), None, 1_000),
            OUTPUT_BOUND_CAP
        );
        assert_eq!(output_bound(Some(f64::NAN), None, 1_000), OUTPUT_BOUND_CAP);
    }
}
