//! Core errors -> the exceptions defined in `python/tollway/errors.py`.

use pyo3::PyErr;
use tollway_core::sse;

pyo3::import_exception!(tollway.errors, SseError);

/// A total match: a new core error variant must be given its Python exception here.
pub fn sse_error(err: sse::SseError) -> PyErr {
    match err {
        sse::SseError::LineTooLong { .. } => SseError::new_err(err.to_string()),
    }
}
