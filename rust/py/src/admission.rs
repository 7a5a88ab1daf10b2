//! `Admitter`, `Admitted` and `Holds` for Python: conversions around
//! `tollway_core::limiter::admission`.
//!
//! `tollway.policy.engine` builds one `Admitter` per configuration over the native limiters of
//! the memory backend (shared with the engine's Python path, so both see the same counters).
//! Per request, `admit` takes the matched policies' indices and the request's attributes and
//! amounts as primitives, makes each policy's partition key, and returns the verdicts (made by
//! the `PolicyVerdict` class the engine gives) with the headers and the holds (`evaluate`'s
//! path). `admit_request` is the request path's whole admission in one call: matching, what the
//! matched policies need, the prompt count and the amounts too, answering an `Admitted`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use pyo3::exceptions::PyValueError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyFloat, PyList, PyString, PyTuple};
use pyo3::{intern, IntoPyObjectExt};
use tollway_core::limiter::admission::{self as core, Count, Limit, Outcome, Request, Take, Usage};
use tollway_core::limiter::{Check, Kind, LimiterError, ReservationId};

use crate::errors::{limiter_error, TokenCountError};
use crate::limiter::{
    answer, lock, now_ms, seconds, BudgetWindow, ConcurrencyLimiter, TokenBucket,
};
use crate::policy::{attribute_items, attribute_texts, tag_list, PolicySet};
use crate::tokens::{Api, TokenCounter};

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

/// The output tokens to reserve for a request with `max_tokens` `requested` (`None`: not set)
/// on a model whose maximum output is `model_max` (`None` or 0: unknown), with
/// `[limits] default_max_output_tokens` `default` (see `tollway_core`'s `output_bound`).
#[pyfunction]
#[pyo3(signature = (requested, model_max, default))]
pub fn output_bound(requested: Option<f64>, model_max: Option<u64>, default: u64) -> u64 {
    core::output_bound(requested, model_max, default)
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
    /// Whether it has access rules or parameter bounds (`CompiledPolicy.checks`), the kind of
    /// the verdict saying they passed, and, when its only checks are bounds on parameters,
    /// their names (a request setting none of them passes them; `CompiledPolicy.passes_without`).
    checks: bool,
    check_kind: Py<PyString>,
    passes_without: Option<Vec<Py<PyString>>>,
    /// What its limit rules need of the request (`NEEDS_*` bits; `CompiledPolicy.needs`).
    needs: u8,
}

// `CompiledPolicy.needs`'s bits (`tollway.policy.engine._NEEDS_*`).
const NEEDS_PROMPT: u8 = 1;
const NEEDS_OUTPUT: u8 = 2;
const NEEDS_USD: u8 = 4;
const NEEDS_PYTHON: u8 = 8;

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
    checks: bool,
    check_kind: Bound<'py, PyString>,
    passes_without: Option<Vec<Bound<'py, PyString>>>,
    needs: u8,
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
    /// What `admit_request` needs beyond the rules (`None`: only `admit` is served).
    path: Option<RequestPath>,
}

/// What `Admitter.admit_request` needs besides the limit rules: the engine's matcher and the
/// pieces of its Python path it calls back (each on a path most requests do not take).
struct RequestPath {
    matcher: Py<PolicySet>,
    /// The names of the numeric parameters the matcher reads, in its order.
    params: Vec<Py<PyString>>,
    /// What `admit_request` answers when the engine must `evaluate` the whole request.
    needs_facts: Py<PyAny>,
    /// `[limits] default_max_output_tokens`.
    default_output: u64,
    /// `estimate_micro_usd(info, prompt, output)`: micro-USD, or `None` when unpriced.
    estimate_usd: Py<PyAny>,
    /// `(policy, rule, partition, Denial)` to the `ApiError` a limit's denial answers with.
    denial_error: Py<PyAny>,
    /// The clock (epoch seconds) of the memory backend; `None`: the system's.
    clock: Option<Py<PyAny>>,
}

/// The names of the limit headers, by `Tightest` slot: request rates, then token rates.
const LIMIT_HEADERS: [&str; 2] = ["x-ratelimit-limit-requests", "x-ratelimit-limit-tokens"];

/// The `x-ratelimit-limit-*` header of slot `slot` for a limit.
fn limit_header<'py>(py: Python<'py>, slot: usize, limit: u64) -> PyResult<Bound<'py, PyTuple>> {
    PyTuple::new(py, [LIMIT_HEADERS[slot], itoa::Buffer::new().format(limit)])
}

