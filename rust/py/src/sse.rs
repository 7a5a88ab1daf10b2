//! `SseParser` and `SseEvent` for Python: conversions around `tollway_core::sse`.

use std::hash::{Hash, Hasher};
use std::sync::{Mutex, MutexGuard};

use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyString};
use tollway_core::sse as core;

use crate::errors::sse_error;

/// Chunks at least this large are parsed with the GIL released; below it, releasing and
/// re-taking the GIL costs more than the parse itself (a 1 KiB chunk parses in about 1 µs).
const DETACH_THRESHOLD: usize = 64 * 1024;

/// One server-sent event. Immutable, hashable, equal to another event with the same fields.
#[pyclass(frozen, module = "tollway._native")]
pub struct SseEvent {
    inner: core::Event,
    /// `data` as a Python string, built once: adapters read it for every event.
    data: Py<PyString>,
}

#[pymethods]
impl SseEvent {
    #[new]
    #[pyo3(signature = (data, event=None, id=None, retry=None))]
    fn new(
        py: Python<'_>,
        data: String,
        event: Option<String>,
        id: Option<String>,
        retry: Option<u64>,
    ) -> PyResult<Self> {
        let inner = core::Event {
            event,
            data,
            id,
            retry,
        };
        inner.validate().map_err(sse_error)?;
        Ok(Self::from_core(py, inner))
    }

    /// The event type; `None` means the default type, `message`.
    #[getter]
    fn event(&self) -> Option<&str> {
        self.inner.event.as_deref()
    }

    /// The data lines joined with `\n`.
    #[getter]
    fn data(&self, py: Python<'_>) -> Py<PyString> {
        self.data.clone_ref(py)
    }

    /// The last event id in effect when the event was dispatched.
    #[getter]
    fn id(&self) -> Option<&str> {
        self.inner.id.as_deref()
    }

    /// A reconnection time (ms) set by `retry` since the previous dispatched event.
    #[getter]
    fn retry(&self) -> Option<u64> {
        self.inner.retry
    }

    /// The event in canonical wire form, ending with a blank line.
    fn to_bytes<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.inner.to_wire())
    }

    fn __eq__(&self, py: Python<'_>, other: &Bound<'_, PyAny>) -> Py<PyAny> {
        match other.cast::<SseEvent>() {
            Ok(other) => PyBool::new(py, other.get().inner == self.inner)
                .to_owned()
                .into_any()
                .unbind(),
            Err(_) => py.NotImplemented(),
        }
    }

    fn __hash__(&self) -> u64 {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        self.inner.hash(&mut hasher);
        hasher.finish()
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        let e = &self.inner;
        Ok(format!(
            "SseEvent(data={}, event={}, id={}, retry={})",
            self.data.bind(py).repr()?,
            e.event.as_deref().into_pyobject(py)?.repr()?,
            e.id.as_deref().into_pyobject(py)?.repr()?,
            e.retry.into_pyobject(py)?.repr()?,
        ))
    }
}

impl SseEvent {
    fn from_core(py: Python<'_>, inner: core::Event) -> Self {
        let data = PyString::new(py, &inner.data).unbind();
        Self { inner, data }
    }
}

fn to_py(py: Python<'_>, events: Vec<core::Event>) -> Vec<SseEvent> {
    events
        .into_iter()
        .map(|e| SseEvent::from_core(py, e))
        .collect()
}

/// An incremental SSE parser, one per stream.
///
/// Frozen, as every native class: its state sits behind a mutex, which is uncontended in
/// practice (one stream has one reader) and keeps concurrent calls safe under free-threading.
#[pyclass(frozen, module = "tollway._native")]
pub struct SseParser {
    inner: Mutex<core::SseParser>,
}

impl SseParser {
    fn lock(&self) -> MutexGuard<'_, core::SseParser> {
        // The core does not panic; if it ever did, its state is still whole lines applied, so
        // keep going rather than fail every later call on a poisoned lock.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[pymethods]
impl SseParser {
    #[new]
    #[pyo3(signature = (max_line_bytes=core::DEFAULT_MAX_LINE_BYTES))]
    fn new(max_line_bytes: usize) -> Self {
        Self {
            inner: Mutex::new(core::SseParser::new(max_line_bytes)),
        }
    }

    /// Parse one chunk and return the events it completes.
    fn feed(&self, py: Python<'_>, chunk: &[u8]) -> PyResult<Vec<SseEvent>> {
        let events = if chunk.len() >= DETACH_THRESHOLD {
            py.detach(|| self.lock().feed(chunk))
        } else {
            self.lock().feed(chunk)
        }
        .map_err(sse_error)?;
        Ok(to_py(py, events))
    }

    /// End of stream: discard an unfinished event (never dispatched, as the standard says)
    /// and reset for the event source's next response; the result is always empty.
    fn finish(&self, py: Python<'_>) -> PyResult<Vec<SseEvent>> {
        let events = self.lock().finish().map_err(sse_error)?;
        Ok(to_py(py, events))
    }

    /// The last event id as of the last dispatch: what a client sends as `Last-Event-ID`.
    #[getter]
    fn last_event_id(&self) -> Option<String> {
        self.lock().last_event_id().map(str::to_owned)
    }

    /// The reconnection time in effect, in milliseconds.
    #[getter]
    fn retry(&self) -> Option<u64> {
        self.lock().retry()
    }
}
