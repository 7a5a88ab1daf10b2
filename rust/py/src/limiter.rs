//! Limiters for Python: `RateLimiter`, `TokenBucket`, `ConcurrencyLimiter`, `BudgetWindow`,
//! and their answers `Grant` and `Denial`. Conversions around `tollway_core::limiter`.
//!
//! Python speaks seconds as floats (`time.time()`); the core speaks integer milliseconds.
//! `now=None` reads the system clock here, which is cheaper than calling `time.time()` from
//! Python first. Every call is well under a microsecond of work, so the GIL is never released:
//! releasing and re-taking it would cost more than the call.

use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use tollway_core::limiter::{self as core, Check, Period, Rate, ReservationId, Window};

use crate::errors::limiter_error;

/// Keys each limiter holds at most unless told otherwise.
const DEFAULT_MAX_KEYS: usize = 100_000;

/// Reservations and leases expire after ten minutes unless told otherwise: longer than any
/// request the gateway lets run, shorter than a lost one should cost.
const DEFAULT_TTL_SECONDS: f64 = 600.0;

/// `now` in ms: the given seconds rounded to the nearest ms, or the system clock.
pub(crate) fn now_ms(now: Option<f64>) -> PyResult<u64> {
    match now {
        None => Ok(SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| {
                u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
            })),
        Some(seconds) => seconds_to_ms("now", seconds),
    }
}

/// Seconds (finite, not negative) to whole ms, rounded to the nearest; the core checks ranges.
fn seconds_to_ms(name: &str, seconds: f64) -> PyResult<u64> {
    if seconds.is_finite() && seconds >= 0.0 {
        // `as` saturates at `u64::MAX` for values beyond it.
        Ok((seconds * 1000.0).round() as u64)
    } else {
        Err(PyValueError::new_err(format!(
            "`{name}` must be a finite, non-negative number of seconds; got {seconds}"
        )))
    }
}