/// The rules' side of one admission (`Admitter::run`), before it is handed to Python.
struct Ran<'py> {
    /// What the admitted request holds until it ends (empty when denied).
    held: Vec<(usize, ReservationId)>,
    /// The first enforcing denial: `(policy, rule, partition, Denial)`.
    denial: Option<(usize, usize, Bound<'py, PyString>, Bound<'py, PyAny>)>,
    /// OpenAI's `x-ratelimit-*` headers for the tightest enforcing rates (none when denied).
    headers: Vec<Bound<'py, PyTuple>>,
    /// The shadow policies that would have denied, in order (with repeats).
    shadow: Vec<usize>,
}

#[pymethods]
impl Admitter {
    /// `rules` and `policies` describe the limit rules (see the stub); the keyword arguments
    /// serve `admit_request` and are all given or none.
    #[new]
    #[pyo3(signature = (rules, policies, make_verdict, *, matcher=None, needs_facts=None, default_max_output_tokens=0, estimate_usd=None, denial_error=None, clock=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        rules: Vec<RuleSpec<'_>>,
        policies: Vec<PolicySpec<'_>>,
        make_verdict: Py<PyAny>,
        matcher: Option<Bound<'_, PolicySet>>,
        needs_facts: Option<Py<PyAny>>,
        default_max_output_tokens: u64,
        estimate_usd: Option<Py<PyAny>>,
        denial_error: Option<Py<PyAny>>,
        clock: Option<Py<PyAny>>,
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
                    checks: p.checks,
                    check_kind: p.check_kind.unbind(),
                    passes_without: p
                        .passes_without
                        .map(|names| names.into_iter().map(Bound::unbind).collect()),
                    needs: p.needs,
                })
            })
            .collect::<PyResult<Vec<_>>>()?;
        let path = match (matcher, needs_facts, estimate_usd, denial_error) {
            (Some(matcher), Some(needs_facts), Some(estimate_usd), Some(denial_error)) => {
                let py = matcher.py();
                let set = matcher.get();
                if set.inner_len() != policies.len() {
                    return Err(PyValueError::new_err(format!(
                        "the matcher has {} selectors for {} policies",
                        set.inner_len(),
                        policies.len()
                    )));
                }
                let params = set
                    .param_names()
                    .iter()
                    .map(|name| PyString::new(py, name).unbind())
                    .collect();
                Some(RequestPath {
                    matcher: matcher.unbind(),
                    params,
                    needs_facts,
                    default_output: default_max_output_tokens,
                    estimate_usd,
                    denial_error,
                    clock,
                })
            }
            (None, None, None, None) => None,
            _ => {
                return Err(PyValueError::new_err(
                    "`matcher`, `needs_facts`, `estimate_usd` and `denial_error` go together",
                ))
            }
        };
        Ok(Self {
            limits,
            rules: core_rules,
            shown,
            policies,
            partitionings: partitionings.len(),
            make_verdict,
            limit_headers,
            path,
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
        // Read item by item: the generic sequence conversion costs more than the rest of
        // taking the arguments.
        let mut indices = Vec::with_capacity(matched.len());
        for index in matched.iter() {
            indices.push(index.extract::<usize>()?);
        }
        let request = Request {
            prompt_tokens: prompt,
            output_tokens: output,
            usd,
        };
        let verdicts = PyList::empty(py);
        let ran = slf
            .get()
            .run(py, &indices, attrs, &request, now, &verdicts)?;
        let holds = if ran.held.is_empty() {
            py.None().into_bound(py)
        } else {
            let holds = Holds {
                admitter: slf.clone().unbind(),
                held: Mutex::new(ran.held),
            };
            Bound::new(py, holds)?.into_any()
        };
        let denial = match ran.denial {
            Some(denial) => denial.into_bound_py_any(py)?,
            None => py.None().into_bound(py),
        };
        let headers = PyList::new(py, ran.headers)?;
        (verdicts, holds, denial, headers, !ran.shadow.is_empty()).into_pyobject(py)
    }

    /// `PolicyEngine.admit` (see there), for an `Admitter` made with the request path's
    /// arguments: match the request (`attrs` in `PARTITION_ATTRIBUTES` order, `tags`, `params`
    /// the numeric parameters by name), and, when every matched policy is served here, count
    /// its prompt (`raw` in `api`'s format, by `served.counter`, only when a limit needs it),
    /// work out its output bound and cost, and admit it. Returns `None` when no policy matches, an
    /// `Admitted`, or `needs_facts` when a matched policy needs the whole request: an access
    /// rule, a parameter bound the request sets, an audit or truncating budget, a dollar
    /// budget on an unpriced model.
    #[pyo3(signature = (attrs, tags, params, served, api, raw))]
    fn admit_request<'py>(
        slf: &Bound<'py, Self>,
        attrs: &Bound<'py, PyTuple>,
        tags: &Bound<'py, PyAny>,
        params: &Bound<'py, PyDict>,
        served: &Bound<'py, PyAny>,
        api: &str,
        raw: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let this = slf.get();
        let path = this.path.as_ref().ok_or_else(|| {
            PyValueError::new_err("this Admitter was made without the request path's arguments")
        })?;
        let mut values = Vec::with_capacity(path.params.len());
        for name in &path.params {
            values.push(match params.get_item(name.bind(py))? {
                Some(value) => value.extract::<Option<f64>>()?,
                None => None,
            });
        }
        let items = attribute_items(attrs)?;
        let matched =
            path.matcher
                .get()
                .find(attribute_texts(&items)?, &tag_list(tags)?, &values)?;
        if matched.is_empty() {
            return Ok(py.None().into_bound(py));
        }
        let needs_facts = || Ok(path.needs_facts.bind(py).clone());
        let matched: Vec<usize> = matched.into_iter().map(|p| p as usize).collect();
        let mut needs = 0;
        for &p in &matched {
            let policy = &this.policies[p];
            needs |= policy.needs;
            if policy.checks {
                let Some(names) = &policy.passes_without else {
                    return needs_facts();
                };
                for name in names {
                    if params.contains(name.bind(py))? {
                        return needs_facts();
                    }
                }
            }
        }
        if needs & NEEDS_PYTHON != 0 {
            return needs_facts();
        }
        let mut request = Request::default();
        if needs & NEEDS_PROMPT != 0 {
            let counter = served.getattr(intern!(py, "counter"))?;
            request.prompt_tokens = prompt_tokens(&counter, api, raw)?;
        }
        if needs & (NEEDS_OUTPUT | NEEDS_USD) != 0 {
            let info = served.getattr(intern!(py, "info"))?;
            if needs & NEEDS_OUTPUT != 0 {
                let model_max = if info.is_none() {
                    None
                } else {
                    info.getattr(intern!(py, "max_output_tokens"))?
                        .extract::<Option<u64>>()?
                };
                let requested = match params.get_item(intern!(py, "max_tokens"))? {
                    Some(value) => Some(value.extract::<f64>()?),
                    None => None,
                };
                request.output_tokens =
                    core::output_bound(requested, model_max, path.default_output);
            }
            if needs & NEEDS_USD != 0 {
                let estimate = path.estimate_usd.bind(py).call1((
                    info,
                    request.prompt_tokens,
                    request.output_tokens,
                ))?;
                match estimate.extract::<Option<u64>>()? {
                    Some(usd) => request.usd = usd,
                    None => return needs_facts(),
                }
            }
        }
        let now = this.now(py)?;
        // The verdicts of the checks (all passed: the request sets no bounded parameter),
        // then those of the limits.
        let verdicts = PyList::empty(py);
        let make_verdict = this.make_verdict.bind(py);
        for &p in &matched {
            let policy = &this.policies[p];
            if policy.checks {
                let fields = [
                    policy.name.as_ptr(),
                    policy.check_kind.as_ptr(),
                    intern!(py, "allow").as_ptr(),
                    policy.mode.as_ptr(),
                ];
                verdicts.append(call_positional(make_verdict, fields)?)?;
            }
        }
        let ran = this.run(py, &matched, attrs, &request, now, &verdicts)?;
        let mut headers = ran.headers;
        let denied = match ran.denial {
            Some(denial) => path.denial_error.bind(py).call1(denial)?.unbind(),
            None => {
                if !ran.shadow.is_empty() {
                    headers.push(shadow_header(py, this, ran.shadow)?);
                }
                py.None()
            }
        };
        let admitted = Admitted {
            verdicts: verdicts.unbind(),
            headers: PyList::new(py, headers)?.unbind(),
            denied,
            holds: Holds {
                admitter: slf.clone().unbind(),
                held: Mutex::new(ran.held),
            },
        };
        Ok(Bound::new(py, admitted)?.into_any())
    }

    fn __len__(&self) -> usize {
        self.rules.len()
    }
}

