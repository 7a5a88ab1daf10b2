//! `Admitter`: one request's limit rules admitted in one call, for the memory backend.
//!
//! `tollway.policy.engine` builds one per configuration, over the native limiters the memory
//! backend holds (`TokenBucket`, `ConcurrencyLimiter`, `BudgetWindow`, shared with the Python
//! path, so both see the same counters). Per request, `admit` takes the matched policies'
//! indices and the request's attributes and amounts, and does what the engine's Python path does
//! for the same rules (`PolicyEngine._plan`, `MemoryBackend.admit`, `PolicyEngine._limits`):
//! partitions, amounts, the takes in order (all or none), the verdicts with their numbers, the
//! tightest enforcing request and token limits for the headers, and the holds to settle.
//! It serves the rule kinds whose every answer comes from one limiter call: request rates,
//! token rates, concurrency, and token or dollar budgets that block (a dollar budget only
//! with a priced model). Audit and truncating budgets and unpriced models take the Python
//! path, as does every other backend. Tests run the same requests both ways
//! (`tests/test_policy_native.py`).

use std::sync::Mutex;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyFloat, PyList, PyString, PyTuple};
use pyo3::{intern, IntoPyObjectExt};
use tollway_core::limiter::{Check, ReservationId};

use crate::errors::limiter_error;
use crate::limiter::{
    answer, lock, now_ms, seconds, BudgetWindow, ConcurrencyLimiter, TokenBucket,
};

enum Limiter {
    Bucket(Py<TokenBucket>),
    Leases(Py<ConcurrencyLimiter>),
    Budget(Py<BudgetWindow>),
}

impl Limiter {
    fn take(&self, key: &str, amount: u64, now: u64) -> PyResult<Check> {
        match self {
            Limiter::Bucket(b) => Ok(lock(&b.get().inner).reserve(key, amount, now)),
            Limiter::Leases(l) => lock(&l.get().inner)
                .acquire(key, now)
                .map_err(limiter_error),
            Limiter::Budget(w) => lock(&w.get().inner)
                .reserve(key, amount, now)
                .map_err(limiter_error),
        }
    }

    fn settle(&self, id: u64, actual: u64, now: u64) {
        let id = ReservationId(id);
        match self {
            Limiter::Bucket(b) => lock(&b.get().inner).settle(id, actual, now),
            Limiter::Leases(l) => lock(&l.get().inner).release(id, now),
            Limiter::Budget(w) => lock(&w.get().inner).settle(id, actual, now),
        };
    }

    fn release(&self, id: u64, now: u64) {
        let id = ReservationId(id);
        match self {
            Limiter::Bucket(b) => lock(&b.get().inner).release(id, now),
            Limiter::Leases(l) => lock(&l.get().inner).release(id, now),
            Limiter::Budget(w) => lock(&w.get().inner).release(id, now),
        };
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Rate,
    Tokens,
    Concurrency,
    Budget,
}

/// What a rule counts of a request (`Amounts` in the engine): one per request, or tokens.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Count {
    One,
    Input,
    Output,
    Total,
}

struct Rule {
    limiter: Limiter,
    kind: Kind,
    limit: u64,
    /// A dollar budget: amounts are micro-USD.
    usd: bool,
    count: Count,
    cached_weight: f64,
    reasoning_weight: f64,
    /// A dollar budget's price for an unpriced model at settlement (`None`: not counted).
    estimate_price: Option<(f64, f64)>,
    // What the verdicts show.
    kind_name: Py<PyString>,
    window: Py<PyString>,
    unit: Py<PyString>,
    limit_display: Py<PyFloat>,
    burst_note: Option<Py<PyString>>,
}

impl Rule {
    /// The worst case a request may use (`Amounts.estimate`; the dollar estimate is given).
    fn estimate(&self, prompt: u64, output: u64, usd: u64) -> u64 {
        if self.usd {
            return usd;
        }
        let p = prompt as f64 * self.cached_weight.max(1.0);
        let o = output as f64 * self.reasoning_weight.max(1.0);
        match self.count {
            Count::One => 1,
            Count::Input => p.ceil() as u64,
            Count::Output => o.ceil() as u64,
            Count::Total => (p + o).ceil() as u64,
        }
    }

