//! `OpenAIChatStream` for Python: conversions around `tollway_core::chat_stream`.

use std::sync::{Mutex, MutexGuard};

use pyo3::prelude::*;
use pyo3::types::PyBytes;
use tollway_core::chat_stream::{self as core, DEFAULT_MAX_PENDING_BYTES};
use tollway_core::sse::DEFAULT_MAX_LINE_BYTES;

use crate::errors::chat_stream_error;

/// Chunks at least this large are relayed with the GIL released (as for `SseParser`).
const DETACH_THRESHOLD: usize = 64 * 1024;

/// The OpenAI chat stream as the gateway relays it, one per streamed response.
#[pyclass(frozen, module = "tollway._native")]
pub struct OpenAIChatStream {
    inner: Mutex<core::OpenAIChatStream>,
}

impl OpenAIChatStream {
    fn lock(&self) -> MutexGuard<'_, core::OpenAIChatStream> {
        // The core does not panic; a poisoned lock still holds a usable stream state.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[pymethods]
impl OpenAIChatStream {
    #[new]
    #[pyo3(signature = (strip_usage, *, max_line_bytes=DEFAULT_MAX_LINE_BYTES, max_pending_bytes=DEFAULT_MAX_PENDING_BYTES))]
    fn new(strip_usage: bool, max_line_bytes: usize, max_pending_bytes: usize) -> Self {
        Self {
            inner: Mutex::new(core::OpenAIChatStream::new(
                strip_usage,
                max_line_bytes,
                max_pending_bytes,
            )),
        }
    }

    /// Relay one chunk of upstream bytes: the bytes to send to the client (empty if none).
    fn feed<'py>(&self, py: Python<'py>, chunk: &[u8]) -> PyResult<Bound<'py, PyBytes>> {
        if chunk.len() >= DETACH_THRESHOLD {
            let out = py
                .detach(|| self.lock().feed(chunk).map(<[u8]>::to_vec))
                .map_err(chat_stream_error)?;
            Ok(PyBytes::new(py, &out))
        } else {
            let mut stream = self.lock();
            let out = stream.feed(chunk).map_err(chat_stream_error)?;
            Ok(PyBytes::new(py, out))
        }
    }

    /// `data: [DONE]` arrived.
    #[getter]
    fn done(&self) -> bool {
        self.lock().done()
    }

    /// The last `usage` object of the stream, as JSON text.
    #[getter]
    fn usage_json(&self) -> Option<String> {
        self.lock().usage_json().map(str::to_owned)
    }

    /// Events parsed so far.
    #[getter]
    fn events(&self) -> u64 {
        self.lock().events()
    }

    #[getter]
    fn unreadable_events(&self) -> u64 {
        self.lock().unreadable_events()
    }

    #[getter]
    fn dropped_text_bytes(&self) -> u64 {
        self.lock().dropped_text_bytes()
    }

    /// The output text of the chunks relayed since the last call.
    fn take_output_text(&self, py: Python<'_>) -> String {
        let mut text = String::new();
        py.detach(|| self.lock().take_output_text(&mut text));
        text
    }
}
