//! `Admitter` and `Holds` for Python: conversions around `tollway_core::limiter::admission`.
//!
//! `tollway.policy.engine` builds one `Admitter` per configuration over the native limiters of
//! the memory backend (shared with the engine's Python path, so both see the same counters).
//! Per request, `admit` takes the matched policies' indices and the request's attributes and
//! amounts as primitives, makes each policy's partition key, and returns the verdicts (made by
//! the `PolicyVerdict` class the engine gives) with the headers and the holds.

use std::collections::HashMap;
use std::sync::Mutex;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyFloat, PyList, PyString, PyTuple};
use pyo3::{intern, IntoPyObjectExt};
use tollway_core::limiter::admission::{self as core, Count, Limit, Outcome, Request, Take, Usage};
use tollway_core::limiter::{Check, Kind, LimiterError, ReservationId};

use crate::errors::limiter_error;
use crate::limiter::{
    answer, lock, now_ms, seconds, BudgetWindow, ConcurrencyLimiter, TokenBucket,
};

/// A rule's limiter, as the memory backend holds it.
enum Limiter {
    Bucket(Py<TokenBucket>),
    Leases(Py<ConcurrencyLimiter>),
    Budget(Py<BudgetWindow>),
}

impl Limit for Limiter {
    fn take(&self, key: &str, amount: u64, now: u64) -> Result<Check, LimiterError> {
        match self {
            Limiter::Bucket(b) => b.get().inner.take(key, amount, now),
            Limiter::Leases(l) => l.get().inner.take(key, amount, now),
            Limiter::Budget(w) => w.get().inner.take(key, amount, now),
        }
    }
    fn settle(&self, id: ReservationId, actual: u64, now: u64) {
        match self {
            Limiter::Bucket(b) => b.get().inner.settle(id, actual, now),
            Limiter::Leases(l) => l.get().inner.settle(id, actual, now),
            Limiter::Budget(w) => w.get().inner.settle(id, actual, now),
        }
    }
    fn release(&self, id: ReservationId, now: u64) {
        match self {
            Limiter::Bucket(b) => b.get().inner.release(id, now),
            Limiter::Leases(l) => l.get().inner.release(id, now),
            Limiter::Budget(w) => w.get().inner.release(id, now),
        }
    }
}

/// What a verdict shows of a rule (made once).
struct Shown {
    kind: Py<PyString>,
    window: Py<PyString>,
    unit: Py<PyString>,
    limit: Py<PyFloat>,
    burst_note: Option<Py<PyString>>,
}

/// OpenAI's duration format for `x-ratelimit-reset-*` (`20ms`, `1.5s`, `6m0s`): the engine's
/// Python path writes its headers with it too.
#[pyfunction]
pub fn reset_text(ms: u64) -> String {
    core::reset_text(ms)
}

/// An amount in the unit people read: USD for dollar budgets (kept in micro-USD).
fn display(rule: &core::Rule, amount: u64) -> f64 {
    if rule.usd {
        amount as f64 / 1_000_000.0
    } else {
        amount as f64
    }
}