    /// What a request used (`Amounts.actual`), cached and reasoning tokens weighted.
    fn actual(&self, usage: &Usage) -> u64 {
        let cached = usage.cached.min(usage.prompt);
        let reasoning = usage.reasoning.min(usage.completion);
        let p = (usage.prompt - cached) as f64 + cached as f64 * self.cached_weight;
        let o = (usage.completion - reasoning) as f64 + reasoning as f64 * self.reasoning_weight;
        match self.count {
            Count::Input => p.ceil() as u64,
            Count::Output => o.ceil() as u64,
            Count::One | Count::Total => (p + o).ceil() as u64,
        }
    }

    /// An amount in the unit people read: USD for dollar budgets.
    fn display(&self, amount: u64) -> f64 {
        if self.usd {
            amount as f64 / 1_000_000.0
        } else {
            amount as f64
        }
    }
}

struct Usage {
    prompt: u64,
    completion: u64,
    cached: u64,
    reasoning: u64,
}

struct Policy {
    name: Py<PyString>,
    mode: Py<PyString>,
    enforce: bool,
    /// The partition attributes, as indices into `admit`'s `attrs`.
    per: Vec<(Py<PyString>, usize)>,
    /// Policies with the same partition attributes share an id: their partition is made once
    /// per request.
    per_id: usize,
    rules: Vec<usize>,
}

/// A limit rule as the engine describes it (a dict).
#[derive(FromPyObject)]
#[pyo3(from_item_all)]
struct RuleSpec<'py> {
    limiter: Bound<'py, PyAny>,
    kind: String,
    limit: u64,
    usd: bool,
    count: Option<String>,
    cached_weight: f64,
    reasoning_weight: f64,
    estimate_price: Option<(f64, f64)>,
    window: Bound<'py, PyString>,
    unit: Bound<'py, PyString>,
    limit_display: f64,
    burst_note: Option<Bound<'py, PyString>>,
}

/// A policy as the engine describes it (a dict): its limit rules by index into `rules`.
#[derive(FromPyObject)]
#[pyo3(from_item_all)]
struct PolicySpec<'py> {
    name: Bound<'py, PyString>,
    mode: Bound<'py, PyString>,
    enforce: bool,
    per: Vec<(Bound<'py, PyString>, usize)>,
    rules: Vec<usize>,
}

fn rule_from(spec: RuleSpec<'_>) -> PyResult<Rule> {
    let limiter = match spec.kind.as_str() {
        "rate" | "tokens" => Limiter::Bucket(spec.limiter.extract()?),
        "concurrency" => Limiter::Leases(spec.limiter.extract()?),
        "budget" => Limiter::Budget(spec.limiter.extract()?),
        other => {
            return Err(PyValueError::new_err(format!(
                "unknown limit kind `{other}`"
            )))
        }
    };
    let kind = match spec.kind.as_str() {
        "rate" => Kind::Rate,
        "tokens" => Kind::Tokens,
        "concurrency" => Kind::Concurrency,
        _ => Kind::Budget,
    };
    let count = match spec.count.as_deref() {
        None => Count::One,
        Some("input") => Count::Input,
        Some("output") => Count::Output,
        Some("total") => Count::Total,
        Some(other) => return Err(PyValueError::new_err(format!("unknown count `{other}`"))),
    };
    let py = spec.window.py();
    Ok(Rule {
        limiter,
        kind,
        limit: spec.limit,
        usd: spec.usd,
        count,
        cached_weight: spec.cached_weight,
        reasoning_weight: spec.reasoning_weight,
        estimate_price: spec.estimate_price,
        kind_name: PyString::new(py, &spec.kind).unbind(),
        window: spec.window.unbind(),
        unit: spec.unit.unbind(),
        limit_display: PyFloat::new(py, spec.limit_display).unbind(),
        burst_note: spec.burst_note.map(Bound::unbind),
    })
}

/// The limit rules of every policy of one configuration, over the memory backend's limiters.
#[pyclass(frozen, module = "tollway._native")]
pub struct Admitter {
    rules: Vec<Rule>,
    policies: Vec<Policy>,
    /// Distinct partition attribute lists (`Policy::per_id`).
    partitionings: usize,
    /// `tollway.usage.record.PolicyVerdict`, called for each verdict.
    verdict: Py<PyAny>,
}

fn opt_float<'py>(py: Python<'py>, value: Option<f64>) -> Bound<'py, PyAny> {
    match value {
        Some(v) => PyFloat::new(py, v).into_any(),
        None => py.None().into_bound(py),
    }
}