/// Prompt tokens of the request body `raw` in `api`'s format, by the served model's counter: a
/// `TokenCounter`, counted here, or any object with its `count_prompt`. A body the counter
/// cannot read counts 0, as in `ModelAccounting.count_prompt`.
fn prompt_tokens(counter: &Bound<'_, PyAny>, api: &str, raw: &Bound<'_, PyAny>) -> PyResult<u64> {
    let py = counter.py();
    if let Ok(native) = counter.cast::<TokenCounter>() {
        let body = raw.cast::<PyBytes>()?.as_bytes();
        return Ok(native
            .get()
            .prompt(py, Api::from_name(api), body)
            .map_or(0, |count| count.tokens));
    }
    match counter.call_method1(intern!(py, "count_prompt"), (api, raw)) {
        Ok(counted) => counted.get_item(0)?.extract(),
        Err(err) if err.is_instance_of::<TokenCountError>(py) => Ok(0),
        Err(err) => Err(err),
    }
}

/// `x-tollway-shadow-deny`: the shadow policies that would have denied, sorted, once each.
fn shadow_header<'py>(
    py: Python<'py>,
    admitter: &Admitter,
    policies: Vec<usize>,
) -> PyResult<Bound<'py, PyTuple>> {
    let mut names = policies
        .into_iter()
        .map(|p| admitter.policies[p].name.bind(py).to_str())
        .collect::<PyResult<Vec<_>>>()?;
    names.sort_unstable();
    names.dedup();
    PyTuple::new(
        py,
        [
            intern!(py, "x-tollway-shadow-deny").clone(),
            PyString::new(py, &names.join(", ")),
        ],
    )
}

