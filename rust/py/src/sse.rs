//! `SseParser` and `SseEvent` for Python.

use std::sync::Mutex;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString};
use tollway_core::sse as core;

use crate::errors::sse_error;

/// Chunks at least this large are parsed with the GIL released; below it, releasing and
/// re-taking the GIL costs more than the parse itself.
const DETACH_THRESHOLD: usize = 64 * 1024;

/// One server-sent event. Immutable; `data` is built once as a Python string.
#[pyclass(frozen, module = "tollway._native")]
pub struct SseEvent {
    inner: core::Event,
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
    ) -> Self {
        Self::from_core(
            py,
            core::Event {
                event,
                data,
                id,
                retry,
            },
        )
    }

    /// The event type; `None` means the default type, `message`.
    #[getter]
    fn event(&self) -> Option<&str> {
        self.inner.event.as_deref()
    }

    #[getter]
    fn data(&self, py: Python<'_>) -> Py<PyString> {
        self.data.clone_ref(py)
    }

    #[getter]
    fn id(&self) -> Option<&str> {
        self.inner.id.as_deref()
    }

    #[getter]
    fn retry(&self) -> Option<u64> {
        self.inner.retry
    }

    /// The event in canonical wire form, ending with a blank line.
    fn to_bytes<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.inner.to_wire())
    }

    fn __eq__(&self, other: &Bound<'_, PyAny>) -> bool {
        other
            .cast::<SseEvent>()
            .map(|o| o.get().inner == self.inner)
            .unwrap_or(false)
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

/// An incremental SSE parser. One per stream; `feed` each network chunk as it arrives.
///
/// The class is frozen (shareable across threads under free-threading); its mutable state sits
/// behind a mutex that is never contended in practice, since one stream has one reader.
#[pyclass(frozen, module = "tollway._native")]
pub struct SseParser {
    inner: Mutex<core::SseParser>,
}

impl SseParser {
    fn lock(&self) -> std::sync::MutexGuard<'_, core::SseParser> {
        // A panic while parsing would poison the lock; the parser state is still consistent
        // (each line is applied whole), so keep going rather than fail every later call.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[pymethods]
impl SseParser {
    #[new]
    #[pyo3(signature = (max_line_bytes=1_048_576))]
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
        Ok(events
            .into_iter()
            .map(|e| SseEvent::from_core(py, e))
            .collect())
    }

    /// End of stream: discard an unfinished event (as the standard says) and reset. Returns
    /// how many bytes were pending; 0 means the stream ended on an event boundary.
    fn finish(&self) -> usize {
        self.lock().finish()
    }

    #[getter]
    fn last_event_id(&self) -> Option<String> {
        self.lock().last_event_id().map(str::to_owned)
    }

    #[getter]
    fn retry(&self) -> Option<u64> {
        self.lock().retry()
    }
}