/// A verdict's numbers (those a verdict does not have are `None`).
#[derive(Default)]
struct Numbers {
    used: Option<f64>,
    requested: Option<f64>,
    remaining: Option<f64>,
    retry_after: Option<f64>,
    resets_at: Option<f64>,
}

#[pymethods]
impl Admitter {
    #[new]
    fn new(
        rules: Vec<RuleSpec<'_>>,
        policies: Vec<PolicySpec<'_>>,
        verdict: Py<PyAny>,
    ) -> PyResult<Self> {
        let rules = rules
            .into_iter()
            .map(rule_from)
            .collect::<PyResult<Vec<_>>>()?;
        let mut partitionings: Vec<Vec<usize>> = Vec::new();
        let policies = policies
            .into_iter()
            .map(|p| {
                if let Some(&bad) = p.rules.iter().find(|&&r| r >= rules.len()) {
                    return Err(PyValueError::new_err(format!("no rule {bad}")));
                }
                let indices: Vec<usize> = p.per.iter().map(|(_, i)| *i).collect();
                let per_id = partitionings
                    .iter()
                    .position(|known| *known == indices)
                    .unwrap_or_else(|| {
                        partitionings.push(indices);
                        partitionings.len() - 1
                    });
                Ok(Policy {
                    name: p.name.unbind(),
                    mode: p.mode.unbind(),
                    enforce: p.enforce,
                    per: p.per.into_iter().map(|(n, i)| (n.unbind(), i)).collect(),
                    per_id,
                    rules: p.rules,
                })
            })
            .collect::<PyResult<Vec<_>>>()?;
        Ok(Self {
            rules,
            policies,
            partitionings: partitionings.len(),
            verdict,
        })
    }