impl Admitter {
    /// Now, in epoch seconds: by the memory backend's clock when it was given, else the system's.
    fn now(&self, py: Python<'_>) -> PyResult<f64> {
        match self.path.as_ref().and_then(|path| path.clock.as_ref()) {
            Some(clock) => clock.bind(py).call0()?.extract(),
            None => Ok(SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0.0, |elapsed| elapsed.as_secs_f64())),
        }
    }

    /// The limit rules of the policies `matched` (indices, in order) for one request: their
    /// verdicts appended to `verdicts`, and the rest of the admission.
    fn run<'py>(
        &self,
        py: Python<'py>,
        matched: &[usize],
        attrs: &Bound<'py, PyTuple>,
        request: &Request,
        now: f64,
        verdicts: &Bound<'py, PyList>,
    ) -> PyResult<Ran<'py>> {
        let now_ms = now_ms(Some(now))?;
        // Each matched policy's partition key, made once per partitioning.
        let mut made: Vec<Option<Bound<'py, PyString>>> = vec![None; self.partitionings];
        let mut partitions: Vec<(usize, Bound<'py, PyString>)> = Vec::with_capacity(matched.len());
        for &p in matched {
            let policy = self
                .policies
                .get(p)
                .ok_or_else(|| PyValueError::new_err(format!("no policy {p}")))?;
            if policy.rules.is_empty() {
                continue;
            }
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
            .map(|(p, _)| self.policies[*p].rules.len())
            .sum();
        let mut takes = Vec::with_capacity(rules_matched);
        let mut owners = Vec::with_capacity(rules_matched); // (policy, partition) of each take
        for (p, key) in &partitions {
            let policy = &self.policies[*p];
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
        let admission = core::admit(&self.limits, &self.rules, &takes, request, now_ms)
            .map_err(limiter_error)?;
        let make_verdict = self.make_verdict.bind(py);
        let mut shadow = Vec::new();
        let mut denial = None;
        for (i, outcome) in admission.outcomes.iter().enumerate() {
            let (p, key) = owners[i];
            let (policy, rule) = (&self.policies[p], takes[i].rule);
            let (name, numbers) = match outcome {
                Outcome::Granted { amount, grant } => {
                    let reset_after = seconds(grant.reset_after_ms);
                    let numbers = Numbers {
                        requested: Some(display(&self.rules[rule], *amount)),
                        remaining: Some(display(&self.rules[rule], grant.remaining)),
                        resets_at: Some(now + reset_after),
                        ..Numbers::default()
                    };
                    (intern!(py, "allow"), numbers)
                }
                Outcome::Denied { denial: denied, .. } => {
                    let retry_after = denied.retry_after_ms.map(seconds);
                    let numbers = Numbers {
                        used: Some(display(&self.rules[rule], denied.used)),
                        requested: Some(display(&self.rules[rule], denied.requested)),
                        retry_after,
                        resets_at: retry_after.map(|s| now + s),
                        ..Numbers::default()
                    };
                    if admission.denied_by == Some(i) {
                        let answer = answer(py, Check::Denied(denied.clone()))?;
                        denial = Some((p, rule, key.clone(), answer.into_bound(py)));
                    }
                    if policy.enforce {
                        (intern!(py, "deny"), numbers)
                    } else {
                        shadow.push(p);
                        (intern!(py, "would_deny"), numbers)
                    }
                }
                Outcome::NotEvaluated => (intern!(py, "not_evaluated"), Numbers::default()),
            };
            let detail = matches!(outcome, Outcome::NotEvaluated)
                .then(|| intern!(py, "an earlier policy denied the request"));
            let made = verdict(
                py,
                make_verdict,
                policy,
                &self.shown[rule],
                key,
                name,
                numbers,
                detail,
            )?;
            verdicts.append(made)?;
        }
        // Names interned, numbers written by `itoa`, the limits' headers made once: formatting
        // these six headers was a third of this call (instruction counts, callgrind).
        let mut headers: Vec<Bound<'py, PyTuple>> = Vec::with_capacity(7);
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
                headers.push(match self.limit_headers[slot].get(&limit) {
                    Some(header) => header.bind(py).clone(),
                    None => limit_header(py, slot, limit)?,
                });
                let remaining = PyString::new(py, digits.format(remaining));
                headers.push(PyTuple::new(py, [remaining_name.clone(), remaining])?);
                let reset = PyString::new(py, &core::reset_text(reset_ms));
                headers.push(PyTuple::new(py, [reset_name.clone(), reset])?);
            }
        }
        Ok(Ran {
            held: admission.held,
            denial,
            headers,
            shadow,
        })
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

/// A `PolicyVerdict(policy, kind, verdict, mode, partition, limit, window, used, requested,
/// remaining, retry_after_s, resets_at, unit, detail)` made by `make_verdict`, as the engine's
/// `_verdict` makes it (a rule's burst note is the detail when there is no other).
#[allow(clippy::too_many_arguments)]
fn verdict<'py>(
    py: Python<'py>,
    make_verdict: &Bound<'py, PyAny>,
    policy: &Policy,
    shown: &Shown,
    partition: &Bound<'py, PyString>,
    name: &Bound<'py, PyString>,
    n: Numbers,
    detail: Option<&Bound<'py, PyString>>,
) -> PyResult<Bound<'py, PyAny>> {
    let none = py.None();
    let detail = match (detail, &shown.burst_note) {
        (Some(detail), _) => detail.as_ptr(),
        (None, Some(note)) => note.as_ptr(),
        (None, None) => none.as_ptr(),
    };
    // Owned for the call: the numbers this verdict has.
    let floats = [n.used, n.requested, n.remaining, n.retry_after, n.resets_at]
        .map(|value| value.map(|v| PyFloat::new(py, v)));
    let [used, requested, remaining, retry_after, resets_at] = floats
        .each_ref()
        .map(|value| value.as_ref().map_or(none.as_ptr(), |v| v.as_ptr()));
    call_positional(
        make_verdict,
        [
            policy.name.as_ptr(),
            shown.kind.as_ptr(),
            name.as_ptr(),
            policy.mode.as_ptr(),
            partition.as_ptr(),
            shown.limit.as_ptr(),
            shown.window.as_ptr(),
            used,
            requested,
            remaining,
            retry_after,
            resets_at,
            shown.unit.as_ptr(),
            detail,
        ],
    )
}