pub(crate) fn seconds(ms: u64) -> f64 {
    ms as f64 / 1000.0
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The core does not panic; if it ever did mid-call, its state is still a valid limiter
    // state (every change is a single assignment), so keep going rather than fail forever.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// An admission: the reservation (or lease) to settle or release, and header numbers.
#[pyclass(frozen, get_all, module = "tollway._native")]
pub struct Grant {
    /// The reservation or lease id; `None` for a `RateLimiter` admission.
    id: Option<u64>,
    /// What is left after this admission.
    remaining: u64,
    /// Seconds until the limit is whole again.
    reset_after: f64,
}

#[pymethods]
impl Grant {
    fn __repr__(&self) -> String {
        let id = self
            .id
            .map_or_else(|| "None".to_owned(), |id| id.to_string());
        format!(
            "Grant(id={id}, remaining={}, reset_after={:?})",
            self.remaining, self.reset_after
        )
    }
}

/// A refusal, with the numbers that explain it.
#[pyclass(frozen, get_all, module = "tollway._native")]
pub struct Denial {
    /// `"rate"`, `"tokens"`, `"concurrency"` or `"budget"`.
    kind: &'static str,
    limit: u64,
    window_seconds: Option<f64>,
    burst: u64,
    used: u64,
    requested: u64,
    retry_after: Option<f64>,
}

#[pymethods]
impl Denial {
    fn __repr__(&self) -> String {
        // `{:?}` writes floats as Python does (`1.0`, `0.1`).
        let opt = |v: Option<f64>| v.map_or_else(|| "None".to_owned(), |v| format!("{v:?}"));
        format!(
            "Denial(kind='{}', limit={}, window_seconds={}, burst={}, used={}, requested={}, retry_after={})",
            self.kind,
            self.limit,
            opt(self.window_seconds),
            self.burst,
            self.used,
            self.requested,
            opt(self.retry_after),
        )
    }
}

pub(crate) fn answer(py: Python<'_>, check: Check) -> PyResult<Py<PyAny>> {
    Ok(match check {
        Check::Admitted(grant) => Py::new(
            py,
            Grant {
                id: grant.id.map(|id| id.0),
                remaining: grant.remaining,
                reset_after: seconds(grant.reset_after_ms),
            },
        )?
        .into_any(),
        Check::Denied(denial) => Py::new(
            py,
            Denial {
                kind: denial.kind.as_str(),
                limit: denial.limit,
                window_seconds: denial.window_ms.map(seconds),
                burst: denial.burst,
                used: denial.used,
                requested: denial.requested,
                retry_after: denial.retry_after_ms.map(seconds),
            },
        )?
        .into_any(),
    })
}

/// Request-rate limiting with GCRA: `limit` requests per `period` seconds, `burst` at once.
#[pyclass(frozen, module = "tollway._native")]
pub struct RateLimiter {
    inner: Mutex<core::RateLimiter>,
}

#[pymethods]
impl RateLimiter {
    #[new]
    #[pyo3(signature = (limit, period, burst=None, *, max_keys=DEFAULT_MAX_KEYS))]
    fn new(limit: u64, period: f64, burst: Option<u64>, max_keys: usize) -> PyResult<Self> {
        let rate = Rate::new(
            limit,
            seconds_to_ms("period", period)?,
            burst.unwrap_or(limit),
        )
        .map_err(limiter_error)?;
        Ok(Self {
            inner: Mutex::new(core::RateLimiter::new(rate, max_keys).map_err(limiter_error)?),
        })
    }

    #[pyo3(signature = (key, amount=1, now=None))]
    fn check(
        &self,
        py: Python<'_>,
        key: &str,
        amount: u64,
        now: Option<f64>,
    ) -> PyResult<Py<PyAny>> {
        let now = now_ms(now)?;
        let check = lock(&self.inner).check(key, amount, now);
        answer(py, check)
    }

    #[pyo3(signature = (key, now=None))]
    fn used(&self, key: &str, now: Option<f64>) -> PyResult<u64> {
        let now = now_ms(now)?;
        Ok(lock(&self.inner).used(key, now))
    }

    fn __len__(&self) -> usize {
        lock(&self.inner).len()
    }
}

/// Token-rate limiting: `limit` tokens per `period` seconds, `burst` (the capacity) at once,
/// with reservations settled at the actual usage.
#[pyclass(frozen, module = "tollway._native")]
pub struct TokenBucket {
    pub(crate) inner: Mutex<core::TokenBucket>,
}

#[pymethods]
impl TokenBucket {
    #[new]
    #[pyo3(signature = (limit, period, burst=None, *, reservation_ttl=DEFAULT_TTL_SECONDS, max_keys=DEFAULT_MAX_KEYS))]
    fn new(
        limit: u64,
        period: f64,
        burst: Option<u64>,
        reservation_ttl: f64,
        max_keys: usize,
    ) -> PyResult<Self> {
        let rate = Rate::new(
            limit,
            seconds_to_ms("period", period)?,
            burst.unwrap_or(limit),
        )
        .map_err(limiter_error)?;
        let ttl = seconds_to_ms("reservation_ttl", reservation_ttl)?;
        Ok(Self {
            inner: Mutex::new(core::TokenBucket::new(rate, ttl, max_keys).map_err(limiter_error)?),
        })
    }

    #[pyo3(signature = (key, estimate, now=None))]
    fn reserve(
        &self,
        py: Python<'_>,
        key: &str,
        estimate: u64,
        now: Option<f64>,
    ) -> PyResult<Py<PyAny>> {
        let now = now_ms(now)?;
        let check = lock(&self.inner).reserve(key, estimate, now);
        answer(py, check)
    }

    #[pyo3(signature = (id, actual, now=None))]
    fn settle(&self, id: u64, actual: u64, now: Option<f64>) -> PyResult<bool> {
        let now = now_ms(now)?;
        Ok(lock(&self.inner).settle(ReservationId(id), actual, now))
    }

    #[pyo3(signature = (id, now=None))]
    fn release(&self, id: u64, now: Option<f64>) -> PyResult<bool> {
        let now = now_ms(now)?;
        Ok(lock(&self.inner).release(ReservationId(id), now))
    }

    #[pyo3(signature = (key, amount, now=None))]
    fn debit(&self, key: &str, amount: u64, now: Option<f64>) -> PyResult<()> {
        let now = now_ms(now)?;
        lock(&self.inner).debit(key, amount, now);
        Ok(())
    }

    #[pyo3(signature = (key, now=None))]
    fn used(&self, key: &str, now: Option<f64>) -> PyResult<u64> {
        let now = now_ms(now)?;
        Ok(lock(&self.inner).used(key, now))
    }

    #[getter]
    fn reservations(&self) -> usize {
        lock(&self.inner).reservations()
    }

    fn __len__(&self) -> usize {
        lock(&self.inner).len()
    }
}

/// At most `limit` requests in flight per key; leases expire after `lease_ttl` seconds.
#[pyclass(frozen, module = "tollway._native")]
pub struct ConcurrencyLimiter {
    pub(crate) inner: Mutex<core::ConcurrencyLimiter>,
}

#[pymethods]
impl ConcurrencyLimiter {
    #[new]
    #[pyo3(signature = (limit, *, lease_ttl=DEFAULT_TTL_SECONDS, max_keys=DEFAULT_MAX_KEYS))]
    fn new(limit: u64, lease_ttl: f64, max_keys: usize) -> PyResult<Self> {
        let ttl = seconds_to_ms("lease_ttl", lease_ttl)?;
        Ok(Self {
            inner: Mutex::new(
                core::ConcurrencyLimiter::new(limit, ttl, max_keys).map_err(limiter_error)?,
            ),
        })
    }

    #[pyo3(signature = (key, now=None))]
    fn acquire(&self, py: Python<'_>, key: &str, now: Option<f64>) -> PyResult<Py<PyAny>> {
        let now = now_ms(now)?;
        let check = lock(&self.inner).acquire(key, now).map_err(limiter_error)?;
        answer(py, check)
    }

    #[pyo3(signature = (id, now=None))]
    fn release(&self, id: u64, now: Option<f64>) -> PyResult<bool> {
        let now = now_ms(now)?;
        Ok(lock(&self.inner).release(ReservationId(id), now))
    }

    #[pyo3(signature = (key, now=None))]
    fn used(&self, key: &str, now: Option<f64>) -> PyResult<u64> {
        let now = now_ms(now)?;
        Ok(lock(&self.inner).used(key, now))
    }

    #[getter]
    fn leases(&self) -> usize {
        lock(&self.inner).leases()
    }

    fn __len__(&self) -> usize {
        lock(&self.inner).len()
    }
}

/// Usage caps per calendar or rolling window, in tokens or integer micro-USD.
#[pyclass(frozen, module = "tollway._native")]
pub struct BudgetWindow {
    pub(crate) inner: Mutex<core::BudgetWindow>,
}

impl BudgetWindow {
    fn build(limit: u64, window: Window, reservation_ttl: f64, max_keys: usize) -> PyResult<Self> {
        let ttl = seconds_to_ms("reservation_ttl", reservation_ttl)?;
        Ok(Self {
            inner: Mutex::new(
                core::BudgetWindow::new(limit, window, ttl, max_keys).map_err(limiter_error)?,
            ),
        })
    }
}

#[pymethods]
impl BudgetWindow {
    #[staticmethod]
    #[pyo3(signature = (limit, period, *, utc_offset=0, reservation_ttl=DEFAULT_TTL_SECONDS, max_keys=DEFAULT_MAX_KEYS))]
    fn calendar(
        limit: u64,
        period: &str,
        utc_offset: i32,
        reservation_ttl: f64,
        max_keys: usize,
    ) -> PyResult<Self> {
        let window = Window::Calendar {
            period: Period::from_name(period).map_err(limiter_error)?,
            utc_offset_seconds: utc_offset,
        };
        Self::build(limit, window, reservation_ttl, max_keys)
    }

    #[staticmethod]
    #[pyo3(signature = (limit, window, buckets=60, *, reservation_ttl=DEFAULT_TTL_SECONDS, max_keys=DEFAULT_MAX_KEYS))]
    fn rolling(
        limit: u64,
        window: f64,
        buckets: u32,
        reservation_ttl: f64,
        max_keys: usize,
    ) -> PyResult<Self> {
        let window = Window::Rolling {
            window_ms: seconds_to_ms("window", window)?,
            buckets,
        };
        Self::build(limit, window, reservation_ttl, max_keys)
    }

    #[pyo3(signature = (key, estimate, now=None))]
    fn reserve(
        &self,
        py: Python<'_>,
        key: &str,
        estimate: u64,
        now: Option<f64>,
    ) -> PyResult<Py<PyAny>> {
        let now = now_ms(now)?;
        let check = lock(&self.inner)
            .reserve(key, estimate, now)
            .map_err(limiter_error)?;
        answer(py, check)
    }

    #[pyo3(signature = (id, actual, now=None))]
    fn settle(&self, id: u64, actual: u64, now: Option<f64>) -> PyResult<bool> {
        let now = now_ms(now)?;
        Ok(lock(&self.inner).settle(ReservationId(id), actual, now))
    }

    #[pyo3(signature = (id, now=None))]
    fn release(&self, id: u64, now: Option<f64>) -> PyResult<bool> {
        let now = now_ms(now)?;
        Ok(lock(&self.inner).release(ReservationId(id), now))
    }

    #[pyo3(signature = (key, amount, now=None))]
    fn debit(&self, key: &str, amount: u64, now: Option<f64>) -> PyResult<()> {
        let now = now_ms(now)?;
        lock(&self.inner)
            .debit(key, amount, now)
            .map_err(limiter_error)
    }

    #[pyo3(signature = (key, now=None))]
    fn used(&self, key: &str, now: Option<f64>) -> PyResult<u64> {
        let now = now_ms(now)?;
        Ok(lock(&self.inner).used(key, now))
    }

    #[getter]
    fn reservations(&self) -> usize {
        lock(&self.inner).reservations()
    }

    fn __len__(&self) -> usize {
        lock(&self.inner).len()
    }
}