    /// Admit one request's limit rules: those of the policies `matched` (indices, in order).
    /// `attrs` holds the request's partition attributes (the engine's `PARTITION_ATTRIBUTES`
    /// order); `prompt` and `output` the tokens to reserve; `usd` the dollar estimate in
    /// micro-USD (used only by dollar budgets); `now` in epoch seconds.
    ///
    /// Returns `(verdicts, holds, denial, headers, shadow)`: the verdicts in order; the holds
    /// to settle (`None` when denied or nothing is held); the first enforcing denial as
    /// `(policy, rule, partition, Denial)`; OpenAI's `x-ratelimit-*` headers for the tightest
    /// enforcing request and token limits (none when denied); and whether a shadow policy
    /// would have denied.
    #[allow(clippy::too_many_arguments, clippy::type_complexity)]
    #[pyo3(signature = (matched, attrs, prompt, output, usd, now))]
    fn admit<'py>(
        slf: &Bound<'py, Self>,
        matched: Vec<usize>,
        attrs: Vec<Option<Bound<'py, PyString>>>,
        prompt: u64,
        output: u64,
        usd: u64,
        now: f64,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let py = slf.py();
        let this = slf.get();
        let now_ms = now_ms(Some(now))?;
        let verdicts = PyList::empty(py);
        let mut made: Vec<(usize, u64)> = Vec::new();
        let mut denial: Option<Bound<'py, PyAny>> = None;
        let mut shadow = false;
        let mut partitions: Vec<Option<Bound<'py, PyString>>> = vec![None; this.partitionings];
        // The tightest enforcing request and token limits: (limit, remaining, reset in ms).
        let mut tightest: [Option<(u64, u64, u64)>; 2] = [None, None];
        for &p in &matched {
            let Some(policy) = this.policies.get(p) else {
                this.give_back(&made, now_ms);
                return Err(PyValueError::new_err(format!("no policy {p}")));
            };
            let partition = match &partitions[policy.per_id] {
                Some(known) => known.clone(),
                None => {
                    let made = partition(py, policy, &attrs)?;
                    partitions[policy.per_id] = Some(made.clone());
                    made
                }
            };
            for &r in &policy.rules {
                let rule = &this.rules[r];
                if denial.is_some() {
                    let detail = intern!(py, "an earlier policy denied the request");
                    verdicts.append(this.verdict(
                        py,
                        policy,
                        rule,
                        &partition,
                        intern!(py, "not_evaluated"),
                        Numbers::default(),
                        Some(detail),
                    )?)?;
                    continue;
                }
                let amount = rule.estimate(prompt, output, usd);
                let check = match rule.limiter.take(partition.to_str()?, amount, now_ms) {
                    Ok(check) => check,
                    Err(err) => {
                        this.give_back(&made, now_ms);
                        return Err(err);
                    }
                };
                match check {
                    Check::Admitted(grant) => {
                        if let Some(id) = grant.id {
                            made.push((r, id.0));
                        }
                        let reset_after = seconds(grant.reset_after_ms);
                        let numbers = Numbers {
                            requested: Some(rule.display(amount)),
                            remaining: Some(rule.display(grant.remaining)),
                            resets_at: Some(now + reset_after),
                            ..Numbers::default()
                        };
                        verdicts.append(this.verdict(
                            py,
                            policy,
                            rule,
                            &partition,
                            intern!(py, "allow"),
                            numbers,
                            None,
                        )?)?;
                        let slot = match rule.kind {
                            Kind::Rate => Some(0),
                            Kind::Tokens => Some(1),
                            Kind::Concurrency | Kind::Budget => None,
                        };
                        if let (Some(slot), true) = (slot, policy.enforce) {
                            if tightest[slot]
                                .map_or(true, |(_, remaining, _)| grant.remaining < remaining)
                            {
                                tightest[slot] =
                                    Some((rule.limit, grant.remaining, grant.reset_after_ms));
                            }
                        }
                    }
                    Check::Denied(denied) => {
                        let retry_after = denied.retry_after_ms.map(seconds);
                        let numbers = Numbers {
                            used: Some(rule.display(denied.used)),
                            requested: Some(rule.display(denied.requested)),
                            retry_after,
                            resets_at: retry_after.map(|s| now + s),
                            ..Numbers::default()
                        };
                        let name = if policy.enforce {
                            intern!(py, "deny")
                        } else {
                            intern!(py, "would_deny")
                        };
                        verdicts.append(
                            this.verdict(py, policy, rule, &partition, name, numbers, None)?,
                        )?;
                        if policy.enforce {
                            this.give_back(&made, now_ms);
                            made.clear();
                            let answer = answer(py, Check::Denied(denied))?;
                            denial = Some((p, r, partition.clone(), answer).into_bound_py_any(py)?);
                        } else {
                            shadow = true;
                        }
                    }
                }
            }
        }
        let headers = PyList::empty(py);
        if denial.is_none() {
            for (kind, tight) in [("requests", tightest[0]), ("tokens", tightest[1])] {
                if let Some((limit, remaining, reset_ms)) = tight {
                    headers.append((format!("x-ratelimit-limit-{kind}"), limit.to_string()))?;
                    headers.append((
                        format!("x-ratelimit-remaining-{kind}"),
                        remaining.to_string(),
                    ))?;
                    headers.append((format!("x-ratelimit-reset-{kind}"), reset_text(reset_ms)))?;
                }
            }
        }
        // Admitted: request rates are final now (a request is a request, whatever it uses);
        // the rest is held until the request ends.
        let mut held = Vec::with_capacity(made.len());
        for (r, id) in made {
            let rule = &this.rules[r];
            if rule.kind == Kind::Rate {
                rule.limiter.settle(id, 1, now_ms);
            } else {
                held.push((r, id));
            }
        }
        let holds = if held.is_empty() {
            py.None().into_bound(py)
        } else {
            Bound::new(
                py,
                Holds {
                    admitter: slf.clone().unbind(),
                    held: Mutex::new(held),
                },
            )?
            .into_any()
        };
        (verdicts, holds, denial, headers, shadow).into_pyobject(py)
    }

    fn __len__(&self) -> usize {
        self.rules.len()
    }
}

impl Admitter {
    /// Give back what a refused request took.
    fn give_back(&self, made: &[(usize, u64)], now_ms: u64) {
        for &(r, id) in made {
            self.rules[r].limiter.release(id, now_ms);
        }
    }

    /// `PolicyVerdict(policy, kind, verdict, mode, partition, limit, window, used, requested,
    /// remaining, retry_after_s, resets_at, unit, detail)`, as the engine's `_verdict` makes it.
    #[allow(clippy::too_many_arguments)]
    fn verdict<'py>(
        &self,
        py: Python<'py>,
        policy: &Policy,
        rule: &Rule,
        partition: &Bound<'py, PyString>,
        verdict: &Bound<'py, PyString>,
        n: Numbers,
        detail: Option<&Bound<'py, PyString>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let detail = match (detail, &rule.burst_note) {
            (Some(d), _) => d.clone().into_any(),
            (None, Some(note)) => note.bind(py).clone().into_any(),
            (None, None) => py.None().into_bound(py),
        };
        let args = PyTuple::new(
            py,
            [
                policy.name.bind(py).clone().into_any(),
                rule.kind_name.bind(py).clone().into_any(),
                verdict.clone().into_any(),
                policy.mode.bind(py).clone().into_any(),
                partition.clone().into_any(),
                rule.limit_display.bind(py).clone().into_any(),
                rule.window.bind(py).clone().into_any(),
                opt_float(py, n.used),
                opt_float(py, n.requested),
                opt_float(py, n.remaining),
                opt_float(py, n.retry_after),
                opt_float(py, n.resets_at),
                rule.unit.bind(py).clone().into_any(),
                detail,
            ],
        )?;
        self.verdict.bind(py).call1(args)
    }
}

