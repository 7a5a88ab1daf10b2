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
    // Python strings, built once from the parser's borrowed event (adapters read `data` and
    // `event` of every event, and relays write it back with `to_bytes`, which borrows them).
    data: Py<PyString>,
    event: Option<Py<PyString>>,
    id: Option<Py<PyString>>,
    retry: Option<u64>,
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
        Ok(Self::from_ref(py, inner.as_ref()))
    }

    /// The event type; `None` means the default type, `message`.
    #[getter]
    fn event(&self, py: Python<'_>) -> Option<Py<PyString>> {
        self.event.as_ref().map(|e| e.clone_ref(py))
    }

    /// The data lines joined with `\n`.
    #[getter]
    fn data(&self, py: Python<'_>) -> Py<PyString> {
        self.data.clone_ref(py)
    }

    /// The last event id in effect when the event was dispatched.
    #[getter]
    fn id(&self, py: Python<'_>) -> Option<Py<PyString>> {
        self.id.as_ref().map(|id| id.clone_ref(py))
    }

    /// A reconnection time (ms) set by `retry` since the previous dispatched event.
    #[getter]
    fn retry(&self) -> Option<u64> {
        self.retry
    }

    /// The event in canonical wire form, ending with a blank line.
    fn to_bytes<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let event = self.borrowed(py)?;
        let mut out = Vec::with_capacity(event.data.len() + 32);
        event.write_wire(&mut out);
        Ok(PyBytes::new(py, &out))
    }

    fn __eq__(&self, py: Python<'_>, other: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        Ok(match other.cast::<SseEvent>() {
            Ok(other) => PyBool::new(py, other.get().fields(py)? == self.fields(py)?)
                .to_owned()
                .into_any()
                .unbind(),
            Err(_) => py.NotImplemented(),
        })
    }

    fn __hash__(&self, py: Python<'_>) -> PyResult<u64> {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        self.fields(py)?.hash(&mut hasher);
        Ok(hasher.finish())
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        Ok(format!(
            "SseEvent(data={}, event={}, id={}, retry={})",
            self.data.bind(py).repr()?,
            self.event
                .as_ref()
                .map(|e| e.bind(py))
                .into_pyobject(py)?
                .repr()?,
            self.id
                .as_ref()
                .map(|id| id.bind(py))
                .into_pyobject(py)?
                .repr()?,
            self.retry.into_pyobject(py)?.repr()?,
        ))
    }
}

impl SseEvent {
    /// The event as Python strings, copied once from the parser's borrowed event.
    fn from_ref(py: Python<'_>, event: core::EventRef<'_>) -> Self {
        let text = |s: &str| PyString::new(py, s).unbind();
        Self {
            data: text(event.data),
            event: event.event.map(text),
            id: event.id.map(text),
            retry: event.retry,
        }
    }

    /// The event, borrowing the Python strings' UTF-8 (no copy).
    fn borrowed<'a>(&'a self, py: Python<'a>) -> PyResult<core::EventRef<'a>> {
        let text = |s: &'a Py<PyString>| s.bind(py).to_str();
        Ok(core::EventRef {
            event: self.event.as_ref().map(text).transpose()?,
            data: text(&self.data)?,
            id: self.id.as_ref().map(text).transpose()?,
            retry: self.retry,
            single_line: false,
        })
    }

    /// What equality and the hash look at (not how the data was framed).
    #[allow(clippy::type_complexity)]
    fn fields<'a>(
        &'a self,
        py: Python<'a>,
    ) -> PyResult<(Option<&'a str>, &'a str, Option<&'a str>, Option<u64>)> {
        let e = self.borrowed(py)?;
        Ok((e.event, e.data, e.id, e.retry))
    }
}

pub(crate) fn events_to_py(py: Python<'_>, events: Vec<core::Event>) -> Vec<SseEvent> {
    events
        .iter()
        .map(|e| SseEvent::from_ref(py, e.as_ref()))
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
        if chunk.len() >= DETACH_THRESHOLD {
            let events = py.detach(|| self.lock().feed(chunk)).map_err(sse_error)?;
            return Ok(events_to_py(py, events));
        }
        // Each event's strings go straight from the parser's borrowed event to Python.
        let mut events = Vec::new();
        self.lock()
            .feed_with(chunk, &mut |event| {
                events.push(SseEvent::from_ref(py, event))
            })
            .map_err(sse_error)?;
        Ok(events)
    }

    /// End of stream: discard an unfinished event (never dispatched, as the standard says)
    /// and reset for the event source's next response; the result is always empty.
    fn finish(&self, py: Python<'_>) -> PyResult<Vec<SseEvent>> {
        let events = self.lock().finish().map_err(sse_error)?;
        Ok(events_to_py(py, events))
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