struct Policy {
    name: Py<PyString>,
    mode: Py<PyString>,
    enforce: bool,
    /// The partition attributes, as indices into `admit`'s `attrs`.
    per: Vec<(Py<PyString>, usize)>,
    /// Policies with the same partition attributes share an id: their partition key is made
    /// once per request.
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

fn rule_from(spec: RuleSpec<'_>) -> PyResult<(Limiter, core::Rule, Shown)> {
    let (kind, limiter) = match spec.kind.as_str() {
        "rate" => (Kind::Rate, Limiter::Bucket(spec.limiter.extract()?)),
        "tokens" => (Kind::Tokens, Limiter::Bucket(spec.limiter.extract()?)),
        "concurrency" => (Kind::Concurrency, Limiter::Leases(spec.limiter.extract()?)),
        "budget" => (Kind::Budget, Limiter::Budget(spec.limiter.extract()?)),
        other => {
            return Err(PyValueError::new_err(format!(
                "unknown limit kind `{other}`"
            )))
        }
    };
    let count = match spec.count.as_deref() {
        None => Count::One,
        Some("input") => Count::Input,
        Some("output") => Count::Output,
        Some("total") => Count::Total,
        Some(other) => return Err(PyValueError::new_err(format!("unknown count `{other}`"))),
    };
    let rule = core::Rule {
        kind,
        limit: spec.limit,
        usd: spec.usd,
        count,
        cached_weight: spec.cached_weight,
        reasoning_weight: spec.reasoning_weight,
        estimate_price: spec.estimate_price,
    };
    let shown = Shown {
        limit: PyFloat::new(spec.window.py(), spec.limit_display).unbind(),
        kind: PyString::new(spec.window.py(), kind.as_str()).unbind(),
        window: spec.window.unbind(),
        unit: spec.unit.unbind(),
        burst_note: spec.burst_note.map(Bound::unbind),
    };
    Ok((limiter, rule, shown))
}

/// The limit rules of every policy of one configuration, over the memory backend's limiters.
#[pyclass(frozen, module = "tollway._native")]
pub struct Admitter {
    limits: Vec<Limiter>,
    rules: Vec<core::Rule>,
    shown: Vec<Shown>,
    policies: Vec<Policy>,
    /// Distinct partition attribute lists (`Policy::per_id`).
    partitionings: usize,
    /// What each verdict's fields are passed to: `PolicyVerdict`.
    make_verdict: Py<PyAny>,
    /// The `x-ratelimit-limit-requests` and `-tokens` headers (`LIMIT_HEADERS` order) of each
    /// request and token rate limit, by limit: the same on every response it is the tightest of.
    limit_headers: [HashMap<u64, Py<PyTuple>, ahash::RandomState>; 2],
}

/// The names of the limit headers, by `Tightest` slot: request rates, then token rates.
const LIMIT_HEADERS: [&str; 2] = ["x-ratelimit-limit-requests", "x-ratelimit-limit-tokens"];

/// The `x-ratelimit-limit-*` header of slot `slot` for a limit.
fn limit_header<'py>(py: Python<'py>, slot: usize, limit: u64) -> PyResult<Bound<'py, PyTuple>> {
    PyTuple::new(py, [LIMIT_HEADERS[slot], itoa::Buffer::new().format(limit)])
}