/// OpenAI's duration format for `x-ratelimit-reset-*` (as the engine's `_reset_text`):
/// `20ms`, `1s`, `1.5s`, `6m0s`, `1h2m3.25s`.
fn reset_text(ms: u64) -> String {
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let (hours, minutes) = (ms / 3_600_000, ms % 3_600_000 / 60_000);
    let (whole, millis) = (ms % 60_000 / 1000, ms % 1000);
    let mut secs = whole.to_string();
    if millis > 0 {
        let fraction = format!("{millis:03}");
        secs.push('.');
        secs.push_str(fraction.trim_end_matches('0'));
    }
    if hours > 0 {
        format!("{hours}h{minutes}m{secs}s")
    } else if minutes > 0 {
        format!("{minutes}m{secs}s")
    } else {
        format!("{secs}s")
    }
}

/// The partition key of a policy for a request: `*`, `key=alice`, `key=alice,model=gpt-4o`
/// (an absent or empty attribute is `-`), as `CompiledPolicy.partition` writes it.
fn partition<'py>(
    py: Python<'py>,
    policy: &Policy,
    attrs: &[Option<Bound<'py, PyString>>],
) -> PyResult<Bound<'py, PyString>> {
    if policy.per.is_empty() {
        return Ok(intern!(py, "*").clone());
    }
    let mut key = String::new();
    for (i, (name, index)) in policy.per.iter().enumerate() {
        if i > 0 {
            key.push(',');
        }
        key.push_str(name.bind(py).to_str()?);
        key.push('=');
        match attrs.get(*index).and_then(Option::as_ref) {
            Some(value) if !value.to_str()?.is_empty() => key.push_str(value.to_str()?),
            _ => key.push('-'),
        }
    }
    Ok(PyString::new(py, &key))
}

/// What an admitted request holds until it ends: reservations and leases, by rule.
#[pyclass(frozen, module = "tollway._native")]
pub struct Holds {
    admitter: Py<Admitter>,
    held: Mutex<Vec<(usize, u64)>>,
}

#[pymethods]
impl Holds {
    /// The request ended with this usage: settle every reservation at what the request used
    /// (`cost` in micro-USD for dollar budgets; `None` when the served model is unpriced, then
    /// each budget's `estimate_price`, or nothing with `unpriced = "allow"`), end every lease.
    /// Settling twice does nothing the second time.
    #[pyo3(signature = (prompt, completion, cached, reasoning, cost, now))]
    fn settle(
        &self,
        prompt: u64,
        completion: u64,
        cached: u64,
        reasoning: u64,
        cost: Option<u64>,
        now: f64,
    ) -> PyResult<()> {
        let now = now_ms(Some(now))?;
        let usage = Usage {
            prompt,
            completion,
            cached,
            reasoning,
        };
        let held = std::mem::take(&mut *lock(&self.held));
        let admitter = self.admitter.get();
        for (r, id) in held {
            let rule = &admitter.rules[r];
            let actual = if rule.kind == Kind::Concurrency {
                0
            } else if rule.usd {
                cost.unwrap_or_else(|| {
                    rule.estimate_price.map_or(0, |(input, output)| {
                        (prompt as f64 * input + completion as f64 * output).ceil() as u64
                    })
                })
            } else {
                rule.actual(&usage)
            };
            rule.limiter.settle(id, actual, now);
        }
        Ok(())
    }

    /// The request ended without a model call: give back everything it holds.
    fn release(&self, now: f64) -> PyResult<()> {
        let now = now_ms(Some(now))?;
        let held = std::mem::take(&mut *lock(&self.held));
        let admitter = self.admitter.get();
        for (r, id) in held {
            admitter.rules[r].limiter.release(id, now);
        }
        Ok(())
    }

    fn __len__(&self) -> usize {
        lock(&self.held).len()
    }
}
