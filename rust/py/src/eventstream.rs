//! `EventStreamDecoder` and `EventStreamMessage` for Python: conversions around
//! `tollway_core::eventstream`.

use std::sync::{Mutex, MutexGuard};

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyString};
use tollway_core::eventstream as core;

use crate::errors::eventstream_error;

/// Chunks at least this large are decoded with the GIL released (as for `SseParser`).
const DETACH_THRESHOLD: usize = 64 * 1024;

/// One decoded message: its headers and its payload. Immutable.
#[pyclass(frozen, module = "tollway._native")]
pub struct EventStreamMessage {
    inner: core::Message,
}

fn value_to_py<'py>(py: Python<'py>, value: &core::HeaderValue) -> PyResult<Bound<'py, PyAny>> {
    Ok(match value {
        core::HeaderValue::Bool(v) => v.into_pyobject(py)?.to_owned().into_any(),
        core::HeaderValue::Byte(v) => v.into_pyobject(py)?.into_any(),
        core::HeaderValue::Short(v) => v.into_pyobject(py)?.into_any(),
        core::HeaderValue::Int(v) => v.into_pyobject(py)?.into_any(),
        core::HeaderValue::Long(v) | core::HeaderValue::Timestamp(v) => {
            v.into_pyobject(py)?.into_any()
        }
        core::HeaderValue::Bytes(v) => PyBytes::new(py, v).into_any(),
        core::HeaderValue::Uuid(v) => PyBytes::new(py, v).into_any(),
        core::HeaderValue::String(v) => PyString::new(py, v).into_any(),
    })
}

#[pymethods]
impl EventStreamMessage {
    /// The headers by name (the first of a repeated name wins): `str` for strings, `bytes` for
    /// byte arrays and UUIDs, `int` for the integer types and timestamps (ms), `bool`.
    #[getter]
    fn headers<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let dict = PyDict::new(py);
        for (name, value) in &self.inner.headers {
            if !dict.contains(name)? {
                dict.set_item(name, value_to_py(py, value)?)?;
            }
        }
        Ok(dict)
    }

    /// The value of one header, or `None`.
    fn header<'py>(&self, py: Python<'py>, name: &str) -> PyResult<Option<Bound<'py, PyAny>>> {
        self.inner
            .header(name)
            .map(|v| value_to_py(py, v))
            .transpose()
    }

    #[getter]
    fn payload<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.inner.payload)
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        Ok(format!(
            "EventStreamMessage(headers={}, payload={})",
            self.headers(py)?.repr()?,
            self.payload(py).repr()?
        ))
    }
}

impl EventStreamMessage {
    pub(crate) fn from_core(inner: core::Message) -> Self {
        Self { inner }
    }
}

/// An incremental AWS event-stream decoder, one per stream. Frozen; its state sits behind an
/// uncontended mutex, as for `SseParser`.
#[pyclass(frozen, module = "tollway._native")]
pub struct EventStreamDecoder {
    inner: Mutex<core::Decoder>,
}

impl EventStreamDecoder {
    fn lock(&self) -> MutexGuard<'_, core::Decoder> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[pymethods]
impl EventStreamDecoder {
    #[new]
    #[pyo3(signature = (max_message_bytes=core::DEFAULT_MAX_MESSAGE_BYTES))]
    fn new(max_message_bytes: usize) -> Self {
        Self {
            inner: Mutex::new(core::Decoder::new(max_message_bytes)),
        }
    }

    /// Decode one chunk; return the messages it completes.
    fn feed(&self, py: Python<'_>, chunk: &[u8]) -> PyResult<Vec<EventStreamMessage>> {
        let messages = if chunk.len() >= DETACH_THRESHOLD {
            py.detach(|| self.lock().feed(chunk))
        } else {
            self.lock().feed(chunk)
        }
        .map_err(eventstream_error)?;
        Ok(messages
            .into_iter()
            .map(|inner| EventStreamMessage { inner })
            .collect())
    }

    /// Bytes received that are not yet part of a whole message.
    #[getter]
    fn buffered(&self) -> usize {
        self.lock().buffered()
    }
}