// `PyObject_Vectorcall` is exported by CPython from 3.9 (a function from 3.11, in the stable
// ABI from 3.12); PyO3 declares it for abi3 builds only from 3.12, so a call from this abi3-py311
// module otherwise packs its arguments into a tuple that the callee unpacks again. Five
// `PolicyVerdict`s of 14 fields per request made that a tenth of the native admission.
extern "C" {
    fn PyObject_Vectorcall(
        callable: *mut ffi::PyObject,
        args: *const *mut ffi::PyObject,
        nargsf: usize,
        kwnames: *mut ffi::PyObject,
    ) -> *mut ffi::PyObject;
}

/// `callable(*args)`, the arguments borrowed pointers to live objects.
fn call_positional<'py, const N: usize>(
    callable: &Bound<'py, PyAny>,
    args: [*mut ffi::PyObject; N],
) -> PyResult<Bound<'py, PyAny>> {
    // SAFETY: the GIL is held (`Bound`); `callable` and every argument are alive for the call,
    // which borrows them (it steals no reference); the result is a new reference, or null with
    // an exception set.
    unsafe {
        let result = PyObject_Vectorcall(callable.as_ptr(), args.as_ptr(), N, std::ptr::null_mut());
        Bound::from_owned_ptr_or_err(callable.py(), result)
    }
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
        self.settle_at(&usage, now);
        Ok(())
    }

    /// The request ended without a model call: give back everything it holds.
    fn release(&self, now: f64) -> PyResult<()> {
        self.release_at(now_ms(Some(now))?);
        Ok(())
    }

    fn __len__(&self) -> usize {
        lock(&self.held).len()
    }
}