#[pymethods]
impl Admitter {
    #[new]
    fn new(
        rules: Vec<RuleSpec<'_>>,
        policies: Vec<PolicySpec<'_>>,
        make_verdict: Py<PyAny>,
    ) -> PyResult<Self> {
        let (mut limits, mut core_rules, mut shown) = (Vec::new(), Vec::new(), Vec::new());
        let mut limit_headers: [HashMap<u64, Py<PyTuple>, ahash::RandomState>; 2] =
            Default::default();
        for spec in rules {
            let py = spec.window.py();
            let (limiter, rule, show) = rule_from(spec)?;
            let slot = match rule.kind {
                Kind::Rate => Some(0),
                Kind::Tokens => Some(1),
                Kind::Concurrency | Kind::Budget => None,
            };
            if let Some(slot) = slot {
                if !limit_headers[slot].contains_key(&rule.limit) {
                    let header = limit_header(py, slot, rule.limit)?.unbind();
                    limit_headers[slot].insert(rule.limit, header);
                }
            }
            limits.push(limiter);
            core_rules.push(rule);
            shown.push(show);
        }
        let mut partitionings: Vec<Vec<usize>> = Vec::new();
        let policies = policies
            .into_iter()
            .map(|p| {
                if let Some(&bad) = p.rules.iter().find(|&&r| r >= core_rules.len()) {
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
            limits,
            rules: core_rules,
            shown,
            policies,
            partitionings: partitionings.len(),
            make_verdict,
            limit_headers,
        })
    }

    /// Admit one request's limit rules: those of the policies `matched` (indices, in order).
    /// `attrs` holds the request's partition attributes (the engine's `PARTITION_ATTRIBUTES`
    /// order); `prompt` and `output` the tokens to reserve; `usd` the dollar estimate in
    /// micro-USD (used only by dollar budgets); `now` in epoch seconds.
    ///
    /// Returns `(verdicts, holds, denial, headers, shadow)`: the verdicts in order (see
    /// `make_verdict`); the holds to settle (`None` when denied or nothing is
    /// held); the denial as `(policy, rule, partition, Denial)`; OpenAI's `x-ratelimit-*`
    /// headers for the tightest enforcing request and token rates (none when denied); and
    /// whether a shadow policy would have denied.
    #[pyo3(signature = (matched, attrs, prompt, output, usd, now))]
    fn admit<'py>(
        slf: &Bound<'py, Self>,
        matched: &Bound<'py, PyList>,
        attrs: &Bound<'py, PyTuple>,
        prompt: u64,
        output: u64,
        usd: u64,
        now: f64,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let py = slf.py();
        let this = slf.get();
        let now_ms = now_ms(Some(now))?;
        // Read item by item: the generic sequence conversion costs more than the rest of
        // taking the arguments.
        let mut indices = Vec::with_capacity(matched.len());
        for index in matched.iter() {
            indices.push(index.extract::<usize>()?);
        }
        let matched = indices;
        // Each matched policy's partition key, made once per partitioning.
        let mut made: Vec<Option<Bound<'py, PyString>>> = vec![None; this.partitionings];
        let mut partitions: Vec<(usize, Bound<'py, PyString>)> = Vec::with_capacity(matched.len());
        for &p in &matched {
            let policy = this
                .policies
                .get(p)
                .ok_or_else(|| PyValueError::new_err(format!("no policy {p}")))?;
            let key = match &made[policy.per_id] {
                Some(key) => key.clone(),
                None => {
                    let key = partition(py, policy, attrs)?;
                    made[policy.per_id] = Some(key.clone());
                    key
                }
            };
            partitions.push((p, key));
        }
        let rules_matched: usize = partitions
            .iter()
            .map(|(p, _)| this.policies[*p].rules.len())
            .sum();
        let mut takes = Vec::with_capacity(rules_matched);
        let mut owners = Vec::with_capacity(rules_matched); // (policy, partition) of each take
        for (p, key) in &partitions {
            let policy = &this.policies[*p];
            let key_text = key.to_str()?;
            for &rule in &policy.rules {
                takes.push(Take {
                    rule,
                    partition: key_text,
                    enforce: policy.enforce,
                });
                owners.push((*p, key));
            }
        }
        let request = Request {
            prompt_tokens: prompt,
            output_tokens: output,
            usd,
        };
        let admission = core::admit(&this.limits, &this.rules, &takes, &request, now_ms)
            .map_err(limiter_error)?;
        let verdicts = PyList::empty(py);
        let mut shadow = false;
        let mut denial = py.None().into_bound(py);
        for (i, outcome) in admission.outcomes.iter().enumerate() {
            let (p, key) = owners[i];
            let (policy, rule) = (&this.policies[p], takes[i].rule);
            let (name, numbers) = match outcome {
                Outcome::Granted { amount, grant } => {
                    let reset_after = seconds(grant.reset_after_ms);
                    let numbers = Numbers {
                        requested: Some(display(&this.rules[rule], *amount)),
                        remaining: Some(display(&this.rules[rule], grant.remaining)),
                        resets_at: Some(now + reset_after),
                        ..Numbers::default()
                    };
                    (intern!(py, "allow"), numbers)
                }
                Outcome::Denied { denial: denied, .. } => {
                    let retry_after = denied.retry_after_ms.map(seconds);
                    let numbers = Numbers {
                        used: Some(display(&this.rules[rule], denied.used)),
                        requested: Some(display(&this.rules[rule], denied.requested)),
                        retry_after,
                        resets_at: retry_after.map(|s| now + s),
                        ..Numbers::default()
                    };
                    if admission.denied_by == Some(i) {
                        let answer = answer(py, Check::Denied(denied.clone()))?;
                        denial = (p, rule, key.clone(), answer).into_bound_py_any(py)?;
                    }
                    if policy.enforce {
                        (intern!(py, "deny"), numbers)
                    } else {
                        shadow = true;
                        (intern!(py, "would_deny"), numbers)
                    }
                }
                Outcome::NotEvaluated => (intern!(py, "not_evaluated"), Numbers::default()),
            };
            let detail = matches!(outcome, Outcome::NotEvaluated)
                .then(|| intern!(py, "an earlier policy denied the request"));
            let fields = verdict(py, policy, &this.shown[rule], key, name, numbers, detail)?;
            verdicts.append(this.make_verdict.bind(py).call1(fields)?)?;
        }
        // Names interned, numbers written by `itoa`, the limits' headers made once: formatting
        // these six headers was a third of this call (instruction counts, callgrind).
        let mut header_pairs: Vec<Bound<'py, PyTuple>> = Vec::with_capacity(6);
        let mut digits = itoa::Buffer::new();
        for (slot, names, tight) in [
            (
                0,
                [
                    intern!(py, "x-ratelimit-remaining-requests"),
                    intern!(py, "x-ratelimit-reset-requests"),
                ],
                admission.requests,
            ),
            (
                1,
                [
                    intern!(py, "x-ratelimit-remaining-tokens"),
                    intern!(py, "x-ratelimit-reset-tokens"),
                ],
                admission.tokens,
            ),
        ] {
            if let Some((limit, remaining, reset_ms)) = tight {
                let [remaining_name, reset_name] = names;
                // Every rate limit's header was made with the `Admitter`.
                header_pairs.push(match this.limit_headers[slot].get(&limit) {
                    Some(header) => header.bind(py).clone(),
                    None => limit_header(py, slot, limit)?,
                });
                let remaining = PyString::new(py, digits.format(remaining));
                header_pairs.push(PyTuple::new(py, [remaining_name.clone(), remaining])?);
                let reset = PyString::new(py, &core::reset_text(reset_ms));
                header_pairs.push(PyTuple::new(py, [reset_name.clone(), reset])?);
            }
        }
        let headers = PyList::new(py, header_pairs)?;
        let holds = if admission.held.is_empty() {
            py.None().into_bound(py)
        } else {
            let holds = Holds {
                admitter: slf.clone().unbind(),
                held: Mutex::new(admission.held),
            };
            Bound::new(py, holds)?.into_any()
        };
        (verdicts, holds, denial, headers, shadow).into_pyobject(py)
    }

    fn __len__(&self) -> usize {
        self.rules.len()
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

/// The fields of `PolicyVerdict(policy, kind, verdict, mode, partition, limit, window, used,
/// requested, remaining, retry_after_s, resets_at, unit, detail)`, as the engine's `_verdict`
/// makes them (a rule's burst note is the detail when there is no other).
fn verdict<'py>(
    py: Python<'py>,
    policy: &Policy,
    shown: &Shown,
    partition: &Bound<'py, PyString>,
    name: &Bound<'py, PyString>,
    n: Numbers,
    detail: Option<&Bound<'py, PyString>>,
) -> PyResult<Bound<'py, PyTuple>> {
    let detail = match (detail, &shown.burst_note) {
        (Some(detail), _) => detail.clone().into_any(),
        (None, Some(note)) => note.bind(py).clone().into_any(),
        (None, None) => py.None().into_bound(py),
    };
    let float = |value: Option<f64>| match value {
        Some(v) => PyFloat::new(py, v).into_any(),
        None => py.None().into_bound(py),
    };
    PyTuple::new(
        py,
        [
            policy.name.bind(py).clone().into_any(),
            shown.kind.bind(py).clone().into_any(),
            name.clone().into_any(),
            policy.mode.bind(py).clone().into_any(),
            partition.clone().into_any(),
            shown.limit.bind(py).clone().into_any(),
            shown.window.bind(py).clone().into_any(),
            float(n.used),
            float(n.requested),
            float(n.remaining),
            float(n.retry_after),
            float(n.resets_at),
            shown.unit.bind(py).clone().into_any(),
            detail,
        ],
    )
}

/// The partition key of a policy for a request: `*`, `key=alice`, `key=alice,model=gpt-4o`
/// (an absent or empty attribute is `-`), as `CompiledPolicy.partition` writes it.
fn partition<'py>(
    py: Python<'py>,
    policy: &Policy,
    attrs: &Bound<'py, PyTuple>,
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
        let value = match attrs.get_item(*index) {
            Ok(value) if !value.is_none() => value.cast_into::<PyString>()?,
            _ => {
                key.push('-');
                continue;
            }
        };
        let value = value.to_str()?;
        key.push_str(if value.is_empty() { "-" } else { value });
    }
    Ok(PyString::new(py, &key))
}

/// What an admitted request holds until it ends: reservations and leases, by rule.
#[pyclass(frozen, module = "tollway._native")]
pub struct Holds {
    admitter: Py<Admitter>,
    held: Mutex<Vec<(usize, ReservationId)>>,
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
            prompt_tokens: prompt,
            completion_tokens: completion,
            cached_tokens: cached,
            reasoning_tokens: reasoning,
            cost,
        };
        let held = std::mem::take(&mut *lock(&self.held));
        let admitter = self.admitter.get();
        core::settle(&admitter.limits, &admitter.rules, &held, &usage, now);
        Ok(())
    }

    /// The request ended without a model call: give back everything it holds.
    fn release(&self, now: f64) -> PyResult<()> {
        let now = now_ms(Some(now))?;
        let held = std::mem::take(&mut *lock(&self.held));
        core::release(&self.admitter.get().limits, &held, now);
        Ok(())
    }

    fn __len__(&self) -> usize {
        lock(&self.held).len()
    }
}