impl Holds {
    /// Settle what is held at `usage` (once: what is settled is no longer held).
    fn settle_at(&self, usage: &Usage, now_ms: u64) {
        let held = std::mem::take(&mut *lock(&self.held));
        let admitter = self.admitter.get();
        core::settle(&admitter.limits, &admitter.rules, &held, usage, now_ms);
    }

    /// Give back what is held (once).
    fn release_at(&self, now_ms: u64) {
        let held = std::mem::take(&mut *lock(&self.held));
        core::release(&self.admitter.get().limits, &held, now_ms);
    }

    fn is_empty(&self) -> bool {
        lock(&self.held).is_empty()
    }
}

/// One request's admission by `Admitter.admit_request`: what the engine's `Admission` holds,
/// for a request every rule of which was decided natively (no clamps, no output cap).
#[pyclass(frozen, module = "tollway._native")]
pub struct Admitted {
    /// The decision trail: a `PolicyVerdict` per check and per limit rule, in order.
    #[pyo3(get)]
    verdicts: Py<PyList>,
    /// `x-ratelimit-*` and `x-tollway-shadow-deny` headers (none when denied).
    #[pyo3(get)]
    headers: Py<PyList>,
    /// The error the request is refused with (`ApiError`), or `None`.
    #[pyo3(get)]
    denied: Py<PyAny>,
    holds: Holds,
}

impl Admitted {
    /// Now, in ms, by the admitter's clock.
    fn now_ms(&self, py: Python<'_>) -> PyResult<u64> {
        now_ms(Some(self.holds.admitter.get().now(py)?))
    }
}

#[pymethods]
impl Admitted {
    /// Parameters to lower before the request goes upstream: none here (a clamp is decided by
    /// the engine's Python path).
    #[getter]
    fn clamps<'py>(&self, py: Python<'py>) -> Bound<'py, PyDict> {
        PyDict::new(py)
    }

    /// Output tokens a stream may produce before a truncating budget ends it: none here.
    #[getter]
    fn output_cap(&self) -> Option<(u64, String)> {
        None
    }

    /// The request ended with `usage` (a `Usage`) and cost (`cost_micro_usd`; `None` when the
    /// served model is unpriced): settle what it holds, as `Holds.settle`. Settling twice does
    /// nothing the second time.
    fn settle(&self, usage: &Bound<'_, PyAny>, cost_micro_usd: Option<u64>) -> PyResult<()> {
        let py = usage.py();
        if self.holds.is_empty() {
            return Ok(());
        }
        let usage = Usage {
            prompt_tokens: usage.getattr(intern!(py, "prompt_tokens"))?.extract()?,
            completion_tokens: usage.getattr(intern!(py, "completion_tokens"))?.extract()?,
            cached_tokens: usage.getattr(intern!(py, "cached_tokens"))?.extract()?,
            reasoning_tokens: usage.getattr(intern!(py, "reasoning_tokens"))?.extract()?,
            cost: cost_micro_usd,
        };
        self.holds.settle_at(&usage, self.now_ms(py)?);
        Ok(())
    }

    /// The request ended without a model call: give back everything it holds.
    fn release(&self, py: Python<'_>) -> PyResult<()> {
        if !self.holds.is_empty() {
            self.holds.release_at(self.now_ms(py)?);
        }
        Ok(())
    }

    /// How many reservations and leases it holds.
    fn __len__(&self) -> usize {
        lock(&self.holds.held).len()
    }
}
